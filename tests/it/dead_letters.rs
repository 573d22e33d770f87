//! One event the broker will never take holds back nothing: it becomes a dead letter, kept in
//! the spool directory, listed, shown and requeued with `hookbus spool`, and the events after
//! it (of every room, its own included) go on.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::Method;

use crate::brokers::Backend;
use crate::support::*;

/// A nats-server of the test's own on `port` with `max_payload`.
fn nats_server(port: u16, max_payload: usize) -> NatsServer {
    NatsServer::start(port, &format!("max_payload: {max_payload}\n"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `hookbus spool ARGS --spool-dir DIR`: its stdout, asserting it succeeded.
fn spool(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .arg("spool")
        .args(["--spool-dir", dir.to_str().unwrap()])
        .args(args)
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "hookbus spool {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

fn body(room: &str, seq: usize, pad: usize) -> Vec<u8> {
    format!(r#"{{"RoomId":"{room}","Seq":{seq},"Pad":"{}"}}"#, "x".repeat(pad)).into_bytes()
}

const COMMAND: &str = "Live.CallbackAfterEnterRoom";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_nats_is_a_dead_letter_and_the_others_go_on() {
    let port = free_port();
    let server = nats_server(port, 1024);
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempdir("dead-spool");
    let prefix = unique("dl");
    let spool_dir = dir.to_str().unwrap();
    let flags = ["--bus", "nats", "--nats-url", &url, "--prefix", &prefix, "--spool-dir", spool_dir];
    let consumer = async_nats::connect(&url).await.unwrap();
    let mut events = consumer.subscribe(format!("{prefix}.>")).await.unwrap();
    consumer.flush().await.unwrap();
    let (mut gateway, addr) = spawn_binary(&[&flags[..], &["--dead-letter-destination"]].concat());
    let mut client = Client::connect(addr).await;

    // Room "ordered": events 1..5, the third too large. Then 200 small events of 50 rooms.
    let started = Instant::now();
    for seq in 1..=5 {
        let pad = if seq == 3 { 3000 } else { 10 };
        assert_eq!(client.post(COMMAND, &body("ordered", seq, pad)).await.0, 200, "accepted");
    }
    for n in 0..200 {
        assert_eq!(client.post(COMMAND, &body(&format!("room-{}", n % 50), n, 10)).await.0, 200);
    }
    let mut ordered = Vec::new();
    let mut others = 0;
    let mut first_after_poison = None;
    let mut notice = None;
    while others < 200 || ordered.len() < 4 || notice.is_none() {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("every small event is delivered within seconds")
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        if event.subject.as_str() == format!("{prefix}.deadletter") {
            notice = Some(value);
        } else if value["RoomId"] == "ordered" {
            let seq = value["Seq"].as_u64().unwrap();
            if seq > 3 && first_after_poison.is_none() {
                first_after_poison = Some(started.elapsed());
            }
            // A retry may deliver a copy again; the last copies are in order.
            ordered.retain(|&earlier| earlier != seq);
            ordered.push(seq);
        } else {
            others += 1;
        }
    }
    assert_eq!(ordered, [1, 2, 4, 5], "the room's later events go on, in order");
    println!("NATS core: from the poison event's post to the next event of its room: {first_after_poison:?}");

    // The consumer may see an event before the gateway has its confirm.
    eventually("nothing is stuck", Duration::from_secs(10), || async {
        metric(&metrics(addr).await, "hookbus_outbox_depth") == 0
    })
    .await;
    let text = metrics(addr).await;
    let counted = format!("hookbus_dead_letters_total{{destination=\"{prefix}.{COMMAND}\",reason=\"too_large\"}} 1");
    assert!(text.contains(&counted), "{text}");
    assert_eq!(metric(&text, "hookbus_dead_letters"), 1);

    // The operator's view, while the gateway runs.
    let listed = spool(&dir, &["ls", "--dead", "--json"]);
    let letter: serde_json::Value = serde_json::from_str(listed.lines().next().expect("one dead letter")).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let id = letter["id"].as_str().unwrap().to_owned();
    let notice = notice.unwrap();
    assert_eq!((notice["id"].as_str(), notice["reason"].as_str()), (Some(id.as_str()), Some("too_large")), "{notice}");
    assert_eq!(notice["body"], serde_json::Value::Null, "the body that did not fit is not in the notice");
    assert_eq!((letter["room"].as_str(), letter["reason"].as_str()), (Some("ordered"), Some("too_large")));
    assert!(letter["error"].as_str().unwrap().contains("max payload size exceeded"), "the broker's words: {letter}");
    let shown = spool(&dir, &["show", &id]);
    assert!(shown.contains(&format!("id: {id}")) && shown.contains(r#""Seq":3"#), "{shown}");
    assert!(spool(&dir, &["stat"]).contains("dead letters: 1 ("), "stat counts it");
    assert!(spool(&dir, &["ls", "--dead", "--room", "elsewhere"]).is_empty(), "filters apply");

    // The admin path is not on the callback listener.
    for path in ["/admin", "/admin.sock", "/requeue", "/dead-letters"] {
        let (status, _) = request(addr, Method::POST, path, b"requeue all").await;
        assert!(status == 404 || status == 400, "{path}: {status}");
    }

    // A crash keeps the dead letter.
    signal(&gateway, "KILL");
    gateway.wait().unwrap();
    assert!(spool(&dir, &["ls", "--dead"]).contains(&id), "still there after SIGKILL");

    // The limit raised (a restarted server), the gateway back: requeued, delivered with its id.
    drop(server);
    let _server = nats_server(port, 1 << 20);
    let consumer = async_nats::connect(&url).await.unwrap();
    let mut events = consumer.subscribe(format!("{prefix}.>")).await.unwrap();
    consumer.flush().await.unwrap();
    let (mut gateway, _addr) = spawn_binary(&flags);
    let answer = spool(&dir, &["requeue", &id]);
    assert_eq!(answer.trim(), "requeued 1", "through the running gateway's admin socket");
    let event = loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("requeued").unwrap();
        if event.headers.as_ref().and_then(|h| h.get("ce-id")).map(|v| v.as_str()) == Some(id.as_str()) {
            break event;
        }
    };
    assert!(String::from_utf8_lossy(&event.payload).contains(r#""Seq":3"#));
    assert!(spool(&dir, &["ls", "--dead"]).is_empty(), "no longer a dead letter");
    signal(&gateway, "TERM");
    gateway.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_export_as_cloudevents_and_requeue_into_a_stopped_gateways_spool() {
    let port = free_port();
    let _server = nats_server(port, 1024);
    let url = format!("nats://127.0.0.1:{port}");
    let dir = tempdir("dead-export");
    let prefix = unique("dx");
    let flags = ["--bus", "nats", "--nats-url", &url, "--prefix", &prefix, "--spool-dir", dir.to_str().unwrap()];
    let (mut gateway, addr) = spawn_binary(&flags);
    let mut client = Client::connect(addr).await;
    for room in ["a", "b"] {
        assert_eq!(client.post(COMMAND, &body(room, 1, 2000)).await.0, 200);
    }
    eventually("two dead letters", Duration::from_secs(10), || async {
        metric(&metrics(addr).await, "hookbus_dead_letters") == 2
    })
    .await;
    signal(&gateway, "TERM");
    gateway.wait().unwrap();

    let exported = spool(&dir, &["export", "--dead"]);
    let path = dir.join("export.jsonl");
    std::fs::write(&path, &exported).unwrap();
    // A third party reads them: the CloudEvents Python SDK.
    let script = r#"
import sys
from cloudevents.core.formats.json import JSONFormat
for line in open(sys.argv[1], "rb"):
    event = JSONFormat().read(None, line)
    print(event.get_id(), event.get_type(), event.get_data()["RoomId"])
"#;
    let output = Command::new("python3").args(["-c", script, path.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let read = String::from_utf8(output.stdout).unwrap();
    assert_eq!(read.lines().count(), 2, "{read}");
    assert!(read.lines().all(|line| line.contains(COMMAND)), "{read}");

    // No gateway holds the spool: requeued into it, for the next start.
    let answer = spool(&dir, &["requeue", "--all"]);
    assert!(answer.starts_with("requeued 2"), "{answer}");
    assert!(spool(&dir, &["ls", "--dead"]).is_empty());
    let waiting = spool(&dir, &["ls", "--json"]);
    for line in read.lines() {
        let id = line.split(' ').next().unwrap();
        assert!(waiting.contains(id), "requeued with its id {id}: {waiting}");
    }
}

/// Posts `poison` (of `command`, which the broker will refuse), then `n` small events of other
/// rooms; waits until every small one is delivered and the gateway has one dead letter of
/// `reason` and nothing waiting. Returns the time from the poison's post to the delivery of the
/// next event.
async fn poison_then(
    backend: Backend,
    prefix: &str,
    gateway: &Running,
    poison: (&str, &[u8]),
    n: usize,
    reason: &str,
) -> Duration {
    let mut watcher = backend.watch(prefix).await;
    let delivered = tokio::spawn(async move {
        let mut seen = std::collections::HashMap::new();
        while seen.len() < n {
            let event = watcher.next(Duration::from_secs(30)).await;
            let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
            if let Some(seq) = value["Seq"].as_u64().filter(|_| value["RoomId"] != "poison") {
                seen.entry(seq).or_insert_with(Instant::now);
            }
        }
        seen
    });
    let mut client = Client::connect(gateway.addr).await;
    let posted = Instant::now();
    assert_eq!(client.post(poison.0, poison.1).await.0, 200);
    for i in 0..n {
        assert_eq!(client.post(COMMAND, &body(&format!("room-{i}"), i, 10)).await.0, 200);
    }
    let seen =
        tokio::time::timeout(Duration::from_secs(30), delivered).await.expect("every small event delivered").unwrap();
    eventually("one dead letter, nothing waiting", Duration::from_secs(15), || async {
        let text = metrics(gateway.addr).await;
        metric(&text, "hookbus_dead_letters") == 1 && metric(&text, "hookbus_outbox_depth") == 0
    })
    .await;
    let text = metrics(gateway.addr).await;
    assert!(text.contains(&format!("reason=\"{reason}\"}} 1")), "{text}");
    seen[&0].duration_since(posted)
}

/// A JetStream stream `name` over everything under `prefix` on the test server, as `limit` sets it.
async fn stream(
    name: &str,
    prefix: &str,
    limit: impl FnOnce(&mut async_nats::jetstream::stream::Config),
) -> async_nats::jetstream::Context {
    use async_nats::jetstream;
    let context = jetstream::new(async_nats::connect(crate::brokers::nats_url()).await.unwrap());
    let mut config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        ..Default::default()
    };
    limit(&mut config);
    context.create_stream(config).await.unwrap();
    context
}

#[tokio::test]
async fn a_message_over_the_jetstream_streams_limit_is_a_dead_letter() {
    let prefix = unique("t");
    let name = unique("S");
    let context = stream(&name, &prefix, |config| config.max_message_size = 1024).await;
    let gateway = Backend::Nats.gateway(&prefix, None, &["--nats-jetstream"]).await;
    let took =
        poison_then(Backend::Nats, &prefix, &gateway, (COMMAND, &body("poison", 0, 3000)), 50, "too_large").await;
    println!("JetStream: from a poison event's post to the next event's delivery: {took:?}");
    let stored = context.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(stored, 50, "every small event is stored, once");
    gateway.stop().await;
    context.delete_stream(&name).await.unwrap();
}

/// A stream over one command family only: an event of another family is refused for good
/// ("no stream covers its subject", not the "no responders" of a leader election) and becomes
/// a dead letter of its own reason, while every event after it is stored. The start-up check
/// names the subjects no stream covers.
#[tokio::test]
async fn an_event_no_jetstream_stream_covers_is_a_dead_letter() {
    let prefix = unique("t");
    let name = unique("S");
    let context = stream(&name, &prefix, |config| config.subjects = vec![format!("{prefix}.Live.>")]).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["serve", "--listen", "127.0.0.1:0", "--bus", "nats", "--nats-url", &crate::brokers::nats_url()])
        .args(["--prefix", &prefix, "--nats-jetstream"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut start_up = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
        let line = line.unwrap();
        start_up.push(line.clone());
        if line.contains("listen=") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let uncovered = start_up.iter().find(|line| line.contains("no JetStream stream covers these subjects"));
    let uncovered = uncovered.unwrap_or_else(|| panic!("the uncovered subjects are named: {start_up:#?}"));
    assert!(uncovered.contains(&format!("{prefix}.Group.CallbackAfterSendMsg")), "{uncovered}");
    assert!(!uncovered.contains(&format!("{prefix}.Live.")), "{uncovered}");
    let gateway = Backend::Nats.gateway(&prefix, None, &["--nats-jetstream"]).await;
    let poison = ("Group.CallbackAfterSendMsg", &body("poison", 0, 10)[..]);
    poison_then(Backend::Nats, &prefix, &gateway, poison, 50, "no_stream").await;
    let stored = context.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(stored, 50, "every Live event is stored, once");
    gateway.stop().await;
    context.delete_stream(&name).await.unwrap();
}

/// An audit event too large for the stream is a dead letter like any event: its notice goes to
/// `{prefix}.deadletter` (under the prefix, where the stream stores it), and the events after
/// it are all stored.
#[tokio::test]
async fn a_dead_audit_events_notice_goes_under_the_prefix() {
    let prefix = unique("t");
    let name = unique("S");
    let context = stream(&name, &prefix, |config| config.max_message_size = 1500).await;
    let flags = ["--nats-jetstream", "--audit", "--dead-letter-destination", "--decision-timeout", "200ms"];
    let gateway = Backend::Nats.gateway(&prefix, None, &flags).await;
    let gift = format!(r#"{{"RoomId":"gift","Extra":"{}"}}"#, "x".repeat(1200));
    assert_eq!(gateway.post("Live.CallbackBeforeSendGift", gift.as_bytes()).await.0, 200);
    let mut client = Client::connect(gateway.addr).await;
    for i in 0..10 {
        assert_eq!(client.post(COMMAND, &body(&format!("room-{i}"), i, 10)).await.0, 200);
    }
    eventually("one dead letter, nothing waiting", Duration::from_secs(15), || async {
        let text = metrics(gateway.addr).await;
        metric(&text, "hookbus_dead_letters") == 1 && metric(&text, "hookbus_outbox_depth") == 0
    })
    .await;
    let stream = context.get_stream(&name).await.unwrap();
    let notice = stream.get_last_raw_message_by_subject(&format!("{prefix}.deadletter")).await;
    let notice = notice.expect("the notice is stored under the prefix");
    let notice: serde_json::Value = serde_json::from_slice(&notice.payload).unwrap();
    assert_eq!((notice["type"].as_str(), notice["reason"].as_str()), (Some("hookbus.decision"), Some("too_large")));
    let last = stream.get_last_raw_message_by_subject(&format!("{prefix}.{COMMAND}")).await;
    let last: serde_json::Value =
        serde_json::from_slice(&last.expect("the events after it are stored").payload).unwrap();
    assert_eq!(last["Seq"], 9, "the last event after the dead audit event is stored");
    gateway.stop().await;
    context.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn an_event_a_full_rabbitmq_queue_keeps_nacking_is_a_dead_letter() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let prefix = unique("t");
    let connection = lapin::Connection::connect(&crate::brokers::amqp_url(), Default::default()).await.unwrap();
    // The queue is bound before any gateway has declared the exchange on a fresh broker.
    crate::brokers::declare_exchange(&connection).await;
    let channel = connection.create_channel().await.unwrap();
    // Holds no message (a consumer would make room) and refuses more: a nack for each event
    // routed to it, while the events of other commands are confirmed.
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
    arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    let queue = format!("{prefix}.full");
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments).await.unwrap();
    let key = format!("{prefix}.Live.CallbackAfterDismissRoom");
    let bind = QueueBindOptions::default();
    channel.queue_bind(queue.as_str().into(), "tencent".into(), key.into(), bind, FieldTable::default()).await.unwrap();
    let gateway = Backend::Amqp.gateway(&prefix, None, &[]).await;
    let poison = ("Live.CallbackAfterDismissRoom", &body("poison", 0, 10)[..]);
    let took = poison_then(Backend::Amqp, &prefix, &gateway, poison, 50, "nacked").await;
    println!("RabbitMQ: from a poison event's post to the next event's delivery: {took:?}");
    gateway.stop().await;
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

/// The test broker (tansu) does not enforce a topic's `max.message.bytes`; the producer's own
/// limit, set to match it, refuses the record with the same code a broker would.
#[tokio::test]
async fn a_record_over_the_kafka_limit_is_a_dead_letter() {
    let prefix = unique("t");
    let flags = ["--kafka-message-max-bytes", "2000"];
    let gateway = Backend::Kafka.gateway(&prefix, None, &flags).await;
    let took =
        poison_then(Backend::Kafka, &prefix, &gateway, (COMMAND, &body("poison", 0, 3000)), 50, "too_large").await;
    println!("Kafka: from a poison event's post to the next event's delivery: {took:?}");
    gateway.stop().await;
}

/// Rooms a body may name that a broker's headers or keys may not take as they are (CR and LF
/// panicked the NATS client, which stopped every publish): each event is delivered with its
/// room (percent-encoded in NATS headers), and so is the event after them.
#[tokio::test]
async fn hostile_room_ids_never_stall_a_bus() {
    let hostile = [
        "a\r\nNats-Msg-Id: forged".to_owned(),
        "房间-1".to_owned(),
        "x".repeat(60_000),
        "tab\there\u{0}nul".to_owned(),
    ];
    for backend in [Backend::Nats, Backend::Amqp, Backend::Kafka] {
        let prefix = unique("t");
        let gateway = backend.gateway(&prefix, None, &[]).await;
        let mut watcher = backend.watch(&prefix).await;
        let mut client = Client::connect(gateway.addr).await;
        for (n, room) in hostile.iter().enumerate() {
            let body = serde_json::json!({"RoomId": room, "Seq": n}).to_string();
            assert_eq!(client.post(COMMAND, body.as_bytes()).await.0, 200, "{backend:?}");
        }
        assert_eq!(client.post(COMMAND, &body("after", 99, 10)).await.0, 200);
        let mut seen = std::collections::HashSet::new();
        while seen.len() < hostile.len() + 1 {
            let event = watcher.next(Duration::from_secs(20)).await;
            let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
            seen.insert(value["Seq"].as_u64().unwrap());
            if let Some(key) = event.attributes.get("partitionkey") {
                // The room, cut at 256 bytes (all the long one's characters are ASCII).
                let seq = value["Seq"].as_u64().unwrap() as usize;
                let room = hostile.get(seq).map_or(value["RoomId"].as_str().unwrap(), String::as_str);
                assert_eq!(key, &room[..room.len().min(256)], "{backend:?}");
            }
        }
        eventually("nothing waiting", Duration::from_secs(15), || async {
            metric(&metrics(gateway.addr).await, "hookbus_outbox_depth") == 0
        })
        .await;
        assert_eq!(metric(&metrics(gateway.addr).await, "hookbus_dead_letters"), 0, "{backend:?}: all delivered");
        gateway.stop().await;
    }
}

/// A JetStream stream full with `discard: new` refuses every event: a retry, logged and counted,
/// until `--dead-letter-after` takes the events that cannot get in for dead letters.
#[tokio::test]
async fn a_full_jetstream_stream_is_retried_then_dead_lettered_after_n_attempts() {
    use async_nats::jetstream;
    let prefix = unique("t");
    let name = unique("S");
    let context = stream(&name, &prefix, |config| {
        config.max_messages = 5;
        config.discard = jetstream::stream::DiscardPolicy::New;
    })
    .await;
    let flags = ["--nats-jetstream", "--dead-letter-after", "3"];
    let gateway = Backend::Nats.gateway(&prefix, None, &flags).await;
    let mut client = Client::connect(gateway.addr).await;
    for n in 0..8 {
        assert_eq!(client.post(COMMAND, &body(&format!("room-{n}"), n, 10)).await.0, 200);
    }
    eventually("the three that do not fit are dead letters", Duration::from_secs(20), || async {
        let text = metrics(gateway.addr).await;
        metric(&text, "hookbus_dead_letters") == 3 && metric(&text, "hookbus_outbox_depth") == 0
    })
    .await;
    let text = metrics(gateway.addr).await;
    assert!(text.contains("reason=\"attempts\"} 3"), "{text}");
    assert!(metric(&text, "hookbus_publishes_retried_total") >= 2, "retried before: {text}");
    let stored = context.get_stream(&name).await.unwrap().info().await.unwrap().state.messages;
    assert_eq!(stored, 5);
    gateway.stop().await;
    context.delete_stream(&name).await.unwrap();
}

/// The exchange deleted under a running gateway: the link is re-established and the exchange
/// declared again; the events meanwhile are settled (unroutable: nothing is bound to the new
/// exchange yet), nothing stalls, and once a queue is bound again it gets the next event.
#[tokio::test]
async fn a_rabbitmq_exchange_deleted_while_running_is_declared_again() {
    use lapin::options::ExchangeDeleteOptions;
    let prefix = unique("t");
    let exchange = unique("x");
    let connection = lapin::Connection::connect(&crate::brokers::amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let gateway = Backend::Amqp.gateway(&prefix, None, &["--amqp-exchange", &exchange]).await;
    let mut client = Client::connect(gateway.addr).await;
    let mut consumer = bound(&channel, &exchange, &prefix).await;
    assert_eq!(client.post(COMMAND, &body("first", 0, 10)).await.0, 200);
    let first =
        tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.expect("delivered").unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first.data).contains("first"));

    channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
    for n in 1..=5 {
        assert_eq!(client.post(COMMAND, &body(&format!("room-{n}"), n, 10)).await.0, 200);
    }
    eventually("the events after the deletion are settled", Duration::from_secs(20), || async {
        let text = metrics(gateway.addr).await;
        let settled =
            metric(&text, "hookbus_publishes_confirmed_total") + metric(&text, "hookbus_publishes_unroutable_total");
        metric(&text, "hookbus_outbox_depth") == 0 && settled >= 6
    })
    .await;
    let mut consumer = bound(&channel, &exchange, &prefix).await;
    assert_eq!(client.post(COMMAND, &body("after", 9, 10)).await.0, 200);
    let after =
        tokio::time::timeout(Duration::from_secs(10), consumer.next()).await.expect("delivered").unwrap().unwrap();
    assert!(String::from_utf8_lossy(&after.data).contains("after"));
    gateway.stop().await;
    channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await.unwrap();
}

/// A consumer of a fresh queue bound to everything under `prefix` on `exchange`.
async fn bound(channel: &lapin::Channel, exchange: &str, prefix: &str) -> lapin::Consumer {
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
    let key = format!("{prefix}.#");
    let bind = QueueBindOptions::default();
    channel.queue_bind(queue.name().clone(), exchange.into(), key.into(), bind, FieldTable::default()).await.unwrap();
    let consume = BasicConsumeOptions { no_ack: true, ..Default::default() };
    channel.basic_consume(queue.name().clone(), "".into(), consume, FieldTable::default()).await.unwrap()
}
