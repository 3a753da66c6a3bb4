//! Interop: a third-party Rust Socket.IO client, the `rust_socketio` crate (0.6, async API; a
//! dev-dependency), against two nodes on one Redis, over the websocket and the polling
//! transports. Beside the JavaScript (`interop_js`) and Python (`interop_py`) clients it checks
//! the same things: refusals with `UNAUTHORIZED`, the token as `auth.token` and as the
//! `Authorization: Bearer` header, sockets joined to their chats at connect (no chat:join),
//! chat:send ACKs, chat:message from another user, INVALID_EVENT, presence:online/offline of a
//! peer, and chat:history `since` after reconnecting to the other node.
//!
//! What the crate does not do by itself, and this test does around it:
//! - `connect()` returns once Engine.IO is open, before the namespace CONNECT (or
//!   CONNECT_ERROR) came back: [`Peer::connect`] waits for the `connect` or `error` callback.
//! - A CONNECT_ERROR reaches the `error` callback as the text
//!   `Received an ConnectError frame: <json>`: [`connect_error_message`] takes the message out.
//! - ACK ids are random in 0..999, so two ACKs in flight on one socket may collide: every
//!   [`Peer::call`] waits for its ACK before the next emit.
//! - It cannot answer ACKs the server asks for; the protocol asks none of the client.
//! - Callbacks run under the client's internal lock: they only push into a channel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use rust_socketio::asynchronous::{Client, ClientBuilder};
use rust_socketio::{Event, Payload, TransportType};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::harness::*;

/// Bound for one ACK, one connect, one awaited event.
const STEP: Duration = Duration::from_secs(5);
/// Messages sent while both are connected, then while bob is away.
const N: u64 = 10;
const LATE: u64 = 3;

/// The first argument of an event or ACK (the crate hands over the argument list).
fn first(payload: Payload) -> Value {
    match payload {
        Payload::Text(mut values) if !values.is_empty() => values.swap_remove(0),
        Payload::Text(_) | Payload::Binary(_) => Value::Null,
        #[allow(deprecated)]
        Payload::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
    }
}

/// The `message` of a CONNECT_ERROR as the crate reports it to the `error` callback.
fn connect_error_message(error: &Value) -> Option<String> {
    let text = error.as_str()?;
    let json = text.strip_prefix("Received an ConnectError frame: ")?;
    let data: Value = serde_json::from_str(json).ok()?;
    data["message"].as_str().map(str::to_owned)
}

