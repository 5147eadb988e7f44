//! `stele backup` and `stele restore` end to end (issue 14, "operations"): a
//! backup taken from a real `stele serve` child while a writer appends, restored
//! offline, verified, and served again; then an incremental backup after more
//! appends, which hard-links the unchanged sealed segments.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stele::backup::{FileSource, Manifest};
use stele::client::{Client, TopicSettings};
use stele::{AppendRequest, Epoch, Event, Offset, PartitionId, ProducerStamp, Sequence};

#[path = "common/serve.rs"]
mod serve;
use serve::spawn_serve;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the `stele` command with `args` against `url` (when given).
fn stele(args: &[&str], url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stele"));
    command.args(args);
    if let Some(url) = url {
        command.args(["--url", url]);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") {
            command.env_remove(name);
        }
    }
    command.output().expect("run stele")
}

fn ok_json(output: Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}; stdout: {stdout}; stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(last).expect("one JSON object")
}

/// Every acknowledged append of the writer: (partition, offset) -> payload.
type Acked = Arc<Mutex<BTreeMap<(u32, u64), Vec<u8>>>>;

/// Appends single events with known payloads until `stop`, recording each ack.
fn start_writer(url: String, acked: Acked, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = Client::connect(url).await.expect("connect");
        let mut index = 0u64;
        while !stop.load(Ordering::Acquire) {
            let payload = format!("event-{index:08}-{}", "x".repeat(100)).into_bytes();
            let request = AppendRequest::new(
                format!("key-{}", index % 17),
                vec![Event::new("e", payload.clone())],
            );
            let ack = client.append(TOPIC, &request).await.expect("append");
            acked
                .lock()
                .expect("acked")
                .insert((ack.partition.0, ack.first_offset.0), payload);
            index += 1;
        }
    })
}

