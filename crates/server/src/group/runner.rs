//! One consumer group's runner: a task that owns the group's delivery core,
//! reads its topic (and redriven dead letters), hands deliveries to the
//! members' streams, applies their settles, takes expired leases back, parks
//! events, and writes every progress change to the group journal.
//!
//! Invariant: progress changes are written in the order the core made them,
//! one journal record at a time (one write in flight), so the journal's state
//! is always a state the core passed through. A crash loses at most the
//! changes not yet written: their events are delivered again (at least once).
//! Invariant: only this task changes the group's progress while it runs; seek
//! and redrive go through it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tonic::Status;

use super::{GroupFigures, Shared, dead_letter_job, parked_event_of_blocked};
use crate::delivery::core::{Action, Core, Counters, DeliveryId, Effect, Job, MemberId, Position, Settings};
use crate::delivery::{Source, append_until_stored, fill, now_ms, random_fraction, waits};
use stele_engine::error::{Error, Result};
use stele_engine::event::{AppendRequest, Event, PartitionId, RecordedEvent};
use stele_engine::group::GroupStore;
use stele_engine::group::{GroupState, PartitionProgress, ProgressChange};
use stele_engine::limits::{
    GROUP_PROGRESS_CHANGES_COUNT_MAX, GROUP_PROGRESS_ENTRIES_MAX, WEBHOOK_BUFFERED_SIZE_BYTES_MAX,
};
use stele_engine::{EventFilter, EventRef};
use stele_wire::convert;
use stele_wire::proto;
use stele_wire::status::to_status;

/// Members one group may have at once (each a stream and a metrics series).
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// Events a group holds in memory at most.
pub const GROUP_BUFFERED_EVENTS_COUNT_MAX: usize = 10_000;
/// How often an idle runner wakes (leases, heartbeats, figures).
const TICK: Duration = Duration::from_millis(250);
/// A member that was sent nothing for this long gets a heartbeat.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the figures are reported to the observer.
const FIGURES_INTERVAL: Duration = Duration::from_secs(1);

/// What a member's stream receives.
pub type Outbound = std::result::Result<proto::ConsumeResponse, Status>;

/// One event a group delivers: the event as the member sees it.
#[derive(Debug)]
pub struct GroupJob {
    /// For a redriven parked event: its original partition, offset and sequence.
    pub event: RecordedEvent,
}

/// A request to a runner.
pub enum Command {
    /// A member joins; the runner answers with its id and sends `joined`.
    Join {
        /// The member's instance id.
        instance: String,
        /// The window it asks for (0: the group's maximum).
        window: u32,
        /// Its stream.
        outgoing: mpsc::Sender<Outbound>,
        /// The member id, or why it may not join.
        reply: oneshot::Sender<Result<MemberId>>,
    },
    /// A member's stream ended.
    Leave {
        /// Who.
        member: MemberId,
    },
    /// A member settles deliveries.
    Settle {
        /// Who.
        member: MemberId,
        /// The delivery ids as sent.
        ids: Vec<String>,
        /// What to do with each.
        action: Action,
    },
    /// The runner's view.
    Describe {
        /// Where to answer.
        reply: oneshot::Sender<RunnerView>,
    },
    /// Writes these changes and the definition's redrive marks, then starts
    /// over from the journal (seek, redrive): deliveries in flight are
    /// abandoned (their settles are refused).
    Reset {
        /// The changes.
        changes: Vec<ProgressChange>,
        /// A new definition to store first, if any.
        state: Option<GroupState>,
        /// Whether to unblock every blocked key too (redrive).
        unblock: bool,
        /// Answered when done, with the count of keys unblocked.
        reply: oneshot::Sender<Result<u64>>,
    },
    /// The group is being deleted: end the members' streams with NOT_FOUND
    /// (the runner stops when its command channel closes next).
    Deleting,
    /// The blocked keys' heads.
    Blocked {
        /// Where to answer.
        reply: oneshot::Sender<Vec<proto::ParkedEvent>>,
    },
}

