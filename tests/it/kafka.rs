//! What only the Kafka bus does: per-instance reply topics, the Spring Kafka request-reply
//! headers, and topic management.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::brokers::{kafka_brokers, Backend};
use hyper::Method;

use crate::support::{burst, eventually, metric, metrics, request, unique, Running, APP, TOKEN};

/// Creates `topic` on the test broker, as an operator would before the gateway starts.
async fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    admin.create_topics([&NewTopic::new(topic, 1, TopicReplication::Fixed(1))], &AdminOptions::new()).await.unwrap();
}

#[tokio::test]
async fn two_instances_each_get_their_own_replies() {
    let prefix = unique("t");
    let _responder = Backend::Kafka.responder(&prefix, 102120, Duration::ZERO).await;
    let first = Backend::Kafka.gateway(&prefix, None, &["--instance-id", "first"]).await;
    let second = Backend::Kafka.gateway(&prefix, None, &["--instance-id", "second"]).await;
    let gift = "Live.CallbackBeforeSendGift";
    let posts = (0..10).flat_map(|n| {
        let body = json!({"CallbackCommand":gift,"RoomId":format!("r{n}")}).to_string();
        [(&first, body.clone()), (&second, body)]
    });
    let answers = join_all(posts.map(|(gateway, body)| async move { gateway.post(gift, body.as_bytes()).await })).await;
    for (status, answer) in answers {
        assert_eq!(status, 200);
        assert_eq!(answer["ErrorCode"], 102120, "every gift gets the responder's decision: {answer}");
    }
    for gateway in [&first, &second] {
        let metrics = metrics(gateway.addr).await;
        assert!(metrics.contains("hookbus_late_replies_total 0"), "no instance saw another's replies");
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn requests_carry_the_spring_kafka_reply_headers() {
    let prefix = unique("t");
    let topic = format!("{prefix}.decide.Live.CallbackBeforeSendGift");
    create_topic(&topic).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("spring"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", kafka_brokers()).create().unwrap();
    let replier = tokio::spawn(async move {
        let request = consumer.recv().await.unwrap();
        let headers = request.headers().unwrap();
        let header = |key: &str| {
            headers.iter().find(|h| h.key == key).map(|h| String::from_utf8_lossy(h.value.unwrap()).into_owned())
        };
        let reply_topic = header("kafka_replyTopic").unwrap();
        assert_eq!(header("kafka_correlationId"), header("ce_id"));
        assert!(header("ce_deadline").is_some());
        assert_eq!(request.key(), Some(&b"room-7"[..]));
        let correlation = header("kafka_correlationId").unwrap();
        let headers =
            OwnedHeaders::new().insert(Header { key: "kafka_correlationId", value: Some(correlation.as_str()) });
        let reply = json!({"ErrorCode":1,"ErrorInfo":"sold out"}).to_string();
        let record = FutureRecord::<(), _>::to(&reply_topic).payload(&reply).headers(headers);
        producer.send(record, Duration::from_secs(5)).await.unwrap();
        reply_topic
    });
    let gateway = Backend::Kafka.gateway(&prefix, None, &["--instance-id", "spring"]).await;
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"room-7"}"#).await;
    assert_eq!((status, answer), (200, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"sold out"})));
    assert_eq!(replier.await.unwrap(), format!("{prefix}.replies.spring"));
    gateway.stop().await;
}

#[tokio::test]
async fn without_topic_creation_a_missing_topic_keeps_the_event_until_it_exists() {
    let prefix = unique("t");
    let reply_topic = format!("{prefix}.replies.fixed");
    create_topic(&reply_topic).await;
    let flags = ["--kafka-create-topics", "false", "--kafka-reply-topic", &reply_topic];
    let gateway = Backend::Kafka.gateway(&prefix, None, &flags).await;
    let (status, _) = gateway.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200);
    let addr = gateway.addr;
    eventually("the missing topic to hold the event back", Duration::from_secs(10), || async {
        let text = metrics(addr).await;
        text.contains("hookbus_outbox_depth 1") && !text.contains("hookbus_publishes_retried_total 0")
    })
    .await;
    let topic = format!("{prefix}.Live.CallbackAfterCreateRoom");
    create_topic(&topic).await;
    eventually("the event to be delivered once the topic exists", Duration::from_secs(20), || async {
        metrics(addr).await.contains("hookbus_publishes_confirmed_total 1")
    })
    .await;
    assert_eq!(gateway.stop().await.lost, 0);
}

