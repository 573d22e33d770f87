//! What an untrusted caller controls: the query string and the body. The first line of the
//! input is the query, the rest the body. Nothing may panic, only the right `Sign` verifies,
//! a body is accepted exactly when it is one JSON object, and refused past the depth limit.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use hookbus::body::Body;
use hookbus::tencent::{verify, Query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (query, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let query = String::from_utf8_lossy(query);
    let query = Query::parse(&query);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let verdict = verify(["token"], query.sign.as_deref(), query.request_time.as_deref(), Duration::from_secs(60), now);
    if let Ok(0) = verdict {
        let time = query.request_time.as_deref().unwrap();
        assert!(query.sign.unwrap().eq_ignore_ascii_case(&hookbus::tencent::sign("token", time)));
    }
    let parsed = Body::parse(body, 128);
    // Every object serde_json reads (it refuses nesting past 128) is a body. The converse holds up to number range: JSON
    // allows 1e999, which serde_json's Value refuses and the gateway forwards as received.
    let object = serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|value| value.is_object());
    assert!(!object || parsed.is_ok(), "a JSON object was refused");
    // The depth check: with a limit of 4, a JSON object is accepted exactly when its arrays and
    // objects nest at most 4 levels.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if value.is_object() {
            assert_eq!(Body::parse(body, 4).is_ok(), depth(&value) <= 4, "depth limit");
        }
    }
    if let Ok(parsed) = parsed {
        assert!(std::str::from_utf8(body).is_ok(), "accepted a body that is not UTF-8");
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok(), "accepted a body that is not JSON");
        assert_eq!(
            body.iter().find(|b| !b.is_ascii_whitespace()),
            Some(&b'{'),
            "accepted a body that is not an object"
        );
        let _ = parsed.room_key();
    }
});

/// Levels of arrays and objects in a value: 0 for a scalar, 1 for `{"a":1}`.
fn depth(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
