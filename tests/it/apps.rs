//! Several apps and tokens in one gateway: any of several tokens signs, each app has its own
//! prefix and SdkAppid, and SIGHUP rotates tokens without refusing a request signed with one
//! that is valid at the time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;

use crate::brokers::Backend;
use crate::support::{
    eventually, logged, metrics, request, signal, signed_as, spawn_binary_with_logs, tempdir, unique, Running,
};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

const COMMAND: &str = "Live.CallbackAfterCreateRoom";

/// Posts a callback for `app` signed with `token`; returns the status.
async fn post(addr: std::net::SocketAddr, app: &str, token: &str, room: &str) -> u16 {
    let body = format!(r#"{{"RoomId":"{room}"}}"#);
    request(addr, Method::POST, &signed_as(COMMAND, app, token, now()), body.as_bytes()).await.0
}

#[tokio::test]
async fn a_request_signed_with_any_of_the_tokens_is_accepted() {
    let flags = ["--token", "live-token", "--token", "chat-token"];
    let (gateway, captured) = Running::stdout(&flags).await;
    assert_eq!(post(gateway.addr, "1", "live-token", "a").await, 200);
    assert_eq!(post(gateway.addr, "1", "chat-token", "b").await, 200);
    assert_eq!(post(gateway.addr, "1", "other-token", "c").await, 401);
    let text = metrics(gateway.addr).await;
    assert!(text.contains("hookbus_signatures_total{app=\"1\",token=\"token-1\"} 1"), "{text}");
    assert!(text.contains("hookbus_signatures_total{app=\"1\",token=\"token-2\"} 1"), "{text}");
    assert!(!text.contains("live-token") && !text.contains("chat-token"), "tokens are never shown");
    gateway.stop().await;
    assert_eq!(captured.lines().len(), 2);
}

#[tokio::test]
async fn each_app_lands_on_its_own_prefix_and_unlisted_apps_are_refused() {
    let (staging, production) = (unique("staging"), unique("prod"));
    let mut staging_events = Backend::Nats.watch(&staging).await;
    let mut production_events = Backend::Nats.watch(&production).await;
    let apps = tempdir("apps").join("apps.toml");
    let file = format!("[[app]]\nsdk_app_id = \"1400000002\"\nprefix = \"{production}\"\ntokens = [\"prod-token\"]\n");
    std::fs::write(&apps, file).unwrap();
    let staging_app = format!("1400000001:prefix={staging},token=staging-token");
    let extra = ["--app", &staging_app, "--apps", apps.to_str().unwrap()];
    let gateway = Backend::Nats.gateway(&unique("t"), None, &extra).await;
    assert_eq!(post(gateway.addr, "1400000001", "staging-token", "s").await, 200);
    assert_eq!(post(gateway.addr, "1400000002", "prod-token", "p").await, 200);
    assert_eq!(post(gateway.addr, "1400000002", "staging-token", "x").await, 401, "each app its own token");
    assert_eq!(post(gateway.addr, "1400000009", "prod-token", "x").await, 403, "an app not listed");
    let event = staging_events.next(Duration::from_secs(10)).await;
    assert_eq!(event.destination, format!("{staging}.{COMMAND}"));
    assert_eq!(event.attributes.get("sdkappid").map(String::as_str), Some("1400000001"));
    let event = production_events.next(Duration::from_secs(10)).await;
    assert_eq!(event.destination, format!("{production}.{COMMAND}"));
    assert!(staging_events.try_next(Duration::from_millis(300)).await.is_none(), "nothing else");
    gateway.stop().await;
}

// The binary is started and signalled with blocking calls: keep a worker free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rotate_on_sighup_without_refusing_a_valid_request() {
    let file = tempdir("token").join("live");
    std::fs::write(&file, "old-token\n").unwrap();
    let token_file = format!("live={}", file.display());
    let (mut child, addr, logs) = spawn_binary_with_logs(&["--token-file", &token_file]);
    // A steady stream of callbacks, each signed with the token valid when it is sent.
    let current = Arc::new(Mutex::new("old-token".to_owned()));
    let sent: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let stream = tokio::spawn({
        let (current, sent) = (current.clone(), sent.clone());
        async move {
            for n in 0.. {
                let token = current.lock().unwrap().clone();
                let status = post(addr, "1", &token, &format!("room-{n}")).await;
                sent.lock().unwrap().push((token, status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    // Waits for `n` more callbacks sent, rather than for a time that stands for them.
    let more = |n: usize| {
        let sent = sent.clone();
        async move {
            let start = sent.lock().unwrap().len();
            eventually("callbacks sent", Duration::from_secs(10), || {
                let sent = sent.clone();
                async move { sent.lock().unwrap().len() >= start + n }
            })
            .await;
        }
    };
    more(20).await;
    // The rotation: the new token next to the old one, switch the sender, then the old one out.
    std::fs::write(&file, "old-token\nnew-token\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "token live.2 added");
    *current.lock().unwrap() = "new-token".to_owned();
    more(20).await;
    std::fs::write(&file, "new-token\n").unwrap();
    signal(&child, "HUP");
    logged(&logs, "token live changed");
    more(20).await;
    stream.abort();
    let sent = sent.lock().unwrap().clone();
    let refused: Vec<_> = sent.iter().filter(|(_, status)| *status != 200).collect();
    let with_new = sent.iter().filter(|(token, _)| token == "new-token").count();
    assert!(refused.is_empty(), "{} of {} refused: {refused:?}", refused.len(), sent.len());
    assert!(with_new > 10 && sent.len() - with_new > 10, "both tokens were used: {}", sent.len());
    assert_eq!(post(addr, "1", "old-token", "late").await, 401, "the removed token is refused");
    assert_eq!(post(addr, "1", "new-token", "fine").await, 200);
    println!("rotation: {} signed requests during two reloads, none refused", sent.len());
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_file_that_no_longer_parses_leaves_the_settings_in_force() {
    let file = tempdir("apps").join("apps.toml");
    std::fs::write(&file, "[[app]]\nsdk_app_id = \"1400000001\"\ntokens = [\"app-token\"]\n").unwrap();
    let (mut child, addr, logs) = spawn_binary_with_logs(&["--apps", file.to_str().unwrap()]);
    assert_eq!(post(addr, "1400000001", "app-token", "a").await, 200);
    std::fs::write(&file, "[[app]\nsdk_app_id = ").unwrap();
    signal(&child, "HUP");
    logged(&logs, "settings not reloaded");
    assert_eq!(post(addr, "1400000001", "app-token", "b").await, 200, "the old settings stay");
    assert_eq!(post(addr, "1400000002", "app-token", "c").await, 403);
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
}
