//! Broker outages at the wrong moment: a gateway that starts while its broker is away serves
//! at once and delivers once the broker comes; a gateway killed during an outage and started
//! again while the broker is still away loses nothing; what no retry can fix stops start-up;
//! a spool directory serves one gateway; events lost at shutdown show in the exit code.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hyper::Method;

use crate::brokers::{collect, Backend};
use crate::support::{
    burst, eventually, metric, metrics, request, signal, spawn_binary, spawn_binary_with_logs, tempdir, unique,
    NatsServer, Proxy, APP, TOKEN,
};

macro_rules! outage_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn starts_without_its_broker_spools_and_delivers_once_it_comes() {
                start_without_broker($backend, true).await
            }
            #[tokio::test]
            async fn without_a_spool_starts_unready_until_the_broker_comes() {
                start_without_broker($backend, false).await
            }
        }
    };
}

outage_tests!(nats, Backend::Nats);
outage_tests!(amqp, Backend::Amqp);
outage_tests!(kafka, Backend::Kafka);

/// The broker is behind a proxy that refuses connections until the test lets it through.
/// (Kafka clients only bootstrap through it, then reach the broker's advertised address.)
async fn start_without_broker(backend: Backend, spooled: bool) {
    let prefix = unique("t");
    let proxy = Proxy::start(backend.upstream()).await;
    proxy.set_down(true);
    let dir = tempdir("spool");
    // With a spool, memory holds a few of the waiting events; the others wait on disk alone.
    let extra: Vec<&str> =
        if spooled { vec!["--spool-dir", dir.to_str().unwrap(), "--outbox-max-bytes", "16384"] } else { vec![] };
    let gateway = backend.gateway(&prefix, Some(proxy.addr), &extra).await;

    assert_eq!(request(gateway.addr, Method::GET, "/healthz", b"").await.0, 200);
    let (status, body) = request(gateway.addr, Method::GET, "/readyz", b"").await;
    let body = String::from_utf8_lossy(&body).into_owned();
    if spooled {
        assert_eq!((status, body.as_str()), (200, "ready (bus disconnected, spooling)\n"), "{backend:?}");
    } else {
        assert_eq!((status, body.as_str()), (503, "bus disconnected\n"), "{backend:?}");
    }
    let started = Instant::now();
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: bus disconnected", "{backend:?}: {answer}");
    assert!(took < Duration::from_millis(500), "{backend:?}: the fallback at once, not at the deadline: {took:?}");
    let accepted = burst(gateway.addr, 0..200, 4).await;
    assert_eq!(accepted.len(), 200, "{backend:?}: accepted while the broker is away");
    let text = metrics(gateway.addr).await;
    assert!(metric(&text, "hookbus_bus_connected") == 0);
    if spooled {
        let held = metric(&text, "hookbus_outbox_bytes");
        assert!(held <= 16384, "{backend:?}: memory holds what its bound allows, not all 200: {held}");
    }

    let mut watcher = backend.watch(&prefix).await;
    let attempts = metric(&metrics(gateway.addr).await, "hookbus_bus_connect_attempts_total");
    eventually("a few more reconnect attempts fail first", Duration::from_secs(15), || async {
        metric(&metrics(gateway.addr).await, "hookbus_bus_connect_attempts_total") >= attempts + 2
    })
    .await;
    let back = Instant::now();
    proxy.set_down(false);
    let first = watcher.next(Duration::from_secs(30)).await;
    let first_after = back.elapsed();
    let body: serde_json::Value = serde_json::from_slice(&first.payload).unwrap();
    let mut expected = accepted.clone();
    expected.remove(body["RoomId"].as_str().unwrap());
    let collected = collect(&mut watcher, &expected, Duration::from_secs(60)).await;
    let text = metrics(gateway.addr).await;
    assert_eq!(metric(&text, "hookbus_bus_connected"), 1, "{backend:?}");
    let attempts = metric(&text, "hookbus_bus_connect_attempts_total");
    assert!(attempts > 1, "{backend:?}: attempts are counted: {attempts}");
    let (status, _) = request(gateway.addr, Method::GET, "/readyz", b"").await;
    assert_eq!(status, 200, "{backend:?}: ready once connected");
    println!(
        "{backend:?} start without broker (spool {spooled}): accepted {}, delivered {} (distinct {}), \
         first delivery {first_after:?} after the broker became reachable, connect attempts {attempts}",
        accepted.len(),
        collected.received + 1,
        collected.seen.len() + 1,
    );
    assert_eq!(gateway.stop().await.lost, 0);
}

fn nats_flags<'a>(prefix: &'a str, url: &'a str, spool: &'a str) -> Vec<&'a str> {
    let mut flags = vec!["--bus", "nats", "--nats-url", url, "--prefix", prefix, "--sdk-app-id", APP];
    flags.extend(["--token", TOKEN, "--spool-dir", spool]);
    flags
}

