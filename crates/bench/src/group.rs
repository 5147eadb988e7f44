//! The consumer-group scenarios ([`GroupScenario`]): Stele-only, so they are
//! not [`Scenario`]s, whose list `tools/nats-bench` mirrors.
//!
//! Both fill a fresh topic (untimed) with `count` events whose keys interleave
//! (event `i` has key `i % keys`), in `AppendSession` requests of `batch`
//! single-event appends, then read all of it:
//! - `group`: a group created at the earliest event, `concurrency` members in
//!   this process, each a raw `Consume` stream on its own connection with a
//!   window of `in_flight`, acking every delivery at once (the deliveries that
//!   arrived together in one `Ack`). Timed from the first delivery to the last
//!   `Settled` confirmation; latency is per delivery, from its arrival to the
//!   confirmation that its ack is durable. Afterwards `DescribeGroup` must show
//!   lag 0, and the group is deleted.
//! - `group-baseline`: the same events through plain subscriptions from the
//!   earliest event until `CaughtUp`, one per member, partition `p` on
//!   subscription `p % members`; timed from the first event to the last
//!   `CaughtUp`; latency is the gap between messages.
//!
//! Both check per-key order (a key's sequences arrive strictly increasing; a
//! group member may see a redelivery of the key's last event again) and count
//! deliveries of a position seen before as `redelivered`. With the server's
//! process id they report its CPU time over the consuming part
//! (`server_cpu_seconds`, from `/proc/PID/stat`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use stele_client::{
    Client, ConsumeItem, GroupOptions, GroupSettings, GroupStart, StartPosition, SubscribeOptions,
    SubscriptionItem,
};
use stele_engine::config::Durability;
use stele_engine::event::{AppendRequest, PartitionId, RecordedEvent};

use super::{
    BenchConfig, LoadgenError, LoadgenResult, Target, batched_window, deal, event, key_of, micros, round,
    run_streams,
};

/// A member that sees no settle confirmed for this long stops the run: the
/// group's lease (30 s by default) would have brought a lost delivery back
/// well before.
const STALL_BOUND: Duration = Duration::from_secs(60);
/// How long a member waits for the server to end its stream after the run.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// A consumer-group scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupScenario {
    /// Members of a group, acking every delivery.
    Group,
    /// The same events through plain subscriptions, for comparison.
    Baseline,
}

impl GroupScenario {
    /// Every consumer-group scenario, in the order `all` runs them.
    pub const ALL: [GroupScenario; 2] = [GroupScenario::Group, GroupScenario::Baseline];

    /// The scenario's name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            GroupScenario::Group => "group",
            GroupScenario::Baseline => "group-baseline",
        }
    }

    /// Events per run when `--count` is not given.
    pub fn count_default(self) -> u64 {
        200_000
    }
}

/// Fills `topic` with `count` events, key `i % keys` for event `i`, in
/// requests of `batch` single-event appends; returns the fill's rate.
async fn fill(target: &Target, topic: &str, count: u64, config: &BenchConfig) -> LoadgenResult<u64> {
    let payload = vec![b'g'; config.size];
    let batch = config.batch.max(1) as u64;
    let requests = (0..count.div_ceil(batch)).map(|index| {
        let first = index * batch;
        let appends: Vec<AppendRequest> = (first..count.min(first + batch))
            .map(|event_index| AppendRequest::new(key_of(event_index % config.keys), vec![event(&payload)]))
            .collect();
        (index, appends)
    });
    let per_stream = deal(requests, config.concurrency);
    let (elapsed, outcome) = run_streams(target, topic, per_stream, batched_window(config), false).await?;
    if outcome.errors > 0 {
        return Err(LoadgenError::Failed(format!(
            "{} appends failed while filling the topic",
            outcome.errors
        )));
    }
    Ok((count as f64 / elapsed.as_secs_f64().max(1e-9)).round() as u64)
}

