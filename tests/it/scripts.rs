//! The Lua scripts' contracts against a real redis-server: what a script writes where Rust
//! reads it back must match Rust's own form byte for byte.

use fanout::chat::{ChatMessage, message_envelope};
use fanout::redis::keys::ChatKeys;
use fanout::redis::scripts::chat_history::{self, Read};
use fanout::redis::scripts::chat_send::{self, SendArgs, Sent};
use fanout::redis::scripts::invoke;
use redis::streams::StreamRangeReply;

use crate::harness::*;

fn args<'a>(message_id: &'a str, content: &'a str, cmid: Option<&'a str>) -> SendArgs<'a> {
    SendArgs {
        chat_id: "c.1",
        sender: "alice",
        message_id,
        client_msg_id: cmid,
        kind: "text",
        content,
        created_at: "2026-01-01T00:00:00.000Z",
        candidate_epoch: "ab12cd34",
        history_maxlen: 100,
        history_ttl_secs: 3600,
        dedup_ttl_secs: 60,
        shards: 4,
        node_id: "n1",
        backplane_maxlen: 1000,
    }
}

fn message(a: &SendArgs<'_>, offset: u64) -> ChatMessage {
    ChatMessage {
        id: a.message_id.to_owned(),
        chat_id: a.chat_id.to_owned(),
        sender_id: a.sender.to_owned(),
        client_msg_id: a.client_msg_id.map(str::to_owned),
        kind: a.kind.to_owned(),
        content: a.content.to_owned(),
        created_at: a.created_at.to_owned(),
        offset,
        epoch: a.candidate_epoch.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_send_writes_serdes_envelope_and_history_reads_the_same_message_back() {
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    let keys = ChatKeys::new("c.1", 4);
    let _: () = redis::cmd("SADD")
        .arg(keys.members())
        .arg("alice")
        .query_async(&mut conn)
        .await
        .unwrap();

    // JSON that needs escaping, slashes cjson would escape, non-ASCII, and the digits the
    // envelope is cut at.
    let first = args(
        "m1",
        "\"quoted\" a/b \\ \n\t é 😀 <&> 18446744073709551615",
        Some("k1"),
    );
    let second = args("m2", "plain", None);
    let mut expected = Vec::new();
    for (n, a) in [&first, &second].into_iter().enumerate() {
        let reply = invoke(&chat_send::SCRIPT, &mut conn, chat_send::call(a).unwrap())
            .await
            .unwrap();
        let Sent::Accepted(accepted) = chat_send::parse(&reply).unwrap() else {
            panic!("forbidden");
        };
        assert_eq!(accepted.offset, n as u64 + 1);
        assert!(!accepted.duplicate);
        expected.push(message(a, accepted.offset));
    }

    let entries: StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.stream())
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.ids.len(), 2);
    for (entry, msg) in entries.ids.iter().zip(&expected) {
        let written: String = entry.get("e").unwrap();
        let serde_form = serde_json::to_string(&message_envelope(msg).unwrap()).unwrap();
        assert_eq!(written, serde_form);
        let origin: String = entry.get("n").unwrap();
        assert_eq!(origin, "n1");
    }

    // A retry with the same clientMsgId publishes nothing and answers the first ACK.
    let reply = invoke(
        &chat_send::SCRIPT,
        &mut conn,
        chat_send::call(&first).unwrap(),
    )
    .await
    .unwrap();
    let Sent::Accepted(again) = chat_send::parse(&reply).unwrap() else {
        panic!("forbidden");
    };
    assert!(again.duplicate);
    assert_eq!(again.offset, 1);
    let len: u64 = redis::cmd("XLEN")
        .arg(keys.stream())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2);

    let call = chat_history::call(&keys, "alice", None, None, 10);
    let reply = invoke(&chat_history::SCRIPT, &mut conn, call)
        .await
        .unwrap();
    let Read::Page(page) = chat_history::parse("c.1", &reply).unwrap() else {
        panic!("forbidden");
    };
    assert_eq!(page.messages, expected);
    assert_eq!((page.offset, page.epoch.as_str()), (2, "ab12cd34"));

    let stranger = args("m3", "x", None);
    let stranger = SendArgs {
        sender: "mallory",
        ..stranger
    };
    let reply = invoke(
        &chat_send::SCRIPT,
        &mut conn,
        chat_send::call(&stranger).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(chat_send::parse(&reply).unwrap(), Sent::Forbidden);
}

/// The one rule of which presence fields count: Lua's half (`lua/presence_field_rule.lua`, in
/// front of every presence script) and Rust's (`fanout::presence::rule`) on the same table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lua_and_rust_halves_of_the_field_rule_agree() {
    use fanout::presence::rule::{CASES, field_counts};
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    let prelude = std::fs::read_to_string(repo_root().join("lua/presence_field_rule.lua")).unwrap();
    let probe = format!("{prelude}\nif field_counts(ARGV[2]) then return 1 else return 0 end");
    for (json, fresh, counts) in CASES {
        let lua: i64 = redis::cmd("EVAL")
            .arg(&probe)
            .arg(0)
            .arg(fresh.to_string())
            .arg(*json)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(lua == 1, *counts, "lua: {json} at {fresh}");
        assert_eq!(
            field_counts(json, *fresh),
            *counts,
            "rust: {json} at {fresh}"
        );
    }
}
