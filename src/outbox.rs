//! Accepted informational events until the bus confirms them. A 200 means the event is here:
//! in memory, or with `--spool-dir` also durable on disk before the answer. The outbox is
//! bounded (full → a callback waits a moment for room, then the caller answers 503); a
//! publisher task drains it in batches through the bus, retries what the broker did not
//! confirm with capped exponential backoff, and removes an event only once confirmed
//! (at-least-once; retries keep the id). In memory, what is left at shutdown is counted as
//! lost; in the spool it waits for the next start.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::bus::{Bus, BusError, Message};
use crate::dead_letters::{DeadLetter, DeadLetters, NACKS, NOTICE_TYPE};
use crate::metrics::Metrics;
use crate::spool::{Backlog, Location, Spool, SpoolError};
use crate::traces::{self, Span, Tracer};

/// Largest batch handed to the bus at once: the window of publishes in flight.
const WINDOW: usize = 512;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often a publisher waiting for the bus to reconnect looks again.
const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// Largest batch in bytes: what the bus client copies into its buffers at once.
const WINDOW_BYTES: usize = 1 << 20;
/// Memory an event holds besides the message itself: its queue slot, the allocator's rounding.
const OVERHEAD: usize = 64;

/// Why an event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("outbox full ({0} events)")]
    Full(usize),
    #[error("outbox full ({0} bytes)")]
    FullBytes(usize),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// How much the outbox holds, and how long a callback waits for room when it is full.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Events.
    pub capacity: usize,
    /// Memory the events hold (memory outbox; with a spool, the spool's bound applies).
    pub max_bytes: usize,
    /// A callback that finds the outbox full waits this long for the broker to confirm
    /// enough to make room, before it is refused.
    pub wait: Duration,
    /// How long the publisher lets events gather before it sends a batch smaller than the
    /// window (zero: at once). Every batch costs a confirm round trip and its wake-ups: at 2,000
    /// callbacks/s they were nearly half of the gateway's CPU (`BENCHMARKS.md`); the linger is
    /// what each event's delivery waits for that (the callback was answered already).
    pub linger: Duration,
}

pub struct Outbox {
    state: Mutex<Queue>,
    /// Events are waiting for the publisher.
    ready: Notify,
    /// Confirmed events made room.
    room: Notify,
    bounds: Bounds,
    spool: Option<Spool>,
    dead_letters: Arc<DeadLetters>,
    /// Spool write failures are logged at most once a second.
    spool_errors: Mutex<crate::logs::Limiter>,
}

/// What the outbox keeps beside an event: its spool record, and the memory counted for it
/// (computed once, at acceptance).
#[derive(Debug, Clone, Copy)]
struct Held {
    record: Option<Location>,
    bytes: usize,
}

#[derive(Default)]
struct Queue {
    /// Events, in order, with what is held for each.
    queue: VecDeque<(Message, Held)>,
    /// Taken by the publisher and not yet confirmed: still counted against the capacity.
    in_flight: usize,
    /// Being written to the spool: counted so that concurrent pushes respect the capacity.
    reserved: usize,
    /// Memory held by every event counted above.
    bytes: usize,
    /// The last event was refused for lack of room, and no room was freed since.
    refusing: bool,
    /// The last spool write failed (the disk refused it), and none succeeded since.
    spool_failing: bool,
    closed: bool,
}

impl Outbox {
    /// An outbox within `bounds`; with a spool, starting with what it replayed. Events the
    /// broker will not take go to `dead_letters`.
    pub fn new(mut bounds: Bounds, spool: Option<(Spool, Backlog)>, dead_letters: Arc<DeadLetters>) -> Outbox {
        let mut state = Queue::default();
        let spool = spool.map(|(spool, replay)| {
            state.queue.extend(replay.events.into_iter().map(|(message, record)| {
                let bytes = size(&message);
                (message, Held { record: Some(record), bytes })
            }));
            state.bytes = state.queue.iter().map(|(_, held)| held.bytes).sum();
            spool
        });
        // With a spool, its own bound (`--spool-max-bytes`) limits the waiting events; they are
        // kept in memory as well, so that bound is a memory bound too.
        if spool.is_some() {
            bounds.max_bytes = usize::MAX;
        }
        let spool_errors = Mutex::default();
        Outbox {
            state: Mutex::new(state),
            ready: Notify::new(),
            room: Notify::new(),
            bounds,
            spool,
            dead_letters,
            spool_errors,
        }
    }

