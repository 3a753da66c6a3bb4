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

/// `PUBSUB NUMSUB` of one room's channel: how many nodes follow the room.
async fn followers(redis: &Redis, room: &str) -> u64 {
    let mut c = redis.conn().await;
    let reply: Vec<Value> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("fanout:{{{room}}}:ch"))
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

/// The subscriber connection of `node` as `CLIENT LIST` shows it: (id, subscriptions).
async fn subscriber_of(redis: &Redis, node: &str) -> Option<(String, u64)> {
    let mut c = redis.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .ok()?;
    let line = list
        .lines()
        .find(|l| l.contains(&format!(" name=fanout-sub:{node} ")))?;
    let field = |name: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    Some((field("id")?, field("sub")?.parse().ok()?))
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
    let (id, subs) = subscriber_of(&redis, "b").await.expect("b's subscriber");
    assert!(subs >= 3, "canary, user:bob, chat:kill: {subs}");
    let mut c = redis.conn().await;
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
    let reconnected = subscriber_of(&redis, "b").await.expect("b resubscribed");
    assert_ne!(reconnected.0, id);
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
    let (_, subs) = subscriber_of(&redis, "a").await.expect("a's subscriber");
    assert_eq!(subs, 1, "only the canary channel is left");
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
    let (_, subs) = subscriber_of(&redis, "c").await.expect("c's subscriber");
    assert_eq!(subs, 1);
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
