//! The Tencent callback protocol: the query string, the `Sign` check, which commands block,
//! which reply codes a responder may give, and the room a body belongs to. Pure functions
//! over bytes and strings; HTTP and the bus live elsewhere.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The first protocol key that appeared more than once (case-insensitively), if any: such
    /// a query means different things to readers that take the first or the last value.
    pub repeated: Option<&'static str>,
}

/// The query parameters Tencent adds, as it spells them, in the order of [`Query::parse`]'s slots.
const PROTOCOL_KEYS: [&str; 7] =
    ["SdkAppid", "CallbackCommand", "ClientIP", "OptPlatform", "Sign", "RequestTime", "contenttype"];

impl Query {
    /// Parses a raw query string. Unknown keys are ignored; of a repeated protocol key the first
    /// value is kept and the repetition noted in [`Query::repeated`].
    pub fn parse(raw: &str) -> Query {
        let mut query = Query::default();
        let mut content_type = false;
        let bytes = raw.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            // One pass over a pair, read on every callback: where it ends, where its first '='
            // is, and whether its key or its value has anything to decode.
            let (mut end, mut equals, mut encoded) = (start, None, [false; 2]);
            while end < bytes.len() && bytes[end] != b'&' {
                match bytes[end] {
                    b'=' if equals.is_none() => equals = Some(end),
                    b'%' | b'+' => encoded[usize::from(equals.is_some())] = true,
                    _ => {}
                }
                end += 1;
            }
            // '&' and '=' are ASCII: every piece is a str of its own.
            let key = form_decoded(&raw[start..equals.unwrap_or(end)], encoded[0]);
            let value = equals.map_or("", |equals| &raw[equals + 1..end]);
            start = end + 1;
            // Compared in place, in any case, and only with the names of its length.
            let Some(at) =
                PROTOCOL_KEYS.iter().position(|name| name.len() == key.len() && key.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            let slot = match at {
                0 => &mut query.sdk_app_id,
                1 => &mut query.command,
                2 => &mut query.client_ip,
                3 => &mut query.opt_platform,
                4 => &mut query.sign,
                5 => &mut query.request_time,
                _ => {
                    if std::mem::replace(&mut content_type, true) {
                        query.repeated.get_or_insert(PROTOCOL_KEYS[at]);
                    }
                    continue;
                }
            };
            if slot.is_none() {
                *slot = Some(form_decoded(value, encoded[1]).into_owned());
            } else {
                query.repeated.get_or_insert(PROTOCOL_KEYS[at]);
            }
        }
        query
    }
}

/// One name or value of an `application/x-www-form-urlencoded` query: `+` is a space, `%XX` a
/// byte, invalid UTF-8 replaced. Borrowed when it has nothing to decode (`encoded` false), as in
/// Tencent's queries, so that only the values kept are copied.
fn form_decoded(raw: &str, encoded: bool) -> Cow<'_, str> {
    if !encoded {
        return Cow::Borrowed(raw);
    }
    let spaced = raw.replace('+', " ");
    Cow::Owned(percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned())
}

/// Why the signature of a Live or Chat callback's query (`Sign`, `RequestTime`) was refused;
/// the text goes to the caller and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuerySignError {
    Missing,
    BadTime,
    Stale,
    Mismatch,
}

impl QuerySignError {
    pub fn reason(self) -> &'static str {
        match self {
            QuerySignError::Missing => "Sign and RequestTime are required",
            QuerySignError::BadTime => "RequestTime is not a Unix time in seconds",
            QuerySignError::Stale => "RequestTime is outside the allowed clock skew",
            QuerySignError::Mismatch => "Sign does not match",
        }
    }

    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            QuerySignError::Missing => "sign_missing",
            QuerySignError::BadTime => "sign_bad_time",
            QuerySignError::Stale => "sign_stale",
            QuerySignError::Mismatch => "sign_mismatch",
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

