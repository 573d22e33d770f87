//! Spans over OTLP/HTTP (`--otlp-endpoint`): `receive` for each callback (its parent is the
//! caller's span when a `traceparent` came), `decision` for each blocking callback and
//! `publish` from acceptance to the broker's confirm, each a child of `receive`. Spans are
//! batched by a background task and posted as OTLP JSON to `{endpoint}/v1/traces`; when the
//! collector is slow or away they are dropped (counted), never held up the callbacks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Spans waiting to be sent at most; past it new spans are dropped.
const QUEUE: usize = 8192;
const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: &'static str,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, when the span has a parent.
    pub parent_id: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
}

/// Where spans go; cheap to clone.
#[derive(Clone)]
pub struct Tracer {
    spans: mpsc::Sender<Span>,
    dropped: std::sync::Arc<AtomicU64>,
}

/// A new span id: 16 hex digits.
pub fn span_id() -> String {
    String::from_utf8(new_span_id().to_vec()).expect("hex digits")
}

/// A new span id's 16 hex digits: the last 8 bytes of a random UUID, never all zero (their
/// first byte holds the UUID's variant bits), made without a clock read or a format.
fn new_span_id() -> [u8; 16] {
    let mut digits = [0; 16];
    hex::encode_to_slice(&uuid::Uuid::new_v4().as_bytes()[8..], &mut digits).expect("16 digits for 8 bytes");
    digits
}

/// A W3C trace context `traceparent` of version 00 with non-zero ids, checked once when it is
/// made: its text is what travels (a header, a spool record), its ids are slices of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context(String);

impl Context {
    /// The context `text` holds, if it is a valid `traceparent`.
    pub fn parse(text: &str) -> Option<Context> {
        valid(text).then(|| Context(text.to_owned()))
    }

    /// A new trace whose id is `event_id` (a UUID, hyphens dropped), with a fresh span.
    pub fn start(event_id: &str) -> Context {
        Context::of(event_id.bytes().filter(|&b| b != b'-'))
    }

    /// The same trace with a new span, whose parent this one is.
    pub fn child(&self) -> Context {
        Context::of(self.trace_id().bytes())
    }

    /// `00-{trace_id}-{a new span id}-01`, written into one string.
    fn of(trace_id: impl Iterator<Item = u8>) -> Context {
        let mut text = Vec::with_capacity(55);
        text.extend_from_slice(b"00-");
        text.extend(trace_id);
        text.push(b'-');
        text.extend_from_slice(&new_span_id());
        text.extend_from_slice(b"-01");
        Context(String::from_utf8(text).expect("UTF-8: only ASCII bytes were added or dropped"))
    }

    /// 32 hex digits.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// 16 hex digits.
    pub fn span_id(&self) -> &str {
        &self.0[36..52]
    }

    /// The `traceparent` header's value.
    pub fn header(&self) -> &str {
        &self.0
    }
}

/// Whether `text` is a W3C trace context `traceparent` of version 00 with non-zero ids.
pub fn valid(text: &str) -> bool {
    // `00-{32 hex}-{16 hex}-{2 hex}`, read in place: asked of every callback.
    let bytes = text.as_bytes();
    let hex = |part: &[u8]| part.iter().all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |part: &[u8]| part.iter().any(|&b| b != b'0');
    bytes.len() == 55 && bytes.starts_with(b"00-") && bytes[35] == b'-' && bytes[52] == b'-' && {
        let (trace, span, flags) = (&bytes[3..35], &bytes[36..52], &bytes[53..]);
        hex(trace) && hex(span) && hex(flags) && nonzero(trace) && nonzero(span)
    }
}

impl Tracer {
    /// Starts the exporter posting to `{endpoint}/v1/traces` (an `http://` URL).
    pub fn start(endpoint: &str) -> anyhow::Result<Tracer> {
        let uri: Uri = format!("{}/v1/traces", endpoint.trim_end_matches('/')).parse()?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "--otlp-endpoint: an http:// URL (OTLP/HTTP)");
        let (spans, queue) = mpsc::channel(QUEUE);
        let dropped = std::sync::Arc::new(AtomicU64::new(0));
        tokio::spawn(export(uri, queue, dropped.clone()));
        Ok(Tracer { spans, dropped })
    }

    /// Hands a finished span to the exporter; drops it when the queue is full.
    pub fn record(&self, span: Span) {
        if self.spans.try_send(span).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Spans not exported: the queue was full or the collector refused them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

async fn export(uri: Uri, mut queue: mpsc::Receiver<Span>, dropped: std::sync::Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::Instant::now() + EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) if batch.is_empty() => return,
                Ok(None) | Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let body = Bytes::from(encode(&batch).to_string());
        if let Err(error) = post(&uri, body).await {
            dropped.fetch_add(batch.len() as u64, Relaxed);
            tracing::debug!(%error, spans = batch.len(), "spans not exported");
        }
        batch.clear();
    }
}

async fn post(uri: &Uri, body: Bytes) -> anyhow::Result<()> {
    let host = uri.host().unwrap_or("localhost");
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(EVERY, tokio::net::TcpStream::connect((host, port))).await??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::post(uri.path())
        .header("host", format!("{host}:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = tokio::time::timeout(EVERY * 5, sender.send_request(request)).await??;
    let status = response.status();
    let _ = response.into_body().collect().await;
    anyhow::ensure!(status.is_success(), "collector answered {status}");
    Ok(())
}

fn nanos(time: SystemTime) -> String {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos().to_string()
}

/// OTLP/JSON `ExportTraceServiceRequest`: ids as hex, times as decimal strings of nanoseconds.
fn encode(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|span| {
            let attributes: Vec<Value> = span
                .attributes
                .iter()
                .map(|(key, value)| json!({ "key": key, "value": { "stringValue": value } }))
                .collect();
            json!({
                "traceId": span.trace_id,
                "spanId": span.span_id,
                "parentSpanId": span.parent_id.clone().unwrap_or_default(),
                "name": span.name,
                "kind": if span.name == "receive" { 2 } else { 3 },
                "startTimeUnixNano": nanos(span.start),
                "endTimeUnixNano": nanos(span.end),
                "attributes": attributes,
            })
        })
        .collect();
    json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "hookbus" } }] },
        "scopeSpans": [{ "scope": { "name": "hookbus", "version": env!("CARGO_PKG_VERSION") }, "spans": spans }],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `valid` as it was first written, split at its dashes.
    fn valid_by_parts(text: &str) -> bool {
        let parts: Vec<&str> = text.split('-').collect();
        let hex = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        matches!(parts.as_slice(), [version, trace, span, flags]
            if *version == "00" && hex(trace, 32) && hex(span, 16) && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0'))
    }

    #[test]
    fn traceparents_are_told_as_before() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(valid(good));
        for text in [
            "",
            good,
            &good.replace("00-4b", "01-4b"),
            &good.replace("4bf92f3577b34da6a3ce929d0e0e4736", "00000000000000000000000000000000"),
            &good.replace("00f067aa0ba902b7", "0000000000000000"),
            &good.to_uppercase(),
            &good.replace("-01", "-0g"),
            &good.replace("-01", "-01-"),
            &good.replace("-00f0", "-é0"),
            &format!("{good}-"),
            &good[1..],
        ] {
            assert_eq!(valid(text), valid_by_parts(text), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_told_as_before(text in "(00|01|0)?-?[0-9a-fA-F-]{0,60}") {
            proptest::prop_assert_eq!(valid(&text), valid_by_parts(&text));
        }
    }
}
