//! Chat and membership endpoints.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::{ApiError, ApiState, id_list, json_body, path_id};

/// `POST /api/v1/chats {chatId, members}` → 201; emits `chat:created`.
pub async fn create(State(st): State<ApiState>, body: Body) -> Result<impl IntoResponse, ApiError> {
    let body = json_body(body).await?;
    let chat_id = match body.get("chatId").and_then(|v| v.as_str()) {
        Some(id) => path_id(id, "chatId")?,
        None => {
            return Err(ApiError::bad_request(
                "chatId is required and must be a string",
            ));
        }
    };
    let members = id_list(&body, "members")?;
    st.presence.create_chat(&chat_id, &members).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "chatId": chat_id, "members": members })),
    ))
}

/// `DELETE /api/v1/chats/{chatId}`; emits `chat:deleted`, 404 if there was no such chat.
pub async fn delete(
    State(st): State<ApiState>,
    Path(chat_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let chat_id = path_id(&chat_id, "chatId")?;
    if st.chats.delete_chat(&chat_id).await? {
        Ok(axum::Json(json!({ "chatId": chat_id, "deleted": true })))
    } else {
        Err(ApiError::not_found(format!("no chat {chat_id}")))
    }
}

/// `PUT /api/v1/chats/{chatId}/members {userIds}`: adds members, their live sockets join.
pub async fn add_members(
    State(st): State<ApiState>,
    Path(chat_id): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let chat_id = path_id(&chat_id, "chatId")?;
    let users = id_list(&json_body(body).await?, "userIds")?;
    st.presence.add_members(&chat_id, &users).await?;
    let members = st.chats.members(&chat_id).await?;
    Ok(axum::Json(json!({ "chatId": chat_id, "userIds": members })))
}

/// `GET /api/v1/chats/{chatId}/members` → `{ userIds }`.
pub async fn list_members(
    State(st): State<ApiState>,
    Path(chat_id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let chat_id = path_id(&chat_id, "chatId")?;
    let members = st.chats.members(&chat_id).await?;
    Ok(axum::Json(json!({ "userIds": members })))
}

/// `DELETE /api/v1/chats/{chatId}/members/{userId}`: their sockets leave; 404 if not a member.
pub async fn remove_member(
    State(st): State<ApiState>,
    Path((chat_id, user_id)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let chat_id = path_id(&chat_id, "chatId")?;
    let user_id = path_id(&user_id, "userId")?;
    if st.chats.remove_member(&chat_id, &user_id).await? {
        Ok(axum::Json(
            json!({ "chatId": chat_id, "userId": user_id, "removed": true }),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "{user_id} is not a member of chat {chat_id}"
        )))
    }
}
