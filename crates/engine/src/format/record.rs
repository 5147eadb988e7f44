//! The record frame: one event as stored in a segment. See FORMAT.md.
//!
//! | off | size | type | field               | meaning                                   |
//! |-----|------|------|---------------------|-------------------------------------------|
//! | 0   | 4    | u32  | frame_len           | bytes after this field                    |
//! | 4   | 4    | u32  | crc                 | CRC-32C of bytes [8, 4 + frame_len)       |
//! | 8   | 8    | u64  | offset              | the record's offset in its partition      |
//! | 16  | 8    | i64  | timestamp_ms        | append time, Unix ms, never decreasing    |
//! | 24  | 8    | u64  | sequence            | the event's sequence within its key       |
//! | 32  | 8    | u64  | key_previous_offset | offset of the key's previous event, or MAX|
//! | 40  | 8    | u64  | producer_id         | 0 = no producer stamp                     |
//! | 48  | 8    | u64  | producer_sequence   | the stamp's sequence                      |
//! | 56  | 4    | u32  | producer_epoch      | the stamp's epoch                         |
//! | 60  | 2    | u16  | flags               | bit 0: last event of its append call      |
//! | 62  | 2    | u16  | key_len             | 1..=KEY_SIZE_MAX                          |
//! | 64  | 1    | u8   | type_len            | 1..=255                                   |
//! | 65  | 1    | u8   | idempotency_id_len  | 0 = none                                  |
//! | 66  | 2    | u16  | headers_len         | <= HEADERS_SIZE_MAX                       |
//! | 68  | 4    | u32  | payload_len         | <= PAYLOAD_SIZE_MAX_LIMIT                 |
//! | 72  | ..   | [u8] | key, type, idempotency_id, headers, payload, in that order   |

use super::{DecodeError, Put, Reader, check_len, crc};
use crate::event::{Epoch, Offset, ProducerId, ProducerStamp, Sequence};
use crate::limits;

/// Length of the fixed part of a frame.
pub const RECORD_HEADER_LEN: usize = 72;
/// Largest record frame on disk, header included.
pub const RECORD_FRAME_SIZE_MAX: u64 = RECORD_HEADER_LEN as u64
    + limits::KEY_SIZE_MAX as u64
    + limits::EVENT_TYPE_SIZE_MAX as u64
    + limits::IDEMPOTENCY_ID_SIZE_MAX as u64
    + limits::HEADERS_SIZE_MAX as u64
    + limits::PAYLOAD_SIZE_MAX_LIMIT as u64;
// A maximal event must always fit in one append call, which fits in a fresh
// segment's mapping, or rolling would loop forever.
const _: () = assert!(RECORD_FRAME_SIZE_MAX <= limits::APPEND_SIZE_BYTES_MAX);
/// `key_previous_offset` of a key's first event.
pub const NO_PREVIOUS: u64 = u64::MAX;
/// Flag: the record is the last event of its append call. A call is atomic: on
/// recovery, records after the last such flag are cut.
pub const FLAG_CALL_END: u16 = 1;
const FLAGS_KNOWN: u16 = FLAG_CALL_END;

/// The fields of a record, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The record's offset in its partition.
    pub offset: Offset,
    /// The append time, Unix milliseconds; never decreasing within a partition.
    pub timestamp_ms: i64,
    /// The event's sequence within its key.
    pub sequence: Sequence,
    /// The offset of the key's previous event, or [`NO_PREVIOUS`] for its first.
    pub key_previous_offset: u64,
    /// The producer stamp; `None` when the frame's producer id is 0.
    pub producer: Option<ProducerStamp>,
    /// Frame flags; only [`FLAG_CALL_END`] is defined.
    pub flags: u16,
    /// The key, 1..=`KEY_SIZE_MAX` bytes.
    pub key: &'a [u8],
    /// The event type, 1..=255 bytes of UTF-8.
    pub event_type: &'a str,
    /// The idempotency id; `None` when the frame has none.
    pub idempotency_id: Option<&'a [u8]>,
    /// The encoded header block; iterate it with [`headers`].
    pub headers: &'a [u8],
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Whether this record ends its append call.
    pub fn is_call_end(&self) -> bool {
        self.flags & FLAG_CALL_END != 0
    }
}

/// The encoded size of a frame with these variable parts.
pub fn frame_size(
    key_len: usize,
    type_len: usize,
    id_len: usize,
    headers_len: usize,
    payload_len: usize,
) -> u64 {
    (RECORD_HEADER_LEN + key_len + type_len + id_len + headers_len + payload_len) as u64
}

/// The encoded size of a header block.
pub fn headers_size(headers: &[(String, Vec<u8>)]) -> usize {
    headers
        .iter()
        .map(|(name, value)| 1 + name.len() + 2 + value.len())
        .sum()
}

