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
//! It does not decide exit codes, and it never decodes error details itself:
//! [`stele::wire::status::detail_of`] does.

use std::borrow::Cow;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Value, json};
use stele::civil::format_timestamp_ms as format_timestamp;
use stele::wire::proto::{self, ErrorDetail};

/// Standard base64 with padding, as in the JSON scheme.
pub(crate) fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes as JSON: the text when they are UTF-8, else `{"base64": "..."}`.
pub(crate) fn bytes_json(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

/// Headers as a JSON object from name to [`bytes_json`] value.
pub(crate) fn headers_json<'a>(headers: impl IntoIterator<Item = (&'a String, &'a Vec<u8>)>) -> Value {
    Value::Object(
        headers
            .into_iter()
            .map(|(name, value)| (name.clone(), bytes_json(value)))
            .collect(),
    )
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
pub(crate) fn print_event(event: &proto::RecordedEvent, json_output: bool) {
    if json_output {
        println!("{}", json_line(&event_json(event)));
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
        event.partition,
        event.offset,
        display_bytes(&event.key),
        event.sequence,
        escape(&event.r#type),
        format_timestamp(event.timestamp_ms),
        display_bytes(&event.payload),
    );
}

/// One event as a JSON object.
pub(crate) fn event_json(event: &proto::RecordedEvent) -> Value {
    let mut object = json!({
        "partition": event.partition,
        "offset": event.offset,
        "timestamp_ms": event.timestamp_ms,
        "timestamp": format_timestamp(event.timestamp_ms),
        "key": bytes_json(&event.key),
        "sequence": event.sequence,
        "type": event.r#type,
        "payload": bytes_json(&event.payload),
    });
    let fields = object.as_object_mut().expect("a JSON object literal");
    if !event.idempotency_id.is_empty() {
        fields.insert("idempotency_id".to_string(), bytes_json(&event.idempotency_id));
    }
    if !event.headers.is_empty() {
        fields.insert("headers".to_string(), headers_json(&event.headers));
    }
    Value::Object(std::mem::take(fields))
}

/// The canonical upper-case name of a gRPC status code, as in the gRPC spec.
pub(crate) fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The stable Stele code name without its `ERROR_CODE_` prefix, e.g. `CURSOR_NOT_FOUND`.
pub(crate) fn error_code_name(detail: &ErrorDetail) -> Option<&'static str> {
    proto::ErrorCode::try_from(detail.code)
        .ok()
        .filter(|code| *code != proto::ErrorCode::Unspecified)
        .map(|code| code.as_str_name().trim_start_matches("ERROR_CODE_"))
}

/// The fields of an error detail the server set, as a JSON object (no code or
/// message: those are fields of the error object itself).
pub(crate) fn detail_json(detail: &ErrorDetail) -> Value {
    let mut fields = serde_json::Map::new();
    let mut put = |name: &str, value: Option<u64>| {
        if let Some(value) = value {
            fields.insert(name.to_string(), json!(value));
        }
    };
    put("actual_sequence", detail.actual_sequence);
    put("expected_producer_sequence", detail.expected_producer_sequence);
    put("current_epoch", detail.current_epoch.map(u64::from));
    put("earliest_offset", detail.earliest_offset);
    put("high_watermark", detail.high_watermark);
    if !detail.limit_name.is_empty() {
        fields.insert("limit_name".to_string(), json!(detail.limit_name));
        fields.insert("limit_value".to_string(), json!(detail.limit_value));
        fields.insert("limit_max".to_string(), json!(detail.limit_max));
    }
    Value::Object(fields)
}

#[cfg(test)]
mod tests {
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
