//! The chaos sequence (issue 7, docs/reliability.md): three node processes behind HAProxy, load
//! from `fanout-bench --recover` (clients that reconnect, fetch `chat:history` from their last
//! offset and resend what was not acknowledged, as a real client does), and faults applied one
//! after another under that load: a node killed with SIGKILL, Redis restarted empty, Redis
//! stalled (`DEBUG SLEEP 5`), and a reconnect storm of STORM clients (default 20 000) after the
//! loss of every node. After each fault every ACCEPTED message must be with every member exactly
//! once and without offset holes (live or recovered), and presence must show exactly one event
//! per transition. Prints a summary table. The Redis failover phases (issue 18: a Cluster master
//! or the Sentinel master killed) are in `chaos_failover.rs`.
//!
//! Long: runs only with `CHAOS=1` or in CI (`CI=true`); `deploy/chaos.sh` runs it alone with a
//! release build: `CHAOS=1 cargo test --release --test it chaos -- --nocapture`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bench::{Bench, num};
use crate::harness::*;
use crate::skip::{record_skip, require_tools};

/// Whether phase `name` runs: all by default, or those listed in `CHAOS_PHASES`
/// (`kill,redis-restart,redis-stall,storm`; the Redis failover phases of `chaos_failover.rs`
/// too).
pub fn phase(name: &str) -> bool {
    std::env::var("CHAOS_PHASES").map_or(true, |v| v.split(',').any(|p| p.trim() == name))
}

/// The phases of this sequence (the failover phases are in `chaos_failover.rs`).
const PHASES: [&str; 4] = ["kill", "redis-restart", "redis-stall", "storm"];

pub fn enabled() -> bool {
    std::env::var("CHAOS").is_ok_and(|v| v == "1") || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The load of the fault phases: 300 clients in rooms of 10, 30 senders, 300 msg/s in all.
pub const LOAD: [&str; 16] = [
    "--recover",
    "--clients",
    "300",
    "--room-size",
    "10",
    "--senders",
    "30",
    "--rate",
    "300",
    "--warmup",
    "1",
    "--duration",
    "14",
    "--grace",
    "8",
    "--max-inflight=256",
];
pub const LOAD_CLIENTS: usize = 300;
pub const LOAD_ROOM: usize = 10;
/// `--rate` of [`LOAD`].
const LOAD_RATE: u64 = 300;
/// How far behind the Redis kill a node's backplane reader may be for the Redis-restart
/// phase's exception (see [`Row::check_redis_lost_data`]).
const EXCEPTION_WINDOW_MS: u64 = 200;

/// One row of the summary.
pub struct Row {
    pub phase: &'static str,
    pub accepted: u64,
    pub live: u64,
    pub recovered: u64,
    pub lost: u64,
    pub dup: u64,
    pub holes: u64,
    pub reconnects: u64,
    pub note: String,
}

impl Row {
    pub fn from_bench(phase: &'static str, j: &Value, note: String) -> Row {
        Row {
            phase,
            accepted: num(j, "send.acked"),
            live: num(j, "delivery.actual"),
            recovered: num(j, "delivery.recovered_from_history"),
            lost: num(j, "delivery.lost"),
            dup: num(j, "delivery.duplicated"),
            holes: num(j, "delivery.offset_holes_at_end"),
            reconnects: num(j, "recover.reconnects"),
            note,
        }
    }

    /// The promise's one exception (docs/reliability.md): Redis losing its data takes with it
    /// the entries a node had not read yet (lost to that node's members) and the dedup keys of
    /// sends whose ACK the kill cut off (resent, then delivered twice). Only sends around the
    /// kill are exposed: at the phase's 300 msg/s in rooms of 10, a node reading
    /// `EXCEPTION_WINDOW_MS` behind (a host stealing a third of the CPU, as seen) puts at most
    /// that many messages' deliveries at risk. No holes, and nothing else, is allowed.
    fn check_redis_lost_data(&self, j: &Value) {
        self.check_within(j, LOAD_RATE * EXCEPTION_WINDOW_MS / 1000 * LOAD_ROOM as u64);
    }

    /// The promise: every ACCEPTED message with every member exactly once, no holes.
    pub fn check(&self, j: &Value) {
        self.check_within(j, 0);
    }

    /// No holes; at most `at_risk` deliveries lost or duplicated in all; every accepted message
    /// received by every member or counted lost.
    fn check_within(&self, j: &Value, at_risk: u64) {
        assert!(self.accepted > 0, "{}: nothing was accepted", self.phase);
        assert_eq!(
            self.holes, 0,
            "{}: offset holes; bench JSON:\n{j:#}",
            self.phase
        );
        assert!(
            self.lost + self.dup <= at_risk,
            "{}: {} lost + {} duplicated deliveries, more than the {at_risk} allowed; bench \
             JSON:\n{j:#}",
            self.phase,
            self.lost,
            self.dup
        );
        assert_eq!(
            num(j, "delivery.received_of_expected") + self.lost,
            num(j, "delivery.expected_on_connected"),
            "{}: every accepted message is received or counted lost",
            self.phase
        );
    }
}

/// Presence events (event name, userId) an observer received, in order.
pub type Seen = Arc<Mutex<Vec<(String, String)>>>;

pub fn count(seen: &Seen, event: &str, user: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(e, u)| e == event && u == user)
        .count()
}

