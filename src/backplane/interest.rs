//! Which rooms this node subscribes to, and where each subscribed chat's delivery stands.
//!
//! A node subscribes to a room's channel while it has a local socket in the room. Sockets join
//! rooms through [`Interest::join`] (the handshake, `chat:join`, a membership change applied by
//! [`super::deliver`]): the first local socket of a room registers it and asks the
//! [`manager`] to subscribe. Leaving is not tracked one by one: every [`SWEEP_INTERVAL`] the
//! manager compares the registered rooms with the rooms socketioxide's local adapter holds, and
//! unsubscribes a room once it has had no local socket for `ROOM_UNSUBSCRIBE_DELAY_MS` (a socket
//! that reconnects at once causes no churn). The same sweep subscribes any local room that was
//! joined without [`Interest::join`] (the Admin UI's join), so the two sets cannot drift apart.
//!
//! Subscriptions go out in batches of at most [`BATCH`] channels, at most
//! `SUBSCRIBE_COMMANDS_PER_SEC` commands a second: a reconnect storm of 20 000 sockets costs
//! Redis a few dozen `SUBSCRIBE` commands, not 20 000.
//!
//! Chats: before the first local socket joins a chat's room, [`Interest::join`] reads the
//! chat's position (epoch and last offset, [`Position`]). The socket joins locally; then the
//! subscription is made and the subscriber syncs the chat (reads its offset again and fills
//! from the log what was sent in between), so nothing sent after the socket joined is missed,
//! whether it arrives by the channel or only in the log.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use socketioxide::SocketIo;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::chat::Chats;
use crate::redis::keys;

/// How often local rooms are compared with the subscriptions.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Most channels in one `SUBSCRIBE`/`UNSUBSCRIBE`.
pub const BATCH: usize = 1000;
/// How long [`Interest::join`] waits for a subscription to be confirmed when asked to.
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(3);
/// How long a joiner waits for another joiner's read of the same chat's position.
const POSITION_WAIT: Duration = Duration::from_secs(3);

/// Where delivery of one chat stands on this node: its sequence's epoch (`None`: the chat had
/// no message when this node started following it) and the last offset delivered (or known
/// to precede every local socket's join).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Epoch of the chat's sequence.
    pub epoch: Option<String>,
    /// Last offset delivered.
    pub last: u64,
}

/// Why [`Interest::join`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InterestError {
    /// Redis did not answer the position read.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The subscription was not confirmed in time (Redis away or the subscriber reconnecting).
    #[error("subscription not confirmed within {0:?}")]
    NotConfirmed(Duration),
}

/// One registered room.
struct Room {
    /// True once the room's position (for a chat) is known: later joiners wait for it.
    ready: watch::Receiver<bool>,
    /// Since when the room has had no local socket (`None`: it has one, or was just joined).
    idle_since: Option<Instant>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<String, Room>,
    positions: HashMap<String, Position>,
}

/// A request to the manager: subscribe to these rooms, tell `done` when confirmed.
struct Request {
    rooms: Vec<String>,
    done: Option<oneshot::Sender<bool>>,
}

/// What the subscriber loop must do besides applying frames.
pub enum Control {
    /// These chats were just subscribed: read their offsets and fill what was missed.
    Sync(Vec<String>),
}

/// The node's interest registry, shared by the handlers, the deliverer, the manager and the
/// subscriber loop.
pub struct Interest {
    io: OnceLock<SocketIo>,
    chats: Chats,
    state: Mutex<State>,
    requests: mpsc::UnboundedSender<Request>,
    requests_rx: Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    unsubscribe_after: Duration,
    commands_per_sec: u32,
}

/// The chat id of a chat room name.
pub fn chat_of_room(room: &str) -> Option<&str> {
    room.strip_prefix("chat:")
}

