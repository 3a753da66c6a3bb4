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

use redis::aio::ConnectionManager;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::store::{PublishEntry, PublishStore, ensure_group, read_new};
use super::{Outcome, PublishRequest, Publisher};
use crate::redis::blocking_connection;

const BLOCK: Duration = Duration::from_millis(1000);
const BATCH: usize = 100;

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
    let store = PublishStore::new(conn);
    let mut backoff = Duration::from_millis(100);
    let mut last_claim = tokio::time::Instant::now();
    'connect: while !cancel.is_cancelled() {
        let mut reader = tokio::select! {
            _ = cancel.cancelled() => return,
            c = blocking_connection(&client, BLOCK) => match c {
                Ok(c) => c,
                Err(_) => {
                    sleep(&mut backoff, &cancel).await;
                    continue;
                }
            },
        };
        if let Err(e) = ensure_group(&mut reader).await {
            tracing::warn!(error = %e, "cannot create the fanout:publish consumer group");
            sleep(&mut backoff, &cancel).await;
            continue;
        }
        loop {
            let read = tokio::select! {
                _ = cancel.cancelled() => return,
                r = read_new(&mut reader, &node_id, BATCH, BLOCK) => r,
            };
            match read {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    for entry in &entries {
                        handle(&store, &publisher, entry).await;
                    }
                }
                Err(e) => {
                    // NOGROUP after Redis lost its data: recreate the group on reconnect.
                    tracing::debug!(error = %e, "fanout:publish read failed; reconnecting");
                    sleep(&mut backoff, &cancel).await;
                    continue 'connect;
                }
            }
            if last_claim.elapsed() >= claim_idle / 6 {
                last_claim = tokio::time::Instant::now();
                claim_abandoned(&store, &publisher, &node_id, claim_idle).await;
            }
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

async fn sleep(backoff: &mut Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}
