use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use std::sync::Arc;

use hookbus::apps;
use hookbus::bus::Bus;
use hookbus::config::{AsyncapiArgs, Cli, Command, Format, LogFormat, RespondArgs, ServeArgs, SimulateArgs, TailArgs};

/// The exit code of a `serve` that stopped with accepted events it could not deliver.
const EXIT_LOST: u8 = 3;

// The composition root is `config` (flags → bus options, flags + bus → gateway); this file
// parses, sets up logging, connects, builds and runs.

// Per-request allocations dominate the gateway's own CPU time; mimalloc halves their cost
// against glibc malloc here and keeps RSS from fragmenting under bursts (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Text,
    };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // async-nats logs every connection event at info, one per message it drops in a flood of
    // replies; the bus logs those events itself, the drops at most once a second.
    if !std::env::var("RUST_LOG").is_ok_and(|directives| directives.contains("async_nats")) {
        filter = filter.add_directive("async_nats=warn".parse().expect("a valid directive"));
    }
    // lapin logs every message the broker returns in full, body and all, as decimal bytes, one
    // line per message and never rate-limited; the gateway counts and logs returns itself.
    if !std::env::var("RUST_LOG").is_ok_and(|directives| directives.contains("lapin::returned_messages")) {
        filter = filter.add_directive("lapin::returned_messages=off".parse().expect("a valid directive"));
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().flatten_event(true).init(),
    }
    // A panic in a task ends only that task: counted and logged where the operator looks, so
    // that a gateway that lost one never looks healthy without a trace.
    std::panic::set_hook(Box::new(hookbus::metrics::panicked));
    // serve: one worker by default: no work stealing and no wake-ups across threads between a
    // request, the outbox and the bus client (tokio's multi-thread scheduler, which, unlike the
    // current-thread one, keeps the publisher's turns frequent under a flood of requests).
    // respond: one worker per core unless told (its tail latency is lower that way).
    let threads = match &cli.command {
        Command::Serve(args) => Some(args.threads),
        Command::Respond(args) => args.threads,
        _ => None,
    };
    let runtime = match threads {
        Some(threads) => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads.into()).enable_all().build()
        }
        None => tokio::runtime::Runtime::new(),
    };
    let runtime = runtime.expect("a tokio runtime starts");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Simulate(args) => simulate(args).await,
            Command::Respond(args) => respond(args).await,
            Command::Asyncapi(args) => asyncapi(args),
            Command::Spool(args) => {
                hookbus::spool_command::run(&args.spool_dir, &args.action, &mut std::io::stdout().lock())
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::Tail(args) => tail(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            // Once, through the log (stderr), with the chain of causes.
            tracing::error!("{error:#}");
            // A rules file that cannot be used is a bad argument, like a bad flag.
            if error.chain().any(|cause| cause.is::<hookbus::rules::Invalid>()) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The listener, with a backlog for a burst of connections as large as the connection cap
/// (the kernel bounds it by `net.core.somaxconn`): a connection the backlog cannot hold waits
/// a second for its SYN to be sent again, half of Tencent's time for a decision.
fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let connected = Bus::connect(args.bus.options()).await;
    // Refused for good at start: what an earlier run spooled stays on disk for the next one.
    let bus = match &args.spool_dir {
        Some(dir) => connected.with_context(|| {
            format!("connecting to the bus (the spool {} keeps its events for the next start)", dir.display())
        })?,
        None => connected.context("connecting to the bus")?,
    };
    let gateway = args.build(bus)?;
    let listener = listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    tokio::spawn(reload_on_hangup(gateway.shared.apps.clone(), args.apps()));
    let scheme = if gateway.connections.tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, scheme, path = gateway.shared.path, bus = ?args.bus.bus, "hookbus ready");
    let report = hookbus::run(gateway, listener, signal()).await;
    tracing::info!(lost = report.lost, spooled = report.spooled, "hookbus stopped");
    // Lost events (memory outbox only) are the one outcome no scrape can see any more.
    Ok(if report.lost > 0 { ExitCode::from(EXIT_LOST) } else { ExitCode::SUCCESS })
}

async fn simulate(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let keys = hookbus::simulate::Keys {
        token: args.token.as_deref(),
        trtc_key: args.trtc_key.as_deref(),
        css_key: args.css_key.as_deref(),
    };
    let answers = hookbus::simulate::simulate(&args.url, &args.sdk_app_id, keys, &args.commands).await?;
    let mut all_ok = true;
    for answer in answers {
        all_ok &= answer.status == 200;
        println!("{:<48} {} {}", answer.command, answer.status, answer.body);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn respond(args: RespondArgs) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(args.bus.options()).await.context("connecting to the bus")?;
    let responder = args.responder()?;
    let (ready, _) = tokio::sync::oneshot::channel();
    tokio::select! {
        result = responder.run(&bus, &args.bus.prefix, ready) => result.context("responding")?,
        () = signal() => {}
    }
    bus.close().await;
    Ok(ExitCode::SUCCESS)
}

fn asyncapi(args: AsyncapiArgs) -> anyhow::Result<ExitCode> {
    let document = args.contract().document();
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&document)?),
        Format::Yaml => print!("{}", yaml_serde::to_string(&document)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Re-reads the token files and the apps file on each SIGHUP; what no longer loads leaves the
/// settings in force.
async fn reload_on_hangup(current: Arc<apps::Current>, spec: apps::Spec) {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("installing a SIGHUP handler cannot fail at start-up");
    while hangups.recv().await.is_some() {
        match apps::load(&spec) {
            Ok(apps) => current.replace(apps),
            Err(error) => tracing::error!("SIGHUP: settings not reloaded, the ones in force stay: {error:#}"),
        }
    }
}

/// `hookbus tail`: follows the admin socket the flags name until SIGINT or SIGTERM.
async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    let socket = match (args.admin_socket, args.spool_dir) {
        (Some(socket), _) => socket,
        (None, Some(dir)) => dir.join(hookbus::admin::SOCKET),
        (None, None) => anyhow::bail!("give --admin-socket or --spool-dir"),
    };
    let filters = hookbus::tail::Filters {
        command: args.command,
        app: args.app,
        room: args.room,
        status: args.status,
        outcome: args.outcome,
        id: args.id,
        grep: args.grep,
    };
    // Colours for a person at a terminal only, and never with NO_COLOR set.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let form = hookbus::tail::Form { json: args.json, body: args.body, colour };
    let client = hookbus::admin::Client::connect(&socket)
        .await
        .map_err(|error| anyhow::anyhow!("cannot reach the gateway's admin socket {}: {error}", socket.display()))?;
    let lines = client.tail(args.last.min(hookbus::tail::RING), hookbus::tail::wants_body(&filters, form)).await?;
    hookbus::tail::run(lines, &filters, form, signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGINT or SIGTERM (Kubernetes sends SIGTERM).
async fn signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail at start-up");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
