//! The message bus: one enum of concrete clients, chosen at start-up. Every backend has the
//! same verbs (`connect`, `publish`, `request`, `is_connected`, `close`, `respond`); this file
//! only dispatches and holds the [`Message`] they all carry. Each backend file is the only
//! place that names its client library's types and errors.

pub mod amqp;
pub mod kafka;
pub mod nats;
mod replies;
pub mod stdout;

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::config::{BusArgs, BusKind};
use crate::respond::Responder;

/// One accepted callback as it travels to the bus, attributes computed once per request.
#[derive(Debug, Clone)]
pub struct Message {
    /// CloudEvents `id`: a UUIDv7, the same on every retry.
    pub id: String,
    /// CloudEvents `type`: the CallbackCommand.
    pub command: String,
    /// `{prefix}.{command}`: Kafka topic, NATS subject, AMQP routing key.
    pub destination: String,
    /// The room, when the body names one: Kafka key and `partitionkey`.
    pub key: Option<String>,
    /// Receive time.
    pub time: SystemTime,
    /// RFC 3339 form of `time`.
    pub time_text: String,
    pub sdk_app_id: String,
    /// CloudEvents `source`: `/tencent/{SdkAppid}`.
    pub source: String,
    pub client_ip: String,
    pub opt_platform: String,
    /// Requests only: Unix milliseconds by which the reply must arrive.
    pub deadline_ms: Option<u64>,
    /// The request body exactly as received.
    pub payload: Bytes,
}

/// Query-string facts about a callback that become attributes.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    pub sdk_app_id: String,
    pub client_ip: String,
    pub opt_platform: String,
}

impl Message {
    pub fn new(prefix: &str, command: &str, key: Option<String>, origin: Origin, payload: Bytes) -> Message {
        let time = SystemTime::now();
        Message {
            id: uuid::Uuid::now_v7().to_string(),
            command: command.to_owned(),
            destination: format!("{prefix}.{command}"),
            key,
            time,
            time_text: humantime::format_rfc3339_millis(time).to_string(),
            source: format!("/tencent/{}", origin.sdk_app_id),
            sdk_app_id: origin.sdk_app_id,
            client_ip: origin.client_ip,
            opt_platform: origin.opt_platform,
            deadline_ms: None,
            payload,
        }
    }

    /// CloudEvents attributes in binary mode, unprefixed; each backend adds its own prefix.
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        [
            ("id", Some(Cow::Borrowed(self.id.as_str()))),
            ("type", Some(Cow::Borrowed(self.command.as_str()))),
            ("source", Some(Cow::Borrowed(self.source.as_str()))),
            ("specversion", Some(Cow::Borrowed("1.0"))),
            ("time", Some(Cow::Borrowed(self.time_text.as_str()))),
            ("datacontenttype", Some(Cow::Borrowed("application/json"))),
            ("sdkappid", Some(Cow::Borrowed(self.sdk_app_id.as_str()))),
            ("clientip", Some(Cow::Borrowed(self.client_ip.as_str()))),
            ("optplatform", Some(Cow::Borrowed(self.opt_platform.as_str()))),
            ("partitionkey", self.key.as_deref().map(Cow::Borrowed)),
            ("deadline", self.deadline_ms.map(|ms| Cow::Owned(ms.to_string()))),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// Time left before the reply deadline (zero when passed or not a request).
    pub fn time_left(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.deadline_ms.map(|ms| Duration::from_millis(ms).saturating_sub(now)).unwrap_or_default()
    }
}

/// What went wrong on the bus, in words the rest of the gateway understands.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("no responders for {0}")]
    NoResponders(String),
    #[error("unroutable: {0}")]
    Unroutable(String),
}

/// Fired by `respond` once its subscriptions are live.
pub type Ready = tokio::sync::oneshot::Sender<()>;

