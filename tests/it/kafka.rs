//! What only the Kafka bus does: per-instance reply topics, the Spring Kafka request-reply
//! headers, and topic management.

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::brokers::{kafka_brokers, Backend};
use crate::support::{burst, eventually, metric, metrics, unique, Running};

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
