//! The refresher: keeps this node's live sockets registered, so an idle but connected client
//! never expires whether or not it sends `presence:ping`. One pipeline per tick for the whole
//! node (per master on Redis Cluster). It is given the node's sockets as a snapshot function,
//! so the presence domain needs no Socket.IO.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{LocalSocket, Presence};

/// A user and its sockets on this node.
type UserSockets = (String, Vec<LocalSocket>);

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
        let users = sockets();
        // One pipeline per master (Redis Cluster), all at once: a master failing over fails
        // its own users' refresh for the command timeout, not everyone's.
        let mut by_master: HashMap<Option<Arc<str>>, Vec<UserSockets>> = HashMap::new();
        for user in users {
            by_master
                .entry(presence.master_of(&user.0))
                .or_default()
                .push(user);
        }
        let report = report_ticks > 0;
        let refreshes = by_master.values().map(|users| {
            let presence = &presence;
            async move {
                // Every chunk, even after one failed: a refresh also records deadlines on every
                // master, so one master's outage fails each chunk after its keys were written.
                let mut first = None;
                for chunk in users.chunks(CHUNK) {
                    if let Err(e) = presence.refresh(chunk, report).await {
                        first.get_or_insert(e);
                    }
                }
                first.map_or(Ok(()), Err)
            }
        });
        let results = futures_util::future::join_all(refreshes).await;
        let groups = results.len();
        let errors: Vec<super::PresenceError> =
            results.into_iter().filter_map(Result::err).collect();
        let failed = !errors.is_empty();
        if let Some(e) = errors.first() {
            failures += 1;
            if failures % 20 == 1 {
                tracing::warn!(
                    error = %e,
                    failures,
                    failed_groups = errors.len(),
                    groups,
                    "presence refresh failed; retrying"
                );
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
