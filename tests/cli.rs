//! The `stele` command, run as a real process: `serve` on a free port and a
//! temporary data directory, the client commands against it, `verify` on the
//! directory it leaves. Synchronisation waits on output lines and process exits,
//! never on sleeps; ports are picked by the kernel (`--listen 127.0.0.1:0`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_stele");
/// How long to wait for a line before declaring the server stuck (a failure
/// bound, not a synchronisation delay).
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// A `stele` command with none of the caller's `STELE_*` or `RUST_LOG` settings.
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// A running `stele serve`; killed on drop unless it was stopped.
struct Server {
    child: Child,
    url: String,
    stderr: Receiver<String>,
    /// Every stderr line so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], &[])
    }

    fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_on(data_dir, "127.0.0.1:0", args, env)
    }

    /// Starts a server listening on `listen` (a restart passes the address the
    /// previous server reported).
    fn start_on(data_dir: &Path, listen: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let data = data_dir.to_str().expect("UTF-8 path");
        let mut all = vec!["serve", "--listen", listen, "--data-dir", data];
        all.extend_from_slice(args);
        let mut command = command(&all);
        command.envs(env.iter().copied());
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn stele serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, receiver) = channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                kept.lock().expect("log").push(line.clone());
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            stderr: receiver,
            log,
        };
        let line = server.wait_for_line("listening on ");
        let address = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("an address after 'listening on'");
        server.url = format!("http://{address}");
        server
    }

    /// Waits for a stderr line containing `needle` and returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        loop {
            match self.stderr.recv_timeout(LINE_TIMEOUT) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(error) => panic!("no stderr line with {needle:?}: {error}"),
            }
        }
    }

    /// Runs a client command against this server.
    fn run(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--url", &self.url]);
        command(&all).output().expect("run stele")
    }

    /// Runs a client command against this server with `token` in STELE_TOKEN.
    fn run_as(&self, token: &str, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--url", &self.url]);
        command(&all)
            .env("STELE_TOKEN", token)
            .output()
            .expect("run stele")
    }

    /// The address the server listens on, `HOST:PORT`.
    fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Kills the server with SIGKILL and reaps it.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL stele serve");
        self.child.wait().expect("reap stele serve");
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(mut self) -> ExitStatus {
        signal(&self.child, libc::SIGTERM);
        let status = self.child.wait().expect("wait for stele serve");
        // The reader thread ends at the pipe's end, so this cannot wait forever.
        self.wait_for_line("stele: stopped");
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal to a child process not yet reaped.
fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) with a valid signal number has no memory-safety
    // preconditions; the pid is our own child, not yet reaped.
    #[allow(unsafe_code)]
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill failed");
}

/// A running client command whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    fn spawn(args: &[&str]) -> Running {
        let mut child = command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn stele");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
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
            child,
            lines,
            stderr: Some(stderr),
        }
    }

    /// Waits for the next `count` stdout lines.
    fn take(&self, count: usize) -> Vec<String> {
        (0..count)
            .map(|index| {
                self.lines
                    .recv_timeout(LINE_TIMEOUT)
                    .unwrap_or_else(|error| panic!("stdout line {index} of {count}: {error}"))
            })
            .collect()
    }

    /// Waits for the process to exit; returns its status, the stdout lines not
    /// taken yet and all of stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let status = self.child.wait().expect("wait for stele");
        let stderr = self
            .stderr
            .take()
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default();
        // The process has exited, so the reader thread ends at the pipe's end.
        let rest = self.lines.iter().collect();
        (status, rest, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds, failing after LINE_TIMEOUT.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    // Bounded by the deadline; each round runs a command, so it does not spin.
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::yield_now();
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}; stdout: {}; stderr: {}",
        output.status.code(),
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn temporary() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    (dir, data)
}

#[test]
fn topic_commands_create_list_describe_and_delete() {
    // Goal: the topic commands round-trip through a real server, with the
    // documented exit codes for a duplicate (3) and an unknown topic (4).
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    let created = ok(server.run(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--retention-age",
        "7d",
    ]));
    assert!(created.contains("3 partitions"), "{created}");
    assert!(created.contains("retention age 7d"), "{created}");
    let again = server.run(&["topic", "create", "orders"]);
    assert_eq!(again.status.code(), Some(3));
    assert!(stderr(&again).contains("(TOPIC_EXISTS)"), "{}", stderr(&again));
    ok(server.run(&["topic", "create", "audit"]));
    assert_eq!(ok(server.run(&["topic", "list"])), "audit\norders\n");
    let described = json_lines(&ok(server.run(&["topic", "describe", "orders", "--json"])));
    assert_eq!(described.len(), 1);
    assert_eq!(described[0]["settings"]["partitions"], 3);
    assert_eq!(described[0]["partitions"].as_array().map(Vec::len), Some(3));
    assert_eq!(described[0]["partitions"][0]["high_watermark"], 0);
    let text = ok(server.run(&["topic", "describe", "orders"]));
    assert!(text.contains("high_watermark"), "{text}");
    ok(server.run(&["topic", "delete", "audit"]));
    assert_eq!(ok(server.run(&["topic", "list"])), "orders\n");
    let missing = server.run(&["topic", "describe", "audit"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(
        stderr(&missing).contains("(TOPIC_NOT_FOUND)"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn append_reports_results_conflicts_and_duplicates() {
    // Goal: append prints where events went; a failed expected-sequence check is
    // exit 3 naming the error code; a retried idempotency id is a duplicate with
    // the original positions; stdin lines become one atomic call.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    let first = json_lines(&ok(server.run(&[
        "append",
        "orders",
        "invoice-1",
        "{\"n\":1}",
        "--type",
        "created",
        "--expect",
        "none",
        "--json",
    ])));
    assert_eq!(first[0]["first_sequence"], 0);
    assert_eq!(first[0]["duplicate"], false);
    let conflict = server.run(&[
        "append",
        "orders",
        "invoice-1",
        "x",
        "--type",
        "created",
        "--expect",
        "none",
    ]);
    assert_eq!(conflict.status.code(), Some(3));
    let message = stderr(&conflict);
    assert!(message.starts_with("error: "), "{message}");
    assert!(message.contains("(WRONG_EXPECTED_SEQUENCE)"), "{message}");
    let paid = [
        "append",
        "orders",
        "invoice-1",
        "paid",
        "--type",
        "paid",
        "--expect",
        "0",
        "--id",
        "pay-7",
        "--json",
    ];
    let original = json_lines(&ok(server.run(&paid)));
    let retry = json_lines(&ok(server.run(&paid)));
    assert_eq!(original[0]["duplicate"], false);
    assert_eq!(retry[0]["duplicate"], true);
    assert_eq!(retry[0]["first_offset"], original[0]["first_offset"]);
    let mut lines = command(&[
        "append",
        "orders",
        "batch",
        "--type",
        "line",
        "--lines",
        "--json",
        "--url",
        &server.url,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn append");
    {
        use std::io::Write;
        let mut input = lines.stdin.take().expect("stdin");
        input.write_all(b"one\ntwo\nthree\n").expect("write stdin");
    }
    let batch = json_lines(&ok(lines.wait_with_output().expect("append output")));
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0]["first_sequence"], 0);
    assert_eq!(batch[0]["last_sequence"], 2);
}

