//! `stele export`: a topic's events as JSON lines, in the format of
//! docs/export-format.md (version [`FORMAT_VERSION`]), which `stele import`
//! (`bin/stele/import.rs`) reads back.
//!
//! The file is a header line (the topic, its partition count and settings, the
//! options and the offsets exported), one line per event, and an end line with
//! the count, so a reader can tell a complete export from a cut one. Bytes
//! follow the command's scheme (`bin/stele/output.rs`): a JSON string when
//! UTF-8, else `{"base64": "..."}`.
//!
//! Export reads each partition with the Read RPC from its start offset up to
//! the high watermark it had when the export started (so it always ends), one
//! read ahead of the writer: memory holds at most two responses.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use base64::Engine as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use stele::client::{Client, ClientError};
use stele::{Durability, Offset, PartitionId, RecordedEvent, TopicOptions};

use super::output::{Bytes, json_line, to_json};
use super::progress::Progress;
use super::{CliError, ClientArgs};

/// The version of the export format this build writes, and the only one it reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Events asked for per Read call.
const READ_EVENTS_MAX: u32 = 10_000;

/// Output buffer: one write system call per this many bytes.
const OUTPUT_BUFFER_BYTES: usize = 1 << 20;

pub(crate) const EXPORT_HELP: &str = "\
The output is JSON lines (docs/export-format.md, format version 1): a header object with
the topic, its partition count and settings, the options and the offsets exported, then
one object per event (partition, offset, timestamp_ms, key, sequence, type, payload,
headers, idempotency_id, producer), then an end object with the count of events. Bytes
are a JSON string when UTF-8, else {\"base64\": \"...\"}. Each partition is exported in
offset order up to the high watermark it had when the export started; partitions follow
one another. `stele import` appends such a file to another topic. A progress bar is drawn
on stderr when it is a terminal (not with --json; STELE_PROGRESS=never hides it).";

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The topic to export.
    topic: String,
    /// Export only this partition [default: every partition].
    #[arg(long, value_name = "P")]
    partition: Option<u32>,
    /// First offset to export in each partition exported [default: the earliest
    /// retained]; a partition's earliest retained offset is used when it is later.
    #[arg(long, value_name = "OFFSET")]
    from_offset: Option<u64>,
    /// Where to write the export: a file, or - for stdout.
    #[arg(long, short = 'o', value_name = "FILE|-", default_value = "-")]
    output: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// The first line of an export.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeaderLine {
    /// The format version ([`FORMAT_VERSION`]); its presence marks the header.
    pub(crate) stele_export: u32,
    /// The topic exported.
    pub(crate) topic: String,
    /// The topic's partition count: keys map to partitions by it.
    pub(crate) partitions: u32,
    /// When the export started, Unix milliseconds, and as RFC 3339.
    pub(crate) exported_at_ms: i64,
    pub(crate) exported_at: String,
    /// The `--partition` option, null for every partition.
    pub(crate) partition: Option<u32>,
    /// The `--from-offset` option, null for the earliest.
    pub(crate) from_offset: Option<u64>,
    /// Per partition exported, the offsets `[from_offset, end_offset)` it covers.
    pub(crate) ranges: Vec<RangeJson>,
    /// The topic's settings, which `import --create` gives the new topic.
    pub(crate) settings: SettingsRecord,
}

/// One partition's exported offsets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct RangeJson {
    pub(crate) partition: u32,
    pub(crate) from_offset: u64,
    /// The high watermark when the export started.
    pub(crate) end_offset: u64,
}

/// A topic's settings as the export records them (the names of `topic
/// describe --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SettingsRecord {
    pub(crate) durability: String,
    pub(crate) sync_interval_ms: u64,
    pub(crate) dedup_window_ms: u64,
    pub(crate) retention_age_ms: Option<u64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) segment_size_bytes: u64,
    pub(crate) payload_size_max: u32,
}

impl SettingsRecord {
    fn of(options: &TopicOptions) -> SettingsRecord {
        let (durability, sync_interval_ms) = match options.durability {
            Durability::Always => ("always", 0),
            Durability::Interval { interval_ms } => ("interval", interval_ms),
            Durability::None => ("none", 0),
        };
        SettingsRecord {
            durability: durability.to_string(),
            sync_interval_ms,
            dedup_window_ms: options.dedup_window_ms,
            retention_age_ms: options.retention_age_ms,
            retention_bytes: options.retention_bytes,
            segment_size_bytes: options.segment_size_bytes_max,
            payload_size_max: options.payload_size_max,
        }
    }
}

