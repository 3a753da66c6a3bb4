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

use crate::redis::Conn;
use redis::aio::MultiplexedConnection;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::store::{PublishEntry, PublishStore, ensure_group, read_new};
use super::{Outcome, PublishRequest, Publisher};
use crate::redis::keys;
use crate::tasks::{Backoff, BlockingReader, run_reconnecting};

const BLOCK: Duration = Duration::from_millis(1000);
const BATCH: usize = 100;

/// Runs until `cancel`: reads new entries for this node, and every few seconds claims entries
/// idle with a dead consumer.
pub async fn run(
    redis: crate::redis::Redis,
    conn: Conn,
    publisher: Publisher,
    node_id: String,
    claim_idle: Duration,
    cancel: CancellationToken,
) {
    let mut consumer = Consumer {
        redis,
        store: PublishStore::new(conn),
        publisher,
        node_id,
        claim_idle,
        last_claim: tokio::time::Instant::now(),
    };
    run_reconnecting(&mut consumer, Backoff::default(), &cancel).await;
}

/// The consumer's state across reconnects.
struct Consumer {
    redis: crate::redis::Redis,
    store: PublishStore,
    publisher: Publisher,
    node_id: String,
    claim_idle: Duration,
    last_claim: tokio::time::Instant,
}

impl BlockingReader for Consumer {
    type Conn = MultiplexedConnection;
    type Batch = Vec<PublishEntry>;

    async fn connect(&mut self) -> Option<MultiplexedConnection> {
        // Unreachable Redis is not logged here: the reader and the listener already say so.
        // The stream's master is asked on every connect: after a failover or a moved slot the
        // read fails, and the next connect finds the new one.
        let mut reader = self
            .redis
            .blocking_connection_for_key(keys::PUBLISH_STREAM.as_bytes(), BLOCK)
            .await
            .ok()?;
        if let Err(e) = ensure_group(&mut reader).await {
            tracing::warn!(error = %e, "cannot create the fanout:publish consumer group");
            return None;
        }
        Some(reader)
    }

    async fn read(&mut self, reader: &mut MultiplexedConnection) -> Option<Self::Batch> {
        match read_new(reader, &self.node_id, BATCH, BLOCK).await {
            Ok(entries) => Some(entries),
            Err(e) => {
                // NOGROUP after Redis lost its data: recreate the group on reconnect.
                tracing::debug!(error = %e, "fanout:publish read failed; reconnecting");
                None
            }
        }
    }

    async fn handle(&mut self, entries: Vec<PublishEntry>) {
        for entry in &entries {
            handle(&self.store, &self.publisher, entry).await;
        }
        if self.last_claim.elapsed() >= self.claim_idle / 6 {
            self.last_claim = tokio::time::Instant::now();
            claim_abandoned(&self.store, &self.publisher, &self.node_id, self.claim_idle).await;
        }
    }
}

/// Claims and handles entries pending with any consumer for longer than `claim_idle`.
pub async fn claim_abandoned(
    store: &PublishStore,
    publisher: &Publisher,
    node_id: &str,
    claim_idle: Duration,
) {
    let mut start = "0-0".to_owned();
    loop {
        let Ok((next, entries)) = store.claim_idle(node_id, claim_idle, &start, BATCH).await else {
            return;
        };
        for entry in &entries {
            handle(store, publisher, entry).await;
        }
        if next == "0-0" || entries.is_empty() {
            return;
        }
        start = next;
    }
}

async fn handle(store: &PublishStore, publisher: &Publisher, entry: &PublishEntry) {
    let parsed = entry
        .body
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
                Ok(Outcome::Published(_)) | Ok(Outcome::Repeated(_)) => ack(store, &entry.id).await,
                // Left pending: retried by XAUTOCLAIM once idle long enough.
                Err(e) => {
                    tracing::warn!(id = %entry.id, error = %e, "fanout:publish entry not published yet")
                }
            }
        }
        Err(why) => {
            tracing::warn!(id = %entry.id, %why, "malformed fanout:publish entry dropped");
            ack(store, &entry.id).await;
        }
    }
}

async fn ack(store: &PublishStore, id: &str) {
    if let Err(e) = store.ack(id).await {
        tracing::debug!(error = %e, "XACK failed; the entry is re-claimed and skipped as a repeat");
    }
}
