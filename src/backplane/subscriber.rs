//! The subscriber loop: one RESP3 pub/sub connection per node, on which it subscribes to its
//! own canary channel and to every room channel [`Interest`] registered, and applies each frame
//! that arrives to the local sockets — chat messages in offset order, gaps filled from the log.
//!
//! On every (re)connect it subscribes everything registered and syncs every followed chat
//! (reads its offset and fills what was published while it was away); a full push queue
//! (frames dropped, [`QUEUE`]) triggers the same sync. Frames are applied one at a time, so a
//! gap fill delays what follows it instead of letting it overtake.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, PushKind, Value};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::canary::{self, Canary};
use super::deliver::Deliverer;
use super::frame::Frame;
use super::interest::{BATCH, Control, Interest, Position, chat_of_room};
use super::{Action, Envelope};
use crate::health::Health;
use crate::redis::keys;
use crate::tasks::Backoff;

/// Frames queued between the connection and this loop; beyond, frames are dropped and every
/// followed chat is synced (chat messages are filled from the log, other events are lost).
pub const QUEUE: usize = 100_000;

/// How often the subscriber connection is probed with a `PING` (answered within the command
/// timeout, or the connection is replaced).
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The subscriber connection's `CLIENT SETNAME`: `fanout-sub:<node id>`, so operators (and
/// tests) find it in `CLIENT LIST`.
pub fn client_name(node_id: &str) -> String {
    format!("fanout-sub:{node_id}")
}

/// What a `chat:message`'s data says about its place in the chat.
#[derive(Deserialize)]
struct Seq {
    #[serde(rename = "chatId")]
    chat_id: String,
    offset: u64,
    epoch: String,
}