#[test]
fn read_and_tail_print_events_by_offset_and_by_key() {
    // Goal: read by partition offset and by key, and tail --count, print the
    // stored events in order, as text and as JSON.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for (key, payload) in [("a", "a0"), ("b", "b0"), ("a", "a1"), ("b", "b1")] {
        ok(server.run(&[
            "append",
            "t",
            key,
            payload,
            "--type",
            "note",
            "--header",
            "source=test",
        ]));
    }
    let all = json_lines(&ok(server.run(&["read", "t", "--partition", "0", "--json"])));
    let payloads: Vec<&str> = all.iter().filter_map(|event| event["payload"].as_str()).collect();
    assert_eq!(payloads, ["a0", "b0", "a1", "b1"]);
    assert_eq!(all[2]["offset"], 2);
    assert_eq!(all[2]["headers"]["source"], "test");
    let from = json_lines(&ok(
        server.run(&["read", "t", "--from", "2", "--count", "1", "--json"])
    ));
    assert_eq!(from.len(), 1);
    assert_eq!(from[0]["payload"], "a1");
    let key = ok(server.run(&["read", "t", "--key", "b"]));
    let lines: Vec<&str> = key.lines().collect();
    assert_eq!(lines.len(), 2, "{key}");
    assert!(lines[0].starts_with("0/1 b@0 note "), "{key}");
    assert!(lines[1].ends_with(" b1"), "{key}");
    let backwards = json_lines(&ok(server.run(&[
        "read",
        "t",
        "--key",
        "a",
        "--backwards",
        "--json",
    ])));
    assert_eq!(backwards[0]["payload"], "a1");
    let tailed = json_lines(&ok(
        server.run(&["tail", "t", "--from", "earliest", "--count", "3", "--json"])
    ));
    let offsets: Vec<u64> = tailed
        .iter()
        .filter_map(|event| event["offset"].as_u64())
        .collect();
    assert_eq!(offsets, [0, 1, 2]);
    let filtered = json_lines(&ok(server.run(&[
        "tail",
        "t",
        "--from",
        "earliest",
        "--key-prefix",
        "b",
        "--count",
        "2",
        "--json",
    ])));
    let keys: Vec<&str> = filtered
        .iter()
        .filter_map(|event| event["key"].as_str())
        .collect();
    assert_eq!(keys, ["b", "b"]);
}

