//! How a backend serves requests (`serve_requests`): the [`Answer`] it is given for each
//! request, and the [`Ready`] it fires once requests reach it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// Fired by `serve_requests` once its subscriptions are live.
pub type Ready = tokio::sync::oneshot::Sender<()>;

/// How `serve_requests` answers: given a request's destination and body, the reply body.
pub type Answer = Arc<dyn Fn(&str, Bytes) -> Pin<Box<dyn Future<Output = Bytes> + Send>> + Send + Sync>;
