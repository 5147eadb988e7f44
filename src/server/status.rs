//! The one place that maps engine errors to gRPC statuses.
//!
//! Each `ErrorKind` has a fixed `ErrorCode` (in `proto/stele/v1/stele.proto`),
//! sent as an encoded `ErrorDetail` in the status details and as text in the
//! `stele-error-code` trailer. Codes are never reused or renumbered.

use prost::Message;
use tonic::{Code, Status};

use super::proto::{ErrorCode, ErrorDetail};
use crate::error::{Error, ErrorKind};

/// The metadata key carrying the numeric error code.
pub const ERROR_CODE_METADATA: &str = "stele-error-code";

/// The stable code of an error kind.
pub fn error_code(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::Io => ErrorCode::Io,
        ErrorKind::DiskFull => ErrorCode::DiskFull,
        ErrorKind::Corruption => ErrorCode::Corruption,
        ErrorKind::Inconsistent => ErrorCode::Inconsistent,
        ErrorKind::Config => ErrorCode::Config,
        ErrorKind::InvalidArgument => ErrorCode::InvalidArgument,
        ErrorKind::LimitExceeded => ErrorCode::LimitExceeded,
        ErrorKind::TopicNotFound => ErrorCode::TopicNotFound,
        ErrorKind::TopicExists => ErrorCode::TopicExists,
        ErrorKind::WrongExpectedSequence => ErrorCode::WrongExpectedSequence,
        ErrorKind::PartialDuplicate => ErrorCode::PartialDuplicate,
        ErrorKind::RepeatedIdempotencyId => ErrorCode::RepeatedIdempotencyId,
        ErrorKind::IdempotencyIdReused => ErrorCode::IdempotencyIdReused,
        ErrorKind::ProducerFenced => ErrorCode::ProducerFenced,
        ErrorKind::UnknownProducer => ErrorCode::UnknownProducer,
        ErrorKind::ProducerOutOfOrder => ErrorCode::ProducerOutOfOrder,
        ErrorKind::OffsetOutOfRange => ErrorCode::OffsetOutOfRange,
        ErrorKind::CursorNotFound => ErrorCode::CursorNotFound,
        ErrorKind::CursorBackwards => ErrorCode::CursorBackwards,
        ErrorKind::CursorAheadOfHighWatermark => ErrorCode::CursorAheadOfHighWatermark,
        ErrorKind::Poisoned => ErrorCode::Poisoned,
        ErrorKind::Locked => ErrorCode::Locked,
        ErrorKind::Closed => ErrorCode::Closed,
        ErrorKind::WebhookNotFound => ErrorCode::WebhookNotFound,
        ErrorKind::WebhookExists => ErrorCode::WebhookExists,
    }
}

/// The gRPC code of an error kind.
pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::WrongExpectedSequence
        | ErrorKind::PartialDuplicate
        | ErrorKind::IdempotencyIdReused
        | ErrorKind::ProducerOutOfOrder
        | ErrorKind::CursorBackwards
        | ErrorKind::CursorAheadOfHighWatermark => Code::FailedPrecondition,
        ErrorKind::TopicNotFound | ErrorKind::CursorNotFound | ErrorKind::WebhookNotFound => Code::NotFound,
        ErrorKind::TopicExists | ErrorKind::WebhookExists => Code::AlreadyExists,
        ErrorKind::OffsetOutOfRange => Code::OutOfRange,
        ErrorKind::InvalidArgument
        | ErrorKind::LimitExceeded
        | ErrorKind::RepeatedIdempotencyId
        | ErrorKind::Config
        | ErrorKind::UnknownProducer => Code::InvalidArgument,
        ErrorKind::DiskFull => Code::ResourceExhausted,
        ErrorKind::ProducerFenced => Code::Aborted,
        ErrorKind::Corruption | ErrorKind::Inconsistent => Code::DataLoss,
        ErrorKind::Poisoned | ErrorKind::Closed | ErrorKind::Locked => Code::Unavailable,
        ErrorKind::Io => Code::Internal,
    }
}

