//! The [`Message`] every backend carries: an accepted callback's attributes, computed once,
//! the CloudEvents header names each backend gives them, the percent-encoding of the NATS
//! binding, and the destination-name check.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::traces::Context;

/// One accepted callback as it travels to the bus, attributes computed once per request.
#[derive(Debug, Clone)]
pub struct Message {
    /// CloudEvents `id`: a UUIDv7, or one its callback determines ([`derived_id`]: signed Live
    /// and Chat callbacks, TRTC); the same on every retry.
    pub id: String,
    /// CloudEvents `type`: the CallbackCommand, `trtc.{EventGroupId}.{EventType}`, a
    /// `css.` name, or `hookbus.decision` / `hookbus.deadletter` for the gateway's own events.
    pub event_type: String,
    /// Kafka topic, NATS subject, AMQP routing key: `{prefix}.{event_type}` for an event,
    /// [`request_destination`] for a decision request.
    pub destination: String,
    /// The room, when the body names one, exactly as it came: the Kafka key, and (cut to
    /// [`MAX_ATTRIBUTE_BYTES`]) `partitionkey`.
    pub key: Option<String>,
    /// When the event happened, when its callback says so (CSS), else when it was received.
    pub time: SystemTime,
    /// RFC 3339 form of `time`.
    pub time_text: String,
    /// When the gateway accepted it (read back from the spool: its recorded `time`): where its
    /// publish span starts.
    pub accepted: SystemTime,
    pub sdk_app_id: String,
    /// CloudEvents `source`: `/tencent/{SdkAppid}`.
    pub source: String,
    pub client_ip: String,
    pub opt_platform: String,
    /// W3C trace context: the request's, or a new trace (its id is the event id's).
    pub trace: Context,
    pub tracestate: Option<String>,
    /// Requests only: Unix milliseconds by which the reply must arrive.
    pub deadline_ms: Option<u64>,
    /// The request body exactly as received.
    pub payload: Bytes,
}

/// Facts about a callback's request that become attributes.
#[derive(Debug, Default, Clone)]
pub struct Origin {
    pub sdk_app_id: String,
    pub client_ip: String,
    pub opt_platform: String,
    /// The request's W3C `traceparent`; a new trace is started when it is not a valid one.
    pub traceparent: String,
    /// The request's W3C `tracestate`, kept with a valid `traceparent` only.
    pub tracestate: Option<String>,
}

impl Message {
    /// A new event received now, with a fresh id, destined for `{prefix}.{event_type}`.
    pub fn new(prefix: &str, event_type: &str, key: Option<String>, origin: Origin, payload: Bytes) -> Message {
        let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned();
        Message::identified(id, prefix, event_type, key, origin, payload)
    }

    /// A new event received now with the id `id` (one its callback determines), destined for
    /// `{prefix}.{event_type}`.
    pub fn identified(
        id: String,
        prefix: &str,
        event_type: &str,
        key: Option<String>,
        origin: Origin,
        payload: Bytes,
    ) -> Message {
        let destination = [prefix, ".", event_type].concat();
        Message::restore(id, SystemTime::now(), event_type.to_owned(), destination, key, origin, payload)
    }

    /// An event from its recorded fields (a new one, or one read back from the spool); the
    /// attributes derived from them are computed here and nowhere else.
    pub fn restore(
        id: String,
        time: SystemTime,
        event_type: String,
        destination: String,
        key: Option<String>,
        origin: Origin,
        payload: Bytes,
    ) -> Message {
        // A new trace, the event id as its trace id, when the request came with no valid one.
        let (trace, tracestate) = match Context::parse(&origin.traceparent) {
            Some(trace) => (trace, origin.tracestate),
            None => (Context::start(&id), None),
        };
        Message {
            trace,
            tracestate,
            id,
            event_type,
            destination,
            key,
            time,
            time_text: time_text(time),
            accepted: time,
            source: ["/tencent/", &origin.sdk_app_id].concat(),
            sdk_app_id: origin.sdk_app_id,
            client_ip: cut_owned(origin.client_ip),
            opt_platform: cut_owned(origin.opt_platform),
            deadline_ms: None,
            payload,
        }
    }

