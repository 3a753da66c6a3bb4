//! The Redis failover phases of the chaos sequence (issue 18, docs/reliability.md "Redis
//! failover"): three node processes behind HAProxy on a Redis Cluster (3 masters, 3 replicas)
//! or a Sentinel setup (master, replica, 3 sentinels), the load of chaos.rs from
//! `fanout-bench --recover`, and a Redis master killed with SIGKILL 3 s into the measured
//! window. Its replica is promoted; the killed server comes back as the new master's replica a
//! few seconds later (until then a `WAIT 1` cannot succeed on that shard). The nodes are not
//! restarted. Phases (`CHAOS_PHASES`, all by default):
//!
//! - `cluster-master-kill`: Cluster, `REDIS_WAIT_REPLICAS=1`. A send is ACCEPTED only once a
//!   replica confirmed it, so 0 ACCEPTED messages lost, 0 duplicated, no offset holes. Sends
//!   answered UNAVAILABLE meanwhile are resent by the clients with the same `clientMsgId`.
//! - `cluster-master-kill-nowait`: the same with `REDIS_WAIT_REPLICAS=0` (asynchronous
//!   replication): what the old master ACCEPTED but had not yet passed to its replica is gone
//!   from the promoted one. Counted and printed, not asserted, except that every accepted
//!   message is received or counted lost.
//! - `sentinel-failover`: Sentinel, `REDIS_WAIT_REPLICAS=1`, the sentinels promote the replica
//!   and the old master restarts as its replica; the checks of `cluster-master-kill`.
//!
//! Every phase also checks that the three node processes are the ones it started (same pids,
//! alive) and ready again, and presence through the failover: an observer on node a shares a
//! chat with `stay` (node b, connected throughout), `gone` (node c, disconnects right after the
//! kill, never back) and `new` (tries to connect from the promotion on, retrying while its node
//! answers the handshake `UNAVAILABLE`); on a Cluster their presence keys live on the killed
//! master's slots, and the observer's own room channel on another master. Expected: exactly one
//! `presence:offline` for `gone` (reason `expired`), one `presence:online` for `new`, nothing
//! else.
//!
//! Long: runs only with `CHAOS=1` or in CI (`CI=true`), with the rest of the chaos sequence
//! (`deploy/chaos.sh`); alone with a release build:
//! `CHAOS=1 CHAOS_PHASES=cluster-master-kill cargo test --release --test it chaos_failover --
//! --nocapture --test-threads=1`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::redis::slot_of;
use fanout_client::Client;
use serde_json::{Value, json};

use crate::bench::{Bench, num};
use crate::chaos::{LOAD, LOAD_CLIENTS, LOAD_ROOM, Row, Seen, count, enabled, phase};
use crate::harness::*;
use crate::redis_topology::{self as topo, ClusterNode, RedisCluster, RedisSentinel};
use crate::skip::{record_skip, require_tools};

const TEST: &str = "chaos_failover::chaos_redis_failover_loses_nothing_confirmed";
const PHASES: [&str; 3] = [
    "cluster-master-kill",
    "cluster-master-kill-nowait",
    "sentinel-failover",
];
/// How long a failover step may take before the phase fails: the failure detection (cluster
/// node timeout 2 s, sentinel down-after 1 s), the election, and a busy host.
const STEP: Duration = Duration::from_secs(20);
/// Between the promotion and the restart of the killed server: the window in which a shard
/// has no replica (with `WAIT 1`, nothing new on it can be confirmed, and every command of a
/// node to that master queues behind a `WAIT` of up to `REDIS_WAIT_TIMEOUT_MS`).
const NO_REPLICA: Duration = Duration::from_secs(2);

/// The nodes' presence TTL (see [`Gateway::start`]).
const PRESENCE_TTL_SECS: u64 = 24;

/// The background connect of `new`: its client and how long it took.
type Arrival = tokio::task::JoinHandle<(Client, Duration)>;

