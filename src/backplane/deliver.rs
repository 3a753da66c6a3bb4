//! Applying backplane actions to this node's sockets (socketioxide's local adapter).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError, SocketIo};
use tokio_util::task::TaskTracker;

use super::Action;

/// Versions older than this are forgotten; a transition that late is implausible.
const VERSION_MEMORY: Duration = Duration::from_secs(600);
/// Above this many remembered users, forgotten entries are purged on insert.
const VERSION_PURGE_AT: usize = 100_000;

/// How long a presence catch-up may read before it gives up and is tried again (each of its
/// chunks is bounded by the command timeout; this bounds a catch-up of many users while a
/// master is down).
const CATCH_UP_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The last presence version this node showed, per (user, peer room): what decides whether a
/// transition is shown ([`PresenceVersions::accept`]), and what a catch-up after lost frames
/// compares Redis's versions with ([`PresenceVersions::catch_up`]). Shared by the deliverer
/// and the connect path, which records what `presence:bulk-online` showed.
#[derive(Default)]
pub struct PresenceVersions {
    inner: Mutex<Remembered>,
}

/// `user \0 room` → (version, when remembered), in two maps.
#[derive(Default)]
struct Remembered {
    /// Transitions shown to the room: the filter of every frame.
    shown: HashMap<String, (u64, Instant)>,
    /// The state `presence:bulk-online` showed a new socket of the room. Kept apart, so that
    /// it never hides a frame (a socket's snapshot says nothing of what the room's other
    /// sockets saw, and the protocol lets a transition race the snapshot): only a catch-up
    /// reads it.
    snapshots: HashMap<String, (u64, Instant)>,
}

impl PresenceVersions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        match self.inner.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a presence transition of `user` at `version` should be shown to the peer room
    /// `room`: not if this node showed a newer one there, nor if the last one shown there had
    /// the same parity (same state: the peers already show it). The version is remembered
    /// either way when it is newer. Kept per room because each peer room's frame carries its
    /// own copy.
    pub fn accept(&self, user: &str, room: &str, version: u64) -> bool {
        let key = format!("{user}\u{0}{room}");
        let mut r = self.lock();
        let decision = match r.shown.get(&key) {
            Some((last, _)) if *last >= version => return false,
            Some((last, _)) => (version - last) % 2 == 1,
            None => true,
        };
        remember(&mut r.shown, key, version);
        decision
    }

    /// Records that a new socket of `room` was shown `user` in the state of `version` by
    /// `presence:bulk-online`'s snapshot; an older version than one recorded is ignored.
    pub fn note_snapshot(&self, user: &str, room: &str, version: u64) {
        let key = format!("{user}\u{0}{room}");
        let mut r = self.lock();
        if r.snapshots
            .get(&key)
            .is_none_or(|(last, _)| *last < version)
        {
            remember(&mut r.snapshots, key, version);
        }
    }

    /// Whether a catch-up should show `room` the state of `user` at `version`: only when the
    /// room was shown an older version of the other kind, by a transition or by a snapshot
    /// (the newer of the two), and never when this node knows nothing of what the room saw.
    /// A version shown is remembered as a transition, so its frame, arriving late, is not
    /// shown again. Returns, when it is to be shown, what the room was shown before (by a
    /// transition, by a snapshot), for the log.
    pub fn catch_up(&self, user: &str, room: &str, version: u64) -> Option<CaughtUp> {
        let key = format!("{user}\u{0}{room}");
        let mut r = self.lock();
        let shown = r.shown.get(&key).map(|(v, _)| *v);
        let snapshot = r.snapshots.get(&key).map(|(v, _)| *v);
        let last = shown.max(snapshot)?;
        if last >= version {
            return None;
        }
        remember(&mut r.shown, key, version);
        ((version - last) % 2 == 1).then_some(CaughtUp { shown, snapshot })
    }

    /// Every (user, room) pair with a remembered version.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let r = self.lock();
        let keys: std::collections::HashSet<&String> =
            r.shown.keys().chain(r.snapshots.keys()).collect();
        keys.into_iter()
            .filter_map(|k| k.split_once('\u{0}'))
            .map(|(u, r)| (u.to_owned(), r.to_owned()))
            .collect()
    }
}

