//! Partitions with network namespaces (docs/reliability.md, "Measured faults"): a node runs as
//! a process in a namespace of the test's own, linked to the root namespace by veth pairs with
//! private addresses — one link for its clients, one for Redis (which listens on the root side
//! of that link) — and the fault is applied to the Redis link only, inside that namespace.
//! A second node runs in the root namespace, untouched. Every test prints its figures in one
//! `FIGURES` line; docs/reliability.md's table is filled from them.
//!
//! Needs root, `ip`, `tc` and `nft` (`netns::can_run`): skipped and recorded without them,
//! failed under `CI=true`. Each test is bounded (about 20 s).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fanout_client::Client;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::*;
use crate::netns::{DelayProxy, Link, Netns, NsNode, can_run};

/// One `chat:send` of a sender: when it was first emitted and finally answered, the final ACK
/// and how many attempts (same `clientMsgId`) it took.
struct Sent {
    id: String,
    issued: Instant,
    answered: Instant,
    ack: Value,
    attempts: u32,
}

/// Sends `clientMsgId` `<prefix><n>` every `every` until `stop` (or `count` sends), each
/// after the previous one's ACK; with `retries` > 0 a send not ACCEPTED is sent again with the
/// same `clientMsgId` (never a second message) up to that many times.
async fn sender(
    c: Client,
    prefix: &'static str,
    count: usize,
    every: Duration,
    retries: u32,
    stop: CancellationToken,
) -> (Client, Vec<Sent>) {
    let mut out = Vec::new();
    for n in 0..count {
        if stop.is_cancelled() {
            break;
        }
        let id = format!("{prefix}{n}");
        let issued = Instant::now();
        let payload =
            json!({"chatId": "room", "content": format!("message {id}"), "clientMsgId": id});
        let mut attempts = 0;
        let ack = loop {
            attempts += 1;
            let ack = c
                .emit_with_ack("chat:send", payload.clone(), Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{id}: no ACK: {e}"));
            if ack["status"] == "ACCEPTED" || attempts > retries {
                break ack;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        out.push(Sent {
            id,
            issued,
            answered: Instant::now(),
            ack,
            attempts,
        });
        tokio::time::sleep(every).await;
    }
    (c, out)
}

/// Collects `chat:message`, `presence:online` and `presence:offline` events until `stop`.
async fn receiver(
    mut c: Client,
    stop: CancellationToken,
) -> (Client, Vec<(Instant, String, Value)>) {
    let mut out = Vec::new();
    while !stop.is_cancelled() {
        if let Some((name, data)) = c.next_event(Duration::from_millis(100)).await
            && (name == "chat:message" || name.starts_with("presence:"))
        {
            out.push((Instant::now(), name, data));
        }
    }
    (c, out)
}

/// `/readyz` of `node` every 100 ms until `stop`: (since t0, status, body).
async fn ready_poller(
    public: std::net::SocketAddr,
    t0: Instant,
    stop: CancellationToken,
) -> Vec<(Duration, u16, Value)> {
    let mut out = Vec::new();
    while !stop.is_cancelled() {
        let (s, b) = http(public, "GET", "/readyz", None, None)
            .await
            .unwrap_or((0, Value::Null));
        out.push((t0.elapsed(), s, b));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out
}

/// The whole history of the chat: (offset, clientMsgId).
async fn full_history(c: &Client) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::new();
    loop {
        let since = out.last().map_or(0, |m| m.0);
        let h = ack(
            c,
            "chat:history",
            json!({"chatId": "room", "since": since, "limit": 1000}),
        )
        .await;
        let page = h["messages"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        for m in page {
            let id = m["clientMsgId"].as_str().unwrap_or_default().to_owned();
            out.push((m["offset"].as_u64().expect("offset"), id));
        }
    }
}

/// Offsets of the chat messages a receiver got, in arrival order.
fn offsets(events: &[(Instant, String, Value)]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.1 == "chat:message")
        .filter_map(|e| e.2["offset"].as_u64())
        .collect()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Redis listening on 127.0.0.1 and on the root side of `link` (protected mode off: the
/// namespace's node connects from a non-loopback address of a private link).
async fn redis_on(link: &Link) -> Redis {
    Redis::start_with(&[
        "--bind",
        "127.0.0.1",
        &link.root_ip,
        "--protected-mode",
        "no",
    ])
    .await
}

/// Receivers and senders for alice (on `a`) and bob (on `b`), both members of chat `room`.
struct Users {
    alice_tx: Client,
    alice_rx: Client,
    bob_tx: Client,
    bob_rx: Client,
}

async fn users(a: &str, b: &Node) -> Users {
    b.create_chat("room", &["alice", "bob"]).await;
    Users {
        alice_tx: connect(a, "alice").await,
        alice_rx: connect(a, "alice").await,
        bob_tx: connect(&b.url(), "bob").await,
        bob_rx: connect(&b.url(), "bob").await,
    }
}

/// (a) Node a loses Redis for 5 s (every packet on its Redis link dropped) while its clients
/// stay connected over the other link: sends answer `UNAVAILABLE`, nothing `ACCEPTED` is
/// lost, its reader resumes from its last id (bob's messages of the cut reach alice after it),
/// `/readyz` goes 503 and back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_redis_for_5_s_keeps_its_clients_and_loses_nothing_accepted() {
    if can_run("partition::a_node_cut_from_redis_for_5_s") {
        cut_from_redis(Duration::from_secs(5), 60).await;
    }
}

/// (a, longer) The cut outlasts `PRESENCE_TTL_SECS` (4 s, cut 9 s): besides all of (a),
/// presence converges — bob sees exactly one `presence:offline` (`expired`) for alice during
/// the cut and exactly one `presence:online` after the heal (node a's refresh brings her back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_longer_than_the_ttl_gives_one_expired_offline_and_one_online_after_the_heal() {
    if can_run("partition::a_cut_longer_than_the_ttl") {
        cut_from_redis(Duration::from_secs(9), 4).await;
    }
}

/// The scenario of both: node a (in the namespace) cut from Redis for `cut`, presence TTL
/// `ttl_secs` on both nodes.
async fn cut_from_redis(cut: Duration, ttl_secs: u64) {
    let mut ns = Netns::create();
    let (redis_link, client_link) = (ns.link(), ns.link());
    let redis = redis_on(&redis_link).await;
    let url = format!("redis://{}:{}", redis_link.root_ip, redis.port());
    let opts = NodeOpts::default().with("presence-ttl-secs", &ttl_secs.to_string());
    let a = NsNode::spawn(&ns, &client_link.ns_ip, &url, "a", &opts).await;
    let b = Node::start_with(&redis, "b", opts).await;
    let u = users(&a.url(), &b).await;

    let t0 = Instant::now();
    let (stop_send, stop_recv, stop_poll) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let poll = tokio::spawn(ready_poller(a.public, t0, stop_poll.clone()));
    let every = Duration::from_millis(100);
    let alice = tokio::spawn(sender(u.alice_tx, "a", 10_000, every, 0, stop_send.clone()));
    let bob = tokio::spawn(sender(u.bob_tx, "b", 10_000, every, 0, stop_send.clone()));
    let alice_rx = tokio::spawn(receiver(u.alice_rx, stop_recv.clone()));
    let bob_rx = tokio::spawn(receiver(u.bob_rx, stop_recv.clone()));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = t0.elapsed();
    ns.cut(&redis_link.root_ip);
    tokio::time::sleep(cut).await;
    ns.heal();
    let heal_at = t0.elapsed();
    let back = ready_within(a.public, Duration::from_secs(20)).await;
    let ready_at = t0.elapsed();
    assert!(back, "node a ready again within 20 s of the heal");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_send.cancel();
    let (alice_tx, alice_sent) = alice.await.expect("alice sender");
    let (_bob_tx, bob_sent) = bob.await.expect("bob sender");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_recv.cancel();
    stop_poll.cancel();
    let (alice_rx, alice_got) = alice_rx.await.expect("alice receiver");
    let (_bob_rx, bob_got) = bob_rx.await.expect("bob receiver");
    let timeline = poll.await.expect("poller");

    // The clients stayed connected through the cut.
    assert!(
        !alice_tx.is_closed() && !alice_rx.is_closed(),
        "alice's sockets stayed"
    );
    // Every ACK is ACCEPTED or UNAVAILABLE; the cut was felt.
    let all: Vec<&Sent> = alice_sent.iter().chain(&bob_sent).collect();
    let mut unavailable = Vec::new();
    for s in &all {
        if s.ack["status"] != "ACCEPTED" {
            assert_eq!(s.ack["error"]["code"], "UNAVAILABLE", "{}: {}", s.id, s.ack);
            unavailable.push(s.id.clone());
        }
    }
    assert!(!unavailable.is_empty(), "the cut was felt by alice's sends");
    assert!(
        bob_sent.iter().all(|s| s.ack["status"] == "ACCEPTED"),
        "bob's node kept Redis"
    );
    // Nothing ACCEPTED is lost: in history at its ACKed offset; and both receivers got the
    // whole history, once each, in order (alice's reader resumed where it was).
    let history = full_history(&b_client(&b).await).await;
    let at: HashMap<&str, u64> = history.iter().map(|(o, id)| (id.as_str(), *o)).collect();
    let accepted: Vec<&&Sent> = all
        .iter()
        .filter(|s| s.ack["status"] == "ACCEPTED")
        .collect();
    let mut lost = 0;
    for s in &accepted {
        match at.get(s.id.as_str()) {
            Some(o) => assert_eq!(s.ack["offset"], *o, "{} at its ACKed offset", s.id),
            None => lost += 1,
        }
    }
    let ran_anyway = unavailable
        .iter()
        .filter(|id| at.contains_key(id.as_str()))
        .count();
    let want: Vec<u64> = history.iter().map(|m| m.0).collect();
    assert_eq!(want, (1..=history.len() as u64).collect::<Vec<_>>());
    let (got_a, got_b) = (offsets(&alice_got), offsets(&bob_got));
    let dup = |v: &[u64]| v.len() - v.iter().collect::<std::collections::BTreeSet<_>>().len();
    let (dup_a, dup_b) = (dup(&got_a), dup(&got_b));
    assert_eq!(lost, 0, "accepted messages lost");
    assert_eq!(
        got_a, want,
        "alice (node a) got every message once, in order"
    );
    assert_eq!(got_b, want, "bob (node b) got every message once, in order");
    // Presence: a cut shorter than the TTL changes nothing; a longer one gives bob exactly one
    // `expired` offline for alice and one online after the heal, and alice nothing about bob
    // (the events of the connects themselves arrived before the cut).
    let seen: Vec<(String, String, String)> = alice_got
        .iter()
        .chain(&bob_got)
        .filter(|e| e.1 == "presence:offline" || (e.1 == "presence:online" && e.0 >= t0 + cut_at))
        .map(|e| {
            let field = |k: &str| e.2[k].as_str().unwrap_or_default().to_owned();
            (e.1.clone(), field("userId"), field("reason"))
        })
        .collect();
    let expected: Vec<(String, String, String)> = if cut > Duration::from_secs(ttl_secs) {
        [
            ("presence:offline", "alice", "expired"),
            ("presence:online", "alice", ""),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
    } else {
        Vec::new()
    };
    assert_eq!(seen, expected, "presence events after the cut started");
    // Readiness: 503 during the cut, 200 after.
    let first_503 = timeline.iter().find(|t| t.0 >= cut_at && t.1 != 200);
    let (down_after, why) = first_503
        .map(|t| (t.0 - cut_at, t.2.clone()))
        .expect("/readyz went 503 during the cut");
    let bob_during_cut: Vec<u64> = history
        .iter()
        .filter(|m| m.1.starts_with('b'))
        .map(|m| m.0)
        .collect();
    eprintln!(
        "FIGURES partition-cut: fault=node a <-> redis dropped, {cut:?}, TTL {ttl_secs} s; \
         accepted={acc} (alice {aa}, bob {ba}); unavailable={un}; ran_anyway={ran_anyway}; \
         lost={lost}; duplicated={dup}; presence expected={expected:?} seen={seen:?}; readyz \
         503 {down:.1?} after the cut ({why}), 200 {up:.1?} after the heal; bob's messages \
         delivered to alice={bd}",
        acc = accepted.len(),
        aa = alice_sent
            .iter()
            .filter(|s| s.ack["status"] == "ACCEPTED")
            .count(),
        ba = bob_sent.len(),
        un = unavailable.len(),
        dup = dup_a + dup_b,
        down = down_after,
        up = ready_at - heal_at,
        bd = bob_during_cut.len(),
    );
    drop(alice_tx);
    drop(alice_rx);
    drop(a);
    drop(ns);
}

/// A client of node `b`, for reading history.
async fn b_client(b: &Node) -> Client {
    connect(&b.url(), "bob").await
}

/// (b) A slow, lossy link between node a and Redis (netem `delay 50ms loss 2%` on the node's
/// side; where the kernel has no netem, 2 % loss each way with nftables and 25 ms each way by a
/// delaying proxy): every message is delivered once, in order, and the latencies are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_link_to_redis_keeps_order_and_loses_nothing() {
    const NAME: &str = "partition::a_slow_lossy_link_to_redis";
    const COUNT: usize = 60;
    if !can_run(NAME) {
        return;
    }
    let mut ns = Netns::create();
    let (redis_link, client_link) = (ns.link(), ns.link());
    let redis = redis_on(&redis_link).await;
    let netem = ns.netem(&redis_link, &["delay", "50ms", "loss", "2%"]);
    let (url, _proxy, how) = if netem {
        let url = format!("redis://{}:{}", redis_link.root_ip, redis.port());
        (url, None, "tc netem delay 50ms loss 2% (node side)")
    } else {
        ns.lossy(&redis_link.root_ip, 2);
        let port = free_port();
        let listen = format!("{}:{port}", redis_link.root_ip)
            .parse()
            .expect("addr");
        let target = format!("127.0.0.1:{}", redis.port()).parse().expect("addr");
        let proxy = DelayProxy::start(listen, target, Duration::from_millis(25)).await;
        let url = format!("redis://{}:{port}", redis_link.root_ip);
        (
            url,
            Some(proxy),
            "no netem in this kernel: nft 2% loss each way + 25 ms each way proxy",
        )
    };
    let a = NsNode::spawn(&ns, &client_link.ns_ip, &url, "a", &NodeOpts::default()).await;
    let b = Node::start(&redis, "b").await;
    let u = users(&a.url(), &b).await;

    let (stop_send, stop_recv) = (CancellationToken::new(), CancellationToken::new());
    let every = Duration::from_millis(50);
    let t0 = Instant::now();
    let poll = tokio::spawn(ready_poller(a.public, t0, stop_recv.clone()));
    let alice = tokio::spawn(sender(u.alice_tx, "a", COUNT, every, 5, stop_send.clone()));
    let bob = tokio::spawn(sender(u.bob_tx, "b", COUNT, every, 5, stop_send.clone()));
    let alice_rx = tokio::spawn(receiver(u.alice_rx, stop_recv.clone()));
    let bob_rx = tokio::spawn(receiver(u.bob_rx, stop_recv.clone()));
    let (_alice_tx, alice_sent) = alice.await.expect("alice sender");
    let (_bob_tx, bob_sent) = bob.await.expect("bob sender");
    let sending = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_recv.cancel();
    let (_alice_rx, alice_got) = alice_rx.await.expect("alice receiver");
    let (_bob_rx, bob_got) = bob_rx.await.expect("bob receiver");
    let timeline = poll.await.expect("poller");
    let unready: Vec<_> = timeline.iter().filter(|t| t.1 != 200).collect();

    let all: Vec<&Sent> = alice_sent.iter().chain(&bob_sent).collect();
    for s in &all {
        assert_eq!(
            s.ack["status"], "ACCEPTED",
            "{} after {} attempts: {}",
            s.id, s.attempts, s.ack
        );
    }
    let retried = all.iter().filter(|s| s.attempts > 1).count();
    let history = full_history(&b_client(&b).await).await;
    let want: Vec<u64> = (1..=(2 * COUNT) as u64).collect();
    assert_eq!(
        history.iter().map(|m| m.0).collect::<Vec<_>>(),
        want,
        "each send once"
    );
    assert_eq!(
        offsets(&alice_got),
        want,
        "alice (lossy node) got all, once, in order"
    );
    assert_eq!(offsets(&bob_got), want, "bob got all, once, in order");

    // Latencies: ACK (first emit to final ACK) per sender, and delivery (first emit to the
    // other user's receipt) per direction.
    let issued: HashMap<&str, Instant> = all.iter().map(|s| (s.id.as_str(), s.issued)).collect();
    let delivery = |got: &[(Instant, String, Value)], from: char| -> Vec<Duration> {
        got.iter()
            .filter(|e| e.1 == "chat:message")
            .filter_map(|e| {
                let id = e.2["clientMsgId"].as_str()?;
                let at = issued.get(id).filter(|_| id.starts_with(from))?;
                Some(e.0 - *at)
            })
            .collect()
    };
    let acks = |v: &[Sent]| v.iter().map(|s| s.answered - s.issued).collect::<Vec<_>>();
    let (ack_a, ack_b) = (acks(&alice_sent), acks(&bob_sent));
    let (a_to_b, b_to_a) = (delivery(&bob_got, 'a'), delivery(&alice_got, 'b'));
    eprintln!(
        "FIGURES partition-lossy: fault={how}; sends={n} in {sending:.1?}; accepted={n}; \
         retried={retried}; lost=0; duplicated=0; ACK p50/p99: via lossy node {:.0?}/{:.0?}, \
         via clean node {:.0?}/{:.0?}; delivery p50/p99: lossy->clean {:.0?}/{:.0?}, \
         clean->lossy {:.0?}/{:.0?}; readyz samples {samples}, not 200: {bad} {first:?}",
        percentile(ack_a.clone(), 0.5),
        percentile(ack_a, 0.99),
        percentile(ack_b.clone(), 0.5),
        percentile(ack_b, 0.99),
        percentile(a_to_b.clone(), 0.5),
        percentile(a_to_b, 0.99),
        percentile(b_to_a.clone(), 0.5),
        percentile(b_to_a, 0.99),
        n = all.len(),
        samples = timeline.len(),
        bad = unready.len(),
        first = unready.first().map(|t| &t.2),
    );
    drop(a);
    drop(ns);
}

/// (c) Node a loses its clients but keeps Redis (its client link is cut for 10 s; Engine.IO
/// ping 1 s + 1 s, TTL 4 s): the sockets time out on the node, whose fields are left to expire
/// (a heartbeat timeout removes nothing), so bob sees exactly one `expired` offline for alice,
/// and exactly one online when she connects again after the heal. The node itself stays fine
/// (its `/readyz` is 200 again at once; it was only unreachable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_clients_but_keeps_redis_expires_them_once() {
    const CUT: Duration = Duration::from_secs(10);
    if !can_run("partition::a_node_that_loses_its_clients") {
        return;
    }
    let mut ns = Netns::create();
    let (redis_link, client_link) = (ns.link(), ns.link());
    let redis = redis_on(&redis_link).await;
    let url = format!("redis://{}:{}", redis_link.root_ip, redis.port());
    let ttl = NodeOpts::default().with("presence-ttl-secs", "4");
    let opts = ttl
        .clone()
        .with("ping-interval-ms", "1000")
        .with("ping-timeout-ms", "1000");
    let a = NsNode::spawn(&ns, &client_link.ns_ip, &url, "a", &opts).await;
    let b = Node::start_with(&redis, "b", ttl).await;
    b.create_chat("room", &["alice", "bob"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let alice = connect(&a.url(), "alice").await;
    let on = bob.wait_for("presence:online", WAIT).await.expect("online");
    assert_eq!(on["userId"], "alice");

    let cut_at = Instant::now();
    ns.cut(&client_link.root_ip);
    let mut seen = Vec::new();
    let mut offline_after = None;
    while let Some(left) = CUT.checked_sub(cut_at.elapsed()) {
        if let Some((name, data)) = bob.next_event(left).await
            && (name == "presence:online" || name == "presence:offline")
        {
            if name == "presence:offline" && offline_after.is_none() {
                offline_after = Some(cut_at.elapsed());
            }
            seen.push((name, data["userId"].clone(), data["reason"].clone()));
        }
    }
    ns.heal();
    let heal_at = Instant::now();
    let ready = ready_within(a.public, Duration::from_secs(5)).await;
    let ready_after = heal_at.elapsed();
    assert!(ready, "node a answers ready once reachable again");
    let alice_closed = alice.is_closed();
    let _alice_again = connect(&a.url(), "alice").await;
    let on = bob.wait_for("presence:online", WAIT).await;
    let online_after = heal_at.elapsed();
    assert!(
        on.is_some_and(|d| d["userId"] == "alice"),
        "one online after the reconnect"
    );
    assert_eq!(
        seen,
        [(
            "presence:offline".to_owned(),
            json!("alice"),
            json!("expired")
        )],
        "exactly one expired offline during the cut"
    );
    let more = bob.collect("presence:online", QUIET).await;
    assert!(more.is_empty(), "exactly one online: {more:?}");
    eprintln!(
        "FIGURES partition-clients: fault=node a <-> its clients dropped, {CUT:?}, TTL 4 s, \
         Engine.IO ping 1 s + 1 s; presence expected=[offline expired, online after reconnect] \
         seen=[offline expired {offline_after:.1?} after the cut, online {online_after:.1?} after \
         the heal]; alice's client saw its socket closed: {alice_closed}; node a /readyz \
         unreachable during the cut, 200 {ready_after:.1?} after the heal"
    );
}
