//! Crash drills against the real `stele serve` binary (Linux only).
//!
//! **Kill drill.** Goal: whatever the server acknowledged over gRPC survives
//! `kill -9` of the server process, exactly once, and every effective-once
//! mechanism (idempotency ids, producer stamps and epochs, compare-and-set,
//! cursors) still holds after recovery. Method: start `stele serve` on port 0
//! over a temporary directory and drive it with concurrent writers through
//! `stele::client`: idempotent `Producer`s (stamped, pipelined, retried across
//! the restart), raw `Client::append` calls with compare-and-set on a shared
//! set of keys (so that writers race) and an idempotency id per event, and a
//! reader that reads partitions by offset and commits a cursor. Every
//! acknowledgement is recorded. After a random number of acknowledgements
//! (seeded; not a timer) the server gets SIGKILL; `stele verify` checks the
//! directory offline; the server restarts on the same directory (a new port),
//! the writers finish what was in flight (an append whose fate is unknown is
//! retried with the same ids), and then, with nothing in flight, the drill
//! checks through the new server: every acknowledged event present exactly
//! once at its partition, offset, key and sequence (read by offset and by key);
//! offsets dense; every key's sequences dense and in offset order; nothing that
//! was refused (a lost compare-and-set, a fenced producer) stored; everything a
//! reader saw before the kill still there; the cursor never behind its last
//! acknowledged commit nor ahead of the high watermark; a retry of every
//! acknowledged append answered as a duplicate with the original positions.
//! After each restart one producer is opened again: it must get the same id and
//! an epoch above every epoch issued before, and the old epoch must be fenced
//! (through the old `Producer` and through a raw stamped append).
//! `STELE_DRILL_KILLS` sets the number of kills (default 20); the seed comes
//! from `STELE_SEED` or the clock and is printed.
//!
//! **Disk-full drill.** Goal: a full disk fails appends cleanly with
//! RESOURCE_EXHAUSTED (`DiskFull`), loses nothing acknowledged, keeps reads and
//! duplicate answers working, and writes resume as soon as space returns.
//! Method: mount an 8 MiB tmpfs (root only), run the server binary on it, fill
//! the rest with a filler file, check, kill -9 and restart on the full disk
//! (recovery needs no space), check, remove the filler, check, then kill -9
//! and check the recovered directory. Without the mount (or with
//! `STELE_DRILL_DISK_FULL=faulty`) the same scenario runs the real server code
//! in-process over `stele::io::FaultyStorage::set_disk_full`. The output names
//! the variant that ran.

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("drill: skipped (Linux only)");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::time::{Duration, Instant};
    use stele::Sequence;

    use stele::client::{Client, ClientError, GrpcCode, Producer, RetryPolicy};
    use stele::{
        AppendAck, AppendRequest, Direction, ErrorKind, Event, ExpectedSequence, Offset, PartitionId,
        ProducerStamp, TopicOptions, partition_for_key,
    };
    use tokio::sync::watch;
    use tokio::task::JoinSet;

    const BIN: &str = env!("CARGO_BIN_EXE_stele");
    const TOPIC: &str = "drill";
    const CURSOR: &str = "drill-cursor";
    const PARTITIONS: u32 = 4;
    const PRODUCERS: usize = 2;
    const PRODUCER_KEYS: usize = 4;
    /// Sends each producer keeps in flight.
    const PRODUCER_WINDOW: usize = 8;
    const CAS_WORKERS: usize = 3;
    /// Keys shared by every compare-and-set writer, so that they race.
    const CAS_KEYS: usize = 6;
    /// Producers, compare-and-set writers, and the reader.
    const WORKERS: usize = PRODUCERS + CAS_WORKERS + 1;
    /// Kills after this many acknowledgements, plus a random number below the spread.
    const KILL_AFTER_MIN: u64 = 20;
    const KILL_AFTER_SPREAD: u64 = 280;
    /// Small segments: rolls are frequent, so kills land around them too.
    const KILL_SEGMENT_SIZE: u64 = 16 * 1024;
    /// Idempotency ids must outlive the longest soak.
    const DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
    /// Failure bounds, not synchronisation delays.
    const START_TIMEOUT: Duration = Duration::from_secs(60);
    const PHASE_TIMEOUT: Duration = Duration::from_secs(120);
    /// What the server logs when open removes a segment past a roll gap.
    const ROLL_REPAIRED: &str = "removing a segment created by a roll";
    /// Events a check asks for per read call (the server may send fewer).
    const PAGE_EVENTS: u32 = 10_000;
    /// Appends a retry check sends per batch call.
    const RETRY_BATCH: usize = 200;
    /// Older acknowledged appends a check retries besides the newest (a seeded
    /// sample once there are more); the check after the last kill retries all.
    const RETRY_SAMPLE: usize = 2000;

    type Res<T> = Result<T, String>;

    macro_rules! ensure {
        ($condition:expr, $($message:tt)+) => {
            if !$condition {
                return Err(format!($($message)+));
            }
        };
    }

    pub fn main() {
        let seed = std::env::var("STELE_SEED")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_nanos() as u64)
                    .unwrap_or(1)
            });
        let kills: u64 = std::env::var("STELE_DRILL_KILLS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(20);
        println!("drill: seed {seed} (repeat with STELE_SEED={seed}), {kills} kills");
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                println!("drill: cannot start a runtime: {error}");
                println!("drill: 0 passed, 1 failed");
                std::process::exit(1);
            }
        };
        let mut passed = 0u64;
        let mut failed = 0u64;
        let started = Instant::now();
        match kill_drill(&runtime, seed, kills) {
            Ok(summary) => {
                passed += 1;
                println!(
                    "drill: kill drill ok: {summary} ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(message) => {
                failed += 1;
                println!("drill: kill drill FAILED with seed {seed}: {message}");
            }
        }
        let started = Instant::now();
        match disk_full_drill(&runtime) {
            Ok(variant) => {
                passed += 1;
                println!(
                    "drill: disk-full drill ok ({variant}) ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(message) => {
                failed += 1;
                println!("drill: disk-full drill FAILED with seed {seed}: {message}");
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        println!("drill: {passed} passed, {failed} failed");
        if failed > 0 {
            std::process::exit(1);
        }
    }

    // -----------------------------------------------------------------------
    // Randomness, the server process, offline verification

    /// xorshift64: small, seeded, good enough to pick keys and kill points.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % bound
        }
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `stele` with none of the caller's `STELE_*` or `RUST_LOG` settings.
    fn command(args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args);
        for (name, _) in std::env::vars() {
            if name.starts_with("STELE_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
        command
    }

    /// A running `stele serve`; killed on drop.
    struct ServerProcess {
        child: Child,
        url: String,
        /// Every stderr line so far, for failure messages.
        stderr: Arc<Mutex<Vec<String>>>,
    }

    impl ServerProcess {
        /// Starts the server on a free port and waits for its address line.
        fn start(data_dir: &Path) -> Res<ServerProcess> {
            let data = data_dir.to_str().ok_or("the data directory is not UTF-8")?;
            let mut child = command(&[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data,
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| format!("spawn stele serve: {error}"))?;
            let pipe = child.stderr.take().ok_or("no stderr pipe")?;
            let stderr = Arc::new(Mutex::new(Vec::new()));
            let (sender, receiver) = std::sync::mpsc::channel();
            let kept = Arc::clone(&stderr);
            // Drains stderr for the server's whole life, so that it never blocks.
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lock(&kept).push(line.clone());
                    let _ = sender.send(line);
                }
            });
            let mut server = ServerProcess {
                child,
                url: String::new(),
                stderr,
            };
            loop {
                match receiver.recv_timeout(START_TIMEOUT) {
                    Ok(line) => {
                        if let Some(rest) = line.split("listening on ").nth(1) {
                            let address = rest.split(',').next().unwrap_or_default();
                            server.url = format!("http://{address}");
                            return Ok(server);
                        }
                    }
                    Err(error) => {
                        return Err(format!(
                            "the server did not announce its address ({error}); stderr: {}",
                            server.stderr_text()
                        ));
                    }
                }
            }
        }

        /// How many stderr lines so far contain `needle`.
        fn stderr_count(&self, needle: &str) -> usize {
            lock(&self.stderr)
                .iter()
                .filter(|line| line.contains(needle))
                .count()
        }

        fn stderr_text(&self) -> String {
            lock(&self.stderr).join(" | ")
        }

        /// SIGKILL, then reap; the server must not have died before.
        fn kill(&mut self) -> Res<()> {
            self.child
                .kill()
                .map_err(|error| format!("kill the server: {error}"))?;
            let status = self
                .child
                .wait()
                .map_err(|error| format!("wait for the server: {error}"))?;
            ensure!(
                status.signal() == Some(libc::SIGKILL),
                "the server ended by itself ({status}) before the kill; stderr: {}",
                self.stderr_text()
            );
            Ok(())
        }
    }

    impl Drop for ServerProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `stele verify` on a directory no server holds: it must find no problem.
    fn verify_offline(dir: &Path) -> Res<()> {
        let data = dir.to_str().ok_or("the data directory is not UTF-8")?;
        let output = command(&["verify", data])
            .output()
            .map_err(|error| format!("run stele verify: {error}"))?;
        ensure!(
            output.status.success(),
            "stele verify {data} exited with {}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    // -----------------------------------------------------------------------
    // What the server acknowledged, and the checks against it

    /// One acknowledged append: its events are at `offset..`, sequences
    /// `first_sequence..`, in the order of `ids`.
    #[derive(Debug, Clone)]
    struct Acked {
        key: String,
        partition: u32,
        offset: u64,
        first_sequence: u64,
        ids: Vec<String>,
        /// The size of the `pad` header the events carried (the disk-full
        /// drill's), so that a retry repeats the append exactly: an id with
        /// other content is refused, not a duplicate.
        pad: Option<usize>,
    }

    /// Everything the checks compare the log against.
    #[derive(Debug, Clone, Default)]
    struct Book {
        /// The topic's partition count.
        partitions: u32,
        acked: Vec<Acked>,
        /// Ids of appends refused for certain (lost races, fenced, disk full):
        /// never stored.
        never: Vec<String>,
        /// Per partition, the last acknowledged cursor commit.
        commits: BTreeMap<u32, u64>,
        /// Events a reader saw, as (partition, offset, id): visible means durable.
        seen: Vec<(u32, u64, String)>,
    }

    impl Book {
        fn record(&mut self, key: &str, ack: &AppendAck, ids: Vec<String>) -> Res<()> {
            self.record_padded(key, ack, ids, None)
        }

        fn record_padded(
            &mut self,
            key: &str,
            ack: &AppendAck,
            ids: Vec<String>,
            pad: Option<usize>,
        ) -> Res<()> {
            ensure!(
                ack.partition == partition_for_key(key.as_bytes(), self.partitions)
                    && ack.last_sequence + 1 == ack.first_sequence + ids.len() as u64,
                "acknowledgement {ack:?} of key {key} with {} events",
                ids.len()
            );
            self.acked.push(Acked {
                key: key.to_string(),
                partition: ack.partition.0,
                offset: ack.first_offset.0,
                first_sequence: ack.first_sequence.0,
                ids,
                pad,
            });
            Ok(())
        }
    }

    fn events_of(ids: &[String]) -> Vec<Event> {
        events_padded(ids, None)
    }

    /// The events of `ids`, each with a `pad` header of `pad` bytes if given.
    fn events_padded(ids: &[String], pad: Option<usize>) -> Vec<Event> {
        ids.iter()
            .map(|id| {
                let event =
                    Event::new("drill", id.as_bytes().to_vec()).with_idempotency_id(id.as_bytes().to_vec());
                match pad {
                    Some(size) => event.with_header("pad", vec![0x33; size]),
                    None => event,
                }
            })
            .collect()
    }

    /// Which acknowledged appends a check retries.
    #[derive(Debug, Clone, Copy)]
    enum Retry {
        All,
        /// Those from `since` on, and a seeded sample of `sample` older ones
        /// (all of them when there are no more): keeps long soaks linear.
        Recent {
            since: usize,
            sample: usize,
            seed: u64,
        },
    }

    /// What one check found.
    #[derive(Debug, Default)]
    struct Checked {
        events: u64,
        keys: u64,
        retried: u64,
    }

    /// Reads the whole topic by offset and by key through the server and checks
    /// it against the book (see the module comment).
    async fn check(client: &Client, topic: &str, book: &Book, retry: Retry) -> Res<Checked> {
        let partitions = book.partitions;
        let description = client
            .describe_topic(topic)
            .await
            .map_err(|error| format!("describe: {error}"))?;
        ensure!(
            description.partitions.len() == partitions as usize,
            "{} partitions",
            description.partitions.len()
        );
        let mut high_watermarks = BTreeMap::new();
        // id -> (partition, offset, key, sequence)
        let mut by_id: HashMap<String, (u32, u64, String, u64)> = HashMap::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let mut checked = Checked::default();
        for partition in &description.partitions {
            let p = partition.partition.0;
            let high_watermark = partition.high_watermark.0;
            high_watermarks.insert(p, high_watermark);
            let mut from = 0u64;
            while from < high_watermark {
                let page = client
                    .read(topic, PartitionId(p), Offset(from), PAGE_EVENTS, 0)
                    .await
                    .map_err(|error| format!("read partition {p} from {from}: {error}"))?;
                ensure!(
                    !page.events.is_empty(),
                    "partition {p}: no events at {from} below {high_watermark}"
                );
                for event in page.events {
                    ensure!(
                        event.offset.0 == from && event.partition.0 == p,
                        "partition {p}: event at offset {} (partition {}) where {from} was due",
                        event.offset,
                        event.partition
                    );
                    let id = event
                        .idempotency_id
                        .as_deref()
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .ok_or_else(|| format!("partition {p} offset {from}: an event without id"))?;
                    let key = String::from_utf8_lossy(&event.key).into_owned();
                    ensure!(
                        event.payload == id.as_bytes(),
                        "partition {p} offset {from}: payload does not match id {id}"
                    );
                    keys.insert(key.clone());
                    let previous = by_id.insert(id.clone(), (p, from, key, event.sequence.0));
                    ensure!(
                        previous.is_none(),
                        "id {id} stored twice: {previous:?} and at {p}/{from}"
                    );
                    from += 1;
                }
                ensure!(
                    page.next_offset.0 == from,
                    "partition {p}: next offset {} after {from}",
                    page.next_offset
                );
            }
            checked.events += high_watermark;
        }
        for call in &book.acked {
            for (index, id) in call.ids.iter().enumerate() {
                let found = by_id
                    .get(id)
                    .ok_or_else(|| format!("acknowledged event {id} lost ({call:?})"))?;
                let wanted = (
                    call.partition,
                    call.offset + index as u64,
                    call.key.clone(),
                    call.first_sequence + index as u64,
                );
                ensure!(
                    *found == wanted,
                    "event {id}: found {found:?}, acknowledged {wanted:?}"
                );
            }
        }
        for id in &book.never {
            ensure!(
                !by_id.contains_key(id),
                "refused event {id} stored at {:?}",
                by_id.get(id)
            );
        }
        for (partition, offset, id) in &book.seen {
            let found = by_id.get(id).map(|found| (found.0, found.1));
            ensure!(
                found == Some((*partition, *offset)),
                "event {id} read at {partition}/{offset} before the kill is now at {found:?}"
            );
        }
        // By key: dense sequences in offset order, the same events as by offset.
        for key in &keys {
            let mut from = 0u64;
            let mut last_offset: Option<u64> = None;
            loop {
                let history = client
                    .read_key(
                        topic,
                        key.as_bytes(),
                        Some(from),
                        Direction::Forwards,
                        PAGE_EVENTS,
                    )
                    .await
                    .map_err(|error| format!("read key {key} from {from}: {error}"))?;
                let last_sequence = history.last_sequence;
                let done = history.events.is_empty();
                for event in history.events {
                    ensure!(
                        event.sequence == Sequence(from),
                        "key {key}: sequence {} where {from} was due",
                        event.sequence
                    );
                    let id = event
                        .idempotency_id
                        .as_deref()
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .unwrap_or_default();
                    let found = by_id.get(&id);
                    ensure!(
                        found == Some(&(event.partition.0, event.offset.0, key.clone(), event.sequence.0)),
                        "key {key} sequence {from}: id {id} at {}/{} but by offset {found:?}",
                        event.partition,
                        event.offset
                    );
                    ensure!(
                        last_offset.is_none_or(|last| last < event.offset.0),
                        "key {key}: offsets out of order at sequence {from}"
                    );
                    last_offset = Some(event.offset.0);
                    from += 1;
                }
                if done || last_sequence.is_some_and(|last| last < from) {
                    ensure!(
                        last_sequence == from.checked_sub(1),
                        "key {key}: last sequence {last_sequence:?} after {from} events"
                    );
                    break;
                }
            }
            checked.keys += 1;
        }
        let events_by_key: u64 = by_id.len() as u64;
        ensure!(
            events_by_key == checked.events,
            "ids {events_by_key} for {} events",
            checked.events
        );
        // Cursors: never behind an acknowledged commit, never ahead of the data.
        if !book.commits.is_empty() {
            let positions = client
                .get_cursor(topic, CURSOR)
                .await
                .map_err(|error| format!("get cursor: {error}"))?;
            let committed: BTreeMap<u32, Option<u64>> = positions
                .iter()
                .map(|position| (position.partition.0, position.committed.map(|offset| offset.0)))
                .collect();
            for (partition, acknowledged) in &book.commits {
                let now = committed.get(partition).copied().flatten();
                ensure!(
                    now.is_some_and(|now| now >= *acknowledged),
                    "cursor of partition {partition} at {now:?} after a commit of {acknowledged} was acknowledged"
                );
            }
            for (partition, now) in &committed {
                let high_watermark = high_watermarks.get(partition).copied().unwrap_or(0);
                ensure!(
                    now.is_none_or(|now| now <= high_watermark),
                    "cursor of partition {partition} at {now:?}, past the high watermark {high_watermark}"
                );
            }
        }
        // Retries of acknowledged appends: duplicates at the original positions.
        let retried: Vec<&Acked> = match retry {
            Retry::All => book.acked.iter().collect(),
            Retry::Recent { since, sample, seed } => {
                let since = since.min(book.acked.len());
                let mut rng = Rng::new(seed);
                let older: Vec<&Acked> = if since <= sample {
                    book.acked[..since].iter().collect()
                } else {
                    (0..sample)
                        .map(|_| &book.acked[rng.below(since as u64) as usize])
                        .collect()
                };
                older.into_iter().chain(&book.acked[since..]).collect()
            }
        };
        for chunk in retried.chunks(RETRY_BATCH) {
            let requests: Vec<AppendRequest> = chunk
                .iter()
                .map(|call| AppendRequest::new(call.key.clone(), events_padded(&call.ids, call.pad)))
                .collect();
            let outcomes = client
                .append_batch(topic, &requests)
                .await
                .map_err(|error| format!("retry batch: {error}"))?;
            for (call, outcome) in chunk.iter().zip(outcomes) {
                let retry = outcome.map_err(|error| format!("retry of {call:?}: {error}"))?;
                ensure!(
                    retry.duplicate
                        && retry.partition.0 == call.partition
                        && retry.first_offset.0 == call.offset
                        && retry.first_sequence == Sequence(call.first_sequence),
                    "retry of {call:?} answered {retry:?}"
                );
                checked.retried += 1;
            }
        }
        Ok(checked)
    }

    // -----------------------------------------------------------------------
    // The kill drill

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    struct Phase {
        /// Which server: 0 for the first, one more per restart.
        generation: u64,
        /// Workers may start new operations.
        running: bool,
        /// This generation's server is being killed: transport errors expected.
        killed: bool,
        /// Workers end once idle.
        stop: bool,
        /// The producer worker that opens its producer again before going on.
        reopen: Option<usize>,
    }

    #[derive(Default)]
    struct State {
        book: Book,
        /// Per partition, the end of the acknowledged events.
        acked_end: BTreeMap<u32, u64>,
        acks: u64,
        /// Workers parked with nothing in flight.
        idle: usize,
        failure: Option<String>,
        /// Highest epoch issued per producer name.
        epochs: HashMap<String, u32>,
        conflicts: u64,
        unknown_outcomes: u64,
        fence_checks: u64,
        duplicates: u64,
        /// The generation whose producer reopening is done.
        reopened: u64,
    }

    struct Shared {
        state: Mutex<State>,
        changed: Condvar,
    }

    impl Shared {
        fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
            let result = change(&mut lock(&self.state));
            self.changed.notify_all();
            result
        }

        fn fail(&self, message: String) {
            self.update(|state| {
                state.failure.get_or_insert(message);
            });
        }

        fn record(&self, key: &str, ack: &AppendAck, ids: Vec<String>) -> Res<()> {
            self.update(|state| {
                state.book.record(key, ack, ids)?;
                state.acks += 1;
                state.duplicates += u64::from(ack.duplicate);
                let end = ack.first_offset.0 + ack.last_sequence.0 - ack.first_sequence.0 + 1;
                let entry = state.acked_end.entry(ack.partition.0).or_default();
                *entry = (*entry).max(end);
                Ok(())
            })
        }

        /// Waits until `done` holds or a worker failed.
        fn wait(&self, what: &str, done: impl Fn(&State) -> bool) -> Res<()> {
            let guard = lock(&self.state);
            let (guard, timeout) = self
                .changed
                .wait_timeout_while(guard, PHASE_TIMEOUT, |state| {
                    state.failure.is_none() && !done(state)
                })
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(failure) = &guard.failure {
                return Err(failure.clone());
            }
            ensure!(!timeout.timed_out(), "timed out waiting for {what}");
            Ok(())
        }
    }

    /// Parks the worker (counted idle) until `wake` holds; `None` when the drill ends.
    async fn park(
        shared: &Shared,
        phase: &mut watch::Receiver<Phase>,
        wake: impl Fn(&Phase) -> bool,
    ) -> Option<Phase> {
        let now = *phase.borrow_and_update();
        let next = if now.stop || wake(&now) {
            Some(now)
        } else {
            shared.update(|state| state.idle += 1);
            let next = phase
                .wait_for(|phase| phase.stop || wake(phase))
                .await
                .map(|phase| *phase)
                .ok();
            shared.update(|state| state.idle -= 1);
            next
        };
        next.filter(|phase| !phase.stop)
    }

    /// Parks the worker until it may run; `None` when the drill ends.
    async fn wait_running(shared: &Shared, phase: &mut watch::Receiver<Phase>) -> Option<Phase> {
        park(shared, phase, |phase| phase.running).await
    }

    /// After a transport error in a call started in `generation`: the server
    /// must have been killed; waits for its successor.
    async fn wait_restart(
        phase: &mut watch::Receiver<Phase>,
        generation: u64,
        error: &ClientError,
    ) -> Res<()> {
        let now = *phase.borrow();
        ensure!(
            now.killed || now.generation > generation,
            "transient error while the server was up: {error}"
        );
        let next = phase
            .wait_for(|phase| phase.generation > generation || phase.stop)
            .await
            .map(|phase| *phase)
            .map_err(|_| "the drill ended".to_string())?;
        ensure!(!next.stop, "the drill stopped with an append unresolved");
        Ok(())
    }

    fn producer_retry() -> RetryPolicy {
        // Enough to outlast a restart; the restart is what ends the waiting.
        RetryPolicy {
            attempts_max: 1000,
            backoff_initial: Duration::from_millis(2),
            backoff_max: Duration::from_millis(50),
        }
    }

    /// Builds a producer and checks its epoch against every epoch issued before.
    async fn build_producer(client: &Client, shared: &Shared, name: &str) -> Res<Producer> {
        let producer = client
            .producer(TOPIC, name)
            .retry(producer_retry())
            .build()
            .await
            .map_err(|error| format!("build producer {name}: {error}"))?;
        let epoch = producer.epoch().0;
        shared.update(|state| {
            let previous = state.epochs.insert(name.to_string(), epoch);
            ensure!(
                previous.is_none_or(|previous| previous < epoch),
                "producer {name} opened with epoch {epoch} after epoch {previous:?} was issued"
            );
            Ok(())
        })?;
        Ok(producer)
    }

    struct Worker {
        index: usize,
        client: Client,
        shared: Arc<Shared>,
        phase: watch::Receiver<Phase>,
        rng: Rng,
    }

    async fn producer_worker(mut worker: Worker) {
        if let Err(message) = producer_loop(&mut worker).await {
            worker
                .shared
                .fail(format!("producer worker {}: {message}", worker.index));
        }
    }

    async fn producer_loop(worker: &mut Worker) -> Res<()> {
        let index = worker.index;
        let name = format!("producer-{index}");
        let keys: Vec<String> = (0..PRODUCER_KEYS).map(|key| format!("p{index}-{key}")).collect();
        let mut producer = build_producer(&worker.client, &worker.shared, &name).await?;
        let mut reopened_in = 0u64;
        let mut next = 0u64;
        let mut in_flight = JoinSet::new();
        loop {
            // After a restart, with nothing in flight, the coordinator may ask
            // this worker to open its producer again before it parks.
            let wake = |phase: &Phase| {
                phase.running || (phase.reopen == Some(index) && phase.generation != reopened_in)
            };
            let Some(now) = park(&worker.shared, &mut worker.phase, wake).await else {
                return Ok(());
            };
            if now.reopen == Some(index) && reopened_in != now.generation {
                reopened_in = now.generation;
                producer = reopen(worker, &name, &keys[0], producer, now.generation).await?;
                worker.shared.update(|state| state.reopened = now.generation);
                continue;
            }
            loop {
                while in_flight.len() < PRODUCER_WINDOW && worker.phase.borrow().running {
                    let key = keys[worker.rng.below(PRODUCER_KEYS as u64) as usize].clone();
                    let ids: Vec<String> = (0..1 + worker.rng.below(2))
                        .map(|event| format!("p{index}-{next}-{event}"))
                        .collect();
                    next += 1;
                    let sent = producer.send(AppendRequest::new(key.clone(), events_of(&ids)));
                    in_flight.spawn(async move { (key, ids, sent.await) });
                }
                let running = tokio::select! {
                    done = in_flight.join_next(), if !in_flight.is_empty() => {
                        let (key, ids, acked) = done.ok_or("no send in flight")?.map_err(|error| error.to_string())?;
                        let ack = acked.map_err(|error| format!("send to {key}: {error}"))?;
                        worker.shared.record(&key, &ack, ids)?;
                        worker.phase.borrow().running
                    }
                    changed = worker.phase.changed() => {
                        changed.map_err(|_| "the drill ended".to_string())?;
                        worker.phase.borrow().running
                    }
                };
                if !running {
                    // Everything sent resolves: the producer retries across the restart.
                    while let Some(done) = in_flight.join_next().await {
                        let (key, ids, acked) = done.map_err(|error| error.to_string())?;
                        let ack = acked.map_err(|error| format!("send to {key}: {error}"))?;
                        worker.shared.record(&key, &ack, ids)?;
                    }
                    break;
                }
            }
        }
    }

    /// Opens the producer's name again: the same id, a newer epoch, and the
    /// old epoch fenced, through the old producer and through a raw append.
    async fn reopen(worker: &Worker, name: &str, key: &str, old: Producer, generation: u64) -> Res<Producer> {
        let new = build_producer(&worker.client, &worker.shared, name).await?;
        ensure!(
            new.id() == old.id() && new.epoch() > old.epoch(),
            "reopened producer {name}: {:?}/{:?} after {:?}/{:?}",
            new.id(),
            new.epoch(),
            old.id(),
            old.epoch()
        );
        let probe = vec![format!("fence-{name}-{generation}")];
        let answer = old.send(AppendRequest::new(key, events_of(&probe))).await;
        ensure!(
            matches!(&answer, Err(error) if error.kind() == Some(ErrorKind::ProducerFenced)),
            "a send of the old producer {name} was answered {answer:?}"
        );
        let raw = vec![format!("fence-raw-{name}-{generation}")];
        let stamp = ProducerStamp {
            producer: old.id(),
            epoch: old.epoch(),
            sequence: Sequence(0),
        };
        let answer = worker
            .client
            .append(TOPIC, &AppendRequest::new(key, events_of(&raw)).stamped(stamp))
            .await;
        ensure!(
            matches!(&answer, Err(error) if error.kind() == Some(ErrorKind::ProducerFenced)
                && error.code() == Some(GrpcCode::Aborted)
                && error.details().and_then(|details| details.current_epoch) == Some(new.epoch())),
            "a raw append with the old epoch of {name} was answered {answer:?}"
        );
        worker.shared.update(|state| {
            state.book.never.extend(probe.into_iter().chain(raw));
            state.fence_checks += 1;
        });
        drop(old);
        Ok(new)
    }

    async fn cas_worker(mut worker: Worker) {
        if let Err(message) = cas_loop(&mut worker).await {
            worker
                .shared
                .fail(format!("compare-and-set worker {}: {message}", worker.index));
        }
    }

    async fn cas_loop(worker: &mut Worker) -> Res<()> {
        let index = worker.index;
        let keys: Vec<String> = (0..CAS_KEYS).map(|key| format!("cas-{key}")).collect();
        // This writer's view of each key's last sequence; other writers make it stale.
        let mut view: Vec<Option<u64>> = vec![None; CAS_KEYS];
        let mut next = 0u64;
        while wait_running(&worker.shared, &mut worker.phase).await.is_some() {
            let slot = worker.rng.below(CAS_KEYS as u64) as usize;
            let key = &keys[slot];
            let ids: Vec<String> = (0..1 + worker.rng.below(3))
                .map(|event| format!("c{index}-{next}-{event}"))
                .collect();
            next += 1;
            let expected = match view[slot] {
                None => ExpectedSequence::NoEvents,
                Some(sequence) => ExpectedSequence::Exact(Sequence(sequence)),
            };
            let first_sequence = view[slot].map_or(0, |sequence| sequence + 1);
            let request = AppendRequest::new(key.clone(), events_of(&ids)).expect(expected);
            let mut attempts = 0u32;
            loop {
                let generation = worker.phase.borrow().generation;
                match worker.client.append(TOPIC, &request).await {
                    Ok(ack) => {
                        ensure!(
                            ack.first_sequence == Sequence(first_sequence)
                                && (attempts > 0 || !ack.duplicate),
                            "append to {key} expecting {expected} (attempt {attempts}) answered {ack:?}"
                        );
                        view[slot] = Some(ack.last_sequence.0);
                        worker.shared.record(key, &ack, ids)?;
                        break;
                    }
                    Err(error) if error.kind() == Some(ErrorKind::WrongExpectedSequence) => {
                        // Lost the race. Ids are checked before the condition, so
                        // even after an unknown outcome nothing of this was stored.
                        let actual = error
                            .details()
                            .and_then(|details| details.actual_sequence)
                            .map(|sequence| sequence.0);
                        ensure!(
                            actual != view[slot] && error.code() == Some(GrpcCode::FailedPrecondition),
                            "append to {key} expecting {expected} refused with {error} (actual {actual:?})"
                        );
                        view[slot] = actual;
                        worker.shared.update(|state| {
                            state.conflicts += 1;
                            state.book.never.extend(ids);
                        });
                        break;
                    }
                    Err(error) if error.is_transient() => {
                        wait_restart(&mut worker.phase, generation, &error).await?;
                        attempts += 1;
                        worker.shared.update(|state| state.unknown_outcomes += 1);
                    }
                    Err(error) => return Err(format!("append to {key} expecting {expected}: {error}")),
                }
            }
        }
        Ok(())
    }

    async fn reader_worker(mut worker: Worker) {
        if let Err(message) = reader_loop(&mut worker).await {
            worker.shared.fail(format!("reader: {message}"));
        }
    }

    /// Reads partitions by offset (recording what it sees) and commits the
    /// cursor to the end of the acknowledged events; now and then tries to
    /// commit past the high watermark, which must be refused.
    async fn reader_loop(worker: &mut Worker) -> Res<()> {
        let mut read_from = vec![0u64; PARTITIONS as usize];
        let mut high_watermarks = vec![0u64; PARTITIONS as usize];
        let mut committed = vec![0u64; PARTITIONS as usize];
        let mut operation = 0u64;
        while wait_running(&worker.shared, &mut worker.phase).await.is_some() {
            operation += 1;
            let partition = worker.rng.below(u64::from(PARTITIONS)) as u32;
            let slot = partition as usize;
            loop {
                let generation = worker.phase.borrow().generation;
                let result = match operation % 3 {
                    0 => {
                        read(
                            worker,
                            partition,
                            &mut read_from[slot],
                            &mut high_watermarks[slot],
                        )
                        .await
                    }
                    1 => commit(worker, partition, &mut committed[slot]).await,
                    _ => commit_ahead(worker, partition, high_watermarks[slot]).await,
                };
                match result {
                    Ok(()) => break,
                    Err(Failure::Transient(error)) => {
                        wait_restart(&mut worker.phase, generation, &error).await?
                    }
                    Err(Failure::Wrong(message)) => return Err(message),
                }
            }
        }
        Ok(())
    }

    enum Failure {
        Transient(ClientError),
        Wrong(String),
    }

    impl From<String> for Failure {
        fn from(message: String) -> Failure {
            Failure::Wrong(message)
        }
    }

    fn client_failure(what: &str, error: ClientError) -> Failure {
        if error.is_transient() {
            Failure::Transient(error)
        } else {
            Failure::Wrong(format!("{what}: {error}"))
        }
    }

    async fn read(
        worker: &Worker,
        partition: u32,
        from: &mut u64,
        high_watermark: &mut u64,
    ) -> Result<(), Failure> {
        let page = worker
            .client
            .read(TOPIC, PartitionId(partition), Offset(*from), 50, 0)
            .await
            .map_err(|error| client_failure("read", error))?;
        let mut seen = Vec::new();
        for (index, event) in page.events.iter().enumerate() {
            let id = event
                .idempotency_id
                .as_deref()
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .unwrap_or_default();
            if event.offset.0 != *from + index as u64 {
                return Err(format!(
                    "read of {partition} from {from}: offset {} at {index}",
                    event.offset
                )
                .into());
            }
            seen.push((partition, event.offset.0, id));
        }
        *from += seen.len() as u64;
        *high_watermark = page.high_watermark.0;
        if page.next_offset.0 != *from || *from > *high_watermark {
            return Err(format!(
                "read of {partition}: next offset {} after {from}, high watermark {high_watermark}",
                page.next_offset
            )
            .into());
        }
        worker.shared.update(|state| state.book.seen.extend(seen));
        Ok(())
    }

    async fn commit(worker: &Worker, partition: u32, committed: &mut u64) -> Result<(), Failure> {
        let target = worker
            .shared
            .update(|state| state.acked_end.get(&partition).copied().unwrap_or(0));
        if target <= *committed {
            return Ok(());
        }
        worker
            .client
            .commit_cursor(TOPIC, CURSOR, &[(PartitionId(partition), Offset(target))], false)
            .await
            .map_err(|error| client_failure("commit", error))?;
        *committed = target;
        worker.shared.update(|state| {
            let entry = state.book.commits.entry(partition).or_default();
            *entry = (*entry).max(target);
        });
        Ok(())
    }

    async fn commit_ahead(worker: &Worker, partition: u32, high_watermark: u64) -> Result<(), Failure> {
        let target = high_watermark + 1_000_000;
        match worker
            .client
            .commit_cursor(TOPIC, CURSOR, &[(PartitionId(partition), Offset(target))], false)
            .await
        {
            Err(error) if error.kind() == Some(ErrorKind::CursorAheadOfHighWatermark) => Ok(()),
            Err(error) if error.is_transient() => Err(Failure::Transient(error)),
            other => Err(format!(
                "a commit of {partition} at {target}, past the high watermark, answered {other:?}"
            )
            .into()),
        }
    }

    fn kill_drill(runtime: &tokio::runtime::Runtime, seed: u64, kills: u64) -> Res<String> {
        let dir = tempfile::tempdir().map_err(|error| format!("temporary directory: {error}"))?;
        let data = dir.path().join("data");
        let mut server = ServerProcess::start(&data)?;
        let client = runtime
            .block_on(Client::connect(server.url.clone()))
            .map_err(|error| format!("connect: {error}"))?;
        runtime
            .block_on(
                client.create_topic(
                    TOPIC,
                    &TopicOptions::default()
                        .partitions(PARTITIONS)
                        .segment_size_bytes_max(KILL_SEGMENT_SIZE)
                        .dedup_window_ms(DEDUP_WINDOW_MS),
                ),
            )
            .map_err(|error| format!("create topic: {error}"))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                book: Book {
                    partitions: PARTITIONS,
                    ..Book::default()
                },
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let (phase, phase_receiver) = watch::channel(Phase::default());
        let mut rng = Rng::new(seed);
        let mut workers = Vec::new();
        for index in 0..WORKERS {
            let worker = Worker {
                index,
                client: client.clone(),
                shared: Arc::clone(&shared),
                phase: phase_receiver.clone(),
                rng: Rng::new(seed ^ (index as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93)),
            };
            workers.push(if index < PRODUCERS {
                runtime.spawn(producer_worker(worker))
            } else if index < PRODUCERS + CAS_WORKERS {
                runtime.spawn(cas_worker(Worker {
                    index: index - PRODUCERS,
                    ..worker
                }))
            } else {
                runtime.spawn(reader_worker(worker))
            });
        }
        let mut checked = Checked::default();
        let started = Instant::now();
        // Segments open removed after a kill right after a roll (5327b33).
        let mut repaired = 0usize;
        // Acknowledged appends before this index were retried by an earlier check.
        let mut checked_until = 0usize;
        // Time spent appending, verifying offline, restarting, settling, checking.
        let mut spent = [Duration::ZERO; 5];
        let mut clock = Instant::now();
        let mut lap = |slot: usize| {
            let now = Instant::now();
            spent[slot] += now - clock;
            clock = now;
        };
        let result = (|| -> Res<()> {
            for kill in 1..=kills {
                let kill_after = KILL_AFTER_MIN + rng.below(KILL_AFTER_SPREAD);
                let target = lock(&shared.state).acks + kill_after;
                phase.send_modify(|phase| phase.running = true);
                shared.wait(&format!("{kill_after} acknowledgements"), |state| {
                    state.acks >= target
                })?;
                phase.send_modify(|phase| phase.killed = true);
                repaired += server.stderr_count(ROLL_REPAIRED);
                server.kill()?;
                phase.send_modify(|phase| phase.running = false);
                lap(0);
                verify_offline(&data).map_err(|message| format!("kill {kill}: {message}"))?;
                lap(1);
                server = ServerProcess::start(&data)?;
                client.server_url().set(server.url.clone());
                lap(2);
                let generation = kill;
                phase.send_modify(|phase| {
                    *phase = Phase {
                        generation,
                        running: false,
                        killed: false,
                        stop: false,
                        reopen: Some(kill as usize % PRODUCERS),
                    }
                });
                shared.wait("the writers to settle after the restart", |state| {
                    state.idle == WORKERS && state.reopened == generation
                })?;
                lap(3);
                let book = lock(&shared.state).book.clone();
                let retry = if kill == kills {
                    Retry::All
                } else {
                    Retry::Recent {
                        since: checked_until,
                        sample: RETRY_SAMPLE,
                        seed: seed ^ kill,
                    }
                };
                checked_until = book.acked.len();
                checked = runtime
                    .block_on(check(&client, TOPIC, &book, retry))
                    .map_err(|message| {
                        format!("after kill {kill} (after {kill_after} acknowledgements): {message}")
                    })?;
                lap(4);
                if kill % 10 == 0 && kill < kills {
                    println!(
                        "drill: kill {kill}/{kills} ok, {} appends acknowledged so far ({:.1} s)",
                        book.acked.len(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            Ok(())
        })();
        phase.send_modify(|phase| phase.stop = true);
        if result.is_ok() {
            for worker in workers {
                runtime
                    .block_on(worker)
                    .map_err(|error| format!("a worker panicked: {error}"))?;
            }
        }
        let state = lock(&shared.state);
        result.map_err(|message| format!("{message}; server stderr: {}", server.stderr_text()))?;
        ensure!(state.failure.is_none(), "{:?}", state.failure);
        ensure!(
            state.fence_checks == kills,
            "{} fencing checks ran for {kills} restarts",
            state.fence_checks
        );
        Ok(format!(
            "{kills} kills, {} acknowledged appends ({} answered as duplicates after a restart), \
             {} events and {} keys checked after the last restart, {} retries answered as duplicates, \
             {} lost races, {} unknown outcomes retried, {} fencing checks, {} cursor partitions, \
             {} segments past a roll gap removed at open; \
             seconds appending {:.1}, verifying {:.1}, restarting {:.1}, settling {:.1}, checking {:.1}",
            state.acks,
            state.duplicates,
            checked.events,
            checked.keys,
            checked.retried,
            state.conflicts,
            state.unknown_outcomes,
            state.fence_checks,
            state.book.commits.len(),
            repaired + server.stderr_count(ROLL_REPAIRED),
            spent[0].as_secs_f64(),
            spent[1].as_secs_f64(),
            spent[2].as_secs_f64(),
            spent[3].as_secs_f64(),
            spent[4].as_secs_f64(),
        ))
    }

    // -----------------------------------------------------------------------
    // The disk-full drill

    const FULL_TOPIC: &str = "full";
    const FULL_PARTITIONS: u32 = 2;
    const FULL_KEYS: usize = 4;

    /// An 8 MiB tmpfs mounted for the drill; unmounted on drop.
    struct Tmpfs {
        path: PathBuf,
    }

    impl Tmpfs {
        fn mount(path: &Path) -> Res<Tmpfs> {
            let output = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
                .arg(path)
                .output()
                .map_err(|error| format!("cannot run mount: {error}"))?;
            ensure!(
                output.status.success(),
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .next()
                    .unwrap_or_default()
            );
            Ok(Tmpfs {
                path: path.to_path_buf(),
            })
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.path).status();
        }
    }

    /// Fills a file system: writes until ENOSPC, then checks that a page more fails.
    fn fill(dir: &Path) -> Res<PathBuf> {
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).map_err(|error| format!("create filler: {error}"))?;
        for chunk in [1 << 20, 4096, 1] {
            let buffer = vec![0x5a_u8; chunk];
            loop {
                match file.write(&buffer) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(error) => return Err(format!("write filler: {error}")),
                }
            }
        }
        let more = file.write(&[0u8; 4096]);
        ensure!(
            matches!(&more, Err(error) if error.raw_os_error() == Some(libc::ENOSPC)),
            "the file system is not full: a write returned {more:?}"
        );
        Ok(path)
    }

    /// A producer's append started while the disk was full: its ids and its answer.
    type PendingSend = (
        Vec<String>,
        tokio::task::JoinHandle<Result<AppendAck, ClientError>>,
    );

    /// The disk-full scenario's client side, common to both variants.
    struct Full {
        client: Client,
        book: Book,
        keys: Vec<String>,
        view: Vec<Option<u64>>,
        next: u64,
    }

    impl Full {
        async fn new(url: &str) -> Res<Full> {
            let client = Client::connect(url.to_string())
                .await
                .map_err(|error| format!("connect: {error}"))?;
            client
                .create_topic(
                    FULL_TOPIC,
                    &TopicOptions::default()
                        .partitions(FULL_PARTITIONS)
                        .segment_size_bytes_max(64 * 1024)
                        .dedup_window_ms(DEDUP_WINDOW_MS),
                )
                .await
                .map_err(|error| format!("create topic: {error}"))?;
            Ok(Full {
                client,
                book: Book {
                    partitions: FULL_PARTITIONS,
                    ..Book::default()
                },
                // Keys of both partitions.
                keys: (0..FULL_KEYS).map(|key| format!("full-{key}")).collect(),
                view: vec![None; FULL_KEYS],
                next: 0,
            })
        }

        /// One compare-and-set append of `payload` bytes per event.
        async fn append(
            &mut self,
            slot: usize,
            payload: usize,
        ) -> (Vec<String>, Result<AppendAck, ClientError>) {
            let ids: Vec<String> = (0..2)
                .map(|event| format!("full-{}-{event}", self.next))
                .collect();
            self.next += 1;
            let events = events_padded(&ids, Some(payload));
            let expected = match self.view[slot] {
                None => ExpectedSequence::NoEvents,
                Some(sequence) => ExpectedSequence::Exact(Sequence(sequence)),
            };
            let request = AppendRequest::new(self.keys[slot].clone(), events).expect(expected);
            (ids, self.client.append(FULL_TOPIC, &request).await)
        }

        async fn append_ok(&mut self, slot: usize, payload: usize) -> Res<()> {
            let (ids, answer) = self.append(slot, payload).await;
            let ack = answer.map_err(|error| format!("append to {}: {error}", self.keys[slot]))?;
            ensure!(!ack.duplicate, "a fresh append answered {ack:?}");
            self.view[slot] = Some(ack.last_sequence.0);
            self.book
                .record_padded(&self.keys[slot], &ack, ids, Some(payload))
        }

        fn is_disk_full(error: &ClientError) -> bool {
            error.code() == Some(GrpcCode::ResourceExhausted)
                && error.kind() == Some(ErrorKind::DiskFull)
                && error.is_transient()
        }

        /// Before the disk fills: appends on every key, a cursor commit, a producer.
        async fn before(&mut self) -> Res<Producer> {
            for round in 0..10 {
                for slot in 0..FULL_KEYS {
                    self.append_ok(slot, 100 * round).await?;
                }
            }
            self.commit_all().await?;
            let producer = self
                .client
                .producer(FULL_TOPIC, "full-producer")
                .retry(producer_retry())
                .build()
                .await
                .map_err(|error| format!("build producer: {error}"))?;
            self.send(&producer).await?;
            Ok(producer)
        }

        async fn send(&mut self, producer: &Producer) -> Res<()> {
            let ids = vec![format!("full-producer-{}", self.next)];
            self.next += 1;
            let key = "full-producer-key";
            let ack = producer
                .send(AppendRequest::new(key, events_of(&ids)))
                .await
                .map_err(|error| format!("producer send: {error}"))?;
            self.book.record(key, &ack, ids)
        }

        async fn commit_all(&mut self) -> Res<()> {
            let description = self
                .client
                .describe_topic(FULL_TOPIC)
                .await
                .map_err(|error| format!("describe: {error}"))?;
            let offsets: Vec<(PartitionId, Offset)> = description
                .partitions
                .iter()
                .map(|partition| (partition.partition, partition.high_watermark))
                .collect();
            self.client
                .commit_cursor(FULL_TOPIC, CURSOR, &offsets, false)
                .await
                .map_err(|error| format!("commit: {error}"))?;
            for (partition, offset) in offsets {
                self.book.commits.insert(partition.0, offset.0);
            }
            Ok(())
        }

        /// While the disk is full: appends fail cleanly (small ones may still
        /// fit in a file's last page; events larger than a page cannot),
        /// reads and duplicate answers work. Returns a producer send started
        /// while full, to be resolved once space returns.
        async fn while_full(&mut self, producer: &Producer) -> Res<PendingSend> {
            let mut refused = 0;
            for attempt in 0..400 {
                let slot = attempt % FULL_KEYS;
                let (ids, answer) = self.append(slot, 100).await;
                match answer {
                    Ok(ack) => {
                        self.view[slot] = Some(ack.last_sequence.0);
                        self.book.record_padded(&self.keys[slot], &ack, ids, Some(100))?;
                    }
                    Err(error) if Full::is_disk_full(&error) => {
                        self.book.never.extend(ids);
                        refused += 1;
                        break;
                    }
                    Err(error) => return Err(format!("a small append on a full disk: {error}")),
                }
            }
            ensure!(refused == 1, "400 small appends on a full disk all succeeded");
            for slot in 0..FULL_KEYS {
                for _ in 0..3 {
                    let (ids, answer) = self.append(slot, 8192).await;
                    ensure!(
                        matches!(&answer, Err(error) if Full::is_disk_full(error)),
                        "an append of 16 KiB to {} on a full disk answered {answer:?}",
                        self.keys[slot]
                    );
                    self.book.never.extend(ids);
                }
            }
            // Reads, reads by key, cursors and duplicate answers keep working.
            check(&self.client, FULL_TOPIC, &self.book, Retry::All)
                .await
                .map_err(|message| format!("while full: {message}"))?;
            // A producer's append meets the full disk and is retried until space returns.
            let ids = vec![format!("full-producer-{}", self.next)];
            self.next += 1;
            let sent = producer.send(AppendRequest::new("full-producer-key", events_of(&ids)));
            Ok((ids, tokio::spawn(sent)))
        }

        /// Once space is back: writes succeed at the first attempt, on every key.
        async fn after(&mut self, producer: Producer, (ids, pending): PendingSend) -> Res<()> {
            for slot in 0..FULL_KEYS {
                self.append_ok(slot, 8192).await?;
                self.append_ok(slot, 100).await?;
            }
            let ack = pending
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| format!("the producer's append from the full disk: {error}"))?;
            self.book.record("full-producer-key", &ack, ids)?;
            self.send(&producer).await?;
            producer
                .close()
                .await
                .map_err(|error| format!("close producer: {error}"))?;
            self.commit_all().await?;
            check(&self.client, FULL_TOPIC, &self.book, Retry::All)
                .await
                .map_err(|message| format!("after space returned: {message}"))?;
            Ok(())
        }
    }

    fn disk_full_drill(runtime: &tokio::runtime::Runtime) -> Res<String> {
        if std::env::var("STELE_DRILL_DISK_FULL").as_deref() == Ok("faulty") {
            return disk_full_faulty(runtime)
                .map(|()| "in-process FaultyStorage, chosen by STELE_DRILL_DISK_FULL=faulty".to_string());
        }
        let mount_dir = tempfile::tempdir().map_err(|error| format!("temporary directory: {error}"))?;
        match Tmpfs::mount(mount_dir.path()) {
            Ok(tmpfs) => disk_full_tmpfs(runtime, &tmpfs).map(|()| {
                "tmpfs of 8 MiB, the stele binary; SIGKILL while full, restarted on the full disk, SIGKILL after".to_string()
            }),
            Err(reason) => {
                disk_full_faulty(runtime).map(|()| format!("in-process FaultyStorage; no tmpfs: {reason}"))
            }
        }
    }

    fn disk_full_tmpfs(runtime: &tokio::runtime::Runtime, tmpfs: &Tmpfs) -> Res<()> {
        let data = tmpfs.path.join("data");
        let mut server = ServerProcess::start(&data)?;
        let fail = |message: String, server: &ServerProcess| {
            format!("{message}; server stderr: {}", server.stderr_text())
        };
        let mut full = runtime.block_on(Full::new(&server.url))?;
        let producer = runtime
            .block_on(full.before())
            .map_err(|message| fail(message, &server))?;
        let filler = fill(&tmpfs.path)?;
        let pending = runtime
            .block_on(full.while_full(&producer))
            .map_err(|message| fail(message, &server))?;
        // Killed and restarted while still full: recovery needs no space, and
        // reads and duplicate answers work.
        server.kill()?;
        server = ServerProcess::start(&data)?;
        full.client.server_url().set(server.url.clone());
        runtime
            .block_on(check(&full.client, FULL_TOPIC, &full.book, Retry::All))
            .map_err(|message| fail(format!("restarted on a full disk: {message}"), &server))?;
        std::fs::remove_file(&filler).map_err(|error| format!("remove the filler: {error}"))?;
        runtime
            .block_on(full.after(producer, pending))
            .map_err(|message| fail(message, &server))?;
        // Nothing acknowledged is lost by a kill after the episode.
        server.kill()?;
        verify_offline(&data)?;
        let server = ServerProcess::start(&data)?;
        full.client.server_url().set(server.url.clone());
        runtime
            .block_on(check(&full.client, FULL_TOPIC, &full.book, Retry::All))
            .map_err(|message| fail(format!("after the kill: {message}"), &server))?;
        Ok(())
    }

    fn disk_full_faulty(runtime: &tokio::runtime::Runtime) -> Res<()> {
        use stele::io::FaultyStorage;
        use stele::server::{RunningServer, ServerConfig};
        use stele::{Log, LogOptions};
        let dir = tempfile::tempdir().map_err(|error| format!("temporary directory: {error}"))?;
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = ServerConfig::new(dir.path());
        config.listen = listen;
        runtime.block_on(async {
            let storage = FaultyStorage::new();
            let log = Log::open(
                dir.path(),
                LogOptions::default().storage(Arc::new(storage.clone())),
            )
            .map_err(|error| format!("open: {error}"))?;
            let server = RunningServer::start_with_log(Arc::new(log), config.clone())
                .await
                .map_err(|error| format!("start: {error}"))?;
            let mut full = Full::new(&format!("http://{}", server.local_addr())).await?;
            let producer = full.before().await?;
            storage.set_disk_full(true);
            let pending = full.while_full(&producer).await?;
            storage.set_disk_full(false);
            full.after(producer, pending).await?;
            server
                .shutdown()
                .await
                .map_err(|error| format!("shutdown: {error}"))?;
            // Reopened over the plain file system: nothing acknowledged lost.
            let server = RunningServer::start(config)
                .await
                .map_err(|error| format!("restart: {error}"))?;
            full.client
                .server_url()
                .set(format!("http://{}", server.local_addr()));
            check(&full.client, FULL_TOPIC, &full.book, Retry::All)
                .await
                .map_err(|message| format!("after the restart: {message}"))?;
            server
                .shutdown()
                .await
                .map_err(|error| format!("shutdown: {error}"))
        })
    }
}
