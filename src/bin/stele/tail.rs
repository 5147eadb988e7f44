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

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use stele::wire::proto::stele_client::SteleClient;
use stele::wire::proto::{self, start_position::Position};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;

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

/// Where partitions without a known next offset start.
#[derive(Clone, Copy)]
enum Fallback {
    Earliest,
    Timestamp(i64),
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SubscribeResponse, tonic::Status>> + Send>>;

/// What to follow and how far each partition has been printed.
struct Follow {
    topic: String,
    /// Every followed partition.
    followed: Vec<u32>,
    /// The next offset to print, for partitions where it is known.
    next: BTreeMap<u32, u64>,
    /// Where the other followed partitions start.
    fallback: Fallback,
    event_types: Vec<String>,
    key_prefix: Vec<u8>,
}

impl Follow {
    fn request(&self, partitions: Vec<u32>, position: Position) -> proto::SubscribeRequest {
        proto::SubscribeRequest {
            topic: self.topic.clone(),
            partitions,
            start: Some(proto::StartPosition {
                position: Some(position),
            }),
            event_types: self.event_types.clone(),
            key_prefix: self.key_prefix.clone(),
            heartbeat_ms: 0,
            max_batch_events: 0,
        }
    }

    /// Subscribes from `next`, and from the fallback where `next` is unknown: one
    /// subscription, or two merged when the fallback is a timestamp.
    async fn subscribe(&self, stub: &mut SteleClient<Channel>) -> Result<EventStream, tonic::Status> {
        let offsets = || {
            Position::Offsets(proto::PartitionOffsets {
                offsets: self
                    .next
                    .iter()
                    .map(|(partition, offset)| (*partition, *offset))
                    .collect(),
            })
        };
        let timestamp_ms = match self.fallback {
            // Offsets start unlisted partitions at the earliest event.
            Fallback::Earliest => {
                let request = self.request(self.followed.clone(), offsets());
                return Ok(Box::pin(stub.subscribe(request).await?.into_inner()));
            }
            Fallback::Timestamp(timestamp_ms) => timestamp_ms,
        };
        let unknown: Vec<u32> = self
            .followed
            .iter()
            .copied()
            .filter(|partition| !self.next.contains_key(partition))
            .collect();
        let mut merged: Option<EventStream> = None;
        if !self.next.is_empty() {
            let request = self.request(self.next.keys().copied().collect(), offsets());
            merged = Some(Box::pin(stub.subscribe(request).await?.into_inner()));
        }
        if !unknown.is_empty() {
            let request = self.request(unknown, Position::TimestampMs(timestamp_ms));
            let stream: EventStream = Box::pin(stub.subscribe(request).await?.into_inner());
            merged = Some(match merged {
                Some(known) => Box::pin(known.merge(stream)),
                None => stream,
            });
        }
        Ok(merged.expect("a topic has at least one followed partition"))
    }

    /// Records that `partition` continues at `offset` (never moving backwards).
    fn advance(&mut self, partition: u32, offset: u64) {
        let next = self.next.entry(partition).or_insert(offset);
        *next = (*next).max(offset);
    }

    /// `P=OFFSET` for each known partition, for messages.
    fn positions(&self) -> String {
        let known: Vec<String> = self
            .next
            .iter()
            .map(|(partition, offset)| format!("{partition}={offset}"))
            .collect();
        let others = if known.len() < self.followed.len() {
            match self.fallback {
                Fallback::Earliest => " (other partitions from the earliest event)",
                Fallback::Timestamp(_) => " (other partitions from the --from time)",
            }
        } else {
            ""
        };
        format!("{}{others}", known.join(" "))
    }
}

/// Commits a cursor up to what was printed.
struct Committer {
    cursor: String,
    interval: Duration,
    /// What the server holds, as far as this command knows.
    committed: BTreeMap<u32, u64>,
    last: Instant,
}

impl Committer {
    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    async fn commit(
        &mut self,
        stub: &mut SteleClient<Channel>,
        follow: &Follow,
    ) -> Result<(), tonic::Status> {
        let changed: HashMap<u32, u64> = follow
            .next
            .iter()
            .filter(|(partition, offset)| self.committed.get(partition) != Some(offset))
            .map(|(partition, offset)| (*partition, *offset))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        // What was printed must be out before the cursor says it was consumed.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        stub.commit_cursor(proto::CommitCursorRequest {
            topic: follow.topic.clone(),
            cursor: self.cursor.clone(),
            offsets: changed.clone(),
            allow_backwards: false,
        })
        .await?;
        self.committed.extend(changed);
        self.last = Instant::now();
        Ok(())
    }
}

/// Whether a failed subscription or call is worth retrying on a new connection:
/// the server went away (restart, crash, shutdown) or the network failed.
fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::Unknown => true,
        // A broken HTTP/2 connection surfaces as INTERNAL from the transport,
        // without Stele's error detail.
        Code::Internal => stele::wire::status::detail_of(status).is_none(),
        _ => false,
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

