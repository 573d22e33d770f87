//! The TRTC room and media callback protocol (README, "Live, Chat, TRTC and CSS on one
//! gateway"): how a TRTC callback is told apart from a Live or Chat one on the same path, its
//! `Sign` header (base64 of the HMAC-SHA256 of the body), the event group and type it names, and
//! the event id derived from its body, which makes Tencent's retries of one event the same event.
//! Pure functions over bytes and strings; HTTP, limits and the bus live elsewhere.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The header that names the app (HTTP header names are matched in any case).
pub const SDK_APP_ID: &str = "sdkappid";
/// The header that carries the signature.
pub const SIGN: &str = "sign";

/// Tencent's recommended answer; it reads nothing but the status 200.
pub const OK: &[u8] = br#"{"code":0}"#;

/// Tencent retries a callback answered otherwise than 200 for a minute after the first try, each
/// attempt waiting up to 5 s: a body is accepted, and remembered, this long after its `CallbackTs`
/// (and the clock skew on top).
pub const RETRY_WINDOW: Duration = Duration::from_secs(70);

/// A TRTC event type Tencent documents, with the readable name the README's table gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrtcType {
    pub group: u64,
    pub kind: u64,
    pub alias: &'static str,
    pub summary: &'static str,
}

const fn documented(group: u64, kind: u64, alias: &'static str, summary: &'static str) -> TrtcType {
    TrtcType { group, kind, alias, summary }
}

/// The room (1) and media (2) event groups of trtc.io/document/39558, every type of each.
pub const DOCUMENTED: [TrtcType; 11] = [
    documented(1, 101, "room.created", "a room was created"),
    documented(1, 102, "room.dismissed", "a room was dismissed"),
    documented(1, 103, "room.entered", "a user entered a room"),
    documented(1, 104, "room.exited", "a user left a room"),
    documented(1, 105, "room.role_changed", "a user switched between anchor and audience"),
    documented(2, 201, "media.video_started", "a user started pushing video"),
    documented(2, 202, "media.video_stopped", "a user stopped pushing video"),
    documented(2, 203, "media.audio_started", "a user started pushing audio"),
    documented(2, 204, "media.audio_stopped", "a user stopped pushing audio"),
    documented(2, 205, "media.substream_started", "a user started pushing the substream (screen share)"),
    documented(2, 206, "media.substream_stopped", "a user stopped pushing the substream"),
];

impl TrtcType {
    /// The CloudEvents `type` of this event type, and its destination after the prefix.
    pub fn command(&self) -> String {
        command(self.group, self.kind)
    }
}

/// `trtc.{EventGroupId}.{EventType}`: the CloudEvents `type`, and the destination after the prefix.
pub fn command(group: u64, kind: u64) -> String {
    format!("trtc.{group}.{kind}")
}

/// Why a TRTC callback's `Sign` header (or its `CallbackTs`) was refused; the text goes to the
/// caller and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSignError {
    Missing,
    Mismatch,
    /// The app's Live and Chat callbacks are signed but no TRTC key is set: an unsigned TRTC
    /// callback would be a way around the tokens.
    NoKey,
    /// `CallbackTs` is further from now than Tencent's retries and the clock skew allow.
    Stale,
}

impl HeaderSignError {
    pub fn reason(self) -> &'static str {
        match self {
            HeaderSignError::Missing => "the Sign header is required",
            HeaderSignError::Mismatch => "Sign does not match the body",
            HeaderSignError::NoKey => "no TRTC key is set for this app, whose other callbacks are signed",
            HeaderSignError::Stale => "CallbackTs is outside Tencent's retry window",
        }
    }

    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            HeaderSignError::Missing => "trtc_sign_missing",
            HeaderSignError::Mismatch => "trtc_sign_mismatch",
            HeaderSignError::NoKey => "trtc_key_missing",
            HeaderSignError::Stale => "trtc_stale",
        }
    }
}

/// `base64(hmac_sha256(key, body))`, as Tencent computes it.
pub fn sign(key: &str, body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac(key, body).finalize().into_bytes())
}

fn hmac(key: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    mac
}

