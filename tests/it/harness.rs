//! Test harness: private `redis-server` processes on free ports, fanout nodes in-process (or as
//! processes of the built binary), tokens, Socket.IO clients and a tiny HTTP client. Everything
//! it starts is killed when its handle drops.
//!
//! [`Redis`] is one redis-server, or with `FANOUT_TEST_REDIS=cluster` a Redis Cluster and with
//! `FANOUT_TEST_REDIS=sentinel` a Sentinel setup (`redis_topology`), and the nodes are pointed
//! at it accordingly: a test that reaches Redis only through [`Redis`]'s methods runs on all
//! three (`make test-redis-modes`).

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fanout::{Config, Listeners};

use crate::redis_topology::{RedisCluster, RedisSentinel, role};
use fanout_client::{Client, ConnectOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The JWT secret every test node uses.
pub const SECRET: &str = "test-secret";
/// The API key every test node uses.
pub const API_KEY: &str = "test-api-key";
/// Default wait for an event that should arrive.
pub const WAIT: Duration = Duration::from_secs(5);
/// Window in which an event that should NOT arrive is watched for.
pub const QUIET: Duration = Duration::from_millis(600);

/// A free port below the kernel's ephemeral range: a port from that range (what binding port 0
/// gives) can be taken, while its server is down, as the local port of some outgoing connection,
/// and a restarted Redis or node could then not listen on it again (seen in the chaos test's
/// reconnect storm, 20 000 connections from 127.0.0.1).
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, span) = (10_000u16, low.saturating_sub(10_000).max(1000));
    for _ in 0..10_000 {
        let port = from + (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Calls `probe` every `every` until `done` holds for what it returns or `limit` has passed, and
/// returns the last value either way: the caller asserts on it, so a failure shows what was seen.
pub async fn eventually<T, F, Fut>(
    limit: Duration,
    every: Duration,
    mut probe: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = probe().await;
        if done(&value) || tokio::time::Instant::now() + every > deadline {
            return value;
        }
        tokio::time::sleep(every).await;
    }
}

/// Which Redis the tests run against: `FANOUT_TEST_REDIS` = `single` (or unset: one
/// redis-server), `cluster` (a Redis Cluster of 6 servers, 3 masters) or `sentinel` (a master, a
/// replica and 3 sentinels). Read once per test process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisKind {
    /// One redis-server; nodes get `--redis-url`.
    Single,
    /// [`RedisCluster`]; nodes get `--redis-cluster-nodes`.
    Cluster,
    /// [`RedisSentinel`]; nodes get `--redis-sentinels` and `--redis-sentinel-master`.
    Sentinel,
}

impl RedisKind {
    /// The kind `FANOUT_TEST_REDIS` selects; any other value than the three names panics (a
    /// typo must not quietly run the single-server suite).
    pub fn from_env() -> RedisKind {
        static KIND: std::sync::OnceLock<RedisKind> = std::sync::OnceLock::new();
        *KIND.get_or_init(|| {
            let value = std::env::var("FANOUT_TEST_REDIS").unwrap_or_default();
            match value.trim() {
                "" | "single" => RedisKind::Single,
                "cluster" => RedisKind::Cluster,
                "sentinel" => RedisKind::Sentinel,
                other => panic!("FANOUT_TEST_REDIS={other:?}: single, cluster or sentinel"),
            }
        })
    }

    /// `single`, `cluster` or `sentinel`, as `FANOUT_TEST_REDIS` spells it.
    pub fn name(self) -> &'static str {
        match self {
            RedisKind::Single => "single",
            RedisKind::Cluster => "cluster",
            RedisKind::Sentinel => "sentinel",
        }
    }

    /// How long a node may take to become ready on this kind: a node on a cluster or a
    /// sentinel setup first discovers the topology (slot map, current master), and runs on a
    /// machine busy with 6 or 5 more Redis processes per test.
    fn ready_limit(self, single: Duration) -> Duration {
        match self {
            RedisKind::Single => single,
            RedisKind::Cluster | RedisKind::Sentinel => single * 3,
        }
    }
}

/// The test's Redis, of the kind [`RedisKind::from_env`] selects, killed on drop. Tests reach
/// it only through this type (nodes through [`Self::node_args`], assertions through
/// [`Self::conn`] and the per-master helpers), so that they run unchanged on every kind.
pub struct Redis {
    backend: Backend,
}

enum Backend {
    Single(SingleRedis),
    Cluster(RedisCluster),
    Sentinel(RedisSentinel),
}

