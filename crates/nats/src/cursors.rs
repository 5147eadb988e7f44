//! Durable consumer cursors on JetStream: one entry per cursor in the R3 KV
//! bucket [`CURSOR_BUCKET`], changed only by revision compare-and-set, with the
//! embedded engine's rules and errors (`stele_engine`'s `Topic::commit_cursor`,
//! `cursor`, `cursors` and `delete_cursor`).
//!
//! Key: `<topic token>.<cursor name token>`, both [`crate::topics::token`]
//! (base64url without padding), so any cursor name makes one KV key token.
//! Value (format version 1, little-endian, exactly `6 + 12 n` bytes):
//!
//! | off | size | type | field          | meaning                                              |
//! |-----|------|------|----------------|------------------------------------------------------|
//! | 0   | 2    | u16  | format_version | 1                                                    |
//! | 2   | 4    | u32  | entries_count  | `n`, at most `PARTITIONS_COUNT_MAX`                  |
//! | 6   | 12 n | ..   | entries        | `u32` partition, `u64` next offset to read; by partition, strictly increasing |
//!
//! A partition never committed has no entry. A value that does not decode is
//! [`Error::Corruption`]; another version is `UnsupportedVersion`.
//!
//! Invariant: every change is a write expecting the revision it was decided
//! from, read from the bucket stream's leader (the KV API's direct gets read
//! any replica, which may not have applied a change just acknowledged, see
//! `lease.rs`); a write that loses to a concurrent one is decided again from
//! the newer value, at most 1,000 (`CAS_TRIES_MAX`) times. So commits from several
//! servers to one cursor are serialised, and none is lost.
//!
//! A deleted cursor leaves a delete marker (the compare-and-set delete is a
//! message), which its topic's deletion removes with everything else.
//! `CURSORS_COUNT_MAX` is checked by counting the topic's live cursors, which
//! reads each of them, so only when the whole bucket holds that many keys;
//! servers creating cursors of one topic at the same moment near the limit may
//! each pass it once.
//!
//! It does not compute lag and does not read partitions' high watermarks: the
//! caller passes them (a high watermark only grows, so one read before the
//! commit is a bound the engine's check would also have passed). Topic
//! deletion ([`CursorStore::delete_topic`]) must come after the topic's
//! catalog entry is gone, so that no commit races with it; a commit that races
//! anyway can leave a cursor behind for a topic created again under the name,
//! unless creation sweeps with `delete_topic` first.

use std::collections::BTreeMap;

use bytes::Bytes;
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId};
use stele_engine::format::{DecodeError, Reader};
use stele_engine::limits::{CURSOR_NAME_SIZE_MAX, CURSORS_COUNT_MAX, PARTITIONS_COUNT_MAX};

use crate::topics::token;
use bucket::{Bucket, CAS_TRIES_MAX};
use stele_engine::journal::check_name;

/// The KV bucket of consumer cursors.
pub const CURSOR_BUCKET: &str = "stele_cursors";

/// The format version of a cursor value this build writes and reads.
const CURSOR_FORMAT_VERSION: u16 = 1;

/// Bytes of a cursor value before its entries.
const CURSOR_HEADER_LEN: usize = 6;

/// Bytes of one entry of a cursor value.
const CURSOR_ENTRY_LEN: usize = 12;

/// The committed offsets of every cursor, in one cluster.
#[derive(Debug, Clone)]
pub struct CursorStore {
    bucket: Bucket,
}

/// The key of cursor `name` of `topic`.
fn cursor_key(topic: &str, name: &str) -> String {
    format!("{}.{}", token(topic.as_bytes()), token(name.as_bytes()))
}

/// Encodes a cursor's committed offsets (format version 1).
fn encode(offsets: &BTreeMap<PartitionId, Offset>) -> Bytes {
    let mut bytes = Vec::with_capacity(CURSOR_HEADER_LEN + CURSOR_ENTRY_LEN * offsets.len());
    bytes.extend_from_slice(&CURSOR_FORMAT_VERSION.to_le_bytes());
    let count = u32::try_from(offsets.len()).expect("a cursor has at most PARTITIONS_COUNT_MAX entries");
    bytes.extend_from_slice(&count.to_le_bytes());
    for (partition, offset) in offsets {
        bytes.extend_from_slice(&partition.0.to_le_bytes());
        bytes.extend_from_slice(&offset.0.to_le_bytes());
    }
    debug_assert_eq!(decode(&bytes).as_ref(), Ok(offsets));
    Bytes::from(bytes)
}

