//! `stele import`: appends an export (docs/export-format.md, written by
//! `bin/stele/export.rs`) to a topic, keeping keys, each key's order and
//! sequences, types, payloads, headers and idempotency ids, so that importing
//! the same file again adds nothing.
//!
//! A thread reads and parses the file and groups it into requests: consecutive
//! events of one key with consecutive sequences become one append (one atomic
//! call), and appends in file order fill requests of at most
//! [`REQUEST_EVENTS_MAX`] events. The grouping depends only on the file, so a
//! re-import forms the same appends. The requests go in file order over one
//! `AppendSession` stream with up to `--in-flight` unanswered; the server starts
//! a session's appends in arrival order, so every partition receives its events
//! in file order (and, into an empty topic with the same partition count, at
//! the same offsets).
//!
//! Every append expects its key's previous sequence (`no events` for sequence
//! 0, else exactly `sequence - 1`). An append refused because the key already
//! holds its sequences (WRONG_EXPECTED_SEQUENCE with an actual sequence at or
//! past the append's last) was imported before and is skipped; one answered as
//! a duplicate of its idempotency ids is skipped too. One whose first events
//! the key holds (a cut file grouped the run otherwise) gets the rest appended
//! at once (see [`settle`]). Anything else (the key
//! holds fewer events than the append's predecessor, an id stored at another
//! sequence, any other refusal) stops the import: nothing after the failing
//! request is sent, the requests in flight are answered and counted, and the
//! command exits with the failure's code after printing the counts.
//!
//! Server timestamps cannot be set by a client: imported events get the
//! target's append time; with `--timestamp-header` each also carries its
//! exported timestamp in the header [`TIMESTAMP_HEADER`].

use std::collections::{HashSet, VecDeque};
use std::io::BufRead;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use stele::client::{Client, ClientError, TopicSettings};
use stele::{AppendAck, AppendRequest, Direction, Durability, ErrorKind, Event, ExpectedSequence, Sequence};

use super::export::{EndLine, EventRecord, FORMAT_VERSION, HeaderLine, with_context};
use super::output::{display_bytes, print_json};
use super::progress::Progress;
use super::{CliError, ClientArgs};

/// The header that keeps an event's exported timestamp (`--timestamp-header`):
/// Unix milliseconds in decimal ASCII.
pub(crate) const TIMESTAMP_HEADER: &str = "stele-exported-timestamp-ms";

/// Most events in one request (over all its appends).
const REQUEST_EVENTS_MAX: usize = 1000;
/// A request is sent once its events' bytes reach this.
const REQUEST_BYTES_MAX: usize = 1 << 20;
/// Most events of one append (a run of one key).
const APPEND_EVENTS_MAX: usize = 1000;
/// Requests the reader thread may have parsed ahead.
const PARSED_AHEAD_REQUESTS: usize = 16;
/// Input buffer size.
const INPUT_BUFFER_BYTES: usize = 1 << 20;

pub(crate) const IMPORT_HELP: &str = "\
Reads an export written by `stele export` (docs/export-format.md, format version 1) and
appends its events in file order, each with the key, type, payload, headers and
idempotency id it was exported with. Each append expects its key's previous sequence
(no events for sequence 0), so every key gets the same sequences as in the export, and
importing the same file again adds nothing: an event whose sequence the key already holds
is counted as skipped, one whose idempotency id the server remembers as a duplicate.
The import stops with exit code 3 when the target key's sequences disagree otherwise
(e.g. the key has fewer events than the export's predecessor of an event); everything
before the failing request was imported, and running the import again resumes it.

The target topic must exist with the export's partition count (so keys map to the same
partitions and, into an empty topic, events keep their offsets), or be created with
--create (with the export's partition count and settings). A topic with another partition
count is refused unless --allow-repartition: keys and their order and sequences are kept,
partitions and offsets are not. Timestamps are the target's append times (a client cannot
set them); --timestamp-header keeps the exported one in the header
stele-exported-timestamp-ms. A progress bar is drawn on stderr when it is a terminal
(not with --json; STELE_PROGRESS=never hides it); the counts go to stdout.";

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The export to read: a file, or - for stdin.
    #[arg(value_name = "FILE|-")]
    input: String,
    /// The topic to append to [default: the exported topic's name].
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Create the topic when it does not exist, with the export's partition count
    /// and settings.
    #[arg(long)]
    create: bool,
    /// Import into a topic with another partition count (keys, per-key order and
    /// sequences are kept; partitions and offsets are not).
    #[arg(long)]
    allow_repartition: bool,
    /// Keep each event's exported timestamp in the header stele-exported-timestamp-ms.
    #[arg(long)]
    timestamp_header: bool,
    /// Requests (of up to 1000 events each) sent and not yet answered.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    in_flight: u32,
    #[command(flatten)]
    client: ClientArgs,
}

