//! The binary as a newcomer runs it: `hookbus serve` on the embedded default, `hookbus
//! simulate` against it, SIGTERM, and refused flags.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{signal, spawn_binary};

const BIN: &str = env!("CARGO_BIN_EXE_hookbus");

#[test]
fn serve_simulate_and_sigterm() {
    let flags = ["--token", "t0k", "--trtc-key", "k3y", "--css-key", "c55", "--sdk-app-id", "1400000000"];
    // The CSS samples' app (the Tencent Cloud account's APPID) is an app too.
    let (mut child, addr) = spawn_binary(&[&flags[..], &["--app", "12345678"]].concat());
    let output = Command::new(BIN)
        .args(["simulate", "--url", &format!("http://{addr}/"), "--token", "t0k", "--trtc-key", "k3y"])
        .args(["--css-key", "c55"])
        .output()
        .expect("simulate runs");
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "every sample sent is accepted: {printed}");
    let answers: Vec<&str> = printed.lines().collect();
    let (samples, trtc, css) = (hookbus::samples::LIVE, hookbus::samples::TRTC, hookbus::samples::CSS);
    // Tencent signs no relay callback: with a CSS key it is sent only when named, and refused.
    assert_eq!(answers.len(), samples.len() + trtc.len() + css.len() - 1, "{printed}");
    assert!(!answers.iter().any(|line| line.starts_with("css.relay.task")), "{printed}");
    assert!(answers.iter().all(|line| line.contains(" 200 ")), "{printed}");
    let relay = Command::new(BIN)
        .args(["simulate", "--url", &format!("http://{addr}/"), "--css-key", "c55", "css.relay.task"])
        .output()
        .unwrap();
    assert!(!relay.status.success());
    assert!(String::from_utf8_lossy(&relay.stdout).contains(" 401 "));
    let gift = answers.iter().find(|l| l.starts_with("Live.CallbackBeforeSendGift")).unwrap();
    assert!(gift.contains(r#""ErrorCode":1"#), "{gift}");

    let unsigned = Command::new(BIN)
        .args(["simulate", "--url", &format!("http://{addr}/"), "Live.CallbackAfterCreateRoom"])
        .output()
        .unwrap();
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stdout).contains(" 401 "));

    signal(&child, "TERM");
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut events = String::new();
    child.stdout.take().unwrap().read_to_string(&mut events).unwrap();
    let events: Vec<serde_json::Value> = events.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let informational = samples.iter().filter(|(c, _)| hookbus::tencent::Blocking::of(c).is_none());
    assert_eq!(events.len(), informational.count() + trtc.len() + css.len() - 1, "every informational sample, once");
    let of = |surface: &str| {
        events.iter().filter(|e| e["type"].as_str().is_some_and(|t| t.starts_with(surface))).collect::<Vec<_>>()
    };
    assert_eq!(of("trtc.").len(), trtc.len());
    assert_eq!(of("css.").len(), css.len() - 1);
    // A CSS event's source is its body's appid; the snapshot page lists none.
    let css_sources = ["/tencent/12345678", "/tencent/"];
    assert!(of("css.").iter().all(|e| css_sources.contains(&e["source"].as_str().unwrap())));
    assert!(events
        .iter()
        .filter(|e| !e["type"].as_str().unwrap().starts_with("css."))
        .all(|e| e["source"] == "/tencent/1400000000"));
}

#[test]
fn bad_flags_exit_2_with_a_clear_error() {
    for (flags, expected) in [
        (&["--decision-timeout", "2s"][..], "under 2s"),
        (&["--listen", "nowhere"], "--listen"),
        (&["--bus", "redis"], "possible values"),
    ] {
        let output = Command::new(BIN).arg("serve").args(flags).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[test]
fn simulate_refuses_unknown_samples() {
    let output = Command::new(BIN).args(["simulate", "Live.NoSuchThing"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no documented sample"));
}
