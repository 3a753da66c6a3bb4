//! The reader loop: `XREAD BLOCK` over every shard on a dedicated connection, applying each entry
//! to the local sockets in stream order.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use tokio_util::sync::CancellationToken;

use super::canary::{self, Canary};
use super::deliver::Deliverer;
use super::{Envelope, FIELD_CANARY, FIELD_ENVELOPE, FIELD_ORIGIN};
use crate::health::Health;
use crate::redis::{blocking_connection, keys};
use crate::tasks::{Backoff, BlockingReader, retry_until_ok, run_reconnecting};

/// How long one `XREAD` blocks; also bounds how late the reader notices cancellation.
const BLOCK_MS: u64 = 1000;
/// Entries per `XREAD` (per stream).
const BATCH: usize = 1000;

/// The reader connection's `CLIENT SETNAME`: `fanout-reader:<node id>`, so operators (and
/// tests) find it in `CLIENT LIST` and can tell a node's reader from its other connections.
pub fn client_name(node_id: &str) -> String {
    format!("fanout-reader:{node_id}")
}

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
    canary: Arc<Canary>,
    shards: u16,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let cursor = retry_until_ok(
        || Cursor::at_newest(&client, shards),
        |e| tracing::warn!(error = %e, "backplane reader cannot reach redis; retrying"),
        &mut backoff,
        &cancel,
    )
    .await;
    if let Some(cursor) = cursor {
        let mut reader = Reader {
            client,
            deliverer,
            canary,
            health: health.clone(),
            cursor,
        };
        run_reconnecting(&mut reader, backoff, &cancel).await;
    }
    health.set_reader_running(false);
    tracing::debug!("backplane reader stopped");
}

/// The reader's state across reconnects: the cursor survives them, so entries written while it
/// was away are delivered late, not skipped.
struct Reader {
    client: redis::Client,
    deliverer: Arc<Deliverer>,
    canary: Arc<Canary>,
    health: Arc<Health>,
    cursor: Cursor,
}

impl BlockingReader for Reader {
    type Conn = MultiplexedConnection;
    type Batch = Option<StreamReadReply>;

    async fn connect(&mut self) -> Option<MultiplexedConnection> {
        let conn = async {
            let mut c = blocking_connection(&self.client, Duration::from_millis(BLOCK_MS)).await?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(client_name(self.canary.node_id()))
                .query_async::<()>(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(c)
        };
        match conn.await {
            Ok(c) => Some(c),
            Err(e) => {
                self.health.set_reader_running(false);
                tracing::warn!(error = %e, "backplane reader cannot connect; retrying");
                None
            }
        }
    }

    async fn read(&mut self, conn: &mut MultiplexedConnection) -> Option<Self::Batch> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&self.cursor.keys)
            .arg(&self.cursor.ids);
        let reply: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(conn).await;
        match reply {
            Ok(reply) => Some(reply),
            Err(e) => {
                self.health.set_reader_running(false);
                crate::metrics::redis_error("xread", &e);
                tracing::warn!(error = %e, "backplane reader lost redis; reconnecting");
                None
            }
        }
    }

    async fn handle(&mut self, reply: Option<StreamReadReply>) {
        self.health.set_reader_running(true);
        let cursor = &mut self.cursor;
        crate::metrics::reader_lag(&cursor.keys, reply.as_ref());
        for stream in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(pos) = cursor.keys.iter().position(|k| *k == stream.key) else {
                continue;
            };
            for entry in &stream.ids {
                if let Some(token) = entry.get::<String>(FIELD_CANARY) {
                    // A canary: nothing to deliver, and not an event in the delivery metrics.
                    let origin: String = entry.get(FIELD_ORIGIN).unwrap_or_default();
                    if origin == self.canary.node_id()
                        && let Some(token) = canary::parse_token(&token)
                    {
                        self.canary.returned(pos, token);
                    }
                } else {
                    apply(&self.deliverer, entry).await;
                    crate::metrics::entry_applied(&entry.id);
                }
                cursor.ids[pos].clone_from(&entry.id);
            }
        }
    }
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
