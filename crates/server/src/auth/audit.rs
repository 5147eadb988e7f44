//! The audit log: one JSON object per line, for every admin and token operation
//! and every refused call, with the time, the principal (a token id or a
//! certificate subject, never a secret), the peer address, the RPC, the topic
//! and the result.
//!
//! A file target is reopened by [`AuditLog::reopen`] (the server calls it on
//! SIGHUP), so that logrotate can move the file away and signal the server.
//!
//! Lines go through a bounded queue to a writer thread, so a slow disk never
//! stalls a call, and through a token bucket ([`LINES_PER_SECOND`], burst
//! [`LINES_BURST`]) so that a flood of bad requests cannot fill the disk. Lines
//! dropped by either are counted and reported in the next line written
//! (`"event":"audit_suppressed"`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Instant, SystemTime};

/// Sustained lines per second.
pub const LINES_PER_SECOND: f64 = 200.0;
/// Lines written at once after a quiet spell.
pub const LINES_BURST: f64 = 2000.0;
/// Lines waiting for the writer thread; more are dropped and counted.
const QUEUE_LINES_MAX: usize = 4096;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditTarget {
    /// Nowhere.
    #[default]
    Off,
    /// The server's standard error, beside its log.
    Stderr,
    /// Appended to a file (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for AuditTarget {
    type Err = String;

    fn from_str(text: &str) -> Result<AuditTarget, String> {
        Ok(match text {
            "" => return Err("an empty audit target; use off, stderr or a file path".to_string()),
            "off" | "none" => AuditTarget::Off,
            "stderr" | "-" => AuditTarget::Stderr,
            path => AuditTarget::File(PathBuf::from(path)),
        })
    }
}

/// One audited event.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    /// `token:<id>`, `certificate:<subject>`, `anonymous`, or `unauthenticated`.
    pub principal: &'a str,
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// The RPC's name.
    pub rpc: &'a str,
    /// The topic, when the call names one.
    pub topic: Option<&'a str>,
    /// `ok`, or the stable error name (`PERMISSION_DENIED`, ...).
    pub result: &'a str,
    /// More: why authentication failed, the grant missing, the token acted on.
    pub detail: Option<&'a str>,
}

/// The audit log of a server.
pub struct AuditLog {
    sender: Option<mpsc::SyncSender<Message>>,
    writer: Option<std::thread::JoinHandle<()>>,
    bucket: Mutex<Bucket>,
    suppressed: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("on", &self.sender.is_some())
            .field("suppressed", &self.suppressed.load(Ordering::Relaxed))
            .finish()
    }
}

/// What the writer thread receives.
enum Message {
    /// Lines to append.
    Lines(String),
    /// Reopen the file (it was moved away by a log rotation).
    Reopen,
}

/// Opens a file target for appending.
fn open_target(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path)
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl AuditLog {
    /// Starts the writer for `target`.
    ///
    /// # Errors
    /// The file cannot be opened for appending.
    pub fn start(target: &AuditTarget) -> std::io::Result<AuditLog> {
        let out: Option<Box<dyn Write + Send>> = match target {
            AuditTarget::Off => None,
            AuditTarget::Stderr => Some(Box::new(std::io::stderr())),
            AuditTarget::File(path) => Some(Box::new(open_target(path)?)),
        };
        let path = match target {
            AuditTarget::File(path) => Some(path.clone()),
            AuditTarget::Off | AuditTarget::Stderr => None,
        };
        let (sender, writer) = match out {
            None => (None, None),
            Some(mut out) => {
                let (sender, receiver) = mpsc::sync_channel::<Message>(QUEUE_LINES_MAX);
                let writer = std::thread::Builder::new()
                    .name("stele-audit".to_string())
                    .spawn(move || {
                        for message in receiver {
                            match message {
                                Message::Lines(lines) => {
                                    if out.write_all(lines.as_bytes()).and_then(|()| out.flush()).is_err() {
                                        tracing::error!("cannot write the audit log; audit lines are lost");
                                    }
                                }
                                Message::Reopen => match path.as_deref().map(open_target) {
                                    None => {}
                                    Some(Ok(file)) => out = Box::new(file),
                                    Some(Err(error)) => {
                                        tracing::error!(%error, "cannot reopen the audit log; writing on to the old file");
                                    }
                                },
                            }
                        }
                    })?;
                (Some(sender), Some(writer))
            }
        };
        Ok(AuditLog {
            sender,
            writer,
            bucket: Mutex::new(Bucket {
                tokens: LINES_BURST,
                refilled: Instant::now(),
            }),
            suppressed: AtomicU64::new(0),
        })
    }

    /// Whether lines are written anywhere.
    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// Writes one event, unless the rate limit or the queue drops it.
    pub fn record(&self, event: AuditEvent<'_>) {
        let Some(sender) = &self.sender else {
            return;
        };
        if !self.take() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut lines = String::new();
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            lines.push_str(
                &serde_json::json!({"time": time, "event": "audit_suppressed", "count": suppressed})
                    .to_string(),
            );
            lines.push('\n');
        }
        let line = serde_json::json!({
            "time": time,
            "principal": event.principal,
            "peer": event.peer.map(|peer| peer.to_string()),
            "rpc": event.rpc,
            "topic": event.topic,
            "result": event.result,
            "detail": event.detail,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
        if sender.try_send(Message::Lines(lines)).is_err() {
            self.suppressed.fetch_add(1 + suppressed, Ordering::Relaxed);
        }
    }

    fn take(&self) -> bool {
        let mut bucket = self
            .bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * LINES_PER_SECOND).min(LINES_BURST);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reopens a file target after the lines queued so far (for log
    /// rotation); nothing for stderr or off.
    pub fn reopen(&self) {
        if let Some(sender) = &self.sender {
            // Blocks only while the queue is full, which the writer drains.
            let _ = sender.send(Message::Reopen);
        }
    }

    /// Lines dropped since the last line written.
    pub fn suppressed_count(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }
}

impl Drop for AuditLog {
    /// Writes every queued line before returning.
    fn drop(&mut self) {
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
