//! Blocking callbacks: ask a responder over the bus, wait until the deadline, check the reply,
//! and answer Tencent with the decision, a local rule's or the configured fallback. The
//! deadline lives here alone (`timeout` around `Bus::request`); backends only send and match
//! replies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;

use crate::bus::{Bus, BusError, Message};
use crate::rules::{Rule, Rules, When};
use crate::tencent::{Blocking, Bound, Rewrite, BLOCKING, MAX_MESSAGE_BYTES, MAX_USER_ID_BYTES};

/// The default of `--max-reply-bytes`: room for a message rewritten to the largest one Chat
/// accepts (12 KB, [`MAX_MESSAGE_BYTES`]) and the codes around it. Every other reply Tencent
/// documents is a code and a short phrase.
pub const MAX_REPLY_BYTES: usize = 16 * 1024;

/// The longest `ErrorInfo` passed to Tencent; a longer one is cut at a character boundary, so
/// that the responder's decision stands (a refused message stays refused) without a long text.
pub const MAX_ERROR_INFO_BYTES: usize = 256;

/// What to answer when no valid decision arrives in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    Allow,
    Deny,
}

impl std::str::FromStr for Fallback {
    type Err = String;

    fn from_str(text: &str) -> Result<Fallback, String> {
        match text {
            "allow" => Ok(Fallback::Allow),
            "deny" => Ok(Fallback::Deny),
            _ => Err("write allow or deny".into()),
        }
    }
}

/// A callback answered with a decision: one Tencent documents, or one made blocking with
/// `--blocking`, whose reply is checked generically (an integer ErrorCode, ErrorInfo passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Documented(&'static Blocking),
    Generic,
}

impl Kind {
    pub fn valid_code(self, code: i64) -> bool {
        match self {
            Kind::Documented(blocking) => blocking.valid_code(code),
            Kind::Generic => true,
        }
    }

    fn rewrites(self) -> &'static [Rewrite] {
        match self {
            Kind::Documented(blocking) => blocking.rewrites,
            Kind::Generic => &[],
        }
    }

    /// Tencent's own default for a documented callback; allow for the others, as Chat does.
    fn default_fallback(self) -> Fallback {
        match self {
            Kind::Documented(blocking) if !blocking.allow_by_default => Fallback::Deny,
            _ => Fallback::Allow,
        }
    }
}

/// The fallback of each blocking command that does not take Tencent's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallbacks(BTreeMap<String, Fallback>);

impl Fallbacks {
    pub fn set(&mut self, command: impl Into<String>, fallback: Fallback) {
        self.0.insert(command.into(), fallback);
    }

    fn of(&self, command: &str, kind: Kind) -> Fallback {
        self.0.get(command).copied().unwrap_or(kind.default_fallback())
    }
}

/// How blocking callbacks are decided.
#[derive(Debug, Clone)]
pub struct Decisions {
    pub timeout: Duration,
    /// Commands made blocking with `--blocking`.
    pub generic: BTreeSet<String>,
    pub rules: Arc<Rules>,
    /// A larger reply is invalid, unread (`--max-reply-bytes`).
    pub max_reply_bytes: usize,
    /// Failed requests are logged at most once a second.
    pub failures: Arc<std::sync::Mutex<crate::logs::Limiter>>,
}

impl Default for Decisions {
    fn default() -> Decisions {
        Decisions {
            timeout: Duration::default(),
            generic: BTreeSet::new(),
            rules: Arc::default(),
            max_reply_bytes: MAX_REPLY_BYTES,
            failures: Arc::default(),
        }
    }
}

/// What was wrong with a responder's reply; a metric label each. Every flaw but
/// [`Flaw::ErrorInfoCut`] makes the reply invalid: the fallback is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    TooLarge,
    NotAReply,
    ErrorInfoType,
    Code,
    RewriteType,
    RewriteTooLarge,
    /// `ErrorInfo` was longer than [`MAX_ERROR_INFO_BYTES`]: cut, the decision kept.
    ErrorInfoCut,
}

