//! Accepted informational events until the bus confirms them. A 200 means the event is here.
//! The outbox is bounded (full → the caller answers 503); a publisher task drains it in
//! batches through the bus, retries what the broker did not confirm with capped exponential
//! backoff, and removes an event only once confirmed (at-least-once; retries keep the id).
//! This is the in-memory outbox: what is left at shutdown is counted as lost.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::bus::{Bus, BusError, Message};
use crate::metrics::Metrics;

/// Largest batch handed to the bus at once: the window of publishes in flight.
const WINDOW: usize = 512;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("outbox full ({0} events)")]
pub struct Full(pub usize);

pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// Taken by the publisher and not yet confirmed: still counted against the capacity.
    in_flight: usize,
    closed: bool,
}

impl Outbox {
    pub fn new(capacity: usize) -> Outbox {
        Outbox { state: Mutex::new(State::default()), ready: Notify::new(), capacity }
    }

    /// Accepts an event, or refuses it when the outbox holds `capacity` events.
    pub fn push(&self, message: Message) -> Result<(), Full> {
        let mut state = self.lock();
        if state.queue.len() + state.in_flight >= self.capacity {
            return Err(Full(self.capacity));
        }
        state.queue.push_back(message);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Events accepted and not yet confirmed.
    pub fn depth(&self) -> usize {
        let state = self.lock();
        state.queue.len() + state.in_flight
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.depth() >= self.capacity
    }

    /// After this, the publisher stops once the outbox is empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits for events and takes up to [`WINDOW`] of them; `None` once closed and empty.
    async fn take(&self) -> Option<Vec<Message>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if !state.queue.is_empty() {
                    let n = state.queue.len().min(WINDOW);
                    state.in_flight += n;
                    return Some(state.queue.drain(..n).collect());
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn confirmed(&self, n: usize) {
        self.lock().in_flight -= n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drains the outbox through the bus until it is closed and empty. Each batch is
    /// published until every event in it is confirmed; events the broker refused for good
    /// (unroutable) are logged and counted, not retried forever.
    pub async fn publish(self: Arc<Self>, bus: Bus, metrics: Arc<Metrics>) {
        while let Some(mut batch) = self.take().await {
            let taken = batch.len();
            let mut backoff = FIRST_BACKOFF;
            loop {
                let results = bus.publish(&batch).await;
                let mut last_error = None;
                let mut index = 0;
                batch.retain(|message| {
                    let result = &results[index];
                    index += 1;
                    match result {
                        Ok(()) => {
                            metrics.published.fetch_add(1, Relaxed);
                            false
                        }
                        Err(BusError::Unroutable(reason)) => {
                            metrics.unroutable.fetch_add(1, Relaxed);
                            tracing::error!(id = %message.id, destination = %message.destination, reason, "event unroutable, dropped by the broker");
                            false
                        }
                        Err(error) => {
                            last_error = Some(error.clone());
                            true
                        }
                    }
                });
                let Some(error) = last_error else { break };
                metrics.retried.fetch_add(batch.len() as u64, Relaxed);
                tracing::warn!(%error, unconfirmed = batch.len(), retry_in = ?backoff, "publish not confirmed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            self.confirmed(taken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Origin;
    use bytes::Bytes;

    fn message() -> Message {
        Message::new("t", "C", None, Origin::default(), Bytes::from_static(b"{}"))
    }

    #[test]
    fn full_outbox_refuses() {
        let outbox = Outbox::new(2);
        outbox.push(message()).unwrap();
        outbox.push(message()).unwrap();
        assert!(outbox.is_full());
        assert!(outbox.push(message()).is_err());
        assert_eq!(outbox.depth(), 2);
    }

    #[tokio::test]
    async fn taken_events_still_count_until_confirmed() {
        let outbox = Outbox::new(2);
        outbox.push(message()).unwrap();
        outbox.push(message()).unwrap();
        let batch = outbox.take().await.unwrap();
        assert_eq!(batch.len(), 2);
        assert!(outbox.push(message()).is_err(), "in-flight events hold their place");
        outbox.confirmed(2);
        assert_eq!(outbox.depth(), 0);
        outbox.close();
        assert!(outbox.take().await.is_none());
    }
}