/// Checks `RequestTime` against the clock and `Sign` against each of `tokens`, every one in
/// constant time; returns the position of the token that signed the request.
pub fn verify<'a>(
    tokens: impl IntoIterator<Item = &'a str>,
    sign: Option<&str>,
    request_time: Option<&str>,
    max_skew: Duration,
    now: SystemTime,
) -> Result<Signed, QuerySignError> {
    let (Some(sign), Some(request_time)) = (sign, request_time) else {
        return Err(QuerySignError::Missing);
    };
    let seconds: u64 = request_time.parse().map_err(|_| QuerySignError::BadTime)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now.abs_diff(seconds) > max_skew.as_secs() {
        return Err(QuerySignError::Stale);
    }
    let mut given = [0u8; 32];
    hex::decode_to_slice(sign, &mut given).map_err(|_| QuerySignError::Mismatch)?;
    let mut matched = None;
    for (position, token) in tokens.into_iter().enumerate() {
        let difference = given.iter().zip(digest(token, request_time)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if difference == 0 && matched.is_none() {
            matched = Some(position);
        }
    }
    let token = matched.ok_or(QuerySignError::Mismatch)?;
    Ok(Signed { token, request_time: seconds })
}

/// A signature that matched: which token signed, and the `RequestTime` it signed (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    /// The position of the token among those given.
    pub token: usize,
    pub request_time: u64,
}

/// A reply field a responder may return with ErrorCode 0 to change what Tencent does, the
/// JSON type it must have, and what bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub field: &'static str,
    /// `[` for an array, `"` for a string: the first byte of its JSON.
    pub starts_with: u8,
    pub bound: Bound,
}

/// What Tencent accepts for a rewritten field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Part of the message: the JSON of all such fields together at most [`MAX_MESSAGE_BYTES`].
    Message,
    /// An array of UserIDs, each a string of at most [`MAX_USER_ID_BYTES`].
    UserIds,
}

/// Chat's bound on a one-to-one or group message: "no longer than 12KB"
/// (tencentcloud.com/document/product/1047/34381, Use Limits).
pub const MAX_MESSAGE_BYTES: usize = 12 * 1024;
/// Chat's bound on a UserID: 32 bytes (the same page).
pub const MAX_USER_ID_BYTES: usize = 32;

const MSG_BODY: Rewrite = Rewrite { field: "MsgBody", starts_with: b'[', bound: Bound::Message };
const CLOUD_CUSTOM_DATA: Rewrite = Rewrite { field: "CloudCustomData", starts_with: b'"', bound: Bound::Message };
const REFUSED_MEMBERS: Rewrite = Rewrite { field: "RefusedMembers_Account", starts_with: b'[', bound: Bound::UserIds };

/// A blocking callback Tencent documents: the reply codes it takes, the fields a reply may
/// rewrite, and what Tencent itself does when no answer comes in time (`allow` or not), which
/// is the default fallback. The README's table lists each with its documentation page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    pub command: &'static str,
    /// 0 allow, 1 reject, and the command's own codes.
    codes: &'static [std::ops::RangeInclusive<i64>],
    pub rewrites: &'static [Rewrite],
    /// Tencent's own default when the callback fails: allow (deliver) or deny (block).
    pub allow_by_default: bool,
}

/// Every blocking callback whose reply semantics are documented.
pub const BLOCKING: [Blocking; 6] = [
    Blocking { command: GIFT, codes: &[0..=1, 102100..=102200], rewrites: &[], allow_by_default: false },
    // The Live room message and the Chat group message are the same callback.
    Blocking {
        command: MESSAGE,
        codes: &[0..=2, 10100..=10200],
        rewrites: &[MSG_BODY, CLOUD_CUSTOM_DATA],
        allow_by_default: true,
    },
    Blocking {
        command: "C2C.CallbackBeforeSendMsg",
        codes: &[0..=2, 120001..=130000],
        rewrites: &[MSG_BODY, CLOUD_CUSTOM_DATA],
        allow_by_default: true,
    },
    Blocking {
        command: "Group.CallbackBeforeApplyJoinGroup",
        codes: &[0..=1, 10100..=10200],
        rewrites: &[],
        allow_by_default: true,
    },
    Blocking {
        command: "Group.CallbackBeforeCreateGroup",
        codes: &[0..=1, 10100..=10200],
        rewrites: &[],
        allow_by_default: true,
    },
    Blocking {
        command: "Group.CallbackBeforeInviteJoinGroup",
        codes: &[0..=1, 10100..=10200],
        rewrites: &[REFUSED_MEMBERS],
        allow_by_default: true,
    },
];

