//! The cluster side of the Admin UI: one Redis pub/sub channel ([`keys::ADMIN_CHANNEL`]) that
//! every node publishes to and subscribes to, on its own connection, only while the Admin UI
//! is enabled.
//!
//! - **Relay**: an event for every admin socket of the cluster (`server_stats`,
//!   `socket_connected`, `room_joined`, ...). Every node, the publisher included (Redis delivers
//!   a node its own messages), emits it to its local `/admin` sockets: one path for all.
//! - **Command**: what the UI asked (`emit`, `join`, `leave`, `_disconnect`); every node applies
//!   it to its own sockets of `/`, so it reaches the node holding the socket.
//! - **Fetch** / **Sockets**: `all_sockets` for a new admin socket: the asking node publishes a
//!   fetch with a reply id, every node answers with its sockets, the asker collects.
//!
//! Best effort, and bounded: what a node publishes waits in a queue of [`OUTBOX_CAPACITY`]
//! messages (dropped and counted when full), messages lost while the subscription reconnects
//! are gone, and answers to a fetch are awaited at most [`FETCH_WAIT`].

use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Admin;
use super::protocol::Args;
use crate::redis::keys;
use crate::tasks::{Backoff, BlockingReader, run_reconnecting};

/// Messages a node may have waiting to be published.
pub const OUTBOX_CAPACITY: usize = 1024;
/// How often every node publishes its `server_stats` (the JavaScript server's period).
pub const STATS_INTERVAL: Duration = Duration::from_secs(2);
/// How long a new admin socket waits for the nodes' socket lists.
pub const FETCH_WAIT: Duration = Duration::from_millis(1500);
/// Most sockets one node lists in an answer to a fetch (the UI is a view, not an export).
pub const MAX_LISTED_SOCKETS: usize = 2000;

/// One message on the channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Emit `event` with `args` to every admin socket.
    Relay {
        /// Publishing node.
        from: String,
        /// Admin UI event name.
        event: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// Apply a command of the UI to the sockets of `/` that match.
    Command {
        /// Publishing node.
        from: String,
        /// What to do.
        command: Command,
    },
    /// List your sockets to `from` under `reply`.
    Fetch {
        /// Asking node.
        from: String,
        /// Reply id.
        reply: String,
    },
    /// One node's answer to a fetch.
    Sockets {
        /// Answering node.
        from: String,
        /// The asking node.
        to: String,
        /// Reply id of the fetch.
        reply: String,
        /// Serialized sockets.
        sockets: Vec<Value>,
    },
}

/// A command of the UI; `filter` is a room, a socket id, or empty for every socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// `emit(nsp, filter, ev, ...args)`.
    Emit {
        /// Room or socket id.
        filter: String,
        /// Event name.
        event: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// `join(nsp, room, filter)`.
    Join {
        /// Room to join.
        room: String,
        /// Room or socket id.
        filter: String,
    },
    /// `leave(nsp, room, filter)`.
    Leave {
        /// Room to leave.
        room: String,
        /// Room or socket id.
        filter: String,
    },
    /// `_disconnect(nsp, close, filter)`.
    Disconnect {
        /// Room or socket id.
        filter: String,
    },
}

impl Command {
    /// The metric label of the command.
    pub fn label(&self) -> &'static str {
        match self {
            Command::Emit { .. } => "emit",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Disconnect { .. } => "disconnect",
        }
    }
}

/// This node's sockets of `/` that `filter` selects: all for an empty filter, else the sockets in
/// room `filter` and the socket whose id it is (in Socket.IO every socket is in a room named by
/// its id; socketioxide keeps no such room).
pub fn targets(io: &SocketIo, filter: &str) -> Vec<SocketRef> {
    let Some(ns) = io.of("/") else {
        return Vec::new();
    };
    if filter.is_empty() {
        return ns.sockets();
    }
    let mut out = ns.clone().within(filter.to_owned()).sockets();
    if let Ok(sid) = filter.parse::<Sid>()
        && let Some(s) = ns.get_socket(sid)
        && !out.iter().any(|o| o.id == s.id)
    {
        out.push(s);
    }
    out
}

/// Most messages published in one pipeline: a burst of events (a reconnect storm while an admin
/// watches) costs one round trip per batch instead of one per event.
const PUBLISH_BATCH: usize = 64;

/// Publishes what the node's queue holds, in batches of what is waiting, until `cancel`.
pub async fn run_publisher(
    admin: Admin,
    mut outbox: mpsc::Receiver<String>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        batch.clear();
        let n = tokio::select! {
            _ = cancel.cancelled() => return,
            n = outbox.recv_many(&mut batch, PUBLISH_BATCH) => n,
        };
        if n == 0 {
            return;
        }
        if let Err(e) = admin.store().publish(&batch).await {
            crate::metrics::redis_error("admin_publish", &e);
            tracing::debug!(error = %e, "admin relay message not published");
        }
    }
}

/// Publishes this node's `server_stats` every [`STATS_INTERVAL`] until `cancel`.
pub async fn run_stats(admin: Admin, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => admin.publish_stats(),
        }
    }
}

/// Subscribes to [`keys::ADMIN_CHANNEL`] and handles every message until `cancel`; reconnects
/// with backoff (what was published meanwhile is lost: the next stats tick repaints the view).
pub async fn run_subscriber(redis: crate::redis::Redis, admin: Admin, cancel: CancellationToken) {
    let mut sub = Subscriber { redis, admin };
    run_reconnecting(&mut sub, Backoff::default(), &cancel).await;
}

struct Subscriber {
    redis: crate::redis::Redis,
    admin: Admin,
}

impl BlockingReader for Subscriber {
    type Conn = PubSub;
    type Batch = redis::Msg;
    const CONNECT_RESETS_BACKOFF: bool = true;

    async fn connect(&mut self) -> Option<PubSub> {
        let sub = async {
            // PUBLISH reaches every node of a Redis Cluster, so any master will do; on Sentinel
            // the current master, asked again on every reconnect.
            let client = self
                .redis
                .client_for_key(keys::ADMIN_CHANNEL.as_bytes())
                .await?;
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(keys::ADMIN_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match sub.await {
            Ok(ps) => Some(ps),
            Err(e) => {
                tracing::warn!(error = %e, "admin relay cannot subscribe; retrying");
                None
            }
        }
    }

    async fn read(&mut self, ps: &mut PubSub) -> Option<redis::Msg> {
        let msg = ps.on_message().next().await;
        if msg.is_none() {
            tracing::warn!("admin relay lost redis; resubscribing");
        }
        msg
    }

    async fn handle(&mut self, msg: redis::Msg) {
        let Ok(text) = msg.get_payload::<String>() else {
            return;
        };
        match serde_json::from_str::<Message>(&text) {
            Ok(m) => self.admin.receive(m).await,
            Err(e) => tracing::debug!(error = %e, "unreadable admin relay message ignored"),
        }
    }
}

/// Emits `event` with `args` to this node's `/admin` sockets.
pub async fn emit_to_admins(io: &SocketIo, event: &str, args: &[Value]) {
    let Some(ns) = io.of(super::NAMESPACE) else {
        return;
    };
    if let Err(e) = ns.emit(event, &Args(args)).await {
        tracing::debug!(error = %e, event, "admin relay emit failed");
    }
}
