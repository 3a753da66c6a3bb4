//! Slow consumers: a socket that stops reading never slows delivery to the others.
//!
//! What becomes of the stalled socket itself is not asserted: when its TCP window is full,
//! engineioxide's writer blocks on the socket and even the ping timeout's close waits for it, so
//! the socket can live as long as the client keeps the connection open (docs/protocol.md §12).
//!
//! Over websocket, socketioxide's writer moves packets from the socket's bounded buffer into
//! tungstenite's write buffer, which has no limit, so a client that stops reading never fills
//! the bounded buffer: what ends it is the Engine.IO ping it cannot answer (PING_INTERVAL_MS +
//! PING_TIMEOUT_MS). The deliverer's full-buffer policy covers the cases where the buffer does
//! fill (long-polling, bursts).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_stops_reading_does_not_slow_the_others() {
    const MESSAGES: usize = 600;
    const OTHERS: usize = 20;
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("socket-buffer-packets", "32")
        .with("ping-interval-ms", "1000")
        .with("ping-timeout-ms", "1000")
        .with("presence-ttl-secs", "2")
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "1000");
    let a = Node::start_with(&redis, "a", opts).await;
    let mut members: Vec<String> = (0..OTHERS).map(|i| format!("u{i}")).collect();
    members.push("slowpoke".into());
    members.push("sender".into());
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    a.create_chat("big", &refs).await;

    // The slow client: a raw websocket with a tiny receive buffer that connects, then never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(a.public).await.unwrap();
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", a.public);
    let (mut slow, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    let open = slow.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with('0'));
    slow.send(Message::text(format!(
        "40{{\"token\":\"{}\"}}",
        token("slowpoke")
    )))
    .await
    .unwrap();
    // Until connected it behaves (answers pings); from then on it reads nothing.
    loop {
        let frame = slow.next().await.unwrap().unwrap();
        let text = frame.to_text().unwrap().to_owned();
        if text == "2" {
            slow.send(Message::text("3")).await.unwrap();
            continue;
        }
        assert!(text.starts_with("40"), "{text}");
        break;
    }

    let mut others = Vec::new();
    for m in members.iter().take(OTHERS) {
        others.push(connect(&a.url(), m).await);
    }
    let sender = connect(&a.url(), "sender").await;
    let content = "x".repeat(16_000);
    let t0 = Instant::now();
    for i in 0..MESSAGES {
        let r = ack(
            &sender,
            "chat:send",
            json!({"chatId": "big", "content": format!("{i}:{content}")}),
        )
        .await;
        assert_eq!(r["status"], "ACCEPTED");
    }
    for (n, c) in others.iter_mut().enumerate() {
        for i in 0..MESSAGES {
            let m = c
                .wait_for("chat:message", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("u{n} got only {i} messages"));
            assert_eq!(
                m["offset"],
                (i + 1) as u64,
                "u{n} in order, nothing missing"
            );
        }
    }
    let elapsed = t0.elapsed();
    assert!(
        elapsed < Duration::from_secs(30),
        "the others were slowed down: {elapsed:?}"
    );

    drop(slow);
}
