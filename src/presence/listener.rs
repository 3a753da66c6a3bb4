//! Expiry detection from Redis keyspace notifications, on a dedicated pub/sub connection.
//!
//! Notifications are fire-and-forget: one sent while this node was disconnected is lost. That
//! is why [`super::sweep`] exists; this listener only makes the common case fast.
//!
//! Redis sends a keyspace event only on the server where the key expired: on Redis Cluster
//! that is the master of the user's slot, so [`run`] keeps one listener per master, and
//! follows the topology (a promoted replica gets a listener, a demoted or removed master
//! loses its own). The node is ready for presence only while every master sends the events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Claimer, Presence};
use crate::health::Health;
use crate::redis::keys;
use crate::tasks::{Backoff, BlockingReader, Bounded, run_reconnecting};

/// Most expiry claims in flight at once. Each is one script call on the shared connection; 64
/// keep its pipeline busy, and since Redis runs scripts one at a time more would only queue.
/// The bound keeps an expiry storm (a node's worth of users expiring together) from spawning a
/// task per key. At the bound the listener waits for a claim to finish (see `handle`).
pub const MAX_CLAIMS_IN_FLIGHT: usize = 64;
/// How often a node whose Redis lacks keyspace notifications checks again.
const RECHECK: Duration = Duration::from_secs(5);

/// Makes sure Redis sends expired-key events (`E` keyevent class and `x` expired events),
/// enabling them with CONFIG SET when allowed. Returns false (and logs what to set) otherwise.
pub async fn ensure_notifications(client: &redis::Client) -> bool {
    notifications(client).await == Some(true)
}

/// Like [`ensure_notifications`], `None` when the server could not be asked (unreachable):
/// that says nothing about its settings.
async fn notifications(client: &redis::Client) -> Option<bool> {
    let result = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        super::store::enable_expiry_events(&mut conn).await
    }
    .await;
    match result {
        Ok(flags) => {
            if let Some(flags) = flags {
                tracing::info!(%flags, "enabled keyspace notifications for presence expiry");
            }
            Some(true)
        }
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => None,
        Err(e) => {
            tracing::error!(error = %e,
                "presence expiry needs keyspace notifications: set `notify-keyspace-events Ex` \
                 on the Redis server (CONFIG SET is refused or failed); not ready until then");
            Some(false)
        }
    }
}

/// Runs until `cancel`: keeps one listener on every master ([`listen`]), looking at the
/// masters every [`crate::redis::conn::TOPOLOGY_POLL`]. Claims of all of them share one bound
/// ([`MAX_CLAIMS_IN_FLIGHT`]).
pub async fn run(
    redis: crate::redis::Redis,
    presence: Presence,
    health: Arc<Health>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let status = Status {
        masters: Arc::new(Mutex::new(HashMap::new())),
        health,
    };
    let claims = Bounded::new(tasks.clone(), MAX_CLAIMS_IN_FLIGHT);
    let mut running: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        match redis.masters().await {
            Ok(masters) => {
                running.retain(|addr, stop| {
                    let keep = masters.iter().any(|m| &m.addr == addr);
                    if !keep {
                        tracing::info!(master = %addr, "keyspace listener stopped: no longer a master");
                        stop.cancel();
                        status.forget(addr);
                    }
                    keep
                });
                for m in masters {
                    if running.contains_key(&m.addr) {
                        continue;
                    }
                    let stop = cancel.child_token();
                    status.set(&m.addr, None);
                    tasks.spawn(listen(
                        m.client,
                        m.addr.clone(),
                        presence.clone(),
                        status.clone(),
                        claims.clone(),
                        stop.clone(),
                    ));
                    running.insert(m.addr, stop);
                }
            }
            Err(e) => {
                crate::metrics::redis_error("keyspace_masters", &e);
                tracing::debug!(error = %e, "masters not read; the listeners keep theirs");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(crate::redis::conn::TOPOLOGY_POLL) => {}
        }
    }
    status.health.set_keyspace_ok(false);
}

/// Whether each master sends the expiry events (`None`: not known yet). The node's `keyspace`
/// readiness: at least one master known to send them, none known not to. A master that cannot
/// be reached (dying, or not yet reached) does not count either way: its keys' expiries wait
/// for its listener or the sweep, and a failover must not make every node unready.
#[derive(Clone)]
struct Status {
    masters: Arc<Mutex<HashMap<String, Option<bool>>>>,
    health: Arc<Health>,
}

