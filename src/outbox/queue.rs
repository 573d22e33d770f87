//! The outbox's queue: accepted events, in order, until the bus confirms them; bounded in
//! events and memory, with a spool (`--spool-dir`) durable on disk before a callback's answer.
//! With a spool, events past the memory bound wait on disk alone (their place in the queue
//! kept, their message not) and are read back from the spool when the publisher takes them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::bus::Message;
use crate::dead_letters::DeadLetters;
use crate::spool::{Backlog, Location, Reader, Spool, SpoolError};

/// Largest batch handed to the bus at once: the window of publishes in flight.
const WINDOW: usize = 512;
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
    /// Memory the events hold (memory outbox; with a spool, the spool's bound applies to what
    /// is accepted, and events past this one wait on disk alone).
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
pub(super) struct Held {
    record: Option<Location>,
    bytes: usize,
    /// Its message waits in memory, counted against the bound (else on disk alone, until taken).
    counted: bool,
}

#[derive(Default)]
struct Queue {
    /// Events, in order, with what is held for each; without its message, an event that waits
    /// on disk alone.
    queue: VecDeque<(Option<Message>, Held)>,
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
    pub fn new(bounds: Bounds, spool: Option<(Spool, Backlog)>, dead_letters: Arc<DeadLetters>) -> Outbox {
        let mut state = Queue::default();
        let spool = spool.map(|(spool, replay)| {
            for (message, record, on_disk) in replay.events {
                let entry = match message {
                    Some(message) if state.bytes + size(&message) <= bounds.max_bytes => {
                        let bytes = size(&message);
                        state.bytes += bytes;
                        (Some(message), Held { record: Some(record), bytes, counted: true })
                    }
                    _ => (None, Held { record: Some(record), bytes: on_disk + OVERHEAD, counted: false }),
                };
                state.queue.push_back(entry);
            }
            spool
        });
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
                        self.spool_error(cause, "spool write failed: callbacks are answered 503");
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
        // Past the memory bound, a spooled event waits on disk alone.
        let counted = record.is_none() || state.bytes <= self.bounds.max_bytes;
        if !counted {
            state.bytes -= bytes;
        }
        state.queue.push_back((counted.then_some(message), Held { record, bytes, counted }));
        drop(state);
        // The publisher only waits on an empty queue: one wake-up per batch, not per event.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Logs a spool failure, at most once a second.
    fn spool_error(&self, error: &std::io::Error, what: &'static str) {
        let allowed = self.spool_errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
        if let Some(suppressed) = allowed {
            tracing::error!(%error, suppressed, "{what}");
        }
    }

    /// Takes a place and `bytes` for an event being accepted, if there is room.
    fn reserve(&self, bytes: usize) -> Result<(), PushError> {
        let mut state = self.lock();
        if state.queue.len() + state.in_flight + state.reserved >= self.bounds.capacity {
            return Err(PushError::Full(self.bounds.capacity));
        }
        // With a spool, its own bound (`--spool-max-bytes`) limits the waiting events; memory's
        // decides only which of them wait on disk alone.
        if self.spool.is_none() && state.bytes + bytes > self.bounds.max_bytes {
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
            || (self.spool.is_none() && state.bytes >= self.bounds.max_bytes)
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
    /// event at least), those waiting on disk alone read back from the spool. A batch that is
    /// not full yet waits [`Bounds::linger`] for more first. `None` once closed and empty.
    pub(super) async fn take(&self) -> Option<(Vec<Message>, Vec<Held>)> {
        loop {
            let taken = self.take_waiting().await?;
            let (mut messages, mut kept) = (Vec::with_capacity(taken.len()), Vec::with_capacity(taken.len()));
            let mut unread = 0;
            let read = match &self.spool {
                // Read on a blocking thread: a slow disk must not stall the callbacks served on
                // this one while a backlog drains.
                Some(spool) if taken.iter().any(|(message, _)| message.is_none()) => {
                    let mut reader = spool.reader();
                    let read = move || -> Vec<_> {
                        taken
                            .into_iter()
                            .map(|(message, held)| (read_back(message, &held, &mut reader), held))
                            .collect()
                    };
                    tokio::task::spawn_blocking(read).await.expect("reading events back does not panic")
                }
                _ => taken.into_iter().map(|(message, held)| (Ok(message.expect(SPOOLED)), held)).collect(),
            };
            for (read, held) in read {
                match read {
                    Ok(message) => {
                        messages.push(message);
                        kept.push(held);
                    }
                    // Left unconfirmed in the spool: the next start publishes it.
                    Err(error) => {
                        unread += 1;
                        self.spool_error(&error, "spool record not read back: published after the next start");
                    }
                }
            }
            if unread > 0 {
                self.lock().in_flight -= unread;
                self.room.notify_waiters();
            }
            if !messages.is_empty() {
                return Some((messages, kept));
            }
        }
    }

    /// Waits for events and takes a batch of them as they wait: each one's message, or `None`
    /// for one waiting on disk alone.
    async fn take_waiting(&self) -> Option<Vec<(Option<Message>, Held)>> {
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
                    return Some(state.queue.drain(..n).collect());
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
    pub(super) fn confirmed(&self, held: impl IntoIterator<Item = Held>) {
        let (mut n, mut bytes) = (0, 0);
        for held in held {
            (n, bytes) = (n + 1, bytes + if held.counted { held.bytes } else { 0 });
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

    /// Where events the broker will never take are kept.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead_letters
    }
}

/// Why an event taken without its message has a record: it was spooled.
const SPOOLED: &str = "only a spooled event waits on disk alone";

/// An event's message: the one held in memory, else the one `reader` reads back from the spool.
fn read_back(message: Option<Message>, held: &Held, reader: &mut Reader) -> std::io::Result<Message> {
    match (message, held.record) {
        (Some(message), _) => Ok(message),
        (None, Some(record)) => reader.read(record),
        (None, None) => unreachable!("{SPOOLED}"),
    }
}

/// How many of the first events of `queue` make a batch (none of an empty queue), and whether
/// that batch is full: as many events as the window takes, or as many bytes (one event at
/// least, however large).
fn batch(queue: &VecDeque<(Option<Message>, Held)>) -> (usize, bool) {
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
        Arc::new(DeadLetters::in_memory(1 << 20))
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

    #[tokio::test]
    async fn spooled_events_past_the_memory_bound_wait_on_disk_and_are_read_back_in_order() {
        let dir = std::env::temp_dir().join(format!("hookbus-outbox-{}", uuid::Uuid::now_v7().simple()));
        let numbered = |n: usize| {
            let payload = Bytes::from(format!("{{\"n\":{n}}}"));
            Message::new("t", "C", Some(format!("room-{n}")), Origin::default(), payload)
        };
        let bound = 3 * size(&numbered(0));
        let spool = Spool::open(&dir, 1 << 20, 1 << 20, usize::MAX).unwrap();
        let outbox = Outbox::new(Bounds { linger: Duration::ZERO, ..bounds(100, bound) }, Some(spool), memory());
        for n in 0..10 {
            outbox.push(numbered(n)).await.unwrap();
        }
        assert!(outbox.memory().0 <= bound, "7 of 10 wait on disk alone: {:?}", outbox.memory());
        assert!(!outbox.is_full(), "the spool's bound applies, not memory's");
        let (batch, held) = outbox.take().await.unwrap();
        let payloads: Vec<_> = batch.iter().map(|m| m.payload.clone()).collect();
        let expected: Vec<_> = (0..10).map(|n| numbered(n).payload).collect();
        assert_eq!(payloads, expected, "read back, in order");
        assert_eq!(batch[9].key.as_deref(), Some("room-9"));
        outbox.confirmed(held);
        assert_eq!((outbox.depth(), outbox.memory().0), (0, 0));
        // A restart reads back into memory only what fits; the rest when taken.
        for n in 10..20 {
            outbox.push(numbered(n)).await.unwrap();
        }
        outbox.checkpoint();
        drop(outbox);
        let (spool, backlog) = Spool::open(&dir, 1 << 20, 1 << 20, 2 * size(&numbered(0))).unwrap();
        assert_eq!(backlog.events.iter().filter(|(m, ..)| m.is_some()).count(), 2, "two fit");
        let outbox =
            Outbox::new(Bounds { linger: Duration::ZERO, ..bounds(100, bound) }, Some((spool, backlog)), memory());
        let (batch, _) = outbox.take().await.unwrap();
        let payloads: Vec<_> = batch.iter().map(|m| m.payload.clone()).collect();
        assert_eq!(payloads, (10..20).map(|n| numbered(n).payload).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_batch_is_full_at_the_window_in_events_or_in_bytes() {
        let events = |n: usize, bytes: usize| -> VecDeque<(Option<Message>, Held)> {
            let payload = Bytes::from(vec![b' '; bytes]);
            let event = |_| {
                let message = Message::new("t", "C", None, Origin::default(), payload.clone());
                let held = Held { record: None, bytes: size(&message), counted: true };
                (Some(message), held)
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
