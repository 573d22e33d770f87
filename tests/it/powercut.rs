//! Power cuts under the spool. `tests/powercut/lazyfs.py` is a file system that forgets what
//! was not synced, as a disk does when its power goes: a gateway spools on it, callbacks arrive
//! from several connections with the broker up or down, and at a random moment the gateway is
//! killed and the power cut (every write since its file's last `fsync` lost, or a random subset
//! of its 4 KiB pages kept; every name since the directory's last `fsync` lost). The next start
//! on what survived must deliver every callback that was answered 200, or keep it as a dead
//! letter: one callback in 40 is too large for the test's NATS server, so cuts fall during
//! dead-letter writes too. A second test cuts the power while those dead letters are requeued.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::support::{signal, spawn_binary_with_logs, tempdir, unique, Client, NatsServer, Proxy, APP, TOKEN};

/// Of the test's own NATS server: a larger event is refused for good, a dead letter.
const MAX_PAYLOAD: usize = 8192;

/// The lazy file system, mounted until dropped.
struct LazyFs {
    child: std::process::Child,
    mount: PathBuf,
    control: PathBuf,
}

impl LazyFs {
    fn mount() -> LazyFs {
        let dir = tempdir("lazyfs");
        let (mount, control) = (dir.join("mnt"), dir.join("control.sock"));
        std::fs::create_dir_all(&mount).unwrap();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powercut/lazyfs.py");
        let child = std::process::Command::new("python3")
            .arg(script)
            .args([&mount, &control])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        let started = Instant::now();
        let mounted = || std::fs::read_to_string("/proc/mounts").unwrap().contains(mount.to_str().unwrap());
        while !(mounted() && control.exists()) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "lazyfs did not mount (mfusepy and fuse3: scripts/services.sh)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        LazyFs { child, mount, control }
    }

