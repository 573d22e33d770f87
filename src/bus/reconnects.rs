//! How every backend comes back to a broker that is away: attempts counted, logged, spaced
//! by a capped exponential backoff.

use std::time::Duration;

/// First and longest wait between attempts to reach a broker that is away.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Attempts to (re)connect to a broker: counted for `/metrics`, each logged once, spaced by a
/// capped exponential backoff.
#[derive(Debug, Default)]
pub struct Reconnects {
    attempts: std::sync::atomic::AtomicU64,
}

impl Reconnects {
    /// Counts one attempt to connect.
    pub fn attempted(&self) {
        self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logs that the `failures`-th attempt in a row is coming; returns how long to wait first.
    pub fn next(&self, broker: &str, failures: u32) -> Duration {
        let delay = RECONNECT_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(RECONNECT_MAX);
        tracing::warn!(broker, attempt = failures, retry_in = ?delay, "broker unreachable; connecting again");
        delay
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }
}
