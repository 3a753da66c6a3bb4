//! Who belongs to which chat, managed by backends through the server API.
//!
//! Membership is two sets — the chat's `members` and `user:{<userId>}:chats` — which live on
//! different hash slots, so a change is a pipeline of commands rather than one script (see
//! [`super::store`] for the order of the writes). Live sockets follow through the backplane:
//! the change publishes a Join/Leave action to the chat's channel and the user's
//! channel (see `backplane::route`).

use serde::Serialize;

use super::{Chats, chat_room, user_room};
use crate::backplane::Action;
use crate::clock;
use crate::error::DomainError;

/// Errors of membership operations (the one domain error; the name stays for callers).
pub type MembershipError = DomainError;

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
        self.store.add_members(chat_id, members).await?;
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
            Action::emit(user_rooms, "chat:created", &created)?,
        ];
        self.backplane.publish(&envelope).await?;
        Ok(())
    }

    /// Adds members; their live sockets on every node join the chat's room.
    pub async fn add_members(
        &self,
        chat_id: &str,
        users: &[String],
    ) -> Result<(), MembershipError> {
        self.store.add_members(chat_id, users).await?;
        let envelope = vec![Action::Join {
            of: users.iter().map(|u| user_room(u)).collect(),
            join: vec![chat_room(chat_id)],
        }];
        self.backplane.publish(&envelope).await?;
        Ok(())
    }

    /// Removes a member; their sockets leave the room. Returns false if they were not a member.
    pub async fn remove_member(&self, chat_id: &str, user: &str) -> Result<bool, MembershipError> {
        let removed = self.store.remove_member(chat_id, user).await?;
        let envelope = vec![Action::Leave {
            of: vec![user_room(user)],
            leave: vec![chat_room(chat_id)],
        }];
        // Published even when the sets said "not a member": a socket may still sit in the room
        // after an earlier half-applied removal, and leaving twice is harmless.
        self.backplane.publish(&envelope).await?;
        Ok(removed)
    }

    /// The chat's members, sorted.
    pub async fn members(&self, chat_id: &str) -> Result<Vec<String>, MembershipError> {
        Ok(self.store.members(chat_id).await?)
    }

    /// Deletes a chat: its members, sequence and history; emits `chat:deleted` to the room and
    /// makes every socket leave it. Returns false if the chat did not exist.
    pub async fn delete_chat(&self, chat_id: &str) -> Result<bool, MembershipError> {
        if !self.store.delete(chat_id).await? {
            return Ok(false);
        }
        let deleted = ChatDeleted {
            chat_id,
            timestamp: clock::now_iso(),
        };
        let room = chat_room(chat_id);
        let envelope = vec![
            Action::emit(vec![room.clone()], "chat:deleted", &deleted)?,
            Action::Leave {
                of: vec![room.clone()],
                leave: vec![room],
            },
        ];
        self.backplane.publish(&envelope).await?;
        Ok(true)
    }
}
