//! What an operator deploys and reads: the files under `deploy/` checked by
//! the tools that consume them (the server's own configuration loader,
//! `systemd-analyze`, `promtool`) and the server's logs as a log shipper or
//! a person at a terminal sees them. Servers bind port 0; every wait is on a
//! line of output or a process exit, never a sleep.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_stele");
/// A failure bound for a line that should come, not a synchronisation delay.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A `stele` command with none of the caller's `STELE_*` or `RUST_LOG` settings.
fn stele(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// `stele serve ARGS --check-config`: the effective configuration as JSON.
fn check_config(args: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    all.push("--check-config");
    let output = stele(&all).output().expect("run stele serve --check-config");
    assert!(
        output.status.success(),
        "stele {all:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    match serde_json::from_str(text.trim()).expect("one JSON object") {
        serde_json::Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// Whether `program` runs at all (it is installed).
fn installed(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

#[test]
fn the_example_config_is_what_the_server_loads_and_names_every_option() {
    // Goal: deploy/stele.toml parses with the server's own loader into the
    // settings it claims, and documents every key the loader knows.
    let path = root().join("deploy/stele.toml");
    let config = check_config(&["--config", path.to_str().expect("UTF-8 path")]);
    assert_eq!(config["data-dir"], "/var/lib/stele");
    assert_eq!(config["listen"], "0.0.0.0:7077");
    assert_eq!(config["metrics-listen"], "0.0.0.0:9187");
    assert_eq!(config["durability"], "always");
    assert_eq!(config["partitions"], 4);
    assert_eq!(config["dedup-window"], "120000ms");
    assert_eq!(config["segment-size"], 128u64 << 20);
    assert_eq!(config["log-format"], "json");
    assert_eq!(config["auth"], "none");
    assert_eq!(config["backend"], serde_json::Value::Null);

    let text = std::fs::read_to_string(&path).expect("read the example");
    let documented: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim_start_matches('#').trim_start();
            let (key, _) = line.split_once(" = ")?;
            key.chars()
                .all(|c| c.is_ascii_lowercase() || c == '-')
                .then_some(key)
        })
        .collect();
    let loaded: BTreeSet<&str> = config.keys().map(String::as_str).collect();
    let undocumented: Vec<_> = loaded.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "keys missing from deploy/stele.toml: {undocumented:?}"
    );
    let unknown: Vec<_> = documented.difference(&loaded).collect();
    assert!(
        unknown.is_empty(),
        "deploy/stele.toml documents unknown keys: {unknown:?}"
    );
}

#[test]
fn every_commented_example_value_is_accepted_too() {
    // Goal: the commented examples are valid values, not just prose: with
    // every `# key = value` line uncommented (and the bootstrap token file
    // made real) the loader accepts the file and takes each value.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = stele(&["token", "generate"])
        .output()
        .expect("stele token generate");
    assert!(token.status.success());
    let token_file = dir.path().join("bootstrap-token");
    std::fs::write(&token_file, &token.stdout).expect("write the token");
    let text = std::fs::read_to_string(root().join("deploy/stele.toml")).expect("read the example");
    let mut uncommented = String::new();
    let mut examples = 0;
    for line in text.lines() {
        match line.strip_prefix("# ") {
            Some(rest) if rest.split_once(" = ").is_some_and(|(key, _)| !key.contains(' ')) => {
                examples += 1;
                uncommented.push_str(rest);
            }
            _ => uncommented.push_str(line),
        }
        uncommented.push('\n');
    }
    assert!(examples >= 15, "only {examples} commented examples found");
    let uncommented = uncommented.replace("/etc/stele/bootstrap-token", token_file.to_str().expect("UTF-8"));
    let file = dir.path().join("stele.toml");
    std::fs::write(&file, uncommented).expect("write the variant");
    let config = check_config(&["--config", file.to_str().expect("UTF-8")]);
    assert_eq!(
        config["backend"],
        "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222"
    );
    assert_eq!(config["nats-namespace"], "prod");
    assert_eq!(config["auth"], "required");
    assert_eq!(config["bootstrap-token-file"], "(set; not shown)");
    assert_eq!(config["tls-client-auth"], "required");
    assert_eq!(config["retention-age"], format!("{}ms", 30u64 * 24 * 3_600_000));
    assert_eq!(config["retention-bytes"], 100u64 << 30);
    assert_eq!(
        config["webhook-allow"],
        serde_json::json!(["10.0.0.0/8", "127.0.0.0/8"])
    );
    assert_eq!(config["audit-log"], "/var/lib/stele/audit.jsonl");
    let secret = String::from_utf8(token.stdout).expect("UTF-8");
    assert!(
        !serde_json::Value::Object(config)
            .to_string()
            .contains(secret.trim()),
        "the effective configuration shows the bootstrap token"
    );
}

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze() {
    // Goal: the unit runs as its own user behind the hardening the issue
    // names, and systemd's own checker finds nothing in it.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/stele.service")).expect("read the unit");
    for setting in [
        "User=stele",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ExecStart=/usr/local/bin/stele serve --config /etc/stele/stele.toml",
    ] {
        assert!(unit.contains(setting), "the unit lacks {setting}");
    }
    if !installed("systemd-analyze", "--version") {
        eprintln!("systemd-analyze is not installed: the unit's syntax was not checked by systemd");
        return;
    }
    // systemd-analyze checks that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("stele.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/stele", BIN)).expect("write the copy");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // It reports unknown keys and bad values on stderr with a zero exit.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("stele.service"))
        .collect();
    assert!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        output.status
    );
}

