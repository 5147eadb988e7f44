//! Webhook delivery end to end: a real server, the gRPC client, and a scripted
//! HTTP/1.1 receiver on port 0 that answers each request as the test says (a
//! status, 429/503 with Retry-After, a hang past the timeout, a connection reset,
//! or nothing at all while it is down) and records arrival times, headers and
//! bodies. Tests wait on those records with deadlines, never on sleeps.

#[path = "python/venv.rs"]
mod venv;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use stele::client::{Client, WebhookChange};
use stele::server::webhook::signature;
use stele::server::webhook::{DeliveryObserver, NewWebhook, NoopObserver, WebhookSettings};
use stele::server::{RunningServer, ServerConfig};
use stele::{AppendRequest, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How long any wait in these tests may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// The request timeout of [`fast_settings`], in ms.
const REQUEST_TIMEOUT_MS: u64 = 20_000;

/// The Python interpreter of a virtual environment with the `standardwebhooks`
/// and `jsonschema` packages, created on first use by one test of this file
/// while the others that need it wait.
fn python() -> std::path::PathBuf {
    static PYTHON: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| venv::python("webhook-venv", &["standardwebhooks", "jsonschema"]))
        .clone()
}

/// How the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Status(u16),
    RetryAfter(u16, u64),
    /// Never answer (the sender's timeout fires).
    Hang,
    /// Reset the connection.
    Reset,
    /// Answer 200 once this many requests have been open at the same time (or
    /// after `DEADLINE`), so that concurrency shows whatever the machine's load.
    OkWhenOpen(usize),
}

impl Answer {
    fn is_success(self) -> bool {
        matches!(self, Answer::Status(200..=299) | Answer::OkWhenOpen(_))
    }
}

/// One request as received.
#[derive(Debug, Clone)]
struct Delivery {
    at: Instant,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    key: String,
    sequence: u64,
    answer: Answer,
}

/// Decides the answer from the request and how many earlier requests had its id.
type Script = Box<dyn FnMut(&Delivery, usize) -> Answer + Send>;

struct ReceiverState {
    records: Mutex<Vec<Delivery>>,
    script: Mutex<Script>,
    changed: Notify,
    /// Requests being answered now, and the most at once.
    open: std::sync::atomic::AtomicUsize,
    open_max: std::sync::atomic::AtomicUsize,
}

struct Receiver {
    address: SocketAddr,
    state: Arc<ReceiverState>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Receiver {
    async fn start(script: Script) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let address = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState {
            records: Mutex::new(Vec::new()),
            script: Mutex::new(script),
            changed: Notify::new(),
            open: std::sync::atomic::AtomicUsize::new(0),
            open_max: std::sync::atomic::AtomicUsize::new(0),
        });
        let receiver = Receiver {
            address,
            state,
            accept: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: TcpListener) {
        let state = Arc::clone(&self.state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(Arc::clone(&state), stream));
            }
        });
        *self.accept.lock().expect("lock") = Some(task);
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.address)
    }

    /// Closes the listener: connections are refused.
    async fn down(&self) {
        let task = self.accept.lock().expect("lock").take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    async fn up(&self) {
        let listener = TcpListener::bind(self.address)
            .await
            .expect("re-bind the receiver port");
        self.serve(listener);
    }

    fn set_script(&self, script: Script) {
        *self.state.script.lock().expect("lock") = script;
    }

    fn records(&self) -> Vec<Delivery> {
        self.state.records.lock().expect("lock").clone()
    }

    /// Waits until `done` holds for the records; panics with `what` at the deadline.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let records = self.records();
            if done(&records) {
                return records;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("timed out waiting for {what}; {} records", records.len());
            }
        }
    }
}

