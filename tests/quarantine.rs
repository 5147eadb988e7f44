//! Fault isolation end to end: a flipped byte in a sealed segment of one
//! partition quarantines that partition only; the real `stele serve` starts,
//! serves the other partitions and the good prefix, refuses the rest with
//! DATA_LOSS naming the file and position, shows it in DescribeTopic and
//! `/metrics`; `stele repair --dry-run` changes nothing, `stele repair` cuts and
//! saves the cut bytes, `stele verify` passes and the partition takes appends
//! again from its new high watermark.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use stele::client::{
    Client, ClientError, Delivery, GroupOptions, GroupSettings, GroupStart, GrpcCode, Settlement,
    StartPosition, SubscribeOptions, SubscriptionItem,
};
use stele::{AppendRequest, ErrorKind, Event, Offset, PartitionId, TopicOptions};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const EVENTS: usize = 240;
const WAIT_MAX: Duration = Duration::from_secs(30);

/// A `stele serve` child with its gRPC and metrics addresses; killed on drop.
struct Server {
    child: std::process::Child,
    url: String,
    metrics: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Stops the server with SIGKILL, like a crash: no checkpoint is written
    /// at close, so the next open replays (and CRC checks) every frame.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

fn serve(data: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stele"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn stele serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines();
    let (mut url, mut metrics) = (None, None);
    while url.is_none() || metrics.is_none() {
        let line = lines
            .next()
            .expect("stele serve announces its addresses")
            .expect("read stderr");
        if let Some(rest) = line.split("listening on ").nth(1) {
            url = Some(format!("http://{}", rest.split(',').next().expect("address")));
        }
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            metrics = Some(rest.trim_end_matches("/metrics").to_string());
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Server {
        child,
        url: url.expect("url"),
        metrics: metrics.expect("metrics address"),
    }
}

fn scrape(address: &str) -> String {
    let mut stream = TcpStream::connect(address).expect("connect to /metrics");
    stream.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `name{labels}` (labels as the exposition writes
/// them, sorted), if present.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("a number"))
}

fn stele(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stele"))
        .args(args)
        .output()
        .expect("run stele")
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    files
}

fn segment_files(partition_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir)
        .expect("list partition")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    files.sort();
    files
}

/// The start positions of the frames of a segment file.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut position = stele::format::segment::SEGMENT_HEADER_LEN;
    let mut starts = Vec::new();
    while position + 4 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[position..position + 4].try_into().expect("4 bytes")) as usize;
        starts.push(position);
        position += 4 + length;
    }
    starts
}

fn key_for(partition: PartitionId, index: usize) -> String {
    (index..)
        .map(|candidate| format!("key-{candidate}"))
        .find(|key| stele::partition_for_key(key.as_bytes(), PARTITIONS) == partition)
        .expect("a key of the partition")
}

fn assert_quarantined_error(error: &ClientError, file: &str, position: u64, data: &Path, what: &str) {
    assert_eq!(error.code(), Some(GrpcCode::DataLoss), "{what}: {error}");
    assert_eq!(error.kind(), Some(ErrorKind::Quarantined), "{what}: {error}");
    let message = error.to_string();
    assert!(message.contains(file), "{what}: {message} does not name {file}");
    assert!(
        message.contains(&format!("position {position}")),
        "{what}: {message} does not name position {position}"
    );
    assert!(
        !message.contains(&*data.to_string_lossy()),
        "{what}: {message} names the server's data directory"
    );
    let detail = error
        .details()
        .and_then(|details| details.quarantine.clone())
        .unwrap_or_else(|| panic!("{what}: no quarantine detail"));
    assert_eq!(detail.file, file, "{what}");
    assert_eq!(detail.position, position, "{what}");
}

