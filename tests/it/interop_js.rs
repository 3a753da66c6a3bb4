//! Interop: the official JavaScript `socket.io-client` (4.8.x from npm, run by Node) against a
//! node, over the websocket and the polling transports. The client side is
//! `tests/js/interop.mjs`; it exits non-zero naming the step that failed.
//!
//! Needs `node` and `npm` on PATH: without them it fails under `CI=true` and is reported as
//! skipped elsewhere (`skip::require_tools`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::harness::*;
use crate::skip::require_tools;

/// Upper bound for one run of the script (it has its own 60 s guard).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

pub(crate) fn js_dir() -> PathBuf {
    repo_root().join("tests").join("js")
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `npm ci` (or `npm install` without a lockfile) in `dir`, serialized across processes by a
/// file lock in the target directory.
pub(crate) fn npm_install(dir: &Path) -> Result<(), String> {
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-js-npm.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let args: &[&str] = if dir.join("package-lock.json").exists() {
        &["ci", "--no-audit", "--no-fund"]
    } else {
        &["install", "--no-audit", "--no-fund"]
    };
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("npm {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm {} in {} failed\n{}",
            args[0],
            dir.display(),
            describe(&out)
        ))
    }
}

/// Installs the JS dependencies once per test process.
pub(crate) async fn npm_install_once() {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let result =
        tokio::task::spawn_blocking(|| INSTALLED.get_or_init(|| npm_install(&js_dir())).clone())
            .await
            .expect("npm install task");
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn run_interop(transport: &str) {
    let test = format!("interop_js::official_js_client_works_over_{transport}");
    if !require_tools(&test, &["node", "npm"], "install Node.js 18+ with npm") {
        return;
    }
    npm_install_once().await;

    let redis = Redis::start().await;
    let node = Node::start(&redis, "a").await;
    let chat = format!("interop-{transport}");
    node.create_chat(&chat, &["alice", "bob"]).await;

    let dir = js_dir();
    let child = tokio::process::Command::new("node")
        .arg(dir.join("interop.mjs"))
        .current_dir(&dir)
        .env("URL", node.url())
        .env("TOKEN_ALICE", token("alice"))
        .env("TOKEN_BOB", token("bob"))
        .env(
            "TOKEN_ALICE_LATER",
            fanout::auth::mint_hs256(SECRET, "alice", fanout::auth::now_secs() + 7200, None)
                .expect("mint"),
        )
        .env("CHAT", &chat)
        .env("TRANSPORT", transport)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node tests/js/interop.mjs");
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("interop.mjs ({transport}) ran longer than {SCRIPT_TIMEOUT:?}"))
        .expect("wait for interop.mjs");
    println!("interop.mjs ({transport}):\n{}", describe(&out));
    assert!(
        out.status.success(),
        "socket.io-client interop over {transport} failed\n{}",
        describe(&out)
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_works_over_websocket() {
    run_interop("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_works_over_polling() {
    run_interop("polling").await;
}
