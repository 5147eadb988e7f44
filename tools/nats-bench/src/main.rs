//! `nats-bench`: the scenarios of `stele bench` run against NATS JetStream, so
//! that the two can be compared side by side on the same machine.
//!
//! Every run creates a fresh file-storage stream `bench-<scenario>-<durability>-<run>-<nanos>`
//! with the subjects `bench.<stream>.<key>` (one subject per key, `--keys`
//! keys), runs, checks what it can check, and prints one JSON line with the
//! field names of `stele bench` (`scenario`, `durability`, `events`,
//! `seconds`, `events_per_s`, `mb_per_s`, `latency_us` with `p50`, `p99`,
//! `p999`, `errors`, and the scenario's own checks) plus `"system":"nats"`.
//! With `--repeat` above 1 the median run follows, chosen by stele's own
//! `median_run`; the percentiles, the fdatasync probe and the checks also
//! come from the `stele-bench` crate, so both tools compute their lines alike.
//!
//! JetStream's durability is a server setting, not a per-stream one:
//! `--durability` only labels the lines with what the server was started
//! with (`always` for `jetstream { sync_interval: always }`, `none` for the
//! default, which syncs every 2 minutes). `scripts/bench-nats.sh` starts the
//! server in each mode.
//!
//! Scenarios (what each maps to):
//! - `pipelined`: single-message publishes, `--in-flight` acks in flight per
//!   connection, `--concurrency` connections, keys round-robin.
//! - `batched`: groups of `--batch` messages to one subject, `--in-flight`/16
//!   groups in flight per connection; latency per group (first message sent
//!   to last ack). `--batch-mode acks` (the default): separate publishes sent
//!   back to back with all their acks in flight, since a plain publish stores
//!   one message. `--batch-mode atomic`: one JetStream atomic batch publish
//!   per group (server 2.12+, a stream with `allow_atomic`): every message
//!   carries `Nats-Batch-Id` and `Nats-Batch-Sequence`, only the last one
//!   (`Nats-Batch-Commit`) is acked, and the group is stored whole or not at
//!   all, which is the closest match to one `AppendSession` request of 100
//!   events.
//! - `sequential`: one publish at a time, awaiting its ack; the same fdatasync
//!   probe as `stele bench` runs first in `--fsync-probe-dir`.
//! - `cas`: `Nats-Expected-Last-Subject-Sequence` per key (0 for the first),
//!   one publish in flight per key, all keys at once; then a publish to key 0
//!   expecting its previous-but-one sequence must be refused with
//!   `wrong last sequence` naming the key's last sequence.
//! - `dedup`: `Nats-Msg-Id` within the stream's duplicate window (2 minutes),
//!   every 10th message sent a second time right after the first on the same
//!   connection; exactly the repeats must come back `duplicate` with the
//!   original's sequence, and the stream must hold only the unique count.
//! - `read`: the stream is filled (untimed) as in `batched`, then one pull
//!   consumer (no acks, deliver all) fetches `--read-batch` messages per pull
//!   request until a message reports nothing pending; latency is the gap
//!   between messages, and a message is one event.

use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use stele_bench::{
    DedupCounts, LoadgenError, Measured, Scenario, deal, insert_dedup_counts, insert_fsync_comparison,
    measured_line, micros,
};

/// Everything that stops a run.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    /// A NATS call failed as a whole.
    #[error("{what}: {message}")]
    Nats {
        /// What was being done.
        what: &'static str,
        /// The client's error.
        message: String,
    },
    /// The fdatasync probe or `/proc` failed.
    #[error(transparent)]
    Loadgen(#[from] LoadgenError),
    /// The server answered something the scenario cannot continue with.
    #[error("{0}")]
    Failed(String),
}

type BenchResult<T> = Result<T, BenchError>;

/// Wraps a NATS client error with what was being done.
fn nats<E: Display>(what: &'static str) -> impl FnOnce(E) -> BenchError {
    move |error| BenchError::Nats {
        what,
        message: error.to_string(),
    }
}

/// How `batched` (and the fill of `read`) sends its groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BatchMode {
    /// Separate publishes, every one acked, all acks of a group in flight.
    Acks,
    /// JetStream atomic batch publish (server 2.12+, `allow_atomic` streams):
    /// the group's messages carry `Nats-Batch-Id` and `Nats-Batch-Sequence`,
    /// only the last (`Nats-Batch-Commit`) is acked, and all or none are stored.
    Atomic,
}

