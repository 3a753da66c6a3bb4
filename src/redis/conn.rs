//! The node's Redis, whatever the mode (docs/protocol.md §7): one [`Redis`] handle built from
//! [`RedisSettings`], its shared command connection [`Conn`], and the dedicated connections of
//! blocking readers and subscribers.
//!
//! | mode | [`Conn`] | [`Redis::client_for_key`] | [`Redis::masters`] |
//! |---|---|---|---|
//! | one Redis | a `ConnectionManager` (reconnects by itself) | that Redis | that Redis |
//! | Cluster | redis-rs's `cluster_async::ClusterConnection` (slot routing, `MOVED`/`ASK`, replica promotion), replaced when it stops answering | the master owning the key's slot now | every master, with its slots |
//! | Sentinel | a `ConnectionManager` to the master the sentinels name, replaced when they name another | the current master | the current master |
//!
//! A dedicated connection (a blocking `XREAD`, a subscriber) is opened from a [`Client`] that
//! one of these functions returns, with [`super::blocking_connection`] or
//! `Client::get_async_pubsub`. It points at one server: after a failover or a slot migration
//! the owner asks again (its connection fails, or [`Redis::topology_generation`] moved on).
//!
//! Every mode watches its topology in the background (every [`TOPOLOGY_POLL`]): Cluster mode
//! keeps the slot map [`Redis::client_for_key`] reads (and replaces a cluster connection that
//! stopped answering, see `ClusterConn`), Sentinel mode asks the sentinels for the master; a
//! change is counted (`fanout_redis_topology_changes_total`) and logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, Value,
};

use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT};
use crate::config::redis_mode::{NodeAddr, RedisMode, RedisSettings};

/// How often the topology (slot map, current master) is checked in the background.
pub const TOPOLOGY_POLL: Duration = Duration::from_secs(1);
/// How long one master discovery through the sentinels may take.
pub const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(2);
/// Slots of Redis Cluster.
pub const SLOTS: u16 = 16384;

/// The Redis slot of `key` (of its `{hash tag}` when it has one), as Redis Cluster computes
/// it: CRC16/XMODEM modulo 16384. (redis-rs computes it too but does not expose the number.)
pub fn slot_of(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// One master and the slots it serves (`0..=16383` outside Cluster mode).
#[derive(Debug, Clone)]
pub struct Master {
    /// `host:port`, as the topology names it (also the `master` label of the metrics).
    pub addr: String,
    /// Inclusive slot ranges.
    pub slots: Vec<(u16, u16)>,
    /// A client for it, with the node's credentials.
    pub client: Client,
}

/// The node's handle on Redis: built once from the settings, cloned freely.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    settings: RedisSettings,
    conn: Conn,
    /// The connection of writes confirmed with `WAIT` (`REDIS_WAIT_REPLICAS` > 0).
    confirmed: Option<Conn>,
    /// Bumped on every topology change seen (a promoted master, moved slots).
    generation: Arc<AtomicU64>,
}

/// The node's shared, multiplexed command connection in every mode: clone it freely, use it
/// with `query_async`, pipelines and scripts like any `redis::aio::ConnectionLike`. Never give
/// it a blocking command (see [`super::blocking_connection`]).
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Single {
        conn: ConnectionManager,
        addr: Arc<str>,
    },
    Cluster {
        conn: Arc<ClusterConn>,
        map: Arc<SlotMap>,
        /// The node's response timeout, applied around each call.
        timeout: Duration,
    },
    Sentinel(Arc<SentinelShared>),
}

impl Inner {
    /// A command connection for `settings`. `generation` is bumped (and the change counted) on
    /// every topology change this connection's watcher sees; `None` for a second connection
    /// whose changes the first one counts. `map`: the slot map to share with that first one
    /// (Cluster).
    fn build(
        settings: &RedisSettings,
        generation: Option<Arc<AtomicU64>>,
        map: Option<Arc<SlotMap>>,
    ) -> RedisResult<Inner> {
        let response_timeout = response_timeout(settings);
        Ok(match &settings.mode {
            RedisMode::Single(url) => {
                let client = single_client(url, settings)?;
                let addr: Arc<str> = addr_of(&client).into();
                let config = manager_config(response_timeout);
                let conn = ConnectionManager::new_lazy_with_config(client, config)?;
                Inner::Single { conn, addr }
            }
            RedisMode::Cluster { nodes } => {
                // redis-rs retries a command whose response timed out, which would run a
                // send that did run twice: its own timeout is set beyond any pause we meet, and
                // the node's own (`response_timeout`) is applied around each call instead.
                let inner_timeout = cluster_inner_timeout(response_timeout);
                let client = cluster_client(nodes, settings, inner_timeout)?;
                let conn = Arc::new(ClusterConn::new(client, inner_timeout));
                let map = map.unwrap_or_else(|| {
                    Arc::new(SlotMap {
                        ranges: RwLock::new(Vec::new()),
                        seeds: nodes.clone(),
                        settings: settings.clone(),
                        generation: generation.unwrap_or_default(),
                    })
                });
                tokio::spawn(watch_cluster(Arc::downgrade(&conn), Arc::downgrade(&map)));
                Inner::Cluster {
                    conn,
                    map,
                    timeout: response_timeout,
                }
            }
            RedisMode::Sentinel {
                sentinels,
                master,
                db,
            } => {
                let shared = Arc::new(SentinelShared::new(
                    sentinels,
                    master,
                    *db,
                    settings,
                    response_timeout,
                    generation,
                )?);
                tokio::spawn(watch_sentinel(Arc::downgrade(&shared)));
                Inner::Sentinel(shared)
            }
        })
    }
}

