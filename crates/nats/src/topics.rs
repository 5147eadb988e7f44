//! The topic catalog on JetStream: each topic's options in the R3 KV bucket
//! [`CATALOG_BUCKET`] (the value is the engine's own `topic.meta` encoding,
//! FORMAT.md, so it is versioned like the file), and one R3 stream per
//! partition ([`stream_name`], subjects [`partition_subjects`]).
//!
//! Invariant: the catalog entry is the commit point. Creation makes the
//! partition streams first, then the entry (`create`, so one creator wins);
//! deletion removes the entry first, then the streams. A topic is listed and
//! described only through its entry, so a crash between the two steps leaves
//! at most streams without an entry, never an entry without streams.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use stele_engine::TopicUpdate;
use stele_engine::config::{TopicChange, TopicOptions};
use stele_engine::error::{Error, Result};
use stele_engine::format::topic_meta;

use crate::{Connection, unavailable};

/// The KV bucket of topic options.
pub const CATALOG_BUCKET: &str = "stele_topics";

use crate::REACHABLE_WAIT_MAX;

/// The base64url (unpadded) of `bytes`: a token valid in subjects, stream
/// names and KV keys (topic names may hold `.`, which separates subject tokens).
pub fn token(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stream of partition `partition` of `topic` in the default namespace:
/// `STELE_<token>_P<partition>`.
pub fn stream_name(topic: &str, partition: u32) -> String {
    Names::default().stream(topic, partition)
}

/// The subjects of a partition's stream in the default namespace:
/// `stele.<token>.<partition>.>`.
pub fn partition_subjects(topic: &str, partition: u32) -> String {
    Names::default().subjects(topic, partition)
}

/// The longest namespace.
pub const NAMESPACE_LEN_MAX: usize = 32;

/// The names of everything one Stele deployment keeps in a cluster. Several
/// deployments (or test servers) share a cluster in distinct namespaces: the
/// default one uses the names above; namespace `N` uses `STELE-N_...`
/// streams, `stele-N.` subjects and `<bucket>-N` buckets, which no other
/// namespace's names can equal (`-` never appears in the default prefix).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    namespace: Option<String>,
}

impl Names {
    /// The names of namespace `namespace` (`[A-Za-z0-9]`, at most
    /// [`NAMESPACE_LEN_MAX`]); the empty string is the default namespace.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for another character or a longer name.
    pub fn new(namespace: &str) -> Result<Names> {
        if namespace.is_empty() {
            return Ok(Names::default());
        }
        if namespace.len() > NAMESPACE_LEN_MAX || !namespace.bytes().all(|byte| byte.is_ascii_alphanumeric())
        {
            return Err(Error::InvalidArgument(format!(
                "NATS namespace {namespace:?}: use 1 to {NAMESPACE_LEN_MAX} ASCII letters and digits"
            )));
        }
        Ok(Names {
            namespace: Some(namespace.to_string()),
        })
    }

    /// The namespace; `None` for the default one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    /// The stream of a partition.
    pub fn stream(&self, topic: &str, partition: u32) -> String {
        match &self.namespace {
            None => format!("STELE_{}_P{partition}", token(topic.as_bytes())),
            Some(namespace) => format!("STELE-{namespace}_{}_P{partition}", token(topic.as_bytes())),
        }
    }

    /// The first subject token of every event subject.
    fn root(&self) -> String {
        match &self.namespace {
            None => "stele".to_string(),
            Some(namespace) => format!("stele-{namespace}"),
        }
    }

    /// The subjects of a partition's stream.
    pub fn subjects(&self, topic: &str, partition: u32) -> String {
        format!("{}.{}.{partition}.>", self.root(), token(topic.as_bytes()))
    }

    /// The subject of `key`'s events in a partition.
    pub fn subject(&self, topic: &str, partition: u32, key: &[u8]) -> String {
        format!(
            "{}.{}.{partition}.{}",
            self.root(),
            token(topic.as_bytes()),
            crate::message::key_token(key)
        )
    }

