//! The NATS backend served by several Stele servers at once (each a
//! `NatsBackend` of its own, connected to a different node), and the drill of
//! the issue: SIGKILL of a partition stream's leader during concurrent
//! compare-and-set and idempotent appends through two servers.
//!
//! After each: every acknowledged event is present exactly once at its
//! acknowledged position, every key's sequences are dense from 0, a retry of
//! an acknowledged id is answered as a duplicate with the original position,
//! and no compare-and-set conflict was missed (every success of a key's
//! appends expecting sequence N is the only event with sequence N + 1).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stele_engine::config::TopicOptions;
use stele_engine::error::Error;
use stele_engine::event::{
    AppendAck, AppendRequest, Direction, Event, ExpectedSequence, Offset, PartitionId, Sequence,
};
use stele_engine::{EventFilter, ProducerStamp};
use stele_nats::backend::NatsBackend;
use stele_nats::cluster::Cluster;
use stele_nats::{NatsConfig, connect};
use stele_server::backend::Backend;
use support::{WAIT_MAX, cluster};

/// A Stele server's backend connected to node `index` first (the client
/// still knows the others, and moves to one when that node dies).
async fn server(cluster: &Cluster, index: usize) -> NatsBackend {
    let urls = (0..3)
        .map(|offset| cluster.url((index + offset) % 3))
        .collect::<Vec<_>>()
        .join(",");
    let config: NatsConfig = urls.parse().expect("urls");
    let mut connection = connect(&config).await.expect("connect");
    connection.jetstream.set_timeout(Duration::from_secs(5));
    NatsBackend::open(connection, TopicOptions::default(), false)
        .await
        .expect("open the backend")
}

fn event(payload: String) -> Event {
    Event::new("noted", payload.into_bytes())
}

/// Every event of partition 0 of `topic`, read through `backend`.
async fn all_events(backend: &NatsBackend, topic: &str) -> Vec<stele_engine::RecordedEvent> {
    let mut events = Vec::new();
    let mut from = Offset(0);
    loop {
        let batch = backend
            .scan(topic, PartitionId(0), from, 1000, u64::MAX, &EventFilter::all())
            .await
            .expect("scan");
        if batch.is_empty() && batch.next_offset() == from {
            return events;
        }
        from = batch.next_offset();
        events.extend(batch.into_recorded());
    }
}