/// The machine-readable detail of an error.
pub fn error_detail(error: &Error) -> ErrorDetail {
    let mut detail = ErrorDetail {
        code: error_code(error.kind()) as i32,
        message: error.to_string(),
        ..ErrorDetail::default()
    };
    match error {
        Error::WrongExpectedSequence { actual, .. } => detail.actual_sequence = *actual,
        Error::ProducerOutOfOrder { expected, .. } => detail.expected_producer_sequence = Some(*expected),
        Error::ProducerFenced { current, .. } => detail.current_epoch = Some(current.0),
        Error::IdempotencyIdReused {
            partition,
            offset,
            sequence,
            ..
        } => {
            detail.original_partition = Some(partition.0);
            detail.original_offset = Some(offset.0);
            detail.original_sequence = Some(*sequence);
        }
        Error::OffsetOutOfRange {
            earliest,
            high_watermark,
            ..
        } => {
            detail.earliest_offset = Some(earliest.0);
            detail.high_watermark = Some(high_watermark.0);
        }
        Error::LimitExceeded { what, value, max } => {
            detail.limit_name = what.to_string();
            detail.limit_value = *value;
            detail.limit_max = *max;
        }
        _ => {}
    }
    detail
}

/// An engine error as a gRPC status with details and the code trailer.
pub fn to_status(error: &Error) -> Status {
    let detail = error_detail(error);
    match grpc_code(error.kind()) {
        Code::Internal | Code::DataLoss => tracing::error!(%error, "request failed"),
        Code::Unavailable | Code::ResourceExhausted => tracing::warn!(%error, "request failed"),
        _ => tracing::debug!(%error, "request rejected"),
    }
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Ok(value) = detail.code.to_string().parse() {
        metadata.insert(ERROR_CODE_METADATA, value);
    }
    Status::with_details_and_metadata(
        grpc_code(error.kind()),
        detail.message.clone(),
        detail.encode_to_vec().into(),
        metadata,
    )
}

/// A malformed request that never reached the engine.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    to_status(&Error::InvalidArgument(message.into()))
}

/// A request message above the server's size limit: RESOURCE_EXHAUSTED with
/// code `MESSAGE_TOO_LARGE`, as the proto's error contract says.
pub fn message_too_large(message: impl Into<String>) -> Status {
    let detail = ErrorDetail {
        code: ErrorCode::MessageTooLarge as i32,
        message: message.into(),
        ..ErrorDetail::default()
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Ok(value) = detail.code.to_string().parse() {
        metadata.insert(ERROR_CODE_METADATA, value);
    }
    Status::with_details_and_metadata(
        Code::ResourceExhausted,
        detail.message.clone(),
        detail.encode_to_vec().into(),
        metadata,
    )
}

/// tonic rejects a message above `max_decoding_message_size` with OUT_OF_RANGE
/// (and no Stele detail) before any handler runs; this maps that status to
/// [`message_too_large`] and leaves every other status alone.
pub fn map_transport_status(status: Status) -> Status {
    if status.code() == Code::OutOfRange
        && detail_of(&status).is_none()
        && status.message().contains("message length too large")
    {
        message_too_large(status.message())
    } else {
        status
    }
}

/// Decodes the `ErrorDetail` of a status, if it carries one.
pub fn detail_of(status: &Status) -> Option<ErrorDetail> {
    ErrorDetail::decode(status.details())
        .ok()
        .filter(|detail| detail.code != 0)
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        to_status(&error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_stable() {
        // Goal: codes are part of the wire contract and never renumbered.
        assert_eq!(error_code(ErrorKind::WrongExpectedSequence) as i32, 10);
        assert_eq!(error_code(ErrorKind::ProducerFenced) as i32, 13);
        assert_eq!(error_code(ErrorKind::OffsetOutOfRange) as i32, 16);
        assert_eq!(error_code(ErrorKind::Closed) as i32, 22);
        assert_eq!(error_code(ErrorKind::IdempotencyIdReused) as i32, 26);
    }

    #[test]
    fn reused_idempotency_id_status_carries_the_original_position() {
        // Goal: a client can tell where the event its id names is stored.
        let status = to_status(&Error::IdempotencyIdReused {
            index: 0,
            partition: crate::PartitionId(3),
            offset: crate::Offset(41),
            sequence: 7,
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = detail_of(&status).expect("detail");
        assert_eq!(detail.code, ErrorCode::IdempotencyIdReused as i32);
        assert_eq!(detail.original_partition, Some(3));
        assert_eq!(detail.original_offset, Some(41));
        assert_eq!(detail.original_sequence, Some(7));
    }

    #[test]
    fn wrong_sequence_status_carries_the_actual_sequence() {
        let status = to_status(&Error::WrongExpectedSequence {
            expected: crate::ExpectedSequence::NoEvents,
            actual: Some(4),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = detail_of(&status).expect("detail");
        assert_eq!(detail.actual_sequence, Some(4));
        assert_eq!(
            status
                .metadata()
                .get(ERROR_CODE_METADATA)
                .and_then(|value| value.to_str().ok()),
            Some("10")
        );
    }
}
