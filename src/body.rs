//! The body of a callback as the gateway reads it: one JSON object within the nesting limit,
//! walked once, keeping only its `CallbackCommand` and the fields that name its room. Shared by
//! every surface; pure functions over bytes.

/// Tencent's documented bodies nest at most 4 levels; past the limit a body is refused.
pub const MAX_DEPTH: usize = 32;

/// The fields of a callback body the gateway reads. Any JSON object is a body: a field of an
/// unexpected type or a repeated field (the last one counts, as in most JSON parsers) is
/// tolerated, not an error. Every value is walked once, in the pass that validates the JSON,
/// and its depth checked on the way.
#[derive(Debug, Default, PartialEq)]
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
#[derive(Debug, PartialEq)]
enum Scanned {
    Text(String),
    Number(serde_json::Number),
    Object { room_id: Option<Box<Scanned>> },
    Null,
    Other,
}

impl Scanned {
    /// The value as an id: a non-empty string, or a number in its JSON form.
    fn into_id(self) -> Option<String> {
        match self {
            Scanned::Text(text) if !text.is_empty() => Some(text),
            Scanned::Number(number) => Some(number.to_string()),
            _ => None,
        }
    }

    /// An object's `RoomId` as an id.
    fn into_room_id(self) -> Option<String> {
        match self {
            Scanned::Object { room_id: Some(room_id) } => room_id.into_id(),
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
            body.keep(key, value);
        }
        Ok(body)
    }
}

impl Body {
    /// Keeps a top-level member's value where its field goes (an unknown field's is dropped),
    /// whichever reader scanned it.
    fn keep(&mut self, field: Field, value: Scanned) {
        let slot = match field {
            Field::CallbackCommand => {
                self.callback_command = match value {
                    Scanned::Text(command) => Some(command),
                    Scanned::Null => None,
                    _ => Some(String::new()),
                };
                return;
            }
            Field::RoomId => &mut self.room_id,
            Field::RoomInfo => &mut self.room_info,
            Field::GroupId => &mut self.group_id,
            Field::FromRoomId => &mut self.from_room_id,
            Field::FromRoomInfo => &mut self.from_room_info,
            Field::EventInfo => &mut self.event_info,
            Field::Other => return,
        };
        *slot = Some(value);
    }

    /// Parses a body that must be one JSON object, and nothing after it, nested at most
    /// `max_depth` levels (the object itself is level 1).
    pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Body, BodyError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(BodyError::NotObject);
        }
        // UTF-8 first: a consumer must never receive invalid JSON (found by fuzzing).
        let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
        match (Plain { text, at: 0, max: max_depth.min(PLAIN_MAX_DEPTH) }).body() {
            Some(body) => Ok(body),
            None => Body::read_by_serde(text, max_depth),
        }
    }

    /// The reading of any body, by serde_json: what [`Plain`] does not read, and the wording of
    /// every error.
    fn read_by_serde(text: &str, max_depth: usize) -> Result<Body, BodyError> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let body = serde::de::DeserializeSeed::deserialize(Fields { max: max_depth }, &mut deserializer)
            .and_then(|body| deserializer.end().map(|()| body));
        body.map_err(
            |error| if error.to_string().starts_with(TOO_DEEP) { BodyError::TooDeep } else { BodyError::NotJson },
        )
    }

    /// The room the event belongs to: the first of `RoomId`, `RoomInfo.RoomId`, `GroupId`,
    /// `FromRoomId`, `FromRoomInfo.RoomId`, `EventInfo.RoomId` (the README's "Field").
    pub fn room_key(self) -> Option<String> {
        let id = |value: Option<Scanned>| value.and_then(Scanned::into_id);
        let room = |value: Option<Scanned>| value.and_then(Scanned::into_room_id);
        id(self.room_id)
            .or_else(|| room(self.room_info))
            .or_else(|| id(self.group_id))
            .or_else(|| id(self.from_room_id))
            .or_else(|| room(self.from_room_info))
            .or_else(|| room(self.event_info))
    }
}

