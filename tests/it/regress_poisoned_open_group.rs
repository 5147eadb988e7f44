//! Regression: appends hung forever after the partition was poisoned outside a
//! group flush.
//!
//! Failure: with `Durability::Always`, a failed fsync while sealing a full
//! segment (in `publish`), writing a checkpoint or syncing unsynced bytes poisons
//! the partition without failing the appends that had already joined the open
//! group. The worker flushed the open group only when not poisoned, so those
//! appends were never completed and their callers blocked forever (also through
//! `close`). Found by the simulated power-cut loop in `faults.rs`.
//! Crash point: `SyncError` on a segment's `sync_data` during `Segment::seal`,
//! while other threads keep appending.
//! Fix: `Partition::run_worker` fails a non-empty open group with `Poisoned`
//! when the partition is poisoned.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use stele::io::{Fault, FaultyStorage};
use stele::{ErrorKind, Event, ExpectedSequence, Log, LogOptions, TopicOptions};

#[test]
fn appends_waiting_in_the_open_group_fail_when_a_seal_poisons_the_partition() {
    // Goal: every append returns (success, Io or Poisoned) after a failed fsync
    // at any point, including a segment seal. Method: for each number of syncs to
    // let pass, four threads append to 4 KiB segments with a SyncError armed;
    // the main thread waits for all of them with a generous deadline, which only
    // a hang can exceed.
    for skip in 0..24 {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FaultyStorage::new();
        let log = Log::open(
            dir.path(),
            LogOptions::default().storage(Arc::new(storage.clone())),
        )
        .expect("open");
        let topic = log
            .create_topic(
                "t",
                TopicOptions::default().partitions(1).segment_size_bytes_max(4096),
            )
            .expect("create");
        storage.arm(Fault::SyncError, ".log", skip);
        let (done, finished) = mpsc::channel();
        for thread in 0..4 {
            let topic = topic.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for call in 0..40 {
                    let payload = format!("{thread}-{call}-{}", "p".repeat(200));
                    let result = topic.append(
                        format!("k{thread}"),
                        ExpectedSequence::Any,
                        vec![Event::new("e", payload.into_bytes())],
                    );
                    if let Err(error) = result {
                        assert!(
                            matches!(error.kind(), ErrorKind::Io | ErrorKind::Poisoned),
                            "{error}"
                        );
                    }
                }
                let _ = done.send(());
            });
        }
        drop(done);
        for _ in 0..4 {
            finished
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("skip {skip}: an append never returned"));
        }
        assert_eq!(storage.injected_count(), 1, "skip {skip}");
        drop(topic);
        log.close().expect("close");
    }
}
