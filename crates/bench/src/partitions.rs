//! The `partitions` scenario (Stele only, like the group scenarios): many
//! partitions on one server.
//!
//! Creates `topics` topics of `topic_partitions` partitions each (100 × 100 by
//! default: 10,000 partitions), then appends `count` single-event appends
//! spread evenly over every partition (event `i` goes to topic `i % topics`,
//! and to partition `(i / topics) % topic_partitions` of it, through a key that
//! the topic's hash sends there), pipelined over `concurrency` `AppendSession`
//! streams of `in_flight` requests each. With the server's process id it
//! reports the server's resident memory, threads and open files before the
//! topics exist, once they exist and are idle, and after the appends, with the
//! memory per partition, and the server's CPU per event.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use stele_client::Client;
use stele_engine::config::{Durability, TopicOptions};
use stele_engine::event::AppendRequest;
use stele_engine::partition_for_key;

use super::group::CpuMeter;
use super::{BenchConfig, LoadgenError, LoadgenResult, Target, deal, event, micros, status_field_kb};

/// The scenario's name.
pub const NAME: &str = "partitions";

/// Events per run when `--count` is not given: ten per partition.
pub fn count_default(config: &BenchConfig) -> u64 {
    10 * config.topics as u64 * u64::from(config.topic_partitions)
}

/// A server's resident memory (KiB), threads and open files.
fn footprint(pid: Option<u32>) -> LoadgenResult<Option<Value>> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    let fd_dir = format!("/proc/{pid}/fd");
    let open_files = std::fs::read_dir(&fd_dir)
        .map_err(|error| LoadgenError::Io(format!("{fd_dir}: {error}")))?
        .count();
    Ok(Some(json!({
        "vm_rss_kb": status_field_kb(pid, "VmRSS:")?,
        "rss_anon_kb": status_field_kb(pid, "RssAnon:")?,
        "threads": status_field_kb(pid, "Threads:")?,
        "open_files": open_files,
    })))
}

/// KiB of resident memory per partition between two footprints.
fn per_partition_kb(before: &Option<Value>, after: &Option<Value>, partitions: u64) -> Value {
    match (before, after) {
        (Some(before), Some(after)) => {
            let grown = after["vm_rss_kb"].as_i64().unwrap_or_default()
                - before["vm_rss_kb"].as_i64().unwrap_or_default();
            json!(super::round(grown as f64 / partitions.max(1) as f64, 1))
        }
        _ => Value::Null,
    }
}

/// For every partition of a topic of `partitions`, a key the topic's hash
/// sends there.
fn keys_per_partition(partitions: u32) -> Vec<Vec<u8>> {
    let mut keys: Vec<Option<Vec<u8>>> = vec![None; partitions as usize];
    let mut missing = partitions as usize;
    let mut candidate = 0u64;
    while missing > 0 {
        let key = format!("key-{candidate}").into_bytes();
        let slot = &mut keys[partition_for_key(&key, partitions).0 as usize];
        if slot.is_none() {
            *slot = Some(key);
            missing -= 1;
        }
        candidate += 1;
    }
    keys.into_iter().flatten().collect()
}

