//! The delivery canary (docs/protocol.md Part II section 7): a node whose delivery is broken
//! while Redis still answers is reported not ready (`delivery: false`) within the bound, and
//! ready again by itself once delivery works.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// `/readyz` of a node: status and body.
async fn readyz(node: &Node) -> (u16, Value) {
    http(node.public, "GET", "/readyz", None, None)
        .await
        .unwrap_or((0, Value::Null))
}

async fn acl(redis: &Redis, rule: &str) {
    let mut c = redis.conn().await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg(rule)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Waits for `/readyz` to report `delivery == want_delivery` with the status that goes with
/// it; returns how long it took, and the last status and body.
async fn until_delivery(
    node: &Node,
    want_delivery: bool,
    limit: Duration,
) -> (Duration, u16, Value) {
    let t = Instant::now();
    let every = Duration::from_millis(100);
    let want = if want_delivery { 200 } else { 503 };
    let (status, body) = eventually(
        limit,
        every,
        || readyz(node),
        |(s, b)| *s == want && b["delivery"] == want_delivery,
    )
    .await;
    (t.elapsed(), status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_deliver_is_unready_within_the_bound_and_recovers_by_itself() {
    let redis = Redis::start().await;
    let opts = NodeOpts::default()
        .with("canary-interval-ms", "500")
        .with("canary-timeout-secs", "3");
    let a = Node::start_with(&redis, "a", opts).await;
    let (status, body) = readyz(&a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivery"], true);

    // Operators find the subscriber connection by name.
    let mut c = redis.conn().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(list.contains("name=fanout-sub:a "), "{list}");

    // 1. The node may no longer subscribe (Redis drops its subscriber connection, and every
    // new one is refused its channels) while Redis answers everything else.
    acl(&redis, "resetchannels").await;
    let (took, status, body) = until_delivery(&a, false, Duration::from_secs(10)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["delivery"], false, "{body}");
    assert_eq!(body["redis"], true, "{body}");
    acl(&redis, "allchannels").await;
    let (back, status, body) = until_delivery(&a, true, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "canary: subscriptions refused -> 503 after {took:?}; allowed again -> 200 after {back:?}"
    );

    // 2. Publishing is refused: the subscriber stays connected without error, so only the
    // canary can tell that nothing this node publishes comes back.
    acl(&redis, "-publish").await;
    let (took, status, body) = until_delivery(&a, false, Duration::from_secs(10)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["delivery"], false, "{body}");
    assert_eq!(
        body["backplaneReader"], true,
        "the subscriber itself is fine: {body}"
    );
    acl(&redis, "+publish").await;
    let (back, status, body) = until_delivery(&a, true, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivery"], true);
    eprintln!(
        "canary: publishes refused -> 503 after {took:?}; allowed again -> 200 after {back:?}"
    );

    // The round trip is measured per subscriber connection.
    let (_, metrics) = http_raw(a.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("metrics");
    assert!(metrics.contains("fanout_canary_round_trip_seconds_count{shard=\"0\"}"));
    assert!(metrics.contains("fanout_canary_last_success_age_seconds{shard=\"0\"}"));
    a.shutdown().await;
}
