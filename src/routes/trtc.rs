//! The TRTC surface: a room and media callback that names its app and signature in headers
//! (`SdkAppId`, `Sign`) and has no Live or Chat query, checked in the order of the README's
//! "Live, Chat, TRTC and CSS on one gateway". The protocol itself (signature, event, id) is
//! `crate::trtc`.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::Request;

use super::refusal::Refusal;
use super::request::{self, Checked, Gate};
use crate::body::Body;
use crate::bus::Origin;
use crate::replay;
use crate::trtc::{self as protocol, HeaderSignError, NotTrtc, TrtcEvent};

/// Its name in `hookbus tail`, and what a refusal is counted under before its command is known.
pub const NAME: &str = "trtc";

/// The answer to an accepted callback.
pub const OK: &[u8] = protocol::OK;

/// The checks of a TRTC callback, in the README's order, up to the event it names.
pub async fn check<'a, B>(gate: &Gate<'a>, request: Request<B>) -> Result<Checked<'a>, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = gate.limits;
    request::posted(&request)?;
    let headers = request.headers();
    // As with a repeated query parameter: readers that take the first or the last value would
    // see different requests.
    if [protocol::SDK_APP_ID, protocol::SIGN].iter().any(|name| headers.get_all(*name).iter().count() > 1) {
        return Err(Refusal::bad("param_repeated", "the SdkAppId or Sign header appears more than once"));
    }
    let (sdk_app_id, sign) =
        (request::header(headers, protocol::SDK_APP_ID).unwrap_or_default(), request::header(headers, protocol::SIGN));
    let (traceparent, tracestate) = request::trace_headers(headers);
    let Some(app) = gate.apps.get(&sdk_app_id) else { return Err(Refusal::Forbidden) };
    let received = SystemTime::now();
    let payload = request::read_body(limits, request).await?;
    let unauthorized = |refused: HeaderSignError| Refusal::unauthorized(refused.label(), refused.reason());
    let signed = if app.trtc_keys.is_empty() {
        if app.signs_anything() {
            return Err(unauthorized(HeaderSignError::NoKey));
        }
        false
    } else {
        let keys = app.trtc_keys.iter().map(|key| key.secret.as_str());
        let key = protocol::verify(keys, sign.as_deref(), &payload).map_err(unauthorized)?;
        gate.metrics.signed(&sdk_app_id, &app.trtc_keys[key].name);
        true
    };
    let body = Body::parse(&payload, limits.max_json_depth)?;
    let event =
        TrtcEvent::parse(&sdk_app_id, &payload).map_err(|NotTrtc| Refusal::bad(NotTrtc::LABEL, NotTrtc::REASON))?;
    // Signed events only, as for Live and Chat: a retry is told from a new event by the cache
    // within Tencent's retry window, and a copy sent later is refused as stale.
    let replay = if signed {
        let until = event.retried_until(SystemTime::now(), limits.max_clock_skew).map_err(unauthorized)?;
        Some((replay::Key::from(event.fingerprint()), until))
    } else {
        None
    };
    let origin = Origin { sdk_app_id: sdk_app_id.clone(), traceparent, tracestate, ..Origin::default() };
    Ok(Checked {
        app,
        sdk_app_id,
        command: event.command(),
        body_room: body.room_key(),
        payload,
        replay,
        origin,
        received,
        id: Some(event.id()),
        time: None,
    })
}
