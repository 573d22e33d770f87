//! TRTC room and media callbacks on the callback path beside Live and Chat ones: signed with
//! Python's `hmac` (a signer that is not the gateway's own code), they reach every bus with their
//! key and attributes; a wrong, missing or other surface's signature is refused; Tencent's
//! retries of one event are one event; keys rotate on SIGHUP without refusing a valid callback.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hookbus::trtc::TrtcEvent;
use hyper::Method;
use serde_json::Value;

use crate::brokers::Backend;
use crate::support::{
    eventually, logged, metrics, request_with, signal, signed_as, spawn_binary_with_logs, tempdir, unique, Captured,
    Running, APP, TOKEN,
};

const KEY: &str = "trtcKey0123456789";

/// Signs bodies with Python's `hmac`: one process, a line per body (the key and the body in
/// base64), the signature back on a line.
struct Signer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const SIGNER: &str = "import base64, hashlib, hmac, sys
for line in sys.stdin:
    key, body = line.split()
    print(base64.b64encode(hmac.new(key.encode(), base64.b64decode(body), hashlib.sha256).digest()).decode(), flush=True)
";

impl Signer {
    fn start() -> Signer {
        let mut child = Command::new("python3")
            .args(["-c", SIGNER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let (stdin, stdout) = (child.stdin.take().unwrap(), BufReader::new(child.stdout.take().unwrap()));
        Signer { child, stdin, stdout }
    }

    fn sign(&mut self, key: &str, body: &[u8]) -> String {
        let encoded = base64::engine::general_purpose::STANDARD.encode(body);
        writeln!(self.stdin, "{key} {encoded}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the signer answers");
        line.trim().to_owned()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sample of `command` as Tencent sends it now, for user `user` (a distinct event per user).
fn event(command: &str, user: &str) -> Vec<u8> {
    let sample = hookbus::samples::sample(command).expect("a documented TRTC sample");
    let mut body: Value = serde_json::from_slice(&hookbus::simulate::trtc_now(sample)).unwrap();
    body["EventInfo"]["UserId"] = user.into();
    serde_json::to_vec(&body).unwrap()
}

/// Posts a TRTC callback for `app` with the `Sign` header `sign`, as Tencent does: no query.
async fn post(addr: std::net::SocketAddr, app: &str, sign: Option<&str>, body: &[u8]) -> (u16, Bytes) {
    let mut headers = vec![("SdkAppId", app), ("Content-Type", "application/json")];
    headers.extend(sign.map(|sign| ("Sign", sign)));
    request_with(addr, Method::POST, "/", &headers, body).await
}

/// A gateway on the stdout bus, writing its events where the test reads them.
async fn captured(flags: &[&str]) -> (Running, Captured) {
    Running::stdout(flags).await
}

async fn each_group_reaches(backend: Backend) {
    let prefix = unique("trtc");
    // The gateway first: it declares the RabbitMQ exchange the watcher binds to.
    let gateway = backend.gateway(&prefix, None, &["--trtc-key", KEY]).await;
    let mut watcher = backend.watch(&prefix).await;
    let mut signer = Signer::start();
    let mut sent = std::collections::HashMap::new();
    for (command, room) in [("trtc.1.103", "880021"), ("trtc.2.201", "live_880021")] {
        let body = event(command, "u1");
        let (status, answer) = post(gateway.addr, APP, Some(&signer.sign(KEY, &body)), &body).await;
        assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]), "{command}");
        sent.insert(format!("{prefix}.{command}"), (command, room, body));
    }
    for _ in 0..sent.len() {
        let got = watcher.next(Duration::from_secs(20)).await;
        let (command, room, body) = sent.remove(&got.destination).expect("a destination sent to, once");
        assert_eq!(&got.payload[..], &body[..], "the body as received");
        let attribute = |name: &str| got.attributes.get(name).map(String::as_str);
        assert_eq!(attribute("type"), Some(command));
        assert_eq!(attribute("partitionkey"), Some(room), "the room is the key");
        assert_eq!(attribute("source"), Some(format!("/tencent/{APP}").as_str()));
        assert_eq!(attribute("sdkappid"), Some(APP));
        assert_eq!(attribute("specversion"), Some("1.0"));
        assert_eq!(attribute("datacontenttype"), Some("application/json"));
        assert_eq!(attribute("id"), Some(TrtcEvent::parse(APP, &body).unwrap().id().as_str()));
        assert!(attribute("time").is_some() && attribute("traceparent").is_some());
    }
    gateway.stop().await;
}

#[tokio::test]
async fn each_documented_group_reaches_nats() {
    each_group_reaches(Backend::Nats).await
}

#[tokio::test]
async fn each_documented_group_reaches_rabbitmq() {
    each_group_reaches(Backend::Amqp).await
}

#[tokio::test]
async fn each_documented_group_reaches_kafka() {
    each_group_reaches(Backend::Kafka).await
}

#[tokio::test]
async fn a_wrong_or_missing_signature_is_refused_and_neither_surface_takes_the_others() {
    let (gateway, captured) = captured(&["--sdk-app-id", APP, "--token", TOKEN, "--trtc-key", KEY]).await;
    let mut signer = Signer::start();
    let body = event("trtc.1.104", "u1");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let live_sign = hookbus::tencent::sign(TOKEN, &now.to_string());
    let mut tampered = body.clone();
    tampered.retain(|&b| b != b'1');
    for (what, sign, body, status) in [
        ("no Sign", None, &body, 401),
        ("empty Sign", Some(String::new()), &body, 401),
        ("another key", Some(signer.sign("otherKey", &body)), &body, 401),
        ("the Live token as the key", Some(signer.sign(TOKEN, &body)), &body, 401),
        ("a Live signature", Some(live_sign), &body, 401),
        ("another body", Some(signer.sign(KEY, &body)), &tampered, 401),
    ] {
        let (got, _) = post(gateway.addr, APP, sign.as_deref(), body).await;
        assert_eq!(got, status, "{what}");
    }
    // A Live callback carrying a TRTC signature instead of its own is a Live callback unsigned.
    let live = format!("/?SdkAppid={APP}&CallbackCommand=Live.CallbackAfterCreateRoom&contenttype=json");
    let room = br#"{"RoomId":"r1"}"#;
    let headers = [("Sign", signer.sign(KEY, room)), ("SdkAppId", APP.to_owned())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    assert_eq!(request_with(gateway.addr, Method::POST, &live, &headers, room).await.0, 401);
    // A TRTC body with a valid Live signature in the query is a Live callback without a command.
    let target = signed_as("x", APP, TOKEN, now).replace("&CallbackCommand=x", "");
    assert_eq!(request_with(gateway.addr, Method::POST, &target, &[], &body).await.0, 400);
    assert!(captured.lines().is_empty(), "nothing refused was published");
    let (status, answer) = post(gateway.addr, APP, Some(&signer.sign(KEY, &body)), &body).await;
    assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]));
    assert_eq!(
        post(gateway.addr, "1400000009", Some(&signer.sign(KEY, &body)), &body).await.0,
        403,
        "an app not listed"
    );
    let text = metrics(gateway.addr).await;
    for line in [
        "hookbus_rejections_total{reason=\"trtc_sign_missing\"} 2",
        "hookbus_rejections_total{reason=\"trtc_sign_mismatch\"} 4",
        "hookbus_rejections_total{reason=\"sign_missing\"} 1",
        "hookbus_rejections_total{reason=\"command_missing\"} 1",
        "hookbus_requests_total{command=\"trtc\",status=\"401\"} 6",
        "hookbus_requests_total{command=\"trtc\",status=\"403\"} 1",
        "hookbus_requests_total{command=\"trtc.1.104\",status=\"200\"} 1",
        "hookbus_signatures_total{app=\"1400000000\",token=\"trtc-key-1\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(!text.contains(KEY), "keys are never shown");
    gateway.stop().await;
    let events = captured.lines();
    assert_eq!(events.len(), 1);
    assert_eq!((&events[0]["type"], &events[0]["subject"]), (&"trtc.1.104".into(), &"880021".into()));
    assert_eq!(events[0]["destination"], "tencent.trtc.1.104");
}

