//! Receiver-side accounting: every `chat:message` a bench client receives is parsed once, from
//! the raw event text, and checked against its sender's sequence.
//!
//! Latencies go into HDR histograms (the `hdrhistogram` crate): a fixed-size log-linear
//! histogram records each sample in O(1) with bounded relative error (3 significant digits here)
//! over microseconds to a minute, so p99.9 and max are exact enough at hundreds of thousands of
//! deliveries per second, where keeping every sample or a sorted reservoir would cost memory and
//! CPU the generator needs for receiving. Histograms are sharded so the reader tasks of different
//! worker threads rarely touch the same lock.

use std::borrow::Cow;
use std::collections::HashMap;

/// The per-delivery maps: keyed by small integers the run itself chose (room and sender
/// indexes), so a fast unkeyed hash is safe, and SipHash's cost showed in profiles (~5% of
/// the generator's CPU at 50 000 deliveries/s, several lookups per delivery).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Instant, SystemTime};

use hdrhistogram::Histogram;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;

/// Largest latency the histograms track exactly, in µs (a minute); larger ones saturate.
const HIST_MAX_US: u64 = 60_000_000;
const SHARDS: usize = 16;

/// Microseconds since the process's time base (a monotonic clock shared by senders and
/// receivers of this process, so latency = receive time - send time needs no clock sync).
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// A latency histogram in µs.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A growable bit set indexed by sequence number.
#[derive(Default, Clone)]
pub struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; returns whether it was already set.
    pub fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }

    /// The set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |b| word & (1u64 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        })
    }

    pub fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// What one receiver saw from one sender in one room.
#[derive(Default)]
pub struct Track {
    pub received: Bits,
    /// Highest sequence number seen so far.
    max_seq: Option<u64>,
    pub dup: u64,
    pub reordered: u64,
}

/// Per-receiver state (one per client), behind an uncontended mutex: only that client's reader
/// task (and, with `--recover`, its reconnect task) writes it while the run goes on.
#[derive(Default)]
pub struct RecvState {
    /// Keyed by `(room << 32) | sender`.
    pub tracks: FastMap<u64, Track>,
    /// Last chat offset seen live per room, to check that every receiver sees offsets in order.
    last_offset: FastMap<u32, u64>,
    pub offset_gaps: u64,
    pub offset_regressions: u64,
    /// Offsets received per room, live or from `chat:history`: a client keeps a message once
    /// per offset, so the same offset again is an overlap, not a duplicate.
    offsets: FastMap<u32, Bits>,
    /// Offsets received live per room: the same offset twice on the live stream is a duplicate.
    live_offsets: FastMap<u32, Bits>,
    /// Highest offset received per room (live or history): where recovery resumes.
    max_offset: FastMap<u32, u64>,
    /// Messages received again through `chat:history` (or live after history had them).
    pub overlaps: u64,
    /// Current epoch per room, and every epoch seen: a chat whose sequence Redis lost restarts
    /// its offsets in a new epoch, and a client starts its offset accounting over with it.
    epoch: FastMap<u32, String>,
    epochs_seen: FastMap<u32, Vec<String>>,
    pub epoch_changes: u64,
    /// Holes of the epochs already left behind.
    holes_closed: u64,
}

impl RecvState {
    /// Where a reconnecting client resumes room `room`: the epoch and highest offset it has.
    pub fn resume_offset(&self, room: u32) -> (Option<String>, Option<u64>) {
        (
            self.epoch.get(&room).cloned(),
            self.max_offset.get(&room).copied(),
        )
    }

    /// Offsets missing between the first and the last one received, over all rooms and epochs:
    /// what a client that orders messages by offset would see as holes.
    pub fn offset_holes(&self) -> u64 {
        self.holes_closed + self.offsets.values().map(holes).sum::<u64>()
    }

    /// Whether a message of `epoch` in `room` is to be accounted by offset; switches to a new
    /// epoch (dropping the old one's offsets) when it first appears.
    fn enter_epoch(&mut self, room: u32, epoch: &str) -> bool {
        match self.epoch.get(&room) {
            Some(e) if e == epoch => return true,
            None => {}
            Some(_) => {
                if self
                    .epochs_seen
                    .get(&room)
                    .is_some_and(|v| v.iter().any(|e| e == epoch))
                {
                    // A late message of an epoch already left behind.
                    return false;
                }
                self.epoch_changes += 1;
                self.holes_closed += self.offsets.remove(&room).as_ref().map_or(0, holes);
                self.live_offsets.remove(&room);
                self.max_offset.remove(&room);
                self.last_offset.remove(&room);
            }
        }
        self.epoch.insert(room, epoch.to_owned());
        self.epochs_seen
            .entry(room)
            .or_default()
            .push(epoch.to_owned());
        true
    }
}