async fn handle(state: Arc<ReceiverState>, mut stream: TcpStream) {
    let Some((headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let header = |name: &str| headers.get(name).cloned().unwrap_or_default();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut delivery = Delivery {
        at: Instant::now(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        key: event["key"].as_str().unwrap_or_default().to_string(),
        sequence: event["sequence"].as_u64().unwrap_or(u64::MAX),
        body,
        answer: Answer::Status(0),
    };
    let answer = {
        let records = state.records.lock().expect("lock");
        let earlier = records.iter().filter(|record| record.id == delivery.id).count();
        let answer = (state.script.lock().expect("lock"))(&delivery, earlier);
        drop(records);
        answer
    };
    delivery.answer = answer;
    let open = state.open.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    state
        .open_max
        .fetch_max(open, std::sync::atomic::Ordering::SeqCst);
    state.records.lock().expect("lock").push(delivery);
    state.changed.notify_waiters();
    if let Answer::OkWhenOpen(wanted) = answer {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let notified = state.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The most open at once, not the number open now: a holder woken late
            // must not miss a peak that a released request already left.
            if state.open_max.load(std::sync::atomic::Ordering::SeqCst) >= wanted
                || Instant::now() >= deadline
            {
                break;
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }
    respond(&mut stream, answer).await;
    state.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
}

async fn respond(stream: &mut TcpStream, answer: Answer) {
    match answer {
        Answer::Status(status) => {
            let response = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = stream.write_all(response.as_bytes()).await;
        }
        Answer::RetryAfter(status, seconds) => {
            let response = format!(
                "HTTP/1.1 {status} X\r\nretry-after: {seconds}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
        Answer::Hang => {
            let mut sink = [0u8; 64];
            // The sender gives up and closes; then this read ends.
            let _ = tokio::time::timeout(DEADLINE, stream.read(&mut sink)).await;
        }
        Answer::Reset => {
            // Closing with a zero linger sends a reset instead of a FIN.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
        }
        Answer::OkWhenOpen(_) => {
            let response = "HTTP/1.1 200 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(response.as_bytes()).await;
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<(HashMap<String, String>, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some((headers, body))
}

/// Records every observation as a line, for assertions on the metrics interface.
#[derive(Default)]
struct RecordingObserver {
    lines: Mutex<Vec<String>>,
}

impl RecordingObserver {
    fn push(&self, line: String) {
        self.lines.lock().expect("lock").push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

impl DeliveryObserver for RecordingObserver {
    fn attempt(&self, endpoint: &str) {
        self.push(format!("attempt {endpoint}"));
    }
    fn outcome(&self, endpoint: &str, outcome: &str, status_class: &str) {
        self.push(format!("outcome {endpoint} {outcome} {status_class}"));
    }
    fn retry_delay(&self, endpoint: &str, delay: Duration) {
        self.push(format!("retry_delay {endpoint} {}", delay.as_millis()));
    }
    fn delivered(&self, endpoint: &str, _latency: Duration) {
        self.push(format!("delivered {endpoint}"));
    }
    fn lag(&self, endpoint: &str, events: u64) {
        self.push(format!("lag {endpoint} {events}"));
    }
    fn circuit(&self, endpoint: &str, state: i64) {
        self.push(format!("circuit {endpoint} {state}"));
    }
    fn dead_lettered(&self, endpoint: &str) {
        self.push(format!("dead_lettered {endpoint}"));
    }
    fn remove(&self, endpoint: &str) {
        self.push(format!("remove {endpoint}"));
    }
    fn in_flight(&self, endpoint: &str, keys: usize) {
        self.push(format!("in_flight {endpoint} {keys}"));
    }
}

impl RecordingObserver {
    /// The most keys the dispatcher reported in flight at once for `endpoint`.
    fn in_flight_max(&self, endpoint: &str) -> usize {
        let prefix = format!("in_flight {endpoint} ");
        self.lines()
            .iter()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|keys| keys.parse::<usize>().expect("a count"))
            .max()
            .unwrap_or(0)
    }
}

/// A server on port 0 whose webhooks may target loopback (or not).
async fn start_server(dir: &Path, allow_loopback: bool) -> (RunningServer, Client) {
    start_observed_server(dir, allow_loopback, Arc::new(NoopObserver)).await
}

async fn start_observed_server(
    dir: &Path,
    allow_loopback: bool,
    observer: Arc<dyn DeliveryObserver>,
) -> (RunningServer, Client) {
    let mut config = ServerConfig::new(dir);
    config.listen = "127.0.0.1:0".parse().expect("address");
    if allow_loopback {
        config.webhooks.allow = vec!["127.0.0.0/8".parse().expect("network")];
    }
    // The embedded engine, or the NATS backend under scripts/it-nats.sh.
    let storage = stele::client::test_storage(dir, &config).await;
    let server = RunningServer::start_with_storage_observed(storage, config, observer)
        .await
        .expect("server starts");
    let client = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    (server, client)
}

/// Fast settings: millisecond backoff, a breaker that stays closed. The request
/// timeout is long: a test whose receiver answers must not see a slow machine's
/// late answer turn into a timeout and a retry (only a test of hangs sets a
/// shorter one, and allows for that).
fn fast_settings() -> WebhookSettings {
    WebhookSettings {
        in_flight_max: 8,
        attempts_max: 8,
        backoff_initial_ms: 20,
        backoff_max_ms: 80,
        timeout_ms: REQUEST_TIMEOUT_MS,
        breaker_failures: 1000,
        breaker_pause_ms: 100,
        ..WebhookSettings::default()
    }
}

fn webhook(name: &str, url: &str, topic: &str, settings: WebhookSettings) -> NewWebhook {
    NewWebhook {
        name: name.to_string(),
        url: url.to_string(),
        topic: topic.to_string(),
        settings,
        ..NewWebhook::default()
    }
}

async fn append(client: &Client, topic: &str, key: &str, sequence: u64) {
    let payload = format!("{{\"key\":\"{key}\",\"n\":{sequence}}}");
    client
        .append(
            topic,
            &AppendRequest::new(key.as_bytes(), vec![Event::new("tested", payload)]),
        )
        .await
        .expect("append");
}

/// Whether every (key, sequence) of `keys` x `0..count` got a success.
fn all_succeeded(records: &[Delivery], keys: &[&str], count: u64) -> bool {
    keys.iter().all(|key| {
        (0..count).all(|sequence| {
            records
                .iter()
                .any(|record| record.key == *key && record.sequence == sequence && record.answer.is_success())
        })
    })
}

/// Checks the per-key order: a key's next event arrives only after its previous
/// event succeeded (or, with `dead_lettered`, was given up on).
fn assert_order_per_key(records: &[Delivery], dead_lettered: &[(String, u64)]) {
    let mut by_key: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
    for record in records {
        by_key.entry(record.key.as_str()).or_default().push(record);
    }
    for (key, arrivals) in by_key {
        let mut finished_through: Option<u64> = None;
        for arrival in arrivals {
            let expected_next = finished_through.map_or(0, |sequence| sequence + 1);
            assert!(
                arrival.sequence <= expected_next,
                "key {key}: sequence {} arrived before {expected_next} finished",
                arrival.sequence
            );
            let given_up = dead_lettered.contains(&(key.to_string(), arrival.sequence));
            if arrival.sequence == expected_next && (arrival.answer.is_success() || given_up) {
                finished_through = Some(arrival.sequence);
            }
        }
    }
}

fn assert_signatures(records: &[Delivery], secret_text: &str) {
    let secret = signature::decode_secret(secret_text).expect("secret");
    for record in records {
        let timestamp: i64 = record.timestamp.parse().expect("numeric timestamp");
        assert_eq!(
            record.signature,
            signature::sign(&secret, &record.id, timestamp, &record.body),
            "signature of {}",
            record.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_survive_failures_in_order_per_key_with_stable_ids() {
    // Goal: with 500s, 429 and 503 with Retry-After, a connection reset and a hang past
    // the timeout injected, every event is delivered, in order per key, with one
    // webhook-id per event across retries, backoff within its bounds, Retry-After
    // honoured, and other keys flowing while one key waits.
    // Method: the receiver's script picks each answer from the count of earlier
    // arrivals of the same webhook-id, so the answers do not depend on timing;
    // the checks look at each event's arrivals up to its first success (a late
    // answer on a loaded machine may add a retry after it) and bound times
    // from below, where the dispatcher guarantees them, not from above.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let receiver = Receiver::start(Box::new(|delivery, earlier| {
        match (delivery.key.as_str(), delivery.sequence) {
            ("k0", 2) if earlier < 2 => Answer::Status(500),
            ("k1", 1) if earlier < 1 => Answer::RetryAfter(429, 1),
            ("k2", 3) if earlier < 1 => Answer::Reset,
            ("k3", 0) if earlier < 1 => Answer::Hang,
            ("k4", 4) if earlier < 1 => Answer::RetryAfter(503, 1),
            _ => Answer::Status(200),
        }
    }))
    .await;
    // The timeout must fire on the hang, and is long enough that no answer of
    // this machine's receiver is late.
    let timeout_ms = 2000;
    let settings = WebhookSettings {
        timeout_ms,
        ..fast_settings()
    };
    let (_, secret) = client
        .create_webhook(&webhook("ordered", &receiver.url(), "orders", settings))
        .await
        .expect("create webhook");
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    for sequence in 0..6 {
        for key in keys {
            append(&client, "orders", key, sequence).await;
        }
    }
    let records = receiver
        .wait_until("every event delivered", |records| {
            all_succeeded(records, &keys, 6)
        })
        .await;
    assert_order_per_key(&records, &[]);
    assert_signatures(&records, &secret);
    // One webhook-id per event, kept across retries; distinct between events.
    let mut ids: HashMap<(String, u64), String> = HashMap::new();
    for record in &records {
        let id = ids
            .entry((record.key.clone(), record.sequence))
            .or_insert(record.id.clone());
        assert_eq!(
            *id, record.id,
            "retries of {}/{} keep their id",
            record.key, record.sequence
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), 30);
    // An event's arrivals up to and including its first success.
    let attempts = |key: &str, sequence: u64| -> Vec<Delivery> {
        let mut tries: Vec<Delivery> = Vec::new();
        for record in records
            .iter()
            .filter(|record| record.key == key && record.sequence == sequence)
        {
            tries.push(record.clone());
            if record.answer.is_success() {
                break;
            }
        }
        tries
    };
    // Backoff after a 500: attempt n waits within [base/2, base], base = 20 ms * 2^(n-1).
    let k0 = attempts("k0", 2);
    assert_eq!(k0.len(), 3, "two 500s, then success");
    for (index, base_ms) in [(1usize, 20u64), (2, 40)] {
        let gap = k0[index].at - k0[index - 1].at;
        assert!(
            gap >= Duration::from_millis(base_ms / 2),
            "backoff {gap:?} below {}",
            base_ms / 2
        );
        // Only a gross error (a unit mix-up) is caught from above: a loaded
        // machine may delay anything; policy.rs tests the exact bounds.
        assert!(
            gap <= Duration::from_millis(base_ms) + Duration::from_secs(5),
            "backoff {gap:?} far above {base_ms}"
        );
    }
    // Retry-After: 1 is waited out for 429 and 503.
    for (key, sequence) in [("k1", 1), ("k4", 4)] {
        let tries = attempts(key, sequence);
        assert_eq!(tries.len(), 2);
        assert!(
            tries[1].at - tries[0].at >= Duration::from_millis(990),
            "Retry-After honoured"
        );
    }
    // The reset and the timeout were retried.
    assert_eq!(attempts("k2", 3).len(), 2);
    let k3 = attempts("k3", 0);
    assert_eq!(k3.len(), 2);
    assert_eq!(k3[0].answer, Answer::Hang);
    // The timeout runs from before the connection; the receiver records the
    // request when it has read it, maybe late: half the timeout is certain.
    assert!(
        k3[1].at - k3[0].at >= Duration::from_millis(timeout_ms / 2),
        "the hang lasted the timeout"
    );
    // While k3 waited for its timeout, other keys were delivered.
    assert!(
        records
            .iter()
            .any(|record| record.key != "k3" && record.at > k3[0].at && record.at < k3[1].at),
        "other keys flow while one key waits"
    );
    // The body carries the event.
    let body: Value = serde_json::from_slice(&k0[2].body).expect("json body");
    assert_eq!(body["topic"], "orders");
    assert_eq!(body["type"], "tested");
    assert_eq!(body["payload"]["n"], 2);
    assert_eq!(body["payload_encoding"], "json");
    // The cursor catches up: nothing is left to deliver.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let listed = client.list_webhooks().await.expect("list");
        if listed[0].lag == 0 {
            assert_eq!(listed[0].delivered_count, 30);
            break;
        }
        assert!(Instant::now() < deadline, "lag stays {}", listed[0].lag);
        tokio::task::yield_now().await;
    }
    server.shutdown().await.expect("shutdown");
}

/// Polls the dead-letter list until `done` holds.
async fn wait_dead_letters(
    client: &Client,
    name: &str,
    what: &str,
    done: impl Fn(&[stele::server::webhook::DeadLetterView]) -> bool,
) -> Vec<stele::server::webhook::DeadLetterView> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let letters = client.dead_letters(name, 0).await.expect("dead letters");
        if done(&letters) {
            return letters;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {letters:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_are_dead_lettered_then_redriven_with_their_ids() {
    // Goal: retryable failures dead-letter after the attempt limit, a 4xx at once;
    // the key's next event waits for its predecessor's dead-lettering; the dead
    // letters are listed with reason, status and attempts, and a redrive delivers
    // them with their original webhook-id and empties the list.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let receiver = Receiver::start(Box::new(|delivery, _| match delivery.key.as_str() {
        "bad" => Answer::Status(500),
        "gone" => Answer::Status(410),
        _ => Answer::Status(204),
    }))
    .await;
    let settings = WebhookSettings {
        attempts_max: 3,
        ..fast_settings()
    };
    client
        .create_webhook(&webhook("letters", &receiver.url(), "payments", settings))
        .await
        .expect("create");
    append(&client, "payments", "bad", 0).await;
    append(&client, "payments", "bad", 1).await;
    append(&client, "payments", "good", 0).await;
    append(&client, "payments", "gone", 0).await;
    let letters = wait_dead_letters(&client, "letters", "three dead letters", |letters| {
        letters.len() == 3
    })
    .await;
    let records = receiver.records();
    assert_order_per_key(&records, &[("bad".to_string(), 0), ("bad".to_string(), 1)]);
    for letter in &letters {
        let key = String::from_utf8_lossy(&letter.key).into_owned();
        assert_eq!(letter.topic, "payments");
        match key.as_str() {
            "bad" => {
                assert_eq!(letter.attempts, 3);
                assert_eq!(letter.last_status, 500);
                assert!(
                    letter.reason.contains("gave up after 3 attempts"),
                    "{}",
                    letter.reason
                );
            }
            "gone" => {
                assert_eq!(letter.attempts, 1);
                assert_eq!(letter.last_status, 410);
                assert!(letter.reason.contains("permanent"), "{}", letter.reason);
            }
            other => panic!("unexpected dead letter for key {other}"),
        }
    }
    let bad_attempts = records.iter().filter(|record| record.key == "bad").count();
    assert_eq!(bad_attempts, 6, "three attempts for each of the two events");
    // Redrive once the receiver is fixed.
    receiver.set_script(Box::new(|_, _| Answer::Status(200)));
    let redriven = client.redrive_dead_letters("letters").await.expect("redrive");
    assert_eq!(redriven, 3);
    let ids: Vec<String> = letters.iter().map(|letter| letter.webhook_id.clone()).collect();
    let records = receiver
        .wait_until("redriven events delivered", |records| {
            ids.iter().all(|id| {
                records
                    .iter()
                    .any(|record| record.id == *id && record.answer.is_success())
            })
        })
        .await;
    // The redriven events are the originals: same id, same key, sequence and payload.
    for letter in &letters {
        let original = records
            .iter()
            .find(|record| record.id == letter.webhook_id)
            .expect("original attempt");
        let redelivered = records
            .iter()
            .rfind(|record| record.id == letter.webhook_id)
            .expect("redelivery");
        assert_eq!(original.body, redelivered.body);
    }
    wait_dead_letters(&client, "letters", "an empty dead-letter list", <[_]>::is_empty).await;
    // The server's own metrics saw the same story: three dead letters, a 410
    // counted as a permanent failure, retries of the 500s, and successes.
    let text = wait_metrics(&server, "the dead letters in the metrics", |text| {
        text.contains("stele_webhook_dead_lettered_total{endpoint=\"letters\"} 3")
    })
    .await;
    for line in [
        "stele_webhook_deliveries_total{endpoint=\"letters\",outcome=\"permanent_failure\",status_class=\"4xx\"} 1",
        "stele_webhook_deliveries_total{endpoint=\"letters\",outcome=\"retry\",status_class=\"5xx\"} 4",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(
        text.contains(
            "stele_webhook_deliveries_total{endpoint=\"letters\",outcome=\"success\",status_class=\"2xx\"}"
        ),
        "{text}"
    );
    server.shutdown().await.expect("shutdown");
}

/// Polls the server's metrics exposition until `done` holds.
async fn wait_metrics(server: &RunningServer, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = server.metrics().encode().await.expect("encode metrics");
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the webhook list until endpoint `name` satisfies `done`.
async fn wait_webhook(
    client: &Client,
    name: &str,
    what: &str,
    done: impl Fn(&stele::server::webhook::WebhookView) -> bool,
) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let listed = client.list_webhooks().await.expect("list");
        let view = listed
            .iter()
            .find(|view| view.endpoint.name == name)
            .expect("listed");
        if done(view) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_a_failing_receiver_and_closes_after_it_recovers() {
    // Goal: after the failure threshold the breaker opens (visible in the list), no
    // request goes during the pause, a probe follows; a healthy endpoint on the same
    // topic is unaffected; once the receiver recovers the breaker closes and every
    // event arrives in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let observer = Arc::new(RecordingObserver::default());
    let (server, client) = start_observed_server(dir.path(), true, observer.clone()).await;
    let failing = Receiver::start(Box::new(|_, _| Answer::Status(503))).await;
    let healthy = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
    let pause_ms = 400;
    let settings = WebhookSettings {
        in_flight_max: 1,
        attempts_max: 1000,
        breaker_failures: 3,
        breaker_pause_ms: pause_ms,
        ..fast_settings()
    };
    client
        .create_webhook(&webhook("flaky", &failing.url(), "events", settings))
        .await
        .expect("create flaky");
    client
        .create_webhook(&webhook("steady", &healthy.url(), "events", fast_settings()))
        .await
        .expect("create steady");
    let keys = ["a", "b", "c", "d"];
    for sequence in 0..5 {
        for key in keys {
            append(&client, "events", key, sequence).await;
        }
    }
    healthy
        .wait_until("the healthy endpoint gets everything", |records| {
            all_succeeded(records, &keys, 5)
        })
        .await;
    wait_webhook(&client, "flaky", "the breaker to open", |view| {
        view.circuit == "open"
    })
    .await;
    // Failures 1..3 open the breaker; the 4th request is the probe after the pause,
    // and a failed probe opens it for another pause.
    let records = failing
        .wait_until("two probes", |records| records.len() >= 5)
        .await;
    let pause = Duration::from_millis(pause_ms);
    assert!(
        records[3].at - records[2].at >= pause - Duration::from_millis(5),
        "no request during the pause"
    );
    assert!(
        records[4].at - records[3].at >= pause - Duration::from_millis(5),
        "a failed probe re-opens"
    );
    failing.set_script(Box::new(|_, _| Answer::Status(200)));
    failing
        .wait_until("the flaky endpoint gets everything", |records| {
            all_succeeded(records, &keys, 5)
        })
        .await;
    wait_webhook(&client, "flaky", "the breaker to close", |view| {
        view.circuit == "closed"
    })
    .await;
    assert_order_per_key(&failing.records(), &[]);
    // The observer saw the same story (once the server has counted every delivery).
    for name in ["flaky", "steady"] {
        wait_webhook(&client, name, "every delivery counted", |view| {
            view.delivered_count == 20 && view.lag == 0
        })
        .await;
    }
    let lines = observer.lines();
    let count = |line: &str| lines.iter().filter(|seen| *seen == line).count();
    let opened = lines
        .iter()
        .position(|line| line == "circuit flaky 2")
        .expect("open gauge");
    assert!(
        lines[opened..].iter().any(|line| line == "circuit flaky 0"),
        "closed gauge after open"
    );
    assert_eq!(count("delivered flaky"), 20);
    assert_eq!(count("delivered steady"), 20);
    assert!(count("outcome flaky retry 5xx") >= 5);
    assert_eq!(count("outcome steady success 2xx"), 20);
    assert_eq!(
        count("attempt flaky"),
        failing.records().len(),
        "one attempt per request received"
    );
    assert!(lines.iter().any(|line| line.starts_with("retry_delay flaky ")));
    assert!(lines.iter().any(|line| line == "lag steady 0"));
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_when_a_receiver_comes_back() {
    // Goal: while the receiver is down (connections refused) events wait, the
    // failure is visible in the list; when it listens again on the same port,
    // everything is delivered in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let receiver = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
    let settings = WebhookSettings {
        attempts_max: 1000,
        ..fast_settings()
    };
    client
        .create_webhook(&webhook("later", &receiver.url(), "jobs", settings))
        .await
        .expect("create");
    receiver.down().await;
    for sequence in 0..4 {
        append(&client, "jobs", "x", sequence).await;
        append(&client, "jobs", "y", sequence).await;
    }
    wait_webhook(&client, "later", "a connection error", |view| {
        view.last_error.contains("connect")
    })
    .await;
    assert!(receiver.records().is_empty());
    receiver.up().await;
    let records = receiver
        .wait_until("everything after the outage", |records| {
            all_succeeded(records, &["x", "y"], 4)
        })
        .await;
    assert_order_per_key(&records, &[]);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_pause_resume_and_delete_and_private_targets_are_denied() {
    // Goal: a paused endpoint keeps its position and resumes from it; delete
    // removes it; without an allow-list a name that resolves to loopback is
    // accepted (it is resolved at delivery) but refused at delivery time
    // (dead-lettered as a permanent failure) and never contacted.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let receiver = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
    client
        .create_webhook(&webhook("pausable", &receiver.url(), "t", fast_settings()))
        .await
        .expect("create");
    client
        .change_webhook("pausable", WebhookChange::Pause)
        .await
        .expect("pause");
    for sequence in 0..3 {
        append(&client, "t", "k", sequence).await;
    }
    let listed = client.list_webhooks().await.expect("list");
    assert!(listed[0].endpoint.paused);
    assert_eq!(listed[0].lag, 3, "nothing delivered while paused");
    assert!(receiver.records().is_empty());
    client
        .change_webhook("pausable", WebhookChange::Resume)
        .await
        .expect("resume");
    receiver
        .wait_until("delivery after resume", |records| {
            all_succeeded(records, &["k"], 3)
        })
        .await;
    client
        .change_webhook("pausable", WebhookChange::Delete)
        .await
        .expect("delete");
    assert!(client.list_webhooks().await.expect("list").is_empty());
    let error = client
        .change_webhook("pausable", WebhookChange::Delete)
        .await
        .expect_err("already deleted");
    assert_eq!(error.kind(), Some(stele::ErrorKind::WebhookNotFound));
    let error = client
        .create_webhook(&webhook("bad name!", &receiver.url(), "t", fast_settings()))
        .await
        .expect_err("bad name");
    assert_eq!(error.kind(), Some(stele::ErrorKind::InvalidArgument));
    server.shutdown().await.expect("shutdown");

    // A server without the allow-list refuses loopback targets: a literal one
    // when the endpoint is created, a name resolving to one at each delivery.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), false).await;
    let error = client
        .create_webhook(&webhook("literal", &receiver.url(), "t", fast_settings()))
        .await
        .expect_err("a loopback literal is refused at once");
    assert_eq!(error.kind(), Some(stele::ErrorKind::InvalidArgument));
    let by_name = format!("http://localhost:{}/hook", receiver.address.port());
    client
        .create_webhook(&webhook("internal", &by_name, "t", fast_settings()))
        .await
        .expect("create");
    let before = receiver.records().len();
    append(&client, "t", "k", 0).await;
    let letters = wait_dead_letters(&client, "internal", "a refused target", |letters| {
        letters.len() == 1
    })
    .await;
    assert!(letters[0].reason.contains("loopback"), "{}", letters[0].reason);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        receiver.records().len(),
        before,
        "the receiver was never contacted"
    );
    server.shutdown().await.expect("shutdown");
}

#[path = "common/serve.rs"]
mod serve;
use serve::spawn_serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_in_order_after_the_server_is_killed() {
    // Goal: SIGKILL the real server mid-delivery, restart it on the same data
    // directory: every event is delivered at least once, the first deliveries of
    // each key are in order, and re-deliveries carry the original webhook-id.
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start(Box::new(|delivery, _| {
        // Slow answers keep deliveries in flight when the kill comes.
        std::thread::sleep(Duration::from_millis(if delivery.sequence % 7 == 0 {
            30
        } else {
            2
        }));
        Answer::Status(200)
    }))
    .await;
    let mut serve = spawn_serve(dir.path());
    let client = Client::connect(serve.url.clone()).await.expect("connect");
    let settings = WebhookSettings {
        in_flight_max: 4,
        ..fast_settings()
    };
    client
        .create_webhook(&webhook("durable", &receiver.url(), "stream", settings))
        .await
        .expect("create");
    let keys: Vec<String> = (0..10).map(|index| format!("key-{index}")).collect();
    let per_key = 30u64;
    for sequence in 0..per_key {
        let requests: Vec<AppendRequest> = keys
            .iter()
            .map(|key| {
                let payload = format!("{{\"n\":{sequence}}}");
                AppendRequest::new(key.as_bytes(), vec![Event::new("tested", payload)])
            })
            .collect();
        for result in client
            .append_batch("stream", &requests)
            .await
            .expect("append batch")
        {
            result.expect("append");
        }
    }
    receiver
        .wait_until("deliveries under way", |records| records.len() >= 60)
        .await;
    serve.child.kill().expect("SIGKILL");
    serve.child.wait().expect("reap");
    let delivered_before = receiver.records().len();
    assert!(
        delivered_before < (keys.len() as u64 * per_key) as usize,
        "killed mid-delivery"
    );
    let mut serve = spawn_serve(dir.path());
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let records = receiver
        .wait_until("every event after the restart", |records| {
            all_succeeded(records, &key_refs, per_key)
        })
        .await;
    // First deliveries are in order per key; duplicates repeat the same id.
    let mut first: HashMap<(String, u64), (Instant, String)> = HashMap::new();
    for record in &records {
        let entry = first
            .entry((record.key.clone(), record.sequence))
            .or_insert((record.at, record.id.clone()));
        assert_eq!(entry.1, record.id, "a re-delivery keeps its webhook-id");
    }
    for key in &keys {
        for sequence in 1..per_key {
            let previous = first[&(key.clone(), sequence - 1)].0;
            let current = first[&(key.clone(), sequence)].0;
            assert!(
                previous <= current,
                "{key}: {sequence} first arrived before {}",
                sequence - 1
            );
        }
    }
    println!(
        "kill -9: {delivered_before} requests before the kill, {} in all for {} events",
        records.len(),
        keys.len() as u64 * per_key
    );
    serve.child.kill().expect("kill");
    serve.child.wait().expect("reap");
}

const VERIFY_PY: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
cases = json.load(open(sys.argv[1]))
verified = 0
for case in cases:
    hook = Webhook(case["secret"])
    body = base64.b64decode(case["body"])
    headers = {"webhook-id": case["id"], "webhook-timestamp": case["timestamp"], "webhook-signature": case["signature"]}
    payload = hook.verify(body, headers)
    assert payload["key"] == case["key"], payload
    try:
        hook.verify(body + b" ", headers)
        sys.exit("a tampered body verified")
    except WebhookVerificationError:
        pass
    verified += 1
print(f"verified {verified}")
"#;

#[test]
fn signatures_verify_with_the_standardwebhooks_package() {
    // Goal: an independent implementation (the `standardwebhooks` package from PyPI)
    // accepts the signatures of real deliveries, with a generated and a given
    // secret, and rejects a tampered body.
    let python = python();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cases = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, client) = start_server(dir.path(), true).await;
        let receiver = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
        let (_, generated) = client
            .create_webhook(&webhook("generated", &receiver.url(), "signed", fast_settings()))
            .await
            .expect("create");
        let given = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string();
        let second = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
        let mut request = webhook("given", &second.url(), "signed", fast_settings());
        request.secret = Some(given.clone());
        let (_, echoed) = client.create_webhook(&request).await.expect("create");
        assert_eq!(echoed, given);
        for sequence in 0..3 {
            append(&client, "signed", "user-1", sequence).await;
        }
        let mut cases = Vec::new();
        for (receiver, secret) in [(&receiver, &generated), (&second, &given)] {
            let records = receiver
                .wait_until("three deliveries", |records| {
                    all_succeeded(records, &["user-1"], 3)
                })
                .await;
            for record in records {
                use base64::Engine;
                cases.push(serde_json::json!({
                    "secret": secret,
                    "id": record.id,
                    "timestamp": record.timestamp,
                    "signature": record.signature,
                    "body": base64::engine::general_purpose::STANDARD.encode(&record.body),
                    "key": record.key,
                }));
            }
        }
        server.shutdown().await.expect("shutdown");
        cases
    });
    let work = tempfile::tempdir().expect("tempdir");
    let cases_path = work.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_vec(&cases).expect("json")).expect("write cases");
    let script = work.path().join("verify.py");
    std::fs::write(&script, VERIFY_PY).expect("write script");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&cases_path)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "verification failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("verified {}", cases.len())
    );
}

/// Runs `stele ARGS --url URL`; returns the exit code and stdout.
fn stele(url: &str, args: &[&str]) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stele"));
    command.args(args).args(["--url", url]);
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") {
            command.env_remove(name);
        }
    }
    let output = command.output().expect("stele runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn the_webhook_command_manages_endpoints_with_documented_exit_codes() {
    // Goal: `stele webhook` creates (printing the secret once), lists as text and
    // JSON, pauses, resumes and deletes; an unknown endpoint exits 4, a duplicate 3,
    // a bad URL 2.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut serve = spawn_serve(dir.path());
    let url = serve.url.clone();
    let (code, out) = stele(
        &url,
        &[
            "webhook",
            "create",
            "crm",
            "https://hooks.example.com/in",
            "--topic",
            "orders",
            "--type",
            "paid",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let created: Value = serde_json::from_str(out.trim()).expect("json");
    assert!(created["secret"].as_str().expect("secret").starts_with("whsec_"));
    assert_eq!(created["event_types"][0], "paid");
    assert_eq!(created["settings"]["dead_letter_topic"], "orders.dead-letter");
    let (code, out) = stele(
        &url,
        &[
            "webhook",
            "create",
            "crm",
            "https://hooks.example.com/in",
            "--topic",
            "orders",
        ],
    );
    assert_eq!(code, 3, "{out}");
    let (code, _) = stele(
        &url,
        &[
            "webhook",
            "create",
            "other",
            "ftp://example.com/",
            "--topic",
            "orders",
        ],
    );
    assert_eq!(code, 2);
    assert_eq!(stele(&url, &["webhook", "pause", "crm"]).0, 0);
    let (code, out) = stele(&url, &["webhook", "list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("crm  paused  circuit=closed"), "{out}");
    assert_eq!(stele(&url, &["webhook", "resume", "crm"]).0, 0);
    let (_, out) = stele(&url, &["webhook", "list", "--json"]);
    let listed: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(listed["state"], "active");
    assert_eq!(listed["circuit"], "closed");
    let (code, out) = stele(&url, &["webhook", "dead-letters", "crm"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "no dead letters for crm");
    assert_eq!(stele(&url, &["webhook", "delete", "crm"]).0, 0);
    assert_eq!(stele(&url, &["webhook", "delete", "crm"]).0, 4);
    assert_eq!(stele(&url, &["webhook", "redrive", "crm"]).0, 4);
    assert_eq!(stele(&url, &["webhook", "list"]).1.trim(), "no webhooks");
    serve.child.kill().expect("kill");
    serve.child.wait().expect("reap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_flight_stay_within_the_configured_limit() {
    // Goal: with more keys than the limit, the dispatcher has exactly the
    // configured number of keys in flight at once, never more.
    // Method: count what the limit promises, the keys whose deliveries the
    // dispatcher has in flight, as it reports them to its observer (a receiver's
    // count of its own handlers would include a handler outliving its client).
    // Every event is appended before the endpoint exists and delivered from the
    // earliest, so all six keys are ready at once when delivery starts: the
    // loop starts as many as the limit lets it, whatever the machine's speed.
    // The first two requests are held until both have been open (the timeout is
    // far longer), so the receiver sees them overlap.
    let dir = tempfile::tempdir().expect("tempdir");
    let observer = Arc::new(RecordingObserver::default());
    let (server, client) = start_observed_server(dir.path(), true, observer.clone()).await;
    let held = std::sync::atomic::AtomicUsize::new(0);
    let receiver = Receiver::start(Box::new(move |_, _| {
        if held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Answer::OkWhenOpen(2)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    client
        .create_topic("wide", &stele::TopicOptions::default())
        .await
        .expect("create topic");
    let keys = ["a", "b", "c", "d", "e", "f"];
    for key in keys {
        append(&client, "wide", key, 0).await;
        append(&client, "wide", key, 1).await;
    }
    let settings = WebhookSettings {
        in_flight_max: 2,
        ..fast_settings()
    };
    let mut request = webhook("narrow", &receiver.url(), "wide", settings);
    request.from_earliest = true;
    client.create_webhook(&request).await.expect("create");
    let records = receiver
        .wait_until("every event", |records| all_succeeded(records, &keys, 2))
        .await;
    assert_eq!(records.len(), 12, "no request timed out and was sent again");
    assert_eq!(
        observer.in_flight_max("narrow"),
        2,
        "two keys in flight at once, no more"
    );
    assert_order_per_key(&records, &[]);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_webhook_journal() {
    // Goal: `stele verify` reads webhooks.journal: clean after a server ran with
    // endpoints, and a flipped byte inside a record is a problem naming the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    for name in ["one", "two"] {
        client
            .create_webhook(&webhook(name, "https://hooks.example.com/", "t", fast_settings()))
            .await
            .expect("create");
    }
    server.shutdown().await.expect("shutdown");
    let report = stele::verify::verify_dir(dir.path()).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let path = dir.path().join(stele::paths::WEBHOOKS_FILE);
    let mut bytes = std::fs::read(&path).expect("read journal");
    // Inside the first record's URL: not the tail, so it is corruption.
    bytes[40] ^= 0xff;
    std::fs::write(&path, bytes).expect("write journal");
    let report = stele::verify::verify_dir(dir.path()).expect("verify");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].path, path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_failing_past_the_age_limit_are_dead_lettered() {
    // Goal: with attempts to spare, a failing event is dead-lettered once its
    // first attempt is older than the age limit, after fewer attempts than allowed.
    // Method: the age is bounded from below by the time the append started (the
    // first attempt cannot be earlier), not by receiver arrival times, which a
    // loaded machine may skew.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let receiver = Receiver::start(Box::new(|_, _| Answer::Status(502))).await;
    let settings = WebhookSettings {
        attempts_max: 1000,
        age_max_ms: 200,
        ..fast_settings()
    };
    client
        .create_webhook(&webhook("aging", &receiver.url(), "old", settings))
        .await
        .expect("create");
    let appended = Instant::now();
    append(&client, "old", "k", 0).await;
    let letters = wait_dead_letters(&client, "aging", "a dead letter", |letters| letters.len() == 1).await;
    let dead_lettered = Instant::now();
    let records = receiver.records();
    assert!(records.len() >= 2, "retried before giving up");
    assert_eq!(letters[0].attempts as usize, records.len());
    assert!(letters[0].attempts < 1000);
    assert_eq!(letters[0].last_status, 502);
    assert!(
        dead_lettered - appended >= Duration::from_millis(200),
        "gave up only past the age limit"
    );
    server.shutdown().await.expect("shutdown");
}

/// The message of a refused `CreateWebhook`, checked to be INVALID_ARGUMENT.
async fn create_refusal(client: &Client, request: &NewWebhook) -> String {
    let error = client
        .create_webhook(request)
        .await
        .expect_err(&format!("{} must be refused", request.url));
    assert_eq!(
        error.code(),
        Some(stele::client::GrpcCode::InvalidArgument),
        "{}: {error}",
        request.url
    );
    assert_eq!(error.kind(), Some(stele::ErrorKind::InvalidArgument), "{error}");
    error.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refuses_denied_address_literals_bad_ports_and_bad_secrets() {
    // Goal: CreateWebhook answers INVALID_ARGUMENT, with a message saying what is
    // wrong, for an address literal in a denied range in every spelling a URL
    // parser reads as that address, for a port that is 0, above 65535 or not a
    // number, and for a secret that is not whsec_ and base64 of 16 to 64 bytes;
    // the server's allow-list opens exactly its networks; nothing refused is
    // stored. Method: a server without an allow-list and one allowing
    // 127.0.0.0/8, each asked to create every case.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), false).await;
    let loopback = [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.0.0.1.:8080/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]/",
    ];
    let others = [
        ("http://[::]/", "unspecified"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("https://10.0.258/", "private"),
        ("http://0xa9fea9fe/latest/meta-data", "link-local"),
        ("http://3232235777/", "private"),
        ("http://[fd00::1]:8443/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://100.64.0.1/", "CGNAT"),
    ];
    for url in loopback {
        let message = create_refusal(&client, &webhook("literal", url, "t", fast_settings())).await;
        assert!(message.contains("loopback"), "{url}: {message}");
        assert!(message.contains("--webhook-allow"), "{url}: {message}");
    }
    for (url, reason) in others {
        let message = create_refusal(&client, &webhook("literal", url, "t", fast_settings())).await;
        assert!(message.contains(reason), "{url}: {message}");
    }
    for (url, wanted) in [
        ("http://hooks.example.com:0/", "port 0"),
        ("http://hooks.example.com:65536/", "out of range"),
        ("http://hooks.example.com:99999/", "out of range"),
        ("http://1.2.3.4.5/", "not an IPv4 address"),
        ("http://256.1.1.1/", "not an IPv4 address"),
    ] {
        let message = create_refusal(&client, &webhook("bad-url", url, "t", fast_settings())).await;
        assert!(message.contains(wanted), "{url}: {message}");
    }
    // A non-numeric port is refused, not replaced by the default.
    create_refusal(
        &client,
        &webhook("bad-url", "http://hooks.example.com:http/", "t", fast_settings()),
    )
    .await;
    use base64::Engine;
    let encoded = |size: usize| base64::engine::general_purpose::STANDARD.encode(vec![1u8; size]);
    for (secret, wanted) in [
        (encoded(24), "does not start with whsec_"),
        (format!("whsec_{}", encoded(15)), "it encodes 15 bytes"),
        (format!("whsec_{}", encoded(65)), "it encodes 65 bytes"),
        ("whsec_not base64!".to_string(), "not base64"),
    ] {
        let mut request = webhook("bad-secret", "https://hooks.example.com/", "t", fast_settings());
        request.secret = Some(secret.clone());
        let message = create_refusal(&client, &request).await;
        assert!(message.contains(wanted), "{secret}: {message}");
        assert!(message.contains("16 to 64 bytes"), "{secret}: {message}");
    }
    assert!(
        client.list_webhooks().await.expect("list").is_empty(),
        "nothing refused was stored"
    );
    // Public literals, in any spelling, names, and edge ports are accepted.
    for (name, url) in [
        ("public", "http://8.8.8.8/"),
        ("public-hex", "http://0x08080808:1/"),
        ("public-v6", "https://[2606:4700::1111]:65535/"),
        ("named", "https://hooks.example.com/"),
    ] {
        let mut request = webhook(name, url, "t", fast_settings());
        request.secret = Some(format!("whsec_{}", encoded(64)));
        client.create_webhook(&request).await.expect(url);
    }
    server.shutdown().await.expect("shutdown");

    // The allow-list opens its networks, in every spelling, and nothing else.
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    for (index, url) in loopback.iter().enumerate() {
        // A mapped IPv4 address is judged as the IPv4 address; ::1 is not in 127/8.
        let allowed = *url != "http://[::1]/";
        let request = webhook(&format!("allowed-{index}"), url, "t", fast_settings());
        if allowed {
            client.create_webhook(&request).await.expect(url);
        } else {
            let message = create_refusal(&client, &request).await;
            assert!(message.contains("loopback"), "{url}: {message}");
        }
    }
    create_refusal(
        &client,
        &webhook("private", "http://10.1.2.3/", "t", fast_settings()),
    )
    .await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keys_sharing_an_idempotency_id_get_distinct_webhook_ids_kept_across_redeliveries() {
    // Goal: the webhook-id of an event with an idempotency id is derived from
    // its topic, key and id, so events of two keys that share an idempotency id
    // get two webhook-ids (a receiver deduplicating by webhook-id keeps both),
    // and each keeps its id when it is retried and when it is redriven from the
    // dead letters. Method: two keys in different partitions (where the engine
    // stores both events) with one idempotency id; the receiver fails the first
    // attempt of one (a retry) and refuses the other with a 410 (a dead letter,
    // then a redrive).
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, client) = start_server(dir.path(), true).await;
    let partitions = 4;
    client
        .create_topic("ids", &stele::TopicOptions::default().partitions(partitions))
        .await
        .expect("create topic");
    let retried = "alpha";
    let redriven = (0..100)
        .map(|index| format!("beta-{index}"))
        .find(|key| {
            stele::partition_for_key(key.as_bytes(), partitions)
                != stele::partition_for_key(retried.as_bytes(), partitions)
        })
        .expect("a key in another partition");
    let receiver = {
        let redriven = redriven.clone();
        Receiver::start(Box::new(move |delivery, earlier| {
            if delivery.key == retried && earlier == 0 {
                Answer::Status(500)
            } else if delivery.key == redriven && earlier == 0 {
                Answer::Status(410)
            } else {
                Answer::Status(200)
            }
        }))
        .await
    };
    client
        .create_webhook(&webhook("ids", &receiver.url(), "ids", fast_settings()))
        .await
        .expect("create webhook");
    let idempotency_id = b"order-created-1";
    let mut acks = Vec::new();
    for key in [retried, redriven.as_str()] {
        let event = Event::new("created", "{}").with_idempotency_id(idempotency_id.as_slice());
        let ack = client
            .append("ids", &AppendRequest::new(key.as_bytes(), vec![event]))
            .await
            .expect("append");
        assert!(!ack.duplicate, "{key}: both events are stored");
        acks.push(ack);
    }
    assert_ne!(acks[0].partition, acks[1].partition);
    let letters = wait_dead_letters(&client, "ids", "the refused event's dead letter", |letters| {
        letters.len() == 1
    })
    .await;
    assert_eq!(letters[0].key, redriven.as_bytes());
    assert_eq!(client.redrive_dead_letters("ids").await.expect("redrive"), 1);
    let records = receiver
        .wait_until("both events delivered", |records| {
            all_succeeded(records, &[retried, redriven.as_str()], 1)
        })
        .await;
    let ids_of = |key: &str| -> Vec<String> {
        records
            .iter()
            .filter(|record| record.key == key)
            .map(|record| record.id.clone())
            .collect()
    };
    let (retried_ids, redriven_ids) = (ids_of(retried), ids_of(&redriven));
    assert_eq!(retried_ids.len(), 2, "a failure, then the retry");
    assert_eq!(redriven_ids.len(), 2, "a refusal, then the redrive");
    assert_eq!(retried_ids[0], retried_ids[1], "a retry keeps its webhook-id");
    assert_eq!(redriven_ids[0], redriven_ids[1], "a redrive keeps its webhook-id");
    assert_eq!(
        letters[0].webhook_id, redriven_ids[0],
        "the dead letter names the id"
    );
    assert_ne!(retried_ids[0], redriven_ids[0], "two keys, two webhook-ids");
    // Derived from the topic, the key and the idempotency id, not the position.
    for (key, ids) in [(retried, &retried_ids), (redriven.as_str(), &redriven_ids)] {
        assert_eq!(
            ids[0],
            signature::message_id("ids", 99, 99, key.as_bytes(), Some(idempotency_id))
        );
    }
    server.shutdown().await.expect("shutdown");
}

/// Validates webhook bodies against docs/webhook-body.schema.json with the
/// `jsonschema` package, and checks that the validator refuses broken bodies.
const SCHEMA_PY: &str = r#"
import base64, json, sys
from jsonschema import Draft202012Validator
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
validator = Draft202012Validator(schema)
bodies = [json.loads(base64.b64decode(body)) for body in json.load(open(sys.argv[2]))]
for body in bodies:
    errors = [error.message for error in validator.iter_errors(body)]
    assert not errors, (body, errors)
    undescribed = set(body) - set(schema["properties"])
    assert not undescribed, f"members missing from the schema: {undescribed}"
broken = []
for body in bodies:
    if body["payload_encoding"] == "base64":
        broken.append(dict(body, payload="not base64!"))
        broken.append(dict(body, payload_encoding="hex"))
        broken.append(dict(body, key={"base64": 7}))
        broken.append({name: value for name, value in body.items() if name != "topic"})
        broken.append(dict(body, offset=-1))
        broken.append(dict(body, headers={"h": 1}))
        break
assert broken, "a base64 body to break"
for body in broken:
    assert not validator.is_valid(body), f"a broken body passed: {body}"
print(f"valid {len(bodies)}, refused {len(broken)}")
"#;

#[test]
fn json_payloads_arrive_byte_for_byte_in_bodies_that_follow_the_published_schema() {
    // Goal: a JSON payload is delivered byte for byte inside the body (a 20-digit
    // number, duplicate keys, odd spacing and surrounding whitespace kept), other
    // payloads as base64 of their exact bytes, and every body, with UTF-8 and
    // binary keys and headers, is valid against docs/webhook-body.schema.json.
    // Method: deliver such events to the scripted receiver, compare the bodies'
    // bytes in Rust, and validate them with the `jsonschema` package from PyPI
    // (which must also refuse deliberately broken bodies).
    let python = python();
    let json_payloads: [&[u8]; 4] = [
        br#"{"id": 12345678901234567890, "id":  "duplicate" ,"amount":-98765432109876543210.50e-3,   "z" : [ 1 , 2 ]}"#,
        b"\n  [1,\t2 ,\r\n 3]\t\n",
        br#""caf\u00e9 and caf\u00c3""#,
        b"123456789012345678901234567890",
    ];
    let binary_payloads: [&[u8]; 3] = [&[0, 159, 255, 1], b"not json", b"{\"unterminated\": "];
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let bodies = runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, client) = start_server(dir.path(), true).await;
        let receiver = Receiver::start(Box::new(|_, _| Answer::Status(200))).await;
        client
            .create_webhook(&webhook("exact", &receiver.url(), "raw", fast_settings()))
            .await
            .expect("create");
        let payloads: Vec<&[u8]> = json_payloads.iter().chain(&binary_payloads).copied().collect();
        for (index, payload) in payloads.iter().enumerate() {
            // One key per event; the last is not UTF-8, and headers of both kinds.
            let key = if index + 1 == payloads.len() {
                vec![0xff, 0x00, b'k']
            } else {
                format!("key-{index}").into_bytes()
            };
            let event = Event::new("raw", payload.to_vec())
                .with_header("trace", "abc")
                .with_header("binary", vec![0xfe, 0x01]);
            client
                .append("raw", &AppendRequest::new(key, vec![event]))
                .await
                .expect("append");
        }
        let records = receiver
            .wait_until("every event", |records| {
                records.iter().filter(|record| record.answer.is_success()).count() >= payloads.len()
            })
            .await;
        server.shutdown().await.expect("shutdown");
        records
            .into_iter()
            .map(|record| record.body)
            .collect::<Vec<Vec<u8>>>()
    });
    let ends_with_payload = |body: &[u8], payload: &[u8]| {
        let mut tail = b"\"payload\":".to_vec();
        tail.extend_from_slice(payload);
        tail.push(b'}');
        body.ends_with(&tail)
    };
    for payload in json_payloads {
        let body = bodies
            .iter()
            .find(|body| ends_with_payload(body, payload))
            .unwrap_or_else(|| {
                panic!(
                    "no body carries {:?} verbatim; bodies: {:?}",
                    String::from_utf8_lossy(payload),
                    bodies
                        .iter()
                        .map(|body| String::from_utf8_lossy(body))
                        .collect::<Vec<_>>()
                )
            });
        let parsed: Value = serde_json::from_slice(body).expect("the body is JSON");
        assert_eq!(parsed["payload_encoding"], "json");
    }
    for payload in binary_payloads {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
        let body = bodies
            .iter()
            .map(|body| serde_json::from_slice::<Value>(body).expect("the body is JSON"))
            .find(|body| body["payload"] == encoded.as_str())
            .unwrap_or_else(|| panic!("no body carries {payload:?} as base64"));
        assert_eq!(body["payload_encoding"], "base64");
        assert_eq!(body["headers"]["trace"], "abc");
        assert_eq!(body["headers"]["binary"]["base64"], "/gE=");
    }
    let work = tempfile::tempdir().expect("tempdir");
    let bodies_path = work.path().join("bodies.json");
    let encoded: Vec<String> = bodies
        .iter()
        .map(|body| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(body)
        })
        .collect();
    std::fs::write(&bodies_path, serde_json::to_vec(&encoded).expect("json")).expect("write bodies");
    let script = work.path().join("schema.py");
    std::fs::write(&script, SCHEMA_PY).expect("write script");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/webhook-body.schema.json");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&schema)
        .arg(&bodies_path)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "schema validation failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("valid {}, refused 6", bodies.len())
    );
}
