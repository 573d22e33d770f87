//! Cloud Streaming (CSS) callbacks on the callback path beside Live, Chat and TRTC ones: signed
//! with Python's `hashlib` (a signer that is not the gateway's own code), every documented event
//! type reaches every bus with its key and attributes; a wrong, missing or expired signature and
//! another surface's request are refused with their reasons; Tencent's retries of one event
//! (each with a new `t` and `sign`) are one event; keys rotate on SIGHUP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookbus::css::{Clock, CssEvent, DOCUMENTED};
use hyper::Method;
use serde_json::Value;

use crate::brokers::Backend;
use crate::support::{
    logged, metrics, request_with, signal, signed_as, spawn_binary_with_logs, tempdir, unique, Running, APP, TOKEN,
};

const KEY: &str = "cssKey0123456789";
/// The Tencent Cloud account APPID of the samples.
const APPID: &str = "12345678";

/// Signs `t` with Python's `hashlib`: one process, a line per signature (the key and `t`), the
/// lower-case hex MD5 of their concatenation back on a line.
struct Signer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const SIGNER: &str = "import hashlib, sys
for line in sys.stdin:
    key, t = line.split()
    print(hashlib.md5((key + t).encode()).hexdigest(), flush=True)
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

    fn sign(&mut self, key: &str, t: u64) -> String {
        writeln!(self.stdin, "{key} {t}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the signer answers");
        line.trim().to_owned()
    }

    /// `body` with `t` and a `sign` made with `key` (left without either when it had no `t`,
    /// as a relay callback has none).
    fn signed(&mut self, body: &Value, key: &str, t: u64) -> Vec<u8> {
        let mut body = body.clone();
        if body.get("t").is_some() {
            body["t"] = t.into();
            body["sign"] = self.sign(key, t).into();
        }
        serde_json::to_vec(&body).unwrap()
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The sample `samples/css/css.{name}.json`.
fn sample(name: &str) -> Value {
    let path = format!("{}/samples/css/css.{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).expect("a sample per documented type")).unwrap()
}

/// Posts a CSS callback as Tencent does: a JSON body, no query, no signature header.
async fn post(addr: std::net::SocketAddr, body: &[u8]) -> (u16, Bytes) {
    request_with(addr, Method::POST, "/", &[("Content-Type", "application/json")], body).await
}

/// The CloudEvents `time` an event of `body` must carry: its own time field, when it has one.
fn own_time(name: &str, body: &Value) -> Option<String> {
    let documented = DOCUMENTED.iter().find(|documented| documented.name == name).unwrap();
    let (field, clock) = documented.time?;
    let value = body[field].as_u64().unwrap();
    let since = match clock {
        Clock::Seconds => Duration::from_secs(value),
        Clock::Millis => Duration::from_millis(value),
    };
    Some(humantime::format_rfc3339_millis(UNIX_EPOCH + since).to_string())
}

async fn each_type_reaches(backend: Backend) {
    let prefix = unique("css");
    // The gateways first: they declare the RabbitMQ exchange the watcher binds to.
    let signed = backend.gateway(&prefix, None, &["--css-key", KEY, "--app", APPID]).await;
    // Relay callbacks carry no signature: a gateway without keys takes them.
    let mut flags = backend.flags(None);
    flags.extend(["--prefix".to_owned(), prefix.clone()]);
    let open = Running::connect(&flags.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut watcher = backend.watch(&prefix).await;
    let mut signer = Signer::start();
    let mut sent = HashMap::new();
    for documented in DOCUMENTED {
        let original = sample(documented.name);
        let body = signer.signed(&original, KEY, now() + 600);
        let gateway = if documented.event_type == 314 { &open } else { &signed };
        let (status, answer) = post(gateway.addr, &body).await;
        assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]), "{}", documented.name);
        sent.insert(format!("{prefix}.{}", documented.command()), (documented, original, body));
    }
    for _ in 0..sent.len() {
        let got = watcher.next(Duration::from_secs(20)).await;
        let (documented, original, body) = sent.remove(&got.destination).expect("a destination sent to, once");
        assert_eq!(&got.payload[..], &body[..], "the body as received");
        let attribute = |name: &str| got.attributes.get(name).map(String::as_str);
        let appid = original["appid"].as_u64().map(|appid| appid.to_string()).unwrap_or_default();
        assert_eq!(attribute("type"), Some(documented.command().as_str()));
        assert_eq!(attribute("partitionkey"), Some("test_stream"), "the stream is the key: {}", documented.name);
        assert_eq!(attribute("source"), Some(format!("/tencent/{appid}").as_str()));
        assert_eq!(attribute("sdkappid"), Some(appid.as_str()));
        assert_eq!(attribute("specversion"), Some("1.0"));
        assert_eq!(attribute("datacontenttype"), Some("application/json"));
        assert_eq!(attribute("id"), Some(CssEvent::parse(&body).unwrap().id().as_str()));
        match own_time(documented.name, &original) {
            Some(time) => assert_eq!(attribute("time"), Some(time.as_str()), "{}", documented.name),
            None => assert!(attribute("time").is_some()),
        }
        assert!(attribute("traceparent").is_some());
    }
    signed.stop().await;
    open.stop().await;
}

