//! The Tencent Live and Chat callback protocol: the query string, the `Sign` check, which
//! commands block and which reply codes a responder may give (the body is `crate::body`). Pure
//! functions over bytes and strings; HTTP and the bus live elsewhere.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub const GIFT: &str = "Live.CallbackBeforeSendGift";
pub const MESSAGE: &str = "Group.CallbackBeforeSendMsg";

/// Tencent gives up on a blocking callback after this long; our deadline must be shorter.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// The query parameters Tencent sends, matched case-insensitively and percent-decoded; borrowed
/// from the raw query when they have nothing to decode, as in Tencent's queries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query<'a> {
    pub sdk_app_id: Option<Cow<'a, str>>,
    pub command: Option<Cow<'a, str>>,
    pub client_ip: Option<Cow<'a, str>>,
    pub opt_platform: Option<Cow<'a, str>>,
    pub sign: Option<Cow<'a, str>>,
    pub request_time: Option<Cow<'a, str>>,
    /// The first protocol key that appeared more than once (case-insensitively), if any: such
    /// a query means different things to readers that take the first or the last value.
    pub repeated: Option<&'static str>,
}

/// The query parameters Tencent adds, as it spells them, in the order of [`Query::parse`]'s slots.
const PROTOCOL_KEYS: [&str; 7] =
    ["SdkAppid", "CallbackCommand", "ClientIP", "OptPlatform", "Sign", "RequestTime", "contenttype"];

impl<'a> Query<'a> {
    /// Whether the query carries a Live and Chat protocol parameter: Tencent puts them in every
    /// Live and Chat callback's query, and never in a TRTC or CSS one's.
    pub fn names_live(&self) -> bool {
        self.sdk_app_id.is_some() || self.command.is_some() || self.sign.is_some() || self.request_time.is_some()
    }

    /// Parses a raw query string. Unknown keys are ignored; of a repeated protocol key the first
    /// value is kept and the repetition noted in [`Query::repeated`].
    pub fn parse(raw: &'a str) -> Query<'a> {
        let mut query = Query::default();
        let mut content_type = false;
        // Read on every callback, with memchr (a word at a time): whether anything in it is
        // encoded is asked once, of the whole query; Tencent's queries have nothing encoded, and
        // their pieces are then borrowed as they are.
        let encoded = memchr::memchr2(b'%', b'+', raw.as_bytes()).is_some();
        let decoded = |piece: &'a str| if encoded { form_decoded(piece) } else { Cow::Borrowed(piece) };
        let bytes = raw.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let end = memchr::memchr(b'&', &bytes[start..]).map_or(bytes.len(), |at| start + at);
            // '&' and '=' are ASCII: every piece is a str of its own.
            let pair = &raw[start..end];
            start = end + 1;
            let (key, value) = match memchr::memchr(b'=', pair.as_bytes()) {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, ""),
            };
            let key = decoded(key);
            // Compared in place, only with the names of its length: as Tencent spells it first,
            // then in any case.
            let Some(at) = PROTOCOL_KEYS.iter().position(|name| {
                name.len() == key.len() && (key.as_bytes() == name.as_bytes() || key.eq_ignore_ascii_case(name))
            }) else {
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
                *slot = Some(decoded(value));
            } else {
                query.repeated.get_or_insert(PROTOCOL_KEYS[at]);
            }
        }
        query
    }
}

/// One name or value of an `application/x-www-form-urlencoded` query: `+` is a space, `%XX` a
/// byte, invalid UTF-8 replaced. Borrowed when it has nothing to decode.
fn form_decoded(raw: &str) -> Cow<'_, str> {
    if !raw.contains(['%', '+']) {
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

#[cfg(test)]
mod tests {
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
            proptest::prop_assert_eq!(Query::parse(&raw).sign.map(Cow::into_owned), first);
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
    }
}
