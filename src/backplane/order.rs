//! Chat order on the subscriber loop: each followed chat's `chat:message` frames reach the
//! local sockets in offset order, once, and a gap is filled from the chat's log before anything
//! newer of that chat.
//!
//! The reads this takes (a gap's range; a sync's offsets and ranges) run beside the loop, as
//! futures it polls next to the frames, and what they read is applied on the loop. While a chat
//! has a read pending, its frames wait in [`Pending`] and are applied after the read; every
//! other room goes on. Before, each read ran on the loop itself: during a failover, a read that
//! went to the dead master held the frames of every room, on every master, for the command
//! timeout (docs/architecture.md section 4, "Reads beside the loop").

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::deliver::Deliverer;
use super::frame::Frame;
use super::interest::{BATCH, Interest, Position};
use crate::chat::ChatMessage;

/// Reads of chat logs in flight at once; the rest wait their turn (a fill before a sync). Few:
/// hundreds of requests in flight while redis-rs recovers from a failover wedged its cluster
/// connection (docs/reliability.md).
pub const READS_IN_FLIGHT: usize = 8;

/// Gap ranges one sync reads at once (a sync reads the offsets of up to [`BATCH`] chats, then
/// the range of each chat that has a gap).
const RANGES_IN_FLIGHT: usize = 8;

/// Frames of one chat kept while its read is pending; beyond, they are dropped and the chat is
/// synced once the read is applied (they are in its log).
pub const HELD_MAX: usize = 10_000;

/// A read that has not finished by then counts as failed (each command is bounded by the
/// command timeout; this bounds a sync's sequence of them).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a `chat:message`'s data says about its place in the chat.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Seq {
    /// The chat.
    #[serde(rename = "chatId")]
    pub chat_id: String,
    /// The message's offset.
    pub offset: u64,
    /// The epoch of the chat's sequence.
    pub epoch: String,
}

/// A gap of one chat: offsets `from..=to` of `epoch` are missing before a frame of that epoch,
/// as seen while the chat stood at `before`.
#[derive(Debug, Clone)]
struct Gap {
    chat: String,
    epoch: String,
    from: u64,
    to: u64,
    before: Position,
}

/// What a chat's log said: its current epoch and the retained messages of the range asked.
type Range = (Option<String>, Vec<ChatMessage>);

/// A finished read.
enum Done {
    Synced(Vec<(String, Synced)>),
    Filled(Gap, redis::RedisResult<Range>),
}

/// What a sync read of one chat found.
enum Synced {
    /// The offsets (or the gap's range) could not be read.
    Unreadable,
    /// Not followed, or no sequence in Redis: nothing to deliver.
    Nothing,
    /// The chat stands at `seq` of `epoch`; `range` holds `from..=seq` when `seq >= from`.
    Read {
        before: Position,
        epoch: String,
        seq: u64,
        range: Option<Range>,
    },
}

/// The chats with a read pending and the frames that wait for it (generic over the frame for
/// its tests).
#[derive(Debug)]
pub struct Pending<T> {
    chats: HashMap<String, Waiting<T>>,
}

#[derive(Debug)]
struct Waiting<T> {
    reads: u32,
    held: Vec<T>,
    overflowed: bool,
}

/// What a chat's last pending read leaves behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Released<T> {
    /// Reads of the chat are still pending.
    Waiting,
    /// The frames that waited, in arrival order.
    Frames(Vec<T>),
    /// More than [`HELD_MAX`] frames arrived: all were dropped, the chat needs a sync.
    Overflowed,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            chats: HashMap::new(),
        }
    }
}

impl<T> Pending<T> {
    /// One more read of `chat` is pending.
    pub fn add(&mut self, chat: &str) {
        self.chats
            .entry(chat.to_owned())
            .or_insert_with(|| Waiting {
                reads: 0,
                held: Vec::new(),
                overflowed: false,
            })
            .reads += 1;
    }

    /// Whether `chat` has a read pending.
    pub fn waits(&self, chat: &str) -> bool {
        self.chats.contains_key(chat)
    }

    /// Keeps `frame` until `chat`'s reads are applied; false (and nothing kept) when the chat has
    /// none pending.
    pub fn hold(&mut self, chat: &str, frame: T) -> bool {
        let Some(w) = self.chats.get_mut(chat) else {
            return false;
        };
        if w.overflowed || w.held.len() >= HELD_MAX {
            w.overflowed = true;
            w.held.clear();
        } else {
            w.held.push(frame);
        }
        true
    }

