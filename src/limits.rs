//! Every hard bound of the engine, in one place.
//!
//! Each limit is checked where bytes enter the engine (user arguments, disk bytes)
//! before anything is allocated or sliced. The relations between limits are checked
//! at compile time below, so that a change that would make rolling loop forever or a
//! maximal record unwritable fails to build.

use crate::format;

/// Largest key, in bytes. Keys are aggregate ids such as `invoice-42`.
pub const KEY_SIZE_MAX: usize = 1024;
/// Largest event type name, in bytes (UTF-8).
pub const EVENT_TYPE_SIZE_MAX: usize = 255;
/// Largest idempotency id, in bytes.
pub const IDEMPOTENCY_ID_SIZE_MAX: usize = 255;
/// Most headers on one event.
pub const HEADERS_COUNT_MAX: usize = 64;
/// Largest header name, in bytes (UTF-8).
pub const HEADER_NAME_SIZE_MAX: usize = 255;
/// Largest encoded header block of one event, in bytes.
pub const HEADERS_SIZE_MAX: usize = 16 * 1024;
/// Default largest payload of one event.
pub const PAYLOAD_SIZE_MAX_DEFAULT: u32 = 1 << 20;
/// The largest payload limit a topic may be configured with.
pub const PAYLOAD_SIZE_MAX_LIMIT: u32 = 8 << 20;
/// Most events in one append call.
pub const APPEND_EVENTS_COUNT_MAX: usize = 10_000;
/// Most encoded bytes in one append call. A call is written into one segment, so a
/// segment may grow past its size limit by at most this much.
pub const APPEND_SIZE_BYTES_MAX: u64 = 32 << 20;
/// Largest record frame on disk, header included.
pub const RECORD_FRAME_SIZE_MAX: u64 = format::record::RECORD_HEADER_LEN as u64
    + KEY_SIZE_MAX as u64
    + EVENT_TYPE_SIZE_MAX as u64
    + IDEMPOTENCY_ID_SIZE_MAX as u64
    + HEADERS_SIZE_MAX as u64
    + PAYLOAD_SIZE_MAX_LIMIT as u64;

/// Smallest segment size limit a topic may be configured with.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4 * 1024;
/// Largest segment size limit. Positions within a segment are stored as `u32`.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 30;
/// The address space reserved for one segment's read-only mapping.
pub const SEGMENT_MAP_SIZE_BYTES: u64 =
    format::segment::SEGMENT_HEADER_LEN as u64 + SEGMENT_SIZE_BYTES_MAX + APPEND_SIZE_BYTES_MAX;
/// Most records in one segment: offsets within a segment are stored as `u32` deltas.
pub const SEGMENT_RECORDS_COUNT_MAX: u64 = u32::MAX as u64;

/// Most partitions in one topic.
pub const PARTITIONS_COUNT_MAX: u32 = 4096;
/// Longest topic name, in bytes.
pub const TOPIC_NAME_SIZE_MAX: usize = 200;
/// Most topics in one data directory.
pub const TOPICS_COUNT_MAX: usize = 10_000;
/// Longest cursor name, in bytes.
pub const CURSOR_NAME_SIZE_MAX: usize = 200;
/// Most cursors in one topic.
pub const CURSORS_COUNT_MAX: usize = 100_000;
/// Longest producer name, in bytes.
pub const PRODUCER_NAME_SIZE_MAX: usize = 200;
/// Most registered producers in one topic.
pub const PRODUCERS_COUNT_MAX: usize = 1_000_000;
/// Most producer states kept per partition; the least recently used idle one is
/// evicted first.
pub const PARTITION_PRODUCERS_COUNT_MAX: usize = 100_000;
/// How many of a producer's most recent appends per partition are remembered, so
/// that a retry of any of them is answered as a duplicate.
pub const PRODUCER_RECENT_APPENDS_COUNT: usize = 5;

/// Most appends queued per partition while a group commit is in flight; a full
/// queue makes appenders wait (back-pressure), it never grows without bound.
pub const PENDING_APPENDS_COUNT_MAX: usize = 65_536;
/// Most bytes encoded but not yet written per partition.
pub const PENDING_SIZE_BYTES_MAX: u64 = 64 << 20;

/// Most events returned by one read call.
pub const READ_EVENTS_COUNT_MAX: usize = 100_000;
/// Most bytes returned by one read call.
pub const READ_SIZE_BYTES_MAX: u64 = 64 << 20;

/// Largest checkpoint body accepted on open.
pub const CHECKPOINT_SIZE_BYTES_MAX: u64 = 8 << 30;

// A maximal append must always fit in a fresh segment's mapping, or rolling would
// loop forever.
const _: () = assert!(RECORD_FRAME_SIZE_MAX <= APPEND_SIZE_BYTES_MAX);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN > format::segment::SEGMENT_HEADER_LEN as u64);
const _: () = assert!(SEGMENT_MAP_SIZE_BYTES <= u32::MAX as u64);
const _: () = assert!(KEY_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(EVENT_TYPE_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(IDEMPOTENCY_ID_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(HEADERS_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(HEADERS_COUNT_MAX <= u8::MAX as usize);
const _: () = assert!(PAYLOAD_SIZE_MAX_DEFAULT <= PAYLOAD_SIZE_MAX_LIMIT);
