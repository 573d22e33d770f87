//! The checks of a TRTC room and media callback on the callback path, in the order of the
//! README's "Live, Chat and TRTC on one gateway", up to a [`Checked`] event that `accept`
//! enqueues as it does a Live or Chat one. The protocol itself (signature, event, id) is
//! `crate::trtc`.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName};
use hyper::{Method, Request};

use super::{read_body, Checked, Rejection, Shared};
use crate::bus::Origin;
use crate::replay;
use crate::tencent::{Body, Query};
use crate::trtc::{self as protocol, Event, NotEvent, SignError};

pub(super) const OK: &[u8] = protocol::OK;

/// Whether this request is a TRTC callback (see [`protocol::addressed`]).
pub(super) fn addressed(query: &Query, headers: &HeaderMap) -> bool {
    // Asked of every callback: the name made once, not parsed at each look-up.
    const SDK_APP_ID: HeaderName = HeaderName::from_static(protocol::SDK_APP_ID);
    protocol::addressed(query, headers.contains_key(SDK_APP_ID))
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
    let (sdk_app_id, sign) =
        (super::header(headers, protocol::SDK_APP_ID).unwrap_or_default(), super::header(headers, protocol::SIGN));
    let (traceparent, tracestate) = super::trace_headers(headers);
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
        id: Some(event.id()),
        time: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use http_body_util::Full;

    use super::*;
    use crate::apps::Token;

    /// A request's headers, as names and values.
    type Headers<'a> = &'a [(&'a str, &'a str)];

    /// Each request fails every check from one row of the README's TRTC table on: the first
    /// failing check is the one answered, so the checks run in the documented order.
    #[tokio::test]
    async fn checks_run_in_the_documented_order() {
        let shared = crate::routes::tests::shared(1);
        let mut apps = (*shared.apps.get()).clone();
        let key = Token { name: "k".into(), secret: "key".into() };
        apps.listed.get_mut("1400").expect("the test app").trtc_keys.push(key);
        shared.apps.replace(apps);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
        let event = |ts: u128| format!(r#"{{"EventGroupId":1,"EventType":103,"CallbackTs":{ts},"EventInfo":{{}}}}"#);
        let (fresh, stale) = (event(now), event(now - 200_000));
        let big = " ".repeat(70_000);
        let bad = protocol::sign("other", b"");
        let rows: [(Method, Headers, &str, u16); 8] = [
            (Method::GET, &[("SdkAppId", "999"), ("Sign", &bad), ("Sign", &bad)], &big, 405),
            (Method::POST, &[("SdkAppId", "999"), ("Sign", &bad), ("Sign", &bad)], &big, 400),
            (Method::POST, &[("SdkAppId", "999"), ("Sign", &bad)], &big, 403),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &bad)], &big, 413),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &bad)], "{}", 401),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &protocol::sign("key", b"{}"))], "{}", 400),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &protocol::sign("key", stale.as_bytes()))], &stale, 401),
            (Method::POST, &[("SdkAppId", "1400"), ("Sign", &protocol::sign("key", fresh.as_bytes()))], &fresh, 200),
        ];
        for (method, headers, body, expected) in rows {
            let mut request = Request::builder().method(method.clone()).uri("/");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
            let status = crate::routes::handle(&shared, request).await.status().as_u16();
            assert_eq!(status, expected, "{method} {headers:?}");
        }
        // The one accepted event fills the outbox (capacity 1): the last check answers 503.
        let other = event(now + 1).replace("{}", r#"{"UserId":"u2"}"#);
        let sign = protocol::sign("key", other.as_bytes());
        let request = Request::post("/").header("SdkAppId", "1400").header("Sign", sign);
        let request = request.body(Full::new(Bytes::from(other))).unwrap();
        assert_eq!(crate::routes::handle(&shared, request).await.status().as_u16(), 503);
    }
}
