//! The idempotent producer registry on JetStream: every topic's producers in
//! the R3 KV bucket [`PRODUCER_BUCKET`], changed only by revision
//! compare-and-set, with the embedded engine's rules and errors
//! (`stele_engine`'s `Topic::open_producer` and the registry's
//! `current_epoch`): a new name gets a new id with epoch 0, opening it again
//! bumps its epoch, which fences appends stamped with an older one.
//!
//! Three kinds of entries per topic (`<t>` is the topic's
//! [`crate::topics::token`]); every value starts with a `u16` format version,
//! 1, and all integers are little-endian:
//!
//! | key                      | value (version 1)                          | changed by |
//! |--------------------------|--------------------------------------------|------------|
//! | `<t>.next`               | `u64` next id, `u64` ids given in the topic | CAS, every new name |
//! | `<t>.id.<id in decimal>` | `u16` length, the name (UTF-8)              | written once, before its name entry |
//! | `<t>.name.<name token>`  | `u64` id, `u32` epoch                       | CAS, every open |
//!
//! A value that does not decode is [`Error::Corruption`]; another version is
//! `UnsupportedVersion`.
//!
//! Invariant: an id is never reused within a topic name, even after the topic
//! is deleted: the counter entry `<t>.next` outlives [`ProducerRegistry::delete_topic`]
//! (only its count of ids given restarts), and every id is taken from it by a
//! compare-and-set, so two servers never take the same one. An id taken by an
//! open that then lost the race for its name to another server is spent (its
//! id entry names a name whose entry holds another id, so it is unknown).
//! Unlike the engine, whose ids restart at 1 in a re-created topic, a zombie
//! producer of the deleted topic therefore cannot match a new producer's id.
//!
//! Invariant: [`ProducerRegistry::current_epoch`] reads by the bucket stream's
//! leader, so it never answers an epoch older than one an `open_producer`
//! returned: the name entry is acknowledged (a quorum, and the leader applied
//! it) before `open_producer` returns, and its id entry before it.
//!
//! The limit `PRODUCERS_COUNT_MAX` counts ids given since the topic's
//! creation: a lost race for a name spends one, so under such races a topic
//! may reach the limit a few names early, never late.

use bytes::Bytes;
use stele_engine::error::{Error, Result};
use stele_engine::event::{Epoch, ProducerId};
use stele_engine::format::{DecodeError, Reader};
use stele_engine::limits::{PRODUCER_NAME_SIZE_MAX, PRODUCERS_COUNT_MAX};

use crate::cursors::bucket::{Bucket, CAS_TRIES_MAX};
use crate::topics::token;
use stele_engine::journal::check_name;

/// The KV bucket of idempotent producers.
pub const PRODUCER_BUCKET: &str = "stele_producers";

/// The format version of the values this build writes and reads.
const PRODUCER_FORMAT_VERSION: u16 = 1;

/// The idempotent producers of every topic, in one cluster.
#[derive(Debug, Clone)]
pub struct ProducerRegistry {
    bucket: Bucket,
}

/// What the counter entry of a topic says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counter {
    /// The id the next new name gets (ids start at 1).
    next_id: u64,
    /// Ids given since the topic's creation.
    given_count: u64,
}

/// What a name entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Registered {
    id: ProducerId,
    epoch: Epoch,
}

fn counter_key(topic: &str) -> String {
    format!("{}.next", token(topic.as_bytes()))
}

fn id_key(topic: &str, id: ProducerId) -> String {
    format!("{}.id.{}", token(topic.as_bytes()), id.0)
}

fn name_key(topic: &str, name: &str) -> String {
    format!("{}.name.{}", token(topic.as_bytes()), token(name.as_bytes()))
}

fn version(reader: &mut Reader<'_>) -> std::result::Result<(), DecodeError> {
    let found = reader.u16()?;
    if found != PRODUCER_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion { found });
    }
    Ok(())
}

