//! A model test of the delivery core: random joins, leaves (crashes), acks,
//! retries, parks, lease expiries, stale settles and restarts (a new core
//! built from the changes persisted so far, as a server restart builds it
//! from the group journal), checked against the guarantees:
//!
//! - a key has at most one unsettled delivery, and it is always the key's
//!   unsettled event of lowest offset (order per key, across redeliveries,
//!   membership changes and restarts);
//! - a settled event (acked or parked) is never delivered again, also after a
//!   restart from the persisted changes;
//! - a settle of a delivery not held (stale attempt, other member, after a
//!   restart) is refused and changes nothing;
//! - attempts grow by one per delivery of an event, and an event is parked
//!   once its deliveries are exhausted;
//! - with members present and everything acked, every event settles.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::core::{Action, Core, DeliveryId, Effect, Job, MemberId, Outgoing, Position, Settings};
use stele_engine::group::{Exhausted, PartitionProgress, ProgressChange};

const LEASE: u64 = 50;
const DELIVERIES_MAX: u32 = 3;
const PARTITIONS: u32 = 2;

#[derive(Debug, Clone)]
enum Op {
    Append {
        partition: u32,
        key: u8,
    },
    Join,
    Leave(usize),
    Ack(usize),
    Retry(usize),
    Park(usize),
    /// A settle naming an attempt before the one in flight.
    Stale(usize),
    Advance(u64),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PARTITIONS, 0u8..6).prop_map(|(partition, key)| Op::Append { partition, key }),
        1 => Just(Op::Join),
        1 => (0usize..8).prop_map(Op::Leave),
        6 => (0usize..64).prop_map(Op::Ack),
        2 => (0usize..64).prop_map(Op::Retry),
        1 => (0usize..64).prop_map(Op::Park),
        1 => (0usize..64).prop_map(Op::Stale),
        2 => (1u64..80).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

fn settings() -> Settings {
    Settings {
        lease_ms: Some(LEASE),
        deliveries_max: DELIVERIES_MAX,
        backoff_initial_ms: 5,
        backoff_max_ms: 20,
        exhausted: Exhausted::Park,
        buffered_count_max: 1000,
        buffered_size_max: 1 << 20,
        progress_entries_max: 10_000,
    }
}

/// The world around a core: the log, the persisted progress, the deliveries
/// members hold.
struct World {
    /// By partition: the key of each offset.
    log: Vec<Vec<u8>>,
    core: Core<()>,
    /// The progress as persisted (the changes taken from the core so far).
    persisted: Vec<PartitionProgress>,
    /// What the reference says is settled, by partition.
    settled: Vec<BTreeSet<u64>>,
    /// Deliveries of each event so far (the attempt of the last one).
    attempts: HashMap<(u32, u64), u32>,
    /// Deliveries held by members, by member.
    held: BTreeMap<MemberId, Vec<DeliveryId>>,
    now: i64,
    joins: u64,
    steps: u64,
}

impl World {
    fn new() -> World {
        let persisted: Vec<PartitionProgress> = (0..PARTITIONS).map(|_| PartitionProgress::new(0)).collect();
        World {
            log: vec![Vec::new(); PARTITIONS as usize],
            core: Core::new(
                settings(),
                vec![persisted.iter().map(|p| (p.clone(), None)).collect()],
                0,
            ),
            persisted,
            settled: vec![BTreeSet::new(); PARTITIONS as usize],
            attempts: HashMap::new(),
            held: BTreeMap::new(),
            now: 0,
            joins: 0,
            steps: 0,
        }
    }

    /// Feeds the core everything appended, as the reader does.
    fn read(&mut self) {
        for partition in 0..PARTITIONS {
            let log = &self.log[partition as usize];
            let Some((from, _)) = self.core.read_from(0, partition) else {
                continue;
            };
            let end = log.len() as u64;
            if from >= end {
                continue;
            }
            let jobs = (from..end)
                .map(|offset| Job {
                    position: Position {
                        stream: 0,
                        partition,
                        offset,
                    },
                    key: vec![log[offset as usize]],
                    timestamp_ms: 0,
                    size: 1,
                    payload: std::sync::Arc::new(()),
                })
                .collect();
            self.core.offer(0, partition, from, end, jobs, self.now);
        }
    }

    fn persist(&mut self) {
        for change in self.core.take_changes() {
            match change {
                ProgressChange::Settle {
                    partition,
                    start,
                    end,
                    ..
                } => self.persisted[partition as usize].settle(start, end),
                ProgressChange::Pending {
                    partition,
                    offset,
                    pending,
                    ..
                } => self.persisted[partition as usize].set_pending(offset, pending),
                ProgressChange::Seek { partition, floor, .. } => {
                    self.persisted[partition as usize].seek(floor)
                }
            }
        }
    }

    fn effects(&mut self, effects: Vec<Effect<()>>) {
        for Effect::Park {
            position, attempts, ..
        } in effects
        {
            assert!(attempts >= 1);
            self.core.parked(position, self.now);
            self.settle_in_reference(position);
        }
    }

    fn settle_in_reference(&mut self, position: Position) {
        let fresh = self.settled[position.partition as usize].insert(position.offset);
        assert!(fresh, "{position:?} settled twice");
    }

