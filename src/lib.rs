//! fanout: a real-time gateway node. Clients speak Socket.IO to any node; Redis is the shared
//! brain.
//!
//! Data flows one way — socket event → [`gateway`] handler → domain logic ([`chat`]) → Redis
//! (a script from `lua/`, or an `XADD` to the [`backplane`]) → the backplane reader on every
//! node → local room delivery. The modules:
//!
//! - [`config`]: every setting, from flags and environment.
//! - [`auth`]: JWT verification at the handshake.
//! - [`gateway`]: Socket.IO handlers, one file per event family.
//! - [`chat`]: chat domain logic, membership, room names; its Redis commands in `chat::store`.
//! - [`presence`]: user-level presence: transitions, store, expiry listener, sweep.
//! - [`routing`]: `service:module:name` events to the services' streams.
//! - [`backplane`]: Redis Streams between nodes: publish, reader loop, local delivery, shard
//!   lengths.
//! - [`api`]: the internal HTTP API; [`publish`] and [`nodes`] are its domain.
//! - [`redis`]: connections, the Lua scripts' contracts (one file each), and every key name.
//! - [`metrics`]: every metric name and help text, the Prometheus exporter, `/metrics`; no
//!   Redis.
//! - [`client`]: a minimal Socket.IO client for tests and the load generator.
//!
//! [`run`] starts a node on listeners the caller bound (tests bind port 0).

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod backplane;
pub mod chat;
pub mod client;
pub mod clock;
pub mod config;
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
pub mod validate;

pub use config::Config;
pub use server::{Listeners, RunError, run};
