//! The Socket.IO Admin UI (docs/protocol.md §7) against a 3-node cluster: the official
//! `socket.io-client` plays the UI (`tests/js/admin.mjs`) — login refused and accepted, `config`,
//! `all_sockets` and `server_stats` of every node, live events from another node, `join` and
//! `_disconnect` reaching the node that holds the socket, the session id working on another
//! node — and a fourth node without the settings has no `/admin`. Plus the settings' start-up
//! checks.
//!
//! Needs `node` and `npm` (`skip::require_tools`).

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use crate::interop_js::{describe, js_dir, npm_install, npm_install_once};
use crate::skip::require_tools;

const USER: &str = "ops";
const PASSWORD: &str = "correct horse";

/// A bcrypt hash of [`PASSWORD`] at the lowest cost (the test needs a hash, not strength).
fn password_hash() -> String {
    bcrypt::hash(PASSWORD, 4).expect("bcrypt")
}

fn admin_opts(hash: &str) -> NodeOpts {
    NodeOpts::default()
        .with("admin-ui-username", USER)
        .with("admin-ui-password-hash", hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_admin_ui_protocol_across_three_nodes() {
    let test = "admin::official_admin_ui_protocol_across_three_nodes";
    if !require_tools(test, &["node", "npm"], "install Node.js 18+ with npm") {
        return;
    }
    npm_install_once().await;
    let redis = Redis::start().await;
    let hash = password_hash();
    let a = Node::start_with(&redis, "admin-a", admin_opts(&hash)).await;
    let b = Node::start_with(
        &redis,
        "admin-b",
        admin_opts(&hash).with("admin-ui-show-events", "true"),
    )
    .await;
    let c = Node::start_with(&redis, "admin-c", admin_opts(&hash)).await;
    let off = Node::start(&redis, "admin-off").await;
    a.create_chat("admin-chat", &["alice", "bob", "carol"])
        .await;

    let dir = js_dir();
    let child = tokio::process::Command::new("node")
        .arg(dir.join("admin.mjs"))
        .current_dir(&dir)
        .env("URLS", format!("{},{},{}", a.url(), b.url(), c.url()))
        .env("NODE_IDS", "admin-a,admin-b,admin-c")
        .env("URL_OFF", off.url())
        .env("ADMIN_USER", USER)
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("TOKEN_ALICE", token("alice"))
        .env("TOKEN_BOB", token("bob"))
        .env("TOKEN_CAROL", token("carol"))
        .env("CHAT", "admin-chat")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node tests/js/admin.mjs");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("admin.mjs ran longer than 120 s")
        .expect("wait for admin.mjs");
    println!("admin.mjs:\n{}", describe(&out));
    assert!(
        out.status.success(),
        "Admin UI protocol failed\n{}",
        describe(&out)
    );

    // The operator sees the logins and the commands.
    let metrics = reqwest_metrics(&a).await;
    assert!(
        metrics.contains("fanout_admin_logins_total{outcome=\"refused\"}"),
        "{metrics}"
    );
    for n in [a, b, c, off] {
        n.shutdown().await;
    }
}

/// `/metrics` of a node as text.
async fn reqwest_metrics(node: &Node) -> String {
    let (_, body) = raw_get(node.admin, "/metrics").await;
    body
}

/// A plain HTTP/1.0 GET (no client library needed for one request).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

fn config_error(extra: &[&str]) -> String {
    let mut args = vec!["fanout", "--jwt-secret", SECRET, "--api-key", API_KEY];
    args.extend_from_slice(extra);
    fanout::Config::try_from_args(args).expect_err("the config must be refused")
}

#[test]
fn admin_ui_settings_are_checked_at_start_up() {
    let e = config_error(&["--admin-ui-username", "ops"]);
    assert!(e.contains("ADMIN_UI_PASSWORD_HASH"), "{e}");
    let hash = password_hash();
    let e = config_error(&["--admin-ui-password-hash", &hash]);
    assert!(e.contains("ADMIN_UI_USERNAME"), "{e}");
    let e = config_error(&[
        "--admin-ui-username",
        "ops",
        "--admin-ui-password-hash",
        "secret",
    ]);
    assert!(
        e.starts_with("invalid setting ADMIN_UI_PASSWORD_HASH"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    let ok = fanout::Config::try_from_args([
        "fanout",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--admin-ui-username",
        "ops",
        "--admin-ui-password-hash",
        &hash,
    ])
    .expect("valid settings");
    assert!(ok.admin_ui().expect("valid").is_some());
    assert!(
        !ok.admin_ui_show_events,
        "ADMIN_UI_SHOW_EVENTS defaults to false"
    );
}

/// Polls `GET <path>` on `addr` until it answers 200 (a process we started is listening).
async fn until_serving(addr: std::net::SocketAddr, path: &str) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() && raw_get(addr, path).await.0 == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing serves {path} on {addr}");
}

/// What `make up` shows, in a real browser (Debian's `chromium`, driven by playwright-core):
/// the demo chat on two nodes and the official Admin UI against three (`tests/js/browser.mjs`).
/// Screenshots go to the test's temporary directory, or to `$FANOUT_SCREENSHOTS_DIR` when set
/// (`docs/img/` holds the ones shown in the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ui_and_demo_in_a_headless_browser() {
    let test = "admin::admin_ui_and_demo_in_a_headless_browser";
    let hint = "install Node.js 18+ with npm, and Chromium (apt-get install -y chromium)";
    if !require_tools(test, &["node", "npm", "chromium"], hint) {
        return;
    }
    npm_install_once().await;
    let ui_dir = repo_root().join("deploy").join("admin-ui");
    let dir = ui_dir.clone();
    tokio::task::spawn_blocking(move || npm_install(&dir))
        .await
        .expect("npm task")
        .unwrap_or_else(|e| panic!("{e}"));

    let redis = Redis::start().await;
    let hash = password_hash();
    let ui_port = free_port();
    let origin = format!("http://127.0.0.1:{ui_port}");
    let opts = admin_opts(&hash).with("cors-origins", &origin);
    let a = Node::start_with(&redis, "node-a", opts.clone()).await;
    let b = Node::start_with(&redis, "node-b", opts.clone()).await;
    let c = Node::start_with(&redis, "node-c", opts).await;
    a.create_chat("general", &["alice", "bob"]).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("demo.json");
    let demo = serde_json::json!({
        "url": a.url(),
        "urls": { "alice": b.url(), "bob": c.url() },
        "chatId": "general",
        "users": { "alice": token("alice"), "bob": token("bob") },
    });
    std::fs::write(&config, demo.to_string()).expect("write demo.json");
    let _server = tokio::process::Command::new("node")
        .arg(ui_dir.join("serve.mjs"))
        .env("UI_PORT", ui_port.to_string())
        .env("UI_BIND", "127.0.0.1")
        .env("DEMO_CONFIG", &config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn deploy/admin-ui/serve.mjs");
    until_serving(([127, 0, 0, 1], ui_port).into(), "/demo/").await;

    let shots = std::env::var_os("FANOUT_SCREENSHOTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_owned());
    let profile = tmp.path().join("profile");
    std::fs::create_dir_all(&profile).expect("profile dir");
    let child = tokio::process::Command::new("node")
        .arg(js_dir().join("browser.mjs"))
        .current_dir(js_dir())
        .env("UI_URL", &origin)
        .env("SERVER_URL", a.url())
        .env("NODE_IDS", "node-a,node-b,node-c")
        .env("ADMIN_USER", USER)
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("PROFILE_DIR", &profile)
        .env("SHOTS_DIR", &shots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node tests/js/browser.mjs");
    let out = tokio::time::timeout(Duration::from_secs(270), child.wait_with_output())
        .await
        .expect("browser.mjs ran longer than 180 s")
        .expect("wait for browser.mjs");
    println!("browser.mjs:\n{}", describe(&out));
    assert!(
        out.status.success(),
        "browser check failed\n{}",
        describe(&out)
    );
    for n in [a, b, c] {
        n.shutdown().await;
    }
}