    /// A KV bucket: `base`, or `base-<namespace>`.
    pub fn bucket(&self, base: &str) -> String {
        match &self.namespace {
            None => base.to_string(),
            Some(namespace) => format!("{base}-{namespace}"),
        }
    }
}

/// The catalog of one cluster.
#[derive(Debug, Clone)]
pub struct TopicCatalog {
    jetstream: jetstream::Context,
    bucket: kv::Store,
    names: Names,
}

/// The catalog entry of `key`, named as a path for errors.
fn catalog_path(bucket: &str, key: &str) -> std::path::PathBuf {
    format!("nats:kv/{bucket}/{key}").into()
}

impl TopicCatalog {
    /// Opens the catalog, creating its bucket when missing.
    ///
    /// # Errors
    /// I/O errors when JetStream does not answer.
    pub async fn open(connection: &Connection) -> Result<TopicCatalog> {
        let jetstream = connection.jetstream.clone();
        let bucket = jetstream
            .create_key_value(kv::Config {
                bucket: connection.names.bucket(CATALOG_BUCKET),
                num_replicas: 3,
                history: 1,
                ..kv::Config::default()
            })
            .await
            .map_err(|error| unavailable("open the topic catalog", error))?;
        crate::until_reachable(&bucket)
            .await
            .map_err(|error| unavailable("reach the topic catalog", error))?;
        Ok(TopicCatalog {
            jetstream,
            bucket,
            names: connection.names.clone(),
        })
    }

