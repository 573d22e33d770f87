//! What each endpoint does: the callback path (the checks of the README's "What Tencent sees",
//! in order; a TRTC callback's in `trtc`), `/healthz`, `/readyz` and `/metrics`. Generic over
//! the request body so that the unit tests below call [`handle`] without a socket; sockets,
//! connections and shutdown belong to `http`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::apps::{self, Apps, Current};
use crate::bus::{self, Bus, Message, Origin};
use crate::decision::{Decisions, Kind};
use crate::metrics::{Gauges, Metrics, Rejected};
use crate::outbox::{Outbox, PushError};
use crate::replay::{self, Answered, Replays};
use crate::spool::SpoolError;
use crate::tail::{Seen, Tap};
use crate::tencent::{self, Body, Query, SignError};
use crate::traces::{self, Context, Span, Tracer};

mod trtc;

/// Paths the gateway serves itself; the callback path cannot be one of them.
pub const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How callbacks are checked.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_clock_skew: std::time::Duration,
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a body (the body itself is 1).
    pub max_json_depth: usize,
    /// Signed requests remembered to answer replays (0: none).
    pub replay_cache_entries: usize,
    /// A body must arrive whole within this time of its headers.
    pub body_read_timeout: std::time::Duration,
}

/// What every request shares, built once at start.
pub struct Shared {
    /// The callback path.
    pub path: String,
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
    /// Every callback answered, for `hookbus tail`.
    pub tap: Arc<Tap>,
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
    #[error("{}", .0.reason())]
    TrtcUnauthorized(crate::trtc::SignError),
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
            Rejection::Unauthorized(_) | Rejection::TrtcUnauthorized(_) => StatusCode::UNAUTHORIZED,
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
            Rejection::TrtcUnauthorized(error) => error.label(),
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
pub async fn handle<B>(shared: &Shared, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path();
    let get = request.method() == Method::GET;
    match path {
        _ if path == shared.path => callback(shared, request).await,
        "/healthz" if get => text(StatusCode::OK, "ok\n"),
        // Ready means "can accept": with a spool, a disconnected bus is what the spool is for.
        "/readyz" if get && shared.outbox.spool_failing() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "spool refuses writes\n")
        }
        "/readyz" if get && shared.bus.refusal().is_some() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "bus refuses publishes\n")
        }
        "/readyz" if get => match (shared.outbox.is_full(), shared.bus.is_connected(), shared.outbox.is_spooled()) {
            (true, _, false) => text(StatusCode::SERVICE_UNAVAILABLE, "outbox full\n"),
            (true, _, true) => text(StatusCode::SERVICE_UNAVAILABLE, "spool full\n"),
            (false, false, false) => text(StatusCode::SERVICE_UNAVAILABLE, "bus disconnected\n"),
            (false, false, true) => text(StatusCode::OK, "ready (bus disconnected, spooling)\n"),
            (false, true, _) => text(StatusCode::OK, "ready\n"),
        },
        "/metrics" if get => {
            let body = shared.metrics.render(Gauges {
                outbox_depth: shared.outbox.depth(),
                outbox_capacity: shared.outbox.capacity(),
                outbox_bytes: shared.outbox.memory(),
                bus_connected: shared.bus.is_connected(),
                connect_attempts: shared.bus.connect_attempts(),
                bus_node: shared.bus.node(),
                channel_reopens: shared.bus.channel_reopens(),
                clients_replaced: shared.bus.clients_replaced(),
                late_replies: shared.bus.late_replies(),
                bus_refused: shared.bus.refusal(),
                unreadable_replies: shared.bus.unreadable_replies(),
                replay_cache_entries: shared.replays.len(),
                spans_dropped: shared.tracer.as_ref().map(Tracer::dropped),
                spool: shared.outbox.spool_bytes(),
                spool_write_failing: shared.outbox.is_spooled().then(|| shared.outbox.spool_failing()),
                dead_letters: shared.outbox.dead_letters().held(),
            });
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ if RESERVED_PATHS.contains(&path) => {
            reject(shared, "", Rejection::MethodNotAllowed("GET"), "-", Instant::now())
        }
        _ => reject(shared, "", Rejection::NotFound, "-", Instant::now()),
    }
}

