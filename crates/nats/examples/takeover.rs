//! Measures a takeover on the NATS backend: how long a Stele server's first
//! append to a partition takes when the partition already holds N events
//! (its writer reads the whole stream to rebuild the view the rules need).
//!
//! Usage: `takeover URLS [EVENTS]` (default 1,000,000 events of 100 bytes
//! over 1,000 keys, one partition). Fills the partition through one backend,
//! then opens a second one (a new connection, as another server would) and
//! times its first append, then a second. Prints one JSON line.

use std::time::{Duration, Instant};

use stele_engine::config::TopicOptions;
use stele_engine::event::{AppendRequest, Event, ExpectedSequence, Sequence};
use stele_nats::backend::NatsBackend;
use stele_nats::{NatsConfig, connect};
use stele_server::backend::Backend;

/// Events per append call while filling (one atomic batch each).
const FILL_EVENTS_PER_APPEND: usize = 1_000;
/// Append calls in flight while filling.
const FILL_IN_FLIGHT: usize = 8;
const KEYS: usize = 1_000;

async fn backend(urls: &str, namespace: &str) -> Result<NatsBackend, String> {
    let mut config: NatsConfig = urls.parse().map_err(|error| format!("{error}"))?;
    config.namespace = namespace.to_string();
    let mut connection = connect(&config)
        .await
        .map_err(|error| format!("connect: {error}"))?;
    connection.jetstream.set_timeout(Duration::from_secs(30));
    NatsBackend::open(connection, TopicOptions::default(), false)
        .await
        .map_err(|error| format!("open: {error}"))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let urls = args.next().ok_or("usage: takeover URLS [EVENTS]")?;
    let events: usize = match args.next() {
        Some(text) => text.parse().map_err(|error| format!("EVENTS: {error}"))?,
        None => 1_000_000,
    };
    let namespace = format!("takeover{}", std::process::id());
    let filler = backend(&urls, &namespace).await?;
    filler
        .create_topic("takeover", TopicOptions::default().partitions(1))
        .await
        .map_err(|error| format!("create: {error}"))?;
    let payload = vec![b'x'; 100];
    let started = Instant::now();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let calls = events.div_ceil(FILL_EVENTS_PER_APPEND);
    for call in 0..calls {
        let count = FILL_EVENTS_PER_APPEND.min(events - call * FILL_EVENTS_PER_APPEND);
        let batch = (0..count)
            .map(|_| Event::new("filled", payload.clone()))
            .collect();
        let request = AppendRequest::new(format!("k{}", call % KEYS), batch);
        in_flight.push(filler.append("takeover", vec![request]));
        if in_flight.len() >= FILL_IN_FLIGHT {
            finish_one(&mut in_flight).await?;
        }
    }
    while !in_flight.is_empty() {
        finish_one(&mut in_flight).await?;
    }
    let fill_seconds = started.elapsed().as_secs_f64();

    let taker = backend(&urls, &namespace).await?;
    // The key's sequence is known to the filler: the taker's first append
    // must see it (compare-and-set on the rebuilt view).
    let last = filler
        .read_key(
            "takeover",
            b"k0",
            None,
            stele_engine::event::Direction::Backwards,
            1,
        )
        .await
        .map_err(|error| format!("read: {error}"))?
        .last_sequence
        .ok_or("k0 has events")?;
    let started = Instant::now();
    let request = AppendRequest::new("k0", vec![Event::new("taken", payload.clone())])
        .expect(ExpectedSequence::Exact(last));
    let ack = taker
        .append("takeover", vec![request])
        .await
        .map_err(|error| format!("takeover append: {error}"))?
        .remove(0)
        .map_err(|error| format!("takeover append: {error}"))?;
    let takeover_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(ack.first_sequence, Sequence(last.0 + 1));
    assert_eq!(ack.first_offset.0, events as u64);
    let started = Instant::now();
    taker
        .append(
            "takeover",
            vec![AppendRequest::new("k1", vec![Event::new("next", payload)])],
        )
        .await
        .map_err(|error| format!("next append: {error}"))?
        .remove(0)
        .map_err(|error| format!("next append: {error}"))?;
    let next_ms = started.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{{\"scenario\":\"nats-takeover\",\"events\":{events},\"keys\":{KEYS},\"event_bytes\":100,\"fill_events_per_s\":{:.0},\"takeover_ms\":{takeover_ms:.1},\"replay_events_per_s\":{:.0},\"next_append_ms\":{next_ms:.2}}}",
        events as f64 / fill_seconds,
        events as f64 / (takeover_ms / 1000.0),
    );
    filler
        .delete_topic("takeover")
        .await
        .map_err(|error| format!("delete: {error}"))?;
    Ok(())
}

async fn finish_one(
    in_flight: &mut futures_util::stream::FuturesUnordered<
        stele_server::backend::BoxFuture<
            stele_engine::Result<Vec<stele_engine::Result<stele_engine::AppendAck>>>,
        >,
    >,
) -> Result<(), String> {
    use futures_util::StreamExt as _;
    let results = in_flight
        .next()
        .await
        .ok_or("nothing in flight")?
        .map_err(|error| format!("fill: {error}"))?;
    for result in results {
        result.map_err(|error| format!("fill: {error}"))?;
    }
    Ok(())
}
