//! The `stele` command: run a server, talk to one, and check a data directory.
//!
//! It holds no engine logic: `serve` configures and starts
//! [`stele::server::RunningServer`], the client commands use the typed client
//! [`stele::client::Client`], and `verify` calls [`stele::verify::verify_dir`].
//! Exit codes are decided in one place, [`exit_code`] (a client error's by its
//! [`stele::ErrorKind`]), and listed in `--help`.
//!
//! Every duration flag takes humantime's grammar (`500ms`, `2s`, `1h`, `7d`);
//! every size flag takes a number and an optional unit (`4096`, `64KiB`, `1GB`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use stele::Sequence;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;
use stele::civil::days_from_civil;
use stele::client::{Client, ClientError, GrpcCode, PartitionDescription, TopicSettings};
use stele::config::{
    DEDUP_WINDOW_MS_DEFAULT, PARTITIONS_COUNT_DEFAULT, SEGMENT_SIZE_BYTES_MAX_DEFAULT,
    SYNC_INTERVAL_MS_DEFAULT,
};
use stele::server::tls::{ClientAuth, TlsConfig};
use stele::server::{PORT_DEFAULT, RunningServer, ServerConfig};
use stele::wire::proto;
use stele::{
    AppendAck, AppendRequest, CursorPosition, Direction, Durability, ErrorKind, Event, ExpectedSequence,
    Offset, PartitionId, TopicOptions,
};

use output::{escape, print_event, print_json};

// glibc malloc spent a fifth of the server's CPU (and more of the load
// generator's) in allocation and consolidation under per-message protobuf
// work; mimalloc's thread-local free lists make those paths cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "stele/backup.rs"]
mod backup;
#[path = "stele/export.rs"]
mod export;
#[path = "stele/group.rs"]
mod group;
#[path = "stele/import.rs"]
mod import;
#[path = "stele/output.rs"]
mod output;
#[path = "stele/progress.rs"]
mod progress;
#[path = "stele/repair.rs"]
mod repair;
#[path = "stele/tail.rs"]
mod tail;
#[path = "stele/token.rs"]
mod token;
#[path = "stele/topic_alter.rs"]
mod topic_alter;
#[path = "stele/webhook.rs"]
mod webhook;

const CLI_HELP: &str = "\
Server URLs (--url, STELE_URL) take a scheme: http:// speaks plaintext gRPC, https:// speaks
TLS (rustls, server certificates checked against Mozilla's roots); a URL without a scheme
is a usage error, and an https URL never falls back to plaintext.

Output is text for people, or with --json one JSON object per line on stdout. In JSON a
byte field (key, payload, idempotency_id, header values, key_prefix) is a string when the
bytes are valid UTF-8, else an object {\"base64\": \"...\"} (standard alphabet, padded).
In text, control characters from the server (ESC and the other C0 and C1 controls, DEL,
bidirectional controls) are printed as escapes (\\x1b, \\n, \\u{202e}), and bytes that
are not UTF-8 as base64:...

Errors go to stderr as `error: MESSAGE (CODE)`; with --json as one JSON object instead:
{\"error\": {\"kind\": \"server\", \"exit_code\": 4, \"message\": \"...\",
 \"grpc_code\": \"NOT_FOUND\", \"grpc_code_number\": 5, \"code\": \"CURSOR_NOT_FOUND\",
 \"code_number\": 17, \"detail\": {}}}
kind is usage, unreachable, failed or server; the gRPC and Stele codes are null when the
server gave none; detail holds the fields the server set (actual_sequence, earliest_offset,
high_watermark, limit_name, ...).

Exit codes:
  0  success; `verify` found no problems
  1  `verify` found problems, or the operation failed
  2  usage error: bad arguments or configuration (also INVALID_ARGUMENT from the server)
  3  conflict: FAILED_PRECONDITION (wrong expected sequence, cursor moving backwards, ...),
     ALREADY_EXISTS (topic, webhook or group exists), ABORTED (producer fenced, consume
     member replaced)
  4  not found: unknown topic, cursor, webhook or group
  5  server unavailable: connection refused, failed TLS handshake, UNAVAILABLE, server
     shutting down
  6  denied: UNAUTHENTICATED (no valid token or certificate) or PERMISSION_DENIED (a
     grant is missing)";

const READ_HELP: &str = "\
Without --key and --partition, read prints every partition of the topic one after the
other: partition 0 in offset order up to its high watermark, then partition 1, and so on.
Each partition stops at the high watermark it had when its first events were read, so
read always ends; --count bounds the events printed over all partitions. Use `stele tail`
to follow a topic live, or `read --key` for one key's history in sequence order.";

const URL_DEFAULT: &str = "http://127.0.0.1:7077";
const DATA_DIR_DEFAULT: &str = "./stele-data";
const LOG_LEVEL_DEFAULT: &str = "info";

/// Stele: an append-only event log. Run a server, append, read, tail, consume in
/// groups, manage topics, cursors and groups, and check a data directory offline.
#[derive(Debug, Parser)]
#[command(name = "stele", version, after_help = CLI_HELP, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (gRPC) on a data directory.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Append events to one key of a topic.
    Append(AppendArgs),
    /// Read a topic's partitions (or one) up to their high watermarks, or a key's history.
    #[command(after_help = READ_HELP)]
    Read(ReadArgs),
    /// Follow a topic live (catch up, then wait for new events), reconnecting after
    /// a server restart; Ctrl-C stops.
    #[command(after_help = tail::TAIL_HELP)]
    Tail(tail::TailArgs),
    /// Commit, get, list and delete named consumer cursors.
    #[command(subcommand)]
    Cursor(CursorCommand),
    /// Create, list, describe, delete and seek consumer groups; list and redrive
    /// their parked events.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Join a consumer group and print each event delivered to this member (as
    /// `tail` does), acking it; reconnects by itself; Ctrl-C stops.
    #[command(after_help = group::CONSUME_HELP)]
    Consume(group::ConsumeArgs),
    /// Check a data directory offline and report every problem with file and position.
    Verify(VerifyArgs),
    /// Deliver a topic's events to HTTP endpoints (Standard Webhooks), manage dead letters,
    /// and run a test receiver.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Issue, list and revoke tokens (servers run with --auth required).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Drive a running server with load scenarios; one JSON line per run and per median.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Have the server write a consistent backup of everything it stores, while it
    /// takes writes (full, or incremental from an earlier backup).
    #[command(after_help = backup::BACKUP_HELP)]
    Backup(backup::BackupArgs),
    /// Rebuild a data directory from a backup, offline: check every checksum, copy, verify.
    #[command(after_help = backup::RESTORE_HELP)]
    Restore(backup::RestoreArgs),
    /// Write a topic's events (keys, types, payloads, headers, ids) as JSON lines.
    #[command(after_help = export::EXPORT_HELP)]
    Export(export::ExportArgs),
    /// Append an export to a topic, keeping keys, per-key order, sequences and ids;
    /// importing the same file again adds nothing.
    #[command(after_help = import::IMPORT_HELP)]
    Import(import::ImportArgs),
    /// Offline: cut a damaged (quarantined) partition at its last good append call,
    /// moving the cut bytes aside into DIR/repair/ (see docs/runbooks/corruption-detected.md).
    Repair(repair::RepairArgs),
}

const BENCH_HELP: &str = "\
Scenarios: pipelined (single-event appends, many in flight per AppendSession stream),
batched (AppendSession requests of --batch events), sequential (one unary append in
flight, compared with an fdatasync probe in --fsync-probe-dir), cas (one append in flight
per key expecting its previous sequence, then a stale expectation must be refused),
dedup (idempotency ids, every 10th event sent twice), read (Subscribe from the earliest
event until CaughtUp), group (a consumer group from the earliest event, --concurrency
members with a window of --in-flight, acking every delivery until every settle is confirmed),
group-baseline (the same events through --concurrency plain subscriptions). Each run
creates a fresh topic. Without --count each scenario takes its own default (pipelined,
cas, dedup, group, group-baseline 200000; batched, read 1000000; sequential 2000).
The exit code is 1 when a correctness check of a line is false (stale_check.rejected,
sequences_ok, dedup_ok, read_ok, group_ok).";

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Events per scenario run [default: per scenario, see below].
    #[arg(long)]
    count: Option<u64>,
    /// Payload size per event, e.g. 100 or 1KiB (a bare number is bytes).
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(100))]
    size: ByteSize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// AppendSession streams, each on its own connection; group members and
    /// group-baseline subscriptions.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests in flight per stream (pipelined, dedup; batched uses a sixteenth);
    /// each group member's window.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Events per request in batched (and when filling read's topic; single-event
    /// appends per request when filling the group scenarios' topics).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Partitions of each fresh topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Runs per scenario; each run is printed, then the median run.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Scenario: all, or one of pipelined, batched, sequential, cas, dedup, read,
    /// group, group-baseline, and partitions (not in all: it creates --topics ×
    /// --topic-partitions partitions) (comma-separated for several).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Durability of the fresh topics.
    #[arg(long, value_enum, default_value_t = BenchDurability::Always)]
    durability: BenchDurability,
    /// Run every scenario with both durabilities (always, then none).
    #[arg(long)]
    both: bool,
    /// Directory for the fdatasync probe of `sequential`: put it on the server's data filesystem.
    #[arg(long, value_name = "DIR", default_value = ".")]
    fsync_probe_dir: PathBuf,
    /// How long the fdatasync probe runs, e.g. 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    fsync_probe_time: std::time::Duration,
    /// read: pause per received message, e.g. 20ms or 500us (a slow consumer).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    slow_consumer: Option<std::time::Duration>,
    /// read, group-baseline: most events per subscription message.
    #[arg(long, default_value_t = 10_000)]
    read_batch: u32,
    /// The server's process id: report its memory (/proc/PID/status) with every run.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// `partitions`: topics to create, each of --topic-partitions partitions.
    #[arg(long, default_value_t = 100)]
    topics: usize,
    /// `partitions`: partitions of each topic it creates.
    #[arg(long, default_value_t = 100)]
    topic_partitions: u32,
    /// The load generator's own runtime: `multi` (tokio's work-stealing
    /// runtime, a worker per core) or `current` (one thread: a lone appender
    /// pays no thread hand-offs in the client).
    #[arg(long, value_name = "RUNTIME", default_value = "multi", value_parser = ["multi", "current"])]
    runtime: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchDurability {
    Always,
    None,
}