    /// Cuts the power: keeps each unsynced page with probability `keep`; returns how many it kept.
    fn cut(&self, keep: f64, seed: u64) -> usize {
        let mut stream = std::os::unix::net::UnixStream::connect(&self.control).unwrap();
        writeln!(stream, "cut {keep} {seed}").unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(stream).read_line(&mut answer).unwrap();
        answer.trim().strip_prefix("ok ").and_then(|kept| kept.parse().ok()).unwrap_or_else(|| panic!("{answer}"))
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny generator for cut points and seeds: the run prints its seed, and
/// `HOOKBUS_POWERCUT_SEED` repeats one.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Posts signed callbacks of distinct rooms on `connections` connections until `stop`, or until
/// the gateway is gone; returns the rooms answered 200.
fn load(
    addr: std::net::SocketAddr,
    tag: String,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..connections)
        .map(|worker| {
            let (tag, stop) = (tag.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let Some(mut client) = Client::try_connect(addr).await else { return acknowledged };
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let room = format!("{tag}-{worker}-{n}");
                    let pad = if n % 40 == 39 { MAX_PAYLOAD + 1000 } else { 200 + n % 7 * 300 };
                    let body = format!(r#"{{"RoomId":"{room}","Pad":"{}"}}"#, "x".repeat(pad));
                    match client.send("Live.CallbackAfterMemberStateChanged", body.as_bytes()).await {
                        Ok((200, _)) => acknowledged.push(room),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect()
}

/// How many cuts (`variable`, else `default`) and the seed of the random choices:
/// `HOOKBUS_POWERCUT_SEED` or the clock; the seed is printed so that a run can be repeated.
fn cuts_and_seed(variable: &str, default: usize, what: &str) -> (usize, u64) {
    let cuts = std::env::var(variable).ok().and_then(|n| n.parse().ok()).unwrap_or(default);
    let seed = std::env::var("HOOKBUS_POWERCUT_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("{what}: {cuts}, seed {seed} (HOOKBUS_POWERCUT_SEED={seed} repeats the run)");
    (cuts, seed)
}

/// A NATS server of the test's own whose payload limit makes some callbacks dead letters.
fn small_nats() -> (NatsServer, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = NatsServer::start(port, &format!("max_payload: {MAX_PAYLOAD}\n"));
    (server, format!("nats://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_callback_answered_200_survives_power_cuts() {
    let (cuts, seed) = cuts_and_seed("HOOKBUS_POWERCUT_CUTS", 50, "power cuts");
    let mut random = Random(seed);
    let fs = LazyFs::mount();
    let prefix = unique("t");
    let (_server, url) = small_nats();
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let mut watcher = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let watching = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(event) = watcher.next().await {
                let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
                let room = body["RoomId"].as_str().unwrap().to_owned();
                *seen.lock().unwrap().entry(room).or_default() += 1;
            }
        }
    });
    let proxy = Proxy::start(crate::support::socket_of(&url)).await;
    let via_proxy = format!("nats://{}", proxy.addr);
    let spool = fs.mount.to_str().unwrap().to_owned();
    let flags = |url: &str| -> Vec<String> {
        ["--bus", "nats", "--nats-url", url, "--prefix", &prefix, "--sdk-app-id", APP, "--token", TOKEN]
            .into_iter()
            .chain(["--spool-dir", &spool, "--spool-segment-bytes", "32768", "--publish-linger", "1ms"])
            // Memory holds a few waiting events; the others wait on the spool alone and are read
            // back from it, after cuts too.
            .chain(["--outbox-max-bytes", "16384"])
            .map(String::from)
            .collect()
    };
    let mut acknowledged = HashSet::new();
    let (mut pages_kept, mut broker_down) = (0, 0);
    for cut in 0..cuts {
        let down = random.next().is_multiple_of(3);
        broker_down += usize::from(down);
        proxy.set_down(down);
        let flags = flags(&via_proxy);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (mut child, addr, _logs) = spawn_binary_with_logs(&flags);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = load(addr, format!("cut{cut}"), 4, stop.clone());
        tokio::time::sleep(Duration::from_millis(30 + random.next() % 400)).await;
        signal(&child, "KILL");
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            acknowledged.extend(worker.await.unwrap());
        }
        let keep = [0.0, 0.5, 1.0][(random.next() % 3) as usize];
        pages_kept += fs.cut(keep, random.next());
    }
    proxy.set_down(false);
    let flags = flags(&url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (mut last, _, _logs) = spawn_binary_with_logs(&flags);
    let deadline = Instant::now() + Duration::from_secs(120);
    // The large ones can only be dead letters; the others must all arrive.
    let large =
        |room: &String| room.rsplit('-').next().and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n % 40 == 39);
    let missing = loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            acknowledged.iter().filter(|room| !large(room) && !seen.contains_key(*room)).cloned().collect()
        };
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    signal(&last, "TERM");
    last.wait().unwrap();
    watching.abort();
    let dead = dead_letters(&fs.mount);
    let large_lost = acknowledged.iter().filter(|room| large(room) && !dead.contains(*room));
    let lost: Vec<&String> = missing.iter().chain(large_lost).collect();
    let delivered: usize = seen.lock().unwrap().values().sum();
    println!(
        "power cuts: {cuts} ({broker_down} with the broker away), {} answered 200, {delivered} delivered \
         ({} duplicates), {} dead letters, {pages_kept} unsynced pages kept across cuts, lost {}",
        acknowledged.len(),
        delivered.saturating_sub(acknowledged.len() - dead.len()),
        dead.len(),
        lost.len()
    );
    assert!(acknowledged.len() > cuts, "callbacks were answered 200 between the cuts");
    assert!(!dead.is_empty(), "the large callbacks are dead letters");
    assert!(
        lost.is_empty(),
        "{} answered 200, neither delivered nor a dead letter, e.g. {:?} (seed {seed})",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// The rooms of the dead letters `hookbus spool export --dead` finds in the spool `dir`.
fn dead_letters(dir: &std::path::Path) -> HashSet<String> {
    exported(dir, &["--dead"])
}

/// The rooms of the events `hookbus spool export` finds in the spool `dir` (with `--dead`, of
/// its dead letters).
fn exported(dir: &std::path::Path, select: &[&str]) -> HashSet<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["spool", "--spool-dir", dir.to_str().unwrap(), "export"])
        .args(select)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            event["data"]["RoomId"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// How many events `hookbus spool export` finds in the spool `dir`, copies included.
fn exported_all(dir: &std::path::Path, select: &[&str]) -> usize {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["spool", "--spool-dir", dir.to_str().unwrap(), "export"])
        .args(select)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

/// `hookbus spool stat` of the spool `dir`.
fn stat(dir: &std::path::Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["spool", "--spool-dir", dir.to_str().unwrap(), "stat"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Power cuts while dead letters are requeued: through the running gateway's admin socket, or,
/// with the gateway gone, into the spool by `hookbus spool requeue` itself; the cut falls at a
/// random moment of either (the requeue killed with the gateway). After every cut, each dead
/// letter that `hookbus spool` listed before it is still a dead letter or back in the spool:
/// nothing it reported as kept vanishes. The spool's lock file is never synced (a cut may
/// take it or leave it): `hookbus spool stat` says no gateway holds the spool after a cut, and
/// the next gateway starts on it. Requeued dead letters are still too large for the broker:
/// they die again, and the next round requeues them all again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_reported_kept_survive_power_cuts_during_requeue() {
    let (cuts, seed) = cuts_and_seed("HOOKBUS_POWERCUT_REQUEUES", 20, "power cuts during requeue");
    let mut random = Random(seed);
    let fs = LazyFs::mount();
    let prefix = unique("t");
    let (_server, url) = small_nats();
    let spool = fs.mount.to_str().unwrap().to_owned();
    let flags: Vec<&str> = vec![
        "--bus",
        "nats",
        "--nats-url",
        &url,
        "--prefix",
        &prefix,
        "--sdk-app-id",
        APP,
        "--token",
        TOKEN,
        "--spool-dir",
        &spool,
        "--spool-segment-bytes",
        "32768",
        "--publish-linger",
        "1ms",
    ];
    let (mut offline, mut finished, mut checked) = (0, 0, 0);
    for cut in 0..cuts {
        let (mut child, addr, _logs) = spawn_binary_with_logs(&flags);
        let mut client = Client::connect(addr).await;
        let mut rooms = Vec::new();
        for n in 0..3 {
            let room = format!("requeue{cut}-{n}");
            let body = format!(r#"{{"RoomId":"{room}","Pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD + 1000));
            assert_eq!(client.post("Live.CallbackAfterMemberStateChanged", body.as_bytes()).await.0, 200);
            rooms.push(room);
        }
        // Each start publishes what the spool holds first (requeued letters, which die again):
        // slow on this file system under a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        let kept = loop {
            let kept = dead_letters(&fs.mount);
            if rooms.iter().all(|room| kept.contains(room)) {
                break kept;
            }
            assert!(
                Instant::now() < deadline,
                "cut {cut}: the large callbacks became dead letters: {} rooms listed, {} letters in the log: {}",
                kept.len(),
                exported_all(&fs.mount, &["--dead"]),
                stat(&fs.mount)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let gateway_gone = random.next().is_multiple_of(2);
        if gateway_gone {
            signal(&child, "KILL");
            child.wait().unwrap();
            offline += 1;
        }
        let mut requeue = std::process::Command::new(env!("CARGO_BIN_EXE_hookbus"))
            .args(["spool", "--spool-dir", &spool, "requeue", "--all"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(random.next() % 300)).await;
        let _ = requeue.kill();
        let answer = requeue.wait_with_output().unwrap();
        finished += usize::from(String::from_utf8_lossy(&answer.stdout).starts_with("requeued"));
        if !gateway_gone {
            signal(&child, "KILL");
            child.wait().unwrap();
        }
        let keep = [0.0, 0.5, 1.0][(random.next() % 3) as usize];
        fs.cut(keep, random.next());
        let (dead, waiting) = (dead_letters(&fs.mount), exported(&fs.mount, &[]));
        checked += kept.len();
        let vanished: Vec<&String> =
            kept.iter().filter(|room| !dead.contains(*room) && !waiting.contains(*room)).collect();
        assert!(
            vanished.is_empty(),
            "cut {cut} (gateway {}): dead letters listed as kept, then neither dead letters nor in the spool: {vanished:?} (seed {seed})",
            if gateway_gone { "gone, requeue into the spool" } else { "running, requeue through it" }
        );
        assert!(stat(&fs.mount).contains("gateway running: no"), "cut {cut}: the lock of a dead gateway holds nothing");
    }
    println!(
        "power cuts during requeue: {cuts} ({offline} into the spool with no gateway), {finished} requeues \
         answered before their cut, {checked} dead letters listed before a cut and found after it"
    );
    assert!(offline > 0 && offline < cuts, "both ways were cut");
}
