//! `lua/chat_history.lua`: the chat's position and a page of its retained messages, read in
//! one atomic step.
//!
//! A history entry is one field `m`, the message as JSON ([`chat_send::LogEntry`], what
//! `chat_send.lua` appends), or, written by builds before it, the six fields [`FIELDS`] (the
//! `chat:message` field names): [`parse_entries`] reads both, so a log written before an
//! upgrade stays readable. The chat id, offset (from the entry id `0-<offset>`) and epoch are
//! not stored per entry but known from the key and the reply.

use redis::Value;

use super::chat_send::LogEntry;
use super::{Call, NamedScript, as_array, as_string, as_u64, named_script, unexpected};
use crate::chat::{ChatMessage, History};
use crate::redis::keys::ChatKeys;

/// The script.
pub static SCRIPT: NamedScript = named_script!("chat_history");

/// The field of a history entry as `chat_send.lua` writes it: the message as JSON.
pub const PACKED_FIELD: &str = "m";

/// The fields of a history entry as builds before the packed form wrote it (still read).
pub const FIELDS: [&str; 6] = [
    "id",
    "senderId",
    "clientMsgId",
    "type",
    "content",
    "createdAt",
];

/// What the script read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The reader is not a member of the chat.
    Forbidden,
    /// The page.
    Page(History),
}

/// KEYS and ARGV of `chat_history.lua`; `history_maxlen` is HISTORY_MAXLEN (the page never
/// reaches below the chat's last HISTORY_MAXLEN offsets, see [`retained_after`]).
pub fn call(
    k: &ChatKeys,
    reader: &str,
    since: Option<u64>,
    epoch: Option<&str>,
    limit: u32,
    history_maxlen: u64,
) -> Call {
    Call {
        keys: vec![k.members(), k.meta(), k.log()],
        args: vec![
            since.map(|s| s.to_string()).unwrap_or_default(),
            epoch.unwrap_or("").to_owned(),
            limit.to_string(),
            reader.to_owned(),
            history_maxlen.to_string(),
        ],
    }
}

/// The offset after which a chat at `seq` retains its messages: `chat_send.lua` trims the log
/// approximately (cheaper than an exact trim on every append), so it may hold a few entries at
/// or below this one, which no reader returns. Retention is exactly the last `history_maxlen`
/// offsets, as an exact trim would leave it.
pub fn retained_after(seq: u64, history_maxlen: u64) -> u64 {
    seq.saturating_sub(history_maxlen)
}

/// The script's reply: `{'forbidden'}` or `{'ok', latestOffset, epoch, reset, entries}`.
pub fn parse(chat_id: &str, reply: &Value) -> redis::RedisResult<Read> {
    let parsed = (|| {
        let items = as_array(reply)?;
        match as_string(items.first()?)?.as_str() {
            "forbidden" => Some(Read::Forbidden),
            "ok" => parse_page(chat_id, items).map(Read::Page),
            _ => None,
        }
    })();
    parsed.ok_or_else(|| unexpected(&SCRIPT, reply))
}

fn parse_page(chat_id: &str, reply: &[Value]) -> Option<History> {
    let offset = as_u64(reply.get(1)?)?;
    let epoch = as_string(reply.get(2)?)?;
    let reset = as_u64(reply.get(3)?)? == 1;
    let messages = parse_entries(chat_id, &epoch, reply.get(4)?)?;
    Some(History {
        messages,
        offset,
        epoch,
        reset,
    })
}

/// History stream entries (`XRANGE` form: `{id, {field, value, ...}}`, entry id `0-<offset>`)
/// as the `chat:message`s of chat `chat_id` in epoch `epoch`, in the entries' order; `None` if
/// an entry is neither form (one field [`PACKED_FIELD`] holding a [`LogEntry`], or the six
/// [`FIELDS`]).
pub fn parse_entries(chat_id: &str, epoch: &str, entries: &Value) -> Option<Vec<ChatMessage>> {
    let entries = as_array(entries)?;
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts = as_array(entry)?;
        let id = as_string(parts.first()?)?;
        let offset: u64 = id.strip_prefix("0-")?.parse().ok()?;
        let fields = as_array(parts.get(1)?)?;
        let m = match fields {
            [name, Value::BulkString(json)] if as_string(name)? == PACKED_FIELD => {
                let e: LogEntry<'_> = serde_json::from_slice(json).ok()?;
                ChatMessage {
                    id: e.id.into_owned(),
                    chat_id: chat_id.to_owned(),
                    sender_id: e.sender_id.into_owned(),
                    client_msg_id: e
                        .client_msg_id
                        .map(std::borrow::Cow::into_owned)
                        .filter(|s| !s.is_empty()),
                    kind: e.kind.into_owned(),
                    content: e.content.into_owned(),
                    created_at: e.created_at.into_owned(),
                    offset,
                    epoch: epoch.to_owned(),
                }
            }
            _ => six_fields(chat_id, epoch, offset, fields)?,
        };
        messages.push(m);
    }
    Some(messages)
}

