//! The behaviour every bus must have, run on each real broker by `bus_tests!`: exact events,
//! reply codes, deadlines, no responders, a burst, and a cut broker link.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::backend::{Backend, Watcher};
use crate::support::{samples, unique, Client, Gateway, Proxy, APP};

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
        assert_eq!(uuid::Uuid::parse_str(attribute("id").unwrap()).unwrap().get_version_num(), 7);
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
        let body = hookbus::simulate::sample(command).unwrap();
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
    assert!(elapsed < Duration::from_millis(300 + 200), "fallback within the deadline plus slack: {elapsed:?}");
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
    assert!(elapsed < Duration::from_millis(200), "no waiting for the 1500ms deadline: {elapsed:?}");
    gateway.stop().await;
}

/// Posts `count` distinct events from `connections` keep-alive clients; returns their RoomIds.
pub async fn burst(gateway: &Gateway, count: usize, connections: usize) -> HashSet<String> {
    burst_to(gateway.addr, count, connections).await
}

pub async fn burst_to(addr: std::net::SocketAddr, count: usize, connections: usize) -> HashSet<String> {
    let mut tasks = Vec::new();
    for worker in 0..connections {
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

/// Reads events until every one of `expected` has arrived; returns how many were read.
pub async fn collect(watcher: &mut Watcher, expected: &HashSet<String>, limit: Duration) -> usize {
    let mut seen = HashSet::new();
    let mut received = 0;
    let deadline = Instant::now() + limit;
    while seen.len() < expected.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "only {} of {} events arrived", seen.len(), expected.len());
        let event = watcher.next(left).await;
        let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        seen.insert(body["RoomId"].as_str().unwrap().to_owned());
        received += 1;
    }
    assert_eq!(&seen, expected);
    received
}

async fn burst_arrives(backend: Backend) {
    let prefix = unique("t");
    let mut watcher = backend.watch(&prefix).await;
    let gateway = backend.gateway(&prefix, None, &[]).await;
    let sent = burst(&gateway, 3000, 8).await;
    let received = collect(&mut watcher, &sent, Duration::from_secs(60)).await;
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
    let sent = burst(&gateway, 3000, 8).await;
    let (_proxy, cuts) = cutter.await.unwrap();
    let received = collect(&mut watcher, &sent, Duration::from_secs(60)).await;
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