/// A process's CPU time so far (user + system) from `/proc/PID/stat`, in
/// seconds; Linux reports it in USER_HZ ticks, which are 1/100 s.
fn process_cpu_seconds(pid: u32) -> LoadgenResult<f64> {
    let path = format!("/proc/{pid}/stat");
    let text =
        std::fs::read_to_string(&path).map_err(|error| LoadgenError::Io(format!("{path}: {error}")))?;
    // The command name may hold spaces: the fields that follow it start after its `)`.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<u64>().ok());
    // utime and stime are fields 14 and 15; `fields` starts at field 3.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / 100.0),
        _ => Err(LoadgenError::Io(format!("{path}: no utime and stime"))),
    }
}

/// The server's CPU time while `timed` ran, when its process id is known.
pub(crate) struct CpuMeter {
    pid: Option<u32>,
    started: f64,
}

impl CpuMeter {
    pub(crate) fn start(pid: Option<u32>) -> LoadgenResult<CpuMeter> {
        let started = match pid {
            Some(pid) => process_cpu_seconds(pid)?,
            None => 0.0,
        };
        Ok(CpuMeter { pid, started })
    }

    /// Adds `server_cpu_seconds` (since the start) and its cost per event.
    pub(crate) fn insert(&self, line: &mut serde_json::Map<String, Value>, events: u64) -> LoadgenResult<()> {
        if let Some(pid) = self.pid {
            let seconds = process_cpu_seconds(pid)? - self.started;
            line.insert("server_cpu_seconds".into(), json!(round(seconds, 2)));
            line.insert(
                "server_cpu_us_per_event".into(),
                json!(round(seconds * 1e6 / events.max(1) as f64, 2)),
            );
        }
        Ok(())
    }
}

/// The common fields of a consumer-group line.
fn group_line(
    scenario: GroupScenario,
    durability: Durability,
    config: &BenchConfig,
    events: u64,
    elapsed: Duration,
    latencies_us: &mut [u64],
    errors: u64,
) -> serde_json::Map<String, Value> {
    crate::line_of(
        scenario.name(),
        durability,
        config,
        events,
        elapsed,
        latencies_us,
        errors,
    )
}

/// Runs one consumer-group scenario on the fresh `topic`.
pub(crate) async fn run(
    target: &Target,
    client: &Client,
    scenario: GroupScenario,
    topic: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let count = config.count.unwrap_or_else(|| scenario.count_default()).max(1);
    let fill_events_per_s = fill(target, topic, count, config).await?;
    let mut line = match scenario {
        GroupScenario::Group => group(target, client, topic, count, durability, config).await?,
        GroupScenario::Baseline => baseline(target, topic, count, durability, config).await?,
    };
    line.insert("fill_events_per_s".into(), json!(fill_events_per_s));
    Ok(line)
}

/// What the members of a run see together.
struct Shared {
    /// Events in the topic: the run ends when this many settles are confirmed.
    count: u64,
    ledger: Mutex<Ledger>,
    confirmed: AtomicU64,
    /// Deliveries received and not yet acked, over all members, and its peak.
    unacked: AtomicI64,
    unacked_max: AtomicI64,
    done: watch::Sender<bool>,
}

/// Per-key order and the positions delivered, over all members: a key moves
/// between members, so its order can only be checked in one place.
#[derive(Default)]
struct Ledger {
    last_sequences: HashMap<Vec<u8>, u64>,
    delivered: HashSet<(u32, u64)>,
}

/// What [`Ledger::record`] found about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    /// Its position was delivered before.
    again: bool,
    /// Its key's sequence is not above the key's last one (a redelivery may
    /// repeat the last one, nothing may go back).
    out_of_order: bool,
}

impl Ledger {
    fn record(&mut self, event: &RecordedEvent) -> Seen {
        let again = !self.delivered.insert((event.partition.0, event.offset.0));
        let sequence = event.sequence.0;
        let out_of_order = match self.last_sequences.get_mut(&event.key) {
            None => {
                self.last_sequences.insert(event.key.clone(), sequence);
                false
            }
            Some(last) => {
                let out_of_order = sequence < *last || (sequence == *last && !again);
                *last = (*last).max(sequence);
                out_of_order
            }
        };
        Seen { again, out_of_order }
    }
}