#[tokio::test]
async fn each_documented_type_reaches_nats() {
    each_type_reaches(Backend::Nats).await
}

#[tokio::test]
async fn each_documented_type_reaches_rabbitmq() {
    each_type_reaches(Backend::Amqp).await
}

#[tokio::test]
async fn each_documented_type_reaches_kafka() {
    each_type_reaches(Backend::Kafka).await
}

#[tokio::test]
async fn refusals_name_their_reason_and_no_surface_takes_anothers() {
    let flags = ["--sdk-app-id", APP, "--token", TOKEN, "--css-key", KEY, "--app", APPID];
    let (gateway, captured) = Running::stdout(&flags).await;
    let mut signer = Signer::start();
    let push = sample("push.started");
    let t = now() + 600;
    let good = signer.signed(&push, KEY, t);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body: Value = serde_json::from_slice(&good).unwrap();
        change(&mut body);
        serde_json::to_vec(&body).unwrap()
    };
    let other_key = signer.signed(&push, "otherKey", t);
    let token_as_key = signer.signed(&push, TOKEN, t);
    let live_sign = with(&|body| body["sign"] = hookbus::tencent::sign(KEY, &t.to_string()).into());
    let later_t = with(&|body| body["t"] = (t + 1).into());
    let no_sign = with(&|body| drop(body.as_object_mut().unwrap().remove("sign")));
    let no_t = with(&|body| drop(body.as_object_mut().unwrap().remove("t")));
    let expired = signer.signed(&push, KEY, now() - 120);
    let other_app = with(&|body| body["appid"] = 87654321.into());
    let no_type = with(&|body| drop(body.as_object_mut().unwrap().remove("event_type")));
    let relay = serde_json::to_vec(&sample("relay.task")).unwrap();
    for (what, body, status) in [
        ("another key", &other_key, 401),
        ("the Live token as the key", &token_as_key, 401),
        ("a Live signature", &live_sign, 401),
        ("another t", &later_t, 401),
        ("no sign", &no_sign, 401),
        ("no t", &no_t, 401),
        ("a relay callback, which Tencent does not sign", &relay, 401),
        ("t has passed", &expired, 401),
        ("an app not listed", &other_app, 403),
        ("no event_type", &no_type, 400),
    ] {
        assert_eq!(post(gateway.addr, body).await.0, status, "{what}");
    }
    assert_eq!(request_with(gateway.addr, Method::GET, "/", &[], b"").await.0, 405);
    // A Live callback whose body carries CSS fields and a CSS signature is a Live callback
    // unsigned; a CSS body with a valid Live signature in the query is a Live callback without a
    // command; with TRTC's header, a TRTC callback without a TRTC key.
    let live = format!("/?SdkAppid={APP}&CallbackCommand=Live.CallbackAfterCreateRoom&contenttype=json");
    assert_eq!(request_with(gateway.addr, Method::POST, &live, &[], &good).await.0, 401);
    let target = signed_as("x", APP, TOKEN, now()).replace("&CallbackCommand=x", "");
    assert_eq!(request_with(gateway.addr, Method::POST, &target, &[], &good).await.0, 400);
    assert_eq!(request_with(gateway.addr, Method::POST, "/", &[("SdkAppId", APP)], &good).await.0, 401);
    assert!(captured.lines().is_empty(), "nothing refused was published");
    let (status, answer) = post(gateway.addr, &good).await;
    assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]));
    let as_text = with(&|body| body["t"] = t.to_string().into());
    assert_eq!(post(gateway.addr, &as_text).await.0, 200, "t as a string, as the oldest page has it");
    let text = metrics(gateway.addr).await;
    for line in [
        "hookbus_rejections_total{reason=\"css_sign_mismatch\"} 4",
        "hookbus_rejections_total{reason=\"css_sign_missing\"} 3",
        "hookbus_rejections_total{reason=\"css_expired\"} 1",
        "hookbus_rejections_total{reason=\"css_event_invalid\"} 1",
        "hookbus_rejections_total{reason=\"sdkappid\"} 1",
        "hookbus_rejections_total{reason=\"method\"} 1",
        "hookbus_rejections_total{reason=\"sign_missing\"} 1",
        "hookbus_rejections_total{reason=\"command_missing\"} 1",
        "hookbus_rejections_total{reason=\"trtc_key_missing\"} 1",
        "hookbus_requests_total{command=\"css\",status=\"401\"} 8",
        "hookbus_requests_total{command=\"css\",status=\"403\"} 1",
        "hookbus_requests_total{command=\"css\",status=\"400\"} 1",
        "hookbus_requests_total{command=\"css.push.started\",status=\"200\"} 2",
        // The expired one too: its signature matched.
        "hookbus_signatures_total{app=\"12345678\",token=\"css-key-1\"} 3",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(!text.contains(KEY), "keys are never shown");
    gateway.stop().await;
    let events = captured.lines();
    assert_eq!(events.len(), 1, "the copy with t as text is the same event: {events:#?}");
    assert_eq!((&events[0]["type"], &events[0]["subject"]), (&"css.push.started".into(), &"test_stream".into()));
    assert_eq!(events[0]["destination"], "tencent.css.push.started");
    assert_eq!(events[0]["time"], "2023-12-28T02:44:38.000Z", "the push's own event_time");
}

