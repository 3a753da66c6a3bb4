//! The Socket.IO side of a node: the handshake (JWT in a connect middleware), the connect
//! sequence of docs/protocol.md §1, and one file per event family. Handlers stay thin: they parse
//! and validate a payload, call the domain ([`crate::chat`]) and answer with an ACK — or, when
//! the client asked for none and the event failed, with an `error` event.

pub mod chat;
pub mod expiry;
pub mod presence;
pub mod routing;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, State, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, MessageHandler};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Socket};

use crate::auth::{AuthError, Authenticator, Identity, bearer};
use crate::chat::{Chats, chat_room, role_room, user_room};
use crate::clock;
use crate::error::ClientError;

/// Everything a handler may use, shared by all sockets of the node.
#[derive(Clone)]
pub struct App {
    /// Chat domain service.
    pub chats: Chats,
    /// Presence service.
    pub presence: crate::presence::Presence,
    /// Routed service events.
    pub router: crate::routing::Router,
    /// Per-socket event budget: (events per second, burst).
    pub rate_limit: (u32, u32),
    /// Per-socket and per-user limits.
    pub limits: Limits,
    /// Token verifier.
    pub auth: Authenticator,
    /// This node's id.
    pub node_id: Arc<str>,
    /// MAX_MESSAGE_BYTES.
    pub max_message_bytes: usize,
    /// Readiness flags: handshakes are refused until the backplane reader runs.
    pub health: Arc<crate::health::Health>,
    /// When each local socket's token expires ([`expiry::run`] tells and disconnects it).
    pub expiries: Arc<expiry::Expiries>,
}

/// Limits on what one socket or user may hold (0 = unlimited).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Live sockets per user, cluster-wide (counted in the user's presence hash).
    pub connections_per_user: u32,
    /// Rooms per socket.
    pub rooms_per_socket: usize,
    /// Consecutive over-budget events before the socket is disconnected.
    pub disconnect_after_over_budget: u32,
}

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

/// The request headers read after this middleware (the CORS layer in front has read its own):
/// the token's fallback, the websocket handshake, the polling body's type. The others (cookies,
/// user agent, languages: a kilobyte or more from a browser) are not kept: engineioxide would
/// hold them for the socket's whole life.
const KEPT_HEADERS: [axum::http::HeaderName; 6] = [
    axum::http::header::AUTHORIZATION,
    axum::http::header::CONNECTION,
    axum::http::header::CONTENT_TYPE,
    axum::http::header::SEC_WEBSOCKET_KEY,
    axum::http::header::SEC_WEBSOCKET_VERSION,
    axum::http::header::UPGRADE,
];

/// Copies the request's URI and the header values still needed out of the connection's read
/// buffer, and drops the other headers.
///
/// engineioxide keeps every session's request parts for the session's whole life, and hyper
/// parses them as slices of the connection's 8 KiB read buffer, so without the copy each idle
/// socket holds that buffer (measured with heaptrack: 16 KiB per socket, the largest single
/// share of a socket's memory). The copy is the few hundred bytes the headers really take.
pub async fn detach_request_buffers(req: axum::extract::Request) -> axum::extract::Request {
    let (mut parts, body) = req.into_parts();
    let mut kept = axum::http::HeaderMap::new();
    for name in KEPT_HEADERS {
        for v in parts.headers.get_all(&name) {
            if let Ok(mut owned) = axum::http::HeaderValue::from_bytes(v.as_bytes()) {
                owned.set_sensitive(v.is_sensitive());
                kept.append(name.clone(), owned);
            }
        }
    }
    parts.headers = kept;
    if let Ok(uri) = axum::http::Uri::try_from(parts.uri.to_string()) {
        // axum's router has put a clone of the URI (sharing the buffer) into the extensions.
        if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        parts.uri = uri;
    }
    axum::extract::Request::from_parts(parts, body)
}

