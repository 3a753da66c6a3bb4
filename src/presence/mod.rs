//! User-level presence across the cluster (docs/protocol.md §4).
//!
//! State machine per user, kept in Redis by the scripts of `lua/presence_*.lua`, each atomic on
//! the user's slot (`{<userId>}`):
//!
//! - `presence:user:{u}` — one field per live socket, key TTL `PRESENCE_TTL_SECS`;
//! - `presence:state:{u}` — the transition version: odd = online, even = offline. Every
//!   transition adds exactly one, inside the script that decides it, so each offline→online and
//!   online→offline transition is decided exactly once, by exactly one caller:
//!   connect (first field), disconnect (last field), refresh (sockets still live after their key
//!   expired and was claimed), claim (the key expired: keyspace notification or sweep).
//!
//! The deciding node publishes the transition on the backplane to the user's peers' `user:`
//! rooms, with its version. Two transitions of one user may be published by two nodes in the
//! other order; each node therefore remembers the last version it applied per user and drops
//! an older one, and skips a newer one of the same parity (its peers already show that state),
//! so no socket ever sees two consecutive events of the same kind for a user.

pub mod listener;
pub mod refresher;
pub mod sweep;

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::ConnectionManager;
use serde_json::json;

use crate::backplane::{Action, Backplane, PublishError};
use crate::chat::{Chats, user_room};
use crate::clock;
use crate::redis::{keys, scripts};

/// How long an offline version is remembered (after that a user starts a fresh, larger one).
const OFFLINE_MEMORY_SECS: u64 = 86_400;

/// Why a user went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    /// The user's last socket disconnected cleanly (or was drained / disconnected by the API).
    Disconnected,
    /// The user's presence key expired: client crash, node crash, network loss.
    Expired,
}

impl OfflineReason {
    /// Wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            OfflineReason::Disconnected => "disconnected",
            OfflineReason::Expired => "expired",
        }
    }
}

/// Errors of presence operations.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Redis refused or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Publishing a transition failed.
    #[error("backplane: {0}")]
    Publish(#[from] PublishError),
}

impl crate::error::StoreError for PresenceError {
    fn redis(&self) -> Option<&redis::RedisError> {
        match self {
            PresenceError::Redis(r) => Some(r),
            PresenceError::Publish(p) => p.redis(),
        }
    }
}

impl From<crate::chat::membership::MembershipError> for PresenceError {
    fn from(e: crate::chat::membership::MembershipError) -> Self {
        match e {
            crate::chat::membership::MembershipError::Redis(r) => PresenceError::Redis(r),
            crate::chat::membership::MembershipError::Publish(p) => PresenceError::Publish(p),
        }
    }
}

/// One of this node's live sockets, as presence records it.
#[derive(Debug, Clone)]
pub struct LocalSocket {
    /// Socket id.
    pub sid: String,
    /// When it connected (ISO 8601).
    pub connected_at: String,
}

/// One live socket of a user, as the server API shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    /// Socket id.
    pub socket_id: String,
    /// The node holding it.
    pub node_id: String,
    /// When it connected.
    pub connected_at: String,
}

/// The presence service of one node.
#[derive(Clone)]
pub struct Presence {
    conn: ConnectionManager,
    backplane: Backplane,
    chats: Chats,
    ttl: Duration,
}

impl Presence {
    /// A service over the node's shared connection.
    pub fn new(conn: ConnectionManager, backplane: Backplane, chats: Chats, ttl: Duration) -> Self {
        Presence {
            conn,
            backplane,
            chats,
            ttl,
        }
    }

    /// Loads the scripts into Redis's cache, so the first pipelined refresh does not fail with
    /// NOSCRIPT (it would be retried, but twice the work).
    pub async fn load_scripts(&self) {
        let mut conn = self.conn.clone();
        if let Err(e) = scripts::load_all(&mut conn).await {
            tracing::debug!(error = %e, "script preload failed; NOSCRIPT handling covers it");
        }
    }

