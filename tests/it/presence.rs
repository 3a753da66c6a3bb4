//! Presence (docs/protocol.md §4): exactly one online per offline→online transition, exactly one
//! offline per online→offline transition at every peer socket, cluster-wide, kills included.

use std::time::{Duration, Instant};

use fanout_client::Client;
use serde_json::{Value, json};

use crate::harness::*;

const TTL: &str = "2";

fn short_ttl() -> NodeOpts {
    NodeOpts::default().with("presence-ttl-secs", TTL)
}

/// The presence events about `user` that arrive within `window`, as ("online"|"offline", reason).
async fn presence_events(c: &mut Client, user: &str, window: Duration) -> Vec<(String, Value)> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some((name, data)) = c.next_event(left).await else {
            break;
        };
        if (name == "presence:online" || name == "presence:offline") && data["userId"] == user {
            out.push((name, data));
        }
    }
    out
}

/// Waits for `event` about `user`, skipping everything else.
async fn wait_about(c: &mut Client, event: &str, user: &str, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let (name, data) = c.next_event(left).await?;
        if name == event && data["userId"] == user {
            return Some(data);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_other_nodes_see_online_and_bulk_lists_exactly_the_online_peers() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    a.create_chat("c1", &["alice", "bob", "dave"]).await;
    a.create_chat("other", &["carol", "erin"]).await;

    let mut bob = connect(&b.url(), "bob").await;
    let bulk = bob
        .wait_for("presence:bulk-online", WAIT)
        .await
        .expect("bulk for bob");
    assert_eq!(bulk, json!({"users": []}));
    let mut carol = connect(&b.url(), "carol").await;
    let dave = connect(&a.url(), "dave").await;
    let on = bob
        .wait_for("presence:online", WAIT)
        .await
        .expect("dave online");
    assert_eq!(on["userId"], "dave");
    assert!(on["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));

    let mut alice = connect(&a.url(), "alice").await;
    let bulk = alice
        .wait_for("presence:bulk-online", WAIT)
        .await
        .expect("bulk for alice");
    assert_eq!(
        bulk,
        json!({"users": ["bob", "dave"]}),
        "online peers only, never alice herself"
    );
    let on = bob
        .wait_for("presence:online", WAIT)
        .await
        .expect("alice online at bob");
    assert_eq!(on["userId"], "alice");
    // Non-peers and the user's own sockets hear nothing about alice.
    assert!(
        presence_events(&mut carol, "alice", QUIET).await.is_empty(),
        "non-peer got presence"
    );
    assert!(
        presence_events(&mut alice, "alice", QUIET).await.is_empty(),
        "own presence echoed"
    );

    let q = ack(
        &alice,
        "presence:query",
        json!({"userIds": ["bob", "dave", "carol", "nobody"]}),
    )
    .await;
    assert_eq!(q["success"], true);
    let mut online: Vec<String> = serde_json::from_value(q["online"].clone()).unwrap();
    online.sort();
    assert_eq!(
        online,
        ["bob", "dave"],
        "carol is online but not a peer: left out"
    );
    let bad = ack(&alice, "presence:query", json!({"userIds": "bob"})).await;
    assert_eq!(bad["error"]["code"], "INVALID_PAYLOAD");
    drop(dave);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_device_offline_fires_once_when_the_last_socket_closes() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let phone = connect(&a.url(), "alice").await;
    let laptop = connect(&b.url(), "alice").await;
    let evs = presence_events(&mut bob, "alice", Duration::from_millis(800)).await;
    assert_eq!(evs.len(), 1, "one online for two devices: {evs:?}");
    assert_eq!(evs[0].0, "presence:online");

    phone.close().await;
    assert!(
        presence_events(&mut bob, "alice", Duration::from_secs(1))
            .await
            .is_empty(),
        "closing one device emits nothing"
    );
    laptop.close().await;
    let evs = presence_events(&mut bob, "alice", Duration::from_secs(2)).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].0, "presence:offline");
    assert_eq!(evs[0].1["reason"], "disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_that_never_ping_stay_online_for_five_ttls() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    a.create_chat("c", &["alice", "bob"]).await;
    let _alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let evs = presence_events(&mut bob, "alice", Duration::from_secs(10)).await;
    assert!(
        evs.iter().all(|(n, _)| n == "presence:online"),
        "idle socket expired: {evs:?}"
    );
    let q = ack(&bob, "presence:query", json!({"userIds": ["alice"]})).await;
    assert_eq!(q["online"], json!(["alice"]));
    assert_eq!(
        ack(&bob, "presence:ping", json!(null)).await,
        json!({"success": true})
    );
}

async fn field_count(redis: &Redis, user: &str) -> usize {
    let mut c = redis.conn().await;
    redis::cmd("HLEN")
        .arg(format!("presence:user:{{{user}}}"))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_only_node_of_a_user_gives_exactly_one_expired_offline() {
    let redis = Redis::start().await;
    let mut doomed = NodeProcess::spawn(&redis, "doomed", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    let c = Node::start_with(&redis, "c", short_ttl()).await;
    b.create_chat("room", &["alice", "bob", "carol"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let mut carol = connect(&c.url(), "carol").await;
    let _alice = connect(&doomed.url(), "alice").await;
    for peer in [&mut bob, &mut carol] {
        wait_about(peer, "presence:online", "alice", WAIT)
            .await
            .expect("online");
    }
    let killed = Instant::now();
    doomed.kill9();
    let limit = Duration::from_secs(2 + 5);
    for peer in [&mut bob, &mut carol] {
        let ev = wait_about(peer, "presence:offline", "alice", limit)
            .await
            .expect("offline after kill -9");
        assert_eq!(ev["userId"], "alice");
        assert_eq!(ev["reason"], "expired");
        assert!(killed.elapsed() <= limit, "took {:?}", killed.elapsed());
    }
    for peer in [&mut bob, &mut carol] {
        assert!(
            presence_events(peer, "alice", Duration::from_secs(2))
                .await
                .is_empty(),
            "exactly one offline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_user_alive_elsewhere_emits_nothing_and_prunes_the_dead_field() {
    let redis = Redis::start().await;
    let mut doomed = NodeProcess::spawn(&redis, "doomed", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    b.create_chat("room", &["alice", "bob"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let _alice_dead = connect(&doomed.url(), "alice").await;
    let _alice_live = connect(&b.url(), "alice").await;
    bob.wait_for("presence:online", WAIT).await.expect("online");
    // Each socket registers right after its connect: wait for both fields.
    let every = Duration::from_millis(50);
    let both = eventually(WAIT, every, || field_count(&redis, "alice"), |&n| n == 2).await;
    assert_eq!(both, 2);
    doomed.kill9();
    let evs = presence_events(&mut bob, "alice", Duration::from_secs(5)).await;
    assert!(evs.is_empty(), "alice never went offline: {evs:?}");
    assert_eq!(
        field_count(&redis, "alice").await,
        1,
        "the dead node's field is gone within the TTL"
    );
}

/// The sockets `GET /api/v1/presence` shows for `user`.
async fn api_sockets(admin: std::net::SocketAddr, user: &str) -> Vec<Value> {
    let auth = format!("Bearer {API_KEY}");
    let path = format!("/api/v1/presence?users={user}");
    let (status, body) = http(admin, "GET", &path, None, Some(&auth))
        .await
        .expect("api reachable");
    assert_eq!(status, 200, "{body}");
    body["sockets"][user]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Issue 19: once the API no longer counts the dead node's socket, the disconnect script must
/// not count it either: the last live socket closing cleanly is `disconnected`, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_the_last_live_socket_closing_cleanly_gives_disconnected_at_once() {
    const TTL_SECS: u64 = 3;
    let redis = Redis::start().await;
    let opts = NodeOpts::default().with("presence-ttl-secs", &TTL_SECS.to_string());
    let mut doomed = NodeProcess::spawn(&redis, "doomed", opts.clone()).await;
    let live = NodeProcess::spawn(&redis, "live", opts).await;
    let admin = live.admin;
    let (status, _) = http(
        admin,
        "POST",
        "/api/v1/chats",
        Some(&json!({"chatId": "room", "members": ["alice", "bob"]}).to_string()),
        Some(&format!("Bearer {API_KEY}")),
    )
    .await
    .expect("api");
    assert_eq!(status, 201);
    let mut bob = connect(&live.url(), "bob").await;
    let _alice_dead = connect(&doomed.url(), "alice").await;
    let alice_live = connect(&live.url(), "alice").await;
    wait_about(&mut bob, "presence:online", "alice", WAIT)
        .await
        .expect("online");
    let every = Duration::from_millis(50);
    let both = eventually(
        WAIT,
        every,
        || api_sockets(admin, "alice"),
        |s| s.len() == 2,
    )
    .await;
    assert_eq!(both.len(), 2, "{both:?}");

    doomed.kill9();
    let killed = Instant::now();
    let limit = Duration::from_secs(TTL_SECS);
    let one = eventually(
        limit,
        every,
        || api_sockets(admin, "alice"),
        |s| s.len() == 1,
    )
    .await;
    assert_eq!(
        one.len(),
        1,
        "the dead socket stops counting within the TTL: {one:?}"
    );
    assert_eq!(one[0]["nodeId"], "live");
    let dropped_after = killed.elapsed();

    // At once: before the surviving node's next refresh can prune the dead field.
    let closed = Instant::now();
    alice_live.close().await;
    let off = wait_about(&mut bob, "presence:offline", "alice", WAIT)
        .await
        .expect("offline");
    let took = closed.elapsed();
    eprintln!(
        "issue 19: dead socket dropped from the API {dropped_after:?} after kill -9; \
         offline {} {took:?} after the clean close",
        off["reason"]
    );
    assert_eq!(off["reason"], "disconnected", "{off}");
    assert!(took < Duration::from_secs(1), "offline took {took:?}");
    let more = presence_events(&mut bob, "alice", Duration::from_secs(TTL_SECS + 2)).await;
    assert!(more.is_empty(), "exactly one offline: {more:?}");
    let q = ack(&bob, "presence:query", json!({"userIds": ["alice"]})).await;
    assert_eq!(q["online"], json!([]));
}

/// `CONFIG SET notify-keyspace-events <flags>` on every master: `""` silences the keyspace
/// notifications the expiry listeners wait for, `"Ex"` is what the harness starts with.
async fn set_notifications(redis: &Redis, flags: &str) {
    let _: Vec<(u16, ())> = redis
        .on_every_master(
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(flags),
        )
        .await;
}

/// Alice on a node process of her own (to be killed), bob on node b seeing her online, in a chat
/// of the two; expiry notifications then turned off on every master (each one notifies only of
/// its own keys), so that nobody hears alice's key expire and only the sweep can find it.
/// Returns alice's client too: dropped, it would close her socket cleanly (`disconnected`).
async fn alice_doomed_and_unheard(redis: &Redis) -> (NodeProcess, Node, Client, Client) {
    let doomed = NodeProcess::spawn(redis, "doomed", short_ttl()).await;
    let b = Node::start_with(redis, "b", short_ttl()).await;
    b.create_chat("room", &["alice", "bob"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let alice = connect(&doomed.url(), "alice").await;
    wait_about(&mut bob, "presence:online", "alice", WAIT)
        .await
        .expect("online");
    set_notifications(redis, "").await;
    (doomed, b, bob, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_still_yields_exactly_one_offline_through_the_sweep() {
    let redis = Redis::start().await;
    let (mut doomed, _b, mut bob, _alice) = alice_doomed_and_unheard(&redis).await;
    doomed.kill9();
    let ev = bob
        .wait_for("presence:offline", Duration::from_secs(2 + 5))
        .await
        .expect("sweep emitted offline");
    assert_eq!(ev["userId"], "alice");
    assert_eq!(ev["reason"], "expired");
    assert!(
        presence_events(&mut bob, "alice", Duration::from_secs(2))
            .await
            .is_empty(),
        "exactly one"
    );
}

/// A claimer that dies (or whose publish fails) between claiming a user's expiry and publishing
/// the offline leaves the user offline in Redis and the sweep deadline in place: the sweep
/// publishes that offline version (docs/architecture.md section 5, Sweep). The claimer is played
/// by writing what `presence_claim.lua` writes (version + 1) after alice's only node died; her
/// key is then made to expire with notifications back on, so that node b's listener, a losing
/// claimer, sees it first: it must leave the deadline to the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_claimed_but_never_published_reaches_the_peers_through_the_sweep() {
    let redis = Redis::start().await;
    let (mut doomed, _b, mut bob, _alice) = alice_doomed_and_unheard(&redis).await;
    doomed.kill9();
    let mut c = redis.conn().await;
    let version: u64 = redis::cmd("GET")
        .arg("presence:state:{alice}")
        .query_async(&mut c)
        .await
        .expect("alice's version");
    assert_eq!(version % 2, 1, "online at an odd version");
    let _: () = redis::cmd("SET")
        .arg("presence:state:{alice}")
        .arg(version + 1)
        .arg("EX")
        .arg(600)
        .query_async(&mut c)
        .await
        .expect("SET");
    set_notifications(&redis, "Ex").await;
    let _: () = redis::cmd("PEXPIRE")
        .arg("presence:user:{alice}")
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("PEXPIRE");
    let ev = wait_about(
        &mut bob,
        "presence:offline",
        "alice",
        Duration::from_secs(2 + 5),
    )
    .await
    .expect("the sweep published the offline nobody had");
    assert_eq!(ev["reason"], "expired", "{ev}");
    assert!(
        presence_events(&mut bob, "alice", Duration::from_secs(3))
            .await
            .is_empty(),
        "exactly one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_who_start_sharing_a_chat_learn_each_others_state() {
    let redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    a.create_chat("x", &["alice", "erin"]).await;
    a.create_chat("y", &["bob", "erin"]).await;
    let mut alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let mut erin = connect(&b.url(), "erin").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while erin.next_event(Duration::from_millis(50)).await.is_some() {}
    let (status, _) = a
        .api(
            "PUT",
            "/api/v1/chats/x/members",
            Some(json!({"userIds": ["bob"]})),
        )
        .await;
    assert_eq!(status, 200);
    wait_about(&mut alice, "presence:online", "bob", WAIT)
        .await
        .expect("alice learns bob");
    wait_about(&mut bob, "presence:online", "alice", WAIT)
        .await
        .expect("bob learns alice");
    // erin already shared a chat with bob: no repeated online.
    assert!(presence_events(&mut erin, "bob", QUIET).await.is_empty());

    // Two users who meet in a new chat hear of each other once, not once per side.
    let mut carol = connect(&a.url(), "carol").await;
    let mut dave = connect(&b.url(), "dave").await;
    // Let their own connect transitions settle first: a membership change racing a connect can
    // announce the user twice (a documented defect, docs/protocol.md section 12).
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.create_chat("z", &["carol", "dave"]).await;
    let about_dave = presence_events(&mut carol, "dave", Duration::from_secs(1)).await;
    let about_carol = presence_events(&mut dave, "carol", Duration::from_secs(1)).await;
    assert_eq!(about_dave.len(), 1, "{about_dave:?}");
    assert_eq!(about_carol.len(), 1, "{about_carol:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_re_registers_without_false_pairs() {
    let mut redis = Redis::start().await;
    let a = Node::start_with(&redis, "a", short_ttl()).await;
    let b = Node::start_with(&redis, "b", short_ttl()).await;
    a.create_chat("c", &["alice", "bob"]).await;
    let mut bob = connect(&b.url(), "bob").await;
    let _alice = connect(&a.url(), "alice").await;
    bob.wait_for("presence:online", WAIT).await.expect("online");
    redis.restart().await;
    a.create_chat_when_ready("c", &["alice", "bob"]).await;
    let evs = presence_events(&mut bob, "alice", Duration::from_secs(5)).await;
    let offline: Vec<_> = evs
        .iter()
        .filter(|(n, _)| n == "presence:offline")
        .collect();
    assert!(
        offline.is_empty(),
        "false offline after a Redis restart: {evs:?}"
    );
    assert_eq!(field_count(&redis, "alice").await, 1, "re-registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_200_users_on_3_nodes_ends_with_every_view_true_and_no_repeated_event() {
    use std::collections::HashMap;
    use std::sync::Arc;

    const USERS: usize = 200;
    const ROOM: usize = 10;
    const CHURN: Duration = Duration::from_secs(20);
    let redis = Redis::start().await;
    let nodes = Arc::new(vec![
        Node::start_with(&redis, "a", short_ttl()).await,
        Node::start_with(&redis, "b", short_ttl()).await,
        Node::start_with(&redis, "c", short_ttl()).await,
    ]);
    let rooms = USERS / ROOM;
    let mut observers = Vec::new();
    for r in 0..rooms {
        let mut members: Vec<String> = (0..ROOM).map(|i| format!("u{}", r * ROOM + i)).collect();
        members.push(format!("obs{r}"));
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        nodes[0].create_chat(&format!("room{r}"), &refs).await;
        observers.push(connect(&nodes[r % 3].url(), &format!("obs{r}")).await);
    }
    // Each observer's view: its bulk-online baseline, then every event in order.
    let mut watchers = Vec::new();
    for (r, mut obs) in observers.into_iter().enumerate() {
        watchers.push(tokio::spawn(async move {
            let bulk = obs
                .wait_for("presence:bulk-online", WAIT)
                .await
                .expect("bulk");
            let mut seen: HashMap<String, Vec<String>> = HashMap::new();
            for u in bulk["users"].as_array().unwrap() {
                seen.entry(u.as_str().unwrap().to_owned())
                    .or_default()
                    .push("presence:online".into());
            }
            let end = Instant::now() + CHURN + Duration::from_secs(10);
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                let Some((name, data)) = obs.next_event(left).await else {
                    break;
                };
                if name.starts_with("presence:") && name != "presence:bulk-online" {
                    let user = data["userId"].as_str().unwrap().to_owned();
                    seen.entry(user).or_default().push(name);
                }
            }
            (r, seen)
        }));
    }
    // Churn: every user toggles between connected and not, on a random node, at random times.
    let mut churners = Vec::new();
    for u in 0..USERS {
        let nodes = nodes.clone();
        churners.push(tokio::spawn(async move {
            let mut rng = (u as u64)
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut next = move |n: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % n
            };
            let start = Instant::now();
            let mut socket: Option<Client> = None;
            while start.elapsed() < CHURN {
                tokio::time::sleep(Duration::from_millis(300 + next(1200))).await;
                socket = match socket.take() {
                    Some(c) => {
                        c.close().await;
                        None
                    }
                    None => {
                        let node = &nodes[next(3) as usize];
                        Some(connect(&node.url(), &format!("u{u}")).await)
                    }
                };
            }
            (u, socket)
        }));
    }
    let mut online = std::collections::HashSet::new();
    let mut keep = Vec::new();
    for c in churners {
        let (u, socket) = c.await.expect("churner");
        if let Some(s) = socket {
            online.insert(format!("u{u}"));
            keep.push(s);
        }
    }
    for w in watchers {
        let (r, seen) = w.await.expect("watcher");
        for i in 0..ROOM {
            let user = format!("u{}", r * ROOM + i);
            let events = seen.get(&user).cloned().unwrap_or_default();
            for pair in events.windows(2) {
                assert_ne!(
                    pair[0], pair[1],
                    "obs{r} saw {user} twice in a row: {events:?}"
                );
            }
            let final_online = events.last().is_some_and(|e| e == "presence:online");
            assert_eq!(
                final_online,
                online.contains(&user),
                "obs{r}'s view of {user}: {events:?}"
            );
        }
    }
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_config_set_keeps_the_node_unready() {
    // Notifications off, and CONFIG disabled as managed Redis services often do.
    let redis = Redis::start_with(&[
        "--notify-keyspace-events",
        "",
        "--rename-command",
        "CONFIG",
        "",
    ])
    .await;
    let node = Node::start_unready(&redis, "a").await;
    let readyz = || async {
        http(node.public, "GET", "/readyz", None, None)
            .await
            .expect("readyz")
    };
    let reading = |r: &(u16, Value)| r.1["backplaneReader"] == true;
    let every = Duration::from_millis(100);
    let last = eventually(Duration::from_secs(2), every, readyz, reading).await;
    assert_eq!(last.0, 503, "{}", last.1);
    assert_eq!(last.1["keyspaceNotifications"], false, "{}", last.1);
    assert_eq!(last.1["redis"], true);
}

/// `fanout_presence_caught_up_total` of a node process.
async fn caught_up(node: &NodeProcess) -> f64 {
    let (status, body) = http_raw(node.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("/metrics reachable");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("fanout_presence_caught_up_total "))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Closes `node`'s subscriber connection (`CLIENT KILL`): until it reconnects (its backoff,
/// 50 ms at least) nothing published reaches that node.
async fn kill_subscriber(redis: &Redis, node: &str) {
    let name = format!(" name=fanout-sub:{node} ");
    let mut killed = 0;
    for (port, list) in redis
        .on_every_master::<String>(redis::cmd("CLIENT").arg("LIST"))
        .await
    {
        for id in list
            .lines()
            .filter(|l| l.contains(&name))
            .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("id=")))
        {
            let n: u64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut server_conn(port).await)
                .await
                .expect("client kill");
            killed += n;
        }
    }
    assert!(killed >= 1, "no subscriber of {node} to kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_published_while_a_nodes_subscriber_was_down_reach_its_sockets_once() {
    if crate::skip::skip_on_redis(
        "presence::transitions_published_while_a_nodes_subscriber_was_down_reach_its_sockets_once",
        &[RedisKind::Cluster],
        "redis-rs reconnects a killed master connection of the cluster subscriber at once, so \
         the test cannot hold open the window in which a transition is lost (after a failover \
         the catch-up runs at the subscriber's resyncs)",
    ) {
        return;
    }
    let redis = Redis::start().await;
    let a = Node::start(&redis, "a").await;
    // A process, so its /metrics counts its own catch-ups.
    let b = NodeProcess::spawn(&redis, "b", NodeOpts::default()).await;
    a.create_chat_when_ready("gap", &["alice", "bob"]).await;
    // Alice first: bob learns she is online from presence:bulk-online, not from a transition.
    let alice = connect(&a.url(), "alice").await;
    let mut bob = connect(&b.url(), "bob").await;
    let bulk = bob
        .wait_for("presence:bulk-online", WAIT)
        .await
        .expect("bulk-online");
    assert_eq!(bulk["users"], json!(["alice"]));
    assert_eq!(caught_up(&b).await, 0.0);

    // Her offline is published while b cannot hear it.
    kill_subscriber(&redis, "b").await;
    alice.close().await;
    let off = wait_about(&mut bob, "presence:offline", "alice", WAIT)
        .await
        .expect("the missed offline, from the catch-up");
    assert_eq!(off["reason"], "expired", "a caught-up offline: {off}");
    assert_eq!(
        caught_up(&b).await,
        1.0,
        "shown by the catch-up, not by its frame"
    );

    // And her online, the same way.
    kill_subscriber(&redis, "b").await;
    let _alice = connect(&a.url(), "alice").await;
    wait_about(&mut bob, "presence:online", "alice", WAIT)
        .await
        .expect("the missed online, from the catch-up");
    assert_eq!(caught_up(&b).await, 2.0);

    // Exactly once: a later reconnect of the subscriber shows nothing again.
    kill_subscriber(&redis, "b").await;
    let more = presence_events(&mut bob, "alice", Duration::from_secs(2)).await;
    assert!(more.is_empty(), "shown once: {more:?}");
    assert_eq!(caught_up(&b).await, 2.0);
}
