//! Durable consumer groups: the `groups.journal` file in the data directory, a
//! journal-backed map of each group's definition and progress (FORMAT.md, "Group
//! journal records"; `format::group`).
//!
//! A group's progress is, per stream (its topic, and the redrive of its
//! dead-letter topic) and partition, a [`PartitionProgress`]: a floor below which
//! every offset is settled, the settled ranges above it, and the delivery attempts
//! of unsettled offsets. The server keeps the same type in memory and writes the
//! same [`ProgressChange`]s here with [`GroupStore::record`], so the rules of
//! progress are written once, in `format::group`, for both.
//!
//! Invariant: the in-memory map equals the replay of the durable journal; a failed
//! write changes neither.
//! Invariant: nothing is written that replay would refuse: definitions, partition
//! counts, changes and the per-group entry limit are checked first.
//!
//! It does not deliver, lease or track members: that is the server's.
//! Each change clones the group's state once (the journal map keeps the previous
//! value until the change is durable), so its cost grows with the group's entries.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::DecodeError;
pub use crate::format::group::{
    Exhausted, GroupDefinition, GroupSettings, GroupState, PartitionProgress, Pending, ProgressChange,
    STREAM_REDRIVE, STREAM_TOPIC, STREAMS_COUNT,
};
use crate::format::group::{GroupRecord, check_definition, check_state};
use crate::io::Storage;
use crate::journal::{JournalMap, check_ascii_name};
use crate::limits::{
    GROUP_NAME_SIZE_MAX, GROUP_PROGRESS_CHANGES_COUNT_MAX, GROUP_PROGRESS_ENTRIES_MAX, GROUPS_COUNT_MAX,
};
use crate::paths;

/// Defaults of [`GroupSettings`].
pub mod defaults {
    /// Thirty seconds.
    pub const LEASE_MS: u64 = 30_000;
    /// Deliveries of one event.
    pub const DELIVERIES_MAX: u32 = 10;
    /// One second.
    pub const BACKOFF_INITIAL_MS: u64 = 1000;
    /// One minute.
    pub const BACKOFF_MAX_MS: u64 = 60_000;
    /// Unsettled events per member.
    pub const IN_FLIGHT_PER_MEMBER_MAX: u32 = 64;
    /// Appended to the topic name to name the default dead-letter topic.
    pub const DEAD_LETTER_SUFFIX: &str = ".parked";
}

impl GroupSettings {
    /// The default settings of a group on `topic`: parked events go to
    /// `{topic}.parked`.
    pub fn defaults_for(topic: &str) -> GroupSettings {
        GroupSettings {
            lease_ms: defaults::LEASE_MS,
            deliveries_max: defaults::DELIVERIES_MAX,
            backoff_initial_ms: defaults::BACKOFF_INITIAL_MS,
            backoff_max_ms: defaults::BACKOFF_MAX_MS,
            in_flight_per_member_max: defaults::IN_FLIGHT_PER_MEMBER_MAX,
            dead_letter_topic: format!("{topic}{}", defaults::DEAD_LETTER_SUFFIX),
            exhausted: Exhausted::Park,
        }
    }
}

/// Checks a group name: 1 to 100 ASCII letters, digits, `.`, `_` and `-`.
///
/// # Errors
/// [`Error::InvalidArgument`] saying what is wrong; [`Error::LimitExceeded`]
/// above 100 bytes.
pub fn validate_name(name: &str) -> Result<()> {
    check_ascii_name(name, GROUP_NAME_SIZE_MAX, "group", "group name size")
}

/// The error of a state or change that the journal's rules refuse.
fn refused(name: &str, reason: DecodeError) -> Error {
    Error::InvalidArgument(format!("group {name}: {reason}"))
}

fn entries_exceeded(value: usize) -> Error {
    Error::LimitExceeded {
        what: "group progress entries",
        value: value as u64,
        max: GROUP_PROGRESS_ENTRIES_MAX as u64,
    }
}

/// The durable set of consumer groups.
#[derive(Debug)]
pub struct GroupStore {
    groups: JournalMap<GroupRecord>,
}

impl GroupStore {
    /// Opens or creates `groups.journal` in `dir`.
    ///
    /// # Errors
    /// [`Error::Corruption`] for a bad record before the tail (a torn tail is cut); I/O errors.
    pub fn open(storage: Arc<dyn Storage>, dir: &Path) -> Result<GroupStore> {
        Ok(GroupStore {
            groups: JournalMap::open(storage, paths::groups_journal(dir), ())?,
        })
    }

