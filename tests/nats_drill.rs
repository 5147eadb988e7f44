//! Process-level fault drills of the NATS backend (issue 12;
//! docs/design/nats-backend.md, "Why an acknowledged append is correct" and
//! "Writers: optimistic concurrency on the partition tail"): two `stele serve
//! --backend nats://...` children, each with its own data directory, in one
//! namespace of a 3-node JetStream cluster of the test's own, driven through
//! the Rust client.
//!
//! 1. SIGKILL of server A while clients append through A and B.
//! 2. SIGSTOP of server A for longer than its clients wait, then SIGCONT:
//!    the zombie's publishes were decided on a stale view and must be
//!    refused by the partition fence, then decided again.
//! 3. NATS nodes restarted with their store wiped (a follower, then the
//!    partition stream's leader), each followed by the kill of another node
//!    once the stream has three current replicas again; then a follower
//!    wiped and the leader killed at once, before the wiped node can have
//!    caught up: two nodes left, one of them empty, and nats-server 2.15.1
//!    elects no leader (not in 12 s here, nor in 30 s in a first try) until
//!    the killed node returns; meanwhile nothing may be read or decided from
//!    the empty replica's state.
//!
//! After each, through every server still running: every acknowledged event
//! is stored exactly once at its acknowledged offset and key sequence;
//! offsets and every key's sequences are dense from 0; nothing is stored that
//! no client appended; every compare-and-set success is the only event with
//! the sequence it claimed; a retry of every acknowledged id is a duplicate at
//! the original position. Random choices come from a seed (`STELE_SEED`, else
//! the clock), printed first (so shown with a failure) and in the drills'
//! assertion messages. `STELE_DRILL_VERBOSE` prints server A's log after the
//! stop drill.
#![cfg(unix)]

#[path = "../crates/nats/tests/support/mod.rs"]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stele::client::{Client, ClientError};
use stele::{
    AppendAck, AppendRequest, Direction, ErrorKind, Event, ExpectedSequence, Offset, PartitionId,
    RecordedEvent, Sequence, TopicOptions,
};
use stele_nats::Connection;
use stele_nats::cluster::Cluster;
use tokio_stream::StreamExt as _;

const TOPIC: &str = "drill";
/// Every drill writes one partition: all its keys contend on one stream tail.
const PARTITIONS: u32 = 1;
const KEYS: usize = 4;
/// Longer than any drill, so that every final retry is still a duplicate.
const DEDUP_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The writer's fence refusals are logged at debug level.
const LOG_LEVEL: &str = "warn,stele_nats=debug";
/// What a server's writer logs when the fence refused a publish.
const FENCE_REFUSED: &str = "another server wrote first";
/// What a server's writer logs when a publish went unanswered.
const PUBLISH_UNANSWERED: &str = "a publish went unanswered";
/// How long a client waits for an append before it calls the outcome unknown
/// and retries through the other server (drills 1 and 3).
const CALL_WAIT: Duration = Duration::from_secs(10);
/// Drill 2: how long a client waits for the stopped server...
const STOPPED_CALL_WAIT: Duration = Duration::from_secs(2);
/// ...and how long the server stays stopped: longer than that.
const STOP_FOR: Duration = Duration::from_secs(3);
/// Failure bounds, not synchronisation delays.
const START_WAIT: Duration = Duration::from_secs(60);
const APPEND_WAIT_MAX: Duration = Duration::from_secs(60);
const PHASE_WAIT_MAX: Duration = Duration::from_secs(60);
const REPLICAS_WAIT_MAX: Duration = Duration::from_secs(60);
/// Drill 3: how long the partition stays with two nodes, one of them wiped
/// and maybe not caught up, before the other node comes back: longer than
/// the 10 s after its start from which a replica of a stream without a
/// leader answers stream info with its own state (nats-server's
/// `isGroupLeaderless`).
const UNCAUGHT_FOR: Duration = Duration::from_secs(12);
/// How long a read during that window may take before it counts as unavailable.
const PROBE_WAIT: Duration = Duration::from_secs(3);
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// A client's backoff between tries of an append whose outcome is unknown.
const RETRY_BACKOFF_INITIAL: Duration = Duration::from_millis(20);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// splitmix64: the drills' only source of randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound.max(1)
    }
}

