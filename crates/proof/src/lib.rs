//! Fuzz target bodies (crate `stele-proof`), shared by the cargo-fuzz crate (`fuzz/`) and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so that both run the same code.
//!
//! Every function takes arbitrary bytes and must never panic: a panic is a bug,
//! either in the engine (bad input reached an `assert!` or an index out of
//! bounds) or a broken property asserted here (roundtrip stability, recovery
//! idempotence, the model of acknowledged appends). Per-input work is kept small
//! (tiny topics, small segments) so that fuzzing gets many executions a second.
//!
//! Every body is written against the engine's public API: the pure `format::`
//! codecs, and `Log::open` (or a public store) on a crafted data directory for the
//! paths that do I/O.
#![allow(missing_docs)]
#![deny(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stele_engine::Sequence;

use stele_engine::Log;
use stele_engine::config::{Durability, LogOptions, ManualClock, TopicOptions};
use stele_engine::error::{Error, ErrorKind};
use stele_engine::event::{Event, ExpectedSequence, Offset, PartitionId, RecordedEvent};
use stele_engine::format::{checkpoint, envelope, index, record, segment};
use stele_engine::io::FaultyStorage;
use stele_engine::limits;
use stele_engine::paths;

/// A scratch directory removed on drop; under /dev/shm when there is one.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new empty directory, or `None` when the file system refuses one (an
    /// environment problem, not a finding).
    pub fn new() -> Option<Scratch> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "stele-fuzz-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).ok()?;
        Some(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Storage errors that fuzzed bytes may legitimately cause.
fn is_bad_bytes(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Corruption | ErrorKind::Inconsistent)
}

/// Reads a little-endian `u32` at `at`, if the bytes are there.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let slice = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
}

/// Rewrites the CRC of every record frame laid end to end in `bytes`, so that a
/// fuzzer, which cannot forge CRC-32C, reaches the checks behind it.
fn fix_record_crcs(bytes: &mut [u8]) {
    let mut at = 0usize;
    // Bounded: every round moves past at least one frame header.
    while let Some(frame_len) = u32_at(bytes, at) {
        let end = at
            .saturating_add(4)
            .saturating_add(frame_len as usize)
            .min(bytes.len());
        if end < at + 8 {
            return;
        }
        let checksum = stele_engine::format::crc(&bytes[at + 8..end]);
        bytes[at + 4..at + 8].copy_from_slice(&checksum.to_le_bytes());
        at = end;
    }
}

/// Rewrites an envelope's body CRC (over the body its length claims, cut at the
/// input's end) and header CRC.
fn fix_envelope_crcs(bytes: &mut [u8]) {
    if bytes.len() < envelope::ENVELOPE_HEADER_LEN {
        return;
    }
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&bytes[12..20]);
    let body_len = u64::from_le_bytes(body_len);
    let end = (envelope::ENVELOPE_HEADER_LEN as u64)
        .saturating_add(body_len)
        .min(bytes.len() as u64) as usize;
    let body_crc = stele_engine::format::crc(&bytes[envelope::ENVELOPE_HEADER_LEN..end]);
    bytes[20..24].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = stele_engine::format::crc(&bytes[..24]);
    bytes[24..28].copy_from_slice(&header_crc.to_le_bytes());
}

/// Runs `check` on the input as it is, then on a copy whose CRCs `fix` rewrote.
fn raw_and_fixed(data: &[u8], fix: fn(&mut [u8]), check: fn(&[u8])) {
    check(data);
    let mut fixed = data.to_vec();
    fix(&mut fixed);
    if fixed != data {
        check(&fixed);
    }
}

// ---------------------------------------------------------------------------
// Pure decoders.
// ---------------------------------------------------------------------------

/// A record frame: decode never panics; a decoded frame re-encodes to a frame
/// that decodes to the same value, and the peek functions agree with decode.
pub fn decode_record(data: &[u8]) {
    raw_and_fixed(data, fix_record_crcs, decode_record_once);
}

fn decode_record_once(data: &[u8]) {
    let peeked = record::peek(data);
    let _ = record::peek_summary(data);
    let _ = record::peek_link(data);
    let Ok((view, size)) = record::decode(data) else {
        return;
    };
    assert!(
        size as usize <= data.len(),
        "frame size {size} past input {}",
        data.len()
    );
    assert_eq!(peeked, Ok((size, view.offset)), "peek disagrees with decode");
    let headers: Result<Vec<(String, Vec<u8>)>, _> = record::headers(view.headers)
        .map(|header| header.map(|(name, value)| (name.to_string(), value.to_vec())))
        .collect();
    let headers = match headers {
        Ok(headers) => headers,
        Err(error) => panic!("headers of a decoded record fail to iterate: {error}"),
    };
    let mut buf = Vec::new();
    record::encode(&mut buf, &view, &headers);
    assert_eq!(buf.len() as u64, size, "re-encoded frame size");
    match record::decode(&buf) {
        Ok((again, again_size)) => {
            assert_eq!(again, view, "record roundtrip");
            assert_eq!(again_size, size);
        }
        Err(error) => panic!("re-encoded record fails to decode: {error}"),
    }
}

/// A segment header: decode never panics and roundtrips.
pub fn decode_segment_header(data: &[u8]) {
    raw_and_fixed(
        data,
        |bytes| {
            if bytes.len() >= segment::SEGMENT_HEADER_LEN {
                let checksum = stele_engine::format::crc(&bytes[..segment::SEGMENT_HEADER_LEN - 4]);
                bytes[segment::SEGMENT_HEADER_LEN - 4..segment::SEGMENT_HEADER_LEN]
                    .copy_from_slice(&checksum.to_le_bytes());
            }
        },
        decode_segment_header_once,
    );
}

fn decode_segment_header_once(data: &[u8]) {
    let Ok(header) = segment::decode(data) else {
        return;
    };
    let bytes = segment::encode(&header);
    assert_eq!(segment::decode(&bytes), Ok(header), "segment header roundtrip");
}

/// An index file: decode never panics and roundtrips.
pub fn decode_index(data: &[u8]) {
    raw_and_fixed(data, fix_envelope_crcs, decode_index_once);
}

fn decode_index_once(data: &[u8]) {
    let Ok(decoded) = index::decode(data, limits::SEGMENT_SIZE_BYTES_MAX) else {
        return;
    };
    let bytes = index::encode(&decoded);
    assert_eq!(
        index::decode(&bytes, limits::SEGMENT_SIZE_BYTES_MAX),
        Ok(decoded),
        "index roundtrip"
    );
}

/// A checkpoint file: decode never panics and roundtrips.
pub fn decode_checkpoint(data: &[u8]) {
    raw_and_fixed(data, fix_envelope_crcs, decode_checkpoint_once);
}

fn decode_checkpoint_once(data: &[u8]) {
    let Ok(decoded) = checkpoint::decode(data) else {
        return;
    };
    let bytes = checkpoint::encode(&decoded);
    assert_eq!(checkpoint::decode(&bytes), Ok(decoded), "checkpoint roundtrip");
}

