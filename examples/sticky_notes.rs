//! A small backend service behind fanout: it consumes the routed events of the `stickyNotes`
//! service (`events:stickyNotes`, docs/protocol.md §5) with a consumer group, answers the sender
//! through the `fanout:publish` stream — no HTTP needed.
//!
//! A client emits `stickyNotes:note:create { text }`; the gateway appends
//! `{event, userId, socketId, nodeId, payload, receivedAt}` to `events:stickyNotes`; this
//! service reads it, "stores" the note, and publishes `stickyNotes:note:created` to the
//! sender's `user:` room, whichever node the sender is on.
//!
//! Run: `cargo run --example sticky_notes -- redis://127.0.0.1:6379` next to nodes started with
//! `SERVICES=stickyNotes`. The integration tests use it as their service fixture.

use std::time::Duration;

use redis::streams::StreamReadReply;
use serde_json::{Value, json};

/// The service's stream and consumer group.
pub const STREAM: &str = "events:stickyNotes";
/// Consumer group of the sticky-notes service (one per service; many instances may share it).
pub const GROUP: &str = "sticky-notes";

/// Consumes `events:stickyNotes` as `consumer` until `stop` resolves; returns how many events
/// it answered.
pub async fn run(
    redis_url: &str,
    consumer: &str,
    stop: impl std::future::Future<Output = ()>,
) -> redis::RedisResult<usize> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    // Idempotent: BUSYGROUP means another instance created it already.
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await;
    if let Err(e) = created
        && e.code() != Some("BUSYGROUP")
    {
        return Err(e);
    }
    // Blocking reads need a connection whose response timeout outlasts the block.
    let mut reader = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await?;
    let mut answered = 0;
    tokio::pin!(stop);
    loop {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(100)
            .arg("BLOCK")
            .arg(500)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(">");
        let read = cmd.query_async::<Option<StreamReadReply>>(&mut reader);
        let reply = tokio::select! {
            _ = &mut stop => return Ok(answered),
            r = read => r?,
        };
        for entry in reply
            .map(|r| r.keys)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|k| k.ids)
        {
            let user: String = entry.get("userId").unwrap_or_default();
            let event: String = entry.get("event").unwrap_or_default();
            let payload: Value = entry
                .get::<String>("payload")
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or(Value::Null);
            if event == "stickyNotes:note:create" && !user.is_empty() {
                let body = json!({
                    "event": "stickyNotes:note:created",
                    "users": [user],
                    "data": { "noteId": entry.id, "text": payload["text"], "owner": user },
                });
                let _: String = redis::cmd("XADD")
                    .arg("fanout:publish")
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(10_000)
                    .arg("*")
                    .arg("body")
                    .arg(body.to_string())
                    .query_async(&mut conn)
                    .await?;
                answered += 1;
            }
            let _: () = redis::cmd("XACK")
                .arg(STREAM)
                .arg(GROUP)
                .arg(&entry.id)
                .query_async(&mut conn)
                .await?;
        }
    }
}

#[allow(dead_code)] // the tests include this file for `run` only
#[tokio::main]
async fn main() -> redis::RedisResult<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let stop = async {
        tokio::signal::ctrl_c().await.ok();
    };
    let answered = run(&url, "sticky-notes-1", stop).await?;
    eprintln!("sticky_notes: answered {answered} events");
    Ok(())
}