/// What a room had been shown of a user before a catch-up showed it a newer state.
#[derive(Debug, PartialEq, Eq)]
pub struct CaughtUp {
    /// The last transition shown.
    pub shown: Option<u64>,
    /// The last `presence:bulk-online` snapshot recorded.
    pub snapshot: Option<u64>,
}

fn remember(versions: &mut HashMap<String, (u64, Instant)>, key: String, version: u64) {
    let now = Instant::now();
    if versions.len() >= VERSION_PURGE_AT {
        versions.retain(|_, (_, at)| now.duration_since(*at) < VERSION_MEMORY);
    }
    versions.insert(key, (version, now));
}

/// What a node asks after frames may have been lost (its subscriber reconnected, its queue
/// overflowed, a cluster master failed over): the current presence of users it showed to
/// peer rooms, as versioned [`Action::Presence`]s. Implemented by the presence service, which
/// reads the versions from Redis; the deliverer shows only what the rooms have not seen.
pub trait PresenceCatchUp: Send + Sync {
    /// One action per user of `pairs` (user, peer room) whose state Redis knows, addressed to
    /// that user's rooms among `pairs`.
    fn actions(&self, pairs: Vec<(String, String)>) -> BoxFuture<'_, CatchUpRead>;
}

/// What a presence catch-up read found.
#[derive(Default)]
pub struct CatchUpRead {
    /// One [`Action::Presence`] per user read.
    pub actions: Vec<Action>,
    /// Users whose version could not be read (a master failing over), or every (user, room)
    /// pair asked when the whole read timed out: above zero, the catch-up is tried again.
    pub unread: usize,
}

/// The node-local side of delivery: the socket.io handle and what this node needs to remember
/// across entries (the last presence version applied per user).
///
/// Slow consumers: every socket has a bounded send buffer (`SOCKET_BUFFER_PACKETS`), and an
/// emit never waits for it, so one slow socket never slows the others. When a buffer is full,
/// other events are dropped for that socket, and a socket that cannot take a chat message is
/// disconnected — it reconnects and recovers with `chat:history`, instead of silently holding a
/// gap it cannot see. (Over websocket the buffer drains into tungstenite's unbounded write
/// buffer, so a client that stops reading is ended by `TCP_USER_TIMEOUT_MS` instead.)
pub struct Deliverer {
    io: SocketIo,
    node_id: String,
    versions: Arc<PresenceVersions>,
    /// Reads the presence a catch-up shows ([`Deliverer::presence_catch_up_read`]).
    catch_up: Option<Arc<dyn PresenceCatchUp>>,
    tasks: TaskTracker,
    /// Sockets marked [`FellBehind`] whose disconnect is still being retried. While it is
    /// zero (nearly always) a chat message skips looking up the mark on every socket of the
    /// room (socketioxide's extensions: a lock and a map per socket); a disconnected socket
    /// refuses emits by itself.
    slow_pending: Arc<AtomicUsize>,
    /// The Admin UI, when enabled: told of deliveries while it watches.
    admin: Option<crate::admin::Admin>,
    /// The node's interest registry: a `Join` subscribes the rooms it brings.
    interest: Option<Arc<super::interest::Interest>>,
}

/// Counts one socket in [`Deliverer::slow_pending`] for as long as it lives.
struct SlowPending(Arc<AtomicUsize>);

impl SlowPending {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        SlowPending(Arc::clone(count))
    }
}

impl Drop for SlowPending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a socket that cannot take an event must be disconnected. Other events are simply
/// not queued for a socket whose buffer is full (typing indicators and presence events are safe
/// to lose: the next one, or `presence:query`, corrects the view). socketioxide's `volatile()`
/// is not the tool for that: it keeps only the latest packet per socket even when nothing is
/// full, which would merge an online and an offline in quick succession into one.
fn is_essential(event: &str) -> bool {
    event == "chat:message"
}

/// Marks a socket that is being disconnected for falling behind: it gets nothing more.
#[derive(Clone)]
struct FellBehind;

