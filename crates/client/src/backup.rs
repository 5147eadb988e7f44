//! The Backup RPC on [`Client`]: a consistent backup written by the server into
//! a directory on its own file system (FORMAT.md, "Backup").

use stele_wire::proto;

use crate::{Client, ClientResult, status_error};

/// What a backup holds and how it was made (`stele.v1.BackupResponse`).
pub use stele_wire::proto::BackupResponse as BackupSummary;

impl Client {
    /// Asks the server to back up everything it stores into `destination`, an
    /// absolute path on the server's file system that must not exist or be
    /// empty; with `incremental_from` (an earlier complete backup there),
    /// unchanged sealed segments are hard-linked from it. Returns when the
    /// backup is durable.
    ///
    /// # Errors
    /// `InvalidArgument` for a relative path; `FailedPrecondition`
    /// (`DESTINATION_NOT_EMPTY`); `DataLoss` for an `incremental_from` that is
    /// not a complete backup; `Unimplemented` on a NATS backend;
    /// `PermissionDenied` without `admin:*`.
    pub async fn backup(
        &self,
        destination: &str,
        incremental_from: Option<&str>,
    ) -> ClientResult<BackupSummary> {
        let (url, mut stub) = self.stub()?;
        Ok(stub
            .backup(proto::BackupRequest {
                destination: destination.to_string(),
                incremental_from: incremental_from.unwrap_or_default().to_string(),
            })
            .await
            .map_err(|status| status_error(&url, &status))?
            .into_inner())
    }
}
