//! Events the gateway does not handle itself. Unknown names answer `INVALID_EVENT`; routed
//! `service:module:name` events to registered services slot in here.

use socketioxide::extract::SocketRef;

use super::Responder;
use crate::error::{ClientError, ErrorCode};

/// Registers the fallback handler on a socket (before its first await).
pub fn register(s: &SocketRef) {
    s.on_fallback(unknown);
}

async fn unknown(r: Responder) {
    let name: String = r.event_name().chars().take(64).collect();
    r.fail(ClientError::new(
        ErrorCode::InvalidEvent,
        format!("unknown event {name:?}"),
    ));
}
