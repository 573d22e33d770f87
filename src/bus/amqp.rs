//! RabbitMQ (AMQP 0-9-1): events published to a durable topic exchange with publisher confirms
//! and `mandatory`; decisions as RPC, matched by correlation id, with replies consumed from a
//! queue of the gateway's own on a connection of their own: the client drops its whole
//! connection on a frame it cannot parse (a correlation id that is not UTF-8, properties larger
//! than the frame size), and bytes a responder chose must at most cost that reply connection,
//! which is rebuilt at once while the replies wait in the queue, never the publishing link.
//! Events no queue is bound for go to the exchange's alternate exchange and
//! wait in a durable queue (or, with that off, come back and are reported); requests nobody
//! is bound for always come back, so a missing responder is known at once. The publishing link
//! (connection and two channels: opened, declared, opened again) is [`link`]'s. A publishing
//! channel that only gets nacks (one opened before a quorum queue's leader moved can stay so
//! for good) or whose confirms do not come is closed and opened again. A publish the broker
//! refuses for want of permission marks the bus refused (not connected, for readiness and
//! `/metrics`) until a publish is confirmed again.
//! With [`link`], the only file that names lapin types.

mod link;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::sync::{Arc, Weak};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation, Connection};

use super::error::BusError;
use super::message::{attribute_names, Message};
use super::replies::Replies;
use super::serve::{Answer, Ready};
use crate::logs::Limiter;
pub use link::QueueType;
use link::{
    connect_to, declare_reply_queue, queue_arguments, unavailable, AmqpLink, LinkKeeper, TIMEOUT, UNROUTED_HEADER,
};

/// What `refusal` reports while the broker refuses publishes for want of permission.
const ACCESS_REFUSED: &str = "access_refused";
/// How long a refused publish keeps the bus refused when nothing is tried since: the outbox
/// retries waiting events at least every 5 s, which renews it while the refusal lasts; with
/// nothing left to publish (the events became dead letters), readiness must not stay off for
/// good, since an unready gateway gets no callback that could show the refusal is over.
const REFUSAL_HOLD: Duration = Duration::from_secs(10);
/// Nacks in a row, with no confirm between them, after which the publishing channel is taken
/// for stale and opened again.
const NACK_STREAK: u32 = 3;

/// Where the broker is and where events go.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// The nodes of one cluster (a seed list): the first that connects is used until it breaks.
    pub urls: Vec<String>,
    /// The durable topic exchange, declared at start when it does not exist.
    pub exchange: String,
    /// Keep events no queue is bound for in this durable queue, through the alternate exchange
    /// `{exchange}.unrouted`; `None` lets them come back and be reported.
    pub unrouted_queue: Option<String>,
    /// The type of the queues the gateway declares (the unrouted one, the responders').
    pub queue_type: QueueType,
}

/// Checks that `url` is an AMQP URL, before anything connects.
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<lapin::uri::AMQPUri>().map(drop)
}

#[derive(Clone)]
pub struct Amqp {
    inner: Arc<AmqpInner>,
}

struct AmqpInner {
    /// The publishing link, kept up by [`link::supervise`].
    link: Arc<LinkKeeper>,
    /// Decision requests waiting for their reply, by correlation id (the event id).
    replies: Replies<Bytes>,
    /// The connection that consumes `reply_queue`, apart from the link.
    reply_connection: Mutex<Option<Arc<Connection>>>,
    /// Reply connections given up for a reply the client could not read (rebuilt since).
    unreadable_replies: AtomicU64,
    /// When the broker last refused a publish for want of permission; cleared by a publish it
    /// answers for, and over once [`REFUSAL_HOLD`] passed without another.
    refused: Mutex<Option<std::time::Instant>>,
    /// Rate limits for lines a broker or a responder can repeat at will.
    refusal_log: Mutex<Limiter>,
    reply_log: Mutex<Limiter>,
    /// `close` was called: the reply connection is not rebuilt any more.
    closing: AtomicBool,
}

