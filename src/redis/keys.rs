//! Every Redis key and stream name fanout uses, built in this one place.
//!
//! Hash tags decide which keys share a Redis Cluster slot (only keys of one slot may meet in a
//! script). A chat's keys share the tag of its backplane shard, `{s<n>}`: `chat_send.lua` appends
//! to the chat's history AND to the shard stream in one atomic step, which is what makes every
//! node deliver a chat's messages in offset order (two separate writes from two nodes could land
//! in the shard stream in the other order). A user's keys share the tag `{<userId>}`.
//!
//! Ids are validated to `[A-Za-z0-9_.:@-]` before they reach here, so they never contain a brace
//! that would change a tag; `|` (outside that set) separates the two ids of a dedup key.
//!
//! `BACKPLANE_SHARDS` therefore fixes where chat data lives: every node of a deployment must use
//! the same value, and changing it orphans existing chat keys.

/// The shard of a routing key (a chat id, a user id): FNV-1a, stable across nodes, builds and
/// restarts.
pub fn shard_of(routing_key: &str, shards: u16) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in routing_key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u16
}

/// Pub/sub CHANNEL of room `room` (`chat:42`, `user:7`, `role:admin`): every event for the room
/// travels here, and a node subscribes while it has a local socket in the room. The room name is
/// the hash tag, so a chat's channel shares the slot of its keys (`chat_send.lua` publishes the
/// message from inside the script) and rooms spread over every slot of a Redis Cluster.
pub fn room_channel(room: &str) -> String {
    format!("fanout:{{{room}}}:ch")
}

/// Pub/sub CHANNEL of one node: its delivery canary ([`crate::backplane::canary`]) travels here,
/// through the same subscriber connection as the room events.
pub fn node_channel(node_id: &str) -> String {
    format!("fanout:{{node:{node_id}}}:ch")
}

/// STREAM of backplane shard `n`: every node reads all shards.
pub fn backplane_shard(n: u16) -> String {
    format!("fanout:{{s{n}}}:bp")
}

/// The keys of one chat, all on the slot of its shard.
#[derive(Debug, Clone)]
pub struct ChatKeys {
    prefix: String,
    shard: u16,
}

impl ChatKeys {
    /// The keys of `chat_id` in a deployment with `shards` backplane shards.
    pub fn new(chat_id: &str, shards: u16) -> ChatKeys {
        let shard = shard_of(chat_id, shards);
        ChatKeys {
            prefix: format!("fanout:{{s{shard}}}:chat:{chat_id}"),
            shard,
        }
    }

    /// SET of the user ids that are members of the chat.
    pub fn members(&self) -> String {
        format!("{}:members", self.prefix)
    }

    /// HASH of the chat's sequence: `seq` (last offset) and `epoch` (life of the sequence).
    pub fn meta(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    /// STREAM of the chat's retained messages; entry id `0-<offset>`.
    pub fn log(&self) -> String {
        format!("{}:log", self.prefix)
    }

    /// STRING remembering the ACK of `(sender, clientMsgId)` in this chat, with a TTL.
    pub fn dedup(&self, sender: &str, client_msg_id: &str) -> String {
        format!("{}:dedup:{sender}|{client_msg_id}", self.prefix)
    }

    /// The backplane shard stream the chat's events travel on.
    pub fn stream(&self) -> String {
        backplane_shard(self.shard)
    }
}

/// SET of the chat ids a user is a member of.
pub fn user_chats(user_id: &str) -> String {
    format!("user:{{{user_id}}}:chats")
}

/// HASH of a user's live sockets (docs/protocol.md §4): field = socket id, value = JSON
/// `{nodeId, connectedAt, lastSeen}`, key TTL `PRESENCE_TTL_SECS`.
pub fn presence_user(user_id: &str) -> String {
    format!("presence:user:{{{user_id}}}")
}

/// The user id in a [`presence_user`] key name (from a keyspace notification), if it is one.
pub fn presence_user_id(key: &str) -> Option<&str> {
    key.strip_prefix("presence:user:{")?.strip_suffix('}')
}

/// STRING: a user's presence transition version; odd = online, even = offline.
pub fn presence_state(user_id: &str) -> String {
    format!("presence:state:{{{user_id}}}")
}

/// ZSET: user id -> the time (ms) its presence key expires unless refreshed; the sweep's
/// backstop index for expiries whose keyspace notification nobody received.
pub const PRESENCE_DEADLINES: &str = "presence:deadlines";

/// STRING: the node currently allowed to sweep (short PX lease).
pub const PRESENCE_SWEEP_LOCK: &str = "presence:sweep-lock";

/// STRING: the id of the server API publish with idempotency key `key`, on the slot of the
/// publish's first room (so `publish_once.lua` checks, records and publishes atomically).
pub fn publish_idempotency(room: &str, key: &str) -> String {
    format!("fanout:{{{room}}}:idem:{key}")
}

/// STREAM services may `XADD` publish requests to (field `body` = the JSON body of
/// `POST /api/v1/publish`); nodes consume it with the [`PUBLISH_GROUP`] consumer group.
pub const PUBLISH_STREAM: &str = "fanout:publish";

/// Consumer group of the nodes on [`PUBLISH_STREAM`].
pub const PUBLISH_GROUP: &str = "fanout";

/// HASH of live nodes: node id -> JSON `{nodeId, connections, startedAt, lastSeen, lastSeenMs}`.
pub const NODES: &str = "fanout:nodes";

/// Pub/sub CHANNEL of the Socket.IO Admin UI (docs/protocol.md §7), used only while it is
/// enabled: every node's stats and socket events, the UI's commands and socket listings.
pub const ADMIN_CHANNEL: &str = "fanout:admin";

/// STRING: an Admin UI session id issued at a login, with a TTL, so the UI's reconnect (with
/// `auth.sessionId`) is accepted by whichever node the load balancer picks.
pub fn admin_session(session_id: &str) -> String {
    format!("fanout:admin:session:{session_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &str) -> &str {
        let start = key.find('{').expect("tag");
        let end = key[start..].find('}').expect("tag end") + start;
        &key[start + 1..end]
    }

    #[test]
    fn a_chats_keys_and_its_stream_share_one_hash_tag() {
        let k = ChatKeys::new("42", 8);
        let t = tag(&k.stream()).to_owned();
        for key in [k.members(), k.meta(), k.log(), k.dedup("u:1", "m-1")] {
            assert_eq!(tag(&key), t, "{key}");
            assert!(key.contains(":chat:42:"), "{key}");
        }
        assert!(k.dedup("a:b", "c").ends_with(":dedup:a:b|c"));
        assert_eq!(user_chats("7"), "user:{7}:chats");
        assert_eq!(backplane_shard(3), "fanout:{s3}:bp");
    }

    #[test]
    fn presence_keys_follow_the_protocol() {
        assert_eq!(presence_user("42"), "presence:user:{42}");
        assert_eq!(presence_user_id("presence:user:{42}"), Some("42"));
        assert_eq!(presence_user_id("presence:state:{42}"), None);
        assert_eq!(tag(&presence_state("42")), "42");
    }

    #[test]
    fn shard_is_stable_spread_and_in_range() {
        assert_eq!(shard_of("chat:42", 8), shard_of("chat:42", 8));
        let mut seen = [false; 8];
        for i in 0..1000 {
            let s = shard_of(&format!("c{i}"), 8);
            assert!(s < 8);
            seen[s as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
