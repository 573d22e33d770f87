//! The publisher task: drains the outbox's queue through the bus in batches, retries what the
//! broker did not confirm, and settles what it will never take as a dead letter, as the
//! [`DeadLetterPolicy`] says.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::queue::{Held, Outbox};
use crate::apps::Current;
use crate::bus::{Bus, BusError, Message};
use crate::dead_letters::{DeadLetter, NOTICE_TYPE};
use crate::metrics::Metrics;
use crate::traces::{self, Span, Tracer};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a publisher waiting for the bus to reconnect looks again.
const RECONNECT_POLL: Duration = Duration::from_millis(50);
/// Nacks of one event, while the broker confirmed other events, before it is a dead letter.
pub const NACKS: u32 = 3;

/// When an event becomes a dead letter, and whether its death is told on the bus.
pub struct DeadLetterPolicy {
    /// Unconfirmed attempts after which any event is a dead letter (`--dead-letter-after`).
    pub after: Option<u32>,
    /// With `--dead-letter-destination`: the apps in force, under whose prefix each dead
    /// letter's notice goes (the app's, whatever the event: audit events' too).
    pub notices: Option<Arc<Current>>,
}

impl DeadLetterPolicy {
    /// The notice of `letter` to publish: none without notices, and none of a notice.
    fn notice(&self, letter: &DeadLetter) -> Option<Message> {
        let apps = self.notices.as_ref()?.get();
        if letter.message.event_type == NOTICE_TYPE {
            return None;
        }
        // An app no longer listed (a reload since) is the default prefix's.
        let app = apps.get(&letter.message.sdk_app_id).unwrap_or(&apps.any);
        Some(letter.notice(&app.prefix))
    }
}

/// The task that publishes what the outbox accepted.
pub struct Publisher {
    pub outbox: Arc<Outbox>,
    pub bus: Bus,
    pub metrics: Arc<Metrics>,
    pub tracer: Option<Tracer>,
    pub policy: DeadLetterPolicy,
}

/// An event of a batch being published (its message apart, as the bus takes a slice of them).
struct Unsettled {
    held: Held,
    tries: Tries,
}

