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

/// `lua/publish_once.lua`: a backplane append at most once per idempotency key.
pub static PUBLISH_ONCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/publish_once.lua")));

/// `lua/presence_connect.lua`: register a socket; did the user come online?
pub static PRESENCE_CONNECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/presence_connect.lua")));

/// `lua/presence_disconnect.lua`: remove a socket; did the user go offline?
pub static PRESENCE_DISCONNECT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/presence_disconnect.lua")));

/// `lua/presence_refresh.lua`: keep a node's sockets of a user registered, prune dead fields.
pub static PRESENCE_REFRESH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/presence_refresh.lua")));

/// `lua/presence_claim.lua`: turn an expiry into exactly one offline transition.
pub static PRESENCE_CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/presence_claim.lua")));

/// KEYS and ARGV of `presence_connect.lua`.
pub fn presence_connect_call(
    user: &str,
    sid: &str,
    field_json: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> (Vec<String>, Vec<String>) {
    (
        vec![keys::presence_user(user), keys::presence_state(user)],
        vec![
            sid.to_owned(),
            field_json.to_owned(),
            ttl_ms.to_string(),
            now_ms.to_string(),
        ],
    )
}

/// KEYS and ARGV of `presence_disconnect.lua`.
pub fn presence_disconnect_call(
    user: &str,
    sid: &str,
    offline_memory_secs: u64,
) -> (Vec<String>, Vec<String>) {
    (
        vec![keys::presence_user(user), keys::presence_state(user)],
        vec![sid.to_owned(), offline_memory_secs.to_string()],
    )
}

/// KEYS and ARGV of `presence_refresh.lua`; `fields` are (socket id, field JSON).
pub fn presence_refresh_call(
    user: &str,
    ttl_ms: u64,
    now_ms: u64,
    prune_before_ms: u64,
    fields: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let mut args = vec![
        ttl_ms.to_string(),
        now_ms.to_string(),
        prune_before_ms.to_string(),
    ];
    for (sid, json) in fields {
        args.push(sid.clone());
        args.push(json.clone());
    }
    (
        vec![keys::presence_user(user), keys::presence_state(user)],
        args,
    )
}

/// KEYS and ARGV of `presence_claim.lua`.
pub fn presence_claim_call(user: &str, offline_memory_secs: u64) -> (Vec<String>, Vec<String>) {
    (
        vec![keys::presence_user(user), keys::presence_state(user)],
        vec![offline_memory_secs.to_string()],
    )
}

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

/// Adds a script call to a pipeline (EVALSHA; run [`load_all`] first so the SHA is known).
pub fn pipe_invoke(
    pipe: &mut redis::Pipeline,
    script: &Script,
    (keys, args): (Vec<String>, Vec<String>),
) {
    crate::metrics::script_call(name_of(script));
    pipe.cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(keys.len())
        .arg(keys)
        .arg(args);
}

/// Loads every script into Redis's script cache (after a restart the cache is empty; single
/// invocations reload on NOSCRIPT by themselves, pipelined EVALSHAs do not).
pub async fn load_all<C>(conn: &mut C) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    for (script, _) in all() {
        let _: String = script.prepare_invoke().load_async(conn).await?;
    }
    Ok(())
}

/// Every script with its name (the `script` label of the metrics).
fn all() -> [(&'static Script, &'static str); 7] {
    [
        (&CHAT_SEND, "chat_send"),
        (&CHAT_HISTORY, "chat_history"),
        (&PUBLISH_ONCE, "publish_once"),
        (&PRESENCE_CONNECT, "presence_connect"),
        (&PRESENCE_DISCONNECT, "presence_disconnect"),
        (&PRESENCE_REFRESH, "presence_refresh"),
        (&PRESENCE_CLAIM, "presence_claim"),
    ]
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
    let name = name_of(script);
    crate::metrics::script_call(name);
    crate::metrics::redis_op(name, inv.invoke_async(conn)).await
}

/// A script's name for metrics (its `lua/` file name without `.lua`), found by its SHA;
/// `other` for a script not listed here.
pub fn name_of(script: &Script) -> &'static str {
    all()
        .into_iter()
        .find(|(s, _)| s.get_hash() == script.get_hash())
        .map_or("other", |(_, name)| name)
}

/// KEYS and ARGV of `publish_once.lua`.
pub fn publish_once_call(
    marker: String,
    stream: String,
    ttl_secs: u64,
    maxlen: u64,
    node_id: &str,
    envelope_json: String,
) -> (Vec<String>, Vec<String>) {
    (
        vec![marker, stream],
        vec![
            ttl_secs.to_string(),
            maxlen.to_string(),
            node_id.to_owned(),
            envelope_json,
        ],
    )
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
