//! The `stele` command: run a server, talk to one, and check a data directory.
//!
//! It holds no engine logic: `serve` configures and starts
//! [`stele::server::RunningServer`], the client commands call the gRPC API of
//! `proto/stele/v1/stele.proto`, and `verify` calls [`stele::verify::verify_dir`].
//! Exit codes are decided in one place, [`exit_code`], and listed in `--help`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use stele::civil::days_from_civil;
use stele::config::{
    DEDUP_WINDOW_MS_DEFAULT, PARTITIONS_COUNT_DEFAULT, SEGMENT_SIZE_BYTES_MAX_DEFAULT,
    SYNC_INTERVAL_MS_DEFAULT,
};
use stele::server::{MESSAGE_SIZE_BYTES_MAX, PORT_DEFAULT, RunningServer, ServerConfig};
use stele::wire::proto;
use stele::wire::proto::stele_client::SteleClient;
use stele::wire::status;
use stele::{Durability, TopicOptions};
use tonic::transport::{Channel, ClientTlsConfig};

use output::{escape, print_event};

// glibc malloc spent a fifth of the server's CPU (and more of the load
// generator's) in allocation and consolidation under per-message protobuf
// work; mimalloc's thread-local free lists make those paths cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "stele/output.rs"]
mod output;
#[path = "stele/tail.rs"]
mod tail;
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
     ALREADY_EXISTS (topic exists), ABORTED (producer fenced)
  4  not found: unknown topic, cursor or webhook
  5  server unavailable: connection refused, failed TLS handshake, UNAVAILABLE, server
     shutting down";

const READ_HELP: &str = "\
Without --key and --partition, read prints every partition of the topic one after the
other: partition 0 in offset order up to its high watermark, then partition 1, and so on.
Each partition stops at the high watermark it had when its first events were read, so
read always ends; --count bounds the events printed over all partitions. Use `stele tail`
to follow a topic live, or `read --key` for one key's history in sequence order.";

const URL_DEFAULT: &str = "http://127.0.0.1:7077";
const DATA_DIR_DEFAULT: &str = "./stele-data";
const LOG_LEVEL_DEFAULT: &str = "warn";

/// Stele: an append-only event log. Run a server, append, read, tail, manage
/// topics and cursors, and check a data directory offline.
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
    /// Check a data directory offline and report every problem with file and position.
    Verify(VerifyArgs),
    /// Deliver a topic's events to HTTP endpoints (Standard Webhooks), manage dead letters,
    /// and run a test receiver.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Drive a running server with load scenarios; one JSON line per run and per median.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
}

const BENCH_HELP: &str = "\
Scenarios: pipelined (single-event appends, many in flight per AppendSession stream),
batched (AppendSession requests of --batch events), sequential (one unary append in
flight, compared with an fdatasync probe in --fsync-probe-dir), cas (one append in flight
per key expecting its previous sequence, then a stale expectation must be refused),
dedup (idempotency ids, every 10th event sent twice), read (Subscribe from the earliest
event until CaughtUp). Each run creates a fresh topic. Without --count each scenario
takes its own default (pipelined, cas, dedup 200000; batched, read 1000000; sequential 2000).
The exit code is 1 when a correctness check of a line is false (stale_check.rejected,
sequences_ok, dedup_ok, read_ok).";

