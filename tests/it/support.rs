//! Shared test plumbing: in-process gateways on 127.0.0.1:0, signed callbacks, a small HTTP
//! client, a burst of events, `/metrics`, samples, the binary, a cuttable proxy, and waiting
//! for a condition under a timeout (never sleep-and-hope).

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hookbus::bus::Bus;
use hookbus::config::serve_flags;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const APP: &str = "1400000000";
pub const TOKEN: &str = "test-token";

/// A gateway running in this process (`hookbus::run` on a free port) until `stop` is called.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<hookbus::Report>,
}

impl Running {
    /// Starts a gateway with `hookbus serve` `flags` on an already connected bus.
    pub async fn start(flags: &[&str], bus: Bus) -> Running {
        let gateway = serve_flags(flags).expect("valid flags").build(bus).expect("gateway builds");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(hookbus::run(gateway, listener, async {
            let _ = stopped.await;
        }));
        Running { addr, shutdown: Some(shutdown), handle }
    }

    /// Starts a gateway with `flags` on the stdout bus, writing its events where the test
    /// reads them back.
    pub async fn stdout(flags: &[&str]) -> (Running, Captured) {
        let captured = Captured::default();
        let bus = Bus::Stdout(hookbus::bus::stdout::Stdout::new(Box::new(captured.clone())));
        (Running::start(flags, bus).await, captured)
    }

    /// Connects to the bus the flags name, then starts a gateway.
    pub async fn connect(flags: &[&str]) -> Running {
        let options = serve_flags(flags).expect("valid flags").bus.options();
        let bus = Bus::connect(options).await.expect("the bus is reachable");
        Running::start(flags, bus).await
    }

    /// Fires the shutdown trigger and waits for the run to finish.
    pub async fn stop(mut self) -> hookbus::Report {
        let _ = self.shutdown.take().expect("stopped once").send(());
        (&mut self.handle).await.expect("gateway task did not panic")
    }

    /// Posts `body` for `command` with a fresh, valid signature, on a fresh connection.
    pub async fn post(&self, command: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, body) = request(self.addr, Method::POST, &signed(command), body).await;
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }
}

/// The callback target for `command` signed now for [`APP`] with [`TOKEN`], as Tencent sends it.
pub fn signed(command: &str) -> String {
    format!("/?{}", hookbus::simulate::query(APP, command, Some(TOKEN)))
}

/// The callback target for `command`, signed with `token` for `app` at `time` (Unix seconds).
pub fn signed_as(command: &str, app: &str, token: &str, time: u64) -> String {
    let time = time.to_string();
    let sign = hookbus::tencent::sign(token, &time);
    format!("/?SdkAppid={app}&CallbackCommand={command}&contenttype=json&Sign={sign}&RequestTime={time}")
}

/// The gateway's `/metrics` text.
pub async fn metrics(addr: SocketAddr) -> String {
    let (status, body) = request(addr, Method::GET, "/metrics", b"").await;
    assert_eq!(status, 200, "/metrics answers");
    String::from_utf8(body.to_vec()).expect("metrics are text")
}

/// The value of an unlabelled metric, e.g. `hookbus_outbox_depth`.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

/// One HTTP/1.1 request on a fresh connection; returns the status and body.
pub async fn request(addr: SocketAddr, method: Method, target: &str, body: &[u8]) -> (u16, Bytes) {
    request_with(addr, method, target, &[], body).await
}

/// As [`request`], with extra headers.
pub async fn request_with(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Bytes) {
    let stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder().method(method).uri(target).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.into_body().collect().await.unwrap().to_bytes())
}

/// Every documented Live and Chat sample as (command, body), read from the project's `samples/live/`.
pub fn samples() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/live");
    let mut samples: Vec<_> = std::fs::read_dir(dir)
        .expect("the samples exist")
        .map(|entry| {
            let path = entry.unwrap().path();
            let command = path.file_stem().unwrap().to_string_lossy().into_owned();
            (command, std::fs::read(&path).unwrap())
        })
        .collect();
    samples.sort();
    assert!(samples.len() >= 23, "all documented samples are present");
    samples
}

/// A writer the test can read back: stands in for the process's stdout.
#[derive(Clone, Default)]
pub struct Captured(pub Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
    }
}