/// A Kafka outage, injected with librdkafka's in-process mock cluster (the real broker's
/// clients bypass a proxy): the only broker goes down in the middle of a burst and comes back.
#[tokio::test]
async fn a_broker_outage_in_the_middle_of_a_burst_loses_nothing() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let prefix = unique("t");
    let topic = format!("{prefix}.Live.CallbackAfterMemberStateChanged");
    cluster.create_topic(&topic, 3, 1).unwrap();
    cluster.create_topic(&format!("{prefix}.replies.mock"), 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let flags = [
        "--bus",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--prefix",
        &prefix,
        "--instance-id",
        "mock",
        "--sdk-app-id",
        crate::support::APP,
        "--token",
        crate::support::TOKEN,
    ];
    let gateway = Running::connect(&flags).await;
    let burst = tokio::spawn(burst(gateway.addr, 0..2000, 8));
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.broker_down(1).unwrap();
    eventually("events waiting on the broker during the outage", Duration::from_secs(10), || async {
        metric(&metrics(gateway.addr).await, "hookbus_outbox_depth") > 0
    })
    .await;
    let depth = metric(&metrics(gateway.addr).await, "hookbus_outbox_depth");
    cluster.broker_up(1).unwrap();
    let sent = burst.await.unwrap();
    assert_eq!(sent.len(), 2000, "every event answered 200");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("check"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut received = 0;
    while seen.len() < sent.len() {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("records keep coming");
        let Ok(record) = record else { continue };
        let body: serde_json::Value = serde_json::from_slice(record.payload().unwrap()).unwrap();
        seen.insert(body["RoomId"].as_str().unwrap().to_owned());
        received += 1;
    }
    println!(
        "kafka broker outage: waiting during outage {depth}, acknowledged {}, delivered {received}, lost 0",
        sent.len()
    );
    assert_eq!(seen, sent);
    assert_eq!(gateway.stop().await.lost, 0);
}

// The edges of the cluster: a reply topic deleted under the gateway, a broker back with empty
// storage, topic creation off. The other side is confluent-kafka (Python): an operator's
// AdminClient, a responder, and a consumer counting what arrived by `ce_id`.

/// Deletes the topics given after the brokers.
const PY_DELETE: &str = r#"
import sys
from confluent_kafka.admin import AdminClient
admin = AdminClient({"bootstrap.servers": sys.argv[1]})
for topic, future in admin.delete_topics(sys.argv[2:], operation_timeout=10).items():
    future.result()
"#;

/// Answers every request on a topic (created when missing) with an ErrorCode, to the request's
/// `kafka_replyTopic` with its `kafka_correlationId`, as a Spring `@SendTo` listener would.
const PY_RESPOND: &str = r#"
import json, sys
from confluent_kafka import OFFSET_END, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
brokers, topic, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = AdminClient({"bootstrap.servers": brokers})
consumer = Consumer({"bootstrap.servers": brokers, "group.id": "py-" + topic, "fetch.wait.max.ms": 10})
partitions = {}
while not partitions:
    try:
        admin.create_topics([NewTopic(topic, 6, 1)])[topic].result()
    except KafkaException as error:
        print("create", topic, error, file=sys.stderr)  # it exists already, or try again
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
producer = Producer({"bootstrap.servers": brokers, "linger.ms": 0})
reply = json.dumps({"ErrorCode": code, "ErrorInfo": "from confluent-kafka"}).encode()
print("assigned", len(partitions), flush=True)
while True:
    request = consumer.poll(0.1)
    if request is None or request.error():
        continue
    headers = dict(request.headers() or [])
    producer.produce(headers["kafka_replyTopic"].decode(), reply,
                     headers=[("kafka_correlationId", headers["kafka_correlationId"])])
    producer.poll(0)
"#;

/// Reads a topic from its start until every RoomId of the JSON list on stdin arrived (or 60 s
/// passed); prints {"records": N, "ids": {ce_id: RoomId}}.
const PY_COLLECT: &str = r#"
import json, sys, time, uuid
from confluent_kafka import Consumer
brokers, topic = sys.argv[1], sys.argv[2]
expected = set(json.load(sys.stdin))
consumer = Consumer({"bootstrap.servers": brokers, "group.id": "py-" + uuid.uuid4().hex,
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.subscribe([topic])
ids, records, deadline = {}, 0, time.time() + 60
while not expected <= set(ids.values()) and time.time() < deadline:
    record = consumer.poll(0.2)
    if record is None or record.error():
        continue
    records += 1
    ids[dict(record.headers())["ce_id"].decode()] = json.loads(record.value())["RoomId"]
consumer.close()
print(json.dumps({"records": records, "ids": ids}))
"#;

/// Runs a confluent-kafka script to its end; returns its stdout.
async fn python(script: &str, args: &[&str], stdin: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/services.sh installs confluent-kafka)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python {args:?}: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// A confluent-kafka responder running until dropped (the child is killed on drop).
struct PyResponder(#[allow(dead_code)] tokio::process::Child);

impl PyResponder {
    /// Starts it; returns once it reads every partition of `topic`.
    async fn start(brokers: &str, topic: &str, code: i64) -> PyResponder {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", PY_RESPOND, brokers, topic, &code.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await;
        let line = line.expect("the responder starts in time").unwrap().expect("the responder runs");
        assert!(line.starts_with("assigned"), "{line}");
        PyResponder(child)
    }
}

/// Every event of `topic` on `brokers` by its `ce_id`, read until all of `rooms` arrived;
/// returns the record count and the RoomIds by event id.
async fn collect_by_id(brokers: &str, topic: &str, rooms: &HashSet<String>) -> (u64, HashMap<String, String>) {
    let expected = serde_json::to_string(rooms).unwrap();
    let out: serde_json::Value = serde_json::from_str(&python(PY_COLLECT, &[brokers, topic], &expected).await).unwrap();
    let ids = serde_json::from_value(out["ids"].clone()).unwrap();
    (out["records"].as_u64().unwrap(), ids)
}

/// Posts gifts until one is decided with `code` (a responder answered), or panics after
/// `limit`; returns how many posts that took.
async fn decided(gateway: &Running, code: i64, limit: Duration) -> usize {
    let started = Instant::now();
    for attempt in 1.. {
        // A distinct body each time: the same signed callback again is a replay, answered as before.
        let body = json!({"RoomId": "gift", "Nonce": uuid::Uuid::now_v7().to_string()}).to_string();
        let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", body.as_bytes()).await;
        assert_eq!(status, 200, "{answer}");
        if answer["ErrorCode"] == code {
            return attempt;
        }
        assert!(started.elapsed() < limit, "no gift decided by the responder within {limit:?}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unreachable!()
}

#[tokio::test]
async fn a_deleted_reply_topic_is_created_again_and_decisions_resume() {
    let prefix = unique("t");
    let brokers = kafka_brokers();
    let reply_topic = format!("{prefix}.replies.deleted");
    let events = format!("{prefix}.Live.CallbackAfterMemberStateChanged");
    let _responder = PyResponder::start(
        &brokers,
        &hookbus::bus::request_destination(&prefix, "Live.CallbackBeforeSendGift"),
        102160,
    )
    .await;
    let gateway = Backend::Kafka.gateway(&prefix, None, &["--kafka-reply-topic", &reply_topic]).await;
    decided(&gateway, 102160, Duration::from_secs(30)).await;
    let mut posted = burst(gateway.addr, 0..100, 2).await;

    python(PY_DELETE, &[&brokers, &reply_topic], "").await;
    let deleted = Instant::now();
    // Without the topic, answers and events go on (gifts get their fallback).
    posted.extend(burst(gateway.addr, 100..200, 2).await);
    let posts = decided(&gateway, 102160, Duration::from_secs(20)).await;
    let again = deleted.elapsed();
    posted.extend(burst(gateway.addr, 200..300, 2).await);
    assert_eq!(posted.len(), 300, "every event answered 200");

    let (records, ids) = collect_by_id(&brokers, &events, &posted).await;
    let rooms: HashSet<String> = ids.values().cloned().collect();
    assert_eq!(rooms, posted, "every event published, before, while and after the reply topic was missing");
    assert_eq!(ids.len(), posted.len(), "one id per event");
    let text = metrics(gateway.addr).await;
    assert_eq!(metric(&text, "hookbus_bus_connected"), 1);
    println!(
        "kafka reply topic deleted: decided by the responder again {again:?} after the deletion ({posts} posts), \
         events posted 300, delivered {records} records, {} distinct ids",
        ids.len()
    );
    assert_eq!(gateway.stop().await.lost, 0);
}

/// A tansu broker of the test's own on `port`, in memory: started again, it comes back with
/// empty storage, as a broker whose disk was lost. Stopped when dropped.
struct OwnTansu(std::process::Child);

impl OwnTansu {
    fn start(port: u16) -> OwnTansu {
        let tools = std::env::var("HOOKBUS_TOOLS_DIR").unwrap_or_else(|_| "/opt/hookbus-tools".into());
        let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", env!("HOME")));
        let binary = [format!("{tools}/bin/tansu"), format!("{cargo_home}/bin/tansu")]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or_else(|| "tansu".into());
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu is installed (scripts/services.sh)");
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(up.elapsed() < Duration::from_secs(10), "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnTansu(child)
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_back_with_empty_storage_is_recovered_without_a_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let brokers = format!("127.0.0.1:{port}");
    let broker = OwnTansu::start(port);
    let prefix = unique("t");
    let events = format!("{prefix}.Live.CallbackAfterMemberStateChanged");
    let flags = ["--bus", "kafka", "--kafka-brokers", &brokers, "--prefix", &prefix, "--instance-id", "wiped"];
    let flags = [&flags[..], &["--sdk-app-id", APP, "--token", TOKEN]].concat();
    let gateway = Running::connect(&flags).await;
    let before = burst(gateway.addr, 0..300, 4).await;
    // What the first broker holds is read now: it goes with its storage.
    let (_, first) = collect_by_id(&brokers, &events, &before).await;

    drop(broker);
    let addr = gateway.addr;
    eventually("the gateway to see the broker gone", Duration::from_secs(10), || async move {
        metric(&metrics(addr).await, "hookbus_bus_connected") == 0
    })
    .await;
    let during = burst(gateway.addr, 300..600, 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // the broker stays away a while
    let _broker = OwnTansu::start(port);
    let back = Instant::now();
    let after = burst(gateway.addr, 600..900, 4).await;
    assert_eq!((before.len(), during.len(), after.len()), (300, 300, 300), "every event answered 200");

    let expected: HashSet<String> = during.union(&after).cloned().collect();
    let (records, second) = collect_by_id(&brokers, &events, &expected).await;
    let delivered_after = back.elapsed();
    let _responder = PyResponder::start(
        &brokers,
        &hookbus::bus::request_destination(&prefix, "Live.CallbackBeforeSendGift"),
        102170,
    )
    .await;
    let posts = decided(&gateway, 102170, Duration::from_secs(30)).await;
    let decided_after = back.elapsed();

    let mut ids_of: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, room) in first.iter().chain(&second) {
        ids_of.entry(room.clone()).or_default().insert(id.clone());
    }
    let all: HashSet<String> = before.iter().chain(&expected).cloned().collect();
    assert_eq!(ids_of.keys().cloned().collect::<HashSet<_>>(), all, "every event delivered");
    assert!(ids_of.values().all(|ids| ids.len() == 1), "an event sent again keeps its id");
    println!(
        "kafka broker back with empty storage: 900 events answered 200 (300 before the stop, 300 while away, \
         300 after), all delivered by {delivered_after:?} after the broker returned ({records} records on the new \
         broker), a gift decided by a responder {decided_after:?} after ({posts} posts), no gateway restart"
    );
    assert_eq!(gateway.stop().await.lost, 0);
}

#[tokio::test]
async fn without_topic_creation_the_gateway_still_creates_its_own_reply_topic() {
    let prefix = unique("t");
    let brokers = kafka_brokers();
    let events = format!("{prefix}.Live.CallbackAfterMemberStateChanged");
    create_topic(&events).await;
    let _responder = PyResponder::start(
        &brokers,
        &hookbus::bus::request_destination(&prefix, "Live.CallbackBeforeSendGift"),
        102180,
    )
    .await;
    let gateway = Backend::Kafka.gateway(&prefix, None, &["--kafka-create-topics", "false"]).await;
    let addr = gateway.addr;
    eventually("the gateway to be ready", Duration::from_secs(10), || async move {
        request(addr, Method::GET, "/readyz", b"").await.0 == 200
    })
    .await;
    decided(&gateway, 102180, Duration::from_secs(10)).await;
    let posted = burst(gateway.addr, 0..50, 2).await;
    let (_, ids) = collect_by_id(&brokers, &events, &posted).await;
    assert_eq!(ids.values().cloned().collect::<HashSet<_>>(), posted);
    assert_eq!(gateway.stop().await.lost, 0);
}

/// Topic names hold at most 128 characters here (the strictest bus): a longer command is
/// refused for its length, with a reason of its own.
#[tokio::test]
async fn a_command_too_long_for_a_topic_is_refused_for_its_length() {
    let (gateway, captured) = Running::stdout(&["--sdk-app-id", APP, "--token", TOKEN]).await;
    let longest = format!("Live.{}", "X".repeat(123));
    let (status, _) = gateway.post(&longest, br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200, "128 characters fit");
    let (status, answer) = gateway.post(&format!("{longest}X"), br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["ErrorInfo"].as_str().unwrap().contains("longer"), "{answer}");
    let text = metrics(gateway.addr).await;
    assert!(text.contains("hookbus_rejections_total{reason=\"command_too_long\"} 1"), "{text}");
    assert!(!text.contains("reason=\"command_invalid\""), "{text}");
    gateway.stop().await;
    assert_eq!(captured.lines().len(), 1, "only the command that fits reaches the bus");
}
