//! The message bus: one enum of concrete clients, chosen at start-up; this file only
//! dispatches. The three brokers' backends (`nats`, `amqp`, `kafka`) have the same verbs:
//! `connect`, `publish`, `request`, `serve_requests`, `is_connected`, `connect_attempts`,
//! `late_replies` and `close`. The stdout bus (made by `new`) has `publish`, `request` and
//! `close`: it is always connected, makes one attempt, and serves no requests, which [`Bus`]
//! says for it. A verb only some backends have, [`Bus`] answers with nothing for the others:
//! `node` (NATS, RabbitMQ), `clients_replaced` (NATS), `refusal`, `unreadable_replies` and
//! `channel_reopens` (RabbitMQ). What they all share has a file each, which they import beside
//! them (never from this file): `message` the [`Message`] they carry, `error` the [`BusError`]
//! they report, `reconnects` the backoff towards a broker that is away, `replies` the requests
//! waiting for their reply, `serve` how requests are served ([`Answer`], [`Ready`]). Each
//! backend (a file; `amqp` with its `link`) is the only place that names its client library's
//! types and errors. Nothing here knows which callbacks exist or what a reply means: that is
//! the caller's business.

pub mod amqp;
mod error;
pub mod kafka;
mod message;
pub mod nats;
mod reconnects;
mod replies;
mod serve;
pub mod stdout;

use bytes::Bytes;

pub use error::{BrokerRefusal, BusError, Cause};
pub use message::{derived_id, request_destination, valid_name, Message, Origin, REQUESTS};
pub use reconnects::Reconnects;
pub use serve::{Answer, Ready};

/// Which bus to connect to, and how: plain data, filled from flags by `config`.
#[derive(Debug, Clone)]
pub enum Options {
    /// The process's stdout.
    Stdout,
    Nats(nats::NatsOptions),
    Amqp(amqp::AmqpOptions),
    Kafka(kafka::KafkaOptions),
}

#[derive(Clone)]
pub enum Bus {
    Stdout(stdout::Stdout),
    Nats(nats::Nats),
    Amqp(amqp::Amqp),
    Kafka(kafka::Kafka),
}

impl Bus {
    /// Connects to the bus `options` name; the stdout bus writes to the process's stdout. A
    /// broker that cannot be reached yet is not an error: the bus starts disconnected and keeps
    /// trying in the background. Only what no retry can fix ([`BusError::Fatal`]) fails.
    pub async fn connect(options: Options) -> Result<Bus, BusError> {
        Ok(match options {
            Options::Stdout => Bus::Stdout(stdout::Stdout::new(Box::new(std::io::stdout()))),
            Options::Nats(options) => Bus::Nats(nats::Nats::connect(options).await?),
            Options::Amqp(options) => Bus::Amqp(amqp::Amqp::connect(options).await?),
            Options::Kafka(options) => Bus::Kafka(kafka::Kafka::connect(options).await?),
        })
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

    /// Sends a request and returns its reply body. The caller owns the deadline (it drops
    /// this future); backends must be cancel-safe.
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

    /// Why the broker refuses every publish right now (a metric label: `access_refused`), if
    /// it does: a refusal no retry fixes, shown apart from a link that is down. The bus then
    /// reads as not connected; the outbox keeps trying, with its backoff, so that a permission
    /// granted meanwhile is noticed.
    pub fn refusal(&self) -> Option<&'static str> {
        match self {
            Bus::Amqp(bus) => bus.refusal(),
            _ => None,
        }
    }

    /// Reply connections given up for a decision reply the bus client could not read (RabbitMQ).
    pub fn unreadable_replies(&self) -> u64 {
        match self {
            Bus::Amqp(bus) => bus.unreadable_replies(),
            _ => 0,
        }
    }

    /// Attempts to reach the broker so far, the first one included.
    pub fn connect_attempts(&self) -> u64 {
        match self {
            Bus::Stdout(_) => 1,
            Bus::Nats(bus) => bus.connect_attempts(),
            Bus::Amqp(bus) => bus.connect_attempts(),
            Bus::Kafka(bus) => bus.connect_attempts(),
        }
    }

    /// The broker node the link is on (`host:port`), when the bus has one and is connected.
    pub fn node(&self) -> Option<String> {
        match self {
            Bus::Stdout(_) | Bus::Kafka(_) => None,
            Bus::Nats(bus) => bus.node(),
            Bus::Amqp(bus) => bus.node(),
        }
    }

    /// Publishing channels opened again because the broker only nacked or never confirmed.
    pub fn channel_reopens(&self) -> u64 {
        match self {
            Bus::Amqp(bus) => bus.channel_reopens(),
            _ => 0,
        }
    }

    /// Clients replaced because their connection task was gone.
    pub fn clients_replaced(&self) -> u64 {
        match self {
            Bus::Nats(bus) => bus.clients_replaced(),
            _ => 0,
        }
    }

    /// Replies that arrived after their request had given up.
    pub fn late_replies(&self) -> u64 {
        match self {
            Bus::Stdout(_) => 0,
            Bus::Nats(bus) => bus.late_replies(),
            Bus::Amqp(bus) => bus.late_replies(),
            Bus::Kafka(bus) => bus.late_replies(),
        }
    }

    /// Serves the requests sent to `destinations`, replying with `answer`, until the link
    /// fails. Servers that share a `group` share the requests (a NATS queue group, an AMQP
    /// queue, a Kafka consumer group). `ready` fires once requests are being received.
    pub async fn serve_requests(
        &self,
        destinations: &[String],
        group: &str,
        answer: Answer,
        ready: Ready,
    ) -> Result<(), BusError> {
        match self {
            Bus::Stdout(_) => Err(BusError::unavailable_because("the stdout bus carries no requests")),
            Bus::Nats(bus) => bus.serve_requests(destinations, group, answer, ready).await,
            Bus::Amqp(bus) => bus.serve_requests(destinations, group, answer, ready).await,
            Bus::Kafka(bus) => bus.serve_requests(destinations, group, answer, ready).await,
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