/// (phase, event, user, expected, seen) of the presence checks.
type PresenceRow = (&'static str, &'static str, String, usize, usize);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_redis_failover_loses_nothing_confirmed() {
    if !enabled() {
        record_skip(
            TEST,
            "not enabled: set CHAOS=1 (CI runs it; deploy/chaos.sh runs it alone)",
        );
        return;
    }
    if !PHASES.iter().any(|p| phase(p)) {
        println!("chaos_failover: none of {PHASES:?} is in CHAOS_PHASES");
        return;
    }
    if !require_tools(TEST, &["haproxy"], HAPROXY_HINT)
        || !require_tools(TEST, topo::TOOLS, topo::HINT)
    {
        return;
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut presence: Vec<PresenceRow> = Vec::new();
    if phase("cluster-master-kill") {
        cluster_master_kill(1, &mut rows, &mut presence).await;
    }
    if phase("cluster-master-kill-nowait") {
        cluster_master_kill(0, &mut rows, &mut presence).await;
    }
    if phase("sentinel-failover") {
        sentinel_failover(&mut rows, &mut presence).await;
    }
    crate::chaos::print_summary("chaos summary: Redis failover", &rows);
    println!("presence (observer on node a; stay on b, gone on c, new after the promotion):");
    for (phase, event, user, want, got) in &presence {
        println!("  {phase}: {event} {user}: expected {want}, seen {got}");
    }
    for (phase, event, user, want, got) in &presence {
        assert_eq!(got, want, "{phase}: {event} for {user}");
    }
}

/// Three node processes on the Redis of `redis_args`, behind HAProxy.
struct Gateway {
    nodes: Vec<NodeProcess>,
    pids: Vec<u32>,
    lb: Haproxy,
}

impl Gateway {
    async fn start(redis_args: &[String], wait_replicas: u32) -> Gateway {
        // The node settings of chaos.rs, with the WAIT of the phase, and a presence TTL long
        // enough for `stay`: a user keeps its presence while its node's refresh gets through
        // within 2/3 of the TTL after the kill, and a node's cluster connection came back 5 to
        // 15 s after it on this machine (with chaos.rs's 12 s, connected users went offline and
        // online again in at least 4 of 13 runs of the no-WAIT phase, `stay` in 1).
        let opts = NodeOpts::default()
            .with("presence-ttl-secs", &PRESENCE_TTL_SECS.to_string())
            .with("rate-limit-per-sec", "1000")
            .with("rate-limit-burst", "2000")
            .with("redis-wait-replicas", &wait_replicas.to_string());
        let spawn = |id: &'static str| {
            NodeProcess::spawn_with_redis_args(
                redis_args,
                id,
                opts.clone(),
                free_port(),
                free_port(),
            )
        };
        let (a, b, c) = tokio::join!(spawn("a"), spawn("b"), spawn("c"));
        let nodes = vec![a, b, c];
        let pids = nodes.iter().filter_map(NodeProcess::pid).collect();
        let lb = Haproxy::start(&[
            ("a", nodes[0].public),
            ("b", nodes[1].public),
            ("c", nodes[2].public),
        ])
        .await;
        Gateway { nodes, pids, lb }
    }

    /// Waits until every node answers `/readyz` 200 (at most `limit`); how long it took.
    async fn all_ready(&self, limit: Duration) -> Option<Duration> {
        let t = Instant::now();
        for n in &self.nodes {
            if !ready_within(n.public, limit.saturating_sub(t.elapsed())).await {
                return None;
            }
        }
        Some(t.elapsed())
    }

    /// No node was restarted: the same processes are still running, and each is ready.
    async fn check_unrestarted(&mut self, phase: &str) {
        let pids: Vec<u32> = self.nodes.iter().filter_map(NodeProcess::pid).collect();
        assert_eq!(
            pids, self.pids,
            "{phase}: the node processes are the ones started"
        );
        for n in &mut self.nodes {
            assert!(n.alive(), "{phase}: node {} survived the failover", n.id);
        }
        assert!(
            self.all_ready(STEP).await.is_some(),
            "{phase}: every node ready again"
        );
    }
}

/// The first `<prefix><n>` that `keep` accepts.
fn name_where(prefix: &str, keep: impl Fn(&str) -> bool) -> String {
    (0u32..)
        .map(|n| format!("{prefix}{n}"))
        .find(|s| keep(s))
        .expect("some name fits")
}