impl BatchMode {
    fn description(self) -> &'static str {
        match self {
            BatchMode::Acks => "acks: separate publishes, all acks of a group in flight",
            BatchMode::Atomic => "atomic: one atomic batch per group, only the commit acked",
        }
    }
}

/// What the server was started with; only labels the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// `jetstream { sync_interval: always }`: an fsync per message.
    Always,
    /// The default `sync_interval` (2 minutes).
    None,
}

impl Durability {
    fn name(self) -> &'static str {
        match self {
            Durability::Always => "always",
            Durability::None => "none",
        }
    }

    fn server_setting(self) -> &'static str {
        match self {
            Durability::Always => "sync_interval: always",
            Durability::None => "sync_interval default (2m)",
        }
    }
}

const ABOUT: &str =
    "The scenarios of `stele bench` against NATS JetStream; one JSON line per run and per median.";

const AFTER_HELP: &str = "\
Scenarios: pipelined, batched (groups of --batch messages to one subject: with --batch-mode acks,
separate publishes with all acks in flight; with atomic, one atomic batch publish per group, of
server 2.12+), sequential (one publish awaiting its ack, after an fdatasync probe in
--fsync-probe-dir), cas (Nats-Expected-Last-Subject-Sequence, one in flight per key, then a stale
expectation must be refused), dedup (Nats-Msg-Id, every 10th sent twice), read (a pull consumer
over the whole stream). Without --count each scenario takes the count of
stele bench (pipelined, cas, dedup 200000; batched, read 1000000; sequential 2000).
--durability labels the lines with the server's sync setting; scripts/bench-nats.sh starts the
server for each. The exit code is 1 when a correctness check of a line is false.";

#[derive(Debug, Parser)]
#[command(name = "nats-bench", about = ABOUT, after_help = AFTER_HELP, args_override_self = true)]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// Events per scenario run [default: per scenario, as stele bench].
    #[arg(long)]
    count: Option<u64>,
    /// At most this many events per run, whatever --count or the default says
    /// (for sync_interval: always, where the defaults would take minutes).
    #[arg(long)]
    max_count: Option<u64>,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct keys (one subject each).
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Connections publishing at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Publishes in flight per connection (pipelined, dedup; batched uses a sixteenth of this in groups).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Publishes per group in batched (and when filling read's stream).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// How batched (and the fill of read) sends a group: acks (separate publishes, each acked)
    /// or atomic (an atomic batch, server 2.12+, at most 1000 messages).
    #[arg(long, value_enum, default_value_t = BatchMode::Acks)]
    batch_mode: BatchMode,
    /// Runs per scenario; each run is printed, then the median run.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Scenario: all, or one of pipelined, batched, sequential, cas, dedup, read (comma-separated for several).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The server's sync setting, for the lines: always (sync_interval: always) or none (the default).
    #[arg(long, value_enum)]
    durability: Durability,
    /// Directory for the fdatasync probe of sequential: put it on the server's store filesystem.
    #[arg(long, value_name = "DIR", default_value = ".")]
    fsync_probe_dir: PathBuf,
    /// How long the fdatasync probe runs, e.g. 2s.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    fsync_probe_time: Duration,
    /// read: messages per pull request.
    #[arg(long, default_value_t = 10_000)]
    read_batch: usize,
    /// Replicas of every stream: 1 for one server, 3 on a cluster (the NATS
    /// backend's setting, to compare it with the raw JetStream it runs on).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// The server's process id, to report its memory (`/proc/PID/status`).
    #[arg(long)]
    server_pid: Option<u32>,
}

impl Args {
    fn count_of(&self, scenario: Scenario) -> u64 {
        let count = self.count.unwrap_or_else(|| scenario.count_default());
        count.min(self.max_count.unwrap_or(u64::MAX)).max(1)
    }

    /// Groups in flight per connection in batched: as `stele bench`.
    fn batched_window(&self) -> usize {
        (self.in_flight / 16).max(1)
    }
}

/// Acks of publishes sent and not yet awaited stop counting after this long.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

