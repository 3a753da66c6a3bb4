//! Chat domain logic: sending, history, typing, read receipts, and (in [`membership`]) who
//! belongs to which chat. It never sees a socket: the gateway hands it validated requests and
//! turns its results into ACKs.
//!
//! A `chat:send` costs one Redis round trip: `chat_send.lua` checks membership and dedup,
//! assigns the offset, appends to history and to the chat's backplane shard, atomically on one
//! slot. The message is ACCEPTED once the script returned: it is in history and on its way to
//! every node, in offset order.

pub mod membership;

use redis::Value;
use redis::aio::ConnectionManager;
use serde::Serialize;

use crate::backplane::{Action, Backplane};
use crate::clock;
use crate::error::{ClientError, ErrorCode};
use crate::redis::{keys, scripts};

/// Tunables of the chat domain, from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct ChatSettings {
    /// HISTORY_MAXLEN.
    pub history_maxlen: u64,
    /// HISTORY_TTL_SECS.
    pub history_ttl_secs: u64,
    /// Dedup window of `clientMsgId`, seconds.
    pub dedup_ttl_secs: u64,
}

/// Allowed message types.
pub const MESSAGE_TYPES: [&str; 4] = ["text", "image", "file", "system"];
/// Default and maximum page size of `chat:history`.
pub const HISTORY_DEFAULT_LIMIT: u32 = 100;
/// Largest page of `chat:history`; larger limits are clamped.
pub const HISTORY_MAX_LIMIT: u32 = 1000;

/// The room of a chat's live sockets.
pub fn chat_room(chat_id: &str) -> String {
    format!("chat:{chat_id}")
}

/// The room of all of a user's sockets.
pub fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The room of a role context.
pub fn role_room(role_context_id: &str) -> String {
    format!("role:{role_context_id}")
}

/// A validated `chat:send`.
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Target chat.
    pub chat_id: String,
    /// Message body.
    pub content: String,
    /// Idempotency key.
    pub client_msg_id: Option<String>,
    /// One of [`MESSAGE_TYPES`].
    pub kind: String,
}

/// The `chat:message` payload (docs/protocol.md §3), also what `chat:history` returns.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    /// Message id.
    pub id: String,
    /// Chat id.
    pub chat_id: String,
    /// Sender's user id.
    pub sender_id: String,
    /// The sender's idempotency key, or null.
    pub client_msg_id: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Message body.
    pub content: String,
    /// Acceptance time.
    pub created_at: String,
    /// Sequence number in the chat.
    pub offset: u64,
    /// Life of the chat's sequence.
    pub epoch: String,
}

/// What an accepted (or deduplicated) send returns.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Message id.
    pub message_id: String,
    /// Offset in the chat.
    pub offset: u64,
    /// Epoch of the chat's sequence.
    pub epoch: String,
    /// Acceptance time.
    pub created_at: String,
    /// True when this was a retry of an earlier `clientMsgId`.
    pub duplicate: bool,
}

/// A page of history.
#[derive(Debug, Clone)]
pub struct History {
    /// Messages, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The chat's latest offset.
    pub offset: u64,
    /// The chat's current epoch.
    pub epoch: String,
    /// True when the client's position was void.
    pub reset: bool,
}

/// The chat service of one node.
#[derive(Clone)]
pub struct Chats {
    conn: ConnectionManager,
    backplane: Backplane,
    settings: ChatSettings,
}

impl Chats {
    /// A service over the node's shared connection and backplane publisher.
    pub fn new(conn: ConnectionManager, backplane: Backplane, settings: ChatSettings) -> Self {
        Chats {
            conn,
            backplane,
            settings,
        }
    }

    /// The Redis keys of a chat in this deployment.
    pub(crate) fn keys(&self, chat_id: &str) -> keys::ChatKeys {
        keys::ChatKeys::new(chat_id, self.backplane.shards())
    }

    /// The members SET key of a chat (presence reads it to find peers).
    pub(crate) fn members_key(&self, chat_id: &str) -> String {
        self.keys(chat_id).members()
    }

