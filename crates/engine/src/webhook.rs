//! Durable webhook endpoint definitions: the `webhooks.journal` file in the data
//! directory, a journal-backed map of whole definitions (put) and deletions
//! (FORMAT.md, "Webhook journal records"; `format::webhook`).
//!
//! Invariant: the in-memory map equals the replay of the durable journal; a failed
//! write changes neither.
//!
//! Positions are not stored here: each endpoint's position is an engine cursor
//! (`webhook.<name>`) on its topic, committed by the dispatcher.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::webhook::WebhookRecord;
pub use crate::format::webhook::{DeliverySettings, Endpoint};
use crate::io::Storage;
use crate::journal::{JournalMap, check_ascii_name};
use crate::limits::{WEBHOOK_NAME_SIZE_MAX, WEBHOOKS_COUNT_MAX};
use crate::paths;

/// Defaults of [`DeliverySettings`].
pub mod defaults {
    /// Keys in flight at once.
    pub const IN_FLIGHT_MAX: u32 = 16;
    /// Attempts per event.
    pub const ATTEMPTS_MAX: u32 = 10;
    /// A day.
    pub const AGE_MAX_MS: u64 = 24 * 3600 * 1000;
    /// Half a second.
    pub const BACKOFF_INITIAL_MS: u64 = 500;
    /// Five minutes.
    pub const BACKOFF_MAX_MS: u64 = 300_000;
    /// Ten seconds.
    pub const TIMEOUT_MS: u64 = 10_000;
    /// Consecutive failures.
    pub const BREAKER_FAILURES: u32 = 5;
    /// Thirty seconds.
    pub const BREAKER_PAUSE_MS: u64 = 30_000;
    /// Appended to the topic name to name the default dead-letter topic.
    pub const DEAD_LETTER_SUFFIX: &str = ".dead-letter";
}

/// Checks a webhook name: 1 to 100 ASCII letters, digits, `.`, `_` and `-`.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    check_ascii_name(name, WEBHOOK_NAME_SIZE_MAX, "webhook", "webhook name size")
}

/// The durable set of endpoint definitions.
#[derive(Debug)]
pub struct WebhookStore {
    endpoints: JournalMap<WebhookRecord>,
}