/// A runner's figures for DescribeGroup.
#[derive(Debug, Clone, Default)]
pub struct RunnerView {
    /// By partition of the topic: floor and settled above it.
    pub lanes: Vec<(u64, u64)>,
    /// The members.
    pub members: Vec<proto::GroupMember>,
    /// Deliveries in flight.
    pub in_flight: u64,
    /// Since the runner started.
    pub redelivered: u64,
    /// Since the runner started.
    pub parked: u64,
    /// Keys blocked now.
    pub blocked_keys: u64,
    /// The append time of the oldest held event.
    pub oldest_held_ms: Option<i64>,
}

struct MemberSink {
    outgoing: mpsc::Sender<Outbound>,
    last_sent: Instant,
}

struct Runner {
    shared: Arc<Shared>,
    name: String,
    topic: String,
    dead_letter_topic: String,
    sources: Vec<Source>,
    core: Core<GroupJob>,
    members: HashMap<MemberId, MemberSink>,
    window_max: u32,
    lease_ms: u64,
    /// The journal write in flight, and the settles it makes durable.
    flushing: Option<tokio::task::JoinHandle<Result<()>>>,
    flushing_settles: Vec<(MemberId, String)>,
    /// Settles applied since the write in flight started, to confirm once
    /// written.
    settles: Vec<(MemberId, String)>,
    /// Parks being appended, with the settle to confirm after.
    parks: HashMap<Position, (MemberId, String)>,
    parking: JoinSet<Position>,
    reported_at: Instant,
    /// The topic's high watermarks at the last report, for heartbeats.
    high_watermarks: Vec<u64>,
    /// Counts of the cores this runner had before its last reset (seek,
    /// redrive), so that its figures keep counting across them.
    carried: Counters,
}

