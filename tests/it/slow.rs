//! Slow consumers: a socket that stops reading never slows delivery to the others, and it does
//! not live forever.
//!
//! Over websocket, socketioxide's writer moves packets from the socket's bounded buffer into
//! tungstenite's write buffer, which has no limit, so a client that stops reading never fills
//! the bounded buffer. Once its TCP window is full too, engineioxide's writer blocks in a write,
//! and even the close that the Engine.IO ping timeout triggers waits for that writer: without
//! `TCP_USER_TIMEOUT` the socket lives until the client closes the connection. With it, the
//! kernel fails the blocked write once the window has stayed closed that long, and the socket
//! ends (docs/protocol.md section 12).

use std::time::{Duration, Instant};

use fanout_client::Client;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// A raw websocket client of `user` with a tiny receive buffer (so the node's writes to it
/// stall after a few MB instead of after the kernel's autotuned buffers). It behaves until its
/// namespace CONNECT is answered, then the caller stops reading it.
async fn stalled_client(node: &Node, user: &str) -> WebSocketStream<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(node.public).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.public);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'));
    ws.send(Message::text(format!(
        "40{{\"token\":\"{}\"}}",
        token(user)
    )))
    .await
    .unwrap();
    loop {
        let frame = ws.next().await.unwrap().unwrap();
        let text = frame.to_text().unwrap().to_owned();
        if text == "2" {
            ws.send(Message::text("3")).await.unwrap();
            continue;
        }
        assert!(text.starts_with("40"), "{text}");
        return ws;
    }
}

