//! What each endpoint does: the callback path (the checks of the README's "What Tencent sees",
//! in order), `/healthz`, `/readyz` and `/metrics`. Generic over the request body so that the
//! unit tests below call [`handle`] without a socket; sockets, connections and shutdown
//! belong to `http`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::apps::Current;
use crate::bus::{self, Bus, Message, Origin};
use crate::decision::Decisions;
use crate::metrics::{Gauges, Metrics, Refusal};
use crate::outbox::{Outbox, Refused};
use crate::replay::{self, Answered, Replays};
use crate::spool::SpoolError;
use crate::tencent::{self, Body, Query, SignError};
use crate::traces::{self, Span, Tracer};

/// Paths the gateway serves itself; the callback path cannot be one of them.
pub const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How callbacks are checked.
#[derive(Debug, Clone)]
pub struct Limits {
    pub path: String,
    pub max_clock_skew: std::time::Duration,
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a body (the body itself is 1).
    pub max_json_depth: usize,
    /// Signed requests remembered to answer replays (0: none).
    pub replay_cache_entries: usize,
    /// A body must arrive whole within this time of its headers.
    pub body_read_timeout: std::time::Duration,
}

impl Default for Limits {
    /// The flags' defaults: `/`, 60 s skew, 64 KiB, depth 32, 200,000 replays, 10 s.
    fn default() -> Limits {
        Limits {
            path: "/".into(),
            max_clock_skew: std::time::Duration::from_secs(60),
            max_body_bytes: 65536,
            max_json_depth: tencent::MAX_DEPTH,
            replay_cache_entries: 200_000,
            body_read_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// Everything a request needs, built once at start.
pub struct App {
    pub limits: Limits,
    pub apps: Arc<Current>,
    pub decisions: Decisions,
    /// Publish every decision as an event.
    pub audit: bool,
    pub tracer: Option<Tracer>,
    pub bus: Bus,
    pub outbox: Arc<Outbox>,
    pub metrics: Arc<Metrics>,
    pub replays: Replays,
}

/// Why a callback was refused: the status, the Tencent FAIL body and the metric label.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// Carries the method that is allowed.
    #[error("method not allowed: use {0}")]
    MethodNotAllowed(&'static str),
    #[error("not found")]
    NotFound,
    #[error("SdkAppid is not accepted")]
    Forbidden,
    #[error("{}", .0.reason())]
    Unauthorized(SignError),
    #[error("body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("body not received in time")]
    BodyTimeout,
    #[error("{reason}")]
    BadRequest { label: &'static str, reason: &'static str },
    /// Carries the metric label: `outbox_full` or `spool_full`.
    #[error("outbox full, try again later")]
    Overloaded(&'static str),
    #[error("spool write failed, try again later")]
    SpoolFailed,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::Forbidden => StatusCode::FORBIDDEN,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Rejection::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Rejection::Overloaded(_) | Rejection::SpoolFailed => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::MethodNotAllowed(_) => "method",
            Rejection::NotFound => "not_found",
            Rejection::Forbidden => "sdkappid",
            Rejection::Unauthorized(SignError::Missing) => "sign_missing",
            Rejection::Unauthorized(SignError::BadTime) => "sign_bad_time",
            Rejection::Unauthorized(SignError::Stale) => "sign_stale",
            Rejection::Unauthorized(SignError::Mismatch) => "sign_mismatch",
            Rejection::PayloadTooLarge(_) => "too_large",
            Rejection::BodyTimeout => "body_timeout",
            Rejection::BadRequest { label, .. } => label,
            Rejection::Overloaded(label) => label,
            Rejection::SpoolFailed => "spool_error",
        }
    }

    fn bad(label: &'static str, reason: &'static str) -> Rejection {
        Rejection::BadRequest { label, reason }
    }
}

const OK: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

/// Answers one request. Never fails: every problem is a Tencent-shaped FAIL answer.
pub async fn handle<B>(app: &App, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path();
    let get = request.method() == Method::GET;
    match path {
        _ if path == app.limits.path => callback(app, request).await,
        "/healthz" if get => text(StatusCode::OK, "ok\n"),
        // Ready means "can accept": with a spool, a disconnected bus is what the spool is for.
        "/readyz" if get => match (app.outbox.is_full(), app.bus.is_connected(), app.outbox.is_spooled()) {
            (true, _, false) => text(StatusCode::SERVICE_UNAVAILABLE, "outbox full\n"),
            (true, _, true) => text(StatusCode::SERVICE_UNAVAILABLE, "spool full\n"),
            (false, false, false) => text(StatusCode::SERVICE_UNAVAILABLE, "bus disconnected\n"),
            (false, false, true) => text(StatusCode::OK, "ready (bus disconnected, spooling)\n"),
            (false, true, _) => text(StatusCode::OK, "ready\n"),
        },
        "/metrics" if get => {
            let body = app.metrics.render(Gauges {
                outbox_depth: app.outbox.depth(),
                outbox_capacity: app.outbox.capacity(),
                outbox_bytes: app.outbox.memory(),
                bus_connected: app.bus.is_connected(),
                connect_attempts: app.bus.connect_attempts(),
                late_replies: app.bus.late_replies(),
                replay_cache_entries: app.replays.len(),
                spans_dropped: app.tracer.as_ref().map(Tracer::dropped),
                spool: app.outbox.spool_bytes(),
            });
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ if RESERVED_PATHS.contains(&path) => reject(app, "", Rejection::MethodNotAllowed("GET"), "-", Instant::now()),
        _ => reject(app, "", Rejection::NotFound, "-", Instant::now()),
    }
}

async fn callback<B>(app: &App, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let command = query.command.clone().unwrap_or_default();
    // The caller's request id when it sends one; else the event id, or a fresh one for a refusal.
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| id.len() <= 128)
        .map(str::to_owned);
    match accept(app, request, query).await {
        Ok(Accepted { command, id, traceparent, answer }) => {
            app.metrics.answered(&command, 200);
            let request_id = request_id.as_deref().unwrap_or(&id);
            // Fields are evaluated only when the line is logged: no clock read otherwise.
            tracing::debug!(
                request_id,
                id,
                command,
                traceparent,
                status = 200,
                latency_us = started.elapsed().as_micros() as u64,
                "callback answered"
            );
            let mut response = Response::new(Full::new(answer));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(rejection) => {
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            reject(app, &command, rejection, &request_id, started)
        }
    }
}

/// An accepted callback: its command, event id, trace context and the answer for Tencent.
struct Accepted {
    command: String,
    id: String,
    traceparent: String,
    answer: Bytes,
}

/// The checks of a callback, in the README's order.
async fn accept<B>(app: &App, request: Request<B>, query: Query) -> Result<Accepted, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = &app.limits;
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    if query.repeated.is_some() {
        return Err(Rejection::bad("param_repeated", "a protocol parameter appears more than once in the query"));
    }
    let sdk_app_id = query.sdk_app_id.as_deref().unwrap_or("");
    let apps = app.apps.get();
    let Some(settings) = apps.get(sdk_app_id) else { return Err(Rejection::Forbidden) };
    // Signed requests can be told apart: the time until which a replay would be accepted.
    let mut replay_window = None;
    if !settings.tokens.is_empty() {
        let (sign, time) = (query.sign.as_deref(), query.request_time.as_deref());
        let secrets = settings.tokens.iter().map(|token| token.secret.as_str());
        let matched = tencent::verify(secrets, sign, time, limits.max_clock_skew, SystemTime::now())
            .map_err(Rejection::Unauthorized)?;
        app.metrics.signed(sdk_app_id, &settings.tokens[matched].name);
        let seconds: u64 = time.unwrap_or_default().parse().unwrap_or_default();
        replay_window = Some(seconds + limits.max_clock_skew.as_secs());
    }
    let header =
        |name| request.headers().get(name).and_then(|value: &HeaderValue| value.to_str().ok()).map(str::to_owned);
    let (traceparent, tracestate) = (header("traceparent").unwrap_or_default(), header("tracestate"));
    let (incoming, received) = (traceparent.clone(), SystemTime::now());
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(Rejection::PayloadTooLarge(limits.max_body_bytes));
    }
    let mut body = std::pin::pin!(Limited::new(request.into_body(), limits.max_body_bytes).collect());
    // A callback's body nearly always came with its headers: a timer only for one that did not.
    let collected = match futures_util::poll!(body.as_mut()) {
        std::task::Poll::Ready(collected) => collected,
        std::task::Poll::Pending => match tokio::time::timeout(limits.body_read_timeout, body).await {
            Ok(collected) => collected,
            Err(_) => return Err(Rejection::BodyTimeout),
        },
    };
    let payload = match collected {
        // A copy of its own: the collected body may be a slice of the connection's read buffer,
        // which an event waiting in the outbox would otherwise keep alive whole.
        Ok(collected) => Bytes::copy_from_slice(&collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(Rejection::PayloadTooLarge(limits.max_body_bytes));
        }
        Err(_) => return Err(Rejection::bad("body_read", "body could not be read")),
    };
    let body = Body::parse(&payload, limits.max_json_depth)
        .map_err(|invalid| Rejection::bad(invalid.label(), invalid.reason()))?;
    let command = match (query.command, body.callback_command.as_deref()) {
        (Some(query), Some(body)) if query != body => {
            return Err(Rejection::bad("command_mismatch", "CallbackCommand differs between query and body"));
        }
        (Some(query), _) => query,
        (None, Some(body)) => body.to_owned(),
        (None, None) => return Err(Rejection::bad("command_missing", "CallbackCommand is missing")),
    };
    if !bus::valid_name(&command) {
        return Err(Rejection::bad("command_invalid", "CallbackCommand has characters a destination cannot hold"));
    }
    let replay_key = replay_window.map(|_| {
        let (sign, time) = (query.sign.as_deref().unwrap_or_default(), query.request_time.as_deref());
        replay::Key::of(sign, time.unwrap_or_default(), sdk_app_id, &command, &payload)
    });
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    if let Some(answered) = replay_key.and_then(|key| app.replays.answered(key, now)) {
        app.metrics.replayed(&command);
        let answer = match answered {
            Answered::Event => Bytes::from_static(OK),
            Answered::Decision(answer) => answer,
        };
        return Ok(Accepted { command, id: "replay".into(), traceparent: String::new(), answer });
    }
    let origin = Origin {
        sdk_app_id: sdk_app_id.to_owned(),
        client_ip: query.client_ip.unwrap_or_default(),
        opt_platform: query.opt_platform.unwrap_or_default(),
        traceparent,
        tracestate,
    };
    let mut message = Message::new(&settings.prefix, &command, body.room_key(), origin, payload);
    // Exporting spans, the gateway's own `receive` span is the parent of what follows it on the
    // bus; the caller's span (when one came) is its parent.
    let receive = app.tracer.as_ref().map(|_| {
        let (trace_id, caller) = traces::ids(&message.traceparent);
        let parent = (message.traceparent == incoming).then_some(caller);
        let span_id = traces::span_id();
        message.traceparent = format!("00-{trace_id}-{span_id}-01");
        (trace_id, span_id, parent)
    });
    let (id, traceparent) = (message.id.clone(), message.traceparent.clone());
    let record = |name: &'static str, start: SystemTime, attributes: Vec<(&'static str, String)>| {
        if let (Some(tracer), Some((trace_id, span_id, parent))) = (&app.tracer, &receive) {
            let (span_id, parent_id) = match name {
                "receive" => (span_id.clone(), parent.clone()),
                _ => (traces::span_id(), Some(span_id.clone())),
            };
            let end = SystemTime::now();
            tracer.record(Span { name, trace_id: trace_id.clone(), span_id, parent_id, start, end, attributes });
        }
    };
    match app.decisions.kind(&command) {
        Some(kind) => {
            let (started, decision_start) = (Instant::now(), SystemTime::now());
            let request = app.audit.then(|| message.clone());
            let decided = app.decisions.decide(&app.bus, kind, message, &settings.fallbacks).await;
            let elapsed = started.elapsed();
            app.metrics.decided(&command, decided.outcome, decided.rule.as_deref(), elapsed);
            let (outcome, rule) = (decided.outcome.label(), decided.rule.as_deref().unwrap_or_default());
            tracing::debug!(id, command, outcome, rule, ?elapsed, "decided");
            if let Some(request) = request {
                let event = decided.audit(&request, &settings.prefix, elapsed);
                if let Err(refused) = app.outbox.push(event).await {
                    app.metrics.audit_refused(&id, &refused);
                }
            }
            if let (Some(key), Some(expires)) = (replay_key, replay_window) {
                app.replays.remember(key, expires, Answered::Decision(decided.answer.clone()));
            }
            let rule = decided.rule.clone().unwrap_or_default();
            record("decision", decision_start, vec![("hookbus.outcome", outcome.to_owned()), ("hookbus.rule", rule)]);
            record(
                "receive",
                received,
                vec![("hookbus.command", command.clone()), ("cloudevents.event_id", id.clone())],
            );
            Ok(Accepted { command, id, traceparent, answer: decided.answer })
        }
        None => {
            app.outbox.push(message).await.map_err(|refused| match refused {
                Refused::Full(_) | Refused::FullBytes(_) => Rejection::Overloaded("outbox_full"),
                Refused::Spool(SpoolError::Full(_)) => Rejection::Overloaded("spool_full"),
                Refused::Spool(SpoolError::Io(error)) => {
                    tracing::error!(%error, "spool write failed");
                    Rejection::SpoolFailed
                }
            })?;
            if let (Some(key), Some(expires)) = (replay_key, replay_window) {
                app.replays.remember(key, expires, Answered::Event);
            }
            record(
                "receive",
                received,
                vec![("hookbus.command", command.clone()), ("cloudevents.event_id", id.clone())],
            );
            Ok(Accepted { command, id, traceparent, answer: Bytes::from_static(OK) })
        }
    }
}

