//! A fixed-rate load generator for latency figures: `--connections` keep-alive connections
//! share `--rate` requests per second for `--duration`. Latency is measured from each request's
//! scheduled send time whenever the generator fell behind, so a stalled server is charged for
//! the requests it delayed (no coordinated omission); on schedule, from the actual send, so the
//! timer's granularity is not. Prints one JSON line.
//!
//! `cargo run --release --example load -- --url http://127.0.0.1:8080/ --rate 20000 \
//!     --duration 10s --body bench/body-1k.json --command Live.CallbackAfterMemberStateChanged --token T`

use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[path = "latencies.rs"]
mod latencies;

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
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let uri: Uri = args.url.parse().expect("a valid --url");
    let host = format!("{}:{}", uri.host().expect("a host"), uri.port_u16().unwrap_or(80));
    let target =
        format!("{}?{}", uri.path(), hookbus::simulate::query(&args.sdk_app_id, &args.command, args.token.as_deref()));
    let body = Bytes::from(std::fs::read(&args.body).expect("a readable --body"));
    let schedule = latencies::Schedule::new(args.connections, args.rate as f64, args.duration);
    let mut tasks = Vec::new();
    for n in 0..args.connections {
        let (host, target, body) = (host.clone(), target.clone(), body.clone());
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
                }
            }
            (latencies, errors)
        }));
    }
    latencies::report(tasks, args.duration).await;
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