#[tokio::test]
async fn a_gateway_with_other_keys_but_no_css_key_refuses_css_and_one_without_any_takes_it() {
    let mut signer = Signer::start();
    let body = signer.signed(&sample("snapshot.created"), KEY, now() + 600);
    for flags in [&["--token", TOKEN][..], &["--trtc-key", "trtcKey"]] {
        let (secured, _) = Running::stdout(flags).await;
        assert_eq!(post(secured.addr, &body).await.0, 401, "{flags:?}");
        assert!(metrics(secured.addr).await.contains("hookbus_rejections_total{reason=\"css_key_missing\"} 1"));
        secured.stop().await;
    }
    let (open, captured) = Running::stdout(&[]).await;
    assert_eq!(post(open.addr, &body).await.0, 200, "nothing is signed on this gateway");
    let unknown = br#"{"event_type":329,"appid":12345678,"stream_id":"","channel_id":"63F5C728"}"#;
    assert_eq!(post(open.addr, unknown).await.0, 200, "a type Tencent does not document");
    open.stop().await;
    let events = captured.lines();
    assert_eq!(events.len(), 2);
    assert_eq!((&events[0]["type"], &events[0]["source"]), (&"css.snapshot.created".into(), &"/tencent/".into()));
    assert_eq!((&events[1]["type"], &events[1]["destination"]), (&"css.329".into(), &"tencent.css.329".into()));
    assert_eq!(events[1].get("subject"), None, "no stream, no key");
}

