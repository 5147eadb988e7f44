//! The clients in other languages, `examples/python/` (grpcio) and
//! `examples/node/` (`@grpc/grpc-js`), run as they are against a real
//! `stele serve` child on port 0, and `docs/producer-protocol.md`'s key routing
//! vectors are checked against the server's own function and against each
//! example's.
//!
//! Method: each example prints JSON lines; the tests run every script with the
//! Python environment and the npm packages the interop tests install
//! (`tests/python/venv.rs`, `tests/node/modules.rs`: installed on first use,
//! or taken from `STELE_PYTHON` and `STELE_NODE_MODULES`; a missing `python3`,
//! `npm` or `node` fails the test, as it does the interop tests), parse the
//! lines, and check them against what the server stored, read back with the
//! Rust client: the producer's retries after a lost reply answered as
//! duplicates at the original positions and every event stored exactly once,
//! fencing decoded from the status details, the consumer's cursor across a
//! restart (nothing lost, nothing delivered twice), and a subscription's
//! catch-up then live tail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stele::client::Client;
use stele::{AppendAck, AppendRequest, Event, PartitionId, RecordedEvent};

#[path = "common/serve.rs"]
mod serve;
use serve::spawn_serve;

#[path = "python/venv.rs"]
mod venv;

#[path = "node/modules.rs"]
mod modules;

/// The longest any one script may run; they take about a second.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(120);
const TOPIC: &str = "orders";
/// Events in the producer's batch, over `KEYS` keys: with 3 partitions, one
/// partition gets more than 5 appends, so the batch needs a second call.
const COUNT: u64 = 12;
const KEYS: u64 = 4;
const PARTITIONS: u32 = 3;

/// One language's examples and how to run them.
struct Examples {
    language: &'static str,
    program: PathBuf,
    folder: PathBuf,
    extension: &'static str,
    environment: Vec<(&'static str, PathBuf)>,
}

impl Examples {
    fn python() -> Examples {
        Examples {
            language: "python",
            program: venv::grpc_python(),
            folder: repository().join("examples/python"),
            extension: "py",
            // No `__pycache__` in the source tree.
            environment: vec![("PYTHONDONTWRITEBYTECODE", PathBuf::from("1"))],
        }
    }

    fn node() -> Examples {
        Examples {
            language: "node",
            program: PathBuf::from("node"),
            folder: repository().join("examples/node"),
            extension: "js",
            environment: vec![("NODE_PATH", modules::node_modules())],
        }
    }

    fn command(&self, script: &str, target: &str, arguments: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .arg(self.folder.join(format!("{script}.{}", self.extension)))
            .args(["--target", target, "--topic", TOPIC])
            .args(arguments)
            .current_dir(&self.folder)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in &self.environment {
            command.env(name, value);
        }
        command
    }

    /// Runs `script` to its end and returns its JSON lines.
    fn run(&self, script: &str, target: &str, arguments: &[&str]) -> Vec<Value> {
        let child = self
            .command(script, target, arguments)
            .spawn()
            .unwrap_or_else(|error| panic!("{} {script} starts: {error}", self.language));
        let running = Running::new(child, &format!("{} {script}", self.language));
        running.finish()
    }
}

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A script running, its stdout lines arriving on a channel; killed on drop.
struct Running {
    name: String,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    deadline: Instant,
    seen: Vec<Value>,
}

impl Running {
    fn new(mut child: std::process::Child, name: &str) -> Running {
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        Running {
            name: name.to_string(),
            child,
            lines,
            stderr: Some(stderr),
            deadline: Instant::now() + SCRIPT_DEADLINE,
            seen: Vec::new(),
        }
    }

