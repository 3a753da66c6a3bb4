//! The delivery canary: proof, not assumption, that this node delivers.
//!
//! Every `CANARY_INTERVAL_MS` the node publishes a token to its own channel
//! ([`crate::redis::keys::node_channel`]) — the same command, from the same connection, real
//! frames take — and its subscriber connection, subscribed to that channel like to any room,
//! hands it back to [`Canary::returned`], which records the round trip. No other node
//! subscribes to it. (On Redis Cluster each subscriber connection is one lane; one Redis has
//! one.)
//!
//! A lane whose canary has not come back for `CANARY_TIMEOUT_SECS` makes the node not
//! delivering: `/readyz` answers 503 with `delivery: false` until the next canary returns, so
//! the node recovers by itself. This catches what the subscriber's own flag cannot: a
//! connection that stays open but receives nothing of what is published (a write path refused,
//! a stuck subscriber, a partition between the node's two connections), as well as Redis being
//! away.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Backplane;

/// Canaries remembered per shard while they are in flight; older ones are forgotten (a reader
/// that comes back after a long outage still returns the newest, which is what counts).
const IN_FLIGHT: usize = 64;

/// One shard's canary state.
#[derive(Debug)]
struct Shard {
    /// (token, sent at), oldest first.
    in_flight: VecDeque<(u64, Instant)>,
    /// When a canary of this shard last came back (the start, before the first one).
    last_success: Instant,
}

/// The canary state of one node: what is in flight, and when each shard last delivered.
#[derive(Debug)]
pub struct Canary {
    node_id: String,
    timeout: Duration,
    shards: Mutex<Vec<Shard>>,
    next_token: std::sync::atomic::AtomicU64,
}

impl Canary {
    /// A canary for `shards` shards, not delivering once a shard is silent for `timeout`. The
    /// start counts as a success: a node gets `timeout` to see its first canary back.
    pub fn new(node_id: &str, shards: u16, timeout: Duration) -> Canary {
        let now = Instant::now();
        let shard = || Shard {
            in_flight: VecDeque::new(),
            last_success: now,
        };
        Canary {
            node_id: node_id.to_owned(),
            timeout,
            shards: Mutex::new((0..shards).map(|_| shard()).collect()),
            next_token: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The node whose canaries these are (stream field `n` of its entries).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Shard>> {
        // A panic while holding the lock cannot leave the state inconsistent (plain values).
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that canary `token` was appended to `shard`.
    fn sent(&self, shard: u16, token: u64, at: Instant) {
        if let Some(s) = self.lock().get_mut(usize::from(shard)) {
            if s.in_flight.len() >= IN_FLIGHT {
                s.in_flight.pop_front();
            }
            s.in_flight.push_back((token, at));
        }
    }

    /// The reader saw this node's canary `token` on `shard`: the shard delivers. Returns the
    /// round trip when the token was still remembered.
    pub fn returned(&self, shard: usize, token: u64) -> Option<Duration> {
        let now = Instant::now();
        let rtt = {
            let mut shards = self.lock();
            let s = shards.get_mut(shard)?;
            s.last_success = now;
            // Tokens grow and one shard is read in order: anything older was lost or skipped.
            let mut rtt = None;
            while let Some(&(t, at)) = s.in_flight.front() {
                if t > token {
                    break;
                }
                s.in_flight.pop_front();
                if t == token {
                    rtt = Some(now.duration_since(at));
                }
            }
            rtt
        };
        if let Some(rtt) = rtt {
            crate::metrics::canary_round_trip(shard, rtt);
        }
        crate::metrics::canary_success_age(shard, Duration::ZERO);
        rtt
    }

    /// How long ago each shard's canary last came back, index = shard.
    pub fn ages(&self) -> Vec<Duration> {
        let now = Instant::now();
        self.lock()
            .iter()
            .map(|s| now.duration_since(s.last_success))
            .collect()
    }

    /// Whether every shard's canary came back within the timeout (`/readyz` field `delivery`).
    pub fn delivering(&self) -> bool {
        self.ages().iter().all(|age| *age <= self.timeout)
    }
}

/// Parses stream field `c` of a canary entry.
pub fn parse_token(raw: &str) -> Option<u64> {
    raw.parse().ok()
}

/// Sends a canary each `interval` until `cancel`, and keeps the age gauges current. The first
/// one waits for the subscriber connection: one published before it subscribed is lost.
pub async fn run(
    backplane: Backplane,
    canary: std::sync::Arc<Canary>,
    health: std::sync::Arc<crate::health::Health>,
    interval: Duration,
    cancel: CancellationToken,
) {
    while !health.reader_running() {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (shard, age) in canary.ages().into_iter().enumerate() {
            crate::metrics::canary_success_age(shard, age);
        }
        let token = canary
            .next_token
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Recorded before the publish: the subscriber may see it before the reply arrives.
        canary.sent(0, token, Instant::now());
        if let Err(e) = backplane.publish_canary(token).await {
            // Redis away: the canary does not come back, and readiness says so in time.
            tracing::debug!(error = %e, "canary not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_canary_gives_its_round_trip_and_older_ones_are_forgotten() {
        let c = Canary::new("n", 2, Duration::from_secs(10));
        let t0 = Instant::now();
        c.sent(0, 1, t0);
        c.sent(0, 2, t0);
        c.sent(1, 3, t0);
        assert!(c.returned(0, 2).is_some());
        assert_eq!(
            c.lock()[0].in_flight.len(),
            0,
            "token 1 was lost: forgotten"
        );
        assert_eq!(
            c.returned(0, 1),
            None,
            "unknown now: no round trip, still a success"
        );
        assert!(c.returned(5, 1).is_none(), "no such shard");
        assert!(c.delivering());
    }

    #[test]
    fn a_silent_shard_makes_the_node_not_delivering_until_its_canary_returns() {
        let c = Canary::new("n", 2, Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(30));
        c.returned(0, 1);
        assert!(!c.delivering(), "shard 1 silent");
        c.returned(1, 1);
        assert!(c.delivering());
    }

    #[test]
    fn in_flight_canaries_are_bounded() {
        let c = Canary::new("n", 1, Duration::from_secs(1));
        for t in 0..(IN_FLIGHT as u64 + 10) {
            c.sent(0, t, Instant::now());
        }
        assert_eq!(c.lock()[0].in_flight.len(), IN_FLIGHT);
        assert_eq!(parse_token("17"), Some(17));
        assert_eq!(parse_token("x"), None);
    }
}