#[test]
fn cursor_commands_commit_get_list_and_delete() {
    // Goal: a cursor committed through the command is read back with its lag,
    // moving it backwards is a conflict (3) unless allowed, and a deleted cursor
    // is not found (4).
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for payload in ["1", "2", "3"] {
        ok(server.run(&["append", "t", "k", payload, "--type", "n"]));
    }
    ok(server.run(&["cursor", "commit", "t", "reader", "0=2"]));
    let got = json_lines(&ok(server.run(&["cursor", "get", "t", "reader", "--json"])));
    assert_eq!(got[0]["partitions"][0]["committed_offset"], 2);
    assert_eq!(got[0]["partitions"][0]["lag"], 1);
    let backwards = server.run(&["cursor", "commit", "t", "reader", "0=1"]);
    assert_eq!(backwards.status.code(), Some(3), "{}", stderr(&backwards));
    ok(server.run(&["cursor", "commit", "t", "reader", "0=1", "--allow-backwards"]));
    ok(server.run(&["cursor", "commit", "t", "other", "0=3"]));
    let listed = ok(server.run(&["cursor", "list", "t"]));
    assert!(listed.contains("reader lag 2"), "{listed}");
    assert!(listed.contains("other lag 0"), "{listed}");
    ok(server.run(&["cursor", "delete", "t", "reader"]));
    let missing = server.run(&["cursor", "get", "t", "reader"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(
        stderr(&missing).contains("(CURSOR_NOT_FOUND)"),
        "{}",
        stderr(&missing)
    );
    let bad = server.run(&["cursor", "commit", "t", "reader", "zero=1"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn sigterm_stops_serve_cleanly_and_a_restart_sees_all_data() {
    // Goal: SIGTERM is a graceful shutdown (exit 0) and everything acknowledged
    // before it is there after a restart on the same directory.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    for index in 0..20 {
        ok(server.run(&[
            "append",
            "t",
            &format!("k{}", index % 3),
            &index.to_string(),
            "--type",
            "n",
        ]));
    }
    let status = server.terminate();
    assert!(status.success(), "serve exited with {status:?}");
    let restarted = Server::start(&data);
    let described = json_lines(&ok(restarted.run(&["topic", "describe", "t", "--json"])));
    let total: u64 = described[0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter_map(|partition| partition["high_watermark"].as_u64())
        .sum();
    assert_eq!(total, 20);
    let key = json_lines(&ok(restarted.run(&["read", "t", "--key", "k1", "--json"])));
    let payloads: Vec<&str> = key.iter().filter_map(|event| event["payload"].as_str()).collect();
    assert_eq!(payloads, ["1", "4", "7", "10", "13", "16", "19"]);
}

#[test]
fn a_second_serve_on_the_same_directory_fails_naming_it() {
    // Goal: the directory lock turns a second server into a clear error.
    let (_dir, data) = temporary();
    let _server = Server::start(&data);
    let second = command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().expect("UTF-8"),
    ])
    .output()
    .expect("run second serve");
    assert!(!second.status.success());
    let message = stderr(&second);
    assert!(message.contains("locked"), "{message}");
    assert!(message.contains(data.to_str().expect("UTF-8")), "{message}");
}

#[test]
fn verify_exits_0_when_clean_and_1_naming_file_and_position_when_damaged() {
    // Goal: verify on a directory a server wrote and closed is clean (exit 0);
    // after a flipped bit inside the first frame it exits 1 and names the
    // segment file and the frame's byte position (40, right after the header).
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for index in 0..5 {
        ok(server.run(&["append", "t", "k", &format!("payload-{index}"), "--type", "n"]));
    }
    // While the server runs, verify reads without taking the lock and says so.
    let live = command(&["verify", data.to_str().expect("UTF-8")])
        .output()
        .expect("run verify");
    assert_eq!(live.status.code(), Some(0), "{}{}", stdout(&live), stderr(&live));
    if Path::new("/proc/locks").exists() {
        assert!(
            stderr(&live).contains("locked by a running process"),
            "{}",
            stderr(&live)
        );
    }
    assert!(server.terminate().success());
    let clean = command(&["verify", data.to_str().expect("UTF-8")])
        .output()
        .expect("run verify");
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}{}",
        stdout(&clean),
        stderr(&clean)
    );
    assert!(
        stderr(&clean).contains("5 records: 0 problems"),
        "{}",
        stderr(&clean)
    );
    let segment = data.join("topics/t/p00000/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).expect("read segment");
    bytes[40 + 75] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("write segment");
    let damaged = command(&["verify", data.to_str().expect("UTF-8")])
        .output()
        .expect("run verify");
    assert_eq!(damaged.status.code(), Some(1));
    let report = stdout(&damaged);
    assert!(
        report.contains(&format!("{}:40: ", segment.display())),
        "report: {report}"
    );
    let missing = command(&["verify", "/nonexistent/stele"])
        .output()
        .expect("run verify");
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn serve_takes_settings_from_file_env_and_flags_in_that_order() {
    // Goal: the TOML file sets what neither flags nor environment set, and the
    // environment overrides the file. Method: the file asks for 3 partitions and
    // no auto-create; the environment asks for 2 partitions; a created topic has 2,
    // and an append to an unknown topic is not found (auto-create off).
    let (dir, data) = temporary();
    let config = dir.path().join("stele.toml");
    std::fs::write(
        &config,
        "partitions = 3\nauto-create = false\ndedup-window = \"5m\"\n",
    )
    .expect("write config");
    let server = Server::start_with(
        &data,
        &["--config", config.to_str().expect("UTF-8")],
        &[("STELE_PARTITIONS", "2")],
    );
    let missing = server.run(&["append", "nowhere", "k", "x", "--type", "n"]);
    assert_eq!(missing.status.code(), Some(4), "{}", stderr(&missing));
    ok(server.run(&["topic", "create", "t"]));
    let described = json_lines(&ok(server.run(&["topic", "describe", "t", "--json"])));
    assert_eq!(described[0]["settings"]["partitions"], 2);
    assert_eq!(described[0]["settings"]["dedup_window_ms"], 300_000);
}

#[test]
fn an_unreachable_server_is_exit_code_5() {
    // Goal: connection refused maps to the documented exit code. Method: take a
    // free port from the kernel, release it, and point the client at it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let output = command(&["topic", "list", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(5));
    assert!(stderr(&output).contains("cannot connect"), "{}", stderr(&output));
}

/// Appends `payload` to `key` of `topic`, failing the test if the append fails.
fn append(server: &Server, topic: &str, key: &str, payload: &str) {
    ok(server.run(&["append", topic, key, payload, "--type", "n"]));
}

/// Pairs of (partition, offset) of JSON events.
fn positions(events: &[serde_json::Value]) -> Vec<(u64, u64)> {
    events
        .iter()
        .map(|event| {
            (
                event["partition"].as_u64().expect("partition"),
                event["offset"].as_u64().expect("offset"),
            )
        })
        .collect()
}

#[test]
fn read_without_a_partition_prints_every_partition_one_after_the_other() {
    // Goal: `read TOPIC` reads all partitions, not only partition 0, in the
    // documented order (partition by partition, each in offset order), with
    // --count bounding the total and --from applying in each partition.
    // Method: spread 12 keys over 3 partitions and compare with the partitions'
    // high watermarks.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "3"]));
    for index in 0..12 {
        append(&server, "t", &format!("key-{index}"), &format!("payload-{index}"));
    }
    let described = json_lines(&ok(server.run(&["topic", "describe", "t", "--json"])));
    let high_watermarks: Vec<u64> = described[0]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|partition| partition["high_watermark"].as_u64().expect("high watermark"))
        .collect();
    assert!(
        high_watermarks.iter().filter(|mark| **mark > 0).count() >= 2,
        "the keys should land in several partitions: {high_watermarks:?}"
    );
    let expected: Vec<(u64, u64)> = (0u64..)
        .zip(&high_watermarks)
        .flat_map(|(partition, mark)| (0..*mark).map(move |offset| (partition, offset)))
        .collect();
    let all = json_lines(&ok(server.run(&["read", "t", "--json"])));
    assert_eq!(positions(&all), expected);
    let counted = json_lines(&ok(server.run(&["read", "t", "--count", "5", "--json"])));
    assert_eq!(positions(&counted), expected[..5]);
    let from = json_lines(&ok(server.run(&["read", "t", "--from", "1", "--json"])));
    let after_first: Vec<(u64, u64)> = expected
        .iter()
        .copied()
        .filter(|(_, offset)| *offset >= 1)
        .collect();
    assert_eq!(positions(&from), after_first);
    let one = json_lines(&ok(server.run(&["read", "t", "--partition", "2", "--json"])));
    assert_eq!(one.len() as u64, high_watermarks[2]);
    assert!(one.iter().all(|event| event["partition"] == 2));
}

#[test]
fn an_https_url_against_a_plaintext_server_fails_naming_tls() {
    // Goal: an https URL never speaks plaintext. Method: the server serves only
    // plaintext gRPC; the same command succeeds over http and must fail over
    // https, saying TLS, with the unreachable exit code, as text and as JSON.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "list"]));
    let https = format!("https://{}", server.address());
    let output = command(&["topic", "list", "--url", &https])
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(stderr(&output).contains("TLS"), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    let output = command(&["topic", "list", "--json"])
        .env("STELE_URL", &https)
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(5));
    let error = &json_lines(&stderr(&output))[0]["error"];
    assert_eq!(error["kind"], "unreachable");
    assert!(
        error["message"].as_str().expect("message").contains("TLS"),
        "{error}"
    );
}

#[test]
fn a_url_without_a_scheme_is_a_usage_error() {
    // Goal: `--url HOST:PORT` (and STELE_URL) is refused before connecting, with
    // exit code 2 and a message naming the missing scheme, although a server
    // listens there.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    let bare = server.address().to_string();
    let output = command(&["topic", "list", "--url", &bare])
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("no scheme"), "{}", stderr(&output));
    let output = command(&["topic", "list"])
        .env("STELE_URL", &bare)
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let output = command(&["topic", "list", "--url", &format!("ftp://{bare}")])
        .output()
        .expect("run stele");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

#[test]
fn topic_create_refuses_zero_partitions() {
    // Goal: `--partitions 0` is a usage error, not a topic with the default
    // partition count; nothing is created.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    let output = server.run(&["topic", "create", "t", "--partitions", "0"]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    assert!(stderr(&output).contains("--partitions"), "{}", stderr(&output));
    assert_eq!(ok(server.run(&["topic", "list"])), "");
}

#[test]
fn tail_from_a_cursor_that_does_not_exist_is_not_found() {
    // Goal: `--from cursor:NAME` with an unknown cursor exits 4 naming
    // CURSOR_NOT_FOUND and prints nothing, instead of replaying from the start;
    // so does `--cursor NAME` without --commit. An existing cursor is followed
    // from its committed offset.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for index in 0..3 {
        append(&server, "t", "k", &format!("e{index}"));
    }
    for args in [
        ["tail", "t", "--from", "cursor:nobody", "--count", "1"],
        ["tail", "t", "--cursor", "nobody", "--count", "1"],
    ] {
        let output = server.run(&args);
        assert_eq!(output.status.code(), Some(4), "{args:?}: {}", stdout(&output));
        assert!(
            stderr(&output).contains("(CURSOR_NOT_FOUND)"),
            "{}",
            stderr(&output)
        );
        assert_eq!(stdout(&output), "");
    }
    ok(server.run(&["cursor", "commit", "t", "reader", "0=2"]));
    let tailed = json_lines(&ok(server.run(&[
        "tail",
        "t",
        "--from",
        "cursor:reader",
        "--count",
        "1",
        "--json",
    ])));
    assert_eq!(tailed[0]["payload"], "e2");
}

#[test]
fn webhook_dead_letters_max_bounds_the_whole_list() {
    // Goal: `webhook dead-letters --max N` prints at most N, also when the
    // dead-letter topic has several partitions holding letters. Method: without
    // an allow-list a name resolving to loopback is refused at delivery, so every
    // event is dead-lettered at once; 8 keys spread over 4 dead-letter partitions.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t.dead-letter", "--partitions", "4"]));
    ok(server.run(&[
        "webhook",
        "create",
        "hook",
        "http://localhost:9/in",
        "--topic",
        "t",
        "--max-attempts",
        "1",
    ]));
    for index in 0..8 {
        append(&server, "t", &format!("key-{index}"), "x");
    }
    let mut letters = Vec::new();
    wait_until("8 dead letters", || {
        letters = json_lines(&ok(server.run(&["webhook", "dead-letters", "hook", "--json"])));
        letters.len() == 8
    });
    let mut partitions: Vec<u64> = letters
        .iter()
        .filter_map(|letter| letter["dead_letter_partition"].as_u64())
        .collect();
    partitions.dedup();
    assert!(
        partitions.len() >= 2,
        "letters in one partition only: {partitions:?}"
    );
    assert!(
        letters[0]["key"]
            .as_str()
            .expect("a text key")
            .starts_with("key-")
    );
    for max in [1usize, 3] {
        let shown = ok(server.run(&["webhook", "dead-letters", "hook", "--max", &max.to_string()]));
        assert_eq!(shown.lines().count(), max, "{shown}");
    }
    let zero = server.run(&["webhook", "dead-letters", "hook", "--max", "0"]);
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn errors_under_json_are_one_object_on_stderr_with_codes_and_detail() {
    // Goal: with --json every failure is one JSON object on stderr (stdout stays
    // empty) with the gRPC code, the Stele code name and number, the message,
    // the detail fields and the exit code; usage and connection errors too.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    append(&server, "t", "k", "first");
    let conflict = server.run(&[
        "append", "t", "k", "x", "--type", "n", "--expect", "none", "--json",
    ]);
    assert_eq!(conflict.status.code(), Some(3));
    assert_eq!(stdout(&conflict), "");
    let lines = json_lines(&stderr(&conflict));
    assert_eq!(lines.len(), 1, "{}", stderr(&conflict));
    let error = &lines[0]["error"];
    assert_eq!(error["kind"], "server");
    assert_eq!(error["exit_code"], 3);
    assert_eq!(error["grpc_code"], "FAILED_PRECONDITION");
    assert_eq!(error["grpc_code_number"], 9);
    assert_eq!(error["code"], "WRONG_EXPECTED_SEQUENCE");
    assert_eq!(error["code_number"], 10);
    assert_eq!(error["detail"]["actual_sequence"], 0);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty())
    );
    let missing = server.run(&["cursor", "get", "t", "nobody", "--json"]);
    assert_eq!(missing.status.code(), Some(4));
    let error = &json_lines(&stderr(&missing))[0]["error"];
    assert_eq!(error["grpc_code"], "NOT_FOUND");
    assert_eq!(error["code"], "CURSOR_NOT_FOUND");
    assert_eq!(error["code_number"], 17);
    let range = server.run(&["read", "t", "--partition", "0", "--from", "99", "--json"]);
    assert_eq!(range.status.code(), Some(1));
    let error = &json_lines(&stderr(&range))[0]["error"];
    assert_eq!(error["code"], "OFFSET_OUT_OF_RANGE");
    assert!(error["detail"]["earliest_offset"].is_u64(), "{error}");
    assert!(error["detail"]["high_watermark"].is_u64(), "{error}");
    let usage = server.run(&["topic", "create", "u", "--partitions", "0", "--json"]);
    assert_eq!(usage.status.code(), Some(2));
    let error = &json_lines(&stderr(&usage))[0]["error"];
    assert_eq!(error["kind"], "usage");
    assert_eq!(error["exit_code"], 2);
    assert_eq!(error["grpc_code"], serde_json::Value::Null);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let unreachable = command(&[
        "topic",
        "list",
        "--json",
        "--url",
        &format!("http://127.0.0.1:{port}"),
    ])
    .output()
    .expect("run stele");
    assert_eq!(unreachable.status.code(), Some(5));
    assert_eq!(
        json_lines(&stderr(&unreachable))[0]["error"]["kind"],
        "unreachable"
    );
}