fn seed(drill: &str) -> u64 {
    let seed = std::env::var("STELE_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{drill}: seed {seed} (repeat with STELE_SEED={seed})");
    seed
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `stele serve` child on the cluster, killed on drop.
struct Serve {
    child: Child,
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Starts a server, again while it exits at start because JetStream did
    /// not answer in time (a fresh cluster on two loaded cores), until
    /// [`START_WAIT`] has passed.
    fn start(name: &'static str, cluster: &Cluster) -> Serve {
        let deadline = Instant::now() + START_WAIT;
        let mut tries = 0;
        loop {
            tries += 1;
            match Serve::try_start(cluster, deadline) {
                Ok(serve) => return serve,
                Err(log) if log.contains("unavailable") && Instant::now() < deadline => {
                    println!("server {name} did not start (try {tries}), again: {log}");
                }
                Err(log) => panic!("server {name} announced no address: {log}"),
            }
        }
    }

    /// Starts a server; its log when it exits without announcing its address.
    fn try_start(cluster: &Cluster, deadline: Instant) -> Result<Serve, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_stele"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-level", LOG_LEVEL])
            .arg("--backend")
            .arg(cluster.urls())
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stele serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        let (address, announced) = std::sync::mpsc::channel();
        // Drains stderr for the child's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = address.send(rest.split(',').next().unwrap_or_default().to_string());
                }
                lock(&kept).push(line);
            }
        });
        let wait = deadline.saturating_duration_since(Instant::now());
        match announced.recv_timeout(wait) {
            Ok(address) => Ok(Serve {
                child,
                url: format!("http://{address}"),
                log,
                _dir: dir,
            }),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("({error}) {}", lock(&log).join("\n")))
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a valid signal number has no memory-safety
        // preconditions; the pid is our own child, not yet reaped.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal}) failed");
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    fn count(&self, needle: &str) -> usize {
        self.count_since(0, needle)
    }

    /// Log lines containing `needle` from line `from` on.
    fn count_since(&self, from: usize, needle: &str) -> usize {
        lock(&self.log)
            .iter()
            .skip(from)
            .filter(|line| line.contains(needle))
            .count()
    }

    fn log_lines(&self) -> usize {
        lock(&self.log).len()
    }

    fn tail(&self, count: usize) -> String {
        let log = lock(&self.log);
        log[log.len().saturating_sub(count)..].join("\n")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An acknowledged append.
#[derive(Clone)]
struct Acked {
    request: AppendRequest,
    payload: String,
    ack: AppendAck,
}

/// What the appenders of a drill saw, shared between them.
#[derive(Default)]
struct Book {
    acked: Mutex<Vec<Acked>>,
    /// The number of acknowledgements, for waiting on progress.
    acks: tokio::sync::watch::Sender<usize>,
    /// One past the highest acknowledged offset.
    high_watermark: std::sync::atomic::AtomicU64,
    /// Compare-and-set appends: (payload, expected, ack).
    cas_won: Mutex<Vec<(String, ExpectedSequence, AppendAck)>>,
    cas_lost: AtomicUsize,
    /// Payloads of appends whose last answer left the outcome unknown or
    /// refused a retry (a lost compare-and-set after an unknown outcome):
    /// they may be stored, once, but need not be.
    maybe: Mutex<HashSet<String>>,
    /// Calls whose outcome was unknown (no answer in time, a transport error,
    /// UNAVAILABLE), each retried with the same request.
    unknown: AtomicUsize,
    /// Calls answered as duplicates of an earlier try.
    duplicates: AtomicUsize,
}

impl Book {
    fn count(&self) -> usize {
        lock(&self.acked).len()
    }

    fn high_watermark(&self) -> Offset {
        Offset(self.high_watermark.load(Ordering::Acquire))
    }

    fn record(&self, acked: Acked) {
        // Every append of the drills holds one event.
        self.high_watermark
            .fetch_max(acked.ack.first_offset.0 + 1, Ordering::AcqRel);
        lock(&self.acked).push(acked);
        self.acks.send_modify(|count| *count += 1);
    }
}

fn request(key: &str, payload: &str, expected: ExpectedSequence) -> AppendRequest {
    AppendRequest::new(
        key.as_bytes(),
        vec![
            Event::new("drilled", payload.as_bytes().to_vec())
                .with_idempotency_id(payload.as_bytes().to_vec()),
        ],
    )
    .expect(expected)
}

/// Whether the outcome of a failed call is unknown, so that it is retried.
fn unknown_outcome(error: &ClientError) -> bool {
    error.is_transient()
}

/// One way to a server, as the appenders use it.
#[derive(Clone)]
struct Route {
    client: Client,
    /// How long a call waits before its outcome counts as unknown.
    wait: Duration,
    /// Set once the server is known to be dead: the route is skipped.
    down: Arc<AtomicBool>,
    /// Calls under way through this route.
    in_flight: Arc<AtomicUsize>,
}

impl Route {
    fn new(client: &Client, wait: Duration) -> Route {
        Route {
            client: client.clone(),
            wait,
            down: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// One append: tries `routes[first]` first and, while the outcome is unknown
/// (no answer within its wait, a transport error, UNAVAILABLE), retries the
/// same request through the next route in turn, until a definite answer.
/// Routes marked down are skipped. Also answers how many tries left the
/// outcome unknown.
async fn append(
    routes: &[Route],
    first: usize,
    request: &AppendRequest,
    book: &Book,
    seed: u64,
) -> (Result<AppendAck, ClientError>, usize) {
    let deadline = Instant::now() + APPEND_WAIT_MAX;
    let mut index = first;
    let mut tries = 0;
    let mut unknown = 0;
    loop {
        for _ in 0..routes.len() {
            if !routes[index].down.load(Ordering::Acquire) {
                break;
            }
            index = (index + 1) % routes.len();
        }
        let route = &routes[index];
        route.in_flight.fetch_add(1, Ordering::AcqRel);
        let answer = tokio::time::timeout(route.wait, route.client.append(TOPIC, request)).await;
        route.in_flight.fetch_sub(1, Ordering::AcqRel);
        tries += 1;
        match answer {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    book.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                return (Ok(ack), unknown);
            }
            Ok(Err(error)) if !unknown_outcome(&error) => {
                return (Err(error), unknown);
            }
            Ok(Err(_)) | Err(_) => {
                unknown += 1;
                book.unknown.fetch_add(1, Ordering::Relaxed);
                assert!(
                    Instant::now() < deadline,
                    "seed {seed}: an append stayed unknown for {APPEND_WAIT_MAX:?} ({tries} tries)"
                );
                index = (index + 1) % routes.len();
                // A client's backoff, so that a cluster without a leader (which
                // answers at once) is not asked in a tight loop.
                let exponent = (unknown - 1).min(5) as u32;
                tokio::time::sleep(
                    RETRY_BACKOFF_INITIAL
                        .saturating_mul(1 << exponent)
                        .min(RETRY_BACKOFF_MAX),
                )
                .await;
            }
        }
    }
}

/// An append of a fresh payload that must succeed: recorded in the book.
async fn append_new(routes: &[Route], first: usize, key: &str, payload: String, book: &Book, seed: u64) {
    let request = request(key, &payload, ExpectedSequence::Any);
    match append(routes, first, &request, book, seed).await {
        (Ok(ack), _) => book.record(Acked {
            request,
            payload,
            ack,
        }),
        (Err(error), _) => panic!("seed {seed}: append {payload}: {error}"),
    }
}

/// A compare-and-set append on the key's last sequence as read through `client`.
async fn append_cas(client: &Client, key: &str, payload: String, book: &Book, seed: u64) {
    let last = client
        .read_key(TOPIC, key.as_bytes(), None, Direction::Backwards, 1)
        .await;
    let last = match last {
        Ok(history) => history.last_sequence,
        Err(error) if unknown_outcome(&error) => return,
        Err(error) => panic!("seed {seed}: read key {key}: {error}"),
    };
    let expected = last.map_or(ExpectedSequence::NoEvents, |last| {
        ExpectedSequence::Exact(Sequence(last))
    });
    let request = request(key, &payload, expected);
    match append(&[Route::new(client, CALL_WAIT)], 0, &request, book, seed).await {
        (Ok(ack), _) => {
            lock(&book.cas_won).push((payload.clone(), expected, ack));
            book.record(Acked {
                request,
                payload,
                ack,
            });
        }
        (Err(error), unknown) if error.kind() == Some(ErrorKind::WrongExpectedSequence) => {
            book.cas_lost.fetch_add(1, Ordering::Relaxed);
            if unknown > 0 {
                lock(&book.maybe).insert(payload);
            }
        }
        (Err(error), _) => panic!("seed {seed}: compare-and-set {payload}: {error}"),
    }
}

/// Every event of the drill's partition, read through `client`.
async fn read_all(client: &Client, seed: u64) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + PHASE_WAIT_MAX;
    let mut events = Vec::new();
    let mut from = Offset(0);
    loop {
        let read = match client.read(TOPIC, PartitionId(0), from, 1000, 0).await {
            Ok(read) => read,
            Err(error) if unknown_outcome(&error) && Instant::now() < deadline => continue,
            Err(error) => panic!("seed {seed}: read from {from}: {error}"),
        };
        if read.events.is_empty() && read.next_offset >= read.high_watermark {
            return events;
        }
        from = read.next_offset;
        events.extend(read.events);
        assert!(
            Instant::now() < deadline,
            "seed {seed}: reading the partition took too long"
        );
    }
}

/// Checks the partition read through `client` against the book.
async fn check(client: &Client, book: &Book, seed: u64, through: &str) -> usize {
    let events = read_all(client, seed).await;
    let acked = lock(&book.acked).clone();
    let maybe = lock(&book.maybe).clone();
    let context = format!("seed {seed}, through {through}");
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.offset, Offset(index as u64), "{context}: offsets are dense");
    }
    let mut next: HashMap<&[u8], u64> = HashMap::new();
    for event in &events {
        let expected = next.entry(event.key.as_slice()).or_insert(0);
        assert_eq!(
            event.sequence,
            Sequence(*expected),
            "{context}: key {:?} has dense sequences (at offset {})",
            String::from_utf8_lossy(&event.key),
            event.offset
        );
        *expected += 1;
    }
    let mut stored: HashMap<&[u8], usize> = HashMap::new();
    for event in &events {
        *stored.entry(event.payload.as_slice()).or_insert(0) += 1;
    }
    let mut distinct = HashSet::new();
    for acked in &acked {
        let offset = acked.ack.first_offset.0 as usize;
        let event = events.get(offset).unwrap_or_else(|| {
            panic!(
                "{context}: {} acknowledged at {offset} is past the end ({})",
                acked.payload,
                events.len()
            )
        });
        assert_eq!(
            event.key, acked.request.key,
            "{context}: {} at its offset",
            acked.payload
        );
        assert_eq!(
            event.payload,
            acked.payload.as_bytes(),
            "{context}: the event acknowledged at {offset} is there"
        );
        assert_eq!(
            event.sequence, acked.ack.first_sequence,
            "{context}: {} at its sequence",
            acked.payload
        );
        assert_eq!(
            stored[acked.payload.as_bytes()],
            1,
            "{context}: {} is stored once",
            acked.payload
        );
        distinct.insert(acked.payload.as_bytes());
    }
    for (payload, count) in &stored {
        assert_eq!(
            *count,
            1,
            "{context}: {} stored once",
            String::from_utf8_lossy(payload)
        );
        assert!(
            distinct.contains(payload) || maybe.contains(&*String::from_utf8_lossy(payload)),
            "{context}: {} is stored but no client append of it was acknowledged or left unknown",
            String::from_utf8_lossy(payload)
        );
    }
    // No conflict missed: a success expecting N of a key is the one event with
    // sequence N + 1 of that key (sequences are dense and the payloads unique).
    for (payload, expected, ack) in lock(&book.cas_won).iter() {
        let claimed = match expected {
            ExpectedSequence::NoEvents => Sequence(0),
            ExpectedSequence::Exact(last) => last.next(),
            ExpectedSequence::Any => unreachable!("compare-and-set appends expect something"),
        };
        assert_eq!(
            ack.first_sequence, claimed,
            "{context}: compare-and-set {payload} expecting {expected} got another sequence"
        );
    }
    events.len()
}