fn holes(bits: &Bits) -> u64 {
    let mut ones = bits.ones();
    let Some(lo) = ones.next() else {
        return 0;
    };
    let (hi, n) = ones.fold((lo, 1u64), |(_, n), b| (b, n + 1));
    (hi - lo + 1) - n
}

/// When a receiver read a message: `now` on the time base of [`now_us`], and how long its
/// bytes had waited since the kernel received them (µs) when the read was stamped.
#[derive(Clone, Copy)]
struct Arrival {
    now: u64,
    waited: Option<u64>,
}

/// Where a message reached a receiver.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Live,
    History,
}

/// Counters and the delivery-latency histograms of one shard.
pub struct Shard {
    /// Send to the generator's read of the frame.
    pub hist: Histogram<u64>,
    /// Send to the kernel's receipt of the frame's bytes at the client's socket (reads with
    /// receive timestamps only): the first without the generator's own queueing.
    pub socket_hist: Histogram<u64>,
    /// All `chat:message` events of this run (warm-up included): for the progress line.
    pub events: u64,
    /// Measured deliveries, first copies only.
    pub measured: u64,
    pub warmup: u64,
    /// Measured messages a receiver first got through `chat:history` (recovery).
    pub recovered: u64,
}

/// Everything the receivers share.
pub struct Receivers {
    pub shards: Vec<Mutex<Shard>>,
    /// Chat id prefix of this run, `bench-<runid>-r`.
    prefix: String,
    /// Sends stamped in [warm_end_us, end_us) are measured.
    pub warm_end_us: AtomicU64,
    pub end_us: AtomicU64,
    pub other_events: AtomicU64,
    pub foreign: AtomicU64,
    pub parse_errors: AtomicU64,
}

/// The `chat:message` fields the bench reads.
#[derive(Deserialize)]
pub struct ChatMessage<'a> {
    #[serde(rename = "chatId", borrow)]
    chat_id: Cow<'a, str>,
    #[serde(borrow)]
    content: Cow<'a, str>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<Cow<'a, str>>,
}

/// The bench's own message content (padding `p` is skipped).
#[derive(Deserialize)]
struct Payload {
    s: u32,
    q: u64,
    t: u64,
    #[allow(dead_code)]
    p: Option<IgnoredAny>,
}

/// Builds the content of message `q` of sender `s` stamped at `t` µs, padded to `bytes`.
pub fn content(s: u32, q: u64, t: u64, bytes: usize) -> String {
    let head = format!("{{\"s\":{s},\"q\":{q},\"t\":{t},\"p\":\"");
    let pad = bytes.saturating_sub(head.len() + 2);
    let mut c = String::with_capacity(head.len() + pad + 2);
    c.push_str(&head);
    c.extend(std::iter::repeat_n('x', pad));
    c.push_str("\"}");
    c
}