fn end(reader: &Reader<'_>) -> std::result::Result<(), DecodeError> {
    if reader.remaining() != 0 {
        return Err(DecodeError::Invalid("bytes after the last field"));
    }
    Ok(())
}

fn encode_counter(counter: Counter) -> Bytes {
    let mut bytes = Vec::with_capacity(18);
    bytes.extend_from_slice(&PRODUCER_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&counter.next_id.to_le_bytes());
    bytes.extend_from_slice(&counter.given_count.to_le_bytes());
    debug_assert_eq!(decode_counter(&bytes), Ok(counter));
    Bytes::from(bytes)
}

fn decode_counter(bytes: &[u8]) -> std::result::Result<Counter, DecodeError> {
    let mut reader = Reader::new(bytes);
    version(&mut reader)?;
    let counter = Counter {
        next_id: reader.u64()?,
        given_count: reader.u64()?,
    };
    end(&reader)?;
    if counter.next_id == 0 {
        return Err(DecodeError::Invalid("next producer id 0"));
    }
    Ok(counter)
}

fn encode_id(name: &str) -> Bytes {
    let mut bytes = Vec::with_capacity(4 + name.len());
    bytes.extend_from_slice(&PRODUCER_FORMAT_VERSION.to_le_bytes());
    let len = u16::try_from(name.len()).expect("a producer name is at most PRODUCER_NAME_SIZE_MAX bytes");
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(name.as_bytes());
    debug_assert_eq!(decode_id(&bytes).as_deref(), Ok(name));
    Bytes::from(bytes)
}

fn decode_id(bytes: &[u8]) -> std::result::Result<String, DecodeError> {
    let mut reader = Reader::new(bytes);
    version(&mut reader)?;
    let name = reader.str16(PRODUCER_NAME_SIZE_MAX)?.to_string();
    end(&reader)?;
    Ok(name)
}

fn encode_registered(registered: Registered) -> Bytes {
    let mut bytes = Vec::with_capacity(14);
    bytes.extend_from_slice(&PRODUCER_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&registered.id.0.to_le_bytes());
    bytes.extend_from_slice(&registered.epoch.0.to_le_bytes());
    debug_assert_eq!(decode_registered(&bytes), Ok(registered));
    Bytes::from(bytes)
}

fn decode_registered(bytes: &[u8]) -> std::result::Result<Registered, DecodeError> {
    let mut reader = Reader::new(bytes);
    version(&mut reader)?;
    let registered = Registered {
        id: ProducerId(reader.u64()?),
        epoch: Epoch(reader.u32()?),
    };
    end(&reader)?;
    if registered.id.0 == 0 {
        return Err(DecodeError::Invalid("producer id 0"));
    }
    Ok(registered)
}

impl ProducerRegistry {
    /// Opens the registry, creating its bucket (R3) when missing.
    ///
    /// # Errors
    /// I/O errors when JetStream does not answer.
    pub async fn open(connection: &crate::Connection) -> Result<ProducerRegistry> {
        Ok(ProducerRegistry {
            bucket: Bucket::open(connection, PRODUCER_BUCKET).await?,
        })
    }

    /// The decoded value at `key`, with the bucket's path for errors.
    fn decoded<T>(
        &self,
        key: &str,
        value: &[u8],
        decode: fn(&[u8]) -> std::result::Result<T, DecodeError>,
    ) -> Result<T> {
        decode(value).map_err(|reason| Error::Corruption {
            path: self.bucket.path(key),
            position: 0,
            reason,
        })
    }

