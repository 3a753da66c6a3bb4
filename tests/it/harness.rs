//! Test harness: private `redis-server` processes on free ports, fanout nodes in-process (or as
//! processes of the built binary), tokens, Socket.IO clients and a tiny HTTP client. Everything
//! it starts is killed when its handle drops.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fanout::{Config, Listeners};
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

/// A private redis-server on a free port, killed on drop.
pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Redis {
    /// Starts redis-server with keyspace notifications on and no persistence.
    pub async fn start() -> Redis {
        Self::start_with(&[]).await
    }

    /// Starts redis-server with extra arguments after the harness's own (later ones win).
    pub async fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.spawn().await;
        r
    }

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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
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

    /// A fresh connection for assertions.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection")
    }

    /// Kills the server (its data is lost: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Stalls the server for `secs` seconds (`DEBUG SLEEP`; start it with
    /// `--enable-debug-command yes`): the returned task ends when Redis answers again.
    pub fn stall(&self, secs: u64) -> tokio::task::JoinHandle<()> {
        let url = self.url();
        tokio::spawn(async move {
            let client = redis::Client::open(url).expect("redis url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis connection");
            let _: redis::RedisResult<()> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg(secs)
                .query_async(&mut c)
                .await;
        })
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
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

fn config_args(
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
        Self::start_on_redis(&single_redis_args(&redis.url()), id, opts).await
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
        assert!(
            ready_within(self.public, Duration::from_secs(5)).await,
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
        Self::spawn_with_redis_args(&single_redis_args(&redis.url()), id, opts, port, admin).await
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
        assert!(
            ready_within(p.public, Duration::from_secs(10)).await,
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