impl Flaw {
    pub const ALL: [Flaw; 7] = [
        Flaw::TooLarge,
        Flaw::NotAReply,
        Flaw::ErrorInfoType,
        Flaw::Code,
        Flaw::RewriteType,
        Flaw::RewriteTooLarge,
        Flaw::ErrorInfoCut,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Flaw::TooLarge => "too_large",
            Flaw::NotAReply => "not_a_reply",
            Flaw::ErrorInfoType => "error_info_type",
            Flaw::Code => "code",
            Flaw::RewriteType => "rewrite_type",
            Flaw::RewriteTooLarge => "rewrite_too_large",
            Flaw::ErrorInfoCut => "error_info_cut",
        }
    }

    /// Why, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Flaw::TooLarge => "larger than --max-reply-bytes",
            Flaw::NotAReply => "not a JSON object with an integer ErrorCode",
            Flaw::ErrorInfoType => "ErrorInfo is not a string",
            Flaw::Code => "ErrorCode is not valid for this command",
            Flaw::RewriteType => "a rewritten field is not of its type",
            Flaw::RewriteTooLarge => "a rewritten field is larger than Tencent accepts",
            Flaw::ErrorInfoCut => "ErrorInfo cut to 256 bytes",
        }
    }

    /// Whether the reply was refused for it, and the fallback answered.
    pub fn is_invalid(self) -> bool {
        self != Flaw::ErrorInfoCut
    }
}

/// A flawed reply as it is logged: the flaw, the reply's size and the reply as a log field.
#[derive(Debug, Clone)]
pub struct Flawed {
    pub flaw: Flaw,
    pub bytes: usize,
    /// Cut and escaped by [`crate::logs::field`].
    pub reply: String,
}

impl Flawed {
    fn of(flaw: Flaw, reply: &[u8]) -> Flawed {
        Flawed { flaw, bytes: reply.len(), reply: crate::logs::field(reply) }
    }
}

/// How a decision came about; a metric label each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reply,
    /// A `when = "always"` rule decided; the bus was not asked.
    Rule,
    Timeout,
    NoResponders,
    Invalid,
    BusError,
    /// The bus was not connected: the fallback at once, without asking.
    Disconnected,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Reply,
        Outcome::Rule,
        Outcome::Timeout,
        Outcome::NoResponders,
        Outcome::Invalid,
        Outcome::BusError,
        Outcome::Disconnected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Reply => "reply",
            Outcome::Rule => "rule",
            Outcome::Timeout => "timeout",
            Outcome::NoResponders => "no-responders",
            Outcome::Invalid => "invalid",
            Outcome::BusError => "bus-error",
            Outcome::Disconnected => "disconnected",
        }
    }
}

/// A decision: how it came about, the rule that made it if one did, and the answer.
#[derive(Debug, Clone)]
pub struct Decided {
    pub outcome: Outcome,
    pub rule: Option<String>,
    pub code: i64,
    pub info: String,
    /// The body to answer Tencent with.
    pub answer: Bytes,
    /// What was wrong with the responder's reply, when something was.
    pub flawed: Option<Flawed>,
}

/// The CloudEvents type of an audit event.
pub const AUDIT_TYPE: &str = "hookbus.decision";

impl Decided {
    /// The audit event of this decision on `request`, to `{prefix}.audit.{command}`: the
    /// outcome, the rule, the answer, the time it took and the callback as received.
    pub fn audit(&self, request: &Message, prefix: &str, latency: Duration) -> Message {
        #[derive(serde::Serialize)]
        struct Audit<'a> {
            id: &'a str,
            command: &'a str,
            outcome: &'static str,
            rule: Option<&'a str>,
            code: i64,
            info: &'a str,
            latency_ms: f64,
            body: &'a RawValue,
        }
        let fallback;
        let body: &RawValue = match serde_json::from_slice(&request.payload) {
            Ok(body) => body,
            Err(_) => {
                fallback = RawValue::from_string("null".into()).expect("null is JSON");
                &fallback
            }
        };
        let audit = Audit {
            id: &request.id,
            command: &request.event_type,
            outcome: self.outcome.label(),
            rule: self.rule.as_deref(),
            code: self.code,
            info: &self.info,
            latency_ms: latency.as_secs_f64() * 1000.0,
            body,
        };
        let payload = Bytes::from(serde_json::to_vec(&audit).expect("an audit event serialises"));
        request.follow_up(AUDIT_TYPE, format!("{prefix}.audit.{}", request.event_type), payload)
    }
}

impl Decisions {
    /// Every blocking command: the documented ones, then those made blocking with `--blocking`.
    pub fn blocking(&self) -> impl Iterator<Item = &str> {
        BLOCKING.iter().map(|blocking| blocking.command).chain(self.generic.iter().map(String::as_str))
    }

    /// How `command` is decided, when it is a blocking callback.
    pub fn kind(&self, command: &str) -> Option<Kind> {
        Blocking::of(command).map(Kind::Documented).or_else(|| self.generic.contains(command).then_some(Kind::Generic))
    }