/// Decodes a cursor value.
///
/// # Errors
/// [`DecodeError`] for anything but exactly one valid version 1 value.
fn decode(bytes: &[u8]) -> std::result::Result<BTreeMap<PartitionId, Offset>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let version = reader.u16()?;
    if version != CURSOR_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let count = reader.u32()?;
    stele_engine::format::check_len(u64::from(count), u64::from(PARTITIONS_COUNT_MAX))?;
    let needed = CURSOR_ENTRY_LEN as u64 * u64::from(count);
    if (reader.remaining() as u64) < needed {
        return Err(DecodeError::Truncated {
            needed,
            available: reader.remaining() as u64,
        });
    }
    let mut offsets = BTreeMap::new();
    let mut previous: Option<u32> = None;
    for _ in 0..count {
        let partition = reader.u32()?;
        let offset = reader.u64()?;
        if previous.is_some_and(|previous| partition <= previous) {
            return Err(DecodeError::Invalid(
                "cursor partitions are not strictly increasing",
            ));
        }
        previous = Some(partition);
        offsets.insert(PartitionId(partition), Offset(offset));
    }
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("bytes after the last cursor entry"));
    }
    Ok(offsets)
}

impl CursorStore {
    /// Opens the store, creating its bucket (R3) when missing.
    ///
    /// # Errors
    /// I/O errors when JetStream does not answer.
    pub async fn open(connection: &crate::Connection) -> Result<CursorStore> {
        Ok(CursorStore {
            bucket: Bucket::open(connection, CURSOR_BUCKET).await?,
        })
    }

    /// The decoded value of the entry at `key`, as the bucket's path for errors.
    fn decoded(&self, key: &str, value: &[u8]) -> Result<BTreeMap<PartitionId, Offset>> {
        decode(value).map_err(|reason| Error::Corruption {
            path: self.bucket.path(key),
            position: 0,
            reason,
        })
    }

