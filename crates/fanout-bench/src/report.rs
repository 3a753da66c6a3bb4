//! The figures of a run: the JSON file's fields, the summary on stdout, and the checks that
//! tell when the generator rather than the server bounds them. The field names and the
//! summary's text are read by the tests, bench/report.mjs and bench/compare.sh.

use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::account::{DeliveryTotals, SendTotals, Totals};
use crate::args::Args;
use crate::connect::{Clients, Joins};
use crate::measure::{Sent, Window};
use crate::setup::{Limits, Rooms, Run};
use crate::stats::lock;
use crate::sys;

/// Taken first thing, so that the totals cover the whole run and the JSON has the exact
/// command line.
pub struct Started {
    command: Vec<String>,
    cpu_start: Option<f64>,
    wall_start: Instant,
    started_unix: u64,
}

impl Started {
    /// Also the first reading of the generator's CPU time: call it before anything else.
    pub fn now() -> Started {
        Started {
            command: std::env::args().collect(),
            cpu_start: sys::cpu_secs("self"),
            wall_start: Instant::now(),
            started_unix: fanout::auth::now_secs(),
        }
    }
}

/// What the phases hand to the report.
pub struct Outcome<'a> {
    pub started: Started,
    pub rooms: &'a Rooms,
    pub clients: &'a Clients,
    pub joins: &'a Joins,
    pub sent: &'a Sent,
    pub totals: &'a Totals,
    /// With `--token-secs`: the session refreshes.
    pub refreshes: Option<&'a crate::refresh::RefreshStats>,
    pub close_secs: f64,
}

/// The figures computed here, from the phases' outcome, for both the JSON and the summary.
struct Figures {
    /// Generator CPU seconds over the whole run.
    gen_total: Option<f64>,
    wall_total: f64,
    cpu: WindowCpu,
    deliveries_per_sec: f64,
    /// The [`ms`] figures of the ACK, delivery, at-socket and schedule-lag histograms.
    ack: Value,
    deliv: Value,
    at_socket: Value,
    lag: Value,
    distortion: Distortion,
}

/// CPU use over the measured window, in % of one core (the machine's: of all cores).
struct WindowCpu {
    gen_window: Option<f64>,
    gen_window_sys: Option<f64>,
    /// One JSON object per `--watch-pid`.
    watched: Vec<Value>,
    /// (busy, stolen by the hypervisor).
    machine_busy: Option<(f64, f64)>,
}

/// Two ways the generator can distort the figures: it is CPU-bound itself, or it did not get
/// the CPU to keep its send schedule (the machine is saturated, e.g. by the server).
struct Distortion {
    gen_cpu_bound: bool,
    schedule_late: bool,
}

impl Distortion {
    /// CPU-bound: over 85% of one core per worker thread; late: the p99 send left more than
    /// 50 ms after its time.
    fn check(gen_window: Option<f64>, threads: usize, lag_hist: &Histogram<u64>) -> Distortion {
        let gen_cpu_bound = gen_window.is_some_and(|p| p > 85.0 * threads as f64);
        let schedule_late = !lag_hist.is_empty() && lag_hist.value_at_quantile(0.99) > 50_000;
        Distortion {
            gen_cpu_bound,
            schedule_late,
        }
    }
}

/// The report phase: the figures, the summary on stdout and with `--out` the JSON file.
pub fn report(run: &Run, o: Outcome) -> Result<(), String> {
    // Read right after the close, so that the totals cover the whole run.
    let cpu_end = sys::cpu_secs("self");
    let wall_total = o.started.wall_start.elapsed().as_secs_f64();
    let cpu = window_cpu(&run.args, o.sent.window.as_ref());
    let gen_total = match (o.started.cpu_start, cpu_end) {
        (Some(a), Some(b)) => Some(((b - a) * 1000.0).round() / 1000.0),
        _ => None,
    };
    let (send, delivery) = (&o.totals.send, &o.totals.delivery);
    let f = Figures {
        gen_total,
        wall_total,
        deliveries_per_sec: delivery.measured_deliveries as f64 / run.args.duration,
        ack: ms(&send.ack_hist),
        deliv: ms(&delivery.deliv_hist),
        at_socket: ms(&delivery.socket_hist),
        lag: ms(&send.lag_hist),
        distortion: Distortion::check(cpu.gen_window, run.threads, &send.lag_hist),
        cpu,
    };
    let report = json(run, &o, &f);
    print_summary(run, &o, &f, &report);
    if let Some(path) = &run.args.out {
        let text = serde_json::to_string_pretty(&report).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("results:   {}", path.display());
    }
    Ok(())
}

