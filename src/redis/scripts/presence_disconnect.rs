//! `lua/presence_disconnect.lua`: remove a socket; did the user go offline?

use redis::Value;

use super::{Call, NamedScript, as_version, named_script};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("presence_disconnect", with_field_rule);

/// KEYS and ARGV of `presence_disconnect.lua`.
pub fn call(fresh_after_ms: u64, user: &str, sid: &str, offline_memory_secs: u64) -> Call {
    Call {
        keys: vec![keys::presence_user(user), keys::presence_state(user)],
        args: vec![
            fresh_after_ms.to_string(),
            sid.to_owned(),
            offline_memory_secs.to_string(),
        ],
    }
}

/// The new (even) version when this was the user's last socket, else `None`.
pub fn parse(reply: &Value) -> redis::RedisResult<Option<u64>> {
    as_version(&SCRIPT, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_follows_the_header() {
        let c = call(3, "u", "s", 86_400);
        assert_eq!(c.keys, ["presence:user:{u}", "presence:state:{u}"]);
        assert_eq!(c.args, ["3", "s", "86400"]);
        assert_eq!(parse(&Value::Int(0)).unwrap(), None);
    }
}
