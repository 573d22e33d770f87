//! A stand-in for Tencent: posts the documented sample callbacks (embedded from
//! `tests/fixtures/samples/`), signed when a token is given, and returns each answer.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tencent;

/// `(command, body)` for each named sample file, embedded at compile time.
macro_rules! samples {
    ($($command:literal),* $(,)?) => {
        &[$(($command, include_bytes!(concat!("../tests/fixtures/samples/", $command, ".json")))),*]
    };
}

/// Every documented sample body, by command.
pub const SAMPLES: &[(&str, &[u8])] = samples![
    "C2C.CallbackBeforeSendMsg",
    "Follow.CallbackAfterFollowAdd",
    "Follow.CallbackAfterFollowDelete",
    "Group.CallbackAfterSendMsg",
    "Group.CallbackBeforeApplyJoinGroup",
    "Group.CallbackBeforeCreateGroup",
    "Group.CallbackBeforeInviteJoinGroup",
    "Group.CallbackBeforeSendMsg",
    "Live.CallbackAfterChangeOwner",
    "Live.CallbackAfterCloudRecordingChanged",
    "Live.CallbackAfterCreateBattle",
    "Live.CallbackAfterCreateRoom",
    "Live.CallbackAfterCreateRoomReachingThreshold",
    "Live.CallbackAfterDelMetadata",
    "Live.CallbackAfterDestroyRoom",
    "Live.CallbackAfterEndBattle",
    "Live.CallbackAfterMemberStateChanged",
    "Live.CallbackAfterModifyAdmin",
    "Live.CallbackAfterSetMetadata",
    "Live.CallbackAfterStartBattle",
    "Live.CallbackAfterUpdateRoomInfo",
    "Live.CallbackBeforeSendGift",
    "Mic.CallbackAfterSeatInfoChanged",
];

/// One callback's answer as the gateway gave it.
#[derive(Debug)]
pub struct Response {
    pub command: String,
    pub status: u16,
    pub body: String,
}

/// The sample body of `command`, if one is documented.
pub fn sample(command: &str) -> Option<&'static [u8]> {
    SAMPLES.iter().find(|(name, _)| *name == command).map(|(_, body)| *body)
}

/// Posts the samples of `commands` (all when empty) to `url` over one connection, in order.
pub async fn simulate(
    url: &str,
    sdk_app_id: &str,
    token: Option<&str>,
    commands: &[String],
) -> anyhow::Result<Vec<Response>> {
    let chosen: Vec<(&str, &[u8])> = if commands.is_empty() {
        SAMPLES.to_vec()
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
        let target = format!("{}?{}", uri.path(), query(sdk_app_id, command, token));
        let request = Request::post(target)
            .header("host", format!("{host}:{port}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))?;
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

#[cfg(test)]
mod tests {
    /// The list embeds every file of the samples directory, and nothing else.
    #[test]
    fn the_samples_are_the_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/samples");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("the samples directory")
            .map(|entry| entry.expect("an entry").file_name().to_string_lossy().trim_end_matches(".json").to_owned())
            .collect();
        files.sort();
        let mut listed: Vec<&str> = super::SAMPLES.iter().map(|(command, _)| *command).collect();
        listed.sort();
        assert_eq!(files, listed);
    }
}
