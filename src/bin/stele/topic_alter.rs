//! `stele topic alter`: change a live topic's retention, dedup window,
//! durability, segment size and payload limit, printing old -> new values.
//!
//! The partition count cannot change (a key's partition is FNV-1a 64 of the key
//! modulo the count, so another count would move keys and break their order
//! and sequences): make a new topic and copy with `stele export` / `stele import`.

use clap::Args;
use serde_json::json;
use stele::{Durability, TopicChange, TopicOptions};

use super::output::print_json;
use super::{ByteSize, CliError, ClientArgs, DurabilityArg, EXIT_OK, Millis, SettingsJson, connect};

/// The flags of `stele topic alter`, named as `stele topic create`'s.
#[derive(Debug, Args)]
pub(crate) struct AlterArgs {
    name: String,
    /// Delete sealed segments older than this (e.g. 7d); 0 removes the limit.
    #[arg(long, value_name = "DURATION")]
    retention_age: Option<Millis>,
    /// Delete the oldest sealed segments while a partition is larger (e.g. 10GiB);
    /// 0 removes the limit.
    #[arg(long, value_name = "SIZE")]
    retention_bytes: Option<ByteSize>,
    /// How long idempotency ids are remembered (e.g. 2m).
    #[arg(long, value_name = "DURATION")]
    dedup_window: Option<Millis>,
    /// When appends are acknowledged, from the next append on.
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// With --durability interval: the longest time between syncs [default: 100ms].
    #[arg(long, value_name = "DURATION", requires = "durability")]
    sync_interval: Option<Millis>,
    /// Roll the active segment at this size (e.g. 128MiB), from the next append.
    #[arg(long, value_name = "SIZE")]
    segment_size: Option<ByteSize>,
    /// Largest event payload accepted (e.g. 1MiB), from the next append.
    #[arg(long, value_name = "SIZE")]
    max_payload: Option<ByteSize>,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `stele topic alter`.
pub(crate) async fn run(args: AlterArgs) -> Result<u8, CliError> {
    let limit = |value: u64| (value != 0).then_some(value);
    let durability = match args.durability {
        Some(DurabilityArg::Interval) => Some(Durability::Interval {
            interval_ms: args
                .sync_interval
                .map_or(stele::config::SYNC_INTERVAL_MS_DEFAULT, |interval| interval.0),
        }),
        Some(other) if args.sync_interval.is_some() => {
            return Err(CliError::Usage(format!(
                "--sync-interval needs --durability interval, not {other}"
            )));
        }
        Some(other) => Some(other.durability(0)),
        None => None,
    };
    let payload_size_max = args
        .max_payload
        .map(|size| {
            u32::try_from(size.0).map_err(|_| CliError::Usage(format!("--max-payload {size} is too large")))
        })
        .transpose()?;
    let change = TopicChange {
        retention_age_ms: args.retention_age.map(|age| limit(age.0)),
        retention_bytes: args.retention_bytes.map(|size| limit(size.0)),
        dedup_window_ms: args.dedup_window.map(|window| window.0),
        durability,
        segment_size_bytes_max: args.segment_size.map(|size| size.0),
        payload_size_max,
    };
    if change.is_empty() {
        return Err(CliError::Usage(
            "nothing to change: give at least one of --retention-age, --retention-bytes, --dedup-window, \
             --durability, --segment-size, --max-payload (the partition count cannot change: make a new \
             topic and copy with `stele export` and `stele import`)"
                .to_string(),
        ));
    }
    let update = connect(&args.client)
        .await?
        .update_topic(&args.name, &change)
        .await?;
    let changes = differences(&update.previous, &update.options);
    if args.client.json {
        print_json(&json!({
            "topic": args.name,
            "revision": update.revision,
            "changed_ms": update.changed_ms,
            "previous": SettingsJson::of(&update.previous),
            "settings": SettingsJson::of(&update.options),
            "changes": changes
                .iter()
                .map(|(option, from, to)| json!({ "option": option, "from": from, "to": to }))
                .collect::<Vec<_>>(),
        }));
    } else if changes.is_empty() {
        println!(
            "topic {}: nothing changed (revision {})",
            args.name, update.revision
        );
    } else {
        println!("altered topic {} (revision {}):", args.name, update.revision);
        for (option, from, to) in &changes {
            println!("  {option}: {from} -> {to}");
        }
    }
    Ok(EXIT_OK)
}

/// The options `alter` can change that differ, as (option, old, new) in the
/// units the flags take.
fn differences(previous: &TopicOptions, next: &TopicOptions) -> Vec<(&'static str, String, String)> {
    let age = |value: Option<u64>| value.map_or_else(|| "none".to_string(), |ms| Millis(ms).to_string());
    let size =
        |value: Option<u64>| value.map_or_else(|| "none".to_string(), |bytes| ByteSize(bytes).to_string());
    let durability = |durability: Durability| match durability {
        Durability::Interval { interval_ms } => format!("interval ({})", Millis(interval_ms)),
        other => other.to_string(),
    };
    [
        (
            "retention age",
            age(previous.retention_age_ms),
            age(next.retention_age_ms),
        ),
        (
            "retention bytes",
            size(previous.retention_bytes),
            size(next.retention_bytes),
        ),
        (
            "dedup window",
            Millis(previous.dedup_window_ms).to_string(),
            Millis(next.dedup_window_ms).to_string(),
        ),
        (
            "durability",
            durability(previous.durability),
            durability(next.durability),
        ),
        (
            "segment size",
            ByteSize(previous.segment_size_bytes_max).to_string(),
            ByteSize(next.segment_size_bytes_max).to_string(),
        ),
        (
            "max payload",
            ByteSize(u64::from(previous.payload_size_max)).to_string(),
            ByteSize(u64::from(next.payload_size_max)).to_string(),
        ),
    ]
    .into_iter()
    .filter(|(_, from, to)| from != to)
    .collect()
}
