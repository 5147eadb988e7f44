//! The delivery state machine: events read and not yet settled, per-key queues,
//! members and their windows, leases, retries, exhaustion, and the settled
//! progress of every lane. Pure: no I/O, no clock (time comes in as Unix ms),
//! no randomness beyond the jitter fraction its caller passes. Webhook
//! endpoints and consumer groups both drive it (`webhook::delivery`,
//! `group::runner`); `model` tests it against a reference.
//!
//! Invariant: a key (stream, partition, key bytes) has at most one delivery in
//! flight (or being parked, or blocked), and it is always the key's unsettled
//! event of lowest offset: a key's events are delivered in sequence order.
//! Invariant: an event settled in a lane's progress is never delivered again
//! by this core; a restart built from the same progress neither.
//! Invariant: a member holds at most `window` deliveries.
//! Invariant: a settle is applied only when it names the attempt in flight,
//! held by the member that sends it, before its lease deadline; anything else
//! is refused with a reason and changes nothing.
//! Invariant: at most `buffered_count_max` events and about
//! `buffered_size_max` bytes are held, and each lane's progress stays below
//! `progress_entries_max` entries (reading pauses before either is passed).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use stele_engine::group::{Exhausted, PartitionProgress, Pending, ProgressChange};

/// Where an event is read from: stream (0: the topic; 1: the redrive of the
/// dead-letter topic), partition, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The stream.
    pub stream: u8,
    /// The partition of the stream's topic.
    pub partition: u32,
    /// The offset in that partition.
    pub offset: u64,
}

/// Names one delivery: the event's position and the attempt.
///
/// Text form `<stream>.<partition>.<offset>.<attempt>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryId {
    /// The event.
    pub position: Position,
    /// The attempt, from 1.
    pub attempt: u32,
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.position.stream, self.position.partition, self.position.offset, self.attempt
        )
    }
}

impl std::str::FromStr for DeliveryId {
    type Err = ();

    fn from_str(text: &str) -> Result<DeliveryId, ()> {
        let mut parts = text.split('.');
        let mut next = || parts.next().ok_or(());
        let stream = next()?.parse().map_err(drop)?;
        let partition = next()?.parse().map_err(drop)?;
        let offset = next()?.parse().map_err(drop)?;
        let attempt = next()?.parse().map_err(drop)?;
        if parts.next().is_some() || stream > 1 || attempt == 0 {
            return Err(());
        }
        Ok(DeliveryId {
            position: Position {
                stream,
                partition,
                offset,
            },
            attempt,
        })
    }
}

/// A member of the delivery: its membership epoch, unique within a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(pub u64);

/// The key of the per-key order.
pub type OrderKey = (u8, u32, Vec<u8>);

/// One event read, with what its sink needs to deliver it.
#[derive(Debug)]
pub struct Job<T> {
    /// Where it was read.
    pub position: Position,
    /// Its key.
    pub key: Vec<u8>,
    /// Its append time, Unix ms (for the oldest-unsettled age).
    pub timestamp_ms: i64,
    /// Bytes held for it, for the buffer bound.
    pub size: u64,
    /// What the sink delivers.
    pub payload: Arc<T>,
}

/// How a core delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a member holds a delivery; `None`: until it settles it.
    pub lease_ms: Option<u64>,
    /// Deliveries of one event before `exhausted` applies.
    pub deliveries_max: u32,
    /// The delay before delivering again after a retry without a delay (doubling
    /// per delivery up to `backoff_max_ms`, jittered into [d/2, d]).
    pub backoff_initial_ms: u64,
    /// The cap of that delay.
    pub backoff_max_ms: u64,
    /// What happens to an event whose deliveries are exhausted.
    pub exhausted: Exhausted,
    /// The most events held.
    pub buffered_count_max: usize,
    /// About the most payload bytes held.
    pub buffered_size_max: u64,
    /// The most progress entries (settled ranges and pending entries) per group.
    pub progress_entries_max: usize,
}

/// A settle, as a member sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Processed: settle for good.
    Ack,
    /// Deliver again after this delay (`None`: the backoff).
    Retry {
        /// The delay, ms.
        delay_ms: Option<u64>,
    },
    /// Give up: park it (the caller appends it to the dead-letter topic).
    Park {
        /// Why.
        reason: String,
    },
    /// Renew the lease.
    Extend,
}