    /// Says when the event happened (CloudEvents `time`), for a callback that names it itself;
    /// otherwise `time` is when it was received. A time RFC 3339 cannot write (past the year
    /// 9999) is not a time the event happened: the received time stays.
    pub fn happened_at(&mut self, time: SystemTime) {
        if time.duration_since(UNIX_EPOCH).is_ok_and(|since| since.as_secs() > LAST_RFC3339_SECOND) {
            return;
        }
        self.time = time;
        self.time_text = time_text(time);
    }

    /// Makes this callback a decision request whose reply is useful until `deadline_ms` (Unix
    /// milliseconds): sent to [`request_destination`], apart from every event.
    pub fn ask(&mut self, deadline_ms: u64) {
        let prefix = self.destination.strip_suffix(&self.event_type).and_then(|prefix| prefix.strip_suffix('.'));
        self.destination = request_destination(prefix.unwrap_or_default(), &self.event_type);
        self.deadline_ms = Some(deadline_ms);
    }

    /// A new event about this one (an audit of its decision, the notice of its death): a fresh
    /// id, received now, of `event_type` to `destination`, with this one's room, origin and
    /// trace.
    pub fn follow_up(&self, event_type: &str, destination: String, payload: Bytes) -> Message {
        let origin = Origin {
            sdk_app_id: self.sdk_app_id.clone(),
            client_ip: self.client_ip.clone(),
            opt_platform: self.opt_platform.clone(),
            traceparent: self.trace.header().to_owned(),
            tracestate: self.tracestate.clone(),
        };
        let id = uuid::Uuid::now_v7().to_string();
        Message::restore(id, SystemTime::now(), event_type.into(), destination, self.key.clone(), origin, payload)
    }

    /// CloudEvents attributes in binary mode, unprefixed, as they are: each backend encodes
    /// them as its binding says (NATS: [`percent_encoded`]).
    pub fn attributes(&self) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        self.attributes_named(&ATTRIBUTES)
    }

    /// CloudEvents attributes in binary mode under the names a backend gives them: `names` is
    /// [`attribute_names!`] with the backend's prefix, so that no name is built per message.
    pub fn attributes_named(
        &self,
        names: &'static [&'static str; 13],
    ) -> impl Iterator<Item = (&'static str, Cow<'_, str>)> {
        self.attribute_values().into_iter().zip(names).filter_map(|(value, name)| Some((*name, value?)))
    }

    /// The attributes as the CloudEvents NATS binding writes header values ([`percent_encoded`]),
    /// under `names` as [`Message::attributes_named`] gives them, each an owned text (what a
    /// header value holds). Those the gateway writes itself ([`MADE_PLAIN`]) are not checked.
    pub fn attributes_percent_encoded(
        &self,
        names: &'static [&'static str; 13],
    ) -> impl Iterator<Item = (&'static str, String)> + '_ {
        self.attribute_values().into_iter().zip(names.iter().zip(MADE_PLAIN)).filter_map(|(value, (name, plain))| {
            let value = value?;
            Some((*name, if plain { value.into_owned() } else { percent_encoded(&value).into_owned() }))
        })
    }

    /// Every attribute's value, in the order of [`ATTRIBUTES`]; `None` where it has none.
    fn attribute_values(&self) -> [Option<Cow<'_, str>>; 13] {
        [
            Some(Cow::Borrowed(self.id.as_str())),
            Some(Cow::Borrowed(self.event_type.as_str())),
            Some(Cow::Borrowed(self.source.as_str())),
            Some(Cow::Borrowed("1.0")),
            Some(Cow::Borrowed(self.time_text.as_str())),
            Some(Cow::Borrowed("application/json")),
            Some(Cow::Borrowed(self.sdk_app_id.as_str())),
            Some(Cow::Borrowed(self.client_ip.as_str())),
            Some(Cow::Borrowed(self.opt_platform.as_str())),
            self.key.as_deref().map(|key| Cow::Borrowed(cut(key))),
            Some(Cow::Borrowed(self.trace.header())),
            self.tracestate.as_deref().map(Cow::Borrowed),
            self.deadline_ms.map(|ms| Cow::Owned(ms.to_string())),
        ]
    }

    /// Memory this message holds: itself, its attributes and its payload.
    pub fn footprint(&self) -> usize {
        let attributes = [
            &self.id,
            &self.event_type,
            &self.destination,
            &self.time_text,
            &self.sdk_app_id,
            &self.source,
            &self.client_ip,
            &self.opt_platform,
        ];
        let optional = [&self.key, &self.tracestate].into_iter().flatten();
        let text: usize =
            attributes.into_iter().chain(optional).map(String::capacity).sum::<usize>() + self.trace.header().len();
        std::mem::size_of::<Message>() + text + self.payload.len()
    }

    /// Time left before the reply deadline (zero when passed or not a request).
    pub fn time_left(&self) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.deadline_ms.map(|ms| Duration::from_millis(ms).saturating_sub(now)).unwrap_or_default()
    }
}

