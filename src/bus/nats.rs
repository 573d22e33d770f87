//! NATS: events as core publishes confirmed by a server round trip, or as JetStream publishes
//! confirmed by their PubAck (`--nats-jetstream`, with `Nats-Msg-Id` = event id so the stream's
//! duplicate window drops retried duplicates); decisions as core requests with a reply inbox.
//! Given several servers (a seed list), the client takes them in a shuffled order and moves to
//! another when its server goes; a JetStream publish that failed for a reason of the moment (no
//! responders while a stream leader is elected, a PubAck that did not come, a leader change) is
//! retried by the outbox under the same `Nats-Msg-Id`, so that a stored one is not stored twice;
//! one that no stream covers (as the stream API says) is refused for good (`no_stream`). A
//! client whose connection task is gone (a panic inside it) is seen at once, its reply inbox
//! ending with the task, and replaced by a new one ([`supervise`]).
//! The only file that names async-nats types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, HeaderMap, HeaderName, ServerAddr, StatusCode, Subject};
use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::error::{BrokerRefusal, BusError};
use super::message::{attribute_names, Message};
use super::reconnects::Reconnects;
use super::replies::Replies;
use super::serve::{Answer, Ready};
use crate::logs::Limiter;

/// A confirm that takes longer than this is treated as failed and the batch is retried.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The stream API's answer to "which stream covers this subject?" within this, or the question
/// counts as unanswered (a retry).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the server and what to check there.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The servers of one cluster (a seed list); the client learns the others from them.
    pub urls: Vec<String>,
    /// Publish through JetStream and wait for the stream's PubAck.
    pub jetstream: bool,
    /// With JetStream: create a stream of this name when none covers `{prefix}.>`.
    pub create_stream: Option<String>,
    /// Replicas of a stream the gateway creates (1 on a single server, 3 on a cluster).
    pub stream_replicas: usize,
    /// Every destination starts with `{prefix}.`; a JetStream stream must cover `{prefix}.>`.
    pub prefix: String,
    /// With JetStream: the subjects the start-up check asks the streams about (every
    /// documented event's and the dead-letter notices'), each under the prefix.
    pub subjects: Vec<String>,
    /// The connection's name, as the server shows it.
    pub name: String,
}

#[derive(Clone)]
pub struct Nats {
    inner: Arc<NatsInner>,
}

struct NatsInner {
    /// The link in use, replaced whole by [`supervise`] when its connection task is gone.
    link: RwLock<Arc<NatsLink>>,
    /// Decision requests waiting for their reply, by event id; each link's reply inbox reader
    /// holds it weakly.
    replies: Arc<Replies<Result<Bytes, BusError>>>,
    /// Shared with the clients' reconnect callbacks.
    reconnects: Arc<Reconnects>,
    /// Set by `close`: a link that ends after it is not replaced.
    closing: AtomicBool,
    /// Links replaced because their connection task was gone.
    replaced: AtomicU64,
    /// What a new client connects with.
    options: NatsOptions,
    servers: Vec<ServerAddr>,
}

/// One client and what hangs on it: its JetStream context, its reply inbox and the task that
/// writes its requests. The client reconnects by itself; a link is replaced only when its
/// connection task is gone (a panic in the client, a drain): then nothing it is handed is
/// ever sent, and its state still reads "connected".
struct NatsLink {
    client: Client,
    /// Set with `--nats-jetstream`.
    jetstream: Option<jetstream::Context>,
    /// No subscriber ever listens here: a request to it comes back "no responders" from the
    /// server itself, after the server processed every earlier publish of this connection.
    probe: String,
    /// Replies to decision requests arrive on `{inbox}.{event id}`.
    inbox: String,
    /// Decision requests on their way to the connection, written together by [`write_requests`].
    requests: mpsc::UnboundedSender<Request>,
    /// Cleared once the connection task is found gone.
    alive: AtomicBool,
}

/// A decision request as it is handed to [`write_requests`].
struct Request {
    destination: String,
    /// `{inbox}.{event id}`; shared, not copied, by the publish and an error's reply.
    reply_to: Subject,
    headers: HeaderMap,
    payload: Bytes,
}

