//! The official Socket.IO Admin UI (`@socket.io/admin-ui` 0.5.1) against the whole cluster
//! (docs/protocol.md §7, docs/operations.md "Admin UI"): the `/admin` namespace, its login, and
//! the hooks the gateway calls on its sockets' connects, disconnects, events and rooms.
//!
//! Off unless `ADMIN_UI_USERNAME` and `ADMIN_UI_PASSWORD_HASH` are set; then `/admin` exists and
//! refuses a handshake without valid credentials (`invalid credentials`). Every node appears as
//! a server with its own stats, `all_sockets` lists the sockets of every node, live events of
//! every node reach every admin socket, and a command reaches the node holding the sockets —
//! all through one Redis pub/sub channel ([`relay`]). Commands act on the sockets of `/` only.
//!
//! Seams: `namespace` (the `/admin` sockets: login, greeting, commands), [`protocol`] (what
//! goes on the wire), [`relay`] (the channel and the tasks), [`store`] (every Redis command).

mod namespace;
pub mod protocol;
pub mod relay;
pub mod store;

pub use namespace::InvalidCredentials;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::socket::DisconnectReason;
use tokio::sync::{Semaphore, mpsc};

use self::protocol::{EventCounts, SocketView, serialize_socket};
use self::relay::{Command, FETCH_WAIT, MAX_LISTED_SOCKETS, Message, OUTBOX_CAPACITY};
use self::store::AdminStore;
use crate::auth::Identity;
use crate::gateway::handshake::ConnectedAt;

/// The Admin UI's namespace (the official default).
pub const NAMESPACE: &str = "/admin";
/// How long after the last sign of an admin socket (anywhere in the cluster) a node keeps
/// publishing its live socket events: two stats periods and a margin. Without a watcher a
/// node publishes nothing but its stats.
const WATCH_WINDOW: Duration = Duration::from_secs(5);
/// bcrypt verifications at once: each takes a blocking thread for ~0.1–0.3 s (cost 10–12), so
/// a flood of logins queues here instead of taking the blocking pool.
const BCRYPT_SLOTS: usize = 2;
/// A peer that published no stats for this long is not waited for by a fetch.
const PEER_STALE: Duration = Duration::from_secs(6);

/// The Admin UI settings (`ADMIN_UI_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Login name.
    pub username: String,
    /// bcrypt hash of the password.
    pub password_hash: String,
    /// Whether `event_received` carries the events' arguments (else an empty list after the
    /// event name).
    pub show_events: bool,
}

impl Settings {
    /// The settings from their parts: `None` when neither is set (the Admin UI is off), else
    /// both must be set and the hash must be a bcrypt hash; the error names the setting.
    pub fn from_parts(
        username: Option<&str>,
        password_hash: Option<&str>,
        show_events: bool,
    ) -> Result<Option<Settings>, String> {
        match (username, password_hash) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(
                "missing setting ADMIN_UI_PASSWORD_HASH (ADMIN_UI_USERNAME is set; the Admin UI \
                 needs both)"
                    .into(),
            ),
            (None, Some(_)) => Err(
                "missing setting ADMIN_UI_USERNAME (ADMIN_UI_PASSWORD_HASH is set; the Admin UI \
                 needs both)"
                    .into(),
            ),
            (Some(u), Some(h)) => {
                if u.trim().is_empty() {
                    return Err("invalid setting ADMIN_UI_USERNAME: must not be empty".into());
                }
                if h.parse::<bcrypt::HashParts>().is_err() {
                    return Err("invalid setting ADMIN_UI_PASSWORD_HASH: not a bcrypt hash \
                                (e.g. $2b$10$...)"
                        .into());
                }
                Ok(Some(Settings {
                    username: u.to_owned(),
                    password_hash: h.to_owned(),
                    show_events,
                }))
            }
        }
    }
}

/// The Admin UI of one node: shared by the `/admin` handlers, the gateway's hooks and the relay
/// tasks. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    node_id: Arc<str>,
    store: AdminStore,
    outbox: mpsc::Sender<String>,
    /// The receiving end, until [`Admin::start`] hands it to the publisher task.
    outbox_rx: Mutex<Option<mpsc::Receiver<String>>>,
    io: OnceLock<SocketIo>,
    counts: EventCounts,
    /// Fetches this node is collecting answers for: reply id -> where answers go.
    pending: Mutex<HashMap<String, mpsc::Sender<Answer>>>,
    /// Nodes seen publishing stats, and when.
    peers: Mutex<HashMap<String, Instant>>,
    /// Until when (ms since the epoch) some admin socket is known to watch.
    watched_until_ms: AtomicU64,
    bcrypt: Semaphore,
    started: Instant,
}