impl Status {
    fn set(&self, addr: &str, ok: Option<bool>) {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        if ok.is_some() || !masters.contains_key(addr) {
            masters.insert(addr.to_owned(), ok);
        }
        self.publish(&masters);
    }

    fn forget(&self, addr: &str) {
        let mut masters = self.masters.lock().unwrap_or_else(|p| p.into_inner());
        masters.remove(addr);
        self.publish(&masters);
    }

    fn publish(&self, masters: &HashMap<String, Option<bool>>) {
        let ok = masters.values().any(|&ok| ok == Some(true))
            && masters.values().all(|&ok| ok != Some(false));
        self.health.set_keyspace_ok(ok);
    }
}

/// One master's listener until `cancel`: subscribes to `__keyevent@<db>__:expired` and claims
/// every expired presence key, each claim a task (at most [`MAX_CLAIMS_IN_FLIGHT`] at once
/// over all masters). Reconnects with backoff; the sweep covers whatever was missed meanwhile.
async fn listen(
    client: redis::Client,
    addr: String,
    presence: Presence,
    status: Status,
    claims: Bounded,
    cancel: CancellationToken,
) {
    let db = client.get_connection_info().redis_settings().db();
    let mut listener = Listener {
        channel: format!("__keyevent@{db}__:expired"),
        client,
        addr,
        presence,
        status,
        claims,
        cancel: cancel.clone(),
    };
    run_reconnecting(&mut listener, Backoff::default(), &cancel).await;
}

/// One master's listener state across resubscriptions.
struct Listener {
    client: redis::Client,
    addr: String,
    channel: String,
    presence: Presence,
    status: Status,
    claims: Bounded,
    cancel: CancellationToken,
}

impl BlockingReader for Listener {
    type Conn = PubSub;
    type Batch = redis::Msg;
    // SUBSCRIBE is confirmed by Redis, so a subscription is as good as a read: a quiet channel
    // must not leave the next resubscription at a long delay.
    const CONNECT_RESETS_BACKOFF: bool = true;

    async fn connect(&mut self) -> Option<PubSub> {
        loop {
            let ok = notifications(&self.client).await;
            self.status.set(&self.addr, ok);
            match ok {
                Some(true) => break,
                // Unreachable: the reconnect's backoff, not the long recheck.
                None => return None,
                Some(false) => {}
            }
            // Not ready until the operator fixes Redis; look again every few seconds. The sweep
            // still turns expiries into offline events meanwhile.
            tokio::select! {
                _ = self.cancel.cancelled() => return None,
                _ = tokio::time::sleep(RECHECK) => {}
            }
        }
        let pubsub = async {
            let mut ps = self.client.get_async_pubsub().await?;
            ps.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match pubsub.await {
            Ok(ps) => Some(ps),
            Err(e) => {
                tracing::warn!(error = %e, master = %self.addr, "keyspace listener cannot subscribe; retrying");
                None
            }
        }
    }

    async fn read(&mut self, ps: &mut PubSub) -> Option<redis::Msg> {
        let msg = ps.on_message().next().await;
        if msg.is_none() {
            tracing::warn!("keyspace listener lost redis; resubscribing");
        }
        msg
    }

    async fn handle(&mut self, msg: redis::Msg) {
        crate::metrics::keyspace_notification();
        let Ok(key) = msg.get_payload::<String>() else {
            return;
        };
        let Some(user) = keys::presence_user_id(&key) else {
            return;
        };
        // Claims run concurrently so one slow claim does not delay the others; the script
        // makes sure exactly one claimant (here or on another node) wins. At the bound, the
        // listener waits for a claim to finish before it takes the next notification, which
        // waits meanwhile in the subscription's queue. One dropped because the node stops
        // while waiting is claimed by the other nodes' listeners or by the sweep.
        let presence = self.presence.clone();
        let user = user.to_owned();
        let claim = async move {
            if let Err(e) = presence.claim_expiry(&user, Claimer::Listener).await {
                tracing::warn!(error = %e, "presence expiry claim failed; the sweep retries");
            }
        };
        self.claims.spawn(claim, &self.cancel).await;
    }
}
