//! The subscriber loop: one RESP3 pub/sub connection per node, on which it subscribes to its
//! own canary channel and to every room channel [`Interest`] registered, and applies each frame
//! that arrives to the local sockets — chat messages in offset order, gaps filled from the log.
//!
//! On every (re)connect it subscribes everything registered and syncs every followed chat
//! (reads its offset and fills what was published while it was away); a full push queue
//! (frames dropped, [`QUEUE`]) triggers the same sync. Frames are applied one at a time, so a
//! gap fill delays what follows it instead of letting it overtake.
//!
//! On Redis Cluster ([`SubConn::Sharded`]) the connection is redis-rs's cluster connection,
//! which holds one connection per master, `SSUBSCRIBE`s each room's shard channel on the
//! master of its slot, and subscribes again by itself when one of them drops or a slot moves.
//! A master that dies loses what was published to it meanwhile, and the subscriptions follow
//! the promoted replica only after redis-rs sees it; so a lost master connection, a failed
//! probe or a topology change does not close the whole subscriber (every other master keeps
//! delivering) but schedules syncs of every followed chat ([`RESYNC_AFTER`]), which deliver
//! from the chats' logs whatever the outage swallowed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::BoxFuture;
use redis::RedisResult;
use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::canary::{self, Canary};
use super::deliver::{CatchUpRead, Deliverer};
use super::frame::Frame;
use super::interest::{BATCH, Control, Interest, chat_of_room};
use super::order::{ChatOrder, Seq};
use super::{Action, Envelope};
use crate::health::Health;
use crate::redis::keys;
use crate::tasks::Backoff;

/// Frames queued between the connection and this loop; beyond, frames are dropped and every
/// followed chat is synced (chat messages are filled from the log, other events are lost).
pub const QUEUE: usize = 100_000;

/// How often the subscriber connection is probed with a `PING` (answered within the command
/// timeout, or the connection is replaced).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// On Redis Cluster, after a lost master connection, a failed probe or a topology change: when
/// every followed chat is synced again (the subscriptions move to the new owner in the
/// background, within about a second of redis-rs seeing it, and the last sync covers what
/// was published to the old owner before it died).
pub const RESYNC_AFTER: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(1000),
    std::time::Duration::from_millis(3000),
    std::time::Duration::from_millis(10_000),
];

/// Probes in a row without an answer after which a Redis Cluster subscriber is reopened: more
/// than a master's failover takes to show (its subscriptions then move by themselves), few
/// enough that a wedged connection costs seconds, not a presence TTL.
pub const PROBES_BEFORE_REOPEN: u32 = 3;

/// A resubscription of every room that has not finished by then counts as failed (each
/// `SSUBSCRIBE` is bounded by redis-rs's own timeout; this bounds them all).
pub const RESUBSCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How soon a sync follows a gap fill or an offset read that failed.
pub const RETRY_FILL_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// The subscriber connection, shared by the subscriber loop (which opens it) and the interest
/// manager (which subscribes rooms on it): pub/sub channels on one Redis or the Sentinel
/// master, shard channels (`SSUBSCRIBE`, each on its slot's master) on Redis Cluster.
#[derive(Clone)]
pub enum SubConn {
    /// One connection, `SUBSCRIBE`.
    Plain(MultiplexedConnection),
    /// redis-rs's cluster connection, `SSUBSCRIBE` per channel.
    Sharded(crate::redis::ClusterSubscriber),
}

impl SubConn {
    /// Subscribes `channels` (at most [`BATCH`] at once).
    pub async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            SubConn::Plain(c) => c.subscribe(channels).await,
            SubConn::Sharded(c) => c.each(channels, true).await,
        }
    }

    /// Unsubscribes `channels`.
    pub async fn unsubscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            SubConn::Plain(c) => c.unsubscribe(channels).await,
            SubConn::Sharded(c) => c.each(channels, false).await,
        }
    }

    /// `PING` on the connection (Cluster: through the cluster connection), within
    /// [`crate::redis::COMMAND_TIMEOUT`].
    async fn ping(&mut self) -> RedisResult<()> {
        let ping = redis::cmd("PING");
        let answer = match self {
            SubConn::Plain(c) => {
                tokio::time::timeout(crate::redis::COMMAND_TIMEOUT, ping.query_async::<()>(c)).await
            }
            SubConn::Sharded(c) => {
                tokio::time::timeout(crate::redis::COMMAND_TIMEOUT, c.ping()).await
            }
        };
        answer.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "subscriber probe timed out",
            )))
        })
    }
}

/// The subscriber connection's `CLIENT SETNAME`: `fanout-sub:<node id>`, so operators (and
/// tests) find it in `CLIENT LIST`.
pub fn client_name(node_id: &str) -> String {
    format!("fanout-sub:{node_id}")
}

