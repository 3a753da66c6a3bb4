//! Plumbing shared by the node's background tasks: the reconnect [`Backoff`], and
//! [`run_reconnecting`], the one loop every blocking reader (backplane reader, keyspace
//! listener, publish consumer) runs in — open a dedicated connection, read until it breaks,
//! wait, open a new one, until cancelled. Each reader supplies only its connect, read and
//! handle steps ([`BlockingReader`]). [`Bounded`] spawns a reader's side tasks on the node's
//! tracker with a cap on how many run at once.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a reader is back at most this long after Redis is.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Exponential reconnect delay, doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], with jitter:
/// each wait is drawn from the upper half of the current step, so the readers of every node that
/// lost the same Redis do not come back in lockstep, and no wait is longer than the step.
#[derive(Debug, Clone)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_MIN }
    }
}

impl Backoff {
    /// Starts again from the shortest delay (the reader made progress).
    pub fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }

    /// The next delay, and doubles the step for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_MAX);
        let half = step / 2;
        let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
        // A fresh `RandomState` hashes with new keys each time: enough randomness for a jitter,
        // without a random-number crate.
        let draw = RandomState::new().hash_one(spread) % spread;
        half + Duration::from_nanos(draw)
    }

    /// Waits the next delay, or less if `cancel` fires first.
    pub async fn sleep_or_cancel(&mut self, cancel: &CancellationToken) {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A reader that blocks on a dedicated Redis connection. Each step logs its own failures (and
/// sets its own health flags); [`run_reconnecting`] decides when to retry.
pub trait BlockingReader {
    /// The open connection (or subscription).
    type Conn;
    /// What one read returned.
    type Batch;

    /// Whether a successful [`connect`](Self::connect) alone shows the reader works (a
    /// confirmed subscription), so the backoff starts over; otherwise only a successful read
    /// does — a connection that opens but cannot read must not reconnect at the shortest delay.
    const CONNECT_RESETS_BACKOFF: bool = false;

    /// Opens a connection; `None` (after logging why) to retry after the backoff.
    fn connect(&mut self) -> impl Future<Output = Option<Self::Conn>> + Send;

    /// One blocking read; `None` (after logging why) when the connection is lost. Dropped
    /// mid-way when the task is cancelled.
    fn read(&mut self, conn: &mut Self::Conn) -> impl Future<Output = Option<Self::Batch>> + Send;

    /// Handles what a read returned. Never interrupted by cancellation, so a batch is applied
    /// whole.
    fn handle(&mut self, batch: Self::Batch) -> impl Future<Output = ()> + Send;
}

/// Runs `reader` until `cancel`: connects, reads and handles until the connection is lost,
/// then waits `backoff` and connects again. `backoff` is the caller's, so a reader that
/// retried something before (the backplane's positioning) continues its schedule.
pub async fn run_reconnecting<R: BlockingReader>(
    reader: &mut R,
    mut backoff: Backoff,
    cancel: &CancellationToken,
) {
    while !cancel.is_cancelled() {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = reader.connect() => c,
        };
        let Some(mut conn) = conn else {
            backoff.sleep_or_cancel(cancel).await;
            continue;
        };
        if R::CONNECT_RESETS_BACKOFF {
            backoff.reset();
        }
        loop {
            let batch = tokio::select! {
                _ = cancel.cancelled() => return,
                b = reader.read(&mut conn) => b,
            };
            let Some(batch) = batch else { break };
            backoff.reset();
            reader.handle(batch).await;
        }
        backoff.sleep_or_cancel(cancel).await;
    }
}

/// Retries `op` with `backoff` until it succeeds; `None` once `cancel` fires. `on_error` logs
/// each failure.
pub async fn retry_until_ok<T, E, F: Future<Output = Result<T, E>>>(
    mut op: impl FnMut() -> F,
    mut on_error: impl FnMut(E),
    backoff: &mut Backoff,
    cancel: &CancellationToken,
) -> Option<T> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            r = op() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    on_error(e);
                    backoff.sleep_or_cancel(cancel).await;
                }
            },
        }
    }
}

/// Tasks spawned on the node's tracker, at most a fixed number running at once: the drain
/// waits for them like for any task, and a burst of work cannot spawn without limit.
#[derive(Clone)]
pub struct Bounded {
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Bounded {
    /// At most `max` of the tasks spawned through this run at once, on `tasks`.
    pub fn new(tasks: TaskTracker, max: usize) -> Self {
        Bounded {
            tasks,
            slots: Arc::new(Semaphore::new(max)),
        }
    }

    /// Spawns `task` once a slot is free, waiting for one meanwhile — the caller slows down
    /// instead of dropping work. Returns false, without running `task`, if `cancel` fires
    /// first.
    pub async fn spawn<F>(&self, task: F, cancel: &CancellationToken) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = tokio::select! {
            _ = cancel.cancelled() => return false,
            s = self.slots.clone().acquire_owned() => s,
        };
        // The semaphore is never closed, so the wait can only end with a slot.
        let Ok(slot) = slot else { return false };
        self.tasks.spawn(async move {
            task.await;
            drop(slot);
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_upper_half_of_each_step() {
        let mut b = Backoff::default();
        let mut step = BACKOFF_MIN;
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside ({step:?}/2, {step:?}]"
            );
            step = (step * 2).min(BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[tokio::test]
    async fn a_bounded_spawn_waits_for_a_free_slot_and_gives_up_on_cancel() {
        let tracker = TaskTracker::new();
        let bounded = Bounded::new(tracker.clone(), 2);
        let cancel = CancellationToken::new();
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..2 {
            let mut released = released.clone();
            let task = async move {
                let _ = released.wait_for(|r| *r).await;
            };
            assert!(bounded.spawn(task, &cancel).await);
        }
        let third = bounded.spawn(async {}, &cancel);
        tokio::pin!(third);
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut third).await;
        assert!(waited.is_err(), "a third task waits while two run");
        release.send_replace(true);
        assert!(third.await, "and runs once one finished");
        tracker.close();
        tracker.wait().await;

        let full = Bounded::new(TaskTracker::new(), 0);
        cancel.cancel();
        assert!(!full.spawn(async {}, &cancel).await);
    }

    /// Connects fail once, then each connection yields two batches and is lost.
    struct Flaky {
        connects: u32,
        reads_left: u32,
        handled: Vec<u32>,
        stop_after: usize,
        cancel: CancellationToken,
    }

    impl BlockingReader for Flaky {
        type Conn = ();
        type Batch = u32;

        async fn connect(&mut self) -> Option<()> {
            self.connects += 1;
            self.reads_left = 2;
            (self.connects > 1).then_some(())
        }

        async fn read(&mut self, _: &mut ()) -> Option<u32> {
            self.reads_left = self.reads_left.checked_sub(1)?;
            Some(self.connects)
        }

        async fn handle(&mut self, batch: u32) {
            self.handled.push(batch);
            if self.handled.len() == self.stop_after {
                self.cancel.cancel();
            }
        }
    }

    #[tokio::test]
    async fn the_reconnect_loop_retries_connects_and_lost_connections_until_cancelled() {
        let cancel = CancellationToken::new();
        let mut reader = Flaky {
            connects: 0,
            reads_left: 0,
            handled: Vec::new(),
            stop_after: 4,
            cancel: cancel.clone(),
        };
        run_reconnecting(&mut reader, Backoff::default(), &cancel).await;
        assert_eq!(reader.handled, vec![2, 2, 3, 3]);
        assert_eq!(reader.connects, 3);
    }
}