impl Blocking {
    /// The documented blocking callback `command`, if it is one.
    pub fn of(command: &str) -> Option<&'static Blocking> {
        BLOCKING.iter().find(|blocking| blocking.command == command)
    }

    /// Whether a responder may answer this code.
    pub fn valid_code(&self, code: i64) -> bool {
        self.codes.iter().any(|codes| codes.contains(&code))
    }
}

/// Tencent's documented bodies nest at most 4 levels; past the limit a body is refused.
pub const MAX_DEPTH: usize = 32;

/// The fields of a callback body the gateway reads. Any JSON object is a body: a field of an
/// unexpected type or a repeated field (the last one counts, as in most JSON parsers) is
/// tolerated, not an error. Every value is walked once, in the pass that validates the JSON,
/// and its depth checked on the way.
#[derive(Debug, Default)]
pub struct Body {
    /// `Some("")` when the body's command is not a string, so that it never matches.
    pub callback_command: Option<String>,
    room_id: Option<Scanned>,
    room_info: Option<Scanned>,
    group_id: Option<Scanned>,
    from_room_id: Option<Scanned>,
    from_room_info: Option<Scanned>,
    event_info: Option<Scanned>,
}

/// Why a body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    NotObject,
    NotUtf8,
    NotJson,
    /// Nested deeper than the limit.
    TooDeep,
}

impl BodyError {
    /// The `reason` label of `hookbus_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            BodyError::TooDeep => "too_deep",
            _ => "not_json_object",
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            BodyError::NotObject => "body is not a JSON object",
            BodyError::NotUtf8 => "body is not valid UTF-8",
            BodyError::NotJson => "body is not valid JSON",
            BodyError::TooDeep => "body is nested too deeply",
        }
    }
}

/// What the gateway keeps of one JSON value: a string or number (an id), an object's
/// `RoomId`, or nothing.
#[derive(Debug)]
enum Scanned {
    Text(String),
    Number(serde_json::Number),
    Object { room_id: Option<Box<Scanned>> },
    Null,
    Other,
}

impl Scanned {
    /// The value as an id: a non-empty string, or a number in its JSON form.
    fn id(&self) -> Option<String> {
        match self {
            Scanned::Text(text) if !text.is_empty() => Some(text.clone()),
            Scanned::Number(number) => Some(number.to_string()),
            _ => None,
        }
    }

    /// An object's `RoomId` as an id.
    fn room_id(&self) -> Option<String> {
        match self {
            Scanned::Object { room_id: Some(room_id) } => room_id.id(),
            _ => None,
        }
    }
}

/// Walks one value at nesting level `depth` (the body itself is level 1), refusing an array or
/// object at a level past `max`. Only a value the gateway reads is `keep`: the others are
/// validated and dropped without a copy of their strings.
#[derive(Clone, Copy)]
struct Scan {
    depth: usize,
    max: usize,
    keep: bool,
}

/// An object's key, as far as the gateway reads it: told apart without a copy of the key.
#[derive(serde::Deserialize, Clone, Copy, PartialEq, Eq)]
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

/// The error message that marks a body too deep, told apart from invalid JSON by its text.
const TOO_DEEP: &str = "nested too deeply";

impl Scan {
    /// The scan of this array's or object's members; an error when it is itself too deep.
    fn members<E: serde::de::Error>(self) -> Result<Scan, E> {
        if self.depth > self.max {
            return Err(E::custom(TOO_DEEP));
        }
        Ok(Scan { depth: self.depth + 1, ..self })
    }

