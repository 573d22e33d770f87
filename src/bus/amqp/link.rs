//! The RabbitMQ link: one connection and its two confirm channels, opened to the first node of
//! the seed list that takes it (from a place of each instance's own), with the event exchange,
//! its alternate exchange and queue, and the reply queue declared on every open. The link is
//! opened again whenever it broke, to the next node in turn; [`supervise`] keeps it up while
//! idle, with a capped backoff while the broker is away. A publishing channel the broker only
//! nacks, or whose confirms do not come, is closed and opened again on its connection
//! ([`LinkKeeper::reopen_events`]).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::bus::error::BusError;
use crate::bus::reconnects::Reconnects;

/// How long the reply queue outlives its last consumer, in milliseconds: replies wait there
/// while the reply connection is rebuilt, and the queue of a gateway gone is deleted.
const REPLY_QUEUE_EXPIRES: i32 = 60_000;
/// A connect or a confirm that takes longer than this counts as failed.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a publish waiting for its confirms checks that its link is still up.
const LINK_CHECK: Duration = Duration::from_millis(50);
/// How often the supervisor checks an idle link.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);
/// The header that marks events (not requests) for the alternate exchange's queue.
pub(super) const UNROUTED_HEADER: &str = "hookbus-unrouted";
/// Largest frame asked of the broker unless the URL sets `frame_max`: the client keeps a read
/// and a write buffer of 32 frames each, 8 MiB at RabbitMQ's default of 128 KiB; a larger
/// message goes in several frames.
const FRAME_MAX: u32 = 32 * 1024;

/// The type of a queue the gateway declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// One node's queue (mirrored only by a policy); the responders' queue goes with them.
    Classic,
    /// Replicated with Raft over the cluster's nodes: durable, never auto-deleted.
    Quorum,
}

/// The link in use, if it is up, and what it takes to open one again.
pub(super) struct LinkKeeper {
    urls: Vec<String>,
    /// The seed list's entry in use, or the next to try.
    current: AtomicUsize,
    /// `host:port` of the node the link is on.
    node: Mutex<Option<String>>,
    /// The durable topic exchange events and requests are published to.
    pub(super) exchange: String,
    /// The durable queue of events no queue is bound for, if they are kept.
    pub(super) unrouted_queue: Option<String>,
    /// The type of the queues the gateway declares.
    pub(super) queue_type: QueueType,
    /// The queue replies are sent to: `{exchange}.replies.{random}`, one per gateway.
    pub(super) reply_queue: String,
    pub(super) reconnects: Reconnects,
    /// Nacks since the last confirm.
    pub(super) nacks: AtomicU32,
    /// Publishing channels closed and opened again (a nack streak, a confirm timeout).
    reopens: AtomicU64,
    slot: tokio::sync::Mutex<Option<AmqpLink>>,
    connected: AtomicBool,
}

#[derive(Clone)]
pub(super) struct AmqpLink {
    pub(super) connection: Arc<Connection>,
    /// Confirm mode: informational events.
    pub(super) events: Channel,
    /// Confirm mode: decision requests (their replies come on the reply connection).
    pub(super) rpc: Channel,
}

impl AmqpLink {
    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.events.status().connected() && self.rpc.status().connected()
    }

    /// Resolves once the link is seen down (checked every [`LINK_CHECK`]).
    pub(super) async fn lost(&self) -> &'static str {
        loop {
            tokio::time::sleep(LINK_CHECK).await;
            if !self.is_up() {
                return "AMQP link lost while publishing";
            }
        }
    }

    /// Whether `other` is this link's publishing channel (a new connection numbers its
    /// channels from 1 again, so the id alone does not tell).
    fn publishes_on(&self, other: &AmqpLink) -> bool {
        Arc::ptr_eq(&self.connection, &other.connection) && self.events.id() == other.events.id()
    }
}