    /// One read of `chat` was applied.
    pub fn release(&mut self, chat: &str) -> Released<T> {
        let Some(w) = self.chats.get_mut(chat) else {
            return Released::Frames(Vec::new());
        };
        w.reads = w.reads.saturating_sub(1);
        if w.reads > 0 {
            return Released::Waiting;
        }
        match self.chats.remove(chat) {
            Some(w) if w.overflowed => Released::Overflowed,
            Some(w) => Released::Frames(w.held),
            None => Released::Frames(Vec::new()),
        }
    }

    /// Forgets what `chat`'s frames were kept (they are in its log); its reads stay pending.
    pub fn drop_held(&mut self, chat: &str) {
        if let Some(w) = self.chats.get_mut(chat) {
            w.held.clear();
        }
    }

    /// Chats with a read pending.
    pub fn len(&self) -> usize {
        self.chats.len()
    }

    /// Whether no chat has a read pending.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }
}

/// The chat order of one subscriber connection (a new connection starts a new one and syncs
/// every followed chat: what a dropped one held is in the logs).
pub struct ChatOrder {
    interest: Arc<Interest>,
    deliverer: Arc<Deliverer>,
    reads: FuturesUnordered<BoxFuture<'static, Done>>,
    fills: VecDeque<Gap>,
    syncs: VecDeque<Vec<String>>,
    pending: Pending<(Seq, Frame)>,
    /// A read failed (the log unreadable for a moment): the loop syncs every chat soon.
    resync_wanted: bool,
}

impl ChatOrder {
    /// An order with nothing pending.
    pub fn new(interest: Arc<Interest>, deliverer: Arc<Deliverer>) -> Self {
        ChatOrder {
            interest,
            deliverer,
            reads: FuturesUnordered::new(),
            fills: VecDeque::new(),
            syncs: VecDeque::new(),
            pending: Pending::default(),
            resync_wanted: false,
        }
    }

    /// Whether a read failed since the last call (the loop then plans a sync of every chat).
    pub fn take_resync_wanted(&mut self) -> bool {
        std::mem::take(&mut self.resync_wanted)
    }

    /// Asks for a sync of `chats`: their offsets are read and what this node has not delivered
    /// is delivered from their logs; their frames wait for it. One read per master (Redis
    /// Cluster) and per [`BATCH`] chats, so that a master failing over holds its own chats
    /// only.
    pub fn sync(&mut self, chats: Vec<String>) {
        let mut by_master: HashMap<Option<Arc<str>>, Vec<String>> = HashMap::new();
        for chat in chats {
            self.pending.add(&chat);
            let master = self.interest.chats().master_of(&chat);
            by_master.entry(master).or_default().push(chat);
        }
        for chats in by_master.into_values() {
            for chunk in chats.chunks(BATCH) {
                self.syncs.push_back(chunk.to_vec());
            }
        }
        self.start();
    }

    /// The next finished read (pending forever while none is in flight: for `select!`).
    pub async fn next_read(&mut self) -> DoneRead {
        match self.reads.next().await {
            Some(done) => DoneRead(done),
            None => std::future::pending().await,
        }
    }

    /// A `chat:message` frame: delivered after whatever precedes it in the chat, once.
    pub async fn frame(&mut self, seq: Seq, frame: Frame) {
        if self.pending.waits(&seq.chat_id) {
            let chat = seq.chat_id.clone();
            self.pending.hold(&chat, (seq, frame));
            return;
        }
        let Some(pos) = self.interest.position(&seq.chat_id) else {
            // Not followed (unsubscribed while the frame travelled, or the position could not
            // be read at the join): deliver, and follow from here.
            self.deliver(seq, &frame).await;
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
            let gap = Gap {
                chat: seq.chat_id.clone(),
                epoch: seq.epoch.clone(),
                from,
                to: seq.offset - 1,
                before: pos,
            };
            self.pending.add(&gap.chat);
            self.pending.hold(&gap.chat, (seq, frame));
            self.fills.push_back(gap);
            self.start();
            return;
        }
        self.deliver(seq, &frame).await;
    }

    /// Applies `frame` and records its offset as the chat's last delivered.
    async fn deliver(&mut self, seq: Seq, frame: &Frame) {
        self.apply(frame).await;
        self.interest.set_position(
            &seq.chat_id,
            Position {
                epoch: Some(seq.epoch),
                last: seq.offset,
            },
        );
    }

    /// Applies a finished read, then the frames that waited for it, and starts the next reads.
    pub async fn finished(&mut self, DoneRead(done): DoneRead) {
        match done {
            Done::Filled(gap, read) => self.filled(gap, read).await,
            Done::Synced(chats) => {
                let mut unreadable = 0usize;
                for (chat, synced) in chats {
                    if matches!(synced, Synced::Unreadable) {
                        unreadable += 1;
                    }
                    self.synced(&chat, synced).await;
                }
                if unreadable > 0 {
                    tracing::warn!(chats = unreadable, "chat offsets or logs not read; retried");
                    self.resync_wanted = true;
                }
            }
        }
        self.start();
    }

