//! Changing a live topic's options end to end (issue 14, item 4): `UpdateTopic`
//! over real gRPC against a `stele serve` child, and `stele topic alter` as a
//! process. Each change must apply without a restart (retention at the next
//! pass, segment size at the next roll, payload limit and durability at the
//! next append, the dedup window at once), bad values must change nothing, and
//! the change must survive a restart with its history in the data directory.
//! Waits poll a condition with a deadline; ports are picked by the kernel.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stele::client::{Client, TopicSettings};
use stele::wire::proto::{self, stele_client::SteleClient};
use stele::{AppendRequest, Durability, Event, ExpectedSequence, Log, LogOptions, TopicChange};
use tonic_types::StatusExt;

const BIN: &str = env!("CARGO_BIN_EXE_stele");
/// A failure bound for a poll, not a synchronisation delay.
const DEADLINE: Duration = Duration::from_secs(30);

/// A `stele serve` child on the embedded engine; killed on drop.
struct Serve {
    child: Child,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data_dir: &Path) -> Serve {
    serve_with(data_dir, &[])
}

fn serve_with(data_dir: &Path, args: &[&str]) -> Serve {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stele serve");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("stele serve announces its address")
            .expect("read stderr");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(',').next().expect("address").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child,
        url: format!("http://{address}"),
    }
}

fn event(size: usize) -> Event {
    Event::new("e", vec![b'x'; size])
}

