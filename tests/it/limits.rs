//! Per-user and per-socket limits: connections per user (cluster-wide), rooms per socket, and
//! a disconnect after sustained abuse of the event budget.

use std::time::Duration;

use fanout_client::{Client, ClientError, ConnectOptions};
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped_cluster_wide() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("max-connections-per-user", "2");
    let a = Node::start_with(&redis, "a", opts.clone()).await;
    let b = Node::start_with(&redis, "b", opts).await;
    let first = connect(&a.url(), "alice").await;
    let _second = connect(&b.url(), "alice").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = Client::connect(
        &a.url(),
        ConnectOptions {
            auth: Some(json!({"token": token("alice")})),
            ..Default::default()
        },
    )
    .await;
    match third {
        Err(ClientError::Refused(m)) => assert!(m.starts_with("RATE_LIMITED"), "{m}"),
        other => panic!(
            "third connection of alice: {:?}",
            other.map(|c| c.sid().to_owned())
        ),
    }
    connect(&a.url(), "bob").await; // other users are unaffected
    first.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect(&b.url(), "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_per_socket_are_capped() {
    let redis = Redis::start().await;
    let a = Node::start_with(
        &redis,
        "a",
        NodeOpts::default().with("max-rooms-per-socket", "3"),
    )
    .await;
    for c in ["c1", "c2", "c3"] {
        a.create_chat(c, &["alice"]).await;
    }
    let alice = connect(&a.url(), "alice").await;
    assert_eq!(
        ack(&alice, "chat:leave", json!({"chatId": "c3"})).await["success"],
        true
    );
    let r = ack(&alice, "chat:join", json!({"chatId": "c3"})).await;
    assert_eq!(r["error"]["code"], "RATE_LIMITED", "{r}");
    // Re-joining a room it is already in is not a new room.
    assert_eq!(
        ack(&alice, "chat:join", json!({"chatId": "c1"})).await["success"],
        true
    );
    assert_eq!(
        ack(&alice, "chat:leave", json!({"chatId": "c2"})).await["success"],
        true
    );
    assert_eq!(
        ack(&alice, "chat:join", json!({"chatId": "c3"})).await["success"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_abuse_of_the_budget_ends_in_a_disconnect() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("rate-limit-per-sec", "1")
        .with("rate-limit-burst", "1")
        .with("rate-limit-disconnect-after", "20");
    let a = Node::start_with(&redis, "a", opts).await;
    let mut abuser = connect(&a.url(), "mallory").await;
    let polite = connect(&a.url(), "alice").await;
    for _ in 0..40 {
        abuser.emit("presence:ping", json!(null)).await.ok();
    }
    let e = abuser.wait_for("error", WAIT).await.expect("error events");
    assert_eq!(e["code"], "RATE_LIMITED");
    assert!(
        abuser.wait_closed(WAIT).await,
        "disconnected after sustained abuse"
    );
    assert_eq!(
        ack(&polite, "presence:ping", json!(null)).await["success"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_answers_in_the_chat_send_shape() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("rate-limit-per-sec", "1")
        .with("rate-limit-burst", "1");
    let a = Node::start_with(&redis, "a", opts).await;
    a.create_chat("c", &["alice"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut limited = None;
    for i in 0..5 {
        let r = ack(
            &alice,
            "chat:send",
            json!({"chatId": "c", "content": "x", "clientMsgId": format!("m{i}")}),
        )
        .await;
        if r["success"] == false {
            limited = Some((i, r));
            break;
        }
    }
    let (i, r) = limited.expect("the budget refused a send");
    assert_eq!(r["status"], "FAILED");
    assert_eq!(r["clientMsgId"], format!("m{i}"));
    assert_eq!(r["error"]["code"], "RATE_LIMITED");
}

/// While Redis stalls, a socket's sends wait for their turn holding their payloads; at most its
/// burst (`RATE_LIMIT_BURST`) may wait at once, and the ones beyond are answered `UNAVAILABLE`
/// at once instead of piling up for as long as the stall lasts (docs/reliability.md). The ones
/// that waited are accepted once Redis is back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_waiting_on_a_stalled_redis_are_capped_per_socket() {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]).await;
    let opts = NodeOpts::default()
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "20");
    let a = Node::start_with(&redis, "a", opts).await;
    a.create_chat("c", &["alice"]).await;
    let alice = std::sync::Arc::new(connect(&a.url(), "alice").await);
    let stall = redis.stall(3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = std::time::Instant::now();
    let mut sends = Vec::new();
    for i in 0..50 {
        // 10 ms apart: within the event budget (1000/s), so only the cap refuses.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let alice = std::sync::Arc::clone(&alice);
        sends.push(tokio::spawn(async move {
                let r = alice
                    .emit_with_ack(
                        "chat:send",
                        json!({"chatId": "c", "content": format!("m{i}"), "clientMsgId": format!("k{i}")}),
                        Duration::from_secs(20),
                    )
                    .await
                    .expect("every send is answered");
            (r, t0.elapsed())
        }));
    }
    let mut accepted = Vec::new();
    let (mut refused_fast, mut timed_out, mut other) = (0, 0, Vec::new());
    for s in sends {
        let (r, at) = s.await.expect("send task");
        let code = &r["error"]["code"];
        let waiting = r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("too many sends waiting"));
        if r["status"] == "ACCEPTED" {
            accepted.push(r["offset"].as_u64().expect("offset"));
        } else if code == "UNAVAILABLE" && waiting && at < Duration::from_secs(2) {
            refused_fast += 1;
        } else if code == "UNAVAILABLE" && !waiting {
            // The send at the head of the queue gives up after the command timeout (2 s).
            timed_out += 1;
        } else {
            other.push(r);
        }
    }
    stall.await.expect("stall task");
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    // At most the burst (20) waited; the sends beyond it were refused while Redis still slept.
    assert!(
        refused_fast >= 50 - 20 - 1 && accepted.len() + timed_out <= 20 && timed_out <= 2,
        "{} accepted, {refused_fast} refused at once, {timed_out} timed out",
        accepted.len()
    );
    assert!(accepted.len() >= 15, "the waiting sends went through");
    assert_eq!(accepted.len() + refused_fast + timed_out, 50);
    let mut sorted = accepted.clone();
    sorted.sort_unstable();
    // In order and consecutive (a send that timed out may still have run when Redis woke and
    // taken the first offset: UNAVAILABLE means "not known to be accepted", §11 reading 33).
    assert_eq!(accepted, sorted);
    assert!(sorted.windows(2).all(|w| w[1] == w[0] + 1), "{sorted:?}");
    // Sends work again.
    let r = ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "after"}),
    )
    .await;
    assert_eq!(r["status"], "ACCEPTED", "{r}");
}

/// `MAX_CONNECTS_PER_SEC`: a node takes at most that many new connections per second (burst:
/// one second's worth); beyond it the handshake is refused at once with a clear `RATE_LIMITED`,
/// counted under `connect_rate`, and a client that backs off gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_node_are_rate_limited_with_a_clear_refusal() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("max-connects-per-sec", "5");
    let a = Node::start_with(&redis, "a", opts).await;
    let try_connect = |user: String| {
        let url = a.url();
        async move {
            Client::connect(
                &url,
                ConnectOptions {
                    auth: Some(json!({"token": token(&user)})),
                    ..Default::default()
                },
            )
            .await
        }
    };
    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..12 {
        match try_connect(format!("u{i}")).await {
            Ok(c) => admitted.push(c),
            Err(ClientError::Refused(m)) => refused.push(m),
            Err(e) => panic!("connect u{i}: {e}"),
        }
    }
    // Five at once, and the bucket refills one every 200 ms while the burst is connecting.
    assert!(
        (5..=8).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    assert!(!refused.is_empty());
    for m in &refused {
        assert!(
            m.starts_with("RATE_LIMITED: this node accepts at most 5 new connections per second"),
            "{m}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    try_connect("late".into())
        .await
        .expect("admitted again after a backoff");
    let (_, metrics) = http_raw(a.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("metrics");
    assert!(
        metrics.contains("fanout_connect_refusals_total{reason=\"connect_rate\"}"),
        "refusals counted"
    );
}
