//! The Lua scripts' contracts against a real redis-server: what a script writes where Rust
//! reads it back must match Rust's own form byte for byte.

use std::time::Duration;

use fanout::backplane::frame::Frame;
use fanout::chat::store::{ChatPosition, ChatStore};
use fanout::chat::{ChatMessage, message_envelope};
use fanout::redis::keys::ChatKeys;
use fanout::redis::scripts::chat_history::{self, Read};
use fanout::redis::scripts::chat_send::{self, PublishCommand, SendArgs, Sent};
use fanout::redis::scripts::invoke;

use crate::harness::*;

fn args<'a>(
    chat_id: &'a str,
    message_id: &'a str,
    content: &'a str,
    cmid: Option<&'a str>,
) -> SendArgs<'a> {
    SendArgs {
        chat_id,
        sender: "alice",
        message_id,
        client_msg_id: cmid,
        kind: "text",
        content,
        created_at: "2026-01-01T00:00:00.000Z",
        candidate_epoch: "ab12cd34",
        history_maxlen: 100,
        history_ttl_secs: 3600,
        now_secs: fanout::clock::now_ms() / 1000,
        dedup_ttl_secs: 60,
        node_id: "n1",
        publish: PublishCommand::Publish,
    }
}

fn message(a: &SendArgs<'_>, offset: u64, epoch: &str) -> ChatMessage {
    ChatMessage {
        id: a.message_id.to_owned(),
        chat_id: a.chat_id.to_owned(),
        sender_id: a.sender.to_owned(),
        client_msg_id: a.client_msg_id.map(str::to_owned),
        kind: a.kind.to_owned(),
        content: a.content.to_owned(),
        created_at: a.created_at.to_owned(),
        offset,
        epoch: epoch.to_owned(),
    }
}

/// A plain (RESP2) connection subscribed to `channel` with `SUBSCRIBE` or `SSUBSCRIBE`.
struct Subscriber {
    conn: redis::Connection,
}

impl Subscriber {
    fn new(redis: &Redis, command: &str, channel: &str) -> Subscriber {
        let mut conn = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let confirmed: redis::Value = redis::cmd(command).arg(channel).query(&mut conn).unwrap();
        assert!(matches!(confirmed, redis::Value::Array(_)), "{confirmed:?}");
        Subscriber { conn }
    }

    /// The next message's kind (`message` / `smessage`), channel and payload.
    fn next(&mut self) -> (String, String, String) {
        let push = self.conn.recv_response().unwrap();
        redis::from_redis_value(push).unwrap()
    }
}

async fn send(conn: &mut TestConn, a: &SendArgs<'_>) -> Sent {
    let reply = invoke(&chat_send::SCRIPT, conn, chat_send::call(a).unwrap())
        .await
        .unwrap();
    chat_send::parse(&reply).unwrap()
}

fn accepted(sent: Sent) -> fanout::chat::Accepted {
    let Sent::Accepted(a) = sent else {
        panic!("forbidden");
    };
    a
}

