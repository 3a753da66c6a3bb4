//! Measurements, not assertions: run with
//! `cargo test --release --test it measure -- --ignored --nocapture --test-threads=1`.
//! Their figures go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use crate::harness::*;

async fn commandstats(redis: &Redis) -> Vec<(String, u64)> {
    let mut c = redis.conn().await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: takes about 70 s"]
async fn measure_presence_redis_commands_per_idle_socket_per_minute() {
    const SOCKETS: usize = 500;
    let redis = Redis::start().await;
    let node = Node::start(&redis, "a").await; // PRESENCE_TTL_SECS default: 60
    for i in 0..SOCKETS / 10 {
        let members: Vec<String> = (0..10).map(|j| format!("u{}", i * 10 + j)).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        node.create_chat(&format!("c{i}"), &refs).await;
    }
    let mut clients = Vec::new();
    for i in 0..SOCKETS {
        clients.push(connect(&node.url(), &format!("u{i}")).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    let window = Duration::from_secs(60);
    tokio::time::sleep(window).await;
    let stats = commandstats(&redis).await;
    let total: u64 = stats
        .iter()
        .filter(|(n, _)| n != "info" && n != "config|resetstat")
        .map(|(_, c)| c)
        .sum();
    println!("idle sockets: {SOCKETS}, window: {window:?}, node-level background included");
    for (name, calls) in &stats {
        println!("  {name}: {calls}");
    }
    println!(
        "MEASURED presence: {total} Redis commands in 60 s = {:.2} per idle socket per minute",
        total as f64 / SOCKETS as f64
    );
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: takes about 2 minutes"]
async fn measure_offline_detection_lag_after_kill_9() {
    const TRIALS: usize = 10;
    const TTL_SECS: u64 = 6;
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("presence-ttl-secs", &TTL_SECS.to_string());
    let observer_node = Node::start_with(&redis, "observer", opts.clone()).await;
    observer_node.create_chat("lag", &["alice", "bob"]).await;
    let mut bob = connect(&observer_node.url(), "bob").await;
    let mut lags = Vec::new();
    for trial in 0..TRIALS {
        let mut doomed = NodeProcess::spawn(&redis, &format!("doomed{trial}"), opts.clone()).await;
        let _alice = connect(&doomed.url(), "alice").await;
        bob.wait_for("presence:online", WAIT).await.expect("online");
        // Kill at a random point of the refresh period, as a real crash would.
        tokio::time::sleep(Duration::from_millis(300 + (trial as u64 * 397) % 2000)).await;
        let t0 = Instant::now();
        doomed.kill9();
        let ev = bob
            .wait_for("presence:offline", Duration::from_secs(TTL_SECS + 10))
            .await
            .expect("offline");
        assert_eq!(ev["reason"], "expired");
        lags.push(t0.elapsed());
    }
    lags.sort();
    let median = lags[TRIALS / 2];
    let max = *lags.last().unwrap();
    println!("lags: {lags:?}");
    println!(
        "MEASURED kill -9 -> presence:offline (TTL {TTL_SECS} s, {TRIALS} trials): median {:.2} s, max {:.2} s",
        median.as_secs_f64(),
        max.as_secs_f64()
    );
}
