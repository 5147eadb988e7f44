//! `stele export` and `stele import` end to end: two real servers (in-process,
//! on free ports), the `stele` binary run as a child against them, and the
//! events compared one by one through the client afterwards.
//!
//! The source topic gets events on many keys, with and without idempotency
//! ids, with headers, and with keys, payloads and header values that are not
//! UTF-8, appended both one event per append (interleaving keys) and several
//! events per append. The checks: the import keeps keys, sequences, types,
//! payloads, headers and ids (and offsets into an empty topic with the same
//! partition count); a re-import adds nothing and says so in its counts; a
//! garbled or cut input stops with its line number after importing everything
//! before it; another partition count is refused unless allowed; a key whose
//! earlier events the target lacks is refused; progress bars stay off stderr
//! when it is not a terminal, and show on one.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use stele::client::{Client, TestServer, TopicSettings, start_test_server};
use stele::{AppendRequest, Event, Offset, PartitionId, RecordedEvent};

const BIN: &str = env!("CARGO_BIN_EXE_stele");
const PARTITIONS: u32 = 4;
const KEYS: usize = 40;
const ROUNDS: usize = 12;

/// A `stele` command without the caller's `STELE_*` settings.
fn stele(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("STELE_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a `stele` command off the runtime's threads (the servers run on them).
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stele(&args).output().expect("run stele")
    })
    .await
    .expect("the command's thread")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The key of index `index`: text for most, bytes that are not UTF-8 for every
/// seventh.
fn key(index: usize) -> Vec<u8> {
    if index % 7 == 3 {
        vec![0xff, 0xfe, u8::try_from(index).expect("small index"), b'k']
    } else {
        format!("key-{index}").into_bytes()
    }
}

/// The event `round` of key `index`: ids on two of three, headers on some,
/// payloads that are not UTF-8 on some.
fn event(index: usize, round: usize) -> Event {
    let payload = if (index + round).is_multiple_of(5) {
        vec![0x80, 0xff, 0x00, u8::try_from(round).expect("small round")]
    } else {
        format!("payload {index}/{round} \"quoted\" é").into_bytes()
    };
    let mut event = Event::new(format!("type-{}", round % 3), payload);
    if !(index + round).is_multiple_of(3) {
        event = event.with_idempotency_id(format!("id-{index}-{round}"));
    }
    if round.is_multiple_of(2) {
        event = event
            .with_header("source", "test")
            .with_header("raw", vec![0xc3, 0x28]);
    }
    event
}

/// Fills `topic` on the source: ROUNDS rounds over KEYS keys of single-event
/// appends, each round in one AppendBatch call (keys interleave within each
/// partition), then one append of three events per key. Returns the count.
async fn fill(client: &Client, topic: &str) -> u64 {
    let mut count = 0;
    for round in 0..ROUNDS {
        let appends: Vec<AppendRequest> = (0..KEYS)
            .map(|index| AppendRequest::new(key(index), vec![event(index, round)]))
            .collect();
        for result in client.append_batch(topic, &appends).await.expect("append batch") {
            result.expect("append");
            count += 1;
        }
    }
    for index in 0..KEYS {
        let events = (ROUNDS..ROUNDS + 3).map(|round| event(index, round)).collect();
        client
            .append(topic, &AppendRequest::new(key(index), events))
            .await
            .expect("append three");
        count += 3;
    }
    count
}

async fn create(client: &Client, topic: &str, partitions: u32) {
    client
        .create_topic_with(
            topic,
            &TopicSettings {
                partitions: Some(partitions),
                ..TopicSettings::default()
            },
        )
        .await
        .expect("create topic");
}

/// Every event of `topic`, partition by partition in offset order.
async fn all_events(client: &Client, topic: &str) -> Vec<RecordedEvent> {
    let description = client.describe_topic(topic).await.expect("describe");
    let mut events = Vec::new();
    for partition in &description.partitions {
        let mut offset = partition.earliest;
        while offset < partition.high_watermark {
            let result = client
                .read(topic, partition.partition, offset, 0, 0)
                .await
                .expect("read");
            assert!(result.next_offset > offset, "a read moves forwards");
            offset = result.next_offset;
            events.extend(
                result
                    .events
                    .into_iter()
                    .filter(|event| event.offset < partition.high_watermark),
            );
        }
    }
    events
}

/// What import must keep of an event (not its timestamp or producer stamp).
type Kept = (
    Vec<u8>,
    u64,
    String,
    Vec<u8>,
    Vec<(String, Vec<u8>)>,
    Option<Vec<u8>>,
);