/// The last line of an export.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EndLine {
    pub(crate) stele_export_end: EndJson,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct EndJson {
    /// Event lines between the header and this line.
    pub(crate) events: u64,
}

/// An idempotent producer's stamp, as exported (for information: import does
/// not stamp its appends).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct ProducerJson {
    pub(crate) id: u64,
    pub(crate) epoch: u32,
    pub(crate) sequence: u64,
}

/// One event line, as written.
#[derive(Serialize)]
struct EventLine<'a> {
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    key: Bytes<'a>,
    sequence: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: Bytes<'a>,
    headers: BTreeMap<&'a str, Bytes<'a>>,
    idempotency_id: Option<Bytes<'a>>,
    producer: Option<ProducerJson>,
}

impl<'a> EventLine<'a> {
    fn of(event: &'a RecordedEvent) -> EventLine<'a> {
        EventLine {
            partition: event.partition.0,
            offset: event.offset.0,
            timestamp_ms: event.timestamp_ms,
            key: Bytes(&event.key),
            sequence: event.sequence.0,
            event_type: &event.event_type,
            payload: Bytes(&event.payload),
            headers: event
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), Bytes(value)))
                .collect(),
            idempotency_id: event
                .idempotency_id
                .as_deref()
                .filter(|id| !id.is_empty())
                .map(Bytes),
            producer: event.producer.map(|stamp| ProducerJson {
                id: stamp.producer.0,
                epoch: stamp.epoch.0,
                sequence: stamp.sequence.0,
            }),
        }
    }
}

/// One event line, as read: bytes owned, in the command's scheme.
#[derive(Debug, Deserialize)]
pub(crate) struct EventRecord {
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) key: OwnedBytes,
    pub(crate) sequence: u64,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    pub(crate) payload: OwnedBytes,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, OwnedBytes>,
    #[serde(default)]
    pub(crate) idempotency_id: Option<OwnedBytes>,
    #[serde(default)]
    #[allow(
        dead_code,
        reason = "read for the format's sake; import does not stamp appends"
    )]
    pub(crate) producer: Option<ProducerJson>,
}

