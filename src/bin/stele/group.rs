//! `stele group`: create, list, describe, delete and seek consumer groups, and
//! list and redrive their parked events; and `stele consume`, a member of a
//! group that prints each delivered event as `stele tail` does and acks it.
//!
//! `consume` handles one delivery at a time: an event is printed before its
//! ack is sent, so an event is never acked unprinted (at least once: an event
//! printed whose ack was lost is printed again by the next member).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;
use stele::client::{
    Client, Delivery, ExhaustedPolicy, GroupInfo, GroupOptions, GroupSeek, GroupSettings, GroupStart,
    ParkedEventInfo, Settlement,
};
use stele::{ErrorKind, Offset, PartitionId};

use super::output::{Bytes, display_bytes, escape, print_event, print_json};
use super::webhook::StartArg;
use super::{CliError, ClientArgs, EXIT_OK, Millis, connect};

pub(crate) const CONSUME_HELP: &str = "\
consume joins GROUP as a member and prints each event the group delivers to it, in the
format of `stele tail`, then acks it; members of one group share the topic's events, each
key's events in order, one at a time. Events are handled one after the other: an event is
printed before it is acked. Delivery is at least once: an event printed whose ack did not
reach the server (a crash, a lost connection) is delivered again, to this or another member.
The member reconnects by itself after a lost connection or a server restart, with the same
instance id; a second member with the same instance id replaces the first (which exits 3,
MEMBER_REPLACED). TOPIC must be the group's topic. Ctrl-C or SIGTERM stops gracefully: the
event being printed is acked, deliveries not yet printed are left to the server, which
delivers them again. With --max N, consume exits after N events and its window defaults to
1, so that at most one delivery is left unprinted at exit.";

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a consumer group on a topic; unset settings take the server's defaults.
    Create(Box<CreateArgs>),
    /// Every group (of one topic with --topic) with its lag, members and parked events.
    List {
        /// Only groups of this topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a group's settings, each partition's position and lag, and its members.
    Describe {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a group and its state (its parked events stay in their topic).
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move a group (replay or skip): everything before the new position counts as settled.
    Seek(SeekArgs),
    /// A group's parked events not yet redriven, and its blocked keys, oldest first.
    Parked {
        name: String,
        /// Most events to show [default: 1000].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max: Option<u32>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deliver a group's parked events again and unblock its blocked keys.
    Redrive {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `--on-exhausted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ExhaustedArg {
    /// Park the event in the dead-letter topic and go on with the key's next event.
    Park,
    /// Stop the key until `stele group redrive` (other keys flow on).
    Block,
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Group name: letters, digits, '.', '_' and '-'.
    name: String,
    /// The topic the group consumes.
    #[arg(long)]
    topic: String,
    /// How long a member holds a delivery before it is delivered again (e.g. 30s)
    /// [default: 30s].
    #[arg(long, value_name = "DURATION")]
    lease: Option<Millis>,
    /// Deliveries of one event before --on-exhausted applies [default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_deliveries: Option<u32>,
    /// Delay before delivering again after a retry or an expired lease; it doubles per
    /// delivery, with jitter [default: 1s].
    #[arg(long, value_name = "DURATION")]
    backoff_initial: Option<Millis>,
    /// Cap on that delay [default: 1m].
    #[arg(long, value_name = "DURATION")]
    backoff_max: Option<Millis>,
    /// Unsettled deliveries one member holds at most [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_in_flight_per_member: Option<u32>,
    /// Where parked events go [default: TOPIC.parked].
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// What happens to an event whose deliveries are exhausted.
    #[arg(long, value_enum, default_value_t = ExhaustedArg::Park)]
    on_exhausted: ExhaustedArg,
    /// Where the group starts.
    #[arg(long, value_enum, default_value_t = StartArg::Latest)]
    start: StartArg,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("position")
        .required(true)
        .args(["earliest", "latest", "timestamp_ms", "offsets"])
))]
pub(crate) struct SeekArgs {
    name: String,
    /// Every partition to its oldest retained event (replay everything).
    #[arg(long)]
    earliest: bool,
    /// Every partition to its high watermark (skip everything so far).
    #[arg(long)]
    latest: bool,
    /// Every partition to its first event at or after this time (Unix ms).
    #[arg(long, value_name = "MS")]
    timestamp_ms: Option<i64>,
    /// A partition's new position, P=OFFSET (repeatable); other partitions keep theirs.
    #[arg(long = "offset", value_name = "P=OFFSET")]
    offsets: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ConsumeArgs {
    /// The group's topic.
    topic: String,
    /// The consumer group to join.
    #[arg(long, value_name = "GROUP")]
    group: String,
    /// The member's name across reconnects [default: HOSTNAME-PID].
    #[arg(long, value_name = "ID")]
    instance_id: Option<String>,
    /// Unsettled deliveries held at once [default: the group's, 1 with --max].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    window: Option<u32>,
    /// Create the group on TOPIC (with the server's default settings) if it does not exist.
    #[arg(long)]
    create: bool,
    /// With --create: where a new group starts.
    #[arg(long, value_enum, requires = "create")]
    start: Option<StartArg>,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    #[command(flatten)]
    client: ClientArgs,
}

fn group_start(start: StartArg) -> GroupStart {
    match start {
        StartArg::Latest => GroupStart::Latest,
        StartArg::Earliest => GroupStart::Earliest,
    }
}

pub(crate) async fn run(command: GroupCommand) -> Result<u8, CliError> {
    match command {
        GroupCommand::Create(args) => create(*args).await,
        GroupCommand::List { topic, client } => {
            let groups = connect(&client).await?.list_groups(topic.as_deref()).await?;
            if !client.json && groups.is_empty() {
                println!("no groups");
            }
            for group in &groups {
                if client.json {
                    print_json(&GroupJson::of(group));
                } else {
                    print_group_line(group);
                }
            }
            Ok(EXIT_OK)
        }
        GroupCommand::Describe { name, client } => {
            let group = connect(&client).await?.describe_group(&name).await?;
            print_group(&group, client.json);
            Ok(EXIT_OK)
        }
        GroupCommand::Delete { name, client } => {
            connect(&client).await?.delete_group(&name).await?;
            if client.json {
                print_json(&json!({ "deleted": name }));
            } else {
                println!("deleted group {name}");
            }
            Ok(EXIT_OK)
        }
        GroupCommand::Seek(args) => seek(args).await,
        GroupCommand::Parked { name, max, client } => {
            let events = connect(&client)
                .await?
                .list_parked(&name, max.unwrap_or(0))
                .await?;
            if !client.json && events.is_empty() {
                println!("no parked events for {}", escape(&name));
            }
            // --max bounds the whole list, whatever the server answers.
            let shown = max.map_or(usize::MAX, |max| max as usize);
            for event in events.iter().take(shown) {
                print_parked(event, client.json);
            }
            Ok(EXIT_OK)
        }
        GroupCommand::Redrive { name, client } => {
            let redriven = connect(&client).await?.redrive_parked(&name).await?;
            if client.json {
                print_json(&json!({
                    "group": name,
                    "redriven": redriven.redriven_count,
                    "unblocked_keys": redriven.unblocked_keys_count,
                }));
            } else {
                println!(
                    "redriving {} parked events of {name}; {} keys unblocked",
                    redriven.redriven_count, redriven.unblocked_keys_count
                );
            }
            Ok(EXIT_OK)
        }
    }
}

async fn create(args: CreateArgs) -> Result<u8, CliError> {
    let millis = |value: Option<Millis>, flag: &str| -> Result<u64, CliError> {
        match value {
            Some(Millis(0)) => Err(CliError::Usage(format!("{flag} must be above 0"))),
            // Zero (and empty) takes the server's default.
            value => Ok(value.map_or(0, |value| value.0)),
        }
    };
    let options = GroupOptions {
        settings: GroupSettings {
            lease_ms: millis(args.lease, "--lease")?,
            deliveries_max: args.max_deliveries.unwrap_or(0),
            backoff_initial_ms: millis(args.backoff_initial, "--backoff-initial")?,
            backoff_max_ms: millis(args.backoff_max, "--backoff-max")?,
            in_flight_per_member_max: args.max_in_flight_per_member.unwrap_or(0),
            dead_letter_topic: args.dead_letter_topic.unwrap_or_default(),
            on_exhausted: match args.on_exhausted {
                ExhaustedArg::Park => ExhaustedPolicy::Park,
                ExhaustedArg::Block => ExhaustedPolicy::Block,
            },
        },
        start: group_start(args.start),
    };
    let group = connect(&args.client)
        .await?
        .create_group(&args.name, &args.topic, &options)
        .await?;
    if args.client.json {
        print_json(&GroupJson::of(&group));
    } else {
        println!(
            "created group {} on topic {}: {}",
            escape(&group.name),
            escape(&group.topic),
            settings_text(&group.settings)
        );
    }
    Ok(EXIT_OK)
}

async fn seek(args: SeekArgs) -> Result<u8, CliError> {
    let seek = if args.earliest {
        GroupSeek::Earliest
    } else if args.latest {
        GroupSeek::Latest
    } else if let Some(timestamp_ms) = args.timestamp_ms {
        GroupSeek::Timestamp(timestamp_ms)
    } else {
        GroupSeek::Offsets(
            args.offsets
                .iter()
                .map(|entry| {
                    let parsed = entry.split_once('=').and_then(|(partition, offset)| {
                        Some((PartitionId(partition.parse().ok()?), Offset(offset.parse().ok()?)))
                    });
                    parsed
                        .ok_or_else(|| CliError::Usage(format!("--offset {entry:?} is not PARTITION=OFFSET")))
                })
                .collect::<Result<_, CliError>>()?,
        )
    };
    let group = connect(&args.client).await?.seek_group(&args.name, seek).await?;
    if args.client.json {
        print_json(&GroupJson::of(&group));
    } else {
        let floors: Vec<String> = group
            .partitions
            .iter()
            .map(|partition| format!("{}={}", partition.partition.0, partition.floor.0))
            .collect();
        println!(
            "seeked group {}: {} (lag {})",
            escape(&group.name),
            floors.join(" "),
            group.lag
        );
    }
    Ok(EXIT_OK)
}

/// The member name `consume` uses without `--instance-id`: the host name and
/// the process id.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
        .unwrap_or_else(|| "stele".to_string());
    format!("{host}-{}", std::process::id())
}

/// Creates the group when asked (an existing one is fine), then checks that it
/// consumes `topic`.
async fn check_group(client: &Client, args: &ConsumeArgs) -> Result<(), CliError> {
    if args.create {
        let options = GroupOptions {
            start: group_start(args.start.unwrap_or(StartArg::Latest)),
            ..GroupOptions::default()
        };
        match client.create_group(&args.group, &args.topic, &options).await {
            Ok(_) => {}
            Err(error) if error.kind() == Some(ErrorKind::GroupExists) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let group = client.describe_group(&args.group).await?;
    if group.topic != args.topic {
        return Err(CliError::Usage(format!(
            "group {} consumes topic {}, not {}",
            escape(&args.group),
            escape(&group.topic),
            escape(&args.topic)
        )));
    }
    Ok(())
}

pub(crate) async fn consume(args: ConsumeArgs) -> Result<u8, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let client = connect(&args.client).await?;
    check_group(&client, &args).await?;
    let remaining = args.max.unwrap_or(u64::MAX);
    if remaining == 0 {
        return Ok(EXIT_OK);
    }
    let instance_id = args.instance_id.clone().unwrap_or_else(default_instance_id);
    // With --max, a window of 1 leaves at most one delivery unprinted at exit.
    let window = args.window.unwrap_or(if args.max.is_some() { 1 } else { 0 });
    let consumer = client
        .group_consumer(&args.group, &instance_id)
        .window(window)
        .concurrency(1)
        .build();
    let shutdown = consumer.shutdown_handle();
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| CliError::Failed(format!("cannot handle SIGTERM: {error}")))?;
    let on_signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        on_signal.shutdown();
    });
    let printed = Arc::new(AtomicU64::new(0));
    let json_output = args.client.json;
    let handler = move |delivery: Delivery| {
        let shutdown = shutdown.clone();
        let printed = Arc::clone(&printed);
        async move {
            // One handler at a time (concurrency 1), and none starts after the
            // stop below, so exactly --max events are printed.
            print_event(&delivery.event, json_output);
            if printed.fetch_add(1, Ordering::Relaxed) + 1 >= remaining {
                shutdown.shutdown();
            }
            Settlement::Ack
        }
    };
    let result = consumer.run(handler).await;
    signals.abort();
    result?;
    Ok(EXIT_OK)
}

/// A group's settings in text.
fn settings_text(settings: &GroupSettings) -> String {
    format!(
        "lease {}, max deliveries {}, backoff {}..{}, max in flight per member {}, dead letters to {}, on exhausted {}",
        Millis(settings.lease_ms),
        settings.deliveries_max,
        Millis(settings.backoff_initial_ms),
        Millis(settings.backoff_max_ms),
        settings.in_flight_per_member_max,
        escape(&settings.dead_letter_topic),
        exhausted_word(settings.on_exhausted)
    )
}

fn exhausted_word(policy: ExhaustedPolicy) -> &'static str {
    match policy {
        ExhaustedPolicy::Park => "park",
        ExhaustedPolicy::Block => "block",
    }
}

/// One line per group, for `group list`.
fn print_group_line(group: &GroupInfo) {
    println!(
        "{}  topic={}  lag={}  in-flight={}  members={}  parked={}  blocked-keys={}",
        escape(&group.name),
        escape(&group.topic),
        group.lag,
        group.in_flight_count,
        group.members.len(),
        group.parked_count,
        group.blocked_keys_count
    );
}

fn print_group(group: &GroupInfo, json_output: bool) {
    if json_output {
        print_json(&GroupJson::of(group));
        return;
    }
    println!(
        "group {} on topic {}: {}",
        escape(&group.name),
        escape(&group.topic),
        settings_text(&group.settings)
    );
    println!(
        "lag {}, in flight {}, redelivered {}, parked {}, blocked keys {}, oldest unsettled {}",
        group.lag,
        group.in_flight_count,
        group.redelivered_count,
        group.parked_count,
        group.blocked_keys_count,
        Millis(group.oldest_unsettled_age_ms)
    );
    println!(
        "{:>9} {:>12} {:>19} {:>14} {:>10}",
        "partition", "floor", "settled_above_floor", "high_watermark", "lag"
    );
    for partition in &group.partitions {
        println!(
            "{:>9} {:>12} {:>19} {:>14} {:>10}",
            partition.partition.0,
            partition.floor.0,
            partition.settled_above_floor_count,
            partition.high_watermark.0,
            partition.lag
        );
    }
    if group.members.is_empty() {
        println!("no members");
    }
    for member in &group.members {
        println!(
            "member {}  epoch={}  window={}  in-flight={}  acked={}",
            escape(&member.instance_id),
            member.member_epoch,
            member.window,
            member.in_flight_count,
            member.acked_count
        );
    }
}

/// A group in JSON; settings are named as in the proto.
#[derive(Serialize)]
struct GroupJson<'a> {
    name: &'a str,
    topic: &'a str,
    settings: GroupSettingsJson<'a>,
    lag: u64,
    in_flight: u64,
    redelivered: u64,
    parked: u64,
    blocked_keys: u64,
    oldest_unsettled_age_ms: u64,
    created_at_ms: u64,
    partitions: Vec<GroupPartitionJson>,
    members: Vec<GroupMemberJson<'a>>,
}

#[derive(Serialize)]
struct GroupSettingsJson<'a> {
    lease_ms: u64,
    max_deliveries: u32,
    backoff_initial_ms: u64,
    backoff_max_ms: u64,
    max_in_flight_per_member: u32,
    dead_letter_topic: &'a str,
    on_exhausted: &'static str,
}

#[derive(Serialize)]
struct GroupPartitionJson {
    partition: u32,
    floor: u64,
    settled_above_floor: u64,
    high_watermark: u64,
    lag: u64,
}

#[derive(Serialize)]
struct GroupMemberJson<'a> {
    instance_id: &'a str,
    member_epoch: u64,
    window: u32,
    in_flight: u32,
    acked: u64,
    joined_at_ms: u64,
}

impl<'a> GroupJson<'a> {
    fn of(group: &'a GroupInfo) -> GroupJson<'a> {
        let settings = &group.settings;
        GroupJson {
            name: &group.name,
            topic: &group.topic,
            settings: GroupSettingsJson {
                lease_ms: settings.lease_ms,
                max_deliveries: settings.deliveries_max,
                backoff_initial_ms: settings.backoff_initial_ms,
                backoff_max_ms: settings.backoff_max_ms,
                max_in_flight_per_member: settings.in_flight_per_member_max,
                dead_letter_topic: &settings.dead_letter_topic,
                on_exhausted: exhausted_word(settings.on_exhausted),
            },
            lag: group.lag,
            in_flight: group.in_flight_count,
            redelivered: group.redelivered_count,
            parked: group.parked_count,
            blocked_keys: group.blocked_keys_count,
            oldest_unsettled_age_ms: group.oldest_unsettled_age_ms,
            created_at_ms: group.created_at_ms,
            partitions: group
                .partitions
                .iter()
                .map(|partition| GroupPartitionJson {
                    partition: partition.partition.0,
                    floor: partition.floor.0,
                    settled_above_floor: partition.settled_above_floor_count,
                    high_watermark: partition.high_watermark.0,
                    lag: partition.lag,
                })
                .collect(),
            members: group
                .members
                .iter()
                .map(|member| GroupMemberJson {
                    instance_id: &member.instance_id,
                    member_epoch: member.member_epoch,
                    window: member.window,
                    in_flight: member.in_flight_count,
                    acked: member.acked_count,
                    joined_at_ms: member.joined_at_ms,
                })
                .collect(),
        }
    }
}

/// A parked event in JSON.
#[derive(Serialize)]
struct ParkedJson<'a> {
    dead_letter_partition: u32,
    dead_letter_offset: u64,
    partition: u32,
    offset: u64,
    key: Bytes<'a>,
    sequence: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    reason: &'a str,
    attempts: u32,
    blocked: bool,
}

fn print_parked(event: &ParkedEventInfo, json_output: bool) {
    if json_output {
        print_json(&ParkedJson {
            dead_letter_partition: event.dead_letter_partition.0,
            dead_letter_offset: event.dead_letter_offset.0,
            partition: event.partition.0,
            offset: event.offset.0,
            key: Bytes(&event.key),
            sequence: event.sequence.0,
            event_type: &event.event_type,
            reason: &event.reason,
            attempts: event.attempts,
            blocked: event.blocked,
        });
        return;
    }
    let place = if event.blocked {
        "blocked".to_string()
    } else {
        format!(
            "parked at {}/{}",
            event.dead_letter_partition.0, event.dead_letter_offset.0
        )
    };
    println!(
        "{}/{}  key={}@{}  type={}  attempts={}  {place}  {}",
        event.partition.0,
        event.offset.0,
        display_bytes(&event.key),
        event.sequence,
        escape(&event.event_type),
        event.attempts,
        escape(&event.reason)
    );
}