    /// Commits next offsets for the given partitions of cursor `name` of
    /// `topic` (a topic of `partitions` partitions), creating the cursor if
    /// needed; partitions not named keep their offsets. `high_watermark` gives
    /// each named partition's high watermark.
    ///
    /// The write expects the revision its checks were made on, and is decided
    /// again from the newer value when a concurrent commit won (bounded), so
    /// commits from several servers never lose one another.
    ///
    /// # Errors
    /// As the engine: [`Error::InvalidArgument`] for a bad topic or cursor
    /// name, a partition count of 0 or above `PARTITIONS_COUNT_MAX`, a
    /// partition out of range or one named twice;
    /// [`Error::LimitExceeded`] for a name above `CURSOR_NAME_SIZE_MAX` or a
    /// new cursor beyond `CURSORS_COUNT_MAX`;
    /// [`Error::CursorAheadOfHighWatermark`]; [`Error::CursorBackwards`]
    /// unless `allow_backwards`; then [`Error::Corruption`] for a stored value
    /// that does not decode, [`Error::Inconsistent`] for one naming a
    /// partition the topic lacks, and I/O errors (also after
    /// 1,000 (`CAS_TRIES_MAX`) lost races in a row). On any error but an I/O error
    /// whose write may have landed, nothing is written.
    pub async fn commit(
        &self,
        topic: &str,
        partitions: u32,
        name: &str,
        offsets: &[(PartitionId, Offset)],
        allow_backwards: bool,
        high_watermark: &(dyn Fn(PartitionId) -> Offset + Sync),
    ) -> Result<()> {
        stele_engine::validate_topic_name(topic)?;
        check_name(name, CURSOR_NAME_SIZE_MAX, "cursor")?;
        if partitions == 0 || partitions > PARTITIONS_COUNT_MAX {
            return Err(Error::InvalidArgument(format!(
                "partition count {partitions} is not within 1..={PARTITIONS_COUNT_MAX}"
            )));
        }
        let mut seen = vec![false; partitions as usize];
        for &(partition, _) in offsets {
            let Some(slot) = seen.get_mut(partition.0 as usize) else {
                return Err(Error::InvalidArgument(format!(
                    "partition {partition} out of range: the topic has {partitions} partitions"
                )));
            };
            if *slot {
                return Err(Error::InvalidArgument(format!(
                    "partition {partition} named twice in one commit"
                )));
            }
            *slot = true;
        }
        let key = cursor_key(topic, name);
        for _ in 0..CAS_TRIES_MAX {
            let latest = self.bucket.latest(&key).await?;
            let revision = latest.as_ref().map_or(0, |latest| latest.revision);
            let current = match latest.and_then(|latest| latest.value) {
                Some(value) => Some(self.decoded(&key, &value)?),
                None => None,
            };
            // Counting a topic's cursors reads each of them: only done when
            // the whole bucket holds enough keys for this topic to be full.
            if current.is_none() && self.bucket.keys_count_max().await? >= CURSORS_COUNT_MAX as u64 {
                let count = self
                    .bucket
                    .scan(&format!("{}.*", token(topic.as_bytes())))
                    .await?
                    .len();
                if count >= CURSORS_COUNT_MAX {
                    return Err(Error::LimitExceeded {
                        what: "cursors in the topic",
                        value: count as u64 + 1,
                        max: CURSORS_COUNT_MAX as u64,
                    });
                }
            }
            let mut merged = current.unwrap_or_default();
            if let Some((&partition, _)) = merged.range(PartitionId(partitions)..).next() {
                return Err(Error::Inconsistent {
                    path: self.bucket.path(&key),
                    reason: format!(
                        "cursor {name:?} has an offset for partition {partition}; the topic has {partitions} partitions"
                    ),
                });
            }
            for &(partition, offset) in offsets {
                let high_watermark = high_watermark(partition);
                if offset > high_watermark {
                    return Err(Error::CursorAheadOfHighWatermark {
                        partition,
                        requested: offset,
                        high_watermark,
                    });
                }
                if let Some(&committed) = merged.get(&partition)
                    && offset < committed
                    && !allow_backwards
                {
                    return Err(Error::CursorBackwards {
                        partition,
                        committed,
                        requested: offset,
                    });
                }
            }
            merged.extend(offsets.iter().copied());
            if self
                .bucket
                .write(&key, encode(&merged), revision, "commit a cursor")
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(crate::unavailable(
            "commit a cursor",
            format!("{CAS_TRIES_MAX} concurrent changes won in a row"),
        ))
    }

    /// The cursor's committed next offset per partition (partitions never
    /// committed absent), read from the bucket stream's leader.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`]; [`Error::InvalidArgument`] for a bad topic
    /// name; [`Error::Corruption`] for a value that does not decode; I/O errors.
    pub async fn get(&self, topic: &str, name: &str) -> Result<BTreeMap<PartitionId, Offset>> {
        stele_engine::validate_topic_name(topic)?;
        if name.is_empty() {
            return Err(Error::CursorNotFound(name.to_string()));
        }
        let key = cursor_key(topic, name);
        match self.bucket.latest(&key).await?.and_then(|latest| latest.value) {
            Some(value) => self.decoded(&key, &value),
            None => Err(Error::CursorNotFound(name.to_string())),
        }
    }

    /// Every cursor of `topic` with its committed offsets, sorted by name.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad topic name; [`Error::Corruption`]
    /// for a value that does not decode; [`Error::Inconsistent`] for a key
    /// that is no cursor name's token; I/O errors.
    pub async fn list(&self, topic: &str) -> Result<Vec<(String, BTreeMap<PartitionId, Offset>)>> {
        use base64::Engine as _;
        stele_engine::validate_topic_name(topic)?;
        let prefix = format!("{}.", token(topic.as_bytes()));
        let mut cursors = Vec::new();
        for (key, value) in self.bucket.scan(&format!("{prefix}*")).await? {
            let name = key
                .strip_prefix(&prefix)
                .and_then(|name| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(name).ok())
                .and_then(|name| String::from_utf8(name).ok())
                .ok_or_else(|| Error::Inconsistent {
                    path: self.bucket.path(&key),
                    reason: "a cursor key that is not the token of a name".to_string(),
                })?;
            cursors.push((name, self.decoded(&key, &value)?));
        }
        cursors.sort_by(|(left, _), (right, _)| left.cmp(right));
        Ok(cursors)
    }

    /// Deletes cursor `name` of `topic`.
    ///
    /// # Errors
    /// [`Error::CursorNotFound`]; [`Error::InvalidArgument`] or
    /// [`Error::LimitExceeded`] for a bad name, as the engine; I/O errors.
    pub async fn delete(&self, topic: &str, name: &str) -> Result<()> {
        stele_engine::validate_topic_name(topic)?;
        check_name(name, CURSOR_NAME_SIZE_MAX, "cursor")?;
        let key = cursor_key(topic, name);
        for _ in 0..CAS_TRIES_MAX {
            let Some(latest) = self.bucket.latest(&key).await? else {
                return Err(Error::CursorNotFound(name.to_string()));
            };
            if latest.value.is_none() {
                return Err(Error::CursorNotFound(name.to_string()));
            }
            if self
                .bucket
                .delete(&key, latest.revision, "delete a cursor")
                .await?
            {
                return Ok(());
            }
        }
        Err(crate::unavailable(
            "delete a cursor",
            format!("{CAS_TRIES_MAX} concurrent changes won in a row"),
        ))
    }

    /// Removes every cursor of `topic` (its deletion), in one purge of the
    /// bucket's stream: nothing of them stays, not even delete markers.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad topic name; I/O errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        stele_engine::validate_topic_name(topic)?;
        self.bucket
            .purge(
                &format!("{}.*", token(topic.as_bytes())),
                "delete a topic's cursors",
            )
            .await
    }
}