impl Redis {
    /// Builds the handle and its command connection. No I/O happens here: a node starts (and
    /// reports not ready) while Redis is away. Must run inside a tokio runtime: the topology
    /// watcher is spawned here and stops when the last clone of the handle and its [`Conn`]s
    /// are gone.
    pub fn new(settings: &RedisSettings) -> RedisResult<Redis> {
        let generation = Arc::new(AtomicU64::new(0));
        let conn = Conn {
            inner: Inner::build(settings, Some(generation.clone()), None)?,
        };
        // WAIT blocks the connection it runs on until the replicas confirm or the timeout
        // passes: confirmed writes get a connection of their own, so that a lagging or missing
        // replica holds up only them, not every other command of the node to that master.
        let confirmed = if settings.wait.replicas > 0 {
            let map = match &conn.inner {
                Inner::Cluster { map, .. } => Some(map.clone()),
                _ => None,
            };
            Some(Conn {
                inner: Inner::build(settings, None, map)?,
            })
        } else {
            None
        };
        Ok(Redis {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                conn,
                confirmed,
                generation,
            }),
        })
    }

    /// The validated settings it was built from.
    pub fn settings(&self) -> &RedisSettings {
        &self.shared.settings
    }

    /// `single`, `cluster` or `sentinel`.
    pub fn mode(&self) -> &'static str {
        self.shared.settings.mode.name()
    }

    /// The shared command connection (a clone).
    pub fn conn(&self) -> Conn {
        self.shared.conn.clone()
    }

    /// A pool of connections lent to one task at a time (`WATCH`/`MULTI`/`EXEC`), each
    /// command bounded by the node's response timeout.
    pub fn exclusive(&self) -> super::Exclusive {
        super::Exclusive::new(self.clone(), response_timeout(&self.shared.settings))
    }

    /// How writes are confirmed with `WAIT` (`REDIS_WAIT_REPLICAS` > 0), on a second command
    /// connection so that a `WAIT` blocks only the confirmed writes queued behind it; `None`
    /// when no write is confirmed.
    pub fn confirm(&self) -> Option<super::Confirm> {
        let wait = &self.shared.settings.wait;
        self.shared.confirmed.clone().map(|conn| super::Confirm {
            conn,
            replicas: wait.replicas,
            timeout: wait.timeout,
        })
    }

    /// How many topology changes this handle has seen: an owner of a dedicated connection
    /// that remembers it can tell when to ask [`Self::client_for_key`] again.
    pub fn topology_generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Relaxed)
    }

    /// The address (`host:port`) of the master that serves `key` now, without building a
    /// client when it is known: [`Self::client_for_key`]'s answer for callers that look up a
    /// connection they keep per master (the send transaction's, once per message).
    pub async fn master_addr_for_key(&self, key: &[u8]) -> RedisResult<Arc<str>> {
        match &self.shared.conn.inner {
            Inner::Single { addr, .. } => Ok(addr.clone()),
            Inner::Sentinel(s) => match s.current() {
                Some(c) => Ok(c.addr.clone()),
                None => Ok(addr_of(&s.master_client().await?).into()),
            },
            Inner::Cluster { map, .. } => match map.owner(slot_of(key)) {
                Some(addr) => Ok(addr),
                None => Ok(addr_of(&self.client_for_key(key).await?).into()),
            },
        }
    }

    /// A client for the master that serves `key` now: the one Redis, the current Sentinel
    /// master, or the Cluster master owning the key's slot (the slot map is read first when
    /// it is not known yet). For a blocking reader or a subscriber of that key (a stream, a
    /// shard channel `SSUBSCRIBE`d with the key's hash tag).
    pub async fn client_for_key(&self, key: &[u8]) -> RedisResult<Client> {
        match &self.shared.conn.inner {
            Inner::Single { conn: _, .. } => single_client_of(&self.shared.settings),
            Inner::Sentinel(s) => s.master_client().await,
            Inner::Cluster { conn, map, .. } => {
                let slot = slot_of(key);
                if let Some(addr) = map.owner(slot) {
                    return map.client(&addr);
                }
                map.refresh(&mut conn.get()).await?;
                let addr = map.owner(slot).ok_or_else(|| {
                    RedisError::from((
                        ErrorKind::Server(ServerErrorKind::ClusterDown),
                        "no master serves the slot",
                        slot.to_string(),
                    ))
                })?;
                map.client(&addr)
            }
        }
    }

    /// Every master with its slots (read fresh from the cluster in Cluster mode): for work
    /// done on each master, such as listening to `__keyevent@*__:expired`, which Redis
    /// Cluster delivers only on the master where the key expired.
    pub async fn masters(&self) -> RedisResult<Vec<Master>> {
        match &self.shared.conn.inner {
            Inner::Single { addr, .. } => Ok(vec![Master {
                addr: addr.to_string(),
                slots: vec![(0, SLOTS - 1)],
                client: single_client_of(&self.shared.settings)?,
            }]),
            Inner::Sentinel(s) => {
                let client = s.master_client().await?;
                Ok(vec![Master {
                    addr: addr_of(&client),
                    slots: vec![(0, SLOTS - 1)],
                    client,
                }])
            }
            Inner::Cluster { conn, map, .. } => {
                let ranges = map.refresh(&mut conn.get()).await?;
                let mut masters: Vec<Master> = Vec::new();
                for r in ranges {
                    match masters.iter_mut().find(|m| m.addr == *r.addr) {
                        Some(m) => m.slots.push((r.start, r.end)),
                        None => masters.push(Master {
                            addr: r.addr.to_string(),
                            slots: vec![(r.start, r.end)],
                            client: map.client(&r.addr)?,
                        }),
                    }
                }
                Ok(masters)
            }
        }
    }

    /// A dedicated connection for blocking reads of at most `block` on the master serving
    /// `key` (see [`super::blocking_connection`]).
    pub async fn blocking_connection_for_key(
        &self,
        key: &[u8],
        block: Duration,
    ) -> RedisResult<redis::aio::MultiplexedConnection> {
        let client = self.client_for_key(key).await?;
        super::blocking_connection(&client, block).await
    }

    /// A subscriber connection to the master serving `key` (`SUBSCRIBE`/`PSUBSCRIBE`; in
    /// Cluster mode `SSUBSCRIBE` a shard channel whose hash tag is the key's).
    pub async fn pubsub_for_key(&self, key: &[u8]) -> RedisResult<redis::aio::PubSub> {
        self.client_for_key(key).await?.get_async_pubsub().await
    }

    /// Cluster mode: a dedicated subscriber (RESP3) for shard channels, see
    /// [`ClusterSubscriber`]; the messages arrive on `pushes`. `None` outside Cluster mode
    /// (there, [`Self::pubsub_for_key`] on the one master).
    pub async fn cluster_subscriber(
        &self,
        pushes: impl redis::aio::AsyncPushSender,
    ) -> Option<RedisResult<ClusterSubscriber>> {
        let (RedisMode::Cluster { nodes }, Inner::Cluster { map, .. }) =
            (&self.shared.settings.mode, &self.shared.conn.inner)
        else {
            return None;
        };
        let connect = async {
            let client = cluster_builder(nodes, &self.shared.settings, COMMAND_TIMEOUT)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?;
            let conn = client.get_async_connection().await?;
            let channels = Arc::new(std::sync::Mutex::new(HashMap::new()));
            tokio::spawn(follow_topology(
                conn.clone(),
                Arc::downgrade(&channels),
                map.clone(),
            ));
            Ok(ClusterSubscriber {
                conn,
                channels,
                map: map.clone(),
            })
        };
        Some(connect.await)
    }

    /// The client the node's blocking readers and subscribers use until they are made
    /// cluster-aware (after the backplane rewrite): the one Redis, the current Sentinel master
    /// (asked of the sentinels now), or in Cluster mode the master of slot 0 — which serves
    /// only the keys of its own slots.
    pub async fn primary_client(&self) -> RedisResult<Client> {
        self.client_for_key(b"").await
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the connection that wrote `key` (Cluster: the master owning
    /// its slot, reached through the same per-node connection that carried the write), and
    /// the number of replicas that confirmed every write of this connection so far. Fewer
    /// than `replicas` means the timeout passed (counted in `fanout_redis_wait_timeouts_total`).
    ///
    /// `WAIT` blocks the connection it runs on: while replicas lag, every command behind it on
    /// this shared connection waits too (up to `timeout`).
    pub async fn wait_for_replicas(
        &mut self,
        key: &[u8],
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(millis);
        let value = match &mut self.inner {
            Inner::Cluster { conn, .. } => {
                let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.get().route_command(cmd, routing).await?
            }
            _ => self.req_packed_command(&cmd).await?,
        };
        wait_reply(value, replicas)
    }

    /// Appends `WAIT replicas timeout` to `pipe`, after the write(s) it confirms: sent in the
    /// same pipeline, the `WAIT` runs on the connection that carried the writes, with no
    /// reconnect in between (a `WAIT` on a fresh connection confirms nothing: it has no writes
    /// of its own to wait for). In Cluster mode the pipeline goes to the master of its first
    /// key's slot; a bare `WAIT` through [`Conn`] would be sent to every master instead (redis-rs
    /// routes it that way) — use this or [`Conn::wait_for_replicas`]. Read the reply with
    /// [`wait_reply`].
    pub fn pipe_wait(pipe: &mut Pipeline, replicas: u32, timeout: Duration) {
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        pipe.cmd("WAIT").arg(replicas).arg(millis);
    }

    /// The master that serves `key` as far as the slot map knows (Redis Cluster); `None` on one
    /// Redis, on Sentinel (one master serves everything) and for a slot not mapped yet. For
    /// callers that group reads by master, so that a master failing over fails its own group
    /// only (a cut pipeline fails as a whole).
    pub fn master_of(&self, key: &[u8]) -> Option<Arc<str>> {
        match &self.inner {
            Inner::Cluster { map, .. } => map.owner(slot_of(key)),
            _ => None,
        }
    }

    /// The `master` label of `cmd`'s metrics.
    fn master_label(&self, cmd: Option<&Cmd>) -> Arc<str> {
        match &self.inner {
            Inner::Single { addr, .. } => addr.clone(),
            Inner::Sentinel(s) => s.current_addr(),
            Inner::Cluster { map, .. } => cmd
                .and_then(command_key)
                .and_then(|key| map.owner(slot_of(key)))
                .unwrap_or_else(|| Arc::from("any")),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let master = self.master_label(Some(cmd));
            let start = Instant::now();
            let result = match &mut self.inner {
                Inner::Single { conn, .. } => conn.req_packed_command(cmd).await,
                Inner::Cluster { conn, timeout, .. } => {
                    within(*timeout, conn.get().req_packed_command(cmd)).await
                }
                Inner::Sentinel(s) => match s.connection().await {
                    Ok(mut c) => {
                        let result = c.req_packed_command(cmd).await;
                        s.clone().check(result.as_ref().err());
                        result
                    }
                    Err(e) => Err(e),
                },
            };
            crate::metrics::redis_master_command(&master, start, result.as_ref().err());
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let master = self.master_label(pipeline.cmd_iter().next());
            let start = Instant::now();
            let result = match &mut self.inner {
                Inner::Single { conn, .. } => {
                    conn.req_packed_commands(pipeline, offset, count).await
                }
                Inner::Cluster { conn, map, timeout } => {
                    // A transaction (offset > 0) must stay one; an ordinary pipeline whose
                    // commands name keys of several slots is cut per slot (redis-rs refuses it
                    // whole with CROSSSLOT), each part to its master, answers put back in order.
                    let shared: &ClusterConn = conn;
                    let conn = conn.get();
                    let send = async {
                        match (offset == 0).then(|| split_by_slot(pipeline)).flatten() {
                            Some(parts) => {
                                let gate = |slot| shared.gate(map.owner(slot));
                                run_split(&conn, gate, pipeline.len(), parts).await
                            }
                            None => send_part(&conn, pipeline, offset, count).await,
                        }
                    };
                    within(*timeout, send).await
                }
                Inner::Sentinel(s) => match s.connection().await {
                    Ok(mut c) => {
                        let result = c.req_packed_commands(pipeline, offset, count).await;
                        s.clone().check(result.as_ref().err());
                        result
                    }
                    Err(e) => Err(e),
                },
            };
            crate::metrics::redis_master_command(&master, start, result.as_ref().err());
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single { conn, .. } => conn.get_db(),
            Inner::Cluster { .. } => 0,
            Inner::Sentinel(s) => s.db,
        }
    }
}

/// The commands of `pipeline` grouped by the slot of their first key (commands without a key
/// join the first group), each group with its slot and the positions of its commands; `None`
/// when they all fall in one slot (sent whole).
fn split_by_slot(pipeline: &Pipeline) -> Option<Vec<(u16, Pipeline, Vec<usize>)>> {
    let slots: Vec<Option<u16>> = pipeline
        .cmd_iter()
        .map(|c| command_key(c).map(slot_of))
        .collect();
    let first = slots.iter().flatten().next().copied()?;
    if slots.iter().flatten().all(|&s| s == first) {
        return None;
    }
    let mut groups: Vec<(u16, Pipeline, Vec<usize>)> = Vec::new();
    for (i, (cmd, slot)) in pipeline.cmd_iter().zip(&slots).enumerate() {
        let slot = slot.unwrap_or(first);
        let at = match groups.iter().position(|(s, _, _)| *s == slot) {
            Some(at) => at,
            None => {
                groups.push((slot, Pipeline::new(), Vec::new()));
                groups.len() - 1
            }
        };
        let (_, part, positions) = &mut groups[at];
        part.add_command(cmd.clone());
        positions.push(i);
    }
    Some(groups)
}

/// The cluster connection's own response timeout: beyond the node's (so that redis-rs, which
/// retries a timed-out command, never does) and beyond a Redis pause of several seconds.
fn cluster_inner_timeout(response_timeout: Duration) -> Duration {
    (response_timeout * 5).max(Duration::from_secs(10))
}

/// `call`, or a timeout error (`UNAVAILABLE` to callers) once `limit` passed. The call is
/// dropped, not retried: like on one Redis, a command that timed out may still run.
pub async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        )))
    })
}

