//! Command-line flags and their `HOOKBUS_*` environment variables: the only module that reads
//! either, and the only one that names clap. Each flag's parser checks what it can alone;
//! turning the flags into built parts is `assembly`'s business.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bus;
use crate::decision::{self, Fallback};
use crate::routes::RESERVED_PATHS;
use crate::tencent;

#[derive(Debug, Parser)]
#[command(
    name = "hookbus",
    version,
    about = "Tencent Cloud Live, Chat and TRTC callbacks onto Kafka, NATS or RabbitMQ"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Send the documented sample callbacks, signed, to a running gateway and print each answer.
    Simulate(SimulateArgs),
    /// Answer blocking callbacks (gifts, messages) from the bus: a reference responder.
    Respond(RespondArgs),
    /// Print the AsyncAPI 3.0 document of what `serve` with these bus flags publishes.
    Asyncapi(AsyncapiArgs),
    /// Look into a spool directory (a gateway may be running on it) and requeue dead letters.
    Spool(SpoolArgs),
    /// Show a running gateway's callbacks as they are answered, one line each.
    Tail(TailArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The gateway's admin socket (its --admin-socket).
    #[arg(long, env = "HOOKBUS_ADMIN_SOCKET", required_unless_present = "spool_dir")]
    pub admin_socket: Option<PathBuf>,
    /// The gateway's spool directory, whose admin.sock to use.
    #[arg(long, env = "HOOKBUS_SPOOL_DIR", conflicts_with = "admin_socket")]
    pub spool_dir: Option<PathBuf>,
    /// First show the N most recent callbacks (at most 1024).
    #[arg(long, default_value_t = 0)]
    pub last: usize,
    /// One JSON object per line, for piping.
    #[arg(long)]
    pub json: bool,
    /// Add each callback's body (escaped, cut to 1 KiB).
    #[arg(long)]
    pub body: bool,
    /// Only commands matching this glob (`Live.*`, `*Gift`).
    #[arg(long)]
    pub command: Option<String>,
    /// Only this SdkAppid.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this room.
    #[arg(long)]
    pub room: Option<String>,
    /// Only these statuses: `200`, `4xx`, `503`…
    #[arg(long)]
    pub status: Option<String>,
    /// Only outcomes containing this text: `accepted`, `decided`, `fallback`, `refused`, `sign_mismatch`…
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only this event id.
    #[arg(long)]
    pub id: Option<String>,
    /// Only bodies containing this text (a MsgKey, a BattleId, a stream id…).
    #[arg(long)]
    pub grep: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SpoolArgs {
    /// The spool directory: the gateway's --spool-dir.
    #[arg(long, env = "HOOKBUS_SPOOL_DIR")]
    pub spool_dir: PathBuf,
    #[command(subcommand)]
    pub action: SpoolAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SpoolAction {
    /// Segments, bytes, events, the oldest event's age, dead letters.
    Stat,
    /// One line per event (or per dead letter).
    Ls {
        #[command(flatten)]
        select: Select,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The attributes and body of one event or dead letter.
    Show { id: String },
    /// The events (or dead letters) as CloudEvents JSON lines, on stdout.
    Export {
        #[command(flatten)]
        select: Select,
    },
    /// Puts dead letters back into the outbox, with their ids: the running gateway's (through
    /// its admin socket), or the spool's for the next start.
    Requeue {
        /// The dead letters to requeue.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// Dead letters are what requeue takes; accepted for symmetry with `ls --dead`.
        #[arg(long)]
        dead: bool,
    },
}

/// Which events `spool ls` and `spool export` take.
#[derive(Debug, Clone, Args)]
pub struct Select {
    /// Dead letters instead of the events in the segments.
    #[arg(long)]
    pub dead: bool,
    /// Only this CallbackCommand.
    #[arg(long)]
    pub command: Option<String>,
    /// Only this room (the event's key).
    #[arg(long)]
    pub room: Option<String>,
    /// Only events received since this time (RFC 3339) or this long ago (`10m`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<std::time::SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct AsyncapiArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Output format.
    #[arg(long, env = "HOOKBUS_ASYNCAPI_FORMAT", value_enum, default_value = "yaml")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    Stdout,
    Nats,
    Amqp,
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Unrouted {
    Keep,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the bus is and how to talk to it; shared by `serve` and `respond`.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// Message bus to publish to.
    #[arg(long, env = "HOOKBUS_BUS", value_enum, default_value = "stdout")]
    pub bus: BusKind,
    /// Destination prefix: events go to `{prefix}.{CallbackCommand}`.
    #[arg(long, env = "HOOKBUS_PREFIX", default_value = "tencent", value_parser = parse_prefix)]
    pub prefix: String,
    /// NATS server URLs, comma-separated: the servers of one cluster (a seed list).
    #[arg(
        long,
        env = "HOOKBUS_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        value_delimiter = ',',
        num_args = 1
    )]
    pub nats_url: Vec<String>,
    /// Publish through JetStream and wait for its PubAck (a stream must cover the subjects).
    #[arg(long, env = "HOOKBUS_NATS_JETSTREAM")]
    pub nats_jetstream: bool,
    /// Create a JetStream stream NAME over `{prefix}.>` at start when none covers the subjects.
    #[arg(long, env = "HOOKBUS_NATS_CREATE_STREAM", value_name = "NAME")]
    pub nats_create_stream: Option<String>,
    /// Replicas of the stream --nats-create-stream creates: 3 on a 3-node cluster.
    #[arg(long, env = "HOOKBUS_NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_stream_replicas: u8,
    /// RabbitMQ URLs, comma-separated: the nodes of one cluster, tried in turn from a place of
    /// each instance's own.
    #[arg(long, env = "HOOKBUS_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f", value_parser = parse_amqp_url, value_delimiter = ',', num_args = 1)]
    pub amqp_url: Vec<String>,
    /// Durable topic exchange that events are published to (declared at start when missing).
    #[arg(long, env = "HOOKBUS_AMQP_EXCHANGE", default_value = "tencent")]
    pub amqp_exchange: String,
    /// Events no queue is bound for: kept in the queue `{prefix}.unrouted` through the
    /// alternate exchange `{exchange}.unrouted`, or dropped by the broker (logged and counted).
    #[arg(long, env = "HOOKBUS_AMQP_UNROUTED", value_enum, default_value = "keep", overrides_with = "amqp_unrouted")]
    pub amqp_unrouted: Unrouted,
    /// Type of the queues the gateway declares (`{prefix}.unrouted`, the responders' queue):
    /// quorum on a cluster.
    #[arg(long, env = "HOOKBUS_AMQP_QUEUE_TYPE", default_value = "classic", value_parser = queue_type())]
    pub amqp_queue_type: bus::amqp::QueueType,
    /// Kafka bootstrap brokers, comma-separated `host:port`.
    #[arg(long, env = "HOOKBUS_KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_parser = parse_brokers)]
    pub kafka_brokers: String,
    /// Topic this instance reads decisions from [default: `{prefix}.replies.{instance id}`].
    #[arg(long, env = "HOOKBUS_KAFKA_REPLY_TOPIC")]
    pub kafka_reply_topic: Option<String>,
    /// Create missing topics through the admin API before their first publish.
    #[arg(long, env = "HOOKBUS_KAFKA_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub kafka_create_topics: bool,
    /// Partitions of topics the gateway creates.
    #[arg(long, env = "HOOKBUS_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// Replication factor of topics the gateway creates: 3 on a cluster (with the topics'
    /// `min.insync.replicas` at 2; the producer asks acks=all).
    #[arg(long, env = "HOOKBUS_KAFKA_REPLICATION_FACTOR", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
    pub kafka_replication_factor: i32,
    /// Largest record the producer sends (librdkafka's `message.max.bytes`): set it to the
    /// topics' `max.message.bytes`, and a larger event is a dead letter at once rather than a
    /// round trip to a broker that refuses it.
    #[arg(long, env = "HOOKBUS_KAFKA_MESSAGE_MAX_BYTES", default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1000..=1_000_000_000))]
    pub kafka_message_max_bytes: u32,
    /// Name of this instance: its Kafka reply topic and consumer group, its NATS connection
    /// name [default: the host name, which is the pod name in Kubernetes].
    #[arg(long, env = "HOOKBUS_INSTANCE_ID", value_parser = parse_instance_id)]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOOKBUS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Path that Tencent posts callbacks to.
    #[arg(long, env = "HOOKBUS_PATH", default_value = "/", value_parser = parse_path)]
    pub path: String,
    /// Accepted SdkAppid (repeatable; comma-separated in the environment). Any when no app is
    /// listed here, with --app or in --apps.
    #[arg(long = "sdk-app-id", env = "HOOKBUS_SDK_APP_ID", value_delimiter = ',')]
    pub sdk_app_ids: Vec<String>,
    /// Callback token (repeatable; comma-separated in the environment): when any is set,
    /// `Sign` and `RequestTime` are required, and a request signed with any of them is accepted.
    #[arg(long, env = "HOOKBUS_TOKEN", hide_env_values = true, value_delimiter = ',')]
    pub token: Vec<String>,
    /// `[NAME=]PATH` of a file of callback tokens, one per line (repeatable; comma-separated in
    /// the environment); re-read on SIGHUP. NAME (default: the file name) labels the metrics.
    #[arg(long, env = "HOOKBUS_TOKEN_FILE", value_delimiter = ',')]
    pub token_file: Vec<String>,
    /// TRTC room and media callback key (repeatable; comma-separated in the environment): when
    /// any is set, a TRTC callback's `Sign` header must be the body signed with one of them.
    #[arg(long, env = "HOOKBUS_TRTC_KEY", hide_env_values = true, value_delimiter = ',')]
    pub trtc_key: Vec<String>,
    /// `[NAME=]PATH` of a file of TRTC keys, one per line (repeatable; comma-separated in the
    /// environment); re-read on SIGHUP. NAME (default: the file name) labels the metrics.
    #[arg(long, env = "HOOKBUS_TRTC_KEY_FILE", value_delimiter = ',')]
    pub trtc_key_file: Vec<String>,
    /// Cloud Streaming (CSS) callback key (repeatable; comma-separated in the environment): when
    /// any is set, a CSS callback's body must carry `t` and `sign` = md5(key + t) for one of them.
    #[arg(long, env = "HOOKBUS_CSS_KEY", hide_env_values = true, value_delimiter = ',')]
    pub css_key: Vec<String>,
    /// `[NAME=]PATH` of a file of CSS keys, one per line (repeatable; comma-separated in the
    /// environment); re-read on SIGHUP. NAME (default: the file name) labels the metrics.
    #[arg(long, env = "HOOKBUS_CSS_KEY_FILE", value_delimiter = ',')]
    pub css_key_file: Vec<String>,
    /// An app of its own: `SDKAPPID[:key=value,…]` with token, token-file, trtc-key,
    /// trtc-key-file, css-key, css-key-file, prefix, gift-fallback, message-fallback (repeatable;
    /// `;`-separated in the environment). A CSS callback's app is its body's `appid`.
    #[arg(long = "app", env = "HOOKBUS_APP", value_delimiter = ';')]
    pub apps: Vec<String>,
    /// A TOML file of apps (`[[app]]` with sdk_app_id, tokens, token_files, trtc_keys,
    /// trtc_key_files, css_keys, css_key_files, prefix, gift_fallback, message_fallback); re-read
    /// on SIGHUP.
    #[arg(long = "apps", env = "HOOKBUS_APPS")]
    pub apps_file: Option<PathBuf>,
    /// Largest accepted difference between RequestTime and now (for a signed TRTC callback,
    /// between CallbackTs and now, beyond the 70 s of Tencent's retries; for a signed CSS
    /// callback, how long after its expiry `t` it is still taken).
    #[arg(long, env = "HOOKBUS_MAX_CLOCK_SKEW", default_value = "60s", value_parser = parse_duration)]
    pub max_clock_skew: Duration,
    /// Largest accepted callback body (at most 16 MiB: a spool record holds at most 64 MiB, and
    /// a larger one would be refused when read back).
    #[arg(long, env = "HOOKBUS_MAX_BODY_BYTES", default_value_t = 65536, value_parser = parse_body_bytes)]
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a body (the body itself is 1).
    #[arg(long, env = "HOOKBUS_MAX_JSON_DEPTH", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_json_depth: u32,
    /// Signed requests remembered (about 100 bytes each) so that a replay inside the clock-skew
    /// window is answered as before and not published again; 0 turns this off.
    #[arg(long, env = "HOOKBUS_REPLAY_CACHE_ENTRIES", default_value_t = 200_000)]
    pub replay_cache_entries: usize,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept.
    #[arg(long, env = "HOOKBUS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's body after its headers (408 past it).
    #[arg(long, env = "HOOKBUS_BODY_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Connections served at once (about 28 KiB each); more wait in the listen backlog while
    /// idle keep-alive connections are closed to make room.
    #[arg(long, env = "HOOKBUS_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Close a connection gracefully (after the response in progress) once it is this old, so
    /// that a new replica behind a load balancer gets its share of Tencent's keep-alive
    /// connections; 0 keeps connections for as long as the client does.
    #[arg(long, env = "HOOKBUS_MAX_CONNECTION_AGE", default_value = "30s", value_parser = parse_duration)]
    pub max_connection_age: Duration,
    #[command(flatten)]
    pub bus: BusArgs,
    /// How long a blocking callback waits for a decision (must be under 2s).
    #[arg(long, env = "HOOKBUS_DECISION_TIMEOUT", default_value = "1500ms", value_parser = parse_decision_timeout)]
    pub decision_timeout: Duration,
    /// Largest decision reply read; a larger one is invalid and the fallback is answered.
    #[arg(long, env = "HOOKBUS_MAX_REPLY_BYTES", default_value_t = decision::MAX_REPLY_BYTES, value_parser = parse_max_reply_bytes)]
    pub max_reply_bytes: usize,
    /// Answer for a gift when no valid decision arrives in time.
    #[arg(long, env = "HOOKBUS_GIFT_FALLBACK", default_value = "deny", value_parser = fallback())]
    pub gift_fallback: Fallback,
    /// Answer for a room message when no valid decision arrives in time.
    #[arg(long, env = "HOOKBUS_MESSAGE_FALLBACK", default_value = "allow", value_parser = fallback())]
    pub message_fallback: Fallback,
    /// `COMMAND[=allow|deny]`: answer COMMAND with a decision too, checking replies generically
    /// (an integer ErrorCode); the fallback defaults to allow (repeatable; comma-separated in the
    /// environment). For a documented blocking command, sets its fallback.
    #[arg(long, env = "HOOKBUS_BLOCKING", value_delimiter = ',', value_parser = parse_blocking)]
    pub blocking: Vec<(String, Option<Fallback>)>,
    /// Local decision rules (TOML): see the README.
    #[arg(long, env = "HOOKBUS_RULES")]
    pub rules: Option<PathBuf>,
    /// Publish every decision as an event `{prefix}.audit.{CallbackCommand}` (type hookbus.decision).
    #[arg(long, env = "HOOKBUS_AUDIT")]
    pub audit: bool,
    /// Export spans (receive, decision, publish) over OTLP/HTTP to this collector, e.g.
    /// http://127.0.0.1:4318.
    #[arg(long, env = "HOOKBUS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Keep the outbox on disk in this directory: a 200 then means the event is durable.
    #[arg(long, env = "HOOKBUS_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// The admin socket (`hookbus tail`, `hookbus spool requeue`), mode 0600 [default: with
    /// --spool-dir, admin.sock in it; without, none unless this is given].
    #[arg(long, env = "HOOKBUS_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Largest spool on disk before callbacks are answered 503.
    #[arg(long, env = "HOOKBUS_SPOOL_MAX_BYTES", default_value_t = 256 << 20)]
    pub spool_max_bytes: u64,
    /// Size of a spool segment file: a segment is deleted once every event in it is confirmed.
    #[arg(long, env = "HOOKBUS_SPOOL_SEGMENT_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub spool_segment_bytes: u64,
    /// Take an event the broker has not confirmed after this many attempts for a dead letter,
    /// so that it holds back nothing (off: retry until confirmed). Events the broker refuses
    /// for good are dead letters at once whatever this says.
    #[arg(long, env = "HOOKBUS_DEAD_LETTER_AFTER", value_parser = clap::value_parser!(u32).range(1..))]
    pub dead_letter_after: Option<u32>,
    /// Bytes of dead letters kept (in memory, and with --spool-dir in its dead-letter log);
    /// past it a dead letter is logged and counted as dropped.
    #[arg(long, env = "HOOKBUS_DEAD_LETTER_MAX_BYTES", default_value_t = 16 << 20)]
    pub dead_letter_max_bytes: usize,
    /// Also publish a notice of each dead letter to `{prefix}.deadletter` (type
    /// hookbus.deadletter): which event, where to, why, and its body unless too large.
    #[arg(long, env = "HOOKBUS_DEAD_LETTER_DESTINATION")]
    pub dead_letter_destination: bool,
    /// Events the in-memory outbox holds before callbacks are answered 503.
    #[arg(long, env = "HOOKBUS_OUTBOX_CAPACITY", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbox_capacity: u32,
    /// Memory the outbox's events may hold before callbacks are answered 503 (memory outbox;
    /// with a spool, --spool-max-bytes bounds the waiting events instead).
    #[arg(long, env = "HOOKBUS_OUTBOX_MAX_BYTES", default_value_t = 8 << 20)]
    pub outbox_max_bytes: usize,
    /// How long a callback that finds the outbox (or memory) full waits for the broker to make
    /// room before it is answered 503; 0 refuses at once.
    #[arg(long, env = "HOOKBUS_OUTBOX_WAIT", default_value = "250ms", value_parser = parse_duration)]
    pub outbox_wait: Duration,
    /// How long the publisher lets events gather before it sends a batch smaller than 512: fewer
    /// confirm round trips (less CPU per callback at low rates) against that much delivery
    /// latency; 0 publishes at once.
    #[arg(long, env = "HOOKBUS_PUBLISH_LINGER", default_value = "5ms", value_parser = parse_linger)]
    pub publish_linger: Duration,
    /// Time allowed on SIGTERM/SIGINT to finish requests and flush the outbox.
    #[arg(long, env = "HOOKBUS_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// TLS certificate chain (PEM): serve HTTPS, HTTP/2 or HTTP/1.1.
    #[arg(long, env = "HOOKBUS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "HOOKBUS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, env = "HOOKBUS_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Threads that serve callbacks. 1 (the default) runs everything on one thread, the least
    /// CPU per callback; more spread the work over that many cores, at some cost per callback
    /// for the hand-overs between them.
    #[arg(long, env = "HOOKBUS_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Gateway callback URL.
    #[arg(long, env = "HOOKBUS_SIMULATE_URL", default_value = "http://127.0.0.1:8080/")]
    pub url: String,
    /// SdkAppid to send.
    #[arg(long, env = "HOOKBUS_SDK_APP_ID", default_value = "1400000000")]
    pub sdk_app_id: String,
    /// Token to sign with (no Sign is sent without one).
    #[arg(long, env = "HOOKBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TRTC key to sign the TRTC samples with (no Sign header is sent without one).
    #[arg(long, env = "HOOKBUS_TRTC_KEY", hide_env_values = true)]
    pub trtc_key: Option<String>,
    /// CSS callback key to sign the CSS samples with (`t` is set 10 minutes ahead either way).
    #[arg(long, env = "HOOKBUS_CSS_KEY", hide_env_values = true)]
    pub css_key: Option<String>,
    /// Commands (and TRTC events, `trtc.{EventGroupId}.{EventType}`, and CSS events,
    /// `css.{name}`) to send [default: every documented sample].
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RespondArgs {
    #[command(flatten)]
    pub bus: BusArgs,
    /// Decision to give: allow, deny or a numeric ErrorCode.
    #[arg(long, env = "HOOKBUS_RESPOND_DECISION", default_value = "allow", value_parser = parse_decision)]
    pub decision: i64,
    /// Wait this long before answering (to try the deadline).
    #[arg(long, env = "HOOKBUS_RESPOND_DELAY", default_value = "0ms", value_parser = parse_duration)]
    pub delay: Duration,
    /// Decide by these rules first (the `when = "always"` ones; the same file format as serve's).
    #[arg(long, env = "HOOKBUS_RESPOND_RULES")]
    pub rules: Option<PathBuf>,
    /// Threads that answer requests (default: one per core). One costs the least CPU per
    /// decision; more keep the tail latency lower when a thread is held up.
    #[arg(long, env = "HOOKBUS_RESPOND_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// `hookbus serve` with `flags`, parsed as the binary parses them (for tests and embedders).
pub fn serve_flags(flags: &[&str]) -> Result<ServeArgs, clap::Error> {
    let argv = ["hookbus", "serve"].into_iter().chain(flags.iter().copied());
    match Cli::try_parse_from(argv)?.command {
        Command::Serve(args) => Ok(args),
        _ => unreachable!("parsed as serve"),
    }
}

pub fn parse_since(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    let ago =
        humantime::parse_duration(text).map_err(|_| format!("{text:?} is neither an RFC 3339 time nor a duration"))?;
    Ok(std::time::SystemTime::now() - ago)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (write e.g. 1500ms or 2s)"))
}

fn parse_body_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text.parse().map_err(|error| format!("{error}"))?;
    match bytes {
        1..=MAX_BODY_BYTES => Ok(bytes),
        _ => Err(format!("between 1 and {MAX_BODY_BYTES} bytes")),
    }
}

/// The largest `--max-body-bytes`.
const MAX_BODY_BYTES: usize = 16 << 20;

fn parse_linger(text: &str) -> Result<Duration, String> {
    let linger = parse_duration(text)?;
    if linger > Duration::from_secs(1) {
        return Err("at most 1s: every event's delivery waits this long when callbacks are few".into());
    }
    Ok(linger)
}

fn parse_decision_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout >= tencent::TIMEOUT {
        return Err("must be under 2s: Tencent gives up on a blocking callback at 2s".into());
    }
    if timeout.is_zero() {
        return Err("must be above zero".into());
    }
    Ok(timeout)
}

fn parse_max_reply_bytes(text: &str) -> Result<usize, String> {
    const SMALLEST: usize = 64;
    match text.parse::<usize>() {
        Ok(bytes) if bytes >= SMALLEST => Ok(bytes),
        _ => Err(format!("write a number of bytes, at least {SMALLEST} (a reply with a short ErrorInfo)")),
    }
}

fn parse_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err("must start with /".into());
    }
    if RESERVED_PATHS.contains(&text) {
        return Err(format!("{text} is reserved"));
    }
    Ok(text.to_owned())
}