impl WebhookStore {
    /// Opens or creates `webhooks.journal` in `dir`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut); I/O errors.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<WebhookStore> {
        Ok(WebhookStore {
            endpoints: JournalMap::open(storage, paths::webhooks_journal(dir), ())?,
        })
    }

    /// Writes the durable endpoints as a fresh compacted journal at `path` (a
    /// backup's copy, `Log::backup`); returns the file's bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_snapshot(&self, storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
        self.endpoints.write_snapshot(storage, path)
    }

    /// Every endpoint, by name.
    pub fn list(&self) -> Vec<Endpoint> {
        self.endpoints
            .read(|endpoints| endpoints.values().cloned().collect())
    }

    /// Whether an endpoint of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.endpoints.contains_key(name)
    }

    /// One endpoint.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`].
    pub fn get(&self, name: &str) -> Result<Endpoint> {
        self.endpoints
            .get(name)
            .ok_or_else(|| Error::WebhookNotFound(name.to_string()))
    }

    /// Adds a new endpoint durably.
    ///
    /// # Errors
    /// [`Error::WebhookExists`]; [`Error::LimitExceeded`] beyond the endpoint limit; I/O errors.
    pub fn create(&self, endpoint: Endpoint) -> Result<()> {
        self.endpoints.write(|endpoints| {
            if endpoints.contains_key(&endpoint.name) {
                return Err(Error::WebhookExists(endpoint.name));
            }
            if endpoints.len() >= WEBHOOKS_COUNT_MAX {
                return Err(Error::LimitExceeded {
                    what: "webhooks",
                    value: endpoints.len() as u64 + 1,
                    max: WEBHOOKS_COUNT_MAX as u64,
                });
            }
            Ok((WebhookRecord::Put(Box::new(endpoint)), ()))
        })
    }

    /// Changes an existing endpoint durably with `change`; returns the new definition.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut Endpoint)) -> Result<Endpoint> {
        self.endpoints.write(|endpoints| {
            let mut endpoint = endpoints
                .get(name)
                .cloned()
                .ok_or_else(|| Error::WebhookNotFound(name.to_string()))?;
            change(&mut endpoint);
            Ok((WebhookRecord::Put(Box::new(endpoint.clone())), endpoint))
        })
    }

    /// Deletes an endpoint durably; returns its last definition.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub fn delete(&self, name: &str) -> Result<Endpoint> {
        self.endpoints.write(|endpoints| {
            let endpoint = endpoints
                .get(name)
                .cloned()
                .ok_or_else(|| Error::WebhookNotFound(name.to_string()))?;
            let record = WebhookRecord::Delete {
                name: name.to_string(),
            };
            Ok((record, endpoint))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::journal::replay;
    use crate::io::StdStorage;
    use crate::paths::WEBHOOKS_FILE;

    fn endpoint(name: &str) -> Endpoint {
        Endpoint {
            name: name.to_string(),
            url: "https://example.com/hook".to_string(),
            topic: "orders".to_string(),
            event_types: vec!["created".to_string(), "paid".to_string()],
            key_prefix: b"eu-".to_vec(),
            secret: vec![7; 24],
            paused: false,
            settings: DeliverySettings {
                in_flight_max: 4,
                attempts_max: 3,
                age_max_ms: 1000,
                backoff_initial_ms: 10,
                backoff_max_ms: 100,
                timeout_ms: 500,
                breaker_failures: 2,
                breaker_pause_ms: 50,
                dead_letter_topic: "orders.dead-letter".to_string(),
            },
            redrive_until: vec![(0, 5)],
        }
    }

    #[test]
    fn definitions_survive_reopen_with_updates_and_deletes() {
        // Goal: create, update and delete are durable and replay to the same map.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        {
            let store = WebhookStore::open(Arc::clone(&storage), dir.path()).expect("open");
            store.create(endpoint("a")).expect("create a");
            store.create(endpoint("b")).expect("create b");
            assert!(matches!(
                store.create(endpoint("a")),
                Err(Error::WebhookExists(_))
            ));
            store
                .update("a", |endpoint| endpoint.paused = true)
                .expect("pause");
            store.delete("b").expect("delete");
            assert!(matches!(store.delete("b"), Err(Error::WebhookNotFound(_))));
        }
        let store = WebhookStore::open(storage, dir.path()).expect("reopen");
        let mut expected = endpoint("a");
        expected.paused = true;
        assert_eq!(store.list(), vec![expected]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_bad_record_is_corruption() {
        // Goal: a half-written last record is dropped on open; garbage bodies are rejected.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        {
            let store = WebhookStore::open(Arc::clone(&storage), dir.path()).expect("open");
            store.create(endpoint("a")).expect("create");
            store.create(endpoint("b")).expect("create");
        }
        let path = dir.path().join(WEBHOOKS_FILE);
        let length = std::fs::metadata(&path).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open file");
        file.set_len(length - 3).expect("truncate");
        let store = WebhookStore::open(storage, dir.path()).expect("reopen");
        assert_eq!(store.list(), vec![endpoint("a")]);
        let mut endpoints = std::collections::BTreeMap::new();
        assert!(replay::<WebhookRecord>(&mut endpoints, &mut (), (), &[9, 0, 0]).is_err());
        assert!(replay::<WebhookRecord>(&mut endpoints, &mut (), (), &[1, 1, 0, b'x', 0]).is_err());
    }

    #[test]
    fn the_committed_v1_journal_still_opens() {
        // Goal: the format v1 fixture (create two, pause one, delete the other)
        // replays with the current code to the same definition.
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/webhooks-v1")
            .join(WEBHOOKS_FILE);
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&fixture, dir.path().join(WEBHOOKS_FILE)).expect("copy the fixture");
        let store = WebhookStore::open(Arc::new(StdStorage), dir.path()).expect("open");
        let mut expected = endpoint("orders-crm");
        expected.paused = true;
        assert_eq!(store.list(), vec![expected]);
    }

    #[test]
    fn names_follow_the_rules() {
        // Goal: names are 1..=100 bytes of a safe alphabet.
        assert!(validate_name("orders-to-crm_1.v2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(101)).is_err());
    }
}
