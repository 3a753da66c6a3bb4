//! `POST /api/v1/publish`: emit an event to rooms, users and chats, cluster-wide.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::{ApiError, ApiState, json_body};
use crate::publish::{Outcome, PublishRequest, is_valid_idempotency_key};

/// 202 `{ id }`; a repeated `Idempotency-Key` publishes nothing and answers the first id.
pub async fn publish(
    State(st): State<ApiState>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if is_valid_idempotency_key(k) => Some(k.to_owned()),
            _ => {
                return Err(ApiError::bad_request(
                    "Idempotency-Key must be 1-200 visible ASCII characters",
                ));
            }
        },
    };
    let req = PublishRequest::parse(&json_body(body).await?).map_err(ApiError::bad_request)?;
    // HTTP keys and stream entry ids live in separate namespaces.
    let key = key.map(|k| format!("http:{k}"));
    match st.publisher.publish(&req, key.as_deref()).await? {
        Outcome::Published(id) => Ok((StatusCode::ACCEPTED, axum::Json(json!({ "id": id })))),
        Outcome::Repeated(id) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": id, "repeated": true })),
        )),
    }
}