fn parse_prefix(text: &str) -> Result<String, String> {
    if bus::valid_name(text) {
        Ok(text.to_owned())
    } else {
        Err("use letters, digits, '.', '_' and '-', not starting or ending with '.'".into())
    }
}

fn parse_blocking(text: &str) -> Result<(String, Option<Fallback>), String> {
    let (command, fallback) = match text.split_once('=') {
        Some((command, fallback)) => (command, Some(fallback.parse()?)),
        None => (text, None),
    };
    if !bus::valid_name(command) {
        return Err(format!("{command}: a command is letters, digits, '.', '_' and '-'"));
    }
    Ok((command.to_owned(), fallback))
}

fn parse_instance_id(text: &str) -> Result<String, String> {
    if bus::valid_name(text) {
        Ok(text.to_owned())
    } else {
        Err("use letters, digits, '.', '_' and '-' (it names a Kafka topic)".into())
    }
}

fn parse_amqp_url(text: &str) -> Result<String, String> {
    bus::amqp::check_url(text).map(|()| text.to_owned())
}

fn parse_brokers(text: &str) -> Result<String, String> {
    let valid = |broker: &str| {
        broker.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    };
    if text.split(',').all(|broker| valid(broker.trim())) {
        Ok(text.to_owned())
    } else {
        Err("write host:port, comma-separated".into())
    }
}