    /// The next JSON line, or `None` once the script closed its output.
    fn next(&mut self) -> Option<Value> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                println!("{}: {line}", self.name);
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|error| panic!("{}: not a JSON line ({error}): {line}", self.name));
                assert_ne!(value["kind"], "failed", "{} failed: {value}", self.name);
                self.seen.push(value.clone());
                Some(value)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} still running after {SCRIPT_DEADLINE:?}", self.name)
            }
        }
    }

    /// Lines up to and including the first of `kind`.
    fn until(&mut self, kind: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        loop {
            let line = self
                .next()
                .unwrap_or_else(|| panic!("{} ended before a {kind:?} line", self.name));
            let found = line["kind"] == kind;
            lines.push(line);
            if found {
                return lines;
            }
        }
    }

    /// Every remaining line, then the exit status, which must be success;
    /// returns every line the script printed.
    fn finish(mut self) -> Vec<Value> {
        while self.next().is_some() {}
        let status = self.child.wait().expect("wait for the script");
        let stderr = self
            .stderr
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        assert!(status.success(), "{} exited with {status}:\n{stderr}", self.name);
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|line| line["kind"] == kind).collect()
}

fn one_of_kind<'a>(lines: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(lines, kind);
    assert_eq!(found.len(), 1, "one {kind:?} line in {lines:?}");
    found[0]
}

fn number(value: &Value) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{value} is not a whole number"))
}

/// An append's position as the scripts print it: partition, first offset,
/// first and last key sequence.
fn position(result: &Value) -> (u64, u64, u64, u64) {
    (
        number(&result["partition"]),
        number(&result["first_offset"]),
        number(&result["first_sequence"]),
        number(&result["last_sequence"]),
    )
}

/// Offsets by partition, as the scripts print them (`{"0": 5, ...}`).
fn offsets(value: &Value) -> BTreeMap<u32, u64> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .iter()
        .map(|(partition, offset)| (partition.parse().expect("a partition number"), number(offset)))
        .collect()
}

/// A server for one language's examples, and a Rust client to check it.
struct Server {
    _serve: serve::ServeProcess,
    _dir: tempfile::TempDir,
    target: String,
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let serve = spawn_serve(dir.path());
        let target = serve.url.trim_start_matches("http://").to_string();
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let client = runtime
            .block_on(Client::connect(serve.url.clone()))
            .expect("the Rust client connects");
        Server {
            _serve: serve,
            _dir: dir,
            target,
            runtime,
            client,
        }
    }

    /// Every stored event of the topic, by partition then offset.
    fn stored(&self) -> Vec<RecordedEvent> {
        self.runtime.block_on(async {
            let description = self.client.describe_topic(TOPIC).await.expect("describe");
            let mut events = Vec::new();
            for partition in description.partitions {
                let mut from = partition.earliest;
                while from < partition.high_watermark {
                    let read = self
                        .client
                        .read(TOPIC, partition.partition, from, 0, 0)
                        .await
                        .expect("read");
                    assert!(
                        !read.events.is_empty(),
                        "a read below the high watermark returns events"
                    );
                    from = read.next_offset;
                    events.extend(read.events);
                }
            }
            events
        })
    }

    fn high_watermarks(&self) -> BTreeMap<u32, u64> {
        let description = self
            .runtime
            .block_on(self.client.describe_topic(TOPIC))
            .expect("describe");
        description
            .partitions
            .iter()
            .map(|partition| (partition.partition.0, partition.high_watermark.0))
            .collect()
    }

    fn append(&self, key: &str, event_type: &str) -> AppendAck {
        let request = AppendRequest::new(key, vec![Event::new(event_type, b"{}".to_vec())]);
        self.runtime
            .block_on(self.client.append(TOPIC, &request))
            .expect("append")
    }
}

/// The stored event at `partition`, `offset`.
fn at(stored: &[RecordedEvent], partition: u64, offset: u64) -> &RecordedEvent {
    stored
        .iter()
        .find(|event| u64::from(event.partition.0) == partition && event.offset.0 == offset)
        .unwrap_or_else(|| panic!("no stored event at {partition}/{offset}"))
}

/// Checks a script's event line against the stored event at its position.
fn assert_is_stored(line: &Value, stored: &[RecordedEvent]) {
    let event = at(stored, number(&line["partition"]), number(&line["offset"]));
    assert_eq!(
        line["key"],
        String::from_utf8_lossy(&event.key).as_ref(),
        "{line}"
    );
    assert_eq!(number(&line["sequence"]), event.sequence.0, "{line}");
    assert_eq!(line["type"], event.event_type.as_str(), "{line}");
    assert_eq!(
        line["payload"],
        String::from_utf8_lossy(&event.payload).as_ref(),
        "{line}"
    );
}