#[tokio::test]
async fn a_gateway_with_tokens_but_no_trtc_key_refuses_trtc_and_one_without_either_takes_it() {
    let body = event("trtc.1.101", "u1");
    let (secured, _) = captured(&["--token", TOKEN]).await;
    assert_eq!(post(secured.addr, APP, None, &body).await.0, 401);
    assert!(metrics(secured.addr).await.contains("hookbus_rejections_total{reason=\"trtc_key_missing\"} 1"));
    secured.stop().await;
    let (open, captured) = captured(&[]).await;
    assert_eq!(post(open.addr, APP, None, &body).await.0, 200, "nothing is signed on this gateway");
    open.stop().await;
    assert_eq!(captured.lines().len(), 1);
}

#[tokio::test]
async fn trtc_callbacks_meet_the_same_limits() {
    let (gateway, captured) = captured(&["--trtc-key", KEY, "--max-body-bytes", "1024", "--max-json-depth", "4"]).await;
    let mut signer = Signer::start();
    let mut deep: Value = serde_json::from_slice(&event("trtc.1.103", "u1")).unwrap();
    deep["EventInfo"]["Extra"] = serde_json::json!({"a":{"b":{"c":1}}});
    let deep = serde_json::to_vec(&deep).unwrap();
    let mut big: Value = serde_json::from_slice(&event("trtc.1.103", "u1")).unwrap();
    big["EventInfo"]["Extra"] = "x".repeat(2000).into();
    let big = serde_json::to_vec(&big).unwrap();
    let not_an_event = br#"{"EventGroupId":1,"CallbackTs":1,"EventInfo":{}}"#.to_vec();
    let mut stale: Value = serde_json::from_slice(&event("trtc.1.103", "u1")).unwrap();
    stale["CallbackTs"] = 1_600_000_000_000u64.into();
    let stale = serde_json::to_vec(&stale).unwrap();
    for (what, body, status) in [
        ("too deep", &deep, 400),
        ("too large", &big, 413),
        ("not an event", &not_an_event, 400),
        ("stale", &stale, 401),
    ] {
        assert_eq!(post(gateway.addr, APP, Some(&signer.sign(KEY, body)), body).await.0, status, "{what}");
    }
    let body = event("trtc.1.103", "u1");
    let sign = signer.sign(KEY, &body);
    let repeated = [("SdkAppId", APP), ("Sign", sign.as_str()), ("Sign", sign.as_str())];
    assert_eq!(request_with(gateway.addr, Method::POST, "/", &repeated, &body).await.0, 400, "a repeated Sign");
    let text = metrics(gateway.addr).await;
    for reason in ["too_deep", "too_large", "trtc_event_invalid", "trtc_stale", "param_repeated"] {
        assert!(text.contains(&format!("hookbus_rejections_total{{reason=\"{reason}\"}} 1")), "{reason}:\n{text}");
    }
    gateway.stop().await;
    assert!(captured.lines().is_empty());
}

