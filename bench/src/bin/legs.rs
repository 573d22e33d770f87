//! The legs of each path: the smallest program that does the gateway's job on one path with the
//! same parts and the same guarantees, and nothing else, so that what the gateway costs beyond it
//! is its own work. The same hyper answers HTTP; the same bus client, at the gateway's version
//! (one Cargo.lock), publishes with the gateway's settings and CloudEvents headers:
//!
//! - `nats`: each callback answered 200 at once and handed to a publisher task by a channel,
//!   within the gateway's default outbox bounds (20,000 events, 8 MiB until confirmed, a callback
//!   waiting 250 ms for room before its 503: an unbounded queue would take callbacks faster than
//!   the bus confirms them, past the memory the gateway may hold, and confirm the rest after the
//!   load stopped, with the cores to itself); the task publishes what waits (up to 512) with the 11 `ce-` headers and confirms the batch with
//!   one round trip to the server (a request nobody serves comes back "no responders").
//! - `jetstream`: the same, with `Nats-Msg-Id`, each batch's PubAcks awaited together.
//! - `amqp`: lapin with publisher confirms, persistent, `mandatory`, the gateway's properties
//!   and headers, each batch's confirms awaited together.
//! - `kafka`: rdkafka with idempotence, `acks=all` and `linger.ms=2`, the `ce_` headers and the
//!   room as key, each batch's delivery reports awaited together.
//! - `decide-nats`, `decide-amqp`: each callback a request over the bus (the `ce-` headers and a
//!   deadline) answered with the responder's reply, 504 when none came within 1.5 s; AMQP with a
//!   confirmed request and replies consumed (on a second connection, as the gateway does) from a
//!   queue of this process, matched by correlation id.
//!
//! With `--spool FILE`, each callback is also appended to FILE (its id, subject and body) before
//! its answer: a writer thread writes what waits at once and `fdatasync`s it (group commit), and
//! the answer follows the sync, the spool's guarantee; nothing is ever deleted or read back.
//!
//! What the legs leave out is the gateway's own work: the query and signature checks, the body
//! scan (the room is a constant of the benchmark body's room's length), the outbox's retries,
//! metrics and logs. The callback's command, SdkAppid, ClientIP and OptPlatform come from the
//! query as the gateway takes them. A GET answers at once without publishing (readiness);
//! `GET /drained` answers 200 once every accepted callback was confirmed, 503 before.
//!
//! `cargo run --release -p hookbus-bench --bin legs -- nats 127.0.0.1:8090`

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::future::join_all;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const OK: &[u8] = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}"#;
/// Publishes in flight at most, as the gateway's outbox hands the bus.
const WINDOW: usize = 512;
/// Callbacks accepted and not yet handed over, at most: the gateway's `--outbox-capacity`.
const QUEUE: usize = 20_000;
/// Memory the accepted callbacks hold until confirmed, at most: the gateway's
/// `--outbox-max-bytes`, counted as it counts (each event's fields and body, and 64 bytes). A
/// callback that finds no room waits [`ROOM_WAIT`] for some, then is answered 503.
const MAX_BYTES: usize = 8 << 20;
/// The gateway's `--outbox-wait`.
const ROOM_WAIT: Duration = Duration::from_millis(250);
/// The benchmark body's room: the gateway finds it in the body, the legs take it as given.
const ROOM: &str = "room_20231226_01";
/// The gateway's default `--decision-timeout`.
const DECISION_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Path {
    Nats,
    Jetstream,
    Amqp,
    Kafka,
    DecideNats,
    DecideAmqp,
}

#[derive(Parser)]
struct Args {
    #[arg(value_enum)]
    path: Path,
    #[arg(default_value = "127.0.0.1:8090")]
    listen: String,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[arg(long, default_value = "tencent")]
    amqp_exchange: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_brokers: String,
    /// The stream JetStream events go to, created over `{prefix}.>` when missing.
    #[arg(long, default_value = "HOOKBUS_BENCH")]
    stream: String,
    #[arg(long, default_value = "tencent")]
    prefix: String,
    /// Append each callback to this file, synced before its answer (truncated at start).
    #[arg(long)]
    spool: Option<std::path::PathBuf>,
}