async fn append(client: &Client, key: &str, event: Event) -> stele::client::ClientResult<stele::AppendAck> {
    client
        .append(
            "t",
            &AppendRequest::new(key, vec![event]).expect(ExpectedSequence::Any),
        )
        .await
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
async fn poll<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_topic_applies_live_refuses_bad_values_and_survives_a_restart() {
    // Goal: every option UpdateTopic changes takes effect on the running
    // server, as the proto promises, and is recorded.
    // Method: one partition with 4 KiB segments; measure rolls, retention,
    // the payload limit, durability and the dedup window through the public
    // API after each change; restart the server and read the history from
    // the data directory.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let client = Client::connect(server.url.clone()).await.expect("connect");
    let settings = TopicSettings {
        partitions: Some(1),
        segment_size_bytes: Some(4096),
        ..TopicSettings::default()
    };
    client.create_topic_with("t", &settings).await.expect("create");
    for index in 0..12 {
        append(&client, &format!("k{index}"), event(1000))
            .await
            .expect("append");
    }
    let before = client.describe_topic("t").await.expect("describe");
    assert_eq!(before.revision, 0);
    let segments = before.partitions[0].segments_count;
    assert!(segments >= 3, "4 KiB segments rolled: {segments}");

    // Segment size: the next rolls use the new size.
    let update = client
        .update_topic(
            "t",
            &TopicChange {
                segment_size_bytes_max: Some(1 << 20),
                ..TopicChange::default()
            },
        )
        .await
        .expect("segment size");
    assert_eq!(update.revision, 1);
    assert_eq!(update.previous.segment_size_bytes_max, 4096);
    assert_eq!(update.options.segment_size_bytes_max, 1 << 20);
    for index in 0..30 {
        append(&client, &format!("m{index}"), event(1000))
            .await
            .expect("append");
    }
    let after = client.describe_topic("t").await.expect("describe");
    assert_eq!(after.revision, 1);
    assert!(after.changed_ms > 0);
    // The active segment may roll once (it was past nothing), never every 4 KiB again.
    assert!(
        after.partitions[0].segments_count <= segments + 1,
        "30 KB more rolled {} -> {} segments",
        segments,
        after.partitions[0].segments_count
    );
    assert_eq!(after.partitions[0].earliest.0, 0, "no retention yet");

    // Retention: the next pass deletes the old sealed segments.
    client
        .update_topic(
            "t",
            &TopicChange {
                retention_bytes: Some(Some(8192)),
                ..TopicChange::default()
            },
        )
        .await
        .expect("retention");
    let earliest = poll("retention to delete old segments", || async {
        let description = client.describe_topic("t").await.expect("describe");
        let partition = description.partitions[0].clone();
        (partition.earliest.0 > 0 && partition.segments_count < after.partitions[0].segments_count)
            .then_some(partition.earliest.0)
    })
    .await;
    assert!(
        earliest <= 12,
        "only segments of the first 12 events go: {earliest}"
    );

    // Payload limit: from the next append.
    client
        .update_topic(
            "t",
            &TopicChange {
                payload_size_max: Some(2000),
                ..TopicChange::default()
            },
        )
        .await
        .expect("payload limit");
    let refused = append(&client, "big", event(2001))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.kind(), Some(stele::ErrorKind::LimitExceeded), "{refused}");
    append(&client, "big", event(2000)).await.expect("at the limit");

    // Durability: appends go on under each.
    for durability in [
        Durability::None,
        Durability::Interval { interval_ms: 10 },
        Durability::Always,
    ] {
        let update = client
            .update_topic(
                "t",
                &TopicChange {
                    durability: Some(durability),
                    ..TopicChange::default()
                },
            )
            .await
            .expect("durability");
        assert_eq!(update.options.durability, durability);
        let ack = append(&client, "d", event(10))
            .await
            .expect("append after the switch");
        let read = client
            .read("t", ack.partition, ack.first_offset, 1, 1 << 20)
            .await
            .expect("read it back");
        assert_eq!(read.events.len(), 1);
    }

    // Dedup window: a retry is a duplicate, until the window (now 1 ms) has passed.
    let with_id = Event::new("e", b"once".to_vec()).with_idempotency_id("id-1");
    let first = append(&client, "dedup", with_id.clone()).await.expect("first");
    assert!(
        append(&client, "dedup", with_id.clone())
            .await
            .expect("retry")
            .duplicate
    );
    client
        .update_topic(
            "t",
            &TopicChange {
                dedup_window_ms: Some(1),
                ..TopicChange::default()
            },
        )
        .await
        .expect("dedup window");
    let stored = poll("the id to leave the 1 ms window", || async {
        let ack = append(&client, "dedup", with_id.clone()).await.expect("retry");
        (!ack.duplicate).then_some(ack)
    })
    .await;
    assert!(stored.first_offset > first.first_offset);

    // Bad values: INVALID_ARGUMENT naming the field, and nothing changes.
    let described = client.describe_topic("t").await.expect("describe");
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("channel");
    let mut raw = SteleClient::new(channel);
    type Edit = fn(&mut proto::UpdateTopicRequest);
    let request = |change: Edit| {
        let mut request = proto::UpdateTopicRequest {
            topic: "t".to_string(),
            ..proto::UpdateTopicRequest::default()
        };
        change(&mut request);
        request
    };
    let bad: [(Edit, &str); 5] = [
        (
            |request| request.segment_size_bytes = Some(1),
            "segment_size_bytes",
        ),
        (
            |request| request.payload_size_max = Some(u32::MAX),
            "payload_size_max",
        ),
        (|request| request.dedup_window_ms = Some(0), "dedup_window_ms"),
        (
            |request| {
                request.durability = proto::Durability::Interval as i32;
                request.sync_interval_ms = Some(0);
            },
            "sync_interval_ms",
        ),
        (|request| request.durability = 42, "durability"),
    ];
    for (change, field) in bad {
        let status = raw.update_topic(request(change)).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        let bad_request = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad_request.field_violations[0].field, field);
    }
    let empty = raw
        .update_topic(request(|_| {}))
        .await
        .expect_err("nothing to change");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    let unknown = raw
        .update_topic(proto::UpdateTopicRequest {
            topic: "missing".to_string(),
            retention_bytes: Some(0),
            ..proto::UpdateTopicRequest::default()
        })
        .await
        .expect_err("unknown topic");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let unchanged = client.describe_topic("t").await.expect("describe");
    assert_eq!(unchanged.options, described.options);
    assert_eq!(unchanged.revision, described.revision);
    assert_eq!(unchanged.revision, 7);

    // A restart rereads the meta; the history lists every change.
    drop(raw);
    drop(client);
    drop(server);
    let server = serve(dir.path());
    let client = Client::connect(server.url.clone()).await.expect("connect");
    let reopened = client.describe_topic("t").await.expect("describe");
    assert_eq!(reopened.options, unchanged.options);
    assert_eq!(reopened.revision, 7);
    assert_eq!(reopened.changed_ms, unchanged.changed_ms);
    drop(client);
    drop(server);
    let log = Log::open(dir.path(), LogOptions::default()).expect("open the data directory");
    let history = log.topic("t").expect("topic").changes();
    let revisions: Vec<u64> = history.iter().map(|change| change.revision).collect();
    assert_eq!(revisions, (1..=7).collect::<Vec<_>>());
    assert_eq!(history[0].previous.segment_size_bytes_max, 4096);
    assert_eq!(history[1].options.retention_bytes, Some(8192));
    assert_eq!(history[6].options.dedup_window_ms, 1);
    for pair in history.windows(2) {
        assert_eq!(
            pair[1].previous, pair[0].options,
            "each change starts where the last ended"
        );
    }
    assert!(history.iter().all(|change| change.principal == "anonymous"));
    log.close().expect("close");
    drop(log);
    // `stele verify` replays the change journal and accepts the version 2 meta.
    let verify = Command::new(BIN)
        .arg("verify")
        .arg(dir.path())
        .output()
        .expect("run stele verify");
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn topic_alter_prints_old_and_new_values_and_describe_shows_the_revision() {
    // Goal: `stele topic alter` changes a topic through the server and says
    // what changed; `--json` carries the same; a bad value is a usage error
    // that changes nothing; a topic written before revisions existed (the v1
    // fixture) opens and can be altered; the audit log records the change
    // with its old and new values.
    // Method: run the commands as processes against a `stele serve` child
    // over a copy of tests/fixtures/v1.
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1"),
        dir.path(),
    );
    let audit = dir.path().join("audit.jsonl");
    let server = serve_with(dir.path(), &["--audit-log", audit.to_str().expect("UTF-8 path")]);
    let run = |args: &[&str]| {
        let output = Command::new(BIN)
            .args(args)
            .args(["--url", &server.url])
            .output()
            .expect("run stele");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stdout, _) = run(&["topic", "describe", "fixture"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("revision 0 (never changed)"), "{stdout}");

    let (code, stdout, stderr) = run(&[
        "topic",
        "alter",
        "fixture",
        "--retention-age",
        "7d",
        "--durability",
        "interval",
        "--sync-interval",
        "50ms",
        "--max-payload",
        "64KiB",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("altered topic fixture (revision 1)"), "{stdout}");
    assert!(stdout.contains("retention age: none -> 7d"), "{stdout}");
    assert!(
        stdout.contains("durability: always -> interval (50ms)"),
        "{stdout}"
    );
    assert!(stdout.contains("max payload: 1MiB -> 64KiB"), "{stdout}");

    let (code, stdout, stderr) = run(&["topic", "alter", "fixture", "--retention-age", "0", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["revision"], 2);
    assert_eq!(json["previous"]["retention_age_ms"], 7 * 24 * 3_600_000u64);
    assert!(json["settings"]["retention_age_ms"].is_null());
    assert_eq!(json["changes"][0]["option"], "retention age");

    let (code, _, stderr) = run(&["topic", "alter", "fixture", "--segment-size", "1"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("segment"), "{stderr}");
    let (code, _, stderr) = run(&["topic", "alter", "fixture"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("stele export"), "{stderr}");

    let (code, stdout, _) = run(&["topic", "describe", "fixture", "--json"]);
    assert_eq!(code, Some(0));
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["revision"], 2);
    assert_eq!(json["settings"]["payload_size_max"], 65536);
    let (_, stdout, _) = run(&["topic", "describe", "fixture"]);
    assert!(stdout.contains("revision 2, changed "), "{stdout}");

    // The audit log is written by its own thread: poll for the line.
    let started = Instant::now();
    let line = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|line| line.contains("UpdateTopic") && line.contains("revision 1"))
        {
            break line.to_string();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no UpdateTopic audit line in {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let detail = entry["detail"].as_str().expect("a detail");
    assert!(detail.contains("retention_age_ms: none -> 604800000"), "{detail}");
    assert!(
        detail.contains("durability: always -> interval(50ms)"),
        "{detail}"
    );
    assert_eq!(entry["topic"], "fixture");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
