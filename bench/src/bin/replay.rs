//! What the replay cache costs: fills a cache with `N` signed requests (default 600,000:
//! 10,000 requests/s for a 60 s window) and prints the resident memory it added.
//! `cargo run --release -p hookbus-bench --bin replay -- 600000`

use hookbus::replay::{Answered, Key, Replays};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    let entries: usize = std::env::args().nth(1).map_or(600_000, |n| n.parse().expect("a number"));
    let before = rss_bytes();
    let replays = Replays::new(entries);
    let body = br#"{"CallbackCommand":"Live.CallbackAfterMemberStateChanged","RoomId":"room-1"}"#;
    for n in 0..entries {
        let (sign, time) = (format!("{n:064x}"), (1_700_000_000 + n / 10_000).to_string());
        let key = Key::of(&sign, &time, "1400000000", "Live.CallbackAfterMemberStateChanged", body);
        replays.remember(key, 1_700_000_060 + (n / 10_000) as u64, Answered::Event);
    }
    let added = rss_bytes() - before;
    println!(
        "replay cache: {} entries, RSS +{:.1} MiB, {} bytes per entry",
        replays.len(),
        added as f64 / (1 << 20) as f64,
        added / entries as u64
    );
}