/// Where one append of a request came from.
struct Origin {
    /// The file line of its first event.
    line: u64,
    /// The exported partition and offset of its first event.
    partition: u32,
    offset: u64,
    /// The exported sequence of its first event.
    sequence: u64,
}

/// One request: its appends in file order and where each came from.
#[derive(Default)]
struct Request {
    appends: Vec<AppendRequest>,
    origins: Vec<Origin>,
}

/// One append and its origin, as [`settle`] judges it.
struct Pending<'a> {
    append: &'a AppendRequest,
    line: u64,
    partition: u32,
    offset: u64,
    sequence: u64,
}

impl Pending<'_> {
    /// The exported sequence of its last event.
    fn last_sequence(&self) -> u64 {
        self.sequence + self.append.events.len() as u64 - 1
    }
}

/// What the reader thread hands over.
enum Parsed {
    /// A request's appends, in file order.
    Request(Request),
    /// The end line, after every event.
    End { events: u64, lines: u64 },
    /// The input is unreadable or malformed here; everything before was sent.
    Failed(CliError),
}

/// The counts an import reports.
#[derive(Debug, Default, Serialize)]
struct ImportCounts {
    /// Event lines read and sent.
    events: u64,
    /// Events appended.
    imported: u64,
    /// Events whose sequences the key already held.
    skipped: u64,
    /// Events answered as duplicates of their idempotency ids.
    duplicates: u64,
    /// Events refused (the failing append and those after it that were in flight).
    failed: u64,
    /// Appended events that got another partition or offset than exported.
    offsets_moved: u64,
}

#[derive(Serialize)]
struct ImportSummary<'a> {
    topic: &'a str,
    #[serde(flatten)]
    counts: &'a ImportCounts,
    offsets_kept: bool,
    seconds: f64,
    events_per_s: u64,
    complete: bool,
}

