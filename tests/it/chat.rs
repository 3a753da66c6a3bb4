//! Chat across nodes (docs/protocol.md §3): delivery, order, offsets, idempotency, typing, read
//! receipts, history and the inbound aliases.

use std::collections::HashMap;

use fanout_client::Client;
use serde_json::{Value, json};

use crate::harness::*;

async fn send(c: &Client, chat: &str, content: &str) -> Value {
    let a = ack(
        c,
        "chat:send",
        json!({ "chatId": chat, "content": content }),
    )
    .await;
    assert_eq!(a["status"], "ACCEPTED", "{a}");
    a
}

/// Waits for `n` chat:message events and returns them in arrival order.
async fn messages(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match c.wait_for("chat:message", WAIT).await {
            Some(m) => out.push(m),
            None => panic!("only {} of {n} chat:message events arrived", out.len()),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_to_every_member_socket_including_the_sender() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("room1", &["alice", "bob"]).await;

    let mut alice = connect(&a.url(), "alice").await;
    let mut alice2 = connect(&b.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let ackv = ack(
        &alice,
        "chat:send",
        json!({"chatId": "room1", "content": "hello", "clientMsgId": "m1"}),
    )
    .await;
    assert_eq!(ackv["success"], true, "{ackv}");
    assert_eq!(ackv["status"], "ACCEPTED");
    assert_eq!(ackv["offset"], 1);
    assert_eq!(ackv["clientMsgId"], "m1");
    assert_eq!(ackv["chatId"], "room1");
    assert!(ackv["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert!(ackv["epoch"].as_str().is_some_and(|e| !e.is_empty()));

    for c in [&mut alice, &mut alice2, &mut bob] {
        let m = c
            .wait_for("chat:message", WAIT)
            .await
            .expect("chat:message");
        assert_eq!(m["content"], "hello");
        assert_eq!(m["senderId"], "alice");
        assert_eq!(m["chatId"], "room1");
        assert_eq!(m["clientMsgId"], "m1");
        assert_eq!(m["offset"], 1);
        assert_eq!(m["id"], ackv["messageId"]);
        assert_eq!(m["type"], "text");
        assert_eq!(m["epoch"], ackv["epoch"]);
        assert_eq!(m["createdAt"], ackv["createdAt"]);
    }

    // Without a clientMsgId the ACK carries null (docs/protocol.md §8).
    let a2 = ack(
        &bob,
        "chat:send",
        json!({"chatId": "room1", "content": "hi", "type": "system"}),
    )
    .await;
    assert_eq!(a2["clientMsgId"], Value::Null);
    assert_eq!(a2["offset"], 2);
    let m = alice
        .wait_for("chat:message", WAIT)
        .await
        .expect("second message");
    assert_eq!(m["type"], "system");
    assert_eq!(m["clientMsgId"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_on_three_nodes_are_seen_in_one_order_with_consecutive_offsets() {
    const PER_SENDER: usize = 200;
    let redis = Redis::start().await;
    let nodes = [
        Node::start(&redis, "a").await,
        Node::start(&redis, "b").await,
        Node::start(&redis, "c").await,
    ];
    let users = ["s0", "s1", "s2", "r0", "r1", "r2"];
    nodes[0].create_chat("busy", &users).await;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        senders.push(connect(&node.url(), &format!("s{i}")).await);
        receivers.push(connect(&node.url(), &format!("r{i}")).await);
    }
    let senders: Vec<std::sync::Arc<Client>> =
        senders.into_iter().map(std::sync::Arc::new).collect();
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let a = ack(
                    &s,
                    "chat:send",
                    json!({"chatId": "busy", "content": format!("s{i}-{n}")}),
                )
                .await;
                assert_eq!(a["status"], "ACCEPTED", "{a}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    let total = 3 * PER_SENDER;
    let mut orders = Vec::new();
    for r in receivers.iter_mut() {
        let ms = messages(r, total).await;
        let offsets: Vec<u64> = ms.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(
            offsets,
            (1..=total as u64).collect::<Vec<_>>(),
            "consecutive offsets"
        );
        // Each sender's messages arrive in the order it sent them.
        let mut next: HashMap<String, usize> = HashMap::new();
        for m in &ms {
            let content = m["content"].as_str().unwrap();
            let (who, n) = content.split_once('-').unwrap();
            let expected = next.entry(who.to_owned()).or_insert(0);
            assert_eq!(n.parse::<usize>().unwrap(), *expected, "per-sender order");
            *expected += 1;
        }
        orders.push(
            ms.iter()
                .map(|m| m["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>(),
        );
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every receiver saw the same order"
    );
    // The senders' own sockets received the same stream (sent messages included).
    drop(senders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_forbidden_everywhere_but_leave() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("private", &["alice"]).await;
    let eve = connect(&a.url(), "eve").await;
    let s = ack(
        &eve,
        "chat:send",
        json!({"chatId": "private", "content": "hi", "clientMsgId": "x1"}),
    )
    .await;
    assert_eq!(s["success"], false);
    assert_eq!(s["status"], "FAILED");
    assert_eq!(s["clientMsgId"], "x1");
    assert_eq!(s["error"]["code"], "FORBIDDEN");
    for (event, payload) in [
        ("chat:join", json!({"chatId": "private"})),
        (
            "chat:typing",
            json!({"chatId": "private", "isTyping": true}),
        ),
        ("chat:read", json!({"chatId": "private", "messageId": "m"})),
        ("chat:history", json!({"chatId": "private"})),
        ("joinRoom", json!({"roomId": "private"})),
    ] {
        let r = ack(&eve, event, payload).await;
        assert_eq!(r["success"], false, "{event}: {r}");
        assert_eq!(r["error"]["code"], "FORBIDDEN", "{event}: {r}");
    }
    let l = ack(&eve, "chat:leave", json!({"chatId": "private"})).await;
    assert_eq!(l, json!({"success": true, "chatId": "private"}));
    // Nothing was appended by the refused send.
    let alice = connect(&a.url(), "alice").await;
    let h = ack(&alice, "chat:history", json!({"chatId": "private"})).await;
    assert_eq!(h["messages"], json!([]));
    assert_eq!(h["offset"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_client_msg_id_returns_the_first_ack_and_delivers_once() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let p = json!({"chatId": "c", "content": "once", "clientMsgId": "retry-1"});
    let first = ack(&alice, "chat:send", p.clone()).await;
    let again = ack(&alice, "chat:send", p.clone()).await;
    // Even from another socket of the same user on another node.
    let alice_b = connect(&b.url(), "alice").await;
    let third = ack(&alice_b, "chat:send", p).await;
    for k in [
        "messageId",
        "offset",
        "epoch",
        "createdAt",
        "clientMsgId",
        "status",
    ] {
        assert_eq!(first[k], again[k], "{k}");
        assert_eq!(first[k], third[k], "{k}");
    }
    // Another user may use the same clientMsgId: it is a new message.
    let bob_send = ack(
        &bob,
        "chat:send",
        json!({"chatId": "c", "content": "mine", "clientMsgId": "retry-1"}),
    )
    .await;
    assert_eq!(bob_send["offset"], 2);
    let ms = messages(&mut bob, 2).await;
    assert_eq!(ms[0]["content"], "once");
    assert_eq!(ms[1]["content"], "mine");
    assert!(
        bob.collect("chat:message", QUIET).await.is_empty(),
        "no duplicate delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_others_but_not_the_typing_socket() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut alice1 = connect(&a.url(), "alice").await;
    let mut alice2 = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let r = ack(
        &alice1,
        "chat:typing",
        json!({"chatId": "c", "isTyping": true}),
    )
    .await;
    assert_eq!(r, json!({"success": true}));
    let expected = json!({"chatId": "c", "userId": "alice", "isTyping": true});
    assert_eq!(
        bob.wait_for("chat:typing", WAIT).await,
        Some(expected.clone())
    );
    assert_eq!(alice2.wait_for("chat:typing", WAIT).await, Some(expected));
    assert!(
        alice1.collect("chat:typing", QUIET).await.is_empty(),
        "typist got its own typing"
    );
    let bad = ack(
        &alice1,
        "chat:typing",
        json!({"chatId": "c", "isTyping": "yes"}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "INVALID_PAYLOAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_reach_the_whole_room_including_the_reader() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let sent = send(&alice, "c", "read me").await;
    let mid = sent["messageId"].as_str().unwrap();
    assert_eq!(
        ack(&bob, "chat:read", json!({"chatId": "c", "messageId": mid})).await,
        json!({"success": true})
    );
    for c in [&mut alice, &mut bob] {
        let r = c.wait_for("chat:read", WAIT).await.expect("chat:read");
        assert_eq!(r["chatId"], "c");
        assert_eq!(r["userId"], "bob");
        assert_eq!(r["messageId"], mid);
        assert!(r["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_after_reconnecting_to_another_node_returns_exactly_the_missed_messages() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    for i in 1..=3 {
        send(&alice, "c", &format!("m{i}")).await;
    }
    let seen = messages(&mut bob, 3).await;
    let last = seen.last().unwrap().clone();
    bob.close().await;
    for i in 4..=8 {
        send(&alice, "c", &format!("m{i}")).await;
    }
    let bob = connect(&a.url(), "bob").await;
    let h = ack(
        &bob,
        "chat:history",
        json!({"chatId": "c", "since": last["offset"], "epoch": last["epoch"]}),
    )
    .await;
    assert_eq!(h["success"], true);
    assert_eq!(h["reset"], false);
    assert_eq!(h["offset"], 8);
    assert_eq!(h["epoch"], last["epoch"]);
    let contents: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["m4", "m5", "m6", "m7", "m8"]);
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5, 6, 7, 8]);
    let m = &h["messages"][0];
    for k in [
        "id",
        "chatId",
        "senderId",
        "clientMsgId",
        "type",
        "content",
        "createdAt",
        "offset",
        "epoch",
    ] {
        assert!(m.get(k).is_some(), "history message lacks {k}: {m}");
    }

    // Paging forward with a limit; newest page without since; stale epoch → reset.
    let p = ack(
        &bob,
        "chat:history",
        json!({"chatId": "c", "since": 2, "limit": 2}),
    )
    .await;
    assert_eq!(
        p["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    let newest = ack(&bob, "chat:history", json!({"chatId": "c", "limit": 3})).await;
    assert_eq!(
        newest["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [6, 7, 8]
    );
    let stale = ack(
        &bob,
        "chat:history",
        json!({"chatId": "c", "since": 5, "epoch": "old-epoch"}),
    )
    .await;
    assert_eq!(stale["reset"], true);
    assert_eq!(
        stale["messages"][0]["offset"], 1,
        "reset answers from the oldest retained"
    );
    let ahead = ack(&bob, "chat:history", json!({"chatId": "c", "since": 99})).await;
    assert_eq!(
        ahead["reset"], true,
        "a position beyond the sequence is void"
    );
    let huge = ack(
        &bob,
        "chat:history",
        json!({"chatId": "c", "limit": 100000}),
    )
    .await;
    assert_eq!(
        huge["messages"].as_array().unwrap().len(),
        8,
        "limit is clamped, not refused"
    );
    let bad = ack(&bob, "chat:history", json!({"chatId": "c", "since": -1})).await;
    assert_eq!(bad["error"]["code"], "INVALID_PAYLOAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_trimmed_to_history_maxlen() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", NodeOpts::default().with("history-maxlen", "5")).await;
    a.create_chat("c", &["alice"]).await;
    let alice = connect(&a.url(), "alice").await;
    for i in 1..=8 {
        send(&alice, "c", &format!("m{i}")).await;
    }
    let h = ack(&alice, "chat:history", json!({"chatId": "c", "since": 0})).await;
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 5, 6, 7, 8]);
    assert_eq!(h["offset"], 8);
    assert_eq!(h["reset"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_and_the_inbound_aliases() {
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    a.create_chat("c", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&a.url(), "bob").await;

    // Leaving the room stops live delivery but not membership.
    assert_eq!(
        ack(&bob, "leave-chat", json!({"chatId": "c"})).await,
        json!({"success": true, "chatId": "c"})
    );
    send(&alice, "c", "while away").await;
    assert!(
        bob.collect("chat:message", QUIET).await.is_empty(),
        "left the room"
    );
    assert_eq!(
        ack(&bob, "joinRoom", json!({"roomId": "c"})).await,
        json!({"success": true, "chatId": "c"})
    );
    let via_alias = ack(
        &bob,
        "sendMessage",
        json!({"roomId": "c", "clientMsgId": "a1", "type": "text", "content": "alias"}),
    )
    .await;
    assert_eq!(via_alias["status"], "ACCEPTED");
    assert_eq!(via_alias["chatId"], "c");
    let m = bob
        .wait_for("chat:message", WAIT)
        .await
        .expect("alias send delivered");
    assert_eq!(m["content"], "alias");
    assert_eq!(
        ack(&bob, "chat:leave", json!({"chatId": "c"})).await["success"],
        true
    );
    assert_eq!(
        ack(&bob, "join-chat", json!({"chatId": "c"})).await,
        json!({"success": true, "chatId": "c"})
    );
    assert_eq!(
        ack(&bob, "chat:join", json!({"chatId": "c"})).await,
        json!({"success": true, "chatId": "c"})
    );
    send(&alice, "c", "back").await;
    let m = bob.wait_for("chat:message", WAIT).await.expect("rejoined");
    assert_eq!(m["content"], "back");
    assert!(
        bob.collect("chat:message", QUIET).await.is_empty(),
        "joining twice delivers once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sends_of_one_socket_keep_their_order() {
    const N: usize = 300;
    let redis = Redis::start().await;
    let budget = NodeOpts::default()
        .with("rate-limit-per-sec", "1000")
        .with("rate-limit-burst", "1000");
    let a = Node::start_with(&redis, "a", budget.clone()).await;
    let b = Node::start_with(&redis, "b", budget).await;
    a.create_chat("c", &["alice", "bob"]).await;
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    // Written back to back, none waiting for its ACK.
    for i in 0..N {
        alice
            .emit(
                "chat:send",
                json!({"chatId": "c", "content": format!("{i}")}),
            )
            .await
            .unwrap();
    }
    let got = messages(&mut bob, N).await;
    let contents: Vec<usize> = got
        .iter()
        .map(|m| m["content"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        contents,
        (0..N).collect::<Vec<_>>(),
        "delivered in send order"
    );
}

/// A node's options with `CHAT_SEND_PATH=transaction`.
fn transactions() -> NodeOpts {
    NodeOpts::default().with("chat-send-path", "transaction")
}

/// The send transaction (docs/architecture.md §1) and the script keep one contract, even
/// interleaved on one chat: a node running the script (`CHAT_SEND_PATH=script`, the default)
/// and two running transactions, three senders each sending every message twice at once through two nodes
/// (same `clientMsgId`), give one sequence with consecutive offsets, every message accepted once
/// (both ACKs name the same message) and delivered once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_and_transaction_nodes_share_one_sequence_and_one_dedup() {
    const PER_SENDER: usize = 100;
    let redis = Redis::start().await;
    let nodes = [
        Node::start(&redis, "a").await,
        Node::start_with(&redis, "b", transactions()).await,
        Node::start_with(&redis, "c", transactions()).await,
    ];
    let users = ["s0", "s1", "s2", "r"];
    nodes[0].create_chat("mixed", &users).await;
    let mut receiver = connect(&nodes[1].url(), "r").await;
    let mut before = Vec::new();
    for (path, reason) in COUNTED {
        before.push(send_path_count(&nodes[0], path, reason).await);
    }
    let mut tasks = Vec::new();
    for i in 0..3 {
        // Each sender has a socket on its own node and one on the next.
        let first = connect(&nodes[i].url(), &format!("s{i}")).await;
        let second = connect(&nodes[(i + 1) % 3].url(), &format!("s{i}")).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                let payload = json!({"chatId": "mixed", "content": format!("s{i}-{n}"), "clientMsgId": format!("s{i}-{n}")});
                let (x, y) = tokio::join!(
                    ack(&first, "chat:send", payload.clone()),
                    ack(&second, "chat:send", payload)
                );
                assert_eq!(x["status"], "ACCEPTED", "{x}");
                assert_eq!(y["status"], "ACCEPTED", "{y}");
                assert_eq!(
                    (&x["messageId"], &x["offset"], &x["epoch"]),
                    (&y["messageId"], &y["offset"], &y["epoch"]),
                    "both attempts answer the one message"
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("sender task");
    }
    let total = 3 * PER_SENDER;
    let ms = messages(&mut receiver, total).await;
    let offsets: Vec<u64> = ms.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, (1..=total as u64).collect::<Vec<_>>());
    let mut next: HashMap<String, usize> = HashMap::new();
    for m in &ms {
        let (who, n) = m["content"].as_str().unwrap().split_once('-').unwrap();
        let expected = next.entry(who.to_owned()).or_insert(0);
        assert_eq!(n.parse::<usize>().unwrap(), *expected, "per-sender order");
        *expected += 1;
    }
    // Nothing more: no message was appended twice.
    assert!(
        receiver
            .wait_for("chat:message", std::time::Duration::from_millis(500))
            .await
            .is_none(),
        "a message arrived twice"
    );
    // Both paths ran (node a runs the script; the others' duplicates went to the script too).
    for ((path, reason), was) in COUNTED.iter().zip(before) {
        let now = send_path_count(&nodes[0], path, reason).await;
        assert!(now > was, "no {path}/{reason} send: {was} -> {now}");
    }
}

const COUNTED: [(&str, &str); 3] = [
    ("script", "configured"),
    ("transaction", "committed"),
    ("script", "duplicate"),
];

async fn ttl_of(conn: &mut TestConn, key: &str) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("TTL")
}

/// The send transaction keeps the history log's TTL as the script does (docs/protocol.md §3): a
/// log that is gone while the chat's sequence lives on (expired, evicted) is created again by
/// the next message with its TTL, offsets continuing; within a refresh period a message leaves
/// an existing TTL alone (`EXPIRE … NX`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_gives_a_recreated_log_its_ttl_and_continues_the_offsets() {
    let redis = Redis::start().await;
    let node = Node::start_with(&redis, "a", transactions().with("history-ttl-secs", "3600")).await;
    node.create_chat("ttl", &["alice"]).await;
    let alice = connect(&node.url(), "alice").await;
    let log = "fanout:{chat:ttl}:log";
    let mut conn = redis.conn().await;
    // The first message starts the sequence (the script), the second is a transaction.
    let first = send(&alice, "ttl", "one").await;
    send(&alice, "ttl", "two").await;
    let before = ttl_of(&mut conn, log).await;
    assert!(
        (3600..=3660).contains(&before),
        "HISTORY_TTL_SECS + R: {before}"
    );
    // A shorter TTL stands within the period: the transaction does not push it back.
    let () = redis::cmd("EXPIRE")
        .arg(log)
        .arg(1000)
        .query_async(&mut conn)
        .await
        .expect("EXPIRE");
    send(&alice, "ttl", "three").await;
    assert!(ttl_of(&mut conn, log).await <= 1000);
    // Gone: created again with its TTL, at the next offset of the same epoch.
    let () = redis::cmd("DEL")
        .arg(log)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let fourth = send(&alice, "ttl", "four").await;
    assert_eq!(fourth["offset"], 4);
    assert_eq!(fourth["epoch"], first["epoch"]);
    let after = ttl_of(&mut conn, log).await;
    assert!(
        (3600..=3660).contains(&after),
        "a recreated log's TTL: {after}"
    );
}
