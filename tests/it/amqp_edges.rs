//! RabbitMQ at its edges, with pika (the Python client) playing the third party: replies the
//! client cannot read cost the reply connection only, one refused routing key does not
//! multiply the others' events, a publish refused by permissions shows in readiness, metrics
//! and the log, and no line of the client's own carries an event's body.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::Method;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use crate::brokers::{amqp_url, Backend};
use crate::support::*;

/// Answers gift requests under `argv[3]` on exchange `argv[2]`, as a responder would, first with
/// a poisoned reply for rooms `utf8` (a correlation id that is not UTF-8: AMQP short strings
/// must be) and `big` (42 KB of headers, larger than the gateway's 32 KiB frames), then half a
/// second later with the real one.
const RESPONDER: &str = r#"
import json, sys, time, pika
url, exchange, key = sys.argv[1:4]
channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
queue = channel.queue_declare("", exclusive=True).method.queue
channel.queue_bind(queue, exchange, key)
def on_request(channel, method, props, body):
    room = json.loads(body)["RoomId"]
    poison = {
        "utf8": pika.BasicProperties(correlation_id=b"\xff\n\x1b[31m"),
        "big": pika.BasicProperties(correlation_id=props.correlation_id, headers={"pad": "x" * 42000}),
    }.get(room)
    if poison is not None:
        channel.basic_publish("", props.reply_to, b'{"ErrorCode":0,"ErrorInfo":"poison"}', poison)
        time.sleep(0.5)
    reply = json.dumps({"ErrorCode": 102199, "ErrorInfo": "pika " + room}).encode()
    channel.basic_publish("", props.reply_to, reply, pika.BasicProperties(correlation_id=props.correlation_id))
channel.basic_consume(queue, on_request, auto_ack=True)
print("ready", flush=True)
channel.start_consuming()
"#;

/// Takes every message of queue `argv[2]`; prints how many, and how many distinct message ids.
const COUNTER: &str = r#"
import json, sys, pika
url, queue = sys.argv[1:3]
channel = pika.BlockingConnection(pika.URLParameters(url)).channel()
ids = []
while True:
    method, props, body = channel.basic_get(queue, auto_ack=True)
    if method is None:
        break
    ids.append(props.message_id)
print(json.dumps({"copies": len(ids), "distinct": len(set(ids))}))
"#;

/// A Python script of this file, killed when dropped.
struct Python(Child);