/// A private redis-server on a free port.
struct SingleRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl SingleRedis {
    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--notify-keyspace-events",
                "Ex",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (make test installs it)");
        self.child = Some(child);
        let every = Duration::from_millis(25);
        let up = eventually(Duration::from_secs(5), every, || self.ping(), |&up| up).await;
        assert!(up, "redis-server did not start on port {}", self.port);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut c) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

impl Redis {
    /// Starts the Redis of the selected kind with keyspace notifications on and no persistence.
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// Starts it with extra arguments for every data server after the harness's own (later ones
    /// win); on a cluster or a sentinel setup every master and replica gets them.
    pub async fn start_with(extra: &[&str]) -> Redis {
        let backend = match RedisKind::from_env() {
            RedisKind::Single => {
                let mut single = SingleRedis {
                    port: free_port(),
                    dir: tempfile::tempdir().expect("tempdir"),
                    child: None,
                    extra: extra.iter().map(|s| s.to_string()).collect(),
                };
                single.spawn().await;
                Backend::Single(single)
            }
            RedisKind::Cluster => Backend::Cluster(RedisCluster::start_with(extra).await),
            RedisKind::Sentinel => Backend::Sentinel(RedisSentinel::start_with(extra).await),
        };
        Redis { backend }
    }

    /// Which kind this is.
    pub fn kind(&self) -> RedisKind {
        match self.backend {
            Backend::Single(_) => RedisKind::Single,
            Backend::Cluster(_) => RedisKind::Cluster,
            Backend::Sentinel(_) => RedisKind::Sentinel,
        }
    }

    /// The port of the one redis-server. Only for tests that are about one server (they skip
    /// the other kinds first, `skip::skip_on_redis`): panics on a cluster or a sentinel setup.
    pub fn port(&self) -> u16 {
        match &self.backend {
            Backend::Single(s) => s.port,
            _ => self.not_single("port"),
        }
    }

    /// `redis://127.0.0.1:<port>` of the one redis-server. Like [`Self::port`], only for
    /// tests about one server: panics on a cluster or a sentinel setup, where no one URL
    /// reaches all data ([`Self::node_args`], [`Self::conn`] and [`Self::master_ports`] do).
    pub fn url(&self) -> String {
        match &self.backend {
            Backend::Single(s) => s.url(),
            _ => self.not_single("url"),
        }
    }

    fn not_single(&self, what: &str) -> ! {
        panic!(
            "Redis::{what}: there is no one Redis server with FANOUT_TEST_REDIS={}; this test \
             must use node_args()/conn()/master_ports(), or skip this kind \
             (skip::skip_on_redis)",
            self.kind().name()
        )
    }

    /// The URL of the one server holding all data now, for a client that speaks to one
    /// server (the example service): the one redis-server, or the master the sentinels name;
    /// `None` on a cluster, whose data is spread over 3 masters.
    pub async fn one_server_url(&self) -> Option<String> {
        match &self.backend {
            Backend::Single(s) => Some(s.url()),
            Backend::Cluster(_) => None,
            Backend::Sentinel(s) => Some(format!(
                "redis://127.0.0.1:{}",
                s.current_master()
                    .await
                    .expect("the sentinels name a master")
            )),
        }
    }

    /// The node flags that point a node at this Redis: `--redis-url`, `--redis-cluster-nodes`
    /// (every server as a seed) or `--redis-sentinels` with `--redis-sentinel-master`. They
    /// stay valid across [`Self::restart`] (same ports, same master name).
    pub fn node_args(&self) -> Vec<String> {
        match &self.backend {
            Backend::Single(s) => single_redis_args(&s.url()),
            Backend::Cluster(c) => vec!["--redis-cluster-nodes".to_owned(), c.seeds()],
            Backend::Sentinel(s) => s.node_args(),
        }
    }

    /// The node library's own handle on this Redis, built as a node builds it from
    /// [`Self::node_args`]: for tests of library parts (a `ChatStore`) without a node.
    pub fn node_handle(&self) -> fanout::redis::Redis {
        let mut args: Vec<String> = ["fanout", "--api-key", API_KEY, "--jwt-secret", SECRET]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(self.node_args());
        let settings = Config::try_from_args(args)
            .expect("config")
            .redis()
            .expect("redis settings");
        fanout::redis::Redis::new(&settings).expect("redis handle")
    }

