//! The account after the drain: each accepted measured send checked against each member of
//! its room, and the senders' and receivers' counts summed for the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::Value;

use crate::connect::{Clients, Supervisors};
use crate::measure::Sent;
use crate::recover::RecoverStats;
use crate::report::ms;
use crate::sender::{ACCEPTED, FAILED, MEASURED};
use crate::setup::Run;
use crate::stats::{histogram, lock};

/// The run's figures, summed over senders and receivers.
pub struct Totals {
    /// Clients whose connection was still open at the end.
    pub still_open: usize,
    pub send: SendTotals,
    pub delivery: DeliveryTotals,
    pub recover_stats: Arc<RecoverStats>,
    /// From noticing a drop to being connected again (`--recover`).
    pub reconnect_ms: Value,
}

/// The senders' figures; measured sends unless named warm-up.
pub struct SendTotals {
    pub sent: u64,
    pub sent_warmup: u64,
    pub acked: u64,
    pub acked_warmup: u64,
    /// Warm-up sends that failed, timed out or errored.
    pub unaccepted_warmup: u64,
    /// Failed ACKs by error code.
    pub nack_codes: BTreeMap<String, u64>,
    pub ack_timeouts: u64,
    pub ack_errors: u64,
    /// Sends due while at `--max-inflight` or while disconnected, not sent.
    pub skipped: u64,
    /// Sent again after a failure (`--recover`).
    pub resent: u64,
    pub ack_hist: Histogram<u64>,
    /// How late sends left relative to their schedule (µs).
    pub lag_hist: Histogram<u64>,
}

/// The receivers' figures over the measured sends.
pub struct DeliveryTotals {
    /// Send to the generator's read of the frame (µs).
    pub deliv_hist: Histogram<u64>,
    /// Send to the kernel's receipt at the client's socket (µs; with receive timestamps only).
    pub socket_hist: Histogram<u64>,
    /// Measured deliveries, first copies only.
    pub measured_deliveries: u64,
    pub warmup_deliveries: u64,
    /// Accepted sends times their room's members.
    pub expected: u64,
    /// The part of `expected` on members connected in the connect phase.
    pub expected_connected: u64,
    /// The part of `expected` on members that never connected: not counted as lost.
    pub unreachable: u64,
    /// Accepted sends that reached a connected member.
    pub received_ok: u64,
    /// Accepted sends that did not reach a connected member.
    pub lost: u64,
    /// Measured sends delivered although their ACK never came.
    pub without_ack: u64,
    /// Measured sends delivered although their ACK was a failure.
    pub after_nack: u64,
    pub dup: u64,
    pub reordered: u64,
    pub offset_gaps: u64,
    pub offset_regressions: u64,
    /// Offsets still missing at the end.
    pub offset_holes: u64,
    /// History messages a receiver already had (`--recover`).
    pub overlaps: u64,
    pub epoch_changes: u64,
    /// Measured messages a receiver first got through `chat:history` (`--recover`).
    pub recovered: u64,
}

/// Stops the reconnects, then counts, for every accepted measured send and every member of its
/// room, whether it arrived; a send that failed yet arrived is counted apart, not as a loss.
pub async fn account(
    run: &Run,
    clients: &Clients,
    supervisors: Supervisors,
    sent: &Sent,
) -> Totals {
    let (plan, recv) = (&run.plan, &run.recv);
    let (slots, states, connected_at_start) =
        (&clients.slots, &clients.states, &clients.connected_at_start);
    run.counters.phase.store(5, Ordering::Relaxed);
    let recover_stats = supervisors.stop().await;
    let still_open = slots.iter().filter(|s| s.open().is_some()).count();
    let (deliv_hist, socket_hist, measured_deliveries, warmup_deliveries) = recv.merged();
    let mut ack_hist = histogram();
    let mut lag_hist = histogram();
    let mut nack_codes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sent_m, mut sent_w, mut acc_m, mut acc_w) = (0u64, 0u64, 0u64, 0u64);
    let (mut ack_timeouts, mut ack_errors, mut skipped, mut unaccepted_w) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut expected, mut expected_connected, mut lost, mut received_ok) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut unreachable, mut without_ack, mut after_nack, mut dup, mut reordered) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (k, r) in &sent.results {
        ack_hist.add(&r.ack_hist).expect("same bounds");
        lag_hist.add(&r.lag_hist).expect("same bounds");
        for (c, n) in &r.nack_codes {
            *nack_codes.entry(c.clone()).or_default() += n;
        }
        sent_m += r.sent_measured;
        sent_w += r.sent_warmup;
        acc_m += r.accepted_measured;
        acc_w += r.accepted_warmup;
        ack_timeouts += r.ack_timeouts;
        unaccepted_w += r.unaccepted_warmup;
        ack_errors += r.ack_errors;
        skipped += r.skipped;
        let members = &plan.members[r.room as usize];
        expected += r.accepted_measured * members.len() as u64;
        let key = (u64::from(r.room) << 32) | *k as u64;
        for &m in members {
            if !connected_at_start[m as usize] {
                unreachable += r.accepted_measured;
                continue;
            }
            expected_connected += r.accepted_measured;
            let st = lock(&states[m as usize]);
            let track = st.tracks.get(&key);
            for (q, &s) in r.status.iter().enumerate() {
                let got = track.is_some_and(|t| t.received.get(q as u64));
                if s & MEASURED != 0 && s & ACCEPTED != 0 {
                    if got {
                        received_ok += 1;
                    } else {
                        lost += 1;
                    }
                } else if got && s & MEASURED != 0 {
                    if s & FAILED != 0 {
                        after_nack += 1;
                    } else {
                        without_ack += 1;
                    }
                }
            }
            if let Some(t) = track {
                dup += t.dup;
                reordered += t.reordered;
            }
        }
    }
    let (mut offset_gaps, mut offset_regressions) = (0u64, 0u64);
    let (mut offset_holes, mut overlaps, mut epoch_changes) = (0u64, 0u64, 0u64);
    for s in states.iter() {
        let s = lock(s);
        offset_gaps += s.offset_gaps;
        offset_regressions += s.offset_regressions;
        offset_holes += s.offset_holes();
        overlaps += s.overlaps;
        epoch_changes += s.epoch_changes;
    }
    let recovered = recv.recovered();
    let resent: u64 = sent.results.iter().map(|(_, r)| r.resent).sum();
    let reconnect_ms = ms(&lock(&recover_stats.reconnect_hist));
    Totals {
        still_open,
        send: SendTotals {
            sent: sent_m,
            sent_warmup: sent_w,
            acked: acc_m,
            acked_warmup: acc_w,
            unaccepted_warmup: unaccepted_w,
            nack_codes,
            ack_timeouts,
            ack_errors,
            skipped,
            resent,
            ack_hist,
            lag_hist,
        },
        delivery: DeliveryTotals {
            deliv_hist,
            socket_hist,
            measured_deliveries,
            warmup_deliveries,
            expected,
            expected_connected,
            unreachable,
            received_ok,
            lost,
            without_ack,
            after_nack,
            dup,
            reordered,
            offset_gaps,
            offset_regressions,
            offset_holes,
            overlaps,
            epoch_changes,
            recovered,
        },
        recover_stats,
        reconnect_ms,
    }
}
