//! Counters for `/metrics`, rendered in the Prometheus text format. Labels are bounded:
//! commands past [`MAX_COMMANDS`] distinct values share the label `other`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::decision::Outcome;
use crate::tencent::Blocking;

const MAX_COMMANDS: usize = 64;
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 1500, 2000];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<String, BTreeMap<u16, u64>>>,
    rejections: Mutex<HashMap<&'static str, Rejections>>,
    decisions: [[AtomicU64; Outcome::ALL.len()]; 2],
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    pub published: AtomicU64,
    pub retried: AtomicU64,
    pub unroutable: AtomicU64,
    pub lost: AtomicU64,
    pub spool_recovered: AtomicU64,
    pub spool_corrupt: AtomicU64,
    pub spool_truncated_bytes: AtomicU64,
}

#[derive(Default, Clone)]
struct Rejections {
    count: u64,
    /// Second of the last logged rejection, and how many were not logged since.
    logged_at: u64,
    unlogged: u64,
}

/// Values read from the outbox and the bus when `/metrics` is scraped.
pub struct Gauges {
    pub outbox_depth: usize,
    pub outbox_capacity: usize,
    pub bus_connected: bool,
    pub late_replies: u64,
    /// Bytes in the spool, when there is one.
    pub spool_bytes: Option<u64>,
}

impl Metrics {
    pub fn request(&self, command: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(statuses) = requests.get_mut(command) {
            *statuses.entry(status).or_default() += 1;
            return;
        }
        let label = if requests.len() < MAX_COMMANDS { command } else { "other" };
        *requests.entry(label.to_owned()).or_default().entry(status).or_default() += 1;
    }

    /// Counts a rejection. Returns whether to log it: at most one line per reason and second,
    /// with the number of rejections not logged since (so an overload cannot flood the log).
    pub fn rejection(&self, reason: &'static str) -> Option<u64> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        let entry = rejections.entry(reason).or_default();
        entry.count += 1;
        if entry.logged_at == now {
            entry.unlogged += 1;
            return None;
        }
        entry.logged_at = now;
        Some(std::mem::take(&mut entry.unlogged))
    }

    pub fn decision(&self, kind: Blocking, outcome: Outcome, elapsed: Duration) {
        self.decisions[kind as usize][outcome as usize].fetch_add(1, Relaxed);
        let ms = elapsed.as_millis() as u64;
        for (bucket, limit) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_MS) {
            if ms <= limit {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        family(&mut out, "requests_total", "counter", "Callbacks answered, by command and HTTP status.");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut requests: Vec<_> = requests.into_iter().collect();
        requests.sort();
        for (command, statuses) in requests {
            for (status, count) in statuses {
                let _ = writeln!(out, "hookbus_requests_total{{command=\"{command}\",status=\"{status}\"}} {count}");
            }
        }
        family(&mut out, "rejections_total", "counter", "Callbacks refused, by reason.");
        let rejections = self.rejections.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rejections: Vec<_> = rejections.into_iter().map(|(reason, r)| (reason, r.count)).collect();
        rejections.sort();
        for (reason, count) in rejections {
            let _ = writeln!(out, "hookbus_rejections_total{{reason=\"{reason}\"}} {count}");
        }
        family(&mut out, "decisions_total", "counter", "Blocking callbacks answered, by command and outcome.");
        for kind in [Blocking::Gift, Blocking::Message] {
            for outcome in Outcome::ALL {
                let count = self.decisions[kind as usize][outcome as usize].load(Relaxed);
                let _ = writeln!(
                    out,
                    "hookbus_decisions_total{{command=\"{}\",outcome=\"{}\"}} {count}",
                    kind.command(),
                    outcome.label()
                );
            }
        }
        family(&mut out, "decision_seconds", "histogram", "Time from request to decision answer.");
        for (bucket, limit) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_MS) {
            let _ = writeln!(
                out,
                "hookbus_decision_seconds_bucket{{le=\"{}\"}} {}",
                limit as f64 / 1000.0,
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(out, "hookbus_decision_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "hookbus_decision_seconds_sum {}", self.latency_sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "hookbus_decision_seconds_count {count}");
        let values = [
            ("outbox_depth", "Events accepted and not yet confirmed by the bus.", gauges.outbox_depth as u64),
            ("outbox_capacity", "Events the outbox holds before answering 503.", gauges.outbox_capacity as u64),
            ("bus_connected", "1 while the bus link is up.", u64::from(gauges.bus_connected)),
        ];
        for (name, help, value) in values {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "hookbus_{name} {value}");
        }
        let counters = [
            ("publishes_confirmed_total", "Events the bus confirmed.", &self.published),
            ("publishes_retried_total", "Publish attempts that failed and will be retried.", &self.retried),
            (
                "publishes_unroutable_total",
                "Events the broker returned as unroutable: logged, not retried.",
                &self.unroutable,
            ),
            ("events_lost_total", "Accepted events not delivered at shutdown (memory outbox).", &self.lost),
            ("spool_recovered_events_total", "Events read back from the spool at start.", &self.spool_recovered),
            ("spool_corrupt_records_total", "Damaged spool regions skipped at start.", &self.spool_corrupt),
            ("spool_truncated_bytes_total", "Bytes of torn spool tails cut at start.", &self.spool_truncated_bytes),
        ];
        for (name, help, counter) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "hookbus_{name} {}", counter.load(Relaxed));
        }
        if let Some(bytes) = gauges.spool_bytes {
            family(&mut out, "spool_bytes", "gauge", "Bytes of unconfirmed events in the spool.");
            let _ = writeln!(out, "hookbus_spool_bytes {bytes}");
        }
        family(&mut out, "late_replies_total", "counter", "Decision replies that arrived after the deadline.");
        let _ = writeln!(out, "hookbus_late_replies_total {}", gauges.late_replies);
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP hookbus_{name} {help}\n# TYPE hookbus_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Gauges {
        Gauges { outbox_depth: 0, outbox_capacity: 1, bus_connected: true, late_replies: 0, spool_bytes: None }
    }