/// One member's counts.
#[derive(Debug, Default)]
struct MemberOutcome {
    window: u32,
    deliveries: u64,
    redelivered: u64,
    order_violations: u64,
    refused: u64,
    confirmed: u64,
    ack_messages: u64,
    settled_messages: u64,
    latencies_us: Vec<u64>,
    first_delivery: Option<Instant>,
    last_confirmed: Option<Instant>,
}

/// One member: joins, acks every delivery (those that arrived together in one
/// message), and stops once the run is done.
async fn member(
    client: Client,
    group: String,
    instance: String,
    window: u32,
    shared: Arc<Shared>,
    mut done: watch::Receiver<bool>,
) -> LoadgenResult<MemberOutcome> {
    let mut stream = client.consume(&group, &instance, window).await?;
    let mut outcome = MemberOutcome::default();
    match stream.next().await {
        Some(Ok(ConsumeItem::Joined(joined))) => outcome.window = joined.window,
        Some(Err(error)) => return Err(error.into()),
        other => {
            return Err(LoadgenError::Failed(format!(
                "{instance}: the consume stream began with {other:?} instead of joined"
            )));
        }
    }
    let sender = stream.sender();
    let mut pending: Vec<String> = Vec::new();
    let mut received: HashMap<String, Instant> = HashMap::new();
    // Bounded by the run's end (`done`), which the coordinator also sets when
    // confirmations stall.
    while !*done.borrow() {
        tokio::select! {
            biased;
            changed = done.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            item = stream.next() => {
                let item = match item {
                    Some(item) => item?,
                    None => {
                        return Err(LoadgenError::Failed(format!("{instance}: the consume stream ended early")));
                    }
                };
                match item {
                    ConsumeItem::Delivery(delivery) => {
                        let now = Instant::now();
                        outcome.first_delivery.get_or_insert(now);
                        outcome.deliveries += 1;
                        let seen = shared
                            .ledger
                            .lock()
                            .expect("no member panics while holding the ledger")
                            .record(&delivery.event);
                        outcome.redelivered += u64::from(seen.again);
                        outcome.order_violations += u64::from(seen.out_of_order);
                        let unacked = shared.unacked.fetch_add(1, Ordering::Relaxed) + 1;
                        shared.unacked_max.fetch_max(unacked, Ordering::Relaxed);
                        received.insert(delivery.delivery_id.clone(), now);
                        pending.push(delivery.delivery_id);
                    }
                    ConsumeItem::Settled { delivery_ids } => {
                        let now = Instant::now();
                        outcome.settled_messages += 1;
                        let mut confirmed = 0u64;
                        for id in &delivery_ids {
                            if let Some(arrived) = received.remove(id) {
                                outcome.latencies_us.push(micros(now - arrived));
                                confirmed += 1;
                            }
                        }
                        outcome.confirmed += confirmed;
                        outcome.last_confirmed = Some(now);
                        let total = shared.confirmed.fetch_add(confirmed, Ordering::Relaxed) + confirmed;
                        if total >= shared.count {
                            shared.done.send_replace(true);
                        }
                    }
                    ConsumeItem::Refused(refused) => {
                        outcome.refused += 1;
                        received.remove(&refused.delivery_id);
                    }
                    ConsumeItem::Heartbeat { .. } => {}
                    ConsumeItem::Joined(joined) => {
                        return Err(LoadgenError::Failed(format!(
                            "{instance}: a second joined message (member epoch {})",
                            joined.member_epoch
                        )));
                    }
                }
            }
            // Nothing more has arrived: ack what did, in one message.
            () = std::future::ready(()), if !pending.is_empty() => {
                let ids = std::mem::take(&mut pending);
                shared.unacked.fetch_sub(ids.len() as i64, Ordering::Relaxed);
                sender.ack(ids).await?;
                outcome.ack_messages += 1;
            }
        }
    }
    drop(sender);
    // Whatever arrives now is left unsettled; after a complete run nothing does.
    match tokio::time::timeout(CLOSE_BOUND, stream.close()).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(LoadgenError::Failed(format!(
                "{instance}: the server did not end the consume stream within {CLOSE_BOUND:?}"
            )));
        }
    }
    Ok(outcome)
}

