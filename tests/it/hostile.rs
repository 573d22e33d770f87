//! Careless and hostile responders, on every bus: a 1 MB reply, a 10 KB `ErrorInfo`, a reply
//! that would forge a log line and colour a terminal, and a flood of replies to ids the
//! gateway never asked. Each decision is answered within the deadline, each flaw is logged as
//! one bounded, escaped line and counted, and the flood leaves the gateway's memory flat. The
//! gateway runs as the binary, so that its log lines and its RSS can be read; the responders
//! are plain clients of each broker.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use hyper::Method;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::mpsc;

use crate::brokers::{amqp_url, kafka_brokers, nats_url, Backend};
use crate::support::{
    eventually, metric, metrics, request, signal, signed, spawn_binary_with_logs, unique, APP, TOKEN,
};

const GIFT: &str = "Live.CallbackBeforeSendGift";
/// The gateway's deadline in these tests, and the slack allowed past it.
const DEADLINE: Duration = Duration::from_millis(1500);
const SLACK: Duration = Duration::from_millis(500);
/// Longer than any line the gateway logs about a reply: its fields are cut to 256 bytes.
const BOUNDED_LINE: usize = 1024;
const FLOOD: usize = 10_000;
const FLOOD_REPLY_BYTES: usize = 2048;

macro_rules! hostile_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            // The binary is read with blocking calls: keep a worker free.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hostile_replies_get_the_fallback_bounded_log_lines_and_no_memory() {
                hostile_replies($backend).await
            }
        }
    };
}

hostile_tests!(nats, Backend::Nats);
hostile_tests!(amqp, Backend::Amqp);
hostile_tests!(kafka, Backend::Kafka);

/// What the responder does with the next request.
enum Script {
    /// Reply with these bytes.
    Reply(Vec<u8>),
    /// Send this many replies of about this many bytes to fresh ids on the request's reply
    /// address, and nothing to the request itself.
    Flood(usize, usize),
}

/// A reply the gateway can never have asked for: a fresh id, and some bytes.
fn flood_reply(bytes: usize) -> (String, Vec<u8>) {
    let reply = format!(r#"{{"ErrorCode":0,"ErrorInfo":"{}"}}"#, "f".repeat(bytes));
    (uuid::Uuid::now_v7().to_string(), reply.into_bytes())
}

/// Answers the gift requests under `prefix` by the scripts sent to it, on `backend`'s broker;
/// returns once it receives requests.
async fn responder(backend: Backend, prefix: &str, scripts: mpsc::UnboundedReceiver<Script>) {
    let destination = format!("{prefix}.decide.{GIFT}");
    match backend {
        Backend::Nats => nats_responder(destination, scripts).await,
        Backend::Amqp => amqp_responder(destination, scripts).await,
        Backend::Kafka => kafka_responder(destination, scripts).await,
    }
}

async fn nats_responder(subject: String, mut scripts: mpsc::UnboundedReceiver<Script>) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let mut requests = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let reply_to = request.reply.unwrap();
            match scripts.recv().await.unwrap() {
                Script::Reply(reply) => client.publish(reply_to, reply.into()).await.unwrap(),
                Script::Flood(replies, bytes) => {
                    // Replies arrive on `{inbox}.{event id}`: the same inbox, ids never asked.
                    let inbox = reply_to.rsplit_once('.').unwrap().0.to_owned();
                    for _ in 0..replies {
                        let (id, reply) = flood_reply(bytes);
                        client.publish(format!("{inbox}.{id}"), reply.into()).await.unwrap();
                    }
                }
            }
            client.flush().await.unwrap();
        }
    });
}