async fn callback<B>(shared: &Shared, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let is_trtc = trtc::addressed(&query, request.headers());
    let surface = if is_trtc { "trtc" } else { "live" };
    let queried_app = query.sdk_app_id.clone().unwrap_or_default();
    // A refusal is counted under the command, or the surface when that is all that is known.
    let command = if is_trtc { "trtc".to_owned() } else { query.command.clone().unwrap_or_default() };
    // The caller's request id when it sends one, whatever its length (the log cuts it and notes
    // its size); else the event id, or a fresh one for a refusal.
    let request_id =
        request.headers().get(X_REQUEST_ID).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match accept(shared, request, query, is_trtc).await {
        Ok(Accepted { command, id, trace, answer, app, room, outcome, body }) => {
            shared.metrics.answered(&command, 200);
            let request_id = request_id.as_deref().unwrap_or(&id);
            let traceparent = trace.as_ref().map_or("", Context::header);
            // Fields are evaluated only when the line is logged: no clock read otherwise.
            tracing::debug!(
                request_id = crate::logs::field(request_id),
                id,
                command,
                traceparent,
                status = 200,
                latency_us = started.elapsed().as_micros() as u64,
                "callback answered"
            );
            let latency_us = started.elapsed().as_micros() as u64;
            let (time, status) = (SystemTime::now(), 200);
            shared.tap.record(Seen { time, surface, app, command, room, status, outcome, latency_us, id, body });
            let mut response = Response::new(Full::new(answer));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(rejection) => {
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let outcome = format!("refused {}", rejection.label());
            let response = reject(shared, &command, rejection, &request_id, started);
            shared.tap.record(Seen {
                time: SystemTime::now(),
                surface,
                app: queried_app,
                command: if bus::valid_name(&command) { command } else { String::new() },
                room: None,
                status: response.status().as_u16(),
                outcome,
                latency_us: started.elapsed().as_micros() as u64,
                id: request_id,
                body: Bytes::new(),
            });
            response
        }
    }
}

/// An accepted callback: its command, event id, trace context and the answer for Tencent, and
/// what `hookbus tail` shows of it.
struct Accepted {
    command: String,
    id: String,
    /// None for a replay, answered as before without an event.
    trace: Option<Context>,
    answer: Bytes,
    app: String,
    room: Option<String>,
    /// `accepted`, `replay`, or how it was decided (`reply 0`, `fallback timeout 1`).
    outcome: String,
    body: Bytes,
}

impl Accepted {
    /// A replay of `checked`, answered `answer` as before, without an event.
    fn replay(checked: Checked, answer: Bytes) -> Accepted {
        let Checked { command, sdk_app_id: app, body_room: room, payload, .. } = checked;
        let body = crate::tail::kept(&payload);
        Accepted { command, id: "replay".into(), trace: None, answer, app, room, outcome: "replay".into(), body }
    }
}

/// A callback that passed every check: what it is and where it goes.
struct Checked {
    settings: Arc<Apps>,
    sdk_app_id: String,
    command: String,
    body_room: Option<String>,
    payload: Bytes,
    /// Signed requests only: how a replay is recognised, and until when.
    replay: Option<(replay::Key, u64)>,
    origin: Origin,
    received: SystemTime,
    /// The event id the callback determines (signed ones, TRTC ones); else a random one is made.
    id: Option<String>,
}

/// The checks, then the event decided or enqueued; a replay is answered as before.
async fn accept<B>(shared: &Shared, request: Request<B>, query: Query, is_trtc: bool) -> Result<Accepted, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (checked, ok) = if is_trtc {
        (trtc::check(shared, request).await?, trtc::OK)
    } else {
        (check(shared, request, query).await?, OK)
    };
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    if let Some(answered) = checked.replay.and_then(|(key, _)| shared.replays.answered(key, now)) {
        shared.metrics.replayed(&checked.command);
        let answer = match answered {
            Answered::Event => Bytes::from_static(ok),
            Answered::Decision(answer) => answer,
        };
        return Ok(Accepted::replay(checked, answer));
    }
    let kind = if is_trtc { None } else { shared.decisions.kind(&checked.command) };
    // A replay of a decision still being made waits for it: one request on the bus, and both
    // answered with its decision.
    let deciding = match (kind, checked.replay) {
        (Some(_), Some((key, _))) => match shared.replays.claim(key).await {
            // The original may have been decided between the look-up above and the claim.
            Ok(deciding) => match shared.replays.answered(key, now) {
                Some(Answered::Decision(answer)) => {
                    shared.metrics.replayed(&checked.command);
                    return Ok(Accepted::replay(checked, answer));
                }
                _ => Some(deciding),
            },
            Err(Some(answer)) => {
                shared.metrics.replayed(&checked.command);
                return Ok(Accepted::replay(checked, answer));
            }
            Err(None) => None,
        },
        _ => None,
    };
    let app = checked.settings.get(&checked.sdk_app_id).expect("checked: the app is served");
    // Only exporting spans needs to know whether the trace context came from the caller.
    let incoming = shared.tracer.as_ref().map(|_| checked.origin.traceparent.clone());
    let (prefix, room, origin, payload) = (&app.prefix, checked.body_room, checked.origin, checked.payload);
    let mut message = match checked.id {
        Some(id) => Message::identified(id, prefix, &checked.command, room, origin, payload),
        None => Message::new(prefix, &checked.command, room, origin, payload),
    };
    let from_caller = incoming.is_some_and(|incoming| incoming == message.trace.header());
    let receive = Receive::start(shared.tracer.as_ref(), &mut message, checked.received, from_caller);
    let (command, id) = (checked.command, message.id.clone());
    let (room, body) = (message.key.clone(), crate::tail::kept(&message.payload));
    let (trace, answered, answer, outcome) = match kind {
        Some(kind) => {
            let (trace, answer, outcome) = decide(shared, kind, message, receive, app).await;
            (trace, Answered::Decision(answer.clone()), answer, outcome)
        }
        None => {
            let trace = enqueue(shared, message, receive).await?;
            (trace, Answered::Event, Bytes::from_static(ok), "accepted".to_owned())
        }
    };
    if let Some((key, expires)) = checked.replay {
        shared.replays.remember(key, expires, answered);
    }
    if let Some(deciding) = deciding {
        deciding.decided(answer.clone());
    }
    let app = checked.sdk_app_id;
    Ok(Accepted { command, id, trace: Some(trace), answer, app, room, outcome, body })
}

