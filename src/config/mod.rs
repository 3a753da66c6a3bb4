//! Every setting of a node in one typed struct, read from flags and environment variables.
//!
//! Each field is a `--flag` and an `ENV_VAR` (docs/protocol.md §7). [`Config::load`] turns any
//! parse or validation failure into one line naming the setting, so a bad deployment fails at
//! start-up instead of at the first client.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

pub mod redis_mode;

/// JWT signature algorithms a node can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (`JWT_SECRET`).
    HS256,
    /// RSA PKCS#1 v1.5 SHA-256 with a PEM public key (`JWT_PUBLIC_KEY_FILE`).
    RS256,
    /// ECDSA P-256 SHA-256 with a PEM public key (`JWT_PUBLIC_KEY_FILE`).
    ES256,
}

/// How a node runs `chat:send` in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChatSendPath {
    /// `WATCH`/`MULTI`/`EXEC` for the common case, `chat_send.lua` for the rest: less than
    /// half the script's Redis command time per message, for more node CPU and a second round
    /// trip (docs/benchmarks.md, "The send path without a script").
    Transaction,
    /// `chat_send.lua` for every send: one round trip.
    Script,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The configuration of one node. Defaults are those of docs/protocol.md §7.
#[derive(Debug, Clone, Parser)]
#[command(name = "fanout", version, about = "fanout: a Socket.IO gateway node")]
pub struct Config {
    /// Listening address for both ports.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,

    /// Public port: Socket.IO, /healthz, /readyz.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Internal port: /metrics and /api/v1/*.
    #[arg(long, env = "ADMIN_PORT", default_value_t = 9100)]
    pub admin_port: u16,

    /// Redis URL (one Redis); when absent it is built from REDIS_HOST/PORT/PASSWORD/DB.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis host (one Redis, when REDIS_URL is not set; default 127.0.0.1).
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,

    /// Redis port (one Redis, when REDIS_URL is not set; default 6379).
    #[arg(long, env = "REDIS_PORT")]
    pub redis_port: Option<u16>,

    /// Redis user name (ACL), for every Redis mode.
    #[arg(long, env = "REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Redis password, for every Redis mode (and the sentinels unless REDIS_SENTINEL_PASSWORD).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// Redis database number (one Redis or Sentinel, when REDIS_URL is not set; default 0).
    #[arg(long, env = "REDIS_DB")]
    pub redis_db: Option<u32>,

    /// Redis Cluster mode: seed nodes, `host:port,...`.
    #[arg(long, env = "REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,

    /// Sentinel mode: the sentinels, `host:port,...` (with REDIS_SENTINEL_MASTER).
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// Sentinel mode: the name of the monitored master.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Sentinel mode: the sentinels' password when it differs from REDIS_PASSWORD.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Replicas that must confirm a chat message (Redis `WAIT`) before it is ACCEPTED; 0 = none.
    #[arg(long, env = "REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// How long `WAIT` may take for REDIS_WAIT_REPLICAS, ms.
    #[arg(long, env = "REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_wait_timeout_ms: u64,

    /// HS256 secret. Exactly one of JWT_SECRET, JWT_PUBLIC_KEY_FILE and JWT_JWKS_URL must be set.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key for RS256/ES256.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The accepted algorithm: one with a secret or key file (default HS256 / RS256); with
    /// JWT_JWKS_URL a comma-separated list of asymmetric ones (default RS256).
    #[arg(long, env = "JWT_ALGORITHM", value_delimiter = ',')]
    pub jwt_algorithm: Vec<JwtAlgorithm>,

    /// JSON Web Key Set URL (http or https) of an identity provider: keys chosen by `kid`.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Seconds between fetches of the key set.
    #[arg(long, env = "JWT_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwt_jwks_refresh_secs: u64,

    /// Fewest seconds between two fetches caused by tokens naming an unknown `kid`.
    #[arg(long, env = "JWT_JWKS_MIN_REFETCH_SECS", default_value_t = 10)]
    pub jwt_jwks_min_refetch_secs: u64,

    /// `session:expiring` goes out when a session has this many seconds left (or fewer).
    #[arg(long, env = "SESSION_EXPIRY_NOTICE_SECS", default_value_t = 60)]
    pub session_expiry_notice_secs: u64,

    /// Required `iss` claim, checked only when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, checked only when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock leeway for `exp`/`nbf`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECS", default_value_t = 5)]
    pub jwt_leeway_secs: u64,

    /// Bearer key of the internal API.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,

