//! One sending client: `chat:send` at its share of `--rate` on a fixed schedule, every ACK
//! timed and every sequence number's fate kept, so that the account can tell a lost message
//! from one that was never accepted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fanout_client::{Client, ClientError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until};

use crate::progress::Counters;
use crate::recover::Slot;
use crate::stats::{self, Receivers, histogram, now_us};

/// Per-sequence status of a sender's messages: bit flags in one byte per send, since the
/// status of every send is kept until the account.
pub const ACCEPTED: u8 = 1;
pub const FAILED: u8 = 2;
pub const MEASURED: u8 = 0x80;

/// What one sender did.
pub struct SenderResult {
    pub room: u32,
    /// Status of each sequence number: ACCEPTED / FAILED / 0 (no ACK), | MEASURED.
    pub status: Vec<u8>,
    pub sent_measured: u64,
    pub sent_warmup: u64,
    pub accepted_measured: u64,
    pub accepted_warmup: u64,
    /// Failed ACKs of measured sends, by error code.
    pub nack_codes: HashMap<String, u64>,
    /// Measured sends whose ACK did not come in time / whose connection failed.
    pub ack_timeouts: u64,
    pub ack_errors: u64,
    /// Warm-up sends that failed, timed out or errored.
    pub unaccepted_warmup: u64,
    pub skipped: u64,
    /// Measured sends sent again after a failure (--recover).
    pub resent: u64,
    pub ack_hist: Histogram<u64>,
    /// How late sends left relative to their schedule (µs).
    pub lag_hist: Histogram<u64>,
}

/// Timing of the send phase.
#[derive(Clone, Copy)]
pub struct Schedule {
    /// This sender's first send (senders are staggered over one interval).
    pub start: Instant,
    /// No send is due from here on; resends with `--recover` go on for up to three ACK timeouts more.
    pub end: Instant,
    /// Between two sends of this sender.
    pub interval: Duration,
}

/// What a sender needs besides its connection and its schedule.
pub struct SenderCtx {
    /// The sender's number: in its messages' content and clientMsgIds.
    pub k: u32,
    pub room: u32,
    pub chat_id: String,
    pub run_id: String,
    pub payload_bytes: usize,
    pub max_inflight: usize,
    pub ack_timeout: Duration,
    pub recover: bool,
    /// Decides, from the send stamp, whether a message is measured (same rule as receivers).
    pub recv: Arc<Receivers>,
}

