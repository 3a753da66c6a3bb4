//! Wiring and lifetime of one node: builds the services, serves both ports, runs every
//! background task on one `TaskTracker` under one cancellation tree ([`crate::drain::Stops`]),
//! and drains in order ([`crate::drain::run`]) when the caller's `shutdown` token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::redis::Conn;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{self, ApiState};
use crate::auth::Authenticator;
use crate::backplane::canary::Canary;
use crate::backplane::deliver::Deliverer;
use crate::backplane::interest::Interest;
use crate::backplane::{Backplane, subscriber};
use crate::chat::{ChatSettings, Chats};
use crate::config::Config;
use crate::drain::Stops;
use crate::gateway::{self, App, IoLimits};
use crate::health::Health;
use crate::presence::{Presence, listener, refresher, sweep};

/// The two listening sockets of a node.
pub struct Listeners {
    /// Public port: Socket.IO, /healthz, /readyz.
    pub public: TcpListener,
    /// Internal port: /api/v1, /metrics.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `BIND_ADDR:PORT` and `BIND_ADDR:ADMIN_PORT`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            public: listen(SocketAddr::new(config.bind_addr, config.port))?,
            admin: TcpListener::bind(SocketAddr::new(config.bind_addr, config.admin_port)).await?,
        })
    }
}

/// Connections the kernel may hold for the public listener before the node accepts them
/// (capped by `net.core.somaxconn`). In a reconnect storm thousands of clients connect within a
/// second; with tokio's default of 1 024 the kernel drops the SYNs beyond it, and those clients
/// wait for SYN retransmits (1 s, 3 s, 7 s, ...) before they get in (seen in the chaos test's
/// 20 000-client storm).
const PUBLIC_BACKLOG: u32 = 4096;

/// Binds the public listener with [`PUBLIC_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` does, so a restarted node can listen again at once).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(PUBLIC_BACKLOG)
}

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting was rejected.
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone)]
struct PublicState {
    conn: Conn,
    health: Arc<Health>,
    /// Whether this node's own events come back through its reader.
    canary: Arc<Canary>,
    /// JWKS mode: the key set, without which no handshake can succeed.
    key_set: Option<Arc<crate::auth::jwks::Jwks>>,
}

