//! Hostile input: whatever a client sends, it gets a clear error or a closed connection, never
//! a crashed node, and never a room it does not belong to.

use std::time::Duration;

use fanout_client::{Client, ClientError, ConnectOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::*;

async fn still_serving(node: &Node, bob: &mut Client, tag: &str) {
    let alice = connect(&node.url(), "alice").await;
    let r = ack(&alice, "chat:send", json!({"chatId": "c", "content": tag})).await;
    assert_eq!(r["status"], "ACCEPTED", "after {tag}: {r}");
    let m = bob
        .wait_for("chat:message", WAIT)
        .await
        .unwrap_or_else(|| panic!("bob served after {tag}"));
    assert_eq!(m["content"], tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_payloads_never_take_the_node_down() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut bob = connect(&a.url(), "bob").await;

    let deep = format!(
        "42[\"chat:send\",{}1{}]",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge_array = format!(
        "42[\"chat:send\",{{\"chatId\":\"c\",\"content\":[{}0]}}]",
        "0,".repeat(20_000)
    );
    let frames: Vec<(&str, String)> = vec![
        ("deep nesting", deep),
        ("huge array", huge_array),
        (
            "invalid utf-8 escape",
            "42[\"chat:send\",{\"chatId\":\"c\",\"content\":\"\\ud800\"}]".into(),
        ),
        (
            "binary placeholder",
            "451-[\"chat:send\",{\"_placeholder\":true,\"num\":0}]".into(),
        ),
        ("other namespace", "42/admin,[\"chat:send\",{}]".into()),
        ("odd event name", "42[\"\\u0000\\n<script>\",{}]".into()),
        (
            "ack id overflow",
            "4299999999999999999999[\"chat:send\",{}]".into(),
        ),
        ("engine.io upgrade probe", "5".into()),
        ("empty", String::new()),
    ];
    for (what, frame) in frames {
        let c = connect(&a.url(), "alice").await;
        c.send_raw(frame).await.ok();
        c.send_raw_binary(vec![0xde, 0xad, 0xbe, 0xef]).await.ok();
        tokio::time::sleep(Duration::from_millis(30)).await;
        still_serving(&a, &mut bob, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_probing_is_refused() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    // Only the default namespace exists: a CONNECT to another one gets CONNECT_ERROR.
    let c = connect(&a.url(), "alice").await;
    c.send_raw(format!("40/admin,{{\"token\":\"{}\"}}", token("alice")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ack(&c, "presence:ping", json!(null)).await["success"],
        true,
        "default namespace unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identities_in_payloads_are_ignored() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("c", &["alice", "bob"]).await;
    a.create_chat("secret", &["carol"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&a.url(), "bob").await;
    let r = ack(&alice, "chat:send", json!({"chatId": "c", "content": "hi", "senderId": "carol", "userId": "carol", "offset": 99})).await;
    assert_eq!(r["offset"], 1);
    let m = bob.wait_for("chat:message", WAIT).await.expect("message");
    assert_eq!(m["senderId"], "alice", "sender comes from the token");
    // Cross-chat: a non-member can neither send to, read from nor join another chat.
    for (event, payload) in [
        ("chat:send", json!({"chatId": "secret", "content": "x"})),
        ("chat:history", json!({"chatId": "secret"})),
        ("chat:join", json!({"chatId": "secret"})),
    ] {
        assert_eq!(
            ack(&alice, event, payload).await["error"]["code"],
            "FORBIDDEN",
            "{event}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_tricks_are_refused() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let now = fanout::auth::now_secs();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let mut kid = Header::new(Algorithm::HS256);
    kid.kid = Some("../../../../dev/null".into());
    let kid_token = jsonwebtoken::encode(
        &kid,
        &json!({"sub": "alice", "exp": now + 60}),
        &EncodingKey::from_secret(b""),
    )
    .unwrap();
    let nbf = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}),
        &key,
    )
    .unwrap();
    let bad_sub = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "a{b}", "exp": now + 60}),
        &key,
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice"}),
        &key,
    )
    .unwrap();
    for (what, t) in [
        ("kid injection", kid_token),
        ("not yet valid", nbf),
        ("sub with braces", bad_sub),
        ("no exp", no_exp),
    ] {
        let r = Client::connect(
            &a.url(),
            ConnectOptions {
                auth: Some(json!({"token": t})),
                ..Default::default()
            },
        )
        .await;
        match r {
            Err(ClientError::Refused(msg)) => {
                assert!(msg.starts_with("UNAUTHORIZED"), "{what}: {msg}")
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: accepted"),
        }
    }
    // A token in the auth object of the wrong type.
    let r = Client::connect(
        &a.url(),
        ConnectOptions {
            auth: Some(json!({"token": 42})),
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(r, Err(ClientError::Refused(ref m)) if m.starts_with("UNAUTHORIZED")),
        "{:?}",
        r.err()
    );
}
