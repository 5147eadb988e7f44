//! The Prometheus endpoint end to end: a real server with `/metrics` on port 0
//! is driven over gRPC, then scraped over HTTP, and the exposition is parsed by
//! the reference parser nobody on the project wrote (`prometheus_client.parser`
//! from PyPI, in a virtual environment created once under cargo's target
//! directory, or the interpreter in `STELE_PYTHON`).
//! The shipped Grafana dashboard and Prometheus alert rules are checked to name
//! only metric families the server exposes.
//! Consumer group figures are reported into the server's metrics directly (as
//! a group runner does) and by a real group with a member over gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stele::Sequence;

use stele::client::{
    Client, ConsumeItem, ConsumeStream, GroupOptions, GroupStart, StartPosition, SubscribeOptions,
    SubscriptionItem,
};
use stele::io::FaultyStorage;
use stele::server::group::{GroupFigures, GroupObserver};
use stele::server::{RunningServer, ServerConfig};
use stele::{
    AppendRequest, Event, ExpectedSequence, Log, LogOptions, ManualClock, Offset, PartitionId, ProducerStamp,
    TopicOptions,
};

#[path = "python/venv.rs"]
mod venv;

/// The longest any wait may take before the test fails instead of hanging.
const WAIT_MAX: Duration = Duration::from_secs(30);

const PACKAGES: &[&str] = &["prometheus_client", "pyyaml"];

/// The Python interpreter of a virtual environment with the parser and PyYAML,
/// created on first use.
fn python() -> PathBuf {
    // Tests of this file run on parallel threads; one of them creates the venv.
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| venv::python("metrics-venv", PACKAGES))
        .clone()
}