/// How often a cluster pipeline (or a part of a cut one) that a master refused for its slot
/// (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) is sent again.
const PIPELINE_RETRIES: u32 = 4;

/// A server error after which a one-slot pipeline ran nothing: the master refused the slot
/// (`EXECABORT`: a transaction whose commands it refused so, discarded whole).
fn refused_slot(kind: Option<ServerErrorKind>) -> bool {
    matches!(
        kind,
        Some(
            ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::ExecAbort
        )
    )
}

/// Sends a pipeline whose keys are all of one slot. redis-rs follows `MOVED` for single
/// commands but hands a pipeline's redirection back: then one keyed command into that slot
/// (which redis-rs follows, learning the new owner) and the pipeline again, a few times —
/// safe, since a master that refuses the slot runs none of its commands.
async fn send_part(
    conn: &ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let mut conn = conn.clone();
    let mut attempt = 0;
    loop {
        let answer = conn.req_packed_commands(pipeline, offset, count).await;
        let refused = match &answer {
            Err(e) => matches!(e.kind(), ErrorKind::Server(k) if refused_slot(Some(k))),
            Ok(values) => values
                .iter()
                .any(|v| matches!(v, Value::ServerError(e) if refused_slot(e.kind()))),
        };
        attempt += 1;
        if !refused || attempt > PIPELINE_RETRIES {
            return answer;
        }
        if let Some(key) = pipeline.cmd_iter().find_map(command_key) {
            let mut poke = redis::cmd("EXISTS");
            poke.arg(key);
            let _ = conn.req_packed_command(&poke).await;
        }
        tokio::time::sleep(Duration::from_millis(50) * attempt).await;
    }
}

