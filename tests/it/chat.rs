//! Chat across nodes: delivery, order, offsets, idempotency, typing, history.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_to_every_member_socket_including_the_sender() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("room1", &["alice", "bob"]).await;

    let mut alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let ackv = ack(&alice, "chat:send", json!({"chatId": "room1", "content": "hello", "clientMsgId": "m1"})).await;
    assert_eq!(ackv["success"], true, "{ackv}");
    assert_eq!(ackv["status"], "ACCEPTED");
    assert_eq!(ackv["offset"], 1);
    assert_eq!(ackv["clientMsgId"], "m1");
    assert_eq!(ackv["chatId"], "room1");
    assert!(ackv["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    for c in [&mut alice, &mut bob] {
        let m = c.wait_for("chat:message", WAIT).await.expect("chat:message");
        assert_eq!(m["content"], "hello");
        assert_eq!(m["senderId"], "alice");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["id"], ackv["messageId"]);
        assert_eq!(m["type"], "text");
        assert_eq!(m["epoch"], ackv["epoch"]);
    }
    let _ = Duration::from_secs(0);
}