impl Amqp {
    /// Connects, declares the exchanges, and starts the link supervisor. A broker that cannot
    /// be reached is left to the supervisor; refused credentials, an unknown vhost or a
    /// declaration the broker rejects fail.
    pub async fn connect(options: AmqpOptions) -> Result<Amqp, BusError> {
        let reply_queue = format!("{}.replies.{}", options.exchange, uuid::Uuid::new_v4().simple());
        let link =
            LinkKeeper::new(options.urls, options.exchange, options.unrouted_queue, options.queue_type, reply_queue);
        let inner = Arc::new(AmqpInner {
            link: Arc::new(link),
            replies: Replies::default(),
            reply_connection: Mutex::new(None),
            unreadable_replies: AtomicU64::new(0),
            refused: Mutex::new(None),
            refusal_log: Mutex::new(Limiter::default()),
            reply_log: Mutex::new(Limiter::default()),
            closing: AtomicBool::new(false),
        });
        match inner.link.get().await {
            Ok(_) => {}
            Err(error) if !error.is_transient() => return Err(error),
            Err(error) => tracing::warn!(
                error = &error as &dyn std::error::Error,
                "RabbitMQ unreachable at start; serving anyway and connecting in the background"
            ),
        }
        tokio::spawn(link::supervise(Arc::downgrade(&inner.link)));
        tokio::spawn(consume_replies(Arc::downgrade(&inner)));
        Ok(Amqp { inner })
    }

