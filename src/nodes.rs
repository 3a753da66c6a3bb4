//! The node registry behind `GET /api/v1/nodes`: every node writes a heartbeat into one Redis
//! hash every [`HEARTBEAT`]; a node whose heartbeat is older than [`STALE_AFTER`] is dead and
//! is removed by whoever lists.
//!
//! [`Nodes`] is the registry's store: every Redis command of it is one of its methods.

use std::time::Duration;

use crate::redis::Conn;
use serde::{Deserialize, Serialize};
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::redis::keys;

/// How often a node writes its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat older than this marks a dead node.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// One live node, as `GET /api/v1/nodes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Node id.
    pub node_id: String,
    /// Live Socket.IO connections on the node.
    pub connections: u64,
    /// When the node started (ISO 8601).
    pub started_at: String,
    /// Last heartbeat (ISO 8601).
    pub last_seen: String,
    /// Last heartbeat, ms since the epoch (for staleness; not shown).
    #[serde(skip_serializing, default)]
    pub last_seen_ms: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stored<'a> {
    node_id: &'a str,
    connections: u64,
    started_at: &'a str,
    last_seen: String,
    last_seen_ms: u64,
}

/// The node registry in Redis.
#[derive(Clone)]
pub struct Nodes {
    conn: Conn,
}

impl Nodes {
    /// The registry over the node's shared connection.
    pub fn new(conn: Conn) -> Self {
        Nodes { conn }
    }

    /// Writes one heartbeat of `node_id`.
    async fn beat(&self, node_id: &str, record: &Stored<'_>) -> redis::RedisResult<()> {
        let json = serde_json::to_string(record).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "node record", e.to_string()))
        })?;
        let mut c = self.conn.clone();
        redis::cmd("HSET")
            .arg(keys::NODES)
            .arg(node_id)
            .arg(json)
            .query_async(&mut c)
            .await
    }

    /// Removes `node_id` from the registry.
    async fn remove(&self, node_id: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("HDEL")
            .arg(keys::NODES)
            .arg(node_id)
            .query_async(&mut c)
            .await
    }

    /// The live nodes, sorted by id; dead ones are removed from the registry.
    pub async fn list(&self) -> redis::RedisResult<Vec<NodeInfo>> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::NODES)
            .query_async(&mut c)
            .await?;
        let cutoff = clock::now_ms().saturating_sub(STALE_AFTER.as_millis() as u64);
        let mut live = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<NodeInfo>(&json) {
                Ok(info) if info.last_seen_ms >= cutoff => live.push(info),
                // Best effort: whoever lists next removes it otherwise.
                _ => {
                    let _ = self.remove(&id).await;
                }
            }
        }
        live.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(live)
    }
}

/// Writes this node's heartbeat until `cancel`, then removes it.
pub async fn run_heartbeat(conn: Conn, io: SocketIo, node_id: String, cancel: CancellationToken) {
    let nodes = Nodes::new(conn);
    let started_at = clock::now_iso();
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stored = Stored {
            node_id: &node_id,
            connections: io.of("/").map(|ns| ns.sockets().len()).unwrap_or(0) as u64,
            started_at: &started_at,
            last_seen: clock::now_iso(),
            last_seen_ms: clock::now_ms(),
        };
        if let Err(e) = nodes.beat(&node_id, &stored).await {
            tracing::debug!(error = %e, "node heartbeat failed");
        }
    }
    let _ = nodes.remove(&node_id).await;
}
