//! A JetStream cluster on loopback for tests (feature `test-cluster`): every
//! node on free ports, with a fresh store under a temporary directory and
//! `sync_interval: always`, killed when the cluster is dropped.
//!
//! Readiness is read from each node's log, not guessed with sleeps: a node is
//! up once it logs that it knows the JetStream metadata leader.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long a node may take to find the metadata leader.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);

/// What a node logs once it knows the JetStream metadata leader (itself or another).
const READY_LINE: &str = "metadata leader";

/// One node's ports and files.
#[derive(Debug)]
struct Node {
    name: String,
    client_port: u16,
    config: PathBuf,
    process: Option<(Child, Receiver<String>)>,
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
                process: None,
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
        let name = node.name.clone();
        let Some((_, lines)) = &node.process else {
            return Err(std::io::Error::other(format!("{name} is not running")));
        };
        let deadline = Instant::now() + READY_WAIT_MAX;
        let mut seen = std::collections::VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(READY_LINE) => return Ok(()),
                Ok(line) => {
                    if seen.len() == 20 {
                        seen.pop_front();
                    }
                    seen.push_back(line);
                }
                Err(error) => {
                    return Err(std::io::Error::other(format!(
                        "{name} did not find the JetStream metadata leader ({error}); its last lines:\n{}",
                        Vec::from(seen).join("\n")
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
        if let Some((mut child, _)) = self.nodes[index].process.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
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
    jetstream
        .delete_stream("stele-probe")
        .await
        .map(|_| ())
        .map_err(|error| format!("delete the probe stream: {error}"))
}
