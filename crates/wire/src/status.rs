//! The one place that maps engine errors to gRPC statuses.
//!
//! Every error follows gRPC's richer error model: `grpc-status-details-bin`
//! holds a `google.rpc.Status` whose `details` carry, as `Any`:
//! - `stele.v1.ErrorDetail`: the stable `ErrorCode` and its fields (actual
//!   sequence, limits, offsets, ...);
//! - `google.rpc.ErrorInfo`: `reason` is the stable error name (the `ErrorCode`
//!   without its `ERROR_CODE_` prefix), `domain` is `stele`;
//! - `google.rpc.BadRequest` when the offending request field is known, and
//!   `google.rpc.PreconditionFailure` for every FAILED_PRECONDITION.
//!
//! The same numeric code is also sent as text in the `stele-error-code`
//! trailer. Codes are never reused or renumbered. Messages sent to clients never
//! name a server file-system path; the full error is logged here instead.

use prost::Message;
use prost_types::Any;
use tonic::{Code, Status};
use tonic_types::pb;

use crate::proto::{ErrorCode, ErrorDetail};
use stele_engine::error::{Error, ErrorKind};

/// The metadata key carrying the numeric error code.
pub const ERROR_CODE_METADATA: &str = "stele-error-code";

/// The `google.rpc.ErrorInfo` domain of every Stele error.
pub const ERROR_DOMAIN: &str = "stele";

/// The `Any` type URL of [`ErrorDetail`] inside `google.rpc.Status.details`.
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/stele.v1.ErrorDetail";

const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";
const PRECONDITION_FAILURE_TYPE_URL: &str = "type.googleapis.com/google.rpc.PreconditionFailure";

/// One row of [`ERROR_CODES`]: a stable code, the engine's kind for it (none
/// for codes only the wire layer raises) and the gRPC code it travels under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCodeEntry {
    /// The engine's kind; `None` for a code raised above the engine.
    pub kind: Option<ErrorKind>,
    /// The stable numeric code (`stele-error-code`, `ErrorDetail.code`).
    pub code: ErrorCode,
    /// The gRPC status code.
    pub grpc: Code,
}

/// Writes the one table of error codes and the functions derived from it, so
/// that the server's mapping ([`error_code`], [`grpc_code`]) and the client's
/// reverse mapping ([`kind_of_code`]) cannot disagree. Each derived function is
/// an exhaustive `match`: a new [`ErrorKind`] or a new proto `ErrorCode` that is
/// missing from the table does not compile.
macro_rules! error_codes {
    (
        kinds { $($kind:ident => $code:ident, $grpc:ident;)* }
        wire_only { $($wire_code:ident, $wire_grpc:ident;)* }
    ) => {
        /// Every stable error code: the engine's kinds, then the codes only
        /// the wire layer raises. Codes are never reused or renumbered.
        pub const ERROR_CODES: &[ErrorCodeEntry] = &[
            $(ErrorCodeEntry { kind: Some(ErrorKind::$kind), code: ErrorCode::$code, grpc: Code::$grpc },)*
            $(ErrorCodeEntry { kind: None, code: ErrorCode::$wire_code, grpc: Code::$wire_grpc },)*
        ];

        /// The stable code of an error kind.
        pub fn error_code(kind: ErrorKind) -> ErrorCode {
            match kind {
                $(ErrorKind::$kind => ErrorCode::$code,)*
            }
        }

        /// The gRPC code of an error kind.
        pub fn grpc_code(kind: ErrorKind) -> Code {
            match kind {
                $(ErrorKind::$kind => Code::$grpc,)*
            }
        }

        /// The engine's kind of a stable code; `None` for `UNSPECIFIED` and for
        /// the codes only the wire layer raises.
        pub fn kind_of_code(code: ErrorCode) -> Option<ErrorKind> {
            match code {
                ErrorCode::Unspecified => None,
                $(ErrorCode::$code => Some(ErrorKind::$kind),)*
                $(ErrorCode::$wire_code => None,)*
            }
        }

        /// The gRPC code a stable code travels under; `None` for `UNSPECIFIED`.
        pub fn grpc_code_of(code: ErrorCode) -> Option<Code> {
            match code {
                ErrorCode::Unspecified => None,
                $(ErrorCode::$code => Some(Code::$grpc),)*
                $(ErrorCode::$wire_code => Some(Code::$wire_grpc),)*
            }
        }
    };
}