/// Parts of cut pipelines in flight at once to one master, over all the callers of the node's
/// cluster connection, and in one call. A pipeline of 1 000 users' or chats' keys is cut into
/// up to 1 000 parts, and a node sends several at once (a presence refresh per master, syncs).
/// Requests in flight while redis-rs recovers from a failover are what wedges its connection
/// (docs/reliability.md), and even tens of them do: in `chaos_failover` (about 30 parts per
/// master at once) the nodes' connections wedged 6 times per run unbounded, 5 with 64, 0-3 with
/// 32 and 0 with 8 (docs/architecture.md section 16). Per master, so that parts waiting on a master
/// that does not answer never hold up the others' (a single bound did: a paused master's parts
/// took every permit, and the healthy masters' presence refreshes timed out behind them). The
/// price is latency: 1 000 parts to one master are ~125 round trips (32 ms here).
pub const PARTS_IN_FLIGHT: usize = 8;

/// Distinct masters whose gates are kept before idle ones are dropped (failovers to new
/// addresses add masters).
const GATES_KEPT: usize = 64;

/// Sends the parts of a cut pipeline, at most [`PARTS_IN_FLIGHT`] at once, each only with a
/// permit of the gate `gate` gives its slot (its master's), and returns the `len` answers in
/// the original order; the first failed part fails the whole (as one pipeline would) and the
/// parts not yet sent are not sent.
async fn run_split(
    conn: &ClusterConnection,
    gate: impl Fn(u16) -> Arc<tokio::sync::Semaphore>,
    len: usize,
    parts: Vec<(u16, Pipeline, Vec<usize>)>,
) -> RedisResult<Vec<Value>> {
    // Collected first: a lazy map's closure would make this future not `Send` for every
    // lifetime (the compiler's higher-ranked closure limitation).
    let sends: Vec<_> = parts
        .iter()
        .map(|(slot, part, _)| {
            let gate = gate(*slot);
            async move {
                let _permit = gate.acquire().await.map_err(|_| {
                    RedisError::from((ErrorKind::Client, "redis cluster connection closed"))
                })?;
                send_part(conn, part, 0, part.len()).await
            }
        })
        .collect();
    let answers: Vec<Vec<Value>> = futures_util::stream::iter(sends)
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut out = vec![Value::Nil; len];
    for ((_, _, positions), answer) in parts.iter().zip(answers) {
        for (&i, value) in positions.iter().zip(answer) {
            if let Some(slot) = out.get_mut(i) {
                *slot = value;
            }
        }
    }
    Ok(out)
}

/// The number of replicas a `WAIT` reply reports; fewer than `replicas` (the timeout passed)
/// is counted in `fanout_redis_wait_timeouts_total`.
pub fn wait_reply(value: Value, replicas: u32) -> RedisResult<u32> {
    let confirmed: u32 = redis::from_redis_value(value)?;
    if confirmed < replicas {
        crate::metrics::redis_wait_timeout();
    }
    Ok(confirmed)
}

