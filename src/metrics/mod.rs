//! Every metric of a node in one place: its name, type, labels and help text ([`ALL`], defined
//! in `defs.rs`), the Prometheus exporter ([`install`]), the `/metrics` endpoint ([`endpoint`]),
//! the exporter's upkeep, and one-line helpers for the call sites. Nothing here talks to Redis.
//!
//! Naming follows Prometheus conventions: a `fanout_` prefix, counters end in `_total`,
//! durations are `_seconds` histograms (buckets [`SECONDS_BUCKETS`], 0.5 ms to 10 s).
//!
//! Labels are bounded: event names are mapped onto a fixed list ([`event_label`], anything else
//! is `other`, routed `service:module:name` events are `routed`), reasons, codes and operations
//! come from enums or string constants, `shard` is the index of a subscriber connection. A user, chat or socket
//! id is never a label. The per-node breakdown comes from Prometheus's own `instance` label.
//!
//! The `metrics` crate's recorder is process-global by design: [`install`] sets it once per
//! process and hands every later caller the same handle, so in-process tests that run several
//! nodes share one set of counters (a test measures deltas around its own workload).

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use socketioxide::socket::DisconnectReason;
use socketioxide::{BroadcastError, SocketError, SocketIo, TransportType};
use tokio_util::sync::CancellationToken;

use crate::auth::AuthError;
use crate::error::ErrorCode;

mod defs;
pub use defs::*;

/// How often [`run_upkeep`] drains histograms.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Client event names (and their aliases) that are labels as themselves.
pub const CLIENT_EVENTS: &[&str] = &[
    "chat:join",
    "join-chat",
    "joinRoom",
    "chat:leave",
    "leave-chat",
    "chat:send",
    "sendMessage",
    "chat:typing",
    "chat:read",
    "chat:history",
    "presence:ping",
    "heartbeat",
    "presence:query",
    "session:refresh",
];

/// Server event names carried by the backplane that are labels as themselves.
pub const SERVER_EVENTS: &[&str] = &[
    "chat:message",
    "chat:typing",
    "chat:read",
    "chat:created",
    "chat:deleted",
    "presence:online",
    "presence:offline",
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle),
/// describes every metric and creates the series whose label values are known in advance, so
/// they read 0 instead of being absent until their first event.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                // Only when something else in the process installed a recorder first.
                tracing::warn!(error = %e, "metrics recorder already set; /metrics stays empty");
            }
            describe_all();
            register_known_series();
            gauge!(BUILD_INFO.name, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle.run_upkeep();
            handle
        })
        .clone()
}

