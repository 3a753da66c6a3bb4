//! `lua/publish_once.lua`: a backplane append at most once per idempotency key.

use redis::Value;

use super::{Call, NamedScript, as_array, as_string, named_script, unexpected};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("publish_once");

/// What the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// The backplane entry id: of this publish, or of the first one with the key.
    pub entry_id: String,
    /// True when this call appended the entry; false for a repeated key.
    pub new: bool,
}

/// KEYS and ARGV of `publish_once.lua`: `envelope_json` goes to `shard`'s stream unless `key`
/// was used within `ttl_secs`.
pub fn call(
    shard: u16,
    key: &str,
    ttl_secs: u64,
    maxlen: u64,
    node_id: &str,
    envelope_json: String,
) -> Call {
    Call {
        keys: vec![
            keys::publish_idempotency(shard, key),
            keys::backplane_shard(shard),
        ],
        args: vec![
            ttl_secs.to_string(),
            maxlen.to_string(),
            node_id.to_owned(),
            envelope_json,
        ],
    }
}

/// The script's reply: `{'new'|'repeat', entryId}`.
pub fn parse(reply: &Value) -> redis::RedisResult<Once> {
    let parsed = (|| {
        let items = as_array(reply)?;
        let status = as_string(items.first()?)?;
        let entry_id = as_string(items.get(1)?)?;
        match status.as_str() {
            "new" => Some(Once {
                entry_id,
                new: true,
            }),
            "repeat" => Some(Once {
                entry_id,
                new: false,
            }),
            _ => None,
        }
    })();
    parsed.ok_or_else(|| unexpected(&SCRIPT, reply))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::test_values::{arr, bulk};

    #[test]
    fn call_and_reply_follow_the_header() {
        let c = call(2, "http:k", 60, 100, "n1", "[]".into());
        assert_eq!(c.keys, ["fanout:{s2}:idem:http:k", "fanout:{s2}:bp"]);
        assert_eq!(c.args, ["60", "100", "n1", "[]"]);
        let once = parse(&arr(vec![bulk("repeat"), bulk("1-0")])).unwrap();
        assert_eq!((once.entry_id.as_str(), once.new), ("1-0", false));
        assert!(parse(&arr(vec![bulk("new"), bulk("2-0")])).unwrap().new);
        assert!(parse(&arr(vec![bulk("other"), bulk("2-0")])).is_err());
    }
}
