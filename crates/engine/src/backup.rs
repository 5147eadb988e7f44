//! Online backup of a running log and offline restore (FORMAT.md, "Backup").
//!
//! [`Log::backup`](crate::Log::backup) writes a consistent snapshot of every
//! topic into a new directory while the log keeps taking appends; [`restore`]
//! turns such a directory back into a data directory. A backup has the layout of
//! a data directory plus a `MANIFEST` listing every file with its size and
//! CRC-32C, the per-partition high watermarks and the moment.
//!
//! "One moment" is this order, each step after the previous one:
//! 1. webhook endpoints, then every topic's meta and cursors, then the consumer
//!    groups, each written as a fresh compacted journal of its durable contents;
//! 2. the moment (`moment_ms`), then every partition pinned under its lock (no
//!    I/O there): high watermark, segments with their published sizes, and a
//!    checkpoint of exactly that state;
//! 3. every topic's producer registry, then the tokens.
//!
//! So no cursor or group floor points past a restored high watermark (they
//! never point past the high watermark of their time, which only grows), every
//! event acknowledged before the backup started is in it, and no event carries
//! a producer epoch newer than the restored registry.
//!
//! Invariant: a backup without a `MANIFEST` is incomplete; the manifest is
//! written last (temporary file, fdatasync, rename, directory fsync), after
//! every file and directory it lists is durable.
//! Invariant: nothing in the live data directory is written; sealed segments
//! (never modified, only unlinked) and their indexes are hard-linked, the
//! unsealed segments copied up to their pinned published size.
//!
//! Dedup runs are not backed up: restore's open rebuilds the idempotency index
//! by replaying the dedup window of the log (so ids of events that retention
//! deleted while still in the window are forgotten). The partition's own
//! checkpoint is not copied either: the backup's checkpoint is made from the
//! pinned state, so it covers exactly the backed-up offsets.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::event::{Offset, PartitionId};
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::format::{self, DecodeError};
use crate::group::GroupStore;
use crate::io::{self, OpenMode, StdStorage, Storage, StorageFile};
use crate::partition::{PartitionPin, PinnedSegment};
use crate::paths;
use crate::token::TokenStore;
use crate::topic::Topic;
use crate::webhook::WebhookStore;

/// The manifest's first word.
pub const MANIFEST_MAGIC: &str = "STELE-BACKUP";
/// The manifest version written, and the only one read.
pub const MANIFEST_VERSION: u16 = 1;
/// The largest manifest read.
pub const MANIFEST_SIZE_MAX: u64 = 256 << 20;
/// Bytes copied at a time.
const COPY_CHUNK_SIZE: usize = 1 << 20;

/// How a file came into a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSource {
    /// Copied (or written) into the backup.
    Copied,
    /// Hard-linked from the live data directory.
    Linked,
    /// Hard-linked (or, across file systems, copied) from the backup named
    /// by `based_on`, without reading the live log.
    Reused,
}

impl FileSource {
    fn word(self) -> &'static str {
        match self {
            FileSource::Copied => "copied",
            FileSource::Linked => "linked",
            FileSource::Reused => "reused",
        }
    }

    fn parse(word: &str) -> Option<FileSource> {
        match word {
            "copied" => Some(FileSource::Copied),
            "linked" => Some(FileSource::Linked),
            "reused" => Some(FileSource::Reused),
            _ => None,
        }
    }
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Relative to the backup's root, components joined with `/`.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// CRC-32C of the whole file.
    pub crc: u32,
    /// How it came into the backup.
    pub source: FileSource,
}

/// One partition of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPartition {
    /// Its topic.
    pub topic: String,
    /// The partition.
    pub partition: PartitionId,
    /// The oldest offset in the backup.
    pub earliest: Offset,
    /// One past the newest offset in the backup.
    pub high_watermark: Offset,
}

/// The `MANIFEST` of a backup (FORMAT.md, "Backup").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The version of Stele that wrote it.
    pub stele_version: String,
    /// The moment of the backup, Unix ms (see the module docs).
    pub moment_ms: i64,
    /// The backup an incremental backup reused files from.
    pub based_on: Option<String>,
    /// The format version of each file kind, by name.
    pub formats: Vec<(String, u16)>,
    /// Every partition, by topic then partition.
    pub partitions: Vec<ManifestPartition>,
    /// Every file but the manifest.
    pub files: Vec<ManifestFile>,
}

/// The format versions this build writes, by the manifest's names.
fn current_formats() -> Vec<(String, u16)> {
    [
        ("segment", format::segment::SEGMENT_VERSION),
        ("segment-index", format::index::INDEX_VERSION),
        ("checkpoint", format::checkpoint::CHECKPOINT_VERSION),
        ("topic-meta", format::topic_meta::TOPIC_META_VERSION),
        ("journal", format::journal::JOURNAL_VERSION),
    ]
    .into_iter()
    .map(|(name, version)| (name.to_string(), version))
    .collect()
}

/// Whether this build reads version `version` of file kind `name`.
fn format_supported(name: &str, version: u16) -> bool {
    let supported: &[u16] = match name {
        "segment" => format::segment::SEGMENT_VERSIONS_SUPPORTED,
        "segment-index" => format::index::INDEX_VERSIONS_SUPPORTED,
        "checkpoint" => format::checkpoint::CHECKPOINT_VERSIONS_SUPPORTED,
        "topic-meta" => format::topic_meta::TOPIC_META_VERSIONS_SUPPORTED,
        "journal" => format::journal::JOURNAL_VERSIONS_SUPPORTED,
        _ => &[],
    };
    supported.contains(&version)
}

/// Whether `path` is a relative path of normal components in a manifest's
/// spelling: no empty, `.` or `..` component, no whitespace or control character.
fn is_backup_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
}

