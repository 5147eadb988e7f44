//! Every hard bound of the engine, in one place.
//!
//! Each limit is checked where bytes enter the engine (user arguments, disk bytes)
//! before anything is allocated or sliced. The relations between limits are checked
//! at compile time below, so that a change that would make rolling loop forever or a
//! maximal record unwritable fails to build.

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

/// Smallest segment size limit a topic may be configured with.
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 4 * 1024;
/// Largest segment size limit. Positions within a segment are stored as `u32`.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 30;
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
/// Longest webhook signing secret accepted, in bytes (Standard Webhooks allows 24 to 64).
pub const WEBHOOK_SECRET_SIZE_MAX: usize = 64;
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

// The bounds derived from the on-disk layout (the largest record frame, a
// segment's mapping) live beside the layout, in `format::record` and `segment`,
// with their checks: this module imports nothing, so every module may import it.
const _: () = assert!(KEY_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(EVENT_TYPE_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(IDEMPOTENCY_ID_SIZE_MAX <= u8::MAX as usize);
const _: () = assert!(HEADERS_SIZE_MAX <= u16::MAX as usize);
const _: () = assert!(HEADERS_COUNT_MAX <= u8::MAX as usize);
const _: () = assert!(PAYLOAD_SIZE_MAX_DEFAULT <= PAYLOAD_SIZE_MAX_LIMIT);

/// Most entries in a partition's in-memory dedup table; a full table is written out
/// as a run file. At about 52 bytes of RAM per entry this bounds the table near 13 MiB.
pub const DEDUP_MEMTABLE_ENTRIES_MAX: usize = 262_144;
/// Largest age, by append timestamp, of the oldest entry of the in-memory dedup table
/// before upkeep writes it out, so that the replay on open stays short.
pub const DEDUP_MEMTABLE_AGE_MS_MAX: i64 = 60_000;
/// Size of one block of a dedup run file: page-aligned, with its own CRC.
pub const DEDUP_RUN_BLOCK_SIZE: usize = 4096;
/// Size of one dedup run entry: fingerprint, offset, timestamp.
pub const DEDUP_RUN_ENTRY_LEN: usize = 24;
/// Entries in one full dedup run block (the last 4 bytes of a block are its CRC).
pub const DEDUP_RUN_BLOCK_ENTRIES_COUNT: usize = (DEDUP_RUN_BLOCK_SIZE - 4) / DEDUP_RUN_ENTRY_LEN;
/// Most entries a dedup run header may claim (about 400 GiB of run file).
pub const DEDUP_RUN_ENTRIES_COUNT_MAX: u64 = 1 << 34;
/// Most run files in one partition's dedup directory. Merging keeps far fewer; a
/// directory holding more is discarded on open and rebuilt by replay.
pub const DEDUP_RUNS_COUNT_MAX: usize = 256;
/// Above this many runs, upkeep merges the smallest adjacent runs even when their
/// sizes differ, so the count stays bounded whatever the size pattern.
pub const DEDUP_RUNS_COUNT_SOFT_MAX: usize = 48;
/// How many runs of one size tier are merged into one.
pub const DEDUP_MERGE_FANOUT: usize = 4;

// A block must hold at least one entry and its CRC.
const _: () = assert!(DEDUP_RUN_BLOCK_ENTRIES_COUNT >= 1);
const _: () = assert!(DEDUP_RUN_BLOCK_ENTRIES_COUNT * DEDUP_RUN_ENTRY_LEN + 4 <= DEDUP_RUN_BLOCK_SIZE);
// Memtable entries are chained by `u32` indexes.
const _: () = assert!(DEDUP_MEMTABLE_ENTRIES_MAX < u32::MAX as usize);
const _: () = assert!((DEDUP_MEMTABLE_ENTRIES_MAX as u64) < DEDUP_RUN_ENTRIES_COUNT_MAX);
// The fence array of a maximal run (8 bytes per block) must be addressable.
const _: () =
    assert!(DEDUP_RUN_ENTRIES_COUNT_MAX / DEDUP_RUN_BLOCK_ENTRIES_COUNT as u64 * 8 <= u32::MAX as u64);
// Merging needs at least two runs, and the soft bound must leave room for a merge's
// output and for the runs written between two upkeep calls.
const _: () = assert!(DEDUP_MERGE_FANOUT >= 2);
const _: () = assert!(DEDUP_RUNS_COUNT_SOFT_MAX >= 2 * DEDUP_MERGE_FANOUT);
const _: () = assert!(DEDUP_RUNS_COUNT_SOFT_MAX * 4 <= DEDUP_RUNS_COUNT_MAX);
const _: () = assert!(DEDUP_MEMTABLE_AGE_MS_MAX > 0);

/// Most webhook endpoints on one server.
pub const WEBHOOKS_COUNT_MAX: usize = 1000;
/// Longest webhook name: ASCII letters, digits, `.`, `_` and `-`.
pub const WEBHOOK_NAME_SIZE_MAX: usize = 100;
/// Longest webhook target URL.
pub const WEBHOOK_URL_SIZE_MAX: usize = 2048;
/// Most event types in a webhook's filter.
pub const WEBHOOK_EVENT_TYPES_COUNT_MAX: usize = 64;
/// Most events of one endpoint read ahead of their delivery (buffered in memory).
pub const WEBHOOK_BUFFERED_EVENTS_COUNT_MAX: usize = 1024;
/// Most payload bytes of one endpoint read ahead of their delivery.
pub const WEBHOOK_BUFFERED_SIZE_BYTES_MAX: u64 = 16 << 20;
/// Most keys of one endpoint in flight at once.
pub const WEBHOOK_IN_FLIGHT_MAX: u32 = 1024;
/// Most attempts per event.
pub const WEBHOOK_ATTEMPTS_MAX: u32 = 1000;

/// Most tokens (and certificate principals) on one server, revoked ones included.
pub const TOKENS_COUNT_MAX: usize = 100_000;
/// Length of a token id: `[A-Za-z0-9]`.
pub const TOKEN_ID_LEN: usize = 16;
/// Longest token name: ASCII letters, digits, `.`, `_` and `-`.
pub const TOKEN_NAME_SIZE_MAX: usize = 64;
/// Most grants of one token.
pub const TOKEN_GRANTS_COUNT_MAX: usize = 64;
/// Longest grant, `<group>:<topic pattern>`.
pub const TOKEN_GRANT_SIZE_MAX: usize = 16 + TOPIC_NAME_SIZE_MAX;
/// Longest client-certificate subject a principal may name.
pub const CERTIFICATE_SUBJECT_SIZE_MAX: usize = 256;
/// Longest principal (`token:<id>`, `certificate:<subject>`) recorded as a token's creator.
pub const PRINCIPAL_SIZE_MAX: usize = 16 + CERTIFICATE_SUBJECT_SIZE_MAX;

// The webhook journal encodes names, URLs and types with u16 lengths.
const _: () = assert!(WEBHOOK_NAME_SIZE_MAX <= TOPIC_NAME_SIZE_MAX);
const _: () = assert!(WEBHOOK_URL_SIZE_MAX <= u16::MAX as usize);
// The webhook's cursor is named `webhook.<name>.redrive` at most.
const _: () = assert!(WEBHOOK_NAME_SIZE_MAX + 16 <= CURSOR_NAME_SIZE_MAX);

/// Most consumer groups on one server.
pub const GROUPS_COUNT_MAX: usize = 1000;
/// Longest consumer group name: ASCII letters, digits, `.`, `_` and `-`.
pub const GROUP_NAME_SIZE_MAX: usize = 100;
/// Most progress entries of one consumer group: settled ranges above a floor plus
/// pending offsets, over every partition of both of its streams. It bounds the
/// group's memory and its snapshot record.
pub const GROUP_PROGRESS_ENTRIES_MAX: usize = 100_000;
/// Most progress changes in one record of the group journal.
pub const GROUP_PROGRESS_CHANGES_COUNT_MAX: usize = 10_000;

// The group journal encodes names with u16 lengths.
const _: () = assert!(GROUP_NAME_SIZE_MAX <= u16::MAX as usize);
// One progress record can seek every partition of both streams of a group.
const _: () = assert!(GROUP_PROGRESS_CHANGES_COUNT_MAX >= 2 * PARTITIONS_COUNT_MAX as usize);

/// Most recorded changes of one topic's options (`changes.journal`); a change
/// past it is refused.
pub const TOPIC_CHANGES_COUNT_MAX: usize = 10_000;
/// Longest principal recorded with a topic change, in bytes; a longer one is
/// cut at a character boundary.
pub const CHANGE_PRINCIPAL_SIZE_MAX: usize = 1024;

/// Most threads of a log's partition worker pool
/// ([`LogOptions::worker_threads`](crate::LogOptions::worker_threads)).
pub const WORKER_THREADS_MAX: usize = 256;