error_codes! {
    kinds {
        Io => Io, Internal;
        DiskFull => DiskFull, ResourceExhausted;
        Corruption => Corruption, DataLoss;
        Inconsistent => Inconsistent, DataLoss;
        Config => Config, InvalidArgument;
        InvalidArgument => InvalidArgument, InvalidArgument;
        LimitExceeded => LimitExceeded, InvalidArgument;
        TopicNotFound => TopicNotFound, NotFound;
        TopicExists => TopicExists, AlreadyExists;
        WrongExpectedSequence => WrongExpectedSequence, FailedPrecondition;
        PartialDuplicate => PartialDuplicate, FailedPrecondition;
        RepeatedIdempotencyId => RepeatedIdempotencyId, InvalidArgument;
        IdempotencyIdReused => IdempotencyIdReused, FailedPrecondition;
        ProducerFenced => ProducerFenced, Aborted;
        UnknownProducer => UnknownProducer, InvalidArgument;
        ProducerOutOfOrder => ProducerOutOfOrder, FailedPrecondition;
        OffsetOutOfRange => OffsetOutOfRange, OutOfRange;
        CursorNotFound => CursorNotFound, NotFound;
        CursorBackwards => CursorBackwards, FailedPrecondition;
        CursorAheadOfHighWatermark => CursorAheadOfHighWatermark, FailedPrecondition;
        Poisoned => Poisoned, Unavailable;
        Locked => Locked, Unavailable;
        Closed => Closed, Unavailable;
        WebhookNotFound => WebhookNotFound, NotFound;
        WebhookExists => WebhookExists, AlreadyExists;
        Unavailable => BackendUnavailable, Unavailable;
        GroupNotFound => GroupNotFound, NotFound;
        GroupExists => GroupExists, AlreadyExists;
        DeliveryStale => DeliveryStale, Aborted;
        MemberReplaced => MemberReplaced, Aborted;
        DestinationNotEmpty => DestinationNotEmpty, FailedPrecondition;
        Unsupported => Unsupported, FailedPrecondition;
        Quarantined => Quarantined, DataLoss;
    }
    wire_only {
        // A request message above the server's size limit (`message_too_large`).
        MessageTooLarge, ResourceExhausted;
        // A client touched a cursor a webhook endpoint owns.
        CursorReserved, FailedPrecondition;
        // No valid credential (`--auth required`).
        Unauthenticated, Unauthenticated;
        // The credential's grants do not cover the call.
        PermissionDenied, PermissionDenied;
        // RevokeToken named no token.
        TokenNotFound, NotFound;
    }
}

/// The stable name of a code: its proto name without the `ERROR_CODE_` prefix,
/// e.g. `WRONG_EXPECTED_SEQUENCE`. It is `google.rpc.ErrorInfo.reason`.
pub fn error_name(code: ErrorCode) -> &'static str {
    let name = code.as_str_name();
    name.strip_prefix("ERROR_CODE_").unwrap_or(name)
}

