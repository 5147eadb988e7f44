//! Every file and directory name of a data directory, stated once (FORMAT.md,
//! "Directory layout").
//!
//! ```text
//! {data}/LOCK                                   lock_file
//! {data}/webhooks.journal                       webhooks_journal
//! {data}/tokens.journal                         tokens_journal
//! {data}/groups.journal                         groups_journal
//! {data}/topics/                                topics_dir
//! {data}/topics/{topic}/                        topic_dir
//! {data}/topics/{topic}/topic.meta              topic_meta
//! {data}/topics/{topic}/producers               producers_journal
//! {data}/topics/{topic}/cursors                 cursors_journal
//! {data}/topics/{topic}/p{index:05}/            partition_dir
//!     {base_offset:020}.log                     segment_file_name
//!     {base_offset:020}.idx                     index_file_name
//!     checkpoint                                checkpoint
//!     dedup/                                    dedup_dir
//!         {sequence:020}-{offset_start:020}.run run_file_name
//! {data}/topics/.creating-{topic}/              topic_creating_dir
//! {data}/topics/.deleting-{topic}/              topic_deleting_dir
//! ```
//!
//! Temporary names: a small whole file is written to [`atomic_temporary`] before
//! it is renamed over its target, a journal is compacted through
//! [`journal_temporary`], and a dedup run is written to [`run_temporary`].
//!
//! Invariant: a name that one of these functions builds, its parser (where there
//! is one) reads back to the same value, and no two kinds of file share a name.
//!
//! Pure string and path arithmetic: nothing here touches the file system.

use std::path::{Path, PathBuf};

use crate::event::Offset;

/// The lock file in the data directory (exclusive advisory lock, empty).
pub const LOCK_FILE: &str = "LOCK";
/// The tokens and certificate principals in the data directory (journal `STELETOK`).
pub const TOKENS_FILE: &str = "tokens.journal";
/// The consumer groups' definitions and progress in the data directory (journal
/// `STELEGRP`).
pub const GROUPS_FILE: &str = "groups.journal";
/// The directory of the topics in the data directory.
pub const TOPICS_DIR: &str = "topics";
/// The webhook endpoint definitions in the data directory (journal `STELEWHK`).
pub const WEBHOOKS_FILE: &str = "webhooks.journal";
/// A topic's options in its directory (envelope `STELETOP`).
pub const TOPIC_META_FILE: &str = "topic.meta";
/// A topic's producer journal in its directory (`STELEPRD`).
pub const PRODUCERS_FILE: &str = "producers";
/// A topic's cursor journal in its directory (`STELECUR`).
pub const CURSORS_FILE: &str = "cursors";
/// A topic's history of option changes in its directory (`STELECHG`).
pub const TOPIC_CHANGES_FILE: &str = "changes.journal";
/// A partition's checkpoint in its directory (envelope `STELECKP`).
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// A partition's directory of dedup runs.
pub const DEDUP_DIR: &str = "dedup";
/// The prefix of a directory entry under `topics/` that is not a topic: a
/// topic being created or deleted, removed at open.
pub const UNFINISHED_TOPIC_PREFIX: &str = ".";
/// Extension of a segment file.
pub const SEGMENT_EXTENSION: &str = "log";
/// Extension of a segment's index file.
pub const INDEX_EXTENSION: &str = "idx";
/// Suffix of a dedup run file.
pub const RUN_SUFFIX: &str = ".run";
/// Suffix of a temporary file: an atomic whole-file write's (which replaces the
/// target's extension) or a dedup run's being written (appended to its name).
pub const TEMPORARY_SUFFIX: &str = ".tmp";
/// Suffix of the temporary file of a journal compaction.
pub const COMPACT_SUFFIX: &str = ".compact";
/// A backup's manifest, written last (FORMAT.md, "Backup").
pub const BACKUP_MANIFEST_FILE: &str = "MANIFEST";

const CREATING_PREFIX: &str = ".creating-";
const DELETING_PREFIX: &str = ".deleting-";
const PARTITION_PREFIX: char = 'p';
const PARTITION_DIGITS: usize = 5;
const OFFSET_DIGITS: usize = 20;

/// `{backup}/MANIFEST`.
pub fn backup_manifest(backup: &Path) -> PathBuf {
    backup.join(BACKUP_MANIFEST_FILE)
}

