//! fanout patch: the session's packet queue, in place of a tokio `mpsc` channel of `PacketBuf`
//! and a `watch` channel for volatile packets.
//!
//! Why: tokio's mpsc allocates its first block of 32 slots (32 × 48 bytes) and 512 bytes of
//! cache-padded shared state when the channel is created, and the watch channel another ~390
//! bytes: ~2.5 KB per session before anything is sent, for the session's whole life. Most
//! sockets of a chat gateway are idle. This queue lives inline in the [`Socket`](crate::socket::Socket)
//! (no shared allocation: both ends are the socket) and allocates its buffer at the first send;
//! a buffer grown by a burst is freed when it drains.
//!
//! Same semantics as the channels it replaces, as engineioxide uses them:
//! - bounded: queued packets plus outstanding [`QueuePermit`]s never exceed the capacity
//!   (`max_buffer_size`); `try_send` / `try_reserve` fail with `Full` or `Closed`;
//! - a permit taken before [`close`](PacketQueue::close) can still send, and the reader gets
//!   every packet queued before it sees the end;
//! - one reader at a time (the transport holding the socket's `internal_rx` lock); it takes
//!   buffered packets first, then the volatile slot, which keeps only the latest packet.

use std::{
    collections::VecDeque,
    pin::pin,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use engineioxide_core::PacketBuf;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc::error::TrySendError};

/// A drained buffer larger than this many slots is freed rather than kept for the next burst.
const KEEP_SLOTS: usize = 16;

/// The bounded packet queue between a socket's senders and its transport.
pub(crate) struct PacketQueue {
    state: Mutex<State>,
    /// The one reader waiting for packets (or for the end).
    reader: AtomicWaker,
    /// Senders waiting for room ([`send`](Self::send)) and [`closed`](Self::closed) waiters.
    waiters: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    packets: VecDeque<PacketBuf>,
    /// Places held by permits not yet used.
    reserved: usize,
    closed: bool,
    /// The latest volatile packet not yet written; a newer one replaces it.
    volatile: Option<PacketBuf>,
    /// A sender waits for room: the reader notifies `waiters` when it takes a packet.
    room_wanted: bool,
    /// The session is closing: the websocket writer stops once nothing is queued
    /// ([`interrupt_reader`](PacketQueue::interrupt_reader)).
    interrupted: bool,
}

impl State {
    fn is_full(&self, capacity: usize) -> bool {
        self.packets.len() + self.reserved >= capacity
    }

    /// The end, for the reader: closed, drained, and no permit left that could still send.
    fn is_finished(&self) -> bool {
        self.closed && self.packets.is_empty() && self.reserved == 0
    }

    /// Takes the oldest packet; returns whether a sender waiting for room must be woken.
    fn pop(&mut self) -> (Option<PacketBuf>, bool) {
        let packets = self.packets.pop_front();
        if self.packets.is_empty() && self.packets.capacity() > KEEP_SLOTS {
            self.packets = VecDeque::new();
        }
        let wake = packets.is_some() && std::mem::take(&mut self.room_wanted);
        (packets, wake)
    }
}

impl std::fmt::Debug for PacketQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state();
        f.debug_struct("PacketQueue")
            .field("queued", &s.packets.len())
            .field("reserved", &s.reserved)
            .field("capacity", &self.capacity)
            .field("closed", &s.closed)
            .field("volatile", &s.volatile.is_some())
            .finish()
    }
}

impl PacketQueue {
    /// An empty queue holding at most `capacity` packet groups; allocates nothing yet.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            reader: AtomicWaker::new(),
            waiters: Notify::new(),
            // tokio's mpsc panics on a zero capacity; a queue of zero could never send.
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; recover rather than spread a poison.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `packets` if there is room and the queue is open.
    pub(crate) fn try_send(&self, packets: PacketBuf) -> Result<(), TrySendError<PacketBuf>> {
        let mut s = self.state();
        if s.closed {
            return Err(TrySendError::Closed(packets));
        }
        if s.is_full(self.capacity) {
            return Err(TrySendError::Full(packets));
        }
        s.packets.push_back(packets);
        drop(s);
        self.reader.wake();
        Ok(())
    }

