//! The refresher: keeps this node's live sockets registered, so an idle but connected client
//! never expires whether or not it sends `presence:ping`. One pipeline per tick for the whole
//! node. It is given the node's sockets as a snapshot function, so the presence domain needs
//! no Socket.IO.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{LocalSocket, Presence};

/// Users refreshed per pipeline.
const CHUNK: usize = 1000;

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
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let groups = sockets();
        for chunk in groups.chunks(CHUNK) {
            if let Err(e) = presence.refresh(chunk).await {
                tracing::warn!(error = %e, "presence refresh failed; retrying next tick");
                break;
            }
        }
    }
}