/// A `topic.meta` file: decode never panics and roundtrips.
pub fn decode_topic_meta(data: &[u8]) {
    raw_and_fixed(data, fix_envelope_crcs, decode_topic_meta_once);
}

fn decode_topic_meta_once(data: &[u8]) {
    let Ok((name, options)) = stele_engine::format::topic_meta::decode(data) else {
        return;
    };
    let bytes = stele_engine::format::topic_meta::encode(&name, &options);
    assert_eq!(
        stele_engine::format::topic_meta::decode(&bytes),
        Ok((name, options)),
        "topic meta roundtrip"
    );
}

/// An envelope, under its own magic and version and under every known magic:
/// decode never panics and roundtrips.
pub fn decode_envelope(data: &[u8]) {
    raw_and_fixed(data, fix_envelope_crcs, decode_envelope_once);
}

fn decode_envelope_once(data: &[u8]) {
    let own_magic: Option<[u8; 8]> = data.get(..8).and_then(|magic| magic.try_into().ok());
    let own_version = data
        .get(8..10)
        .map_or(1, |bytes| u16::from_le_bytes([bytes[0], bytes[1]]));
    let known: [&[u8; 8]; 4] = [
        checkpoint::CHECKPOINT_MAGIC,
        index::INDEX_MAGIC,
        stele_engine::format::topic_meta::TOPIC_META_MAGIC,
        segment::SEGMENT_MAGIC,
    ];
    let mut magics: Vec<[u8; 8]> = known.iter().map(|magic| **magic).collect();
    magics.extend(own_magic);
    for magic in &magics {
        for body_len_max in [data.len() as u64, u64::MAX] {
            let Ok((version, body)) = envelope::decode(data, magic, &[own_version, 1], body_len_max) else {
                continue;
            };
            let bytes = envelope::encode(magic, version, body);
            assert_eq!(
                envelope::decode(&bytes, magic, &[version], body.len() as u64),
                Ok((version, body)),
                "envelope roundtrip"
            );
        }
    }
}

fn small_topic() -> TopicOptions {
    TopicOptions::default()
        .partitions(1)
        .segment_size_bytes_max(limits::SEGMENT_SIZE_BYTES_MIN)
}

/// Every retained record of partition 0, checking contiguous offsets.
fn read_all(topic: &stele_engine::Topic, partition: PartitionId) -> (Offset, Offset, Vec<RecordedEvent>) {
    let info = topic
        .partition_infos()
        .into_iter()
        .find(|info| info.partition == partition);
    let Some(info) = info else {
        panic!("partition {} has no info", partition.0);
    };
    let (earliest, high_watermark) = (info.earliest, info.high_watermark);
    assert!(
        earliest <= high_watermark,
        "earliest {earliest:?} past {high_watermark:?}"
    );
    let mut events = Vec::new();
    let mut next = earliest;
    // Bounded: every round reads at least one event or stops.
    while next < high_watermark {
        let batch = match topic.read(partition, next, limits::READ_EVENTS_COUNT_MAX, u64::MAX) {
            Ok(batch) => batch,
            Err(error) => panic!("reading recovered records at {next:?}: {error}"),
        };
        assert!(
            !batch.is_empty(),
            "empty read at {next:?} below {high_watermark:?}"
        );
        for event in batch {
            assert_eq!(event.offset, next, "offsets not contiguous");
            next = next.next();
            events.push(event);
        }
    }
    assert_eq!(next, high_watermark);
    (earliest, high_watermark, events)
}

/// Arbitrary bytes as the active segment of a one-partition topic: open never
/// fails on bad bytes (damage it may not repair quarantines the partition
/// instead); every record it serves reads back with contiguous offsets, a
/// quarantined partition refuses appends, and a second open recovers the same
/// records under the same quarantine.
///
/// `data[0]` bit 0: prefix a valid segment header; bit 1: remove the checkpoint
/// and dedup runs written at close, so recovery scans from the start; bit 2:
/// rewrite the CRC of every frame laid end to end after the header.
pub fn recover_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let options = || LogOptions::default().housekeeping_interval(Duration::from_secs(3600));
    {
        let Ok(log) = Log::open(scratch.path(), options()) else {
            return;
        };
        if log.create_topic("t", small_topic()).is_err() {
            return;
        }
        if log.close().is_err() {
            return;
        }
    }
    let partition_dir = paths::partition_dir(&paths::topic_dir(&paths::topics_dir(scratch.path()), "t"), 0);
    let mut bytes = Vec::new();
    if mode & 1 != 0 {
        bytes.extend_from_slice(&segment::encode(&segment::SegmentHeader {
            partition: PartitionId(0),
            base_offset: Offset(0),
            created_ms: 1_700_000_000_000,
        }));
    }
    let records_start = bytes.len();
    bytes.extend_from_slice(rest);
    if mode & 4 != 0 {
        fix_record_crcs(&mut bytes[records_start..]);
    }
    if std::fs::write(partition_dir.join(paths::segment_file_name(Offset(0))), &bytes).is_err() {
        return;
    }
    if mode & 2 != 0 {
        let _ = std::fs::remove_file(paths::checkpoint(&partition_dir));
        let _ = std::fs::remove_dir_all(paths::dedup_dir(&partition_dir));
    }
    let first = match Log::open(scratch.path(), options()) {
        Ok(log) => log,
        Err(error) => panic!("recovery failed instead of quarantining the partition: {error}"),
    };
    let (recovered, quarantine) = match first.topic("t") {
        Ok(topic) => {
            let quarantine = topic.recovery_reports()[0].quarantine.clone();
            if quarantine.is_some() {
                let refused = topic.append("k", ExpectedSequence::Any, vec![Event::new("e", Vec::new())]);
                assert!(
                    matches!(&refused, Err(error) if error.kind() == ErrorKind::Quarantined),
                    "a quarantined partition took an append: {refused:?}"
                );
            }
            (read_all(&topic, PartitionId(0)), quarantine)
        }
        Err(error) => panic!("the topic is gone after recovery: {error}"),
    };
    if let Err(error) = first.close() {
        panic!("close after recovery: {error}");
    }
    drop(first);
    let second = match Log::open(scratch.path(), options()) {
        Ok(log) => log,
        Err(error) => panic!("recovery is not idempotent: second open fails: {error}"),
    };
    let again = match second.topic("t") {
        Ok(topic) => {
            assert_eq!(
                topic.recovery_reports()[0].quarantine,
                quarantine,
                "quarantine differs between recoveries"
            );
            read_all(&topic, PartitionId(0))
        }
        Err(error) => panic!("the topic is gone after the second recovery: {error}"),
    };
    assert_eq!(again.1, recovered.1, "high watermark differs between recoveries");
    assert_eq!(again, recovered, "records differ between recoveries");
}

// ---------------------------------------------------------------------------
// Journals and dedup runs, through the engine's open.
// ---------------------------------------------------------------------------

