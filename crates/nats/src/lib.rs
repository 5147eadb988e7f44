//! Stele on a NATS JetStream cluster (issue 12, in progress).
//!
//! What is here: [`NatsConfig`] (the `--backend nats://H1,H2,H3` value),
//! [`connect`], which refuses a server older than [`SERVER_VERSION_MIN`] or
//! without JetStream, [`topics::TopicCatalog`]; and, behind the feature `test-cluster`,
//! [`cluster::Cluster`], a loopback cluster for tests. The `Backend` over
//! JetStream is not built yet, so nothing here is reachable from `stele serve`.
//! The design it follows, and what tests on a real 3-node cluster showed of
//! the JetStream primitives it relies on, is `docs/design/nats-backend.md`.

pub mod backend;
#[cfg(feature = "test-cluster")]
pub mod cluster;
pub mod cursors;
pub mod lease;
pub mod message;
pub mod producers;
pub mod read;
pub mod topics;
pub mod writer;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The oldest nats-server Stele runs on: 2.12 brought atomic batch publish,
/// which multi-event appends need.
pub const SERVER_VERSION_MIN: Version = Version {
    major: 2,
    minor: 12,
    patch: 0,
};

/// How long a just-created stream or bucket may stay unreachable ("no
/// responders" while the server learns its subjects) before that is an error.
pub const REACHABLE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// A JetStream request that failed: [`stele_engine::Error::Unavailable`]
/// (UNAVAILABLE to clients, who retry).
pub(crate) fn unavailable(what: &'static str, error: impl std::fmt::Display) -> stele_engine::Error {
    stele_engine::Error::Unavailable {
        what,
        reason: error.to_string(),
    }
}

/// Waits (at most [`REACHABLE_WAIT_MAX`]) until `bucket` answers a read: right
/// after its creation, the server a client talks to may not know it yet.
///
/// # Errors
/// The last read's error, when the bucket does not answer in time.
pub(crate) async fn until_reachable(
    bucket: &async_nats::jetstream::kv::Store,
) -> Result<(), async_nats::jetstream::kv::EntryError> {
    let deadline = tokio::time::Instant::now() + REACHABLE_WAIT_MAX;
    loop {
        match bucket.entry("stele-reachable").await {
            Ok(_) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => return Err(error),
            Err(_) => tokio::task::yield_now().await,
        }
    }
}

/// A nats-server version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = NatsError;

    /// Parses `2.15.1`, also with a pre-release or build suffix (`2.12.0-RC.1`).
    fn from_str(text: &str) -> Result<Version, NatsError> {
        let core = text
            .trim_start_matches('v')
            .split(['-', '+'])
            .next()
            .unwrap_or_default();
        let mut parts = core.split('.').map(str::parse::<u32>);
        let bad = || NatsError::BadVersion(text.to_string());
        let mut next = || parts.next().and_then(Result::ok).ok_or_else(bad);
        Ok(Version {
            major: next()?,
            minor: next()?,
            patch: next()?,
        })
    }
}

/// How to reach the cluster: the value of `--backend nats://H1,H2,H3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// One URL per seed server (`nats://` or `tls://`, with a port).
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// PEM CA certificates to trust for `tls://` servers.
    pub ca_cert: Option<PathBuf>,
    /// The namespace of this deployment's streams and buckets (empty: the default).
    pub namespace: String,
}

impl FromStr for NatsConfig {
    type Err = NatsError;

    /// `nats://H1:P1,H2:P2,H3` or with a scheme per server; a host without a
    /// port gets 4222.
    fn from_str(text: &str) -> Result<NatsConfig, NatsError> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| NatsError::BadUrl(format!("{text:?} has no scheme; use nats://HOST:PORT,...")))?;
        if scheme != "nats" && scheme != "tls" {
            return Err(NatsError::BadUrl(format!(
                "unknown scheme {scheme:?}; use nats:// or tls://"
            )));
        }
        let mut servers = Vec::new();
        for part in rest.split(',') {
            let part = part.trim();
            let (scheme, host) = match part.split_once("://") {
                Some((scheme, host)) => (scheme, host),
                None => (scheme, part),
            };
            if host.is_empty() || host.contains('/') {
                return Err(NatsError::BadUrl(format!("bad server {part:?} in {text:?}")));
            }
            let host = if host
                .rsplit_once(':')
                .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
            {
                host.to_string()
            } else {
                format!("{host}:4222")
            };
            servers.push(format!("{scheme}://{host}"));
        }
        Ok(NatsConfig {
            servers,
            credentials: None,
            ca_cert: None,
            namespace: String::new(),
        })
    }
}