/// Runs until `cancel`: keeps the subscriber connection open (publishing it on `link` for the
/// interest manager) and applies what arrives.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    client: redis::Client,
    interest: Arc<Interest>,
    deliverer: Arc<Deliverer>,
    canary: Arc<Canary>,
    health: Arc<Health>,
    link: watch::Sender<Option<MultiplexedConnection>>,
    mut control: mpsc::UnboundedReceiver<Control>,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let node_channel = keys::node_channel(canary.node_id());
    let mut loop_state = Loop {
        client,
        interest,
        deliverer,
        canary,
        node_channel,
    };
    while !cancel.is_cancelled() {
        let (tx, mut rx) = mpsc::channel::<PushInfo>(QUEUE);
        let overflow = Arc::new(AtomicBool::new(false));
        let flag = overflow.clone();
        let push = move |info: PushInfo| -> Result<(), ()> {
            match tx.try_send(info) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    flag.store(true, Ordering::SeqCst);
                    crate::metrics::backplane_overflow();
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            }
        };
        let conn = match loop_state.open(push).await {
            Ok(conn) => conn,
            Err(e) => {
                health.set_reader_running(false);
                crate::metrics::redis_error("subscribe", &e);
                tracing::warn!(error = %e, "subscriber cannot connect; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        let mut probe = conn.clone();
        link.send_replace(Some(conn));
        health.set_reader_running(true);
        // Everything published while no connection was subscribed is in the chats' logs.
        loop_state.sync(loop_state.interest.followed_chats()).await;
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if overflow.swap(false, Ordering::SeqCst) {
                loop_state.sync(loop_state.interest.followed_chats()).await;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                push = rx.recv() => match push {
                    Some(p) if p.kind == PushKind::Disconnection => break,
                    Some(p) => loop_state.handle(p).await,
                    None => break,
                },
                c = control.recv() => match c {
                    Some(Control::Sync(chats)) => loop_state.sync(chats).await,
                    None => break,
                },
                _ = ping.tick() => {
                    // A connection cut without a reset (a partition) stays silent forever:
                    // only a command that goes unanswered tells.
                    let pong: redis::RedisResult<()> = redis::cmd("PING").query_async(&mut probe).await;
                    if let Err(e) = pong {
                        crate::metrics::redis_error("subscriber_ping", &e);
                        break;
                    }
                }
            }
        }
        link.send_replace(None);
        health.set_reader_running(false);
        if !cancel.is_cancelled() {
            tracing::warn!("subscriber lost redis; reconnecting");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
    health.set_reader_running(false);
    tracing::debug!("subscriber stopped");
}

struct Loop {
    client: redis::Client,
    interest: Arc<Interest>,
    deliverer: Arc<Deliverer>,
    canary: Arc<Canary>,
    node_channel: String,
}

impl Loop {
    /// Opens the connection, names it, subscribes the canary channel and every registered room.
    async fn open(
        &self,
        push: impl redis::aio::AsyncPushSender,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let mut conn = crate::redis::pubsub_connection(&self.client, push).await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(client_name(self.canary.node_id()))
            .query_async::<()>(&mut conn)
            .await?;
        conn.subscribe(&self.node_channel).await?;
        let rooms = self.interest.rooms();
        let channels: Vec<String> = rooms.iter().map(|r| keys::room_channel(r)).collect();
        for chunk in channels.chunks(BATCH) {
            conn.subscribe(chunk).await?;
        }
        crate::metrics::subscription_changes("subscribe", rooms.len());
        crate::metrics::subscriptions(rooms.len());
        Ok(conn)
    }

    /// Applies one push: a canary of this node, or a frame of a room.
    async fn handle(&mut self, push: PushInfo) {
        if push.kind != PushKind::Message && push.kind != PushKind::SMessage {
            return;
        }
        let mut data = push.data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
            return;
        };
        let (Value::BulkString(channel), Value::BulkString(payload)) = (channel, payload) else {
            return;
        };
        if channel == self.node_channel.as_bytes() {
            if let Some(token) = std::str::from_utf8(&payload)
                .ok()
                .and_then(canary::parse_token)
            {
                self.canary.returned(0, token);
            }
            return;
        }
        let frame: Frame = match serde_json::from_slice(&payload) {
            Ok(f) => f,
            // A newer node may publish an action this build does not know: skip it.
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame; skipped");
                return;
            }
        };
        if let Some(seq) = chat_message_seq(&frame.actions) {
            self.chat_message(seq, frame).await;
        } else {
            self.apply(&frame.origin, &frame.actions, frame.at_ms).await;
        }
    }

    async fn apply(&self, origin: &str, actions: &Envelope, at_ms: Option<u64>) {
        self.deliverer.apply(origin, actions).await;
        crate::metrics::entry_applied(at_ms);
    }

    /// A `chat:message` frame: delivered after whatever precedes it in the chat, once.
    async fn chat_message(&mut self, seq: Seq, frame: Frame) {
        let Some(pos) = self.interest.position(&seq.chat_id) else {
            // Not followed (unsubscribed while the frame travelled, or the position could not
            // be read at the join): deliver, and follow from here.
            self.apply(&frame.origin, &frame.actions, frame.at_ms).await;
            self.interest.set_position(
                &seq.chat_id,
                Position {
                    epoch: Some(seq.epoch),
                    last: seq.offset,
                },
            );
            return;
        };
        let same_epoch = pos.epoch.as_deref() == Some(seq.epoch.as_str());
        if same_epoch && seq.offset <= pos.last {
            return; // delivered already (by a gap fill or a sync)
        }
        // From here on every earlier offset of this epoch must have been delivered; in another
        // epoch (the chat's sequence restarted after this node began following it) all of them.
        let from = if same_epoch { pos.last + 1 } else { 1 };
        if seq.offset > from {
            self.fill(&seq.chat_id, &seq.epoch, from, seq.offset - 1)
                .await;
        }
        self.apply(&frame.origin, &frame.actions, frame.at_ms).await;
        self.interest.set_position(
            &seq.chat_id,
            Position {
                epoch: Some(seq.epoch),
                last: seq.offset,
            },
        );
    }

    /// Delivers offsets `from..=to` of `chat_id` in `epoch` from the chat's log; what the log no
    /// longer holds (trimmed, expired, another epoch by now) is counted as lost.
    async fn fill(&self, chat_id: &str, epoch: &str, from: u64, to: u64) {
        let wanted = to - from + 1;
        let (current, messages) = match self.interest.chats().range(chat_id, from, to).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, chat = %chat_id, "gap fill failed");
                crate::metrics::gap(0, wanted);
                return;
            }
        };
        if current.as_deref() != Some(epoch) {
            crate::metrics::gap(0, wanted);
            return;
        }
        let filled = messages.len() as u64;
        for message in &messages {
            match crate::chat::message_envelope(message) {
                Ok(envelope) => self.apply("", &envelope, None).await,
                Err(e) => tracing::error!(error = %e, "chat:message not serializable"),
            }
        }
        crate::metrics::gap(filled, wanted.saturating_sub(filled));
        tracing::debug!(chat = %chat_id, from, to, filled, "offset gap filled");
    }

    /// Reads the offsets of `chats` and delivers from their logs what this node has not.
    async fn sync(&mut self, chats: Vec<String>) {
        for chunk in chats.chunks(BATCH) {
            let found = match self.interest.chats().positions(chunk).await {
                Ok(found) => found,
                Err(e) => {
                    // The next message of each chat finds its gap instead.
                    tracing::warn!(error = %e, "chat offsets not read; gaps fill on the next message");
                    return;
                }
            };
            for (chat, now) in chunk.iter().zip(found) {
                let Some(pos) = self.interest.position(chat) else {
                    continue;
                };
                let Some(epoch) = now.epoch else {
                    continue; // the chat has no sequence (deleted, or Redis lost it)
                };
                let same_epoch = pos.epoch.as_deref() == Some(epoch.as_str());
                // A position without epoch means "nothing sent before this node followed".
                let from = if same_epoch || pos.epoch.is_none() {
                    pos.last + 1
                } else {
                    1
                };
                if now.seq >= from {
                    self.fill(chat, &epoch, from, now.seq).await;
                }
                if now.seq >= from || !same_epoch {
                    self.interest.set_position(
                        chat,
                        Position {
                            epoch: Some(epoch),
                            last: now.seq.max(if same_epoch { pos.last } else { 0 }),
                        },
                    );
                }
            }
        }
    }
}

/// The chat position of a frame that is one `chat:message` to its chat's room.
fn chat_message_seq(actions: &Envelope) -> Option<Seq> {
    let [
        Action::Emit {
            rooms, event, data, ..
        },
    ] = actions.as_slice()
    else {
        return None;
    };
    if event != "chat:message" || rooms.len() != 1 {
        return None;
    }
    let seq: Seq = serde_json::from_str(data.get()).ok()?;
    (chat_of_room(&rooms[0]) == Some(seq.chat_id.as_str())).then_some(seq)
}