/// The options of the logs the journal and dedup bodies open: a fixed clock, so
/// that a dedup window judges an input the same way on every run.
fn fixed_clock_options() -> LogOptions {
    let clock: Arc<dyn stele_engine::Clock> = Arc::new(ManualClock::new(1_700_000_000_000));
    LogOptions::default()
        .clock(clock)
        .housekeeping_interval(Duration::from_secs(3600))
}

/// Creates topic `t` in a fresh log at `dir` and closes the log; `None` when the
/// file system refuses (an environment problem, not a finding).
fn create_closed_topic(
    dir: &Path,
    options: TopicOptions,
    fill: impl FnOnce(&stele_engine::Topic),
) -> Option<PathBuf> {
    let log = Log::open(dir, fixed_clock_options()).ok()?;
    let topic = log.create_topic("t", options).ok()?;
    fill(&topic);
    drop(topic);
    log.close().ok()?;
    Some(paths::topic_dir(&paths::topics_dir(dir), "t"))
}

/// A journal file (cursors, producers, webhooks, tokens or consumer groups)
/// opened by the engine: open returns Ok or a Corruption / Inconsistent error;
/// after Ok a reopen sees the same state and no torn tail, and a write after the
/// recovered tail survives another reopen.
///
/// `data[0]`: bit 3 picks the token store, else bit 2 the webhook store, else
/// bit 4 the group store, else bit 0 the producer journal, else the cursor
/// journal; bit 1 prefixes a valid file header (so that the rest exercises the
/// frames); `data[1]`: the topic's partition count, 1..=4.
pub fn journal_records(data: &[u8]) {
    use stele_engine::format::journal::encode_header;
    use stele_engine::format::{cursor, group, producer, token, webhook};

    let (Some(&mode), Some(&partitions)) = (data.first(), data.get(1)) else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let partitions = u32::from(partitions % 4) + 1;
    let kind = if mode & 8 != 0 {
        Journal::Tokens
    } else if mode & 4 != 0 {
        Journal::Webhooks
    } else if mode & 16 != 0 {
        Journal::Groups
    } else if mode & 1 != 0 {
        Journal::Producers
    } else {
        Journal::Cursors
    };
    let options = TopicOptions::default()
        .partitions(partitions)
        .durability(Durability::None);
    let Some(topic_dir) = create_closed_topic(scratch.path(), options, |_| ()) else {
        return;
    };
    let (path, magic) = match kind {
        Journal::Cursors => (paths::cursors_journal(&topic_dir), cursor::CURSOR_MAGIC),
        Journal::Producers => (paths::producers_journal(&topic_dir), producer::PRODUCER_MAGIC),
        Journal::Webhooks => (paths::webhooks_journal(scratch.path()), webhook::WEBHOOK_MAGIC),
        Journal::Tokens => (paths::tokens_journal(scratch.path()), token::TOKEN_MAGIC),
        Journal::Groups => (paths::groups_journal(scratch.path()), group::GROUP_MAGIC),
    };
    let mut bytes = Vec::new();
    if mode & 2 != 0 {
        bytes.extend_from_slice(&encode_header(magic));
    }
    bytes.extend_from_slice(&data[2..]);
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    if kind == Journal::Webhooks {
        webhook_journal(scratch.path());
        return;
    }
    if kind == Journal::Tokens {
        token_journal(scratch.path());
        return;
    }
    if kind == Journal::Groups {
        group_journal(scratch.path());
        return;
    }
    let log = match Log::open(scratch.path(), fixed_clock_options()) {
        Ok(log) => log,
        Err(error) => {
            assert!(is_bad_bytes(error.kind()), "{kind:?} journal open: {error}");
            return;
        }
    };
    let topic = match log.topic("t") {
        Ok(topic) => topic,
        Err(error) => panic!("the topic is gone after open: {error}"),
    };
    let (cursors, producers) = (topic.cursors(), topic.producers());
    let committed = topic.commit_cursor("fuzz-cursor", &[(PartitionId(0), Offset(0))], true);
    let opened = topic.open_producer("fuzz-producer");
    drop(topic);
    if let Err(error) = log.close() {
        panic!("close after a journal open: {error}");
    }
    drop(log);
    let again = match Log::open(scratch.path(), fixed_clock_options()) {
        Ok(log) => log,
        Err(error) => panic!("a {kind:?} journal that opened once fails to reopen: {error}"),
    };
    let topic = match again.topic("t") {
        Ok(topic) => topic,
        Err(error) => panic!("the topic is gone after reopen: {error}"),
    };
    assert_eq!(
        topic.journal_bytes_cut(),
        (0, 0),
        "torn tail left after the first open"
    );
    let mut recursors = topic.cursors();
    let mut expected_cursors = cursors;
    if committed.is_ok() {
        match topic.cursor("fuzz-cursor") {
            Ok(positions) => assert_eq!(positions[0].committed, Some(Offset(0)), "reopened cursor"),
            Err(error) => panic!("a committed cursor is gone after reopen: {error}"),
        }
        recursors.retain(|(name, _)| name != "fuzz-cursor");
        expected_cursors.retain(|(name, _)| name != "fuzz-cursor");
    }
    assert_eq!(recursors, expected_cursors, "cursor journal replay is not stable");
    let mut reproducers = topic.producers();
    let mut expected_producers = producers;
    if let Ok((id, epoch)) = opened {
        let found = reproducers.iter().find(|(name, _, _)| name == "fuzz-producer");
        assert_eq!(
            found.map(|&(_, id, epoch)| (id, epoch)),
            Some((id, epoch)),
            "reopened producer"
        );
        reproducers.retain(|(name, _, _)| name != "fuzz-producer");
        expected_producers.retain(|(name, _, _)| name != "fuzz-producer");
    }
    assert_eq!(
        reproducers, expected_producers,
        "producer journal replay is not stable"
    );
    drop(topic);
    let _ = again.close();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    Cursors,
    Producers,
    Webhooks,
    Tokens,
    Groups,
}

/// The token store of `dir`, as `journal_records` checks the others; then
/// the server's authenticator opens it without panicking.
fn token_journal(dir: &Path) {
    use stele_engine::token::{TokenEntry, TokenStore};

    let storage: Arc<dyn stele_engine::io::Storage> = Arc::new(stele_engine::io::StdStorage);
    let store = match TokenStore::open(Arc::clone(&storage), dir) {
        Ok(store) => store,
        Err(error) => {
            assert!(is_bad_bytes(error.kind()), "token journal open: {error}");
            return;
        }
    };
    let listed = store.list();
    let entry = TokenEntry {
        id: "FuzzFuzzFuzz0000".to_string(),
        name: "fuzz".to_string(),
        secret_hash: Some([9; 32]),
        grants: vec!["read:*".to_string()],
        created_at_ms: 1,
        ..TokenEntry::default()
    };
    let created = store.create(entry.clone());
    let revoked = created.is_ok() && matches!(store.revoke(&entry.id, 2), Ok(Some(_)));
    drop(store);
    let again = match TokenStore::open(storage, dir) {
        Ok(store) => store,
        Err(error) => panic!("a token journal that opened once fails to reopen: {error}"),
    };
    let mut relisted = again.list();
    let mut expected = listed;
    if created.is_ok() {
        let found = again.get(&entry.id);
        assert_eq!(
            found.as_ref().map(|found| found.revoked_at_ms != 0),
            Some(revoked),
            "reopened token"
        );
        relisted.retain(|listed| listed.id != entry.id);
        expected.retain(|listed| listed.id != entry.id);
    }
    assert_eq!(relisted, expected, "token journal replay is not stable");
    drop(again);
    let config = stele_server::auth::AuthConfig::default();
    if let Err(error) = stele_server::auth::Authenticator::open(dir, &config) {
        panic!("the authenticator refuses a token store that opened: {error}");
    }
}

