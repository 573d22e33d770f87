//! The Tencent callback protocol: the query string, the `Sign` check, which commands block,
//! which reply codes a responder may give, and the room a body belongs to. Pure functions
//! over bytes and strings; HTTP and the bus live elsewhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub const GIFT: &str = "Live.CallbackBeforeSendGift";
pub const MESSAGE: &str = "Group.CallbackBeforeSendMsg";

/// Tencent gives up on a blocking callback after this long; our deadline must be shorter.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The query parameters Tencent sends, matched case-insensitively and percent-decoded.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pub sdk_app_id: Option<String>,
    pub command: Option<String>,
    pub client_ip: Option<String>,
    pub opt_platform: Option<String>,
    pub sign: Option<String>,
    pub request_time: Option<String>,
}

impl Query {
    /// Parses a raw query string. Unknown keys are ignored; the first of a repeated key wins.
    pub fn parse(raw: &str) -> Query {
        let mut query = Query::default();
        for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
            let slot = match key.to_ascii_lowercase().as_str() {
                "sdkappid" => &mut query.sdk_app_id,
                "callbackcommand" => &mut query.command,
                "clientip" => &mut query.client_ip,
                "optplatform" => &mut query.opt_platform,
                "sign" => &mut query.sign,
                "requesttime" => &mut query.request_time,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        query
    }
}

/// Why a signature was refused; the text goes to the caller and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignError {
    Missing,
    BadTime,
    Stale,
    Mismatch,
}

impl SignError {
    pub fn reason(self) -> &'static str {
        match self {
            SignError::Missing => "Sign and RequestTime are required",
            SignError::BadTime => "RequestTime is not a Unix time in seconds",
            SignError::Stale => "RequestTime is outside the allowed clock skew",
            SignError::Mismatch => "Sign does not match",
        }
    }
}

/// `hex(sha256(token ++ request_time))`, as Tencent computes it.
pub fn sign(token: &str, request_time: &str) -> String {
    hex::encode(digest(token, request_time))
}

fn digest(token: &str, request_time: &str) -> [u8; 32] {
    Sha256::new().chain_update(token.as_bytes()).chain_update(request_time.as_bytes()).finalize().into()
}

/// Checks `Sign` against the token in constant time and `RequestTime` against the clock.
pub fn verify(
    token: &str,
    sign: Option<&str>,
    request_time: Option<&str>,
    max_skew: Duration,
    now: SystemTime,
) -> Result<(), SignError> {
    let (Some(sign), Some(request_time)) = (sign, request_time) else {
        return Err(SignError::Missing);
    };
    let seconds: u64 = request_time.parse().map_err(|_| SignError::BadTime)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(seconds) > max_skew.as_secs() {
        return Err(SignError::Stale);
    }
    let mut given = [0u8; 32];
    hex::decode_to_slice(sign, &mut given).map_err(|_| SignError::Mismatch)?;
    let difference = given.iter().zip(digest(token, request_time)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference == 0 {
        Ok(())
    } else {
        Err(SignError::Mismatch)
    }
}

/// A command the gateway must answer with a decision rather than a plain OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocking {
    Gift,
    Message,
}

impl Blocking {
    pub const ALL: [Blocking; 2] = [Blocking::Gift, Blocking::Message];

    /// `None` for every informational command, including ones never seen before.
    pub fn of(command: &str) -> Option<Blocking> {
        match command {
            GIFT => Some(Blocking::Gift),
            MESSAGE => Some(Blocking::Message),
            _ => None,
        }
    }

    pub fn command(self) -> &'static str {
        match self {
            Blocking::Gift => GIFT,
            Blocking::Message => MESSAGE,
        }
    }

    /// Whether a responder may answer this code: allow, reject, (silent drop for messages),
    /// or a code in the documented pass-through range.
    pub fn valid_code(self, code: i64) -> bool {
        match self {
            Blocking::Gift => matches!(code, 0 | 1 | 102100..=102200),
            Blocking::Message => matches!(code, 0 | 1 | 2 | 10100..=10200),
        }
    }
}