    async fn filled(&mut self, gap: Gap, read: redis::RedisResult<Range>) {
        match read {
            Err(e) => {
                // Delivering the frames that wait would skip the gap for good; they are in the
                // log, which the next sync reads.
                tracing::warn!(error = %e, chat = %gap.chat, "gap fill failed; retried");
                crate::metrics::redis_error("gap_fill", &e);
                self.resync_wanted = true;
                self.pending.drop_held(&gap.chat);
            }
            Ok(range) => {
                if self.interest.position(&gap.chat).as_ref() == Some(&gap.before) {
                    self.deliver_range(&gap.chat, &gap.epoch, gap.to - gap.from + 1, range)
                        .await;
                    self.interest.set_position(
                        &gap.chat,
                        Position {
                            epoch: Some(gap.epoch.clone()),
                            last: gap.to,
                        },
                    );
                }
                // Else the chat was left and joined again meanwhile: the frames that waited
                // are weighed against its new position.
            }
        }
        self.release(&gap.chat).await;
    }

    async fn synced(&mut self, chat: &str, synced: Synced) {
        if let Synced::Read {
            before,
            epoch,
            seq,
            range,
        } = synced
        {
            match self.interest.position(chat) {
                Some(pos) if pos == before => {
                    let same_epoch = before.epoch.as_deref() == Some(epoch.as_str());
                    let from = sync_from(&before, &epoch);
                    if let Some(range) = range {
                        let wanted = seq.saturating_sub(from) + 1;
                        self.deliver_range(chat, &epoch, wanted, range).await;
                    }
                    if seq >= from || !same_epoch {
                        self.interest.set_position(
                            chat,
                            Position {
                                epoch: Some(epoch),
                                last: seq.max(if same_epoch { before.last } else { 0 }),
                            },
                        );
                    }
                }
                // Left and joined again while the read was in flight: read it again.
                Some(_) => self.sync(vec![chat.to_owned()]),
                None => {}
            }
        }
        self.release(chat).await;
    }

    // `&mut self` here and in `apply`: the reads in flight are not `Sync`, so a shared borrow
    // of the order held across an await would make the subscriber's future not `Send`.

    /// Delivers what a chat's log returned for offsets of `epoch`; `wanted` offsets were asked
    /// for, and what the log no longer holds (trimmed, expired, another epoch by now) is counted
    /// as lost.
    async fn deliver_range(&mut self, chat: &str, epoch: &str, wanted: u64, range: Range) {
        let (current, messages) = range;
        if current.as_deref() != Some(epoch) {
            crate::metrics::gap(0, wanted);
            return;
        }
        let filled = messages.len() as u64;
        for message in &messages {
            match crate::chat::message_envelope(message) {
                Ok(envelope) => {
                    self.deliverer.apply("", &envelope).await;
                    crate::metrics::entry_applied(None);
                }
                Err(e) => tracing::error!(error = %e, "chat:message not serializable"),
            }
        }
        crate::metrics::gap(filled, wanted.saturating_sub(filled));
        tracing::debug!(chat = %chat, wanted, filled, "offset gap filled");
    }

    /// One read of `chat` applied: once none is pending, the frames that waited go through
    /// [`ChatOrder::frame`] in arrival order (one may find a gap and wait again, with the rest
    /// behind it).
    async fn release(&mut self, chat: &str) {
        match self.pending.release(chat) {
            Released::Waiting => {}
            Released::Overflowed => {
                tracing::warn!(
                    chat = %chat,
                    held = HELD_MAX,
                    "too many frames waited for a read; the chat is synced"
                );
                self.sync(vec![chat.to_owned()]);
            }
            Released::Frames(frames) => {
                for (seq, frame) in frames {
                    self.frame(seq, frame).await;
                }
            }
        }
    }

    async fn apply(&mut self, frame: &Frame) {
        self.deliverer.apply(&frame.origin, &frame.actions).await;
        crate::metrics::entry_applied(frame.at_ms);
    }

