//! The envelope of small whole files (topic meta, checkpoints, producer registry,
//! cursor snapshots, dedup runs): a fixed header, then a checksummed body.
//!
//! | off | size | type  | field          | meaning                                  |
//! |-----|------|-------|----------------|------------------------------------------|
//! | 0   | 8    | [u8]  | magic          | identifies the file kind                 |
//! | 8   | 2    | u16   | format_version | version of the body layout               |
//! | 10  | 2    | u16   | flags          | 0                                        |
//! | 12  | 8    | u64   | body_len       | bytes after the header                   |
//! | 20  | 4    | u32   | body_crc       | CRC-32C of the body                      |
//! | 24  | 4    | u32   | header_crc     | CRC-32C of bytes [0, 24)                 |

use super::{DecodeError, Put, Reader, check_len, crc};

/// Length of the envelope header.
pub const ENVELOPE_HEADER_LEN: usize = 28;

/// Wraps `body` in an envelope.
pub fn encode(magic: &[u8; 8], version: u16, body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(ENVELOPE_HEADER_LEN + body.len());
    bytes.extend_from_slice(magic);
    bytes.put_u16(version);
    bytes.put_u16(0);
    bytes.put_u64(body.len() as u64);
    bytes.put_u32(crc(body));
    let header_crc = crc(&bytes);
    bytes.put_u32(header_crc);
    bytes.extend_from_slice(body);
    bytes
}

/// Checks an envelope and returns its version and body. `versions` lists the
/// versions this build reads; `body_len_max` bounds the body.
///
/// # Errors
/// A [`DecodeError`] for a short input, a bad header or body CRC, a wrong magic,
/// an unsupported version, or a body longer than `body_len_max`.
pub fn decode<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    versions: &[u16],
    body_len_max: u64,
) -> Result<(u16, &'a [u8]), DecodeError> {
    let mut reader = Reader::new(bytes);
    let found_magic = reader.bytes(8)?;
    let version = reader.u16()?;
    let _flags = reader.u16()?;
    let body_len = reader.u64()?;
    let body_crc = reader.u32()?;
    let header_crc = reader.u32()?;
    let computed = crc(&bytes[..24]);
    if header_crc != computed {
        return Err(DecodeError::CrcMismatch {
            expected: header_crc,
            actual: computed,
        });
    }
    if found_magic != magic {
        return Err(DecodeError::BadMagic);
    }
    if !versions.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    check_len(body_len, body_len_max)?;
    let body = reader.bytes(body_len as usize)?;
    let computed = crc(body);
    if body_crc != computed {
        return Err(DecodeError::CrcMismatch {
            expected: body_crc,
            actual: computed,
        });
    }
    Ok((version, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_roundtrips_and_rejects_every_flipped_bit() {
        // Goal: any single bit flip anywhere in an envelope is detected.
        let encoded = encode(b"STELETST", 1, b"hello body");
        assert_eq!(
            decode(&encoded, b"STELETST", &[1], 1024),
            Ok((1, &b"hello body"[..]))
        );
        for bit in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&damaged, b"STELETST", &[1], 1024).is_err(),
                "bit {bit} undetected"
            );
        }
    }

    #[test]
    fn envelope_rejects_wrong_magic_version_and_truncation() {
        let encoded = encode(b"STELETST", 2, b"x");
        assert_eq!(
            decode(&encoded, b"STELEXXX", &[2], 16),
            Err(DecodeError::BadMagic)
        );
        assert_eq!(
            decode(&encoded, b"STELETST", &[1], 16),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        for cut in 0..encoded.len() {
            assert!(decode(&encoded[..cut], b"STELETST", &[2], 16).is_err());
        }
    }
}
