//! The NATS bus against the real server (`HOOKBUS_TEST_NATS_URL`, default 127.0.0.1:4222):
//! subjects, payloads and headers, JetStream, decisions, and a cut broker link.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use hookbus::bus::Bus;
use hookbus::config::{Cli, Command};
use hookbus::respond::Responder;
use serde_json::json;

use crate::support::{eventually, samples, socket_of, unique, Client, Gateway, Proxy, APP, TOKEN};

fn url() -> String {
    std::env::var("HOOKBUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn gateway(url: &str, prefix: &str, extra: &[&str]) -> Gateway {
    let mut flags = vec!["--bus", "nats", "--nats-url", url, "--prefix", prefix, "--sdk-app-id", APP, "--token", TOKEN];
    flags.extend_from_slice(extra);
    Gateway::connect(&flags).await
}

/// Starts `hookbus respond` in-process and waits until its subscriptions are live.
async fn responder(prefix: &str, code: i64, delay: Duration) -> tokio::task::JoinHandle<()> {
    let argv = ["hookbus", "respond", "--bus", "nats", "--nats-url", &url(), "--prefix", prefix];
    let Command::Respond(args) = Cli::parse_from(argv).command else { unreachable!() };
    let bus = Bus::connect(&args.bus).await.unwrap();
    let prefix = prefix.to_owned();
    let task = tokio::spawn({
        let prefix = prefix.clone();
        async move {
            let _ = bus.respond(&prefix, Responder { code, delay }).await;
        }
    });
    let probe = async_nats::connect(url()).await.unwrap();
    for command in ["Live.CallbackBeforeSendGift", "Group.CallbackBeforeSendMsg"] {
        let subject = format!("{prefix}.{command}");
        eventually("the responder to subscribe", Duration::from_secs(5), || {
            let (probe, subject) = (probe.clone(), subject.clone());
            async move {
                let answer = tokio::time::timeout(delay + Duration::from_secs(1), probe.request(subject, "{}".into()));
                matches!(answer.await, Ok(Ok(_)))
            }
        })
        .await;
    }
    task
}

#[tokio::test]
async fn every_sample_reaches_its_subject_with_exact_payload_and_headers() {
    let prefix = unique("t");
    let watcher = async_nats::connect(url()).await.unwrap();
    let mut events = watcher.subscribe(format!("{prefix}.>")).await.unwrap();
    watcher.flush().await.unwrap();
    let gateway = gateway(&url(), &prefix, &[]).await;
    let mut client = Client::connect(gateway.addr).await;
    let informational: Vec<_> = samples().into_iter().filter(|(c, _)| !c.contains("CallbackBefore")).collect();
    for (command, body) in &informational {
        assert_eq!(client.post(command, body).await.0, 200, "{command}");
    }
    for (command, body) in &informational {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await.unwrap().unwrap();
        assert_eq!(event.subject.as_str(), format!("{prefix}.{command}"));
        assert_eq!(event.payload, Bytes::from(body.clone()), "{command}: payload byte for byte");
        let headers = event.headers.expect("CloudEvents headers");
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("ce-type").as_deref(), Some(command.as_str()));
        assert_eq!(header("ce-source"), Some(format!("/tencent/{APP}")));
        assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
        assert_eq!(header("ce-datacontenttype").as_deref(), Some("application/json"));
        assert_eq!(header("ce-sdkappid").as_deref(), Some(APP));
        assert_eq!(header("ce-clientip").as_deref(), Some("127.0.0.1"));
        assert_eq!(header("ce-optplatform").as_deref(), Some("RESTAPI"));
        assert!(uuid::Uuid::parse_str(&header("ce-id").unwrap()).is_ok());
        assert!(humantime::parse_rfc3339(&header("ce-time").unwrap()).is_ok());
        let key = serde_json::from_slice::<serde_json::Value>(body).unwrap();
        if key.get("RoomId").is_some() {
            assert_eq!(header("ce-partitionkey").as_deref(), key["RoomId"].as_str(), "{command}");
        }
    }
    assert_eq!(gateway.stop().await.lost, 0);
}

