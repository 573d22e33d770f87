//! What `/metrics` shows, as a vocabulary of things that happen: one method each, which
//! counts and, where an operator needs a line, logs it too. Rendered in the Prometheus text
//! format. Labels are bounded: commands past [`MAX_COMMANDS`] distinct values share `other`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::bus::{BusError, Message};
use crate::decision::{Flaw, Flawed, Outcome};
use crate::logs::{self, Limiter};
use crate::spool::Recovery;

/// Panics anywhere in the process (`main` installs the hook that counts them): a task that
/// panicked is gone, and what it did is no longer done.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Counts a panic and logs it at ERROR with where it happened and its message (escaped, cut).
pub fn panicked(info: &std::panic::PanicHookInfo<'_>) {
    PANICS.fetch_add(1, Relaxed);
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_default();
    let location = info.location().map(ToString::to_string).unwrap_or_default();
    let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
    tracing::error!(
        thread,
        location,
        message = logs::field(message.as_bytes()),
        "panic: the task it happened in is gone"
    );
}

const MAX_COMMANDS: usize = 64;
const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 1500, 2000];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<HashMap<String, BTreeMap<u16, u64>>>,
    rejections: Mutex<HashMap<&'static str, Rejections>>,
    /// Signed requests by app and the name of the token that signed them.
    signatures: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// By command, outcome and rule (empty: none); the blocking commands and their outcomes
    /// without a rule start at zero.
    decisions: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    /// Decisions made by each rule, every rule starting at zero.
    rules: Mutex<BTreeMap<String, u64>>,
    /// Flawed decision replies, by flaw (in the order of `Flaw::ALL`), each logged at most once a second.
    bad_replies: Mutex<[(u64, Limiter); Flaw::ALL.len()]>,
    /// Audit events the outbox could not take.
    audit_refused: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len()],
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    published: AtomicU64,
    retried: AtomicU64,
    unroutable: AtomicU64,
    replays: AtomicU64,
    spool_recovered: AtomicU64,
    spool_corrupt: AtomicU64,
    spool_truncated_bytes: AtomicU64,
    /// Dead letters by destination and reason.
    dead_letters: Mutex<BTreeMap<(String, String), u64>>,
}

#[derive(Default, Clone)]
struct Rejections {
    count: u64,
    logged: Limiter,
}

/// A refused callback, as counted and logged.
pub struct RefusedCallback<'a> {
    /// The `reason` label of `hookbus_rejections_total`.
    pub label: &'static str,
    /// Why, in words (the FAIL body's `ErrorInfo`).
    pub reason: &'a dyn Display,
    pub command: &'a str,
    pub status: u16,
    pub request_id: &'a str,
    pub latency_us: u64,
}

/// Values read from the outbox and the bus when `/metrics` is scraped.
pub struct Gauges {
    pub outbox_depth: usize,
    pub outbox_capacity: usize,
    pub outbox_bytes: OutboxBytes,
    pub bus_connected: bool,
    /// Attempts to reach the broker so far, the first one included.
    pub connect_attempts: u64,
    /// The broker node the link is on, when the bus names one.
    pub bus_node: Option<String>,
    /// Publishing channels opened again (a nack streak, a confirm timeout).
    pub channel_reopens: u64,
    /// Bus clients replaced because their connection task was gone.
    pub clients_replaced: u64,
    pub late_replies: u64,
    /// Why the broker refuses every publish, while it does (`access_refused`).
    pub bus_refused: Option<&'static str>,
    /// Reply connections given up for a decision reply the bus client could not read.
    pub unreadable_replies: u64,
    /// Signed requests remembered against replays.
    pub replay_cache_entries: usize,
    /// Spans not exported, when exporting.
    pub spans_dropped: Option<u64>,
    /// With a spool: its bytes and its bound.
    pub spool: Option<SpoolBytes>,
    /// With a spool: whether the disk refuses its writes (the last failed, none succeeded since).
    pub spool_write_failing: Option<bool>,
    pub dead_letters: DeadLetterCounts,
}

/// Memory the outbox's events hold, and its bound (none with a spool, whose bound applies).
pub struct OutboxBytes {
    pub held: usize,
    pub max: Option<usize>,
}