async fn group(
    target: &Target,
    client: &Client,
    topic: &str,
    count: u64,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let members = config.concurrency.max(1);
    let window = u32::try_from(config.in_flight).unwrap_or(u32::MAX).max(1);
    let name = format!("{topic}-group");
    let options = GroupOptions {
        settings: GroupSettings {
            in_flight_per_member_max: window,
            ..GroupSettings::default()
        },
        start: GroupStart::Earliest,
    };
    client.create_group(&name, topic, &options).await?;
    let mut clients = Vec::with_capacity(members);
    for _ in 0..members {
        clients.push(target.connect().await?);
    }
    let cpu = CpuMeter::start(config.server_pid)?;
    let (done, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        count,
        ledger: Mutex::new(Ledger::default()),
        confirmed: AtomicU64::new(0),
        unacked: AtomicI64::new(0),
        unacked_max: AtomicI64::new(0),
        done,
    });
    let mut tasks = JoinSet::new();
    for (index, member_client) in clients.into_iter().enumerate() {
        tasks.spawn(member(
            member_client,
            name.clone(),
            format!("bench-member-{index}"),
            window,
            Arc::clone(&shared),
            shared.done.subscribe(),
        ));
    }
    let mut outcomes = Vec::with_capacity(members);
    let mut stalled = false;
    let mut confirmed_before = 0;
    // Bounded by the members, which end once the run is done or stalled.
    loop {
        match tokio::time::timeout(STALL_BOUND, tasks.join_next()).await {
            Ok(None) => break,
            Ok(Some(joined)) => {
                let outcome = joined
                    .map_err(|error| LoadgenError::Failed(format!("group member task failed: {error}")))
                    .and_then(|outcome| outcome);
                match outcome {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => {
                        shared.done.send_replace(true);
                        return Err(error);
                    }
                }
            }
            Err(_) => {
                let confirmed = shared.confirmed.load(Ordering::Relaxed);
                if confirmed == confirmed_before {
                    stalled = true;
                    shared.done.send_replace(true);
                }
                confirmed_before = confirmed;
            }
        }
    }
    let mut cpu_line = serde_json::Map::new();
    cpu.insert(&mut cpu_line, count)?;
    let described = client.describe_group(&name).await?;
    client.delete_group(&name).await?;
    let distinct = shared
        .ledger
        .lock()
        .expect("the members have ended")
        .delivered
        .len() as u64;
    let first = outcomes.iter().filter_map(|outcome| outcome.first_delivery).min();
    let last = outcomes.iter().filter_map(|outcome| outcome.last_confirmed).max();
    let elapsed = match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let mut latencies: Vec<u64> = outcomes
        .iter_mut()
        .flat_map(|outcome| std::mem::take(&mut outcome.latencies_us))
        .collect();
    let sum = |field: fn(&MemberOutcome) -> u64| outcomes.iter().map(field).sum::<u64>();
    let confirmed = sum(|outcome| outcome.confirmed);
    let order_violations = sum(|outcome| outcome.order_violations);
    let ack_messages = sum(|outcome| outcome.ack_messages);
    let settled_messages = sum(|outcome| outcome.settled_messages);
    let deliveries = sum(|outcome| outcome.deliveries);
    let errors = order_violations + count.saturating_sub(confirmed);
    let mut line = group_line(
        GroupScenario::Group,
        durability,
        config,
        confirmed,
        elapsed,
        &mut latencies,
        errors,
    );
    line.insert(
        "latency_per".into(),
        json!("delivery arrival to its Settled confirmation"),
    );
    line.insert("members".into(), json!(members));
    line.insert(
        "window".into(),
        json!(outcomes.iter().map(|outcome| outcome.window).collect::<Vec<_>>()),
    );
    line.insert("deliveries".into(), json!(deliveries));
    line.insert("redelivered".into(), json!(sum(|outcome| outcome.redelivered)));
    line.insert("order_violations".into(), json!(order_violations));
    line.insert("refused".into(), json!(sum(|outcome| outcome.refused)));
    line.insert("ack_messages".into(), json!(ack_messages));
    line.insert(
        "acks_per_message".into(),
        json!(round(deliveries as f64 / ack_messages.max(1) as f64, 1)),
    );
    line.insert("settled_messages".into(), json!(settled_messages));
    line.insert(
        "settles_per_confirmation".into(),
        json!(round(confirmed as f64 / settled_messages.max(1) as f64, 1)),
    );
    line.insert(
        "unacked_max".into(),
        json!(shared.unacked_max.load(Ordering::Relaxed)),
    );
    line.insert(
        "deliveries_per_member".into(),
        json!(
            outcomes
                .iter()
                .map(|outcome| outcome.deliveries)
                .collect::<Vec<_>>()
        ),
    );
    line.insert("stalled".into(), json!(stalled));
    line.extend(cpu_line);
    line.insert(
        "described".into(),
        json!({
            "lag": described.lag,
            "in_flight": described.in_flight_count,
            "redelivered_count": described.redelivered_count,
            "parked_count": described.parked_count,
        }),
    );
    line.insert(
        "group_ok".into(),
        json!(
            errors == 0
                && !stalled
                && distinct == count
                && confirmed == count
                && described.lag == 0
                && described.parked_count == 0
        ),
    );
    Ok(line)
}

