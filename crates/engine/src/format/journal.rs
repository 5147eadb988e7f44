//! Journals (cursors `STELECUR`, producers `STELEPRD`, webhooks `STELEWHK`, tokens
//! `STELETOK`, consumer groups `STELEGRP`): the file header, the CRC-framed records
//! behind it, and the [`JournalRecord`] trait that says how one kind's records
//! encode, decode and replay into a map.
//! See FORMAT.md, "Journals".
//!
//! Header: `[u8; 8] magic`, `u16 format_version`, `u16 flags`, `u32 header_crc`
//! (CRC-32C of bytes [0, 12)). Frame: `u32 body_len` (1 ..= the kind's record size
//! maximum), `u32 crc` (CRC-32C of the length field then the body), `body`.
//!
//! Replay is pure too ([`replay`]): the engine's journal-backed map
//! (`journal::JournalMap`) and `stele verify` both apply records with it, so the
//! rules of a kind are written once.

use std::collections::BTreeMap;
use std::fmt::Debug;

use super::{DecodeError, Put, Reader, check_len, crc};

/// The journal format version this build writes.
pub const JOURNAL_VERSION: u16 = 1;
/// The journal format versions this build reads.
pub const JOURNAL_VERSIONS_SUPPORTED: &[u16] = &[1];
/// Length of the file header: magic, format_version, flags, header_crc.
pub const JOURNAL_HEADER_LEN: usize = 16;
/// Length of a frame's header: body_len, crc.
pub const FRAME_HEADER_LEN: usize = 8;

/// Encodes the file header of a journal of kind `magic`.
pub fn encode_header(magic: &[u8; 8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(JOURNAL_HEADER_LEN);
    bytes.extend_from_slice(magic);
    bytes.put_u16(JOURNAL_VERSION);
    bytes.put_u16(0);
    let header_crc = crc(&bytes);
    bytes.put_u32(header_crc);
    debug_assert_eq!(bytes.len(), JOURNAL_HEADER_LEN);
    bytes
}

/// Checks a file header: its CRC first, then the magic, then the version.
///
/// # Errors
/// [`DecodeError::Truncated`], [`DecodeError::CrcMismatch`],
/// [`DecodeError::BadMagic`] or [`DecodeError::UnsupportedVersion`].
pub fn decode_header(bytes: &[u8], magic: &[u8; 8]) -> Result<(), DecodeError> {
    let mut reader = Reader::new(bytes);
    let found_magic = reader.bytes(8)?;
    let version = reader.u16()?;
    let _flags = reader.u16()?;
    let stored = reader.u32()?;
    let computed = crc(&bytes[..JOURNAL_HEADER_LEN - 4]);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    if found_magic != magic {
        return Err(DecodeError::BadMagic);
    }
    if !JOURNAL_VERSIONS_SUPPORTED.contains(&version) {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    Ok(())
}

/// The CRC of a frame: CRC-32C of its `body_len` field followed by its body.
fn frame_crc(len_bytes: [u8; 4], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc(&len_bytes), body)
}

/// Appends one frame holding `body` to `out`.
///
/// # Panics
/// When `body` is empty or longer than `u32::MAX`: callers encode bodies of at
/// least a kind byte and bounded by their record size limit.
pub fn encode_frame(out: &mut Vec<u8>, body: &[u8]) {
    assert!(!body.is_empty(), "a journal record body holds at least its kind");
    let len = u32::try_from(body.len()).expect("record bodies are bounded by a u32 limit");
    let len_bytes = len.to_le_bytes();
    out.extend_from_slice(&len_bytes);
    out.put_u32(frame_crc(len_bytes, body));
    out.extend_from_slice(body);
}

/// Decodes the frame at the start of `bytes` (which may continue past it):
/// returns its body and the frame's length.
///
/// # Errors
/// [`DecodeError::Invalid`] for an empty body, [`DecodeError::LengthOutOfBounds`]
/// above `body_size_max` (checked before anything else is read),
/// [`DecodeError::Truncated`], [`DecodeError::CrcMismatch`].
pub fn decode_frame(bytes: &[u8], body_size_max: u32) -> Result<(&[u8], usize), DecodeError> {
    let mut reader = Reader::new(bytes);
    let len_bytes = reader.u32()?.to_le_bytes();
    let len = u32::from_le_bytes(len_bytes);
    if len == 0 {
        return Err(DecodeError::Invalid("empty journal record"));
    }
    check_len(u64::from(len), u64::from(body_size_max))?;
    let stored = reader.u32()?;
    let body = reader.bytes(len as usize)?;
    let computed = frame_crc(len_bytes, body);
    if stored != computed {
        return Err(DecodeError::CrcMismatch {
            expected: stored,
            actual: computed,
        });
    }
    Ok((body, FRAME_HEADER_LEN + len as usize))
}

/// Decodes a user-chosen name (of a cursor, of a producer): a `u16` length then
/// 1 ..= `size_max` bytes of UTF-8 without control characters.
///
/// # Errors
/// [`DecodeError::Invalid`] for an empty name or a control character; as
/// [`Reader::str16`] otherwise.
pub fn decode_name<'a>(reader: &mut Reader<'a>, size_max: usize) -> Result<&'a str, DecodeError> {
    let name = reader.str16(size_max)?;
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(DecodeError::Invalid(
            "name is empty or contains a control character",
        ));
    }
    Ok(name)
}