fn event_position(line: &Value) -> (u64, u64) {
    (number(&line["partition"]), number(&line["offset"]))
}

/// The producer: a batch whose first reply is lost, a unary append whose
/// reply is lost, then a second instance that fences the first.
fn check_producer(examples: &Examples, server: &Server) {
    let lines = examples.run(
        "producer",
        &server.target,
        &[
            "--count",
            &COUNT.to_string(),
            "--keys",
            &KEYS.to_string(),
            "--partitions",
            &PARTITIONS.to_string(),
        ],
    );
    let opened = one_of_kind(&lines, "opened");
    assert_eq!(number(&opened["partitions"]), u64::from(PARTITIONS));
    let producer_id = number(&opened["producer_id"]);
    let epoch = number(&opened["epoch"]);

    // What the server answered to the calls whose replies were lost, and the
    // acks the retries got: exactly those appends are duplicates, at the
    // original positions.
    let lost = of_kind(&lines, "reply_lost");
    let rpcs: Vec<&Value> = lost.iter().map(|line| &line["rpc"]).collect();
    assert_eq!(rpcs, ["AppendBatch", "Append"], "{lost:?}");
    let answered: Vec<&Value> = lost
        .iter()
        .flat_map(|line| line["results"].as_array().expect("results"))
        .collect();
    let lost_positions: BTreeSet<_> = answered
        .iter()
        .filter(|result| result.get("error").is_none())
        .inspect(|result| assert_eq!(result["duplicate"], false, "the first answer stored it: {result}"))
        .map(|result| position(result))
        .collect();
    let acks = of_kind(&lines, "ack");
    assert_eq!(
        acks.len() as u64,
        COUNT + 2,
        "every append acknowledged: {acks:?}"
    );
    let duplicates: BTreeSet<_> = acks
        .iter()
        .filter(|ack| ack["duplicate"] == true)
        .map(|ack| position(ack))
        .collect();
    assert!(lost_positions.len() > 5, "{lost_positions:?}");
    assert_eq!(
        duplicates, lost_positions,
        "the retries answer the lost replies' positions"
    );
    for ack in &acks {
        assert_eq!(
            ack["partition"], ack["local_partition"],
            "the example routes keys as the server does: {ack}"
        );
        // A duplicate is the answer to a second attempt at least.
        let attempts_min = if ack["duplicate"] == true { 2 } else { 1 };
        assert!(number(&ack["attempts"]) >= attempts_min, "{ack}");
    }

    // The window: the batch's first call carried at most 5 appends of each
    // partition, and filled it in one.
    let first_call = lost[0];
    let sent = first_call["sent"].as_array().expect("sent");
    assert_eq!(
        sent.len(),
        answered.len() - 1,
        "one answer per append sent: {first_call}"
    );
    let mut per_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for append in sent {
        let key = append["key"].as_str().expect("a key");
        let partition = stele::partition_for_key(key.as_bytes(), PARTITIONS).0;
        per_partition
            .entry(partition)
            .or_default()
            .push(number(&append["producer_sequence"]));
    }
    for (partition, sequences) in &per_partition {
        assert!(sequences.len() <= 5, "partition {partition}: {sequences:?}");
        assert_eq!(
            *sequences,
            (0..sequences.len() as u64).collect::<Vec<_>>(),
            "partition {partition}: consecutive from 0"
        );
    }
    assert!(
        per_partition.values().any(|sequences| sequences.len() == 5),
        "{per_partition:?}"
    );

    // The compare-and-set append that lost: refused, and the appends sent
    // after it in its partition refused as out of order, expecting its
    // sequence (and later acknowledged with it and after it).
    let refused = one_of_kind(&lines, "refused");
    assert_eq!(refused["error"]["code"], 10, "{refused}");
    assert_eq!(refused["error"]["reason"], "WRONG_EXPECTED_SEQUENCE", "{refused}");
    let conflict = sent
        .iter()
        .zip(&answered)
        .position(|(_, result)| result["error"]["code"] == 10)
        .expect("the conflict in the first call");
    let conflict_key = sent[conflict]["key"].as_str().expect("a key");
    assert_eq!(refused["key"], conflict_key);
    let conflict_partition = stele::partition_for_key(conflict_key.as_bytes(), PARTITIONS);
    let conflict_sequence = number(&sent[conflict]["producer_sequence"]);
    let mut out_of_order = 0;
    for (append, result) in sent.iter().zip(&answered).skip(conflict + 1) {
        let key = append["key"].as_str().expect("a key");
        if stele::partition_for_key(key.as_bytes(), PARTITIONS) == conflict_partition {
            assert_eq!(result["error"]["reason"], "PRODUCER_OUT_OF_ORDER", "{result}");
            assert_eq!(
                number(&result["error"]["expected_producer_sequence"]),
                conflict_sequence
            );
            out_of_order += 1;
        } else {
            assert!(result.get("error").is_none(), "other partitions go on: {result}");
        }
    }
    assert!(out_of_order > 0, "appends followed the conflict in its partition");

    // Fencing, decoded from grpc-status-details-bin and the code trailer.
    let reopened = one_of_kind(&lines, "reopened");
    assert_eq!(number(&reopened["producer_id"]), producer_id);
    assert_eq!(number(&reopened["epoch"]), epoch + 1);
    let fenced = one_of_kind(&lines, "fenced");
    assert_eq!(fenced["grpc_code"], "ABORTED", "{fenced}");
    assert_eq!(fenced["code"], 13, "{fenced}");
    assert_eq!(fenced["reason"], "PRODUCER_FENCED", "{fenced}");
    assert_eq!(fenced["trailer"], "13", "{fenced}");
    assert_eq!(fenced["error_info"]["reason"], "PRODUCER_FENCED", "{fenced}");
    assert_eq!(fenced["error_info"]["domain"], "stele", "{fenced}");
    assert_eq!(number(&fenced["current_epoch"]), epoch + 1, "{fenced}");
    let successor = acks.last().expect("the successor's ack");
    assert_eq!(
        number(&successor["producer_sequence"]),
        0,
        "a new epoch starts at 0"
    );
    assert_eq!(successor["duplicate"], false);
    one_of_kind(&lines, "done");

    // Stored exactly once each: the batch's numbers, the unary append's and
    // the successor's (the fenced instance's was refused), each with the stamp
    // its ack names; each partition's stamps of the first epoch are dense.
    let stored = server.stored();
    let mut numbers: Vec<u64> = stored
        .iter()
        .map(|event| {
            let payload: Value = serde_json::from_slice(&event.payload).expect("a JSON payload");
            number(&payload["n"])
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..COUNT + 2).collect::<Vec<_>>());
    for (index, ack) in acks.iter().enumerate() {
        let event = at(&stored, number(&ack["partition"]), number(&ack["first_offset"]));
        assert_eq!(ack["key"], String::from_utf8_lossy(&event.key).as_ref(), "{ack}");
        assert_eq!(event.sequence.0, number(&ack["first_sequence"]), "{ack}");
        let stamp = event.producer.expect("a stamped event");
        let ack_epoch = if index == acks.len() - 1 { epoch + 1 } else { epoch };
        assert_eq!(
            (stamp.producer.0, u64::from(stamp.epoch.0), stamp.sequence.0),
            (producer_id, ack_epoch, number(&ack["producer_sequence"])),
            "{ack}"
        );
    }
    for partition in 0..PARTITIONS {
        let sequences: Vec<u64> = stored
            .iter()
            .filter(|event| event.partition == PartitionId(partition))
            .filter_map(|event| event.producer)
            .filter(|stamp| u64::from(stamp.epoch.0) == epoch)
            .map(|stamp| stamp.sequence.0)
            .collect();
        assert_eq!(
            sequences,
            (0..sequences.len() as u64).collect::<Vec<_>>(),
            "partition {partition}"
        );
    }
}