async fn connect(url: &str) -> BenchResult<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connect(url)
        .await
        .map_err(nats("connect"))
}

/// A JetStream context that waits (instead of failing) when `in_flight` acks are pending.
fn context(client: async_nats::Client, in_flight: usize) -> jetstream::Context {
    jetstream::context::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .max_ack_inflight(in_flight.max(1))
        .backpressure_on_inflight(true)
        .build(client)
}

fn key_name(index: u64) -> String {
    format!("key-{index:07}")
}

/// One subject per key of a stream.
fn subjects(stream: &str, keys: u64) -> Vec<Subject> {
    (0..keys.max(1))
        .map(|key| Subject::from(format!("bench.{stream}.{}", key_name(key))))
        .collect()
}

/// The common fields of a line, named as in `stele bench`.
fn result_line(
    scenario: Scenario,
    args: &Args,
    events: u64,
    elapsed: Duration,
    latencies_us: &mut [u64],
    errors: u64,
) -> Map<String, Value> {
    let measured = Measured {
        scenario: scenario.name(),
        durability: args.durability.name(),
        events,
        elapsed,
        errors,
        size: args.size,
        keys: args.keys,
    };
    let mut line = measured_line(measured, latencies_us);
    line.insert("system".into(), json!("nats"));
    line.insert("server_sync".into(), json!(args.durability.server_setting()));
    line.insert("replicas".into(), json!(args.replicas));
    line
}

/// One message of a unit.
enum Message {
    /// A JetStream publish whose ack is awaited.
    Acked(Subject, Publish),
    /// A core publish with headers and no reply (an atomic batch's messages before the commit).
    Unacked(Subject, HeaderMap, Bytes),
}

/// A unit of work in a pipeline: its index and messages sent back to back,
/// whose acks are awaited together (one latency sample per unit).
type Unit = (u64, Vec<Message>);

/// What a pipelined connection hands back.
#[derive(Default)]
struct PipeOutcome {
    latencies_us: Vec<u64>,
    /// Failed messages (all of an atomic batch when its commit failed).
    errors: u64,
    /// Per unit, when asked: its index and the outcome of each publish.
    outcomes: Vec<(u64, Vec<Result<PublishAck, PublishErrorKind>>)>,
}

/// Sends `units` over one connection with at most `window` units in flight.
async fn pipeline(
    client: async_nats::Client,
    units: Vec<Unit>,
    window: usize,
    keep_outcomes: bool,
) -> BenchResult<PipeOutcome> {
    let unit_len = units
        .iter()
        .map(|(_, messages)| messages.len())
        .max()
        .unwrap_or(1);
    let js = context(client.clone(), window.max(1) * unit_len.max(1));
    let mut outcome = PipeOutcome {
        latencies_us: Vec::with_capacity(units.len()),
        ..PipeOutcome::default()
    };
    let mut sent: VecDeque<(u64, Instant, u64, Vec<PublishAckFuture>)> = VecDeque::with_capacity(window);
    let mut units = units.into_iter();
    let mut exhausted = false;
    loop {
        while !exhausted && sent.len() < window.max(1) {
            match units.next() {
                Some((index, messages)) => {
                    let started = Instant::now();
                    let events = messages.len() as u64;
                    let mut acks = Vec::with_capacity(messages.len());
                    for message in messages {
                        match message {
                            Message::Acked(subject, publish) => {
                                acks.push(js.send_publish(subject, publish).await.map_err(nats("publish"))?);
                            }
                            Message::Unacked(subject, headers, payload) => client
                                .publish_with_headers(subject, headers, payload)
                                .await
                                .map_err(nats("publish"))?,
                        }
                    }
                    sent.push_back((index, started, events, acks));
                }
                None => exhausted = true,
            }
        }
        let Some((index, started, events, acks)) = sent.pop_front() else {
            break;
        };
        // Events per ack: 1, or the whole batch for an atomic batch's commit.
        let per_ack = events / (acks.len() as u64).max(1);
        let mut results = Vec::with_capacity(acks.len());
        for ack in acks {
            let result = ack.await.map_err(|error| error.kind());
            if result.is_err() {
                outcome.errors += per_ack;
            }
            results.push(result);
        }
        outcome.latencies_us.push(micros(started.elapsed()));
        if keep_outcomes {
            outcome.outcomes.push((index, results));
        }
    }
    Ok(outcome)
}

