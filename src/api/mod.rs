//! The internal HTTP API on `ADMIN_PORT` (docs/protocol.md §6): every `/api/v1/*` route needs
//! `Authorization: Bearer <API_KEY>`; errors are JSON `{ error: { code, message } }`.
//!
//! Bodies are read as bytes and parsed here, not with axum's `Json` extractor, so a body of the
//! wrong shape answers 400 with a message naming the field (axum would say 422) and an oversized
//! one answers 413 in the same JSON form.

mod chats;
mod publish;
mod users;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};

use crate::chat::Chats;
use crate::error::StoreError;

/// Largest accepted request body (docs/protocol.md §8).
pub const BODY_LIMIT: usize = 64 * 1024;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Chat and membership service.
    pub chats: Chats,
    /// Presence service: membership changes that introduce new peers, presence queries, user
    /// disconnects.
    pub presence: crate::presence::Presence,
    /// Server-side publishing.
    pub publisher: crate::publish::Publisher,
    /// The node registry.
    pub nodes: crate::nodes::Nodes,
    /// The bearer key every route requires.
    pub api_key: std::sync::Arc<str>,
}

/// Every route of the internal API, as `docs/openapi.yaml` must list it (a test checks both
/// that the file matches and that the router answers each one).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/publish"),
    ("POST", "/api/v1/chats"),
    ("DELETE", "/api/v1/chats/{chatId}"),
    ("PUT", "/api/v1/chats/{chatId}/members"),
    ("GET", "/api/v1/chats/{chatId}/members"),
    ("DELETE", "/api/v1/chats/{chatId}/members/{userId}"),
    ("GET", "/api/v1/presence"),
    ("POST", "/api/v1/users/{userId}/disconnect"),
    ("GET", "/api/v1/nodes"),
];

/// The `/api/v1` router (the caller adds `/metrics` beside it).
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/v1/publish", post(publish::publish))
        .route("/api/v1/presence", get(users::presence))
        .route(
            "/api/v1/users/{user_id}/disconnect",
            post(users::disconnect),
        )
        .route("/api/v1/nodes", get(users::nodes))
        .route("/api/v1/chats", post(chats::create))
        .route("/api/v1/chats/{chat_id}", delete(chats::delete))
        .route(
            "/api/v1/chats/{chat_id}/members",
            put(chats::add_members).get(chats::list_members),
        )
        .route(
            "/api/v1/chats/{chat_id}/members/{user_id}",
            delete(chats::remove_member),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .with_state(state);
    api.fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not take that method",
            )
        })
}

/// Every `/api/v1/*` route: 401 unless the bearer key matches, compared in constant time.
async fn require_key(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::auth::bearer);
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), state.api_key.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "wrong API key").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing Authorization: Bearer <API_KEY>",
        )
        .into_response(),
    }
}

/// Compares without an early exit, so timing does not reveal how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An API failure: status, code and message, rendered as `{ error: { code, message } }`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 INVALID_PAYLOAD.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_PAYLOAD", message)
    }

    /// 404 NOT_FOUND.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "error": { "code": self.code, "message": self.message } })),
        )
            .into_response()
    }
}

impl<E: StoreError> From<E> for ApiError {
    fn from(e: E) -> Self {
        if let Some((confirmed, wanted)) = e.not_replicated() {
            tracing::warn!(
                confirmed,
                wanted,
                "api: write not confirmed by enough replicas"
            );
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                format!(
                    "published but confirmed by {confirmed} of {wanted} Redis replicas in time; \
                     it may still be delivered: retry with the same Idempotency-Key"
                ),
            );
        }
        ApiError::from_cause(e.is_unavailable(), &e)
    }
}

impl ApiError {
    /// 503 when Redis is unreachable, else 500 with a correlation id that is also logged.
    fn from_cause(unavailable: bool, e: &dyn std::fmt::Display) -> Self {
        if unavailable {
            tracing::warn!(error = %e, "api: redis unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the gateway could not reach Redis; retry",
            )
        } else {
            let correlation = uuid::Uuid::new_v4();
            tracing::error!(%correlation, error = %e, "api: internal error");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                format!("internal error (correlation id {correlation})"),
            )
        }
    }
}

/// Reads and parses a JSON object body of at most [`BODY_LIMIT`] bytes (413 above it, in the
/// same JSON error form as every other failure).
pub async fn json_body(body: Body) -> Result<serde_json::Map<String, Value>, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("body is larger than the {BODY_LIMIT} bytes allowed"),
        )
    };
    let bytes: Bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| too_large())?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("body must be a JSON object")),
    }
}

/// A required array of ids in a body.
pub fn id_list(
    body: &serde_json::Map<String, Value>,
    field: &str,
) -> Result<Vec<String>, ApiError> {
    let Some(Value::Array(items)) = body.get(field) else {
        return Err(ApiError::bad_request(format!(
            "{field} is required and must be an array of ids"
        )));
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        match item.as_str() {
            Some(id) if crate::validate::is_valid_id(id) => ids.push(id.to_owned()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "{field} must contain only ids of 1-128 characters of [A-Za-z0-9_.:@-]"
                )));
            }
        }
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A path id, validated.
pub fn path_id(value: &str, name: &str) -> Result<String, ApiError> {
    if crate::validate::is_valid_id(value) {
        Ok(value.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "{name} must be 1-128 characters of [A-Za-z0-9_.:@-]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_only_equal_keys() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