/// The slot of the channel of chat `chat_id` (its keys' slot).
fn chat_slot(chat_id: &str) -> u16 {
    slot_of(fanout::redis::keys::room_channel(&fanout::chat::chat_room(chat_id)).as_bytes())
}

/// The users of the presence check and the observer's view.
struct Watch {
    phase: &'static str,
    users: [String; 4],
    seen: Seen,
    observer: tokio::task::JoinHandle<()>,
    _stay: Client,
    gone: Option<Client>,
    new: Option<Client>,
}

impl Watch {
    /// `obs` watches `stay`, `gone` and `new` through a chat they share (created through node
    /// a): `stay` on node b, `gone` on node c, connected now.
    async fn start(gw: &Gateway, phase: &'static str, users: [String; 4]) -> Watch {
        let [obs, stay, gone, _new] = &users;
        let create = json!({ "chatId": format!("watch-{obs}"), "members": users });
        let created = http(
            gw.nodes[0].admin,
            "POST",
            "/api/v1/chats",
            Some(&create.to_string()),
            Some(&format!("Bearer {API_KEY}")),
        )
        .await;
        assert!(matches!(created, Some((201, _))), "watch chat: {created:?}");
        let mut observer = connect(&gw.nodes[0].url(), obs).await;
        let stay = connect(&gw.nodes[1].url(), stay).await;
        let gone = connect(&gw.nodes[2].url(), gone).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        while observer
            .next_event(Duration::from_millis(200))
            .await
            .is_some()
        {}
        let seen: Seen = Arc::default();
        let seen2 = Arc::clone(&seen);
        let observer = tokio::spawn(async move {
            while let Some((event, data)) = observer.next_event(Duration::from_secs(600)).await {
                if event.starts_with("presence:") {
                    let user = data["userId"].as_str().unwrap_or("?").to_owned();
                    // An offline is counted once more under its reason: the issue asks for
                    // exactly one `expired` offline per transition.
                    if event == "presence:offline" {
                        let reason = data["reason"].as_str().unwrap_or("?");
                        let with_reason = format!("{event}:{reason}");
                        seen2.lock().unwrap().push((with_reason, user.clone()));
                    }
                    seen2.lock().unwrap().push((event, user));
                }
            }
        });
        Watch {
            phase,
            users,
            seen,
            observer,
            _stay: stay,
            gone: Some(gone),
            new: None,
        }
    }

    /// `gone` disconnects (cleanly; the node cannot record it while the master is down, so
    /// its presence expires instead).
    async fn gone_leaves(&mut self) {
        if let Some(c) = self.gone.take() {
            c.close().await;
        }
    }

    /// `new` connects to node b in the background, retrying while the node refuses the
    /// handshake (`UNAVAILABLE` while the master of its presence key cannot answer); see
    /// [`Self::new_arrived`].
    fn new_arrives(&self, gw: &Gateway) -> Arrival {
        let (url, user) = (gw.nodes[1].url(), self.users[3].clone());
        let t = Instant::now();
        tokio::spawn(async move {
            let auth = json!({ "token": token(&user) });
            let client = eventually(
                Duration::from_secs(60),
                Duration::from_millis(200),
                || {
                    let (url, auth) = (url.clone(), auth.clone());
                    async move {
                        let opts = fanout_client::ConnectOptions {
                            auth: Some(auth),
                            ..Default::default()
                        };
                        Client::connect(&url, opts).await.ok()
                    }
                },
                Option::is_some,
            )
            .await;
            (
                client.unwrap_or_else(|| panic!("{user} could not connect within 60 s")),
                t.elapsed(),
            )
        })
    }

    /// Waits for `new`'s connection; how long it took.
    async fn new_arrived(&mut self, arrival: Arrival) -> Duration {
        let (client, took) = arrival.await.expect("connect task");
        self.new = Some(client);
        took
    }

