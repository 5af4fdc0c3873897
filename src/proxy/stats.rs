//! Per-proxy counters, shared between the links that count and the API that reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::faults::Direction;

#[derive(Default, Debug)]
pub struct DirectionStats {
    received: AtomicU64,
    sent: AtomicU64,
}

impl DirectionStats {
    pub fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_sent(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes read from this direction's source.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Bytes written to this direction's destination.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

#[derive(Default, Debug)]
pub struct ProxyStats {
    upstream: DirectionStats,
    downstream: DirectionStats,
    connections: AtomicU64,
    active: AtomicU64,
    /// How many times each toxic acted, by toxic name and direction.
    toxics: Mutex<HashMap<(String, Direction), Arc<AtomicU64>>>,
}

impl ProxyStats {
    pub fn direction(&self, d: Direction) -> &DirectionStats {
        match d {
            Direction::Upstream => &self.upstream,
            Direction::Downstream => &self.downstream,
        }
    }

    pub fn toxic_counter(&self, toxic: &str, d: Direction) -> Arc<AtomicU64> {
        let mut map = self.toxics.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((toxic.to_owned(), d)).or_default().clone()
    }

    /// (toxic, direction, count) for every toxic that has been installed on a link.
    pub fn toxic_counts(&self) -> Vec<(String, Direction, u64)> {
        let map = self.toxics.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|((t, d), c)| (t.clone(), *d, c.load(Ordering::Relaxed)))
            .collect();
        v.sort_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
        v
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Count a new connection; the guard counts it closed when dropped, even by a panic.
    pub fn open_connection(self: &Arc<Self>) -> ActiveGuard {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

pub struct ActiveGuard(Arc<ProxyStats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            release_free_memory();
        }
    }
}

/// Hand memory freed by closed connections back to the system. glibc keeps freed blocks
/// in its arenas otherwise, so a burst of connections would leave RSS high for good. Called
/// when a proxy's last connection closes: rare, and exactly when there is memory to return.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