/// Sum of the node processes' resident memory, KiB.
fn nodes_rss_kib(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_kib(p)).sum()
}

/// Starts the phase load (run `run_id`) through the load balancer and returns 3 s into its
/// measured window, when the phase applies its fault.
async fn load_until_fault(lb: &Haproxy, admin: &NodeProcess, run_id: &str) -> Bench {
    let bench = Bench::start_urls(
        &[lb.url()],
        admin.admin,
        &[&LOAD[..], &["--run-id", run_id]].concat(),
    );
    bench.wait_measuring().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    bench
}

/// Re-creates the bench's rooms of run `run_id` (Redis lost them), as a backend re-syncing its
/// membership would: room r has users r*10 .. r*10+9.
async fn recreate_rooms(node: &NodeProcess, run_id: &str) {
    for r in 0..LOAD_CLIENTS / LOAD_ROOM {
        let members: Vec<String> = (0..LOAD_ROOM)
            .map(|j| format!("bench-u{}", (r * LOAD_ROOM + j) % LOAD_CLIENTS))
            .collect();
        let body = json!({ "chatId": format!("bench-{run_id}-r{r}"), "members": members });
        let (body, auth) = (body.to_string(), format!("Bearer {API_KEY}"));
        let (body, auth, admin) = (body.as_str(), auth.as_str(), node.admin);
        eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            move || http(admin, "POST", "/api/v1/chats", Some(body), Some(auth)),
            |res| matches!(res, Some((201, _))),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sequence_loses_nothing_accepted() {
    if !enabled() {
        // An opt-in, not a missing tool: CI runs it (deploy/chaos.sh), so it is not a failure
        // there, but it is never a silent pass either.
        record_skip(
            "chaos::chaos_sequence_loses_nothing_accepted",
            "not enabled: set CHAOS=1 (CI runs it; deploy/chaos.sh runs it alone)",
        );
        return;
    }
    if !PHASES.iter().any(|p| phase(p)) {
        // CHAOS_PHASES names only phases of chaos_failover.rs: nothing to start here.
        println!("chaos: none of {PHASES:?} is in CHAOS_PHASES");
        return;
    }
    if !require_tools(
        "chaos::chaos_sequence_loses_nothing_accepted",
        &["haproxy"],
        HAPROXY_HINT,
    ) {
        return;
    }
    let storm: usize = std::env::var("CHAOS_STORM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut redis = Redis::start_with(&["--enable-debug-command", "yes"]).await;
    let opts = NodeOpts::default()
        .with("presence-ttl-secs", "12")
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "2000");
    let mut nodes = vec![
        NodeProcess::spawn(&redis, "a", opts.clone()).await,
        NodeProcess::spawn(&redis, "b", opts.clone()).await,
        NodeProcess::spawn(&redis, "c", opts.clone()).await,
    ];
    let addrs: Vec<(&str, std::net::SocketAddr)> = vec![
        ("a", nodes[0].public),
        ("b", nodes[1].public),
        ("c", nodes[2].public),
    ];
    let lb = Haproxy::start(&addrs).await;
    let ports: Vec<(u16, u16)> = nodes
        .iter()
        .map(|n| (n.public.port(), n.admin.port()))
        .collect();
    let restart = async |i: usize, redis: &Redis| {
        let (id, (p, a)) = (["a", "b", "c"][i], ports[i]);
        NodeProcess::spawn_on(redis, id, opts.clone(), p, a).await
    };
    let mut rows: Vec<Row> = Vec::new();

    // (event, user, expected, seen) of the presence check.
    let mut presence: Vec<(&str, &str, usize, usize)> = Vec::new();

    // --- phase 1: kill -9 of node c under load; presence watched by an observer on node a.
    if phase("kill") {
        let watch = ["obs", "stay", "gone", "back", "new"];
        let create = json!({ "chatId": "watch", "members": watch });
        http(
            nodes[0].admin,
            "POST",
            "/api/v1/chats",
            Some(&create.to_string()),
            Some(&format!("Bearer {API_KEY}")),
        )
        .await;
        let mut obs = connect(&nodes[0].url(), "obs").await;
        let _stay = connect(&nodes[0].url(), "stay").await;
        let gone = connect(&nodes[2].url(), "gone").await;
        let back = connect(&nodes[2].url(), "back").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        while obs.next_event(Duration::from_millis(200)).await.is_some() {}
        let seen: Seen = Arc::default();
        let seen2 = Arc::clone(&seen);
        let observer = tokio::spawn(async move {
            while let Some((event, data)) = obs.next_event(Duration::from_secs(600)).await {
                if event.starts_with("presence:") {
                    let user = data["userId"].as_str().unwrap_or("?").to_owned();
                    seen2.lock().unwrap().push((event, user));
                }
            }
        });

        let bench = load_until_fault(&lb, &nodes[0], "kill").await;
        nodes[2].kill9();
        assert!(back.wait_closed(Duration::from_secs(5)).await);
        assert!(gone.wait_closed(Duration::from_secs(5)).await);
        // "back" reconnects at once (before its presence expires): no event expected for it.
        let _back = connect(&lb.url(), "back").await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        nodes[2] = restart(2, &redis).await;
        let _new = connect(&lb.url(), "new").await;
        let (_, j) = bench.finish().await;
        let row = Row::from_bench("node kill -9 (+restart)", &j, String::new());
        row.check(&j);
        rows.push(row);
        // "gone" never comes back: exactly one offline once its presence expired (TTL 12 s).
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || async { count(&seen, "presence:offline", "gone") },
            |&n| n > 0,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let expected: BTreeMap<(&str, &str), usize> = [
            (("presence:offline", "gone"), 1),
            (("presence:online", "new"), 1),
            (("presence:offline", "stay"), 0),
            (("presence:online", "stay"), 0),
            (("presence:offline", "back"), 0),
            (("presence:online", "back"), 0),
            (("presence:online", "gone"), 0),
        ]
        .into();
        for ((event, user), want) in &expected {
            presence.push((event, user, *want, count(&seen, event, user)));
        }
        observer.abort();
    }

    // --- phase 2: Redis restarted empty under load; the backend re-creates the rooms.
    if phase("redis-restart") {
        let bench = load_until_fault(&lb, &nodes[0], "rrestart").await;
        let t0 = Instant::now();
        redis.restart().await;
        recreate_rooms(&nodes[0], "rrestart").await;
        let resync = t0.elapsed();
        let (_, j) = bench.finish().await;
        let row = Row::from_bench(
            "Redis restart (empty)",
            &j,
            format!(
                "rooms re-created {:.1} s after the kill; {} sends NACKed then resent; epochs changed {}; {} lost / {} duplicated with Redis's data (the exception)",
                resync.as_secs_f64(),
                num(&j, "recover.resent_measured"),
                num(&j, "delivery.epoch_changes_seen"),
                num(&j, "delivery.lost"),
                num(&j, "delivery.duplicated")
            ),
        );
        row.check_redis_lost_data(&j);
        rows.push(row);
        for n in &mut nodes {
            assert!(n.alive(), "node {} survived the Redis restart", n.id);
        }
    }

    // --- phase 3: Redis stalled for 5 s (DEBUG SLEEP), node memory sampled meanwhile.
    if phase("redis-stall") {
        let bench = load_until_fault(&lb, &nodes[0], "pause").await;
        let pids: Vec<u32> = nodes.iter().filter_map(NodeProcess::pid).collect();
        let before = nodes_rss_kib(&pids);
        let sleeper = redis.stall(5);
        let mut peak = before;
        while !sleeper.is_finished() {
            peak = peak.max(nodes_rss_kib(&pids));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (_, j) = bench.finish().await;
        let growth_mib = (peak.saturating_sub(before)) as f64 / 1024.0;
        let row = Row::from_bench(
            "Redis stalled 5 s (DEBUG SLEEP)",
            &j,
            format!("3 nodes' RSS grew by {growth_mib:.1} MiB at most while stalled"),
        );
        row.check(&j);
        assert!(
            growth_mib < 64.0,
            "node memory bounded while Redis stalls: +{growth_mib:.1} MiB"
        );
        rows.push(row);
    }

    // --- phase 4: reconnect storm: every node lost at once, `storm` clients come back.
    if phase("storm") {
        // Directly to the nodes: HAProxy would need two descriptors per connection, and this
        // sandbox's hard RLIMIT_NOFILE is 20 000 per process. Two bench processes share the clients.
        let urls: Vec<String> = nodes.iter().map(NodeProcess::url).collect();
        let half = (storm / 2).to_string();
        let storm_args = |id: &'static str| -> Vec<String> {
            [
                "--recover",
                "--clients",
                &half,
                "--room-size",
                "10",
                "--senders",
                "10",
                "--rate",
                "50",
                "--warmup",
                "1",
                "--duration",
                "45",
                "--grace",
                "15",
                "--connect-budget",
                "120",
                "--connect-timeout",
                "30",
                "--ack-timeout",
                "20",
                // Spread over 127.0.0.1-4: 20 000 connections from one address would use most of
                // its ephemeral ports.
                "--source-ips",
                "4",
                "--run-id",
                id,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let (s1, s2) = (storm_args("storm1"), storm_args("storm2"));
        let b1 = Bench::start_urls(
            &urls,
            nodes[0].admin,
            &s1.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let b2 = Bench::start_urls(
            &urls,
            nodes[1].admin,
            &s2.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        b1.wait_measuring().await;
        b2.wait_measuring().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for n in &mut nodes {
            n.kill9();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t0 = Instant::now();
        for (i, n) in nodes.iter_mut().enumerate() {
            *n = restart(i, &redis).await;
        }
        let up = t0.elapsed();
        let (_, j1) = b1.finish().await;
        let (_, j2) = b2.finish().await;
        for (j, id) in [(&j1, "storm1"), (&j2, "storm2")] {
            // Every client is connected again at the end (a few reconnect twice: a node that
            // was still starting can drop a fresh connection).
            assert_eq!(
                num(j, "connect.still_open_at_end"),
                num(j, "connect.connected"),
                "{id}: every client connected at the end; recover: {}",
                j["recover"]
            );
            assert!(
                num(j, "recover.reconnects") >= num(j, "connect.connected"),
                "{id}: every client reconnected; recover: {}",
                j["recover"]
            );
        }
        let max_ms = |j: &Value| {
            j["recover"]["reconnect_ms"]["max"]
                .as_f64()
                .unwrap_or(f64::NAN)
        };
        let row1 = Row::from_bench(
            "storm: all nodes lost",
            &j1,
            format!(
                "{} clients (2 generators) reconnected; slowest after {:.1} s / {:.1} s (nodes back after {:.1} s); {} history calls failed and were retried ({})",
                num(&j1, "connect.connected") + num(&j2, "connect.connected"),
                max_ms(&j1) / 1000.0,
                max_ms(&j2) / 1000.0,
                up.as_secs_f64(),
                num(&j1, "recover.history_errors") + num(&j2, "recover.history_errors"),
                j1["recover"]["history_error_kinds"]
            ),
        );
        row1.check(&j1);
        let row2 = Row::from_bench("storm (second generator)", &j2, String::new());
        row2.check(&j2);
        rows.push(row1);
        rows.push(row2);
        for n in &mut nodes {
            assert!(n.alive(), "node {} survived the storm", n.id);
        }
    }

    print_summary("chaos summary", &rows);
    println!("presence (observer on node a, node c killed):");
    for (event, user, want, got) in &presence {
        println!("  {event} {user}: expected {want}, seen {got}");
    }
    for (event, user, want, got) in &presence {
        assert_eq!(got, want, "{event} for {user}");
    }
}

/// Prints the summary table of `rows` under `title`.
pub fn print_summary(title: &str, rows: &[Row]) {
    println!("\n== {title} ==");
    println!(
        "| phase | accepted | delivered live | recovered | lost | dup | offset holes | reconnects | notes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.phase, r.accepted, r.live, r.recovered, r.lost, r.dup, r.holes, r.reconnects, r.note
        );
    }
}
