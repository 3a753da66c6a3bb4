//! `fanout-bench`: a load generator for a fanout cluster, speaking Engine.IO v4 / Socket.IO over
//! websocket through [`fanout_client`] (tokio-tungstenite underneath, no heavy client crate).
//!
//! One run: create rooms through the server API (`POST /api/v1/chats`, fresh chat ids per run),
//! connect `--clients` sockets round-robin over `--url`s (spread over source addresses of
//! 127.0.0.0/8 when there are more than one source port range can hold), let `--senders` of them
//! send `chat:send` with an ACK at a total `--rate`, and let every client account for the
//! `chat:message` events it receives. Each message's content carries its sender, sequence
//! number and send time, so receivers measure end-to-end latency and count lost, duplicated and
//! reordered messages per (sender, room). Messages sent during `--warmup` are excluded from the
//! figures. Traffic goes only to loopback URLs unless `--allow-remote`.
//!
//! Output: a progress line per second on stderr, a human summary on stdout, and with `--out`
//! a JSON file with every figure and the exact command line.

mod admin;
mod args;
mod recover;
mod sender;
mod stats;
mod sys;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use fanout_client::{Client, ConnectOptions, RawEventHandler};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use args::{Args, validate};
use recover::{Connect, RecoverStats, Slot, Supervisor};
use sender::{ACCEPTED, FAILED, MEASURED, Schedule, SenderCtx, run_sender};
use stats::{Receivers, RecvState, histogram, lock, now_us};

/// Who is in which room and who sends where.
struct Plan {
    /// Client indexes of each room's members.
    members: Vec<Vec<u32>>,
    /// (client, room) of each sender.
    senders: Vec<(u32, u32)>,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let rooms = a.rooms.unwrap_or(a.clients.div_ceil(a.room_size));
        let members = (0..rooms)
            .map(|r| {
                (0..a.room_size)
                    .map(|j| ((r * a.room_size + j) % a.clients) as u32)
                    .collect()
            })
            .collect();
        let senders = (0..a.senders)
            .map(|k| {
                let room = k % rooms;
                // Shifted by k so that consecutive senders sit on different nodes (clients are
                // spread round-robin over the URLs), and distinct within a room.
                let j = (k / rooms + k) % a.room_size;
                ((((room * a.room_size) + j) % a.clients) as u32, room as u32)
            })
            .collect();
        Plan { members, senders }
    }
}

fn user_id(client: u32) -> String {
    format!("bench-u{client}")
}

/// Counters for the progress line.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connect_failed: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    skipped: AtomicU64,
    phase: AtomicU8,
}

const PHASES: [&str; 7] = [
    "rooms", "connect", "warm-up", "measure", "drain", "close", "done",
];

/// A histogram's figures in milliseconds.
fn ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "count": 0 });
    }
    let f = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "mean": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        "min": f(h.min()),
        "p50": f(h.value_at_quantile(0.50)),
        "p90": f(h.value_at_quantile(0.90)),
        "p99": f(h.value_at_quantile(0.99)),
        "p999": f(h.value_at_quantile(0.999)),
        "max": f(h.max()),
    })
}

fn fmt_ms(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// Machine facts for the report.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    json!({
        "nproc": sys::nproc(),
        "cpu_model": model,
        "mem_total_gib": mem_kb.map(|kb| (kb as f64 / 1048576.0 * 10.0).round() / 10.0),
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = validate(&args) {
        eprintln!("fanout-bench: {e}");
        return ExitCode::from(2);
    }
    let threads = args.threads.unwrap_or_else(sys::nproc).max(1);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fanout-bench: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args, threads)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fanout-bench: {e}");
            ExitCode::from(1)
        }
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

/// CPU times of this process and of the watched ones, and the machine's busy/total ticks.
type CpuSnapshot = (
    Option<sys::CpuTimes>,
    Vec<Option<sys::CpuTimes>>,
    Option<sys::MachineCpu>,
);

fn cpu_snapshot(pids: &[u32]) -> CpuSnapshot {
    (
        sys::cpu_times("self"),
        pids.iter()
            .map(|p| sys::cpu_times(&p.to_string()))
            .collect(),
        sys::machine_cpu(),
    )
}

