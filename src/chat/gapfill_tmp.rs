//! TEMPORARY (replaced by the script branch's ChatStore::positions/range at merge).

use redis::streams::StreamRangeReply;

use super::{ChatMessage, Chats};
use crate::redis::keys::ChatKeys;

/// Where a chat's sequence stands in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPosition {
    /// Current epoch, `None` when the chat has no sequence.
    pub epoch: Option<String>,
    /// Last assigned offset.
    pub seq: u64,
}

impl Chats {
    /// Positions of `chat_ids`, one pipelined round trip.
    pub async fn positions(&self, chat_ids: &[String]) -> redis::RedisResult<Vec<ChatPosition>> {
        let mut pipe = redis::pipe();
        for id in chat_ids {
            pipe.cmd("HMGET")
                .arg(ChatKeys::new(id, 8).meta())
                .arg("seq")
                .arg("epoch");
        }
        let mut conn = self.conn();
        let rows: Vec<(Option<u64>, Option<String>)> = pipe.query_async(&mut conn).await?;
        Ok(rows
            .into_iter()
            .map(|(seq, epoch)| ChatPosition {
                epoch,
                seq: seq.unwrap_or(0),
            })
            .collect())
    }

    /// The chat's epoch and its retained messages with offsets in `from..=to`.
    pub async fn range(
        &self,
        chat_id: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<(Option<String>, Vec<ChatMessage>)> {
        let k = ChatKeys::new(chat_id, 8);
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(k.meta()).arg("epoch");
        pipe.cmd("XRANGE")
            .arg(k.log())
            .arg(format!("0-{from}"))
            .arg(format!("0-{to}"));
        let mut conn = self.conn();
        let (epoch, range): (Option<String>, StreamRangeReply) =
            pipe.query_async(&mut conn).await?;
        let Some(epoch) = epoch else {
            return Ok((None, Vec::new()));
        };
        let mut out = Vec::new();
        for e in range.ids {
            let Some(offset) = e.id.strip_prefix("0-").and_then(|o| o.parse().ok()) else {
                continue;
            };
            let f = |n: &str| e.get::<String>(n);
            let (Some(id), Some(sender_id), Some(kind), Some(content), Some(created_at)) = (
                f("id"),
                f("senderId"),
                f("type"),
                f("content"),
                f("createdAt"),
            ) else {
                continue;
            };
            out.push(ChatMessage {
                id,
                chat_id: chat_id.to_owned(),
                sender_id,
                client_msg_id: f("clientMsgId").filter(|s| !s.is_empty()),
                kind,
                content,
                created_at,
                offset,
                epoch: epoch.clone(),
            });
        }
        Ok((Some(epoch), out))
    }
}