/// The transport a chat socket was last reported with (for `socket_updated`).
#[derive(Clone, Copy)]
struct SeenTransport(socketioxide::TransportType);

/// One node's answer to a fetch: its id and its serialized sockets.
type Answer = (String, Vec<Value>);

impl Admin {
    /// The Admin UI of node `node_id`, storing its sessions and publishing through `store`.
    pub fn new(settings: Settings, node_id: Arc<str>, store: AdminStore) -> Admin {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        Admin {
            inner: Arc::new(Inner {
                settings,
                node_id,
                store,
                outbox: tx,
                outbox_rx: Mutex::new(Some(rx)),
                io: OnceLock::new(),
                counts: EventCounts::default(),
                pending: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
                watched_until_ms: AtomicU64::new(0),
                bcrypt: Semaphore::new(BCRYPT_SLOTS),
                started: Instant::now(),
            }),
        }
    }

    /// The Redis commands of the Admin UI.
    pub fn store(&self) -> &AdminStore {
        &self.inner.store
    }

    /// The tasks of the Admin UI (publisher, stats, subscriber) on `tasks`, stopped by `cancel`.
    pub fn start(
        &self,
        redis: crate::redis::Redis,
        tasks: &tokio_util::task::TaskTracker,
        cancel: &tokio_util::sync::CancellationToken,
    ) {
        let rx = self.inner.outbox_rx.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            tasks.spawn(relay::run_publisher(self.clone(), rx, cancel.clone()));
        }
        tasks.spawn(relay::run_stats(self.clone(), cancel.clone()));
        tasks.spawn(relay::run_subscriber(redis, self.clone(), cancel.clone()));
    }

    // ---- the cluster view ----------------------------------------------------------------

    /// Queues `m` for the channel; dropped (and counted) when the queue is full.
    fn publish(&self, m: &Message) {
        let Ok(text) = serde_json::to_string(m) else {
            return;
        };
        if self.inner.outbox.try_send(text).is_err() {
            crate::metrics::admin_relay_dropped();
        }
    }

    /// Relays a live event to every admin socket, if any is watching.
    fn relay(&self, event: &str, args: Vec<Value>) {
        if !self.is_watched() {
            return;
        }
        self.publish(&Message::Relay {
            from: self.inner.node_id.to_string(),
            event: event.to_owned(),
            args,
        });
    }

    fn watched(&self) {
        let until = crate::clock::now_ms() + WATCH_WINDOW.as_millis() as u64;
        self.inner
            .watched_until_ms
            .fetch_max(until, Ordering::Relaxed);
    }

    /// Whether some admin socket in the cluster watches live events now: the per-socket work
    /// of reporting deliveries is done only then.
    pub fn is_watched(&self) -> bool {
        self.inner.watched_until_ms.load(Ordering::Relaxed) > crate::clock::now_ms()
    }

    fn io(&self) -> Option<&SocketIo> {
        self.inner.io.get()
    }

    /// Publishes this node's `server_stats`.
    pub fn publish_stats(&self) {
        let Some(io) = self.io() else { return };
        let chat = io.of("/").map(|ns| ns.sockets()).unwrap_or_default();
        self.report_upgrades(&chat);
        let admins = io.of(NAMESPACE).map(|ns| ns.sockets().len()).unwrap_or(0);
        let polling = chat
            .iter()
            .filter(|s| matches!(s.transport_type(), socketioxide::TransportType::Polling))
            .count();
        let stats = json!({
            "serverId": &*self.inner.node_id,
            "hostname": hostname(),
            "pid": std::process::id(),
            "uptime": self.inner.started.elapsed().as_secs_f64(),
            "clientsCount": chat.len() + admins,
            "pollingClientsCount": polling,
            "aggregatedEvents": self.inner.counts.take(),
            "namespaces": [
                { "name": "/", "socketsCount": chat.len() },
                { "name": NAMESPACE, "socketsCount": admins },
            ],
        });
        // Stats always go out (every 2 s): they are how the nodes learn an admin is watching.
        self.publish(&Message::Relay {
            from: self.inner.node_id.to_string(),
            event: "server_stats".into(),
            args: vec![stats],
        });
    }

    /// The sockets of every node, collected for at most [`FETCH_WAIT`] (less once every node
    /// seen recently has answered).
    async fn fetch_all(&self) -> Vec<Value> {
        let reply = uuid::Uuid::new_v4().simple().to_string();
        let (tx, mut rx) = mpsc::channel(64);
        if let Ok(mut p) = self.inner.pending.lock() {
            p.insert(reply.clone(), tx);
        }
        self.publish(&Message::Fetch {
            from: self.inner.node_id.to_string(),
            reply: reply.clone(),
        });
        let expected = self.live_peers();
        let mut answered = std::collections::HashSet::new();
        let mut sockets = Vec::new();
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        loop {
            let done = answered.contains(&*self.inner.node_id)
                && expected.iter().all(|p| answered.contains(p));
            if done {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((from, list))) => {
                    answered.insert(from);
                    sockets.extend(list);
                }
                _ => break,
            }
        }
        if let Ok(mut p) = self.inner.pending.lock() {
            p.remove(&reply);
        }
        sockets
    }

    fn live_peers(&self) -> Vec<String> {
        let Ok(mut peers) = self.inner.peers.lock() else {
            return Vec::new();
        };
        peers.retain(|_, seen| seen.elapsed() < PEER_STALE);
        peers.keys().cloned().collect()
    }

    /// Handles one message of the channel.
    pub async fn receive(&self, m: Message) {
        let Some(io) = self.io().cloned() else { return };
        match m {
            Message::Relay { from, event, args } => {
                if event == "server_stats" {
                    self.saw_stats(&from, args.first());
                }
                relay::emit_to_admins(&io, &event, &args).await;
            }
            Message::Command { command, .. } => self.apply(&io, command),
            Message::Fetch { from, reply } => {
                // Someone just opened the UI: start relaying live events now, not at the next
                // stats tick.
                self.watched();
                let sockets: Vec<Value> = io
                    .of("/")
                    .map(|ns| ns.sockets())
                    .unwrap_or_default()
                    .iter()
                    .take(MAX_LISTED_SOCKETS)
                    .map(serialize)
                    .collect();
                self.publish(&Message::Sockets {
                    from: self.inner.node_id.to_string(),
                    to: from,
                    reply,
                    sockets,
                });
            }
            Message::Sockets {
                from,
                to,
                reply,
                sockets,
            } => {
                if to != *self.inner.node_id {
                    return;
                }
                let tx = self
                    .inner
                    .pending
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&reply).cloned());
                if let Some(tx) = tx {
                    let _ = tx.try_send((from, sockets));
                }
            }
        }
    }

    fn saw_stats(&self, from: &str, stats: Option<&Value>) {
        if let Ok(mut peers) = self.inner.peers.lock() {
            peers.insert(from.to_owned(), Instant::now());
        }
        let admins = stats
            .and_then(|s| s.get("namespaces"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|n| n.get("name").and_then(Value::as_str) == Some(NAMESPACE))
            .filter_map(|n| n.get("socketsCount").and_then(Value::as_u64))
            .sum::<u64>();
        if admins > 0 {
            self.watched();
        }
    }

    /// Applies a command to this node's sockets of `/`.
    fn apply(&self, io: &SocketIo, command: Command) {
        let label = command.label();
        let targets = match &command {
            Command::Emit { filter, .. }
            | Command::Join { filter, .. }
            | Command::Leave { filter, .. }
            | Command::Disconnect { filter } => relay::targets(io, filter),
        };
        if targets.is_empty() {
            return;
        }
        crate::metrics::admin_command(label, targets.len());
        for s in targets {
            match &command {
                Command::Emit { event, args, .. } => {
                    s.emit(event.as_str(), &protocol::Args(args)).ok();
                }
                Command::Join { room, .. } => {
                    s.join(room.clone());
                    self.room_joined(&s.id.to_string(), room);
                }
                Command::Leave { room, .. } => {
                    s.leave(room.clone());
                    self.room_left(&s.id.to_string(), room);
                }
                Command::Disconnect { .. } => {
                    s.disconnect().ok();
                }
            }
        }
    }

    // ---- hooks of the gateway (sockets of `/`) --------------------------------------------

    /// A chat socket connected.
    pub fn socket_connected(&self, s: &SocketRef) {
        // The transport of the handshake, when noted: an upgrade that completed while the
        // handshake waited for its rooms is then still reported as one.
        if s.extensions.get::<SeenTransport>().is_none() {
            s.extensions.insert(SeenTransport(s.transport_type()));
        }
        self.inner.counts.push("rawConnection", None, 1);
        if self.is_watched() {
            self.relay("socket_connected", vec![serialize(s), now()]);
        }
    }

    /// The node delivered `event` to chat socket `sid` (a room broadcast of the backplane):
    /// `event_sent`, with the payload only when `ADMIN_UI_SHOW_EVENTS` is on. Called only while
    /// [`Admin::is_watched`].
    pub fn event_sent(&self, sid: &str, event: &str, data: &serde_json::value::RawValue) {
        self.inner.counts.push("packetsOut", None, 1);
        self.inner
            .counts
            .push("bytesOut", None, data.get().len() as u64);
        let mut list = vec![json!(event)];
        if self.inner.settings.show_events
            && let Ok(v) = serde_json::from_str::<Value>(data.get())
        {
            list.push(v);
        }
        self.relay(
            "event_sent",
            vec![json!("/"), json!(sid), Value::Array(list), now()],
        );
    }

    /// `socket_updated` for every chat socket whose transport changed since it was last seen
    /// (a polling client upgraded to websocket): socketioxide tells nobody of an upgrade, so the
    /// stats tick looks, while an admin watches.
    fn report_upgrades(&self, sockets: &[SocketRef]) {
        if !self.is_watched() {
            return;
        }
        for s in sockets {
            let now = s.transport_type();
            let seen = s.extensions.get::<SeenTransport>().map(|t| t.0);
            if seen != Some(now) {
                s.extensions.insert(SeenTransport(now));
                self.relay(
                    "socket_updated",
                    vec![json!({
                        "id": s.id.to_string(),
                        "nsp": "/",
                        "transport": protocol::transport_name(now),
                    })],
                );
            }
        }
    }

    /// A chat socket's handshake began: its transport now is the one `socket_updated` compares
    /// with.
    pub fn handshake_started(&self, s: &SocketRef) {
        s.extensions.insert(SeenTransport(s.transport_type()));
    }

    /// A chat socket disconnected.
    pub fn socket_disconnected(&self, s: &SocketRef, reason: &DisconnectReason) {
        let reason = protocol::reason_text(reason);
        self.inner.counts.push("rawDisconnection", Some(reason), 1);
        self.relay(
            "socket_disconnected",
            vec![json!("/"), json!(s.id.to_string()), json!(reason), now()],
        );
    }

    /// A chat socket sent `event` (`bytes` long); `args` reads its arguments (only called when
    /// they are shown).
    pub fn event_received(
        &self,
        s: &SocketRef,
        event: &str,
        bytes: usize,
        args: impl FnOnce() -> Vec<Value>,
    ) {
        self.inner.counts.push("packetsIn", None, 1);
        self.inner.counts.push("bytesIn", None, bytes as u64);
        if !self.is_watched() {
            return;
        }
        let mut list = vec![json!(event)];
        if self.inner.settings.show_events {
            list.extend(args());
        }
        self.relay(
            "event_received",
            vec![
                json!("/"),
                json!(s.id.to_string()),
                Value::Array(list),
                now(),
            ],
        );
    }

    /// A chat socket joined `room`.
    pub fn room_joined(&self, sid: &str, room: &str) {
        self.relay(
            "room_joined",
            vec![json!("/"), json!(room), json!(sid), now()],
        );
    }

    /// A chat socket left `room`.
    pub fn room_left(&self, sid: &str, room: &str) {
        self.relay(
            "room_left",
            vec![json!("/"), json!(room), json!(sid), now()],
        );
    }
}

