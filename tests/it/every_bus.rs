//! The behaviour every bus must have, run on each real broker by `bus_tests!`: exact events,
//! reply codes, deadlines, no responders, a burst, and a cut broker link.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::brokers::{collect, Backend};
use crate::support::{burst, samples, unique, Client, Proxy, Running, APP};

macro_rules! bus_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn every_sample_arrives_with_exact_payload_and_attributes() {
                samples_arrive_exactly($backend).await
            }
            #[tokio::test]
            async fn reply_codes_are_answered_or_replaced_by_the_fallback() {
                reply_codes($backend).await
            }
            #[tokio::test]
            async fn a_slow_responder_yields_the_fallback_at_the_deadline() {
                slow_responder($backend).await
            }
            #[tokio::test]
            async fn a_burst_of_thousands_all_arrive() {
                burst_arrives($backend).await
            }
            #[tokio::test]
            async fn trace_context_crosses_the_bus_on_events_and_requests() {
                trace_context($backend).await
            }
            #[tokio::test]
            async fn rules_decide_before_and_after_the_bus_and_every_decision_is_audited() {
                rules_and_audit($backend).await
            }
            #[tokio::test]
            async fn a_command_made_blocking_is_decided_by_a_responder_or_its_fallback() {
                made_blocking($backend).await
            }
        }
    };
}

/// For buses whose broker says at once that nobody listens, and whose link a proxy can cut.
/// Kafka has no "no responders" answer (a request waits for its deadline), and its clients
/// connect to the advertised broker address after bootstrap, past any proxy.
macro_rules! link_tests {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn no_responders_yields_the_fallback_at_once() {
                no_responders($backend).await
            }
            #[tokio::test]
            async fn a_cut_link_loses_nothing_acknowledged() {
                cut_link($backend).await
            }
            #[tokio::test]
            async fn a_cut_link_keeps_each_rooms_order() {
                room_order($backend).await
            }
        }
    };
}

bus_tests!(nats, Backend::Nats);
bus_tests!(amqp, Backend::Amqp);
bus_tests!(kafka, Backend::Kafka);
link_tests!(nats_link, Backend::Nats);
link_tests!(amqp_link, Backend::Amqp);

async fn samples_arrive_exactly(backend: Backend) {
    let prefix = unique("t");
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, None, &[]).await;
    let mut client = Client::connect(gateway.addr).await;
    let informational: Vec<_> = samples().into_iter().filter(|(c, _)| !c.contains("CallbackBefore")).collect();
    for (command, body) in &informational {
        assert_eq!(client.post(command, body).await.0, 200, "{command}");
    }
    // Order holds per destination only (Kafka orders within a partition): match by destination.
    let mut events = std::collections::HashMap::new();
    for _ in &informational {
        let event = watcher.next(Duration::from_secs(20)).await;
        events.insert(event.destination.clone(), event);
    }
    for (command, body) in &informational {
        let event = events.remove(&format!("{prefix}.{command}")).expect("one event per sample");
        assert_eq!(&event.payload[..], &body[..], "{command}: payload byte for byte");
        let attribute = |name: &str| event.attributes.get(name).map(String::as_str);
        assert_eq!(attribute("type"), Some(command.as_str()));
        assert_eq!(attribute("source"), Some(format!("/tencent/{APP}").as_str()));
        assert_eq!(attribute("specversion"), Some("1.0"));
        assert_eq!(attribute("datacontenttype"), Some("application/json"));
        assert_eq!(attribute("sdkappid"), Some(APP));
        assert_eq!(attribute("clientip"), Some("127.0.0.1"));
        assert_eq!(attribute("optplatform"), Some("RESTAPI"));
        // Signed: the id is derived from the callback (version 8), its time part RequestTime.
        let id = uuid::Uuid::parse_str(attribute("id").unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 8, "{command}");
        let sent = humantime::parse_rfc3339(attribute("time").unwrap()).unwrap();
        let id_ms = u64::from_be_bytes([
            0,
            0,
            id.as_bytes()[0],
            id.as_bytes()[1],
            id.as_bytes()[2],
            id.as_bytes()[3],
            id.as_bytes()[4],
            id.as_bytes()[5],
        ]);
        let received_ms = sent.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(
            id_ms.is_multiple_of(1000) && id_ms <= received_ms && received_ms - id_ms < 60_000,
            "{command}: RequestTime in the id"
        );
        assert!(humantime::parse_rfc3339(attribute("time").unwrap()).is_ok());
        let body: serde_json::Value = serde_json::from_slice(body).unwrap();
        let room =
            ["/RoomId", "/RoomInfo/RoomId", "/GroupId", "/FromRoomId", "/FromRoomInfo/RoomId", "/EventInfo/RoomId"]
                .into_iter()
                .find_map(|pointer| body.pointer(pointer));
        assert_eq!(attribute("partitionkey"), room.and_then(|r| r.as_str()), "{command}");
    }
    assert_eq!(gateway.stop().await.lost, 0);
}