/// The first key of `cmd` (the key of `EVAL`/`EVALSHA`/`FCALL` after `numkeys`), for routing
/// its metrics label; `None` for commands without one.
fn command_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    let keyed_after = if [
        &b"EVAL"[..],
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
    {
        let _script = args.next()?;
        let numkeys = args.next()?;
        if numkeys == b"0" {
            return None;
        }
        0
    } else if [
        &b"PING"[..],
        b"WAIT",
        b"INFO",
        b"CLUSTER",
        b"CONFIG",
        b"SCRIPT",
        b"CLIENT",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
    {
        return None;
    } else if [&b"XREAD"[..], b"XREADGROUP"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    {
        // The first key follows STREAMS.
        return args
            .by_ref()
            .find(|a| a.eq_ignore_ascii_case(b"STREAMS"))
            .and_then(|_| args.next());
    } else {
        0
    };
    args.nth(keyed_after)
}

/// `host:port` of a client's server, as [`NodeAddr`] writes it (IPv6 in brackets), so that
/// addresses from sentinels, `CLUSTER SLOTS` and clients compare equal.
pub(crate) fn addr_of(client: &Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => NodeAddr {
            host: host.clone(),
            port: *port,
        }
        .to_string(),
        other => other.to_string(),
    }
}

/// The response timeout of the shared connection: [`COMMAND_TIMEOUT`], or longer when `WAIT`
/// may block longer than that.
fn response_timeout(settings: &RedisSettings) -> Duration {
    if settings.wait.replicas == 0 {
        return COMMAND_TIMEOUT;
    }
    COMMAND_TIMEOUT.max(settings.wait.timeout + Duration::from_millis(500))
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        // Fail fast while Redis is away: callers answer UNAVAILABLE and the next command
        // tries again, instead of every caller waiting through a long retry schedule.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// The one-Redis client: the URL with REDIS_USERNAME / REDIS_PASSWORD on top.
fn single_client(url: &str, settings: &RedisSettings) -> RedisResult<Client> {
    let info = url.into_connection_info()?;
    let mut redis = info.redis_settings().clone();
    if let Some(user) = &settings.username {
        redis = redis.set_username(user);
    }
    if let Some(pw) = &settings.password {
        redis = redis.set_password(pw);
    }
    Client::open(info.set_redis_settings(redis))
}

fn single_client_of(settings: &RedisSettings) -> RedisResult<Client> {
    match &settings.mode {
        RedisMode::Single(url) => single_client(url, settings),
        _ => Err(RedisError::from((
            ErrorKind::InvalidClientConfig,
            "not the one-Redis mode",
        ))),
    }
}

/// A client for one node (`host:port`) of the cluster or the Sentinel master, with the
/// node's credentials.
fn node_client(addr: &str, settings: &RedisSettings, db: i64) -> RedisResult<Client> {
    let parsed = NodeAddr::parse(addr).ok_or_else(|| {
        RedisError::from((
            ErrorKind::InvalidClientConfig,
            "not host:port",
            addr.to_owned(),
        ))
    })?;
    let info = ConnectionAddr::Tcp(parsed.host, parsed.port).into_connection_info()?;
    let mut redis = info.redis_settings().clone().set_db(db);
    if let Some(user) = &settings.username {
        redis = redis.set_username(user);
    }
    if let Some(pw) = &settings.password {
        redis = redis.set_password(pw);
    }
    Client::open(info.set_redis_settings(redis))
}

fn cluster_client(
    nodes: &[NodeAddr],
    settings: &RedisSettings,
    response_timeout: Duration,
) -> RedisResult<ClusterClient> {
    cluster_builder(nodes, settings, response_timeout).build()
}

fn cluster_builder(
    nodes: &[NodeAddr],
    settings: &RedisSettings,
    response_timeout: Duration,
) -> ClusterClientBuilder {
    let seeds: Vec<ConnectionAddr> = nodes
        .iter()
        .map(|n| ConnectionAddr::Tcp(n.host.clone(), n.port))
        .collect();
    let mut builder = ClusterClientBuilder::new(seeds)
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(response_timeout)
        // Retries cover MOVED/ASK, TRYAGAIN and a master's failover (its replica promoted
        // within cluster-node-timeout + election): keep trying for a few seconds, bounded.
        .retries(6)
        .min_retry_wait(50)
        .max_retry_wait(1000)
        .overall_response_timeout(Some(response_timeout));
    if let Some(user) = &settings.username {
        builder = builder.username(user);
    }
    if let Some(pw) = &settings.password {
        builder = builder.password(pw);
    }
    builder
}

// ---- Cluster: shard-channel subscriber ------------------------------------------------------

/// `SSUBSCRIBE`s in flight at once on a subscriber connection. A resubscription after a
/// failover is every room of the node, one request each, and requests in flight while redis-rs
/// recovers are what wedges a cluster connection ([`PARTS_IN_FLIGHT`]); this connection carries
/// nothing else at once and was never seen wedged, so the bound is looser, for the time a node
/// of many rooms takes to subscribe them again (it misses their frames meanwhile).
pub const SUBSCRIBES_IN_FLIGHT: usize = 64;

/// A subscriber connection of Cluster mode for shard channels (`SSUBSCRIBE`), built by
/// [`Redis::cluster_subscriber`]: one room's channel `fanout:{<room>}:ch` is served by the
/// master of the room's slot, and the connection routes each channel there. redis-rs
/// subscribes again after a reconnect and after it re-reads the slot map, but a connection
/// that only listens never re-reads it; so when the node's slot map shows a subscribed
/// channel's slot served by another master (a failover, a reshard), this sends one keyed
/// command (`EXISTS <channel>`) into that slot, which makes redis-rs re-read the map and move
/// the subscriptions.
#[derive(Clone)]
pub struct ClusterSubscriber {
    conn: ClusterConnection,
    map: Arc<SlotMap>,
    /// Subscribed channels and the master serving each when last checked.
    channels: Arc<Channels>,
}

/// Subscribed channels, each with the master that served it when last checked.
type Channels = std::sync::Mutex<HashMap<Vec<u8>, Option<Arc<str>>>>;

impl ClusterSubscriber {
    /// `SSUBSCRIBE channel`.
    pub async fn ssubscribe(&mut self, channel: &str) -> RedisResult<()> {
        self.conn.ssubscribe(channel).await?;
        if let Ok(mut chans) = self.channels.lock() {
            // The owner now; a later look of the watcher that sees another one subscribes again.
            chans
                .entry(channel.as_bytes().to_vec())
                .or_insert_with(|| self.map.owner(slot_of(channel.as_bytes())));
        }
        Ok(())
    }

    /// `CLIENT SETNAME name` on every connection the cluster connection holds now (redis-rs
    /// sends it to every node): operators find a node's subscriber connections by name.
    pub async fn set_name(&mut self, name: &str) -> RedisResult<()> {
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .query_async(&mut self.conn)
            .await
    }

    /// `PING` through the cluster connection (a probe of its masters).
    pub async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING").query_async(&mut self.conn).await
    }

    /// `SSUBSCRIBE` (or, `subscribe` false, `SUNSUBSCRIBE`) each of `channels`, each to the
    /// master of its own slot, at most [`SUBSCRIBES_IN_FLIGHT`] at once. Every channel is tried;
    /// the first error is returned.
    pub async fn each(&self, channels: &[String], subscribe: bool) -> RedisResult<()> {
        // Collected first: a lazy map's closure would make this future not `Send` for every
        // lifetime (the compiler's higher-ranked closure limitation).
        let each: Vec<_> = channels
            .iter()
            .map(|ch| {
                let mut c = self.clone();
                async move {
                    if subscribe {
                        c.ssubscribe(ch).await
                    } else {
                        c.sunsubscribe(ch).await
                    }
                }
            })
            .collect();
        let results: Vec<RedisResult<()>> = futures_util::stream::iter(each)
            .buffer_unordered(SUBSCRIBES_IN_FLIGHT)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// `SUNSUBSCRIBE channel`.
    pub async fn sunsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        self.conn.sunsubscribe(channel).await?;
        if let Ok(mut chans) = self.channels.lock() {
            chans.remove(channel.as_bytes());
        }
        Ok(())
    }
}

/// Every [`TOPOLOGY_POLL`]: the channels whose slot the node's slot map now shows served by
/// another master are subscribed again (after one keyed command into such a slot, which makes
/// redis-rs re-read its own slot map so that `SSUBSCRIBE` goes to the new master). A channel
/// that fails stays marked and is tried again at the next look.
async fn follow_topology(mut conn: ClusterConnection, channels: Weak<Channels>, map: Arc<SlotMap>) {
    loop {
        tokio::time::sleep(TOPOLOGY_POLL).await;
        let Some(chans) = channels.upgrade() else {
            return;
        };
        let moved: Vec<(Vec<u8>, Arc<str>)> = chans
            .lock()
            .map(|list| {
                list.iter()
                    .filter_map(|(channel, owner)| {
                        let now = map.owner(slot_of(channel))?;
                        (owner.as_ref() != Some(&now)).then(|| (channel.clone(), now))
                    })
                    .collect()
            })
            .unwrap_or_default();
        drop(chans);
        let Some((first, _)) = moved.first() else {
            continue;
        };
        let mut poke = redis::cmd("EXISTS");
        poke.arg(first);
        let _ = tokio::time::timeout(COMMAND_TIMEOUT * 4, conn.req_packed_command(&poke)).await;
        let mut done = Vec::new();
        for (channel, owner) in moved {
            let subscribed =
                tokio::time::timeout(COMMAND_TIMEOUT * 2, conn.ssubscribe(&channel[..])).await;
            if matches!(subscribed, Ok(Ok(()))) {
                done.push((channel, owner));
            }
        }
        tracing::info!(
            channels = done.len(),
            "shard-channel subscriber followed a topology change"
        );
        if let Some(chans) = channels.upgrade()
            && let Ok(mut list) = chans.lock()
        {
            for (channel, owner) in done {
                if let Some(entry) = list.get_mut(&channel) {
                    *entry = Some(owner);
                }
            }
        }
    }
}

// ---- Cluster: the slot map -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    addr: Arc<str>,
}