    /// A fresh connection for assertions that works on every kind: to the one server, a
    /// cluster connection that routes each keyed command to its slot's master (so one test
    /// may use keys of different slots), or to the master the sentinels name now. For
    /// commands about a server rather than a key (`CLIENT`, `CONFIG`, `PUBSUB`, `DEBUG`) use
    /// [`Self::on_every_master`] or [`Self::master_port_of`] with [`server_conn`]: a cluster
    /// connection sends a keyless command to whichever node it picks.
    pub async fn conn(&self) -> TestConn {
        match &self.backend {
            Backend::Single(s) => TestConn::Server(
                redis::Client::open(s.url())
                    .expect("url")
                    .get_multiplexed_async_connection()
                    .await
                    .expect("redis connection"),
            ),
            Backend::Cluster(c) => {
                let seeds: Vec<String> = c
                    .live_ports()
                    .iter()
                    .map(|p| format!("redis://127.0.0.1:{p}"))
                    .collect();
                let client = redis::cluster::ClusterClient::new(seeds).expect("cluster client");
                TestConn::Cluster(
                    client
                        .get_async_connection()
                        .await
                        .expect("redis cluster connection"),
                )
            }
            Backend::Sentinel(_) => {
                let port = self.master_ports().await[0];
                TestConn::Server(server_conn(port).await)
            }
        }
    }

    /// Ports of the masters now: the one server, the 3 masters serving slots (read from the
    /// cluster, so after a failover the promoted replica), or the master the sentinels name.
    pub async fn master_ports(&self) -> Vec<u16> {
        match &self.backend {
            Backend::Single(s) => vec![s.port],
            Backend::Cluster(c) => {
                let masters: Vec<u16> = c.masters().await.iter().map(|m| m.port).collect();
                assert!(!masters.is_empty(), "no cluster master answers");
                masters
            }
            Backend::Sentinel(s) => {
                vec![
                    s.current_master()
                        .await
                        .expect("the sentinels name a master"),
                ]
            }
        }
    }

    /// The port of the master serving `key` now (of its `{hash tag}`'s slot on a cluster; the
    /// one master otherwise). Channels hash like keys (`SSUBSCRIBE`).
    pub async fn master_port_of(&self, key: &str) -> u16 {
        match &self.backend {
            Backend::Cluster(c) => {
                let slot = fanout::redis::slot_of(key.as_bytes());
                c.master_of_slot(slot)
                    .await
                    .unwrap_or_else(|| panic!("no master serves slot {slot} of {key}"))
                    .port
            }
            _ => self.master_ports().await[0],
        }
    }

    /// Runs `cmd` on every master ([`Self::master_ports`]) and returns each one's answer with
    /// its port; panics naming the master that failed.
    pub async fn on_every_master<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Vec<(u16, T)> {
        let mut out = Vec::new();
        for port in self.master_ports().await {
            let mut c = server_conn(port).await;
            let v: T = cmd
                .query_async(&mut c)
                .await
                .unwrap_or_else(|e| panic!("master {port}: {e}"));
            out.push((port, v));
        }
        out
    }

    /// Kills every Redis process (their data is lost: no persistence).
    pub fn stop(&mut self) {
        match &mut self.backend {
            Backend::Single(s) => s.stop(),
            Backend::Cluster(c) => c.stop(),
            Backend::Sentinel(s) => s.stop(),
        }
    }

    /// Ports of the data servers running (masters and replicas).
    fn server_ports(&self) -> Vec<u16> {
        match &self.backend {
            Backend::Single(s) => s.child.iter().map(|_| s.port).collect(),
            Backend::Cluster(c) => c.live_ports(),
            Backend::Sentinel(s) => s.server_ports(),
        }
    }

    /// Stalls every master for `secs` seconds (`DEBUG SLEEP`, all at once; start it with
    /// `--enable-debug-command yes`): the returned task ends when every one answers again.
    /// On a sentinel setup (down after 1 s) a stall of more than a second ends in a failover;
    /// on a cluster no replica can be elected while every master sleeps.
    pub fn stall(&self, secs: u64) -> tokio::task::JoinHandle<()> {
        let single = matches!(self.backend, Backend::Single(_));
        let servers = self.server_ports();
        tokio::spawn(async move {
            let mut sleeps = Vec::new();
            for port in servers {
                // Which servers are masters is asked at the stall (a failover may have moved
                // it); the one server needs no asking.
                if single || role(port).await.as_deref() == Some("master") {
                    sleeps.push(debug_sleep(port, secs));
                }
            }
            futures_util::future::join_all(sleeps).await;
        })
    }

