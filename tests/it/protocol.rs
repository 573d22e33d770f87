//! The callback checks of the README's "What Tencent sees", in order, and every documented
//! sample, over real HTTP, on the stdout bus writing to a buffer the test reads back.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hookbus::bus::stdout::Stdout;
use hookbus::bus::Bus;
use hyper::Method;
use serde_json::json;

use crate::support::{eventually, metrics, request, samples, signed_as, Captured, Running, APP, TOKEN};

const SECURED: &[&str] = &["--sdk-app-id", APP, "--token", TOKEN];

async fn secured() -> (Running, Captured) {
    Running::stdout(SECURED).await
}

fn ok() -> serde_json::Value {
    json!({"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0})
}

#[tokio::test]
async fn every_sample_is_accepted_and_published_exactly() {
    let (gateway, captured) = secured().await;
    let samples = samples();
    let mut informational = Vec::new();
    for (command, body) in &samples {
        let (status, answer) = gateway.post(command, body).await;
        assert_eq!(status, 200, "{command}");
        match command.as_str() {
            "Live.CallbackBeforeSendGift" => {
                assert_eq!(answer["ErrorCode"], 1, "gifts fall back to deny: {answer}");
                assert_eq!(answer["ActionStatus"], "OK");
            }
            // Every other documented blocking callback falls back to allow, as Tencent does.
            command if hookbus::tencent::Blocking::of(command).is_some() => {
                assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}), "{command}")
            }
            _ => {
                assert_eq!(answer, ok(), "{command}");
                informational.push((command, body));
            }
        }
    }
    let report = gateway.stop().await;
    assert_eq!(report.lost, 0);
    let lines = captured.lines();
    assert_eq!(lines.len(), informational.len(), "one line per informational event, none for decisions");
    for (line, (command, body)) in lines.iter().zip(&informational) {
        let data: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(line["type"], command.as_str());
        assert_eq!(line["specversion"], "1.0");
        assert_eq!(line["destination"], format!("tencent.{command}"));
        assert_eq!(line["source"], format!("/tencent/{APP}"));
        assert_eq!(line["data"], data, "{command}");
        // Signed: the id is derived from the callback.
        assert_eq!(uuid::Uuid::parse_str(line["id"].as_str().unwrap()).unwrap().get_version_num(), 8);
        assert!(humantime::parse_rfc3339(line["time"].as_str().unwrap()).is_ok());
    }
    let key = |command: &str| lines.iter().find(|l| l["type"] == command).unwrap()["subject"].clone();
    assert_eq!(key("Live.CallbackAfterCreateRoom"), "tandy-test-rest");
    assert_eq!(key("Group.CallbackAfterSendMsg"), "@TGS#2J4SZEAEL");
    assert_eq!(key("Live.CallbackAfterStartBattle"), "pk-3");
    assert_eq!(key("Live.CallbackAfterCloudRecordingChanged"), "635055");
    assert_eq!(key("Follow.CallbackAfterFollowAdd"), serde_json::Value::Null);
}

#[tokio::test]
async fn unknown_commands_are_forwarded() {
    let (gateway, captured) = secured().await;
    let body = br#"{"CallbackCommand":"Live.CallbackAfterSomethingNew","RoomId":"r9"}"#;
    assert_eq!(gateway.post("Live.CallbackAfterSomethingNew", body).await, (200, ok()));
    gateway.stop().await;
    let lines = captured.lines();
    assert_eq!(lines[0]["destination"], "tencent.Live.CallbackAfterSomethingNew");
    assert_eq!(lines[0]["subject"], "r9");
}

