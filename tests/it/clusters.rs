//! Broker clusters on this machine (`scripts/clusters.sh`: 3 NATS servers with JetStream, 3
//! RabbitMQ nodes): seed lists, node and leader kills under a stream of signed callbacks, and
//! one id per callback across gateways. One test at a time kills nodes, and each starts by
//! bringing back whatever an earlier one killed. They run only when `HOOKBUS_TEST_CLUSTERS` is
//! set (`scripts/test.sh` sets it); otherwise each says it is skipped and passes.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::Method;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::support::{eventually, metric, metrics, request, signed, tempdir, unique, Client, Running, APP, TOKEN};

/// Node kills are serialised: two tests killing nodes at once would take a cluster's quorum.
static CLUSTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NATS: [&str; 3] = ["nats://127.0.0.1:4301", "nats://127.0.0.1:4302", "nats://127.0.0.1:4303"];
const AMQP: [&str; 3] = [
    "amqp://guest:guest@127.0.0.1:5701/%2f",
    "amqp://guest:guest@127.0.0.1:5702/%2f",
    "amqp://guest:guest@127.0.0.1:5703/%2f",
];
const COMMAND: &str = "Live.CallbackAfterMemberStateChanged";

/// A gateway's flags on a cluster: its bus on a seed list, then whatever the test adds.
#[derive(Clone)]
struct Flags(Vec<String>);

impl Flags {
    /// On the NATS cluster with JetStream, creating stream `stream` with three replicas.
    fn nats_stream(stream: &str) -> Flags {
        let urls = NATS.join(",");
        Flags(Vec::new()).and(&[
            "--bus",
            "nats",
            "--nats-url",
            &urls,
            "--nats-jetstream",
            "--nats-create-stream",
            stream,
            "--nats-stream-replicas",
            "3",
        ])
    }

    /// On the RabbitMQ nodes `urls`, publishing to `exchange`.
    fn amqp(urls: &[&str], exchange: &str) -> Flags {
        Flags(Vec::new()).and(&["--bus", "amqp", "--amqp-url", &urls.join(","), "--amqp-exchange", exchange])
    }

    /// Under `prefix`, for the test app and its token.
    fn signed(self, prefix: &str) -> Flags {
        self.and(&["--prefix", prefix, "--sdk-app-id", APP, "--token", TOKEN])
    }

    fn and(mut self, more: &[&str]) -> Flags {
        self.0.extend(more.iter().map(|flag| flag.to_string()));
        self
    }