/// The consumer: stopped after 5 events, restarted, it goes on exactly where
/// its cursor says, and ends with the cursor at the high watermarks.
fn check_consumer(examples: &Examples, server: &Server) {
    let stored = server.stored();
    let cursor = "billing";
    let first = examples.run(
        "consumer",
        &server.target,
        &["--cursor", cursor, "--max-events", "5"],
    );
    let resumed = one_of_kind(&first, "resumed");
    assert!(
        offsets(&resumed["offsets"]).values().all(|offset| *offset == 0),
        "a new cursor starts at the earliest offsets: {resumed}"
    );
    let stopped = offsets(&one_of_kind(&first, "stopped")["offsets"]);
    let committed: BTreeMap<u32, u64> = server
        .runtime
        .block_on(server.client.get_cursor(TOPIC, cursor))
        .expect("get cursor")
        .iter()
        .map(|position| {
            (
                position.partition.0,
                position.committed.map_or(0, |offset| offset.0),
            )
        })
        .collect();
    assert_eq!(committed, stopped, "the cursor holds what the consumer committed");

    let second = examples.run(
        "consumer",
        &server.target,
        &["--cursor", cursor, "--exit-when-caught-up"],
    );
    let resumed = one_of_kind(&second, "resumed");
    assert_eq!(
        offsets(&resumed["offsets"]),
        stopped,
        "the restart resumes at the cursor"
    );
    let caught_up = one_of_kind(&second, "caught_up");
    let high_watermarks = server.high_watermarks();
    assert_eq!(offsets(&caught_up["offsets"]), high_watermarks);
    assert!(
        offsets(&caught_up["lag"]).values().all(|lag| *lag == 0),
        "{caught_up}"
    );

    // Every stored event exactly once over both runs, in offset order per
    // partition, as stored.
    let events: Vec<&Value> = of_kind(&first, "event")
        .into_iter()
        .chain(of_kind(&second, "event"))
        .collect();
    assert_eq!(of_kind(&first, "event").len(), 5);
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for event in &events {
        assert_is_stored(event, &stored);
        let (partition, offset) = event_position(event);
        if let Some(previous) = last.insert(partition, offset) {
            assert_eq!(
                offset,
                previous + 1,
                "partition {partition} in order without gaps"
            );
        }
    }
    let consumed: Vec<(u64, u64)> = events.iter().map(|event| event_position(event)).collect();
    let mut expected: Vec<(u64, u64)> = stored
        .iter()
        .map(|event| (u64::from(event.partition.0), event.offset.0))
        .collect();
    expected.sort_unstable();
    let mut sorted = consumed.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "each stored event consumed once");
    let committed: BTreeMap<u32, u64> = server
        .runtime
        .block_on(server.client.get_cursor(TOPIC, cursor))
        .expect("get cursor")
        .iter()
        .map(|position| {
            (
                position.partition.0,
                position.committed.map_or(0, |offset| offset.0),
            )
        })
        .collect();
    assert_eq!(
        committed, high_watermarks,
        "the cursor ends at the high watermarks"
    );
}

