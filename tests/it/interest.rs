//! Interest routing (docs/architecture.md §2): a node receives a room's events only while it has
//! a local socket in the room, and chat messages still reach every member socket exactly once,
//! in offset order — for a socket that joins while messages flow, and across a subscriber
//! connection killed mid-stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fanout_client::Client;
use serde_json::{Value, json};

use crate::harness::*;

/// Sends `count` messages to `chat`, one every `gap`, recording each ACKed offset in `latest`.
fn sender(
    client: Client,
    chat: &'static str,
    count: u64,
    gap: Duration,
    latest: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for i in 0..count {
            let a = ack(
                &client,
                "chat:send",
                json!({"chatId": chat, "content": format!("m{i}"), "clientMsgId": format!("c{i}")}),
            )
            .await;
            assert_eq!(a["status"], "ACCEPTED", "{a}");
            latest.store(a["offset"].as_u64().unwrap_or(0), Ordering::SeqCst);
            tokio::time::sleep(gap).await;
        }
        client
    })
}

/// The offsets of the `chat:message`s `c` receives until it has seen `last` (or `WAIT` passes
/// without progress).
async fn offsets_until(c: &mut Client, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        match c.wait_for("chat:message", WAIT).await {
            Some(m) => seen.push(m["offset"].as_u64().unwrap_or(0)),
            None => break,
        }
    }
    // Anything after the last one would be a duplicate.
    for m in c.collect("chat:message", Duration::from_millis(300)).await {
        seen.push(m["offset"].as_u64().unwrap_or(0));
    }
    seen
}

fn assert_contiguous(offsets: &[u64], last: u64) {
    let first = *offsets.first().expect("no message received");
    let want: Vec<u64> = (first..=last).collect();
    assert_eq!(offsets, want.as_slice(), "holes, duplicates or disorder");
}

/// How many nodes follow a room: the subscribers of its channel on the master serving it
/// (`PUBSUB NUMSUB`; on a cluster the nodes subscribe with `SSUBSCRIBE`, counted by
/// `PUBSUB SHARDNUMSUB` on the master of the channel's slot).
async fn followers(redis: &Redis, room: &str) -> u64 {
    let channel = format!("fanout:{{{room}}}:ch");
    let numsub = match redis.kind() {
        RedisKind::Cluster => "SHARDNUMSUB",
        RedisKind::Single | RedisKind::Sentinel => "NUMSUB",
    };
    let mut c = server_conn(redis.master_port_of(&channel).await).await;
    let reply: Vec<Value> = redis::cmd("PUBSUB")
        .arg(numsub)
        .arg(&channel)
        .query_async::<Vec<redis::Value>>(&mut c)
        .await
        .expect("numsub")
        .into_iter()
        .map(|v| match v {
            redis::Value::Int(n) => json!(n),
            _ => Value::Null,
        })
        .collect();
    reply.get(1).and_then(Value::as_u64).unwrap_or(0)
}

/// One subscriber connection of a node as `CLIENT LIST` on a master shows it.
#[derive(Debug)]
struct Subscriber {
    /// The master it is connected to.
    port: u16,
    /// Its `CLIENT ID`.
    id: String,
    /// Channels and shard channels it follows there (`sub` + `ssub`).
    subs: u64,
}

/// The subscriber connections of `node` (named `fanout-sub:<node>`) on every master: one on
/// the one server, one per master with subscriptions on a cluster.
async fn subscribers_of(redis: &Redis, node: &str) -> Vec<Subscriber> {
    let name = format!(" name=fanout-sub:{node} ");
    let mut out = Vec::new();
    for (port, list) in redis
        .on_every_master::<String>(redis::cmd("CLIENT").arg("LIST"))
        .await
    {
        for line in list.lines().filter(|l| l.contains(&name)) {
            let field = |key: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                    .map(str::to_owned)
            };
            let count = |key: &str| field(key).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if let Some(id) = field("id") {
                out.push(Subscriber {
                    port,
                    id,
                    subs: count("sub") + count("ssub"),
                });
            }
        }
    }
    out
}