/// Retries every acknowledged append through `client`: each must be a
/// duplicate at its original offset and sequence.
async fn check_retries(client: &Client, book: &Book, seed: u64, through: &str) {
    let acked = lock(&book.acked).clone();
    let deadline = Instant::now() + PHASE_WAIT_MAX;
    for chunk in acked.chunks(50) {
        let requests: Vec<AppendRequest> = chunk.iter().map(|acked| acked.request.clone()).collect();
        let results = loop {
            match client.append_batch(TOPIC, &requests).await {
                Ok(results)
                    if results
                        .iter()
                        .all(|result| !result.as_ref().is_err_and(unknown_outcome)) =>
                {
                    break results;
                }
                Ok(_) if Instant::now() < deadline => {}
                Err(error) if unknown_outcome(&error) && Instant::now() < deadline => {}
                Ok(results) => panic!("seed {seed}: retries through {through}: {results:?}"),
                Err(error) => panic!("seed {seed}: retries through {through}: {error}"),
            }
        };
        for (acked, result) in chunk.iter().zip(results) {
            let retried = result.unwrap_or_else(|error| {
                panic!(
                    "seed {seed}: retry of {} through {through}: {error}",
                    acked.payload
                )
            });
            assert!(
                retried.duplicate,
                "seed {seed}: a retry of {} through {through} is a duplicate",
                acked.payload
            );
            assert_eq!(
                (retried.first_offset, retried.first_sequence),
                (acked.ack.first_offset, acked.ack.first_sequence),
                "seed {seed}: a retry of {} through {through} answers the original position",
                acked.payload
            );
        }
    }
}

