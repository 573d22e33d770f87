//! Nothing acknowledged is lost: a gateway killed mid-burst, overload with the broker away,
//! damaged spool files, and SIGTERM during a burst. Each test prints its figures
//! (acknowledged, delivered, duplicated, lost). The broker is the real NATS server, reached
//! through a proxy the test can take down; `buses` cuts links on every bus.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use hyper::Method;

use crate::brokers::{collect, nats_url, Backend, Watcher};
use crate::support::{
    burst, eventually, metric, metrics, request, signal, spawn_binary, tempdir, unique, Proxy, APP, TOKEN,
};

fn flags<'a>(prefix: &'a str, url: &'a str, spool: &'a str) -> Vec<&'a str> {
    vec![
        "--bus",
        "nats",
        "--nats-url",
        url,
        "--prefix",
        prefix,
        "--sdk-app-id",
        APP,
        "--token",
        TOKEN,
        "--spool-dir",
        spool,
    ]
}

/// A spooled gateway binary in the middle of a burst, its NATS link (through a proxy) down
/// for the last 300 ms so that events pile up in the spool.
struct Burst {
    prefix: String,
    spool: String,
    watcher: Watcher,
    child: std::process::Child,
    burst: tokio::task::JoinHandle<HashSet<String>>,
    _proxy: Proxy,
}

async fn burst_with_the_broker_going_away(extra: &[&str]) -> Burst {
    let prefix = unique("t");
    let spool = tempdir("spool").to_str().unwrap().to_owned();
    let watcher = Backend::Nats.watch(&prefix).await;
    let proxy = Proxy::start(Backend::Nats.upstream()).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut flags = flags(&prefix, &via_proxy, &spool);
    flags.extend_from_slice(extra);
    let (child, addr) = spawn_binary(&flags);
    let burst = tokio::spawn(burst(addr, 0..20_000, 8));
    eventually("events confirmed before the broker goes", Duration::from_secs(10), || async {
        metric(&metrics(addr).await, "hookbus_publishes_confirmed_total") > 0
    })
    .await;
    proxy.set_down(true);
    eventually("events waiting while the broker is away", Duration::from_secs(10), || async {
        metric(&metrics(addr).await, "hookbus_outbox_depth") > 100
    })
    .await;
    Burst { prefix, spool, watcher, child, burst, _proxy: proxy }
}

// The binary is started and awaited with blocking calls: keep a worker free for the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_with_a_spool_loses_nothing_acknowledged() {
    let Burst { prefix, spool, mut watcher, mut child, burst, _proxy } = burst_with_the_broker_going_away(&[]).await;
    signal(&child, "KILL");
    child.wait().unwrap();
    let acknowledged = burst.await.unwrap();
    assert!(!acknowledged.is_empty() && acknowledged.len() < 20_000, "killed mid-burst: {}", acknowledged.len());

    let url = nats_url();
    let (mut restarted, _) = spawn_binary(&flags(&prefix, &url, &spool));
    let collected = collect(&mut watcher, &acknowledged, Duration::from_secs(60)).await;
    let received = collected.received;
    println!(
        "sigkill: acknowledged {}, delivered {received} (distinct {}), duplicates {}, lost 0",
        acknowledged.len(),
        collected.seen.len(),
        received - acknowledged.len().min(received)
    );
    signal(&restarted, "TERM");
    assert!(restarted.wait().unwrap().success());
}

#[tokio::test]
async fn overload_with_the_broker_away_answers_503_and_delivers_every_200() {
    // Refused at once, not after waiting for room that cannot come (`--outbox-wait` is tested in
    // outbox.rs): 300 refusals would take 20 s.
    let memory: &[&str] = &["--outbox-capacity", "300", "--outbox-wait", "0"];
    for (name, limit) in [("memory", memory), ("spool", &["--spool-max-bytes", "60000"])] {
        let prefix = unique("t");
        let spool = tempdir("spool");
        let mut watcher = Backend::Nats.watch(&prefix).await;
        let proxy = Proxy::start(Backend::Nats.upstream()).await;
        let mut extra = limit.to_vec();
        let spool_flags = ["--spool-dir", spool.to_str().unwrap()];
        if name == "spool" {
            extra.extend(spool_flags);
        }
        let gateway = Backend::Nats.gateway(&prefix, Some(proxy.addr), &extra).await;
        proxy.set_down(true);
        let acknowledged = burst(gateway.addr, 0..600, 4).await;
        let refused = 600 - acknowledged.len();
        assert!(refused > 0 && !acknowledged.is_empty(), "{name}: some refused, some accepted");
        assert_eq!(request(gateway.addr, Method::GET, "/readyz", b"").await.0, 503, "{name}: not ready while full");
        let label = if name == "spool" { "spool_full" } else { "outbox_full" };
        let counted = format!("hookbus_rejections_total{{reason=\"{label}\"}} {refused}");
        assert!(metrics(gateway.addr).await.contains(&counted), "{name}: {counted}");
        proxy.set_down(false);
        let collected = collect(&mut watcher, &acknowledged, Duration::from_secs(60)).await;
        assert_eq!(collected.seen, acknowledged, "{name}: nothing refused was delivered");
        let received = collected.received;
        println!(
            "overload ({name}): acknowledged {}, refused {refused}, delivered {received}, lost 0",
            acknowledged.len()
        );
        assert_eq!(gateway.stop().await.lost, 0);
    }
}

