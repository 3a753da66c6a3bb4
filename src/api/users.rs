//! Presence, user disconnect and node listing endpoints.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, path_id};

/// Most users one presence request may name.
pub const MAX_PRESENCE_USERS: usize = 1000;

/// Query of `GET /api/v1/presence`.
#[derive(Deserialize)]
pub struct PresenceQuery {
    users: Option<String>,
}

/// `GET /api/v1/presence?users=a,b` → `{ online, sockets: { userId: [..] } }`.
pub async fn presence(
    State(st): State<ApiState>,
    Query(q): Query<PresenceQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let raw = q
        .users
        .ok_or_else(|| ApiError::bad_request("users is required: ?users=a,b"))?;
    let mut users = Vec::new();
    for u in raw.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        users.push(path_id(u, "users")?);
    }
    users.sort();
    users.dedup();
    if users.len() > MAX_PRESENCE_USERS {
        return Err(ApiError::bad_request(format!(
            "users names {} users, more than the {MAX_PRESENCE_USERS} allowed",
            users.len()
        )));
    }
    let found = st.presence.sockets_of(&users).await?;
    let online: Vec<&String> = found
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(u, _)| u)
        .collect();
    let sockets: BTreeMap<&String, _> = found
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(u, s)| (u, s))
        .collect();
    Ok(axum::Json(json!({ "online": online, "sockets": sockets })))
}

/// `POST /api/v1/users/{userId}/disconnect`: every socket of the user, on every node.
pub async fn disconnect(
    State(st): State<ApiState>,
    Path(user_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let user_id = path_id(&user_id, "userId")?;
    st.presence.disconnect_everywhere(&user_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "userId": user_id })),
    ))
}

/// `GET /api/v1/nodes` → `{ nodes: [{ nodeId, connections, startedAt, lastSeen }] }`.
pub async fn nodes(State(st): State<ApiState>) -> Result<impl IntoResponse, ApiError> {
    let nodes = st.nodes.list().await?;
    Ok(axum::Json(json!({ "nodes": nodes })))
}
