//! The JSON body of a webhook request.
//!
//! `{"topic", "partition", "offset", "key", "type", "sequence", "timestamp_ms",
//! "timestamp", "headers", "payload", "payload_encoding"}`: the key and header
//! values are strings when they are UTF-8 and `{"base64": ...}` otherwise; the
//! payload is embedded as JSON when it is valid UTF-8 JSON (`payload_encoding`
//! `"json"`), else base64 (`"base64"`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

/// The parts of an event a body shows.
#[derive(Debug, Clone)]
pub struct BodyEvent<'a> {
    /// The source topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: u32,
    /// The offset within the partition.
    pub offset: u64,
    /// The key.
    pub key: &'a [u8],
    /// The event type.
    pub event_type: &'a str,
    /// The sequence within the key.
    pub sequence: u64,
    /// The append time, Unix ms.
    pub timestamp_ms: i64,
    /// The event's headers.
    pub headers: &'a [(String, Vec<u8>)],
    /// The payload.
    pub payload: &'a [u8],
}

fn bytes_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": STANDARD.encode(bytes) }),
    }
}

/// Renders the body.
pub fn render(event: &BodyEvent<'_>) -> Vec<u8> {
    let (payload, encoding) = match serde_json::from_slice::<Value>(event.payload) {
        Ok(value) => (value, "json"),
        Err(_) => (Value::String(STANDARD.encode(event.payload)), "base64"),
    };
    let headers: Map<String, Value> = event
        .headers
        .iter()
        .map(|(name, value)| (name.clone(), bytes_value(value)))
        .collect();
    let body = json!({
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "key": bytes_value(event.key),
        "type": event.event_type,
        "sequence": event.sequence,
        "timestamp_ms": event.timestamp_ms,
        "timestamp": crate::civil::format_timestamp_ms(event.timestamp_ms),
        "headers": headers,
        "payload": payload,
        "payload_encoding": encoding,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(payload: &'a [u8], key: &'a [u8], headers: &'a [(String, Vec<u8>)]) -> BodyEvent<'a> {
        BodyEvent {
            topic: "orders",
            partition: 2,
            offset: 7,
            key,
            event_type: "created",
            sequence: 3,
            timestamp_ms: 1_614_265_330_123,
            headers,
            payload,
        }
    }

    #[test]
    fn json_payloads_are_embedded_and_others_base64() {
        // Goal: the body carries every field; JSON payloads stay JSON, binary becomes base64.
        let headers = vec![
            ("trace".to_string(), b"abc".to_vec()),
            ("bin".to_string(), vec![0xff]),
        ];
        let body: Value =
            serde_json::from_slice(&render(&event(br#"{"n":1}"#, b"order-1", &headers))).expect("json");
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
        let body: Value = serde_json::from_slice(&render(&event(&[0, 159, 1], &[0xfe], &[]))).expect("json");
        assert_eq!(body["payload"], "AJ8B");
        assert_eq!(body["payload_encoding"], "base64");
        assert_eq!(body["key"], json!({"base64": "/g=="}));
        let body: Value = serde_json::from_slice(&render(&event(b"plain text", b"k", &[]))).expect("json");
        assert_eq!(body["payload_encoding"], "base64");
    }
}