struct SlotMap {
    /// Sorted by `start`; empty until first read.
    ranges: RwLock<Vec<SlotRange>>,
    seeds: Vec<NodeAddr>,
    settings: RedisSettings,
    generation: Arc<AtomicU64>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<Arc<str>> {
        let ranges = self.ranges.read().ok()?;
        let i = ranges.partition_point(|r| r.end < slot);
        ranges
            .get(i)
            .filter(|r| r.start <= slot)
            .map(|r| r.addr.clone())
    }

    fn client(&self, addr: &str) -> RedisResult<Client> {
        node_client(addr, &self.settings, 0)
    }

    /// Reads `CLUSTER SLOTS` and stores it; a change from a known map is a topology change.
    async fn refresh(&self, conn: &mut ClusterConnection) -> RedisResult<Vec<SlotRange>> {
        let value = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let default_host = self.seeds.first().map(|s| s.host.as_str()).unwrap_or("");
        let mut ranges = parse_cluster_slots(value, default_host)?;
        ranges.sort_by_key(|r| r.start);
        if let Ok(mut known) = self.ranges.write()
            && *known != ranges
        {
            if !known.is_empty() {
                self.generation.fetch_add(1, Ordering::Relaxed);
                crate::metrics::redis_topology_change("cluster");
                tracing::info!(
                    masters = %distinct_masters(&ranges).join(","),
                    "redis cluster topology changed"
                );
            }
            *known = ranges.clone();
        }
        Ok(ranges)
    }
}

fn distinct_masters(ranges: &[SlotRange]) -> Vec<String> {
    let mut out: Vec<String> = ranges.iter().map(|r| r.addr.to_string()).collect();
    out.sort();
    out.dedup();
    out
}