/// Builds the Socket.IO layer with the default namespace and its handlers.
pub fn build(app: App, limits: IoLimits) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .with_state(app)
        .ws_max_message_size(limits.ws_max_message_bytes)
        .max_payload(limits.ws_max_message_bytes as u64)
        .max_buffer_size(limits.socket_buffer_packets)
        // tungstenite reserves this much per socket up front (engineioxide's default is 4 KiB).
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES)
        .ping_interval(limits.ping_interval)
        .ping_timeout(limits.ping_timeout)
        .connect_timeout(Duration::from_secs(10))
        .build_layer();
    io.ns("/", on_connect.with(counted_authenticate));
    (layer, io)
}

/// Connect middleware: verifies the token (from `auth.token`, else the `Authorization: Bearer`
/// header; never the query string), reads the user's chats, then registers the event handlers
/// and joins the socket's rooms — all before socketioxide sends the CONNECT packet. The connect
/// handler runs later, as a separate task, so events a client sends right after its `connect`
/// fired would otherwise find no handler and be dropped. A refusal becomes the client's
/// `connect_error`, and socketioxide removes the socket from any room it joined here.
async fn authenticate(
    s: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), HandshakeError> {
    let from_auth = auth
        .ok()
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = match from_auth {
        Some(t) => t,
        None => s
            .req_parts()
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(bearer)
            .map(str::to_owned)
            .ok_or(HandshakeError::Auth(AuthError::Missing))?,
    };
    let identity = app
        .auth
        .verify(&token)
        .await
        .map_err(HandshakeError::Auth)?;
    // A socket accepted before the reader is positioned could miss its first messages.
    if !app.health.reader_running() || app.health.draining() {
        return Err(HandshakeError::Unavailable);
    }
    let chats = app.chats.chats_of(&identity.user_id).await.map_err(|e| {
        tracing::warn!(error = %e, "handshake refused: redis unavailable");
        HandshakeError::Unavailable
    })?;
    let max = app.limits.connections_per_user;
    if max > 0 {
        let live = app
            .presence
            .socket_count(&identity.user_id)
            .await
            .map_err(|_| HandshakeError::Unavailable)?;
        if live >= max as usize {
            return Err(HandshakeError::TooManyConnections(max));
        }
    }

    s.on_fallback(Events);
    s.on_disconnect(on_disconnect);

    let mut rooms = vec![user_room(&identity.user_id)];
    if let Some(role) = &identity.role_context_id {
        rooms.push(role_room(role));
    }
    rooms.extend(chats.iter().map(|c| chat_room(c)));
    s.join(rooms);
    s.extensions.insert(Arc::new(identity));
    s.extensions.insert(InitialChats(Arc::new(chats)));
    s.extensions.insert(ConnectedAt(clock::now_iso().into()));
    // A socket may have at most its burst of sends waiting for Redis: while Redis stalls, what
    // a socket queues (each send holding its payload) is bounded by a count, not by how long the
    // stall lasts (docs/reliability.md).
    s.extensions.insert(SendOrder::new(app.rate_limit.1.max(1)));
    s.extensions.insert(EventBudget::new(
        app.rate_limit,
        app.limits.disconnect_after_over_budget,
    ));
    Ok(())
}

/// [`authenticate`], counted in [`crate::metrics`]: accepted handshakes by transport, refusals
/// by reason.
async fn counted_authenticate(
    s: SocketRef,
    app: State<App>,
    auth: TryData<Value>,
) -> Result<(), HandshakeError> {
    let result = authenticate(s.clone(), app, auth).await;
    match &result {
        Ok(()) => crate::metrics::connected(s.transport_type()),
        Err(HandshakeError::Auth(e)) => crate::metrics::refused_auth(e),
        Err(HandshakeError::Unavailable) => crate::metrics::refused_unavailable(),
        Err(HandshakeError::TooManyConnections(_)) => {
            crate::metrics::refused_too_many_connections()
        }
    }
    result
}

/// A socket's event budget (docs/protocol.md §8, `RATE_LIMIT_PER_SEC`/`_BURST`), and how
/// many events in a row it refused: sustained abuse ends in a disconnect.
#[derive(Clone)]
pub struct EventBudget(Arc<BudgetState>);