/// How a client presents its token.
enum Cred<'a> {
    Auth(&'a str),
    Header(&'a str),
    None,
}

/// One rust_socketio client and every event it received, in order: `connect`, `error`,
/// `close` and the server's events by name.
struct Peer {
    name: &'static str,
    client: Client,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    seen: Vec<(String, Value)>,
    /// How many events were seen when this client disconnected itself.
    closed_at: Option<usize>,
}

impl Peer {
    /// Connects and waits for the namespace's answer: `Ok` on CONNECT, `Err(message)` on
    /// CONNECT_ERROR (the client is then disconnected).
    async fn connect(
        name: &'static str,
        url: &str,
        cred: Cred<'_>,
        transport: &str,
    ) -> Result<Peer, String> {
        let transport = match transport {
            "websocket" => TransportType::Websocket,
            "polling" => TransportType::Polling,
            other => panic!("unknown transport {other}"),
        };
        let (tx, rx) = mpsc::unbounded_channel::<(String, Value)>();
        let record = |kind: &'static str| {
            let tx = tx.clone();
            move |payload: Payload, _: Client| {
                let _ = tx.send((kind.to_owned(), first(payload)));
                async {}.boxed()
            }
        };
        let any = {
            let tx = tx.clone();
            move |event: Event, payload: Payload, _: Client| {
                let _ = tx.send((event.to_string(), first(payload)));
                async {}.boxed()
            }
        };
        let mut builder = ClientBuilder::new(url)
            .transport_type(transport)
            .reconnect(false)
            .reconnect_on_disconnect(false)
            .on(Event::Connect, record("connect"))
            .on(Event::Error, record("error"))
            .on(Event::Close, record("close"))
            .on_any(any);
        match cred {
            Cred::Auth(t) => builder = builder.auth(json!({ "token": t })),
            Cred::Header(t) => {
                builder = builder.opening_header("Authorization", format!("Bearer {t}"))
            }
            Cred::None => {}
        }
        let client = tokio::time::timeout(STEP, builder.connect())
            .await
            .map_err(|_| format!("{name}: Engine.IO connect timed out"))?
            .map_err(|e| format!("{name}: Engine.IO connect failed: {e}"))?;
        let mut peer = Peer {
            name,
            client,
            rx,
            seen: Vec::new(),
            closed_at: None,
        };
        let answer = peer
            .next_matching("connect or error", |(k, _)| k == "connect" || k == "error")
            .await;
        if answer.0 == "connect" {
            return Ok(peer);
        }
        let _ = tokio::time::timeout(STEP, peer.client.disconnect()).await;
        Err(connect_error_message(&answer.1)
            .unwrap_or_else(|| format!("not a CONNECT_ERROR: {}", answer.1)))
    }

    /// Receives events until one matches; panics after [`STEP`] naming what was seen.
    async fn next_matching(
        &mut self,
        what: &str,
        pred: impl Fn(&(String, Value)) -> bool,
    ) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    self.seen.push(ev.clone());
                    if pred(&ev) {
                        return ev;
                    }
                }
                Ok(None) => panic!("{}: event channel closed waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {STEP:?}; seen {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Waits until `done` holds for everything seen so far.
    async fn wait_until(&mut self, what: &str, done: impl Fn(&[(String, Value)]) -> bool) {
        while !done(&self.seen) {
            self.next_matching(what, |_| true).await;
        }
    }

    /// Events named `kind` seen so far.
    fn events(&self, kind: &str) -> Vec<Value> {
        events(&self.seen, kind)
    }

    /// Emits with an ACK and returns the ACK's first argument (panics after [`STEP`]).
    async fn call(&self, event: &str, data: Value) -> Value {
        let (tx, rx) = oneshot::channel::<Value>();
        let tx = Arc::new(Mutex::new(Some(tx)));
        let callback = move |payload: Payload, _: Client| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(first(payload));
            }
            async {}.boxed()
        };
        self.client
            .emit_with_ack(event, data, STEP, callback)
            .await
            .unwrap_or_else(|e| panic!("{}: emit {event}: {e}", self.name));
        let ack = tokio::time::timeout(STEP, rx)
            .await
            .unwrap_or_else(|_| panic!("{}: no ACK to {event} within {STEP:?}", self.name))
            .expect("ack callback dropped");
        // The ACK packet's data is the argument list: `[ { success, ... } ]`.
        match ack {
            Value::Array(mut args) if !args.is_empty() => args.swap_remove(0),
            other => other,
        }
    }

    /// Takes in what already arrived, then disconnects (remembering where: the crate reports an
    /// `EngineIO Error` to the `error` callback when its pending long-poll ends after its own
    /// disconnect, which is no event from the server).
    async fn disconnect(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.seen.push(ev);
        }
        self.closed_at = Some(self.seen.len());
        match tokio::time::timeout(STEP, self.client.disconnect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: disconnect: {e}", self.name),
            Err(_) => panic!("{}: disconnect timed out", self.name),
        }
    }
}

fn events(seen: &[(String, Value)], kind: &str) -> Vec<Value> {
    seen.iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, v)| v.clone())
        .collect()
}

/// The kinds (`online` / `offline`) of the presence events in `seen` about `user`, in order.
fn presence_of(seen: &[(String, Value)], user: &str) -> Vec<&'static str> {
    seen.iter()
        .filter_map(|(k, v)| match k.as_str() {
            "presence:online" if v["userId"] == user => Some("online"),
            "presence:offline" if v["userId"] == user => Some("offline"),
            _ => None,
        })
        .collect()
}

