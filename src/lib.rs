//! fanout: a real-time gateway node. Clients speak Socket.IO to any node; Redis is the shared
//! brain.
//!
//! Data flows one way — socket event → [`gateway`] handler → domain logic ([`chat`],
//! [`presence`], [`routing`]) → the domain's store (a script contract of [`redis::scripts`], or
//! a command) → the [`backplane`] stream → the backplane reader on every node → local room
//! delivery. Handlers never hold a Redis connection; domain logic never parses a Redis reply.
//! docs/architecture.md follows one `chat:send` through these modules. The modules:
//!
//! - [`config`]: every setting, from flags and environment, validated into one line on error.
//! - [`auth`]: JWT verification at the handshake and at `session:refresh`; JWKS key sets.
//! - [`gateway`]: Socket.IO: handshake, per-socket budget and send order, ACKs, dispatch, one
//!   file per event family, the token-expiry sweep.
//! - [`chat`]: chat domain logic, membership, room names; its Redis commands in `chat::store`.
//! - [`presence`]: user-level presence: transitions, introductions, store, expiry listener,
//!   sweep, refresher.
//! - [`routing`]: `service:module:name` events to the services' streams.
//! - [`backplane`]: Redis Streams between nodes: publish, reader loop, local delivery, shard
//!   lengths.
//! - [`api`]: the internal HTTP API; [`publish`] (HTTP and stream publishes, with its store)
//!   and [`nodes`] (the node registry) are its domain.
//! - [`redis`]: connections, the Lua scripts' contracts (one file each), and every key name.
//! - [`error`]: the client-facing error codes and the domain's store error.
//! - [`validate`]: payload validation shared by the gateway and the API.
//! - [`server`]: wiring of one node: services, both ports, `/readyz`, background tasks.
//! - [`drain`]: the stop order: every task's cancellation token, the drain that walks them.
//! - [`tasks`]: what the background tasks share: the reconnect backoff, the one reconnect
//!   loop of every blocking Redis reader, bounded tracked spawning.
//! - [`health`]: the readiness flags the subsystems set and `/readyz` reads.
//! - [`admin`]: the official Socket.IO Admin UI (`/admin`, off by default), cluster-wide through
//!   one Redis pub/sub channel.
//! - [`metrics`]: every metric name and help text, the Prometheus exporter, `/metrics`; no
//!   Redis.
//! - [`logging`]: text or JSON log lines carrying the node id.
//! - [`clock`]: wall-clock helpers in the protocol's formats.
//! - `props` (tests only): property tests of every parser of client, service or operator input.
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
