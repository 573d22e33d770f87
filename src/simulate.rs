//! A stand-in for Tencent: posts the documented sample callbacks (`crate::samples`), signed
//! when a token or TRTC key is given, and returns each answer.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::samples::{self, sample};
use crate::{tencent, trtc};

/// One callback's answer as the gateway gave it.
#[derive(Debug)]
pub struct Response {
    pub command: String,
    pub status: u16,
    pub body: String,
}

/// Posts the samples of `commands` (all when empty, surface by surface: the TRTC ones after the
/// Live and Chat ones) to `url` over one
/// connection, in order: Live and Chat ones signed with `token`, TRTC ones with `trtc_key`.
pub async fn simulate(
    url: &str,
    sdk_app_id: &str,
    token: Option<&str>,
    trtc_key: Option<&str>,
    commands: &[String],
) -> anyhow::Result<Vec<Response>> {
    let chosen: Vec<(&str, &[u8])> = if commands.is_empty() {
        samples::all().collect()
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
            if let Some(key) = trtc_key {
                request = request.header(trtc::SIGN, trtc::sign(key, &body));
            }
            (request, Bytes::from(body))
        } else {
            let target = format!("{}?{}", uri.path(), query(sdk_app_id, command, token));
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

#[cfg(test)]
mod tests {
    /// Every documented TRTC type has its sample, and each sample is the event it is named after.
    #[test]
    fn each_documented_trtc_type_has_its_sample() {
        let named: Vec<String> = crate::trtc::DOCUMENTED.iter().map(|documented| documented.command()).collect();
        let listed: Vec<&str> = super::samples::TRTC.iter().map(|(command, _)| *command).collect();
        assert_eq!(named, listed);
        for (command, body) in super::samples::TRTC {
            let event = crate::trtc::Event::parse("1400000000", body).expect("a TRTC event");
            assert_eq!(event.command(), *command);
            let stamped = crate::trtc::Event::parse("1400000000", &super::trtc_now(body)).expect("still one");
            assert_eq!(stamped.id(), event.id(), "sent again: the same event");
        }
    }
}