impl Nats {
    /// Connects. A server that cannot be reached yet is retried in the background (the client
    /// then buffers subscriptions until it is up); refused credentials or a malformed URL fail.
    /// With JetStream, checks that streams cover the gateway's subjects (creating one when
    /// asked to) once connected: at once when the server is up, else when it comes.
    pub async fn connect(options: NatsOptions) -> Result<Nats, BusError> {
        let reconnects = Arc::new(Reconnects::default());
        reconnects.attempted();
        let urls = options.urls.join(",");
        let servers = options
            .urls
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| BusError::fatal(format!("NATS URL in {urls}"), error))?;
        let current = Arc::new(std::sync::OnceLock::new());
        let client = match client_options(&options, &reconnects, &current).connect(servers.clone()).await {
            Ok(client) => client,
            Err(error) if is_permanent(error.kind()) => {
                return Err(BusError::fatal(format!("NATS at {urls}"), error));
            }
            Err(error) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    urls,
                    "NATS unreachable at start; serving anyway and connecting in the background"
                );
                client_options(&options, &reconnects, &current)
                    .retry_on_initial_connect()
                    .connect(servers.clone())
                    .await
                    .map_err(|error| BusError::fatal(format!("NATS at {urls}"), error))?
            }
        };
        let _ = current.set(client.clone());
        if is_up(&client) {
            tracing::info!(node = node(&client), "NATS connected");
        }
        if options.jetstream {
            let context = jetstream::new(client.clone());
            if is_up(&client) {
                ensure_stream(&context, &options).await?;
            } else {
                tokio::spawn(ensure_stream_once_connected(client.clone(), context, options.clone()));
            }
        }
        let replies = Arc::new(Replies::default());
        let (link, ended) = NatsLink::start(client, options.jetstream, &replies).await?;
        let inner = Arc::new(NatsInner {
            link: RwLock::new(Arc::new(link)),
            replies,
            reconnects,
            closing: AtomicBool::new(false),
            replaced: AtomicU64::new(0),
            options,
            servers,
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), ended));
        Ok(Nats { inner })
    }

    /// Clients replaced because their connection task was gone.
    pub fn clients_replaced(&self) -> u64 {
        self.inner.replaced.load(Relaxed)
    }

    /// Ends the current link's connection task the way a panic inside the client would leave
    /// it (its channels closed, its state still "connected"), so that tests can show the link
    /// is seen dead and replaced.
    #[doc(hidden)]
    pub async fn end_connection_task(&self) {
        let _ = self.inner.link().client.drain().await;
    }

    /// Returns, per message, once the server holds it (core) or the stream stored it (JetStream).
    pub async fn publish(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        let link = self.inner.link();
        match &link.jetstream {
            Some(context) => link.publish_jetstream(context, batch).await,
            None => tokio::time::timeout(CONFIRM_TIMEOUT, link.publish_core(batch))
                .await
                .unwrap_or_else(|_| vec![Err(BusError::unavailable_because("NATS confirm timed out")); batch.len()]),
        }
    }

    /// Sends a core request with this connection's reply inbox and returns the reply; the
    /// server's "no responders" comes back at once as [`BusError::NoResponders`].
    pub async fn request(&self, message: &Message) -> Result<Bytes, BusError> {
        let link = self.inner.link();
        let mut waiting = self.inner.replies.register(&message.id);
        let request = Request {
            destination: message.destination.clone(),
            reply_to: Subject::from(format!("{}.{}", link.inbox, message.id)),
            headers: headers(message),
            payload: message.payload.clone(),
        };
        if link.requests.send(request).is_err() {
            return Err(BusError::unavailable_because("NATS request writer stopped"));
        }
        waiting.reply().await.map_err(|_| BusError::unavailable_because("NATS reply inbox closed"))?
    }

    /// Replies that arrived after their request had given up.
    pub fn late_replies(&self) -> u64 {
        self.inner.replies.late()
    }

    pub fn is_connected(&self) -> bool {
        self.inner.link().is_up()
    }

    pub fn connect_attempts(&self) -> u64 {
        self.inner.reconnects.attempts()
    }

    /// `host:port` (and name) of the server the client is on, while connected.
    pub fn node(&self) -> Option<String> {
        let link = self.inner.link();
        link.is_up().then(|| node(&link.client))
    }

    pub async fn close(&self) {
        self.inner.closing.store(true, Relaxed);
        if let Err(error) = self.inner.link().client.flush().await {
            tracing::warn!(%error, "NATS flush at close failed");
        }
    }

    /// Answers requests on `destinations` in the queue group `group`, so that servers share them.
    pub async fn serve_requests(
        &self,
        destinations: &[String],
        group: &str,
        answer: Answer,
        ready: Ready,
    ) -> Result<(), BusError> {
        let link = self.inner.link();
        let mut subscriptions = Vec::new();
        for subject in destinations {
            let subscription = link
                .client
                .queue_subscribe(subject.clone(), group.to_owned())
                .await
                .map_err(|error| BusError::unavailable("NATS subscribe", error))?;
            tracing::info!(subject, queue = group, "answering requests");
            subscriptions.push(subscription);
        }
        let mut requests = futures_util::stream::select_all(subscriptions);
        // Ready means the server has the subscriptions, not only that they left the socket
        // (`flush`): a request from another connection could otherwise find no responders.
        link.round_trip().await?;
        let _ = ready.send(());
        while let Some(request) = requests.next().await {
            let Some(reply_to) = request.reply else { continue };
            let mut answering = answer(&request.subject, request.payload);
            // An answer ready at once is sent from here: a task of its own (and, with more
            // threads, a hand-over to another) only for one that waits (`respond --delay`).
            if let std::task::Poll::Ready(reply) = futures_util::poll!(answering.as_mut()) {
                send_reply(&link.client, reply_to, reply).await;
                continue;
            }
            let client = link.client.clone();
            tokio::spawn(async move { send_reply(&client, reply_to, answering.await).await });
        }
        Err(BusError::unavailable_because("NATS subscription ended"))
    }
}