    /// Registers producer `name` of `topic` (a new id, epoch 0) or re-opens
    /// it with its epoch bumped, by compare-and-set: concurrent opens of one
    /// name from several servers each get their own epoch.
    ///
    /// # Errors
    /// As the engine: [`Error::InvalidArgument`] for a bad topic or producer
    /// name; [`Error::LimitExceeded`] for a name above
    /// `PRODUCER_NAME_SIZE_MAX`, a new name beyond `PRODUCERS_COUNT_MAX`, an
    /// epoch or id that would overflow; then [`Error::Corruption`] for a
    /// stored value that does not decode, [`Error::Inconsistent`] for entries
    /// that disagree, and I/O errors (also after 1,000 (`CAS_TRIES_MAX`) lost races
    /// in a row).
    pub async fn open_producer(&self, topic: &str, name: &str) -> Result<(ProducerId, Epoch)> {
        stele_engine::validate_topic_name(topic)?;
        check_name(name, PRODUCER_NAME_SIZE_MAX, "producer")?;
        let key = name_key(topic, name);
        for _ in 0..CAS_TRIES_MAX {
            let latest = self.bucket.latest(&key).await?;
            let revision = latest.as_ref().map_or(0, |latest| latest.revision);
            let registered = match latest.and_then(|latest| latest.value) {
                Some(value) => {
                    let registered = self.decoded(&key, &value, decode_registered)?;
                    let Some(bumped) = registered.epoch.0.checked_add(1) else {
                        return Err(Error::LimitExceeded {
                            what: "producer epoch",
                            value: u64::from(registered.epoch.0) + 1,
                            max: u64::from(u32::MAX),
                        });
                    };
                    Registered {
                        id: registered.id,
                        epoch: Epoch(bumped),
                    }
                }
                None => {
                    let id = self.take_id(topic).await?;
                    // The id entry first: once the name entry hands the id
                    // out, `current_epoch` must find it.
                    let written = self
                        .bucket
                        .write(&id_key(topic, id), encode_id(name), 0, "register a producer")
                        .await?;
                    if written.is_none() {
                        return Err(Error::Inconsistent {
                            path: self.bucket.path(&id_key(topic, id)),
                            reason: format!(
                                "producer id {id}, just taken from the counter, already has an entry"
                            ),
                        });
                    }
                    Registered { id, epoch: Epoch(0) }
                }
            };
            if self
                .bucket
                .write(
                    &key,
                    encode_registered(registered),
                    revision,
                    "register a producer",
                )
                .await?
                .is_some()
            {
                return Ok((registered.id, registered.epoch));
            }
        }
        Err(crate::unavailable(
            "register a producer",
            format!("{CAS_TRIES_MAX} concurrent changes won in a row"),
        ))
    }

    /// Takes the next id of `topic` from its counter entry, by compare-and-set.
    async fn take_id(&self, topic: &str) -> Result<ProducerId> {
        let key = counter_key(topic);
        for _ in 0..CAS_TRIES_MAX {
            let latest = self.bucket.latest(&key).await?;
            let revision = latest.as_ref().map_or(0, |latest| latest.revision);
            let counter = match latest.and_then(|latest| latest.value) {
                Some(value) => self.decoded(&key, &value, decode_counter)?,
                None => Counter {
                    next_id: 1,
                    given_count: 0,
                },
            };
            if counter.given_count >= PRODUCERS_COUNT_MAX as u64 {
                return Err(Error::LimitExceeded {
                    what: "producers in the topic",
                    value: counter.given_count + 1,
                    max: PRODUCERS_COUNT_MAX as u64,
                });
            }
            let Some(next_id) = counter.next_id.checked_add(1) else {
                return Err(Error::LimitExceeded {
                    what: "producer id",
                    value: counter.next_id,
                    max: u64::MAX - 1,
                });
            };
            let taken = Counter {
                next_id,
                given_count: counter.given_count + 1,
            };
            if self
                .bucket
                .write(&key, encode_counter(taken), revision, "take a producer id")
                .await?
                .is_some()
            {
                return Ok(ProducerId(counter.next_id));
            }
        }
        Err(crate::unavailable(
            "take a producer id",
            format!("{CAS_TRIES_MAX} concurrent changes won in a row"),
        ))
    }

