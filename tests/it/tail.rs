//! `hookbus tail` as a person and a pipe use it: a gateway with an admin socket, the samples
//! sent, and what the tail shows; a tail that stops reading slows no callback.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{burst, signal, spawn_binary_with_logs, tempdir, APP, TOKEN};

fn gateway(socket: &str) -> (std::process::Child, std::net::SocketAddr) {
    let flags = ["--sdk-app-id", APP, "--token", TOKEN, "--admin-socket", socket];
    let (child, addr, _logs) = spawn_binary_with_logs(&flags);
    let started = std::time::Instant::now();
    while !std::path::Path::new(socket).exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "the admin socket is served");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, addr)
}

/// Sends the documented samples (the TRTC ones are refused, and `simulate` fails for them:
/// this gateway has no TRTC key).
fn simulate(addr: std::net::SocketAddr) {
    let url = format!("http://{addr}/");
    Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["simulate", "--url", &url, "--sdk-app-id", APP, "--token", TOKEN])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
}

/// In a terminal (a pseudo-terminal from `script`): one coloured line per callback within 100
/// columns, and a summary by outcome at Ctrl-C.
#[test]
fn in_a_terminal_each_callback_is_a_coloured_line_and_ctrl_c_sums_up() {
    let socket = tempdir("tail").join("admin.sock");
    let (mut child, addr) = gateway(socket.to_str().unwrap());
    let command = format!("{} tail --admin-socket {}", env!("CARGO_BIN_EXE_hookbus"), socket.display());
    let mut tail = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    simulate(addr);
    std::thread::sleep(Duration::from_millis(500));
    // Ctrl-C as a terminal sends it; then the end of input, for `script` to finish.
    let mut keyboard = tail.stdin.take().unwrap();
    keyboard.write_all(b"\x03").unwrap();
    drop(keyboard);
    let mut shown = String::new();
    tail.stdout.take().unwrap().read_to_string(&mut shown).unwrap();
    tail.wait().unwrap();
    signal(&child, "TERM");
    child.wait().unwrap();
    let lines: Vec<&str> = shown.lines().filter(|line| line.contains(" Group.CallbackAfterSendMsg ")).collect();
    assert_eq!(lines.len(), 1, "{shown}");
    assert!(lines[0].contains("\x1b[32m200\x1b[0m") && lines[0].contains("accepted"), "{}", lines[0]);
    let plain = |line: &str| {
        line.replace("\x1b[32m", "").replace("\x1b[33m", "").replace("\x1b[31m", "").replace("\x1b[0m", "")
    };
    for line in shown.lines().filter(|line| line.contains(" live ")) {
        assert!(plain(line).trim_end().chars().count() <= 100, "wider than 100 columns: {line}");
    }
    assert!(shown.contains("fallback no-resp"), "decisions are shown with their outcome: {shown}");
    assert!(shown.contains("callbacks shown (accepted"), "a summary at Ctrl-C: {shown}");
}

/// With `--json` into a pipe: one object per line, no colours, the filters applied, no secret.
#[test]
fn as_json_lines_with_filters_for_a_pipe() {
    let socket = tempdir("tail").join("admin.sock");
    let (mut child, addr) = gateway(socket.to_str().unwrap());
    let socket = socket.to_str().unwrap();
    let mut tail = Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["tail", "--admin-socket", socket, "--json", "--body", "--command", "Live.*", "--status", "2xx"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    simulate(addr);
    // A second tail, started afterwards, sees the same callbacks through --last.
    let last = Command::new(env!("CARGO_BIN_EXE_hookbus"))
        .args(["tail", "--admin-socket", socket, "--json", "--last", "5"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    signal(&tail, "INT");
    signal(&last, "INT");
    let lines: Vec<serde_json::Value> = BufReader::new(tail.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).expect("a JSON object per line"))
        .collect();
    tail.wait().unwrap();
    let recent = String::from_utf8(last.wait_with_output().unwrap().stdout).unwrap();
    signal(&child, "TERM");
    child.wait().unwrap();
    let live = hookbus::samples::LIVE.iter().filter(|(command, _)| command.starts_with("Live.")).count();
    assert_eq!(lines.len(), live, "every Live sample, nothing else: {lines:#?}");
    for line in &lines {
        assert!(line["command"].as_str().unwrap().starts_with("Live."));
        assert_eq!(line["status"], 200);
        assert_eq!(line["app"], APP);
        assert!(line["body"].as_str().is_some_and(|body| !body.is_empty()));
        assert!(!line.to_string().contains(TOKEN) && line.get("sign").is_none(), "no secret: {line}");
    }
    assert_eq!(recent.lines().count(), 5, "--last 5: {recent}");
}

/// A tail that stops reading: callbacks go on at full speed; it is told what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_that_stops_reading_slows_nothing_and_is_told_what_it_missed() {
    let socket = tempdir("tail").join("admin.sock");
    let (mut child, addr) = gateway(socket.to_str().unwrap());
    let mut stalled = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stalled.write_all(b"tail 0 1\n").unwrap();
    let answered = burst(addr, 0..10_000, 8).await;
    assert_eq!(answered.len(), 10_000, "every callback answered while the tail does not read");
    let mut missed = 0;
    for line in BufReader::new(stalled).lines() {
        let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if let Some(n) = line["missed"].as_u64() {
            missed = n;
            break;
        }
    }
    assert!(missed > 0, "the tail is told how many it missed");
    signal(&child, "TERM");
    child.wait().unwrap();
}
