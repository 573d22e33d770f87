//! `hookbus tail`: a live view of a running gateway's callbacks, one line each as it is
//! answered. The gateway side is the [`Tap`]: it keeps the last [`RING`] callbacks and hands
//! each new one to the tails reading its admin socket through a bounded broadcast, so that a
//! tail that does not keep up misses lines (counted, and told to it) and never slows a
//! callback. The client side, [`run`], reads what the socket sends (asked by
//! [`crate::admin::Client::tail`]), filters, and prints lines for people (or JSON lines with
//! `--json`). Nothing secret is recorded: no query (the `Sign`), no header.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::io::{AsyncBufRead, AsyncWriteExt, Lines};
use tokio::sync::broadcast;

/// Callbacks kept for `--last`.
pub const RING: usize = 1024;
/// Lines a slow tail may fall behind by before it misses some.
const BACKLOG: usize = 4096;
/// Bytes of a body shown with `--body` (escaped and cut like the log's fields).
const BODY_BYTES: usize = 1024;

/// One callback as it was answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub time: SystemTime,
    /// `live` (Live and Chat) or `trtc`.
    pub surface: &'static str,
    pub app: String,
    /// The command, or TRTC's `trtc.{group}.{type}`; empty when a refusal came before it was known.
    pub command: String,
    pub room: Option<String>,
    pub status: u16,
    /// `accepted`, `replay`, `reply 0` (the responder's code), `rule NAME 1`, `fallback timeout 1`,
    /// `refused sign_mismatch`…
    pub outcome: Cow<'static, str>,
    pub latency_us: u64,
    /// The event id (a request id for a refusal).
    pub id: String,
    pub body: Bytes,
}

impl Seen {
    /// The line a tail receives: JSON, the body only when asked for.
    fn json(&self, body: bool) -> String {
        let mut line = serde_json::json!({
            "time": humantime::format_rfc3339_millis(self.time).to_string(),
            "surface": self.surface,
            "app": self.app,
            "command": self.command,
            "room": self.room,
            "status": self.status,
            "outcome": self.outcome,
            "latency_us": self.latency_us,
            "id": self.id,
        });
        if body {
            line["body"] = serde_json::Value::String(cut(&self.body));
        }
        line.to_string()
    }
}

/// The start of a body kept for a tail: at most [`BODY_BYTES`], a copy of its own (a slice
/// would keep the whole body alive in the ring).
pub fn kept(body: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&body[..body.len().min(BODY_BYTES + 1)])
}

/// The body as text, cut to [`BODY_BYTES`] at a character boundary (`…` when cut); JSON escapes
/// it on the wire, [`human`] for the terminal.
fn cut(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= BODY_BYTES {
        return text.into_owned();
    }
    let end = (0..=BODY_BYTES).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
    format!("{}…", &text[..end])
}

/// The gateway's side: what it answered, for whoever tails it.
pub struct Tap {
    sender: broadcast::Sender<Arc<Seen>>,
    ring: Mutex<VecDeque<Arc<Seen>>>,
}

impl Default for Tap {
    fn default() -> Tap {
        Tap { sender: broadcast::channel(BACKLOG).0, ring: Mutex::new(VecDeque::with_capacity(RING)) }
    }
}

