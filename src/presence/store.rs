//! Every Redis command of the presence domain: the `presence_*.lua` scripts, the sweep's
//! deadline index and lease, and the reads behind the presence queries.
//!
//! Model: a user's presence is two keys on the user's slot — `presence:user:{u}` (a field per
//! live socket, [`SocketField`]) and `presence:state:{u}` (the transition version) — changed
//! only by the scripts, which decide the transitions. The deadline index
//! (`presence:deadlines:{pd<n>}`, 16 buckets by user) and the sweep lease are plain commands: they are a backstop, and a
//! lost write there only delays a claim to the next sweep.
//!
//! Guarantees: each transition (a returned version) is handed to exactly one caller cluster-wide,
//! whichever of connect, disconnect, refresh or claim decided it. The deadline index is written
//! after the script, so a failed write leaves that user to the keyspace notification (and the
//! next refresh's write).
//!
//! Methods return domain types; replies are parsed here and in the script contracts.

use crate::redis::Conn;
use serde::{Deserialize, Serialize};

use super::rule;
use crate::metrics::redis_op;
use crate::redis::keys;
use crate::redis::scripts::presence_claim::Claim;
use crate::redis::scripts::presence_refresh::Refreshed;
use crate::redis::scripts::{
    self, presence_claim, presence_connect, presence_disconnect, presence_refresh,
};

/// How long an offline version is remembered (after that a user starts a fresh, larger one).
const OFFLINE_MEMORY_SECS: u64 = 86_400;

/// The value of one socket's field in a user's presence hash (docs/protocol.md §4).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketField {
    /// The node holding the socket.
    #[serde(default)]
    pub node_id: String,
    /// When it connected (ISO 8601).
    #[serde(default)]
    pub connected_at: String,
    /// Its last refresh, ms since the epoch.
    pub last_seen: u64,
}

impl SocketField {
    /// A field that counts, read without failing: whatever the rule accepted is shown, with
    /// empty strings for what another writer left out or typed differently.
    fn lenient(json: &str) -> SocketField {
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
        SocketField {
            node_id: text("nodeId"),
            connected_at: text("connectedAt"),
            last_seen: v.get("lastSeen").and_then(|x| x.as_f64()).unwrap_or(0.0) as u64,
        }
    }

    fn to_json(&self) -> String {
        // A struct of strings and a number always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The presence domain's view of Redis.
#[derive(Clone)]
pub struct PresenceStore {
    conn: Conn,
}

impl PresenceStore {
    /// A store over the node's shared connection.
    pub fn new(conn: Conn) -> Self {
        PresenceStore { conn }
    }

    /// Loads every script into Redis's cache (pipelined EVALSHAs need them there).
    pub async fn load_scripts(&self) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        scripts::load_all(&mut conn).await
    }

    /// Registers socket `sid` of `user`; the new version if the user came online.
    pub async fn connect(
        &self,
        user: &str,
        sid: &str,
        field: &SocketField,
        ttl_ms: u64,
        fresh_after_ms: u64,
    ) -> redis::RedisResult<Option<u64>> {
        let json = field.to_json();
        let call =
            presence_connect::call(fresh_after_ms, user, sid, &json, ttl_ms, field.last_seen);
        let mut conn = self.conn.clone();
        let reply = scripts::invoke(&presence_connect::SCRIPT, &mut conn, call).await?;
        presence_connect::parse(&reply)
    }

    /// Removes socket `sid` of `user` (and the fields that no longer count); the new version if
    /// the user went offline.
    pub async fn disconnect(
        &self,
        user: &str,
        sid: &str,
        fresh_after_ms: u64,
    ) -> redis::RedisResult<Option<u64>> {
        let call = presence_disconnect::call(fresh_after_ms, user, sid, OFFLINE_MEMORY_SECS);
        let mut conn = self.conn.clone();
        let reply = scripts::invoke(&presence_disconnect::SCRIPT, &mut conn, call).await?;
        presence_disconnect::parse(&reply)
    }

    /// The Redis Cluster master that serves `user`'s presence keys now, if known (see
    /// [`crate::redis::Conn::master_of`]).
    pub fn master_of(&self, user: &str) -> Option<std::sync::Arc<str>> {
        self.conn.master_of(keys::presence_user(user).as_bytes())
    }

    /// Refreshes each user's sockets (socket id, field) in one pipeline, pruning fields that no
    /// longer count at `fresh_after_ms`; per user, what the script found (with `report`, also
    /// the current online version without a transition).
    pub async fn refresh(
        &self,
        users: &[(&str, Vec<(String, SocketField)>)],
        ttl_ms: u64,
        now_ms: u64,
        fresh_after_ms: u64,
        report: bool,
    ) -> redis::RedisResult<Vec<Refreshed>> {
        let mut pipe = redis::pipe();
        for (user, sockets) in users {
            let fields: Vec<(String, String)> = sockets
                .iter()
                .map(|(sid, field)| (sid.clone(), field.to_json()))
                .collect();
            let call =
                presence_refresh::call(fresh_after_ms, user, ttl_ms, now_ms, report, &fields);
            scripts::pipe_invoke(&mut pipe, &presence_refresh::SCRIPT, call);
        }
        let mut conn = self.conn.clone();
        let first = pipe.query_async(&mut conn);
        let replies: Vec<redis::Value> = match redis_op("refresh_pipeline", first).await {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and lost its script cache: load and try once more.
                scripts::load_all(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            Err(e) => return Err(e),
        };
        replies.iter().map(presence_refresh::parse).collect()
    }

    /// Tries to turn an expiry of `user`'s key (or the end of its last field that counts) into
    /// the offline transition.
    pub async fn claim(&self, user: &str, fresh_after_ms: u64) -> redis::RedisResult<Claim> {
        let call = presence_claim::call(fresh_after_ms, user, OFFLINE_MEMORY_SECS);
        let mut conn = self.conn.clone();
        let reply = scripts::invoke(&presence_claim::SCRIPT, &mut conn, call).await?;
        presence_claim::parse(&reply)
    }

    /// Records `deadline_ms` as the time each of `users`' keys expires unless refreshed (one
    /// `ZADD` per deadline bucket, pipelined).
    pub async fn set_deadlines(&self, users: &[&str], deadline_ms: u64) -> redis::RedisResult<()> {
        let mut by_bucket: Vec<Vec<&str>> =
            vec![Vec::new(); keys::PRESENCE_DEADLINE_BUCKETS.into()];
        for u in users {
            by_bucket[usize::from(keys::presence_deadline_bucket(u))].push(u);
        }
        let mut pipe = redis::pipe();
        for (bucket, users) in by_bucket.iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            let cmd = pipe
                .cmd("ZADD")
                .arg(keys::presence_deadlines(bucket as u16));
            for u in users {
                cmd.arg(deadline_ms).arg(*u);
            }
            cmd.ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }

    /// Forgets `user`'s deadline (its key is gone).
    pub async fn drop_deadline(&self, user: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ZREM")
            .arg(keys::presence_deadlines(keys::presence_deadline_bucket(
                user,
            )))
            .arg(user)
            .query_async(&mut conn)
            .await
    }

    /// Takes the sweep lease for `lease_ms` if nobody holds it; true when this node got it.
    pub async fn take_sweep_lease(&self, node_id: &str, lease_ms: u64) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let got: Option<String> = redis::cmd("SET")
            .arg(keys::PRESENCE_SWEEP_LOCK)
            .arg(node_id)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut conn)
            .await?;
        Ok(got.is_some())
    }