impl LinkKeeper {
    /// No link yet; the first is opened by [`LinkKeeper::get`].
    pub(super) fn new(
        urls: Vec<String>,
        exchange: String,
        unrouted_queue: Option<String>,
        queue_type: QueueType,
        reply_queue: String,
    ) -> LinkKeeper {
        // Each instance starts at its own place in the list, so that replicas spread over nodes.
        let start = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), ()) as usize;
        LinkKeeper {
            current: AtomicUsize::new(start % urls.len().max(1)),
            urls,
            node: Mutex::new(None),
            exchange,
            unrouted_queue,
            queue_type,
            reply_queue,
            reconnects: Reconnects::default(),
            nacks: AtomicU32::new(0),
            reopens: AtomicU64::new(0),
            slot: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
        }
    }

    /// The current link, re-established first when it broke.
    pub(super) async fn get(&self) -> Result<AmqpLink, BusError> {
        let mut slot = self.slot.lock().await;
        if let Some(link) = slot.as_ref().filter(|link| link.is_up()) {
            return Ok(link.clone());
        }
        if slot.take().is_some() {
            self.connected.store(false, Relaxed);
            let node = self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            tracing::warn!(node, "AMQP link lost; reconnecting to the next node");
            // The node that broke is tried last.
            self.current.fetch_add(1, Relaxed);
        }
        let link = self.open_any().await?;
        self.connected.store(true, Relaxed);
        self.nacks.store(0, Relaxed);
        *slot = Some(link.clone());
        Ok(link)
    }

    /// Opens a link to the first node of the seed list, from the current one on, that takes it.
    async fn open_any(&self) -> Result<AmqpLink, BusError> {
        let (urls, start) = (&self.urls, self.current.load(Relaxed));
        let mut failed = None;
        for index in (start..start + urls.len()).map(|index| index % urls.len()) {
            self.reconnects.attempted();
            let url = &urls[index];
            let opened = tokio::time::timeout(TIMEOUT, self.open(url))
                .await
                .unwrap_or_else(|_| Err(BusError::unavailable_because("AMQP connect timed out")));
            match opened {
                Ok(link) => {
                    let node = node_of(url);
                    tracing::info!(node, exchange = self.exchange, "AMQP link up");
                    *self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(node);
                    self.current.store(index, Relaxed);
                    return Ok(link);
                }
                Err(error) if !error.is_transient() => return Err(error),
                Err(error) => {
                    if urls.len() > 1 {
                        let node = node_of(url);
                        tracing::warn!(
                            node,
                            error = &error as &dyn std::error::Error,
                            "AMQP node unreachable; trying the next"
                        );
                    }
                    failed = Some(error);
                }
            }
        }
        Err(failed.unwrap_or_else(|| BusError::unavailable_because("no AMQP URL")))
    }

    /// Opens a connection, the two channels, the exchange and the reply queue.
    async fn open(&self, url: &str) -> Result<AmqpLink, BusError> {
        let connection = connect_to(url).await?;
        let events = connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
        let rpc = connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
        for channel in [&events, &rpc] {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|error| unavailable("confirm", error))?;
        }
        self.declare(&connection, &events).await?;
        // Here too, so that no request names a queue that does not exist yet.
        declare_reply_queue(&events, &self.reply_queue).await?;
        Ok(AmqpLink { connection: Arc::new(connection), events, rpc })
    }

    /// Declares the event exchange unless it exists and, when unrouted events are kept, the
    /// alternate exchange `{exchange}.unrouted` (headers, durable) with the durable queue bound
    /// to it for events only: requests nobody is bound for must still come back at once.
    async fn declare(&self, connection: &Connection, events: &Channel) -> Result<(), BusError> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let mut arguments = FieldTable::default();
        if let Some(queue) = &self.unrouted_queue {
            let alternate = format!("{}.unrouted", self.exchange);
            events
                .exchange_declare(alternate.as_str().into(), ExchangeKind::Headers, durable, FieldTable::default())
                .await
                .map_err(|error| link_error(&format!("declare exchange {alternate}"), error))?;
            let options = QueueDeclareOptions { durable: true, ..Default::default() };
            events
                .queue_declare(queue.as_str().into(), options, queue_arguments(self.queue_type))
                .await
                .map_err(|error| link_error(&format!("declare queue {queue}"), error))?;
            let mut only_events = FieldTable::default();
            only_events.insert("x-match".into(), AMQPValue::LongString("all".into()));
            only_events.insert(UNROUTED_HEADER.into(), AMQPValue::LongString("keep".into()));
            let (name, exchange) = (queue.as_str().into(), alternate.as_str().into());
            events
                .queue_bind(name, exchange, "".into(), QueueBindOptions::default(), only_events)
                .await
                .map_err(|error| link_error(&format!("bind queue {queue}"), error))?;
            arguments.insert("alternate-exchange".into(), AMQPValue::LongString(alternate.as_str().into()));
        }
        // Declared at once, which is silent for a new exchange and for one declared earlier with
        // the same arguments (checking first with a passive declare costs a 404, which the client
        // logs at ERROR, on every start on a new exchange). An exchange declared earlier with
        // other arguments, or that the user may use but not declare, is used as it is, after a
        // passive declare shows it exists: its alternate exchange, if it should get one, is set by
        // a policy. Scratch channels, since a refusal closes the channel it came on.
        let exchange = self.exchange.as_str();
        let scratch = connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
        let declared = scratch.exchange_declare(exchange.into(), ExchangeKind::Topic, durable, arguments).await;
        let Err(refused) = declared else {
            let _ = scratch.close(200, "declared".into()).await;
            return Ok(());
        };
        let error = link_error(&format!("declare exchange {exchange}"), refused);
        if error.is_transient() {
            return Err(error);
        }
        let scratch = connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
        let passive = ExchangeDeclareOptions { passive: true, ..Default::default() };
        match scratch.exchange_declare(exchange.into(), ExchangeKind::Topic, passive, FieldTable::default()).await {
            Ok(()) => {
                let _ = scratch.close(200, "checked".into()).await;
                tracing::warn!(
                    exchange,
                    error = &error as &dyn std::error::Error,
                    "the exchange exists with other arguments, or may not be declared by this user: used as it is"
                );
                Ok(())
            }
            Err(_) => Err(error),
        }
    }

    /// Closes the publishing channel of `stale` and opens another on its connection; when that
    /// fails, the whole link goes and the next use opens a new one. Counted.
    pub(super) async fn reopen_events(&self, stale: &AmqpLink, why: &str) {
        let mut slot = self.slot.lock().await;
        // Another publish may have replaced it already.
        let Some(link) = slot.as_mut().filter(|link| link.publishes_on(stale)) else { return };
        self.reopens.fetch_add(1, Relaxed);
        self.nacks.store(0, Relaxed);
        tracing::warn!(why, channel = link.events.id(), "AMQP publishing channel reopened");
        // Bounded: the slot's lock is held, and a broken connection may never answer.
        let _ = tokio::time::timeout(TIMEOUT, link.events.close(200, "reopening a stale channel".into())).await;
        let reopened = tokio::time::timeout(TIMEOUT, async {
            let channel = link.connection.create_channel().await?;
            channel.confirm_select(ConfirmSelectOptions::default()).await.map(|()| channel)
        })
        .await;
        match reopened {
            Ok(Ok(channel)) => link.events = channel,
            failed => {
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {TIMEOUT:?}"),
                };
                tracing::warn!(error, "AMQP channel not reopened; reconnecting");
                let _ = tokio::time::timeout(TIMEOUT, link.connection.close(200, "reopening".into())).await;
                *slot = None;
                self.connected.store(false, Relaxed);
            }
        }
    }

    /// Whether a link is up (as last seen by a use of it or by the supervisor).
    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// `host:port` of the node the link is on.
    pub(super) fn node(&self) -> Option<String> {
        self.node.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The URL of the node the link is on, or of the next to try.
    pub(super) fn current_url(&self) -> &str {
        &self.urls[self.current.load(Relaxed) % self.urls.len().max(1)]
    }

    /// Publishing channels closed and opened again after a nack streak or a confirm timeout.
    pub(super) fn reopens(&self) -> u64 {
        self.reopens.load(Relaxed)
    }

    /// Closes the link, if one is up.
    pub(super) async fn close(&self) {
        if let Some(link) = self.slot.lock().await.take() {
            let _ = link.connection.close(200, "hookbus closing".into()).await;
        }
        self.connected.store(false, Relaxed);
    }
}