/// `time` in RFC 3339 to the millisecond, as humantime writes it. Every callback's time is
/// written, and nearly always in the second of the one before: the text of that second is made
/// once per second on each thread, and only the milliseconds are written per callback.
fn time_text(time: SystemTime) -> String {
    std::thread_local! {
        /// A second since the epoch, and its text up to the seconds (`2026-12-04T17:27:00`).
        static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() <= LAST_RFC3339_SECOND => since,
        // Whatever humantime makes of it (it refuses such a time).
        _ => return humantime::format_rfc3339_millis(time).to_string(),
    };
    let (second, mut text) = SECOND.get();
    if second != since.as_secs() {
        let whole = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(since.as_secs())).to_string();
        text.copy_from_slice(&whole.as_bytes()[..19]);
        SECOND.set((since.as_secs(), text));
    }
    let millis = since.subsec_millis();
    let mut written = String::with_capacity(24);
    written.push_str(std::str::from_utf8(&text).expect("ASCII"));
    written.push('.');
    for digit in [millis / 100, millis / 10 % 10, millis % 10] {
        written.push(char::from(b'0' + digit as u8));
    }
    written.push('Z');
    written
}

/// An event id its callback determines, so that every instance and every retry of the same
/// callback gives the same one: a UUID (version 8) made of 128 bits of a digest of what makes
/// the callback. With `time_ms` (Unix milliseconds of a time the callback carries and a retry
/// repeats, such as a signed `RequestTime`), the first 48 bits are that time, as in a UUIDv7, so
/// that ids still sort by time; the rest come from the digest.
pub fn derived_id(time_ms: Option<u64>, digest: [u8; 16]) -> String {
    let mut bytes = digest;
    if let Some(ms) = time_ms {
        bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    }
    uuid::Builder::from_custom_bytes(bytes).into_uuid().hyphenated().to_string()
}

/// The segment under the prefix that holds decision requests and nothing else: no subscription
/// or binding to one command family's events (`tencent.Live.*`, `tencent.Live.#`) takes a
/// request, and a monitor never stands in for a responder. No CallbackCommand may start with it.
pub const REQUESTS: &str = "decide";

/// Where the decision requests of `command` go: `{prefix}.decide.{command}`.
pub fn request_destination(prefix: &str, command: &str) -> String {
    [prefix, ".", REQUESTS, ".", command].concat()
}

/// The names of the CloudEvents attributes, in the order [`Message::attributes`] gives them,
/// each after `$prefix`: the header names of a backend, built at compile time.
macro_rules! attribute_names {
    ($prefix:literal) => {
        [
            concat!($prefix, "id"),
            concat!($prefix, "type"),
            concat!($prefix, "source"),
            concat!($prefix, "specversion"),
            concat!($prefix, "time"),
            concat!($prefix, "datacontenttype"),
            concat!($prefix, "sdkappid"),
            concat!($prefix, "clientip"),
            concat!($prefix, "optplatform"),
            concat!($prefix, "partitionkey"),
            concat!($prefix, "traceparent"),
            concat!($prefix, "tracestate"),
            concat!($prefix, "deadline"),
        ]
    };
}
pub(crate) use attribute_names;

/// The attributes' own names.
pub const ATTRIBUTES: [&str; 13] = attribute_names!("");

/// The attributes whose values the gateway writes itself, in the order of [`ATTRIBUTES`]: the id
/// (a UUID), `specversion`, `time` (RFC 3339), `datacontenttype`, `traceparent` (checked when it
/// came with the request) and `deadline` (digits). Printable ASCII without a space, `"` or `%`,
/// they have nothing [`percent_encoded`] would change.
const MADE_PLAIN: [bool; 13] = [true, false, false, true, true, true, false, false, false, false, true, false, true];

/// Longest attribute taken from a request (the room, `OptPlatform`, the client address); a
/// longer one is cut at a character boundary. Tencent's rooms are at most 48 bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 256;