/// What the cursor store and the producer registry share: an R3 KV bucket
/// read by its stream's leader and written by revision compare-and-set.
pub(crate) mod bucket {
    use std::path::PathBuf;

    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::{self, kv, stream};
    use bytes::Bytes;
    use futures_util::StreamExt;
    use stele_engine::error::{Error, Result};

    use crate::{Connection, REACHABLE_WAIT_MAX, unavailable};

    /// How many times in a row a compare-and-set may lose to a concurrent
    /// change before that is an error: each loss means another write landed,
    /// so this bounds the wait under contention, not a lost write.
    pub(crate) const CAS_TRIES_MAX: u32 = 1000;

    /// The header of a KV delete or purge marker.
    const KV_OPERATION: &str = "KV-Operation";

    /// The header of a marker the server writes (removal, purge, age).
    const MARKER_REASON: &str = "Nats-Marker-Reason";

    /// Whether a publish expecting a subject's last sequence was refused,
    /// with nothing stored, because that sequence was not the last: a lost
    /// race. A clustered stream's leader says so in two ways: "wrong last
    /// sequence" (10071) when another write landed, and its constant form
    /// (10164, which async-nats 0.51 does not map) when another write
    /// expecting the same subject's sequence is still being proposed; and
    /// "not ready" (10163) while a new leader cannot check yet.
    fn lost_race(error: &PublishError) -> bool {
        use jetstream::ErrorCode;
        if error.kind() == PublishErrorKind::WrongLastSequence {
            return true;
        }
        std::error::Error::source(error)
            .and_then(|source| source.downcast_ref::<jetstream::Error>())
            .is_some_and(|source| {
                matches!(
                    source.error_code(),
                    ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
                        | ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY
                )
            })
    }

    /// An entry's newest message.
    #[derive(Debug)]
    pub(crate) struct Latest {
        /// Its stream sequence: the revision a compare-and-set expects.
        pub(crate) revision: u64,
        /// The value; `None` for a delete or purge marker.
        pub(crate) value: Option<Bytes>,
    }

    /// One R3 KV bucket.
    #[derive(Debug, Clone)]
    pub(crate) struct Bucket {
        name: String,
        jetstream: jetstream::Context,
        /// The bucket's stream, for reads by its leader (`STREAM.MSG.GET`).
        stream: stream::Stream,
    }

