//! Every error a caller can see, and its one mapping to a gRPC status.
//!
//! Messages say what to fix. They never quote request values, so an identity code sent in the
//! wrong field cannot come back in an error. Bad input carries `google.rpc.BadRequest` with one
//! violation per field; every error carries `google.rpc.ErrorInfo` (a stable reason code,
//! domain `silta`) and `google.rpc.RequestInfo` (the request id, also in silta's logs).

use silta_core::validate::Violations;
use silta_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// How long a caller refused for overload is asked to wait (`google.rpc.RetryInfo`): about a
/// few group commits.
pub const OVERLOAD_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The error domain in `google.rpc.ErrorInfo`.
pub const ERROR_DOMAIN: &str = "silta";

/// A refusal, before it becomes a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// One or more fields are wrong.
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Violations),
    /// The client certificate names no silta caller.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not call this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The policy refuses, whatever the resident's consent (or, for social services, because
    /// of it). Carries the deciding policy ids and their `@reason` texts.
    #[error("refused by policy {}: {message}", policy_ids.join(", "))]
    PolicyDenied {
        /// The deciding policies.
        policy_ids: Vec<String>,
        /// Their reasons.
        message: String,
    },
    /// The bearer token is missing, invalid, or names another organisation.
    #[error("{message}")]
    Jwt {
        /// Stable reason, e.g. `jwt-expired`.
        reason: &'static str,
        /// What to fix.
        message: String,
        /// PERMISSION_DENIED (the token is valid but names another organisation) rather
        /// than UNAUTHENTICATED.
        permission: bool,
    },
    /// No flow is declared for this message on this legal basis.
    #[error("{0}")]
    UndeclaredFlow(String),
    /// The thing asked about does not exist for this caller.
    #[error("{0}")]
    NotFound(&'static str),
    /// The request cannot be served in the current state (e.g. no checkpoint yet).
    #[error("{0}")]
    FailedPrecondition(&'static str),
    /// Stored data failed an integrity check.
    #[error("{0}")]
    Integrity(&'static str),
    /// Ledger entries that fail the check against the signed tree: their rows were changed
    /// outside the gateway. Carries their indexes (at most a few; never personal data).
    #[error(
        "ledger entries with index {} cannot be proven under the signed checkpoint of size \
         {checkpoint}: the stored ledger was changed outside the gateway, so nothing of this \
         answer is served; tell the operator, and verify an export with `silta audit verify`",
        indexes.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
    )]
    LedgerMismatch {
        /// The entries that failed, in index order.
        indexes: Vec<u64>,
        /// The signed tree size they were checked against.
        checkpoint: u64,
    },
    /// The idempotency key was used with a different body.
    #[error("{0}")]
    AlreadyExists(&'static str),
    /// The store failed; the request may be retried.
    #[error(
        "the gateway's store is unavailable; retry with backoff (a report retried with the same \
         idempotency key is never duplicated)"
    )]
    Unavailable,
    /// The gateway is shutting down.
    #[error("the gateway is shutting down; retry on another node or reconnect shortly")]
    ShuttingDown,
    /// The caller's deadline (`grpc-timeout`) passed before its message was committed: it was
    /// not.
    #[error(
        "the call's deadline (grpc-timeout) passed before the message was committed; it was not \
         stored: send it again, with the same idempotency key"
    )]
    DeadlineExceeded,
    /// A per-organisation cap was reached: `limit` names the configuration key.
    #[error(
        "your organisation holds as many {what} as {limit} allows; close one (or fix a client \
         that leaks them) and retry"
    )]
    Quota {
        /// The configuration key of the cap, e.g. `limits.max_streams_per_org`.
        limit: &'static str,
        /// What is counted, e.g. `open streams`.
        what: &'static str,
    },
    /// The group committer's queue is full: the store is behind the callers.
    #[error(
        "the gateway is writing as fast as its store allows and its queue is full; retry after \
         the RetryInfo delay (the request was not stored)"
    )]
    Overloaded,
    /// A subscription's client read nothing while messages waited.
    #[error(
        "this stream was not read for {0} ms while messages waited (limits.stream_stall_timeout_ms), \
         so it was ended; nothing is lost: subscribe again with after_sequence set to the last \
         message you processed"
    )]
    Stalled(u64),
    /// A call carried a second message where its method takes one (gRPC's cardinality
    /// violation), e.g. a unary call whose body holds two requests.
    #[error(
        "this method takes exactly one request message and the call carried more; send one \
         message per call (a unary or server-streaming call, not a client stream)"
    )]
    ExtraMessage,
}

