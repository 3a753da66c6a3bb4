//! Redis outages: UNAVAILABLE while it is gone, 503 readiness, recovery without restarting nodes.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

async fn ready_status(node: &Node) -> u16 {
    http(node.public, "GET", "/readyz", None, None)
        .await
        .map(|r| r.0)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_gives_unavailable_and_503_then_everything_recovers() {
    let mut redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    assert_eq!(
        ack(
            &alice,
            "chat:send",
            json!({"chatId": "c", "content": "before"})
        )
        .await["status"],
        "ACCEPTED"
    );
    bob.wait_for("chat:message", WAIT)
        .await
        .expect("before the outage");

    redis.stop();
    let r = ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "during", "clientMsgId": "d1"}),
    )
    .await;
    assert_eq!(r["success"], false, "{r}");
    assert_eq!(r["status"], "FAILED");
    assert_eq!(r["clientMsgId"], "d1");
    assert_eq!(r["error"]["code"], "UNAVAILABLE", "{r}");
    let h = ack(&alice, "chat:history", json!({"chatId": "c"})).await;
    assert_eq!(h["error"]["code"], "UNAVAILABLE");
    assert_eq!(ready_status(&a).await, 503);
    assert_eq!(ready_status(&b).await, 503);
    let (status, body) = a.api("GET", "/api/v1/chats/c/members", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert_eq!(
        http(a.public, "GET", "/healthz", None, None)
            .await
            .map(|r| r.0),
        Some(200),
        "process still up"
    );

    // Redis comes back empty (no persistence): the backend re-creates membership.
    redis.restart().await;
    let mut ready = false;
    for _ in 0..100 {
        if ready_status(&a).await == 200 && ready_status(&b).await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "nodes ready again after Redis returned");
    a.create_chat_when_ready("c", &["alice", "bob"]).await;
    let mut sent = None;
    for _ in 0..20 {
        let r = ack(
            &alice,
            "chat:send",
            json!({"chatId": "c", "content": "after"}),
        )
        .await;
        if r["status"] == "ACCEPTED" {
            sent = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = sent.expect("sends work again without restarting nodes");
    assert_eq!(
        sent["offset"], 1,
        "the lost sequence restarts in a new epoch"
    );
    let m = bob
        .wait_for("chat:message", WAIT)
        .await
        .expect("delivered across nodes after recovery");
    assert_eq!(m["content"], "after");
    // New sockets are accepted again too.
    connect(&b.url(), "carol").await;
}