/// Deepest nesting [`Plain`] reads itself (its recursion stays well within a thread's stack):
/// serde_json, which reads the deeper ones, refuses 128 levels, so the plain reader takes at
/// most 127, as it would.
const PLAIN_MAX_DEPTH: usize = 127;

/// The common body read without serde, at a fraction of its cost (it runs on every callback):
/// JSON without an escape in any string and without an exponent in any number, whose kept
/// numbers are whole and non-negative. It gives the [`Body`] the serde reading would give, or
/// `None` wherever it is not certain of it, an error included: that body is read by serde
/// again, which also words the error. `text` is valid UTF-8; the reading starts at `at`.
struct Plain<'a> {
    text: &'a str,
    at: usize,
    /// The deepest array or object level read here: past it, serde reads the body (and
    /// refuses it when past the configured limit).
    max: usize,
}

impl<'a> Plain<'a> {
    /// The body: one object, and nothing after it but whitespace.
    fn body(mut self) -> Option<Body> {
        self.whitespace();
        let mut body = Body::default();
        let mut fields = self.object_start(1)?;
        while fields {
            let key = self.key()?;
            let field = match key {
                "CallbackCommand" => Field::CallbackCommand,
                "RoomId" => Field::RoomId,
                "RoomInfo" => Field::RoomInfo,
                "GroupId" => Field::GroupId,
                "FromRoomId" => Field::FromRoomId,
                "FromRoomInfo" => Field::FromRoomInfo,
                "EventInfo" => Field::EventInfo,
                _ => Field::Other,
            };
            let value = self.value(2, field != Field::Other)?;
            body.keep(field, value);
            fields = self.next_member(b'}')?;
        }
        self.whitespace();
        (self.at == self.text.len()).then_some(body)
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// JSON's whitespace (serde_json's: not a form feed).
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// `{` of an object at `level`, and the whitespace after it: whether a member follows.
    fn object_start(&mut self, level: usize) -> Option<bool> {
        self.container_start(level, b'{', b'}')
    }

    fn container_start(&mut self, level: usize, open: u8, close: u8) -> Option<bool> {
        if level > self.max || self.peek() != Some(open) {
            return None;
        }
        self.at += 1;
        self.whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Some(false);
        }
        Some(true)
    }

    /// After a member: `,` (then whether another follows: always) or `close` (none).
    fn next_member(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        let next = self.peek()?;
        self.at += 1;
        if next == b',' {
            self.whitespace();
            Some(true)
        } else {
            (next == close).then_some(false)
        }
    }

    /// A member's key and its `:`, with the whitespace around it.
    fn key(&mut self) -> Option<&'a str> {
        let key = self.string()?;
        self.whitespace();
        (self.peek() == Some(b':')).then_some(())?;
        self.at += 1;
        self.whitespace();
        Some(key)
    }

    /// A string without an escape or a control character: its text, the quotes read.
    fn string(&mut self) -> Option<&'a str> {
        (self.peek() == Some(b'"')).then_some(())?;
        let start = self.at + 1;
        let rest = &self.text.as_bytes()[start..];
        let length = string_end(rest)?;
        (rest[length] == b'"').then_some(())?;
        self.at = start + length + 1;
        let text: &'a str = self.text;
        Some(&text[start..start + length])
    }

    /// One value at `level` (the level of its members, if it has any), as [`Scan`] gives it
    /// when it is kept; when not, only checked (its result is dropped).
    fn value(&mut self, level: usize, keep: bool) -> Option<Scanned> {
        match self.peek()? {
            b'"' => {
                let text = self.string()?;
                Some(if keep { Scanned::Text(text.to_owned()) } else { Scanned::Other })
            }
            b'{' => {
                let mut room_id = None;
                let mut members = self.object_start(level)?;
                while members {
                    let key = self.key()?;
                    let kept = keep && key == "RoomId";
                    let value = self.value(level + 1, kept)?;
                    if kept {
                        room_id = Some(Box::new(value));
                    }
                    members = self.next_member(b'}')?;
                }
                Some(if keep { Scanned::Object { room_id } } else { Scanned::Other })
            }
            b'[' => {
                let mut items = self.container_start(level, b'[', b']')?;
                while items {
                    self.value(level + 1, false)?;
                    items = self.next_member(b']')?;
                }
                Some(Scanned::Other)
            }
            b't' => self.literal("true", Scanned::Other),
            b'f' => self.literal("false", Scanned::Other),
            b'n' => self.literal("null", Scanned::Null),
            _ => self.number(keep),
        }
    }

    fn literal(&mut self, word: &str, value: Scanned) -> Option<Scanned> {
        self.text[self.at..].starts_with(word).then_some(())?;
        self.at += word.len();
        Some(value)
    }

    /// A number without an exponent, of at most 300 whole digits (so that it is surely finite
    /// as an f64, as serde_json requires). Kept only when whole, non-negative and within a u64:
    /// serde_json writes that one back as it came.
    fn number(&mut self, keep: bool) -> Option<Scanned> {
        let negative = self.peek() == Some(b'-');
        self.at += usize::from(negative);
        let whole = self.at;
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let digits = &self.text[whole..self.at];
        let fraction = self.peek() == Some(b'.');
        if fraction {
            self.at += 1;
            let start = self.at;
            self.digits();
            (self.at > start).then_some(())?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || digits.len() > 300 {
            return None;
        }
        if !keep {
            return Some(Scanned::Other);
        }
        if negative || fraction {
            return None;
        }
        Some(Scanned::Number(digits.parse::<u64>().ok()?.into()))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }
}

