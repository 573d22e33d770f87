//! hookbus receives Tencent Cloud Live, Chat and TRTC callbacks over HTTP and puts them on a
//! message bus: informational callbacks go through an outbox with broker confirms, blocking
//! callbacks (gifts, room messages) are decided by a responder over request-reply.
//!
//! # Layout
//!
//! - [`config`]: flags and `HOOKBUS_*` environment variables, the only module that reads them
//!   (and the only one that names clap).
//! - [`assembly`]: the composition root: turns flags into the bus [`bus::Options`] and, given a
//!   connected bus, the built [`Gateway`] (token files read, spool opened, TLS loaded). `main`
//!   parses, sets up logging, connects, builds and runs.
//! - [`http`]: hyper plumbing, the accept loop and graceful shutdown.
//! - [`routes`]: what each endpoint does; the checks of a callback in order.
//! - [`tencent`]: the callback protocol: query, signature, commands, reply codes, room key.
//! - [`trtc`]: the TRTC room and media callback protocol: its signature, event and event id.
//! - [`canonical`]: the canonical text of a JSON value, which TRTC event ids are made of.
//! - [`apps`]: the SdkAppids served, each with its tokens, prefix and fallbacks; reloadable.
//! - [`tls`]: the HTTPS configuration from PEM files.
//! - [`replay`]: signed requests already answered, so that a replay is not published again.
//! - [`decision`]: blocking callbacks: deadline, reply validation, rules, fallbacks.
//! - [`rules`]: local decision rules (`--rules`), matched on the body.
//! - [`outbox`]: accepted events until the bus confirms them; the publisher task.
//! - [`spool`]: the crash-safe outbox log on disk (`--spool-dir`).
//! - [`dead_letters`]: events the broker will never take, kept (with a spool, on disk).
//! - [`record`]: the record format the spool and the dead-letter log share.
//! - [`spool_command`]: `hookbus spool`, the operator's look into a spool directory.
//! - [`admin`]: the running gateway's admin socket (requeue, tail).
//! - [`tail`]: `hookbus tail`, a live view of the callbacks a gateway answers, and the tap it reads.
//! - [`bus`]: the enum of concrete bus clients and the message they carry.
//! - [`metrics`]: what `/metrics` shows, as one method per thing that happens.
//! - [`simulate`]: a stand-in for Tencent that posts the documented samples.
//! - [`respond`]: a reference responder for blocking callbacks.
//! - [`asyncapi`]: the AsyncAPI contract of what a gateway publishes.
//! - [`traces`]: spans over OTLP/HTTP (`--otlp-endpoint`).
//! - [`logs`]: log fields that carry outside bytes (escaped, cut), lines rate-limited.
//!
//! No module imports one that imports it back: `assembly` → `config` and everything it builds; `routes` →
//! `decision`, `outbox`, `metrics`, `tencent`, `trtc`, `tail`, `bus`, `logs`; `admin` → `outbox`,
//! `tail`; `outbox` → `spool`,
//! `dead_letters`, `metrics`, `bus`; `spool`, `dead_letters` → `record`; `trtc` → `canonical`; `bus` → `traces` (the trace context a message carries) and
//! `logs`, nothing else of the gateway's; `logs` imports nothing of it.

pub mod admin;
pub mod apps;
pub mod assembly;
pub mod asyncapi;
pub mod bus;
pub mod canonical;
pub mod config;
pub mod dead_letters;
pub mod decision;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod outbox;
pub mod record;
pub mod replay;
pub mod respond;
pub mod routes;
pub mod rules;
pub mod simulate;
pub mod spool;
pub mod spool_command;
pub mod tail;
pub mod tencent;
pub mod tls;
pub mod traces;
pub mod trtc;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::apps::Current;
use crate::bus::Bus;
use crate::dead_letters::DeadLetters;
use crate::decision::Decisions;
use crate::http::Connections;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::replay::Replays;
use crate::routes::{Limits, Shared};
use crate::spool::{Backlog, Spool};
use crate::tail::Tap;
use crate::tencent::BLOCKING;
use crate::traces::Tracer;