#[test]
fn the_prometheus_configuration_and_its_rules_pass_promtool() {
    // Goal: the scrape configuration loads the alert rules and both are valid
    // for Prometheus itself; the job name is the one the rules expect.
    let config = std::fs::read_to_string(root().join("deploy/prometheus/prometheus.yml")).expect("read");
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).expect("read");
    assert!(config.contains("job_name: stele"));
    assert!(rules.contains("up{job=\"stele\"}"));
    if !installed("promtool", "--version") {
        // .ci/run installs promtool (Debian's prometheus package) first.
        eprintln!("promtool is not installed: deploy/prometheus was not checked by Prometheus");
        return;
    }
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("deploy/prometheus/prometheus.yml"))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("1 rule files found"));
    // The rules' unit tests: lag alerts for consumers only, absolute runbook URLs.
    let output = Command::new("promtool")
        .args(["test", "rules"])
        .arg(root().join("deploy/prometheus/alerts_test.yml"))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool test rules: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dockerfile_builds_in_two_stages_and_runs_a_command_the_server_accepts() {
    // Goal: without a Docker engine on this machine, check what can be: two
    // stages, a non-root user, and a CMD that the server's loader accepts.
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).expect("read the Dockerfile");
    let froms = text.lines().filter(|line| line.starts_with("FROM ")).count();
    assert!(froms >= 2, "{froms} stages");
    let user = text
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    assert!(text.contains("--locked"), "the build must use Cargo.lock");
    let cmd = text
        .lines()
        .find_map(|line| line.strip_prefix("CMD "))
        .expect("a CMD line");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form");
    assert_eq!(args[0], "serve");
    let args: Vec<&str> = args[1..].iter().map(String::as_str).collect();
    let config = check_config(&args);
    assert_eq!(config["data-dir"], "/var/lib/stele");
    assert_eq!(config["listen"], "0.0.0.0:7077");
    assert_eq!(config["log-format"], "json");
}

/// A `stele serve` child whose stderr lines arrive on a channel.
struct Server {
    child: Child,
    url: String,
    lines: Receiver<String>,
    /// Every stderr line read so far.
    seen: Vec<String>,
}

impl Server {
    fn start(data_dir: &Path, args: &[&str]) -> Server {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--data-dir"];
        all.push(data_dir.to_str().expect("UTF-8 path"));
        all.extend_from_slice(args);
        let mut child = stele(&all)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn stele serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut server = Server {
            child,
            url: String::new(),
            lines,
            seen: Vec::new(),
        };
        let line = server.wait_for(|line| line.starts_with("stele: listening on "));
        let address = line
            .trim_start_matches("stele: listening on ")
            .split(',')
            .next()
            .expect("an address")
            .to_string();
        server.url = format!("http://{address}");
        server
    }

    /// The next stderr line matching `wanted` (all lines are kept in `seen`).
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(LINE_TIMEOUT)
                .unwrap_or_else(|error| panic!("no wanted line ({error}); seen: {:#?}", self.seen));
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// Runs a client command against the server and checks it succeeded.
    fn run(&self, args: &[&str]) {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--url", &self.url]);
        let output = stele(&all).output().expect("run a client command");
        assert!(
            output.status.success(),
            "stele {all:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGTERM, then every remaining stderr line until the process exits.
    fn stop(mut self) -> Vec<String> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a valid signal number has no memory-safety
        // preconditions; the pid is our own child, not yet reaped.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "kill failed");
        let status = self.child.wait().expect("wait for stele serve");
        assert!(status.success(), "stele serve exited with {status}");
        // The reader thread ends at EOF, which the exit brought.
        while let Ok(line) = self.lines.recv_timeout(LINE_TIMEOUT) {
            self.seen.push(line);
        }
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON log lines among `lines` (the `stele:` announcements are plain).
fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter(|line| !line.starts_with("stele: "))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect()
}

fn messages<'a>(lines: &'a [serde_json::Value], message: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|line| line["message"] == message).collect()
}

