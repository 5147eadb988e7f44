//! `stele tail`: follow a topic live, through server restarts, optionally
//! following a named cursor and committing it as events are printed.
//!
//! Invariant: `next` holds, per partition, the offset after the last event
//! printed (or examined by the server's filters); every subscription after the
//! first starts exactly there, so a reconnect neither skips nor repeats an event.
//! A start position that depends on time (`latest`) is resolved to offsets
//! before the first subscription for the same reason.
//!
//! It does not buffer events: each is printed when it arrives, and a cursor is
//! committed only up to what was printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use stele::client::{Client, ClientError, Followed, Follower, StartPosition, SubscribeOptions};
use stele::{ErrorKind, Offset, PartitionId};

use super::output::{escape, print_event};
use super::{CliError, ClientArgs, EXIT_OK, Millis, connect, parse_timestamp};

/// The first wait before reconnecting; it doubles per failed attempt.
const RECONNECT_DELAY_INITIAL: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

pub(crate) const TAIL_HELP: &str = "\
Events are printed as they arrive, in offset order within each partition; partitions
are interleaved as the server sends them. If the connection to the server is lost
(a restart, a crash, a network failure), tail says so on stderr and reconnects with
exponential backoff (100ms doubling to at most 5s, until Ctrl-C), resuming in every
partition right after the last event it printed: no event is skipped or printed twice.
With --cursor NAME --commit, the cursor is committed with the offset after the last
printed event of each partition: at most every --commit-interval while events arrive,
and once more on exit (Ctrl-C, SIGTERM or --count reached). A commit that fails on exit
is an error. Output (--json) follows the JSON scheme in `stele --help`; under --json the
reconnection notices on stderr are JSON too: {\"notice\": {\"message\": ..., \"reconnect_in_ms\": ...}}.";

#[derive(Debug, Args)]
pub(crate) struct TailArgs {
    topic: String,
    /// Partitions to follow (repeatable) [default: all].
    #[arg(long = "partition", value_name = "P")]
    partitions: Vec<u32>,
    /// Where to start: earliest, latest, an OFFSET (in each followed partition), a
    /// TIMESTAMP (2024-05-01T12:00:00Z, or @UNIX_MS), or cursor:NAME (an existing
    /// cursor's committed offsets; a cursor that does not exist is not found, exit 4).
    #[arg(
        long,
        value_name = "WHERE",
        default_value = "latest",
        conflicts_with = "cursor"
    )]
    from: String,
    /// Follow this named cursor: start at its committed offsets, and at the earliest
    /// event in partitions it never committed. Without --commit it must exist.
    #[arg(long, value_name = "NAME")]
    cursor: Option<String>,
    /// With --cursor: commit the cursor as events are printed (creating it if needed).
    #[arg(long, requires = "cursor")]
    commit: bool,
    /// With --commit: the longest time between commits while events arrive.
    #[arg(long, value_name = "DURATION", default_value_t = Millis(1000))]
    commit_interval: Millis,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    event_types: Vec<String>,
    /// Only events whose key starts with this.
    #[arg(long, value_name = "PREFIX")]
    key_prefix: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Where the command was asked to start.
enum Start {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
    /// A cursor's committed offsets; `create` allows a cursor that does not exist yet.
    Cursor {
        name: String,
        create: bool,
    },
}

/// Parses `tail --from`.
fn parse_start(from: &str) -> Result<Start, CliError> {
    Ok(match from {
        "earliest" => Start::Earliest,
        "latest" => Start::Latest,
        _ if from.starts_with("cursor:") => Start::Cursor {
            name: from["cursor:".len()..].to_string(),
            create: false,
        },
        _ if from.starts_with('@') => {
            Start::Timestamp(from[1..].parse().map_err(|_| {
                CliError::Usage(format!("invalid --from {from:?}: @ takes Unix milliseconds"))
            })?)
        }
        _ if !from.is_empty() && from.bytes().all(|byte| byte.is_ascii_digit()) => Start::Offset(
            from.parse()
                .map_err(|_| CliError::Usage(format!("invalid offset {from:?}")))?,
        ),
        _ => Start::Timestamp(parse_timestamp(from).ok_or_else(|| {
            CliError::Usage(format!(
                "invalid --from {from:?}: use earliest, latest, an offset, a timestamp \
                 (2024-05-01T12:00:00Z or @UNIX_MS) or cursor:NAME"
            ))
        })?),
    })
}