/// Each violation as `field: description`: the description is a text of its own (the
/// field is in `BadRequest.field`), not a sentence continuing the field's name.
fn describe(v: &Violations) -> String {
    v.0.iter()
        .map(|f| format!("{}: {}", f.field, f.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    /// A single bad field.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        let mut v = Violations::default();
        v.add(field, description);
        ApiError::InvalidArgument(v)
    }

    /// The stable reason code, also used as the audit reason of a denial.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::InvalidArgument(_) => "invalid-argument",
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "role-not-allowed",
            ApiError::PolicyDenied { .. } => "policy-denied",
            ApiError::Jwt { reason, .. } => reason,
            ApiError::UndeclaredFlow(_) => "undeclared-flow",
            ApiError::NotFound(_) => "not-found",
            ApiError::FailedPrecondition(_) => "failed-precondition",
            ApiError::Integrity(_) => "integrity-check-failed",
            ApiError::LedgerMismatch { .. } => "ledger-entry-mismatch",
            ApiError::AlreadyExists(_) => "idempotency-conflict",
            ApiError::Unavailable => "store-unavailable",
            ApiError::ShuttingDown => "shutting-down",
            ApiError::Overloaded => "overloaded",
            ApiError::Quota { .. } => "quota-exceeded",
            ApiError::DeadlineExceeded => "deadline-exceeded",
            ApiError::Stalled(_) => "stream-stalled",
            ApiError::ExtraMessage => "cardinality-violation",
        }
    }

    fn code(&self) -> Code {
        match self {
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Jwt { permission, .. } => {
                if *permission {
                    Code::PermissionDenied
                } else {
                    Code::Unauthenticated
                }
            }
            ApiError::PermissionDenied(_)
            | ApiError::PolicyDenied { .. }
            | ApiError::UndeclaredFlow(_) => Code::PermissionDenied,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::Integrity(_) | ApiError::LedgerMismatch { .. } => Code::DataLoss,
            ApiError::AlreadyExists(_) => Code::AlreadyExists,
            ApiError::Unavailable | ApiError::ShuttingDown | ApiError::Overloaded => {
                Code::Unavailable
            }
            ApiError::DeadlineExceeded => Code::DeadlineExceeded,
            ApiError::Quota { .. } => Code::ResourceExhausted,
            ApiError::Stalled(_) => Code::ResourceExhausted,
            // gRPC's status table (doc/statuscodes.md) names a request cardinality violation
            // UNIMPLEMENTED: the call has the shape of another kind of method. grpc-go and
            // grpc-java answer INTERNAL, which reads as the gateway's fault; the fix is the
            // caller's.
            ApiError::ExtraMessage => Code::Unimplemented,
        }
    }

    /// The status for request `request_id`.
    pub fn into_status(self, request_id: &str) -> Status {
        let mut details = ErrorDetails::new();
        if let ApiError::InvalidArgument(v) = &self {
            details.set_bad_request(
                v.0.iter()
                    .map(|f| FieldViolation::new(f.field.clone(), f.description.clone()))
                    .collect::<Vec<_>>(),
            );
        }
        let mut metadata = std::collections::HashMap::new();
        if let ApiError::PolicyDenied { policy_ids, .. } = &self {
            metadata.insert("policy_ids".to_owned(), policy_ids.join(","));
        }
        if let ApiError::LedgerMismatch {
            indexes,
            checkpoint,
        } = &self
        {
            let indexes = indexes.iter().map(u64::to_string).collect::<Vec<_>>();
            metadata.insert("indexes".to_owned(), indexes.join(","));
            metadata.insert("checkpoint_size".to_owned(), checkpoint.to_string());
        }
        details.set_error_info(
            self.reason().to_uppercase().replace('-', "_"),
            ERROR_DOMAIN,
            metadata,
        );
        if let ApiError::Quota { limit, what } = &self {
            details.set_quota_failure(vec![tonic_types::QuotaViolation::new(
                *limit,
                format!("{what} of the calling organisation"),
            )]);
        }
        if matches!(self, ApiError::Overloaded) {
            details.set_retry_info(Some(OVERLOAD_RETRY));
        }
        details.set_request_info(request_id, "");
        Status::with_error_details(self.code(), self.to_string(), details)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // The store's error may quote SQL, never request values; it is logged, not returned.
        tracing::error!(error = %e, "store failure");
        ApiError::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_each_field_apart_from_its_description() {
        let mut v = Violations::default();
        v.add(
            "subject_pseudonym",
            "set subject_hetu or subject_pseudonym, not both",
        );
        v.add("limit", "must be at most 10000");
        let status = ApiError::InvalidArgument(v).into_status("r-1");
        assert_eq!(
            status.message(),
            "invalid request: subject_pseudonym: set subject_hetu or subject_pseudonym, not \
             both; limit: must be at most 10000"
        );
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations[0].field, "subject_pseudonym");
        assert_eq!(
            violations[0].description,
            "set subject_hetu or subject_pseudonym, not both"
        );
    }
}
