//! `--token-secs`: short-lived tokens, as an identity provider issues them. Every connected
//! client refreshes its session on the live connection (`session:refresh`, docs/protocol.md
//! §1) every half lifetime, so a run measures delivery while sessions are being extended
//! instead of dropped and reconnected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::connect::Clients;
use crate::setup::{Run, user_id};

/// Refreshes in flight at once: enough to cover tens of thousands of clients in a fraction of
/// a lifetime, few enough not to be a load spike of their own.
const CONCURRENCY: usize = 256;

/// Refresh outcomes over the run.
#[derive(Default, Debug)]
pub struct RefreshStats {
    /// Refreshes the server granted.
    pub ok: AtomicU64,
    /// Refreshes refused, timed out or failed on a closed connection.
    pub failed: AtomicU64,
}

/// The refresh loop, stopped by [`Refresher::stop`].
pub struct Refresher {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<RefreshStats>,
}

impl Refresher {
    /// Starts refreshing every client's session every `--token-secs` / 2; `None` without
    /// `--token-secs`.
    pub fn spawn(run: &Run, clients: &Clients) -> Option<Refresher> {
        let secs = run.args.token_secs;
        if secs == 0 {
            return None;
        }
        let cancel = CancellationToken::new();
        let stats = Arc::new(RefreshStats::default());
        let slots = clients.slots.clone();
        let secret = run.args.jwt_secret.clone();
        let timeout = Duration::from_secs_f64(run.args.ack_timeout);
        let (stop, counts) = (cancel.clone(), Arc::clone(&stats));
        let task = tokio::spawn(async move {
            let period = Duration::from_millis(secs * 500);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let exp = fanout::auth::now_secs() + secs;
                let jobs = slots
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.open().map(|c| (i, c)));
                stream::iter(jobs)
                    .for_each_concurrent(CONCURRENCY, |(i, client)| {
                        let (secret, counts) = (&secret, &counts);
                        async move {
                            let granted = match fanout::auth::mint_hs256(
                                secret,
                                &user_id(i as u32),
                                exp,
                                None,
                            ) {
                                Ok(token) => client.refresh_session(&token, timeout).await.is_ok(),
                                Err(_) => false,
                            };
                            let counter = if granted { &counts.ok } else { &counts.failed };
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .await;
            }
        });
        Some(Refresher {
            cancel,
            task,
            stats,
        })
    }

    /// Stops the loop and returns what it did.
    pub async fn stop(self) -> Arc<RefreshStats> {
        self.cancel.cancel();
        self.task.await.ok();
        self.stats
    }
}