async fn amqp_responder(key: String, mut scripts: mpsc::UnboundedReceiver<Script>) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
    let bind = QueueBindOptions::default();
    channel.queue_bind(queue.name().clone(), "tencent".into(), key.into(), bind, FieldTable::default()).await.unwrap();
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut requests =
        channel.basic_consume(queue.name().clone(), "".into(), options, FieldTable::default()).await.unwrap();
    tokio::spawn(async move {
        let _connection = connection;
        while let Some(Ok(request)) = requests.next().await {
            let reply_to = request.properties.reply_to().clone().unwrap();
            let id = request.properties.correlation_id().clone().unwrap();
            let publish = |id: String, reply: Vec<u8>| {
                let (channel, reply_to) = (channel.clone(), reply_to.clone());
                async move {
                    let properties = BasicProperties::default().with_correlation_id(id.into());
                    let options = BasicPublishOptions::default();
                    channel.basic_publish("".into(), reply_to, options, &reply, properties).await.unwrap();
                }
            };
            match scripts.recv().await.unwrap() {
                Script::Reply(reply) => publish(id.to_string(), reply).await,
                Script::Flood(replies, bytes) => {
                    for _ in 0..replies {
                        let (id, reply) = flood_reply(bytes);
                        publish(id, reply).await;
                    }
                }
            }
        }
    });
}

async fn kafka_responder(topic: String, mut scripts: mpsc::UnboundedReceiver<Script>) {
    // The topic exists and its one partition is assigned, not subscribed: no group to join
    // before the first request, which must be answered within its deadline.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    admin.create_topics([&NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("hostile"))
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "2")
        .create()
        .unwrap();
    tokio::spawn(async move {
        loop {
            let request = consumer.recv().await.unwrap();
            let header = |key: &str| {
                let found = request.headers()?.iter().find(|h| h.key == key)?;
                Some(String::from_utf8_lossy(found.value?).into_owned())
            };
            let (reply_topic, id) = (header("kafka_replyTopic").unwrap(), header("kafka_correlationId").unwrap());
            let send = |id: String, reply: Vec<u8>| {
                let (producer, reply_topic) = (producer.clone(), reply_topic.clone());
                async move {
                    let headers = OwnedHeaders::new().insert(Header { key: "kafka_correlationId", value: Some(&id) });
                    let record = FutureRecord::<(), _>::to(&reply_topic).payload(&reply).headers(headers);
                    producer.send(record, Duration::from_secs(10)).await.map_err(|(error, _)| error).unwrap();
                }
            };
            match scripts.recv().await.unwrap() {
                Script::Reply(reply) => send(id, reply).await,
                Script::Flood(replies, bytes) => {
                    join_all((0..replies).map(|_| {
                        let (id, reply) = flood_reply(bytes);
                        send(id, reply)
                    }))
                    .await;
                }
            }
        }
    });
}

/// The gateway binary on `backend`, its address and its log lines.
fn gateway(
    backend: Backend,
    prefix: &str,
    extra: &[&str],
) -> (std::process::Child, std::net::SocketAddr, Receiver<String>) {
    let mut flags = backend.flags(None);
    flags.extend(["--prefix", prefix, "--sdk-app-id", APP, "--token", TOKEN].map(String::from));
    flags.extend(["--instance-id".to_owned(), unique("hostile")]);
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    spawn_binary_with_logs(&flags)
}

/// Posts a gift (a new one each time: the same signed request again would be a replay); the
/// answer and how long it took.
async fn gift(addr: std::net::SocketAddr) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let body = json!({"RoomId": unique("r")}).to_string();
    let (status, body) = request(addr, Method::POST, &signed(GIFT), body.as_bytes()).await;
    assert_eq!(status, 200);
    (serde_json::from_slice(&body).unwrap(), started.elapsed())
}

/// The log lines logged so far (the gateway writes a line at once).
fn lines(logs: &Receiver<String>, wait: Duration) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = logs.recv_timeout(wait) {
        lines.push(line);
    }
    lines
}

/// The one line about a flawed reply among `lines`, which must be bounded and escaped.
fn flawed_line<'a>(lines: &'a [String], label: &str) -> &'a str {
    let flawed: Vec<&String> = lines.iter().filter(|line| line.contains("flawed decision reply")).collect();
    assert_eq!(flawed.len(), 1, "one line for the flawed reply: {lines:#?}");
    let line = flawed[0];
    assert!(line.contains(&format!("label=\"{label}\"")), "{line}");
    assert!(line.len() < BOUNDED_LINE, "a bounded line: {} bytes", line.len());
    assert!(!line.contains('\u{1b}'), "no raw escape: {line}");
    line
}

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    kb * 1024
}