#[derive(Debug, Args)]
struct BenchArgs {
    /// Server URL: http://HOST:PORT.
    #[arg(long, env = "STELE_URL", default_value = URL_DEFAULT, value_parser = parse_url)]
    url: String,
    /// Events per scenario run [default: per scenario, see below].
    #[arg(long)]
    count: Option<u64>,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// AppendSession streams, each on its own connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests in flight per stream (pipelined, dedup; batched uses a sixteenth).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Events per request in batched (and when filling read's topic).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Partitions of each fresh topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Runs per scenario; each run is printed, then the median run.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Scenario: all, or one of pipelined, batched, sequential, cas, dedup, read
    /// (comma-separated for several).
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
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = stele::loadgen::parse_duration)]
    fsync_probe_time: std::time::Duration,
    /// read: pause per received message, e.g. 20ms (a slow consumer).
    #[arg(long, value_name = "DURATION", value_parser = stele::loadgen::parse_duration)]
    slow_consumer: Option<std::time::Duration>,
    /// read: most events per subscription message.
    #[arg(long, default_value_t = 10_000)]
    read_batch: u32,
    /// The server's process id: report its memory (/proc/PID/status) with every run.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
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
Durations take a unit (100ms, 30s, 2m, 12h, 7d, 1w); sizes take an optional unit
(4096, 64KiB, 128MiB, 10GiB, 1GB). SIGINT or SIGTERM shuts down gracefully.
With --metrics-listen (or `metrics-listen = \"127.0.0.1:9187\"`), Prometheus metrics are
served at http://ADDR/metrics on that separate port; deploy/ has a Grafana dashboard and
alert rules, docs/runbooks/ what to do when an alert fires.";

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
    /// Networks (CIDR or address) webhooks may target although they are private,
    /// loopback or otherwise internal; repeat or separate with commas [default: none,
    /// so only public addresses]. For local development: 127.0.0.0/8.
    #[arg(long, env = "STELE_WEBHOOK_ALLOW", value_name = "CIDR", value_delimiter = ',')]
    webhook_allow: Vec<String>,
    /// Webhook requests in flight at once over all endpoints.
    #[arg(long, env = "STELE_WEBHOOK_IN_FLIGHT", value_name = "N",
          default_value_t = stele::server::webhook::IN_FLIGHT_MAX_DEFAULT)]
    webhook_in_flight: usize,
    /// Timeout of a webhook request for endpoints created without their own.
    #[arg(long, env = "STELE_WEBHOOK_TIMEOUT", value_name = "DURATION",
          default_value_t = Millis(stele::server::webhook::store::defaults::TIMEOUT_MS))]
    webhook_timeout: Millis,
}

/// `stele serve`'s TOML file: every key is optional and named like its flag.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    metrics_listen: Option<String>,
    auto_create: Option<bool>,
    partitions: Option<u32>,
    durability: Option<String>,
    sync_interval: Option<Scalar>,
    dedup_window: Option<Scalar>,
    retention_age: Option<Scalar>,
    retention_bytes: Option<Scalar>,
    segment_size: Option<Scalar>,
    log_level: Option<String>,
    webhook_allow: Option<Vec<String>>,
    webhook_in_flight: Option<usize>,
    webhook_timeout: Option<Scalar>,
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
    fn to_proto(self) -> proto::Durability {
        match self {
            DurabilityArg::Always => proto::Durability::Always,
            DurabilityArg::Interval => proto::Durability::Interval,
            DurabilityArg::None => proto::Durability::None,
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

impl FromStr for Millis {
    type Err = String;
    fn from_str(text: &str) -> Result<Millis, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Millis(0));
        }
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let bad =
            || format!("invalid duration {text:?}: use a number and a unit (ms, s, m, h, d, w), e.g. 2m");
        let number: u64 = digits.parse().map_err(|_| bad())?;
        let (_, factor) = DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(bad)?;
        number.checked_mul(*factor).map(Millis).ok_or_else(bad)
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
    /// Server URL: http://HOST:PORT (plaintext) or https://HOST:PORT (TLS).
    #[arg(long, env = "STELE_URL", default_value = URL_DEFAULT, value_parser = parse_url)]
    url: String,
    /// Print one JSON object per line instead of text, and errors as JSON on stderr.
    #[arg(long)]
    json: bool,
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

/// Whether a checked URL asks for TLS.
fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
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
    fn to_proto(self) -> proto::ExpectedSequence {
        use proto::expected_sequence::Kind;
        let kind = match self {
            Expect::Any => Kind::Any(proto::Empty {}),
            Expect::NoEvents => Kind::NoEvents(proto::Empty {}),
            Expect::Exact(sequence) => Kind::Exact(sequence),
        };
        proto::ExpectedSequence { kind: Some(kind) }
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
    /// The server answered with an error.
    Status(tonic::Status),
    /// The server could not be reached.
    Unreachable(String),
    /// Anything else that went wrong.
    Failed(String),
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> CliError {
        CliError::Status(status)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Unreachable(message) | CliError::Failed(message) => {
                f.write_str(message)
            }
            CliError::Status(status) => {
                let code = status::detail_of(status)
                    .as_ref()
                    .and_then(output::error_code_name)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("gRPC {:?}", status.code()));
                write!(f, "{} ({code})", status.message())
            }
        }
    }
}

