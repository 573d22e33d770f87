//! The Live and Chat surface: a callback that names its app, command and signature in the
//! query (`SdkAppid`, `CallbackCommand`, `Sign`, `RequestTime`), checked in the order of the
//! README's "What Tencent sees". The protocol itself (query, signature, body) is `crate::tencent`.

use std::borrow::Cow;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::Request;

use super::refusal::Refusal;
use super::request::{self, Checked, Gate};
use crate::body::Body;
use crate::bus::{self, Origin};
use crate::replay;
use crate::tencent::{self, Query};

/// Its name in `hookbus tail`.
pub const NAME: &str = "live";

/// The answer to an accepted informational callback.
pub const OK: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;

/// First segments of destinations that other events own: decision requests, audit events,
/// dead-letter notices, and the TRTC and CSS surfaces' events. A Live or Chat command naming
/// one could pass for them.
const RESERVED: [&str; 5] = [bus::REQUESTS, "audit", "deadletter", "trtc", "css"];

/// The checks of a callback, in the README's order, up to a body that names its command.
pub async fn check<'a, B>(gate: &Gate<'a>, request: Request<B>, query: Query<'_>) -> Result<Checked<'a>, Refusal>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limits = gate.limits;
    request::posted(&request)?;
    if query.repeated.is_some() {
        return Err(Refusal::bad("param_repeated", "a protocol parameter appears more than once in the query"));
    }
    let sdk_app_id = query.sdk_app_id.as_deref().unwrap_or_default().to_owned();
    let Some(app) = gate.apps.get(&sdk_app_id) else { return Err(Refusal::Forbidden) };
    // Signed requests can be told apart: the time until which a replay would be accepted.
    let mut replay_until = None;
    if !app.tokens.is_empty() {
        let (sign, time) = (query.sign.as_deref(), query.request_time.as_deref());
        let secrets = app.tokens.iter().map(|token| token.secret.as_str());
        let signed = tencent::verify(secrets, sign, time, limits.max_clock_skew, SystemTime::now())
            .map_err(|refused| Refusal::unauthorized(refused.label(), refused.reason()))?;
        gate.metrics.signed(&sdk_app_id, &app.tokens[signed.token].name);
        replay_until = Some((signed.request_time, signed.request_time + limits.max_clock_skew.as_secs()));
    } else if app.signs_anything() {
        return Err(Refusal::unauthorized(
            "token_missing",
            "no token is set for this app's Live and Chat callbacks, and its other callbacks are signed",
        ));
    }
    let (traceparent, tracestate) = request::trace_headers(request.headers());
    let received = SystemTime::now();
    let payload = request::read_body(limits, request).await?;
    let body = Body::parse(&payload, limits.max_json_depth)?;
    let command = match (query.command, body.callback_command.as_deref()) {
        (Some(query), Some(body)) if query != body => {
            return Err(Refusal::bad("command_mismatch", "CallbackCommand differs between query and body"));
        }
        (Some(query), _) => query.into_owned(),
        (None, Some(body)) => body.to_owned(),
        (None, None) => return Err(Refusal::bad("command_missing", "CallbackCommand is missing")),
    };
    if command.len() > 128 {
        return Err(Refusal::bad(
            "command_too_long",
            "CallbackCommand is longer than a destination can be (128 bytes)",
        ));
    }
    if !bus::valid_name(&command) {
        return Err(Refusal::bad("command_invalid", "CallbackCommand has characters a destination cannot hold"));
    }
    if command.split('.').next().is_some_and(|segment| RESERVED.contains(&segment)) {
        return Err(Refusal::bad(
            "command_reserved",
            "CallbackCommand starts with a segment of the gateway's own destinations (decision requests, audit, dead letters, TRTC, CSS)",
        ));
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
        client_ip: query.client_ip.map(Cow::into_owned).unwrap_or_default(),
        opt_platform: query.opt_platform.map(Cow::into_owned).unwrap_or_default(),
        traceparent,
        tracestate,
    };
    let body_room = body.room_key();
    Ok(Checked { app, sdk_app_id, command, body_room, payload, replay, origin, received, id, time: None })
}
