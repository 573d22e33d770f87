//! hyper plumbing: the accept loop, one task per connection, a cap on connections, the
//! header-read (and keep-alive idle) timeout, a bound on a connection's age, TLS (HTTP/2 or
//! HTTP/1.1 by ALPN) and graceful shutdown (stop accepting, let in-flight requests finish within the grace period). What a
//! request means is `routes`' business.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::routes::{self, Shared};

/// How long a keep-alive connection must have been idle to be closed at the cap: a client
/// that just reused it may have a request on its way.
const IDLE_BEFORE_SHED: Duration = Duration::from_secs(1);

/// Limits on connections, against slow and hostile clients.
#[derive(Clone)]
pub struct Connections {
    /// For a request's headers, and for an idle keep-alive connection's next request.
    pub header_read_timeout: Duration,
    /// Served at once; the rest wait in the listen backlog.
    pub max_connections: usize,
    /// Past this age a connection is closed gracefully: HTTP/1 after the response in progress
    /// (with `Connection: close`), HTTP/2 with GOAWAY. A client that keeps its connections
    /// forever would otherwise never reach a replica started after it connected.
    pub max_age: Option<Duration>,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
}

/// Serves HTTP/1.1 (or, over TLS, HTTP/2 or HTTP/1.1 by ALPN) on `listener` until `shutdown`
/// resolves, then waits up to `grace` for open requests to finish. Returns the time that was
/// left of `grace`.
///
/// An idle keep-alive connection costs about 28 KiB (hyper's 8 KiB read and write buffers, the
/// task, the timer), so connections are capped; at the cap, keep-alive connections idle for
/// [`IDLE_BEFORE_SHED`] are closed to make room for the new ones waiting in the backlog. A
/// connection that has not sent its first request yet, or is answering one, is left alone.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: &Connections,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Duration {
    // Responses are small: one copy into one buffer and a plain write cost less than a writev
    // of headers and body (3 % of the CPU per callback, measured side by side).
    let mut http1 = http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(connections.header_read_timeout).keep_alive(true).writev(false);
    let mut negotiated = auto::Builder::new(TokioExecutor::new());
    negotiated
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(connections.header_read_timeout)
        .keep_alive(true)
        .writev(false);
    negotiated.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(connections.max_connections));
    let (stop, stopping) = watch::channel(false);
    let shed = Arc::new(Notify::new());
    let epoch = Instant::now();
    tokio::pin!(shutdown);
    'serving: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break 'serving,
        };
        // At the cap, this connection waits (and the next ones in the kernel's backlog) while
        // idle keep-alive connections are asked to close, again as they become idle enough.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => loop {
                tracing::debug!(cap = connections.max_connections, "connection cap reached; closing idle connections");
                shed.notify_waiters();
                tokio::select! {
                    slot = slots.clone().acquire_owned() => break slot.expect("the semaphore is never closed"),
                    () = tokio::time::sleep(IDLE_BEFORE_SHED / 4) => {}
                    () = &mut shutdown => break 'serving,
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, activity) = (shared.clone(), Arc::new(Activity { epoch: Some(epoch), ..Activity::default() }));
        let service = service_fn({
            let activity = activity.clone();
            move |request: Request<Incoming>| {
                let (shared, activity) = (shared.clone(), activity.clone());
                async move {
                    activity.busy.fetch_add(1, Relaxed);
                    let response = routes::handle(&shared, request).await;
                    activity.done();
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let signals =
            Signals { activity, shed: shed.clone(), stopping: stopping.clone(), max_age: connections.max_age };
        let Some(tls) = connections.tls.clone() else {
            let connection = http1.serve_connection(TokioIo::new(stream), service);
            tokio::spawn(async move {
                signals.drive(connection, peer).await;
                drop(slot);
            });
            continue;
        };
        let (negotiated, handshake_timeout) = (negotiated.clone(), connections.header_read_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => signals.drive(negotiated.serve_connection(TokioIo::new(stream), service), peer).await,
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            drop(slot);
        });
    }
    drop(listener);
    let started = tokio::time::Instant::now();
    tracing::info!(?grace, "stopped accepting; finishing open requests");
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: all slots back means all connections done.
    let all = u32::try_from(connections.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, slots.acquire_many(all)).await.is_err() {
        tracing::warn!("open connections did not finish within the grace period");
    }
    grace.saturating_sub(started.elapsed())
}

/// What a connection is doing, for the shedding at the cap.
#[derive(Default)]
struct Activity {
    /// Requests being answered on it right now.
    busy: AtomicUsize,
    /// When its last request was answered, in milliseconds after `epoch` (plus one: 0 while
    /// it has answered none).
    done_at: AtomicU64,
    epoch: Option<Instant>,
}

impl Activity {
    fn done(&self) {
        let since = self.epoch.map_or(Duration::ZERO, |epoch| epoch.elapsed());
        self.done_at.store(since.as_millis() as u64 + 1, Relaxed);
        self.busy.fetch_sub(1, Relaxed);
    }

    /// An idle keep-alive connection: it answered a request a while ago and none since.
    fn is_idle(&self) -> bool {
        let done_at = self.done_at.load(Relaxed);
        let since = self.epoch.map_or(Duration::ZERO, |epoch| epoch.elapsed());
        self.busy.load(Relaxed) == 0
            && done_at > 0
            && since.saturating_sub(Duration::from_millis(done_at - 1)) >= IDLE_BEFORE_SHED
    }
}

/// What a connection listens to besides its socket.
struct Signals {
    activity: Arc<Activity>,
    /// The cap was reached: close if idle.
    shed: Arc<Notify>,
    /// The gateway is shutting down: finish the request in progress, then close.
    stopping: watch::Receiver<bool>,
    /// Past this age: finish the request in progress, then close.
    max_age: Option<Duration>,
}

impl Signals {
    /// Serves `connection` until it ends, closing it gracefully when asked to.
    async fn drive<C>(mut self, connection: C, peer: std::net::SocketAddr)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        tokio::pin!(connection);
        let mut closing = false;
        let aged = async {
            match self.max_age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(aged);
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                    return;
                }
                () = self.shed.notified(), if !closing => {
                    if self.activity.is_idle() {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                _ = self.stopping.wait_for(|stop| *stop), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = &mut aged, if !closing => {
                    tracing::debug!(%peer, "connection reached --max-connection-age; closing after its response");
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
