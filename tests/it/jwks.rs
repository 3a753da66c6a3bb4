//! Verification against an identity provider's key set (docs/protocol.md §1, JWKS): a real HTTP
//! server on loopback serves a JSON Web Key Set that the tests rewrite, as a provider rotating
//! its keys would, and counts the node's fetches.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use fanout_client::Client;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::auth::{b64url, keypair, refused, with_auth};
use crate::harness::*;

/// What the provider serves, and how often it was asked.
#[derive(Default)]
struct Provider {
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    fetches: AtomicU64,
}

/// A key set endpoint on a free loopback port, stopped on drop.
pub struct KeyServer {
    state: Arc<Provider>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl KeyServer {
    async fn start() -> KeyServer {
        let state = Arc::new(Provider::default());
        let app = Router::new()
            .route("/jwks.json", get(serve))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
                .ok();
        });
        KeyServer { state, addr, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    fn set(&self, keys: &[&Value]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| (*k).clone()).collect();
    }

    fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(State(p): State<Arc<Provider>>) -> (StatusCode, String) {
    p.fetches.fetch_add(1, Ordering::SeqCst);
    if p.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }
    let keys = p.keys.lock().unwrap().clone();
    (StatusCode::OK, json!({ "keys": keys }).to_string())
}

/// A key pair made with openssl: the private key to sign with, and its public half as a JWK.
struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    jwk: Value,
    public_pem: Vec<u8>,
}

impl Signer {
    fn new(dir: &Path, kind: &str, kid: &str) -> Signer {
        let sub = dir.join(kid);
        std::fs::create_dir_all(&sub).unwrap();
        let (private, public) = keypair(&sub, kind);
        let public_pem = std::fs::read(&public).unwrap();
        let (key, alg, jwk) = if kind == "rsa" {
            let out = openssl(&["rsa", "-pubin", "-modulus", "-noout", "-in"], &public);
            let hex = out.trim().trim_start_matches("Modulus=");
            let jwk = json!({
                "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": b64url(&from_hex(hex)), "e": "AQAB",
            });
            (
                EncodingKey::from_rsa_pem(&private).unwrap(),
                Algorithm::RS256,
                jwk,
            )
        } else {
            // `pub:` is followed by the uncompressed point 04 || x || y, in hex lines.
            let out = openssl(&["ec", "-pubin", "-text", "-noout", "-in"], &public);
            let hex: String = out
                .split("pub:")
                .nth(1)
                .and_then(|rest| rest.split("ASN1 OID").next())
                .unwrap()
                .chars()
                .filter(char::is_ascii_hexdigit)
                .collect();
            let point = from_hex(&hex);
            assert_eq!(point.len(), 65, "uncompressed P-256 point");
            let jwk = json!({
                "kty": "EC", "kid": kid, "crv": "P-256", "use": "sig",
                "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
            });
            (
                EncodingKey::from_ec_pem(&private).unwrap(),
                Algorithm::ES256,
                jwk,
            )
        };
        Signer {
            key,
            alg,
            jwk,
            public_pem,
        }
    }