/// Runs a node until `shutdown` is cancelled, then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.validate().map_err(RunError::Config)?;
    let prometheus = crate::metrics::install(); // once per process; later nodes share it
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let node_id: Arc<str> = config
        .node_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
        .into();
    let redis_settings = config.redis().map_err(RunError::Config)?;
    let redis = crate::redis::Redis::new(&redis_settings)
        .map_err(|e| RunError::Config(format!("invalid Redis settings: {e}")))?;
    let conn = redis.conn();
    // Sentinel and Cluster mode: the sentinels or the cluster must answer at start-up. The
    // readers and subscribers below ask `redis` for their server on every (re)connect.
    reachable(&redis).await.map_err(RunError::Config)?;
    let cluster = matches!(
        redis_settings.mode,
        crate::config::redis_mode::RedisMode::Cluster { .. }
    );
    tracing::info!(mode = redis.mode(), "redis");
    let auth = Authenticator::from_config(&config).map_err(RunError::Config)?;
    // JWKS mode: the key set is fetched in the background; handshakes are refused (and the
    // node is not ready) until the first fetch succeeds.
    let key_set = auth.key_set();

    let health = Arc::new(Health::default());
    let tasks = TaskTracker::new();
    let stops = Stops::default();
    // A node that fails after starting its tasks (an error below) stops them on the way out.
    let _stop_all = stops.root.clone().drop_guard();
    // Redis Cluster: sharded pub/sub, so that a frame travels only through the master of its
    // room's slot (classic PUBLISH goes to every node of the cluster).
    let confirm = redis.confirm();
    let mut backplane = Backplane::new(conn.clone(), node_id.to_string());
    if let Some(confirm) = &confirm {
        backplane = backplane.with_wait(confirm.clone());
    }
    if cluster {
        backplane = backplane.sharded();
    }
    let mut chats = Chats::new(
        conn.clone(),
        backplane.clone(),
        ChatSettings {
            history_maxlen: config.history_maxlen,
            history_ttl_secs: config.history_ttl_secs,
            dedup_ttl_secs: config.dedup_ttl_secs,
        },
    );
    if cluster {
        chats = chats.with_publish(crate::redis::scripts::chat_send::PublishCommand::Spublish);
    }
    if let Some(confirm) = confirm {
        chats = chats.with_wait(confirm);
    }
    if config.chat_send_path == crate::config::ChatSendPath::Transaction {
        chats = chats.with_transactions(redis.exclusive());
    }
    // What this node's peer rooms were shown of presence: the deliverer applies transitions
    // against it, the connect path records presence:bulk-online in it, and a catch-up after
    // lost frames compares it with Redis.
    let shown = Arc::new(crate::backplane::deliver::PresenceVersions::default());
    let presence = Presence::new(
        conn.clone(),
        backplane.clone(),
        chats.clone(),
        config.presence_ttl(),
    )
    .with_shown(shown.clone());
    let router = crate::routing::Router::new(
        conn.clone(),
        node_id.clone(),
        config.service_streams().map_err(RunError::Config)?,
        config.service_stream_maxlen,
    );
    let expiries = Arc::new(gateway::expiry::Expiries::new(
        auth.leeway_secs(),
        config.session_expiry_notice_secs,
    ));
    // The Admin UI, when its settings are given (docs/protocol.md §7).
    let admin = config
        .admin_ui()
        .map_err(RunError::Config)?
        .map(|settings| {
            crate::admin::Admin::new(
                settings,
                node_id.clone(),
                crate::admin::store::AdminStore::new(conn.clone()),
            )
        });
    // Which rooms this node subscribes to: the handlers join sockets through it.
    let interest = Interest::new(
        chats.clone(),
        Duration::from_millis(config.room_unsubscribe_delay_ms),
        config.subscribe_commands_per_sec,
    );
    let app = App {
        interest: interest.clone(),
        chats: chats.clone(),
        presence: presence.clone(),
        router,
        rate_limit: (config.rate_limit_per_sec, config.rate_limit_burst),
        limits: gateway::Limits {
            connections_per_user: config.max_connections_per_user,
            rooms_per_socket: config.max_rooms_per_socket,
            disconnect_after_over_budget: config.rate_limit_disconnect_after,
        },
        auth,
        node_id: node_id.clone(),
        max_message_bytes: config.max_message_bytes,
        health: health.clone(),
        expiries: expiries.clone(),
        admin: admin.clone(),
        connect_rate: gateway::ConnectRate::new(config.max_connects_per_sec).map(Arc::new),
    };
    let (io_layer, io) = gateway::build(
        app,
        IoLimits {
            ws_max_message_bytes: config.ws_max_message_bytes,
            socket_buffer_packets: config.socket_buffer_packets,
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            ping_timeout: Duration::from_millis(config.ping_timeout_ms),
        },
    );

    if let Some(keys) = key_set.clone() {
        tasks.spawn(crate::auth::jwks::run(keys, stops.sessions.clone()));
    }

    // Expired sessions are no longer swept once the node drains: the drain ends them all.
    tasks.spawn(gateway::expiry::run(
        io.clone(),
        expiries,
        stops.sessions.clone(),
    ));

    interest.set_io(io.clone());
    let canary = Arc::new(Canary::new(
        &node_id,
        1,
        Duration::from_secs(config.canary_timeout_secs),
    ));
    // The canary stops with the subscriber: until then it keeps proving the node delivers.
    tasks.spawn(crate::backplane::canary::run(
        backplane.clone(),
        canary.clone(),
        health.clone(),
        Duration::from_millis(config.canary_interval_ms),
        stops.readers.clone(),
    ));
    // The subscriber subscribes before the node reports ready; the handshake refuses sockets
    // until then. The interest manager subscribes what sockets join, on its connection.
    let (link_tx, link_rx) = tokio::sync::watch::channel(None);
    let (control_tx, control_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.spawn(crate::backplane::interest::manager(
        interest.clone(),
        link_rx,
        control_tx,
        stops.readers.clone(),
    ));
    tasks.spawn(subscriber::run(
        redis.clone(),
        interest.clone(),
        Arc::new(
            Deliverer::new(io.clone(), node_id.to_string(), tasks.clone())
                .with_admin(admin.clone())
                .with_interest(interest.clone())
                .with_presence(shown, Arc::new(presence.clone())),
        ),
        canary.clone(),
        health.clone(),
        link_tx,
        control_rx,
        stops.readers.clone(),
    ));
    // Metrics upkeep stops with the subscriber, at the end of the drain.
    tasks.spawn(crate::metrics::run_upkeep(
        prometheus.clone(),
        stops.readers.clone(),
    ));
    // The Admin UI's relay stops with the readers, last: admin sockets see the drain's
    // disconnects until the end.
    if let Some(admin) = &admin {
        admin.start(redis.clone(), &tasks, &stops.readers);
    }
    let publisher = crate::publish::Publisher::new(backplane.clone());
    // Presence keeps working until the sockets are gone: the drain removes them first.
    let live_sockets = {
        let io = io.clone();
        move || gateway::local_sockets(&io)
    };
    tasks.spawn(refresher::run(
        live_sockets,
        presence.clone(),
        stops.presence.clone(),
    ));
    tasks.spawn(listener::run(
        redis.clone(),
        presence.clone(),
        health.clone(),
        tasks.clone(),
        stops.presence.clone(),
    ));
    tasks.spawn(sweep::run(
        presence.clone(),
        node_id.to_string(),
        stops.presence.clone(),
    ));
    // The publish-stream consumer and the heartbeat stop with the presence tasks, first in a
    // drain: a draining node leaves the rest of the stream to the nodes that stay.
    tasks.spawn(crate::publish::consumer::run(
        redis.clone(),
        conn.clone(),
        publisher.clone(),
        node_id.to_string(),
        Duration::from_millis(config.publish_claim_idle_ms),
        stops.presence.clone(),
    ));
    tasks.spawn(crate::nodes::run_heartbeat(
        conn.clone(),
        io.clone(),
        node_id.to_string(),
        stops.presence.clone(),
    ));

    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(PublicState {
            conn: conn.clone(),
            health: health.clone(),
            canary,
            key_set,
        })
        .layer(io_layer)
        .layer(axum::middleware::map_request(
            gateway::detach_request_buffers,
        ))
        .layer(cors(&config.cors_origins));
    let admin = api::router(ApiState {
        chats,
        presence: presence.clone(),
        publisher: publisher.clone(),
        nodes: crate::nodes::Nodes::new(conn.clone()),
        api_key: config.api_key.clone().into(),
    })
    .route("/metrics", crate::metrics::endpoint(prometheus, io.clone())); // no API key (§8)

    tracing::info!(
        node = %node_id,
        public = %listeners.public.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        "fanout node started"
    );

    // Servers stop once the sockets are closed; the drain closes them. They are not on the
    // tracker: the drain's wait must not hang on an HTTP client's graceful close; they get their
    // own second after it.
    // Nagle would hold a small frame written right after another (a sender's own chat:message,
    // then its ACK) until the client's delayed ACK, up to 40 ms: real-time traffic wants none.
    let user_timeout = config.tcp_user_timeout();
    let public_listener = listeners.public.tap_io(move |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        if let Some(timeout) = user_timeout {
            set_tcp_user_timeout(tcp, timeout);
        }
    });
    let public_srv = axum::serve(public_listener, public)
        .with_graceful_shutdown(stops.servers.clone().cancelled_owned());
    let admin_srv = axum::serve(listeners.admin, admin)
        .with_graceful_shutdown(stops.servers.clone().cancelled_owned());
    let serving = tokio::spawn(async move { tokio::try_join!(public_srv, admin_srv).map(|_| ()) });

    shutdown.cancelled().await;
    tracing::info!(node = %node_id, "draining");
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    crate::drain::run(&stops, &io, &presence, &health, &tasks, grace).await;
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(1), serving).await {
        return Err(RunError::Io(e));
    }
    tracing::info!(node = %node_id, "stopped");
    Ok(())
}