    /// Queues `packets`, waiting for room; gives them back if the queue is closed.
    pub(crate) async fn send(&self, mut packets: PacketBuf) -> Result<(), PacketBuf> {
        loop {
            let mut notified = pin!(self.waiters.notified());
            // Registered before the check, so a packet taken in between still wakes us.
            notified.as_mut().enable();
            self.state().room_wanted = true;
            match self.try_send(packets) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(p)) => return Err(p),
                Err(TrySendError::Full(p)) => packets = p,
            }
            notified.await;
        }
    }

    /// Holds a place for one packet group, to be filled with [`QueuePermit::send`].
    pub(crate) fn try_reserve(&self) -> Result<QueuePermit<'_>, TrySendError<()>> {
        let mut s = self.state();
        if s.closed {
            return Err(TrySendError::Closed(()));
        }
        if s.is_full(self.capacity) {
            return Err(TrySendError::Full(()));
        }
        s.reserved += 1;
        Ok(QueuePermit { queue: self })
    }

    /// Replaces the volatile packet waiting to be written; `false` if the queue is closed.
    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        let mut s = self.state();
        if s.closed {
            return false;
        }
        s.volatile = Some(packets);
        drop(s);
        self.reader.wake();
        true
    }

    /// Closes the queue: sends fail from now on; the reader still gets what was queued.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.reader.wake();
        self.waiters.notify_waiters();
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Resolves once the queue is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let mut notified = pin!(self.waiters.notified());
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// For the reader: the next buffered packet group, else the volatile one (`false` in the
    /// pair), `None` at the end. The caller must be the one reader (it holds `internal_rx`).
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<(PacketBuf, bool)>> {
        self.poll_next_inner(cx, false)
    }

    /// For the reader: waits for [`poll_next`](Self::poll_next). (The transports use
    /// `poll_next` and [`next_until_interrupted`](Self::next_until_interrupted).)
    #[cfg(any(test, feature = "__test_harness"))]
    pub(crate) async fn next(&self) -> Option<(PacketBuf, bool)> {
        std::future::poll_fn(|cx| self.poll_next_inner(cx, false)).await
    }

    /// Like [`next`](Self::next), but also `None` once [`interrupt_reader`](Self::interrupt_reader)
    /// was called and nothing is queued: the websocket writer's loop, which so needs no
    /// `select!` on the session's cancellation token (a `Notify` waiter registered and removed
    /// under the token's lock for every packet written).
    pub(crate) async fn next_until_interrupted(&self) -> Option<(PacketBuf, bool)> {
        std::future::poll_fn(|cx| self.poll_next_inner(cx, true)).await
    }

    /// Stops a reader in [`next_until_interrupted`](Self::next_until_interrupted) once it has
    /// taken what is queued (what the writer's biased select on the token did); sends still
    /// succeed until [`close`](Self::close). Called when the session closes, beside cancelling
    /// its token.
    pub(crate) fn interrupt_reader(&self) {
        self.state().interrupted = true;
        self.reader.wake();
    }

    fn poll_next_inner(
        &self,
        cx: &mut Context<'_>,
        interruptible: bool,
    ) -> Poll<Option<(PacketBuf, bool)>> {
        // A reader that finds a packet need not register: it is polled again before it waits.
        if let Some(next) = self.take_next(interruptible) {
            return Poll::Ready(next);
        }
        self.reader.register(cx.waker());
        // Looked at again after registering: a send between the two looks woke nobody.
        match self.take_next(interruptible) {
            Some(next) => Poll::Ready(next),
            None => Poll::Pending,
        }
    }

    /// What the reader gets now: `Some(Some(..))` a packet group, `Some(None)` the end (or the
    /// interruption), `None` nothing yet.
    fn take_next(&self, interruptible: bool) -> Option<Option<(PacketBuf, bool)>> {
        let mut s = self.state();
        let (packets, wake) = s.pop();
        let next = match packets {
            Some(p) => Some(Some((p, true))),
            None => match s.volatile.take() {
                Some(p) => Some(Some((p, false))),
                None if s.is_finished() || (interruptible && s.interrupted) => Some(None),
                None => None,
            },
        };
        drop(s);
        if wake {
            self.waiters.notify_waiters();
        }
        next
    }

    /// For the reader: the next buffered packet group if one is queued now.
    pub(crate) fn try_next(&self) -> Option<PacketBuf> {
        let (packets, wake) = self.state().pop();
        if wake {
            self.waiters.notify_waiters();
        }
        packets
    }

    /// A permit's place, given back unused or filled with `packets`.
    fn release(&self, packets: Option<PacketBuf>) {
        let mut s = self.state();
        s.reserved -= 1;
        let wake_reader = match packets {
            Some(p) => {
                s.packets.push_back(p);
                true
            }
            None => s.is_finished(),
        };
        let wake_senders = std::mem::take(&mut s.room_wanted);
        drop(s);
        if wake_reader {
            self.reader.wake();
        }
        if wake_senders {
            self.waiters.notify_waiters();
        }
    }
}

