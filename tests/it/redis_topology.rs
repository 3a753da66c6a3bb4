//! Private Redis topologies for the integration tests: a Redis Cluster of 6 `redis-server
//! --cluster-enabled yes` processes (3 masters, 3 replicas) and a Sentinel setup (1 master,
//! 1 replica, 3 sentinels), all on free loopback ports in a temporary directory, keyspace
//! notifications `Ex` on every server as the node needs, every process killed on drop.
//! Tests ask `skip::require_tools(.., TOOLS, HINT)` first.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::eventually;

/// The programs these topologies run.
pub const TOOLS: &[&str] = &["redis-server", "redis-cli"];
/// How to get them, for `skip::require_tools`.
pub const HINT: &str = "deploy/install-deps.sh installs redis-server and redis-tools";

/// A port whose cluster bus port (port + 10000) is free too, below the ephemeral range.
fn free_port_pair() -> u16 {
    for _ in 0..1000 {
        let p = crate::harness::free_port();
        if p < 22_000 && StdListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair (p, p + 10000)");
}

/// `n` ports from [`free_port_pair`], all different, none another's bus port: two servers given
/// one port would leave one of them running outside the children the drop kills.
fn distinct_port_pairs(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port_pair();
        if !ports
            .iter()
            .any(|&q| q == p || q + 10_000 == p || p + 10_000 == q)
        {
            ports.push(p);
        }
    }
    ports
}

fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Child {
    std::fs::create_dir_all(dir).expect("redis dir");
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
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
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH")
}

fn kill(child: &mut Child) {
    child.kill().ok();
    child.wait().ok();
}

/// A connection to one server for assertions (`None` while it does not answer).
pub async fn conn_to(port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .ok()
}

/// One command on one server; `None` on any failure.
pub async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let mut c = conn_to(port).await?;
    cmd.query_async(&mut c).await.ok()
}

/// Whether every write the master on `port` made so far reached a replica within 5 s: a write
/// on the slot of `{tag}`, then `WAIT 1` for it, which covers every earlier write since a
/// master replicates one ordered stream. A test that kills a master to see what the promoted
/// replica does calls this first: Redis replicates asynchronously, and a write the kill beat
/// to the replica is lost, which is not what such a test is about.
pub async fn replicated(port: u16, tag: &str) -> bool {
    let Some(mut c) = conn_to(port).await else {
        return false;
    };
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(format!("fanout-test:{{{tag}}}:fence"))
        .arg(1)
        .ignore()
        .cmd("WAIT")
        .arg(1)
        .arg(5000);
    let acked: Option<(i64,)> = pipe.query_async(&mut c).await.ok();
    acked.is_some_and(|(n,)| n >= 1)
}

async fn answers(port: u16) -> bool {
    query::<String>(port, &redis::cmd("PING")).await.is_some()
}

/// `role:master` or `role:slave` of `INFO replication`.
pub async fn role(port: u16) -> Option<String> {
    let info: String = query(port, redis::cmd("INFO").arg("replication")).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(|r| r.trim().to_owned())
}

// ---- Redis Cluster ----------------------------------------------------------------------------

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// Inclusive slot ranges served (masters).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether this node serves `slot` (as last read).
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let port = f[1].split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            Some(ClusterNode {
                id: f[0].to_owned(),
                port,
                master: flags.contains(&"master"),
                failed: flags.iter().any(|fl| fl.starts_with("fail")),
                master_id: (f[3] != "-").then(|| f[3].to_owned()),
                slots,
            })
        })
        .collect()
}

/// 6 cluster nodes (3 masters, 3 replicas), killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: HashMap<u16, Child>,
    dir: tempfile::TempDir,
    /// Arguments every server gets after the harness's own (later ones win).
    extra: Vec<String>,
}