/// Runs group `name` until `commands` closes.
///
/// # Errors
/// Backend and journal errors (the supervisor starts it again after a pause;
/// the members' streams end with the error and they join again).
pub(crate) async fn run(
    shared: Arc<Shared>,
    name: String,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<()> {
    let mut runner = Runner::open(shared, name).await?;
    let result = runner.serve(commands).await;
    if let Err(error) = &result {
        runner.end_members(to_status(error));
    }
    result
}

impl Runner {
    async fn open(shared: Arc<Shared>, name: String) -> Result<Runner> {
        let state = shared.store.get(&name)?;
        let core = build_core(&shared, &state).await?;
        let settings = &state.definition.settings;
        let mut sources = vec![Source {
            topic: state.definition.topic.clone(),
            filter: EventFilter::all(),
        }];
        if core.lanes_count(1) > 0 {
            sources.push(Source {
                topic: settings.dead_letter_topic.clone(),
                filter: EventFilter::all(),
            });
        }
        Ok(Runner {
            topic: state.definition.topic.clone(),
            dead_letter_topic: settings.dead_letter_topic.clone(),
            window_max: settings.in_flight_per_member_max,
            lease_ms: settings.lease_ms,
            shared,
            name,
            sources,
            core,
            members: HashMap::new(),
            flushing: None,
            flushing_settles: Vec::new(),
            settles: Vec::new(),
            parks: HashMap::new(),
            parking: JoinSet::new(),
            // The first report comes at once.
            reported_at: Instant::now()
                .checked_sub(FIGURES_INTERVAL)
                .unwrap_or_else(Instant::now),
            high_watermarks: Vec::new(),
            carried: Counters::default(),
        })
    }

    async fn serve(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Result<()> {
        loop {
            let read = if self.core.has_room() {
                self.fill().await?
            } else {
                false
            };
            self.send_deliveries();
            self.flush_if_idle().await?;
            self.tick();
            self.report().await?;
            if read && self.core.has_room() {
                tokio::task::yield_now().await;
                // Commands first: settles free room and keys.
                while let Ok(command) = commands.try_recv() {
                    self.command(command).await?;
                }
                continue;
            }
            let mut waits = if self.core.has_room() {
                waits(&mut self.core, &self.shared.backend, &self.sources)
            } else {
                Vec::new()
            };
            let due = self
                .core
                .next_due_ms()
                .map(|due| Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64))
                .unwrap_or(TICK)
                .min(TICK);
            let flushing = self.flushing.is_some();
            let parking = !self.parking.is_empty();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        self.command(command).await?;
                        while let Ok(command) = commands.try_recv() {
                            self.command(command).await?;
                        }
                    }
                    None => return self.stop().await,
                },
                flushed = async { self.flushing.as_mut().expect("checked").await }, if flushing => {
                    self.flushing = None;
                    flushed.map_err(|_| Error::Closed)??;
                    self.confirm();
                }
                Some(parked) = self.parking.join_next(), if parking => {
                    if let Ok(position) = parked {
                        self.parked(position);
                    }
                }
                (_, woken) = crate::subscription::any(&mut waits), if !waits.is_empty() => {
                    woken?;
                }
                _ = tokio::time::sleep(due) => {}
            }
        }
    }

    async fn fill(&mut self) -> Result<bool> {
        let name = self.name.clone();
        let decode = move |stream: u8, event: &EventRef<'_>| -> Option<Job<GroupJob>> {
            let recorded = if stream == 0 {
                event.to_recorded()
            } else {
                dead_letter_job(&name, event)?
            };
            let size = (recorded.payload.len() + recorded.key.len()) as u64
                + recorded
                    .headers
                    .iter()
                    .map(|(name, value)| (name.len() + value.len()) as u64)
                    .sum::<u64>();
            Some(Job {
                position: Position {
                    stream,
                    partition: event.partition.0,
                    offset: event.offset.0,
                },
                key: recorded.key.clone(),
                timestamp_ms: recorded.timestamp_ms,
                size,
                payload: Arc::new(GroupJob { event: recorded }),
            })
        };
        fill(
            &mut self.core,
            &self.shared.backend,
            &self.sources,
            &decode,
            now_ms,
        )
        .await
    }

    fn send_deliveries(&mut self) {
        let now = now_ms();
        let effects = self.core.expire(now);
        self.start_effects(effects);
        for outgoing in self.core.dispatch(now) {
            let delivery = proto::Delivery {
                event: Some(convert::stored_to_proto(&outgoing.payload.event.as_event_ref())),
                attempt: outgoing.id.attempt,
                lease_deadline_ms: outgoing.deadline_ms,
                delivery_id: outgoing.id.to_string(),
                member_epoch: outgoing.member.0,
            };
            let message = proto::ConsumeResponse {
                kind: Some(proto::consume_response::Kind::Delivery(delivery)),
            };
            let sent = self
                .members
                .get_mut(&outgoing.member)
                .map(|sink| {
                    sink.last_sent = Instant::now();
                    sink.outgoing.try_send(Ok(message)).is_ok()
                })
                .unwrap_or(false);
            if !sent {
                // The stream is gone (its leave is on its way) or its buffer
                // is full (it holds at most its window, so it is gone too).
                self.leave(outgoing.member);
            }
        }
    }

    fn leave(&mut self, member: MemberId) {
        self.members.remove(&member);
        let effects = self.core.leave(member, now_ms());
        self.start_effects(effects);
    }

    fn start_effects(&mut self, effects: Vec<Effect<GroupJob>>) {
        for effect in effects {
            let Effect::Park {
                position,
                payload,
                reason,
                attempts,
            } = effect;
            let shared = Arc::clone(&self.shared);
            let name = self.name.clone();
            let topic = self.topic.clone();
            let dead_letter_topic = self.dead_letter_topic.clone();
            self.parking.spawn(async move {
                park(
                    &shared,
                    &name,
                    &topic,
                    &dead_letter_topic,
                    position,
                    &payload.event,
                    &reason,
                    attempts,
                )
                .await;
                position
            });
        }
    }

    /// An event being parked is stored in the dead-letter topic.
    fn parked(&mut self, position: Position) {
        self.core.parked(position, now_ms());
        if let Some(settle) = self.parks.remove(&position) {
            self.settles.push(settle);
        }
    }

    /// Starts writing the core's changes when no write is in flight.
    async fn flush_if_idle(&mut self) -> Result<()> {
        if self.flushing.is_some() {
            return Ok(());
        }
        let changes = self.core.take_changes();
        if changes.is_empty() {
            let settles = std::mem::take(&mut self.settles);
            self.confirm_settles(settles);
            return Ok(());
        }
        let store = Arc::clone(&self.shared.store);
        let name = self.name.clone();
        self.flushing_settles = std::mem::take(&mut self.settles);
        self.flushing = Some(tokio::task::spawn_blocking(move || {
            write_changes(&store, &name, changes)
        }));
        Ok(())
    }

    /// The write in flight is durable: confirms its settles.
    fn confirm(&mut self) {
        let settles = std::mem::take(&mut self.flushing_settles);
        self.confirm_settles(settles);
    }

    fn confirm_settles(&mut self, settles: Vec<(MemberId, String)>) {
        if settles.is_empty() {
            return;
        }
        let mut by_member: HashMap<MemberId, Vec<String>> = HashMap::new();
        for (member, id) in settles {
            by_member.entry(member).or_default().push(id);
        }
        for (member, delivery_ids) in by_member {
            if let Some(sink) = self.members.get_mut(&member) {
                sink.last_sent = Instant::now();
                let _ = sink.outgoing.try_send(Ok(proto::ConsumeResponse {
                    kind: Some(proto::consume_response::Kind::Settled(proto::Settled {
                        delivery_ids,
                    })),
                }));
            }
        }
    }

    /// Waits for the write in flight and writes what is left.
    async fn flush_all(&mut self) -> Result<()> {
        if let Some(flushing) = self.flushing.take() {
            flushing.await.map_err(|_| Error::Closed)??;
            self.confirm();
        }
        let changes = self.core.take_changes();
        if !changes.is_empty() {
            let store = Arc::clone(&self.shared.store);
            let name = self.name.clone();
            tokio::task::spawn_blocking(move || write_changes(&store, &name, changes))
                .await
                .map_err(|_| Error::Closed)??;
        }
        let settles = std::mem::take(&mut self.settles);
        self.confirm_settles(settles);
        Ok(())
    }

    fn tick(&mut self) {
        let heartbeat = proto::ConsumeResponse {
            kind: Some(proto::consume_response::Kind::Heartbeat(proto::Heartbeat {
                high_watermarks: self
                    .high_watermarks
                    .iter()
                    .enumerate()
                    .map(|(partition, offset)| (partition as u32, *offset))
                    .collect(),
            })),
        };
        let mut gone = Vec::new();
        for (member, sink) in &mut self.members {
            if sink.last_sent.elapsed() >= HEARTBEAT_INTERVAL {
                sink.last_sent = Instant::now();
                if matches!(
                    sink.outgoing.try_send(Ok(heartbeat.clone())),
                    Err(mpsc::error::TrySendError::Closed(_))
                ) {
                    gone.push(*member);
                }
            }
        }
        for member in gone {
            self.leave(member);
        }
    }

    /// Reports the figures to the observer, at most every `FIGURES_INTERVAL`.
    async fn report(&mut self) -> Result<()> {
        if self.reported_at.elapsed() < FIGURES_INTERVAL {
            return Ok(());
        }
        self.reported_at = Instant::now();
        let mut figures = self.figures();
        self.high_watermarks.clear();
        for (partition, (floor, settled)) in figures.floors.iter().enumerate() {
            let high_watermark = self
                .shared
                .backend
                .high_watermark(&self.topic, PartitionId(partition as u32))
                .await?
                .0;
            self.high_watermarks.push(high_watermark);
            figures.lag += high_watermark.saturating_sub(*floor).saturating_sub(*settled);
        }
        self.shared.observer.report(&self.name, &figures);
        Ok(())
    }

    fn figures(&self) -> GroupFigures {
        let counters = self.counters();
        GroupFigures {
            topic: self.topic.clone(),
            lag: 0,
            floors: (0..self.core.lanes_count(0) as u32)
                .map(|partition| {
                    let lane = self.core.lane(0, partition);
                    (lane.floor, lane.settled_above_floor)
                })
                .collect(),
            in_flight: self.core.in_flight_count() as u64,
            members: self
                .core
                .members()
                .map(|(_, member)| (member.instance.clone(), member.held.len() as u64))
                .collect(),
            redelivered: counters.redelivered,
            parked: counters.parked,
            acked: counters.acked,
            blocked_keys: self.core.blocked_keys().count() as u64,
            oldest_unsettled_age_ms: self
                .core
                .oldest_held_ms()
                .map_or(0, |oldest| now_ms().saturating_sub(oldest).max(0) as u64),
        }
    }

    async fn command(&mut self, command: Command) -> Result<()> {
        match command {
            Command::Join {
                instance,
                window,
                outgoing,
                reply,
            } => {
                let replaces = self.core.member_of_instance(&instance).is_some();
                if !replaces && self.members.len() >= GROUP_MEMBERS_MAX {
                    let _ = reply.send(Err(Error::LimitExceeded {
                        what: "members of a group",
                        value: self.members.len() as u64 + 1,
                        max: GROUP_MEMBERS_MAX as u64,
                    }));
                    return Ok(());
                }
                if let Some(previous) = self.core.member_of_instance(&instance) {
                    if let Some(sink) = self.members.get(&previous) {
                        let _ = sink
                            .outgoing
                            .try_send(Err(to_status(&Error::MemberReplaced(instance.clone()))));
                    }
                    self.leave(previous);
                }
                let window = if window == 0 {
                    self.window_max
                } else {
                    window.min(self.window_max)
                };
                let member = self.core.join(instance, window, now_ms());
                let joined = proto::ConsumeResponse {
                    kind: Some(proto::consume_response::Kind::Joined(proto::Joined {
                        member_epoch: member.0,
                        window,
                        lease_ms: self.lease_ms,
                    })),
                };
                if outgoing.try_send(Ok(joined)).is_ok() && reply.send(Ok(member)).is_ok() {
                    self.members.insert(
                        member,
                        MemberSink {
                            outgoing,
                            last_sent: Instant::now(),
                        },
                    );
                } else {
                    self.leave(member);
                }
            }
            Command::Leave { member } => self.leave(member),
            Command::Settle { member, ids, action } => {
                let now = now_ms();
                for text in ids {
                    let refused = match text.parse::<DeliveryId>() {
                        Err(()) => Some("a malformed delivery id"),
                        Ok(id) => match self
                            .core
                            .settle(member, id, action.clone(), now, random_fraction())
                        {
                            Ok(effect) => {
                                match (&action, &effect) {
                                    (Action::Extend, _) => {}
                                    (_, Some(Effect::Park { position, .. })) => {
                                        self.parks.insert(*position, (member, text.clone()));
                                    }
                                    _ => self.settles.push((member, text.clone())),
                                }
                                self.start_effects(effect.into_iter().collect());
                                None
                            }
                            Err(reason) => Some(reason),
                        },
                    };
                    if let Some(reason) = refused
                        && let Some(sink) = self.members.get_mut(&member)
                    {
                        let refused = proto::ConsumeResponse {
                            kind: Some(proto::consume_response::Kind::Refused(proto::SettleRefused {
                                message: Error::DeliveryStale {
                                    delivery_id: text.clone(),
                                    reason,
                                }
                                .to_string(),
                                delivery_id: text,
                                code: proto::ErrorCode::DeliveryStale as i32,
                            })),
                        };
                        sink.last_sent = Instant::now();
                        let _ = sink.outgoing.try_send(Ok(refused));
                    }
                }
            }
            Command::Describe { reply } => {
                let _ = reply.send(self.view());
            }
            Command::Deleting => {
                self.end_members(to_status(&Error::GroupNotFound(self.name.clone())));
            }
            Command::Blocked { reply } => {
                let blocked = self
                    .core
                    .blocked_keys()
                    .map(|(_, position)| {
                        let attempts = self
                            .core
                            .progress(position.stream, position.partition)
                            .pending(position.offset)
                            .map_or(0, |pending| pending.attempts);
                        (position, attempts)
                    })
                    .collect::<Vec<_>>();
                let mut events = Vec::new();
                for (position, attempts) in blocked {
                    events
                        .push(parked_event_of_blocked(&self.shared, &self.sources, position, attempts).await);
                }
                let _ = reply.send(events.into_iter().flatten().collect());
            }
            Command::Reset {
                changes,
                state,
                unblock,
                reply,
            } => {
                let result = self.reset(changes, state, unblock).await;
                let failed = result.as_ref().err().map(Error::duplicate);
                let _ = reply.send(result);
                if let Some(error) = failed {
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// The counts since the runner started, over its resets.
    fn counters(&self) -> Counters {
        let now = self.core.counters();
        let before = self.carried;
        Counters {
            redelivered: before.redelivered + now.redelivered,
            acked: before.acked + now.acked,
            parked: before.parked + now.parked,
        }
    }

    fn view(&self) -> RunnerView {
        let counters = self.counters();
        RunnerView {
            lanes: (0..self.core.lanes_count(0) as u32)
                .map(|partition| {
                    let lane = self.core.lane(0, partition);
                    (lane.floor, lane.settled_above_floor)
                })
                .collect(),
            members: self
                .core
                .members()
                .map(|(id, member)| proto::GroupMember {
                    instance_id: member.instance.clone(),
                    member_epoch: id.0,
                    window: member.window,
                    in_flight: member.held.len() as u32,
                    acked_count: member.acked,
                    joined_at_ms: member.joined_ms.max(0) as u64,
                })
                .collect(),
            in_flight: self.core.in_flight_count() as u64,
            redelivered: counters.redelivered,
            parked: counters.parked,
            blocked_keys: self.core.blocked_keys().count() as u64,
            oldest_held_ms: self.core.oldest_held_ms(),
        }
    }

    /// Writes `changes` (after everything pending) and, with `unblock`, the
    /// unblocking of every blocked key, then starts over from the journal;
    /// members stay joined with nothing in flight. Returns the keys unblocked.
    async fn reset(
        &mut self,
        mut changes: Vec<ProgressChange>,
        state: Option<GroupState>,
        unblock: bool,
    ) -> Result<u64> {
        self.flush_all().await?;
        // Parks in flight finish first: their events must be stored before
        // the state forgets them.
        while let Some(parked) = self.parking.join_next().await {
            if let Ok(position) = parked {
                self.parked(position);
            }
        }
        self.flush_all().await?;
        // The journal is up to date now: its blocked heads are the core's.
        let mut unblocked = 0;
        if unblock {
            let stored = self.shared.store.get(&self.name)?;
            for (stream, lanes) in stored.streams.iter().enumerate() {
                for (partition, progress) in lanes.iter().enumerate() {
                    for (offset, pending) in progress.pendings() {
                        if pending.blocked {
                            unblocked += 1;
                            changes.push(ProgressChange::Pending {
                                stream: stream as u8,
                                partition: partition as u32,
                                offset,
                                pending: None,
                            });
                        }
                    }
                }
            }
        }
        let store = Arc::clone(&self.shared.store);
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(state) = state {
                store.update_definition(&name, |definition| *definition = state.definition)?;
            }
            if changes.is_empty() {
                Ok(())
            } else {
                write_changes(&store, &name, changes)
            }
        })
        .await
        .map_err(|_| Error::Closed)??;
        let members: Vec<(MemberId, String, u32, i64)> = self
            .core
            .members()
            .map(|(id, member)| (id, member.instance.clone(), member.window, member.joined_ms))
            .collect();
        let fresh = Runner::open(Arc::clone(&self.shared), self.name.clone()).await?;
        let sinks = std::mem::take(&mut self.members);
        let carried = self.counters();
        *self = fresh;
        self.carried = carried;
        // The same streams go on as the same members with nothing in flight:
        // settles of their old deliveries are refused (not in flight).
        for (member, instance, window, joined_ms) in members {
            if let Some(sink) = sinks.get(&member) {
                self.core.join_as(member, instance, window, joined_ms);
                self.members.insert(
                    member,
                    MemberSink {
                        outgoing: sink.outgoing.clone(),
                        last_sent: Instant::now(),
                    },
                );
            }
        }
        Ok(unblocked)
    }

    /// Ends the members' streams with `status`.
    fn end_members(&mut self, status: Status) {
        for sink in self.members.values() {
            let _ = sink.outgoing.try_send(Err(status.clone()));
        }
        self.members.clear();
    }

    /// The runner is stopped (delete, shutdown): parks finish, changes are
    /// written; deliveries in flight are abandoned (delivered again later).
    async fn stop(&mut self) -> Result<()> {
        while let Some(parked) = self.parking.join_next().await {
            if let Ok(position) = parked {
                self.parked(position);
            }
        }
        let flushed = self.flush_all().await;
        self.end_members(Status::unavailable(
            "the group stopped on this server; join again",
        ));
        match flushed {
            // A deleted group has no journal entry to write to.
            Err(Error::GroupNotFound(_)) => Ok(()),
            other => other,
        }
    }
}

/// Writes `changes` to group `name`'s journal in order: adjacent settles of
/// one lane merged, then in records of at most
/// `GROUP_PROGRESS_CHANGES_COUNT_MAX` changes (a burst of settles during one
/// slow write can be more; a bench run found it).
fn write_changes(store: &GroupStore, name: &str, changes: Vec<ProgressChange>) -> Result<()> {
    let mut merged: Vec<ProgressChange> = Vec::with_capacity(changes.len());
    for change in changes {
        if let (
            Some(ProgressChange::Settle {
                stream,
                partition,
                end,
                ..
            }),
            ProgressChange::Settle {
                stream: next_stream,
                partition: next_partition,
                start: next_start,
                end: next_end,
            },
        ) = (merged.last_mut(), &change)
            && *stream == *next_stream
            && *partition == *next_partition
            && *end == *next_start
        {
            *end = *next_end;
            continue;
        }
        merged.push(change);
    }
    for chunk in merged.chunks(GROUP_PROGRESS_CHANGES_COUNT_MAX) {
        store.record(name, chunk.to_vec())?;
    }
    Ok(())
}

/// A core over the group's stored progress; partitions never written start at
/// the topic's earliest offset.
async fn build_core(shared: &Shared, state: &GroupState) -> Result<Core<GroupJob>> {
    let definition = &state.definition;
    let backend = &shared.backend;
    let partitions = backend.describe_topic(&definition.topic).await?.partitions.len();
    let mut topic_lanes = Vec::with_capacity(partitions);
    for partition in 0..partitions {
        let progress = match state.streams[0].get(partition) {
            Some(progress) => progress.clone(),
            None => PartitionProgress::new(
                backend
                    .earliest(&definition.topic, PartitionId(partition as u32))
                    .await?
                    .0,
            ),
        };
        topic_lanes.push((progress, None));
    }
    let mut streams = vec![topic_lanes];
    if definition.redrive_until.iter().any(|(_, until)| *until > 0) {
        let dead_letter_topic = &definition.settings.dead_letter_topic;
        let count = backend.describe_topic(dead_letter_topic).await?.partitions.len();
        let mut lanes = Vec::with_capacity(count);
        for partition in 0..count {
            let until = definition
                .redrive_until
                .iter()
                .find(|(mark, _)| *mark as usize == partition)
                .map_or(0, |(_, until)| *until);
            let progress = match state.streams[1].get(partition) {
                Some(progress) => progress.clone(),
                None => PartitionProgress::new(0),
            };
            lanes.push((progress, Some(until)));
        }
        streams.push(lanes);
    }
    let settings = &definition.settings;
    Ok(Core::new(
        Settings {
            lease_ms: Some(settings.lease_ms),
            deliveries_max: settings.deliveries_max,
            backoff_initial_ms: settings.backoff_initial_ms,
            backoff_max_ms: settings.backoff_max_ms,
            exhausted: settings.exhausted,
            buffered_count_max: GROUP_BUFFERED_EVENTS_COUNT_MAX,
            buffered_size_max: WEBHOOK_BUFFERED_SIZE_BYTES_MAX,
            // Room for the gaps the buffer can make, below the journal's bound.
            progress_entries_max: GROUP_PROGRESS_ENTRIES_MAX / 2,
        },
        streams,
        // Member ids grow across restarts of the runner and of the server.
        (now_ms().max(0) as u64).saturating_mul(1000),
    ))
}

/// Appends a parked event to the dead-letter topic, retrying until it is
/// stored (its idempotency id makes a retry after a crash a duplicate).
#[allow(clippy::too_many_arguments)]
async fn park(
    shared: &Shared,
    group: &str,
    topic: &str,
    dead_letter_topic: &str,
    position: Position,
    original: &RecordedEvent,
    reason: &str,
    attempts: u32,
) {
    use super::parked_headers as ph;
    let mut headers = original.headers.clone();
    headers.retain(|(name, _)| !name.starts_with(ph::PREFIX));
    headers.truncate(stele_engine::limits::HEADERS_COUNT_MAX - ph::COUNT);
    let mut reason_header = reason.to_string();
    reason_header.truncate(1024);
    headers.extend([
        (ph::GROUP.to_string(), group.as_bytes().to_vec()),
        (ph::REASON.to_string(), reason_header.into_bytes()),
        (ph::ATTEMPTS.to_string(), attempts.to_string().into_bytes()),
        (ph::TOPIC.to_string(), topic.as_bytes().to_vec()),
        (
            ph::PARTITION.to_string(),
            original.partition.to_string().into_bytes(),
        ),
        (ph::OFFSET.to_string(), original.offset.to_string().into_bytes()),
        (
            ph::SEQUENCE.to_string(),
            original.sequence.to_string().into_bytes(),
        ),
        (
            ph::TIMESTAMP_MS.to_string(),
            original.timestamp_ms.to_string().into_bytes(),
        ),
    ]);
    let idempotency_id = format!(
        "park:{group}:{}:{}:{}",
        position.stream, position.partition, position.offset
    );
    let event = Event {
        event_type: original.event_type.clone(),
        payload: original.payload.clone(),
        headers,
        idempotency_id: Some(idempotency_id.into_bytes()),
    };
    let request = AppendRequest::new(original.key.clone(), vec![event]);
    append_until_stored(&shared.backend, dead_letter_topic, request, &|error| {
        crate::limited!(warn, group, %error, "cannot append a parked event; retrying");
    })
    .await;
    crate::limited!(
        warn,
        group,
        topic,
        partition = position.partition,
        offset = position.offset,
        dead_letter_topic,
        attempts,
        reason,
        "consumer group parked an event"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele_engine::group::{GroupDefinition, GroupSettings};

    #[test]
    fn a_burst_above_one_record_is_written_in_several_in_order() {
        // Goal: a flush of more changes than one record may hold (a burst of
        // acks during one slow journal write) is written, not refused, and
        // the journal ends where the changes lead.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = GroupStore::open(Arc::new(stele_engine::io::StdStorage), dir.path()).expect("open");
        let mut state = GroupState::new(GroupDefinition {
            name: "g".into(),
            topic: "t".into(),
            settings: GroupSettings::defaults_for("t"),
            created_ms: 0,
            redrive_until: Vec::new(),
        });
        state.streams[0] = vec![PartitionProgress::new(0), PartitionProgress::new(0)];
        store.create(state).expect("create");
        // Settles alternate between two partitions (nothing merges), in
        // descending offsets on partition 1 (gaps until the last).
        let count = 2 * GROUP_PROGRESS_CHANGES_COUNT_MAX as u64 + 7;
        let mut changes = Vec::new();
        for offset in 0..count {
            changes.push(ProgressChange::Settle {
                stream: 0,
                partition: 0,
                start: offset,
                end: offset + 1,
            });
            changes.push(ProgressChange::Settle {
                stream: 0,
                partition: 1,
                start: count - 1 - offset,
                end: count - offset,
            });
        }
        write_changes(&store, "g", changes).expect("written");
        let stored = store.get("g").expect("get");
        assert_eq!(stored.streams[0][0].floor(), count);
        assert_eq!(stored.streams[0][1].floor(), count);
        assert_eq!(stored.streams[0][1].ranges_count(), 0);
    }
}