fn describe_all() {
    for m in ALL {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

const TRANSPORTS: [&str; 2] = ["polling", "websocket"];
const REFUSAL_REASONS: [&str; 11] = [
    "missing_token",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_algorithm",
    "wrong_claim",
    "invalid_token",
    "unavailable",
    "too_many_connections",
    "unknown_key",
    "key_set_unavailable",
];

fn register_known_series() {
    for t in TRANSPORTS {
        gauge!(CONNECTIONS.name, "transport" => t).set(0.0);
        counter!(CONNECTS.name, "transport" => t).absolute(0);
    }
    for r in REFUSAL_REASONS {
        counter!(CONNECT_REFUSALS.name, "reason" => r).absolute(0);
    }
    for outcome in ["ok", "refused"] {
        counter!(SESSION_REFRESHES.name, "outcome" => outcome).absolute(0);
    }
    for outcome in ["ok", "error"] {
        counter!(JWKS_FETCHES.name, "outcome" => outcome).absolute(0);
    }
    gauge!(JWKS_AGE.name).set(0.0);
    gauge!(ADMIN_CONNECTIONS.name).set(0.0);
    for outcome in ["password", "session", "refused"] {
        counter!(ADMIN_LOGINS.name, "outcome" => outcome).absolute(0);
    }
    for command in ["emit", "join", "leave", "disconnect"] {
        counter!(ADMIN_COMMANDS.name, "command" => command).absolute(0);
    }
    counter!(ADMIN_RELAY_DROPPED.name).absolute(0);
    gauge!(SUBSCRIPTIONS.name).set(0.0);
    for change in ["subscribe", "unsubscribe"] {
        counter!(SUBSCRIPTION_CHANGES.name, "change" => change).absolute(0);
    }
    counter!(BACKPLANE_GAPS.name).absolute(0);
    for outcome in ["filled", "lost"] {
        counter!(BACKPLANE_GAP_MESSAGES.name, "outcome" => outcome).absolute(0);
    }
    counter!(BACKPLANE_OVERFLOWS.name).absolute(0);
    gauge!(BACKPLANE_CHATS_WAITING.name).set(0.0);
    for r in ["transport_close", "transport_error", "heartbeat_timeout"] {
        counter!(DISCONNECTS.name, "reason" => r).absolute(0);
    }
    for e in CLIENT_EVENTS {
        counter!(EVENTS_RECEIVED.name, "event" => *e).absolute(0);
    }
    // Series that only move on trouble still exist at 0, so dashboards show 0, not "no data".
    counter!(RATE_LIMITED_EVENTS.name, "event" => "chat:send").absolute(0);
    counter!(MESSAGES_ACCEPTED.name).absolute(0);
    counter!(MESSAGES_DEDUPLICATED.name).absolute(0);
    counter!(BACKPLANE_ENTRIES_READ.name).absolute(0);
    counter!(LOCAL_EMITS.name, "event" => "chat:message").absolute(0);
    for r in ["buffer_full", "closed", "slow_consumer"] {
        counter!(SOCKET_SEND_FAILURES.name, "reason" => r).absolute(0);
    }
    let _ = histogram!(DELIVERY_LATENCY.name);
    counter!(REDIS_ERRORS.name, "op" => "xadd", "kind" => "unavailable").absolute(0);
    for mode in ["cluster", "sentinel"] {
        counter!(REDIS_TOPOLOGY_CHANGES.name, "mode" => mode).absolute(0);
    }
    counter!(REDIS_WAIT_TIMEOUTS.name).absolute(0);
    counter!(REDIS_MASTER_ERRORS.name, "master" => "any", "kind" => "unavailable").absolute(0);
    for (kind, reason) in [
        ("online", "connect"),
        ("online", "refresh"),
        ("offline", "disconnected"),
        ("offline", "expired"),
    ] {
        counter!(PRESENCE_TRANSITIONS.name, "kind" => kind, "reason" => reason).absolute(0);
    }
    counter!(KEYSPACE_NOTIFICATIONS.name).absolute(0);
    counter!(PRESENCE_SWEEP_CLAIMS.name).absolute(0);
    counter!(PRESENCE_REPUBLISHED.name).absolute(0);
    counter!(PRESENCE_CAUGHT_UP.name).absolute(0);
}

/// The `/metrics` route of the admin router: Prometheus text format, no API key
/// (docs/protocol.md §8). `io` is this node's Socket.IO handle: the live-connection gauge is counted from it at
/// each scrape (a socket may upgrade from polling to websocket, so counting at connect and
/// disconnect would misattribute it).
pub fn endpoint(handle: PrometheusHandle, io: SocketIo) -> MethodRouter {
    get(move || {
        let body = render(&handle, &io);
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
                .into_response()
        }
    })
}

/// Sets the scrape-time gauges from `io` and renders every metric.
pub fn render(handle: &PrometheusHandle, io: &SocketIo) -> String {
    let (mut polling, mut websocket) = (0u64, 0u64);
    // `io.of("/")`, not `io.sockets()`: the latter panics once a draining node closed `io`,
    // and Prometheus may scrape until the admin server stops.
    let sockets = io.of("/").map(|ns| ns.sockets()).unwrap_or_default();
    for s in sockets {
        match s.transport_type() {
            TransportType::Polling => polling += 1,
            TransportType::Websocket => websocket += 1,
        }
    }
    gauge!(CONNECTIONS.name, "transport" => "polling").set(polling as f64);
    gauge!(CONNECTIONS.name, "transport" => "websocket").set(websocket as f64);
    let admins = io
        .of(crate::admin::NAMESPACE)
        .map(|ns| ns.sockets().len())
        .unwrap_or(0);
    gauge!(ADMIN_CONNECTIONS.name).set(admins as f64);
    handle.render()
}

/// Runs the exporter's upkeep (drains histogram samples, publishes descriptions) every
/// [`UPKEEP_INTERVAL`] until `cancel`.
pub async fn run_upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

// ---- helpers for the call sites --------------------------------------------------------------

/// The label of an event name: itself when listed in [`CLIENT_EVENTS`] or [`SERVER_EVENTS`], `routed` for a `service:module:name`
/// event, else `other` (client-chosen names must not create series).
pub fn event_label(event: &str) -> &'static str {
    let known = CLIENT_EVENTS
        .iter()
        .chain(SERVER_EVENTS)
        .find(|k| **k == event);
    if let Some(known) = known {
        known
    } else if crate::routing::service_of(event).is_some() {
        "routed"
    } else {
        "other"
    }
}