    fn args(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

fn clusters_dir() -> String {
    std::env::var("HOOKBUS_CLUSTERS_DIR").unwrap_or_else(|_| "/tmp/hookbus-clusters".into())
}

/// The clusters to one test at a time, started (whatever node is down), when
/// `HOOKBUS_TEST_CLUSTERS` is set; else `None`, said on the terminal (past the test harness's
/// capture), and the test returns.
async fn clusters() -> Option<tokio::sync::MutexGuard<'static, ()>> {
    if std::env::var_os("HOOKBUS_TEST_CLUSTERS").is_none() {
        use std::io::Write;
        let thread = std::thread::current();
        let test = thread.name().filter(|name| name.starts_with("clusters::")).unwrap_or("clusters");
        let line = format!("{test}: skipped, HOOKBUS_TEST_CLUSTERS is not set (scripts/test.sh sets it)\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return None;
    }
    let one_at_a_time = CLUSTERS.lock().await;
    ensure_clusters().await;
    Some(one_at_a_time)
}

/// Starts the clusters, or whatever node of them is down (idempotent).
async fn ensure_clusters() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clusters.sh");
    let status = tokio::process::Command::new(script).arg("start").status().await.expect("clusters.sh runs");
    assert!(status.success(), "scripts/clusters.sh start failed");
}

/// SIGKILLs a node by its pid file (`nats/n2`, `rabbit/hb1`).
fn kill(node: &str) {
    let pid = std::fs::read_to_string(format!("{}/{node}.pid", clusters_dir())).expect("a pid file");
    let status = std::process::Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap();
    assert!(status.success(), "kill {node}");
}

/// The node the gateway's link is on, from `hookbus_bus_node_info`.
async fn node_of(addr: SocketAddr) -> Option<String> {
    let text = metrics(addr).await;
    let line = text.lines().find(|line| line.starts_with("hookbus_bus_node_info{"))?;
    Some(line.split('"').nth(1)?.to_owned())
}

/// Posts one signed event per room (`room-N`) on a keep-alive connection, as fast as they are
/// answered, until `stop`; returns the rooms answered 200 and when each was answered.
fn stream_of_callbacks(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<(String, Instant)>> {
    tokio::spawn(async move {
        let mut answered = Vec::new();
        let mut client = Client::connect(addr).await;
        let mut n = 0;
        while !stop.load(Relaxed) {
            n += 1;
            let room = format!("room-{n}");
            let body = serde_json::json!({"CallbackCommand": COMMAND, "RoomId": room}).to_string();
            match client.send(COMMAND, body.as_bytes()).await {
                Ok((200, _)) => answered.push((room, Instant::now())),
                Ok(_) => {}
                Err(_) => client = Client::connect(addr).await,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answered
    })
}

/// Waits until the gateway's outbox is empty: every accepted event confirmed.
async fn drained(addr: SocketAddr) {
    eventually("the outbox drained", Duration::from_secs(90), || async move {
        metric(&metrics(addr).await, "hookbus_outbox_depth") == 0
    })
    .await;
}

/// Waits until `count` more events than `before` were confirmed; returns how long it took.
async fn confirmed_after(addr: SocketAddr, before: u64, count: u64) -> Duration {
    let started = Instant::now();
    eventually("events confirmed after the kill", Duration::from_secs(90), || async move {
        metric(&metrics(addr).await, "hookbus_publishes_confirmed_total") >= before + count
    })
    .await;
    started.elapsed()
}

/// `hookbus respond --decision 0` in-process on the NATS cluster; returns once it is subscribed.
async fn cluster_responder(prefix: &str) -> tokio::task::JoinHandle<()> {
    use clap::Parser;
    let urls = NATS.join(",");
    let argv = ["hookbus", "respond", "--bus", "nats", "--nats-url", &urls, "--prefix", prefix, "--decision", "0"];
    let hookbus::config::Command::Respond(args) = hookbus::config::Cli::parse_from(argv).command else {
        unreachable!("parsed as respond")
    };
    let responder = args.responder().expect("no rules");
    let bus = hookbus::bus::Bus::connect(args.bus.options()).await.unwrap();
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let prefix = prefix.to_owned();
    let task = tokio::spawn(async move {
        let _ = responder.run(&bus, &prefix, ready).await;
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await.unwrap().expect("the responder subscribes");
    task
}

/// Waits until a gift is decided by the responder (ErrorCode 0), not by the deny fallback.
async fn decided_by_the_responder(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let gift = "Live.CallbackBeforeSendGift";
    let body = crate::support::samples().into_iter().find(|(command, _)| command == gift).expect("a gift sample").1;
    eventually("a gift decided by the responder", Duration::from_secs(60), || {
        let body = body.clone();
        async move {
            let (status, answer) = request(addr, Method::POST, &signed(gift), &body).await;
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            status == 200 && answer["ErrorCode"] == 0
        }
    })
    .await;
    started.elapsed()
}

/// Every event (`COMMAND`) in stream `name`: (event id, RoomId).
async fn stream_contents(client: &async_nats::Client, name: &str) -> Vec<(String, String)> {
    use async_nats::jetstream::consumer::pull;
    let context = async_nats::jetstream::new(client.clone());
    let mut stream = context.get_stream(name).await.unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: async_nats::jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut contents = Vec::new();
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap().unwrap();
        // The stream over `{prefix}.>` keeps the decision requests too: only events count.
        if !message.subject.ends_with(COMMAND) {
            continue;
        }
        let id = message.headers.as_ref().and_then(|h| h.get("ce-id")).unwrap().to_string();
        let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        contents.push((id, body["RoomId"].as_str().unwrap().to_owned()));
    }
    contents
}

/// The server name of the leader of stream `name`.
async fn stream_leader(client: &async_nats::Client, name: &str) -> String {
    let context = async_nats::jetstream::new(client.clone());
    let info = context.get_stream(name).await.unwrap().info().await.unwrap().clone();
    info.cluster.and_then(|cluster| cluster.leader).expect("a replicated stream has a leader")
}

fn assert_all_kept(answered: &[(String, Instant)], kept: &[(String, String)], what: &str) {
    let ids: HashSet<&String> = kept.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), kept.len(), "{what}: every event is kept once, under one id");
    let rooms: HashSet<&String> = kept.iter().map(|(_, room)| room).collect();
    let missing: Vec<&String> = answered.iter().map(|(room, _)| room).filter(|room| !rooms.contains(room)).collect();
    assert!(missing.is_empty(), "{what}: answered 200 but not kept: {missing:?}");
}

/// SIGKILL of the server the gateway is on, then (once it is back) of the stream leader, under
/// a stream of signed callbacks with a spool: every event answered 200 is in the R3 stream,
/// once, and gifts are decided by the responder again after each kill. The time from each kill
/// to the next confirmed event is printed.
#[tokio::test]
async fn nats_node_and_stream_leader_kills_lose_nothing() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, stream, spool) = (unique("cnats"), unique("CNATS"), tempdir("cnats-spool"));
    let flags = Flags::nats_stream(&stream).signed(&prefix).and(&["--spool-dir", &spool.display().to_string()]);
    let gateway = Running::connect(&flags.args()).await;
    let addr = gateway.addr;
    let responder = cluster_responder(&prefix).await;
    decided_by_the_responder(addr).await;
    let stop = Arc::new(AtomicBool::new(false));
    let callbacks = stream_of_callbacks(addr, stop.clone());
    confirmed_after(addr, 0, 20).await;

    let node = node_of(addr).await.expect("the gateway names its server");
    let server = node.split(' ').next().unwrap().trim_start_matches("hb-").to_owned();
    let before = metric(&metrics(addr).await, "hookbus_publishes_confirmed_total");
    kill(&format!("nats/{server}"));
    let gap = confirmed_after(addr, before, 1).await;
    println!("NATS: killed the gateway's server {node}; next confirmed event after {gap:?}");
    let decided = decided_by_the_responder(addr).await;
    println!("NATS: decisions answered by the responder again {decided:?} after the next confirmed event");
    ensure_clusters().await;

    let client = async_nats::connect(NATS.map(String::from).to_vec()).await.unwrap();
    let leader = stream_leader(&client, &stream).await;
    let before = metric(&metrics(addr).await, "hookbus_publishes_confirmed_total");
    kill(&format!("nats/{}", leader.trim_start_matches("hb-")));
    let gap = confirmed_after(addr, before, 1).await;
    println!("NATS: killed the stream leader {leader}; next confirmed event after {gap:?}");
    decided_by_the_responder(addr).await;
    confirmed_after(addr, before, 20).await;

    stop.store(true, Relaxed);
    let answered = callbacks.await.unwrap();
    drained(addr).await;
    // Read with the killed leader back and a client that has not met a dead server.
    ensure_clusters().await;
    drop(client);
    let client = async_nats::connect(NATS.map(String::from).to_vec()).await.unwrap();
    let kept = stream_contents(&client, &stream).await;
    let duplicates = kept.len() - kept.iter().map(|(_, room)| room).collect::<HashSet<_>>().len();
    println!("NATS: {} answered 200, {} in the stream, {duplicates} duplicates", answered.len(), kept.len());
    assert_all_kept(&answered, &kept, "NATS");
    responder.abort();
    gateway.stop().await;
}

/// A quorum queue bound to the gateway's events: the gateway's node is killed under a stream of
/// callbacks, then (once it is back) the queue's leader: nothing answered 200 is missing.
#[tokio::test]
async fn amqp_node_and_queue_leader_kills_lose_nothing() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, exchange, spool) = (unique("camqp"), unique("cx"), tempdir("camqp-spool"));
    let queue = quorum_queue(AMQP[0], &exchange, &prefix).await;
    let flags = Flags::amqp(&AMQP, &exchange)
        .and(&["--amqp-queue-type", "quorum"])
        .signed(&prefix)
        .and(&["--spool-dir", &spool.display().to_string()]);
    let gateway = Running::connect(&flags.args()).await;
    let addr = gateway.addr;
    assert_eq!(queue_info(&format!("{prefix}.unrouted"), "type").await, "quorum", "--amqp-queue-type");
    let stop = Arc::new(AtomicBool::new(false));
    let callbacks = stream_of_callbacks(addr, stop.clone());
    confirmed_after(addr, 0, 20).await;

    let node = node_of(addr).await.expect("the gateway names its node");
    let before = metric(&metrics(addr).await, "hookbus_publishes_confirmed_total");
    kill(&format!("rabbit/hb{}", port_digit(&node)));
    let gap = confirmed_after(addr, before, 1).await;
    println!("RabbitMQ: killed the gateway's node {node}; next confirmed event after {gap:?}");
    ensure_clusters().await;

    let leader = queue_leader(&queue).await;
    let before = metric(&metrics(addr).await, "hookbus_publishes_confirmed_total");
    kill(&format!("rabbit/{}", leader.trim_end_matches("@localhost")));
    let gap = confirmed_after(addr, before, 1).await;
    println!("RabbitMQ: killed the queue leader {leader}; next confirmed event after {gap:?}");
    confirmed_after(addr, before, 20).await;

    stop.store(true, Relaxed);
    let answered = callbacks.await.unwrap();
    drained(addr).await;
    let reopens = metric(&metrics(addr).await, "hookbus_bus_channel_reopens_total");
    let kept = drain_queue(&queue).await;
    let duplicates = kept.len() - kept.iter().map(|(_, room)| room).collect::<HashSet<_>>().len();
    println!(
        "RabbitMQ: {} answered 200, {} in the queue, {duplicates} duplicates, {reopens} channel reopens",
        answered.len(),
        kept.len()
    );
    let rooms: HashSet<&String> = kept.iter().map(|(_, room)| room).collect();
    let missing: Vec<&String> = answered.iter().map(|(room, _)| room).filter(|room| !rooms.contains(room)).collect();
    assert!(missing.is_empty(), "answered 200 but not in the queue: {missing:?}");
    gateway.stop().await;
    ensure_clusters().await;
}