/// Work the caller must do outside the core.
#[derive(Debug)]
pub enum Effect<T> {
    /// Append the event to the dead-letter topic, then call [`Core::parked`]
    /// (the key stays held meanwhile).
    Park {
        /// The event.
        position: Position,
        /// What was delivered.
        payload: Arc<T>,
        /// Why.
        reason: String,
        /// Deliveries made.
        attempts: u32,
    },
}

/// A delivery to send.
#[derive(Debug)]
pub struct Outgoing<T> {
    /// To whom.
    pub member: MemberId,
    /// Its identity.
    pub id: DeliveryId,
    /// When the lease ends, Unix ms (`i64::MAX`: never).
    pub deadline_ms: i64,
    /// What to deliver.
    pub payload: Arc<T>,
}

/// Why a settle was refused.
pub type Refusal = &'static str;

#[derive(Debug)]
struct Lane {
    /// The next offset to read.
    next: u64,
    /// Settled offsets, floor and pending attempts.
    progress: PartitionProgress,
    /// Offsets held (read, unsettled, buffered) with their append time and key.
    held: BTreeMap<u64, (i64, Vec<u8>)>,
    /// Read nothing at or past this offset (a redrive mark).
    until: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Ready or waiting for its retry time.
    Waiting,
    /// Delivered, not settled.
    InFlight,
    /// Being appended to the dead-letter topic.
    Parking,
    /// Stopped by [`Exhausted::Block`]: nothing of the key is delivered.
    Blocked,
}

#[derive(Debug)]
struct KeyQueue<T> {
    jobs: VecDeque<Job<T>>,
    head: Head,
    /// The member whose lease of this key's head expired (or who left): the
    /// next delivery prefers another.
    avoid: Option<MemberId>,
}

#[derive(Debug)]
struct InFlight {
    member: MemberId,
    attempt: u32,
    deadline_ms: i64,
}

/// A member as the core sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its instance id (stickiness of keys follows it across reconnects).
    pub instance: String,
    /// The most deliveries it holds at once.
    pub window: u32,
    /// The deliveries it holds.
    pub held: BTreeSet<Position>,
    /// Acks since it joined.
    pub acked: u64,
    /// When it joined, Unix ms.
    pub joined_ms: i64,
}

/// Counters since the core was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Deliveries after the first of an event.
    pub redelivered: u64,
    /// Events acked.
    pub acked: u64,
    /// Events parked.
    pub parked: u64,
}

/// One lane's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneView {
    /// Everything below is settled.
    pub floor: u64,
    /// Settled at or above the floor.
    pub settled_above_floor: u64,
    /// Read up to here.
    pub next: u64,
}

/// The delivery state machine.
#[derive(Debug)]
pub struct Core<T> {
    settings: Settings,
    /// By stream, then partition.
    lanes: Vec<Vec<Lane>>,
    queues: HashMap<OrderKey, KeyQueue<T>>,
    /// Keys whose head may be delivered now, in the order they became ready.
    ready: VecDeque<OrderKey>,
    /// Keys whose head waits until a time.
    timers: BTreeSet<(i64, OrderKey)>,
    in_flight: HashMap<Position, InFlight>,
    deadlines: BTreeSet<(i64, Position)>,
    members: BTreeMap<MemberId, Member>,
    next_member: u64,
    buffered_count: usize,
    buffered_size: u64,
    changes: Vec<ProgressChange>,
    /// Settled ranges and pending entries over all lanes (`has_room` asks on
    /// every read of a lane: a sum over thousands of lanes each time was
    /// quadratic in the partitions).
    progress_entries: usize,
    counters: Counters,
}