impl Manifest {
    /// The manifest's bytes: text lines, the last one `end` and the CRC-32C of
    /// every byte before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut text = format!("{MANIFEST_MAGIC} {MANIFEST_VERSION}\n");
        text.push_str(&format!("stele-version {}\n", self.stele_version));
        text.push_str(&format!("moment-ms {}\n", self.moment_ms));
        if let Some(based_on) = &self.based_on {
            text.push_str(&format!("based-on {based_on}\n"));
        }
        for (name, version) in &self.formats {
            text.push_str(&format!("format {name} {version}\n"));
        }
        for partition in &self.partitions {
            text.push_str(&format!(
                "partition {} {} {} {}\n",
                partition.topic, partition.partition.0, partition.earliest.0, partition.high_watermark.0
            ));
        }
        for file in &self.files {
            text.push_str(&format!(
                "file {} {:08x} {} {}\n",
                file.size,
                file.crc,
                file.source.word(),
                file.path
            ));
        }
        let crc = format::crc(text.as_bytes());
        text.push_str(&format!("end {crc:08x}\n"));
        text.into_bytes()
    }

    /// Decodes a manifest.
    ///
    /// # Errors
    /// [`DecodeError`] for anything but a whole manifest of version 1: a bad
    /// first line ([`DecodeError::BadMagic`]), another version, a missing or
    /// wrong `end` CRC ([`DecodeError::CrcMismatch`]), an unknown or malformed
    /// line.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Manifest, DecodeError> {
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid("manifest is not UTF-8"))?;
        let body_end = text
            .trim_end_matches('\n')
            .rfind('\n')
            .map(|index| index + 1)
            .ok_or(DecodeError::Invalid("manifest has no end line"))?;
        let end_line = text[body_end..]
            .strip_suffix('\n')
            .ok_or(DecodeError::Invalid("manifest does not end with a newline"))?;
        let stored = end_line
            .strip_prefix("end ")
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .ok_or(DecodeError::Invalid("manifest has no end line"))?;
        let body = &text[..body_end];
        let actual = format::crc(body.as_bytes());
        if stored != actual {
            return Err(DecodeError::CrcMismatch {
                expected: stored,
                actual,
            });
        }
        let mut lines = body.lines();
        let first = lines.next().ok_or(DecodeError::BadMagic)?;
        let version = first
            .strip_prefix(MANIFEST_MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or(DecodeError::BadMagic)?;
        let version: u16 = version.parse().map_err(|_| DecodeError::BadMagic)?;
        if version != MANIFEST_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let mut manifest = Manifest {
            stele_version: String::new(),
            moment_ms: 0,
            based_on: None,
            formats: Vec::new(),
            partitions: Vec::new(),
            files: Vec::new(),
        };
        let (mut has_version, mut has_moment) = (false, false);
        for line in lines {
            let (word, rest) = line
                .split_once(' ')
                .ok_or(DecodeError::Invalid("manifest line without fields"))?;
            match word {
                "stele-version" => {
                    manifest.stele_version = rest.to_string();
                    has_version = true;
                }
                "moment-ms" => {
                    manifest.moment_ms = rest
                        .parse()
                        .map_err(|_| DecodeError::Invalid("manifest moment-ms"))?;
                    has_moment = true;
                }
                "based-on" => manifest.based_on = Some(rest.to_string()),
                "format" => {
                    let (name, version) = rest
                        .split_once(' ')
                        .ok_or(DecodeError::Invalid("manifest format line"))?;
                    let version = version
                        .parse()
                        .map_err(|_| DecodeError::Invalid("manifest format version"))?;
                    manifest.formats.push((name.to_string(), version));
                }
                "partition" => {
                    let fields: Vec<&str> = rest.split(' ').collect();
                    let [topic, partition, earliest, high_watermark] = fields[..] else {
                        return Err(DecodeError::Invalid("manifest partition line"));
                    };
                    let number = |field: &str| {
                        field
                            .parse::<u64>()
                            .map_err(|_| DecodeError::Invalid("manifest partition line"))
                    };
                    let partition = u32::try_from(number(partition)?)
                        .map_err(|_| DecodeError::Invalid("manifest partition line"))?;
                    let (earliest, high_watermark) = (number(earliest)?, number(high_watermark)?);
                    if crate::validate_topic_name(topic).is_err() || earliest > high_watermark {
                        return Err(DecodeError::Invalid("manifest partition line"));
                    }
                    manifest.partitions.push(ManifestPartition {
                        topic: topic.to_string(),
                        partition: PartitionId(partition),
                        earliest: Offset(earliest),
                        high_watermark: Offset(high_watermark),
                    });
                }
                "file" => {
                    let mut fields = rest.splitn(4, ' ');
                    let (Some(size), Some(crc), Some(source), Some(path)) =
                        (fields.next(), fields.next(), fields.next(), fields.next())
                    else {
                        return Err(DecodeError::Invalid("manifest file line"));
                    };
                    let size = size
                        .parse()
                        .map_err(|_| DecodeError::Invalid("manifest file size"))?;
                    let crc = u32::from_str_radix(crc, 16)
                        .map_err(|_| DecodeError::Invalid("manifest file crc"))?;
                    let source =
                        FileSource::parse(source).ok_or(DecodeError::Invalid("manifest file source"))?;
                    if !is_backup_path(path) || path == paths::BACKUP_MANIFEST_FILE {
                        return Err(DecodeError::Invalid("manifest file path"));
                    }
                    manifest.files.push(ManifestFile {
                        path: path.to_string(),
                        size,
                        crc,
                        source,
                    });
                }
                _ => return Err(DecodeError::Invalid("unknown manifest line")),
            }
        }
        if !(has_version && has_moment) {
            return Err(DecodeError::Invalid("manifest lacks stele-version or moment-ms"));
        }
        Ok(manifest)
    }

    /// Events in the backup: the sum of each partition's high watermark minus
    /// its earliest offset.
    pub fn events_count(&self) -> u64 {
        self.partitions
            .iter()
            .map(|partition| partition.high_watermark.0 - partition.earliest.0)
            .sum()
    }

    /// Distinct topics.
    pub fn topics_count(&self) -> usize {
        self.partitions
            .iter()
            .map(|partition| partition.topic.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// The file at `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|file| file.path == path)
    }
}

