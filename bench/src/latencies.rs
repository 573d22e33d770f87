//! What the fixed-rate generators (`load`, `admin nats-requests`) share: when each request is
//! sent, when it counts from, and the one JSON line that sums a run up.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// When each of `workers` sends: `rate` requests per second between them for `duration`, from
/// 50 ms after `new` (time to connect), each worker's times spread across one interval.
#[derive(Clone, Copy)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
    end: Instant,
    workers: u64,
}

impl Schedule {
    pub fn new(workers: u64, rate: f64, duration: Duration) -> Schedule {
        let start = Instant::now() + Duration::from_millis(50);
        Schedule { start, interval: Duration::from_secs_f64(workers as f64 / rate), end: start + duration, workers }
    }

    /// Worker `n`'s send times.
    pub fn times(self, n: u64) -> impl Iterator<Item = Instant> {
        let first = self.start + self.interval.mul_f64(n as f64 / self.workers as f64);
        std::iter::successors(Some(first), move |&at| Some(at + self.interval)).take_while(move |&at| at < self.end)
    }
}

/// Waits for a request's `scheduled` time and returns the time its latency counts from: its
/// send when the generator is on schedule (so the timer's 1 ms granularity is not charged to
/// the server), its scheduled time when behind (so a stalled server is charged for the requests
/// it delayed: no coordinated omission).
pub async fn on_schedule(scheduled: Instant) -> Instant {
    if Instant::now() < scheduled {
        tokio::time::sleep_until(scheduled).await;
        Instant::now()
    } else {
        scheduled
    }
}

/// Each task's latencies (µs) and failures, once all are done.
pub async fn joined(tasks: Vec<JoinHandle<(Vec<u64>, u64)>>) -> Vec<(Vec<u64>, u64)> {
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("a load task"));
    }
    results
}

/// Prints one JSON line of the tasks' `results`: answers, errors, answers per second over
/// `duration`, p50, p99 and p99.9 in milliseconds, and `extra`.
pub fn report(results: Vec<(Vec<u64>, u64)>, duration: Duration, extra: serde_json::Map<String, serde_json::Value>) {
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for (mut some, failed) in results {
        latencies.append(&mut some);
        errors += failed;
    }
    let (p50, p99, p999) = quantiles(&mut latencies);
    let mut line = serde_json::json!({
        "ok": latencies.len(),
        "errors": errors,
        "rate": (latencies.len() as f64 / duration.as_secs_f64()).round(),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
    });
    line.as_object_mut().expect("an object").extend(extra);
    println!("{line}");
}

/// p50, p99 and p99.9 of `latencies` (µs), in milliseconds (0 of none).
pub fn quantiles(latencies: &mut [u64]) -> (f64, f64, f64) {
    latencies.sort_unstable();
    let at = |q: f64| {
        let place = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(place).copied().unwrap_or(0) as f64 / 1000.0
    };
    (at(0.50), at(0.99), at(0.999))
}