impl<T> Core<T> {
    /// A core over `streams` (per stream, per partition: its progress and
    /// redrive mark); member ids start above `first_member` (the caller passes
    /// a value that grows across restarts, such as the time in ms).
    pub fn new(
        settings: Settings,
        streams: Vec<Vec<(PartitionProgress, Option<u64>)>>,
        first_member: u64,
    ) -> Core<T> {
        let lanes = streams
            .into_iter()
            .map(|lanes| {
                lanes
                    .into_iter()
                    .map(|(progress, until)| Lane {
                        next: progress.floor(),
                        progress,
                        held: BTreeMap::new(),
                        until,
                    })
                    .collect()
            })
            .collect::<Vec<Vec<Lane>>>();
        let progress_entries = lanes
            .iter()
            .flatten()
            .map(|lane| lane.progress.entries_count())
            .sum();
        Core {
            settings,
            lanes,
            progress_entries,
            queues: HashMap::new(),
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeSet::new(),
            members: BTreeMap::new(),
            next_member: first_member,
            buffered_count: 0,
            buffered_size: 0,
            changes: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The streams' partition counts.
    pub fn lanes_count(&self, stream: u8) -> usize {
        self.lanes.get(stream as usize).map_or(0, Vec::len)
    }

    /// Whether more events may be read.
    pub fn has_room(&self) -> bool {
        self.buffered_count < self.settings.buffered_count_max
            && self.buffered_size < self.settings.buffered_size_max
            && self.progress_entries() < self.settings.progress_entries_max
    }

    /// How many more events may be read now, and about how many bytes.
    pub fn room(&self) -> (usize, u64) {
        let entries_room = self
            .settings
            .progress_entries_max
            .saturating_sub(self.progress_entries());
        (
            (self
                .settings
                .buffered_count_max
                .saturating_sub(self.buffered_count))
            .min(entries_room),
            self.settings
                .buffered_size_max
                .saturating_sub(self.buffered_size)
                .max(1),
        )
    }

    fn progress_entries(&self) -> usize {
        debug_assert_eq!(
            self.progress_entries,
            self.lanes
                .iter()
                .flatten()
                .map(|lane| lane.progress.entries_count())
                .sum::<usize>(),
            "the running count follows every change"
        );
        self.progress_entries
    }

    /// Where the next read of a lane starts (past settled offsets), and where
    /// reading ends (`None`: the high watermark); `None` when the lane is done.
    pub fn read_from(&mut self, stream: u8, partition: u32) -> Option<(u64, Option<u64>)> {
        let lane = self.lane_mut(stream, partition);
        lane.next = lane.progress.first_unsettled_from(lane.next);
        match lane.until {
            Some(until) if lane.next >= until => None,
            until => Some((lane.next, until)),
        }
    }

    /// Takes the result of a read of a lane from `from` (as [`Core::read_from`]
    /// said) to `next`: `jobs` are the events in `[from, next)` to deliver, in
    /// offset order; every other offset of the range needs no delivery (filtered
    /// out) and is settled.
    pub fn offer(
        &mut self,
        stream: u8,
        partition: u32,
        from: u64,
        next: u64,
        jobs: Vec<Job<T>>,
        now_ms: i64,
    ) {
        debug_assert_eq!(
            self.lane_mut(stream, partition).next,
            from,
            "one read of a lane at a time"
        );
        let mut gap_from = from;
        for job in jobs {
            let offset = job.position.offset;
            debug_assert!(
                offset >= gap_from && offset < next,
                "jobs lie in the read range, in order"
            );
            self.settle_range(stream, partition, gap_from, offset);
            gap_from = offset + 1;
            let lane = self.lane_mut(stream, partition);
            if lane.progress.is_settled(offset) {
                continue;
            }
            let pending = lane.progress.pending(offset).cloned();
            let order_key = (stream, partition, job.key.clone());
            let queue = self.queues.entry(order_key.clone()).or_insert_with(|| KeyQueue {
                jobs: VecDeque::new(),
                head: Head::Waiting,
                avoid: None,
            });
            if queue.head == Head::Blocked {
                // A blocked key's later events stay unsettled, unread until the
                // key is unblocked (a gap in the settled ranges).
                continue;
            }
            let first = queue.jobs.is_empty();
            let blocked = pending.as_ref().is_some_and(|pending| pending.blocked);
            if first && blocked {
                queue.head = Head::Blocked;
            }
            self.buffered_count += 1;
            self.buffered_size += job.size;
            let lane = self.lane_mut(stream, partition);
            lane.held.insert(offset, (job.timestamp_ms, job.key.clone()));
            let queue = self.queues.get_mut(&order_key).expect("inserted above");
            queue.jobs.push_back(job);
            if first && !blocked {
                let not_before = pending.map_or(0, |pending| pending.not_before_ms);
                self.schedule(order_key, not_before, now_ms);
            }
        }
        self.settle_range(stream, partition, gap_from, next);
        let lane = self.lane_mut(stream, partition);
        lane.next = lane.next.max(next);
    }

    /// Settles `[start, end)` of a lane (offsets needing no delivery).
    fn settle_range(&mut self, stream: u8, partition: u32, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let lane = self.lane_mut(stream, partition);
        let before = lane.progress.entries_count();
        lane.progress.settle(start, end);
        let after = lane.progress.entries_count();
        self.progress_entries = self.progress_entries + after - before;
        self.changes.push(ProgressChange::Settle {
            stream,
            partition,
            start,
            end,
        });
    }

    fn schedule(&mut self, order_key: OrderKey, not_before_ms: i64, now_ms: i64) {
        if not_before_ms > now_ms {
            self.timers.insert((not_before_ms, order_key));
        } else {
            self.ready.push_back(order_key);
        }
    }

    fn lane_mut(&mut self, stream: u8, partition: u32) -> &mut Lane {
        &mut self.lanes[stream as usize][partition as usize]
    }

    /// Adds a member; returns its id.
    pub fn join(&mut self, instance: String, window: u32, now_ms: i64) -> MemberId {
        self.next_member += 1;
        let member = MemberId(self.next_member);
        self.join_as(member, instance, window, now_ms);
        member
    }

    /// Adds a member under an id it had in an earlier core of the same group
    /// (a reset keeps its members' streams).
    pub fn join_as(&mut self, member: MemberId, instance: String, window: u32, now_ms: i64) {
        self.next_member = self.next_member.max(member.0);
        self.members.insert(
            member,
            Member {
                instance,
                window: window.max(1),
                held: BTreeSet::new(),
                acked: 0,
                joined_ms: now_ms,
            },
        );
    }

    /// The member joined with `instance`, if any.
    pub fn member_of_instance(&self, instance: &str) -> Option<MemberId> {
        self.members
            .iter()
            .find(|(_, member)| member.instance == instance)
            .map(|(id, _)| *id)
    }

    /// Removes a member: its deliveries are taken back (attempt + 1 next time,
    /// to another member if there is one).
    pub fn leave(&mut self, member: MemberId, now_ms: i64) -> Vec<Effect<T>> {
        let Some(left) = self.members.remove(&member) else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        for position in left.held {
            if let Some(flight) = self.in_flight.remove(&position) {
                self.deadlines.remove(&(flight.deadline_ms, position));
                effects.extend(self.release(position, flight.attempt, Some(0), Some(member), now_ms));
            }
        }
        effects
    }

    /// The members.
    pub fn members(&self) -> impl Iterator<Item = (MemberId, &Member)> {
        self.members.iter().map(|(id, member)| (*id, member))
    }

    /// Deliveries to send now: heads of ready keys, each to the member of
    /// highest rendezvous score with room.
    pub fn dispatch(&mut self, now_ms: i64) -> Vec<Outgoing<T>> {
        self.fire_timers(now_ms);
        let mut out = Vec::new();
        while let Some(order_key) = self.ready.pop_front() {
            let Some(queue) = self.queues.get(&order_key) else {
                continue;
            };
            debug_assert_eq!(queue.head, Head::Waiting, "only waiting heads are ready");
            let Some(member) = self.choose(&order_key.2, queue.avoid) else {
                self.ready.push_front(order_key);
                break;
            };
            let queue = self.queues.get_mut(&order_key).expect("checked above");
            let job = queue.jobs.front().expect("a queue is never empty");
            let position = job.position;
            let payload = Arc::clone(&job.payload);
            queue.head = Head::InFlight;
            queue.avoid = None;
            let attempts = self.lanes[position.stream as usize][position.partition as usize]
                .progress
                .pending(position.offset)
                .map_or(0, |pending| pending.attempts);
            let attempt = attempts + 1;
            let deadline_ms = self
                .settings
                .lease_ms
                .map_or(i64::MAX, |lease| now_ms.saturating_add(lease as i64));
            self.in_flight.insert(
                position,
                InFlight {
                    member,
                    attempt,
                    deadline_ms,
                },
            );
            self.deadlines.insert((deadline_ms, position));
            self.members
                .get_mut(&member)
                .expect("chosen among members")
                .held
                .insert(position);
            if attempt > 1 {
                self.counters.redelivered += 1;
            }
            out.push(Outgoing {
                member,
                id: DeliveryId { position, attempt },
                deadline_ms,
                payload,
            });
        }
        out
    }

    fn fire_timers(&mut self, now_ms: i64) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now_ms {
                break;
            }
            let (_, order_key) = self.timers.pop_first().expect("checked above");
            self.ready.push_back(order_key);
        }
    }

