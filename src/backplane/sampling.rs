//! The shard-length sampler: `XLEN` of every shard stream every
//! [`crate::metrics::UPKEEP_INTERVAL`] into `fanout_backplane_stream_length{shard}`, so an
//! operator sees how close each shard runs to `BACKPLANE_MAXLEN`.

use tokio_util::sync::CancellationToken;

use super::Backplane;

/// Samples until `cancel`; a failed sample is skipped (the gauge keeps its last value).
pub async fn run(backplane: Backplane, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(crate::metrics::UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(lengths) = backplane.shard_lengths().await {
            crate::metrics::stream_lengths(&lengths);
        }
    }
}
