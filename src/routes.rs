//! What each endpoint does: the callback path, `/healthz`, `/readyz` and `/metrics`. A callback
//! is told to its [`Surface`] once, by its head; the surface checks it (the README's "What
//! Tencent sees" for Live and Chat in `live`, TRTC's in `trtc`, Cloud Streaming's in `css`, each
//! using what `request` reads the same way for all), and what it accepts is answered, decided or
//! enqueued here. Generic over the request body so that the unit tests below call [`handle`]
//! without a socket; sockets, connections and shutdown belong to `http`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::apps::{self, Current};
use crate::bus::{self, Bus, Message};
use crate::decision::{Decisions, Kind};
use crate::metrics::{DeadLetterCounts, Gauges, Metrics, OutboxBytes, RefusedCallback, SpoolBytes};
use crate::outbox::Outbox;
use crate::replay::{Answered, Replays};
use crate::tail::{Seen, Tap};
use crate::tencent::Query;
use crate::traces::{self, Context, Span, Tracer};

mod css;
mod live;
mod refusal;
mod request;
mod trtc;

pub use refusal::Refusal;
pub use request::Limits;
use request::{Checked, Gate, X_REQUEST_ID};

/// Paths the gateway serves itself; the callback path cannot be one of them.
pub const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

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

/// A Tencent protocol spoken on the callback path: its checks (a file of its own under
/// `routes/`), its answer and whether its callbacks may block. Chosen once, from the head.
enum Surface<'q> {
    /// Live and Chat callbacks, with the query that names their app, command and signature.
    Live(Query<'q>),
    /// TRTC room and media callbacks.
    Trtc,
    /// Cloud Streaming (CSS) callbacks.
    Css,
}

impl<'q> Surface<'q> {
    /// The surface a request speaks: Live and Chat by their query parameters; without them, TRTC
    /// by its `SdkAppId` header, else CSS (which has neither).
    fn of(query: &'q str, headers: &HeaderMap) -> Surface<'q> {
        // Asked of every callback: the name made once, not parsed at each look-up.
        const SDK_APP_ID: HeaderName = HeaderName::from_static(crate::trtc::SDK_APP_ID);
        let query = Query::parse(query);
        if query.names_live() {
            Surface::Live(query)
        } else if headers.contains_key(SDK_APP_ID) {
            Surface::Trtc
        } else {
            Surface::Css
        }
    }

    /// Its name in `hookbus tail`.
    fn name(&self) -> &'static str {
        match self {
            Surface::Live(_) => live::NAME,
            Surface::Trtc => trtc::NAME,
            Surface::Css => css::NAME,
        }
    }

    /// The app and the command the head names before any check: what a refusal is shown and
    /// counted under (the command, or the surface when that is all that is known).
    fn named(&self) -> (String, String) {
        match self {
            Surface::Live(query) => {
                let text = |value: &Option<std::borrow::Cow<str>>| value.as_deref().unwrap_or_default().to_owned();
                (text(&query.sdk_app_id), text(&query.command))
            }
            Surface::Trtc => (String::new(), trtc::NAME.to_owned()),
            Surface::Css => (String::new(), css::NAME.to_owned()),
        }
    }

    /// The answer to an accepted informational callback.
    fn ok(&self) -> &'static [u8] {
        match self {
            Surface::Live(_) => live::OK,
            Surface::Trtc => trtc::OK,
            Surface::Css => css::OK,
        }
    }

    /// Whether its callbacks may be blocking ones, decided over the bus.
    fn may_block(&self) -> bool {
        match self {
            Surface::Live(_) => true,
            Surface::Trtc | Surface::Css => false,
        }
    }

    /// Its checks, in the README's order, up to the callback and the app it was sent for.
    async fn check<'a, B>(self, gate: &Gate<'a>, request: Request<B>) -> Result<Checked<'a>, Refusal>
    where
        B: hyper::body::Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match self {
            Surface::Live(query) => live::check(gate, request, query).await,
            Surface::Trtc => trtc::check(gate, request).await,
            Surface::Css => css::check(gate, request).await,
        }
    }
}

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
            let body = shared.metrics.render(gauges(shared));
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ if RESERVED_PATHS.contains(&path) => {
            reject(shared, "", Refusal::MethodNotAllowed("GET"), "-", Instant::now())
        }
        _ => reject(shared, "", Refusal::NotFound, "-", Instant::now()),
    }
}

