//! hyper plumbing: the accept loop, one task per connection, a cap on connections, the
//! header-read (and keep-alive idle) timeout, TLS (HTTP/2 or HTTP/1.1 by ALPN) and graceful
//! shutdown (stop accepting, let in-flight requests finish within the grace period). What a
//! request means is `routes`' business.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::routes::{self, App};

/// Limits on connections, against slow and hostile clients.
#[derive(Clone)]
pub struct Connections {
    /// For a request's headers, and for an idle keep-alive connection's next request.
    pub header_read_timeout: Duration,
    /// Served at once; the rest wait in the listen backlog.
    pub max_connections: usize,
    /// HTTPS when set.
    pub tls: Option<TlsAcceptor>,
}

impl Default for Connections {
    /// The flags' defaults: 10 s, 10,000 connections, plain HTTP.
    fn default() -> Connections {
        Connections { header_read_timeout: Duration::from_secs(10), max_connections: 10_000, tls: None }
    }
}

/// Serves HTTP/1.1 (or, over TLS, HTTP/2 or HTTP/1.1 by ALPN) on `listener` until `shutdown` resolves, then waits up to `grace` for
/// open requests to finish. Returns the time that was left of `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    limits: &Connections,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> Duration {
    let graceful = GracefulShutdown::new();
    let mut http1 = http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let mut negotiated = auto::Builder::new(TokioExecutor::new());
    negotiated.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    negotiated.http2().timer(TokioTimer::new());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
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
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(routes::handle(&app, request).await) }
        });
        let Some(tls) = limits.tls.clone() else {
            let connection = graceful.watch(http1.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                drop(slot);
            });
            continue;
        };
        let (watcher, negotiated, handshake_timeout) =
            (graceful.watcher(), negotiated.clone(), limits.header_read_timeout);
        tokio::spawn(async move {
            match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = watcher.watch(negotiated.serve_connection(TokioIo::new(stream), service));
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, %peer, "connection ended with an error");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
            drop(slot);
        });
    }
    drop(listener);
    let started = tokio::time::Instant::now();
    tracing::info!(?grace, "stopped accepting; finishing open requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("open connections did not finish within the grace period");
    }
    grace.saturating_sub(started.elapsed())
}