/// Reads a partition from `from` until its high watermark, returning (offset,
/// payload) pairs.
async fn read_all(client: &Client, partition: PartitionId, from: Offset) -> Vec<(u64, Vec<u8>)> {
    let mut events = Vec::new();
    let mut next = from;
    loop {
        let result = client
            .read(TOPIC, partition, next, 0, 0)
            .await
            .unwrap_or_else(|error| panic!("read partition {partition} at {next}: {error}"));
        for event in &result.events {
            events.push((event.offset.0, event.payload.clone()));
        }
        next = result.next_offset;
        if next >= result.high_watermark {
            return events;
        }
        assert!(
            !result.events.is_empty(),
            "an empty read below the high watermark"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sealed_segment_quarantines_one_partition_until_repair_cuts_it() {
    // Goal: the whole path of issue 14's fault isolation, against real
    // processes. Method: write events to three partitions with 4 KiB segments,
    // SIGKILL the server (no clean-close checkpoint, so the next open reads
    // every frame), flip a payload byte in a sealed segment of one partition,
    // restart, and check the server side; stop it, dry-run and run `stele
    // repair`, `stele verify`, restart and append.
    let temporary = tempfile::tempdir().expect("tempdir");
    let data = temporary.path().join("data");
    let server = serve(&data);
    let client = Client::connect(server.url.clone()).await.expect("connect");
    client
        .create_topic(
            TOPIC,
            &TopicOptions::default()
                .partitions(PARTITIONS)
                .segment_size_bytes_max(stele::limits::SEGMENT_SIZE_BYTES_MIN),
        )
        .await
        .expect("create topic");
    let mut stored: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for index in 0..EVENTS {
        let key = format!("customer-{}", index % 17);
        let payload = format!("order {index:05} of {key}: 0123456789abcdef0123456789abcdef").into_bytes();
        let ack = client
            .append(
                TOPIC,
                &AppendRequest::new(key, vec![Event::new("placed", payload.clone())]),
            )
            .await
            .expect("append");
        stored
            .entry(ack.partition.0)
            .or_default()
            .push((ack.first_offset.0, payload));
    }
    drop(client);
    server.kill();

    // The partition with the most segments gets a flipped byte in its second
    // segment, which is sealed: the last byte (payload) of its third frame.
    let topic_dir = data.join("topics").join(TOPIC);
    let (damaged, segments) = (0..PARTITIONS)
        .map(|partition| {
            let dir = topic_dir.join(format!("p{partition:05}"));
            (partition, segment_files(&dir))
        })
        .max_by_key(|(_, segments)| segments.len())
        .expect("partitions");
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[1];
    let bytes = std::fs::read(victim).expect("read segment");
    let starts = frame_starts(&bytes);
    assert!(starts.len() > 3, "{starts:?}");
    let frame_start = starts[2] as u64;
    let flipped_at = starts[3] - 1;
    let mut damaged_bytes = bytes.clone();
    damaged_bytes[flipped_at] ^= 0x20;
    std::fs::write(victim, &damaged_bytes).expect("damage");
    let base: u64 = victim
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.parse().ok())
        .expect("base offset");
    let served_end = base + 2;
    let file = format!(
        "topics/{TOPIC}/p{damaged:05}/{}",
        victim.file_name().expect("name").to_string_lossy()
    );
    let damaged_partition = PartitionId(damaged);
    let damaged_events = &stored[&damaged];
    let old_high_watermark = damaged_events.len() as u64;

    // The server starts and serves everything but the damaged range.
    let server = serve(&data);
    let client = Client::connect(server.url.clone()).await.expect("connect");
    for partition in 0..PARTITIONS {
        let id = PartitionId(partition);
        if partition == damaged {
            continue;
        }
        assert_eq!(
            read_all(&client, id, Offset(0)).await,
            stored[&partition],
            "partition {partition}"
        );
        let ack = client
            .append(
                TOPIC,
                &AppendRequest::new(key_for(id, 0), vec![Event::new("placed", b"after".to_vec())]),
            )
            .await
            .unwrap_or_else(|error| panic!("append to healthy partition {partition}: {error}"));
        assert_eq!(ack.first_offset.0, stored[&partition].len() as u64);
    }
    let prefix = read_all(&client, damaged_partition, Offset(0)).await;
    assert_eq!(prefix, damaged_events[..served_end as usize].to_vec());
    let error = client
        .read(TOPIC, damaged_partition, Offset(served_end), 0, 0)
        .await
        .expect_err("a read of the damaged range");
    assert_quarantined_error(&error, &file, frame_start, &data, "read");
    let error = client
        .append(
            TOPIC,
            &AppendRequest::new(
                key_for(damaged_partition, 0),
                vec![Event::new("placed", b"refused".to_vec())],
            ),
        )
        .await
        .expect_err("an append to the quarantined partition");
    assert_quarantined_error(&error, &file, frame_start, &data, "append");
    let description = client.describe_topic(TOPIC).await.expect("describe");
    for partition in &description.partitions {
        if partition.partition == damaged_partition {
            let quarantine = partition.quarantine.as_ref().expect("quarantine shown");
            assert_eq!(quarantine.file, file);
            assert_eq!(quarantine.position, frame_start);
            assert_eq!(quarantine.served_end, Offset(served_end));
            assert_eq!(partition.high_watermark, Offset(served_end));
        } else {
            assert_eq!(partition.quarantine, None, "partition {}", partition.partition);
        }
    }
    let described = stele(&["topic", "describe", TOPIC, "--url", &server.url, "--json"]);
    assert!(
        described.status.success(),
        "{}",
        String::from_utf8_lossy(&described.stderr)
    );
    let described: serde_json::Value = serde_json::from_slice(&described.stdout).expect("one JSON object");
    for partition in described["partitions"].as_array().expect("partitions") {
        if partition["partition"] == damaged {
            assert_eq!(partition["quarantine"]["file"], file.as_str(), "{described}");
            assert_eq!(partition["quarantine"]["position"], frame_start, "{described}");
            assert_eq!(partition["quarantine"]["served_end"], served_end, "{described}");
        } else {
            assert!(partition.get("quarantine").is_none(), "{described}");
        }
    }
    // A subscription of the damaged partition gets the good prefix, then ends
    // with DATA_LOSS instead of waiting forever.
    let mut subscription = client
        .subscribe(
            TOPIC,
            &SubscribeOptions {
                partitions: vec![damaged_partition],
                start: StartPosition::Earliest,
                ..SubscribeOptions::default()
            },
        )
        .await
        .expect("subscribe");
    let mut delivered = 0u64;
    let ended = tokio::time::timeout(WAIT_MAX, async {
        loop {
            match subscription.next().await {
                Some(Ok(SubscriptionItem::Events { events, .. })) => delivered += events.len() as u64,
                Some(Ok(_)) => {}
                Some(Err(error)) => return error,
                None => panic!("the subscription ended without an error"),
            }
        }
    })
    .await
    .expect("the subscription ends");
    assert_eq!(delivered, served_end);
    assert_quarantined_error(&ended, &file, frame_start, &data, "subscription");
    // A consumer group on the topic delivers every event of the healthy
    // partitions and the damaged one's good prefix; the quarantined lane is
    // skipped, the runner neither stops nor spins, and later events of the
    // healthy partitions still flow.
    client
        .create_group(
            "billing",
            TOPIC,
            &GroupOptions {
                settings: GroupSettings::default(),
                start: GroupStart::Earliest,
            },
        )
        .await
        .expect("create group");
    let seen: Arc<Mutex<BTreeMap<u32, BTreeSet<u64>>>> = Arc::default();
    let handler_seen = Arc::clone(&seen);
    let consumer = client.group_consumer("billing", "member-1").build();
    let shutdown = consumer.shutdown_handle();
    let member = tokio::spawn(consumer.run(move |delivery: Delivery| {
        let seen = Arc::clone(&handler_seen);
        async move {
            seen.lock()
                .expect("seen")
                .entry(delivery.event.partition.0)
                .or_default()
                .insert(delivery.event.offset.0);
            Settlement::Ack
        }
    }));
    let healthy = (0..PARTITIONS)
        .find(|partition| *partition != damaged)
        .expect("a healthy partition");
    let late = client
        .append(
            TOPIC,
            &AppendRequest::new(
                key_for(PartitionId(healthy), 0),
                vec![Event::new("placed", b"late".to_vec())],
            ),
        )
        .await
        .expect("append while the group runs");
    let expected_delivered = |partition: u32| -> u64 {
        if partition == damaged {
            served_end
        } else if partition == healthy {
            late.first_offset.0 + 1
        } else {
            stored[&partition].len() as u64 + 1
        }
    };
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let done = {
            let seen = seen.lock().expect("seen");
            (0..PARTITIONS).all(|partition| {
                seen.get(&partition).map_or(0, |offsets| offsets.len() as u64)
                    == expected_delivered(partition)
            })
        };
        if done {
            break;
        }
        assert!(!member.is_finished(), "the group member stopped");
        assert!(
            Instant::now() < deadline,
            "the group did not deliver everything: {:?}",
            seen.lock()
                .expect("seen")
                .iter()
                .map(|(partition, offsets)| (*partition, offsets.len()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.lock().expect("seen")[&damaged]
            .iter()
            .all(|offset| *offset < served_end),
        "a delivery from the damaged range"
    );
    shutdown.shutdown();
    tokio::time::timeout(WAIT_MAX, member)
        .await
        .expect("the member stops")
        .expect("the member's task")
        .expect("a graceful stop");
    let metrics = scrape(&server.metrics);
    for partition in 0..PARTITIONS {
        let labels = format!("topic=\"{TOPIC}\",partition=\"{partition}\"");
        let value = sample(&metrics, "stele_partition_quarantined", &labels)
            .unwrap_or_else(|| panic!("no quarantine gauge for {labels}"));
        assert_eq!(value, f64::from(u8::from(partition == damaged)), "{labels}");
    }
    let corruption = sample(
        &metrics,
        "stele_corruption_detected_total",
        &format!("topic=\"{TOPIC}\""),
    );
    assert_eq!(corruption, Some(1.0), "the quarantine at open is counted once");
    // A backup refuses while a partition is quarantined (its state is not
    // rebuilt), before writing anything.
    let backup_dest = temporary.path().join("backup");
    let backup = stele(&[
        "backup",
        backup_dest.to_str().expect("utf-8 path"),
        "--url",
        &server.url,
    ]);
    assert!(!backup.status.success(), "a backup of a quarantined partition");
    assert!(
        String::from_utf8_lossy(&backup.stderr).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&backup.stderr)
    );
    assert!(!backup_dest.exists() || std::fs::read_dir(&backup_dest).expect("list").next().is_none());
    // Repair is offline: it refuses while the server holds the directory.
    let data_arg = data.to_str().expect("utf-8 path");
    let partition_arg = damaged.to_string();
    let repair_args = [
        "repair",
        data_arg,
        "--topic",
        TOPIC,
        "--partition",
        &partition_arg,
    ];
    let refused = stele(&repair_args);
    assert!(!refused.status.success(), "repair ran under a server");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    drop(client);
    server.kill();

    // A dry run prints the plan and changes nothing.
    let before = snapshot(&data);
    let dry = stele(&[&repair_args[..], &["--dry-run", "--json"]].concat());
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&dry.stdout).expect("one JSON object");
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["damage"]["file"], file.as_str());
    assert_eq!(plan["damage"]["position"], frame_start);
    assert_eq!(plan["cut_offset"], served_end);
    assert_eq!(plan["events_lost"], old_high_watermark - served_end, "{plan}");
    let cut_segments = plan["segments"].as_array().expect("segments");
    assert_eq!(cut_segments.len(), segments.len() - 1, "{plan}");
    assert_eq!(cut_segments[0]["file"], file.as_str());
    assert_eq!(cut_segments[0]["kept_bytes"], frame_start);
    assert_eq!(cut_segments[0]["size_bytes"], bytes.len());
    assert!(
        cut_segments[1..].iter().all(|cut| cut["moved_whole"] == true),
        "{plan}"
    );
    assert_eq!(snapshot(&data), before, "a dry run changed files");
    let text = stele(&[&repair_args[..], &["--dry-run"]].concat());
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains(&file) && text.contains("would"), "{text}");
    assert_eq!(snapshot(&data), before, "a dry run changed files");

    // The repair cuts, keeping every cut byte under repair/.
    let run = stele(&[&repair_args[..], &["--json"]].concat());
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let done: serde_json::Value = serde_json::from_slice(&run.stdout).expect("one JSON object");
    let saved = data.join(done["saved_to"].as_str().expect("saved_to"));
    assert!(saved.starts_with(data.join("repair").join(TOPIC).join(format!("p{damaged:05}"))));
    let victim_name = victim.file_name().expect("name");
    assert_eq!(
        std::fs::read(saved.join(victim_name)).expect("saved original"),
        damaged_bytes
    );
    for later in &segments[2..] {
        let name = later.file_name().expect("name");
        assert_eq!(
            std::fs::read(saved.join(name)).expect("saved later segment"),
            before[later],
            "{}",
            later.display()
        );
        assert!(!later.exists(), "{} still in the partition", later.display());
    }
    assert_eq!(
        std::fs::read(victim).expect("kept prefix"),
        damaged_bytes[..frame_start as usize].to_vec()
    );
    let verify = stele(&["verify", data_arg]);
    assert!(
        verify.status.success(),
        "verify after repair: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // The partition opens clean and appends continue at the new end.
    let server = serve(&data);
    let client = Client::connect(server.url.clone()).await.expect("connect");
    let description = client.describe_topic(TOPIC).await.expect("describe");
    assert!(
        description
            .partitions
            .iter()
            .all(|partition| partition.quarantine.is_none())
    );
    let ack = client
        .append(
            TOPIC,
            &AppendRequest::new(
                key_for(damaged_partition, 0),
                vec![Event::new("placed", b"after repair".to_vec())],
            ),
        )
        .await
        .expect("append after repair");
    assert_eq!(ack.partition, damaged_partition);
    assert_eq!(ack.first_offset, Offset(served_end));
    let mut expected = damaged_events[..served_end as usize].to_vec();
    expected.push((served_end, b"after repair".to_vec()));
    assert_eq!(read_all(&client, damaged_partition, Offset(0)).await, expected);
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let metrics = scrape(&server.metrics);
        let labels = format!("topic=\"{TOPIC}\",partition=\"{damaged}\"");
        if sample(&metrics, "stele_partition_quarantined", &labels) == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the gauge stays set after repair");
    }
}
