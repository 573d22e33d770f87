//! The Cloud Streaming (CSS) surface: a callback with neither a Live or Chat query nor a TRTC
//! header, whose event, app and signature are in its body, checked in the order of the README's
//! "Cloud Streaming (CSS) callbacks". The protocol itself (event types, signature, id) is
//! `crate::css`.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName};
use hyper::{Method, Request};

use super::{read_body, Checked, Rejection, Shared};
use crate::bus::Origin;
use crate::css::{self as protocol, BodySignError, Event, NotEvent};
use crate::replay;
use crate::tencent::{Body, Query};

/// Its name in `hookbus tail`, and what a refusal is counted under before its event type is known.
pub(super) const NAME: &str = "css";

pub(super) const OK: &[u8] = protocol::OK;

/// Whether this request is a CSS callback (see [`protocol::addressed`]).
pub(super) fn addressed(query: &Query, headers: &HeaderMap) -> bool {
    const SDK_APP_ID: HeaderName = HeaderName::from_static(crate::trtc::SDK_APP_ID);
    protocol::addressed(query, headers.contains_key(SDK_APP_ID))
}

/// The checks of a CSS callback, in the README's order, up to the event it names.
pub(super) async fn check<B>(shared: &Shared, request: Request<B>) -> Result<Checked, Rejection>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = &shared.limits;
    if request.method() != Method::POST {
        return Err(Rejection::MethodNotAllowed("POST"));
    }
    let (traceparent, tracestate) = super::trace_headers(request.headers());
    let received = SystemTime::now();
    let payload = read_body(limits, request).await?;
    // The limits every body meets; the fields are read by the protocol's own parser.
    Body::parse(&payload, limits.max_json_depth)
        .map_err(|invalid| Rejection::bad(invalid.label(), invalid.reason()))?;
    let event = Event::parse(&payload).map_err(|NotEvent| Rejection::bad(NotEvent::LABEL, NotEvent::REASON))?;
    // The app is the body's: a body without one (the snapshot page lists none) has the shared
    // settings, which `Apps::any` holds whether or not apps are listed.
    let settings = shared.apps.get();
    let app = match &event.appid {
        Some(appid) => settings.get(appid).ok_or(Rejection::Forbidden)?,
        None => &settings.any,
    };
    let unauthorized = Rejection::CssUnauthorized;
    let replay = if app.css_keys.is_empty() {
        if !app.tokens.is_empty() || !app.trtc_keys.is_empty() {
            return Err(unauthorized(BodySignError::NoKey));
        }
        None
    } else {
        let key = event.verify(app.css_keys.iter().map(|key| key.secret.as_str())).map_err(unauthorized)?;
        let appid = event.appid.as_deref().unwrap_or_default();
        shared.metrics.signed(appid, &app.css_keys[key].name);
        let until = event.expires(SystemTime::now(), limits.max_clock_skew).map_err(unauthorized)?;
        Some((replay::Key::from(event.fingerprint()), until))
    };
    let sdk_app_id = event.appid.clone().unwrap_or_default();
    let origin = Origin { sdk_app_id: sdk_app_id.clone(), traceparent, tracestate, ..Origin::default() };
    Ok(Checked {
        settings: settings.clone(),
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http_body_util::Full;

    use super::*;
    use crate::apps::Token;

    /// Each request fails every check from one row of the README's CSS table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn checks_run_in_the_documented_order() {
        let shared = crate::routes::tests::shared(1);
        let mut apps = (*shared.apps.get()).clone();
        let key = Token { name: "k".into(), secret: "key".into() };
        apps.listed.get_mut("1400").expect("the test app").css_keys.push(key);
        shared.apps.replace(apps);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let event = |appid: &str, t: Option<u64>, stream: &str| {
            let signature =
                t.map_or(String::new(), |t| format!(r#","t":{t},"sign":"{}""#, protocol::sign("key", &t.to_string())));
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
            let request =
                Request::builder().method(method.clone()).uri("/").body(Full::new(Bytes::from(body))).unwrap();
            let status = crate::routes::handle(&shared, request).await.status().as_u16();
            assert_eq!(status, expected, "{method} row answered {status}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503.
        let other = event("1400", Some(now + 600), "s2");
        let request = Request::post("/").body(Full::new(Bytes::from(other))).unwrap();
        assert_eq!(crate::routes::handle(&shared, request).await.status().as_u16(), 503);
    }
}