/// Tencent sends a callback again when the answer did not come: three sends of one event, the
/// last stamped later as a retry may be, are one event on the bus; another gateway (a replica,
/// or this one after a restart) gives the same event the same id, so that consumers and
/// JetStream's duplicate window drop it.
#[tokio::test]
async fn tencents_retries_are_one_event() {
    let prefix = unique("trtc");
    let mut watcher = Backend::Nats.watch(&prefix).await;
    let gateway = Backend::Nats.gateway(&prefix, None, &["--trtc-key", KEY]).await;
    let mut signer = Signer::start();
    let body = event("trtc.1.103", "u1");
    let mut later: Value = serde_json::from_slice(&body).unwrap();
    later["CallbackTs"] = (later["CallbackTs"].as_u64().unwrap() + 10_000).into();
    let later = serde_json::to_vec(&later).unwrap();
    for body in [&body, &body, &later] {
        let (status, answer) = post(gateway.addr, APP, Some(&signer.sign(KEY, body)), body).await;
        assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]));
    }
    let first = watcher.next(Duration::from_secs(10)).await;
    assert!(watcher.try_next(Duration::from_millis(500)).await.is_none(), "one event for three sends");
    assert!(metrics(gateway.addr).await.contains("hookbus_replays_total 2"));
    let other = event("trtc.1.103", "u2");
    assert_eq!(post(gateway.addr, APP, Some(&signer.sign(KEY, &other)), &other).await.0, 200);
    let second = watcher.next(Duration::from_secs(10)).await;
    assert_ne!(second.attributes["id"], first.attributes["id"], "another event, another id");
    gateway.stop().await;

    let replica = Backend::Nats.gateway(&prefix, None, &["--trtc-key", KEY]).await;
    assert_eq!(post(replica.addr, APP, Some(&signer.sign(KEY, &later)), &later).await.0, 200);
    let again = watcher.next(Duration::from_secs(10)).await;
    assert_eq!(again.attributes["id"], first.attributes["id"], "the same event, the same id");
    replica.stop().await;
}

/// `body` as another serialiser would send it again: a space after each `:` and `,`, the
/// members of `EventInfo` in reverse order and its strings written as `\uXXXX` escapes.
fn serialised_anew(body: &[u8]) -> Vec<u8> {
    let body: Value = serde_json::from_slice(body).unwrap();
    let escaped = |text: &str| -> String {
        let units: String = text.encode_utf16().map(|unit| format!("\\u{unit:04x}")).collect();
        format!("\"{units}\"")
    };
    let info: Vec<String> = body["EventInfo"]
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(name, value)| match value {
            Value::String(text) => format!("\"{name}\": {}", escaped(text)),
            other => format!("\"{name}\": {other}"),
        })
        .collect();
    let top: Vec<String> = body
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "EventInfo")
        .map(|(name, value)| format!("\"{name}\": {value}"))
        .collect();
    format!("{{\"EventInfo\": {{{}}}, {}}}", info.join(", "), top.join(", ")).into_bytes()
}