impl Interest {
    /// A registry of the node's local rooms ([`Interest::set_io`] says where they are); a room is
    /// unsubscribed `unsubscribe_after` after its last local socket left; at most
    /// `commands_per_sec` subscription commands a second.
    pub fn new(chats: Chats, unsubscribe_after: Duration, commands_per_sec: u32) -> Arc<Interest> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Interest {
            io: OnceLock::new(),
            chats,
            state: Mutex::new(State::default()),
            requests: tx,
            requests_rx: Mutex::new(Some(rx)),
            unsubscribe_after,
            commands_per_sec: commands_per_sec.max(1),
        })
    }

    /// The socket.io instance whose local rooms the sweep compares (it is built after the
    /// handlers, which hold this registry).
    pub fn set_io(&self, io: SocketIo) {
        let _ = self.io.set(io);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain maps: a panic elsewhere cannot leave them half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chat service (the subscriber reads positions and gaps through it).
    pub fn chats(&self) -> &Chats {
        &self.chats
    }

    /// Every registered room (what a new subscriber connection subscribes to).
    pub fn rooms(&self) -> Vec<String> {
        self.lock().rooms.keys().cloned().collect()
    }

    /// Whether `room` is registered.
    pub fn has_room(&self, room: &str) -> bool {
        self.lock().rooms.contains_key(room)
    }

    /// The position of `chat_id`, if this node follows it.
    pub fn position(&self, chat_id: &str) -> Option<Position> {
        self.lock().positions.get(chat_id).cloned()
    }

    /// Records that `chat_id` was delivered up to `pos`, if the chat is still followed (a
    /// frame may arrive after its room was unsubscribed).
    pub fn set_position(&self, chat_id: &str, pos: Position) {
        let mut st = self.lock();
        if st.rooms.contains_key(&format!("chat:{chat_id}")) {
            st.positions.insert(chat_id.to_owned(), pos);
        }
    }

    /// Every followed chat id.
    pub fn followed_chats(&self) -> Vec<String> {
        self.lock().positions.keys().cloned().collect()
    }

    /// Joins `rooms` through `local_join` (the socketioxide join of one socket or of a room
    /// selection), subscribing this node to the rooms it did not follow yet: their chat
    /// positions are read first, then `local_join` runs, then the subscription is requested.
    /// With `wait`, returns once Redis confirmed it; without (the subscriber's own deliveries,
    /// which must not wait for themselves), at once.
    ///
    /// When Redis cannot be read the local join still happens (membership says the sockets
    /// belong there) and the rooms are subscribed without a known position: the first message
    /// sets it.
    pub async fn join<F>(
        &self,
        rooms: &[String],
        local_join: F,
        wait: bool,
    ) -> Result<(), InterestError>
    where
        F: Future<Output = ()>,
    {
        let mut new: Vec<(String, watch::Sender<bool>)> = Vec::new();
        let mut others_reading: Vec<watch::Receiver<bool>> = Vec::new();
        {
            let mut st = self.lock();
            for room in rooms {
                match st.rooms.get_mut(room) {
                    Some(r) => {
                        r.idle_since = None;
                        if !*r.ready.borrow() {
                            others_reading.push(r.ready.clone());
                        }
                    }
                    None => {
                        let (tx, rx) = watch::channel(false);
                        st.rooms.insert(
                            room.clone(),
                            Room {
                                ready: rx,
                                idle_since: None,
                            },
                        );
                        new.push((room.clone(), tx));
                    }
                }
            }
        }
        let chat_ids: Vec<String> = new
            .iter()
            .filter_map(|(r, _)| chat_of_room(r).map(str::to_owned))
            .collect();
        let mut result = Ok(());
        if !chat_ids.is_empty() {
            match self.chats.positions(&chat_ids).await {
                Ok(found) => {
                    let mut st = self.lock();
                    for (id, p) in chat_ids.iter().zip(found) {
                        st.positions.entry(id.clone()).or_insert(Position {
                            epoch: p.epoch,
                            last: p.seq,
                        });
                    }
                }
                Err(e) => result = Err(InterestError::Redis(e)),
            }
        }
        for (_, ready) in &new {
            ready.send_replace(true);
        }
        for mut other in others_reading {
            let _ = tokio::time::timeout(POSITION_WAIT, other.wait_for(|r| *r)).await;
        }
        local_join.await;
        if new.is_empty() {
            return result;
        }
        let (done, confirmed) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let request = Request {
            rooms: new.into_iter().map(|(r, _)| r).collect(),
            done,
        };
        // The manager lives as long as the node; a closed channel means it is shutting down.
        let _ = self.requests.send(request);
        if let Some(confirmed) = confirmed {
            match tokio::time::timeout(SUBSCRIBE_WAIT, confirmed).await {
                Ok(Ok(true)) => {}
                _ => return Err(InterestError::NotConfirmed(SUBSCRIBE_WAIT)),
            }
        }
        result
    }

    /// One sweep: rooms without a local socket for long enough are unregistered and returned
    /// (to unsubscribe); local rooms nobody registered are registered and returned as well.
    async fn sweep(&self) -> (Vec<String>, Vec<String>) {
        let Some(ns) = self.io.get().and_then(|io| io.of("/")) else {
            return (Vec::new(), Vec::new());
        };
        let local: HashSet<String> = match ns.rooms().await {
            Ok(rooms) => rooms.into_iter().map(|r| r.to_string()).collect(),
            Err(_) => return (Vec::new(), Vec::new()),
        };
        let now = Instant::now();
        let mut gone = Vec::new();
        let mut found = Vec::new();
        let mut st = self.lock();
        st.rooms.retain(|room, r| {
            if local.contains(room) {
                r.idle_since = None;
                return true;
            }
            let since = *r.idle_since.get_or_insert(now);
            if now.duration_since(since) >= self.unsubscribe_after {
                gone.push(room.clone());
                false
            } else {
                true
            }
        });
        for room in &gone {
            if let Some(chat) = chat_of_room(room) {
                st.positions.remove(chat);
            }
        }
        for room in local {
            if !st.rooms.contains_key(&room) && crate::publish::is_room_name(&room) {
                let (_, rx) = watch::channel(true);
                st.rooms.insert(
                    room.clone(),
                    Room {
                        ready: rx,
                        idle_since: None,
                    },
                );
                found.push(room);
            }
        }
        crate::metrics::subscriptions(st.rooms.len());
        (gone, found)
    }
}