    /// Decides `message`: by a rule that always applies, else by a responder over the bus, else
    /// by a fallback rule or the fallback. Never fails: every problem becomes a fallback.
    pub async fn decide(&self, bus: &Bus, kind: Kind, mut message: Message, fallbacks: &Fallbacks) -> Decided {
        let (command, payload) = (message.event_type.clone(), message.payload.clone());
        // The body is parsed for the rules only when the command has any.
        let body =
            |when| self.rules.has(&command, when).then(|| serde_json::from_slice::<serde_json::Value>(&payload).ok());
        if let Some(rule) =
            body(When::Always).flatten().and_then(|body| self.rules.first(&command, When::Always, &body).cloned())
        {
            return by_rule(Outcome::Rule, &rule, None);
        }
        let mut flawed = None;
        let outcome = if bus.is_connected() {
            // Counted from the callback's arrival: time it spent waiting for the gateway (a
            // burst on a busy core) is time Tencent is waiting too.
            let deadline = message.accepted + self.timeout;
            message.ask(deadline.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
            let left = deadline.duration_since(SystemTime::now()).unwrap_or_default();
            match tokio::time::timeout(left, bus.request(&message)).await {
                Ok(Ok(reply)) => match answer_reply(kind, &reply, self.max_reply_bytes) {
                    Ok(decided) => return decided,
                    Err(flaw) => {
                        flawed = Some(Flawed::of(flaw, &reply));
                        Outcome::Invalid
                    }
                },
                Ok(Err(BusError::NoResponders(_))) => Outcome::NoResponders,
                Ok(Err(error)) => {
                    // While the bus fails every request, one line a second, not one per decision.
                    let allowed = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow();
                    if let Some(suppressed) = allowed {
                        let error = &error as &dyn std::error::Error;
                        tracing::warn!(id = %message.id, error, suppressed, "decision request failed");
                    }
                    Outcome::BusError
                }
                Err(_elapsed) => Outcome::Timeout,
            }
        } else {
            Outcome::Disconnected
        };
        if let Some(rule) =
            body(When::Fallback).flatten().and_then(|body| self.rules.first(&command, When::Fallback, &body).cloned())
        {
            return by_rule(outcome, &rule, flawed);
        }
        let (code, info) = match fallbacks.of(&command, kind) {
            Fallback::Allow => (0, String::new()),
            Fallback::Deny => (1, format!("hookbus fallback: {}", reason(outcome))),
        };
        Decided { outcome, rule: None, answer: encode(code, &info, &[]), code, info, flawed }
    }
}

fn reason(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Timeout => "decision timeout",
        Outcome::NoResponders => "no responders",
        Outcome::Invalid => "invalid reply",
        Outcome::BusError => "bus error",
        Outcome::Disconnected => "bus disconnected",
        Outcome::Reply | Outcome::Rule => "",
    }
}

fn by_rule(outcome: Outcome, rule: &Rule, flawed: Option<Flawed>) -> Decided {
    let info = if rule.code == 0 { String::new() } else { format!("hookbus rule: {}", rule.name) };
    let (answer, code) = (encode(rule.code, &info, &[]), rule.code);
    Decided { outcome, rule: Some(rule.name.clone()), answer, code, info, flawed }
}

/// Checks a reply of at most `max_bytes` and turns it into the decision; `Err` names what is
/// wrong with it. An `ErrorInfo` past [`MAX_ERROR_INFO_BYTES`] is cut, and the cut noted.
fn answer_reply(kind: Kind, reply: &[u8], max_bytes: usize) -> Result<Decided, Flaw> {
    if reply.len() > max_bytes {
        return Err(Flaw::TooLarge);
    }
    let fields: BTreeMap<String, &RawValue> = serde_json::from_slice(reply).map_err(|_| Flaw::NotAReply)?;
    let code: i64 =
        fields.get("ErrorCode").and_then(|code| serde_json::from_str(code.get()).ok()).ok_or(Flaw::NotAReply)?;
    let mut info: String = match fields.get("ErrorInfo") {
        Some(info) => serde_json::from_str(info.get()).map_err(|_| Flaw::ErrorInfoType)?,
        None => String::new(),
    };
    if !kind.valid_code(code) {
        return Err(Flaw::Code);
    }
    // Only the command's own fields, and only when allowed (ErrorCode 0).
    let (mut rewrites, mut message_bytes) = (Vec::new(), 0);
    for rewrite in kind.rewrites().iter().filter(|_| code == 0) {
        let Some(value) = fields.get(rewrite.field) else { continue };
        if value.get().as_bytes().first() != Some(&rewrite.starts_with) {
            return Err(Flaw::RewriteType);
        }
        match rewrite.bound {
            Bound::Message => message_bytes += value.get().len(),
            Bound::UserIds => {
                let ids: Vec<String> = serde_json::from_str(value.get()).map_err(|_| Flaw::RewriteType)?;
                if ids.iter().any(|id| id.len() > MAX_USER_ID_BYTES) {
                    return Err(Flaw::RewriteTooLarge);
                }
            }
        }
        rewrites.push((rewrite.field, *value));
    }
    if message_bytes > MAX_MESSAGE_BYTES {
        return Err(Flaw::RewriteTooLarge);
    }
    let flawed = (info.len() > MAX_ERROR_INFO_BYTES).then(|| {
        let mut end = MAX_ERROR_INFO_BYTES;
        while !info.is_char_boundary(end) {
            end -= 1;
        }
        info.truncate(end);
        Flawed::of(Flaw::ErrorInfoCut, reply)
    });
    let answer = encode(code, &info, &rewrites);
    Ok(Decided { outcome: Outcome::Reply, rule: None, answer, code, info, flawed })
}

