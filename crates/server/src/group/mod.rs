//! Consumer groups: several members share a topic's events, each key
//! delivered in sequence order to one member at a time, different keys in
//! parallel, every delivery settled by its member (ack, retry, park) or taken
//! back when its lease ends.
//!
//! - [`Groups`] (here): the definitions (`stele_engine::group::GroupStore`,
//!   `groups.journal` in the data directory) and one runner per group,
//!   supervised: started at open and on create, started again after a failure,
//!   stopped on delete and shutdown.
//! - [`runner`]: a group's task over the shared delivery core
//!   (`crate::delivery::core`), which holds every rule of order, windows,
//!   leases, retries and exhaustion.
//!
//! Invariant: a group's progress (floor, settled ranges above it, attempts,
//! retry times, blocked keys) changes only through its runner, which writes
//! each change to the journal in order; a restart resumes from the journal
//! and delivers again only what was not settled there (at least once), with
//! the same delivery ids (derived from position and attempt).
//! Invariant: a member's settle of a delivery it does not hold (lease over,
//! an older membership, a reset group) is refused and changes nothing.

pub mod runner;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use self::runner::{Command, RunnerView};
use crate::backend::Backend;
use crate::delivery::Source;
use crate::delivery::core::{Action, MemberId, Position};
use stele_engine::error::{Error, Result};
use stele_engine::event::{Offset, PartitionId, RecordedEvent};
use stele_engine::group::{
    self as store, Exhausted, GroupDefinition, GroupSettings, GroupState, GroupStore, PartitionProgress,
    ProgressChange, defaults,
};
use stele_engine::limits;
use stele_engine::{EventFilter, EventRef};
use stele_wire::proto;

/// The pause before a failed runner is started again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// The lease bounds, ms.
const LEASE_MS_MIN: u64 = 100;
const LEASE_MS_MAX: u64 = 3_600_000;
/// The most deliveries per event a group may allow.
const DELIVERIES_MAX_MAX: u32 = 1000;
/// The most deliveries a member may hold.
const IN_FLIGHT_PER_MEMBER_MAX_MAX: u32 = 1024;

/// The headers a parked event carries besides its own: a webhook dead
/// letter's (`crate::webhook::dead_letter_headers`), with the group's name
/// in place of the endpoint's, no HTTP status and no `webhook-id`.
pub mod parked_headers {
    pub use crate::webhook::dead_letter_headers::{
        ATTEMPTS, OFFSET, PARTITION, PREFIX, REASON, SEQUENCE, TIMESTAMP_MS, TOPIC, original_event,
    };
    /// The group that parked it.
    pub const GROUP: &str = "stele-dl-group";
    /// How many headers a parked event gets.
    pub const COUNT: usize = 8;
}

/// A group's figures, reported about every second by its runner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupFigures {
    /// The group's topic.
    pub topic: String,
    /// Events of the topic not settled: high watermark minus floor minus
    /// settled above it, over all partitions.
    pub lag: u64,
    /// By partition: floor and settled above it.
    pub floors: Vec<(u64, u64)>,
    /// Deliveries held by members.
    pub in_flight: u64,
    /// By member instance: deliveries it holds.
    pub members: Vec<(String, u64)>,
    /// Since the runner started.
    pub redelivered: u64,
    /// Since the runner started.
    pub parked: u64,
    /// Since the runner started.
    pub acked: u64,
    /// Keys blocked now.
    pub blocked_keys: u64,
    /// Age of the oldest unsettled event read, ms (0: none).
    pub oldest_unsettled_age_ms: u64,
}

/// Receives group figures (the Prometheus metrics implement it).
pub trait GroupObserver: Send + Sync {
    /// A group's figures now.
    fn report(&self, group: &str, figures: &GroupFigures);
    /// The group was deleted: forget its series.
    fn remove(&self, group: &str);
}

/// An observer that records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopGroupObserver;

impl GroupObserver for NoopGroupObserver {
    fn report(&self, _group: &str, _figures: &GroupFigures) {}
    fn remove(&self, _group: &str) {}
}

/// What runners share.
pub(crate) struct Shared {
    backend: Arc<dyn Backend>,
    store: Arc<GroupStore>,
    observer: Arc<dyn GroupObserver>,
}