fn transport_label(t: TransportType) -> &'static str {
    match t {
        TransportType::Polling => "polling",
        TransportType::Websocket => "websocket",
    }
}

/// A handshake was accepted.
pub fn connected(transport: TransportType) {
    counter!(CONNECTS.name, "transport" => transport_label(transport)).increment(1);
}

/// A handshake was refused because of its token.
pub fn refused_auth(e: &AuthError) {
    let reason = match e {
        AuthError::Missing => "missing_token",
        AuthError::Expired => "expired",
        AuthError::NotYetValid => "not_yet_valid",
        AuthError::BadSignature => "bad_signature",
        AuthError::WrongAlgorithm => "wrong_algorithm",
        AuthError::WrongClaim(_) => "wrong_claim",
        AuthError::Invalid(_) => "invalid_token",
        AuthError::UnknownKey => "unknown_key",
        AuthError::KeySetUnavailable => "key_set_unavailable",
        // Only session:refresh compares users; a handshake has no current user.
        AuthError::OtherUser => "invalid_token",
    };
    counter!(CONNECT_REFUSALS.name, "reason" => reason).increment(1);
}

/// A handshake was refused because the node cannot serve (Redis down, not ready, draining).
pub fn refused_unavailable() {
    counter!(CONNECT_REFUSALS.name, "reason" => "unavailable").increment(1);
}

/// A handshake refused because the user already has the most connections allowed.
pub fn refused_too_many_connections() {
    counter!(CONNECT_REFUSALS.name, "reason" => "too_many_connections").increment(1);
}

/// A handshake refused because the node took its most new connections this second.
pub fn refused_connect_rate() {
    counter!(CONNECT_REFUSALS.name, "reason" => "connect_rate").increment(1);
}

/// A socket disconnected.
pub fn disconnected(reason: &DisconnectReason) {
    let reason = match reason {
        DisconnectReason::TransportClose => "transport_close",
        DisconnectReason::MultipleHttpPollingError => "multiple_polling",
        DisconnectReason::PacketParsingError => "packet_parsing_error",
        DisconnectReason::TransportError => "transport_error",
        DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
        DisconnectReason::ClientNSDisconnect => "client_disconnect",
        DisconnectReason::ServerNSDisconnect => "server_disconnect",
        DisconnectReason::ClosingServer => "closing_server",
    };
    counter!(DISCONNECTS.name, "reason" => reason).increment(1);
}

/// A client event arrived.
pub fn event_received(event: &str) {
    counter!(EVENTS_RECEIVED.name, "event" => event_label(event)).increment(1);
}

/// A client event was answered: `None` = success, else the error code.
pub fn ack(event: &str, code: Option<ErrorCode>) {
    let (status, code) = match code {
        None => ("ok", "none"),
        Some(c) => ("error", c.as_str()),
    };
    counter!(ACKS.name, "event" => event_label(event), "status" => status, "code" => code)
        .increment(1);
}

/// A client event was over its socket's budget.
pub fn rate_limited(event: &str) {
    counter!(RATE_LIMITED_EVENTS.name, "event" => event_label(event)).increment(1);
}

/// `chat:send` was accepted (`duplicate`: a retry answered from the dedup window).
pub fn message_accepted(duplicate: bool) {
    if duplicate {
        counter!(MESSAGES_DEDUPLICATED.name).increment(1);
    } else {
        counter!(MESSAGES_ACCEPTED.name).increment(1);
    }
}