const SERVE_HELP: &str = "\
Configuration comes from flags, then environment variables, then the TOML file given
with --config (keys are the long flag names, e.g. `data-dir = \"/var/lib/stele\"`,
`retention-age = \"7d\"`, `auto-create = false`), then the defaults shown above.
Durations take a unit (100ms, 30s, 2m, 12h, 7d, 1w; a bare number other than 0 is
refused); sizes take an optional unit (4096 bytes, 64KiB, 128MiB, 10GiB, 1GB). SIGINT or SIGTERM shuts down gracefully.
With --metrics-listen (or `metrics-listen = \"127.0.0.1:9187\"`), Prometheus metrics are
served at http://ADDR/metrics on that separate port; deploy/ has a Grafana dashboard and
alert rules, docs/runbooks/ what to do when an alert fires.
With --tls-cert and --tls-key (PEM files) both listeners speak TLS (https://, also for
metrics); with --tls-client-ca clients must present a certificate of that CA (mTLS), or
may with --tls-client-auth optional. The files are reloaded when they change (checked
every second) and on SIGHUP; open connections keep their certificate, and a failed reload
is logged and keeps the previous one.
With --auth required every call needs a token (`stele token generate` makes the first one,
for --bootstrap-token-file) or a registered client certificate; health never does,
reflection needs any valid credential and /metrics one with the grant metrics:*. README,
\"Security\", has the whole model.";

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "STELE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (created if missing).
    #[arg(long, env = "STELE_DATA_DIR", value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
    data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, env = "STELE_LISTEN", value_name = "ADDR",
          default_value_t = SocketAddr::from(([127, 0, 0, 1], PORT_DEFAULT)))]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9187 [default: off].
    #[arg(long, env = "STELE_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key) [default: plaintext].
    #[arg(long, env = "STELE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "STELE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Ask clients for a certificate signed by a CA in this PEM file (mTLS; needs --tls-cert).
    #[arg(long, env = "STELE_TLS_CLIENT_CA", value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: whether a client certificate is required [default: required].
    #[arg(long, env = "STELE_TLS_CLIENT_AUTH", value_enum)]
    tls_client_auth: Option<ClientAuthArg>,
    /// Do not create unknown topics on first append [default: topics are auto-created].
    #[arg(long, env = "STELE_NO_AUTO_CREATE")]
    no_auto_create: bool,
    /// Partitions of topics created without explicit settings.
    #[arg(long, env = "STELE_PARTITIONS", value_name = "N", default_value_t = PARTITIONS_COUNT_DEFAULT)]
    partitions: u32,
    /// When appends are acknowledged: after fdatasync (always), after a periodic sync
    /// (interval), or never synced by Stele (none).
    #[arg(long, env = "STELE_DURABILITY", value_enum, default_value_t = DurabilityArg::Always)]
    durability: DurabilityArg,
    /// With --durability interval: the longest time between syncs.
    #[arg(long, env = "STELE_SYNC_INTERVAL", value_name = "DURATION",
          default_value_t = Millis(SYNC_INTERVAL_MS_DEFAULT))]
    sync_interval: Millis,
    /// How long idempotency ids are remembered.
    #[arg(long, env = "STELE_DEDUP_WINDOW", value_name = "DURATION",
          default_value_t = Millis(DEDUP_WINDOW_MS_DEFAULT))]
    dedup_window: Millis,
    /// Delete sealed segments whose newest event is older than this [default: keep forever].
    #[arg(long, env = "STELE_RETENTION_AGE", value_name = "DURATION")]
    retention_age: Option<Millis>,
    /// Delete the oldest sealed segments while a partition is larger [default: no limit].
    #[arg(long, env = "STELE_RETENTION_BYTES", value_name = "SIZE")]
    retention_bytes: Option<ByteSize>,
    /// Roll the active segment at this size.
    #[arg(long, env = "STELE_SEGMENT_SIZE", value_name = "SIZE",
          default_value_t = ByteSize(SEGMENT_SIZE_BYTES_MAX_DEFAULT))]
    segment_size: ByteSize,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG
    /// applies when this flag is not given.
    #[arg(long, env = "STELE_LOG_LEVEL", value_name = "LEVEL", default_value = LOG_LEVEL_DEFAULT)]
    log_level: String,
    /// Log lines as text (coloured only on a terminal) or as JSON, one object per line.
    #[arg(long, env = "STELE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Load and check the configuration (flags, environment, --config file) as serve does
    /// before it opens anything, print the effective configuration as JSON (secrets left
    /// out) and exit; certificate and key files are read only when serving.
    #[arg(long)]
    check_config: bool,
    /// Networks (CIDR or address) webhooks may target although they are private,
    /// loopback or otherwise internal; repeat or separate with commas [default: none,
    /// so only public addresses]. For local development: 127.0.0.0/8.
    #[arg(long, env = "STELE_WEBHOOK_ALLOW", value_name = "CIDR", value_delimiter = ',')]
    webhook_allow: Vec<String>,
    /// Threads that run every partition's background work (group commit under
    /// durability always, seals, dedup upkeep, sync timers, housekeeping),
    /// shared by all partitions [default: 0, eight per core and at least 16].
    #[arg(long, env = "STELE_WORKER_THREADS", value_name = "N", default_value_t = 0)]
    worker_threads: usize,
    /// Webhook requests in flight at once over all endpoints.
    #[arg(long, env = "STELE_WEBHOOK_IN_FLIGHT", value_name = "N",
          default_value_t = stele::server::webhook::IN_FLIGHT_MAX_DEFAULT)]
    webhook_in_flight: usize,
    /// Timeout of a webhook request for endpoints created without their own.
    #[arg(long, env = "STELE_WEBHOOK_TIMEOUT", value_name = "DURATION",
          default_value_t = Millis(stele::server::webhook::store::defaults::TIMEOUT_MS))]
    webhook_timeout: Millis,
    /// Whether calls need a credential: none (anyone who reaches the port may do
    /// everything: for a laptop) or required (a token or a registered client certificate).
    #[arg(long, env = "STELE_AUTH", value_enum, value_name = "MODE", default_value_t = AuthArg::None)]
    auth: AuthArg,
    /// File holding the first administrator's token (made with `stele token generate`),
    /// stored with every grant when no token exists yet; STELE_BOOTSTRAP_TOKEN may hold
    /// the token itself instead.
    #[arg(long, env = "STELE_BOOTSTRAP_TOKEN_FILE", value_name = "FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// Audit log of admin and token operations and of every refused call: off, stderr,
    /// or a file (JSON lines) [default: stderr with --auth required, else off].
    #[arg(long, env = "STELE_AUDIT_LOG", value_name = "TARGET")]
    audit_log: Option<String>,
    /// Store events on a NATS JetStream cluster instead of the data directory, e.g.
    /// nats://h1:4222,h2:4222,h3:4222 (README, "Running on a NATS JetStream cluster");
    /// the data directory then holds only this server's tokens and webhook definitions
    /// [default: the embedded engine].
    #[arg(long, env = "STELE_BACKEND", value_name = "URL")]
    backend: Option<String>,
    /// With --backend: a NATS credentials file (JWT and nkey seed).
    #[arg(long, env = "STELE_NATS_CREDENTIALS", value_name = "FILE")]
    nats_credentials: Option<PathBuf>,
    /// With --backend: PEM CA certificates to trust for tls:// servers.
    #[arg(long, env = "STELE_NATS_CA_CERT", value_name = "FILE")]
    nats_ca_cert: Option<PathBuf>,
    /// With --backend: a namespace (letters and digits) for this deployment's streams
    /// and buckets, so that several deployments share one cluster [default: none].
    #[arg(long, env = "STELE_NATS_NAMESPACE", value_name = "NAME")]
    nats_namespace: Option<String>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AuthArg {
    None,
    Required,
}

/// `stele serve`'s TOML file: every key is optional and named like its flag.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    metrics_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_client_auth: Option<String>,
    auto_create: Option<bool>,
    partitions: Option<u32>,
    durability: Option<String>,
    sync_interval: Option<Scalar>,
    dedup_window: Option<Scalar>,
    retention_age: Option<Scalar>,
    retention_bytes: Option<Scalar>,
    segment_size: Option<Scalar>,
    log_level: Option<String>,
    log_format: Option<String>,
    webhook_allow: Option<Vec<String>>,
    webhook_in_flight: Option<usize>,
    webhook_timeout: Option<Scalar>,
    worker_threads: Option<usize>,
    auth: Option<String>,
    bootstrap_token_file: Option<PathBuf>,
    audit_log: Option<String>,
    backend: Option<String>,
    nats_credentials: Option<PathBuf>,
    nats_ca_cert: Option<PathBuf>,
    nats_namespace: Option<String>,
}

/// A TOML value given either as a string with a unit or as a bare number.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
enum Scalar {
    Number(u64),
    Text(String),
}

impl Scalar {
    fn parse<T: FromStr<Err = String>>(&self, key: &str) -> Result<T, CliError> {
        let text = match self {
            Scalar::Number(number) => number.to_string(),
            Scalar::Text(text) => text.clone(),
        };
        text.parse()
            .map_err(|error| CliError::Usage(format!("configuration key {key}: {error}")))
    }
}

/// `--tls-client-auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ClientAuthArg {
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    Always,
    Interval,
    None,
}

impl fmt::Display for DurabilityArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DurabilityArg::Always => "always",
            DurabilityArg::Interval => "interval",
            DurabilityArg::None => "none",
        })
    }
}

impl DurabilityArg {
    /// The durability; an interval of 0 is the server's default interval.
    fn durability(self, interval_ms: u64) -> Durability {
        match self {
            DurabilityArg::Always => Durability::Always,
            DurabilityArg::Interval => Durability::Interval { interval_ms },
            DurabilityArg::None => Durability::None,
        }
    }
}

/// A duration in milliseconds, written with a unit: `100ms`, `30s`, `2m`, `12h`, `7d`, `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Millis(u64);

const DURATION_UNITS: &[(&str, u64)] = &[
    ("w", 7 * 24 * 3_600_000),
    ("d", 24 * 3_600_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a duration in humantime's grammar (`500us`, `2s`, `1h 30m`, `7d`);
/// only `0` may go without a unit.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        format!("invalid duration {text:?}: use a number and a unit (ms, s, m, h, d, w), e.g. 2m")
    })
}

impl FromStr for Millis {
    type Err = String;
    fn from_str(text: &str) -> Result<Millis, String> {
        let duration = parse_duration(text)?;
        if duration.subsec_nanos() % 1_000_000 != 0 {
            return Err(format!(
                "invalid duration {text:?}: not a whole number of milliseconds"
            ));
        }
        u64::try_from(duration.as_millis())
            .map(Millis)
            .map_err(|_| format!("invalid duration {text:?}: too long"))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        // Days read better than weeks (7d, not 1w).
        let (unit, factor) = DURATION_UNITS
            .iter()
            .filter(|(unit, _)| *unit != "w")
            .find(|(_, factor)| self.0.is_multiple_of(*factor))
            .copied()
            .unwrap_or(("ms", 1));
        write!(f, "{}{unit}", self.0 / factor)
    }
}

/// A size in bytes, with an optional unit: `4096`, `64KiB`, `128MiB`, `10GiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ByteSize(u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("tib", 1 << 40),
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("tb", 1_000_000_000_000),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1000),
    ("b", 1),
    ("", 1),
];

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let bad = || {
            format!(
                "invalid size {text:?}: use a number and an optional unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            )
        };
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let unit = unit.trim().to_ascii_lowercase();
        let (_, factor) = SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(bad)?;
        number.checked_mul(*factor).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, factor) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= factor && self.0.is_multiple_of(factor) {
                return write!(f, "{}{unit}", self.0 / factor);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// How to reach the server, and the output format.
#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print one JSON object per line instead of text, and errors as JSON on stderr.
    #[arg(long)]
    json: bool,
}

