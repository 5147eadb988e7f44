//! Webhook journal records (`STELEWHK`): the server's webhook endpoint
//! definitions, whole (put) or removed (delete). See FORMAT.md, "Webhook journal
//! records".
//!
//! Put (kind 1): `u8 kind`, name, `u8 flags` (bit 0: paused), url, topic, secret,
//! `u16 types_count` and that many event types, key prefix, the delivery settings,
//! the dead-letter topic, `u32 redrive_count` and that many `(u32 partition,
//! u64 offset)`; strings and byte strings are a `u16` length then the bytes.
//! Delete (kind 2): `u8 kind`, name.

use super::journal::{JournalRecord, ReplayError};
use super::{DecodeError, Put, Reader, check_len};
use crate::limits::{
    EVENT_TYPE_SIZE_MAX, KEY_SIZE_MAX, PARTITIONS_COUNT_MAX, TOPIC_NAME_SIZE_MAX,
    WEBHOOK_EVENT_TYPES_COUNT_MAX, WEBHOOK_NAME_SIZE_MAX, WEBHOOK_SECRET_SIZE_MAX, WEBHOOK_URL_SIZE_MAX,
    WEBHOOKS_COUNT_MAX,
};

/// The magic of the webhook journal.
pub const WEBHOOK_MAGIC: &[u8; 8] = b"STELEWHK";
/// Record kind: the whole definition of an endpoint (create or replace).
const KIND_PUT: u8 = 1;
/// Record kind: delete an endpoint.
const KIND_DELETE: u8 = 2;
/// Flag bit of a put record: the endpoint is paused.
const FLAG_PAUSED: u8 = 1;
/// Largest record body: a put with every field at its limit.
pub const WEBHOOK_RECORD_SIZE_MAX: u32 = (1
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

/// One record of the webhook journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookRecord {
    /// Creates or replaces an endpoint with this whole definition.
    Put(Box<Endpoint>),
    /// Removes an endpoint.
    Delete {
        /// The endpoint's name.
        name: String,
    },
}

fn encode_put(endpoint: &Endpoint, body: &mut Vec<u8>) {
    let settings = &endpoint.settings;
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
}

fn decode_string(reader: &mut Reader<'_>, size_max: usize) -> Result<String, DecodeError> {
    Ok(reader.str16(size_max)?.to_string())
}

fn decode_put(reader: &mut Reader<'_>, name: String) -> Result<Endpoint, DecodeError> {
    let flags = reader.u8()?;
    let url = decode_string(reader, WEBHOOK_URL_SIZE_MAX)?;
    let topic = decode_string(reader, TOPIC_NAME_SIZE_MAX)?;
    let secret = reader.bytes16(WEBHOOK_SECRET_SIZE_MAX)?.to_vec();
    let types_count = reader.u16()? as usize;
    check_len(types_count as u64, WEBHOOK_EVENT_TYPES_COUNT_MAX as u64)?;
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
    check_len(u64::from(redrive_count), u64::from(PARTITIONS_COUNT_MAX))?;
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

impl JournalRecord for WebhookRecord {
    const MAGIC: &'static [u8; 8] = WEBHOOK_MAGIC;
    const BODY_SIZE_MAX: u32 = WEBHOOK_RECORD_SIZE_MAX;
    const ENTRIES_COUNT_MAX: usize = WEBHOOKS_COUNT_MAX;
    type Key = String;
    type Value = Endpoint;
    type Context = ();
    type Index = ();

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            WebhookRecord::Put(endpoint) => encode_put(endpoint, out),
            WebhookRecord::Delete { name } => {
                out.put_u8(KIND_DELETE);
                out.put_bytes16(name.as_bytes());
            }
        }
    }

    fn decode(body: &[u8], _context: ()) -> Result<WebhookRecord, DecodeError> {
        let mut reader = Reader::new(body);
        let kind = reader.u8()?;
        let name = decode_string(&mut reader, WEBHOOK_NAME_SIZE_MAX)?;
        let record = match kind {
            KIND_PUT => WebhookRecord::Put(Box::new(decode_put(&mut reader, name)?)),
            KIND_DELETE => WebhookRecord::Delete { name },
            _ => return Err(DecodeError::Invalid("unknown webhook record kind")),
        };
        if reader.remaining() != 0 {
            return Err(DecodeError::Invalid("trailing bytes in a webhook record"));
        }
        Ok(record)
    }

    fn key(&self) -> &String {
        match self {
            WebhookRecord::Put(endpoint) => &endpoint.name,
            WebhookRecord::Delete { name } => name,
        }
    }

    fn apply(
        &self,
        _current: Option<&Endpoint>,
        _index: &(),
        _context: (),
    ) -> Result<Option<Endpoint>, ReplayError> {
        Ok(match self {
            WebhookRecord::Put(endpoint) => Some(Endpoint::clone(endpoint)),
            WebhookRecord::Delete { .. } => None,
        })
    }

    fn snapshot(_name: &String, endpoint: &Endpoint) -> WebhookRecord {
        WebhookRecord::Put(Box::new(endpoint.clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::format::journal::replay;

    #[test]
    fn records_roundtrip_and_bad_bodies_are_refused() {
        let endpoint = Endpoint {
            name: "crm".to_string(),
            url: "https://example.com/hook".to_string(),
            topic: "orders".to_string(),
            event_types: vec!["created".to_string()],
            key_prefix: b"eu-".to_vec(),
            secret: vec![7; 24],
            paused: true,
            settings: DeliverySettings {
                dead_letter_topic: "orders.dead-letter".to_string(),
                ..DeliverySettings::default()
            },
            redrive_until: vec![(0, 5), (3, 9)],
        };
        for record in [
            WebhookRecord::Put(Box::new(endpoint.clone())),
            WebhookRecord::Delete {
                name: "crm".to_string(),
            },
        ] {
            let mut body = Vec::new();
            record.encode(&mut body);
            assert_eq!(WebhookRecord::decode(&body, ()), Ok(record.clone()));
            body.push(0);
            assert!(WebhookRecord::decode(&body, ()).is_err());
        }
        let mut endpoints = BTreeMap::new();
        assert!(replay::<WebhookRecord>(&mut endpoints, &mut (), (), &[9, 0, 0]).is_err());
        assert!(replay::<WebhookRecord>(&mut endpoints, &mut (), (), &[KIND_PUT, 1, 0, b'x', 0]).is_err());
        assert!(endpoints.is_empty());
    }
}