/// Reads and decodes the manifest of the backup in `dir`.
///
/// # Errors
/// [`Error::Inconsistent`] when there is no manifest (not a backup, or an
/// unfinished one); [`Error::Corruption`] for a damaged one; I/O errors.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = paths::backup_manifest(dir);
    let bytes = match io::read_file(&StdStorage, &path, MANIFEST_SIZE_MAX) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Inconsistent {
                path,
                reason: "no MANIFEST: not a backup, or an unfinished one".to_string(),
            });
        }
        Err(error) => return Err(Error::io("read backup manifest", &path, error)),
    };
    let manifest = Manifest::decode(&bytes).map_err(|reason| Error::corruption(&path, 0, reason))?;
    for (name, version) in &manifest.formats {
        if !format_supported(name, *version) {
            return Err(Error::corruption(
                &path,
                0,
                DecodeError::UnsupportedVersion { found: *version },
            ));
        }
    }
    Ok(manifest)
}

/// Bytes done and bytes in all, as a copy goes.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// What [`Log::backup`](crate::Log::backup) backs up besides the log, and how.
#[derive(Default, Clone, Copy)]
pub struct BackupOptions<'a> {
    /// A complete earlier backup to reuse unchanged sealed segments from.
    pub incremental_from: Option<&'a Path>,
    /// The server's webhook endpoints (`webhooks.journal`), when it has them.
    pub webhooks: Option<&'a WebhookStore>,
    /// The server's tokens (`tokens.journal`).
    pub tokens: Option<&'a TokenStore>,
    /// The server's consumer groups (`groups.journal`).
    pub groups: Option<&'a GroupStore>,
    /// Called with (bytes done, bytes in all) as segments are copied or linked.
    pub progress: Option<Progress<'a>>,
}

impl std::fmt::Debug for BackupOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("incremental_from", &self.incremental_from)
            .finish_non_exhaustive()
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Files copied or written, and their bytes.
    pub files_copied_count: u64,
    /// Bytes of the copied files.
    pub bytes_copied: u64,
    /// Files hard-linked (from the log or from the earlier backup).
    pub files_linked_count: u64,
    /// Bytes of the linked files.
    pub bytes_linked: u64,
    /// Files reused from the earlier backup (linked, or copied across file systems).
    pub files_reused_count: u64,
}

/// Checks a destination: absolute, UTF-8 without control characters, and not
/// an existing non-empty directory or a file; creates it.
fn prepare_destination(dir: &Path, what: &str) -> Result<()> {
    if !dir.is_absolute() {
        return Err(Error::InvalidArgument(format!(
            "the {what} must be an absolute path"
        )));
    }
    match dir.to_str() {
        Some(text) if !text.chars().any(char::is_control) => {}
        _ => {
            return Err(Error::InvalidArgument(format!(
                "the {what} must be UTF-8 without control characters"
            )));
        }
    }
    if !is_empty_or_absent(dir)? {
        return Err(Error::DestinationNotEmpty {
            path: dir.to_path_buf(),
        });
    }
    StdStorage
        .create_dir_all(dir)
        .map_err(|error| Error::io("create destination", dir, error))
}

/// Whether `path` (which may not exist yet) is `root` or below it, comparing the
/// canonical form of the deepest existing ancestor of each.
fn is_within(path: &Path, root: &Path) -> bool {
    fn canonical(path: &Path) -> Option<PathBuf> {
        let mut missing = Vec::new();
        let mut existing = path;
        // Bounded by the path's components.
        loop {
            if let Ok(found) = existing.canonicalize() {
                return Some(
                    missing
                        .iter()
                        .rev()
                        .fold(found, |path: PathBuf, part| path.join(part)),
                );
            }
            missing.push(existing.file_name()?.to_owned());
            existing = existing.parent()?;
        }
    }
    match (canonical(path), canonical(root)) {
        (Some(path), Some(root)) => path.starts_with(root),
        _ => false,
    }
}

/// Whether `dir` does not exist or is an empty directory (a file is neither).
fn is_empty_or_absent(dir: &Path) -> Result<bool> {
    if !StdStorage.exists(dir) {
        return Ok(true);
    }
    match StdStorage.read_dir(dir) {
        Ok(names) => Ok(names.is_empty()),
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(error) => Err(Error::io("read destination", dir, error)),
    }
}

/// Accumulates the manifest's file list and the report's counts.
struct Writer<'a> {
    root: PathBuf,
    files: Vec<ManifestFile>,
    report: Counts,
    directories: BTreeSet<PathBuf>,
    progress: Option<Progress<'a>>,
    bytes_done: u64,
    bytes_total: u64,
}

#[derive(Default)]
struct Counts {
    files_copied_count: u64,
    bytes_copied: u64,
    files_linked_count: u64,
    bytes_linked: u64,
    files_reused_count: u64,
}

impl Writer<'_> {
    fn absolute(&self, relative: &str) -> PathBuf {
        relative
            .split('/')
            .fold(self.root.clone(), |path, part| path.join(part))
    }

    fn create_dir(&mut self, relative: &str) -> Result<PathBuf> {
        let path = self.absolute(relative);
        StdStorage
            .create_dir_all(&path)
            .map_err(|error| Error::io("create backup directory", &path, error))?;
        self.directories.insert(path.clone());
        Ok(path)
    }

    fn record(&mut self, path: String, size: u64, crc: u32, source: FileSource) {
        match source {
            FileSource::Copied => {
                self.report.files_copied_count += 1;
                self.report.bytes_copied += size;
            }
            FileSource::Linked => {
                self.report.files_linked_count += 1;
                self.report.bytes_linked += size;
            }
            FileSource::Reused => {
                self.report.files_reused_count += 1;
                self.report.files_linked_count += 1;
                self.report.bytes_linked += size;
            }
        }
        self.files.push(ManifestFile {
            path,
            size,
            crc,
            source,
        });
    }

    fn advance(&mut self, bytes: u64) {
        self.bytes_done += bytes;
        if let Some(progress) = self.progress {
            progress(self.bytes_done, self.bytes_total);
        }
    }

    /// Writes a small file whole (durably) and lists it.
    fn write_small(&mut self, relative: String, bytes: &[u8]) -> Result<()> {
        let path = self.absolute(&relative);
        io::write_file_atomic(&StdStorage, &path, bytes)
            .map_err(|error| Error::io("write backup file", &path, error))?;
        self.record(
            relative,
            bytes.len() as u64,
            format::crc(bytes),
            FileSource::Copied,
        );
        Ok(())
    }

    /// Lists a journal snapshot already written at `relative`.
    fn written(&mut self, relative: String, bytes: &[u8]) {
        self.record(
            relative,
            bytes.len() as u64,
            format::crc(bytes),
            FileSource::Copied,
        );
    }

    fn write_journal(
        &mut self,
        relative: String,
        snapshot: impl FnOnce(&dyn Storage, &Path) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let path = self.absolute(&relative);
        let bytes = snapshot(&StdStorage, &path)?;
        self.written(relative, &bytes);
        Ok(())
    }
}

