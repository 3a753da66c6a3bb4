//! Interop: the Python Socket.IO client (`python-socketio` 5.x, asyncio, pinned in
//! `tests/py/requirements.txt`) against two nodes on one Redis, over the websocket and the
//! polling transports. The client side is `tests/py/interop.py`, run in a venv under `target/`
//! (`pyenv`); it exits non-zero naming the step that failed. It checks what the JavaScript
//! interop test checks (refusals, both ways of sending the token, chat:send ACKs,
//! chat:message, INVALID_EVENT) and also: sockets joined to their chats at connect (no
//! chat:join), presence:online/offline of a peer, and chat:history `since` after reconnecting
//! to the other node.
//!
//! Needs `python3` with venv: without it the test fails under `CI=true` and is reported as
//! skipped elsewhere (`pyenv::require_python`).

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use crate::pyenv::{describe, require_python, venv};

/// Upper bound for one run of the script (it has its own 60 s guard).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(90);

async fn run_interop(transport: &str) {
    let test = format!("interop_py::python_socketio_client_works_over_{transport}");
    if !require_python(&test) {
        return;
    }
    let py_dir = repo_root().join("tests").join("py");
    let bin = venv("interop", py_dir.join("requirements.txt")).await;

    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    let chat = format!("interop-py-{transport}");
    a.create_chat(&chat, &["alice", "bob"]).await;

    let child = tokio::process::Command::new(bin.join("python"))
        .arg(py_dir.join("interop.py"))
        .current_dir(&py_dir)
        .env("URL_A", a.url())
        .env("URL_B", b.url())
        .env("TOKEN_ALICE", token("alice"))
        .env("TOKEN_BOB", token("bob"))
        .env("CHAT", &chat)
        .env("TRANSPORT", transport)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tests/py/interop.py");
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("interop.py ({transport}) ran longer than {SCRIPT_TIMEOUT:?}"))
        .expect("wait for interop.py");
    println!("interop.py ({transport}):\n{}", describe(&out));
    assert!(
        out.status.success(),
        "python-socketio interop over {transport} failed\n{}",
        describe(&out)
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_client_works_over_websocket() {
    run_interop("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_client_works_over_polling() {
    run_interop("polling").await;
}