/// Sends `count` ACCEPTED messages of about `bytes` each to `chat`, numbered `i:`. The ACK
/// timeout is generous: the test process parses every copy of these messages its clients
/// receive (hundreds of MB of JSON in a debug build), so on a busy 2-core machine an ACK can
/// wait for CPU longer than the harness's 5 s.
async fn send_many(sender: &Client, chat: &str, count: usize, bytes: usize) {
    let content = "x".repeat(bytes);
    for i in 0..count {
        let r = sender
            .emit_with_ack(
                "chat:send",
                json!({"chatId": chat, "content": format!("{i}:{content}")}),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        assert_eq!(r["status"], "ACCEPTED", "send {i}: {r}");
    }
}

/// Every one of `clients` receives offsets 1..=count in order.
async fn all_received(clients: &mut [Client], count: usize) {
    for (n, c) in clients.iter_mut().enumerate() {
        for i in 0..count {
            let m = c
                .wait_for("chat:message", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("member {n} got only {i} messages"));
            assert_eq!(
                m["offset"],
                (i + 1) as u64,
                "member {n}: in order, none missing"
            );
        }
    }
}

/// The users `GET /api/v1/presence` shows online among `users` (live, refreshed fields only).
async fn online(node: &Node, users: &[&str]) -> Vec<String> {
    let (status, body) = node
        .api(
            "GET",
            &format!("/api/v1/presence?users={}", users.join(",")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["online"]
        .as_array()
        .expect("online list")
        .iter()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

/// Waits up to `limit` for `presence:offline` about `user` on `c` and returns its reason;
/// panics naming any other user reported offline meanwhile (nobody else stopped reading).
async fn offline_about(c: &mut Client, user: &str, limit: Duration) -> Option<String> {
    let ev = c.wait_for("presence:offline", limit).await?;
    assert_eq!(ev["userId"], user, "only {user} goes offline: {ev}");
    Some(ev["reason"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_does_not_slow_the_others() {
    // 200 × 16 KB ≈ 3.2 MB to each socket: far beyond what the stalled client's 4 KB receive
    // buffer takes, so the node's writes to it stall while 100 others receive everything.
    const MESSAGES: usize = 200;
    const OTHERS: usize = 100;
    let redis = Redis::start().await;
    // Pings, TCP_USER_TIMEOUT and SOCKET_BUFFER_PACKETS (1024, more than the 600 messages) at
    // their defaults: the stalled socket stays for the whole test, and the others, read by this
    // busy test process, are neither dropped for reading a second or two late nor taken for
    // slow consumers (with 32 packets the sender itself sometimes was, on a loaded machine).
    // The others keep up: each message reaches all of them while the stalled one holds nothing
    // up (the bound is loose on purpose: this test process parses 320 MB of JSON, debug build).
    let opts = NodeOpts::default()
        .with("presence-ttl-secs", "2")
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "1000");
    let a = Node::start_with(&redis, "a", opts).await;
    let mut members: Vec<String> = (0..OTHERS).map(|i| format!("u{i}")).collect();
    members.push("slowpoke".into());
    members.push("sender".into());
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    a.create_chat("big", &refs).await;

    let slow = stalled_client(&a, "slowpoke").await;
    let mut others = Vec::new();
    for m in members.iter().take(OTHERS) {
        others.push(connect(&a.url(), m).await);
    }
    let sender = connect(&a.url(), "sender").await;
    let t0 = Instant::now();
    send_many(&sender, "big", MESSAGES, 16_000).await;
    all_received(&mut others, MESSAGES).await;
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "the others were slowed down: {elapsed:?}"
    );

    drop(slow);
}

/// The setting under test, and the same scenario without it as the control: pings are left at
/// their defaults (45 s) here, so nothing but the TCP user timeout can end the stalled socket
/// within the bound; the control (next test) has 2 s pings and shows that they alone do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_user_timeout_ends_a_socket_whose_client_stopped_reading() {
    // 150 × 64 KB ≈ 9.6 MB: far beyond the node's send buffer (autotuned up to 4 MB) plus the
    // stalled client's 4 KB receive buffer, so the node's writes to it block.
    const MESSAGES: usize = 150;
    const BYTES: usize = 64_000;
    const OTHERS: usize = 5;
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("tcp-user-timeout-ms", "3000")
        // Short, so the stalled socket's field expires soon after the socket ended; not so
        // short that a refresh delayed on a loaded machine lets a live field look stale.
        .with("presence-ttl-secs", "4")
        .with("max-message-bytes", "65536")
        .with("ws-max-message-bytes", "400000");
    let a = Node::start_with(&redis, "a", opts).await;
    let mut members: Vec<String> = (0..OTHERS).map(|i| format!("u{i}")).collect();
    members.push("sender".into());
    let mut all: Vec<&str> = members.iter().map(String::as_str).collect();
    all.push("slowpoke");
    a.create_chat("big", &all).await;

    let slow = stalled_client(&a, "slowpoke").await;
    let mut others = Vec::new();
    for m in members.iter().take(OTHERS) {
        others.push(connect(&a.url(), m).await);
    }
    let sender = connect(&a.url(), "sender").await;

    send_many(&sender, "big", MESSAGES, BYTES).await;
    let sent = Instant::now();
    all_received(&mut others, MESSAGES).await;
    // The node's write to the stalled socket failed 3 s after its window closed (during the
    // sends); the transport error leaves the presence field to expire (TTL 4 s, then the sweep
    // or the expiry event).
    let reason = offline_about(&mut others[0], "slowpoke", Duration::from_secs(20))
        .await
        .expect("the stalled socket ended well before the 45 s ping timeout");
    eprintln!(
        "stalled socket's user offline {:?} after the last send",
        sent.elapsed()
    );
    assert_eq!(
        reason, "expired",
        "a broken transport leaves its field to expire"
    );
    // The API lists fresh fields only: polled, as a refresh may lag on a loaded machine.
    let mut still: Vec<String> = members.clone();
    still.sort_unstable();
    let every = Duration::from_millis(100);
    let shown = eventually(WAIT, every, || online(&a, &all), |s| *s == still).await;
    assert_eq!(shown, still, "only slowpoke went offline");

    // The others were not touched: they still receive, in order, and nobody else went offline.
    let r = ack(
        &sender,
        "chat:send",
        json!({"chatId": "big", "content": "after"}),
    )
    .await;
    assert_eq!(r["status"], "ACCEPTED", "{r}");
    for (n, c) in others.iter_mut().enumerate() {
        let m = c.wait_for("chat:message", WAIT).await.expect("delivered");
        assert_eq!(m["offset"], (MESSAGES + 1) as u64, "member {n}");
    }
    let offline = others[0].collect("presence:offline", QUIET).await;
    assert!(offline.is_empty(), "{offline:?}");
    drop(slow);
}

/// The control: with the option off, the ping timeout (here 1 s + 1 s) does not end a stalled
/// socket; it lives until its client closes the connection. If this ever fails because the
/// socket ended, the transport learned to time out its writes and docs/protocol.md section 12
/// and the TCP_USER_TIMEOUT_MS default deserve another look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tcp_user_timeout_a_stalled_socket_outlives_its_ping_timeout() {
    const MESSAGES: usize = 150;
    const BYTES: usize = 64_000;
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("tcp-user-timeout-ms", "0")
        .with("ping-interval-ms", "1000")
        .with("ping-timeout-ms", "1000")
        .with("presence-ttl-secs", "4")
        .with("max-message-bytes", "65536")
        .with("ws-max-message-bytes", "400000");
    let a = Node::start_with(&redis, "a", opts).await;
    a.create_chat("big", &["u0", "sender", "slowpoke"]).await;
    let slow = stalled_client(&a, "slowpoke").await;
    let mut u0 = connect(&a.url(), "u0").await;
    let sender = connect(&a.url(), "sender").await;
    send_many(&sender, "big", MESSAGES, BYTES).await;
    all_received(std::slice::from_mut(&mut u0), MESSAGES).await;

    // Five ping rounds and two presence TTLs later, the socket is still refreshed as live.
    let early = offline_about(&mut u0, "slowpoke", Duration::from_secs(10)).await;
    assert_eq!(
        early, None,
        "the stalled socket ended without TCP_USER_TIMEOUT"
    );
    let every = Duration::from_millis(100);
    let shown = eventually(
        Duration::from_secs(2),
        every,
        || online(&a, &["slowpoke"]),
        |s| *s == ["slowpoke"],
    )
    .await;
    assert_eq!(
        shown,
        ["slowpoke"],
        "the API shows the stalled socket's field as fresh"
    );

    // Its client closing the connection (a reset: unread data) is what ends it.
    drop(slow);
    assert!(
        offline_about(&mut u0, "slowpoke", Duration::from_secs(10))
            .await
            .is_some(),
        "closed by its client"
    );
}

/// A socket whose buffer (`SOCKET_BUFFER_PACKETS`) cannot take a `chat:message` is told why
/// (an `error` event) and disconnected; what it received is a gap-free prefix of the chat, and
/// `chat:history` from its last offset gives it the rest (docs/reliability.md, slow consumers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_falls_behind_is_told_why_disconnected_and_recovers_with_history() {
    const MESSAGES: usize = 150;
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("socket-buffer-packets", "16")
        .with("max-message-bytes", "65536")
        .with("ws-max-message-bytes", "400000")
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "1000");
    let a = Node::start_with(&redis, "a", opts).await;
    a.create_chat("big", &["slowpoke", "sender"]).await;
    let mut slow = stalled_client(&a, "slowpoke").await;
    let sender = connect(&a.url(), "sender").await;
    // 150 × 64 KB: once the kernel buffers towards the stalled client are full, the node's
    // writer blocks, its 16-packet buffer fills, and the next chat:message cannot be queued.
    send_many(&sender, "big", MESSAGES, 64_000).await;

    // The client reads again: a prefix of the messages, the error, the DISCONNECT, the close.
    let (mut offsets, mut told, mut disconnected) = (Vec::new(), None, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let frame = match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Ok(f))) => f,
            _ => break,
        };
        let Ok(text) = frame.to_text() else { continue };
        if text == "2" {
            let _ = slow.send(Message::text("3")).await;
        } else if let Some(json) = text.strip_prefix("42") {
            let v: serde_json::Value = serde_json::from_str(json).expect("event JSON");
            match v[0].as_str() {
                Some("chat:message") => offsets.push(v[1]["offset"].as_u64().expect("offset")),
                Some("error") => told = Some(v[1].clone()),
                _ => {}
            }
        } else if text.starts_with("41") {
            disconnected = true;
        }
    }
    let told = told.expect("the slow socket was told why before it was disconnected");
    assert_eq!(told["event"], "chat:message", "{told}");
    assert_eq!(told["code"], "RATE_LIMITED", "{told}");
    assert!(disconnected, "the node disconnected the slow socket");
    let got = offsets.len();
    assert!(0 < got && got < MESSAGES, "a prefix reached it: {got}");
    assert_eq!(
        offsets,
        (1..=got as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );

    // It reconnects and gets exactly the rest from history.
    let again = connect(&a.url(), "slowpoke").await;
    let rest = history_offsets(&again, "big", &json!(got)).await;
    assert_eq!(
        rest,
        ((got + 1) as u64..=MESSAGES as u64).collect::<Vec<_>>()
    );
}

/// The Engine.IO heartbeat (engineioxide's, patched in vendor/: the pong reaches the heartbeat
/// job through a `Notify`): a client that answers every ping stays connected over many rounds,
/// and once it stops answering, the server ends the connection after about
/// pingInterval + pingTimeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_answering_clients_and_ends_silent_ones() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("ping-interval-ms", "300")
        .with("ping-timeout-ms", "300");
    let a = Node::start_with(&redis, "a", opts).await;
    let mut ws = stalled_client(&a, "pinger").await;

    let (mut pings, answering) = (0, Instant::now());
    while answering.elapsed() < Duration::from_secs(2) {
        match tokio::time::timeout(Duration::from_secs(1), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => {
                pings += 1;
                ws.send(Message::text("3")).await.expect("pong sent");
            }
            Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                panic!("the connection ended while the client answered its pings")
            }
            _ => {}
        }
    }
    assert!(pings >= 4, "{pings} pings in 2 s at a 300 ms interval");

    let silent = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a client that stopped answering pings is still connected"
    );
    // One interval until the next ping, one timeout for its pong, and some scheduling.
    assert!(
        silent.elapsed() < Duration::from_millis(2_000),
        "ended {:?} after the last pong",
        silent.elapsed()
    );
}
