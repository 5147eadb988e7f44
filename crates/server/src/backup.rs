//! The Backup RPC: `stele_engine::Log::backup` on the blocking pool, with the
//! server's own stores (webhook endpoints, tokens, consumer groups) passed in,
//! since the server, not the engine's `Log`, holds them open.
//!
//! Only a server on the embedded engine backs up; on another backend (NATS
//! JetStream, which has its own backups) the call is UNIMPLEMENTED. Backup is
//! not part of the `Backend` trait: it copies the engine's files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use stele_engine::Log;
use stele_engine::backup::{BackupOptions, BackupReport};
use stele_wire::proto;
use stele_wire::status::{OrStatus, invalid_field};
use tonic::Status;

use crate::auth::Authenticator;
use crate::group::Groups;
use crate::webhook::Dispatcher;

/// What a backup reads besides the request.
pub(crate) struct Stores {
    pub(crate) log: Option<Arc<Log>>,
    pub(crate) webhooks: Option<Arc<Dispatcher>>,
    pub(crate) groups: Option<Arc<Groups>>,
    pub(crate) auth: Arc<Authenticator>,
}

/// An absolute path from a request field, else INVALID_ARGUMENT naming it.
fn absolute(field: &str, text: &str) -> Result<PathBuf, Status> {
    if text.is_empty() {
        return Err(invalid_field(field, format!("{field} is empty")));
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(invalid_field(
            field,
            format!("{field} must be an absolute path on the server"),
        ));
    }
    Ok(path)
}

/// Runs one backup and answers its summary.
pub(crate) async fn backup(
    stores: Stores,
    request: proto::BackupRequest,
) -> Result<proto::BackupResponse, Status> {
    let Some(log) = stores.log else {
        return Err(Status::unimplemented(
            "Backup is served only on the embedded engine; a NATS JetStream backend is backed up with JetStream's own tools",
        ));
    };
    let destination = absolute("destination", &request.destination)?;
    let previous = match request.incremental_from.as_str() {
        "" => None,
        text => Some(absolute("incremental_from", text)?),
    };
    let work = move || -> stele_engine::Result<BackupReport> {
        let options = BackupOptions {
            incremental_from: previous.as_deref(),
            webhooks: stores.webhooks.as_ref().map(|webhooks| webhooks.store()),
            tokens: stores.auth.token_store(),
            groups: stores.groups.as_ref().map(|groups| groups.store()),
            progress: None,
        };
        log.backup(Path::new(&destination), options)
    };
    let report = tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Status::internal(format!("backup failed: {error}")))?
        .or_status()?;
    Ok(proto::BackupResponse {
        moment_ms: report.manifest.moment_ms,
        topics_count: report.manifest.topics_count() as u32,
        partitions_count: report.manifest.partitions.len() as u32,
        events_count: report.manifest.events_count(),
        files_copied_count: report.files_copied_count,
        bytes_copied: report.bytes_copied,
        files_linked_count: report.files_linked_count,
        bytes_linked: report.bytes_linked,
        files_reused_count: report.files_reused_count,
    })
}