impl Python {
    /// Starts `script` with `args` and waits for its first line of output.
    fn start(script: &str, args: &[&str]) -> (Python, String) {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs (pika: scripts/services.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the script answers");
        (Python(child), line)
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rabbitmqctl(args: &[&str]) {
    let output = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A RabbitMQ user of the test's own, deleted when dropped, whether the test passed or not.
struct User(String);

impl User {
    fn add(password: &str) -> User {
        let user = User(unique("hookbus-ro"));
        rabbitmqctl(&["add_user", &user.0, password]);
        user
    }

    /// Sets what the user may configure, write and read, as regular expressions.
    fn permit(&self, configure: &str, write: &str, read: &str) {
        rabbitmqctl(&["set_permissions", "-p", "/", &self.0, configure, write, read]);
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["delete_user", &self.0]).output();
    }
}

/// Deletes what a test declared on the broker.
async fn delete(exchanges: &[&str], queues: &[&str]) {
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in queues {
        channel.queue_delete((*queue).into(), QueueDeleteOptions::default()).await.unwrap();
    }
    for exchange in exchanges {
        channel.exchange_delete((*exchange).into(), Default::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_the_client_cannot_read_costs_the_reply_connection_never_the_link() {
    let prefix = unique("t");
    let key = hookbus::bus::request_destination(&prefix, "Live.CallbackBeforeSendGift");
    let (_responder, _) = Python::start(RESPONDER, &[&amqp_url(), "tencent", &key]);
    let gateway = Backend::Amqp.gateway(&prefix, None, &["--decision-timeout", "1900ms"]).await;
    let addr = gateway.addr;
    for (n, room) in ["utf8", "big"].into_iter().enumerate() {
        let body = json!({"RoomId": room}).to_string();
        let (_, answer) = gateway.post("Live.CallbackBeforeSendGift", body.as_bytes()).await;
        // The poisoned reply went with the reply connection; the real one waited in the queue.
        assert_eq!(answer["ErrorInfo"], format!("pika {room}"), "{room}: {answer}");
        let text = metrics(addr).await;
        assert_eq!(metric(&text, "hookbus_unreadable_replies_total"), n as u64 + 1, "{room}: counted");
        assert_eq!(metric(&text, "hookbus_bus_connect_attempts_total"), 1, "{room}: the link was never rebuilt");
        assert_eq!(metric(&text, "hookbus_bus_connected"), 1);
        let body = json!({"RoomId": "e", "Seq": n}).to_string();
        let (status, _) = gateway.post("Live.CallbackAfterCreateRoom", body.as_bytes()).await;
        assert_eq!(status, 200);
    }
    // Nobody is bound for the events: the broker returned both, which shows it took them.
    eventually("both events to be published", Duration::from_secs(5), || async move {
        metric(&metrics(addr).await, "hookbus_publishes_unroutable_total") == 2
    })
    .await;
    let (_, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"plain"}"#).await;
    assert_eq!(answer["ErrorInfo"], "pika plain");
    assert_eq!(gateway.stop().await.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_routing_key_does_not_multiply_the_other_keys_events() {
    let prefix = unique("t");
    let connection = lapin::Connection::connect(&amqp_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // Takes one message and refuses the rest: a nack for each later event of its key.
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongInt(1));
    full.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    let queues = [
        (format!("{prefix}.full"), "Live.CallbackAfterDismissRoom", full),
        (format!("{prefix}.rooms"), "Live.CallbackAfterCreateRoom", FieldTable::default()),
        (format!("{prefix}.members"), "Live.CallbackAfterEnterRoom", FieldTable::default()),
    ];
    for (queue, command, arguments) in &queues {
        let options = QueueDeclareOptions::default();
        channel.queue_declare(queue.as_str().into(), options, arguments.clone()).await.unwrap();
        let key = format!("{prefix}.{command}");
        let bind = QueueBindOptions::default();
        channel
            .queue_bind(queue.as_str().into(), "tencent".into(), key.into(), bind, FieldTable::default())
            .await
            .unwrap();
    }
    // Interleaved and at once, gathered into one batch by the linger: the refused key's events
    // among the others' (a batch of refused events alone would be taken for a stale channel).
    let gateway = Backend::Amqp.gateway(&prefix, None, &["--publish-linger", "1s"]).await;
    let posts = (0..150).map(|n| {
        let (_, command, _) = &queues[n % 3];
        let body = json!({"RoomId": format!("r{}", n % 7), "Seq": n}).to_string();
        let target = signed(command);
        async move { request(gateway.addr, Method::POST, &target, body.as_bytes()).await.0 }
    });
    let statuses = futures_util::future::join_all(posts).await;
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let addr = gateway.addr;
    eventually("every event settled", Duration::from_secs(30), || async move {
        let text = metrics(addr).await;
        metric(&text, "hookbus_outbox_depth") == 0 && metric(&text, "hookbus_dead_letters") == 49
    })
    .await;
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "hookbus_publishes_confirmed_total"), 101, "the 100 others and the one that fit");
    let retried = metric(&text, "hookbus_publishes_retried_total");
    let counted: Vec<serde_json::Value> = queues[1..]
        .iter()
        .map(|(queue, _, _)| serde_json::from_str(&Python::start(COUNTER, &[&amqp_url(), queue]).1).unwrap())
        .collect();
    println!("publishes_retried_total {retried} for 150 events, 49 refused; the other queues: {counted:?}");
    for counted in counted {
        assert_eq!(counted, json!({"copies": 50, "distinct": 50}), "exactly one copy of each");
    }
    // Each refused event is sent three times (nacked thrice, then a dead letter), nothing else.
    assert_eq!(retried, 49 * 2, "only the nacked events were sent again");
    gateway.stop().await;
    for (queue, _, _) in &queues {
        channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    }
}

/// `hookbus serve` with `flags` on a port chosen here, its stderr written to `log`.
fn serve(flags: &[&str], log: &Path) -> (Child, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["serve", "--listen", &addr.to_string(), "--sdk-app-id", APP, "--token", TOKEN])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("the binary starts");
    (child, addr)
}

async fn listening(addr: std::net::SocketAddr) {
    eventually("the gateway to listen", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_by_permissions_shows_in_readiness_metrics_and_log() {
    let user = User::add("secret");
    let exchange = unique("x");
    let url = format!("amqp://{}:secret@127.0.0.1:5672/%2f", user.0);
    let dir = tempdir("refused");
    let log = dir.join("stderr.log");

    // May not declare the exchange: start-up stops, and says the spool keeps its events.
    user.permit("^$", "^$", ".*");
    let spool = dir.join("spool");
    let flags = ["--bus", "amqp", "--amqp-url", &url, "--amqp-exchange", &exchange, "--amqp-unrouted", "drop"];
    let spool_flags = [&flags[..], &["--spool-dir", spool.to_str().unwrap()]].concat();
    let (mut child, _) = serve(&spool_flags, &log);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("RabbitMQ refused: declare exchange"), "{stderr}");
    assert!(stderr.contains("keeps its events for the next start"), "{stderr}");

    // May declare, not write: every publish refused.
    user.permit(".*", "^$", ".*");
    let (mut child, addr) = serve(&flags, &log);
    listening(addr).await;
    let started = Instant::now();
    let (status, _) = request(addr, Method::POST, &signed("Live.CallbackAfterCreateRoom"), br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200, "accepted into the outbox");
    eventually("the refusal to show", Duration::from_secs(10), || async move {
        let text = metrics(addr).await;
        text.contains("hookbus_bus_refused{reason=\"access_refused\"} 1") && metric(&text, "hookbus_bus_connected") == 0
    })
    .await;
    let (status, body) = request(addr, Method::GET, "/readyz", b"").await;
    assert_eq!((status, &body[..]), (503, &b"bus refuses publishes\n"[..]));
    // Several retries go by (backoff 50 ms, doubling).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused_for = started.elapsed().as_secs() + 1;
    let text = metrics(addr).await;
    assert_eq!(metric(&text, "hookbus_outbox_depth"), 1, "the event waits");
    let attempts = metric(&text, "hookbus_bus_connect_attempts_total");
    assert!(attempts <= 2, "the channel is opened again, not the link: {attempts} connects");

    // Granted: back to normal once a publish is confirmed.
    user.permit(".*", ".*", ".*");
    eventually("the event to be confirmed", Duration::from_secs(15), || async move {
        let text = metrics(addr).await;
        metric(&text, "hookbus_publishes_unroutable_total") == 1
            && text.contains("hookbus_bus_refused 0")
            && metric(&text, "hookbus_bus_connected") == 1
    })
    .await;
    let (status, _) = request(addr, Method::GET, "/readyz", b"").await;
    assert_eq!(status, 200);
    signal(&child, "TERM");
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    let errors = stderr.lines().filter(|line| line.contains("ERROR") && line.contains("refuses publishes")).count();
    assert!(errors >= 1 && errors as u64 <= refused_for, "{errors} ERROR lines in {refused_for} s:\n{stderr}");
    assert!(stderr.contains("confirms publishes again"), "{stderr}");
    drop(user);
    delete(&[&exchange], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_left_to_publish_a_refusal_does_not_keep_the_gateway_unready() {
    let user = User::add("secret");
    user.permit(".*", "^$", ".*");
    let exchange = unique("x");
    let url = format!("amqp://{}:secret@127.0.0.1:5672/%2f", user.0);
    let log = tempdir("refused-dead").join("stderr.log");
    let flags = ["--bus", "amqp", "--amqp-url", &url, "--amqp-exchange", &exchange, "--amqp-unrouted", "drop"];
    let (mut child, addr) = serve(&[&flags[..], &["--dead-letter-after", "2"]].concat(), &log);
    listening(addr).await;
    let (status, _) = request(addr, Method::POST, &signed("Live.CallbackAfterCreateRoom"), br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200);
    eventually("the refused event to be a dead letter", Duration::from_secs(10), || async move {
        let text = metrics(addr).await;
        metric(&text, "hookbus_dead_letters") == 1 && text.contains("hookbus_bus_refused{reason=\"access_refused\"} 1")
    })
    .await;
    let refused = Instant::now();
    // Nothing is tried any more, so nothing renews the refusal: ready again after its hold
    // (10 s), for the next callback to try.
    eventually("readiness to come back", Duration::from_secs(15), || async move {
        request(addr, Method::GET, "/readyz", b"").await.0 == 200
    })
    .await;
    assert!(refused.elapsed() > Duration::from_secs(5), "held a while: {:?}", refused.elapsed());
    assert!(metrics(addr).await.contains("hookbus_bus_refused 0"));
    signal(&child, "TERM");
    child.wait().unwrap();
    drop(user);
    delete(&[&exchange], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returned_events_leave_no_body_in_the_log_and_a_new_exchange_no_error() {
    let exchange = unique("x");
    let dir = tempdir("returned");
    let log = dir.join("stderr.log");
    let flags = ["--bus", "amqp", "--amqp-url", &amqp_url(), "--amqp-exchange", &exchange, "--amqp-unrouted", "drop"];
    let (mut child, addr) = serve(&flags, &log);
    listening(addr).await;
    for n in 0..20 {
        let body = json!({"RoomId": "r", "Seq": n, "Pad": "7".repeat(56_000)}).to_string();
        let (status, _) = request(addr, Method::POST, &signed("Live.CallbackAfterCreateRoom"), body.as_bytes()).await;
        assert_eq!(status, 200);
    }
    eventually("every event returned", Duration::from_secs(10), || async move {
        metric(&metrics(addr).await, "hookbus_publishes_unroutable_total") == 20
    })
    .await;
    signal(&child, "TERM");
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    println!("log of 20 returned 56 KB events: {} bytes", stderr.len());
    assert!(stderr.len() < 20_000, "{} bytes of log", stderr.len());
    assert!(!stderr.contains("55, 55, 55"), "no body in the log");
    let errors: Vec<&str> =
        stderr.lines().filter(|line| line.contains("ERROR") && !line.contains("unroutable")).collect();
    assert!(errors.is_empty(), "no ERROR line but the gateway's own about unroutable events: {errors:#?}");
    delete(&[&exchange], &[]).await;
}