/// The reason a connection or subscription failed, for notices.
fn reason(error: &CliError) -> String {
    match error {
        CliError::Status(status) => format!("{} ({:?})", status.message(), status.code()),
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
    let mut stub = connect(&args.client.url).await?;
    let description = stub
        .describe_topic(proto::DescribeTopicRequest {
            topic: args.topic.clone(),
        })
        .await?
        .into_inner();
    let followed: Vec<u32> = if args.partitions.is_empty() {
        description
            .partitions
            .iter()
            .map(|partition| partition.partition)
            .collect()
    } else {
        args.partitions.clone()
    };
    let mut follow = Follow {
        topic: args.topic.clone(),
        followed: followed.clone(),
        next: BTreeMap::new(),
        fallback: Fallback::Earliest,
        event_types: args.event_types.clone(),
        key_prefix: args.key_prefix.clone().unwrap_or_default().into_bytes(),
    };
    let mut committed = BTreeMap::new();
    match &start {
        Start::Earliest => {}
        Start::Latest => {
            for partition in &description.partitions {
                if followed.contains(&partition.partition) {
                    follow.next.insert(partition.partition, partition.high_watermark);
                }
            }
        }
        Start::Offset(offset) => {
            for partition in &followed {
                follow.next.insert(*partition, *offset);
            }
        }
        Start::Timestamp(timestamp_ms) => follow.fallback = Fallback::Timestamp(*timestamp_ms),
        Start::Cursor { name, create } => {
            let found = stub
                .get_cursor(proto::GetCursorRequest {
                    topic: args.topic.clone(),
                    cursor: name.clone(),
                })
                .await;
            let cursor = match found {
                Ok(response) => response.into_inner().cursor.unwrap_or_default(),
                Err(status) if *create && status.code() == tonic::Code::NotFound => proto::Cursor::default(),
                Err(status) => return Err(status.into()),
            };
            for partition in &cursor.partitions {
                if let Some(offset) = partition.committed_offset {
                    committed.insert(partition.partition, offset);
                    if followed.contains(&partition.partition) {
                        // Retention may have deleted what the cursor points at.
                        let earliest = description
                            .partitions
                            .iter()
                            .find(|described| described.partition == partition.partition)
                            .map_or(0, |described| described.earliest_offset);
                        follow.next.insert(partition.partition, offset.max(earliest));
                    }
                }
            }
        }
    }
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
    let mut stream = Some(follow.subscribe(&mut stub).await?);
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGTERM: {error}")))?;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut ticker = tokio::time::interval(Duration::from_millis(args.commit_interval.0));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut delay = RECONNECT_DELAY_INITIAL;
    let mut lost = String::new();
    // Bounded by the signals and --count; while disconnected, each round waits
    // at least RECONNECT_DELAY_INITIAL.
    'following: loop {
        let Some(events) = stream.as_mut() else {
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
            let attempt = match connect(&args.client.url).await {
                Ok(new_stub) => {
                    stub = new_stub;
                    follow.subscribe(&mut stub).await.map_err(CliError::from)
                }
                Err(error) => Err(error),
            };
            match attempt {
                Ok(events) => {
                    notice(
                        json_output,
                        &format!(
                            "reconnected to {}; resuming at {}",
                            args.client.url,
                            follow.positions()
                        ),
                        None,
                    );
                    stream = Some(events);
                    if let Some(committer) = committer.as_mut() {
                        match committer.commit(&mut stub, &follow).await {
                            Err(status) if !is_transient(&status) => return Err(status.into()),
                            _ => {}
                        }
                    }
                }
                Err(CliError::Status(status)) if !is_transient(&status) => return Err(status.into()),
                Err(error @ (CliError::Usage(_) | CliError::Failed(_))) => return Err(error),
                Err(error) => lost = format!("cannot resubscribe: {}", reason(&error)),
            }
            continue;
        };
        let item = tokio::select! {
            item = events.next() => item,
            _ = &mut interrupted => break 'following,
            _ = terminate.recv() => break 'following,
            _ = ticker.tick(), if committer.is_some() => {
                if let Some(committer) = committer.as_mut().filter(|committer| committer.due()) {
                    match committer.commit(&mut stub, &follow).await {
                        Err(status) if !is_transient(&status) => return Err(status.into()),
                        _ => {}
                    }
                }
                continue;
            }
        };
        let message = match item {
            Some(Ok(message)) => message,
            Some(Err(status)) if is_transient(&status) => {
                lost = format!("connection lost: {}", reason(&CliError::Status(status)));
                stream = None;
                continue;
            }
            Some(Err(status)) => return Err(status.into()),
            None => {
                lost = "the server ended the subscription".to_string();
                stream = None;
                continue;
            }
        };
        delay = RECONNECT_DELAY_INITIAL;
        match message.item {
            Some(proto::subscribe_response::Item::Events(batch)) => {
                for event in &batch.events {
                    // Defensive: a resumed subscription starts at `next`, so an
                    // earlier offset would be a repeat.
                    if follow
                        .next
                        .get(&event.partition)
                        .is_some_and(|next| event.offset < *next)
                    {
                        continue;
                    }
                    print_event(event, json_output);
                    follow.advance(event.partition, event.offset + 1);
                    remaining -= 1;
                    if remaining == 0 {
                        break 'following;
                    }
                }
                // Events the filters skipped are passed too.
                follow.advance(batch.partition, batch.next_offset);
                if let Some(committer) = committer.as_mut().filter(|committer| committer.due()) {
                    match committer.commit(&mut stub, &follow).await {
                        Err(status) if !is_transient(&status) => return Err(status.into()),
                        _ => {}
                    }
                }
            }
            Some(proto::subscribe_response::Item::CaughtUp(caught_up)) => {
                for (partition, offset) in caught_up.next_offsets {
                    follow.advance(partition, offset);
                }
            }
            Some(proto::subscribe_response::Item::Heartbeat(_)) | None => {}
        }
    }
    if let Some(committer) = committer.as_mut() {
        committer.commit(&mut stub, &follow).await.map_err(|status| {
            if is_transient(&status) {
                CliError::Unreachable(format!(
                    "cannot commit cursor {} at {}: {}",
                    committer.cursor,
                    follow.positions(),
                    status.message()
                ))
            } else {
                CliError::Status(status)
            }
        })?;
    }
    Ok(EXIT_OK)
}