/// Runs one pipeline per list of units concurrently, each over its own connection.
async fn run_connections(
    url: &str,
    per_connection: Vec<Vec<Unit>>,
    window: usize,
    keep_outcomes: bool,
) -> BenchResult<(Duration, PipeOutcome)> {
    let mut clients = Vec::with_capacity(per_connection.len());
    for _ in 0..per_connection.len() {
        clients.push(connect(url).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(per_connection.len());
    for (client, units) in clients.into_iter().zip(per_connection) {
        tasks.push(tokio::spawn(pipeline(client, units, window, keep_outcomes)));
    }
    let mut total = PipeOutcome::default();
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| BenchError::Failed(format!("connection task failed: {error}")))??;
        total.latencies_us.extend(outcome.latencies_us);
        total.errors += outcome.errors;
        total.outcomes.extend(outcome.outcomes);
    }
    Ok((started.elapsed(), total))
}

/// A fresh stream name for one run.
fn stream_name(scenario: Scenario, durability: Durability, run: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    format!("bench-{}-{}-{run}-{nanos:x}", scenario.name(), durability.name())
}

/// Runs one scenario once on a fresh stream and returns its JSON line.
async fn run_scenario(args: &Args, scenario: Scenario, run: usize) -> BenchResult<Value> {
    let load_before = load_1m();
    let client = connect(&args.url).await?;
    let server_version = client.server_info().version;
    let js = context(client, 1);
    let name = stream_name(scenario, args.durability, run);
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench.{name}.*")],
            storage: stream::StorageType::File,
            num_replicas: args.replicas,
            duplicate_window: Duration::from_secs(120),
            allow_atomic_publish: args.batch_mode == BatchMode::Atomic,
            ..stream::Config::default()
        })
        .await
        .map_err(nats("create stream"))?;
    let subjects = subjects(&name, args.keys);
    let mut line = match scenario {
        Scenario::Pipelined => pipelined(args, &subjects).await?,
        Scenario::Batched => batched(args, &stream, &subjects).await?,
        Scenario::Sequential => sequential(args, &js, &subjects).await?,
        Scenario::Cas => cas(args, &js, &stream, &subjects).await?,
        Scenario::Dedup => dedup(args, &stream, &subjects).await?,
        Scenario::Read => read(args, &stream, &subjects).await?,
    };
    line.insert("run".into(), json!(run));
    line.insert("topic".into(), json!(name));
    line.insert("server_version".into(), json!(server_version));
    line.insert(
        "load_1m".into(),
        json!({"before": load_before, "after": load_1m()}),
    );
    if let Some(pid) = args.server_pid {
        line.insert("server_memory_kb".into(), stele_bench::process_memory_kb(pid)?);
    }
    // The stream is left in place, as `stele bench` leaves its topics.
    Ok(Value::Object(line))
}

/// The 1-minute load average, when `/proc/loadavg` can be read.
fn load_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn publish(payload: &Bytes) -> Publish {
    Publish::build().payload(payload.clone())
}

async fn pipelined(args: &Args, subjects: &[Subject]) -> BenchResult<Map<String, Value>> {
    let count = args.count_of(Scenario::Pipelined);
    let payload = Bytes::from(vec![b'p'; args.size]);
    let units = (0..count).map(|index| {
        let subject = subjects[(index % subjects.len() as u64) as usize].clone();
        (index, vec![Message::Acked(subject, publish(&payload))])
    });
    let per_connection = deal(units, args.concurrency);
    let (elapsed, mut outcome) = run_connections(&args.url, per_connection, args.in_flight, false).await?;
    let mut line = result_line(
        Scenario::Pipelined,
        args,
        count,
        elapsed,
        &mut outcome.latencies_us,
        outcome.errors,
    );
    line.insert("streams".into(), json!(args.concurrency));
    line.insert("in_flight_per_stream".into(), json!(args.in_flight));
    Ok(line)
}

