//! Every Redis command of the chat domain: membership sets, the send and history scripts.
//!
//! Model: a chat's keys live on the slot of its room, `{chat:<chatId>}` ([`ChatKeys`]), the slot
//! of the room's channel too; the set of a user's chats lives on the user's slot
//! (`user:{<userId>}:chats`). The two sets of one
//! membership therefore cannot change in one atomic step: writes go chat side first (what
//! `chat:send` checks), user side second (what a connecting socket reads to join its rooms).
//!
//! Guarantees: `send` is one atomic script (membership, dedup, offset, history append and the
//! publication to the chat's channel, on one slot); `range` reads the epoch and the messages in
//! one atomic step, so they belong together; a member added is allowed to send once [`ChatStore::add_members`]
//! returned, a member removed or a chat deleted is refused from the first write on (the chat's
//! own keys go first).
//!
//! Methods return domain types; replies are parsed here and in the script contracts of
//! [`crate::redis::scripts`], never in [`crate::chat`]'s logic.

use std::collections::HashSet;

use crate::redis::Conn;

use crate::error::DomainError;
use crate::metrics::redis_op;
use crate::redis::keys::{self, ChatKeys};
use crate::redis::scripts::chat_send_tx::{self, Decision};
use crate::redis::scripts::{self, chat_history, chat_send};
use crate::redis::{Confirm, Exclusive, Lent};

use super::ChatMessage;

/// The chat domain's view of Redis.
#[derive(Clone)]
pub struct ChatStore {
    conn: Conn,
    history_maxlen: u64,
    /// `REDIS_WAIT_REPLICAS` > 0: how accepted sends are confirmed.
    confirm: Option<Confirm>,
    /// `CHAT_SEND_PATH=transaction`: where sends try `WATCH`/`MULTI`/`EXEC` first.
    exclusive: Option<Exclusive>,
}

/// Read-and-commit rounds a send tries before it leaves a contended chat to the script.
const TX_ATTEMPTS: usize = 3;

/// How a transaction attempt ended.
enum Tx {
    /// Decided: refused or accepted (and confirmed, with `WAIT`).
    Done(chat_send::Sent),
    /// Nothing written; the script takes it, for this reason. `reusable`: the connection ended
    /// cleanly (after an error it is dropped instead).
    Script {
        reason: &'static str,
        reusable: bool,
    },
    /// A watched key changed: nothing written, read again.
    Aborted,
}

/// Where a chat's sequence stands ([`ChatStore::positions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPosition {
    /// The chat's current epoch; `None` before its first message (or once deleted).
    pub epoch: Option<String>,
    /// The chat's last assigned offset; 0 without a sequence.
    pub seq: u64,
}

impl ChatStore {
    /// A store over the node's shared connection; a chat retains its last `history_maxlen`
    /// (HISTORY_MAXLEN) messages.
    pub fn new(conn: Conn, history_maxlen: u64) -> Self {
        ChatStore {
            conn,
            history_maxlen,
            confirm: None,
            exclusive: None,
        }
    }

    /// The same store sending through an optimistic transaction on `pool`'s connections
    /// ([`chat_send_tx`]), the script taking the rare cases.
    pub fn with_transactions(self, pool: Exclusive) -> Self {
        ChatStore {
            exclusive: Some(pool),
            ..self
        }
    }

    /// The same store confirming every accepted send with `WAIT replicas timeout`.
    pub fn with_wait(self, confirm: Confirm) -> Self {
        ChatStore {
            confirm: Some(confirm),
            ..self
        }
    }

    fn keys(&self, chat_id: &str) -> ChatKeys {
        ChatKeys::new(chat_id)
    }

    /// True when `user` is a member of `chat_id`.
    pub async fn is_member(&self, chat_id: &str, user: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(self.keys(chat_id).members()).arg(user);
        redis_op("sismember", cmd.query_async(&mut conn)).await
    }

