//! Presence events (docs/protocol.md §4) and a socket's presence at connect (registered, told its
//! online peers) and at a clean disconnect (removed). The refresh of live sockets is
//! [`crate::presence::refresher`]'s; their removal in a drain is [`crate::drain`]'s.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::socket::DisconnectReason;

use super::App;
use super::ack::{Handler, Responder};
use super::sockets::local_socket;
use crate::auth::Identity;
use crate::error::ClientError;
use crate::presence::{LocalSocket, PresenceError};
use crate::validate;
use socketioxide::handler::MessageHandler;

/// Most user ids one `presence:query` may ask about.
pub const MAX_QUERY_USERS: usize = 1000;

/// The handler of a presence event (or of its inbound alias), by name.
pub fn handler(event: &str) -> Option<Handler> {
    let handler: Handler = match event {
        "presence:ping" | "heartbeat" => |s, v, a| MessageHandler::call(&ping, s, v, a),
        "presence:query" => |s, v, a| MessageHandler::call(&query, s, v, a),
        _ => return None,
    };
    Some(handler)
}

/// Connect sequence steps 2–3: register in presence (peers hear `presence:online` if this is the
/// user's first socket), then send this socket its online peers.
pub async fn on_connect(s: &SocketRef, app: &App, identity: &Identity) {
    let Some(me) = local_socket(s) else { return };
    let peers = match app.presence.connect(&identity.user_id, &me).await {
        Ok(peers) => Some(peers),
        Err(e) => {
            // The periodic refresh registers the socket once Redis answers again.
            tracing::warn!(error = %e, "presence registration failed; refresh will retry");
            None
        }
    };
    // A socket that closed while it was being registered had its removal run first: remove
    // the field it left, or nobody would refresh it and peers would see a late `expired`.
    if !s.connected() {
        app.presence
            .disconnect(&identity.user_id, &me.sid)
            .await
            .ok();
        return;
    }
    // The peers were read by the registration; read them again only if it failed.
    let online = app.presence.bulk_online(&identity.user_id, peers).await;
    match online {
        Ok(users) => {
            s.emit("presence:bulk-online", &json!({ "users": users }))
                .ok();
        }
        Err(e) => tracing::warn!(error = %e, "presence:bulk-online unavailable"),
    }
}

/// A clean disconnect removes the socket's presence field at once (`reason: disconnected`); an
/// unclean one (the transport broke, pings stopped) leaves it to expire like a crash would
/// (`reason: expired`), as docs/protocol.md §4 reads.
pub async fn on_disconnect(s: &SocketRef, app: &App, reason: DisconnectReason) {
    if matches!(
        reason,
        DisconnectReason::TransportError | DisconnectReason::HeartbeatTimeout
    ) {
        return;
    }
    let Some(identity) = s.extensions.get::<Arc<Identity>>() else {
        return;
    };
    if let Err(e) = app
        .presence
        .disconnect(&identity.user_id, &s.id.to_string())
        .await
    {
        tracing::warn!(error = %e, "presence removal failed; the field expires instead");
    }
}

async fn ping(r: Responder, State(app): State<App>, io: SocketIo) {
    let result = async {
        let identity = r
            .identity()
            .ok_or_else(|| ClientError::internal(&"socket without identity"))?;
        // A draining node already removed its sockets' presence; they reconnect elsewhere.
        if app.health.draining() {
            return Ok(json!({ "success": true }));
        }
        let room = crate::chat::user_room(&identity.user_id);
        let mine: Vec<LocalSocket> = io
            .to(room)
            .sockets()
            .iter()
            .filter_map(local_socket)
            .collect();
        app.presence
            .refresh(&[(identity.user_id.clone(), mine)], false)
            .await
            .map_err(|e| presence_error(&e))?;
        Ok::<_, ClientError>(json!({ "success": true }))
    }
    .await;
    r.reply(result);
}

async fn query(r: Responder, State(app): State<App>, TryData(data): TryData<Value>) {
    let result = async {
        let payload = data.map_err(|_| ClientError::invalid("payload must be a JSON object"))?;
        let obj = validate::object(&payload)?;
        let Some(Value::Array(items)) = obj.get("userIds") else {
            return Err(ClientError::invalid(
                "userIds is required and must be an array",
            ));
        };
        if items.len() > MAX_QUERY_USERS {
            return Err(ClientError::invalid(format!(
                "userIds has {} entries, more than the {MAX_QUERY_USERS} allowed",
                items.len()
            )));
        }
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            match item.as_str() {
                Some(id) if validate::is_valid_id(id) => ids.push(id.to_owned()),
                _ => return Err(ClientError::invalid("userIds must contain only valid ids")),
            }
        }
        let identity = r
            .identity()
            .ok_or_else(|| ClientError::internal(&"socket without identity"))?;
        let online = app
            .presence
            .query(&identity.user_id, &ids)
            .await
            .map_err(|e| presence_error(&e))?;
        Ok(json!({ "success": true, "online": online }))
    }
    .await;
    r.reply(result);
}

fn presence_error(e: &PresenceError) -> ClientError {
    ClientError::from_store(e)
}
