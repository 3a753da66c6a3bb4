//! Chat domain logic: sending, history, typing, read receipts, and (in [`membership`]) who
//! belongs to which chat. It never sees a socket: the gateway hands it validated requests and
//! turns its results into ACKs.
//!
//! A `chat:send` costs one Redis round trip: `chat_send.lua` checks membership and dedup,
//! assigns the offset, appends to history and publishes the message's frame to the chat's
//! channel, atomically on one slot. The message is ACCEPTED once the script returned: it is in
//! history (the log of record) and on its way to every node subscribed to the chat, in offset
//! order; a node that sees a gap in a chat's offsets fills it with [`Chats::range`].
//!
//! Every Redis command of the domain lives in [`store`]; this module decides, the store reads
//! and writes. Room names are built here only: [`chat_room`], [`user_room`], [`role_room`].

pub mod membership;
pub mod store;

use serde::Serialize;

use crate::backplane::{Action, Backplane, Envelope};
use crate::clock;
use crate::error::{ClientError, ErrorCode};
use crate::redis::scripts::chat_history::Read;
use crate::redis::scripts::chat_send::{PublishCommand, SendArgs, Sent};
pub use store::ChatPosition;
use store::ChatStore;

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

/// The kinds of room, each the prefix of a room name `<kind>:<id>` ([`chat_room`],
/// [`user_room`], [`role_room`] build them; the server API accepts only these).
pub const ROOM_KINDS: [&str; 3] = ["chat", "user", "role"];

/// The room of a chat's live sockets.
pub fn chat_room(chat_id: &str) -> String {
    format!("{}:{chat_id}", ROOM_KINDS[0])
}

/// The room of all of a user's sockets.
pub fn user_room(user_id: &str) -> String {
    format!("{}:{user_id}", ROOM_KINDS[1])
}

/// The room of a role context.
pub fn role_room(role_context_id: &str) -> String {
    format!("{}:{role_context_id}", ROOM_KINDS[2])
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

/// The one wire form of a `chat:message`: an emit of the message to the chat's room.
/// `chat_send.lua` publishes exactly this, in a [`crate::backplane::frame::Frame`] (cut from it,
/// see [`crate::redis::scripts::chat_send`]).
pub fn message_envelope(message: &ChatMessage) -> Result<Envelope, serde_json::Error> {
    Ok(vec![Action::emit(
        vec![chat_room(&message.chat_id)],
        "chat:message",
        message,
    )?])
}

/// What an accepted (or deduplicated) send returns.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    store: ChatStore,
    backplane: Backplane,
    settings: ChatSettings,
    publish: PublishCommand,
}

impl Chats {
    /// A service over the node's shared connection and backplane publisher; `chat:send`
    /// publishes with `PUBLISH` (one Redis, Sentinel) until [`Chats::with_publish`] says
    /// otherwise.
    pub fn new(conn: crate::redis::Conn, backplane: Backplane, settings: ChatSettings) -> Self {
        Chats {
            store: ChatStore::new(conn, settings.history_maxlen),
            backplane,
            settings,
            publish: PublishCommand::Publish,
        }
    }

    /// The same service, publishing accepted messages with `publish` (`SPUBLISH` on Redis
    /// Cluster).
    pub fn with_publish(self, publish: PublishCommand) -> Self {
        Chats { publish, ..self }
    }

    /// The same service answering `ACCEPTED` only once `replicas` Redis replicas confirmed the
    /// message within `timeout` (`REDIS_WAIT_REPLICAS`, `REDIS_WAIT_TIMEOUT_MS`); else the
    /// ACK is `UNAVAILABLE` and a retry with the same `clientMsgId` finds the first message.
    pub fn with_wait(self, confirm: crate::redis::Confirm) -> Self {
        Chats {
            store: self.store.with_wait(confirm),
            ..self
        }
    }

    /// The same service sending through an optimistic transaction (`CHAT_SEND_PATH=
    /// transaction`): `WATCH`/`MULTI`/`EXEC` on `pool`'s connections for the
    /// common case, `chat_send.lua` for the rest (docs/architecture.md §1).
    pub fn with_transactions(self, pool: crate::redis::Exclusive) -> Self {
        Chats {
            store: self.store.with_transactions(pool),
            ..self
        }
    }

    /// `FORBIDDEN` unless `user` is a member of `chat_id`.
    pub async fn require_member(&self, user: &str, chat_id: &str) -> Result<(), ClientError> {
        let member = self
            .store
            .is_member(chat_id, user)
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
        self.store.chats_of(user).await
    }

    /// The users who share at least one chat with `user` (never `user` itself), sorted.
    pub async fn peers(&self, user: &str) -> Result<Vec<String>, redis::RedisError> {
        self.store.peers_of(user).await
    }

    /// Accepts a message into the chat's history and publishes it to the chat's room.
    pub async fn send(&self, sender: &str, req: &SendRequest) -> Result<Accepted, ClientError> {
        let message_id = uuid::Uuid::now_v7().to_string();
        let created_at = clock::now_iso();
        let candidate_epoch = new_epoch();
        let sent = self
            .store
            .send(&SendArgs {
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
                now_secs: clock::now_ms() / 1000,
                dedup_ttl_secs: self.settings.dedup_ttl_secs,
                node_id: self.backplane.node_id(),
                publish: self.publish,
            })
            .await
            .map_err(|e| ClientError::from_store(&e))?;
        match sent {
            Sent::Forbidden => Err(forbidden(&req.chat_id)),
            Sent::Accepted(accepted) => {
                crate::metrics::message_accepted(accepted.duplicate);
                Ok(accepted)
            }
        }
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
        let read = self
            .store
            .history(chat_id, reader, since, epoch, limit)
            .await
            .map_err(|e| ClientError::from_redis(&e))?;
        match read {
            Read::Forbidden => Err(forbidden(chat_id)),
            Read::Page(history) => Ok(history),
        }
    }

    /// The Redis Cluster master that serves `chat_id` now, if known; `None` on one Redis and on
    /// Sentinel. Readers of many chats group them by it, so that one master's outage fails
    /// only its own chats' reads.
    pub fn master_of(&self, chat_id: &str) -> Option<std::sync::Arc<str>> {
        self.store.master_of(chat_id)
    }

    /// Where each of `chat_ids` stands (epoch and last offset), in order, in one round trip.
    pub async fn positions(
        &self,
        chat_ids: &[String],
    ) -> Result<Vec<ChatPosition>, redis::RedisError> {
        self.store.positions(chat_ids).await
    }

    /// The chat's current epoch and its retained messages with offsets in `[from, to]`, oldest
    /// first, as `chat:message` carries them: what fills a gap in a chat's offsets. No
    /// membership check (nodes call it, not clients).
    pub async fn range(
        &self,
        chat_id: &str,
        from: u64,
        to: u64,
    ) -> Result<(Option<String>, Vec<ChatMessage>), redis::RedisError> {
        self.store.range(chat_id, from, to).await
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
        self.publish(vec![action]).await
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
        self.publish(vec![action]).await
    }

    async fn publish(&self, actions: Vec<Action>) -> Result<(), ClientError> {
        self.backplane
            .publish(&actions)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_kind_colon_id_and_the_api_accepts_them() {
        assert_eq!(chat_room("42"), "chat:42");
        assert_eq!(user_room("7"), "user:7");
        assert_eq!(role_room("admin"), "role:admin");
        for room in [chat_room("a"), user_room("b"), role_room("c")] {
            assert!(crate::publish::is_room_name(&room), "{room}");
        }
    }
}