fn kept(event: &RecordedEvent) -> Kept {
    (
        event.key.clone(),
        event.sequence.0,
        event.event_type.clone(),
        event.payload.clone(),
        event.headers.clone(),
        event.idempotency_id.clone(),
    )
}

/// The events by key and sequence.
fn by_key(events: &[RecordedEvent]) -> BTreeMap<(Vec<u8>, u64), Kept> {
    events
        .iter()
        .map(|event| ((event.key.clone(), event.sequence.0), kept(event)))
        .collect()
}

async fn export(server: &TestServer, topic: &str, file: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "export".to_string(),
        topic.to_string(),
        "--output".to_string(),
        file.display().to_string(),
        "--url".to_string(),
        server.url(),
        "--json".to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_string()));
    run(args).await
}

async fn import(server: &TestServer, file: &Path, topic: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "import".to_string(),
        file.display().to_string(),
        "--topic".to_string(),
        topic.to_string(),
        "--url".to_string(),
        server.url(),
        "--json".to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_string()));
    run(args).await
}

/// The summary object an import printed on stdout.
fn summary(output: &Output) -> serde_json::Value {
    let stdout = text(&output.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no summary; stderr: {}", text(&output.stderr)));
    serde_json::from_str(line).expect("the summary is JSON")
}

fn count(summary: &serde_json::Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keeps_every_event_and_a_second_import_adds_nothing() {
    // Goal: keys, sequences, types, payloads, headers, ids and (same partition
    // count, empty target) partitions and offsets survive export and import;
    // importing the same file again appends nothing and counts every event as
    // skipped or duplicate. Method: fill a source, export to a file, import into
    // a second server with --create, compare event by event, import again.
    let source = start_test_server().await;
    let target = start_test_server().await;
    create(&source.client, "orders", PARTITIONS).await;
    let appended = fill(&source.client, "orders").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("orders.jsonl");

    let exported = export(&source, "orders", &file, &[]).await;
    assert!(exported.status.success(), "export: {}", text(&exported.stderr));
    assert_eq!(
        text(&exported.stderr),
        "",
        "no progress or noise on a piped stderr"
    );
    let summary_line: serde_json::Value = serde_json::from_slice(&exported.stdout).expect("export summary");
    assert_eq!(summary_line["events"].as_u64(), Some(appended));
    let contents = std::fs::read_to_string(&file).expect("read export");
    let lines: Vec<&str> = contents.lines().collect();
    assert_eq!(lines.len() as u64, appended + 2, "header, events, end");
    let header: serde_json::Value = serde_json::from_str(lines[0]).expect("header");
    assert_eq!(header["stele_export"], 1);
    assert_eq!(header["topic"], "orders");
    assert_eq!(header["partitions"], PARTITIONS);
    let end: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).expect("end");
    assert_eq!(end["stele_export_end"]["events"].as_u64(), Some(appended));
    assert!(
        contents.contains("{\"base64\":"),
        "bytes that are not UTF-8 are written as base64 objects"
    );

    let imported = import(&target, &file, "copy", &["--create"]).await;
    assert!(imported.status.success(), "import: {}", text(&imported.stderr));
    assert_eq!(
        text(&imported.stderr),
        "",
        "no progress or noise on a piped stderr"
    );
    let first = summary(&imported);
    assert_eq!(count(&first, "events"), appended);
    assert_eq!(count(&first, "imported"), appended);
    assert_eq!(count(&first, "skipped"), 0);
    assert_eq!(count(&first, "duplicates"), 0);
    assert_eq!(count(&first, "failed"), 0);
    assert_eq!(first["offsets_kept"], true);

    let original = all_events(&source.client, "orders").await;
    let copy = all_events(&target.client, "copy").await;
    assert_eq!(original.len() as u64, appended);
    assert_eq!(copy.len(), original.len());
    for (was, now) in original.iter().zip(&copy) {
        assert_eq!(
            (now.partition, now.offset),
            (was.partition, was.offset),
            "same place"
        );
        assert_eq!(
            kept(now),
            kept(was),
            "same event at {}/{}",
            was.partition.0,
            was.offset.0
        );
    }
    let description = target.client.describe_topic("copy").await.expect("describe copy");
    assert_eq!(description.partitions.len() as u32, PARTITIONS);

    let again = import(&target, &file, "copy", &[]).await;
    assert!(again.status.success(), "re-import: {}", text(&again.stderr));
    let second = summary(&again);
    assert_eq!(count(&second, "imported"), 0, "{second}");
    assert_eq!(count(&second, "failed"), 0, "{second}");
    assert_eq!(
        count(&second, "skipped") + count(&second, "duplicates"),
        appended,
        "{second}"
    );
    assert!(
        count(&second, "duplicates") > 0,
        "ids in the window answer duplicate: {second}"
    );
    assert!(
        count(&second, "skipped") > 0,
        "events without ids are skipped by sequence: {second}"
    );
    let after = all_events(&target.client, "copy").await;
    assert_eq!(after.len(), copy.len(), "the re-import appended nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_or_cut_input_stops_at_its_line_after_importing_everything_before() {
    // Goal: a malformed line is refused naming its line number, and every event
    // on the lines before it is in the target; a file cut at a line boundary
    // (no end line) imports everything and still fails. Method: damage an
    // export's line 101 (event 100) and import; then cut the file after it.
    let source = start_test_server().await;
    let target = start_test_server().await;
    create(&source.client, "orders", PARTITIONS).await;
    fill(&source.client, "orders").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("orders.jsonl");
    let exported = export(&source, "orders", &file, &[]).await;
    assert!(exported.status.success(), "export: {}", text(&exported.stderr));
    let contents = std::fs::read_to_string(&file).expect("read export");
    let lines: Vec<&str> = contents.lines().collect();
    let expected: Vec<serde_json::Value> = lines[1..101]
        .iter()
        .map(|line| serde_json::from_str(line).expect("event line"))
        .collect();

    let garbled = dir.path().join("garbled.jsonl");
    let mut damaged: Vec<String> = lines.iter().map(|line| (*line).to_string()).collect();
    damaged[101] = damaged[101][..damaged[101].len() / 2].to_string();
    std::fs::write(&garbled, damaged.join("\n") + "\n").expect("write garbled");
    let refused = import(&target, &garbled, "copy", &["--create"]).await;
    assert_eq!(
        refused.status.code(),
        Some(2),
        "stderr: {}",
        text(&refused.stderr)
    );
    let error: serde_json::Value = serde_json::from_slice(&refused.stderr).expect("a JSON error");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(message.contains("line 102"), "names the line: {message}");
    let stopped = summary(&refused);
    assert_eq!(count(&stopped, "imported"), 100, "{stopped}");
    assert_eq!(stopped["complete"], false);
    let copy = all_events(&target.client, "copy").await;
    assert_eq!(copy.len(), 100, "exactly the events before the bad line");
    let copied = by_key(&copy);
    for line in &expected {
        let key = match &line["key"] {
            serde_json::Value::String(text) => text.as_bytes().to_vec(),
            other => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(other["base64"].as_str().expect("base64 key"))
                    .expect("decodes")
            }
        };
        let sequence = line["sequence"].as_u64().expect("sequence");
        assert!(copied.contains_key(&(key, sequence)), "event {line} was imported");
    }

    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, lines[..101].join("\n") + "\n").expect("write cut");
    let resumed = import(&target, &cut, "copy", &[]).await;
    assert_eq!(
        resumed.status.code(),
        Some(1),
        "stderr: {}",
        text(&resumed.stderr)
    );
    assert!(
        text(&resumed.stderr).contains("without the export's end line"),
        "stderr: {}",
        text(&resumed.stderr)
    );
    let counts = summary(&resumed);
    assert_eq!(count(&counts, "events"), 100, "{counts}");
    assert_eq!(count(&counts, "imported"), 0, "{counts}");
    assert_eq!(all_events(&target.client, "copy").await.len(), 100);

    // The whole file finishes the import: the rest is appended, nothing twice.
    let finished = import(&target, &file, "copy", &[]).await;
    assert!(finished.status.success(), "import: {}", text(&finished.stderr));
    let counts = summary(&finished);
    assert_eq!(
        count(&counts, "imported") as usize,
        lines.len() - 2 - 100,
        "{counts}"
    );
    assert_eq!(
        by_key(&all_events(&target.client, "copy").await),
        by_key(&all_events(&source.client, "orders").await)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_partition_count_is_refused_unless_allowed_and_then_keeps_keys_and_sequences() {
    // Goal: a target with another partition count is refused (exit 2), and with
    // --allow-repartition every key gets its events in order with its
    // sequences, offsets reported as moved. Method: import into a topic of 3
    // partitions made beforehand.
    let source = start_test_server().await;
    let target = start_test_server().await;
    create(&source.client, "orders", PARTITIONS).await;
    let appended = fill(&source.client, "orders").await;
    create(&target.client, "three", 3).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("orders.jsonl");
    assert!(export(&source, "orders", &file, &[]).await.status.success());

    let refused = import(&target, &file, "three", &[]).await;
    assert_eq!(
        refused.status.code(),
        Some(2),
        "stderr: {}",
        text(&refused.stderr)
    );
    assert!(
        text(&refused.stderr).contains("--allow-repartition"),
        "{}",
        text(&refused.stderr)
    );
    assert!(all_events(&target.client, "three").await.is_empty());

    let allowed = import(&target, &file, "three", &["--allow-repartition"]).await;
    assert!(allowed.status.success(), "import: {}", text(&allowed.stderr));
    let counts = summary(&allowed);
    assert_eq!(count(&counts, "imported"), appended);
    assert_eq!(counts["offsets_kept"], false);
    let copy = all_events(&target.client, "three").await;
    assert_eq!(by_key(&copy), by_key(&all_events(&source.client, "orders").await));
    // Per key, offsets grow with sequences (the order within the key is kept).
    let mut last: BTreeMap<Vec<u8>, (u64, Offset, PartitionId)> = BTreeMap::new();
    for event in &copy {
        if let Some((sequence, offset, partition)) = last.get(&event.key) {
            assert_eq!(*partition, event.partition, "one key, one partition");
            assert!(event.sequence.0 > *sequence && event.offset > *offset);
        }
        last.insert(
            event.key.clone(),
            (event.sequence.0, event.offset, event.partition),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_its_earlier_events_in_the_target_is_refused_as_a_conflict() {
    // Goal: an export that starts inside keys' histories (--from-offset) cannot
    // go into a topic lacking their earlier events: exit 3 with the server's
    // WRONG_EXPECTED_SEQUENCE and the key's actual sequence. Method: export
    // partition 0 from offset 50, import into a fresh topic.
    let source = start_test_server().await;
    let target = start_test_server().await;
    create(&source.client, "orders", PARTITIONS).await;
    fill(&source.client, "orders").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("tail.jsonl");
    let exported = export(
        &source,
        "orders",
        &file,
        &["--partition", "0", "--from-offset", "50"],
    )
    .await;
    assert!(exported.status.success(), "export: {}", text(&exported.stderr));
    let contents = std::fs::read_to_string(&file).expect("read export");
    let first: serde_json::Value =
        serde_json::from_str(contents.lines().nth(1).expect("an event")).expect("event");
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 50);
    assert!(first["sequence"].as_u64().expect("sequence") > 0);

    let refused = import(&target, &file, "copy", &["--create"]).await;
    assert_eq!(
        refused.status.code(),
        Some(3),
        "stderr: {}",
        text(&refused.stderr)
    );
    let error: serde_json::Value = serde_json::from_slice(&refused.stderr).expect("a JSON error");
    assert_eq!(error["error"]["code"], "WRONG_EXPECTED_SEQUENCE", "{error}");
    let message = error["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("line 2") && message.contains("has no events"),
        "{message}"
    );
    let counts = summary(&refused);
    assert_eq!(count(&counts, "imported"), 0, "{counts}");
    assert!(count(&counts, "failed") > 0, "{counts}");
    assert!(all_events(&target.client, "copy").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_show_on_a_terminal_only() {
    // Goal: export, import and verify draw nothing on a stderr that is not a
    // terminal, and do draw on one. Method: run them with piped stderr, then
    // under `script` (a pseudo-terminal) and look for the bar's "ETA".
    let source = start_test_server().await;
    create(&source.client, "orders", PARTITIONS).await;
    fill(&source.client, "orders").await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("orders.jsonl");
    let url = source.url();
    let file_arg = file.display().to_string();

    let piped = run(vec![
        "export".into(),
        "orders".into(),
        "--output".into(),
        file_arg.clone(),
        "--url".into(),
        url.clone(),
    ])
    .await;
    assert!(piped.status.success(), "export: {}", text(&piped.stderr));
    assert_eq!(text(&piped.stderr), "");
    let verified = run(vec!["verify".into(), source.data_dir().display().to_string()]).await;
    assert!(
        !text(&verified.stderr).contains("ETA"),
        "{}",
        text(&verified.stderr)
    );

    let shell = format!("{BIN} export orders --output {file_arg}.2 --url {url}");
    let terminal = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &shell, "/dev/null"])
            .env_remove("STELE_PROGRESS")
            .output()
            .expect("run script")
    })
    .await
    .expect("the command's thread");
    assert!(terminal.status.success(), "script: {}", text(&terminal.stderr));
    let screen = text(&terminal.stdout);
    assert!(
        screen.contains("export") && screen.contains("ETA"),
        "a bar on the terminal: {screen:?}"
    );
}