/// Encodes a name for [`decode_name`]; the caller checked it against a limit
/// below `u16::MAX`.
pub fn encode_name(out: &mut Vec<u8>, name: &str) {
    out.put_bytes16(name.as_bytes());
}

/// Whether `byte` belongs to the alphabet of webhook and consumer group names:
/// ASCII letters, digits, `.`, `_` and `-`.
pub fn is_ascii_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'_' || byte == b'-'
}

/// Why a well-framed record cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayError {
    /// The body breaks a rule of its kind: the file is corrupt at the frame.
    Invalid(DecodeError),
    /// The record is well-formed but disagrees with what the map was opened
    /// with (a cursor naming a partition the topic does not have).
    Inconsistent(String),
}

impl From<DecodeError> for ReplayError {
    fn from(reason: DecodeError) -> ReplayError {
        ReplayError::Invalid(reason)
    }
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Invalid(reason) => write!(f, "{reason}"),
            ReplayError::Inconsistent(reason) => f.write_str(reason),
        }
    }
}

/// One kind of journal record: the entries of a map keyed by [`Self::Key`], and
/// the records that change them one key at a time.
///
/// A journal-backed map is the replay of its records in order: each record names
/// one key ([`JournalRecord::key`]) and [`JournalRecord::apply`] says what the
/// entry of that key becomes. A compacted journal holds one
/// [`JournalRecord::snapshot`] record per entry, in key order.
///
/// Implementations are pure: no I/O, no panics on any decoded input.
pub trait JournalRecord: Sized + Debug + Send + 'static {
    /// The file kind's magic.
    const MAGIC: &'static [u8; 8];
    /// The largest record body, checked before a frame is read.
    const BODY_SIZE_MAX: u32;
    /// The most entries a map may hold; a record creating one more is invalid.
    const ENTRIES_COUNT_MAX: usize;
    /// The key of an entry.
    type Key: Ord + Clone + Debug + Send + 'static;
    /// The value of an entry.
    type Value: Clone + Debug + PartialEq + Send + 'static;
    /// What decoding and applying know beyond the bytes (a cursor journal's
    /// partition count); `()` for most kinds.
    type Context: Copy + Debug + Send + Sync + 'static;
    /// What applying may consult beyond the entry itself, kept in step with the
    /// entries by [`JournalRecord::update_index`] (the producer ids in use);
    /// `()` for most kinds.
    type Index: Default + Debug + Send + 'static;

    /// Appends the record's body to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decodes one record body (the whole body: trailing bytes are invalid).
    ///
    /// # Errors
    /// Any [`DecodeError`] for a body that breaks the kind's layout.
    fn decode(body: &[u8], context: Self::Context) -> Result<Self, DecodeError>;

    /// The key whose entry the record changes.
    fn key(&self) -> &Self::Key;

    /// The entry of [`JournalRecord::key`] after this record, given its entry
    /// before (`None`: absent; the result `None` removes it).
    ///
    /// # Errors
    /// [`ReplayError`] when the record may not follow the entry (or the index).
    fn apply(
        &self,
        current: Option<&Self::Value>,
        index: &Self::Index,
        context: Self::Context,
    ) -> Result<Option<Self::Value>, ReplayError>;

    /// The record that recreates an entry in a compacted journal.
    fn snapshot(key: &Self::Key, value: &Self::Value) -> Self;

    /// The body length of [`JournalRecord::snapshot`] of an entry; kinds with a
    /// cheaper way to count override it.
    fn snapshot_body_len(key: &Self::Key, value: &Self::Value) -> usize {
        let mut body = Vec::new();
        Self::snapshot(key, value).encode(&mut body);
        body.len()
    }

    /// Keeps the index in step when the entry of a key goes from `previous` to
    /// `next`.
    fn update_index(index: &mut Self::Index, previous: Option<&Self::Value>, next: Option<&Self::Value>) {
        let _ = (index, previous, next);
    }
}

/// What one replayed record changed: its key and the value the key had before.
pub type Replaced<R> = (<R as JournalRecord>::Key, Option<<R as JournalRecord>::Value>);