impl RedisCluster {
    /// Starts 6 nodes, `redis-cli --cluster create`s them with one replica each, and waits
    /// until every node reports `cluster_state:ok` and knows 6 nodes.
    pub async fn start() -> RedisCluster {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with `extra` arguments for every server (`--enable-debug-command yes`).
    pub async fn start_with(extra: &[&str]) -> RedisCluster {
        let mut cluster = RedisCluster {
            ports: distinct_port_pairs(6),
            children: HashMap::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cluster.form().await;
        cluster
    }

    /// Starts a server on every port, each in an empty directory (no `nodes.conf` of an earlier
    /// life, which would make it rejoin the old cluster), creates the cluster and waits until
    /// it is ready.
    async fn form(&mut self) {
        for &p in &self.ports {
            let dir = self.dir.path().join(p.to_string());
            let _ = std::fs::remove_dir_all(&dir);
            self.children.insert(p, spawn_redis(&dir, p, &self.args()));
        }
        for &p in &self.ports {
            let up = eventually(
                Duration::from_secs(5),
                Duration::from_millis(25),
                || answers(p),
                |&up| up,
            )
            .await;
            assert!(up, "cluster node {p} did not start");
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &self.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), create.output())
            .await
            .expect("redis-cli --cluster create within 20 s")
            .expect("redis-cli on PATH (deploy/install-deps.sh redis-cli)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = eventually(
            Duration::from_secs(15),
            Duration::from_millis(100),
            || self.all_ok(),
            Result::is_ok,
        )
        .await;
        if let Err(e) = ok {
            panic!("the cluster was not ready within 15 s: {e}");
        }
    }

    /// SIGKILL of every node: the whole cluster is gone, with its data (no persistence).
    pub fn stop(&mut self) {
        for (_, mut c) in self.children.drain() {
            kill(&mut c);
        }
    }

    /// [`Self::stop`], then a new, empty cluster on the same ports (so the same seed list still
    /// finds it), ready as after [`Self::start`]. Which ports become masters may differ.
    pub async fn restart(&mut self) {
        self.stop();
        self.form().await;
    }

    /// Every node `cluster_state:ok` and knowing 6 nodes, 3 masters with slots and 3
    /// replicas in the view of `CLUSTER NODES`, and every replica's link to its master up (so
    /// that `WAIT 1` can succeed at once). `Err` says what is missing.
    async fn all_ok(&self) -> Result<(), String> {
        for &p in self.live_ports().iter() {
            let info: Option<String> = query(p, redis::cmd("CLUSTER").arg("INFO")).await;
            let ok = info.as_ref().is_some_and(|i| {
                i.contains("cluster_state:ok") && i.contains("cluster_known_nodes:6")
            });
            if !ok {
                return Err(format!("{p}: CLUSTER INFO {info:?}"));
            }
            let repl: Option<String> = query(p, redis::cmd("INFO").arg("replication")).await;
            let linked = repl.as_ref().is_some_and(|r| {
                r.contains("role:master") && r.contains("connected_slaves:1")
                    || r.contains("role:slave") && r.contains("master_link_status:up")
            });
            if !linked {
                return Err(format!("{p}: INFO replication {repl:?}"));
            }
        }
        let nodes = self.nodes().await;
        let masters = nodes
            .iter()
            .filter(|n| n.master && !n.slots.is_empty())
            .count();
        let replicas = nodes.iter().filter(|n| n.master_id.is_some()).count();
        if masters == 3 && replicas == 3 {
            Ok(())
        } else {
            Err(format!("CLUSTER NODES: {nodes:?}"))
        }
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.children.keys().copied().collect();
        p.sort();
        p
    }

    /// `127.0.0.1:p,...` of every node, for `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `CLUSTER NODES` as seen by a live node.
    pub async fn nodes(&self) -> Vec<ClusterNode> {
        for p in self.live_ports() {
            if let Some(text) = query::<String>(p, redis::cmd("CLUSTER").arg("NODES")).await {
                return parse_cluster_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The live masters that serve slots.
    pub async fn masters(&self) -> Vec<ClusterNode> {
        self.nodes()
            .await
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .collect()
    }

    /// The master serving `slot`.
    pub async fn master_of_slot(&self, slot: u16) -> Option<ClusterNode> {
        self.masters().await.into_iter().find(|m| m.serves(slot))
    }

    /// The replica of the master on `master_port`.
    pub async fn replica_of(&self, master_port: u16) -> Option<u16> {
        let nodes = self.nodes().await;
        let id = nodes.iter().find(|n| n.port == master_port)?.id.clone();
        nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(id.as_str()) && !n.failed)
            .map(|n| n.port)
    }

    /// The flags of every server: cluster mode, then the test's `extra`.
    fn args(&self) -> Vec<&str> {
        let mut args: Vec<&str> = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
            // A replica's first sync at once instead of after the default 5 s wait for
            // more replicas to share the transfer (each master has one).
            "--repl-diskless-sync-delay",
            "0",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        args
    }

    /// Starts a killed node again on its port and directory: it keeps its `nodes.conf`, so it
    /// rejoins the cluster, as a replica of whoever took its slots over.
    pub async fn rejoin(&mut self, port: u16) {
        let child = spawn_redis(&self.dir.path().join(port.to_string()), port, &self.args());
        self.children.insert(port, child);
        let up = eventually(
            Duration::from_secs(5),
            Duration::from_millis(25),
            || answers(port),
            |&up| up,
        )
        .await;
        assert!(up, "cluster node {port} did not start again");
    }

    /// SIGKILL of one node.
    pub fn kill9(&mut self, port: u16) {
        if let Some(mut c) = self.children.remove(&port) {
            kill(&mut c);
        }
    }

    /// Waits (at most `limit`) until `replica` is a master serving slots and every live node
    /// reports `cluster_state:ok`; true when it happened.
    pub async fn wait_promoted(&self, replica: u16, limit: Duration) -> bool {
        let done = || async {
            let promoted = self
                .masters()
                .await
                .iter()
                .any(|m| m.port == replica && !m.slots.is_empty());
            promoted && self.live_ok().await
        };
        eventually(limit, Duration::from_millis(100), done, |&d| d).await
    }

    /// Waits (at most `limit`) until the cluster is whole again: every node up and
    /// `cluster_state:ok`, 3 masters and 3 replicas, every replica's link up (after a
    /// [`Self::rejoin`], so that `WAIT 1` on the promoted master can succeed). `Err` says what
    /// was still missing.
    pub async fn wait_whole(&self, limit: Duration) -> Result<(), String> {
        eventually(
            limit,
            Duration::from_millis(100),
            || self.all_ok(),
            Result::is_ok,
        )
        .await
    }

    async fn live_ok(&self) -> bool {
        for p in self.live_ports() {
            let info: Option<String> = query(p, redis::cmd("CLUSTER").arg("INFO")).await;
            if !info.is_some_and(|i| i.contains("cluster_state:ok")) {
                return false;
            }
        }
        true
    }

    /// `redis-cli --cluster reshard`: moves `slots` slots (with their keys) from the master
    /// on `from` to the master on `to` (redis-cli takes the lowest slots of `from`), and waits
    /// until every live node agrees.
    pub async fn reshard(&self, from: u16, to: u16, slots: u16) {
        let nodes = self.nodes().await;
        let id = |port: u16| {
            nodes
                .iter()
                .find(|n| n.port == port)
                .map(|n| n.id.clone())
                .unwrap_or_else(|| panic!("no node on {port}"))
        };
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{from}"))
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
            .await
            .expect("redis-cli --cluster reshard within 20 s")
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.values_mut() {
            kill(c);
        }
    }
}

// ---- Sentinel ----------------------------------------------------------------------------------

/// The master name the sentinels monitor.
pub const SENTINEL_MASTER: &str = "fanout";

/// 1 master, 1 replica, 3 sentinels (quorum 2, down after 1 s), killed on drop.
pub struct RedisSentinel {
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_ports: Vec<u16>,
    servers: HashMap<u16, Child>,
    sentinels: Vec<Child>,
    dir: tempfile::TempDir,
    /// Arguments the master and the replica get after the harness's own (not the sentinels:
    /// they take none of a data server's options).
    extra: Vec<String>,
}

impl RedisSentinel {
    /// Starts everything and waits until the replica is in sync and every sentinel knows the
    /// master, its replica and the other two sentinels (what a failover needs).
    pub async fn start() -> RedisSentinel {
        Self::start_with(&[]).await
    }

    /// [`Self::start`] with `extra` arguments for the master and the replica
    /// (`--enable-debug-command yes`).
    pub async fn start_with(extra: &[&str]) -> RedisSentinel {
        // Five different ports (two free_port calls may return the same one).
        let mut ports: Vec<u16> = Vec::with_capacity(5);
        while ports.len() < 5 {
            let p = crate::harness::free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut s = RedisSentinel {
            master_port: ports[0],
            replica_port: ports[1],
            sentinel_ports: ports[2..].to_vec(),
            servers: HashMap::new(),
            sentinels: Vec::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.launch().await;
        s
    }

    /// Starts the master, the replica and the sentinels on their ports, each in an empty
    /// directory (a sentinel rewrites its config with what it learnt: a fresh one forgets an
    /// earlier life's failovers), and waits until [`Self::ready`].
    async fn launch(&mut self) {
        let dir = self.dir.path().to_owned();
        let (master_port, replica_port) = (self.master_port, self.replica_port);
        let master_arg = master_port.to_string();
        // A replica's first sync at once instead of after the default 5 s wait for more
        // replicas to share the transfer.
        let no_delay = vec!["--repl-diskless-sync-delay", "0"];
        let mut replica_args = no_delay.clone();
        replica_args.extend(["--replicaof", "127.0.0.1", master_arg.as_str()]);
        let servers = [
            ("master", master_port, no_delay),
            ("replica", replica_port, replica_args),
        ];
        for (name, port, mut args) in servers {
            let sdir = dir.join(name);
            let _ = std::fs::remove_dir_all(&sdir);
            args.extend(self.extra.iter().map(String::as_str));
            self.servers.insert(port, spawn_redis(&sdir, port, &args));
        }
        // Every sentinel is told its own id, the replica and the other sentinels up front (the
        // lines a sentinel writes into its config once it has learnt them): discovering them
        // takes up to 10 s (the master's INFO, read every 10 s, names the replica; hello
        // messages every 2 s name the sentinels), which every test would wait through.
        let id = |p: u16| format!("{:0>40x}", p);
        for &p in &self.sentinel_ports {
            let sdir = dir.join(format!("sentinel-{p}"));
            let _ = std::fs::remove_dir_all(&sdir);
            std::fs::create_dir_all(&sdir).expect("sentinel dir");
            let mut conf_text = format!(
                "port {p}\nbind 127.0.0.1\ndir {dir}\nsentinel myid {myid}\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n\
                 sentinel known-replica {SENTINEL_MASTER} 127.0.0.1 {replica_port}\n",
                dir = sdir.display(),
                myid = id(p),
            );
            for &other in self.sentinel_ports.iter().filter(|&&o| o != p) {
                conf_text.push_str(&format!(
                    "sentinel known-sentinel {SENTINEL_MASTER} 127.0.0.1 {other} {}\n",
                    id(other)
                ));
            }
            let conf = sdir.join("sentinel.conf");
            std::fs::write(&conf, conf_text).expect("sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            self.sentinels.push(child);
        }
        let ready = eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || self.ready(),
            |&r| r,
        )
        .await;
        assert!(ready, "the sentinel setup was not ready within 20 s");
    }

    /// SIGKILL of the sentinels, the master and the replica: everything is gone, with its data
    /// (no persistence).
    pub fn stop(&mut self) {
        for mut c in self.sentinels.drain(..) {
            kill(&mut c);
        }
        for (_, mut c) in self.servers.drain() {
            kill(&mut c);
        }
    }

    /// [`Self::stop`], then everything again on the same ports, empty, the master on
    /// `master_port` again (so the same sentinel list and master name still find it), ready as
    /// after [`Self::start`].
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    /// Ports of the data servers (master and replica) still running.
    pub fn server_ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.servers.keys().copied().collect();
        p.sort();
        p
    }

    async fn ready(&self) -> bool {
        let synced = async {
            let info: String =
                query(self.replica_port, redis::cmd("INFO").arg("replication")).await?;
            info.contains("master_link_status:up").then_some(())
        };
        if synced.await.is_none() {
            return false;
        }
        for &p in &self.sentinel_ports {
            let replicas: Option<Vec<HashMap<String, String>>> = query(
                p,
                redis::cmd("SENTINEL").arg("replicas").arg(SENTINEL_MASTER),
            )
            .await;
            let others: Option<Vec<HashMap<String, String>>> = query(
                p,
                redis::cmd("SENTINEL").arg("sentinels").arg(SENTINEL_MASTER),
            )
            .await;
            let replica_known = replicas.is_some_and(|r| {
                r.iter().any(|r| {
                    r.get("port") == Some(&self.replica_port.to_string())
                        && r.get("flags").is_some_and(|f| f == "slave")
                })
            });
            if !replica_known || others.is_none_or(|o| o.len() < 2) {
                return false;
            }
        }
        true
    }

    /// `127.0.0.1:p,...` of the sentinels, for `REDIS_SENTINELS`.
    pub fn sentinels(&self) -> String {
        self.sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A node's flags for this setup (`--redis-sentinels … --redis-sentinel-master …`).
    pub fn node_args(&self) -> Vec<String> {
        vec![
            "--redis-sentinels".to_owned(),
            self.sentinels(),
            "--redis-sentinel-master".to_owned(),
            SENTINEL_MASTER.to_owned(),
        ]
    }

    /// The master port the first sentinel that answers names.
    pub async fn current_master(&self) -> Option<u16> {
        for &p in &self.sentinel_ports {
            let addr: Option<(String, String)> = query(
                p,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SENTINEL_MASTER),
            )
            .await;
            if let Some((_, port)) = addr {
                return port.parse().ok();
            }
        }
        None
    }

    /// SIGKILL of the master process.
    pub fn kill_master(&mut self) {
        if let Some(mut c) = self.servers.remove(&self.master_port) {
            kill(&mut c);
        }
    }

    /// Starts the killed master again, empty, on its port as a replica of the promoted one
    /// (what an operator or a restarting pod does; the sentinels would also turn it into one),
    /// and waits (at most `limit`) until the new master sees its link up, so that `WAIT 1`
    /// can succeed again; true when it happened.
    pub async fn rejoin_old_master(&mut self, limit: Duration) -> bool {
        let (old, new) = (self.master_port, self.replica_port);
        let child = spawn_redis(
            &self.dir.path().join("master"),
            old,
            &["--replicaof", "127.0.0.1", &new.to_string()],
        );
        self.servers.insert(old, child);
        let linked = || async {
            let info: Option<String> = query(new, redis::cmd("INFO").arg("replication")).await;
            info.is_some_and(|i| {
                i.contains("role:master")
                    && i.lines().any(|l| {
                        l.starts_with("slave0:")
                            && l.contains(&format!("port={old},"))
                            && l.contains("state=online")
                    })
            })
        };
        eventually(limit, Duration::from_millis(100), linked, |&l| l).await
    }

    /// Waits (at most `limit`) until every sentinel names the replica as master and it
    /// answers as one; true when it happened.
    pub async fn wait_failover(&self, limit: Duration) -> bool {
        let done = || async {
            for &p in &self.sentinel_ports {
                let addr: Option<(String, String)> = query(
                    p,
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(SENTINEL_MASTER),
                )
                .await;
                if addr.map(|a| a.1) != Some(self.replica_port.to_string()) {
                    return false;
                }
            }
            role(self.replica_port).await.as_deref() == Some("master")
        };
        eventually(limit, Duration::from_millis(100), done, |&d| d).await
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for c in self.sentinels.iter_mut() {
            kill(c);
        }
        for c in self.servers.values_mut() {
            kill(c);
        }
    }
}