/// Posts with a raw target and body and returns status, ErrorCode and ErrorInfo.
async fn raw(gateway: &Running, method: Method, target: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let (status, answer) = request(gateway.addr, method, target, body).await;
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    if status != 200 {
        assert_eq!(answer["ActionStatus"], "FAIL", "{answer}");
        assert_eq!(answer["ErrorCode"], status, "{answer}");
        assert!(!answer["ErrorInfo"].as_str().unwrap().is_empty());
    }
    (status, answer)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn every_rejection_answers_a_tencent_failure() {
    let (gateway, captured) = secured().await;
    let room = br#"{"CallbackCommand":"Live.CallbackAfterCreateRoom"}"#;
    let cmd = "Live.CallbackAfterCreateRoom";
    let good = signed_as(cmd, APP, TOKEN, now());
    // (case, method, target, body, status, words in ErrorInfo)
    type Case<'a> = (&'a str, Method, String, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("GET on the callback path", Method::GET, good.clone(), vec![], 405, "method"),
        ("PUT on the callback path", Method::PUT, good.clone(), room.to_vec(), 405, "method"),
        ("foreign SdkAppid", Method::POST, signed_as(cmd, "999", TOKEN, now()), room.to_vec(), 403, "SdkAppid"),
        ("no SdkAppid", Method::POST, format!("/?CallbackCommand={cmd}"), room.to_vec(), 403, "SdkAppid"),
        ("no Sign", Method::POST, format!("/?SdkAppid={APP}&CallbackCommand={cmd}"), room.to_vec(), 401, "required"),
        ("wrong token", Method::POST, signed_as(cmd, APP, "other", now()), room.to_vec(), 401, "match"),
        ("stale", Method::POST, signed_as(cmd, APP, TOKEN, now() - 120), room.to_vec(), 401, "skew"),
        ("from the future", Method::POST, signed_as(cmd, APP, TOKEN, now() + 120), room.to_vec(), 401, "skew"),
        ("too large", Method::POST, good.clone(), vec![b' '; 65537], 413, "larger"),
        ("not JSON", Method::POST, good.clone(), b"hello".to_vec(), 400, "JSON"),
        ("a JSON array", Method::POST, good.clone(), b"[1]".to_vec(), 400, "object"),
        ("truncated JSON", Method::POST, good.clone(), b"{\"a\":".to_vec(), 400, "JSON"),
        ("invalid UTF-8 in a field", Method::POST, good.clone(), b"{\"x\":\"\xff\"}".to_vec(), 400, "UTF-8"),
        (
            "commands differ",
            Method::POST,
            good.clone(),
            br#"{"CallbackCommand":"Live.CallbackAfterDestroyRoom"}"#.to_vec(),
            400,
            "differs",
        ),
        (
            "no command anywhere",
            Method::POST,
            format!(
                "/?SdkAppid={APP}&Sign={}&RequestTime={}",
                hookbus::tencent::sign(TOKEN, &now().to_string()),
                now()
            ),
            b"{}".to_vec(),
            400,
            "missing",
        ),
        (
            "command unfit for a subject",
            Method::POST,
            signed_as("a.%3E", APP, TOKEN, now()),
            b"{}".to_vec(),
            400,
            "characters",
        ),
        (
            "command in the decision requests' segment",
            Method::POST,
            signed_as("decide.Live.CallbackBeforeSendGift", APP, TOKEN, now()),
            b"{}".to_vec(),
            400,
            "decision requests",
        ),
        (
            "command in the CSS events' segment",
            Method::POST,
            signed_as("css.push.started", APP, TOKEN, now()),
            b"{}".to_vec(),
            400,
            "CSS",
        ),
        (
            "command in the audit events' segment",
            Method::POST,
            signed_as("audit.Live.CallbackBeforeSendGift", APP, TOKEN, now()),
            b"{}".to_vec(),
            400,
            "audit",
        ),
        ("other path", Method::POST, "/elsewhere".into(), room.to_vec(), 404, "not found"),
        ("POST on /healthz", Method::POST, "/healthz".into(), vec![], 405, "method"),
    ];
    for (name, method, target, body, status, info) in cases {
        let (got, answer) = raw(&gateway, method, &target, &body).await;
        assert_eq!(got, status, "{name}: {answer}");
        assert!(answer["ErrorInfo"].as_str().unwrap().contains(info), "{name}: {answer}");
    }
    let metrics = metrics(gateway.addr).await;
    for reason in [
        "method",
        "sdkappid",
        "sign_missing",
        "sign_mismatch",
        "sign_stale",
        "too_large",
        "command_mismatch",
        "command_reserved",
    ] {
        assert!(metrics.contains(&format!("hookbus_rejections_total{{reason=\"{reason}\"}}")), "{reason}\n{metrics}");
    }
    assert!(metrics.contains("hookbus_rejections_total{reason=\"not_json_object\"} 4"), "{metrics}");
    gateway.stop().await;
    assert!(captured.lines().is_empty(), "nothing rejected reaches the bus");
}