    /// The member with room of highest rendezvous score for `key`, avoiding
    /// `avoid` when another has room.
    fn choose(&self, key: &[u8], avoid: Option<MemberId>) -> Option<MemberId> {
        let mut best: Option<(bool, u64, MemberId)> = None;
        for (id, member) in &self.members {
            if member.held.len() >= member.window as usize {
                continue;
            }
            let candidate = (Some(*id) != avoid, rendezvous(key, &member.instance), *id);
            if best.as_ref().is_none_or(|best| candidate > *best) {
                best = Some(candidate);
            }
        }
        best.map(|(_, _, id)| id)
    }

    /// Whether `member` holds delivery `id` now (a settle of it would apply).
    pub fn holds(&self, member: MemberId, id: DeliveryId, now_ms: i64) -> bool {
        self.in_flight.get(&id.position).is_some_and(|flight| {
            flight.member == member && flight.attempt == id.attempt && flight.deadline_ms >= now_ms
        })
    }

    /// Applies a member's settle of delivery `id`.
    ///
    /// # Errors
    /// The reason, when the member does not hold that delivery now (nothing
    /// changes then).
    pub fn settle(
        &mut self,
        member: MemberId,
        id: DeliveryId,
        action: Action,
        now_ms: i64,
        jitter: f64,
    ) -> Result<Option<Effect<T>>, Refusal> {
        let position = id.position;
        let Some(flight) = self.in_flight.get_mut(&position) else {
            return Err("not in flight: settled already, taken back or the group was reset");
        };
        if flight.member != member {
            return Err("held by another member: this member's lease expired or it left");
        }
        if flight.attempt != id.attempt {
            return Err("an earlier attempt of the event");
        }
        if flight.deadline_ms < now_ms {
            return Err("the lease expired");
        }
        if action == Action::Extend {
            let lease = self.settings.lease_ms.map_or(i64::MAX, |lease| lease as i64);
            self.deadlines.remove(&(flight.deadline_ms, position));
            flight.deadline_ms = now_ms.saturating_add(lease);
            self.deadlines.insert((flight.deadline_ms, position));
            return Ok(None);
        }
        let flight = self.in_flight.remove(&position).expect("checked above");
        self.deadlines.remove(&(flight.deadline_ms, position));
        let holder = self.members.get_mut(&member).expect("a holder is a member");
        holder.held.remove(&position);
        match action {
            Action::Ack => {
                holder.acked += 1;
                self.counters.acked += 1;
                self.finish(position, now_ms);
                Ok(None)
            }
            Action::Retry { delay_ms } => {
                let delay_ms = delay_ms.unwrap_or_else(|| self.backoff_ms(flight.attempt, jitter));
                Ok(self.release(position, flight.attempt, Some(delay_ms), None, now_ms))
            }
            Action::Park { reason } => Ok(Some(self.start_park(position, reason, flight.attempt))),
            Action::Extend => unreachable!("handled above"),
        }
    }

