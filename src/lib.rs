//! hookbus receives Tencent Cloud Live, Chat, TRTC and Cloud Streaming (CSS) callbacks over HTTP
//! and puts them on a message bus: informational callbacks go through an outbox with broker
//! confirms, blocking callbacks (gifts, room messages) are decided by a responder over
//! request-reply.
//!
//! # Layout
//!
//! - [`config`]: flags and `HOOKBUS_*` environment variables, the only module that reads them
//!   (and the only one that names clap).
//! - [`assembly`]: the composition root: turns flags into the bus [`bus::Options`] and, given a
//!   connected bus, the built [`Gateway`] (token files read, spool opened, TLS loaded; the
//!   metrics, replay cache, outbox, publisher and admin socket built once). `main` parses, sets
//!   up logging, connects, builds and [`run`]s, which only spawns and drains.
//! - [`http`]: hyper plumbing, the accept loop and graceful shutdown.
//! - [`routes`]: what each endpoint does; a callback's surface (Live and Chat, TRTC or CSS: one
//!   file each under `routes/`) chosen from its head, its checks in order.
//! - [`tencent`]: the Live and Chat callback protocol: query, signature, commands, reply codes.
//! - [`body`]: a callback's JSON body, checked and scanned once for its command and room key.
//! - [`trtc`]: the TRTC room and media callback protocol: its signature, event and event id.
//! - [`css`]: the Cloud Streaming (CSS) callback protocol: its event types, `t`/`sign` and event id.
//! - [`canonical`]: the canonical text of a JSON value, which TRTC and CSS event ids are made of.
//! - [`apps`]: the SdkAppids served, each with its tokens, prefix and fallbacks; reloadable.
//! - [`tls`]: the HTTPS configuration from PEM files.
//! - [`replay`]: signed requests already answered, so that a replay is not published again.
//! - [`decision`]: blocking callbacks: deadline, reply validation, rules, fallbacks.
//! - [`rules`]: local decision rules (`--rules`), matched on the body.
//! - [`outbox`]: accepted events until the bus confirms them (its queue); the publisher task and
//!   its dead-letter policy.
//! - [`spool`]: the crash-safe outbox log on disk (`--spool-dir`).
//! - [`dead_letters`]: events the broker will never take, kept (with a spool, on disk).
//! - [`record`]: the record format the spool and the dead-letter log share.
//! - [`spool_command`]: `hookbus spool`, the operator's look into a spool directory.
//! - [`admin`]: the running gateway's admin socket (requeue, tail): both ends of its line protocol.
//! - [`tail`]: `hookbus tail`, a live view of the callbacks a gateway answers, and the tap it reads.
//! - [`bus`]: the enum of concrete bus clients and the message they carry.
//! - [`metrics`]: what `/metrics` shows, as one method per thing that happens.
//! - [`samples`]: the documented sample callbacks, embedded from `samples/` (the files are the list).
//! - [`simulate`]: a stand-in for Tencent that posts the documented samples.
//! - [`respond`]: a reference responder for blocking callbacks.
//! - [`asyncapi`]: the AsyncAPI contract of what a gateway publishes.
//! - [`traces`]: spans over OTLP/HTTP (`--otlp-endpoint`).
//! - [`logs`]: log fields that carry outside bytes (escaped, cut), lines rate-limited.
//!
//! No module imports one that imports it back: `assembly` → `config` and everything it builds;
//! `routes` → `decision`, `outbox`, `spool` (its errors), `metrics`, `apps`, `replay`, `tencent`,
//! `trtc`, `css`, `body`, `tail`, `traces`, `bus`, `logs`; `admin` → `outbox`, `tail`;
//! `spool_command` → `admin`; `outbox` → `spool`, `dead_letters`, `metrics`, `apps`, `bus` (its
//! `publisher` → its `queue`, never back); `spool` and `dead_letters` → `record`; `trtc` and `css` → `tencent`, `body`, `canonical`,
//! `bus`; `bus` → `traces` (the trace context a message carries) and `logs`, nothing else of the
//! gateway's; `logs` imports nothing of it.

pub mod admin;
pub mod apps;
pub mod assembly;
pub mod asyncapi;
pub mod body;
pub mod bus;
pub mod canonical;
pub mod config;
pub mod css;
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
pub mod samples;
pub mod simulate;
pub mod spool;
pub mod spool_command;
pub mod tail;
pub mod tencent;
pub mod tls;
pub mod traces;
pub mod trtc;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::http::Connections;
use crate::outbox::Publisher;
use crate::routes::Shared;

/// The built parts of a gateway, ready to serve: [`assembly`] builds them, [`run`] runs them.
pub struct Gateway {
    /// What every request is handled with: the apps in force (`shared.apps.replace` puts new
    /// ones in force, SIGHUP), the decisions, the outbox, the metrics…
    pub shared: std::sync::Arc<Shared>,
    /// The task that publishes what the outbox accepted, not started yet.
    pub publisher: Publisher,
    pub connections: Connections,
    pub shutdown_grace: Duration,
    /// The admin socket being served (`hookbus tail`, `hookbus spool requeue`), when there is one.
    pub admin: Option<Admin>,
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
    let Gateway { shared, publisher, connections, shutdown_grace, admin } = gateway;
    let (outbox, bus) = (shared.outbox.clone(), shared.bus.clone());
    let mut publisher = tokio::spawn(publisher.run());
    let left = http::serve(listener, shared, &connections, shutdown, shutdown_grace).await;
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
    if tokio::time::timeout_at(deadline, bus.close()).await.is_err() {
        tracing::warn!("the bus did not close within the grace period");
    }
    report
}
