//! Presence events (PROTOCOL.md §4). The core gateway answers `presence:ping` and its alias
//! `heartbeat`; user-level presence state arrives with the presence subsystem.

use serde_json::json;
use socketioxide::extract::SocketRef;

use super::Responder;

/// Registers the presence handlers on a socket (before its first await).
pub fn register(s: &SocketRef) {
    s.on("presence:ping", ping);
    s.on("heartbeat", ping);
}

async fn ping(r: Responder) {
    r.ok(json!({ "success": true }));
}
