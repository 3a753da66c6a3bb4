//! Who belongs to which chat, managed by backends through the server API.
//!
//! Membership is two sets — the chat's `members` (see [`crate::redis::keys::ChatKeys`]) and
//! `user:{<userId>}:chats` — which live
//! on different hash slots, so a change is a pipeline of commands rather than one script: the
//! chat's set is written first (it is what `chat:send` checks), then each user's set (what a
//! connecting socket reads to join its rooms). Live sockets follow through the backplane: the
//! change publishes a Join/Leave action on the chat's shard, ordered with the chat's messages.

use serde::Serialize;

use super::{Chats, chat_room, user_room};
use crate::backplane::{Action, PublishError};
use crate::clock;
use crate::redis::keys;

/// Errors of membership operations.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Redis refused or was unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The backplane publish failed.
    #[error("backplane: {0}")]
    Publish(#[from] PublishError),
}

impl crate::error::StoreError for MembershipError {
    fn redis(&self) -> Option<&redis::RedisError> {
        match self {
            MembershipError::Redis(r) => Some(r),
            MembershipError::Publish(p) => p.redis(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatCreated<'a> {
    chat_id: &'a str,
    members: &'a [String],
    timestamp: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChatDeleted<'a> {
    chat_id: &'a str,
    timestamp: String,
}

impl Chats {
    /// Creates a chat (or adds to an existing one) and emits `chat:created` to each member's
    /// sockets, which also join the chat's room.
    pub async fn create_chat(
        &self,
        chat_id: &str,
        members: &[String],
    ) -> Result<(), MembershipError> {
        self.store_members(chat_id, members).await?;
        let user_rooms: Vec<String> = members.iter().map(|u| user_room(u)).collect();
        let created = ChatCreated {
            chat_id,
            members,
            timestamp: clock::now_iso(),
        };
        let envelope = vec![
            Action::Join {
                of: user_rooms.clone(),
                join: vec![chat_room(chat_id)],
            },
            Action::emit(user_rooms, "chat:created", &created).map_err(PublishError::from)?,
        ];
        self.backplane.publish(chat_id, &envelope).await?;
        Ok(())
    }

    /// Adds members; their live sockets on every node join the chat's room.
    pub async fn add_members(
        &self,
        chat_id: &str,
        users: &[String],
    ) -> Result<(), MembershipError> {
        self.store_members(chat_id, users).await?;
        let envelope = vec![Action::Join {
            of: users.iter().map(|u| user_room(u)).collect(),
            join: vec![chat_room(chat_id)],
        }];
        self.backplane.publish(chat_id, &envelope).await?;
        Ok(())
    }

    /// Removes a member; their sockets leave the room. Returns false if they were not a member.
    pub async fn remove_member(&self, chat_id: &str, user: &str) -> Result<bool, MembershipError> {
        let mut conn = self.conn.clone();
        let (removed, _): (i64, i64) = redis::pipe()
            .cmd("SREM")
            .arg(self.keys(chat_id).members())
            .arg(user)
            .cmd("SREM")
            .arg(keys::user_chats(user))
            .arg(chat_id)
            .query_async(&mut conn)
            .await?;
        let envelope = vec![Action::Leave {
            of: vec![user_room(user)],
            leave: vec![chat_room(chat_id)],
        }];
        // Published even when the sets said "not a member": a socket may still sit in the room
        // after an earlier half-applied removal, and leaving twice is harmless.
        self.backplane.publish(chat_id, &envelope).await?;
        Ok(removed > 0)
    }

    /// The chat's members, sorted.
    pub async fn members(&self, chat_id: &str) -> Result<Vec<String>, MembershipError> {
        let mut conn = self.conn.clone();
        let mut users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys(chat_id).members())
            .query_async(&mut conn)
            .await?;
        users.sort();
        Ok(users)
    }

    /// Deletes a chat: its members, sequence and history; emits `chat:deleted` to the room and
    /// makes every socket leave it. Returns false if the chat did not exist.
    pub async fn delete_chat(&self, chat_id: &str) -> Result<bool, MembershipError> {
        let k = self.keys(chat_id);
        let mut conn = self.conn.clone();
        let (members, meta_exists): (Vec<String>, bool) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(k.members())
            .cmd("EXISTS")
            .arg(k.meta())
            .query_async(&mut conn)
            .await?;
        if members.is_empty() && !meta_exists {
            return Ok(false);
        }
        // The chat's own keys go first, so a send racing the deletion is refused as FORBIDDEN.
        // Its dedup keys are left to expire.
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(k.members())
            .arg(k.meta())
            .arg(k.log())
            .ignore();
        for user in &members {
            pipe.cmd("SREM")
                .arg(keys::user_chats(user))
                .arg(chat_id)
                .ignore();
        }
        let () = pipe.query_async(&mut conn).await?;
        let deleted = ChatDeleted {
            chat_id,
            timestamp: clock::now_iso(),
        };
        let room = chat_room(chat_id);
        let envelope = vec![
            Action::emit(vec![room.clone()], "chat:deleted", &deleted)
                .map_err(PublishError::from)?,
            Action::Leave {
                of: vec![room.clone()],
                leave: vec![room],
            },
        ];
        self.backplane.publish(chat_id, &envelope).await?;
        Ok(true)
    }

    async fn store_members(&self, chat_id: &str, users: &[String]) -> Result<(), MembershipError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(self.keys(chat_id).members())
            .arg(users)
            .ignore();
        for user in users {
            pipe.cmd("SADD")
                .arg(keys::user_chats(user))
                .arg(chat_id)
                .ignore();
        }
        let mut conn = self.conn.clone();
        let () = pipe.query_async(&mut conn).await?;
        Ok(())
    }
}
