//! `lua/chat_send.lua`: membership check, dedup, offset assignment, history append and the
//! publication of the message's frame to the chat's channel, in one atomic step on the chat's
//! slot.
//!
//! The frame's wire form is produced by Rust alone ([`Frame::to_json`] of
//! [`crate::chat::message_envelope`]): the script only knows the offset and epoch, which are
//! the message's last two fields, so [`call`] serializes the frame around them and the script
//! concatenates `head .. offset .. mid .. epoch .. tail`. An integration test checks the frame
//! the script published against serde's form byte for byte.
//!
//! The log entry is one field, `m`, holding the message as JSON ([`log_entry`]): one field
//! instead of six makes the `XADD` cheaper (issue 17); [`super::chat_history::parse_entries`]
//! reads both forms.

use redis::Value;

use serde::Serialize;

use super::{Call, NamedScript, as_array, as_string, as_u64, named_script, unexpected};
use crate::backplane::frame::Frame;
use crate::chat::{Accepted, ChatMessage, message_envelope};
use crate::redis::keys::ChatKeys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("chat_send");

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
    /// Epoch to use if the chat has none yet: hex digits (the script writes it into the frame
    /// unescaped).
    pub candidate_epoch: &'a str,
    /// HISTORY_MAXLEN.
    pub history_maxlen: u64,
    /// HISTORY_TTL_SECS.
    pub history_ttl_secs: u64,
    /// Now, in seconds since the Unix epoch: picks the log's TTL refresh period
    /// ([`log_ttl`]).
    pub now_secs: u64,
    /// Dedup window in seconds.
    pub dedup_ttl_secs: u64,
    /// Publishing node id (the frame's `n`).
    pub node_id: &'a str,
    /// How the script publishes.
    pub publish: PublishCommand,
}

/// The command that publishes the frame to the chat's channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishCommand {
    /// `PUBLISH`: one Redis, or Redis behind Sentinel.
    Publish,
    /// `SPUBLISH`: Redis Cluster (sharded pub/sub, the channel lives on the chat's slot).
    Spublish,
}

impl PublishCommand {
    /// The command's name, as the script calls it.
    pub fn as_str(self) -> &'static str {
        match self {
            PublishCommand::Publish => "PUBLISH",
            PublishCommand::Spublish => "SPUBLISH",
        }
    }
}

/// What the script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The sender is not a member of the chat.
    Forbidden,
    /// Accepted now, or earlier under the same `clientMsgId` (then `duplicate`).
    Accepted(Accepted),
}

/// An offset no chat reaches, marking where the script writes the real one. Its digits may
/// occur in the content too, so the frame is split at their *last* occurrence: only the epoch
/// follows the offset.
const OFFSET_MARK: u64 = u64::MAX;
/// An epoch no chat has (epochs are hex), marking where the script writes the real one; serde
/// writes it as the escape `\u0001`, between the epoch's quotes.
const EPOCH_MARK: &str = "\u{1}";
const EPOCH_MARK_JSON: &str = "\\u0001";

/// The frame of `a`'s `chat:message` in three parts around the offset and epoch the script
/// assigns: `head`, then the offset, `mid`, the epoch's characters, `tail` (the epoch's quotes
/// end `mid` and begin `tail`).
pub fn frame_parts(a: &SendArgs<'_>) -> Result<[String; 3], serde_json::Error> {
    let message = ChatMessage {
        id: a.message_id.to_owned(),
        chat_id: a.chat_id.to_owned(),
        sender_id: a.sender.to_owned(),
        client_msg_id: a.client_msg_id.map(str::to_owned),
        kind: a.kind.to_owned(),
        content: a.content.to_owned(),
        created_at: a.created_at.to_owned(),
        offset: OFFSET_MARK,
        epoch: EPOCH_MARK.to_owned(),
    };
    let json = Frame::to_json(a.node_id, &message_envelope(&message)?)?;
    let split = json
        .rsplit_once(&OFFSET_MARK.to_string())
        .and_then(|(head, rest)| {
            let (mid, tail) = rest.split_once(EPOCH_MARK_JSON)?;
            Some([head.to_owned(), mid.to_owned(), tail.to_owned()])
        });
    // Only reachable if ChatMessage stopped ending with offset and epoch.
    split.ok_or_else(|| serde::ser::Error::custom("chat:message lost its offset or epoch"))
}

