//! Network namespaces for the partition tests: a test gets its own namespace, veth pairs with
//! private /30 addresses (10.<150 + pid % 100>.<n>.0/30, on those links only), faults applied
//! inside its namespace only (nftables drops, netem where the kernel has it, or a delaying
//! proxy where it does not), and fanout node processes run inside it with `ip netns exec`.
//! Everything is removed when the [`Netns`] drops, whether the test passed or panicked.
//!
//! Needs root and `ip`, `tc`, `nft` (deploy/install-deps.sh ip tc nft); [`can_run`] checks.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::skip::{in_ci, record_skip, require_tools};

/// How to get the tools, for `require_tools`.
pub const HINT: &str = "deploy/install-deps.sh ip tc nft (make test does), and run as root";

/// Whether the test can run: the tools are on PATH and we are root. Under `CI=true` a missing
/// one fails the test; elsewhere it is recorded as skipped.
pub fn can_run(test: &str) -> bool {
    if !require_tools(test, &["ip", "tc", "nft"], HINT) {
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !in_ci(),
            "{test}: needs root (network namespaces); CI must run it"
        );
        record_skip(test, "needs root for network namespaces");
        return false;
    }
    true
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    run(args).unwrap_or_else(|e| panic!("{e}"));
}

/// One veth pair between the root namespace and the test's.
#[derive(Clone, Debug)]
pub struct Link {
    pub root_ip: String,
    pub ns_ip: String,
    pub ns_dev: String,
}

/// A network namespace of one test, deleted (with its links and rules) on drop.
pub struct Netns {
    pub name: String,
    root_devs: Vec<String>,
}

impl Netns {
    pub fn create() -> Netns {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("fanout-t{}-{n}", std::process::id());
        must(&["ip", "netns", "add", &name]);
        let ns = Netns {
            name,
            root_devs: Vec::new(),
        };
        must(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ]);
        ns
    }

    /// A new veth pair, up, with 10.a.b.1 on the root side and 10.a.b.2 in the namespace.
    pub fn link(&mut self) -> Link {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let (a, b) = (150 + pid % 100, n % 256);
        let root_dev = format!("fo{}h{}", pid % 100_000, n % 1000);
        let ns_dev = format!("fo{}n{}", pid % 100_000, n % 1000);
        must(&[
            "ip", "link", "add", &root_dev, "type", "veth", "peer", "name", &ns_dev,
        ]);
        self.root_devs.push(root_dev.clone());
        must(&["ip", "link", "set", &ns_dev, "netns", &self.name]);
        let (root_ip, ns_ip) = (format!("10.{a}.{b}.1"), format!("10.{a}.{b}.2"));
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{root_ip}/30"),
            "dev",
            &root_dev,
        ]);
        must(&["ip", "link", "set", &root_dev, "up"]);
        self.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_dev]);
        self.exec(&["ip", "link", "set", &ns_dev, "up"]);
        Link {
            root_ip,
            ns_ip,
            ns_dev,
        }
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        must(&all);
    }

    fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("nft script");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drops every packet between the namespace and `peer_ip` (both ways): a partition.
    pub fn cut(&self, peer_ip: &str) {
        self.nft(&format!(
            "table inet fanout_cut {{\n chain o {{ type filter hook output priority 0; ip daddr {peer_ip} drop; }}\n chain i {{ type filter hook input priority 0; ip saddr {peer_ip} drop; }}\n}}\n"
        ));
    }

    /// Ends [`cut`](Self::cut).
    pub fn heal(&self) {
        self.nft("delete table inet fanout_cut\n");
    }

    /// Drops `percent` % of the packets to and from `peer_ip`, at random, each way.
    pub fn lossy(&self, peer_ip: &str, percent: u32) {
        self.nft(&format!(
            "table inet fanout_loss {{\n chain o {{ type filter hook output priority 0; ip daddr {peer_ip} numgen random mod 100 < {percent} drop; }}\n chain i {{ type filter hook input priority 0; ip saddr {peer_ip} numgen random mod 100 < {percent} drop; }}\n}}\n"
        ));
    }

    /// `tc qdisc add dev <ns side of link> root netem <spec>`; false when the kernel has no
    /// netem (some minimal VM kernels do not), and the caller falls back.
    pub fn netem(&self, link: &Link, spec: &[&str]) -> bool {
        let mut args = vec![
            "ip", "netns", "exec", &self.name, "tc", "qdisc", "add", "dev",
        ];
        args.extend_from_slice(&[&link.ns_dev, "root", "netem"]);
        args.extend_from_slice(spec);
        run(&args).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth ends, and with them their pairs; the rules
        // and qdiscs lived inside it. The root ends are deleted too in case a pair was left.
        let _ = run(&["ip", "netns", "del", &self.name]);
        for dev in &self.root_devs {
            let _ = run(&["ip", "link", "del", dev]);
        }
    }
}

/// A fanout node process inside a namespace, killed on drop.
pub struct NsNode {
    pub public: SocketAddr,
    child: Child,
}

impl NsNode {
    /// Starts the node binary in `ns` on `bind_ip` (an address of a link of `ns`) with Redis at
    /// `redis_url`, and waits until it is ready.
    pub async fn spawn(
        ns: &Netns,
        bind_ip: &str,
        redis_url: &str,
        id: &str,
        opts: &NodeOpts,
    ) -> NsNode {
        let mut args: Vec<String> = [
            "netns",
            "exec",
            &ns.name,
            env!("CARGO_BIN_EXE_fanout"),
            "--bind-addr",
            bind_ip,
            "--redis-url",
            redis_url,
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--node-id",
            id,
            "--port",
            "3000",
            "--admin-port",
            "9100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in &opts.extra {
            args.push(format!("--{k}"));
            args.push(v.clone());
        }
        let child = Command::new("ip")
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ip netns exec fanout");
        let ip: std::net::IpAddr = bind_ip.parse().expect("ip");
        let node = NsNode {
            public: SocketAddr::new(ip, 3000),
            child,
        };
        assert!(
            ready_within(node.public, Duration::from_secs(15)).await,
            "node {id} in {} never became ready",
            ns.name
        );
        node
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on `listen` to `target` that holds every chunk for `delay` in each direction,
/// in order: the netem delay where the kernel has no netem. Stops when the handle is dropped.
pub struct DelayProxy {
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    pub async fn start(listen: SocketAddr, target: SocketAddr, delay: Duration) -> DelayProxy {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .expect("proxy bind");
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pipe(ri, wo, delay));
                tokio::spawn(pipe(ro, wi, delay));
            }
        });
        DelayProxy { task }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until((at + delay).into()).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
