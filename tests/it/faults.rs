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
    // outbox/queue.rs): 300 refusals would take 20 s.
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
        let (spool, _) = hookbus::spool::Spool::open(&dir, 1 << 20, 1 << 20, usize::MAX).unwrap();
        for n in 0..4 {
            let body = format!(r#"{{"RoomId":"room-{n}"}}"#);
            let origin = hookbus::bus::Origin { sdk_app_id: APP.into(), ..Default::default() };
            let message = hookbus::bus::Message::new(&prefix, "Live.X", Some(format!("room-{n}")), origin, body.into());
            spool.append(&message).await.unwrap();
        }
    }
    let segment = dir.join(format!("{:020}.log", 0));
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

/// A disk that refuses the spool's writes (a full file system, here a 1 MiB tmpfs, with the
/// broker away): callbacks are answered 503, `/readyz` and the gauge say why, and the refusals
/// are logged at most a line a second, not one per callback. Once the broker is back and has
/// confirmed everything, the spool makes room by itself: callbacks are accepted again without
/// a restart (the full segment used to stay until one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_then_recovers_once_its_events_are_confirmed() {
    let dir = tempdir("full-disk");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", dir.to_str().unwrap()])
        .status()
        .expect("mount runs");
    assert!(mounted.success(), "a tmpfs is mounted (the tests run as root)");
    let prefix = unique("t");
    let mut watcher = Backend::Nats.watch(&prefix).await;
    let proxy = Proxy::start(Backend::Nats.upstream()).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let mut flags = flags(&prefix, &via_proxy, dir.to_str().unwrap());
    flags.extend(["--outbox-wait", "0s"]);
    let (mut child, addr, logs) = crate::support::spawn_binary_with_logs(&flags);
    proxy.set_down(true);
    let mut client = crate::support::Client::connect(addr).await;
    let (mut accepted, mut refused) = (HashSet::new(), 0);
    let posting = Instant::now();
    for n in 0..600 {
        let room = format!("room-{n}");
        let body = format!(r#"{{"RoomId":"{room}","Pad":"{}"}}"#, "x".repeat(4096));
        match client.post("Live.CallbackAfterEnterRoom", body.as_bytes()).await.0 {
            200 => drop(accepted.insert(room)),
            503 => refused += 1,
            status => panic!("answered {status}"),
        }
    }
    // A line a second at most (by the clock's seconds, so a run within one second may span
    // two): how many depends on how long the refusals lasted.
    let seconds = posting.elapsed().as_secs() as usize;
    assert!(refused > 100 && accepted.len() > 100, "{} accepted, {refused} refused", accepted.len());
    let (status, ready) = request(addr, Method::GET, "/readyz", b"").await;
    assert_eq!((status, &ready[..]), (503, &b"spool refuses writes\n"[..]));
    let text = metrics(addr).await;
    assert!(text.contains("reason=\"spool_error\""), "counted: {text}");
    assert_eq!(metric(&text, "hookbus_spool_write_failing"), 1);

    proxy.set_down(false);
    collect(&mut watcher, &accepted, Duration::from_secs(30)).await;
    eventually("every accepted event confirmed", Duration::from_secs(10), || async {
        metric(&metrics(addr).await, "hookbus_outbox_depth") == 0
    })
    .await;
    let body = format!(r#"{{"RoomId":"after","Pad":"{}"}}"#, "x".repeat(4096));
    assert_eq!(client.post("Live.CallbackAfterEnterRoom", body.as_bytes()).await.0, 200, "room made");
    assert_eq!(request(addr, Method::GET, "/readyz", b"").await.0, 200);
    assert_eq!(metric(&metrics(addr).await, "hookbus_spool_write_failing"), 0);
    signal(&child, "KILL");
    child.wait().unwrap();
    // The spool's own line (each refused callback's line is limited alike, and says so too).
    let lines: Vec<String> =
        logs.try_iter().filter(|line| line.contains("spool write failed: callbacks are answered 503")).collect();
    assert!(
        !lines.is_empty() && lines.len() <= seconds + 2 && lines.len() * 20 < refused,
        "{refused} refusals over {seconds} s, {} lines: {lines:#?}",
        lines.len()
    );
    std::process::Command::new("umount").arg(&dir).status().unwrap();
}

/// Events the broker confirmed are not published again by the next start: not after a clean
/// stop, nor after a SIGKILL once their confirmation is noted (within 100 ms). Every start used
/// to publish the whole spool again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_publishes_nothing_already_confirmed() {
    for stop in ["TERM", "KILL"] {
        let prefix = unique("t");
        let spool = tempdir("spool");
        let mut watcher = Backend::Nats.watch(&prefix).await;
        let url = nats_url();
        let flags = flags(&prefix, &url, spool.to_str().unwrap());
        let (mut child, addr, _logs) = crate::support::spawn_binary_with_logs(&flags);
        let sent = burst(addr, 0..50, 2).await;
        assert_eq!(sent.len(), 50);
        collect(&mut watcher, &sent, Duration::from_secs(10)).await;
        eventually("every event confirmed", Duration::from_secs(10), || async {
            metric(&metrics(addr).await, "hookbus_outbox_depth") == 0
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        signal(&child, stop);
        child.wait().unwrap();
        let (mut restarted, addr, _logs) = crate::support::spawn_binary_with_logs(&flags);
        assert_eq!(metric(&metrics(addr).await, "hookbus_spool_recovered_events_total"), 0, "{stop}");
        let again = watcher.try_next(Duration::from_secs(1)).await;
        assert!(again.is_none(), "after {stop}, an event confirmed before was published again");
        signal(&restarted, "TERM");
        restarted.wait().unwrap();
    }
}
