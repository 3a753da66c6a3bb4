//! Every Redis key and stream name fanout uses, built in this one place.
//!
//! Keys of one chat share the hash tag `{<chatId>}`, keys of one user share `{<userId>}`, so every
//! Lua script touches a single hash slot and the layout runs unchanged on Redis Cluster. Ids are
//! validated to `[A-Za-z0-9_.:@-]` before they reach here, so they can never contain a brace and
//! break a tag; `|` (outside that set) separates the two ids of a dedup key unambiguously.

/// SET of the user ids that are members of a chat.
pub fn chat_members(chat_id: &str) -> String {
    format!("chat:{{{chat_id}}}:members")
}

/// HASH of a chat's sequence: `seq` (last offset, HINCRBY) and `epoch` (life of the sequence).
pub fn chat_meta(chat_id: &str) -> String {
    format!("chat:{{{chat_id}}}:meta")
}

/// STREAM of a chat's retained messages; entry id `0-<offset>`.
pub fn chat_log(chat_id: &str) -> String {
    format!("chat:{{{chat_id}}}:log")
}

/// STRING remembering the ACK of `(sender, clientMsgId)` in one chat, with a TTL.
pub fn chat_dedup(chat_id: &str, sender: &str, client_msg_id: &str) -> String {
    format!("chat:{{{chat_id}}}:dedup:{sender}|{client_msg_id}")
}

/// SET of the chat ids a user is a member of.
pub fn user_chats(user_id: &str) -> String {
    format!("user:{{{user_id}}}:chats")
}

/// STREAM of backplane shard `n`: every node reads all shards.
pub fn backplane_shard(n: u16) -> String {
    format!("fanout:bp:{{{n}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_keys_share_one_hash_tag() {
        for k in [
            chat_members("42"),
            chat_meta("42"),
            chat_log("42"),
            chat_dedup("42", "u:1", "m-1"),
        ] {
            assert!(k.starts_with("chat:{42}:"), "{k}");
        }
        assert_eq!(chat_dedup("c", "a:b", "c"), "chat:{c}:dedup:a:b|c");
        assert_eq!(user_chats("7"), "user:{7}:chats");
        assert_eq!(backplane_shard(3), "fanout:bp:{3}");
    }
}