    #[test]
    fn command_labels_are_bounded() {
        let metrics = Metrics::default();
        for n in 0..MAX_COMMANDS + 10 {
            metrics.request(&format!("Cmd{n}"), 200);
        }
        metrics.request("Cmd0", 200);
        let text = metrics.render(idle());
        assert!(text.contains("hookbus_requests_total{command=\"Cmd0\",status=\"200\"} 2"));
        assert!(text.contains("hookbus_requests_total{command=\"other\",status=\"200\"} 10"));
        assert!(!text.contains(&format!("Cmd{}\"", MAX_COMMANDS)));
    }

    #[test]
    fn rejection_logs_are_limited_to_one_per_reason_and_second() {
        let metrics = Metrics::default();
        assert_eq!(metrics.rejection("outbox_full"), Some(0));
        let logged: Vec<_> = (0..100).filter_map(|_| metrics.rejection("outbox_full")).collect();
        assert!(logged.len() <= 1, "{logged:?}");
        assert_eq!(metrics.rejection("sign_stale"), Some(0), "reasons are limited separately");
        let text = metrics.render(idle());
        assert!(text.contains("hookbus_rejections_total{reason=\"outbox_full\"} 101"));
    }

    #[test]
    fn decisions_fill_the_histogram() {
        let metrics = Metrics::default();
        metrics.decision(Blocking::Gift, Outcome::Timeout, Duration::from_millis(1500));
        let text = metrics.render(Gauges {
            outbox_depth: 3,
            outbox_capacity: 10,
            bus_connected: false,
            late_replies: 2,
            spool_bytes: Some(9),
        });
        assert!(text.contains("hookbus_decisions_total{command=\"Live.CallbackBeforeSendGift\",outcome=\"timeout\"} 1"));
        assert!(text.contains("hookbus_decision_seconds_bucket{le=\"1\"} 0"));
        assert!(text.contains("hookbus_decision_seconds_bucket{le=\"1.5\"} 1"));
        assert!(text.contains("hookbus_outbox_depth 3"));
        assert!(text.contains("hookbus_bus_connected 0"));
        assert!(text.contains("hookbus_late_replies_total 2"));
        assert!(text.contains("hookbus_spool_bytes 9"));
    }
}
