//! Broker chores for `bench/run.sh`, with the clients hookbus already builds:
//! `admin amqp-sink URL EXCHANGE ROUTING_KEY` binds a bounded queue (the newest 10000 kept) so
//! events are routable; `admin jetstream-delete URL STREAM` removes a benchmark stream.

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["amqp-sink", url, exchange, key] => {
            let connection = lapin::Connection::connect(url, Default::default()).await.expect("RabbitMQ");
            let channel = connection.create_channel().await.expect("channel");
            let options = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
            channel
                .exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, options, FieldTable::default())
                .await
                .expect("exchange");
            let mut arguments = FieldTable::default();
            arguments.insert("x-max-length".into(), AMQPValue::LongInt(10_000));
            let queue = format!("bench.sink.{key}");
            channel
                .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), arguments)
                .await
                .expect("queue");
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
        }
        ["jetstream-delete", url, stream] => {
            let client = async_nats::connect(url).await.expect("NATS");
            let _ = async_nats::jetstream::new(client).delete_stream(stream).await;
        }
        _ => {
            eprintln!("usage: admin amqp-sink URL EXCHANGE KEY | admin jetstream-delete URL STREAM");
            std::process::exit(2);
        }
    }
}