async fn wait_for_acks(acked: &Acked, count: usize) {
    let deadline = Instant::now() + DEADLINE;
    // Bounded by the deadline; each round sleeps on the runtime's timer while the writer runs.
    while acked.lock().expect("acked").len() < count {
        assert!(Instant::now() < deadline, "the writer did not reach {count} acks");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Restores `backup` into `dir` with `stele restore --json`, runs `stele
/// verify`, serves it and checks it event by event: exactly the manifest's
/// high watermarks, each event the one acknowledged at its position, every
/// event acknowledged before `before` present; and the state around the log.
async fn check_restored(backup: &Path, dir: &Path, acked: &Acked, before: &BTreeMap<(u32, u64), Vec<u8>>) {
    let restored = ok_json(stele(
        &[
            "restore",
            backup.to_str().expect("UTF-8"),
            dir.to_str().expect("UTF-8"),
            "--json",
        ],
        None,
    ));
    assert_eq!(restored["verify_problems"], 0, "{restored}");
    let verified = stele(&["verify", dir.to_str().expect("UTF-8")], None);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );

    let manifest = stele::backup::read_manifest(backup).expect("manifest");
    let server = spawn_serve(dir);
    let client = Client::connect(server.url.clone()).await.expect("connect");
    let acked = acked.lock().expect("acked").clone();
    let mut events_count = 0;
    // The topic, and the dead-letter topics the webhook and the group made.
    assert!(
        manifest
            .partitions
            .iter()
            .filter(|partition| partition.topic == TOPIC)
            .count()
            == PARTITIONS as usize
    );
    for partition in &manifest.partitions {
        let topic = partition.topic.as_str();
        let id = partition.partition;
        let mut next = Offset(0);
        let mut high_watermark;
        // Bounded: each read returns at least one event until the high watermark.
        loop {
            let read = client.read(topic, id, next, 0, 0).await.expect("read");
            high_watermark = read.high_watermark;
            for event in &read.events {
                assert_eq!(event.offset, next, "offsets are dense");
                if topic == TOPIC && event.key != b"stamped" {
                    assert_eq!(
                        acked.get(&(id.0, event.offset.0)),
                        Some(&event.payload),
                        "partition {} offset {} is not the acknowledged event",
                        id.0,
                        event.offset.0
                    );
                }
                next = Offset(event.offset.0 + 1);
                events_count += 1;
            }
            if read.events.is_empty() || next >= read.high_watermark {
                break;
            }
        }
        assert_eq!(high_watermark, partition.high_watermark, "partition {}", id.0);
        assert_eq!(next, partition.high_watermark, "partition {}", id.0);
        for (partition_index, offset) in before.keys() {
            if topic == TOPIC && *partition_index == id.0 {
                assert!(
                    Offset(*offset) < partition.high_watermark,
                    "event {partition_index}/{offset} acknowledged before the backup is missing"
                );
            }
        }
    }
    assert_eq!(events_count, manifest.events_count());

    let cursor = client.get_cursor(TOPIC, "billing").await.expect("cursor");
    assert_eq!(cursor[0].committed, Some(Offset(3)));
    let (producer, epoch) = client.open_producer(TOPIC, "ingest").await.expect("producer");
    assert_eq!(
        (producer.0, epoch),
        (1, Epoch(1)),
        "the registry is restored: same id, next epoch"
    );
    let webhooks = client.list_webhooks().await.expect("webhooks");
    assert!(
        webhooks.iter().any(|webhook| webhook.endpoint.name == "audit"),
        "the webhook is restored"
    );
    let groups = client.list_groups(None).await.expect("groups");
    assert!(
        groups.iter().any(|group| group.name == "workers"),
        "the group is restored"
    );
    drop(server);
}

// Goal: the "done means" for backup and restore. Method: a real server
// with a topic of small segments, a cursor, a producer (stamped events), a
// webhook and a group; a writer appends continuously with known contents while
// `stele backup` runs; the backup is restored, verified and served, and checked
// event by event against the writer's acknowledgements. Then more appends and
// `stele backup --incremental-from`, whose reused segments share inodes with
// the first backup, restored and checked the same way. Refusals: a non-empty
// destination, a relative one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_appends_restores_exactly_the_acknowledged_prefix() {
    let root = tempfile::tempdir().expect("temporary directory");
    let server = spawn_serve(&root.path().join("data"));
    let url = server.url.clone();
    let client = Client::connect(url.clone()).await.expect("connect");
    if stele::client::test_backend().is_some() {
        let refused = client
            .backup("/tmp/never", None)
            .await
            .expect_err("NATS has no Backup");
        assert!(refused.to_string().contains("JetStream"), "{refused}");
        return;
    }
    client
        .create_topic_with(
            TOPIC,
            &TopicSettings {
                partitions: Some(PARTITIONS),
                segment_size_bytes: Some(16 * 1024),
                ..TopicSettings::default()
            },
        )
        .await
        .expect("create topic");
    let (producer, epoch) = client.open_producer(TOPIC, "ingest").await.expect("producer");
    for sequence in 0..3 {
        let mut request = AppendRequest::new("stamped", vec![Event::new("stamped", b"{}".to_vec())]);
        request.producer = Some(ProducerStamp {
            producer,
            epoch,
            sequence: Sequence(sequence),
        });
        client.append(TOPIC, &request).await.expect("stamped append");
    }
    // Paused, so that it never dead-letters into a topic of its own.
    ok_json(stele(
        &[
            "webhook",
            "create",
            "audit",
            "http://127.0.0.1:9/in",
            "--topic",
            TOPIC,
            "--json",
        ],
        Some(&url),
    ));
    ok_json(stele(&["webhook", "pause", "audit", "--json"], Some(&url)));
    ok_json(stele(
        &["group", "create", "workers", "--topic", TOPIC, "--json"],
        Some(&url),
    ));

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(url.clone(), Arc::clone(&acked), Arc::clone(&stop));
    wait_for_acks(&acked, 1500).await;
    client
        .commit_cursor(TOPIC, "billing", &[(PartitionId(0), Offset(3))], false)
        .await
        .expect("cursor");

    let first = root.path().join("first");
    let before = acked.lock().expect("acked").clone();
    let summary = ok_json(stele(
        &["backup", first.to_str().expect("UTF-8"), "--json"],
        Some(&url),
    ));
    assert!(
        summary["files_linked"].as_u64() > Some(0),
        "sealed segments are linked: {summary}"
    );
    assert!(
        summary["partitions"].as_u64() >= Some(PARTITIONS as u64),
        "{summary}"
    );
    let refused = stele(&["backup", first.to_str().expect("UTF-8"), "--json"], Some(&url));
    assert_eq!(
        refused.status.code(),
        Some(3),
        "a non-empty destination is a conflict"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("DESTINATION_NOT_EMPTY"));
    let relative = stele(&["backup", "relative/dir"], Some(&url));
    assert_eq!(
        relative.status.code(),
        Some(2),
        "a relative destination is a usage error"
    );

    let count = acked.lock().expect("acked").len();
    wait_for_acks(&acked, count + 1500).await;
    let second = root.path().join("second");
    let before_second = acked.lock().expect("acked").clone();
    let incremental = ok_json(stele(
        &[
            "backup",
            second.to_str().expect("UTF-8"),
            "--incremental-from",
            first.to_str().expect("UTF-8"),
            "--json",
        ],
        Some(&url),
    ));
    stop.store(true, Ordering::Release);
    writer.await.expect("writer");
    drop(server);

    // The incremental backup reused sealed segments of the first: same inodes.
    assert!(incremental["files_reused"].as_u64() > Some(0), "{incremental}");
    let manifest: Manifest = stele::backup::read_manifest(&second).expect("manifest");
    assert_eq!(manifest.based_on.as_deref(), first.to_str());
    let reused: Vec<_> = manifest
        .files
        .iter()
        .filter(|file| file.source == FileSource::Reused)
        .collect();
    assert_eq!(
        reused.len() as u64,
        incremental["files_reused"].as_u64().expect("count")
    );
    for file in reused {
        let inode = |root: &Path| std::fs::metadata(root.join(&file.path)).expect("stat").ino();
        assert_eq!(
            inode(&first),
            inode(&second),
            "{} is linked, not copied",
            file.path
        );
    }

    check_restored(&first, &root.path().join("restored-first"), &acked, &before).await;
    check_restored(
        &second,
        &root.path().join("restored-second"),
        &acked,
        &before_second,
    )
    .await;
}