/// `stele import`.
pub(crate) async fn import(args: ImportArgs) -> Result<u8, CliError> {
    let started = Instant::now();
    let mut input = open_input(&args.input)?;
    let mut first = Vec::new();
    let header = read_header(&mut input, &args.input, &mut first)?;
    let topic = args.topic.clone().unwrap_or_else(|| header.topic.clone());
    let client = super::connect(&args.client).await?;
    let partitions = prepare_topic(&client, &topic, &header, &args).await?;
    let same_partitions = partitions == header.partitions;
    let total: u64 = header
        .ranges
        .iter()
        .map(|range| range.end_offset.saturating_sub(range.from_offset))
        .sum();
    let progress = Progress::events(Some(total), "import").quiet(args.client.json);

    let (sender, mut parsed) = tokio::sync::mpsc::channel(PARSED_AHEAD_REQUESTS);
    let name = input_name(&args.input);
    let timestamp_header = args.timestamp_header;
    let reader = std::thread::Builder::new()
        .name("stele-import-reader".into())
        .spawn(move || parse_input(input, &name, timestamp_header, &sender))
        .map_err(|error| CliError::Failed(format!("cannot start the import's reader: {error}")))?;

    let mut session = client.append_session().await?;
    let mut in_flight: VecDeque<(u64, Request)> = VecDeque::new();
    let mut counts = ImportCounts::default();
    let mut repaired: HashSet<Vec<u8>> = HashSet::new();
    let judged = Target {
        client: &client,
        topic: &topic,
        same_partitions,
    };
    let mut failure: Option<CliError> = None;
    let mut end: Option<(u64, u64)> = None;
    let mut reading = true;
    let mut next_id: u64 = 0;
    let in_flight_max = args.in_flight as usize;
    // Each turn sends a request or settles one; it ends when the reader is done
    // (or a failure stopped the sending) and nothing is in flight.
    loop {
        let sending = reading && failure.is_none();
        if !sending && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            item = parsed.recv(), if sending && in_flight.len() < in_flight_max => match item {
                Some(Parsed::Request(request)) => {
                    counts.events += request.appends.iter().map(|append| append.events.len() as u64).sum::<u64>();
                    if let Err(error) = session.send(next_id, &topic, &request.appends).await {
                        let error = with_context(error, "the append session ended (run the import again to resume)");
                        return Err(finish_failed(&topic, &counts, started, &args, error));
                    }
                    in_flight.push_back((next_id, request));
                    next_id += 1;
                }
                Some(Parsed::End { events, lines }) => {
                    end = Some((events, lines));
                    reading = false;
                }
                Some(Parsed::Failed(error)) => {
                    failure = Some(error);
                    reading = false;
                }
                None => reading = false,
            },
            response = session.next(), if !in_flight.is_empty() => {
                let (correlation_id, outcomes) = match response {
                    Some(Ok(response)) => response,
                    Some(Err(error)) => {
                        return Err(finish_failed(&topic, &counts, started, &args, with_context(
                            error,
                            "the append session failed (run the import again to resume)",
                        )));
                    }
                    None => {
                        return Err(finish_failed(&topic, &counts, started, &args, CliError::Unreachable(
                            "the server ended the append session (run the import again to resume)".into(),
                        )));
                    }
                };
                let (expected_id, request) = in_flight.pop_front().expect("a response answers a request in flight");
                if correlation_id != expected_id || outcomes.len() != request.appends.len() {
                    return Err(CliError::Failed(format!(
                        "the server answered request {correlation_id} with {} outcomes; expected request {expected_id} with {}",
                        outcomes.len(),
                        request.appends.len()
                    )));
                }
                for ((append, origin), outcome) in request.appends.iter().zip(&request.origins).zip(outcomes) {
                    let events = append.events.len() as u64;
                    let pending = Pending {
                        append,
                        line: origin.line,
                        partition: origin.partition,
                        offset: origin.offset,
                        sequence: origin.sequence,
                    };
                    let settled = settle(&judged, &pending, outcome, &mut counts, &mut repaired, true).await;
                    if let Err(error) = settled {
                        counts.failed += events;
                        failure.get_or_insert(error);
                    }
                    progress.inc(events);
                }
            }
        }
    }
    // A reader still running (after a failure) stops at its next send, or with
    // the process: it is not waited for, as it may be waiting for input.
    drop(parsed);
    drop(reader);
    progress.finish();
    if let Some(error) = failure {
        return Err(finish_failed(&topic, &counts, started, &args, error));
    }
    let Some((events, lines)) = end else {
        let error = CliError::Failed(format!(
            "{} ended without the export's end line (cut short?); its {} events were sent and answered",
            input_name(&args.input),
            counts.events
        ));
        return Err(finish_failed(&topic, &counts, started, &args, error));
    };
    if events != counts.events {
        return Err(finish_failed(
            &topic,
            &counts,
            started,
            &args,
            CliError::Usage(format!(
                "{}: line {lines}: the end line counts {events} events, the file has {}",
                input_name(&args.input),
                counts.events
            )),
        ));
    }
    print_summary(&topic, &counts, started, &args, true);
    Ok(0)
}

/// Prints the counts of an import that stopped, and hands its error back.
fn finish_failed(
    topic: &str,
    counts: &ImportCounts,
    started: Instant,
    args: &ImportArgs,
    error: CliError,
) -> CliError {
    print_summary(topic, counts, started, args, false);
    error
}

fn print_summary(topic: &str, counts: &ImportCounts, started: Instant, args: &ImportArgs, complete: bool) {
    let seconds = started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        (counts.events as f64 / seconds) as u64
    } else {
        0
    };
    let offsets_kept = counts.offsets_moved == 0;
    if args.client.json {
        print_json(&ImportSummary {
            topic,
            counts,
            offsets_kept,
            seconds,
            events_per_s: rate,
            complete,
        });
        return;
    }
    println!(
        "{} {} events into topic {topic} in {seconds:.2}s ({rate} events/s): {} imported, {} skipped \
         (already there), {} duplicates (by idempotency id), {} failed; {}",
        if complete { "imported" } else { "stopped after" },
        counts.events,
        counts.imported,
        counts.skipped,
        counts.duplicates,
        counts.failed,
        if offsets_kept {
            "every imported event kept its partition and offset".to_string()
        } else {
            format!(
                "{} imported events got another partition or offset",
                counts.offsets_moved
            )
        }
    );
}

