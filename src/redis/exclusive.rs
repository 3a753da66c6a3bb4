//! Connections lent to one task at a time, for commands whose server-side state belongs to the
//! connection: `WATCH` … `MULTI` … `EXEC`, the send path's optimistic transaction
//! ([`super::scripts::chat_send_tx`]). The shared [`super::Conn`] interleaves every task's
//! commands, so a `WATCH` there would watch for all of them and an `EXEC` could commit another
//! task's `MULTI`.
//!
//! A connection goes to the master serving the key it is asked for ([`super::Redis::
//! client_for_key`]: the one Redis, the current Sentinel master, the Cluster master of the
//! key's slot) and comes back with [`Exclusive::put`] only after a clean end (`EXEC` answered,
//! or `UNWATCH`); one that failed is dropped, never reused half-way through a transaction. Idle
//! connections are forgotten when the topology changes, so none is kept for a demoted master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{CONNECT_TIMEOUT, Redis};

/// Idle connections kept per master: a send holds one for two round trips, so a node's
/// concurrency needs few; more are opened when needed and closed when returned past this.
const IDLE_PER_MASTER: usize = 16;

/// The pool; cheap to clone (one per node, shared).
#[derive(Clone)]
pub struct Exclusive {
    redis: Redis,
    timeout: Duration,
    idle: Arc<Mutex<Idle>>,
}

#[derive(Default)]
struct Idle {
    /// The topology generation the idle connections were opened in.
    generation: u64,
    by_master: HashMap<Arc<str>, Vec<MultiplexedConnection>>,
}

/// A connection lent by [`Exclusive::get`], to the master `addr`.
pub struct Lent {
    /// The master it goes to (`host:port`).
    pub addr: Arc<str>,
    /// The connection: no other task uses it until it is put back.
    pub conn: MultiplexedConnection,
    generation: u64,
}

impl Exclusive {
    /// A pool over `redis`'s masters; each command may take `timeout` (the node's response
    /// timeout, which covers a `WAIT`).
    pub fn new(redis: Redis, timeout: Duration) -> Exclusive {
        Exclusive {
            redis,
            timeout,
            idle: Arc::new(Mutex::new(Idle::default())),
        }
    }

    /// A connection of its own to the master serving `key`: an idle one, or a new one. Only
    /// a new one needs a client; an idle one is found by the master's address alone.
    pub async fn get(&self, key: &[u8]) -> redis::RedisResult<Lent> {
        let generation = self.redis.topology_generation();
        let addr = self.redis.master_addr_for_key(key).await?;
        if let Ok(mut idle) = self.idle.lock() {
            if idle.generation != generation {
                idle.by_master.clear();
                idle.generation = generation;
            }
            if let Some(conn) = idle.by_master.get_mut(&addr).and_then(Vec::pop) {
                return Ok(Lent {
                    addr,
                    conn,
                    generation,
                });
            }
        }
        let client = self.redis.client_for_key(key).await?;
        // The master may have changed since the lookup above: the connection goes where the
        // client points, and is filed under that address.
        let addr: Arc<str> = super::conn::addr_of(&client).into();
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Lent {
            addr,
            conn,
            generation,
        })
    }

    /// Gives back a connection whose last transaction ended cleanly (no `WATCH` left on it).
    pub fn put(&self, lent: Lent) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.generation == lent.generation
        {
            let conns = idle.by_master.entry(lent.addr).or_default();
            if conns.len() < IDLE_PER_MASTER {
                conns.push(lent.conn);
            }
        }
    }
}
