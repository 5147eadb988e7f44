//! The durable set of tokens and client-certificate principals
//! (`tokens.journal`, FORMAT.md "Token journal records"): a thin wrapper over
//! [`JournalMap`]. The server decides what grants mean and checks secrets; the
//! store keeps only each secret's hash.
//!
//! Invariant: entries are never deleted and a revocation is never undone, so an
//! id names one credential forever.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::token::TokenRecord;
pub use crate::format::token::{SECRET_HASH_LEN, TokenEntry};
use crate::io::Storage;
use crate::journal::JournalMap;
use crate::limits::TOKENS_COUNT_MAX;
use crate::paths;

/// The durable set of tokens.
#[derive(Debug)]
pub struct TokenStore {
    tokens: JournalMap<TokenRecord>,
}

impl TokenStore {
    /// Opens or creates `tokens.journal` in `dir`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut); I/O errors.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<TokenStore> {
        Ok(TokenStore {
            tokens: JournalMap::open(storage, paths::tokens_journal(dir), ())?,
        })
    }

    /// Writes the durable tokens as a fresh compacted journal at `path` (a
    /// backup's copy, `Log::backup`); returns the file's bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_snapshot(&self, storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
        self.tokens.write_snapshot(storage, path)
    }

    /// Every entry, by id.
    pub fn list(&self) -> Vec<TokenEntry> {
        self.tokens.read(|tokens| tokens.values().cloned().collect())
    }

    /// Whether the store holds no entry at all.
    pub fn is_empty(&self) -> bool {
        self.tokens.read(|tokens| tokens.is_empty())
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Option<TokenEntry> {
        self.tokens.get(id)
    }

    /// Adds a new entry durably.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the id is taken; [`Error::LimitExceeded`]
    /// beyond [`TOKENS_COUNT_MAX`]; I/O errors.
    pub fn create(&self, entry: TokenEntry) -> Result<()> {
        self.tokens.write(|tokens| {
            if tokens.contains_key(&entry.id) {
                return Err(Error::InvalidArgument(format!("token id {} is taken", entry.id)));
            }
            if tokens.len() >= TOKENS_COUNT_MAX {
                return Err(Error::LimitExceeded {
                    what: "tokens",
                    value: tokens.len() as u64 + 1,
                    max: TOKENS_COUNT_MAX as u64,
                });
            }
            Ok((TokenRecord::Put(Box::new(entry)), ()))
        })
    }

    /// Revokes an entry durably at `at_ms`; returns it, or `None` for an unknown
    /// id. Revoking a revoked entry changes nothing.
    ///
    /// # Errors
    /// I/O errors.
    pub fn revoke(&self, id: &str, at_ms: u64) -> Result<Option<TokenEntry>> {
        // Entries are never deleted, so one seen here is still there below.
        match self.tokens.get(id) {
            None => return Ok(None),
            Some(entry) if entry.revoked_at_ms != 0 => return Ok(Some(entry)),
            Some(_) => {}
        }
        self.tokens.write(|tokens| {
            let mut entry = tokens
                .get(id)
                .cloned()
                .ok_or_else(|| Error::InvalidArgument(format!("token {id} vanished")))?;
            entry.revoked_at_ms = at_ms.max(1);
            Ok((TokenRecord::Put(Box::new(entry.clone())), Some(entry)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::StdStorage;
    use crate::paths::TOKENS_FILE;

    fn entry(id: &str) -> TokenEntry {
        TokenEntry {
            id: id.to_string(),
            name: "ci".to_string(),
            secret_hash: Some([3; SECRET_HASH_LEN]),
            grants: vec!["read:orders".to_string()],
            created_at_ms: 10,
            created_by: "bootstrap".to_string(),
            ..TokenEntry::default()
        }
    }

    #[test]
    fn tokens_survive_reopen_and_revocation_is_durable_and_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        {
            let store = TokenStore::open(Arc::clone(&storage), dir.path()).expect("open");
            assert!(store.is_empty());
            store.create(entry("aaaaaaaaaaaaaaaa")).expect("create");
            store.create(entry("bbbbbbbbbbbbbbbb")).expect("create");
            assert!(
                store.create(entry("aaaaaaaaaaaaaaaa")).is_err(),
                "an id is taken once"
            );
            let revoked = store
                .revoke("bbbbbbbbbbbbbbbb", 20)
                .expect("revoke")
                .expect("known");
            assert_eq!(revoked.revoked_at_ms, 20);
            let again = store
                .revoke("bbbbbbbbbbbbbbbb", 30)
                .expect("revoke")
                .expect("known");
            assert_eq!(again.revoked_at_ms, 20, "the first revocation stands");
            assert_eq!(store.revoke("cccccccccccccccc", 30).expect("revoke"), None);
        }
        let store = TokenStore::open(storage, dir.path()).expect("reopen");
        let mut revoked = entry("bbbbbbbbbbbbbbbb");
        revoked.revoked_at_ms = 20;
        assert_eq!(store.list(), vec![entry("aaaaaaaaaaaaaaaa"), revoked]);
    }

    #[test]
    fn the_committed_v1_journal_still_opens() {
        // Goal: the format v1 fixture (a bootstrap token, a token it created,
        // then revoked) replays with the current code to the same entries.
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokens-v1")
            .join(TOKENS_FILE);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&fixture, dir.path().join(TOKENS_FILE)).expect("copy the fixture");
        let store = TokenStore::open(Arc::new(StdStorage), dir.path()).expect("open");
        let tokens = store.list();
        assert_eq!(tokens.len(), 2);
        let bootstrap = store.get("w1Vt43rP7TxKc8w3").expect("bootstrap");
        assert_eq!(bootstrap.name, "bootstrap");
        assert_eq!(
            bootstrap.grants,
            vec!["read:*", "write:*", "consume:*", "admin:*", "tokens:*"]
        );
        assert_eq!((bootstrap.expires_at_ms, bootstrap.revoked_at_ms), (0, 0));
        let ci = store.get("zc7QH0NHDAFJQRmg").expect("ci");
        assert_eq!(ci.grants, vec!["read:orders*"]);
        assert_eq!(ci.created_by, "token:w1Vt43rP7TxKc8w3");
        assert!(ci.secret_hash.is_some() && ci.certificate_subject.is_empty());
        assert!(ci.expires_at_ms > ci.created_at_ms && ci.revoked_at_ms >= ci.created_at_ms);
    }
}