fn bad_reply(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "unexpected CLUSTER SLOTS reply",
        what.to_owned(),
    ))
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`. An empty host
/// (a node that does not know its own address) is `default_host`.
fn parse_cluster_slots(value: Value, default_host: &str) -> RedisResult<Vec<SlotRange>> {
    let Value::Array(items) = value else {
        return Err(bad_reply("not an array"));
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Array(fields) = item else {
            return Err(bad_reply("range not an array"));
        };
        let mut fields = fields.into_iter();
        let (Some(start), Some(end), Some(master)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad_reply("short range"));
        };
        let start: u16 = redis::from_redis_value(start)?;
        let end: u16 = redis::from_redis_value(end)?;
        if start > end || end >= SLOTS {
            return Err(bad_reply("slot range out of bounds"));
        }
        let Value::Array(master) = master else {
            return Err(bad_reply("master not an array"));
        };
        let mut master = master.into_iter();
        let (Some(host), Some(port)) = (master.next(), master.next()) else {
            return Err(bad_reply("master without host and port"));
        };
        let host: String = redis::from_redis_value(host)?;
        let port: u16 = redis::from_redis_value(port)?;
        let host = if host.is_empty() || host == "?" {
            default_host.to_owned()
        } else {
            host
        };
        let addr = NodeAddr { host, port }.to_string();
        out.push(SlotRange {
            start,
            end,
            addr: addr.into(),
        });
    }
    Ok(out)
}

/// The shared command connection of Cluster mode, replaceable: redis-rs's cluster connection
/// can wedge for good after a master's failover under load (redis 1.8: its slot-refresh
/// recovery waits for the lock of its connection map while an in-flight request it no longer
/// polls holds that lock, and from then on no command is sent to any master). [`watch_cluster`]
/// replaces it with a fresh one when it stops answering.
struct ClusterConn {
    current: RwLock<ClusterConnection>,
    client: ClusterClient,
    response_timeout: Duration,
    /// Per master (`None`: its slot's owner is not known yet), the permits for the parts of cut
    /// pipelines in flight to it, over every caller ([`PARTS_IN_FLIGHT`]).
    gates: std::sync::Mutex<HashMap<Option<Arc<str>>, Arc<tokio::sync::Semaphore>>>,
}

impl ClusterConn {
    fn new(client: ClusterClient, response_timeout: Duration) -> ClusterConn {
        ClusterConn {
            current: RwLock::new(Self::connect(&client, response_timeout)),
            client,
            response_timeout,
            gates: Default::default(),
        }
    }

    /// The gate of `master`'s cut-pipeline parts (see [`PARTS_IN_FLIGHT`]).
    fn gate(&self, master: Option<Arc<str>>) -> Arc<tokio::sync::Semaphore> {
        let mut gates = self
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if gates.len() >= GATES_KEPT && !gates.contains_key(&master) {
            gates.retain(|_, g| g.available_permits() < PARTS_IN_FLIGHT);
        }
        gates
            .entry(master)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(PARTS_IN_FLIGHT)))
            .clone()
    }

    /// A connection that connects in the background (commands wait for it).
    fn connect(client: &ClusterClient, response_timeout: Duration) -> ClusterConnection {
        let config = ClusterConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(response_timeout);
        client.get_pending_async_connection_with_config(config)
    }

    /// The current connection (a clone).
    fn get(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the connection: commands in flight on the old one finish or fail on their
    /// timeout, and its task ends with the last of them.
    fn replace(&self) {
        let fresh = Self::connect(&self.client, self.response_timeout);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    }
}

/// How long the watcher's `CLUSTER SLOTS` may take (it answers in microseconds, and any live
/// master can answer it, also during a failover).
const WATCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive unanswered watches after which the cluster connection is taken as wedged and
/// replaced: a few seconds, well inside a presence TTL, so that no user expires for it.
const WEDGED_AFTER: u32 = 3;

/// Every [`TOPOLOGY_POLL`]: reads the slot map through the shared connection, and replaces that
/// connection after [`WEDGED_AFTER`] reads in a row got no answer (a wedged connection answers
/// nothing again; if the whole cluster is away instead, a fresh connection costs nothing).
async fn watch_cluster(conn: Weak<ClusterConn>, map: Weak<SlotMap>) {
    let mut unanswered = 0u32;
    loop {
        let (Some(conn), Some(map)) = (conn.upgrade(), map.upgrade()) else {
            return;
        };
        let mut c = conn.get();
        match tokio::time::timeout(WATCH_TIMEOUT, map.refresh(&mut c)).await {
            Ok(Ok(_)) => unanswered = 0,
            Ok(Err(e)) => {
                unanswered += 1;
                tracing::debug!(error = %e, "redis cluster slot map not read");
            }
            Err(_) => {
                unanswered += 1;
                tracing::debug!("redis cluster slot map not read: timed out");
            }
        }
        if unanswered >= WEDGED_AFTER {
            tracing::warn!(
                unanswered,
                "redis cluster connection answered nothing; replaced by a new one"
            );
            conn.replace();
            unanswered = 0;
        }
        drop((c, conn, map));
        tokio::time::sleep(TOPOLOGY_POLL).await;
    }
}

// ---- Sentinel: the current master --------------------------------------------------------------

struct Current {
    addr: Arc<str>,
    client: Client,
    conn: ConnectionManager,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// Clients of the sentinels themselves, for the cheap check of the watcher.
    sentinels: Vec<Client>,
    master_name: String,
    current: RwLock<Option<Arc<Current>>>,
    rediscovering: AtomicBool,
    response_timeout: Duration,
    db: i64,
    /// Bumped on a master change; `None` on a second connection (the first counts it).
    generation: Option<Arc<AtomicU64>>,
}

impl SentinelShared {
    fn new(
        sentinels: &[NodeAddr],
        master: &str,
        db: u32,
        settings: &RedisSettings,
        response_timeout: Duration,
        generation: Option<Arc<AtomicU64>>,
    ) -> RedisResult<SentinelShared> {
        let addrs = sentinels
            .iter()
            .map(|s| ConnectionAddr::Tcp(s.host.clone(), s.port));
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
            .set_client_to_redis_db(i64::from(db));
        if let Some(user) = &settings.username {
            builder = builder
                .set_client_to_redis_username(user)
                .set_client_to_sentinel_username(user);
        }
        if let Some(pw) = &settings.password {
            builder = builder.set_client_to_redis_password(pw);
        }
        if let Some(pw) = settings
            .sentinel_password
            .as_ref()
            .or(settings.password.as_ref())
        {
            builder = builder.set_client_to_sentinel_password(pw);
        }
        let sentinel_password = settings
            .sentinel_password
            .as_ref()
            .or(settings.password.as_ref());
        let clients = sentinels
            .iter()
            .map(|s| {
                let info = ConnectionAddr::Tcp(s.host.clone(), s.port).into_connection_info()?;
                let mut redis = info.redis_settings().clone();
                if let Some(user) = &settings.username {
                    redis = redis.set_username(user);
                }
                if let Some(pw) = sentinel_password {
                    redis = redis.set_password(pw);
                }
                Client::open(info.set_redis_settings(redis))
            })
            .collect::<RedisResult<Vec<Client>>>()?;
        Ok(SentinelShared {
            sentinel: tokio::sync::Mutex::new(builder.build()?),
            sentinels: clients,
            master_name: master.to_owned(),
            current: RwLock::new(None),
            rediscovering: AtomicBool::new(false),
            response_timeout,
            db: i64::from(db),
            generation,
        })
    }

    fn current(&self) -> Option<Arc<Current>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn current_addr(&self) -> Arc<str> {
        self.current()
            .map(|c| c.addr.clone())
            .unwrap_or_else(|| Arc::from("unknown"))
    }

    async fn master_client(&self) -> RedisResult<Client> {
        match self.current() {
            Some(c) => Ok(c.client.clone()),
            None => Ok(self.discover().await?.client.clone()),
        }
    }

    /// Asks the sentinels for the master (which redis-rs checks answers `ROLE` as master)
    /// and switches the connection to it when it moved.
    async fn discover(&self) -> RedisResult<Arc<Current>> {
        let mut sentinel = self.sentinel.lock().await;
        let client = tokio::time::timeout(DISCOVERY_TIMEOUT, sentinel.async_get_client())
            .await
            .map_err(|_| {
                RedisError::from((ErrorKind::Io, "sentinel master discovery timed out"))
            })??;
        drop(sentinel);
        let addr: Arc<str> = addr_of(&client).into();
        let previous = self.current();
        if let Some(p) = &previous
            && p.addr == addr
        {
            return Ok(p.clone());
        }
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(self.response_timeout),
        )?;
        let next = Arc::new(Current { addr, client, conn });
        if let Ok(mut current) = self.current.write() {
            *current = Some(next.clone());
        }
        if let (Some(p), Some(generation)) = (previous, &self.generation) {
            generation.fetch_add(1, Ordering::Relaxed);
            crate::metrics::redis_topology_change("sentinel");
            tracing::warn!(from = %p.addr, to = %next.addr, "redis sentinel master changed");
        }
        Ok(next)
    }

    /// The current master's connection (discovered first when unknown).
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        match self.current() {
            Some(c) => Ok(c.conn.clone()),
            None => Ok(self.discover().await?.conn.clone()),
        }
    }

    /// After a command: an error that may mean the master moved starts a rediscovery in the
    /// background, so that the next command goes to the new master. The failed command is not
    /// retried here: a write may have happened.
    fn check(self: Arc<Self>, error: Option<&RedisError>) {
        if error.is_some_and(may_mean_failover) && !self.rediscovering.swap(true, Ordering::AcqRel)
        {
            tokio::spawn(async move {
                if let Err(e) = self.discover().await {
                    tracing::debug!(error = %e, "redis sentinel master not found yet");
                }
                self.rediscovering.store(false, Ordering::Release);
            });
        }
    }
}

/// A connection error, a timeout, or an answer only a replica gives.
fn may_mean_failover(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// Every [`TOPOLOGY_POLL`], asks one sentinel `SENTINEL get-master-addr-by-name` over a kept
/// connection (cheap) and runs the full discovery (which connects to the master to check its
/// role) only when the answer differs from the current master, or none is known.
async fn watch_sentinel(shared: Weak<SentinelShared>) {
    let mut asked: Option<(usize, redis::aio::MultiplexedConnection)> = None;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let named = named_master(&s, &mut asked).await;
        let current = s.current().map(|c| c.addr.clone());
        let moved = match (&named, &current) {
            (Some(named), Some(current)) => **named != **current,
            (None, Some(_)) => false, // no sentinel answered: keep what works
            (_, None) => true,
        };
        if moved && let Err(e) = s.discover().await {
            tracing::debug!(error = %e, "redis sentinel master not found");
        }
        drop(s);
        tokio::time::sleep(TOPOLOGY_POLL).await;
    }
}

/// `host:port` of the master the first answering sentinel names (its connection kept in
/// `asked` for the next time).
async fn named_master(
    s: &SentinelShared,
    asked: &mut Option<(usize, redis::aio::MultiplexedConnection)>,
) -> Option<String> {
    let start = asked.as_ref().map(|(i, _)| *i).unwrap_or(0);
    for k in 0..s.sentinels.len() {
        let i = (start + k) % s.sentinels.len();
        let mut conn = match asked.take() {
            Some((j, c)) if j == i => c,
            _ => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(DISCOVERY_TIMEOUT));
                match s.sentinels[i]
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => c,
                    Err(_) => continue,
                }
            }
        };
        let reply: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&s.master_name)
            .query_async(&mut conn)
            .await;
        if let Ok(Some((host, port))) = reply {
            *asked = Some((i, conn));
            return Some(NodeAddr { host, port }.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &[&str]) -> RedisSettings {
        let mut args = vec!["fanout", "--api-key", "k", "--jwt-secret", "s"];
        args.extend(extra);
        crate::Config::try_from_args(args)
            .expect("config")
            .redis()
            .expect("redis settings")
    }

    #[tokio::test]
    async fn one_redis_is_its_own_only_master_with_the_credentials() {
        let s = settings(&[
            "--redis-url",
            "redis://:urlpw@127.0.0.1:1/3",
            "--redis-username",
            "u",
            "--redis-password",
            "p@:/",
        ]);
        // No I/O: nothing listens on port 1.
        let redis = Redis::new(&s).expect("handle");
        assert_eq!(redis.mode(), "single");
        let masters = redis.masters().await.expect("masters");
        assert_eq!(masters.len(), 1);
        assert_eq!(masters[0].addr, "127.0.0.1:1");
        assert_eq!(masters[0].slots, [(0, SLOTS - 1)]);
        let client = redis.client_for_key(b"any").await.expect("client");
        let info = client.get_connection_info().redis_settings();
        assert_eq!(info.username(), Some("u"));
        assert_eq!(info.password(), Some("p@:/"));
        assert_eq!(info.db(), 3);
        assert_eq!(redis.conn().get_db(), 3);
        // Not reachable: a command fails (fast), it does not hang.
        let mut conn = redis.conn();
        let res: RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
        assert!(res.is_err());
    }

    #[tokio::test]
    async fn cluster_and_sentinel_handles_are_built_without_io() {
        let redis = Redis::new(&settings(&[
            "--redis-cluster-nodes",
            "127.0.0.1:1,127.0.0.1:2",
        ]))
        .expect("cluster handle");
        assert_eq!(redis.mode(), "cluster");
        assert_eq!(redis.topology_generation(), 0);
        let redis = Redis::new(&settings(&[
            "--redis-sentinels",
            "127.0.0.1:1",
            "--redis-sentinel-master",
            "m",
        ]))
        .expect("sentinel handle");
        assert_eq!(redis.mode(), "sentinel");
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Values from Redis' own CLUSTER KEYSLOT.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"fanout:{chat:1}:h"), slot_of(b"chat:1"));
        assert!(slot_of(b"") < SLOTS);
        // An empty tag `{}` does not count: the whole key is hashed.
        assert_ne!(slot_of(b"x{}1"), slot_of(b"y{}1"));
    }

    #[test]
    fn the_metrics_label_comes_from_the_first_key() {
        let mut c = redis::cmd("SET");
        c.arg("k1").arg("v");
        assert_eq!(command_key(&c), Some(&b"k1"[..]));
        let mut c = redis::cmd("EVALSHA");
        c.arg("abc").arg(2).arg("k2").arg("k3").arg("x");
        assert_eq!(command_key(&c), Some(&b"k2"[..]));
        let mut c = redis::cmd("EVALSHA");
        c.arg("abc").arg(0).arg("x");
        assert_eq!(command_key(&c), None);
        let mut c = redis::cmd("XREAD");
        c.arg("COUNT").arg(1).arg("STREAMS").arg("s1").arg("0");
        assert_eq!(command_key(&c), Some(&b"s1"[..]));
        assert_eq!(command_key(&redis::cmd("PING")), None);
    }

    #[test]
    fn cluster_slots_replies_parse_and_bad_ones_are_errors() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7004),
            ]),
            Value::Array(vec![Value::Int(0), Value::Int(5460), node("", 7000)]),
        ]);
        let ranges = parse_cluster_slots(reply, "127.0.0.1").expect("parses");
        assert_eq!(&*ranges[0].addr, "10.0.0.2:7001");
        assert_eq!(&*ranges[1].addr, "127.0.0.1:7000");
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![
                Value::Int(0),
                Value::Int(99999),
                node("h", 1),
            ])]),
        ] {
            assert!(parse_cluster_slots(bad, "h").is_err());
        }
    }
}
