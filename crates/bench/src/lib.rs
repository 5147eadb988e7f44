//! `stele bench`: a load generator that drives a running server over gRPC.
//!
//! Every scenario creates a fresh topic with the durability asked for, runs,
//! checks what it can check, and returns one JSON object:
//! `{"scenario", "durability", "events", "seconds", "events_per_s", "mb_per_s",
//! "latency_us": {"p50", "p99", "p999"}, "errors", ...}` plus the scenario's
//! own fields. The command prints one line per object; [`median_run`] picks
//! the median of repeated runs.
//!
//! Scenarios ([`Scenario`]):
//! - `pipelined`: single-event appends over raw `AppendSession` streams, many
//!   requests in flight per stream, keys spread over `keys`; latency per append.
//! - `batched`: `AppendSession` requests of `batch` events (one key per
//!   request), several streams; latency per request.
//! - `sequential`: one unary append in flight; compared with the disk's own
//!   fdatasync p50 ([`fsync_probe`]), with a WhoAmI call through Stele's whole
//!   stack (`rpc_probe`) and with the transport's floor on this machine (`floor`:
//!   a TCP echo and a bare tonic Health/Check inside the load generator).
//! - `cas`: every key has one append in flight expecting the key's previous
//!   sequence, all keys at once; then a stale expectation must be rejected
//!   with `FAILED_PRECONDITION` and the actual sequence.
//! - `dedup`: unique idempotency ids, every 10th event sent twice; exactly the
//!   repeats must come back `duplicate`, and the high watermarks must sum to
//!   the unique count.
//! - `read`: a subscription from the earliest event until `CaughtUp` over a
//!   topic filled (untimed) with `count` events; optionally a slow consumer
//!   that sleeps per message.
//!
//! Consumer-group scenarios ([`GroupScenario`], in `group`; Stele only, so
//! `tools/nats-bench`, which mirrors [`Scenario`], does not know them):
//! - `group`: members of a consumer group acking every delivery over a
//!   prefilled topic, until every event's settle is confirmed durable.
//! - `group-baseline`: the same events through plain subscriptions.
//!
//! [`AnyScenario`] is either kind, as the command selects them.
//!
//! Load shapes only: nothing here sleeps to wait for the server, except the
//! slow consumer's deliberate per-message pause.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod floor;
mod group;
pub mod partitions;

pub use group::GroupScenario;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stele_engine::Sequence;

use serde_json::{Value, json};

use stele_client::{
    Client, ClientError, ClientResult, ConnectOptions, GrpcCode, ServerUrl, StartPosition, SubscribeOptions,
    SubscriptionItem,
};
use stele_engine::config::{Durability, TopicOptions};
use stele_engine::error::ErrorKind;
use stele_engine::event::{AppendAck, AppendRequest, Event, ExpectedSequence};

/// Everything that can stop a scenario.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadgenError {
    /// A call to the server failed as a whole.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The fdatasync probe or `/proc` could not be read.
    #[error("{0}")]
    Io(String),
    /// The server answered something the scenario cannot continue with.
    #[error("{0}")]
    Failed(String),
}

/// A result with a [`LoadgenError`].
pub type LoadgenResult<T> = std::result::Result<T, LoadgenError>;

/// One scenario of the load generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Single-event appends, pipelined over `AppendSession`.
    Pipelined,
    /// Requests of `batch` events over `AppendSession`.
    Batched,
    /// One unary append in flight.
    Sequential,
    /// Compare-and-set appends, one in flight per key.
    Cas,
    /// Idempotency ids with every 10th event repeated.
    Dedup,
    /// A subscription catching up over the whole topic.
    Read,
}

impl Scenario {
    /// Every scenario, in the order `all` runs them.
    pub const ALL: [Scenario; 6] = [
        Scenario::Pipelined,
        Scenario::Batched,
        Scenario::Sequential,
        Scenario::Cas,
        Scenario::Dedup,
        Scenario::Read,
    ];

    /// The scenario's name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pipelined => "pipelined",
            Scenario::Batched => "batched",
            Scenario::Sequential => "sequential",
            Scenario::Cas => "cas",
            Scenario::Dedup => "dedup",
            Scenario::Read => "read",
        }
    }

    /// The scenario of a name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|scenario| scenario.name() == name)
    }

    /// Events per run when `--count` is not given: a few seconds each on a
    /// 2-core machine.
    pub fn count_default(self) -> u64 {
        match self {
            Scenario::Pipelined | Scenario::Cas | Scenario::Dedup => 200_000,
            Scenario::Batched | Scenario::Read => 1_000_000,
            Scenario::Sequential => 2_000,
        }
    }
}

/// A scenario of either kind: the log's ([`Scenario`]) or consumer groups'
/// ([`GroupScenario`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnyScenario {
    /// Appends and reads.
    Log(Scenario),
    /// Consumer groups.
    Group(GroupScenario),
    /// Many partitions on one server ([`partitions`]); run only when named,
    /// since it creates `topics` × `topic_partitions` partitions.
    Partitions,
}

