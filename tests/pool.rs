//! The partition worker pool: a log's threads do not grow with its partitions.
//! One test in its own binary, so that the engine threads in
//! `/proc/self/task` are this test's log's alone.

use stele::{Durability, ExpectedSequence, Log, LogOptions, PartitionId, TopicOptions, partition_for_key};

/// The names of the process's threads, for failure messages.
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The engine's threads: every thread it starts is named `stele-...` (the
/// pool's `stele-w<N>`, the acknowledgement thread `stele-ack`; a thread per
/// partition was `stele-p<N>`). The test's own threads are not counted, so a
/// joined one still being reaped by the kernel cannot skew the count.
fn threads() -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with("stele-"))
        .count()
}

/// For each partition of a topic of `partitions`, a key that lands there.
fn keys_per_partition(partitions: u32) -> Vec<String> {
    let mut keys = vec![None; partitions as usize];
    let mut candidate = 0u64;
    while keys.iter().any(Option::is_none) {
        let key = format!("key-{candidate}");
        let slot = &mut keys[partition_for_key(key.as_bytes(), partitions).0 as usize];
        slot.get_or_insert(key);
        candidate += 1;
    }
    keys.into_iter().flatten().collect()
}

/// Every partition of `topic` holds `events` events.
fn assert_every_partition_holds(topic: &stele::Topic, partitions: u32, events: u64) {
    for partition in 0..partitions {
        let high_watermark = topic
            .high_watermark(PartitionId(partition))
            .expect("high watermark");
        assert_eq!(high_watermark.0, events, "{} partition {partition}", topic.name());
    }
}

#[test]
fn hundreds_of_partitions_share_the_pool_threads_and_all_of_them_commit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let log = Log::open(dir.path().join("data"), LogOptions::default().worker_threads(3)).expect("open");
    assert_eq!(log.worker_threads(), 3);
    let with_pool = threads();
    assert_eq!(
        with_pool,
        4,
        "three pool threads and the acknowledgement thread: {:?}",
        thread_names()
    );
    let (topics, partitions) = (20, 10);
    let keys = keys_per_partition(partitions);
    let mut opened = Vec::new();
    for index in 0..topics {
        // Both kinds of background work: group commit (always) and inline
        // writes with a sync timer (interval).
        let durability = if index % 2 == 0 {
            Durability::Always
        } else {
            Durability::Interval { interval_ms: 5 }
        };
        let topic = log
            .create_topic(
                &format!("t{index}"),
                TopicOptions::default()
                    .partitions(partitions)
                    .durability(durability),
            )
            .expect("create topic");
        opened.push(topic);
    }
    // Recovery opens partitions on scoped threads that are gone by now; no
    // partition has a thread of its own.
    assert_eq!(
        threads(),
        with_pool,
        "creating 200 partitions started no thread: {:?}",
        thread_names()
    );
    // Concurrent appenders to every partition, three rounds each.
    std::thread::scope(|scope| {
        for topic in &opened {
            let keys = &keys;
            scope.spawn(move || {
                for round in 0..3u64 {
                    for (partition, key) in keys.iter().enumerate() {
                        let expected = match round {
                            0 => ExpectedSequence::NoEvents,
                            _ => ExpectedSequence::Exact(stele::Sequence(round - 1)),
                        };
                        let ack = topic
                            .append(
                                key.as_bytes(),
                                expected,
                                vec![stele::Event::new("e", format!("{round}").into_bytes())],
                            )
                            .expect("append");
                        assert_eq!(ack.partition, PartitionId(partition as u32));
                        assert_eq!(ack.first_sequence.0, round);
                    }
                }
            });
        }
    });
    for topic in &opened {
        assert_every_partition_holds(topic, partitions, 3);
    }
    assert_eq!(
        threads(),
        with_pool,
        "appending started no thread: {:?}",
        thread_names()
    );
    drop(opened);
    log.close().expect("close");
    // Reopened, every acknowledged event is there.
    let log = Log::open(dir.path().join("data"), LogOptions::default().worker_threads(3)).expect("reopen");
    for index in 0..topics {
        assert_every_partition_holds(&log.topic(&format!("t{index}")).expect("topic"), partitions, 3);
    }
    log.close().expect("close");
}