async fn run(args: Args, threads: usize) -> Result<(), String> {
    now_us(); // fixes the time base
    let command: Vec<String> = std::env::args().collect();
    let cpu_start = sys::cpu_secs("self");
    let wall_start = Instant::now();
    let started_unix = fanout::auth::now_secs();

    // --- limits and source addresses
    let nofile = sys::raise_nofile(args.clients as u64 + 1024);
    if nofile.soft < args.clients as u64 + 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {} (hard {}), too low for {} clients; raise the hard limit \
             (ulimit -Hn; needs CAP_SYS_RESOURCE) or lower --clients",
            nofile.soft, nofile.hard, args.clients
        ));
    }
    let ports = sys::ephemeral_ports();
    let usable = ports * 9 / 10;
    let source_ips = if args.source_ips == 0 {
        (args.clients as u64).div_ceil(usable).max(1) as u32
    } else {
        args.source_ips
    };
    if args.clients as u64 > u64::from(source_ips) * usable {
        eprintln!(
            "fanout-bench: warning: {} clients over {source_ips} source address(es) with {ports} \
             ephemeral ports each: connects will fail for lack of ports",
            args.clients
        );
    }

    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_owned());
    let recv = Arc::new(Receivers::new(&run_id));
    let plan = Plan::new(&args);
    let rooms = plan.members.len();
    let counters = Arc::new(Counters::default());
    let admin = match &args.admin_url {
        Some(url) => {
            let u = sys::parse_url(url)?;
            Some(admin::Admin {
                host: u.host,
                port: u.port,
                prefix: u.path,
                api_key: args.api_key.clone(),
            })
        }
        None => None,
    };
    eprintln!(
        "fanout-bench: run {run_id}: {} clients over {} node(s), {rooms} rooms of {}, {} senders \
         at {} msg/s total, {} B payloads, warm-up {}s, measure {}s; nofile {}/{}, {source_ips} \
         source address(es), {threads} worker threads",
        args.clients,
        args.urls.len(),
        args.room_size,
        args.senders,
        args.rate,
        args.payload_bytes,
        args.warmup,
        args.duration,
        nofile.soft,
        nofile.hard
    );

    let stop_progress = CancellationToken::new();
    let progress_task = tokio::spawn(progress(
        Arc::clone(&counters),
        Arc::clone(&recv),
        args.clients,
        stop_progress.clone(),
    ));

    // --- rooms
    let setup_start = Instant::now();
    let created: Vec<Result<u32, String>> = stream::iter(
        admin
            .iter()
            .flat_map(|a| (0..rooms as u32).map(move |r| (a, r))),
    )
    .map(|(admin, r)| {
        let recv = &recv;
        let plan = &plan;
        async move {
            let members: Vec<String> = plan.members[r as usize]
                .iter()
                .map(|&c| user_id(c))
                .collect();
            let body = json!({ "chatId": recv.chat_id(r), "members": members });
            match admin.call("POST", "/api/v1/chats", Some(&body)).await {
                Ok((201, _)) => Ok(r),
                Ok((status, body)) => Err(format!("create room {r}: {status} {body}")),
                Err(e) => Err(format!("create room {r}: {e}")),
            }
        }
    })
    .buffer_unordered(16)
    .collect()
    .await;
    let created_rooms: Vec<u32> = created
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    if let Some(Err(e)) = created.iter().find(|r| r.is_err()) {
        stop_progress.cancel();
        if let Some(admin) = &admin {
            delete_rooms(admin, &recv, &created_rooms).await;
        }
        return Err(e.clone());
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();

    // --- connect
    counters.phase.store(1, Ordering::Relaxed);
    let exp = fanout::auth::now_secs()
        + (args.warmup + args.duration + args.grace + args.connect_budget + args.ack_timeout)
            as u64
        + 3600;
    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_budget);
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    // tungstenite zero-fills its read buffer up to this size before every read, including the
    // reads that find nothing: at 8 KiB that memset was the generator's largest single cost
    // (6% of its CPU at 50 000 deliveries/s). One message fits. The size is also the most one
    // read takes, so with --recover, whose chat:history answers are frames of tens of KB, the
    // reads stay at 8 KiB.
    let read_buffer = if args.recover {
        8 * 1024
    } else {
        (args.payload_bytes + 512).next_power_of_two().max(1024)
    };
    let rx_timestamps = !args.no_rx_timestamps;
    let states: Vec<Arc<Mutex<RecvState>>> = (0..args.clients)
        .map(|_| Arc::new(Mutex::new(RecvState::default())))
        .collect();
    // One connect function per client: the first connect and --recover's reconnects.
    let connectors: Vec<Connect> = (0..args.clients)
        .map(|i| {
            let token = fanout::auth::mint_hs256(&args.jwt_secret, &user_id(i as u32), exp, None)
                .map_err(|e| format!("mint token: {e}"));
            let urls = args.urls.clone();
            let local_addr = (source_ips > 1).then(|| sys::source_ip(i as u32 % source_ips));
            let (recv, state) = (Arc::clone(&recv), Arc::clone(&states[i]));
            let connect: Connect = Arc::new(move |attempt: u32| {
                let token = token.clone();
                let url = urls[(i + attempt as usize) % urls.len()].clone();
                let (recv, state) = (Arc::clone(&recv), Arc::clone(&state));
                Box::pin(async move {
                    let handler = RawEventHandler::new(move |text: &str, received| {
                        recv.on_event(i, &state, text, received);
                        true
                    });
                    let opts = ConnectOptions {
                        auth: Some(json!({ "token": token? })),
                        connect_timeout: Some(connect_timeout),
                        local_addr,
                        tcp_nodelay: true,
                        ws_config: Some(WebSocketConfig::default().read_buffer_size(read_buffer)),
                        raw_events: Some(handler),
                        rx_timestamps,
                        ..Default::default()
                    };
                    Client::connect(&url, opts).await.map_err(|e| e.to_string())
                })
            });
            connect
        })
        .collect();
    let connect_start = Instant::now();
    let results: Vec<(usize, Result<Client, String>, Duration)> = stream::iter(0..args.clients)
        .map(|i| {
            let (connectors, counters) = (&connectors, &counters);
            async move {
                let t0 = Instant::now();
                let res = match timeout_at(connect_deadline, connectors[i](0)).await {
                    Ok(res) => res,
                    Err(_) => Err("connect budget exhausted".to_owned()),
                };
                match &res {
                    Ok(_) => counters.connected.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counters.connect_failed.fetch_add(1, Ordering::Relaxed),
                };
                (i, res, t0.elapsed())
            }
        })
        .buffer_unordered(args.connect_concurrency)
        .collect()
        .await;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let slots: Vec<Arc<Slot>> = (0..args.clients).map(|_| Arc::default()).collect();
    let mut connected_at_start = vec![false; args.clients];
    let mut connect_hist = histogram();
    let mut connect_errors: BTreeMap<String, u64> = BTreeMap::new();
    for (i, res, lat) in results {
        match res {
            Ok(c) => {
                connect_hist.saturating_record((lat.as_micros() as u64).max(1));
                slots[i].set(Arc::new(c));
                connected_at_start[i] = true;
            }
            Err(e) => {
                // Group errors by their text without numbers (ports, addresses).
                let key: String = e
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .take(120)
                    .collect();
                *connect_errors.entry(key).or_default() += 1;
            }
        }
    }
    let connected = connected_at_start.iter().filter(|&&c| c).count();
    eprintln!(
        "fanout-bench: connected {connected}/{} in {connect_secs:.2}s ({:.0}/s)",
        args.clients,
        connected as f64 / connect_secs.max(1e-6)
    );
    for (e, n) in &connect_errors {
        eprintln!("fanout-bench:   connect error x{n}: {e}");
    }

    // --- join (for servers that do not join members at connect)
    let (mut joins_ok, mut join_failures) = (0u64, BTreeMap::<String, u64>::new());
    let mut rooms_of: Vec<Vec<u32>> = vec![Vec::new(); args.clients];
    for (r, members) in plan.members.iter().enumerate() {
        for &m in members {
            rooms_of[m as usize].push(r as u32);
        }
    }
    let join_start = Instant::now();
    if args.join {
        let jobs: Vec<(Arc<Client>, u32)> = slots
            .iter()
            .zip(&rooms_of)
            .filter_map(|(c, rs)| c.open().map(|c| (c, rs)))
            .flat_map(|(c, rs)| rs.iter().map(move |&r| (Arc::clone(&c), r)))
            .collect();
        let timeout = Duration::from_secs_f64(args.ack_timeout);
        let outcomes: Vec<Result<(), String>> = stream::iter(jobs)
            .map(|(c, r)| {
                let chat_id = recv.chat_id(r);
                async move {
                    match c
                        .emit_with_ack("chat:join", json!({ "chatId": chat_id }), timeout)
                        .await
                    {
                        Ok(ack) if ack["success"] == true => Ok(()),
                        Ok(ack) => Err(ack["error"]["code"]
                            .as_str()
                            .unwrap_or("UNKNOWN")
                            .to_owned()),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .buffer_unordered(args.connect_concurrency)
            .collect()
            .await;
        for o in outcomes {
            match o {
                Ok(()) => joins_ok += 1,
                Err(e) => *join_failures.entry(e).or_default() += 1,
            }
        }
        eprintln!(
            "fanout-bench: {joins_ok} joins in {:.2}s, failed {join_failures:?}",
            join_start.elapsed().as_secs_f64()
        );
    }
    let join_secs = join_start.elapsed().as_secs_f64();

    // --- keep clients connected (--recover)
    let recover_stats = Arc::new(RecoverStats::default());
    let stop_supervisors = CancellationToken::new();
    let supervisors: Vec<_> = (0..args.clients)
        .filter(|&i| args.recover && connected_at_start[i])
        .map(|i| {
            let sup = Supervisor {
                client: i,
                slot: Arc::clone(&slots[i]),
                connect: Arc::clone(&connectors[i]),
                rooms: rooms_of[i].clone(),
                join: args.join,
                recv: Arc::clone(&recv),
                state: Arc::clone(&states[i]),
                stats: Arc::clone(&recover_stats),
                ack_timeout: Duration::from_secs_f64(args.ack_timeout),
            };
            tokio::spawn(sup.run(stop_supervisors.clone()))
        })
        .collect();

    // --- send
    let mut sender_results = Vec::new();
    let mut senders_unconnected = 0u64;
    let mut window_cpu = None;
    // RSS of this process and the watched ones at the end of the measured window.
    let mut gen_rss = None;
    let mut watched_rss: Vec<Option<f64>> = Vec::new();
    if connected > 0 {
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
                senders_unconnected += 1;
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
                run_id: run_id.clone(),
                payload_bytes: args.payload_bytes,
                max_inflight: args.max_inflight,
                ack_timeout: Duration::from_secs_f64(args.ack_timeout),
                recover: args.recover,
                recv: Arc::clone(&recv),
            };
            tasks.push((
                k,
                tokio::spawn(run_sender(c, cx, sched, Arc::clone(&counters))),
            ));
        }
        // CPU of this process and the watched ones over the measured window.
        sleep_until(warm_end).await;
        counters.phase.store(3, Ordering::Relaxed);
        let cpu_a = cpu_snapshot(&args.watch_pids);
        let wall_a = Instant::now();
        sleep_until(end).await;
        let cpu_b = cpu_snapshot(&args.watch_pids);
        gen_rss = sys::rss_mib("self");
        watched_rss = args
            .watch_pids
            .iter()
            .map(|p| sys::rss_mib(&p.to_string()))
            .collect();
        window_cpu = Some((cpu_a, cpu_b, wall_a.elapsed().as_secs_f64()));
        counters.phase.store(4, Ordering::Relaxed);
        for (k, t) in tasks {
            match t.await {
                Ok(r) => sender_results.push((k, r)),
                Err(e) => return Err(format!("sender {k} failed: {e}")),
            }
        }
        sleep(Duration::from_secs_f64(args.grace)).await;
    }

    // --- account
    counters.phase.store(5, Ordering::Relaxed);
    stop_supervisors.cancel();
    for s in supervisors {
        let _ = s.await;
    }
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
    for (k, r) in &sender_results {
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
    for s in &states {
        let s = lock(s);
        offset_gaps += s.offset_gaps;
        offset_regressions += s.offset_regressions;
        offset_holes += s.offset_holes();
        overlaps += s.overlaps;
        epoch_changes += s.epoch_changes;
    }
    let recovered = recv.recovered();
    let resent: u64 = sender_results.iter().map(|(_, r)| r.resent).sum();
    let reconnect_ms = ms(&lock(&recover_stats.reconnect_hist));

    // --- close
    stop_progress.cancel();
    let _ = progress_task.await;
    let close_start = Instant::now();
    stream::iter(slots.iter().filter_map(|s| s.take()))
        .for_each_concurrent(512, |c| async move {
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        })
        .await;
    let close_secs = close_start.elapsed().as_secs_f64();
    if let (false, Some(admin)) = (args.keep_rooms, &admin) {
        delete_rooms(admin, &recv, &created_rooms).await;
    }
    let cpu_end = sys::cpu_secs("self");
    let wall_total = wall_start.elapsed().as_secs_f64();

    // --- report
    let (gen_window, gen_window_sys, watched, machine_busy) = match &window_cpu {
        Some(((a_self, a_pids, a_m), (b_self, b_pids, b_m), secs)) => {
            // % of one core that `part` of a process's CPU time took over the window.
            let share = |a: &Option<sys::CpuTimes>,
                         b: &Option<sys::CpuTimes>,
                         part: fn(&sys::CpuTimes) -> f64| {
                let (a, b) = (a.as_ref()?, b.as_ref()?);
                Some(((part(b) - part(a)) / secs * 1000.0).round() / 10.0)
            };
            let pct = |a: &_, b: &_| share(a, b, sys::CpuTimes::total);
            let pct_sys = |a: &_, b: &_| share(a, b, |t| t.sys);
            let watched: Vec<Value> = args
                .watch_pids
                .iter()
                .zip(a_pids.iter().zip(b_pids))
                .zip(&watched_rss)
                .map(|((pid, (a, b)), rss)| {
                    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|s| s.trim().to_owned())
                        .ok();
                    json!({
                        "pid": pid, "comm": name, "cpu_pct_of_one_core": pct(a, b),
                        "cpu_sys_pct_of_one_core": pct_sys(a, b), "rss_mib": rss,
                    })
                })
                .collect();
            let machine = match (a_m, b_m) {
                (Some(a), Some(b)) if b.total > a.total => {
                    let share = |x: f64| (x / (b.total - a.total) * 1000.0).round() / 10.0;
                    Some((share(b.busy - a.busy), share(b.steal - a.steal)))
                }
                _ => None,
            };
            (
                pct(a_self, b_self),
                pct_sys(a_self, b_self),
                watched,
                machine,
            )
        }
        None => (None, None, Vec::new(), None),
    };
    let gen_total = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    let deliveries_per_sec = measured_deliveries as f64 / args.duration;
    let ack = ms(&ack_hist);
    let deliv = ms(&deliv_hist);
    let at_socket = ms(&socket_hist);
    let lag = ms(&lag_hist);
    // Two ways the generator can distort the figures: it is CPU-bound itself, or it did not get
    // the CPU to keep its send schedule (the machine is saturated, e.g. by the server).
    let gen_cpu_bound = gen_window.is_some_and(|p| p > 85.0 * threads as f64);
    let schedule_late = !lag_hist.is_empty() && lag_hist.value_at_quantile(0.99) > 50_000;
    let report = json!({
        "command": command,
        "run_id": run_id,
        "started_unix": started_unix,
        "machine": machine(),
        "config": {
            "urls": args.urls, "admin_url": args.admin_url, "clients": args.clients,
            "rooms": rooms, "room_size": args.room_size, "senders": args.senders,
            "rate": args.rate, "payload_bytes": args.payload_bytes, "warmup_secs": args.warmup,
            "duration_secs": args.duration, "grace_secs": args.grace,
            "max_inflight": args.max_inflight, "threads": threads,
        },
        "limits": { "nofile_soft": nofile.soft, "nofile_hard": nofile.hard,
                    "source_ips": source_ips, "ephemeral_ports_per_ip": ports },
        "setup": { "rooms_created": created_rooms.len(), "secs": setup_secs },
        "join": { "enabled": args.join, "ok": joins_ok, "failed": join_failures,
                  "secs": join_secs },
        "connect": {
            "clients": args.clients, "connected": connected,
            "failed": args.clients - connected, "errors": connect_errors,
            "secs": connect_secs, "rate_per_sec": connected as f64 / connect_secs.max(1e-6),
            "latency_ms": ms(&connect_hist),
            "still_open_at_end": still_open,
        },
        "send": {
            "senders_started": sender_results.len(), "senders_unconnected": senders_unconnected,
            "target_rate": args.rate,
            "sent": sent_m, "sent_warmup": sent_w,
            "acked": acc_m, "acked_warmup": acc_w, "unaccepted_warmup": unaccepted_w,
            "rate_per_sec": sent_m as f64 / args.duration,
            "nacked": nack_codes, "ack_timeouts": ack_timeouts, "ack_transport_errors": ack_errors,
            "skipped_inflight_cap": skipped,
            "ack_latency_ms": ack, "schedule_lag_ms": lag,
        },
        "delivery": {
            "expected": expected, "expected_on_connected": expected_connected,
            "expected_on_failed_connections": unreachable,
            "actual": measured_deliveries, "received_of_expected": received_ok,
            "warmup_deliveries": warmup_deliveries,
            "per_sec": deliveries_per_sec,
            "latency_ms": deliv,
            "socket_latency_ms": at_socket,
            "lost": lost, "duplicated": dup, "reordered": reordered,
            "offset_gaps": offset_gaps, "offset_regressions": offset_regressions,
            "offset_holes_at_end": offset_holes, "epoch_changes_seen": epoch_changes,
            "recovered_from_history": recovered, "history_overlaps": overlaps,
            "delivered_without_ack": without_ack, "delivered_after_failed_ack": after_nack,
            "other_events": recv.other_events.load(Ordering::Relaxed),
            "foreign_chat_messages": recv.foreign.load(Ordering::Relaxed),
            "parse_errors": recv.parse_errors.load(Ordering::Relaxed),
        },
        "generator": {
            "cpu_secs_total": gen_total, "wall_secs_total": wall_total,
            "cpu_pct_of_one_core_measured": gen_window,
            "cpu_sys_pct_of_one_core_measured": gen_window_sys,
            "machine_cpu_busy_pct_all_cores_measured": machine_busy.map(|m| m.0),
            "machine_cpu_steal_pct_all_cores_measured": machine_busy.map(|m| m.1),
            "rss_mib": gen_rss,
            "cpu_bound": gen_cpu_bound,
            "send_schedule_late_p99_over_50ms": schedule_late,
            "close_secs": close_secs,
        },
        "watched": watched,
        "recover": {
            "enabled": args.recover,
            "reconnects": recover_stats.reconnects.load(Ordering::Relaxed),
            "failed_attempts": recover_stats.failed_attempts.load(Ordering::Relaxed),
            "reconnect_ms": reconnect_ms,
            "history_calls": recover_stats.history_calls.load(Ordering::Relaxed),
            "history_errors": recover_stats.history_errors.load(Ordering::Relaxed),
            "history_error_kinds": *lock(&recover_stats.history_error_kinds),
            "resent_measured": resent,
        },
    });

    println!("== fanout-bench run {run_id} ==");
    println!(
        "connect:   {connected}/{} clients in {connect_secs:.2}s = {:.0}/s (connect p50 {} ms, p99 {} ms){}",
        args.clients,
        connected as f64 / connect_secs.max(1e-6),
        fmt_ms(&report["connect"]["latency_ms"], "p50"),
        fmt_ms(&report["connect"]["latency_ms"], "p99"),
        if connected < args.clients {
            " — SOME FAILED"
        } else {
            ""
        }
    );
    println!(
        "send:      sent {sent_m} ({:.0}/s of {} target), acked {acc_m}, nacked {:?}, ack timeouts {ack_timeouts}, skipped {skipped} (+{sent_w} in warm-up)",
        sent_m as f64 / args.duration,
        args.rate,
        nack_codes
    );
    println!(
        "ack:       p50 {} ms, p99 {} ms, max {} ms",
        fmt_ms(&ack, "p50"),
        fmt_ms(&ack, "p99"),
        fmt_ms(&ack, "max")
    );
    println!(
        "delivery:  expected {expected}, actual {measured_deliveries} ({deliveries_per_sec:.0}/s), lost {lost}, dup {dup}, reordered {reordered}, offset gaps {offset_gaps}, offset regressions {offset_regressions}"
    );
    if args.recover {
        println!(
            "recover:   {} reconnects (p50 {} ms, max {} ms, {} failed attempts), {} history \
             calls ({} failed), {recovered} messages recovered from history, {overlaps} \
             overlaps, {resent} resent, offset holes at end {offset_holes}",
            recover_stats.reconnects.load(Ordering::Relaxed),
            fmt_ms(&reconnect_ms, "p50"),
            fmt_ms(&reconnect_ms, "max"),
            recover_stats.failed_attempts.load(Ordering::Relaxed),
            recover_stats.history_calls.load(Ordering::Relaxed),
            recover_stats.history_errors.load(Ordering::Relaxed),
        );
    }
    println!(
        "latency:   p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        fmt_ms(&deliv, "p50"),
        fmt_ms(&deliv, "p90"),
        fmt_ms(&deliv, "p99"),
        fmt_ms(&deliv, "p999"),
        fmt_ms(&deliv, "max")
    );
    if !socket_hist.is_empty() {
        println!(
            "at socket: p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms (send to the \
             kernel's receipt at the client's socket: without the generator's own queueing)",
            fmt_ms(&at_socket, "p50"),
            fmt_ms(&at_socket, "p90"),
            fmt_ms(&at_socket, "p99"),
            fmt_ms(&at_socket, "p999"),
            fmt_ms(&at_socket, "max")
        );
    }
    println!(
        "generator: cpu {} s total, {}% of one core while measuring (kernel {}%; {threads} \
         threads), machine {}% busy + {}% stolen by the hypervisor (all cores), rss {} MiB{}",
        gen_total.map(|v| format!("{v:.2}")).unwrap_or("?".into()),
        gen_window.map(|v| format!("{v:.1}")).unwrap_or("?".into()),
        gen_window_sys
            .map(|v| format!("{v:.1}"))
            .unwrap_or("?".into()),
        machine_busy
            .map(|v| format!("{:.1}", v.0))
            .unwrap_or("?".into()),
        machine_busy
            .map(|v| format!("{:.1}", v.1))
            .unwrap_or("?".into()),
        gen_rss.map(|v| format!("{v:.0}")).unwrap_or("?".into()),
        if gen_cpu_bound {
            " — GENERATOR CPU-BOUND: figures bound the generator, not the server"
        } else if schedule_late {
            " — SENDS LEFT LATE (p99 > 50 ms): the generator lacked CPU (machine saturated?)"
        } else {
            ""
        }
    );
    for w in &report["watched"].as_array().cloned().unwrap_or_default() {
        println!(
            "watched:   pid {} ({}): {}% of one core while measuring (kernel {}%), rss {} MiB",
            w["pid"],
            w["comm"].as_str().unwrap_or("?"),
            w["cpu_pct_of_one_core"],
            w["cpu_sys_pct_of_one_core"],
            w["rss_mib"]
        );
    }
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("results:   {}", path.display());
    }
    Ok(())
}

async fn delete_rooms(admin: &admin::Admin, recv: &Receivers, rooms: &[u32]) {
    let failed: usize = stream::iter(rooms.iter().copied())
        .map(|r| async move {
            let path = format!("/api/v1/chats/{}", recv.chat_id(r));
            match admin.call("DELETE", &path, None).await {
                Ok((s, _)) if (200..300).contains(&s) || s == 404 => 0,
                _ => 1,
            }
        })
        .buffer_unordered(16)
        .fold(0, |a, b| async move { a + b })
        .await;
    if failed > 0 {
        eprintln!("fanout-bench: warning: {failed} room(s) could not be deleted");
    }
}