/// How to reach and authenticate to the server.
#[derive(Debug, Clone, Args)]
struct ConnectArgs {
    /// Server URL: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS).
    #[arg(long, env = "STELE_URL", default_value = URL_DEFAULT, value_parser = parse_url)]
    url: String,
    /// Bearer token for servers run with --auth required (prefer STELE_TOKEN or
    /// --token-file: a flag is visible to other local users in the process list).
    #[arg(long, env = "STELE_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "STELE_TOKEN_FILE", value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) to check the server's certificate against, instead of
    /// Mozilla's roots (https:// only).
    #[arg(long, env = "STELE_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate for servers that ask for one (mTLS); needs --client-key.
    #[arg(long, env = "STELE_CLIENT_CERT", value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, env = "STELE_CLIENT_KEY", value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
}

impl ConnectArgs {
    /// The client's options: the token and the TLS files, read now.
    fn options(&self) -> Result<stele::client::ConnectOptions, CliError> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|error| CliError::Usage(format!("cannot read {what} {}: {error}", path.display())))
        };
        let mut options = stele::client::ConnectOptions::default();
        if let Some(token) = &self.token {
            options.token = Some(token.trim().to_string());
        }
        if let Some(path) = &self.token_file {
            let text = String::from_utf8(read(path, "token file")?)
                .map_err(|_| CliError::Usage(format!("token file {} is not text", path.display())))?;
            options.token = Some(text.trim().to_string());
        }
        if let Some(path) = &self.ca_cert {
            options.ca_cert_pem = Some(read(path, "CA certificate")?);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            options.client_identity_pem = Some((read(cert, "client certificate")?, read(key, "client key")?));
        }
        Ok(options)
    }

    /// The load generator's target.
    fn target(&self) -> Result<stele::loadgen::Target, CliError> {
        Ok(stele::loadgen::Target {
            url: self.url.clone(),
            options: self.options()?,
        })
    }
}

/// Checks a server URL: an http or https scheme and a host.
fn parse_url(text: &str) -> Result<String, String> {
    let uri: tonic::codegen::http::Uri = text
        .parse()
        .map_err(|error| format!("invalid URL {text:?}: {error}"))?;
    match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") => {}
        Some(scheme) => {
            return Err(format!(
                "URL {text:?} has the scheme {scheme:?}: use http:// (plaintext) or https:// (TLS)"
            ));
        }
        None => {
            return Err(format!(
                "URL {text:?} has no scheme: write http://{text} (plaintext) or https://{text} (TLS)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("URL {text:?} has no host"));
    }
    Ok(text.to_string())
}

#[derive(Debug, Subcommand)]
enum TopicCommand {
    /// Create a topic; unset options take the server's defaults.
    Create {
        name: String,
        #[command(flatten)]
        settings: TopicSettingsArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topic names.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a topic's settings and each partition's offsets, size, segments and keys.
    Describe {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a topic and all its data.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a live topic's retention, dedup window, durability, segment size or
    /// payload limit (the partition count is fixed: make a new topic and copy with
    /// `stele export` / `stele import`).
    Alter(topic_alter::AlterArgs),
}

#[derive(Debug, Args)]
struct TopicSettingsArgs {
    /// Partitions, fixed for the topic's life (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    partitions: Option<u32>,
    /// When appends are acknowledged.
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// With --durability interval: the longest time between syncs (e.g. 100ms).
    #[arg(long, value_name = "DURATION")]
    sync_interval: Option<Millis>,
    /// Delete sealed segments older than this (e.g. 7d).
    #[arg(long, value_name = "DURATION")]
    retention_age: Option<Millis>,
    /// Delete the oldest sealed segments while a partition is larger (e.g. 10GiB).
    #[arg(long, value_name = "SIZE")]
    retention_bytes: Option<ByteSize>,
    /// How long idempotency ids are remembered (e.g. 2m).
    #[arg(long, value_name = "DURATION")]
    dedup_window: Option<Millis>,
    /// Roll the active segment at this size (e.g. 128MiB).
    #[arg(long, value_name = "SIZE")]
    segment_size: Option<ByteSize>,
}

#[derive(Debug, Args)]
struct AppendArgs {
    topic: String,
    key: String,
    /// The payload; without it (and without --file) the payload is read from stdin.
    payload: Option<String>,
    /// The event type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,
    /// The key's last sequence the append expects: any, none (no events yet) or a number.
    #[arg(long, value_name = "any|none|N", default_value = "any")]
    expect: Expect,
    /// Idempotency id; with several events, event i gets ID-i.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// A header NAME=VALUE (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<String>,
    /// Read the payload from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "payload")]
    file: Option<PathBuf>,
    /// One event per line of the input (file or stdin), all in one atomic append call.
    #[arg(long, conflicts_with = "payload")]
    lines: bool,
    /// One append call per line of the input (file or stdin).
    #[arg(long, conflicts_with_all = ["payload", "lines"])]
    each: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Any,
    NoEvents,
    Exact(u64),
}

impl FromStr for Expect {
    type Err = String;
    fn from_str(text: &str) -> Result<Expect, String> {
        match text {
            "any" => Ok(Expect::Any),
            "none" => Ok(Expect::NoEvents),
            number => number
                .parse()
                .map(Expect::Exact)
                .map_err(|_| format!("expected any, none or a sequence number, got {number:?}")),
        }
    }
}

impl Expect {
    fn expected(self) -> ExpectedSequence {
        match self {
            Expect::Any => ExpectedSequence::Any,
            Expect::NoEvents => ExpectedSequence::NoEvents,
            Expect::Exact(sequence) => ExpectedSequence::Exact(Sequence(sequence)),
        }
    }
}

#[derive(Debug, Args)]
struct ReadArgs {
    topic: String,
    /// The partition to read [default: every partition, one after the other].
    #[arg(long, value_name = "P", conflicts_with = "key")]
    partition: Option<u32>,
    /// First offset to read in each partition read [default: the earliest retained];
    /// without --partition, partitions that end at or before it print nothing.
    #[arg(long, value_name = "OFFSET", conflicts_with = "key")]
    from: Option<u64>,
    /// Read this key's history instead of a partition.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// With --key: the first sequence (forwards, default 0) or the last (backwards,
    /// default the newest).
    #[arg(long, value_name = "S", requires = "key")]
    from_sequence: Option<u64>,
    /// With --key: newest first.
    #[arg(long, requires = "key")]
    backwards: bool,
    /// Most events to print in all [default: up to the high watermarks; 1000 with --key].
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
enum CursorCommand {
    /// Commit a cursor's next offsets: P=OFFSET for each partition to move.
    Commit {
        topic: String,
        name: String,
        #[arg(value_name = "P=OFFSET", required = true)]
        offsets: Vec<String>,
        /// Allow moving a partition backwards (replay).
        #[arg(long)]
        allow_backwards: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A cursor's committed offsets and lag.
    Get {
        topic: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every cursor of a topic, with lag.
    List {
        topic: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a cursor.
    Delete {
        topic: String,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The data directory.
    dir: PathBuf,
    /// Print one JSON object per problem and note, then a summary object.
    #[arg(long)]
    json: bool,
}

/// Why a command failed; [`exit_code`] maps each to the documented exit code.
#[derive(Debug)]
enum CliError {
    /// Bad arguments or configuration.
    Usage(String),
    /// A call to the server failed: the server's error, or no server to talk to.
    Client(ClientError),
    /// The server could not be reached.
    Unreachable(String),
    /// Anything else that went wrong.
    Failed(String),
}

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> CliError {
        CliError::Client(error)
    }
}

/// The stable name of a Stele error code number (`CURSOR_NOT_FOUND`); `None`
/// for 0 and for numbers this build does not know.
fn error_code_name(number: u32) -> Option<&'static str> {
    let code = proto::ErrorCode::try_from(i32::try_from(number).ok()?).ok()?;
    (code != proto::ErrorCode::Unspecified).then(|| stele::wire::status::error_name(code))
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Unreachable(message) | CliError::Failed(message) => {
                f.write_str(message)
            }
            CliError::Client(ClientError::Status {
                code,
                error_code,
                message,
                ..
            }) => match error_code.and_then(error_code_name) {
                Some(name) => write!(f, "{message} ({name})"),
                None => write!(f, "{message} (gRPC {code:?})"),
            },
            CliError::Client(error) => write!(f, "{error}"),
        }
    }
}

/// The `--json` error object (see `stele --help`).
#[derive(Serialize)]
struct ErrorJson<'a> {
    kind: &'static str,
    exit_code: u8,
    message: String,
    grpc_code: Option<&'static str>,
    grpc_code_number: Option<i32>,
    code: Option<&'static str>,
    code_number: Option<u32>,
    detail: output::DetailJson<'a>,
}

impl CliError {
    /// What `--json` calls the failure: usage, unreachable, failed or server.
    fn kind_name(&self) -> &'static str {
        match self {
            CliError::Usage(_) | CliError::Client(ClientError::InvalidUrl { .. }) => "usage",
            CliError::Unreachable(_)
            | CliError::Client(ClientError::Connect { .. } | ClientError::Transport { .. }) => "unreachable",
            CliError::Client(ClientError::Status { .. }) => "server",
            CliError::Failed(_) | CliError::Client(_) => "failed",
        }
    }

    /// The error as the one JSON object `--json` prints on stderr (see `stele --help`).
    fn to_json(&self) -> serde_json::Value {
        let mut error = ErrorJson {
            kind: self.kind_name(),
            exit_code: exit_code(self),
            message: match self {
                CliError::Client(ClientError::Status { message, .. }) => message.clone(),
                other => other.to_string(),
            },
            grpc_code: None,
            grpc_code_number: None,
            code: None,
            code_number: None,
            detail: output::DetailJson::default(),
        };
        if let CliError::Client(status @ ClientError::Status { code, error_code, .. }) = self {
            error.grpc_code = Some(code.name());
            error.grpc_code_number = Some(code.number());
            error.code = error_code.and_then(error_code_name);
            error.code_number = *error_code;
            if let Some(details) = status.details() {
                error.detail = output::DetailJson::of(details);
            }
        }
        json!({ "error": output::to_json(&error) })
    }
}

/// Prints a failure on stderr: as text, or as one JSON object with `--json`.
fn report(error: &CliError, json_output: bool) {
    if json_output {
        eprintln!("{}", output::json_line(&error.to_json()));
    } else {
        eprintln!("error: {}", escape(&error.to_string()));
    }
}

/// Whether the command that was parsed asked for `--json`.
fn json_requested(matches: &ArgMatches) -> bool {
    let mut current = matches;
    // Bounded by the depth of the subcommand tree.
    loop {
        if let Ok(Some(true)) = current.try_get_one::<bool>("json") {
            return true;
        }
        match current.subcommand() {
            Some((_, next)) => current = next,
            None => return false,
        }
    }
}

/// The one place that decides exit codes (listed in `stele --help`): a
/// client error's by its error kind.
fn exit_code(error: &CliError) -> u8 {
    match error {
        CliError::Usage(_) => EXIT_USAGE,
        CliError::Unreachable(_) => EXIT_UNAVAILABLE,
        CliError::Failed(_) => EXIT_FAILED,
        CliError::Client(error) => match (error, error.kind()) {
            (_, Some(kind)) => exit_code_of_kind(kind),
            (ClientError::InvalidUrl { .. }, None) => EXIT_USAGE,
            (ClientError::Connect { .. } | ClientError::Transport { .. }, None) => EXIT_UNAVAILABLE,
            // A status without an engine kind: the codes only the wire layer
            // raises, and statuses from outside Stele (a proxy, tonic itself).
            (ClientError::Status { code, .. }, None) => exit_code_of_grpc(*code),
            (_, None) => EXIT_FAILED,
        },
    }
}

/// The exit code of a server error of kind `kind`. Every kind is listed, so a
/// new one does not compile until it has its exit code.
fn exit_code_of_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Config
        | ErrorKind::InvalidArgument
        | ErrorKind::LimitExceeded
        | ErrorKind::RepeatedIdempotencyId
        | ErrorKind::UnknownProducer => EXIT_USAGE,
        ErrorKind::TopicExists
        | ErrorKind::WebhookExists
        | ErrorKind::GroupExists
        | ErrorKind::DeliveryStale
        | ErrorKind::MemberReplaced
        | ErrorKind::DestinationNotEmpty
        | ErrorKind::Unsupported
        | ErrorKind::WrongExpectedSequence
        | ErrorKind::PartialDuplicate
        | ErrorKind::IdempotencyIdReused
        | ErrorKind::ProducerFenced
        | ErrorKind::ProducerOutOfOrder
        | ErrorKind::CursorBackwards
        | ErrorKind::CursorAheadOfHighWatermark => EXIT_CONFLICT,
        ErrorKind::TopicNotFound
        | ErrorKind::CursorNotFound
        | ErrorKind::WebhookNotFound
        | ErrorKind::GroupNotFound => EXIT_NOT_FOUND,
        ErrorKind::Poisoned | ErrorKind::Locked | ErrorKind::Closed | ErrorKind::Unavailable => {
            EXIT_UNAVAILABLE
        }
        ErrorKind::Io
        | ErrorKind::DiskFull
        | ErrorKind::Corruption
        | ErrorKind::Inconsistent
        | ErrorKind::Quarantined
        | ErrorKind::OffsetOutOfRange => EXIT_FAILED,
    }
}

/// The exit code of a status that names no engine kind, by its gRPC code, as
/// `--help` lists them; for every kind it agrees with [`exit_code_of_kind`]
/// (a unit test checks it over the table of error codes).
fn exit_code_of_grpc(code: GrpcCode) -> u8 {
    match code {
        GrpcCode::InvalidArgument => EXIT_USAGE,
        GrpcCode::FailedPrecondition | GrpcCode::AlreadyExists | GrpcCode::Aborted => EXIT_CONFLICT,
        GrpcCode::NotFound => EXIT_NOT_FOUND,
        GrpcCode::Unavailable => EXIT_UNAVAILABLE,
        GrpcCode::Unauthenticated | GrpcCode::PermissionDenied => EXIT_DENIED,
        _ => EXIT_FAILED,
    }
}

/// The exit codes `stele --help` lists.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFLICT: u8 = 3;
const EXIT_NOT_FOUND: u8 = 4;
const EXIT_UNAVAILABLE: u8 = 5;
const EXIT_DENIED: u8 = 6;

/// Exit code of a clean `verify`, and of `verify` finding problems.
const EXIT_OK: u8 = 0;
const EXIT_PROBLEMS: u8 = 1;

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => usage_failure(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => usage_failure(error),
    };
    let json_output = json_requested(&matches);
    let serve_matches = matches.subcommand_matches("serve");
    let result = match cli.command {
        Command::Serve(args) => serve(args, serve_matches.expect("the serve subcommand was parsed")),
        Command::Verify(args) => verify(&args),
        Command::Bench(args) => bench(args),
        Command::Restore(args) => backup::restore(&args),
        Command::Repair(args) => repair::repair(&args),
        command => client_command(command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            report(&error, json_output);
            ExitCode::from(exit_code(&error))
        }
    }
}