/// A local room broadcast of `event` finished with `result`; per-socket failures are counted
/// by reason.
pub fn local_emit(event: &str, result: &Result<(), BroadcastError>) {
    counter!(LOCAL_EMITS.name, "event" => event_label(event)).increment(1);
    if let Err(BroadcastError::Socket(errors)) = result {
        for e in errors {
            let reason = match e {
                SocketError::InternalChannelFull => "buffer_full",
                SocketError::Closed => "closed",
            };
            counter!(SOCKET_SEND_FAILURES.name, "reason" => reason).increment(1);
        }
    }
}

/// A socket could not take a chat message and is being disconnected.
pub fn slow_consumer() {
    counter!(SOCKET_SEND_FAILURES.name, "reason" => "slow_consumer").increment(1);
}

/// A frame was applied to the local sockets: records its publish→emit latency when the frame
/// says when it was published (ms since the epoch, the publisher's clock).
pub fn entry_applied(published_ms: Option<u64>) {
    counter!(BACKPLANE_ENTRIES_READ.name).increment(1);
    if let Some(ms) = published_ms {
        let age = crate::clock::now_ms().saturating_sub(ms) as f64 / 1000.0;
        histogram!(DELIVERY_LATENCY.name).record(age);
    }
}

/// A canary of `shard` came back after `rtt`.
pub fn canary_round_trip(shard: usize, rtt: Duration) {
    histogram!(CANARY_ROUND_TRIP.name, "shard" => shard.to_string()).record(rtt.as_secs_f64());
}

/// `shard`'s canary last came back `age` ago.
pub fn canary_success_age(shard: usize, age: Duration) {
    gauge!(CANARY_SUCCESS_AGE.name, "shard" => shard.to_string()).set(age.as_secs_f64());
}

/// The node now subscribes to `count` room channels.
pub fn subscriptions(count: usize) {
    gauge!(SUBSCRIPTIONS.name).set(count as f64);
}

/// `n` room channels were subscribed (`subscribe`) or unsubscribed (`unsubscribe`).
pub fn subscription_changes(change: &'static str, n: usize) {
    counter!(SUBSCRIPTION_CHANGES.name, "change" => change).increment(n as u64);
}

/// A chat offset gap was seen: `filled` messages came from the log, `lost` were gone.
pub fn gap(filled: u64, lost: u64) {
    counter!(BACKPLANE_GAPS.name).increment(1);
    counter!(BACKPLANE_GAP_MESSAGES.name, "outcome" => "filled").increment(filled);
    counter!(BACKPLANE_GAP_MESSAGES.name, "outcome" => "lost").increment(lost);
}

/// `n` followed chats have a read of their log pending (their frames wait for it).
pub fn chats_waiting(n: usize) {
    gauge!(BACKPLANE_CHATS_WAITING.name).set(n as f64);
}

/// The subscriber queue was full and a frame was dropped.
pub fn backplane_overflow() {
    counter!(BACKPLANE_OVERFLOWS.name).increment(1);
}

/// Times a Redis operation and counts its failure. `op` is a fixed name (a command, a script
/// or a `..._pipeline`), never built from data.
pub async fn redis_op<T>(
    op: &'static str,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    let start = Instant::now();
    let result = fut.await;
    histogram!(REDIS_COMMAND_DURATION.name, "op" => op).record(start.elapsed().as_secs_f64());
    if let Err(e) = &result {
        redis_error(op, e);
    }
    result
}

/// Counts a failed Redis operation that is not timed (a blocking XREAD).
pub fn redis_error(op: &'static str, e: &redis::RedisError) {
    let kind = if e.is_timeout() {
        "timeout"
    } else if crate::error::is_unavailable(e) {
        "unavailable"
    } else {
        "error"
    };
    counter!(REDIS_ERRORS.name, "op" => op, "kind" => kind).increment(1);
}

