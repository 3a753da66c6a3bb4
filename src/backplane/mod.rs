//! The backplane: how an event reaches the sockets of every node.
//!
//! Redis Streams model: a fixed number of shard streams (`fanout:{s<n>}:bp`, see
//! [`crate::redis::keys::backplane_shard`]). Every cross-node event is an [`Envelope`] — a list of
//! room [`Action`]s — appended with `XADD MAXLEN ~` to the shard of its routing key (a chat id,
//! a user id). One routing key always maps to one shard, and one stream is totally ordered, so
//! everything about one chat (its messages, typing, membership changes, deletion) is seen by
//! every node in the same order. Every node, the sending node included, reads all shards on its
//! own blocking connection ([`reader`]) and applies the actions to its local sockets
//! ([`deliver`]); sockets stay in socketioxide's local adapter, so delivery is an in-memory room
//! lookup. [`sampling`] reports each shard's length; [`canary`] proves, every few seconds and
//! per shard, that what this node appends comes back through its reader.
//!
//! Guarantees: an envelope whose `XADD` returned is applied by every node that is reading at
//! that time, exactly once, in stream order. A reader that loses Redis resumes from the last id
//! it applied, so nothing is skipped while the node lives; a starting node begins at the newest
//! entry (it has no sockets that could have missed anything).

pub mod canary;
pub mod deliver;
pub mod frame;
pub mod reader;
pub mod sampling;

use crate::redis::Conn;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::redis::keys;
use crate::redis::scripts::{self, publish_once};

/// One thing a node does to its local sockets.
#[derive(Debug, Clone, Serialize, Deserialize)]
// Externally tagged (`{"emit": {..}}`): an internally tagged enum buffers its content, and
// a buffered value cannot become the `RawValue` that spares delivery a re-parse.
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Emit `event` with `data` to the local sockets in any of `rooms` (each socket once),
    /// except those in any of `except`, and except socket `exceptSid` on the node that published
    /// the envelope.
    #[serde(rename_all = "camelCase")]
    Emit {
        /// Target rooms.
        rooms: Vec<String>,
        /// Rooms whose sockets are skipped.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<String>,
        /// The socket that caused the event, skipped on its own node (e.g. the typist).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        except_sid: Option<String>,
        /// Socket.IO event name.
        event: String,
        /// Event payload, kept as raw JSON so a node forwards it without re-parsing.
        data: Box<RawValue>,
    },
    /// A presence transition of `user`: emitted to `rooms` (the user's peers) unless this node
    /// already applied a newer version of that user, or one of the same parity (same state).
    Presence {
        /// Whose transition.
        user: String,
        /// Transition version (odd = online).
        version: u64,
        /// The peers' `user:` rooms.
        rooms: Vec<String>,
        /// `presence:online` or `presence:offline`.
        event: String,
        /// Event payload.
        data: Box<RawValue>,
    },
    /// Disconnect the local sockets in any of `of` (e.g. a user's sockets, by the server API).
    Disconnect {
        /// Selector rooms.
        of: Vec<String>,
    },
    /// Make the local sockets in any of `of` join the rooms `join`.
    Join {
        /// Selector rooms (e.g. `user:{id}`).
        of: Vec<String>,
        /// Rooms to join.
        join: Vec<String>,
    },
    /// Make the local sockets in any of `of` leave the rooms `leave`.
    Leave {
        /// Selector rooms.
        of: Vec<String>,
        /// Rooms to leave.
        leave: Vec<String>,
    },
}

impl Action {
    /// True when the action names no room. socketioxide reads an empty room list as "every
    /// socket", so such an action must be skipped, never applied.
    pub fn selects_nobody(&self) -> bool {
        match self {
            Action::Emit { rooms, .. } | Action::Presence { rooms, .. } => rooms.is_empty(),
            Action::Join { of, .. } | Action::Leave { of, .. } | Action::Disconnect { of } => {
                of.is_empty()
            }
        }
    }

    /// An [`Action::Emit`] with a serializable payload.
    pub fn emit(
        rooms: Vec<String>,
        event: &str,
        data: &impl Serialize,
    ) -> Result<Action, serde_json::Error> {
        Ok(Action::Emit {
            rooms,
            except: Vec::new(),
            except_sid: None,
            event: event.to_owned(),
            data: serde_json::value::to_raw_value(data)?,
        })
    }
}

/// What one stream entry carries: actions applied in order, atomically with respect to other
/// entries.
pub type Envelope = Vec<Action>;

/// Stream field holding the JSON envelope.
pub const FIELD_ENVELOPE: &str = "e";
/// Stream field holding the publishing node's id.
pub const FIELD_ORIGIN: &str = "n";
/// Stream field of a canary entry: its token ([`canary`]). Its envelope is empty.
pub const FIELD_CANARY: &str = "c";

