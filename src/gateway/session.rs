//! `session:refresh` (docs/protocol.md §1): a live socket's session moves to a new token's
//! `exp` without a reconnect, so short-lived identity-provider tokens cost no reconnect storms.
//! Rooms, presence and everything else of the socket stay as they were.

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::extract::{State, TryData};
use socketioxide::handler::MessageHandler;

use super::{App, Handler, Responder};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};

/// The handler of a session event, by name.
pub fn handler(event: &str) -> Option<Handler> {
    let handler: Handler = match event {
        "session:refresh" => |s, v, a| MessageHandler::call(&refresh, s, v, a),
        _ => return None,
    };
    Some(handler)
}

async fn refresh(r: Responder, State(app): State<App>, TryData(data): TryData<Value>) {
    let result = async {
        let token = data
            .ok()
            .as_ref()
            .and_then(|v| v.get("token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::invalid("token must be a non-empty string"))?;
        let current = r
            .identity()
            .ok_or_else(|| ClientError::internal(&"socket without identity"))?;
        let next = app
            .auth
            .verify_refresh(&current, &token)
            .await
            .map_err(|e| unauthorized(&e.to_string()))?;
        // The identity may have changed while the token was verified (another refresh): move
        // the session from whatever it is now.
        let socket = r.socket();
        let current = socket
            .extensions
            .get::<Arc<Identity>>()
            .ok_or_else(|| ClientError::internal(&"socket without identity"))?;
        if !app.expiries.extend(&current, &next, socket.id) {
            return Err(unauthorized("the session already expired"));
        }
        let exp = next.exp;
        socket.extensions.insert(Arc::new(next));
        Ok::<_, ClientError>(json!({ "success": true, "exp": exp }))
    }
    .await;
    crate::metrics::session_refresh(result.is_ok());
    r.reply(result);
}

/// `UNAUTHORIZED` with the refusal's reason (the text after the handshake's `UNAUTHORIZED: `).
fn unauthorized(reason: &str) -> ClientError {
    let reason = reason.strip_prefix("UNAUTHORIZED: ").unwrap_or(reason);
    ClientError::new(ErrorCode::Unauthorized, reason)
}
