//! `lua/presence_claim.lua`: turn an expiry into exactly one offline transition.

use redis::Value;

use super::{Call, NamedScript, as_array, as_i64, named_script, unexpected};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("presence_claim", with_field_rule);

/// What the claim found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This caller claimed the expiry: the user is offline at this (even) version.
    Claimed(u64),
    /// A field of the key still counts (the user is online); the key expires in this many ms.
    Online(i64),
    /// The key is gone and the user already offline at this version (0: Redis lost it).
    Gone(u64),
}

/// KEYS and ARGV of `presence_claim.lua`.
pub fn call(fresh_after_ms: u64, user: &str, offline_memory_secs: u64) -> Call {
    Call {
        keys: vec![keys::presence_user(user), keys::presence_state(user)],
        args: vec![fresh_after_ms.to_string(), offline_memory_secs.to_string()],
    }
}

/// The script's reply: `{1, version}`, `{0, pttl}` or `{0, -2, version}` (gone).
pub fn parse(reply: &Value) -> redis::RedisResult<Claim> {
    let parsed = (|| {
        let items = as_array(reply)?;
        let claimed = as_i64(items.first()?)?;
        let value = as_i64(items.get(1)?)?;
        Some(match claimed {
            1 => Claim::Claimed(u64::try_from(value).ok()?),
            0 if value >= 0 => Claim::Online(value),
            0 => Claim::Gone(u64::try_from(as_i64(items.get(2)?)?).ok()?),
            _ => return None,
        })
    })();
    parsed.ok_or_else(|| unexpected(&SCRIPT, reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::test_values::arr;

    #[test]
    fn replies_parse_into_the_three_outcomes() {
        assert_eq!(call(3, "u", 5).args, ["3", "5"]);
        let r = |a, b| arr(vec![Value::Int(a), Value::Int(b)]);
        assert_eq!(parse(&r(1, 12)).unwrap(), Claim::Claimed(12));
        assert_eq!(parse(&r(0, 900)).unwrap(), Claim::Online(900));
        let gone = arr(vec![Value::Int(0), Value::Int(-2), Value::Int(14)]);
        assert_eq!(parse(&gone).unwrap(), Claim::Gone(14));
        assert!(parse(&r(0, -2)).is_err(), "gone without its version");
        assert!(parse(&r(2, 0)).is_err());
    }
}