/// Times a command (or pipeline) of the shared connection by the master it went to, and
/// counts its failure.
pub fn redis_master_command(master: &str, start: Instant, error: Option<&redis::RedisError>) {
    let master = master.to_owned();
    histogram!(REDIS_MASTER_COMMAND_DURATION.name, "master" => master.clone())
        .record(start.elapsed().as_secs_f64());
    if let Some(e) = error {
        let kind = if e.is_timeout() {
            "timeout"
        } else if crate::error::is_unavailable(e) {
            "unavailable"
        } else {
            "error"
        };
        counter!(REDIS_MASTER_ERRORS.name, "master" => master, "kind" => kind).increment(1);
    }
}

/// The node saw the Redis topology change (`cluster` or `sentinel`).
pub fn redis_topology_change(mode: &'static str) {
    counter!(REDIS_TOPOLOGY_CHANGES.name, "mode" => mode).increment(1);
}

/// A `WAIT` ended with fewer replicas than asked.
pub fn redis_wait_timeout() {
    counter!(REDIS_WAIT_TIMEOUTS.name).increment(1);
}

/// A Lua script was invoked (alone or in a pipeline).
pub fn script_call(script: &'static str) {
    counter!(REDIS_SCRIPT_CALLS.name, "script" => script).increment(1);
}

/// How a `chat:send` ran in Redis: `path` transaction (`reason` committed, forbidden, or
/// aborted for each `EXEC` refused because a watched key changed) or script (`reason`
/// configured, new_epoch, duplicate, contention, error, exec_abort, connect).
pub fn chat_send_path(path: &'static str, reason: &'static str) {
    counter!(CHAT_SEND_PATH.name, "path" => path, "reason" => reason).increment(1);
}

/// This node decided a presence transition: `kind` online/offline, `reason` connect, refresh,
/// disconnected or expired.
pub fn presence_transition(kind: &'static str, reason: &'static str) {
    counter!(PRESENCE_TRANSITIONS.name, "kind" => kind, "reason" => reason).increment(1);
}

/// A fetch of the JWT key set ended: `ok` or not.
pub fn jwks_fetch(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(JWKS_FETCHES.name, "outcome" => outcome).increment(1);
}

/// The key set's age (`None`: never fetched).
pub fn jwks_age(secs: Option<f64>) {
    gauge!(JWKS_AGE.name).set(secs.unwrap_or(-1.0));
}

/// A `session:refresh` was answered.
pub fn session_refresh(ok: bool) {
    let outcome = if ok { "ok" } else { "refused" };
    counter!(SESSION_REFRESHES.name, "outcome" => outcome).increment(1);
}

/// An expired-key notification arrived.
pub fn keyspace_notification() {
    counter!(KEYSPACE_NOTIFICATIONS.name).increment(1);
}

/// The sweep found `n` users past their deadline and claims them.
pub fn sweep_claims(n: usize) {
    counter!(PRESENCE_SWEEP_CLAIMS.name).increment(n as u64);
}

/// The sweep published an offline transition again ([`crate::presence::Claimer::Sweep`]).
pub fn presence_republished() {
    counter!(PRESENCE_REPUBLISHED.name).increment(1);
}

/// A presence catch-up showed `n` transitions whose frames never reached this node.
pub fn presence_caught_up(n: u64) {
    counter!(PRESENCE_CAUGHT_UP.name).increment(n);
}

/// An Admin UI handshake ended: `password`, `session` or `refused`.
pub fn admin_login(outcome: &'static str) {
    counter!(ADMIN_LOGINS.name, "outcome" => outcome).increment(1);
}

/// An Admin UI command acted on `sockets` sockets of this node.
pub fn admin_command(command: &'static str, sockets: usize) {
    counter!(ADMIN_COMMANDS.name, "command" => command).increment(sockets as u64);
}

/// An Admin UI relay message was dropped (the publish queue was full).
pub fn admin_relay_dropped() {
    counter!(ADMIN_RELAY_DROPPED.name).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_labels_are_bounded() {
        assert_eq!(event_label("chat:send"), "chat:send");
        assert_eq!(event_label("notes:board:add"), "routed");
        assert_eq!(event_label("whatever-a-client-sends"), "other");
        assert_eq!(event_label(""), "other");
    }
}