/// One subscription's counts.
#[derive(Debug, Default)]
struct SubscriberOutcome {
    events: u64,
    messages: u64,
    redelivered: u64,
    order_violations: u64,
    caught_up: bool,
    gaps_us: Vec<u64>,
    first_event: Option<Instant>,
    caught_up_at: Option<Instant>,
}

/// One subscription over `partitions` from the earliest event until `CaughtUp`.
async fn subscriber(
    client: Client,
    topic: String,
    partitions: Vec<PartitionId>,
    batch_events_max: u32,
) -> LoadgenResult<SubscriberOutcome> {
    let options = SubscribeOptions {
        partitions,
        start: StartPosition::Earliest,
        max_batch_events: batch_events_max,
        ..SubscribeOptions::default()
    };
    let mut subscription = client.subscribe(&topic, &options).await?;
    let mut outcome = SubscriberOutcome::default();
    // A key lives in one partition, so its order is checked here alone.
    let mut last_sequences: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut next_offsets: HashMap<u32, u64> = HashMap::new();
    let mut last = Instant::now();
    // Bounded by the server's CaughtUp (or the end of the stream).
    while let Some(item) = subscription.next().await {
        let now = Instant::now();
        match item? {
            SubscriptionItem::Events { events, .. } => {
                outcome.first_event.get_or_insert(now);
                if outcome.messages > 0 {
                    outcome.gaps_us.push(micros(now - last));
                }
                outcome.messages += 1;
                outcome.events += events.len() as u64;
                for event in &events {
                    let next = next_offsets.entry(event.partition.0).or_default();
                    if event.offset.0 < *next {
                        outcome.redelivered += 1;
                    }
                    *next = (*next).max(event.offset.0 + 1);
                    let sequence = event.sequence.0;
                    match last_sequences.get_mut(&event.key) {
                        None => {
                            last_sequences.insert(event.key.clone(), sequence);
                        }
                        Some(last_sequence) => {
                            outcome.order_violations += u64::from(sequence <= *last_sequence);
                            *last_sequence = (*last_sequence).max(sequence);
                        }
                    }
                }
            }
            SubscriptionItem::CaughtUp { .. } => {
                outcome.caught_up = true;
                outcome.caught_up_at = Some(now);
                break;
            }
            SubscriptionItem::Heartbeat { .. } => {}
        }
        last = Instant::now();
    }
    Ok(outcome)
}

