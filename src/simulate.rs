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

/// Every documented sample body, by command.
pub const SAMPLES: &[(&str, &[u8])] = &[
    ("C2C.CallbackBeforeSendMsg", include_bytes!("../tests/fixtures/samples/C2C.CallbackBeforeSendMsg.json")),
    ("Follow.CallbackAfterFollowAdd", include_bytes!("../tests/fixtures/samples/Follow.CallbackAfterFollowAdd.json")),
    (
        "Follow.CallbackAfterFollowDelete",
        include_bytes!("../tests/fixtures/samples/Follow.CallbackAfterFollowDelete.json"),
    ),
    ("Group.CallbackAfterSendMsg", include_bytes!("../tests/fixtures/samples/Group.CallbackAfterSendMsg.json")),
    (
        "Group.CallbackBeforeApplyJoinGroup",
        include_bytes!("../tests/fixtures/samples/Group.CallbackBeforeApplyJoinGroup.json"),
    ),
    (
        "Group.CallbackBeforeCreateGroup",
        include_bytes!("../tests/fixtures/samples/Group.CallbackBeforeCreateGroup.json"),
    ),
    (
        "Group.CallbackBeforeInviteJoinGroup",
        include_bytes!("../tests/fixtures/samples/Group.CallbackBeforeInviteJoinGroup.json"),
    ),
    ("Group.CallbackBeforeSendMsg", include_bytes!("../tests/fixtures/samples/Group.CallbackBeforeSendMsg.json")),
    ("Live.CallbackAfterChangeOwner", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterChangeOwner.json")),
    (
        "Live.CallbackAfterCloudRecordingChanged",
        include_bytes!("../tests/fixtures/samples/Live.CallbackAfterCloudRecordingChanged.json"),
    ),
    ("Live.CallbackAfterCreateBattle", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterCreateBattle.json")),
    ("Live.CallbackAfterCreateRoom", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterCreateRoom.json")),
    (
        "Live.CallbackAfterCreateRoomReachingThreshold",
        include_bytes!("../tests/fixtures/samples/Live.CallbackAfterCreateRoomReachingThreshold.json"),
    ),
    ("Live.CallbackAfterDelMetadata", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterDelMetadata.json")),
    ("Live.CallbackAfterDestroyRoom", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterDestroyRoom.json")),
    ("Live.CallbackAfterEndBattle", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterEndBattle.json")),
    (
        "Live.CallbackAfterMemberStateChanged",
        include_bytes!("../tests/fixtures/samples/Live.CallbackAfterMemberStateChanged.json"),
    ),
    ("Live.CallbackAfterModifyAdmin", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterModifyAdmin.json")),
    ("Live.CallbackAfterSetMetadata", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterSetMetadata.json")),
    ("Live.CallbackAfterStartBattle", include_bytes!("../tests/fixtures/samples/Live.CallbackAfterStartBattle.json")),
    (
        "Live.CallbackAfterUpdateRoomInfo",
        include_bytes!("../tests/fixtures/samples/Live.CallbackAfterUpdateRoomInfo.json"),
    ),
    ("Live.CallbackBeforeSendGift", include_bytes!("../tests/fixtures/samples/Live.CallbackBeforeSendGift.json")),
    (
        "Mic.CallbackAfterSeatInfoChanged",
        include_bytes!("../tests/fixtures/samples/Mic.CallbackAfterSeatInfoChanged.json"),
    ),
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
