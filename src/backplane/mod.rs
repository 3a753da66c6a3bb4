//! The backplane: how an event reaches the sockets of the nodes that have sockets for it.
//!
//! Interest routing (docs/architecture.md §2): every room has a pub/sub channel
//! ([`crate::redis::keys::room_channel`]), and a node subscribes to a room's channel only while
//! it has a local socket in that room ([`interest`]). A cross-node event is an [`Envelope`] — a
//! list of room [`Action`]s — that [`Backplane::publish`] cuts into one [`frame::Frame`] per room
//! it targets ([`route`]), each published to that room's channel: a node pays only for the rooms
//! it serves, and Redis sends each frame to the subscribed nodes only. Every node applies what
//! arrives on its one subscriber connection ([`subscriber`]) to its local sockets ([`deliver`]);
//! sockets stay in socketioxide's local adapter, so delivery is an in-memory room lookup.
//! [`canary`] proves, every few seconds, that what this node publishes comes back through that
//! connection.
//!
//! Guarantees: chat messages are appended to the chat's log (the log of record, offsets
//! `1, 2, …` per epoch) and published from the same script; a node tracks each subscribed chat's
//! last offset and fills any gap from the log before delivering anything newer, so an accepted
//! message reaches every member socket on every node exactly once, in offset order — across a
//! lost notification, a dropped subscriber connection, a late subscription and a Redis restart.
//! Other events (typing, read receipts, presence, membership, server API publishes) are
//! delivered at most once: what is published while a node's subscriber connection is down does
//! not reach that node (docs/architecture.md lists each case and what the node does).

pub mod canary;
pub mod deliver;
pub mod frame;
pub mod interest;
pub mod order;
pub mod subscriber;

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

/// Errors of [`Backplane::publish`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The envelope could not be serialized (a bug).
    #[error("envelope serialization: {0}")]
    Encode(#[from] serde_json::Error),
    /// Redis refused or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Published, but fewer than `wanted` replicas confirmed the idempotency record in time.
    #[error("confirmed by {confirmed} of {wanted} replicas in time")]
    NotReplicated {
        /// Replicas that confirmed.
        confirmed: u32,
        /// `REDIS_WAIT_REPLICAS`.
        wanted: u32,
    },
}

impl crate::error::StoreError for PublishError {
    fn redis(&self) -> Option<&redis::RedisError> {
        match self {
            PublishError::Redis(r) => Some(r),
            PublishError::Encode(_) | PublishError::NotReplicated { .. } => None,
        }
    }

    fn not_replicated(&self) -> Option<(u32, u32)> {
        match self {
            PublishError::NotReplicated { confirmed, wanted } => Some((*confirmed, *wanted)),
            _ => None,
        }
    }
}

/// The publishing half of the backplane.
#[derive(Clone)]
pub struct Backplane {
    conn: Conn,
    node_id: String,
    publish_command: &'static str,
    /// `REDIS_WAIT_REPLICAS` > 0: how idempotent publishes are confirmed.
    confirm: Option<crate::redis::Confirm>,
}

impl Backplane {
    /// A publisher over the node's shared command connection. Frames go out with `PUBLISH`
    /// (one Redis, Sentinel); Redis Cluster uses `SPUBLISH` ([`Backplane::sharded`]).
    pub fn new(conn: Conn, node_id: String) -> Self {
        Backplane {
            conn,
            node_id,
            publish_command: "PUBLISH",
            confirm: None,
        }
    }

    /// The same publisher confirming every idempotent publish ([`Self::publish_once`]) with
    /// `WAIT replicas timeout` (`REDIS_WAIT_REPLICAS`): a repeat after a master's failover then
    /// finds the record instead of publishing again.
    pub fn with_wait(mut self, confirm: crate::redis::Confirm) -> Self {
        self.confirm = Some(confirm);
        self
    }

    /// The same publisher using sharded pub/sub (`SPUBLISH`): on Redis Cluster a frame then
    /// travels only through the master that owns the room's slot.
    pub fn sharded(mut self) -> Self {
        self.publish_command = "SPUBLISH";
        self
    }

