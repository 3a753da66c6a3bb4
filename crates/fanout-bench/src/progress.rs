//! The progress line on stderr, once a second: connects, sends, ACKs and deliveries so far and
//! the generator's CPU, so that a run going wrong shows it while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::Receivers;
use crate::sys;

/// Counters for the progress line.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_failed: AtomicU64,
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub skipped: AtomicU64,
    /// Index into [`PHASES`] of the phase the run is in.
    pub phase: AtomicU8,
}

/// The phases' names on the progress line.
const PHASES: [&str; 7] = [
    "rooms", "connect", "warm-up", "measure", "drain", "close", "done",
];

/// The task printing the progress line.
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Progress {
    pub fn spawn(counters: &Arc<Counters>, recv: &Arc<Receivers>, clients: usize) -> Progress {
        let stop = CancellationToken::new();
        let task = tokio::spawn(progress(
            Arc::clone(counters),
            Arc::clone(recv),
            clients,
            stop.clone(),
        ));
        Progress { stop, task }
    }

    /// Stops the line without waiting for the task: on the way out with an error.
    pub fn cancel(&self) {
        self.stop.cancel();
    }

    /// Stops the line and waits for the task, so that no progress line comes after this.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Progress line once a second until `stop`.
async fn progress(
    counters: Arc<Counters>,
    recv: Arc<Receivers>,
    clients: usize,
    stop: CancellationToken,
) {
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_cpu, mut last_t, mut last_ev) = (sys::cpu_secs("self"), Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let cpu = sys::cpu_secs("self");
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
        let cpu_pct = match (cpu, last_cpu) {
            (Some(c), Some(l)) => format!("{:.0}%", (c - l) / dt * 100.0),
            _ => "?".into(),
        };
        let ev = recv.events();
        let c = &counters;
        let phase = PHASES[usize::from(c.phase.load(Ordering::Relaxed)).min(PHASES.len() - 1)];
        eprintln!(
            "[{:6.1}s {phase:>7}] conns {}/{clients} (failed {}) | sent {} acked {} nack {} \
             skipped {} | delivered {} ({:.0}/s) | gen cpu {cpu_pct}",
            t0.elapsed().as_secs_f64(),
            c.connected.load(Ordering::Relaxed),
            c.connect_failed.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            c.acked.load(Ordering::Relaxed),
            c.nacked.load(Ordering::Relaxed),
            c.skipped.load(Ordering::Relaxed),
            ev,
            (ev - last_ev) as f64 / dt,
        );
        (last_cpu, last_t, last_ev) = (cpu, now, ev);
    }
}