async fn reply_codes(backend: Backend) {
    let gift = "Live.CallbackBeforeSendGift";
    let message = "Group.CallbackBeforeSendMsg";
    let denied = "denied by hookbus respond";
    let cases = [
        (gift, 0, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""})),
        (gift, 1, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":denied})),
        (gift, 102150, json!({"ActionStatus":"OK","ErrorCode":102150,"ErrorInfo":denied})),
        (gift, 7, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"hookbus fallback: invalid reply"})),
        (message, 2, json!({"ActionStatus":"OK","ErrorCode":2,"ErrorInfo":denied})),
        (message, 10150, json!({"ActionStatus":"OK","ErrorCode":10150,"ErrorInfo":denied})),
        (message, 102150, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""})),
    ];
    for (command, code, expected) in cases {
        let prefix = unique("t");
        let responder = backend.responder(&prefix, code, Duration::ZERO).await;
        let gateway = backend.gateway(&prefix, None, &[]).await;
        let body = hookbus::samples::sample(command).unwrap();
        let (status, answer) = gateway.post(command, body).await;
        assert_eq!((status, &answer), (200, &expected), "{command} answered {code}");
        gateway.stop().await;
        responder.abort();
    }
}

async fn slow_responder(backend: Backend) {
    let prefix = unique("t");
    let _responder = backend.responder(&prefix, 0, Duration::from_millis(900)).await;
    let gateway = backend.gateway(&prefix, None, &["--decision-timeout", "300ms"]).await;
    let started = Instant::now();
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"hookbus fallback: decision timeout"}));
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(800), "the fallback at the deadline, not the slow reply: {elapsed:?}");
    gateway.stop().await;
}

async fn no_responders(backend: Backend) {
    let prefix = unique("t");
    let gateway = backend.gateway(&prefix, None, &["--message-fallback", "deny"]).await;
    let started = Instant::now();
    let (status, answer) = gateway.post("Group.CallbackBeforeSendMsg", br#"{"GroupId":"g"}"#).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 1);
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: no responders");
    assert!(elapsed < Duration::from_millis(1000), "no waiting for the 1500ms deadline: {elapsed:?}");
    gateway.stop().await;
}

/// Posts `count` events through `gateway` and checks that every one was accepted.
async fn burst_all(gateway: &Running, count: usize, connections: usize) -> HashSet<String> {
    let sent = burst(gateway.addr, 0..count, connections).await;
    assert_eq!(sent.len(), count, "every event answered 200");
    sent
}

/// Reads until every event of `sent` arrived and checks that nothing else did.
async fn collect_exactly(watcher: &mut crate::brokers::Watcher, sent: &HashSet<String>) -> usize {
    let collected = collect(watcher, sent, Duration::from_secs(60)).await;
    assert_eq!(&collected.seen, sent);
    collected.received
}

async fn burst_arrives(backend: Backend) {
    let prefix = unique("t");
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, None, &[]).await;
    let sent = burst_all(&gateway, 3000, 8).await;
    let received = collect_exactly(&mut watcher, &sent).await;
    println!("{backend:?} burst: acknowledged {}, delivered {received}, lost 0", sent.len());
    assert_eq!(gateway.stop().await.lost, 0);
}

async fn cut_link(backend: Backend) {
    let prefix = unique("t");
    let proxy = Proxy::start(backend.upstream()).await;
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, Some(proxy.addr), &[]).await;
    let cutter = tokio::spawn(async move {
        let mut cuts = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cuts += proxy.cut();
        }
        (proxy, cuts)
    });
    let sent = burst_all(&gateway, 3000, 8).await;
    let (_proxy, cuts) = cutter.await.unwrap();
    let received = collect_exactly(&mut watcher, &sent).await;
    let duplicates = received - sent.len();
    println!(
        "{backend:?} cut link: cuts {cuts}, acknowledged {}, delivered {received}, duplicates {duplicates}, lost 0",
        sent.len()
    );
    assert!(cuts > 0, "the link was cut while the gateway was connected");
    assert_eq!(gateway.stop().await.lost, 0);
}

