//! The real brokers under test, behind one enum so that every behaviour runs on each bus: how
//! to point a gateway at it (directly or through a proxy), how to watch and collect its
//! events, and how to start a responder. Broker addresses come from `HOOKBUS_TEST_*` with
//! localhost defaults.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use hookbus::bus::Bus;
use hookbus::config::{Cli, Command};
use hookbus::respond::Responder;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::ClientConfig;

use crate::support::{socket_of, Running, APP, TOKEN};

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Nats,
    Amqp,
    Kafka,
}

/// One event as a consumer sees it, attributes by CloudEvents name.
#[derive(Debug)]
pub struct Event {
    pub destination: String,
    pub payload: Bytes,
    pub attributes: HashMap<String, String>,
}

pub enum Watcher {
    Nats(async_nats::Subscriber),
    /// The connection is kept with its consumer: dropping it would close the consumer.
    Amqp {
        consumer: lapin::Consumer,
        _connection: Box<lapin::Connection>,
    },
    Kafka(Box<StreamConsumer>),
}

pub fn kafka_brokers() -> String {
    std::env::var("HOOKBUS_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn nats_url() -> String {
    std::env::var("HOOKBUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn amqp_url() -> String {
    std::env::var("HOOKBUS_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

impl Backend {
    /// The broker's own address, for a proxy to forward to.
    pub fn upstream(self) -> SocketAddr {
        match self {
            Backend::Nats => socket_of(&nats_url()),
            Backend::Amqp => socket_of(&amqp_url()),
            Backend::Kafka => socket_of(&kafka_brokers()),
        }
    }

    /// `--bus` flags that reach the broker at `via` (its own address when `None`).
    pub fn flags(self, via: Option<SocketAddr>) -> Vec<String> {
        let flags = match (self, via) {
            (Backend::Nats, None) => ["--bus", "nats", "--nats-url", &nats_url()].map(String::from).to_vec(),
            (Backend::Nats, Some(addr)) => {
                ["--bus", "nats", "--nats-url", &format!("nats://{addr}")].map(String::from).to_vec()
            }
            // Unrouted events are dropped here: kept, each test's durable `{prefix}.unrouted` queue
            // would outlive it (the `amqp` tests try keeping them on an exchange of their own).
            (Backend::Amqp, None) => {
                ["--bus", "amqp", "--amqp-url", &amqp_url(), "--amqp-unrouted", "drop"].map(String::from).to_vec()
            }
            (Backend::Amqp, Some(addr)) => {
                let url = format!("amqp://guest:guest@{addr}/%2f");
                ["--bus", "amqp", "--amqp-url", &url, "--amqp-unrouted", "drop"].map(String::from).to_vec()
            }
            (Backend::Kafka, None) => {
                ["--bus", "kafka", "--kafka-brokers", &kafka_brokers()].map(String::from).to_vec()
            }
            (Backend::Kafka, Some(addr)) => {
                ["--bus", "kafka", "--kafka-brokers", &addr.to_string()].map(String::from).to_vec()
            }
        };
        flags
    }

    /// A secured gateway on this bus with destinations under `prefix`.
    pub async fn gateway(self, prefix: &str, via: Option<SocketAddr>, extra: &[&str]) -> Running {
        let mut flags = self.flags(via);
        flags.extend(["--prefix", prefix, "--sdk-app-id", APP, "--token", TOKEN].map(String::from));
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Running::connect(&flags).await
    }

    /// Subscribes to every destination under `prefix`; returns once the subscription is live.
    pub async fn watch(self, prefix: &str) -> Watcher {
        match self {
            Backend::Nats => {
                let client = async_nats::connect(nats_url()).await.unwrap();
                let subscriber = client.subscribe(format!("{prefix}.>")).await.unwrap();
                client.flush().await.unwrap();
                Watcher::Nats(subscriber)
            }
            Backend::Amqp => {
                let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
                let channel = connection.create_channel().await.unwrap();
                declare_exchange(&connection).await;
                let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
                let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.unwrap();
                let name = queue.name().clone();
                let key = format!("{prefix}.#");
                let bind = QueueBindOptions::default();
                channel
                    .queue_bind(name.clone(), "tencent".into(), key.into(), bind, FieldTable::default())
                    .await
                    .unwrap();
                let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
                let consumer = channel.basic_consume(name, "".into(), options, FieldTable::default()).await.unwrap();
                Watcher::Amqp { consumer, _connection: Box::new(connection) }
            }
            Backend::Kafka => {
                let consumer: StreamConsumer = ClientConfig::new()
                    .set("bootstrap.servers", kafka_brokers())
                    .set("group.id", crate::support::unique("watch"))
                    .set("auto.offset.reset", "earliest")
                    .set("topic.metadata.refresh.interval.ms", "200")
                    .create()
                    .unwrap();
                // A pattern: the gateway creates the topics as events arrive.
                consumer.subscribe(&[&format!("^{}\\..*", prefix)]).unwrap();
                Watcher::Kafka(Box::new(consumer))
            }
        }
    }

    /// Runs `hookbus respond` in-process; returns once it receives requests.
    pub async fn responder(self, prefix: &str, code: i64, delay: Duration) -> tokio::task::JoinHandle<()> {
        let code = code.to_string();
        let delay = format!("{}ms", delay.as_millis());
        self.respond(prefix, &["--decision", &code, "--delay", &delay]).await
    }

    /// Runs `hookbus respond` in-process with `flags`; returns once it receives requests.
    pub async fn respond(self, prefix: &str, flags: &[&str]) -> tokio::task::JoinHandle<()> {
        let mut argv = vec!["hookbus".to_owned(), "respond".to_owned()];
        argv.extend(self.flags(None));
        argv.extend(["--prefix".to_owned(), prefix.to_owned()]);
        argv.extend(flags.iter().map(|flag| flag.to_string()));
        let Command::Respond(args) = Cli::parse_from(argv).command else { unreachable!() };
        let responder: Responder = args.responder().expect("valid rules");
        let bus = Bus::connect(args.bus.options()).await.unwrap();
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            let _ = responder.run(&bus, &prefix, ready).await;
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed).await.unwrap().expect("the responder subscribes");
        task
    }
}

/// Declares the gateway's exchange `tencent` when it is missing, as the gateway would (on a
/// fresh broker a watcher may bind before any gateway has run).
pub async fn declare_exchange(connection: &lapin::Connection) {
    use lapin::options::ExchangeDeclareOptions;
    let probe = connection.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
    let kind = lapin::ExchangeKind::Topic;
    if probe.exchange_declare("tencent".into(), kind.clone(), passive, FieldTable::default()).await.is_ok() {
        return;
    }
    let channel = connection.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare("tencent".into(), kind, durable, FieldTable::default()).await.unwrap();
}

impl Watcher {
    /// The next event, or a panic after `limit`.
    pub async fn next(&mut self, limit: Duration) -> Event {
        self.try_next(limit).await.expect("an event arrives in time")
    }

    /// The next event, or `None` after `limit`.
    pub async fn try_next(&mut self, limit: Duration) -> Option<Event> {
        let next = async {
            match self {
                Watcher::Nats(subscriber) => {
                    let message = subscriber.next().await.expect("subscription open");
                    let headers = message.headers.unwrap_or_default();
                    let attributes = headers
                        .iter()
                        .filter_map(|(name, values)| {
                            let name: &str = name.as_ref();
                            let attribute = name.strip_prefix("ce-")?;
                            Some((attribute.to_owned(), percent_decoded(values.first()?.as_str())))
                        })
                        .collect();
                    Event { destination: message.subject.to_string(), payload: message.payload, attributes }
                }
                Watcher::Amqp { consumer, .. } => {
                    let delivery = consumer.next().await.expect("consumer open").expect("a delivery");
                    let mut attributes = HashMap::new();
                    if let Some(headers) = delivery.properties.headers() {
                        for (name, value) in headers.inner() {
                            let (Some(attribute), AMQPValue::LongString(value)) =
                                (name.as_str().strip_prefix("cloudEvents:"), value)
                            else {
                                continue;
                            };
                            attributes.insert(attribute.to_owned(), value.to_string());
                        }
                    }
                    let props = &delivery.properties;
                    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
                    assert_eq!(props.content_type().as_ref().map(|s| s.as_str()), Some("application/json"));
                    assert_eq!(props.message_id().as_ref().map(|s| s.to_string()), attributes.get("id").cloned());
                    assert_eq!(props.kind().as_ref().map(|s| s.to_string()), attributes.get("type").cloned());
                    assert!(props.timestamp().is_some());
                    Event {
                        destination: delivery.routing_key.to_string(),
                        payload: Bytes::from(delivery.data),
                        attributes,
                    }
                }
                Watcher::Kafka(consumer) => {
                    // Before the gateway creates a topic the pattern matches, the consumer reports
                    // it as unknown; those errors are not records.
                    let message = loop {
                        if let Ok(message) = consumer.recv().await {
                            break message;
                        }
                    };
                    let mut attributes = HashMap::new();
                    if let Some(headers) = message.headers() {
                        for header in headers.iter() {
                            if let (Some(attribute), Some(value)) = (header.key.strip_prefix("ce_"), header.value) {
                                attributes.insert(attribute.to_owned(), String::from_utf8_lossy(value).into_owned());
                            }
                        }
                    }
                    // The key is the room whole; the attribute is cut at 256 bytes.
                    let key = message.key().map(|key| String::from_utf8_lossy(key).into_owned());
                    let cut = key.as_deref().map(|key| {
                        let mut end = key.len().min(256);
                        while !key.is_char_boundary(end) {
                            end -= 1;
                        }
                        &key[..end]
                    });
                    assert_eq!(cut, attributes.get("partitionkey").map(String::as_str), "the record key is the room");
                    Event {
                        destination: message.topic().to_owned(),
                        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                        attributes,
                    }
                }
            }
        };
        tokio::time::timeout(limit, next).await.ok()
    }
}

/// A NATS header value decoded as the CloudEvents NATS binding says: each `%XY` is a byte.
pub fn percent_decoded(value: &str) -> String {
    let (bytes, mut decoded, mut at) = (value.as_bytes(), Vec::new(), 0);
    while at < bytes.len() {
        let hex = bytes.get(at + 1..at + 3).and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                at += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(decoded).expect("percent-encoded UTF-8")
}

/// What [`collect`] read: every record, and the distinct RoomIds among them.
pub struct Collected {
    pub received: usize,
    pub seen: HashSet<String>,
}

/// Reads events (bodies with a `RoomId`) until every one of `expected` has arrived, or panics
/// after `limit`. Events beyond them are counted too: callers that expect exactly `expected`
/// compare `seen` with it.
pub async fn collect(watcher: &mut Watcher, expected: &HashSet<String>, limit: Duration) -> Collected {
    let mut collected = Collected { received: 0, seen: HashSet::new() };
    let deadline = Instant::now() + limit;
    while !expected.is_subset(&collected.seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let missing = expected.difference(&collected.seen).count();
        assert!(!left.is_zero(), "{missing} of {} expected events never arrived", expected.len());
        let event = watcher.next(left).await;
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        collected.seen.insert(body["RoomId"].as_str().unwrap().to_owned());
        collected.received += 1;
    }
    collected
}
