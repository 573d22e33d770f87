//! What only the NATS bus does: responders that rewrite messages with a plain NATS client,
//! JetStream storage and ids, and the start-up check for a stream.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::future::join_all;
use futures_util::StreamExt;
use hookbus::bus::Bus;
use hookbus::config::serve_flags;
use serde_json::json;

use crate::brokers::{nats_url as url, Backend};
use crate::support::{samples, unique, Client};

#[tokio::test]
async fn a_plain_nats_responder_may_rewrite_the_message() {
    let prefix = unique("t");
    let client = async_nats::connect(url()).await.unwrap();
    let mut requests =
        client.queue_subscribe(format!("{prefix}.decide.Group.CallbackBeforeSendMsg"), "q".into()).await.unwrap();
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
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let body = hookbus::samples::sample("Group.CallbackBeforeSendMsg").unwrap();
    let (status, answer) = gateway.post("Group.CallbackBeforeSendMsg", body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["ErrorCode"], 0);
    assert_eq!(answer["MsgBody"][0]["MsgContent"]["Text"], "***");
    assert_eq!(answer["CloudCustomData"], "checked");
    replier.await.unwrap();
    gateway.stop().await;
}

/// Requests that arrive together are written to the server together; each still gets its own
/// reply, and the replies may come in any order.
#[tokio::test]
async fn concurrent_decisions_each_get_their_own_reply() {
    let prefix = unique("t");
    let client = async_nats::connect(url()).await.unwrap();
    let mut requests = client.subscribe(format!("{prefix}.decide.Live.CallbackBeforeSendGift")).await.unwrap();
    client.flush().await.unwrap();
    let replier = tokio::spawn({
        let client = client.clone();
        async move {
            // Gathered, then answered last first.
            let mut gathered = Vec::new();
            while gathered.len() < 64 {
                gathered.push(requests.next().await.unwrap());
            }
            for request in gathered.into_iter().rev() {
                let body: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
                let reply = json!({"ErrorCode": 0, "ErrorInfo": body["RoomId"]});
                client.publish(request.reply.unwrap(), reply.to_string().into()).await.unwrap();
            }
            client.flush().await.unwrap();
        }
    });
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let bodies: Vec<String> = (0..64).map(|n| format!(r#"{{"RoomId":"room-{n}"}}"#)).collect();
    let answers =
        join_all(bodies.iter().map(|body| gateway.post("Live.CallbackBeforeSendGift", body.as_bytes()))).await;
    for (n, (status, answer)) in answers.iter().enumerate() {
        assert_eq!(*status, 200);
        assert_eq!(answer["ErrorInfo"], format!("room-{n}"), "request {n} got {answer}");
    }
    replier.await.unwrap();
    gateway.stop().await;
}

#[tokio::test]
async fn jetstream_stores_every_event_with_its_id_and_skips_stream_acks_in_decisions() {
    let prefix = unique("t");
    let stream = unique("S");
    let _responder = Backend::Nats.responder(&prefix, 102100, Duration::ZERO).await;
    let flags = ["--nats-jetstream", "--nats-create-stream", &stream];
    let gateway = Backend::Nats.gateway(&prefix, None, &flags).await;
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
    // The gift request may be stored before the events: the publisher lets them gather first.
    for sequence in 1..=stored {
        let message = info.get_raw_message(sequence).await.unwrap();
        let header = |name| message.headers.get(name).map(|v| v.as_str().to_owned());
        if header("ce-type").as_deref() == Some("Live.CallbackBeforeSendGift") {
            assert_eq!(header("Nats-Msg-Id"), None, "a request, not an event");
            continue;
        }
        assert!(header("Nats-Msg-Id").is_some(), "event {sequence}");
        assert_eq!(header("Nats-Msg-Id"), header("ce-id"), "event {sequence}");
    }
    context.delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn jetstream_without_a_stream_is_a_clear_start_up_error() {
    let flags = ["--bus", "nats", "--nats-url", &url(), "--prefix", &unique("t"), "--nats-jetstream"];
    let options = serve_flags(&flags).unwrap().bus.options();
    let error = Bus::connect(options).await.err().expect("refused").to_string();
    assert!(error.contains("no JetStream stream covers"), "{error}");
    assert!(error.contains("--nats-create-stream"), "{error}");
}

/// Each documented Chat "Before" callback, with its documented sample, answered by a plain NATS
/// responder: its own codes pass, another command's are refused for the fallback (allow, as
/// Tencent does), and the fields it may rewrite pass with ErrorCode 0.
#[tokio::test]
async fn each_documented_chat_callback_takes_its_own_codes() {
    let cases: [(&str, serde_json::Value, serde_json::Value); 8] = [
        (
            "C2C.CallbackBeforeSendMsg",
            json!({"ErrorCode":120001,"ErrorInfo":"blocked"}),
            json!({"ActionStatus":"OK","ErrorCode":120001,"ErrorInfo":"blocked"}),
        ),
        (
            "C2C.CallbackBeforeSendMsg",
            json!({"ErrorCode":10100}),
            json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}),
        ),
        (
            "C2C.CallbackBeforeSendMsg",
            json!({"ErrorCode":0,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}]}),
            json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}]}),
        ),
        (
            "Group.CallbackBeforeApplyJoinGroup",
            json!({"ErrorCode":10150,"ErrorInfo":"full"}),
            json!({"ActionStatus":"OK","ErrorCode":10150,"ErrorInfo":"full"}),
        ),
        (
            "Group.CallbackBeforeApplyJoinGroup",
            json!({"ErrorCode":2}),
            json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}),
        ),
        (
            "Group.CallbackBeforeCreateGroup",
            json!({"ErrorCode":1,"ErrorInfo":"no"}),
            json!({"ActionStatus":"OK","ErrorCode":1,"ErrorInfo":"no"}),
        ),
        (
            "Group.CallbackBeforeCreateGroup",
            json!({"ErrorCode":120001}),
            json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}),
        ),
        (
            "Group.CallbackBeforeInviteJoinGroup",
            json!({"ErrorCode":0,"RefusedMembers_Account":["jared"],"CloudCustomData":"x"}),
            json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":"","RefusedMembers_Account":["jared"]}),
        ),
    ];
    let prefix = unique("t");
    let client = async_nats::connect(url()).await.unwrap();
    let mut requests = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let replies: Vec<_> = cases.iter().map(|(command, reply, _)| (command.to_string(), reply.to_string())).collect();
    let responder = tokio::spawn({
        let (client, prefix) = (client.clone(), prefix.clone());
        async move {
            for (command, reply) in replies {
                let request = requests.next().await.unwrap();
                assert_eq!(request.subject.as_str(), format!("{prefix}.decide.{command}"));
                client.publish(request.reply.unwrap(), reply.into()).await.unwrap();
                client.flush().await.unwrap();
            }
        }
    });
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let mut client = Client::connect(gateway.addr).await;
    for (case, (command, _, expected)) in cases.iter().enumerate() {
        // The documented sample, told apart per case (the same signed request twice is a replay).
        let mut sample: serde_json::Value = serde_json::from_slice(hookbus::samples::sample(command).unwrap()).unwrap();
        sample["Case"] = json!(case);
        let (status, answer) = client.post(command, sample.to_string().as_bytes()).await;
        assert_eq!((status, &answer), (200, expected), "{command}");
    }
    responder.await.unwrap();
    gateway.stop().await;
}

