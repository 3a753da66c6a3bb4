//! The Lua scripts of `lua/`, one Rust home each.
//!
//! Model: a script's whole contract — its `redis::Script` (loaded once with `include_str!`), the
//! order of its KEYS and ARGV, and the shape of its reply — lives in one file of this module,
//! named like the script. Each file holds a [`NamedScript`] (the script and the name its metrics
//! carry), a pure `call` builder and a pure `parse` of the reply into a domain type, so the
//! calling convention is unit-tested without Redis. Stores ([`crate::chat::store`],
//! [`crate::presence::store`], [`crate::backplane`]) invoke them through [`invoke`] and
//! [`pipe_invoke`]; domain code never sees a [`Value`].
//!
//! Guarantees: every invocation is counted and timed under the script's own name; a single
//! invocation survives a Redis restart (EVALSHA falls back to loading on NOSCRIPT), a pipelined
//! one needs [`load_all`] first, which the callers of [`pipe_invoke`] do on NOSCRIPT.

pub mod chat_history;
pub mod chat_send;
pub mod chat_send_tx;
pub mod presence_claim;
pub mod presence_connect;
pub mod presence_disconnect;
pub mod presence_refresh;
pub mod publish_once;

use std::sync::LazyLock;

use redis::{ErrorKind, RedisError, Script, Value};

/// A Lua script with the name its metrics carry (its `lua/` file name without `.lua`).
pub struct NamedScript {
    name: &'static str,
    script: LazyLock<Script>,
}

impl NamedScript {
    /// The `script` label of its metrics.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The script itself (hashed once, on first use).
    pub fn script(&self) -> &Script {
        &self.script
    }
}

/// `named_script!("chat_send")`: the [`NamedScript`] of `lua/chat_send.lua`.
/// `named_script!("presence_connect", with_field_rule)`: the same, with
/// `lua/presence_field_rule.lua` in front of it (the one rule of which presence fields count,
/// shared by every presence script).
macro_rules! named_script {
    ($name:literal) => {
        $crate::redis::scripts::NamedScript {
            name: $name,
            script: std::sync::LazyLock::new(|| {
                redis::Script::new(include_str!(concat!("../../../lua/", $name, ".lua")))
            }),
        }
    };
    ($name:literal, with_field_rule) => {
        $crate::redis::scripts::NamedScript {
            name: $name,
            script: std::sync::LazyLock::new(|| {
                redis::Script::new(concat!(
                    include_str!("../../../lua/presence_field_rule.lua"),
                    include_str!(concat!("../../../lua/", $name, ".lua"))
                ))
            }),
        }
    };
}
use named_script;

/// The KEYS and ARGV of one invocation, in the order the script's header lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// KEYS, 1-based in Lua.
    pub keys: Vec<String>,
    /// ARGV, 1-based in Lua.
    pub args: Vec<String>,
}

/// Every script, for [`load_all`].
fn all() -> [&'static NamedScript; 7] {
    [
        &chat_send::SCRIPT,
        &chat_history::SCRIPT,
        &publish_once::SCRIPT,
        &presence_connect::SCRIPT,
        &presence_disconnect::SCRIPT,
        &presence_refresh::SCRIPT,
        &presence_claim::SCRIPT,
    ]
}

/// Loads every script into Redis's script cache (after a restart the cache is empty; single
/// invocations reload on NOSCRIPT by themselves, pipelined EVALSHAs do not).
pub async fn load_all<C>(conn: &mut C) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send,
{
    for s in all() {
        let _: String = s.script().prepare_invoke().load_async(conn).await?;
    }
    Ok(())
}

/// Runs a script on `conn` (EVALSHA, reloading on NOSCRIPT); the raw reply goes to the script's
/// `parse`.
pub async fn invoke<C>(script: &NamedScript, conn: &mut C, call: Call) -> redis::RedisResult<Value>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut inv = script.script().prepare_invoke();
    for k in &call.keys {
        inv.key(k);
    }
    for a in &call.args {
        inv.arg(a);
    }
    crate::metrics::script_call(script.name());
    crate::metrics::redis_op(script.name(), inv.invoke_async(conn)).await
}