impl Receivers {
    pub fn new(run_id: &str) -> Self {
        Receivers {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        hist: histogram(),
                        socket_hist: histogram(),
                        events: 0,
                        measured: 0,
                        warmup: 0,
                        recovered: 0,
                    })
                })
                .collect(),
            prefix: format!("bench-{run_id}-r"),
            warm_end_us: AtomicU64::new(u64::MAX),
            end_us: AtomicU64::new(u64::MAX),
            other_events: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
        }
    }

    /// Whether a message stamped `t` is in the measured window (senders use the same rule).
    pub fn is_measured(&self, t: u64) -> bool {
        t >= self.warm_end_us.load(Ordering::Relaxed) && t < self.end_us.load(Ordering::Relaxed)
    }

    pub fn chat_id(&self, room: u32) -> String {
        format!("{}{room}", self.prefix)
    }

    /// Handles one raw server event of client `client` (the JSON array text) that the kernel
    /// received at `received`, when the read was stamped.
    pub fn on_event(
        &self,
        client: usize,
        state: &Mutex<RecvState>,
        json: &str,
        received: Option<SystemTime>,
    ) {
        if !json.starts_with("[\"chat:message\",") {
            self.other_events.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = now_us();
        // How long the frame waited in the socket and the generator: read on the wall clock
        // (the kernel's), right beside the monotonic `now`, so clock adjustments cannot enter.
        let waited = received.map(|at| {
            SystemTime::now()
                .duration_since(at)
                .map_or(0, |d| d.as_micros() as u64)
        });
        let arrival = Arrival { now, waited };
        let Ok((_, msg)) = serde_json::from_str::<(IgnoredAny, ChatMessage)>(json) else {
            self.parse_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.account(client, state, &msg, Source::Live, arrival);
    }

    /// Accounts for the messages of a `chat:history` answer (oldest first) of client `client`.
    pub fn on_history(&self, client: usize, state: &Mutex<RecvState>, messages: &[Value]) {
        let arrival = Arrival {
            now: now_us(),
            waited: None,
        };
        for m in messages {
            match ChatMessage::deserialize(m) {
                Ok(msg) => self.account(client, state, &msg, Source::History, arrival),
                Err(_) => {
                    self.parse_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn account(
        &self,
        client: usize,
        state: &Mutex<RecvState>,
        msg: &ChatMessage<'_>,
        source: Source,
        arrival: Arrival,
    ) {
        let Some(room) = msg
            .chat_id
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.parse::<u32>().ok())
        else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Ok(p) = serde_json::from_str::<Payload>(&msg.content) else {
            self.parse_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let first = {
            let mut st = lock(state);
            let st = &mut *st;
            let current = msg.epoch.as_deref().is_none_or(|e| st.enter_epoch(room, e));
            if let Some(offset) = msg.offset.filter(|_| current) {
                if source == Source::Live {
                    match st.last_offset.insert(room, offset) {
                        Some(last) if offset <= last => st.offset_regressions += 1,
                        Some(last) if offset > last + 1 => st.offset_gaps += 1,
                        _ => {}
                    }
                }
                let live_again =
                    source == Source::Live && st.live_offsets.entry(room).or_default().set(offset);
                let seen = st.offsets.entry(room).or_default().set(offset);
                let max = st.max_offset.entry(room).or_default();
                *max = (*max).max(offset);
                if seen && !live_again {
                    // The same message again through the other path: a client keeps one copy.
                    st.overlaps += 1;
                    return;
                }
            }
            let track = st
                .tracks
                .entry((u64::from(room) << 32) | u64::from(p.s))
                .or_default();
            if track.received.set(p.q) {
                track.dup += 1;
                false
            } else {
                match track.max_seq {
                    Some(m) if p.q < m => track.reordered += 1,
                    _ => track.max_seq = Some(p.q),
                }
                true
            }
        };
        let measured = self.is_measured(p.t);
        let mut shard = lock(&self.shards[client % SHARDS]);
        if source == Source::Live {
            shard.events += 1;
        }
        if first {
            match (measured, source) {
                (true, Source::Live) => {
                    shard.measured += 1;
                    let latency = arrival.now.saturating_sub(p.t);
                    shard.hist.saturating_record(latency.max(1));
                    if let Some(waited) = arrival.waited {
                        let at_socket = latency.saturating_sub(waited);
                        shard.socket_hist.saturating_record(at_socket.max(1));
                    }
                }
                (true, Source::History) => shard.recovered += 1,
                (false, _) => shard.warmup += 1,
            }
        }
    }

    /// Sum of all `chat:message` events so far (progress line).
    pub fn events(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).events).sum()
    }

    /// Merged delivery histograms (at the read, at the socket) and measured / warm-up counts.
    pub fn merged(&self) -> (Histogram<u64>, Histogram<u64>, u64, u64) {
        let (mut read, mut socket) = (histogram(), histogram());
        let (mut measured, mut warmup) = (0, 0);
        for s in &self.shards {
            let s = lock(s);
            read.add(&s.hist).expect("same bounds");
            socket.add(&s.socket_hist).expect("same bounds");
            measured += s.measured;
            warmup += s.warmup;
        }
        (read, socket, measured, warmup)
    }

    /// Measured messages first received through `chat:history`.
    pub fn recovered(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).recovered).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_padded_and_parsed_back() {
        let c = content(7, 42, 123_456, 200);
        assert_eq!(c.len(), 200);
        let p: Payload = serde_json::from_str(&c).unwrap();
        assert_eq!((p.s, p.q, p.t), (7, 42, 123_456));
        assert!(content(1, 1, 1, 0).len() > 10);
    }

    #[test]
    fn receiver_counts_dup_reorder_and_offsets() {
        let r = Receivers::new("x");
        r.warm_end_us.store(0, Ordering::Relaxed);
        let st = Mutex::new(RecvState::default());
        let ev = |q: u64, off: u64| {
            let m = serde_json::json!({
                "id": "m", "chatId": "bench-x-r3", "senderId": "u", "clientMsgId": null,
                "type": "text", "content": content(5, q, now_us(), 64), "createdAt": "",
                "offset": off, "epoch": "e"
            });
            serde_json::json!(["chat:message", m]).to_string()
        };
        for (q, off) in [(0, 1), (2, 3), (1, 2), (2, 3)] {
            r.on_event(0, &st, &ev(q, off), None);
        }
        r.on_event(0, &st, r#"["presence:online",{"userId":"a"}]"#, None);
        let s = lock(&st);
        let t = &s.tracks[&((3u64 << 32) | 5)];
        assert_eq!((t.dup, t.reordered), (1, 1));
        assert!(t.received.get(0) && t.received.get(1) && t.received.get(2));
        assert_eq!((s.offset_gaps, s.offset_regressions), (1, 1));
        let (_, socket, measured, _) = r.merged();
        assert_eq!(measured, 3);
        assert_eq!(socket.len(), 0, "no stamps, no socket latencies");
        assert_eq!(r.other_events.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn socket_latency_takes_out_the_wait_since_the_kernel_received() {
        let r = Receivers::new("x");
        r.warm_end_us.store(0, Ordering::Relaxed);
        let st = Mutex::new(RecvState::default());
        let m = serde_json::json!({
            "id": "m", "chatId": "bench-x-r1", "senderId": "u", "clientMsgId": null,
            "type": "text", "content": content(2, 0, now_us(), 64), "createdAt": "",
            "offset": 1, "epoch": "e"
        });
        std::thread::sleep(std::time::Duration::from_millis(40));
        // The bytes arrived 30 ms before the read: 10 ms after the send.
        let received = SystemTime::now() - std::time::Duration::from_millis(30);
        r.on_event(
            0,
            &st,
            &serde_json::json!(["chat:message", m]).to_string(),
            Some(received),
        );
        let (read, socket, measured, _) = r.merged();
        assert_eq!((measured, read.len(), socket.len()), (1, 1, 1));
        assert!(read.max() >= 40_000, "read latency {} µs", read.max());
        let at_socket = socket.max();
        assert!(
            (10_000..40_000).contains(&at_socket),
            "socket latency {at_socket} µs"
        );
        assert!(
            read.max() - at_socket >= 29_000,
            "the 30 ms wait is taken out"
        );
    }

    #[test]
    fn history_fills_holes_and_overlaps_are_not_duplicates() {
        let r = Receivers::new("x");
        r.warm_end_us.store(0, Ordering::Relaxed);
        let st = Mutex::new(RecvState::default());
        let msg = |q: u64, off: u64| {
            serde_json::json!({
                "id": "m", "chatId": "bench-x-r1", "senderId": "u", "clientMsgId": null,
                "type": "text", "content": content(2, q, now_us(), 64), "createdAt": "",
                "offset": off, "epoch": "e"
            })
        };
        let live = |q: u64, off: u64| serde_json::json!(["chat:message", msg(q, off)]).to_string();
        // Live 1, 2, then the connection drops; 3 and 4 come back through history, 4 and 5 live.
        r.on_event(0, &st, &live(0, 1), None);
        r.on_event(0, &st, &live(1, 2), None);
        assert_eq!(lock(&st).resume_offset(1), (Some("e".to_owned()), Some(2)));
        r.on_event(0, &st, &live(3, 4), None);
        assert_eq!(lock(&st).offset_holes(), 1);
        r.on_history(0, &st, &[msg(2, 3), msg(3, 4)]);
        r.on_event(0, &st, &live(4, 5), None);
        let s = lock(&st);
        assert_eq!(s.offset_holes(), 0);
        assert_eq!(s.overlaps, 1);
        let t = &s.tracks[&((1u64 << 32) | 2)];
        assert_eq!(t.dup, 0);
        assert!((0..5).all(|q| t.received.get(q)));
        drop(s);
        assert_eq!(r.recovered(), 1);
        // The same offset twice on the live stream is a duplicate.
        r.on_event(0, &st, &live(4, 5), None);
        assert_eq!(lock(&st).tracks[&((1u64 << 32) | 2)].dup, 1);
        // A new epoch (Redis lost the sequence) starts the offsets over without holes.
        let mut m = msg(5, 1);
        m["epoch"] = "f".into();
        r.on_event(
            0,
            &st,
            &serde_json::json!(["chat:message", m]).to_string(),
            None,
        );
        let s = lock(&st);
        // (The one regression is the duplicate above, not the epoch switch.)
        assert_eq!(
            (s.offset_holes(), s.epoch_changes, s.offset_regressions),
            (0, 1, 1)
        );
        assert!(s.tracks[&((1u64 << 32) | 2)].received.get(5));
    }
}