/// CRC-32C and length of the file at `path`, read in chunks.
fn checksum_file(path: &Path) -> Result<(u64, u32)> {
    let file = StdStorage
        .open(path, OpenMode::Read)
        .map_err(|error| Error::io("open backup file", path, error))?;
    checksum_open(&*file, path)
}

fn checksum_open(file: &dyn StorageFile, path: &Path) -> Result<(u64, u32)> {
    let mut buffer = vec![0u8; COPY_CHUNK_SIZE];
    let (mut position, mut crc) = (0u64, 0u32);
    // Bounded: each pass reads at least one byte, or ends at the file's end.
    loop {
        let read = file
            .read_at_most(&mut buffer, position)
            .map_err(|error| Error::io("read backup file", path, error))?;
        if read == 0 {
            return Ok((position, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        position += read as u64;
    }
}

/// Copies `bytes` (in chunks, `progress` after each) into a new file at `to`,
/// fdatasynced. Returns the CRC-32C.
fn copy_bytes(bytes: &[u8], to: &Path, mut progress: impl FnMut(u64)) -> Result<u32> {
    let file = StdStorage
        .open(to, OpenMode::CreateTruncate)
        .map_err(|error| Error::io("create backup file", to, error))?;
    let mut crc = 0u32;
    for (index, chunk) in bytes.chunks(COPY_CHUNK_SIZE).enumerate() {
        file.write_at(chunk, (index * COPY_CHUNK_SIZE) as u64)
            .map_err(|error| Error::io("write backup file", to, error))?;
        crc = crc32c::crc32c_append(crc, chunk);
        progress(chunk.len() as u64);
    }
    file.sync_data()
        .map_err(|error| Error::io("sync backup file", to, error))?;
    Ok(crc)
}

/// Copies the file at `from` to a new file at `to`, fdatasynced, checking it
/// holds `size` bytes. Returns the CRC-32C.
fn copy_file(from: &Path, to: &Path, size: u64) -> Result<u32> {
    let source = StdStorage
        .open(from, OpenMode::Read)
        .map_err(|error| Error::io("open file to copy", from, error))?;
    let target = StdStorage
        .open(to, OpenMode::CreateTruncate)
        .map_err(|error| Error::io("create copy", to, error))?;
    let mut buffer = vec![0u8; COPY_CHUNK_SIZE];
    let (mut position, mut crc) = (0u64, 0u32);
    // Bounded by `size`.
    while position < size {
        let want = (size - position).min(COPY_CHUNK_SIZE as u64) as usize;
        source
            .read_at(&mut buffer[..want], position)
            .map_err(|error| Error::io("read file to copy", from, error))?;
        target
            .write_at(&buffer[..want], position)
            .map_err(|error| Error::io("write copy", to, error))?;
        crc = crc32c::crc32c_append(crc, &buffer[..want]);
        position += want as u64;
    }
    target
        .sync_data()
        .map_err(|error| Error::io("sync copy", to, error))?;
    Ok(crc)
}

/// The backup in `dir` of the log whose topics are `topics`, at the clock `now_ms`.
pub(crate) fn run(
    topics: Vec<Topic>,
    now_ms: &dyn Fn() -> i64,
    data: &Path,
    dir: &Path,
    options: BackupOptions<'_>,
) -> Result<BackupReport> {
    if dir.is_absolute() && is_within(dir, data) {
        // Open would take a backup under `topics/` for a topic.
        return Err(Error::InvalidArgument(
            "the backup destination is inside the data directory".to_string(),
        ));
    }
    let previous = match options.incremental_from {
        Some(previous) => {
            if !previous.is_absolute() {
                return Err(Error::InvalidArgument(
                    "the backup to continue from must be an absolute path".to_string(),
                ));
            }
            Some((previous.to_path_buf(), read_manifest(previous)?))
        }
        None => None,
    };
    // A quarantined partition's key index is not rebuilt: its pin would carry
    // a checkpoint without keys, which a restore would trust. Refused before
    // anything is written; back up again after `stele repair`.
    for topic in &topics {
        if let Some((partition, quarantine)) = topic.quarantines().into_iter().next() {
            return Err(quarantine.error(partition));
        }
    }
    prepare_destination(dir, "backup destination")?;
    let mut writer = Writer {
        root: dir.to_path_buf(),
        files: Vec::new(),
        report: Counts::default(),
        directories: BTreeSet::from([dir.to_path_buf()]),
        progress: options.progress,
        bytes_done: 0,
        bytes_total: 0,
    };

    // 1. Webhooks, topic metas and cursors, groups: before the partitions.
    if let Some(webhooks) = options.webhooks {
        writer.write_journal(paths::WEBHOOKS_FILE.to_string(), |storage, path| {
            webhooks.write_snapshot(storage, path)
        })?;
    }
    writer.create_dir(paths::TOPICS_DIR)?;
    for topic in &topics {
        let topic_relative = format!("{}/{}", paths::TOPICS_DIR, topic.name());
        writer.create_dir(&topic_relative)?;
        let meta = paths::topic_meta(topic.dir());
        let bytes = io::read_file(&StdStorage, &meta, 4096)
            .map_err(|error| Error::io("read topic meta", &meta, error))?;
        writer.write_small(format!("{topic_relative}/{}", paths::TOPIC_META_FILE), &bytes)?;
        writer.write_journal(
            format!("{topic_relative}/{}", paths::CURSORS_FILE),
            |storage, path| topic.snapshot_cursors(storage, path),
        )?;
        writer.write_journal(
            format!("{topic_relative}/{}", paths::TOPIC_CHANGES_FILE),
            |storage, path| topic.snapshot_changes(storage, path),
        )?;
    }
    if let Some(groups) = options.groups {
        writer.write_journal(paths::GROUPS_FILE.to_string(), |storage, path| {
            groups.write_snapshot(storage, path)
        })?;
    }

    // 2. The moment, then every partition pinned.
    let moment_ms = now_ms();
    let pins: Vec<(String, PartitionPin)> = topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions()
                .iter()
                .map(|partition| (topic.name().to_string(), partition.pin()))
                .collect::<Vec<_>>()
        })
        .collect();

    // 3. Producers and tokens: after the partitions.
    for topic in &topics {
        let relative = format!("{}/{}/{}", paths::TOPICS_DIR, topic.name(), paths::PRODUCERS_FILE);
        writer.write_journal(relative, |storage, path| topic.snapshot_producers(storage, path))?;
    }
    if let Some(tokens) = options.tokens {
        writer.write_journal(paths::TOKENS_FILE.to_string(), |storage, path| {
            tokens.write_snapshot(storage, path)
        })?;
    }

    // The segments, without any lock.
    writer.bytes_total = pins
        .iter()
        .flat_map(|(_, pin)| pin.segments.iter())
        .filter(|pinned| pinned.created)
        .map(|pinned| pinned.size)
        .sum();
    let mut partitions = Vec::with_capacity(pins.len());
    for (topic, pin) in &pins {
        let partition_relative = format!(
            "{}/{topic}/{}",
            paths::TOPICS_DIR,
            paths::partition_dir_name(pin.id.0)
        );
        writer.create_dir(&partition_relative)?;
        for pinned in &pin.segments {
            back_up_segment(
                &mut writer,
                &partition_relative,
                pin.id,
                pinned,
                previous.as_ref(),
            )?;
        }
        writer.write_small(
            format!("{partition_relative}/{}", paths::CHECKPOINT_FILE),
            &pin.checkpoint,
        )?;
        partitions.push(ManifestPartition {
            topic: topic.clone(),
            partition: pin.id,
            earliest: pin.earliest,
            high_watermark: pin.high_watermark,
        });
    }
    drop(pins);

    // Every directory entry durable, then the manifest.
    for directory in writer.directories.iter().rev() {
        StdStorage
            .sync_dir(directory)
            .map_err(|error| Error::io("sync backup directory", directory, error))?;
    }
    let manifest = Manifest {
        stele_version: env!("CARGO_PKG_VERSION").to_string(),
        moment_ms,
        based_on: previous
            .as_ref()
            .map(|(path, _)| path.to_string_lossy().into_owned()),
        formats: current_formats(),
        partitions,
        files: std::mem::take(&mut writer.files),
    };
    let manifest_path = paths::backup_manifest(dir);
    io::write_file_atomic(&StdStorage, &manifest_path, &manifest.encode())
        .map_err(|error| Error::io("write backup manifest", &manifest_path, error))?;
    let counts = writer.report;
    Ok(BackupReport {
        manifest,
        files_copied_count: counts.files_copied_count,
        bytes_copied: counts.bytes_copied,
        files_linked_count: counts.files_linked_count,
        bytes_linked: counts.bytes_linked,
        files_reused_count: counts.files_reused_count,
    })
}

/// Backs up one pinned segment (and, when sealed, its index).
fn back_up_segment(
    writer: &mut Writer<'_>,
    partition_relative: &str,
    partition: PartitionId,
    pinned: &PinnedSegment,
    previous: Option<&(PathBuf, Manifest)>,
) -> Result<()> {
    let segment = &pinned.segment;
    let name = paths::segment_file_name(segment.base_offset);
    let relative = format!("{partition_relative}/{name}");
    let target = writer.absolute(&relative);
    if !pinned.created {
        // A roll planned it and its writer has not created it yet: it holds no
        // record, but a checkpoint's sync floor may name it, so the backup
        // holds the file its writer would have created (the header alone).
        let header = format::segment::encode(&format::segment::SegmentHeader {
            partition,
            base_offset: segment.base_offset,
            created_ms: segment.created_ms,
        });
        let crc = copy_bytes(&header, &target, |_| {})?;
        writer.record(relative, header.len() as u64, crc, FileSource::Copied);
        return Ok(());
    }
    let index_name = paths::index_file_name(segment.base_offset);
    let index_relative = format!("{partition_relative}/{index_name}");
    let index_target = writer.absolute(&index_relative);
    if pinned.sealed {
        // The same sealed segment in the earlier backup: same name, size and
        // header (which holds the creation time, so a re-created topic's
        // segment never matches).
        let reusable = previous.and_then(|(root, manifest)| {
            let listed = manifest.file(&relative)?;
            let index = manifest.file(&index_relative)?;
            let header_len = SEGMENT_HEADER_LEN as u64;
            if listed.size != pinned.size || pinned.size < header_len {
                return None;
            }
            let from = relative
                .split('/')
                .fold(root.clone(), |path, part| path.join(part));
            let file = StdStorage.open(&from, OpenMode::Read).ok()?;
            let mut header = vec![0u8; SEGMENT_HEADER_LEN];
            file.read_at(&mut header, 0).ok()?;
            (header == segment.published_bytes(0, header_len)).then(|| {
                let index_from = index_relative
                    .split('/')
                    .fold(root.clone(), |path, part| path.join(part));
                (from, listed.clone(), index_from, index.clone())
            })
        });
        if let Some((from, listed, index_from, index)) = reusable {
            reuse(&from, &target, &listed)?;
            writer.record(relative, listed.size, listed.crc, FileSource::Reused);
            reuse(&index_from, &index_target, &index)?;
            writer.record(index_relative, index.size, index.crc, FileSource::Reused);
            writer.advance(pinned.size);
            return Ok(());
        }
        // A sealed file holds exactly its published bytes (sealing trims it);
        // anything else is copied, up to the published size.
        if io::hard_link(&segment.path, &target).is_ok() {
            let (size, crc) = checksum_file(&target)?;
            if size == pinned.size {
                writer.record(relative, size, crc, FileSource::Linked);
                writer.advance(pinned.size);
                back_up_index(writer, &segment.path, index_relative, &index_target)?;
                return Ok(());
            }
            let _ = StdStorage.remove_file(&target);
        }
    }
    let bytes = segment.published_bytes(0, pinned.size);
    let mut done = 0u64;
    let crc = copy_bytes(bytes, &target, |bytes| done += bytes)?;
    writer.record(relative, pinned.size, crc, FileSource::Copied);
    writer.advance(done);
    if pinned.sealed {
        back_up_index(writer, &segment.path, index_relative, &index_target)?;
    }
    Ok(())
}

/// Links (else copies) a sealed segment's `.idx`. An index that retention
/// removed meanwhile is left out: open rebuilds a missing index below the
/// checkpoint's sync floor from the segment.
fn back_up_index(
    writer: &mut Writer<'_>,
    segment_path: &Path,
    relative: String,
    target: &Path,
) -> Result<()> {
    let live = paths::index_of_segment(segment_path);
    if io::hard_link(&live, target).is_ok() {
        let (size, crc) = checksum_file(target)?;
        writer.record(relative, size, crc, FileSource::Linked);
        return Ok(());
    }
    match io::read_file(&StdStorage, &live, crate::segment::SEGMENT_MAP_SIZE_BYTES) {
        Ok(bytes) => writer.write_small(relative, &bytes),
        Err(_) => Ok(()),
    }
}

/// Links a file of the earlier backup into the new one, or copies it across
/// file systems; either way it must hold what the earlier manifest lists.
fn reuse(from: &Path, to: &Path, listed: &ManifestFile) -> Result<()> {
    if io::hard_link(from, to).is_ok() {
        return Ok(());
    }
    let crc = copy_file(from, to, listed.size)?;
    if crc != listed.crc {
        return Err(Error::corruption(
            from,
            0,
            DecodeError::CrcMismatch {
                expected: listed.crc,
                actual: crc,
            },
        ));
    }
    Ok(())
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// Files written into the data directory.
    pub files_count: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Rebuilds a data directory at `dir` from the backup at `source`, offline:
/// reads the manifest, checks every listed file's size and CRC-32C, then
/// copies them, fdatasyncs each and fsyncs every directory. `progress` is
/// called with (bytes done, bytes in all) over both passes.
///
/// # Errors
/// [`Error::InvalidArgument`] for a relative `dir`; [`Error::DestinationNotEmpty`]
/// when `dir` exists and is not empty; [`Error::Inconsistent`] without a
/// manifest; [`Error::Corruption`] naming the first file (or the manifest)
/// whose size or checksum is wrong, before anything is written; I/O errors.
pub fn restore(source: &Path, dir: &Path, progress: Option<Progress<'_>>) -> Result<RestoreReport> {
    let source =
        std::path::absolute(source).map_err(|error| Error::io("resolve backup path", source, error))?;
    let manifest = read_manifest(&source)?;
    if !dir.is_absolute() {
        return Err(Error::InvalidArgument(
            "the data directory must be an absolute path".to_string(),
        ));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) || dir.is_file() {
        return Err(Error::DestinationNotEmpty {
            path: dir.to_path_buf(),
        });
    }
    let locate = |root: &Path, relative: &str| -> PathBuf {
        relative
            .split('/')
            .fold(root.to_path_buf(), |path, part| path.join(part))
    };
    let total: u64 = 2 * manifest.files.iter().map(|file| file.size).sum::<u64>();
    let mut done = 0u64;
    let report = |done: u64| {
        if let Some(progress) = progress {
            progress(done, total);
        }
    };
    // Every checksum first: a damaged backup writes nothing.
    for file in &manifest.files {
        let path = locate(&source, &file.path);
        let (size, crc) = checksum_file(&path)?;
        if size != file.size {
            return Err(Error::corruption(
                &path,
                size.min(file.size),
                DecodeError::Truncated {
                    needed: file.size,
                    available: size,
                },
            ));
        }
        if crc != file.crc {
            return Err(Error::corruption(
                &path,
                0,
                DecodeError::CrcMismatch {
                    expected: file.crc,
                    actual: crc,
                },
            ));
        }
        done += size;
        report(done);
    }
    prepare_destination(dir, "data directory")?;
    let mut directories = BTreeSet::from([dir.to_path_buf()]);
    directories.insert(paths::topics_dir(dir));
    StdStorage
        .create_dir_all(&paths::topics_dir(dir))
        .map_err(|error| Error::io("create data directory", dir, error))?;
    let mut bytes = 0u64;
    for file in &manifest.files {
        let from = locate(&source, &file.path);
        let to = locate(dir, &file.path);
        let parent = to
            .parent()
            .expect("a listed file is below the directory")
            .to_path_buf();
        if directories.insert(parent.clone()) {
            StdStorage
                .create_dir_all(&parent)
                .map_err(|error| Error::io("create data directory", &parent, error))?;
        }
        let crc = copy_file(&from, &to, file.size)?;
        if crc != file.crc {
            // The backup changed between the check and the copy.
            return Err(Error::corruption(
                &from,
                0,
                DecodeError::CrcMismatch {
                    expected: file.crc,
                    actual: crc,
                },
            ));
        }
        bytes += file.size;
        done += file.size;
        report(done);
    }
    for partition in &manifest.partitions {
        let path = paths::partition_dir(
            &paths::topic_dir(&paths::topics_dir(dir), &partition.topic),
            partition.partition.0,
        );
        if directories.insert(path.clone()) {
            StdStorage
                .create_dir_all(&path)
                .map_err(|error| Error::io("create data directory", &path, error))?;
        }
    }
    for directory in directories.iter().rev() {
        StdStorage
            .sync_dir(directory)
            .map_err(|error| Error::io("sync data directory", directory, error))?;
    }
    if let Some(parent) = dir.parent() {
        StdStorage
            .sync_dir(parent)
            .map_err(|error| Error::io("sync data directory", parent, error))?;
    }
    Ok(RestoreReport {
        files_count: manifest.files.len() as u64,
        bytes,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::{Event, ExpectedSequence, Log, LogOptions, TopicOptions};

    fn sample() -> Manifest {
        Manifest {
            stele_version: "0.1.0".to_string(),
            moment_ms: 1_764_640_000_123,
            based_on: Some("/backups/monday".to_string()),
            formats: current_formats(),
            partitions: vec![ManifestPartition {
                topic: "orders.eu".to_string(),
                partition: PartitionId(3),
                earliest: Offset(10),
                high_watermark: Offset(250),
            }],
            files: vec![
                ManifestFile {
                    path: "topics/orders.eu/p00003/00000000000000000010.log".to_string(),
                    size: 4096,
                    crc: 0xdead_beef,
                    source: FileSource::Reused,
                },
                ManifestFile {
                    path: "groups.journal".to_string(),
                    size: 16,
                    crc: 7,
                    source: FileSource::Copied,
                },
            ],
        }
    }

    // Goal: the manifest decodes to what was encoded, and every kind of damage
    // is refused. Method: round trip, then flip each byte in turn, truncate, and
    // hand-craft bad lines with a correct end CRC.
    #[test]
    fn manifest_round_trips_and_refuses_damage() {
        let manifest = sample();
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(manifest.clone()));
        assert_eq!(manifest.events_count(), 240);
        assert_eq!(manifest.topics_count(), 1);
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x01;
            assert!(
                Manifest::decode(&damaged).is_err(),
                "a flipped bit at byte {index} was accepted"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..len]).is_err(),
                "a manifest cut at {len} was accepted"
            );
        }
        let sealed = |body: &str| {
            let crc = format::crc(body.as_bytes());
            format!("{body}end {crc:08x}\n").into_bytes()
        };
        let good = "STELE-BACKUP 1\nstele-version 0.1.0\nmoment-ms 5\n";
        assert!(Manifest::decode(&sealed(good)).is_ok());
        assert_eq!(
            Manifest::decode(&sealed("STELE-BACKUP 2\nstele-version 0.1.0\nmoment-ms 5\n")),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        for bad in [
            "file 1 00000000 copied ../escape",
            "file 1 00000000 copied /absolute",
            "file 1 00000000 copied a//b",
            "file 1 00000000 moved a",
            "file 1 00000000 copied MANIFEST",
            "partition orders 0 9 3",
            "partition bad/name 0 0 3",
            "surprise line",
        ] {
            assert!(
                Manifest::decode(&sealed(&format!("{good}{bad}\n"))).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    fn small_segments() -> TopicOptions {
        TopicOptions::default()
            .partitions(2)
            .segment_size_bytes_max(crate::limits::SEGMENT_SIZE_BYTES_MIN)
    }

    fn append_many(topic: &crate::Topic, from: u64, count: u64) {
        for index in from..from + count {
            let key = format!("key-{}", index % 7);
            topic
                .append(
                    key,
                    ExpectedSequence::Any,
                    vec![Event::new("e", format!("payload-{index:08}").into_bytes())],
                )
                .expect("append");
        }
    }

    // Goal: a backup taken while a writer appends restores to a directory that
    // opens with exactly a prefix of every partition up to the manifest's high
    // watermarks, holding everything acknowledged before the backup began, with
    // its cursors and producers. Method: a writer thread appends until told to
    // stop; back up mid-stream; restore; compare event by event with the live log.
    #[test]
    fn a_backup_under_appends_restores_a_prefix_of_every_partition() -> Result<()> {
        let root = tempfile::tempdir().expect("temporary directory");
        let log = Arc::new(Log::open(root.path().join("data"), LogOptions::default())?);
        let topic = log.create_topic("orders", small_segments())?;
        append_many(&topic, 0, 400);
        topic.commit_cursor("billing", &[(PartitionId(0), Offset(5))], false)?;
        let (producer, _) = topic.open_producer("ingest")?;
        let before: Vec<Offset> = (0..2)
            .map(|partition| topic.high_watermark(PartitionId(partition)))
            .collect::<Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let topic = topic.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut index = 400;
                while !stop.load(Ordering::Acquire) {
                    append_many(&topic, index, 1);
                    index += 1;
                }
            })
        };
        let dest = root.path().join("backup");
        let report = log.backup(&dest, BackupOptions::default())?;
        stop.store(true, Ordering::Release);
        writer.join().expect("writer");
        assert!(
            report.files_linked_count > 0,
            "sealed segments are hard-linked: {report:?}"
        );
        assert!(
            report.files_copied_count > 0,
            "the active segments are copied: {report:?}"
        );

        let restored = root.path().join("restored");
        restore(&dest, &restored, None)?;
        assert!(crate::verify::verify_dir(&restored).expect("verify").is_clean());
        let reopened = Log::open(&restored, LogOptions::default())?;
        let copy = reopened.topic("orders")?;
        for partition in &report.manifest.partitions {
            let id = partition.partition;
            assert!(partition.high_watermark >= before[id.0 as usize]);
            assert_eq!(copy.high_watermark(id)?, partition.high_watermark);
            let live = topic.read(id, Offset(0), usize::MAX, u64::MAX)?;
            let backed = copy.read(id, Offset(0), usize::MAX, u64::MAX)?;
            assert_eq!(backed.len() as u64, partition.high_watermark.0);
            assert_eq!(&live[..backed.len()], &backed[..]);
        }
        assert_eq!(copy.cursor("billing")?[0].committed, Some(Offset(5)));
        assert!(
            copy.producers()
                .iter()
                .any(|(name, id, _)| name == "ingest" && *id == producer)
        );
        // The restored log takes appends that continue every key's sequence.
        copy.append(
            "key-1",
            ExpectedSequence::Any,
            vec![Event::new("e", b"after".to_vec())],
        )?;
        Ok(())
    }

    // Goal: an incremental backup links the sealed segments the earlier one
    // holds instead of reading them again, and restores correctly. Method: two
    // backups around more appends; compare inode numbers and restore the second.
    #[test]
    fn an_incremental_backup_links_unchanged_sealed_segments() -> Result<()> {
        let root = tempfile::tempdir().expect("temporary directory");
        let log = Log::open(root.path().join("data"), LogOptions::default())?;
        let topic = log.create_topic("orders", small_segments())?;
        append_many(&topic, 0, 400);
        topic.enforce_retention()?;
        let first_dir = root.path().join("first");
        let first = log.backup(&first_dir, BackupOptions::default())?;
        append_many(&topic, 400, 400);
        let second_dir = root.path().join("second");
        let second = log.backup(
            &second_dir,
            BackupOptions {
                incremental_from: Some(&first_dir),
                ..BackupOptions::default()
            },
        )?;
        assert!(second.files_reused_count > 0, "{second:?}");
        assert_eq!(second.manifest.based_on.as_deref(), first_dir.to_str());
        let mut shared = 0;
        for file in second
            .manifest
            .files
            .iter()
            .filter(|file| file.source == FileSource::Reused)
        {
            let inode = |root: &Path| std::fs::metadata(root.join(&file.path)).map(|meta| meta.ino());
            assert_eq!(
                inode(&first_dir).expect("stat"),
                inode(&second_dir).expect("stat")
            );
            assert_eq!(
                first.manifest.file(&file.path).map(|listed| listed.crc),
                Some(file.crc)
            );
            shared += 1;
        }
        assert_eq!(shared, second.files_reused_count);
        let restored = root.path().join("restored");
        restore(&second_dir, &restored, None)?;
        let reopened = Log::open(&restored, LogOptions::default())?;
        for partition in &second.manifest.partitions {
            let live = topic.read(partition.partition, Offset(0), usize::MAX, u64::MAX)?;
            let backed =
                reopened
                    .topic("orders")?
                    .read(partition.partition, Offset(0), usize::MAX, u64::MAX)?;
            assert_eq!(live, backed);
        }
        Ok(())
    }

    // Goal: a partition whose early segments retention deleted restores from the
    // backup's own checkpoint (without one, open refuses such a log). Method:
    // retention by size, back up, restore, read from the earliest offset.
    #[test]
    fn a_backup_after_retention_restores_from_its_checkpoint() -> Result<()> {
        let root = tempfile::tempdir().expect("temporary directory");
        let log = Log::open(root.path().join("data"), LogOptions::default())?;
        let topic = log.create_topic("orders", small_segments().retention_bytes(Some(16 * 1024)))?;
        append_many(&topic, 0, 1000);
        assert!(topic.enforce_retention()? > 0, "retention deleted segments");
        let dest = root.path().join("backup");
        let report = log.backup(&dest, BackupOptions::default())?;
        assert!(
            report
                .manifest
                .partitions
                .iter()
                .all(|partition| partition.earliest > Offset(0))
        );
        let restored = root.path().join("restored");
        restore(&dest, &restored, None)?;
        let reopened = Log::open(&restored, LogOptions::default())?;
        let copy = reopened.topic("orders")?;
        for partition in &report.manifest.partitions {
            assert_eq!(copy.earliest(partition.partition)?, partition.earliest);
            let live = topic.read(partition.partition, partition.earliest, usize::MAX, u64::MAX)?;
            let backed = copy.read(partition.partition, partition.earliest, usize::MAX, u64::MAX)?;
            assert_eq!(live, backed);
        }
        // Key sequences continue where the live log's do.
        let live_next = topic.key_sequence(b"key-3")?;
        assert_eq!(copy.key_sequence(b"key-3")?, live_next);
        Ok(())
    }

    // Goal: restore checks every checksum before writing, and names the damaged
    // file. Method: flip one byte of a backed-up segment; restore must refuse
    // with Corruption naming that file and leave the target absent. Also a
    // destination that is not empty and an unfinished backup are refused.
    #[test]
    fn restore_refuses_a_damaged_backup_naming_the_file() -> Result<()> {
        let root = tempfile::tempdir().expect("temporary directory");
        let log = Log::open(root.path().join("data"), LogOptions::default())?;
        let topic = log.create_topic("orders", small_segments())?;
        append_many(&topic, 0, 200);
        let dest = root.path().join("backup");
        let report = log.backup(&dest, BackupOptions::default())?;
        let refused = log
            .backup(&dest, BackupOptions::default())
            .expect_err("non-empty destination");
        assert_eq!(refused.kind(), crate::ErrorKind::DestinationNotEmpty);
        let relative = log.backup(Path::new("relative/dir"), BackupOptions::default());
        assert_eq!(
            relative.map(|_| ()).map_err(|error| error.kind()),
            Err(crate::ErrorKind::InvalidArgument)
        );
        let inside = log.backup(
            &root.path().join("data/topics/new/backup"),
            BackupOptions::default(),
        );
        assert_eq!(
            inside.map(|_| ()).map_err(|error| error.kind()),
            Err(crate::ErrorKind::InvalidArgument)
        );
        assert!(
            !root.path().join("data/topics/new").exists(),
            "nothing was created in the data directory"
        );

        let victim = report
            .manifest
            .files
            .iter()
            .find(|file| file.path.ends_with(".log") && file.source == FileSource::Copied)
            .expect("a copied segment");
        let victim_path = dest.join(&victim.path);
        let mut bytes = std::fs::read(&victim_path).expect("read");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&victim_path, &bytes).expect("write");
        let target = root.path().join("restored");
        let error = restore(&dest, &target, None).expect_err("damaged backup");
        match &error {
            Error::Corruption { path, reason, .. } => {
                assert_eq!(path, &victim_path);
                assert!(matches!(reason, DecodeError::CrcMismatch { .. }), "{reason:?}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(!target.exists(), "nothing is written from a damaged backup");

        std::fs::remove_file(dest.join(paths::BACKUP_MANIFEST_FILE)).expect("remove manifest");
        let unfinished = restore(&dest, &target, None).expect_err("no manifest");
        assert_eq!(unfinished.kind(), crate::ErrorKind::Inconsistent);
        Ok(())
    }
}