/// The history log's TTL refresh period `R` for `history_ttl_secs`: the script sets the log's
/// TTL to `HISTORY_TTL_SECS + R` when the stream is created and on the first append of each
/// `R`-second period, instead of on every append (one command less per message, issue 17). An
/// idle log therefore expires between `HISTORY_TTL_SECS` and `HISTORY_TTL_SECS + R` after its
/// last append (less the nodes' clock skew, as periods are counted by the sending node's clock).
pub fn log_ttl_period(history_ttl_secs: u64) -> u64 {
    history_ttl_secs.clamp(1, 60)
}

/// The TTL the script gives the log, and the number of the current refresh period.
pub fn log_ttl(history_ttl_secs: u64, now_secs: u64) -> (u64, u64) {
    let period = log_ttl_period(history_ttl_secs);
    (history_ttl_secs.saturating_add(period), now_secs / period)
}

/// A history log entry's one field `m`: the message without what the key and the entry id
/// already say (chat id, offset) or the chat's meta holds (epoch). The names are those of
/// `chat:message` and of the six fields of the older entry form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry<'a> {
    /// Message id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// Sender user id.
    #[serde(borrow)]
    pub sender_id: std::borrow::Cow<'a, str>,
    /// The client's idempotency key, `null` when none.
    #[serde(borrow)]
    pub client_msg_id: Option<std::borrow::Cow<'a, str>>,
    /// Message type.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// Message content.
    #[serde(borrow)]
    pub content: std::borrow::Cow<'a, str>,
    /// Creation timestamp, ISO 8601.
    #[serde(borrow)]
    pub created_at: std::borrow::Cow<'a, str>,
}

/// The log entry of `a`, as JSON.
pub fn log_entry(a: &SendArgs<'_>) -> Result<String, serde_json::Error> {
    serde_json::to_string(&LogEntry {
        id: a.message_id.into(),
        sender_id: a.sender.into(),
        client_msg_id: a.client_msg_id.map(Into::into),
        kind: a.kind.into(),
        content: a.content.into(),
        created_at: a.created_at.into(),
    })
}

/// KEYS and ARGV of `chat_send.lua`.
pub fn call(a: &SendArgs<'_>) -> Result<Call, serde_json::Error> {
    if a.candidate_epoch.is_empty() || !a.candidate_epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        // The script writes the epoch into the frame without escaping it.
        return Err(serde::ser::Error::custom("candidate epoch is not hex"));
    }
    let cmid = a.client_msg_id.unwrap_or("");
    let k = ChatKeys::new(a.chat_id);
    let [head, mid, tail] = frame_parts(a)?;
    let (log_ttl, period) = log_ttl(a.history_ttl_secs, a.now_secs);
    Ok(Call {
        keys: vec![
            k.members(),
            k.meta(),
            k.log(),
            k.dedup(a.sender, cmid),
            k.channel(),
        ],
        args: vec![
            a.sender.to_owned(),
            a.message_id.to_owned(),
            cmid.to_owned(),
            a.created_at.to_owned(),
            a.candidate_epoch.to_owned(),
            a.history_maxlen.to_string(),
            log_ttl.to_string(),
            period.to_string(),
            a.dedup_ttl_secs.to_string(),
            a.publish.as_str().to_owned(),
            log_entry(a)?,
            head,
            mid,
            tail,
        ],
    })
}