    /// This node's id (default: a fresh UUID).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Presence key TTL in seconds.
    #[arg(long, env = "PRESENCE_TTL_SECS", default_value_t = 60)]
    pub presence_ttl_secs: u64,

    /// How often the node sends its delivery canary on every backplane shard, ms.
    #[arg(long, env = "CANARY_INTERVAL_MS", default_value_t = 2000)]
    pub canary_interval_ms: u64,

    /// Seconds without a canary back on some shard after which the node is not ready
    /// (`/readyz` 503, `delivery: false`).
    #[arg(long, env = "CANARY_TIMEOUT_SECS", default_value_t = 10)]
    pub canary_timeout_secs: u64,

    /// Allowed CORS origins for polling, comma-separated; empty allows any.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Routed services, `name=stream,...` (stream defaults to `events:<name>`).
    #[arg(long, env = "SERVICES", default_value = "")]
    pub services: String,

    /// Maximum `content` size of a chat message, in bytes.
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 16384)]
    pub max_message_bytes: usize,

    /// Messages kept per chat history stream (exact trim).
    #[arg(long, env = "HISTORY_MAXLEN", default_value_t = 1000)]
    pub history_maxlen: u64,

    /// Idle lifetime of a chat's history, in seconds: it expires between this and this +
    /// min(60, this) seconds after the chat's last message (the TTL is refreshed once a period).
    #[arg(long, env = "HISTORY_TTL_SECS", default_value_t = 86400)]
    pub history_ttl_secs: u64,

    /// How `chat:send` runs in Redis: `script` (chat_send.lua, one round trip) or
    /// `transaction` (WATCH/MULTI/EXEC; the script for first messages, duplicates and
    /// contention).
    #[arg(long, env = "CHAT_SEND_PATH", value_enum, default_value = "script")]
    pub chat_send_path: ChatSendPath,

    /// How long a `clientMsgId` is remembered for deduplication, in seconds.
    #[arg(long, env = "DEDUP_TTL_SECS", default_value_t = 86400)]
    pub dedup_ttl_secs: u64,

    /// How long a node stays subscribed to a room after its last local socket left it, in ms
    /// (a socket that reconnects at once causes no unsubscribe/subscribe churn).
    #[arg(long, env = "ROOM_UNSUBSCRIBE_DELAY_MS", default_value_t = 10_000)]
    pub room_unsubscribe_delay_ms: u64,

    /// Most `SUBSCRIBE`/`UNSUBSCRIBE` commands a node sends per second (each carries up to
    /// 1000 room channels): bounds what a reconnect storm costs Redis.
    #[arg(long, env = "SUBSCRIBE_COMMANDS_PER_SEC", default_value_t = 50)]
    pub subscribe_commands_per_sec: u32,

    /// Approximate MAXLEN of each routed service stream.
    #[arg(long, env = "SERVICE_STREAM_MAXLEN", default_value_t = 100_000)]
    pub service_stream_maxlen: u64,

    /// How long a `fanout:publish` entry may stay pending with a node before another claims it.
    #[arg(long, env = "PUBLISH_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub publish_claim_idle_ms: u64,

    /// Per-socket event budget, events per second.
    #[arg(long, env = "RATE_LIMIT_PER_SEC", default_value_t = 100)]
    pub rate_limit_per_sec: u32,

    /// Per-socket event burst.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 200)]
    pub rate_limit_burst: u32,

    /// Consecutive over-budget events after which a socket is disconnected (0 = never).
    #[arg(long, env = "RATE_LIMIT_DISCONNECT_AFTER", default_value_t = 1000)]
    pub rate_limit_disconnect_after: u32,

    /// Live sockets one user may have across the cluster (0 = unlimited).
    #[arg(long, env = "MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: u32,

    /// New Socket.IO connections this node accepts per second, bursts of one second's worth
    /// (0 = unlimited); beyond it the handshake is refused with `RATE_LIMITED`.
    #[arg(long, env = "MAX_CONNECTS_PER_SEC", default_value_t = 0)]
    pub max_connects_per_sec: u32,

    /// Rooms one socket may be in (its `user:`, `role:` and chat rooms; 0 = unlimited).
    #[arg(long, env = "MAX_ROOMS_PER_SOCKET", default_value_t = 1000)]
    pub max_rooms_per_socket: usize,

    /// Largest websocket message a client may send, in bytes. Keep it above
    /// 6 × MAX_MESSAGE_BYTES: JSON escaping can grow content up to six-fold (`\u0000`).
    #[arg(long, env = "WS_MAX_MESSAGE_BYTES", default_value_t = 131072)]
    pub ws_max_message_bytes: usize,

    /// Outgoing packets buffered per socket before emits to it fail.
    #[arg(long, env = "SOCKET_BUFFER_PACKETS", default_value_t = 1024)]
    pub socket_buffer_packets: usize,

    /// Engine.IO ping interval, ms: how often the server checks that a client is alive.
    #[arg(long, env = "PING_INTERVAL_MS", default_value_t = 25_000)]
    pub ping_interval_ms: u64,

    /// Engine.IO ping timeout, ms: a client that does not answer a ping in time is closed
    /// (a websocket client that stopped reading once its TCP window filled is ended by
    /// TCP_USER_TIMEOUT_MS instead: this close waits behind the blocked write).
    #[arg(long, env = "PING_TIMEOUT_MS", default_value_t = 20_000)]
    pub ping_timeout_ms: u64,

    /// TCP_USER_TIMEOUT of accepted public connections, ms: how long data the node wrote may
    /// stay unacknowledged, or unsent behind a closed receive window, before the kernel drops
    /// the connection. It ends a client that stopped reading, which the ping timeout cannot
    /// (its close waits behind the blocked write). Default PING_INTERVAL_MS + PING_TIMEOUT_MS;
    /// 0 = off.
    #[arg(long, env = "TCP_USER_TIMEOUT_MS")]
    pub tcp_user_timeout_ms: Option<u64>,

    /// Seconds a draining node waits before exiting.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Socket.IO Admin UI login name; with ADMIN_UI_PASSWORD_HASH it turns the `/admin`
    /// namespace on (docs/protocol.md §7).
    #[arg(long, env = "ADMIN_UI_USERNAME")]
    pub admin_ui_username: Option<String>,

    /// bcrypt hash of the Admin UI password (what the official `instrument()` takes).
    #[arg(long, env = "ADMIN_UI_PASSWORD_HASH", hide_env_values = true)]
    pub admin_ui_password_hash: Option<String>,

    /// Whether the Admin UI sees the arguments of client events (`event_received`).
    #[arg(long, env = "ADMIN_UI_SHOW_EVENTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub admin_ui_show_events: bool,
}

