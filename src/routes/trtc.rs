//! The checks of a TRTC room and media callback on the callback path, in the order of the
//! README's "Live, Chat and TRTC on one gateway", up to a [`Checked`] event that `accept`
//! enqueues as it does a Live or Chat one. The protocol itself (signature, event, id) is
//! `crate::trtc`.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::{Method, Request};

use super::{read_body, Checked, Rejection, Shared};
use crate::bus::Origin;
use crate::replay;
use crate::tencent::{Body, Query};
use crate::trtc::{self as protocol, Event, NotEvent, SignError};

pub(super) const OK: &[u8] = protocol::OK;

/// Whether this request is a TRTC callback (see [`protocol::addressed`]).
pub(super) fn addressed(query: &Query, headers: &HeaderMap) -> bool {
    protocol::addressed(query, headers.contains_key(protocol::SDK_APP_ID))
}

pub(super) async fn check<B>(shared: &Shared, request: Request<B>) -> Result<Checked, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = &shared.limits;
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    let headers = request.headers();
    // As with a repeated query parameter: readers that take the first or the last value would
    // see different requests.
    if [protocol::SDK_APP_ID, protocol::SIGN].iter().any(|name| headers.get_all(*name).iter().count() > 1) {
        return Err(Rejection::bad("param_repeated", "the SdkAppId or Sign header appears more than once"));
    }
    let header = |name| headers.get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let (sdk_app_id, sign) = (header(protocol::SDK_APP_ID).unwrap_or_default(), header(protocol::SIGN));
    let (traceparent, tracestate) = (header("traceparent").unwrap_or_default(), header("tracestate"));
    let settings = shared.apps.get();
    let Some(app) = settings.get(&sdk_app_id) else { return Err(Rejection::Forbidden) };
    let received = SystemTime::now();
    let payload = read_body(limits, request).await?;
    let signed = if app.trtc_keys.is_empty() {
        if !app.tokens.is_empty() {
            return Err(Rejection::TrtcUnauthorized(SignError::NoKey));
        }
        false
    } else {
        let keys = app.trtc_keys.iter().map(|key| key.secret.as_str());
        let key = protocol::verify(keys, sign.as_deref(), &payload).map_err(Rejection::TrtcUnauthorized)?;
        shared.metrics.signed(&sdk_app_id, &app.trtc_keys[key].name);
        true
    };
    let body = Body::parse(&payload, limits.max_json_depth)
        .map_err(|invalid| Rejection::bad(invalid.label(), invalid.reason()))?;
    let event =
        Event::parse(&sdk_app_id, &payload).map_err(|NotEvent| Rejection::bad(NotEvent::LABEL, NotEvent::REASON))?;
    // Signed events only, as for Live and Chat: a retry is told from a new event by the cache
    // within Tencent's retry window, and a copy sent later is refused as stale.
    let replay = if signed {
        let until =
            event.retried_until(SystemTime::now(), limits.max_clock_skew).map_err(Rejection::TrtcUnauthorized)?;
        Some((replay::Key::from(event.fingerprint()), until))
    } else {
        None
    };
    let origin = Origin { sdk_app_id: sdk_app_id.clone(), traceparent, tracestate, ..Origin::default() };
    Ok(Checked {
        settings,
        sdk_app_id,
        command: event.command(),
        body_room: body.room_key(),
        payload,
        replay,
        origin,
        received,
        trtc_id: Some(event.id()),
    })
}
