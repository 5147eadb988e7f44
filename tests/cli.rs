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
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], &[])
    }

    fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let data = data_dir.to_str().expect("UTF-8 path");
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir", data];
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            stderr: receiver,
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

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with a valid signal number has no memory-safety
        // preconditions; the pid is our own child, not yet reaped.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill failed");
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
