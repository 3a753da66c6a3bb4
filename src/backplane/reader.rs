//! The reader loop: `XREAD BLOCK` over every shard on a dedicated connection, applying each entry
//! to the local sockets in stream order.

use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::deliver::Deliverer;
use super::{Envelope, FIELD_ENVELOPE, FIELD_ORIGIN};
use crate::health::Health;
use crate::redis::{blocking_connection, keys};

/// How long one `XREAD` blocks; also bounds how late the reader notices cancellation.
const BLOCK_MS: u64 = 1000;
/// Entries per `XREAD` (per stream).
const BATCH: usize = 1000;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The reader's position in every shard.
pub struct Cursor {
    keys: Vec<String>,
    ids: Vec<String>,
}

impl Cursor {
    /// Positions the reader at the newest entry of every shard (a starting node has no sockets
    /// that could have missed older ones). A shard that does not exist yet starts at `0-0`, so
    /// its first entry is read.
    pub async fn at_newest(client: &redis::Client, shards: u16) -> redis::RedisResult<Cursor> {
        let mut conn = blocking_connection(client, Duration::from_millis(BLOCK_MS)).await?;
        let keys: Vec<String> = (0..shards).map(keys::backplane_shard).collect();
        let mut ids = Vec::with_capacity(keys.len());
        for key in &keys {
            let last: StreamRangeReply = redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await?;
            ids.push(
                last.ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".to_owned()),
            );
        }
        Ok(Cursor { keys, ids })
    }
}

/// Runs until `cancel` fires: positions itself at the newest entry of every shard (retrying
/// until Redis answers), then reads every shard from there and delivers each entry locally.
pub async fn run(
    client: redis::Client,
    deliverer: Arc<Deliverer>,
    shards: u16,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut cursor = loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            c = Cursor::at_newest(&client, shards) => match c {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "backplane reader cannot reach redis; retrying");
                    sleep_or_cancel(&mut backoff, &cancel).await;
                }
            },
        }
    };
    'connect: while !cancel.is_cancelled() {
        let mut conn = tokio::select! {
            _ = cancel.cancelled() => break,
            c = blocking_connection(&client, Duration::from_millis(BLOCK_MS)) => match c {
                Ok(c) => c,
                Err(e) => {
                    health.set_reader_running(false);
                    tracing::warn!(error = %e, "backplane reader cannot connect; retrying");
                    sleep_or_cancel(&mut backoff, &cancel).await;
                    continue;
                }
            },
        };
        loop {
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&cursor.keys)
                .arg(&cursor.ids);
            let reply: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
                _ = cancel.cancelled() => break 'connect,
                r = cmd.query_async(&mut conn) => r,
            };
            match reply {
                Ok(reply) => {
                    health.set_reader_running(true);
                    backoff = BACKOFF_MIN;
                    crate::metrics::reader_lag(&cursor.keys, reply.as_ref());
                    for stream in reply.map(|r| r.keys).unwrap_or_default() {
                        let Some(pos) = cursor.keys.iter().position(|k| *k == stream.key) else {
                            continue;
                        };
                        for entry in &stream.ids {
                            apply(&deliverer, entry).await;
                            crate::metrics::entry_applied(&entry.id);
                            cursor.ids[pos].clone_from(&entry.id);
                        }
                    }
                }
                Err(e) => {
                    health.set_reader_running(false);
                    crate::metrics::redis_error("xread", &e);
                    tracing::warn!(error = %e, "backplane reader lost redis; reconnecting");
                    sleep_or_cancel(&mut backoff, &cancel).await;
                    continue 'connect;
                }
            }
        }
    }
    health.set_reader_running(false);
    tracing::debug!("backplane reader stopped");
}

async fn apply(deliverer: &Deliverer, entry: &StreamId) {
    let origin: String = entry.get(FIELD_ORIGIN).unwrap_or_default();
    let Some(body) = entry.get::<String>(FIELD_ENVELOPE) else {
        tracing::warn!(id = %entry.id, "backplane entry without envelope; skipped");
        return;
    };
    match serde_json::from_str::<Envelope>(&body) {
        Ok(actions) => deliverer.apply(&origin, &actions).await,
        // A newer node may publish an action this build does not know: skip it, keep reading.
        Err(e) => {
            tracing::warn!(id = %entry.id, error = %e, "undecodable backplane entry; skipped")
        }
    }
}

async fn sleep_or_cancel(backoff: &mut Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}
