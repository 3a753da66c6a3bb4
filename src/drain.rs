//! The node's stop order (docs/protocol.md §7, docs/architecture.md section 8): the cancellation
//! tree of its background tasks ([`Stops`]) and the drain that walks it — what a stopping node
//! does with its sockets and their presence, and in which order its tasks stop.

use std::time::Duration;

use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::local_sockets;
use crate::health::Health;
use crate::presence::{Presence, PresenceError};

/// Every background task's stop token, each a child of `root`. The drain cancels the children
/// one by one in its order and `root` last, so nothing can outlive `root`: a timed-out drain,
/// or a node that fails after starting its tasks, cancels `root` and with it every task.
pub struct Stops {
    /// The node's lifetime.
    pub root: CancellationToken,
    /// The token-expiry sweep and the key-set refresher: the drain ends every session anyway.
    pub sessions: CancellationToken,
    /// Presence (refresher, keyspace listener, sweep), the `fanout:publish` consumer and the
    /// heartbeat: a draining node leaves presence and the publish stream to the nodes that stay.
    pub presence: CancellationToken,
    /// Both HTTP servers (graceful): once the sockets are closed.
    pub servers: CancellationToken,
    /// The backplane reader, metrics upkeep, the shard sampler and the Admin UI relay: last, so
    /// local sockets get everything until they are closed (and admin sockets see the drain).
    pub readers: CancellationToken,
}

impl Default for Stops {
    fn default() -> Self {
        let root = CancellationToken::new();
        Stops {
            sessions: root.child_token(),
            presence: root.child_token(),
            servers: root.child_token(),
            readers: root.child_token(),
            root,
        }
    }
}

/// Drains the node, bounded by `grace`: readiness off, presence tasks stopped and every local
/// socket's presence removed, sockets closed, servers and readers stopped, then every tracked
/// task awaited. Cancels `stops.root` at the end, whatever finished.
pub async fn run(
    stops: &Stops,
    io: &SocketIo,
    presence: &Presence,
    health: &Health,
    tasks: &TaskTracker,
    grace: Duration,
) {
    stops.sessions.cancel();
    health.set_draining();
    let drain = async {
        // Presence first, while Redis and the backplane still carry the offline events; its
        // refresher stops before, so no tick re-registers a socket that was just removed.
        stops.presence.cancel();
        if let Err(e) = remove_all(io, presence).await {
            tracing::warn!(error = %e, "drain could not remove every presence field; they expire");
        }
        io.close().await;
        stops.servers.cancel();
        stops.readers.cancel();
        tasks.close();
        tasks.wait().await;
    };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!("drain did not finish within SHUTDOWN_GRACE_SECS; exiting anyway");
    }
    stops.root.cancel();
}

/// Removes every local socket's presence, announcing users left with no socket.
pub async fn remove_all(io: &SocketIo, presence: &Presence) -> Result<(), PresenceError> {
    for (user, sockets) in local_sockets(io) {
        for socket in sockets {
            presence.disconnect(&user, &socket.sid).await?;
        }
    }
    Ok(())
}