/// Exits after a command line clap refused: clap's own message and exit code 2,
/// or the JSON error object when `--json` is among the arguments. Help and
/// version requests print as usual.
fn usage_failure(error: clap::Error) -> ! {
    use clap::error::ErrorKind as ClapKind;
    let informational = matches!(
        error.kind(),
        ClapKind::DisplayHelp | ClapKind::DisplayVersion | ClapKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let json_output = std::env::args_os()
        .skip(1)
        .take_while(|argument| argument != "--")
        .any(|argument| argument == "--json");
    if informational || !json_output {
        error.exit();
    }
    let message = error.render().to_string();
    // The first paragraph; the rest is a pointer to --help.
    let message = message.trim().trim_start_matches("error: ");
    let message = message.split("\n\n").next().unwrap_or(message);
    report(&CliError::Usage(message.to_string()), true);
    std::process::exit(i32::from(exit_code(&CliError::Usage(String::new()))));
}

// ---------------------------------------------------------------------------
// serve

/// The resolved configuration of `stele serve`.
struct ServeConfig {
    server: ServerConfig,
    log_filter: String,
    log_format: LogFormat,
    /// `--check-config`: print `effective` and exit.
    check_only: bool,
    /// The effective configuration keyed like the TOML file, secrets left out:
    /// logged at start, printed by `--check-config`.
    effective: serde_json::Value,
    /// `--backend`: a NATS JetStream cluster instead of the embedded engine.
    backend: Option<stele_nats::NatsConfig>,
}

/// Whether an argument was given on the command line or in the environment.
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Flags and environment first, then the file, then the default.
fn pick<T>(matches: &ArgMatches, id: &str, argument: T, file: Option<T>) -> T {
    if given(matches, id) {
        argument
    } else {
        file.unwrap_or(argument)
    }
}

/// The security settings: flags, then the environment, then the file.
fn resolve_auth(
    args: &ServeArgs,
    matches: &ArgMatches,
    file: &FileConfig,
) -> Result<stele::server::auth::AuthConfig, CliError> {
    use stele::server::auth::{AuthConfig, AuthMode, audit::AuditTarget};
    let file_auth = file
        .auth
        .as_deref()
        .map(|text| {
            AuthArg::from_str(text, true).map_err(|_| {
                CliError::Usage(format!(
                    "configuration key auth: {text:?} is not none or required"
                ))
            })
        })
        .transpose()?;
    let mode = match pick(matches, "auth", args.auth, file_auth) {
        AuthArg::None => AuthMode::None,
        AuthArg::Required => AuthMode::Required,
    };
    let token_file = pick(
        matches,
        "bootstrap_token_file",
        args.bootstrap_token_file.clone(),
        file.bootstrap_token_file.clone().map(Some),
    );
    let bootstrap_token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|error| {
                    CliError::Usage(format!("cannot read bootstrap token {}: {error}", path.display()))
                })?
                .trim()
                .to_string(),
        ),
        None => std::env::var("STELE_BOOTSTRAP_TOKEN")
            .ok()
            .map(|token| token.trim().to_string())
            .filter(|token| !token.is_empty()),
    };
    let audit = match pick(
        matches,
        "audit_log",
        args.audit_log.clone(),
        file.audit_log.clone().map(Some),
    ) {
        Some(text) => text
            .parse::<AuditTarget>()
            .map_err(|error| CliError::Usage(format!("--audit-log: {error}")))?,
        None if mode == AuthMode::Required => AuditTarget::Stderr,
        None => AuditTarget::Off,
    };
    Ok(AuthConfig {
        mode,
        bootstrap_token,
        audit,
    })
}