/// The frame `chat_send.lua` publishes is serde's `Frame` of the message, byte for byte, on the
/// chat's channel, with `PUBLISH` and with `SPUBLISH`; history reads the same messages back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_send_publishes_serdes_frame_and_history_reads_the_same_message_back() {
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    for (chat, publish, subscribe, kind) in [
        ("c.1", PublishCommand::Publish, "SUBSCRIBE", "message"),
        ("c.2", PublishCommand::Spublish, "SSUBSCRIBE", "smessage"),
    ] {
        let keys = ChatKeys::new(chat);
        let _: () = redis::cmd("SADD")
            .arg(keys.members())
            .arg("alice")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut sub = Subscriber::new(&redis, subscribe, &keys.channel());

        // JSON that needs escaping, slashes cjson would escape, non-ASCII, and the digits and
        // escape the frame is cut at.
        let first = SendArgs {
            publish,
            ..args(
                chat,
                "m1",
                "\"quoted\" a/b \\ \n\t é 😀 <&> 18446744073709551615 \u{1}",
                Some("k1"),
            )
        };
        let second = SendArgs {
            publish,
            ..args(chat, "m2", "plain", None)
        };
        let mut expected = Vec::new();
        for (n, a) in [&first, &second].into_iter().enumerate() {
            let ack = accepted(send(&mut conn, a).await);
            assert_eq!((ack.offset, ack.epoch.as_str()), (n as u64 + 1, "ab12cd34"));
            assert!(!ack.duplicate);
            expected.push(message(a, ack.offset, "ab12cd34"));
        }
        for msg in &expected {
            let (k, channel, payload) = sub.next();
            assert_eq!(
                (k.as_str(), channel.as_str()),
                (kind, keys.channel().as_str())
            );
            let serde_form = Frame::to_json("n1", &message_envelope(msg).unwrap()).unwrap();
            assert_eq!(without_time(&payload), without_time(&serde_form));
        }

        // A retry with the same clientMsgId publishes nothing and answers the first ACK.
        let again = accepted(send(&mut conn, &first).await);
        assert!(again.duplicate);
        assert_eq!(
            (
                again.message_id.as_str(),
                again.offset,
                again.epoch.as_str()
            ),
            ("m1", 1, "ab12cd34")
        );
        assert_eq!(again.created_at, first.created_at);
        let third = SendArgs {
            publish,
            ..args(chat, "m3", "third", Some("k3"))
        };
        assert_eq!(accepted(send(&mut conn, &third).await).offset, 3);
        let (_, _, payload) = sub.next();
        assert!(
            payload.contains(r#""id":"m3""#),
            "the retry published: {payload}"
        );
        expected.push(message(&third, 3, "ab12cd34"));

        let call = chat_history::call(&keys, "alice", None, None, 10, 100);
        let reply = invoke(&chat_history::SCRIPT, &mut conn, call)
            .await
            .unwrap();
        let Read::Page(page) = chat_history::parse(chat, &reply).unwrap() else {
            panic!("forbidden");
        };
        assert_eq!(page.messages, expected);
        assert_eq!((page.offset, page.epoch.as_str()), (3, "ab12cd34"));

        let stranger = SendArgs {
            sender: "mallory",
            ..args(chat, "m4", "x", None)
        };
        assert_eq!(send(&mut conn, &stranger).await, Sent::Forbidden);

        // The history and dedup TTLs are set.
        let ttls: (i64, i64) = redis::pipe()
            .cmd("TTL")
            .arg(keys.log())
            .cmd("TTL")
            .arg(keys.dedup("alice", "k1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        // HISTORY_TTL_SECS + the refresh period (min(60, TTL)), set when the log was created.
        assert!(ttls.0 > 3000 && ttls.0 <= 3660, "{ttls:?}");
        assert!(ttls.1 > 0 && ttls.1 <= 60, "{ttls:?}");

        // A lost sequence starts a new epoch, in which the remembered ACK no longer counts.
        let _: () = redis::cmd("DEL")
            .arg(keys.meta())
            .query_async(&mut conn)
            .await
            .unwrap();
        let retry = SendArgs {
            candidate_epoch: "ffff0001",
            ..first.clone()
        };
        let fresh = accepted(send(&mut conn, &retry).await);
        assert!(!fresh.duplicate);
        assert_eq!((fresh.offset, fresh.epoch.as_str()), (1, "ffff0001"));
        let (_, _, payload) = sub.next();
        let renewed = message(&retry, 1, "ffff0001");
        assert_eq!(
            without_time(&payload),
            without_time(&Frame::to_json("n1", &message_envelope(&renewed).unwrap()).unwrap())
        );
        // The old epoch's log went with it.
        let call = chat_history::call(&keys, "alice", None, None, 10, 100);
        let reply = invoke(&chat_history::SCRIPT, &mut conn, call)
            .await
            .unwrap();
        let Read::Page(page) = chat_history::parse(chat, &reply).unwrap() else {
            panic!("forbidden");
        };
        assert_eq!(page.messages, [renewed]);
    }
}

/// The gap-fill reads: positions of several chats in one round trip, and a range of a chat's
/// retained messages exactly as `chat:message` carried them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_and_ranges_read_what_chat_send_wrote() {
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    let store = ChatStore::new(redis.node_handle().conn(), 4);
    let keys = ChatKeys::new("g");
    let _: () = redis::cmd("SADD")
        .arg(keys.members())
        .arg("alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    let mut sent = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let a = SendArgs {
            history_maxlen: 4,
            client_msg_id: (i % 2 == 0).then_some(id.as_str()),
            ..args("g", id, "hello", None)
        };
        let ack = accepted(send(&mut conn, &a).await);
        sent.push(message(&a, ack.offset, &ack.epoch));
    }

    let positions = store
        .positions(&["g".to_owned(), "none".to_owned()])
        .await
        .unwrap();
    assert_eq!(
        positions,
        [
            ChatPosition {
                epoch: Some("ab12cd34".into()),
                seq: 6
            },
            ChatPosition {
                epoch: None,
                seq: 0
            }
        ]
    );
    assert!(store.positions(&[]).await.unwrap().is_empty());

    // The log is trimmed approximately: it still holds all 6, but only the last 4 are retained,
    // for history pages as for ranges.
    let len = int_reply(&mut conn, redis::cmd("XLEN").arg(keys.log())).await;
    assert_eq!(len, 6);
    let page = |since: Option<u64>, epoch: Option<&'static str>, limit: u32| {
        let call = chat_history::call(&keys, "alice", since, epoch, limit, 4);
        let mut conn = conn.clone();
        async move {
            let reply = invoke(&chat_history::SCRIPT, &mut conn, call)
                .await
                .unwrap();
            let Read::Page(page) = chat_history::parse("g", &reply).unwrap() else {
                panic!("forbidden");
            };
            (page.messages, page.reset)
        }
    };
    assert_eq!(page(None, None, 100).await, (sent[2..].to_vec(), false));
    assert_eq!(page(None, None, 2).await, (sent[4..].to_vec(), false));
    assert_eq!(page(Some(0), None, 100).await, (sent[2..].to_vec(), false));
    assert_eq!(page(Some(1), None, 2).await, (sent[2..4].to_vec(), false));
    assert_eq!(page(Some(4), None, 100).await, (sent[4..].to_vec(), false));
    assert_eq!(page(Some(6), None, 100).await, (Vec::new(), false));
    assert_eq!(
        page(Some(2), Some("other"), 100).await,
        (sent[2..].to_vec(), true)
    );
    assert_eq!(page(Some(9), None, 3).await, (sent[2..5].to_vec(), true));

    let (epoch, got) = store.range("g", 4, 5).await.unwrap();
    assert_eq!(epoch.as_deref(), Some("ab12cd34"));
    assert_eq!(got, sent[3..5]);
    let (_, got) = store.range("g", 1, 100).await.unwrap();
    assert_eq!(got, sent[2..]);
    let (_, got) = store.range("g", 5, 4).await.unwrap();
    assert!(got.is_empty());
    assert_eq!(
        store.range("none", 1, 10).await.unwrap(),
        (None, Vec::new())
    );
}