#[test]
fn json_output_writes_bytes_as_text_or_a_base64_object_in_every_command() {
    // Goal: one scheme for bytes: a string when valid UTF-8, else
    // {"base64": ...}, in read, read --key, tail and append output. Method: a
    // payload of two bytes that are not UTF-8, given on stdin.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    let mut child = command(&[
        "append",
        "t",
        "k",
        "--type",
        "bin",
        "--json",
        "--url",
        &server.url,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn append");
    {
        use std::io::Write;
        let mut input = child.stdin.take().expect("stdin");
        input.write_all(&[0xff, 0xfe]).expect("write stdin");
    }
    let appended = json_lines(&ok(child.wait_with_output().expect("append output")));
    assert_eq!(appended[0]["key"], "k");
    ok(server.run(&["append", "t", "k", "text", "--type", "txt", "--header", "h=v"]));
    let binary = serde_json::json!({"base64": "//4="});
    for args in [
        vec!["read", "t", "--json"],
        vec!["read", "t", "--key", "k", "--json"],
        vec!["tail", "t", "--from", "earliest", "--count", "2", "--json"],
    ] {
        let events = json_lines(&ok(server.run(&args)));
        assert_eq!(events.len(), 2, "{args:?}");
        assert_eq!(events[0]["payload"], binary, "{args:?}");
        assert_eq!(events[0]["key"], "k", "{args:?}");
        assert_eq!(events[1]["payload"], "text", "{args:?}");
        assert_eq!(events[1]["headers"]["h"], "v", "{args:?}");
        assert!(events[0].get("payload_base64").is_none(), "{args:?}");
    }
}