    /// The chats `user` is a member of.
    pub async fn chats_of(&self, user: &str) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(keys::user_chats(user));
        redis_op("smembers", cmd.query_async(&mut conn)).await
    }

    /// The chat's members, sorted.
    pub async fn members(&self, chat_id: &str) -> redis::RedisResult<Vec<String>> {
        let mut conn = self.conn.clone();
        let mut users: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys(chat_id).members())
            .query_async(&mut conn)
            .await?;
        users.sort();
        Ok(users)
    }

    /// The users who share at least one chat with `user` (never `user` itself), sorted.
    pub async fn peers_of(&self, user: &str) -> redis::RedisResult<Vec<String>> {
        let chats = self.chats_of(user).await?;
        if chats.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chat in &chats {
            pipe.cmd("SMEMBERS").arg(self.keys(chat).members());
        }
        let mut conn = self.conn.clone();
        let lists: Vec<Vec<String>> =
            redis_op("smembers_pipeline", pipe.query_async(&mut conn)).await?;
        let mut peers: Vec<String> = lists
            .into_iter()
            .flatten()
            .filter(|p| p != user)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        peers.sort();
        Ok(peers)
    }

    /// Adds `users` to the chat: the chat's set first, then each user's.
    pub async fn add_members(&self, chat_id: &str, users: &[String]) -> redis::RedisResult<()> {
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
        pipe.query_async(&mut conn).await
    }

    /// Removes `user` from the chat; false if they were not a member.
    pub async fn remove_member(&self, chat_id: &str, user: &str) -> redis::RedisResult<bool> {
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
        Ok(removed > 0)
    }

    /// Deletes the chat's members, sequence and history, and the chat from its members' sets.
    /// False if the chat did not exist.
    pub async fn delete(&self, chat_id: &str) -> redis::RedisResult<bool> {
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
        Ok(true)
    }

    /// Accepts or refuses one message: the message is in history and published to the chat's
    /// channel once this returns [`chat_send::Sent::Accepted`]. With transactions on, the
    /// common case runs as `WATCH`/`MULTI`/`EXEC` ([`chat_send_tx`]) and the rest as
    /// `chat_send.lua`; otherwise the script always.
    pub async fn send(
        &self,
        args: &chat_send::SendArgs<'_>,
    ) -> Result<chat_send::Sent, DomainError> {
        let reason = match &self.exclusive {
            None => "configured",
            Some(pool) => match self.send_tx(pool, args).await? {
                Ok(sent) => return Ok(sent),
                Err(reason) => reason,
            },
        };
        crate::metrics::chat_send_path("script", reason);
        self.send_script(args).await
    }

    /// The transaction path: `Ok(sent)`, or `Err(reason)` when the script must take the send
    /// (nothing was written).
    async fn send_tx(
        &self,
        pool: &Exclusive,
        args: &chat_send::SendArgs<'_>,
    ) -> Result<Result<chat_send::Sent, &'static str>, DomainError> {
        let meta = self.keys(args.chat_id).meta();
        for _ in 0..TX_ATTEMPTS {
            let mut lent = match pool.get(meta.as_bytes()).await {
                Ok(lent) => lent,
                Err(e) if e.is_timeout() => return Err(e.into()),
                // The script's connection knows how to find the master again.
                Err(_) => return Ok(Err("connect")),
            };
            match self.try_tx(&mut lent, args).await {
                Ok(Tx::Done(sent)) => {
                    pool.put(lent);
                    return Ok(Ok(sent));
                }
                Ok(Tx::Script { reason, reusable }) => {
                    if reusable {
                        pool.put(lent);
                    }
                    return Ok(Err(reason));
                }
                Ok(Tx::Aborted) => {
                    crate::metrics::chat_send_path("transaction", "aborted");
                    pool.put(lent);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Err("contention"))
    }

    /// One read-and-commit round on a lent connection. Errors before the `EXEC` was sent that
    /// are not timeouts (a moved slot, a demoted master) hand the send to the script; after
    /// it, the outcome is unknown and the error is the caller's, as with the script.
    async fn try_tx(
        &self,
        lent: &mut Lent,
        args: &chat_send::SendArgs<'_>,
    ) -> Result<Tx, DomainError> {
        let with_dedup = args.client_msg_id.is_some();
        let replies: redis::RedisResult<Vec<redis::Value>> = redis_op(
            "chat_send_tx_read",
            chat_send_tx::pipe_read(args).query_async(&mut lent.conn),
        )
        .await;
        let replies = match replies {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(e.into()),
            Err(_) => {
                return Ok(Tx::Script {
                    reason: "error",
                    reusable: false,
                });
            }
        };
        let read = chat_send_tx::parse_read(&replies, with_dedup)
            .ok_or_else(|| unexpected_reply("chat_send_tx_read", &replies))?;
        let (offset, epoch, refresh) = match chat_send_tx::decide(&read, args) {
            Decision::Commit {
                offset,
                epoch,
                refresh,
            } => (offset, epoch, refresh),
            Decision::Forbidden => {
                unwatch(lent).await?;
                crate::metrics::chat_send_path("transaction", "forbidden");
                return Ok(Tx::Done(chat_send::Sent::Forbidden));
            }
            Decision::Script(reason) => {
                unwatch(lent).await?;
                return Ok(Tx::Script {
                    reason,
                    reusable: true,
                });
            }
        };
        let pipe = chat_send_tx::pipe_commit(args, offset, &epoch, refresh)?;
        let reply: redis::RedisResult<redis::Value> =
            redis_op("chat_send_tx_exec", pipe.query_async(&mut lent.conn)).await;
        let reply = match reply {
            Ok(r) => r,
            // Refused at queueing (a slot moved since the read): nothing ran.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort) => {
                return Ok(Tx::Script {
                    reason: "exec_abort",
                    reusable: false,
                });
            }
            Err(e) => return Err(e.into()),
        };
        match chat_send_tx::parse_commit(&reply, offset) {
            None => return Ok(Tx::Aborted),
            Some(true) => {}
            Some(false) => {
                tracing::error!(chat = args.chat_id, offset, reply = ?reply, "chat send transaction wrote an unexpected entry");
                return Err(unexpected_reply("chat_send_tx_exec", &reply).into());
            }
        }
        crate::metrics::chat_send_path("transaction", "committed");
        if let Some(confirm) = &self.confirm
            && let Some(short) = confirm.wait_on(&mut lent.conn).await?
        {
            return Err(short.into());
        }
        Ok(Tx::Done(chat_send::Sent::Accepted(crate::chat::Accepted {
            message_id: args.message_id.to_owned(),
            offset,
            epoch,
            created_at: args.created_at.to_owned(),
            duplicate: false,
        })))
    }

    /// Runs `chat_send.lua` (and `WAIT`, when confirming).
    async fn send_script(
        &self,
        args: &chat_send::SendArgs<'_>,
    ) -> Result<chat_send::Sent, DomainError> {
        let call = chat_send::call(args)?;
        let Some(confirm) = &self.confirm else {
            let mut conn = self.conn.clone();
            let reply = scripts::invoke(&chat_send::SCRIPT, &mut conn, call).await?;
            return Ok(chat_send::parse(&reply)?);
        };
        let (reply, short) = confirm.invoke(&chat_send::SCRIPT, call).await?;
        let sent = chat_send::parse(&reply)?;
        // A refusal wrote nothing to confirm.
        match short {
            Some(short) if matches!(sent, chat_send::Sent::Accepted(_)) => Err(short.into()),
            _ => Ok(sent),
        }
    }

    /// Runs `chat_history.lua` for `reader`.
    pub async fn history(
        &self,
        chat_id: &str,
        reader: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        limit: u32,
    ) -> redis::RedisResult<chat_history::Read> {
        let k = self.keys(chat_id);
        let call = chat_history::call(&k, reader, since, epoch, limit, self.history_maxlen);
        let mut conn = self.conn.clone();
        let reply = scripts::invoke(&chat_history::SCRIPT, &mut conn, call).await?;
        chat_history::parse(chat_id, &reply)
    }

    /// The Redis Cluster master that serves `chat_id`'s keys now, if known (see
    /// [`crate::redis::Conn::master_of`]).
    pub fn master_of(&self, chat_id: &str) -> Option<std::sync::Arc<str>> {
        self.conn.master_of(self.keys(chat_id).meta().as_bytes())
    }

    /// The sequence position of each of `chat_ids`, in order, in one pipelined round trip
    /// (`HMGET <meta> epoch seq` each; the chats are on different slots, so this is not one
    /// atomic read).
    pub async fn positions(&self, chat_ids: &[String]) -> redis::RedisResult<Vec<ChatPosition>> {
        if chat_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chat in chat_ids {
            pipe.cmd("HMGET")
                .arg(self.keys(chat).meta())
                .arg("epoch")
                .arg("seq");
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> =
            redis_op("chat_positions", pipe.query_async(&mut conn)).await?;
        if replies.len() != chat_ids.len() {
            return Err(unexpected_reply("positions", &replies));
        }
        replies
            .iter()
            .map(|r| parse_position(r).ok_or_else(|| unexpected_reply("positions", r)))
            .collect()
    }

    /// The chat's current epoch (`None` without one) and its retained messages with offsets in
    /// `[from, to]`, oldest first, each as `chat:message` carries it; read atomically (MULTI:
    /// `HMGET <meta> epoch seq`, `XRANGE <log> 0-<from> 0-<to>`). Offsets no longer retained
    /// (older than the last HISTORY_MAXLEN, or expired with the history) are simply absent.
    pub async fn range(
        &self,
        chat_id: &str,
        from: u64,
        to: u64,
    ) -> redis::RedisResult<(Option<String>, Vec<ChatMessage>)> {
        let k = self.keys(chat_id);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(k.meta())
            .arg("epoch")
            .arg("seq")
            .cmd("XRANGE")
            .arg(k.log())
            .arg(format!("0-{from}"))
            .arg(format!("0-{to}"));
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> =
            redis_op("chat_range", pipe.query_async(&mut conn)).await?;
        let parsed = (|| {
            let position = parse_position(replies.first()?)?;
            let epoch = position.epoch.as_deref().unwrap_or("");
            let mut messages = chat_history::parse_entries(chat_id, epoch, replies.get(1)?)?;
            let floor = chat_history::retained_after(position.seq, self.history_maxlen);
            messages.retain(|m| m.offset > floor);
            Some((position.epoch, messages))
        })();
        parsed.ok_or_else(|| unexpected_reply("range", &replies))
    }
}

