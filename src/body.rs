//! The body of a callback as the gateway reads it: one JSON object within the nesting limit,
//! walked once, keeping only its `CallbackCommand` and the fields that name its room. Shared by
//! every surface; pure functions over bytes.

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