/// Groups of `batch` messages to one subject each, subjects round-robin:
/// separate publishes, or atomic batches (`Nats-Batch-Id`,
/// `Nats-Batch-Sequence`, and `Nats-Batch-Commit` on the last, the only one acked).
fn batch_units(count: u64, args: &Args, subjects: &[Subject], payload: &Bytes) -> Vec<Unit> {
    let batch = args.batch.max(1) as u64;
    (0..count.div_ceil(batch))
        .map(|index| {
            let subject = &subjects[(index % subjects.len() as u64) as usize];
            let events = batch.min(count - index * batch);
            let messages = (1..=events)
                .map(|sequence| match args.batch_mode {
                    BatchMode::Acks => Message::Acked(subject.clone(), publish(payload)),
                    BatchMode::Atomic => {
                        let mut headers = HeaderMap::new();
                        headers.insert("Nats-Batch-Id", format!("batch-{index}").as_str());
                        headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
                        if sequence < events {
                            Message::Unacked(subject.clone(), headers, payload.clone())
                        } else {
                            headers.insert("Nats-Batch-Commit", "1");
                            Message::Acked(subject.clone(), publish(payload).headers(headers))
                        }
                    }
                })
                .collect();
            (index, messages)
        })
        .collect()
}

async fn batched(
    args: &Args,
    stream: &jetstream::stream::Stream,
    subjects: &[Subject],
) -> BenchResult<Map<String, Value>> {
    let count = args.count_of(Scenario::Batched);
    let payload = Bytes::from(vec![b'b'; args.size]);
    let units = batch_units(count, args, subjects, &payload);
    let window = args.batched_window();
    let per_connection = deal(units.into_iter(), args.concurrency);
    let (elapsed, mut outcome) = run_connections(&args.url, per_connection, window, false).await?;
    let mut line = result_line(
        Scenario::Batched,
        args,
        count,
        elapsed,
        &mut outcome.latencies_us,
        outcome.errors,
    );
    line.insert("batch_events".into(), json!(args.batch));
    line.insert("streams".into(), json!(args.concurrency));
    line.insert("in_flight_per_stream".into(), json!(window));
    line.insert("latency_per".into(), json!("request"));
    line.insert("batch_mode".into(), json!(args.batch_mode.description()));
    line.insert("stream_messages".into(), json!(stream_messages(stream).await?));
    Ok(line)
}

async fn sequential(
    args: &Args,
    js: &jetstream::Context,
    subjects: &[Subject],
) -> BenchResult<Map<String, Value>> {
    let count = args.count_of(Scenario::Sequential);
    let probe = stele_bench::fsync_probe(args.fsync_probe_dir.clone(), args.fsync_probe_time).await?;
    let payload = Bytes::from(vec![b's'; args.size]);
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let started = Instant::now();
    for index in 0..count {
        let subject = subjects[(index % subjects.len() as u64) as usize].clone();
        let sent = Instant::now();
        let ack = js
            .send_publish(subject, publish(&payload))
            .await
            .map_err(nats("publish"))?;
        if ack.await.is_err() {
            errors += 1;
        }
        latencies.push(micros(sent.elapsed()));
    }
    let elapsed = started.elapsed();
    let mut line = result_line(Scenario::Sequential, args, count, elapsed, &mut latencies, errors);
    insert_fsync_comparison(&mut line, &probe);
    Ok(line)
}