/// Ends a read phase that writes nothing, so the connection can be lent again.
async fn unwatch(lent: &mut Lent) -> redis::RedisResult<()> {
    redis_op("unwatch", redis::cmd("UNWATCH").query_async(&mut lent.conn)).await
}

/// One `HMGET <meta> epoch seq` reply.
fn parse_position(reply: &redis::Value) -> Option<ChatPosition> {
    let items = scripts::as_array(reply)?;
    let epoch = match items.first()? {
        redis::Value::Nil => None,
        v => Some(scripts::as_string(v)?),
    };
    let seq = match items.get(1)? {
        redis::Value::Nil => 0,
        v => scripts::as_u64(v)?,
    };
    Some(ChatPosition { epoch, seq })
}

fn unexpected_reply(what: &'static str, reply: &impl std::fmt::Debug) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{what}: {reply:?}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn positions_parse_missing_meta_as_no_epoch_and_offset_zero() {
        let none = Value::Array(vec![Value::Nil, Value::Nil]);
        assert_eq!(
            parse_position(&none),
            Some(ChatPosition {
                epoch: None,
                seq: 0
            })
        );
        let some = Value::Array(vec![bulk("ab12"), bulk("17")]);
        assert_eq!(
            parse_position(&some),
            Some(ChatPosition {
                epoch: Some("ab12".into()),
                seq: 17
            })
        );
        assert_eq!(parse_position(&Value::Array(vec![bulk("ab12")])), None);
        assert_eq!(
            parse_position(&Value::Array(vec![Value::Nil, bulk("x")])),
            None
        );
        assert_eq!(parse_position(&Value::Nil), None);
    }
}
