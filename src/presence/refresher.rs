//! The refresher: keeps this node's live sockets registered, so an idle but connected client
//! never expires whether or not it sends `presence:ping`. One pipeline per tick for the whole
//! node. It is given the node's sockets as a snapshot function, so the presence domain needs
//! no Socket.IO.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{LocalSocket, Presence};

/// Users refreshed per pipeline.
const CHUNK: usize = 1000;
/// Successful refreshes that still report online versions after a failed one: a lost pipeline
/// runs when the link heals, before or around the first of them.
const REPORT_TICKS: u32 = 3;

/// After a failed refresh, the next attempt comes this soon instead of a period later. Keys are
/// refreshed every TTL/3 and expire a TTL after the last success, so two failed ticks in a row
/// (a master's failover: ~6 s of timeouts on a Cluster) put the third exactly at the expiry,
/// and the users of that master went offline and online again (seen in chaos_failover).
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// Refreshes every socket `sockets()` returns each TTL/3 (at least every 500 ms), until
/// `cancel`.
pub async fn run(
    sockets: impl Fn() -> Vec<(String, Vec<LocalSocket>)>,
    presence: Presence,
    cancel: CancellationToken,
) {
    let period = (presence.ttl() / 3).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    presence.load_scripts().await;
    // Set when a refresh failed: its pipeline may still run in Redis (a reply lost to a
    // timeout, the link healing later, possibly on a connection the client already dropped)
    // and bring users online unseen, so the next few refreshes report every online user's
    // version for publishing (see presence_refresh.lua); peers drop what they already applied.
    let mut report_ticks = 0u32;
    // Failed attempts in a row: logged at the first and every 20th (Redis down for long means
    // four attempts a second).
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let groups = sockets();
        let mut failed = false;
        for chunk in groups.chunks(CHUNK) {
            if let Err(e) = presence.refresh(chunk, report_ticks > 0).await {
                failures += 1;
                if failures % 20 == 1 {
                    tracing::warn!(error = %e, failures, "presence refresh failed; retrying");
                }
                failed = true;
                break;
            }
        }
        report_ticks = if failed {
            tick.reset_after(RETRY_AFTER.min(period));
            REPORT_TICKS
        } else {
            if std::mem::take(&mut failures) > 0 {
                tracing::info!("presence refresh succeeded again");
            }
            report_ticks.saturating_sub(1)
        };
    }
}
