//! A JetStream cluster on loopback for tests (feature `test-cluster`): every
//! node on free ports, with a fresh store under a temporary directory and
//! `sync_interval: always`, killed when the cluster is dropped.
//!
//! Readiness is read from each node's log, not guessed with sleeps: a node is
//! up once it logs that it knows the JetStream metadata leader. Each node's
//! last [`LOG_LINES_KEPT`] log lines are kept for failure reports.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// The longest one try of [`wait_for_r3`] waits for its answer.
const PROBE_TRY_MAX: Duration = Duration::from_secs(2);

/// How long a node may take to find the metadata leader.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

/// What a node logs once it knows the JetStream metadata leader (itself or another).
const READY_LINE: &str = "metadata leader";

/// Log lines kept per node (the newest), across its restarts.
pub const LOG_LINES_KEPT: usize = 400;

/// One node's ports and files.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    store: PathBuf,
    process: Option<(Child, Receiver<String>)>,
    /// The newest log lines read so far, oldest first.
    log: VecDeque<String>,
}

impl Node {
    fn keep(&mut self, line: String) {
        if self.log.len() == LOG_LINES_KEPT {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Moves the lines logged since the last look into `log`.
    fn drain(&mut self) {
        let mut lines = Vec::new();
        if let Some((_, receiver)) = &self.process {
            lines.extend(receiver.try_iter());
        }
        for line in lines {
            self.keep(line);
        }
    }
}

/// A running cluster; every node is killed on drop.
#[derive(Debug)]
pub struct Cluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// `count` distinct free TCP ports on 127.0.0.1: all are held bound (port 0)
/// until every one is picked, so that the kernel cannot hand out one twice,
/// then released for the nodes to bind.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

impl Cluster {
    /// Starts `size` nodes of `binary` (nats-server 2.12 or newer) and waits
    /// until each knows the metadata leader.
    ///
    /// # Errors
    /// I/O errors writing the configuration or starting a node, or a node
    /// that exits or stays without a leader for a minute.
    pub fn start(binary: &Path, size: usize) -> std::io::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("stele-nats-").tempdir()?;
        let picked = free_ports(3 * size)?;
        let ports: Vec<(u16, u16, u16)> = picked
            .chunks(3)
            .map(|chunk| (chunk[0], chunk[1], chunk[2]))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, cluster, _)| format!("nats-route://127.0.0.1:{cluster}"))
            .collect();
        let mut nodes = Vec::with_capacity(size);
        for (index, (client, cluster, monitor)) in ports.iter().enumerate() {
            let name = format!("n{index}");
            let store = dir.path().join(format!("{name}-store"));
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: \"{}\", sync_interval: always }}\n\
                     cluster {{ name: stele-test, listen: 127.0.0.1:{cluster}, routes: [{}] }}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )?;
            nodes.push(Node {
                name,
                client_port: *client,
                config,
                store,
                process: None,
                log: VecDeque::new(),
            });
        }
        let mut cluster = Cluster {
            binary: binary.to_path_buf(),
            nodes,
            _dir: dir,
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        for index in 0..size {
            cluster.wait_ready(index)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[index];
        node.drain();
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| std::io::Error::other("no stderr pipe"))?;
        let (sender, receiver) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        node.process = Some((child, receiver));
        Ok(())
    }

    fn wait_ready(&mut self, index: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[index];
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            let Some((_, lines)) = &node.process else {
                return Err(std::io::Error::other(format!("{} is not running", node.name)));
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(READY_LINE);
                    node.keep(line);
                    if ready {
                        return Ok(());
                    }
                }
                Err(error) => {
                    let seen: Vec<&str> = node.log.iter().rev().take(20).rev().map(String::as_str).collect();
                    return Err(std::io::Error::other(format!(
                        "{} did not find the JetStream metadata leader ({error}); its last lines:\n{}",
                        node.name,
                        seen.join("\n")
                    )));
                }
            }
        }
    }

    /// `nats://127.0.0.1:P1,nats://127.0.0.1:P2,...`: every node's client URL.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("nats://127.0.0.1:{}", node.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The client URL of node `index`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[index].client_port)
    }

    /// The server name of node `index` (`n0`, `n1`, ...).
    pub fn name(&self, index: usize) -> &str {
        &self.nodes[index].name
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Kills node `index` with SIGKILL and reaps it.
    ///
    /// # Errors
    /// The signal or the wait failed.
    pub fn kill(&mut self, index: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[index];
        node.drain();
        if let Some((mut child, lines)) = node.process.take() {
            child.kill()?;
            child.wait()?;
            // The reader thread ends with the pipe: whatever the node wrote last is kept.
            while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
                node.keep(line);
            }
        }
        Ok(())
    }

    /// Starts node `index` again with its configuration (the same name and
    /// ports; it must have been killed), first deleting its store when `wipe`,
    /// and waits until it knows the metadata leader.
    ///
    /// # Errors
    /// The node is still running; deleting the store or starting failed; the
    /// node exits or stays without a leader for a minute.
    pub fn restart(&mut self, index: usize, wipe: bool) -> std::io::Result<()> {
        let node = &self.nodes[index];
        if node.process.is_some() {
            return Err(std::io::Error::other(format!("{} is still running", node.name)));
        }
        if wipe {
            match std::fs::remove_dir_all(&node.store) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        self.spawn(index)?;
        self.wait_ready(index)
    }

    /// The newest log lines of node `index` (at most [`LOG_LINES_KEPT`],
    /// across its restarts), oldest first.
    pub fn log(&mut self, index: usize) -> Vec<String> {
        let node = &mut self.nodes[index];
        node.drain();
        node.log.iter().cloned().collect()
    }

    /// The newest `count` log lines of every node, labelled, for a failure report.
    pub fn logs(&mut self, count: usize) -> String {
        let mut report = String::new();
        for index in 0..self.nodes.len() {
            let lines = self.log(index);
            let name = &self.nodes[index].name;
            report.push_str(&format!(
                "--- {name}, its last {} lines:\n",
                count.min(lines.len())
            ));
            for line in &lines[lines.len().saturating_sub(count)..] {
                report.push_str(line);
                report.push('\n');
            }
        }
        report
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some((mut child, _)) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits (at most `wait_max`) until the cluster places an R3 stream: every
/// node knowing the metadata leader does not yet mean the leader counts three
/// peers with JetStream resources. Each try is a real request the cluster
/// answers (a probe stream, deleted afterwards).
///
/// # Errors
/// The last try's error when no R3 stream could be placed in time.
pub async fn wait_for_r3(
    jetstream: &async_nats::jetstream::Context,
    wait_max: Duration,
) -> Result<(), String> {
    use async_nats::jetstream::stream;
    // Each try is short: on a young cluster a request can go unanswered
    // (lost in the metadata leader's election), and one such try must not
    // use up the whole wait.
    let mut jetstream = jetstream.clone();
    jetstream.set_timeout(PROBE_TRY_MAX);
    let deadline = Instant::now() + wait_max;
    loop {
        let created = jetstream
            .create_stream(stream::Config {
                name: "stele-probe".to_string(),
                subjects: vec!["stele-probe".to_string()],
                num_replicas: 3,
                ..stream::Config::default()
            })
            .await;
        match created {
            Ok(_) => break,
            Err(error) if Instant::now() >= deadline => return Err(format!("no R3 stream in time: {error}")),
            Err(_) => tokio::task::yield_now().await,
        }
    }
    loop {
        match jetstream.delete_stream("stele-probe").await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("delete the probe stream: {error}"));
            }
            Err(_) => tokio::task::yield_now().await,
        }
    }
}
