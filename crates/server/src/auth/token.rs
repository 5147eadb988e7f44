//! The token format: `stele_<id>_<secret><check>`.
//!
//! `<id>` is [`TOKEN_ID_LEN`] and `<secret>` [`SECRET_LEN`] characters of
//! `[A-Za-z0-9]`, drawn from the OS's random source (the secret holds 256 bits);
//! `<check>` is [`CHECK_LEN`] characters of the same alphabet, the CRC-32C of
//! everything before it in base 62, most significant digit first. The fixed
//! prefix and the checksum let a secret scanner find leaked tokens, and let the
//! server refuse a mistyped one without a lookup. The server stores only
//! [`secret_hash`].

use stele_engine::limits::TOKEN_ID_LEN;
use stele_engine::token::SECRET_HASH_LEN;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "stele_";
/// Characters of the secret part.
pub const SECRET_LEN: usize = 43;
/// Characters of the checksum.
pub const CHECK_LEN: usize = 6;
/// Characters of a whole token.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + TOKEN_ID_LEN + 1 + SECRET_LEN + CHECK_LEN;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A token's parts, borrowed from the text it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// The public id.
    pub id: &'a str,
    /// The whole token, which [`secret_hash`] hashes.
    pub text: &'a str,
}

/// Why text is not a token. Deliberately coarse: it is never shown to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MalformedToken {
    /// Wrong length, prefix, separator or alphabet.
    #[error("not a Stele token")]
    Shape,
    /// The checksum does not match (a mistyped or truncated token).
    #[error("token checksum mismatch")]
    Checksum,
}

/// Parses a token's shape and checksum. Runs in time independent of where the
/// text differs from a valid token only for the checksum; the secret is
/// compared later, in constant time, through its hash.
///
/// # Errors
/// [`MalformedToken`].
pub fn parse(text: &str) -> Result<ParsedToken<'_>, MalformedToken> {
    let bytes = text.as_bytes();
    if bytes.len() != TOKEN_LEN || !text.starts_with(TOKEN_PREFIX) {
        return Err(MalformedToken::Shape);
    }
    let id_start = TOKEN_PREFIX.len();
    let id_end = id_start + TOKEN_ID_LEN;
    if bytes[id_end] != b'_' {
        return Err(MalformedToken::Shape);
    }
    let alphanumeric = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_alphanumeric);
    let check_start = TOKEN_LEN - CHECK_LEN;
    if !alphanumeric(id_start..id_end) || !alphanumeric(id_end + 1..TOKEN_LEN) {
        return Err(MalformedToken::Shape);
    }
    if encode_check(crc32c::crc32c(&bytes[..check_start])) != bytes[check_start..] {
        return Err(MalformedToken::Checksum);
    }
    Ok(ParsedToken {
        id: &text[id_start..id_end],
        text,
    })
}

/// A new random token: its id and its whole text.
///
/// # Errors
/// The OS's random source failed.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    let id = random_alphanumeric(TOKEN_ID_LEN)?;
    let secret = random_alphanumeric(SECRET_LEN)?;
    let text = assemble(&id, &secret);
    Ok((id, text))
}

/// The token of `id` and `secret`: the prefix, both parts and the check digits.
pub(crate) fn assemble(id: &str, secret: &str) -> String {
    let mut text = format!("{TOKEN_PREFIX}{id}_{secret}");
    let check = encode_check(crc32c::crc32c(text.as_bytes()));
    text.push_str(std::str::from_utf8(&check).expect("the alphabet is ASCII"));
    text
}

/// A new random token id (for a certificate principal, which has no secret).
///
/// # Errors
/// The OS's random source failed.
pub fn generate_id() -> Result<String, getrandom::Error> {
    random_alphanumeric(TOKEN_ID_LEN)
}

/// The SHA-256 of a whole token: what the store keeps.
pub fn secret_hash(token: &ParsedToken<'_>) -> [u8; SECRET_HASH_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.text.as_bytes());
    let mut hash = [0; SECRET_HASH_LEN];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Whether two hashes are equal, in time independent of their contents.
pub fn hashes_equal(a: &[u8; SECRET_HASH_LEN], b: &[u8; SECRET_HASH_LEN]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// `count` characters of [`ALPHABET`], uniformly (rejection sampling).
fn random_alphanumeric(count: usize) -> Result<String, getrandom::Error> {
    let mut text = String::with_capacity(count);
    let mut pool = [0u8; 64];
    while text.len() < count {
        getrandom::fill(&mut pool)?;
        for byte in pool {
            // 248 = 4 * 62: bytes below it map to the alphabet without bias.
            if byte < 248 && text.len() < count {
                text.push(char::from(ALPHABET[usize::from(byte % 62)]));
            }
        }
    }
    Ok(text)
}

/// `value` in base 62, [`CHECK_LEN`] digits, most significant first.
fn encode_check(mut value: u32) -> [u8; CHECK_LEN] {
    let mut digits = [ALPHABET[0]; CHECK_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_any_changed_character_is_refused() {
        // Goal: the checksum catches every single-character change.
        let (id, text) = generate().expect("random");
        assert_eq!(text.len(), TOKEN_LEN);
        let parsed = parse(&text).expect("parse");
        assert_eq!(parsed.id, id);
        for index in TOKEN_PREFIX.len()..text.len() {
            let mut changed = text.clone().into_bytes();
            changed[index] = if changed[index] == b'a' { b'b' } else { b'a' };
            let changed = String::from_utf8(changed).expect("ascii");
            if changed != text {
                assert!(parse(&changed).is_err(), "changed at {index}");
            }
        }
        assert_eq!(parse(&text[1..]), Err(MalformedToken::Shape));
        assert_eq!(
            parse(&text.replace("stele_", "stale_")),
            Err(MalformedToken::Shape)
        );
        assert_ne!(generate().expect("random").1, text);
    }

    #[test]
    fn the_checksum_is_base62_of_crc32c() {
        // Goal: the check digits are the documented function, so scanners can verify them.
        assert_eq!(&encode_check(0), b"000000");
        assert_eq!(&encode_check(61), b"00000z");
        assert_eq!(&encode_check(62), b"000010");
        assert_eq!(&encode_check(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn hashes_compare_by_content() {
        let (_, text) = generate().expect("random");
        let parsed = parse(&text).expect("parse");
        assert!(hashes_equal(&secret_hash(&parsed), &secret_hash(&parsed)));
        let (_, other) = generate().expect("random");
        assert!(!hashes_equal(
            &secret_hash(&parsed),
            &secret_hash(&parse(&other).expect("parse"))
        ));
    }
}
