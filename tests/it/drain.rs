//! Graceful drain on SIGTERM (docs/protocol.md §7): readiness off, sockets told to reconnect (the
//! transport closes, so clients reconnect elsewhere), presence removed, nothing accepted lost,
//! exit 0 within SHUTDOWN_GRACE_SECS.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_clients_continue_on_another_node() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("presence-ttl-secs", "3")
        .with("shutdown-grace-secs", "5");
    let mut a = NodeProcess::spawn(&redis, "a", opts.clone()).await;
    let b = Node::start_with(&redis, "b", opts).await;
    b.create_chat("c", &["alice", "bob", "carol"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let carol = connect(&b.url(), "carol").await;
    let sent = ack(
        &alice,
        "chat:send",
        json!({"chatId": "c", "content": "before"}),
    )
    .await;
    assert_eq!(sent["status"], "ACCEPTED");
    // Forget the connect-time presence events; watch only what the drain causes.
    while bob.next_event(Duration::from_millis(300)).await.is_some() {}

    // Messages keep flowing from B while A drains.
    let sender = tokio::spawn(async move {
        let mut offsets = Vec::new();
        for i in 0..30 {
            let r = ack(
                &carol,
                "chat:send",
                json!({"chatId": "c", "content": format!("during {i}")}),
            )
            .await;
            assert_eq!(r["status"], "ACCEPTED", "{r}");
            offsets.push(r["offset"].as_u64().unwrap());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (carol, offsets)
    });
    let t0 = Instant::now();
    let term = tokio::task::spawn_blocking(move || a.terminate());
    assert!(
        alice.wait_closed(Duration::from_secs(5)).await,
        "A closed its sockets"
    );
    let status = term.await.unwrap().expect("exit status");
    assert!(status.success(), "A exits 0: {status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5 + 2),
        "within the grace: {:?}",
        t0.elapsed()
    );
    let (_, offsets) = sender.await.unwrap();

    // alice reconnects (to B), and resumes from her last offset with history.
    let alice = connect(&b.url(), "alice").await;
    let got = history_offsets(&alice, "c", &sent["offset"]).await;
    assert_eq!(
        got, offsets,
        "every message accepted during the drain is there, in order"
    );

    // bob, on B all along, saw alice go offline at most once and come back at most once.
    let mut kinds = Vec::new();
    while let Some((name, data)) = bob.next_event(Duration::from_millis(500)).await {
        if name.starts_with("presence:o") && data["userId"] == "alice" {
            kinds.push(name);
        }
    }
    assert!(
        kinds.len() <= 2,
        "at most one offline/online pair: {kinds:?}"
    );
    if let Some(first) = kinds.first() {
        assert_eq!(first, "presence:offline");
    }
}
