//! A stand-in for Tencent: posts the documented sample callbacks (`crate::samples`), signed
//! when a token, TRTC key or CSS key is given, and returns each answer.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::samples::{self, sample};
use crate::{css, tencent, trtc};

/// One callback's answer as the gateway gave it.
#[derive(Debug)]
pub struct Response {
    pub command: String,
    pub status: u16,
    pub body: String,
}

/// The keys the samples are signed with; a surface without one is sent unsigned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keys<'a> {
    /// Live and Chat: `Sign` in the query.
    pub token: Option<&'a str>,
    /// TRTC: the `Sign` header.
    pub trtc_key: Option<&'a str>,
    /// CSS: `t` and `sign` in the body.
    pub css_key: Option<&'a str>,
}

/// The CSS relay sample, which carries no `t` and `sign`.
const RELAY: &str = "css.relay.task";

/// Posts the samples of `commands` (all when empty, but the relay sample when a CSS key is given, surface by surface in the order of their
/// directories: CSS, Live and Chat, TRTC) to `url` over one connection, in order, each surface's
/// signed with its key of `keys`.
pub async fn simulate(
    url: &str,
    sdk_app_id: &str,
    keys: Keys<'_>,
    commands: &[String],
) -> anyhow::Result<Vec<Response>> {
    let chosen: Vec<(&str, &[u8])> = if commands.is_empty() {
        // Tencent never signs a relay callback: a gateway with a CSS key refuses it, so it is
        // sent only when named.
        samples::all().filter(|(command, _)| keys.css_key.is_none() || *command != RELAY).collect()
    } else {
        commands
            .iter()
            .map(|command| {
                let body = sample(command).with_context(|| format!("no documented sample for {command}"))?;
                Ok((command.as_str(), body))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let uri: Uri = url.parse().with_context(|| format!("bad --url {url}"))?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "--url must be http://host:port/path");
    let host = uri.host().context("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port)).await.with_context(|| format!("cannot connect to {host}:{port}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);

    let mut answers = Vec::with_capacity(chosen.len());
    for (command, body) in chosen {
        let (request, body) = if command.starts_with("trtc.") {
            // TRTC names the app and signs the body in headers, and has no query.
            let body = trtc_now(body);
            let mut request = Request::post(uri.path()).header(trtc::SDK_APP_ID, sdk_app_id);
            if let Some(key) = keys.trtc_key {
                request = request.header(trtc::SIGN, trtc::sign(key, &body));
            }
            (request, Bytes::from(body))
        } else if command.starts_with("css.") {
            // CSS names its app (the account's APPID) and signs in the body, and has no query.
            (Request::post(uri.path()), Bytes::from(css_now(body, keys.css_key)))
        } else {
            let target = format!("{}?{}", uri.path(), query(sdk_app_id, command, keys.token));
            (Request::post(target), Bytes::from_static(body))
        };
        let request = request
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        answers.push(Response {
            command: command.to_owned(),
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(answers)
}

/// The query string Tencent would send for `command`, signed now when `token` is given.
pub fn query(sdk_app_id: &str, command: &str, token: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("SdkAppid", sdk_app_id)
        .append_pair("CallbackCommand", command)
        .append_pair("contenttype", "json")
        .append_pair("ClientIP", "127.0.0.1")
        .append_pair("OptPlatform", "RESTAPI");
    if let Some(token) = token {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs().to_string();
        query.append_pair("Sign", &tencent::sign(token, &now)).append_pair("RequestTime", &now);
    }
    query.finish()
}

/// A TRTC sample as Tencent would send it now: the same bytes, with `CallbackTs` (the time of
/// sending) set to now.
pub fn trtc_now(sample: &[u8]) -> Vec<u8> {
    let text = std::str::from_utf8(sample).expect("the samples are UTF-8");
    let field = "\"CallbackTs\":";
    let start = text.find(field).expect("a TRTC sample has CallbackTs") + field.len();
    let digits = text[start..].find(|c: char| !c.is_ascii_digit()).map_or(text.len(), |end| start + end);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    [&text[..start], &now.to_string(), &text[digits..]].concat().into_bytes()
}

/// A CSS sample as Tencent would send it now: the same bytes, with `t` (the signature's expiry)
/// 10 minutes from now and, with `key`, `sign` = md5(key + t). A sample without `t` (a relay
/// callback, which Tencent does not sign) is sent as it is.
pub fn css_now(sample: &[u8], key: Option<&str>) -> Vec<u8> {
    let text = std::str::from_utf8(sample).expect("the samples are UTF-8");
    let Some(start) = text.find("\"t\":").map(|at| at + "\"t\":".len()) else { return sample.to_vec() };
    let end = text[start..].find(|c: char| !c.is_ascii_digit()).map_or(text.len(), |end| start + end);
    let t = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 600).to_string();
    let mut body = [&text[..start], &t, &text[end..]].concat();
    if let Some(key) = key {
        let field = "\"sign\":\"";
        let start = body.find(field).expect("a signed CSS sample has sign") + field.len();
        let end = start + body[start..].find('"').expect("sign is a string");
        body.replace_range(start..end, &css::sign(key, &t));
    }
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    /// Every documented TRTC type has its sample, and each sample is the event it is named after.
    #[test]
    fn each_documented_trtc_type_has_its_sample() {
        let named: Vec<String> = crate::trtc::DOCUMENTED.iter().map(|documented| documented.command()).collect();
        let listed: Vec<&str> = super::samples::TRTC.iter().map(|(command, _)| *command).collect();
        assert_eq!(named, listed);
        for (command, body) in super::samples::TRTC {
            let event = crate::trtc::TrtcEvent::parse("1400000000", body).expect("a TRTC event");
            assert_eq!(event.command(), *command);
            let stamped = crate::trtc::TrtcEvent::parse("1400000000", &super::trtc_now(body)).expect("still one");
            assert_eq!(stamped.id(), event.id(), "sent again: the same event");
        }
    }

    /// Every documented CSS type has its sample, each sample is the event it is named after,
    /// and sent now it is signed as Tencent signs it and is still the same event.
    #[test]
    fn each_documented_css_type_has_its_sample_signed_now() {
        let mut named: Vec<String> = crate::css::DOCUMENTED.iter().map(|documented| documented.command()).collect();
        named.sort();
        let listed: Vec<&str> = super::samples::CSS.iter().map(|(command, _)| *command).collect();
        assert_eq!(named, listed);
        for (command, body) in super::samples::CSS {
            let event = crate::css::CssEvent::parse(body).expect("a CSS event");
            assert_eq!(event.command(), *command);
            let now = super::css_now(body, Some("k"));
            let sent = crate::css::CssEvent::parse(&now).expect("still one");
            assert_eq!(sent.id(), event.id(), "{command}: sent now, the same event");
            if *command == super::RELAY {
                assert_eq!(now, body.to_vec(), "Tencent does not sign relay callbacks");
                continue;
            }
            assert_eq!(sent.verify(["k"]), Ok(0), "{command}");
            assert!(sent.expires(SystemTime::now(), std::time::Duration::ZERO).is_ok(), "{command}");
            assert_eq!(super::css_now(body, None).len(), now.len(), "{command}: unsigned, the sample's sign");
        }
    }
}