/// `text` cut at a character boundary to at most [`MAX_ATTRIBUTE_BYTES`].
fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_ATTRIBUTE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn cut_owned(mut text: String) -> String {
    let end = cut(&text).len();
    text.truncate(end);
    text
}

/// An attribute value as the CloudEvents NATS binding (1.0.3, 3.1.3.2) writes a header value:
/// every byte of the UTF-8 of a space, `"`, `%` and any character outside U+0021–U+007E
/// percent-encoded (`%0D`, `%E6%88%BF`), so that a decoder that follows the binding gets the
/// value back exactly, and no CR or LF (on which the NATS client panics) reaches a header.
/// Values with nothing to encode (ids, types, times) are borrowed as they are.
pub(crate) fn percent_encoded(value: &str) -> Cow<'_, str> {
    let plain = |byte: u8| matches!(byte, 0x21..=0x7E) & (byte != b'"') & (byte != b'%');
    // No early exit, so that the check vectorises: a value is nearly always plain.
    if value.bytes().fold(true, |all, byte| all & plain(byte)) {
        return Cow::Borrowed(value);
    }
    let mut encoded = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        if plain(byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    Cow::Owned(encoded)
}

/// Whether `text` can stand in a destination name on every bus (Kafka topics are the
/// strictest): letters, digits, `.`, `_` and `-`, no empty part between dots, at most 128 bytes.
/// Prefixes and commands are both checked with it.
pub fn valid_name(text: &str) -> bool {
    // One pass without a branch per byte (a callback's command is asked on every callback): the
    // byte before the first is taken as a dot, so that a dot may follow none, nor be the last.
    let (mut refused, mut after_dot) = (false, true);
    for &byte in text.as_bytes() {
        let dot = byte == b'.';
        refused |= !NAME_BYTES[usize::from(byte)] | (dot & after_dot);
        after_dot = dot;
    }
    !refused && !after_dot && text.len() <= 128
}

/// The bytes a destination name may hold: letters, digits, `.`, `_` and `-`.
static NAME_BYTES: [bool; 256] = {
    let mut allowed = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        allowed[byte] = b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-';
        byte += 1;
    }
    allowed
};