/// The number of a node named `127.0.0.1:570N`: the port's last digit.
fn port_digit(node: &str) -> usize {
    node.rsplit(':').next().and_then(|port| port.parse::<usize>().ok()).map_or(0, |port| port % 10)
}

/// A channel opened before a quorum queue's leader was killed, that had not published yet, can
/// get a nack for every publish for good: the gateway's events channel is such a channel when
/// it was idle at the kill. It must be reopened and the events confirmed.
#[tokio::test]
async fn amqp_channel_idle_across_a_leader_kill_is_reopened() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, exchange) = (unique("cstale"), unique("cx"));
    // Declared through node 1, the queue's leader is node 1; the gateway is on node 2 or 3.
    let queue = quorum_queue(AMQP[0], &exchange, &prefix).await;
    assert_eq!(queue_leader(&queue).await, "hb1@localhost");
    let flags = Flags::amqp(&AMQP[1..], &exchange).signed(&prefix);
    let gateway = Running::connect(&flags.args()).await;
    eventually("the gateway connected", Duration::from_secs(30), || async { node_of(gateway.addr).await.is_some() })
        .await;
    // Published at once, while the queue elects a new leader.
    kill("rabbit/hb1");
    let mut sent = Vec::new();
    for n in 0..20 {
        let room = format!("room-{n}");
        let body = serde_json::json!({"CallbackCommand": COMMAND, "RoomId": room}).to_string();
        let (status, _) = request(gateway.addr, Method::POST, &signed(COMMAND), body.as_bytes()).await;
        assert_eq!(status, 200);
        sent.push(room);
    }
    let addr = gateway.addr;
    eventually("every event confirmed", Duration::from_secs(60), || async move {
        metric(&metrics(addr).await, "hookbus_publishes_confirmed_total") >= 20
    })
    .await;
    let reopens = metric(&metrics(addr).await, "hookbus_bus_channel_reopens_total");
    let kept = drain_queue(&queue).await;
    println!("RabbitMQ stale channel: {} sent, {} kept, {reopens} channel reopens", sent.len(), kept.len());
    let rooms: HashSet<String> = kept.into_iter().map(|(_, room)| room).collect();
    assert!(sent.iter().all(|room| rooms.contains(room)), "every event is in the queue");
    gateway.stop().await;
    ensure_clusters().await;
}