/// Appends one frame to `buf`. The caller has validated every length against
/// `limits`; a violation is a bug and panics.
///
/// # Panics
/// When a length exceeds its bound (fully checked only in debug builds).
pub fn encode(buf: &mut Vec<u8>, record: &RecordView<'_>, headers: &[(String, Vec<u8>)]) {
    let headers_len = headers_size(headers);
    let id = record.idempotency_id.unwrap_or(&[]);
    debug_assert!(!record.key.is_empty() && record.key.len() <= limits::KEY_SIZE_MAX);
    debug_assert!(!record.event_type.is_empty() && record.event_type.len() <= limits::EVENT_TYPE_SIZE_MAX);
    debug_assert!(id.len() <= limits::IDEMPOTENCY_ID_SIZE_MAX);
    debug_assert!(headers_len <= limits::HEADERS_SIZE_MAX);
    debug_assert!(record.payload.len() as u64 <= limits::PAYLOAD_SIZE_MAX_LIMIT as u64);
    let size = frame_size(
        record.key.len(),
        record.event_type.len(),
        id.len(),
        headers_len,
        record.payload.len(),
    );
    let start = buf.len();
    buf.reserve(size as usize);
    buf.put_u32((size - 4) as u32);
    buf.put_u32(0); // The CRC, filled in below.
    buf.put_u64(record.offset.0);
    buf.put_i64(record.timestamp_ms);
    buf.put_u64(record.sequence.0);
    buf.put_u64(record.key_previous_offset);
    let stamp = record.producer.unwrap_or(ProducerStamp {
        producer: ProducerId(0),
        epoch: Epoch(0),
        sequence: Sequence(0),
    });
    buf.put_u64(stamp.producer.0);
    buf.put_u64(stamp.sequence.0);
    buf.put_u32(stamp.epoch.0);
    buf.put_u16(record.flags);
    buf.put_u16(record.key.len() as u16);
    buf.put_u8(record.event_type.len() as u8);
    buf.put_u8(id.len() as u8);
    buf.put_u16(headers_len as u16);
    buf.put_u32(record.payload.len() as u32);
    buf.extend_from_slice(record.key);
    buf.extend_from_slice(record.event_type.as_bytes());
    buf.extend_from_slice(id);
    for (name, value) in headers {
        buf.put_u8(name.len() as u8);
        buf.extend_from_slice(name.as_bytes());
        buf.put_bytes16(value);
    }
    buf.extend_from_slice(record.payload);
    debug_assert_eq!((buf.len() - start) as u64, size);
    let checksum = crc(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&checksum.to_le_bytes());
    if cfg!(debug_assertions) {
        let (decoded, decoded_size) = decode(&buf[start..]).expect("a frame just encoded decodes");
        assert_eq!(decoded_size, size);
        assert_eq!(decoded.offset, record.offset);
    }
}

/// Reads only a frame's length and offset, without checking its CRC: enough to
/// skip forward to a wanted offset. Returns (frame size, offset).
///
/// # Errors
/// [`DecodeError::Truncated`] on short input, [`DecodeError::LengthOutOfBounds`] for a bad frame length.
pub fn peek(bytes: &[u8]) -> Result<(u64, Offset), DecodeError> {
    let mut reader = Reader::new(bytes);
    let frame_len = reader.u32()? as u64;
    check_frame_len(frame_len)?;
    let _crc = reader.u32()?;
    let offset = reader.u64()?;
    Ok((frame_len + 4, Offset(offset)))
}

/// Reads a frame's size, offset, flags and idempotency id length without
/// checking its CRC: enough to skip records that carry no id.
///
/// # Errors
/// A [`DecodeError`] for a short input or a bad frame length.
pub fn peek_summary(bytes: &[u8]) -> Result<(u64, Offset, u16, u8), DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let frame_len = le_u32(bytes, 0) as u64;
    check_frame_len(frame_len)?;
    Ok((
        frame_len + 4,
        Offset(le_u64(bytes, 8)),
        le_u16(bytes, 60),
        bytes[65],
    ))
}

/// The chain fields of a frame, read without checking its CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link<'a> {
    /// The record's offset.
    pub offset: Offset,
    /// The event's sequence within its key.
    pub sequence: Sequence,
    /// The offset of the key's previous event, or [`NO_PREVIOUS`].
    pub key_previous_offset: u64,
    /// The key.
    pub key: &'a [u8],
}

