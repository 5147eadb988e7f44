//! How the command shows bytes, events and errors, as text for people and as
//! JSON for programs.
//!
//! Two rules hold for every command:
//! - JSON: a field holding bytes (key, payload, idempotency id, header value,
//!   key prefix) is a JSON string when the bytes are valid UTF-8, else an object
//!   `{"base64": "..."}` with the standard padded alphabet (RFC 4648).
//! - Text: anything that came from the server is passed through [`escape`] (or
//!   [`display_bytes`]), so an event cannot move the cursor, change colours or
//!   retitle the terminal: C0 and C1 controls, DEL and the Unicode bidirectional
//!   controls are written as escapes, and bytes that are not UTF-8 as `base64:...`.
//!
//! JSON objects are `#[derive(Serialize)]` structs printed through
//! [`print_json`], whose keys come out sorted (a `serde_json::Map`).
//!
//! It does not decide exit codes, and it never decodes errors itself: the
//! client's [`stele::client::ClientError`] does.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;
// One RFC 3339 formatter for the project: webhook bodies use it too, and it
// covers every i64 timestamp (humantime's panics before 1970).
use stele::RecordedEvent;
use stele::civil::format_timestamp_ms as format_timestamp;
use stele::client::ErrorDetails;

/// Standard base64 with padding, as in the JSON scheme.
pub(crate) fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes as JSON: the text when they are UTF-8, else `{"base64": "..."}`.
#[cfg(test)]
fn bytes_json(bytes: &[u8]) -> Value {
    to_json(&Bytes(bytes))
}

/// Bytes that serialize as [`bytes_json`] does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => {
                #[derive(Serialize)]
                struct Base64 {
                    base64: String,
                }
                Base64 {
                    base64: base64(self.0),
                }
                .serialize(serializer)
            }
        }
    }
}

/// Prints one JSON object on one line of stdout, through [`json_line`].
pub(crate) fn print_json(value: &impl Serialize) {
    println!("{}", json_line(&to_json(value)));
}

/// A value as JSON; a map's keys come out sorted.
pub(crate) fn to_json(value: &impl Serialize) -> Value {
    serde_json::to_value(value).expect("the command's JSON structs have string keys")
}

/// Whether a character must not reach a terminal as is: C0 controls (ESC
/// included), DEL, C1 controls (CSI U+009B included), and the bidirectional
/// controls that reorder what a line appears to say.
fn is_unsafe(character: char) -> bool {
    character.is_control()
        || matches!(
            character,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Text safe to print on a terminal: `\n`, `\r` and `\t` as themselves escaped,
/// other controls below U+0100 as `\xNN`, bidirectional controls as `\u{NNNN}`.
/// Everything else, backslashes included, is unchanged.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        match character {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            character if is_unsafe(character) && u32::from(character) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", u32::from(character));
            }
            character if is_unsafe(character) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(character));
            }
            character => out.push(character),
        }
    }
    Cow::Owned(out)
}

/// Bytes as terminal-safe text: [`escape`]d UTF-8, or `base64:...` for other bytes.
pub(crate) fn display_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => escape(text).into_owned(),
        Err(_) => format!("base64:{}", base64(bytes)),
    }
}

/// A JSON value as one line, with DEL, C1 and bidirectional controls written as
/// `\uNNNN` escapes too (serde_json escapes only C0): the same JSON value, and
/// safe on a terminal.
pub(crate) fn json_line(value: &Value) -> String {
    let text = value.to_string();
    if !text.chars().any(is_unsafe) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for character in text.chars() {
        // Outside strings JSON has no control characters, so every one is inside a string.
        if is_unsafe(character) {
            let _ = write!(out, "\\u{:04x}", u32::from(character));
        } else {
            out.push(character);
        }
    }
    out
}

