//! The handshake: what a connecting socket must show before it is accepted (a JWT from
//! `auth.token`, else the `Authorization: Bearer` header; never the query string), what the node
//! keeps of its HTTP request, and what the socket carries from then on (its identity, rooms,
//! event budget, send order, connect time).

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri, header};
use serde_json::Value;
use socketioxide::extract::{SocketRef, State, TryData};

use super::App;
use super::budget::EventBudget;
use super::order::SendOrder;
use crate::auth::{AuthError, bearer};
use crate::chat::{chat_room, role_room, user_room};
use crate::clock;

/// The request headers read after this middleware (the CORS layer in front has read its own):
/// the token's fallback, the websocket handshake, the polling body's type. The others (cookies,
/// user agent, languages: a kilobyte or more from a browser) are not kept: engineioxide would
/// hold them for the socket's whole life.
const KEPT_HEADERS: [HeaderName; 6] = [
    header::AUTHORIZATION,
    header::CONNECTION,
    header::CONTENT_TYPE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::UPGRADE,
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
    let mut kept = HeaderMap::new();
    for name in KEPT_HEADERS {
        for v in parts.headers.get_all(&name) {
            if let Ok(mut owned) = HeaderValue::from_bytes(v.as_bytes()) {
                owned.set_sensitive(v.is_sensitive());
                kept.append(name.clone(), owned);
            }
        }
    }
    parts.headers = kept;
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        // axum's router has put a clone of the URI (sharing the buffer) into the extensions.
        if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        parts.uri = uri;
    }
    axum::extract::Request::from_parts(parts, body)
}

/// When the socket connected (ISO 8601), for its presence field.
#[derive(Clone)]
pub struct ConnectedAt(pub Arc<str>);

/// The chats read at the handshake, kept until the connect handler's second read.
#[derive(Clone)]
pub struct InitialChats(pub Arc<Vec<String>>);

/// Why a handshake was refused; `Display` is the `connect_error` message.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// No token, or a token that does not verify.
    #[error("{0}")]
    Auth(AuthError),
    /// Redis did not answer, the reader is not positioned yet, or the node is draining.
    #[error("UNAVAILABLE: the gateway could not reach its store; retry")]
    Unavailable,
    /// The user already has this many live sockets (`MAX_CONNECTIONS_PER_USER`).
    #[error("RATE_LIMITED: this user already has {0} live connections, the most allowed")]
    TooManyConnections(u32),
    /// The node took its most new connections this second (`MAX_CONNECTS_PER_SEC`).
    #[error(
        "RATE_LIMITED: this node accepts at most {0} new connections per second; \
         retry after a randomized backoff"
    )]
    ConnectRate(u32),
}

/// Verifies the token, reads the user's chats, joins the socket's rooms and gives it its state,
/// all before socketioxide sends the CONNECT packet. A refusal becomes the client's
/// `connect_error`, and socketioxide removes the socket from any room it joined here.
async fn authenticate(
    s: SocketRef,
    State(app): State<App>,
    TryData(auth): TryData<Value>,
) -> Result<(), HandshakeError> {
    // First, before any work (token verification, Redis): the point is to shed load.
    if let Some(rate) = &app.connect_rate
        && !rate.admit()
    {
        return Err(HandshakeError::ConnectRate(rate.per_sec()));
    }
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
            .get(header::AUTHORIZATION)
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

    let mut rooms = vec![user_room(&identity.user_id)];
    if let Some(role) = &identity.role_context_id {
        rooms.push(role_room(role));
    }
    rooms.extend(chats.iter().map(|c| chat_room(c)));
    if let Some(admin) = &app.admin {
        admin.handshake_started(&s);
    }
    // Subscribed (and each new chat's position read) before the handshake completes: nothing
    // published to these rooms after this point misses the socket.
    app.interest
        .join(&rooms, async { s.join(rooms.clone()) }, true)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "handshake refused: rooms not subscribed");
            HandshakeError::Unavailable
        })?;
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

/// The handshake (token, readiness, chats, connection limit, rooms, socket state), counted in
/// [`crate::metrics`]: accepted handshakes by transport, refusals by reason.
pub async fn counted_authenticate(
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
        Err(HandshakeError::ConnectRate(_)) => crate::metrics::refused_connect_rate(),
    }
    result
}
