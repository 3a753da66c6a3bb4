//! The Redis settings of docs/protocol.md §7 after validation: exactly one mode (one Redis,
//! Redis Cluster or Sentinel), the credentials every mode uses, and the `WAIT` durability
//! settings. Every failure is one line naming the settings involved.

use std::fmt;
use std::time::Duration;

use super::Config;

/// A `host:port` of a seed node or a sentinel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl NodeAddr {
    /// Parses `host:port` or `[v6]:port`; `None` unless both parts are there and valid.
    pub fn parse(s: &str) -> Option<NodeAddr> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:")?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':')?;
            if host.contains(':') {
                return None; // a bare IPv6 address: ambiguous without brackets
            }
            (host, port)
        };
        let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        host_ok.then(|| NodeAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which Redis a node talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis (possibly with replicas behind it): `REDIS_URL` or `REDIS_HOST`/`PORT`/`DB`.
    Single(String),
    /// Redis Cluster, found through these seed nodes (`REDIS_CLUSTER_NODES`).
    Cluster {
        /// Seed nodes; the rest of the cluster is discovered from them.
        nodes: Vec<NodeAddr>,
    },
    /// The master these sentinels monitor under `master` (`REDIS_SENTINELS`,
    /// `REDIS_SENTINEL_MASTER`), database `db` (`REDIS_DB`).
    Sentinel {
        /// The sentinels asked for the current master.
        sentinels: Vec<NodeAddr>,
        /// The monitored master's name.
        master: String,
        /// Database number on the master.
        db: u32,
    },
}

impl RedisMode {
    /// `single`, `cluster` or `sentinel` (logs, metrics).
    pub fn name(&self) -> &'static str {
        match self {
            RedisMode::Single(_) => "single",
            RedisMode::Cluster { .. } => "cluster",
            RedisMode::Sentinel { .. } => "sentinel",
        }
    }
}

/// `REDIS_WAIT_REPLICAS` / `REDIS_WAIT_TIMEOUT_MS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitSettings {
    /// Replicas that must confirm a write before it is ACCEPTED (0 = no `WAIT`).
    pub replicas: u32,
    /// How long one `WAIT` may block.
    pub timeout: Duration,
}

/// The validated Redis settings of a node.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The mode and its addresses.
    pub mode: RedisMode,
    /// ACL user name for Redis (every mode; with a one-Redis URL, it overrides the URL's).
    pub username: Option<String>,
    /// Password for Redis (every mode; with a one-Redis URL, it overrides the URL's).
    pub password: Option<String>,
    /// Password for the sentinels; `None` means the sentinels use [`Self::password`].
    pub sentinel_password: Option<String>,
    /// Durability.
    pub wait: WaitSettings,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "<hidden>");
        let mode = match &self.mode {
            // A URL may carry a password.
            RedisMode::Single(_) => "Single(<url>)".to_owned(),
            other => format!("{other:?}"),
        };
        f.debug_struct("RedisSettings")
            .field("mode", &mode)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .field("wait", &self.wait)
            .finish()
    }
}

/// The longest `REDIS_WAIT_TIMEOUT_MS`: a chat send waits this long at most for its ACK.
pub const MAX_WAIT_TIMEOUT_MS: u64 = 60_000;

fn addrs(setting: &str, items: &[String]) -> Result<Vec<NodeAddr>, String> {
    let mut out = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let addr = NodeAddr::parse(item).ok_or_else(|| {
            format!("invalid setting {setting}: {item:?} is not host:port (a comma-separated list)")
        })?;
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(format!("invalid setting {setting}: at least one host:port"));
    }
    Ok(out)
}

