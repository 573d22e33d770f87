//! A fixed-rate load generator for latency figures: `--connections` keep-alive connections
//! share `--rate` requests per second for `--duration`. Latency is measured from each request's
//! scheduled send time whenever the generator fell behind, so a stalled server is charged for
//! the requests it delayed (no coordinated omission); on schedule, from the actual send, so the
//! timer's granularity is not. Prints one JSON line.
//!
//! With `--consume`, a consumer in this process also receives the events the requests became,
//! and the line holds the end-to-end latency too: from the request's first byte (the origin its
//! HTTP latency counts from) to the event's receipt, on the one monotonic clock of this process.
//! Events are told apart by the `Seq` field every body gets.
//!
//! `cargo run --release -p hookbus-bench --bin load -- --url http://127.0.0.1:8080/ --rate 20000 \
//!     --duration 10s --body bench/body-1k.json --command Live.CallbackAfterMemberStateChanged --token T`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use hookbus_bench::latencies;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long)]
    rate: u64,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 32)]
    connections: u64,
    /// File whose bytes are posted.
    #[arg(long)]
    body: std::path::PathBuf,
    #[arg(long)]
    command: String,
    #[arg(long, default_value = "1400000000")]
    sdk_app_id: String,
    #[arg(long)]
    token: Option<String>,
    /// Where the events arrive: `nats://HOST:PORT` subscribes to `--destination` (core and
    /// JetStream publishes alike); `amqp://…` binds a queue of its own to `--destination` on the
    /// `tencent` exchange; `kafka://HOST:PORT` reads topic `--destination` (which must exist)
    /// from its end, every partition assigned (no group to join).
    #[arg(long, requires = "destination")]
    consume: Option<String>,
    /// The NATS subject or AMQP routing key the events go to: `{prefix}.{command}`.
    #[arg(long)]
    destination: Option<String>,
}

/// Each request's origin by its `Seq` (connection << 32 | request), until its event arrives.
type Origins = Arc<Mutex<HashMap<u64, Instant>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let uri: Uri = args.url.parse().expect("a valid --url");
    let host = format!("{}:{}", uri.host().expect("a host"), uri.port_u16().unwrap_or(80));
    let target =
        format!("{}?{}", uri.path(), hookbus::simulate::query(&args.sdk_app_id, &args.command, args.token.as_deref()));
    let body = Bytes::from(std::fs::read(&args.body).expect("a readable --body"));
    let origins = Origins::default();
    let consumer = match (&args.consume, &args.destination) {
        (Some(url), Some(destination)) => Some(consume(url, destination, origins.clone()).await),
        _ => None,
    };
    let consumer_wanted = consumer.is_some();
    let schedule = latencies::Schedule::new(args.connections, args.rate as f64, args.duration);
    let mut tasks = Vec::new();
    for n in 0..args.connections {
        let (host, target, body, origins) = (host.clone(), target.clone(), body.clone(), origins.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&host).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let (mut errors, mut sent) = (0u64, 0u64);
            for scheduled in schedule.times(n) {
                let origin = latencies::on_schedule(scheduled).await;
                // Each request its own body: the same signed request twice is a replay, answered
                // from the gateway's cache without publishing.
                sent += 1;
                let body = unique_body(&body, n, sent);
                if consumer_wanted {
                    origins.lock().expect("origins").insert(n << 32 | sent, origin);
                }
                let request = Request::post(&target).header("host", &host).body(Full::new(body)).expect("request");
                let ok = match sender.send_request(request).await {
                    Ok(response) => {
                        let ok = response.status() == 200;
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(origin.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    // A refused request has no event to wait for.
                    origins.lock().expect("origins").remove(&(n << 32 | sent));
                }
            }
            (latencies, errors)
        }));
    }
    let results = latencies::joined(tasks).await;
    let end_to_end = match consumer {
        None => serde_json::Map::new(),
        Some(receipts) => end_to_end(receipts, &origins).await,
    };
    latencies::report(results, args.duration, end_to_end);
}