    /// The same scan, keeping its value or not.
    fn keeping(self, keep: bool) -> Scan {
        Scan { keep, ..self }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Scan {
    type Value = Scanned;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Scanned, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Scan {
    type Value = Scanned;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_str<E>(self, text: &str) -> Result<Scanned, E> {
        Ok(if self.keep { Scanned::Text(text.to_owned()) } else { Scanned::Other })
    }

    fn visit_string<E>(self, text: String) -> Result<Scanned, E> {
        Ok(if self.keep { Scanned::Text(text) } else { Scanned::Other })
    }

    fn visit_u64<E>(self, number: u64) -> Result<Scanned, E> {
        Ok(Scanned::Number(number.into()))
    }

    fn visit_i64<E>(self, number: i64) -> Result<Scanned, E> {
        Ok(Scanned::Number(number.into()))
    }

    fn visit_f64<E>(self, number: f64) -> Result<Scanned, E> {
        Ok(serde_json::Number::from_f64(number).map_or(Scanned::Other, Scanned::Number))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Scanned, E> {
        Ok(Scanned::Other)
    }

    fn visit_unit<E>(self) -> Result<Scanned, E> {
        Ok(Scanned::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Scanned, A::Error> {
        let inner = self.members()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(Scanned::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Scanned, A::Error> {
        let inner = self.members()?;
        let mut room_id = None;
        while let Some(key) = map.next_key::<Field>()? {
            let keep = self.keep && key == Field::RoomId;
            let value = map.next_value_seed(inner.keeping(keep))?;
            if keep {
                room_id = Some(Box::new(value));
            }
        }
        Ok(if self.keep { Scanned::Object { room_id } } else { Scanned::Other })
    }
}

/// The top-level object: its fields walked with [`Scan`], the ones the gateway reads kept.
struct Fields {
    max: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for Fields {
    type Value = Body;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Body, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Fields {
    type Value = Body;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut body = Body::default();
        let inner = Scan { depth: 1, max: self.max, keep: false }.members()?;
        while let Some(key) = map.next_key::<Field>()? {
            let value = map.next_value_seed(inner.keeping(key != Field::Other))?;
            let slot = match key {
                Field::CallbackCommand => {
                    body.callback_command = match value {
                        Scanned::Text(command) => Some(command),
                        Scanned::Null => None,
                        _ => Some(String::new()),
                    };
                    continue;
                }
                Field::RoomId => &mut body.room_id,
                Field::RoomInfo => &mut body.room_info,
                Field::GroupId => &mut body.group_id,
                Field::FromRoomId => &mut body.from_room_id,
                Field::FromRoomInfo => &mut body.from_room_info,
                Field::EventInfo => &mut body.event_info,
                Field::Other => continue,
            };
            *slot = Some(value);
        }
        Ok(body)
    }
}

impl Body {
    /// Parses a body that must be one JSON object, and nothing after it, nested at most
    /// `max_depth` levels (the object itself is level 1).
    pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Body, BodyError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(BodyError::NotObject);
        }
        // UTF-8 first: a consumer must never receive invalid JSON (found by fuzzing).
        let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let body = serde::de::DeserializeSeed::deserialize(Fields { max: max_depth }, &mut deserializer)
            .and_then(|body| deserializer.end().map(|()| body));
        body.map_err(
            |error| if error.to_string().starts_with(TOO_DEEP) { BodyError::TooDeep } else { BodyError::NotJson },
        )
    }

    /// The room the event belongs to: the first of `RoomId`, `RoomInfo.RoomId`, `GroupId`,
    /// `FromRoomId`, `FromRoomInfo.RoomId`, `EventInfo.RoomId` (the README's "Field").
    pub fn room_key(&self) -> Option<String> {
        let id = |value: &Option<Scanned>| value.as_ref().and_then(Scanned::id);
        let room = |value: &Option<Scanned>| value.as_ref().and_then(Scanned::room_id);
        id(&self.room_id)
            .or_else(|| room(&self.room_info))
            .or_else(|| id(&self.group_id))
            .or_else(|| id(&self.from_room_id))
            .or_else(|| room(&self.from_room_info))
            .or_else(|| room(&self.event_info))
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
    fn repeated_protocol_keys_are_noted_whatever_their_case() {
        assert_eq!(Query::parse("SdkAppid=1&sdkappid=2").repeated, Some("SdkAppid"));
        assert_eq!(Query::parse("CallbackCommand=a&x=1&CALLBACKCOMMAND=b").repeated, Some("CallbackCommand"));
        assert_eq!(Query::parse("contenttype=json&ContentType=json").repeated, Some("contenttype"));
        assert_eq!(Query::parse("Sign=a&RequestTime=1&Sign=b").repeated, Some("Sign"));
        assert_eq!(Query::parse("SdkAppid=1&x=1&x=2&CallbackCommand=c").repeated, None, "other keys may repeat");
        assert_eq!(Query::parse("SdkAppid=1&sdkappid=2").sdk_app_id.as_deref(), Some("1"));
    }

    #[test]
    fn depth_is_counted_from_the_body_itself() {
        let nested = |levels: usize| format!("{}{}", "{\"a\":".repeat(levels - 1) + "{}", "}".repeat(levels - 1));
        assert!(Body::parse(nested(3).as_bytes(), 3).is_ok());
        assert_eq!(Body::parse(nested(4).as_bytes(), 3).err(), Some(BodyError::TooDeep));
        assert!(Body::parse(br#"{"a":[1]}"#, 2).is_ok());
        assert_eq!(Body::parse(br#"{"a":[[1]]}"#, 2).err(), Some(BodyError::TooDeep));
        assert_eq!(Body::parse(br#"{"RoomInfo":{"RoomId":[[1]]}}"#, 3).err(), Some(BodyError::TooDeep));
        let bomb = format!("{{\"a\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(Body::parse(bomb.as_bytes(), MAX_DEPTH).err(), Some(BodyError::TooDeep));
        assert_eq!(Body::parse(br#"{"a":[1,}"#, MAX_DEPTH).err(), Some(BodyError::NotJson));
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
        let ok = |s: &str, now| verify(["xxxxyyyy"], Some(s), Some("1669872112"), skew, now).map(|signed| signed.token);
        assert_eq!(ok(&good, at(1669872112)), Ok(0));
        assert_eq!(ok(&good.to_uppercase(), at(1669872172)), Ok(0));
        assert_eq!(ok(&good, at(1669872173)), Err(QuerySignError::Stale));
        assert_eq!(ok(&good, at(1669872051)), Err(QuerySignError::Stale));
        assert_eq!(ok(&good[1..], at(1669872112)), Err(QuerySignError::Mismatch));
        assert_eq!(ok(&"0".repeat(64), at(1669872112)), Err(QuerySignError::Mismatch));
        assert_eq!(ok("zz", at(1669872112)), Err(QuerySignError::Mismatch));
        let wrong_token = verify(["other"], Some(&good), Some("1669872112"), skew, at(1669872112));
        let second = verify(["other", "xxxxyyyy"], Some(&good), Some("1669872112"), skew, at(1669872112))
            .map(|signed| signed.token);
        assert_eq!(
            verify(["xxxxyyyy"], Some(&good), Some("1669872112"), skew, at(1669872112))
                .map(|signed| signed.request_time),
            Ok(1669872112),
            "the time it read"
        );
        assert_eq!(second, Ok(1), "the token that signed it");
        assert_eq!(wrong_token, Err(QuerySignError::Mismatch));
        let missing = verify(["t"], None, Some("1"), skew, at(1));
        assert_eq!(missing, Err(QuerySignError::Missing));
        let bad_time = verify(["t"], Some(&good), Some("soon"), skew, at(1));
        assert_eq!(bad_time, Err(QuerySignError::BadTime));
    }

    #[test]
    fn classification_and_reply_codes() {
        let (gift, message) = (Blocking::of(GIFT).unwrap(), Blocking::of(MESSAGE).unwrap());
        assert!(Blocking::of("Live.CallbackAfterCreateRoom").is_none());
        assert!(Blocking::of("Live.CallbackSomethingNew").is_none());
        for code in [0, 1, 102100, 102150, 102200] {
            assert!(gift.valid_code(code), "{code}");
        }
        for code in [-1, 2, 10100, 102099, 102201] {
            assert!(!gift.valid_code(code), "{code}");
        }
        for code in [0, 1, 2, 10100, 10200] {
            assert!(message.valid_code(code), "{code}");
        }
        for code in [3, 10099, 10201, 102100] {
            assert!(!message.valid_code(code), "{code}");
        }
        let c2c = Blocking::of("C2C.CallbackBeforeSendMsg").unwrap();
        assert!(c2c.valid_code(120001) && c2c.valid_code(130000) && c2c.valid_code(2));
        assert!(!c2c.valid_code(10100), "C2C's pass-through range is not the room's");
        let join = Blocking::of("Group.CallbackBeforeApplyJoinGroup").unwrap();
        assert!(join.valid_code(10150) && !join.valid_code(2));
        assert!(!gift.allow_by_default && message.allow_by_default && c2c.allow_by_default);
    }

    #[test]
    fn room_key_follows_the_documented_order() {
        let key = |json: &str| Body::parse(json.as_bytes(), MAX_DEPTH).unwrap().room_key();
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
        // Keys are compared unescaped; a RoomId is read only where the order above names it.
        assert_eq!(key(r#"{"Room\u0049d":"r9"}"#).as_deref(), Some("r9"));
        assert_eq!(key(r#"{"Other":{"RoomId":"x"},"RoomInfo":{"Inner":{"RoomId":"y"}}}"#), None);
    }

    proptest::proptest! {
        #[test]
        fn query_parsing_never_panics(raw in ".*") {
            let _ = Query::parse(&raw);
        }

        /// The query is read as `form_urlencoded` reads it: the first value of each key, in any
        /// case, decoded.
        #[test]
        fn query_values_are_what_form_urlencoded_reads(raw in "([sSiIgn%+=&]|%[0-9a-fA-F]{2}|Sign|sign|SIGN|%53ign){0,30}") {
            let first = form_urlencoded::parse(raw.as_bytes())
                .find(|(key, _)| key.eq_ignore_ascii_case("Sign"))
                .map(|(_, value)| value.into_owned());
            proptest::prop_assert_eq!(Query::parse(&raw).sign, first);
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
            proptest::prop_assert_eq!(verify([token.as_str()], Some(&good), Some(&text), skew, now).map(|signed| signed.token), Ok(0));
            if other != token {
                let wrong = super::sign(&other, &text);
                proptest::prop_assert_eq!(verify([token.as_str()], Some(&wrong), Some(&text), skew, now), Err(QuerySignError::Mismatch));
            }
            if !sign.eq_ignore_ascii_case(&good) {
                proptest::prop_assert!(verify([token.as_str()], Some(&sign), Some(&text), skew, now).is_err());
            }
        }

        #[test]
        fn bodies_are_accepted_exactly_when_they_are_json_objects(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let is_object = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v.is_object());
            proptest::prop_assert_eq!(Body::parse(&bytes, MAX_DEPTH).is_ok(), is_object);
        }

        #[test]
        fn depth_is_refused_exactly_past_the_limit(value in json_object(), max in 1usize..6) {
            let bytes = serde_json::to_vec(&value).unwrap();
            proptest::prop_assert_eq!(Body::parse(&bytes, max).is_ok(), depth(&value) <= max);
        }

        #[test]
        fn json_objects_are_accepted_whatever_their_fields(value in json_object()) {
            let bytes = serde_json::to_vec_pretty(&value).unwrap();
            proptest::prop_assert!(Body::parse(&bytes, MAX_DEPTH).is_ok());
        }
    }

    /// Levels of arrays and objects in a value: 0 for a scalar, 1 for `{"a":1}`.
    fn depth(value: &serde_json::Value) -> usize {
        let members: Box<dyn Iterator<Item = &serde_json::Value>> = match value {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(fields) => Box::new(fields.values()),
            _ => return 0,
        };
        1 + members.map(depth).max().unwrap_or(0)
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
        assert!(Body::parse(b" {\"CallbackCommand\":\"x\"}\n", MAX_DEPTH).is_ok());
        for bad in [&b"[]"[..], b"", b"null", b"{", b"{} {}", b"\"{}\"", b"[{}]", b"{\"x\":\"\xff\"}"] {
            assert!(Body::parse(bad, MAX_DEPTH).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let body = Body::parse(br#"{"CallbackCommand":"Live.X","Nested":{"a":[1,2]}}"#, MAX_DEPTH).unwrap();
        assert_eq!(body.callback_command.as_deref(), Some("Live.X"));
        // Found by fuzzing: repeated fields and odd types are still a JSON object.
        let body = Body::parse(br#"{"GroupId":"a","GroupId":"b","CallbackCommand":7}"#, MAX_DEPTH).unwrap();
        assert_eq!(body.room_key().as_deref(), Some("b"));
        assert_eq!(body.callback_command.as_deref(), Some(""));
    }
}
