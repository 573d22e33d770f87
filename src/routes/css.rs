//! The Cloud Streaming (CSS) surface: a callback with neither a Live or Chat query nor a TRTC
//! header, whose event, app and signature are in its body, checked in the order of the README's
//! "Cloud Streaming (CSS) callbacks". The protocol itself (event types, signature, id) is
//! `crate::css`.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::Request;

use super::refusal::Refusal;
use super::request::{self, Checked, Gate};
use crate::body::Body;
use crate::bus::Origin;
use crate::css::{self as protocol, BodySignError, CssEvent, NotCss};
use crate::replay;

/// Its name in `hookbus tail`, and what a refusal is counted under before its event type is known.
pub const NAME: &str = "css";

/// The answer to an accepted callback.
pub const OK: &[u8] = protocol::OK;

/// The checks of a CSS callback, in the README's order, up to the event it names.
pub async fn check<'a, B>(gate: &Gate<'a>, request: Request<B>) -> Result<Checked<'a>, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = gate.limits;
    request::posted(&request)?;
    let (traceparent, tracestate) = request::trace_headers(request.headers());
    let received = SystemTime::now();
    let payload = request::read_body(limits, request).await?;
    // The limits every body meets; the fields are read by the protocol's own parser.
    Body::parse(&payload, limits.max_json_depth)?;
    let event = CssEvent::parse(&payload).map_err(|NotCss| Refusal::bad(NotCss::LABEL, NotCss::REASON))?;
    // The app is the body's: a body without one (the snapshot page lists none) has the shared
    // settings, which `Apps::any` holds whether or not apps are listed.
    let app = match &event.appid {
        Some(appid) => gate.apps.get(appid).ok_or(Refusal::Forbidden)?,
        None => &gate.apps.any,
    };
    let unauthorized = |refused: BodySignError| Refusal::unauthorized(refused.label(), refused.reason());
    let replay = if app.css_keys.is_empty() {
        // A body that names no app is taken unsigned only by a gateway that signs nothing.
        if app.signs_anything() || (event.appid.is_none() && gate.apps.signs_anything()) {
            return Err(unauthorized(BodySignError::NoKey));
        }
        None
    } else {
        let key = event.verify(app.css_keys.iter().map(|key| key.secret.as_str())).map_err(unauthorized)?;
        gate.metrics.signed(event.appid.as_deref().unwrap_or_default(), &app.css_keys[key].name);
        let until = event.expires(SystemTime::now(), limits.max_clock_skew).map_err(unauthorized)?;
        Some((replay::Key::from(event.fingerprint()), until))
    };
    let sdk_app_id = event.appid.clone().unwrap_or_default();
    let origin = Origin { sdk_app_id: sdk_app_id.clone(), traceparent, tracestate, ..Origin::default() };
    Ok(Checked {
        app,
        sdk_app_id,
        command: event.command(),
        body_room: event.stream.clone(),
        payload,
        replay,
        origin,
        received,
        id: Some(event.id()),
        time: event.time,
    })
}