    fn dispatch(&mut self) {
        let out: Vec<Outgoing<()>> = self.core.dispatch(self.now);
        for outgoing in out {
            let position = outgoing.id.position;
            assert!(
                !self.settled[position.partition as usize].contains(&position.offset),
                "settled {position:?} delivered again"
            );
            let key = self.log[position.partition as usize][position.offset as usize];
            // It is the key's unsettled event of lowest offset.
            let lowest = self.log[position.partition as usize]
                .iter()
                .enumerate()
                .find(|(offset, k)| {
                    **k == key && !self.settled[position.partition as usize].contains(&(*offset as u64))
                })
                .map(|(offset, _)| offset as u64);
            assert_eq!(lowest, Some(position.offset), "order per key");
            // No other delivery of the key is held.
            for ids in self.held.values() {
                for id in ids {
                    let other = id.position;
                    assert!(
                        !(other.partition == position.partition
                            && self.log[other.partition as usize][other.offset as usize] == key),
                        "two deliveries of key {key} held"
                    );
                }
            }
            let attempt = self
                .attempts
                .entry((position.partition, position.offset))
                .or_insert(0);
            // A delivery in flight at a restart may be counted once less.
            assert!(outgoing.id.attempt <= *attempt + 1 && outgoing.id.attempt >= 1);
            *attempt = outgoing.id.attempt;
            self.held.entry(outgoing.member).or_default().push(outgoing.id);
        }
        self.core.check();
    }

    fn pick(&self, index: usize) -> Option<(MemberId, usize)> {
        let all: Vec<(MemberId, usize)> = self
            .held
            .iter()
            .flat_map(|(member, ids)| (0..ids.len()).map(move |at| (*member, at)))
            .collect();
        (!all.is_empty()).then(|| all[index % all.len()])
    }

    fn settle(&mut self, index: usize, action: Action) {
        let Some((member, at)) = self.pick(index) else {
            return;
        };
        let id = self.held.get_mut(&member).expect("picked").remove(at);
        let live = self.core.holds(member, id, self.now);
        let settled = self.core.settle(member, id, action.clone(), self.now, 0.5);
        assert_eq!(
            settled.is_ok(),
            live,
            "a settle is applied exactly when the delivery is held"
        );
        if let Ok(effect) = settled {
            if matches!(action, Action::Ack) {
                self.settle_in_reference(id.position);
            }
            if let Some(Effect::Park { position, .. }) = effect {
                self.core.parked(position, self.now);
                self.settle_in_reference(position);
            }
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Append { partition, key } => self.log[partition as usize].push(key),
            Op::Join => {
                self.joins += 1;
                let window = 1 + (self.joins % 3) as u32;
                self.core.join(format!("member-{}", self.joins), window, self.now);
            }
            Op::Leave(index) => {
                let members: Vec<MemberId> = self.core.members().map(|(id, _)| id).collect();
                if !members.is_empty() {
                    let member = members[index % members.len()];
                    let effects = self.core.leave(member, self.now);
                    self.held.remove(&member);
                    self.effects(effects);
                }
            }
            Op::Ack(index) => self.settle(index, Action::Ack),
            Op::Retry(index) => self.settle(index, Action::Retry { delay_ms: None }),
            Op::Park(index) => self.settle(
                index,
                Action::Park {
                    reason: "model".into(),
                },
            ),
            Op::Stale(index) => {
                if let Some((member, at)) = self.pick(index) {
                    let mut id = self.held[&member][at];
                    if id.attempt > 1 {
                        id.attempt -= 1;
                        let before = self.core.counters();
                        assert!(self.core.settle(member, id, Action::Ack, self.now, 0.5).is_err());
                        assert_eq!(self.core.counters(), before, "a refused settle changes nothing");
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += ms as i64;
                let effects = self.core.expire(self.now);
                self.effects(effects);
                // Holdings whose lease ended are gone.
                let (core, now) = (&self.core, self.now);
                for (member, ids) in &mut self.held {
                    ids.retain(|id| core.holds(*member, *id, now));
                }
                self.held.retain(|_, ids| !ids.is_empty());
            }
            Op::Restart => {
                self.persist();
                // What the journal holds is the truth now: acks not yet
                // persisted are lost (delivered again, at least once).
                let lanes = self
                    .persisted
                    .iter()
                    .map(|progress| (progress.clone(), None))
                    .collect();
                self.core = Core::new(settings(), vec![lanes], 1_000_000 + self.joins);
                for (partition, settled) in self.settled.iter_mut().enumerate() {
                    let persisted = &self.persisted[partition];
                    settled.retain(|offset| persisted.is_settled(*offset));
                }
                self.held.clear();
                self.joins += 1;
                self.core.join(format!("member-{}", self.joins), 2, self.now);
            }
        }
        self.read();
        self.dispatch();
        // The runner writes changes in batches: persist every few steps.
        self.steps += 1;
        if self.steps.is_multiple_of(5) {
            self.persist();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_core_keeps_its_guarantees(ops in proptest::collection::vec(op(), 1..200)) {
        let mut world = World::new();
        for op in ops {
            world.apply(op);
        }
        // Liveness: with a member and every delivery acked, everything settles.
        world.core.join("finisher".into(), 16, world.now);
        for _ in 0..10_000 {
            world.now += LEASE as i64 + 100;
            let effects = world.core.expire(world.now);
            world.effects(effects);
            world.held.clear();
            world.read();
            let out = world.core.dispatch(world.now);
            if out.is_empty() && world.core.in_flight_count() == 0 {
                break;
            }
            for outgoing in out {
                world.core.settle(outgoing.member, outgoing.id, Action::Ack, world.now, 0.5).expect("held");
                world.settle_in_reference(outgoing.id.position);
            }
        }
        for partition in 0..PARTITIONS {
            let lane = world.core.lane(0, partition);
            prop_assert_eq!(lane.floor, world.log[partition as usize].len() as u64);
        }
    }
}
