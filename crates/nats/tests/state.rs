//! Consumer cursors and the idempotent producer registry on a real 3-node
//! cluster: the embedded engine's rules and errors, compare-and-set under
//! concurrent writers on different nodes, and reads that are fresh from any
//! node.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use stele_engine::error::{Error, ErrorKind};
use stele_engine::event::{Epoch, Offset, PartitionId, ProducerId};
use stele_engine::limits::{CURSOR_NAME_SIZE_MAX, PRODUCER_NAME_SIZE_MAX, PRODUCERS_COUNT_MAX};
use stele_nats::cluster::Cluster;
use stele_nats::cursors::{CURSOR_BUCKET, CursorStore};
use stele_nats::producers::{PRODUCER_BUCKET, ProducerRegistry};
use stele_nats::topics::token;
use stele_nats::{Connection, NatsConfig, connect};

mod support;
use support::{WAIT_MAX, cluster};

/// The longest a test's concurrent part may take.
const CONCURRENT_WAIT_MAX: Duration = Duration::from_secs(180);

fn unbounded(_: PartitionId) -> Offset {
    Offset(u64::MAX)
}

fn offsets(entries: &[(u32, u64)]) -> BTreeMap<PartitionId, Offset> {
    entries
        .iter()
        .map(|&(partition, offset)| (PartitionId(partition), Offset(offset)))
        .collect()
}

/// A checked connection to node `node` alone, with the tests' request timeout.
async fn connect_to(cluster: &Cluster, node: usize) -> Connection {
    let config: NatsConfig = cluster.url(node).parse().expect("url");
    let mut connection = connect(&config).await.expect("connect to one node");
    connection.jetstream.set_timeout(WAIT_MAX);
    assert_eq!(
        connection.client.server_info().server_name,
        cluster.name(node),
        "connected to another node than asked"
    );
    connection
}