fn resolve_serve(args: ServeArgs, matches: &ArgMatches) -> Result<ServeConfig, CliError> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                CliError::Usage(format!("cannot read configuration {}: {error}", path.display()))
            })?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|error| CliError::Usage(format!("configuration {}: {error}", path.display())))?
        }
        None => FileConfig::default(),
    };
    let parse = |value: &Option<Scalar>, key: &str| -> Result<Option<Millis>, CliError> {
        value.as_ref().map(|value| value.parse(key)).transpose()
    };
    let parse_size = |value: &Option<Scalar>, key: &str| -> Result<Option<ByteSize>, CliError> {
        value.as_ref().map(|value| value.parse(key)).transpose()
    };
    let auth = resolve_auth(&args, matches, &file)?;
    let file_listen = file
        .listen
        .as_deref()
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|error| CliError::Usage(format!("configuration key listen: {text:?}: {error}")))
        })
        .transpose()?;
    let file_metrics_listen = file
        .metrics_listen
        .as_deref()
        .map(|text| {
            text.parse::<SocketAddr>().map(Some).map_err(|error| {
                CliError::Usage(format!("configuration key metrics-listen: {text:?}: {error}"))
            })
        })
        .transpose()?;
    let file_durability = file
        .durability
        .as_deref()
        .map(|text| {
            DurabilityArg::from_str(text, true).map_err(|_| {
                CliError::Usage(format!(
                    "configuration key durability: {text:?} is not always, interval or none"
                ))
            })
        })
        .transpose()?;
    let data_dir = pick(matches, "data_dir", args.data_dir, file.data_dir);
    let listen = pick(matches, "listen", args.listen, file_listen);
    let metrics_listen = pick(
        matches,
        "metrics_listen",
        args.metrics_listen,
        file_metrics_listen,
    );
    let file_client_auth = file
        .tls_client_auth
        .as_deref()
        .map(|text| {
            ClientAuthArg::from_str(text, true).map_err(|_| {
                CliError::Usage(format!(
                    "configuration key tls-client-auth: {text:?} is not required or optional"
                ))
            })
        })
        .transpose()?;
    let tls = resolve_tls(
        pick(matches, "tls_cert", args.tls_cert, file.tls_cert.map(Some)),
        pick(matches, "tls_key", args.tls_key, file.tls_key.map(Some)),
        pick(
            matches,
            "tls_client_ca",
            args.tls_client_ca,
            file.tls_client_ca.map(Some),
        ),
        pick(
            matches,
            "tls_client_auth",
            args.tls_client_auth,
            file_client_auth.map(Some),
        ),
    )?;
    let backend = match pick(matches, "backend", args.backend, file.backend.map(Some)) {
        None => None,
        Some(url) => {
            let mut config: stele_nats::NatsConfig = url
                .parse()
                .map_err(|error: stele_nats::NatsError| CliError::Usage(format!("--backend: {error}")))?;
            config.credentials = pick(
                matches,
                "nats_credentials",
                args.nats_credentials,
                file.nats_credentials.map(Some),
            );
            config.ca_cert = pick(
                matches,
                "nats_ca_cert",
                args.nats_ca_cert,
                file.nats_ca_cert.map(Some),
            );
            config.namespace = pick(
                matches,
                "nats_namespace",
                args.nats_namespace,
                file.nats_namespace.map(Some),
            )
            .unwrap_or_default();
            stele_nats::topics::Names::new(&config.namespace)
                .map_err(|error| CliError::Usage(format!("--nats-namespace: {error}")))?;
            Some(config)
        }
    };
    let auto_create = if given(matches, "no_auto_create") {
        !args.no_auto_create
    } else {
        file.auto_create.unwrap_or(true)
    };
    let partitions = pick(matches, "partitions", args.partitions, file.partitions);
    let durability = pick(matches, "durability", args.durability, file_durability);
    let sync_interval = pick(
        matches,
        "sync_interval",
        args.sync_interval,
        parse(&file.sync_interval, "sync-interval")?,
    );
    let dedup_window = pick(
        matches,
        "dedup_window",
        args.dedup_window,
        parse(&file.dedup_window, "dedup-window")?,
    );
    let retention_age = pick(
        matches,
        "retention_age",
        args.retention_age,
        parse(&file.retention_age, "retention-age")?.map(Some),
    );
    let retention_bytes = pick(
        matches,
        "retention_bytes",
        args.retention_bytes,
        parse_size(&file.retention_bytes, "retention-bytes")?.map(Some),
    );
    let segment_size = pick(
        matches,
        "segment_size",
        args.segment_size,
        parse_size(&file.segment_size, "segment-size")?,
    );
    let log_level = pick(matches, "log_level", args.log_level, file.log_level);
    let log_filter = match std::env::var("RUST_LOG") {
        Ok(filter)
            if !filter.is_empty() && matches.value_source("log_level") != Some(ValueSource::CommandLine) =>
        {
            filter
        }
        _ => log_directive(&log_level),
    };
    let file_log_format = file
        .log_format
        .as_deref()
        .map(|text| {
            LogFormat::from_str(text, true).map_err(|_| {
                CliError::Usage(format!(
                    "configuration key log-format: {text:?} is not text or json"
                ))
            })
        })
        .transpose()?;
    let log_format = pick(matches, "log_format", args.log_format, file_log_format);
    let default_topic = TopicOptions {
        partitions,
        durability: match durability {
            DurabilityArg::Always => Durability::Always,
            DurabilityArg::Interval => Durability::Interval {
                interval_ms: sync_interval.0,
            },
            DurabilityArg::None => Durability::None,
        },
        dedup_window_ms: dedup_window.0,
        retention_age_ms: retention_age.map(|age| age.0),
        retention_bytes: retention_bytes.map(|size| size.0),
        segment_size_bytes_max: segment_size.0,
        ..TopicOptions::default()
    };
    default_topic
        .validate()
        .map_err(|error| CliError::Usage(format!("invalid topic defaults: {error}")))?;
    let webhook_allow = pick(matches, "webhook_allow", args.webhook_allow, file.webhook_allow)
        .iter()
        .map(|text| {
            text.parse::<stele::server::webhook::ssrf::Network>()
                .map_err(|error| CliError::Usage(format!("--webhook-allow: {error}")))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let webhook_in_flight = pick(
        matches,
        "webhook_in_flight",
        args.webhook_in_flight,
        file.webhook_in_flight,
    );
    let webhook_timeout = pick(
        matches,
        "webhook_timeout",
        args.webhook_timeout,
        parse(&file.webhook_timeout, "webhook-timeout")?,
    );
    if webhook_in_flight == 0 || webhook_timeout.0 == 0 {
        return Err(CliError::Usage(
            "--webhook-in-flight and --webhook-timeout must be above 0".to_string(),
        ));
    }
    let worker_threads = pick(
        matches,
        "worker_threads",
        args.worker_threads,
        file.worker_threads,
    );
    if worker_threads > stele::limits::WORKER_THREADS_MAX {
        return Err(CliError::Usage(format!(
            "--worker-threads {worker_threads} is above the limit of {}",
            stele::limits::WORKER_THREADS_MAX
        )));
    }
    let mut server = ServerConfig::new(data_dir);
    server.worker_threads = worker_threads;
    server.webhooks = stele::server::webhook::WebhookConfig {
        allow: webhook_allow,
        in_flight_max: webhook_in_flight,
        timeout_default_ms: webhook_timeout.0,
    };
    server.auth = auth;
    server.listen = listen;
    server.metrics_listen = metrics_listen;
    server.tls = tls;
    server.auto_create_topics = auto_create;
    server.default_topic = default_topic;
    let effective = effective_config(&server, backend.as_ref(), &log_filter, log_format);
    Ok(ServeConfig {
        server,
        log_filter,
        log_format,
        check_only: args.check_config,
        effective,
        backend,
    })
}

/// A `--log-level` word applies to Stele's own crates while every other crate
/// (h2, hyper, tonic, rustls, async-nats) stays at `warn`, so that `debug` is
/// Stele's story and not HTTP/2 frames; anything else is a tracing directive,
/// taken as written.
fn log_directive(level: &str) -> String {
    const OWN_CRATES: [&str; 6] = [
        "stele",
        "stele_engine",
        "stele_wire",
        "stele_server",
        "stele_client",
        "stele_nats",
    ];
    match level {
        "error" => "error".to_string(),
        "warn" | "info" | "debug" | "trace" => {
            let mut directive = "warn".to_string();
            for name in OWN_CRATES {
                directive.push_str(&format!(",{name}={level}"));
            }
            directive
        }
        _ => level.to_string(),
    }
}

/// The configuration `stele serve` runs with, keyed like the TOML file; the
/// bootstrap token is only said to be set.
fn effective_config(
    server: &ServerConfig,
    backend: Option<&stele_nats::NatsConfig>,
    log_filter: &str,
    log_format: LogFormat,
) -> serde_json::Value {
    use stele::server::auth::{AuthMode, audit::AuditTarget};
    let path = |path: Option<&PathBuf>| path.map(|path| path.display().to_string());
    let topic = &server.default_topic;
    let tls = server.tls.as_ref();
    json!({
        "data-dir": server.data_dir.display().to_string(),
        "backend": backend.map(|nats| nats.servers.join(",")),
        "nats-credentials": path(backend.and_then(|nats| nats.credentials.as_ref())),
        "nats-ca-cert": path(backend.and_then(|nats| nats.ca_cert.as_ref())),
        "nats-namespace": backend.map(|nats| nats.namespace.clone()),
        "listen": server.listen.to_string(),
        "metrics-listen": server.metrics_listen.map(|address| address.to_string()),
        "tls-cert": path(tls.map(|tls| &tls.cert)),
        "tls-key": path(tls.map(|tls| &tls.key)),
        "tls-client-ca": path(tls.and_then(|tls| tls.client_ca.as_ref())),
        "tls-client-auth": tls.and_then(|tls| tls.client_ca.as_ref().map(|_| match tls.client_auth {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        })),
        "auth": match server.auth.mode {
            AuthMode::None => "none",
            AuthMode::Required => "required",
        },
        "bootstrap-token-file": server.auth.bootstrap_token.as_ref().map(|_| "(set; not shown)"),
        "audit-log": match &server.auth.audit {
            AuditTarget::Off => "off".to_string(),
            AuditTarget::Stderr => "stderr".to_string(),
            AuditTarget::File(file) => file.display().to_string(),
        },
        "auto-create": server.auto_create_topics,
        "partitions": topic.partitions,
        "durability": match topic.durability {
            Durability::Always => "always",
            Durability::Interval { .. } => "interval",
            Durability::None => "none",
        },
        "sync-interval": match topic.durability {
            Durability::Interval { interval_ms } => Some(format!("{interval_ms}ms")),
            _ => None,
        },
        "dedup-window": format!("{}ms", topic.dedup_window_ms),
        "retention-age": topic.retention_age_ms.map(|age| format!("{age}ms")),
        "retention-bytes": topic.retention_bytes,
        "segment-size": topic.segment_size_bytes_max,
        "webhook-allow": server.webhooks.allow.iter().map(|network| network.to_string()).collect::<Vec<_>>(),
        "webhook-in-flight": server.webhooks.in_flight_max,
        "worker-threads": server.worker_threads,
        "webhook-timeout": format!("{}ms", server.webhooks.timeout_default_ms),
        "log-level": log_filter,
        "log-format": match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        },
    })
}

/// The TLS settings from the resolved flags: a certificate and a key go
/// together, and the client settings need them.
fn resolve_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    client_auth: Option<ClientAuthArg>,
) -> Result<Option<TlsConfig>, CliError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            return match (client_ca, client_auth) {
                (None, None) => Ok(None),
                _ => Err(CliError::Usage(
                    "--tls-client-ca and --tls-client-auth need --tls-cert and --tls-key".to_string(),
                )),
            };
        }
        _ => {
            return Err(CliError::Usage(
                "--tls-cert and --tls-key go together: give both or neither".to_string(),
            ));
        }
    };
    let config = TlsConfig::new(cert, key);
    match (client_ca, client_auth) {
        (None, None) => Ok(Some(config)),
        (None, Some(_)) => Err(CliError::Usage(
            "--tls-client-auth needs --tls-client-ca".to_string(),
        )),
        (Some(client_ca), client_auth) => {
            let client_auth = match client_auth {
                None | Some(ClientAuthArg::Required) => ClientAuth::Required,
                Some(ClientAuthArg::Optional) => ClientAuth::Optional,
            };
            Ok(Some(config.with_client_ca(client_ca, client_auth)))
        }
    }
}

