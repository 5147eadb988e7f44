//! Partition ownership: a lease per partition in the R3 KV bucket
//! [`LEASE_BUCKET`], taken and renewed by revision compare-and-set.
//!
//! A lease's value says who holds it, since which acquisition (`epoch`) and
//! until when by the holder's wall clock (`until_ms`). A contender takes an
//! expired lease only once its own clock is [`CLOCK_SKEW_MAX`] past `until_ms`,
//! and a holder trusts its lease only until its monotonic clock, started
//! before the write that renewed it, passes the lease duration less the same
//! margin ([`Lease::is_valid`]). So while clocks agree within the margin, at
//! most one server believes it owns a partition; a paused holder (SIGSTOP)
//! wakes to an invalid lease because the monotonic clock ran on.
//!
//! Safety does not rest on this: every publish of a partition is fenced by
//! `Nats-Expected-Last-Sequence` (docs/design/nats-backend.md). Leases keep
//! one writer per partition for throughput, and keep zombies quiet.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use stele_engine::error::{Error, Result};

use crate::{Connection, unavailable};

/// The KV bucket of partition leases.
pub const LEASE_BUCKET: &str = "stele_owners";

/// How far apart two servers' wall clocks may be without two of them
/// believing they own one partition.
pub const CLOCK_SKEW_MAX: Duration = Duration::from_millis(500);

/// What a lease's value says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// The holding server's id (its advertised gRPC address, for forwarding).
    pub owner: String,
    /// Acquisitions of this partition so far, this one included.
    pub epoch: u64,
    /// Until when the lease holds, in Unix milliseconds by the holder's clock.
    pub until_ms: u64,
}

/// A lease this server holds.
#[derive(Debug, Clone)]
pub struct Lease {
    key: String,
    holder: Holder,
    revision: u64,
    valid_until: Instant,
}

impl Lease {
    /// Whether this server may still act as the owner (its monotonic clock).
    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// What the lease's value says.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }
}

/// The leases of one cluster.
#[derive(Debug, Clone)]
pub struct LeaseBucket {
    bucket: kv::Store,
    /// The bucket's stream, for reads by its leader: the KV API reads any
    /// replica (direct get), which may not have applied the latest change.
    stream: async_nats::jetstream::stream::Stream,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn encode(holder: &Holder) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(holder).expect("a Holder (strings and integers) serializes"))
}

impl LeaseBucket {
    /// Opens the bucket, creating it when missing.
    ///
    /// # Errors
    /// I/O errors when JetStream does not answer.
    pub async fn open(connection: &Connection) -> Result<LeaseBucket> {
        let bucket = connection
            .jetstream
            .create_key_value(kv::Config {
                bucket: LEASE_BUCKET.to_string(),
                num_replicas: 3,
                history: 1,
                ..kv::Config::default()
            })
            .await
            .map_err(|error| unavailable("open the lease bucket", error))?;
        crate::until_reachable(&bucket)
            .await
            .map_err(|error| unavailable("reach the lease bucket", error))?;
        let stream = connection
            .jetstream
            .get_stream(format!("KV_{LEASE_BUCKET}"))
            .await
            .map_err(|error| unavailable("open the lease bucket's stream", error))?;
        Ok(LeaseBucket { bucket, stream })
    }