/// Two nodes that do not lead `stream` (so that reads through them would see
/// a lagging replica if they were not sent to the leader).
async fn followers(cluster: &Cluster, connection: &Connection, stream: &str) -> (usize, usize) {
    let deadline = std::time::Instant::now() + WAIT_MAX;
    let leader = loop {
        let mut stream = connection.jetstream.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("stream info");
        if let Some(leader) = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()) {
            break cluster.index_of(&leader).expect("the leader is a node");
        }
        assert!(std::time::Instant::now() < deadline, "{stream:?} has no leader");
        tokio::task::yield_now().await;
    };
    let mut others = (0..3).filter(|node| *node != leader);
    (
        others.next().expect("a follower"),
        others.next().expect("another follower"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_commit_read_list_and_delete_with_the_engines_rules() {
    // Goal: the round trips and every refusal of the engine's cursor store,
    // with the same errors, and nothing written by a refused commit.
    // Method: the engine's own cursor unit tests, replayed against the bucket.
    let (_cluster, connection, _serial) = cluster().await;
    let store = CursorStore::open(&connection).await.expect("open");
    let kind = |result: Result<(), Error>| result.map_err(|error| error.kind());

    assert_eq!(
        store.get("orders", "billing").await.map_err(|error| error.kind()),
        Err(ErrorKind::CursorNotFound)
    );
    assert!(store.list("orders").await.expect("list").is_empty());
    store
        .commit(
            "orders",
            4,
            "billing",
            &[(PartitionId(0), Offset(10)), (PartitionId(3), Offset(7))],
            false,
            &unbounded,
        )
        .await
        .expect("commit");
    let commit = |name: &'static str, partition: u32, offset: u64, allow_backwards: bool| {
        let store = &store;
        async move {
            store
                .commit(
                    "orders",
                    4,
                    name,
                    &[(PartitionId(partition), Offset(offset))],
                    allow_backwards,
                    &unbounded,
                )
                .await
        }
    };
    commit("audit", 1, 4, false).await.expect("commit");
    commit("billing", 0, 12, false).await.expect("commit");
    store
        .commit("orders", 4, "empty", &[], false, &unbounded)
        .await
        .expect("an empty commit creates the cursor");
    assert_eq!(
        store.get("orders", "billing").await.expect("get"),
        offsets(&[(0, 12), (3, 7)])
    );
    let listed = vec![
        ("audit".to_string(), offsets(&[(1, 4)])),
        ("billing".to_string(), offsets(&[(0, 12), (3, 7)])),
        ("empty".to_string(), offsets(&[])),
    ];
    assert_eq!(store.list("orders").await.expect("list"), listed);

    // Backwards: refused with the engine's error, unless allowed; the same
    // offset again is not backwards.
    let backwards = commit("billing", 0, 9, false).await.err();
    assert!(
        matches!(
            backwards,
            Some(Error::CursorBackwards {
                partition: PartitionId(0),
                committed: Offset(12),
                requested: Offset(9)
            })
        ),
        "{backwards:?}"
    );
    commit("billing", 0, 12, false).await.expect("the same offset");
    commit("billing", 0, 3, true).await.expect("allowed backwards");
    assert_eq!(
        store.get("orders", "billing").await.expect("get"),
        offsets(&[(0, 3), (3, 7)])
    );

    // Bad partitions, past the high watermark: refused, nothing written.
    assert_eq!(
        kind(commit("billing", 4, 1, false).await),
        Err(ErrorKind::InvalidArgument)
    );
    let twice = store
        .commit(
            "orders",
            4,
            "billing",
            &[(PartitionId(1), Offset(1)), (PartitionId(1), Offset(2))],
            false,
            &unbounded,
        )
        .await;
    assert_eq!(kind(twice), Err(ErrorKind::InvalidArgument));
    let no_partitions = store.commit("orders", 0, "billing", &[], false, &unbounded).await;
    assert_eq!(kind(no_partitions), Err(ErrorKind::InvalidArgument));
    let high_watermark = |partition: PartitionId| Offset(100 + u64::from(partition.0));
    let ahead = store
        .commit(
            "orders",
            4,
            "billing",
            &[(PartitionId(1), Offset(50)), (PartitionId(2), Offset(103))],
            false,
            &high_watermark,
        )
        .await
        .err();
    assert!(
        matches!(
            ahead,
            Some(Error::CursorAheadOfHighWatermark {
                partition: PartitionId(2),
                requested: Offset(103),
                high_watermark: Offset(102)
            })
        ),
        "{ahead:?}"
    );
    store
        .commit(
            "orders",
            4,
            "billing",
            &[(PartitionId(2), Offset(102))],
            false,
            &high_watermark,
        )
        .await
        .expect("at the high watermark");
    assert_eq!(
        store.get("orders", "billing").await.expect("get"),
        offsets(&[(0, 3), (2, 102), (3, 7)])
    );

    // Names: the engine's checks, the engine's errors.
    let long = "x".repeat(CURSOR_NAME_SIZE_MAX + 1);
    for (name, expected) in [
        ("", ErrorKind::InvalidArgument),
        ("bell\u{7}", ErrorKind::InvalidArgument),
        (long.as_str(), ErrorKind::LimitExceeded),
    ] {
        let committed = store
            .commit(
                "orders",
                4,
                name,
                &[(PartitionId(0), Offset(1))],
                false,
                &unbounded,
            )
            .await;
        assert_eq!(kind(committed), Err(expected), "commit {name:?}");
        assert_eq!(
            kind(store.delete("orders", name).await),
            Err(expected),
            "delete {name:?}"
        );
    }
    let longest = format!("webhook.é.{}", "x".repeat(CURSOR_NAME_SIZE_MAX - 11));
    assert_eq!(longest.len(), CURSOR_NAME_SIZE_MAX);
    store
        .commit(
            "orders",
            4,
            &longest,
            &[(PartitionId(0), Offset(1))],
            false,
            &unbounded,
        )
        .await
        .expect("the longest name, with '.' and non-ASCII");
    assert_eq!(
        store.get("orders", &longest).await.expect("get"),
        offsets(&[(0, 1)])
    );
    let bad_topic = store.commit("no spaces", 4, "c", &[], false, &unbounded).await;
    assert_eq!(kind(bad_topic), Err(ErrorKind::InvalidArgument));

    // Delete: gone for get and list, CursorNotFound the second time, and a
    // commit afterwards starts afresh (no backwards check against the old one).
    store.delete("orders", "billing").await.expect("delete");
    assert_eq!(
        store.get("orders", "billing").await.map_err(|error| error.kind()),
        Err(ErrorKind::CursorNotFound)
    );
    assert_eq!(
        kind(store.delete("orders", "billing").await),
        Err(ErrorKind::CursorNotFound)
    );
    let names: Vec<String> = store
        .list("orders")
        .await
        .expect("list")
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        vec!["audit".to_string(), "empty".to_string(), longest.clone()]
    );
    commit("billing", 0, 1, false)
        .await
        .expect("a new cursor of the same name");
    assert_eq!(
        store.get("orders", "billing").await.expect("get"),
        offsets(&[(0, 1)])
    );

    // A value that does not decode is corruption, for every reader.
    let raw = connection
        .jetstream
        .get_key_value(CURSOR_BUCKET)
        .await
        .expect("the bucket");
    let key = format!("{}.{}", token(b"damaged"), token(b"c"));
    raw.put(&key, vec![1, 0, 1, 0].into()).await.expect("put");
    let damaged = store.get("damaged", "c").await.err();
    assert!(matches!(damaged, Some(Error::Corruption { .. })), "{damaged:?}");
    let listed = store
        .list("damaged")
        .await
        .map(|_| ())
        .map_err(|error| error.kind());
    assert_eq!(listed, Err(ErrorKind::Corruption));
    raw.put(&key, vec![2, 0, 0, 0, 0, 0].into()).await.expect("put");
    let newer = store
        .commit(
            "damaged",
            1,
            "c",
            &[(PartitionId(0), Offset(0))],
            false,
            &unbounded,
        )
        .await
        .err();
    assert!(
        matches!(
            newer,
            Some(Error::Corruption {
                reason: stele_engine::format::DecodeError::UnsupportedVersion { found: 2 },
                ..
            })
        ),
        "{newer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_from_two_nodes_to_one_cursor_lose_nothing() {
    // Goal: commits of different partitions of one cursor, from two servers
    // connected to different nodes at once, never overwrite each other.
    // Method: each side commits its own partition 1..=N without
    // allow_backwards and reads the cursor back after every commit: its own
    // partition must hold exactly what it committed last (nobody else writes
    // it), and the other side's partition must never move back. A lost update
    // (a blind write of a stale value) breaks one of the two, or the final state.
    const COMMITS: u64 = 40;
    let (cluster, _connection, _serial) = cluster().await;
    let sides = [connect_to(&cluster, 0).await, connect_to(&cluster, 1).await];
    let mut tasks = tokio::task::JoinSet::new();
    for (own, connection) in sides.iter().enumerate() {
        let store = CursorStore::open(connection).await.expect("open");
        tasks.spawn(async move {
            let own = PartitionId(own as u32);
            let other = PartitionId(1 - own.0);
            let mut other_seen = None;
            for offset in 1..=COMMITS {
                store
                    .commit("orders", 2, "shared", &[(own, Offset(offset))], false, &unbounded)
                    .await
                    .expect("commit");
                let now = store.get("orders", "shared").await.expect("get");
                assert_eq!(
                    now.get(&own),
                    Some(&Offset(offset)),
                    "partition {own}'s commit of {offset} was lost"
                );
                let other_now = now.get(&other).copied();
                assert!(
                    other_now >= other_seen,
                    "partition {other} moved back from {other_seen:?} to {other_now:?}"
                );
                other_seen = other_now;
            }
        });
    }
    tokio::time::timeout(CONCURRENT_WAIT_MAX, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a committer failed");
        }
    })
    .await
    .expect("the commits end in time");
    for connection in &sides {
        let store = CursorStore::open(connection).await.expect("open");
        assert_eq!(
            store.get("orders", "shared").await.expect("get"),
            offsets(&[(0, COMMITS), (1, COMMITS)])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_forgets_only_its_cursors_and_producers() {
    // Goal: a topic's deletion removes its cursors and producers and nothing
    // of other topics, also of one whose token starts like its own; its
    // producer ids are not handed out again when the name is used anew.
    let (_cluster, connection, _serial) = cluster().await;
    let cursors = CursorStore::open(&connection).await.expect("open");
    let producers = ProducerRegistry::open(&connection).await.expect("open");
    let topics = ["orders", "orders.eu", "billing"];
    for topic in topics {
        for name in ["c1", "c2"] {
            cursors
                .commit(topic, 2, name, &[(PartitionId(1), Offset(5))], false, &unbounded)
                .await
                .expect("commit");
        }
        assert_eq!(
            producers.open_producer(topic, "p").await.expect("open"),
            (ProducerId(1), Epoch(0))
        );
        producers.open_producer(topic, "q").await.expect("open");
    }
    assert!(token(b"orders.eu").starts_with(&token(b"orders")));

    cursors.delete_topic("orders").await.expect("delete the cursors");
    producers
        .delete_topic("orders")
        .await
        .expect("delete the producers");
    assert!(cursors.list("orders").await.expect("list").is_empty());
    assert_eq!(
        cursors.get("orders", "c1").await.map_err(|error| error.kind()),
        Err(ErrorKind::CursorNotFound)
    );
    for id in [1, 2] {
        assert_eq!(
            producers
                .current_epoch("orders", ProducerId(id))
                .await
                .expect("read"),
            None
        );
    }
    for topic in ["orders.eu", "billing"] {
        let names: Vec<String> = cursors
            .list(topic)
            .await
            .expect("list")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["c1".to_string(), "c2".to_string()], "{topic}");
        assert_eq!(
            producers.current_epoch(topic, ProducerId(1)).await.expect("read"),
            Some(Epoch(0)),
            "{topic}"
        );
    }

    // The name again: a fresh cursor (a lower offset is no backwards commit),
    // and a fresh producer with an id never given under this name.
    cursors
        .commit(
            "orders",
            2,
            "c1",
            &[(PartitionId(1), Offset(1))],
            false,
            &unbounded,
        )
        .await
        .expect("commit to the topic created again");
    assert_eq!(
        producers.open_producer("orders", "p").await.expect("open"),
        (ProducerId(3), Epoch(0))
    );
    assert_eq!(
        producers
            .current_epoch("orders", ProducerId(1))
            .await
            .expect("read"),
        None
    );
    // Deleting what holds nothing is no error.
    cursors.delete_topic("never").await.expect("delete nothing");
    producers.delete_topic("never").await.expect("delete nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_a_producer_bumps_its_epoch_which_every_node_reads_at_once() {
    // Goal: open_producer's rules (ids from 1 per topic, a re-open bumps only
    // the epoch, topics independent, the engine's name checks and overflow
    // errors), and current_epoch through another node always at least the
    // epoch just returned. Method: open through a node that does not lead
    // the bucket's stream and read through the other such node, so that a
    // read served by a lagging replica would show the previous epoch.
    // Whether a lagging replica shows depends on timing: many rounds give it
    // many chances.
    const ROUNDS: u32 = 200;
    let (cluster, connection, _serial) = cluster().await;
    ProducerRegistry::open(&connection)
        .await
        .expect("create the bucket");
    let (writer, reader) = followers(&cluster, &connection, &format!("KV_{PRODUCER_BUCKET}")).await;
    let writer = ProducerRegistry::open(&connect_to(&cluster, writer).await)
        .await
        .expect("open");
    let reader = ProducerRegistry::open(&connect_to(&cluster, reader).await)
        .await
        .expect("open");

    assert_eq!(
        reader.current_epoch("orders", ProducerId(1)).await.expect("read"),
        None
    );
    let (ingest, epoch) = writer.open_producer("orders", "ingest").await.expect("open");
    assert_eq!((ingest, epoch), (ProducerId(1), Epoch(0)));
    assert_eq!(
        writer.open_producer("orders", "billing").await.expect("open"),
        (ProducerId(2), Epoch(0))
    );
    assert_eq!(
        reader.current_epoch("orders", ingest).await.expect("read"),
        Some(Epoch(0))
    );
    for round in 1..=ROUNDS {
        let (id, epoch) = writer.open_producer("orders", "ingest").await.expect("re-open");
        assert_eq!((id, epoch), (ingest, Epoch(round)));
        assert_eq!(
            reader.current_epoch("orders", ingest).await.expect("read"),
            Some(epoch),
            "round {round}: another node read an older epoch than open_producer returned"
        );
    }
    assert_eq!(
        reader.current_epoch("orders", ProducerId(2)).await.expect("read"),
        Some(Epoch(0))
    );
    for unknown in [0, 3, u64::MAX] {
        assert_eq!(
            reader
                .current_epoch("orders", ProducerId(unknown))
                .await
                .expect("read"),
            None
        );
    }

    // Another topic: its own ids and epochs.
    assert_eq!(
        reader.open_producer("audit", "ingest").await.expect("open"),
        (ProducerId(1), Epoch(0))
    );
    assert_eq!(
        writer.current_epoch("orders", ingest).await.expect("read"),
        Some(Epoch(ROUNDS))
    );
    assert_eq!(
        writer.current_epoch("audit", ProducerId(1)).await.expect("read"),
        Some(Epoch(0))
    );

    // Names and overflows, with the engine's errors.
    let long = "x".repeat(PRODUCER_NAME_SIZE_MAX + 1);
    for (name, expected) in [
        ("", ErrorKind::InvalidArgument),
        ("tab\t", ErrorKind::InvalidArgument),
        (long.as_str(), ErrorKind::LimitExceeded),
    ] {
        let opened = writer.open_producer("orders", name).await;
        assert_eq!(opened.map_err(|error| error.kind()), Err(expected), "{name:?}");
    }
    assert_eq!(
        writer
            .open_producer("orders", &"é".repeat(PRODUCER_NAME_SIZE_MAX / 2))
            .await
            .expect("the longest name"),
        (ProducerId(3), Epoch(0))
    );
    let raw = connection
        .jetstream
        .get_key_value(PRODUCER_BUCKET)
        .await
        .expect("the bucket");
    let registered = |id: u64, epoch: u32| -> Vec<u8> {
        let mut bytes = vec![1, 0];
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&epoch.to_le_bytes());
        bytes
    };
    raw.put(
        format!("{}.name.{}", token(b"full"), token(b"old")),
        registered(1, u32::MAX).into(),
    )
    .await
    .expect("put");
    let overflow = writer.open_producer("full", "old").await.err();
    assert!(
        matches!(
            overflow,
            Some(Error::LimitExceeded {
                what: "producer epoch",
                ..
            })
        ),
        "{overflow:?}"
    );
    let counter = |next_id: u64, given_count: u64| -> Vec<u8> {
        let mut bytes = vec![1, 0];
        bytes.extend_from_slice(&next_id.to_le_bytes());
        bytes.extend_from_slice(&given_count.to_le_bytes());
        bytes
    };
    raw.put(format!("{}.next", token(b"full")), counter(u64::MAX, 1).into())
        .await
        .expect("put");
    let ids = writer.open_producer("full", "new").await.err();
    assert!(
        matches!(
            ids,
            Some(Error::LimitExceeded {
                what: "producer id",
                ..
            })
        ),
        "{ids:?}"
    );
    raw.put(
        format!("{}.next", token(b"full")),
        counter(10, PRODUCERS_COUNT_MAX as u64).into(),
    )
    .await
    .expect("put");
    let count = writer.open_producer("full", "new").await.err();
    assert!(
        matches!(
            count,
            Some(Error::LimitExceeded {
                what: "producers in the topic",
                ..
            })
        ),
        "{count:?}"
    );
    raw.put(
        format!("{}.name.{}", token(b"full"), token(b"old")),
        vec![1, 0, 7].into(),
    )
    .await
    .expect("put");
    let damaged = writer.open_producer("full", "old").await.err();
    assert!(matches!(damaged, Some(Error::Corruption { .. })), "{damaged:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_of_distinct_names_from_two_nodes_get_distinct_ids() {
    // Goal: ids are unique per topic across servers: concurrent first opens
    // of distinct names through two nodes all take different ids from the
    // topic's counter, and, as no id is spent by a lost name race here, the
    // ids are exactly 1..=N as the engine's would be.
    // Method: 2 x 16 opens at once, then every id's epoch read through the
    // other node, then a re-open of each name keeps its id.
    const PER_SIDE: usize = 16;
    let (cluster, _connection, _serial) = cluster().await;
    let sides = [
        ProducerRegistry::open(&connect_to(&cluster, 0).await)
            .await
            .expect("open"),
        ProducerRegistry::open(&connect_to(&cluster, 2).await)
            .await
            .expect("open"),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (side, registry) in sides.iter().enumerate() {
        for index in 0..PER_SIDE {
            let registry = registry.clone();
            tasks.spawn(async move {
                let name = format!("producer-{side}-{index}");
                let opened = registry.open_producer("orders", &name).await.expect("open");
                (name, opened)
            });
        }
    }
    let opened = tokio::time::timeout(CONCURRENT_WAIT_MAX, async {
        let mut opened = BTreeMap::new();
        while let Some(done) = tasks.join_next().await {
            let (name, (id, epoch)) = done.expect("an open failed");
            assert_eq!(epoch, Epoch(0), "{name}");
            opened.insert(name, id);
        }
        opened
    })
    .await
    .expect("the opens end in time");
    let ids: BTreeSet<u64> = opened.values().map(|id| id.0).collect();
    assert_eq!(ids.len(), 2 * PER_SIDE, "an id was given twice: {opened:?}");
    assert_eq!(ids, (1..=2 * PER_SIDE as u64).collect::<BTreeSet<u64>>());
    for (name, &id) in &opened {
        let other = if name.starts_with("producer-0-") {
            &sides[1]
        } else {
            &sides[0]
        };
        assert_eq!(
            other.current_epoch("orders", id).await.expect("read"),
            Some(Epoch(0)),
            "{name}"
        );
        assert_eq!(
            other.open_producer("orders", name).await.expect("re-open"),
            (id, Epoch(1)),
            "{name}"
        );
    }
}