/// The subscription: the stored events, `caught_up`, then events appended
/// after it, live.
fn check_subscription(examples: &Examples, server: &Server) {
    let stored = server.stored();
    let live_keys = ["live-0", "live-1", "live-2"];
    let max_events = (stored.len() + live_keys.len()).to_string();
    let child = examples
        .command(
            "subscribe",
            &server.target,
            &["--max-events", &max_events, "--heartbeat-ms", "200"],
        )
        .spawn()
        .expect("subscribe starts");
    let mut running = Running::new(child, &format!("{} subscribe", examples.language));
    let backlog = running.until("caught_up");
    let caught_up = backlog.last().expect("the caught_up line");
    assert_eq!(offsets(&caught_up["next_offsets"]), server.high_watermarks());
    let acks: Vec<AppendAck> = live_keys
        .iter()
        .map(|key| server.append(key, "order_shipped"))
        .collect();
    let live_lines = running.finish();
    let live: Vec<&Value> = live_lines[backlog.len()..]
        .iter()
        .filter(|line| line["kind"] == "event")
        .collect();

    let backlog: Vec<&Value> = of_kind(&backlog, "event");
    let mut positions: Vec<(u64, u64)> = backlog.iter().map(|event| event_position(event)).collect();
    for event in &backlog {
        assert_is_stored(event, &stored);
    }
    let in_partition_order = |events: &[&Value]| {
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for event in events {
            let (partition, offset) = event_position(event);
            if let Some(previous) = last.insert(partition, offset) {
                assert!(offset > previous, "partition {partition} in offset order");
            }
        }
    };
    in_partition_order(&backlog);
    positions.sort_unstable();
    let mut expected: Vec<(u64, u64)> = stored
        .iter()
        .map(|event| (u64::from(event.partition.0), event.offset.0))
        .collect();
    expected.sort_unstable();
    assert_eq!(positions, expected, "the backlog is every stored event, once");

    in_partition_order(&live);
    let mut live_positions: Vec<(u64, u64, String)> = live
        .iter()
        .inspect(|event| assert_eq!(event["type"], "order_shipped", "{event}"))
        .map(|event| {
            let (partition, offset) = event_position(event);
            (
                partition,
                offset,
                event["key"].as_str().expect("a key").to_string(),
            )
        })
        .collect();
    live_positions.sort();
    let mut appended: Vec<(u64, u64, String)> = acks
        .iter()
        .zip(live_keys)
        .map(|(ack, key)| (u64::from(ack.partition.0), ack.first_offset.0, key.to_string()))
        .collect();
    appended.sort();
    assert_eq!(
        live_positions, appended,
        "the live tail is the appends after caught_up"
    );
    one_of_kind(&live_lines, "stopped");
}

