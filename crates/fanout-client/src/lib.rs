//! Minimal Socket.IO v4 (Engine.IO v4) client over a raw websocket, used by the integration
//! tests and the load generator.
//!
//! Only the default namespace `/`, text packets and the websocket transport are supported.
//! A background task owns the read half of the websocket: it answers Engine.IO pings, routes
//! acknowledgements to their waiters and queues server events for [`Client::next_event`].
//!
//! For load generation, [`ConnectOptions`] can also bind the TCP socket to a chosen local
//! address (to spread many connections over source addresses of 127.0.0.0/8), disable Nagle's
//! algorithm, shrink the websocket buffers, and hand server events to a [`RawEventHandler`] as
//! raw JSON text, so a receiver parses each event once, into its own types; with
//! `rx_timestamps` each comes with the kernel's receive time of its bytes (`transport.rs`).

mod handshake;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use handshake::{build_request, handshake};
use transport::{RxStamp, Transport};

type Ws = WebSocketStream<Transport>;
type Event = (String, Value);

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Options for [`Client::connect`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Auth object sent as the namespace CONNECT payload (e.g. `{"token": "..."}`).
    pub auth: Option<Value>,
    /// Extra HTTP headers on the websocket upgrade (e.g. `Authorization: Bearer ..`).
    pub headers: Vec<(String, String)>,
    /// Extra query parameters appended to the URL (percent-encoded by the client).
    pub query: Vec<(String, String)>,
    /// Limit for the whole connect (TCP, upgrade, namespace CONNECT); 5 s when `None`.
    pub connect_timeout: Option<Duration>,
    /// Local address to bind the TCP socket to before connecting (port chosen by the kernel),
    /// e.g. one of 127.0.0.0/8 to get another ~28k ephemeral ports.
    pub local_addr: Option<IpAddr>,
    /// Sets `TCP_NODELAY` on the socket (small frames leave at once).
    pub tcp_nodelay: bool,
    /// Websocket settings (e.g. a small `read_buffer_size` for very many connections);
    /// tungstenite's defaults when `None`.
    pub ws_config: Option<WebSocketConfig>,
    /// Receives every server event as raw text before it is parsed; see [`RawEventHandler`].
    pub raw_events: Option<RawEventHandler>,
    /// Reads with the kernel's receive timestamps (Linux `SO_TIMESTAMPNS`), so each raw event
    /// is handed over with the time its bytes reached this socket (see [`RawEventHandler`]).
    pub rx_timestamps: bool,
}

/// A callback that sees each server->client EVENT packet of namespace `/` as the raw JSON array
/// text `["name", arg, ...]` (any ack id stripped), on the connection's reader task, before the
/// client parses it, with the kernel's receive time of the read that completed its frame when
/// [`ConnectOptions::rx_timestamps`] is on (the newest bytes of that read: never earlier than
/// the frame's own). Returning `true` consumes the event (it is neither parsed nor queued for
/// [`Client::next_event`]); `false` lets it take the normal path. It must be quick: it runs
/// inline with the reading of the socket.
#[derive(Clone)]
pub struct RawEventHandler(Arc<RawEventFn>);

type RawEventFn = dyn Fn(&str, Option<SystemTime>) -> bool + Send + Sync;

impl RawEventHandler {
    /// Wraps a callback.
    pub fn new(f: impl Fn(&str, Option<SystemTime>) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl fmt::Debug for RawEventHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawEventHandler")
    }
}

/// Errors returned by [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Network I/O error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Websocket transport error.
    #[error("websocket error: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// The URL, a header or a query parameter could not be used.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server refused the namespace CONNECT (CONNECT_ERROR) with this message.
    #[error("connection refused: {0}")]
    Refused(String),
    /// The operation did not complete in time.
    #[error("timed out")]
    Timeout,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The server sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered a request with `success: false`: its error object, as JSON.
    #[error("request failed: {0}")]
    Failed(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Io(e) => Self::Io(e),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                Self::Closed
            }
            e => Self::WebSocket(Box::new(e)),
        }
    }
}

/// State shared between the [`Client`] and its reader task.
struct Shared {
    writer: tokio::sync::Mutex<SplitSink<Ws, Message>>,
    acks: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    closed: watch::Sender<bool>,
    raw_events: Option<RawEventHandler>,
}

impl Shared {
    async fn send(&self, msg: Message) -> Result<(), ClientError> {
        if *self.closed.borrow() {
            return Err(ClientError::Closed);
        }
        Ok(self.writer.lock().await.send(msg).await?)
    }