    /// Waits for `gone`'s offline (after its presence TTL), then a quiet 2 s, and returns
    /// what the observer saw of each transition against what was expected.
    async fn finish(self) -> Vec<PresenceRow> {
        let [_, stay, gone, new] = &self.users;
        eventually(
            Duration::from_secs(PRESENCE_TTL_SECS + 10),
            Duration::from_millis(200),
            || async { count(&self.seen, "presence:offline", gone) },
            |&n| n > 0,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let expected: BTreeMap<(&str, &String), usize> = [
            (("presence:offline", gone), 1),
            // Its node could not record the clean disconnect while the master was down.
            (("presence:offline:expired", gone), 1),
            (("presence:online", new), 1),
            (("presence:offline", stay), 0),
            (("presence:online", stay), 0),
            (("presence:online", gone), 0),
            (("presence:offline", new), 0),
        ]
        .into();
        let rows = expected
            .into_iter()
            .map(|((event, user), want)| {
                let seen = count(&self.seen, event, user);
                (self.phase, event, user.clone(), want, seen)
            })
            .collect();
        self.observer.abort();
        rows
    }
}

/// Starts the phase load (run `run_id`) through the load balancer and returns 3 s into its
/// measured window, when the phase kills the master.
async fn load_until_fault(gw: &Gateway, run_id: &str) -> Bench {
    let bench = Bench::start_urls(
        &[gw.lb.url()],
        gw.nodes[0].admin,
        &[&LOAD[..], &["--run-id", run_id]].concat(),
    );
    bench.wait_measuring().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    bench
}

/// What the row's note says about the sends the failover refused and how long things took.
fn failover_note(j: &Value, steps: &[(&str, Option<Duration>)]) -> String {
    let mut note: Vec<String> = steps
        .iter()
        .map(|(what, d)| match d {
            Some(d) => format!("{what} {:.1} s", d.as_secs_f64()),
            None => format!("{what} never"),
        })
        .collect();
    note.push(format!(
        "{} sends resent (NACKs at the end: {}; ACK max {} ms); {} deliveries of sends whose \
         ACK had failed",
        num(j, "recover.resent_measured"),
        j["send"]["nacked"],
        j["send"]["ack_latency_ms"]["max"],
        num(j, "delivery.delivered_after_failed_ack"),
    ));
    note.join("; ")
}

/// `cluster-master-kill` (`wait_replicas` 1) and `cluster-master-kill-nowait` (0).
async fn cluster_master_kill(
    wait_replicas: u32,
    rows: &mut Vec<Row>,
    presence: &mut Vec<PresenceRow>,
) {
    let started = Instant::now();
    let (name, run_id): (&'static str, &str) = if wait_replicas == 1 {
        ("cluster-master-kill", "cmk1")
    } else {
        ("cluster-master-kill-nowait", "cmk0")
    };
    let mut cluster = RedisCluster::start().await;
    let args = vec!["--redis-cluster-nodes".to_owned(), cluster.seeds()];
    let mut gw = Gateway::start(&args, wait_replicas).await;

    // The victim: the master holding the most of the run's chats (the bench names them
    // bench-<run>-r<n>), so the kill hits as many senders as it can.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let rooms = LOAD_CLIENTS / LOAD_ROOM;
    let chats_on = |m: &ClusterNode| {
        (0..rooms)
            .filter(|r| m.serves(chat_slot(&format!("bench-{run_id}-r{r}"))))
            .count()
    };
    let victim = masters
        .iter()
        .max_by_key(|m| chats_on(m))
        .expect("a master")
        .clone();
    let victim_chats = chats_on(&victim);
    let replica = cluster
        .replica_of(victim.port)
        .await
        .expect("the victim has a replica");

    // The watched users' presence keys live on the victim's slots; the observer's own room
    // channel does not (events are at most once across an outage of the channel's master, see
    // docs/reliability.md, so an observer there could miss one for reasons other than the
    // presence state machine).
    let on_victim = |u: &str| victim.serves(slot_of(u.as_bytes()));
    let obs = name_where(&format!("obs{run_id}-"), |u| {
        let ch = fanout::redis::keys::room_channel(&fanout::chat::user_room(u));
        !victim.serves(slot_of(ch.as_bytes()))
    });
    let users = [
        obs,
        name_where(&format!("stay{run_id}-"), on_victim),
        name_where(&format!("gone{run_id}-"), on_victim),
        name_where(&format!("new{run_id}-"), on_victim),
    ];
    let mut watch = Watch::start(&gw, name, users).await;

    let bench = load_until_fault(&gw, run_id).await;
    let t0 = Instant::now();
    cluster.kill9(victim.port);
    watch.gone_leaves().await;
    let promoted = cluster.wait_promoted(replica, STEP).await;
    assert!(promoted, "{name}: replica {replica} promoted");
    let promoted_after = t0.elapsed();
    let arrival = watch.new_arrives(&gw);
    tokio::time::sleep(NO_REPLICA).await;
    cluster.rejoin(victim.port).await;
    let whole = cluster.wait_whole(STEP).await;
    assert!(whole.is_ok(), "{name}: the cluster whole again: {whole:?}");
    let whole_after = t0.elapsed();
    let ready_after = gw.all_ready(STEP).await.map(|_| t0.elapsed());
    let new_after = watch.new_arrived(arrival).await + promoted_after;

    let (_, j) = bench.finish().await;
    let mut row = Row::from_bench(
        name,
        &j,
        format!(
            "WAIT {wait_replicas}; master {} (with {victim_chats} of {rooms} chats) killed; {}",
            victim.port,
            failover_note(
                &j,
                &[
                    ("replica promoted after", Some(promoted_after)),
                    ("killed master back as replica after", Some(whole_after)),
                    ("nodes ready after", ready_after),
                    ("new connected after", Some(new_after)),
                ]
            )
        ),
    );
    if wait_replicas == 1 {
        row.check(&j);
    } else {
        check_accounted(&row, &j);
    }
    gw.check_unrestarted(name).await;
    presence.extend(watch.finish().await);
    row.note
        .push_str(&format!("; phase {:.0} s", started.elapsed().as_secs_f64()));
    rows.push(row);
}

/// `sentinel-failover`.
async fn sentinel_failover(rows: &mut Vec<Row>, presence: &mut Vec<PresenceRow>) {
    let started = Instant::now();
    let name = "sentinel-failover";
    let mut sentinel = RedisSentinel::start().await;
    let args = sentinel.node_args();
    let mut gw = Gateway::start(&args, 1).await;
    // One master holds everything, the observer's channel too.
    let users = ["obssf", "staysf", "gonesf", "newsf"].map(str::to_owned);
    let mut watch = Watch::start(&gw, name, users).await;

    let bench = load_until_fault(&gw, "sfo").await;
    let t0 = Instant::now();
    sentinel.kill_master();
    watch.gone_leaves().await;
    let failover = sentinel.wait_failover(STEP).await;
    assert!(failover, "{name}: the sentinels promoted the replica");
    let failover_after = t0.elapsed();
    let arrival = watch.new_arrives(&gw);
    tokio::time::sleep(NO_REPLICA).await;
    let rejoined = sentinel.rejoin_old_master(STEP).await;
    assert!(rejoined, "{name}: the old master back as a replica");
    let rejoined_after = t0.elapsed();
    let ready_after = gw.all_ready(STEP).await.map(|_| t0.elapsed());
    let new_after = watch.new_arrived(arrival).await + failover_after;

    let (_, j) = bench.finish().await;
    let mut row = Row::from_bench(
        name,
        &j,
        format!(
            "WAIT 1; master {} killed; {}",
            sentinel.master_port,
            failover_note(
                &j,
                &[
                    ("sentinels named the replica after", Some(failover_after)),
                    ("old master back as replica after", Some(rejoined_after)),
                    ("nodes ready after", ready_after),
                    ("new connected after", Some(new_after)),
                ]
            )
        ),
    );
    row.check(&j);
    gw.check_unrestarted(name).await;
    presence.extend(watch.finish().await);
    row.note
        .push_str(&format!("; phase {:.0} s", started.elapsed().as_secs_f64()));
    rows.push(row);
}

/// With asynchronous replication the loss is measured, not asserted: something was accepted,
/// and every accepted message was received by every member or is counted lost.
fn check_accounted(row: &Row, j: &Value) {
    assert!(row.accepted > 0, "{}: nothing was accepted", row.phase);
    assert_eq!(
        num(j, "delivery.received_of_expected") + row.lost,
        num(j, "delivery.expected_on_connected"),
        "{}: every accepted message is received or counted lost",
        row.phase
    );
}
