//! Every Redis key and stream name fanout uses, built in this one place.
//!
//! Hash tags decide which keys share a Redis Cluster slot (only keys of one slot may meet in a
//! script). A chat's keys carry the tag of its room, `{chat:<chatId>}`, the tag of the room's
//! pub/sub channel ([`room_channel`]) too: `chat_send.lua` appends the message to the chat's
//! history AND publishes it to the chat's channel in one atomic step, which is what makes every
//! node see a chat's messages in offset order (two separate writes from two nodes could reach
//! the channel in the other order), and what lets a node that sees a gap in the offsets fill it
//! from the history. Tagging by room (not by a fixed shard) spreads chats over every slot of a
//! Redis Cluster. A user's keys share the tag `{<userId>}`.
//!
//! Ids are validated to `[A-Za-z0-9_.:@-]` before they reach here, so they never contain a brace
//! that would change a tag; `|` (outside that set) separates the two ids of a dedup key.
//!
//! Chat data written under the earlier layout (`fanout:{s<n>}:chat:<chatId>:…`, tagged by a
//! fixed backplane shard) is not read under this one.

/// Redis Cluster's hash slot of `key` (what `CLUSTER KEYSLOT` answers): CRC16/XMODEM of the
/// key's hash tag — the bytes between the first `{` and the next `}`, if there are any — or else
/// of the whole key, mod 16384. Channels hash the same way for `SPUBLISH`.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for b in bytes {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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

/// The keys of one chat, all on the slot of its room's channel.
#[derive(Debug, Clone)]
pub struct ChatKeys {
    prefix: String,
    room: String,
}

