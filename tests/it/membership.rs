//! The membership and chat endpoints of the server API (docs/protocol.md §6) and how live sockets
//! follow them on every node.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_the_key_and_bad_bodies_are_named() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let routes = [
        ("POST", "/api/v1/chats"),
        ("DELETE", "/api/v1/chats/c"),
        ("PUT", "/api/v1/chats/c/members"),
        ("GET", "/api/v1/chats/c/members"),
        ("DELETE", "/api/v1/chats/c/members/u"),
    ];
    for (method, path) in routes {
        let (status, body) = http(a.admin, method, path, Some("{}"), None)
            .await
            .expect("reachable");
        assert_eq!(status, 401, "{method} {path} without key: {body}");
        assert_eq!(body["error"]["code"], "UNAUTHORIZED");
        let (status, _) = http(a.admin, method, path, Some("{}"), Some("Bearer wrong-key"))
            .await
            .unwrap();
        assert_eq!(status, 401, "{method} {path} with a wrong key");
    }

    let cases: [(&str, &str, &str, &str); 6] = [
        ("POST", "/api/v1/chats", "{not json", "not valid JSON"),
        ("POST", "/api/v1/chats", "[1,2]", "JSON object"),
        ("POST", "/api/v1/chats", r#"{"members": ["a"]}"#, "chatId"),
        (
            "POST",
            "/api/v1/chats",
            r#"{"chatId": "c", "members": "a"}"#,
            "members",
        ),
        (
            "POST",
            "/api/v1/chats",
            r#"{"chatId": "bad id", "members": []}"#,
            "chatId",
        ),
        (
            "PUT",
            "/api/v1/chats/c/members",
            r#"{"userIds": [1]}"#,
            "userIds",
        ),
    ];
    let key = format!("Bearer {API_KEY}");
    for (method, path, body, field) in cases {
        let (status, resp) = http(a.admin, method, path, Some(body), Some(&key))
            .await
            .unwrap();
        assert_eq!(status, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], "INVALID_PAYLOAD");
        let msg = resp["error"]["message"].as_str().unwrap();
        assert!(msg.contains(field), "message {msg:?} should name {field}");
    }
    let big = json!({"chatId": "c", "members": ["a"], "pad": "x".repeat(70 * 1024)}).to_string();
    let (status, resp) = http(a.admin, "POST", "/api/v1/chats", Some(&big), Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "PAYLOAD_TOO_LARGE");

    let huge = "x".repeat(2 * 1024 * 1024);
    let (status, resp) = http(a.admin, "POST", "/api/v1/chats", Some(&huge), Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 413, "{resp}");
    assert_eq!(resp["error"]["code"], "PAYLOAD_TOO_LARGE");
    let (status, resp) = http(a.admin, "PATCH", "/api/v1/chats", Some("{}"), Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert_eq!(resp["error"]["code"], "METHOD_NOT_ALLOWED");

    // The public port serves neither the API nor metrics.
    let (status, _) = http(a.public, "GET", "/api/v1/chats/c/members", None, Some(&key))
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = http(a.public, "GET", "/metrics", None, None).await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_created_reaches_members_on_every_node_and_they_receive_at_once() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    let mut alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let mut carol = connect(&b.url(), "carol").await;
    let (status, body) = b
        .api(
            "POST",
            "/api/v1/chats",
            Some(json!({"chatId": "new", "members": ["bob", "alice"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body, json!({"chatId": "new", "members": ["alice", "bob"]}));
    for c in [&mut alice, &mut bob] {
        let ev = c
            .wait_for("chat:created", WAIT)
            .await
            .expect("chat:created");
        assert_eq!(ev["chatId"], "new");
        assert_eq!(ev["members"], json!(["alice", "bob"]));
        assert!(ev["timestamp"].as_str().is_some());
    }
    assert!(
        carol.collect("chat:created", QUIET).await.is_empty(),
        "non-member notified"
    );
    // Their sockets are in the room without joining.
    ack(
        &alice,
        "chat:send",
        json!({"chatId": "new", "content": "first"}),
    )
    .await;
    let m = bob
        .wait_for("chat:message", WAIT)
        .await
        .expect("delivered without chat:join");
    assert_eq!(m["content"], "first");
    assert!(carol.collect("chat:message", QUIET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_members_moves_live_sockets_on_other_nodes() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let denied = ack(&bob, "chat:send", json!({"chatId": "c", "content": "x"})).await;
    assert_eq!(denied["error"]["code"], "FORBIDDEN");

    let (status, body) = a
        .api(
            "PUT",
            "/api/v1/chats/c/members",
            Some(json!({"userIds": ["bob"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["userIds"], json!(["alice", "bob"]));
    let (_, list) = b.api("GET", "/api/v1/chats/c/members", None).await;
    assert_eq!(list, json!({"userIds": ["alice", "bob"]}));

    ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "welcome"}),
    )
    .await;
    let m = bob
        .wait_for("chat:message", WAIT)
        .await
        .expect("added member receives without rejoining");
    assert_eq!(m["content"], "welcome");
    assert_eq!(
        ack(
            &bob,
            "chat:send",
            json!({"chatId": "c", "content": "thanks"})
        )
        .await["status"],
        "ACCEPTED"
    );

    let (status, body) = a.api("DELETE", "/api/v1/chats/c/members/bob", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = a.api("DELETE", "/api/v1/chats/c/members/bob", None).await;
    assert_eq!(status, 404, "removing twice");
    ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "after"}),
    )
    .await;
    let late: Vec<Value> = bob.collect("chat:message", QUIET).await;
    assert!(
        late.iter().all(|m| m["content"] != "after"),
        "removed member still receives: {late:?}"
    );
    let denied = ack(&bob, "chat:send", json!({"chatId": "c", "content": "x"})).await;
    assert_eq!(denied["error"]["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_chat_emits_chat_deleted_and_stops_delivery() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("doomed", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    ack(
        &alice,
        "chat:send",
        json!({"chatId": "doomed", "content": "bye"}),
    )
    .await;
    bob.wait_for("chat:message", WAIT)
        .await
        .expect("before delete");

    let (status, body) = b.api("DELETE", "/api/v1/chats/doomed", None).await;
    assert_eq!(status, 200, "{body}");
    let ev = bob
        .wait_for("chat:deleted", WAIT)
        .await
        .expect("chat:deleted");
    assert_eq!(ev["chatId"], "doomed");
    assert!(ev["timestamp"].as_str().is_some());

    let after = ack(
        &alice,
        "chat:send",
        json!({"chatId": "doomed", "content": "ghost"}),
    )
    .await;
    assert_eq!(after["error"]["code"], "FORBIDDEN", "{after}");
    assert!(bob.collect("chat:message", QUIET).await.is_empty());
    let (status, _) = a.api("DELETE", "/api/v1/chats/doomed", None).await;
    assert_eq!(status, 404);
    let (_, members) = a.api("GET", "/api/v1/chats/doomed/members", None).await;
    assert_eq!(members, json!({"userIds": []}));

    // Re-created, the chat starts a new sequence in a new epoch.
    a.create_chat("doomed", &["alice"]).await;
    let again = ack(
        &alice,
        "chat:send",
        json!({"chatId": "doomed", "content": "reborn"}),
    )
    .await;
    assert_eq!(again["offset"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_member_lists_touch_no_socket() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("real", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&a.url(), "bob").await;
    let mut carol = connect(&a.url(), "carol").await;
    let (status, _) = a
        .api(
            "POST",
            "/api/v1/chats",
            Some(json!({"chatId": "empty", "members": []})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = a
        .api(
            "PUT",
            "/api/v1/chats/real/members",
            Some(json!({"userIds": []})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        carol.collect("chat:created", QUIET).await.is_empty(),
        "nobody is told of an empty chat"
    );
    // Had every socket joined chat:real, carol would now receive its messages.
    ack(
        &alice,
        "chat:send",
        json!({"chatId": "real", "content": "members only"}),
    )
    .await;
    bob.wait_for("chat:message", WAIT)
        .await
        .expect("member receives");
    assert!(
        carol.collect("chat:message", QUIET).await.is_empty(),
        "non-member received"
    );
}
