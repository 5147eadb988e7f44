//! `stele repair`: offline, cut a damaged partition at its last good append
//! call, moving the cut bytes aside (see `stele::repair` for the rules and
//! docs/runbooks/corruption-detected.md for when to use it).

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::output::{escape, print_json};
use super::{CliError, EXIT_OK};
use stele::PartitionId;
use stele::io::StdStorage;
use stele::repair::{self, RepairPlan};

#[derive(Debug, Args)]
pub(crate) struct RepairArgs {
    /// The data directory (no server may hold it: its LOCK is taken).
    dir: PathBuf,
    /// The topic of the damaged partition.
    #[arg(long)]
    topic: String,
    /// The damaged partition.
    #[arg(long)]
    partition: u32,
    /// Print what would be cut (files, byte ranges, offsets, events) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    file: &'a str,
    base_offset: u64,
    /// Bytes kept from the start; 0 when the whole file is moved aside.
    kept_bytes: u64,
    /// The cut range `[cut_from, size_bytes)`.
    cut_from: u64,
    size_bytes: u64,
    moved_whole: bool,
}

#[derive(Serialize)]
struct DamageJson<'a> {
    file: &'a str,
    position: u64,
    reason: &'a str,
}

#[derive(Serialize)]
struct PlanJson<'a> {
    topic: &'a str,
    partition: u32,
    dry_run: bool,
    damage: Option<DamageJson<'a>>,
    /// The high watermark after the repair: offsets from here are cut.
    cut_offset: u64,
    known_end_offset: u64,
    events_lost: u64,
    segments: Vec<SegmentJson<'a>>,
    derived: &'a [String],
    /// Where the cut files were moved (absent for a dry run or an empty plan).
    saved_to: Option<String>,
}

fn plan_json<'a>(plan: &'a RepairPlan, dry_run: bool, saved_to: Option<String>) -> PlanJson<'a> {
    PlanJson {
        topic: &plan.topic,
        partition: plan.partition.0,
        dry_run,
        damage: plan.damage.as_ref().map(|damage| DamageJson {
            file: &damage.file,
            position: damage.position,
            reason: &damage.reason,
        }),
        cut_offset: plan.cut_offset.0,
        known_end_offset: plan.known_end_offset.0,
        events_lost: plan.events_lost(),
        segments: plan
            .segments
            .iter()
            .map(|cut| SegmentJson {
                file: &cut.file,
                base_offset: cut.base_offset.0,
                kept_bytes: cut.kept_bytes.unwrap_or(0),
                cut_from: cut.kept_bytes.unwrap_or(0),
                size_bytes: cut.size_bytes,
                moved_whole: cut.kept_bytes.is_none(),
            })
            .collect(),
        derived: &plan.derived,
        saved_to,
    }
}

fn print_text(plan: &RepairPlan, dry_run: bool) {
    match &plan.damage {
        Some(damage) => println!(
            "damage: {}:{}: {}",
            escape(&damage.file),
            damage.position,
            escape(&damage.reason)
        ),
        None => println!("damage: none found in the segments"),
    }
    if plan.is_empty() {
        println!("nothing to cut");
        return;
    }
    let verb = if dry_run { "would" } else { "will" };
    for cut in &plan.segments {
        match cut.kept_bytes {
            Some(kept) => println!(
                "{verb} cut {} bytes [{kept}, {}) keeping {kept} bytes",
                escape(&cut.file),
                cut.size_bytes
            ),
            None => println!(
                "{verb} move {} whole ({} bytes, from offset {})",
                escape(&cut.file),
                cut.size_bytes,
                cut.base_offset
            ),
        }
    }
    for file in &plan.derived {
        println!("{verb} move derived file {}", escape(file));
    }
    println!(
        "offsets from {} are cut: at least {} events (known end {}); the high watermark becomes {}",
        plan.cut_offset,
        plan.events_lost(),
        plan.known_end_offset,
        plan.cut_offset
    );
}

/// A name for this repair's directory: the time now, UTC, `YYYYMMDDTHHMMSSZ`,
/// and the process id (two repairs in one second do not collide).
fn stamp() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64);
    let text = stele::civil::format_timestamp_ms(now_ms);
    let compact: String = text
        .chars()
        .take(19)
        .filter(|character| character.is_ascii_digit() || *character == 'T')
        .collect();
    format!("{compact}Z-{}", std::process::id())
}

pub(crate) fn repair(args: &RepairArgs) -> Result<u8, CliError> {
    let storage = StdStorage;
    let failed = |error: stele::Error| match error.kind() {
        stele::ErrorKind::Locked => CliError::Failed(format!(
            "data directory {} is locked by another process (stop `stele serve` first: repair is offline)",
            args.dir.display()
        )),
        stele::ErrorKind::TopicNotFound | stele::ErrorKind::InvalidArgument => {
            CliError::Usage(error.to_string())
        }
        _ => CliError::Failed(format!("cannot repair: {error}")),
    };
    if !args.dir.join(stele::paths::TOPICS_DIR).is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a Stele data directory",
            args.dir.display()
        )));
    }
    let _lock = repair::lock_data_dir(&storage, &args.dir).map_err(failed)?;
    let plan = repair::plan(&storage, &args.dir, &args.topic, PartitionId(args.partition)).map_err(failed)?;
    if args.dry_run || plan.is_empty() {
        if args.json {
            print_json(&plan_json(&plan, args.dry_run, None));
        } else {
            print_text(&plan, true);
        }
        return Ok(EXIT_OK);
    }
    if !args.json {
        print_text(&plan, false);
    }
    let saved = repair::apply(&storage, &args.dir, &plan, &stamp()).map_err(failed)?;
    let saved_to = saved
        .strip_prefix(&args.dir)
        .unwrap_or(&saved)
        .display()
        .to_string();
    if args.json {
        print_json(&plan_json(&plan, false, Some(saved_to)));
    } else {
        println!("cut bytes saved in {}", escape(&saved_to));
        println!("run `stele verify` on the directory, then start the server");
    }
    Ok(EXIT_OK)
}