fn exercise(examples: Examples) {
    check_routing(&examples);
    let server = Server::start();
    check_producer(&examples, &server);
    check_consumer(&examples, &server);
    check_subscription(&examples, &server);
}

#[test]
fn python_examples_produce_idempotently_consume_by_cursor_and_subscribe() {
    // Goal: the Python examples work as their README says against a real
    // server, and what they print is what the server stored.
    exercise(Examples::python());
}

#[test]
fn node_examples_produce_idempotently_consume_by_cursor_and_subscribe() {
    // Goal: the Node.js examples work as their README says against a real
    // server, and what they print is what the server stored.
    exercise(Examples::node());
}

#[test]
fn example_dependencies_are_the_packages_the_tests_install() {
    // Goal: the tests run the examples with the packages their requirements
    // name, so the examples' dependency lists cannot drift from what is tested.
    let requirements = std::fs::read_to_string(repository().join("examples/python/requirements.txt"))
        .expect("requirements.txt");
    let required: Vec<&str> = requirements
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert!(!required.is_empty());
    for package in required {
        assert!(
            venv::GRPC_PACKAGES.contains(&package),
            "{package} is not installed by the tests"
        );
    }
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("examples/node/package.json")).expect("package.json"),
    )
    .expect("package.json is JSON");
    let dependencies = manifest["dependencies"].as_object().expect("dependencies");
    assert!(!dependencies.is_empty());
    for (name, version) in dependencies {
        let version = version.as_str().expect("a version").trim_start_matches('^');
        let installed = format!("{name}@{version}");
        assert!(
            modules::PACKAGES.contains(&installed.as_str()),
            "{installed} is not installed by the tests ({:?})",
            modules::PACKAGES
        );
    }
}

/// One row of `docs/producer-protocol.md`'s routing vectors: the key, its
/// FNV-1a 64 hash, and its partition for each partition count.
struct RoutingVector {
    row: String,
    key: Vec<u8>,
    hash: u64,
    partitions: Vec<(u32, u32)>,
}

/// The routing vectors of the protocol doc: the table after the marker
/// `<!-- routing vectors -->`, whose header names the partition counts from
/// its fourth column on.
fn routing_vectors() -> Vec<RoutingVector> {
    let document =
        std::fs::read_to_string(repository().join("docs/producer-protocol.md")).expect("the protocol doc");
    let table = document
        .split("<!-- routing vectors -->")
        .nth(1)
        .expect("the doc marks its routing vectors");
    let mut rows = table
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells = line
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_string())
                .collect::<Vec<String>>();
            (line.to_string(), cells)
        });
    let (_, header) = rows.next().expect("a header row");
    let counts: Vec<u32> = header[3..]
        .iter()
        .map(|cell| cell.parse().expect("a partition count in the header"))
        .collect();
    let vectors: Vec<RoutingVector> = rows
        .skip(1)
        .map(|(row, cells)| RoutingVector {
            key: (0..cells[1].len())
                .step_by(2)
                .map(|index| u8::from_str_radix(&cells[1][index..index + 2], 16).expect("key hex"))
                .collect(),
            hash: u64::from_str_radix(cells[2].trim_start_matches("0x"), 16).expect("hash hex"),
            partitions: counts
                .iter()
                .zip(&cells[3..])
                .map(|(count, cell)| (*count, cell.parse().expect("a partition")))
                .collect(),
            row,
        })
        .collect();
    assert!(vectors.len() >= 5, "the doc lists its vectors");
    vectors
}

