//! A `stele serve` child process for the integration tests that need a real
//! process to kill (`tests/webhook.rs`, `tests/groups.rs`).

use std::path::Path;
use std::process::Command;

/// A `stele serve` child process on port 0; killed on drop.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `stele serve` over `data_dir` (on the test cluster when
/// `STELE_TEST_BACKEND` names one), loopback webhook targets allowed, and
/// waits for its address.
pub fn spawn_serve(data_dir: &Path) -> ServeProcess {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_stele"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--webhook-allow",
            "127.0.0.0/8",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(match stele::client::test_backend() {
            Some(urls) => vec![
                "--backend".to_string(),
                urls,
                "--nats-namespace".to_string(),
                stele::client::test_namespace(data_dir),
            ],
            None => Vec::new(),
        })
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stele serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("stele serve announces its address")
            .expect("read stderr");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(',').next().expect("address").to_string();
        }
    };
    // Keep draining stderr so that the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServeProcess {
        child,
        url: format!("http://{address}"),
    }
}
