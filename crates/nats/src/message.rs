//! How an event is one JetStream message: its subject and headers
//! (docs/design/nats-backend.md, "The mapping").
//!
//! Subject: `stele.<topic token>.<partition>.<key token>`, where the key token
//! is the key's base64url when that is at most [`KEY_TOKEN_LEN_MAX`]
//! characters, else `h.` and the base64url of its 128-bit XXH3 hash. The
//! subject serves per-key filters; the key itself is always in a header.
//!
//! Headers (every byte string in standard base64, so that any bytes survive
//! NATS's line-based headers; numbers in decimal):
//! `Stele-Key`, `Stele-Type`, `Stele-Sequence` (the key's sequence),
//! `Stele-Timestamp` (Unix ms), `Stele-Previous` (the offset of the key's
//! previous event, absent for its first), `Stele-Id` (idempotency id, when
//! set), `Stele-Producer` (`id.epoch.sequence`, when stamped), and one
//! `Stele-H-<index>` per user header, `<name>.<value>`, in order. The payload
//! is the message body, unchanged.

use async_nats::HeaderMap;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use stele_engine::event::{Epoch, Event, Offset, ProducerId, ProducerStamp, Sequence};
use stele_engine::limits::{EVENT_TYPE_SIZE_MAX, KEY_SIZE_MAX};

/// The longest key token written as the key's own base64url.
pub const KEY_TOKEN_LEN_MAX: usize = 128;

const KEY: &str = "Stele-Key";
const TYPE: &str = "Stele-Type";
const SEQUENCE: &str = "Stele-Sequence";
const TIMESTAMP: &str = "Stele-Timestamp";
const PREVIOUS: &str = "Stele-Previous";
const ID: &str = "Stele-Id";
const PRODUCER: &str = "Stele-Producer";
const USER_HEADER: &str = "Stele-H-";
/// More user headers than any event the engine accepts.
const USER_HEADERS_COUNT_MAX: usize = 1024;

/// An event as a partition stream stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The key.
    pub key: Vec<u8>,
    /// The key's sequence of this event.
    pub sequence: Sequence,
    /// When it was appended, Unix ms.
    pub timestamp_ms: i64,
    /// The offset of the key's previous event.
    pub previous: Option<Offset>,
    /// The producer stamp of its append, when stamped.
    pub producer: Option<ProducerStamp>,
    /// Type, payload, headers and idempotency id.
    pub event: Event,
}

/// Why a message is not a Stele event. A stream holding one is damaged (or was
/// written by something else), never served as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// A header Stele writes is missing.
    #[error("header {0} is missing")]
    Missing(&'static str),
    /// A header does not decode.
    #[error("header {0} is malformed")]
    Malformed(&'static str),
    /// A value is above its limit.
    #[error("{0} is above its limit")]
    TooLarge(&'static str),
}

/// The subject of `key` in partition `partition` of `topic`, in the default
/// namespace ([`crate::topics::Names::subject`] for another).
pub fn subject(topic: &str, partition: u32, key: &[u8]) -> String {
    crate::topics::Names::default().subject(topic, partition, key)
}

/// The subject token(s) of a key: its base64url, or `h.` and the base64url of
/// its XXH3-128 when that is longer than [`KEY_TOKEN_LEN_MAX`].
pub fn key_token(key: &[u8]) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(key);
    if encoded.len() <= KEY_TOKEN_LEN_MAX {
        encoded
    } else {
        let hash = xxhash_rust::xxh3::xxh3_128(key);
        format!("h.{}", URL_SAFE_NO_PAD.encode(hash.to_be_bytes()))
    }
}

/// An upper bound of the bytes a NATS server counts against `max_payload`
/// for an event of `key` (headers and body): what a publish would be
/// refused for, known before anything is published.
pub fn size_bound(key: &[u8], event: &Event) -> usize {
    let base64 = |bytes: usize| bytes.div_ceil(3) * 4;
    // "NATS/1.0\r\n", the blank line, and per header "Name: value\r\n".
    let line = |name: &str, value: usize| name.len() + 2 + value + 2;
    // Numbers (sequence, timestamp, previous, producer stamp, the fence and
    // the writer's id) at their longest.
    let fixed = 12
        + 2
        + 6 * line("Stele-Timestamp", 60)
        + line("Nats-Expected-Last-Sequence", 20)
        + line("Nats-Batch-Sequence", 20)
        + line("Nats-Batch-Commit", 1)
        + line("Nats-Batch-Id", 64)
        + line("Stele-Write", 64);
    let mut size = fixed
        + line(KEY, base64(key.len()))
        + line(TYPE, base64(event.event_type.len()))
        + event
            .idempotency_id
            .as_ref()
            .map_or(0, |id| line(ID, base64(id.len())))
        + event.payload.len();
    for (index, (name, value)) in event.headers.iter().enumerate() {
        size += line(
            USER_HEADER,
            20 + index.to_string().len() + base64(name.len()) + 1 + base64(value.len()),
        );
    }
    size
}

/// The headers of `message` (its payload is the message body).
pub fn headers(message: &StoredMessage) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(KEY, STANDARD.encode(&message.key).as_str());
    headers.insert(
        TYPE,
        STANDARD.encode(message.event.event_type.as_bytes()).as_str(),
    );
    headers.insert(SEQUENCE, message.sequence.0.to_string().as_str());
    headers.insert(TIMESTAMP, message.timestamp_ms.to_string().as_str());
    if let Some(previous) = message.previous {
        headers.insert(PREVIOUS, previous.0.to_string().as_str());
    }
    if let Some(id) = &message.event.idempotency_id {
        headers.insert(ID, STANDARD.encode(id).as_str());
    }
    if let Some(stamp) = message.producer {
        let text = format!("{}.{}.{}", stamp.producer.0, stamp.epoch.0, stamp.sequence.0);
        headers.insert(PRODUCER, text.as_str());
    }
    for (index, (name, value)) in message.event.headers.iter().enumerate() {
        let text = format!("{}.{}", STANDARD.encode(name.as_bytes()), STANDARD.encode(value));
        headers.insert(format!("{USER_HEADER}{index}").as_str(), text.as_str());
    }
    headers
}

