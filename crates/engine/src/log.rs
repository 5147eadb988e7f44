//! `Log`: a data directory, its lock, and the set of topics.
//!
//! Layout: `LOCK`; `topics/{name}/topic.meta`, `producers`, `cursors`, and one
//! `p{index:05}/` directory per partition. A topic is created under a temporary
//! name and renamed into place, and deleted by renaming it away first, so that a
//! crash never leaves a half-created or half-deleted topic visible.
//!
//! Invariant: at most one process has a data directory open (an exclusive lock on
//! `LOCK`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::config::{LogOptions, TopicChange, TopicOptions};
use crate::error::{Error, Result};
use crate::format::topic_meta;
use crate::io::{self, OpenMode, StorageFile};
use crate::limits;
use crate::metrics::EngineMetrics;
use crate::paths;
use crate::topic::{Topic, TopicUpdate};

/// How often opening a large data directory says how far it got.
const RECOVERY_PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// An open data directory.
pub struct Log {
    dir: PathBuf,
    options: LogOptions,
    /// The locked `LOCK` file; released by `close`.
    lock: std::sync::Mutex<Option<Arc<dyn StorageFile>>>,
    topics: RwLock<BTreeMap<String, Topic>>,
    metrics: Arc<EngineMetrics>,
    /// Set when `close` starts: from then on a missing topic means the log
    /// closed, not that the topic was deleted.
    closed: std::sync::atomic::AtomicBool,
    /// Held by `create_topic` and for the whole of `delete_topic`, so that a
    /// topic re-created (an append's auto-creation) while its namesake is being
    /// deleted waits for the old directory to be gone.
    /// Lock order: `directory_change`, then `topics`.
    directory_change: std::sync::Mutex<()>,
    /// The threads that run every partition's background work. Declared
    /// last: it is dropped (its threads joined) after `drop` closed the topics.
    pool: crate::partition::pool::WorkerPool,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

/// Checks a topic name: 1 to `TOPIC_NAME_SIZE_MAX` bytes of ASCII letters, digits,
/// `.`, `_` and `-`, not starting with `.`.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong, [`Error::LimitExceeded`]
/// for a name above `TOPIC_NAME_SIZE_MAX`.
pub fn validate_topic_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::InvalidArgument("topic name is empty".to_string()));
    }
    if name.len() > limits::TOPIC_NAME_SIZE_MAX {
        return Err(Error::LimitExceeded {
            what: "topic name size",
            value: name.len() as u64,
            max: limits::TOPIC_NAME_SIZE_MAX as u64,
        });
    }
    // Such names are kept for topics being created or deleted.
    if paths::is_unfinished_topic(name) {
        return Err(Error::InvalidArgument(format!(
            "topic name must not start with {:?}",
            paths::UNFINISHED_TOPIC_PREFIX
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(Error::InvalidArgument(format!(
            "topic name {name:?} contains {bad:?}; allowed are ASCII letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

impl Log {
    /// Threads of the pool that runs every partition's background work.
    pub fn worker_threads(&self) -> usize {
        self.pool.handle().threads()
    }

    /// Opens (creating if needed) a data directory and every topic in it,
    /// recovering from a crash where needed.
    ///
    /// # Errors
    /// [`Error::Locked`] when another process has it open; [`Error::Corruption`]
    /// or [`Error::Inconsistent`] naming the file when a topic's meta file or a
    /// journal fails its checks; I/O errors. Damage inside a partition that
    /// recovery may not repair does not fail the open: that partition opens
    /// quarantined ([`Topic::quarantines`](crate::Topic::quarantines)).
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Log> {
        let dir = dir.as_ref().to_path_buf();
        let storage_handle = Arc::clone(&options.storage);
        let storage = &*storage_handle;
        let topics_dir = paths::topics_dir(&dir);
        storage
            .create_dir_all(&topics_dir)
            .map_err(|error| Error::io("create data directory", &topics_dir, error))?;
        let lock_path = paths::lock_file(&dir);
        let lock = storage
            .open(&lock_path, OpenMode::CreateTruncate)
            .map_err(|error| Error::io("open lock file", &lock_path, error))?;
        if !lock
            .try_lock()
            .map_err(|error| Error::io("lock data directory", &lock_path, error))?
        {
            return Err(Error::Locked { path: dir });
        }
        let pool = crate::partition::pool::WorkerPool::start(options.worker_threads)?;
        let log = Log {
            pool,
            dir,
            options,
            lock: std::sync::Mutex::new(Some(lock)),
            topics: RwLock::new(BTreeMap::new()),
            metrics: Arc::new(EngineMetrics::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            directory_change: std::sync::Mutex::new(()),
        };
        let names = storage
            .read_dir(&topics_dir)
            .map_err(|error| Error::io("list topics", &topics_dir, error))?;
        let started = std::time::Instant::now();
        let mut progress_logged = started;
        let topics_count = names.len();
        for (opened, name) in names.into_iter().enumerate() {
            if progress_logged.elapsed() >= RECOVERY_PROGRESS_INTERVAL {
                progress_logged = std::time::Instant::now();
                tracing::info!(
                    dir = %log.dir.display(),
                    topics_opened = opened,
                    topics = topics_count,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "recovery in progress"
                );
            }
            let path = paths::topic_dir(&topics_dir, &name);
            if paths::is_unfinished_topic(&name) {
                // A topic half-created or half-deleted when the process stopped.
                storage
                    .remove_dir_all(&path)
                    .map_err(|error| Error::io("remove unfinished topic", &path, error))?;
                continue;
            }
            let meta_path = paths::topic_meta(&path);
            let bytes = io::read_file(storage, &meta_path, 4096)
                .map_err(|error| Error::io("read topic meta", &meta_path, error))?;
            let meta =
                topic_meta::decode_meta(&bytes).map_err(|reason| Error::corruption(&meta_path, 0, reason))?;
            if meta.name != name {
                return Err(Error::Inconsistent {
                    path: meta_path,
                    reason: format!("meta names topic {:?}", meta.name),
                });
            }
            let topic = Topic::open(path, meta, &log.options, &log.metrics, log.pool.handle())?;
            log.topics_mut().insert(name, topic);
        }
        log.log_recovery(started.elapsed());
        Ok(log)
    }

    /// One line on what opening found: sizes, what recovery replayed and cut,
    /// and how long it took.
    fn log_recovery(&self, elapsed: std::time::Duration) {
        let topics = self.topics_read();
        let (mut partitions, mut replayed, mut bytes_cut, mut records_cut, mut rebuilt) = (0, 0, 0, 0, 0);
        for topic in topics.values() {
            for report in topic.recovery_reports() {
                partitions += 1;
                replayed += report.records_replayed;
                bytes_cut += report.tail.bytes_cut;
                records_cut += report.tail.records_cut;
                rebuilt += u64::from(report.checkpoint_rebuilt);
            }
        }
        tracing::info!(
            dir = %self.dir.display(),
            topics = topics.len(),
            partitions,
            records_replayed = replayed,
            torn_bytes_cut = bytes_cut,
            torn_records_cut = records_cut,
            checkpoints_rebuilt = rebuilt,
            elapsed_ms = elapsed.as_millis() as u64,
            "data directory opened"
        );
    }

    fn topics_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Topic>> {
        self.topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn topics_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The space of the filesystem holding the data directory.
    ///
    /// # Errors
    /// I/O errors from `statvfs`.
    pub fn disk_space(&self) -> Result<io::DiskSpace> {
        io::disk_space(&self.dir).map_err(|error| Error::io("read filesystem space", &self.dir, error))
    }

    /// The engine's metrics: fsync durations, group commit sizes, segment rolls
    /// and retention deletions, by topic.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Creates a topic.
    ///
    /// # Errors
    /// [`Error::TopicExists`] when the name is taken; [`Error::InvalidArgument`]
    /// for a bad name; [`Error::Config`] for bad options; I/O errors.
    pub fn create_topic(&self, name: &str, options: TopicOptions) -> Result<Topic> {
        validate_topic_name(name)?;
        options.validate()?;
        let _directory_change = self
            .directory_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut topics = self.topics_mut();
        if topics.contains_key(name) {
            return Err(Error::TopicExists(name.to_string()));
        }
        if topics.len() >= limits::TOPICS_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "topics",
                value: topics.len() as u64 + 1,
                max: limits::TOPICS_COUNT_MAX as u64,
            });
        }
        let storage = &*self.options.storage;
        let topics_dir = paths::topics_dir(&self.dir);
        let staging = paths::topic_creating_dir(&topics_dir, name);
        let path = paths::topic_dir(&topics_dir, name);
        let io_error = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |error| Error::io(op, path, error)
        };
        if storage.exists(&staging) {
            storage
                .remove_dir_all(&staging)
                .map_err(io_error("remove unfinished topic", &staging))?;
        }
        storage
            .create_dir_all(&staging)
            .map_err(io_error("create topic directory", &staging))?;
        io::write_file_atomic(
            storage,
            &paths::topic_meta(&staging),
            &topic_meta::encode(name, &options),
        )
        .map_err(io_error("write topic meta", &staging))?;
        storage
            .rename(&staging, &path)
            .map_err(io_error("create topic", &path))?;
        storage
            .sync_dir(&topics_dir)
            .map_err(io_error("sync topics", &topics_dir))?;
        let (partitions, durability) = (options.partitions, options.durability);
        let meta = topic_meta::TopicMeta {
            name: name.to_string(),
            options,
            revision: 0,
            changed_ms: 0,
        };
        let topic = Topic::open(path, meta, &self.options, &self.metrics, self.pool.handle())?;
        topics.insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, %durability, "topic created");
        Ok(topic)
    }

    /// Returns the topic, creating it with `options` if it does not exist.
    ///
    /// # Errors
    /// [`Error::TopicExists`] when it exists with other options; as
    /// [`Log::create_topic`] otherwise.
    pub fn ensure_topic(&self, name: &str, options: TopicOptions) -> Result<Topic> {
        if let Some(topic) = self.topics_read().get(name) {
            return if topic.options() == options {
                Ok(topic.clone())
            } else {
                Err(Error::TopicExists(name.to_string()))
            };
        }
        match self.create_topic(name, options.clone()) {
            Err(Error::TopicExists(_)) => self.ensure_topic(name, options),
            other => other,
        }
    }

    /// Changes a topic's options while it is open; see [`Topic::update_options`].
    /// `principal` names who asked, for the topic's history (empty when unknown).
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; [`Error::InvalidArgument`] for a bad name; as
    /// [`Topic::update_options`].
    pub fn update_topic(&self, name: &str, change: &TopicChange, principal: &str) -> Result<TopicUpdate> {
        // Serialised with deletion, so that a change never writes into the
        // directory of a topic being deleted.
        let _directory_change = self
            .directory_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.topic(name)?.update_options(change, principal)
    }

    /// An open topic.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`].
    pub fn topic(&self, name: &str) -> Result<Topic> {
        // A name in the map is valid by construction: only a miss is checked, so
        // that a malformed name is reported as such rather than as not found.
        if let Some(topic) = self.topics_read().get(name) {
            return Ok(topic.clone());
        }
        validate_topic_name(name)?;
        Err(Error::TopicNotFound(name.to_string()))
    }

    /// Writes a consistent backup of every topic into `dest` (absolute; a new
    /// or empty directory) while the log keeps taking appends, with the server
    /// stores `options` names; see [`crate::backup`] for what "consistent"
    /// means and FORMAT.md, "Backup", for the layout. Blocks for the copy.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a relative path or one inside the data
    /// directory; [`Error::DestinationNotEmpty`];
    /// [`Error::Inconsistent`] or [`Error::Corruption`] for an `incremental_from`
    /// that is not a complete backup; I/O errors (the destination is then
    /// left without a manifest).
    pub fn backup(
        &self,
        dest: &Path,
        options: crate::backup::BackupOptions<'_>,
    ) -> Result<crate::backup::BackupReport> {
        let topics: Vec<Topic> = self.topics_read().values().cloned().collect();
        let clock = Arc::clone(&self.options.clock);
        crate::backup::run(topics, &|| clock.now_ms(), &self.dir, dest, options)
    }

    /// The names of all topics, sorted.
    pub fn topics(&self) -> Vec<String> {
        self.topics_read().keys().cloned().collect()
    }

    /// Deletes a topic and all its data. Handles to it stop accepting appends.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; I/O errors.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        validate_topic_name(name)?;
        let _directory_change = self
            .directory_change
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let topic = self
            .topics_mut()
            .remove(name)
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        self.metrics.remove_topic(name);
        topic.close()?;
        let storage = &*self.options.storage;
        let topics_dir = paths::topics_dir(&self.dir);
        let doomed = paths::topic_deleting_dir(&topics_dir, name);
        storage
            .rename(topic.dir(), &doomed)
            .map_err(|error| Error::io("delete topic", topic.dir(), error))?;
        storage
            .sync_dir(&topics_dir)
            .map_err(|error| Error::io("sync topics", &topics_dir, error))?;
        storage
            .remove_dir_all(&doomed)
            .map_err(|error| Error::io("delete topic", &doomed, error))?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// True once [`Log::close`] has started.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes and checkpoints every topic and releases the directory. Topic
    /// handles still held fail appends with [`Error::Closed`] afterwards.
    ///
    /// # Errors
    /// The first I/O error met; every topic is closed regardless.
    pub fn close(&self) -> Result<()> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        let topics = std::mem::take(&mut *self.topics_mut());
        let mut first_error = None;
        for topic in topics.values() {
            if let Err(error) = topic.close() {
                first_error.get_or_insert(error);
            }
        }
        // Release the directory for another process (or a reopen).
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        for topic in self.topics_mut().values() {
            let _ = topic.close();
        }
    }
}