/// Prints one event on one line of stdout.
pub(crate) fn print_event(event: &RecordedEvent, json_output: bool) {
    if json_output {
        print_json(&EventJson::of(event));
        return;
    }
    let mut headers: Vec<String> = event
        .headers
        .iter()
        .map(|(name, value)| format!("{}={}", escape(name), display_bytes(value)))
        .collect();
    headers.sort();
    let headers = if headers.is_empty() {
        String::new()
    } else {
        format!(" [{}]", headers.join(" "))
    };
    println!(
        "{}/{} {}@{} {} {}{headers} {}",
        event.partition.0,
        event.offset.0,
        display_bytes(&event.key),
        event.sequence,
        escape(&event.event_type),
        format_timestamp(event.timestamp_ms),
        display_bytes(&event.payload),
    );
}

/// One event as a JSON object.
#[derive(Serialize)]
struct EventJson<'a> {
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    timestamp: String,
    key: Bytes<'a>,
    sequence: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: Bytes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_id: Option<Bytes<'a>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<&'a str, Bytes<'a>>,
}

impl<'a> EventJson<'a> {
    fn of(event: &'a RecordedEvent) -> EventJson<'a> {
        EventJson {
            partition: event.partition.0,
            offset: event.offset.0,
            timestamp_ms: event.timestamp_ms,
            timestamp: format_timestamp(event.timestamp_ms),
            key: Bytes(&event.key),
            sequence: event.sequence.0,
            event_type: &event.event_type,
            payload: Bytes(&event.payload),
            idempotency_id: event
                .idempotency_id
                .as_deref()
                .filter(|id| !id.is_empty())
                .map(Bytes),
            headers: event
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), Bytes(value)))
                .collect(),
        }
    }
}

/// The fields of an error's details the server set, as a JSON object (no code
/// or message: those are fields of the error object itself).
#[derive(Serialize, Default)]
pub(crate) struct DetailJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    actual_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_producer_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_epoch: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earliest_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    high_watermark: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_value: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_max: Option<u64>,
}

impl<'a> DetailJson<'a> {
    pub(crate) fn of(details: &'a ErrorDetails) -> DetailJson<'a> {
        DetailJson {
            actual_sequence: details.actual_sequence.map(|sequence| sequence.0),
            expected_producer_sequence: details.expected_producer_sequence.map(|sequence| sequence.0),
            current_epoch: details.current_epoch.map(|epoch| epoch.0),
            earliest_offset: details.earliest_offset.map(|offset| offset.0),
            high_watermark: details.high_watermark.map(|offset| offset.0),
            limit_name: details.limit.as_ref().map(|limit| limit.name.as_str()),
            limit_value: details.limit.as_ref().map(|limit| limit.value),
            limit_max: details.limit.as_ref().map(|limit| limit.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn escape_neutralises_terminal_controls_and_keeps_other_text() {
        assert_eq!(
            escape("plain {\"a\": \"\\\"\"} é ✓"),
            "plain {\"a\": \"\\\"\"} é ✓"
        );
        assert_eq!(escape("\u{1b}[2J\u{7}"), "\\x1b[2J\\x07");
        assert_eq!(escape("a\nb\tc\r"), "a\\nb\\tc\\r");
        assert_eq!(escape("\u{9b}31m\u{7f}"), "\\x9b31m\\x7f");
        assert_eq!(escape("abc\u{202e}def"), "abc\\u{202e}def");
    }

    #[test]
    fn bytes_are_text_when_utf8_and_base64_objects_otherwise() {
        assert_eq!(bytes_json(b"hello"), json!("hello"));
        assert_eq!(bytes_json(&[0xff, 0xfe]), json!({"base64": "//4="}));
        assert_eq!(bytes_json(b""), json!(""));
        assert_eq!(display_bytes(&[0xff, 0xfe]), "base64://4=");
        assert_eq!(
            display_bytes("\u{1b}]0;owned\u{7}".as_bytes()),
            "\\x1b]0;owned\\x07"
        );
    }

    #[test]
    fn json_lines_escape_c1_and_bidi_controls_and_keep_the_value() {
        let value = json!({"payload": "a\u{9b}b\u{7f}\u{202e}\u{1b}"});
        let line = json_line(&value);
        assert_eq!(line, r#"{"payload":"a\u009bb\u007f\u202e\u001b"}"#);
        assert_eq!(serde_json::from_str::<Value>(&line).expect("valid JSON"), value);
    }

    #[test]
    fn base64_pads_like_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }
}