#[test]
fn json_logs_tell_the_lifecycle_once_per_event_and_no_secret() {
    // Goal: at the default level a log shipper gets one JSON object per line
    // for each lifecycle event: start with the effective configuration (the
    // bootstrap token not in it), the data directory opened, a topic created
    // and deleted, shutdown; and reopening says what recovery found.
    let dir = tempfile::tempdir().expect("tempdir");
    let token = stele(&["token", "generate"])
        .output()
        .expect("stele token generate");
    let token = String::from_utf8(token.stdout).expect("UTF-8").trim().to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).expect("write the token");
    let data = dir.path().join("data");
    let args = [
        "--log-format",
        "json",
        "--auth",
        "required",
        "--bootstrap-token-file",
        token_file.to_str().expect("UTF-8"),
        "--audit-log",
        "off",
    ];
    let mut server = Server::start(&data, &args);
    server.run(&[
        "topic",
        "create",
        "orders",
        "--partitions",
        "2",
        "--token",
        &token,
    ]);
    server.run(&["append", "orders", "k", "{}", "--type", "t", "--token", &token]);
    server.run(&["topic", "create", "scratch", "--token", &token]);
    server.run(&["topic", "delete", "scratch", "--token", &token]);
    server.wait_for(|line| line.contains("topic deleted"));
    let lines = server.stop();
    let logs = json_lines(&lines);
    for line in &lines {
        assert!(!line.contains(&token), "a log line shows the token: {line}");
    }
    let start = messages(&logs, "starting stele serve");
    assert_eq!(start.len(), 1, "{logs:#?}");
    let config = start[0]["config"].as_str().expect("the configuration as text");
    assert!(config.contains("\"auth\":\"required\""), "{config}");
    assert!(config.contains("(set; not shown)"), "{config}");
    assert_eq!(start[0]["level"], "INFO");
    assert_eq!(messages(&logs, "data directory opened").len(), 1);
    let created = messages(&logs, "topic created");
    let created: Vec<_> = created
        .iter()
        .map(|line| line["topic"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(created, ["orders", "scratch"]);
    let deleted = messages(&logs, "topic deleted");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["topic"], "scratch");
    assert_eq!(
        messages(&logs, "shutting down: finishing in-flight calls").len(),
        1
    );
    assert_eq!(messages(&logs, "log closed").len(), 1);

    // Reopening: recovery's summary names what it found.
    let server = Server::start(&data, &args);
    let lines = server.stop();
    let logs = json_lines(&lines);
    let opened = messages(&logs, "data directory opened");
    assert_eq!(opened.len(), 1, "{logs:#?}");
    assert_eq!(opened[0]["topics"], 1);
    assert_eq!(opened[0]["partitions"], 2);
    assert!(opened[0]["elapsed_ms"].is_u64());
    assert_eq!(opened[0]["torn_bytes_cut"], 0);
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // Goal: a journal or a log file gets plain text, not ANSI escapes.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &[]);
    server.run(&["topic", "create", "orders"]);
    server.wait_for(|line| line.contains("topic created"));
    let lines = server.stop();
    assert!(lines.iter().any(|line| line.contains("INFO")), "{lines:#?}");
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "a colour code in {line:?}");
    }
}

#[test]
fn debug_is_steles_own_story_without_http2_frames() {
    // Goal: `--log-level debug` raises Stele's crates only: h2 (which logs
    // every frame at debug), hyper and tonic stay at warn.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path(), &["--log-level", "debug", "--log-format", "json"]);
    server.run(&["append", "orders", "k", "{}", "--type", "t"]);
    server.run(&["read", "orders"]);
    server.wait_for(|line| line.contains("topic created"));
    let lines = server.stop();
    let logs = json_lines(&lines);
    assert!(logs.len() >= 3, "{logs:#?}");
    for line in &logs {
        let target = line["target"].as_str().expect("a target");
        let level = line["level"].as_str().expect("a level");
        assert!(
            target.starts_with("stele") || level == "WARN" || level == "ERROR",
            "a {level} line from {target}: {line}"
        );
    }
}