/// How often the disconnect of a slow socket is retried: its `error` event and DISCONNECT packet
/// need free slots in the buffer. It is retried for as long as the socket lives (a client that
/// stopped reading altogether is ended by `TCP_USER_TIMEOUT_MS`), up to a safety bound: a
/// socket marked as fallen behind gets no chat messages, so it must not linger connected.
const SLOW_DISCONNECT_RETRY: Duration = Duration::from_millis(100);
const SLOW_DISCONNECT_ATTEMPTS: u32 = 6_000;

/// Marks a slow socket that has been sent the `error` event saying why it is disconnected.
#[derive(Clone)]
struct ToldWhy;

/// Tells a slow socket why it is disconnected (an `error` event: the client sees it before the
/// DISCONNECT), then disconnects it; false while its buffer has no room for both.
fn try_disconnect_slow(s: &SocketRef) -> bool {
    if s.extensions.get::<ToldWhy>().is_none() {
        let why = serde_json::json!({
            "event": "chat:message",
            "code": "RATE_LIMITED",
            "message": "disconnected: this socket fell behind the messages sent to it; \
                        reconnect and recover with chat:history",
        });
        if s.emit("error", &why).is_err() {
            return false;
        }
        s.extensions.insert(ToldWhy);
    }
    s.clone().disconnect().is_ok()
}

impl Deliverer {
    /// A deliverer for this node's sockets; background retries run on `tasks`.
    pub fn new(io: SocketIo, node_id: String, tasks: TaskTracker) -> Self {
        Deliverer {
            io,
            node_id,
            versions: Arc::default(),
            catch_up: None,
            tasks,
            slow_pending: Arc::new(AtomicUsize::new(0)),
            admin: None,
            interest: None,
        }
    }

    /// Subscribes the rooms a `Join` brings through `interest`.
    pub fn with_interest(mut self, interest: Arc<super::interest::Interest>) -> Self {
        self.interest = Some(interest);
        self
    }

    /// Shares the presence versions with the connect path (which records what
    /// `presence:bulk-online` showed), and catches up presence through `catch_up`.
    pub fn with_presence(
        mut self,
        versions: Arc<PresenceVersions>,
        catch_up: Arc<dyn PresenceCatchUp>,
    ) -> Self {
        self.versions = versions;
        self.catch_up = Some(catch_up);
        self
    }

