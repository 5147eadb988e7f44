//! Memory per key (not a criterion bench): appends one event to each of
//! 1,000,000 distinct keys (10,000 in quick mode) in a topic of 4 partitions
//! with `Durability::None`, then reports
//! - `Topic::keys_memory_bytes() / keys`: the engine's own count of its key
//!   tables (table capacity times entry size, no allocator overhead), and
//! - the growth of the process's resident set (`/proc/self/statm`) from just
//!   after the topic is created to just after the last append, divided by keys:
//!   an upper bound that also holds anything else the appends left resident
//!   (allocator caches, the worker threads' stacks, segment index entries).

mod common;

use stele::{Durability, Event, ExpectedSequence, Log, LogOptions, TopicOptions};

fn main() {
    let keys = common::sized(1_000_000u64, 10_000);
    let dir = common::scratch_dir("memory");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open log");
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default().partitions(4).durability(Durability::None),
        )
        .expect("create topic");
    let event = Event::new(common::EVENT_TYPE, common::payload(0));
    let rss_before = common::rss_bytes();
    for index in 0..keys {
        topic
            .append(
                common::key(index),
                ExpectedSequence::NoEvents,
                vec![event.clone()],
            )
            .expect("append");
    }
    let rss_after = common::rss_bytes();
    assert_eq!(common::total_events(&topic), keys, "every key appended");
    let infos = topic.partition_infos();
    let keys_counted: usize = infos.iter().map(|info| info.keys_count).sum();
    assert_eq!(keys_counted as u64, keys, "one key state per key");
    let table_bytes = topic.keys_memory_bytes();
    println!(
        "memory/keys/keys={keys},events_per_key=1,partitions=4,fsync=none: \
         keys_memory_bytes={table_bytes} ({:.1} bytes/key); \
         rss {} -> {} bytes, +{} ({:.1} bytes/key)",
        table_bytes as f64 / keys as f64,
        rss_before,
        rss_after,
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) as f64 / keys as f64
    );
    drop(topic);
    log.close().expect("close");
}