async fn run_interop(transport: &str) {
    let label = transport;
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    let b = Node::start(&redis, "b").await;
    let chat = format!("interop-rs-{label}");
    a.create_chat(&chat, &["alice", "bob"]).await;
    let (url_a, url_b) = (a.url(), b.url());
    let (tok_alice, tok_bob) = (token("alice"), token("bob"));

    // (1) A bad token, and no token at all, are refused at the handshake with UNAUTHORIZED.
    for (what, cred) in [
        ("bad auth.token", Cred::Auth("not-a-jwt")),
        ("bad Authorization header", Cred::Header("not-a-jwt")),
        ("no token", Cred::None),
    ] {
        match Peer::connect("refused", &url_a, cred, transport).await {
            Ok(mut p) => {
                p.disconnect().await;
                panic!("a client with {what} was connected");
            }
            Err(msg) => assert!(
                msg.starts_with("UNAUTHORIZED"),
                "{what}: connect_error message should start with UNAUTHORIZED, got {msg:?}"
            ),
        }
    }

    // (2) bob (Authorization header) on node A; once he is registered (his bulk-online came),
    // alice (auth.token): bob sees her come online, her bulk-online lists him.
    let mut bob = Peer::connect("bob", &url_a, Cred::Header(&tok_bob), transport)
        .await
        .expect("bob connects with the Authorization header");
    let bulk = bob
        .next_matching("presence:bulk-online", |(k, _)| k == "presence:bulk-online")
        .await;
    assert_eq!(bulk.1, json!({ "users": [] }), "bob's bulk-online");
    let mut alice = Peer::connect("alice", &url_a, Cred::Auth(&tok_alice), transport)
        .await
        .expect("alice connects with auth.token");
    let online = bob
        .next_matching("presence:online of alice", |(k, v)| {
            k == "presence:online" && v["userId"] == "alice"
        })
        .await;
    assert!(online.1["timestamp"].is_string(), "{online:?}");
    let bulk = alice
        .next_matching("presence:bulk-online", |(k, _)| k == "presence:bulk-online")
        .await;
    assert_eq!(bulk.1, json!({ "users": ["bob"] }), "alice's bulk-online");

    // (3) alice sends N messages without chat:join (the handshake joined both to the chat):
    // each is ACCEPTED, offsets consecutive.
    let mut acks: Vec<Value> = Vec::new();
    for i in 0..N {
        let cid = format!("interop-rs-{label}-{i}");
        let ack = alice
            .call(
                "chat:send",
                json!({ "chatId": chat, "content": format!("message {i}"), "clientMsgId": cid }),
            )
            .await;
        assert_eq!(ack["success"], true, "send #{i} ACK {ack}");
        assert_eq!(ack["status"], "ACCEPTED", "send #{i} ACK {ack}");
        assert_eq!(ack["clientMsgId"], cid.as_str(), "send #{i} ACK {ack}");
        let offset = ack["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("offset {ack}"));
        if let Some(prev) = acks.last() {
            assert_eq!(offset, prev["offset"].as_u64().unwrap() + 1, "send #{i}");
        }
        acks.push(ack);
    }

    // (4) Both receive the N chat:message events, in order, matching the ACKs.
    for peer in [&mut alice, &mut bob] {
        peer.wait_until(&format!("{N} chat:message events"), |seen| {
            events(seen, "chat:message").len() as u64 >= N
        })
        .await;
        for (i, (m, a)) in peer.events("chat:message").iter().zip(&acks).enumerate() {
            assert!(
                m["chatId"] == chat.as_str()
                    && m["senderId"] == "alice"
                    && m["content"] == format!("message {i}").as_str()
                    && m["offset"] == a["offset"]
                    && m["id"] == a["messageId"]
                    && m["epoch"] == a["epoch"],
                "{} message #{i} {m} does not match ACK {a}",
                peer.name
            );
        }
    }

    // (4b) chat:join answers its ACK (the socket already is in the room: nothing changes).
    for peer in [&alice, &bob] {
        let ack = peer.call("chat:join", json!({ "chatId": chat })).await;
        assert_eq!(
            ack,
            json!({ "success": true, "chatId": chat }),
            "{} chat:join ACK",
            peer.name
        );
    }

    // (5) An unknown event is answered with INVALID_EVENT.
    let ack = alice.call("interop:no-such-event", json!({ "x": 1 })).await;
    assert!(
        ack["success"] == false && ack["error"]["code"] == "INVALID_EVENT",
        "unknown event ACK {ack}"
    );

    // (6) bob disconnects: alice sees presence:offline, reason disconnected.
    let last_seen = bob
        .events("chat:message")
        .last()
        .cloned()
        .expect("bob's last");
    bob.disconnect().await;
    let off = alice
        .next_matching("presence:offline of bob", |(k, v)| {
            k == "presence:offline" && v["userId"] == "bob"
        })
        .await;
    assert_eq!(off.1["reason"], "disconnected", "{off:?}");

    // (7) alice sends LATE more while bob is away.
    for i in N..N + LATE {
        let ack = alice
            .call(
                "chat:send",
                json!({ "chatId": chat, "content": format!("message {i}") }),
            )
            .await;
        assert_eq!(ack["status"], "ACCEPTED", "late send ACK {ack}");
        assert_eq!(ack["clientMsgId"], Value::Null, "late send ACK {ack}");
        acks.push(ack);
    }

    // (8) bob reconnects to node B (auth.token): alice, on node A, sees him online again; his
    // chat:history since the last offset he saw is exactly what he missed.
    let mut bob2 = Peer::connect("bob@B", &url_b, Cred::Auth(&tok_bob), transport)
        .await
        .expect("bob reconnects to node B");
    let bulk = bob2
        .next_matching("presence:bulk-online", |(k, _)| k == "presence:bulk-online")
        .await;
    assert_eq!(bulk.1, json!({ "users": ["alice"] }), "bob@B's bulk-online");
    alice
        .wait_until("presence:online of bob after his offline", |seen| {
            let p = presence_of(seen, "bob");
            p.last() == Some(&"online") && p.contains(&"offline")
        })
        .await;
    let h = bob2
        .call(
            "chat:history",
            json!({ "chatId": chat, "since": last_seen["offset"], "epoch": last_seen["epoch"] }),
        )
        .await;
    assert_eq!(h["success"], true, "history {h}");
    assert_eq!(h["reset"], false, "history {h}");
    assert_eq!(h["offset"], acks.last().unwrap()["offset"], "history {h}");
    let got: Vec<(Value, Value, Value)> = h["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["offset"].clone(), m["content"].clone(), m["id"].clone()))
        .collect();
    let want: Vec<(Value, Value, Value)> = acks[N as usize..]
        .iter()
        .enumerate()
        .map(|(j, a)| {
            (
                a["offset"].clone(),
                json!(format!("message {}", N as usize + j)),
                a["messageId"].clone(),
            )
        })
        .collect();
    assert_eq!(got, want, "history since {}", last_seen["offset"]);

    // (9) A message sent on node A reaches bob on node B.
    let ack = alice
        .call(
            "chat:send",
            json!({ "chatId": chat, "content": "across nodes" }),
        )
        .await;
    assert_eq!(ack["status"], "ACCEPTED", "{ack}");
    let m = bob2
        .next_matching("chat:message across nodes", |(k, _)| k == "chat:message")
        .await;
    assert_eq!(m.1["offset"], ack["offset"], "{m:?}");
    assert_eq!(m.1["content"], "across nodes", "{m:?}");

    // (10) alice disconnects: bob, on node B, sees her go offline.
    alice.disconnect().await;
    let off = bob2
        .next_matching("presence:offline of alice", |(k, v)| {
            k == "presence:offline" && v["userId"] == "alice"
        })
        .await;
    assert_eq!(off.1["reason"], "disconnected", "{off:?}");

    // No stray events: no `error`, one presence event per transition (the one duplicate the
    // protocol allows is at connect time, Part II section 11 reading 19: a peer listed in
    // bulk-online may also arrive as presence:online right after).
    tokio::time::sleep(QUIET).await;
    for p in [&mut alice, &mut bob, &mut bob2] {
        while let Ok(ev) = p.rx.try_recv() {
            p.seen.push(ev);
        }
        let live = &p.seen[..p.closed_at.unwrap_or(p.seen.len())];
        assert!(
            events(live, "error").is_empty(),
            "{} saw {:?}",
            p.name,
            p.seen
        );
    }
    let mut seen = presence_of(&alice.seen, "bob");
    if seen.first() == Some(&"online") {
        seen.remove(0);
    }
    assert_eq!(seen, ["offline", "online"], "alice: {:?}", alice.seen);
    assert_eq!(
        presence_of(&bob.seen, "alice"),
        ["online"],
        "bob: {:?}",
        bob.seen
    );
    assert_eq!(
        presence_of(&bob2.seen, "alice"),
        ["offline"],
        "bob@B: {:?}",
        bob2.seen
    );
    assert_eq!(
        bob2.events("chat:message").len(),
        1,
        "bob@B: {:?}",
        bob2.seen
    );

    bob2.disconnect().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_socketio_client_works_over_websocket() {
    run_interop("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_socketio_client_works_over_polling() {
    run_interop("polling").await;
}
