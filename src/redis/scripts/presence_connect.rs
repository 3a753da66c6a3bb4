//! `lua/presence_connect.lua`: register a socket; did the user come online?

use redis::Value;

use super::{Call, NamedScript, as_version, named_script};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("presence_connect", with_field_rule);

/// KEYS and ARGV of `presence_connect.lua`.
pub fn call(
    fresh_after_ms: u64,
    user: &str,
    sid: &str,
    field_json: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Call {
    Call {
        keys: vec![keys::presence_user(user), keys::presence_state(user)],
        args: vec![
            fresh_after_ms.to_string(),
            sid.to_owned(),
            field_json.to_owned(),
            ttl_ms.to_string(),
            now_ms.to_string(),
        ],
    }
}

/// The new (odd) version when this connect brought the user online, else `None`.
pub fn parse(reply: &Value) -> redis::RedisResult<Option<u64>> {
    as_version(&SCRIPT, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_follows_the_header() {
        let c = call(3, "u", "s", "{}", 30_000, 5);
        assert_eq!(c.keys, ["presence:user:{u}", "presence:state:{u}"]);
        assert_eq!(c.args, ["3", "s", "{}", "30000", "5"]);
        assert_eq!(parse(&Value::Int(11)).unwrap(), Some(11));
    }
}