/// A parsed exposition.
#[derive(Debug)]
struct Scrape {
    /// Family names as the parser reports them (counters without `_total`) and their types.
    families: BTreeMap<String, String>,
    /// (sample name, labels, value).
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of the one sample named `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(sample, sample_labels, _)| sample == name && *sample_labels == wanted)
            .map(|(_, _, value)| *value)
    }

    /// Whether `name` (as written in a query) names an exposed family: itself,
    /// or a counter's `_total` or a histogram's `_bucket`, `_sum`, `_count` of one.
    fn names_family(&self, name: &str) -> bool {
        let mut candidates = vec![name];
        for suffix in ["_total", "_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                candidates.push(base);
            }
        }
        candidates
            .iter()
            .any(|candidate| self.families.contains_key(*candidate))
    }
}

/// Parses `text` with the Python reference parser.
fn parse(text: &str) -> Scrape {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the parser runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition");
    let output = child.wait_with_output().expect("the parser finishes");
    assert!(
        output.status.success(),
        "the parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("parser output is JSON");
    let families = json["families"]
        .as_object()
        .expect("families")
        .iter()
        .map(|(name, kind)| (name.clone(), kind.as_str().expect("type").to_string()))
        .collect();
    let samples = json["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|sample| {
            let labels = sample[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().expect("label value").to_string()))
                .collect();
            let value = match &sample[2] {
                serde_json::Value::String(text) if text == "+Inf" => f64::INFINITY,
                value => value.as_f64().expect("sample value"),
            };
            (sample[0].as_str().expect("name").to_string(), labels, value)
        })
        .collect();
    Scrape { families, samples }
}

/// GET `path` over HTTP/1.1; returns (status line, content type, body).
fn http_get(address: SocketAddr, path: &str) -> (String, String, String) {
    http_get_with(address, path, "")
}

/// As [`http_get`] with `headers` (each line ending in CRLF) in the request.
fn http_get_with(address: SocketAddr, path: &str, headers: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream.set_read_timeout(Some(WAIT_MAX)).expect("read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{headers}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response with headers");
    let status = head.lines().next().unwrap_or_default().to_string();
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Scrapes `/metrics` on the blocking pool (the test's runtime keeps serving).
async fn scrape_metrics(address: SocketAddr) -> Scrape {
    tokio::task::spawn_blocking(move || {
        let (status, content_type, body) = http_get(address, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        parse(&body)
    })
    .await
    .expect("scrape task")
}

fn event(payload: &str) -> Event {
    Event::new("noted", payload.as_bytes().to_vec())
}

/// Bytes the server counts for an event: type, payload, headers, idempotency id.
fn event_bytes(event: &Event) -> usize {
    event.event_type.len() + event.payload.len()
}

async fn start(log: Arc<Log>, dir: &Path, metrics: bool) -> RunningServer {
    let mut config = ServerConfig::new(dir);
    config.listen = "127.0.0.1:0".parse().expect("address");
    if metrics {
        config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    }
    RunningServer::start_with_log(log, config)
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn scraped_metrics_count_what_the_server_did() {
    // Goal: every append result, the latency and group commit histograms, the
    // per-partition and per-cursor gauges, open subscriptions and the webhook
    // families are exposed with the values of what was done, in a format the
    // reference parser accepts. Method: drive a real server over gRPC through
    // each result (a full disk, injected, gives a server-side error), scrape,
    // parse with Python's prometheus_client, compare with the server's own answers.
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FaultyStorage::new();
    let log = Arc::new(
        Log::open(
            dir.path(),
            LogOptions::default().storage(Arc::new(storage.clone())),
        )
        .expect("open log"),
    );
    let server = start(log, dir.path(), true).await;
    let address = server.metrics_addr().expect("metrics are on");
    let client = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    client
        .create_topic("orders", &TopicOptions::default().partitions(1))
        .await
        .expect("create topic");

    let mut expected_bytes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut counted = |result: &'static str, request: &AppendRequest| {
        *expected_bytes.entry(result).or_default() += request.events.iter().map(event_bytes).sum::<usize>();
    };
    // ok: two requests, three events.
    let first = AppendRequest::new("k1", vec![event("a"), event("bb")]).expect(ExpectedSequence::NoEvents);
    client.append("orders", &first).await.expect("append");
    counted("ok", &first);
    let second = AppendRequest::new("k2", vec![event("ccc")]);
    client.append("orders", &second).await.expect("append");
    counted("ok", &second);
    // sequence_conflict: k1 has events.
    let conflict = AppendRequest::new("k1", vec![event("dddd")]).expect(ExpectedSequence::NoEvents);
    client.append("orders", &conflict).await.expect_err("conflict");
    counted("sequence_conflict", &conflict);
    // A producer: ok, then a duplicate, then fenced by a reopen, and a gap (rejected).
    let (producer, epoch) = client.open_producer("orders", "writer").await.expect("open");
    let stamp = |sequence| ProducerStamp {
        producer,
        epoch,
        sequence,
    };
    let stamped = AppendRequest::new("k3", vec![event("e")]).stamped(stamp(Sequence(0)));
    client.append("orders", &stamped).await.expect("append");
    counted("ok", &stamped);
    let repeat = client.append("orders", &stamped).await.expect("repeat");
    assert!(repeat.duplicate);
    counted("duplicate", &stamped);
    let gap = AppendRequest::new("k3", vec![event("ff")]).stamped(stamp(Sequence(7)));
    client.append("orders", &gap).await.expect_err("gap");
    counted("rejected", &gap);
    client.open_producer("orders", "writer").await.expect("reopen");
    let fenced = AppendRequest::new("k3", vec![event("ggg")]).stamped(stamp(Sequence(1)));
    client.append("orders", &fenced).await.expect_err("fenced");
    counted("fenced", &fenced);
    // error: the disk is full.
    storage.set_disk_full(true);
    let full = AppendRequest::new("k4", vec![event("hhhhh")]);
    client.append("orders", &full).await.expect_err("disk full");
    counted("error", &full);
    storage.set_disk_full(false);
    let description = client.describe_topic("orders").await.expect("describe");
    let high_watermark = description.partitions[0].high_watermark;
    assert_eq!(high_watermark, Offset(4));

    client
        .commit_cursor("orders", "billing", &[(PartitionId(0), Offset(1))], false)
        .await
        .expect("commit");
    let cursor = client.get_cursor("orders", "billing").await.expect("cursor");
    let mut subscription = client
        .subscribe(
            "orders",
            &SubscribeOptions {
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    loop {
        let item = tokio::time::timeout(WAIT_MAX, subscription.next())
            .await
            .expect("an item in time")
            .expect("stream open")
            .expect("item");
        if matches!(item, SubscriptionItem::CaughtUp { .. }) {
            break;
        }
    }
    let webhook = server.metrics().webhook();
    webhook.attempt("billing-hook");
    webhook.attempt("billing-hook");
    webhook.outcome("billing-hook", "retry", "5xx");
    webhook.outcome("billing-hook", "success", "2xx");
    webhook.retry_delay("billing-hook", Duration::from_millis(500));
    webhook.delivered("billing-hook", Duration::from_millis(40));
    webhook.lag("billing-hook", 3);
    webhook.circuit("billing-hook", 1);
    webhook.dead_lettered("billing-hook");

    let scrape = scrape_metrics(address).await;
    let orders = |result| [("topic", "orders"), ("result", result)];
    for (result, requests, events) in [
        ("ok", 3.0, 4.0),
        ("duplicate", 1.0, 1.0),
        ("sequence_conflict", 1.0, 1.0),
        ("fenced", 1.0, 1.0),
        ("rejected", 1.0, 1.0),
        ("error", 1.0, 1.0),
    ] {
        assert_eq!(
            scrape.value("stele_append_requests_total", &orders(result)),
            Some(requests),
            "requests {result}"
        );
        assert_eq!(
            scrape.value("stele_append_events_total", &orders(result)),
            Some(events),
            "events {result}"
        );
        assert_eq!(
            scrape.value("stele_append_bytes_total", &orders(result)),
            Some(expected_bytes[result] as f64),
            "bytes {result}"
        );
    }
    let topic = [("topic", "orders")];
    assert_eq!(
        scrape.value("stele_append_duration_seconds_count", &topic),
        Some(8.0)
    );
    assert!(
        scrape
            .value("stele_append_duration_seconds_sum", &topic)
            .expect("sum")
            > 0.0
    );
    assert!(
        scrape
            .value("stele_fsync_duration_seconds_count", &topic)
            .expect("fsyncs")
            > 0.0
    );
    // Every acknowledged append went through a group commit (durability always).
    let group_appends = scrape
        .value("stele_group_commit_appends_sum", &topic)
        .expect("group commits");
    assert!(
        group_appends >= 3.0,
        "appends answered by group commits: {group_appends}"
    );
    assert_eq!(scrape.value("stele_group_commit_events_sum", &topic), Some(4.0));
    let partition = [("topic", "orders"), ("partition", "0")];
    assert_eq!(
        scrape.value("stele_partition_high_watermark", &partition),
        Some(high_watermark.0 as f64)
    );
    assert_eq!(
        scrape.value("stele_partition_earliest_offset", &partition),
        Some(description.partitions[0].earliest.0 as f64)
    );
    assert!(
        scrape
            .value("stele_partition_size_bytes", &partition)
            .expect("size")
            > 0.0
    );
    assert_eq!(scrape.value("stele_partition_segments", &partition), Some(1.0));
    let billing = [("topic", "orders"), ("cursor", "billing"), ("partition", "0")];
    assert_eq!(scrape.value("stele_cursor_committed_offset", &billing), Some(1.0));
    assert_eq!(
        scrape.value("stele_cursor_lag_events", &billing),
        Some(cursor[0].lag as f64)
    );
    assert_eq!(cursor[0].lag, 3);
    assert_eq!(scrape.value("stele_subscriptions_active", &topic), Some(1.0));
    assert!(scrape.value("stele_disk_capacity_bytes", &[]).expect("capacity") > 0.0);
    assert!(scrape.value("stele_disk_available_bytes", &[]).is_some());
    let hook = [("endpoint", "billing-hook")];
    assert_eq!(scrape.value("stele_webhook_attempts_total", &hook), Some(2.0));
    assert_eq!(
        scrape.value(
            "stele_webhook_deliveries_total",
            &[
                ("endpoint", "billing-hook"),
                ("outcome", "retry"),
                ("status_class", "5xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("stele_webhook_retry_delay_seconds_count", &hook),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("stele_webhook_delivery_latency_seconds_count", &hook),
        Some(1.0)
    );
    assert_eq!(scrape.value("stele_webhook_lag_events", &hook), Some(3.0));
    assert_eq!(scrape.value("stele_webhook_circuit_state", &hook), Some(1.0));
    assert_eq!(
        scrape.value("stele_webhook_dead_lettered_total", &hook),
        Some(1.0)
    );
    assert_eq!(
        scrape.families.get("stele_append_requests").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        scrape
            .families
            .get("stele_append_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );

    // The subscription ends when the client drops it; the gauge follows.
    drop(subscription);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let scrape = scrape_metrics(address).await;
        if scrape.value("stele_subscriptions_active", &topic) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscription gauge never went back to 0"
        );
        tokio::task::yield_now().await;
    }
    // A deleted endpoint and a deleted topic leave the exposition.
    webhook.remove("billing-hook");
    client.delete_topic("orders").await.expect("delete topic");
    let scrape = scrape_metrics(address).await;
    assert!(
        !scrape.samples.iter().any(|(_, labels, _)| labels
            .get("endpoint")
            .is_some_and(|endpoint| endpoint == "billing-hook")),
        "the removed endpoint is still exposed"
    );
    assert_eq!(scrape.value("stele_partition_high_watermark", &partition), None);
    assert_eq!(scrape.value("stele_append_requests_total", &orders("ok")), None);
    // A topic made again under the same name counts from zero, into series
    // that are exposed (the server keeps each topic's series handles).
    client
        .create_topic("orders", &TopicOptions::default().partitions(1))
        .await
        .expect("create the topic again");
    client.append("orders", &second).await.expect("append");
    let scrape = scrape_metrics(address).await;
    assert_eq!(
        scrape.value("stele_append_requests_total", &orders("ok")),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("stele_append_duration_seconds_count", &[("topic", "orders")]),
        Some(1.0)
    );
    server.shutdown().await.expect("shutdown");
    // Shutdown stops the endpoint.
    assert!(
        TcpStream::connect(address).is_err(),
        "the endpoint outlived the server"
    );
}

/// A group's figures with these members and counts (redelivered, parked, acked).
fn group_figures(members: &[(&str, u64)], (redelivered, parked, acked): (u64, u64, u64)) -> GroupFigures {
    GroupFigures {
        topic: "orders".to_string(),
        lag: 40,
        floors: vec![(100, 3)],
        in_flight: members.iter().map(|(_, held)| held).sum(),
        members: members
            .iter()
            .map(|(member, held)| (member.to_string(), *held))
            .collect(),
        redelivered,
        parked,
        acked,
        blocked_keys: 2,
        oldest_unsettled_age_ms: 61_500,
    }
}

/// Every sample with a `group` label equal to `group`.
fn group_samples<'a>(scrape: &'a Scrape, group: &str) -> Vec<&'a (String, BTreeMap<String, String>, f64)> {
    scrape
        .samples
        .iter()
        .filter(|(_, labels, _)| labels.get("group").is_some_and(|value| value == group))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn group_figures_are_exposed_with_monotonic_counters_and_live_members() {
    // Goal: what a group runner reports is exposed under the documented names,
    // types and labels; the counters never fall although the runner's counts
    // restart at 0 with the runner; members that left lose their series; a
    // deleted group leaves the exposition whole. Method: report into a real
    // server's metrics as a runner does, scrape over HTTP and parse with the
    // reference parser after each step (a member id with quotes and a
    // backslash must come back intact through the escaping).
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("open"));
    let server = start(log, dir.path(), true).await;
    let address = server.metrics_addr().expect("metrics on");
    let metrics = Arc::clone(server.metrics());
    let odd = r#"web "7" \ 1234"#;
    let group = |name| [("group", name)];

    metrics.report("billing", &group_figures(&[("web-1", 2), (odd, 3)], (1, 0, 10)));
    metrics.report("audit", &group_figures(&[("a-1", 1)], (0, 0, 4)));
    metrics.report("billing", &group_figures(&[("web-1", 2), (odd, 3)], (4, 1, 25)));
    let scrape = scrape_metrics(address).await;
    for (family, kind) in [
        ("stele_group_lag_events", "gauge"),
        ("stele_group_in_flight", "gauge"),
        ("stele_group_member_in_flight", "gauge"),
        ("stele_group_members", "gauge"),
        ("stele_group_redeliveries", "counter"),
        ("stele_group_parked", "counter"),
        ("stele_group_acked", "counter"),
        ("stele_group_blocked_keys", "gauge"),
        ("stele_group_oldest_unsettled_age_seconds", "gauge"),
    ] {
        assert_eq!(
            scrape.families.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(
        scrape.value(
            "stele_group_lag_events",
            &[("group", "billing"), ("topic", "orders")]
        ),
        Some(40.0)
    );
    assert_eq!(
        scrape.value("stele_group_in_flight", &group("billing")),
        Some(5.0)
    );
    assert_eq!(scrape.value("stele_group_members", &group("billing")), Some(2.0));
    assert_eq!(
        scrape.value(
            "stele_group_member_in_flight",
            &[("group", "billing"), ("member", odd)]
        ),
        Some(3.0)
    );
    assert_eq!(
        scrape.value("stele_group_redeliveries_total", &group("billing")),
        Some(4.0)
    );
    assert_eq!(
        scrape.value("stele_group_parked_total", &group("billing")),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("stele_group_acked_total", &group("billing")),
        Some(25.0)
    );
    assert_eq!(
        scrape.value("stele_group_blocked_keys", &group("billing")),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("stele_group_oldest_unsettled_age_seconds", &group("billing")),
        Some(61.5)
    );

    // The runner restarts: its counts start again from 0 and have grown a
    // little by its first report; the odd member left.
    metrics.report("billing", &group_figures(&[("web-1", 1)], (0, 0, 3)));
    metrics.report(
        "billing",
        &group_figures(&[("web-1", 0), ("web-2", 4)], (2, 1, 7)),
    );
    let scrape = scrape_metrics(address).await;
    assert_eq!(
        scrape.value("stele_group_redeliveries_total", &group("billing")),
        Some(6.0),
        "4, then 0 after the restart, then 2 more"
    );
    assert_eq!(
        scrape.value("stele_group_parked_total", &group("billing")),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("stele_group_acked_total", &group("billing")),
        Some(32.0),
        "25, then 3 after the restart, then 4 more"
    );
    let members: BTreeSet<&str> = scrape
        .samples
        .iter()
        .filter(|(name, labels, _)| {
            name == "stele_group_member_in_flight"
                && labels.get("group").map(String::as_str) == Some("billing")
        })
        .map(|(_, labels, _)| labels["member"].as_str())
        .collect();
    assert_eq!(members, BTreeSet::from(["web-1", "web-2"]));
    assert_eq!(scrape.value("stele_group_members", &group("billing")), Some(2.0));
    assert_eq!(
        scrape.value(
            "stele_group_member_in_flight",
            &[("group", "billing"), ("member", "web-1")]
        ),
        Some(0.0)
    );

    // Deleting billing removes every series of it, and only of it.
    metrics.remove("billing");
    let scrape = scrape_metrics(address).await;
    assert!(
        group_samples(&scrape, "billing").is_empty(),
        "{:?}",
        group_samples(&scrape, "billing")
    );
    assert_eq!(
        scrape.value("stele_group_acked_total", &group("audit")),
        Some(4.0)
    );
    assert_eq!(
        scrape.value(
            "stele_group_member_in_flight",
            &[("group", "audit"), ("member", "a-1")]
        ),
        Some(1.0)
    );
    assert!(
        scrape.families.contains_key("stele_group_member_in_flight"),
        "families stay declared"
    );
    server.shutdown().await.expect("shutdown");
}

/// The next delivery of `stream`, skipping other messages.
async fn next_delivery(stream: &mut ConsumeStream) -> stele::client::Delivery {
    loop {
        let item = tokio::time::timeout(WAIT_MAX, stream.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("message");
        if let ConsumeItem::Delivery(delivery) = item {
            return delivery;
        }
    }
}

/// Scrapes until `done` holds for a scrape, which it returns.
async fn scrape_until(address: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let scrape = scrape_metrics(address).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_group_reports_its_lag_deliveries_and_members() {
    // Goal: the group runner's reports reach the exposition: lag, deliveries
    // held per member, members and acks; a member that leaves loses its series;
    // deleting the group removes the rest. Method: a real server, three events
    // of three keys, a group from the earliest event and one member (with an
    // instance id that needs escaping) that holds all three, then acks them,
    // then leaves; scrape until each report shows.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("open"));
    let server = start(log, dir.path(), true).await;
    let address = server.metrics_addr().expect("metrics on");
    let client = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    client
        .create_topic("orders", &TopicOptions::default().partitions(1))
        .await
        .expect("create topic");
    for key in ["k1", "k2", "k3"] {
        client
            .append("orders", &AppendRequest::new(key, vec![event(key)]))
            .await
            .expect("append");
    }
    client
        .create_group(
            "billing",
            "orders",
            &GroupOptions {
                start: GroupStart::Earliest,
                ..GroupOptions::default()
            },
        )
        .await
        .expect("create group");
    let member = r#"host "a" \ 1"#;
    let mut stream = client.consume("billing", member, 3).await.expect("join");
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(next_delivery(&mut stream).await.delivery_id);
    }
    let billing = [("group", "billing")];
    let held = [("group", "billing"), ("member", member)];
    let scrape = scrape_until(address, "the member holds 3 deliveries", |scrape| {
        scrape.value("stele_group_member_in_flight", &held) == Some(3.0)
    })
    .await;
    assert_eq!(scrape.value("stele_group_members", &billing), Some(1.0));
    assert_eq!(scrape.value("stele_group_in_flight", &billing), Some(3.0));
    assert_eq!(
        scrape.value(
            "stele_group_lag_events",
            &[("group", "billing"), ("topic", "orders")]
        ),
        Some(3.0)
    );
    assert_eq!(scrape.value("stele_group_acked_total", &billing), Some(0.0));
    assert_eq!(scrape.value("stele_group_blocked_keys", &billing), Some(0.0));
    assert!(
        scrape
            .value("stele_group_oldest_unsettled_age_seconds", &billing)
            .is_some()
    );

    stream.ack(ids).await.expect("ack");
    let scrape = scrape_until(address, "three acks and no lag", |scrape| {
        scrape.value("stele_group_acked_total", &billing) == Some(3.0)
            && scrape.value(
                "stele_group_lag_events",
                &[("group", "billing"), ("topic", "orders")],
            ) == Some(0.0)
    })
    .await;
    assert_eq!(scrape.value("stele_group_member_in_flight", &held), Some(0.0));
    assert_eq!(
        scrape.value("stele_group_oldest_unsettled_age_seconds", &billing),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("stele_group_redeliveries_total", &billing),
        Some(0.0)
    );

    stream.close().await.expect("leave");
    let scrape = scrape_until(address, "the member's series gone", |scrape| {
        scrape.value("stele_group_members", &billing) == Some(0.0)
    })
    .await;
    assert_eq!(scrape.value("stele_group_member_in_flight", &held), None);
    client.delete_group("billing").await.expect("delete group");
    let scrape = scrape_metrics(address).await;
    assert!(
        group_samples(&scrape, "billing").is_empty(),
        "{:?}",
        group_samples(&scrape, "billing")
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_to_unknown_topics_are_counted_without_their_names() {
    // Goal: a client cannot create label values by naming topics that do not
    // exist. Method: with auto-create off, append to a made-up topic; the
    // request is counted as rejected under the `(unknown)` topic.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ServerConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.metrics_listen = Some("127.0.0.1:0".parse().expect("address"));
    config.auto_create_topics = false;
    let server = RunningServer::start(config).await.expect("server starts");
    let client = Client::connect(format!("http://{}", server.local_addr()))
        .await
        .expect("connect");
    client
        .append("made-up-topic", &AppendRequest::new("k", vec![event("x")]))
        .await
        .expect_err("no such topic");
    let scrape = scrape_metrics(server.metrics_addr().expect("metrics on")).await;
    assert_eq!(
        scrape.value(
            "stele_append_requests_total",
            &[("topic", "(unknown)"), ("result", "rejected")]
        ),
        Some(1.0)
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|(_, labels, _)| labels.values().any(|value| value == "made-up-topic")),
        "a made-up topic name became a label"
    );
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_checkpoint_found_at_open_is_counted_as_corruption() {
    // Goal: the corruption alert has a signal when open repairs damage. Method:
    // write a topic, stop, overwrite its checkpoint with garbage, restart: the
    // checkpoint is rebuilt from the log and `stele_corruption_detected_total` is 1.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("open"));
        let topic = log
            .create_topic("orders", TopicOptions::default().partitions(1))
            .expect("create");
        topic
            .append_request(AppendRequest::new("k", vec![event("x")]))
            .expect("append");
        log.close().expect("close");
    }
    let checkpoint = dir.path().join("topics/orders/p00000/checkpoint");
    assert!(checkpoint.exists(), "no checkpoint at {}", checkpoint.display());
    std::fs::write(&checkpoint, b"not a checkpoint").expect("damage the checkpoint");
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("reopen"));
    let server = start(log, dir.path(), true).await;
    let scrape = scrape_metrics(server.metrics_addr().expect("metrics on")).await;
    assert_eq!(
        scrape.value("stele_corruption_detected_total", &[("topic", "orders")]),
        Some(1.0)
    );
    server.shutdown().await.expect("shutdown");
}

#[test]
fn engine_metrics_count_segment_rolls_and_retention_deletions() {
    // Goal: the engine records segment rolls and retention deletions (segments
    // and bytes) into the log's metrics. Method: a manual clock makes segments
    // roll by age and then expire; the log's families, encoded and parsed by the
    // reference parser, equal the changes the topic itself reports.
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let log = Log::open(dir.path(), LogOptions::default().clock(clock.clone())).expect("open");
    let mut options = TopicOptions::default().partitions(1);
    options.segment_age_ms_max = Some(1_000);
    options.retention_age_ms = Some(5_000);
    let topic = log.create_topic("t", options).expect("create");
    for payload in ["a", "b", "c"] {
        topic
            .append_request(AppendRequest::new("k", vec![event(payload)]))
            .expect("append");
        clock.advance(2_000);
    }
    let before = topic.partition_infos()[0].clone();
    assert_eq!(before.segments_count, 3, "two rolls");
    clock.advance(10_000);
    topic.enforce_retention().expect("retention");
    let after = topic.partition_infos()[0].clone();
    assert_eq!(after.segments_count, 1, "both sealed segments expired");

    let mut registry = prometheus_client::registry::Registry::default();
    log.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).expect("encode");
    let scrape = parse(&text);
    let labels = [("topic", "t")];
    assert_eq!(scrape.value("stele_segment_rolls_total", &labels), Some(2.0));
    assert_eq!(
        scrape.value("stele_retention_deleted_segments_total", &labels),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("stele_retention_deleted_bytes_total", &labels),
        Some((before.size_bytes - after.size_bytes) as f64)
    );
    assert_eq!(
        scrape.value("stele_group_commit_appends_count", &labels),
        Some(3.0)
    );
    log.close().expect("close");
}

/// The process's listening TCP sockets: socket inodes of its open files that
/// `/proc/net/tcp` and `/proc/net/tcp6` list in state LISTEN (0A).
fn listening_sockets_count(pid: u32) -> usize {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the process's files")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().to_string();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.get(3) == Some(&"0A")).then(|| fields.get(9).map(|inode| inode.to_string()))?
                })
                .collect::<Vec<_>>()
        })
        .filter(|inode| inodes.contains(inode))
        .count()
}

/// Runs `stele serve` with `extra` flags until it announces itself; returns the
/// child and its stderr lines so far.
fn serve(data_dir: &Path, extra: &[&str]) -> (std::process::Child, Vec<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stele"));
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("stele serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = receiver
            .recv_timeout(WAIT_MAX)
            .expect("stele serve announces itself in time");
        let listening = line.starts_with("stele: listening on");
        lines.push(line);
        if listening {
            break;
        }
    }
    // The metrics line, when there is one, comes after the listening line
    // (log lines may come between).
    if extra.contains(&"--metrics-listen") || extra.contains(&"--config") {
        loop {
            let line = receiver.recv_timeout(WAIT_MAX).expect("the metrics line");
            let metrics = line.starts_with("stele: metrics on ");
            lines.push(line);
            if metrics {
                break;
            }
        }
    }
    (child, lines)
}

#[test]
fn the_metrics_listener_exists_only_when_asked_for() {
    // Goal: metrics are off by default (no second listener), and
    // `--metrics-listen` (or the TOML key) serves them from the real command.
    // Method: run `stele serve` each way, count the process's listening sockets
    // from /proc, and scrape the announced address.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut off, lines) = serve(dir.path(), &[]);
    assert_eq!(listening_sockets_count(off.id()), 1, "{lines:?}");
    assert!(
        !lines
            .iter()
            .any(|line| line.starts_with("stele: metrics") || line.contains("serving metrics")),
        "{lines:?}"
    );
    off.kill().expect("kill");
    off.wait().expect("wait");

    let (mut on, lines) = serve(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    assert_eq!(listening_sockets_count(on.id()), 2, "{lines:?}");
    let url = lines
        .iter()
        .find_map(|line| line.strip_prefix("stele: metrics on http://"))
        .expect("the metrics address is printed");
    let address: SocketAddr = url
        .strip_suffix("/metrics")
        .expect("the path")
        .parse()
        .expect("an address");
    let (status, _, body) = http_get(address, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(parse(&body).families.contains_key("stele_append_requests"));
    let (status, _, _) = http_get(address, "/elsewhere");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    on.kill().expect("kill");
    on.wait().expect("wait");

    // The TOML key turns it on as well.
    let config = dir.path().join("stele.toml");
    std::fs::write(&config, "metrics-listen = \"127.0.0.1:0\"\n").expect("write the configuration");
    let config = config.to_str().expect("a UTF-8 path");
    let (mut from_file, lines) = serve(dir.path(), &["--config", config]);
    assert_eq!(listening_sockets_count(from_file.id()), 2, "{lines:?}");
    from_file.kill().expect("kill");
    from_file.wait().expect("wait");
}

/// Every `stele_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["stele_", "process_"] {
        let mut index = 0;
        while let Some(found) = text[index..].find(prefix) {
            let start = index + found;
            let preceded =
                start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = start
                + text[start..]
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(text.len() - start);
            if !preceded {
                names.insert(text[start..end].to_string());
            }
            index = end;
        }
    }
    names
}

