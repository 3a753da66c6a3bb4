//! Expiry detection from Redis keyspace notifications, on a dedicated pub/sub connection.
//!
//! Notifications are fire-and-forget: one sent while this node was disconnected is lost. That
//! is why [`super::sweep`] exists; this listener only makes the common case fast.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSub;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Presence;
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
    let result = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        super::store::enable_expiry_events(&mut conn).await
    }
    .await;
    if let Ok(Some(flags)) = &result {
        tracing::info!(%flags, "enabled keyspace notifications for presence expiry");
    }
    match result {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(error = %e,
                "presence expiry needs keyspace notifications: set `notify-keyspace-events Ex` \
                 on the Redis server (CONFIG SET is refused or failed); not ready until then");
            false
        }
    }
}

/// Runs until `cancel`: subscribes to `__keyevent@<db>__:expired` and claims every expired
/// presence key, each claim a task on `tasks` (at most [`MAX_CLAIMS_IN_FLIGHT`] at once).
/// Reconnects with backoff; the sweep covers whatever was missed meanwhile.
pub async fn run(
    client: redis::Client,
    presence: Presence,
    health: Arc<Health>,
    tasks: TaskTracker,
    cancel: CancellationToken,
) {
    let db = client.get_connection_info().redis_settings().db();
    let mut listener = Listener {
        channel: format!("__keyevent@{db}__:expired"),
        client,
        presence,
        health,
        claims: Bounded::new(tasks, MAX_CLAIMS_IN_FLIGHT),
        cancel: cancel.clone(),
    };
    run_reconnecting(&mut listener, Backoff::default(), &cancel).await;
}

/// The listener's state across resubscriptions.
struct Listener {
    client: redis::Client,
    channel: String,
    presence: Presence,
    health: Arc<Health>,
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
            let ok = ensure_notifications(&self.client).await;
            self.health.set_keyspace_ok(ok);
            if ok {
                break;
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
                self.health.set_keyspace_ok(false);
                tracing::warn!(error = %e, "keyspace listener cannot subscribe; retrying");
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
            if let Err(e) = presence.claim_expiry(&user).await {
                tracing::warn!(error = %e, "presence expiry claim failed; the sweep retries");
            }
        };
        self.claims.spawn(claim, &self.cancel).await;
    }
}