#[tokio::test]
async fn reply_codes_are_answered_or_replaced_by_the_fallback() {
    let cases = [
        ("Live.CallbackBeforeSendGift", 0, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""})),
        (
            "Live.CallbackBeforeSendGift",
            1,
            json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"denied by hookbus respond"}),
        ),
        (
            "Live.CallbackBeforeSendGift",
            102150,
            json!({"ActionStatus":"OK","ErrorCode":102150,"ErrorInfo":"denied by hookbus respond"}),
        ),
        (
            "Live.CallbackBeforeSendGift",
            7,
            json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"hookbus fallback: invalid reply"}),
        ),
        (
            "Group.CallbackBeforeSendMsg",
            2,
            json!({"ActionStatus":"OK","ErrorCode":2,"ErrorInfo":"denied by hookbus respond"}),
        ),
        ("Group.CallbackBeforeSendMsg", 102150, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""})),
    ];
    for (command, code, expected) in cases {
        let prefix = unique("t");
        let responder = responder(&prefix, code, Duration::ZERO).await;
        let gateway = gateway(&url(), &prefix, &[]).await;
        let body = hookbus::simulate::sample(command).unwrap();
        let (status, answer) = gateway.post(command, body).await;
        assert_eq!((status, &answer), (200, &expected), "{command} answered {code}");
        gateway.stop().await;
        responder.abort();
    }
}

#[tokio::test]
async fn a_message_responder_may_rewrite_the_message() {
    let prefix = unique("t");
    let client = async_nats::connect(url()).await.unwrap();
    let mut requests =
        client.queue_subscribe(format!("{prefix}.Group.CallbackBeforeSendMsg"), "q".into()).await.unwrap();
    client.flush().await.unwrap();
    let replier = tokio::spawn({
        let client = client.clone();
        async move {
            let request = requests.next().await.unwrap();
            let headers = request.headers.clone().unwrap();
            assert!(headers.get("ce-deadline").is_some(), "requests carry their deadline");
            let reply = json!({"ErrorCode":0,"ErrorInfo":"","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}],"CloudCustomData":"checked"});
            client.publish(request.reply.unwrap(), reply.to_string().into()).await.unwrap();
            client.flush().await.unwrap();
        }
    });
    let gateway = gateway(&url(), &prefix, &[]).await;
    let body = hookbus::simulate::sample("Group.CallbackBeforeSendMsg").unwrap();
    let (status, answer) = gateway.post("Group.CallbackBeforeSendMsg", body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 0);
    assert_eq!(answer["MsgBody"][0]["MsgContent"]["Text"], "***");
    assert_eq!(answer["CloudCustomData"], "checked");
    replier.await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn a_slow_responder_yields_the_fallback_at_the_deadline() {
    let prefix = unique("t");
    let _responder = responder(&prefix, 0, Duration::from_millis(900)).await;
    let gateway = gateway(&url(), &prefix, &["--decision-timeout", "300ms"]).await;
    let started = Instant::now();
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"hookbus fallback: decision timeout"}));
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(300 + 200), "fallback within the deadline plus slack: {elapsed:?}");
    gateway.stop().await;
}

#[tokio::test]
async fn no_responders_yields_the_fallback_at_once() {
    let prefix = unique("t");
    let gateway = gateway(&url(), &prefix, &["--message-fallback", "deny"]).await;
    let started = Instant::now();
    let (status, answer) = gateway.post("Group.CallbackBeforeSendMsg", br#"{"GroupId":"g"}"#).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 1);
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: no responders");
    assert!(elapsed < Duration::from_millis(200), "no waiting for the 1500ms deadline: {elapsed:?}");
    gateway.stop().await;
}

/// Posts `count` distinct events from `connections` keep-alive clients; returns their RoomIds.
async fn burst(gateway: &Gateway, count: usize, connections: usize) -> HashSet<String> {
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let addr = gateway.addr;
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut sent = Vec::new();
            for n in (worker..count).step_by(connections) {
                let room = format!("room-{n}");
                let body = json!({"CallbackCommand":"Live.CallbackAfterMemberStateChanged","RoomId":room});
                let (status, _) =
                    client.post("Live.CallbackAfterMemberStateChanged", body.to_string().as_bytes()).await;
                assert_eq!(status, 200);
                sent.push(room);
            }
            sent
        }));
    }
    let mut rooms = HashSet::new();
    for task in tasks {
        rooms.extend(task.await.unwrap());
    }
    assert_eq!(rooms.len(), count);
    rooms
}

