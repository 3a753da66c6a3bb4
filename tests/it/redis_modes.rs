//! The harness's [`Redis`] on the kind `FANOUT_TEST_REDIS` selects (one server, a cluster, a
//! sentinel setup), checked without a node: what the modules run by `make test-redis-modes`
//! rely on. A failure here is the harness's; a failure only in those modules is the node's.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::redis_topology::query;

/// Keys with 30 different hash tags: over every master of a cluster.
fn keys() -> Vec<String> {
    (0..30).map(|i| format!("probe:{{t{i}}}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_and_the_master_helpers_reach_every_key_on_its_master() {
    let redis = Redis::start().await;
    let masters = redis.master_ports().await;
    let want = if redis.kind() == RedisKind::Cluster {
        3
    } else {
        1
    };
    assert_eq!(masters.len(), want, "{masters:?}");
    // The flags a node gets name this kind.
    assert_eq!(redis.node_handle().mode(), redis.kind().name());

    // One connection for keys of every slot.
    let mut conn = redis.conn().await;
    for k in keys() {
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("SET through conn()");
    }
    // Each key is on the master master_port_of names.
    let mut used = BTreeSet::new();
    for k in keys() {
        let port = redis.master_port_of(&k).await;
        assert!(
            masters.contains(&port),
            "{k} on {port}, masters {masters:?}"
        );
        let there: u64 = redis::cmd("EXISTS")
            .arg(&k)
            .query_async(&mut server_conn(port).await)
            .await
            .expect("EXISTS");
        assert_eq!(there, 1, "{k} is not on {port}");
        used.insert(port);
    }
    assert_eq!(used.len(), want, "the keys spread over every master");
    // on_every_master sees all of them once.
    let sizes: Vec<(u16, u64)> = redis.on_every_master(&redis::cmd("DBSIZE")).await;
    assert_eq!(sizes.len(), want);
    assert_eq!(sizes.iter().map(|s| s.1).sum::<u64>(), keys().len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_sleeps_every_master_and_ends_when_they_answer_again() {
    let redis = Redis::start_with(&["--enable-debug-command", "yes"]).await;
    let masters = redis.master_ports().await;
    let t = Instant::now();
    let stall = redis.stall(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for &port in &masters {
        let ping = tokio::time::timeout(
            Duration::from_millis(500),
            query::<String>(port, &redis::cmd("PING")),
        )
        .await;
        assert!(
            !matches!(ping, Ok(Some(_))),
            "master {port} answered during the stall"
        );
    }
    stall.await.expect("stall task");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "the stall ended after {took:?}"
    );
    for &port in &masters {
        let pong = query::<String>(port, &redis::cmd("PING")).await;
        assert_eq!(pong.as_deref(), Some("PONG"), "{port} after the stall");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_restart_empty_on_the_same_node_flags() {
    let mut redis = Redis::start().await;
    let args = redis.node_args();
    let mut conn = redis.conn().await;
    for k in keys() {
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(1)
            .query_async(&mut conn)
            .await
            .expect("SET");
    }
    let masters = redis.master_ports().await;
    redis.stop();
    for &port in &masters {
        assert!(
            query::<String>(port, &redis::cmd("PING")).await.is_none(),
            "{port} still answers after stop"
        );
    }
    let t = Instant::now();
    redis.restart().await;
    eprintln!("{}: restart took {:?}", redis.kind().name(), t.elapsed());
    assert_eq!(redis.node_args(), args, "the same node flags");
    // The node library finds it again through those flags, empty.
    let lib = redis.node_handle().conn();
    let every = Duration::from_millis(100);
    let probe = || async {
        redis::cmd("EXISTS")
            .arg(&keys()[0])
            .query_async::<u64>(&mut lib.clone())
            .await
            .map_err(|e| e.to_string())
    };
    let found = eventually(Duration::from_secs(10), every, probe, Result::is_ok).await;
    assert_eq!(found, Ok(0), "the restarted Redis is reachable and empty");
    let sizes: Vec<(u16, u64)> = redis.on_every_master(&redis::cmd("DBSIZE")).await;
    assert!(sizes.iter().all(|s| s.1 == 0), "{sizes:?}");
}

/// The node's connection cuts a pipeline over many slots into one part per slot and puts the
/// answers back in order. On a cluster at most `PARTS_IN_FLIGHT` parts of one call are in
/// flight: while one master's writes are paused, the first of the parts waiting on it (8 more
/// than the bound) hold the call, and its parts for the other masters behind them are not sent
/// until it answers again. Another call's parts for the other masters go through meanwhile: the bound
/// per master lets a master that does not answer hold up only its own parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_over_many_slots_is_answered_in_order_with_few_parts_in_flight() {
    let redis = Redis::start().await;
    let masters = redis.master_ports().await;
    let paused = masters[0];
    // 8 keys more than the bound on the first master, then 40 on the others (all of them on
    // one server).
    let held = fanout::redis::conn::PARTS_IN_FLIGHT + 8;
    let (mut first, mut others) = (Vec::new(), Vec::new());
    for i in 0.. {
        let key = format!("parts:{{p{i}}}");
        if redis.master_port_of(&key).await == paused {
            if first.len() < held {
                first.push(key);
            }
        } else if others.len() < 40 {
            others.push(key);
        }
        if first.len() == held && (others.len() == 40 || masters.len() == 1) {
            break;
        }
    }
    let keys: Vec<String> = first.iter().chain(&others).cloned().collect();
    let node = redis.node_handle().conn();
    let _: Option<String> = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut node.clone())
        .await
        .expect("the node's connection answers");

    let mut writes = redis::pipe();
    for k in &keys {
        writes.cmd("SET").arg(k).arg(k);
    }
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query_async(&mut server_conn(paused).await)
        .await
        .expect("CLIENT PAUSE");
    let mut sender = node.clone();
    let sent = tokio::spawn(async move { writes.query_async::<Vec<String>>(&mut sender).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    if redis.kind() == RedisKind::Cluster {
        let mut check = redis.conn().await;
        let mut written = 0;
        for k in &others {
            let n: u64 = redis::cmd("EXISTS")
                .arg(k)
                .query_async(&mut check)
                .await
                .expect("EXISTS");
            written += n;
        }
        assert_eq!(
            written, 0,
            "parts behind the bound waiting on a paused master were sent anyway"
        );
        let mut other = redis::pipe();
        for k in &others {
            other.cmd("EXISTS").arg(k);
        }
        let t = Instant::now();
        let found = tokio::time::timeout(
            Duration::from_millis(300),
            other.query_async::<Vec<u64>>(&mut node.clone()),
        )
        .await;
        assert!(
            matches!(&found, Ok(Ok(v)) if v.len() == others.len()),
            "a pipeline over the healthy masters waited on the paused one's parts: {found:?} \
             after {:?}",
            t.elapsed()
        );
    }
    let answers = sent
        .await
        .expect("pipeline task")
        .expect("the pipeline is answered once the master answers again");
    assert_eq!(answers.len(), keys.len());
    assert!(answers.iter().all(|a| a == "OK"), "{answers:?}");

    let mut reads = redis::pipe();
    for k in &keys {
        reads.cmd("GET").arg(k);
    }
    let values: Vec<String> = reads
        .query_async(&mut node.clone())
        .await
        .expect("the reads are answered");
    assert_eq!(values, keys, "each answer at its command's position");
}