#[tokio::test]
async fn damaged_spool_files_are_reported_and_every_intact_record_delivered() {
    let prefix = unique("t");
    let dir = tempdir("spool");
    {
        let (spool, _) = hookbus::spool::Spool::open(&dir, 1 << 20, 1 << 20).unwrap();
        for n in 0..4 {
            let body = format!(r#"{{"RoomId":"room-{n}"}}"#);
            let origin = hookbus::bus::Origin { sdk_app_id: APP.into(), ..Default::default() };
            let message = hookbus::bus::Message::new(&prefix, "Live.X", Some(format!("room-{n}")), origin, body.into());
            spool.append(&message).await.unwrap();
        }
    }
    let segment = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let mut data = std::fs::read(&segment).unwrap();
    let starts: Vec<usize> = (0..data.len()).filter(|&at| data[at..].starts_with(b"HBS1")).collect();
    assert_eq!(starts.len(), 4);
    data[starts[1] + 20] ^= 0x01; // a flipped bit in the second record
    data.truncate(starts[3] + 10); // the last record torn by a crash
    std::fs::write(&segment, &data).unwrap();

    let mut watcher = Backend::Nats.watch(&prefix).await;
    let gateway = Backend::Nats.gateway(&prefix, None, &["--spool-dir", dir.to_str().unwrap()]).await;
    let expected: HashSet<String> = ["room-0", "room-2"].map(String::from).into();
    let collected = collect(&mut watcher, &expected, Duration::from_secs(10)).await;
    assert_eq!(collected.seen, expected);
    let received = collected.received;
    let metrics = metrics(gateway.addr).await;
    assert!(metrics.contains("hookbus_spool_recovered_events_total 2"), "{metrics}");
    assert!(metrics.contains("hookbus_spool_corrupt_records_total 2"), "{metrics}");
    assert!(metrics.contains("hookbus_spool_truncated_bytes_total 10"), "{metrics}");
    println!("damaged spool: intact 2, delivered {received}, corrupt regions 2, lost 0 of the intact");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_exits_within_the_grace_period_and_keeps_the_rest() {
    let Burst { prefix, spool, mut watcher, mut child, burst, _proxy } =
        burst_with_the_broker_going_away(&["--shutdown-grace", "1s"]).await;
    let stopping = Instant::now();
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(took < Duration::from_millis(2500), "within the 1s grace period plus start-up slack: {took:?}");
    let acknowledged = burst.await.unwrap();

    let url = nats_url();
    let (mut restarted, _) = spawn_binary(&flags(&prefix, &url, &spool));
    let received = collect(&mut watcher, &acknowledged, Duration::from_secs(60)).await.received;
    println!("sigterm: exit 0 in {took:?}, acknowledged {}, delivered {received}, lost 0", acknowledged.len());
    signal(&restarted, "TERM");
    assert!(restarted.wait().unwrap().success());
}

/// A disk that refuses the spool's writes (a full file system, here a 1 MiB tmpfs with the
/// broker away): callbacks are answered 503, `/readyz` says why, and the refusals are logged
/// at most a line a second, not one per callback.
#[tokio::test]
async fn a_disk_that_refuses_writes_is_not_ready_and_logged_a_line_a_second() {
    let dir = tempdir("full-disk");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir.to_str().unwrap()])
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "a tmpfs is mounted (the tests run as root)");
    let prefix = unique("t");
    let mut flags = flags(&prefix, "nats://127.0.0.1:1", dir.to_str().unwrap());
    flags.extend(["--outbox-wait", "0s"]);
    let (mut child, addr, logs) = crate::support::spawn_binary_with_logs(&flags);
    let mut client = crate::support::Client::connect(addr).await;
    let mut refused = 0;
    for n in 0..600 {
        let body = format!(r#"{{"RoomId":"r","Seq":{n},"Pad":"{}"}}"#, "x".repeat(4096));
        let status = client.post("Live.CallbackAfterEnterRoom", body.as_bytes()).await.0;
        assert!(status == 200 || status == 503, "{status}");
        if status == 503 {
            refused += 1;
        }
    }
    assert!(refused > 100, "the full disk refuses callbacks: {refused} refused");
    let (status, ready) = request(addr, Method::GET, "/readyz", b"").await;
    assert_eq!((status, &ready[..]), (503, &b"spool refuses writes\n"[..]));
    let text = metrics(addr).await;
    assert!(text.contains("reason=\"spool_error\""), "counted: {text}");
    signal(&child, "KILL");
    child.wait().unwrap();
    let lines: Vec<String> = logs.try_iter().filter(|line| line.contains("spool write failed")).collect();
    assert!(!lines.is_empty() && lines.len() <= 5, "{refused} refusals, {} lines: {lines:#?}", lines.len());
    std::process::Command::new("umount").arg(&dir).status().unwrap();
}
