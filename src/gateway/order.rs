//! Send order: keeps a socket's `chat:send`s in the order they arrived, even when the client
//! does not wait for each ACK. socketioxide runs every event in its own task, so two sends of
//! one socket could otherwise reach Redis — and get their offsets — in the other order. Each
//! send takes a ticket when it is read off the socket (in arrival order) and is handled when
//! its turn comes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

/// Whether `event` is a send (or its inbound alias): sends take a ticket and answer failures in
/// `chat:send`'s shape (docs/protocol.md §3).
pub fn is_send(event: &str) -> bool {
    matches!(event, "chat:send" | "sendMessage")
}

/// A socket's queue of sends, by ticket.
#[derive(Clone)]
pub struct SendOrder(Arc<SendOrderState>);

/// The state behind [`SendOrder`].
pub struct SendOrderState {
    next_ticket: AtomicU64,
    /// The ticket being served; created at the socket's first send (its shared state is ~350
    /// bytes, and most sockets, in a large room, only ever receive).
    serving: OnceLock<watch::Sender<u64>>,
    /// Most sends that may wait for their turn at once.
    max_waiting: u64,
}

impl SendOrder {
    /// A queue that holds at most `max_waiting` sends: while Redis stalls, what a socket queues
    /// (each send holding its payload) is bounded by a count, not by how long the stall lasts.
    pub fn new(max_waiting: u32) -> Self {
        SendOrder(Arc::new(SendOrderState {
            next_ticket: AtomicU64::new(0),
            serving: OnceLock::new(),
            max_waiting: u64::from(max_waiting),
        }))
    }

    fn serving(&self) -> &watch::Sender<u64> {
        self.0.serving.get_or_init(|| watch::Sender::new(0))
    }

    /// The next ticket, or `None` when `max_waiting` sends are already waiting or running.
    pub fn take_ticket(&self) -> Option<u64> {
        let serving = *self.serving().borrow();
        let relaxed = Ordering::Relaxed;
        self.0
            .next_ticket
            .fetch_update(relaxed, relaxed, |next| {
                (next.saturating_sub(serving) < self.0.max_waiting).then_some(next + 1)
            })
            .ok()
    }

    /// Waits until every send with an earlier ticket was handled.
    pub async fn turn(self, ticket: u64) -> Turn {
        let mut serving = self.serving().subscribe();
        // The sender lives in the order, which this function holds: the wait cannot fail.
        let _ = serving.wait_for(|now| *now >= ticket).await;
        Turn {
            order: self,
            ticket,
        }
    }
}

/// A send's turn; the next one's comes when this is dropped, whatever the outcome.
pub struct Turn {
    order: SendOrder,
    ticket: u64,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.order.serving().send_replace(self.ticket + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_may_have_at_most_its_cap_of_sends_waiting() {
        let order = SendOrder::new(2);
        assert_eq!(order.take_ticket(), Some(0));
        assert_eq!(order.take_ticket(), Some(1));
        assert_eq!(order.take_ticket(), None, "a third send waits behind two");
        // The first send finishes: one place frees up, and tickets stay consecutive.
        drop(Turn {
            order: order.clone(),
            ticket: 0,
        });
        assert_eq!(order.take_ticket(), Some(2));
        assert_eq!(order.take_ticket(), None);
    }
}
