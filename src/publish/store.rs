//! Every Redis command of server-side publishing outside the backplane: the `fanout:publish`
//! stream's consumer group (create, read, claim, acknowledge). The publish itself is a
//! backplane append ([`crate::backplane::Backplane::publish_once`]).
//!
//! Model: one consumer group ([`keys::PUBLISH_GROUP`]) of all nodes, each node a consumer named
//! by its id. An entry stays pending with its consumer until [`PublishStore::ack`]; a pending
//! entry idle for long enough is taken over by another node ([`PublishStore::claim_idle`]).
//!
//! Guarantees: an entry is acknowledged only after its publish returned (or it was malformed),
//! so a node dying in between leaves it pending for another node, which finds its idempotency
//! key and publishes nothing twice.

use std::time::Duration;

use crate::redis::Conn;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};

use crate::redis::keys;

/// One entry of `fanout:publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishEntry {
    /// Stream entry id.
    pub id: String,
    /// Field `body` (the JSON of a publish request), if present and text.
    pub body: Option<String>,
}

impl From<&StreamId> for PublishEntry {
    fn from(entry: &StreamId) -> Self {
        PublishEntry {
            id: entry.id.clone(),
            body: entry.get("body"),
        }
    }
}

/// Creates the consumer group if it does not exist (from the stream's start, so entries a
/// service wrote before any node ran are not lost).
pub async fn ensure_group(conn: &mut impl ConnectionLike) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys::PUBLISH_STREAM)
        .arg(keys::PUBLISH_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Up to `count` entries never delivered to any consumer, for consumer `node_id`, waiting at
/// most `block` on `conn` (a dedicated connection: the call blocks).
pub async fn read_new(
    conn: &mut impl ConnectionLike,
    node_id: &str,
    count: usize,
    block: Duration,
) -> redis::RedisResult<Vec<PublishEntry>> {
    let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(keys::PUBLISH_GROUP)
        .arg(node_id)
        .arg("COUNT")
        .arg(count)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(keys::PUBLISH_STREAM)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(reply
        .map(|r| r.keys)
        .unwrap_or_default()
        .iter()
        .flat_map(|stream| stream.ids.iter().map(PublishEntry::from))
        .collect())
}

/// The consumer group's commands on the shared connection.
#[derive(Clone)]
pub struct PublishStore {
    conn: Conn,
}

impl PublishStore {
    /// A store over the node's shared connection.
    pub fn new(conn: Conn) -> Self {
        PublishStore { conn }
    }

    /// Takes over up to `count` entries pending with any consumer for longer than `idle`,
    /// scanning from `start`; returns the cursor to continue from (`0-0` when done) and the
    /// entries.
    pub async fn claim_idle(
        &self,
        node_id: &str,
        idle: Duration,
        start: &str,
        count: usize,
    ) -> redis::RedisResult<(String, Vec<PublishEntry>)> {
        let mut c = self.conn.clone();
        // The third element (ids deleted meanwhile) needs nothing from us.
        let (next, entries, _): (String, StreamRangeReply, redis::Value) = redis::cmd("XAUTOCLAIM")
            .arg(keys::PUBLISH_STREAM)
            .arg(keys::PUBLISH_GROUP)
            .arg(node_id)
            .arg(idle.as_millis() as u64)
            .arg(start)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut c)
            .await?;
        Ok((next, entries.ids.iter().map(PublishEntry::from).collect()))
    }

    /// Acknowledges entry `id`: it is done and leaves the pending list.
    pub async fn ack(&self, id: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        redis::cmd("XACK")
            .arg(keys::PUBLISH_STREAM)
            .arg(keys::PUBLISH_GROUP)
            .arg(id)
            .query_async(&mut c)
            .await
    }
}