impl AnyScenario {
    /// Every scenario, in the order `all` runs them: the log's, then the groups'.
    pub const ALL: [AnyScenario; 8] = [
        AnyScenario::Log(Scenario::Pipelined),
        AnyScenario::Log(Scenario::Batched),
        AnyScenario::Log(Scenario::Sequential),
        AnyScenario::Log(Scenario::Cas),
        AnyScenario::Log(Scenario::Dedup),
        AnyScenario::Log(Scenario::Read),
        AnyScenario::Group(GroupScenario::Group),
        AnyScenario::Group(GroupScenario::Baseline),
    ];

    /// The scenario's name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            AnyScenario::Log(scenario) => scenario.name(),
            AnyScenario::Group(scenario) => scenario.name(),
            AnyScenario::Partitions => partitions::NAME,
        }
    }

    /// The scenario of a name (`partitions` too, which `all` leaves out).
    pub fn from_name(name: &str) -> Option<AnyScenario> {
        AnyScenario::ALL
            .into_iter()
            .chain([AnyScenario::Partitions])
            .find(|scenario| scenario.name() == name)
    }
}

impl From<Scenario> for AnyScenario {
    fn from(scenario: Scenario) -> AnyScenario {
        AnyScenario::Log(scenario)
    }
}

impl From<GroupScenario> for AnyScenario {
    fn from(scenario: GroupScenario) -> AnyScenario {
        AnyScenario::Group(scenario)
    }
}

/// The name of a durability in the JSON.
pub fn durability_name(durability: Durability) -> &'static str {
    match durability {
        Durability::Always => "always",
        Durability::Interval { .. } => "interval",
        Durability::None => "none",
    }
}

/// How to run the scenarios.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Events per run; `None` takes [`Scenario::count_default`].
    pub count: Option<u64>,
    /// Payload bytes per event.
    pub size: usize,
    /// Distinct keys.
    pub keys: u64,
    /// Streams (`pipelined`, `batched`, `cas`, `dedup`) or connections.
    pub concurrency: usize,
    /// Requests in flight per stream (`pipelined`, `dedup`, `batched`).
    pub in_flight: usize,
    /// Events per request in `batched` (and when filling `read`'s topic).
    pub batch: usize,
    /// Partitions of each fresh topic.
    pub partitions: u32,
    /// Where the fdatasync probe writes its file (the data directory's filesystem).
    pub fsync_probe_dir: PathBuf,
    /// How long the fdatasync probe runs.
    pub fsync_probe_duration: Duration,
    /// `read`: pause per received message (a slow consumer).
    pub slow_consumer: Option<Duration>,
    /// `read`: most events per subscription message.
    pub read_batch_events: u32,
    /// The server's process id, to report its memory (`/proc/PID/status`).
    pub server_pid: Option<u32>,
    /// `partitions`: topics to create.
    pub topics: usize,
    /// `partitions`: partitions of each of them.
    pub topic_partitions: u32,
}

impl Default for BenchConfig {
    fn default() -> BenchConfig {
        BenchConfig {
            count: None,
            size: 100,
            keys: 1000,
            concurrency: 4,
            in_flight: 256,
            batch: 100,
            partitions: 4,
            fsync_probe_dir: PathBuf::from("."),
            fsync_probe_duration: Duration::from_secs(2),
            slow_consumer: None,
            read_batch_events: 10_000,
            server_pid: None,
            topics: 100,
            topic_partitions: 100,
        }
    }
}

impl BenchConfig {
    /// Events per run of `scenario`.
    pub fn count_of(&self, scenario: Scenario) -> u64 {
        self.count.unwrap_or_else(|| scenario.count_default()).max(1)
    }
}

/// Latency percentiles in microseconds of unsorted samples.
pub fn percentiles(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let at = |fraction: f64| -> u64 {
        if samples.is_empty() {
            return 0;
        }
        let index = ((samples.len() as f64) * fraction).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    json!({"p50": at(0.50), "p99": at(0.99), "p999": at(0.999)})
}

/// Whole microseconds, saturating.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// `value` rounded to `digits` decimals.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// What every scenario line reports, whichever system ran it: the names are the
/// contract that lets `tools/nats-bench` lines line up with `stele bench` ones.
#[derive(Debug, Clone, Copy)]
pub struct Measured<'a> {
    /// The scenario's name.
    pub scenario: &'a str,
    /// The durability label (`always`, `none`).
    pub durability: &'a str,
    /// Events appended or read.
    pub events: u64,
    /// Wall time of the timed part.
    pub elapsed: Duration,
    /// Failed requests.
    pub errors: u64,
    /// Payload bytes per event.
    pub size: usize,
    /// Distinct keys.
    pub keys: u64,
}

/// The common fields of a line: rates, percentiles of `latencies_us`, and the parameters.
pub fn measured_line(measured: Measured<'_>, latencies_us: &mut [u64]) -> serde_json::Map<String, Value> {
    let seconds = measured.elapsed.as_secs_f64().max(1e-9);
    let events_per_s = measured.events as f64 / seconds;
    let mb_per_s = events_per_s * measured.size as f64 / 1e6;
    let mut line = serde_json::Map::new();
    line.insert("scenario".into(), json!(measured.scenario));
    line.insert("durability".into(), json!(measured.durability));
    line.insert("events".into(), json!(measured.events));
    line.insert("seconds".into(), json!(round(seconds, 4)));
    line.insert("events_per_s".into(), json!(events_per_s.round() as u64));
    line.insert("mb_per_s".into(), json!(round(mb_per_s, 2)));
    line.insert("latency_us".into(), percentiles(latencies_us));
    line.insert("errors".into(), json!(measured.errors));
    line.insert("size".into(), json!(measured.size));
    line.insert("keys".into(), json!(measured.keys));
    line
}

