//! Reopening a 10-million-event log (4 partitions, 1 million keys): `open/clean`
//! after `Log::close`, and `open/crash` from a copy of the data directory taken
//! while the log was open (after the last acknowledged append, before close).
//!
//! Only `Log::open` is timed; close (which writes a checkpoint) is not. The
//! clock is a `ManualClock` set a given time after the last write, because
//! recovery replays the log written within the dedup window (2 minutes by
//! default): `since_write=1s` is a restart right after the crash or close,
//! `since_write=1h` a restart long after. Segment files are read from a warm
//! page cache.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use stele::{Log, LogOptions, ManualClock};

const SINCE_WRITE: [(&str, i64); 2] = [("1s", 1_000), ("1h", 3_600_000)];

fn options(written_ms: i64, since_ms: i64) -> LogOptions {
    LogOptions::default().clock(Arc::new(ManualClock::new(written_ms + since_ms)))
}

/// Opens `dir`, returns the time it took, checks it once and closes it.
fn timed_open(dir: &Path, options: LogOptions, events: u64, check: bool) -> Duration {
    let started = Instant::now();
    let log = Log::open(dir, options).expect("open log");
    let elapsed = started.elapsed();
    let topic = log.topic(common::BIG_TOPIC).expect("big topic");
    if check {
        assert_eq!(common::total_events(&topic), events, "every event recovered");
        let reports = topic.recovery_reports();
        assert!(
            reports.iter().all(|report| report.tail.bytes_cut == 0),
            "no torn tail in the image: {reports:?}"
        );
        let replayed: u64 = reports.iter().map(|report| report.records_replayed).sum();
        eprintln!(
            "open of {}: {elapsed:.2?}, {replayed} records replayed",
            dir.display()
        );
    }
    drop(topic);
    log.close().expect("close");
    elapsed
}

fn open(c: &mut Criterion) {
    let data = common::big_data_set();
    let events = data.events();
    let label = format!(
        "events={}M,keys={}k,record=100B,fsync=none",
        events as f64 / 1e6,
        data.keys / 1000
    );

    let mut group = c.benchmark_group("open/clean");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(events));
    for (since, since_ms) in SINCE_WRITE {
        timed_open(&data.clean, options(data.written_ms, since_ms), events, true);
        group.bench_function(format!("{label},since_write={since}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| timed_open(&data.clean, options(data.written_ms, since_ms), events, false))
                    .sum()
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("open/crash");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.throughput(Throughput::Elements(events));
    let scratch = common::scratch_dir("open-crash");
    let work = scratch.path().join("image");
    let fresh_image = || {
        let _ = std::fs::remove_dir_all(&work);
        common::copy_dir(&data.crash, &work, true);
    };
    for (since, since_ms) in SINCE_WRITE {
        fresh_image();
        timed_open(&work, options(data.written_ms, since_ms), events, true);
        group.bench_function(format!("{label},since_write={since}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        fresh_image();
                        timed_open(&work, options(data.written_ms, since_ms), events, false)
                    })
                    .sum()
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = open
}
criterion_main!(benches);