/// Errors of [`Backplane::publish`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The envelope could not be serialized (a bug).
    #[error("envelope serialization: {0}")]
    Encode(#[from] serde_json::Error),
    /// Redis refused or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl crate::error::StoreError for PublishError {
    fn redis(&self) -> Option<&redis::RedisError> {
        match self {
            PublishError::Redis(r) => Some(r),
            PublishError::Encode(_) => None,
        }
    }
}

/// The publishing half of the backplane.
#[derive(Clone)]
pub struct Backplane {
    conn: Conn,
    node_id: String,
    shards: u16,
    maxlen: u64,
}

impl Backplane {
    /// A publisher over the node's shared command connection.
    pub fn new(conn: Conn, node_id: String, shards: u16, maxlen: u64) -> Self {
        Backplane {
            conn,
            node_id,
            shards,
            maxlen,
        }
    }

    /// Number of shard streams.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The publishing node's id (stream field `n`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Approximate MAXLEN of each shard stream.
    pub fn maxlen(&self) -> u64 {
        self.maxlen
    }

    /// Appends `envelope` to the shard of `routing_key`; returns the stream entry id.
    pub async fn publish(
        &self,
        routing_key: &str,
        envelope: &Envelope,
    ) -> Result<String, PublishError> {
        let body = serde_json::to_string(envelope)?;
        let key = keys::backplane_shard(keys::shard_of(routing_key, self.shards));
        let mut conn = self.conn.clone();
        let xadd = self.append(&key, &body);
        let id: String = crate::metrics::redis_op("xadd", xadd.query_async(&mut conn)).await?;
        Ok(id)
    }

    /// The `XADD` of one entry to shard stream `key`: this node's id and the envelope's JSON,
    /// the stream trimmed to about `BACKPLANE_MAXLEN`. Events and canaries travel alike.
    fn append(&self, key: &str, envelope_json: &str) -> redis::Cmd {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*")
            .arg(FIELD_ORIGIN)
            .arg(&self.node_id)
            .arg(FIELD_ENVELOPE)
            .arg(envelope_json);
        xadd
    }

    /// Appends this node's canary `token` to `shard`, exactly as [`publish`](Self::publish)
    /// appends events, with an empty envelope: no node applies anything for it.
    pub async fn publish_canary(&self, shard: u16, token: u64) -> redis::RedisResult<String> {
        let mut conn = self.conn.clone();
        let mut xadd = self.append(&keys::backplane_shard(shard), "[]");
        xadd.arg(FIELD_CANARY).arg(token);
        crate::metrics::redis_op("xadd_canary", xadd.query_async(&mut conn)).await
    }

    /// The length of every shard stream, index = shard (one pipelined round trip).
    pub async fn shard_lengths(&self) -> redis::RedisResult<Vec<u64>> {
        let mut pipe = redis::pipe();
        for shard in 0..self.shards {
            pipe.cmd("XLEN").arg(keys::backplane_shard(shard));
        }
        let mut conn = self.conn.clone();
        crate::metrics::redis_op("xlen_pipeline", pipe.query_async(&mut conn)).await
    }

    /// Like [`publish`](Self::publish), at most once per `idempotency_key` within `ttl_secs`:
    /// returns the entry id and whether this call published it (false: a repeat).
    pub async fn publish_once(
        &self,
        routing_key: &str,
        idempotency_key: &str,
        ttl_secs: u64,
        envelope: &Envelope,
    ) -> Result<(String, bool), PublishError> {
        let call = publish_once::call(
            keys::shard_of(routing_key, self.shards),
            idempotency_key,
            ttl_secs,
            self.maxlen,
            &self.node_id,
            serde_json::to_string(envelope)?,
        );
        let mut conn = self.conn.clone();
        let reply = scripts::invoke(&publish_once::SCRIPT, &mut conn, call).await?;
        let once = publish_once::parse(&reply)?;
        Ok((once.entry_id, once.new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let env: Envelope = vec![
            Action::Join {
                of: vec!["user:a".into()],
                join: vec!["chat:1".into()],
            },
            Action::emit(
                vec!["chat:1".into()],
                "chat:created",
                &serde_json::json!({"x": 1}),
            )
            .unwrap(),
        ];
        let s = serde_json::to_string(&env).unwrap();
        let back: Envelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back.len(), 2);
        match &back[1] {
            Action::Emit { event, data, .. } => {
                assert_eq!(event, "chat:created");
                assert_eq!(data.get(), r#"{"x":1}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