/// Reads a frame's offset, sequence, previous offset and key without checking
/// its CRC: enough to confirm which key a record belongs to and to walk a key's
/// chain. Lengths are checked against the frame and the limits; callers decode
/// (with the CRC) every record they serve.
///
/// # Errors
/// A [`DecodeError`] for a short input or lengths that disagree.
pub fn peek_link(bytes: &[u8]) -> Result<Link<'_>, DecodeError> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let frame_len = le_u32(bytes, 0) as u64;
    check_frame_len(frame_len)?;
    let key_len = le_u16(bytes, 62) as u64;
    if key_len == 0 || key_len + (RECORD_HEADER_LEN as u64 - 4) > frame_len {
        return Err(DecodeError::Invalid("key length disagrees with frame length"));
    }
    check_len(key_len, limits::KEY_SIZE_MAX as u64)?;
    let key_end = RECORD_HEADER_LEN + key_len as usize;
    if bytes.len() < key_end {
        return Err(DecodeError::Truncated {
            needed: key_end as u64,
            available: bytes.len() as u64,
        });
    }
    Ok(Link {
        offset: Offset(le_u64(bytes, 8)),
        sequence: Sequence(le_u64(bytes, 24)),
        key_previous_offset: le_u64(bytes, 32),
        key: &bytes[RECORD_HEADER_LEN..key_end],
    })
}

fn check_frame_len(frame_len: u64) -> Result<(), DecodeError> {
    if frame_len < (RECORD_HEADER_LEN - 4) as u64 {
        return Err(DecodeError::LengthOutOfBounds {
            len: frame_len,
            max: RECORD_FRAME_SIZE_MAX - 4,
        });
    }
    check_len(frame_len, RECORD_FRAME_SIZE_MAX - 4)
}

/// Decodes and checks the frame at the start of `bytes`. Returns the record and
/// the frame's size.
///
/// # Errors
/// A [`DecodeError`] on short input, a bad length or CRC, unknown flags, or invalid fields.
pub fn decode(bytes: &[u8]) -> Result<(RecordView<'_>, u64), DecodeError> {
    // The fixed header is read at constant positions (no cursor), which keeps
    // this hot path free of per-field bounds checks after the one length check.
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_LEN as u64,
            available: bytes.len() as u64,
        });
    }
    let frame_len = le_u32(bytes, 0) as u64;
    check_frame_len(frame_len)?;
    let frame_size = frame_len + 4;
    if (bytes.len() as u64) < frame_size {
        return Err(DecodeError::Truncated {
            needed: frame_size,
            available: bytes.len() as u64,
        });
    }
    let frame = &bytes[..frame_size as usize];
    let stored_crc = le_u32(frame, 4);
    let computed = crc(&frame[8..]);
    if computed != stored_crc {
        return Err(DecodeError::CrcMismatch {
            expected: stored_crc,
            actual: computed,
        });
    }
    let flags = le_u16(frame, 60);
    let key_len = le_u16(frame, 62) as usize;
    let type_len = frame[64] as usize;
    let id_len = frame[65] as usize;
    let headers_len = le_u16(frame, 66) as usize;
    let payload_len = le_u32(frame, 68) as usize;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Invalid("unknown record flags"));
    }
    if key_len == 0 || type_len == 0 {
        return Err(DecodeError::Invalid("empty key or event type"));
    }
    check_len(key_len as u64, limits::KEY_SIZE_MAX as u64)?;
    check_len(headers_len as u64, limits::HEADERS_SIZE_MAX as u64)?;
    check_len(payload_len as u64, limits::PAYLOAD_SIZE_MAX_LIMIT as u64)?;
    let variable = key_len + type_len + id_len + headers_len + payload_len;
    if RECORD_HEADER_LEN + variable != frame.len() {
        return Err(DecodeError::Invalid("field lengths disagree with frame length"));
    }
    let mut position = RECORD_HEADER_LEN;
    let mut take = |len: usize| {
        let slice = &frame[position..position + len];
        position += len;
        slice
    };
    let key = take(key_len);
    let event_type =
        std::str::from_utf8(take(type_len)).map_err(|_| DecodeError::Invalid("event type is not UTF-8"))?;
    let id = take(id_len);
    let headers = take(headers_len);
    let payload = take(payload_len);
    if !headers.is_empty() {
        validate_headers(headers)?;
    }
    let producer_id = le_u64(frame, 40);
    let producer = (producer_id != 0).then(|| ProducerStamp {
        producer: ProducerId(producer_id),
        epoch: Epoch(le_u32(frame, 56)),
        sequence: Sequence(le_u64(frame, 48)),
    });
    Ok((
        RecordView {
            offset: Offset(le_u64(frame, 8)),
            timestamp_ms: le_u64(frame, 16) as i64,
            sequence: Sequence(le_u64(frame, 24)),
            key_previous_offset: le_u64(frame, 32),
            producer,
            flags,
            key,
            event_type,
            idempotency_id: (id_len > 0).then_some(id),
            headers,
            payload,
        },
        frame_size,
    ))
}

/// Little-endian reads at a position the caller has bounds-checked.
#[inline(always)]
fn le_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