    /// The presence key TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Fields not refreshed for this long belong to a dead node: live ones are refreshed every
    /// TTL/3, so two thirds of the TTL leaves one missed refresh of slack and still removes a
    /// dead node's field within the TTL.
    fn prune_before(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.ttl_ms() * 2 / 3)
    }

    fn field(&self, connected_at: &str, now_ms: u64) -> String {
        json!({ "nodeId": self.backplane.node_id(), "connectedAt": connected_at, "lastSeen": now_ms })
            .to_string()
    }

    /// Registers a new socket; tells the user's peers if the user just came online.
    /// Returns the user's peers, which the caller needs anyway for `presence:bulk-online`.
    pub async fn connect(
        &self,
        user: &str,
        socket: &LocalSocket,
    ) -> Result<Vec<String>, PresenceError> {
        let now = clock::now_ms();
        let field = self.field(&socket.connected_at, now);
        let call = scripts::presence_connect_call(user, &socket.sid, &field, self.ttl_ms(), now);
        let mut conn = self.conn.clone();
        let version: u64 = scripts::invoke(&scripts::PRESENCE_CONNECT, &mut conn, call).await?;
        self.track_deadlines(&[user.to_owned()], now).await?;
        let peers = self.peers(user).await?;
        if version > 0 {
            crate::metrics::presence_transition("online", "connect");
            self.publish_online(user, version, &peers).await?;
        }
        Ok(peers)
    }

    /// Removes a socket; tells the user's peers if it was the user's last one.
    pub async fn disconnect(&self, user: &str, sid: &str) -> Result<(), PresenceError> {
        let call = scripts::presence_disconnect_call(user, sid, OFFLINE_MEMORY_SECS);
        let mut conn = self.conn.clone();
        let version: u64 = scripts::invoke(&scripts::PRESENCE_DISCONNECT, &mut conn, call).await?;
        if version > 0 {
            crate::metrics::presence_transition("offline", "disconnected");
            let _: () = redis::cmd("ZREM")
                .arg(keys::PRESENCE_DEADLINES)
                .arg(user)
                .query_async(&mut conn)
                .await?;
            let peers = self.peers(user).await?;
            self.publish_offline(user, version, OfflineReason::Disconnected, &peers)
                .await?;
        }
        Ok(())
    }

    /// Refreshes this node's live sockets, grouped by user, in one pipeline; publishes the
    /// transitions of users who had been claimed offline while their sockets lived.
    pub async fn refresh(&self, users: &[(String, Vec<LocalSocket>)]) -> Result<(), PresenceError> {
        if users.is_empty() {
            return Ok(());
        }
        let now = clock::now_ms();
        let mut pipe = redis::pipe();
        for (user, sockets) in users {
            let fields: Vec<(String, String)> = sockets
                .iter()
                .map(|s| (s.sid.clone(), self.field(&s.connected_at, now)))
                .collect();
            let call = scripts::presence_refresh_call(
                user,
                self.ttl_ms(),
                now,
                self.prune_before(now),
                &fields,
            );
            scripts::pipe_invoke(&mut pipe, &scripts::PRESENCE_REFRESH, call);
        }
        let mut conn = self.conn.clone();
        let first = pipe.query_async(&mut conn);
        let versions: Vec<u64> = match crate::metrics::redis_op("refresh_pipeline", first).await {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and lost its script cache: load and try once more.
                scripts::load_all(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e.into()),
        };
        let names: Vec<String> = users.iter().map(|(u, _)| u.clone()).collect();
        self.track_deadlines(&names, now).await?;
        for ((user, _), version) in users.iter().zip(versions) {
            if version > 0 {
                crate::metrics::presence_transition("online", "refresh");
                let peers = self.peers(user).await?;
                self.publish_online(user, version, &peers).await?;
            }
        }
        Ok(())
    }

    /// Tries to turn an expiry of `user`'s key into the offline transition; publishes it when
    /// this caller won, and drops the user's sweep deadline once the key is gone. Returns the
    /// key's remaining TTL in ms when the user is still online.
    pub async fn claim_expiry(&self, user: &str) -> Result<Option<i64>, PresenceError> {
        let call = scripts::presence_claim_call(user, OFFLINE_MEMORY_SECS);
        let mut conn = self.conn.clone();
        let (claimed, value): (i64, i64) =
            scripts::invoke(&scripts::PRESENCE_CLAIM, &mut conn, call).await?;
        if claimed == 0 && value >= 0 {
            return Ok(Some(value));
        }
        // The key is gone, whoever turned it into the offline transition: its deadline too.
        let _: () = redis::cmd("ZREM")
            .arg(keys::PRESENCE_DEADLINES)
            .arg(user)
            .query_async(&mut conn)
            .await?;
        if claimed == 1 {
            crate::metrics::presence_transition("offline", "expired");
            let peers = self.peers(user).await?;
            self.publish_offline(user, value as u64, OfflineReason::Expired, &peers)
                .await?;
        }
        Ok(None)
    }

    /// The users who share at least one chat with `user` (never `user` itself).
    pub async fn peers(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        let chats = self.chats.chats_of(user).await?;
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chat in &chats {
            pipe.cmd("SMEMBERS").arg(self.chats.members_key(chat));
        }
        let mut conn = self.conn.clone();
        let lists: Vec<Vec<String>> =
            crate::metrics::redis_op("smembers_pipeline", pipe.query_async(&mut conn)).await?;
        let mut peers: Vec<String> = lists
            .into_iter()
            .flatten()
            .filter(|p| p != user)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        peers.sort();
        Ok(peers)
    }

    /// Which of `users` are online (their presence key exists).
    pub async fn online_among(&self, users: &[String]) -> Result<Vec<String>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("EXISTS").arg(keys::presence_user(u));
        }
        let mut conn = self.conn.clone();
        let exists: Vec<bool> =
            crate::metrics::redis_op("exists_pipeline", pipe.query_async(&mut conn)).await?;
        Ok(users
            .iter()
            .zip(exists)
            .filter(|(_, e)| *e)
            .map(|(u, _)| u.clone())
            .collect())
    }

    /// The live sockets of each of `users` (`GET /api/v1/presence`): fields whose node stopped
    /// refreshing them are left out.
    pub async fn sockets_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<SocketInfo>)>, PresenceError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HGETALL").arg(keys::presence_user(u));
        }
        let mut conn = self.conn.clone();
        let all: Vec<Vec<(String, String)>> = pipe.query_async(&mut conn).await?;
        let fresh_after = self.prune_before(clock::now_ms());
        Ok(users
            .iter()
            .zip(all)
            .map(|(u, fields)| {
                let mut sockets: Vec<SocketInfo> = fields
                    .into_iter()
                    .filter_map(|(sid, json)| {
                        let v: serde_json::Value = serde_json::from_str(&json).ok()?;
                        (v["lastSeen"].as_u64()? >= fresh_after).then(|| SocketInfo {
                            socket_id: sid,
                            node_id: v["nodeId"].as_str().unwrap_or_default().to_owned(),
                            connected_at: v["connectedAt"].as_str().unwrap_or_default().to_owned(),
                        })
                    })
                    .collect();
                sockets.sort_by(|a, b| a.socket_id.cmp(&b.socket_id));
                (u.clone(), sockets)
            })
            .collect())
    }

    /// How many sockets `user` has registered across the cluster (fields of its presence hash;
    /// a dead node's fields count until they are pruned, within the TTL).
    pub async fn socket_count(&self, user: &str) -> Result<usize, PresenceError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("HLEN")
            .arg(keys::presence_user(user))
            .query_async(&mut conn)
            .await?)
    }

    /// `user`'s online peers (for `presence:bulk-online`).
    pub async fn online_peers(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        let peers = self.peers(user).await?;
        self.online_among(&peers).await
    }

    /// Which of `asked` are online, restricted to `user`'s peers (docs/protocol.md §8).
    pub async fn query(&self, user: &str, asked: &[String]) -> Result<Vec<String>, PresenceError> {
        let peers: HashSet<String> = self.peers(user).await?.into_iter().collect();
        let mut wanted: Vec<String> = asked
            .iter()
            .filter(|u| peers.contains(*u))
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        self.online_among(&wanted).await
    }

    /// Makes users who just started sharing a chat learn each other's current state: for each
    /// pair that was not already peers, an online user is announced to the other one.
    /// `before` holds each added user's peers before the change.
    pub async fn introduce(
        &self,
        chat_id: &str,
        added: &[(String, Vec<String>)],
    ) -> Result<(), PresenceError> {
        let members = self.chats.members(chat_id).await?;
        let online: HashSet<String> = self.online_among(&members).await?.into_iter().collect();
        let now = clock::now_iso();
        // (to, about) pairs: two users added together are a new pair seen from both sides, but
        // each must hear of the other once.
        let mut told: HashSet<(&str, &str)> = HashSet::new();
        let mut envelope = Vec::new();
        for (user, before) in added {
            let new_peers = members.iter().filter(|m| *m != user && !before.contains(m));
            for peer in new_peers {
                for (to, about) in [
                    (user.as_str(), peer.as_str()),
                    (peer.as_str(), user.as_str()),
                ] {
                    if online.contains(about) && told.insert((to, about)) {
                        envelope.push(presence_emit(to, about, &now)?);
                    }
                }
            }
        }
        if !envelope.is_empty() {
            self.backplane.publish(chat_id, &envelope).await?;
        }
        Ok(())
    }

    async fn track_deadlines(&self, users: &[String], now_ms: u64) -> Result<(), PresenceError> {
        let deadline = now_ms + self.ttl_ms();
        let mut cmd = redis::cmd("ZADD");
        cmd.arg(keys::PRESENCE_DEADLINES);
        for u in users {
            cmd.arg(deadline).arg(u);
        }
        let mut conn = self.conn.clone();
        let _: () = cmd.query_async(&mut conn).await?;
        Ok(())
    }

    async fn publish_online(
        &self,
        user: &str,
        version: u64,
        peers: &[String],
    ) -> Result<(), PresenceError> {
        let data = json!({ "userId": user, "timestamp": clock::now_iso() });
        self.publish_transition(user, version, "presence:online", data, peers)
            .await
    }

    async fn publish_offline(
        &self,
        user: &str,
        version: u64,
        reason: OfflineReason,
        peers: &[String],
    ) -> Result<(), PresenceError> {
        let data =
            json!({ "userId": user, "timestamp": clock::now_iso(), "reason": reason.as_str() });
        self.publish_transition(user, version, "presence:offline", data, peers)
            .await
    }

    async fn publish_transition(
        &self,
        user: &str,
        version: u64,
        event: &str,
        data: serde_json::Value,
        peers: &[String],
    ) -> Result<(), PresenceError> {
        if peers.is_empty() {
            return Ok(());
        }
        let action = Action::Presence {
            user: user.to_owned(),
            version,
            rooms: peers.iter().map(|p| user_room(p)).collect(),
            event: event.to_owned(),
            data: serde_json::value::to_raw_value(&data).map_err(PublishError::from)?,
        };
        self.backplane.publish(user, &vec![action]).await?;
        Ok(())
    }
}

/// An unversioned `presence:online` of `about` for `to`'s sockets.
fn presence_emit(to: &str, about: &str, now: &str) -> Result<Action, PresenceError> {
    Action::emit(
        vec![user_room(to)],
        "presence:online",
        &json!({ "userId": about, "timestamp": now }),
    )
    .map_err(|e| PresenceError::Publish(e.into()))
}
