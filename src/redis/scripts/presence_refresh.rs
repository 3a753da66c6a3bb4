//! `lua/presence_refresh.lua`: keep a node's sockets of a user registered, prune dead fields.

use redis::Value;

use super::{Call, NamedScript, as_version, named_script};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("presence_refresh", with_field_rule);

/// KEYS and ARGV of `presence_refresh.lua`; `fields` are (socket id, field JSON).
pub fn call(
    fresh_after_ms: u64,
    user: &str,
    ttl_ms: u64,
    now_ms: u64,
    fields: &[(String, String)],
) -> Call {
    let mut args = vec![
        fresh_after_ms.to_string(),
        ttl_ms.to_string(),
        now_ms.to_string(),
    ];
    for (sid, json) in fields {
        args.push(sid.clone());
        args.push(json.clone());
    }
    Call {
        keys: vec![keys::presence_user(user), keys::presence_state(user)],
        args,
    }
}

/// The new (odd) version when the user had been claimed offline and is online again, else
/// `None`.
pub fn parse(reply: &Value) -> redis::RedisResult<Option<u64>> {
    as_version(&SCRIPT, reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_puts_the_fields_after_the_three_numbers() {
        let c = call(10, "u", 30, 20, &[("a".into(), "{1}".into())]);
        assert_eq!(c.keys, ["presence:user:{u}", "presence:state:{u}"]);
        assert_eq!(c.args, ["10", "30", "20", "a", "{1}"]);
        assert_eq!(parse(&Value::Int(0)).unwrap(), None);
    }
}