/// The credential parsers on arbitrary bytes: the token format, grants, and
/// the `authorization` metadata through a server's authenticator, which
/// answers every value with a caller or UNAUTHENTICATED and never panics.
///
/// `data[0]` picks what the rest is: 0, a token's text; 1, a grant; 2, an
/// `authorization` value; 3, a byte position and a byte written into a valid
/// token, which must then be refused unless it is unchanged.
pub fn auth_credentials(data: &[u8]) {
    use stele_server::auth::grant::Grant;
    use stele_server::auth::rpc::Rpc;
    use stele_server::auth::{AuthConfig, AuthMode, Authenticator, token};

    // Opened once per process; nothing here writes to its store, so its
    // directory goes at once.
    static AUTH: std::sync::OnceLock<Option<(Arc<Authenticator>, String)>> = std::sync::OnceLock::new();
    let Some((auth, valid)) = AUTH.get_or_init(|| {
        let scratch = Scratch::new()?;
        let (_, valid) = token::generate().ok()?;
        let config = AuthConfig {
            mode: AuthMode::Required,
            bootstrap_token: Some(valid.clone()),
            ..AuthConfig::default()
        };
        let auth = Authenticator::open(scratch.path(), &config).ok()?;
        drop(scratch);
        Some((auth, valid))
    }) else {
        return;
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        0 => {
            if let Ok(parsed) = token::parse(&text) {
                assert_eq!(parsed.text.len(), token::TOKEN_LEN);
                assert!(parsed.text.starts_with(token::TOKEN_PREFIX));
                assert!(parsed.id.bytes().all(|byte| byte.is_ascii_alphanumeric()));
            }
        }
        1 => {
            if let Ok(grant) = Grant::parse(&text) {
                let shown = grant.to_string();
                assert_eq!(
                    Grant::parse(&shown).as_ref(),
                    Ok(&grant),
                    "grant {shown:?} does not round-trip"
                );
            }
        }
        2 => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            if let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(rest) {
                metadata.insert("authorization", value);
            }
            let expected_ok = metadata
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .is_some_and(|value| {
                    value
                        .split_once(' ')
                        .is_some_and(|(_, token)| token.trim() == valid)
                });
            let result = auth.caller(Rpc::Read, &metadata, None, None);
            if let Err(status) = &result {
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            }
            if !expected_ok {
                assert!(result.is_err(), "a value that is not the token authenticated");
            }
        }
        _ => {
            let (Some(&at), Some(&byte)) = (rest.first(), rest.get(1)) else {
                return;
            };
            let mut changed = valid.clone().into_bytes();
            let at = usize::from(at) % changed.len();
            changed[at] = byte;
            let Ok(changed) = String::from_utf8(changed) else {
                return;
            };
            let accepted = token::parse(&changed).is_ok();
            assert_eq!(accepted, &changed == valid, "a changed token parsed: {changed:?}");
        }
    }
}

/// The webhook store of `dir`, as `journal_records` checks the others.
fn webhook_journal(dir: &Path) {
    use stele_engine::webhook::{DeliverySettings, Endpoint, WebhookStore};

    let storage: Arc<dyn stele_engine::io::Storage> = Arc::new(stele_engine::io::StdStorage);
    let store = match WebhookStore::open(Arc::clone(&storage), dir) {
        Ok(store) => store,
        Err(error) => {
            assert!(is_bad_bytes(error.kind()), "webhook journal open: {error}");
            return;
        }
    };
    let listed = store.list();
    let endpoint = Endpoint {
        name: "fuzz-endpoint".to_string(),
        url: "https://example.com/hook".to_string(),
        topic: "t".to_string(),
        event_types: Vec::new(),
        key_prefix: Vec::new(),
        secret: vec![1; 24],
        paused: false,
        settings: DeliverySettings::default(),
        redrive_until: Vec::new(),
    };
    let created = store.create(endpoint.clone());
    drop(store);
    let again = match WebhookStore::open(storage, dir) {
        Ok(store) => store,
        Err(error) => panic!("a webhook journal that opened once fails to reopen: {error}"),
    };
    let mut relisted = again.list();
    let mut expected = listed;
    if created.is_ok() {
        assert_eq!(
            again.get("fuzz-endpoint").ok(),
            Some(endpoint),
            "reopened endpoint"
        );
        relisted.retain(|endpoint| endpoint.name != "fuzz-endpoint");
        expected.retain(|endpoint| endpoint.name != "fuzz-endpoint");
    }
    assert_eq!(relisted, expected, "webhook journal replay is not stable");
}

