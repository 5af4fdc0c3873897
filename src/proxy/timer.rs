//! Sleeping until an exact instant.
//!
//! Tokio's timer wheel has millisecond ticks and rounds deadlines up, which alone would add
//! about half a millisecond to every delayed chunk. We sleep on the wheel (which honours a
//! paused test clock) until shortly before the deadline, and hand the rest to one thread
//! that waits with nanosecond deadlines and wakes each waiter on time. Nothing spins.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// How long before the deadline we stop trusting the timer wheel.
const COARSE: Duration = Duration::from_millis(2);

pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at - now > COARSE {
        tokio::time::sleep_until(at - COARSE).await;
    }
    let left = at.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        Precise::new(std::time::Instant::now() + left).await;
    }
}

type Key = (std::time::Instant, u64);

struct Waiters {
    entries: Mutex<BTreeMap<Key, Waker>>,
    changed: Condvar,
}

fn waiters() -> &'static Waiters {
    static WAITERS: OnceLock<&'static Waiters> = OnceLock::new();
    WAITERS.get_or_init(|| {
        let w: &'static Waiters = Box::leak(Box::new(Waiters {
            entries: Mutex::new(BTreeMap::new()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("brownout-timer".into())
            .spawn(move || run(w))
            .expect("spawn timer thread");
        w
    })
}

/// Wake every waiter whose time has come, then sleep until the next one.
fn run(w: &Waiters) {
    // Linux lets a sleeping thread wake up to 50 µs late by default (timer slack), to batch
    // wake-ups. This thread exists to be on time.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut due = Vec::new();
    let mut entries = w.entries.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = std::time::Instant::now();
        while let Some(entry) = entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            drop(entries);
            due.drain(..).for_each(Waker::wake);
            entries = w.entries.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        entries = match entries.keys().next() {
            Some(&(at, _)) => {
                w.changed
                    .wait_timeout(entries, at - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => w.changed.wait(entries).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

struct Precise {
    key: Key,
}

impl Precise {
    fn new(at: std::time::Instant) -> Precise {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Precise {
            key: (at, NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }
}

impl Future for Precise {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::time::Instant::now() >= self.key.0 {
            return Poll::Ready(());
        }
        let w = waiters();
        let mut entries = w.entries.lock().unwrap_or_else(|e| e.into_inner());
        let stale = entries
            .get(&self.key)
            .is_none_or(|old| !old.will_wake(cx.waker()));
        if stale {
            entries.insert(self.key, cx.waker().clone());
            if entries.keys().next() == Some(&self.key) {
                // A new earliest deadline: the thread must shorten its sleep.
                w.changed.notify_one();
            }
        }
        Poll::Pending
    }
}

impl Drop for Precise {
    fn drop(&mut self) {
        waiters()
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wakes_on_time_and_never_early() {
        for ms in [0u64, 1, 3, 20] {
            let at = Instant::now() + Duration::from_millis(ms);
            sleep_until(at).await;
            let late = Instant::now() - at;
            assert!(Instant::now() >= at);
            assert!(late < Duration::from_millis(50), "{ms} ms: {late:?} late");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_waiters_in_any_order_all_wake() {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..50u64)
            .map(|i| tokio::spawn(sleep_until(t0 + Duration::from_micros((i * 7919) % 5000))))
            .collect();
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .unwrap()
                .unwrap();
        }
    }
}
