//! Fuzz target bodies that reach inside the engine (the journal and dedup run
//! readers), re-exported by `stele-proof` with the others; shared by the cargo-fuzz crate (`fuzz/`) and the corpus
//! replay test (`tests/fuzz_corpus.rs`), so that both run the same code.
//!
//! Every function takes arbitrary bytes and must never panic: a panic is a bug,
//! either in the engine (bad input reached an `assert!` or an index out of
//! bounds) or a broken property asserted here (roundtrip stability, recovery
//! idempotence, the model of acknowledged appends). Per-input work is kept small
//! (tiny topics, small segments) so that fuzzing gets many executions a second.
//!
//! Not part of the embedding API: hidden from the docs and free to change.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ErrorKind;
use crate::event::{Offset, PartitionId};
use crate::io::{StdStorage, Storage};

/// A scratch directory removed on drop; under /dev/shm when there is one.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new empty directory, or `None` when the file system refuses one (an
    /// environment problem, not a finding).
    pub fn new() -> Option<Scratch> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "stele-fuzz-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).ok()?;
        Some(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Storage errors that fuzzed bytes may legitimately cause.
fn is_bad_bytes(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Corruption | ErrorKind::Inconsistent)
}

// ---------------------------------------------------------------------------
// Files opened through the engine.
// ---------------------------------------------------------------------------

/// A cursor or producer journal file: open returns Ok or a Corruption /
/// Inconsistent error; after Ok a reopen sees the same state and no torn tail,
/// and a write after the recovered tail survives another reopen.
///
/// `data[0]`: bit 0 picks the producer registry (else the cursor store), bit 1
/// prefixes a valid file header (so that the rest exercises the frames);
/// `data[1]`: the cursor store's partition count, 1..=4.
pub fn journal_records(data: &[u8]) {
    let (Some(&mode), Some(&partitions)) = (data.first(), data.get(1)) else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let producers = mode & 1 != 0;
    let magic: &[u8; 8] = if producers {
        crate::producer::PRODUCER_MAGIC
    } else {
        crate::cursor::CURSOR_MAGIC
    };
    let mut bytes = Vec::new();
    if mode & 2 != 0 {
        bytes.extend_from_slice(&crate::journal::encode_header(magic));
    }
    bytes.extend_from_slice(&data[2..]);
    let path = scratch.path().join("journal");
    if std::fs::write(&path, &bytes).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(StdStorage);
    if producers {
        let registry = match crate::producer::ProducerRegistry::open(Arc::clone(&storage), path.clone()) {
            Ok(registry) => registry,
            Err(error) => {
                assert!(is_bad_bytes(error.kind()), "producer journal open: {error}");
                return;
            }
        };
        let listed = registry.list();
        let opened = registry.open_producer("fuzz-producer");
        drop(registry);
        let again = match crate::producer::ProducerRegistry::open(Arc::clone(&storage), path) {
            Ok(again) => again,
            Err(error) => panic!("a producer journal that opened once fails to reopen: {error}"),
        };
        assert_eq!(again.torn_bytes_count(), 0, "torn tail left after the first open");
        let mut relisted = again.list();
        if let Ok((id, epoch)) = opened {
            let position = relisted.iter().position(|(name, _, _)| name == "fuzz-producer");
            let Some(position) = position else {
                panic!("an opened producer is gone after reopen");
            };
            let (_, found_id, found_epoch) = relisted.remove(position);
            assert_eq!((found_id, found_epoch), (id, epoch), "reopened producer");
            let mut expected = listed;
            expected.retain(|(name, _, _)| name != "fuzz-producer");
            assert_eq!(relisted, expected, "producer journal replay is not stable");
        } else {
            assert_eq!(relisted, listed, "producer journal replay is not stable");
        }
    } else {
        let partitions = u32::from(partitions % 4) + 1;
        let open = |path: PathBuf| crate::cursor::CursorStore::open(Arc::clone(&storage), path, partitions);
        let store = match open(path.clone()) {
            Ok(store) => store,
            Err(error) => {
                assert!(is_bad_bytes(error.kind()), "cursor journal open: {error}");
                return;
            }
        };
        let listed = store.list();
        let committed = store.commit("fuzz-cursor", &[(PartitionId(0), Offset(7))], true, &|_| {
            Offset(100)
        });
        drop(store);
        let again = match open(path) {
            Ok(again) => again,
            Err(error) => panic!("a cursor journal that opened once fails to reopen: {error}"),
        };
        assert_eq!(again.torn_bytes_count(), 0, "torn tail left after the first open");
        let mut relisted = again.list();
        let mut expected = listed;
        if committed.is_ok() {
            match again.get("fuzz-cursor") {
                Ok(offsets) => assert_eq!(offsets.first().copied().flatten(), Some(Offset(7))),
                Err(error) => panic!("a committed cursor is gone after reopen: {error}"),
            }
            relisted.retain(|(name, _)| name != "fuzz-cursor");
            expected.retain(|(name, _)| name != "fuzz-cursor");
        }
        assert_eq!(relisted, expected, "cursor journal replay is not stable");
    }
}

/// An arbitrary file as a dedup run: open never fails on bad bytes (it drops the
/// run and reports it), lookups never panic, and a second open drops nothing.
///
/// `data[0]` picks the run's name (its offset start); the rest is the file.
pub fn dedup_run(data: &[u8]) {
    let Some((&start, file)) = data.split_first() else {
        return;
    };
    let Some(scratch) = Scratch::new() else {
        return;
    };
    let directory = scratch.path().join("dedup");
    if std::fs::create_dir_all(&directory).is_err() {
        return;
    }
    let name = format!("{:020}-{:020}.run", 0, u64::from(start % 4) * 8);
    if std::fs::write(directory.join(name), file).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(StdStorage);
    let window_ms = 60_000;
    let (index, report) =
        match crate::dedup::DedupIndex::open(Arc::clone(&storage), directory.clone(), window_ms) {
            Ok(opened) => opened,
            Err(error) => panic!("dedup open failed on bad bytes instead of dropping the run: {error}"),
        };
    assert!(
        report.runs_dropped <= 1,
        "dropped {} runs of 1",
        report.runs_dropped
    );
    let mut out = Vec::new();
    for chunk in file.chunks_exact(8).take(8) {
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(chunk);
        out.clear();
        let fingerprint = u64::from_le_bytes(fingerprint);
        let probe = crate::dedup::Fingerprint {
            keyed: fingerprint,
            legacy: fingerprint,
        };
        if let Err(error) = index.candidates(probe, 1_000, &mut out) {
            assert!(is_bad_bytes(error.kind()), "dedup lookup: {error}");
        }
    }
    let persisted = index.persisted_end();
    drop(index);
    let (again, report) = match crate::dedup::DedupIndex::open(storage, directory, window_ms) {
        Ok(opened) => opened,
        Err(error) => panic!("dedup reopen: {error}"),
    };
    assert_eq!(report.runs_dropped, 0, "a second open dropped runs again");
    assert_eq!(
        again.persisted_end(),
        persisted,
        "persisted end moved between opens"
    );
}
