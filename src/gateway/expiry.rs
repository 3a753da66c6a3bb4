//! Token expiry of connected sockets (docs/protocol.md §1, §7: `session:expired` within 2 s after
//! `exp + leeway`): one ordered list per node, swept by one task. A timer task per socket did
//! the same for ~500 bytes of every idle socket's memory (the task and its cancellation token).

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use socketioxide::SocketIo;
use socketioxide::socket::Sid;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::clock;

/// How often the list is swept; well inside the protocol's 2 s.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// When each local socket's session expires (ms since the epoch), soonest first.
#[derive(Default)]
pub struct Expiries(Mutex<BTreeSet<(u64, Sid)>>);

impl Expiries {
    /// The moment a socket of `identity` must be told its session expired.
    pub fn deadline_ms(identity: &Identity, leeway_secs: u64) -> u64 {
        identity
            .exp
            .saturating_add(leeway_secs)
            .saturating_mul(1000)
    }

    /// Watches socket `sid` until `at_ms`.
    pub fn add(&self, at_ms: u64, sid: Sid) {
        self.set().insert((at_ms, sid));
    }

    /// Stops watching socket `sid` (it disconnected). A socket gone before its connect handler
    /// added it leaves its entry until `at_ms`; the sweep then finds no socket and drops it.
    pub fn remove(&self, at_ms: u64, sid: Sid) {
        self.set().remove(&(at_ms, sid));
    }

    /// Removes and returns the sockets whose moment has come.
    fn take_due(&self, now_ms: u64) -> Vec<Sid> {
        let mut set = self.set();
        let mut due = Vec::new();
        while let Some(&(at, sid)) = set.first() {
            if at > now_ms {
                break;
            }
            set.pop_first();
            due.push(sid);
        }
        due
    }

    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<(u64, Sid)>> {
        // The set stays consistent whatever a panicking holder was doing (single inserts and
        // removes), so a poisoned lock is still usable.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Tells every local socket whose session expired (`session:expired`), then disconnects it;
/// until `cancel` fires.
pub async fn run(io: SocketIo, expiries: std::sync::Arc<Expiries>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = expiries.take_due(clock::now_ms());
        if due.is_empty() {
            continue;
        }
        // `io.of` is None once the namespace is closed (a node shutting down).
        let Some(ns) = io.of("/") else { return };
        for sid in due {
            if let Some(s) = ns.get_socket(sid) {
                s.emit("session:expired", &json!({ "timestamp": clock::now_iso() }))
                    .ok();
                s.disconnect().ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_due_sessions_are_taken_soonest_first() {
        let e = Expiries::default();
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        e.add(3_000, a);
        e.add(1_000, b);
        e.add(2_000, c);
        e.remove(2_000, c);
        assert_eq!(e.take_due(999), Vec::<Sid>::new());
        assert_eq!(e.take_due(2_500), vec![b]);
        assert_eq!(e.take_due(3_000), vec![a]);
        assert_eq!(e.take_due(u64::MAX), Vec::<Sid>::new());
    }
}
