//! The Lua scripts of `lua/`, each loaded once with `include_str!`, with a pure builder of its
//! keys and arguments so the calling convention is unit-tested apart from Redis.

use std::sync::LazyLock;

use redis::Script;

use super::keys;

/// `lua/chat_send.lua`: membership check, dedup, offset assignment and history append.
pub static CHAT_SEND: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/chat_send.lua")));

/// `lua/chat_history.lua`: the chat's position and a page of its retained messages.
pub static CHAT_HISTORY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/chat_history.lua")));

/// Everything `chat_send.lua` needs besides the keys derived from the chat and sender.
#[derive(Debug, Clone)]
pub struct SendArgs<'a> {
    /// Chat id (validated).
    pub chat_id: &'a str,
    /// Sender user id, from the token.
    pub sender: &'a str,
    /// Node-chosen message id.
    pub message_id: &'a str,
    /// Client idempotency key, if any.
    pub client_msg_id: Option<&'a str>,
    /// Message type.
    pub kind: &'a str,
    /// Message content.
    pub content: &'a str,
    /// Creation timestamp, ISO 8601.
    pub created_at: &'a str,
    /// Epoch to use if the chat has none yet.
    pub candidate_epoch: &'a str,
    /// HISTORY_MAXLEN.
    pub history_maxlen: u64,
    /// HISTORY_TTL_SECS.
    pub history_ttl_secs: u64,
    /// Dedup window in seconds.
    pub dedup_ttl_secs: u64,
    /// Backplane shard count (decides the keys' hash tag).
    pub shards: u16,
    /// Publishing node id.
    pub node_id: &'a str,
    /// Backplane MAXLEN.
    pub backplane_maxlen: u64,
}

/// KEYS and ARGV of `chat_send.lua`.
pub fn chat_send_call(a: &SendArgs<'_>) -> (Vec<String>, Vec<String>) {
    let cmid = a.client_msg_id.unwrap_or("");
    let k = keys::ChatKeys::new(a.chat_id, a.shards);
    let keys = vec![
        k.members(),
        k.meta(),
        k.log(),
        k.dedup(a.sender, cmid),
        k.stream(),
    ];
    let args = vec![
        a.sender.to_owned(),
        a.message_id.to_owned(),
        cmid.to_owned(),
        a.kind.to_owned(),
        a.content.to_owned(),
        a.created_at.to_owned(),
        a.candidate_epoch.to_owned(),
        a.history_maxlen.to_string(),
        a.history_ttl_secs.to_string(),
        a.dedup_ttl_secs.to_string(),
        a.chat_id.to_owned(),
        format!("chat:{}", a.chat_id),
        a.node_id.to_owned(),
        a.backplane_maxlen.to_string(),
    ];
    (keys, args)
}

/// KEYS and ARGV of `chat_history.lua`.
pub fn chat_history_call(
    k: &keys::ChatKeys,
    reader: &str,
    since: Option<u64>,
    epoch: Option<&str>,
    limit: u32,
) -> (Vec<String>, Vec<String>) {
    (
        vec![k.members(), k.meta(), k.log()],
        vec![
            since.map(|s| s.to_string()).unwrap_or_default(),
            epoch.unwrap_or("").to_owned(),
            limit.to_string(),
            reader.to_owned(),
        ],
    )
}

/// Runs a script with the given keys and args on `conn` (EVALSHA, reloading on NOSCRIPT).
pub async fn invoke<T, C>(
    script: &Script,
    conn: &mut C,
    (keys, args): (Vec<String>, Vec<String>),
) -> redis::RedisResult<T>
where
    T: redis::FromRedisValue,
    C: redis::aio::ConnectionLike + Send,
{
    let mut inv = script.prepare_invoke();
    for k in &keys {
        inv.key(k);
    }
    for a in &args {
        inv.arg(a);
    }
    inv.invoke_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_call_orders_keys_and_args_as_the_script_header_says() {
        let (k, a) = chat_send_call(&SendArgs {
            chat_id: "c1",
            sender: "u1",
            message_id: "m",
            client_msg_id: None,
            kind: "text",
            content: "hi",
            created_at: "t",
            candidate_epoch: "e",
            history_maxlen: 10,
            history_ttl_secs: 20,
            dedup_ttl_secs: 30,
            shards: 1,
            node_id: "n1",
            backplane_maxlen: 40,
        });
        assert_eq!(
            k,
            [
                "fanout:{s0}:chat:c1:members",
                "fanout:{s0}:chat:c1:meta",
                "fanout:{s0}:chat:c1:log",
                "fanout:{s0}:chat:c1:dedup:u1|",
                "fanout:{s0}:bp"
            ]
        );
        assert_eq!(
            a,
            [
                "u1", "m", "", "text", "hi", "t", "e", "10", "20", "30", "c1", "chat:c1", "n1",
                "40"
            ]
        );
    }

    #[test]
    fn history_call_uses_empty_strings_for_absent_values() {
        let ck = keys::ChatKeys::new("c", 1);
        let (k, a) = chat_history_call(&ck, "u", None, None, 100);
        assert_eq!(
            k,
            [
                "fanout:{s0}:chat:c:members",
                "fanout:{s0}:chat:c:meta",
                "fanout:{s0}:chat:c:log"
            ]
        );
        assert_eq!(a, ["", "", "100", "u"]);
        let (_, a) = chat_history_call(&ck, "u", Some(5), Some("ep"), 7);
        assert_eq!(a, ["5", "ep", "7", "u"]);
    }
}