/// Checks `sign` against the body signed with each of `keys`, every one in constant time;
/// returns the position of the key that signed it.
pub fn verify<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    sign: Option<&str>,
    body: &[u8],
) -> Result<usize, HeaderSignError> {
    let sign = sign.filter(|sign| !sign.is_empty()).ok_or(HeaderSignError::Missing)?;
    let given = base64::engine::general_purpose::STANDARD.decode(sign.trim()).map_err(|_| HeaderSignError::Mismatch)?;
    let mut matched = None;
    for (position, key) in keys.into_iter().enumerate() {
        if hmac(key, body).verify_slice(&given).is_ok() && matched.is_none() {
            matched = Some(position);
        }
    }
    matched.ok_or(HeaderSignError::Mismatch)
}

/// What the gateway reads of a TRTC body (already checked to be a JSON object within the limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtcEvent {
    pub group: u64,
    pub kind: u64,
    /// `CallbackTs`: when Tencent sent it, Unix milliseconds.
    pub callback_ms: u64,
    /// SHA-256 of the app and the canonical text of the body without `CallbackTs`.
    digest: [u8; 32],
}

/// Why a body is not a TRTC event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotTrtc;

impl NotTrtc {
    pub const LABEL: &'static str = "trtc_event_invalid";
    pub const REASON: &'static str = "EventGroupId, EventType and CallbackTs must be non-negative integers";
}

impl TrtcEvent {
    /// Reads the event of `body`, sent for `sdk_app_id`. Its identity is the app and every
    /// top-level field but `CallbackTs`, the time of sending, which a retry may carry anew: the
    /// event itself (`EventInfo`, with its own times) is what a retry repeats. The body counts
    /// by its canonical text (`crate::canonical`: members sorted, a repeated one by its last
    /// value, no whitespace, fewest escapes, numbers by value), not by its bytes.
    pub fn parse(sdk_app_id: &str, body: &[u8]) -> Result<TrtcEvent, NotTrtc> {
        let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(|_| NotTrtc)?;
        let number = |name: &str| -> Result<u64, NotTrtc> {
            let raw = fields.get(name).ok_or(NotTrtc)?;
            serde_json::from_str::<u64>(raw.get()).map_err(|_| NotTrtc)
        };
        let (group, kind, callback_ms) = (number("EventGroupId")?, number("EventType")?, number("CallbackTs")?);
        let mut fields = fields;
        fields.remove("CallbackTs");
        // The canonical text, not the text received: a retry that a proxy or Tencent itself
        // serialised anew (other spacing, member order or escapes) is the same event.
        let mut canonical = Vec::with_capacity(body.len());
        crate::canonical::object(&fields, &mut canonical);
        let mut hasher = Sha256::new();
        // The app with its length first, so that no app and body hash as another pair.
        hasher.update((sdk_app_id.len() as u64).to_le_bytes());
        hasher.update(sdk_app_id.as_bytes());
        hasher.update(&canonical);
        Ok(TrtcEvent { group, kind, callback_ms, digest: hasher.finalize().into() })
    }

    /// `trtc.{EventGroupId}.{EventType}`.
    pub fn command(&self) -> String {
        command(self.group, self.kind)
    }

    /// The CloudEvents id: a UUID (version 8) made of the digest, so that every retry of the
    /// event, on any instance and after any restart, carries the same id.
    pub fn id(&self) -> String {
        // No time in it: `CallbackTs` is the time of sending, new on a retry.
        crate::bus::derived_id(None, self.digest[..16].try_into().expect("16 of 32 bytes"))
    }

    /// 128 bits that tell this event from others, for the replay cache.
    pub fn fingerprint(&self) -> [u8; 16] {
        self.digest[16..].try_into().expect("16 of 32 bytes")
    }

