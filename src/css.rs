//! The Cloud Streaming Services (CSS, 云直播) callback protocol (README, "Cloud Streaming (CSS)
//! callbacks"): how a CSS callback is told apart from the other surfaces on the same path, the
//! event types Tencent documents and the name each is published under, the body's `t` and `sign`
//! (`sign` = MD5 of the callback key followed by `t`, `t` the signature's expiry), and the event
//! id derived from the body without them, which makes Tencent's retries of one event one event.
//! Pure functions over bytes and strings; HTTP, limits and the bus live elsewhere.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::Md5;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// What Tencent's samples answer; it reads nothing but the status 200.
pub const OK: &[u8] = br#"{"code":0}"#;

/// Tencent sends a callback not answered 200 within 20 s again every minute, up to 12 times
/// (snapshots: every 2 minutes, 5 times): the last copy of an event comes at most this long after
/// the first.
pub const RETRY_WINDOW: Duration = Duration::from_secs(12 * (60 + 20));

/// The unit of an event's own time field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    Seconds,
    Millis,
}

/// A CSS event type Tencent documents: its `event_type`, the name it is published under
/// (`css.{name}`), what it says, the body field that holds when it happened (if one does) and
/// the page of cloud.tencent.com / tencentcloud.com (`document/product/…`) that documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CssType {
    pub event_type: u64,
    pub name: &'static str,
    pub summary: &'static str,
    pub time: Option<(&'static str, Clock)>,
    pub page: &'static str,
}

const fn documented(
    event_type: u64,
    name: &'static str,
    summary: &'static str,
    time: Option<(&'static str, Clock)>,
    page: &'static str,
) -> CssType {
    CssType { event_type, name, summary, time, page }
}

/// Every event type of Tencent's CSS callback pages (index: cloud.tencent.com 267/47024), in the
/// README's order.
pub const DOCUMENTED: [CssType; 12] = [
    documented(1, "push.started", "a stream push started", Some(("event_time", Clock::Seconds)), "267/38081"),
    documented(0, "push.interrupted", "a stream push stopped", Some(("event_time", Clock::Seconds)), "267/38081"),
    documented(
        321,
        "push.error",
        "push errors of the last reporting interval",
        Some(("data_time", Clock::Millis)),
        "267/53310",
    ),
    documented(100, "recording.file", "a recording file is ready", Some(("end_time", Clock::Seconds)), "267/38082"),
    documented(
        332,
        "recording.status",
        "a recording started, failed to start, paused, resumed, failed or ended",
        Some(("event_time", Clock::Seconds)),
        "267/58590",
    ),
    documented(
        341,
        "recording.error",
        "a recording met an abnormal event",
        Some(("timestamp", Clock::Seconds)),
        "267/68622",
    ),
    documented(
        200,
        "snapshot.created",
        "a snapshot was taken and stored",
        Some(("create_time", Clock::Seconds)),
        "267/38083",
    ),
    documented(
        317,
        "moderation.image",
        "image moderation flagged a snapshot",
        Some(("screenshotTime", Clock::Seconds)),
        "267/38084",
    ),
    documented(315, "moderation.audio", "audio moderation flagged a stream's sound", None, "267/58643"),
    documented(314, "relay.task", "a pull-and-relay task started, moved to a file or stopped", None, "267/56208"),
    documented(
        348,
        "ai.summary",
        "an AI summary of the stream was made",
        Some(("end_time", Clock::Seconds)),
        "267/74671",
    ),
    documented(349, "ai.highlight", "AI highlight clips of the stream were made", None, "267/74672"),
];

impl CssType {
    /// The CloudEvents `type` of this event type, and its destination after the prefix.
    pub fn command(&self) -> String {
        ["css.", self.name].concat()
    }
}

/// The documented event type `event_type`, if Tencent documents it.
pub fn documented_type(event_type: u64) -> Option<&'static CssType> {
    DOCUMENTED.iter().find(|documented| documented.event_type == event_type)
}

/// `css.{name}` for a documented event type, `css.{event_type}` for any other: the CloudEvents
/// `type`, and the destination after the prefix.
pub fn command(event_type: u64) -> String {
    documented_type(event_type).map_or_else(|| format!("css.{event_type}"), CssType::command)
}

/// Why a CSS callback's `t` and `sign` were refused; the text goes to the caller and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodySignError {
    /// The body has no `t` or no `sign` (Tencent's relay callbacks never carry them).
    Missing,
    Mismatch,
    /// The app's other callbacks are signed but no CSS key is set: an unsigned CSS callback
    /// would be a way around their keys.
    NoKey,
    /// `t`, the time until which the signature holds, has passed (beyond the clock skew).
    Expired,
}

