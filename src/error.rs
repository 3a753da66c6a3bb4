//! Client-facing error codes (docs/protocol.md §2) and the ACK bodies built from them.

use serde::Serialize;
use serde_json::{Value, json};

/// The error codes a client can see, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Missing or ill-typed field, id of the wrong form, content too long.
    InvalidPayload,
    /// Unknown event name, or a routed event for an unregistered service.
    InvalidEvent,
    /// The user is not a member of that chat.
    Forbidden,
    /// The socket exceeded its event budget.
    RateLimited,
    /// `session:refresh` with a bad, expired or another user's token.
    Unauthorized,
    /// Redis could not be reached; nothing was accepted, retry is safe.
    Unavailable,
    /// Anything else; the message carries a correlation id that is also logged.
    Internal,
}

impl ErrorCode {
    /// The wire form, e.g. `INVALID_PAYLOAD`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::InvalidEvent => "INVALID_EVENT",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

/// A failed client request: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ClientError {
    /// The protocol error code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl ClientError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_PAYLOAD` with a message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidPayload, message)
    }

    /// `UNAVAILABLE`: Redis could not be reached.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the gateway could not reach its store; nothing was accepted, retry is safe",
        )
    }

    /// `UNAVAILABLE` for a write that Redis did but fewer than `wanted` replicas confirmed in
    /// time (`REDIS_WAIT_REPLICAS`): it may still be delivered, and a retry with the same
    /// `clientMsgId` answers with the same message once it is confirmed.
    pub fn not_replicated(confirmed: u32, wanted: u32) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!(
                "written but confirmed by {confirmed} of {wanted} Redis replicas in time; it may \
                 still be delivered: retry with the same clientMsgId"
            ),
        )
    }

    /// `INTERNAL`, logged with a fresh correlation id that the message carries.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        let correlation = uuid::Uuid::new_v4();
        tracing::error!(%correlation, %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            format!("internal error (correlation id {correlation})"),
        )
    }

    /// Maps a Redis error: connection-level failures are `UNAVAILABLE`, the rest `INTERNAL`.
    pub fn from_redis(e: &redis::RedisError) -> Self {
        if is_unavailable(e) {
            Self::unavailable()
        } else {
            Self::internal(e)
        }
    }

    /// Maps a failure of the store: `UNAVAILABLE` when Redis could not be reached, else
    /// `INTERNAL`.
    pub fn from_store(e: &dyn StoreError) -> Self {
        if let Some((confirmed, wanted)) = e.not_replicated() {
            return Self::not_replicated(confirmed, wanted);
        }
        match e.redis() {
            Some(r) => Self::from_redis(r),
            None => Self::internal(&e),
        }
    }

    /// The `error` object of an ACK.
    pub fn to_json(&self) -> Value {
        json!({ "code": self.code.as_str(), "message": self.message })
    }

    /// A failure ACK `{ success: false, error }`.
    pub fn ack(&self) -> Value {
        json!({ "success": false, "error": self.to_json() })
    }
}

/// An error of a domain operation that may have been caused by Redis; the boundaries (ACKs,
/// the API) map it through [`StoreError::redis`] alone.
pub trait StoreError: std::fmt::Display {
    /// The Redis error underneath, if that is what failed.
    fn redis(&self) -> Option<&redis::RedisError>;

    /// `Some((confirmed, wanted))` when the write was done but fewer replicas than
    /// `REDIS_WAIT_REPLICAS` confirmed it within `REDIS_WAIT_TIMEOUT_MS`.
    fn not_replicated(&self) -> Option<(u32, u32)> {
        None
    }

    /// True when Redis could not be reached (retry is safe), or did not confirm the write on
    /// enough replicas in time (a retry with the same idempotency key is safe).
    fn is_unavailable(&self) -> bool {
        self.redis().is_some_and(is_unavailable) || self.not_replicated().is_some()
    }
}

/// The error of a domain operation (chat membership, presence): the store failed, or the
/// backplane publish that makes the change visible did.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Redis refused or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The backplane publish failed.
    #[error("backplane: {0}")]
    Publish(#[from] crate::backplane::PublishError),
    /// Written, but fewer than `wanted` replicas confirmed it within the `WAIT` timeout.
    #[error("confirmed by {confirmed} of {wanted} replicas in time")]
    NotReplicated {
        /// Replicas that confirmed.
        confirmed: u32,
        /// `REDIS_WAIT_REPLICAS`.
        wanted: u32,
    },
}

impl From<crate::redis::Shortfall> for DomainError {
    fn from(s: crate::redis::Shortfall) -> Self {
        DomainError::NotReplicated {
            confirmed: s.confirmed,
            wanted: s.wanted,
        }
    }
}

impl From<serde_json::Error> for DomainError {
    /// An envelope that cannot be serialized (a bug): a publish that could not happen.
    fn from(e: serde_json::Error) -> Self {
        DomainError::Publish(e.into())
    }
}

impl StoreError for DomainError {
    fn redis(&self) -> Option<&redis::RedisError> {
        match self {
            DomainError::Redis(r) => Some(r),
            DomainError::Publish(p) => p.redis(),
            DomainError::NotReplicated { .. } => None,
        }
    }

    fn not_replicated(&self) -> Option<(u32, u32)> {
        match self {
            DomainError::NotReplicated { confirmed, wanted } => Some((*confirmed, *wanted)),
            DomainError::Publish(p) => p.not_replicated(),
            DomainError::Redis(_) => None,
        }
    }
}

impl StoreError for redis::RedisError {
    fn redis(&self) -> Option<&redis::RedisError> {
        Some(self)
    }
}

/// True for errors that mean "Redis is not reachable or not serving right now" (the
/// connection failed, dropped or timed out; the server is loading, failing over or read-only;
/// on a Cluster, a slot still redirected (`MOVED`/`ASK`) after the connection's retries, or no
/// connection to its master: its owner is changing, and a refused slot ran nothing), as opposed
/// to an error in what we sent (a script or type error: our bug, `INTERNAL`).
///
/// A timeout is ambiguous — the command may have run — which is why retries of `chat:send`
/// carry a `clientMsgId`.
pub fn is_unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    e.is_io_error()
        || e.is_timeout()
        // Redis Cluster with no connection to a slot's master; Sentinel with no master named.
        || matches!(
            e.kind(),
            K::ClusterConnectionNotFound
                | K::MasterNameNotFoundBySentinel
                | K::NoValidReplicasFoundBySentinel
        )
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            K::Io
                | K::Server(
                    S::BusyLoading
                        | S::TryAgain
                        | S::ClusterDown
                        | S::MasterDown
                        | S::ReadOnly
                        | S::Moved
                        | S::Ask
                )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_redirected_past_the_retries_is_unavailable_not_internal() {
        // What a chat:send got during a Cluster failover before the promotion: the replica's
        // MOVED to the dead master, still there after the pipeline's retries.
        let moved = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "An error was signalled by the server",
            "7469 127.0.0.1:10299".to_owned(),
        ));
        assert!(is_unavailable(&moved));
        let script = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR Error running script",
        ));
        assert!(!is_unavailable(&script));
    }

    #[test]
    fn failure_ack_has_the_protocol_shape() {
        let a = ClientError::invalid("content must be a string").ack();
        assert_eq!(a["success"], false);
        assert_eq!(a["error"]["code"], "INVALID_PAYLOAD");
        assert_eq!(a["error"]["message"], "content must be a string");
    }
}