/// Adds the fdatasync probe to a `sequential` line, and how far the append p50
/// is above the probe's p50 (the latency target compares the two).
pub fn insert_fsync_comparison(line: &mut serde_json::Map<String, Value>, probe: &FsyncProbe) {
    let p50 = line["latency_us"]["p50"].as_u64().unwrap_or_default();
    line.insert("fsync_probe".into(), probe.to_json());
    line.insert("fsync_p50_us".into(), json!(probe.p50_us));
    line.insert(
        "p50_minus_fsync_p50_us".into(),
        json!(p50 as i64 - probe.p50_us as i64),
    );
}

/// What a `dedup` run counted; `stored` is what the system holds afterwards
/// (reported under `stored_field`), which must equal `unique`.
#[derive(Debug, Clone, Copy)]
pub struct DedupCounts {
    /// Distinct idempotency ids sent.
    pub unique: u64,
    /// Repeats sent.
    pub duplicates_expected: u64,
    /// Acknowledgements flagged duplicate.
    pub duplicates_reported: u64,
    /// Acknowledgements whose duplicate flag was wrong (or that failed).
    pub wrong_duplicate_flags: u64,
    /// Whether every repeat reported its original's position.
    pub repeat_positions_match: bool,
    /// The field naming `stored` (`high_watermark_sum`, `stream_messages`).
    pub stored_field: &'static str,
    /// Events the system holds after the run.
    pub stored: u64,
}

/// Adds a `dedup` run's counts and its verdict `dedup_ok`.
pub fn insert_dedup_counts(line: &mut serde_json::Map<String, Value>, counts: DedupCounts) {
    line.insert("unique".into(), json!(counts.unique));
    line.insert("duplicates_expected".into(), json!(counts.duplicates_expected));
    line.insert("duplicates_reported".into(), json!(counts.duplicates_reported));
    line.insert(
        "wrong_duplicate_flags".into(),
        json!(counts.wrong_duplicate_flags),
    );
    line.insert(
        "repeat_positions_match".into(),
        json!(counts.repeat_positions_match),
    );
    line.insert(counts.stored_field.into(), json!(counts.stored));
    line.insert(
        "dedup_ok".into(),
        json!(
            counts.wrong_duplicate_flags == 0
                && counts.repeat_positions_match
                && counts.duplicates_reported == counts.duplicates_expected
                && counts.stored == counts.unique
        ),
    );
}

/// The common fields of a scenario's result.
fn result_line(
    scenario: Scenario,
    durability: Durability,
    config: &BenchConfig,
    events: u64,
    elapsed: Duration,
    latencies_us: &mut [u64],
    errors: u64,
) -> serde_json::Map<String, Value> {
    line_of(
        scenario.name(),
        durability,
        config,
        events,
        elapsed,
        latencies_us,
        errors,
    )
}

/// The common fields of the result of the scenario named `name` (also the
/// consumer-group scenarios', `group.rs`).
pub(crate) fn line_of(
    name: &'static str,
    durability: Durability,
    config: &BenchConfig,
    events: u64,
    elapsed: Duration,
    latencies_us: &mut [u64],
    errors: u64,
) -> serde_json::Map<String, Value> {
    let measured = Measured {
        scenario: name,
        durability: durability_name(durability),
        events,
        elapsed,
        errors,
        size: config.size,
        keys: config.keys,
    };
    let mut line = measured_line(measured, latencies_us);
    line.insert("partitions".into(), json!(config.partitions));
    line
}

fn key_of(index: u64) -> Vec<u8> {
    format!("key-{index:07}").into_bytes()
}

fn event(payload: &[u8]) -> Event {
    Event::new("bench", payload.to_vec())
}

/// A fresh topic name for one run.
fn topic_name(scenario: AnyScenario, durability: Durability, run: usize) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    format!(
        "bench-{}-{}-{run}-{nanos:x}",
        scenario.name(),
        durability_name(durability)
    )
}