/// The checks of a callback, in the README's order, up to a body that names its command.
async fn check<B>(shared: &Shared, request: Request<B>, query: Query) -> Result<Checked, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = &shared.limits;
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    if query.repeated.is_some() {
        return Err(Rejection::bad("param_repeated", "a protocol parameter appears more than once in the query"));
    }
    let sdk_app_id = query.sdk_app_id.clone().unwrap_or_default();
    let settings = shared.apps.get();
    let Some(app) = settings.get(&sdk_app_id) else { return Err(Rejection::Forbidden) };
    // Signed requests can be told apart: the time until which a replay would be accepted.
    let mut replay_until = None;
    if !app.tokens.is_empty() {
        let (sign, time) = (query.sign.as_deref(), query.request_time.as_deref());
        let secrets = app.tokens.iter().map(|token| token.secret.as_str());
        let signed = tencent::verify(secrets, sign, time, limits.max_clock_skew, SystemTime::now())
            .map_err(Rejection::Unauthorized)?;
        shared.metrics.signed(&sdk_app_id, &app.tokens[signed.token].name);
        replay_until = Some((signed.request_time, signed.request_time + limits.max_clock_skew.as_secs()));
    }
    let (traceparent, tracestate) = trace_headers(request.headers());
    let received = SystemTime::now();
    let payload = read_body(limits, request).await?;
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
    if command.len() > 128 {
        return Err(Rejection::bad(
            "command_too_long",
            "CallbackCommand is longer than a destination can be (128 bytes)",
        ));
    }
    if !bus::valid_name(&command) {
        return Err(Rejection::bad("command_invalid", "CallbackCommand has characters a destination cannot hold"));
    }
    if command.split('.').next() == Some(bus::REQUESTS) {
        return Err(Rejection::bad("command_reserved", "CallbackCommand names the decision requests' destinations"));
    }
    let replay = replay_until.map(|(request_time, expires)| {
        let (sign, time) = (query.sign.as_deref().unwrap_or_default(), query.request_time.as_deref());
        (replay::Key::of(sign, time.unwrap_or_default(), &sdk_app_id, &command, &payload), request_time, expires)
    });
    // One id for the callback on every instance: what makes it a replay makes it the same event.
    let id = replay.map(|(key, request_time, _)| key.event_id(request_time));
    let replay = replay.map(|(key, _, expires)| (key, expires));
    let origin = Origin {
        sdk_app_id: sdk_app_id.clone(),
        client_ip: query.client_ip.unwrap_or_default(),
        opt_platform: query.opt_platform.unwrap_or_default(),
        traceparent,
        tracestate,
    };
    let body_room = body.room_key();
    Ok(Checked { settings, sdk_app_id, command, body_room, payload, replay, origin, received, id })
}