fn fallback() -> impl TypedValueParser<Value = Fallback> {
    PossibleValuesParser::new(["allow", "deny"]).map(|text| text.parse().expect("a possible value"))
}

fn queue_type() -> impl TypedValueParser<Value = bus::amqp::QueueType> {
    PossibleValuesParser::new(["classic", "quorum"]).map(|text| match text.as_str() {
        "quorum" => bus::amqp::QueueType::Quorum,
        _ => bus::amqp::QueueType::Classic,
    })
}

fn parse_decision(text: &str) -> Result<i64, String> {
    match text {
        "allow" => Ok(0),
        "deny" => Ok(1),
        code => code.parse().map_err(|_| "write allow, deny or a numeric ErrorCode".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        serve_flags(args)
    }

    #[test]
    fn bus_urls_are_seed_lists() {
        let args = serve(&["--nats-url", "nats://a:4222,nats://b:4222", "--amqp-url", "amqp://a/%2f,amqp://b/%2f"]);
        let args = args.unwrap();
        assert_eq!(args.bus.nats_url, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(args.bus.amqp_url, ["amqp://a/%2f", "amqp://b/%2f"]);
        assert!(serve(&["--amqp-url", "amqp://a/%2f,http://b"]).is_err(), "each URL is checked");
    }

    #[test]
    fn defaults_serve_on_stdout() {
        let args = serve(&[]).unwrap();
        assert_eq!(args.bus.bus, BusKind::Stdout);
        assert_eq!(args.decision_timeout, Duration::from_millis(1500));
        assert_eq!(args.gift_fallback, Fallback::Deny);
        assert_eq!(args.message_fallback, Fallback::Allow);
        assert_eq!(args.listen.port(), 8080);
    }

    #[test]
    fn decision_timeout_of_two_seconds_or_more_is_refused() {
        let error = serve(&["--decision-timeout", "2s"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("under 2s"), "{error}");
        assert!(serve(&["--decision-timeout", "1999ms"]).is_ok());
    }

    #[test]
    fn replies_are_bounded_unless_told_otherwise() {
        assert_eq!(serve(&[]).unwrap().max_reply_bytes, decision::MAX_REPLY_BYTES);
        assert_eq!(serve(&["--max-reply-bytes", "4096"]).unwrap().max_reply_bytes, 4096);
        assert_eq!(serve(&["--max-reply-bytes", "63"]).unwrap_err().exit_code(), 2);
        assert!(serve(&["--max-reply-bytes", "4k"]).is_err());
    }

    #[test]
    fn the_largest_body_is_bounded_below_what_a_spool_record_holds() {
        assert_eq!(serve(&["--max-body-bytes", "16777216"]).unwrap().max_body_bytes, 16 << 20);
        for refused in ["16777217", "0", "-1", "lots"] {
            assert!(serve(&["--max-body-bytes", refused]).is_err(), "{refused}");
        }
    }

    #[test]
    fn the_publish_linger_is_bounded_and_may_be_zero() {
        assert_eq!(serve(&[]).unwrap().publish_linger, Duration::from_millis(5));
        assert_eq!(serve(&["--publish-linger", "0s"]).unwrap().publish_linger, Duration::ZERO);
        let error = serve(&["--publish-linger", "2s"]).unwrap_err();
        assert!(error.to_string().contains("at most 1s"), "{error}");
    }

    #[test]
    fn bad_durations_and_paths_are_refused() {
        assert!(serve(&["--shutdown-grace", "ten"]).is_err());
        assert!(serve(&["--path", "callback"]).is_err());
        assert!(serve(&["--path", "/metrics"]).is_err());
        assert!(serve(&["--prefix", "a b"]).is_err());
    }

    #[test]
    fn tokens_and_apps_repeat() {
        let args =
            serve(&["--token", "a", "--token", "b,c", "--token-file", "live=/x", "--app", "1:prefix=p"]).unwrap();
        assert_eq!(args.token, ["a", "b", "c"]);
        assert_eq!(args.apps().token_files, ["live=/x"]);
        assert_eq!(args.apps().apps, ["1:prefix=p"]);
    }

    #[test]
    fn threads_of_serve_and_respond() {
        let respond = |flags: &[&str]| {
            let argv = ["hookbus", "respond"].into_iter().chain(flags.iter().copied());
            Cli::try_parse_from(argv).map(|cli| match cli.command {
                Command::Respond(args) => args.threads,
                _ => unreachable!("parsed as respond"),
            })
        };
        assert_eq!((serve(&[]).unwrap().threads, respond(&[]).unwrap()), (1, None));
        assert_eq!((serve(&["--threads", "2"]).unwrap().threads, respond(&["--threads", "2"]).unwrap()), (2, Some(2)));
        assert!(serve(&["--threads", "0"]).is_err() && respond(&["--threads", "0"]).is_err());
    }

    #[test]
    fn sdk_app_ids_repeat() {
        let args = serve(&["--sdk-app-id", "1", "--sdk-app-id", "2,3"]).unwrap();
        assert_eq!(args.sdk_app_ids, ["1", "2", "3"]);
    }
}