/// Starts consuming at `url` what is published to `destination`; each event's latency (µs from
/// its request's origin in `origins`) is sent on the channel returned.
async fn consume(url: &str, destination: &str, origins: Origins) -> tokio::sync::mpsc::UnboundedReceiver<u64> {
    let (receipts, received) = tokio::sync::mpsc::unbounded_channel();
    let receipt = move |payload: &[u8]| {
        let origin = seq(payload).and_then(|seq| origins.lock().expect("origins").remove(&seq));
        if let Some(origin) = origin {
            let _ = receipts.send(origin.elapsed().as_micros() as u64);
        }
    };
    if url.starts_with("nats://") {
        let client = async_nats::connect(url).await.expect("NATS");
        let mut subscription = client.subscribe(destination.to_owned()).await.expect("subscribe");
        // Subscribed once the server has it, not only once it left the socket.
        client.flush().await.expect("NATS flush");
        tokio::spawn(async move {
            let _client = client;
            while let Some(message) = futures_util::StreamExt::next(&mut subscription).await {
                receipt(&message.payload);
            }
        });
    } else if let Some(brokers) = url.strip_prefix("kafka://") {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::{ClientConfig, Offset, TopicPartitionList};
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "hookbus-bench-end-to-end")
            .set("enable.auto.commit", "false")
            // An idle partition's fetch returns after this long: a fetch is sent again at once.
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("Kafka consumer");
        let metadata = consumer.fetch_metadata(Some(destination), Duration::from_secs(10)).expect("Kafka metadata");
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics().iter().flat_map(|topic| topic.partitions()) {
            partitions.add_partition_offset(destination, partition.id(), Offset::End).expect("partition");
        }
        assert!(partitions.count() > 0, "topic {destination} does not exist yet");
        consumer.assign(&partitions).expect("assign");
        // Until every partition's end is looked up, a new event could be read past.
        tokio::time::sleep(Duration::from_secs(1)).await;
        tokio::spawn(async move {
            while let Ok(message) = consumer.recv().await {
                receipt(rdkafka::Message::payload(&message).unwrap_or_default());
            }
        });
    } else {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let connection = lapin::Connection::connect(url, Default::default()).await.expect("RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        let queue = channel.queue_declare("".into(), options, FieldTable::default()).await.expect("queue");
        channel
            .queue_bind(
                queue.name().clone(),
                "tencent".into(),
                destination.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
        let options = BasicConsumeOptions { no_ack: true, ..Default::default() };
        let mut consumer = channel
            .basic_consume(queue.name().clone(), "".into(), options, FieldTable::default())
            .await
            .expect("consume");
        tokio::spawn(async move {
            let _connection = connection;
            while let Some(Ok(delivery)) = futures_util::StreamExt::next(&mut consumer).await {
                receipt(&delivery.data);
            }
        });
    }
    received
}

/// The end-to-end figures once the requests are done: waits up to 10 s for the events still on
/// their way (a spool or a slow broker may hold some), then p50, p99 and p99.9 in ms and how many
/// events of answered requests never arrived.
async fn end_to_end(
    mut receipts: tokio::sync::mpsc::UnboundedReceiver<u64>,
    origins: &Origins,
) -> serde_json::Map<String, serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !origins.lock().expect("origins").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut latencies = Vec::new();
    while let Ok(latency) = receipts.try_recv() {
        latencies.push(latency);
    }
    let missing = origins.lock().expect("origins").len();
    let (p50, p99, p999) = latencies::quantiles(&mut latencies);
    serde_json::json!({
        "e2e_received": latencies.len(),
        "e2e_missing": missing,
        "e2e_p50_ms": p50,
        "e2e_p99_ms": p99,
        "e2e_p999_ms": p999,
    })
    .as_object()
    .expect("an object")
    .clone()
}

/// The `Seq` that [`unique_body`] put first in `payload`, as `connection << 32 | request`.
fn seq(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"{\"Seq\":\"")?;
    let text = std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b'"')?]).ok()?;
    let (connection, request) = text.split_once('-')?;
    Some(connection.parse::<u64>().ok()? << 32 | request.parse::<u64>().ok()?)
}

/// `body` with a `"Seq"` field first, unique to this connection and request.
fn unique_body(body: &[u8], connection: u64, sent: u64) -> Bytes {
    let at = body.iter().position(|&b| b == b'{').map_or(0, |at| at + 1);
    let mut unique = Vec::with_capacity(body.len() + 24);
    unique.extend_from_slice(&body[..at]);
    unique.extend_from_slice(format!("\"Seq\":\"{connection}-{sent}\",").as_bytes());
    unique.extend_from_slice(&body[at..]);
    Bytes::from(unique)
}