/// Bytes of unconfirmed events in the spool, and the bound past which callbacks are refused.
pub struct SpoolBytes {
    pub held: u64,
    pub max: u64,
}

/// Dead letters held, their bytes, and how many were dropped for lack of room.
pub struct DeadLetterCounts {
    pub held: usize,
    pub bytes: usize,
    pub dropped: u64,
}

impl Metrics {
    /// Metrics that show every outcome of the `blocking` commands and every rule from the
    /// start, at zero.
    pub fn new<'a>(blocking: impl IntoIterator<Item = &'a str>, rules: impl IntoIterator<Item = &'a str>) -> Metrics {
        let metrics = Metrics::default();
        {
            let mut decisions = lock(&metrics.decisions);
            for command in blocking {
                for outcome in Outcome::ALL {
                    decisions.insert((command.to_owned(), outcome.label(), String::new()), 0);
                }
            }
        }
        lock(&metrics.rules).extend(rules.into_iter().map(|rule| (rule.to_owned(), 0)));
        metrics
    }

    /// A callback was answered with `status`.
    pub fn answered(&self, command: &str, status: u16) {
        let mut requests = lock(&self.requests);
        if let Some(statuses) = requests.get_mut(command) {
            *statuses.entry(status).or_default() += 1;
            return;
        }
        let label = if requests.len() < MAX_COMMANDS { command } else { "other" };
        *requests.entry(label.to_owned()).or_default().entry(status).or_default() += 1;
    }

    /// A callback was refused: counted, and logged at most once per reason and second with
    /// the number of refusals not logged since (so an overload cannot flood the log).
    pub fn rejected(&self, refusal: RefusedCallback) {
        self.answered(refusal.command, refusal.status);
        let suppressed = {
            let mut rejections = lock(&self.rejections);
            let entry = rejections.entry(refusal.label).or_default();
            entry.count += 1;
            let Some(suppressed) = entry.logged.allow() else { return };
            suppressed
        };
        tracing::warn!(
            request_id = logs::field(refusal.request_id),
            command = logs::field(refusal.command),
            status = refusal.status,
            reason = %refusal.reason,
            label = refusal.label,
            latency_us = refusal.latency_us,
            suppressed,
            "callback rejected"
        );
    }

    /// A request for app `sdk_app_id` carried a signature that matched the token named `token`.
    pub fn signed(&self, sdk_app_id: &str, token: &str) {
        let mut signatures = lock(&self.signatures);
        // Token names come from the configuration; with no app listed, any SdkAppid may come:
        // past MAX_COMMANDS apps they share `other`. Nothing is allocated once a pair is known.
        let app =
            if signatures.contains_key(sdk_app_id) || signatures.len() < MAX_COMMANDS { sdk_app_id } else { "other" };
        let tokens = match signatures.get_mut(app) {
            Some(tokens) => tokens,
            None => signatures.entry(app.to_owned()).or_default(),
        };
        match tokens.get_mut(token) {
            Some(count) => *count += 1,
            None => drop(tokens.insert(token.to_owned(), 1)),
        }
    }

    /// A blocking callback was answered after `elapsed`, by `rule` when one decided. (Commands
    /// and rules come from the configuration: the labels are bounded.)
    pub fn decided(&self, command: &str, outcome: Outcome, rule: Option<&str>, elapsed: Duration) {
        let key = (command.to_owned(), outcome.label(), rule.unwrap_or_default().to_owned());
        *lock(&self.decisions).entry(key).or_default() += 1;
        if let Some(rule) = rule {
            *lock(&self.rules).entry(rule.to_owned()).or_default() += 1;
        }
        let ms = elapsed.as_millis() as u64;
        for (bucket, limit) in self.latency_buckets.iter().zip(LATENCY_BUCKETS_MS) {
            if ms <= limit {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    /// A responder's reply to the decision request `id` of `command` was flawed: counted, and
    /// logged at most once per flaw and second with the number not logged since.
    pub fn flawed_reply(&self, id: &str, command: &str, flawed: &Flawed) {
        let suppressed = {
            let mut bad_replies = lock(&self.bad_replies);
            let (count, logged) = &mut bad_replies[flawed.flaw as usize];
            *count += 1;
            let Some(suppressed) = logged.allow() else { return };
            suppressed
        };
        let answered = if flawed.flaw.is_invalid() { "the fallback" } else { "the reply, ErrorInfo cut" };
        tracing::warn!(
            id,
            command,
            reason = flawed.flaw.reason(),
            label = flawed.flaw.label(),
            answered,
            bytes = flawed.bytes,
            reply = flawed.reply.as_str(),
            suppressed,
            "flawed decision reply"
        );
    }

    /// A signed request came again inside its window: answered as before, not published again.
    pub fn replayed(&self, command: &str) {
        self.replays.fetch_add(1, Relaxed);
        tracing::debug!(command, "replay answered from the cache");
    }

    /// The outbox could not take the audit event of a decision (the decision was answered).
    pub fn audit_refused(&self, id: &str, reason: &dyn Display) {
        self.audit_refused.fetch_add(1, Relaxed);
        tracing::error!(id, %reason, "decision audit event not accepted");
    }

    /// The bus confirmed `n` events.
    pub fn confirmed(&self, n: usize) {
        self.published.fetch_add(n as u64, Relaxed);
    }

    /// The bus did not confirm `unconfirmed` events; they are published again after `backoff`.
    pub fn retrying(&self, unconfirmed: usize, error: &BusError, backoff: Duration) {
        self.retried.fetch_add(unconfirmed as u64, Relaxed);
        tracing::warn!(
            error = error as &dyn std::error::Error,
            unconfirmed,
            retry_in = ?backoff,
            "publish not confirmed, retrying"
        );
    }

    /// The broker refused an event for good: no queue is bound for it.
    pub fn unroutable(&self, message: &Message, reason: &str) {
        self.unroutable.fetch_add(1, Relaxed);
        tracing::error!(id = %message.id, destination = %message.destination, reason, "event unroutable, dropped by the broker");
    }

    /// An event became a dead letter (logged by the store, which says whether it kept it).
    pub fn dead_lettered(&self, destination: &str, reason: &str) {
        let mut dead_letters = lock(&self.dead_letters);
        let destination = if dead_letters.len() < MAX_COMMANDS || dead_letters.keys().any(|(d, _)| d == destination) {
            destination
        } else {
            "other"
        };
        *dead_letters.entry((destination.to_owned(), reason.to_owned())).or_default() += 1;
    }

    /// The spool was read back at start.
    pub fn spool_read_back(&self, recovery: &Recovery) {
        self.spool_recovered.store(recovery.events as u64, Relaxed);
        self.spool_corrupt.store(recovery.corrupt as u64, Relaxed);
        self.spool_truncated_bytes.store(recovery.truncated, Relaxed);
        tracing::info!(
            events = recovery.events,
            confirmed_before = recovery.confirmed,
            corrupt = recovery.corrupt,
            truncated_bytes = recovery.truncated,
            "spool read back"
        );
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(4096);
        family(&mut out, "requests_total", "counter", "Callbacks answered, by command and HTTP status.");
        let requests = lock(&self.requests).clone();
        let mut requests: Vec<_> = requests.into_iter().collect();
        requests.sort();
        for (command, statuses) in requests {
            for (status, count) in statuses {
                let _ = writeln!(out, "hookbus_requests_total{{command=\"{command}\",status=\"{status}\"}} {count}");
            }
        }
        family(&mut out, "rejections_total", "counter", "Callbacks refused, by reason.");
        let rejections = lock(&self.rejections).clone();
        let mut rejections: Vec<_> = rejections.into_iter().map(|(reason, r)| (reason, r.count)).collect();
        rejections.sort();
        for (reason, count) in rejections {
            let _ = writeln!(out, "hookbus_rejections_total{{reason=\"{reason}\"}} {count}");
        }
        family(
            &mut out,
            "signatures_total",
            "counter",
            "Requests whose signature matched, by app and the name of the token.",
        );
        for (app, tokens) in lock(&self.signatures).iter() {
            for (token, count) in tokens {
                let _ = writeln!(
                    out,
                    "hookbus_signatures_total{{app=\"{}\",token=\"{}\"}} {count}",
                    label(app),
                    label(token)
                );
            }
        }
        family(&mut out, "decisions_total", "counter", "Blocking callbacks answered, by command and outcome.");
        for ((command, outcome, rule), count) in lock(&self.decisions).iter() {
            let _ = writeln!(
                out,
                "hookbus_decisions_total{{command=\"{command}\",outcome=\"{outcome}\",rule=\"{}\"}} {count}",
                label(rule)
            );
        }
        family(
            &mut out,
            "bad_replies_total",
            "counter",
            "Decision replies refused (the fallback answered) or, for error_info_cut, cut, by reason.",
        );
        for (flaw, (count, _)) in Flaw::ALL.iter().zip(lock(&self.bad_replies).iter()) {
            let _ = writeln!(out, "hookbus_bad_replies_total{{reason=\"{}\"}} {count}", flaw.label());
        }
        family(&mut out, "rule_decisions_total", "counter", "Blocking callbacks decided by each local rule.");
        for (rule, count) in lock(&self.rules).iter() {
            let _ = writeln!(out, "hookbus_rule_decisions_total{{rule=\"{}\"}} {count}", label(rule));
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
        family(
            &mut out,
            "dead_letters_total",
            "counter",
            "Events the broker will not take, by destination and reason.",
        );
        for ((destination, reason), count) in lock(&self.dead_letters).iter() {
            let _ = writeln!(
                out,
                "hookbus_dead_letters_total{{destination=\"{}\",reason=\"{}\"}} {count}",
                label(destination),
                label(reason)
            );
        }
        // Every scalar family, one row each: a row whose value is `None` is not shown (a
        // bound without a spool, spans without an exporter).
        let OutboxBytes { held: bytes, max: max_bytes } = gauges.outbox_bytes;
        let (spool_bytes, spool_max) =
            (gauges.spool.as_ref().map(|spool| spool.held), gauges.spool.map(|spool| spool.max));
        let load = |counter: &AtomicU64| Some(counter.load(Relaxed));
        let DeadLetterCounts { held: dead_letters, bytes: dead_letter_bytes, dropped: dead_letters_dropped } =
            gauges.dead_letters;
        if let Some(node) = &gauges.bus_node {
            family(&mut out, "bus_node_info", "gauge", "The broker node the bus link is on, as its label.");
            let _ = writeln!(out, "hookbus_bus_node_info{{node=\"{}\"}} 1", label(node));
        }
        family(
            &mut out,
            "bus_refused",
            "gauge",
            "1, labelled with why, while the broker refuses every publish (no retry fixes it); else 0.",
        );
        match gauges.bus_refused {
            Some(reason) => _ = writeln!(out, "hookbus_bus_refused{{reason=\"{}\"}} 1", label(reason)),
            None => _ = writeln!(out, "hookbus_bus_refused 0"),
        }
        let scalars: [(&str, &str, &str, Option<u64>); 27] = [
            (
                "outbox_depth",
                "gauge",
                "Events accepted and not yet confirmed by the bus.",
                Some(gauges.outbox_depth as u64),
            ),
            (
                "outbox_capacity",
                "gauge",
                "Events the outbox holds before answering 503.",
                Some(gauges.outbox_capacity as u64),
            ),
            ("bus_connected", "gauge", "1 while the bus link is up.", Some(u64::from(gauges.bus_connected))),
            (
                "bus_clients_replaced_total",
                "counter",
                "Bus clients replaced because their connection task was gone (a failure inside the client).",
                Some(gauges.clients_replaced),
            ),
            (
                "panics_total",
                "counter",
                "Panics in any thread or task of the gateway; each is logged at ERROR with where it happened.",
                load(&PANICS),
            ),
            (
                "replay_cache_entries",
                "gauge",
                "Signed requests remembered to answer replays.",
                Some(gauges.replay_cache_entries as u64),
            ),
            (
                "outbox_bytes",
                "gauge",
                "Memory the outbox's events hold, as counted against its bound.",
                Some(bytes as u64),
            ),
            (
                "outbox_max_bytes",
                "gauge",
                "Memory the outbox holds before answering 503.",
                max_bytes.map(|max| max as u64),
            ),
            ("publishes_confirmed_total", "counter", "Events the bus confirmed.", load(&self.published)),
            (
                "publishes_retried_total",
                "counter",
                "Publish attempts that failed and will be retried.",
                load(&self.retried),
            ),
            (
                "publishes_unroutable_total",
                "counter",
                "Events the broker returned as unroutable: logged, not retried.",
                load(&self.unroutable),
            ),
            (
                "replays_total",
                "counter",
                "Signed requests seen again inside their window, answered as before.",
                load(&self.replays),
            ),
            (
                "audit_refused_total",
                "counter",
                "Decision audit events the outbox could not take.",
                load(&self.audit_refused),
            ),
            (
                "spool_recovered_events_total",
                "counter",
                "Events read back from the spool at start to be published again (confirmed ones are left out).",
                load(&self.spool_recovered),
            ),
            (
                "spool_corrupt_records_total",
                "counter",
                "Damaged spool regions skipped at start.",
                load(&self.spool_corrupt),
            ),
            (
                "spool_truncated_bytes_total",
                "counter",
                "Bytes of torn spool tails cut at start.",
                load(&self.spool_truncated_bytes),
            ),
            ("spool_bytes", "gauge", "Bytes of unconfirmed events in the spool.", spool_bytes),
            (
                "spool_write_failing",
                "gauge",
                "1 while the disk refuses the spool's writes (callbacks are answered 503).",
                gauges.spool_write_failing.map(u64::from),
            ),
            ("dead_letters", "gauge", "Dead letters held, to requeue with `hookbus spool`.", Some(dead_letters as u64)),
            ("dead_letter_bytes", "gauge", "Bytes the dead letters held take.", Some(dead_letter_bytes as u64)),
            (
                "dead_letters_dropped_total",
                "counter",
                "Dead letters not kept: the store was at --dead-letter-max-bytes (each is logged).",
                Some(dead_letters_dropped),
            ),
            ("spool_max_bytes", "gauge", "Bytes the spool holds before callbacks are answered 503.", spool_max),
            (
                "bus_connect_attempts_total",
                "counter",
                "Attempts to reach the broker, the first one included.",
                Some(gauges.connect_attempts),
            ),
            (
                "bus_channel_reopens_total",
                "counter",
                "Publishing channels closed and opened again: only nacks in a row, or no confirm in time.",
                Some(gauges.channel_reopens),
            ),
            (
                "spans_dropped_total",
                "counter",
                "Spans not exported: queue full or collector away.",
                gauges.spans_dropped,
            ),
            (
                "late_replies_total",
                "counter",
                "Decision replies no request waits for: late, a second one, or for an id never asked.",
                Some(gauges.late_replies),
            ),
            (
                "unreadable_replies_total",
                "counter",
                "Reply connections given up for a decision reply the client could not read (RabbitMQ; the publishing link goes on).",
                Some(gauges.unreadable_replies),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let Some(value) = value else { continue };
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "hookbus_{name} {value}");
        }
        out
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP hookbus_{name} {help}\n# TYPE hookbus_{name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle() -> Gauges {
        Gauges {
            outbox_depth: 0,
            outbox_capacity: 1,
            outbox_bytes: OutboxBytes { held: 0, max: Some(1) },
            bus_connected: true,
            connect_attempts: 1,
            bus_node: None,
            channel_reopens: 0,
            clients_replaced: 0,
            late_replies: 0,
            bus_refused: None,
            unreadable_replies: 0,
            replay_cache_entries: 0,
            spans_dropped: None,
            spool: None,
            spool_write_failing: None,
            dead_letters: DeadLetterCounts { held: 0, bytes: 0, dropped: 0 },
        }
    }

    #[test]
    fn command_labels_are_bounded() {
        let metrics = Metrics::default();
        for n in 0..MAX_COMMANDS + 10 {
            metrics.answered(&format!("Cmd{n}"), 200);
        }
        metrics.answered("Cmd0", 200);
        let text = metrics.render(idle());
        assert!(text.contains("hookbus_requests_total{command=\"Cmd0\",status=\"200\"} 2"));
        assert!(text.contains("hookbus_requests_total{command=\"other\",status=\"200\"} 10"));
        assert!(!text.contains(&format!("Cmd{}\"", MAX_COMMANDS)));
    }

    fn refusal(label: &'static str) -> RefusedCallback<'static> {
        RefusedCallback { label, reason: &"full", command: "unknown", status: 503, request_id: "r", latency_us: 1 }
    }

    #[test]
    fn every_rejection_is_counted() {
        let metrics = Metrics::default();
        for _ in 0..101 {
            metrics.rejected(refusal("outbox_full"));
        }
        metrics.rejected(refusal("sign_stale"));
        let text = metrics.render(idle());
        assert!(text.contains("hookbus_rejections_total{reason=\"outbox_full\"} 101"));
        assert!(text.contains("hookbus_rejections_total{reason=\"sign_stale\"} 1"));
        assert!(text.contains("hookbus_requests_total{command=\"unknown\",status=\"503\"} 102"));
    }

    #[test]
    fn every_flawed_reply_is_counted_under_its_reason() {
        let metrics = Metrics::default();
        let zero = metrics.render(idle());
        for flaw in Flaw::ALL {
            assert!(zero.contains(&format!("hookbus_bad_replies_total{{reason=\"{}\"}} 0\n", flaw.label())));
            let flawed = Flawed { flaw, bytes: 3, reply: "abc".into() };
            for _ in 0..=(flaw as usize) {
                metrics.flawed_reply("id", "Live.CallbackBeforeSendGift", &flawed);
            }
        }
        let text = metrics.render(idle());
        for (n, flaw) in Flaw::ALL.iter().enumerate() {
            let line = format!("hookbus_bad_replies_total{{reason=\"{}\"}} {}\n", flaw.label(), n + 1);
            assert!(text.contains(&line), "{line}");
        }
    }

    #[test]
    fn decisions_fill_the_histogram() {
        let metrics = Metrics::new(["Live.CallbackBeforeSendGift"], ["small gifts"]);
        metrics.decided("Live.CallbackBeforeSendGift", Outcome::Timeout, None, Duration::from_millis(1500));
        metrics.decided("Live.CallbackBeforeSendGift", Outcome::Timeout, Some("small gifts"), Duration::from_millis(9));
        let text = metrics.render(Gauges {
            outbox_depth: 3,
            outbox_capacity: 10,
            outbox_bytes: OutboxBytes { held: 300, max: Some(1000) },
            bus_connected: false,
            connect_attempts: 4,
            bus_node: Some("rabbit-2:5672".into()),
            channel_reopens: 2,
            clients_replaced: 1,
            late_replies: 2,
            bus_refused: Some("access_refused"),
            unreadable_replies: 1,
            replay_cache_entries: 0,
            spans_dropped: Some(3),
            spool: Some(SpoolBytes { held: 9, max: 100 }),
            spool_write_failing: Some(false),
            dead_letters: DeadLetterCounts { held: 1, bytes: 500, dropped: 0 },
        });
        assert!(text.contains(
            "hookbus_decisions_total{command=\"Live.CallbackBeforeSendGift\",outcome=\"timeout\",rule=\"\"} 1"
        ));
        assert!(text.contains("hookbus_decisions_total{command=\"Live.CallbackBeforeSendGift\",outcome=\"timeout\",rule=\"small gifts\"} 1"));
        assert!(text.contains(
            "hookbus_decisions_total{command=\"Live.CallbackBeforeSendGift\",outcome=\"reply\",rule=\"\"} 0"
        ));
        assert!(text.contains("hookbus_rule_decisions_total{rule=\"small gifts\"} 1"));
        assert!(text.contains("hookbus_decision_seconds_bucket{le=\"1\"} 1"));
        assert!(text.contains("hookbus_decision_seconds_bucket{le=\"1.5\"} 2"));
        assert!(text.contains("hookbus_outbox_depth 3"));
        assert!(text.contains("hookbus_outbox_bytes 300\n") && text.contains("hookbus_outbox_max_bytes 1000\n"));
        assert!(text.contains("hookbus_bus_connected 0"));
        assert!(text.contains("hookbus_late_replies_total 2"));
        assert!(text.contains("hookbus_bus_refused{reason=\"access_refused\"} 1"));
        assert!(text.contains("hookbus_unreadable_replies_total 1"));
        assert!(text.contains("hookbus_bus_connect_attempts_total 4"));
        assert!(text.contains("hookbus_bus_node_info{node=\"rabbit-2:5672\"} 1"));
        assert!(text.contains("hookbus_bus_channel_reopens_total 2"));
        assert!(text.contains("hookbus_spool_bytes 9"));
        assert!(text.contains("hookbus_spool_max_bytes 100"));
        assert!(text.contains("hookbus_spans_dropped_total 3"));
    }
}