/// A log written before the packed entry form (six fields per entry) stays readable after an
/// upgrade: history pages and the gap fill return old and new entries alike, in offset order.
/// And the log keeps a TTL whatever happens to it: set when the stream is (re)created, not
/// refreshed again within the same period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_six_field_entries_are_read_with_packed_ones_and_the_log_keeps_a_ttl() {
    let redis = Redis::start().await;
    let mut conn = redis.conn().await;
    let store = ChatStore::new(redis.node_handle().conn(), 100);
    let keys = ChatKeys::new("up");
    // What the previous chat_send.lua left: meta at offset 2, two entries of six fields (one
    // without a clientMsgId), the log with a TTL of its own.
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(keys.members())
        .arg("alice")
        .cmd("HSET")
        .arg(keys.meta())
        .arg("epoch")
        .arg("ab12cd34")
        .arg("seq")
        .arg(2)
        .cmd("XADD")
        .arg(keys.log())
        .arg("0-1")
        .arg(&[
            "id",
            "o1",
            "senderId",
            "bob",
            "clientMsgId",
            "k-old",
            "type",
            "text",
        ])
        .arg(&[
            "content",
            "old \"one\"",
            "createdAt",
            "2025-01-01T00:00:00.000Z",
        ])
        .cmd("XADD")
        .arg(keys.log())
        .arg("0-2")
        .arg(&[
            "id",
            "o2",
            "senderId",
            "alice",
            "clientMsgId",
            "",
            "type",
            "image",
        ])
        .arg(&[
            "content",
            "old two",
            "createdAt",
            "2025-01-01T00:00:01.000Z",
        ])
        .cmd("EXPIRE")
        .arg(keys.log())
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    let old = |id: &str,
               sender: &str,
               cmid: Option<&str>,
               kind: &str,
               content: &str,
               at: &str,
               offset| {
        ChatMessage {
            id: id.into(),
            chat_id: "up".into(),
            sender_id: sender.into(),
            client_msg_id: cmid.map(Into::into),
            kind: kind.into(),
            content: content.into(),
            created_at: at.into(),
            offset,
            epoch: "ab12cd34".into(),
        }
    };
    let mut expected = vec![
        old(
            "o1",
            "bob",
            Some("k-old"),
            "text",
            "old \"one\"",
            "2025-01-01T00:00:00.000Z",
            1,
        ),
        old(
            "o2",
            "alice",
            None,
            "image",
            "old two",
            "2025-01-01T00:00:01.000Z",
            2,
        ),
    ];
    let new = args("up", "n3", "new \"three\"", Some("k3"));
    let ack = accepted(send(&mut conn, &new).await);
    assert_eq!((ack.offset, ack.epoch.as_str()), (3, "ab12cd34"));
    expected.push(message(&new, 3, "ab12cd34"));
    // The upgrade's first append found no ttlp in meta: the TTL was set (HISTORY_TTL_SECS 3600
    // + a period of 60).
    let ttl = int_reply(&mut conn, redis::cmd("TTL").arg(keys.log())).await;
    assert!(ttl > 3600 && ttl <= 3660, "{ttl}");
    let raw: redis::Value = redis::cmd("XRANGE")
        .arg(keys.log())
        .arg("0-3")
        .arg("0-3")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        format!("{raw:?}").contains(r#"\"id\":\"n3\""#),
        "one packed field: {raw:?}"
    );

    let call = chat_history::call(&keys, "alice", None, None, 10, 100);
    let reply = invoke(&chat_history::SCRIPT, &mut conn, call)
        .await
        .unwrap();
    let Read::Page(page) = chat_history::parse("up", &reply).unwrap() else {
        panic!("forbidden");
    };
    assert_eq!(page.messages, expected, "history");
    let (epoch, got) = store.range("up", 1, 3).await.unwrap();
    assert_eq!(epoch.as_deref(), Some("ab12cd34"));
    assert_eq!(got, expected, "gap fill");

    // Within the same period the TTL is not set again: it only runs down.
    let _: () = redis::cmd("EXPIRE")
        .arg(keys.log())
        .arg(500)
        .query_async(&mut conn)
        .await
        .unwrap();
    let same_period = args("up", "n4", "four", None);
    assert_eq!(accepted(send(&mut conn, &same_period).await).offset, 4);
    let ttl = int_reply(&mut conn, redis::cmd("TTL").arg(keys.log())).await;
    assert!(ttl > 400 && ttl <= 500, "{ttl}");
    // A new period sets it again.
    let next_period = SendArgs {
        now_secs: new.now_secs + 60,
        ..args("up", "n5", "five", None)
    };
    assert_eq!(accepted(send(&mut conn, &next_period).await).offset, 5);
    let ttl = int_reply(&mut conn, redis::cmd("TTL").arg(keys.log())).await;
    assert!(ttl > 3600 && ttl <= 3660, "{ttl}");
    // A log that vanished in the same period (evicted, or deleted by hand) is re-created with
    // its TTL: NOMKSTREAM tells the script so.
    let _: () = redis::cmd("DEL")
        .arg(keys.log())
        .query_async(&mut conn)
        .await
        .unwrap();
    let recreated = SendArgs {
        now_secs: next_period.now_secs,
        ..args("up", "n6", "six", Some("k6"))
    };
    assert_eq!(accepted(send(&mut conn, &recreated).await).offset, 6);
    let (ttl, len): (i64, u64) = redis::pipe()
        .cmd("TTL")
        .arg(keys.log())
        .cmd("XLEN")
        .arg(keys.log())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 3600 && ttl <= 3660, "{ttl}");
    assert_eq!(len, 1);
    // A retry gives its offset back: the next message takes 7, and the log holds no copy.
    let retry = SendArgs {
        message_id: "n6-again",
        ..recreated.clone()
    };
    let again = accepted(send(&mut conn, &retry).await);
    assert!(again.duplicate);
    assert_eq!((again.offset, again.message_id.as_str()), (6, "n6"));
    let after = args("up", "n7", "seven", None);
    assert_eq!(accepted(send(&mut conn, &after).await).offset, 7);
    let len = int_reply(&mut conn, redis::cmd("XLEN").arg(keys.log())).await;
    assert_eq!(len, 2);
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