    /// Until when (Unix seconds) a retry of this event may come, if it may still come at `now`:
    /// `CallbackTs` plus [`RETRY_WINDOW`], with `max_skew` either side for the clocks.
    pub fn retried_until(&self, now: SystemTime, max_skew: Duration) -> Result<u64, HeaderSignError> {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let sent = self.callback_ms / 1000;
        let until = sent.saturating_add(RETRY_WINDOW.as_secs() + max_skew.as_secs());
        if now > until || sent > now + max_skew.as_secs() {
            return Err(HeaderSignError::Stale);
        }
        Ok(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented sample body, as Tencent's signature page prints it.
    const BODY: &[u8] = b"{\n\t\"EventGroupId\":\t1,\n\t\"EventType\":\t103,\n\t\"CallbackTs\":\t1615554923704,\n\t\"EventInfo\":\t{\n\t\t\"RoomId\":\t12345,\n\t\t\"EventTs\":\t1608441737,\n\t\t\"UserId\":\t\"test\",\n\t\t\"UniqueId\":\t1615554922656,\n\t\t\"Role\":\t20,\n\t\t\"Reason\":\t1\n\t}\n}";

    #[test]
    fn the_readme_names_every_documented_type_as_this_table_does() {
        let readme = include_str!("../README.md");
        for documented in DOCUMENTED {
            let row = format!("| `{}` | {} | {} |", documented.command(), documented.alias, documented.summary);
            assert!(readme.contains(&row), "{row}");
        }
    }

    #[test]
    fn sign_matches_an_independent_hmac() {
        // python3 -c 'import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b"k", b"b", hashlib.sha256).digest()))'
        assert_eq!(sign("k", b"b"), "L7OYmM9rXK294jd9FNvHMxyq8IJdWRBtCQ3ut4Wqo4k=");
    }

    #[test]
    fn verify_finds_the_key_that_signed_the_body() {
        let good = sign("key-b", BODY);
        assert_eq!(verify(["key-a", "key-b"], Some(&good), BODY), Ok(1));
        assert_eq!(verify(["key-a"], Some(&good), BODY), Err(HeaderSignError::Mismatch));
        let mut tampered = BODY.to_vec();
        tampered[20] ^= 1;
        assert_eq!(verify(["key-b"], Some(&good), &tampered), Err(HeaderSignError::Mismatch));
        assert_eq!(verify(["key-b"], Some(&good[1..]), BODY), Err(HeaderSignError::Mismatch), "not base64");
        assert_eq!(verify(["key-b"], Some(&sign("key-b", b"")), BODY), Err(HeaderSignError::Mismatch));
        assert_eq!(verify(["key-b"], None, BODY), Err(HeaderSignError::Missing));
        assert_eq!(verify(["key-b"], Some(""), BODY), Err(HeaderSignError::Missing));
        let live = crate::tencent::sign("key-b", "1615554923");
        assert_eq!(verify(["key-b"], Some(&live), BODY), Err(HeaderSignError::Mismatch), "a Live signature");
    }

    #[test]
    fn the_event_names_its_group_and_type() {
        let event = TrtcEvent::parse("1400", BODY).unwrap();
        assert_eq!((event.group, event.kind, event.callback_ms), (1, 103, 1615554923704));
        assert_eq!(event.command(), "trtc.1.103");
        assert_eq!(DOCUMENTED[2].command(), "trtc.1.103");
        for bad in [
            &br#"{"EventType":103,"CallbackTs":1}"#[..],
            br#"{"EventGroupId":"1","EventType":103,"CallbackTs":1}"#,
            br#"{"EventGroupId":-1,"EventType":103,"CallbackTs":1}"#,
            br#"{"EventGroupId":1,"EventType":1.5,"CallbackTs":1}"#,
            br#"{"EventGroupId":1,"EventType":103}"#,
            b"[]",
        ] {
            assert_eq!(TrtcEvent::parse("1400", bad), Err(NotTrtc), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_retry_is_the_same_event_and_another_event_is_not() {
        let first = TrtcEvent::parse("1400", BODY).unwrap();
        let id = first.id();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 8);
        assert_eq!(TrtcEvent::parse("1400", BODY).unwrap().id(), id, "deterministic");
        let restamped = String::from_utf8_lossy(BODY).replace("1615554923704", "1615554933704");
        let retry = TrtcEvent::parse("1400", restamped.as_bytes()).unwrap();
        assert_eq!((retry.id(), retry.fingerprint()), (id.clone(), first.fingerprint()), "sent again, later");
        let other_user = String::from_utf8_lossy(BODY).replace("\"test\"", "\"test2\"");
        for other in [
            TrtcEvent::parse("1400", other_user.as_bytes()).unwrap(),
            TrtcEvent::parse("1401", BODY).unwrap(),
            TrtcEvent::parse("1400", br#"{"EventGroupId":1,"EventType":104,"CallbackTs":1,"EventInfo":{}}"#).unwrap(),
        ] {
            assert_ne!(other.id(), id);
            assert_ne!(other.fingerprint(), first.fingerprint());
        }
    }

    #[test]
    fn a_retry_serialised_anew_is_the_same_event() {
        let id = TrtcEvent::parse("1400", BODY).unwrap().id();
        let forms: [&[u8]; 4] = [
            br#"{"EventGroupId":1,"EventType":103,"CallbackTs":1615554923704,"EventInfo":{"RoomId":12345,"EventTs":1608441737,"UserId":"test","UniqueId":1615554922656,"Role":20,"Reason":1}}"#,
            br#"{"CallbackTs": 1615554933704, "EventInfo": {"Reason": 1, "Role": 20, "UniqueId": 1615554922656, "UserId": "test", "EventTs": 1608441737, "RoomId": 12345}, "EventType": 103, "EventGroupId": 1}"#,
            br#"{"EventGroupId":1,"EventType":103,"CallbackTs":1615554923704,"EventInfo":{"RoomId":12345,"EventTs":1608441737,"UserId":"test","UniqueId":1615554922656,"Role":20,"Reason":1}}"#,
            br#"{"EventGroupId":1,"EventType":103,"CallbackTs":1615554923704,"EventInfo":{"RoomId":1.2345e4,"EventTs":1608441737,"UserId":"test","UniqueId":1615554922656,"Role":20.0,"Reason":1}}"#,
        ];
        for form in forms {
            assert_eq!(TrtcEvent::parse("1400", form).unwrap().id(), id, "{}", String::from_utf8_lossy(form));
        }
        let string_room = String::from_utf8_lossy(BODY).replace("12345", "\"12345\"");
        assert_ne!(TrtcEvent::parse("1400", string_room.as_bytes()).unwrap().id(), id, "another value, another event");
    }

    proptest::proptest! {
        /// Any body, printed compact or pretty, is one event.
        #[test]
        fn the_id_does_not_depend_on_the_serialisation(value in crate::body::tests::json_object()) {
            let mut fields = value.as_object().cloned().unwrap_or_default();
            fields.insert("EventGroupId".into(), 1.into());
            fields.insert("EventType".into(), 101.into());
            fields.insert("CallbackTs".into(), 1.into());
            let (compact, pretty) = (serde_json::to_vec(&fields).unwrap(), serde_json::to_vec_pretty(&fields).unwrap());
            proptest::prop_assert_eq!(TrtcEvent::parse("1400", &compact).unwrap().id(), TrtcEvent::parse("1400", &pretty).unwrap().id());
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = TrtcEvent::parse("1400", &bytes);
        }

        /// Whatever else the body holds, sending it again at another time is the same event, and
        /// changing anything else is another.
        #[test]
        fn the_id_is_the_body_but_its_time_of_sending(
            value in crate::body::tests::json_object(),
            group in 0u64..10,
            sent in 0u64..u64::MAX / 2,
            later in 1u64..100_000,
        ) {
            let mut fields = value.as_object().cloned().unwrap_or_default();
            fields.insert("EventGroupId".into(), group.into());
            fields.insert("EventType".into(), 101.into());
            let body = |fields: &serde_json::Map<String, serde_json::Value>, sent: u64| {
                let mut fields = fields.clone();
                fields.insert("CallbackTs".into(), sent.into());
                serde_json::to_vec(&fields).unwrap()
            };
            let first = TrtcEvent::parse("1400", &body(&fields, sent)).unwrap();
            let retry = TrtcEvent::parse("1400", &body(&fields, sent + later)).unwrap();
            proptest::prop_assert_eq!(first.id(), retry.id());
            fields.insert("EventType".into(), 102.into());
            proptest::prop_assert_ne!(TrtcEvent::parse("1400", &body(&fields, sent)).unwrap().id(), first.id());
        }
    }

    #[test]
    fn retries_are_accepted_for_tencents_window_only() {
        let event = TrtcEvent::parse("1400", BODY).unwrap();
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let skew = Duration::from_secs(60);
        let sent = 1615554923;
        assert_eq!(event.retried_until(at(sent), skew), Ok(sent + 130));
        assert_eq!(event.retried_until(at(sent + 130), skew), Ok(sent + 130));
        assert_eq!(event.retried_until(at(sent + 131), skew), Err(HeaderSignError::Stale));
        assert_eq!(event.retried_until(at(sent - 60), skew), Ok(sent + 130));
        assert_eq!(event.retried_until(at(sent - 61), skew), Err(HeaderSignError::Stale), "from the future");
    }
}
