//! `--recover`: what a real client does when its connection drops. Each client slot holds the
//! client's current connection; with `--recover` a task per client waits for the connection to
//! close, reconnects (backing off, through the same URL list: a load balancer puts it on a
//! live node), re-joins with `--join`, and then pages `chat:history` from the last offset it
//! holds in each of its rooms, so every accepted message ends up with the receiver exactly once,
//! live or recovered. Senders, for their part, resend what was not acknowledged with the same
//! `clientMsgId` (see `run_sender`), which the server deduplicates.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_client::Client;
use futures_util::future::BoxFuture;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::stats::{Receivers, RecvState, histogram, lock};

/// One client's current connection (replaced on reconnect with `--recover`).
#[derive(Default)]
pub struct Slot(Mutex<Option<Arc<Client>>>);

impl Slot {
    /// The connection, if it is open.
    pub fn open(&self) -> Option<Arc<Client>> {
        lock(&self.0).clone().filter(|c| !c.is_closed())
    }

    /// The connection, open or not.
    pub fn any(&self) -> Option<Arc<Client>> {
        lock(&self.0).clone()
    }

    pub fn set(&self, c: Arc<Client>) {
        *lock(&self.0) = Some(c);
    }

    pub fn take(&self) -> Option<Arc<Client>> {
        lock(&self.0).take()
    }
}

/// What the reconnect tasks did.
pub struct RecoverStats {
    pub reconnects: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub history_calls: AtomicU64,
    pub history_errors: AtomicU64,
    /// Failed history calls by error code or transport error.
    pub history_error_kinds: Mutex<BTreeMap<String, u64>>,
    /// From noticing the drop to being connected again, µs.
    pub reconnect_hist: Mutex<Histogram<u64>>,
}

impl Default for RecoverStats {
    fn default() -> Self {
        RecoverStats {
            reconnects: AtomicU64::new(0),
            failed_attempts: AtomicU64::new(0),
            history_calls: AtomicU64::new(0),
            history_errors: AtomicU64::new(0),
            history_error_kinds: Mutex::default(),
            reconnect_hist: Mutex::new(histogram()),
        }
    }
}

/// Opens a new connection for a client; the argument is the attempt number (to rotate URLs).
pub type Connect = Arc<dyn Fn(u32) -> BoxFuture<'static, Result<Client, String>> + Send + Sync>;

/// Where a client resumes a room: the epoch and the highest offset it holds.
type Resume = (Option<String>, Option<u64>);

/// Page size of the recovery's `chat:history` calls (the protocol's maximum).
const HISTORY_PAGE: u64 = 1000;

/// Everything one client's reconnect task needs.
pub struct Supervisor {
    pub client: usize,
    pub slot: Arc<Slot>,
    pub connect: Connect,
    pub rooms: Vec<u32>,
    pub join: bool,
    pub recv: Arc<Receivers>,
    pub state: Arc<Mutex<RecvState>>,
    pub stats: Arc<RecoverStats>,
    pub ack_timeout: Duration,
}