/// The fields of a callback body the gateway reads; everything else is skipped unparsed. Any
/// JSON object is a body: a field of an unexpected type or a repeated field (the last one
/// counts, as in most JSON parsers) is tolerated, not an error.
#[derive(Debug, Default)]
pub struct Body {
    /// `Some("")` when the body's command is not a string, so that it never matches.
    pub callback_command: Option<String>,
    room_id: Option<Id>,
    room_info: Option<Nested>,
    group_id: Option<Id>,
    from_room_id: Option<Id>,
    from_room_info: Option<Nested>,
    event_info: Option<Nested>,
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Body, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier)]
        enum Field {
            CallbackCommand,
            RoomId,
            RoomInfo,
            GroupId,
            FromRoomId,
            FromRoomInfo,
            EventInfo,
            #[serde(other)]
            Other,
        }

        struct Fields;

        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Body;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                let mut body = Body::default();
                while let Some(field) = map.next_key()? {
                    match field {
                        Field::CallbackCommand => {
                            body.callback_command = match map.next_value::<Option<Id>>()? {
                                Some(Id::Text(command)) => Some(command),
                                Some(_) => Some(String::new()),
                                None => None,
                            }
                        }
                        Field::RoomId => body.room_id = map.next_value()?,
                        Field::RoomInfo => body.room_info = map.next_value()?,
                        Field::GroupId => body.group_id = map.next_value()?,
                        Field::FromRoomId => body.from_room_id = map.next_value()?,
                        Field::FromRoomInfo => body.from_room_info = map.next_value()?,
                        Field::EventInfo => body.event_info = map.next_value()?,
                        Field::Other => drop(map.next_value::<serde::de::IgnoredAny>()?),
                    }
                }
                Ok(body)
            }
        }

        deserializer.deserialize_map(Fields)
    }
}

/// An object that may hold a `RoomId`; a field of another shape is tolerated, not an error.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Nested {
    Room {
        #[serde(rename = "RoomId")]
        room_id: Option<Id>,
    },
    Other(serde::de::IgnoredAny),
}

/// Room ids are strings in the docs, but the samples show that ids may arrive as numbers.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Number(serde_json::Number),
    Other(serde::de::IgnoredAny),
}

impl Id {
    fn text(&self) -> Option<String> {
        match self {
            Id::Text(text) if !text.is_empty() => Some(text.clone()),
            Id::Number(number) => Some(number.to_string()),
            _ => None,
        }
    }
}