    /// `FORBIDDEN` unless `user` is a member of `chat_id`.
    pub async fn require_member(&self, user: &str, chat_id: &str) -> Result<(), ClientError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(self.keys(chat_id).members()).arg(user);
        let member: bool = crate::metrics::redis_op("sismember", cmd.query_async(&mut conn))
            .await
            .map_err(|e| ClientError::from_redis(&e))?;
        if member {
            Ok(())
        } else {
            Err(forbidden(chat_id))
        }
    }

    /// The chats `user` is a member of.
    pub async fn chats_of(&self, user: &str) -> Result<Vec<String>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::user_chats(user));
        crate::metrics::redis_op("smembers", cmd.query_async(&mut conn)).await
    }

    /// Accepts a message into the chat's history and publishes it to the chat's room.
    pub async fn send(&self, sender: &str, req: &SendRequest) -> Result<Accepted, ClientError> {
        let message_id = uuid::Uuid::now_v7().to_string();
        let created_at = clock::now_iso();
        let candidate_epoch = new_epoch();
        let call = scripts::chat_send_call(&scripts::SendArgs {
            chat_id: &req.chat_id,
            sender,
            message_id: &message_id,
            client_msg_id: req.client_msg_id.as_deref(),
            kind: &req.kind,
            content: &req.content,
            created_at: &created_at,
            candidate_epoch: &candidate_epoch,
            history_maxlen: self.settings.history_maxlen,
            history_ttl_secs: self.settings.history_ttl_secs,
            dedup_ttl_secs: self.settings.dedup_ttl_secs,
            shards: self.backplane.shards(),
            node_id: self.backplane.node_id(),
            backplane_maxlen: self.backplane.maxlen(),
        });
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = scripts::invoke(&scripts::CHAT_SEND, &mut conn, call)
            .await
            .map_err(|e| ClientError::from_redis(&e))?;
        let status = reply.first().and_then(as_string).unwrap_or_default();
        if status == "forbidden" {
            return Err(forbidden(&req.chat_id));
        }
        let accepted = (|| {
            Some(Accepted {
                message_id: as_string(reply.get(1)?)?,
                offset: as_u64(reply.get(2)?)?,
                epoch: as_string(reply.get(3)?)?,
                created_at: as_string(reply.get(4)?)?,
                duplicate: status == "dup",
            })
        })()
        .ok_or_else(|| ClientError::internal(&format!("unexpected chat_send reply {reply:?}")))?;
        crate::metrics::message_accepted(accepted.duplicate);
        Ok(accepted)
    }

    /// A page of the chat's history (docs/protocol.md §3 and §8).
    pub async fn history(
        &self,
        reader: &str,
        chat_id: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        limit: u32,
    ) -> Result<History, ClientError> {
        let limit = limit.clamp(1, HISTORY_MAX_LIMIT);
        let call = scripts::chat_history_call(&self.keys(chat_id), reader, since, epoch, limit);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = scripts::invoke(&scripts::CHAT_HISTORY, &mut conn, call)
            .await
            .map_err(|e| ClientError::from_redis(&e))?;
        if reply.first().and_then(as_string).as_deref() == Some("forbidden") {
            return Err(forbidden(chat_id));
        }
        parse_history(chat_id, &reply).ok_or_else(|| {
            ClientError::internal(&format!("unexpected chat_history reply {reply:?}"))
        })
    }

    /// Publishes a typing indicator to the chat's room, except the typing socket.
    pub async fn typing(
        &self,
        user: &str,
        sid: &str,
        chat_id: &str,
        is_typing: bool,
    ) -> Result<(), ClientError> {
        self.require_member(user, chat_id).await?;
        let data = serde_json::json!({ "chatId": chat_id, "userId": user, "isTyping": is_typing });
        let action = Action::Emit {
            rooms: vec![chat_room(chat_id)],
            except: Vec::new(),
            except_sid: Some(sid.to_owned()),
            event: "chat:typing".to_owned(),
            data: serde_json::value::to_raw_value(&data).map_err(|e| ClientError::internal(&e))?,
        };
        self.publish(chat_id, vec![action]).await
    }

    /// Publishes a read receipt to the whole chat room, the reader's socket included.
    pub async fn read(
        &self,
        user: &str,
        chat_id: &str,
        message_id: &str,
    ) -> Result<(), ClientError> {
        self.require_member(user, chat_id).await?;
        let data = serde_json::json!({
            "chatId": chat_id,
            "userId": user,
            "messageId": message_id,
            "timestamp": clock::now_iso(),
        });
        let action = Action::emit(vec![chat_room(chat_id)], "chat:read", &data)
            .map_err(|e| ClientError::internal(&e))?;
        self.publish(chat_id, vec![action]).await
    }

    async fn publish(&self, chat_id: &str, actions: Vec<Action>) -> Result<(), ClientError> {
        self.backplane
            .publish(chat_id, &actions)
            .await
            .map(|_| ())
            .map_err(|e| ClientError::from_store(&e))
    }
}

fn forbidden(chat_id: &str) -> ClientError {
    ClientError::new(
        ErrorCode::Forbidden,
        format!("not a member of chat {chat_id}"),
    )
}

/// A short random epoch name (8 hex characters).
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn parse_history(chat_id: &str, reply: &[Value]) -> Option<History> {
    let offset = as_u64(reply.get(1)?)?;
    let epoch = as_string(reply.get(2)?)?;
    let reset = as_u64(reply.get(3)?)? == 1;
    let Value::Array(entries) = reply.get(4)? else {
        return None;
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return None;
        };
        let id = as_string(parts.first()?)?;
        let msg_offset: u64 = id.strip_prefix("0-")?.parse().ok()?;
        let Value::Array(fields) = parts.get(1)? else {
            return None;
        };
        let field = |name: &str| -> Option<String> {
            fields
                .chunks(2)
                .find(|kv| kv.first().and_then(as_string).as_deref() == Some(name))
                .and_then(|kv| kv.get(1).and_then(as_string))
        };
        let client_msg_id = field("clientMsgId").filter(|s| !s.is_empty());
        messages.push(ChatMessage {
            id: field("id")?,
            chat_id: chat_id.to_owned(),
            sender_id: field("senderId")?,
            client_msg_id,
            kind: field("type")?,
            content: field("content")?,
            created_at: field("createdAt")?,
            offset: msg_offset,
            epoch: epoch.clone(),
        });
    }
    Some(History {
        messages,
        offset,
        epoch,
        reset,
    })
}

/// A Redis reply value as a string, if it is one (bulk, simple, or integer).
pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// A Redis reply value as a non-negative integer.
pub(crate) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other)?.parse().ok(),
    }
}
