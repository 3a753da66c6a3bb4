//! Membership changes as presence sees them: users who start sharing a chat must learn each
//! other's current state, since no transition of theirs will tell them.
//!
//! The server API changes membership through here ([`Presence::create_chat`],
//! [`Presence::add_members`]), one call each: the peers each added user had before, the change
//! itself ([`crate::chat::Chats`]), then the introductions — so only pairs that are new hear of each other.

use std::collections::HashSet;

use serde_json::json;

use super::{Presence, PresenceError};
use crate::backplane::Action;
use crate::chat::user_room;
use crate::clock;

impl Presence {
    /// Creates a chat (or adds to an existing one) with `members`, and introduces the members
    /// who were not peers before to each other.
    pub async fn create_chat(
        &self,
        chat_id: &str,
        members: &[String],
    ) -> Result<(), PresenceError> {
        let before = self.peers_before(members).await?;
        self.chats.create_chat(chat_id, members).await?;
        self.introduce(chat_id, &before).await
    }

    /// Adds `users` to a chat, and introduces them to the members they were not peers of.
    pub async fn add_members(&self, chat_id: &str, users: &[String]) -> Result<(), PresenceError> {
        let before = self.peers_before(users).await?;
        self.chats.add_members(chat_id, users).await?;
        self.introduce(chat_id, &before).await
    }

    /// Each user's peers before a membership change.
    async fn peers_before(
        &self,
        users: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, PresenceError> {
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            out.push((u.clone(), self.peers(u).await?));
        }
        Ok(out)
    }

    /// Makes users who just started sharing a chat learn each other's current state: for each
    /// pair that was not already peers, an online user is announced to the other one.
    /// `before` holds each added user's peers before the change.
    async fn introduce(
        &self,
        chat_id: &str,
        added: &[(String, Vec<String>)],
    ) -> Result<(), PresenceError> {
        let members = self.chats.members(chat_id).await?;
        let online: HashSet<String> = self.online_among(&members).await?.into_iter().collect();
        let now = clock::now_iso();
        // (to, about) pairs: two users added together are a new pair seen from both sides, but
        // each must hear of the other once.
        let mut told: HashSet<(&str, &str)> = HashSet::new();
        let mut envelope = Vec::new();
        for (user, before) in added {
            let new_peers = members.iter().filter(|m| *m != user && !before.contains(m));
            for peer in new_peers {
                for (to, about) in [
                    (user.as_str(), peer.as_str()),
                    (peer.as_str(), user.as_str()),
                ] {
                    if online.contains(about) && told.insert((to, about)) {
                        envelope.push(presence_emit(to, about, &now)?);
                    }
                }
            }
        }
        if !envelope.is_empty() {
            self.backplane.publish(&envelope).await?;
        }
        Ok(())
    }
}

/// An unversioned `presence:online` of `about` for `to`'s sockets.
fn presence_emit(to: &str, about: &str, now: &str) -> Result<Action, PresenceError> {
    Ok(Action::emit(
        vec![user_room(to)],
        "presence:online",
        &json!({ "userId": about, "timestamp": now }),
    )?)
}