impl Publisher {
    /// Drains the outbox through the bus until it is closed and empty. Of a batch, what the
    /// broker confirmed (or will never take) is settled at once, and only the events still
    /// worth a retry are published again, alone, before any later batch: a confirmed event is
    /// never sent twice because a neighbour was refused. So events arrive in per-room order
    /// unless one must be retried: its copy that the broker takes may come after later events
    /// of its room that were in the same batch (at most a batch's window later), never after
    /// an event of a later batch.
    /// An event the broker will never take is settled too, so that it holds back nothing:
    /// unroutable ones are logged and counted, refused ones become dead letters (as do events
    /// nacked [`NACKS`] times while the broker confirmed others of their batch, and, with
    /// `--dead-letter-after N`, events unconfirmed after N attempts).
    /// While the bus is disconnected nothing is tried: the bus reconnects by itself, and
    /// publishing resumes as soon as it is back.
    pub async fn run(self) {
        let bus = &self.bus;
        while let Some((mut messages, held)) = self.outbox.take().await {
            let mut backoff = FIRST_BACKOFF;
            let mut pending: Vec<Unsettled> =
                held.into_iter().map(|held| Unsettled { held, tries: Tries::default() }).collect();
            let first_attempt = SystemTime::now();
            // The broker confirmed some event of this batch: a nack that goes on is about the
            // event, not the channel.
            let mut others_confirmed = false;
            loop {
                // A bus that refuses publishes is tried on, with the backoff: only a confirmed
                // publish shows that the refusal is over.
                while !bus.is_connected() && bus.refusal().is_none() {
                    tokio::time::sleep(RECONNECT_POLL).await;
                }
                let results = bus.publish(&messages).await;
                others_confirmed |= results.iter().any(Result::is_ok);
                let (mut retries, mut settled, mut letters) = (Vec::new(), Vec::new(), Vec::new());
                let mut retry_error = None;
                for ((message, mut event), result) in messages.into_iter().zip(pending).zip(results) {
                    event.tries.attempts += 1;
                    event.tries.nacks += u32::from(matches!(result, Err(BusError::Nacked(_))));
                    let verdict = Verdict::of(&result, &event.tries, others_confirmed, self.policy.after);
                    if verdict == Verdict::Retry {
                        retry_error = retry_error.or(result.err());
                        retries.push((message, event));
                        continue;
                    }
                    if let Some(tracer) = &self.tracer {
                        tracer.record(publish_span(&message));
                    }
                    match (result, verdict) {
                        (Err(BusError::Unroutable(reason)), _) => self.metrics.unroutable(&message, &reason),
                        (Err(error), Verdict::Dead) => {
                            letters.push(DeadLetter::new(message, &error, event.tries.attempts, first_attempt))
                        }
                        _ => self.metrics.confirmed(1),
                    }
                    settled.push(event.held);
                }
                if !letters.is_empty() {
                    self.bury(letters).await;
                }
                self.outbox.confirmed(settled);
                (messages, pending) = retries.into_iter().unzip();
                let Some(error) = retry_error else { break };
                self.metrics.retrying(messages.len(), &error, backoff);
                if bus.is_connected() || bus.refusal().is_some() {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Keeps dead letters (durably before their events leave the spool) and counts them; with
    /// `--dead-letter-destination`, publishes a notice of each (never of a notice), pushed from
    /// a task of its own so that the publisher never waits for room it has to make itself.
    async fn bury(&self, letters: Vec<DeadLetter>) {
        for letter in &letters {
            self.metrics.dead_lettered(&letter.message.destination, letter.reason.label());
            if let Some(notice) = self.policy.notice(letter) {
                let outbox = self.outbox.clone();
                tokio::spawn(async move {
                    if let Err(error) = outbox.push(notice).await {
                        tracing::warn!(%error, "dead-letter notice not published: the dead letter is in the store only");
                    }
                });
            }
        }
        let dead_letters = self.outbox.dead_letters().clone();
        match tokio::task::spawn_blocking(move || dead_letters.keep(letters)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "dead letters could not be written to the spool directory; they are kept in memory only")
            }
            Err(error) => tracing::error!(%error, "dead letters could not be written"),
        }
    }
}

/// What becomes of one event of a batch after a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Confirmed, or refused as unroutable (counted, not retried): settled.
    Settled,
    /// The broker will never take it: settled as a dead letter.
    Dead,
    Retry,
}

impl Verdict {
    /// Refused for good, nacked [`NACKS`] times while the broker confirmed others of its batch,
    /// or unconfirmed after `after` attempts: dead; any other failure: a retry.
    fn of(result: &Result<(), BusError>, tries: &Tries, others_confirmed: bool, after: Option<u32>) -> Verdict {
        let dead = match result {
            Ok(()) | Err(BusError::Unroutable(_)) => return Verdict::Settled,
            Err(BusError::Undeliverable { .. }) => true,
            Err(BusError::Nacked(_)) if tries.nacks >= NACKS && others_confirmed => true,
            Err(_) => after.is_some_and(|after| tries.attempts >= after),
        };
        if dead {
            Verdict::Dead
        } else {
            Verdict::Retry
        }
    }
}

/// What the publisher tried for one event of a batch.
#[derive(Debug, Default, Clone, Copy)]
struct Tries {
    attempts: u32,
    /// Of those, the broker nacked this many.
    nacks: u32,
}

/// From acceptance to the broker's answer, a child of the callback's `receive` span.
fn publish_span(message: &Message) -> Span {
    Span {
        name: "publish",
        trace_id: message.trace.trace_id().to_owned(),
        span_id: traces::span_id(),
        parent_id: Some(message.trace.span_id().to_owned()),
        start: message.accepted,
        end: std::time::SystemTime::now(),
        attributes: vec![
            ("messaging.destination.name", message.destination.clone()),
            ("cloudevents.event_id", message.id.clone()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::{App, Apps};
    use crate::bus::{BrokerRefusal, Origin};
    use bytes::Bytes;

    #[test]
    fn refusals_are_dead_letters_and_other_failures_retries() {
        let tries = |attempts, nacks| Tries { attempts, nacks };
        let rejected =
            Err(BusError::Undeliverable { what: "too large".into(), reason: BrokerRefusal::TooLarge, cause: None });
        let nacked = Err(BusError::Nacked("q".into()));
        let away = Err(BusError::unavailable_because("away"));
        assert_eq!(Verdict::of(&Ok(()), &tries(1, 0), false, None), Verdict::Settled);
        assert_eq!(
            Verdict::of(&Err(BusError::Unroutable("no queue".into())), &tries(1, 0), false, None),
            Verdict::Settled
        );
        assert_eq!(Verdict::of(&rejected, &tries(1, 0), false, None), Verdict::Dead, "at once");
        assert_eq!(Verdict::of(&nacked, &tries(2, 2), true, None), Verdict::Retry);
        assert_eq!(Verdict::of(&nacked, &tries(3, 3), true, None), Verdict::Dead);
        assert_eq!(Verdict::of(&nacked, &tries(9, 9), false, None), Verdict::Retry, "everything nacked: the channel");
        assert_eq!(Verdict::of(&away, &tries(99, 0), true, None), Verdict::Retry, "retried until confirmed");
        assert_eq!(Verdict::of(&away, &tries(2, 0), true, Some(3)), Verdict::Retry);
        assert_eq!(Verdict::of(&away, &tries(3, 0), true, Some(3)), Verdict::Dead, "--dead-letter-after");
    }

    #[test]
    fn a_notice_goes_under_its_events_prefix_audit_events_too() {
        let app = App {
            tokens: Vec::new(),
            trtc_keys: Vec::new(),
            css_keys: Vec::new(),
            prefix: "p.q".into(),
            fallbacks: Default::default(),
        };
        let policy = DeadLetterPolicy { after: None, notices: Some(Arc::new(Current::new(Apps::single(app)))) };
        let event = Message::new("p.q", "Live.X", None, Origin::default(), Bytes::from("{}"));
        let audit = event.follow_up("hookbus.decision", "p.q.audit.Live.CallbackBeforeSendGift".into(), Bytes::new());
        let error = BusError::Undeliverable { what: "refused".into(), reason: BrokerRefusal::NoStream, cause: None };
        for message in [event, audit] {
            let notice = policy.notice(&DeadLetter::new(message, &error, 1, SystemTime::now())).unwrap();
            assert_eq!(notice.destination, "p.q.deadletter");
        }
    }
}
