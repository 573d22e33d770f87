//! Kafka: events through an idempotent producer (`acks=all`) with the room as key and
//! CloudEvents `ce_*` headers, confirmed by delivery reports; missing topics created through
//! the admin API (or reported, when that is off); decisions as request-reply over this
//! instance's reply topic with the Spring Kafka headers `kafka_replyTopic` and
//! `kafka_correlationId`. What the cluster loses is made again without a restart: a topic that
//! vanished (deleted, or a broker back with empty storage) is created again before its next
//! publish, the reply topic within a second, and a producer whose idempotence state the
//! cluster forgot is replaced. The only file that names rdkafka types.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::error::{BrokerRefusal, BusError};
use super::message::{attribute_names, Message};
use super::reconnects::Reconnects;
use super::replies::Replies;
use super::serve::{Answer, Ready};

pub const REPLY_TOPIC: &str = "kafka_replyTopic";
pub const CORRELATION_ID: &str = "kafka_correlationId";
/// librdkafka gives up on a message after this and reports it; the outbox then retries it.
const MESSAGE_TIMEOUT_MS: &str = "30000";
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe written to the reply topic may take to be read back.
const PROBE_READ_BACK: Duration = Duration::from_secs(3);
/// How long decision requests go unanswered, with no reply read at all, before the reply path
/// is probed: a responder away for a while is no reason, a reply topic that reads nothing is.
const PROBE_AFTER: Duration = Duration::from_secs(5);
/// librdkafka's own reconnects to a broker that went away, at most this far apart.
const RECONNECT_BACKOFF_MAX_MS: &str = "2000";

/// How the gateway uses the cluster.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub brokers: String,
    pub create_topics: bool,
    pub partitions: i32,
    /// Replication factor of the topics created; from 3 on they get `min.insync.replicas=2`, so
    /// that an `acks=all` confirm means two brokers hold the event.
    pub replication_factor: i32,
    pub reply_topic: String,
    /// librdkafka's `message.max.bytes`.
    pub message_max_bytes: u32,
}

#[derive(Clone)]
pub struct Kafka {
    inner: Arc<KafkaInner>,
}

struct KafkaInner {
    options: KafkaOptions,
    /// Replaced when the cluster no longer takes its id (see [`Kafka::replace_producer`]).
    producer: RwLock<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    /// Topics known to exist, and since when: checked (and created) before their first
    /// publish, and forgotten when a metadata probe no longer lists them, so that they are
    /// created again.
    topics: Mutex<HashMap<String, Instant>>,
    /// Decision requests waiting for their reply, by correlation id (the event id).
    replies: Replies<Bytes>,
    /// A broker answered the last metadata probe.
    connected: AtomicBool,
    /// The reply topic exists and its consumer runs: decisions can be asked.
    replies_ready: AtomicBool,
    /// The reply consumer was set up once: from then on the supervisor sets it up again when
    /// the reply topic vanishes (before that, [`start_replies_later`] does it).
    replies_started: AtomicBool,
    /// The task reading the reply topic, stopped when the topic vanishes.
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Counts the reply consumers set up, so that a probe of an earlier one that concludes late
    /// does not stop the one now running.
    replies_generation: AtomicU64,
    /// A probe of the reply path is under way.
    probing: AtomicBool,
    /// When (ms after `started`, 0 for never) the first decision request went unanswered since
    /// the last reply was read: requests unanswered for [`PROBE_AFTER`] are reason to probe.
    unanswered_since: AtomicU64,
    started: Instant,
    reconnects: Reconnects,
}