/// Request headers read on every callback, named once: a name given as text is parsed again
/// at each look-up.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The request's W3C trace context as it came: `traceparent` (empty when none) and `tracestate`.
fn trace_headers(headers: &HeaderMap) -> (String, Option<String>) {
    (header(headers, TRACEPARENT).unwrap_or_default(), header(headers, TRACESTATE))
}

/// A request header's value as text, when it is present and text.
fn header(headers: &HeaderMap, name: impl hyper::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// The body, whole, within the size and time limits.
async fn read_body<B>(limits: &Limits, request: Request<B>) -> Result<Bytes, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
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
    match collected {
        // A copy of its own: the collected body may be a slice of the connection's read buffer,
        // which an event waiting in the outbox would otherwise keep alive whole.
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Rejection::PayloadTooLarge(limits.max_body_bytes))
        }
        Err(_) => Err(Rejection::bad("body_read", "body could not be read")),
    }
}

/// A callback's `receive` span, when spans are exported: the caller's span (when a valid one
/// came) is its parent, and it is the parent of what follows on the bus.
pub struct Receive {
    /// The context the event travels with: the receive span's when exporting.
    trace: Context,
    span: Option<(Tracer, SystemTime, Option<String>)>,
}

impl Receive {
    /// Starts the `receive` span of `message`, received at `received`, when `tracer` is set;
    /// `from_caller` says whether its trace context came with the request.
    pub fn start(tracer: Option<&Tracer>, message: &mut Message, received: SystemTime, from_caller: bool) -> Receive {
        let span = tracer.map(|tracer| {
            let caller = from_caller.then(|| message.trace.span_id().to_owned());
            message.trace = message.trace.child();
            (tracer.clone(), received, caller)
        });
        Receive { trace: message.trace.clone(), span }
    }

    /// Records a child span of `receive`, from `start` to now.
    fn child(&self, name: &'static str, start: SystemTime, attributes: Vec<(&'static str, String)>) {
        if let Some((tracer, _, _)) = &self.span {
            tracer.record(Span {
                name,
                trace_id: self.trace.trace_id().to_owned(),
                span_id: traces::span_id(),
                parent_id: Some(self.trace.span_id().to_owned()),
                start,
                end: SystemTime::now(),
                attributes,
            });
        }
    }

    /// Ends the `receive` span of the event `id` of `command`; gives back its trace context.
    fn end(self, command: &str, id: &str) -> Context {
        if let Some((tracer, start, parent_id)) = self.span {
            tracer.record(Span {
                name: "receive",
                trace_id: self.trace.trace_id().to_owned(),
                span_id: self.trace.span_id().to_owned(),
                parent_id,
                start,
                end: SystemTime::now(),
                attributes: vec![("hookbus.command", command.to_owned()), ("cloudevents.event_id", id.to_owned())],
            });
        }
        self.trace
    }
}

/// Decides a blocking callback; counts, logs and audits the decision. Gives back the trace
/// context, the answer, and how it was decided in words (`reply 0`, `fallback timeout 1`).
async fn decide(
    shared: &Shared,
    kind: Kind,
    message: Message,
    receive: Receive,
    app: &apps::App,
) -> (Context, Bytes, String) {
    let (started, decision_start) = (Instant::now(), SystemTime::now());
    let (command, id) = (message.command.clone(), message.id.clone());
    let request = shared.audit.then(|| message.clone());
    let decided = shared.decisions.decide(&shared.bus, kind, message, &app.fallbacks).await;
    let elapsed = started.elapsed();
    if let Some(flawed) = &decided.flawed {
        shared.metrics.flawed_reply(&id, &command, flawed);
    }
    shared.metrics.decided(&command, decided.outcome, decided.rule.as_deref(), elapsed);
    let (outcome, rule) = (decided.outcome.label(), decided.rule.as_deref().unwrap_or_default());
    tracing::debug!(id, command, outcome, rule, ?elapsed, "decided");
    if let Some(request) = request {
        let event = decided.audit(&request, &app.prefix, elapsed);
        if let Err(refused) = shared.outbox.push(event).await {
            shared.metrics.audit_refused(&id, &refused);
        }
    }
    let attributes = vec![("hookbus.outcome", outcome.to_owned()), ("hookbus.rule", rule.to_owned())];
    receive.child("decision", decision_start, attributes);
    let how = match (&decided.rule, decided.outcome) {
        (Some(rule), _) => format!("rule {rule} {}", decided.code),
        (None, crate::decision::Outcome::Reply) => format!("reply {}", decided.code),
        (None, _) => format!("fallback {outcome} {}", decided.code),
    };
    (receive.end(&command, &id), decided.answer, how)
}