/// Seed lists: with the first URL dead at start, the gateway connects to the second, and says so.
#[tokio::test]
async fn seed_lists_skip_a_dead_first_node() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let nats = ["nats://127.0.0.1:4399", NATS[1]].join(",");
    let gateway = Running::connect(&["--bus", "nats", "--nats-url", &nats]).await;
    let addr = gateway.addr;
    eventually("NATS connected to the second server", Duration::from_secs(30), || async move {
        node_of(addr).await.is_some_and(|node| node.ends_with("127.0.0.1:4302"))
    })
    .await;
    gateway.stop().await;
    let amqp = ["amqp://guest:guest@127.0.0.1:5799/%2f", AMQP[1]].join(",");
    let exchange = unique("cx");
    let gateway = Running::connect(&["--bus", "amqp", "--amqp-url", &amqp, "--amqp-exchange", &exchange]).await;
    let addr = gateway.addr;
    eventually("AMQP connected to the second node", Duration::from_secs(30), || async move {
        node_of(addr).await.as_deref() == Some("127.0.0.1:5702")
    })
    .await;
    gateway.stop().await;
}

/// Two gateways sharing the NATS cluster: the same signed callback sent to both is one event
/// with one id, and the stream keeps one copy.
#[tokio::test]
async fn one_callback_sent_to_two_gateways_is_one_event() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, stream) = (unique("ctwo"), unique("CTWO"));
    let flags = Flags::nats_stream(&stream).signed(&prefix);
    let (first, second) = (Running::connect(&flags.args()).await, Running::connect(&flags.args()).await);
    let target = signed(COMMAND);
    let body = serde_json::json!({"CallbackCommand": COMMAND, "RoomId": "room-1"}).to_string();
    for gateway in [&first, &second] {
        let (status, _) = request(gateway.addr, Method::POST, &target, body.as_bytes()).await;
        assert_eq!(status, 200);
    }
    for gateway in [&first, &second] {
        drained(gateway.addr).await;
    }
    let client = async_nats::connect(NATS.map(String::from).to_vec()).await.unwrap();
    let kept = stream_contents(&client, &stream).await;
    assert_eq!(kept.len(), 1, "JetStream kept one copy: {kept:?}");
    let id = uuid::Uuid::parse_str(&kept[0].0).unwrap();
    let time = target.split("RequestTime=").nth(1).unwrap().parse::<u64>().unwrap();
    assert_eq!(&id.as_bytes()[..6], &(time * 1000).to_be_bytes()[2..], "the id's time is RequestTime");
    first.stop().await;
    second.stop().await;
}