#[derive(Clone)]
pub enum Bus {
    Stdout(stdout::Stdout),
    Nats(Box<nats::Nats>),
    Amqp(amqp::Amqp),
    Kafka(kafka::Kafka),
}

impl Bus {
    /// Connects to the configured bus; the stdout bus writes to the process's stdout.
    pub async fn connect(args: &BusArgs) -> Result<Bus, BusError> {
        match args.bus {
            BusKind::Stdout => Ok(Bus::Stdout(stdout::Stdout::new(Box::new(std::io::stdout())))),
            BusKind::Nats => {
                let name = args.instance_id();
                let stream = args.nats_create_stream.as_deref();
                let bus = nats::Nats::connect(&args.nats_url, args.nats_jetstream, stream, &args.prefix, &name).await?;
                Ok(Bus::Nats(Box::new(bus)))
            }
            BusKind::Amqp => Ok(Bus::Amqp(amqp::Amqp::connect(&args.amqp_url, &args.amqp_exchange).await?)),
            BusKind::Kafka => {
                let instance = args.instance_id();
                let options = kafka::Options {
                    brokers: args.kafka_brokers.clone(),
                    create_topics: args.kafka_create_topics,
                    partitions: args.kafka_partitions,
                    reply_topic: args
                        .kafka_reply_topic
                        .clone()
                        .unwrap_or_else(|| format!("{}.replies.{instance}", args.prefix)),
                };
                Ok(Bus::Kafka(kafka::Kafka::connect(options).await?))
            }
        }
    }

    /// Publishes a batch and returns, per message, once the broker confirmed it (or why not).
    pub async fn publish(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        match self {
            Bus::Stdout(bus) => bus.publish(batch).await,
            Bus::Nats(bus) => bus.publish(batch).await,
            Bus::Amqp(bus) => bus.publish(batch).await,
            Bus::Kafka(bus) => bus.publish(batch).await,
        }
    }

    /// Sends a blocking callback to a responder and returns its reply body. The caller owns
    /// the deadline (it drops this future); backends must be cancel-safe.
    pub async fn request(&self, message: &Message) -> Result<Bytes, BusError> {
        match self {
            Bus::Stdout(bus) => bus.request(message).await,
            Bus::Nats(bus) => bus.request(message).await,
            Bus::Amqp(bus) => bus.request(message).await,
            Bus::Kafka(bus) => bus.request(message).await,
        }
    }

    /// Whether the broker link is up right now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Stdout(_) => true,
            Bus::Nats(bus) => bus.is_connected(),
            Bus::Amqp(bus) => bus.is_connected(),
            Bus::Kafka(bus) => bus.is_connected(),
        }
    }

    /// Decision replies that arrived after their deadline.
    pub fn late_replies(&self) -> u64 {
        match self {
            Bus::Stdout(_) => 0,
            Bus::Nats(bus) => bus.late_replies(),
            Bus::Amqp(bus) => bus.late_replies(),
            Bus::Kafka(bus) => bus.late_replies(),
        }
    }

    /// Answers blocking callbacks under `prefix` until the link fails: `hookbus respond`.
    /// `ready` fires once requests are being received.
    pub async fn respond(&self, prefix: &str, responder: Responder, ready: Ready) -> Result<(), BusError> {
        match self {
            Bus::Stdout(_) => {
                Err(BusError::Connect("the stdout bus carries no requests: use --bus nats, amqp or kafka".into()))
            }
            Bus::Nats(bus) => bus.respond(prefix, responder, ready).await,
            Bus::Amqp(bus) => bus.respond(prefix, responder, ready).await,
            Bus::Kafka(bus) => bus.respond(prefix, responder, ready).await,
        }
    }

    /// Flushes and closes the broker link.
    pub async fn close(&self) {
        match self {
            Bus::Stdout(bus) => bus.close().await,
            Bus::Nats(bus) => bus.close().await,
            Bus::Amqp(bus) => bus.close().await,
            Bus::Kafka(bus) => bus.close().await,
        }
    }
}
