//! The README's tours run verbatim: each `sh` block under "## A tour",
//! "## A webhook tour", "## A security tour" and "## Consumer groups" is extracted and run with `bash -e` in a temporary
//! directory. A `cargo` on PATH that does nothing stands in for the build, and
//! `target/release/stele` there is this build's binary; the server's port and the
//! receiver's address come from the variables the tours honour (`STELE_LISTEN`,
//! `STELE_URL`, `RECEIVER`), set to free ports, so tests never collide on 7077.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A tour that takes longer than this has hung.
const TOUR_DEADLINE: Duration = Duration::from_secs(120);

/// The first `sh` code block after the heading `heading`.
fn block_after(readme: &str, heading: &str) -> String {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a sh block in the section") + "```sh\n".len();
    let close = rest[open..].find("\n```").expect("the block ends");
    rest[open..open + close].to_string()
}

/// A port that was free a moment ago (the kernel picks it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind port 0")
        .port()
}

fn run_tour(script: &str, name: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let release = work.path().join("target").join("release");
    std::fs::create_dir_all(&release).expect("target/release");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stele"), release.join("stele")).expect("link stele");
    let fake_bin = work.path().join("fake-bin");
    std::fs::create_dir_all(&fake_bin).expect("fake-bin");
    let cargo = fake_bin.join("cargo");
    std::fs::write(&cargo, "#!/bin/sh\nexit 0\n").expect("fake cargo");
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let script_path = work.path().join(format!("{name}.sh"));
    std::fs::write(&script_path, script).expect("write script");
    let port = free_port();
    let receiver_port = free_port();
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("bash");
    command
        .arg("-e")
        .arg(&script_path)
        .current_dir(work.path())
        .env("PATH", path)
        .env("STELE_LISTEN", format!("127.0.0.1:{port}"))
        .env("STELE_URL", format!("http://127.0.0.1:{port}"))
        .env("RECEIVER", format!("127.0.0.1:{receiver_port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (variable, _) in std::env::vars() {
        if (variable.starts_with("STELE_") && variable != "STELE_LISTEN" && variable != "STELE_URL")
            || variable == "RUST_LOG"
        {
            command.env_remove(variable);
        }
    }
    let mut child = command.spawn().expect("bash runs");
    let group = child.id();
    let deadline = Instant::now() + TOUR_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for bash") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever happened, nothing the tour started may outlive it.
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
    let output = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    match status {
        Some(status) if status.success() => {}
        Some(status) => panic!("{name} failed ({status}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}"),
        None => panic!("{name} hung:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"),
    }
    check(name, &stdout, work.path());
}

fn check(name: &str, stdout: &str, work: &Path) {
    match name {
        "tour" => {
            assert!(stdout.contains("conflict, exit 3"), "{stdout}");
            assert!(
                stdout.contains("no problems") || work.join("stele-data").exists(),
                "{stdout}"
            );
        }
        "webhook-tour" => {
            assert_eq!(stdout.matches("signature ok").count(), 4, "{stdout}");
            assert!(!stdout.contains("SIGNATURE BAD"), "{stdout}");
            assert!(stdout.contains("redriving 1 dead letters to billing"), "{stdout}");
            assert!(stdout.contains("dead-lettered=1"), "{stdout}");
        }
        "security-tour" => {
            for outcome in ["refused, exit 6", "denied, exit 6", "revoked, exit 6"] {
                assert!(stdout.contains(outcome), "{outcome} missing: {stdout}");
            }
            assert!(
                stdout.contains("invoice-42"),
                "the read-only token reads: {stdout}"
            );
            for result in ["\"result\":\"PERMISSION_DENIED\"", "\"rpc\":\"RevokeToken\""] {
                assert!(stdout.contains(result), "{result} not audited: {stdout}");
            }
            for token in ["admin.token", "dashboard.token"] {
                let text = std::fs::read_to_string(work.join(token)).expect("the token file");
                let secret = text.trim().get(23..).expect("a whole token");
                assert!(!stdout.contains(secret), "a secret of {token} was printed");
            }
        }
        "groups-tour" => {
            let mut lines = Vec::new();
            for member in ["worker-a.out", "worker-b.out"] {
                let text = std::fs::read_to_string(work.join(member)).expect("a member's output");
                lines.extend(text.lines().map(str::to_string));
            }
            assert_eq!(lines.len(), 12, "each member printed six events: {lines:?}");
            for invoice in 1..=4 {
                let steps: Vec<&String> = lines
                    .iter()
                    .filter(|line| line.contains(&format!(" invoice-{invoice}@")))
                    .collect();
                assert_eq!(steps.len(), 3, "invoice-{invoice}: {steps:?}");
            }
            assert!(stdout.contains("lag 0, in flight 0"), "{stdout}");
        }
        _ => unreachable!("known tours only"),
    }
}

#[test]
fn the_readme_tours_run_verbatim() {
    // Goal: a reader who pastes the README's tours into a shell sees them succeed;
    // both run with `bash -e`, so any failing command fails the test.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    run_tour(&block_after(&readme, "## A tour"), "tour");
    run_tour(&block_after(&readme, "## A webhook tour"), "webhook-tour");
    run_tour(&block_after(&readme, "## A security tour"), "security-tour");
    run_tour(&block_after(&readme, "## Consumer groups"), "groups-tour");
}