/// One accepted callback with the attributes the gateway gives it.
struct Event {
    id: String,
    command: String,
    subject: String,
    time: SystemTime,
    time_text: String,
    source: String,
    sdk_app_id: String,
    client_ip: String,
    opt_platform: String,
    traceparent: String,
    deadline: Option<String>,
    payload: Bytes,
    /// The memory it holds against [`MAX_BYTES`], given back once it is confirmed.
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Event {
    fn new(prefix: &str, query: &str, payload: Bytes, decision: bool) -> Event {
        let field = |name: &str| {
            query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).unwrap_or_default().to_owned()
        };
        let command = field("CallbackCommand");
        let sdk_app_id = field("SdkAppid");
        let id = uuid::Uuid::now_v7();
        let time = SystemTime::now();
        let (subject, deadline) = if decision {
            let deadline = time.duration_since(UNIX_EPOCH).unwrap_or_default() + DECISION_TIMEOUT;
            ([prefix, ".decide.", &command].concat(), Some(deadline.as_millis().to_string()))
        } else {
            ([prefix, ".", &command].concat(), None)
        };
        Event {
            traceparent: format!("00-{}-{}-01", id.simple(), &id.simple().to_string()[16..]),
            id: id.hyphenated().to_string(),
            source: ["/tencent/", &sdk_app_id].concat(),
            client_ip: field("ClientIP"),
            opt_platform: field("OptPlatform"),
            time_text: humantime::format_rfc3339_millis(time).to_string(),
            time,
            command,
            subject,
            sdk_app_id,
            deadline,
            payload,
            held: None,
        }
    }

    /// What it holds in memory, as the gateway counts an event.
    fn footprint(&self) -> usize {
        let texts = [&self.id, &self.command, &self.subject, &self.time_text, &self.source, &self.sdk_app_id]
            .into_iter()
            .chain([&self.client_ip, &self.opt_platform, &self.traceparent]);
        std::mem::size_of::<Event>() + texts.map(String::len).sum::<usize>() + self.payload.len() + 64
    }

    /// The CloudEvents attributes under names that start with `prefix`, as the gateway names
    /// them (`ce-` for NATS, `ce_` for Kafka, `cloudEvents:` for AMQP).
    fn attributes(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("id", Some(self.id.as_str())),
            ("type", Some(self.command.as_str())),
            ("source", Some(self.source.as_str())),
            ("specversion", Some("1.0")),
            ("time", Some(self.time_text.as_str())),
            ("datacontenttype", Some("application/json")),
            ("sdkappid", Some(self.sdk_app_id.as_str())),
            ("clientip", Some(self.client_ip.as_str())),
            ("optplatform", Some(self.opt_platform.as_str())),
            ("partitionkey", Some(ROOM)),
            ("traceparent", Some(self.traceparent.as_str())),
            ("deadline", self.deadline.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    fn nats_headers(&self) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in self.attributes() {
            headers.insert(nats_name(name), value);
        }
        headers
    }

    fn amqp_properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        for (name, value) in self.attributes() {
            headers.insert(["cloudEvents:", name].concat().into(), AMQPValue::LongString(value.into()));
        }
        headers.insert("hookbus-unrouted".into(), AMQPValue::LongString("keep".into()));
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(self.id.as_str().into())
            .with_timestamp(self.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
            .with_type(self.command.as_str().into())
            .with_headers(headers)
    }

    fn kafka_headers(&self) -> OwnedHeaders {
        self.attributes().fold(OwnedHeaders::new_with_capacity(13), |headers, (name, value)| {
            headers.insert(Header { key: kafka_name(name), value: Some(value) })
        })
    }
}

/// `ce-{name}` as a static header name (built once by the compiler, as the gateway's are).
fn nats_name(name: &str) -> async_nats::HeaderName {
    async_nats::HeaderName::from_static(prefixed(name, "ce-"))
}

fn kafka_name(name: &str) -> &'static str {
    prefixed(name, "ce_")
}

