//! Read paths: `read/scan` (sequential scan of one partition, CRC checked, with
//! the zero-copy `Topic::scan` and the copying `Topic::read`) and `read/key`
//! (one key's 10 events in a log of 10 million events over 1 million keys).
//! Data is written before the timing and read from a warm page cache.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stele::{Direction, Durability, ExpectedSequence, Log, LogOptions, Offset, PartitionId, TopicOptions};

const PAGE: usize = 10_000;

fn read_scan(c: &mut Criterion) {
    let events = common::sized(1_000_000u64, 10_000);
    let dir = common::scratch_dir("read-scan");
    let log = Log::open(dir.path(), LogOptions::default()).expect("open log");
    let topic = log
        .create_topic(
            "t",
            TopicOptions::default().partitions(1).durability(Durability::None),
        )
        .expect("create topic");
    let mut rng = common::Rng::new(3);
    for batch in 0..events / 100 {
        topic
            .append(
                common::key(rng.below(1_000)),
                ExpectedSequence::Any,
                common::events(100, batch * 100),
            )
            .expect("append");
    }
    let partition = PartitionId(0);
    let high_watermark = topic.high_watermark(partition).expect("hw");
    assert_eq!(high_watermark.0, events);

    let scan_all = || {
        let mut bytes = 0usize;
        let end = topic
            .scan(partition, Offset(0), usize::MAX, u64::MAX, |view| {
                bytes += view.payload.len();
                true
            })
            .expect("scan");
        (end, bytes)
    };
    // Checked once outside the timing: the scan visits every event.
    assert_eq!(
        scan_all(),
        (high_watermark, events as usize * common::PAYLOAD_SIZE)
    );

    let read_all = || {
        let mut from = Offset(0);
        let mut count = 0usize;
        while from < high_watermark {
            let page = topic.read(partition, from, PAGE, u64::MAX).expect("read");
            count += page.len();
            from = page.last().expect("a non-empty page").offset.next();
            black_box(page);
        }
        count
    };
    assert_eq!(read_all() as u64, events);

    let mut group = c.benchmark_group("read/scan");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    let label = if events >= 1_000_000 {
        format!("{}M", events / 1_000_000)
    } else {
        events.to_string()
    };
    group.bench_function(format!("api=scan,events={label},record=100B,fsync=none"), |b| {
        b.iter(|| black_box(scan_all()))
    });
    group.bench_function(
        format!("api=read,page={PAGE},events={label},record=100B,fsync=none"),
        |b| b.iter(|| black_box(read_all())),
    );
    group.finish();
    drop(topic);
    log.close().expect("close");
}

fn read_key(c: &mut Criterion) {
    let data = common::big_data_set();
    let log = Log::open(&data.clean, LogOptions::default()).expect("open big log");
    let topic = log.topic(common::BIG_TOPIC).expect("big topic");
    assert_eq!(common::total_events(&topic), data.events());
    common::check_key(&topic, 0, data.per_key);
    common::check_key(&topic, data.keys - 1, data.per_key);

    // Latency distribution of single lookups, outside criterion.
    let mut rng = common::Rng::new(11);
    let lookups = 10_000;
    let mut latencies: Vec<Duration> = Vec::with_capacity(lookups);
    for _ in 0..lookups {
        let key = common::key(rng.below(data.keys));
        let started = Instant::now();
        let history = topic
            .read_key(&key, None, Direction::Forwards, 100)
            .expect("read key");
        latencies.push(started.elapsed());
        assert_eq!(history.len() as u64, data.per_key);
    }
    latencies.sort();
    let at = |quantile: f64| latencies[((lookups as f64 * quantile) as usize).min(lookups - 1)];
    eprintln!(
        "read/key latency over {lookups} random lookups (events={}, keys={}): p50={:?} p90={:?} p99={:?} max={:?}",
        data.events(),
        data.keys,
        at(0.50),
        at(0.90),
        at(0.99),
        latencies[lookups - 1]
    );

    let mut group = c.benchmark_group("read/key");
    group.throughput(Throughput::Elements(data.per_key));
    let id = format!(
        "events_per_key={},keys={},events={},record=100B,fsync=none",
        data.per_key,
        data.keys,
        data.events()
    );
    group.bench_function(id, |b| {
        b.iter(|| {
            let key = common::key(rng.below(data.keys));
            black_box(
                topic
                    .read_key(&key, None, Direction::Forwards, 100)
                    .expect("read key"),
            )
        });
    });
    group.finish();
    drop(topic);
    log.close().expect("close");
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = read_scan, read_key
}
criterion_main!(benches);