/// Why the cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The `--backend` value is malformed.
    #[error("invalid NATS URL: {0}")]
    BadUrl(String),
    /// The server reported a version that does not parse.
    #[error("unreadable nats-server version {0:?}")]
    BadVersion(String),
    /// The server is older than [`SERVER_VERSION_MIN`].
    #[error("nats-server {found} is older than {min}, the oldest Stele runs on (atomic batch publish)")]
    ServerTooOld {
        /// The server's version.
        found: Version,
        /// [`SERVER_VERSION_MIN`].
        min: Version,
    },
    /// The server has JetStream off.
    #[error("JetStream is not enabled on the NATS server")]
    JetStreamDisabled,
    /// JetStream is on but did not answer (no metadata leader yet, a timeout).
    #[error("JetStream does not answer: {0}")]
    JetStreamUnavailable(String),
    /// Connecting failed.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
}

/// A connection to a cluster that passed the checks.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The NATS client.
    pub client: async_nats::Client,
    /// The JetStream context.
    pub jetstream: async_nats::jetstream::Context,
    /// The version of the server connected to.
    pub server_version: Version,
    /// The names of this deployment's streams and buckets.
    pub names: topics::Names,
}

/// Connects and checks the server: at least [`SERVER_VERSION_MIN`], JetStream on.
///
/// # Errors
/// [`NatsError`].
pub async fn connect(config: &NatsConfig) -> Result<Connection, NatsError> {
    let names =
        topics::Names::new(&config.namespace).map_err(|error| NatsError::BadUrl(error.to_string()))?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| NatsError::Connect(format!("credentials {}: {error}", path.display())))?;
    }
    if let Some(path) = &config.ca_cert {
        options = options.add_root_certificates(path.clone()).require_tls(true);
    }
    let client = options
        .connect(config.servers.as_slice())
        .await
        .map_err(|error| NatsError::Connect(error.to_string()))?;
    let info = client.server_info();
    let server_version: Version = info.version.parse()?;
    if server_version < SERVER_VERSION_MIN {
        return Err(NatsError::ServerTooOld {
            found: server_version,
            min: SERVER_VERSION_MIN,
        });
    }
    if !info.jetstream {
        return Err(NatsError::JetStreamDisabled);
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    jetstream
        .query_account()
        .await
        .map_err(|error| NatsError::JetStreamUnavailable(error.to_string()))?;
    Ok(Connection {
        client,
        jetstream,
        server_version,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        let version = |text: &str| text.parse::<Version>().expect(text);
        assert_eq!(
            version("2.15.1"),
            Version {
                major: 2,
                minor: 15,
                patch: 1
            }
        );
        assert_eq!(
            version("v2.12.0-RC.1"),
            Version {
                major: 2,
                minor: 12,
                patch: 0
            }
        );
        assert!(version("2.11.9") < SERVER_VERSION_MIN);
        assert!(version("2.12.0") >= SERVER_VERSION_MIN);
        assert!(version("3.0.0") > SERVER_VERSION_MIN);
        assert!("2.x.1".parse::<Version>().is_err());
        assert!("2.10".parse::<Version>().is_err());
    }

    #[test]
    fn backend_urls_list_every_seed_with_a_port() {
        let config: NatsConfig = "nats://h1,h2:4333,tls://h3:4444".parse().expect("parse");
        assert_eq!(
            config.servers,
            vec!["nats://h1:4222", "nats://h2:4333", "tls://h3:4444"]
        );
        assert!("h1,h2".parse::<NatsConfig>().is_err());
        assert!("http://h1".parse::<NatsConfig>().is_err());
        assert!("nats://h1,,h2".parse::<NatsConfig>().is_err());
    }
}
