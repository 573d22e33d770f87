//! The [`BusError`] every backend reports, in words the rest of the gateway understands; each
//! backend translates its client library's errors into it.

use std::error::Error;
use std::sync::Arc;

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
    Fatal {
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
    /// This one event can never be delivered: the broker refuses it for good (too large,
    /// invalid, not authorised, no stream covers it). A retry would be refused again, so it
    /// becomes a dead letter and the events after it go on.
    #[error("{what}")]
    Undeliverable {
        what: String,
        /// Why.
        reason: BrokerRefusal,
        #[source]
        cause: Option<Cause>,
    },
    /// The broker nacked this event. Transient when the broker nacks everything (a queue
    /// leader moving); when it keeps nacking this one while confirming others, the outbox
    /// takes it for a refusal of this event after a few attempts.
    #[error("nacked by the broker: {0}")]
    Nacked(String),
}

/// Why the broker refused an event for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRefusal {
    TooLarge,
    Invalid,
    NotAuthorized,
    /// No JetStream stream covers its subject.
    NoStream,
}

impl BrokerRefusal {
    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            BrokerRefusal::TooLarge => "too_large",
            BrokerRefusal::Invalid => "invalid",
            BrokerRefusal::NotAuthorized => "not_authorized",
            BrokerRefusal::NoStream => "no_stream",
        }
    }
}

impl BusError {
    /// A failure to connect, caused by `cause`.
    pub fn connect(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> BusError {
        BusError::Connect { what: what.into(), cause: Some(Arc::new(cause)) }
    }

    /// A failure no retry can fix, caused by `cause`.
    pub fn fatal(what: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> BusError {
        BusError::Fatal { what: what.into(), cause: Some(Arc::new(cause)) }
    }

    /// What no retry can fix, said in words.
    pub fn fatal_because(what: impl Into<String>) -> BusError {
        BusError::Fatal { what: what.into(), cause: None }
    }

    /// This one event can never be delivered (because of `reason`), because of `cause`.
    pub fn undeliverable(
        what: impl Into<String>,
        reason: BrokerRefusal,
        cause: impl Error + Send + Sync + 'static,
    ) -> BusError {
        BusError::Undeliverable { what: what.into(), reason, cause: Some(Arc::new(cause)) }
    }

    /// Whether a retry may succeed; `false` stops start-up.
    pub fn is_transient(&self) -> bool {
        !matches!(self, BusError::Fatal { .. })
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
