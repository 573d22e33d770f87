//! What only the RabbitMQ bus does: requests carry the gateway's reply queue, correlation id
//! and expiration; unroutable events are kept in a queue of their own, or reported and counted,
//! never retried forever.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::json;

use crate::brokers::{amqp_url, Backend};
use crate::support::{eventually, metrics, unique};

#[tokio::test]
async fn requests_name_the_gateways_reply_queue_with_correlation_and_expiration() {
    let prefix = unique("t");
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
    let key = format!("{prefix}.decide.Live.CallbackBeforeSendGift");
    channel
        .queue_bind(
            queue.name().clone(),
            "tencent".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
    let mut requests =
        channel.basic_consume(queue.name().clone(), "".into(), options, FieldTable::default()).await.unwrap();
    let replier = tokio::spawn(async move {
        let request = requests.next().await.unwrap().unwrap();
        let props = request.properties.clone();
        // A queue of the gateway's own, consumed on a connection apart from the publishing one.
        let reply_to = props.reply_to().as_ref().unwrap().as_str();
        let suffix = reply_to.strip_prefix("tencent.replies.").unwrap_or_else(|| panic!("{reply_to}"));
        assert!(suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()), "{reply_to}");
        let expiration: u64 = props.expiration().as_ref().unwrap().as_str().parse().unwrap();
        assert!(expiration > 0 && expiration <= 1500, "expiration is the time left: {expiration}");
        let id = props.correlation_id().clone().unwrap();
        assert_eq!(props.message_id().as_ref().map(|s| s.as_str()), Some(id.as_str()));
        let reply = json!({"ErrorCode":102199,"ErrorInfo":"limit"}).to_string();
        let properties = BasicProperties::default().with_correlation_id(id);
        let options = BasicPublishOptions::default();
        let reply_to = props.reply_to().clone().unwrap();
        channel.basic_publish("".into(), reply_to, options, reply.as_bytes(), properties).await.unwrap();
        channel
    });
    let gateway = Backend::Amqp.gateway(&prefix, None, &[]).await;
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!((status, answer), (200, json!({"ActionStatus":"OK","ErrorCode":102199,"ErrorInfo":"limit"})));
    let _channel = replier.await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn late_replies_are_counted() {
    let prefix = unique("t");
    let _responder = Backend::Amqp.responder(&prefix, 0, Duration::from_millis(400)).await;
    let gateway = Backend::Amqp.gateway(&prefix, None, &["--decision-timeout", "100ms"]).await;
    let (_, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: decision timeout");
    let addr = gateway.addr;
    eventually("the late reply to be counted", Duration::from_secs(5), || async move {
        metrics(addr).await.contains("hookbus_late_replies_total 1")
    })
    .await;
    gateway.stop().await;
}

/// Deletes what a test declared on the broker, so that no durable leftovers pile up.
async fn delete(exchanges: &[&str], queues: &[&str]) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in queues {
        channel.queue_delete((*queue).into(), Default::default()).await.unwrap();
    }
    for exchange in exchanges {
        channel.exchange_delete((*exchange).into(), Default::default()).await.unwrap();
    }
}

#[tokio::test]
async fn with_unrouted_events_dropped_they_are_reported_not_retried_forever() {
    // `Backend::Amqp` drops unrouted events (`--amqp-unrouted drop`).
    let prefix = unique("t");
    let exchange = unique("x");
    let gateway = Backend::Amqp.gateway(&prefix, None, &["--amqp-exchange", &exchange]).await;
    let (status, _) = gateway.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200);
    let addr = gateway.addr;
    eventually("the unroutable event to be counted", Duration::from_secs(5), || async move {
        let text = metrics(addr).await;
        text.contains("hookbus_publishes_unroutable_total 1") && text.contains("hookbus_outbox_depth 0")
    })
    .await;
    assert_eq!(gateway.stop().await.lost, 0);
    delete(&[&exchange], &[]).await;
}

#[tokio::test]
async fn unrouted_events_are_kept_in_a_queue_and_unanswered_requests_still_come_back() {
    let prefix = unique("t");
    let exchange = unique("x");
    let gateway =
        Backend::Amqp.gateway(&prefix, None, &["--amqp-exchange", &exchange, "--amqp-unrouted", "keep"]).await;
    let (status, _) = gateway.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"kept"}"#).await;
    assert_eq!(status, 200);
    // A request nobody is bound for is not kept: it comes back, and the fallback is at once.
    let started = std::time::Instant::now();
    let (_, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: no responders", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let addr = gateway.addr;
    eventually("the event to be confirmed", Duration::from_secs(5), || async move {
        metrics(addr).await.contains("hookbus_publishes_confirmed_total 1")
    })
    .await;
    assert_eq!(gateway.stop().await.lost, 0);

    let queue = format!("{prefix}.unrouted");
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let kept = channel.basic_get(queue.as_str().into(), Default::default()).await.unwrap().expect("the event is kept");
    assert_eq!(&kept.delivery.data[..], br#"{"RoomId":"kept"}"#);
    assert_eq!(kept.delivery.routing_key.as_str(), format!("{prefix}.Live.CallbackAfterCreateRoom"));
    let headers = kept.delivery.properties.headers().clone().unwrap();
    let header = |name: &str| headers.inner().get(name).cloned();
    assert_eq!(header("cloudEvents:type"), Some(AMQPValue::LongString("Live.CallbackAfterCreateRoom".into())));
    assert_eq!(header("cloudEvents:partitionkey"), Some(AMQPValue::LongString("kept".into())));
    assert!(header("cloudEvents:id").is_some());
    let next = channel.basic_get(queue.as_str().into(), Default::default()).await.unwrap();
    assert!(next.is_none(), "only the event, not the request");
    drop(channel);
    delete(&[&exchange, &format!("{exchange}.unrouted")], &[&queue]).await;
}