impl ChatKeys {
    /// The keys of `chat_id`: `fanout:{chat:<chatId>}:…`.
    pub fn new(chat_id: &str) -> ChatKeys {
        let room = crate::chat::chat_room(chat_id);
        ChatKeys {
            prefix: format!("fanout:{{{room}}}"),
            room,
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

    /// Pub/sub CHANNEL of the chat's room ([`room_channel`]), on the slot of the chat's keys:
    /// `chat_send.lua` publishes each accepted message here.
    pub fn channel(&self) -> String {
        room_channel(&self.room)
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

/// How many [`presence_deadlines`] buckets there are: enough to spread the index over every
/// master of a Redis Cluster (each bucket has its own tag, so its own slot), few enough that a
/// sweep reads them all in one pipeline.
pub const PRESENCE_DEADLINE_BUCKETS: u16 = 16;

/// ZSET bucket `n` of the presence deadlines: user id -> the time (ms) its presence key expires
/// unless refreshed; the sweep's backstop index for expiries whose keyspace notification nobody
/// received. A user's bucket is [`presence_deadline_bucket`].
pub fn presence_deadlines(bucket: u16) -> String {
    format!("presence:deadlines:{{pd{bucket}}}")
}

/// The deadline bucket of `user_id`: its hash slot modulo [`PRESENCE_DEADLINE_BUCKETS`], stable
/// across nodes and builds.
pub fn presence_deadline_bucket(user_id: &str) -> u16 {
    hash_slot(user_id) % PRESENCE_DEADLINE_BUCKETS
}

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
    fn a_chats_keys_and_its_channel_share_the_rooms_hash_tag() {
        let k = ChatKeys::new("42");
        assert_eq!(k.channel(), room_channel("chat:42"));
        assert_eq!(k.channel(), "fanout:{chat:42}:ch");
        for key in [k.members(), k.meta(), k.log(), k.dedup("u:1", "m-1")] {
            assert_eq!(tag(&key), "chat:42", "{key}");
        }
        assert_eq!(k.members(), "fanout:{chat:42}:members");
        assert_eq!(k.meta(), "fanout:{chat:42}:meta");
        assert_eq!(k.log(), "fanout:{chat:42}:log");
        assert_eq!(k.dedup("a:b", "c"), "fanout:{chat:42}:dedup:a:b|c");
        assert_eq!(user_chats("7"), "user:{7}:chats");
    }

    #[test]
    fn hash_slots_are_redis_clusters() {
        // Vectors of the Redis Cluster specification and of CLUSTER KEYSLOT.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(
            hash_slot("{user1000}.following"),
            hash_slot("{user1000}.followers")
        );
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(hash_slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384);
        // Only the first tag counts.
        assert_eq!(hash_slot("foo{{bar}}zap"), hash_slot("{bar"));
        assert_eq!(hash_slot("foo{bar}{zap}"), hash_slot("bar"));
        assert_eq!(hash_slot("fanout:{chat:1}:ch"), 11659);
    }

    /// Every script's KEYS, as its pure builder makes them, hash to one slot (so Redis Cluster
    /// runs it), and a chat's channel is on its keys' slot (so `chat_send.lua` may publish to it).
    #[test]
    fn every_scripts_keys_share_one_slot() {
        use crate::redis::scripts::{
            Call, chat_history, chat_send, presence_claim, presence_connect, presence_disconnect,
            presence_refresh, publish_once,
        };
        let send = chat_send::SendArgs {
            chat_id: "42",
            sender: "u:1",
            message_id: "m",
            client_msg_id: Some("k"),
            kind: "text",
            content: "{x}",
            created_at: "t",
            candidate_epoch: "ab",
            history_maxlen: 1,
            history_ttl_secs: 1,
            now_secs: 0,
            dedup_ttl_secs: 1,
            node_id: "n",
            publish: chat_send::PublishCommand::Spublish,
        };
        let fields = [("sid".to_owned(), "{}".to_owned())];
        let mut calls: Vec<(&str, Call)> = Vec::new();
        for chat in ["42", "a.b", "x_y@z-1:2"] {
            calls.push((
                "chat_send",
                chat_send::call(&chat_send::SendArgs {
                    chat_id: chat,
                    ..send.clone()
                })
                .expect("call"),
            ));
            calls.push((
                "chat_history",
                chat_history::call(&ChatKeys::new(chat), "u", Some(1), None, 10, 100),
            ));
        }
        for user in ["7", "u:1", "a.b@c"] {
            calls.push((
                "presence_connect",
                presence_connect::call(1, user, "s", "{}", 1, 1),
            ));
            calls.push((
                "presence_disconnect",
                presence_disconnect::call(1, user, "s", 1),
            ));
            calls.push((
                "presence_refresh",
                presence_refresh::call(1, user, 1, 1, true, &fields),
            ));
            calls.push(("presence_claim", presence_claim::call(1, user, 1)));
        }
        for room in ["chat:42", "user:7", "role:a.b"] {
            calls.push((
                "publish_once",
                publish_once::call(room, "http:k", 1, "id", "SPUBLISH", "{}".into()),
            ));
        }
        for (name, call) in &calls {
            assert!(call.keys.len() >= 2, "{name}: {:?}", call.keys);
            let slot = hash_slot(&call.keys[0]);
            for key in &call.keys {
                assert_eq!(hash_slot(key), slot, "{name}: {:?}", call.keys);
            }
        }
        // chat_send's last key is the chat's channel.
        let k = ChatKeys::new("42");
        let send_keys = &calls[0].1.keys;
        assert_eq!(send_keys.last(), Some(&k.channel()));
        assert_eq!(hash_slot(&k.channel()), hash_slot("chat:42"));
    }

    #[test]
    fn presence_deadline_buckets_spread_over_the_masters_of_a_default_cluster() {
        // redis-cli --cluster create with 3 masters gives them these slot ranges.
        let ranges = [0..=5460u16, 5461..=10922, 10923..=16383];
        let mut per_master = [0; 3];
        for b in 0..PRESENCE_DEADLINE_BUCKETS {
            let slot = hash_slot(&presence_deadlines(b));
            let m = ranges.iter().position(|r| r.contains(&slot)).unwrap();
            per_master[m] += 1;
        }
        assert!(per_master.iter().all(|n| *n >= 3), "{per_master:?}");
        assert!(presence_deadline_bucket("u:1") < PRESENCE_DEADLINE_BUCKETS);
        assert_eq!(
            presence_deadline_bucket("u:1"),
            presence_deadline_bucket("u:1")
        );
    }

    #[test]
    fn presence_keys_follow_the_protocol() {
        assert_eq!(presence_user("42"), "presence:user:{42}");
        assert_eq!(presence_user_id("presence:user:{42}"), Some("42"));
        assert_eq!(presence_user_id("presence:state:{42}"), None);
        assert_eq!(tag(&presence_state("42")), "42");
    }
}