async fn callback<B>(shared: &Shared, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    // The query is read where it lies, in a handle on the request's own bytes (no copy), and read
    // again only for a refusal: the app and command it names are what a refusal is shown under.
    let uri = request.uri().clone();
    let surface = Surface::of(uri.query().unwrap_or(""), request.headers());
    let name = surface.name();
    // The caller's request id when it sends one, whatever its length (the log cuts it and notes
    // its size); else the event id, or a fresh one for a refusal.
    let request_id =
        request.headers().get(X_REQUEST_ID).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    match accept(shared, request, surface).await {
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
            shared.tap.record(Seen { time, surface: name, app, command, room, status, outcome, latency_us, id, body });
            let mut response = Response::new(Full::new(answer));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(refusal) => {
            let (queried_app, command) = match name {
                live::NAME => Surface::Live(Query::parse(uri.query().unwrap_or(""))).named(),
                _ => (String::new(), name.to_owned()),
            };
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let outcome = format!("refused {}", refusal.label()).into();
            let response = reject(shared, &command, refusal, &request_id, started);
            shared.tap.record(Seen {
                time: SystemTime::now(),
                surface: name,
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
    outcome: Cow<'static, str>,
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

/// The checks, then the event decided or enqueued; a replay is answered as before.
async fn accept<B>(shared: &Shared, request: Request<B>, surface: Surface<'_>) -> Result<Accepted, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (ok, may_block) = (surface.ok(), surface.may_block());
    let apps = shared.apps.get();
    let gate = Gate { limits: &shared.limits, apps: &apps, metrics: &shared.metrics };
    let checked = surface.check(&gate, request).await?;
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    if let Some(answered) = checked.replay.and_then(|(key, _)| shared.replays.answered(key, now)) {
        shared.metrics.replayed(&checked.command);
        let answer = match answered {
            Answered::Event => Bytes::from_static(ok),
            Answered::Decision(answer) => answer,
        };
        return Ok(Accepted::replay(checked, answer));
    }
    let kind = if may_block { shared.decisions.kind(&checked.command) } else { None };
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
    let app = checked.app;
    // Only exporting spans needs to know whether the trace context came from the caller.
    let incoming = shared.tracer.as_ref().map(|_| checked.origin.traceparent.clone());
    let (prefix, room, origin, payload) = (&app.prefix, checked.body_room, checked.origin, checked.payload);
    let mut message = match checked.id {
        Some(id) => Message::identified(id, prefix, &checked.command, room, origin, payload),
        None => Message::new(prefix, &checked.command, room, origin, payload),
    };
    if let Some(time) = checked.time {
        message.happened_at(time);
    }
    let from_caller = incoming.is_some_and(|incoming| incoming == message.trace.header());
    let receive = Receive::start(shared.tracer.as_ref(), &mut message, checked.received, from_caller);
    let (command, id) = (checked.command, message.id.clone());
    let (room, body) = (message.key.clone(), crate::tail::kept(&message.payload));
    let (trace, answered, answer, outcome) = match kind {
        Some(kind) => {
            let (trace, answer, outcome) = decide(shared, kind, message, receive, app).await;
            (trace, Answered::Decision(answer.clone()), answer, outcome.into())
        }
        None => {
            let trace = enqueue(shared, message, receive).await?;
            (trace, Answered::Event, Bytes::from_static(ok), "accepted".into())
        }
    };
    if let Some((key, expires)) = checked.replay {
        shared.replays.remember(key, expires, answered);
    }
    if let Some(deciding) = deciding {
        deciding.decided(answer.clone());
    }
    let app = checked.sdk_app_id;
    Ok(Accepted { command, id, trace, answer, app, room, outcome, body })
}

/// A callback's `receive` span, when spans are exported: the caller's span (when a valid one
/// came) is its parent, and it is the parent of what follows on the bus.
pub struct Receive {
    /// The context the event travels with (the receive span's when exporting), kept only when
    /// spans are exported or the callback's answer is logged: a copy otherwise unread.
    trace: Option<Context>,
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
        let keep = span.is_some() || tracing::enabled!(tracing::Level::DEBUG);
        Receive { trace: keep.then(|| message.trace.clone()), span }
    }

    /// Records a child span of `receive`, from `start` to now.
    fn child(&self, name: &'static str, start: SystemTime, attributes: Vec<(&'static str, String)>) {
        if let (Some((tracer, _, _)), Some(trace)) = (&self.span, &self.trace) {
            tracer.record(Span {
                name,
                trace_id: trace.trace_id().to_owned(),
                span_id: traces::span_id(),
                parent_id: Some(trace.span_id().to_owned()),
                start,
                end: SystemTime::now(),
                attributes,
            });
        }
    }

    /// Ends the `receive` span of the event `id` of `command`; gives back its trace context.
    fn end(self, command: &str, id: &str) -> Option<Context> {
        if let (Some((tracer, start, parent_id)), Some(trace)) = (self.span, &self.trace) {
            tracer.record(Span {
                name: "receive",
                trace_id: trace.trace_id().to_owned(),
                span_id: trace.span_id().to_owned(),
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
) -> (Option<Context>, Bytes, String) {
    let (started, decision_start) = (Instant::now(), SystemTime::now());
    let (command, id) = (message.event_type.clone(), message.id.clone());
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
/// Gives back the trace context it travels with (when kept, [`Receive`]).
pub async fn enqueue(shared: &Shared, message: Message, receive: Receive) -> Result<Option<Context>, Refusal> {
    // Its names are copied only for a span that records them.
    let named = receive.span.is_some().then(|| (message.event_type.clone(), message.id.clone()));
    shared.outbox.push(message).await?;
    let (command, id) = named.unwrap_or_default();
    Ok(receive.end(&command, &id))
}

/// Answers a refusal; counts it and logs its reason (rate-limited).
fn reject(
    shared: &Shared,
    command: &str,
    refusal: Refusal,
    request_id: &str,
    started: Instant,
) -> Response<Full<Bytes>> {
    let status = refusal.status();
    shared.metrics.rejected(RefusedCallback {
        label: refusal.label(),
        reason: &refusal,
        command: if bus::valid_name(command) { command } else { "unknown" },
        status: status.as_u16(),
        request_id,
        latency_us: started.elapsed().as_micros() as u64,
    });
    let body = serde_json::json!({
        "ActionStatus": "FAIL",
        "ErrorCode": status.as_u16(),
        "ErrorInfo": refusal.to_string(),
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Refusal::MethodNotAllowed(allow) = refusal {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

/// What `/metrics` reads of the outbox, the bus, the replay cache and the tracer when scraped.
fn gauges(shared: &Shared) -> Gauges {
    let (outbox, bus) = (&shared.outbox, &shared.bus);
    let (held, max) = outbox.memory();
    let (dead_letters, dead_letter_bytes, dropped) = outbox.dead_letters().held();
    Gauges {
        outbox_depth: outbox.depth(),
        outbox_capacity: outbox.capacity(),
        outbox_bytes: OutboxBytes { held, max },
        bus_connected: bus.is_connected(),
        connect_attempts: bus.connect_attempts(),
        bus_node: bus.node(),
        channel_reopens: bus.channel_reopens(),
        clients_replaced: bus.clients_replaced(),
        late_replies: bus.late_replies(),
        bus_refused: bus.refusal(),
        unreadable_replies: bus.unreadable_replies(),
        replay_cache_entries: shared.replays.len(),
        spans_dropped: shared.tracer.as_ref().map(Tracer::dropped),
        spool: outbox.spool_bytes().map(|(held, max)| SpoolBytes { held, max }),
        spool_write_failing: outbox.is_spooled().then(|| outbox.spool_failing()),
        dead_letters: DeadLetterCounts { held: dead_letters, bytes: dead_letter_bytes, dropped },
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::{self, Token};
    use crate::bus::stdout::Stdout;
    use crate::{outbox, tencent};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn the_surface_is_told_by_the_query_and_the_header() {
        let (none, trtc) =
            (HeaderMap::new(), HeaderMap::from_iter([(HeaderName::from_static("sdkappid"), "1".parse().unwrap())]));
        for query in ["", "contenttype=json&x=1"] {
            assert!(matches!(Surface::of(query, &trtc), Surface::Trtc), "{query}");
            assert!(matches!(Surface::of(query, &none), Surface::Css), "{query}: no SdkAppId header");
        }
        for live in ["SdkAppid=1", "CallbackCommand=Live.X", "Sign=ab", "requesttime=1"] {
            assert!(matches!(Surface::of(live, &trtc), Surface::Live(_)), "{live}");
            assert!(matches!(Surface::of(live, &none), Surface::Live(_)), "{live}");
        }
    }

    fn shared(outbox_capacity: usize) -> Shared {
        let token = apps::Token { name: "t".into(), secret: "tok".into() };
        let tencent = apps::App {
            tokens: vec![token],
            trtc_keys: Vec::new(),
            css_keys: Vec::new(),
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

    /// A request's headers, as names and values.
    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// Each request fails every check from one row of the README's TRTC table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn trtc_checks_run_in_the_documented_order() {
        let shared = shared(1);
        let mut apps = (*shared.apps.get()).clone();
        let key = Token { name: "k".into(), secret: "key".into() };
        apps.listed.get_mut("1400").expect("the test app").trtc_keys.push(key);
        shared.apps.replace(apps);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let event = |ts: u128| format!(r#"{{"EventGroupId":1,"EventType":103,"CallbackTs":{ts},"EventInfo":{{}}}}"#);
        let (fresh, stale) = (event(now), event(now - 200_000));
        let big = " ".repeat(70_000);
        let bad = crate::trtc::sign("other", b"");
        let rows: [(Method, Headers, &str, u16); 8] = [
            (Method::GET, &[("SdkAppId", "999"), ("Sign", &bad), ("Sign", &bad)], &big, 405),
            (Method::POST, &[("SdkAppId", "999"), ("Sign", &bad), ("Sign", &bad)], &big, 400),
            (Method::POST, &[("SdkAppId", "999"), ("Sign", &bad)], &big, 403),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &bad)], &big, 413),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &bad)], "{}", 401),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &crate::trtc::sign("key", b"{}"))], "{}", 400),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &crate::trtc::sign("key", stale.as_bytes()))], &stale, 401),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &crate::trtc::sign("key", fresh.as_bytes()))], &fresh, 200),
        ];
        for (method, headers, body, expected) in rows {
            let mut request = Request::builder().method(method.clone()).uri("/");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
            let status = handle(&shared, request).await.status().as_u16();
            assert_eq!(status, expected, "{method} {headers:?}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503.
        let other = event(now + 1).replace("{}", r#"{"UserId":"u2"}"#);
        let sign = crate::trtc::sign("key", other.as_bytes());
        let request = Request::post("/").header("SdkAppId", "1400").header("Sign", sign);
        let request = request.body(Full::new(Bytes::from(other))).unwrap();
        assert_eq!(handle(&shared, request).await.status().as_u16(), 503);
    }

    /// Each request fails every check from one row of the README's CSS table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn css_checks_run_in_the_documented_order() {
        let shared = shared(1);
        let mut apps = (*shared.apps.get()).clone();
        let key = Token { name: "k".into(), secret: "key".into() };
        apps.listed.get_mut("1400").expect("the test app").css_keys.push(key);
        shared.apps.replace(apps);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let event = |appid: &str, t: Option<u64>, stream: &str| {
            let sign = |t: u64| crate::css::sign("key", &t.to_string());
            let signature = t.map_or(String::new(), |t| format!(r#","t":{t},"sign":"{}""#, sign(t)));
            format!(r#"{{"event_type":1,"appid":{appid},"stream_id":"{stream}"{signature}}}"#)
        };
        let big = " ".repeat(70_000);
        let rows: [(Method, String, u16); 8] = [
            (Method::GET, big.clone(), 405),
            (Method::POST, big, 413),
            (Method::POST, r#"{"event_type":"1","appid":999}"#.into(), 400),
            (Method::POST, event("999", None, "s"), 403),
            (Method::POST, event("1400", None, "s"), 401),
            (Method::POST, event("1400", Some(now + 600), "s").replace(r#""sign":""#, r#""sign":"0"#), 401),
            (Method::POST, event("1400", Some(now - 61), "s"), 401),
            (Method::POST, event("1400", Some(now + 600), "s"), 200),
        ];
        for (method, body, expected) in rows {
            let request = Request::builder().method(method.clone()).uri("/").body(Full::new(Bytes::from(body)));
            let status = handle(&shared, request.unwrap()).await.status().as_u16();
            assert_eq!(status, expected, "{method} row answered {status}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503.
        let request = Request::post("/").body(Full::new(Bytes::from(event("1400", Some(now + 600), "s2"))));
        assert_eq!(handle(&shared, request.unwrap()).await.status().as_u16(), 503);
    }
}