fn prefixed(name: &str, prefix: &str) -> &'static str {
    macro_rules! names {
        ($($name:literal),*) => {
            match (prefix, name) {
                $(("ce-", $name) => concat!("ce-", $name), ("ce_", $name) => concat!("ce_", $name),)*
                _ => unreachable!("an attribute name"),
            }
        };
    }
    names!(
        "id",
        "type",
        "source",
        "specversion",
        "time",
        "datacontenttype",
        "sdkappid",
        "clientip",
        "optplatform",
        "partitionkey",
        "traceparent",
        "deadline"
    )
}

/// What answers a callback: a publisher behind a channel, or a requester.
#[derive(Clone)]
enum Sink {
    Events {
        queue: mpsc::Sender<Event>,
        pending: Arc<AtomicU64>,
        room: Arc<tokio::sync::Semaphore>,
        spool: Option<mpsc::UnboundedSender<Append>>,
    },
    Nats(async_nats::Client),
    Amqp(Arc<AmqpRequester>),
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sink = match args.path {
        Path::DecideNats => Sink::Nats(
            async_nats::ConnectOptions::new().request_timeout(None).connect(&args.nats_url).await.expect("NATS"),
        ),
        Path::DecideAmqp => {
            let requester = Arc::new(AmqpRequester::start(&args).await);
            tokio::spawn(requester.clone().dispatch_replies());
            Sink::Amqp(requester)
        }
        path => {
            let (queue, events) = mpsc::channel(QUEUE);
            let pending = Arc::new(AtomicU64::new(0));
            tokio::spawn(publish(events, pending.clone(), start(path, &args).await));
            let room = Arc::new(tokio::sync::Semaphore::new(MAX_BYTES));
            Sink::Events { queue, pending, room, spool: args.spool.as_deref().map(spool) }
        }
    };
    let prefix: Arc<str> = args.prefix.into();
    let listener = TcpListener::bind(&args.listen).await.expect("the listen address");
    eprintln!("legs listening on {}", args.listen);
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let _ = stream.set_nodelay(true);
        let (sink, prefix) = (sink.clone(), prefix.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(sink.clone(), prefix.clone(), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(
    sink: Sink,
    prefix: Arc<str>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        Ok(response)
    };
    if request.method() == Method::GET {
        let drained = match &sink {
            Sink::Events { queue, pending, .. } => pending.load(Relaxed) == 0 && queue.capacity() == QUEUE,
            _ => true,
        };
        let ready = request.uri().path() != "/drained" || drained;
        let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return reply(status, Bytes::new());
    }
    let query = request.uri().query().unwrap_or_default().to_owned();
    let Ok(body) = request.into_body().collect().await.map(|body| body.to_bytes()) else {
        return reply(StatusCode::BAD_REQUEST, Bytes::new());
    };
    match sink {
        Sink::Events { queue, pending, room, spool } => {
            let mut event = Event::new(&prefix, &query, body, false);
            let held = tokio::time::timeout(ROOM_WAIT, room.acquire_many_owned(event.footprint() as u32)).await;
            let Ok(Ok(held)) = held else {
                return reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
            };
            event.held = Some(held);
            if let Some(spool) = spool {
                let record = [event.id.as_bytes(), event.subject.as_bytes(), &event.payload].concat();
                let (done, synced) = oneshot::channel();
                spool.send(Append { record, done }).expect("the spool writer");
                synced.await.expect("the spool writer").expect("a spool write");
            }
            pending.fetch_add(1, Relaxed);
            match queue.try_send(event) {
                Ok(()) => reply(StatusCode::OK, Bytes::from_static(OK)),
                Err(_) => {
                    pending.fetch_sub(1, Relaxed);
                    reply(StatusCode::SERVICE_UNAVAILABLE, Bytes::new())
                }
            }
        }
        Sink::Nats(client) => {
            let event = Event::new(&prefix, &query, body, true);
            let asked = client.request_with_headers(event.subject.clone(), event.nats_headers(), event.payload);
            match tokio::time::timeout(DECISION_TIMEOUT, asked).await {
                Ok(Ok(message)) => reply(StatusCode::OK, message.payload),
                _ => reply(StatusCode::GATEWAY_TIMEOUT, Bytes::new()),
            }
        }
        Sink::Amqp(requester) => match requester.request(Event::new(&prefix, &query, body, true)).await {
            Some(decision) => reply(StatusCode::OK, decision),
            None => reply(StatusCode::GATEWAY_TIMEOUT, Bytes::new()),
        },
    }
}

/// A record to append, and where to say it is on disk.
struct Append {
    record: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// Starts the writer of `path`: it writes every record waiting at once and syncs them with one
/// `fdatasync` (group commit) before it says each is written.
fn spool(path: &std::path::Path) -> mpsc::UnboundedSender<Append> {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("the spool file");
    let (appends, mut waiting) = mpsc::unbounded_channel::<Append>();
    std::thread::spawn(move || {
        let mut group = Vec::new();
        let mut bytes = Vec::new();
        while waiting.blocking_recv_many(&mut group, 1024) > 0 {
            bytes.clear();
            for append in &group {
                bytes.extend_from_slice(&append.record);
            }
            let written = file.write_all(&bytes).and_then(|()| file.sync_data());
            for append in group.drain(..) {
                let _ = append.done.send(written.as_ref().map(|_| ()).map_err(|error| error.kind().into()));
            }
        }
    });
    appends
}

/// A connected publisher of one path.
enum Publisher {
    Nats(async_nats::Client),
    Jetstream(async_nats::jetstream::Context),
    Amqp(lapin::Channel, String),
    Kafka(FutureProducer),
}

async fn start(path: Path, args: &Args) -> Publisher {
    match path {
        Path::Nats => Publisher::Nats(async_nats::connect(&args.nats_url).await.expect("NATS")),
        Path::Jetstream => {
            let context = async_nats::jetstream::new(async_nats::connect(&args.nats_url).await.expect("NATS"));
            let config = async_nats::jetstream::stream::Config {
                name: args.stream.clone(),
                subjects: vec![format!("{}.>", args.prefix)],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            context.get_or_create_stream(config).await.expect("a JetStream stream");
            Publisher::Jetstream(context)
        }
        Path::Amqp => {
            let channel = amqp_channel(args).await;
            channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
            Publisher::Amqp(channel, args.amqp_exchange.clone())
        }
        Path::Kafka => Publisher::Kafka(
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &args.kafka_brokers)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "2")
                .create()
                .expect("a Kafka producer"),
        ),
        Path::DecideNats | Path::DecideAmqp => unreachable!("a requester, not a publisher"),
    }
}

/// A channel on a new connection, with the gateway's durable topic exchange declared.
async fn amqp_channel(args: &Args) -> lapin::Channel {
    let connection = lapin::Connection::connect(&args.amqp_url, Default::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("a channel");
    let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(
            args.amqp_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await
        .expect("the exchange");
    // The connection lives as long as its channel is used: for the life of the process.
    std::mem::forget(connection);
    channel
}

/// Publishes what waits, a batch of up to [`WINDOW`] at a time, each confirmed as its path
/// confirms; a callback is no longer pending once confirmed. A failure ends the process: the
/// legs have no retries, and a run that lost events must not look like one that did not.
async fn publish(mut events: mpsc::Receiver<Event>, pending: Arc<AtomicU64>, publisher: Publisher) {
    let mut batch = Vec::with_capacity(WINDOW);
    while events.recv_many(&mut batch, WINDOW).await > 0 {
        match &publisher {
            Publisher::Nats(client) => {
                for event in &batch {
                    let subject = event.subject.clone();
                    client
                        .publish_with_headers(subject, event.nats_headers(), event.payload.clone())
                        .await
                        .expect("publish");
                }
                match client.request("legs.probe", Bytes::new()).await {
                    Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => {}
                    other => panic!("NATS round trip: {other:?}"),
                }
            }
            Publisher::Jetstream(context) => {
                let mut acks = Vec::with_capacity(batch.len());
                for event in &batch {
                    let mut headers = event.nats_headers();
                    headers.insert(async_nats::header::NATS_MESSAGE_ID, event.id.as_str());
                    let subject = event.subject.clone();
                    acks.push(
                        context.publish_with_headers(subject, headers, event.payload.clone()).await.expect("publish"),
                    );
                }
                for ack in join_all(acks.into_iter().map(IntoFuture::into_future)).await {
                    ack.expect("a PubAck");
                }
            }
            Publisher::Amqp(channel, exchange) => {
                let mut confirms = Vec::with_capacity(batch.len());
                for event in &batch {
                    let options = BasicPublishOptions { mandatory: true, ..Default::default() };
                    let properties = event.amqp_properties();
                    let key = event.subject.as_str().into();
                    let sent =
                        channel.basic_publish(exchange.as_str().into(), key, options, &event.payload, properties);
                    confirms.push(sent.await.expect("publish"));
                }
                for confirm in join_all(confirms).await {
                    assert!(matches!(confirm, Ok(Confirmation::Ack(None))), "AMQP confirm: {confirm:?}");
                }
            }
            Publisher::Kafka(producer) => {
                let deliveries: Vec<_> = batch
                    .iter()
                    .map(|event| {
                        let record = FutureRecord::to(&event.subject)
                            .payload(&event.payload[..])
                            .key(ROOM)
                            .headers(event.kafka_headers());
                        producer.send_result(record).map_err(|(error, _)| error).expect("produce")
                    })
                    .collect();
                for delivered in join_all(deliveries).await {
                    delivered.expect("a delivery report").map_err(|(error, _)| error).expect("delivered");
                }
            }
        }
        pending.fetch_sub(batch.len() as u64, Relaxed);
        batch.clear();
    }
}

/// Decisions over RabbitMQ: each request published with confirms to the exchange, its reply
/// consumed from this process's exclusive queue and matched by correlation id.
struct AmqpRequester {
    channel: lapin::Channel,
    /// On a connection of its own, as the gateway consumes its replies.
    replies: lapin::Channel,
    exchange: String,
    reply_queue: String,
    waiting: Mutex<HashMap<String, oneshot::Sender<Bytes>>>,
}

impl AmqpRequester {
    async fn start(args: &Args) -> AmqpRequester {
        let channel = amqp_channel(args).await;
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let reply_queue = format!("{}.replies.legs-{}", args.amqp_exchange, uuid::Uuid::now_v7().simple());
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let replies = amqp_channel(args).await;
        replies
            .queue_declare(reply_queue.as_str().into(), options, FieldTable::default())
            .await
            .expect("a reply queue");
        AmqpRequester { channel, replies, exchange: args.amqp_exchange.clone(), reply_queue, waiting: Mutex::default() }
    }

    async fn request(self: Arc<Self>, event: Event) -> Option<Bytes> {
        let (sender, reply) = oneshot::channel();
        self.waiting.lock().unwrap().insert(event.id.clone(), sender);
        let properties = event
            .amqp_properties()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(event.id.as_str().into())
            .with_expiration(DECISION_TIMEOUT.as_millis().to_string().into());
        let options = BasicPublishOptions { mandatory: true, ..Default::default() };
        let key = event.subject.as_str().into();
        let sent = self.channel.basic_publish(self.exchange.as_str().into(), key, options, &event.payload, properties);
        let confirmed = match sent.await {
            Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
            Err(_) => false,
        };
        let decision = match confirmed {
            true => tokio::time::timeout(DECISION_TIMEOUT, reply).await.ok().and_then(Result::ok),
            false => None,
        };
        self.waiting.lock().unwrap().remove(&event.id);
        decision
    }

    /// Hands each reply to the request waiting for it.
    async fn dispatch_replies(self: Arc<Self>) {
        let options = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
        let queue = self.reply_queue.as_str().into();
        let mut replies =
            self.replies.basic_consume(queue, "legs".into(), options, FieldTable::default()).await.expect("consume");
        while let Some(Ok(delivery)) = replies.next().await {
            let id = delivery.properties.correlation_id().as_ref().map(|id| id.as_str().to_owned());
            let waiting = id.and_then(|id| self.waiting.lock().unwrap().remove(&id));
            if let Some(sender) = waiting {
                let _ = sender.send(Bytes::from(delivery.data));
            }
        }
    }
}
