//! Broker chores for `bench/run.sh`, with the clients hookbus already builds:
//! `admin amqp-sink URL EXCHANGE ROUTING_KEY` binds a bounded durable queue (the newest 10000
//! kept, empty at each call) so events are routable; `admin jetstream-delete URL STREAM` removes
//! a benchmark stream; `admin amqp-flood URL EXCHANGE ROUTING_KEY SECONDS BODY_FILE` is the bare
//! RabbitMQ client the gateway is compared with: it publishes the body as fast as it can for
//! SECONDS with the gateway's settings (persistent, `mandatory`, publisher confirms, at most 512
//! unconfirmed) and prints one JSON line with the confirmed messages per second;
//! `admin nats-requests URL SUBJECT RATE SECONDS BODY_FILE` is the bare NATS requester the
//! gateway's decisions are compared with: 32 concurrent requesters share RATE requests per second
//! to SUBJECT (a `hookbus respond` answers them), timed as `bench/load.rs` times its requests, and
//! it prints one JSON line with the p50, p99 and p99.9 round trip.
//!
//! The ledger of a run, what reached the bus counted at a consumer or in the broker:
//! `admin nats-count URL SUBJECT FILE` counts the messages on SUBJECT (wildcards allowed) and
//! writes the count so far to FILE every 100 ms until killed; `admin jetstream-count URL STREAM`
//! prints the stream's message count; `admin amqp-count URL QUEUE` the queue's; `admin
//! kafka-count BROKERS TOPIC` the sum of the topic's high watermarks (made first when missing,
//! one partition) once an empty marker record was written (each count adds one). `amqp-sink` takes the queue's bound as a fifth argument (default 10000).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};

use hookbus_bench::latencies;

/// Publishes in flight at most, as the gateway's outbox hands the bus (src/outbox.rs).
const WINDOW: usize = 512;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["amqp-sink", url, exchange, key] => sink(url, exchange, key, 10_000).await,
        ["amqp-sink", url, exchange, key, bound] => sink(url, exchange, key, bound.parse().expect("a bound")).await,
        ["amqp-count", url, queue] => println!("{}", amqp_count(url, queue).await),
        ["nats-count", url, subject, file] => nats_count(url, subject, file).await,
        ["jetstream-count", url, stream] => {
            let client = async_nats::connect(url).await.expect("NATS");
            let mut stream = async_nats::jetstream::new(client).get_stream(stream).await.expect("the stream");
            println!("{}", stream.info().await.expect("the stream's state").state.messages);
        }
        ["kafka-count", brokers, topic] => println!("{}", kafka_count(brokers, topic).await),
        ["amqp-flood", url, exchange, key, seconds, body] => {
            let seconds = seconds.parse().expect("SECONDS, a number");
            let body = std::fs::read(body).expect("a readable BODY_FILE");
            flood(url, exchange, key, Duration::from_secs_f64(seconds), &body).await;
        }
        ["nats-requests", url, subject, rate, seconds, body] => {
            let rate: f64 = rate.parse().expect("RATE, a number");
            let seconds = Duration::from_secs_f64(seconds.parse().expect("SECONDS, a number"));
            let body = std::fs::read(body).expect("a readable BODY_FILE");
            requests(url, subject, rate, seconds, body.into()).await;
        }
        ["jetstream-delete", url, stream] => {
            let client = async_nats::connect(url).await.expect("NATS");
            let _ = async_nats::jetstream::new(client).delete_stream(stream).await;
        }
        _ => {
            eprintln!(
                "usage: admin amqp-sink URL EXCHANGE KEY [BOUND] | admin jetstream-delete URL STREAM \
                 | admin amqp-count URL QUEUE | admin nats-count URL SUBJECT FILE \
                 | admin jetstream-count URL STREAM | admin kafka-count BROKERS TOPIC \
                 | admin amqp-flood URL EXCHANGE KEY SECONDS BODY_FILE \
                 | admin nats-requests URL SUBJECT RATE SECONDS BODY_FILE"
            );
            std::process::exit(2);
        }
    }
}

/// Declares the durable topic exchange and binds `bench.sink.{key}` to it: durable, as a
/// persistent message is only written to disk in a durable queue, and bounded (`bound`), so that a long
/// run does not fill the disk. Deleted first, so every measurement starts from an empty queue
/// (and a transient queue of that name left by an earlier run is replaced).
async fn sink(url: &str, exchange: &str, key: &str, bound: i32) {
    let connection = lapin::Connection::connect(url, Default::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, options, FieldTable::default())
        .await
        .expect("exchange");
    let queue = format!("bench.sink.{key}");
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.expect("delete queue");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(bound));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, arguments).await.expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let _ = connection.close(200, "done".into()).await;
}

/// The messages ready in `queue` (declared passively: it must exist).
async fn amqp_count(url: &str, queue: &str) -> u32 {
    let connection = lapin::Connection::connect(url, Default::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    let options = QueueDeclareOptions { passive: true, ..Default::default() };
    let declared = channel.queue_declare(queue.into(), options, FieldTable::default()).await.expect("the queue");
    let _ = connection.close(200, "done".into()).await;
    declared.message_count()
}

/// Counts the messages on `subject` and writes the count so far to `file` every 100 ms, until
/// the process is killed. The subscription is in place once the file first holds 0.
async fn nats_count(url: &str, subject: &str, file: &str) {
    let client = async_nats::connect(url).await.expect("NATS");
    let mut messages = client.subscribe(subject.to_owned()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let write = |count: u64| std::fs::write(file, format!("{count}\n")).expect("the count file");
    write(0);
    let (mut count, mut tick) = (0u64, tokio::time::interval(Duration::from_millis(100)));
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(_) => count += 1,
                None => panic!("the subscription ended"),
            },
            _ = tick.tick() => write(count),
        }
    }
}

