//! Sessions that outlive their first token (docs/protocol.md §1): `session:expiring` ahead of
//! the end, `session:refresh` moving the end without a reconnect, and what a refused refresh
//! leaves as it was.

use std::time::{Duration, Instant};

use fanout_client::{Client, ClientError};
use serde_json::json;

use crate::auth::with_auth;
use crate::harness::*;

fn short_token(user: &str, secs: u64) -> (String, u64) {
    let exp = fanout::auth::now_secs() + secs;
    let token = fanout::auth::mint_hs256(SECRET, user, exp, None).expect("mint");
    (token, exp)
}

/// Leeway 0 (the session ends at `exp`), warned 1 s ahead.
async fn node(redis: &Redis) -> Node {
    let opts = NodeOpts::default()
        .with("jwt-leeway-secs", "0")
        .with("session-expiry-notice-secs", "1");
    Node::start_with(redis, "a", opts).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_socket_stays_connected_with_its_rooms_and_presence() {
    let redis = Redis::start().await;
    let node = node(&redis).await;
    node.create_chat("c1", &["alice", "bob"]).await;
    let mut bob = connect(&node.url(), "bob").await;
    let (token, _) = short_token("alice", 5);
    let mut alice = Client::connect(&node.url(), with_auth(&token))
        .await
        .expect("connect");
    bob.wait_for("presence:online", WAIT)
        .await
        .expect("alice online");

    // Three refreshes, each answering the notice (1 s before the end) with a fresh 5-second
    // token: the session reaches 4 + 4 + 4 + 5 = 17 s.
    let started = Instant::now();
    for round in 0..3 {
        let notice = alice
            .wait_for("session:expiring", Duration::from_secs(6))
            .await
            .unwrap_or_else(|| panic!("session:expiring before refresh {round}"));
        assert!(
            notice["exp"].is_u64() && notice["timestamp"].is_string(),
            "{notice}"
        );
        let (token, exp) = short_token("alice", 5);
        let granted = alice
            .refresh_session(&token, WAIT)
            .await
            .expect("refresh accepted");
        assert_eq!(granted, exp);
    }
    // Stay until 15 s passed in all.
    let rest = Duration::from_secs(15).saturating_sub(started.elapsed());
    assert!(
        alice.wait_for("session:expired", rest).await.is_none(),
        "no expiry while refreshed"
    );
    assert!(!alice.is_closed(), "still connected after 15 s");

    // Rooms untouched: bob's message reaches alice; presence untouched: bob never saw alice go.
    let sent = ack(
        &bob,
        "chat:send",
        json!({ "chatId": "c1", "content": "still there?" }),
    )
    .await;
    assert_eq!(sent["success"], true, "{sent}");
    let got = alice
        .wait_for("chat:message", WAIT)
        .await
        .expect("message in the chat room");
    assert_eq!(got["content"], "still there?");
    let offline: Vec<_> = bob
        .collect("presence:offline", QUIET)
        .await
        .into_iter()
        .filter(|e| e["userId"] == "alice")
        .collect();
    assert!(offline.is_empty(), "peers saw no offline: {offline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_leaves_the_session_to_expire_as_it_was() {
    let redis = Redis::start().await;
    let node = node(&redis).await;
    let (token, exp) = short_token("alice", 4);
    let mut alice = Client::connect(&node.url(), with_auth(&token))
        .await
        .expect("connect");

    // Another user's token, an expired one, garbage, and no token at all.
    let (bobs, _) = short_token("bob", 600);
    let expired = fanout::auth::mint_hs256(SECRET, "alice", exp - 100, None).unwrap();
    for (bad, code) in [
        (json!({ "token": bobs }), "UNAUTHORIZED"),
        (json!({ "token": expired }), "UNAUTHORIZED"),
        (json!({ "token": "not.a.jwt" }), "UNAUTHORIZED"),
        (json!({}), "INVALID_PAYLOAD"),
        (json!("token"), "INVALID_PAYLOAD"),
    ] {
        let a = ack(&alice, "session:refresh", bad.clone()).await;
        assert_eq!(a["success"], false, "{bad} -> {a}");
        assert_eq!(a["error"]["code"], code, "{bad} -> {a}");
    }
    match alice.refresh_session(&bobs, WAIT).await {
        Err(ClientError::Failed(e)) => assert!(e.contains("another user"), "{e}"),
        other => panic!("a foreign token must be refused: {other:?}"),
    }

    // Warned first (1 s ahead), then expired at the original exp.
    let mut seen = Vec::new();
    while let Some((name, _)) = alice.next_event(Duration::from_secs(8)).await {
        if name.starts_with("session:") {
            seen.push(name.clone());
        }
        if name == "session:expired" {
            break;
        }
    }
    assert_eq!(seen, ["session:expiring", "session:expired"]);
    let now = fanout::auth::now_secs();
    assert!(
        now >= exp && now <= exp + 2,
        "expired at the original exp ({exp}), now {now}"
    );
    assert!(alice.wait_closed(Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_already_inside_its_notice_is_warned_at_connect() {
    let redis = Redis::start().await;
    // The default notice, 60 s, and a 30-second token.
    let node = Node::start(&redis, "a").await;
    let (token, exp) = short_token("alice", 30);
    let mut alice = Client::connect(&node.url(), with_auth(&token))
        .await
        .expect("connect");
    let notice = alice
        .wait_for("session:expiring", Duration::from_secs(1))
        .await
        .expect("warned at once");
    assert_eq!(notice["exp"], exp);
}
