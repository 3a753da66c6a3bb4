//! The command line and the checks that run before anything is touched, so that a bad flag
//! costs no rooms and no connections.

use std::path::PathBuf;

use clap::Parser;

use crate::sys;

/// Load generator for a fanout cluster (Socket.IO over websocket).
#[derive(Parser, Debug)]
#[command(name = "fanout-bench", version)]
pub struct Args {
    /// Public URL of a node (repeat or comma-separate); clients are spread round-robin.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// Internal API URL of one node (rooms are created and deleted there). Without it the
    /// rooms are not created and `--join` is required: the mode for servers without fanout's
    /// API, such as the Node.js peer of `bench/`.
    #[arg(long)]
    pub admin_url: Option<String>,
    /// The nodes' API_KEY (Bearer auth of the server API).
    #[arg(long, env = "API_KEY", hide_env_values = true, default_value = "")]
    pub api_key: String,
    /// After connecting, each client emits `chat:join {chatId}` (with an ACK) for each of its
    /// rooms, as a client of a plain Socket.IO server must; fanout joins members at connect, so
    /// there the joins are redundant but answered.
    #[arg(long)]
    pub join: bool,
    /// Behave like a real client when a connection drops: reconnect (rotating over the
    /// `--url`s, backing off), re-join with `--join`, fetch `chat:history` since the last offset
    /// held in each room, and resend unacknowledged messages with the same `clientMsgId`. The
    /// report then counts messages recovered through history, and `lost` means lost for good.
    #[arg(long)]
    pub recover: bool,
    /// The nodes' JWT_SECRET: the bench mints an HS256 token per client.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Number of client connections.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Number of rooms; default clients / room-size (rounded up), so each client is in one room.
    /// Room r has clients r*room_size .. r*room_size+room_size-1 (mod clients).
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Number of sending clients, spread over the rooms first (sender k sends to room k % rooms,
    /// as its member (k / rooms + k) % room-size).
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Total send rate in messages per second, split evenly over the senders.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Size of each message's content in bytes (at least the ~40-byte header).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Seconds of sending before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds of measured sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds to wait for deliveries after the last ACK before counting losses.
    #[arg(long, default_value_t = 3.0)]
    pub grace: f64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Source addresses 127.0.0.1 .. 127.0.0.N used round-robin (each has its own ~28k
    /// ephemeral ports); 0 = as many as the client count needs.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u32,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds allowed for one connect (TCP, upgrade, namespace CONNECT).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Seconds allowed for connecting all clients; the run goes on with those connected.
    #[arg(long, default_value_t = 300.0)]
    pub connect_budget: f64,
    /// Unacknowledged sends allowed per sender; a send due while at the cap is skipped and
    /// counted.
    #[arg(long, default_value_t = 64)]
    pub max_inflight: usize,
    /// Seconds to wait for an ACK.
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout: f64,
    /// Also report the CPU use of these processes (e.g. the nodes and redis) over the measured
    /// window, from /proc/<pid>/stat.
    #[arg(long = "watch-pid", value_delimiter = ',')]
    pub watch_pids: Vec<u32>,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not delete the run's rooms at the end.
    #[arg(long)]
    pub keep_rooms: bool,
    /// Allow URLs outside loopback (never needed for local benchmarks).
    #[arg(long)]
    pub allow_remote: bool,
    /// Run id used in chat ids and clientMsgIds (default: random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Lifetime of each client's token in seconds, as behind an identity provider; every
    /// connected client then refreshes its session (`session:refresh`) every half lifetime
    /// instead of reconnecting. 0 (the default): one token valid for the whole run.
    #[arg(long, default_value_t = 0)]
    pub token_secs: u64,
    /// Read with plain `recv` instead of `recvmsg` with the kernel's receive timestamps; the
    /// report then has the read latency only (for comparing the stamps' own cost).
    #[arg(long)]
    pub no_rx_timestamps: bool,
}

/// Rejects what the run cannot honour before anything is created or connected, and any URL
/// outside loopback without `--allow-remote`.
pub fn validate(a: &Args) -> Result<(), String> {
    let bad = |m: &str| Err(m.to_owned());
    if a.clients == 0 || a.room_size == 0 {
        return bad("--clients and --room-size must be at least 1");
    }
    if a.token_secs == 1 {
        return bad("--token-secs must be 0 (off) or at least 2");
    }
    if a.room_size > a.clients {
        return bad("--room-size cannot exceed --clients");
    }
    if a.rooms == Some(0) {
        return bad("--rooms must be at least 1");
    }
    let rooms = a.rooms.unwrap_or(a.clients.div_ceil(a.room_size));
    if a.senders > rooms * a.room_size {
        return bad("--senders cannot exceed rooms * room-size");
    }
    if a.senders > 0 && !(a.rate > 0.0 && a.rate.is_finite()) {
        return bad("--rate must be a positive number");
    }
    if a.senders > 0 && a.senders as f64 / a.rate > 3600.0 {
        return bad("--rate too small for that many senders");
    }
    for (name, v, max) in [
        ("--warmup", a.warmup, 3600.0),
        ("--duration", a.duration, 3600.0),
        ("--grace", a.grace, 600.0),
        ("--connect-timeout", a.connect_timeout, 600.0),
        ("--connect-budget", a.connect_budget, 3600.0),
        ("--ack-timeout", a.ack_timeout, 600.0),
    ] {
        if !(0.0..=max).contains(&v) {
            return Err(format!("{name} must be between 0 and {max} seconds"));
        }
    }
    if a.duration <= 0.0 {
        return bad("--duration must be positive");
    }
    if a.max_inflight == 0 || a.connect_concurrency == 0 {
        return bad("--max-inflight and --connect-concurrency must be at least 1");
    }
    if a.source_ips > 65_536 {
        return bad("--source-ips: at most 65536 addresses of 127.0.0.0/8");
    }
    if let Some(id) = &a.run_id
        && (id.is_empty()
            || id.len() > 24
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return bad("--run-id: 1-24 characters of [A-Za-z0-9_]");
    }
    if a.admin_url.is_none() && !a.join {
        return bad("without --admin-url the rooms are not created: --join is required");
    }
    for url in a.urls.iter().chain(a.admin_url.iter()) {
        let u = sys::parse_url(url)?;
        if !a.allow_remote && !sys::is_loopback_host(&u.host) {
            return Err(format!(
                "{url}: not a loopback address (127.0.0.0/8, ::1, localhost); \
                 refusing without --allow-remote"
            ));
        }
    }
    Ok(())
}