async fn hostile_replies(backend: Backend) {
    let prefix = unique("t");
    let (scripts, scripted) = mpsc::unbounded_channel();
    responder(backend, &prefix, scripted).await;
    let (mut child, addr, logs) = gateway(backend, &prefix, &[]);
    let deny = |info: &str| json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":info});
    let fallback = deny("hookbus fallback: invalid reply");
    let script = |script| scripts.send(script).unwrap();

    // A valid decision first: the path works, and the memory it takes is in the baseline.
    script(Script::Reply(br#"{"ErrorCode":102150,"ErrorInfo":"fine"}"#.to_vec()));
    let (answer, _) = gift(addr).await;
    assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":102150,"ErrorInfo":"fine"}));

    // Floods of replies to ids never asked: counted, logged a line a second, nothing kept. The
    // client libraries buffer a flood that comes faster than it is read, and the allocator
    // keeps that memory for the next one: the peak of one flood or two varies from run to run
    // (40 to 57 MB here), but two more floods must not rise a flood above it: kept replies
    // would add two floods' bytes (half a flood failed a clean-clone run by 0.3 MB, with no growth).
    let flooded = (FLOOD * FLOOD_REPLY_BYTES) as u64;
    let mut resident = vec![rss(child.id())];
    for flood in 1..=4u64 {
        let _ = lines(&logs, Duration::from_millis(100));
        script(Script::Flood(FLOOD, FLOOD_REPLY_BYTES));
        let started = Instant::now();
        let (answer, took) = gift(addr).await;
        assert_eq!(answer, deny("hookbus fallback: decision timeout"), "the request itself was not answered");
        assert!(took < DEADLINE + SLACK, "answered at the deadline: {took:?}");
        eventually("every flooded reply to be counted", Duration::from_secs(60), || async move {
            metric(&metrics(addr).await, "hookbus_late_replies_total") >= flood * FLOOD as u64
        })
        .await;
        let took = started.elapsed();
        resident.push(rss(child.id()));
        let logged = lines(&logs, Duration::from_millis(200));
        let dropped = logged.iter().filter(|line| line.contains("reply for no waiting request")).count();
        assert!(
            (1..=took.as_secs() as usize + 2).contains(&dropped),
            "{dropped} lines for {FLOOD} replies in {took:?}"
        );
    }
    let (before, early, later) = (resident[0], resident[1].max(resident[2]), resident[3].max(resident[4]));
    assert!(early < before + 4 * flooded, "RSS {resident:?} after floods of {flooded} bytes of replies");
    assert!(later < early + flooded, "RSS {resident:?}: floods 3 and 4 of {flooded} bytes added to the first two");

    // A 1 MB reply: invalid unread, the fallback at once.
    let mut huge = br#"{"ErrorCode":0,"ErrorInfo":""#.to_vec();
    huge.resize(1_000_000 - 2, b'x');
    huge.extend_from_slice(br#""}"#);
    script(Script::Reply(huge));
    let (answer, took) = gift(addr).await;
    assert_eq!(answer, fallback);
    assert!(took < DEADLINE, "answered as the reply came, not at the deadline: {took:?}");
    let logged = lines(&logs, Duration::from_millis(200));
    let line = flawed_line(&logged, "too_large");
    assert!(line.contains("bytes=1000000"), "{line}");

    // A 10 KB ErrorInfo: cut to 256 bytes, the responder's decision kept.
    let long = format!(r#"{{"ErrorCode":1,"ErrorInfo":"{}"}}"#, "i".repeat(10_000));
    script(Script::Reply(long.into_bytes()));
    let (answer, took) = gift(addr).await;
    assert_eq!(answer, deny(&"i".repeat(256)));
    assert!(took < DEADLINE, "{took:?}");
    flawed_line(&lines(&logs, Duration::from_millis(200)), "error_info_cut");

    // A reply holding a newline, a forged log line and ANSI escapes: one escaped line.
    let forged = "{\"ErrorCode\":0}\n2026-01-01T00:00:00.000000Z  INFO hookbus: forged=1 \u{1b}[2J\u{1b}[31mred";
    script(Script::Reply(forged.as_bytes().to_vec()));
    let (answer, took) = gift(addr).await;
    assert_eq!(answer, fallback);
    assert!(took < DEADLINE, "{took:?}");
    let logged = lines(&logs, Duration::from_millis(200));
    let line = flawed_line(&logged, "not_a_reply");
    assert!(line.contains(r"\n2026-01-01T00:00:00") && line.contains(r"\u{1b}[31m"), "escaped: {line}");
    assert_eq!(logged.iter().filter(|line| line.contains("forged=1")).count(), 1, "no forged line: {logged:#?}");

    let text = metrics(addr).await;
    for label in ["too_large", "error_info_cut", "not_a_reply"] {
        assert!(text.contains(&format!("hookbus_bad_replies_total{{reason=\"{label}\"}} 1")), "{label}:\n{text}");
    }
    assert!(text.contains(&format!("hookbus_decisions_total{{command=\"{GIFT}\",outcome=\"invalid\",rule=\"\"}} 2")));
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// In the JSON format the same reply is a JSON string that decodes to the bytes as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_json_logs_a_hostile_reply_is_a_json_string() {
    let prefix = unique("t");
    let (scripts, scripted) = mpsc::unbounded_channel();
    responder(Backend::Nats, &prefix, scripted).await;
    let (mut child, addr, logs) = gateway(Backend::Nats, &prefix, &["--log-format", "json"]);
    let forged = "{\"ErrorCode\":0}\n{\"level\":\"INFO\",\"forged\":1}\u{1b}[31m\u{ff}";
    scripts.send(Script::Reply(forged.as_bytes().to_vec())).unwrap();
    let (answer, _) = gift(addr).await;
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: invalid reply");
    let logged = lines(&logs, Duration::from_millis(300));
    let line = logged.iter().find(|line| line.contains("flawed decision reply")).expect("the flawed reply is logged");
    let entry: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
    assert_eq!(entry["reply"], forged, "the reply, JSON-escaped: {line}");
    assert_eq!(entry["label"], "not_a_reply");
    assert_eq!(logged.iter().filter(|line| line.contains("forged")).count(), 1, "{logged:#?}");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

/// A flood faster than the gateway reads it overflows the NATS client's buffer of a
/// subscription (65,536 messages): the client drops what does not fit, an event each, and
/// those are logged at most once a second too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_flood_past_the_client_buffer_is_logged_a_line_a_second() {
    let prefix = unique("t");
    let (scripts, scripted) = mpsc::unbounded_channel();
    responder(Backend::Nats, &prefix, scripted).await;
    let (mut child, addr, logs) = gateway(Backend::Nats, &prefix, &[]);
    let flood = 300_000;
    scripts.send(Script::Flood(flood, 8)).unwrap();
    let started = Instant::now();
    let (answer, _) = gift(addr).await;
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: decision timeout");
    // Until the flood has been read: the count stops growing. The client drops what does not
    // fit in its buffer, so not every reply is counted.
    let (mut counted, mut logged) = (0, Vec::new());
    loop {
        logged.extend(lines(&logs, Duration::from_millis(300)));
        let now = metric(&metrics(addr).await, "hookbus_late_replies_total");
        if now == counted {
            break;
        }
        counted = now;
    }
    let took = started.elapsed();
    let about = |what: &str| logged.iter().filter(|line| line.contains(what)).count();
    let (dropped, unknown) = (about("slow consumer"), about("reply for no waiting request"));
    eprintln!("{flood} replies in {took:?}: {counted} counted, {dropped} lines on drops, {unknown} on unknown ids");
    for lines in [dropped, unknown] {
        assert!(lines <= took.as_secs() as usize + 2, "{lines} lines in {took:?}: {logged:#?}");
    }
    assert!(counted > 0 && about("slow consumers for subscription") == 0, "{logged:#?}");
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