/// The sum of `topic`'s high watermarks: every message it ever took. The topic is made first
/// when missing (one partition), so that a publisher's first message does not wait for it.
async fn kafka_count(brokers: &str, topic: &str) -> i64 {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = config.create().expect("a Kafka admin client");
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    // An existing topic answers "already exists": what is wanted.
    let _ = admin.create_topics([&new], &AdminOptions::new()).await;
    // tansu's high watermark leaves out the newest records until more come: one more (a marker,
    // empty) brings everything before it in. Each count so adds one record, counted by the next.
    let producer: rdkafka::producer::FutureProducer = config.create().expect("a Kafka producer");
    let marker = rdkafka::producer::FutureRecord::<(), [u8]>::to(topic).payload(&[]);
    producer.send(marker, Duration::from_secs(10)).await.map_err(|(error, _)| error).expect("the marker");
    let consumer: BaseConsumer = config.create().expect("a Kafka consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).expect("the topic's metadata");
    let partitions = metadata.topics().first().map(|topic| topic.partitions().len()).unwrap_or(0);
    (0..partitions as i32)
        .map(|partition| consumer.fetch_watermarks(topic, partition, timeout).expect("watermarks").1)
        .sum()
}

/// Keeps [`WINDOW`] publishes unconfirmed for `duration`, refilling the window as each confirm
/// comes, then waits for the last confirms. Only plain acks count: a returned (unroutable) or
/// nacked message is counted apart. The CPU ticks (utime + stime of the whole process, as
/// `/proc/PID/stat` gives them) cover the publishing only, not the connect.
async fn flood(url: &str, exchange: &str, key: &str, duration: Duration, body: &[u8]) {
    let connection = lapin::Connection::connect(url, Default::default()).await.expect("RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
    let ticks = cpu_ticks();
    let start = Instant::now();
    let end = start + duration;
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut confirmed, mut returned, mut nacked) = (0u64, 0u64, 0u64, 0u64);
    loop {
        if in_flight.len() < WINDOW && Instant::now() < end {
            sent += 1;
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let confirm = channel
                .basic_publish(exchange.into(), key.into(), options, body, properties(sent))
                .await
                .expect("publish");
            in_flight.push(confirm);
            continue;
        }
        match in_flight.next().await {
            Some(Ok(Confirmation::Ack(None))) => confirmed += 1,
            Some(Ok(Confirmation::Ack(Some(_)))) => returned += 1,
            Some(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => nacked += 1,
            Some(Err(error)) => panic!("confirm: {error}"),
            None => break,
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks() - ticks;
    let _ = connection.close(200, "done".into()).await;
    println!(
        "{}",
        serde_json::json!({
            "sent": sent,
            "confirmed": confirmed,
            "returned": returned,
            "nacked": nacked,
            "seconds": (elapsed * 1000.0).round() / 1000.0,
            "rate": (confirmed as f64 / elapsed).round(),
            "cpu_ticks": ticks,
        })
    );
}

/// Requests at a fixed rate over one connection, as the gateway sends decisions, timed as
/// `bench/load.rs` times its requests.
async fn requests(url: &str, subject: &str, rate: f64, duration: Duration, body: bytes::Bytes) {
    const REQUESTERS: u64 = 32;
    let client = async_nats::ConnectOptions::new().request_timeout(None).connect(url).await.expect("NATS");
    let schedule = latencies::Schedule::new(REQUESTERS, rate, duration);
    let tasks: Vec<_> = (0..REQUESTERS)
        .map(|n| {
            let (client, subject, body) = (client.clone(), subject.to_owned(), body.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                for scheduled in schedule.times(n) {
                    let origin = latencies::on_schedule(scheduled).await;
                    match client.request(subject.clone(), body.clone()).await {
                        Ok(_) => latencies.push(origin.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    latencies::report(latencies::joined(tasks).await, duration, serde_json::Map::new());
}

/// Properties shaped like the gateway's (src/bus/amqp.rs): persistent, with a message id, a
/// type, a timestamp and the CloudEvents headers, so that the broker stores and parses as much
/// per message as it does for the gateway.
fn properties(n: u64) -> BasicProperties {
    let id = format!("bench-flood-{n:016}");
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents:id", id.as_str()),
        ("cloudEvents:type", "Live.CallbackAfterMemberStateChanged"),
        ("cloudEvents:source", "/tencent/1400000000"),
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:time", "2026-01-01T00:00:00.000Z"),
        ("cloudEvents:datacontenttype", "application/json"),
        ("cloudEvents:sdkappid", "1400000000"),
        ("cloudEvents:clientip", "127.0.0.1"),
        ("cloudEvents:optplatform", "RESTAPI"),
        ("cloudEvents:traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("hookbus-unrouted", "keep"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let seconds = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(id.as_str().into())
        .with_timestamp(seconds)
        .with_type("Live.CallbackAfterMemberStateChanged".into())
        .with_headers(headers)
}

/// This process's utime + stime so far, in clock ticks (fields 14 and 15 of `/proc/self/stat`).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The command name, in parentheses, may hold spaces: count the fields after it (from the 3rd).
    let fields = &stat[stat.rfind(')').expect("a command name") + 2..];
    fields.split(' ').skip(11).take(2).map(|field| field.parse::<u64>().expect("clock ticks")).sum()
}
