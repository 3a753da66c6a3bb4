//! The send phase: the senders' schedule, and the measured window between the warm-up and the
//! drain, with the CPU and memory figures taken at its edges.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use crate::connect::Clients;
use crate::sender::{Schedule, SenderCtx, SenderResult, run_sender};
use crate::setup::Run;
use crate::stats::now_us;
use crate::sys;

/// What the send phase did.
pub struct Sent {
    /// (sender number, what it did) of each sender whose client was connected.
    pub results: Vec<(usize, SenderResult)>,
    /// Senders whose client did not connect: they sent nothing.
    pub senders_unconnected: u64,
    /// None when no client connected: then nothing was sent and nothing measured.
    pub window: Option<Window>,
}

/// The measured window, as this process and the watched ones saw it.
pub struct Window {
    pub start: CpuSnapshot,
    pub end: CpuSnapshot,
    /// Wall-clock length of the window.
    pub secs: f64,
    /// RSS of this process and the watched ones at the end of the measured window.
    pub gen_rss: Option<f64>,
    pub watched_rss: Vec<Option<f64>>,
}

/// CPU times of this process and of the watched ones, and the machine's busy/total ticks.
pub struct CpuSnapshot {
    pub this: Option<sys::CpuTimes>,
    /// In the order of `--watch-pid`.
    pub watched: Vec<Option<sys::CpuTimes>>,
    pub machine: Option<sys::MachineCpu>,
}

impl CpuSnapshot {
    fn take(pids: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            this: sys::cpu_times("self"),
            watched: pids
                .iter()
                .map(|p| sys::cpu_times(&p.to_string()))
                .collect(),
            machine: sys::machine_cpu(),
        }
    }
}

/// Starts the senders, takes the CPU figures at the edges of the measured window, waits for
/// the senders to finish and then `--grace` for the last deliveries.
pub async fn send(run: &Run, clients: &Clients) -> Result<Sent, String> {
    let (args, recv, plan, counters) = (&run.args, &run.recv, &run.plan, &run.counters);
    let (slots, connected_at_start) = (&clients.slots, &clients.connected_at_start);
    let mut sent = Sent {
        results: Vec::new(),
        senders_unconnected: 0,
        window: None,
    };
    if clients.connected == 0 {
        return Ok(sent);
    }
    // Let connect-time presence traffic settle.
    sleep(Duration::from_millis(500)).await;
    let interval = if args.senders > 0 {
        Duration::from_secs_f64(args.senders as f64 / args.rate)
    } else {
        Duration::from_secs(1)
    };
    let t0 = Instant::now() + Duration::from_millis(50);
    let warm_end = t0 + interval + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let to_us =
        |i: Instant| now_us() + i.saturating_duration_since(Instant::now()).as_micros() as u64;
    recv.warm_end_us.store(to_us(warm_end), Ordering::Relaxed);
    recv.end_us.store(to_us(end), Ordering::Relaxed);
    counters.phase.store(2, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for (k, &(client, room)) in plan.senders.iter().enumerate() {
        if !connected_at_start[client as usize] {
            sent.senders_unconnected += 1;
            continue;
        }
        let c = Arc::clone(&slots[client as usize]);
        // Stagger the senders' first sends over one interval.
        let start = t0 + interval.mul_f64(k as f64 / args.senders as f64);
        let sched = Schedule {
            start,
            end,
            interval,
        };
        let cx = SenderCtx {
            k: k as u32,
            room,
            chat_id: recv.chat_id(room),
            run_id: run.run_id.clone(),
            payload_bytes: args.payload_bytes,
            max_inflight: args.max_inflight,
            ack_timeout: Duration::from_secs_f64(args.ack_timeout),
            recover: args.recover,
            recv: Arc::clone(recv),
        };
        tasks.push((
            k,
            tokio::spawn(run_sender(c, cx, sched, Arc::clone(counters))),
        ));
    }
    // CPU of this process and the watched ones over the measured window.
    sleep_until(warm_end).await;
    counters.phase.store(3, Ordering::Relaxed);
    let cpu_a = CpuSnapshot::take(&args.watch_pids);
    let wall_a = Instant::now();
    sleep_until(end).await;
    let cpu_b = CpuSnapshot::take(&args.watch_pids);
    let gen_rss = sys::rss_mib("self");
    let watched_rss = args
        .watch_pids
        .iter()
        .map(|p| sys::rss_mib(&p.to_string()))
        .collect();
    sent.window = Some(Window {
        start: cpu_a,
        end: cpu_b,
        secs: wall_a.elapsed().as_secs_f64(),
        gen_rss,
        watched_rss,
    });
    counters.phase.store(4, Ordering::Relaxed);
    for (k, t) in tasks {
        match t.await {
            Ok(r) => sent.results.push((k, r)),
            Err(e) => return Err(format!("sender {k} failed: {e}")),
        }
    }
    sleep(Duration::from_secs_f64(args.grace)).await;
    Ok(sent)
}