    /// `PUBLISH` or `SPUBLISH`: what frames (and `chat_send.lua`) publish with.
    pub fn publish_command(&self) -> &'static str {
        self.publish_command
    }

    /// The publishing node's id (frame field `n`).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Publishes `envelope` to the channel of every room it targets (one pipelined round trip);
    /// returns the publish's id (a UUIDv7, for the server API's answer).
    pub async fn publish(&self, envelope: &Envelope) -> Result<String, PublishError> {
        let id = uuid::Uuid::now_v7().to_string();
        let routes = route(envelope);
        if routes.is_empty() {
            return Ok(id);
        }
        let mut pipe = redis::pipe();
        for (room, actions) in &routes {
            pipe.cmd(self.publish_command)
                .arg(keys::room_channel(room))
                .arg(frame::Frame::to_json(&self.node_id, actions)?)
                .ignore();
        }
        let mut conn = self.conn.clone();
        crate::metrics::redis_op("publish_pipeline", pipe.query_async::<()>(&mut conn)).await?;
        Ok(id)
    }

    /// Publishes this node's canary `token` to its own channel, through the same command as
    /// every frame.
    pub async fn publish_canary(&self, token: u64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd(self.publish_command);
        cmd.arg(keys::node_channel(&self.node_id)).arg(token);
        crate::metrics::redis_op("publish_canary", cmd.query_async::<()>(&mut conn)).await
    }

    /// Like [`publish`](Self::publish), at most once per `idempotency_key` within `ttl_secs`:
    /// returns the publish id and whether this call published it (false: a repeat, whose id is
    /// the first publish's). The key lives on the slot of the envelope's first room, and the
    /// check, the record and that room's frame are one atomic step (`publish_once.lua`); the
    /// frames of further rooms follow from the node.
    pub async fn publish_once(
        &self,
        idempotency_key: &str,
        ttl_secs: u64,
        envelope: &Envelope,
    ) -> Result<(String, bool), PublishError> {
        let id = uuid::Uuid::now_v7().to_string();
        let routes = route(envelope);
        let Some((first_room, first_actions)) = routes.first() else {
            return Ok((id, true));
        };
        let call = publish_once::call(
            first_room,
            idempotency_key,
            ttl_secs,
            &id,
            self.publish_command,
            frame::Frame::to_json(&self.node_id, first_actions)?,
        );
        let reply = if let Some(confirm) = &self.confirm {
            let (reply, short) = confirm.invoke(&publish_once::SCRIPT, call).await?;
            if let Some(crate::redis::Shortfall { confirmed, wanted }) = short {
                return Err(PublishError::NotReplicated { confirmed, wanted });
            }
            reply
        } else {
            let mut conn = self.conn.clone();
            scripts::invoke(&publish_once::SCRIPT, &mut conn, call).await?
        };
        let once = publish_once::parse(&reply)?;
        if !once.new {
            return Ok((once.id, false));
        }
        if routes.len() > 1 {
            let mut pipe = redis::pipe();
            for (room, actions) in &routes[1..] {
                pipe.cmd(self.publish_command)
                    .arg(keys::room_channel(room))
                    .arg(frame::Frame::to_json(&self.node_id, actions)?)
                    .ignore();
            }
            let mut conn = self.conn.clone();
            crate::metrics::redis_op("publish_pipeline", pipe.query_async::<()>(&mut conn)).await?;
        }
        Ok((once.id, true))
    }
}

