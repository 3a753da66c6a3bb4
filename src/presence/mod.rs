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
//!
//! Every Redis command of the domain lives in [`store`]; chat membership (who a user's peers
//! are) is asked of [`Chats`], never read from chat keys here.

pub mod introduce;
pub mod listener;
pub mod refresher;
pub mod rule;
pub mod store;
pub mod sweep;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::redis::Conn;
use serde_json::json;

use crate::backplane::deliver::{CatchUpRead, PresenceCatchUp, PresenceVersions};
use crate::backplane::{Action, Backplane};
use crate::chat::{Chats, user_room};
use crate::clock;
use crate::error::DomainError;
use crate::redis::scripts::presence_claim::Claim;
use crate::redis::scripts::presence_refresh::Refreshed;
use store::{PresenceStore, SocketField};

/// Who claims an expiry ([`Presence::claim_expiry`]); it decides what a claim that finds the
/// user already offline does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimer {
    /// A keyspace listener, told that the key expired: every node's listener hears it and one
    /// wins the claim; the others have nothing to do (not even drop the deadline).
    Listener,
    /// The sweep, which found the user's deadline still there. A claimer drops the deadline
    /// only after it published the offline, so one that failed or died in between left it:
    /// the sweep publishes that offline version again (peers drop a version they applied).
    Sweep,
}

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

/// Errors of presence operations (the one domain error; the name stays for callers).
pub type PresenceError = DomainError;

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
    store: PresenceStore,
    backplane: Backplane,
    chats: Chats,
    ttl: Duration,
    /// What this node's peer rooms were shown, shared with the deliverer: the connect path
    /// records `presence:bulk-online` in it, so a catch-up knows what each room believes.
    shown: Arc<PresenceVersions>,
}

/// Users whose versions a catch-up reads in one pipeline. Small, and one pipeline at a time: on
/// a Cluster a pipeline is cut by slot, and many requests in flight while redis-rs recovers
/// from a failover is what wedges its connection (docs/reliability.md); a chunk that meets a
/// dead master fails alone. (A first version sent one `GET` per user, all at once: the
/// connection of a node wedged again after each replacement, for 22 s.)
const CATCH_UP_CHUNK: usize = 100;

/// A `presence:bulk-online` snapshot is remembered for a catch-up only when the user has at
/// most this many peers: each remembered (peer, room) pair costs the node ~130 bytes for as
/// long as the room lives (docs/architecture.md section 5), and a user of many peers would cost
/// more than a socket does.
/// Transitions this node shows are remembered whatever the number.
pub const SNAPSHOT_PEERS_MAX: usize = 100;

impl Presence {
    /// A service over the node's shared connection.
    pub fn new(conn: Conn, backplane: Backplane, chats: Chats, ttl: Duration) -> Self {
        Presence {
            store: PresenceStore::new(conn),
            backplane,
            chats,
            ttl,
            shown: Arc::default(),
        }
    }

    /// Shares `shown` with the node's deliverer ([`crate::backplane::deliver::Deliverer::
    /// with_presence`]).
    pub fn with_shown(mut self, shown: Arc<PresenceVersions>) -> Self {
        self.shown = shown;
        self
    }