    /// The read of a presence catch-up, after frames may have been lost: for every (user, peer
    /// room) this node showed a state to and that still has a socket here, Redis's current
    /// version, as actions for [`Deliverer::apply_presence_catch_up`], read after `delay`.
    /// `None` when there is nothing to catch up. The future owns what it needs, so the
    /// subscriber loop polls it beside its frames instead of waiting on Redis: during a
    /// failover the read of a dead master's users lasts a command timeout, and the loop must go
    /// on delivering.
    pub fn presence_catch_up_read(
        &self,
        delay: Duration,
    ) -> Option<BoxFuture<'static, CatchUpRead>> {
        let catch_up = self.catch_up.clone()?;
        let ns = self.io.of("/")?;
        let pairs: Vec<(String, String)> = self
            .versions
            .pairs()
            .into_iter()
            .filter(|(_, room)| !ns.clone().to(room.clone()).sockets().is_empty())
            .collect();
        if pairs.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            tokio::time::sleep(delay).await;
            let asked = pairs.len();
            match tokio::time::timeout(CATCH_UP_READ_TIMEOUT, catch_up.actions(pairs)).await {
                Ok(read) => read,
                Err(_) => CatchUpRead {
                    actions: Vec::new(),
                    unread: asked,
                },
            }
        }))
    }

    /// Shows the rooms what a catch-up read found they have not seen: a version newer than the
    /// one each room was shown, and of the other kind ([`PresenceVersions::catch_up`], so a
    /// transition whose frame did arrive, before or after the read, is shown once). Runs on the
    /// subscriber loop, like every delivery, so a room's transitions reach it in the order
    /// they were decided here.
    pub async fn apply_presence_catch_up(&self, actions: Vec<Action>) {
        let Some(ns) = self.io.of("/") else { return };
        let mut shown = 0u64;
        for action in actions {
            let Action::Presence {
                user,
                version,
                rooms,
                event,
                data,
            } = &action
            else {
                continue;
            };
            for room in rooms {
                if let Some(before) = self.versions.catch_up(user, room, *version) {
                    shown += 1;
                    tracing::debug!(
                        user = %user,
                        room = %room,
                        version,
                        event = %event,
                        shown_before = ?before.shown,
                        snapshot_before = ?before.snapshot,
                        "presence transition missed while frames were lost, shown"
                    );
                    self.emit(ns.clone().to(room.clone()), event, data).await;
                }
            }
        }
        crate::metrics::presence_caught_up(shown);
        if shown > 0 {
            // One line per catch-up: after a failover it can show thousands of transitions
            // (each is logged at debug, with what the room had been shown before).
            tracing::info!(
                shown,
                "presence transitions missed while frames were lost, shown"
            );
        }
    }

    /// Reports every delivery to the Admin UI while one watches (`event_sent`).
    pub fn with_admin(mut self, admin: Option<crate::admin::Admin>) -> Self {
        self.admin = admin;
        self
    }

    /// Applies `actions` in order. `origin` is the publishing node, used for `except_sid`.
    pub async fn apply(&self, origin: &str, actions: &[Action]) {
        for action in actions.iter().filter(|a| !a.selects_nobody()) {
            // `io.to(..)` panics once the namespace is closed (a draining node whose reader
            // has not stopped yet); `io.of("/")` says so instead.
            let Some(ns) = self.io.of("/") else { return };
            match action {
                Action::Emit {
                    rooms,
                    except,
                    except_sid,
                    event,
                    data,
                } => {
                    let sender = except_sid
                        .as_deref()
                        .filter(|_| origin == self.node_id)
                        .and_then(|sid| Sid::from_str(sid).ok())
                        .and_then(|sid| ns.get_socket(sid));
                    // `socket.to(..)` is a broadcast that skips that socket; `io.to(..)` skips none.
                    let op = match &sender {
                        Some(s) => s.to(rooms.clone()),
                        None => ns.to(rooms.clone()),
                    };
                    self.emit(op.except(except.clone()), event, data).await;
                }
                Action::Presence {
                    user,
                    version,
                    rooms,
                    event,
                    data,
                } => {
                    // Per peer room: each room's frame carries its own copy of the transition.
                    for room in rooms {
                        if self.versions.accept(user, room, *version) {
                            self.emit(ns.clone().to(room.clone()), event, data).await;
                        }
                    }
                }
                Action::Disconnect { of } => {
                    if let Err(e) = ns.to(of.clone()).disconnect().await {
                        tracing::debug!(error = %e, "local disconnect incomplete");
                    }
                }
                Action::Join { of, join } => {
                    let nobody_here = ns.clone().to(of.clone()).sockets().is_empty();
                    let local = async {
                        if let Err(e) = ns.to(of.clone()).join(join.clone()).await {
                            tracing::debug!(error = %e, "local join failed");
                        }
                    };
                    // Only when a socket of `of` is here: otherwise nothing joins, and
                    // subscribing would follow rooms without local sockets.
                    match &self.interest {
                        Some(interest) if !nobody_here => {
                            // Not waiting: this runs on the subscriber loop, which confirms.
                            if let Err(e) = interest.join(join, local, false).await {
                                tracing::debug!(error = %e, "joined without a known position");
                            }
                        }
                        _ => local.await,
                    }
                }
                Action::Leave { of, leave } => {
                    if let Err(e) = ns.to(of.clone()).leave(leave.clone()).await {
                        tracing::debug!(error = %e, "local leave failed");
                    }
                }
            }
        }
    }

    async fn emit(
        &self,
        op: socketioxide::operators::BroadcastOperators,
        event: &str,
        data: &RawValue,
    ) {
        let watcher = self.admin.as_ref().filter(|a| a.is_watched());
        let result = if is_essential(event) {
            // One by one, so the socket that could not take it is known.
            let check_marks = self.slow_pending.load(Ordering::SeqCst) > 0;
            for s in op.sockets() {
                if check_marks && s.extensions.get::<FellBehind>().is_some() {
                    continue;
                }
                match s.emit(event, data) {
                    Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                        self.disconnect_slow(s)
                    }
                    Ok(()) => {
                        if let Some(admin) = watcher {
                            admin.event_sent(s.id.as_str(), event, data);
                        }
                    }
                    Err(_) => {}
                }
            }
            Ok(())
        } else if let Some(admin) = watcher {
            // One by one while an Admin UI watches, so each delivery can be reported; a socket
            // that cannot take a non-essential event misses it, as in a broadcast.
            for s in op.sockets() {
                if s.emit(event, data).is_ok() {
                    admin.event_sent(s.id.as_str(), event, data);
                }
            }
            Ok(())
        } else {
            op.emit(event, data).await
        };
        crate::metrics::local_emit(event, &result);
        if let Err(e) = result {
            // Only per-socket failures (a full send buffer, a closing socket) land here.
            tracing::debug!(event = %event, error = %e, "local delivery incomplete");
        }
    }

    fn disconnect_slow(&self, s: SocketRef) {
        crate::metrics::slow_consumer();
        tracing::info!(sid = %s.id, "disconnecting a socket that cannot keep up");
        // Counted before the mark is set, so no delivery sees the mark uncounted.
        let pending = SlowPending::new(&self.slow_pending);
        s.extensions.insert(FellBehind);
        if try_disconnect_slow(&s) {
            return;
        }
        self.tasks.spawn(async move {
            let _pending = pending;
            for _ in 0..SLOW_DISCONNECT_ATTEMPTS {
                tokio::time::sleep(SLOW_DISCONNECT_RETRY).await;
                if !s.connected() || try_disconnect_slow(&s) {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presence_versions_never_show_the_same_state_twice() {
        let (_layer, io) = SocketIo::new_layer();
        let d = Deliverer::new(io, "n".into(), TaskTracker::new());
        let v = &d.versions;
        assert!(v.accept("u", "user:p", 11)); // online
        assert!(!v.accept("u", "user:p", 11)); // same again
        assert!(v.accept("u", "user:q", 11)); // the same, for another peer room
        assert!(!v.accept("u", "user:p", 10)); // older offline arrives late
        assert!(!v.accept("u", "user:p", 13)); // online again, but 12 never arrived
        assert!(v.accept("u", "user:p", 14)); // offline
        assert!(v.accept("v", "user:p", 4)); // another user, first seen
    }

    #[test]
    fn a_catch_up_shows_only_what_a_room_has_not_seen_and_a_snapshot_hides_no_frame() {
        let v = PresenceVersions::default();
        // bulk-online showed u online at 11; its online frame of 11 may still come, and is
        // shown (the protocol's one duplicate at connect time).
        v.note_snapshot("u", "user:p", 11);
        v.note_snapshot("u", "user:p", 9); // an older snapshot changes nothing
        assert_eq!(v.catch_up("u", "user:p", 11), None, "the room saw 11");
        assert!(v.accept("u", "user:p", 11));
        // Frames lost: Redis is at 12 (offline), then the frame of 12 arrives late.
        assert_eq!(
            v.catch_up("u", "user:p", 12),
            Some(CaughtUp {
                shown: Some(11),
                snapshot: Some(11)
            })
        );
        assert!(!v.accept("u", "user:p", 12), "shown once");
        assert_eq!(v.catch_up("u", "user:p", 12), None);
        // 13 and 14 both lost: offline again, nothing to show.
        assert_eq!(v.catch_up("u", "user:p", 14), None);
        // A peer shown offline before it ever had a version (recorded as 0): its first
        // online is caught up.
        v.note_snapshot("n", "user:p", 0);
        assert_eq!(
            v.catch_up("n", "user:p", 7),
            Some(CaughtUp {
                shown: None,
                snapshot: Some(0)
            })
        );
        // A room this node knows nothing about gets nothing from a catch-up.
        assert_eq!(v.catch_up("w", "user:p", 3), None);
        let mut pairs = v.pairs();
        pairs.sort();
        assert_eq!(
            pairs,
            vec![
                ("n".to_owned(), "user:p".to_owned()),
                ("u".to_owned(), "user:p".to_owned())
            ]
        );
    }
}