fn now() -> Value {
    json!(crate::clock::now_iso())
}

/// A chat socket as the UI sees it.
fn serialize(s: &SocketRef) -> Value {
    let identity = s.extensions.get::<Arc<Identity>>();
    let issued_ms = s
        .extensions
        .get::<ConnectedAt>()
        .and_then(|ConnectedAt(at)| {
            time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as u64)
        .unwrap_or(0);
    let parts = s.req_parts();
    serialize_socket(&SocketView {
        id: &s.id.to_string(),
        nsp: s.ns(),
        transport: s.transport_type(),
        user_id: identity.as_ref().map(|i| i.user_id.as_str()),
        headers: &parts.headers,
        uri: &parts.uri,
        issued_ms,
        rooms: s.rooms().into_iter().map(|r| r.to_string()).collect(),
    })
}

/// The machine's host name (`server_stats.hostname`).
fn hostname() -> String {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return String::new();
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_need_both_parts_and_a_bcrypt_hash() {
        assert!(Settings::from_parts(None, None, false).unwrap().is_none());
        let e = Settings::from_parts(Some("admin"), None, false).unwrap_err();
        assert!(e.contains("ADMIN_UI_PASSWORD_HASH"), "{e}");
        let e = Settings::from_parts(None, Some("x"), false).unwrap_err();
        assert!(e.contains("ADMIN_UI_USERNAME"), "{e}");
        let e = Settings::from_parts(Some("admin"), Some("plain"), false).unwrap_err();
        assert!(
            e.starts_with("invalid setting ADMIN_UI_PASSWORD_HASH"),
            "{e}"
        );
        let hash = bcrypt::hash("pw", 4).unwrap();
        let s = Settings::from_parts(Some("admin"), Some(&hash), true)
            .unwrap()
            .unwrap();
        assert!(s.show_events);
    }
}
