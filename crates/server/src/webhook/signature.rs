//! Standard Webhooks signing: secrets in the `whsec_` form, message ids, and the
//! `v1,` HMAC-SHA256 signature of `id.timestamp.body`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac};

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
pub const SECRET_SIZE_GENERATED: usize = 24;
/// Shortest and longest secret accepted, in bytes.
pub const SECRET_SIZE_MIN: usize = 16;
/// See [`SECRET_SIZE_MIN`].
pub const SECRET_SIZE_MAX: usize = stele_engine::limits::WEBHOOK_SECRET_SIZE_MAX;

/// The `webhook-signature` value for one request.
pub fn sign(secret: &[u8], id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp_s.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
}

/// The text form of a secret: `whsec_` and its standard base64.
pub fn encode_secret(secret: &[u8]) -> String {
    format!("{SECRET_PREFIX}{}", STANDARD.encode(secret))
}

/// Parses a secret's text form, with or without the `whsec_` prefix (as the
/// Standard Webhooks libraries do, for receivers such as `stele webhook listen`).
///
/// # Errors
/// A message when it is not base64 or its length is outside the bounds.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, String> {
    let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
    let secret = STANDARD
        .decode(encoded)
        .map_err(|_| {
            format!(
                "the secret must be {SECRET_PREFIX} followed by base64 of {SECRET_SIZE_MIN} to {SECRET_SIZE_MAX} bytes; what follows {SECRET_PREFIX} is not base64"
            )
        })?;
    if !(SECRET_SIZE_MIN..=SECRET_SIZE_MAX).contains(&secret.len()) {
        return Err(format!(
            "the secret must be {SECRET_PREFIX} followed by base64 of {SECRET_SIZE_MIN} to {SECRET_SIZE_MAX} bytes; it encodes {} bytes",
            secret.len()
        ));
    }
    Ok(secret)
}

/// Parses a secret given to the server: exactly `whsec_` followed by the
/// standard base64 (padded) of 16 to 64 bytes, the form the server hands out.
///
/// # Errors
/// A message saying which part is wrong.
pub fn decode_secret_strict(text: &str) -> Result<Vec<u8>, String> {
    if !text.starts_with(SECRET_PREFIX) {
        return Err(format!(
            "the secret must be {SECRET_PREFIX} followed by base64 of {SECRET_SIZE_MIN} to {SECRET_SIZE_MAX} bytes; it does not start with {SECRET_PREFIX}"
        ));
    }
    decode_secret(text)
}

/// A fresh random secret.
///
/// # Errors
/// When the operating system's random source fails.
pub fn generate_secret() -> Result<Vec<u8>, String> {
    let mut secret = vec![0u8; SECRET_SIZE_GENERATED];
    getrandom::fill(&mut secret).map_err(|error| format!("random source: {error}"))?;
    Ok(secret)
}