impl BodySignError {
    pub fn reason(self) -> &'static str {
        match self {
            BodySignError::Missing => "t and sign are required in the body",
            BodySignError::Mismatch => "sign does not match t and a CSS callback key",
            BodySignError::NoKey => "no CSS key is set for this app, whose other callbacks are signed",
            BodySignError::Expired => "t, the signature's expiry, has passed",
        }
    }

    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            BodySignError::Missing => "css_sign_missing",
            BodySignError::Mismatch => "css_sign_mismatch",
            BodySignError::NoKey => "css_key_missing",
            BodySignError::Expired => "css_expired",
        }
    }
}

/// `hex(md5(key + t))`, lower case, as Tencent computes it.
pub fn sign(key: &str, t: &str) -> String {
    hex::encode(digest(key, t))
}

fn digest(key: &str, t: &str) -> [u8; 16] {
    Md5::new().chain_update(key.as_bytes()).chain_update(t.as_bytes()).finalize().into()
}

/// Why a body is not a CSS event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotCss;

impl NotCss {
    pub const LABEL: &'static str = "css_event_invalid";
    pub const REASON: &'static str =
        "event_type must be a non-negative integer; appid and t, when present, non-negative integers, sign a string";
}

/// What the gateway reads of a CSS body (already checked to be a JSON object within the limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CssEvent {
    pub event_type: u64,
    /// `appid`: the Tencent Cloud account's APPID (not a Live SdkAppid), as decimal text.
    pub appid: Option<String>,
    /// `t` as it was sent (decimal digits), and its value: the signature's expiry, Unix seconds.
    t: Option<(String, u64)>,
    sign: Option<String>,
    /// The stream: `stream_id`, else `streamId` (image moderation), when the body names one.
    pub stream: Option<String>,
    /// When it happened, from the event's own time field (see [`CssType::time`]).
    pub time: Option<SystemTime>,
    /// SHA-256 of the canonical text of the body without `t` and `sign`.
    digest: [u8; 32],
}