/// Answers a refusal; counts it and logs its reason (rate-limited).
fn reject(app: &App, command: &str, rejection: Rejection, request_id: &str, started: Instant) -> Response<Full<Bytes>> {
    let status = rejection.status();
    app.metrics.rejected(Refusal {
        label: rejection.label(),
        reason: &rejection,
        command: if bus::valid_name(command) { command } else { "unknown" },
        status: status.as_u16(),
        request_id,
        latency_us: started.elapsed().as_micros() as u64,
    });
    let body = serde_json::json!({
        "ActionStatus": "FAIL",
        "ErrorCode": status.as_u16(),
        "ErrorInfo": rejection.to_string(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Rejection::MethodNotAllowed(allow) = rejection {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps;
    use crate::bus::stdout::Stdout;
    use crate::outbox;
    use std::time::Duration;

    fn app(outbox_capacity: usize) -> App {
        let token = apps::Token { name: "t".into(), secret: "tok".into() };
        let tencent = apps::App { tokens: vec![token], prefix: "tencent".into(), fallbacks: Default::default() };
        let mut listed = apps::Apps::single(tencent.clone());
        listed.listed.insert("1400".into(), tencent);
        App {
            limits: Limits::default(),
            apps: Arc::new(Current::new(listed)),
            decisions: Decisions::default(),
            audit: false,
            tracer: None,
            bus: Bus::Stdout(Stdout::new(Box::new(std::io::sink()))),
            outbox: Arc::new(Outbox::new(
                outbox::Bounds { capacity: outbox_capacity, max_bytes: 1 << 20, wait: Duration::ZERO },
                None,
            )),
            metrics: Arc::new(Metrics::default()),
            replays: Replays::new(100),
        }
    }

    fn target(app: &str, token: &str, command: &str) -> String {
        let time = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
        let sign = tencent::sign(token, &time);
        format!("/?SdkAppid={app}&CallbackCommand={command}&Sign={sign}&RequestTime={time}")
    }

    async fn status(app: &App, method: Method, uri: &str, body: &'static [u8]) -> u16 {
        let request = Request::builder().method(method).uri(uri).body(Full::new(Bytes::from_static(body))).unwrap();
        handle(app, request).await.status().as_u16()
    }

    /// Each request fails every check from one row of the README's table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn checks_run_in_the_documented_order() {
        let app = app(1);
        let cmd = "Live.CallbackAfterCreateRoom";
        let big: &'static [u8] = Box::leak(vec![b' '; 70_000].into_boxed_slice());
        let rows: [(Method, String, &'static [u8], u16); 8] = [
            (Method::GET, target("999", "bad", "a.%3E") + "&SdkAppid=1400", big, 405),
            (Method::POST, "/elsewhere".into(), big, 404),
            (Method::POST, target("999", "bad", "a.%3E") + "&SdkAppid=1400", big, 400),
            (Method::POST, target("999", "bad", "a.%3E"), big, 403),
            (Method::POST, target("1400", "bad", "a.%3E"), big, 401),
            (Method::POST, target("1400", "tok", "a.%3E"), big, 413),
            (Method::POST, target("1400", "tok", "a.%3E"), b"{}", 400),
            (Method::POST, target("1400", "tok", cmd), b"{}", 200),
        ];
        for (method, uri, body, expected) in rows {
            assert_eq!(status(&app, method.clone(), &uri, body).await, expected, "{method} {uri}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503. (The
        // same request again would be a replay, answered as before: another body.)
        assert_eq!(status(&app, Method::POST, &target("1400", "tok", cmd), br#"{"n":1}"#).await, 503);
        assert_eq!(status(&app, Method::POST, &target("1400", "tok", cmd), b"{}").await, 200, "a replay");
    }
}