    /// Starts queued reads, fills first, up to [`READS_IN_FLIGHT`].
    fn start(&mut self) {
        crate::metrics::chats_waiting(self.pending.len());
        while self.reads.len() < READS_IN_FLIGHT {
            if let Some(gap) = self.fills.pop_front() {
                let chats = self.interest.chats().clone();
                self.reads.push(Box::pin(async move {
                    let read = crate::redis::within(
                        READ_TIMEOUT,
                        chats.range(&gap.chat, gap.from, gap.to),
                    )
                    .await;
                    Done::Filled(gap, read)
                }));
            } else if let Some(batch) = self.syncs.pop_front() {
                let interest = self.interest.clone();
                self.reads.push(Box::pin(async move {
                    let all = batch.clone();
                    match tokio::time::timeout(READ_TIMEOUT, sync_read(interest, batch)).await {
                        Ok(read) => Done::Synced(read),
                        Err(_) => {
                            Done::Synced(all.into_iter().map(|c| (c, Synced::Unreadable)).collect())
                        }
                    }
                }));
            } else {
                break;
            }
        }
    }
}

/// A finished read, for [`ChatOrder::finished`].
pub struct DoneRead(Done);

/// The first offset a sync delivers of a chat standing at `before` whose sequence is now in
/// `epoch`: the next one in the same epoch (or when nothing was sent before this node followed,
/// a position without epoch), all of them in another.
fn sync_from(before: &Position, epoch: &str) -> u64 {
    if before.epoch.is_none() || before.epoch.as_deref() == Some(epoch) {
        before.last + 1
    } else {
        1
    }
}

/// Reads the offsets of `chats`, then the range each one misses from its log; the positions are
/// taken when the read starts (the chats' frames wait meanwhile, so they do not move).
async fn sync_read(interest: Arc<Interest>, chats: Vec<String>) -> Vec<(String, Synced)> {
    let found = match interest.chats().positions(&chats).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, chats = chats.len(), "chat offsets not read");
            return chats.into_iter().map(|c| (c, Synced::Unreadable)).collect();
        }
    };
    let reads = chats.into_iter().zip(found).map(|(chat, now)| {
        let interest = interest.clone();
        async move {
            let (Some(before), Some(epoch)) = (interest.position(&chat), now.epoch) else {
                return (chat, Synced::Nothing);
            };
            let from = sync_from(&before, &epoch);
            let range = if now.seq >= from {
                match interest.chats().range(&chat, from, now.seq).await {
                    Ok(range) => Some(range),
                    Err(e) => {
                        tracing::debug!(error = %e, chat = %chat, "chat log not read");
                        crate::metrics::redis_error("gap_fill", &e);
                        return (chat, Synced::Unreadable);
                    }
                }
            } else {
                None
            };
            let synced = Synced::Read {
                before,
                epoch,
                seq: now.seq,
                range,
            };
            (chat, synced)
        }
    });
    futures_util::stream::iter(reads)
        .buffer_unordered(RANGES_IN_FLIGHT)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_wait_for_every_pending_read_of_their_chat_and_come_back_in_order() {
        let mut p: Pending<u32> = Pending::default();
        assert!(!p.hold("a", 1), "no read pending: nothing is kept");
        p.add("a");
        p.add("a");
        assert!(p.hold("a", 1) && p.hold("a", 2));
        assert!(!p.waits("b"));
        assert_eq!(p.release("a"), Released::Waiting);
        assert!(p.hold("a", 3));
        assert_eq!(p.release("a"), Released::Frames(vec![1, 2, 3]));
        assert!(p.is_empty());
        assert_eq!(p.release("a"), Released::Frames(Vec::new()));
    }

    #[test]
    fn dropped_frames_leave_the_reads_pending() {
        let mut p: Pending<u32> = Pending::default();
        p.add("a");
        p.hold("a", 1);
        p.drop_held("a");
        assert!(p.waits("a"));
        p.hold("a", 2);
        assert_eq!(p.release("a"), Released::Frames(vec![2]));
    }

    #[test]
    fn too_many_frames_are_dropped_and_the_chat_asks_for_a_sync() {
        let mut p: Pending<usize> = Pending::default();
        p.add("a");
        for i in 0..=HELD_MAX {
            assert!(p.hold("a", i));
        }
        assert!(p.hold("a", 0), "still waiting after the overflow");
        assert_eq!(p.len(), 1);
        assert_eq!(p.release("a"), Released::Overflowed);
        assert!(p.is_empty());
    }

    #[test]
    fn a_sync_starts_after_the_last_delivered_offset_or_at_one_in_a_new_epoch() {
        let at = |epoch: Option<&str>, last| Position {
            epoch: epoch.map(str::to_owned),
            last,
        };
        assert_eq!(sync_from(&at(Some("e1"), 7), "e1"), 8);
        assert_eq!(sync_from(&at(None, 0), "e1"), 1);
        assert_eq!(sync_from(&at(None, 4), "e1"), 5);
        assert_eq!(sync_from(&at(Some("e1"), 7), "e2"), 1);
    }
}