/// Where a node gets its JWT verification key from, after validation.
#[derive(Debug, Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(String),
    /// PEM-encoded public key and its algorithm.
    PublicKeyPem(Vec<u8>, JwtAlgorithm),
    /// A key set fetched from this URL, and the algorithms its tokens may use.
    Jwks(crate::auth::fetch::JwksUrl, Vec<JwtAlgorithm>),
}

impl Config {
    /// Risky but legal combinations, as lines to log at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.ws_max_message_bytes < self.max_message_bytes * 6 + 1024 {
            w.push(format!(
                "WS_MAX_MESSAGE_BYTES={} is below 6 x MAX_MESSAGE_BYTES: content that is legal but \
                 grows when JSON-escaped closes the connection instead of getting INVALID_PAYLOAD",
                self.ws_max_message_bytes
            ));
        }
        if self.redis_wait_replicas > 0 && self.redis_wait_timeout_ms > 1000 {
            w.push(format!(
                "REDIS_WAIT_REPLICAS={} with REDIS_WAIT_TIMEOUT_MS={}: while replicas lag, a WAIT \
                 holds the shared Redis connection and every command behind it for up to that \
                 long (the command timeout grows to match)",
                self.redis_wait_replicas, self.redis_wait_timeout_ms
            ));
        }
        if self.cors_origins.iter().all(|o| o.is_empty()) {
            w.push("CORS_ORIGINS is empty: any web origin may use long-polling".into());
        }
        if cfg!(not(any(target_os = "linux", target_os = "android")))
            && self.tcp_user_timeout().is_some()
        {
            w.push(
                "TCP_USER_TIMEOUT_MS has no effect on this platform: a client that stops reading \
                 keeps its socket until it closes the connection"
                    .into(),
            );
        }
        w
    }

    /// Parses flags and environment, validates, and returns the config or one line naming the
    /// bad setting.
    pub fn load() -> Result<Config, String> {
        let config = match Config::try_parse() {
            Ok(c) => c,
            Err(e) => {
                use clap::error::ErrorKind;
                if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                    e.exit();
                }
                return Err(one_line(&e.render().to_string()));
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses from an explicit argument list (tests, embedding); environment variables still
    /// apply for flags not given.
    pub fn try_from_args<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let config = Config::try_parse_from(args).map_err(|e| one_line(&e.render().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.jwt_key()?;
        if self.api_key.trim().is_empty() {
            return Err("invalid setting API_KEY: must not be empty".into());
        }
        if self.subscribe_commands_per_sec == 0 {
            return Err("invalid setting SUBSCRIBE_COMMANDS_PER_SEC: must be at least 1".into());
        }
        if self.max_message_bytes == 0 {
            return Err("invalid setting MAX_MESSAGE_BYTES: must be at least 1".into());
        }
        if self.history_maxlen == 0 {
            return Err("invalid setting HISTORY_MAXLEN: must be at least 1".into());
        }
        if self.history_ttl_secs == 0 {
            return Err("invalid setting HISTORY_TTL_SECS: must be at least 1".into());
        }
        if self.dedup_ttl_secs == 0 {
            return Err("invalid setting DEDUP_TTL_SECS: must be at least 1".into());
        }
        if self.ping_interval_ms < 100 || self.ping_timeout_ms < 100 {
            return Err("invalid setting PING_INTERVAL_MS/PING_TIMEOUT_MS: at least 100".into());
        }
        if self
            .tcp_user_timeout_ms
            .is_some_and(|ms| ms > u64::from(u32::MAX))
        {
            return Err(format!(
                "invalid setting TCP_USER_TIMEOUT_MS: at most {} (0 = off)",
                u32::MAX
            ));
        }
        if self.socket_buffer_packets == 0 {
            return Err("invalid setting SOCKET_BUFFER_PACKETS: must be at least 1".into());
        }
        if self.rate_limit_per_sec == 0 || self.rate_limit_burst == 0 {
            return Err(
                "invalid setting RATE_LIMIT_PER_SEC/RATE_LIMIT_BURST: must be at least 1".into(),
            );
        }
        if self.canary_interval_ms < 100
            || self.canary_timeout_secs.saturating_mul(1000) <= self.canary_interval_ms
        {
            return Err(
                "invalid setting CANARY_INTERVAL_MS/CANARY_TIMEOUT_SECS: the interval \
                        at least 100 ms, the timeout longer than the interval"
                    .into(),
            );
        }
        if self.presence_ttl_secs < 2 {
            return Err("invalid setting PRESENCE_TTL_SECS: must be at least 2".into());
        }
        if let Some(id) = &self.node_id
            && !crate::validate::is_valid_id(id)
        {
            return Err("invalid setting NODE_ID: 1-128 characters of [A-Za-z0-9_.:@-]".into());
        }
        self.redis()?;
        self.service_streams()?;
        self.admin_ui()?;
        Ok(())
    }

    /// The Admin UI settings: `None` when it is off (neither setting given), or the line naming
    /// what is wrong (one of the pair missing, a hash that is not bcrypt).
    pub fn admin_ui(&self) -> Result<Option<crate::admin::Settings>, String> {
        crate::admin::Settings::from_parts(
            self.admin_ui_username.as_deref(),
            self.admin_ui_password_hash.as_deref(),
            self.admin_ui_show_events,
        )
    }

    /// The JWT key with its algorithm, or the line naming what is wrong.
    pub fn jwt_key(&self) -> Result<JwtKey, String> {
        let sources = [
            self.jwt_secret.is_some(),
            self.jwt_public_key_file.is_some(),
            self.jwt_jwks_url.is_some(),
        ];
        match sources.iter().filter(|set| **set).count() {
            0 => {
                return Err(
                    "missing setting JWT_SECRET (or JWT_PUBLIC_KEY_FILE with JWT_ALGORITHM, \
                            or JWT_JWKS_URL)"
                        .into(),
                );
            }
            1 => {}
            _ => {
                return Err(
                    "invalid setting JWT_SECRET/JWT_PUBLIC_KEY_FILE/JWT_JWKS_URL: set \
                            exactly one of them"
                        .into(),
                );
            }
        }
        if let Some(url) = &self.jwt_jwks_url {
            let url = crate::auth::fetch::JwksUrl::parse(url)
                .map_err(|e| format!("invalid setting JWT_JWKS_URL: {e}"))?;
            let mut algs = self.jwt_algorithm.clone();
            if algs.is_empty() {
                algs.push(JwtAlgorithm::RS256);
            }
            if algs.contains(&JwtAlgorithm::HS256) {
                return Err("invalid setting JWT_ALGORITHM: HS256 cannot be used with \
                            JWT_JWKS_URL (RS256, ES256)"
                    .into());
            }
            if self.jwt_jwks_refresh_secs == 0 || self.jwt_jwks_min_refetch_secs == 0 {
                return Err(
                    "invalid setting JWT_JWKS_REFRESH_SECS/JWT_JWKS_MIN_REFETCH_SECS: \
                            must be at least 1"
                        .into(),
                );
            }
            algs.dedup();
            return Ok(JwtKey::Jwks(url, algs));
        }
        let alg = match self.jwt_algorithm.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => {
                return Err(
                    "invalid setting JWT_ALGORITHM: one algorithm with JWT_SECRET or \
                            JWT_PUBLIC_KEY_FILE (a list needs JWT_JWKS_URL)"
                        .into(),
                );
            }
        };
        if let Some(secret) = &self.jwt_secret {
            return match alg.unwrap_or(JwtAlgorithm::HS256) {
                JwtAlgorithm::HS256 if secret.is_empty() => {
                    Err("invalid setting JWT_SECRET: must not be empty".into())
                }
                JwtAlgorithm::HS256 => Ok(JwtKey::Secret(secret.clone())),
                other => Err(format!(
                    "invalid setting JWT_ALGORITHM: {other:?} needs JWT_PUBLIC_KEY_FILE, not JWT_SECRET"
                )),
            };
        }
        let Some(path) = &self.jwt_public_key_file else {
            return Err("missing setting JWT_SECRET".into());
        };
        let alg = alg.unwrap_or(JwtAlgorithm::RS256);
        if alg == JwtAlgorithm::HS256 {
            return Err(
                "invalid setting JWT_ALGORITHM: HS256 needs JWT_SECRET, not a public key".into(),
            );
        }
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "invalid setting JWT_PUBLIC_KEY_FILE: {}: {e}",
                path.display()
            )
        })?;
        Ok(JwtKey::PublicKeyPem(pem, alg))
    }

    /// The routed services of `SERVICES` (`name=stream,...`; a bare `name` routes to
    /// `events:<name>`), as (name, stream) pairs.
    pub fn service_streams(&self) -> Result<Vec<(String, String)>, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for item in self
            .services
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (name, stream) = match item.split_once('=') {
                Some((n, s)) => (n.trim(), s.trim().to_owned()),
                None => (item, format!("events:{item}")),
            };
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(format!(
                    "invalid setting SERVICES: service name {name:?} must be [A-Za-z0-9_-]+"
                ));
            }
            if stream.is_empty() || stream.contains(char::is_whitespace) {
                return Err(format!(
                    "invalid setting SERVICES: stream of {name} must be a non-empty key name"
                ));
            }
            if out.iter().any(|(n, _)| n == name) {
                return Err(format!("invalid setting SERVICES: {name} is listed twice"));
            }
            out.push((name.to_owned(), stream));
        }
        Ok(out)
    }

    /// The effective Redis URL of the one-Redis mode (REDIS_URL, or built from
    /// REDIS_HOST/PORT/PASSWORD/DB). REDIS_USERNAME and REDIS_PASSWORD are applied on top of it
    /// by [`Config::redis`], so they need no URL escaping.
    pub fn redis_url(&self) -> String {
        if let Some(url) = &self.redis_url {
            return url.clone();
        }
        format!(
            "redis://{}:{}/{}",
            self.redis_host.as_deref().unwrap_or("127.0.0.1"),
            self.redis_port.unwrap_or(6379),
            self.redis_db.unwrap_or(0)
        )
    }

    /// The Redis mode, credentials and durability settings, or the line naming what is wrong
    /// (two modes at once name both settings).
    pub fn redis(&self) -> Result<redis_mode::RedisSettings, String> {
        redis_mode::RedisSettings::from_config(self)
    }

    /// The `TCP_USER_TIMEOUT` to set on accepted public connections, `None` when off. The
    /// default covers one ping round (interval + timeout): a healthy client never has data
    /// unacknowledged that long, and the kernel's own retransmission limit is ~15 minutes.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        let ms = self
            .tcp_user_timeout_ms
            .unwrap_or(self.ping_interval_ms.saturating_add(self.ping_timeout_ms))
            // The socket option is an unsigned int; only the default can get here above it.
            .min(u64::from(u32::MAX));
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Presence key TTL as a duration.
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_secs(self.presence_ttl_secs)
    }
}

/// Collapses clap's multi-line error into one line (up to the usage block).
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
