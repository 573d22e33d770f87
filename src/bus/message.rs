//! What every backend shares: the [`Message`] they carry, the [`BusError`] they report, and
//! how requests are served ([`Answer`], [`Ready`]).

use std::borrow::Cow;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

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
    /// A new event received now, with a fresh id, destined for `{prefix}.{command}`.
    pub fn new(prefix: &str, command: &str, key: Option<String>, origin: Origin, payload: Bytes) -> Message {
        let id = uuid::Uuid::now_v7().to_string();
        let destination = format!("{prefix}.{command}");
        Message::restore(id, SystemTime::now(), command.to_owned(), destination, key, origin, payload)
    }

    /// An event from its recorded fields (a new one, or one read back from the spool); the
    /// attributes derived from them are computed here and nowhere else.
    pub fn restore(
        id: String,
        time: SystemTime,
        command: String,
        destination: String,
        key: Option<String>,
        origin: Origin,
        payload: Bytes,
    ) -> Message {
        Message {
            id,
            command,
            destination,
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

/// Whether `text` can stand in a destination name on every bus (Kafka topics are the
/// strictest): letters, digits, `.`, `_` and `-`, no empty part between dots, at most 128 bytes.
/// Prefixes and commands are both checked with it.
pub fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !text.starts_with('.')
        && !text.ends_with('.')
        && !text.contains("..")
}

/// The cause of a bus failure, shared so that one failure can stand for a whole batch.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// What went wrong on the bus, in words the rest of the gateway understands. The broker
/// client's own error is kept as the source, so a log shows the whole chain.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect: {what}")]
    Connect {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// A failure no retry can fix: credentials refused, a malformed address, a configuration
    /// the broker rejects. Start-up stops on it.
    #[error("{what}")]
    Refused {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("{what}")]
    Unavailable {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    #[error("no responders for {0}")]
    NoResponders(String),
    #[error("unroutable: {0}")]
    Unroutable(String),
}

impl BusError {
    /// A failure to connect, caused by `cause`.
    pub fn connect(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> BusError {
        BusError::Connect { what: what.into(), cause: Some(Arc::new(cause)) }
    }

    /// A failure no retry can fix, caused by `cause`.
    pub fn refused(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> BusError {
        BusError::Refused { what: what.into(), cause: Some(Arc::new(cause)) }
    }

    /// Whether a retry may succeed; `false` stops start-up.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Refused { .. })
    }

    /// The bus could not do `what` because of `cause`; worth a retry.
    pub fn unavailable(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> BusError {
        BusError::Unavailable { what: what.into(), cause: Some(Arc::new(cause)) }
    }

    /// The bus could not do `what`, with no error of a client library behind it.
    pub fn unavailable_because(what: impl Into<String>) -> BusError {
        BusError::Unavailable { what: what.into(), cause: None }
    }
}

/// First and longest wait between attempts to reach a broker that is away.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// Attempts to (re)connect to a broker: counted for `/metrics`, each logged once, spaced by a
/// capped exponential backoff.
#[derive(Debug, Default)]
pub struct Reconnects {
    attempts: std::sync::atomic::AtomicU64,
}

impl Reconnects {
    /// Counts one attempt to connect.
    pub fn attempted(&self) {
        self.attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Logs that the `failures`-th attempt in a row is coming; returns how long to wait first.
    pub fn next(&self, broker: &str, failures: u32) -> Duration {
        let delay = RECONNECT_FIRST.saturating_mul(1 << failures.saturating_sub(1).min(8)).min(RECONNECT_MAX);
        tracing::warn!(broker, attempt = failures, retry_in = ?delay, "broker unreachable; connecting again");
        delay
    }

    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Fired by `serve_requests` once its subscriptions are live.
pub type Ready = tokio::sync::oneshot::Sender<()>;

/// How `serve_requests` answers: given a request's destination and body, the reply body.
pub type Answer = Arc<dyn Fn(&str, Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_fit_every_bus() {
        assert!(valid_name("Live.CallbackAfterCreateRoom"));
        assert!(valid_name("Future_Thing-2"));
        for bad in ["", "a b", "a.>", "a.*", ".a", "a.", "a..b", &"x".repeat(129)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