/// `{data}/LOCK`.
pub fn lock_file(data: &Path) -> PathBuf {
    data.join(LOCK_FILE)
}

/// `{data}/webhooks.journal`.
pub fn webhooks_journal(data: &Path) -> PathBuf {
    data.join(WEBHOOKS_FILE)
}

/// `{data}/tokens.journal`.
pub fn tokens_journal(data: &Path) -> PathBuf {
    data.join(TOKENS_FILE)
}

/// `{data}/groups.journal`.
pub fn groups_journal(data: &Path) -> PathBuf {
    data.join(GROUPS_FILE)
}

/// `{data}/topics`.
pub fn topics_dir(data: &Path) -> PathBuf {
    data.join(TOPICS_DIR)
}

/// `{topics}/{topic}`, where `topics` is [`topics_dir`].
pub fn topic_dir(topics: &Path, topic: &str) -> PathBuf {
    topics.join(topic)
}

/// `{topics}/.creating-{topic}`: a topic being created.
pub fn topic_creating_dir(topics: &Path, topic: &str) -> PathBuf {
    topics.join(format!("{CREATING_PREFIX}{topic}"))
}

/// `{topics}/.deleting-{topic}`: a topic being deleted.
pub fn topic_deleting_dir(topics: &Path, topic: &str) -> PathBuf {
    topics.join(format!("{DELETING_PREFIX}{topic}"))
}

/// Whether an entry of `topics/` is a topic being created or deleted rather than
/// a topic (topic names never start with a dot).
pub fn is_unfinished_topic(entry: &str) -> bool {
    entry.starts_with(UNFINISHED_TOPIC_PREFIX)
}

/// `{topic}/topic.meta`.
pub fn topic_meta(topic: &Path) -> PathBuf {
    topic.join(TOPIC_META_FILE)
}

/// `{topic}/producers`.
pub fn producers_journal(topic: &Path) -> PathBuf {
    topic.join(PRODUCERS_FILE)
}

/// `{topic}/changes.journal`.
pub fn topic_changes_journal(topic: &Path) -> PathBuf {
    topic.join(TOPIC_CHANGES_FILE)
}

/// `{topic}/cursors`.
pub fn cursors_journal(topic: &Path) -> PathBuf {
    topic.join(CURSORS_FILE)
}

/// `p{index:05}`: a partition's directory name.
pub fn partition_dir_name(index: u32) -> String {
    format!("{PARTITION_PREFIX}{index:0width$}", width = PARTITION_DIGITS)
}

/// `{topic}/p{index:05}`.
pub fn partition_dir(topic: &Path, index: u32) -> PathBuf {
    topic.join(partition_dir_name(index))
}

/// The index of a partition directory name, `None` for any other name.
pub fn parse_partition_dir_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    if digits.len() != PARTITION_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `{base_offset:020}.log`.
pub fn segment_file_name(base_offset: Offset) -> String {
    format!(
        "{:0width$}.{SEGMENT_EXTENSION}",
        base_offset.0,
        width = OFFSET_DIGITS
    )
}

/// `{base_offset:020}.idx`.
pub fn index_file_name(base_offset: Offset) -> String {
    format!(
        "{:0width$}.{INDEX_EXTENSION}",
        base_offset.0,
        width = OFFSET_DIGITS
    )
}

/// The index file of the segment file at `segment`: the same name with `.idx`.
pub fn index_of_segment(segment: &Path) -> PathBuf {
    segment.with_extension(INDEX_EXTENSION)
}