impl Tap {
    /// Records a callback answered: kept in the ring, and sent to the tails, if any.
    pub fn record(&self, seen: Seen) {
        let seen = Arc::new(seen);
        {
            let mut ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(seen.clone());
        }
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(seen);
        }
    }

    /// Streams to `write` the last `last` callbacks, then every new one, as JSON lines, until
    /// the reader goes away. A reader that falls behind gets `{"missed":N}` for what it lost.
    pub async fn serve(&self, mut write: impl tokio::io::AsyncWrite + Unpin, last: usize, body: bool) {
        let mut receiver = self.sender.subscribe();
        let recent: Vec<Arc<Seen>> = {
            let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ring.iter().skip(ring.len().saturating_sub(last)).cloned().collect()
        };
        let mut out = String::new();
        for seen in recent {
            out.push_str(&seen.json(body));
            out.push('\n');
        }
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let line = match receiver.recv().await {
                Ok(seen) => seen.json(body),
                Err(broadcast::error::RecvError::Lagged(missed)) => format!("{{\"missed\":{missed}}}"),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// What a tail shows: the filters and the form.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// A glob (`*` any text) on the command.
    pub command: Option<String>,
    pub app: Option<String>,
    pub room: Option<String>,
    /// `200`, `4xx`, `5xx`…
    pub status: Option<String>,
    /// Text the outcome contains (`accepted`, `reply`, `fallback`, `refused`, `sign_mismatch`…).
    pub outcome: Option<String>,
    pub id: Option<String>,
    /// Text the body contains (a `MsgKey`, a `BattleId`…).
    pub grep: Option<String>,
}

impl Filters {
    fn keep(&self, line: &serde_json::Value) -> bool {
        let text = |key: &str| line[key].as_str().unwrap_or_default().to_owned();
        let status = line["status"].as_u64().unwrap_or_default().to_string();
        self.command.as_deref().is_none_or(|glob| matches(glob, &text("command")))
            && self.app.as_deref().is_none_or(|app| app == text("app"))
            && self.room.as_deref().is_none_or(|room| room == text("room"))
            && self.status.as_deref().is_none_or(|want| {
                want.len() == status.len() && want.chars().zip(status.chars()).all(|(w, s)| w == 'x' || w == s)
            })
            && self.outcome.as_deref().is_none_or(|outcome| text("outcome").contains(outcome))
            && self.id.as_deref().is_none_or(|id| id == text("id"))
            && self.grep.as_deref().is_none_or(|grep| text("body").contains(grep))
    }
}

/// Whether `text` matches `glob`, where `*` stands for any text.
fn matches(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (n, part) in parts.iter().enumerate() {
        if n == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// How a tail prints.
#[derive(Debug, Clone, Copy)]
pub struct Form {
    pub json: bool,
    pub body: bool,
    pub colour: bool,
}

/// Whether a tail must be sent the bodies: to show them, or to look for text in them.
pub fn wants_body(filters: &Filters, form: Form) -> bool {
    form.body || filters.grep.is_some()
}

/// `hookbus tail`: prints the `lines` an admin socket sends that `filters` keep, until the
/// gateway goes or `stop` resolves; then prints a summary (by outcome, and how many lines were
/// missed) on stderr.
pub async fn run(
    mut lines: Lines<impl AsyncBufRead + Unpin>,
    filters: &Filters,
    form: Form,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let (mut by_outcome, mut missed, mut shown) = (BTreeMap::<String, u64>::new(), 0u64, 0u64);
    let mut out = std::io::stdout().lock();
    tokio::pin!(stop);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => match line? { Some(line) => line, None => break },
            () = &mut stop => break,
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if let Some(n) = value["missed"].as_u64() {
            missed += n;
            writeln!(std::io::stderr(), "hookbus tail: missed {n} callbacks (not reading fast enough)")?;
            continue;
        }
        if !filters.keep(&value) {
            continue;
        }
        shown += 1;
        let kind = value["outcome"].as_str().unwrap_or_default().split(' ').next().unwrap_or_default();
        *by_outcome.entry(kind.to_owned()).or_default() += 1;
        if form.json {
            if !form.body {
                if let Some(object) = value.as_object().cloned() {
                    let mut object = object;
                    object.remove("body");
                    writeln!(out, "{}", serde_json::Value::Object(object))?;
                    continue;
                }
            }
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", human(&value, form))?;
        }
        out.flush()?;
    }
    let outcomes: Vec<String> = by_outcome.iter().map(|(outcome, n)| format!("{outcome} {n}")).collect();
    let outcomes = if outcomes.is_empty() { String::new() } else { format!(" ({})", outcomes.join(", ")) };
    writeln!(std::io::stderr(), "hookbus tail: {shown} callbacks shown{outcomes}, {missed} missed")?;
    Ok(())
}

/// One line for people, within 100 columns (the body, with `--body`, on the next line): time,
/// surface, app, command, room, status, outcome, time to the answer, the end of the event id.
fn human(line: &serde_json::Value, form: Form) -> String {
    let text = |key: &str| line[key].as_str().unwrap_or_default();
    let fit = |text: &str, width: usize| -> String {
        if text.chars().count() <= width {
            format!("{text:<width$}")
        } else {
            text.chars().take(width - 1).chain(['…']).collect()
        }
    };
    let time = text("time").get(11..19).unwrap_or_default();
    let status = line["status"].as_u64().unwrap_or_default();
    let latency = line["latency_us"].as_u64().unwrap_or_default() as f64 / 1000.0;
    let status_text = format!("{status}");
    let status_text = match (form.colour, status) {
        (false, _) => status_text,
        (true, 200..=299) => format!("\x1b[32m{status_text}\x1b[0m"),
        (true, 400..=499) => format!("\x1b[33m{status_text}\x1b[0m"),
        (true, _) => format!("\x1b[31m{status_text}\x1b[0m"),
    };
    let latency = if latency < 10.0 { format!("{latency:.1}ms") } else { format!("{latency:.0}ms") };
    // The end of the id: a UUIDv7 begins with its time, the same for a second of callbacks.
    let id = text("id");
    let id = id.get(id.len().saturating_sub(6)..).unwrap_or(id);
    let mut shown = format!(
        "{time} {} {} {} {} {status_text} {} {latency:>6} {id}",
        fit(text("surface"), 4),
        fit(text("app"), 10),
        fit(text("command"), 28),
        fit(line["room"].as_str().unwrap_or("-"), 8),
        fit(text("outcome"), 18),
    );
    if form.body {
        // Control characters and the like escaped: the body comes from outside.
        let body: String = text("body").chars().flat_map(char::escape_debug).take(96).collect();
        shown.push_str("\n    ");
        shown.push_str(&body);
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn globs_match_as_a_shell_would() {
        assert!(matches("Live.*", "Live.CallbackAfterEnterRoom"));
        assert!(matches("*Gift", "Live.CallbackBeforeSendGift"));
        assert!(matches("*.CallbackBefore*", "Group.CallbackBeforeSendMsg"));
        assert!(matches("trtc.1.103", "trtc.1.103"));
        assert!(!matches("Live.*", "Group.CallbackAfterSendMsg"));
        assert!(!matches("trtc.1.10", "trtc.1.103"));
    }

    #[test]
    fn status_filters_take_x_for_any_digit() {
        let line = serde_json::json!({"status": 401, "outcome": "refused: sign_mismatch"});
        let filter = |status: &str| Filters { status: Some(status.into()), ..Filters::default() }.keep(&line);
        assert!(filter("4xx") && filter("401") && !filter("5xx") && !filter("200"));
    }

    #[test]
    fn a_human_line_fits_100_columns() {
        let seen = Seen {
            time: SystemTime::now(),
            surface: "live",
            app: "1400000000123".into(),
            command: "Group.CallbackAfterMemberStateChangedForALongTime".into(),
            room: Some("a-room-with-a-very-long-name".into()),
            status: 200,
            outcome: "fallback no-responders 1".into(),
            latency_us: 1_500_123,
            id: uuid::Uuid::now_v7().to_string(),
            body: Bytes::from_static(b"{}"),
        };
        let line: serde_json::Value = serde_json::from_str(&seen.json(false)).unwrap();
        let shown = human(&line, Form { json: false, body: false, colour: false });
        assert!(shown.chars().count() <= 100, "{} columns: {shown}", shown.chars().count());
    }

    #[tokio::test]
    async fn a_reader_that_stops_misses_lines_and_never_blocks_the_recorder() {
        let tap = Arc::new(Tap::default());
        let (reader, writer) = tokio::io::duplex(64);
        let serving = tokio::spawn({
            let tap = tap.clone();
            async move { tap.serve(writer, 0, false).await }
        });
        tokio::task::yield_now().await;
        let seen = Seen {
            time: SystemTime::now(),
            surface: "live",
            app: "1".into(),
            command: "Live.X".into(),
            room: None,
            status: 200,
            outcome: "accepted".into(),
            latency_us: 1,
            id: "i".into(),
            body: Bytes::new(),
        };
        let started = std::time::Instant::now();
        for _ in 0..3 * BACKLOG {
            tap.record(seen.clone());
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "recording never waits for a reader");
        let mut lines = BufReader::new(reader).lines();
        let mut missed = 0;
        while let Ok(Some(line)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), lines.next_line()).await.unwrap_or(Ok(None))
        {
            if let Some(n) = serde_json::from_str::<serde_json::Value>(&line).unwrap()["missed"].as_u64() {
                missed += n;
            }
        }
        assert!(missed > 0, "the reader is told what it missed");
        serving.abort();
    }
}