impl Kafka {
    /// Builds the producer, makes sure the reply topic exists, and starts reading it. A
    /// cluster that cannot be reached yet is not an error: the reply topic is then set up in
    /// the background once it can be, and events wait in the outbox meanwhile.
    pub async fn connect(options: KafkaOptions) -> Result<Kafka, BusError> {
        let producer = new_producer(&options)?;
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &options.brokers)
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .create()
            .map_err(|error| BusError::connect("Kafka admin client", error))?;
        let inner = Arc::new(KafkaInner {
            options,
            producer: RwLock::new(producer),
            admin,
            topics: Mutex::default(),
            replies: Replies::default(),
            connected: AtomicBool::new(false),
            replies_ready: AtomicBool::new(false),
            replies_started: AtomicBool::new(false),
            dispatcher: Mutex::default(),
            replies_generation: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            unanswered_since: AtomicU64::new(0),
            started: Instant::now(),
            reconnects: Reconnects::default(),
        });
        let kafka = Kafka { inner };
        kafka.inner.reconnects.attempted();
        match kafka.start_replies().await {
            Ok(()) => {}
            Err(error) if !error.is_transient() => return Err(error),
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    brokers = kafka.inner.options.brokers,
                    "Kafka unreachable at start; serving anyway and connecting in the background"
                );
                tokio::spawn(start_replies_later(Arc::downgrade(&kafka.inner)));
            }
        }
        tokio::spawn(supervise(Arc::downgrade(&kafka.inner)));
        Ok(kafka)
    }

    /// Makes sure the reply topic exists and starts reading it. The reply topic is this
    /// instance's own: it is created even with topic creation off, and a cluster that refuses
    /// to create it stops start-up with its name.
    async fn start_replies(&self) -> Result<(), BusError> {
        let reply_topic = self.inner.options.reply_topic.clone();
        self.ensure_topic(&reply_topic, 1, true).await.map_err(|error| match error {
            BusError::Undeliverable { cause, .. } => BusError::Fatal {
                what: format!(
                    "Kafka reply topic {reply_topic} does not exist and the cluster refuses to create it: \
                     create it (1 partition) or name one that exists with --kafka-reply-topic"
                ),
                cause,
            },
            error => error,
        })?;
        let replies = self.reply_consumer(&reply_topic).await?;
        let dispatcher = tokio::spawn(dispatch_replies(replies, Arc::downgrade(&self.inner)));
        if let Some(old) = self.inner.dispatcher.lock().unwrap_or_else(|p| p.into_inner()).replace(dispatcher) {
            old.abort();
        }
        self.inner.replies_generation.fetch_add(1, Relaxed);
        self.inner.connected.store(true, Relaxed);
        self.inner.replies_ready.store(true, Relaxed);
        self.inner.replies_started.store(true, Relaxed);
        tracing::info!(reply_topic, "Kafka ready");
        Ok(())
    }

    /// The reply path broke (`why`): stops reading the reply topic (a consumer left on a
    /// deleted topic only meets errors) and fails decisions at once until
    /// [`Kafka::start_replies`] set it up again.
    fn lose_replies(&self, why: &str) {
        if self.inner.replies_ready.swap(false, Relaxed) {
            tracing::error!(
                reply_topic = self.inner.options.reply_topic,
                why,
                "Kafka replies lost; decisions get their fallback until the reply topic is read again"
            );
        }
        if let Some(old) = self.inner.dispatcher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            old.abort();
        }
    }

    /// Writes a probe (`{}`) to the reply topic and waits to read it back: whether the reply
    /// path works end to end. Done when decisions went unanswered for a while, it catches what
    /// metadata cannot: a reply topic deleted and created again (by a responder's producer,
    /// where the broker creates topics on use) before the supervisor saw it missing, while the
    /// consumer still asks for the old one. `None` when the probe could not be written: then
    /// the producer is at fault, not the consumer.
    async fn replies_read_back(&self) -> Option<bool> {
        let id = format!("hookbus-probe-{}", uuid::Uuid::now_v7());
        let mut waiting = self.inner.replies.register(&id);
        let headers = OwnedHeaders::new().insert(Header { key: CORRELATION_ID, value: Some(id.as_str()) });
        let record = FutureRecord::<(), str>::to(&self.inner.options.reply_topic).payload("{}").headers(headers);
        let delivery = self.producer().send_result(record).ok()?;
        tokio::time::timeout(METADATA_TIMEOUT, delivery).await.ok()?.ok()?.ok()?;
        Some(tokio::time::timeout(PROBE_READ_BACK, waiting.reply()).await.is_ok_and(|reply| reply.is_ok()))
    }

    /// The producer in use (a cheap handle).
    fn producer(&self) -> FutureProducer {
        self.inner.producer.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the producer when librdkafka has raised a fatal error on it: every send on it
    /// would fail for good.
    fn rebuild_if_fatal(&self) {
        let old = self.producer();
        if let Some((code, reason)) = old.client().fatal_error() {
            tracing::error!(%code, reason, "Kafka producer hit a fatal error");
            self.replace_producer(&old);
        }
    }

    /// Puts a new producer (with a new producer id) in place of `old`. What the old one still
    /// held is purged, so that its delivery reports fail now and the outbox sends those events
    /// again, under their ids.
    fn replace_producer(&self, old: &FutureProducer) {
        let mut slot = self.inner.producer.write().unwrap_or_else(|p| p.into_inner());
        if slot.client().native_ptr() != old.client().native_ptr() {
            return; // replaced already
        }
        match new_producer(&self.inner.options) {
            Ok(producer) => {
                *slot = producer;
                drop(slot);
                old.purge(PurgeConfig::default().queue().inflight());
                tracing::warn!("Kafka producer replaced; the events it held are sent again");
            }
            Err(error) => {
                tracing::error!(error = &error as &dyn std::error::Error, "Kafka producer could not be replaced")
            }
        }
    }

    /// Consumer settings for `group`: replies and requests are waited on, so fetch eagerly.
    fn consumer(&self, group: String) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.inner.options.brokers)
            .set("group.id", group)
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
            .set("fetch.wait.max.ms", "10");
        config
    }

    /// A consumer of every partition of the reply topic, from its current end.
    async fn reply_consumer(&self, topic: &str) -> Result<StreamConsumer, BusError> {
        let consumer: StreamConsumer = self
            .consumer(format!("hookbus-{topic}"))
            .set("enable.auto.commit", "false")
            // A Fetch answer for a topic the broker no longer knows may name it by neither name
            // nor id (tansu 0.6 does so for a deleted topic); librdkafka (2.12 to 2.16 at least)
            // then looks the nameless topic up in its metadata cache and crashes on the first
            // entry it compares with. An empty cache is never compared with: entries that
            // expire at once keep it empty. This consumer only reads the partitions it was
            // assigned, so it never needs the cache.
            .set("metadata.max.age.ms", "1")
            .create()
            .map_err(|error| BusError::connect("Kafka reply consumer", error))?;
        let (consumer, topic) = (Arc::new(consumer), topic.to_owned());
        let assigned = tokio::task::spawn_blocking({
            let consumer = consumer.clone();
            move || -> Result<(), KafkaError> {
                let metadata = consumer.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
                let mut assignment = TopicPartitionList::new();
                for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                    let (_, high) = consumer.fetch_watermarks(&topic, partition.id(), METADATA_TIMEOUT)?;
                    assignment.add_partition_offset(&topic, partition.id(), Offset::Offset(high))?;
                }
                consumer.assign(&assignment)
            }
        })
        .await
        .map_err(|error| BusError::connect("Kafka reply consumer", error))?;
        assigned.map_err(|error| BusError::connect("Kafka reply topic", error))?;
        Ok(Arc::try_unwrap(consumer).unwrap_or_else(|_| unreachable!("the blocking task has returned its clone")))
    }

    /// Makes sure `topic` exists before its first publish: created when `create`, else an
    /// error that keeps the event in the outbox.
    async fn ensure_topic(&self, topic: &str, partitions: i32, create: bool) -> Result<(), BusError> {
        if self.inner.topics.lock().unwrap_or_else(|p| p.into_inner()).contains_key(topic) {
            return Ok(());
        }
        let producer = self.producer();
        let name = topic.to_owned();
        let exists = tokio::task::spawn_blocking(move || -> Result<bool, KafkaError> {
            let metadata = producer.client().fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
            Ok(metadata.topics().iter().any(|t| t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .map_err(|error| BusError::unavailable("Kafka metadata", error))?
        .map_err(|error| unavailable("metadata", error))?;
        if !exists {
            if !create {
                return Err(BusError::unavailable_because(format!(
                    "Kafka topic {topic} does not exist and topic creation is off"
                )));
            }
            let replication = self.inner.options.replication_factor;
            let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
            if replication >= 3 {
                new = new.set("min.insync.replicas", "2");
            }
            let results = self
                .inner
                .admin
                .create_topics([&new], &AdminOptions::new())
                .await
                .map_err(|error| unavailable("create topic", error))?;
            for result in results {
                match result {
                    Ok(_) => tracing::info!(topic, partitions, replication, "Kafka topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => {
                        return Err(classified(&format!("create topic {topic}"), KafkaError::AdminOp(code)))
                    }
                }
            }
        }
        self.inner.topics.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_owned(), Instant::now());
        Ok(())
    }

    /// [`Kafka::ensure_topic`] for an event or request topic: as many partitions as the flags
    /// say, created only when they allow it (the reply topic is the one that differs).
    async fn ensure_event_topic(&self, topic: &str) -> Result<(), BusError> {
        self.ensure_topic(topic, self.inner.options.partitions, self.inner.options.create_topics).await
    }

    /// Produces the batch and returns, per message, once its delivery report came back.
    pub async fn publish(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        let mut ready = HashMap::new();
        for message in batch {
            if !ready.contains_key(message.destination.as_str()) {
                let checked = self.ensure_event_topic(&message.destination).await;
                ready.insert(message.destination.as_str(), checked);
            }
        }
        let producer = self.producer();
        let deliveries: Vec<_> = batch
            .iter()
            .map(|message| {
                ready[message.destination.as_str()].clone()?;
                producer
                    .send_result(record(message, headers(message)))
                    .map_err(|(error, _)| classified("produce", error))
            })
            .collect();
        let forgotten = AtomicBool::new(false);
        let results = join_all(deliveries.into_iter().map(|sent| async {
            let delivered = sent?.await.map_err(|_| BusError::unavailable_because("Kafka delivery report dropped"))?;
            delivered.map(drop).map_err(|(error, _)| {
                forgotten.fetch_or(producer_forgotten(&error), Relaxed);
                classified("delivery", error)
            })
        }))
        .await;
        if forgotten.load(Relaxed) {
            self.replace_producer(&producer);
        } else if results.iter().any(Result::is_err) {
            self.rebuild_if_fatal();
        }
        results
    }

    /// Produces a request with the reply headers and waits for the reply with its correlation id.
    pub async fn request(&self, message: &Message) -> Result<Bytes, BusError> {
        if !self.inner.replies_ready.load(Relaxed) {
            return Err(BusError::unavailable_because(format!(
                "Kafka reply topic {} is not there yet",
                self.inner.options.reply_topic
            )));
        }
        self.ensure_event_topic(&message.destination).await?;
        let mut waiting = self.inner.replies.register(&message.id);
        let headers = headers(message)
            .insert(Header { key: REPLY_TOPIC, value: Some(self.inner.options.reply_topic.as_str()) })
            .insert(Header { key: CORRELATION_ID, value: Some(message.id.as_str()) });
        let producer = self.producer();
        let delivery =
            producer.send_result(record(message, headers)).map_err(|(error, _)| unavailable("request", error))?;
        let delivered = delivery.await.map_err(|_| BusError::unavailable_because("Kafka request report dropped"))?;
        delivered.map_err(|(error, _)| {
            if producer_forgotten(&error) {
                self.replace_producer(&producer);
            }
            unavailable("request delivery", error)
        })?;
        // Dropped at the deadline without a reply, the guard notes it (see [`supervise`]).
        let mut unanswered = Unanswered(Some(&self.inner));
        let reply = waiting.reply().await.map_err(|_| BusError::unavailable_because("Kafka reply consumer stopped"));
        unanswered.0 = None;
        reply
    }

    /// A broker answers: events can be published. Decisions also need the reply topic; while
    /// it is missing they fail at once (see [`Kafka::request`]).
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Relaxed)
    }

    pub fn connect_attempts(&self) -> u64 {
        self.inner.reconnects.attempts()
    }

    pub fn late_replies(&self) -> u64 {
        self.inner.replies.late()
    }

    pub async fn close(&self) {
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "Kafka flush at close failed");
        }
    }

    /// Consumes the requests sent to `destinations` in the consumer group `group` and produces
    /// each reply to the request's `kafka_replyTopic` with its `kafka_correlationId`. Requests
    /// whose `ce_deadline` has passed are skipped: nobody waits for them any more.
    pub async fn serve_requests(
        &self,
        destinations: &[String],
        group: &str,
        answer: Answer,
        ready: Ready,
    ) -> Result<(), BusError> {
        for topic in destinations {
            self.ensure_event_topic(topic).await?;
        }
        let consumer: StreamConsumer = self
            .consumer(group.to_owned())
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|error| unavailable("responder consumer", error))?;
        let names: Vec<&str> = destinations.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|error| unavailable("subscribe", error))?;
        let mut ready = Some(ready);
        loop {
            let received = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
            if ready.is_some() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
                tracing::info!(topics = ?destinations, "answering requests");
                let _ = ready.take().map(|ready| ready.send(()));
            }
            let request = match received {
                Err(_) => continue,
                Ok(Err(error)) => {
                    tracing::warn!(error = &error as &dyn std::error::Error, "responder consume failed");
                    continue;
                }
                Ok(Ok(request)) => request,
            };
            let header = |key: &str| {
                let headers = request.headers()?;
                let found = headers.iter().find(|h| h.key == key)?;
                Some(String::from_utf8_lossy(found.value?).into_owned())
            };
            let (Some(reply_topic), Some(id)) = (header(REPLY_TOPIC), header(CORRELATION_ID)) else { continue };
            let deadline: u64 = header("ce_deadline").and_then(|d| d.parse().ok()).unwrap_or(u64::MAX);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            if deadline < now {
                continue;
            }
            let (producer, answer) = (self.producer(), answer.clone());
            let (topic, payload) =
                (request.topic().to_owned(), Bytes::copy_from_slice(request.payload().unwrap_or_default()));
            tokio::spawn(async move {
                let reply = answer(&topic, payload).await;
                let headers = OwnedHeaders::new().insert(Header { key: CORRELATION_ID, value: Some(id.as_str()) });
                let record = FutureRecord::<(), _>::to(&reply_topic).payload(&reply[..]).headers(headers);
                if let Err((error, _)) = producer.send(record, Duration::from_secs(5)).await {
                    tracing::warn!(error = &error as &dyn std::error::Error, "reply not sent");
                }
            });
        }
    }
}

