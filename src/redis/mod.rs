//! Redis access: connections, the Lua scripts, and (in [`keys`]) every key name.
//!
//! A node holds one [`Redis`] handle (one Redis, Redis Cluster or Sentinel: see [`conn`]) and
//! its one multiplexed [`Conn`] for ordinary commands — Redis is single-threaded, so one
//! pipelined connection per server carries a node's whole load and reconnects by itself — and
//! opens a dedicated connection with a long response timeout for each blocking reader (an
//! `XREAD BLOCK` on the shared connection would stall every command behind it).

pub mod conn;
pub mod exclusive;
pub mod keys;
pub mod scripts;

pub use conn::{ClusterSubscriber, Conn, Master, Redis, slot_of, wait_reply, within};
pub use exclusive::{Exclusive, Lent};

/// How writes that must survive a master's death are confirmed (`REDIS_WAIT_REPLICAS` > 0):
/// run on `conn` (a connection of their own, [`Redis::confirm`]), each followed by
/// `WAIT replicas timeout` in the same pipeline.
#[derive(Clone)]
pub struct Confirm {
    /// The connection the write and its `WAIT` run on.
    pub conn: Conn,
    /// Replicas that must have the write.
    pub replicas: u32,
    /// How long `WAIT` waits for them.
    pub timeout: std::time::Duration,
}

/// Fewer replicas had a write when its `WAIT` returned than `REDIS_WAIT_REPLICAS` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shortfall {
    /// Replicas that confirmed.
    pub confirmed: u32,
    /// Replicas wanted.
    pub wanted: u32,
}

impl Confirm {
    /// Runs `script` and its `WAIT` in one pipeline on the confirming connection: the script's
    /// raw reply, and the shortfall when too few replicas confirmed in time. The one place a
    /// script's writes are confirmed (the send script, `publish_once.lua`).
    pub async fn invoke(
        &self,
        script: &scripts::NamedScript,
        call: scripts::Call,
    ) -> redis::RedisResult<(redis::Value, Option<Shortfall>)> {
        let mut conn = self.conn.clone();
        let (reply, confirmed) =
            scripts::invoke_then_wait(script, &mut conn, call, self.replicas, self.timeout).await?;
        Ok((reply, self.shortfall(confirmed)))
    }

    /// `WAIT` on `conn`, which must be the connection that carried the writes to confirm (a
    /// connection lent to one transaction): the shortfall when too few replicas confirmed.
    pub async fn wait_on<C>(&self, conn: &mut C) -> redis::RedisResult<Option<Shortfall>>
    where
        C: redis::aio::ConnectionLike + Send,
    {
        let mut pipe = redis::pipe();
        Conn::pipe_wait(&mut pipe, self.replicas, self.timeout);
        let (waited,): (redis::Value,) =
            crate::metrics::redis_op("wait", pipe.query_async(conn)).await?;
        Ok(self.shortfall(wait_reply(waited, self.replicas)?))
    }

    fn shortfall(&self, confirmed: u32) -> Option<Shortfall> {
        (confirmed < self.replicas).then_some(Shortfall {
            confirmed,
            wanted: self.replicas,
        })
    }
}

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

/// How long an ordinary command may take before the caller gets `UNAVAILABLE`.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Parses and checks a Redis URL.
pub fn parse_url(url: &str) -> redis::RedisResult<Client> {
    Client::open(url)
}

/// A dedicated connection for blocking reads of at most `block`, never shared. Its response
/// timeout is the block plus a margin (not the default 500 ms, which would cut every block
/// short, and not none, which would hang forever on a silently dead connection).
pub async fn blocking_connection(
    client: &Client,
    block: Duration,
) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(block + Duration::from_secs(5)))
        .set_connection_timeout(Some(CONNECT_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// True when Redis answers PING within the command timeout.
pub async fn ping(conn: &mut Conn) -> bool {
    let res: redis::RedisResult<String> = redis::cmd("PING").query_async(conn).await;
    res.is_ok()
}

/// A dedicated RESP3 connection for pub/sub: what Redis pushes (messages, and the library's
/// `Disconnection` when the connection ends) goes to `push`, and ordinary commands still work on
/// it. No response timeout beyond the connection's: a subscription command answers at once.
pub async fn pubsub_connection(
    client: &Client,
    push: impl redis::aio::AsyncPushSender,
) -> redis::RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let redis_info = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let resp3 = Client::open(info.set_redis_settings(redis_info))?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_push_sender(push);
    resp3
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
