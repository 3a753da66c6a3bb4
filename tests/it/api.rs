//! Server API (docs/protocol.md §6): publish, presence, disconnect, nodes, the OpenAPI document,
//! and the `fanout:publish` stream with its consumer group.

use std::collections::HashSet;
use std::time::Duration;

use fanout_client::Client;
use serde_json::{Value, json};

use crate::harness::*;

/// Collects the `name` events with `data.n` for `window`, as a list of n.
async fn numbers(c: &mut Client, name: &str, window: Duration) -> Vec<u64> {
    c.collect(name, window)
        .await
        .iter()
        .filter_map(|v| v["n"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_exactly_the_targets_on_every_node() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c42", &["carol", "dave"]).await;
    let mut alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let mut carol = connect(&b.url(), "carol").await;
    let mut dave = connect(&a.url(), "dave").await;
    let mut eve = connect(&b.url(), "eve").await;

    let (status, body) = a
        .api(
            "POST",
            "/api/v1/publish",
            Some(json!({"event": "new-message", "data": {"n": 1}, "users": ["alice", "bob"]})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["id"].as_str().is_some_and(|id| id.contains('-')),
        "{body}"
    );
    let (status, _) = b
        .api("POST", "/api/v1/publish", Some(json!({"event": "new-message", "data": {"n": 2}, "chats": ["c42"], "except": ["user:dave"]})))
        .await;
    assert_eq!(status, 202);
    let (status, _) = a
        .api("POST", "/api/v1/publish", Some(json!({"event": "new-message", "data": {"n": 3}, "rooms": ["user:eve", "chat:c42"]})))
        .await;
    assert_eq!(status, 202);

    let w = Duration::from_millis(1500);
    assert_eq!(numbers(&mut alice, "new-message", w).await, [1]);
    assert_eq!(numbers(&mut bob, "new-message", QUIET).await, [1]);
    assert_eq!(numbers(&mut carol, "new-message", QUIET).await, [2, 3]);
    assert_eq!(
        numbers(&mut dave, "new-message", QUIET).await,
        [3],
        "except skipped dave"
    );
    assert_eq!(numbers(&mut eve, "new-message", QUIET).await, [3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_publishes_once_and_bad_bodies_name_the_field() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let mut alice = connect(&a.url(), "alice").await;
    let key = format!("Bearer {API_KEY}");
    let body = json!({"event": "ping", "data": {"n": 7}, "users": ["alice"]}).to_string();
    let send = |idem: &'static str| {
        let body = body.clone();
        let key = key.clone();
        let addr = a.admin;
        async move {
            let fut = async {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let req = format!(
                    "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nAuthorization: {key}\r\nIdempotency-Key: {idem}\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            fut.await
        }
    };
    let first = send("retry-me").await;
    let second = send("retry-me").await;
    assert!(first.starts_with("HTTP/1.1 202"), "{first}");
    assert!(second.starts_with("HTTP/1.1 202"), "{second}");
    let id =
        |r: &str| -> Value { serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap() };
    assert_eq!(id(&first)["id"], id(&second)["id"]);
    assert_eq!(
        numbers(&mut alice, "ping", Duration::from_millis(1000)).await,
        [7],
        "published once"
    );

    for (payload, field) in [
        (json!({"data": 1, "users": ["alice"]}), "event"),
        (json!({"event": "x"}), "target"),
        (json!({"event": "x", "rooms": ["nowhere"]}), "rooms"),
        (json!({"event": "x", "users": "alice"}), "users"),
        (json!({"event": "x", "chats": [5]}), "chats"),
        (
            json!({"event": "x", "users": ["a"], "except": ["bad"]}),
            "except",
        ),
    ] {
        let (status, resp) = a
            .api("POST", "/api/v1/publish", Some(payload.clone()))
            .await;
        assert_eq!(status, 400, "{payload}: {resp}");
        assert!(
            resp["error"]["message"].as_str().unwrap().contains(field),
            "{resp} should name {field}"
        );
    }
    let big = json!({"event": "x", "users": ["a"], "data": "y".repeat(70 * 1024)}).to_string();
    let (status, resp) = http(a.admin, "POST", "/api/v1/publish", Some(&big), Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 413, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_closes_that_users_sockets_on_every_node_and_nobody_elses() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    let alice_a = connect(&a.url(), "alice").await;
    let alice_b = connect(&b.url(), "alice").await;
    let bob = connect(&b.url(), "bob").await;
    let (status, body) = a.api("POST", "/api/v1/users/alice/disconnect", None).await;
    assert_eq!(status, 202, "{body}");
    assert!(alice_a.wait_closed(WAIT).await, "alice on a");
    assert!(alice_b.wait_closed(WAIT).await, "alice on b");
    assert!(!bob.wait_closed(QUIET).await, "bob kept");
    assert_eq!(
        ack(&bob, "presence:ping", json!(null)).await["success"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_nodes_endpoints() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    let _alice = connect(&a.url(), "alice").await;
    let _alice2 = connect(&b.url(), "alice").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = a.api("GET", "/api/v1/presence?users=alice,bob", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["online"], json!(["alice"]));
    let sockets = body["sockets"]["alice"].as_array().unwrap();
    assert_eq!(sockets.len(), 2);
    let nodes: HashSet<&str> = sockets
        .iter()
        .map(|s| s["nodeId"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, HashSet::from(["a", "b"]));
    assert!(
        sockets
            .iter()
            .all(|s| s["socketId"].is_string() && s["connectedAt"].is_string())
    );
    let (status, _) = a.api("GET", "/api/v1/presence", None).await;
    assert_eq!(status, 400);
    let (status, _) = a.api("GET", "/api/v1/presence?users=bad%20id", None).await;
    assert_eq!(status, 400);

    let list = || async {
        let (status, body) = b.api("GET", "/api/v1/nodes", None).await;
        assert_eq!(status, 200);
        body
    };
    let both = |body: &Value| body["nodes"].as_array().is_some_and(|n| n.len() == 2);
    let listed = eventually(
        Duration::from_secs(12),
        Duration::from_millis(200),
        list,
        both,
    )
    .await;
    let nodes = listed["nodes"]
        .as_array()
        .filter(|n| n.len() == 2)
        .expect("both nodes listed");
    assert_eq!(nodes[0]["nodeId"], "a");
    assert_eq!(nodes[1]["nodeId"], "b");
    for n in nodes {
        assert!(
            n["connections"].as_u64().is_some()
                && n["startedAt"].is_string()
                && n["lastSeen"].is_string(),
            "{n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_exactly_the_routes_the_router_serves() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let doc =
        std::fs::read_to_string(repo_root().join("docs/openapi.yaml")).expect("docs/openapi.yaml");
    // Paths are top-level keys under `paths:` ("  /api/v1/...:"), methods the keys below them.
    let mut documented = HashSet::new();
    let mut path = None;
    for line in doc.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let (Some(p), Some(m)) = (
            &path,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) {
            if ["get", "post", "put", "delete", "patch"].contains(&m) {
                documented.insert((m.to_uppercase(), p.clone()));
            }
        } else if !line.starts_with(' ') && !line.is_empty() {
            path = None;
        }
    }
    let served: HashSet<(String, String)> = fanout::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let mut only_doc: Vec<_> = documented.difference(&served).collect();
    let mut only_router: Vec<_> = served.difference(&documented).collect();
    only_doc.sort();
    only_router.sort();
    assert!(
        only_doc.is_empty() && only_router.is_empty(),
        "documented only: {only_doc:?}; served only: {only_router:?}"
    );
    // Every listed route exists in the router (401 without a key, not 404/405).
    for (method, path) in fanout::api::ROUTES {
        let concrete = path.replace("{chatId}", "c").replace("{userId}", "u");
        let (status, _) = http(a.admin, method, &concrete, Some("{}"), None)
            .await
            .unwrap();
        assert_eq!(status, 401, "{method} {path}");
    }
    let metrics = doc.contains("/metrics");
    assert!(metrics, "the document mentions /metrics");
}