async fn create_topic(
    client: &Client,
    name: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<()> {
    let options = TopicOptions::default()
        .partitions(config.partitions)
        .durability(durability);
    client.create_topic(name, &options).await?;
    Ok(())
}

/// What a pipelined stream hands back.
#[derive(Default)]
struct StreamOutcome {
    latencies_us: Vec<u64>,
    errors: u64,
    /// Per request, in request order: its index and its outcomes (only when asked).
    outcomes: Vec<(u64, Vec<Result<AppendAck, ClientError>>)>,
}

/// Sends `requests` (each with its index) over one `AppendSession`, keeping at
/// most `window` requests in flight; one latency sample per request.
async fn pipeline(
    client: Client,
    topic: String,
    requests: Vec<(u64, Vec<AppendRequest>)>,
    window: usize,
    keep_outcomes: bool,
) -> LoadgenResult<StreamOutcome> {
    let mut session = client.append_session().await?;
    let mut outcome = StreamOutcome {
        latencies_us: Vec::with_capacity(requests.len()),
        ..StreamOutcome::default()
    };
    let mut sent: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut requests = requests.into_iter();
    let mut exhausted = false;
    loop {
        while !exhausted && sent.len() < window {
            match requests.next() {
                Some((index, appends)) => {
                    let started = Instant::now();
                    session.send(index, &topic, &appends).await?;
                    sent.push_back((index, started));
                }
                None => exhausted = true,
            }
        }
        let Some((index, started)) = sent.pop_front() else {
            break;
        };
        let (correlation_id, results) = match session.next().await {
            Some(response) => response?,
            None => return Err(LoadgenError::Failed("append session ended early".into())),
        };
        outcome.latencies_us.push(micros(started.elapsed()));
        if correlation_id != index {
            return Err(LoadgenError::Failed(format!(
                "response for request {correlation_id} where {index} was expected"
            )));
        }
        outcome.errors += results.iter().filter(|result| result.is_err()).count() as u64;
        if keep_outcomes {
            outcome.outcomes.push((index, results));
        }
    }
    Ok(outcome)
}

/// Runs `streams` pipelines concurrently, each over its own connection.
async fn run_streams(
    target: &Target,
    topic: &str,
    per_stream: Vec<Vec<(u64, Vec<AppendRequest>)>>,
    window: usize,
    keep_outcomes: bool,
) -> LoadgenResult<(Duration, StreamOutcome)> {
    let mut clients = Vec::with_capacity(per_stream.len());
    for _ in 0..per_stream.len() {
        clients.push(target.connect().await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(per_stream.len());
    for (client, requests) in clients.into_iter().zip(per_stream) {
        tasks.push(tokio::spawn(pipeline(
            client,
            topic.to_string(),
            requests,
            window,
            keep_outcomes,
        )));
    }
    let mut total = StreamOutcome::default();
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| LoadgenError::Failed(format!("stream task failed: {error}")))??;
        total.latencies_us.extend(outcome.latencies_us);
        total.errors += outcome.errors;
        total.outcomes.extend(outcome.outcomes);
    }
    Ok((started.elapsed(), total))
}

/// Deals items round-robin to `streams` lists.
pub fn deal<T>(items: impl Iterator<Item = T>, streams: usize) -> Vec<Vec<T>> {
    let mut dealt: Vec<Vec<T>> = (0..streams.max(1)).map(|_| Vec::new()).collect();
    let count = dealt.len();
    for (index, item) in items.enumerate() {
        dealt[index % count].push(item);
    }
    dealt
}

/// The server a load generator drives, and how it connects (token, TLS).
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// The token and TLS settings of every connection.
    pub options: ConnectOptions,
}

impl Target {
    /// A plaintext target without credentials.
    pub fn new(url: impl Into<String>) -> Target {
        Target {
            url: url.into(),
            options: ConnectOptions::default(),
        }
    }

    async fn connect(&self) -> ClientResult<Client> {
        Client::connect_with(ServerUrl::new(self.url.clone()), self.options.clone()).await
    }
}

/// Runs one scenario once on a fresh topic and returns its JSON line.
///
/// # Errors
/// A call that failed as a whole (transport, unknown topic); per-append
/// failures are counted in `errors` instead.
pub async fn run_scenario(
    target: &Target,
    scenario: impl Into<AnyScenario>,
    durability: Durability,
    config: &BenchConfig,
    run: usize,
) -> LoadgenResult<Value> {
    let scenario = scenario.into();
    let client = target.connect().await?;
    let topic = topic_name(scenario, durability, run);
    // `partitions` makes its own topics, named after this one.
    if scenario != AnyScenario::Partitions {
        create_topic(&client, &topic, durability, config).await?;
    }
    let mut line = match scenario {
        AnyScenario::Log(Scenario::Pipelined) => pipelined(target, &topic, durability, config).await?,
        AnyScenario::Log(Scenario::Batched) => batched(target, &topic, durability, config).await?,
        AnyScenario::Log(Scenario::Sequential) => sequential(&client, &topic, durability, config).await?,
        AnyScenario::Log(Scenario::Cas) => cas(target, &client, &topic, durability, config).await?,
        AnyScenario::Log(Scenario::Dedup) => dedup(target, &client, &topic, durability, config).await?,
        AnyScenario::Log(Scenario::Read) => read(target, &client, &topic, durability, config).await?,
        AnyScenario::Group(scenario) => {
            group::run(target, &client, scenario, &topic, durability, config).await?
        }
        AnyScenario::Partitions => partitions::run(target, &client, &topic, durability, config).await?,
    };
    line.insert("run".into(), json!(run));
    line.insert("topic".into(), json!(topic));
    if let Some(pid) = config.server_pid {
        line.insert("server_memory_kb".into(), process_memory_kb(pid)?);
    }
    // The topic is left in place: `read` reports what is on disk, and a
    // deleted topic's files would only cost the next run a rewrite.
    Ok(Value::Object(line))
}