/// 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_header_values_are_percent_encoded_as_the_binding_says() {
        assert_eq!(percent_encoded("Live.CallbackAfterCreateRoom"), "Live.CallbackAfterCreateRoom");
        assert!(matches!(percent_encoded("2024-01-01T00:00:00.000Z"), Cow::Borrowed(_)));
        assert_eq!(percent_encoded("房间 1 \"x\" 50%"), "%E6%88%BF%E9%97%B4%201%20%22x%22%2050%25");
        assert_eq!(percent_encoded("a\r\nNats-Msg-Id: x"), "a%0D%0ANats-Msg-Id:%20x");
        assert_eq!(percent_encoded("t\u{0}\u{7f}\u{85}"), "t%00%7F%C2%85");
        assert_ne!(percent_encoded("a\r"), percent_encoded("a%0D"), "two rooms, two keys");
        assert_eq!(percent_encoded("a%0D"), "a%250D");
    }

    #[test]
    fn the_attributes_the_gateway_writes_need_no_encoding() {
        let origin = Origin {
            sdk_app_id: "14 00".into(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: Some("a=\"1\"".into()),
            ..Origin::default()
        };
        let mut message = Message::new("t", "C", Some("房".into()), origin, Bytes::new());
        message.ask(1_700_000_000_000);
        for (plain, (value, name)) in MADE_PLAIN.into_iter().zip(message.attribute_values().iter().zip(ATTRIBUTES)) {
            let value = value.as_deref().unwrap_or_default();
            assert!(!plain || percent_encoded(value) == value, "{name}: {value}");
        }
        let encoded: Vec<_> = message.attributes_percent_encoded(&ATTRIBUTES).collect();
        let expected: Vec<_> =
            message.attributes().map(|(name, value)| (name, percent_encoded(&value).into_owned())).collect();
        assert_eq!(encoded, expected);
        assert_eq!(encoded.len(), 13);
    }

    #[test]
    fn attributes_from_requests_are_kept_and_cut_the_room_key_whole() {
        let origin = Origin { client_ip: "é".repeat(200), opt_platform: "iOS 17 \"x\"".into(), ..Origin::default() };
        let room = "房".repeat(100);
        let message = Message::new("t", "C", Some(room.clone()), origin, Bytes::new());
        assert_eq!(message.key.as_deref(), Some(room.as_str()), "the key is the room, whole");
        let attribute = |name: &str| message.attributes().find(|(n, _)| *n == name).map(|(_, v)| v.into_owned());
        assert_eq!(attribute("partitionkey"), Some("房".repeat(85)), "cut at a character boundary");
        assert_eq!(attribute("clientip"), Some("é".repeat(128)));
        assert_eq!(attribute("optplatform").as_deref(), Some("iOS 17 \"x\""), "as it came");
    }

    #[test]
    fn derived_ids_carry_their_time() {
        let digest = [0xab; 16];
        let timed = uuid::Uuid::parse_str(&derived_id(Some(1_669_872_112_000), digest)).unwrap();
        assert_eq!(timed.get_version_num(), 8);
        assert_eq!(&timed.as_bytes()[..6], &1_669_872_112_000u64.to_be_bytes()[2..], "the time, as in a UUIDv7");
        assert_eq!(&timed.as_bytes()[9..], &digest[9..], "then the digest");
        let untimed = uuid::Uuid::parse_str(&derived_id(None, digest)).unwrap();
        assert_eq!(&untimed.as_bytes()[..6], &digest[..6]);
        assert_ne!(derived_id(Some(1), digest), derived_id(Some(2), digest));
    }

    #[test]
    fn time_text_is_humantimes() {
        let seconds = [0, 1, 59, 951_782_400, 1_703_589_922, 1_703_589_923, 4_102_444_800, LAST_RFC3339_SECOND];
        for (second, nanos) in
            seconds.into_iter().flat_map(|s| [0, 999_999, 1_000_000, 123_456_789, 999_999_999].map(|n| (s, n)))
        {
            let time = UNIX_EPOCH + Duration::new(second, nanos);
            assert_eq!(time_text(time), humantime::format_rfc3339_millis(time).to_string(), "{second} {nanos}");
        }
    }

    #[test]
    fn a_time_past_the_year_9999_leaves_the_received_time() {
        let mut message = Message::new("p", "css.push.started", None, Origin::default(), Bytes::new());
        let received = message.time_text.clone();
        message.happened_at(UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND + 1));
        assert_eq!(message.time_text, received);
        message.happened_at(UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND));
        assert_eq!(message.time_text, "9999-12-31T23:59:59.000Z");
    }

    #[test]
    fn requests_have_a_namespace_of_their_own() {
        let mut message = Message::new("tencent", "Live.CallbackBeforeSendGift", None, Origin::default(), Bytes::new());
        assert_eq!(message.destination, "tencent.Live.CallbackBeforeSendGift");
        message.ask(7);
        assert_eq!(message.destination, "tencent.decide.Live.CallbackBeforeSendGift");
        assert_eq!(message.deadline_ms, Some(7));
    }

    proptest::proptest! {
        #[test]
        fn names_are_told_as_before(text in "[a-c._\\- é]{0,8}|x{120,130}") {
            let before = !text.is_empty()
                && text.len() <= 128
                && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !text.starts_with('.')
                && !text.ends_with('.')
                && !text.contains("..");
            proptest::prop_assert_eq!(valid_name(&text), before);
        }
    }

    #[test]
    fn names_must_fit_every_bus() {
        assert!(valid_name("Live.CallbackAfterCreateRoom"));
        assert!(valid_name("Future_Thing-2"));
        for bad in ["", "a b", "a.>", "a.*", ".a", "a.", "a..b", &"x".repeat(129), ".", "..", "a.é", "a\u{0}"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name(&"x".repeat(128)) && valid_name("a") && valid_name("a.b-c_d.9"));
    }

    #[test]
    fn trace_context_is_kept_when_valid_and_started_when_not() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let origin = |traceparent: &str| Origin {
            traceparent: traceparent.into(),
            tracestate: Some("a=1".into()),
            ..Origin::default()
        };
        let kept = Message::new("t", "C", None, origin(parent), Bytes::new());
        assert_eq!((kept.trace.header(), kept.tracestate.as_deref()), (parent, Some("a=1")));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let started = Message::new("t", "C", None, origin(bad), Bytes::new());
            assert!(crate::traces::valid(started.trace.header()), "{}", started.trace.header());
            assert!(started.trace.header().contains(&started.id.replace('-', "")), "the event id is the trace id");
            assert_eq!(started.tracestate, None);
        }
    }
}