/// A place held in a [`PacketQueue`]; given back if dropped unused.
pub(crate) struct QueuePermit<'a> {
    queue: &'a PacketQueue,
}

impl QueuePermit<'_> {
    /// Queues `packets` in the held place (also after the queue was closed, like tokio's
    /// permits: the reader drains them before it sees the end).
    pub(crate) fn send(self, packets: PacketBuf) {
        let queue = self.queue;
        std::mem::forget(self);
        queue.release(Some(packets));
    }
}

impl Drop for QueuePermit<'_> {
    fn drop(&mut self) {
        self.queue.release(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engineioxide_core::{Packet, Str};
    use smallvec::smallvec;
    use std::time::Duration;

    fn msg(s: &'static str) -> PacketBuf {
        smallvec![Packet::Message(Str::from(s))]
    }

    fn text(p: &PacketBuf) -> &str {
        match &p[0] {
            Packet::Message(s) => s.as_str(),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn allocates_nothing_until_the_first_send() {
        let q = PacketQueue::new(128);
        assert_eq!(q.state().packets.capacity(), 0);
    }

    #[tokio::test]
    async fn keeps_order_and_counts_permits_against_the_capacity() {
        let q = PacketQueue::new(3);
        q.try_send(msg("a")).unwrap();
        let permit = q.try_reserve().unwrap();
        q.try_send(msg("b")).unwrap();
        assert!(matches!(q.try_send(msg("c")), Err(TrySendError::Full(_))));
        assert!(matches!(q.try_reserve(), Err(TrySendError::Full(()))));
        permit.send(msg("c"));
        let got: Vec<String> = [q.next().await, q.next().await, q.next().await]
            .into_iter()
            .map(|p| text(&p.unwrap().0).to_owned())
            .collect();
        assert_eq!(got, ["a", "b", "c"]);
        // A dropped permit gives its place back.
        drop(q.try_reserve().unwrap());
        for s in ["d", "e", "f"] {
            q.try_send(msg(s)).unwrap();
        }
    }

    #[tokio::test]
    async fn the_reader_drains_then_sees_the_end_after_close_and_the_last_permit() {
        let q = PacketQueue::new(4);
        q.try_send(msg("a")).unwrap();
        let permit = q.try_reserve().unwrap();
        q.close();
        assert!(q.is_closed());
        assert!(matches!(q.try_send(msg("x")), Err(TrySendError::Closed(_))));
        assert!(!q.send_volatile(msg("v")));
        assert_eq!(text(&q.next().await.unwrap().0), "a");
        // The permit may still send; until it is used or dropped the reader waits.
        let pending = tokio::time::timeout(Duration::from_millis(20), q.next()).await;
        assert!(pending.is_err(), "no end while a permit is outstanding");
        permit.send(msg("b"));
        assert_eq!(text(&q.next().await.unwrap().0), "b");
        assert!(q.next().await.is_none());
        tokio::time::timeout(Duration::from_secs(1), q.closed())
            .await
            .expect("closed() resolves once closed");
    }

    #[tokio::test]
    async fn volatile_keeps_the_latest_and_comes_after_buffered_packets() {
        let q = PacketQueue::new(4);
        assert!(q.send_volatile(msg("v1")));
        assert!(q.send_volatile(msg("v2")));
        q.try_send(msg("a")).unwrap();
        let (first, buffered) = q.next().await.unwrap();
        assert_eq!((text(&first), buffered), ("a", true));
        let (second, buffered) = q.next().await.unwrap();
        assert_eq!((text(&second), buffered), ("v2", false));
        assert!(q.try_next().is_none());
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_send_from_another_task() {
        let q = std::sync::Arc::new(PacketQueue::new(4));
        let reader = tokio::spawn({
            let q = q.clone();
            async move { q.next().await.map(|(p, _)| text(&p).to_owned()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.try_send(msg("late")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(1), reader).await;
        assert_eq!(got.unwrap().unwrap().as_deref(), Some("late"));
    }

    #[tokio::test]
    async fn send_waits_for_room_and_gives_the_packet_back_when_closed() {
        let q = std::sync::Arc::new(PacketQueue::new(1));
        q.try_send(msg("a")).unwrap();
        let sender = tokio::spawn({
            let q = q.clone();
            async move { q.send(msg("b")).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!sender.is_finished(), "the queue is full");
        assert_eq!(text(&q.try_next().unwrap()), "a");
        let sent = tokio::time::timeout(Duration::from_secs(1), sender).await;
        assert!(sent.unwrap().unwrap(), "taking a packet makes room");
        assert_eq!(text(&q.try_next().unwrap()), "b");

        q.try_send(msg("c")).unwrap();
        let blocked = tokio::spawn({
            let q = q.clone();
            async move { q.send(msg("d")).await.is_err() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.close();
        let refused = tokio::time::timeout(Duration::from_secs(1), blocked).await;
        assert!(refused.unwrap().unwrap(), "closing refuses a waiting send");
    }

    #[tokio::test]
    async fn an_interrupted_reader_takes_what_is_queued_then_stops() {
        let q = std::sync::Arc::new(PacketQueue::new(4));
        q.try_send(msg("a")).unwrap();
        q.interrupt_reader();
        let first = q
            .next_until_interrupted()
            .await
            .map(|(p, _)| text(&p).to_owned());
        assert_eq!(
            first.as_deref(),
            Some("a"),
            "queued before the interruption"
        );
        assert!(q.next_until_interrupted().await.is_none());
        // Only the writer's loop stops: sends still succeed and a plain reader still gets them.
        q.try_send(msg("b")).unwrap();
        assert_eq!(text(&q.next().await.unwrap().0), "b");

        // A reader already waiting is woken by the interruption.
        let q = std::sync::Arc::new(PacketQueue::new(4));
        let reader = tokio::spawn({
            let q = q.clone();
            async move { q.next_until_interrupted().await.is_none() }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!reader.is_finished(), "nothing queued, not interrupted yet");
        q.interrupt_reader();
        let stopped = tokio::time::timeout(Duration::from_secs(1), reader).await;
        assert!(stopped.unwrap().unwrap());
    }

    #[tokio::test]
    async fn a_drained_burst_buffer_is_freed() {
        let q = PacketQueue::new(128);
        for _ in 0..100 {
            q.try_send(msg("x")).unwrap();
        }
        while q.try_next().is_some() {}
        assert_eq!(q.state().packets.capacity(), 0);
    }
}
