//! A socket's event budget (docs/protocol.md §8: `RATE_LIMIT_PER_SEC`, `RATE_LIMIT_BURST`) and the
//! disconnect that ends sustained abuse. Owns only the counting; [`super::ack`] answers the
//! refused events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// A socket's event budget, and how many events in a row it refused: sustained abuse ends in a
/// disconnect.
#[derive(Clone)]
pub struct EventBudget(Arc<BudgetState>);

/// The shared state behind [`EventBudget`].
pub struct BudgetState {
    limiter: governor::DefaultDirectRateLimiter,
    refused_in_a_row: AtomicU32,
    disconnect_after: u32,
}

/// What the budget says about one event.
pub enum Verdict {
    /// Within the budget: handle it.
    Admit,
    /// Over the budget: answer `RATE_LIMITED`, do not handle it.
    Refuse,
    /// Over the budget too many times in a row: disconnect the socket.
    Disconnect,
}

impl EventBudget {
    /// A budget of `per_sec` events a second with bursts of `burst` (0 = `per_sec`); after
    /// `disconnect_after` refusals in a row (0 = never) the verdict is [`Verdict::Disconnect`].
    pub fn new((per_sec, burst): (u32, u32), disconnect_after: u32) -> Self {
        let per_sec = std::num::NonZeroU32::new(per_sec).unwrap_or(std::num::NonZeroU32::MIN);
        let burst = std::num::NonZeroU32::new(burst).unwrap_or(per_sec);
        let quota = governor::Quota::per_second(per_sec).allow_burst(burst);
        EventBudget(Arc::new(BudgetState {
            limiter: governor::RateLimiter::direct(quota),
            refused_in_a_row: AtomicU32::new(0),
            disconnect_after,
        }))
    }

    /// Takes one event from the budget.
    pub fn check(&self) -> Verdict {
        if self.0.limiter.check().is_ok() {
            self.0.refused_in_a_row.store(0, Relaxed);
            return Verdict::Admit;
        }
        let refused = self.0.refused_in_a_row.fetch_add(1, Relaxed) + 1;
        if self.0.disconnect_after > 0 && refused >= self.0.disconnect_after {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

/// The event was over the socket's budget; it was answered `RATE_LIMITED` and not handled.
#[derive(Debug, thiserror::Error)]
#[error("event over the socket's budget")]
pub struct OverBudget;