/// Checks the partition against the acknowledgements: each at its position
/// exactly once, per-key sequences dense from 0.
fn check_history(events: &[stele_engine::RecordedEvent], acked: &[(String, String, AppendAck)]) {
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.offset, Offset(index as u64), "offsets are dense");
    }
    let mut next: HashMap<&[u8], u64> = HashMap::new();
    for event in events {
        let expected = next.entry(event.key.as_slice()).or_insert(0);
        assert_eq!(event.sequence, Sequence(*expected), "a key's sequences are dense");
        *expected += 1;
    }
    let mut payloads: HashMap<&[u8], usize> = HashMap::new();
    for event in events {
        *payloads.entry(event.payload.as_slice()).or_insert(0) += 1;
    }
    for (key, payload, ack) in acked {
        let stored = &events[ack.first_offset.0 as usize];
        assert_eq!(
            stored.key,
            key.as_bytes(),
            "the acknowledged position holds the key"
        );
        assert_eq!(
            stored.payload,
            payload.as_bytes(),
            "the acknowledged position holds the event"
        );
        assert_eq!(stored.sequence, ack.first_sequence);
        assert_eq!(payloads[payload.as_bytes()], 1, "{payload} is stored once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_append_to_one_partition_with_exact_compare_and_set() {
    // Goal: two servers writing the same keys of one partition at once decide
    // every compare-and-set against the latest prefix: of all appends
    // expecting sequence N of a key, exactly one succeeds, the others get
    // WRONG_EXPECTED_SEQUENCE with the actual sequence.
    let (cluster, _connection, _serial) = cluster().await;
    let servers = [server(&cluster, 0).await, server(&cluster, 1).await];
    servers[0]
        .create_topic("cas", TopicOptions::default().partitions(1))
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for (index, backend) in servers.iter().enumerate() {
        for worker in 0..3 {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                let mut won = Vec::new();
                let mut conflicts = 0;
                for round in 0..12 {
                    let key = format!("k{}", round % 2);
                    let last = backend
                        .read_key("cas", key.as_bytes(), None, Direction::Backwards, 1)
                        .await
                        .expect("read the key")
                        .last_sequence;
                    let expected = match last {
                        None => ExpectedSequence::NoEvents,
                        Some(sequence) => ExpectedSequence::Exact(sequence),
                    };
                    let payload = format!("s{index}-w{worker}-r{round}");
                    let request =
                        AppendRequest::new(key.clone(), vec![event(payload.clone())]).expect(expected);
                    let mut results = backend.append("cas", vec![request]).await.expect("the topic");
                    match results.remove(0) {
                        Ok(ack) => won.push((key, payload, ack, last)),
                        Err(Error::WrongExpectedSequence { actual, .. }) => {
                            assert_ne!(actual, last, "a conflict reports a newer sequence");
                            conflicts += 1;
                        }
                        Err(error) => panic!("append: {error}"),
                    }
                }
                (won, conflicts)
            }));
        }
    }
    let mut won = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (mine, lost) = task.await.expect("task");
        won.extend(mine);
        conflicts += lost;
    }
    let events = all_events(&servers[1], "cas").await;
    assert_eq!(events.len(), won.len(), "every success is stored, nothing else");
    for (key, _, ack, last) in &won {
        let expected = last.map_or(Sequence(0), Sequence::next);
        assert_eq!(
            ack.first_sequence, expected,
            "{key}: a success follows the sequence it expected"
        );
    }
    let acked: Vec<_> = won
        .into_iter()
        .map(|(key, payload, ack, _)| (key, payload, ack))
        .collect();
    check_history(&events, &acked);
    assert!(
        conflicts > 0,
        "six writers of two keys met no conflict: the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_another_server_is_a_duplicate_and_fencing_holds_across_servers() {
    // Goal: idempotency and producer fencing are the cluster's, not a
    // server's: a retry of an id through another server answers the original
    // position; a producer re-opened through one server is fenced on the other.
    let (cluster, _connection, _serial) = cluster().await;
    let (first, second) = (server(&cluster, 0).await, server(&cluster, 2).await);
    first
        .create_topic("ids", TopicOptions::default().partitions(2))
        .await
        .expect("create");
    let request = |payload: &str| {
        AppendRequest::new(
            "order-7",
            vec![event(payload.to_string()).with_idempotency_id("pay-1")],
        )
    };
    let original = first
        .append("ids", vec![request("paid")])
        .await
        .expect("topic")
        .remove(0)
        .expect("append");
    let retried = second
        .append("ids", vec![request("paid")])
        .await
        .expect("topic")
        .remove(0)
        .expect("retry");
    assert!(
        retried.duplicate,
        "the retry through another server is a duplicate"
    );
    assert_eq!(
        (retried.partition, retried.first_offset, retried.first_sequence),
        (original.partition, original.first_offset, original.first_sequence)
    );
    let reused = second
        .append("ids", vec![request("refunded")])
        .await
        .expect("topic")
        .remove(0);
    assert!(
        matches!(reused, Err(Error::IdempotencyIdReused { .. })),
        "{reused:?}"
    );

    let (producer, epoch) = first.open_producer("ids", "billing").await.expect("open");
    let stamp = |sequence| ProducerStamp {
        producer,
        epoch,
        sequence: Sequence(sequence),
    };
    let mut stamped = AppendRequest::new("order-8", vec![event("a".to_string())]);
    stamped.producer = Some(stamp(0));
    second
        .append("ids", vec![stamped])
        .await
        .expect("topic")
        .remove(0)
        .expect("a stamped append through the second server");
    let (reopened, newer) = first.open_producer("ids", "billing").await.expect("reopen");
    assert_eq!(reopened, producer);
    assert!(newer > epoch);
    let mut stale = AppendRequest::new("order-8", vec![event("b".to_string())]);
    stale.producer = Some(stamp(1));
    let fenced = second.append("ids", vec![stale]).await.expect("topic").remove(0);
    assert!(matches!(fenced, Err(Error::ProducerFenced { .. })), "{fenced:?}");
}

