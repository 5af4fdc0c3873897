//! Sleeping until an exact instant.
//!
//! Tokio's timer wheel has millisecond ticks and rounds deadlines up, which alone would add
//! about half a millisecond to every delayed chunk. We sleep on the wheel until shortly
//! before the deadline and then yield until it has passed.

use std::time::Duration;

use tokio::time::Instant;

/// How long before the deadline we stop trusting the timer wheel.
const SPIN: Duration = Duration::from_micros(1500);
/// Real-time bound on yielding: a paused test clock does not advance while a task is busy,
/// so past this we fall back to the timer wheel.
const SPIN_LIMIT: Duration = Duration::from_millis(3);

pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at - now > SPIN {
        tokio::time::sleep_until(at - SPIN).await;
    }
    let started = std::time::Instant::now();
    while Instant::now() < at {
        if started.elapsed() > SPIN_LIMIT {
            tokio::time::sleep_until(at).await;
            return;
        }
        tokio::task::yield_now().await;
    }
}