fn serve(args: ServeArgs, matches: &ArgMatches) -> Result<u8, CliError> {
    use std::io::IsTerminal;
    let config = resolve_serve(args, matches)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .map_err(|error| CliError::Usage(format!("invalid log level {:?}: {error}", config.log_filter)))?;
    if config.check_only {
        println!("{}", config.effective);
        return Ok(EXIT_OK);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.effective,
        "starting stele serve"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Failed(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(run_server(config.server, config.backend))
}

/// Connects to the cluster of `--backend` and opens Stele's buckets there.
async fn open_nats_backend(
    config: &ServerConfig,
    nats: &stele_nats::NatsConfig,
) -> Result<Arc<dyn stele::server::Backend>, CliError> {
    let connection = stele_nats::connect(nats)
        .await
        .map_err(|error| CliError::Failed(format!("--backend {}: {error}", nats.servers.join(","))))?;
    tracing::info!(
        servers = nats.servers.join(","),
        version = %connection.server_version,
        namespace = nats.namespace,
        "connected to NATS JetStream"
    );
    let backend = stele_nats::backend::NatsBackend::open(
        connection,
        config.default_topic.clone(),
        config.auto_create_topics,
    )
    .await
    .map_err(|error| CliError::Failed(format!("--backend {}: {error}", nats.servers.join(","))))?;
    Ok(Arc::new(backend))
}

async fn run_server(config: ServerConfig, nats: Option<stele_nats::NatsConfig>) -> Result<u8, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the server announces itself, so that a signal sent right
    // after the announcement is a graceful shutdown, not the default death.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGTERM: {error}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGINT: {error}")))?;
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGHUP: {error}")))?;
    let data_dir = config.data_dir.clone();
    let started = match &nats {
        None => RunningServer::start(config).await,
        Some(nats) => {
            let backend = open_nats_backend(&config, nats).await?;
            let storage = stele::server::Storage::Backend {
                backend,
                state_dir: data_dir.clone(),
            };
            RunningServer::start_with_storage(storage, config).await
        }
    };
    let server = started.map_err(|error| match error.kind() {
        stele::ErrorKind::Locked => CliError::Failed(format!(
            "data directory {} is locked by another process (is another `stele serve` running on it?)",
            data_dir.display()
        )),
        stele::ErrorKind::Config | stele::ErrorKind::InvalidArgument => CliError::Usage(error.to_string()),
        _ => CliError::Failed(format!(
            "cannot start the server on {}: {error}",
            data_dir.display()
        )),
    })?;
    tracing::info!(address = %server.local_addr(), data_dir = %data_dir.display(), "serving");
    eprintln!(
        "stele: listening on {}, data in {}",
        server.local_addr(),
        data_dir.display()
    );
    let scheme = if server.is_tls() { "https" } else { "http" };
    if let Some(address) = server.metrics_addr() {
        tracing::info!(%address, "serving metrics");
        eprintln!("stele: metrics on {scheme}://{address}/metrics");
    }
    if let Some(tls) = server.tls() {
        let config = tls.config();
        let clients = match (&config.client_ca, config.client_auth) {
            (None, _) => "no client certificates".to_string(),
            (Some(ca), ClientAuth::Required) => format!("client certificates required ({})", ca.display()),
            (Some(ca), ClientAuth::Optional) => format!("client certificates optional ({})", ca.display()),
        };
        eprintln!(
            "stele: TLS with {}, {clients}; SIGHUP reloads",
            config.cert.display()
        );
    }
    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                // The audit log's file is reopened (log rotation) in any case.
                server.auth().audit().reopen();
                match server.tls() {
                    None => tracing::info!("SIGHUP received; no TLS to reload"),
                    Some(_) => match server.reload_tls() {
                        // The acceptor logs the reload and its failure itself.
                        Ok(()) => eprintln!("stele: SIGHUP received, TLS certificate reloaded"),
                        Err(error) => eprintln!("stele: SIGHUP received, TLS reload failed (keeping the previous certificate): {error}"),
                    },
                }
            }
        }
    };
    eprintln!("stele: {signal_name} received, shutting down");
    server
        .shutdown()
        .await
        .map_err(|error| CliError::Failed(format!("shutdown failed: {error}")))?;
    eprintln!("stele: stopped");
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------
// verify

fn verify(args: &VerifyArgs) -> Result<u8, CliError> {
    let progress = if progress::Progress::enabled() && !args.json {
        progress::Progress::bytes(Some(progress::dir_size_bytes(&args.dir)), "verify")
    } else {
        progress::Progress::hidden()
    };
    let report = stele::verify::verify_dir_with_progress(&args.dir, &mut |size| progress.inc(size))
        .map_err(|error| CliError::Usage(format!("cannot verify {}: {error}", args.dir.display())))?;
    progress.finish();
    if report.locked == Some(true) {
        eprintln!(
            "stele: note: {} is locked by a running process; checking anyway (files may change while read)",
            args.dir.display()
        );
    }
    for (severity, items) in [("problem", &report.problems), ("note", &report.notes)] {
        for item in items.iter() {
            if args.json {
                println!(
                    "{}",
                    json!({
                        "severity": severity,
                        "path": item.path.display().to_string(),
                        "position": item.position,
                        "message": item.message,
                    })
                );
            } else if severity == "note" {
                match item.position {
                    Some(position) => println!("{}:{position}: note: {}", item.path.display(), item.message),
                    None => println!("{}: note: {}", item.path.display(), item.message),
                }
            } else {
                println!("{item}");
            }
        }
    }
    let summary = format!(
        "checked {} files, {} records: {} problems, {} notes",
        report.files_checked,
        report.records_checked,
        report.problems.len(),
        report.notes.len()
    );
    if args.json {
        println!(
            "{}",
            json!({
                "files_checked": report.files_checked,
                "records_checked": report.records_checked,
                "problems": report.problems.len(),
                "notes": report.notes.len(),
                "locked": report.locked,
            })
        );
    } else {
        eprintln!("stele: {summary}");
    }
    Ok(if report.is_clean() { EXIT_OK } else { EXIT_PROBLEMS })
}

// ---------------------------------------------------------------------------
// bench

fn bench(args: BenchArgs) -> Result<u8, CliError> {
    use stele::loadgen::{AnyScenario, BenchConfig};
    let scenarios: Vec<AnyScenario> = if args.scenario == "all" {
        AnyScenario::ALL.to_vec()
    } else {
        args.scenario
            .split(',')
            .map(|name| {
                AnyScenario::from_name(name.trim())
                    .ok_or_else(|| CliError::Usage(format!("unknown scenario {name:?}")))
            })
            .collect::<Result<_, _>>()?
    };
    let durabilities = match (args.both, args.durability) {
        (true, _) => vec![Durability::Always, Durability::None],
        (false, BenchDurability::Always) => vec![Durability::Always],
        (false, BenchDurability::None) => vec![Durability::None],
    };
    if args.repeat == 0 || args.concurrency == 0 || args.keys == 0 || args.batch == 0 || args.in_flight == 0 {
        return Err(CliError::Usage(
            "--repeat, --concurrency, --keys, --batch and --in-flight must be at least 1".into(),
        ));
    }
    let config = BenchConfig {
        count: args.count,
        size: usize::try_from(args.size.0)
            .map_err(|_| CliError::Usage(format!("--size {} is too large", args.size)))?,
        keys: args.keys,
        concurrency: args.concurrency,
        in_flight: args.in_flight,
        batch: args.batch,
        partitions: args.partitions,
        fsync_probe_dir: args.fsync_probe_dir,
        fsync_probe_duration: args.fsync_probe_time,
        slow_consumer: args.slow_consumer,
        read_batch_events: args.read_batch,
        server_pid: args.server_pid,
        topics: args.topics,
        topic_partitions: args.topic_partitions,
    };
    let target = args.connect.target()?;
    let runtime = match args.runtime.as_str() {
        "current" => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    }
    .map_err(|error| CliError::Failed(format!("cannot start the runtime: {error}")))?;
    // The scenarios run in a task, as an application's work does: on the
    // multi-threaded runtime, `block_on`'s own thread is not one of its
    // workers, and every request would cross threads twice more in the client.
    let scenarios_run = async move {
        let mut failed_checks = Vec::new();
        for scenario in scenarios {
            for durability in &durabilities {
                let mut runs = Vec::with_capacity(args.repeat);
                for run in 0..args.repeat {
                    let line = stele::loadgen::run_scenario(&target, scenario, *durability, &config, run)
                        .await
                        .map_err(|error| match error {
                            stele::loadgen::LoadgenError::Client(error)
                                if error.code() == Some(stele::client::GrpcCode::Unavailable) =>
                            {
                                CliError::Unreachable(format!("{}: {error}", scenario.name()))
                            }
                            error => CliError::Failed(format!("{}: {error}", scenario.name())),
                        })?;
                    println!("{line}");
                    if !stele::loadgen::checks_passed(&line) {
                        failed_checks.push(format!("{} run {run}", scenario.name()));
                    }
                    runs.push(line);
                }
                if args.repeat > 1
                    && let Some(median) = stele::loadgen::median_run(&runs)
                {
                    println!("{median}");
                }
            }
        }
        if !failed_checks.is_empty() {
            return Err(CliError::Failed(format!(
                "correctness checks failed: {}",
                failed_checks.join(", ")
            )));
        }
        Ok(EXIT_OK)
    };
    runtime.block_on(async move {
        tokio::spawn(scenarios_run)
            .await
            .map_err(|error| CliError::Failed(format!("the load generator failed: {error}")))?
    })
}

// ---------------------------------------------------------------------------
// client commands

fn client_command(command: Command) -> Result<u8, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Failed(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(async move {
        match command {
            Command::Topic(command) => topic(command).await,
            Command::Append(args) => append(args).await,
            Command::Read(args) => read(args).await,
            Command::Tail(args) => tail::tail(args).await,
            Command::Cursor(command) => cursor(command).await,
            Command::Group(command) => group::run(command).await,
            Command::Consume(args) => group::consume(args).await,
            Command::Webhook(command) => webhook::run(command).await,
            Command::Token(command) => token::run(command).await,
            Command::Backup(args) => backup::backup(args).await,
            Command::Export(args) => export::export(args).await,
            Command::Import(args) => import::import(args).await,
            Command::Serve(_)
            | Command::Verify(_)
            | Command::Bench(_)
            | Command::Restore(_)
            | Command::Repair(_) => {
                unreachable!("handled without a client")
            }
        }
    })
}

/// Connects to a URL checked by [`parse_url`]: plaintext for http, TLS for https
/// (never plaintext: a failed handshake is an error).
async fn connect(client: &ClientArgs) -> Result<Client, CliError> {
    let options = client.connect.options()?;
    Ok(Client::connect_with(stele::client::ServerUrl::new(client.connect.url.clone()), options).await?)
}