#[test]
fn text_output_escapes_terminal_control_characters() {
    // Goal: an event cannot drive the terminal: ESC, BEL, other C0 and C1
    // controls in keys, payloads and headers are printed as escapes in text
    // output (read, read --key, tail), and JSON output carries them escaped too.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    let payload = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m";
    ok(server.run(&[
        "append",
        "t",
        "key\u{1b}[1m",
        payload,
        "--type",
        "n",
        "--header",
        "h=\u{1b}[5m",
    ]));
    let dangerous = |text: &str| text.chars().any(|c| c.is_control() && c != '\n');
    for args in [
        vec!["read", "t"],
        vec!["read", "t", "--key", "key\u{1b}[1m"],
        vec!["tail", "t", "--from", "earliest", "--count", "1"],
    ] {
        let text = ok(server.run(&args));
        assert!(!dangerous(&text), "{args:?}: {text:?}");
        assert!(
            text.contains("\\x1b[2J\\x1b]0;owned\\x07\\x9b31m"),
            "{args:?}: {text}"
        );
        assert!(text.contains("key\\x1b[1m@0"), "{args:?}: {text}");
        assert!(text.contains("[h=\\x1b[5m]"), "{args:?}: {text}");
    }
    let json = ok(server.run(&["read", "t", "--json"]));
    assert!(!dangerous(&json), "{json:?}");
    assert_eq!(json_lines(&json)[0]["payload"], payload);
}