async fn pipelined(
    target: &Target,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count_of(Scenario::Pipelined);
    let payload = vec![b'p'; config.size];
    let requests = (0..count).map(|index| {
        (
            index,
            vec![AppendRequest::new(
                key_of(index % config.keys),
                vec![event(&payload)],
            )],
        )
    });
    let per_stream = deal(requests, config.concurrency);
    let cpu = group::CpuMeter::start(config.server_pid)?;
    let (elapsed, mut outcome) = run_streams(target, topic, per_stream, config.in_flight, false).await?;
    let mut line = result_line(
        Scenario::Pipelined,
        durability,
        config,
        count,
        elapsed,
        &mut outcome.latencies_us,
        outcome.errors,
    );
    line.insert("streams".into(), json!(config.concurrency));
    line.insert("in_flight_per_stream".into(), json!(config.in_flight));
    cpu.insert(&mut line, count)?;
    Ok(line)
}

/// Requests of `batch` events for one key each, keys round-robin.
fn batch_requests(count: u64, config: &BenchConfig, payload: &[u8]) -> Vec<(u64, Vec<AppendRequest>)> {
    let batch = config.batch.max(1) as u64;
    let requests = count.div_ceil(batch);
    (0..requests)
        .map(|index| {
            let events = batch.min(count - index * batch);
            let batch_events = (0..events).map(|_| event(payload)).collect();
            (
                index,
                vec![AppendRequest::new(key_of(index % config.keys), batch_events)],
            )
        })
        .collect()
}

async fn batched(
    target: &Target,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count_of(Scenario::Batched);
    let payload = vec![b'b'; config.size];
    let requests = batch_requests(count, config, &payload);
    let window = batched_window(config);
    let per_stream = deal(requests.into_iter(), config.concurrency);
    let cpu = group::CpuMeter::start(config.server_pid)?;
    let (elapsed, mut outcome) = run_streams(target, topic, per_stream, window, false).await?;
    let errors = outcome.errors * config.batch.max(1) as u64;
    let mut line = result_line(
        Scenario::Batched,
        durability,
        config,
        count,
        elapsed,
        &mut outcome.latencies_us,
        errors,
    );
    line.insert("batch_events".into(), json!(config.batch));
    line.insert("streams".into(), json!(config.concurrency));
    line.insert("in_flight_per_stream".into(), json!(window));
    line.insert("latency_per".into(), json!("request"));
    cpu.insert(&mut line, count)?;
    Ok(line)
}

/// Requests in flight per stream for batches: enough to cover a group
/// commit, few enough not to queue seconds of work.
fn batched_window(config: &BenchConfig) -> usize {
    (config.in_flight / 16).max(1)
}

async fn sequential(
    client: &Client,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count_of(Scenario::Sequential);
    let probe = fsync_probe(config.fsync_probe_dir.clone(), config.fsync_probe_duration).await?;
    let rpc_probe = rpc_probe(client, count).await?;
    let transport_floor = floor::measure(count).await?;
    let payload = vec![b's'; config.size];
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let cpu = group::CpuMeter::start(config.server_pid)?;
    let started = Instant::now();
    for index in 0..count {
        let request = AppendRequest::new(key_of(index % config.keys), vec![event(&payload)]);
        let sent = Instant::now();
        if client.append(topic, &request).await.is_err() {
            errors += 1;
        }
        latencies.push(micros(sent.elapsed()));
    }
    let elapsed = started.elapsed();
    let mut line = result_line(
        Scenario::Sequential,
        durability,
        config,
        count,
        elapsed,
        &mut latencies,
        errors,
    );
    insert_fsync_comparison(&mut line, &probe);
    cpu.insert(&mut line, count)?;
    let p50 = line["latency_us"]["p50"].as_u64().unwrap_or_default();
    line.insert("rpc_probe".into(), rpc_probe.clone());
    line.insert(
        "p50_minus_rpc_p50_us".into(),
        json!(p50 as i64 - rpc_probe["p50_us"].as_i64().unwrap_or_default()),
    );
    line.insert(
        "p50_minus_grpc_floor_p50_us".into(),
        json!(p50 as i64 - transport_floor["grpc_p50_us"].as_i64().unwrap_or_default()),
    );
    line.insert("transport_floor".into(), transport_floor);
    Ok(line)
}

/// The floor of one unary call on this connection: `count` WhoAmI calls one
/// at a time (no log work, the same gRPC stack, interceptors and metrics as
/// Append), so that `sequential` can tell the transport from Stele's own cost.
async fn rpc_probe(client: &Client, count: u64) -> LoadgenResult<Value> {
    let mut latencies = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let sent = Instant::now();
        client.who_am_i().await?;
        latencies.push(micros(sent.elapsed()));
    }
    let percentiles = percentiles(&mut latencies);
    Ok(json!({
        "method": "WhoAmI, one unary call in flight",
        "calls": count,
        "p50_us": percentiles["p50"],
        "p99_us": percentiles["p99"],
    }))
}

