//! `lua/presence_refresh.lua`: keep a node's sockets of a user registered, prune dead fields.

use redis::Value;

use super::{Call, NamedScript, as_array, as_u64, named_script, unexpected};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("presence_refresh", with_field_rule);

/// KEYS and ARGV of `presence_refresh.lua`; `fields` are (socket id, field JSON).
pub fn call(
    fresh_after_ms: u64,
    user: &str,
    ttl_ms: u64,
    now_ms: u64,
    report: bool,
    fields: &[(String, String)],
) -> Call {
    let mut args = vec![
        fresh_after_ms.to_string(),
        ttl_ms.to_string(),
        now_ms.to_string(),
        if report { "1" } else { "0" }.to_owned(),
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

/// What a refresh found about the user's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Nothing to tell the peers.
    Quiet,
    /// The user had been claimed offline and is online again at this (odd) version.
    CameOnline(u64),
    /// Asked for: the user is online at this version, no transition now (the peers may or may
    /// not have seen it; they drop it if they have).
    Online(u64),
}

/// The script's reply `{version, new}`.
pub fn parse(reply: &Value) -> redis::RedisResult<Refreshed> {
    let parsed = (|| {
        let items = as_array(reply)?;
        let version = as_u64(items.first()?)?;
        let new = as_u64(items.get(1)?)?;
        Some(match (version, new) {
            (0, _) => Refreshed::Quiet,
            (v, 1) => Refreshed::CameOnline(v),
            (v, _) => Refreshed::Online(v),
        })
    })();
    parsed.ok_or_else(|| unexpected(&SCRIPT, reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_puts_the_fields_after_the_three_numbers() {
        use crate::redis::scripts::test_values::arr;
        let c = call(10, "u", 30, 20, true, &[("a".into(), "{1}".into())]);
        assert_eq!(c.keys, ["presence:user:{u}", "presence:state:{u}"]);
        assert_eq!(c.args, ["10", "30", "20", "1", "a", "{1}"]);
        let r = |a, b| arr(vec![Value::Int(a), Value::Int(b)]);
        assert_eq!(parse(&r(0, 0)).unwrap(), Refreshed::Quiet);
        assert_eq!(parse(&r(7, 1)).unwrap(), Refreshed::CameOnline(7));
        assert_eq!(parse(&r(7, 0)).unwrap(), Refreshed::Online(7));
        assert!(parse(&Value::Int(0)).is_err());
    }
}
