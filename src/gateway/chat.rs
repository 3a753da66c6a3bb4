//! Chat events (docs/protocol.md §3) and their inbound aliases.

use serde_json::{Map, Value, json};
use socketioxide::extract::{State, TryData};

use super::App;
use super::ack::{Handler, Responder, client_msg_id};
use crate::chat::{
    HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, MESSAGE_TYPES, SendRequest, chat_room,
};
use crate::error::ClientError;
use crate::validate::{self, MAX_CLIENT_MSG_ID_LEN, is_valid_id};
use socketioxide::handler::MessageHandler;

/// The handler of a chat event (or of one of its inbound aliases), by name.
pub fn handler(event: &str) -> Option<Handler> {
    let handler: Handler = match event {
        "chat:join" | "join-chat" => |s, v, a| MessageHandler::call(&join, s, v, a),
        "joinRoom" => |s, v, a| MessageHandler::call(&join_room, s, v, a),
        "chat:leave" | "leave-chat" => |s, v, a| MessageHandler::call(&leave, s, v, a),
        "chat:send" => |s, v, a| MessageHandler::call(&send, s, v, a),
        "sendMessage" => |s, v, a| MessageHandler::call(&send_message, s, v, a),
        "chat:typing" => |s, v, a| MessageHandler::call(&typing, s, v, a),
        "chat:read" => |s, v, a| MessageHandler::call(&read, s, v, a),
        "chat:history" => |s, v, a| MessageHandler::call(&history, s, v, a),
        _ => return None,
    };
    Some(handler)
}

type Payload = TryData<Value>;

/// The payload as an object; a payload that is missing or not JSON counts as `null`.
fn payload(data: &Payload) -> Result<&Map<String, Value>, ClientError> {
    match &data.0 {
        Ok(v) => validate::object(v),
        Err(_) => Err(ClientError::invalid("payload must be a JSON object")),
    }
}

async fn join(r: Responder, State(app): State<App>, data: Payload) {
    do_join(r, app, data, "chatId").await;
}

async fn join_room(r: Responder, State(app): State<App>, data: Payload) {
    do_join(r, app, data, "roomId").await;
}

async fn do_join(r: Responder, app: App, data: Payload, id_field: &str) {
    let result = async {
        let chat_id = validate::id_field(payload(&data)?, id_field)?;
        let user = identity(&r)?;
        app.chats.require_member(&user, &chat_id).await?;
        let room = chat_room(&chat_id);
        let max = app.limits.rooms_per_socket;
        let rooms = r.socket().rooms();
        if max > 0 && rooms.len() >= max && !rooms.iter().any(|x| *x == room) {
            return Err(ClientError::new(
                crate::error::ErrorCode::RateLimited,
                format!("this socket is in {} rooms, the most allowed", rooms.len()),
            ));
        }
        let socket = r.socket();
        app.interest
            .join(
                std::slice::from_ref(&room),
                async { socket.join(room.clone()) },
                true,
            )
            .await
            .map_err(|_| ClientError::unavailable())?;
        if let Some(admin) = &app.admin {
            admin.room_joined(&r.socket().id.to_string(), &room);
        }
        Ok::<_, ClientError>(json!({ "success": true, "chatId": chat_id }))
    }
    .await;
    r.reply(result);
}

async fn leave(r: Responder, State(app): State<App>, data: Payload) {
    let result = validate::id_field_of(payload(&data), "chatId").map(|chat_id| {
        let room = chat_room(&chat_id);
        r.socket().leave(room.clone());
        if let Some(admin) = &app.admin {
            admin.room_left(&r.socket().id.to_string(), &room);
        }
        json!({ "success": true, "chatId": chat_id })
    });
    r.reply(result);
}

async fn send(r: Responder, State(app): State<App>, data: Payload) {
    do_send(r, app, data, "chatId").await;
}

async fn send_message(r: Responder, State(app): State<App>, data: Payload) {
    do_send(r, app, data, "roomId").await;
}

async fn do_send(r: Responder, app: App, data: Payload, id_field: &str) {
    // In arrival order, even when the client pipelines its sends (see `SendOrder`).
    let turn = r.turn().await;
    let result = async {
        let req = parse_send(payload(&data)?, id_field, app.max_message_bytes)?;
        let user = identity(&r)?;
        let accepted = app.chats.send(&user, &req).await?;
        Ok::<_, ClientError>(json!({
            "success": true,
            "status": "ACCEPTED",
            "clientMsgId": req.client_msg_id,
            "messageId": accepted.message_id,
            "chatId": req.chat_id,
            "offset": accepted.offset,
            "epoch": accepted.epoch,
            "createdAt": accepted.created_at,
        }))
    }
    .await;
    drop(turn);
    match result {
        Ok(body) => r.ok(body),
        // Echo the clientMsgId in a failure ACK whenever it was readable.
        Err(e) => r.fail_send(e, data.0.as_ref().ok().and_then(client_msg_id)),
    }
}