    /// Publishes the batch with `mandatory` and waits for every confirm together.
    pub async fn publish(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        let link = match self.inner.link.get().await {
            Ok(link) => link,
            Err(error) => return vec![Err(error); batch.len()],
        };
        // Set when the broker refused a publish for want of permission.
        let refused = &AtomicBool::new(false);
        let failed = |what: &str, error: lapin::Error| {
            if is_access_refused(&error) {
                refused.store(true, Relaxed);
            }
            unavailable(what, error)
        };
        // Each result as it settles: what the broker confirmed stays confirmed when the wait for
        // the rest is given up.
        let settled: Mutex<Vec<Option<Result<(), BusError>>>> = Mutex::new(vec![None; batch.len()]);
        let publishing = async {
            let mut sent = Vec::with_capacity(batch.len());
            for message in batch {
                sent.push(
                    link.events
                        .basic_publish(
                            self.inner.link.exchange.as_str().into(),
                            message.destination.as_str().into(),
                            BasicPublishOptions { mandatory: true, ..Default::default() },
                            &message.payload,
                            properties(message, self.inner.link.unrouted_queue.is_some()),
                        )
                        .await,
                );
            }
            join_all(sent.into_iter().zip(batch).enumerate().map(|(index, (sent, message))| {
                let settled = &settled;
                async move {
                    let result = async {
                        let confirm = sent.map_err(|error| failed("publish", error))?;
                        confirmed(confirm.await.map_err(|error| failed("confirm", error))?, message)
                    }
                    .await;
                    settled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[index] = Some(result);
                }
            }))
            .await;
        };
        // A publish or confirm registered while the link was breaking may never be resolved by
        // the client: a link seen down ends the wait at once, and nothing waits past the timeout.
        let given_up = tokio::select! {
            biased;
            () = publishing => None,
            lost = link.lost() => {
                tracing::warn!(channel = link.events.id(), "AMQP link lost while publishing; the unconfirmed are sent again");
                Some(lost)
            }
            () = tokio::time::sleep(TIMEOUT) => {
                self.inner.link.reopen_events(&link, "confirm timed out").await;
                Some("AMQP confirm timed out")
            }
        };
        let results: Vec<_> = settled
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(BusError::unavailable_because(given_up.unwrap_or("AMQP publish not settled")))
                })
            })
            .collect();
        if refused.load(Relaxed) {
            self.refused(&link).await;
        } else if results.iter().any(answered) && self.refused_since().take().is_some() {
            tracing::info!(exchange = self.inner.link.exchange, "RabbitMQ confirms publishes again");
        }
        let nacked = results.iter().filter(|result| matches!(result, Err(BusError::Nacked(_)))).count() as u32;
        let streak = if results.iter().any(Result::is_ok) {
            self.inner.link.nacks.store(0, Relaxed);
            0
        } else {
            self.inner.link.nacks.fetch_add(nacked, Relaxed) + nacked
        };
        if streak >= NACK_STREAK {
            self.inner.link.reopen_events(&link, "nack streak").await;
        }
        results
    }

    /// The broker refused a publish on `link` for want of permission: no retry fixes that, but
    /// the permission may be granted while the gateway runs. Marks the bus refused (readiness
    /// and `/metrics` show it), says so at ERROR (once a second at most), and opens the
    /// publishing channel again (the broker closed it) so that the next retry can tell.
    async fn refused(&self, link: &AmqpLink) {
        *self.refused_since() = Some(std::time::Instant::now());
        let allowed = self.inner.refusal_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
        if let Some(suppressed) = allowed {
            tracing::error!(
                exchange = self.inner.link.exchange,
                suppressed,
                "RabbitMQ refuses publishes to the exchange (ACCESS_REFUSED): the user needs write permission on it; events wait in the outbox until a publish is confirmed"
            );
        }
        self.inner.link.reopen_events(link, "publish refused").await;
    }

    /// Publishes a request with `reply_to` naming the reply queue and waits for the reply with
    /// its correlation id.
    /// An unroutable request (nobody bound) fails at once with "no responders".
    pub async fn request(&self, message: &Message) -> Result<Bytes, BusError> {
        let link = self.inner.link.get().await?;
        let mut waiting = self.inner.replies.register(&message.id);
        let expiration = message.time_left().as_millis().max(1).to_string();
        // Never kept when unrouted: a request nobody is bound for comes back at once.
        let properties = properties(message, false)
            .with_reply_to(self.inner.link.reply_queue.as_str().into())
            .with_correlation_id(message.id.as_str().into())
            .with_expiration(expiration.into());
        let confirm = link
            .rpc
            .basic_publish(
                self.inner.link.exchange.as_str().into(),
                message.destination.as_str().into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &message.payload,
                properties,
            )
            .await
            .map_err(|error| unavailable("request", error))?;
        match confirm.await.map_err(|error| unavailable("request confirm", error))? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(_)) => return Err(BusError::NoResponders(message.destination.clone())),
            other => return Err(BusError::unavailable_because(format!("AMQP request confirm: {other:?}"))),
        }
        waiting.reply().await.map_err(|_| BusError::unavailable_because("AMQP link closed before the reply"))
    }

    /// Whether the link is up and the broker takes publishes (not refusing them for want of
    /// permission).
    pub fn is_connected(&self) -> bool {
        self.inner.link.is_connected() && self.refusal().is_none()
    }

    /// Why the broker refuses every publish right now (`access_refused`), if it does.
    pub fn refusal(&self) -> Option<&'static str> {
        let refused = self.refused_since().is_some_and(|at| at.elapsed() < REFUSAL_HOLD);
        refused.then_some(ACCESS_REFUSED)
    }

    fn refused_since(&self) -> std::sync::MutexGuard<'_, Option<std::time::Instant>> {
        self.inner.refused.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reply connections given up for a reply the client could not read (not UTF-8 where AMQP
    /// wants it, larger than a frame): a burst of such replies, pushed together, costs one.
    pub fn unreadable_replies(&self) -> u64 {
        self.inner.unreadable_replies.load(Relaxed)
    }

    pub fn connect_attempts(&self) -> u64 {
        self.inner.link.reconnects.attempts()
    }

    /// `host:port` of the node the link is on.
    pub fn node(&self) -> Option<String> {
        self.inner.link.node()
    }

    /// Publishing channels closed and opened again after a nack streak or a confirm timeout.
    pub fn channel_reopens(&self) -> u64 {
        self.inner.link.reopens()
    }

    /// Replies that arrived after their request had given up.
    pub fn late_replies(&self) -> u64 {
        self.inner.replies.late()
    }

    pub async fn close(&self) {
        self.inner.closing.store(true, Relaxed);
        let replies = self.inner.reply_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(connection) = replies {
            let _ = connection.close(200, "hookbus closing".into()).await;
        }
        self.inner.link.close().await;
    }

    /// Consumes the requests sent to `destinations` from the shared queue `group` (deleted when
    /// the last server leaves, so requests become unroutable and their senders learn at once
    /// that nobody answers) and replies to each request's `reply_to` with its correlation id.
    pub async fn serve_requests(
        &self,
        destinations: &[String],
        group: &str,
        answer: Answer,
        ready: Ready,
    ) -> Result<(), BusError> {
        let link = self.inner.link.get().await?;
        let channel = link.connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
        // A quorum queue is durable and stays when its last responder goes; a classic one goes.
        let options = match self.inner.link.queue_type {
            QueueType::Classic => QueueDeclareOptions { auto_delete: true, ..Default::default() },
            QueueType::Quorum => QueueDeclareOptions { durable: true, ..Default::default() },
        };
        channel
            .queue_declare(group.into(), options, queue_arguments(self.inner.link.queue_type))
            .await
            .map_err(|error| unavailable("queue declare", error))?;
        for key in destinations {
            let (queue, exchange) = (group.into(), self.inner.link.exchange.as_str().into());
            channel
                .queue_bind(queue, exchange, key.as_str().into(), QueueBindOptions::default(), FieldTable::default())
                .await
                .map_err(|error| unavailable("queue bind", error))?;
        }
        channel.basic_qos(256, BasicQosOptions::default()).await.map_err(|error| unavailable("qos", error))?;
        let mut requests = channel
            .basic_consume(group.into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(|error| unavailable("consume", error))?;
        tracing::info!(queue = group, exchange = self.inner.link.exchange, "answering requests");
        let _ = ready.send(());
        while let Some(request) = requests.next().await {
            let request = request.map_err(|error| unavailable("consume", error))?;
            let (channel, answer) = (channel.clone(), answer.clone());
            tokio::spawn(async move {
                let properties = &request.properties;
                if let (Some(reply_to), Some(id)) = (properties.reply_to(), properties.correlation_id()) {
                    let reply = answer(request.routing_key.as_str(), Bytes::copy_from_slice(&request.data)).await;
                    let reply_properties = BasicProperties::default()
                        .with_correlation_id(id.clone())
                        .with_content_type("application/json".into());
                    let sent = channel
                        .basic_publish(
                            "".into(),
                            reply_to.clone(),
                            BasicPublishOptions::default(),
                            &reply,
                            reply_properties,
                        )
                        .await;
                    if let Err(error) = sent {
                        tracing::warn!(error = &error as &dyn std::error::Error, "reply not sent");
                    }
                }
                let _ = request.acker.ack(BasicAckOptions::default()).await;
            });
        }
        Err(BusError::unavailable_because("AMQP consumer ended"))
    }
}

/// Consumes the reply queue on a connection of its own, rebuilt at once whenever it ends: a
/// reply the client cannot parse costs this connection (counted, and logged at most once a
/// second), while the replies behind it wait in the queue and the publishing link goes on.
async fn consume_replies(inner: Weak<AmqpInner>) {
    let mut failures = 0;
    loop {
        let opened = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.closing.load(Relaxed) {
                return;
            }
            let url = inner.link.current_url().to_owned();
            tokio::time::timeout(TIMEOUT, open_replies(&inner, &url))
                .await
                .unwrap_or_else(|_| Err(BusError::unavailable_because("AMQP connect timed out")))
        };
        let replies = match opened {
            Ok(replies) => replies,
            Err(error) => {
                failures += 1;
                let Some(inner) = inner.upgrade() else { return };
                tracing::debug!(error = &error as &dyn std::error::Error, "AMQP reply connection still down");
                let wait = inner.link.reconnects.next("RabbitMQ (replies)", failures);
                drop(inner);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        failures = 0;
        let ended = dispatch_replies(replies, inner.clone()).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Relaxed) {
            return;
        }
        if let Some(connection) = inner.reply_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
        {
            tokio::spawn(async move { connection.close(200, "rebuilding the reply connection".into()).await });
        }
        let unreadable = ended.as_ref().is_some_and(is_unreadable);
        if unreadable {
            inner.unreadable_replies.fetch_add(1, Relaxed);
        }
        let allowed = inner.reply_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
        if let Some(suppressed) = allowed {
            let error = ended.as_ref().map(|error| error as &dyn std::error::Error);
            if unreadable {
                tracing::warn!(error, suppressed, "AMQP reply the client cannot read dropped, with the reply connection; rebuilding it (the publishing link is not affected)");
            } else {
                tracing::warn!(error, suppressed, "AMQP reply connection lost; rebuilding it");
            }
        }
    }
}

/// Hands each reply on the reply queue to its request, by correlation id, until the consumer
/// ends or the [`Amqp`] is gone; returns the error that ended the consumer, if one did.
async fn dispatch_replies(mut replies: lapin::Consumer, inner: Weak<AmqpInner>) -> Option<lapin::Error> {
    while let Some(reply) = replies.next().await {
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return Some(error),
        };
        let inner = inner.upgrade()?;
        let id = reply.properties.correlation_id().as_ref().map(ShortString::as_str).unwrap_or("");
        inner.replies.deliver(id, Bytes::from(reply.data));
    }
    None
}