fn parse_offset_stem(name: &str, extension: &str) -> Option<Offset> {
    let digits = name.strip_suffix(extension)?.strip_suffix('.')?;
    if digits.len() != OFFSET_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The base offset of a segment file name, `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<Offset> {
    parse_offset_stem(name, SEGMENT_EXTENSION)
}

/// The base offset of a segment index file name, `None` for any other name.
pub fn parse_index_file_name(name: &str) -> Option<Offset> {
    parse_offset_stem(name, INDEX_EXTENSION)
}

/// `{partition}/checkpoint`.
pub fn checkpoint(partition: &Path) -> PathBuf {
    partition.join(CHECKPOINT_FILE)
}

/// `{partition}/dedup`.
pub fn dedup_dir(partition: &Path) -> PathBuf {
    partition.join(DEDUP_DIR)
}

/// `{sequence:020}-{offset_start:020}.run`: a dedup run's name.
pub fn run_file_name(sequence: u64, offset_start: u64) -> String {
    format!(
        "{sequence:0width$}-{offset_start:0width$}{RUN_SUFFIX}",
        width = OFFSET_DIGITS
    )
}

/// `(sequence, offset_start)` of a dedup run file name, `None` for any other name.
pub fn parse_run_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(RUN_SUFFIX)?;
    let (sequence, offset_start) = stem.split_once('-')?;
    if sequence.len() != OFFSET_DIGITS || offset_start.len() != OFFSET_DIGITS {
        return None;
    }
    Some((sequence.parse().ok()?, offset_start.parse().ok()?))
}

/// `{dedup}/{run_file_name}.tmp`: a dedup run being written.
pub fn run_temporary(dedup: &Path, sequence: u64, offset_start: u64) -> PathBuf {
    dedup.join(format!(
        "{}{TEMPORARY_SUFFIX}",
        run_file_name(sequence, offset_start)
    ))
}

/// The temporary file of an atomic whole-file write of `path`: its extension
/// replaced by `.tmp` (`topic.meta` -> `topic.tmp`, `checkpoint` -> `checkpoint.tmp`).
pub fn atomic_temporary(path: &Path) -> PathBuf {
    path.with_extension(&TEMPORARY_SUFFIX[1..])
}

/// Whether a directory entry is a temporary file that open removes (an
/// interrupted atomic write, dedup run write or journal compaction).
pub fn is_temporary(name: &str) -> bool {
    name.ends_with(TEMPORARY_SUFFIX) || name.ends_with(COMPACT_SUFFIX)
}

/// `{journal}.compact`: the temporary file of a journal's compaction.
pub fn journal_temporary(journal: &Path) -> PathBuf {
    let mut temporary = journal.as_os_str().to_owned();
    temporary.push(COMPACT_SUFFIX);
    PathBuf::from(temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_to_what_built_them() {
        // Goal: every name with a parser roundtrips, and parsers refuse the other kinds.
        for base in [0, 1, 4096, u64::MAX] {
            let segment = segment_file_name(Offset(base));
            let index = index_file_name(Offset(base));
            assert_eq!(segment.len(), 24);
            assert_eq!(parse_segment_file_name(&segment), Some(Offset(base)));
            assert_eq!(parse_index_file_name(&index), Some(Offset(base)));
            assert_eq!(parse_segment_file_name(&index), None);
            assert_eq!(parse_index_file_name(&segment), None);
            assert_eq!(
                index_of_segment(&Path::new("p").join(&segment)),
                Path::new("p").join(&index)
            );
        }
        for index in [0, 7, 99_999] {
            assert_eq!(parse_partition_dir_name(&partition_dir_name(index)), Some(index));
        }
        assert_eq!(partition_dir_name(3), "p00003");
        for (sequence, offset_start) in [(0, 0), (12, 99), (u64::MAX, u64::MAX)] {
            let name = run_file_name(sequence, offset_start);
            assert_eq!(parse_run_file_name(&name), Some((sequence, offset_start)));
        }
        for bad in [
            "p1",
            "p000001",
            "px0001",
            "0.log",
            "00000000000000000001.log.tmp",
            "a-b.run",
        ] {
            assert_eq!(parse_partition_dir_name(bad), None, "{bad}");
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
            assert_eq!(parse_run_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn temporary_names_are_recognised_and_unfinished_topics_are_dotted() {
        let topics = topics_dir(Path::new("data"));
        for dir in [topic_creating_dir(&topics, "t"), topic_deleting_dir(&topics, "t")] {
            let name = dir.file_name().and_then(|name| name.to_str()).unwrap_or_default();
            assert!(is_unfinished_topic(name), "{name}");
        }
        assert!(!is_unfinished_topic("orders"));
        let run = run_temporary(Path::new("dedup"), 1, 2);
        assert!(is_temporary(&run.to_string_lossy()));
        assert_eq!(parse_run_file_name(&run.to_string_lossy()), None);
        assert_eq!(
            atomic_temporary(Path::new("t/topic.meta")),
            Path::new("t/topic.tmp")
        );
        assert_eq!(
            journal_temporary(Path::new("t/cursors")),
            Path::new("t/cursors.compact")
        );
        assert!(is_temporary("cursors.compact"));
        assert!(!is_temporary(CHECKPOINT_FILE));
    }
}