    /// Accepts an event once it is held (and, with a spool, durable). When the outbox is full,
    /// waits up to [`Bounds::wait`] for room; refuses it if none was made by then.
    pub async fn push(&self, message: Message) -> Result<(), PushError> {
        let bytes = size(&message);
        let mut deadline = None;
        loop {
            // Registered before the check, so that room made right after it still wakes us.
            let room = self.room.notified();
            let Err(refused) = self.reserve(bytes) else { break };
            let deadline = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.bounds.wait);
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.lock().refusing = true;
                return Err(refused);
            }
        }
        let record = match &self.spool {
            Some(spool) => match spool.append(&message).await {
                Ok(record) => Some(record),
                Err(error) => {
                    let mut state = self.lock();
                    state.reserved -= 1;
                    state.bytes -= bytes;
                    state.refusing |= matches!(error, SpoolError::Full(_));
                    state.spool_failing |= matches!(error, SpoolError::Io(_));
                    drop(state);
                    if let SpoolError::Io(cause) = &error {
                        let allowed = self.spool_errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
                        if let Some(suppressed) = allowed {
                            tracing::error!(error = %cause, suppressed, "spool write failed: callbacks are answered 503");
                        }
                    }
                    return Err(error.into());
                }
            },
            None => None,
        };
        let mut state = self.lock();
        state.reserved -= 1;
        state.refusing = false;
        if record.is_some() {
            state.spool_failing = false;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back((message, Held { record, bytes }));
        drop(state);
        // The publisher only waits on an empty queue: one wake-up per batch, not per event.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Takes a place and `bytes` for an event being accepted, if there is room.
    fn reserve(&self, bytes: usize) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.queue.len() + state.in_flight + state.reserved >= self.bounds.capacity {
            return Err(PushError::Full(self.bounds.capacity));
        }
        if state.bytes + bytes > self.bounds.max_bytes {
            return Err(PushError::FullBytes(self.bounds.max_bytes));
        }
        state.reserved += 1;
        state.bytes += bytes;
        Ok(())
    }

    /// Events accepted and not yet confirmed.
    pub fn depth(&self) -> usize {
        let state = self.lock();
        state.queue.len() + state.in_flight
    }

    pub fn capacity(&self) -> usize {
        self.bounds.capacity
    }

    /// Memory the events hold, and its bound (none with a spool, whose bound applies instead).
    pub fn memory(&self) -> (usize, Option<usize>) {
        (self.lock().bytes, self.spool.is_none().then_some(self.bounds.max_bytes))
    }

    /// Bytes held in the spool and its bound, when there is one.
    pub fn spool_bytes(&self) -> Option<(u64, u64)> {
        self.spool.as_ref().map(|spool| (spool.bytes(), spool.max_bytes()))
    }

    pub fn is_spooled(&self) -> bool {
        self.spool.is_some()
    }

    /// Whether callbacks are being refused for lack of room: the outbox or spool is at its
    /// bound, or the last event did not fit and nothing was confirmed since.
    pub fn is_full(&self) -> bool {
        let spool_full = self.spool.as_ref().is_some_and(|spool| spool.bytes() >= spool.max_bytes());
        let state = self.lock();
        state.refusing
            || state.queue.len() + state.in_flight >= self.bounds.capacity
            || state.bytes >= self.bounds.max_bytes
            || spool_full
    }

    /// Whether the last spool write failed and none succeeded since: callbacks are refused.
    pub fn spool_failing(&self) -> bool {
        self.lock().spool_failing
    }

    /// Writes the spool's confirmations down and syncs them (a clean stop): the next start
    /// publishes none of the confirmed events again.
    pub fn checkpoint(&self) {
        if let Some(Err(error)) = self.spool.as_ref().map(Spool::sync_confirmations) {
            tracing::error!(%error, "spool confirmations not written: the next start may publish them again");
        }
    }

    /// After this, the publisher stops once the outbox is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits for events and takes a batch: up to [`WINDOW`] events and [`WINDOW_BYTES`] (one
    /// event at least). A batch that is not full yet waits [`Bounds::linger`] for more first. `None`
    /// once closed and empty.
    async fn take(&self) -> Option<(Vec<Message>, Vec<Held>)> {
        // A zero linger is one already waited.
        let mut lingered = self.bounds.linger.is_zero();
        loop {
            let notified = self.ready.notified();
            let linger = {
                let mut state = self.lock();
                if state.queue.is_empty() && state.closed {
                    return None;
                }
                let (n, full) = batch(&state.queue);
                if n > 0 && (full || lingered || state.closed) {
                    state.in_flight += n;
                    return Some(state.queue.drain(..n).unzip());
                }
                n > 0
            };
            if linger {
                tokio::time::sleep(self.bounds.linger).await;
                lingered = true;
            } else {
                notified.await;
            }
        }
    }

    /// Forgets confirmed events: frees their places, memory and, when spooled, records.
    fn confirmed(&self, held: impl IntoIterator<Item = Held>) {
        let (mut n, mut bytes) = (0, 0);
        for held in held {
            (n, bytes) = (n + 1, bytes + held.bytes);
            if let (Some(spool), Some(record)) = (&self.spool, held.record) {
                spool.confirmed(record);
            }
        }
        let mut state = self.lock();
        state.in_flight -= n;
        state.bytes -= bytes;
        state.refusing &= n == 0;
        // Confirmed events make room on the disk too (the next write replaces a drained
        // segment): let the next callback try, rather than stay unready with none coming.
        state.spool_failing &= n == 0;
        drop(state);
        if n > 0 {
            self.room.notify_waiters();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Puts dead letters back (those with `ids`, or all of them) as accepted events with their
    /// ids, and removes them from the dead letters once they are held again. Returns how many,
    /// or, when the outbox refused one, how many were requeued before it and why.
    pub async fn requeue(&self, ids: Option<&[String]>) -> Result<usize, (usize, PushError)> {
        let letters = self.dead_letters.take(ids);
        let mut requeued = Vec::with_capacity(letters.len());
        let mut result = Ok(());
        for letter in letters {
            if let Err(error) = self.push(letter.message.clone()).await {
                result = Err(error);
                break;
            }
            requeued.push(letter);
        }
        let dead_letters = self.dead_letters.clone();
        let n = requeued.len();
        let forgotten = tokio::task::spawn_blocking(move || dead_letters.forget(&requeued)).await;
        match forgotten {
            Ok(Err(error)) => {
                tracing::error!(%error, "requeued dead letters could not be removed from the log; they may be requeued twice")
            }
            Err(error) => tracing::error!(%error, "requeued dead letters could not be removed from the log"),
            Ok(Ok(())) => tracing::info!(requeued = n, "dead letters requeued with their ids"),
        }
        result.map(|()| n).map_err(|error| (n, error))
    }

    /// Drains the outbox through the bus until it is closed and empty. Of a batch, what the
    /// broker confirmed (or will never take) is settled at once, and only the events still
    /// worth a retry are published again, alone, before any later batch: a confirmed event is
    /// never sent twice because a neighbour was refused. So events arrive in per-room order
    /// unless one must be retried: its copy that the broker takes may come after later events
    /// of its room that were in the same batch (at most [`WINDOW`] events later), never after
    /// an event of a later batch.
    /// An event the broker will never take is settled too, so that it holds back nothing:
    /// unroutable ones are logged and counted, refused ones become dead letters (as do events
    /// nacked [`NACKS`] times while the broker confirmed others of their batch, and, with
    /// `--dead-letter-after N`, events unconfirmed after N attempts).
    /// While the bus is disconnected nothing is tried: the bus reconnects by itself, and
    /// publishing resumes as soon as it is back.
    pub async fn publish(self: Arc<Self>, bus: Bus, metrics: Arc<Metrics>, tracer: Option<Tracer>) {
        while let Some((mut messages, mut held)) = self.take().await {
            let mut backoff = FIRST_BACKOFF;
            let mut tries = vec![Tries::default(); messages.len()];
            let first_attempt = std::time::SystemTime::now();
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
                for (tries, result) in tries.iter_mut().zip(&results) {
                    tries.attempts += 1;
                    tries.nacks += u32::from(matches!(result, Err(BusError::Nacked(_))));
                }
                let after = self.dead_letters.after;
                let verdicts: Vec<Verdict> = results
                    .iter()
                    .zip(&tries)
                    .map(|(result, tries)| Verdict::of(result, tries, others_confirmed, after))
                    .collect();
                let retry = verdicts.iter().position(|verdict| *verdict == Verdict::Retry);
                let mut letters = Vec::new();
                for (((message, result), tries), verdict) in messages.iter().zip(&results).zip(&tries).zip(&verdicts) {
                    match (result, verdict) {
                        (_, Verdict::Retry) => continue,
                        (Err(BusError::Unroutable(reason)), _) => metrics.unroutable(message, reason),
                        (Err(error), Verdict::Dead) => {
                            letters.push(DeadLetter::new(message.clone(), error, tries.attempts, first_attempt))
                        }
                        _ => metrics.confirmed(1),
                    }
                    if let Some(tracer) = &tracer {
                        tracer.record(publish_span(message));
                    }
                }
                if !letters.is_empty() {
                    self.bury(letters, &metrics).await;
                }
                let keep = |verdict: &Verdict| *verdict == Verdict::Retry;
                messages = retain(messages, &verdicts, keep);
                tries = retain(tries, &verdicts, keep);
                let (kept, settled): (Vec<_>, Vec<_>) =
                    held.into_iter().zip(&verdicts).partition(|(_, verdict)| keep(verdict));
                held = kept.into_iter().map(|(held, _)| held).collect();
                self.confirmed(settled.into_iter().map(|(held, _)| held));
                let Some(retry) = retry else { break };
                if let Err(error) = &results[retry] {
                    metrics.retrying(messages.len(), error, backoff);
                }
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
    async fn bury(self: &Arc<Self>, letters: Vec<DeadLetter>, metrics: &Metrics) {
        for letter in &letters {
            metrics.dead_lettered(&letter.message.destination, &letter.reason);
            if self.dead_letters.notices && letter.message.command != NOTICE_TYPE {
                let (outbox, notice) = (self.clone(), letter.notice());
                tokio::spawn(async move {
                    if let Err(error) = outbox.push(notice).await {
                        tracing::warn!(%error, "dead-letter notice not published: the dead letter is in the store only");
                    }
                });
            }
        }
        let dead_letters = self.dead_letters.clone();
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
            Err(BusError::Rejected { .. }) => true,
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

/// The items of `items` whose verdict (at the same place) `keep` takes, in order.
fn retain<T>(items: Vec<T>, verdicts: &[Verdict], keep: impl Fn(&Verdict) -> bool) -> Vec<T> {
    items.into_iter().zip(verdicts).filter(|(_, verdict)| keep(verdict)).map(|(item, _)| item).collect()
}

/// What the publisher tried for one event of a batch.
#[derive(Debug, Default, Clone, Copy)]
struct Tries {
    attempts: u32,
    /// Of those, the broker nacked this many.
    nacks: u32,
}

/// How many of the first events of `queue` make a batch (none of an empty queue), and whether
/// that batch is full: as many events as the window takes, or as many bytes (one event at
/// least, however large).
fn batch(queue: &VecDeque<(Message, Held)>) -> (usize, bool) {
    let mut bytes = 0;
    for (n, (_, held)) in queue.iter().enumerate().take(WINDOW) {
        bytes += held.bytes;
        if bytes > WINDOW_BYTES {
            return (n.max(1), true);
        }
    }
    let n = queue.len().min(WINDOW);
    (n, n == WINDOW)
}

/// From acceptance to the broker's answer, a child of the callback's `receive` span.
fn publish_span(message: &Message) -> Span {
    Span {
        name: "publish",
        trace_id: message.trace.trace_id().to_owned(),
        span_id: traces::span_id(),
        parent_id: Some(message.trace.span_id().to_owned()),
        start: message.time,
        end: std::time::SystemTime::now(),
        attributes: vec![
            ("messaging.destination.name", message.destination.clone()),
            ("cloudevents.event_id", message.id.clone()),
        ],
    }
}

fn size(message: &Message) -> usize {
    message.footprint() + OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Origin;
    use bytes::Bytes;

    /// Bounds that refuse at once when full.
    fn bounds(capacity: usize, max_bytes: usize) -> Bounds {
        Bounds { capacity, max_bytes, wait: Duration::ZERO, linger: Duration::from_millis(5) }
    }

    fn memory() -> Arc<DeadLetters> {
        Arc::new(DeadLetters::in_memory(1 << 20, None))
    }

    fn message() -> Message {
        Message::new("t", "C", None, Origin::default(), Bytes::from_static(b"{}"))
    }

    #[tokio::test]
    async fn full_outbox_refuses() {
        let outbox = Outbox::new(bounds(2, 1 << 20), None, memory());
        outbox.push(message()).await.unwrap();
        outbox.push(message()).await.unwrap();
        assert!(outbox.is_full());
        assert!(matches!(outbox.push(message()).await, Err(PushError::Full(2))));
        assert_eq!(outbox.depth(), 2);
        let small = Outbox::new(bounds(100, 2 * size(&message())), None, memory());
        small.push(message()).await.unwrap();
        small.push(message()).await.unwrap();
        assert!(small.is_full());
        assert!(matches!(small.push(message()).await, Err(PushError::FullBytes(_))));
        // Room left, but not enough for the event that came: still full until room is freed.
        let roomy = Outbox::new(bounds(100, 2 * size(&message()) + 1), None, memory());
        roomy.push(message()).await.unwrap();
        roomy.push(message()).await.unwrap();
        assert!(roomy.push(message()).await.is_err());
        assert!(roomy.is_full(), "refusing");
        let (_, held) = roomy.take().await.unwrap();
        roomy.confirmed(held);
        assert!(!roomy.is_full(), "room was freed");
    }

    #[tokio::test]
    async fn taken_events_still_count_until_confirmed() {
        let outbox = Outbox::new(bounds(2, 1 << 20), None, memory());
        outbox.push(message()).await.unwrap();
        outbox.push(message()).await.unwrap();
        let (batch, held) = outbox.take().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert!(outbox.push(message()).await.is_err(), "in-flight events hold their place");
        outbox.confirmed(held);
        assert_eq!(outbox.depth(), 0);
        outbox.close();
        assert!(outbox.take().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_event_waits_the_linger_and_none_without_one() {
        for linger in [Duration::from_millis(5), Duration::ZERO] {
            let outbox = Outbox::new(Bounds { linger, ..bounds(10, 1 << 20) }, None, memory());
            outbox.push(message()).await.unwrap();
            let started = tokio::time::Instant::now();
            let (batch, _) = outbox.take().await.unwrap();
            assert_eq!((batch.len(), started.elapsed()), (1, linger));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_outbox_takes_an_event_once_room_is_made_within_the_wait() {
        let outbox =
            Arc::new(Outbox::new(Bounds { wait: Duration::from_millis(250), ..bounds(1, 1 << 20) }, None, memory()));
        outbox.push(message()).await.unwrap();
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(message()).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "waits for room");
        let (_, held) = outbox.take().await.unwrap();
        outbox.confirmed(held);
        assert!(waiting.await.unwrap().is_ok(), "taken once the confirm made room");
        let started = tokio::time::Instant::now();
        assert!(matches!(outbox.push(message()).await, Err(PushError::Full(1))), "no room made: refused");
        assert_eq!(started.elapsed(), Duration::from_millis(250), "after the wait");
        assert!(outbox.is_full());
    }

    #[test]
    fn refusals_are_dead_letters_and_other_failures_retries() {
        let tries = |attempts, nacks| Tries { attempts, nacks };
        let rejected = Err(BusError::Rejected { what: "too large".into(), reason: "too_large", cause: None });
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
    fn a_batch_is_full_at_the_window_in_events_or_in_bytes() {
        let events = |n: usize, bytes: usize| -> VecDeque<(Message, Held)> {
            let payload = Bytes::from(vec![b' '; bytes]);
            let event = |_| {
                let message = Message::new("t", "C", None, Origin::default(), payload.clone());
                let held = Held { record: None, bytes: size(&message) };
                (message, held)
            };
            (0..n).map(event).collect()
        };
        assert_eq!(batch(&events(3, 10)), (3, false), "room for more: linger");
        assert_eq!(batch(&events(WINDOW + 5, 10)), (WINDOW, true));
        let large = WINDOW_BYTES / 4;
        assert_eq!(batch(&events(10, large)), (3, true), "a fourth would pass the bytes");
        assert_eq!(batch(&events(2, 2 * WINDOW_BYTES)), (1, true), "one, however large");
    }
}