/// Where the first `"`, `\\` or control character of `bytes` is: 8 bytes at a time, by the
/// classic word tricks for "has a zero byte" (of the word xor the byte sought) and "has a byte
/// less than" (0x20). Each flags a byte's high bit; a false flag only ever follows a true one,
/// so the lowest flag is the first match.
fn string_end(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let below = |word: u64, byte: u8| word.wrapping_sub(ONES * u64::from(byte)) & !word & HIGH;
    let mut at = 0;
    while let Some(word) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        let flags =
            below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20);
        if flags != 0 {
            return Some(at + flags.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    bytes[at..].iter().position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20).map(|end| at + end)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn depth_is_counted_from_the_body_itself() {
        let nested = |levels: usize| format!("{}{}", "{\"a\":".repeat(levels - 1) + "{}", "}".repeat(levels - 1));
        assert!(Body::parse(nested(3).as_bytes(), 3).is_ok());
        assert_eq!(Body::parse(nested(4).as_bytes(), 3).err(), Some(BodyError::TooDeep));
        assert!(Body::parse(br#"{"a":[1]}"#, 2).is_ok());
        assert_eq!(Body::parse(br#"{"a":[[1]]}"#, 2).err(), Some(BodyError::TooDeep));
        assert_eq!(Body::parse(br#"{"RoomInfo":{"RoomId":[[1]]}}"#, 3).err(), Some(BodyError::TooDeep));
        // Both readers take what serde_json would: 127 levels, not 128, whatever the limit.
        for levels in [127, 128] {
            let serde = serde_json::from_str::<serde_json::Value>(&nested(levels)).is_ok();
            assert_eq!(Body::parse(nested(levels).as_bytes(), 200).is_ok(), serde, "{levels} levels");
        }
        let bomb = format!("{{\"a\":{}{}}}", "[".repeat(20_000), "]".repeat(20_000));
        assert_eq!(Body::parse(bomb.as_bytes(), MAX_DEPTH).err(), Some(BodyError::TooDeep));
        assert_eq!(Body::parse(br#"{"a":[1,}"#, MAX_DEPTH).err(), Some(BodyError::NotJson));
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

    /// The serde reading alone, without [`Plain`].
    fn read_by_serde(bytes: &[u8], max_depth: usize) -> Result<Body, BodyError> {
        Body::read_by_serde(std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?, max_depth)
    }

    fn plain(text: &str, max: usize) -> Option<Body> {
        Plain { text, at: 0, max: max.min(PLAIN_MAX_DEPTH) }.body()
    }

    #[test]
    fn the_plain_reading_is_the_serde_one_where_it_reads_at_all() {
        let bench = include_str!("../bench/body-230.json");
        for simple in [r#"{}"#, r#"{"a":1}"#, r#"{"a":"b"}"#, r#"{"a":[1]}"#, r#"{"a":{"b":1}}"#, r#"{"RoomId":"x"}"#] {
            assert!(plain(simple, MAX_DEPTH).is_some(), "{simple}");
        }
        assert!(plain(bench, MAX_DEPTH).is_some(), "the common body is read without serde");
        assert_eq!(plain(bench, MAX_DEPTH), read_by_serde(bench.as_bytes(), MAX_DEPTH).ok());
        for text in [
            r#"{"RoomId":635055}"#,
            r#"{"RoomId":18446744073709551615}"#,
            r#"{"RoomId":18446744073709551616}"#,
            r#"{"RoomId":-0}"#,
            r#"{"RoomId":-1,"GroupId":1.50}"#,
            r#"{"RoomId":0,"x":-0.0}"#,
            r#"{"RoomId":1e3}"#,
            r#"{"x":1e400}"#,
            r#"{"x":01}"#,
            r#"{"x":1.}"#,
            r#"{"x":-}"#,
            r#"{"x":.5}"#,
            r#"{"x":[1,]}"#,
            r#"{"x":1,}"#,
            r#"{,}"#,
            r#"{}"#,
            " {\t\"a\" :\r[ ] ,\"b\":{ }}\n ",
            "{\"a\":1}\u{c}",
            r#"{"a":tru}"#,
            r#"{"a":nul,"b":null}"#,
            r#"{"CallbackCommand":null}"#,
            r#"{"CallbackCommand":7,"RoomId":"r","RoomId":"s"}"#,
            r#"{"CallbackCommand":"C","CallbackCommand":"D"}"#,
            r#"{"RoomInfo":{"RoomId":{"RoomId":"x"}},"EventInfo":{"RoomId":null}}"#,
            r#"{"FromRoomInfo":{"RoomId":"a","RoomId":7},"GroupId":""}"#,
            r#"{"Room\u0049d":"r9"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\n"}"#,
            r#"{"a":"房间"}"#,
            r#"{"a":[[[[1]]]]}"#,
            r#"{"a":{"b":{"c":{}}}}"#,
            r#"{"a" "b"}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}}"#,
        ] {
            for max in [1, 2, 3, 4, MAX_DEPTH] {
                if let Some(body) = plain(text, max) {
                    assert_eq!(Ok(body), read_by_serde(text.as_bytes(), max), "{text} at {max}");
                }
                let read = Body::parse(text.as_bytes(), max);
                assert_eq!(read, read_by_serde(text.as_bytes(), max), "{text} at {max}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_plain_reading_gives_what_serde_gives(value in json_object(), max in 1usize..6, pretty: bool) {
            let bytes = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
            let text = std::str::from_utf8(&bytes).unwrap();
            if let Some(body) = plain(text, max) {
                proptest::prop_assert_eq!(Ok(body), read_by_serde(&bytes, max));
            }
            proptest::prop_assert_eq!(Body::parse(&bytes, max), read_by_serde(&bytes, max));
        }

        #[test]
        fn string_end_finds_the_first_quote_backslash_or_control_character(
            bytes in proptest::collection::vec(proptest::prop_oneof![0x18u8..0x26, 0x5au8..0x5e, 0x7eu8..=0xff], 0..40)
        ) {
            let first = bytes.iter().position(|&byte| byte == b'"' || byte == b'\\' || byte < 0x20);
            proptest::prop_assert_eq!(string_end(&bytes), first);
        }

        #[test]
        fn the_plain_reading_is_never_wrong_on_any_text(text in "[{}\\[\\],:\" 0-9a-zA-Z.eE+-]{0,40}") {
            for max in [1, 3, MAX_DEPTH] {
                if let Some(body) = plain(&text, max) {
                    proptest::prop_assert_eq!(Ok(body), read_by_serde(text.as_bytes(), max), "{}", text);
                }
            }
        }
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
        assert_eq!(body.callback_command.as_deref(), Some(""));
        assert_eq!(body.room_key().as_deref(), Some("b"));
    }
}