/// Keeps the link up while no traffic would notice it broke, so `/readyz` recovers by itself;
/// while the broker is away, attempts are spaced by the capped backoff.
pub(super) async fn supervise(keeper: Weak<LinkKeeper>) {
    let mut failures = 0;
    let mut wait = SUPERVISE_EVERY;
    loop {
        tokio::time::sleep(wait).await;
        let Some(keeper) = keeper.upgrade() else { return };
        match keeper.get().await {
            Ok(_) => (failures, wait) = (0, SUPERVISE_EVERY),
            Err(error) => {
                failures += 1;
                tracing::debug!(error = &error as &dyn std::error::Error, "AMQP link still down");
                wait = keeper.reconnects.next("RabbitMQ", failures);
            }
        }
    }
}

/// Connects to `url`, asking for frames of [`FRAME_MAX`] unless the URL sets its own.
pub(super) async fn connect_to(url: &str) -> Result<Connection, BusError> {
    let mut uri: lapin::uri::AMQPUri =
        url.parse().map_err(|error| BusError::Fatal { what: format!("AMQP URL: {error}"), cause: None })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Connection::connect_uri(uri, ConnectionProperties::default()).await.map_err(|error| link_error("connect", error))
}

/// Declares the reply queue: not durable (replies are worth nothing after their deadline),
/// not exclusive and not auto-deleted, so that it outlives a reply connection lost with the
/// replies in it; it expires once no consumer used it for [`REPLY_QUEUE_EXPIRES`].
pub(super) async fn declare_reply_queue(channel: &Channel, queue: &str) -> Result<(), BusError> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-expires".into(), AMQPValue::LongInt(REPLY_QUEUE_EXPIRES));
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .map(drop)
        .map_err(|error| link_error(&format!("declare queue {queue}"), error))
}

/// The arguments that give a declared queue its type. A classic queue is declared with none,
/// as before there was a choice, so that one declared earlier still matches.
pub(super) fn queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    arguments
}

/// `host:port` of an AMQP URL, without its credentials: what the logs and `/metrics` name.
fn node_of(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "?".into(),
    }
}

pub(super) fn unavailable(what: &str, error: lapin::Error) -> BusError {
    BusError::unavailable(format!("AMQP {what}"), error)
}

/// An error while setting up the link: refused for good when the broker said no to the
/// credentials, the vhost or a declaration; else worth a retry.
fn link_error(what: &str, error: lapin::Error) -> BusError {
    let refused = match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED | AMQPHardError::COMMANDINVALID)
        ),
        lapin::ErrorKind::AuthProviderError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => true,
        _ => false,
    };
    if refused {
        BusError::fatal(format!("RabbitMQ refused: {what}"), error)
    } else {
        unavailable(what, error)
    }
}