/// Every query in a Grafana dashboard: the `expr` of panel targets and the
/// `definition` of template variables.
fn dashboard_expressions(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                if (key == "expr" || key == "definition")
                    && let Some(text) = value.as_str()
                {
                    found.push(text.to_string());
                }
                dashboard_expressions(value, found);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                dashboard_expressions(item, found);
            }
        }
        _ => {}
    }
}

/// The alerting rules of a rule file, read with PyYAML: (alert, expr, severity, runbook_url).
fn alert_rules(path: &Path) -> Vec<(String, String, String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_alerts.py");
    let output = Command::new(python())
        .arg(&script)
        .arg(path)
        .output()
        .expect("the rule reader runs");
    assert!(
        output.status.success(),
        "the rule file does not parse: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rules: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON rules");
    rules
        .as_array()
        .expect("a list of rules")
        .iter()
        .map(|rule| {
            let field = |name: &str| rule[name].as_str().unwrap_or_default().to_string();
            (
                field("alert"),
                field("expr"),
                field("severity"),
                field("runbook_url"),
            )
        })
        .collect()
}

/// Whether a name written in a query (`_total`, `_bucket`, `_sum`, `_count`
/// included) belongs to `family`.
/// How every alert's `runbook_url` starts.
const RUNBOOK_BASE_TEMPLATE: &str =
    r#"{{ or $externalLabels.stele_runbooks "https://github.com/stele-log/stele/blob/main/docs/runbooks" }}"#;