/// Opens the reply connection and starts consuming the reply queue (declared again, should it
/// have expired or gone with its node).
async fn open_replies(inner: &AmqpInner, url: &str) -> Result<lapin::Consumer, BusError> {
    let connection = connect_to(url).await?;
    let channel = connection.create_channel().await.map_err(|error| unavailable("channel", error))?;
    declare_reply_queue(&channel, &inner.link.reply_queue).await?;
    let options = BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() };
    let queue = inner.link.reply_queue.as_str();
    let replies = channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        .map_err(|error| unavailable("consume replies", error))?;
    *inner.reply_connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(connection));
    Ok(replies)
}

/// Whether the client gave up a connection because of a frame it could not read: bytes that
/// do not parse, or a frame over the size agreed.
fn is_unreadable(error: &lapin::Error) -> bool {
    match error.kind() {
        lapin::ErrorKind::ParsingError(_) => true,
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR | AMQPHardError::SYNTAXERROR))
        }
        _ => false,
    }
}

/// Whether the broker took the publish and answered for it (a confirm, a return, a nack):
/// whatever refused publishes before is over.
fn answered(result: &Result<(), BusError>) -> bool {
    matches!(result, Ok(()) | Err(BusError::Unroutable(_) | BusError::Nacked(_)))
}