/// Applies `record` to `entries` (and `index`), as replay does, and returns the
/// key it changed with the value that key had before.
///
/// # Errors
/// As [`JournalRecord::apply`], and [`DecodeError::LengthOutOfBounds`] for a
/// record creating an entry beyond [`JournalRecord::ENTRIES_COUNT_MAX`]; nothing
/// changes then.
pub fn apply<R: JournalRecord>(
    entries: &mut BTreeMap<R::Key, R::Value>,
    index: &mut R::Index,
    context: R::Context,
    record: &R,
) -> Result<Replaced<R>, ReplayError> {
    let key = record.key();
    let current = entries.get(key);
    let next = record.apply(current, index, context)?;
    if current.is_none() && next.is_some() && entries.len() >= R::ENTRIES_COUNT_MAX {
        return Err(ReplayError::Invalid(DecodeError::LengthOutOfBounds {
            len: entries.len() as u64 + 1,
            max: R::ENTRIES_COUNT_MAX as u64,
        }));
    }
    R::update_index(index, current, next.as_ref());
    let previous = match next {
        Some(value) => entries.insert(key.clone(), value),
        None => entries.remove(key),
    };
    Ok((key.clone(), previous))
}

/// Decodes one record body and applies it to `entries`: one step of replay.
///
/// # Errors
/// As [`JournalRecord::decode`] and [`apply`]; nothing changes then.
pub fn replay<R: JournalRecord>(
    entries: &mut BTreeMap<R::Key, R::Value>,
    index: &mut R::Index,
    context: R::Context,
    body: &[u8],
) -> Result<Replaced<R>, ReplayError> {
    let record = R::decode(body, context)?;
    apply(entries, index, context, &record)
}

/// The frames of a compacted journal of `entries`: one snapshot record each, in
/// key order.
pub fn encode_snapshot<R: JournalRecord>(entries: &BTreeMap<R::Key, R::Value>) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut body = Vec::new();
    for (key, value) in entries {
        body.clear();
        R::snapshot(key, value).encode(&mut body);
        encode_frame(&mut frames, &body);
    }
    frames
}

/// The bytes of the frame a compaction writes for one entry.
pub fn snapshot_frame_len<R: JournalRecord>(key: &R::Key, value: &R::Value) -> u64 {
    (FRAME_HEADER_LEN + R::snapshot_body_len(key, value)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrips_and_rejects_every_flipped_bit() {
        // Goal: any single bit flip in a frame is detected, including in its length.
        let mut encoded = Vec::new();
        encode_frame(&mut encoded, b"hello journal");
        assert_eq!(
            decode_frame(&encoded, 64),
            Ok((&b"hello journal"[..], encoded.len()))
        );
        for bit in 0..encoded.len() * 8 {
            let mut damaged = encoded.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&damaged, 1 << 20).is_err(), "bit {bit} undetected");
        }
        for cut in 0..encoded.len() {
            assert!(decode_frame(&encoded[..cut], 64).is_err());
        }
    }

    #[test]
    fn frame_lengths_are_checked_before_reading() {
        // Goal: an empty body and a body above the kind's maximum are refused
        // without looking at the rest of the input.
        let mut encoded = Vec::new();
        encode_frame(&mut encoded, &[7; 65]);
        assert_eq!(
            decode_frame(&encoded[..4], 64),
            Err(DecodeError::LengthOutOfBounds { len: 65, max: 64 })
        );
        assert_eq!(
            decode_frame(&[0; 8], 64),
            Err(DecodeError::Invalid("empty journal record"))
        );
    }

    #[test]
    fn header_roundtrips_and_rejects_damage() {
        let header = encode_header(b"STELETST");
        assert_eq!(decode_header(&header, b"STELETST"), Ok(()));
        assert_eq!(decode_header(&header, b"STELEXXX"), Err(DecodeError::BadMagic));
        for bit in 0..header.len() * 8 {
            let mut damaged = header.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_header(&damaged, b"STELETST").is_err(),
                "bit {bit} undetected"
            );
        }
        for cut in 0..header.len() {
            assert!(decode_header(&header[..cut], b"STELETST").is_err());
        }
    }

    #[test]
    fn names_decode_only_without_control_characters() {
        for (name, ok) in [
            ("orders", true),
            ("ünïcödé", true),
            ("", false),
            ("tab\there", false),
        ] {
            let mut bytes = Vec::new();
            encode_name(&mut bytes, name);
            let decoded = decode_name(&mut Reader::new(&bytes), 200);
            assert_eq!(decoded.is_ok(), ok, "{name:?}");
        }
        let mut long = Vec::new();
        encode_name(&mut long, &"x".repeat(201));
        assert!(decode_name(&mut Reader::new(&long), 200).is_err());
    }
}