fn belongs_to(name: &str, family: &str) -> bool {
    name == family
        || ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(family))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_alert_rules_name_only_exposed_metrics() {
    // Goal: the shipped dashboard and alerts keep working as metrics change.
    // Method: parse the dashboard as JSON and the rules with PyYAML, extract
    // every `stele_*` name from their queries and check each against the
    // families a fresh server exposes (every family is declared before it has
    // samples); every family has a dashboard panel; every alert has a severity
    // and a runbook that exists; the alerts the product asks for exist.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/stele.json")).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut expressions = Vec::new();
    dashboard_expressions(&dashboard, &mut expressions);
    assert!(expressions.len() >= 20, "only {} queries", expressions.len());
    let rules = alert_rules(&root.join("deploy/prometheus/alerts.yml"));

    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(Log::open(dir.path(), LogOptions::default()).expect("open"));
    let server = start(log, dir.path(), true).await;
    let scrape = scrape_metrics(server.metrics_addr().expect("metrics on")).await;
    server.shutdown().await.expect("shutdown");

    for (source, text) in expressions
        .iter()
        .map(|text| ("the dashboard", text))
        .chain(rules.iter().map(|(_, expr, _, _)| ("the alerts", expr)))
    {
        let names = metric_names(text);
        assert!(
            !names.is_empty() || text.contains("up{"),
            "{source} has a query without a Stele metric: {text}"
        );
        for name in names {
            assert!(
                scrape.names_family(&name),
                "{source} names {name}, which the server does not expose, in: {text}"
            );
        }
    }
    let used: BTreeSet<String> = expressions.iter().flat_map(|text| metric_names(text)).collect();
    for family in scrape
        .families
        .keys()
        .filter(|family| family.starts_with("stele_"))
    {
        assert!(
            used.iter().any(|name| belongs_to(name, family)),
            "the dashboard has no panel for {family}"
        );
    }
    for (alert, _, severity, runbook) in &rules {
        assert!(
            severity == "warning" || severity == "critical",
            "{alert} has severity {severity:?}"
        );
        // An absolute URL: a deployment's own base (the external label
        // stele_runbooks), else the repository's docs/runbooks/.
        let file = runbook
            .strip_prefix(RUNBOOK_BASE_TEMPLATE)
            .and_then(|rest| rest.strip_prefix('/'))
            .unwrap_or_else(|| panic!("{alert} links {runbook:?}, not {RUNBOOK_BASE_TEMPLATE}/FILE"));
        assert!(
            root.join("docs/runbooks").join(file).exists(),
            "{alert} links the missing runbook {runbook}"
        );
    }
    let names: BTreeSet<&str> = rules.iter().map(|(alert, ..)| alert.as_str()).collect();
    for wanted in [
        "SteleConsumerLagGrowing",
        "SteleWebhookEndpointFailing",
        "SteleDiskFilling",
        "SteleFsyncSlow",
        "SteleCorruptionDetected",
        "StelePartitionQuarantined",
        "SteleGroupStuck",
        "SteleGroupBlockedKeys",
    ] {
        assert!(names.contains(wanted), "no alert {wanted}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_required_auth_scraping_needs_a_token_with_the_metrics_grant() {
    // Goal: `/metrics` follows `--auth required`: 401 without a credential,
    // 403 without `metrics:*`, 200 with it.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, admin) = stele::server::auth::token::generate().expect("random");
    let mut config = ServerConfig::new(dir.path());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.auth = stele::server::auth::AuthConfig {
        mode: stele::server::auth::AuthMode::Required,
        bootstrap_token: Some(admin.clone()),
        ..stele::server::auth::AuthConfig::default()
    };
    let server = RunningServer::start(config).await.expect("start");
    let address = server.metrics_addr().expect("metrics listener");
    let client = stele::client::Client::connect_with(
        stele::client::ServerUrl::new(format!("http://{}", server.local_addr())),
        stele::client::ConnectOptions::default().with_token(admin.clone()),
    )
    .await
    .expect("connect");
    let (_, reader) = client
        .create_token("reader", &["read:*".to_string()], None)
        .await
        .expect("token");
    let (_, scraper) = client
        .create_token("prometheus", &["metrics:*".to_string()], None)
        .await
        .expect("token");
    let answers = tokio::task::spawn_blocking(move || {
        [None, Some(reader), Some(scraper), Some(admin)]
            .into_iter()
            .map(|token| {
                let header = token.map_or(String::new(), |token| {
                    format!("Authorization: Bearer {token}\r\n")
                });
                http_get_with(address, "/metrics", &header).0
            })
            .collect::<Vec<String>>()
    })
    .await
    .expect("scrapes");
    assert_eq!(
        answers,
        vec![
            "HTTP/1.1 401 Unauthorized",
            "HTTP/1.1 403 Forbidden",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK"
        ]
    );
    server.shutdown().await.expect("shutdown");
}