/// Notes, when dropped while still armed, that a request went unanswered.
struct Unanswered<'a>(Option<&'a KafkaInner>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(inner) = self.0 {
            let now = inner.started.elapsed().as_millis() as u64 + 1;
            let _ = inner.unanswered_since.compare_exchange(0, now, Relaxed, Relaxed);
        }
    }
}

/// Hands each reply to the request waiting for its correlation id; counts the rest as late.
async fn dispatch_replies(consumer: StreamConsumer, inner: Weak<KafkaInner>) {
    loop {
        let reply = match consumer.recv().await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, "Kafka reply consumer");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.unanswered_since.store(0, Relaxed);
        let id = reply
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == CORRELATION_ID))
            .and_then(|h| h.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        inner.replies.deliver(&id, Bytes::copy_from_slice(reply.payload().unwrap_or_default()));
    }
}

/// Sets up the reply topic of a gateway that started without its cluster, with the capped
/// backoff between attempts.
async fn start_replies_later(inner: Weak<KafkaInner>) {
    let mut failures = 0;
    loop {
        failures += 1;
        let Some(wait) = inner.upgrade().map(|inner| inner.reconnects.next("Kafka", failures)) else { return };
        tokio::time::sleep(wait).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.reconnects.attempted();
        match (Kafka { inner }).start_replies().await {
            Ok(()) => return,
            // The cluster answers but will not make the reply topic: say so each time.
            Err(error) if !error.is_transient() => {
                tracing::error!(error = &error as &dyn std::error::Error, "Kafka reply topic cannot be set up")
            }
            Err(error) => tracing::debug!(error = &error as &dyn std::error::Error, "Kafka still unreachable"),
        }
    }
}