    /// Users whose deadline is at or before `now_ms`: at most `limit` from each bucket (one
    /// pipeline over every bucket).
    pub async fn due(&self, now_ms: u64, limit: usize) -> redis::RedisResult<Vec<String>> {
        let mut pipe = redis::pipe();
        for bucket in 0..keys::PRESENCE_DEADLINE_BUCKETS {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(keys::presence_deadlines(bucket))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let mut conn = self.conn.clone();
        let lists: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Each of `users`' transition version (`presence:state:{u}`: odd online, even offline),
    /// `None` where Redis has none (never seen, or lost with its data).
    pub async fn versions(&self, users: &[String]) -> redis::RedisResult<Vec<Option<u64>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("GET").arg(keys::presence_state(u));
        }
        let mut conn = self.conn.clone();
        let all: Vec<Option<String>> =
            redis_op("presence_versions", pipe.query_async(&mut conn)).await?;
        // A value that is not a number is no version this node can compare: left out.
        Ok(all
            .into_iter()
            .map(|v| v.and_then(|v| v.parse().ok()))
            .collect())
    }

    /// [`PresenceStore::versions`], bounded by the command timeout also on a Cluster (whose
    /// connection's own limit is longer): a catch-up reads chunk after chunk and counts a
    /// chunk that failed, instead of waiting through a master's failover for every chunk.
    pub async fn versions_bounded(&self, users: &[String]) -> redis::RedisResult<Vec<Option<u64>>> {
        crate::redis::within(crate::redis::COMMAND_TIMEOUT, self.versions(users)).await
    }

    /// Each of `users`' socket fields that count at `fresh_after_ms` (socket id, field), by
    /// the one rule ([`rule::field_counts`]); the reads behind every "is online" and "how many
    /// sockets" outside the scripts.
    pub async fn sockets(
        &self,
        users: &[String],
        fresh_after_ms: u64,
    ) -> redis::RedisResult<Vec<Vec<(String, SocketField)>>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HGETALL").arg(keys::presence_user(u));
        }
        let mut conn = self.conn.clone();
        let all: Vec<Vec<(String, String)>> =
            redis_op("presence_read", pipe.query_async(&mut conn)).await?;
        Ok(all
            .into_iter()
            .map(|fields| {
                fields
                    .into_iter()
                    .filter(|(_, json)| rule::field_counts(json, fresh_after_ms))
                    .map(|(sid, json)| (sid, SocketField::lenient(&json)))
                    .collect()
            })
            .collect())
    }
}

/// Makes Redis send the expired-key events presence listens to (`E` keyevent class and `x`
/// expired events), with `CONFIG SET` when they are off: `Some(new flags)` when it changed
/// them, `None` when they were on already; an error when Redis refuses (managed services
/// often disable `CONFIG`).
pub async fn enable_expiry_events(
    conn: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<Option<String>> {
    let (_, flags): (String, String) = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(conn)
        .await?;
    let has_event_class = flags.contains('E');
    let has_expired = flags.contains('x') || flags.contains('A');
    if has_event_class && has_expired {
        return Ok(None);
    }
    let wanted = format!("{flags}Ex");
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async::<()>(conn)
        .await?;
    Ok(Some(wanted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_field_has_the_protocol_form() {
        let f = SocketField {
            node_id: "n".into(),
            connected_at: "t".into(),
            last_seen: 5,
        };
        assert_eq!(
            f.to_json(),
            r#"{"nodeId":"n","connectedAt":"t","lastSeen":5}"#
        );
        let back: SocketField = serde_json::from_str(r#"{"lastSeen":5}"#).unwrap();
        assert_eq!(back.node_id, "");
        assert!(serde_json::from_str::<SocketField>(r#"{"nodeId":"n"}"#).is_err());
        assert_eq!(SocketField::lenient(&f.to_json()), f);
        assert_eq!(
            SocketField::lenient(r#"{"nodeId":5,"lastSeen":7.0}"#).last_seen,
            7
        );
    }
}
