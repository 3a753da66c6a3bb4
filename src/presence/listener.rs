//! Expiry detection from Redis keyspace notifications, on a dedicated pub/sub connection.
//!
//! Notifications are fire-and-forget: one sent while this node was disconnected is lost. That
//! is why [`super::sweep`] exists; this listener only makes the common case fast.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Presence;
use crate::health::Health;
use crate::redis::keys;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a node whose Redis lacks keyspace notifications checks again.
const RECHECK: Duration = Duration::from_secs(5);

/// Makes sure Redis sends expired-key events (`E` keyevent class and `x` expired events),
/// enabling them with CONFIG SET when allowed. Returns false (and logs what to set) otherwise.
pub async fn ensure_notifications(client: &redis::Client) -> bool {
    let result: redis::RedisResult<bool> = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (_, flags): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let has_event_class = flags.contains('E');
        let has_expired = flags.contains('x') || flags.contains('A');
        if has_event_class && has_expired {
            return Ok(true);
        }
        let wanted = format!("{flags}Ex");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async::<()>(&mut conn)
            .await?;
        tracing::info!(flags = %wanted, "enabled keyspace notifications for presence expiry");
        Ok(true)
    }
    .await;
    match result {
        Ok(ok) => ok,
        Err(e) => {
            tracing::error!(error = %e,
                "presence expiry needs keyspace notifications: set `notify-keyspace-events Ex` \
                 on the Redis server (CONFIG SET is refused or failed); not ready until then");
            false
        }
    }
}

/// Runs until `cancel`: subscribes to `__keyevent@<db>__:expired` and claims every expired
/// presence key. Reconnects with backoff; the sweep covers whatever was missed meanwhile.
pub async fn run(
    client: redis::Client,
    presence: Presence,
    health: Arc<Health>,
    cancel: CancellationToken,
) {
    let db = client.get_connection_info().redis_settings().db();
    let channel = format!("__keyevent@{db}__:expired");
    let mut backoff = BACKOFF_MIN;
    while !cancel.is_cancelled() {
        let ok = ensure_notifications(&client).await;
        health.set_keyspace_ok(ok);
        if !ok {
            // Not ready until the operator fixes Redis; look again every few seconds. The sweep
            // still turns expiries into offline events meanwhile.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(RECHECK) => {}
            }
            continue;
        }
        let pubsub = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let mut ps = tokio::select! {
            _ = cancel.cancelled() => break,
            r = pubsub => match r {
                Ok(ps) => ps,
                Err(e) => {
                    health.set_keyspace_ok(false);
                    tracing::warn!(error = %e, "keyspace listener cannot subscribe; retrying");
                    sleep_or_cancel(&mut backoff, &cancel).await;
                    continue;
                }
            },
        };
        backoff = BACKOFF_MIN;
        let mut stream = ps.on_message();
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = stream.next() => m,
            };
            let Some(msg) = msg else {
                tracing::warn!("keyspace listener lost redis; resubscribing");
                break;
            };
            crate::metrics::keyspace_notification();
            let Ok(key) = msg.get_payload::<String>() else {
                continue;
            };
            let Some(user) = keys::presence_user_id(&key) else {
                continue;
            };
            // Claims run concurrently so one slow claim does not delay the others; the script
            // makes sure exactly one claimant (here or on another node) wins.
            let presence = presence.clone();
            let user = user.to_owned();
            tokio::spawn(async move {
                if let Err(e) = presence.claim_expiry(&user).await {
                    tracing::warn!(error = %e, "presence expiry claim failed; the sweep retries");
                }
            });
        }
        sleep_or_cancel(&mut backoff, &cancel).await;
    }
}

async fn sleep_or_cancel(backoff: &mut Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}