    fn acks(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection closed, then drops every ack waiter (they see [`ClientError::Closed`]).
    fn mark_closed(&self) {
        self.closed.send_replace(true);
        self.acks().clear();
    }
}

/// A Socket.IO v4 client connected to the default namespace `/`.
pub struct Client {
    sid: String,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<Event>,
    next_ack: AtomicU64,
    reader: JoinHandle<()>,
}

impl Client {
    /// Connects to `base_url` (like `http://127.0.0.1:3000`, `http://` or `ws://`) and joins the
    /// namespace `/`. Resolves only when the namespace CONNECT succeeded; a CONNECT_ERROR gives
    /// [`ClientError::Refused`] with the server's message.
    pub async fn connect(base_url: &str, opts: ConnectOptions) -> Result<Client, ClientError> {
        let request = build_request(base_url, &opts)?;
        let limit = opts.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let (ws, sid, liveness) = timeout(limit, handshake(request, &opts))
            .await
            .map_err(|_| ClientError::Timeout)??;
        let stamp = ws.get_ref().stamp();
        let (writer, reader) = ws.split();
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(writer),
            acks: Mutex::new(HashMap::new()),
            closed: watch::Sender::new(false),
            raw_events: opts.raw_events.clone(),
        });
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared), tx, liveness, stamp));
        Ok(Client {
            sid,
            shared,
            events,
            pending: VecDeque::new(),
            next_ack: AtomicU64::new(0),
            reader,
        })
    }

    /// The Socket.IO session id from the server's CONNECT answer.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Emits `event` with one argument, without asking for an ack.
    pub async fn emit(&self, event: &str, data: Value) -> Result<(), ClientError> {
        self.emit_args(event, vec![data]).await
    }

    /// Emits `event` with zero or more arguments, without asking for an ack.
    pub async fn emit_args(&self, event: &str, args: Vec<Value>) -> Result<(), ClientError> {
        let packet = format!("42{}", event_array(event, args));
        self.shared.send(Message::text(packet)).await
    }

    /// Emits `event` with one argument and waits up to `timeout` for the ack; returns the ack's
    /// first argument (`Null` if it has none).
    pub async fn emit_with_ack(
        &self,
        event: &str,
        data: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        self.emit_args_with_ack(event, vec![data], timeout).await
    }

    /// Emits `event` with zero or more arguments and waits up to `timeout` for the ack; returns
    /// the ack's first argument (`Null` if it has none).
    pub async fn emit_args_with_ack(
        &self,
        event: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Registered before the closed check in `send`, so a concurrent close cannot strand it.
        self.shared.acks().insert(id, tx);
        let packet = format!("42{id}{}", event_array(event, args));
        let result = timeout_at(Instant::now() + timeout, async {
            self.shared.send(Message::text(packet)).await?;
            rx.await.map_err(|_| ClientError::Closed)
        })
        .await
        .unwrap_or(Err(ClientError::Timeout));
        self.shared.acks().remove(&id);
        result
    }

    /// Extends this connection's session with a fresh token (`session:refresh`) instead of a
    /// reconnect: returns the new `exp` (Unix seconds) the server granted, or the refusal's
    /// error object (`{ code, message }`) as [`ClientError::Failed`].
    pub async fn refresh_session(
        &self,
        token: &str,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let ack = self
            .emit_with_ack(
                "session:refresh",
                serde_json::json!({ "token": token }),
                timeout,
            )
            .await?;
        match ack["exp"].as_u64() {
            Some(exp) if ack["success"] == true => Ok(exp),
            _ => Err(ClientError::Failed(ack["error"].to_string())),
        }
    }

    /// Sends a raw Engine.IO text frame as is (for hostile-input tests).
    pub async fn send_raw(&self, text: String) -> Result<(), ClientError> {
        self.shared.send(Message::text(text)).await
    }

    /// Sends a raw binary websocket frame as is (for hostile-input tests).
    pub async fn send_raw_binary(&self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.shared.send(Message::binary(bytes)).await
    }

    /// Next server->client event (name, first argument or `Null`), in arrival order; `None` on
    /// timeout or when closed and drained.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        if let Some(event) = self.pending.pop_front() {
            return Some(event);
        }
        timeout_at(Instant::now() + timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Skips events of other names until one named `name` arrives and returns its first
    /// argument; skipped events stay queued for [`Client::next_event`]. `None` on timeout/close.
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Option<Value> {
        if let Some(pos) = self.pending.iter().position(|(n, _)| n == name) {
            return self.pending.remove(pos).map(|(_, data)| data);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let (n, data) = timeout_at(deadline, self.events.recv()).await.ok()??;
            if n == name {
                return Some(data);
            }
            self.pending.push_back((n, data));
        }
    }

    /// Collects the first argument of every event named `name` arriving within `window`
    /// (including already queued ones); other events stay queued.
    pub async fn collect(&mut self, name: &str, window: Duration) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let (matching, others): (VecDeque<Event>, VecDeque<Event>) =
            self.pending.drain(..).partition(|(n, _)| n == name);
        self.pending = others;
        let mut out: Vec<Value> = matching.into_iter().map(|(_, data)| data).collect();
        while let Ok(Some((n, data))) = timeout_at(deadline, self.events.recv()).await {
            if n == name {
                out.push(data);
            } else {
                self.pending.push_back((n, data));
            }
        }
        out
    }

    /// True once the server disconnected us (`41` packet, Engine.IO close, websocket closed or
    /// no ping from the server within `pingInterval + pingTimeout`).
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Waits until closed, up to `timeout`; returns whether it closed.
    pub async fn wait_closed(&self, timeout: Duration) -> bool {
        let mut closed = self.shared.closed.subscribe();
        matches!(
            timeout_at(Instant::now() + timeout, closed.wait_for(|c| *c)).await,
            Ok(Ok(_))
        )
    }

    /// Sends the Socket.IO disconnect (`41`) and closes the websocket.
    pub async fn close(self) {
        // Bounded, so an unresponsive server cannot hang the caller; the reader stops on drop.
        let _ = timeout(CLOSE_TIMEOUT, async {
            let _ = self.shared.send(Message::text("41")).await;
            let _ = self.shared.writer.lock().await.close().await;
        })
        .await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reader task: runs until the connection ends, then marks the client closed.
async fn read_loop(
    mut reader: SplitStream<Ws>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    liveness: Duration,
    stamp: Option<RxStamp>,
) {
    // Ends on read error, end of stream, or no traffic within pingInterval + pingTimeout. One
    // timer for the connection's life, moved only when it fires: a `timeout()` per message
    // inserted and removed a timer-wheel entry for every frame read (~3% of the load
    // generator's CPU at 50 000 messages/s).
    let mut last_seen = Instant::now();
    let deadline = tokio::time::sleep(liveness);
    tokio::pin!(deadline);
    loop {
        let next = tokio::select! {
            next = reader.next() => next,
            () = &mut deadline => {
                let due = last_seen + liveness;
                if Instant::now() >= due {
                    break;
                }
                deadline.as_mut().reset(due);
                continue;
            }
        };
        let Some(Ok(msg)) = next else { break };
        last_seen = Instant::now();
        let flow = match msg {
            Message::Text(text) => {
                let at = stamp.as_ref().and_then(RxStamp::get);
                handle_engine_packet(&shared, &events, text.as_str(), at).await
            }
            Message::Close(_) => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        };
        if flow.is_break() {
            break;
        }
    }
    shared.mark_closed();
}

/// Handles one Engine.IO text packet; `Break` means the connection is over.
async fn handle_engine_packet(
    shared: &Shared,
    events: &mpsc::UnboundedSender<Event>,
    text: &str,
    received: Option<SystemTime>,
) -> ControlFlow<()> {
    if let Some(payload) = text.strip_prefix('2') {
        let pong = shared.send(Message::text(format!("3{payload}"))).await;
        return if pong.is_ok() {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        };
    } else if text.starts_with('1') {
        return ControlFlow::Break(());
    } else if let Some(packet) = text.strip_prefix('4') {
        return handle_socketio_packet(shared, events, packet, received);
    } else {
        tracing::debug!(packet = %text, "ignoring Engine.IO packet");
    }
    ControlFlow::Continue(())
}

/// Handles one Socket.IO packet of namespace `/`; `Break` means the server disconnected us.
fn handle_socketio_packet(
    shared: &Shared,
    events: &mpsc::UnboundedSender<Event>,
    packet: &str,
    received: Option<SystemTime>,
) -> ControlFlow<()> {
    let mut chars = packet.chars();
    let kind = chars.next();
    let rest = chars.as_str();
    if rest.starts_with('/') {
        tracing::debug!(%packet, "ignoring packet of another namespace");
        return ControlFlow::Continue(());
    }
    if let (Some('2'), Some(handler)) = (kind, &shared.raw_events) {
        let array = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if (handler.0)(array, received) {
            return ControlFlow::Continue(());
        }
    }
    match (kind, parse_args(rest)) {
        (Some('1'), _) => return ControlFlow::Break(()),
        (Some('2'), Some((_, args))) => {
            let mut args = args.into_iter();
            if let Some(Value::String(name)) = args.next() {
                let _ = events.send((name, args.next().unwrap_or(Value::Null)));
            } else {
                tracing::debug!(%packet, "ignoring event without a name");
            }
        }
        (Some('3'), Some((Some(id), args))) => {
            if let Some(waiter) = shared.acks().remove(&id) {
                let _ = waiter.send(args.into_iter().next().unwrap_or(Value::Null));
            }
        }
        _ => tracing::debug!(%packet, "ignoring Socket.IO packet"),
    }
    ControlFlow::Continue(())
}

/// Parses `[id]<json array>` (the part of an EVENT/ACK packet after its type).
fn parse_args(rest: &str) -> Option<(Option<u64>, Vec<Value>)> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, json) = rest.split_at(digits);
    let id = (!id.is_empty()).then(|| id.parse()).transpose().ok()?;
    Some((id, serde_json::from_str(json).ok()?))
}

/// The JSON array `["event", args...]` of an EVENT packet.
fn event_array(event: &str, args: Vec<Value>) -> Value {
    let mut array = Vec::with_capacity(args.len() + 1);
    array.push(Value::String(event.to_owned()));
    array.extend(args);
    Value::Array(array)
}
