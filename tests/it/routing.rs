//! Routed service events (docs/protocol.md §5), the example service's reply path, the per-socket
//! event budget, and the `fanout:publish` consumer group across nodes.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[path = "../../examples/sticky_notes.rs"]
#[allow(dead_code)]
mod sticky_notes;

fn with_services() -> NodeOpts {
    NodeOpts::default().with("services", "stickyNotes=events:stickyNotes,whiteboard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_events_land_in_the_service_stream_with_the_tokens_user() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", with_services()).await;
    let alice = connect(&a.url(), "alice").await;
    let payload = json!({"text": "buy milk", "userId": "mallory", "senderId": "mallory"});
    let r = ack(&alice, "stickyNotes:note:create", payload.clone()).await;
    assert_eq!(r["success"], true, "{r}");
    let id = r["id"].as_str().expect("entry id").to_owned();

    let mut conn = redis.conn().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("events:stickyNotes")
        .arg(&id)
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let e = &entries.ids[0];
    let field = |k: &str| e.get::<String>(k).unwrap_or_else(|| panic!("field {k}"));
    assert_eq!(field("event"), "stickyNotes:note:create");
    assert_eq!(
        field("userId"),
        "alice",
        "the token's user, never the payload's"
    );
    assert_eq!(field("socketId"), alice.sid());
    assert_eq!(field("nodeId"), "a");
    assert!(field("receivedAt").ends_with('Z'));
    let stored: serde_json::Value = serde_json::from_str(&field("payload")).unwrap();
    assert_eq!(stored, payload, "payload untouched");

    // The default stream of a bare service name; a missing payload is null.
    let r = ack(&alice, "whiteboard:stroke:add", json!(null)).await;
    assert_eq!(r["success"], true, "{r}");
    let len: usize = redis::cmd("XLEN")
        .arg("events:whiteboard")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);

    for bad in [
        "unknown:note:create",
        "stickyNotes:note",
        "stickyNotes:note:create:extra",
        "stickyNotes::create",
        "sticky Notes:a:b",
    ] {
        let r = ack(&alice, bad, json!({})).await;
        assert_eq!(r["error"]["code"], "INVALID_EVENT", "{bad}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_answers_the_sender_on_another_node() {
    if crate::skip::skip_on_redis(
        "routing::the_example_service_answers_the_sender_on_another_node",
        &[RedisKind::Cluster],
        "examples/sticky_notes.rs speaks to one Redis URL, and its two streams \
         (events:stickyNotes, fanout:publish) are on slots of different masters",
    ) {
        return;
    }
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", with_services()).await;
    let b = Node::start_with(&redis, "b", with_services()).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let url = redis
        .one_server_url()
        .await
        .expect("one server holds all data");
    let service = tokio::spawn(async move {
        sticky_notes::run(&url, "test-instance", async {
            stop_rx.await.ok();
        })
        .await
    });
    let alice_a = connect(&a.url(), "alice").await;
    let mut alice_b = connect(&b.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let r = ack(
        &alice_a,
        "stickyNotes:note:create",
        json!({"text": "hello"}),
    )
    .await;
    assert_eq!(r["success"], true);
    let created = alice_b
        .wait_for("stickyNotes:note:created", WAIT)
        .await
        .expect("reply on node b");
    assert_eq!(created["text"], "hello");
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["noteId"], r["id"]);
    assert!(
        bob.collect("stickyNotes:note:created", QUIET)
            .await
            .is_empty(),
        "only the sender's user"
    );
    stop_tx.send(()).ok();
    assert_eq!(service.await.unwrap().unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_socket_budget_get_rate_limited() {
    let redis = Redis::start().await;
    let opts = with_services()
        .with("rate-limit-per-sec", "5")
        .with("rate-limit-burst", "10");
    let a = Node::start_with(&redis, "a", opts).await;
    let alice = connect(&a.url(), "alice").await;
    let mut codes: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let r = ack(&alice, "stickyNotes:note:create", json!({"text": "spam"})).await;
        let code = if r["success"] == true {
            "ok".to_owned()
        } else {
            r["error"]["code"].as_str().unwrap().to_owned()
        };
        *codes.entry(code).or_default() += 1;
    }
    assert!(
        codes.get("RATE_LIMITED").copied().unwrap_or(0) >= 15,
        "{codes:?}"
    );
    assert!(
        codes.get("ok").copied().unwrap_or(0) >= 10,
        "the burst passes: {codes:?}"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = ack(&alice, "presence:ping", json!(null)).await;
    assert_eq!(r["success"], true, "the budget refills");
}

async fn xadd_publish(redis: &Redis, body: serde_json::Value) {
    let mut conn = redis.conn().await;
    let _: String = redis::cmd("XADD")
        .arg("fanout:publish")
        .arg("*")
        .arg("body")
        .arg(body.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_stream_is_delivered_once_even_with_many_nodes_and_a_kill() {
    const N: u64 = 300;
    let redis = Redis::start().await;
    let fast_claim = NodeOpts::default().with("publish-claim-idle-ms", "1000");
    let mut doomed = NodeProcess::spawn(&redis, "doomed", fast_claim.clone()).await;
    let a = Node::start_with(&redis, "a", fast_claim.clone()).await;
    let _b = Node::start_with(&redis, "b", fast_claim).await;
    let mut alice = connect(&a.url(), "alice").await;
    xadd_publish(&redis, json!({"event": "bad"})).await; // malformed: dropped, not blocking
    for n in 0..N {
        xadd_publish(
            &redis,
            json!({"event": "reply", "data": {"n": n}, "users": ["alice"]}),
        )
        .await;
        if n == N / 3 {
            doomed.kill9();
        }
    }
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < N as usize && tokio::time::Instant::now() < deadline {
        if let Some(v) = alice.wait_for("reply", Duration::from_secs(1)).await {
            *seen.entry(v["n"].as_u64().unwrap()).or_default() += 1;
        }
    }
    for v in alice.collect("reply", Duration::from_secs(2)).await {
        *seen.entry(v["n"].as_u64().unwrap()).or_default() += 1;
    }
    let missing: Vec<u64> = (0..N).filter(|n| !seen.contains_key(n)).collect();
    let dups: Vec<(&u64, &usize)> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(dups.is_empty(), "delivered more than once: {dups:?}");
    let mut conn = redis.conn().await;
    let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg("fanout:publish")
        .arg("fanout")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0, "everything acknowledged");
}