/// Each room's events are posted in sequence from one connection while the broker link is cut
/// three times. Retries repeat events: a retry republishes the unconfirmed event and everything
/// after it, so the last copy of each event arrives in the room's order.
async fn room_order(backend: Backend) {
    let prefix = unique("t");
    let proxy = Proxy::start(backend.upstream()).await;
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, Some(proxy.addr), &[]).await;
    let (rooms, per_room) = (8, 300);
    let posters: Vec<_> = (0..rooms)
        .map(|room| {
            let addr = gateway.addr;
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for seq in 0..per_room {
                    let body = json!({"CallbackCommand":"Live.CallbackAfterMemberStateChanged","RoomId":format!("room-{room}"),"Seq":seq});
                    let (status, _) = client.post("Live.CallbackAfterMemberStateChanged", body.to_string().as_bytes()).await;
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.cut();
    }
    for poster in posters {
        poster.await.unwrap();
    }
    // Once stopped, the gateway has had every event confirmed: all copies are on their way.
    assert_eq!(gateway.stop().await.lost, 0);
    let mut arrivals: Vec<Vec<u64>> = vec![Vec::new(); rooms];
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Every event seen, then quiet for half a second: no copy is still coming.
        let wait = if seen.len() == rooms * per_room as usize {
            Duration::from_millis(500)
        } else {
            deadline - Instant::now()
        };
        let Some(event) = watcher.try_next(wait).await else { break };
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        let room: usize = body["RoomId"].as_str().unwrap()["room-".len()..].parse().unwrap();
        let seq = body["Seq"].as_u64().unwrap();
        arrivals[room].push(seq);
        seen.insert((room, seq));
    }
    assert_eq!(seen.len(), rooms * per_room as usize, "every event arrived");
    let mut duplicates = 0;
    for (room, arrived) in arrivals.iter().enumerate() {
        duplicates += arrived.len() - per_room as usize;
        let mut last = vec![0usize; per_room as usize];
        for (position, &seq) in arrived.iter().enumerate() {
            last[seq as usize] = position;
        }
        for seq in 1..per_room as usize {
            assert!(
                last[seq - 1] < last[seq],
                "room-{room}: the last copy of {seq} came before the last copy of {}",
                seq - 1
            );
        }
    }
    println!(
        "{backend:?} room order: {} events, last copies in order per room, duplicates {duplicates}",
        rooms * per_room as usize
    );
}

const RULES: &str = r#"
[[rule]]
name = "banned senders"
command = "Live.CallbackBeforeSendGift"
when = "always"
if = [{ field = "/GiftWater/From_Account", in = ["spammer1", "spammer2"] }]
decision = "deny"

[[rule]]
name = "small gifts during outages"
command = "Live.CallbackBeforeSendGift"
when = "fallback"
if = [{ field = "/GiftWater/Coins", le = 100 }]
decision = "allow"
"#;

fn gift(from: &str, coins: u64) -> Vec<u8> {
    json!({"CallbackCommand":"Live.CallbackBeforeSendGift","RoomId":"r","GiftWater":{"From_Account":from,"Coins":coins}})
        .to_string()
        .into_bytes()
}

