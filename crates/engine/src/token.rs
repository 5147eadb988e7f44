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