#[test]
fn tail_resumes_after_server_restarts_printing_every_event_once_in_order() {
    // Goal: `tail` survives a crash (SIGKILL) and a graceful restart (SIGTERM)
    // of the server: it says so on stderr, reconnects, and resumes after the
    // last event it printed in every partition. Method: tail a 3-partition topic
    // from the earliest event with --count 30; append 10 events, wait until
    // they are printed, restart the server on the same directory and port, and
    // repeat twice; then every event must have been printed exactly once, in
    // offset order per partition.
    let (_dir, data) = temporary();
    let mut server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "3"]));
    let url = server.url.clone();
    let tail = Running::spawn(&[
        "tail", "t", "--from", "earliest", "--count", "30", "--json", "--url", &url,
    ]);
    let mut printed = Vec::new();
    for round in 0..3 {
        for index in round * 10..round * 10 + 10 {
            append(&server, "t", &format!("key-{}", index % 7), &format!("e{index}"));
        }
        printed.extend(tail.take(10));
        let address = server.address().to_string();
        match round {
            0 => server.kill(),
            1 => assert!(server.terminate().success()),
            _ => break,
        }
        server = Server::start_on(&data, &address, &[], &[]);
    }
    let (status, rest, stderr) = tail.finish();
    assert!(status.success(), "tail exited with {status:?}: {stderr}");
    assert!(rest.is_empty(), "printed more than --count: {rest:?}");
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    assert!(stderr.contains("resuming at"), "{stderr}");
    let events = json_lines(&printed.join("\n"));
    let mut payloads: Vec<&str> = events
        .iter()
        .filter_map(|event| event["payload"].as_str())
        .collect();
    payloads.sort_by_key(|payload| payload[1..].parse::<u32>().expect("a numbered payload"));
    let expected: Vec<String> = (0..30).map(|index| format!("e{index}")).collect();
    assert_eq!(payloads, expected, "each event exactly once");
    for partition in 0..3 {
        let offsets: Vec<u64> = positions(&events)
            .into_iter()
            .filter(|(event_partition, _)| *event_partition == partition)
            .map(|(_, offset)| offset)
            .collect();
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, dense, "partition {partition} in offset order");
    }
}

