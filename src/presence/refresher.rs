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
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let groups = sockets();
        let mut failed = false;
        for chunk in groups.chunks(CHUNK) {
            if let Err(e) = presence.refresh(chunk, report_ticks > 0).await {
                tracing::warn!(error = %e, "presence refresh failed; retrying next tick");
                failed = true;
                break;
            }
        }
        report_ticks = if failed {
            REPORT_TICKS
        } else {
            report_ticks.saturating_sub(1)
        };
    }
}
