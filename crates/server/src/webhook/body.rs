//! The JSON body of a webhook request, specified by the JSON Schema in
//! `docs/webhook-body.schema.json`.
//!
//! `{"topic", "partition", "offset", "key", "type", "sequence", "timestamp_ms",
//! "timestamp", "headers", "payload_encoding", "payload"}`: the key and header
//! values are strings when they are UTF-8 and `{"base64": ...}` otherwise.
//! A payload that is UTF-8 JSON is embedded verbatim, byte for byte (spacing,
//! key order, duplicate keys and number spellings kept), with `payload_encoding`
//! `"json"`; any other payload is a base64 string with `payload_encoding`
//! `"base64"`.
//!
//! Invariant: the payload's bytes are never parsed into values and written
//! again; they are only checked to be one JSON text, then copied.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};
use stele_engine::EventRef;

fn bytes_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": STANDARD.encode(bytes) }),
    }
}

/// The payload as one JSON text (RFC 8259; UTF-8 without a byte order mark),
/// when it is one. Only checked, not parsed into values: the check that
/// `serde_json::value::RawValue` makes, which has no nesting limit and uses no
/// recursion, so any payload size is safe.
fn payload_json(payload: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(payload).ok()?;
    serde_json::from_str::<IgnoredAny>(text).ok()?;
    Some(text)
}

/// Every field but the payload, in the order written.
#[derive(Serialize)]
struct Head<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    key: Value,
    #[serde(rename = "type")]
    event_type: &'a str,
    sequence: u64,
    timestamp_ms: i64,
    timestamp: String,
    headers: Map<String, Value>,
    payload_encoding: &'static str,
}

/// Renders the body of `event` of `topic`: the one encoder from a stored event
/// to a webhook body.
pub fn render(topic: &str, event: &EventRef<'_>) -> Vec<u8> {
    let json = payload_json(event.payload);
    let head = Head {
        topic,
        partition: event.partition.0,
        offset: event.offset.0,
        key: bytes_value(event.key),
        event_type: event.event_type,
        sequence: event.sequence.0,
        timestamp_ms: event.timestamp_ms,
        timestamp: stele_engine::civil::format_timestamp_ms(event.timestamp_ms),
        headers: event
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), bytes_value(value)))
            .collect(),
        payload_encoding: if json.is_some() { "json" } else { "base64" },
    };
    let base64;
    let payload = match json {
        Some(text) => text.as_bytes(),
        None => {
            base64 = format!("\"{}\"", STANDARD.encode(event.payload));
            base64.as_bytes()
        }
    };
    let mut body =
        serde_json::to_vec(&head).expect("a struct of strings, numbers and string maps serialises");
    debug_assert_eq!(body.last(), Some(&b'}'), "the head is an object");
    body.pop();
    body.reserve(payload.len() + 13);
    body.extend_from_slice(b",\"payload\":");
    // Whitespace around the payload's value is JSON whitespace, legal here too.
    body.extend_from_slice(payload);
    body.push(b'}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele_engine::Sequence;

    use stele_engine::event::{Offset, PartitionId, RecordedEvent};

    fn rendered(payload: &[u8], key: &[u8], headers: &[(String, Vec<u8>)]) -> Vec<u8> {
        let event = RecordedEvent {
            partition: PartitionId(2),
            offset: Offset(7),
            timestamp_ms: 1_614_265_330_123,
            key: key.to_vec(),
            sequence: Sequence(3),
            event_type: "created".to_string(),
            payload: payload.to_vec(),
            headers: headers.to_vec(),
            idempotency_id: None,
            producer: None,
        };
        render("orders", &event.as_event_ref())
    }

    #[test]
    fn json_payloads_are_embedded_and_others_base64() {
        // Goal: the body carries every field; JSON payloads stay JSON, binary becomes base64.
        let headers = vec![
            ("trace".to_string(), b"abc".to_vec()),
            ("bin".to_string(), vec![0xff]),
        ];
        let body: Value =
            serde_json::from_slice(&rendered(br#"{"n":1}"#, b"order-1", &headers)).expect("json");
        assert_eq!(body["payload"], json!({"n": 1}));
        assert_eq!(body["payload_encoding"], "json");
        assert_eq!(body["key"], "order-1");
        assert_eq!(body["topic"], "orders");
        assert_eq!(body["partition"], 2);
        assert_eq!(body["offset"], 7);
        assert_eq!(body["sequence"], 3);
        assert_eq!(body["type"], "created");
        assert_eq!(body["timestamp"], "2021-02-25T15:02:10.123Z");
        assert_eq!(body["headers"]["trace"], "abc");
        assert_eq!(body["headers"]["bin"], json!({"base64": "/w=="}));
        let body: Value = serde_json::from_slice(&rendered(&[0, 159, 1], &[0xfe], &[])).expect("json");
        assert_eq!(body["payload"], "AJ8B");
        assert_eq!(body["payload_encoding"], "base64");
        assert_eq!(body["key"], json!({"base64": "/g=="}));
        let body: Value = serde_json::from_slice(&rendered(b"plain text", b"k", &[])).expect("json");
        assert_eq!(body["payload_encoding"], "base64");
    }

    #[test]
    fn json_payloads_are_copied_byte_for_byte() {
        // Goal: a JSON payload is in the body exactly as appended: big numbers,
        // duplicate keys, key order, spacing (inside and around), escapes and
        // non-ASCII text unchanged, and the body is still one JSON text. Deep
        // nesting is valid JSON too, and must not exhaust the stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for payload in [
            br#"{"id": 12345678901234567890, "id": 2,  "b":1e400, "a" :[ 1.000 ,-0 ]}"#.as_slice(),
            b" \t\r\n{\"z\":1,\"a\":2}\n ",
            "\"caf\u{e9} \\u00e9 \\ud83d\\ude00\"".as_bytes(),
            b"12345678901234567890123",
            b"null",
            b"[]",
            deep.as_bytes(),
        ] {
            let body = rendered(payload, b"k", &[]);
            let text = std::str::from_utf8(&body).expect("UTF-8 body");
            let mut expected = b",\"payload_encoding\":\"json\",\"payload\":".to_vec();
            expected.extend_from_slice(payload);
            expected.push(b'}');
            assert!(
                body.ends_with(&expected),
                "{text} must end with the payload verbatim"
            );
            serde_json::from_slice::<IgnoredAny>(&body).expect("the body is JSON");
        }
    }

    #[test]
    fn payloads_that_are_not_one_json_text_are_base64() {
        // Goal: anything a JSON parser would refuse goes as base64 of its exact
        // bytes: empty, two values, trailing text, a byte order mark, a raw
        // control character in a string, bad UTF-8, unbalanced brackets.
        let unbalanced = format!("{}{}", "[".repeat(200), "]".repeat(199));
        for payload in [
            b"".as_slice(),
            b"{} {}",
            b"{\"a\":1} x",
            b"\xef\xbb\xbf{}",
            b"\"a\x01b\"",
            b"\"\xff\"",
            b"{'a':1}",
            b"01",
            unbalanced.as_bytes(),
        ] {
            let body: Value = serde_json::from_slice(&rendered(payload, b"k", &[])).expect("json");
            assert_eq!(body["payload_encoding"], "base64", "{payload:?}");
            let decoded = STANDARD
                .decode(body["payload"].as_str().expect("a base64 string"))
                .expect("base64");
            assert_eq!(decoded, payload);
        }
    }
}