    /// Loads the scripts into Redis's cache, so the first pipelined refresh does not fail with
    /// NOSCRIPT (it would be retried, but twice the work).
    pub async fn load_scripts(&self) {
        if let Err(e) = self.store.load_scripts().await {
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

    /// The oldest `lastSeen` that counts at `now_ms` ([`rule::fresh_after`]): every path asks
    /// this one function, so none can disagree about a dead node's field.
    fn fresh_after(&self, now_ms: u64) -> u64 {
        rule::fresh_after(now_ms, self.ttl_ms())
    }

    fn field(&self, connected_at: &str, now_ms: u64) -> SocketField {
        SocketField {
            node_id: self.backplane.node_id().to_owned(),
            connected_at: connected_at.to_owned(),
            last_seen: now_ms,
        }
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
        let came_online = self
            .store
            .connect(
                user,
                &socket.sid,
                &field,
                self.ttl_ms(),
                self.fresh_after(now),
            )
            .await?;
        self.track_deadlines(&[user], now).await?;
        let peers = self.peers(user).await?;
        if let Some(version) = came_online {
            crate::metrics::presence_transition("online", "connect");
            self.publish_online(user, version, &peers).await?;
        }
        Ok(peers)
    }

    /// Removes a socket; tells the user's peers if it was the user's last one that counts.
    pub async fn disconnect(&self, user: &str, sid: &str) -> Result<(), PresenceError> {
        let fresh_after = self.fresh_after(clock::now_ms());
        if let Some(version) = self.store.disconnect(user, sid, fresh_after).await? {
            crate::metrics::presence_transition("offline", "disconnected");
            let peers = self.peers(user).await?;
            self.publish_offline(user, version, OfflineReason::Disconnected, &peers)
                .await?;
            // After the publish, as in `claim_expiry`: if it failed, the sweep publishes this
            // offline (with reason `expired`).
            self.store.drop_deadline(user).await?;
        }
        Ok(())
    }

    /// The Redis Cluster master that serves `user`'s presence now, if known; `None` on one
    /// Redis and on Sentinel. The refresher groups users by it, so that one master's outage
    /// fails only its own users' refresh.
    pub fn master_of(&self, user: &str) -> Option<std::sync::Arc<str>> {
        self.store.master_of(user)
    }

    /// Refreshes this node's live sockets, grouped by user, in one pipeline; publishes the
    /// transitions of users who had been claimed offline while their sockets lived. With
    /// `report` (the caller lost the reply of an earlier refresh, which may have run anyway and
    /// decided a transition nobody published) it also publishes each online user's current
    /// version; peers drop a version they already applied.
    pub async fn refresh(
        &self,
        users: &[(String, Vec<LocalSocket>)],
        report: bool,
    ) -> Result<(), PresenceError> {
        if users.is_empty() {
            return Ok(());
        }
        let now = clock::now_ms();
        let fields: Vec<(&str, Vec<(String, SocketField)>)> = users
            .iter()
            .map(|(user, sockets)| {
                let fields = sockets
                    .iter()
                    .map(|s| (s.sid.clone(), self.field(&s.connected_at, now)))
                    .collect();
                (user.as_str(), fields)
            })
            .collect();
        let versions = self
            .store
            .refresh(&fields, self.ttl_ms(), now, self.fresh_after(now), report)
            .await?;
        let names: Vec<&str> = users.iter().map(|(u, _)| u.as_str()).collect();
        self.track_deadlines(&names, now).await?;
        for ((user, _), found) in users.iter().zip(versions) {
            let version = match found {
                Refreshed::Quiet => continue,
                Refreshed::CameOnline(v) => {
                    crate::metrics::presence_transition("online", "refresh");
                    v
                }
                Refreshed::Online(v) => v,
            };
            let peers = self.peers(user).await?;
            self.publish_online(user, version, &peers).await?;
        }
        Ok(())
    }

    /// Tries to turn an expiry of `user`'s key into the offline transition; publishes it when
    /// this caller won (or, for the [`Claimer::Sweep`], when the claimer may not have), and
    /// drops the user's sweep deadline once the key is gone and the offline published. Returns
    /// the key's remaining TTL in ms when the user is still online.
    pub async fn claim_expiry(
        &self,
        user: &str,
        claimer: Claimer,
    ) -> Result<Option<i64>, PresenceError> {
        let fresh_after = self.fresh_after(clock::now_ms());
        let offline = match self.store.claim(user, fresh_after).await? {
            Claim::Online(pttl) => return Ok(Some(pttl)),
            Claim::Claimed(version) => {
                crate::metrics::presence_transition("offline", "expired");
                Some(version)
            }
            // Another claimer won: the deadline is its to drop once its offline is out (or the
            // sweep's, if it never is). Dropping it here could beat that publish and leave the
            // sweep nothing to find if the winner then failed.
            Claim::Gone(_) if claimer == Claimer::Listener => return Ok(None),
            Claim::Gone(version) if version > 0 => {
                crate::metrics::presence_republished();
                Some(version)
            }
            Claim::Gone(_) => None,
        };
        if let Some(version) = offline {
            let peers = self.peers(user).await?;
            self.publish_offline(user, version, OfflineReason::Expired, &peers)
                .await?;
        }
        // Only once the offline is out: a claimer that fails or dies before this leaves the
        // deadline to the sweep, which publishes the offline again.
        self.store.drop_deadline(user).await?;
        Ok(None)
    }

    /// The users who share at least one chat with `user` (never `user` itself).
    pub async fn peers(&self, user: &str) -> Result<Vec<String>, PresenceError> {
        Ok(self.chats.peers(user).await?)
    }

    /// Which of `users` are online: at least one of their fields counts.
    pub async fn online_among(&self, users: &[String]) -> Result<Vec<String>, PresenceError> {
        let fields = self
            .store
            .sockets(users, self.fresh_after(clock::now_ms()))
            .await?;
        Ok(users
            .iter()
            .zip(fields)
            .filter(|(_, f)| !f.is_empty())
            .map(|(u, _)| u.clone())
            .collect())
    }

    /// The live sockets of each of `users` (`GET /api/v1/presence`): the fields that count.
    pub async fn sockets_of(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<SocketInfo>)>, PresenceError> {
        let all = self
            .store
            .sockets(users, self.fresh_after(clock::now_ms()))
            .await?;
        Ok(users
            .iter()
            .zip(all)
            .map(|(u, fields)| {
                let mut sockets: Vec<SocketInfo> = fields
                    .into_iter()
                    .map(|(sid, f)| SocketInfo {
                        socket_id: sid,
                        node_id: f.node_id,
                        connected_at: f.connected_at,
                    })
                    .collect();
                sockets.sort_by(|a, b| a.socket_id.cmp(&b.socket_id));
                (u.clone(), sockets)
            })
            .collect())
    }

    /// How many sockets `user` has across the cluster: its fields that count (a dead node's
    /// stop counting within the TTL, as everywhere else).
    pub async fn socket_count(&self, user: &str) -> Result<usize, PresenceError> {
        let users = [user.to_owned()];
        let fields = self
            .store
            .sockets(&users, self.fresh_after(clock::now_ms()))
            .await?;
        Ok(fields.first().map_or(0, Vec::len))
    }

    /// Disconnects every socket of `user` on every node; each disconnect removes its presence
    /// field as usual, so the user's peers see one offline once the last socket is gone.
    pub async fn disconnect_everywhere(&self, user: &str) -> Result<(), PresenceError> {
        let action = Action::Disconnect {
            of: vec![user_room(user)],
        };
        self.backplane.publish(&vec![action]).await?;
        Ok(())
    }

    /// `user`'s online peers among `peers` (read here when `None`), for `presence:bulk-online`.
    /// Each peer's version is read with its fields and remembered as what `user`'s room was
    /// shown (for at most [`SNAPSHOT_PEERS_MAX`] peers), when the two agree: an odd version
    /// listed, an even one not (a transition between the two reads has its own event coming).
    /// A catch-up can then tell what the room missed.
    pub async fn bulk_online(
        &self,
        user: &str,
        peers: Option<Vec<String>>,
    ) -> Result<Vec<String>, PresenceError> {
        let peers = match peers {
            Some(p) => p,
            None => self.peers(user).await?,
        };
        let fresh_after = self.fresh_after(clock::now_ms());
        let (fields, versions) = tokio::try_join!(
            self.store.sockets(&peers, fresh_after),
            self.store.versions(&peers)
        )?;
        let room = user_room(user);
        let remember = peers.len() <= SNAPSHOT_PEERS_MAX;
        let mut online = Vec::new();
        for ((peer, fields), version) in peers.iter().zip(fields).zip(versions) {
            let listed = !fields.is_empty();
            // A peer Redis has no version for, not listed, was shown offline too: remembered as
            // version 0, so that its first online, if its frame is lost, is caught up (seen in
            // chaos_failover: a user who first connected while the observer's node was
            // reconnecting its subscriber reached the observer by no other way).
            let agreed = match version {
                Some(v) => ((v % 2 == 1) == listed).then_some(v),
                None => (!listed).then_some(0),
            };
            if remember && let Some(v) = agreed {
                self.shown.note_snapshot(peer, &room, v);
            }
            if listed {
                online.push(peer.clone());
            }
        }
        Ok(online)
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

    async fn track_deadlines(&self, users: &[&str], now_ms: u64) -> Result<(), PresenceError> {
        Ok(self
            .store
            .set_deadlines(users, now_ms + self.ttl_ms())
            .await?)
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
            data: serde_json::value::to_raw_value(&data)?,
        };
        self.backplane.publish(&vec![action]).await?;
        Ok(())
    }
}

impl PresenceCatchUp for Presence {
    fn actions(
        &self,
        pairs: Vec<(String, String)>,
    ) -> futures_util::future::BoxFuture<'_, CatchUpRead> {
        Box::pin(async move {
            let mut rooms_of: HashMap<String, Vec<String>> = HashMap::new();
            for (user, room) in pairs {
                rooms_of.entry(user).or_default().push(room);
            }
            let users: Vec<String> = rooms_of.keys().cloned().collect();
            let mut actions = Vec::new();
            let mut unread = 0usize;
            for chunk in users.chunks(CATCH_UP_CHUNK) {
                let versions = match self.store.versions_bounded(chunk).await {
                    Ok(v) => v,
                    Err(_) => {
                        unread += chunk.len();
                        continue;
                    }
                };
                for (user, version) in chunk.iter().zip(versions) {
                    let Some(version) = version else { continue };
                    let now = clock::now_iso();
                    // The reason of a missed offline is not kept in Redis: `expired`, as for
                    // an offline the sweep publishes again (docs/protocol.md §4).
                    let (event, data) = if version % 2 == 1 {
                        (
                            "presence:online",
                            json!({ "userId": user, "timestamp": now }),
                        )
                    } else {
                        (
                            "presence:offline",
                            json!({
                                "userId": user,
                                "timestamp": now,
                                "reason": OfflineReason::Expired.as_str(),
                            }),
                        )
                    };
                    let Ok(data) = serde_json::value::to_raw_value(&data) else {
                        continue;
                    };
                    actions.push(Action::Presence {
                        user: user.clone(),
                        version,
                        rooms: rooms_of.remove(user).unwrap_or_default(),
                        event: event.to_owned(),
                        data,
                    });
                }
            }
            CatchUpRead { actions, unread }
        })
    }
}