impl CliError {
    /// The error as the one JSON object `--json` prints on stderr (see `stele --help`).
    fn to_json(&self) -> Value {
        let (kind, message) = match self {
            CliError::Usage(message) => ("usage", message.clone()),
            CliError::Unreachable(message) => ("unreachable", message.clone()),
            CliError::Failed(message) => ("failed", message.clone()),
            CliError::Status(status) => ("server", status.message().to_string()),
        };
        let mut error = json!({
            "kind": kind,
            "exit_code": exit_code(self),
            "message": message,
            "grpc_code": null,
            "grpc_code_number": null,
            "code": null,
            "code_number": null,
            "detail": {},
        });
        if let CliError::Status(status) = self {
            error["grpc_code"] = json!(output::grpc_code_name(status.code()));
            error["grpc_code_number"] = json!(status.code() as i32);
            if let Some(detail) = status::detail_of(status) {
                error["code"] = json!(output::error_code_name(&detail));
                error["code_number"] = json!(detail.code);
                error["detail"] = output::detail_json(&detail);
            }
        }
        json!({ "error": error })
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

/// The one place that decides exit codes (listed in `stele --help`).
fn exit_code(error: &CliError) -> u8 {
    use tonic::Code;
    match error {
        CliError::Usage(_) => 2,
        CliError::Unreachable(_) => 5,
        CliError::Failed(_) => 1,
        CliError::Status(status) => match status.code() {
            Code::InvalidArgument => 2,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => 3,
            Code::NotFound => 4,
            Code::Unavailable => 5,
            _ => 1,
        },
    }
}

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
        _ => log_level,
    };
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
    let mut server = ServerConfig::new(data_dir);
    server.webhooks = stele::server::webhook::WebhookConfig {
        allow: webhook_allow,
        in_flight_max: webhook_in_flight,
        timeout_default_ms: webhook_timeout.0,
    };
    server.listen = listen;
    server.metrics_listen = metrics_listen;
    server.auto_create_topics = auto_create;
    server.default_topic = default_topic;
    Ok(ServeConfig { server, log_filter })
}

fn serve(args: ServeArgs, matches: &ArgMatches) -> Result<u8, CliError> {
    let config = resolve_serve(args, matches)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter)
        .map_err(|error| CliError::Usage(format!("invalid log level {:?}: {error}", config.log_filter)))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Failed(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(run_server(config.server))
}

