//! Slow and hostile clients, and logs an operator can parse: slowloris connections do not
//! starve others, bodies and idle connections time out, connections are capped, repeated
//! query parameters and nesting bombs are refused, replays are not published again, and
//! `--log-format json` gives one object per line with request id, status, reason and latency.

use std::time::{Duration, Instant};

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use futures_util::StreamExt;

use crate::brokers::Backend;
use crate::support::{
    metrics, request, signal, signed, spawn_binary_with_logs, unique, Captured, Client, Running, APP, TOKEN,
};

async fn gateway(flags: &[&str]) -> Running {
    Running::stdout(flags).await.0
}

#[tokio::test]
async fn slowloris_connections_do_not_starve_others_and_are_closed() {
    let gateway = gateway(&["--header-read-timeout", "1s"]).await;
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(b"POST /?CallbackCommand=Live.X HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(stream);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut closed_after = Vec::new();
        // One header byte every 100 ms per connection, until the gateway hangs up.
        while !slow.is_empty() && started.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut open = Vec::new();
            for mut stream in slow.drain(..) {
                let mut byte = [0u8; 1];
                let closed = matches!(
                    tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte)).await,
                    Ok(Ok(0) | Err(_))
                ) || stream.write_all(b"X").await.is_err();
                if closed {
                    closed_after.push(started.elapsed());
                } else {
                    open.push(stream);
                }
            }
            slow = open;
        }
        (closed_after, slow.len())
    });
    let mut client = Client::connect(gateway.addr).await;
    for _ in 0..100 {
        let started = Instant::now();
        let (status, _) = client.post("Live.CallbackAfterCreateRoom", br#"{"RoomId":"r"}"#).await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(1), "served while slow clients hang on");
    }
    let (closed_after, still_open) = trickle.await.unwrap();
    assert_eq!(still_open, 0, "every slowloris connection was closed");
    let latest = closed_after.iter().max().unwrap();
    assert!(*latest < Duration::from_secs(3), "closed at the header-read timeout: {latest:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_gets_408() {
    let gateway = gateway(&["--body-read-timeout", "300ms"]).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let head = "POST /?CallbackCommand=Live.X HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"Room";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""ActionStatus":"FAIL""#), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    gateway.stop().await;
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room_and_busy_ones_finish() {
    let gateway = gateway(&["--max-connections", "2", "--header-read-timeout", "5s"]).await;
    let mut idle = Client::connect(gateway.addr).await;
    assert_eq!(idle.post("Live.X", b"{}").await.0, 200);
    // A busy connection: its request's body is still arriving.
    let mut busy = TcpStream::connect(gateway.addr).await.unwrap();
    let head = "POST /?CallbackCommand=Live.Y HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{\"Room";
    busy.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // idle long enough to be closed
                                                           // A third connection at the cap: the idle one is closed for it, at once.
    let started = Instant::now();
    let (status, _) = tokio::time::timeout(Duration::from_secs(2), request(gateway.addr, Method::GET, "/healthz", b""))
        .await
        .expect("served once the idle connection made room");
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(1), "not after the idle timeout: {:?}", started.elapsed());
    assert!(idle.send("Live.X", b"{}").await.is_err(), "the idle connection was closed");
    busy.write_all(b"Id\":\"r\"}").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), busy.read(&mut answer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 200"), "the busy request finished");
    gateway.stop().await;
}

/// Sends an unsigned callback with `request_id` as its `X-Request-Id` to a gateway binary that
/// logs JSON and requires a signature; returns the log line of its refusal (401) as text.
async fn refused_with_request_id(request_id: &[u8]) -> String {
    let (mut child, addr, logs) = spawn_binary_with_logs(&["--log-format", "json", "--token", "secret"]);
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post("/?SdkAppid=1&CallbackCommand=Live.CallbackAfterCreateRoom")
        .header("host", addr.to_string())
        .header("x-request-id", hyper::header::HeaderValue::from_bytes(request_id).unwrap())
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 401);
    let line = loop {
        let line = logs.recv_timeout(Duration::from_secs(5)).expect("a log line for the rejection");
        if line.contains("callback rejected") {
            break line;
        }
    };
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    line
}

// The binary is awaited with blocking calls: keep a worker free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_id_status_reason_and_latency() {
    let line = refused_with_request_id(b"req-42").await;
    let entry: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(entry["level"], "WARN");
    assert_eq!(entry["request_id"], "req-42");
    assert_eq!(entry["status"], 401);
    assert_eq!(entry["command"], "Live.CallbackAfterCreateRoom");
    assert_eq!(entry["reason"], "Sign and RequestTime are required");
    assert!(entry["latency_us"].is_u64());
    assert!(!line.contains("secret"), "the token is never logged");
}