impl NatsInner {
    /// The link in use.
    fn link(&self) -> Arc<NatsLink> {
        self.link.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl NatsLink {
    /// A link on `client`: its reply inbox read by [`dispatch_replies`] (the returned task,
    /// which ends when the connection task is gone: the inbox subscription ends with it) and
    /// its request writer.
    async fn start(
        client: Client,
        jetstream: bool,
        replies: &Arc<Replies<Result<Bytes, BusError>>>,
    ) -> Result<(NatsLink, JoinHandle<()>), BusError> {
        let probe = format!("_HOOKBUS.confirm.{}", client.new_inbox().trim_start_matches("_INBOX."));
        let inbox = client.new_inbox();
        let subscription = client
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|error| BusError::connect("NATS reply inbox", error))?;
        let ended = tokio::spawn(dispatch_replies(subscription, Arc::downgrade(replies)));
        let (requests, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_requests(client.clone(), queued, Arc::downgrade(replies)));
        let jetstream = jetstream.then(|| jetstream::new(client.clone()));
        Ok((NatsLink { client, jetstream, probe, inbox, requests, alive: AtomicBool::new(true) }, ended))
    }

    /// Connected, with its connection task alive.
    fn is_up(&self) -> bool {
        self.alive.load(Relaxed) && is_up(&self.client)
    }

    /// Core publishes, confirmed by one round trip after them. A message larger than the
    /// server's `max_payload` is refused for good on its own; the others go on.
    async fn publish_core(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        if !self.is_up() {
            return vec![Err(BusError::unavailable_because("NATS disconnected")); batch.len()];
        }
        let connects = self.client.statistics().connects.load(Relaxed);
        let mut results = Vec::with_capacity(batch.len());
        for message in batch {
            let sent = self
                .client
                .publish_with_headers(message.destination.clone(), headers(message), message.payload.clone())
                .await;
            match sent {
                Ok(()) => results.push(Ok(())),
                Err(error) if error.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                    results.push(Err(BusError::undeliverable("NATS publish", BrokerRefusal::TooLarge, error)));
                }
                Err(error) => {
                    results.resize(batch.len(), Err(BusError::unavailable("NATS publish", error)));
                    return results;
                }
            }
        }
        let confirmed = match self.round_trip().await {
            // A reconnect between the publishes and the round trip may have lost some of them.
            Ok(()) if self.client.statistics().connects.load(Relaxed) != connects => {
                Err(BusError::unavailable_because("NATS reconnected during the batch"))
            }
            confirmed => confirmed,
        };
        if let Err(error) = confirmed {
            for result in results.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(error.clone());
            }
        }
        results
    }

    /// Returns once the server has processed everything this connection sent before: a
    /// request nobody serves comes back "no responders" from the server, in order.
    async fn round_trip(&self) -> Result<(), BusError> {
        match self.client.request(self.probe.clone(), Bytes::new()).await {
            Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(error) => Err(BusError::unavailable("NATS round trip", error)),
            Ok(_) => Err(BusError::unavailable_because(format!("unexpected subscriber on {}", self.probe))),
        }
    }

    async fn publish_jetstream(&self, context: &jetstream::Context, batch: &[Message]) -> Vec<Result<(), BusError>> {
        if !self.is_up() {
            return vec![Err(BusError::unavailable_because("NATS disconnected")); batch.len()];
        }
        let mut acks = Vec::with_capacity(batch.len());
        for message in batch {
            let mut headers = headers(message);
            headers.insert(async_nats::header::NATS_MESSAGE_ID, message.id.as_str());
            acks.push(
                context.publish_with_headers(message.destination.clone(), headers, message.payload.clone()).await,
            );
        }
        let acked = join_all(acks.into_iter().map(|sent| async move {
            let ack = sent.map_err(|error| ("JetStream publish", error))?;
            ack.await.map(drop).map_err(|error| ("JetStream PubAck", error))
        }))
        .await;
        // "No responders" is either a stream leader being elected or no stream at all (and no
        // PubAck in time is the same when a plain subscriber listens on the subject): the
        // stream API tells them apart, asked once per subject of the batch.
        let mut covered: HashMap<&str, bool> = HashMap::new();
        for ((what, error), message) in
            acked.iter().zip(batch).filter_map(|(acked, m)| Some((acked.as_ref().err()?, m)))
        {
            use jetstream::context::PublishErrorKind::{StreamNotFound, TimedOut};
            if matches!(error.kind(), StreamNotFound | TimedOut) && !covered.contains_key(message.destination.as_str())
            {
                // The client has no request timeout of its own (ours is the only one): without
                // this one, a look-up that meets no stream API (its leader being elected) waits
                // for ever, and the publisher with it.
                let found =
                    tokio::time::timeout(LOOKUP_TIMEOUT, context.stream_by_subject(message.destination.as_str()));
                let uncovered =
                    matches!(found.await, Ok(Err(error)) if error.kind() == GetStreamByNameErrorKind::NotFound);
                if uncovered {
                    tracing::debug!(what, subject = message.destination, "no JetStream stream covers the subject");
                }
                covered.insert(&message.destination, !uncovered);
            }
        }
        acked
            .into_iter()
            .zip(batch)
            .map(|(acked, message)| {
                acked.map_err(|(what, error)| match covered.get(message.destination.as_str()) {
                    Some(false) => BusError::undeliverable(what, BrokerRefusal::NoStream, error),
                    _ => jetstream_error(what, error),
                })
            })
            .collect()
    }
}