async fn cas(
    target: &Target,
    client: &Client,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count_of(Scenario::Cas);
    let keys = config.keys.min(count).max(1);
    let streams = config.concurrency.max(1);
    let mut tasks = Vec::with_capacity(streams);
    let mut clients = Vec::with_capacity(streams);
    for _ in 0..streams {
        clients.push(target.connect().await?);
    }
    let started = Instant::now();
    for (stream, stream_client) in clients.into_iter().enumerate() {
        // Keys of this stream, each with how many appends it makes.
        let assigned: Vec<(u64, u64)> = (0..keys)
            .filter(|key| *key as usize % streams == stream)
            .map(|key| (key, count / keys + u64::from(key < count % keys)))
            .collect();
        tasks.push(tokio::spawn(cas_stream(
            stream_client,
            topic.to_string(),
            assigned,
            config.size,
        )));
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    let mut conflicts = 0;
    let mut last_sequences = Vec::new();
    for task in tasks {
        let outcome = task
            .await
            .map_err(|error| LoadgenError::Failed(format!("cas task failed: {error}")))??;
        latencies.extend(outcome.latencies_us);
        errors += outcome.errors;
        conflicts += outcome.conflicts;
        last_sequences.extend(outcome.last_sequences);
    }
    let elapsed = started.elapsed();
    let mut line = result_line(
        Scenario::Cas,
        durability,
        config,
        count,
        elapsed,
        &mut latencies,
        errors,
    );
    line.insert("streams".into(), json!(streams));
    line.insert("keys_in_flight".into(), json!(keys));
    line.insert("conflicts".into(), json!(conflicts));
    // Every key must hold exactly its share: the last sequence is share - 1.
    let sequences_ok = last_sequences
        .iter()
        .all(|(key, last)| Some(count / keys + u64::from(*key < count % keys) - 1) == *last);
    line.insert("sequences_ok".into(), json!(sequences_ok));
    // A stale expectation is refused with the actual sequence.
    let key = key_of(0);
    let actual = count / keys + u64::from(!count.is_multiple_of(keys)) - 1;
    let stale = match actual {
        0 => ExpectedSequence::NoEvents,
        actual => ExpectedSequence::Exact(Sequence(actual - 1)),
    };
    let payload = vec![b'c'; config.size];
    let request = AppendRequest::new(key, vec![event(&payload)]).expect(stale);
    let check = match client.append(topic, &request).await {
        Ok(ack) => json!({"rejected": false, "appended_at_sequence": ack.first_sequence.0}),
        Err(error) => json!({
            "rejected": error.code() == Some(GrpcCode::FailedPrecondition)
                && error.kind() == Some(ErrorKind::WrongExpectedSequence)
                && error.details().and_then(|details| details.actual_sequence) == Some(Sequence(actual)),
            "code": error.code().map(|code| format!("{code:?}")),
            "kind": error.kind().map(|kind| format!("{kind:?}")),
            "expected_sent": stale.to_string(),
            "actual_sequence": error.details().and_then(|details| details.actual_sequence).map(|sequence| sequence.0),
            "actual_sequence_wanted": actual,
        }),
    };
    line.insert("stale_check".into(), check);
    Ok(line)
}

#[derive(Default)]
struct CasOutcome {
    latencies_us: Vec<u64>,
    errors: u64,
    conflicts: u64,
    /// Per key: its index and the last acknowledged sequence.
    last_sequences: Vec<(u64, Option<u64>)>,
}

/// One stream's keys, each with one append in flight expecting its previous
/// sequence. Correlation ids are positions in `assigned`.
async fn cas_stream(
    client: Client,
    topic: String,
    assigned: Vec<(u64, u64)>,
    size: usize,
) -> LoadgenResult<CasOutcome> {
    // The server starts at most 1024 requests of a session at once; stay below.
    const WINDOW: usize = 512;
    let payload = vec![b'c'; size];
    let mut session = client.append_session().await?;
    let mut remaining: Vec<u64> = assigned.iter().map(|(_, appends)| *appends).collect();
    let mut last: Vec<Option<u64>> = vec![None; assigned.len()];
    let mut ready: VecDeque<usize> = (0..assigned.len()).filter(|slot| remaining[*slot] > 0).collect();
    let mut sent: VecDeque<(usize, Instant)> = VecDeque::new();
    let mut outcome = CasOutcome::default();
    loop {
        while sent.len() < WINDOW
            && let Some(slot) = ready.pop_front()
        {
            let expected = match last[slot] {
                None => ExpectedSequence::NoEvents,
                Some(sequence) => ExpectedSequence::Exact(Sequence(sequence)),
            };
            let request =
                AppendRequest::new(key_of(assigned[slot].0), vec![event(&payload)]).expect(expected);
            let started = Instant::now();
            session.send(slot as u64, &topic, &[request]).await?;
            sent.push_back((slot, started));
        }
        let Some((slot, started)) = sent.pop_front() else {
            break;
        };
        let (correlation_id, mut results) = match session.next().await {
            Some(response) => response?,
            None => return Err(LoadgenError::Failed("append session ended early".into())),
        };
        outcome.latencies_us.push(micros(started.elapsed()));
        if correlation_id != slot as u64 || results.len() != 1 {
            return Err(LoadgenError::Failed(format!(
                "cas: response {correlation_id} with {} outcomes where {slot} was expected",
                results.len()
            )));
        }
        remaining[slot] -= 1;
        match results.pop() {
            Some(Ok(ack)) => last[slot] = Some(ack.last_sequence.0),
            Some(Err(error)) => {
                outcome.errors += 1;
                if error.kind() == Some(ErrorKind::WrongExpectedSequence) {
                    outcome.conflicts += 1;
                    last[slot] = error
                        .details()
                        .and_then(|details| details.actual_sequence)
                        .map(|sequence| sequence.0);
                }
            }
            None => {}
        }
        if remaining[slot] > 0 {
            ready.push_back(slot);
        }
    }
    outcome.last_sequences = assigned.iter().map(|(key, _)| *key).zip(last).collect();
    Ok(outcome)
}

async fn dedup(
    target: &Target,
    client: &Client,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let unique = config.count_of(Scenario::Dedup);
    let payload = vec![b'd'; config.size];
    // Request index: 0.. in send order; an event i with i % 10 == 0 is sent a
    // second time right after its first send, on the same stream.
    let mut requests = Vec::with_capacity((unique + unique / 10 + 1) as usize);
    let mut repeats = Vec::with_capacity(requests.capacity());
    for id in 0..unique {
        let copies = if id % 10 == 0 { 2 } else { 1 };
        for copy in 0..copies {
            let event = event(&payload).with_idempotency_id(format!("dedup-{id}"));
            let request = AppendRequest::new(key_of(id % config.keys), vec![event]);
            requests.push((requests.len() as u64, vec![request]));
            repeats.push((id, copy == 1));
        }
    }
    let sent = requests.len() as u64;
    // A request and its repeat must go to the same stream, in order: deal by event id.
    let streams = config.concurrency.max(1);
    let mut per_stream: Vec<Vec<(u64, Vec<AppendRequest>)>> = (0..streams).map(|_| Vec::new()).collect();
    for request in requests {
        let (id, _) = repeats[request.0 as usize];
        per_stream[(id as usize / 10) % streams].push(request);
    }
    let (elapsed, mut outcome) = run_streams(target, topic, per_stream, config.in_flight, true).await?;
    let mut duplicates_expected = 0u64;
    let mut duplicates_reported = 0u64;
    let mut wrong = 0u64;
    let mut originals: std::collections::HashMap<u64, (u32, u64)> = std::collections::HashMap::new();
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
                    repeat_acks.push((id, (ack.partition.0, ack.first_offset.0)));
                } else {
                    originals.insert(id, (ack.partition.0, ack.first_offset.0));
                }
            }
            _ => wrong += 1,
        }
    }
    let positions_match = repeat_acks
        .iter()
        .all(|(id, position)| originals.get(id) == Some(position));
    let description = client.describe_topic(topic).await?;
    let watermarks: u64 = description
        .partitions
        .iter()
        .map(|partition| partition.high_watermark.0)
        .sum();
    let mut line = result_line(
        Scenario::Dedup,
        durability,
        config,
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
            stored_field: "high_watermark_sum",
            stored: watermarks,
        },
    );
    line.insert("streams".into(), json!(streams));
    Ok(line)
}