/// Declares a quorum queue through `url`, bound to `{prefix}.#` on `exchange` (declared too).
async fn quorum_queue(url: &str, exchange: &str, prefix: &str) -> String {
    let connection = lapin::Connection::connect(url, Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(exchange.into(), lapin::ExchangeKind::Topic, durable, FieldTable::default())
        .await
        .unwrap();
    let queue = format!("{prefix}.events");
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, arguments).await.unwrap();
    let key = format!("{prefix}.#");
    let bind = QueueBindOptions::default();
    channel
        .queue_bind(queue.as_str().into(), exchange.into(), key.as_str().into(), bind, FieldTable::default())
        .await
        .unwrap();
    let _ = connection.close(200, "declared".into()).await;
    queue
}

/// The node that leads quorum queue `queue`, asked of a node that is up.
async fn queue_leader(queue: &str) -> String {
    queue_info(queue, "leader").await
}

/// One `rabbitmqctl list_queues` column of `queue`, asked of a node that is up.
async fn queue_info(queue: &str, column: &str) -> String {
    for n in 1..=3 {
        let base = format!("{}/rabbit/hb{n}", clusters_dir());
        let output = tokio::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .args(["-n", &format!("hb{n}@localhost"), "-q", "list_queues", "name", column, "--no-table-headers"])
            .env("HOME", format!("{base}/home"))
            .env("RABBITMQ_CONF_ENV_FILE", format!("{base}/rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .output()
            .await
            .unwrap();
        if !output.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if let Some(line) = text.lines().find(|line| line.split_whitespace().next() == Some(queue)) {
            return line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        }
    }
    String::new()
}

/// Every message in `queue` (taken), as (event id, RoomId), read from a node that is up.
async fn drain_queue(queue: &str) -> Vec<(String, String)> {
    let mut connection = None;
    for url in AMQP {
        if let Ok(opened) = lapin::Connection::connect(url, Default::default()).await {
            connection = Some(opened);
            break;
        }
    }
    let channel = connection.expect("a node is up").create_channel().await.unwrap();
    let mut kept = Vec::new();
    while let Some(message) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        let id = message.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&message.data).unwrap();
        kept.push((id, body["RoomId"].as_str().unwrap_or_default().to_owned()));
    }
    kept
}

/// HAProxy from the Debian package in front of `backends`, on a free port, checking each
/// backend's `/readyz`; killed when dropped.
struct Balancer {
    addr: SocketAddr,
    child: std::process::Child,
}

impl Balancer {
    fn start(backends: &[SocketAddr]) -> Balancer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(n, addr)| format!("    server g{n} {addr} check inter 200ms fall 1 rise 1\n"))
            .collect();
        let config = format!(
            "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n    \
             retries 3\n    option redispatch\n\
             frontend callbacks\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    option httpchk GET /readyz\n{servers}"
        );
        let path = tempdir("haproxy").join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = std::process::Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/clusters.sh installs it)");
        Balancer { addr: SocketAddr::from(([127, 0, 0, 1], port)), child }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two gateways behind HAProxy, sharing the NATS cluster: callbacks through the balancer reach