/// A request id longer than the log keeps is cut at a character boundary to 256 bytes with its
/// size noted, as the README says of every field from outside, not replaced by another id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_request_id_is_logged_cut_with_its_size() {
    // 301 bytes: the 256th byte falls inside an `é`, which is left out whole.
    let id = format!("x{}", "é".repeat(150));
    let line = refused_with_request_id(id.as_bytes()).await;
    let entry: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(entry["request_id"], format!("x{}… (301 bytes)", "é".repeat(127)));
}

/// A stdout gateway that checks SdkAppid and signatures, and what it published.
async fn secured() -> (Running, Captured) {
    Running::stdout(&["--sdk-app-id", APP, "--token", TOKEN]).await
}

#[tokio::test]
async fn a_repeated_protocol_parameter_is_refused_whichever_value_comes_first() {
    let (gateway, captured) = secured().await;
    let command = "Live.CallbackAfterCreateRoom";
    let good = signed(command);
    let body = br#"{"RoomId":"r"}"#;
    for extra in [
        "&SdkAppid=999",
        "&sdkappid=1400000000",
        "&CallbackCommand=Live.CallbackAfterDestroyRoom",
        "&SIGN=00",
        "&RequestTime=1",
        "&ContentType=json",
        "&ClientIP=10.0.0.9&clientip=10.0.0.8",
        "&OptPlatform=iOS&optplatform=Web",
    ] {
        let (status, answer) = request(gateway.addr, Method::POST, &format!("{good}{extra}"), body).await;
        assert_eq!(status, 400, "{extra}: {}", String::from_utf8_lossy(&answer));
        assert!(String::from_utf8_lossy(&answer).contains("more than once"), "{extra}");
    }
    // The foreign value first: refused the same way, not as a foreign SdkAppid.
    let first = good.replacen("SdkAppid=", "SdkAppid=999&SdkAppid=", 1);
    assert_eq!(request(gateway.addr, Method::POST, &first, body).await.0, 400);
    assert!(metrics(gateway.addr).await.contains("hookbus_rejections_total{reason=\"param_repeated\"} 9"));
    assert_eq!(request(gateway.addr, Method::POST, &format!("{good}&other=1&other=2"), body).await.0, 200);
    gateway.stop().await;
    assert_eq!(captured.lines().len(), 1, "only the unambiguous request was published");
}

