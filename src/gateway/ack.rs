//! How an event handler is called and how it answers: the [`Handler`] signature, the
//! [`Responder`] every handler takes first (it admits the event against the socket's budget and
//! send order), and the one place failure answers are built — the ACK when the client asked for
//! one, else an `error` event (docs/protocol.md §2), in `chat:send`'s shape for sends (§3).

use std::sync::Arc;

use serde_json::{Value, json};
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::FromMessageParts;
use socketioxide::socket::Socket;

use super::budget::{EventBudget, OverBudget, Verdict};
use super::order::{self, SendOrder, Turn};
use crate::auth::Identity;
use crate::error::{ClientError, ErrorCode};

/// A client event handler as the dispatcher calls it: socketioxide's raw handler signature.
pub type Handler = fn(Arc<Socket<LocalAdapter>>, socketioxide::handler::Value, Option<i64>);

/// The shape of a failure ACK.
pub enum Failure<'a> {
    /// `ClientError::ack`: `{success: false, error}`.
    Standard,
    /// `chat:send`'s: `{success: false, status: "FAILED", clientMsgId, error}`, echoing the
    /// client's id whenever it was readable.
    Send {
        /// The payload's `clientMsgId`, if readable.
        client_msg_id: Option<&'a str>,
    },
}

/// The ACK body of a failed event.
pub fn failure_ack(err: &ClientError, shape: Failure<'_>) -> Value {
    match shape {
        Failure::Standard => err.ack(),
        Failure::Send { client_msg_id } => json!({
            "success": false,
            "status": "FAILED",
            "clientMsgId": client_msg_id,
            "error": err.to_json(),
        }),
    }
}

/// The `error` event a failed event gets when the client asked for no ACK.
fn error_event(event: &str, code: ErrorCode, message: &str) -> Value {
    json!({ "event": event, "code": code.as_str(), "message": message })
}

/// A send payload's `clientMsgId`, if the payload is readable.
pub fn client_msg_id(payload: &Value) -> Option<&str> {
    payload.get("clientMsgId").and_then(Value::as_str)
}

/// How a handler answers: the ACK callback when the client sent one, else an `error` event on
/// failure (docs/protocol.md §2). Extracted once per event, before the payload.
pub struct Responder {
    socket: SocketRef,
    ack: AckSender,
    has_ack: bool,
    event: String,
    ticket: Option<u64>,
}

/// Every handler takes a [`Responder`] first, so the budget is checked here, once for every
/// event: an event over budget is answered `RATE_LIMITED` and its handler never runs.
impl FromMessageParts<LocalAdapter> for Responder {
    type Error = OverBudget;

    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut socketioxide::handler::Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, OverBudget> {
        let event = Event::from_message_parts(s, v, ack_id)
            .map(|e| e.0)
            .unwrap_or_default();
        crate::metrics::event_received(&event);
        let Ok(socket) = SocketRef::<LocalAdapter>::from_message_parts(s, v, ack_id);
        let Ok(ack) = AckSender::<LocalAdapter>::from_message_parts(s, v, ack_id);
        let mut responder = Responder {
            socket,
            ack,
            has_ack: ack_id.is_some(),
            event,
            ticket: None,
        };
        let verdict = s
            .extensions
            .get::<EventBudget>()
            .map_or(Verdict::Admit, |b| b.check());
        if matches!(verdict, Verdict::Disconnect) {
            tracing::info!(sid = %s.id, "disconnecting a socket that kept exceeding its budget");
            let body = error_event(
                &responder.event,
                ErrorCode::RateLimited,
                "disconnected: too many events over the budget",
            );
            responder.socket.emit("error", &body).ok();
            responder.socket.clone().disconnect().ok();
            return Err(OverBudget);
        }
        let is_send = order::is_send(&responder.event);
        if matches!(verdict, Verdict::Refuse) {
            crate::metrics::rate_limited(&responder.event);
            let err = ClientError::new(ErrorCode::RateLimited, "too many events: slow down");
            if is_send {
                refuse_send(responder, s, v, ack_id, err);
            } else {
                responder.fail(err);
            }
            return Err(OverBudget);
        }
        if is_send && let Some(order) = s.extensions.get::<SendOrder>() {
            match order.take_ticket() {
                Some(t) => responder.ticket = Some(t),
                // Sends are piling up behind a slow store: refuse this one at once rather than
                // hold it (certainly not accepted; the client retries later).
                None => {
                    let err = ClientError::new(
                        ErrorCode::Unavailable,
                        "too many sends waiting for the store: retry later",
                    );
                    refuse_send(responder, s, v, ack_id, err);
                    return Err(OverBudget);
                }
            }
        }
        Ok(responder)
    }
}

/// Answers a send refused before its handler ran, in chat:send's shape (docs/protocol.md §3).
fn refuse_send(
    responder: Responder,
    s: &Arc<Socket<LocalAdapter>>,
    v: &mut socketioxide::handler::Value,
    ack_id: &Option<i64>,
    err: ClientError,
) {
    let Ok(TryData(payload)) = TryData::<Value>::from_message_parts(s, v, ack_id);
    let payload = payload.ok();
    responder.fail_send(err, payload.as_ref().and_then(client_msg_id));
}

impl Responder {
    /// Waits until every `chat:send` this socket sent before this one was handled; the returned
    /// turn lets the next one go when dropped. Events without a ticket go at once.
    pub async fn turn(&self) -> Option<Turn> {
        let ticket = self.ticket?;
        let order = self.socket.extensions.get::<SendOrder>()?;
        Some(order.turn(ticket).await)
    }

    /// The socket that sent the event.
    pub fn socket(&self) -> &SocketRef {
        &self.socket
    }

    /// The name of the event being answered.
    pub fn event_name(&self) -> &str {
        &self.event
    }

    /// The verified identity of the socket's user.
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.socket.extensions.get::<Arc<Identity>>()
    }

    /// Answers success with `body`.
    pub fn ok(self, body: Value) {
        crate::metrics::ack(&self.event, None);
        self.ack.send(&body).ok();
    }

    /// Answers failure with the standard failure ACK.
    pub fn fail(self, err: ClientError) {
        self.fail_as(err, Failure::Standard);
    }

    /// Answers a failed send in `chat:send`'s shape, echoing `client_msg_id`.
    pub fn fail_send(self, err: ClientError, client_msg_id: Option<&str>) {
        self.fail_as(err, Failure::Send { client_msg_id });
    }

    fn fail_as(self, err: ClientError, shape: Failure<'_>) {
        crate::metrics::ack(&self.event, Some(err.code));
        if self.has_ack {
            self.ack.send(&failure_ack(&err, shape)).ok();
        } else {
            let body = error_event(&self.event, err.code, &err.message);
            self.socket.emit("error", &body).ok();
        }
    }

    /// Answers with `result`: `ok(body)` or `fail(err)`.
    pub fn reply(self, result: Result<Value, ClientError>) {
        match result {
            Ok(body) => self.ok(body),
            Err(e) => self.fail(e),
        }
    }
}