/// Tracks whether a broker answers, for `/readyz`; a probe while the cluster is away counts
/// as an attempt to reach it (librdkafka reconnects by itself). The same probe lists the
/// topics: those that vanished are forgotten (and created again before their next publish),
/// and a vanished reply topic is made again here, along with its consumer.
async fn supervise(inner: Weak<KafkaInner>) {
    loop {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let Some(inner) = inner.upgrade() else { return };
        let kafka = Kafka { inner };
        let was_reachable = kafka.inner.connected.load(Relaxed);
        if !was_reachable {
            kafka.inner.reconnects.attempted();
        }
        let producer = kafka.producer();
        let probe = tokio::task::spawn_blocking(move || -> Option<HashSet<String>> {
            let metadata = producer.client().fetch_metadata(None, SUPERVISE_EVERY).ok()?;
            let existing = metadata.topics().iter().filter(|t| t.error().is_none() && !t.partitions().is_empty());
            Some(existing.map(|t| t.name().to_owned()).collect())
        })
        .await
        .unwrap_or(None);
        let reachable = probe.is_some();
        if kafka.inner.connected.swap(reachable, Relaxed) != reachable {
            tracing::warn!(reachable, "Kafka cluster reachability changed");
        }
        kafka.rebuild_if_fatal();
        let Some(existing) = probe else { continue };
        let vanished: Vec<String> = {
            let mut topics = kafka.inner.topics.lock().unwrap_or_else(|p| p.into_inner());
            // A topic just created may not be in every broker's metadata yet.
            let gone =
                |topic: &String, since: &Instant| !existing.contains(topic) && since.elapsed() > METADATA_TIMEOUT;
            let vanished = topics.iter().filter(|(topic, since)| gone(topic, since)).map(|(t, _)| t.clone()).collect();
            topics.retain(|topic, since| !gone(topic, since));
            vanished
        };
        if !vanished.is_empty() {
            // Deleted, or the cluster came back without its data; then it has also forgotten
            // the producer's id, and librdkafka would retry with it for ever
            // (UNKNOWN_PRODUCER_ID, bumping only the epoch).
            let what = "Kafka topics vanished; creating them again as they are used, with a new producer";
            tracing::warn!(topics = ?vanished, "{what}");
            kafka.replace_producer(&kafka.producer());
        }
        if !kafka.inner.replies_started.load(Relaxed) {
            continue; // start_replies_later has it
        }
        if vanished.contains(&kafka.inner.options.reply_topic) {
            kafka.lose_replies("the reply topic is gone");
        } else if kafka.inner.replies_ready.load(Relaxed) && !kafka.inner.probing.load(Relaxed) && {
            let since = kafka.inner.unanswered_since.load(Relaxed);
            since != 0 && kafka.inner.started.elapsed().as_millis() as u64 >= since + PROBE_AFTER.as_millis() as u64
        } {
            // Apart, so that a slow probe does not hold back the next look at the topics.
            kafka.inner.probing.store(true, Relaxed);
            kafka.inner.unanswered_since.store(0, Relaxed);
            let kafka = kafka.clone();
            tokio::spawn(async move {
                let generation = kafka.inner.replies_generation.load(Relaxed);
                if kafka.replies_read_back().await == Some(false)
                    && kafka.inner.replies_generation.load(Relaxed) == generation
                {
                    kafka.lose_replies("a probe written to the reply topic was not read back");
                }
                kafka.inner.probing.store(false, Relaxed);
            });
        }
        if !kafka.inner.replies_ready.load(Relaxed) {
            if let Err(error) = kafka.start_replies().await {
                tracing::warn!(error = &error as &dyn std::error::Error, "Kafka reply topic not made again yet");
            }
        }
    }
}