/// What one appender of the drill saw.
#[derive(Default)]
struct Seen {
    /// (key, payload, ack) of every acknowledged append.
    acked: Vec<(String, String, AppendAck)>,
    /// Appends answered UNAVAILABLE then retried with the same id until answered.
    unknown_outcomes: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_leader_killed_during_appends_through_two_servers_loses_nothing_acknowledged() {
    // Goal: the leader drill. Four appenders on two servers append
    // events with idempotency ids, each retried with the same id while the
    // answer is UNAVAILABLE; the partition stream's leader is SIGKILLed at a
    // random moment. Afterwards every acknowledged event is stored once at its
    // acknowledged position, sequences are dense, and a retry of every
    // acknowledged id through either server is a duplicate at the same position.
    let (mut cluster, connection, _serial) = cluster().await;
    let servers = [server(&cluster, 0).await, server(&cluster, 1).await];
    servers[0]
        .create_topic("drill", TopicOptions::default().partitions(1))
        .await
        .expect("create");
    // The kill comes after a random number of acknowledged appends.
    let kill_after = 20 + (std::process::id() as usize % 40);
    let acknowledged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (index, backend) in servers.iter().enumerate() {
        for worker in 0..2 {
            let backend = backend.clone();
            let acknowledged = Arc::clone(&acknowledged);
            tasks.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                for round in 0..40 {
                    let key = format!("k{}", (worker + round) % 4);
                    let payload = format!("s{index}-w{worker}-r{round}");
                    let request = AppendRequest::new(
                        key.clone(),
                        vec![event(payload.clone()).with_idempotency_id(payload.clone())],
                    );
                    let deadline = Instant::now() + WAIT_MAX;
                    let ack = loop {
                        let result = backend
                            .append("drill", vec![request.clone()])
                            .await
                            .and_then(|mut results| results.remove(0));
                        match result {
                            Ok(ack) => break ack,
                            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                                seen.unknown_outcomes += 1;
                            }
                            Err(error) => panic!("{payload}: {error}"),
                        }
                    };
                    acknowledged.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    seen.acked.push((key, payload, ack));
                }
                seen
            }));
        }
    }
    let jetstream = &connection.jetstream;
    let stream_name = connection.names.stream("drill", 0);
    let deadline = Instant::now() + WAIT_MAX;
    while acknowledged.load(std::sync::atomic::Ordering::Acquire) < kill_after {
        assert!(Instant::now() < deadline, "the appenders made no progress");
        tokio::task::yield_now().await;
    }
    let leader = jetstream
        .get_stream(&stream_name)
        .await
        .expect("the stream")
        .info()
        .await
        .expect("info")
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("a leader");
    let index = cluster.index_of(&leader).expect("a node of ours");
    cluster.kill(index).expect("kill the leader");
    let mut acked = Vec::new();
    let mut unknown_outcomes = 0;
    for task in tasks {
        let seen = task.await.expect("appender");
        acked.extend(seen.acked);
        unknown_outcomes += seen.unknown_outcomes;
    }
    assert_eq!(acked.len(), 160);
    let survivor = &servers[if index == 0 { 1 } else { 0 }];
    let events = all_events(survivor, "drill").await;
    check_history(&events, &acked);
    assert_eq!(events.len(), 160, "every append is stored exactly once");
    let mut positions = BTreeMap::new();
    for (key, payload, ack) in &acked {
        positions.insert(payload.clone(), (key.clone(), ack.first_offset));
    }
    for (number, (payload, (key, offset))) in positions.iter().enumerate() {
        let request = AppendRequest::new(
            key.clone(),
            vec![event(payload.clone()).with_idempotency_id(payload.clone())],
        );
        let retried = servers[number % 2]
            .append("drill", vec![request])
            .await
            .expect("topic")
            .remove(0)
            .expect("retry");
        assert!(
            retried.duplicate,
            "{payload}: a retry of an acknowledged id is a duplicate"
        );
        assert_eq!(
            retried.first_offset, *offset,
            "{payload}: at the original position"
        );
    }
    eprintln!(
        "leader drill: killed {leader} after {kill_after} acks; {unknown_outcomes} unknown outcomes retried"
    );
}