/// `P=OFFSET` for each partition with a known position, for notices.
fn positions_text(follower: &Follower, followed_count: usize, timestamp_start: bool) -> String {
    let known: Vec<String> = follower
        .positions()
        .iter()
        .map(|(partition, offset)| format!("{}={}", partition.0, offset.0))
        .collect();
    let others = if known.len() < followed_count {
        if timestamp_start {
            " (other partitions from the --from time)"
        } else {
            " (other partitions from the earliest event)"
        }
    } else {
        ""
    };
    format!("{}{others}", known.join(" "))
}

/// Commits a cursor up to what was printed.
struct Committer {
    cursor: String,
    interval: Duration,
    /// What the server holds, as far as this command knows.
    committed: BTreeMap<PartitionId, Offset>,
    last: Instant,
}

impl Committer {
    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    async fn commit(&mut self, client: &Client, topic: &str, follower: &Follower) -> Result<(), ClientError> {
        let changed: Vec<(PartitionId, Offset)> = follower
            .positions()
            .iter()
            .filter(|(partition, offset)| self.committed.get(partition) != Some(offset))
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        // What was printed must be out before the cursor says it was consumed.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        client.commit_cursor(topic, &self.cursor, &changed, false).await?;
        self.committed.extend(changed);
        self.last = Instant::now();
        Ok(())
    }

    /// Commits when due; a transient failure waits for the next chance.
    async fn commit_if_due(
        &mut self,
        client: &Client,
        topic: &str,
        follower: &Follower,
    ) -> Result<(), CliError> {
        if !self.due() {
            return Ok(());
        }
        match self.commit(client, topic, follower).await {
            Err(error) if !error.is_transient() => Err(error.into()),
            _ => Ok(()),
        }
    }
}

/// A notice on stderr: text, or one JSON object under `--json`.
fn notice(json_output: bool, message: &str, delay: Option<Duration>) {
    if json_output {
        let delay_ms = delay.map(|delay| delay.as_millis() as u64);
        eprintln!(
            "{}",
            json!({"notice": {"message": message, "reconnect_in_ms": delay_ms}})
        );
    } else {
        eprintln!("stele: tail: {}", escape(message));
    }
}

/// The reason a subscription failed, for notices: `connected` when it broke
/// while following, else a resubscription failed.
fn reason(error: &ClientError, connected: bool) -> String {
    match error {
        ClientError::Status { message, code, .. } => format!("{message} ({code:?})"),
        ClientError::Transport { url, reason } if !connected => format!("cannot connect to {url}: {reason}"),
        ClientError::Transport { reason, .. } => format!("{reason} (Unavailable)"),
        other => other.to_string(),
    }
}