/// Runs until `cancel`: keeps the subscriber connection open (publishing it on `link` for the
/// interest manager) and applies what arrives.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    redis: crate::redis::Redis,
    interest: Arc<Interest>,
    deliverer: Arc<Deliverer>,
    canary: Arc<Canary>,
    health: Arc<Health>,
    link: watch::Sender<Option<SubConn>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let node_channel = keys::node_channel(canary.node_id());
    let mut loop_state = Loop {
        redis,
        interest,
        deliverer,
        canary,
        node_channel,
    };
    while !cancel.is_cancelled() {
        let (tx, mut rx) = mpsc::channel::<PushInfo>(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        let push = move |info: PushInfo| -> Result<(), ()> {
            match tx.try_send(info) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    flag.store(true, Ordering::SeqCst);
                    crate::metrics::backplane_overflow();
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            }
        };
        let conn = match loop_state.open(push).await {
            Ok(conn) => conn,
            Err(e) => {
                health.set_reader_running(false);
                crate::metrics::redis_error("subscribe", &e);
                tracing::warn!(error = %e, "subscriber cannot connect; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        let sharded = matches!(conn, SubConn::Sharded(_));
        let probe = conn.clone();
        link.send_replace(Some(conn));
        health.set_reader_running(true);
        // Everything published while no connection was subscribed is in the chats' logs, and
        // presence in Redis's versions.
        let mut order = ChatOrder::new(loop_state.interest.clone(), loop_state.deliverer.clone());
        order.sync(loop_state.interest.followed_chats());
        let mut catch_up = CatchUp::default();
        catch_up.want(&loop_state.deliverer);
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Cluster: syncs still to come after a disruption, and the topology last seen.
        let mut resyncs: Vec<Resync> = Vec::new();
        let mut generation = loop_state.redis.topology_generation();
        let mut probe_failures = 0u32;
        let mut probing: Option<BoxFuture<'static, RedisResult<()>>> = None;
        // A resubscription in flight, and whether another one is due after it.
        let mut resubscribing: Option<BoxFuture<'static, RedisResult<usize>>> = None;
        let mut resubscribe_again = false;
        loop {
            if overflow.swap(false, Ordering::SeqCst) {
                order.sync(loop_state.interest.followed_chats());
                catch_up.want(&loop_state.deliverer);
            }
            let now = tokio::time::Instant::now();
            if order.take_resync_wanted() {
                let soon = now + RETRY_FILL_AFTER;
                if resyncs.first().is_none_or(|r| r.at > soon) {
                    resyncs.insert(
                        0,
                        Resync {
                            at: soon,
                            resubscribe: false,
                        },
                    );
                }
            }
            if resyncs.first().is_some_and(|r| r.at <= now) {
                let resubscribe = resyncs.iter().any(|r| r.at <= now && r.resubscribe);
                resyncs.retain(|r| r.at > now);
                // After a disruption of the cluster (not after a failed gap fill, whose
                // subscriptions are fine): redis-rs may have replaced a master's connection
                // without its subscriptions (seen after a failover, on masters that did not
                // fail); subscribing again is a no-op where they are still in place. The
                // sync follows once the subscriptions are in place (what is published after
                // them arrives as frames).
                if !resubscribe {
                    order.sync(loop_state.interest.followed_chats());
                } else if resubscribing.is_none() {
                    resubscribing = Some(loop_state.resubscription(&probe));
                } else {
                    resubscribe_again = true;
                }
            }
            let next_resync = resyncs.first().map(|r| r.at);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = async {
                    match next_resync {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                read = in_flight(&mut catch_up.read) => catch_up.finished(read, &loop_state.deliverer).await,
                read = order.next_read() => order.finished(read).await,
                done = in_flight(&mut resubscribing) => {
                    resubscribing = None;
                    if let Err(e) = done {
                        crate::metrics::redis_error("subscribe", &e);
                        tracing::warn!(
                            error = %e,
                            "resubscription failed; retried at the next resync"
                        );
                        schedule_resyncs(&mut resyncs);
                        resubscribe_again = false;
                    } else if std::mem::take(&mut resubscribe_again) {
                        resubscribing = Some(loop_state.resubscription(&probe));
                    }
                    order.sync(loop_state.interest.followed_chats());
                    catch_up.want(&loop_state.deliverer);
                }
                push = rx.recv() => match push {
                    // One master's connection of the cluster: redis-rs reconnects it and
                    // subscribes again; what it missed comes from the logs.
                    Some(p) if p.kind == PushKind::Disconnection && sharded => {
                        schedule_resyncs(&mut resyncs);
                    }
                    Some(p) if p.kind == PushKind::Disconnection => break,
                    Some(p) => loop_state.handle(p, &mut order).await,
                    None => break,
                },
                c = control.recv() => match c {
                    Some(Control::Sync(chats)) => order.sync(chats),
                    None => break,
                },
                _ = ping.tick() => {
                    // A connection cut without a reset (a partition) stays silent forever:
                    // only a command that goes unanswered tells. The probe runs beside the
                    // loop: on a cluster it asks every master, and one failing over would
                    // hold the frames of all the others for the command timeout.
                    if probing.is_none() {
                        let mut conn = probe.clone();
                        probing = Some(Box::pin(async move { conn.ping().await }));
                    }
                    let seen = loop_state.redis.topology_generation();
                    if seen != generation {
                        generation = seen;
                        schedule_resyncs(&mut resyncs);
                    }
                }
                answer = in_flight(&mut probing) => {
                    probing = None;
                    if let Err(e) = answer {
                        crate::metrics::redis_error("subscriber_ping", &e);
                        probe_failures += 1;
                        // One connection: it is gone. A cluster connection: one master may be
                        // failing over (the others still deliver), but a few probes in a row
                        // unanswered mean redis-rs's connection wedged (seen on the shared
                        // connection after a master's kill under load): open a new one.
                        if !sharded || probe_failures >= PROBES_BEFORE_REOPEN {
                            tracing::warn!(
                                failures = probe_failures,
                                "subscriber probe unanswered; reopening the subscriber"
                            );
                            break;
                        }
                    } else if std::mem::take(&mut probe_failures) > 0 {
                        schedule_resyncs(&mut resyncs);
                    }
                }
            }
        }
        link.send_replace(None);
        health.set_reader_running(false);
        if !cancel.is_cancelled() {
            tracing::warn!("subscriber lost redis; reconnecting");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
    health.set_reader_running(false);
    tracing::debug!("subscriber stopped");
}

/// After a presence catch-up that could not read every user (a master failing over), the next
/// one comes this much later, at most [`CATCH_UP_RETRIES`] times in a row.
const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
/// See [`CATCH_UP_RETRY`]: a minute of retries, beyond the longest failover seen (the
/// cluster's own resyncs and the next reconnect start again after that).
const CATCH_UP_RETRIES: u32 = 30;

/// The presence catch-up of the loop: its read in flight (polled beside the frames, so a slow
/// Redis does not hold deliveries), whether another was asked for meanwhile (it starts when
/// this one is applied: what it reads is newer), and the retries of reads that missed users
/// since the last one asked for (so a read in flight while it is above 0 is a delayed retry).
#[derive(Default)]
struct CatchUp {
    read: Option<BoxFuture<'static, CatchUpRead>>,
    again: bool,
    retries: u32,
}

impl CatchUp {
    /// Starts a catch-up read, or asks for one after the read in flight. A delayed retry in
    /// flight is replaced, not waited for: it only reads, so dropping it changes nothing, and a
    /// read asked for now (Redis back after a failover, most often) is what the retry waited
    /// for; waiting would cost up to [`CATCH_UP_RETRY`] and a second read.
    fn want(&mut self, deliverer: &Deliverer) {
        if self.read.is_some() && self.retries == 0 {
            self.again = true;
        } else {
            self.read = deliverer.presence_catch_up_read(std::time::Duration::ZERO);
        }
        self.retries = 0;
    }

    /// Applies a finished read, then starts what comes next: a read asked for meanwhile, or a
    /// retry of users it could not read.
    async fn finished(&mut self, read: CatchUpRead, deliverer: &Deliverer) {
        self.read = None;
        let unread = read.unread;
        deliverer.apply_presence_catch_up(read.actions).await;
        if std::mem::take(&mut self.again) {
            self.read = deliverer.presence_catch_up_read(std::time::Duration::ZERO);
        } else if unread > 0 && self.retries < CATCH_UP_RETRIES {
            self.retries += 1;
            if self.retries == 1 || self.retries == CATCH_UP_RETRIES {
                tracing::warn!(
                    unread,
                    retries = self.retries,
                    "presence catch-up could not read some users' versions; retrying"
                );
            }
            self.read = deliverer.presence_catch_up_read(CATCH_UP_RETRY);
        }
    }
}

/// The output of the future in `slot`; pending forever while there is none (a `select!`
/// branch for work the loop runs beside its frames). The caller empties the slot once it is
/// done: a finished future must not be polled again.
async fn in_flight<T>(slot: &mut Option<BoxFuture<'static, T>>) -> T {
    match slot.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Plans the syncs of [`RESYNC_AFTER`] from now (replacing any still to come).
fn schedule_resyncs(resyncs: &mut Vec<Resync>) {
    let now = tokio::time::Instant::now();
    resyncs.clear();
    resyncs.extend(RESYNC_AFTER.iter().map(|d| Resync {
        at: now + *d,
        resubscribe: true,
    }));
}

/// A planned sync of every followed chat, after a disruption of the cluster (which subscribes
/// every room again first) or after a gap fill that could not read the log (which does not).
struct Resync {
    at: tokio::time::Instant,
    resubscribe: bool,
}

struct Loop {
    redis: crate::redis::Redis,
    interest: Arc<Interest>,
    deliverer: Arc<Deliverer>,
    canary: Arc<Canary>,
    node_channel: String,
}

impl Loop {
    /// Opens the connection, names it (one Redis, Sentinel), subscribes the canary channel and
    /// every registered room.
    async fn open(&self, push: impl redis::aio::AsyncPushSender + Clone) -> RedisResult<SubConn> {
        let conn = match self.redis.cluster_subscriber(push.clone()).await {
            Some(sharded) => SubConn::Sharded(sharded?),
            None => {
                // The one Redis, or the master the sentinels name now.
                let client = self
                    .redis
                    .client_for_key(self.node_channel.as_bytes())
                    .await?;
                let mut conn = crate::redis::pubsub_connection(&client, push).await?;
                redis::cmd("CLIENT")
                    .arg("SETNAME")
                    .arg(client_name(self.canary.node_id()))
                    .query_async::<()>(&mut conn)
                    .await?;
                SubConn::Plain(conn)
            }
        };
        let rooms = self.subscribe_all(&conn).await?;
        crate::metrics::subscription_changes("subscribe", rooms);
        crate::metrics::subscriptions(rooms);
        Ok(conn)
    }

    /// Subscribes the canary channel and every registered room on `conn`; returns the rooms.
    /// On a cluster it also names the connections again (a reconnected one lost its name).
    fn subscribe_all(
        &self,
        conn: &SubConn,
    ) -> impl Future<Output = RedisResult<usize>> + Send + 'static {
        subscribe_all(
            self.interest.clone(),
            self.node_channel.clone(),
            client_name(self.canary.node_id()),
            conn.clone(),
        )
    }

    /// [`Loop::subscribe_all`] as a future of its own, which the loop polls beside its frames
    /// (a master failing over would hold them), bounded by [`RESUBSCRIBE_TIMEOUT`].
    fn resubscription(&self, conn: &SubConn) -> BoxFuture<'static, RedisResult<usize>> {
        Box::pin(crate::redis::within(
            RESUBSCRIBE_TIMEOUT,
            self.subscribe_all(conn),
        ))
    }

    /// Applies one push: a canary of this node, or a frame of a room (a chat message through
    /// `order`).
    async fn handle(&mut self, push: PushInfo, order: &mut ChatOrder) {
        if push.kind != PushKind::Message && push.kind != PushKind::SMessage {
            return;
        }
        let mut data = push.data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
            return;
        };
        let (Value::BulkString(channel), Value::BulkString(payload)) = (channel, payload) else {
            return;
        };
        if channel == self.node_channel.as_bytes() {
            if let Some(token) = std::str::from_utf8(&payload)
                .ok()
                .and_then(canary::parse_token)
            {
                self.canary.returned(0, token);
            }
            return;
        }
        let frame: Frame = match serde_json::from_slice(&payload) {
            Ok(f) => f,
            // A newer node may publish an action this build does not know: skip it.
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame; skipped");
                return;
            }
        };
        if let Some(seq) = chat_message_seq(&frame.actions) {
            order.frame(seq, frame).await;
        } else {
            self.deliverer.apply(&frame.origin, &frame.actions).await;
            crate::metrics::entry_applied(frame.at_ms);
        }
    }
}

/// See [`Loop::subscribe_all`].
async fn subscribe_all(
    interest: Arc<Interest>,
    node_channel: String,
    name: String,
    mut conn: SubConn,
) -> RedisResult<usize> {
    if let SubConn::Sharded(c) = &mut conn
        && let Err(e) = c.set_name(&name).await
    {
        tracing::debug!(error = %e, "subscriber connections not named");
    }
    conn.subscribe(std::slice::from_ref(&node_channel)).await?;
    let rooms = interest.rooms();
    let channels: Vec<String> = rooms.iter().map(|r| keys::room_channel(r)).collect();
    for chunk in channels.chunks(BATCH) {
        conn.subscribe(chunk).await?;
    }
    Ok(rooms.len())
}

/// The chat position of a frame that is one `chat:message` to its chat's room.
fn chat_message_seq(actions: &Envelope) -> Option<Seq> {
    let [
        Action::Emit {
            rooms, event, data, ..
        },
    ] = actions.as_slice()
    else {
        return None;
    };
    if event != "chat:message" || rooms.len() != 1 {
        return None;
    }
    let seq: Seq = serde_json::from_str(data.get()).ok()?;
    (chat_of_room(&rooms[0]) == Some(seq.chat_id.as_str())).then_some(seq)
}