/// A raw NATS connection, as a hostile responder would hold one: whatever it writes reaches
/// the server as written.
struct RawNats {
    reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl RawNats {
    /// Connected (with headers) and subscribed to `subject`, the subscription live.
    async fn subscribed(subject: &str) -> RawNats {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(crate::support::socket_of(&url())).await.unwrap();
        let (read, writer) = stream.into_split();
        let mut raw = RawNats { reader: tokio::io::BufReader::new(read), writer };
        let mut info = String::new();
        raw.reader.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        let hello = format!("CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB {subject} 1\r\nPING\r\n");
        raw.writer.write_all(hello.as_bytes()).await.unwrap();
        loop {
            let mut line = String::new();
            raw.reader.read_line(&mut line).await.unwrap();
            if line.starts_with("PONG") {
                return raw;
            }
        }
    }

    /// The reply subject of the next message that has one.
    async fn next_reply_subject(&mut self) -> String {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            let words: Vec<&str> = line.split_whitespace().collect();
            let (reply, size) = match words.as_slice() {
                ["HMSG", _, _, reply, _, total] => (Some(reply.to_string()), total.parse::<usize>().unwrap()),
                ["HMSG", _, _, _, total] => (None, total.parse().unwrap()),
                ["MSG", _, _, reply, size] => (Some(reply.to_string()), size.parse().unwrap()),
                ["MSG", _, _, size] => (None, size.parse().unwrap()),
                _ => continue,
            };
            let mut data = vec![0; size + 2];
            self.reader.read_exact(&mut data).await.unwrap();
            if let Some(reply) = reply {
                return reply;
            }
        }
    }

    /// Publishes `payload` to `subject` with a header block written byte for byte.
    async fn hpub(&mut self, subject: &str, header: &[u8], payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let line = format!("HPUB {subject} {} {}\r\n", header.len(), header.len() + payload.len());
        let frame = [line.as_bytes(), header, payload, b"\r\nPING\r\n"].concat();
        self.writer.write_all(&frame).await.unwrap();
    }
}