fn text<'a>(headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

fn bytes(value: &str, name: &'static str, size_max: usize) -> Result<Vec<u8>, MessageError> {
    // Base64 is 4/3 of the bytes: refuse before decoding what cannot fit.
    if value.len() > size_max.div_ceil(3) * 4 {
        return Err(MessageError::TooLarge(name));
    }
    let decoded = STANDARD
        .decode(value)
        .map_err(|_| MessageError::Malformed(name))?;
    if decoded.len() > size_max {
        return Err(MessageError::TooLarge(name));
    }
    Ok(decoded)
}

fn number<T: std::str::FromStr>(value: &str, name: &'static str) -> Result<T, MessageError> {
    if value.is_empty() || !value.bytes().all(|byte| byte.is_ascii_digit() || byte == b'-') {
        return Err(MessageError::Malformed(name));
    }
    value.parse().map_err(|_| MessageError::Malformed(name))
}

/// Decodes a message of a partition stream: its headers and body.
///
/// # Errors
/// [`MessageError`] for a message Stele did not write.
pub fn decode(headers: &HeaderMap, payload: &[u8]) -> Result<StoredMessage, MessageError> {
    let required = |name: &'static str| text(headers, name).ok_or(MessageError::Missing(name));
    let key = bytes(required(KEY)?, KEY, KEY_SIZE_MAX)?;
    if key.is_empty() {
        return Err(MessageError::Malformed(KEY));
    }
    let event_type = String::from_utf8(bytes(required(TYPE)?, TYPE, EVENT_TYPE_SIZE_MAX)?)
        .map_err(|_| MessageError::Malformed(TYPE))?;
    let sequence = Sequence(number(required(SEQUENCE)?, SEQUENCE)?);
    let timestamp_ms = number(required(TIMESTAMP)?, TIMESTAMP)?;
    let previous = text(headers, PREVIOUS)
        .map(|value| number(value, PREVIOUS).map(Offset))
        .transpose()?;
    let idempotency_id = text(headers, ID)
        .map(|value| bytes(value, ID, stele_engine::limits::IDEMPOTENCY_ID_SIZE_MAX))
        .transpose()?;
    let producer = text(headers, PRODUCER)
        .map(|value| {
            let mut parts = value.split('.');
            let mut part = || parts.next().unwrap_or_default();
            let stamp = ProducerStamp {
                producer: ProducerId(number(part(), PRODUCER)?),
                epoch: Epoch(number(part(), PRODUCER)?),
                sequence: Sequence(number(part(), PRODUCER)?),
            };
            match parts.next() {
                None => Ok(stamp),
                Some(_) => Err(MessageError::Malformed(PRODUCER)),
            }
        })
        .transpose()?;
    let mut user_headers = Vec::new();
    for index in 0.. {
        let Some(value) = headers.get(format!("{USER_HEADER}{index}").as_str()) else {
            break;
        };
        if index >= USER_HEADERS_COUNT_MAX {
            return Err(MessageError::TooLarge(USER_HEADER));
        }
        let (name, value) = value
            .as_str()
            .split_once('.')
            .ok_or(MessageError::Malformed(USER_HEADER))?;
        let name = String::from_utf8(bytes(name, USER_HEADER, u16::MAX as usize)?)
            .map_err(|_| MessageError::Malformed(USER_HEADER))?;
        user_headers.push((name, bytes(value, USER_HEADER, u32::MAX as usize)?));
    }
    Ok(StoredMessage {
        key,
        sequence,
        timestamp_ms,
        previous,
        producer,
        event: Event {
            event_type,
            payload: payload.to_vec(),
            headers: user_headers,
            idempotency_id,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StoredMessage {
        StoredMessage {
            key: b"invoice-42".to_vec(),
            sequence: Sequence(7),
            timestamp_ms: 1_764_000_000_123,
            previous: Some(Offset(40)),
            producer: Some(ProducerStamp {
                producer: ProducerId(3),
                epoch: Epoch(2),
                sequence: Sequence(99),
            }),
            event: Event {
                event_type: "paid".to_string(),
                payload: b"{\"amount\": 10}".to_vec(),
                headers: vec![
                    ("trace".to_string(), b"abc".to_vec()),
                    ("bin\nary name".to_string(), vec![0, 13, 10, 255]),
                ],
                idempotency_id: Some(b"pay-1".to_vec()),
            },
        }
    }

    #[test]
    fn the_size_bound_covers_every_header_stele_writes() {
        // Goal: an event refused for its size is refused before publishing,
        // and one that fits is never refused by the server: the bound is at
        // least the encoded headers (with the writer's own) plus the body.
        let mut message = message();
        message.event.headers.push(("empty".to_string(), Vec::new()));
        let mut headers = headers(&message);
        headers.insert("Nats-Expected-Last-Sequence", u64::MAX.to_string().as_str());
        headers.insert("Stele-Write", "x".repeat(40).as_str());
        headers.insert("Nats-Batch-Id", "x".repeat(40).as_str());
        headers.insert("Nats-Batch-Sequence", "1000");
        headers.insert("Nats-Batch-Commit", "1");
        let encoded: usize = 12
            + headers
                .iter()
                .map(|(name, values)| {
                    values
                        .iter()
                        .map(|value| name.to_string().len() + 2 + value.as_str().len() + 2)
                        .sum::<usize>()
                })
                .sum::<usize>()
            + message.event.payload.len();
        let bound = size_bound(&message.key, &message.event);
        assert!(bound >= encoded, "bound {bound} below the encoded {encoded}");
        assert!(
            bound < encoded + 1024,
            "bound {bound} far above the encoded {encoded}"
        );
    }

    #[test]
    fn every_field_survives_the_headers_even_binary_ones() {
        let message = message();
        assert_eq!(
            decode(&headers(&message), &message.event.payload),
            Ok(message.clone())
        );
        let bare = StoredMessage {
            previous: None,
            producer: None,
            event: Event::new("created", vec![0xff, 0]),
            key: vec![0, 1, 2],
            ..message
        };
        assert_eq!(decode(&headers(&bare), &bare.event.payload), Ok(bare.clone()));
    }

    #[test]
    fn messages_stele_did_not_write_are_refused() {
        assert_eq!(decode(&HeaderMap::new(), b"x"), Err(MessageError::Missing(KEY)));
        let message = message();
        for (name, value) in [
            (KEY, "!!!"),
            (KEY, ""),
            (SEQUENCE, "-1"),
            (SEQUENCE, "7x"),
            (TIMESTAMP, ""),
            (PRODUCER, "1.2"),
            (PRODUCER, "1.2.3.4"),
            ("Stele-H-0", "no-dot"),
        ] {
            let mut headers = headers(&message);
            headers.insert(name, value);
            assert!(decode(&headers, b"").is_err(), "{name}: {value:?}");
        }
        let mut huge = headers(&message);
        huge.insert(KEY, STANDARD.encode(vec![1u8; KEY_SIZE_MAX + 1]).as_str());
        assert_eq!(decode(&huge, b""), Err(MessageError::TooLarge(KEY)));
    }

    proptest::proptest! {
        #[test]
        fn any_message_round_trips(
            key in proptest::collection::vec(proptest::num::u8::ANY, 1..64),
            event_type in "[a-z_]{1,20}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            sequence in proptest::num::u64::ANY,
            timestamp_ms in proptest::num::i64::ANY,
            previous in proptest::option::of(proptest::num::u64::ANY),
            id in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 1..32)),
            user in proptest::collection::vec((".{0,8}", proptest::collection::vec(proptest::num::u8::ANY, 0..8)), 0..4),
        ) {
            let message = StoredMessage {
                key,
                sequence: Sequence(sequence),
                timestamp_ms,
                previous: previous.map(Offset),
                producer: None,
                event: Event { event_type, payload, headers: user, idempotency_id: id },
            };
            proptest::prop_assert_eq!(decode(&headers(&message), &message.event.payload), Ok(message.clone()));
        }

        #[test]
        fn arbitrary_header_values_never_panic(
            values in proptest::collection::vec("[ -~]{0,40}", 9),
        ) {
            let names = [KEY, TYPE, SEQUENCE, TIMESTAMP, PREVIOUS, ID, PRODUCER, "Stele-H-0", "Stele-H-1"];
            let mut headers = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                headers.insert(*name, value.as_str());
            }
            let _ = decode(&headers, b"payload");
        }
    }

    #[test]
    fn subjects_carry_short_keys_and_hash_long_ones() {
        assert_eq!(subject("orders", 2, b"k"), "stele.b3JkZXJz.2.aw");
        let long = vec![7u8; 200];
        let hashed = subject("orders", 2, &long);
        assert!(hashed.starts_with("stele.b3JkZXJz.2.h."), "{hashed}");
        assert_eq!(hashed, subject("orders", 2, &long));
        assert_ne!(hashed, subject("orders", 2, &[8u8; 200]));
        assert!(!subject("orders", 2, &[0xfb, 0xff, b'.', b' ']).contains(['+', '/', ' ']));
    }
}