/// Everything `node` follows, over all its subscriber connections.
async fn subscriptions_of(redis: &Redis, node: &str) -> u64 {
    subscribers_of(redis, node)
        .await
        .iter()
        .map(|s| s.subs)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_joins_while_messages_flow_gets_every_message_from_its_join_on_once_in_order()
{
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("flow", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let latest = Arc::new(AtomicU64::new(0));
    let count = 300;
    let sending = sender(
        alice,
        "flow",
        count,
        Duration::from_millis(5),
        latest.clone(),
    );
    eventually(
        WAIT,
        Duration::from_millis(10),
        || async { latest.load(Ordering::SeqCst) },
        |n| *n >= 60,
    )
    .await;
    // Node b has no socket in the chat yet: bob's connect makes it follow the chat mid-stream.
    assert_eq!(followers(&redis, "chat:flow").await, 1);
    let before = latest.load(Ordering::SeqCst);
    let mut bob = connect(&b.url(), "bob").await;
    let after = latest.load(Ordering::SeqCst);
    assert_eq!(followers(&redis, "chat:flow").await, 2);
    sending.await.expect("sender");
    let offsets = offsets_until(&mut bob, count).await;
    assert_contiguous(&offsets, count);
    let first = offsets[0];
    // The first message is one sent after the connect began, and none sent after it completed
    // is missing.
    assert!(
        first > before && first <= after + 1,
        "first {first}, sent before connect {before}, after {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscriber_connection_catches_up_from_the_log_without_loss_or_duplicate() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    // A process, so its /metrics counts its own gaps.
    let b = NodeProcess::spawn(&redis, "b", NodeOpts::default()).await;
    a.create_chat_when_ready("kill", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let latest = Arc::new(AtomicU64::new(0));
    let count = 300;
    let sending = sender(
        alice,
        "kill",
        count,
        Duration::from_millis(12),
        latest.clone(),
    );
    eventually(
        WAIT,
        Duration::from_millis(10),
        || async { latest.load(Ordering::SeqCst) },
        |n| *n >= 40,
    )
    .await;
    let subs = subscribers_of(&redis, "b").await;
    let total: u64 = subs.iter().map(|s| s.subs).sum();
    assert!(total >= 3, "canary, user:bob, chat:kill: {subs:?}");
    // The connection that carries the chat's channel (the only one outside a cluster).
    let master = redis.master_port_of("fanout:{chat:kill}:ch").await;
    let id = subs
        .iter()
        .find(|s| s.port == master)
        .unwrap_or_else(|| panic!("b has no subscriber on the chat's master {master}: {subs:?}"))
        .id
        .clone();
    let mut c = server_conn(master).await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&id)
        .query_async(&mut c)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    sending.await.expect("sender");
    let offsets = offsets_until(&mut bob, count).await;
    assert_contiguous(&offsets, count);
    assert_eq!(offsets[0], 1, "bob was there from the start");
    // The messages sent while b had no subscriber came from the chat's log.
    let metrics = http_raw(b.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let filled: f64 = metrics
        .lines()
        .find(|l| l.starts_with("fanout_backplane_gap_messages_total{outcome=\"filled\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(filled >= 1.0, "no gap filled:\n{metrics}");
    let again = subscribers_of(&redis, "b").await;
    let reconnected = again
        .iter()
        .find(|s| s.port == master)
        .unwrap_or_else(|| panic!("b resubscribed on {master}: {again:?}"));
    assert_ne!(reconnected.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_unsubscribes_once_its_last_socket_left_and_not_while_one_reconnects() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("room-unsubscribe-delay-ms", "800");
    let a = Node::start_with(&redis, "a", opts).await;
    a.create_chat("bye", &["carol", "dave"]).await;
    let carol = connect(&a.url(), "carol").await;
    assert_eq!(followers(&redis, "chat:bye").await, 1);
    assert_eq!(followers(&redis, "user:carol").await, 1);
    // A socket that goes and comes back at once causes no unsubscribe.
    carol.close().await;
    let carol = connect(&a.url(), "carol").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        followers(&redis, "chat:bye").await,
        1,
        "churned on a reconnect"
    );
    carol.close().await;
    let gone = eventually(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async { followers(&redis, "chat:bye").await + followers(&redis, "user:carol").await },
        |n| *n == 0,
    )
    .await;
    assert_eq!(gone, 0, "still subscribed after the last socket left");
    assert!(
        !subscribers_of(&redis, "a").await.is_empty(),
        "a's subscriber"
    );
    assert_eq!(
        subscriptions_of(&redis, "a").await,
        1,
        "only the canary channel is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_api_publishes_reach_only_the_nodes_with_sockets_in_their_rooms() {
    let redis = Redis::start().await;
    let a = NodeProcess::spawn(&redis, "a", NodeOpts::default()).await;
    let b = NodeProcess::spawn(&redis, "b", NodeOpts::default()).await;
    // Node c serves nobody in these rooms.
    let c = NodeProcess::spawn(&redis, "c", NodeOpts::default()).await;
    let (status, _) = http(
        a.admin,
        "POST",
        "/api/v1/chats",
        Some(&json!({"chatId": "only", "members": ["erin", "frank"]}).to_string()),
        Some(&format!("Bearer {API_KEY}")),
    )
    .await
    .expect("create chat");
    assert_eq!(status, 201);
    let c_before = frames_read(&c).await;
    let mut erin = connect(&a.url(), "erin").await;
    let frank = connect(&b.url(), "frank").await;
    let online = erin
        .wait_for("presence:online", WAIT)
        .await
        .expect("online");
    assert_eq!(online["userId"], "frank");
    let (status, _) = http(
        b.admin,
        "POST",
        "/api/v1/publish",
        Some(&json!({"event": "notice", "data": {"x": 1}, "users": ["erin"]}).to_string()),
        Some(&format!("Bearer {API_KEY}")),
    )
    .await
    .expect("publish");
    assert_eq!(status, 202);
    assert_eq!(erin.wait_for("notice", WAIT).await.expect("notice")["x"], 1);
    for i in 0..20 {
        let r = ack(
            &frank,
            "chat:send",
            json!({"chatId": "only", "content": format!("x{i}")}),
        )
        .await;
        assert_eq!(r["status"], "ACCEPTED");
    }
    frank.close().await;
    let offline = erin
        .wait_for("presence:offline", WAIT)
        .await
        .expect("offline");
    assert_eq!(offline["userId"], "frank");
    assert_eq!(
        erin.collect("chat:message", Duration::from_millis(500))
            .await
            .len(),
        20
    );
    // Node c received none of it: only its canary channel is subscribed, and it applied nothing.
    assert!(
        !subscribers_of(&redis, "c").await.is_empty(),
        "c's subscriber"
    );
    assert_eq!(subscriptions_of(&redis, "c").await, 1);
    assert_eq!(
        frames_read(&c).await,
        c_before,
        "c applied frames of rooms it does not serve"
    );
    assert!(frames_read(&a).await > 20.0);
}

/// `fanout_backplane_entries_read_total` of a node process.
async fn frames_read(node: &NodeProcess) -> f64 {
    let metrics = http_raw(node.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    metrics
        .lines()
        .find(|l| l.starts_with("fanout_backplane_entries_read_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