/// Puts an informational event into the outbox: once this returns, it will be delivered.
/// Gives back the trace context it travels with.
pub async fn enqueue(shared: &Shared, message: Message, receive: Receive) -> Result<Context, Rejection> {
    let (command, id) = (message.command.clone(), message.id.clone());
    shared.outbox.push(message).await?;
    Ok(receive.end(&command, &id))
}

impl From<PushError> for Rejection {
    fn from(refused: PushError) -> Rejection {
        match refused {
            PushError::Full(_) | PushError::FullBytes(_) => Rejection::Overloaded("outbox_full"),
            PushError::Spool(SpoolError::Full(_)) => Rejection::Overloaded("spool_full"),
            // Logged by the outbox, at most once a second.
            PushError::Spool(SpoolError::Io(_)) => Rejection::SpoolFailed,
        }
    }
}

/// Answers a refusal; counts it and logs its reason (rate-limited).
fn reject(
    shared: &Shared,
    command: &str,
    rejection: Rejection,
    request_id: &str,
    started: Instant,
) -> Response<Full<Bytes>> {
    let status = rejection.status();
    shared.metrics.rejected(Rejected {
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

    pub(super) fn shared(outbox_capacity: usize) -> Shared {
        let token = apps::Token { name: "t".into(), secret: "tok".into() };
        let tencent = apps::App {
            tokens: vec![token],
            trtc_keys: Vec::new(),
            prefix: "tencent".into(),
            fallbacks: Default::default(),
        };
        let mut listed = apps::Apps::single(tencent.clone());
        listed.listed.insert("1400".into(), tencent);
        Shared {
            path: "/".into(),
            limits: crate::config::serve_flags(&[]).expect("the defaults parse").limits(),
            apps: Arc::new(Current::new(listed)),
            decisions: Decisions::default(),
            audit: false,
            tracer: None,
            bus: Bus::Stdout(Stdout::new(Box::new(std::io::sink()))),
            outbox: Arc::new(Outbox::new(
                outbox::Bounds {
                    capacity: outbox_capacity,
                    max_bytes: 1 << 20,
                    wait: Duration::ZERO,
                    linger: Duration::ZERO,
                },
                None,
                Arc::new(crate::dead_letters::DeadLetters::in_memory(1 << 20)),
            )),
            metrics: Arc::new(Metrics::default()),
            replays: Replays::new(100),
            tap: Arc::default(),
        }
    }

    fn target(app: &str, token: &str, command: &str) -> String {
        let time = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
        let sign = tencent::sign(token, &time);
        format!("/?SdkAppid={app}&CallbackCommand={command}&Sign={sign}&RequestTime={time}")
    }

    async fn status(shared: &Shared, method: Method, uri: &str, body: &'static [u8]) -> u16 {
        let request = Request::builder().method(method).uri(uri).body(Full::new(Bytes::from_static(body))).unwrap();
        handle(shared, request).await.status().as_u16()
    }

    /// Each request fails every check from one row of the README's table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn checks_run_in_the_documented_order() {
        let shared = shared(1);
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
            assert_eq!(status(&shared, method.clone(), &uri, body).await, expected, "{method} {uri}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503. (The
        // same request again would be a replay, answered as before: another body.)
        assert_eq!(status(&shared, Method::POST, &target("1400", "tok", cmd), br#"{"n":1}"#).await, 503);
        assert_eq!(status(&shared, Method::POST, &target("1400", "tok", cmd), b"{}").await, 200, "a replay");
    }
}
