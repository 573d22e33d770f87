//! Accepted informational events until the bus confirms them. A 200 means the event is here:
//! in memory, or with `--spool-dir` also durable on disk before the answer. The outbox is
//! bounded (full → a callback waits a moment for room, then the caller answers 503); a
//! publisher task drains it in batches through the bus, retries what the broker did not
//! confirm with capped exponential backoff, and removes an event only once confirmed
//! (at-least-once; retries keep the id). In memory, what is left at shutdown is counted as
//! lost; in the spool it waits for the next start.
//!
//! - [`queue`]: the [`Outbox`] itself, what callbacks push and the publisher takes.
//! - [`publisher`]: the [`Publisher`] task, and the [`DeadLetterPolicy`] it settles by.
//!
//! The publisher uses the queue; the queue knows nothing of the publisher.

pub mod publisher;
pub mod queue;

pub use publisher::{DeadLetterPolicy, Publisher};
pub use queue::{Bounds, Outbox, PushError};