/// Whether the broker refused for want of permission.
fn is_access_refused(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)))
}

/// What the broker's answer to the publish of `message` means for it.
fn confirmed(confirmation: Confirmation, message: &Message) -> Result<(), BusError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(BusError::Unroutable(format!(
            "{} {} (no queue bound to the routing key, and the exchange has no alternate exchange)",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(BusError::Nacked(format!("AMQP confirm for {}", message.destination))),
        Confirmation::NotRequested => Err(BusError::unavailable_because("AMQP confirm: confirms not enabled")),
    }
}

/// The AMQP properties and CloudEvents headers of an event; with unrouted events kept, the
/// header that lets the alternate exchange's queue take it (in the same table: one table is
/// built per event, none copied).
fn properties(message: &Message, keep_unrouted: bool) -> BasicProperties {
    let mut headers = FieldTable::default();
    const NAMES: [&str; 13] = attribute_names!("cloudEvents:");
    for (name, value) in message.attributes_named(&NAMES) {
        headers.insert(name.into(), AMQPValue::LongString(value.as_ref().into()));
    }
    if keep_unrouted {
        headers.insert(UNROUTED_HEADER.into(), AMQPValue::LongString("keep".into()));
    }
    let seconds = message.time.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.id.as_str().into())
        .with_timestamp(seconds)
        .with_type(message.event_type.as_str().into())
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Origin;

    #[test]
    fn properties_follow_the_amqp_binding() {
        let origin = Origin {
            sdk_app_id: "1400".into(),
            client_ip: "10.0.0.1".into(),
            opt_platform: "iOS".into(),
            ..Origin::default()
        };
        let message = Message::new("t", "Live.X", Some("r1".into()), origin, Bytes::from_static(b"{}"));
        let properties = properties(&message, false);
        assert_eq!(properties.delivery_mode(), &Some(2));
        assert_eq!(properties.message_id().as_ref().map(ShortString::as_str), Some(message.id.as_str()));
        assert_eq!(properties.kind().as_ref().map(ShortString::as_str), Some("Live.X"));
        let headers = properties.headers().as_ref().unwrap();
        let header = |name: &str| headers.inner().get(name).cloned();
        assert_eq!(header("cloudEvents:partitionkey"), Some(AMQPValue::LongString("r1".into())));
        assert_eq!(header("cloudEvents:source"), Some(AMQPValue::LongString("/tencent/1400".into())));
        assert!(header("cloudEvents:deadline").is_none());
        assert!(header(UNROUTED_HEADER).is_none());
        let kept = super::properties(&message, true);
        let kept = kept.headers().as_ref().unwrap().inner();
        assert_eq!(kept.get(UNROUTED_HEADER), Some(&AMQPValue::LongString("keep".into())));
        assert_eq!(kept.len(), headers.inner().len() + 1, "the same headers, and the unrouted one");
    }
}
