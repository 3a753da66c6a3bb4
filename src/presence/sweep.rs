//! The backstop for lost keyspace notifications: a sorted set of presence deadlines, swept by
//! one node at a time under a short lease.
//!
//! Every connect and refresh records `now + TTL` for the user in one of 16 deadline buckets
//! (`presence:deadlines:{pd<n>}`, each on its own slot, so the index spreads over the masters of a
//! Redis Cluster instead of making one hot key). Each
//! second every node tries to take the lease (`SET NX PX 1500`, left to expire, so one sweep
//! runs every 1.5–2 s cluster-wide whatever the number of nodes); the holder claims every user
//! whose deadline passed. A claim on a user who is still online only moves the deadline to the key's
//! real expiry; a claim on an expired key emits the one offline transition (unless a
//! notification listener already did — the script decides). So a missed notification still
//! yields exactly one `presence:offline` (reason `expired`) about a second after the key expired.
//! A claim on a user already offline whose deadline is still there publishes that offline again
//! ([`super::Claimer::Sweep`]): the claimer that won failed or died before its publish, or its
//! `ZREM` is about to follow it, in which case peers drop the repeat by its version.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Claimer, Presence};
use crate::clock;

/// How often each node tries to sweep.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Users claimed per deadline bucket and sweep at most (the rest wait for the next second).
const BATCH: usize = 64;

/// Runs until `cancel`.
pub async fn run(presence: Presence, node_id: String, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep_once(&presence, &node_id).await {
            tracing::debug!(error = %e, "presence sweep failed; next second retries");
        }
    }
}

/// One sweep, if this node gets the lease. Returns how many users were examined.
pub async fn sweep_once(presence: &Presence, node_id: &str) -> Result<usize, super::PresenceError> {
    let store = &presence.store;
    let lease_ms = (INTERVAL.as_millis() as u64) * 3 / 2;
    if !store.take_sweep_lease(node_id, lease_ms).await? {
        return Ok(0);
    }
    let now = clock::now_ms();
    let due = store.due(now, BATCH).await?;
    crate::metrics::sweep_claims(due.len());
    for user in &due {
        // Still online: its key lives on; look again when it would expire. (A key that is
        // gone had its deadline removed by the claim.)
        if let Some(pttl) = presence.claim_expiry(user, Claimer::Sweep).await? {
            store
                .set_deadlines(&[user.as_str()], now + pttl.max(0) as u64)
                .await?;
        }
    }
    Ok(due.len())
}