    /// The current epoch of producer `producer` of `topic`, read by the
    /// bucket stream's leader: never older than an epoch `open_producer`
    /// already returned. `None` when the id is unknown (never given, spent by
    /// a lost race, or its topic deleted).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad topic name; [`Error::Corruption`]
    /// for a value that does not decode; I/O errors.
    pub async fn current_epoch(&self, topic: &str, producer: ProducerId) -> Result<Option<Epoch>> {
        stele_engine::validate_topic_name(topic)?;
        let key = id_key(topic, producer);
        let Some(value) = self.bucket.latest(&key).await?.and_then(|latest| latest.value) else {
            return Ok(None);
        };
        let name = self.decoded(&key, &value, decode_id)?;
        let key = name_key(topic, &name);
        let Some(value) = self.bucket.latest(&key).await?.and_then(|latest| latest.value) else {
            return Ok(None);
        };
        let registered = self.decoded(&key, &value, decode_registered)?;
        Ok((registered.id == producer).then_some(registered.epoch))
    }

    /// Forgets every producer of `topic` (its deletion). The topic's counter
    /// entry stays, with its count of ids given reset, so that a topic
    /// created again under the name never hands out an id of this one.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad topic name; [`Error::Corruption`]
    /// for a counter that does not decode; I/O errors.
    pub async fn delete_topic(&self, topic: &str) -> Result<()> {
        stele_engine::validate_topic_name(topic)?;
        let topic_token = token(topic.as_bytes());
        // Names first: once a name is gone, no open hands out its id.
        self.bucket
            .purge(&format!("{topic_token}.name.*"), "delete a topic's producers")
            .await?;
        self.bucket
            .purge(&format!("{topic_token}.id.*"), "delete a topic's producers")
            .await?;
        let key = counter_key(topic);
        for _ in 0..CAS_TRIES_MAX {
            let Some(latest) = self.bucket.latest(&key).await? else {
                return Ok(());
            };
            let Some(value) = latest.value else {
                return Ok(());
            };
            let counter = self.decoded(&key, &value, decode_counter)?;
            if counter.given_count == 0 {
                return Ok(());
            }
            let reset = Counter {
                given_count: 0,
                ..counter
            };
            if self
                .bucket
                .write(
                    &key,
                    encode_counter(reset),
                    latest.revision,
                    "delete a topic's producers",
                )
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
        Err(crate::unavailable(
            "delete a topic's producers",
            format!("{CAS_TRIES_MAX} concurrent changes won in a row"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_values_round_trip_and_bad_ones_are_refused() {
        let counter = Counter {
            next_id: 7,
            given_count: 6,
        };
        assert_eq!(decode_counter(&encode_counter(counter)), Ok(counter));
        let registered = Registered {
            id: ProducerId(3),
            epoch: Epoch(u32::MAX),
        };
        let bytes = encode_registered(registered);
        assert_eq!(bytes.len(), 14);
        assert_eq!(decode_registered(&bytes), Ok(registered));
        assert_eq!(decode_id(&encode_id("ingest")).as_deref(), Ok("ingest"));

        assert_eq!(
            decode_registered(&[2, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        assert!(matches!(
            decode_registered(&bytes[..13]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(decode_registered(&longer), Err(DecodeError::Invalid(_))));
        assert!(matches!(
            decode_registered(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode_counter(&encode_counter(counter)[..17]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut long_name = vec![1, 0];
        long_name.extend_from_slice(&(PRODUCER_NAME_SIZE_MAX as u16 + 1).to_le_bytes());
        long_name.extend(std::iter::repeat_n(b'x', PRODUCER_NAME_SIZE_MAX + 1));
        assert!(matches!(
            decode_id(&long_name),
            Err(DecodeError::LengthOutOfBounds { .. })
        ));
        assert!(matches!(
            decode_id(&[1, 0, 1, 0, 0xff]),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn keys_of_one_topic_share_its_token_and_nothing_else() {
        assert_eq!(counter_key("orders"), "b3JkZXJz.next");
        assert_eq!(id_key("orders", ProducerId(12)), "b3JkZXJz.id.12");
        assert_eq!(name_key("orders", "a.b"), "b3JkZXJz.name.YS5i");
    }
}