    impl Bucket {
        /// Opens bucket `name`, creating it (R3, one value per key) when
        /// missing, and waits (bounded) until it answers. Creation is tried
        /// again (it is idempotent) until [`REACHABLE_WAIT_MAX`] has passed
        /// and at least twice: on a young or loaded cluster the metadata
        /// leader may refuse a placement for a peer it briefly sees offline,
        /// or lose the request in an election.
        ///
        /// # Errors
        /// I/O errors when JetStream does not answer.
        pub(crate) async fn open(connection: &Connection, base: &'static str) -> Result<Bucket> {
            let name = connection.names.bucket(base);
            let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
            let mut tries = 0;
            let store = loop {
                tries += 1;
                let created = connection
                    .jetstream
                    .create_key_value(kv::Config {
                        bucket: name.clone(),
                        num_replicas: 3,
                        history: 1,
                        ..kv::Config::default()
                    })
                    .await;
                match created {
                    Ok(store) => break store,
                    Err(error) if tries < 2 || tokio::time::Instant::now() < deadline => {
                        tracing::debug!(%error, bucket = %name, "creating a state bucket is tried again");
                        tokio::task::yield_now().await;
                    }
                    Err(error) => return Err(unavailable("open a state bucket", error)),
                }
            };
            crate::until_reachable(&store)
                .await
                .map_err(|error| unavailable("reach a state bucket", error))?;
            // The bucket's stream handle comes with the bucket: asking
            // JetStream for it again was one more request, the one that timed
            // out on a young cluster in two CI runs.
            let stream = store.stream.clone();
            Ok(Bucket {
                name,
                jetstream: connection.jetstream.clone(),
                stream,
            })
        }

        /// The subject of `key` (a key, or a filter with wildcards).
        fn subject(&self, key: &str) -> String {
            format!("$KV.{}.{key}", self.name)
        }

        /// The entry `key`, named as a path for errors.
        pub(crate) fn path(&self, key: &str) -> PathBuf {
            format!("nats:kv/{}/{key}", self.name).into()
        }

        /// The newest message of `key`, read by the stream's leader so that a
        /// change already acknowledged is seen; `None` when the key has none
        /// (never written, or purged with its topic).
        ///
        /// # Errors
        /// I/O errors.
        pub(crate) async fn latest(&self, key: &str) -> Result<Option<Latest>> {
            use async_nats::jetstream::stream::LastRawMessageErrorKind;
            let message = match self
                .stream
                .get_last_raw_message_by_subject(&self.subject(key))
                .await
            {
                Ok(message) => message,
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                Err(error) => return Err(unavailable("read a state entry", error)),
            };
            let marker =
                message.headers.get(KV_OPERATION).is_some() || message.headers.get(MARKER_REASON).is_some();
            Ok(Some(Latest {
                revision: message.sequence,
                value: (!marker).then_some(message.payload),
            }))
        }

        /// Writes `value` at `key` if the key's newest message is still
        /// `revision` (0: the key has none). `Some(new revision)`, or `None`
        /// when a concurrent change won and nothing was written.
        ///
        /// # Errors
        /// I/O errors (after a timeout the write may have landed).
        pub(crate) async fn write(
            &self,
            key: &str,
            value: Bytes,
            revision: u64,
            what: &'static str,
        ) -> Result<Option<u64>> {
            self.publish(key, None, value, revision, what).await
        }

        /// Deletes `key` (a delete marker) if its newest message is still
        /// `revision`; `false` when a concurrent change won.
        ///
        /// # Errors
        /// I/O errors.
        pub(crate) async fn delete(&self, key: &str, revision: u64, what: &'static str) -> Result<bool> {
            Ok(self
                .publish(key, Some("DEL"), Bytes::new(), revision, what)
                .await?
                .is_some())
        }

        /// One publish expecting `revision` as the subject's last sequence,
        /// retried (bounded) while the server has not learnt the bucket's
        /// subjects yet ("no responders": nothing was stored).
        async fn publish(
            &self,
            key: &str,
            operation: Option<&'static str>,
            value: Bytes,
            revision: u64,
            what: &'static str,
        ) -> Result<Option<u64>> {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
            if let Some(operation) = operation {
                headers.insert(KV_OPERATION, operation);
            }
            let subject = self.subject(key);
            let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
            loop {
                let acked = match self
                    .jetstream
                    .publish_with_headers(subject.clone(), headers.clone(), value.clone())
                    .await
                {
                    Ok(ack) => ack.await,
                    Err(error) => Err(error),
                };
                match acked {
                    Ok(ack) => return Ok(Some(ack.sequence)),
                    Err(error) if lost_race(&error) => return Ok(None),
                    Err(error)
                        if error.kind() == PublishErrorKind::StreamNotFound
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::task::yield_now().await;
                    }
                    Err(error) => return Err(unavailable(what, error)),
                }
            }
        }