    /// Starts it again, empty, on the same ports (a cluster is created anew; the sentinels
    /// name the same master again): the same [`Self::node_args`] reach it.
    pub async fn restart(&mut self) {
        match &mut self.backend {
            Backend::Single(s) => {
                s.stop();
                s.spawn().await;
            }
            Backend::Cluster(c) => c.restart().await,
            Backend::Sentinel(s) => s.restart().await,
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // The cluster and the sentinel setup kill their processes on their own drop.
        if let Backend::Single(s) = &mut self.backend {
            s.stop();
        }
    }
}

/// `DEBUG SLEEP secs` on one server, answered when it wakes (the response timeout outlasts
/// the sleep: the default 500 ms would end the wait long before).
async fn debug_sleep(port: u16, secs: u64) {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(secs + 5)));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("redis connection");
    let _: redis::RedisResult<()> = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(secs)
        .query_async(&mut c)
        .await;
}

/// A connection to the one data server on `port` (a master of [`Redis::master_ports`]), for
/// commands about that server.
pub async fn server_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("redis connection to {port}: {e}"))
}

/// What [`Redis::conn`] returns: a connection to one server, or a cluster connection.
#[derive(Clone)]
pub enum TestConn {
    /// The one redis-server, or the sentinel setup's master.
    Server(redis::aio::MultiplexedConnection),
    /// The cluster, routed by slot.
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for TestConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            TestConn::Server(c) => c.req_packed_command(cmd),
            TestConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            TestConn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            TestConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            TestConn::Server(c) => c.get_db(),
            TestConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Per-node settings a test may change.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    pub extra: Vec<(String, String)>,
    /// Leave out the harness's HS256 secret (a key file or key set in `extra` instead).
    pub no_secret: bool,
}

impl NodeOpts {
    pub fn with(mut self, flag: &str, value: &str) -> Self {
        self.extra.push((flag.to_owned(), value.to_owned()));
        self
    }

    /// Without the harness's HS256 secret.
    pub fn without_secret(mut self) -> Self {
        self.no_secret = true;
        self
    }
}

/// The Redis flags of a node on the harness's single Redis at `url`.
pub fn single_redis_args(url: &str) -> Vec<String> {
    vec!["--redis-url".to_owned(), url.to_owned()]
}