/// The examples' own key -> partition function gives the doc's partitions
/// (binary and UTF-8 keys included), run in the example's language.
fn check_routing(examples: &Examples) {
    let vectors = routing_vectors();
    let input = Value::Array(
        vectors
            .iter()
            .map(|vector| {
                let hex: String = vector.key.iter().map(|byte| format!("{byte:02x}")).collect();
                let counts: Vec<u32> = vector.partitions.iter().map(|(count, _)| *count).collect();
                serde_json::json!([hex, counts])
            })
            .collect(),
    );
    let program = match examples.language {
        "python" => {
            "import json, sys\n\
                     from stele_proto import partition_for_key\n\
                     print(json.dumps([[partition_for_key(bytes.fromhex(key), count) for count in counts]\n\
                     for key, counts in json.loads(sys.argv[1])]))"
        }
        _ => {
            "const { partitionForKey } = require('./stele');\n\
              console.log(JSON.stringify(JSON.parse(process.argv[1]).map(([key, counts]) =>\n\
              counts.map((count) => partitionForKey(Buffer.from(key, 'hex'), count)))));"
        }
    };
    let flag = if examples.language == "python" { "-c" } else { "-e" };
    let mut command = Command::new(&examples.program);
    command
        .args([flag, program, &input.to_string()])
        .current_dir(&examples.folder);
    for (name, value) in &examples.environment {
        command.env(name, value);
    }
    let output = command.output().expect("the routing check runs");
    assert!(
        output.status.success(),
        "{} routing: {}",
        examples.language,
        String::from_utf8_lossy(&output.stderr)
    );
    let computed: Vec<Vec<u32>> = serde_json::from_slice(&output.stdout).expect("JSON partitions");
    assert_eq!(computed.len(), vectors.len());
    for (vector, partitions) in vectors.iter().zip(computed) {
        let expected: Vec<u32> = vector
            .partitions
            .iter()
            .map(|(_, partition)| *partition)
            .collect();
        assert_eq!(
            partitions, expected,
            "{} routes {}",
            examples.language, vector.row
        );
    }
}

#[test]
fn producer_protocol_routing_vectors_are_the_servers() {
    // Goal: the key -> partition vectors of docs/producer-protocol.md are what
    // the server computes. Method: each row's partitions are compared with
    // `partition_for_key`; its 64-bit hash is checked modulo three pairwise
    // coprime moduli near 2^32 (their product exceeds 2^64, so only the true
    // hash agrees with all three).
    let moduli = [u32::MAX, u32::MAX - 1, u32::MAX - 2];
    for vector in routing_vectors() {
        for modulus in moduli {
            assert_eq!(
                vector.hash % u64::from(modulus),
                u64::from(stele::partition_for_key(&vector.key, modulus).0),
                "the hash of {}",
                vector.row
            );
        }
        for (count, partition) in &vector.partitions {
            assert_eq!(
                stele::partition_for_key(&vector.key, *count).0,
                *partition,
                "{} with {count}",
                vector.row
            );
        }
    }
}

#[test]
fn the_window_of_the_doc_and_the_examples_is_the_servers() {
    // Goal: the number of unanswered appends per partition that the protocol
    // doc and both producers allow is the number of recent appends the server
    // remembers per producer and partition.
    let window = stele::limits::PRODUCER_RECENT_APPENDS_COUNT;
    let read = |path: &str| std::fs::read_to_string(repository().join(path)).expect(path);
    assert!(
        read("docs/producer-protocol.md").contains(&format!("its {window} most recent stored appends")),
        "the doc states the window"
    );
    assert!(
        read("examples/python/producer.py").contains(&format!("IN_FLIGHT_PER_PARTITION_MAX = {window}\n"))
    );
    assert!(
        read("examples/node/producer.js").contains(&format!("IN_FLIGHT_PER_PARTITION_MAX = {window};\n"))
    );
}
