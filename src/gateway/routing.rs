//! Events the gateway does not handle itself: `service:module:name` events of registered
//! services are routed to their Redis stream ([`crate::routing`]); any other name answers
//! `INVALID_EVENT`.

use serde_json::{Value, json};
use socketioxide::extract::{State, TryData};

use super::App;
use super::ack::{Handler, Responder};
use crate::error::ClientError;
use crate::routing::Origin;
use socketioxide::handler::MessageHandler;

/// The handler of every event no other family answers.
pub const HANDLER: Handler = |s, v, a| MessageHandler::call(&route, s, v, a);

async fn route(r: Responder, State(app): State<App>, TryData(data): TryData<Value>) {
    let result = async {
        app.router.stream_for(r.event_name())?;
        let identity = r
            .identity()
            .ok_or_else(|| ClientError::internal(&"socket without identity"))?;
        // The client's payload travels untouched; a missing one is `null`.
        let payload = data.unwrap_or(Value::Null).to_string();
        let sid = r.socket().id.to_string();
        let origin = Origin {
            user_id: &identity.user_id,
            socket_id: &sid,
        };
        let id = app.router.route(r.event_name(), &origin, &payload).await?;
        Ok::<_, ClientError>(json!({ "success": true, "id": id }))
    }
    .await;
    r.reply(result);
}