/// A retry that was serialised anew on its way (spacing, member order, escapes), each copy
/// signed over its own bytes, is the same event: one event on the bus, and the same id from a
/// gateway that never saw the first copy.
#[tokio::test]
async fn a_retry_serialised_anew_is_one_event_with_one_id() {
    let mut signer = Signer::start();
    let body = event("trtc.1.103", "用户 1");
    let again = serialised_anew(&body);
    assert_ne!(body, again);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::from_slice::<Value>(&again).unwrap());
    let (gateway, first) = captured(&["--sdk-app-id", APP, "--trtc-key", KEY]).await;
    for body in [&body, &again] {
        let (status, answer) = post(gateway.addr, APP, Some(&signer.sign(KEY, body)), body).await;
        assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]), "{}", String::from_utf8_lossy(body));
    }
    assert!(metrics(gateway.addr).await.contains("hookbus_replays_total 1"), "the second copy is a retry");
    gateway.stop().await;
    let events = first.lines();
    assert_eq!(events.len(), 1, "one event for two copies: {events:#?}");
    let (replica, elsewhere) = captured(&["--sdk-app-id", APP, "--trtc-key", KEY]).await;
    assert_eq!(post(replica.addr, APP, Some(&signer.sign(KEY, &again)), &again).await.0, 200);
    replica.stop().await;
    let copies = elsewhere.lines();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["id"], events[0]["id"], "the same event, the same id");
    assert_eq!(copies[0]["data"]["EventInfo"]["UserId"], "用户 1", "the body as it came");
}

/// Callbacks sent so far, with the key that signed each and the status it got.
type Sent = Arc<Mutex<Vec<(String, u16)>>>;

/// Waits until at least `at_least` callbacks were signed with `key`: how many fit in a fixed
/// time depends on the machine's load.
async fn sent_with(sent: &Sent, key: &str, at_least: usize) {
    eventually(&format!("{at_least} callbacks signed with {key}"), Duration::from_secs(20), || {
        let count = sent.lock().unwrap().iter().filter(|(used, _)| used == key).count();
        std::future::ready(count >= at_least)
    })
    .await
}

// The binary is started and signalled with blocking calls: keep a worker free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trtc_keys_rotate_on_sighup_without_refusing_a_valid_callback() {
    let file = tempdir("trtc-key").join("room");
    std::fs::write(&file, "oldKey\n").unwrap();
    let key_file = format!("room={}", file.display());
    let (mut child, addr, logs) = spawn_binary_with_logs(&["--trtc-key-file", &key_file]);
    let signer = Arc::new(Mutex::new(Signer::start()));
    // A steady stream of callbacks, each signed with the key valid when it is sent.
    let current = Arc::new(Mutex::new("oldKey".to_owned()));
    let sent: Sent = Arc::default();
    let stream = tokio::spawn({
        let (current, sent, signer) = (current.clone(), sent.clone(), signer.clone());
        async move {
            for n in 0.. {
                let key = current.lock().unwrap().clone();
                let body = event("trtc.2.203", &format!("user-{n}"));
                let sign = signer.lock().unwrap().sign(&key, &body);
                let (status, _) = post(addr, APP, Some(&sign), &body).await;
                sent.lock().unwrap().push((key, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Each phase lasts until enough callbacks were sent in it: how many fit in a fixed time
    // depends on the machine's load.
    sent_with(&sent, "oldKey", 20).await;
    std::fs::write(&file, "oldKey\nnewKey\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "trtc key room.2 added");
    *current.lock().unwrap() = "newKey".to_owned();
    sent_with(&sent, "newKey", 20).await;
    std::fs::write(&file, "newKey\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "trtc key room changed");
    sent_with(&sent, "newKey", 40).await;
    stream.abort();
    let sent = sent.lock().unwrap().clone();
    let refused: Vec<_> = sent.iter().filter(|(_, status)| *status != 200).collect();
    let with_new = sent.iter().filter(|(key, _)| key == "newKey").count();
    assert!(refused.is_empty(), "{} of {} refused: {refused:?}", refused.len(), sent.len());
    assert!(with_new >= 40 && sent.len() - with_new >= 20, "both keys were used: {}", sent.len());
    let body = event("trtc.2.203", "late");
    let old = signer.lock().unwrap().sign("oldKey", &body);
    assert_eq!(post(addr, APP, Some(&old), &body).await.0, 401, "the removed key is refused");
    let new = signer.lock().unwrap().sign("newKey", &body);
    assert_eq!(post(addr, APP, Some(&new), &body).await.0, 200);
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
