//! Decision requests waiting for their reply, by correlation id, for the backends that read
//! replies from one shared subscription (a NATS inbox, the AMQP reply queue, a Kafka reply
//! topic). A request registers before it is sent and is removed by a guard when it is done
//! or dropped at its deadline (cancel-safe). A reply nobody waits for (late, a second one, or
//! for an id never asked: a responder on the wrong inbox, a flood) is dropped at once, keeping
//! nothing of it: counted as late, and logged at most once a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::logs::{self, Limiter};

pub struct Replies<T> {
    waiting: Mutex<HashMap<String, oneshot::Sender<T>>>,
    late: AtomicU64,
    logged: Mutex<Limiter>,
}

impl<T> Default for Replies<T> {
    fn default() -> Self {
        Replies { waiting: Mutex::default(), late: AtomicU64::new(0), logged: Mutex::default() }
    }
}

/// Removes its request from [`Replies`] when dropped.
pub struct Waiting<'a, T> {
    replies: &'a Replies<T>,
    id: &'a str,
    reply: oneshot::Receiver<T>,
}

impl<T> Waiting<'_, T> {
    /// The reply; an error when the reply reader stopped first.
    pub async fn reply(&mut self) -> Result<T, oneshot::error::RecvError> {
        (&mut self.reply).await
    }
}

impl<T> Replies<T> {
    /// Registers request `id`; its reply arrives through the returned guard.
    pub fn register<'a>(&'a self, id: &'a str) -> Waiting<'a, T> {
        let (sender, reply) = oneshot::channel();
        self.lock().insert(id.to_owned(), sender);
        Waiting { replies: self, id, reply }
    }

    /// Hands a reply to the request waiting for `id`; counts it as late when none is.
    pub fn deliver(&self, id: &str, reply: T) {
        let waiting = self.lock().remove(id);
        match waiting {
            Some(sender) => drop(sender.send(reply)),
            None => {
                self.late.fetch_add(1, Relaxed);
                let allowed = self.logged.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
                if let Some(suppressed) = allowed {
                    let correlation_id = logs::field(id);
                    tracing::warn!(
                        correlation_id,
                        suppressed,
                        "reply for no waiting request dropped (late, or never asked)"
                    );
                }
            }
        }
    }

    /// Ends every wait at once, as if the reply reader had stopped: for a link that will
    /// never carry their replies.
    pub fn abandon_all(&self) {
        self.lock().clear();
    }

    /// Replies that arrived after their request had given up.
    pub fn late(&self) -> u64 {
        self.late.load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<T>>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.replies.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn replies_reach_their_request_and_late_ones_are_counted() {
        let replies = Replies::<u32>::default();
        let mut waiting = replies.register("a");
        replies.deliver("a", 7);
        assert_eq!(waiting.reply().await, Ok(7));
        let dropped = replies.register("b");
        drop(dropped);
        replies.deliver("b", 8);
        assert_eq!(replies.late(), 1, "a reply after its request was dropped is late");
        assert!(replies.lock().is_empty(), "nothing is left registered");
    }
}