#[inline(always)]
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(array)
}

#[inline(always)]
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(array)
}

fn validate_headers(block: &[u8]) -> Result<(), DecodeError> {
    let mut count = 0;
    for header in headers(block) {
        header?;
        count += 1;
        if count > limits::HEADERS_COUNT_MAX {
            return Err(DecodeError::LengthOutOfBounds {
                len: count as u64,
                max: limits::HEADERS_COUNT_MAX as u64,
            });
        }
    }
    Ok(())
}

/// Iterates an encoded header block as (name, value) pairs.
pub fn headers(block: &[u8]) -> impl Iterator<Item = Result<(&str, &[u8]), DecodeError>> {
    let mut reader = Reader::new(block);
    std::iter::from_fn(move || {
        if reader.remaining() == 0 {
            return None;
        }
        let mut next = || -> Result<(&str, &[u8]), DecodeError> {
            let name_len = reader.u8()? as usize;
            let name = std::str::from_utf8(reader.bytes(name_len)?)
                .map_err(|_| DecodeError::Invalid("header name is not UTF-8"))?;
            let value = reader.bytes16(limits::HEADERS_SIZE_MAX)?;
            Ok((name, value))
        };
        let result = next();
        if result.is_err() {
            // Stop after the first error.
            reader = Reader::new(&[]);
        }
        Some(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample<'a>(key: &'a [u8], payload: &'a [u8], id: Option<&'a [u8]>) -> RecordView<'a> {
        RecordView {
            offset: Offset(7),
            timestamp_ms: 1_700_000_000_000,
            sequence: Sequence(3),
            key_previous_offset: 5,
            producer: Some(ProducerStamp {
                producer: ProducerId(9),
                epoch: Epoch(2),
                sequence: Sequence(11),
            }),
            flags: FLAG_CALL_END,
            key,
            event_type: "payment_failed",
            idempotency_id: id,
            headers: &[],
            payload,
        }
    }

    #[test]
    fn record_detects_every_flipped_bit() {
        // Goal: a single flipped bit anywhere in a frame never decodes to a record.
        let mut buf = Vec::new();
        let headers = vec![("trace".to_string(), b"abc".to_vec())];
        encode(
            &mut buf,
            &sample(b"invoice-42", b"payload", Some(b"id-1")),
            &headers,
        );
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&damaged).is_err(), "bit {bit} of {} undetected", buf.len());
        }
    }

    #[test]
    fn record_rejects_every_truncation() {
        let mut buf = Vec::new();
        encode(&mut buf, &sample(b"k", b"some payload", None), &[]);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut} decoded");
        }
        assert!(decode(&buf).is_ok());
    }

    proptest! {
        #[test]
        fn record_roundtrips(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            id in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..32)),
            header_values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..16), 0..4),
            offset in any::<u64>(),
            timestamp in any::<i64>(),
        ) {
            let headers: Vec<(String, Vec<u8>)> = header_values
                .into_iter()
                .enumerate()
                .map(|(index, value)| (format!("h{index}"), value))
                .collect();
            let mut record = sample(&key, &payload, id.as_deref());
            record.offset = Offset(offset);
            record.timestamp_ms = timestamp;
            let mut buf = vec![0xAA];
            encode(&mut buf, &record, &headers);
            let (decoded, size) = decode(&buf[1..]).expect("decodes");
            prop_assert_eq!(size as usize, buf.len() - 1);
            prop_assert_eq!(decoded.key, &key[..]);
            prop_assert_eq!(decoded.payload, &payload[..]);
            prop_assert_eq!(decoded.idempotency_id, id.as_deref());
            prop_assert_eq!(decoded.offset, Offset(offset));
            prop_assert_eq!(decoded.timestamp_ms, timestamp);
            let decoded_headers: Vec<(String, Vec<u8>)> = super::headers(decoded.headers)
                .map(|header| header.map(|(name, value)| (name.to_string(), value.to_vec())))
                .collect::<Result<_, _>>()
                .expect("headers decode");
            prop_assert_eq!(decoded_headers, headers);
        }

        #[test]
        fn record_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = peek(&bytes);
            let _ = peek_link(&bytes);
            let _ = peek_summary(&bytes);
        }

        #[test]
        fn peek_link_agrees_with_decode(key in proptest::collection::vec(any::<u8>(), 1..64)) {
            let mut buf = Vec::new();
            encode(&mut buf, &sample(&key, b"payload", None), &[]);
            let link = peek_link(&buf).expect("peek");
            let (view, _) = decode(&buf).expect("decode");
            prop_assert_eq!(link.key, view.key);
            prop_assert_eq!(link.offset, view.offset);
            prop_assert_eq!(link.sequence, view.sequence);
            prop_assert_eq!(link.key_previous_offset, view.key_previous_offset);
        }
    }
}