/// The watcher sees the requests too: with it subscribed, nobody answering is a timeout.
async fn rules_and_audit(backend: Backend) {
    let prefix = unique("t");
    let rules = crate::support::tempdir("rules").join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let mut watcher = backend.watch(&prefix).await;
    let flags = ["--rules", rules.to_str().unwrap(), "--audit", "--decision-timeout", "800ms"];
    let gateway = backend.gateway(&prefix, None, &flags).await;
    let command = "Live.CallbackBeforeSendGift";
    // Nobody answers: a small gift is allowed by the fallback rule, a big one denied by the flag.
    let (_, answer) = gateway.post(command, &gift("fan", 50)).await;
    assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}), "small gift");
    let (_, answer) = gateway.post(command, &gift("fan", 5000)).await;
    assert_eq!(answer["ErrorInfo"], "hookbus fallback: decision timeout", "big gift: {answer}");
    // A banned sender is refused here, at once, without asking.
    let started = Instant::now();
    let (_, answer) = gateway.post(command, &gift("spammer1", 50)).await;
    assert_eq!(answer, json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"hookbus rule: banned senders"}));
    assert!(started.elapsed() < Duration::from_millis(300), "no waiting: {:?}", started.elapsed());
    // A valid reply wins over the fallback rule.
    let _responder = backend.responder(&prefix, 102150, Duration::ZERO).await;
    let (_, answer) = gateway.post(command, &gift("fan", 51)).await;
    assert_eq!(answer["ErrorCode"], 102150, "the responder's decision: {answer}");
    let text = crate::support::metrics(gateway.addr).await;
    assert!(text.contains("hookbus_rule_decisions_total{rule=\"banned senders\"} 1"), "{text}");
    assert!(text.contains(&format!("hookbus_decisions_total{{command=\"{command}\",outcome=\"timeout\",rule=\"small gifts during outages\"}} 1")), "{text}");
    assert_eq!(gateway.stop().await.lost, 0);

    let (mut requests, mut audits) = (Vec::new(), Vec::new());
    while let Some(event) = watcher.try_next(Duration::from_secs(3)).await {
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        if event.destination == format!("{prefix}.audit.{command}") {
            assert_eq!(event.attributes.get("type").map(String::as_str), Some("hookbus.decision"));
            audits.push(body);
        } else if event.destination == format!("{prefix}.decide.{command}") {
            requests.push(body["GiftWater"]["From_Account"].as_str().unwrap().to_owned());
        }
        if audits.len() == 4 && requests.len() == 3 {
            break;
        }
    }
    assert!(!requests.contains(&"spammer1".to_owned()), "a rule that always applies asks nobody: {requests:?}");
    assert_eq!(requests.len(), 3, "{backend:?}: {requests:?}");
    let mut seen: Vec<(String, Option<String>, i64, u64)> = audits
        .iter()
        .map(|audit| {
            assert_eq!(audit["command"], command);
            assert!(audit["latency_ms"].is_number() && audit["id"].is_string());
            let rule = audit["rule"].as_str().map(String::from);
            (
                audit["outcome"].as_str().unwrap().to_owned(),
                rule,
                audit["code"].as_i64().unwrap(),
                audit["body"]["GiftWater"]["Coins"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let expected = [
        ("reply".into(), None, 102150, 51),
        ("rule".into(), Some("banned senders".into()), 1, 50),
        ("timeout".into(), None, 1, 5000),
        ("timeout".into(), Some("small gifts during outages".into()), 0, 50),
    ];
    assert_eq!(seen, expected, "{backend:?}: one audit event per decision");
}

async fn made_blocking(backend: Backend) {
    let prefix = unique("t");
    let command = "Custom.CallbackBeforeSomethingNew";
    let rules = crate::support::tempdir("rules").join("respond.toml");
    let rule = format!("[[rule]]\nname = \"custom\"\ncommand = \"{command}\"\nwhen = \"always\"\ndecision = 777\n");
    std::fs::write(&rules, rule).unwrap();
    let responder = backend.respond(&prefix, &["--rules", rules.to_str().unwrap()]).await;
    let blocking = format!("{command}=deny");
    let gateway = backend.gateway(&prefix, None, &["--blocking", &blocking, "--decision-timeout", "300ms"]).await;
    let (status, answer) = gateway.post(command, br#"{"RoomId":"r"}"#).await;
    assert_eq!(
        (status, &answer),
        (200, &json!({"ActionStatus":"OK","ErrorCode":777,"ErrorInfo":"denied by rule custom"}))
    );
    responder.abort();
    let _ = responder.await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the responder's subscription is gone
    let (_, answer) = gateway.post(command, br#"{"RoomId":"r2"}"#).await;
    assert_eq!(answer["ErrorCode"], 1, "the fallback the flag set: {answer}");
    gateway.stop().await;
}

/// A caller's W3C trace context is carried as the CloudEvents distributed-tracing extension on
/// events and decision requests; without one, each event starts a trace of its own.
async fn trace_context(backend: Backend) {
    let prefix = unique("t");
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, None, &["--decision-timeout", "300ms"]).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [("traceparent", parent), ("tracestate", "vendor=opaque")];
    for command in ["Live.CallbackAfterCreateRoom", "Live.CallbackBeforeSendGift"] {
        let target = crate::support::signed(command);
        let (status, _) = crate::support::request_with(
            gateway.addr,
            hyper::Method::POST,
            &target,
            &headers,
            br#"{"RoomId":"traced"}"#,
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = gateway.post("Live.CallbackAfterDestroyRoom", br#"{"RoomId":"untraced"}"#).await;
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = watcher.next(Duration::from_secs(20)).await;
        let attribute = |name: &str| event.attributes.get(name).cloned();
        seen.push((event.destination.clone(), attribute("traceparent"), attribute("tracestate"), attribute("id")));
    }
    for (destination, traceparent, tracestate, id) in seen {
        if destination.ends_with("CallbackAfterDestroyRoom") {
            let traceparent = traceparent.expect("a new trace");
            assert!(hookbus::traces::valid(&traceparent), "{traceparent}");
            assert!(traceparent.contains(&id.unwrap().replace('-', "")), "its trace id is the event id");
            assert_eq!(tracestate, None);
        } else {
            assert_eq!(traceparent.as_deref(), Some(parent), "{backend:?} {destination}");
            assert_eq!(tracestate.as_deref(), Some("vendor=opaque"), "{backend:?} {destination}");
        }
    }
    gateway.stop().await;
}
