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
use stele_engine::config::TopicOptions;
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

/// The stream of partition `partition` of `topic`: `STELE_<token>_P<partition>`.
pub fn stream_name(topic: &str, partition: u32) -> String {
    format!("STELE_{}_P{partition}", token(topic.as_bytes()))
}

/// The subjects of a partition's stream: `stele.<token>.<partition>.>`.
pub fn partition_subjects(topic: &str, partition: u32) -> String {
    format!("stele.{}.{partition}.>", token(topic.as_bytes()))
}

/// One partition as the cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// The earliest offset still held (stream first sequence - 1).
    pub earliest: u64,
    /// One past the newest offset (the stream's last sequence).
    pub high_watermark: u64,
    /// Bytes the stream holds (one replica).
    pub size_bytes: u64,
}

/// The catalog of one cluster.
#[derive(Debug, Clone)]
pub struct TopicCatalog {
    jetstream: jetstream::Context,
    bucket: kv::Store,
}

/// The catalog entry of `key`, named as a path for errors.
fn catalog_path(key: &str) -> std::path::PathBuf {
    format!("nats:kv/{CATALOG_BUCKET}/{key}").into()
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
                bucket: CATALOG_BUCKET.to_string(),
                num_replicas: 3,
                history: 1,
                ..kv::Config::default()
            })
            .await
            .map_err(|error| unavailable("open the topic catalog", error))?;
        crate::until_reachable(&bucket)
            .await
            .map_err(|error| unavailable("reach the topic catalog", error))?;
        Ok(TopicCatalog { jetstream, bucket })
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
        for partition in 0..options.partitions {
            self.jetstream
                .get_or_create_stream(stream_config(name, partition, options))
                .await
                .map_err(|error| unavailable("create a partition stream", error))?;
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
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// The options of `name`.
    ///
    /// # Errors
    /// [`Error::TopicNotFound`]; [`Error::Corruption`] for an entry that does
    /// not decode; I/O errors.
    pub async fn options(&self, name: &str) -> Result<TopicOptions> {
        let entry = self
            .bucket
            .get(token(name.as_bytes()))
            .await
            .map_err(|error| unavailable("read the topic catalog", error))?
            .ok_or_else(|| Error::TopicNotFound(name.to_string()))?;
        let (stored, options) = topic_meta::decode(&entry).map_err(|reason| Error::Corruption {
            path: catalog_path(&token(name.as_bytes())),
            position: 0,
            reason,
        })?;
        if stored != name {
            return Err(Error::Inconsistent {
                path: catalog_path(&token(name.as_bytes())),
                reason: format!("the entry of topic {name:?} names {stored:?}"),
            });
        }
        Ok(options)
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
                path: catalog_path(&key),
                position: 0,
                reason,
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Each partition's offsets and size.
    ///
    /// # Errors
    /// As [`TopicCatalog::options`]; [`Error::Inconsistent`] when a partition's
    /// stream is missing.
    pub async fn partitions(&self, name: &str) -> Result<Vec<PartitionState>> {
        let options = self.options(name).await?;
        let mut states = Vec::with_capacity(options.partitions as usize);
        for partition in 0..options.partitions {
            let mut stream = self
                .jetstream
                .get_stream(stream_name(name, partition))
                .await
                .map_err(|error| Error::Inconsistent {
                    path: stream_name(name, partition).into(),
                    reason: format!("topic {name:?} partition {partition} has no stream: {error}"),
                })?;
            let info = stream
                .info()
                .await
                .map_err(|error| unavailable("read a partition stream", error))?;
            let state = &info.state;
            states.push(PartitionState {
                earliest: state
                    .first_sequence
                    .saturating_sub(1)
                    .max(if state.messages == 0 {
                        state.last_sequence
                    } else {
                        0
                    }),
                high_watermark: state.last_sequence,
                size_bytes: state.bytes,
            });
        }
        Ok(states)
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
            match self.jetstream.delete_stream(stream_name(name, partition)).await {
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
fn stream_config(topic: &str, partition: u32, options: &TopicOptions) -> stream::Config {
    stream::Config {
        name: stream_name(topic, partition),
        subjects: vec![partition_subjects(topic, partition)],
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
    }
}