// The binary is started and awaited with blocking calls: keep a worker free for the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_an_outage_and_restarted_before_the_broker_returns_loses_nothing() {
    let prefix = unique("t");
    let spool = tempdir("spool").to_str().unwrap().to_owned();
    let proxy = Proxy::start(Backend::Nats.upstream()).await;
    proxy.set_down(true);
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut watcher = Backend::Nats.watch(&prefix).await;

    let (mut first, addr) = spawn_binary(&nats_flags(&prefix, &via_proxy, &spool));
    let mut acknowledged = burst(addr, 0..1000, 4).await;
    let before = acknowledged.len();
    signal(&first, "KILL");
    first.wait().unwrap();

    let (mut second, addr) = spawn_binary(&nats_flags(&prefix, &via_proxy, &spool));
    let after = burst(addr, 1000..2000, 4).await;
    acknowledged.extend(after.iter().cloned());
    assert_eq!((before, after.len()), (1000, 1000), "every event accepted while the broker is away");
    proxy.set_down(false);
    let collected = collect(&mut watcher, &acknowledged, Duration::from_secs(60)).await;
    println!(
        "kill during an outage, restart before the broker returns: accepted {} (before the kill {before}, \
         after the restart {}), delivered {} (distinct {}), lost 0",
        acknowledged.len(),
        after.len(),
        collected.received,
        collected.seen.len()
    );
    signal(&second, "TERM");
    assert!(second.wait().unwrap().success());
}

/// Runs `hookbus serve` with `flags` until it exits; returns its exit code, how long it ran,
/// and what it logged.
fn run_to_exit(flags: &[&str]) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let deadline = started + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("hookbus serve {flags:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    (status.code(), started.elapsed(), logs)
}

#[test]
fn refused_credentials_stop_start_up_with_the_cause() {
    let amqp = format!("amqp://guest:wrong@{}/%2f", Backend::Amqp.upstream());
    let (code, took, logs) = run_to_exit(&["--bus", "amqp", "--amqp-url", &amqp]);
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("ACCESS_REFUSED"), "{logs}");
    println!("AMQP wrong password: exit {code:?} after {took:?}");

    // A NATS server of its own that wants a user and password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = NatsServer::start(port, "authorization { user: hookbus, password: right }\n");
    let nats = format!("nats://hookbus:wrong@127.0.0.1:{port}");
    let (code, took, logs) = run_to_exit(&["--bus", "nats", "--nats-url", &nats]);
    drop(server);
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("authorization violation"), "{logs}");
    println!("NATS wrong password: exit {code:?} after {took:?}");

    let (code, _, logs) = run_to_exit(&["--bus", "amqp", "--amqp-url", "ampq://x"]);
    assert_eq!(code, Some(2), "a malformed URL is a bad flag: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_spool_exits_and_the_first_is_unharmed() {
    let spool = tempdir("spool");
    let flags = ["--spool-dir", spool.to_str().unwrap()];
    let (mut first, addr) = spawn_binary(&flags);
    let (code, _, logs) = run_to_exit(&flags);
    assert_eq!(code, Some(1), "{logs}");
    assert!(logs.contains("holds this spool directory"), "{logs}");
    let query = hookbus::simulate::query(APP, "Live.CallbackAfterCreateRoom", None);
    let (status, _) = request(addr, Method::POST, &format!("/?{query}"), br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200, "the first gateway still serves");
    signal(&first, "TERM");
    assert!(first.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_at_shutdown_show_in_the_log_and_the_exit_code() {
    let proxy = Proxy::start(Backend::Nats.upstream()).await;
    proxy.set_down(true);
    let url = format!("nats://{}", proxy.addr);
    let flags = ["--bus", "nats", "--nats-url", &url, "--shutdown-grace", "300ms"];
    let (mut child, addr, logs) = spawn_binary_with_logs(&flags);
    let accepted = burst(addr, 0..5, 1).await;
    assert_eq!(accepted.len(), 5);
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "exit code 3: accepted events were lost");
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(logged.iter().any(|line| line.contains("lost=5")), "{logged:#?}");
}

#[tokio::test]
async fn two_starts_without_an_instance_id_share_one_reply_topic() {
    let prefix = unique("t");
    for _ in 0..2 {
        Backend::Kafka.gateway(&prefix, None, &[]).await.stop().await;
    }
    let brokers = crate::brokers::kafka_brokers();
    let topics = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let client: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
        let metadata = client.fetch_metadata(None, Duration::from_secs(5)).unwrap();
        metadata.topics().iter().map(|topic| topic.name().to_owned()).collect::<HashSet<_>>()
    })
    .await
    .unwrap();
    let replies: Vec<_> = topics.iter().filter(|name| name.starts_with(&format!("{prefix}.replies."))).collect();
    assert_eq!(replies.len(), 1, "{replies:?}");
}

#[tokio::test]
async fn nats_without_its_server_still_answers_decisions_at_once_after_it_returns() {
    // The reply inbox subscribed while disconnected must work once connected.
    let prefix = unique("t");
    let proxy = Proxy::start(Backend::Nats.upstream()).await;
    proxy.set_down(true);
    let _responder = Backend::Nats.responder(&prefix, 102150, Duration::ZERO).await;
    let gateway = Backend::Nats.gateway(&prefix, Some(proxy.addr), &[]).await;
    proxy.set_down(false);
    let addr = gateway.addr;
    eventually("the gateway to connect", Duration::from_secs(10), || async move {
        metric(&metrics(addr).await, "hookbus_bus_connected") == 1
    })
    .await;
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!((status, answer["ErrorCode"].as_i64()), (200, Some(102150)), "{answer}");
    gateway.stop().await;
}