/// Runs the scenario on topics named `{base}-t{index}`.
pub(crate) async fn run(
    target: &Target,
    client: &Client,
    base: &str,
    durability: Durability,
    config: &BenchConfig,
) -> LoadgenResult<serde_json::Map<String, Value>> {
    let topics = config.topics.max(1);
    let topic_partitions = config.topic_partitions.max(1);
    let partitions = topics as u64 * u64::from(topic_partitions);
    let count = config.count.unwrap_or_else(|| count_default(config));
    let before = footprint(config.server_pid)?;
    let names: Vec<String> = (0..topics).map(|index| format!("{base}-t{index}")).collect();
    let create_started = Instant::now();
    for name in &names {
        let options = TopicOptions::default()
            .partitions(topic_partitions)
            .durability(durability);
        client.create_topic(name, &options).await?;
    }
    let create_seconds = create_started.elapsed();
    let idle = footprint(config.server_pid)?;

    let keys = keys_per_partition(topic_partitions);
    let payload = vec![b'n'; config.size];
    let requests = (0..count).map(|index| {
        let topic = (index % topics as u64) as usize;
        let partition = ((index / topics as u64) % u64::from(topic_partitions)) as usize;
        (
            index,
            topic,
            vec![AppendRequest::new(keys[partition].clone(), vec![event(&payload)])],
        )
    });
    let per_stream = deal(requests, config.concurrency);
    let mut clients = Vec::with_capacity(per_stream.len());
    for _ in 0..per_stream.len() {
        clients.push(target.connect().await?);
    }
    let cpu = CpuMeter::start(config.server_pid)?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(per_stream.len());
    for (client, requests) in clients.into_iter().zip(per_stream) {
        tasks.push(tokio::spawn(pipeline(
            client,
            names.clone(),
            requests,
            config.in_flight,
        )));
    }
    let mut latencies = Vec::with_capacity(count as usize);
    let mut errors = 0;
    for task in tasks {
        let (stream_latencies, stream_errors) = task
            .await
            .map_err(|error| LoadgenError::Failed(format!("stream task failed: {error}")))??;
        latencies.extend(stream_latencies);
        errors += stream_errors;
    }
    let elapsed = started.elapsed();
    let mut line = super::line_of(NAME, durability, config, count, elapsed, &mut latencies, errors);
    cpu.insert(&mut line, count)?;
    let appended = footprint(config.server_pid)?;
    // Every partition got its share: its key's sequence says how many.
    let mut high_watermarks = 0u64;
    for name in &names {
        let described = client.describe_topic(name).await?;
        high_watermarks += described
            .partitions
            .iter()
            .map(|partition| partition.high_watermark.0)
            .sum::<u64>();
    }
    line.insert("topics".into(), json!(topics));
    line.insert("partitions".into(), json!(partitions));
    line.insert("partitions_per_topic".into(), json!(topic_partitions));
    line.insert("streams".into(), json!(config.concurrency));
    line.insert("in_flight_per_stream".into(), json!(config.in_flight));
    line.insert(
        "create_seconds".into(),
        json!(super::round(create_seconds.as_secs_f64(), 2)),
    );
    line.insert("high_watermark_sum".into(), json!(high_watermarks));
    line.insert(
        "appends_ok".into(),
        json!(errors == 0 && high_watermarks == count),
    );
    if config.server_pid.is_some() {
        line.insert(
            "server".into(),
            json!({"before": before, "idle": idle, "after_appends": appended}),
        );
        line.insert(
            "idle_kb_per_partition".into(),
            per_partition_kb(&before, &idle, partitions),
        );
        line.insert(
            "appended_kb_per_partition".into(),
            per_partition_kb(&before, &appended, partitions),
        );
    }
    Ok(line)
}

/// One `AppendSession` with at most `window` requests in flight, each to its
/// own topic; returns a latency per request and the failed appends.
async fn pipeline(
    client: Client,
    names: Vec<String>,
    requests: Vec<(u64, usize, Vec<AppendRequest>)>,
    window: usize,
) -> LoadgenResult<(Vec<u64>, u64)> {
    let mut session = client.append_session().await?;
    let mut latencies = Vec::with_capacity(requests.len());
    let mut errors = 0u64;
    let mut sent: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let mut requests = requests.into_iter();
    let mut exhausted = false;
    loop {
        while !exhausted && sent.len() < window.max(1) {
            match requests.next() {
                Some((index, topic, appends)) => {
                    let started = Instant::now();
                    session.send(index, &names[topic], &appends).await?;
                    sent.push_back((index, started));
                }
                None => exhausted = true,
            }
        }
        let Some((index, started)) = sent.pop_front() else {
            break;
        };
        let (correlation_id, results) =
            match tokio::time::timeout(Duration::from_secs(60), session.next()).await {
                Ok(Some(response)) => response?,
                Ok(None) => return Err(LoadgenError::Failed("append session ended early".into())),
                Err(_) => return Err(LoadgenError::Failed("no answer within 60 s".into())),
            };
        latencies.push(micros(started.elapsed()));
        if correlation_id != index {
            return Err(LoadgenError::Failed(format!(
                "response for request {correlation_id} where {index} was expected"
            )));
        }
        errors += results.iter().filter(|result| result.is_err()).count() as u64;
    }
    Ok((latencies, errors))
}