/// Bytes read back from the scheme: a JSON string (its UTF-8 bytes) or
/// `{"base64": "..."}` (standard alphabet, padded).
#[derive(Debug, Default)]
pub(crate) struct OwnedBytes(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for OwnedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<OwnedBytes, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OwnedBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or {\"base64\": \"...\"}")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<OwnedBytes, E> {
                Ok(OwnedBytes(text.as_bytes().to_vec()))
            }
            fn visit_string<E: serde::de::Error>(self, text: String) -> Result<OwnedBytes, E> {
                Ok(OwnedBytes(text.into_bytes()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OwnedBytes, A::Error> {
                use serde::de::Error as _;
                let mut bytes = None;
                // Bounded by the map's entries in the line.
                while let Some(name) = map.next_key::<String>()? {
                    if name != "base64" || bytes.is_some() {
                        return Err(A::Error::custom(format!(
                            "unexpected field {name:?} in a bytes object (only \"base64\")"
                        )));
                    }
                    let text: String = map.next_value()?;
                    bytes = Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(text.as_bytes())
                            .map_err(|error| A::Error::custom(format!("invalid base64: {error}")))?,
                    );
                }
                bytes
                    .map(OwnedBytes)
                    .ok_or_else(|| A::Error::custom("a bytes object without \"base64\""))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A client error with `context` before its message, keeping what decides
/// the exit code and the `--json` fields (the server's codes and details).
pub(crate) fn with_context(error: ClientError, context: &str) -> CliError {
    match error {
        ClientError::Status {
            code,
            kind,
            error_code,
            message,
            details,
        } => CliError::Client(ClientError::Status {
            code,
            kind,
            error_code,
            message: format!("{context}: {message}"),
            details,
        }),
        error @ (ClientError::Connect { .. } | ClientError::Transport { .. }) => {
            CliError::Unreachable(format!("{context}: {error}"))
        }
        error => CliError::Failed(format!("{context}: {error}")),
    }
}

/// Now, Unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Where the export goes.
enum Output {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File(std::io::BufWriter<std::fs::File>, PathBuf),
}

impl Output {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(writer) => writer,
            Output::File(writer, _) => writer,
        }
    }

    fn name(&self) -> String {
        match self {
            Output::Stdout(_) => "stdout".to_string(),
            Output::File(_, path) => path.display().to_string(),
        }
    }
}

/// Writes one value as a line. On a terminal the line is made safe to show
/// (C1 and bidirectional controls escaped too, [`json_line`]); elsewhere it is
/// serde_json's output as is.
fn write_line(output: &mut Output, terminal: bool, value: &impl Serialize) -> Result<(), CliError> {
    let name = output.name();
    let failed =
        |error: std::io::Error| CliError::Failed(format!("cannot write the export to {name}: {error}"));
    let writer = output.writer();
    if terminal {
        writer
            .write_all(json_line(&to_json(value)).as_bytes())
            .map_err(failed)?;
    } else {
        serde_json::to_writer(&mut *writer, value).map_err(|error| failed(error.into()))?;
    }
    writer.write_all(b"\n").map_err(failed)
}

/// `stele export`.
pub(crate) async fn export(args: ExportArgs) -> Result<u8, CliError> {
    let started = Instant::now();
    let client = super::connect(&args.client).await?;
    let description = client.describe_topic(&args.topic).await?;
    let partitions_count = u32::try_from(description.partitions.len()).unwrap_or(u32::MAX);
    let chosen: Vec<_> = match args.partition {
        Some(partition) => {
            let found = description
                .partitions
                .iter()
                .filter(|described| described.partition.0 == partition)
                .cloned()
                .collect::<Vec<_>>();
            if found.is_empty() {
                return Err(CliError::Usage(format!(
                    "topic {} has {partitions_count} partitions (0 to {}): there is no partition {partition}",
                    args.topic,
                    partitions_count.saturating_sub(1)
                )));
            }
            found
        }
        None => description.partitions.clone(),
    };
    let ranges: Vec<RangeJson> = chosen
        .iter()
        .map(|described| {
            let end_offset = described.high_watermark.0;
            let from_offset = args
                .from_offset
                .unwrap_or(0)
                .max(described.earliest.0)
                .min(end_offset);
            RangeJson {
                partition: described.partition.0,
                from_offset,
                end_offset,
            }
        })
        .collect();
    let exported_at_ms = now_ms();
    let header = HeaderLine {
        stele_export: FORMAT_VERSION,
        topic: description.topic.clone(),
        partitions: partitions_count,
        exported_at_ms,
        exported_at: stele::civil::format_timestamp_ms(exported_at_ms),
        partition: args.partition,
        from_offset: args.from_offset,
        ranges: ranges.clone(),
        settings: SettingsRecord::of(&description.options),
    };
    let to_stdout = args.output == "-";
    let mut output = if to_stdout {
        Output::Stdout(std::io::BufWriter::with_capacity(
            OUTPUT_BUFFER_BYTES,
            std::io::stdout(),
        ))
    } else {
        let path = PathBuf::from(&args.output);
        let file = std::fs::File::create(&path)
            .map_err(|error| CliError::Usage(format!("cannot create {}: {error}", path.display())))?;
        Output::File(std::io::BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, file), path)
    };
    let terminal = to_stdout && std::io::stdout().is_terminal();
    write_line(&mut output, terminal, &header)?;
    let total: u64 = ranges
        .iter()
        .map(|range| range.end_offset - range.from_offset)
        .sum();
    let progress = Progress::events(Some(total), "export").quiet(args.client.json);

    // One read ahead of the writer.
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(read_ranges(client, args.topic.clone(), ranges, sender));
    let mut events_count: u64 = 0;
    while let Some(batch) = receiver.recv().await {
        let events: Vec<RecordedEvent> = batch?;
        for event in &events {
            write_line(&mut output, terminal, &EventLine::of(event))?;
        }
        events_count += events.len() as u64;
        progress.inc(events.len() as u64);
    }
    reader
        .await
        .map_err(|error| CliError::Failed(format!("the export's reader failed: {error}")))?;
    write_line(
        &mut output,
        terminal,
        &EndLine {
            stele_export_end: EndJson { events: events_count },
        },
    )?;
    let name = output.name();
    let flushed = match &mut output {
        Output::Stdout(writer) => writer.flush(),
        Output::File(writer, _) => writer.flush().and_then(|()| writer.get_ref().sync_all()),
    };
    flushed.map_err(|error| CliError::Failed(format!("cannot write the export to {name}: {error}")))?;
    progress.finish();
    if !to_stdout {
        let seconds = started.elapsed().as_secs_f64();
        if args.client.json {
            super::output::print_json(&ExportSummary {
                topic: &args.topic,
                output: &name,
                events: events_count,
                seconds,
            });
        } else {
            println!(
                "exported {events_count} events of topic {} to {name} in {seconds:.2}s",
                args.topic
            );
        }
    }
    Ok(0)
}

#[derive(Serialize)]
struct ExportSummary<'a> {
    topic: &'a str,
    output: &'a str,
    events: u64,
    seconds: f64,
}

