//! The Socket.IO side of a node. Handlers stay thin: they parse and validate a payload, call
//! the domain ([`crate::chat`], [`crate::presence`], [`crate::routing`]) and answer with an ACK
//! — or, when the client asked for none and the event failed, with an `error` event.
//!
//! Seams, each owning one concern: [`handshake`] (what a socket must show and what it carries),
//! [`budget`] (events per socket), [`order`] (sends in arrival order), [`ack`] (how handlers are
//! called and answer), [`sockets`] (the node's live sockets), [`lifecycle`] (connect and
//! disconnect), [`dispatch`] (event name → handler). The event files ([`chat`], [`presence`],
//! [`routing`]) import only the seams and [`App`]; only [`dispatch`] and [`lifecycle`] import
//! the event files.

pub mod ack;
pub mod budget;
pub mod chat;
pub mod dispatch;
pub mod expiry;
pub mod handshake;
pub mod lifecycle;
pub mod order;
pub mod presence;
pub mod routing;
pub mod session;
pub mod sockets;

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::chat::Chats;

pub use ack::{Handler, Responder};
pub use handshake::detach_request_buffers;
pub use lifecycle::{IoLimits, build};
pub use sockets::local_sockets;

/// Everything a handler may use, shared by all sockets of the node.
#[derive(Clone)]
pub struct App {
    /// Which rooms this node subscribes to: every socket joins its rooms through it.
    pub interest: Arc<crate::backplane::interest::Interest>,
    /// Chat domain service.
    pub chats: Chats,
    /// Presence service.
    pub presence: crate::presence::Presence,
    /// Routed service events.
    pub router: crate::routing::Router,
    /// Per-socket event budget: (events per second, burst).
    pub rate_limit: (u32, u32),
    /// Per-socket and per-user limits.
    pub limits: Limits,
    /// Token verifier.
    pub auth: Authenticator,
    /// This node's id.
    pub node_id: Arc<str>,
    /// MAX_MESSAGE_BYTES.
    pub max_message_bytes: usize,
    /// Readiness flags: handshakes are refused until the backplane reader runs.
    pub health: Arc<crate::health::Health>,
    /// When each local socket's token expires ([`expiry::run`] tells and disconnects it).
    pub expiries: Arc<expiry::Expiries>,
    /// The Socket.IO Admin UI, when enabled: told of connects, disconnects, events and rooms.
    pub admin: Option<crate::admin::Admin>,
    /// New connections this node accepts per second (`MAX_CONNECTS_PER_SEC`); `None` = any.
    pub connect_rate: Option<Arc<ConnectRate>>,
}

/// The node-wide limit on new Socket.IO connections per second: a token bucket of one
/// second's worth, so a reconnect storm (every client of a dead node at once) is spread out
/// by the clients' backoff instead of every handshake verifying a token and reading Redis at
/// the same moment.
pub struct ConnectRate {
    per_sec: u32,
    limiter: governor::DefaultDirectRateLimiter,
}

impl ConnectRate {
    /// A limit of `per_sec` new connections per second (burst: as many); `None` for 0 (off).
    pub fn new(per_sec: u32) -> Option<ConnectRate> {
        let n = std::num::NonZeroU32::new(per_sec)?;
        Some(ConnectRate {
            per_sec,
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(n)),
        })
    }

    /// Takes one connection from the bucket; false when it is empty.
    pub fn admit(&self) -> bool {
        self.limiter.check().is_ok()
    }

    /// The configured rate.
    pub fn per_sec(&self) -> u32 {
        self.per_sec
    }
}

/// Limits on what one socket or user may hold (0 = unlimited).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Live sockets per user, cluster-wide (counted in the user's presence hash).
    pub connections_per_user: u32,
    /// Rooms per socket.
    pub rooms_per_socket: usize,
    /// Consecutive over-budget events before the socket is disconnected.
    pub disconnect_after_over_budget: u32,
}