/// Cuts an envelope into one envelope per room it targets, rooms in order of first mention,
/// each room's actions in envelope order. Every action names one room in its copy, so a node
/// applies exactly what its subscriptions brought:
/// - `Join`/`Leave`/`Disconnect` of several rooms become one per room (applying one twice is
///   harmless, and a socket sits in one `user:` room only);
/// - `Presence` to several peer rooms becomes one per room (the version check is per user and
///   room, see [`deliver`]);
/// - `Emit` to rooms `r1..rn` becomes, for `ri`, an emit to `ri` that also skips the earlier
///   rooms `r1..r(i-1)`, so a socket in several of them gets the event once — through the
///   first of its rooms, whose channel its node also subscribes to. `user:` rooms are left out
///   of those skip lists: a socket is in exactly one of them.
pub fn route(envelope: &Envelope) -> Vec<(String, Envelope)> {
    let mut routes: Vec<(String, Envelope)> = Vec::new();
    let mut push = |room: &str, action: Action| match routes.iter_mut().find(|(r, _)| r == room) {
        Some((_, actions)) => actions.push(action),
        None => routes.push((room.to_owned(), vec![action])),
    };
    for action in envelope.iter().filter(|a| !a.selects_nobody()) {
        match action {
            Action::Emit {
                rooms,
                except,
                except_sid,
                event,
                data,
            } => {
                let mut earlier: Vec<String> = Vec::new();
                for room in unique(rooms) {
                    let mut skip = except.clone();
                    skip.extend(earlier.iter().cloned());
                    push(
                        room,
                        Action::Emit {
                            rooms: vec![room.clone()],
                            except: skip,
                            except_sid: except_sid.clone(),
                            event: event.clone(),
                            data: data.clone(),
                        },
                    );
                    if !room.starts_with("user:") {
                        earlier.push(room.clone());
                    }
                }
            }
            Action::Presence {
                user,
                version,
                rooms,
                event,
                data,
            } => {
                for room in unique(rooms) {
                    push(
                        room,
                        Action::Presence {
                            user: user.clone(),
                            version: *version,
                            rooms: vec![room.clone()],
                            event: event.clone(),
                            data: data.clone(),
                        },
                    );
                }
            }
            Action::Disconnect { of } => {
                for room in unique(of) {
                    push(
                        room,
                        Action::Disconnect {
                            of: vec![room.clone()],
                        },
                    );
                }
            }
            Action::Join { of, join } => {
                for room in unique(of) {
                    push(
                        room,
                        Action::Join {
                            of: vec![room.clone()],
                            join: join.clone(),
                        },
                    );
                }
            }
            Action::Leave { of, leave } => {
                for room in unique(of) {
                    push(
                        room,
                        Action::Leave {
                            of: vec![room.clone()],
                            leave: leave.clone(),
                        },
                    );
                }
            }
        }
    }
    routes
}

/// `rooms` without repeats, in order.
fn unique(rooms: &[String]) -> impl Iterator<Item = &String> {
    rooms
        .iter()
        .enumerate()
        .filter(|(i, r)| !rooms[..*i].contains(r))
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Box<RawValue> {
        serde_json::value::to_raw_value(&serde_json::json!({"x": 1})).unwrap()
    }

    fn rooms_of(a: &Action) -> (Vec<String>, Vec<String>) {
        match a {
            Action::Emit { rooms, except, .. } => (rooms.clone(), except.clone()),
            Action::Presence { rooms, .. } => (rooms.clone(), Vec::new()),
            Action::Join { of, .. } | Action::Leave { of, .. } | Action::Disconnect { of } => {
                (of.clone(), Vec::new())
            }
        }
    }

    #[test]
    fn route_gives_each_room_its_own_actions_in_order_and_each_socket_one_copy() {
        let envelope: Envelope = vec![
            Action::Join {
                of: vec!["user:a".into(), "user:b".into()],
                join: vec!["chat:1".into()],
            },
            Action::Emit {
                rooms: vec![
                    "chat:1".into(),
                    "user:a".into(),
                    "role:x".into(),
                    "chat:1".into(),
                ],
                except: vec!["user:z".into()],
                except_sid: None,
                event: "e".into(),
                data: raw(),
            },
            Action::Presence {
                user: "u".into(),
                version: 3,
                rooms: vec!["user:a".into(), "user:b".into()],
                event: "presence:online".into(),
                data: raw(),
            },
            Action::Join {
                of: vec![],
                join: vec!["chat:9".into()],
            },
        ];
        let routes = route(&envelope);
        let rooms: Vec<&str> = routes.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rooms, ["user:a", "user:b", "chat:1", "role:x"]);
        let a = &routes[0].1;
        assert_eq!(a.len(), 3, "join, emit, presence for user:a");
        assert!(matches!(a[0], Action::Join { .. }));
        // The emit to user:a skips sockets of chat:1 (they get it through chat:1), not user:z's.
        assert_eq!(
            rooms_of(&a[1]),
            (
                vec!["user:a".into()],
                vec!["user:z".into(), "chat:1".into()]
            )
        );
        assert_eq!(rooms_of(&a[2]).0, ["user:a"]);
        // role:x skips chat:1 too, but not user:a (a socket is in one user room only... and
        // user rooms never shadow others).
        assert_eq!(
            rooms_of(&routes[3].1[0]),
            (
                vec!["role:x".into()],
                vec!["user:z".into(), "chat:1".into()]
            )
        );
        // chat:1 is first among the emit's rooms: it skips nothing but the request's own except.
        assert_eq!(
            rooms_of(&routes[2].1[0]),
            (vec!["chat:1".into()], vec!["user:z".into()])
        );
        assert!(route(&vec![]).is_empty());
    }

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