impl Supervisor {
    /// Keeps the client connected until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut attempt = 0u32;
        // Rooms whose catch-up the last connection did not finish, with the point it reached.
        // The next round resumes them from there, not from the highest offset held: live
        // messages that reached the last connection before it closed lie beyond a range not
        // fetched yet, and resuming after them would skip that range for good.
        let mut unfinished: HashMap<u32, Resume> = HashMap::new();
        loop {
            let Some(current) = self.slot.any() else {
                return;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wait_closed(&current) => {}
            }
            let since: Vec<(u32, Resume)> = {
                let st = lock(&self.state);
                self.rooms
                    .iter()
                    .map(|&r| {
                        let from = unfinished.remove(&r).unwrap_or_else(|| st.resume_offset(r));
                        (r, from)
                    })
                    .collect()
            };
            let t0 = Instant::now();
            let mut backoff = RECONNECT_FIRST;
            let client = loop {
                attempt += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    res = (self.connect)(attempt) => match res {
                        Ok(c) => break Arc::new(c),
                        Err(_) => {
                            self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Randomized 0.5-1.5x, as Socket.IO clients do (randomizationFactor 0.5), so a
                // storm of reconnects spreads out instead of coming back in waves.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = sleep(jittered(backoff)) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
            };
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            lock(&self.stats.reconnect_hist)
                .saturating_record((t0.elapsed().as_micros() as u64).max(1));
            if self.join {
                for &r in &self.rooms {
                    let data = json!({ "chatId": self.recv.chat_id(r) });
                    let _ = client
                        .emit_with_ack("chat:join", data, self.ack_timeout)
                        .await;
                }
            }
            self.slot.set(Arc::clone(&client));
            for (room, mut from) in since {
                if client.is_closed() {
                    unfinished.insert(room, from);
                    continue;
                }
                // Until it succeeds or the connection is gone (the next round resumes then).
                let mut pause = Duration::from_millis(200);
                while let Err(reached) = self.catch_up(&client, room, from.clone()).await {
                    from = reached;
                    if client.is_closed() {
                        unfinished.insert(room, from);
                        break;
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = sleep(jittered(pause)) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Pages `chat:history` of `room` from `since` until the answer is short; when a call
    /// fails, the point the pages before it reached (what they brought is accounted).
    async fn catch_up(&self, client: &Client, room: u32, from: Resume) -> Result<(), Resume> {
        let (mut epoch, mut since) = from;
        loop {
            // Offsets start at 1: since 0 is "everything retained" for a client that had none.
            // With a stale epoch the server answers `reset` and the current epoch's messages.
            let mut req = json!({
                "chatId": self.recv.chat_id(room),
                "since": since.unwrap_or(0),
                "limit": HISTORY_PAGE,
            });
            if let Some(e) = &epoch {
                req["epoch"] = e.as_str().into();
            }
            self.stats.history_calls.fetch_add(1, Ordering::Relaxed);
            let ack = match client
                .emit_with_ack("chat:history", req, self.ack_timeout)
                .await
            {
                Ok(ack) if ack["success"] == true => ack,
                res => {
                    let why = match res {
                        Ok(ack) => ack["error"]["code"]
                            .as_str()
                            .unwrap_or("UNKNOWN")
                            .to_owned(),
                        Err(e) => e.to_string(),
                    };
                    self.stats.history_errors.fetch_add(1, Ordering::Relaxed);
                    *lock(&self.stats.history_error_kinds)
                        .entry(why)
                        .or_default() += 1;
                    return Err((epoch, since));
                }
            };
            let messages = ack["messages"].as_array().cloned().unwrap_or_default();
            self.recv.on_history(self.client, &self.state, &messages);
            let last = messages.last().and_then(|m| m["offset"].as_u64());
            match last {
                Some(l) if (messages.len() as u64) >= HISTORY_PAGE => {
                    since = Some(l);
                    epoch = ack["epoch"].as_str().map(str::to_owned);
                }
                _ => return Ok(()),
            }
        }
    }
}

/// The reconnect discipline (docs/protocol.md Part II section 1, "Reconnecting"): the first
/// retry after a failed reconnect waits about this long...
pub const RECONNECT_FIRST: Duration = Duration::from_millis(50);
/// ...each next one twice as long, up to this; every wait is [`jittered`], so the clients of a
/// dead node (or a refused storm: `RATE_LIMITED`, `UNAVAILABLE`) come back spread out, not in
/// waves.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// `d` scaled by a random factor in [0.5, 1.5) (Socket.IO's `randomizationFactor: 0.5`).
fn jittered(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    d.mul_f64(0.5 + r)
}

async fn wait_closed(c: &Client) {
    while !c.wait_closed(Duration::from_secs(3600)).await {}
}
