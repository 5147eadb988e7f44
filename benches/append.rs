//! Append throughput: `append/batch`, `append/concurrent_batch`,
//! `append/concurrent_single`. Events carry a 100-byte payload; every topic has
//! one partition. Each bench gets a fresh log; the high watermark is checked once
//! after the run, outside the timing.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{BenchDir, key};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use stele::{AppendRequest, Durability, ExpectedSequence, Log, LogOptions, PartitionId, Topic, TopicOptions};

const BATCH: usize = 100;
const KEYS: u64 = 1_000;

struct Fixture {
    log: Log,
    topic: Topic,
    _dir: BenchDir,
}

fn fixture(name: &str, durability: Durability) -> Fixture {
    let dir = common::scratch_dir(name);
    let log = Log::open(dir.path(), LogOptions::default()).expect("open log");
    let topic = log
        .create_topic("t", TopicOptions::default().partitions(1).durability(durability))
        .expect("create topic");
    Fixture {
        log,
        topic,
        _dir: dir,
    }
}

impl Fixture {
    /// Checks, once and outside the timing, that every acknowledged event is in
    /// the log, then closes it.
    fn check_and_close(self, appended: u64) {
        let high_watermark = self.topic.high_watermark(PartitionId(0)).expect("hw");
        assert_eq!(
            high_watermark.0, appended,
            "every acknowledged event is in the log"
        );
        drop(self.topic);
        self.log.close().expect("close");
    }
}

/// One writer, batches of 100 events for one key per call, `Durability::None`.
fn append_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("append/batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    let fixture = fixture("append-batch", Durability::None);
    let mut appended = 0u64;
    let mut seed = 0u64;
    let mut rng = common::Rng::new(1);
    group.bench_function("record=100B,batch=100,writers=1,fsync=none", |b| {
        b.iter_batched(
            || {
                seed += BATCH as u64;
                (key(rng.below(KEYS)), common::events(BATCH, seed))
            },
            |(key, events)| {
                fixture
                    .topic
                    .append(key, ExpectedSequence::Any, events)
                    .expect("append");
                appended += BATCH as u64;
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
    fixture.check_and_close(appended);
}

/// `writers` threads each append `iters` batches of `batch` events, with up to
/// `in_flight` appends outstanding per writer (1: blocking `Topic::append`;
/// more: `Topic::submit` with a window). Returns the wall time from the moment
/// every writer is ready (events pre-built) to the last acknowledgement.
fn run_writers(topic: &Topic, writers: usize, in_flight: usize, batch: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(writers + 1));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let topic = topic.clone();
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    let mut rng = common::Rng::new(writer as u64 + 7);
                    let requests: Vec<AppendRequest> = (0..iters)
                        .map(|index| AppendRequest::new(key(rng.below(KEYS)), common::events(batch, index)))
                        .collect();
                    barrier.wait();
                    if in_flight == 1 {
                        for request in requests {
                            topic.append_request(request).expect("append");
                        }
                    } else {
                        let (done_tx, done_rx) = mpsc::channel();
                        let mut outstanding = 0usize;
                        for request in requests {
                            if outstanding == in_flight {
                                let result: stele::Result<stele::AppendAck> =
                                    done_rx.recv().expect("completion");
                                result.expect("append");
                                outstanding -= 1;
                            }
                            let done_tx = done_tx.clone();
                            topic.submit(request, move |result| {
                                let _ = done_tx.send(result);
                            });
                            outstanding += 1;
                        }
                        for _ in 0..outstanding {
                            done_rx.recv().expect("completion").expect("append");
                        }
                    }
                })
            })
            .collect();
        barrier.wait();
        let started = Instant::now();
        for handle in handles {
            handle.join().expect("writer");
        }
        started.elapsed()
    })
}

/// Batches of 100 events, `Durability::Always`, 4 writers: blocking appends
/// (one batch in flight per writer) and submit-based windows of 8 batches.
fn append_concurrent_batch(c: &mut Criterion) {
    let writers = 4;
    let mut group = c.benchmark_group("append/concurrent_batch");
    group.throughput(Throughput::Elements((writers * BATCH) as u64));
    for in_flight in [1usize, 8] {
        let fixture = fixture("append-concurrent-batch", Durability::Always);
        let mut appended = 0u64;
        let id = format!("record=100B,batch=100,writers={writers},in_flight={in_flight},fsync=always");
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                appended += iters * (writers * BATCH) as u64;
                run_writers(&fixture.topic, writers, in_flight, BATCH, iters)
            });
        });
        fixture.check_and_close(appended);
    }
    group.finish();
}

/// Single-event appends from 256 concurrent writers, `Durability::Always`:
/// `threads=256x1` is 256 threads with one blocking append each, `submit=4x64`
/// is 4 threads keeping 64 `Topic::submit` appends in flight each. One
/// iteration is one event per writer (256 events).
fn append_concurrent_single(c: &mut Criterion) {
    let writers_total = 256usize;
    let mut group = c.benchmark_group("append/concurrent_single");
    group.throughput(Throughput::Elements(writers_total as u64));
    group.sample_size(10);
    for (threads, in_flight) in [(256usize, 1usize), (4, 64)] {
        let fixture = fixture("append-concurrent-single", Durability::Always);
        let mut appended = 0u64;
        let mode = if in_flight == 1 { "threads" } else { "submit" };
        let id = format!("record=100B,writers=256,{mode}={threads}x{in_flight},fsync=always");
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                // Each thread appends its share of `iters` events per writer.
                let per_thread = iters * (writers_total / threads) as u64;
                appended += per_thread * threads as u64;
                run_writers(&fixture.topic, threads, in_flight, 1, per_thread)
            });
        });
        fixture.check_and_close(appended);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = append_batch, append_concurrent_batch, append_concurrent_single
}
criterion_main!(benches);