async fn read(
    target: &Target,
    client: &Client,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count_of(Scenario::Read);
    let payload = vec![b'r'; config.size];
    // Fill the topic (untimed).
    let requests = batch_requests(count, config, &payload);
    let per_stream = deal(requests.into_iter(), config.concurrency);
    let (fill_elapsed, fill) = run_streams(target, topic, per_stream, batched_window(config), false).await?;
    if fill.errors > 0 {
        return Err(LoadgenError::Failed(format!(
            "read: {} appends failed while filling the topic",
            fill.errors
        )));
    }
    let memory_before = match config.server_pid {
        Some(pid) => Some(process_memory_kb(pid)?),
        None => None,
    };
    let options = SubscribeOptions {
        start: StartPosition::Earliest,
        max_batch_events: config.read_batch_events,
        ..SubscribeOptions::default()
    };
    let started = Instant::now();
    let mut subscription = client.subscribe(topic, &options).await?;
    let mut events = 0u64;
    let mut messages = 0u64;
    let mut latencies = Vec::new();
    let mut caught_up = false;
    let mut rss_max_kb = 0u64;
    let mut last = Instant::now();
    while let Some(item) = subscription.next().await {
        let now = Instant::now();
        latencies.push(micros(now - last));
        match item? {
            SubscriptionItem::Events { events: batch, .. } => {
                events += batch.len() as u64;
                messages += 1;
                if let Some(pause) = config.slow_consumer {
                    if let Some(pid) = config.server_pid {
                        rss_max_kb = rss_max_kb.max(status_field_kb(pid, "VmRSS:")?);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
            SubscriptionItem::CaughtUp { .. } => {
                caught_up = true;
                break;
            }
            SubscriptionItem::Heartbeat { .. } => {}
        }
        last = Instant::now();
    }
    let elapsed = started.elapsed();
    drop(subscription);
    let mut line = result_line(
        Scenario::Read,
        durability,
        config,
        events,
        elapsed,
        &mut latencies,
        0,
    );
    line.insert("latency_per".into(), json!("message gap"));
    line.insert("caught_up".into(), json!(caught_up));
    line.insert("read_ok".into(), json!(caught_up && events == count));
    line.insert("messages".into(), json!(messages));
    line.insert("max_batch_events".into(), json!(config.read_batch_events));
    line.insert(
        "fill_events_per_s".into(),
        json!((count as f64 / fill_elapsed.as_secs_f64().max(1e-9)).round() as u64),
    );
    if let Some(pause) = config.slow_consumer {
        line.insert("slow_consumer_us_per_message".into(), json!(micros(pause)));
        if config.server_pid.is_some() {
            line.insert("server_vmrss_kb_max_during_read".into(), json!(rss_max_kb));
        }
    }
    if let Some(before) = memory_before {
        line.insert("server_memory_kb_before_read".into(), before);
    }
    Ok(line)
}

/// The disk's own fdatasync latency.
#[derive(Debug, Clone, Copy)]
pub struct FsyncProbe {
    /// Syncs done.
    pub syncs: u64,
    /// Median `pwrite` of 4 KiB + `fdatasync`, in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

impl FsyncProbe {
    /// As JSON.
    pub fn to_json(self) -> Value {
        json!({"syncs": self.syncs, "p50_us": self.p50_us, "p99_us": self.p99_us,
               "method": "pwrite 4 KiB at the end of a new file + fdatasync"})
    }
}

/// `pwrite` of 4 KiB at the end of a new file in `dir`, then `fdatasync`, in a
/// loop for `duration` (at least 10 syncs); the file is removed afterwards.
///
/// # Errors
/// The file cannot be created, written or synced.
pub async fn fsync_probe(dir: PathBuf, duration: Duration) -> LoadgenResult<FsyncProbe> {
    tokio::task::spawn_blocking(move || fsync_probe_blocking(&dir, duration))
        .await
        .map_err(|error| LoadgenError::Io(format!("fsync probe task: {error}")))?
}

fn fsync_probe_blocking(dir: &Path, duration: Duration) -> LoadgenResult<FsyncProbe> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".stele-fsync-probe-{}", std::process::id()));
    let io = |what: &str, error: std::io::Error| {
        LoadgenError::Io(format!("fsync probe {what} {}: {error}", path.display()))
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|error| io("create", error))?;
    let block = vec![0x5a_u8; 4096];
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut position = 0u64;
    let result = loop {
        if samples.len() >= 10 && started.elapsed() >= duration {
            break Ok(());
        }
        let sync_started = Instant::now();
        if let Err(error) = file.write_all_at(&block, position) {
            break Err(io("write", error));
        }
        if let Err(error) = file.sync_data() {
            break Err(io("fdatasync", error));
        }
        samples.push(micros(sync_started.elapsed()));
        position += block.len() as u64;
    };
    drop(file);
    let _ = std::fs::remove_file(&path);
    result?;
    let syncs = samples.len() as u64;
    let summary = percentiles(&mut samples);
    Ok(FsyncProbe {
        syncs,
        p50_us: summary["p50"].as_u64().unwrap_or_default(),
        p99_us: summary["p99"].as_u64().unwrap_or_default(),
    })
}

fn status_field_kb(pid: u32, field: &str) -> LoadgenResult<u64> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).map_err(|error| LoadgenError::Io(format!("{path}: {error}")))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| LoadgenError::Io(format!("{path}: no {field}")))
}