    /// A token of `sub` valid for `secs`, naming `kid` (or none).
    fn token(&self, sub: &str, secs: u64, kid: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_owned);
        let claims = json!({ "sub": sub, "exp": fanout::auth::now_secs() + secs });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn openssl(args: &[&str], file: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .arg(file)
        .output()
        .expect("openssl on PATH");
    assert!(out.status.success(), "openssl {args:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn from_hex(hex: &str) -> Vec<u8> {
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// What every test starts from: a Redis, a provider publishing one key `k1` of `kind`, and the
/// directory its key files live in (kept until the end of the test).
struct Fixture {
    redis: Redis,
    dir: tempfile::TempDir,
    k1: Signer,
    keys: KeyServer,
}

/// The fixture, or `None` (the test skipped) without openssl.
async fn fixture(test: &str, kind: &str) -> Option<Fixture> {
    if !crate::skip::require_tools(test, &["openssl"], "apt-get install openssl") {
        return None;
    }
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let k1 = Signer::new(dir.path(), kind, "k1");
    let keys = KeyServer::start().await;
    keys.set(&[&k1.jwk]);
    Some(Fixture {
        redis,
        dir,
        k1,
        keys,
    })
}

/// The settings of a node verifying against `keys`, with the given refresh and on-demand
/// intervals.
fn jwks_opts(keys: &KeyServer, refresh: u64, min_refetch: u64) -> NodeOpts {
    NodeOpts::default()
        .without_secret()
        .with("jwt-jwks-url", &keys.url())
        .with("jwt-algorithm", "RS256,ES256")
        .with("jwt-jwks-refresh-secs", &refresh.to_string())
        .with("jwt-jwks-min-refetch-secs", &min_refetch.to_string())
}

/// An in-process node verifying against `keys`.
async fn jwks_node(redis: &Redis, keys: &KeyServer, refresh: u64, min_refetch: u64) -> Node {
    Node::start_with(redis, "jwks", jwks_opts(keys, refresh, min_refetch)).await
}

async fn connects(url: &str, token: &str) -> bool {
    Client::connect(url, with_auth(token)).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_a_restart_and_survive_an_outage() {
    let Some(Fixture {
        redis,
        dir,
        k1,
        keys,
    }) = fixture(
        "jwks::keys_rotate_without_a_restart_and_survive_an_outage",
        "rsa",
    )
    .await
    else {
        return;
    };
    let k2 = Signer::new(dir.path(), "ec", "k2");
    // Periodic fetches every 2 s; on-demand ones at most every second. A process of its own:
    // its /metrics counts this node's fetches alone (in-process nodes share one recorder).
    let node = NodeProcess::spawn(&redis, "jwks", jwks_opts(&keys, 2, 1)).await;

    assert!(connects(&node.url(), &k1.token("alice", 60, Some("k1"))).await);
    // One key in the set: a token without kid may use it.
    assert!(connects(&node.url(), &k1.token("alice", 60, None)).await);

    // Key 2 published: its token is accepted at once (the unknown kid causes a fetch).
    keys.set(&[&k1.jwk, &k2.jwk]);
    assert!(connects(&node.url(), &k2.token("bob", 60, Some("k2"))).await);
    // Two keys now: a token without kid names none of them.
    let msg = refused(&node.url(), with_auth(&k2.token("bob", 60, None))).await;
    assert!(msg.starts_with("UNAUTHORIZED: invalid token"), "{msg}");

    // Key 1 withdrawn: refused once the node fetched the set again.
    keys.set(&[&k2.jwk]);
    let old = k1.token("alice", 60, Some("k1"));
    let last = eventually(
        Duration::from_secs(8),
        Duration::from_millis(300),
        || async {
            match Client::connect(&node.url(), with_auth(&old)).await {
                Err(fanout_client::ClientError::Refused(m)) => m,
                other => format!("{:?}", other.map(|_| "connected")),
            }
        },
        |m| m == "UNAUTHORIZED: unknown signing key",
    )
    .await;
    assert_eq!(last, "UNAUTHORIZED: unknown signing key", "key 1 withdrawn");

    // The endpoint goes down: the cached key keeps verifying across several failed fetches,
    // and the node stays ready.
    keys.set_down(true);
    let before = keys.fetches();
    let seen = eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || async { keys.fetches() },
        |n| *n >= before + 2,
    )
    .await;
    assert!(seen >= before + 2, "two failed fetches");
    assert!(connects(&node.url(), &k2.token("bob", 60, Some("k2"))).await);
    assert_eq!(http_status(node.public, "/readyz").await, 200);
    let metrics = http_raw(node.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("metrics")
        .1;
    let failed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fanout_jwks_fetches_total{outcome=\"error\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(failed >= 2.0, "failed fetches counted: {failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval() {
    let Some(Fixture {
        redis,
        dir: _dir,
        k1,
        keys,
    }) = fixture(
        "jwks::a_flood_of_unknown_kids_costs_one_fetch_per_interval",
        "ec",
    )
    .await
    else {
        return;
    };
    let node = jwks_node(&redis, &keys, 300, 30).await;
    let at_start = keys.fetches();
    let url = node.url();
    let attempts: Vec<_> = (0..40)
        .map(|i| {
            let token = k1.token("mallory", 60, Some(&format!("random-{i}")));
            let url = url.clone();
            tokio::spawn(async move { refused(&url, with_auth(&token)).await })
        })
        .collect();
    for a in attempts {
        assert_eq!(a.await.unwrap(), "UNAUTHORIZED: unknown signing key");
    }
    assert!(
        keys.fetches() <= at_start + 1,
        "40 unknown kids caused {} fetches",
        keys.fetches() - at_start
    );
    // The real key still works without a fetch.
    assert!(connects(&node.url(), &k1.token("alice", 60, Some("k1"))).await);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() {
    let Some(Fixture {
        redis,
        dir,
        k1,
        keys,
    }) = fixture("jwks::forged_tokens_are_refused", "rsa").await
    else {
        return;
    };
    let outsider = Signer::new(dir.path(), "ec", "k9");
    let node = jwks_node(&redis, &keys, 300, 1).await;
    let claims = json!({ "sub": "alice", "exp": fanout::auth::now_secs() + 60 });

    // alg none.
    let header = b64url(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let none = format!("{header}.{}.", b64url(claims.to_string().as_bytes()));
    let msg = refused(&node.url(), with_auth(&none)).await;
    assert!(msg.starts_with("UNAUTHORIZED"), "{msg}");
    // HS256 "signed" with the published public key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hs =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&k1.public_pem)).unwrap();
    assert_eq!(
        refused(&node.url(), with_auth(&hs)).await,
        "UNAUTHORIZED: algorithm not allowed"
    );
    // A key not in the set.
    assert_eq!(
        refused(
            &node.url(),
            with_auth(&outsider.token("alice", 60, Some("k9")))
        )
        .await,
        "UNAUTHORIZED: unknown signing key"
    );
    // A key not in the set, claiming to be key 1.
    assert_eq!(
        refused(
            &node.url(),
            with_auth(&outsider.token("alice", 60, Some("k1")))
        )
        .await,
        "UNAUTHORIZED: algorithm not allowed",
        "an ES256 token cannot be checked with an RSA key"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_key_set_is_not_ready_and_refuses_handshakes() {
    let Some(Fixture {
        redis,
        dir: _dir,
        k1,
        keys,
    }) = fixture(
        "jwks::a_node_without_a_key_set_is_not_ready_and_refuses_handshakes",
        "ec",
    )
    .await
    else {
        return;
    };
    keys.set_down(true);
    let opts = NodeOpts::default()
        .without_secret()
        .with("jwt-jwks-url", &keys.url())
        .with("jwt-algorithm", "ES256")
        .with("jwt-jwks-min-refetch-secs", "1");
    let node = Node::start_unready_with(&redis, "nokeys", opts).await;
    let seen = eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { keys.fetches() },
        |n| *n >= 1,
    )
    .await;
    assert!(seen >= 1, "a failed first fetch");
    assert_eq!(http_status(node.public, "/readyz").await, 503);
    assert_eq!(
        refused(&node.url(), with_auth(&k1.token("alice", 60, Some("k1")))).await,
        "UNAUTHORIZED: key set unavailable"
    );
    // The provider comes back: the node fetches (retrying with backoff) and becomes ready.
    keys.set_down(false);
    assert!(
        ready_within(node.public, Duration::from_secs(10)).await,
        "ready once the key set arrived"
    );
    assert!(connects(&node.url(), &k1.token("alice", 60, Some("k1"))).await);
    node.shutdown().await;
}

/// The status code of `GET path` on `addr`.
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http_raw(addr, "GET", path, None, None, "text/plain")
        .await
        .map_or(0, |r| r.0)
}