/// Validates a `chat:send` payload (docs/protocol.md §3).
pub fn parse_send(
    obj: &Map<String, Value>,
    id_field: &str,
    max_bytes: usize,
) -> Result<SendRequest, ClientError> {
    let chat_id = validate::id_field(obj, id_field)?;
    let content = match obj.get("content") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(ClientError::invalid("content must not be empty"));
        }
        Some(Value::String(s)) if s.len() > max_bytes => {
            return Err(ClientError::invalid(format!(
                "content is {} bytes, more than the {max_bytes} allowed",
                s.len()
            )));
        }
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err(ClientError::invalid("content is required")),
        Some(_) => return Err(ClientError::invalid("content must be a string")),
    };
    let client_msg_id = match validate::opt_str(obj, "clientMsgId")? {
        None => None,
        Some(id) if id.len() <= MAX_CLIENT_MSG_ID_LEN && is_valid_id(id) => Some(id.to_owned()),
        Some(_) => {
            return Err(ClientError::invalid(
                "clientMsgId must be 1-64 characters of [A-Za-z0-9_.:@-]",
            ));
        }
    };
    let kind = match validate::opt_str(obj, "type")? {
        None => "text".to_owned(),
        Some(t) if MESSAGE_TYPES.contains(&t) => t.to_owned(),
        Some(_) => {
            return Err(ClientError::invalid(
                "type must be one of text, image, file, system",
            ));
        }
    };
    Ok(SendRequest {
        chat_id,
        content,
        client_msg_id,
        kind,
    })
}

async fn typing(r: Responder, State(app): State<App>, data: Payload) {
    let result = async {
        let obj = payload(&data)?;
        let chat_id = validate::id_field(obj, "chatId")?;
        let is_typing = validate::bool_field(obj, "isTyping")?;
        let user = identity(&r)?;
        let sid = r.socket().id.to_string();
        app.chats.typing(&user, &sid, &chat_id, is_typing).await?;
        Ok::<_, ClientError>(json!({ "success": true }))
    }
    .await;
    r.reply(result);
}

async fn read(r: Responder, State(app): State<App>, data: Payload) {
    let result = async {
        let obj = payload(&data)?;
        let chat_id = validate::id_field(obj, "chatId")?;
        let message_id = validate::id_field(obj, "messageId")?;
        let user = identity(&r)?;
        app.chats.read(&user, &chat_id, &message_id).await?;
        Ok::<_, ClientError>(json!({ "success": true }))
    }
    .await;
    r.reply(result);
}

async fn history(r: Responder, State(app): State<App>, data: Payload) {
    let result = async {
        let obj = payload(&data)?;
        let chat_id = validate::id_field(obj, "chatId")?;
        let since = validate::opt_u64(obj, "since")?;
        let epoch = validate::opt_str(obj, "epoch")?;
        let limit = validate::opt_u64(obj, "limit")?
            .map(|l| l.clamp(1, u64::from(HISTORY_MAX_LIMIT)) as u32)
            .unwrap_or(HISTORY_DEFAULT_LIMIT);
        let user = identity(&r)?;
        let h = app
            .chats
            .history(&user, &chat_id, since, epoch, limit)
            .await?;
        Ok::<_, ClientError>(json!({
            "success": true,
            "messages": h.messages,
            "offset": h.offset,
            "epoch": h.epoch,
            "reset": h.reset,
        }))
    }
    .await;
    r.reply(result);
}

fn identity(r: &Responder) -> Result<String, ClientError> {
    r.identity()
        .map(|i| i.user_id.clone())
        .ok_or_else(|| ClientError::internal(&"socket without identity"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn send_validation() {
        let ok = parse_send(&obj(json!({"chatId": "c", "content": "hi"})), "chatId", 10).unwrap();
        assert_eq!(ok.kind, "text");
        assert_eq!(ok.client_msg_id, None);
        let e = |v| parse_send(&obj(v), "chatId", 10).unwrap_err().message;
        assert_eq!(e(json!({"content": "hi"})), "chatId is required");
        assert_eq!(e(json!({"chatId": "c"})), "content is required");
        assert_eq!(
            e(json!({"chatId": "c", "content": 5})),
            "content must be a string"
        );
        assert_eq!(
            e(json!({"chatId": "c", "content": ""})),
            "content must not be empty"
        );
        assert!(e(json!({"chatId": "c", "content": "x".repeat(11)})).contains("11 bytes"));
        assert!(e(json!({"chatId": "c", "content": "x", "type": "video"})).contains("type"));
        assert!(
            e(json!({"chatId": "c", "content": "x", "clientMsgId": "a".repeat(65)}))
                .contains("clientMsgId")
        );
        assert!(e(json!({"chatId": "c d", "content": "x"})).contains("chatId"));
    }
}