/// The group store of `dir`, as `journal_records` checks the others; every
/// replayed group also keeps the rules of progress (ranges ordered, apart and
/// above the floor, pending offsets unsettled, counts that add up, the entry
/// limit), and progress recorded after open replays to what applying it in
/// memory gives.
fn group_journal(dir: &Path) {
    use stele_engine::group::{
        GroupDefinition, GroupSettings, GroupState, GroupStore, Pending, ProgressChange,
    };

    let storage: Arc<dyn stele_engine::io::Storage> = Arc::new(stele_engine::io::StdStorage);
    let store = match GroupStore::open(Arc::clone(&storage), dir) {
        Ok(store) => store,
        Err(error) => {
            assert!(is_bad_bytes(error.kind()), "group journal open: {error}");
            return;
        }
    };
    let listed = store.list();
    for state in &listed {
        check_group_progress(state);
    }
    let definition = GroupDefinition {
        name: "fuzz-group".to_string(),
        topic: "t".to_string(),
        settings: GroupSettings::defaults_for("t"),
        created_ms: 1,
        redrive_until: vec![(0, 3)],
    };
    let changes = vec![
        ProgressChange::Settle {
            stream: 0,
            partition: 1,
            start: 0,
            end: 3,
        },
        ProgressChange::Settle {
            stream: 0,
            partition: 1,
            start: 5,
            end: 8,
        },
        ProgressChange::Pending {
            stream: 1,
            partition: 0,
            offset: 2,
            pending: Some(Pending {
                attempts: 2,
                not_before_ms: 9,
                blocked: true,
            }),
        },
    ];
    let created = store.create(GroupState::new(definition.clone()));
    let recorded = created.is_ok() && store.record("fuzz-group", changes.clone()).is_ok();
    // Progress of a group that the file held, when there is one.
    let progressed = listed.first().map(|state| {
        let name = state.definition.name.clone();
        let change = ProgressChange::Settle {
            stream: 1,
            partition: 2,
            start: 1,
            end: 4,
        };
        let mut expected = state.clone();
        if let Err(error) = expected.apply(&change) {
            panic!("a valid change is refused: {error}");
        }
        let outcome = store.record(&name, vec![change]);
        (name, expected, outcome.is_ok())
    });
    drop(store);
    let again = match GroupStore::open(storage, dir) {
        Ok(store) => store,
        Err(error) => panic!("a group journal that opened once fails to reopen: {error}"),
    };
    let mut relisted = again.list();
    let mut expected = listed;
    if created.is_ok() {
        let mut state = GroupState::new(definition);
        if recorded {
            for change in &changes {
                if let Err(error) = state.apply(change) {
                    panic!("a valid change is refused: {error}");
                }
            }
        }
        assert_eq!(again.get("fuzz-group").ok(), Some(state), "reopened group");
        relisted.retain(|state| state.definition.name != "fuzz-group");
        expected.retain(|state| state.definition.name != "fuzz-group");
    }
    if let Some((name, state, true)) = progressed {
        assert_eq!(again.get(&name).ok(), Some(state), "reopened progress");
        relisted.retain(|state| state.definition.name != name);
        expected.retain(|state| state.definition.name != name);
    }
    assert_eq!(relisted, expected, "group journal replay is not stable");
}

/// Panics unless `state` keeps the rules of progress, checked through the public
/// API only.
fn check_group_progress(state: &stele_engine::group::GroupState) {
    use stele_engine::limits::{GROUP_PROGRESS_ENTRIES_MAX, PARTITIONS_COUNT_MAX};

    let mut entries_count = 0;
    for stream in &state.streams {
        assert!(
            stream.len() <= PARTITIONS_COUNT_MAX as usize,
            "too many partitions"
        );
        for progress in stream {
            let floor = progress.floor();
            assert!(!progress.is_settled(floor), "the floor {floor} is settled");
            let mut previous_end = floor;
            let mut settled = 0;
            for (start, end) in progress.ranges() {
                assert!(
                    start > previous_end,
                    "range [{start}, {end}) touches {previous_end}"
                );
                assert!(start < end, "empty range [{start}, {end})");
                assert!(progress.is_settled(start), "range start {start} unsettled");
                assert!(!progress.is_settled(end), "range end {end} settled");
                assert_eq!(progress.first_unsettled_from(start), end);
                settled += end - start;
                previous_end = end;
            }
            assert_eq!(progress.settled_above_floor(), settled, "settled count");
            for (offset, _) in progress.pendings() {
                assert!(!progress.is_settled(offset), "pending offset {offset} is settled");
            }
            assert_eq!(
                progress.entries_count(),
                progress.ranges_count() + progress.pendings_count()
            );
            entries_count += progress.entries_count();
        }
    }
    assert_eq!(state.entries_count(), entries_count);
    assert!(entries_count <= GROUP_PROGRESS_ENTRIES_MAX, "entry limit");
}

/// An arbitrary file as a dedup run of a partition holding 24 events with
/// idempotency ids: the pure decoders never panic; open never fails on bad bytes
/// (it drops the run and reports it); appends that probe the index succeed or
/// report Corruption; and a second open drops nothing.
///
/// `data[0]` picks the run's name (its offset start: 0, 8, 16 or 24); the rest is
/// the file.
pub fn dedup_run(data: &[u8]) {
    use stele_engine::format::dedup_run::{self as run, RUN_HEADER_LEN};

    let Some((&start, file)) = data.split_first() else {
        return;
    };
    // The pure decoders, on the header and on every whole block.
    if let Ok(header) = run::decode_header(&file[..file.len().min(RUN_HEADER_LEN)]) {
        let blocks = run::blocks_count(header.entries_count);
        let mut entries = Vec::new();
        for block_index in 0..blocks.min(64) {
            let position = run::block_position(block_index) as usize;
            let Some(block) = file.get(position..position + limits::DEDUP_RUN_BLOCK_SIZE) else {
                break;
            };
            entries.clear();
            let count = run::block_entries_count(header.entries_count, block_index);
            if run::decode_block(block, count, &mut entries).is_ok() {
                assert_eq!(entries.len(), count, "a block decoded to the wrong count");
            }
        }
    }
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let options = TopicOptions::default()
        .partitions(1)
        .durability(Durability::None)
        .segment_size_bytes_max(limits::SEGMENT_SIZE_BYTES_MIN);
    let fill = |topic: &stele_engine::Topic| {
        for index in 0..24u32 {
            let event =
                Event::new("e", index.to_le_bytes().to_vec()).with_idempotency_id(format!("id-{index}"));
            let _ = topic.append("k", ExpectedSequence::Any, vec![event]);
        }
    };
    let Some(topic_dir) = create_closed_topic(scratch.path(), options, fill) else {
        return;
    };
    let dedup_dir = paths::dedup_dir(&paths::partition_dir(&topic_dir, 0));
    if std::fs::create_dir_all(&dedup_dir).is_err() {
        return;
    }
    // A sequence above any the engine wrote, so the file joins the engine's runs.
    let name = paths::run_file_name(1 << 32, u64::from(start % 4) * 8);
    if std::fs::write(dedup_dir.join(name), file).is_err() {
        return;
    }
    let log = match Log::open(scratch.path(), fixed_clock_options()) {
        Ok(log) => log,
        Err(error) => panic!("open failed on a bad dedup run instead of dropping it: {error}"),
    };
    let topic = match log.topic("t") {
        Ok(topic) => topic,
        Err(error) => panic!("the topic is gone after open: {error}"),
    };
    let dropped: usize = topic
        .recovery_reports()
        .iter()
        .map(|report| report.dedup_runs_dropped)
        .sum();
    assert!(dropped <= 1, "dropped {dropped} runs of 1");
    // Probe with ids no event carries, so any match is a false candidate.
    for chunk in file.chunks_exact(8).take(8) {
        let event = Event::new("e", Vec::new()).with_idempotency_id(format!("probe-{chunk:02x?}"));
        if let Err(error) = topic.append("k", ExpectedSequence::Any, vec![event]) {
            assert!(
                is_bad_bytes(error.kind()),
                "append probing the dedup index: {error}"
            );
        }
    }
    let high_watermark = topic.high_watermark(PartitionId(0));
    drop(topic);
    if let Err(error) = log.close() {
        panic!("close after probing a dedup run: {error}");
    }
    drop(log);
    let again = match Log::open(scratch.path(), fixed_clock_options()) {
        Ok(log) => log,
        Err(error) => panic!("reopen after a dedup run was dropped: {error}"),
    };
    let topic = match again.topic("t") {
        Ok(topic) => topic,
        Err(error) => panic!("the topic is gone after reopen: {error}"),
    };
    let dropped: usize = topic
        .recovery_reports()
        .iter()
        .map(|report| report.dedup_runs_dropped)
        .sum();
    assert_eq!(dropped, 0, "a second open dropped runs again");
    assert_eq!(
        topic.high_watermark(PartitionId(0)).ok(),
        high_watermark.ok(),
        "high watermark moved between opens"
    );
    drop(topic);
    let _ = again.close();
}