/// The sequence named in a `wrong last sequence: N` error.
fn wrong_last_sequence(error: &impl Display) -> Option<u64> {
    const MARK: &str = "wrong last sequence: ";
    let text = error.to_string();
    text.match_indices(MARK).find_map(|(at, _)| {
        let rest = &text[at + MARK.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Per subject, the number of messages it holds.
async fn subject_counts(
    stream: &jetstream::stream::Stream,
    filter: String,
) -> BenchResult<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    let mut pages = stream
        .info_with_subjects(filter)
        .await
        .map_err(nats("stream info"))?;
    while let Some(entry) = pages.next().await {
        let (subject, count) = entry.map_err(nats("stream info"))?;
        counts.insert(subject, count);
    }
    Ok(counts)
}

async fn stream_messages(stream: &jetstream::stream::Stream) -> BenchResult<u64> {
    Ok(stream
        .get_info()
        .await
        .map_err(nats("stream info"))?
        .state
        .messages)
}

/// The stream's name, from its first subject `bench.<stream>.<key>`.
fn stream_of(subjects: &[Subject]) -> String {
    subjects
        .first()
        .and_then(|subject| subject.as_str().split('.').nth(1))
        .unwrap_or_default()
        .to_string()
}

async fn cas(
    args: &Args,
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    subjects: &[Subject],
) -> BenchResult<Map<String, Value>> {
    let count = args.count_of(Scenario::Cas);
    let keys = args.keys.min(count).max(1);
    let connections = args.concurrency.max(1);
    let share = |key: u64| count / keys + u64::from(key < count % keys);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(&args.url).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (connection, client) in clients.into_iter().enumerate() {
        let assigned: Vec<(u64, Subject, u64)> = (0..keys)
            .filter(|key| *key as usize % connections == connection)
            .map(|key| (key, subjects[key as usize].clone(), share(key)))
            .collect();
        tasks.push(tokio::spawn(cas_connection(client, assigned, args.size)));
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let mut conflicts = 0;
    let mut tails: HashMap<u64, KeyTail> = HashMap::new();
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| BenchError::Failed(format!("cas task failed: {error}")))??;
        latencies.extend(outcome.latencies_us);
        errors += outcome.errors;
        conflicts += outcome.conflicts;
        tails.extend(outcome.tails);
    }
    let elapsed = started.elapsed();
    let mut line = result_line(Scenario::Cas, args, count, elapsed, &mut latencies, errors);
    line.insert("streams".into(), json!(connections));
    line.insert("keys_in_flight".into(), json!(keys));
    line.insert("conflicts".into(), json!(conflicts));
    // Every key's subject must hold exactly its share, and nothing else is in the stream.
    let counts = subject_counts(stream, format!("bench.{}.>", stream_of(subjects))).await?;
    let shares_ok = (0..keys).all(|key| {
        counts
            .get(subjects[key as usize].as_str())
            .map(|held| *held as u64)
            == Some(share(key))
    });
    let messages = stream_messages(stream).await?;
    line.insert("stream_messages".into(), json!(messages));
    line.insert(
        "sequences_ok".into(),
        json!(shares_ok && messages == count && conflicts == 0),
    );
    // A stale expectation is refused with the key's actual last sequence.
    let KeyTail { last, previous } = tails.get(&0).copied().unwrap_or_default();
    let stale = previous.unwrap_or(0);
    let payload = Bytes::from(vec![b'c'; args.size]);
    let request = publish(&payload).expected_last_subject_sequence(stale);
    let outcome = match js.send_publish(subjects[0].clone(), request).await {
        Ok(ack) => ack.await,
        Err(error) => Err(error),
    };
    let check = match outcome {
        Ok(ack) => json!({"rejected": false, "appended_at_sequence": ack.sequence}),
        Err(error) => {
            let actual = wrong_last_sequence(&error);
            json!({
                "rejected": error.kind() == PublishErrorKind::WrongLastSequence
                    && actual.is_some() && actual == last,
                "kind": format!("{:?}", error.kind()),
                "error": error.to_string(),
                "expected_sent": stale,
                "actual_sequence": actual,
                "actual_sequence_wanted": last,
            })
        }
    };
    line.insert("stale_check".into(), check);
    Ok(line)
}

#[derive(Default)]
struct CasOutcome {
    latencies_us: Vec<u64>,
    errors: u64,
    conflicts: u64,
    /// Per key: its acknowledged tail.
    tails: Vec<(u64, KeyTail)>,
}

/// The stream sequences of a key's last two acknowledged messages.
#[derive(Debug, Default, Clone, Copy)]
struct KeyTail {
    last: Option<u64>,
    previous: Option<u64>,
}

/// One connection's keys, each with one publish in flight expecting the
/// stream sequence of the key's previous message (0: none yet).
async fn cas_connection(
    client: async_nats::Client,
    assigned: Vec<(u64, Subject, u64)>,
    size: usize,
) -> BenchResult<CasOutcome> {
    // As in `stele bench`: at most 512 keys in flight per connection.
    const WINDOW: usize = 512;
    let js = context(client, WINDOW);
    let payload = Bytes::from(vec![b'c'; size]);
    let mut remaining: Vec<u64> = assigned.iter().map(|(_, _, appends)| *appends).collect();
    let mut tails: Vec<KeyTail> = vec![KeyTail::default(); assigned.len()];
    let mut ready: VecDeque<usize> = (0..assigned.len()).filter(|slot| remaining[*slot] > 0).collect();
    let mut sent: VecDeque<(usize, Instant, PublishAckFuture)> = VecDeque::new();
    let mut outcome = CasOutcome::default();
    loop {
        while sent.len() < WINDOW
            && let Some(slot) = ready.pop_front()
        {
            let request = publish(&payload).expected_last_subject_sequence(tails[slot].last.unwrap_or(0));
            let started = Instant::now();
            let ack = js
                .send_publish(assigned[slot].1.clone(), request)
                .await
                .map_err(nats("publish"))?;
            sent.push_back((slot, started, ack));
        }
        let Some((slot, started, ack)) = sent.pop_front() else {
            break;
        };
        let result = ack.await;
        outcome.latencies_us.push(micros(started.elapsed()));
        remaining[slot] -= 1;
        match result {
            Ok(ack) => {
                tails[slot] = KeyTail {
                    last: Some(ack.sequence),
                    previous: tails[slot].last,
                };
            }
            Err(error) => {
                outcome.errors += 1;
                if error.kind() == PublishErrorKind::WrongLastSequence {
                    outcome.conflicts += 1;
                    tails[slot].last = wrong_last_sequence(&error);
                }
            }
        }
        if remaining[slot] > 0 {
            ready.push_back(slot);
        }
    }
    outcome.tails = assigned.iter().map(|(key, _, _)| *key).zip(tails).collect();
    Ok(outcome)
}

async fn dedup(
    args: &Args,
    stream: &jetstream::stream::Stream,
    subjects: &[Subject],
) -> BenchResult<Map<String, Value>> {
    let unique = args.count_of(Scenario::Dedup);
    let payload = Bytes::from(vec![b'd'; args.size]);
    let connections = args.concurrency.max(1);
    // Unit index: 0.. in send order; an event i with i % 10 == 0 is sent a
    // second time right after its first send, on the same connection.
    let mut per_connection: Vec<Vec<Unit>> = (0..connections).map(|_| Vec::new()).collect();
    let mut repeats = Vec::with_capacity((unique + unique / 10 + 1) as usize);
    for id in 0..unique {
        let copies = if id % 10 == 0 { 2 } else { 1 };
        for copy in 0..copies {
            let subject = subjects[(id % subjects.len() as u64) as usize].clone();
            let request = publish(&payload).message_id(format!("dedup-{id}"));
            per_connection[(id as usize / 10) % connections]
                .push((repeats.len() as u64, vec![Message::Acked(subject, request)]));
            repeats.push((id, copy == 1));
        }
    }
    let sent = repeats.len() as u64;
    let (elapsed, mut outcome) = run_connections(&args.url, per_connection, args.in_flight, true).await?;
    let mut duplicates_expected = 0u64;
    let mut duplicates_reported = 0u64;
    let mut wrong = 0u64;
    let mut originals: HashMap<u64, u64> = HashMap::new();
    let mut repeat_acks = Vec::new();
    for (index, results) in &outcome.outcomes {
        let (id, is_repeat) = repeats[*index as usize];
        duplicates_expected += u64::from(is_repeat);
        match results.first() {
            Some(Ok(ack)) => {
                duplicates_reported += u64::from(ack.duplicate);
                if ack.duplicate != is_repeat {
                    wrong += 1;
                }
                if is_repeat {
                    repeat_acks.push((id, ack.sequence));
                } else {
                    originals.insert(id, ack.sequence);
                }
            }
            _ => wrong += 1,
        }
    }
    let positions_match = repeat_acks
        .iter()
        .all(|(id, sequence)| originals.get(id) == Some(sequence));
    let messages = stream_messages(stream).await?;
    let mut line = result_line(
        Scenario::Dedup,
        args,
        sent,
        elapsed,
        &mut outcome.latencies_us,
        outcome.errors,
    );
    insert_dedup_counts(
        &mut line,
        DedupCounts {
            unique,
            duplicates_expected,
            duplicates_reported,
            wrong_duplicate_flags: wrong,
            repeat_positions_match: positions_match,
            stored_field: "stream_messages",
            stored: messages,
        },
    );
    line.insert("streams".into(), json!(connections));
    line.insert("duplicate_window_s".into(), json!(120));
    Ok(line)
}

/// How long `read` waits for the next message before it gives up.
const READ_STALL: Duration = Duration::from_secs(30);

async fn read(
    args: &Args,
    stream: &jetstream::stream::Stream,
    subjects: &[Subject],
) -> BenchResult<Map<String, Value>> {
    let count = args.count_of(Scenario::Read);
    let payload = Bytes::from(vec![b'r'; args.size]);
    // Fill the stream (untimed).
    let units = batch_units(count, args, subjects, &payload);
    let per_connection = deal(units.into_iter(), args.concurrency);
    let (fill_elapsed, fill) =
        run_connections(&args.url, per_connection, args.batched_window(), false).await?;
    if fill.errors > 0 {
        return Err(BenchError::Failed(format!(
            "read: {} publishes failed while filling the stream",
            fill.errors
        )));
    }
    let memory_before = match args.server_pid {
        Some(pid) => Some(stele_bench::process_memory_kb(pid)?),
        None => None,
    };
    let started = Instant::now();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            ..consumer::pull::Config::default()
        })
        .await
        .map_err(nats("create consumer"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(args.read_batch.max(1))
        .messages()
        .await
        .map_err(nats("pull"))?;
    let mut events = 0u64;
    let mut latencies = Vec::with_capacity(count as usize);
    let mut caught_up = false;
    let mut last = Instant::now();
    loop {
        let message = match tokio::time::timeout(READ_STALL, messages.next()).await {
            Ok(Some(message)) => message.map_err(nats("pull"))?,
            Ok(None) | Err(_) => break,
        };
        let now = Instant::now();
        latencies.push(micros(now - last));
        events += 1;
        let info = message.info().map_err(nats("message info"))?;
        if info.pending == 0 {
            caught_up = true;
            break;
        }
        last = Instant::now();
    }
    let elapsed = started.elapsed();
    drop(messages);
    let mut line = result_line(Scenario::Read, args, events, elapsed, &mut latencies, 0);
    line.insert("latency_per".into(), json!("message gap (one event per message)"));
    line.insert("caught_up".into(), json!(caught_up));
    line.insert("read_ok".into(), json!(caught_up && events == count));
    line.insert("messages".into(), json!(events));
    line.insert("max_messages_per_pull".into(), json!(args.read_batch));
    line.insert(
        "fill_events_per_s".into(),
        json!((count as f64 / fill_elapsed.as_secs_f64().max(1e-9)).round() as u64),
    );
    if let Some(before) = memory_before {
        line.insert("server_memory_kb_before_read".into(), before);
    }
    Ok(line)
}

fn scenarios(list: &str) -> Result<Vec<Scenario>, String> {
    if list == "all" {
        return Ok(Scenario::ALL.to_vec());
    }
    list.split(',')
        .map(|name| Scenario::from_name(name.trim()).ok_or_else(|| format!("unknown scenario {name:?}")))
        .collect()
}

async fn bench(args: Args) -> Result<(), String> {
    let scenarios = scenarios(&args.scenario)?;
    if args.repeat == 0 || args.concurrency == 0 || args.keys == 0 || args.batch == 0 || args.in_flight == 0 {
        return Err("--repeat, --concurrency, --keys, --batch and --in-flight must be at least 1".into());
    }
    let mut failed_checks = Vec::new();
    for scenario in scenarios {
        let mut runs = Vec::with_capacity(args.repeat);
        for run in 0..args.repeat {
            let line = run_scenario(&args, scenario, run)
                .await
                .map_err(|error| format!("{}: {error}", scenario.name()))?;
            println!("{line}");
            if !stele_bench::checks_passed(&line) {
                failed_checks.push(format!("{} run {run}", scenario.name()));
            }
            runs.push(line);
        }
        if args.repeat > 1
            && let Some(median) = stele_bench::median_run(&runs)
        {
            println!("{median}");
        }
    }
    if failed_checks.is_empty() {
        Ok(())
    } else {
        Err(format!("correctness checks failed: {}", failed_checks.join(", ")))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("nats-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("nats-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A duration in humantime's grammar (`500us`, `2s`, `1m`), as every flag of
/// the `stele` command takes it.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|_| format!("invalid duration {text:?}: use a number and a unit (us, ms, s, m), e.g. 2s"))
}