    /// Creates `name` with `options`: its partition streams, then its entry.
    ///
    /// # Errors
    /// [`Error::TopicExists`]; [`Error::InvalidArgument`] or
    /// [`Error::LimitExceeded`] for a bad name or options; I/O errors.
    pub async fn create(&self, name: &str, options: &TopicOptions) -> Result<()> {
        stele_engine::validate_topic_name(name)?;
        options.validate()?;
        let key = token(name.as_bytes());
        if self
            .bucket
            .get(&key)
            .await
            .map_err(|error| unavailable("read the topic catalog", error))?
            .is_some()
        {
            return Err(Error::TopicExists(name.to_string()));
        }
        let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
        for partition in 0..options.partitions {
            // Idempotent, so tried again (bounded): a young or loaded cluster's
            // metadata leader may refuse a placement for a peer it briefly
            // sees offline.
            loop {
                match self
                    .jetstream
                    .get_or_create_stream(stream_config(&self.names, name, partition, options))
                    .await
                {
                    Ok(_) => break,
                    Err(error) if tokio::time::Instant::now() >= deadline => {
                        return Err(unavailable("create a partition stream", error));
                    }
                    Err(error) => {
                        tracing::debug!(%error, "creating a partition stream is tried again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        let meta = topic_meta::encode(name, options);
        let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
        loop {
            match self.bucket.create(&key, meta.clone().into()).await {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                    return Err(Error::TopicExists(name.to_string()));
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(unavailable("write the topic catalog", error));
                }
                Err(error) => {
                    tracing::debug!(%error, "writing a topic's catalog entry is tried again");
                    tokio::task::yield_now().await
                }
            }
        }
    }

    /// The options of `name`.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; [`Error::Corruption`] for an entry that does
    /// not decode; I/O errors.
    pub async fn options(&self, name: &str) -> Result<TopicOptions> {
        Ok(self.meta(name).await?.options)
    }

    /// The entry of `name`: its options, revision and change time.
    ///
    /// # Errors
    /// As [`TopicCatalog::options`].
    pub async fn meta(&self, name: &str) -> Result<topic_meta::TopicMeta> {
        stele_engine::validate_topic_name(name)?;
        let key = token(name.as_bytes());
        let found = self
            .bucket
            .get(&key)
            .await
            .map_err(|error| unavailable("read the topic catalog", error))?;
        let entry = match found {
            Some(entry) => entry,
            // The KV read went to any replica, which may not have applied a
            // creation just acknowledged elsewhere: only the leader can say
            // that the topic does not exist.
            None => self
                .leader_entry(&key)
                .await?
                .ok_or_else(|| Error::TopicNotFound(name.to_string()))?,
        };
        let meta = topic_meta::decode_meta(&entry).map_err(|reason| Error::Corruption {
            path: catalog_path(&self.names.bucket(CATALOG_BUCKET), &token(name.as_bytes())),
            position: 0,
            reason,
        })?;
        if meta.name != name {
            return Err(Error::Inconsistent {
                path: catalog_path(&self.names.bucket(CATALOG_BUCKET), &token(name.as_bytes())),
                reason: format!("the entry of topic {name:?} names {:?}", meta.name),
            });
        }
        Ok(meta)
    }

    /// Changes `name`'s options: retention becomes its partition streams'
    /// limits (applied by JetStream on every server at once), then the entry
    /// is replaced by a compare-and-set on its KV revision, with the topic's
    /// revision one more. The payload limit and the dedup window are read from
    /// the entry by a server when it loads the topic. Durability and segment
    /// size do not apply to JetStream streams: a change of either is refused.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for durability or segment size;
    /// [`Error::TopicNotFound`]; [`Error::InvalidArgument`] for a change that
    /// sets nothing; [`Error::Config`] or [`Error::LimitExceeded`] for bad
    /// values; [`Error::Unavailable`] when the cluster does not answer or other
    /// changes keep winning the compare-and-set.
    pub async fn update(&self, name: &str, change: &TopicChange) -> Result<TopicUpdate> {
        stele_engine::validate_topic_name(name)?;
        if change.durability.is_some() {
            return Err(Error::Unsupported(
                "durability does not apply on the NATS backend (JetStream replicates and syncs every stream)"
                    .to_string(),
            ));
        }
        if change.segment_size_bytes_max.is_some() {
            return Err(Error::Unsupported(
                "segment size does not apply on the NATS backend (JetStream owns the stream's files)"
                    .to_string(),
            ));
        }
        if change.is_empty() {
            return Err(Error::InvalidArgument("the change sets no option".to_string()));
        }
        // Not found is decided as reads decide it (the leader's word).
        self.options(name).await?;
        let key = token(name.as_bytes());
        let path = catalog_path(&self.names.bucket(CATALOG_BUCKET), &key);
        let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
        loop {
            let entry = self
                .bucket
                .entry(&key)
                .await
                .map_err(|error| unavailable("read the topic catalog", error))?
                .filter(|entry| entry.operation == kv::Operation::Put)
                .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
            let meta = topic_meta::decode_meta(&entry.value).map_err(|reason| Error::Corruption {
                path: path.clone(),
                position: 0,
                reason,
            })?;
            let previous = meta.options.clone();
            let options = change.apply_to(&previous);
            options.validate()?;
            if options == previous {
                return Ok(TopicUpdate {
                    previous,
                    options,
                    revision: meta.revision,
                    changed_ms: meta.changed_ms,
                });
            }
            if options.retention_age_ms != previous.retention_age_ms
                || options.retention_bytes != previous.retention_bytes
            {
                for partition in 0..options.partitions {
                    self.jetstream
                        .update_stream(stream_config(&self.names, name, partition, &options))
                        .await
                        .map_err(|error| unavailable("update a partition stream", error))?;
                }
            }
            let changed_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
            let next = topic_meta::TopicMeta {
                name: name.to_string(),
                options: options.clone(),
                revision: meta.revision + 1,
                changed_ms,
            };
            match self
                .bucket
                .update(&key, topic_meta::encode_meta(&next).into(), entry.revision)
                .await
            {
                Ok(_) => {
                    return Ok(TopicUpdate {
                        previous,
                        options,
                        revision: next.revision,
                        changed_ms,
                    });
                }
                Err(error) if tokio::time::Instant::now() >= deadline => {
                    return Err(unavailable("write the topic catalog", error));
                }
                Err(error) => {
                    // Another change won (or a replica was behind): read again.
                    tracing::debug!(%error, "a topic change is tried again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// The entry `key` as the catalog stream's leader has it: `None` when it
    /// was never written, or deleted or purged last.
    async fn leader_entry(&self, key: &str) -> Result<Option<bytes::Bytes>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let bucket = self.names.bucket(CATALOG_BUCKET);
        let stream = self
            .jetstream
            .get_stream_no_info(format!("KV_{bucket}"))
            .await
            .map_err(|error| unavailable("read the topic catalog", error))?;
        match stream
            .get_last_raw_message_by_subject(&format!("$KV.{bucket}.{key}"))
            .await
        {
            Ok(message) => {
                let removed = message
                    .headers
                    .get("KV-Operation")
                    .is_some_and(|operation| matches!(operation.as_str(), "DEL" | "PURGE"));
                Ok((!removed).then_some(message.payload))
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(unavailable("read the topic catalog", error)),
        }
    }

    /// Every topic, in name order.
    ///
    /// # Errors
    /// I/O errors; [`Error::Corruption`] for an entry that does not decode.
    pub async fn list(&self) -> Result<Vec<String>> {
        use futures_util::StreamExt;
        let mut keys = self
            .bucket
            .keys()
            .await
            .map_err(|error| unavailable("list the topic catalog", error))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|error| unavailable("list the topic catalog", error))?;
            let Some(entry) = self
                .bucket
                .get(&key)
                .await
                .map_err(|error| unavailable("read the topic catalog", error))?
            else {
                continue;
            };
            let (name, _) = topic_meta::decode(&entry).map_err(|reason| Error::Corruption {
                path: catalog_path(&self.names.bucket(CATALOG_BUCKET), &key),
                position: 0,
                reason,
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Deletes `name`: its entry, then its streams.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; I/O errors.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let options = self.options(name).await?;
        self.bucket
            .purge(token(name.as_bytes()))
            .await
            .map_err(|error| unavailable("write the topic catalog", error))?;
        for partition in 0..options.partitions {
            match self
                .jetstream
                .delete_stream(self.names.stream(name, partition))
                .await
            {
                Ok(_) => {}
                Err(error)
                    if matches!(error.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(inner)
                        if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) => {}
                Err(error) => return Err(unavailable("delete a partition stream", error)),
            }
        }
        Ok(())
    }
}

/// The stream of one partition: R3, file storage, atomic batches and direct
/// gets allowed, the topic's retention as the stream's limits.
fn stream_config(names: &Names, topic: &str, partition: u32, options: &TopicOptions) -> stream::Config {
    stream::Config {
        name: names.stream(topic, partition),
        subjects: vec![names.subjects(topic, partition)],
        num_replicas: 3,
        storage: stream::StorageType::File,
        allow_atomic_publish: true,
        allow_direct: true,
        max_age: options
            .retention_age_ms
            .map_or(Duration::ZERO, Duration::from_millis),
        max_bytes: options
            .retention_bytes
            .map_or(-1, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX)),
        ..stream::Config::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unpadded_base64url() {
        assert_eq!(token(b""), "");
        assert_eq!(token(b"f"), "Zg");
        assert_eq!(token(b"fo"), "Zm8");
        assert_eq!(token(b"foo"), "Zm9v");
        assert_eq!(token(b"orders.eu"), "b3JkZXJzLmV1");
        assert_eq!(token(&[0xfb, 0xff]), "-_8");
        assert_eq!(stream_name("orders.eu", 3), "STELE_b3JkZXJzLmV1_P3");
        assert_eq!(partition_subjects("orders.eu", 3), "stele.b3JkZXJzLmV1.3.>");
        let names = Names::new("t42").expect("a namespace");
        assert_eq!(names.stream("orders.eu", 3), "STELE-t42_b3JkZXJzLmV1_P3");
        assert_eq!(names.subjects("orders.eu", 3), "stele-t42.b3JkZXJzLmV1.3.>");
        assert_eq!(names.subject("orders", 2, b"k"), "stele-t42.b3JkZXJz.2.aw");
        assert_eq!(names.bucket(CATALOG_BUCKET), "stele_topics-t42");
        assert!(Names::new("a.b").is_err());
        assert!(Names::new(&"x".repeat(NAMESPACE_LEN_MAX + 1)).is_err());
        assert_eq!(Names::new("").expect("default"), Names::default());
    }
}