/// A fresh cluster, two servers on it, the drill's topic created through B
/// and known to A.
async fn setup() -> (
    Cluster,
    stele_nats::Connection,
    tokio::sync::MutexGuard<'static, ()>,
    [Serve; 2],
    [Client; 2],
) {
    let (cluster, connection, serial) = support::cluster().await;
    let servers = [Serve::start("A", &cluster), Serve::start("B", &cluster)];
    let mut clients = Vec::new();
    for server in &servers {
        clients.push(Client::connect(server.url.clone()).await.expect("connect"));
    }
    let clients: [Client; 2] = clients.try_into().expect("two clients");
    clients[1]
        .create_topic(
            TOPIC,
            &TopicOptions::default()
                .partitions(PARTITIONS)
                .dedup_window_ms(DEDUP_WINDOW_MS),
        )
        .await
        .expect("create the topic");
    // The catalog read by another server may lag a moment behind the creation.
    let deadline = Instant::now() + START_WAIT;
    while let Err(error) = clients[0].describe_topic(TOPIC).await {
        assert!(Instant::now() < deadline, "server A never saw the topic: {error}");
        tokio::task::yield_now().await;
    }
    (cluster, connection, serial, servers, clients)
}

/// Waits (bounded) until the book holds `count` acknowledgements.
async fn wait_acked(book: &Book, count: usize, seed: u64, what: &str) {
    let mut acks = book.acks.subscribe();
    let reached = tokio::time::timeout(PHASE_WAIT_MAX, acks.wait_for(|acked| *acked >= count)).await;
    assert!(
        matches!(reached, Ok(Ok(_))),
        "seed {seed}: {what}: {} of {count} appends acknowledged in {PHASE_WAIT_MAX:?}",
        book.count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_clients_append_through_both_loses_and_duplicates_nothing() {
    // Goal: SIGKILL of a Stele server costs its clients only unknown outcomes,
    // which retries with the same ids through the other server resolve: no
    // acknowledged event lost or stored twice. Method: four tasks append 30
    // events each with idempotency ids, alternating between A and B, over
    // four keys of one partition; after a seeded number of acknowledgements,
    // as soon as a call to A is under way, A gets SIGKILL; a call to A that
    // fails is retried through B until answered.
    let seed = seed("kill");
    let mut rng = Rng(seed);
    let (_cluster, _connection, _serial, mut servers, clients) = setup().await;
    let book = Arc::new(Book::default());
    let routes = [
        Route::new(&clients[0], CALL_WAIT),
        Route::new(&clients[1], CALL_WAIT),
    ];
    const TASKS: usize = 4;
    const ROUNDS: usize = 30;
    let kill_after = 10 + rng.below(80) as usize;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (book, routes) = (Arc::clone(&book), routes.clone());
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let key = format!("k{}", (task + round) % KEYS);
                let payload = format!("t{task}-r{round}");
                append_new(&routes, (task + round) % 2, &key, payload, &book, seed).await;
            }
        }));
    }
    wait_acked(&book, kill_after, seed, "before the kill").await;
    // The kill comes while a call to A is under way (as far as its client knows).
    let deadline = Instant::now() + PHASE_WAIT_MAX;
    while routes[0].in_flight.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "seed {seed}: no call to A in flight");
        tokio::task::yield_now().await;
    }
    servers[0].kill();
    routes[0].down.store(true, Ordering::Release);
    let acked_at_kill = book.count();
    for task in tasks {
        task.await.expect("appender");
    }
    let stored = check(&clients[1], &book, seed, "B").await;
    assert_eq!(
        stored,
        TASKS * ROUNDS,
        "seed {seed}: every append is stored exactly once"
    );
    check_retries(&clients[1], &book, seed, "B").await;
    println!(
        "kill: A killed after {acked_at_kill} acknowledgements; {} unknown outcomes retried, {} \
         answered as duplicates; B's fence refusals {}, unanswered publishes {}",
        book.unknown.load(Ordering::Relaxed),
        book.duplicates.load(Ordering::Relaxed),
        servers[1].count(FENCE_REFUSED),
        servers[1].count(PUBLISH_UNANSWERED),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_longer_than_its_clients_wait_cannot_corrupt_the_partition() {
    // Goal: a zombie server (SIGSTOP for longer than its clients wait, then
    // SIGCONT) stores nothing decided on its stale view. Method: a burst of
    // appends with ids through A (eight tasks, six rounds each); after a
    // seeded number of their acknowledgements A gets SIGSTOP, so that some are
    // in flight; their calls time out after 2 s and are retried through B with
    // the same ids, while B takes new appends to the same keys, plain and
    // compare-and-set. After 3 s A gets SIGCONT and the burst goes on through
    // A. Whatever A had queued was decided on a view older than B's writes:
    // its publishes must be refused by the fence and decided again (a
    // duplicate for an id B stored meanwhile). Then the partition is checked
    // through both servers, and once more through B after A is killed, so that
    // nothing A still held can land unseen.
    let seed = seed("stop");
    let mut rng = Rng(seed);
    let (_cluster, _connection, _serial, mut servers, clients) = setup().await;
    let book = Arc::new(Book::default());
    let routes = [
        Route::new(&clients[0], CALL_WAIT),
        Route::new(&clients[1], CALL_WAIT),
    ];
    for round in 0..4 {
        let key = format!("k{}", round % KEYS);
        append_new(&routes, round % 2, &key, format!("warm-{round}"), &book, seed).await;
    }
    const BURST_TASKS: usize = 8;
    const BURST_ROUNDS: usize = 6;
    let stop_after = book.count() + 1 + rng.below(8) as usize;
    let mut burst = Vec::new();
    for task in 0..BURST_TASKS {
        let book = Arc::clone(&book);
        let routes = [Route::new(&clients[0], STOPPED_CALL_WAIT), routes[1].clone()];
        burst.push(tokio::spawn(async move {
            for round in 0..BURST_ROUNDS {
                let key = format!("k{}", (task + round) % KEYS);
                let payload = format!("burst-t{task}-r{round}");
                append_new(&routes, 0, &key, payload, &book, seed).await;
            }
        }));
    }
    let b_stop = Arc::new(AtomicBool::new(false));
    let mut through_b = Vec::new();
    for task in 0..3 {
        let (book, b_stop, clients) = (Arc::clone(&book), Arc::clone(&b_stop), clients.clone());
        let mut rng = Rng(seed ^ (task as u64 + 1));
        let b = [routes[1].clone()];
        through_b.push(tokio::spawn(async move {
            for round in 0..400 {
                if b_stop.load(Ordering::Acquire) {
                    break;
                }
                let key = format!("k{}", rng.below(KEYS as u64));
                let payload = format!("b-t{task}-r{round}");
                if task == 0 {
                    append_new(&b, 0, &key, payload, &book, seed).await;
                } else {
                    append_cas(&clients[1], &key, payload, &book, seed).await;
                }
            }
        }));
    }
    wait_acked(&book, stop_after, seed, "before the stop").await;
    servers[0].signal(libc::SIGSTOP);
    let unknown_at_stop = book.unknown.load(Ordering::Relaxed);
    // The behaviour under test: a pause longer than the clients wait.
    tokio::time::sleep(STOP_FOR).await;
    servers[0].signal(libc::SIGCONT);
    let woke_at_line = servers[0].log_lines();
    let unknown_in_stop = book.unknown.load(Ordering::Relaxed) - unknown_at_stop;
    for task in burst {
        task.await.expect("burst appender");
    }
    b_stop.store(true, Ordering::Release);
    for task in through_b {
        task.await.expect("appender through B");
    }
    // A fresh connection to A: its writer answers after everything queued before.
    let fresh = Client::connect(servers[0].url.clone())
        .await
        .expect("connect to A again");
    let routes = [Route::new(&fresh, CALL_WAIT), routes[1].clone()];
    append_new(&routes, 0, "k0", "after-cont".to_string(), &book, seed).await;
    assert!(
        unknown_in_stop > 0,
        "seed {seed}: no call to A timed out while it was stopped: the drill proves nothing"
    );
    let through_a = check(&clients[0], &book, seed, "A").await;
    let through_b = check(&clients[1], &book, seed, "B").await;
    assert_eq!(
        through_a, through_b,
        "seed {seed}: both servers read the same partition"
    );
    check_retries(&clients[0], &book, seed, "A").await;
    check_retries(&clients[1], &book, seed, "B").await;
    let refused = servers[0].count_since(woke_at_line, FENCE_REFUSED);
    assert!(
        refused > 0,
        "seed {seed}: A decided nothing on a stale view after SIGCONT: the drill proves nothing"
    );
    let unanswered = servers[0].count(PUBLISH_UNANSWERED);
    servers[0].kill();
    let after_kill = check(&clients[1], &book, seed, "B after A's kill").await;
    assert_eq!(
        after_kill, through_b,
        "seed {seed}: nothing landed after the check"
    );
    println!(
        "stop: A stopped after {stop_after} acknowledgements for {STOP_FOR:?}; {} appends stored; \
         {unknown_in_stop} calls timed out during the stop, {} unknown outcomes in all, {} \
         answered as duplicates; compare-and-set {} won, {} lost, {} unresolved; A's fence \
         refusals after SIGCONT {refused} (unanswered publishes {unanswered}), B's {}",
        after_kill,
        book.unknown.load(Ordering::Relaxed),
        book.duplicates.load(Ordering::Relaxed),
        lock(&book.cas_won).len(),
        book.cas_lost.load(Ordering::Relaxed),
        lock(&book.maybe).len(),
        servers[1].count(FENCE_REFUSED),
    );
    if std::env::var_os("STELE_DRILL_VERBOSE").is_some() {
        println!("A's log:\n{}", servers[0].tail(200));
    }
}

/// The stream's leader and whether every replica is current, from stream
/// info; `None` when the stream does not answer.
async fn replicas(connection: &Connection, stream: &str) -> Option<(String, bool)> {
    let mut handle = connection.jetstream.get_stream(stream).await.ok()?;
    let info = handle.info().await.ok()?;
    let cluster = info.cluster.as_ref()?;
    let leader = cluster.leader.clone()?;
    let current = cluster.replicas.len() == 2
        && cluster
            .replicas
            .iter()
            .all(|replica| replica.current && !replica.offline);
    Some((leader, current))
}

/// Waits (bounded) until every stream of the cluster (the partition's and
/// the buckets') has a leader and two current followers; the time it took.
async fn wait_all_current(connection: &Connection, cluster: &mut Cluster, seed: u64, what: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + REPLICAS_WAIT_MAX;
    loop {
        let mut names = Vec::new();
        let mut listed = connection.jetstream.stream_names();
        while let Some(name) = listed.next().await {
            match name {
                Ok(name) => names.push(name),
                Err(_) => {
                    names.clear();
                    break;
                }
            }
        }
        let mut all = !names.is_empty();
        for name in &names {
            if !replicas(connection, name)
                .await
                .is_some_and(|(_, current)| current)
            {
                all = false;
                break;
            }
        }
        if all {
            return started.elapsed();
        }
        if Instant::now() >= deadline {
            let mut states = Vec::new();
            for name in &names {
                states.push(format!("{name}: {:?}", replicas(connection, name).await));
            }
            panic!(
                "seed {seed}: {what}: the streams have no three current replicas after {REPLICAS_WAIT_MAX:?} \
                 ({}); the nodes' logs:\n{}",
                states.join(", "),
                cluster.logs(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Which node of the wipe drill is wiped, and when the next is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A follower of the partition stream; the next kill after the catch-up.
    Follower,
    /// The stream's leader; the next kill after the catch-up.
    Leader,
    /// A follower; the next kill (of the leader) at once, before the wiped
    /// node can have caught up.
    FollowerUncaught,
}

/// The partition stream's leader, waited for (bounded).
async fn leader_of(connection: &Connection, stream: &str, seed: u64) -> String {
    let deadline = Instant::now() + PHASE_WAIT_MAX;
    loop {
        if let Some((leader, _)) = replicas(connection, stream).await {
            return leader;
        }
        assert!(Instant::now() < deadline, "seed {seed}: the stream has no leader");
        // A poll interval: stream info has no change notification.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the reads during a window without a quorum answered.
#[derive(Default)]
struct Probed {
    answered: usize,
    unavailable: usize,
    /// The distinct reasons reads failed for.
    reasons: std::collections::BTreeSet<String>,
}

impl std::fmt::Display for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "reads during {UNCAUGHT_FOR:?}: {} answered, {} unavailable {:?}",
            self.answered, self.unavailable, self.reasons
        )
    }
}

/// Reads the partition's head through `client` for `window`: each read
/// either fails as unavailable or shows a high watermark past every offset
/// acknowledged before it started (a replica that lags or was wiped must
/// not answer for the partition).
async fn probe_reads(client: &Client, through: &str, book: &Book, window: Duration, seed: u64) -> Probed {
    let mut probed = Probed::default();
    let end = Instant::now() + window;
    while Instant::now() < end {
        let known = book.high_watermark();
        // A read still unanswered when the window closes counts as unavailable.
        let wait = PROBE_WAIT.min(end.saturating_duration_since(Instant::now()));
        let read = tokio::time::timeout(wait, client.read(TOPIC, PartitionId(0), Offset(0), 1, 0)).await;
        match read {
            Ok(Ok(read)) => {
                probed.answered += 1;
                assert!(
                    read.high_watermark >= known,
                    "seed {seed}: a read through {through} answered high watermark {} with {known} acknowledged",
                    read.high_watermark
                );
            }
            Ok(Err(error)) if unknown_outcome(&error) => {
                probed.unavailable += 1;
                probed.reasons.insert(format!("{through}: {error}"));
            }
            Err(_) => {
                probed.unavailable += 1;
                probed
                    .reasons
                    .insert(format!("{through}: no answer within {PROBE_WAIT:?}"));
            }
            Ok(Err(error)) => panic!("seed {seed}: a read through {through} without a quorum: {error}"),
        }
        // A poll interval: a read answered at once is not repeated in a tight loop.
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
    probed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_nodes_restarted_with_wiped_stores_lose_no_acknowledged_append() {
    // Goal: a NATS node that comes back with an empty store rejoins as a
    // follower and catches up, so that once the partition stream reports three
    // current replicas again, losing another node loses nothing Stele
    // acknowledged. Method: three tasks append with ids through A and B
    // (retrying through the other server while the outcome is unknown) for the
    // whole drill. Phase 1: a node that is not the stream's leader is killed,
    // wiped and restarted; once every stream has three current replicas, the
    // leader or the other follower (seeded) is killed; appends go on; it is
    // restarted with its store. Phase 2: the same with the stream's leader as
    // the wiped node. Phase 3: a follower is wiped and restarted and the
    // leader killed at once; for 12 s reads through both servers must fail as
    // unavailable or show every acknowledged offset, and appends must not
    // fail otherwise; then the killed node returns with its store. Then the
    // partition is checked through both servers.
    let seed = seed("wipe");
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut marks = Vec::new();
    let (mut cluster, connection, _serial, servers, clients) = setup().await;
    // Short requests, so that one lost during a node's death is soon asked again.
    let mut connection = connection;
    connection.jetstream.set_timeout(Duration::from_secs(2));
    let stream = connection.names.stream(TOPIC, 0);
    let book = Arc::new(Book::default());
    let done = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for task in 0..3 {
        let (book, done) = (Arc::clone(&book), Arc::clone(&done));
        let routes = [
            Route::new(&clients[0], CALL_WAIT),
            Route::new(&clients[1], CALL_WAIT),
        ];
        tasks.push(tokio::spawn(async move {
            // Bounded by the drill's phases, each bounded in time.
            for round in 0..1_000_000 {
                if done.load(Ordering::Acquire) {
                    break;
                }
                let key = format!("k{}", (task + round) % KEYS);
                append_new(
                    &routes,
                    (task + round) % 2,
                    &key,
                    format!("t{task}-r{round}"),
                    &book,
                    seed,
                )
                .await;
            }
        }));
    }
    let mut report = Vec::new();
    let step = 10;
    for phase in [Phase::Follower, Phase::Leader, Phase::FollowerUncaught] {
        wait_acked(&book, book.count() + step, seed, "before the wipe").await;
        let leader = leader_of(&connection, &stream, seed).await;
        let leader = cluster.index_of(&leader).expect("a node of ours");
        let wiped = match phase {
            Phase::Follower | Phase::FollowerUncaught => (leader + 1 + rng.below(2) as usize) % 3,
            Phase::Leader => leader,
        };
        cluster.kill(wiped).expect("kill");
        marks.push(format!(
            "{:.1?} killed {}",
            started.elapsed(),
            cluster.name(wiped)
        ));
        wait_acked(&book, book.count() + 5, seed, "with a node down").await;
        tokio::task::block_in_place(|| cluster.restart(wiped, true)).expect("restart wiped");
        marks.push(format!("{:.1?} restarted it wiped", started.elapsed()));
        let others: Vec<usize> = (0..3).filter(|index| *index != wiped).collect();
        let (second, caught_up) = if phase == Phase::FollowerUncaught {
            // The leader, killed before the wiped node can have caught up.
            let leader = leader_of(&connection, &stream, seed).await;
            let second = cluster
                .index_of(&leader)
                .filter(|index| *index != wiped)
                .unwrap_or(others[0]);
            (second, None)
        } else {
            let caught_up = wait_all_current(&connection, &mut cluster, seed, "after the wipe").await;
            wait_acked(
                &book,
                book.count() + step,
                seed,
                "after the wiped node's catch-up",
            )
            .await;
            (others[rng.below(2) as usize], Some(caught_up))
        };
        let leader = replicas(&connection, &stream).await.map(|(leader, _)| leader);
        let second_was = if leader.as_deref() == Some(cluster.name(second)) {
            "the leader"
        } else {
            "a follower"
        };
        cluster.kill(second).expect("kill another");
        marks.push(format!(
            "{:.1?} killed {}",
            started.elapsed(),
            cluster.name(second)
        ));
        let probed = if phase == Phase::FollowerUncaught {
            // The behaviour under test: two nodes left, one of them empty.
            let (mut probed, through_b) = tokio::join!(
                probe_reads(&clients[0], "A", &book, UNCAUGHT_FOR, seed),
                probe_reads(&clients[1], "B", &book, UNCAUGHT_FOR, seed)
            );
            probed.answered += through_b.answered;
            probed.unavailable += through_b.unavailable;
            probed.reasons.extend(through_b.reasons);
            Some(probed)
        } else {
            wait_acked(&book, book.count() + step, seed, "with the second node down").await;
            None
        };
        tokio::task::block_in_place(|| cluster.restart(second, false)).expect("restart");
        marks.push(format!("{:.1?} restarted it", started.elapsed()));
        let back = wait_all_current(&connection, &mut cluster, seed, "after the second restart").await;
        wait_acked(&book, book.count() + step, seed, "after the second restart").await;
        marks.push(format!("{:.1?} appending again", started.elapsed()));
        report.push(format!(
            "wiped {phase:?} {} (three current replicas after {caught_up:?}), then killed {second_was} {} \
             ({}; all current {back:?} after its restart)",
            cluster.name(wiped),
            cluster.name(second),
            probed
                .as_ref()
                .map_or_else(|| "appends went on".to_string(), ToString::to_string),
        ));
    }
    wait_acked(&book, book.count() + 5, seed, "at the end").await;
    done.store(true, Ordering::Release);
    let faults_took = started.elapsed();
    for task in tasks {
        task.await.expect("appender");
    }
    let through_a = check(&clients[0], &book, seed, "A").await;
    let through_b = check(&clients[1], &book, seed, "B").await;
    assert_eq!(
        through_a, through_b,
        "seed {seed}: both servers read the same partition"
    );
    assert_eq!(
        through_b,
        book.count(),
        "seed {seed}: every append is stored exactly once"
    );
    check_retries(&clients[0], &book, seed, "A").await;
    check_retries(&clients[1], &book, seed, "B").await;
    println!(
        "wipe: faults {faults_took:?}, checks {:?}; {}; {through_b} appends stored, {} unknown outcomes retried, {} answered as \
         duplicates; fence refusals A {} B {}, unanswered publishes A {} B {}; timeline: {}",
        started.elapsed() - faults_took,
        report.join("; "),
        book.unknown.load(Ordering::Relaxed),
        book.duplicates.load(Ordering::Relaxed),
        servers[0].count(FENCE_REFUSED),
        servers[1].count(FENCE_REFUSED),
        servers[0].count(PUBLISH_UNANSWERED),
        servers[1].count(PUBLISH_UNANSWERED),
        marks.join(", "),
    );
}