async fn topic(command: TopicCommand) -> Result<u8, CliError> {
    match command {
        TopicCommand::Create {
            name,
            settings,
            client,
        } => {
            let settings = TopicSettings {
                partitions: settings.partitions,
                durability: settings.durability.map(|durability| {
                    durability.durability(settings.sync_interval.map_or(0, |interval| interval.0))
                }),
                dedup_window_ms: settings.dedup_window.map(|window| window.0),
                retention_age_ms: settings.retention_age.map(|age| age.0),
                retention_bytes: settings.retention_bytes.map(|size| size.0),
                segment_size_bytes: settings.segment_size.map(|size| size.0),
                payload_size_max: None,
            };
            let options = connect(&client)
                .await?
                .create_topic_with(&name, &settings)
                .await?;
            if client.json {
                print_json(&TopicJson {
                    topic: &name,
                    settings: SettingsJson::of(&options),
                    partitions: None,
                    revision: None,
                    changed_ms: None,
                });
            } else {
                println!("created topic {name}: {}", settings_text(&options));
            }
        }
        TopicCommand::List { client } => {
            for name in connect(&client).await?.list_topics().await? {
                if client.json {
                    print_json(&json!({ "topic": name }));
                } else {
                    println!("{name}");
                }
            }
        }
        TopicCommand::Describe { name, client } => {
            let description = connect(&client).await?.describe_topic(&name).await?;
            if client.json {
                print_json(&TopicJson {
                    topic: &description.topic,
                    settings: SettingsJson::of(&description.options),
                    partitions: Some(description.partitions.iter().map(PartitionJson::of).collect()),
                    revision: Some(description.revision),
                    changed_ms: Some(description.changed_ms),
                });
            } else {
                println!(
                    "topic {}: {}",
                    description.topic,
                    settings_text(&description.options)
                );
                if description.revision > 0 {
                    println!(
                        "revision {}, changed {}",
                        description.revision,
                        humantime::format_rfc3339_millis(
                            std::time::UNIX_EPOCH
                                + std::time::Duration::from_millis(
                                    u64::try_from(description.changed_ms).unwrap_or(0)
                                )
                        )
                    );
                } else {
                    println!("revision 0 (never changed)");
                }
                println!(
                    "{:>9} {:>12} {:>14} {:>12} {:>8} {:>10}",
                    "partition", "earliest", "high_watermark", "size", "segments", "keys"
                );
                for partition in &description.partitions {
                    println!(
                        "{:>9} {:>12} {:>14} {:>12} {:>8} {:>10}",
                        partition.partition.0,
                        partition.earliest.0,
                        partition.high_watermark.0,
                        ByteSize(partition.size_bytes).to_string(),
                        partition.segments_count,
                        partition.keys_count
                    );
                    if let Some(quarantine) = &partition.quarantine {
                        println!(
                            "{:>9} quarantined: {} at position {}: {}; offsets from {} are not served (see `stele repair`)",
                            "",
                            escape(&quarantine.file),
                            quarantine.position,
                            escape(&quarantine.reason),
                            quarantine.served_end
                        );
                    }
                }
            }
        }
        TopicCommand::Alter(args) => return topic_alter::run(args).await,
        TopicCommand::Delete { name, client } => {
            connect(&client).await?.delete_topic(&name).await?;
            if client.json {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(EXIT_OK)
}

/// A topic as `topic create` and `topic describe` print it with `--json`.
#[derive(Serialize)]
struct TopicJson<'a> {
    topic: &'a str,
    settings: SettingsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions: Option<Vec<PartitionJson>>,
    /// The topic's revision (describe only).
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    /// When its options last changed, Unix ms; 0 when never (describe only).
    #[serde(skip_serializing_if = "Option::is_none")]
    changed_ms: Option<i64>,
}

/// A topic's settings in JSON; optional limits that are not set are null.
#[derive(Serialize)]
struct SettingsJson {
    partitions: u32,
    durability: &'static str,
    sync_interval_ms: u64,
    dedup_window_ms: u64,
    retention_age_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_size_bytes: u64,
    payload_size_max: u32,
}

impl SettingsJson {
    fn of(options: &TopicOptions) -> SettingsJson {
        SettingsJson {
            partitions: options.partitions,
            durability: durability_word(options.durability),
            sync_interval_ms: match options.durability {
                Durability::Interval { interval_ms } => interval_ms,
                Durability::Always | Durability::None => 0,
            },
            dedup_window_ms: options.dedup_window_ms,
            retention_age_ms: options.retention_age_ms,
            retention_bytes: options.retention_bytes,
            segment_size_bytes: options.segment_size_bytes_max,
            payload_size_max: options.payload_size_max,
        }
    }
}

/// One partition of `topic describe --json`.
#[derive(Serialize)]
struct PartitionJson {
    partition: u32,
    earliest_offset: u64,
    high_watermark: u64,
    size_bytes: u64,
    segment_count: u32,
    key_count: u64,
    /// Present only for a quarantined partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    quarantine: Option<QuarantineJson>,
}

/// Where a quarantined partition is damaged, in `topic describe --json`.
#[derive(Serialize)]
struct QuarantineJson {
    file: String,
    position: u64,
    reason: String,
    served_end: u64,
}

impl PartitionJson {
    fn of(partition: &PartitionDescription) -> PartitionJson {
        PartitionJson {
            partition: partition.partition.0,
            earliest_offset: partition.earliest.0,
            high_watermark: partition.high_watermark.0,
            size_bytes: partition.size_bytes,
            segment_count: partition.segments_count,
            key_count: partition.keys_count,
            quarantine: partition.quarantine.as_ref().map(|quarantine| QuarantineJson {
                file: quarantine.file.clone(),
                position: quarantine.position,
                reason: quarantine.reason.clone(),
                served_end: quarantine.served_end.0,
            }),
        }
    }
}

/// The durability's name in `--durability` and in JSON.
fn durability_word(durability: Durability) -> &'static str {
    match durability {
        Durability::Always => "always",
        Durability::Interval { .. } => "interval",
        Durability::None => "none",
    }
}

fn settings_text(options: &TopicOptions) -> String {
    let durability = match options.durability {
        Durability::Interval { interval_ms } => format!("interval ({})", Millis(interval_ms)),
        other => durability_word(other).to_string(),
    };
    let or_none = |value: Option<String>| value.unwrap_or_else(|| "none".to_string());
    format!(
        "{} partitions, durability {durability}, dedup window {}, retention age {}, retention bytes {}, segment size {}",
        options.partitions,
        Millis(options.dedup_window_ms),
        or_none(options.retention_age_ms.map(|age| Millis(age).to_string())),
        or_none(options.retention_bytes.map(|size| ByteSize(size).to_string())),
        ByteSize(options.segment_size_bytes_max),
    )
}

/// `--header NAME=VALUE` flags; a name given twice keeps its last value.
fn parse_headers(headers: &[String]) -> Result<Vec<(String, Vec<u8>)>, CliError> {
    let headers = headers
        .iter()
        .map(|header| {
            let (name, value) = header
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("header {header:?} is not NAME=VALUE")))?;
            Ok((name.to_string(), value.as_bytes().to_vec()))
        })
        .collect::<Result<BTreeMap<String, Vec<u8>>, CliError>>()?;
    Ok(headers.into_iter().collect())
}

async fn append(args: AppendArgs) -> Result<u8, CliError> {
    let headers = parse_headers(&args.headers)?;
    let input = match (&args.payload, &args.file) {
        (Some(payload), _) => payload.as_bytes().to_vec(),
        (None, Some(path)) => std::fs::read(path)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?,
        (None, None) => {
            let mut input = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)
                .map_err(|error| CliError::Failed(format!("cannot read stdin: {error}")))?;
            input
        }
    };
    let payloads: Vec<Vec<u8>> = if args.lines || args.each {
        input
            .split(|byte| *byte == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
            .filter(|line| !line.is_empty())
            .collect()
    } else {
        vec![input]
    };
    if payloads.is_empty() {
        return Err(CliError::Usage("no events: the input has no lines".to_string()));
    }
    let several = payloads.len() > 1;
    let events: Vec<Event> = payloads
        .into_iter()
        .enumerate()
        .map(|(index, payload)| Event {
            event_type: args.event_type.clone(),
            payload,
            headers: headers.clone(),
            idempotency_id: match &args.id {
                Some(id) if several => Some(format!("{id}-{index}").into_bytes()),
                Some(id) => Some(id.as_bytes().to_vec()),
                None => None,
            },
        })
        .collect();
    let calls: Vec<Vec<Event>> = if args.each {
        events.into_iter().map(|event| vec![event]).collect()
    } else {
        vec![events]
    };
    let client = connect(&args.client).await?;
    let mut expect = args.expect;
    for events in calls {
        let count = events.len() as u64;
        let request = AppendRequest {
            key: args.key.as_bytes().to_vec(),
            expected: expect.expected(),
            events,
            producer: None,
        };
        let ack = client.append(&args.topic, &request).await?;
        // With one call per line, each call continues where the previous ended.
        if expect != Expect::Any {
            expect = Expect::Exact(ack.last_sequence.0);
        }
        print_append(&ack, args.key.as_bytes(), count, args.client.json);
    }
    Ok(EXIT_OK)
}

/// An append's result as `append --json` prints it.
#[derive(Serialize)]
struct AppendJson<'a> {
    key: output::Bytes<'a>,
    partition: u32,
    first_offset: u64,
    last_offset: u64,
    first_sequence: u64,
    last_sequence: u64,
    timestamp_ms: i64,
    duplicate: bool,
}

fn print_append(ack: &AppendAck, key: &[u8], count: u64, json_output: bool) {
    let last_offset = ack.first_offset.0 + count.saturating_sub(1);
    if json_output {
        print_json(&AppendJson {
            key: output::Bytes(key),
            partition: ack.partition.0,
            first_offset: ack.first_offset.0,
            last_offset,
            first_sequence: ack.first_sequence.0,
            last_sequence: ack.last_sequence.0,
            timestamp_ms: ack.timestamp_ms,
            duplicate: ack.duplicate,
        });
        return;
    }
    let duplicate = if ack.duplicate { " (duplicate)" } else { "" };
    if count == 1 {
        println!(
            "partition {} offset {} sequence {}{duplicate}",
            ack.partition.0, ack.first_offset.0, ack.first_sequence
        );
    } else {
        println!(
            "partition {} offsets {}..={} sequences {}..={}{duplicate}",
            ack.partition.0, ack.first_offset.0, last_offset, ack.first_sequence, ack.last_sequence
        );
    }
}

async fn read(args: ReadArgs) -> Result<u8, CliError> {
    let client = connect(&args.client).await?;
    let json_output = args.client.json;
    if let Some(key) = &args.key {
        let max_events = args
            .count
            .map_or(0, |count| u32::try_from(count).unwrap_or(u32::MAX));
        let direction = if args.backwards {
            Direction::Backwards
        } else {
            Direction::Forwards
        };
        let history = client
            .read_key(
                &args.topic,
                key.as_bytes(),
                args.from_sequence,
                direction,
                max_events,
            )
            .await?;
        for event in &history.events {
            print_event(event, json_output);
        }
        return Ok(EXIT_OK);
    }
    let partitions: Vec<(PartitionId, Offset)> = match args.partition {
        // The server answers for a partition the topic does not have.
        Some(partition) => vec![(PartitionId(partition), Offset(u64::MAX))],
        None => client
            .describe_topic(&args.topic)
            .await?
            .partitions
            .iter()
            .map(|partition| (partition.partition, partition.high_watermark))
            .collect(),
    };
    let mut remaining = args.count.unwrap_or(u64::MAX);
    for (partition, described_high_watermark) in partitions {
        if remaining == 0 {
            break;
        }
        // A partition that ends at or before --from has nothing to print.
        if args.from.is_some_and(|from| from >= described_high_watermark.0) {
            continue;
        }
        read_partition(&client, &args, partition, &mut remaining).await?;
    }
    Ok(EXIT_OK)
}

