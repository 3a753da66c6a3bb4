//! The drain through the real load balancer (deploy/haproxy.cfg): SIGTERM to node A → A's
//! clients reconnect through HAProxy and land on B, keep receiving, and miss nothing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fanout::client::Client;
use serde_json::json;

use crate::harness::*;

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    if Command::new("haproxy").arg("-v").output().is_err() {
        println!("lb test skipped: haproxy not found (make test installs it)");
        return;
    }
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("shutdown-grace-secs", "5");
    let mut a = NodeProcess::spawn(&redis, "a", opts.clone()).await;
    let b = Node::start_with(&redis, "b", opts).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = std::fs::read_to_string(repo_root().join("deploy/haproxy.cfg")).unwrap();
    cfg.push_str(&format!(
        "    server a {} cookie a\n    server b {} cookie b\n",
        a.public, b.public
    ));
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let lb_port = free_port();
    let child = Command::new("haproxy")
        .arg("-f")
        .arg(&cfg_path)
        .env("LB_PORT", lb_port.to_string())
        .env("LB_BIND_ADDR", "127.0.0.1")
        .env("STATS_PORT", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy");
    let _lb = Haproxy(child);
    let lb = format!("http://127.0.0.1:{lb_port}");
    let lb_addr: std::net::SocketAddr = format!("127.0.0.1:{lb_port}").parse().unwrap();
    // Both nodes pass HAProxy's health checks (rise 2, inter 2 s).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(15) {
        if http(lb_addr, "GET", "/readyz", None, None)
            .await
            .map(|r| r.0)
            == Some(200)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

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
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = Client::connect(
            &lb,
            fanout::client::ConnectOptions {
                auth: Some(json!({"token": token(&user_a)})),
                ..Default::default()
            },
        )
        .await
        {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