/// The script's reply: `{'forbidden'}` or `{'new'|'dup', messageId, offset, epoch, createdAt}`.
pub fn parse(reply: &Value) -> redis::RedisResult<Sent> {
    let parsed = (|| {
        let items = as_array(reply)?;
        let status = as_string(items.first()?)?;
        if status == "forbidden" {
            return Some(Sent::Forbidden);
        }
        if status != "new" && status != "dup" {
            return None;
        }
        Some(Sent::Accepted(Accepted {
            message_id: as_string(items.get(1)?)?,
            offset: as_u64(items.get(2)?)?,
            epoch: as_string(items.get(3)?)?,
            created_at: as_string(items.get(4)?)?,
            duplicate: status == "dup",
        }))
    })();
    parsed.ok_or_else(|| unexpected(&SCRIPT, reply))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::redis::scripts::test_values::{arr, bulk};

    /// A send of `content` by u1 to c1 (also the send transaction's tests' base).
    pub(crate) fn args<'a>(content: &'a str, cmid: Option<&'a str>) -> SendArgs<'a> {
        SendArgs {
            chat_id: "c1",
            sender: "u1",
            message_id: "m",
            client_msg_id: cmid,
            kind: "text",
            content,
            created_at: "t",
            candidate_epoch: "e0",
            history_maxlen: 10,
            history_ttl_secs: 20,
            now_secs: 1000,
            dedup_ttl_secs: 30,
            node_id: "n1",
            publish: PublishCommand::Spublish,
        }
    }

    #[test]
    fn call_orders_keys_and_args_as_the_script_header_says() {
        let c = call(&args("hi", None)).unwrap();
        assert_eq!(
            c.keys,
            [
                "fanout:{chat:c1}:members",
                "fanout:{chat:c1}:meta",
                "fanout:{chat:c1}:log",
                "fanout:{chat:c1}:dedup:u1|",
                "fanout:{chat:c1}:ch"
            ]
        );
        assert_eq!(
            c.args[..11],
            [
                "u1",
                "m",
                "",
                "t",
                "e0",
                "10",
                "40",
                "50",
                "30",
                "SPUBLISH",
                r#"{"id":"m","senderId":"u1","clientMsgId":null,"type":"text","content":"hi","createdAt":"t"}"#
            ]
        );
        assert_eq!(c.args.len(), 14);
        let publish = SendArgs {
            publish: PublishCommand::Publish,
            ..args("hi", None)
        };
        assert_eq!(call(&publish).unwrap().args[9], "PUBLISH");
    }

    #[test]
    fn the_log_ttl_is_refreshed_once_per_period() {
        // R = min(60, TTL), at least 1; the TTL set covers the period.
        assert_eq!(log_ttl(86400, 125), (86460, 2));
        assert_eq!(log_ttl(86400, 179), (86460, 2));
        assert_eq!(log_ttl(86400, 180), (86460, 3));
        assert_eq!(log_ttl(10, 125), (20, 12));
        assert_eq!(log_ttl(1, 7), (2, 7));
        assert_eq!(log_ttl(u64::MAX, 7), (u64::MAX, 0));
    }

    #[test]
    fn the_log_entry_is_the_message_as_json() {
        let a = args("a \"quoted\" \u{1} text", Some("k"));
        let json = log_entry(&a).unwrap();
        let back: LogEntry<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.content, a.content);
        assert_eq!(back.client_msg_id.as_deref(), Some("k"));
        assert_eq!(
            (&*back.id, &*back.sender_id, &*back.kind),
            ("m", "u1", "text")
        );
    }

    #[test]
    fn an_epoch_that_is_not_hex_is_refused() {
        for epoch in ["", "x1", "ab\"", "a b"] {
            let a = SendArgs {
                candidate_epoch: epoch,
                ..args("hi", None)
            };
            assert!(call(&a).is_err(), "{epoch}");
        }
    }

    /// A frame's JSON with its build time (`"t":<ms>`) cut out.
    fn without_time(frame: &str) -> String {
        let Some(start) = frame.find("\"t\":") else {
            return frame.to_owned();
        };
        let rest = &frame[start..];
        let end = rest.find(',').map_or(rest.len(), |i| i + 1);
        format!("{}{}", &frame[..start], &rest[end..])
    }

    #[test]
    fn the_frame_parts_rebuild_serdes_form() {
        // Content that contains the offset mark's digits, the epoch mark and JSON to escape.
        let a = args("18446744073709551615 \"/\u{1}", Some("k"));
        let [head, mid, tail] = frame_parts(&a).unwrap();
        let rebuilt = format!("{head}7{mid}ab12{tail}");
        let message = ChatMessage {
            id: "m".into(),
            chat_id: "c1".into(),
            sender_id: "u1".into(),
            client_msg_id: Some("k".into()),
            kind: "text".into(),
            content: a.content.into(),
            created_at: "t".into(),
            offset: 7,
            epoch: "ab12".into(),
        };
        let expected = Frame::to_json("n1", &message_envelope(&message).unwrap()).unwrap();
        // The two were built a moment apart: their build times (`"t":<ms>`) may differ.
        assert_eq!(without_time(&rebuilt), without_time(&expected));
        assert!(mid.ends_with(r#","epoch":""#), "{mid}");
        assert!(tail.starts_with(r#""}"#), "{tail}");
    }

    #[test]
    fn replies_parse_into_what_the_script_decided() {
        assert_eq!(
            parse(&arr(vec![bulk("forbidden")])).unwrap(),
            Sent::Forbidden
        );
        let reply = arr(vec![
            bulk("dup"),
            bulk("m"),
            Value::Int(3),
            bulk("ep"),
            bulk("t"),
        ]);
        assert_eq!(
            parse(&reply).unwrap(),
            Sent::Accepted(Accepted {
                message_id: "m".into(),
                offset: 3,
                epoch: "ep".into(),
                created_at: "t".into(),
                duplicate: true,
            })
        );
        assert!(parse(&arr(vec![bulk("new"), bulk("m")])).is_err());
        assert!(parse(&Value::Nil).is_err());
    }
}
