//! Bad input gets the right error code and changes nothing else (docs/protocol.md §2).

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_payloads_get_invalid_payload_naming_the_field() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("c", &["alice"]).await;
    let alice = connect(&a.url(), "alice").await;
    let too_long = "x".repeat(16385);
    let cases: Vec<(&str, Value, &str)> = vec![
        ("chat:send", json!("just a string"), "JSON object"),
        ("chat:send", json!([1, 2]), "JSON object"),
        ("chat:send", json!(null), "JSON object"),
        ("chat:send", json!({"content": "x"}), "chatId"),
        ("chat:send", json!({"chatId": 42, "content": "x"}), "chatId"),
        ("chat:send", json!({"chatId": "c"}), "content"),
        (
            "chat:send",
            json!({"chatId": "c", "content": {"nested": true}}),
            "content",
        ),
        (
            "chat:send",
            json!({"chatId": "c", "content": too_long}),
            "content",
        ),
        (
            "chat:send",
            json!({"chatId": "c", "content": "x", "type": "video"}),
            "type",
        ),
        (
            "chat:send",
            json!({"chatId": "c", "content": "x", "clientMsgId": 7}),
            "clientMsgId",
        ),
        (
            "chat:send",
            json!({"chatId": "c", "content": "x", "clientMsgId": "a".repeat(65)}),
            "clientMsgId",
        ),
        (
            "chat:send",
            json!({"chatId": "x".repeat(129), "content": "x"}),
            "chatId",
        ),
        ("chat:join", json!({"chatId": "has space"}), "chatId"),
        (
            "chat:history",
            json!({"chatId": "c", "limit": "ten"}),
            "limit",
        ),
        ("chat:history", json!({"chatId": "c", "epoch": 5}), "epoch"),
        ("chat:read", json!({"chatId": "c"}), "messageId"),
        ("chat:typing", json!({"chatId": "c"}), "isTyping"),
    ];
    for (event, payload, field) in cases {
        let r = ack(&alice, event, payload.clone()).await;
        assert_eq!(r["success"], false, "{event} {payload}: {r}");
        assert_eq!(
            r["error"]["code"], "INVALID_PAYLOAD",
            "{event} {payload}: {r}"
        );
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(field),
            "{event}: message {msg:?} should name {field}"
        );
    }
    // Exactly MAX_MESSAGE_BYTES is fine; nothing of the above was appended.
    let ok = ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "x".repeat(16384)}),
    )
    .await;
    assert_eq!(ok["offset"], 1, "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_events_get_invalid_event_and_failures_without_ack_get_an_error_event() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let mut alice = connect(&a.url(), "alice").await;
    for name in ["no-such-event", "chat:explode", "a:b:c", "💥", ""] {
        let r = ack(&alice, name, json!({})).await;
        assert_eq!(r["error"]["code"], "INVALID_EVENT", "{name:?}: {r}");
    }
    alice
        .emit("chat:send", json!({"chatId": 5}))
        .await
        .expect("emit");
    let e = alice.wait_for("error", WAIT).await.expect("error event");
    assert_eq!(
        e,
        json!({"event": "chat:send", "code": "INVALID_PAYLOAD", "message": "chatId must be a string"})
    );
    alice.emit("nope", json!({})).await.expect("emit");
    let e = alice.wait_for("error", WAIT).await.expect("error event");
    assert_eq!(e["code"], "INVALID_EVENT");
    assert_eq!(e["event"], "nope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_that_connection() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut bob = connect(&a.url(), "bob").await;
    let hostile = [
        "42[\"chat:send\",{not json",
        "42{\"not\":\"an array\"}",
        "42[1,2,3]",
        "4Z",
        "999",
        "42/../admin,[\"x\"]",
    ];
    for raw in hostile {
        let victim = connect(&a.url(), "alice").await;
        victim.send_raw(raw.to_owned()).await.ok();
        // Either the server ignores it or closes this one connection; it must keep serving.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let still = connect(&a.url(), "alice").await;
        let r = ack(
            &still,
            "chat:send",
            json!({"chatId": "c", "content": format!("after {raw}")}),
        )
        .await;
        assert_eq!(r["status"], "ACCEPTED", "after {raw:?}: {r}");
        let m = bob
            .wait_for("chat:message", WAIT)
            .await
            .expect("bob still served");
        assert_eq!(m["content"], format!("after {raw}"));
    }
    // A websocket message above WS_MAX_MESSAGE_BYTES closes that connection only.
    let big = connect(&a.url(), "alice").await;
    big.send_raw(format!(
        "42[\"chat:send\",{{\"chatId\":\"c\",\"content\":\"{}\"}}]",
        "y".repeat(140_000)
    ))
    .await
    .ok();
    assert!(
        big.wait_closed(WAIT).await,
        "oversized frame closes the connection"
    );
    let r = ack(
        &bob,
        "chat:send",
        json!({"chatId": "c", "content": "still here"}),
    )
    .await;
    assert_eq!(r["status"], "ACCEPTED");
    // Binary garbage where text is expected.
    let bin = connect(&a.url(), "alice").await;
    bin.send_raw_binary(vec![0xff, 0x00, 0xfe, 0x42]).await.ok();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = ack(&bob, "chat:history", json!({"chatId": "c"})).await;
    assert_eq!(r["success"], true);
}
