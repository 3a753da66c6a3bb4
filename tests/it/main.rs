//! Integration tests: real redis-server processes, real nodes on real sockets, real
//! Socket.IO clients. One test binary (faster to build than one per file).

mod harness;
mod pyenv;
mod redis_topology;
mod skip;

mod admin;
mod api;
mod auth;
mod bad_input;
mod bench;
mod canary;
mod chaos;
mod chaos_failover;
mod chat;
mod drain;
mod hostile;
mod interest;
mod interop_js;
mod interop_py;
mod interop_rs;
mod jwks;
mod k8s;
mod lb;
mod limits;
mod measure;
mod membership;
mod metrics;
mod netns;
mod outage;
mod partition;
mod peer;
mod presence;
mod redis_modes;
mod routing;
mod scripts;
mod session;
mod slow;
mod startup;
mod topology;