/// Keys set for one surface of one app only: no surface of any app is open to unsigned callbacks
/// because another app is listed, or because its own keys are not set.
#[tokio::test]
async fn an_app_with_keys_for_one_surface_takes_none_of_its_callbacks_unsigned() {
    let css_only = format!("{APPID}:css-key={KEY}");
    let live_only = format!("{APP}:token={TOKEN}");
    let (gateway, captured) = Running::stdout(&["--app", &css_only, "--app", &live_only]).await;
    // CSS with no appid (as the snapshot page has it), unsigned.
    let forged = br#"{"event_type":1,"stream_id":"forged"}"#;
    assert_eq!(post(gateway.addr, forged).await.0, 401, "no appid, unsigned");
    // Live and TRTC for the app that has a CSS key only, unsigned.
    let live = format!("/?SdkAppid={APPID}&CallbackCommand=Live.CallbackAfterCreateRoom&contenttype=json");
    let room = br#"{"CallbackCommand":"Live.CallbackAfterCreateRoom","RoomId":"r1"}"#;
    assert_eq!(request_with(gateway.addr, Method::POST, &live, &[], room).await.0, 401, "Live, unsigned");
    let trtc = br#"{"EventGroupId":1,"EventType":101,"CallbackTs":1,"EventInfo":{"RoomId":"r1"}}"#;
    assert_eq!(request_with(gateway.addr, Method::POST, "/", &[("SdkAppId", APPID)], trtc).await.0, 401, "TRTC");
    let text = metrics(gateway.addr).await;
    for line in [
        "hookbus_rejections_total{reason=\"css_key_missing\"} 1",
        "hookbus_rejections_total{reason=\"token_missing\"} 1",
        "hookbus_rejections_total{reason=\"trtc_key_missing\"} 1",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    gateway.stop().await;
    assert!(captured.lines().is_empty(), "nothing unsigned was published");
}

/// Tencent sends a callback again, with a new `t` and `sign`, when the answer did not come:
/// three sends of one event are one event on the bus, and another gateway (a replica, or this one
/// after a restart) gives a fourth copy, serialised anew, the same id.
#[tokio::test]
async fn tencents_retries_are_one_event() {
    let prefix = unique("css");
    let mut watcher = Backend::Nats.watch(&prefix).await;
    let flags = ["--css-key", KEY, "--app", APPID];
    let gateway = Backend::Nats.gateway(&prefix, None, &flags).await;
    let mut signer = Signer::start();
    let push = sample("push.started");
    let t = now() + 600;
    for retry in 0..3 {
        let body = signer.signed(&push, KEY, t + 60 * retry);
        let (status, answer) = post(gateway.addr, &body).await;
        assert_eq!((status, &answer[..]), (200, &br#"{"code":0}"#[..]));
    }
    let first = watcher.next(Duration::from_secs(10)).await;
    assert!(watcher.try_next(Duration::from_millis(500)).await.is_none(), "one event for three sends");
    assert!(metrics(gateway.addr).await.contains("hookbus_replays_total 2"));
    let mut stopped = push.clone();
    stopped["event_type"] = 0.into();
    assert_eq!(post(gateway.addr, &signer.signed(&stopped, KEY, t)).await.0, 200);
    let second = watcher.next(Duration::from_secs(10)).await;
    assert_ne!(second.attributes["id"], first.attributes["id"], "another event, another id");
    gateway.stop().await;

    let replica = Backend::Nats.gateway(&prefix, None, &flags).await;
    let again: Value = serde_json::from_slice(&signer.signed(&push, KEY, t + 180)).unwrap();
    let again = serde_json::to_string_pretty(&again).unwrap();
    assert_eq!(post(replica.addr, again.as_bytes()).await.0, 200);
    let copy = watcher.next(Duration::from_secs(10)).await;
    assert_eq!(copy.attributes["id"], first.attributes["id"], "the same event, the same id");
    assert_eq!(&copy.payload[..], again.as_bytes(), "the body as it came");
    replica.stop().await;
}

// The binary is started and signalled with blocking calls: keep a worker free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn css_keys_rotate_on_sighup() {
    let file = tempdir("css-key").join("stream");
    std::fs::write(&file, "oldKey\n").unwrap();
    let key_file = format!("stream={}", file.display());
    let (mut child, addr, logs) = spawn_binary_with_logs(&["--css-key-file", &key_file]);
    let mut signer = Signer::start();
    let mut n = 0;
    let mut send = |key: &str| {
        n += 1;
        let mut body = sample("recording.file");
        body["file_id"] = n.to_string().into();
        signer.signed(&body, key, now() + 600)
    };
    let (old, new) = (send("oldKey"), send("newKey"));
    assert_eq!(post(addr, &old).await.0, 200);
    assert_eq!(post(addr, &new).await.0, 401, "not yet");
    std::fs::write(&file, "oldKey\nnewKey\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "css key stream.2 added");
    assert_eq!(post(addr, &send("oldKey")).await.0, 200, "both while Tencent switches");
    assert_eq!(post(addr, &new).await.0, 200);
    std::fs::write(&file, "newKey\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "css key stream changed");
    assert_eq!(post(addr, &send("oldKey")).await.0, 401, "the removed key is refused");
    assert_eq!(post(addr, &send("newKey")).await.0, 200);
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