    /// Writes the durable groups as a fresh compacted journal at `path` (a
    /// backup's copy, `Log::backup`); returns the file's bytes.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_snapshot(&self, storage: &dyn Storage, path: &Path) -> Result<Vec<u8>> {
        self.groups.write_snapshot(storage, path)
    }

    /// Every group, by name.
    pub fn list(&self) -> Vec<GroupState> {
        self.groups.read(|groups| groups.values().cloned().collect())
    }

    /// Whether a group of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.groups.contains_key(name)
    }

    /// One group.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`].
    pub fn get(&self, name: &str) -> Result<GroupState> {
        self.groups
            .get(name)
            .ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    /// Adds a new group durably, with the progress it carries.
    ///
    /// # Errors
    /// [`Error::GroupExists`]; [`Error::LimitExceeded`] beyond [`GROUPS_COUNT_MAX`]
    /// groups or `GROUP_PROGRESS_ENTRIES_MAX` entries, or for a long name;
    /// [`Error::InvalidArgument`] for a bad name or a definition the journal
    /// cannot hold (an empty topic, a topic name above its limit, too many
    /// partitions or redrive marks); I/O errors.
    pub fn create(&self, state: GroupState) -> Result<()> {
        let name = state.definition.name.clone();
        validate_name(&name)?;
        let entries_count = state.entries_count();
        if entries_count > GROUP_PROGRESS_ENTRIES_MAX {
            return Err(entries_exceeded(entries_count));
        }
        check_state(&state).map_err(|reason| refused(&name, reason))?;
        self.groups.write(|groups| {
            if groups.contains_key(&name) {
                return Err(Error::GroupExists(name));
            }
            if groups.len() >= GROUPS_COUNT_MAX {
                return Err(Error::LimitExceeded {
                    what: "groups",
                    value: groups.len() as u64 + 1,
                    max: GROUPS_COUNT_MAX as u64,
                });
            }
            Ok((
                GroupRecord::Put {
                    state: Box::new(state),
                },
                (),
            ))
        })
    }

    /// Changes the definition of an existing group durably with `change`, keeping
    /// its progress; returns the new definition.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::InvalidArgument`] when `change` renames
    /// the group or leaves a definition the journal cannot hold (nothing is
    /// written then); I/O errors.
    pub fn update_definition(
        &self,
        name: &str,
        change: impl FnOnce(&mut GroupDefinition),
    ) -> Result<GroupDefinition> {
        self.groups.write(|groups| {
            let mut state = groups
                .get(name)
                .cloned()
                .ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
            change(&mut state.definition);
            if state.definition.name != name {
                return Err(Error::InvalidArgument(format!(
                    "group {name}: a group cannot be renamed (to {:?})",
                    state.definition.name
                )));
            }
            check_definition(&state.definition).map_err(|reason| refused(name, reason))?;
            let definition = state.definition.clone();
            Ok((
                GroupRecord::Put {
                    state: Box::new(state),
                },
                definition,
            ))
        })
    }

    /// Deletes a group durably; returns its last state.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; I/O errors.
    pub fn delete(&self, name: &str) -> Result<GroupState> {
        self.groups.write(|groups| {
            let state = groups
                .get(name)
                .cloned()
                .ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
            let record = GroupRecord::Delete {
                name: name.to_string(),
            };
            Ok((record, state))
        })
    }

    /// Applies `changes` to a group's progress, in order, durably: one record, made
    /// durable by one fdatasync shared with concurrent writers (group commit).
    /// The rules are [`GroupState::apply`]'s, so a caller that applied the same
    /// changes to its copy of the state holds what a reopen replays.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::InvalidArgument`] for a change that
    /// [`ProgressChange::check`] refuses; [`Error::LimitExceeded`] for more than
    /// `GROUP_PROGRESS_CHANGES_COUNT_MAX` changes, or when the group would hold
    /// more than `GROUP_PROGRESS_ENTRIES_MAX` entries after them (nothing is
    /// written then); I/O errors.
    pub fn record(&self, name: &str, changes: Vec<ProgressChange>) -> Result<()> {
        if changes.len() > GROUP_PROGRESS_CHANGES_COUNT_MAX {
            return Err(Error::LimitExceeded {
                what: "group progress changes",
                value: changes.len() as u64,
                max: GROUP_PROGRESS_CHANGES_COUNT_MAX as u64,
            });
        }
        for change in &changes {
            change.check().map_err(|reason| refused(name, reason))?;
        }
        if changes.is_empty() {
            return match self.contains(name) {
                true => Ok(()),
                false => Err(Error::GroupNotFound(name.to_string())),
            };
        }
        self.groups.write(|groups| {
            let state = groups
                .get(name)
                .ok_or_else(|| Error::GroupNotFound(name.to_string()))?;
            let entries_count = state.entries_count();
            let added_max: usize = changes.iter().map(ProgressChange::entries_added_max).sum();
            // Only a record that might cross the limit is applied here first, to a
            // copy; replay checks the limit again when the map applies the record.
            if entries_count + added_max > GROUP_PROGRESS_ENTRIES_MAX {
                let mut next = state.clone();
                for change in &changes {
                    next.apply(change).map_err(|reason| refused(name, reason))?;
                }
                let next_count = next.entries_count();
                if next_count > GROUP_PROGRESS_ENTRIES_MAX {
                    return Err(entries_exceeded(next_count));
                }
            }
            let record = GroupRecord::Progress {
                name: name.to_string(),
                changes,
            };
            Ok((record, ()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::format::journal::{JOURNAL_HEADER_LEN, replay};
    use crate::io::{Fault, FaultyStorage, StdStorage};
    use crate::paths::GROUPS_FILE;

    fn definition(name: &str) -> GroupDefinition {
        GroupDefinition {
            name: name.to_string(),
            topic: "orders".to_string(),
            settings: GroupSettings::defaults_for("orders"),
            created_ms: 1_700_000_000_000,
            redrive_until: Vec::new(),
        }
    }

    fn settle(stream: u8, partition: u32, start: u64, end: u64) -> ProgressChange {
        ProgressChange::Settle {
            stream,
            partition,
            start,
            end,
        }
    }

    fn pending(stream: u8, partition: u32, offset: u64, attempts: u32) -> ProgressChange {
        ProgressChange::Pending {
            stream,
            partition,
            offset,
            pending: Some(Pending {
                attempts,
                not_before_ms: 1_700_000_001_000,
                blocked: false,
            }),
        }
    }

    /// `state` after `changes`, applied as the server applies them in memory.
    fn applied(mut state: GroupState, changes: &[ProgressChange]) -> GroupState {
        for change in changes {
            state.apply(change).expect("a valid change");
        }
        state
    }

    #[test]
    fn groups_survive_reopen_with_progress_definition_changes_and_deletes() {
        // Goal: create, record, update_definition and delete are durable and replay
        // to what a caller applying the same changes in memory holds.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let changes = vec![
            settle(0, 1, 0, 4),
            settle(0, 1, 6, 9),
            pending(0, 1, 4, 2),
            pending(1, 0, 0, 1),
            ProgressChange::Seek {
                stream: 0,
                partition: 3,
                floor: 100,
            },
        ];
        let mut expected = applied(GroupState::new(definition("billing")), &changes);
        {
            let store = GroupStore::open(Arc::clone(&storage), dir.path()).expect("open");
            store
                .create(GroupState::new(definition("billing")))
                .expect("create billing");
            store
                .create(GroupState::new(definition("audit")))
                .expect("create audit");
            assert!(matches!(
                store.create(GroupState::new(definition("billing"))),
                Err(Error::GroupExists(_))
            ));
            store.record("billing", changes).expect("record");
            let updated = store
                .update_definition("billing", |definition| {
                    definition.settings.exhausted = Exhausted::Block;
                    definition.redrive_until = vec![(0, 12)];
                })
                .expect("update");
            expected.definition = updated;
            assert_eq!(store.get("billing").expect("get"), expected);
            store.delete("audit").expect("delete");
            assert!(matches!(store.delete("audit"), Err(Error::GroupNotFound(_))));
            assert!(matches!(
                store.record("audit", vec![settle(0, 0, 0, 1)]),
                Err(Error::GroupNotFound(_))
            ));
            assert!(matches!(
                store.record("audit", Vec::new()),
                Err(Error::GroupNotFound(_))
            ));
            assert!(matches!(store.get("audit"), Err(Error::GroupNotFound(_))));
            assert!(store.contains("billing"));
            assert!(!store.contains("audit"));
        }
        let store = GroupStore::open(storage, dir.path()).expect("reopen");
        assert_eq!(store.list(), vec![expected.clone()]);
        let partition = expected.partition(STREAM_TOPIC, 1).expect("partition 1");
        assert_eq!(partition.floor(), 4);
        assert_eq!(partition.first_unsettled_from(6), 9);
        assert!(partition.pending(4).is_some());
        assert_eq!(
            expected.partition(STREAM_TOPIC, 3).map(PartitionProgress::floor),
            Some(100)
        );
        assert_eq!(expected.streams[STREAM_REDRIVE as usize].len(), 1);
    }

    #[test]
    fn bad_arguments_are_refused_and_write_nothing() {
        // Goal: the store refuses what replay would refuse, with precise errors,
        // before anything reaches the file.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GroupStore::open(Arc::new(StdStorage), dir.path()).expect("open");
        store
            .create(GroupState::new(definition("billing")))
            .expect("create");
        let path = dir.path().join(GROUPS_FILE);
        let length = std::fs::metadata(&path).expect("stat").len();
        let kind = |result: Result<()>| result.err().map(|error| error.kind());
        assert_eq!(
            kind(store.create(GroupState::new(definition("a b")))),
            Some(ErrorKind::InvalidArgument)
        );
        let mut no_topic = definition("no-topic");
        no_topic.topic.clear();
        assert_eq!(
            kind(store.create(GroupState::new(no_topic))),
            Some(ErrorKind::InvalidArgument)
        );
        for bad in [
            settle(2, 0, 0, 1),
            settle(0, crate::limits::PARTITIONS_COUNT_MAX, 0, 1),
            settle(0, 0, 3, 2),
        ] {
            assert_eq!(
                kind(store.record("billing", vec![settle(0, 0, 0, 1), bad.clone()])),
                Some(ErrorKind::InvalidArgument),
                "{bad:?}"
            );
        }
        let too_many = vec![settle(0, 0, 0, 1); GROUP_PROGRESS_CHANGES_COUNT_MAX + 1];
        assert!(matches!(
            store.record("billing", too_many),
            Err(Error::LimitExceeded {
                what: "group progress changes",
                ..
            })
        ));
        let renamed = store.update_definition("billing", |definition| definition.name = "other".to_string());
        assert_eq!(renamed.err().map(|e| e.kind()), Some(ErrorKind::InvalidArgument));
        let long_topic = store.update_definition("billing", |definition| definition.topic = "t".repeat(201));
        assert_eq!(
            long_topic.err().map(|e| e.kind()),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(std::fs::metadata(&path).expect("stat").len(), length);
        assert_eq!(store.list(), vec![GroupState::new(definition("billing"))]);
    }

    #[test]
    fn the_entry_and_group_limits_are_refused_with_limit_exceeded() {
        // Goal: a record that would take a group past GROUP_PROGRESS_ENTRIES_MAX is
        // refused (LimitExceeded, nothing written) while one that stays within it,
        // or that lowers the count, is accepted; groups beyond GROUPS_COUNT_MAX are
        // refused. Method: fill one group with pending entries, one full record
        // per partition; then create groups up to the count limit.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        let store = GroupStore::open(Arc::clone(&storage), dir.path()).expect("open");
        store
            .create(GroupState::new(definition("billing")))
            .expect("create");
        let per_record = GROUP_PROGRESS_CHANGES_COUNT_MAX;
        for partition in 0..(GROUP_PROGRESS_ENTRIES_MAX / per_record) as u32 {
            let changes = (0..per_record as u64)
                .map(|at| pending(0, partition, 2 * at, 1))
                .collect();
            store.record("billing", changes).expect("within the limit");
        }
        let full = store.get("billing").expect("get");
        assert_eq!(full.entries_count(), GROUP_PROGRESS_ENTRIES_MAX);
        let over = store.record("billing", vec![settle(1, 0, 5, 6)]);
        assert!(matches!(
            over,
            Err(Error::LimitExceeded {
                what: "group progress entries",
                value,
                max,
            }) if value == max + 1
        ));
        // Settling a pending offset replaces an entry by at most one range; at the
        // floor it removes the entry.
        store
            .record("billing", vec![settle(0, 0, 2, 3), settle(0, 0, 0, 1)])
            .expect("at the limit");
        assert_eq!(
            store.get("billing").expect("get").entries_count(),
            GROUP_PROGRESS_ENTRIES_MAX - 1
        );
        let mut too_big = GroupState::new(definition("too-big"));
        too_big.streams[0] = vec![PartitionProgress::new(0)];
        for offset in 0..=GROUP_PROGRESS_ENTRIES_MAX as u64 {
            too_big.streams[0][0].set_pending(offset, Some(Pending::default()));
        }
        assert!(matches!(
            store.create(too_big),
            Err(Error::LimitExceeded {
                what: "group progress entries",
                ..
            })
        ));
        for at in 1..GROUPS_COUNT_MAX {
            store
                .create(GroupState::new(definition(&format!("g{at}"))))
                .expect("within the group limit");
        }
        assert!(matches!(
            store.create(GroupState::new(definition("one-more"))),
            Err(Error::LimitExceeded { what: "groups", .. })
        ));
        let expected = store.list();
        drop(store);
        let store = GroupStore::open(storage, dir.path()).expect("reopen");
        assert_eq!(store.list(), expected);
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        // Goal: a record whose fdatasync fails is in neither the map nor the file,
        // not after a simulated power cut; the store keeps working.
        let dir = tempfile::tempdir().expect("tempdir");
        let faulty = FaultyStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(faulty.clone());
        let store = GroupStore::open(Arc::clone(&storage), dir.path()).expect("open");
        store
            .create(GroupState::new(definition("billing")))
            .expect("create");
        store.record("billing", vec![settle(0, 0, 0, 3)]).expect("record");
        let before = store.get("billing").expect("get");
        for fault in [Fault::SyncError, Fault::WriteError, Fault::ShortWrite] {
            faulty.arm(fault, GROUPS_FILE, 0);
            let failed = store.record("billing", vec![settle(0, 0, 3, 9), pending(0, 0, 9, 1)]);
            assert_eq!(failed.err().map(|e| e.kind()), Some(ErrorKind::Io), "{fault:?}");
            assert_eq!(store.get("billing").expect("get"), before, "{fault:?}");
        }
        faulty.arm(Fault::SyncError, GROUPS_FILE, 0);
        assert!(store.delete("billing").is_err());
        assert!(store.contains("billing"));
        store
            .record("billing", vec![settle(0, 0, 5, 6)])
            .expect("record after the failures");
        let expected = applied(before, &[settle(0, 0, 5, 6)]);
        assert_eq!(store.get("billing").expect("get"), expected);
        drop(store);
        faulty.crash(7).expect("crash");
        let store = GroupStore::open(storage, dir.path()).expect("reopen");
        assert_eq!(store.list(), vec![expected]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_bad_record_is_corruption() {
        // Goal: a half-written last record is dropped on open; garbage bodies and
        // progress of an unknown group are rejected by replay.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage: Arc<dyn Storage> = Arc::new(StdStorage);
        {
            let store = GroupStore::open(Arc::clone(&storage), dir.path()).expect("open");
            store
                .create(GroupState::new(definition("billing")))
                .expect("create");
            store.record("billing", vec![settle(0, 0, 0, 3)]).expect("record");
        }
        let path = dir.path().join(GROUPS_FILE);
        let length = std::fs::metadata(&path).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open file");
        file.set_len(length - 3).expect("truncate");
        let store = GroupStore::open(Arc::clone(&storage), dir.path()).expect("reopen");
        assert_eq!(store.list(), vec![GroupState::new(definition("billing"))]);
        drop(store);
        assert!(std::fs::metadata(&path).expect("stat").len() < length - 3);
        let mut groups = std::collections::BTreeMap::new();
        assert!(replay::<GroupRecord>(&mut groups, &mut (), (), &[9, 0, 0]).is_err());
        assert!(replay::<GroupRecord>(&mut groups, &mut (), (), &[3, 1, 0, b'x', 0, 0, 0, 0]).is_err());
        assert!(groups.is_empty());
        // A damaged record followed by a valid one is corruption, not a tail.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_within(JOURNAL_HEADER_LEN..);
        bytes[JOURNAL_HEADER_LEN + 9] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let error = GroupStore::open(storage, dir.path()).err();
        assert_eq!(error.map(|e| e.kind()), Some(ErrorKind::Corruption));
    }

    #[test]
    fn the_committed_v1_journal_still_opens() {
        // Goal: the format v1 fixture (two groups created, progress of every change
        // kind in both streams, a definition change, one group deleted) replays with
        // the current code to the state its calls leave.
        let fixture = fixture_path();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(&fixture, dir.path().join(GROUPS_FILE)).expect("copy the fixture");
        let store = GroupStore::open(Arc::new(StdStorage), dir.path()).expect("open");
        let state = store.get("orders-billing").expect("the fixture's group");
        assert_eq!(store.list(), vec![state.clone()]);
        let fresh = tempfile::tempdir().expect("tempdir");
        let fresh_store = GroupStore::open(Arc::new(StdStorage), fresh.path()).expect("open");
        assert_eq!(state, fixture_calls(&fresh_store));
        let partition = state.partition(STREAM_TOPIC, 0).expect("partition 0");
        assert_eq!(
            (partition.floor(), partition.ranges().collect::<Vec<_>>()),
            (5, vec![(7, 9)])
        );
        assert_eq!(partition.pending(6).map(|pending| pending.blocked), Some(true));
        let redrive = state.partition(STREAM_REDRIVE, 1).expect("redrive partition 1");
        assert_eq!((redrive.floor(), redrive.settled_above_floor()), (40, 3));
        assert_eq!(state.definition.settings.exhausted, Exhausted::Block);
    }

    #[test]
    fn the_fixture_calls_still_write_the_committed_bytes() {
        // Goal: the writer still writes format v1: the fixture's calls on a fresh
        // store write exactly the committed file. `STELE_WRITE_FIXTURES=1` writes
        // the fixture instead (only for a new format version, with FORMAT.md).
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GroupStore::open(Arc::new(StdStorage), dir.path()).expect("open");
        fixture_calls(&store);
        drop(store);
        let written = std::fs::read(dir.path().join(GROUPS_FILE)).expect("read the journal");
        if std::env::var_os("STELE_WRITE_FIXTURES").is_some() {
            let fixture = fixture_path();
            std::fs::create_dir_all(fixture.parent().expect("a parent")).expect("fixture directory");
            std::fs::write(&fixture, &written).expect("write the fixture");
        }
        assert_eq!(std::fs::read(fixture_path()).expect("read the fixture"), written);
    }

    fn fixture_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/groups-v1")
            .join(GROUPS_FILE)
    }

    /// The calls that wrote `tests/fixtures/groups-v1/groups.journal`; returns the
    /// state they leave.
    fn fixture_calls(store: &GroupStore) -> GroupState {
        let mut billing = definition("orders-billing");
        billing.created_ms = 1_767_225_600_000;
        store.create(GroupState::new(billing)).expect("create");
        store
            .create(GroupState::new(definition("audit")))
            .expect("create");
        let blocked = ProgressChange::Pending {
            stream: 0,
            partition: 0,
            offset: 6,
            pending: Some(Pending {
                attempts: 10,
                not_before_ms: 0,
                blocked: true,
            }),
        };
        let cleared = ProgressChange::Pending {
            stream: 0,
            partition: 2,
            offset: 1,
            pending: None,
        };
        let topic = vec![
            settle(0, 0, 0, 5),
            settle(0, 0, 7, 9),
            pending(0, 0, 5, 3),
            blocked,
            pending(0, 2, 1, 1),
            cleared,
            settle(0, 2, 0, 2),
        ];
        store.record("orders-billing", topic).expect("record");
        let seek = ProgressChange::Seek {
            stream: 1,
            partition: 1,
            floor: 40,
        };
        let redrive = vec![seek, settle(1, 1, 41, 44), pending(1, 1, 40, 2)];
        store.record("orders-billing", redrive).expect("record");
        store
            .update_definition("orders-billing", |definition| {
                definition.settings.exhausted = Exhausted::Block;
                definition.settings.deliveries_max = 3;
                definition.redrive_until = vec![(1, 44)];
            })
            .expect("update");
        store.delete("audit").expect("delete");
        store.get("orders-billing").expect("get")
    }

    #[test]
    fn names_follow_the_rules() {
        // Goal: names are 1..=100 bytes of a safe alphabet, with the webhook rules.
        assert!(validate_name("orders-billing_1.v2").is_ok());
        assert!(validate_name(&"a".repeat(100)).is_ok());
        assert!(matches!(validate_name(""), Err(Error::InvalidArgument(_))));
        assert!(matches!(validate_name("a b"), Err(Error::InvalidArgument(_))));
        assert!(matches!(validate_name("é"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            validate_name(&"a".repeat(101)),
            Err(Error::LimitExceeded {
                what: "group name size",
                ..
            })
        ));
        assert_eq!(
            GroupSettings::defaults_for("orders").dead_letter_topic,
            "orders.parked"
        );
    }
}