/// `keys::hash_slot` answers what a cluster-enabled redis-server's `CLUSTER KEYSLOT` answers (a
/// server without cluster support refuses the command), and `chat_send.lua` runs on a Redis
/// Cluster node with the channel among its KEYS, publishing with `SPUBLISH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_slots_match_cluster_keyslot_and_chat_send_runs_on_a_cluster_node() {
    use fanout::redis::keys::hash_slot;
    let redis = Redis::start_with(&["--cluster-enabled", "yes"]).await;
    let mut conn = redis.conn().await;
    let k = ChatKeys::new("c.9");
    for key in [
        "123456789".to_owned(),
        "{user1000}.following".to_owned(),
        "foo{}{bar}".to_owned(),
        "foo{{bar}}zap".to_owned(),
        k.members(),
        k.dedup("alice", "x"),
        k.channel(),
        fanout::redis::keys::presence_user("7"),
        fanout::redis::keys::user_chats("7"),
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(hash_slot(&key), slot, "{key}");
    }

    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .unwrap();
    let ok = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut redis.conn().await)
                .await
                .unwrap_or_default();
            info.contains("cluster_state:ok")
        },
        |&ok| ok,
    )
    .await;
    assert!(ok, "the one-node cluster never came up");
    let _: () = redis::cmd("SADD")
        .arg(k.members())
        .arg("alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut sub = Subscriber::new(&redis, "SSUBSCRIBE", &k.channel());
    let a = SendArgs {
        publish: PublishCommand::Spublish,
        ..args("c.9", "m1", "on a cluster", Some("k"))
    };
    let ack = accepted(send(&mut conn, &a).await);
    let (kind, _, payload) = sub.next();
    assert_eq!(kind, "smessage");
    assert_eq!(
        without_time(&payload),
        without_time(
            &Frame::to_json(
                "n1",
                &message_envelope(&message(&a, ack.offset, &ack.epoch)).unwrap()
            )
            .unwrap()
        )
    );
}

/// A frame's JSON without its `"t":<ms>,` field: the time the frame was built is the one byte
/// range the script's frame and serde's form made a moment apart may differ in.
fn without_time(frame: &str) -> String {
    match frame.find("\"t\":") {
        Some(start) => {
            let rest = &frame[start..];
            let end = rest.find(',').map_or(rest.len(), |i| i + 1);
            format!("{}{}", &frame[..start], &rest[end..])
        }
        None => frame.to_owned(),
    }
}

/// An integer reply of `cmd` (`TTL`, `XLEN`, …).
async fn int_reply(conn: &mut impl redis::aio::ConnectionLike, cmd: &redis::Cmd) -> i64 {
    cmd.query_async(conn).await.unwrap()
}