    /// The backoff after `attempt` failed: `[d/2, d]` for
    /// `d = min(backoff_max, backoff_initial * 2^(attempt - 1))`.
    fn backoff_ms(&self, attempt: u32, jitter: f64) -> u64 {
        let doublings = attempt.saturating_sub(1).min(32);
        let base = self
            .settings
            .backoff_initial_ms
            .saturating_mul(1u64 << doublings)
            .min(self.settings.backoff_max_ms);
        let half = base / 2;
        half + ((base - half) as f64 * jitter.clamp(0.0, 1.0)) as u64
    }

    /// Takes leases that ended by `now_ms` back; returns work for the caller.
    pub fn expire(&mut self, now_ms: i64) -> Vec<Effect<T>> {
        let mut effects = Vec::new();
        while let Some((deadline, position)) = self.deadlines.first().copied() {
            if deadline >= now_ms {
                break;
            }
            self.deadlines.pop_first();
            let flight = self
                .in_flight
                .remove(&position)
                .expect("deadlines index in-flight entries");
            if let Some(holder) = self.members.get_mut(&flight.member) {
                holder.held.remove(&position);
            }
            effects.extend(self.release(position, flight.attempt, Some(0), Some(flight.member), now_ms));
        }
        effects
    }

    /// An event delivered `attempts` times is to be delivered again after
    /// `delay_ms`, unless its deliveries are exhausted.
    fn release(
        &mut self,
        position: Position,
        attempts: u32,
        delay_ms: Option<u64>,
        avoid: Option<MemberId>,
        now_ms: i64,
    ) -> Option<Effect<T>> {
        if attempts >= self.settings.deliveries_max {
            let reason = format!(
                "deliveries exhausted: {attempts} of at most {}",
                self.settings.deliveries_max
            );
            return match self.settings.exhausted {
                Exhausted::Park => Some(self.start_park(position, reason, attempts)),
                Exhausted::Block => {
                    self.block(position, attempts);
                    None
                }
            };
        }
        let not_before_ms = now_ms.saturating_add(delay_ms.unwrap_or(0) as i64);
        self.set_pending(
            position,
            Some(Pending {
                attempts,
                not_before_ms,
                blocked: false,
            }),
        );
        let order_key = self.order_key_of(position);
        let queue = self
            .queues
            .get_mut(&order_key)
            .expect("a released event heads its queue");
        queue.head = Head::Waiting;
        queue.avoid = avoid;
        self.schedule(order_key, not_before_ms, now_ms);
        None
    }