// ---------------------------------------------------------------------------
// The gRPC service.
// ---------------------------------------------------------------------------

/// Arbitrary bytes decoded as a request message (`data[0]` picks the type) and
/// fed to the real service over a temporary engine: the result is Ok or a status
/// with a clear code (never INTERNAL, UNKNOWN or DATA_LOSS), and a rejected
/// append writes nothing.
pub fn grpc_requests(data: &[u8]) {
    use prost::Message;
    use stele_wire::proto;
    use stele_wire::proto::stele_server::Stele;
    use tonic::{Code, Request};

    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    let options = LogOptions::default().housekeeping_interval(Duration::from_secs(3600));
    let Ok(log) = Log::open(scratch.path(), options) else {
        return;
    };
    let log = Arc::new(log);
    let Ok(topic) = log.create_topic("t", small_topic().partitions(2)) else {
        return;
    };
    if topic
        .append(
            "k",
            ExpectedSequence::NoEvents,
            vec![Event::new("e", b"x".to_vec())],
        )
        .is_err()
    {
        return;
    }
    let backend = stele_server::EngineBackend::new(Arc::clone(&log), small_topic(), true);
    let (closing_sender, closing) = tokio::sync::watch::channel(false);
    let service = stele_server::SteleService::new(Arc::new(backend), closing);
    let total_high_watermark = |log: &Log| -> u64 {
        log.topics()
            .iter()
            .filter_map(|name| log.topic(name).ok())
            .flat_map(|topic| topic.partition_infos())
            .map(|info| info.high_watermark.0)
            .sum()
    };
    let check = |what: &str, status: &tonic::Status| {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown | Code::DataLoss),
            "{what}: bad input got {:?}: {}",
            status.code(),
            status.message()
        );
    };
    let before = total_high_watermark(&log);
    runtime.block_on(async {
        match kind % 7 {
            0 => {
                let Ok(request) = proto::AppendRequest::decode(message) else {
                    return;
                };
                let events = request.events.len() as u64;
                match service.append(Request::new(request)).await {
                    Ok(response) => {
                        let result = response.into_inner().result;
                        let written = match result {
                            Some(result) if result.duplicate => 0,
                            Some(_) => events,
                            None => panic!("an append answered Ok without a result"),
                        };
                        assert_eq!(
                            total_high_watermark(&log),
                            before + written,
                            "append wrote a wrong count"
                        );
                    }
                    Err(status) => {
                        check("append", &status);
                        assert_eq!(total_high_watermark(&log), before, "a rejected append wrote");
                    }
                }
            }
            1 => {
                let Ok(request) = proto::AppendBatchRequest::decode(message) else {
                    return;
                };
                let counts: Vec<u64> = request
                    .appends
                    .iter()
                    .map(|append| append.events.len() as u64)
                    .collect();
                match service.append_batch(Request::new(request)).await {
                    Ok(response) => {
                        let outcomes = response.into_inner().outcomes;
                        assert_eq!(outcomes.len(), counts.len(), "one outcome per append");
                        let mut written = 0;
                        for (outcome, count) in outcomes.iter().zip(&counts) {
                            match &outcome.outcome {
                                Some(proto::batch_append_outcome::Outcome::Result(result)) => {
                                    if !result.duplicate {
                                        written += count;
                                    }
                                }
                                Some(proto::batch_append_outcome::Outcome::Error(detail)) => {
                                    assert!(!detail.message.is_empty(), "an error outcome without a message");
                                }
                                None => panic!("an empty batch outcome"),
                            }
                        }
                        assert_eq!(
                            total_high_watermark(&log),
                            before + written,
                            "batch wrote a wrong count"
                        );
                    }
                    Err(status) => {
                        check("append batch", &status);
                        assert_eq!(total_high_watermark(&log), before, "a rejected batch wrote");
                    }
                }
            }
            2 => {
                let Ok(request) = proto::ReadRequest::decode(message) else {
                    return;
                };
                if let Err(status) = service.read(Request::new(request)).await {
                    check("read", &status);
                }
            }
            3 => {
                let Ok(request) = proto::ReadKeyRequest::decode(message) else {
                    return;
                };
                if let Err(status) = service.read_key(Request::new(request)).await {
                    check("read key", &status);
                }
            }
            4 => {
                let Ok(request) = proto::SubscribeRequest::decode(message) else {
                    return;
                };
                match service.subscribe(Request::new(request)).await {
                    Ok(response) => {
                        use tokio_stream::StreamExt;
                        let mut stream = response.into_inner();
                        for _ in 0..4 {
                            match tokio::time::timeout(Duration::from_millis(2), stream.next()).await {
                                Ok(Some(Err(status))) => {
                                    check("subscribe stream", &status);
                                    break;
                                }
                                Ok(Some(Ok(_))) => {}
                                Ok(None) | Err(_) => break,
                            }
                        }
                    }
                    Err(status) => check("subscribe", &status),
                }
            }
            5 => {
                let Ok(request) = proto::CommitCursorRequest::decode(message) else {
                    return;
                };
                if let Err(status) = service.commit_cursor(Request::new(request)).await {
                    check("commit cursor", &status);
                }
                assert_eq!(total_high_watermark(&log), before, "a cursor commit wrote events");
            }
            _ => {
                let Ok(mut request) = proto::CreateTopicRequest::decode(message) else {
                    return;
                };
                // Keep per-input work small: a topic of thousands of partitions
                // is a valid request but costs thousands of threads.
                if let Some(settings) = request.settings.as_mut() {
                    settings.partitions = settings.partitions.min(4);
                }
                if let Err(status) = service.create_topic(Request::new(request)).await {
                    check("create topic", &status);
                }
                assert_eq!(
                    total_high_watermark(&log),
                    before,
                    "creating a topic wrote events"
                );
            }
        }
    });
    // End subscriptions, then stop whatever tasks they left behind.
    let _ = closing_sender.send(true);
    drop(service);
    runtime.shutdown_timeout(Duration::from_millis(100));
    drop(topic);
    let _ = log.close();
}

// ---------------------------------------------------------------------------
// Engine operations against a model.
// ---------------------------------------------------------------------------

const MODEL_KEYS: [&str; 3] = ["a", "b", "c"];
const MODEL_WINDOW_MS: u64 = 10_000;
const MODEL_START_MS: i64 = 1_700_000_000_000;

#[derive(Debug, Clone, PartialEq)]
struct ModelRecord {
    key: Vec<u8>,
    sequence: u64,
    payload: Vec<u8>,
}