/// In Sentinel and Cluster mode the sentinels or the cluster must answer within a bound at
/// start-up (`invalid` settings or Redis away stop it with one line); one Redis is not
/// contacted here (the node starts, not ready, and waits for it).
async fn reachable(redis: &crate::redis::Redis) -> Result<(), String> {
    let limit = crate::redis::CONNECT_TIMEOUT * 5;
    let every = Duration::from_millis(250);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match redis.primary_client().await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + every > deadline => {
                return Err(format!(
                    "redis ({} mode) not reachable within {} s: {e}",
                    redis.mode(),
                    limit.as_secs()
                ));
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// 200 when Redis answers, the backplane reader is reading and Redis sends the expiry events
/// presence needs; 503 otherwise (and while draining).
async fn readyz(State(st): State<PublicState>) -> impl IntoResponse {
    let mut conn = st.conn.clone();
    let redis_ok = crate::redis::ping(&mut conn).await;
    let reader = st.health.reader_running();
    let keyspace = st.health.keyspace_ok();
    let draining = st.health.draining();
    let keys = st.key_set.as_ref().is_none_or(|k| k.available());
    let delivery = st.canary.delivering();
    let ready = redis_ok && reader && delivery && keyspace && keys && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "ready": ready,
            "redis": redis_ok,
            "backplaneReader": reader,
            "delivery": delivery,
            "keyspaceNotifications": keyspace,
            "draining": draining,
            "keySet": keys,
        })),
    )
}

/// Sets `TCP_USER_TIMEOUT` on an accepted connection, so the kernel drops it once data the node
/// wrote has stayed unacknowledged, or unsent behind the client's closed receive window, for
/// `timeout`. A client that stops reading blocks engineioxide's writer in a write that nothing
/// else interrupts (the ping timeout's close waits for that writer); the kernel's error is what
/// ends the write, and with it the socket, its presence and what was queued for it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_tcp_user_timeout(tcp: &tokio::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    static WARNED: std::sync::Once = std::sync::Once::new();
    // Config::tcp_user_timeout keeps it within an unsigned int.
    let ms = libc::c_uint::try_from(timeout.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: the descriptor is open (we hold the stream) and setsockopt only reads the
    // `c_uint` we pass, whose size we give.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // The same on every connection (an old kernel, a sandbox): once is enough to see it.
        WARNED.call_once(|| tracing::warn!(error = %e, "TCP_USER_TIMEOUT not set"));
    }
}

/// No `TCP_USER_TIMEOUT` here; [`Config::warnings`] says so at start-up.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_tcp_user_timeout(_tcp: &tokio::net::TcpStream, _timeout: Duration) {}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| !o.is_empty())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        CorsLayer::permissive()
    } else {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
    }
}
