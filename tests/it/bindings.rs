//! What the gateway publishes and asks, read by third-party clients as each bus's CloudEvents
//! binding says: nats-py with the CloudEvents SDK's decoding of `ce-` headers (the NATS binding
//! writes header values as the HTTP binding does, percent-encoded), pika with the SDK's AMQP
//! binding, and Kafka's headers as UTF-8 bytes. Attributes come back exactly, and a monitor of
//! events never receives a decision request.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::brokers::{amqp_url, nats_url, Backend};
use crate::support::{request, signed_as, unique, APP, TOKEN};

/// Subscribes to `argv[2]` with nats-py and prints each message as a JSON line: its subject,
/// whether it asks for a reply, and its attributes decoded by the CloudEvents SDK.
const NATS: &str = r#"
import asyncio, json, sys
import nats
from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

async def main(url, subject):
    client = await nats.connect(url)
    subscription = await client.subscribe(subject)
    await client.flush()
    print("ready", flush=True)
    async for message in subscription.messages:
        headers = dict(message.headers or {})
        event = from_binary(HTTPMessage(headers=headers, body=message.data), JSONFormat())
        line = {"destination": message.subject, "request": bool(message.reply), "raw": headers,
                "attributes": event.get_attributes(), "data": event.get_data()}
        print(json.dumps(line, default=str), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"#;

/// Binds a queue of its own to the exchange `tencent` with `argv[2]` with pika and prints each
/// message as a JSON line, its attributes decoded by the CloudEvents SDK's AMQP binding.
const AMQP: &str = r#"
import json, sys
import pika
from cloudevents.core.bindings.amqp import AMQPMessage, from_binary
from cloudevents.core.formats.json import JSONFormat

connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
queue = channel.queue_declare("", exclusive=True).method.queue
channel.queue_bind(queue, "tencent", routing_key=sys.argv[2])
print("ready", flush=True)

def received(channel, method, properties, body):
    message = AMQPMessage(properties={"content-type": properties.content_type},
                          application_properties=properties.headers or {}, application_data=body)
    event = from_binary(message, JSONFormat())
    line = {"destination": method.routing_key, "request": properties.reply_to is not None,
            "attributes": event.get_attributes(), "data": event.get_data()}
    print(json.dumps(line, default=str), flush=True)

channel.basic_consume(queue, received, auto_ack=True)
channel.start_consuming()
"#;

/// A third-party client run by `python3`, reporting what it receives a JSON line each.
struct Client {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    /// Starts the client `script` for `backend` on `pattern`; returns once it is subscribed.
    async fn start(backend: Backend, pattern: &str) -> Client {
        let (script, url) = match backend {
            Backend::Nats => (NATS, nats_url()),
            Backend::Amqp => (AMQP, amqp_url()),
            Backend::Kafka => unreachable!("Kafka headers are read by the test itself"),
        };
        let mut child = Command::new("python3")
            .args(["-c", script, &url, pattern])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let ready = ready.expect("the client subscribes in time").unwrap();
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "nats-py, pika and cloudevents are installed (scripts/services.sh)"
        );
        Client { _child: child, lines }
    }

    /// The next message it received.
    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), self.lines.next_line()).await;
        let line = line.expect("a message in time").unwrap().expect("the client runs");
        serde_json::from_str(&line).unwrap()
    }
}

/// A room every bus's headers mangled in some way, and two that one key used to stand for.
const ROOMS: [&str; 3] = ["房间 1 \"x\" 50%", "a\r", "a%0D"];
const CLIENT_IP: &str = "10.0.0.1 %zone";
const PLATFORM: &str = "iOS 17 \"x\" 50%";
const EVENT: &str = "Live.CallbackAfterEnterRoom";

/// Posts an event for each of [`ROOMS`] (its index as `Seq`) with [`CLIENT_IP`] and [`PLATFORM`]
/// in the query.
async fn post_rooms(gateway: &crate::support::Running) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let target = format!(
        "{}&ClientIP={}&OptPlatform={}",
        signed_as(EVENT, APP, TOKEN, now),
        form_urlencoded::byte_serialize(CLIENT_IP.as_bytes()).collect::<String>(),
        form_urlencoded::byte_serialize(PLATFORM.as_bytes()).collect::<String>(),
    );
    for (seq, room) in ROOMS.iter().enumerate() {
        let body = json!({"CallbackCommand": EVENT, "RoomId": room, "Seq": seq}).to_string();
        let (status, _) = request(gateway.addr, hyper::Method::POST, &target, body.as_bytes()).await;
        assert_eq!(status, 200);
    }
}