/// Tencent's answer: `{"ActionStatus":"OK","ErrorCode":…,"ErrorInfo":…}` and the rewrites.
fn encode(code: i64, info: &str, rewrites: &[(&str, &RawValue)]) -> Bytes {
    let mut out = Vec::with_capacity(64);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let mut answer = serializer.serialize_map(None).expect("writing JSON to a Vec cannot fail");
    answer.serialize_entry("ActionStatus", "OK").expect("writing JSON to a Vec cannot fail");
    answer.serialize_entry("ErrorCode", &code).expect("writing JSON to a Vec cannot fail");
    answer.serialize_entry("ErrorInfo", info).expect("writing JSON to a Vec cannot fail");
    for (field, value) in rewrites {
        answer.serialize_entry(field, value).expect("writing JSON to a Vec cannot fail");
    }
    answer.end().expect("writing JSON to a Vec cannot fail");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tencent::{GIFT, MESSAGE};

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    fn kind(command: &str) -> Kind {
        Kind::Documented(Blocking::of(command).unwrap())
    }

    fn answer(command: &str, reply: &[u8]) -> Result<serde_json::Value, Flaw> {
        answer_reply(kind(command), reply, MAX_REPLY_BYTES).map(|decided| json(&decided.answer))
    }

    #[test]
    fn valid_replies_pass_through() {
        let answer = answer(GIFT, br#"{"ErrorCode":102150,"ErrorInfo":"too many"}"#).unwrap();
        assert_eq!(answer, serde_json::json!({"ActionStatus":"OK","ErrorCode":102150,"ErrorInfo":"too many"}));
        let answer = super::tests::answer(GIFT, br#"{"ErrorCode":0}"#).unwrap();
        assert_eq!(answer, serde_json::json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}));
        let generic =
            answer_reply(Kind::Generic, br#"{"ErrorCode":777,"ErrorInfo":"x","MsgBody":[]}"#, MAX_REPLY_BYTES).unwrap();
        assert_eq!(json(&generic.answer), serde_json::json!({"ActionStatus":"OK","ErrorCode":777,"ErrorInfo":"x"}));
    }

    #[test]
    fn only_the_commands_own_fields_are_rewritten_and_only_when_allowed() {
        let reply = br#"{"ErrorCode":0,"ErrorInfo":"","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}],"CloudCustomData":"x"}"#;
        for command in [MESSAGE, "C2C.CallbackBeforeSendMsg"] {
            let answer = answer(command, reply).unwrap();
            assert_eq!(answer["MsgBody"][0]["MsgContent"]["Text"], "***");
            assert_eq!(answer["CloudCustomData"], "x");
        }
        let denied = answer(MESSAGE, br#"{"ErrorCode":2,"MsgBody":[]}"#).unwrap();
        assert_eq!(denied, serde_json::json!({"ActionStatus":"OK","ErrorCode":2,"ErrorInfo":""}));
        assert!(answer(GIFT, br#"{"ErrorCode":0,"MsgBody":[]}"#).unwrap().get("MsgBody").is_none());
        let invite = answer(
            "Group.CallbackBeforeInviteJoinGroup",
            br#"{"ErrorCode":0,"RefusedMembers_Account":["u2"],"MsgBody":[]}"#,
        )
        .unwrap();
        assert_eq!(invite["RefusedMembers_Account"], serde_json::json!(["u2"]));
        assert!(invite.get("MsgBody").is_none());
    }

    #[test]
    fn invalid_replies_are_refused() {
        for reply in [
            &br#"{"ErrorCode":2}"#[..],
            br#"{"ErrorCode":"0"}"#,
            br#"{"ErrorInfo":"no code"}"#,
            b"allow",
            br#"[0]"#,
            br#"{"ErrorCode":0,"ErrorInfo":5}"#,
        ] {
            assert!(answer(GIFT, reply).is_err(), "{}", String::from_utf8_lossy(reply));
        }
        assert!(answer(MESSAGE, br#"{"ErrorCode":10201}"#).is_err());
        assert!(answer("C2C.CallbackBeforeSendMsg", br#"{"ErrorCode":10150}"#).is_err());
        assert!(answer(MESSAGE, br#"{"ErrorCode":0,"MsgBody":"x"}"#).is_err());
        assert!(answer(MESSAGE, br#"{"ErrorCode":0,"CloudCustomData":1}"#).is_err());
        assert!(answer_reply(Kind::Generic, br#"{"ErrorCode":1.5}"#, MAX_REPLY_BYTES).is_err());
    }

    #[test]
    fn replies_and_their_fields_are_bounded() {
        let padded = format!(r#"{{"ErrorCode":0,"ErrorInfo":"{}"}}"#, "x".repeat(MAX_REPLY_BYTES));
        assert_eq!(answer(GIFT, padded.as_bytes()).unwrap_err(), Flaw::TooLarge);
        let small = answer_reply(kind(GIFT), br#"{"ErrorCode":0}"#, 14);
        assert_eq!(small.unwrap_err(), Flaw::TooLarge, "--max-reply-bytes is the bound");

        let text =
            |bytes: usize| format!(r#"[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"{}"}}}}]"#, "y".repeat(bytes));
        let body = |msg: String, custom: usize| {
            format!(r#"{{"ErrorCode":0,"MsgBody":{msg},"CloudCustomData":"{}"}}"#, "z".repeat(custom))
        };
        let overhead = text(0).len() + 2;
        assert!(answer(MESSAGE, body(text(MAX_MESSAGE_BYTES - overhead - 100), 100).as_bytes()).is_ok());
        let over = body(text(MAX_MESSAGE_BYTES - overhead - 100), 101);
        assert_eq!(answer(MESSAGE, over.as_bytes()).unwrap_err(), Flaw::RewriteTooLarge, "the two fields together");

        let invite = "Group.CallbackBeforeInviteJoinGroup";
        let members = |id: &str| format!(r#"{{"ErrorCode":0,"RefusedMembers_Account":["u1","{id}"]}}"#);
        assert!(answer(invite, members(&"u".repeat(MAX_USER_ID_BYTES)).as_bytes()).is_ok());
        let long = members(&"u".repeat(MAX_USER_ID_BYTES + 1));
        assert_eq!(answer(invite, long.as_bytes()).unwrap_err(), Flaw::RewriteTooLarge);
        let numbers = br#"{"ErrorCode":0,"RefusedMembers_Account":[1]}"#;
        assert_eq!(answer(invite, numbers).unwrap_err(), Flaw::RewriteType);
    }

    #[test]
    fn a_long_error_info_is_cut_at_a_character_boundary_and_the_decision_kept() {
        let reply = format!(r#"{{"ErrorCode":1,"ErrorInfo":"a{}"}}"#, "é".repeat(5000));
        let decided = answer_reply(kind(MESSAGE), reply.as_bytes(), MAX_REPLY_BYTES).unwrap();
        assert_eq!(decided.code, 1, "a refused message stays refused");
        assert_eq!(decided.info, format!("a{}", "é".repeat((MAX_ERROR_INFO_BYTES - 2) / 2)));
        assert_eq!(json(&decided.answer)["ErrorInfo"], decided.info);
        let flawed = decided.flawed.unwrap();
        assert_eq!((flawed.flaw, flawed.bytes), (Flaw::ErrorInfoCut, reply.len()));
        let exact = format!(r#"{{"ErrorCode":1,"ErrorInfo":"{}"}}"#, "b".repeat(MAX_ERROR_INFO_BYTES));
        assert!(answer_reply(kind(MESSAGE), exact.as_bytes(), MAX_REPLY_BYTES).unwrap().flawed.is_none());
    }

    #[test]
    fn fallbacks_follow_tencent_unless_set() {
        let mut fallbacks = Fallbacks::default();
        assert_eq!(fallbacks.of(GIFT, kind(GIFT)), Fallback::Deny);
        assert_eq!(fallbacks.of(MESSAGE, kind(MESSAGE)), Fallback::Allow);
        assert_eq!(fallbacks.of("X.CallbackBeforeY", Kind::Generic), Fallback::Allow);
        fallbacks.set(GIFT, Fallback::Allow);
        assert_eq!(fallbacks.of(GIFT, kind(GIFT)), Fallback::Allow);
    }
}