/// both; with one gateway killed (its binary, SIGKILL), the other serves every callback.
#[tokio::test]
async fn two_gateways_behind_a_load_balancer_survive_one() {
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, stream) = (unique("clb"), unique("CLB"));
    let flags = Flags::nats_stream(&stream).signed(&prefix);
    let (mut doomed, doomed_addr) = crate::support::spawn_binary(&flags.args());
    let survivor = Running::connect(&flags.args()).await;
    let balancer = Balancer::start(&[doomed_addr, survivor.addr]);
    let lb = balancer.addr;
    let post = move |n: usize| {
        let room = format!("room-{n}");
        let body = serde_json::json!({"CallbackCommand": COMMAND, "RoomId": room}).to_string();
        async move { request(lb, Method::POST, &signed(COMMAND), body.as_bytes()).await.0 }
    };
    eventually("the balancer listens", Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(lb).await.is_ok()
    })
    .await;
    eventually("the balancer serves", Duration::from_secs(30), || async move { post(0).await == 200 }).await;
    for n in 1..=20 {
        assert_eq!(post(n).await, 200);
    }
    let survivor_share = metric(&metrics(survivor.addr).await, "hookbus_publishes_confirmed_total");
    assert!(survivor_share > 0 && survivor_share < 21, "both gateways took callbacks: {survivor_share} of 21");
    // The same signed callback twice: round robin gives it to each gateway once.
    let (target, body) =
        (signed(COMMAND), serde_json::json!({"CallbackCommand": COMMAND, "RoomId": "same"}).to_string());
    for _ in 0..2 {
        assert_eq!(request(lb, Method::POST, &target, body.as_bytes()).await.0, 200);
    }
    let client = async_nats::connect(NATS.map(String::from).to_vec()).await.unwrap();
    let stream_name = stream.clone();
    eventually("both copies confirmed", Duration::from_secs(30), || {
        let (client, stream) = (client.clone(), stream_name.clone());
        async move {
            let context = async_nats::jetstream::new(client);
            let mut handle = context.get_stream(&stream).await.unwrap();
            handle.info().await.unwrap().state.messages >= 22
        }
    })
    .await;
    crate::support::signal(&doomed, "KILL");
    let _ = doomed.wait();
    let mut answered = 0;
    for n in 21..=60 {
        answered += usize::from(post(n).await == 200);
    }
    println!("LB: with one gateway killed, {answered} of 40 callbacks answered 200");
    assert_eq!(answered, 40, "the other gateway serves every callback (HAProxy retries a dead one)");
    drained(survivor.addr).await;
    let kept = stream_contents(&client, &stream).await;
    let same: Vec<_> = kept.iter().filter(|(_, room)| room == "same").collect();
    assert_eq!(same.len(), 1, "JetStream kept one copy of the callback both gateways took: {same:?}");
    assert_eq!(kept.len(), 62, "every other callback once");
    survivor.stop().await;
}

/// `hookbus respond --amqp-queue-type quorum` declares the responders' queue as a quorum queue,
/// and decisions go through it.
#[tokio::test]
async fn amqp_responders_queue_can_be_quorum() {
    use clap::Parser;
    let Some(_one_at_a_time) = clusters().await else { return };
    let (prefix, exchange) = (unique("cresp"), unique("cx"));
    let bus = Flags::amqp(&AMQP, &exchange).and(&["--amqp-queue-type", "quorum"]);
    let argv = ["hookbus", "respond"].into_iter().chain(bus.args()).chain(["--prefix", &prefix, "--decision", "0"]);
    let hookbus::config::Command::Respond(args) = hookbus::config::Cli::parse_from(argv).command else {
        unreachable!("parsed as respond")
    };
    let responder = args.responder().expect("no rules");
    let connected = hookbus::bus::Bus::connect(args.bus.options()).await.unwrap();
    let (ready, subscribed) = tokio::sync::oneshot::channel();
    let responder_prefix = prefix.clone();
    let task = tokio::spawn(async move {
        let _ = responder.run(&connected, &responder_prefix, ready).await;
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed).await.unwrap().expect("the responder subscribes");
    assert_eq!(queue_info(&format!("hookbus-responders.{prefix}"), "type").await, "quorum");
    let gateway = Running::connect(&bus.signed(&prefix).args()).await;
    decided_by_the_responder(gateway.addr).await;
    gateway.stop().await;
    task.abort();
}