impl CssEvent {
    /// Reads the event of `body`. Its identity is every field but `t` and `sign`, which
    /// Tencent makes anew for each copy it sends; the body counts by its canonical text
    /// (`crate::canonical`: members sorted, a repeated one by its last value, no whitespace,
    /// fewest escapes, numbers by value), not by its bytes.
    pub fn parse(body: &[u8]) -> Result<CssEvent, NotCss> {
        let mut fields: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|_| NotCss)?;
        let integer = |raw: &RawValue| serde_json::from_str::<u64>(raw.get()).ok();
        let event_type = fields.get("event_type").and_then(|raw| integer(raw)).ok_or(NotCss)?;
        let appid = match fields.get("appid") {
            None => None,
            Some(raw) => Some(integer(raw).ok_or(NotCss)?.to_string()),
        };
        // `t` is an integer on today's pages and a string on the oldest one: either, as digits.
        let t = match fields.remove("t") {
            None => None,
            Some(raw) => {
                let text = match serde_json::from_str::<String>(raw.get()) {
                    Ok(text) => text,
                    Err(_) => integer(raw).ok_or(NotCss)?.to_string(),
                };
                // Digits only: `+5` parses as a number but is not how Tencent writes one.
                let value = text.parse::<u64>().ok().filter(|_| text.bytes().all(|b| b.is_ascii_digit()));
                Some((text.clone(), value.ok_or(NotCss)?))
            }
        };
        let sign = match fields.remove("sign") {
            None => None,
            Some(raw) => Some(serde_json::from_str::<String>(raw.get()).map_err(|_| NotCss)?),
        };
        let text = |name: &str| -> Option<String> {
            let raw = fields.get(name)?;
            let text =
                serde_json::from_str::<String>(raw.get()).ok().or_else(|| integer(raw).map(|n| n.to_string()))?;
            (!text.is_empty()).then_some(text)
        };
        let stream = text("stream_id").or_else(|| text("streamId"));
        let time = documented_type(event_type).and_then(|documented| documented.time).and_then(|(field, clock)| {
            // By value, as the id's canonical form takes numbers: 1703731478.0 is 1703731478.
            let value = crate::canonical::whole(fields.get(field)?)?;
            let since = match clock {
                Clock::Seconds => Duration::from_secs(value),
                Clock::Millis => Duration::from_millis(value),
            };
            UNIX_EPOCH.checked_add(since)
        });
        // The canonical text, not the text received: a copy that a proxy or Tencent itself
        // serialised anew (other spacing, member order or escapes) is the same event.
        let mut canonical = Vec::with_capacity(body.len());
        crate::canonical::object(&fields, &mut canonical);
        let mut hasher = Sha256::new();
        // The surface's name first: no CSS body hashes as a TRTC one, whose app comes first.
        hasher.update(b"css\0");
        hasher.update(&canonical);
        Ok(CssEvent { event_type, appid, t, sign, stream, time, digest: hasher.finalize().into() })
    }

    /// `css.{name}`, or `css.{event_type}` for a type Tencent does not document.
    pub fn command(&self) -> String {
        command(self.event_type)
    }

    /// Whether the body carries `t` and `sign` (Tencent's relay callbacks carry neither).
    pub fn is_signed(&self) -> bool {
        self.t.is_some() && self.sign.is_some()
    }

    /// Checks `sign` against `t` signed with each of `keys`, every one in constant time;
    /// returns the position of the key that signed it.
    pub fn verify<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Result<usize, BodySignError> {
        let (Some((t, _)), Some(sign)) = (&self.t, &self.sign) else { return Err(BodySignError::Missing) };
        let mut given = [0u8; 16];
        // Tencent's samples are lower case; upper case is the same digest.
        hex::decode_to_slice(sign.trim(), &mut given).map_err(|_| BodySignError::Mismatch)?;
        let mut matched = None;
        for (position, key) in keys.into_iter().enumerate() {
            let difference = given.iter().zip(digest(key, t)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 && matched.is_none() {
                matched = Some(position);
            }
        }
        matched.ok_or(BodySignError::Mismatch)
    }

    /// Until when (Unix seconds) a copy of this signed event may come, if its `t` has not
    /// passed at `now` (with `max_skew` for the clocks): its `t`, or Tencent's retry window from
    /// now when that ends later (a retry carries a new `t`), and the skew on top.
    pub fn expires(&self, now: SystemTime, max_skew: Duration) -> Result<u64, BodySignError> {
        let Some((_, t)) = self.t else { return Err(BodySignError::Missing) };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now > t.saturating_add(max_skew.as_secs()) {
            return Err(BodySignError::Expired);
        }
        Ok(t.max(now + RETRY_WINDOW.as_secs()).saturating_add(max_skew.as_secs()))
    }

    /// The CloudEvents id: a UUID (version 8) made of the digest, whose first 48 bits are the
    /// event's own time in Unix milliseconds when it has one (so that ids sort by it), so that
    /// every copy of the event, on any instance and after any restart, carries the same id.
    pub fn id(&self) -> String {
        let ms = self.time.and_then(|time| time.duration_since(UNIX_EPOCH).ok()).map(|since| since.as_millis() as u64);
        crate::bus::derived_id(ms, self.digest[..16].try_into().expect("16 of 32 bytes"))
    }

    /// 128 bits that tell this event from others, for the replay cache.
    pub fn fingerprint(&self) -> [u8; 16] {
        self.digest[16..].try_into().expect("16 of 32 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The push sample of cloud.tencent.com 267/38081 (2025-12-03), `sign` left out.
    const PUSH: &str = r#"{"app":"test.domain.com","appid":12345678,"appname":"live","channel_id":"test_stream","errcode":0,"errmsg":"ok","event_time":1703731478,"event_type":1,"height":0,"idc_id":34,"node":"42.81.194.37","sequence":"2210464508206756938","set_id":2,"stream_id":"test_stream","stream_param":"stream_param=test","t":1703732078,"user_ip":"1.1.1.1","width":0}"#;

    fn signed(body: &str, key: &str) -> String {
        let event = CssEvent::parse(body.as_bytes()).unwrap();
        let t = event.t.unwrap().0;
        body.replacen('{', &format!(r#"{{"sign":"{}","#, sign(key, &t)), 1)
    }

    #[test]
    fn the_readme_names_every_documented_type_as_this_table_does() {
        let readme = include_str!("../README.md");
        for documented in DOCUMENTED {
            let time = documented.time.map_or("—".to_owned(), |(field, clock)| match clock {
                Clock::Seconds => format!("`{field}` (s)"),
                Clock::Millis => format!("`{field}` (ms)"),
            });
            let row = format!(
                "| {} | `{}` | {} | {time} | {} |",
                documented.event_type,
                documented.command(),
                documented.summary,
                documented.page
            );
            assert!(readme.contains(&row), "{row}");
        }
    }

    #[test]
    fn sign_matches_an_independent_md5() {
        // python3 -c 'import hashlib; print(hashlib.md5(b"key" + b"1703732078").hexdigest())'
        assert_eq!(sign("key", "1703732078"), "913536c0d1d5741d4636f679709242ec");
    }

    #[test]
    fn verify_finds_the_key_that_signed_t() {
        let body = signed(PUSH, "key-b");
        let event = CssEvent::parse(body.as_bytes()).unwrap();
        assert!(event.is_signed());
        assert_eq!(event.verify(["key-a", "key-b"]), Ok(1));
        assert_eq!(event.verify(["key-a"]), Err(BodySignError::Mismatch));
        assert_eq!(event.verify([] as [&str; 0]), Err(BodySignError::Mismatch));
        let upper = body.replace(&sign("key-b", "1703732078"), &sign("key-b", "1703732078").to_uppercase());
        assert_eq!(CssEvent::parse(upper.as_bytes()).unwrap().verify(["key-b"]), Ok(0), "hex in any case");
        let other_t = body.replace("\"t\":1703732078", "\"t\":1703732079");
        assert_eq!(CssEvent::parse(other_t.as_bytes()).unwrap().verify(["key-b"]), Err(BodySignError::Mismatch));
        let as_text = body.replace("\"t\":1703732078", "\"t\":\"1703732078\"");
        assert_eq!(CssEvent::parse(as_text.as_bytes()).unwrap().verify(["key-b"]), Ok(0), "t as a string");
        for bad in ["", "xyz", "00"] {
            let bad = body.replace(&sign("key-b", "1703732078"), bad);
            assert_eq!(
                CssEvent::parse(bad.as_bytes()).unwrap().verify(["key-b"]),
                Err(BodySignError::Mismatch),
                "{bad}"
            );
        }
        let unsigned = CssEvent::parse(PUSH.as_bytes()).unwrap();
        assert!(!unsigned.is_signed());
        assert_eq!(unsigned.verify(["key-b"]), Err(BodySignError::Missing));
        let trtc = crate::trtc::sign("key-b", b"1703732078");
        let as_trtc = body.replace(&sign("key-b", "1703732078"), &trtc);
        assert_eq!(CssEvent::parse(as_trtc.as_bytes()).unwrap().verify(["key-b"]), Err(BodySignError::Mismatch));
        let live = crate::tencent::sign("key-b", "1703732078");
        let as_live = body.replace(&sign("key-b", "1703732078"), &live);
        assert_eq!(CssEvent::parse(as_live.as_bytes()).unwrap().verify(["key-b"]), Err(BodySignError::Mismatch));
    }

    #[test]
    fn t_is_an_expiry() {
        let event = CssEvent::parse(signed(PUSH, "k").as_bytes()).unwrap();
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let (t, skew, window) = (1703732078, Duration::from_secs(60), RETRY_WINDOW.as_secs());
        assert_eq!(event.expires(at(t - 600), skew), Ok(t - 600 + window + 60), "the retries outlast t");
        assert_eq!(event.expires(at(t), skew), Ok(t + window + 60));
        assert_eq!(event.expires(at(t + 60), skew), Ok(t + 60 + window + 60), "within the skew");
        assert_eq!(event.expires(at(t + 61), skew), Err(BodySignError::Expired));
        assert_eq!(event.expires(at(t - 100_000), skew), Ok(t + 60), "a t far ahead holds until then");
    }

    #[test]
    fn the_event_names_its_type_app_stream_and_time() {
        let event = CssEvent::parse(PUSH.as_bytes()).unwrap();
        assert_eq!((event.event_type, event.command()), (1, "css.push.started".to_owned()));
        assert_eq!((event.appid.as_deref(), event.stream.as_deref()), (Some("12345678"), Some("test_stream")));
        assert_eq!(event.time, Some(UNIX_EPOCH + Duration::from_secs(1703731478)));
        let moderation = r#"{"event_type":317,"streamId":"s1","screenshotTime":1575513174,"appid":10000}"#;
        let moderation = CssEvent::parse(moderation.as_bytes()).unwrap();
        assert_eq!((moderation.command().as_str(), moderation.stream.as_deref()), ("css.moderation.image", Some("s1")));
        assert_eq!(moderation.time, Some(UNIX_EPOCH + Duration::from_secs(1575513174)));
        let error = CssEvent::parse(br#"{"event_type":321,"data_time":1670588074971,"stream_id":""}"#).unwrap();
        assert_eq!(error.time, Some(UNIX_EPOCH + Duration::from_millis(1670588074971)));
        assert_eq!((error.stream, error.appid), (None, None));
        let unknown = CssEvent::parse(br#"{"event_type":329,"event_time":1}"#).unwrap();
        assert_eq!((unknown.command().as_str(), unknown.time), ("css.329", None));
        assert_eq!(CssEvent::parse(br#"{"event_type":0,"event_time":"x"}"#).unwrap().time, None, "no time: received");
        for spelled in ["1703731478.0", "1.703731478e9", "17037314780e-1"] {
            let body = format!(r#"{{"event_type":1,"event_time":{spelled}}}"#);
            let event = CssEvent::parse(body.as_bytes()).unwrap();
            assert_eq!(event.time, Some(UNIX_EPOCH + Duration::from_secs(1_703_731_478)), "{spelled}");
            let whole = CssEvent::parse(br#"{"event_type":1,"event_time":1703731478}"#).unwrap();
            assert_eq!(event.id(), whole.id(), "{spelled}: the same event");
        }
        assert_eq!(CssEvent::parse(br#"{"event_type":1,"event_time":1.5}"#).unwrap().time, None, "not a whole second");
        for bad in [
            &br#"{"appid":1}"#[..],
            br#"{"event_type":"1"}"#,
            br#"{"event_type":-1}"#,
            br#"{"event_type":1.5}"#,
            br#"{"event_type":1,"appid":"x"}"#,
            br#"{"event_type":1,"t":"12a"}"#,
            br#"{"event_type":1,"t":-5}"#,
            br#"{"event_type":1,"sign":5}"#,
            b"[]",
        ] {
            assert_eq!(CssEvent::parse(bad), Err(NotCss), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn every_documented_name_fits_a_destination() {
        let mut names: Vec<_> = DOCUMENTED.iter().map(|documented| documented.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DOCUMENTED.len());
        for documented in DOCUMENTED {
            assert!(crate::bus::valid_name(&documented.command()), "{}", documented.name);
            assert_eq!(command(documented.event_type), documented.command());
        }
    }

    #[test]
    fn every_copy_is_the_same_event_and_another_event_is_not() {
        let first = CssEvent::parse(signed(PUSH, "k").as_bytes()).unwrap();
        let id = first.id();
        let uuid = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(uuid.as_bytes()[..6], 1703731478000u64.to_be_bytes()[2..], "its own time first");
        let retry = signed(&PUSH.replace("1703732078", "1703732138"), "k");
        let retry = CssEvent::parse(retry.as_bytes()).unwrap();
        assert_eq!((retry.id(), retry.fingerprint()), (id.clone(), first.fingerprint()), "new t and sign");
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(PUSH).unwrap()).unwrap();
        assert_eq!(CssEvent::parse(pretty.as_bytes()).unwrap().id(), id, "serialised anew");
        assert_eq!(CssEvent::parse(PUSH.replace("\"t\":1703732078,", "").as_bytes()).unwrap().id(), id, "unsigned");
        for other in [
            PUSH.replace("\"event_type\":1", "\"event_type\":0"),
            PUSH.replace("2210464508206756938", "2210464508206756939"),
            PUSH.replace("12345678", "12345679"),
        ] {
            let other = CssEvent::parse(other.as_bytes()).unwrap();
            assert_ne!(other.id(), id);
            assert_ne!(other.fingerprint(), first.fingerprint());
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = CssEvent::parse(&bytes);
        }

        /// Whatever else the body holds, sending it again with another `t` and `sign` is the
        /// same event, and changing anything else is another.
        #[test]
        fn the_id_is_the_body_but_t_and_sign(
            value in crate::body::tests::json_object(),
            t in 0u64..u64::MAX / 2,
            later in 1u64..100_000,
        ) {
            let mut fields = value.as_object().cloned().unwrap_or_default();
            fields.insert("event_type".into(), 1.into());
            fields.remove("appid");
            let body = |fields: &serde_json::Map<String, serde_json::Value>, t: u64| {
                let mut fields = fields.clone();
                fields.insert("t".into(), t.into());
                fields.insert("sign".into(), sign("k", &t.to_string()).into());
                serde_json::to_vec(&fields).unwrap()
            };
            let first = CssEvent::parse(&body(&fields, t)).unwrap();
            let retry = CssEvent::parse(&body(&fields, t + later)).unwrap();
            proptest::prop_assert_eq!(first.id(), retry.id());
            fields.insert("event_type".into(), 0.into());
            proptest::prop_assert_ne!(CssEvent::parse(&body(&fields, t)).unwrap().id(), first.id());
        }
    }
}
