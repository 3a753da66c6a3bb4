//! Per-user and per-socket limits: connections per user (cluster-wide), rooms per socket, and
//! a disconnect after sustained abuse of the event budget.

use std::time::Duration;

use fanout::client::{Client, ClientError, ConnectOptions};
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