/// Runs a script and `WAIT replicas timeout` in one pipeline, so the `WAIT` confirms the
/// script's writes on the connection that carried them (reloading on NOSCRIPT once); returns
/// the script's raw reply and how many replicas confirmed (see [`crate::redis::wait_reply`]).
pub async fn invoke_then_wait<C>(
    script: &NamedScript,
    conn: &mut C,
    call: Call,
    replicas: u32,
    timeout: std::time::Duration,
) -> redis::RedisResult<(Value, u32)>
where
    C: redis::aio::ConnectionLike + Send,
{
    let mut loaded = false;
    loop {
        let mut pipe = redis::pipe();
        pipe_invoke(&mut pipe, script, call.clone());
        crate::redis::Conn::pipe_wait(&mut pipe, replicas, timeout);
        let sent = crate::metrics::redis_op(script.name(), pipe.query_async(conn)).await;
        match sent {
            Err(e)
                if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) && !loaded =>
            {
                let _: String = script.script().prepare_invoke().load_async(conn).await?;
                loaded = true;
            }
            Err(e) => return Err(e),
            Ok((reply, waited)) => {
                let confirmed = crate::redis::wait_reply(waited, replicas)?;
                return Ok((reply, confirmed));
            }
        }
    }
}

/// Adds a script call to a pipeline (EVALSHA; run [`load_all`] first so the SHA is known).
pub fn pipe_invoke(pipe: &mut redis::Pipeline, script: &NamedScript, call: Call) {
    crate::metrics::script_call(script.name());
    pipe.cmd("EVALSHA")
        .arg(script.script().get_hash())
        .arg(call.keys.len())
        .arg(call.keys)
        .arg(call.args);
}

/// The error of a reply that does not have the shape the script's header promises (a bug, or a
/// script of another version): `INTERNAL` at the boundaries, never `UNAVAILABLE`.
pub fn unexpected(script: &NamedScript, reply: &Value) -> RedisError {
    RedisError::from((
        ErrorKind::UnexpectedReturnType,
        "unexpected script reply",
        format!("{}: {reply:?}", script.name()),
    ))
}

/// A reply value as a string, if it is one (bulk, simple, or integer).
pub fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// A reply value as a non-negative integer.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}

/// A reply value as an integer.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => as_string(other)?.parse().ok(),
    }
}

/// A reply that is an array, as its items.
pub fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}

/// A transition version reply: the new version, or `None` for 0 (no transition).
pub fn as_version(script: &NamedScript, reply: &Value) -> redis::RedisResult<Option<u64>> {
    let version = as_u64(reply).ok_or_else(|| unexpected(script, reply))?;
    Ok((version > 0).then_some(version))
}

#[cfg(test)]
pub(crate) mod test_values {
    //! Reply values as Redis would send them, for the parsers' tests.
    use redis::Value;

    /// A bulk string.
    pub fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// An array.
    pub fn arr(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_named_by_its_file_and_loaded_from_it() {
        let names: Vec<&str> = all().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "chat_send",
                "chat_history",
                "publish_once",
                "presence_connect",
                "presence_disconnect",
                "presence_refresh",
                "presence_claim"
            ]
        );
        for s in all() {
            let header = format!("-- {}:", s.name());
            assert!(s.script().get_hash().len() == 40, "{} has no SHA", s.name());
            let source = std::fs::read_to_string(format!(
                "{}/lua/{}.lua",
                env!("CARGO_MANIFEST_DIR"),
                s.name()
            ))
            .unwrap();
            assert!(source.starts_with(&header), "{} header", s.name());
        }
    }

    #[test]
    fn versions_of_zero_are_no_transition() {
        let s = &presence_connect::SCRIPT;
        assert_eq!(as_version(s, &Value::Int(0)).unwrap(), None);
        assert_eq!(as_version(s, &Value::Int(7)).unwrap(), Some(7));
        assert!(as_version(s, &Value::Nil).is_err());
    }
}