struct Worker {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

/// A member's handle on its group, for the Consume stream.
#[derive(Debug)]
pub struct Membership {
    group: String,
    member: MemberId,
    commands: mpsc::UnboundedSender<Command>,
}

impl Membership {
    /// Sends settles to the runner.
    pub fn settle(&self, ids: Vec<String>, action: Action) {
        let _ = self.commands.send(Command::Settle {
            member: self.member,
            ids,
            action,
        });
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Leave { member: self.member });
    }
}

/// Where SeekGroup moves a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeekTo {
    /// Each partition's oldest retained event.
    Earliest,
    /// Each partition's high watermark.
    Latest,
    /// Each partition's first event at or after this time.
    Timestamp(i64),
    /// These partitions to these offsets.
    Offsets(Vec<(u32, u64)>),
}

/// The consumer groups of a server.
pub struct Groups {
    shared: Arc<Shared>,
    /// Serialises create, delete, seek and redrive.
    changes: tokio::sync::Mutex<()>,
    workers: Mutex<HashMap<String, Worker>>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    /// The durable group definitions and progress (for a backup).
    pub fn store(&self) -> &GroupStore {
        &self.shared.store
    }

    /// Opens the group store in `data_dir` and starts a runner per group. Must
    /// be called within a tokio runtime.
    ///
    /// # Errors
    /// Errors opening the store.
    pub fn start(
        backend: Arc<dyn Backend>,
        data_dir: &Path,
        observer: Arc<dyn GroupObserver>,
    ) -> Result<Arc<Groups>> {
        let store = GroupStore::open(Arc::new(stele_engine::io::StdStorage), data_dir)?;
        let groups = Arc::new(Groups {
            shared: Arc::new(Shared {
                backend,
                store: Arc::new(store),
                observer,
            }),
            changes: tokio::sync::Mutex::new(()),
            workers: Mutex::new(HashMap::new()),
        });
        for state in groups.shared.store.list() {
            groups.spawn(state.definition.name);
        }
        Ok(groups)
    }

