//! Durable webhook endpoint definitions: the `webhooks.journal` file in the data
//! directory (FORMAT.md, "Webhook journal"), a CRC-framed journal of whole
//! definitions (put) and deletions, compacted when mostly dead.
//!
//! Invariant: the in-memory map equals the replay of the durable journal; a failed
//! write changes neither.
//!
//! Positions are not stored here: each endpoint's position is an engine cursor
//! (`webhook.<name>`) on its topic, committed by the dispatcher.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::format::{DecodeError, Put, Reader};
use crate::io::Storage;
use crate::journal::{COMPACT_SIZE_BYTES_MIN, Journal, encode_frame};
use crate::limits::{
    EVENT_TYPE_SIZE_MAX, KEY_SIZE_MAX, PARTITIONS_COUNT_MAX, TOPIC_NAME_SIZE_MAX,
    WEBHOOK_EVENT_TYPES_COUNT_MAX, WEBHOOK_NAME_SIZE_MAX, WEBHOOK_SECRET_SIZE_MAX, WEBHOOK_URL_SIZE_MAX,
    WEBHOOKS_COUNT_MAX,
};
use crate::paths;

/// The magic of the webhook journal.
pub(crate) const WEBHOOK_MAGIC: &[u8; 8] = b"STELEWHK";
/// Record kind: the whole definition of an endpoint (create or replace).
const KIND_PUT: u8 = 1;
/// Record kind: delete an endpoint.
const KIND_DELETE: u8 = 2;
/// Flag bit of a put record: the endpoint is paused.
const FLAG_PAUSED: u8 = 1;
/// Largest record body: a put with every field at its limit.
pub(crate) const RECORD_SIZE_MAX: u32 = (1
    + 3 * 2
    + WEBHOOK_NAME_SIZE_MAX
    + WEBHOOK_URL_SIZE_MAX
    + 2 * TOPIC_NAME_SIZE_MAX
    + 2
    + WEBHOOK_SECRET_SIZE_MAX
    + 1
    + 2
    + WEBHOOK_EVENT_TYPES_COUNT_MAX * (2 + EVENT_TYPE_SIZE_MAX)
    + 2
    + KEY_SIZE_MAX
    + 4 * 3
    + 8 * 5
    + 2
    + 4
    + 12 * PARTITIONS_COUNT_MAX as usize) as u32;

/// How an endpoint delivers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Keys in flight at once.
    pub in_flight_max: u32,
    /// Attempts per event before it is dead-lettered.
    pub attempts_max: u32,
    /// Time since an event's first attempt after which a failure dead-letters it.
    pub age_max_ms: u64,
    /// Delay before the second attempt, before jitter.
    pub backoff_initial_ms: u64,
    /// Cap on the delay, before jitter.
    pub backoff_max_ms: u64,
    /// Timeout of one request, connecting included.
    pub timeout_ms: u64,
    /// Consecutive receiver failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the open breaker waits before a probe.
    pub breaker_pause_ms: u64,
    /// Where dead letters go.
    pub dead_letter_topic: String,
}

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

/// One endpoint's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique name.
    pub name: String,
    /// Target URL, `http` or `https`.
    pub url: String,
    /// The topic delivered.
    pub topic: String,
    /// Only these event types (empty = all).
    pub event_types: Vec<String>,
    /// Only keys with this prefix (empty = all).
    pub key_prefix: Vec<u8>,
    /// The signing secret's bytes.
    pub secret: Vec<u8>,
    /// Whether delivery is paused.
    pub paused: bool,
    /// Delivery settings.
    pub settings: DeliverySettings,
    /// Redrive target: dead letters of this endpoint below these offsets (by
    /// dead-letter partition) and at or past its redrive cursor are re-delivered.
    pub redrive_until: Vec<(u32, u64)>,
}