pub(crate) async fn tail(args: TailArgs) -> Result<u8, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let start = match &args.cursor {
        Some(name) => Start::Cursor {
            name: name.clone(),
            create: args.commit,
        },
        None => parse_start(&args.from)?,
    };
    if args.commit_interval.0 == 0 {
        return Err(CliError::Usage("--commit-interval must be above 0".to_string()));
    }
    let json_output = args.client.json;
    let client = connect(&args.client).await?;
    let description = client.describe_topic(&args.topic).await?;
    let followed: Vec<PartitionId> = if args.partitions.is_empty() {
        description
            .partitions
            .iter()
            .map(|partition| partition.partition)
            .collect()
    } else {
        args.partitions.iter().copied().map(PartitionId).collect()
    };
    let mut committed = BTreeMap::new();
    let start = match &start {
        Start::Earliest => StartPosition::Earliest,
        // Resolved to offsets now, so that a reconnect resumes from them.
        Start::Latest => StartPosition::Offsets(
            description
                .partitions
                .iter()
                .filter(|partition| followed.contains(&partition.partition))
                .map(|partition| (partition.partition, partition.high_watermark))
                .collect(),
        ),
        Start::Offset(offset) => StartPosition::Offsets(
            followed
                .iter()
                .map(|partition| (*partition, Offset(*offset)))
                .collect(),
        ),
        Start::Timestamp(timestamp_ms) => StartPosition::Timestamp(*timestamp_ms),
        Start::Cursor { name, create } => {
            let positions = match client.get_cursor(&args.topic, name).await {
                Ok(positions) => positions,
                Err(error) if *create && error.kind() == Some(ErrorKind::CursorNotFound) => Vec::new(),
                Err(error) => return Err(error.into()),
            };
            let mut offsets = BTreeMap::new();
            for position in positions {
                let Some(offset) = position.committed else {
                    continue;
                };
                committed.insert(position.partition, offset);
                if followed.contains(&position.partition) {
                    // Retention may have deleted what the cursor points at.
                    let earliest = description
                        .partitions
                        .iter()
                        .find(|described| described.partition == position.partition)
                        .map_or(Offset(0), |described| described.earliest);
                    offsets.insert(position.partition, offset.max(earliest));
                }
            }
            StartPosition::Offsets(offsets)
        }
    };
    let timestamp_start = matches!(start, StartPosition::Timestamp(_));
    let mut committer = args.commit.then(|| Committer {
        cursor: args.cursor.clone().expect("clap requires --cursor with --commit"),
        interval: Duration::from_millis(args.commit_interval.0),
        committed,
        last: Instant::now(),
    });
    let mut remaining = args.count.unwrap_or(u64::MAX);
    if remaining == 0 {
        return Ok(EXIT_OK);
    }
    let options = SubscribeOptions {
        partitions: followed.clone(),
        start,
        event_types: args.event_types.clone(),
        key_prefix: args.key_prefix.clone().unwrap_or_default().into_bytes(),
        heartbeat_ms: 0,
        max_batch_events: 0,
    };
    let mut follower = client.follow(&args.topic, options).await?;
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGTERM: {error}")))?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ticker = tokio::time::interval(Duration::from_millis(args.commit_interval.0));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delay = RECONNECT_DELAY_INITIAL;
    // While disconnected the ticker is not polled, so that a tick cannot cut a
    // resubscription short.
    let mut connected = true;
    // Bounded by the signals and --count; while disconnected, each round waits
    // at least RECONNECT_DELAY_INITIAL.
    'following: loop {
        let item = tokio::select! {
            item = follower.next() => item,
            _ = &mut interrupted => break 'following,
            _ = terminate.recv() => break 'following,
            _ = ticker.tick(), if committer.is_some() && connected => {
                if let Some(committer) = committer.as_mut() {
                    committer.commit_if_due(&client, &args.topic, &follower).await?;
                }
                continue;
            }
        };
        match item {
            Some(Ok(Followed::Event(event))) => {
                delay = RECONNECT_DELAY_INITIAL;
                print_event(&event, json_output);
                remaining -= 1;
                if remaining == 0 {
                    break 'following;
                }
                if let Some(committer) = committer.as_mut() {
                    committer.commit_if_due(&client, &args.topic, &follower).await?;
                }
            }
            Some(Ok(Followed::CaughtUp)) => delay = RECONNECT_DELAY_INITIAL,
            Some(Ok(Followed::Lost(error))) => {
                let lost = match (&error, connected) {
                    (ClientError::Closed(_), true) => "the server ended the subscription".to_string(),
                    (_, true) => format!("connection lost: {}", reason(&error, true)),
                    (_, false) => format!("cannot resubscribe: {}", reason(&error, false)),
                };
                connected = false;
                notice(
                    json_output,
                    &format!("{lost}; reconnecting in {}", Millis(delay.as_millis() as u64)),
                    Some(delay),
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = &mut interrupted => break 'following,
                    _ = terminate.recv() => break 'following,
                }
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
            Some(Ok(Followed::Resumed)) => {
                connected = true;
                notice(
                    json_output,
                    &format!(
                        "reconnected to {}; resuming at {}",
                        args.client.connect.url,
                        positions_text(&follower, followed.len(), timestamp_start)
                    ),
                    None,
                );
                if let Some(committer) = committer.as_mut() {
                    match committer.commit(&client, &args.topic, &follower).await {
                        Err(error) if !error.is_transient() => return Err(error.into()),
                        _ => {}
                    }
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None => break 'following,
        }
    }
    if let Some(committer) = committer.as_mut() {
        committer
            .commit(&client, &args.topic, &follower)
            .await
            .map_err(|error| {
                if error.is_transient() {
                    CliError::Unreachable(format!(
                        "cannot commit cursor {} at {}: {}",
                        committer.cursor,
                        positions_text(&follower, followed.len(), timestamp_start),
                        match &error {
                            ClientError::Status { message, .. } => message.clone(),
                            other => other.to_string(),
                        }
                    ))
                } else {
                    CliError::Client(error)
                }
            })?;
    }
    Ok(EXIT_OK)
}