/// A byte reader that yields zeros past the end.
struct Bytes<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        let byte = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        byte
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

struct Engine {
    log: Log,
    topic: stele_engine::Topic,
}

fn open_engine(dir: &Path, storage: &FaultyStorage, clock: &Arc<ManualClock>, create: bool) -> Engine {
    let options = LogOptions::default()
        .storage(Arc::new(storage.clone()))
        .clock(Arc::clone(clock) as Arc<dyn stele_engine::Clock>)
        .housekeeping_interval(Duration::from_secs(3600));
    let log = match Log::open(dir, options) {
        Ok(log) => log,
        Err(error) => panic!("opening the model's log: {error}"),
    };
    let topic = if create {
        log.create_topic(
            "m",
            TopicOptions::default()
                .partitions(2)
                .durability(Durability::Always)
                .segment_size_bytes_max(limits::SEGMENT_SIZE_BYTES_MIN)
                .retention_bytes(Some(2 * limits::SEGMENT_SIZE_BYTES_MIN))
                .dedup_window_ms(MODEL_WINDOW_MS),
        )
    } else {
        log.topic("m")
    };
    match topic {
        Ok(topic) => Engine { log, topic },
        Err(error) => panic!("the model's topic: {error}"),
    }
}

/// Checks every partition against the model: high watermarks, and every
/// retained record (key, sequence, payload) at its offset.
fn check_model(topic: &stele_engine::Topic, partitions: &[Vec<ModelRecord>], earliest: &mut [Offset]) {
    for (index, records) in partitions.iter().enumerate() {
        let partition = PartitionId(index as u32);
        let (first, high_watermark, events) = read_all(topic, partition);
        assert_eq!(
            high_watermark.0,
            records.len() as u64,
            "partition {index}: high watermark"
        );
        assert!(first >= earliest[index], "partition {index}: earliest moved back");
        earliest[index] = first;
        for event in events {
            let Some(expected) = records.get(event.offset.0 as usize) else {
                panic!("partition {index}: record past the model at {:?}", event.offset);
            };
            assert_eq!(
                event.key, expected.key,
                "partition {index} offset {:?}: key",
                event.offset
            );
            assert_eq!(
                event.sequence,
                Sequence(expected.sequence),
                "offset {:?}: sequence",
                event.offset
            );
            assert_eq!(
                event.payload, expected.payload,
                "offset {:?}: payload",
                event.offset
            );
        }
    }
}