        /// How many keys the whole bucket holds (delete markers included):
        /// a bound, from the stream's leader, on the live entries of any
        /// one topic.
        ///
        /// # Errors
        /// I/O errors.
        pub(crate) async fn keys_count_max(&self) -> Result<u64> {
            let info = self
                .stream
                .get_info()
                .await
                .map_err(|error| unavailable("read a state bucket's size", error))?;
            Ok(info.state.subjects_count)
        }

        /// The live entries (no markers) whose keys match `keys` (a filter
        /// with wildcards), as (key, value): the matching subjects as the
        /// stream's leader lists them (paged), then each one's newest message
        /// by the leader. Neither step changes cluster metadata (an
        /// ephemeral consumer would, and is slow to create on a loaded
        /// cluster); an entry changed during the scan is seen as of its read.
        ///
        /// # Errors
        /// I/O errors.
        pub(crate) async fn scan(&self, keys: &str) -> Result<Vec<(String, Bytes)>> {
            let prefix = self.subject("");
            let mut subjects = self
                .stream
                .info_with_subjects(self.subject(keys))
                .await
                .map_err(|error| unavailable("list a state bucket", error))?;
            let mut found = Vec::new();
            while let Some(subject) = subjects.next().await {
                let (subject, _) = subject.map_err(|error| unavailable("list a state bucket", error))?;
                let key = subject
                    .strip_prefix(prefix.as_str())
                    .ok_or_else(|| Error::Inconsistent {
                        path: self.path(""),
                        reason: format!("the bucket's stream lists subject {subject:?}"),
                    })?
                    .to_string();
                found.push(key);
            }
            let mut entries = Vec::with_capacity(found.len());
            for key in found {
                if let Some(value) = self.latest(&key).await?.and_then(|latest| latest.value) {
                    entries.push((key, value));
                }
            }
            Ok(entries)
        }

        /// Removes every message of the keys matching `keys` (a filter with
        /// wildcards) from the bucket's stream, markers included.
        ///
        /// # Errors
        /// I/O errors.
        pub(crate) async fn purge(&self, keys: &str, what: &'static str) -> Result<()> {
            self.stream
                .purge()
                .filter(self.subject(keys))
                .await
                .map_err(|error| unavailable(what, error))?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_values_round_trip_and_bad_ones_are_refused() {
        let empty = BTreeMap::new();
        assert_eq!(encode(&empty).as_ref(), &[1, 0, 0, 0, 0, 0]);
        assert_eq!(decode(&encode(&empty)), Ok(empty));
        let offsets = BTreeMap::from([(PartitionId(0), Offset(10)), (PartitionId(3), Offset(u64::MAX))]);
        let bytes = encode(&offsets);
        assert_eq!(bytes.len(), CURSOR_HEADER_LEN + 2 * CURSOR_ENTRY_LEN);
        assert_eq!(decode(&bytes), Ok(offsets));

        assert!(matches!(decode(&[]), Err(DecodeError::Truncated { .. })));
        assert_eq!(
            decode(&[2, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(DecodeError::Invalid(_))));
        let mut huge = vec![1, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&huge),
            Err(DecodeError::LengthOutOfBounds { .. })
        ));
        // Partition 3 then partition 0: not increasing.
        let mut unordered = vec![1, 0, 2, 0, 0, 0];
        for (partition, offset) in [(3u32, 1u64), (0, 1)] {
            unordered.extend_from_slice(&partition.to_le_bytes());
            unordered.extend_from_slice(&offset.to_le_bytes());
        }
        assert!(matches!(decode(&unordered), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn names_are_checked_like_the_engine() {
        use stele_engine::error::ErrorKind;
        let kind =
            |name: &str| check_name(name, CURSOR_NAME_SIZE_MAX, "cursor").map_err(|error| error.kind());
        assert_eq!(kind(""), Err(ErrorKind::InvalidArgument));
        assert_eq!(kind("bell\u{7}"), Err(ErrorKind::InvalidArgument));
        assert_eq!(
            kind(&"x".repeat(CURSOR_NAME_SIZE_MAX + 1)),
            Err(ErrorKind::LimitExceeded)
        );
        assert_eq!(kind(&"x".repeat(CURSOR_NAME_SIZE_MAX)), Ok(()));
        assert_eq!(kind("webhook.billing.redrive"), Ok(()));
        assert_eq!(cursor_key("orders.eu", "a.b"), "b3JkZXJzLmV1.YS5i");
    }
}