fn new_producer(options: &KafkaOptions) -> Result<FutureProducer, BusError> {
    ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.max.bytes", options.message_max_bytes.to_string())
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS)
        .create()
        .map_err(|error| BusError::connect("Kafka producer", error))
}

fn record<'a>(message: &'a Message, headers: OwnedHeaders) -> FutureRecord<'a, str, [u8]> {
    let record = FutureRecord::to(&message.destination).payload(&message.payload[..]).headers(headers);
    match &message.key {
        Some(key) => record.key(key.as_str()),
        None => record,
    }
}

/// CloudEvents binary-mode headers: `ce_<attribute>`.
fn headers(message: &Message) -> OwnedHeaders {
    const NAMES: [&str; 13] = attribute_names!("ce_");
    message.attributes_named(&NAMES).fold(OwnedHeaders::new_with_capacity(NAMES.len()), |headers, (key, value)| {
        headers.insert(Header { key, value: Some(value.as_ref()) })
    })
}

/// Whether the cluster no longer accepts the producer's id and epoch. librdkafka answers some
/// of these by bumping the epoch on its own, which a cluster that never gave out that epoch
/// (tansu, or one back with empty storage) refuses for ever: only a new producer, with an id
/// the cluster gives out, gets through.
fn producer_forgotten(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            UnknownProducerId
                | ProducerFenced
                | InvalidProducerEpoch
                | InvalidProducerIdMapping
                | OutOfOrderSequenceNumber
        )
    )
}

fn unavailable(what: &str, error: KafkaError) -> BusError {
    BusError::unavailable(format!("Kafka {what}"), error)
}

/// A produce or topic error as the outbox sees it: what the broker refuses for this record or
/// topic whatever the retry (too large, invalid, not authorised) is refused for good; anything
/// else (a leader moving, a timeout, the broker away) is worth a retry.
fn classified(what: &str, error: KafkaError) -> BusError {
    use RDKafkaErrorCode::*;
    let reason = match error.rdkafka_error_code() {
        Some(MessageSizeTooLarge | MessageBatchTooLarge | InvalidMessageSize) => BrokerRefusal::TooLarge,
        Some(InvalidRecord | InvalidTopic | InvalidPartitions | InvalidReplicationFactor) => BrokerRefusal::Invalid,
        Some(TopicAuthorizationFailed | ClusterAuthorizationFailed) => BrokerRefusal::NotAuthorized,
        _ => return unavailable(what, error),
    };
    BusError::undeliverable(format!("Kafka {what}"), reason, error)
}