/// Checks the target topic (or creates it with `--create`); returns its
/// partition count.
async fn prepare_topic(
    client: &Client,
    topic: &str,
    header: &HeaderLine,
    args: &ImportArgs,
) -> Result<u32, CliError> {
    let partitions = match client.describe_topic(topic).await {
        Ok(description) => u32::try_from(description.partitions.len()).unwrap_or(u32::MAX),
        Err(error) if error.kind() == Some(ErrorKind::TopicNotFound) && args.create => {
            let settings = &header.settings;
            let durability = match settings.durability.as_str() {
                "always" => Some(Durability::Always),
                "interval" => Some(Durability::Interval {
                    interval_ms: settings.sync_interval_ms,
                }),
                "none" => Some(Durability::None),
                _ => None,
            };
            let created = client
                .create_topic_with(
                    topic,
                    &TopicSettings {
                        partitions: Some(header.partitions),
                        durability,
                        dedup_window_ms: Some(settings.dedup_window_ms),
                        retention_age_ms: settings.retention_age_ms,
                        retention_bytes: settings.retention_bytes,
                        segment_size_bytes: Some(settings.segment_size_bytes),
                        payload_size_max: Some(settings.payload_size_max),
                    },
                )
                .await
                .map_err(|error| with_context(error, &format!("creating topic {topic}")))?;
            created.partitions
        }
        Err(error) if error.kind() == Some(ErrorKind::TopicNotFound) => {
            return Err(with_context(
                error,
                &format!(
                    "topic {topic} does not exist (pass --create to create it with the export's {} partitions and settings)",
                    header.partitions
                ),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    if partitions != header.partitions && !args.allow_repartition {
        return Err(CliError::Usage(format!(
            "topic {topic} has {partitions} partitions and the export {}: keys would map to other \
             partitions; pass --allow-repartition to import anyway (keys, their order and sequences \
             are kept, partitions and offsets are not)",
            header.partitions
        )));
    }
    Ok(partitions)
}

/// What [`settle`] judges outcomes against.
#[derive(Clone, Copy)]
struct Target<'a> {
    client: &'a Client,
    topic: &'a str,
    /// The target has the export's partition count.
    same_partitions: bool,
}

/// Accounts one append's outcome; `Err` is the failure that stops the import.
///
/// With `retry`, an append whose first events the key already holds gets its
/// other events appended (by a unary call, before later outcomes are judged),
/// and the key is `repaired`; a later append of a repaired key refused for a
/// missing predecessor is sent once more. Without it, both are failures.
async fn settle(
    target: &Target<'_>,
    pending: &Pending<'_>,
    outcome: Result<AppendAck, ClientError>,
    counts: &mut ImportCounts,
    repaired: &mut HashSet<Vec<u8>>,
    retry: bool,
) -> Result<(), CliError> {
    let Target {
        client,
        topic,
        same_partitions,
    } = *target;
    let events = pending.append.events.len() as u64;
    let last = pending.last_sequence();
    let at = || {
        format!(
            "line {}: key {} sequences {}..={last}",
            pending.line,
            display_bytes(&pending.append.key),
            pending.sequence
        )
    };
    match outcome {
        Ok(ack) if ack.first_sequence.0 != pending.sequence => Err(CliError::Failed(format!(
            "{}: the target {} them at sequence {}: the key's history differs from the export's",
            at(),
            if ack.duplicate {
                "holds their idempotency ids already,"
            } else {
                "appended"
            },
            ack.first_sequence.0
        ))),
        Ok(ack) if ack.duplicate => {
            counts.duplicates += events;
            Ok(())
        }
        Ok(ack) => {
            counts.imported += events;
            if !same_partitions
                || ack.partition.0 != pending.partition
                || ack.first_offset.0 != pending.offset
            {
                counts.offsets_moved += events;
            }
            Ok(())
        }
        Err(error) => {
            let actual = match error.kind() {
                Some(ErrorKind::WrongExpectedSequence) => {
                    error.details().and_then(|details| details.actual_sequence)
                }
                // Some of the events' ids are remembered and some not (some
                // without ids, or some ids out of the window): the key's last
                // sequence decides.
                Some(ErrorKind::PartialDuplicate) => client
                    .read_key(topic, &pending.append.key, None, Direction::Backwards, 1)
                    .await
                    .map_err(|error| with_context(error, &at()))?
                    .last_sequence
                    .map(Sequence),
                _ => return Err(with_context(error, &at())),
            };
            match actual {
                Some(actual) if actual.0 >= last => {
                    counts.skipped += events;
                    Ok(())
                }
                Some(actual) if actual.0 >= pending.sequence && retry => {
                    // The key holds the first events of this append (the
                    // file was cut inside a run by an earlier import): append
                    // the rest, at once, before any later outcome is judged.
                    let held =
                        usize::try_from(actual.0 - pending.sequence + 1).expect("below the append's count");
                    let rest = AppendRequest {
                        key: pending.append.key.clone(),
                        expected: ExpectedSequence::Exact(actual),
                        events: pending.append.events[held..].to_vec(),
                        producer: None,
                    };
                    counts.skipped += held as u64;
                    repaired.insert(pending.append.key.clone());
                    let outcome = client.append(topic, &rest).await;
                    let rest_pending = Pending {
                        append: &rest,
                        line: pending.line + held as u64,
                        partition: pending.partition,
                        offset: pending.offset + held as u64,
                        sequence: actual.0 + 1,
                    };
                    Box::pin(settle(target, &rest_pending, outcome, counts, repaired, false)).await
                }
                _ if retry && repaired.contains(&pending.append.key) => {
                    // Refused before the rest of an earlier append of this key
                    // was appended: again, now that it is.
                    let outcome = client.append(topic, pending.append).await;
                    Box::pin(settle(target, pending, outcome, counts, repaired, false)).await
                }
                actual => Err(with_context(
                    error,
                    &format!(
                        "{}: the target's key {}, but the export continues it at sequence {} (it lacks the key's earlier events: import the earlier export first, or choose another topic)",
                        at(),
                        match actual {
                            Some(actual) => format!("ends at sequence {}", actual.0),
                            None => "has no events".to_string(),
                        },
                        pending.sequence
                    ),
                )),
            }
        }
    }
}

/// The input's name in messages.
fn input_name(input: &str) -> String {
    if input == "-" {
        "stdin".to_string()
    } else {
        input.to_string()
    }
}

fn open_input(input: &str) -> Result<Box<dyn BufRead + Send>, CliError> {
    if input == "-" {
        return Ok(Box::new(std::io::BufReader::with_capacity(
            INPUT_BUFFER_BYTES,
            std::io::stdin(),
        )));
    }
    let file = std::fs::File::open(input)
        .map_err(|error| CliError::Usage(format!("cannot open {input}: {error}")))?;
    Ok(Box::new(std::io::BufReader::with_capacity(
        INPUT_BUFFER_BYTES,
        file,
    )))
}

/// Reads one line into `line` (without its line break); `false` at the end.
fn next_line(input: &mut dyn BufRead, name: &str, line: &mut Vec<u8>) -> Result<bool, CliError> {
    line.clear();
    let read = input
        .read_until(b'\n', line)
        .map_err(|error| CliError::Failed(format!("cannot read {name}: {error}")))?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok(true)
}

/// Reads and checks the header line.
fn read_header(
    input: &mut Box<dyn BufRead + Send>,
    input_path: &str,
    line: &mut Vec<u8>,
) -> Result<HeaderLine, CliError> {
    let name = input_name(input_path);
    if !next_line(input.as_mut(), &name, line)? {
        return Err(CliError::Usage(format!("{name} is empty: not a Stele export")));
    }
    let value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|error| CliError::Usage(format!("{name}: line 1: not a Stele export header: {error}")))?;
    match value.get("stele_export").and_then(serde_json::Value::as_u64) {
        Some(version) if version == u64::from(FORMAT_VERSION) => {}
        Some(version) => {
            return Err(CliError::Usage(format!(
                "{name}: export format version {version}; this stele reads version {FORMAT_VERSION}"
            )));
        }
        None => {
            return Err(CliError::Usage(format!(
                "{name}: line 1 is not a Stele export header (no \"stele_export\" version)"
            )));
        }
    }
    serde_json::from_value(value)
        .map_err(|error| CliError::Usage(format!("{name}: line 1: bad export header: {error}")))
}

/// The reader thread: parses event lines after the header and sends them as
/// requests, then the end line or the first failure.
fn parse_input(
    mut input: Box<dyn BufRead + Send>,
    name: &str,
    timestamp_header: bool,
    sender: &tokio::sync::mpsc::Sender<Parsed>,
) {
    let mut line = Vec::new();
    let mut line_number: u64 = 1;
    let mut request = Request::default();
    let mut request_events = 0usize;
    let mut request_bytes = 0usize;
    let send = |item: Parsed| sender.blocking_send(item).is_ok();
    // Bounded by the input's lines.
    loop {
        let more = match next_line(input.as_mut(), name, &mut line) {
            Ok(more) => more,
            Err(error) => {
                let _ = (request.appends.is_empty() || send(Parsed::Request(std::mem::take(&mut request))))
                    && send(Parsed::Failed(error));
                return;
            }
        };
        if !more {
            // The end line is missing: the caller reports the cut.
            if !request.appends.is_empty() {
                let _ = send(Parsed::Request(request));
            }
            return;
        }
        line_number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: EventRecord = match serde_json::from_slice(&line) {
            Ok(record) => record,
            Err(event_error) => {
                let outcome = match serde_json::from_slice::<EndLine>(&line) {
                    Ok(end) => {
                        after_end(input.as_mut(), name, &mut line, line_number).map(|()| Parsed::End {
                            events: end.stele_export_end.events,
                            lines: line_number,
                        })
                    }
                    Err(_) => Err(CliError::Usage(format!(
                        "{name}: line {line_number}: not an export event ({event_error}); every event before it was sent"
                    ))),
                };
                let item = outcome.unwrap_or_else(Parsed::Failed);
                let _ = (request.appends.is_empty() || send(Parsed::Request(std::mem::take(&mut request))))
                    && send(item);
                return;
            }
        };
        let size = record.key.0.len() + record.payload.0.len() + record.event_type.len() + 64;
        let mut event = Event {
            event_type: record.event_type,
            payload: record.payload.0,
            headers: record
                .headers
                .into_iter()
                .map(|(name, value)| (name, value.0))
                .collect(),
            idempotency_id: record.idempotency_id.map(|id| id.0).filter(|id| !id.is_empty()),
        };
        if timestamp_header {
            event.headers.push((
                TIMESTAMP_HEADER.to_string(),
                record.timestamp_ms.to_string().into_bytes(),
            ));
        }
        // A run of one key with consecutive sequences joins the last append.
        let joins = match (request.appends.last(), request.origins.last()) {
            (Some(last), Some(origin)) => {
                last.key == record.key.0
                    && origin.sequence + last.events.len() as u64 == record.sequence
                    && last.events.len() < APPEND_EVENTS_MAX
            }
            _ => false,
        };
        match request.appends.last_mut() {
            Some(last) if joins => last.events.push(event),
            _ => {
                request.appends.push(AppendRequest {
                    key: record.key.0,
                    expected: match record.sequence {
                        0 => ExpectedSequence::NoEvents,
                        sequence => ExpectedSequence::Exact(Sequence(sequence - 1)),
                    },
                    events: vec![event],
                    producer: None,
                });
                request.origins.push(Origin {
                    line: line_number,
                    partition: record.partition,
                    offset: record.offset,
                    sequence: record.sequence,
                });
            }
        }
        request_events += 1;
        request_bytes += size;
        if request_events >= REQUEST_EVENTS_MAX || request_bytes >= REQUEST_BYTES_MAX {
            if !send(Parsed::Request(std::mem::take(&mut request))) {
                return;
            }
            request_events = 0;
            request_bytes = 0;
        }
    }
}

/// Checks that nothing but blank lines follows the end line.
fn after_end(input: &mut dyn BufRead, name: &str, line: &mut Vec<u8>, end_line: u64) -> Result<(), CliError> {
    let mut line_number = end_line;
    while next_line(input, name, line)? {
        line_number += 1;
        if !line.iter().all(u8::is_ascii_whitespace) {
            return Err(CliError::Usage(format!(
                "{name}: line {line_number}: text after the export's end line (line {end_line})"
            )));
        }
    }
    Ok(())
}
