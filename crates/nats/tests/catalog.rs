//! The topic catalog on a real 3-node cluster: create, describe, list and
//! delete through the catalog, seen alike from connections to other nodes.

use stele_engine::config::TopicOptions;
use stele_engine::error::ErrorKind;
use stele_nats::topics::{TopicCatalog, partition_subjects, stream_name};
use stele_nats::{NatsConfig, connect};

mod support;
use support::cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_listed_described_and_deleted_through_the_catalog() {
    // Goal: the catalog entry is the commit point and every server sees it:
    // a second connection (to another node, as a second Stele server would
    // have) lists, describes and deletes what the first created.
    let (cluster, connection, _serial) = cluster().await;
    let catalog = TopicCatalog::open(&connection).await.expect("open the catalog");
    let options = TopicOptions::default()
        .partitions(3)
        .retention_age_ms(Some(7 * 24 * 3_600_000));
    catalog.create("orders.eu", &options).await.expect("create");
    let again = catalog.create("orders.eu", &options).await.expect_err("exists");
    assert_eq!(again.kind(), ErrorKind::TopicExists, "{again}");
    let bad = catalog
        .create("no spaces", &options)
        .await
        .expect_err("a bad name");
    assert_eq!(bad.kind(), ErrorKind::InvalidArgument, "{bad}");

    let other: NatsConfig = cluster.url(2).parse().expect("url");
    let other = connect(&other).await.expect("connect to another node");
    let seen = TopicCatalog::open(&other).await.expect("open the catalog again");
    assert_eq!(seen.list().await.expect("list"), vec!["orders.eu".to_string()]);
    assert_eq!(seen.options("orders.eu").await.expect("options"), options);

    // An event in partition 1 moves its high watermark, and only its.
    let subject = partition_subjects("orders.eu", 1).replace('>', "a2V5");
    let deadline = std::time::Instant::now() + support::WAIT_MAX;
    loop {
        let acked = connection
            .jetstream
            .publish(subject.clone(), "event".into())
            .await
            .expect("publish")
            .await;
        match acked {
            Ok(ack) => {
                assert_eq!(ack.sequence, 1);
                break;
            }
            Err(error) => assert!(std::time::Instant::now() < deadline, "{error}"),
        }
        tokio::task::yield_now().await;
    }
    let mut partitions = Vec::new();
    for partition in 0..3 {
        let stream = stele_nats::read::PartitionStream::new(&connection, "orders.eu", partition);
        partitions.push(stream.bounds().await.expect("bounds").expect("the stream exists"));
    }
    let watermarks: Vec<u64> = partitions
        .iter()
        .map(|partition| partition.high_watermark.0)
        .collect();
    assert_eq!(watermarks, vec![0, 1, 0]);
    assert!(
        partitions.iter().all(|partition| partition.earliest.0 == 0),
        "{partitions:?}"
    );
    assert!(partitions[1].size_bytes > 0);
    assert_eq!(
        partitions
            .iter()
            .map(|partition| partition.keys_count)
            .collect::<Vec<_>>(),
        vec![0, 1, 0],
        "one key has an event"
    );

    seen.delete("orders.eu").await.expect("delete");
    assert!(catalog.list().await.expect("list").is_empty());
    let gone = catalog.options("orders.eu").await.expect_err("deleted");
    assert_eq!(gone.kind(), ErrorKind::TopicNotFound, "{gone}");
    for partition in 0..3 {
        assert!(
            connection
                .jetstream
                .get_stream(stream_name("orders.eu", partition))
                .await
                .is_err(),
            "partition {partition}'s stream outlived the topic"
        );
    }
    let twice = catalog.delete("orders.eu").await.expect_err("deleted");
    assert_eq!(twice.kind(), ErrorKind::TopicNotFound, "{twice}");
    // The name can be used again.
    catalog
        .create("orders.eu", &TopicOptions::default())
        .await
        .expect("create again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_message_round_trips_through_a_partition_stream() {
    // Goal: the headers of `message.rs` survive JetStream as they are, binary
    // values included, and the subject lands in the partition's stream.
    use stele_engine::event::{Event, Sequence};
    use stele_nats::message::{StoredMessage, decode, headers, subject};

    let (_cluster, connection, _serial) = cluster().await;
    let catalog = TopicCatalog::open(&connection).await.expect("open the catalog");
    catalog
        .create("orders", &TopicOptions::default().partitions(2))
        .await
        .expect("create");
    let message = StoredMessage {
        key: vec![0, b'k', 255],
        sequence: Sequence(0),
        timestamp_ms: 1_764_000_000_000,
        previous: None,
        producer: None,
        event: Event {
            event_type: "created".to_string(),
            payload: vec![1, 2, 3, 0],
            headers: vec![("trace id".to_string(), vec![b'\r', b'\n', 0])],
            idempotency_id: Some(b"id-1".to_vec()),
        },
    };
    let deadline = std::time::Instant::now() + support::WAIT_MAX;
    let ack = loop {
        let acked = connection
            .jetstream
            .publish_with_headers(
                subject("orders", 1, &message.key),
                headers(&message),
                message.event.payload.clone().into(),
            )
            .await
            .expect("publish")
            .await;
        match acked {
            Ok(ack) => break ack,
            Err(error) => assert!(std::time::Instant::now() < deadline, "{error}"),
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(ack.stream, stream_name("orders", 1));
    let stream = connection
        .jetstream
        .get_stream(stream_name("orders", 1))
        .await
        .expect("stream");
    let stored = stream.get_raw_message(ack.sequence).await.expect("read back");
    let decoded = decode(&stored.headers, &stored.payload).expect("a Stele event");
    assert_eq!(decoded, message);
    assert_eq!(ack.sequence, 1, "offset 0 of the partition is stream sequence 1");
}