/// Collects RoomIds from `events` until every one of `expected` has arrived.
async fn collect(events: &mut async_nats::Subscriber, expected: &HashSet<String>, limit: Duration) -> usize {
    let mut seen = HashSet::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + limit;
    while seen.len() < expected.len() {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await else {
            panic!("only {} of {} events arrived", seen.len(), expected.len());
        };
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        seen.insert(body["RoomId"].as_str().unwrap().to_owned());
        received += 1;
    }
    assert_eq!(&seen, expected);
    received
}

#[tokio::test]
async fn a_burst_of_thousands_all_arrive() {
    let prefix = unique("t");
    let watcher = async_nats::connect(url()).await.unwrap();
    let mut events = watcher.subscribe(format!("{prefix}.>")).await.unwrap();
    watcher.flush().await.unwrap();
    let gateway = gateway(&url(), &prefix, &[]).await;
    let sent = burst(&gateway, 3000, 8).await;
    let received = collect(&mut events, &sent, Duration::from_secs(30)).await;
    println!("nats burst: acknowledged {}, delivered {received}, lost 0", sent.len());
    assert_eq!(gateway.stop().await.lost, 0);
}

#[tokio::test]
async fn a_cut_link_loses_nothing_acknowledged() {
    let prefix = unique("t");
    let proxy = Proxy::start(socket_of(&url())).await;
    let watcher = async_nats::connect(url()).await.unwrap();
    let mut events = watcher.subscribe(format!("{prefix}.>")).await.unwrap();
    watcher.flush().await.unwrap();
    let gateway = gateway(&format!("nats://{}", proxy.addr), &prefix, &[]).await;
    let cutter = tokio::spawn(async move {
        let mut cuts = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cuts += proxy.cut();
        }
        (proxy, cuts)
    });
    let sent = burst(&gateway, 3000, 8).await;
    let (_proxy, cuts) = cutter.await.unwrap();
    let received = collect(&mut events, &sent, Duration::from_secs(60)).await;
    println!(
        "nats cut link: cuts {cuts}, acknowledged {}, delivered {received} (duplicates {}), lost 0",
        sent.len(),
        received - sent.len()
    );
    assert!(cuts > 0, "the link was cut while the gateway was connected");
    assert_eq!(gateway.stop().await.lost, 0);
}

#[tokio::test]
async fn jetstream_stores_every_event_with_its_id_and_skips_stream_acks_in_decisions() {
    let prefix = unique("t");
    let stream = unique("S");
    let _responder = responder(&prefix, 102100, Duration::ZERO).await;
    let gateway = gateway(&url(), &prefix, &["--nats-jetstream", "--nats-create-stream", &stream]).await;
    let mut client = Client::connect(gateway.addr).await;
    let informational: Vec<_> = samples().into_iter().filter(|(c, _)| !c.contains("CallbackBefore")).collect();
    for (command, body) in &informational {
        assert_eq!(client.post(command, body).await.0, 200);
    }
    let (status, answer) = client.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 102100, "the responder's decision, not the stream's PubAck: {answer}");
    assert_eq!(gateway.stop().await.lost, 0);

    let context = jetstream::new(async_nats::connect(url()).await.unwrap());
    let mut info = context.get_stream(&stream).await.unwrap();
    let stored = info.info().await.unwrap().state.messages;
    assert_eq!(stored as usize, informational.len() + 1, "every event and the gift request are stored");
    let first = info.get_raw_message(1).await.unwrap();
    assert_eq!(first.headers.get("Nats-Msg-Id").map(|v| v.as_str()), first.headers.get("ce-id").map(|v| v.as_str()));
    context.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn jetstream_without_a_stream_is_a_clear_start_up_error() {
    let argv =
        ["hookbus", "serve", "--bus", "nats", "--nats-url", &url(), "--prefix", &unique("t"), "--nats-jetstream"];
    let Command::Serve(args) = Cli::parse_from(argv).command else { unreachable!() };
    let error = Bus::connect(&args.bus).await.err().expect("refused").to_string();
    assert!(error.contains("no JetStream stream covers"), "{error}");
    assert!(error.contains("--nats-create-stream"), "{error}");
}