/// The built parts of a gateway, ready to serve.
pub struct Gateway {
    /// The callback path.
    pub path: String,
    pub limits: Limits,
    /// The apps in force; `apps.replace` puts new ones in force (SIGHUP).
    pub apps: Arc<Current>,
    /// Publish every decision as an event (`--audit`).
    pub audit: bool,
    /// Export spans (`--otlp-endpoint`).
    pub tracer: Option<Tracer>,
    pub decisions: Decisions,
    pub bus: Bus,
    pub outbox: outbox::Bounds,
    pub connections: Connections,
    pub shutdown_grace: Duration,
    /// With `--spool-dir`: the opened spool and what it replayed.
    pub spool: Option<(Spool, Backlog)>,
    /// Where events the broker will not take are kept.
    pub dead_letters: DeadLetters,
    /// The admin socket (`hookbus tail`, `hookbus spool requeue`), when there is one.
    pub admin_socket: Option<std::path::PathBuf>,
}

/// What a finished run left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Accepted events the bus had not confirmed when the grace period ran out (memory outbox).
    pub lost: usize,
    /// Accepted events left in the spool for the next start.
    pub spooled: usize,
}

/// Serves callbacks on `listener` until `shutdown` resolves; then stops accepting, finishes
/// open requests, and flushes the outbox, all within the shutdown grace period.
pub async fn run(gateway: Gateway, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Report {
    let blocking =
        BLOCKING.iter().map(|blocking| blocking.command).chain(gateway.decisions.generic.iter().map(String::as_str));
    let metrics = Arc::new(Metrics::new(blocking, gateway.decisions.rules.names()));
    if let Some((_, replay)) = &gateway.spool {
        metrics.spool_read_back(&replay.recovery);
    }
    let outbox = Arc::new(Outbox::new(gateway.outbox, gateway.spool, Arc::new(gateway.dead_letters)));
    let tap = Arc::new(Tap::default());
    let admin = gateway.admin_socket.and_then(|path| admin::serve(&path, outbox.clone(), tap.clone()));
    let mut publisher =
        tokio::spawn(outbox.clone().publish(gateway.bus.clone(), metrics.clone(), gateway.tracer.clone()));
    let shared = Arc::new(Shared {
        path: gateway.path,
        replays: Replays::new(gateway.limits.replay_cache_entries),
        limits: gateway.limits,
        apps: gateway.apps,
        audit: gateway.audit,
        tracer: gateway.tracer,
        decisions: gateway.decisions,
        bus: gateway.bus.clone(),
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        tap,
    });
    let left = http::serve(listener, shared, &gateway.connections, shutdown, gateway.shutdown_grace).await;
    let deadline = tokio::time::Instant::now() + left;
    outbox.close();
    tracing::info!(depth = outbox.depth(), within = ?left, "flushing the outbox");
    if tokio::time::timeout_at(deadline, &mut publisher).await.is_err() {
        publisher.abort();
    }
    outbox.checkpoint();
    let unconfirmed = outbox.depth();
    let report = if outbox.is_spooled() {
        if unconfirmed > 0 {
            tracing::warn!(unconfirmed, "accepted events not yet confirmed stay in the spool for the next start");
        }
        Report { lost: 0, spooled: unconfirmed }
    } else {
        if unconfirmed > 0 {
            tracing::error!(lost = unconfirmed, "accepted events not confirmed by the bus before the grace period ended; they are lost (the memory outbox keeps nothing)");
        }
        Report { lost: unconfirmed, spooled: 0 }
    };
    drop(admin);
    // A broker that is away can hold a close forever; the grace period bounds it too.
    if tokio::time::timeout_at(deadline, gateway.bus.close()).await.is_err() {
        tracing::warn!("the bus did not close within the grace period");
    }
    report
}