/// Replaces the link whenever its connection task is gone (`ended` returns): the old one is
/// marked dead at once (`is_connected` false, so `/readyz` and `hookbus_bus_connected` say
/// so and the outbox waits), the requests waiting on it fall back at once, and a new client
/// connects in the background. Ends with the [`Nats`] or at `close`.
async fn supervise(inner: Weak<NatsInner>, mut ended: JoinHandle<()>) {
    loop {
        let _ = (&mut ended).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Relaxed) {
            return;
        }
        inner.link().alive.store(false, Relaxed);
        inner.replies.abandon_all();
        tracing::error!("NATS connection task is gone (a failure inside the client); starting a new client");
        ended = loop {
            let current = Arc::new(std::sync::OnceLock::new());
            let connected = client_options(&inner.options, &inner.reconnects, &current)
                .retry_on_initial_connect()
                .connect(inner.servers.clone())
                .await;
            let started = match connected {
                Ok(client) => {
                    let _ = current.set(client.clone());
                    NatsLink::start(client, inner.options.jetstream, &inner.replies).await
                }
                Err(error) => Err(BusError::unavailable("NATS client", error)),
            };
            match started {
                Ok((new, new_ended)) => {
                    *inner.link.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(new);
                    inner.replaced.fetch_add(1, Relaxed);
                    break new_ended;
                }
                Err(error) => {
                    tracing::error!(error = &error as &dyn std::error::Error, "new NATS client failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
    }
}

async fn send_reply(client: &Client, reply_to: Subject, reply: Bytes) {
    if let Err(error) = client.publish(reply_to, reply).await {
        tracing::warn!(error = &error as &dyn std::error::Error, "reply not sent");
    }
}

/// The client settings: no request timeout (our deadline is the only one), reconnecting
/// forever with the shared capped backoff, connection events logged. A flood of replies faster
/// than the inbox is read makes the client drop messages, an event each: those are logged at
/// most once a second.
fn client_options(
    options: &NatsOptions,
    reconnects: &Arc<Reconnects>,
    current: &Arc<std::sync::OnceLock<Client>>,
) -> ConnectOptions {
    let reconnects = reconnects.clone();
    let current = current.clone();
    let dropping = Arc::new(std::sync::Mutex::new(Limiter::default()));
    ConnectOptions::new()
        .name(format!("hookbus {}", options.name))
        .request_timeout(None)
        .max_reconnects(None)
        // Called before every attempt, the first one too (`attempt` 1): that one goes at once.
        .reconnect_delay_callback(move |attempt| {
            reconnects.attempted();
            match attempt {
                0 | 1 => Duration::ZERO,
                attempt => reconnects.next("NATS", attempt as u32 - 1),
            }
        })
        .event_callback(move |event| {
            let dropping = dropping.clone();
            // The server is known once the client is made; the first connect is logged there.
            let node = current.get().filter(|_| matches!(event, async_nats::Event::Connected)).map(node);
            async move {
                if let Some(node) = node {
                    return tracing::info!(node, "NATS connected");
                }
                if !matches!(event, async_nats::Event::SlowConsumer(_)) {
                    return tracing::info!(%event, "nats connection event");
                }
                let allowed = dropping.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
                if let Some(suppressed) = allowed {
                    tracing::warn!(
                        suppressed,
                        "NATS client dropped messages it could not hand over in time (slow consumer)"
                    );
                }
            }
        })
}

/// Failures a retry cannot fix: credentials, the URL, TLS set-up.
fn is_permanent(kind: ConnectErrorKind) -> bool {
    matches!(
        kind,
        ConnectErrorKind::Authentication
            | ConnectErrorKind::AuthorizationViolation
            | ConnectErrorKind::ServerParse
            | ConnectErrorKind::Tls
    )
}

/// The server a client is on, as `name host:port` (what the server itself says).
fn node(client: &Client) -> String {
    let info = client.server_info();
    format!("{} {}:{}", info.server_name, info.host, info.port)
}

fn is_up(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// The JetStream check of a gateway that started without its server: done once it connects;
/// a missing stream is then an error in the log, and events wait in the outbox.
async fn ensure_stream_once_connected(client: Client, context: jetstream::Context, options: NatsOptions) {
    while !is_up(&client) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(error) = ensure_stream(&context, &options).await {
        tracing::error!(error = &error as &dyn std::error::Error, "JetStream is not ready for events");
    }
}

/// Hands each reply on the inbox to its request. A JetStream PubAck is skipped: a stream over
/// `{prefix}.>` also answers requests, and the responder's reply follows it.
async fn dispatch_replies(mut subscription: async_nats::Subscriber, replies: Weak<Replies<Result<Bytes, BusError>>>) {
    while let Some(reply) = subscription.next().await {
        let Some(replies) = replies.upgrade() else { return };
        let id = request_id(&reply.subject);
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            replies.deliver(id, Err(BusError::NoResponders(id.to_owned())));
        } else if reply.status.is_none_or(|status| status == StatusCode::OK) && !is_stream_answer(&reply.payload) {
            replies.deliver(id, Ok(reply.payload));
        }
    }
}

/// Hands decision requests to the connection a burst at a time. A request handed over on its
/// own wakes the connection's task at once, which then writes it alone: one write, and one
/// wake-up of the server, per decision. Waiting one turn of the runtime first lets the other
/// requests that arrived with it join, and the connection writes them all at once. A request
/// that cannot be sent gets its error as its reply.
async fn write_requests(
    client: Client,
    mut queued: mpsc::UnboundedReceiver<Request>,
    replies: Weak<Replies<Result<Bytes, BusError>>>,
) {
    while let Some(first) = queued.recv().await {
        tokio::task::yield_now().await;
        for request in std::iter::once(first).chain(std::iter::from_fn(|| queued.try_recv().ok())) {
            let Request { destination, reply_to, headers, payload } = request;
            let sent = client.publish_with_reply_and_headers(destination, reply_to.clone(), headers, payload).await;
            if let (Err(error), Some(replies)) = (sent, replies.upgrade()) {
                replies.deliver(request_id(&reply_to), Err(BusError::unavailable("NATS request", error)));
            }
        }
    }
}

/// The event id of a request, from its reply subject `{inbox}.{event id}`.
fn request_id(reply_to: &str) -> &str {
    reply_to.rsplit('.').next().unwrap_or_default()
}

/// CloudEvents binary-mode headers: `ce-<attribute>`.
fn headers(message: &Message) -> HeaderMap {
    const NAMES: [&str; 13] = attribute_names!("ce-");
    let mut headers = HeaderMap::new();
    for (name, value) in message.attributes_percent_encoded(&NAMES) {
        headers.insert(HeaderName::from_static(name), header_value(value));
    }
    headers
}

/// A header value from a percent-encoded attribute, taken as it is. Percent-encoded, every
/// value is printable ASCII: async-nats's own constructors would scan it again for a CR or an LF
/// (on which the client panics), a character at a time, at a cost above that of the rest of the
/// header; its `Deserialize` (transparent over the text) takes the text whole, unchecked.
fn header_value(text: String) -> async_nats::HeaderValue {
    use serde::de::{value::StringDeserializer, Deserialize};
    debug_assert!(!text.contains(['\r', '\n']), "{text:?}");
    let text = StringDeserializer::<serde::de::value::Error>::new(text);
    async_nats::HeaderValue::deserialize(text).expect("a header value is a text")
}

/// A JetStream PubAck or API error, as opposed to a responder's decision.
fn is_stream_answer(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct StreamAnswer {
        #[serde(default)]
        stream: Option<String>,
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(rename = "ErrorCode", default)]
        code: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<StreamAnswer>(payload)
        .is_ok_and(|answer| answer.code.is_none() && (answer.stream.is_some() || answer.error.is_some()))
}

/// Asks the streams about every subject of `options.subjects`. None covered: a stream over
/// `{prefix}.>` is created when asked to, else the gateway cannot start. Some not covered: said
/// at ERROR, naming them (their events will be dead letters, reason `no_stream`).
async fn ensure_stream(context: &jetstream::Context, options: &NatsOptions) -> Result<(), BusError> {
    let (prefix, create) = (options.prefix.as_str(), options.create_stream.as_deref());
    let (mut streams, mut uncovered) = (std::collections::BTreeSet::new(), Vec::new());
    for subject in &options.subjects {
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, context.stream_by_subject(subject.as_str())).await;
        match found {
            Ok(Ok(stream)) => drop(streams.insert(stream)),
            Ok(Err(error)) if error.kind() == GetStreamByNameErrorKind::NotFound => uncovered.push(subject.as_str()),
            Ok(Err(error)) => return Err(BusError::fatal("JetStream stream look-up (is JetStream enabled?)", error)),
            Err(_) => {
                return Err(BusError::fatal_because("JetStream stream look-up: no answer (is JetStream enabled?)"))
            }
        }
    }
    let streams: Vec<String> = streams.into_iter().collect();
    if !streams.is_empty() {
        let covered = options.subjects.len() - uncovered.len();
        tracing::info!(streams = streams.join(","), covered, of = options.subjects.len(), "JetStream streams found");
        if !uncovered.is_empty() {
            tracing::error!(
                uncovered = uncovered.join(","),
                "no JetStream stream covers these subjects: their events will be dead letters (reason no_stream) \
                 until a stream covers them"
            );
        }
        return Ok(());
    }
    let Some(name) = create else {
        return Err(BusError::fatal_because(format!(
            "no JetStream stream covers the subjects under {prefix}: create one over '{prefix}.>' \
             (nats stream add EVENTS --subjects '{prefix}.>') or pass --nats-create-stream NAME"
        )));
    };
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        num_replicas: options.stream_replicas,
        ..Default::default()
    };
    context
        .get_or_create_stream(config)
        .await
        .map_err(|error| BusError::fatal(format!("cannot create JetStream stream {name}"), error))?;
    let replicas = options.stream_replicas;
    tracing::info!(stream = name, replicas, subjects = %format!("{prefix}.>"), "JetStream stream created");
    Ok(())
}

/// A JetStream publish error as the outbox sees it: the message too large for the server or
/// the stream is refused for good; anything else (no stream leader yet, a PubAck that did not
/// come, a full stream) is worth a retry under the same `Nats-Msg-Id`.
fn jetstream_error(what: &str, error: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind;
    use jetstream::ErrorCode;
    let code = std::error::Error::source(&error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(jetstream::Error::error_code);
    let too_large =
        matches!(code, Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM));
    if error.kind() == PublishErrorKind::MaxPayloadExceeded || too_large {
        BusError::undeliverable(what, BrokerRefusal::TooLarge, error)
    } else {
        BusError::unavailable(what, error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_answers_are_told_from_decisions() {
        assert!(is_stream_answer(br#"{"stream":"EVENTS","seq":7}"#));
        assert!(is_stream_answer(br#"{"error":{"code":503,"description":"x"}}"#));
        assert!(!is_stream_answer(br#"{"ErrorCode":0,"ErrorInfo":""}"#));
        assert!(!is_stream_answer(b"not json"));
    }

    #[test]
    fn headers_hold_each_attribute_once() {
        let origin = crate::bus::Origin { sdk_app_id: "1400".into(), ..Default::default() };
        let message = Message::new("t", "C", None, origin, Bytes::new());
        let headers = headers(&message);
        assert_eq!(headers.len(), message.attributes().count());
        assert!(headers.iter().all(|(_, values)| values.len() == 1));
        assert_eq!(headers.get("ce-id").map(|v| v.as_str()), Some(message.id.as_str()));
        assert_eq!(headers.get("ce-partitionkey"), None, "no room: not written");
        let origin = crate::bus::Origin { client_ip: "10.0.0.1 x".into(), ..Default::default() };
        let headers = super::headers(&Message::new("t", "C", Some("房".into()), origin, Bytes::new()));
        assert_eq!(headers.get("ce-partitionkey").map(|v| v.as_str()), Some("%E6%88%BF"));
        assert_eq!(headers.get("ce-clientip").map(|v| v.as_str()), Some("10.0.0.1%20x"));
        assert_eq!(headers.get("ce-specversion").map(|v| v.as_str()), Some("1.0"));
    }
}
