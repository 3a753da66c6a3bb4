//! The reply path for services that need no HTTP: they `XADD fanout:publish * body <json>`
//! (the JSON body of `POST /api/v1/publish`), and the nodes consume that stream with one
//! consumer group, so each entry is handled by one node. The handling node publishes it into
//! the backplane at most once — the entry id doubles as its idempotency key, checked in the
//! same atomic step as the append — then `XACK`s it; a node that died before its `XACK` leaves
//! the entry pending, and whoever claims it finds the key and only acknowledges it.
//! Entries left pending by a node that died are claimed by another with `XAUTOCLAIM` once idle
//! for `PUBLISH_CLAIM_IDLE_MS` (default 30 s).
//!
//! A malformed entry is logged, acknowledged and dropped (retrying cannot fix it).

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamId, StreamReadReply};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Outcome, PublishRequest, Publisher};
use crate::redis::{blocking_connection, keys};
use crate::tasks::{Backoff, BlockingReader, run_reconnecting};

const BLOCK: Duration = Duration::from_millis(1000);
const BATCH: usize = 100;

/// Creates the consumer group if it does not exist (from the stream's start, so entries a
/// service wrote before any node ran are not lost).
async fn ensure_group(conn: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<()> {
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

/// Runs until `cancel`: reads new entries for this node, and every few seconds claims entries
/// idle with a dead consumer.
pub async fn run(
    client: redis::Client,
    conn: ConnectionManager,
    publisher: Publisher,
    node_id: String,
    claim_idle: Duration,
    cancel: CancellationToken,
) {
    let mut consumer = Consumer {
        client,
        conn,
        publisher,
        node_id,
        claim_idle,
        last_claim: tokio::time::Instant::now(),
    };
    run_reconnecting(&mut consumer, Backoff::default(), &cancel).await;
}

/// The consumer's state across reconnects.
struct Consumer {
    client: redis::Client,
    conn: ConnectionManager,
    publisher: Publisher,
    node_id: String,
    claim_idle: Duration,
    last_claim: tokio::time::Instant,
}

impl BlockingReader for Consumer {
    type Conn = MultiplexedConnection;
    type Batch = Option<StreamReadReply>;

    async fn connect(&mut self) -> Option<MultiplexedConnection> {
        // Unreachable Redis is not logged here: the reader and the listener already say so.
        let mut reader = blocking_connection(&self.client, BLOCK).await.ok()?;
        if let Err(e) = ensure_group(&mut reader).await {
            tracing::warn!(error = %e, "cannot create the fanout:publish consumer group");
            return None;
        }
        Some(reader)
    }

    async fn read(&mut self, reader: &mut MultiplexedConnection) -> Option<Self::Batch> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(keys::PUBLISH_GROUP)
            .arg(&self.node_id)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::PUBLISH_STREAM)
            .arg(">");
        let read: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(reader).await;
        match read {
            Ok(reply) => Some(reply),
            Err(e) => {
                // NOGROUP after Redis lost its data: recreate the group on reconnect.
                tracing::debug!(error = %e, "fanout:publish read failed; reconnecting");
                None
            }
        }
    }

    async fn handle(&mut self, reply: Option<StreamReadReply>) {
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in &stream.ids {
                handle(&self.conn, &self.publisher, entry).await;
            }
        }
        if self.last_claim.elapsed() >= self.claim_idle / 6 {
            self.last_claim = tokio::time::Instant::now();
            claim_abandoned(&self.conn, &self.publisher, &self.node_id, self.claim_idle).await;
        }
    }
}

/// Claims and handles entries pending with any consumer for longer than `claim_idle`.
pub async fn claim_abandoned(
    conn: &ConnectionManager,
    publisher: &Publisher,
    node_id: &str,
    claim_idle: Duration,
) {
    let mut c = conn.clone();
    let mut start = "0-0".to_owned();
    loop {
        let claimed: redis::RedisResult<(String, redis::streams::StreamRangeReply, Value2)> =
            redis::cmd("XAUTOCLAIM")
                .arg(keys::PUBLISH_STREAM)
                .arg(keys::PUBLISH_GROUP)
                .arg(node_id)
                .arg(claim_idle.as_millis() as u64)
                .arg(&start)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut c)
                .await;
        let Ok((next, entries, _)) = claimed else {
            return;
        };
        for entry in &entries.ids {
            handle(conn, publisher, entry).await;
        }
        if next == "0-0" || entries.ids.is_empty() {
            return;
        }
        start = next;
    }
}

/// The third element of an XAUTOCLAIM reply (deleted ids); ignored.
type Value2 = redis::Value;

async fn handle(conn: &ConnectionManager, publisher: &Publisher, entry: &StreamId) {
    let body: Option<String> = entry.get("body");
    let parsed = body
        .as_deref()
        .ok_or_else(|| "entry has no body field".to_owned())
        .and_then(|b| serde_json::from_str::<Value>(b).map_err(|e| format!("body: {e}")))
        .and_then(|v| match v {
            Value::Object(map) => PublishRequest::parse(&map),
            _ => Err("body must be a JSON object".to_owned()),
        });
    match parsed {
        Ok(req) => {
            let key = format!("stream:{}", entry.id);
            match publisher.publish(&req, Some(&key)).await {
                Ok(Outcome::Published(_)) | Ok(Outcome::Repeated(_)) => ack(conn, &entry.id).await,
                // Left pending: retried by XAUTOCLAIM once idle long enough.
                Err(e) => {
                    tracing::warn!(id = %entry.id, error = %e, "fanout:publish entry not published yet")
                }
            }
        }
        Err(why) => {
            tracing::warn!(id = %entry.id, %why, "malformed fanout:publish entry dropped");
            ack(conn, &entry.id).await;
        }
    }
}

async fn ack(conn: &ConnectionManager, id: &str) {
    let mut c = conn.clone();
    let res: redis::RedisResult<()> = redis::cmd("XACK")
        .arg(keys::PUBLISH_STREAM)
        .arg(keys::PUBLISH_GROUP)
        .arg(id)
        .query_async(&mut c)
        .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "XACK failed; the entry is re-claimed and skipped as a repeat");
    }
}