/// The message a client sees: the error's text, except that errors about files
/// name only the file (never the server's directories).
pub fn client_message(error: &Error) -> String {
    fn file_name(path: &std::path::Path) -> String {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
    match error {
        Error::Io { op, source, .. } => format!("I/O error during {op}: {}", source.kind()),
        Error::DiskFull { op, .. } => format!("disk full during {op}"),
        Error::Corruption {
            path,
            position,
            reason,
        } => format!(
            "corruption in stored file {} at position {position}: {reason}",
            file_name(path)
        ),
        Error::Inconsistent { path, reason } => {
            format!("inconsistent stored file {}: {reason}", file_name(path))
        }
        Error::Locked { .. } => "the data directory is locked by another process".to_string(),
        Error::DestinationNotEmpty { .. } => "the destination exists and is not empty".to_string(),
        other => other.to_string(),
    }
}

/// The machine-readable detail of an error (also the in-stream outcome of one
/// append of a batch).
pub fn error_detail(error: &Error) -> ErrorDetail {
    let mut detail = ErrorDetail {
        code: error_code(error.kind()) as i32,
        message: client_message(error),
        ..ErrorDetail::default()
    };
    match error {
        Error::WrongExpectedSequence { actual, .. } => {
            detail.actual_sequence = (*actual).map(|sequence| sequence.0)
        }
        Error::ProducerOutOfOrder { expected, .. } => detail.expected_producer_sequence = Some(expected.0),
        Error::ProducerFenced { current, .. } => detail.current_epoch = Some(current.0),
        Error::IdempotencyIdReused {
            partition,
            offset,
            sequence,
            ..
        } => {
            detail.original_partition = Some(partition.0);
            detail.original_offset = Some(offset.0);
            detail.original_sequence = Some(sequence.0);
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
        Error::Quarantined { quarantine, .. } => {
            detail.quarantine = Some(crate::convert::quarantine_to_proto(quarantine));
        }
        _ => {}
    }
    detail
}

/// An engine error as a gRPC status with the rich details and the code trailer.
pub fn to_status(error: &Error) -> Status {
    status_with_field(error, None)
}

/// Like [`to_status`], naming the request field the error is about (a
/// `google.rpc.BadRequest` field violation for INVALID_ARGUMENT).
pub fn to_status_for_field(error: &Error, field: &str) -> Status {
    status_with_field(error, Some(field))
}

fn status_with_field(error: &Error, field: Option<&str>) -> Status {
    let code = grpc_code(error.kind());
    match code {
        Code::Internal | Code::DataLoss => tracing::error!(%error, "request failed"),
        Code::Unavailable | Code::ResourceExhausted => tracing::warn!(%error, "request failed"),
        _ => tracing::debug!(%error, "request rejected"),
    }
    let detail = error_detail(error);
    let field = match (field, error) {
        (Some(field), _) => Some(field),
        (None, Error::LimitExceeded { what, .. }) => limit_field(what),
        (None, _) => None,
    };
    status_of_detail(code, detail, field)
}

/// The request field a limit bounds, as `google.rpc.BadRequest` names it (a
/// path of proto field names; `events.payload` is the payload of any event).
/// Limits that bound no field of the request (topics per directory, cursors
/// per topic) have none, and their status carries no `BadRequest`.
fn limit_field(limit: &str) -> Option<&'static str> {
    Some(match limit {
        "topic name size" => "topic",
        "cursor name size" => "cursor",
        "producer name size" | "webhook name size" => "name",
        "key size" => "key",
        "events in one append" | "append size" => "events",
        "events per call" => "appends",
        "payload size" => "events.payload",
        "headers count" | "headers size" | "header name size" => "events.headers",
        "idempotency id size" => "events.idempotency_id",
        "partition count" => "settings.partitions",
        "payload_size_max" => "settings.payload_size_max",
        "webhook attempts" => "settings.max_attempts",
        "webhook in-flight keys" => "settings.max_in_flight",
        _ => return None,
    })
}

/// A status for `detail` under gRPC code `code`: `google.rpc.Status` in the
/// details with `ErrorDetail`, `ErrorInfo` and, where they fit, `BadRequest`
/// (for `field`) and `PreconditionFailure`; the numeric code in the trailer.
pub fn status_of_detail(code: Code, detail: ErrorDetail, field: Option<&str>) -> Status {
    let error_code = ErrorCode::try_from(detail.code).unwrap_or(ErrorCode::Unspecified);
    let name = error_name(error_code);
    let mut details = vec![
        Any {
            type_url: ERROR_DETAIL_TYPE_URL.to_string(),
            value: detail.encode_to_vec(),
        },
        Any {
            type_url: ERROR_INFO_TYPE_URL.to_string(),
            value: pb::ErrorInfo {
                reason: name.to_string(),
                domain: ERROR_DOMAIN.to_string(),
                metadata: [("code".to_string(), detail.code.to_string())].into(),
            }
            .encode_to_vec(),
        },
    ];
    if code == Code::InvalidArgument
        && let Some(field) = field
    {
        details.push(Any {
            type_url: BAD_REQUEST_TYPE_URL.to_string(),
            value: pb::BadRequest {
                field_violations: vec![pb::bad_request::FieldViolation {
                    field: field.to_string(),
                    description: detail.message.clone(),
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        });
    }
    if code == Code::FailedPrecondition {
        details.push(Any {
            type_url: PRECONDITION_FAILURE_TYPE_URL.to_string(),
            value: pb::PreconditionFailure {
                violations: vec![pb::precondition_failure::Violation {
                    r#type: name.to_string(),
                    subject: field.unwrap_or_default().to_string(),
                    description: detail.message.clone(),
                }],
            }
            .encode_to_vec(),
        });
    }
    let rpc_status = pb::Status {
        code: code as i32,
        message: detail.message.clone(),
        details,
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Ok(value) = detail.code.to_string().parse() {
        metadata.insert(ERROR_CODE_METADATA, value);
    }
    Status::with_details_and_metadata(code, detail.message, rpc_status.encode_to_vec().into(), metadata)
}

/// A malformed request that never reached the engine.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    to_status(&Error::InvalidArgument(message.into()))
}

/// A malformed value in request field `field` (a `BadRequest` violation).
pub fn invalid_field(field: &str, message: impl Into<String>) -> Status {
    to_status_for_field(&Error::InvalidArgument(message.into()), field)
}

/// A request message above the server's size limit: RESOURCE_EXHAUSTED with
/// code `MESSAGE_TOO_LARGE`, as the proto's error contract says.
pub fn message_too_large(message: impl Into<String>) -> Status {
    let detail = ErrorDetail {
        code: ErrorCode::MessageTooLarge as i32,
        message: message.into(),
        ..ErrorDetail::default()
    };
    let code = grpc_code_of(ErrorCode::MessageTooLarge).expect("MESSAGE_TOO_LARGE is in the table");
    status_of_detail(code, detail, None)
}

/// A status of a code only the wire layer raises, with `message`.
pub fn wire_status(code: ErrorCode, message: impl Into<String>, field: Option<&str>) -> Status {
    let detail = ErrorDetail {
        code: code as i32,
        message: message.into(),
        ..ErrorDetail::default()
    };
    let grpc = grpc_code_of(code).unwrap_or(Code::Unknown);
    status_of_detail(grpc, detail, field)
}

/// UNAUTHENTICATED with code `UNAUTHENTICATED`. The message is always the same,
/// so that it never tells whether a token exists, expired or was revoked.
pub fn unauthenticated() -> Status {
    wire_status(
        ErrorCode::Unauthenticated,
        "a valid credential is required: send `authorization: Bearer <token>`",
        None,
    )
}

/// PERMISSION_DENIED with code `PERMISSION_DENIED`: the caller lacks `grant`
/// (e.g. `write:orders`).
pub fn permission_denied(grant: &str) -> Status {
    wire_status(
        ErrorCode::PermissionDenied,
        format!("permission denied: this call needs the grant {grant}"),
        None,
    )
}

/// Request bytes that do not decode as the RPC's message (truncated, wrong
/// wire types, invalid UTF-8 in a string field): INVALID_ARGUMENT, never the
/// INTERNAL that would count as a server fault.
pub fn malformed_message(reason: impl std::fmt::Display) -> Status {
    invalid_argument(format!("malformed request message: {reason}"))
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

/// The `google.rpc.Status` in a status's details, if it carries one.
pub fn rpc_status_of(status: &Status) -> Option<pb::Status> {
    pb::Status::decode(status.details()).ok()
}

/// Decodes the Stele `ErrorDetail` packed in a status's `google.rpc.Status`
/// details, if it carries one.
pub fn detail_of(status: &Status) -> Option<ErrorDetail> {
    rpc_status_of(status)?
        .details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| ErrorDetail::decode(any.value.as_slice()).ok())
        .filter(|detail| detail.code != 0)
}

/// `?` for engine results in gRPC handlers: `result.or_status()?` maps the
/// engine's error with [`to_status`]. (`From<Error> for Status` would be the
/// idiom, but neither type belongs to this crate.)
pub trait OrStatus<T> {
    /// The value, or the error as a status.
    ///
    /// # Errors
    /// The engine's error mapped by [`to_status`].
    fn or_status(self) -> std::result::Result<T, Status>;
}

impl<T> OrStatus<T> for std::result::Result<T, Error> {
    fn or_status(self) -> std::result::Result<T, Status> {
        self.map_err(|error| to_status(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele_engine::Sequence;
    use tonic_types::StatusExt;

    #[test]
    fn error_codes_are_stable() {
        // Goal: codes are part of the wire contract and never renumbered.
        assert_eq!(error_code(ErrorKind::WrongExpectedSequence) as i32, 10);
        assert_eq!(error_code(ErrorKind::ProducerFenced) as i32, 13);
        assert_eq!(error_code(ErrorKind::OffsetOutOfRange) as i32, 16);
        assert_eq!(error_code(ErrorKind::Closed) as i32, 22);
        assert_eq!(
            error_name(ErrorCode::WrongExpectedSequence),
            "WRONG_EXPECTED_SEQUENCE"
        );
        assert_eq!(error_code(ErrorKind::IdempotencyIdReused) as i32, 26);
    }

    #[test]
    fn the_error_code_table_lists_every_proto_code_and_every_kind_exactly_once() {
        // Goal: the one table is complete and unambiguous. Method: walk the
        // proto's ErrorCode values by number (past the largest, none decodes)
        // and count each in the table; derive every kind from error_code and
        // count it; check the derived functions against the rows.
        let largest = ERROR_CODES
            .iter()
            .map(|entry| entry.code as i32)
            .max()
            .expect("a non-empty table");
        assert!(
            ErrorCode::try_from(largest + 1).is_err(),
            "a proto code past the table"
        );
        for number in 0..=largest {
            let code = ErrorCode::try_from(number).expect("proto codes are dense");
            let rows = ERROR_CODES.iter().filter(|entry| entry.code == code).count();
            let expected = usize::from(code != ErrorCode::Unspecified);
            assert_eq!(rows, expected, "{code:?} appears {rows} times");
        }
        for entry in ERROR_CODES {
            assert_eq!(kind_of_code(entry.code), entry.kind, "{entry:?}");
            assert_eq!(grpc_code_of(entry.code), Some(entry.grpc), "{entry:?}");
            if let Some(kind) = entry.kind {
                assert_eq!(error_code(kind), entry.code, "{entry:?}");
                assert_eq!(grpc_code(kind), entry.grpc, "{entry:?}");
                let rows = ERROR_CODES
                    .iter()
                    .filter(|other| other.kind == Some(kind))
                    .count();
                assert_eq!(rows, 1, "{kind:?} appears {rows} times");
            }
        }
        assert_eq!(kind_of_code(ErrorCode::Unspecified), None);
        assert_eq!(grpc_code_of(ErrorCode::Unspecified), None);
        assert_eq!(kind_of_code(ErrorCode::CursorReserved), None);
    }

    #[test]
    fn reused_idempotency_id_status_carries_the_original_position() {
        // Goal: a client can tell where the event its id names is stored.
        let status = to_status(&Error::IdempotencyIdReused {
            index: 0,
            partition: stele_engine::PartitionId(3),
            offset: stele_engine::Offset(41),
            sequence: Sequence(7),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let detail = detail_of(&status).expect("detail");
        assert_eq!(detail.code, ErrorCode::IdempotencyIdReused as i32);
        assert_eq!(detail.original_partition, Some(3));
        assert_eq!(detail.original_offset, Some(41));
        assert_eq!(detail.original_sequence, Some(7));
    }

    #[test]
    fn wrong_sequence_status_is_a_google_rpc_status_with_the_actual_sequence() {
        // Goal: the details decode as google.rpc.Status with our detail, the
        // standard ErrorInfo and a PreconditionFailure, as generic tools read them.
        let status = to_status(&Error::WrongExpectedSequence {
            expected: stele_engine::ExpectedSequence::NoEvents,
            actual: Some(Sequence(4)),
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        let rpc_status = rpc_status_of(&status).expect("google.rpc.Status");
        assert_eq!(rpc_status.code, Code::FailedPrecondition as i32);
        assert_eq!(rpc_status.message, status.message());
        let detail = detail_of(&status).expect("detail");
        assert_eq!(detail.actual_sequence, Some(4));
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "WRONG_EXPECTED_SEQUENCE");
        assert_eq!(info.domain, "stele");
        let precondition = status
            .get_details_precondition_failure()
            .expect("PreconditionFailure");
        assert_eq!(precondition.violations[0].r#type, "WRONG_EXPECTED_SEQUENCE");
        assert_eq!(
            status
                .metadata()
                .get(ERROR_CODE_METADATA)
                .and_then(|value| value.to_str().ok()),
            Some("10")
        );
    }

    #[test]
    fn limit_exceeded_names_the_bounded_request_field_as_a_bad_request_violation() {
        let status = to_status(&Error::LimitExceeded {
            what: "topic name size",
            value: 300,
            max: 255,
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad_request = status.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad_request.field_violations[0].field, "topic");
        let detail = detail_of(&status).expect("detail");
        assert_eq!(detail.limit_name, "topic name size");
        assert_eq!(detail.limit_max, 255);
        assert_eq!(detail.code, ErrorCode::LimitExceeded as i32);
        // A limit on no request field (a quota) names no field.
        let quota = to_status(&Error::LimitExceeded {
            what: "topics",
            value: 10_001,
            max: 10_000,
        });
        assert!(quota.get_details_bad_request().is_none());
        assert_eq!(detail_of(&quota).expect("detail").limit_name, "topics");
    }

    #[test]
    fn client_messages_never_name_server_directories() {
        // Goal: a path of the data directory is logged, not sent to clients.
        let errors = [
            Error::Io {
                op: "fdatasync segment",
                path: "/srv/secret/data/orders/p00001/00000000000000000000.log".into(),
                source: std::io::Error::other("boom"),
            },
            Error::DiskFull {
                op: "write segment",
                path: "/srv/secret/data/orders".into(),
            },
            Error::Corruption {
                path: "/srv/secret/data/orders/p00001/00000000000000000000.log".into(),
                position: 40,
                reason: stele_engine::format::DecodeError::BadMagic,
            },
            Error::Inconsistent {
                path: "/srv/secret/data/orders/meta".into(),
                reason: "disagrees".into(),
            },
            Error::Locked {
                path: "/srv/secret/data".into(),
            },
        ];
        for error in &errors {
            let status = to_status(error);
            assert!(!status.message().contains("/srv/secret"), "{}", status.message());
            let detail = detail_of(&status).expect("detail");
            assert!(!detail.message.contains("/srv/secret"), "{}", detail.message);
        }
    }
}