#[tokio::test]
async fn bodies_nested_past_the_limit_are_refused() {
    let (gateway, captured) = secured().await;
    let command = "Live.CallbackAfterCreateRoom";
    let nested = |levels: usize| format!("{}{}{}", "{\"a\":".repeat(levels - 1), "{}", "}".repeat(levels - 1));
    let bomb = format!("{{\"a\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
    assert!(bomb.len() > 40_000 && bomb.len() < 65_536);
    let mut client = Client::connect(gateway.addr).await;
    let (status, answer) = client.post(command, bomb.as_bytes()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["ErrorInfo"], "body is nested too deeply");
    assert_eq!(client.post(command, nested(33).as_bytes()).await.0, 400);
    assert_eq!(client.post(command, nested(32).as_bytes()).await.0, 200, "32 levels is the default limit");
    assert!(metrics(gateway.addr).await.contains("hookbus_rejections_total{reason=\"too_deep\"} 2"));
    gateway.stop().await;
    assert_eq!(captured.lines().len(), 1);

    let deeper = gateway_with(&["--max-json-depth", "40"]).await;
    let mut client = Client::connect(deeper.addr).await;
    assert_eq!(client.post(command, nested(40).as_bytes()).await.0, 200);
    deeper.stop().await;
}

async fn gateway_with(flags: &[&str]) -> Running {
    Running::stdout(flags).await.0
}

#[tokio::test]
async fn a_replayed_signed_request_is_answered_as_before_and_not_published_again() {
    let prefix = unique("t");
    let mut watcher = Backend::Nats.watch(&prefix).await;
    // A responder that counts the requests reaching it.
    let client = async_nats::connect(crate::brokers::nats_url()).await.unwrap();
    let mut requests = client.subscribe(format!("{prefix}.decide.Live.CallbackBeforeSendGift")).await.unwrap();
    client.flush().await.unwrap();
    let responder = tokio::spawn({
        let client = client.clone();
        async move {
            let mut count = 0;
            while let Some(request) = requests.next().await {
                count += 1;
                let reply = format!(r#"{{"ErrorCode":102150,"ErrorInfo":"request {count}"}}"#);
                client.publish(request.reply.unwrap(), reply.into()).await.unwrap();
                client.flush().await.unwrap();
            }
        }
    });
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let event = signed("Live.CallbackAfterCreateRoom");
    let body = br#"{"RoomId":"replayed"}"#;
    for _ in 0..2 {
        let (status, _) = request(gateway.addr, Method::POST, &event, body).await;
        assert_eq!(status, 200, "a replay is answered like the original");
    }
    let other = br#"{"RoomId":"distinct"}"#;
    assert_eq!(request(gateway.addr, Method::POST, &event, other).await.0, 200);
    let gift = signed("Live.CallbackBeforeSendGift");
    let first = request(gateway.addr, Method::POST, &gift, body).await;
    let replayed = request(gateway.addr, Method::POST, &gift, body).await;
    assert_eq!(first, replayed, "the same decision, not a new request");
    assert!(String::from_utf8_lossy(&first.1).contains("request 1"), "{first:?}");

    let mut rooms = Vec::new();
    while let Some(event) = watcher.try_next(Duration::from_millis(1500)).await {
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        rooms.push((event.destination, body["RoomId"].as_str().unwrap().to_owned()));
    }
    let events: Vec<_> = rooms.iter().filter(|(destination, _)| destination.ends_with("AfterCreateRoom")).collect();
    assert_eq!(events.len(), 2, "one event for two identical requests, one for the distinct one: {rooms:?}");
    assert_eq!(rooms.iter().filter(|(destination, _)| destination.ends_with("SendGift")).count(), 1);
    assert!(metrics(gateway.addr).await.contains("hookbus_replays_total 2"));
    gateway.stop().await;
    responder.abort();
}

/// `--max-connection-age`: a keep-alive connection is closed once it is that old, after the
/// response it was giving (`Connection: close`), so that a load balancer can send the client's
/// next connection to another replica; without it the same connection stays open.
#[tokio::test]
async fn connections_are_closed_gracefully_at_their_age() {
    let command = "Live.CallbackAfterCreateRoom";
    let request = |target: &str| {
        format!("POST {target} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}")
    };
    let aged = gateway(&["--max-connection-age", "1s"]).await;
    let forever = gateway(&["--max-connection-age", "0"]).await;
    let mut streams = Vec::new();
    for gateway in [&aged, &forever] {
        let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
        stream.write_all(request(&format!("/?SdkAppid={APP}&CallbackCommand={command}")).as_bytes()).await.unwrap();
        let mut answer = [0u8; 1024];
        let read = stream.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"));
        streams.push(stream);
    }
    let started = Instant::now();
    let mut rest = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), streams[0].read(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "closed at its age: {read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let open = tokio::time::timeout(Duration::from_secs(2), streams[1].read(&mut rest)).await;
    assert!(open.is_err(), "without an age the connection stays open");
}

/// A burst of 2,000 gifts at once against a responder slower than the decision timeout, with
/// the default connection cap: a blocking callback holds its connection until it is decided,
/// so each must get a connection at once and its answer (here the fallback) within Tencent's
/// 2 s. The decision timeout is 700 ms here, not the default 1.5 s: this unoptimised build,
/// beside the test's own unoptimised clients and responder on the same two cores, spends most
/// of a second reading 2,000 requests (the release build a small part of that). The gateway's
/// peak memory for it is printed and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_gifts_against_a_slow_responder_is_answered_within_two_seconds() {
    const GIFTS: usize = 2000;
    let prefix = unique("t");
    let _responder = Backend::Nats.responder(&prefix, 0, Duration::from_millis(1700)).await;
    let url = crate::brokers::nats_url();
    let flags = ["--bus", "nats", "--nats-url", &url, "--prefix", &prefix, "--sdk-app-id", APP, "--token", TOKEN];
    let (mut child, addr, _logs) = spawn_binary_with_logs(&[&flags[..], &["--decision-timeout", "700ms"]].concat());
    let gifts = (0..GIFTS).map(|n| {
        tokio::spawn(async move {
            let started = Instant::now();
            let body = format!(r#"{{"RoomId":"room-{n}"}}"#);
            let (status, answer) =
                request(addr, Method::POST, &signed("Live.CallbackBeforeSendGift"), body.as_bytes()).await;
            (status, answer, started.elapsed())
        })
    });
    let answers = futures_util::future::join_all(gifts).await;
    let peak_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:")?.trim().strip_suffix(" kB")?.parse::<u64>().ok())
        .unwrap();
    signal(&child, "TERM");
    child.wait().unwrap();
    let mut latencies: Vec<Duration> = Vec::new();
    for answer in answers {
        let (status, body, took) = answer.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        latencies.push(took);
    }
    latencies.sort();
    let slowest = latencies[GIFTS - 1];
    println!(
        "{GIFTS} gifts at once: median {:?}, slowest {slowest:?}, gateway peak RSS {peak_kib} KiB",
        latencies[GIFTS / 2]
    );
    assert!(slowest < Duration::from_secs(2), "every gift is answered within 2 s: the slowest took {slowest:?}");
    assert!(peak_kib < 192 * 1024, "memory bounded: peak RSS {peak_kib} KiB");
}