/// Interprets the bytes as engine operations (appends with expected sequences
/// and idempotency ids, retries, reopen, simulated crash, retention, cursor
/// commits, clock moves), checked against a model after every step: every
/// acknowledged append is present, per-key sequences are dense, rejected
/// appends write nothing.
pub fn engine_ops(data: &[u8]) {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let storage = FaultyStorage::new();
    let clock = Arc::new(ManualClock::new(MODEL_START_MS));
    let mut engine = Some(open_engine(scratch.path(), &storage, &clock, true));
    let mut partitions: Vec<Vec<ModelRecord>> = vec![Vec::new(), Vec::new()];
    let mut earliest = vec![Offset(0); 2];
    let mut sequences: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut cursor: Vec<Offset> = vec![Offset(0); 2];
    let mut next_id = 0u64;
    // The last acknowledged new append, for retries: (key, expected, events, ack).
    let mut last: Option<(Vec<u8>, ExpectedSequence, Vec<Event>, stele_engine::AppendAck)> = None;
    // Whether the last append's events were also appended to another key.
    let mut copied = false;
    let mut bytes = Bytes { data, at: 0 };
    let mut steps = 0;
    while !bytes.done() && steps < 48 {
        steps += 1;
        let Some(current) = engine.as_ref() else {
            panic!("the model lost its engine");
        };
        let topic = &current.topic;
        let op = bytes.next();
        match op % 8 {
            0..=2 => {
                let key = MODEL_KEYS[(bytes.next() % 3) as usize].as_bytes().to_vec();
                let shape = bytes.next();
                let partition = topic.partition_for(&key).0 as usize;
                let actual = sequences.get(&key).copied();
                let expected = match shape % 5 {
                    0 => ExpectedSequence::Any,
                    1 => ExpectedSequence::NoEvents,
                    2 | 3 => actual
                        .map(Sequence)
                        .map_or(ExpectedSequence::NoEvents, ExpectedSequence::Exact),
                    _ => ExpectedSequence::Exact(Sequence(u64::from(shape >> 5))),
                };
                let count = 1 + (shape >> 3) % 3;
                let big = shape & 0x80 != 0;
                let events: Vec<Event> = (0..count)
                    .map(|_| {
                        next_id += 1;
                        let payload = if big {
                            vec![b'p'; 1500]
                        } else {
                            next_id.to_le_bytes().to_vec()
                        };
                        let event = Event::new("e", payload);
                        if shape & 0x40 != 0 {
                            event.with_idempotency_id(format!("id-{next_id}"))
                        } else {
                            event
                        }
                    })
                    .collect();
                let matches = match expected {
                    ExpectedSequence::Any => true,
                    ExpectedSequence::NoEvents => actual.is_none(),
                    ExpectedSequence::Exact(sequence) => actual == Some(sequence.0),
                };
                let result = topic.append(key.clone(), expected, events.clone());
                match (matches, result) {
                    (true, Ok(ack)) => {
                        assert!(!ack.duplicate, "a fresh append reported as a duplicate");
                        let first = actual.map_or(0, |sequence| sequence + 1);
                        assert_eq!(ack.first_sequence, Sequence(first), "first sequence");
                        assert_eq!(
                            ack.last_sequence,
                            Sequence(first + u64::from(count) - 1),
                            "last sequence"
                        );
                        assert_eq!(
                            ack.first_offset.0,
                            partitions[partition].len() as u64,
                            "first offset"
                        );
                        for (at, event) in events.iter().enumerate() {
                            partitions[partition].push(ModelRecord {
                                key: key.clone(),
                                sequence: first + at as u64,
                                payload: event.payload.clone(),
                            });
                        }
                        sequences.insert(key.clone(), ack.last_sequence.0);
                        last = (shape & 0x40 != 0).then_some((key, expected, events, ack));
                        copied = false;
                    }
                    (false, Err(error)) => {
                        assert_eq!(error.kind(), ErrorKind::WrongExpectedSequence, "{error}");
                    }
                    (true, Err(error)) => panic!("a valid append failed: {error}"),
                    (false, Ok(ack)) => panic!("an append with a wrong expected sequence succeeded: {ack:?}"),
                }
            }
            3 => {
                // Retry the last append with ids: it is recognised, nothing is written.
                // Only within the dedup window (less a margin): later, a retry is new.
                let now_ms = stele_engine::Clock::now_ms(clock.as_ref());
                if last
                    .as_ref()
                    .is_some_and(|(_, _, _, ack)| now_ms - ack.timestamp_ms >= MODEL_WINDOW_MS as i64 - 1_000)
                {
                    last = None;
                }
                if let Some((key, expected, events, ack)) = &last {
                    match topic.append(key.clone(), *expected, events.clone()) {
                        Ok(retry) => {
                            assert!(retry.duplicate, "a retry within the window was appended again");
                            assert_eq!(retry.first_offset, ack.first_offset, "retry offset");
                            assert_eq!(retry.first_sequence, ack.first_sequence, "retry sequence");
                        }
                        Err(error) => panic!("a retry failed: {error}"),
                    }
                    // The same ids with another payload on the same key: refused,
                    // naming the original; nothing is written (`check_model`).
                    let mut changed = events.clone();
                    changed[0].payload.push(b'!');
                    match topic.append(key.clone(), ExpectedSequence::Any, changed) {
                        Err(Error::IdempotencyIdReused { index, offset, .. }) => {
                            assert_eq!(index, 0, "reused id index");
                            assert_eq!(offset, ack.first_offset, "reused id original offset");
                        }
                        other => panic!("an id reused with other content: {other:?}"),
                    }
                    // The same ids on another key are that key's own new events.
                    if !copied {
                        copied = true;
                        let index = MODEL_KEYS
                            .iter()
                            .position(|candidate| candidate.as_bytes() == key.as_slice())
                            .expect("a model key");
                        let other = MODEL_KEYS[(index + 1) % MODEL_KEYS.len()].as_bytes().to_vec();
                        let partition = topic.partition_for(&other).0 as usize;
                        let first = sequences.get(&other).map_or(0, |sequence| sequence + 1);
                        match topic.append(other.clone(), ExpectedSequence::Any, events.clone()) {
                            Ok(stored) => {
                                assert!(!stored.duplicate, "another key's event reported as a duplicate");
                                assert_eq!(
                                    stored.first_sequence,
                                    Sequence(first),
                                    "other key's first sequence"
                                );
                                assert_eq!(
                                    stored.first_offset.0,
                                    partitions[partition].len() as u64,
                                    "other key's first offset"
                                );
                                for (at, event) in events.iter().enumerate() {
                                    partitions[partition].push(ModelRecord {
                                        key: other.clone(),
                                        sequence: first + at as u64,
                                        payload: event.payload.clone(),
                                    });
                                }
                                sequences.insert(other, stored.last_sequence.0);
                            }
                            Err(error) => panic!("the same ids on another key failed: {error}"),
                        }
                    }
                }
            }
            4 => {
                let Some(current) = engine.take() else {
                    panic!("the model lost its engine");
                };
                if let Err(error) = current.log.close() {
                    panic!("close: {error}");
                }
                drop(current);
                engine = Some(open_engine(scratch.path(), &storage, &clock, false));
            }
            5 => {
                let seed = u64::from(bytes.next());
                drop(engine.take());
                if let Err(error) = storage.crash(seed) {
                    panic!("simulated crash: {error}");
                }
                engine = Some(open_engine(scratch.path(), &storage, &clock, false));
            }
            6 => {
                if let Err(error) = topic.enforce_retention() {
                    panic!("retention: {error}");
                }
                // A retried append whose record retention removed may be appended again.
                last = None;
            }
            _ => {
                let choice = bytes.next();
                if choice & 0x80 != 0 {
                    clock.advance(i64::from(choice & 0x3f) * 100);
                } else {
                    let index = (choice & 1) as usize;
                    let high_watermark = Offset(partitions[index].len() as u64);
                    let ahead = choice & 2 != 0;
                    let target = if ahead {
                        Offset(high_watermark.0 + 1)
                    } else {
                        Offset(high_watermark.0.saturating_sub(u64::from(choice >> 2 & 3)))
                    };
                    let result = topic.commit_cursor("c", &[(PartitionId(index as u32), target)], true);
                    match (ahead, result) {
                        (false, Ok(())) => cursor[index] = target,
                        (true, Err(error)) => {
                            assert_eq!(error.kind(), ErrorKind::CursorAheadOfHighWatermark, "{error}");
                        }
                        (false, Err(error)) => panic!("a valid cursor commit failed: {error}"),
                        (true, Ok(())) => panic!("a cursor commit past the high watermark succeeded"),
                    }
                }
            }
        }
        let Some(current) = engine.as_ref() else {
            panic!("the model lost its engine");
        };
        check_model(&current.topic, &partitions, &mut earliest);
        if matches!(op % 8, 4 | 5) {
            match current.topic.cursor("c") {
                Ok(positions) => {
                    for (index, position) in positions.iter().enumerate() {
                        let committed = position.committed.unwrap_or(Offset(0));
                        assert_eq!(
                            committed, cursor[index],
                            "cursor of partition {index} after reopen"
                        );
                    }
                }
                Err(error) => assert_eq!(error.kind(), ErrorKind::CursorNotFound, "{error}"),
            }
            for (key, sequence) in &sequences {
                match current.topic.key_sequence(key) {
                    Ok(found) => {
                        assert_eq!(found, Some(Sequence(*sequence)), "key sequence after reopen")
                    }
                    Err(error) => panic!("key sequence: {error}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_and_dedup_bodies_reach_a_real_data_directory() {
        // Goal: the bodies that craft a data directory get past their set-up on a
        // healthy machine, so their properties are checked at all.
        // Method: build the topic they build, check the files they overwrite are
        // where the engine reads them, and run both bodies on valid files.
        let scratch = Scratch::new().expect("a scratch directory");
        let fill = |topic: &stele_engine::Topic| {
            topic
                .commit_cursor("c", &[(PartitionId(1), Offset(0))], false)
                .expect("commit");
            topic.open_producer("p").expect("open a producer");
            let event = Event::new("e", b"x".to_vec()).with_idempotency_id("id");
            topic
                .append("k", ExpectedSequence::Any, vec![event])
                .expect("append");
        };
        let topic_dir = create_closed_topic(scratch.path(), TopicOptions::default().partitions(2), fill)
            .expect("a topic in a fresh log");
        let cursors = std::fs::read(paths::cursors_journal(&topic_dir)).expect("the cursor journal");
        let producers = std::fs::read(paths::producers_journal(&topic_dir)).expect("the producer journal");
        let dedup_dir = paths::dedup_dir(&paths::partition_dir(&topic_dir, 0));
        let runs: Vec<_> = std::fs::read_dir(&dedup_dir)
            .expect("the dedup directory")
            .filter_map(|entry| entry.ok())
            .filter(|entry| paths::parse_run_file_name(&entry.file_name().to_string_lossy()).is_some())
            .collect();
        assert!(!runs.is_empty(), "close wrote no dedup run");
        let run = std::fs::read(runs[0].path()).expect("a dedup run");
        journal_records(&[&[0u8, 1][..], &cursors].concat());
        journal_records(&[&[1u8, 1][..], &producers].concat());
        journal_records(&[6u8, 0]);
        journal_records(&[18u8, 0]);
        dedup_run(&[&[0u8][..], &run].concat());
    }
}