    fn set_pending(&mut self, position: Position, pending: Option<Pending>) {
        let lane = self.lane_mut(position.stream, position.partition);
        let before = lane.progress.entries_count();
        lane.progress.set_pending(position.offset, pending);
        let after = lane.progress.entries_count();
        self.progress_entries = self.progress_entries + after - before;
        self.changes.push(ProgressChange::Pending {
            stream: position.stream,
            partition: position.partition,
            offset: position.offset,
            pending,
        });
    }

    fn order_key_of(&self, position: Position) -> OrderKey {
        let (_, key) = self.lanes[position.stream as usize][position.partition as usize]
            .held
            .get(&position.offset)
            .expect("a delivered event is held");
        (position.stream, position.partition, key.clone())
    }

    fn start_park(&mut self, position: Position, reason: String, attempts: u32) -> Effect<T> {
        let order_key = self.order_key_of(position);
        let queue = self.queues.get_mut(&order_key).expect("found above");
        queue.head = Head::Parking;
        let payload = Arc::clone(&queue.jobs.front().expect("never empty").payload);
        Effect::Park {
            position,
            payload,
            reason,
            attempts,
        }
    }

    /// The event at `position`, being parked, is stored in the dead-letter
    /// topic: it is settled and its key goes on.
    pub fn parked(&mut self, position: Position, now_ms: i64) {
        self.counters.parked += 1;
        self.finish(position, now_ms);
    }

    fn block(&mut self, position: Position, attempts: u32) {
        self.set_pending(
            position,
            Some(Pending {
                attempts,
                not_before_ms: 0,
                blocked: true,
            }),
        );
        let order_key = self.order_key_of(position);
        let queue = self.queues.get_mut(&order_key).expect("found above");
        queue.head = Head::Blocked;
        // The key's later events leave the buffer: they are read again when
        // the key is unblocked.
        let dropped: Vec<Job<T>> = queue.jobs.drain(1..).collect();
        for job in dropped {
            self.buffered_count -= 1;
            self.buffered_size -= job.size;
            self.lane_mut(job.position.stream, job.position.partition)
                .held
                .remove(&job.position.offset);
        }
    }