/// Sends on schedule until `sched.end`, then waits for the ACKs in flight (and with
/// `--recover` resends what failed, for a while), and returns what happened to every send.
pub async fn run_sender(
    slot: Arc<Slot>,
    cx: SenderCtx,
    sched: Schedule,
    counters: Arc<Counters>,
) -> SenderResult {
    let mut r = SenderResult {
        room: cx.room,
        status: Vec::new(),
        sent_measured: 0,
        sent_warmup: 0,
        accepted_measured: 0,
        accepted_warmup: 0,
        nack_codes: HashMap::new(),
        unaccepted_warmup: 0,
        ack_timeouts: 0,
        ack_errors: 0,
        skipped: 0,
        resent: 0,
        ack_hist: histogram(),
        lag_hist: histogram(),
    };
    let mut inflight = FuturesUnordered::new();
    // With --recover: sends to (re)send, in sequence order, with their original clientMsgId.
    let mut retry: BTreeMap<u64, (bool, Value)> = BTreeMap::new();
    // Resending stops here, so a cluster that never recovers still ends the run.
    let give_up = sched.end + cx.ack_timeout * 3;
    // Senders are staggered over one interval so the total rate is smooth.
    let mut next = sched.start;
    loop {
        if next >= sched.end
            && inflight.is_empty()
            && (retry.is_empty() || Instant::now() >= give_up)
        {
            break;
        }
        if cx.recover
            && let Some(client) = slot.open()
        {
            while inflight.len() < cx.max_inflight
                && let Some((q, (measured, data))) = retry.pop_first()
            {
                if measured {
                    r.resent += 1;
                }
                inflight.push(send(Arc::clone(&client), q, measured, data, cx.ack_timeout));
            }
        }
        tokio::select! {
            biased;
            Some((q, measured, data, res, lat)) = inflight.next(), if !inflight.is_empty() => {
                let res: Result<Value, ClientError> = res;
                let lat: Duration = lat;
                let q: u64 = q;
                // What a resilient client retries: everything but a malformed request (a chat
                // whose membership Redis lost is FORBIDDEN until the backend restores it).
                let retryable = cx.recover && match &res {
                    Ok(ack) => ack["success"] != true && ack["error"]["code"] != "VALIDATION_ERROR",
                    Err(_) => true,
                };
                if retryable && Instant::now() < give_up {
                    retry.insert(q, (measured, data));
                    continue;
                }
                match res {
                    Ok(ack) if ack["success"] == true => {
                        r.status[q as usize] |= ACCEPTED;
                        counters.acked.fetch_add(1, Ordering::Relaxed);
                        if measured {
                            r.accepted_measured += 1;
                            r.ack_hist.saturating_record((lat.as_micros() as u64).max(1));
                        } else {
                            r.accepted_warmup += 1;
                        }
                    }
                    Ok(ack) => {
                        r.status[q as usize] |= FAILED;
                        counters.nacked.fetch_add(1, Ordering::Relaxed);
                        let code = ack["error"]["code"].as_str().unwrap_or("UNKNOWN").to_owned();
                        if measured {
                            *r.nack_codes.entry(code).or_default() += 1;
                        } else {
                            r.unaccepted_warmup += 1;
                        }
                    }
                    Err(_) if !measured => r.unaccepted_warmup += 1,
                    Err(ClientError::Timeout) => r.ack_timeouts += 1,
                    Err(_) => r.ack_errors += 1,
                }
            }
            _ = sleep(Duration::from_millis(20)), if cx.recover && !retry.is_empty() => {}
            _ = sleep_until(next), if next < sched.end => {
                let now = Instant::now();
                let client = slot.open();
                while next <= now && next < sched.end {
                    let lag = now.saturating_duration_since(next);
                    next += sched.interval;
                    let down = client.is_none() || inflight.len() >= cx.max_inflight;
                    if down && !cx.recover {
                        if cx.recv.is_measured(now_us()) {
                            r.skipped += 1;
                        }
                        counters.skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    r.lag_hist.saturating_record((lag.as_micros() as u64).max(1));
                    let q = r.status.len() as u64;
                    let t = now_us();
                    let measured = cx.recv.is_measured(t);
                    r.status.push(if measured { MEASURED } else { 0 });
                    if measured {
                        r.sent_measured += 1;
                    } else {
                        r.sent_warmup += 1;
                    }
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    let data = json!({
                        "chatId": cx.chat_id,
                        "content": stats::content(cx.k, q, t, cx.payload_bytes),
                        "clientMsgId": format!("{}-{}-{q}", cx.run_id, cx.k),
                    });
                    match &client {
                        Some(c) if !down => {
                            inflight.push(send(Arc::clone(c), q, measured, data, cx.ack_timeout));
                        }
                        // --recover: a real client queues what it writes while offline.
                        _ => {
                            retry.insert(q, (measured, data));
                        }
                    }
                }
            }
        }
    }
    r
}

/// One `chat:send` with its ACK: (seq, measured, the data for a resend, result, ACK latency).
async fn send(
    client: Arc<Client>,
    q: u64,
    measured: bool,
    data: Value,
    ack_timeout: Duration,
) -> (u64, bool, Value, Result<Value, ClientError>, Duration) {
    let t0 = std::time::Instant::now();
    let res = client
        .emit_with_ack("chat:send", data.clone(), ack_timeout)
        .await;
    (q, measured, data, res, t0.elapsed())
}
