//! The drain through the real load balancer (deploy/haproxy.cfg): SIGTERM to node A → A's
//! clients reconnect through HAProxy and land on B, keep receiving, and miss nothing.

use std::time::{Duration, Instant};

use fanout_client::Client;
use serde_json::json;

use crate::harness::*;
use crate::skip::require_tools;

/// The node a user's only socket is on, from the presence API.
async fn node_of(node: &Node, user: &str) -> Option<String> {
    let (_, body) = node
        .api("GET", &format!("/api/v1/presence?users={user}"), None)
        .await;
    body["sockets"][user].as_array()?.first()?["nodeId"]
        .as_str()
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_through_the_load_balancer_moves_clients_to_the_other_node() {
    if !require_tools(
        "lb::sigterm_through_the_load_balancer_moves_clients_to_the_other_node",
        &["haproxy"],
        HAPROXY_HINT,
    ) {
        return;
    }
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("shutdown-grace-secs", "5");
    let mut a = NodeProcess::spawn(&redis, "a", opts.clone()).await;
    let b = Node::start_with(&redis, "b", opts).await;

    let haproxy = Haproxy::start(&[("a", a.public), ("b", b.public)]).await;
    let lb = haproxy.url();

    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    b.create_chat("c", &refs).await;
    let mut clients: Vec<(String, Client)> = Vec::new();
    for u in &users {
        clients.push((u.clone(), connect(&lb, u).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut on_a, mut on_b) = (None, None);
    for (u, c) in clients {
        match node_of(&b, &u).await.as_deref() {
            Some("a") if on_a.is_none() => on_a = Some((u, c)),
            Some("b") if on_b.is_none() => on_b = Some((u, c)),
            _ => {}
        }
    }
    let (user_a, client_a) = on_a.expect("a client on node a");
    let (user_b, client_b) = on_b.expect("a client on node b");
    let first = ack(
        &client_b,
        "chat:send",
        json!({"chatId": "c", "content": "before"}),
    )
    .await;

    // Messages keep coming from B's client while A drains.
    let sender = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for i in 0..20 {
            let r = ack(
                &client_b,
                "chat:send",
                json!({"chatId": "c", "content": format!("during {i}")}),
            )
            .await;
            assert_eq!(r["status"], "ACCEPTED", "{r}");
            offsets.push(r["offset"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        offsets
    });
    let t0 = Instant::now();
    let term = tokio::task::spawn_blocking(move || a.terminate());
    assert!(
        client_a.wait_closed(Duration::from_secs(5)).await,
        "A closed its sockets"
    );
    // The client reconnects through the load balancer, as a Socket.IO client would.
    let reconnect = || async {
        let opts = fanout_client::ConnectOptions {
            auth: Some(json!({"token": token(&user_a)})),
            ..Default::default()
        };
        Client::connect(&lb, opts).await.ok()
    };
    let every = Duration::from_millis(100);
    let again = eventually(Duration::from_secs(5), every, reconnect, Option::is_some).await;
    let mut client_a = again.expect("reconnected through the load balancer");
    let status = term.await.unwrap().expect("exit status");
    assert!(status.success(), "A exits 0: {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(7),
        "within the grace: {:?}",
        t0.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node_of(&b, &user_a).await.as_deref(),
        Some("b"),
        "landed on B"
    );

    let offsets = sender.await.unwrap();
    let got = history_offsets(&client_a, "c", &first["offset"]).await;
    assert_eq!(
        got, offsets,
        "every message accepted during the drain is there, in order"
    );
    // And it keeps receiving live.
    let live_sender = connect(&b.url(), &user_b).await;
    ack(
        &live_sender,
        "chat:send",
        json!({"chatId": "c", "content": "after"}),
    )
    .await;
    let mut live = false;
    while let Some(m) = client_a.wait_for("chat:message", WAIT).await {
        if m["content"] == "after" {
            live = true;
            break;
        }
    }
    assert!(live, "live delivery after the move");
}