#[tokio::test]
async fn query_is_case_insensitive_and_command_may_come_from_the_body() {
    let (gateway, captured) = secured().await;
    let time = now().to_string();
    let sign = hookbus::tencent::sign(TOKEN, &time).to_uppercase();
    let target = format!("/?SDKAPPID={APP}&sign={sign}&requesttime={time}&clientip=10.1.2.3&optplatform=Android");
    let body = br#"{"CallbackCommand":"Live.CallbackAfterMemberStateChanged","RoomId":"r1"}"#;
    let (status, answer) = raw(&gateway, Method::POST, &target, body).await;
    assert_eq!((status, answer), (200, ok()));
    gateway.stop().await;
    assert_eq!(captured.lines()[0]["type"], "Live.CallbackAfterMemberStateChanged");
}

#[tokio::test]
async fn without_token_or_app_list_anything_signed_or_not_is_accepted() {
    let (gateway, captured) = Running::stdout(&[]).await;
    for _ in 0..2 {
        let (status, _) = raw(&gateway, Method::POST, "/?SdkAppid=1&CallbackCommand=Live.X", b"{}").await;
        assert_eq!(status, 200);
    }
    gateway.stop().await;
    // Unsigned, the same callback twice cannot be told from two: each gets a random UUIDv7.
    let ids: Vec<uuid::Uuid> =
        captured.lines().iter().map(|line| uuid::Uuid::parse_str(line["id"].as_str().unwrap()).unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.get_version_num() == 7) && ids[0] != ids[1], "{ids:?}");
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (gateway, _captured) = secured().await;
    assert_eq!(request(gateway.addr, Method::GET, "/healthz", b"").await.0, 200);
    assert_eq!(request(gateway.addr, Method::GET, "/readyz", b"").await.0, 200);
    gateway.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"r"}"#).await;
    gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    let text = metrics(gateway.addr).await;
    assert!(
        text.contains("hookbus_requests_total{command=\"Live.CallbackAfterCreateRoom\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "hookbus_decisions_total{command=\"Live.CallbackBeforeSendGift\",outcome=\"no-responders\",rule=\"\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("hookbus_decision_seconds_count 1"), "{text}");
    gateway.stop().await;
}

/// A stdout that always fails: nothing is ever confirmed.
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "reader gone"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn full_outbox_answers_503_and_unconfirmed_events_are_counted_lost() {
    let bus = Bus::Stdout(Stdout::new(Box::new(Broken)));
    let flags = ["--outbox-capacity", "2", "--shutdown-grace", "300ms"];
    let gateway = Running::start(&flags, bus).await;
    let body = br#"{"RoomId":"r"}"#;
    let cmd = "Live.CallbackAfterCreateRoom";
    assert_eq!(gateway.post(cmd, body).await.0, 200);
    assert_eq!(gateway.post(cmd, body).await.0, 200);
    let (status, answer) = gateway.post(cmd, body).await;
    assert_eq!(status, 503);
    assert_eq!(answer["ActionStatus"], "FAIL");
    assert_eq!(request(gateway.addr, Method::GET, "/readyz", b"").await.0, 503);
    let addr = gateway.addr;
    eventually("retries to be counted", Duration::from_secs(5), || async move {
        !metrics(addr).await.contains("hookbus_publishes_retried_total 0")
    })
    .await;
    let started = std::time::Instant::now();
    let report = gateway.stop().await;
    assert_eq!(report.lost, 2, "the two accepted events could not be delivered");
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown kept to its grace period");
}

/// Every line the stdout bus writes, read by the CloudEvents Python SDK (PyPI `cloudevents`,
/// installed by `scripts/services.sh`): each is a valid CloudEvents 1.0 JSON event.
#[tokio::test]
async fn stdout_lines_are_cloudevents_the_python_sdk_reads() {
    let (gateway, captured) = secured().await;
    let samples = samples();
    let informational: Vec<_> = samples.iter().filter(|(command, _)| !command.contains("CallbackBefore")).collect();
    for (command, body) in &informational {
        assert_eq!(gateway.post(command, body).await.0, 200, "{command}");
    }
    gateway.stop().await;
    let path = crate::support::tempdir("cloudevents").join("events.jsonl");
    std::fs::write(&path, captured.0.lock().unwrap().clone()).unwrap();
    let script = r#"
import json, sys
from cloudevents.core.formats.json import JSONFormat
for line in open(sys.argv[1], "rb"):
    event = JSONFormat().read(None, line)
    print(json.dumps({"id": event.get_id(), "type": event.get_type(), "specversion": event.get_specversion(),
                      "subject": event.get_subject(), "destination": event.get_extension("destination"),
                      "sdkappid": event.get_extension("sdkappid"), "data": event.get_data()}))
"#;
    let output = std::process::Command::new("python3").args(["-c", script, path.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let parsed: Vec<serde_json::Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let lines = captured.lines();
    assert_eq!(parsed.len(), informational.len(), "the SDK read every line");
    for ((event, line), (command, body)) in parsed.iter().zip(&lines).zip(&informational) {
        assert_eq!(event["id"], line["id"]);
        assert_eq!(event["type"], command.as_str());
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["destination"], format!("tencent.{command}"));
        assert_eq!(event["subject"], line["subject"], "the room, when there is one");
        assert_eq!(event["sdkappid"], APP);
        assert_eq!(event["data"], serde_json::from_slice::<serde_json::Value>(body).unwrap(), "{command}");
    }
}

/// A small OTLP/HTTP collector: every JSON body posted to /v1/traces, decoded.
async fn collector() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
    let bodies = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let bodies = bodies.clone();
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let bodies = bodies.clone();
                async move {
                    assert_eq!(request.uri().path(), "/v1/traces");
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    bodies.lock().unwrap().push(serde_json::from_slice(&body).expect("OTLP JSON"));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"{}"),
                    )))
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (addr, received)
}