    fn spawn(&self, name: String) {
        let (commands, mut receiver) = mpsc::unbounded_channel();
        let shared = Arc::clone(&self.shared);
        let group = name.clone();
        let task = tokio::spawn(async move {
            loop {
                match runner::run(Arc::clone(&shared), group.clone(), &mut receiver).await {
                    Ok(()) => return,
                    Err(error) => {
                        tracing::warn!(group = %group, %error, "consumer group runner stopped; restarting");
                        // Commands sent meanwhile (joins, settles) are answered
                        // by the next runner or dropped (their members see
                        // their streams end and join again).
                        tokio::time::sleep(RESTART_PAUSE).await;
                        if receiver.is_closed() {
                            return;
                        }
                    }
                }
            }
        });
        let previous = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, Worker { commands, task });
        debug_assert!(previous.is_none(), "one runner per group");
    }

    fn commands(&self, name: &str) -> Result<mpsc::UnboundedSender<Command>> {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|worker| worker.commands.clone())
            .ok_or_else(|| Error::GroupNotFound(name.to_string()))
    }

    async fn stop_worker(&self, name: &str) {
        let worker = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        if let Some(worker) = worker {
            drop(worker.commands);
            let _ = worker.task.await;
        }
    }

    /// The topic of group `name`, if it exists.
    pub fn topic_of(&self, name: &str) -> Option<String> {
        self.shared
            .store
            .get(name)
            .ok()
            .map(|state| state.definition.topic)
    }

    /// The dead-letter topic of group `name`, if it exists.
    pub fn dead_letter_topic_of(&self, name: &str) -> Option<String> {
        self.shared
            .store
            .get(name)
            .ok()
            .map(|state| state.definition.settings.dead_letter_topic)
    }

    /// The settings a CreateGroup request asks for, defaults filled in.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] or [`Error::LimitExceeded`] for a bad value.
    pub fn settings(topic: &str, requested: Option<&proto::GroupSettings>) -> Result<GroupSettings> {
        let requested = requested.cloned().unwrap_or_default();
        let or = |value: u64, default: u64| if value == 0 { default } else { value };
        let lease_ms = or(requested.lease_ms, defaults::LEASE_MS);
        if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
            return Err(Error::InvalidArgument(format!(
                "lease_ms {lease_ms} is outside {LEASE_MS_MIN}..={LEASE_MS_MAX}"
            )));
        }
        let deliveries_max = if requested.max_deliveries == 0 {
            defaults::DELIVERIES_MAX
        } else {
            requested.max_deliveries
        };
        if deliveries_max > DELIVERIES_MAX_MAX {
            return Err(Error::LimitExceeded {
                what: "max_deliveries",
                value: u64::from(deliveries_max),
                max: u64::from(DELIVERIES_MAX_MAX),
            });
        }
        let backoff_initial_ms = or(requested.backoff_initial_ms, defaults::BACKOFF_INITIAL_MS);
        let backoff_max_ms = or(
            requested.backoff_max_ms,
            defaults::BACKOFF_MAX_MS.max(backoff_initial_ms),
        );
        if backoff_initial_ms > backoff_max_ms {
            return Err(Error::InvalidArgument(format!(
                "backoff_initial_ms {backoff_initial_ms} is above backoff_max_ms {backoff_max_ms}"
            )));
        }
        let in_flight_per_member_max = if requested.max_in_flight_per_member == 0 {
            defaults::IN_FLIGHT_PER_MEMBER_MAX
        } else {
            requested.max_in_flight_per_member
        };
        if in_flight_per_member_max > IN_FLIGHT_PER_MEMBER_MAX_MAX {
            return Err(Error::LimitExceeded {
                what: "max_in_flight_per_member",
                value: u64::from(in_flight_per_member_max),
                max: u64::from(IN_FLIGHT_PER_MEMBER_MAX_MAX),
            });
        }
        let dead_letter_topic = if requested.dead_letter_topic.is_empty() {
            format!("{topic}{}", defaults::DEAD_LETTER_SUFFIX)
        } else {
            requested.dead_letter_topic
        };
        if dead_letter_topic == topic {
            return Err(Error::InvalidArgument(
                "dead_letter_topic must differ from the group's topic".to_string(),
            ));
        }
        let exhausted = match proto::ExhaustedPolicy::try_from(requested.on_exhausted) {
            Ok(proto::ExhaustedPolicy::Park) => Exhausted::Park,
            Ok(proto::ExhaustedPolicy::Block) => Exhausted::Block,
            Err(_) => {
                return Err(Error::InvalidArgument(format!(
                    "on_exhausted {} is not a known policy",
                    requested.on_exhausted
                )));
            }
        };
        Ok(GroupSettings {
            lease_ms,
            deliveries_max,
            backoff_initial_ms,
            backoff_max_ms,
            in_flight_per_member_max,
            dead_letter_topic,
            exhausted,
        })
    }

    /// Creates a group and starts delivering.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad name or setting; [`Error::TopicNotFound`];
    /// [`Error::GroupExists`]; [`Error::LimitExceeded`]; I/O errors.
    pub async fn create(&self, request: proto::CreateGroupRequest) -> Result<proto::Group> {
        store::validate_name(&request.name)?;
        let settings = Groups::settings(&request.topic, request.settings.as_ref())?;
        let start = proto::GroupStart::try_from(request.start).map_err(|_| {
            Error::InvalidArgument(format!("start {} is not a known position", request.start))
        })?;
        let _serial = self.changes.lock().await;
        if self.shared.store.contains(&request.name) {
            return Err(Error::GroupExists(request.name));
        }
        let backend = &self.shared.backend;
        let description = backend.describe_topic(&request.topic).await?;
        match backend
            .create_topic(&settings.dead_letter_topic, backend.default_topic_options())
            .await
        {
            Ok(_) | Err(Error::TopicExists(_)) => {}
            Err(error) => return Err(error),
        }
        let floors = description
            .partitions
            .iter()
            .map(|info| match start {
                proto::GroupStart::Latest => PartitionProgress::new(info.high_watermark.0),
                proto::GroupStart::Earliest => PartitionProgress::new(info.earliest.0),
            })
            .collect();
        let state = GroupState {
            definition: GroupDefinition {
                name: request.name.clone(),
                topic: request.topic.clone(),
                settings,
                created_ms: crate::delivery::now_ms(),
                redrive_until: Vec::new(),
            },
            streams: [floors, Vec::new()],
        };
        let store = Arc::clone(&self.shared.store);
        tokio::task::spawn_blocking(move || store.create(state))
            .await
            .map_err(|_| Error::Closed)??;
        self.spawn(request.name.clone());
        drop(_serial);
        self.describe(&request.name).await
    }

    /// A group with positions, members and counters.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; topic errors.
    pub async fn describe(&self, name: &str) -> Result<proto::Group> {
        let state = self.shared.store.get(name)?;
        let view = match self.commands(name) {
            Ok(commands) => {
                let (reply, answer) = oneshot::channel();
                let _ = commands.send(Command::Describe { reply });
                // A runner between restarts answers nothing: show the journal.
                answer.await.ok()
            }
            Err(_) => None,
        };
        let view = view.unwrap_or_else(|| RunnerView {
            lanes: state.streams[0]
                .iter()
                .map(|progress| (progress.floor(), progress.settled_above_floor()))
                .collect(),
            ..RunnerView::default()
        });
        self.group_view(&state.definition, view).await
    }

    async fn group_view(&self, definition: &GroupDefinition, view: RunnerView) -> Result<proto::Group> {
        let backend = &self.shared.backend;
        let description = backend.describe_topic(&definition.topic).await?;
        let mut partitions = Vec::new();
        let mut lag = 0;
        for info in &description.partitions {
            let (floor, settled) = view
                .lanes
                .get(info.partition.0 as usize)
                .copied()
                .unwrap_or((info.earliest.0, 0));
            let high_watermark = info.high_watermark.0;
            let partition_lag = high_watermark.saturating_sub(floor).saturating_sub(settled);
            lag += partition_lag;
            partitions.push(proto::GroupPartition {
                partition: info.partition.0,
                floor,
                settled_above_floor: settled,
                high_watermark,
                lag: partition_lag,
            });
        }
        let now = crate::delivery::now_ms();
        Ok(proto::Group {
            name: definition.name.clone(),
            topic: definition.topic.clone(),
            settings: Some(settings_to_proto(&definition.settings)),
            partitions,
            members: view.members,
            lag,
            in_flight: view.in_flight,
            redelivered_count: view.redelivered,
            parked_count: view.parked,
            blocked_keys_count: view.blocked_keys,
            oldest_unsettled_age_ms: view
                .oldest_held_ms
                .map_or(0, |oldest| now.saturating_sub(oldest).max(0) as u64),
            created_at_ms: definition.created_ms.max(0) as u64,
        })
    }

    /// Every group, of `topic` when given.
    pub async fn list(&self, topic: Option<&str>) -> Vec<proto::Group> {
        let mut groups = Vec::new();
        for state in self.shared.store.list() {
            if topic.is_some_and(|topic| topic != state.definition.topic) {
                continue;
            }
            if let Ok(group) = self.describe(&state.definition.name).await {
                groups.push(group);
            }
        }
        groups
    }

    /// Deletes a group and its state.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; I/O errors.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let _serial = self.changes.lock().await;
        if !self.shared.store.contains(name) {
            return Err(Error::GroupNotFound(name.to_string()));
        }
        if let Ok(commands) = self.commands(name) {
            let _ = commands.send(Command::Deleting);
        }
        self.stop_worker(name).await;
        let store = Arc::clone(&self.shared.store);
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || store.delete(&owned))
            .await
            .map_err(|_| Error::Closed)??;
        self.shared.observer.remove(name);
        Ok(())
    }

    /// Moves a group (see [`SeekTo`]).
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::InvalidArgument`] for an unknown
    /// partition; [`Error::OffsetOutOfRange`] for an offset past the high
    /// watermark; topic and I/O errors.
    pub async fn seek(&self, name: &str, to: SeekTo) -> Result<proto::Group> {
        let _serial = self.changes.lock().await;
        let state = self.shared.store.get(name)?;
        let topic = &state.definition.topic;
        let backend = &self.shared.backend;
        let description = backend.describe_topic(topic).await?;
        let mut changes = Vec::new();
        let mut seek = |partition: u32, floor: u64| {
            changes.push(ProgressChange::Seek {
                stream: 0,
                partition,
                floor,
            })
        };
        match to {
            SeekTo::Earliest => description
                .partitions
                .iter()
                .for_each(|info| seek(info.partition.0, info.earliest.0)),
            SeekTo::Latest => description
                .partitions
                .iter()
                .for_each(|info| seek(info.partition.0, info.high_watermark.0)),
            SeekTo::Timestamp(timestamp_ms) => {
                for info in &description.partitions {
                    let offset = backend
                        .offset_for_timestamp(topic, info.partition, timestamp_ms)
                        .await?;
                    seek(info.partition.0, offset.0);
                }
            }
            SeekTo::Offsets(offsets) => {
                for (partition, offset) in offsets {
                    let info = description.partitions.get(partition as usize).ok_or_else(|| {
                        Error::InvalidArgument(format!("partition {partition} does not exist"))
                    })?;
                    if offset > info.high_watermark.0 {
                        return Err(Error::OffsetOutOfRange {
                            requested: Offset(offset),
                            earliest: info.earliest,
                            high_watermark: info.high_watermark,
                        });
                    }
                    seek(partition, offset.max(info.earliest.0));
                }
            }
        }
        self.reset(name, changes, None, false).await?;
        drop(_serial);
        self.describe(name).await
    }

    async fn reset(
        &self,
        name: &str,
        changes: Vec<ProgressChange>,
        state: Option<GroupState>,
        unblock: bool,
    ) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.commands(name)?
            .send(Command::Reset {
                changes,
                state,
                unblock,
                reply,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Unavailable {
            what: "reset a consumer group",
            reason: "the group's runner is restarting; try again".to_string(),
        })?
    }

    /// Joins group `name` as a member whose stream is `outgoing` (the runner
    /// sends `joined` on it first).
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; [`Error::InvalidArgument`] for a bad instance id.
    pub async fn join(
        &self,
        name: &str,
        instance: String,
        window: u32,
        outgoing: mpsc::Sender<runner::Outbound>,
    ) -> Result<Membership> {
        stele_engine::journal::check_name(&instance, limits::CURSOR_NAME_SIZE_MAX, "instance id")?;
        let commands = self.commands(name)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Join {
                instance,
                window,
                outgoing,
                reply,
            })
            .map_err(|_| Error::GroupNotFound(name.to_string()))?;
        let member = answer.await.map_err(|_| Error::Unavailable {
            what: "join a consumer group",
            reason: "the group's runner is restarting; join again".to_string(),
        })??;
        Ok(Membership {
            group: name.to_string(),
            member,
            commands,
        })
    }

    /// A group's parked events not yet redriven and its blocked keys, at most
    /// `count_max`.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; topic errors.
    pub async fn parked(&self, name: &str, count_max: usize) -> Result<Vec<proto::ParkedEvent>> {
        let state = self.shared.store.get(name)?;
        let mut events = Vec::new();
        if let Ok(commands) = self.commands(name) {
            let (reply, answer) = oneshot::channel();
            let _ = commands.send(Command::Blocked { reply });
            if let Ok(blocked) = answer.await {
                events.extend(blocked);
            }
        }
        self.scan_parked(&state.definition, None, &mut |event| {
            events.push(event);
            events.len() < count_max
        })
        .await?;
        events.truncate(count_max);
        Ok(events)
    }

    /// Visits the group's parked events from its redrive marks (those not yet
    /// redriven) up to `until` (or the high watermarks).
    async fn scan_parked(
        &self,
        definition: &GroupDefinition,
        until: Option<&[(u32, u64)]>,
        visit: &mut (dyn FnMut(proto::ParkedEvent) -> bool + Send),
    ) -> Result<()> {
        let backend = &self.shared.backend;
        let topic = &definition.settings.dead_letter_topic;
        let description = match backend.describe_topic(topic).await {
            Ok(description) => description,
            Err(Error::TopicNotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        for info in &description.partitions {
            let mark = |marks: &[(u32, u64)]| {
                marks
                    .iter()
                    .find(|(partition, _)| *partition == info.partition.0)
                    .map_or(0, |(_, offset)| *offset)
            };
            let mut next = Offset(mark(&definition.redrive_until).max(info.earliest.0));
            let end = Offset(until.map_or(info.high_watermark.0, mark));
            while next < end {
                let count_max = ((end.0 - next.0) as usize).min(limits::READ_EVENTS_COUNT_MAX);
                let letters = backend
                    .scan(
                        topic,
                        info.partition,
                        next,
                        count_max,
                        4 << 20,
                        &EventFilter::all(),
                    )
                    .await?;
                next = letters.next_offset();
                for letter in letters.iter() {
                    if letter.offset >= end {
                        next = end;
                        break;
                    }
                    if letter.headers.get(parked_headers::GROUP) == Some(definition.name.as_bytes())
                        && !visit(parked_event_of_letter(&letter))
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Delivers the group's parked events stored now again and unblocks its
    /// blocked keys; returns how many of each.
    ///
    /// # Errors
    /// [`Error::GroupNotFound`]; topic and I/O errors.
    pub async fn redrive(&self, name: &str) -> Result<(u64, u64)> {
        let _serial = self.changes.lock().await;
        let mut state = self.shared.store.get(name)?;
        let backend = &self.shared.backend;
        let topic = &state.definition.settings.dead_letter_topic;
        let marks: Vec<(u32, u64)> = match backend.describe_topic(topic).await {
            Ok(description) => description
                .partitions
                .iter()
                .map(|info| (info.partition.0, info.high_watermark.0))
                .collect(),
            Err(Error::TopicNotFound(_)) => Vec::new(),
            Err(error) => return Err(error),
        };
        let mut redriven = 0u64;
        self.scan_parked(&state.definition, Some(&marks), &mut |_| {
            redriven += 1;
            true
        })
        .await?;
        let marks_changed = redriven > 0;
        if marks_changed {
            state.definition.redrive_until = marks;
        }
        // The runner unblocks: only it knows every blocked key (its latest
        // changes may not be written yet).
        let unblocked = self
            .reset(name, Vec::new(), marks_changed.then_some(state), true)
            .await?;
        Ok((redriven, unblocked))
    }

    /// Stops every runner (deliveries in flight are abandoned: delivered
    /// again after a restart).
    pub async fn shutdown(&self) {
        let workers: Vec<Worker> = self
            .workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, worker)| worker)
            .collect();
        let mut tasks = Vec::new();
        for worker in workers {
            drop(worker.commands);
            tasks.push(worker.task);
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The settings in their wire form.
pub fn settings_to_proto(settings: &GroupSettings) -> proto::GroupSettings {
    proto::GroupSettings {
        lease_ms: settings.lease_ms,
        max_deliveries: settings.deliveries_max,
        backoff_initial_ms: settings.backoff_initial_ms,
        backoff_max_ms: settings.backoff_max_ms,
        max_in_flight_per_member: settings.in_flight_per_member_max,
        dead_letter_topic: settings.dead_letter_topic.clone(),
        on_exhausted: match settings.exhausted {
            Exhausted::Park => proto::ExhaustedPolicy::Park,
            Exhausted::Block => proto::ExhaustedPolicy::Block,
        } as i32,
    }
}

fn header_text<'a>(letter: &EventRef<'a>, name: &str) -> Option<&'a str> {
    letter
        .headers
        .get(name)
        .and_then(|value| std::str::from_utf8(value).ok())
}

fn header_number(letter: &EventRef<'_>, name: &str) -> Option<u64> {
    header_text(letter, name).and_then(|value| value.parse().ok())
}

/// The original event of a parked event of group `group`, or `None` for
/// another group's or a malformed one.
pub(crate) fn dead_letter_job(group: &str, letter: &EventRef<'_>) -> Option<RecordedEvent> {
    if letter.headers.get(parked_headers::GROUP) != Some(group.as_bytes()) {
        return None;
    }
    parked_headers::original_event(letter)
}

fn parked_event_of_letter(letter: &EventRef<'_>) -> proto::ParkedEvent {
    use parked_headers as ph;
    proto::ParkedEvent {
        dead_letter_partition: letter.partition.0,
        dead_letter_offset: letter.offset.0,
        partition: header_number(letter, ph::PARTITION).unwrap_or_default() as u32,
        offset: header_number(letter, ph::OFFSET).unwrap_or_default(),
        key: letter.key.to_vec(),
        sequence: header_number(letter, ph::SEQUENCE).unwrap_or_default(),
        r#type: letter.event_type.to_string(),
        reason: header_text(letter, ph::REASON).unwrap_or_default().to_string(),
        attempts: header_number(letter, ph::ATTEMPTS).unwrap_or_default() as u32,
        blocked: false,
    }
}

/// The listing of a blocked key's head, read from its stream.
pub(crate) async fn parked_event_of_blocked(
    shared: &Shared,
    sources: &[Source],
    position: Position,
    attempts: u32,
) -> Option<proto::ParkedEvent> {
    let source = sources.get(position.stream as usize)?;
    let events = shared
        .backend
        .scan(
            &source.topic,
            PartitionId(position.partition),
            Offset(position.offset),
            1,
            16 << 20,
            &EventFilter::all(),
        )
        .await
        .ok()?;
    let event = events.iter().next()?;
    let recorded = if position.stream == 0 {
        event.to_recorded()
    } else {
        let name = event.headers.get(parked_headers::GROUP)?;
        dead_letter_job(std::str::from_utf8(name).ok()?, &event)?
    };
    Some(proto::ParkedEvent {
        dead_letter_partition: 0,
        dead_letter_offset: 0,
        partition: recorded.partition.0,
        offset: recorded.offset.0,
        key: recorded.key,
        sequence: recorded.sequence.0,
        r#type: recorded.event_type,
        reason: format!("blocked: deliveries exhausted after {attempts}"),
        attempts,
        blocked: true,
    })
}