/// An entry of the older form: the six [`FIELDS`], in any order.
fn six_fields(chat_id: &str, epoch: &str, offset: u64, fields: &[Value]) -> Option<ChatMessage> {
    let field = |name: &str| -> Option<String> {
        fields
            .chunks(2)
            .find(|kv| kv.first().and_then(as_string).as_deref() == Some(name))
            .and_then(|kv| kv.get(1).and_then(as_string))
    };
    let [id, sender_id, client_msg_id, kind, content, created_at] = FIELDS;
    Some(ChatMessage {
        id: field(id)?,
        chat_id: chat_id.to_owned(),
        sender_id: field(sender_id)?,
        client_msg_id: field(client_msg_id).filter(|s| !s.is_empty()),
        kind: field(kind)?,
        content: field(content)?,
        created_at: field(created_at)?,
        offset,
        epoch: epoch.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::test_values::{arr, bulk};

    #[test]
    fn call_uses_empty_strings_for_absent_values() {
        let ck = ChatKeys::new("c");
        let c = call(&ck, "u", None, None, 100, 1000);
        assert_eq!(
            c.keys,
            [
                "fanout:{chat:c}:members",
                "fanout:{chat:c}:meta",
                "fanout:{chat:c}:log"
            ]
        );
        assert_eq!(c.args, ["", "", "100", "u", "1000"]);
        let c = call(&ck, "u", Some(5), Some("ep"), 7, 3);
        assert_eq!(c.args, ["5", "ep", "7", "u", "3"]);
        assert_eq!(retained_after(10, 3), 7);
        assert_eq!(retained_after(2, 3), 0);
    }

    #[test]
    fn the_entry_field_is_the_one_chat_send_appends() {
        let send = include_str!("../../../lua/chat_send.lua");
        assert!(send.contains(&format!("'{PACKED_FIELD}', ARGV[11]")));
        // The packed entry and the older fields carry the names of the chat:message payload.
        let msg = serde_json::to_value(ChatMessage {
            id: String::new(),
            chat_id: String::new(),
            sender_id: String::new(),
            client_msg_id: Some(String::new()),
            kind: String::new(),
            content: String::new(),
            created_at: String::new(),
            offset: 0,
            epoch: String::new(),
        })
        .unwrap();
        let entry = serde_json::to_value(LogEntry {
            id: "".into(),
            sender_id: "".into(),
            client_msg_id: Some("".into()),
            kind: "".into(),
            content: "".into(),
            created_at: "".into(),
        })
        .unwrap();
        let entry = entry.as_object().unwrap();
        assert_eq!(entry.len(), FIELDS.len());
        for f in FIELDS {
            assert!(msg.get(f).is_some(), "{f}");
            assert!(entry.contains_key(f), "{f}");
        }
    }

    #[test]
    fn a_page_parses_into_messages_of_the_chat() {
        let fields = |cmid: &str| {
            arr(vec![
                bulk("id"),
                bulk("m1"),
                bulk("senderId"),
                bulk("u"),
                bulk("clientMsgId"),
                bulk(cmid),
                bulk("type"),
                bulk("text"),
                bulk("content"),
                bulk("hi"),
                bulk("createdAt"),
                bulk("t"),
            ])
        };
        let reply = arr(vec![
            bulk("ok"),
            Value::Int(9),
            bulk("ep"),
            Value::Int(0),
            arr(vec![
                arr(vec![bulk("0-8"), fields("")]),
                arr(vec![bulk("0-9"), fields("k")]),
                arr(vec![
                    bulk("0-10"),
                    arr(vec![
                        bulk("m"),
                        bulk(
                            r#"{"id":"m2","senderId":"u","clientMsgId":null,"type":"text","content":"h\"i","createdAt":"t"}"#,
                        ),
                    ]),
                ]),
            ]),
        ]);
        let Read::Page(h) = parse("c", &reply).unwrap() else {
            panic!("not a page");
        };
        assert_eq!((h.offset, h.epoch.as_str(), h.reset), (9, "ep", false));
        assert_eq!(h.messages.len(), 3);
        // The packed form reads as the older one would.
        assert_eq!(h.messages[2].offset, 10);
        assert_eq!(h.messages[2].content, "h\"i");
        assert_eq!(h.messages[2].client_msg_id, None);
        assert_eq!(
            (h.messages[2].id.as_str(), h.messages[2].epoch.as_str()),
            ("m2", "ep")
        );
        assert_eq!(h.messages[0].offset, 8);
        assert_eq!(h.messages[0].client_msg_id, None);
        assert_eq!(h.messages[1].client_msg_id.as_deref(), Some("k"));
        assert_eq!(h.messages[1].chat_id, "c");
        assert_eq!(
            parse("c", &arr(vec![bulk("forbidden")])).unwrap(),
            Read::Forbidden
        );
        assert!(parse("c", &arr(vec![bulk("ok"), Value::Int(1)])).is_err());
        let broken = |fields: Vec<Value>| {
            arr(vec![
                bulk("ok"),
                Value::Int(1),
                bulk("ep"),
                Value::Int(0),
                arr(vec![arr(vec![bulk("0-1"), arr(fields)])]),
            ])
        };
        assert!(parse("c", &broken(vec![bulk("m"), bulk("{not json")])).is_err());
        assert!(parse("c", &broken(vec![bulk("m"), bulk(r#"{"id":"x"}"#)])).is_err());
        assert!(parse("c", &broken(vec![bulk("id"), bulk("x")])).is_err());
    }
}
