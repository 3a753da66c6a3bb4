//! Handshake authentication (PROTOCOL.md §1): where the token may come from and what is refused.

use std::time::Duration;

use fanout::client::{Client, ClientError, ConnectOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::*;

async fn refused(url: &str, opts: ConnectOptions) -> String {
    match Client::connect(url, opts).await {
        Err(ClientError::Refused(msg)) => msg,
        Err(other) => panic!("expected a CONNECT_ERROR, got {other}"),
        Ok(_) => panic!("expected a refusal, but the socket connected"),
    }
}

fn with_auth(token: &str) -> ConnectOptions {
    ConnectOptions {
        auth: Some(json!({ "token": token })),
        ..Default::default()
    }
}

fn sign(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn b64url(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_connect_from_auth_or_header() {
    let redis = Redis::start().await;
    let node = Node::start(&redis, "a").await;

    let c = Client::connect(&node.url(), with_auth(&token("alice")))
        .await
        .expect("auth.token");
    assert!(!c.sid().is_empty());
    let pong = ack(&c, "presence:ping", json!({})).await;
    assert_eq!(pong["success"], true);

    let header = ConnectOptions {
        headers: vec![("Authorization".into(), format!("Bearer {}", token("bob")))],
        ..Default::default()
    };
    let c = Client::connect(&node.url(), header)
        .await
        .expect("Authorization header");
    assert_eq!(ack(&c, "heartbeat", json!({})).await["success"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_unauthorized() {
    let redis = Redis::start().await;
    let node = Node::start(&redis, "a").await;
    let url = node.url();
    let now = fanout::auth::now_secs();

    let missing = refused(&url, ConnectOptions::default()).await;
    let expired = refused(
        &url,
        with_auth(&fanout::auth::mint_hs256(SECRET, "alice", now - 60, None).unwrap()),
    )
    .await;
    let bad_sig = refused(
        &url,
        with_auth(&fanout::auth::mint_hs256("wrong", "alice", now + 60, None).unwrap()),
    )
    .await;
    let hs512 = refused(
        &url,
        with_auth(&sign(
            Algorithm::HS512,
            json!({"sub": "alice", "exp": now + 60}),
            SECRET,
        )),
    )
    .await;
    let none = {
        let h = b64url(br#"{"alg":"none","typ":"JWT"}"#);
        let b = b64url(
            json!({"sub": "alice", "exp": now + 60})
                .to_string()
                .as_bytes(),
        );
        refused(&url, with_auth(&format!("{h}.{b}."))).await
    };
    let no_sub = refused(
        &url,
        with_auth(&sign(Algorithm::HS256, json!({"exp": now + 60}), SECRET)),
    )
    .await;
    let garbage = refused(&url, with_auth("not-a-jwt")).await;
    let query_only = refused(
        &url,
        ConnectOptions {
            query: vec![("token".into(), token("alice"))],
            ..Default::default()
        },
    )
    .await;
    for (what, msg) in [
        ("missing", &missing),
        ("expired", &expired),
        ("bad signature", &bad_sig),
        ("HS512", &hs512),
        ("alg none", &none),
        ("no sub", &no_sub),
        ("garbage", &garbage),
        ("query string only", &query_only),
    ] {
        assert!(msg.starts_with("UNAUTHORIZED"), "{what}: {msg}");
    }
    assert_eq!(expired, "UNAUTHORIZED: token expired");
    assert_eq!(bad_sig, "UNAUTHORIZED: bad signature");
    assert_eq!(hs512, "UNAUTHORIZED: algorithm not allowed");

    // The refusals changed nothing: a good client still connects.
    connect(&url, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("jwt-issuer", "https://idp")
        .with("jwt-audience", "chat");
    let node = Node::start_with(&redis, "a", opts).await;
    let now = fanout::auth::now_secs();
    let good = sign(
        Algorithm::HS256,
        json!({"sub": "a", "exp": now + 60, "iss": "https://idp", "aud": "chat"}),
        SECRET,
    );
    Client::connect(&node.url(), with_auth(&good))
        .await
        .expect("matching iss/aud");
    let wrong_iss = sign(
        Algorithm::HS256,
        json!({"sub": "a", "exp": now + 60, "iss": "evil", "aud": "chat"}),
        SECRET,
    );
    assert!(
        refused(&node.url(), with_auth(&wrong_iss))
            .await
            .starts_with("UNAUTHORIZED")
    );
    let no_aud = sign(
        Algorithm::HS256,
        json!({"sub": "a", "exp": now + 60, "iss": "https://idp"}),
        SECRET,
    );
    assert!(
        refused(&node.url(), with_auth(&no_aud))
            .await
            .starts_with("UNAUTHORIZED")
    );

    // Without configured iss/aud, tokens carrying them are accepted (PROTOCOL.md §8).
    let plain = Node::start(&redis, "b").await;
    Client::connect(&plain.url(), with_auth(&wrong_iss))
        .await
        .expect("unchecked iss/aud");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expired_is_emitted_and_the_socket_closed_when_exp_passes() {
    let redis = Redis::start().await;
    let node = Node::start_with(
        &redis,
        "a",
        NodeOpts::default().with("jwt-leeway-secs", "0"),
    )
    .await;
    let exp = fanout::auth::now_secs() + 2;
    let t = fanout::auth::mint_hs256(SECRET, "alice", exp, None).unwrap();
    let mut c = Client::connect(&node.url(), with_auth(&t))
        .await
        .expect("connect");
    let ev = c
        .wait_for("session:expired", Duration::from_secs(6))
        .await
        .expect("session:expired");
    assert!(
        ev["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{ev}"
    );
    assert!(
        fanout::auth::now_secs() <= exp + 2,
        "emitted within 2 s of exp"
    );
    assert!(
        c.wait_closed(Duration::from_secs(3)).await,
        "socket closed after session:expired"
    );
}