async fn run_server(config: ServerConfig) -> Result<u8, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before the server announces itself, so that a signal sent right
    // after the announcement is a graceful shutdown, not the default death.
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGTERM: {error}")))?;
    let mut interrupt = signal(SignalKind::interrupt())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGINT: {error}")))?;
    let data_dir = config.data_dir.clone();
    let server = RunningServer::start(config)
        .await
        .map_err(|error| match error.kind() {
            stele::ErrorKind::Locked => CliError::Failed(format!(
                "data directory {} is locked by another process (is another `stele serve` running on it?)",
                data_dir.display()
            )),
            stele::ErrorKind::Config | stele::ErrorKind::InvalidArgument => {
                CliError::Usage(error.to_string())
            }
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
    if let Some(address) = server.metrics_addr() {
        tracing::info!(%address, "serving metrics");
        eprintln!("stele: metrics on http://{address}/metrics");
    }
    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
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
    let report = stele::verify::verify_dir(&args.dir)
        .map_err(|error| CliError::Usage(format!("cannot verify {}: {error}", args.dir.display())))?;
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
    use stele::loadgen::{BenchConfig, Scenario};
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        args.scenario
            .split(',')
            .map(|name| {
                Scenario::from_name(name.trim())
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
        size: args.size,
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
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| CliError::Failed(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(async move {
        let mut failed_checks = Vec::new();
        for scenario in scenarios {
            for durability in &durabilities {
                let mut runs = Vec::with_capacity(args.repeat);
                for run in 0..args.repeat {
                    let line = stele::loadgen::run_scenario(&args.url, scenario, *durability, &config, run)
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
            Command::Webhook(command) => webhook::run(command).await,
            Command::Serve(_) | Command::Verify(_) | Command::Bench(_) => {
                unreachable!("handled without a client")
            }
        }
    })
}

/// Connects to a URL checked by [`parse_url`]: plaintext for http, TLS for https
/// (never plaintext: a failed handshake is an error).
async fn connect(url: &str) -> Result<SteleClient<Channel>, CliError> {
    let mut endpoint = Channel::from_shared(url.to_string())
        .map_err(|error| CliError::Usage(format!("invalid URL {url:?}: {error}")))?;
    let tls = is_https(url);
    if tls {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|error| CliError::Usage(format!("cannot set up TLS for {url}: {error}")))?;
    }
    let channel = endpoint.connect().await.map_err(|error| {
        let mut cause = String::new();
        let mut source = std::error::Error::source(&error);
        // Bounded by the length of the error's source chain.
        while let Some(error) = source {
            let text = error.to_string();
            // Wrapping errors often repeat their source's message.
            if !cause.ends_with(&text) {
                cause.push_str(": ");
                cause.push_str(&text);
            }
            source = error.source();
        }
        if tls {
            CliError::Unreachable(format!(
                "cannot connect to {url} over TLS (is the server serving TLS on that port?){cause}"
            ))
        } else {
            CliError::Unreachable(format!("cannot connect to {url}{cause}"))
        }
    })?;
    Ok(SteleClient::new(channel)
        .max_decoding_message_size(MESSAGE_SIZE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_SIZE_BYTES_MAX))
}

async fn topic(command: TopicCommand) -> Result<u8, CliError> {
    match command {
        TopicCommand::Create {
            name,
            settings,
            client,
        } => {
            let mut stub = connect(&client.url).await?;
            let request = proto::CreateTopicRequest {
                topic: name.clone(),
                settings: Some(proto::TopicSettings {
                    partitions: settings.partitions.unwrap_or(0),
                    retention_age_ms: settings.retention_age.map_or(0, |age| age.0),
                    retention_bytes: settings.retention_bytes.map_or(0, |size| size.0),
                    dedup_window_ms: settings.dedup_window.map_or(0, |window| window.0),
                    durability: settings
                        .durability
                        .map_or(proto::Durability::Unspecified, DurabilityArg::to_proto)
                        as i32,
                    sync_interval_ms: settings.sync_interval.map_or(0, |interval| interval.0),
                    segment_size_bytes: settings.segment_size.map_or(0, |size| size.0),
                    payload_size_max: 0,
                }),
            };
            let response = stub.create_topic(request).await?.into_inner();
            let settings = response.settings.unwrap_or_default();
            if client.json {
                println!("{}", json!({"topic": name, "settings": settings_json(&settings)}));
            } else {
                println!("created topic {name}: {}", settings_text(&settings));
            }
        }
        TopicCommand::List { client } => {
            let mut stub = connect(&client.url).await?;
            let response = stub.list_topics(proto::ListTopicsRequest {}).await?.into_inner();
            for name in response.topics {
                if client.json {
                    println!("{}", json!({ "topic": name }));
                } else {
                    println!("{name}");
                }
            }
        }
        TopicCommand::Describe { name, client } => {
            let mut stub = connect(&client.url).await?;
            let response = stub
                .describe_topic(proto::DescribeTopicRequest { topic: name })
                .await?
                .into_inner();
            let settings = response.settings.unwrap_or_default();
            if client.json {
                let partitions: Vec<Value> = response
                    .partitions
                    .iter()
                    .map(|partition| {
                        json!({
                            "partition": partition.partition,
                            "earliest_offset": partition.earliest_offset,
                            "high_watermark": partition.high_watermark,
                            "size_bytes": partition.size_bytes,
                            "segment_count": partition.segment_count,
                            "key_count": partition.key_count,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"topic": response.topic, "settings": settings_json(&settings), "partitions": partitions})
                );
            } else {
                println!("topic {}: {}", response.topic, settings_text(&settings));
                println!(
                    "{:>9} {:>12} {:>14} {:>12} {:>8} {:>10}",
                    "partition", "earliest", "high_watermark", "size", "segments", "keys"
                );
                for partition in &response.partitions {
                    println!(
                        "{:>9} {:>12} {:>14} {:>12} {:>8} {:>10}",
                        partition.partition,
                        partition.earliest_offset,
                        partition.high_watermark,
                        ByteSize(partition.size_bytes).to_string(),
                        partition.segment_count,
                        partition.key_count
                    );
                }
            }
        }
        TopicCommand::Delete { name, client } => {
            let mut stub = connect(&client.url).await?;
            stub.delete_topic(proto::DeleteTopicRequest { topic: name.clone() })
                .await?;
            if client.json {
                println!("{}", json!({ "deleted": name }));
            } else {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(EXIT_OK)
}

fn durability_name(settings: &proto::TopicSettings) -> String {
    match proto::Durability::try_from(settings.durability) {
        Ok(proto::Durability::Always) => "always".to_string(),
        Ok(proto::Durability::Interval) => format!("interval ({})", Millis(settings.sync_interval_ms)),
        Ok(proto::Durability::None) => "none".to_string(),
        _ => "server default".to_string(),
    }
}

fn settings_text(settings: &proto::TopicSettings) -> String {
    let or_keep = |value: u64, show: &dyn Fn(u64) -> String| {
        if value == 0 {
            "none".to_string()
        } else {
            show(value)
        }
    };
    format!(
        "{} partitions, durability {}, dedup window {}, retention age {}, retention bytes {}, segment size {}",
        settings.partitions,
        durability_name(settings),
        Millis(settings.dedup_window_ms),
        or_keep(settings.retention_age_ms, &|age| Millis(age).to_string()),
        or_keep(settings.retention_bytes, &|size| ByteSize(size).to_string()),
        ByteSize(settings.segment_size_bytes),
    )
}

fn settings_json(settings: &proto::TopicSettings) -> Value {
    let durability = proto::Durability::try_from(settings.durability)
        .map(|durability| {
            durability
                .as_str_name()
                .trim_start_matches("DURABILITY_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    json!({
        "partitions": settings.partitions,
        "durability": durability,
        "sync_interval_ms": settings.sync_interval_ms,
        "dedup_window_ms": settings.dedup_window_ms,
        "retention_age_ms": (settings.retention_age_ms != 0).then_some(settings.retention_age_ms),
        "retention_bytes": (settings.retention_bytes != 0).then_some(settings.retention_bytes),
        "segment_size_bytes": settings.segment_size_bytes,
        "payload_size_max": settings.payload_size_max,
    })
}

fn parse_headers(headers: &[String]) -> Result<HashMap<String, Vec<u8>>, CliError> {
    headers
        .iter()
        .map(|header| {
            let (name, value) = header
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("header {header:?} is not NAME=VALUE")))?;
            Ok((name.to_string(), value.as_bytes().to_vec()))
        })
        .collect()
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
    let events: Vec<proto::Event> = payloads
        .into_iter()
        .enumerate()
        .map(|(index, payload)| proto::Event {
            r#type: args.event_type.clone(),
            payload,
            headers: headers.clone(),
            idempotency_id: match &args.id {
                Some(id) if several => format!("{id}-{index}").into_bytes(),
                Some(id) => id.as_bytes().to_vec(),
                None => Vec::new(),
            },
        })
        .collect();
    let calls: Vec<Vec<proto::Event>> = if args.each {
        events.into_iter().map(|event| vec![event]).collect()
    } else {
        vec![events]
    };
    let mut stub = connect(&args.client.url).await?;
    let mut expect = args.expect;
    for events in calls {
        let count = events.len() as u64;
        let response = stub
            .append(proto::AppendRequest {
                topic: args.topic.clone(),
                key: args.key.as_bytes().to_vec(),
                expected: Some(expect.to_proto()),
                events,
                producer: None,
            })
            .await?
            .into_inner();
        let result = response
            .result
            .ok_or_else(|| CliError::Failed("the server sent no append result".to_string()))?;
        // With one call per line, each call continues where the previous ended.
        if expect != Expect::Any {
            expect = Expect::Exact(result.last_sequence);
        }
        print_append(&result, args.key.as_bytes(), count, args.client.json);
    }
    Ok(EXIT_OK)
}

fn print_append(result: &proto::AppendResult, key: &[u8], count: u64, json_output: bool) {
    let last_offset = result.first_offset + count.saturating_sub(1);
    if json_output {
        println!(
            "{}",
            output::json_line(&json!({
                "key": output::bytes_json(key),
                "partition": result.partition,
                "first_offset": result.first_offset,
                "last_offset": last_offset,
                "first_sequence": result.first_sequence,
                "last_sequence": result.last_sequence,
                "timestamp_ms": result.timestamp_ms,
                "duplicate": result.duplicate,
            }))
        );
        return;
    }
    let duplicate = if result.duplicate { " (duplicate)" } else { "" };
    if count == 1 {
        println!(
            "partition {} offset {} sequence {}{duplicate}",
            result.partition, result.first_offset, result.first_sequence
        );
    } else {
        println!(
            "partition {} offsets {}..={} sequences {}..={}{duplicate}",
            result.partition, result.first_offset, last_offset, result.first_sequence, result.last_sequence
        );
    }
}

async fn read(args: ReadArgs) -> Result<u8, CliError> {
    let mut stub = connect(&args.client.url).await?;
    let json_output = args.client.json;
    if let Some(key) = &args.key {
        let max_events = args
            .count
            .map_or(0, |count| u32::try_from(count).unwrap_or(u32::MAX));
        let response = stub
            .read_key(proto::ReadKeyRequest {
                topic: args.topic.clone(),
                key: key.as_bytes().to_vec(),
                from_sequence: args.from_sequence,
                direction: if args.backwards {
                    proto::ReadDirection::Backwards
                } else {
                    proto::ReadDirection::Forwards
                } as i32,
                max_events,
            })
            .await?
            .into_inner();
        for event in &response.events {
            print_event(event, json_output);
        }
        return Ok(EXIT_OK);
    }
    let partitions: Vec<(u32, u64)> = match args.partition {
        // The server answers for a partition the topic does not have.
        Some(partition) => vec![(partition, u64::MAX)],
        None => stub
            .describe_topic(proto::DescribeTopicRequest {
                topic: args.topic.clone(),
            })
            .await?
            .into_inner()
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
        if args.from.is_some_and(|from| from >= described_high_watermark) {
            continue;
        }
        read_partition(&mut stub, &args, partition, &mut remaining).await?;
    }
    Ok(EXIT_OK)
}

/// Prints one partition from `--from` (else its earliest event) up to the high
/// watermark it had at the first answer, at most `remaining` events.
async fn read_partition(
    stub: &mut SteleClient<Channel>,
    args: &ReadArgs,
    partition: u32,
    remaining: &mut u64,
) -> Result<(), CliError> {
    let mut from = args.from.unwrap_or(0);
    let mut high_watermark = None;
    // Bounded: every round prints at least one event or stops.
    while *remaining > 0 {
        let request = proto::ReadRequest {
            topic: args.topic.clone(),
            partition,
            from_offset: from,
            max_events: u32::try_from((*remaining).min(1000)).unwrap_or(1000),
            max_bytes: 0,
        };
        let response = match stub.read(request).await {
            Ok(response) => response.into_inner(),
            // Without --from, start at the earliest retained offset.
            Err(status) if args.from.is_none() && status.code() == tonic::Code::OutOfRange => {
                match status::detail_of(&status).and_then(|detail| detail.earliest_offset) {
                    Some(earliest) if earliest > from => {
                        from = earliest;
                        continue;
                    }
                    _ => return Err(status.into()),
                }
            }
            Err(status) => return Err(status.into()),
        };
        let stop_at = *high_watermark.get_or_insert(response.high_watermark);
        for event in &response.events {
            if event.offset >= stop_at || *remaining == 0 {
                break;
            }
            print_event(event, args.client.json);
            *remaining -= 1;
        }
        if response.events.is_empty() || response.next_offset >= stop_at {
            break;
        }
        from = response.next_offset;
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
            let offsets = offsets
                .iter()
                .map(|entry| {
                    let parsed = entry.split_once('=').and_then(|(partition, offset)| {
                        Some((partition.parse().ok()?, offset.parse().ok()?))
                    });
                    parsed.ok_or_else(|| CliError::Usage(format!("{entry:?} is not PARTITION=OFFSET")))
                })
                .collect::<Result<HashMap<u32, u64>, CliError>>()?;
            let mut stub = connect(&client.url).await?;
            stub.commit_cursor(proto::CommitCursorRequest {
                topic,
                cursor: name.clone(),
                offsets: offsets.clone(),
                allow_backwards,
            })
            .await?;
            if client.json {
                println!("{}", json!({"cursor": name, "committed": offsets}));
            } else {
                let mut committed: Vec<(u32, u64)> = offsets.into_iter().collect();
                committed.sort_unstable();
                let text: Vec<String> = committed
                    .iter()
                    .map(|(partition, offset)| format!("{partition}={offset}"))
                    .collect();
                println!("committed cursor {name}: {}", text.join(" "));
            }
        }
        CursorCommand::Get { topic, name, client } => {
            let mut stub = connect(&client.url).await?;
            let response = stub
                .get_cursor(proto::GetCursorRequest { topic, cursor: name })
                .await?
                .into_inner();
            if let Some(cursor) = response.cursor {
                print_cursor(&cursor, client.json);
            }
        }
        CursorCommand::List { topic, client } => {
            let mut stub = connect(&client.url).await?;
            let response = stub
                .list_cursors(proto::ListCursorsRequest { topic })
                .await?
                .into_inner();
            for cursor in &response.cursors {
                print_cursor(cursor, client.json);
            }
        }
        CursorCommand::Delete { topic, name, client } => {
            let mut stub = connect(&client.url).await?;
            stub.delete_cursor(proto::DeleteCursorRequest {
                topic,
                cursor: name.clone(),
            })
            .await?;
            if client.json {
                println!("{}", json!({ "deleted": name }));
            } else {
                println!("deleted cursor {name}");
            }
        }
    }
    Ok(EXIT_OK)
}

fn print_cursor(cursor: &proto::Cursor, json_output: bool) {
    if json_output {
        let partitions: Vec<Value> = cursor
            .partitions
            .iter()
            .map(|partition| {
                json!({
                    "partition": partition.partition,
                    "committed_offset": partition.committed_offset,
                    "lag": partition.lag,
                })
            })
            .collect();
        println!(
            "{}",
            output::json_line(&json!({"cursor": cursor.name, "partitions": partitions}))
        );
        return;
    }
    let lag: u64 = cursor.partitions.iter().map(|partition| partition.lag).sum();
    let parts: Vec<String> = cursor
        .partitions
        .iter()
        .map(|partition| match partition.committed_offset {
            Some(offset) => format!("{}={offset} (lag {})", partition.partition, partition.lag),
            None => format!("{}=- (lag {})", partition.partition, partition.lag),
        })
        .collect();
    println!("{} lag {lag}: {}", escape(&cursor.name), parts.join(", "));
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
    fn durations_and_sizes_roundtrip_through_text() {
        assert_eq!("7d".parse::<Millis>(), Ok(Millis(7 * 86_400_000)));
        assert_eq!("100ms".parse::<Millis>(), Ok(Millis(100)));
        assert_eq!(Millis(120_000).to_string(), "2m");
        assert!("7".parse::<Millis>().is_err());
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
        assert!(is_https("HTTPS://stele.example.com"));
        assert!(!is_https("http://stele.example.com"));
    }

    #[test]
    fn clap_configuration_is_consistent() {
        Cli::command().debug_assert();
    }
}
