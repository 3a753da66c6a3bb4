//! The table of every metric: name, type, labels and help text, in the order of
//! docs/operations.md (a test keeps the doc equal to [`markdown_table`]).

use std::fmt::Write as _;

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution in buckets (`_bucket`, `_sum`, `_count`).
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric: name, type, label names and help text (the `# HELP` line and the row of
/// docs/operations.md).
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// Full Prometheus name.
    pub name: &'static str,
    /// Series type.
    pub kind: Kind,
    /// Label names (their values are bounded, see the module doc).
    pub labels: &'static [&'static str],
    /// One line of meaning.
    pub help: &'static str,
}

macro_rules! metric {
    ($(#[$doc:meta])* $id:ident, $name:literal, $kind:ident, [$($label:literal),*], $help:literal) => {
        $(#[$doc])*
        pub const $id: Metric = Metric {
            name: $name,
            kind: Kind::$kind,
            labels: &[$($label),*],
            help: $help,
        };
    };
}

// ---- connections --------------------------------------------------------------------------
metric!(
    /// Live sockets, computed from the node's sockets at each scrape.
    CONNECTIONS, "fanout_connections", Gauge, ["transport"],
    "Live Socket.IO connections on this node, by current transport (polling, websocket)."
);
metric!(
    /// Accepted handshakes.
    CONNECTS, "fanout_connects_total", Counter, ["transport"],
    "Socket.IO handshakes accepted, by transport at handshake time."
);
metric!(
    /// Refused handshakes.
    CONNECT_REFUSALS, "fanout_connect_refusals_total", Counter, ["reason"],
    "Socket.IO handshakes refused (connect_error), by reason: missing_token, expired, not_yet_valid, bad_signature, wrong_algorithm, wrong_claim, invalid_token, unknown_key, key_set_unavailable, unavailable, too_many_connections, connect_rate (MAX_CONNECTS_PER_SEC)."
);
metric!(
    /// Disconnects.
    DISCONNECTS, "fanout_disconnects_total", Counter, ["reason"],
    "Socket disconnects, by socketioxide's reason (transport_close, transport_error, heartbeat_timeout, client_disconnect, server_disconnect, closing_server, ...)."
);

// ---- client events ------------------------------------------------------------------------
metric!(
    /// Client events received.
    EVENTS_RECEIVED, "fanout_events_received_total", Counter, ["event"],
    "Client events received, by event name (known names; routed for service:module:name; other)."
);
metric!(
    /// Outcomes of client events.
    ACKS, "fanout_acks_total", Counter, ["event", "status", "code"],
    "Answers to client events, by event, status (ok, error) and error code (none when ok); without an ACK id a failure is answered with an error event and counted here too."
);
metric!(
    /// Events over the socket's budget.
    RATE_LIMITED_EVENTS, "fanout_rate_limited_events_total", Counter, ["event"],
    "Client events refused with RATE_LIMITED (over the socket's RATE_LIMIT_PER_SEC / RATE_LIMIT_BURST budget), by event."
);

// ---- chat -----------------------------------------------------------------------------------
metric!(
    /// New messages.
    MESSAGES_ACCEPTED, "fanout_messages_accepted_total", Counter, [],
    "Chat messages accepted by this node (new ones only, not clientMsgId retries)."
);
metric!(
    /// Deduplicated retries.
    MESSAGES_DEDUPLICATED, "fanout_messages_deduplicated_total", Counter, [],
    "chat:send retries answered from the dedup window (same clientMsgId): acknowledged again, not delivered again."
);

// ---- backplane and delivery -----------------------------------------------------------------
metric!(
    /// Frames the subscriber applied.
    BACKPLANE_ENTRIES_READ, "fanout_backplane_entries_read_total", Counter, [],
    "Frames this node received on its room subscriptions and applied to its sockets (chat messages filled from a chat's log included)."
);
metric!(
    /// Local room broadcasts.
    LOCAL_EMITS, "fanout_local_emits_total", Counter, ["event"],
    "Backplane events emitted to this node's local rooms: one per room broadcast, however many sockets it reaches."
);
metric!(
    /// Per-socket send failures.
    SOCKET_SEND_FAILURES, "fanout_socket_send_failures_total", Counter, ["reason"],
    "Packets not queued to a local socket: buffer_full (SOCKET_BUFFER_PACKETS reached, the packet is dropped for that socket), closed, or slow_consumer (a chat message it could not take: the socket is disconnected and recovers with chat:history)."
);
metric!(
    /// Frame publication to local emit.
    DELIVERY_LATENCY, "fanout_delivery_latency_seconds", Histogram, [],
    "Time from a frame's publication (the publishing node's clock) to its local emit on this node; includes clock skew between nodes."
);
metric!(
    /// Rooms subscribed.
    SUBSCRIPTIONS, "fanout_subscriptions", Gauge, [],
    "Room channels this node subscribes to: the rooms with a local socket, plus those left less than ROOM_UNSUBSCRIBE_DELAY_MS ago."
);
metric!(
    /// Subscribe/unsubscribe.
    SUBSCRIPTION_CHANGES, "fanout_subscription_changes_total", Counter, ["change"],
    "Room channels subscribed (subscribe) and unsubscribed (unsubscribe) by this node; resubscriptions after a reconnect count as subscribe."
);
metric!(
    /// Offset gaps.
    BACKPLANE_GAPS, "fanout_backplane_gaps_total", Counter, [],
    "Offset gaps this node saw in a chat's messages (a lost notification, a dropped subscriber connection, a late subscription), each filled from the chat's log before anything newer is delivered."
);
metric!(
    /// Messages of gaps.
    BACKPLANE_GAP_MESSAGES, "fanout_backplane_gap_messages_total", Counter, ["outcome"],
    "Chat messages of the gaps: filled (read from the chat's log and delivered) or lost (no longer in the log: trimmed, expired, or the chat's sequence restarted)."
);
metric!(
    /// Subscriber overflows.
    BACKPLANE_OVERFLOWS, "fanout_backplane_overflows_total", Counter, [],
    "Frames dropped because this node's subscriber queue was full; each makes the node re-read every subscribed chat's offsets (chat messages are filled, other events are lost)."
);
metric!(
    /// Chats waiting for a read of their log.
    BACKPLANE_CHATS_WAITING, "fanout_backplane_chats_waiting", Gauge, [],
    "Followed chats whose frames wait for a read of their log (a gap fill or a sync) on this node; other rooms go on meanwhile. Above 0 for longer than a command timeout: those chats' master does not answer."
);
metric!(
    /// Delivery canary round trip.
    CANARY_ROUND_TRIP, "fanout_canary_round_trip_seconds", Histogram, ["shard"],
    "Time from publishing this node's delivery canary until its own subscriber connection received it (the path real events take); shard = the subscriber connection (0 on one Redis)."
);
metric!(
    /// Age of the last canary success.
    CANARY_SUCCESS_AGE, "fanout_canary_last_success_age_seconds", Gauge, ["shard"],
    "Seconds since this node's canary last came back through the subscriber connection (updated every CANARY_INTERVAL_MS; above CANARY_TIMEOUT_SECS the node is not ready: delivery false)."
);

// ---- redis ----------------------------------------------------------------------------------
metric!(
    /// Command latency.
    REDIS_COMMAND_DURATION, "fanout_redis_command_duration_seconds", Histogram, ["op"],
    "Latency of Redis commands, by operation: a command (xadd, smembers, ...), a script (chat_send, ...) or a pipeline (..._pipeline). Blocking XREADs are not timed."
);
metric!(
    /// Command errors.
    REDIS_ERRORS, "fanout_redis_errors_total", Counter, ["op", "kind"],
    "Failed Redis operations, by operation and kind: timeout, unavailable (connection lost or refused, server loading or read-only), error."
);
metric!(
    /// Script invocations.
    REDIS_SCRIPT_CALLS, "fanout_redis_script_calls_total", Counter, ["script"],
    "Lua script invocations (single or pipelined), by script."
);

metric!(
    /// How sends ran.
    CHAT_SEND_PATH, "fanout_chat_send_path_total", Counter, ["path", "reason"],
    "chat:send calls by how Redis ran them: path transaction (WATCH/MULTI/EXEC; reason committed, forbidden, or aborted per EXEC refused because a watched key changed) or script (chat_send.lua; reason configured, new_epoch, duplicate, contention, error, exec_abort, connect)."
);
metric!(
    /// Latency by master.
    REDIS_MASTER_COMMAND_DURATION, "fanout_redis_master_command_duration_seconds", Histogram, ["master"],
    "Latency of commands and pipelines on the shared Redis connection, by master (host:port; in Cluster mode the master owning the first key's slot, `any` for keyless commands; `unknown` before a Sentinel master is found)."
);
metric!(
    /// Errors by master.
    REDIS_MASTER_ERRORS, "fanout_redis_master_errors_total", Counter, ["master", "kind"],
    "Failed commands and pipelines on the shared Redis connection, by master (as above) and kind: timeout, unavailable, error."
);
metric!(
    /// Topology changes.
    REDIS_TOPOLOGY_CHANGES, "fanout_redis_topology_changes_total", Counter, ["mode"],
    "Redis topology changes this node saw: mode cluster (the slot map changed: a replica promoted, slots moved) or sentinel (the sentinels named another master)."
);
metric!(
    /// WAIT timeouts.
    REDIS_WAIT_TIMEOUTS, "fanout_redis_wait_timeouts_total", Counter, [],
    "Redis WAITs (REDIS_WAIT_REPLICAS) that timed out with fewer replicas confirming than asked."
);

// ---- presence -------------------------------------------------------------------------------
metric!(
    /// Presence transitions decided here.
    PRESENCE_TRANSITIONS, "fanout_presence_transitions_total", Counter, ["kind", "reason"],
    "User presence transitions decided by this node: kind online (reason connect, refresh) or offline (reason disconnected, expired)."
);
metric!(
    /// Keyspace notifications.
    KEYSPACE_NOTIFICATIONS, "fanout_keyspace_notifications_total", Counter, [],
    "Expired-key notifications received from Redis (any key; presence keys are claimed)."
);
metric!(
    /// Sweep claims.
    PRESENCE_SWEEP_CLAIMS, "fanout_presence_sweep_claims_total", Counter, [],
    "Users past their presence deadline that this node's sweep tried to claim (it holds the sweep lease)."
);
metric!(
    /// Offline transitions the sweep published again.
    PRESENCE_REPUBLISHED, "fanout_presence_offline_republished_total", Counter, [],
    "Offline transitions this node's sweep published again: the user was already offline in Redis but still had a deadline, so its claimer may have failed or died before publishing (peers drop a version they already applied)."
);
metric!(
    /// Presence transitions shown by a catch-up.
    PRESENCE_CAUGHT_UP, "fanout_presence_caught_up_total", Counter, [],
    "Presence transitions this node showed its sockets from Redis's versions after frames may have been lost (its subscriber reconnected, its queue overflowed, a cluster master failed over): their frames never reached this node. Rising often means its subscriber connection keeps dropping."
);

// ---- sessions and keys ----------------------------------------------------------------------
metric!(
    /// JWKS fetches.
    JWKS_FETCHES, "fanout_jwks_fetches_total", Counter, ["outcome"],
    "Fetches of the JWT key set (JWT_JWKS_URL), by outcome: ok, error (the cached keys keep verifying)."
);
metric!(
    /// Key-set age.
    JWKS_AGE, "fanout_jwks_age_seconds", Gauge, [],
    "Seconds since the JWT key set (JWT_JWKS_URL) was last fetched successfully; -1 before the first fetch; 0 on a node that verifies with a configured key."
);
metric!(
    /// Session refreshes.
    SESSION_REFRESHES, "fanout_session_refreshes_total", Counter, ["outcome"],
    "session:refresh requests, by outcome: ok, refused (bad, expired or another user's token)."
);

// ---- Admin UI -------------------------------------------------------------------------------
metric!(
    /// Admin UI sockets, computed at each scrape.
    ADMIN_CONNECTIONS, "fanout_admin_connections", Gauge, [],
    "Live Socket.IO Admin UI sockets (namespace /admin) on this node; 0 when the Admin UI is off."
);
metric!(
    /// Admin UI logins.
    ADMIN_LOGINS, "fanout_admin_logins_total", Counter, ["outcome"],
    "Admin UI handshakes, by outcome: password (accepted with the credentials), session (accepted with an issued session id), refused (invalid credentials)."
);
metric!(
    /// Admin UI commands applied.
    ADMIN_COMMANDS, "fanout_admin_commands_total", Counter, ["command"],
    "Sockets of this node an Admin UI command acted on, by command: emit, join, leave, disconnect."
);
metric!(
    /// Admin relay messages dropped.
    ADMIN_RELAY_DROPPED, "fanout_admin_relay_dropped_total", Counter, [],
    "Admin UI relay messages (stats, socket events, answers) dropped because the node's publish queue was full."
);

// ---- process --------------------------------------------------------------------------------
metric!(
    /// Build info.
    BUILD_INFO, "fanout_build_info", Gauge, ["version"],
    "Always 1; the version label is the crate version of the running node."
);

/// Every metric, in the order of docs/operations.md.
pub const ALL: &[Metric] = &[
    CONNECTIONS,
    CONNECTS,
    CONNECT_REFUSALS,
    DISCONNECTS,
    EVENTS_RECEIVED,
    ACKS,
    RATE_LIMITED_EVENTS,
    MESSAGES_ACCEPTED,
    MESSAGES_DEDUPLICATED,
    BACKPLANE_ENTRIES_READ,
    LOCAL_EMITS,
    SOCKET_SEND_FAILURES,
    DELIVERY_LATENCY,
    SUBSCRIPTIONS,
    SUBSCRIPTION_CHANGES,
    BACKPLANE_GAPS,
    BACKPLANE_GAP_MESSAGES,
    BACKPLANE_OVERFLOWS,
    BACKPLANE_CHATS_WAITING,
    CANARY_ROUND_TRIP,
    CANARY_SUCCESS_AGE,
    REDIS_COMMAND_DURATION,
    REDIS_ERRORS,
    REDIS_SCRIPT_CALLS,
    CHAT_SEND_PATH,
    REDIS_MASTER_COMMAND_DURATION,
    REDIS_MASTER_ERRORS,
    REDIS_TOPOLOGY_CHANGES,
    REDIS_WAIT_TIMEOUTS,
    PRESENCE_TRANSITIONS,
    KEYSPACE_NOTIFICATIONS,
    PRESENCE_SWEEP_CLAIMS,
    PRESENCE_REPUBLISHED,
    PRESENCE_CAUGHT_UP,
    JWKS_FETCHES,
    JWKS_AGE,
    SESSION_REFRESHES,
    ADMIN_CONNECTIONS,
    ADMIN_LOGINS,
    ADMIN_COMMANDS,
    ADMIN_RELAY_DROPPED,
    BUILD_INFO,
];

/// Bucket upper bounds of every `_seconds` histogram: 0.5 ms to 10 s.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The metrics table of docs/operations.md, generated from [`ALL`] (a test keeps the doc equal
/// to it).
pub fn markdown_table() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for m in ALL {
        let labels = if m.labels.is_empty() {
            "—".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            m.name,
            m.kind.as_str(),
            labels,
            m.help
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("fanout_"), "{}", m.name);
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                Kind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                Kind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            for l in m.labels {
                assert!(
                    !["user", "user_id", "chat", "chat_id", "sid", "socket"].contains(l),
                    "{} has an unbounded label {l}",
                    m.name
                );
            }
        }
    }
}