/// Waits until `check` holds, polling, or panics after `limit` naming `what`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A keep-alive HTTP/1.1 connection to a gateway, as Tencent would hold one.
pub struct Client {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).await.expect("connect to the gateway")
    }

    /// A connection, or `None` when the gateway is gone.
    pub async fn try_connect(addr: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.ok()?;
        tokio::spawn(connection);
        Some(Client { addr, sender })
    }

    /// Posts `body` for `command`, signed; returns the status and the answer's JSON.
    pub async fn post(&mut self, command: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, body) = self.send(command, body).await.expect("an answer");
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    /// As [`Client::post`], but an error when the connection fails instead of a panic.
    pub async fn send(&mut self, command: &str, body: &[u8]) -> Result<(u16, Bytes), hyper::Error> {
        let request = Request::post(signed(command))
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// A name no other test (or earlier run) uses, for subjects, queues and topics.
pub fn unique(what: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{what}{}", &id[id.len() - 12..])
}

/// A TCP proxy in front of a broker that the test can cut, to break the gateway's link.
pub struct Proxy {
    pub addr: SocketAddr,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let down: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let accept = tokio::spawn({
            let (links, down) = (links.clone(), down.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropping the connection refuses it
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Proxy { addr, links, down, accept }
    }

    /// Takes the broker away (cutting open connections and refusing new ones) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Drops every open connection through the proxy; new ones are accepted again.
    pub fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        let open = links.iter().filter(|link| !link.is_finished()).count();
        links.iter().for_each(JoinHandle::abort);
        open
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Resolves `host:port` from a URL such as `nats://127.0.0.1:4222`.
pub fn socket_of(url: &str) -> SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap().split('/').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host_port).unwrap().next().unwrap()
}

/// Posts one distinct event per number in `rooms` (RoomId `room-N`) from `connections`
/// keep-alive clients; returns the RoomIds of those answered 200. Refusals and a gateway that
/// goes away are tolerated: callers that expect every event accepted compare the count.
pub async fn burst(
    addr: SocketAddr,
    rooms: std::ops::Range<usize>,
    connections: usize,
) -> std::collections::HashSet<String> {
    let command = "Live.CallbackAfterMemberStateChanged";
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let rooms = rooms.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let Some(mut client) = Client::try_connect(addr).await else { return acknowledged };
            for n in rooms.skip(worker).step_by(connections) {
                let room = format!("room-{n}");
                let body = serde_json::json!({"CallbackCommand":command,"RoomId":room});
                match client.send(command, body.to_string().as_bytes()).await {
                    Ok((200, _)) => acknowledged.push(room),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    let mut rooms = std::collections::HashSet::new();
    for task in tasks {
        rooms.extend(task.await.unwrap());
    }
    rooms
}

/// Starts the `hookbus serve` binary on a free port; returns it with the address it logged.
/// Its stdout (the events of the default bus) is a pipe for the test to read: it holds 64 KiB,
/// past which the gateway waits on it.
pub fn spawn_binary(flags: &[&str]) -> (std::process::Child, SocketAddr) {
    let (child, addr, _logs) = spawn_gateway(flags, std::process::Stdio::piped());
    (child, addr)
}

/// As [`spawn_binary`], and the lines it logs on stderr from then on.
/// Its stdout is discarded, so that any number of events can be sent.
pub fn spawn_binary_with_logs(flags: &[&str]) -> (std::process::Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    spawn_gateway(flags, std::process::Stdio::null())
}

fn spawn_gateway(
    flags: &[&str],
    stdout: std::process::Stdio,
) -> (std::process::Child, SocketAddr, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(flags)
        .env("RUST_LOG", "info")
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut logged = Vec::new();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else { panic!("the gateway exited before listening: {logged:#?}") };
        logged.push(line.clone());
        if let Some(rest) = line.split("listen=").nth(1).or_else(|| line.split("\"listen\":\"").nth(1)) {
            break rest.split(['"', ' ']).next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the gateway never blocks on a full pipe.
    let (sender, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    (child, addr, logs)
}

/// A nats-server of the test's own on `port`, configured by `conf` (the server's config file
/// format; `listen` is added), stopped when dropped.
pub struct NatsServer(std::process::Child);

impl NatsServer {
    pub fn start(port: u16, conf: &str) -> NatsServer {
        let path = tempdir("nats-conf").join("nats.conf");
        std::fs::write(&path, format!("listen: 127.0.0.1:{port}\n{conf}")).unwrap();
        let child = std::process::Command::new("nats-server")
            .args(["-c", path.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/services.sh)");
        let up = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(up.elapsed() < Duration::from_secs(10), "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer(child)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a line of `logs` (from [`spawn_binary_with_logs`]) containing `text`, or panics
/// naming it.
pub fn logged(logs: &std::sync::mpsc::Receiver<String>, text: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = logs.recv_timeout(left).unwrap_or_else(|_| panic!("no log line with {text:?}"));
        if line.contains(text) {
            return;
        }
    }
}

/// Sends `signal` (e.g. "TERM", "KILL") to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let status =
        std::process::Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// A fresh directory under the system's temporary directory.
pub fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique(what));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
