//! Handshake authentication (docs/protocol.md §1): where the token may come from, what is refused.

use std::time::Duration;

use fanout_client::{Client, ClientError, ConnectOptions};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::*;

pub(crate) async fn refused(url: &str, opts: ConnectOptions) -> String {
    match Client::connect(url, opts).await {
        Err(ClientError::Refused(msg)) => msg,
        Err(other) => panic!("expected a CONNECT_ERROR, got {other}"),
        Ok(_) => panic!("expected a refusal, but the socket connected"),
    }
}

pub(crate) fn with_auth(token: &str) -> ConnectOptions {
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

pub(crate) fn b64url(bytes: &[u8]) -> String {
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

    // Without configured iss/aud, tokens carrying them are accepted (docs/protocol.md §8).
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

/// Generates a key pair with the openssl CLI (on Debian images; the test that calls this
/// checks for it with `skip::require_tools`) and returns (private PEM, public PEM path).
pub(crate) fn keypair(dir: &std::path::Path, kind: &str) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let gen_args: Vec<&str> = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        _ => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    };
    // Through `output`: genpkey draws its progress dots on stderr, shown only on failure.
    let out = std::process::Command::new("openssl")
        .args(&gen_args)
        .arg("-out")
        .arg(&private)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl pkey -pubout");
    (std::fs::read(&private).expect("private key"), public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_public_keys_pin_their_algorithm() {
    if !crate::skip::require_tools(
        "auth::rs256_and_es256_public_keys_pin_their_algorithm",
        &["openssl"],
        "apt-get install openssl",
    ) {
        return;
    }
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let now = fanout::auth::now_secs();
    let claims = json!({"sub": "alice", "exp": now + 60});
    for (kind, alg) in [("rsa", Algorithm::RS256), ("ec", Algorithm::ES256)] {
        let (private, public) = keypair(dir.path(), kind);
        let opts = NodeOpts::default()
            .without_secret()
            .with("jwt-public-key-file", public.to_str().unwrap())
            .with(
                "jwt-algorithm",
                if kind == "rsa" { "RS256" } else { "ES256" },
            );
        // The harness's --jwt-secret must not be combined with a key file.
        let node = Node::start_with(&redis, kind, opts).await;
        let key = if kind == "rsa" {
            EncodingKey::from_rsa_pem(&private).unwrap()
        } else {
            EncodingKey::from_ec_pem(&private).unwrap()
        };
        let good = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        Client::connect(&node.url(), with_auth(&good))
            .await
            .expect("signed with the private key");
        // HS-vs-RS confusion: an HS256 token whose "secret" is the public key.
        let pem = std::fs::read(&public).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&pem),
        )
        .unwrap();
        let msg = refused(&node.url(), with_auth(&forged)).await;
        assert_eq!(msg, "UNAUTHORIZED: algorithm not allowed", "{kind}");
        let hs = fanout::auth::mint_hs256(SECRET, "alice", now + 60, None).unwrap();
        assert!(
            refused(&node.url(), with_auth(&hs))
                .await
                .starts_with("UNAUTHORIZED")
        );
    }
}