/// The subscriber connection currently open, shared by the subscriber loop (which opens it)
/// and the manager (which subscribes on it).
pub type Link = watch::Receiver<Option<super::subscriber::SubConn>>;

/// Runs until `cancel`: subscribes what [`Interest::join`] asks for, in batches and at a
/// bounded rate, sweeps every [`SWEEP_INTERVAL`], and tells the subscriber loop (`control`) to
/// sync the chats it just subscribed.
pub async fn manager(
    interest: Arc<Interest>,
    mut link: Link,
    control: mpsc::UnboundedSender<Control>,
    cancel: CancellationToken,
) {
    let Some(mut requests) = interest
        .requests_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        tracing::error!("interest manager started twice");
        return;
    };
    let min_gap = Duration::from_secs(1) / interest.commands_per_sec;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rooms whose subscription failed (no connection, or it broke): retried until one works,
    // unless they were unregistered meanwhile.
    let mut retry: Vec<String> = Vec::new();
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            r = requests.recv() => match r { Some(r) => Some(r), None => return },
            _ = sweep.tick() => None,
        };
        let mut batch: Vec<Request> = first.into_iter().collect();
        let mut count: usize = batch.iter().map(|r| r.rooms.len()).sum();
        while count < BATCH {
            match requests.try_recv() {
                Ok(r) => {
                    count += r.rooms.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        let (gone, found) = if batch.is_empty() {
            interest.sweep().await
        } else {
            (Vec::new(), Vec::new())
        };
        let mut rooms: Vec<String> = found;
        for r in &batch {
            rooms.extend(r.rooms.iter().cloned());
        }
        if !retry.is_empty() {
            let still: Vec<String> = std::mem::take(&mut retry)
                .into_iter()
                .filter(|r| interest.has_room(r))
                .collect();
            rooms.extend(still);
        }
        if rooms.is_empty() && gone.is_empty() {
            continue;
        }
        let conn = link.borrow_and_update().clone();
        let Some(mut conn) = conn else {
            // The subscriber loop is reconnecting: it subscribes everything registered when
            // its connection opens, and what registered after that is retried here.
            retry.extend(rooms);
            for r in batch {
                if let Some(done) = r.done {
                    let _ = done.send(false);
                }
            }
            continue;
        };
        if !gone.is_empty() {
            let channels: Vec<String> = gone.iter().map(|r| keys::room_channel(r)).collect();
            for chunk in channels.chunks(BATCH) {
                if let Err(e) = conn.unsubscribe(chunk).await {
                    tracing::debug!(error = %e, "unsubscribe failed; the reconnect drops it");
                }
                tokio::time::sleep(min_gap).await;
            }
            crate::metrics::subscription_changes("unsubscribe", gone.len());
        }
        let mut ok = true;
        let mut commands: u32 = 0;
        if !rooms.is_empty() {
            let channels: Vec<String> = rooms.iter().map(|r| keys::room_channel(r)).collect();
            for chunk in channels.chunks(BATCH) {
                if commands > 0 {
                    tokio::time::sleep(min_gap).await;
                }
                commands += 1;
                if let Err(e) = conn.subscribe(chunk).await {
                    tracing::warn!(error = %e, "subscribe failed; retrying");
                    ok = false;
                    break;
                }
            }
            if ok {
                crate::metrics::subscription_changes("subscribe", rooms.len());
                let chats: Vec<String> = rooms
                    .iter()
                    .filter_map(|r| chat_of_room(r).map(str::to_owned))
                    .collect();
                if !chats.is_empty() {
                    let _ = control.send(Control::Sync(chats));
                }
            } else {
                retry.extend(rooms);
            }
        }
        for r in batch {
            if let Some(done) = r.done {
                let _ = done.send(ok);
            }
        }
        // The rate bound: the waiters were answered first, the next command waits its turn.
        if commands > 0 {
            tokio::time::sleep(min_gap).await;
        }
    }
}
