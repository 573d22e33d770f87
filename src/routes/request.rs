//! What every surface reads of a request the same way: the method, header values, the trace
//! context, the body within the limits; and what a surface's checks make of it, [`Checked`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{AsHeaderName, HeaderMap, HeaderName, CONTENT_LENGTH};
use hyper::{Method, Request};

use super::refusal::Refusal;
use crate::apps::{App, Apps};
use crate::bus::Origin;
use crate::metrics::Metrics;
use crate::replay;

/// How callbacks are checked.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_clock_skew: Duration,
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a body (the body itself is 1).
    pub max_json_depth: usize,
    /// Signed requests remembered to answer replays (0: none).
    pub replay_cache_entries: usize,
    /// A body must arrive whole within this time of its headers.
    pub body_read_timeout: Duration,
}

/// What a surface's checks read besides the request: the limits, the apps in force when the
/// request came (the app a check finds is borrowed from them), and where signatures are counted.
pub struct Gate<'a> {
    pub limits: &'a Limits,
    pub apps: &'a Apps,
    pub metrics: &'a Metrics,
}

/// A callback that passed every check of its surface: what it is and where it goes.
pub struct Checked<'a> {
    /// The app it was sent for, found by the check.
    pub app: &'a App,
    pub sdk_app_id: String,
    pub command: String,
    pub body_room: Option<String>,
    pub payload: Bytes,
    /// Signed requests only: how a replay is recognised, and until when.
    pub replay: Option<(replay::Key, u64)>,
    pub origin: Origin,
    pub received: SystemTime,
    /// The event id the callback determines (signed ones, TRTC and CSS ones); else a random one
    /// is made.
    pub id: Option<String>,
    /// When the event happened, when the callback says so (CSS); else it is when it was received.
    pub time: Option<SystemTime>,
}

/// Callbacks are posted: any other method is refused, naming the one allowed.
pub fn posted<B>(request: &Request<B>) -> Result<(), Refusal> {
    if request.method() != Method::POST {
        return Err(Refusal::MethodNotAllowed("POST"));
    }
    Ok(())
}

/// Request headers read on every callback, named once: a name given as text is parsed again
/// at each look-up.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The request's W3C trace context as it came: `traceparent` (empty when none) and `tracestate`.
pub fn trace_headers(headers: &HeaderMap) -> (String, Option<String>) {
    (header(headers, TRACEPARENT).unwrap_or_default(), header(headers, TRACESTATE))
}

/// A request header's value as text, when it is present and text.
pub fn header(headers: &HeaderMap, name: impl AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned)
}

/// The body, whole, within the size and time limits.
pub async fn read_body<B>(limits: &Limits, request: Request<B>) -> Result<Bytes, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(Refusal::PayloadTooLarge(limits.max_body_bytes));
    }
    let mut body = std::pin::pin!(Limited::new(request.into_body(), limits.max_body_bytes).collect());
    // A callback's body nearly always came with its headers: a timer only for one that did not.
    let collected = match futures_util::poll!(body.as_mut()) {
        std::task::Poll::Ready(collected) => collected,
        std::task::Poll::Pending => match tokio::time::timeout(limits.body_read_timeout, body).await {
            Ok(collected) => collected,
            Err(_) => return Err(Refusal::BodyTimeout),
        },
    };
    match collected {
        // A copy of its own: the collected body may be a slice of the connection's read buffer,
        // which an event waiting in the outbox would otherwise keep alive whole.
        Ok(collected) => Ok(Bytes::copy_from_slice(&collected.to_bytes())),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::PayloadTooLarge(limits.max_body_bytes))
        }
        Err(_) => Err(Refusal::bad("body_read", "body could not be read")),
    }
}