/// The `webhook-id` of an event: stable across retries, restarts and redrives
/// (a dead letter carries the id it was first sent with).
///
/// Derived from the topic, the key and the idempotency id when the event has one
/// (so that a producer's retried append that was stored twice outside the dedup
/// window still gets one id, while events of two keys that share an idempotency
/// id get two), else from the topic and the position.
pub fn message_id(
    topic: &str,
    partition: u32,
    offset: u64,
    key: &[u8],
    idempotency_id: Option<&[u8]>,
) -> String {
    let mut hasher = digest::Context::new(&digest::SHA256);
    match idempotency_id {
        Some(id) => {
            // Each part is length-prefixed, so no two inputs hash the same bytes.
            for part in [b"key-idempotency".as_slice(), topic.as_bytes(), key, id] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
        }
        None => {
            // Topic names cannot contain a NUL byte, which ends the topic here.
            hasher.update(b"position\0");
            hasher.update(topic.as_bytes());
            hasher.update(b"\0");
            hasher.update(&partition.to_le_bytes());
            hasher.update(&offset.to_le_bytes());
        }
    }
    let hash = hasher.finish();
    let hex: String = hash.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("msg_{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // Goal: reproduce the signature from the Standard Webhooks reference test suite.
        let secret = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_round_trip_and_bad_ones_are_refused() {
        // Goal: whsec_ text round-trips; short or non-base64 secrets are refused.
        let secret = generate_secret().expect("random");
        assert_eq!(secret.len(), SECRET_SIZE_GENERATED);
        assert_eq!(decode_secret(&encode_secret(&secret)).expect("decode"), secret);
        assert!(decode_secret("whsec_c2hvcnQ=").is_err());
        assert!(decode_secret("whsec_!!!").is_err());
    }

    #[test]
    fn given_secrets_must_be_whsec_and_base64_of_16_to_64_bytes() {
        // Goal: the server accepts exactly the documented form: the prefix, padded
        // standard base64, 16 to 64 bytes; each refusal says what is wrong.
        let encoded = |size: usize| STANDARD.encode(vec![7u8; size]);
        for size in [16, 24, 64] {
            let text = format!("whsec_{}", encoded(size));
            assert_eq!(decode_secret_strict(&text).expect("valid").len(), size);
        }
        for (text, wanted) in [
            (encoded(24), "does not start with whsec_"),
            (format!("WHSEC_{}", encoded(24)), "does not start with whsec_"),
            (format!("whsec_{}", encoded(15)), "it encodes 15"),
            (format!("whsec_{}", encoded(65)), "it encodes 65"),
            ("whsec_".to_string(), "it encodes 0"),
            (
                format!("whsec_{}", encoded(16).trim_end_matches('=')),
                "not base64",
            ),
            (format!("whsec_ {}", encoded(24)), "not base64"),
            (format!("whsec_{}", encoded(24).replace('w', "-")), "not base64"),
            ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La!aSw".to_string(), "not base64"),
        ] {
            let error = decode_secret_strict(&text).expect_err(&text);
            assert!(error.contains(wanted), "{text}: {error}");
            assert!(error.contains("16 to 64 bytes"), "{text}: {error}");
        }
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        // Goal: the id depends on the position, or on the key and the idempotency
        // id, and nothing else; it is printable and the same in every process.
        assert_eq!(
            message_id("t", 0, 5, b"k", None),
            message_id("t", 0, 5, b"other", None)
        );
        assert_ne!(
            message_id("t", 0, 5, b"k", None),
            message_id("t", 0, 6, b"k", None)
        );
        assert_ne!(
            message_id("t", 0, 5, b"k", None),
            message_id("t", 1, 5, b"k", None)
        );
        assert_eq!(
            message_id("t", 0, 5, b"k", Some(b"a")),
            message_id("t", 3, 9, b"k", Some(b"a"))
        );
        assert_ne!(
            message_id("t", 0, 5, b"k", Some(b"a")),
            message_id("u", 0, 5, b"k", Some(b"a"))
        );
        assert_ne!(
            message_id("t", 0, 5, b"k", Some(b"a")),
            message_id("t", 0, 5, b"j", Some(b"a")),
            "two keys sharing an idempotency id get two ids"
        );
        assert_ne!(
            message_id("t", 0, 5, b"ab", Some(b"c")),
            message_id("t", 0, 5, b"a", Some(b"bc")),
            "the parts are delimited"
        );
        // Fixed values: an id must not change between releases, or events in
        // flight during an upgrade would be re-delivered under a new id.
        assert_eq!(
            message_id("orders", 7, 42, b"order-1", Some(b"req-1")),
            "msg_ac13170e9a7192a6dbbab490d668ead2"
        );
        assert_eq!(
            message_id("orders", 2, 7, b"order-1", None),
            "msg_1c38f7919a029b916aa594aeb7921828"
        );
        let id = message_id("orders", 0, 0, b"order-1", Some(b"req-1"));
        assert_eq!(id.len(), 4 + 32);
        assert!(id.starts_with("msg_"));
        assert!(id[4..].bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
