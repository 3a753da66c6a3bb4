//! `lua/publish_once.lua`: a room frame published at most once per idempotency key.

use redis::Value;

use super::{Call, NamedScript, as_array, as_string, named_script, unexpected};
use crate::redis::keys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("publish_once");

/// What the script did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Once {
    /// The publish id: of this publish, or of the first one with the key.
    pub id: String,
    /// True when this call published; false for a repeated key.
    pub new: bool,
}

/// KEYS and ARGV of `publish_once.lua`: `frame_json` goes to `room`'s channel with
/// `publish_command` unless `key` was used within `ttl_secs`.
pub fn call(
    room: &str,
    key: &str,
    ttl_secs: u64,
    id: &str,
    publish_command: &str,
    frame_json: String,
) -> Call {
    Call {
        keys: vec![
            keys::publish_idempotency(room, key),
            keys::room_channel(room),
        ],
        args: vec![
            ttl_secs.to_string(),
            id.to_owned(),
            publish_command.to_owned(),
            frame_json,
        ],
    }
}

/// The script's reply: `{'new'|'repeat', id}`.
pub fn parse(reply: &Value) -> redis::RedisResult<Once> {
    let parsed = (|| {
        let items = as_array(reply)?;
        let status = as_string(items.first()?)?;
        let id = as_string(items.get(1)?)?;
        match status.as_str() {
            "new" => Some(Once { id, new: true }),
            "repeat" => Some(Once { id, new: false }),
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
        let c = call("user:7", "http:k", 60, "id-1", "PUBLISH", "{}".into());
        assert_eq!(
            c.keys,
            ["fanout:{user:7}:idem:http:k", "fanout:{user:7}:ch"]
        );
        assert_eq!(c.args, ["60", "id-1", "PUBLISH", "{}"]);
        let once = parse(&arr(vec![bulk("repeat"), bulk("id-0")])).unwrap();
        assert_eq!((once.id.as_str(), once.new), ("id-0", false));
        assert!(parse(&arr(vec![bulk("new"), bulk("id-2")])).unwrap().new);
        assert!(parse(&arr(vec![bulk("other"), bulk("id-2")])).is_err());
    }
}
