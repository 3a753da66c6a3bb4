//! The caller-driven connection the send transaction borrows (`fanout::redis::Direct`), against
//! a real redis-server: it must answer pipelines and transactions exactly as redis-rs's own
//! connections do (the transaction code reads its replies through redis-rs), and a request
//! that fails half-way must never leave a connection that could hand one request another's
//! reply.

use std::time::Duration;

use fanout::redis::Direct;
use redis::{IntoConnectionInfo, Value};

use crate::harness::*;

/// A lent connection to the master of the test's keys (`{d}`), with `timeout` per request.
async fn direct(redis: &Redis, timeout: Duration) -> (Direct, u16) {
    let port = redis.master_port_of("{d}").await;
    let info = format!("redis://127.0.0.1:{port}")
        .into_connection_info()
        .expect("url");
    let conn = Direct::connect(&info, Duration::from_secs(2), timeout)
        .await
        .expect("direct connection");
    (conn, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_answers_pipelines_and_transactions_as_redis_rs_does() {
    let redis = Redis::start().await;
    let (mut conn, port) = direct(&redis, Duration::from_secs(2)).await;
    let mut other = server_conn(port).await;

    // A pipeline with an ignored command: only the others' replies, in order.
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg("{d}:a").arg("1").ignore();
    pipe.cmd("INCR").arg("{d}:a");
    pipe.cmd("GET").arg("{d}:missing");
    let (n, missing): (i64, Option<String>) = pipe.query_async(&mut conn).await.expect("pipeline");
    assert_eq!((n, missing), (2, None));

    // A transaction: EXEC's replies.
    let mut tx = redis::pipe();
    tx.atomic().cmd("INCR").arg("{d}:a").cmd("GET").arg("{d}:a");
    let (n, s): (i64, String) = tx.query_async(&mut conn).await.expect("transaction");
    assert_eq!((n, s.as_str()), (3, "3"));

    // A WATCH that sees another client's write: EXEC answers nil and nothing is written.
    let _: () = redis::cmd("WATCH")
        .arg("{d}:a")
        .query_async(&mut conn)
        .await
        .expect("watch");
    let _: () = redis::cmd("SET")
        .arg("{d}:a")
        .arg("10")
        .query_async(&mut other)
        .await
        .expect("other write");
    let mut tx = redis::pipe();
    tx.atomic().cmd("SET").arg("{d}:a").arg("20");
    let aborted: Value = tx.query_async(&mut conn).await.expect("aborted exec");
    assert_eq!(aborted, Value::Nil);
    let a: String = redis::cmd("GET")
        .arg("{d}:a")
        .query_async(&mut other)
        .await
        .expect("get");
    assert_eq!(a, "10", "an aborted EXEC writes nothing");

    // A reply larger than one read (the decoder keeps a reply read in part).
    let big = "x".repeat(300_000);
    let _: () = redis::cmd("SET")
        .arg("{d}:big")
        .arg(&big)
        .query_async(&mut other)
        .await
        .expect("set big");
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg("{d}:big").cmd("STRLEN").arg("{d}:big");
    let (got, len): (String, usize) = pipe.query_async(&mut conn).await.expect("big");
    assert_eq!((got.len(), len), (big.len(), big.len()));
    assert!(got == big);

    // A server error is the caller's error, and the connection goes on.
    let err = redis::cmd("INCR")
        .arg("{d}:big")
        .query_async::<i64>(&mut conn)
        .await
        .expect_err("INCR of a string");
    assert!(err.to_string().contains("not an integer"), "{err}");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("ping after a server error");
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_refused_while_queued_is_an_exec_abort_and_writes_nothing() {
    let redis = Redis::start().await;
    let (mut conn, port) = direct(&redis, Duration::from_secs(2)).await;
    let mut tx = redis::pipe();
    tx.atomic()
        .cmd("SET")
        .arg("{d}:q")
        .arg("1")
        .cmd("NOSUCHCOMMAND")
        .arg("{d}:q");
    let err = tx
        .query_async::<Value>(&mut conn)
        .await
        .expect_err("a transaction with an unknown command");
    assert_eq!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort),
        "{err}"
    );
    let mut other = server_conn(port).await;
    let q: Option<String> = redis::cmd("GET")
        .arg("{d}:q")
        .query_async(&mut other)
        .await
        .expect("get");
    assert_eq!(q, None, "EXECABORT: nothing ran");
    // Every reply was read: the connection is in step and answers its next request.
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("ping after the abort");
    assert_eq!(pong, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_a_timeout_and_the_connection_refuses_what_follows() {
    let redis = Redis::start().await;
    let (mut conn, _) = direct(&redis, Duration::from_millis(300)).await;
    let err = redis::cmd("BLPOP")
        .arg("{d}:never")
        .arg(2)
        .query_async::<Value>(&mut conn)
        .await
        .expect_err("BLPOP for 2 s with a 300 ms timeout");
    assert!(
        err.is_timeout(),
        "a timeout, as redis-rs reports one: {err}"
    );
    // The BLPOP's nil reply is still due: a later request must not take it for its own.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .expect_err("a connection with a reply still pending");
    assert!(!err.is_timeout(), "refused at once: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_server_is_an_error_not_a_hang() {
    let redis = Redis::start().await;
    let (mut conn, port) = direct(&redis, Duration::from_secs(5)).await;
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut conn)
        .await
        .expect("client id");
    let mut other = server_conn(port).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut other)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);
    let started = std::time::Instant::now();
    let err = redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .expect_err("a killed connection");
    assert!(
        !err.is_timeout() && started.elapsed() < Duration::from_secs(4),
        "the close is seen, not waited out: {err} after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_connection_authenticates_as_the_url_says() {
    let redis = Redis::start().await;
    let port = redis.master_ports().await[0];
    let mut admin = server_conn(port).await;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "lender", "on", ">s3cret", "~*", "&*", "+@all"])
        .query_async(&mut admin)
        .await
        .expect("acl setuser");
    let info = format!("redis://lender:s3cret@127.0.0.1:{port}")
        .into_connection_info()
        .expect("url");
    let mut conn = Direct::connect(&info, Duration::from_secs(2), Duration::from_secs(2))
        .await
        .expect("authenticated");
    let who: String = redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut conn)
        .await
        .expect("whoami");
    assert_eq!(who, "lender");

    let wrong = format!("redis://lender:wrong@127.0.0.1:{port}")
        .into_connection_info()
        .expect("url");
    let err = Direct::connect(&wrong, Duration::from_secs(2), Duration::from_secs(2))
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(
        err.to_string().to_uppercase().contains("WRONGPASS"),
        "{err}"
    );
}