/// The generator's, the watched processes' and the machine's CPU use over the measured window.
fn window_cpu(args: &Args, window: Option<&Window>) -> WindowCpu {
    let (gen_window, gen_window_sys, watched, machine_busy) = match window {
        Some(w) => {
            let (a_self, a_pids, a_m) = (&w.start.this, &w.start.watched, &w.start.machine);
            let (b_self, b_pids, b_m) = (&w.end.this, &w.end.watched, &w.end.machine);
            let secs = w.secs;
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
                .zip(&w.watched_rss)
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
    WindowCpu {
        gen_window,
        gen_window_sys,
        watched,
        machine_busy,
    }
}

/// The JSON file's content.
fn json(run: &Run, o: &Outcome, f: &Figures) -> Value {
    let Run {
        args,
        threads,
        limits,
        run_id,
        plan,
        recv,
        ..
    } = run;
    let rooms = plan.members.len();
    let Limits {
        nofile,
        ports,
        source_ips,
    } = limits;
    let Started {
        command,
        started_unix,
        ..
    } = &o.started;
    let Rooms {
        created: created_rooms,
        secs: setup_secs,
    } = o.rooms;
    let Joins {
        ok: joins_ok,
        failures: join_failures,
        secs: join_secs,
    } = o.joins;
    let &Clients {
        connected,
        secs: connect_secs,
        hist: ref connect_hist,
        errors: ref connect_errors,
        ..
    } = o.clients;
    let Totals {
        still_open,
        send,
        delivery,
        recover_stats,
        reconnect_ms,
    } = o.totals;
    let &SendTotals {
        sent: sent_m,
        sent_warmup: sent_w,
        acked: acc_m,
        acked_warmup: acc_w,
        unaccepted_warmup: unaccepted_w,
        ref nack_codes,
        ack_timeouts,
        ack_errors,
        skipped,
        resent,
        ..
    } = send;
    let DeliveryTotals {
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
        ..
    } = delivery;
    let Figures {
        gen_total,
        wall_total,
        cpu:
            WindowCpu {
                gen_window,
                gen_window_sys,
                watched,
                machine_busy,
            },
        deliveries_per_sec,
        ack,
        deliv,
        at_socket,
        lag,
        distortion: Distortion {
            gen_cpu_bound,
            schedule_late,
        },
    } = f;
    let gen_rss = o.sent.window.as_ref().and_then(|w| w.gen_rss);
    let (senders_unconnected, close_secs) = (o.sent.senders_unconnected, o.close_secs);
    let sender_results = &o.sent.results;
    json!({
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
            "latency_ms": ms(connect_hist),
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
        "session_refreshes": refreshes_json(args.token_secs, o.refreshes),
    })
}

/// `--token-secs`: how many session refreshes the server granted and refused.
fn refreshes_json(token_secs: u64, r: Option<&crate::refresh::RefreshStats>) -> Value {
    json!({
        "token_secs": token_secs,
        "ok": r.map_or(0, |r| r.ok.load(Ordering::Relaxed)),
        "failed": r.map_or(0, |r| r.failed.load(Ordering::Relaxed)),
    })
}

/// The human summary on stdout.
fn print_summary(run: &Run, o: &Outcome, f: &Figures, report: &Value) {
    let Run {
        args,
        threads,
        run_id,
        ..
    } = run;
    let &Clients {
        connected,
        secs: connect_secs,
        ..
    } = o.clients;
    let Totals {
        send,
        delivery,
        recover_stats,
        reconnect_ms,
        ..
    } = o.totals;
    let &SendTotals {
        sent: sent_m,
        sent_warmup: sent_w,
        acked: acc_m,
        ref nack_codes,
        ack_timeouts,
        skipped,
        resent,
        ..
    } = send;
    let DeliveryTotals {
        socket_hist,
        measured_deliveries,
        expected,
        lost,
        dup,
        reordered,
        offset_gaps,
        offset_regressions,
        offset_holes,
        overlaps,
        recovered,
        ..
    } = delivery;
    let Figures {
        gen_total,
        cpu:
            WindowCpu {
                gen_window,
                gen_window_sys,
                machine_busy,
                ..
            },
        deliveries_per_sec,
        ack,
        deliv,
        at_socket,
        distortion: Distortion {
            gen_cpu_bound,
            schedule_late,
        },
        ..
    } = f;
    let (gen_cpu_bound, schedule_late) = (*gen_cpu_bound, *schedule_late);
    let gen_rss = o.sent.window.as_ref().and_then(|w| w.gen_rss);
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
        fmt_ms(ack, "p50"),
        fmt_ms(ack, "p99"),
        fmt_ms(ack, "max")
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
            fmt_ms(reconnect_ms, "p50"),
            fmt_ms(reconnect_ms, "max"),
            recover_stats.failed_attempts.load(Ordering::Relaxed),
            recover_stats.history_calls.load(Ordering::Relaxed),
            recover_stats.history_errors.load(Ordering::Relaxed),
        );
    }
    if let Some(r) = o.refreshes {
        println!(
            "sessions:  {} refreshes granted, {} failed (tokens of {} s)",
            r.ok.load(Ordering::Relaxed),
            r.failed.load(Ordering::Relaxed),
            args.token_secs
        );
    }
    println!(
        "latency:   p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
        fmt_ms(deliv, "p50"),
        fmt_ms(deliv, "p90"),
        fmt_ms(deliv, "p99"),
        fmt_ms(deliv, "p999"),
        fmt_ms(deliv, "max")
    );
    if !socket_hist.is_empty() {
        println!(
            "at socket: p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms (send to the \
             kernel's receipt at the client's socket: without the generator's own queueing)",
            fmt_ms(at_socket, "p50"),
            fmt_ms(at_socket, "p90"),
            fmt_ms(at_socket, "p99"),
            fmt_ms(at_socket, "p999"),
            fmt_ms(at_socket, "max")
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
}

/// A histogram's figures in milliseconds.
pub fn ms(h: &Histogram<u64>) -> Value {
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

/// One figure of [`ms`] for the summary; `-` when the histogram was empty.
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