/// The command line of a node (`fanout` first): its Redis flags, the harness's secret and API
/// key, `node_id`, its ports and the options' flags.
pub fn config_args(
    redis_args: &[String],
    node_id: &str,
    port: u16,
    admin: u16,
    opts: &NodeOpts,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["fanout".to_owned()];
    args.extend(redis_args.iter().cloned());
    args.extend(
        [
            "--bind-addr",
            "127.0.0.1",
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--node-id",
            node_id,
            "--port",
            &port.to_string(),
            "--admin-port",
            &admin.to_string(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if opts.no_secret {
        args.retain(|a| a != "--jwt-secret" && a != SECRET);
    }
    for (k, v) in &opts.extra {
        args.push(format!("--{k}"));
        args.push(v.clone());
    }
    args
}

/// A fanout node running inside the test's runtime.
pub struct Node {
    pub id: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), fanout::RunError>>>,
}

impl Node {
    /// Starts a node on free ports and waits until it is ready.
    pub async fn start(redis: &Redis, id: &str) -> Node {
        Self::start_with(redis, id, NodeOpts::default()).await
    }

    /// Starts a node with extra flags (`("history-maxlen", "5")`).
    pub async fn start_with(redis: &Redis, id: &str, opts: NodeOpts) -> Node {
        let node = Self::start_unready_with(redis, id, opts).await;
        node.wait_ready().await;
        node
    }

    /// Starts a node without waiting for readiness (for nodes that must not become ready).
    pub async fn start_unready(redis: &Redis, id: &str) -> Node {
        Self::start_unready_with(redis, id, NodeOpts::default()).await
    }

    /// Starts a node with extra flags without waiting for readiness.
    pub async fn start_unready_with(redis: &Redis, id: &str, opts: NodeOpts) -> Node {
        Self::start_on_redis(&redis.node_args(), id, opts).await
    }

    /// Starts a node with the given Redis flags (`--redis-cluster-nodes ...`, `--redis-sentinels
    /// ... --redis-sentinel-master ...`) without waiting for readiness.
    pub async fn start_on_redis(redis_args: &[String], id: &str, opts: NodeOpts) -> Node {
        init_logs();
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let (pa, aa) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
        let args = config_args(redis_args, id, pa.port(), aa.port(), &opts);
        let config = Config::try_from_args(args).expect("test config");
        let stop = CancellationToken::new();
        let task = tokio::spawn(fanout::run(
            config,
            Listeners { public, admin },
            stop.clone(),
        ));
        Node {
            id: id.to_owned(),
            public: pa,
            admin: aa,
            stop,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<public port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub async fn wait_ready(&self) {
        let limit = RedisKind::from_env().ready_limit(Duration::from_secs(5));
        assert!(
            ready_within(self.public, limit).await,
            "node {} never became ready",
            self.id
        );
    }

    /// Stops the node and waits for it to finish.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(15), t).await;
            assert!(r.is_ok(), "node {} did not stop", self.id);
        }
    }

    /// Internal API call with the right key.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {API_KEY}");
        http(
            self.admin,
            method,
            path,
            body.map(|b| b.to_string()).as_deref(),
            Some(&auth),
        )
        .await
        .expect("api reachable")
    }

    /// Creates a chat, retrying while the node reconnects to a restarted Redis (503).
    pub async fn create_chat_when_ready(&self, chat_id: &str, members: &[&str]) {
        let body = json!({ "chatId": chat_id, "members": members });
        let create = || async {
            self.api("POST", "/api/v1/chats", Some(body.clone()))
                .await
                .0
        };
        let every = Duration::from_millis(100);
        let status = eventually(Duration::from_secs(10), every, create, |&s| s == 201).await;
        assert_eq!(
            status, 201,
            "chat {chat_id} could not be created within 10 s"
        );
    }

    /// Creates a chat with members through the API.
    pub async fn create_chat(&self, chat_id: &str, members: &[&str]) {
        let (status, body) = self
            .api(
                "POST",
                "/api/v1/chats",
                Some(json!({ "chatId": chat_id, "members": members })),
            )
            .await;
        assert_eq!(status, 201, "create chat: {body}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A fanout node as a separate OS process of the built binary (for kill -9 tests).
pub struct NodeProcess {
    pub id: String,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
}

impl NodeProcess {
    pub async fn spawn(redis: &Redis, id: &str, opts: NodeOpts) -> NodeProcess {
        Self::spawn_on(redis, id, opts, free_port(), free_port()).await
    }

    /// Starts a node process on the given ports (to restart a node where a load balancer
    /// expects it) and waits until it is ready.
    pub async fn spawn_on(
        redis: &Redis,
        id: &str,
        opts: NodeOpts,
        port: u16,
        admin: u16,
    ) -> NodeProcess {
        Self::spawn_with_redis_args(&redis.node_args(), id, opts, port, admin).await
    }

    /// Starts a node process with the given Redis flags (`--redis-cluster-nodes ...`,
    /// `--redis-sentinels ... --redis-sentinel-master ...`) on the given ports and waits until
    /// it is ready.
    pub async fn spawn_with_redis_args(
        redis_args: &[String],
        id: &str,
        opts: NodeOpts,
        port: u16,
        admin: u16,
    ) -> NodeProcess {
        let args = config_args(redis_args, id, port, admin, &opts);
        // The node logs to stdout: dropped, unless FANOUT_NODE_LOGS names a directory to keep
        // them in (`<id>-<port>.log`, at the level of FANOUT_NODE_RUST_LOG, default warn), for
        // looking into a failed chaos run.
        let stdout = match std::env::var_os("FANOUT_NODE_LOGS") {
            Some(dir) => {
                let path = Path::new(&dir).join(format!("{id}-{port}.log"));
                Stdio::from(std::fs::File::create(&path).expect("node log file"))
            }
            None => Stdio::null(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(&args[1..])
            .env(
                "RUST_LOG",
                std::env::var("FANOUT_NODE_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fanout binary");
        let p = NodeProcess {
            id: id.to_owned(),
            public: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            child: Some(child),
        };
        let limit = RedisKind::from_env().ready_limit(Duration::from_secs(10));
        assert!(
            ready_within(p.public, limit).await,
            "node process {id} never became ready"
        );
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no drain, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .ok();
        c.wait().ok()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Logs of in-process nodes go to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("RUST_LOG").is_ok() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .init();
        }
    });
}

/// Whether the node listening on `public` answers `/readyz` with 200 within `limit`.
pub async fn ready_within(public: SocketAddr, limit: Duration) -> bool {
    let status = || async {
        http(public, "GET", "/readyz", None, None)
            .await
            .map(|r| r.0)
    };
    eventually(limit, Duration::from_millis(25), status, |s| {
        *s == Some(200)
    })
    .await
        == Some(200)
}

/// A valid token for `user`, one hour.
pub fn token(user: &str) -> String {
    fanout::auth::mint_hs256(SECRET, user, fanout::auth::now_secs() + 3600, None).expect("mint")
}

/// Connects `user` to a node with `auth.token`.
pub async fn connect(url: &str, user: &str) -> Client {
    Client::connect(
        url,
        ConnectOptions {
            auth: Some(json!({ "token": token(user) })),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect {user}: {e}"))
}

/// Emits with an ACK and returns it (panics on timeout: every event must be answered).
pub async fn ack(c: &Client, event: &str, data: Value) -> Value {
    c.emit_with_ack(event, data, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{event} ack: {e}"))
}

/// The offsets `chat:history` returns for `chat` after `since` (one page).
pub async fn history_offsets(c: &Client, chat: &str, since: &Value) -> Vec<u64> {
    // The protocol's largest page, so the answer is the whole rest in every test here.
    let h = ack(
        c,
        "chat:history",
        json!({ "chatId": chat, "since": since, "limit": 1000 }),
    )
    .await;
    h["messages"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["offset"].as_u64()).collect())
        .unwrap_or_default()
}

/// A minimal HTTP/1.1 request; returns status and JSON body (Null when not JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> Option<(u16, Value)> {
    let raw = http_raw(
        addr,
        method,
        path,
        body.map(str::as_bytes),
        authorization,
        "application/json",
    )
    .await?;
    Some((raw.0, serde_json::from_str(&raw.1).unwrap_or(Value::Null)))
}

/// Like [`http`] with a raw body; returns status and body text.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    authorization: Option<&str>,
    content_type: &str,
) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let body = body.unwrap_or(b"");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(a) = authorization {
            req.push_str(&format!("Authorization: {a}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        s.write_all(body).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let (head, rest) = text.split_once("\r\n\r\n")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(rest)
        } else {
            rest.to_owned()
        };
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .ok()?
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Repo root (for scripts and fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The load generator's binary: a member of the workspace of its own (`crates/fanout-bench`),
/// so cargo gives this package no `CARGO_BIN_EXE_` for it; it is built into the same directory
/// as the node's binary (`make test` builds every binary of the workspace before the tests).
pub fn bench_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_fanout"))
        .with_file_name(format!("fanout-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --workspace --bins` (make test does)",
        bin.display()
    );
    bin
}

/// How to get haproxy, for `skip::require_tools`.
pub const HAPROXY_HINT: &str = "make test installs it: deploy/install-deps.sh haproxy";

/// An HAProxy process with deploy/haproxy.cfg and the given servers, killed on drop.
pub struct Haproxy {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy in front of `servers` (name, address) and waits until it forwards
    /// `/readyz` and every server passed its health checks. Callers check first that haproxy is
    /// installed (`skip::require_tools` with [`HAPROXY_HINT`]).
    pub async fn start(servers: &[(&str, SocketAddr)]) -> Haproxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = std::fs::read_to_string(repo_root().join("deploy/haproxy.cfg"))
            .expect("deploy/haproxy.cfg");
        for (name, addr) in servers {
            cfg.push_str(&format!("    server {name} {addr} cookie {name}\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let port = free_port();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .env("LB_PORT", port.to_string())
            .env("LB_BIND_ADDR", "127.0.0.1")
            .env("STATS_PORT", free_port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy");
        let lb = Haproxy {
            child,
            port,
            _dir: dir,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(15) {
            if http(addr, "GET", "/readyz", None, None).await.map(|r| r.0) == Some(200) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every server up (checks: inter 2 s, rise 2).
        tokio::time::sleep(Duration::from_secs(5)).await;
        lb
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`), `None` when it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The value of the `fanout_chat_send_path_total` sample with these labels on `node` (0 when
/// absent). The test process's nodes share one metrics registry, so this counts the sends of
/// every node of concurrent tests too: compare it before and after, as a lower bound.
pub async fn send_path_count(node: &Node, path: &str, reason: &str) -> f64 {
    let (status, body) = http_raw(node.admin, "GET", "/metrics", None, None, "text/plain")
        .await
        .expect("/metrics reachable");
    assert_eq!(status, 200, "{body}");
    let want = format!("fanout_chat_send_path_total{{path=\"{path}\",reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}
