//! Token expiry of connected sockets (docs/protocol.md §1, §8: `session:expiring` once when a
//! session has `SESSION_EXPIRY_NOTICE_SECS` left, `session:expired` within 2 s after
//! `exp + leeway`, `session:refresh` moving both): two ordered lists per node, swept by one
//! task. A timer task per socket did the same for ~500 bytes of every idle socket's memory (the
//! task and its cancellation token).

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

/// When each local socket's session expires and when it is told so in advance, soonest first.
pub struct Expiries {
    lists: Mutex<Lists>,
    leeway_secs: u64,
    notice_secs: u64,
}

#[derive(Default)]
struct Lists {
    /// (disconnect at, ms since the epoch; socket).
    expire: BTreeSet<(u64, Sid)>,
    /// (send `session:expiring` at, ms; socket; the session's `exp`, s).
    notify: BTreeSet<(u64, Sid, u64)>,
}

/// What the sweep found due.
#[derive(Debug, Default, PartialEq, Eq)]
struct Due {
    expired: Vec<Sid>,
    /// Sockets to warn, with their session's `exp` (s).
    expiring: Vec<(Sid, u64)>,
}

impl Expiries {
    /// Empty lists; sessions end `leeway_secs` after `exp`, and are warned `notice_secs` before.
    pub fn new(leeway_secs: u64, notice_secs: u64) -> Expiries {
        Expiries {
            lists: Mutex::default(),
            leeway_secs,
            notice_secs,
        }
    }

    fn deadline_ms(&self, identity: &Identity) -> u64 {
        identity
            .exp
            .saturating_add(self.leeway_secs)
            .saturating_mul(1000)
    }

    fn notice_entry(&self, identity: &Identity, sid: Sid) -> (u64, Sid, u64) {
        let at = identity
            .exp
            .saturating_sub(self.notice_secs)
            .saturating_mul(1000);
        (at, sid, identity.exp)
    }

    /// Watches socket `sid` of `identity`: a session whose notice moment has already passed is
    /// warned at the next sweep.
    pub fn watch(&self, identity: &Identity, sid: Sid) {
        let mut lists = self.lists();
        lists.expire.insert((self.deadline_ms(identity), sid));
        lists.notify.insert(self.notice_entry(identity, sid));
    }

    /// Stops watching socket `sid` (it disconnected). A socket gone before its connect handler
    /// watched it leaves its entries until their moment; the sweep then finds no socket.
    pub fn unwatch(&self, identity: &Identity, sid: Sid) {
        let mut lists = self.lists();
        lists.expire.remove(&(self.deadline_ms(identity), sid));
        lists.notify.remove(&self.notice_entry(identity, sid));
    }

    /// Moves socket `sid`'s session from `old` to `new` (a `session:refresh`): its expiry, and
    /// a fresh notice for the new session. `false` when the old session is no longer watched
    /// (it expired and is being disconnected): nothing changes then.
    pub fn extend(&self, old: &Identity, new: &Identity, sid: Sid) -> bool {
        let mut lists = self.lists();
        if !lists.expire.remove(&(self.deadline_ms(old), sid)) {
            return false;
        }
        lists.notify.remove(&self.notice_entry(old, sid));
        lists.expire.insert((self.deadline_ms(new), sid));
        lists.notify.insert(self.notice_entry(new, sid));
        true
    }

    /// Removes and returns what is due at `now_ms`.
    fn take_due(&self, now_ms: u64) -> Due {
        let mut lists = self.lists();
        let mut due = Due::default();
        while let Some(&(at, sid)) = lists.expire.first() {
            if at > now_ms {
                break;
            }
            lists.expire.pop_first();
            due.expired.push(sid);
        }
        while let Some(&(at, sid, exp)) = lists.notify.first() {
            if at > now_ms {
                break;
            }
            lists.notify.pop_first();
            // An expired socket gets `session:expired` alone.
            if !due.expired.contains(&sid) {
                due.expiring.push((sid, exp));
            }
        }
        due
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        // The lists stay consistent whatever a panicking holder was doing (single inserts and
        // removes), so a poisoned lock is still usable.
        self.lists
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Warns every local socket whose session is about to expire (`session:expiring`), tells every
/// one whose session expired (`session:expired`) and disconnects it; until `cancel` fires.
pub async fn run(io: SocketIo, expiries: std::sync::Arc<Expiries>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due = expiries.take_due(clock::now_ms());
        if due == Due::default() {
            continue;
        }
        // `io.of` is None once the namespace is closed (a node shutting down).
        let Some(ns) = io.of("/") else { return };
        for (sid, exp) in due.expiring {
            if let Some(s) = ns.get_socket(sid) {
                s.emit(
                    "session:expiring",
                    &json!({ "exp": exp, "timestamp": clock::now_iso() }),
                )
                .ok();
            }
        }
        for sid in due.expired {
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

    fn id(exp: u64) -> Identity {
        Identity {
            user_id: "u".into(),
            role_context_id: None,
            email: None,
            exp,
        }
    }

    #[test]
    fn only_the_due_sessions_are_taken_soonest_first() {
        // Leeway 1 s, notice 10 s.
        let e = Expiries::new(1, 10);
        let (a, b, c) = (Sid::new(), Sid::new(), Sid::new());
        e.watch(&id(30), a);
        e.watch(&id(15), b);
        e.watch(&id(20), c);
        e.unwatch(&id(20), c);
        assert_eq!(e.take_due(4_999), Due::default());
        assert_eq!(
            e.take_due(15_999),
            Due {
                expired: vec![],
                expiring: vec![(b, 15)]
            }
        );
        assert_eq!(
            e.take_due(20_000),
            Due {
                expired: vec![b],
                expiring: vec![(a, 30)]
            }
        );
        assert_eq!(e.take_due(31_000).expired, vec![a]);
        assert_eq!(e.take_due(u64::MAX), Due::default());
    }

    #[test]
    fn a_refresh_moves_the_expiry_and_warns_again() {
        let e = Expiries::new(0, 10);
        let s = Sid::new();
        e.watch(&id(20), s);
        assert_eq!(e.take_due(10_000).expiring, vec![(s, 20)]);
        assert!(e.extend(&id(20), &id(100), s));
        assert_eq!(e.take_due(20_000), Due::default());
        assert_eq!(e.take_due(90_000).expiring, vec![(s, 100)]);
        assert_eq!(e.take_due(100_000).expired, vec![s]);
        // Once expired, a refresh changes nothing.
        assert!(!e.extend(&id(100), &id(200), s));
        assert_eq!(e.take_due(u64::MAX), Due::default());
    }

    #[test]
    fn an_expired_socket_is_not_warned_too() {
        let e = Expiries::new(0, 10);
        let s = Sid::new();
        e.watch(&id(5), s);
        assert_eq!(
            e.take_due(6_000),
            Due {
                expired: vec![s],
                expiring: vec![]
            }
        );
    }
}