/// Reads the events of [`ROOMS`] as a third-party decoder got them: each has its exact room.
async fn decoded_rooms(client: &mut Client) {
    let mut seen = Vec::new();
    for _ in ROOMS {
        let line = client.next().await;
        let attributes = &line["attributes"];
        let seq = line["data"]["Seq"].as_u64().unwrap() as usize;
        assert_eq!(attributes["partitionkey"], ROOMS[seq], "the exact room, decoded: {line:#}");
        seen.push(seq);
        assert_eq!(attributes["clientip"], CLIENT_IP, "{line:#}");
        assert_eq!(attributes["optplatform"], PLATFORM, "{line:#}");
        assert!(!line["request"].as_bool().unwrap());
        if let Some(raw) = line["raw"]["ce-partitionkey"].as_str() {
            let printable = raw.bytes().all(|byte| (0x21..=0x7e).contains(&byte) && byte != b'"');
            assert!(printable, "room {seq}: the header is percent-encoded: {raw:?}");
        }
    }
    seen.sort();
    assert_eq!(seen, [0, 1, 2], "each room once");
}

/// On NATS the header values are percent-encoded as the binding says: the SDK decodes the
/// exact room, platform and client address, and `a\r` and `a%0D` stay two keys.
#[tokio::test]
async fn nats_headers_decode_to_the_exact_room() {
    let prefix = unique("t");
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let mut client = Client::start(Backend::Nats, &format!("{prefix}.>")).await;
    post_rooms(&gateway).await;
    decoded_rooms(&mut client).await;
    gateway.stop().await;
}

/// On RabbitMQ the attributes are AMQP strings, which hold any text: pika and the SDK's AMQP
/// binding read the exact room.
#[tokio::test]
async fn amqp_headers_hold_the_exact_room() {
    let prefix = unique("t");
    let gateway = Backend::Amqp.gateway(&prefix, None, &[]).await;
    let mut client = Client::start(Backend::Amqp, &format!("{prefix}.#")).await;
    post_rooms(&gateway).await;
    decoded_rooms(&mut client).await;
    gateway.stop().await;
}

/// On Kafka header values are the attribute's UTF-8 bytes, not encoded (the Kafka binding), and
/// the record key is the room's bytes.
#[tokio::test]
async fn kafka_headers_and_keys_are_the_exact_room() {
    let prefix = unique("t");
    let gateway = Backend::Kafka.gateway(&prefix, None, &[]).await;
    let mut watcher = Backend::Kafka.watch(&prefix).await;
    post_rooms(&gateway).await;
    let mut seen = Vec::new();
    for _ in ROOMS {
        // The watcher also checks that the record key is the `partitionkey` header.
        let event = watcher.next(Duration::from_secs(20)).await;
        let body: Value = serde_json::from_slice(&event.payload).unwrap();
        let room = ROOMS[body["Seq"].as_u64().unwrap() as usize];
        assert_eq!(event.attributes.get("partitionkey").map(String::as_str), Some(room));
        assert_eq!(event.attributes.get("clientip").map(String::as_str), Some(CLIENT_IP));
        assert_eq!(event.attributes.get("optplatform").map(String::as_str), Some(PLATFORM));
        seen.push(room);
    }
    seen.sort();
    let mut expected = ROOMS.to_vec();
    expected.sort();
    assert_eq!(seen, expected, "each room once");
    gateway.stop().await;
}

/// A monitor of one command family's events (the README's `tencent.Live.*` on NATS and
/// `tencent.Live.#` on RabbitMQ, a third-party client each) receives no decision request: with
/// no responder running, a gift is answered its fallback at once, and the monitor's first
/// message is the event posted after the gift.
async fn monitor_is_no_responder(backend: Backend, pattern: &str) {
    let prefix = unique("t");
    let gateway = backend.gateway(&prefix, None, &[]).await;
    let mut monitor = Client::start(backend, &format!("{prefix}.{pattern}")).await;
    let started = Instant::now();
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    let elapsed = started.elapsed();
    println!("{backend:?}: a gift with a monitor on {pattern} and no responder answered in {elapsed:?}");
    assert_eq!((status, &answer["ErrorInfo"]), (200, &json!("hookbus fallback: no responders")), "{answer}");
    assert!(elapsed < Duration::from_millis(1000), "not the 1.5 s deadline: {elapsed:?}");
    let body = json!({"CallbackCommand": EVENT, "RoomId": "r"}).to_string();
    assert_eq!(gateway.post(EVENT, body.as_bytes()).await.0, 200);
    let first = monitor.next().await;
    assert_eq!(first["destination"], format!("{prefix}.{EVENT}"), "no request before the event: {first:#}");
    assert_eq!(first["request"], false);
    gateway.stop().await;
}

#[tokio::test]
async fn a_nats_monitor_of_live_events_receives_no_request() {
    monitor_is_no_responder(Backend::Nats, "Live.*").await
}

#[tokio::test]
async fn a_rabbitmq_monitor_of_live_events_receives_no_request() {
    monitor_is_no_responder(Backend::Amqp, "Live.#").await
}