/// A process's memory from `/proc/PID/status`: peak and current resident set,
/// and the anonymous part (file-backed pages, such as mapped segments, are
/// the rest), in KiB.
///
/// # Errors
/// The file cannot be read.
pub fn process_memory_kb(pid: u32) -> LoadgenResult<Value> {
    Ok(json!({
        "vm_hwm": status_field_kb(pid, "VmHWM:")?,
        "vm_rss": status_field_kb(pid, "VmRSS:")?,
        "rss_anon": status_field_kb(pid, "RssAnon:")?,
        "rss_file": status_field_kb(pid, "RssFile:")?,
    }))
}

/// False when a line reports a failed correctness check: a stale CAS
/// expectation accepted, CAS sequences off, wrong duplicate flags or
/// watermarks, a read that did not deliver every event (or, for
/// `group-baseline`, out of order), or a group run that did not settle every
/// event exactly in per-key order with lag 0 at the end.
pub fn checks_passed(line: &Value) -> bool {
    let failed = |value: &Value| value == &Value::Bool(false);
    !(failed(&line["stale_check"]["rejected"])
        || failed(&line["sequences_ok"])
        || failed(&line["dedup_ok"])
        || failed(&line["read_ok"])
        || failed(&line["group_ok"]))
}

/// The median run by `events_per_s` (the middle one of an odd count, the
/// lower middle of an even count), marked `"run": "median"` with the rates
/// of every run.
pub fn median_run(runs: &[Value]) -> Option<Value> {
    let mut sorted: Vec<&Value> = runs.iter().collect();
    sorted.sort_by_key(|run| run["events_per_s"].as_u64().unwrap_or_default());
    let middle = sorted.get(sorted.len().checked_sub(1)? / 2)?;
    let mut median = (*middle).clone();
    if let Value::Object(map) = &mut median {
        map.insert("run".into(), json!("median"));
        map.insert("of_runs".into(), json!(runs.len()));
        map.insert(
            "events_per_s_runs".into(),
            json!(
                runs.iter()
                    .map(|run| run["events_per_s"].clone())
                    .collect::<Vec<_>>()
            ),
        );
    }
    Some(median)
}