async fn baseline(
    target: &Target,
    topic: &str,
    count: u64,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let subscribers = config.concurrency.max(1).min(config.partitions.max(1) as usize);
    let mut clients = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        clients.push(target.connect().await?);
    }
    let cpu = CpuMeter::start(config.server_pid)?;
    let mut tasks = Vec::with_capacity(subscribers);
    for (index, subscriber_client) in clients.into_iter().enumerate() {
        let partitions = (0..config.partitions)
            .filter(|partition| *partition as usize % subscribers == index)
            .map(PartitionId)
            .collect();
        tasks.push(tokio::spawn(subscriber(
            subscriber_client,
            topic.to_string(),
            partitions,
            config.read_batch_events,
        )));
    }
    let mut outcomes = Vec::with_capacity(subscribers);
    for task in tasks {
        outcomes.push(
            task.await
                .map_err(|error| LoadgenError::Failed(format!("subscriber task failed: {error}")))??,
        );
    }
    let mut cpu_line = serde_json::Map::new();
    cpu.insert(&mut cpu_line, count)?;
    let first = outcomes.iter().filter_map(|outcome| outcome.first_event).min();
    let last = outcomes.iter().filter_map(|outcome| outcome.caught_up_at).max();
    let elapsed = match (first, last) {
        (Some(first), Some(last)) => last - first,
        _ => Duration::ZERO,
    };
    let mut gaps: Vec<u64> = outcomes
        .iter_mut()
        .flat_map(|outcome| std::mem::take(&mut outcome.gaps_us))
        .collect();
    let sum = |field: fn(&SubscriberOutcome) -> u64| outcomes.iter().map(field).sum::<u64>();
    let events = sum(|outcome| outcome.events);
    let redelivered = sum(|outcome| outcome.redelivered);
    let order_violations = sum(|outcome| outcome.order_violations);
    let caught_up = outcomes.iter().all(|outcome| outcome.caught_up);
    let errors = order_violations + count.saturating_sub(events);
    let mut line = group_line(
        GroupScenario::Baseline,
        durability,
        config,
        events,
        elapsed,
        &mut gaps,
        errors,
    );
    line.insert("latency_per".into(), json!("message gap"));
    line.insert("subscribers".into(), json!(subscribers));
    line.insert("messages".into(), json!(sum(|outcome| outcome.messages)));
    line.insert("max_batch_events".into(), json!(config.read_batch_events));
    line.insert("redelivered".into(), json!(redelivered));
    line.insert("order_violations".into(), json!(order_violations));
    line.insert("caught_up".into(), json!(caught_up));
    line.extend(cpu_line);
    line.insert(
        "read_ok".into(),
        json!(caught_up && errors == 0 && redelivered == 0 && events == count),
    );
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele_engine::Sequence;
    use stele_engine::event::Offset;

    fn recorded(key: &str, sequence: u64, offset: u64) -> RecordedEvent {
        RecordedEvent {
            partition: PartitionId(0),
            offset: Offset(offset),
            timestamp_ms: 0,
            key: key.as_bytes().to_vec(),
            sequence: Sequence(sequence),
            event_type: "bench".into(),
            payload: Vec::new(),
            headers: Vec::new(),
            idempotency_id: None,
            producer: None,
        }
    }

    #[test]
    fn ledger_accepts_a_redelivery_of_the_last_event_and_refuses_going_back() {
        // Goal: a key's deliveries must rise; a redelivery may repeat only the
        // key's last event. Method: feed the ledger a sequence of deliveries.
        let mut ledger = Ledger::default();
        let fine = Seen {
            again: false,
            out_of_order: false,
        };
        assert_eq!(ledger.record(&recorded("a", 0, 0)), fine);
        assert_eq!(ledger.record(&recorded("a", 1, 1)), fine);
        assert_eq!(ledger.record(&recorded("b", 0, 2)), fine);
        // The key's last event again: a redelivery, in order.
        assert_eq!(
            ledger.record(&recorded("a", 1, 1)),
            Seen {
                again: true,
                out_of_order: false
            }
        );
        // An older event of the key again: out of order.
        assert_eq!(
            ledger.record(&recorded("a", 0, 0)),
            Seen {
                again: true,
                out_of_order: true
            }
        );
        // A new position with a sequence that is not above the last: out of order.
        assert_eq!(
            ledger.record(&recorded("b", 0, 3)),
            Seen {
                again: false,
                out_of_order: true
            }
        );
    }
}