/// Checks a webhook name: 1 to 100 ASCII letters, digits, `.`, `_` and `-`.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("webhook name is empty".to_string()));
    }
    if name.len() > WEBHOOK_NAME_SIZE_MAX {
        return Err(Error::LimitExceeded {
            what: "webhook name size",
            value: name.len() as u64,
            max: WEBHOOK_NAME_SIZE_MAX as u64,
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(Error::InvalidArgument(format!(
            "webhook name {name:?} contains {bad:?}; use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

fn encode_put(endpoint: &Endpoint) -> Vec<u8> {
    let settings = &endpoint.settings;
    let mut body = Vec::new();
    body.put_u8(KIND_PUT);
    body.put_bytes16(endpoint.name.as_bytes());
    body.put_u8(if endpoint.paused { FLAG_PAUSED } else { 0 });
    body.put_bytes16(endpoint.url.as_bytes());
    body.put_bytes16(endpoint.topic.as_bytes());
    body.put_bytes16(&endpoint.secret);
    body.put_u16(endpoint.event_types.len() as u16);
    for event_type in &endpoint.event_types {
        body.put_bytes16(event_type.as_bytes());
    }
    body.put_bytes16(&endpoint.key_prefix);
    body.put_u32(settings.in_flight_max);
    body.put_u32(settings.attempts_max);
    body.put_u64(settings.age_max_ms);
    body.put_u64(settings.backoff_initial_ms);
    body.put_u64(settings.backoff_max_ms);
    body.put_u64(settings.timeout_ms);
    body.put_u32(settings.breaker_failures);
    body.put_u64(settings.breaker_pause_ms);
    body.put_bytes16(settings.dead_letter_topic.as_bytes());
    body.put_u32(endpoint.redrive_until.len() as u32);
    for (partition, offset) in &endpoint.redrive_until {
        body.put_u32(*partition);
        body.put_u64(*offset);
    }
    body
}

fn encode_delete(name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_u8(KIND_DELETE);
    body.put_bytes16(name.as_bytes());
    body
}

fn decode_string(reader: &mut Reader<'_>, size_max: usize) -> std::result::Result<String, DecodeError> {
    Ok(reader.str16(size_max)?.to_string())
}

fn decode_put(reader: &mut Reader<'_>, name: String) -> std::result::Result<Endpoint, DecodeError> {
    let flags = reader.u8()?;
    let url = decode_string(reader, WEBHOOK_URL_SIZE_MAX)?;
    let topic = decode_string(reader, TOPIC_NAME_SIZE_MAX)?;
    let secret = reader.bytes16(WEBHOOK_SECRET_SIZE_MAX)?.to_vec();
    let types_count = reader.u16()? as usize;
    crate::format::check_len(types_count as u64, WEBHOOK_EVENT_TYPES_COUNT_MAX as u64)?;
    let mut event_types = Vec::with_capacity(types_count);
    for _ in 0..types_count {
        event_types.push(decode_string(reader, EVENT_TYPE_SIZE_MAX)?);
    }
    let key_prefix = reader.bytes16(KEY_SIZE_MAX)?.to_vec();
    let settings = DeliverySettings {
        in_flight_max: reader.u32()?,
        attempts_max: reader.u32()?,
        age_max_ms: reader.u64()?,
        backoff_initial_ms: reader.u64()?,
        backoff_max_ms: reader.u64()?,
        timeout_ms: reader.u64()?,
        breaker_failures: reader.u32()?,
        breaker_pause_ms: reader.u64()?,
        dead_letter_topic: decode_string(reader, TOPIC_NAME_SIZE_MAX)?,
    };
    let redrive_count = reader.u32()?;
    crate::format::check_len(u64::from(redrive_count), u64::from(PARTITIONS_COUNT_MAX))?;
    let mut redrive_until = Vec::with_capacity(redrive_count as usize);
    for _ in 0..redrive_count {
        redrive_until.push((reader.u32()?, reader.u64()?));
    }
    Ok(Endpoint {
        name,
        url,
        topic,
        event_types,
        key_prefix,
        secret,
        paused: flags & FLAG_PAUSED != 0,
        settings,
        redrive_until,
    })
}

/// Applies one journal record to the map.
pub(crate) fn replay(
    endpoints: &mut BTreeMap<String, Endpoint>,
    body: &[u8],
) -> std::result::Result<(), DecodeError> {
    let mut reader = Reader::new(body);
    let kind = reader.u8()?;
    let name = decode_string(&mut reader, WEBHOOK_NAME_SIZE_MAX)?;
    match kind {
        KIND_PUT => {
            if !endpoints.contains_key(&name) && endpoints.len() >= WEBHOOKS_COUNT_MAX {
                return Err(DecodeError::LengthOutOfBounds {
                    len: endpoints.len() as u64 + 1,
                    max: WEBHOOKS_COUNT_MAX as u64,
                });
            }
            let endpoint = decode_put(&mut reader, name.clone())?;
            endpoints.insert(name, endpoint);
        }
        KIND_DELETE => {
            endpoints.remove(&name);
        }
        _ => return Err(DecodeError::Invalid("unknown webhook record kind")),
    }
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("trailing bytes in a webhook record"));
    }
    Ok(())
}

fn snapshot(endpoints: &BTreeMap<String, Endpoint>) -> Vec<u8> {
    let mut frames = Vec::new();
    for endpoint in endpoints.values() {
        encode_frame(&mut frames, &encode_put(endpoint));
    }
    frames
}

/// The durable set of endpoint definitions.
#[derive(Debug)]
pub struct WebhookStore {
    state: Mutex<(Journal, BTreeMap<String, Endpoint>)>,
}

impl WebhookStore {
    /// Opens or creates `webhooks.journal` in `dir`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut); I/O errors.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<WebhookStore> {
        let path: PathBuf = paths::webhooks_journal(dir);
        let mut endpoints = BTreeMap::new();
        let replay_path = path.clone();
        let journal = Journal::open(
            storage,
            path,
            WEBHOOK_MAGIC,
            RECORD_SIZE_MAX,
            &mut |position, body| {
                replay(&mut endpoints, body)
                    .map_err(|reason| Error::corruption(&replay_path, position, reason))
            },
        )?;
        Ok(WebhookStore {
            state: Mutex::new((journal, endpoints)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (Journal, BTreeMap<String, Endpoint>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every endpoint, by name.
    pub fn list(&self) -> Vec<Endpoint> {
        self.lock().1.values().cloned().collect()
    }

    /// Whether an endpoint of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().1.contains_key(name)
    }

    /// One endpoint.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`].
    pub fn get(&self, name: &str) -> Result<Endpoint> {
        self.lock()
            .1
            .get(name)
            .cloned()
            .ok_or_else(|| Error::WebhookNotFound(name.to_string()))
    }

    /// Adds a new endpoint durably.
    ///
    /// # Errors
    /// [`Error::WebhookExists`]; [`Error::LimitExceeded`] beyond the endpoint limit; I/O errors.
    pub fn create(&self, endpoint: Endpoint) -> Result<()> {
        let mut guard = self.lock();
        if guard.1.contains_key(&endpoint.name) {
            return Err(Error::WebhookExists(endpoint.name));
        }
        if guard.1.len() >= WEBHOOKS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "webhooks",
                value: guard.1.len() as u64 + 1,
                max: WEBHOOKS_COUNT_MAX as u64,
            });
        }
        write(&mut guard, &encode_put(&endpoint))?;
        guard.1.insert(endpoint.name.clone(), endpoint);
        Ok(())
    }

    /// Changes an existing endpoint durably with `change`; returns the new definition.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut Endpoint)) -> Result<Endpoint> {
        let mut guard = self.lock();
        let mut endpoint = guard
            .1
            .get(name)
            .cloned()
            .ok_or_else(|| Error::WebhookNotFound(name.to_string()))?;
        change(&mut endpoint);
        write(&mut guard, &encode_put(&endpoint))?;
        guard.1.insert(name.to_string(), endpoint.clone());
        Ok(endpoint)
    }

    /// Deletes an endpoint durably; returns its last definition.
    ///
    /// # Errors
    /// [`Error::WebhookNotFound`]; I/O errors.
    pub fn delete(&self, name: &str) -> Result<Endpoint> {
        let mut guard = self.lock();
        let endpoint = guard
            .1
            .get(name)
            .cloned()
            .ok_or_else(|| Error::WebhookNotFound(name.to_string()))?;
        write(&mut guard, &encode_delete(name))?;
        guard.1.remove(name);
        Ok(endpoint)
    }
}

/// Appends one record body; compacts the journal first when it is mostly dead.
fn write(guard: &mut MutexGuard<'_, (Journal, BTreeMap<String, Endpoint>)>, body: &[u8]) -> Result<()> {
    let (journal, endpoints) = &mut **guard;
    let frames_snapshot = || snapshot(endpoints);
    let live_size = frames_snapshot().len() as u64;
    if journal.should_compact(live_size, COMPACT_SIZE_BYTES_MIN) {
        journal.rewrite(&frames_snapshot())?;
    }
    let mut frames = Vec::new();
    encode_frame(&mut frames, body);
    journal.append(&frames, &frames_snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let mut endpoints = BTreeMap::new();
        assert!(replay(&mut endpoints, &[9, 0, 0]).is_err());
        assert!(replay(&mut endpoints, &[KIND_PUT, 1, 0, b'x', 0]).is_err());
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
