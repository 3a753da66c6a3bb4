//! fanout: a real-time gateway node. Clients speak Socket.IO to any node; Redis is the shared
//! brain.
//!
//! Data flows one way — socket event → [`gateway`] handler → domain logic ([`chat`]) → Redis
//! (a script from `lua/`, or an `XADD` to the [`backplane`]) → the backplane reader on every
//! node → local room delivery. The modules:
//!
//! - [`config`]: every setting, from flags and environment.
//! - [`auth`]: JWT verification at the handshake.
//! - [`gateway`]: Socket.IO: handshake, per-socket budget and send order, ACKs, dispatch, one
//!   file per event family.
//! - [`chat`]: chat domain logic, membership, room names; its Redis commands in `chat::store`.
//! - [`presence`]: user-level presence: transitions, store, expiry listener, sweep, refresher.
//! - [`routing`]: `service:module:name` events to the services' streams.
//! - [`backplane`]: Redis Streams between nodes: publish, reader loop, local delivery, shard
//!   lengths.
//! - [`api`]: the internal HTTP API; [`publish`] and [`nodes`] are its domain.
//! - [`redis`]: connections, the Lua scripts' contracts (one file each), and every key name.
//! - [`tasks`]: what the background tasks share: the reconnect backoff and the one reconnect
//!   loop of every blocking Redis reader.
//! - [`drain`]: the stop order: every task's cancellation token, the drain that walks them.
//! - [`admin`]: the official Socket.IO Admin UI (`/admin`, off by default), cluster-wide through
//!   one Redis pub/sub channel.
//! - [`metrics`]: every metric name and help text, the Prometheus exporter, `/metrics`; no
//!   Redis.
//!
//! [`run`] starts a node on listeners the caller bound (tests bind port 0).

#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod backplane;
pub mod chat;
pub mod clock;
pub mod config;
pub mod drain;
pub mod error;
pub mod gateway;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod nodes;
pub mod presence;
#[cfg(test)]
mod props;
pub mod publish;
pub mod redis;
pub mod routing;
pub mod server;
pub mod tasks;
pub mod validate;

pub use config::Config;
pub use server::{Listeners, RunError, run};
