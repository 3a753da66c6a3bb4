//! What `/readyz` reports: shared flags owned by the node, set by its subsystems.

use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness inputs. Only the owning subsystem writes each flag.
#[derive(Debug, Default)]
pub struct Health {
    reader_running: AtomicBool,
    keyspace_ok: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Set by the backplane reader: true after a successful read, false while it reconnects.
    pub fn set_reader_running(&self, v: bool) {
        self.reader_running.store(v, Ordering::Relaxed);
    }

    /// Whether the backplane reader is currently reading.
    pub fn reader_running(&self) -> bool {
        self.reader_running.load(Ordering::Relaxed)
    }

    /// Set by the keyspace listener: whether Redis sends the expired-key events presence needs.
    pub fn set_keyspace_ok(&self, v: bool) {
        self.keyspace_ok.store(v, Ordering::Relaxed);
    }

    /// Whether presence expiry detection works.
    pub fn keyspace_ok(&self) -> bool {
        self.keyspace_ok.load(Ordering::Relaxed)
    }

    /// Set once when the node starts draining; readiness stays off from then on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the node is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}