/// A responder's reply whose header holds a bare CR (legal on the wire, not in a header value)
/// used to panic the client's connection task: the link was gone for good while the gateway
/// still read "connected", and every event after it was answered 200 and never published. Now
/// the decision is read, and the link carries everything after it.
#[tokio::test]
async fn a_reply_with_a_bare_cr_in_a_header_costs_nothing() {
    let prefix = unique("t");
    let mut responder = RawNats::subscribed(&format!("{prefix}.>")).await;
    let mut watcher = Backend::Nats.watch(&prefix).await;
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let answering = tokio::spawn(async move {
        let reply_to = responder.next_reply_subject().await;
        responder.hpub(&reply_to, b"NATS/1.0\r\nX-Evil: a\rb\r\n\r\n", br#"{"ErrorCode":0,"ErrorInfo":"evil"}"#).await;
        responder
    });
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r0"}"#).await;
    assert_eq!((status, answer["ErrorInfo"].as_str()), (200, Some("evil")), "the reply is read: {answer}");
    let _responder = answering.await.unwrap();
    let expected: std::collections::HashSet<String> = (1..=20).map(|n| format!("room-{n}")).collect();
    for room in &expected {
        let body = format!(r#"{{"RoomId":"{room}"}}"#);
        assert_eq!(gateway.post("Live.CallbackAfterCreateRoom", body.as_bytes()).await.0, 200);
    }
    // Panics unless every event after the reply is published.
    crate::brokers::collect(&mut watcher, &expected, Duration::from_secs(10)).await;
    let metrics = crate::support::metrics(gateway.addr).await;
    assert_eq!(crate::support::metric(&metrics, "hookbus_bus_connected"), 1);
    assert_eq!(crate::support::metric(&metrics, "hookbus_bus_clients_replaced_total"), 0, "the link held");
    assert_eq!(gateway.stop().await.lost, 0);
}

/// Whatever ends the client's connection task (a panic inside the client, a drain), the link is
/// seen dead and replaced by a new client: events accepted around it are all published, and
/// decisions are made again, without a restart.
#[tokio::test]
async fn a_gone_connection_task_is_seen_and_its_client_replaced() {
    let prefix = unique("t");
    let _responder = Backend::Nats.responder(&prefix, 102107, Duration::ZERO).await;
    let mut watcher = Backend::Nats.watch(&prefix).await;
    let mut flags = Backend::Nats.flags(None);
    flags.extend(
        ["--prefix", &prefix, "--sdk-app-id", crate::support::APP, "--token", crate::support::TOKEN].map(String::from),
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let bus = Bus::connect(serve_flags(&flags).unwrap().bus.options()).await.unwrap();
    let gateway = crate::support::Running::start(&flags, bus.clone()).await;
    let Bus::Nats(nats) = &bus else { unreachable!("a NATS gateway") };
    let mut expected = std::collections::HashSet::new();
    for n in 0..40 {
        if n == 10 {
            nats.end_connection_task().await;
        }
        let room = format!("room-{n}");
        let body = format!(r#"{{"RoomId":"{room}"}}"#);
        assert_eq!(gateway.post("Live.CallbackAfterCreateRoom", body.as_bytes()).await.0, 200);
        expected.insert(room);
    }
    crate::support::eventually("a new client", Duration::from_secs(10), || async {
        let metrics = crate::support::metrics(gateway.addr).await;
        crate::support::metric(&metrics, "hookbus_bus_clients_replaced_total") == 1
            && crate::support::metric(&metrics, "hookbus_bus_connected") == 1
    })
    .await;
    // Panics unless every event answered 200 is published.
    crate::brokers::collect(&mut watcher, &expected, Duration::from_secs(15)).await;
    let (status, answer) = gateway.post("Live.CallbackBeforeSendGift", br#"{"RoomId":"r"}"#).await;
    assert_eq!((status, answer["ErrorCode"].as_i64()), (200, Some(102107)), "decided again: {answer}");
    assert_eq!(gateway.stop().await.lost, 0);
}

/// The same signed gift twice, the second while the first is being decided: one request on
/// the bus, and both answered with the responder's decision (the second used to take over the
/// first one's reply and both fell back).
#[tokio::test]
async fn a_replay_during_its_decision_waits_for_it() {
    let prefix = unique("t");
    let _responder = Backend::Nats.responder(&prefix, 102107, Duration::from_millis(500)).await;
    let gateway = Backend::Nats.gateway(&prefix, None, &[]).await;
    let target = crate::support::signed("Live.CallbackBeforeSendGift");
    let post = |delay: u64| {
        let target = target.clone();
        let addr = gateway.addr;
        async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let (status, body) =
                crate::support::request(addr, hyper::Method::POST, &target, br#"{"RoomId":"r"}"#).await;
            (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
        }
    };
    let (first, second) = tokio::join!(post(0), post(100));
    for (status, answer) in [first, second] {
        assert_eq!((status, answer["ErrorCode"].as_i64()), (200, Some(102107)), "{answer}");
    }
    let metrics = crate::support::metrics(gateway.addr).await;
    assert_eq!(crate::support::metric(&metrics, "hookbus_replays_total"), 1, "{metrics}");
    gateway.stop().await;
}