#[test]
fn tail_with_a_cursor_and_commit_starts_at_its_offsets_and_commits_what_it_printed() {
    // Goal: `tail --cursor NAME --commit` starts at the cursor's committed
    // offsets, commits the offset after the last printed event on exit
    // (--count reached) and periodically while running, and creates a cursor
    // that does not exist yet (starting at the earliest event).
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for index in 0..5 {
        append(&server, "t", "k", &format!("e{index}"));
    }
    let committed = |name: &str| -> Option<u64> {
        let output = server.run(&["cursor", "get", "t", name, "--json"]);
        if !output.status.success() {
            return None;
        }
        json_lines(&stdout(&output))[0]["partitions"][0]["committed_offset"].as_u64()
    };
    ok(server.run(&["cursor", "commit", "t", "reader", "0=1"]));
    let first = json_lines(&ok(server.run(&[
        "tail", "t", "--cursor", "reader", "--commit", "--count", "2", "--json",
    ])));
    assert_eq!(positions(&first), [(0, 1), (0, 2)]);
    assert_eq!(committed("reader"), Some(3));
    let second = json_lines(&ok(server.run(&[
        "tail", "t", "--cursor", "reader", "--commit", "--count", "1", "--json",
    ])));
    assert_eq!(positions(&second), [(0, 3)]);
    assert_eq!(committed("reader"), Some(4));

    assert_eq!(committed("fresh"), None);
    let tail = Running::spawn(&[
        "tail",
        "t",
        "--cursor",
        "fresh",
        "--commit",
        "--commit-interval",
        "100ms",
        "--json",
        "--url",
        &server.url,
    ]);
    let lines = tail.take(5);
    assert_eq!(
        positions(&json_lines(&lines.join("\n"))),
        [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    );
    wait_until("fresh committed at 5", || committed("fresh") == Some(5));
    append(&server, "t", "k", "e5");
    assert_eq!(positions(&json_lines(&tail.take(1)[0])), [(0, 5)]);
    wait_until("fresh committed at 6", || committed("fresh") == Some(6));
    signal(&tail.child, libc::SIGINT);
    let (status, rest, stderr) = tail.finish();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(rest.is_empty(), "{rest:?}");
    let without_cursor = server.run(&["tail", "t", "--commit"]);
    assert_eq!(without_cursor.status.code(), Some(2));
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("list directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn tokens_from_the_command_line_and_no_secret_is_stored_or_logged() {
    // Goal: the whole token workflow through `stele` (generate, bootstrap, create
    // with grants and expiry, use, list, revoke), and no secret in any file of
    // the data directory, in the audit log or in the server's debug log.
    let (_dir, data) = temporary();
    let bootstrap = stdout(&command(&["token", "generate"]).output().expect("generate"))
        .trim()
        .to_string();
    assert!(
        bootstrap.starts_with("stele_") && bootstrap.len() == 72,
        "{bootstrap}"
    );
    let token_file = data.with_extension("token");
    std::fs::write(&token_file, format!("{bootstrap}\n")).expect("write token file");
    let audit = data.with_extension("audit");
    let server = Server::start_with(
        &data,
        &[
            "--auth",
            "required",
            "--bootstrap-token-file",
            token_file.to_str().expect("UTF-8"),
            "--audit-log",
            audit.to_str().expect("UTF-8"),
            "--log-level",
            "debug",
        ],
        &[],
    );
    let refused = server.run(&["topic", "list"]);
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("UNAUTHENTICATED"),
        "{}",
        stderr(&refused)
    );
    ok(server.run_as(&bootstrap, &["topic", "create", "orders"]));
    let ci = ok(server.run_as(
        &bootstrap,
        &[
            "token",
            "create",
            "--name",
            "ci",
            "--grant",
            "read:orders",
            "--expires",
            "30d",
        ],
    ))
    .trim()
    .to_string();
    assert!(ci.starts_with("stele_"), "{ci}");
    let denied = server.run_as(&ci, &["append", "orders", "k", "x", "--type", "t"]);
    assert_eq!(denied.status.code(), Some(6), "{}", stderr(&denied));
    assert!(
        stderr(&denied).contains("PERMISSION_DENIED"),
        "{}",
        stderr(&denied)
    );
    ok(server.run_as(&bootstrap, &["append", "orders", "k", "x", "--type", "t"]));
    assert!(ok(server.run_as(&ci, &["read", "orders"])).contains("k@0"));
    let whoami = ok(server.run_as(&ci, &["token", "whoami"]));
    assert!(
        whoami.contains("read:orders") && whoami.contains("(ci)"),
        "{whoami}"
    );
    let listed = json_lines(&ok(server.run_as(&bootstrap, &["token", "list", "--json"])));
    assert_eq!(listed.len(), 2, "{listed:?}");
    let ci_entry = listed
        .iter()
        .find(|token| token["name"] == "ci")
        .expect("ci listed");
    assert!(ci_entry["expires_at_ms"].as_u64().expect("expiry") > 0);
    let id = ci_entry["id"].as_str().expect("id").to_string();
    assert_eq!(&ci[6..22], id);
    ok(server.run_as(&bootstrap, &["token", "revoke", &id]));
    let revoked = server.run_as(&ci, &["read", "orders"]);
    assert!(
        stderr(&revoked).contains("UNAUTHENTICATED"),
        "{}",
        stderr(&revoked)
    );
    let log = std::sync::Arc::clone(&server.log);
    assert!(server.terminate().success());

    let secrets = [&bootstrap[23..], &ci[23..]];
    let mut searched = files_under(&data);
    searched.push(audit.clone());
    for path in &searched {
        let bytes = std::fs::read(path).expect("read");
        for secret in secrets {
            assert!(
                !bytes
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes()),
                "a token secret in {}",
                path.display()
            );
        }
    }
    let log = log.lock().expect("log").join("\n");
    assert!(log.contains("DEBUG"), "the server logged at debug");
    for secret in secrets {
        assert!(!log.contains(secret), "a token secret in the server log");
    }
    let audit = std::fs::read_to_string(&audit).expect("audit log");
    for rpc in ["\"CreateToken\"", "\"RevokeToken\"", "\"CreateTopic\""] {
        assert!(audit.contains(rpc), "{rpc} not audited: {audit}");
    }
    assert!(
        audit.contains("PERMISSION_DENIED") && audit.contains("UNAUTHENTICATED"),
        "{audit}"
    );
}

#[test]
fn serving_beyond_loopback_without_auth_is_warned_about() {
    // Goal: the laptop default stays quiet on loopback, and says loudly when
    // the same default listens where others can reach it.
    let (_dir, data) = temporary();
    let open = Server::start_on(&data, "0.0.0.0:0", &[], &[]);
    let lines = std::sync::Arc::clone(&open.log);
    assert!(open.terminate().success());
    let text = lines.lock().expect("log").join("\n");
    assert!(text.contains("WITHOUT AUTHENTICATION"), "{text}");
    let (_dir, data) = temporary();
    let local = Server::start(&data);
    let lines = std::sync::Arc::clone(&local.log);
    assert!(local.terminate().success());
    let text = lines.lock().expect("log").join("\n");
    assert!(!text.contains("WITHOUT AUTHENTICATION"), "{text}");
}