    /// Settles the head of its key's queue and schedules the key's next event.
    fn finish(&mut self, position: Position, now_ms: i64) {
        let order_key = self.order_key_of(position);
        self.settle_range(
            position.stream,
            position.partition,
            position.offset,
            position.offset + 1,
        );
        self.lane_mut(position.stream, position.partition)
            .held
            .remove(&position.offset);
        let queue = self.queues.get_mut(&order_key).expect("found above");
        let job = queue.jobs.pop_front().expect("the settled event heads the queue");
        debug_assert_eq!(job.position, position);
        self.buffered_count -= 1;
        self.buffered_size -= job.size;
        queue.head = Head::Waiting;
        match queue.jobs.front() {
            None => {
                self.queues.remove(&order_key);
            }
            Some(next) => {
                let next = next.position;
                let not_before = self.lanes[next.stream as usize][next.partition as usize]
                    .progress
                    .pending(next.offset)
                    .map_or(0, |pending| pending.not_before_ms);
                self.schedule(order_key, not_before, now_ms);
            }
        }
    }

    /// Progress changes since the last call, to persist in order.
    pub fn take_changes(&mut self) -> Vec<ProgressChange> {
        std::mem::take(&mut self.changes)
    }

    /// The earliest time something is due: a retry or a lease deadline.
    pub fn next_due_ms(&self) -> Option<i64> {
        let timer = self.timers.first().map(|(at, _)| *at);
        let deadline = self.deadlines.first().map(|(at, _)| *at + 1);
        timer.into_iter().chain(deadline).min()
    }

    /// A lane's figures.
    pub fn lane(&self, stream: u8, partition: u32) -> LaneView {
        let lane = &self.lanes[stream as usize][partition as usize];
        LaneView {
            floor: lane.progress.floor(),
            settled_above_floor: lane.progress.settled_above_floor(),
            next: lane.next,
        }
    }

    /// A lane's progress.
    pub fn progress(&self, stream: u8, partition: u32) -> &PartitionProgress {
        &self.lanes[stream as usize][partition as usize].progress
    }

    /// Deliveries in flight.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// Events held.
    pub fn buffered_count(&self) -> usize {
        self.buffered_count
    }

    /// Keys blocked now.
    pub fn blocked_keys(&self) -> impl Iterator<Item = (&OrderKey, Position)> {
        self.queues
            .iter()
            .filter(|(_, queue)| queue.head == Head::Blocked)
            .map(|(key, queue)| (key, queue.jobs.front().expect("never empty").position))
    }

    /// The append time of the oldest held event, if any.
    pub fn oldest_held_ms(&self) -> Option<i64> {
        self.lanes
            .iter()
            .flatten()
            .filter_map(|lane| lane.held.first_key_value().map(|(_, (at, _))| *at))
            .min()
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Checks the invariants (tests and debug builds).
    pub fn check(&self) {
        let mut held_by_members = 0;
        for (id, member) in &self.members {
            assert!(
                member.held.len() <= member.window as usize,
                "member {id:?} over its window"
            );
            for position in &member.held {
                assert_eq!(
                    self.in_flight.get(position).map(|flight| flight.member),
                    Some(*id)
                );
            }
            held_by_members += member.held.len();
        }
        assert_eq!(
            held_by_members,
            self.in_flight.len(),
            "every delivery is held by a member"
        );
        let mut buffered = 0;
        for ((stream, partition, _), queue) in &self.queues {
            assert!(!queue.jobs.is_empty(), "no empty queues");
            let head = queue.jobs.front().expect("checked");
            assert_eq!(
                queue.head == Head::InFlight,
                self.in_flight.contains_key(&head.position),
                "a head is in flight exactly when marked so"
            );
            for job in queue.jobs.iter().skip(1) {
                assert!(
                    !self.in_flight.contains_key(&job.position),
                    "only heads are in flight"
                );
            }
            let offsets: Vec<u64> = queue.jobs.iter().map(|job| job.position.offset).collect();
            assert!(
                offsets.windows(2).all(|pair| pair[0] < pair[1]),
                "a queue is in offset order"
            );
            let lane = &self.lanes[*stream as usize][*partition as usize];
            for offset in offsets {
                assert!(!lane.progress.is_settled(offset), "a held event is unsettled");
                assert!(lane.held.contains_key(&offset));
            }
            buffered += queue.jobs.len();
        }
        assert_eq!(buffered, self.buffered_count);
    }
}

/// The rendezvous (highest random weight) score of a key for a member: FNV-1a
/// 64 over the instance id, a separator and the key, finished by a mix.
fn rendezvous(key: &[u8], instance: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in instance.as_bytes().iter().chain([0xff].iter()).chain(key) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser: FNV's low bits alone mix poorly.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod tests;