#[tokio::test]
async fn spans_are_exported_over_otlp_and_the_bus_carries_the_gateways_span() {
    let (addr, received) = collector().await;
    let endpoint = format!("http://{addr}");
    let flags = ["--sdk-app-id", APP, "--token", TOKEN, "--otlp-endpoint", &endpoint];
    let (gateway, captured) = Running::stdout(&flags).await;
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let parent = format!("00-{trace}-{caller}-01");
    for (command, body) in [
        ("Live.CallbackAfterCreateRoom", &br#"{"RoomId":"r"}"#[..]),
        ("Live.CallbackBeforeSendGift", br#"{"RoomId":"g"}"#),
    ] {
        let target = crate::support::signed(command);
        let (status, _) =
            crate::support::request_with(gateway.addr, Method::POST, &target, &[("traceparent", &parent)], body).await;
        assert_eq!(status, 200);
    }
    let spans = || -> Vec<serde_json::Value> {
        received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|body| body["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    eventually("four spans to be exported", Duration::from_secs(10), || async { spans().len() >= 4 }).await;
    gateway.stop().await;
    let spans = spans();
    let named = |name: &str| spans.iter().filter(|span| span["name"] == name).cloned().collect::<Vec<_>>();
    let receives = named("receive");
    assert_eq!(receives.len(), 2, "{spans:#?}");
    for span in &spans {
        assert_eq!(span["traceId"], trace, "one trace: the caller's");
        assert!(span["startTimeUnixNano"].as_str().unwrap().parse::<u128>().unwrap() > 0);
    }
    for receive in &receives {
        assert_eq!(receive["parentSpanId"], caller, "the caller's span is the parent");
    }
    let child_of_a_receive =
        |span: &serde_json::Value| receives.iter().any(|receive| receive["spanId"] == span["parentSpanId"]);
    let (publish, decision) = (named("publish"), named("decision"));
    assert!(publish.len() == 1 && child_of_a_receive(&publish[0]), "{spans:#?}");
    assert!(decision.len() == 1 && child_of_a_receive(&decision[0]), "{spans:#?}");
    let line = &captured.lines()[0];
    let event_receive = receives.iter().find(|receive| receive["spanId"] == publish[0]["parentSpanId"]).unwrap();
    assert_eq!(
        line["traceparent"],
        format!("00-{trace}-{}-01", event_receive["spanId"].as_str().unwrap()),
        "the bus carries the gateway's span"
    );
    let bodies = received.lock().unwrap().clone();
    assert_eq!(otlp_spans(&bodies), spans.len(), "the protocol's own definitions read every span");
}

/// Reads OTLP/JSON export requests with the OpenTelemetry protocol's own definitions (PyPI
/// `opentelemetry-proto`, installed by `scripts/services.sh`) and protobuf's strict JSON parser:
/// every key is a field's JSON name (lowerCamelCase), enums are integers, trace and span ids
/// are hex of 16 and 8 bytes (OTLP/JSON's one departure from protobuf's JSON mapping, undone
/// before parsing); returns the number of spans.
fn otlp_spans(bodies: &[serde_json::Value]) -> usize {
    let script = r#"
import base64, json, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ID_BYTES = {"trace_id": 16, "span_id": 8, "parent_span_id": 8}

def check(node, descriptor, path):
    fields = {field.json_name: field for field in descriptor.fields}
    for key, value in node.items():
        field = fields.get(key)
        if field is None:
            sys.exit(f"{path}.{key}: not the JSON name of a field of {descriptor.full_name}")
        values = value if field.is_repeated else [value]
        for n, item in enumerate(values):
            at = f"{path}.{key}[{n}]" if field.is_repeated else f"{path}.{key}"
            if field.message_type is not None:
                check(item, field.message_type, at)
            elif field.enum_type is not None and not isinstance(item, int):
                sys.exit(f"{at}: OTLP/JSON writes enums as integers, not {item!r}")
            elif field.name in ID_BYTES:
                raw = bytes.fromhex(item)
                if len(raw) != ID_BYTES[field.name] and not (field.name == "parent_span_id" and not raw):
                    sys.exit(f"{at}: {len(raw)} bytes")
                node[key] = base64.b64encode(raw).decode()

spans = 0
for path in sys.argv[1:]:
    body = json.load(open(path))
    check(body, ExportTraceServiceRequest.DESCRIPTOR, "")
    request = json_format.Parse(json.dumps(body), ExportTraceServiceRequest(), ignore_unknown_fields=False)
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            spans += len(scope.spans)
print(spans)
"#;
    let dir = crate::support::tempdir("otlp");
    let paths: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(n, body)| {
            let path = dir.join(format!("{n}.json"));
            std::fs::write(&path, body.to_string()).unwrap();
            path.display().to_string()
        })
        .collect();
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .args(&paths)
        .output()
        .expect("python3 runs (scripts/services.sh installs opentelemetry-proto)");
    assert!(output.status.success(), "OTLP/JSON refused: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().parse().expect("a count of spans")
}