#[test]
fn group_commands_create_list_describe_seek_and_delete() {
    // Goal: the group commands round-trip through a real server: settings given
    // on create come back (defaults filled in), a taken name is a conflict (3),
    // an unknown group or topic is not found (4), a seek without a position is a
    // usage error (2), and a deleted group is gone.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "orders", "--partitions", "2"]));
    let created = json_lines(&ok(server.run(&[
        "group",
        "create",
        "billing",
        "--topic",
        "orders",
        "--lease",
        "10s",
        "--max-deliveries",
        "3",
        "--on-exhausted",
        "block",
        "--start",
        "earliest",
        "--json",
    ])));
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["name"], "billing");
    assert_eq!(created[0]["topic"], "orders");
    assert_eq!(created[0]["settings"]["lease_ms"], 10_000);
    assert_eq!(created[0]["settings"]["max_deliveries"], 3);
    assert_eq!(created[0]["settings"]["on_exhausted"], "block");
    assert_eq!(created[0]["settings"]["dead_letter_topic"], "orders.parked");
    let again = server.run(&["group", "create", "billing", "--topic", "orders"]);
    assert_eq!(again.status.code(), Some(3), "{}", stderr(&again));
    assert!(stderr(&again).contains("(GROUP_EXISTS)"), "{}", stderr(&again));
    let no_topic = server.run(&["group", "create", "other", "--topic", "missing"]);
    assert_eq!(no_topic.status.code(), Some(4), "{}", stderr(&no_topic));
    ok(server.run(&["topic", "create", "audit", "--partitions", "1"]));
    ok(server.run(&["group", "create", "archive", "--topic", "audit"]));
    let listed = ok(server.run(&["group", "list"]));
    assert!(listed.contains("billing  topic=orders"), "{listed}");
    assert!(listed.contains("archive  topic=audit"), "{listed}");
    let of_topic = json_lines(&ok(server.run(&["group", "list", "--topic", "audit", "--json"])));
    assert_eq!(of_topic.len(), 1);
    assert_eq!(of_topic[0]["name"], "archive");
    let described = json_lines(&ok(server.run(&["group", "describe", "billing", "--json"])));
    assert_eq!(described[0]["partitions"].as_array().map(Vec::len), Some(2));
    assert_eq!(described[0]["members"].as_array().map(Vec::len), Some(0));
    let text = ok(server.run(&["group", "describe", "billing"]));
    assert!(text.contains("group billing on topic orders"), "{text}");
    assert!(text.contains("no members"), "{text}");
    for index in 0..3 {
        append(&server, "orders", &format!("key-{index}"), "x");
    }
    let unsettled = json_lines(&ok(server.run(&["group", "describe", "billing", "--json"])));
    assert_eq!(unsettled[0]["lag"], 3);
    let seeked = json_lines(&ok(
        server.run(&["group", "seek", "billing", "--latest", "--json"])
    ));
    assert_eq!(seeked[0]["lag"], 0);
    let replay = json_lines(&ok(server.run(&[
        "group", "seek", "billing", "--offset", "0=0", "--offset", "1=0", "--json",
    ])));
    assert_eq!(replay[0]["lag"], 3);
    let no_position = server.run(&["group", "seek", "billing"]);
    assert_eq!(no_position.status.code(), Some(2));
    let bad_offset = server.run(&["group", "seek", "billing", "--offset", "zero=1"]);
    assert_eq!(bad_offset.status.code(), Some(2));
    let parked = ok(server.run(&["group", "parked", "billing"]));
    assert_eq!(parked, "no parked events for billing\n");
    ok(server.run(&["group", "delete", "billing"]));
    let missing = server.run(&["group", "describe", "billing"]);
    assert_eq!(missing.status.code(), Some(4));
    assert!(
        stderr(&missing).contains("(GROUP_NOT_FOUND)"),
        "{}",
        stderr(&missing)
    );
    let remaining = ok(server.run(&["group", "list"]));
    assert!(!remaining.contains("billing"), "{remaining}");
}

#[test]
fn consume_prints_and_acks_delivered_events_and_a_next_member_gets_the_rest() {
    // Goal: `consume --max N` prints N delivered events as `tail` does and acks
    // them: a second run of the group prints the others, so that both runs
    // together print every event once, each key in order, and the group ends
    // settled. TOPIC must be the group's; --create makes a missing group and
    // tolerates an existing one.
    let (_dir, data) = temporary();
    let server = Server::start(&data);
    ok(server.run(&["topic", "create", "t", "--partitions", "1"]));
    for (key, payload) in [("a", "a0"), ("b", "b0"), ("a", "a1"), ("b", "b1"), ("a", "a2")] {
        append(&server, "t", key, payload);
    }
    // A short lease: a delivery left unprinted at exit comes back soon even if
    // the server waits for the lease before delivering it again.
    ok(server.run(&[
        "group", "create", "readers", "--topic", "t", "--start", "earliest", "--lease", "2s",
    ]));
    let first = json_lines(&ok(
        server.run(&["consume", "t", "--group", "readers", "--max", "3", "--json"])
    ));
    assert_eq!(first.len(), 3, "{first:?}");
    let second = json_lines(&ok(server.run(&[
        "consume",
        "t",
        "--group",
        "readers",
        "--max",
        "2",
        "--instance-id",
        "reader-2",
        "--json",
    ])));
    assert_eq!(second.len(), 2, "{second:?}");
    let mut per_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for event in first.iter().chain(&second) {
        per_key
            .entry(event["key"].as_str().expect("a text key").to_string())
            .or_default()
            .push(event["payload"].as_str().expect("a text payload").to_string());
    }
    assert_eq!(per_key["a"], ["a0", "a1", "a2"]);
    assert_eq!(per_key["b"], ["b0", "b1"]);
    wait_until("the group settled", || {
        let described = json_lines(&ok(server.run(&["group", "describe", "readers", "--json"])));
        described[0]["lag"] == 0
    });

    let mismatch = server.run(&["consume", "other", "--group", "readers", "--max", "1"]);
    assert_eq!(mismatch.status.code(), Some(2), "{}", stderr(&mismatch));
    assert!(
        stderr(&mismatch).contains("consumes topic t, not other"),
        "{}",
        stderr(&mismatch)
    );
    let unknown = server.run(&["consume", "t", "--group", "nobody", "--max", "1"]);
    assert_eq!(unknown.status.code(), Some(4), "{}", stderr(&unknown));
    for _ in 0..2 {
        let text = ok(server.run(&[
            "consume", "t", "--group", "fresh", "--create", "--start", "earliest", "--max", "1",
        ]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].starts_with("0/"), "tail's format: {text}");
        assert!(lines[0].contains(" n "), "tail's format: {text}");
    }
}
