//! Connecting the clients, joining their rooms where the server does not join members at
//! connect, and with `--recover` keeping them connected.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout_client::{Client, ConnectOptions, RawEventHandler};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::recover::{Connect, RecoverStats, Slot, Supervisor};
use crate::setup::{Run, user_id};
use crate::stats::{RecvState, histogram};
use crate::sys;

/// The clients, and what their first connect measured.
pub struct Clients {
    /// Each client's current connection; with `--recover` its supervisor replaces it after a
    /// drop.
    pub slots: Vec<Arc<Slot>>,
    /// One connect function per client: the first connect and `--recover`'s reconnects.
    pub connectors: Vec<Connect>,
    /// What each client received, shared with its event handler.
    pub states: Vec<Arc<Mutex<RecvState>>>,
    /// Who connected in the connect phase: only they are expected to receive.
    pub connected_at_start: Vec<bool>,
    pub connected: usize,
    pub secs: f64,
    /// Latency of the connects that succeeded (µs).
    pub hist: Histogram<u64>,
    /// Failed connects by error text without numbers.
    pub errors: BTreeMap<String, u64>,
}

/// Connects every client, `--connect-concurrency` at a time, within `--connect-budget`; the
/// run goes on with those that made it.
pub async fn connect(run: &Run) -> Clients {
    let (args, counters) = (&run.args, &run.counters);
    counters.phase.store(1, Ordering::Relaxed);
    let connect_deadline = Instant::now() + Duration::from_secs_f64(args.connect_budget);
    let states: Vec<Arc<Mutex<RecvState>>> = (0..args.clients)
        .map(|_| Arc::new(Mutex::new(RecvState::default())))
        .collect();
    let connectors = connectors(run, &states);
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
    Clients {
        slots,
        connectors,
        states,
        connected_at_start,
        connected,
        secs: connect_secs,
        hist: connect_hist,
        errors: connect_errors,
    }
}

/// The connect functions: each mints its client's token (once, or with `--token-secs` at each
/// attempt) and opens a connection with the client's source address and event handler, to the
/// next `--url` on each attempt.
fn connectors(run: &Run, states: &[Arc<Mutex<RecvState>>]) -> Vec<Connect> {
    let (args, recv, source_ips) = (&run.args, &run.recv, run.limits.source_ips);
    // Valid beyond the run's longest possible end, so that no reconnect meets an expired token.
    let run_exp = fanout::auth::now_secs()
        + (args.warmup + args.duration + args.grace + args.connect_budget + args.ack_timeout)
            as u64
        + 3600;
    let token_secs = args.token_secs;
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
    (0..args.clients)
        .map(|i| {
            let (secret, user) = (args.jwt_secret.clone(), user_id(i as u32));
            let mint = move || {
                let exp = if token_secs == 0 {
                    run_exp
                } else {
                    fanout::auth::now_secs() + token_secs
                };
                fanout::auth::mint_hs256(&secret, &user, exp, None)
                    .map_err(|e| format!("mint token: {e}"))
            };
            let urls = args.urls.clone();
            let local_addr = (source_ips > 1).then(|| sys::source_ip(i as u32 % source_ips));
            let (recv, state) = (Arc::clone(recv), Arc::clone(&states[i]));
            let connect: Connect = Arc::new(move |attempt: u32| {
                let token = mint();
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
        .collect()
}

/// What the join phase did.
pub struct Joins {
    pub ok: u64,
    /// Failed joins by error code or transport error.
    pub failures: BTreeMap<String, u64>,
    pub secs: f64,
}

/// With `--join`, each connected client emits `chat:join` for each of its rooms and waits for
/// the ACK (for servers that do not join members at connect).
pub async fn join(run: &Run, clients: &Clients) -> Joins {
    let (args, recv, plan, slots) = (&run.args, &run.recv, &run.plan, &clients.slots);
    let (mut joins_ok, mut join_failures) = (0u64, BTreeMap::<String, u64>::new());
    let join_start = Instant::now();
    if args.join {
        let jobs: Vec<(Arc<Client>, u32)> = slots
            .iter()
            .zip(&plan.rooms_of)
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
    Joins {
        ok: joins_ok,
        failures: join_failures,
        secs: join_start.elapsed().as_secs_f64(),
    }
}

/// The reconnect tasks of `--recover` (none without it).
pub struct Supervisors {
    pub stats: Arc<RecoverStats>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisors {
    /// Stops the reconnects and waits for them, so that the account sees settled slots.
    pub async fn stop(self) -> Arc<RecoverStats> {
        self.stop.cancel();
        for s in self.tasks {
            let _ = s.await;
        }
        self.stats
    }
}

/// With `--recover`, one task per connected client reconnects it after a drop, re-joins and
/// fetches the history it missed.
pub fn supervise(run: &Run, clients: &Clients) -> Supervisors {
    let (args, recv, plan) = (&run.args, &run.recv, &run.plan);
    let Clients {
        slots,
        connectors,
        states,
        connected_at_start,
        ..
    } = clients;
    let recover_stats = Arc::new(RecoverStats::default());
    let stop_supervisors = CancellationToken::new();
    let tasks = (0..args.clients)
        .filter(|&i| args.recover && connected_at_start[i])
        .map(|i| {
            let sup = Supervisor {
                client: i,
                slot: Arc::clone(&slots[i]),
                connect: Arc::clone(&connectors[i]),
                rooms: plan.rooms_of[i].clone(),
                join: args.join,
                recv: Arc::clone(recv),
                state: Arc::clone(&states[i]),
                stats: Arc::clone(&recover_stats),
                ack_timeout: Duration::from_secs_f64(args.ack_timeout),
            };
            tokio::spawn(sup.run(stop_supervisors.clone()))
        })
        .collect();
    Supervisors {
        stats: recover_stats,
        stop: stop_supervisors,
        tasks,
    }
}
