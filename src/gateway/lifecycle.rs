//! A socket's life on this node (docs/protocol.md §1): the Socket.IO layer and its settings, the
//! connect chain (handshake, then handler registration, then the connect handler), and the
//! disconnect.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::DisconnectReason;

use super::dispatch::Events;
use super::handshake::{self, HandshakeError, InitialChats};
use super::{App, presence};
use crate::auth::Identity;
use crate::chat::chat_room;

/// Socket.IO limits taken from the config.
#[derive(Debug, Clone, Copy)]
pub struct IoLimits {
    /// Largest websocket message, bytes.
    pub ws_max_message_bytes: usize,
    /// Outgoing packets buffered per socket.
    pub socket_buffer_packets: usize,
    /// Engine.IO ping interval.
    pub ping_interval: Duration,
    /// Engine.IO ping timeout.
    pub ping_timeout: Duration,
}

/// Websocket read buffer of a socket, kept for its life, and the most one read takes: a frame
/// longer than this costs one read per 512 bytes (tungstenite reserves the frame's length but
/// reads in steps of this size). Client events are small and rare next to deliveries (a chat
/// send is ~200 bytes; a 16 KiB one takes 32 reads instead of 16), while every idle socket
/// holds 512 bytes less than with 1 KiB (docs/benchmarks.md, "Fourth cut").
const WS_READ_BUFFER_BYTES: usize = 512;

/// Builds the Socket.IO layer with the default namespace and its handlers.
pub fn build(app: App, limits: IoLimits) -> (SocketIoLayer, SocketIo) {
    let admin = app.admin.clone();
    let (layer, io) = SocketIo::builder()
        .with_state(app)
        // The Admin UI hook of the event dispatch reads this entry alone (gateway::dispatch).
        .with_state(admin.clone())
        .ws_max_message_size(limits.ws_max_message_bytes)
        .max_payload(limits.ws_max_message_bytes as u64)
        .max_buffer_size(limits.socket_buffer_packets)
        // tungstenite reserves this much per socket up front (engineioxide's default is 4 KiB).
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .ping_interval(limits.ping_interval)
        .ping_timeout(limits.ping_timeout)
        .connect_timeout(Duration::from_secs(10))
        .build_layer();
    io.ns("/", on_connect.with(admit));
    // Only when enabled: otherwise `/admin` does not exist and a client is told so.
    if let Some(admin) = admin {
        admin.register(&io);
    }
    (layer, io)
}

/// Connect middleware: the handshake ([`handshake::counted_authenticate`]), then the socket's
/// event and disconnect handlers — all before socketioxide sends the CONNECT packet. The connect
/// handler runs later, as a separate task, so events a client sends right after its `connect`
/// fired would otherwise find no handler and be dropped.
async fn admit(s: SocketRef, app: State<App>, auth: TryData<Value>) -> Result<(), HandshakeError> {
    handshake::counted_authenticate(s.clone(), app, auth).await?;
    s.on_fallback(Events);
    s.on_disconnect(on_disconnect);
    Ok(())
}

/// Runs once the socket is connected: puts it on the node's expiry list and re-reads its chats.
async fn on_connect(s: SocketRef, State(app): State<App>) {
    let Some(identity) = s.extensions.get::<Arc<Identity>>() else {
        // Only reachable if the middleware did not run; never serve an anonymous socket.
        s.disconnect().ok();
        return;
    };
    app.expiries.watch(&identity, s.id);

    // A membership change published between the handshake's read and the room joins would be
    // missed; one more read closes that window.
    reconcile_chats(&s, &app, &identity).await;
    presence::on_connect(&s, &app, &identity).await;
    if let Some(admin) = &app.admin {
        admin.socket_connected(&s);
    }
    tracing::debug!(sid = %s.id, user = %identity.user_id, transport = ?s.transport_type(), "connected");
}

/// Applies membership changes that happened between the handshake's read of the user's chats
/// and the socket joining its `user:` room (the backplane Join/Leave for them was applied before
/// the socket could be selected by it). Only the difference is applied, so a `chat:leave` the
/// client already sent is not undone.
async fn reconcile_chats(s: &SocketRef, app: &App, identity: &Identity) {
    let Some(InitialChats(initial)) = s.extensions.remove::<InitialChats>() else {
        return;
    };
    let Ok(now) = app.chats.chats_of(&identity.user_id).await else {
        return;
    };
    let added: Vec<String> = now
        .iter()
        .filter(|c| !initial.contains(c))
        .map(|c| chat_room(c))
        .collect();
    let removed: Vec<String> = initial
        .iter()
        .filter(|c| !now.contains(c))
        .map(|c| chat_room(c))
        .collect();
    if !added.is_empty() {
        let joined = app
            .interest
            .join(&added, async { s.join(added.clone()) }, false)
            .await;
        if let Err(e) = joined {
            tracing::debug!(error = %e, "reconciled rooms joined without a known position");
        }
    }
    if !removed.is_empty() {
        s.leave(removed);
    }
}

async fn on_disconnect(s: SocketRef, reason: DisconnectReason, State(app): State<App>) {
    if let Some(identity) = s.extensions.get::<Arc<Identity>>() {
        app.expiries.unwatch(&identity, s.id);
    }
    tracing::debug!(sid = %s.id, ?reason, "disconnected");
    crate::metrics::disconnected(&reason);
    if let Some(admin) = &app.admin {
        admin.socket_disconnected(&s, &reason);
    }
    presence::on_disconnect(&s, &app, reason).await;
}