impl Body {
    /// Parses a body that must be one JSON object, and nothing after it.
    pub fn parse(bytes: &[u8]) -> Result<Body, &'static str> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err("body is not a JSON object");
        }
        // UTF-8 first: serde_json skips the strings of fields it ignores without checking them,
        // and a consumer must never receive invalid JSON (found by fuzzing).
        let text = std::str::from_utf8(bytes).map_err(|_| "body is not valid UTF-8")?;
        serde_json::from_str(text).map_err(|_| "body is not valid JSON")
    }

    /// The room the event belongs to: the first of `RoomId`, `RoomInfo.RoomId`, `GroupId`,
    /// `FromRoomId`, `FromRoomInfo.RoomId`, `EventInfo.RoomId` (the README's "Key").
    pub fn room_key(&self) -> Option<String> {
        fn room(nested: &Option<Nested>) -> Option<&Id> {
            match nested {
                Some(Nested::Room { room_id }) => room_id.as_ref(),
                _ => None,
            }
        }
        [
            self.room_id.as_ref(),
            room(&self.room_info),
            self.group_id.as_ref(),
            self.from_room_id.as_ref(),
            room(&self.from_room_info),
            room(&self.event_info),
        ]
        .into_iter()
        .flatten()
        .find_map(Id::text)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn query_keys_are_case_insensitive_and_decoded() {
        let query = Query::parse(
            "sdkappid=1400&CALLBACKCOMMAND=Live.CallbackAfterCreateRoom&contenttype=json\
             &ClientIp=10.0.0.1&optplatform=iOS&sign=AB&requesttime=1669872112&x=y&SdkAppid=9",
        );
        assert_eq!(query.sdk_app_id.as_deref(), Some("1400"));
        assert_eq!(query.command.as_deref(), Some("Live.CallbackAfterCreateRoom"));
        assert_eq!(query.client_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(query.opt_platform.as_deref(), Some("iOS"));
        assert_eq!(query.sign.as_deref(), Some("AB"));
        assert_eq!(query.request_time.as_deref(), Some("1669872112"));
        assert_eq!(Query::parse("OptPlatform=Web%20App").opt_platform.as_deref(), Some("Web App"));
        assert_eq!(Query::parse(""), Query::default());
    }

    #[test]
    fn sign_matches_the_documented_example() {
        assert_eq!(sign("xxxxyyyy", "1669872112"), "17773bc39a671d7b9aa835458704d2a6db81360a5940292b587d6d760d484061");
    }

    #[test]
    fn verify_checks_sign_time_and_skew() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let skew = Duration::from_secs(60);
        let good = sign("xxxxyyyy", "1669872112");
        let ok = |s: &str, now| verify("xxxxyyyy", Some(s), Some("1669872112"), skew, now);
        assert_eq!(ok(&good, at(1669872112)), Ok(()));
        assert_eq!(ok(&good.to_uppercase(), at(1669872172)), Ok(()));
        assert_eq!(ok(&good, at(1669872173)), Err(SignError::Stale));
        assert_eq!(ok(&good, at(1669872051)), Err(SignError::Stale));
        assert_eq!(ok(&good[1..], at(1669872112)), Err(SignError::Mismatch));
        assert_eq!(ok(&"0".repeat(64), at(1669872112)), Err(SignError::Mismatch));
        assert_eq!(ok("zz", at(1669872112)), Err(SignError::Mismatch));
        let wrong_token = verify("other", Some(&good), Some("1669872112"), skew, at(1669872112));
        assert_eq!(wrong_token, Err(SignError::Mismatch));
        let missing = verify("t", None, Some("1"), skew, at(1));
        assert_eq!(missing, Err(SignError::Missing));
        let bad_time = verify("t", Some(&good), Some("soon"), skew, at(1));
        assert_eq!(bad_time, Err(SignError::BadTime));
    }

    #[test]
    fn classification_and_reply_codes() {
        assert_eq!(Blocking::of(GIFT), Some(Blocking::Gift));
        assert_eq!(Blocking::of(MESSAGE), Some(Blocking::Message));
        assert_eq!(Blocking::of("Live.CallbackAfterCreateRoom"), None);
        assert_eq!(Blocking::of("Live.CallbackSomethingNew"), None);
        for code in [0, 1, 102100, 102150, 102200] {
            assert!(Blocking::Gift.valid_code(code), "{code}");
        }
        for code in [-1, 2, 10100, 102099, 102201] {
            assert!(!Blocking::Gift.valid_code(code), "{code}");
        }
        for code in [0, 1, 2, 10100, 10200] {
            assert!(Blocking::Message.valid_code(code), "{code}");
        }
        for code in [3, 10099, 10201, 102100] {
            assert!(!Blocking::Message.valid_code(code), "{code}");
        }
    }

    #[test]
    fn room_key_follows_the_documented_order() {
        let key = |json: &str| Body::parse(json.as_bytes()).unwrap().room_key();
        assert_eq!(key(r#"{"RoomId":"r1","RoomInfo":{"RoomId":"r2"}}"#).as_deref(), Some("r1"));
        assert_eq!(key(r#"{"RoomInfo":{"RoomId":"r2"},"GroupId":"g"}"#).as_deref(), Some("r2"));
        assert_eq!(key(r#"{"GroupId":"@TGS#2J4"}"#).as_deref(), Some("@TGS#2J4"));
        assert_eq!(key(r#"{"FromRoomId":"pk-3"}"#).as_deref(), Some("pk-3"));
        assert_eq!(key(r#"{"FromRoomInfo":{"RoomId":"pk-3"}}"#).as_deref(), Some("pk-3"));
        assert_eq!(key(r#"{"EventInfo":{"RoomId":"635055"}}"#).as_deref(), Some("635055"));
        assert_eq!(key(r#"{"RoomId":635055}"#).as_deref(), Some("635055"));
        assert_eq!(key(r#"{"RoomId":"","GroupId":"g"}"#).as_deref(), Some("g"));
        assert_eq!(key(r#"{"RoomId":[1],"RoomInfo":"x","GroupId":"g"}"#).as_deref(), Some("g"));
        assert_eq!(key(r#"{"From_Account":"u"}"#), None);
    }

    proptest::proptest! {
        #[test]
        fn query_parsing_never_panics(raw in ".*") {
            let _ = Query::parse(&raw);
        }

        #[test]
        fn query_values_round_trip(app in "[^\\x00]{0,40}", command in "[A-Za-z.]{1,40}") {
            let raw = form_urlencoded::Serializer::new(String::new())
                .append_pair("SdkAppid", &app)
                .append_pair("CALLBACKCOMMAND", &command)
                .finish();
            let query = Query::parse(&raw);
            proptest::prop_assert_eq!(query.sdk_app_id.as_deref(), Some(app.as_str()));
            proptest::prop_assert_eq!(query.command.as_deref(), Some(command.as_str()));
        }

        #[test]
        fn only_the_right_sign_verifies(token in ".{1,64}", other in ".{1,64}", time in 0u64..4_000_000_000, sign in ".*") {
            let now = UNIX_EPOCH + Duration::from_secs(time);
            let skew = Duration::from_secs(60);
            let text = time.to_string();
            let good = super::sign(&token, &text);
            proptest::prop_assert_eq!(verify(&token, Some(&good), Some(&text), skew, now), Ok(()));
            if other != token {
                let wrong = super::sign(&other, &text);
                proptest::prop_assert_eq!(verify(&token, Some(&wrong), Some(&text), skew, now), Err(SignError::Mismatch));
            }
            if !sign.eq_ignore_ascii_case(&good) {
                proptest::prop_assert!(verify(&token, Some(&sign), Some(&text), skew, now).is_err());
            }
        }

        #[test]
        fn bodies_are_accepted_exactly_when_they_are_json_objects(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let is_object = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object());
            proptest::prop_assert_eq!(Body::parse(&bytes).is_ok(), is_object);
        }

        #[test]
        fn json_objects_are_accepted_whatever_their_fields(value in json_object()) {
            let bytes = serde_json::to_vec_pretty(&value).unwrap();
            proptest::prop_assert!(Body::parse(&bytes).is_ok());
        }
    }

    /// Arbitrary JSON objects, with the fields the gateway reads among arbitrary others.
    pub fn json_object() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(serde_json::Value::from),
            ".{0,12}".prop_map(serde_json::Value::from),
        ];
        let value = leaf.prop_recursive(3, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(
                    prop_oneof![Just("RoomId".to_owned()), Just("RoomInfo".to_owned()), ".{0,8}"],
                    inner,
                    0..6
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        proptest::collection::btree_map(
            prop_oneof![Just("RoomId".to_owned()), Just("GroupId".to_owned()), Just("EventInfo".to_owned()), ".{0,8}"],
            value,
            0..8,
        )
        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
    }

    #[test]
    fn body_must_be_one_json_object() {
        assert!(Body::parse(b" {\"CallbackCommand\":\"x\"}\n").is_ok());
        for bad in [&b"[]"[..], b"", b"null", b"{", b"{} {}", b"\"{}\"", b"[{}]", b"{\"x\":\"\xff\"}"] {
            assert!(Body::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let body = Body::parse(br#"{"CallbackCommand":"Live.X","Nested":{"a":[1,2]}}"#).unwrap();
        assert_eq!(body.callback_command.as_deref(), Some("Live.X"));
        // Found by fuzzing: repeated fields and odd types are still a JSON object.
        let body = Body::parse(br#"{"GroupId":"a","GroupId":"b","CallbackCommand":7}"#).unwrap();
        assert_eq!(body.room_key().as_deref(), Some("b"));
        assert_eq!(body.callback_command.as_deref(), Some(""));
    }
}