/// Prints one partition from `--from` (else its earliest event) up to the high
/// watermark it had at the first answer, at most `remaining` events.
async fn read_partition(
    client: &Client,
    args: &ReadArgs,
    partition: PartitionId,
    remaining: &mut u64,
) -> Result<(), CliError> {
    let mut from = Offset(args.from.unwrap_or(0));
    let mut high_watermark = None;
    // Bounded: every round prints at least one event or stops.
    while *remaining > 0 {
        let max_events = u32::try_from((*remaining).min(1000)).unwrap_or(1000);
        let result = match client.read(&args.topic, partition, from, max_events, 0).await {
            Ok(result) => result,
            // Without --from, start at the earliest retained offset.
            Err(error) if args.from.is_none() && error.kind() == Some(ErrorKind::OffsetOutOfRange) => {
                match error.details().and_then(|details| details.earliest_offset) {
                    Some(earliest) if earliest > from => {
                        from = earliest;
                        continue;
                    }
                    _ => return Err(error.into()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        let stop_at = *high_watermark.get_or_insert(result.high_watermark);
        for event in &result.events {
            if event.offset >= stop_at || *remaining == 0 {
                break;
            }
            print_event(event, args.client.json);
            *remaining -= 1;
        }
        if result.events.is_empty() || result.next_offset >= stop_at {
            break;
        }
        from = result.next_offset;
    }
    Ok(())
}

async fn cursor(command: CursorCommand) -> Result<u8, CliError> {
    match command {
        CursorCommand::Commit {
            topic,
            name,
            offsets,
            allow_backwards,
            client,
        } => {
            // A partition given twice keeps its last offset.
            let offsets = offsets
                .iter()
                .map(|entry| {
                    let parsed = entry.split_once('=').and_then(|(partition, offset)| {
                        Some((partition.parse().ok()?, offset.parse().ok()?))
                    });
                    parsed.ok_or_else(|| CliError::Usage(format!("{entry:?} is not PARTITION=OFFSET")))
                })
                .collect::<Result<BTreeMap<u32, u64>, CliError>>()?;
            let positions: Vec<(PartitionId, Offset)> = offsets
                .iter()
                .map(|(partition, offset)| (PartitionId(*partition), Offset(*offset)))
                .collect();
            connect(&client)
                .await?
                .commit_cursor(&topic, &name, &positions, allow_backwards)
                .await?;
            if client.json {
                print_json(&json!({"cursor": name, "committed": offsets}));
            } else {
                let text: Vec<String> = offsets
                    .iter()
                    .map(|(partition, offset)| format!("{partition}={offset}"))
                    .collect();
                println!("committed cursor {name}: {}", text.join(" "));
            }
        }
        CursorCommand::Get { topic, name, client } => {
            let positions = connect(&client).await?.get_cursor(&topic, &name).await?;
            print_cursor(&name, &positions, client.json);
        }
        CursorCommand::List { topic, client } => {
            for (name, positions) in connect(&client).await?.list_cursors(&topic).await? {
                print_cursor(&name, &positions, client.json);
            }
        }
        CursorCommand::Delete { topic, name, client } => {
            connect(&client).await?.delete_cursor(&topic, &name).await?;
            if client.json {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("deleted cursor {name}");
            }
        }
    }
    Ok(EXIT_OK)
}

/// A cursor (or a webhook endpoint's) position in one partition, in JSON.
#[derive(Serialize)]
struct CursorPartitionJson {
    partition: u32,
    committed_offset: Option<u64>,
    lag: u64,
}

impl CursorPartitionJson {
    fn of(position: &CursorPosition) -> CursorPartitionJson {
        CursorPartitionJson {
            partition: position.partition.0,
            committed_offset: position.committed.map(|offset| offset.0),
            lag: position.lag,
        }
    }
}

fn print_cursor(name: &str, positions: &[CursorPosition], json_output: bool) {
    if json_output {
        #[derive(Serialize)]
        struct CursorJson<'a> {
            cursor: &'a str,
            partitions: Vec<CursorPartitionJson>,
        }
        print_json(&CursorJson {
            cursor: name,
            partitions: positions.iter().map(CursorPartitionJson::of).collect(),
        });
        return;
    }
    let lag: u64 = positions.iter().map(|position| position.lag).sum();
    let parts: Vec<String> = positions
        .iter()
        .map(|position| match position.committed {
            Some(offset) => format!("{}={} (lag {})", position.partition.0, offset.0, position.lag),
            None => format!("{}=- (lag {})", position.partition.0, position.lag),
        })
        .collect();
    println!("{} lag {lag}: {}", escape(name), parts.join(", "));
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) into Unix milliseconds.
fn parse_timestamp(text: &str) -> Option<i64> {
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date_parts.next()??, date_parts.next()??, date_parts.next()??);
    let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut time_parts = time.splitn(3, ':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (time_parts.next()??, time_parts.next()??, time_parts.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let fraction = format!("{fraction:0<3}");
    let millis: i64 = fraction.get(..3)?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

#[cfg(test)]
mod tests {
    use stele::civil::format_timestamp_ms as format_timestamp;

    use super::*;

    #[test]
    fn exit_codes_of_kinds_agree_with_their_grpc_codes_for_every_error_code() {
        // Goal: a status with a kind and one without (a proxy's, a wire-only
        // code) of the same gRPC code exit alike. Method: every row of the one
        // table of error codes.
        for entry in stele::wire::status::ERROR_CODES {
            let by_grpc = exit_code_of_grpc(GrpcCode::from(entry.grpc));
            if let Some(kind) = entry.kind {
                assert_eq!(exit_code_of_kind(kind), by_grpc, "{entry:?}");
            }
        }
        assert_eq!(exit_code_of_kind(ErrorKind::CursorNotFound), EXIT_NOT_FOUND);
        assert_eq!(exit_code_of_kind(ErrorKind::WrongExpectedSequence), EXIT_CONFLICT);
    }

    #[test]
    fn durations_take_humantime_units_and_refuse_bare_numbers() {
        // Goal: one grammar for every duration flag; a bare number (once
        // milliseconds in one flag and microseconds in another) is refused,
        // naming the units, except 0.
        assert_eq!("1h 30m".parse::<Millis>(), Ok(Millis(90 * 60_000)));
        assert_eq!("0".parse::<Millis>(), Ok(Millis(0)));
        let bare = "7".parse::<Millis>().expect_err("a bare number");
        assert!(bare.contains("unit (ms, s, m, h, d, w)"), "{bare}");
        assert!(parse_duration("20").is_err());
        assert_eq!(parse_duration("500us"), Ok(std::time::Duration::from_micros(500)));
        assert!("500us".parse::<Millis>().is_err(), "not a whole millisecond");
    }

    #[test]
    fn durations_and_sizes_roundtrip_through_text() {
        assert_eq!("7d".parse::<Millis>(), Ok(Millis(7 * 86_400_000)));
        assert_eq!("100ms".parse::<Millis>(), Ok(Millis(100)));
        assert_eq!(Millis(120_000).to_string(), "2m");
        assert!("7".parse::<Millis>().is_err());
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("10GiB".parse::<ByteSize>(), Ok(ByteSize(10 << 30)));
        assert_eq!("1gb".parse::<ByteSize>(), Ok(ByteSize(1_000_000_000)));
        assert_eq!(ByteSize(128 << 20).to_string(), "128MiB");
    }

    #[test]
    fn timestamps_roundtrip_through_rfc3339() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        let text = "2024-02-29T23:59:58.123Z";
        let parsed = parse_timestamp(text).expect("valid timestamp");
        assert_eq!(parsed, 1_709_251_198_123);
        assert_eq!(format_timestamp(parsed), text);
    }

    #[test]
    fn urls_need_an_http_or_https_scheme_and_a_host() {
        assert!(parse_url("http://127.0.0.1:7077").is_ok());
        assert!(parse_url("HTTPS://stele.example.com").is_ok());
        assert!(parse_url("127.0.0.1:7077").is_err_and(|error| error.contains("no scheme")));
        assert!(parse_url("localhost:7077").is_err());
        assert!(parse_url("ftp://example.com").is_err());
        assert!(parse_url("http://").is_err());
    }

    /// Resolves `stele serve ARGS` as the command would.
    fn resolve(arguments: &[&str]) -> Result<ServeConfig, CliError> {
        let matches = Cli::command()
            .try_get_matches_from(["stele", "serve"].iter().chain(arguments))
            .map_err(|error| CliError::Usage(error.to_string()))?;
        let serve_matches = matches.subcommand_matches("serve").expect("serve");
        match Cli::from_arg_matches(&matches)
            .map_err(|error| CliError::Usage(error.to_string()))?
            .command
        {
            Command::Serve(args) => resolve_serve(args, serve_matches),
            _ => unreachable!("parsed as serve"),
        }
    }

    fn usage_error(result: Result<ServeConfig, CliError>) -> String {
        match result {
            Err(CliError::Usage(message)) => message,
            Err(other) => panic!("not a usage error: {other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn tls_settings_come_from_flags_then_the_configuration_file() {
        // Goal: --tls-* flags and the tls-* TOML keys give the same TlsConfig,
        // a flag overrides its key, and the client policy defaults to required.
        if std::env::vars().any(|(name, _)| name.starts_with("STELE_TLS_")) {
            panic!("unset the STELE_TLS_* variables to run this test");
        }
        let none = resolve(&[])
            .map_err(|error| format!("{error:?}"))
            .expect("resolves");
        assert_eq!(none.server.tls, None);
        let flags = resolve(&["--tls-cert", "server.pem", "--tls-key", "server.key"])
            .map_err(|error| format!("{error:?}"))
            .expect("resolves");
        assert_eq!(flags.server.tls, Some(TlsConfig::new("server.pem", "server.key")));
        let mtls = resolve(&[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-ca",
            "ca.pem",
        ])
        .map_err(|error| format!("{error:?}"))
        .expect("resolves");
        assert_eq!(
            mtls.server.tls,
            Some(TlsConfig::new("server.pem", "server.key").with_client_ca("ca.pem", ClientAuth::Required))
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("stele.toml");
        std::fs::write(
            &file,
            "tls-cert = \"/etc/stele/server.pem\"\ntls-key = \"/etc/stele/server.key\"\n\
             tls-client-ca = \"/etc/stele/clients.pem\"\ntls-client-auth = \"optional\"\n",
        )
        .expect("write the configuration");
        let file = file.to_str().expect("a UTF-8 path");
        let from_file = resolve(&["--config", file])
            .map_err(|error| format!("{error:?}"))
            .expect("resolves");
        let expected = TlsConfig::new("/etc/stele/server.pem", "/etc/stele/server.key")
            .with_client_ca("/etc/stele/clients.pem", ClientAuth::Optional);
        assert_eq!(from_file.server.tls, Some(expected.clone()));
        let overridden = resolve(&["--config", file, "--tls-client-auth", "required"])
            .map_err(|error| format!("{error:?}"))
            .expect("resolves");
        assert_eq!(
            overridden.server.tls,
            Some(TlsConfig {
                client_auth: ClientAuth::Required,
                ..expected
            })
        );
    }

    #[test]
    fn tls_settings_that_do_not_go_together_are_refused() {
        // Goal: a certificate without its key (or the reverse) and client
        // settings without a certificate are usage errors naming the flags.
        let message = usage_error(resolve(&["--tls-cert", "server.pem"]));
        assert!(
            message.contains("--tls-cert and --tls-key go together"),
            "{message}"
        );
        let message = usage_error(resolve(&["--tls-key", "server.key"]));
        assert!(
            message.contains("--tls-cert and --tls-key go together"),
            "{message}"
        );
        let message = usage_error(resolve(&["--tls-client-ca", "ca.pem"]));
        assert!(message.contains("need --tls-cert"), "{message}");
        let message = usage_error(resolve(&[
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
            "--tls-client-auth",
            "optional",
        ]));
        assert!(
            message.contains("--tls-client-auth needs --tls-client-ca"),
            "{message}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("stele.toml");
        std::fs::write(&file, "tls-client-auth = \"sometimes\"\n").expect("write the configuration");
        let message = usage_error(resolve(&["--config", file.to_str().expect("a UTF-8 path")]));
        assert!(message.contains("tls-client-auth"), "{message}");
    }

    #[test]
    fn clap_configuration_is_consistent() {
        Cli::command().debug_assert();
    }
}