    /// Who holds `key` now, if anyone ever did.
    ///
    /// # Errors
    /// I/O errors; [`Error::Inconsistent`] for a value that does not decode.
    pub async fn holder(&self, key: &str) -> Result<Option<(Holder, u64)>> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        // Read by the stream's leader, so that a change just acknowledged is seen.
        let message = match self
            .stream
            .get_last_raw_message_by_subject(&format!("$KV.{LEASE_BUCKET}.{key}"))
            .await
        {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(error) => return Err(unavailable("read a lease", error)),
        };
        if message.headers.get("KV-Operation").is_some() {
            // DEL or PURGE: nobody holds it.
            return Ok(None);
        }
        let holder = serde_json::from_slice(&message.payload).map_err(|error| Error::Inconsistent {
            path: format!("nats:kv/{LEASE_BUCKET}/{key}").into(),
            reason: format!("a lease value that does not decode: {error}"),
        })?;
        Ok(Some((holder, message.sequence)))
    }

    /// Takes the lease of `key` for `owner` for `duration` when nobody holds
    /// it or its holder's lease expired (by more than [`CLOCK_SKEW_MAX`]);
    /// `None` when another holds it, or won the race for it.
    ///
    /// # Errors
    /// I/O errors; [`Error::InvalidArgument`] for a duration not above twice
    /// the skew margin.
    pub async fn acquire(&self, key: &str, owner: &str, duration: Duration) -> Result<Option<Lease>> {
        check_duration(duration)?;
        let current = self.holder(key).await?;
        let epoch = match &current {
            Some((holder, _)) if now_ms() <= holder.until_ms + CLOCK_SKEW_MAX.as_millis() as u64 => {
                return Ok(None);
            }
            Some((holder, _)) => holder.epoch + 1,
            None => 1,
        };
        let started = Instant::now();
        let holder = Holder {
            owner: owner.to_string(),
            epoch,
            until_ms: now_ms() + duration.as_millis() as u64,
        };
        let written = match &current {
            Some((_, revision)) => {
                self.bucket
                    .update(key, encode(&holder), *revision)
                    .await
                    .map_err(|error| {
                        (
                            error.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            error.to_string(),
                        )
                    })
            }
            None => self.bucket.create(key, encode(&holder)).await.map_err(|error| {
                (
                    error.kind() == kv::CreateErrorKind::AlreadyExists,
                    error.to_string(),
                )
            }),
        };
        match written {
            Ok(revision) => Ok(Some(Lease {
                key: key.to_string(),
                holder,
                revision,
                valid_until: started + duration - CLOCK_SKEW_MAX,
            })),
            Err((true, _)) => Ok(None),
            Err((false, error)) => Err(unavailable("write a lease", error)),
        }
    }

    /// Extends `lease` by `duration` from now; `false` (and the lease is
    /// invalid from then on) when another server took it meanwhile.
    ///
    /// # Errors
    /// I/O errors; [`Error::InvalidArgument`] for a bad duration.
    pub async fn renew(&self, lease: &mut Lease, duration: Duration) -> Result<bool> {
        check_duration(duration)?;
        let started = Instant::now();
        let holder = Holder {
            until_ms: now_ms() + duration.as_millis() as u64,
            ..lease.holder.clone()
        };
        match self
            .bucket
            .update(&lease.key, encode(&holder), lease.revision)
            .await
        {
            Ok(revision) => {
                lease.holder = holder;
                lease.revision = revision;
                lease.valid_until = started + duration - CLOCK_SKEW_MAX;
                Ok(true)
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                lease.valid_until = started;
                Ok(false)
            }
            Err(error) => Err(unavailable("renew a lease", error)),
        }
    }

    /// Gives `lease` up at once (an expired value, written only if the lease
    /// is still ours), so that another server need not wait for it.
    ///
    /// # Errors
    /// I/O errors.
    pub async fn release(&self, lease: Lease) -> Result<()> {
        let holder = Holder {
            until_ms: 0,
            ..lease.holder
        };
        match self
            .bucket
            .update(&lease.key, encode(&holder), lease.revision)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(error) => Err(unavailable("release a lease", error)),
        }
    }
}

fn check_duration(duration: Duration) -> Result<()> {
    if duration <= 2 * CLOCK_SKEW_MAX {
        return Err(Error::InvalidArgument(format!(
            "a lease lasts more than {:?} (twice the clock skew margin)",
            2 * CLOCK_SKEW_MAX
        )));
    }
    Ok(())
}
