//! `stele backup` (through the server's Backup RPC, while it takes writes) and
//! `stele restore` (offline: checks every checksum of the backup's MANIFEST,
//! copies the files into a new data directory, then verifies it).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;
use stele::backup::RestoreReport;
use stele::civil::format_timestamp_ms;

use super::output::{escape, print_json};
use super::{CliError, ClientArgs, EXIT_OK, EXIT_PROBLEMS, connect};

pub(crate) const BACKUP_HELP: &str = "\
The server writes the backup into DEST on its own file system (an absolute path that does
not exist or is an empty directory), consistent as of one moment, while it keeps taking
writes; sealed segments are hard-linked when DEST is on the data directory's file system.
With --incremental-from PREV (an earlier backup on the server), sealed segments unchanged
since PREV are hard-linked from it instead of read again: every backup directory stays
complete on its own. A backup is complete once its MANIFEST exists.
Restore it with `stele restore DEST DIR` while no server runs on DIR.";

pub(crate) const RESTORE_HELP: &str = "\
Checks the size and CRC-32C of every file the backup's MANIFEST lists (nothing is written
when one is wrong: the error names the file), refuses a DIR that exists and is not empty,
copies the files, syncs them, then runs `stele verify` on DIR. Exit code 0 when DIR verifies
clean, 1 when verify finds problems. Start a server on DIR afterwards: it serves exactly
the events the backup holds (the MANIFEST's high watermarks).";

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// Where the server writes the backup: an absolute path on the server's file system.
    dest: String,
    /// An earlier complete backup (absolute path on the server) to reuse unchanged
    /// sealed segments from.
    #[arg(long, value_name = "PREV")]
    incremental_from: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup directory (holding a MANIFEST).
    src: PathBuf,
    /// The data directory to create; must not exist or be empty.
    dir: PathBuf,
    /// Print the result as one JSON object (and verify's problems as JSON lines).
    #[arg(long)]
    json: bool,
}

pub(crate) async fn backup(args: BackupArgs) -> Result<u8, CliError> {
    let client = connect(&args.client).await?;
    let summary = client
        .backup(&args.dest, args.incremental_from.as_deref())
        .await?;
    if args.client.json {
        print_json(&json!({
            "destination": args.dest,
            "incremental_from": args.incremental_from,
            "moment_ms": summary.moment_ms,
            "topics": summary.topics_count,
            "partitions": summary.partitions_count,
            "events": summary.events_count,
            "files_copied": summary.files_copied_count,
            "bytes_copied": summary.bytes_copied,
            "files_linked": summary.files_linked_count,
            "bytes_linked": summary.bytes_linked,
            "files_reused": summary.files_reused_count,
        }));
    } else {
        println!(
            "backup {} as of {}: {} topics, {} partitions, {} events",
            escape(&args.dest),
            format_timestamp_ms(summary.moment_ms),
            summary.topics_count,
            summary.partitions_count,
            summary.events_count
        );
        println!(
            "copied {} files ({} bytes), linked {} files ({} bytes), {} of them from the earlier backup",
            summary.files_copied_count,
            summary.bytes_copied,
            summary.files_linked_count,
            summary.bytes_linked,
            summary.files_reused_count
        );
    }
    Ok(EXIT_OK)
}

/// The error of a restore: bad arguments are usage errors, the rest failures.
fn restore_error(error: stele::Error) -> CliError {
    match error.kind() {
        stele::ErrorKind::InvalidArgument | stele::ErrorKind::DestinationNotEmpty => {
            CliError::Usage(error.to_string())
        }
        _ => CliError::Failed(format!("restore refused: {error}")),
    }
}

pub(crate) fn restore(args: &RestoreArgs) -> Result<u8, CliError> {
    let dir = std::path::absolute(&args.dir)
        .map_err(|error| CliError::Usage(format!("cannot resolve {}: {error}", args.dir.display())))?;
    // The bar starts at the first report, which says how many bytes there are.
    let bar: std::sync::Mutex<Option<(crate::progress::Progress, u64)>> = std::sync::Mutex::new(None);
    let report_progress = |done: u64, total: u64| {
        let mut bar = bar.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (progress, shown) = bar.get_or_insert_with(|| {
            (
                crate::progress::Progress::bytes(Some(total), "restore").quiet(args.json),
                0,
            )
        });
        progress.inc(done.saturating_sub(*shown));
        *shown = done.max(*shown);
    };
    let restored = stele::backup::restore(&args.src, &dir, Some(&report_progress));
    if let Some((progress, _)) = bar
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        progress.finish();
    }
    let report: RestoreReport = restored.map_err(restore_error)?;
    let verify_progress =
        crate::progress::Progress::bytes(Some(crate::progress::dir_size_bytes(&dir)), "verify")
            .quiet(args.json);
    let verified = stele::verify::verify_dir_with_progress(&dir, &mut |bytes| verify_progress.inc(bytes))
        .map_err(|error| CliError::Failed(format!("cannot verify {}: {error}", dir.display())))?;
    verify_progress.finish();
    let manifest = &report.manifest;
    if args.json {
        for problem in &verified.problems {
            println!(
                "{}",
                json!({
                    "severity": "problem",
                    "path": problem.path.display().to_string(),
                    "position": problem.position,
                    "message": problem.message,
                })
            );
        }
        let partitions: Vec<_> = manifest
            .partitions
            .iter()
            .map(|partition| {
                json!({
                    "topic": partition.topic,
                    "partition": partition.partition.0,
                    "earliest": partition.earliest.0,
                    "high_watermark": partition.high_watermark.0,
                })
            })
            .collect();
        print_json(&json!({
            "restored": dir.display().to_string(),
            "moment_ms": manifest.moment_ms,
            "files": report.files_count,
            "bytes": report.bytes,
            "events": manifest.events_count(),
            "partitions": partitions,
            "verify_problems": verified.problems.len(),
            "verify_notes": verified.notes.len(),
        }));
    } else {
        for problem in &verified.problems {
            println!("{problem}");
        }
        println!(
            "restored {} as of {}: {} files ({} bytes), {} topics, {} partitions, {} events",
            escape(&dir.display().to_string()),
            format_timestamp_ms(manifest.moment_ms),
            report.files_count,
            report.bytes,
            manifest.topics_count(),
            manifest.partitions.len(),
            manifest.events_count()
        );
        eprintln!(
            "stele: verify checked {} files, {} records: {} problems, {} notes",
            verified.files_checked,
            verified.records_checked,
            verified.problems.len(),
            verified.notes.len()
        );
    }
    Ok(if verified.is_clean() {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}