/// Reads every range in turn and sends its events in offset order, stopping
/// each partition at its range's end.
async fn read_ranges(
    client: Client,
    topic: String,
    ranges: Vec<RangeJson>,
    sender: tokio::sync::mpsc::Sender<Result<Vec<RecordedEvent>, CliError>>,
) {
    for range in ranges {
        let mut offset = range.from_offset;
        // Each read moves `offset` forwards or ends the partition.
        while offset < range.end_offset {
            let result = client
                .read(
                    &topic,
                    PartitionId(range.partition),
                    Offset(offset),
                    READ_EVENTS_MAX,
                    0,
                )
                .await
                .map_err(|error| {
                    with_context(
                        error,
                        &format!(
                            "reading partition {} of {topic} at offset {offset}",
                            range.partition
                        ),
                    )
                });
            let result = match result {
                Ok(result) => result,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            let mut events = result.events;
            events.retain(|event| event.offset.0 < range.end_offset);
            if result.next_offset.0 <= offset {
                let _ = sender
                    .send(Err(CliError::Failed(format!(
                        "partition {} of {topic} returned nothing at offset {offset} below its end {}",
                        range.partition, range.end_offset
                    ))))
                    .await;
                return;
            }
            offset = result.next_offset.0;
            if !events.is_empty() && sender.send(Ok(events)).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele::{ProducerStamp, Sequence};

    #[test]
    fn an_event_line_reads_back_as_the_event_it_was_written_from() {
        // Goal: every field of an event survives the line format, bytes that are
        // not UTF-8 included. Method: write a line, read it back, compare.
        let event = RecordedEvent {
            partition: PartitionId(3),
            offset: Offset(41),
            timestamp_ms: -5,
            key: vec![0xff, 0x00, b'k'],
            sequence: Sequence(7),
            event_type: "created".into(),
            payload: "é \"quoted\"\n".as_bytes().to_vec(),
            headers: vec![("a".into(), b"text".to_vec()), ("b".into(), vec![0xc3, 0x28])],
            idempotency_id: Some(vec![0x80]),
            producer: Some(ProducerStamp {
                producer: stele::ProducerId(9),
                epoch: stele::Epoch(2),
                sequence: Sequence(11),
            }),
        };
        let line = serde_json::to_string(&EventLine::of(&event)).expect("serialize");
        assert!(line.contains(r#""key":{"base64":"/wBr"}"#), "{line}");
        let record: EventRecord = serde_json::from_str(&line).expect("deserialize");
        assert_eq!(record.partition, 3);
        assert_eq!(record.offset, 41);
        assert_eq!(record.timestamp_ms, -5);
        assert_eq!(record.key.0, event.key);
        assert_eq!(record.sequence, 7);
        assert_eq!(record.event_type, "created");
        assert_eq!(record.payload.0, event.payload);
        let headers: Vec<(String, Vec<u8>)> = record
            .headers
            .into_iter()
            .map(|(name, value)| (name, value.0))
            .collect();
        assert_eq!(headers, event.headers);
        assert_eq!(record.idempotency_id.map(|id| id.0), event.idempotency_id);
        let producer = record.producer.expect("a producer stamp");
        assert_eq!((producer.id, producer.epoch, producer.sequence), (9, 2, 11));
    }

    #[test]
    fn bytes_objects_other_than_base64_are_refused() {
        // Goal: the bytes scheme is strict: unknown fields, bad base64 and other
        // JSON types are errors, not guesses.
        for bad in [
            r#"{"hex": "00"}"#,
            r#"{"base64": "!!"}"#,
            r#"{"base64": "AA==", "extra": 1}"#,
            r#"{}"#,
            "17",
            "null",
        ] {
            assert!(
                serde_json::from_str::<OwnedBytes>(bad).is_err(),
                "{bad} was accepted"
            );
        }
        let bytes: OwnedBytes = serde_json::from_str(r#"{"base64": "//4="}"#).expect("base64");
        assert_eq!(bytes.0, vec![0xff, 0xfe]);
        let bytes: OwnedBytes = serde_json::from_str(r#""a\u0000b""#).expect("text");
        assert_eq!(bytes.0, b"a\0b".to_vec());
    }
}
