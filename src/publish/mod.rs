//! Server-side publishing (docs/protocol.md §6 `POST /api/v1/publish`): backends emit an event to
//! rooms, users and chats cluster-wide. Two ways in, one envelope: the HTTP API, and the
//! `fanout:publish` stream that services can `XADD` to without HTTP ([`consumer`], its Redis
//! commands in [`store`]).
//!
//! `rooms` are full room names (`chat:42`, `user:7`, `role:admin`); `users` and `chats` are bare
//! ids that expand to `user:{id}` / `chat:{id}`; `except` lists full room names whose sockets
//! are skipped. A request must name at least one target: there is no broadcast to everyone.

pub mod consumer;
pub mod store;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::backplane::{Action, Backplane, PublishError};
use crate::chat::{ROOM_KINDS, chat_room, user_room};
use crate::validate::is_valid_id;

/// Most target rooms one publish may name.
pub const MAX_TARGETS: usize = 1000;
/// How long an `Idempotency-Key` (or a `fanout:publish` entry id) is remembered.
pub const IDEMPOTENCY_TTL_SECS: u64 = 86_400;

/// A validated publish request.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Event name.
    pub event: String,
    /// Payload, raw JSON.
    pub data: Box<RawValue>,
    /// Target rooms, expanded and de-duplicated.
    pub rooms: Vec<String>,
    /// Rooms whose sockets are skipped.
    pub except: Vec<String>,
}

/// True for an acceptable `Idempotency-Key`: 1–200 visible ASCII characters.
pub fn is_valid_idempotency_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 200 && key.bytes().all(|b| b.is_ascii_graphic())
}

/// True for `chat:<id>`, `user:<id>` or `role:<id>` (see [`crate::chat::ROOM_KINDS`]).
pub fn is_room_name(room: &str) -> bool {
    room.split_once(':')
        .is_some_and(|(kind, id)| ROOM_KINDS.contains(&kind) && is_valid_id(id))
}

fn list<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Vec<&'a str>, String> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| format!("{field} must be an array of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{field} must be an array of strings")),
    }
}

impl PublishRequest {
    /// Validates a publish body; the error names the field.
    pub fn parse(body: &Map<String, Value>) -> Result<PublishRequest, String> {
        let event = match body.get("event") {
            Some(Value::String(e)) if !e.is_empty() && e.len() <= 128 => e.clone(),
            Some(Value::String(_)) => return Err("event must be 1-128 characters".into()),
            _ => return Err("event is required and must be a string".into()),
        };
        if matches!(event.as_str(), "connect" | "disconnect" | "connect_error") {
            return Err(format!("event {event:?} is reserved by Socket.IO"));
        }
        let data = serde_json::value::to_raw_value(body.get("data").unwrap_or(&Value::Null))
            .map_err(|e| format!("data: {e}"))?;
        let mut rooms = Vec::new();
        for room in list(body, "rooms")? {
            if !is_room_name(room) {
                return Err(format!(
                    "rooms must be full room names like chat:<id>, user:<id>, role:<id>; got {room:?}"
                ));
            }
            rooms.push(room.to_owned());
        }
        for (field, expand) in [
            ("users", user_room as fn(&str) -> String),
            ("chats", chat_room),
        ] {
            for id in list(body, field)? {
                if !is_valid_id(id) {
                    return Err(format!(
                        "{field} must contain ids of [A-Za-z0-9_.:@-]; got {id:?}"
                    ));
                }
                rooms.push(expand(id));
            }
        }
        rooms.sort();
        rooms.dedup();
        if rooms.is_empty() {
            return Err("name at least one target in rooms, users or chats".into());
        }
        if rooms.len() > MAX_TARGETS {
            return Err(format!(
                "at most {MAX_TARGETS} targets (rooms + users + chats)"
            ));
        }
        let mut except = Vec::new();
        for room in list(body, "except")? {
            if !is_room_name(room) {
                return Err(format!("except must be full room names; got {room:?}"));
            }
            except.push(room.to_owned());
        }
        Ok(PublishRequest {
            event,
            data,
            rooms,
            except,
        })
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Published now, with this backplane entry id.
    Published(String),
    /// The idempotency key was used before: that request's id, nothing published again.
    Repeated(String),
}

/// Publishes requests into the backplane, at most once per idempotency key
/// (`lua/publish_once.lua`: the check, the append and the record are one atomic step).
#[derive(Clone)]
pub struct Publisher {
    backplane: Backplane,
}

impl Publisher {
    /// A publisher over the node's backplane.
    pub fn new(backplane: Backplane) -> Self {
        Publisher { backplane }
    }

    /// Publishes `req`; with a key, a repeated key publishes nothing and returns the first id.
    pub async fn publish(
        &self,
        req: &PublishRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Outcome, PublishError> {
        let action = Action::Emit {
            rooms: req.rooms.clone(),
            except: req.except.clone(),
            except_sid: None,
            event: req.event.clone(),
            data: req.data.clone(),
        };
        let envelope = vec![action];
        match idempotency_key {
            None => self
                .backplane
                .publish(&envelope)
                .await
                .map(Outcome::Published),
            Some(key) => {
                let (id, new) = self
                    .backplane
                    .publish_once(key, IDEMPOTENCY_TTL_SECS, &envelope)
                    .await?;
                Ok(if new {
                    Outcome::Published(id)
                } else {
                    Outcome::Repeated(id)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PublishRequest, String> {
        PublishRequest::parse(v.as_object().unwrap())
    }

    #[test]
    fn targets_expand_and_must_exist() {
        let r = parse(
            json!({"event": "new-message", "data": {"a": 1}, "rooms": ["role:admin"],
            "users": ["7", "7"], "chats": ["42"], "except": ["user:9"]}),
        )
        .unwrap();
        assert_eq!(r.rooms, ["chat:42", "role:admin", "user:7"]);
        assert_eq!(r.except, ["user:9"]);
        assert_eq!(r.data.get(), r#"{"a":1}"#);
        assert!(parse(json!({"event": "x"})).unwrap_err().contains("target"));
        assert!(
            parse(json!({"event": "x", "rooms": ["lobby"]}))
                .unwrap_err()
                .contains("rooms")
        );
        assert!(
            parse(json!({"event": "x", "users": [1]}))
                .unwrap_err()
                .contains("users")
        );
        assert!(
            parse(json!({"data": 1, "users": ["a"]}))
                .unwrap_err()
                .contains("event")
        );
        assert!(
            parse(json!({"event": "connect", "users": ["a"]}))
                .unwrap_err()
                .contains("reserved")
        );
    }
}