impl RedisSettings {
    /// Validates the Redis settings of `c`.
    pub fn from_config(c: &Config) -> Result<RedisSettings, String> {
        // The first setting given of each mode, to name in a conflict.
        let single = [
            ("REDIS_URL", c.redis_url.is_some()),
            ("REDIS_HOST", c.redis_host.is_some()),
            ("REDIS_PORT", c.redis_port.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        let cluster = (!c.redis_cluster_nodes.is_empty()).then_some("REDIS_CLUSTER_NODES");
        let sentinel = [
            ("REDIS_SENTINELS", !c.redis_sentinels.is_empty()),
            ("REDIS_SENTINEL_MASTER", c.redis_sentinel_master.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name));
        let given: Vec<&str> = [single, cluster, sentinel].into_iter().flatten().collect();
        if given.len() > 1 {
            return Err(format!(
                "invalid setting {}: set exactly one Redis mode (REDIS_URL or REDIS_HOST for one \
                 Redis, REDIS_CLUSTER_NODES for Redis Cluster, REDIS_SENTINELS with \
                 REDIS_SENTINEL_MASTER for Sentinel)",
                given.join("/")
            ));
        }
        if c.redis_sentinel_password.is_some() && sentinel.is_none() {
            return Err(
                "invalid setting REDIS_SENTINEL_PASSWORD: only with REDIS_SENTINELS".into(),
            );
        }
        if c.redis_username.as_deref().is_some_and(str::is_empty) {
            return Err("invalid setting REDIS_USERNAME: must not be empty when set".into());
        }
        let mode = if cluster.is_some() {
            if c.redis_db.is_some_and(|db| db != 0) {
                return Err(
                    "invalid setting REDIS_CLUSTER_NODES/REDIS_DB: Redis Cluster has \
                            only database 0"
                        .into(),
                );
            }
            RedisMode::Cluster {
                nodes: addrs("REDIS_CLUSTER_NODES", &c.redis_cluster_nodes)?,
            }
        } else if sentinel.is_some() {
            if c.redis_sentinels.is_empty() {
                return Err("missing setting REDIS_SENTINELS (with REDIS_SENTINEL_MASTER)".into());
            }
            let master = match c.redis_sentinel_master.as_deref().map(str::trim) {
                None => {
                    return Err(
                        "missing setting REDIS_SENTINEL_MASTER (with REDIS_SENTINELS)".into(),
                    );
                }
                Some(m) if m.is_empty() || m.contains(char::is_whitespace) => {
                    return Err(
                        "invalid setting REDIS_SENTINEL_MASTER: a master name without spaces"
                            .into(),
                    );
                }
                Some(m) => m.to_owned(),
            };
            RedisMode::Sentinel {
                sentinels: addrs("REDIS_SENTINELS", &c.redis_sentinels)?,
                master,
                db: c.redis_db.unwrap_or(0),
            }
        } else {
            if c.redis_url.is_some() && c.redis_db.is_some() {
                return Err(
                    "invalid setting REDIS_URL/REDIS_DB: the database goes in the URL \
                            (redis://host:port/<db>)"
                        .into(),
                );
            }
            let url = c.redis_url();
            crate::redis::parse_url(&url).map_err(|e| format!("invalid setting REDIS_URL: {e}"))?;
            RedisMode::Single(url)
        };
        if c.redis_wait_timeout_ms == 0 || c.redis_wait_timeout_ms > MAX_WAIT_TIMEOUT_MS {
            // WAIT with timeout 0 would block forever.
            return Err(format!(
                "invalid setting REDIS_WAIT_TIMEOUT_MS: 1 to {MAX_WAIT_TIMEOUT_MS}"
            ));
        }
        if c.redis_wait_replicas > 16 {
            return Err("invalid setting REDIS_WAIT_REPLICAS: 0 to 16".into());
        }
        Ok(RedisSettings {
            mode,
            username: c.redis_username.clone(),
            password: c.redis_password.clone(),
            sentinel_password: c.redis_sentinel_password.clone(),
            wait: WaitSettings {
                replicas: c.redis_wait_replicas,
                timeout: Duration::from_millis(c.redis_wait_timeout_ms),
            },
        })
    }
}