/// The shared state behind [`EventBudget`].
pub struct BudgetState {
    limiter: governor::DefaultDirectRateLimiter,
    refused_in_a_row: std::sync::atomic::AtomicU32,
    disconnect_after: u32,
}

/// What the budget says about one event.
enum Verdict {
    Admit,
    Refuse,
    Disconnect,
}

impl EventBudget {
    fn new((per_sec, burst): (u32, u32), disconnect_after: u32) -> Self {
        let per_sec = std::num::NonZeroU32::new(per_sec).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(burst).unwrap_or(per_sec);
        let quota = governor::Quota::per_second(per_sec).allow_burst(burst);
        EventBudget(Arc::new(BudgetState {
            limiter: governor::RateLimiter::direct(quota),
            refused_in_a_row: std::sync::atomic::AtomicU32::new(0),
            disconnect_after,
        }))
    }

    fn check(&self) -> Verdict {
        use std::sync::atomic::Ordering::Relaxed;
        if self.0.limiter.check().is_ok() {
            self.0.refused_in_a_row.store(0, Relaxed);
            return Verdict::Admit;
        }
        let refused = self.0.refused_in_a_row.fetch_add(1, Relaxed) + 1;
        if self.0.disconnect_after > 0 && refused >= self.0.disconnect_after {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

/// The event was over the socket's budget; it was answered `RATE_LIMITED` and not handled.
#[derive(Debug, thiserror::Error)]
#[error("event over the socket's budget")]
pub struct OverBudget;

/// When the socket connected (ISO 8601), for its presence field.
#[derive(Clone)]
pub struct ConnectedAt(pub Arc<str>);

/// The chats read at the handshake, kept until the connect handler's second read.
#[derive(Clone)]
struct InitialChats(Arc<Vec<String>>);

/// Why a handshake was refused; `Display` is the `connect_error` message.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0}")]
    Auth(AuthError),
    #[error("UNAVAILABLE: the gateway could not reach its store; retry")]
    Unavailable,
    #[error("RATE_LIMITED: this user already has {0} live connections, the most allowed")]
    TooManyConnections(u32),
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
        s.join(added);
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
    presence::on_disconnect(&s, &app, reason).await;
}

/// A client event handler as [`Events`] calls it: socketioxide's raw handler signature.
pub type Handler = fn(Arc<Socket<LocalAdapter>>, socketioxide::handler::Value, Option<i64>);

/// Every client event of a socket, dispatched by name to its family: [`chat`], [`presence`],
/// else [`routing`] (service events, or `INVALID_EVENT`). Registered as the socket's one
/// fallback handler: socketioxide keeps a map of named handlers per socket, ~670 bytes for our
/// 15 names on every socket for a table that is the same for all of them; this one is the
/// node's, and the per-socket map stays empty.
struct Events;

impl MessageHandler<LocalAdapter, ()> for Events {
    fn call(
        &self,
        s: Arc<Socket<LocalAdapter>>,
        mut v: socketioxide::handler::Value,
        ack_id: Option<i64>,
    ) {
        // socketioxide read the name before it called us; were it unreadable, routing answers.
        let handler = match Event::from_message_parts(&s, &mut v, &ack_id) {
            Ok(Event(name)) => chat::handler(&name)
                .or_else(|| presence::handler(&name))
                .or_else(|| session::handler(&name)),
            Err(_) => None,
        };
        handler.unwrap_or(routing::HANDLER)(s, v, ack_id);
    }
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

/// Keeps a socket's `chat:send`s in the order they arrived, even when the client does not wait
/// for each ACK: socketioxide runs every event in its own task, so two sends of one socket could
/// otherwise reach Redis — and get their offsets — in the other order. Each send takes a ticket
/// when it is read off the socket (in arrival order) and is handled when its turn comes.
#[derive(Clone)]
pub struct SendOrder(Arc<SendOrderState>);

/// The state behind [`SendOrder`].
pub struct SendOrderState {
    next_ticket: std::sync::atomic::AtomicU64,
    /// The ticket being served; created at the socket's first send (its shared state is ~350
    /// bytes, and most sockets, in a large room, only ever receive).
    serving: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
    /// Most sends that may wait for their turn at once.
    max_waiting: u64,
}

impl SendOrder {
    fn new(max_waiting: u32) -> Self {
        SendOrder(Arc::new(SendOrderState {
            next_ticket: std::sync::atomic::AtomicU64::new(0),
            serving: std::sync::OnceLock::new(),
            max_waiting: u64::from(max_waiting),
        }))
    }

    fn serving(&self) -> &tokio::sync::watch::Sender<u64> {
        self.0
            .serving
            .get_or_init(|| tokio::sync::watch::Sender::new(0))
    }

    /// The next ticket, or `None` when `max_waiting` sends are already waiting or running.
    fn take_ticket(&self) -> Option<u64> {
        let serving = *self.serving().borrow();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.0
            .next_ticket
            .fetch_update(relaxed, relaxed, |next| {
                (next.saturating_sub(serving) < self.0.max_waiting).then_some(next + 1)
            })
            .ok()
    }
}

/// A send's turn; the next one's comes when this is dropped, whatever the outcome.
pub struct Turn {
    order: SendOrder,
    ticket: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.order.serving().send_replace(self.ticket + 1);
    }
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
            responder
                .socket
                .emit(
                    "error",
                    &json!({ "event": responder.event, "code": "RATE_LIMITED",
                         "message": "disconnected: too many events over the budget" }),
                )
                .ok();
            responder.socket.clone().disconnect().ok();
            return Err(OverBudget);
        }
        let is_send = matches!(responder.event.as_str(), "chat:send" | "sendMessage");
        if matches!(verdict, Verdict::Refuse) {
            crate::metrics::rate_limited(&responder.event);
            let err = ClientError::new(
                crate::error::ErrorCode::RateLimited,
                "too many events: slow down",
            );
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
                        crate::error::ErrorCode::Unavailable,
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
    let client_msg_id = payload.ok().and_then(|p| {
        p.get("clientMsgId")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let body = json!({ "success": false, "status": "FAILED",
                       "clientMsgId": client_msg_id, "error": err.to_json() });
    responder.fail_with(err, body);
}

impl Responder {
    /// Waits until every `chat:send` this socket sent before this one was handled; the returned
    /// turn lets the next one go when dropped. Events without a ticket go at once.
    pub async fn turn(&self) -> Option<Turn> {
        let ticket = self.ticket?;
        let order = self.socket.extensions.get::<SendOrder>()?;
        let mut serving = order.serving().subscribe();
        // The sender lives in the order, which this function holds: the wait cannot fail.
        let _ = serving.wait_for(|now| *now >= ticket).await;
        Some(Turn { order, ticket })
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
        let body = err.ack();
        self.fail_with(err, body);
    }

    /// Answers failure with a custom ACK body (e.g. `chat:send`'s `status: FAILED`).
    pub fn fail_with(self, err: ClientError, ack_body: Value) {
        crate::metrics::ack(&self.event, Some(err.code));
        if self.has_ack {
            self.ack.send(&ack_body).ok();
        } else {
            self.socket
                .emit(
                    "error",
                    &json!({ "event": self.event, "code": err.code.as_str(), "message": err.message }),
                )
                .ok();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_may_have_at_most_its_cap_of_sends_waiting() {
        let order = SendOrder::new(2);
        assert_eq!(order.take_ticket(), Some(0));
        assert_eq!(order.take_ticket(), Some(1));
        assert_eq!(order.take_ticket(), None, "a third send waits behind two");
        // The first send finishes: one place frees up, and tickets stay consecutive.
        drop(Turn {
            order: order.clone(),
            ticket: 0,
        });
        assert_eq!(order.take_ticket(), Some(2));
        assert_eq!(order.take_ticket(), None);
    }
}
