//! Blocking callbacks: ask a responder over the bus, wait until the deadline, check the reply,
//! and answer Tencent with the decision or the configured fallback. The deadline lives here
//! alone (`timeout` around `Bus::request`); backends only send and match replies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::bus::{Bus, BusError, Message};
use crate::tencent::Blocking;

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

/// What each blocking command is answered when no valid decision arrives in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallbacks {
    pub gift: Fallback,
    pub message: Fallback,
}

impl Default for Fallbacks {
    /// The flags' defaults: gifts denied, room messages allowed.
    fn default() -> Fallbacks {
        Fallbacks { gift: Fallback::Deny, message: Fallback::Allow }
    }
}

/// How blocking callbacks are decided.
#[derive(Debug, Clone)]
pub struct Decisions {
    pub timeout: Duration,
}

impl Default for Decisions {
    /// The flag's default: 1500 ms.
    fn default() -> Decisions {
        Decisions { timeout: Duration::from_millis(1500) }
    }
}

/// How a decision came about; a metric label each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Reply,
    Timeout,
    NoResponders,
    Invalid,
    BusError,
    /// The bus was not connected: the fallback at once, without asking.
    Disconnected,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Reply,
        Outcome::Timeout,
        Outcome::NoResponders,
        Outcome::Invalid,
        Outcome::BusError,
        Outcome::Disconnected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Reply => "reply",
            Outcome::Timeout => "timeout",
            Outcome::NoResponders => "no-responders",
            Outcome::Invalid => "invalid",
            Outcome::BusError => "bus-error",
            Outcome::Disconnected => "disconnected",
        }
    }
}

/// A responder's reply: exactly what it would have answered Tencent.
#[derive(Debug, Deserialize)]
struct Reply<'a> {
    #[serde(rename = "ErrorCode")]
    code: i64,
    #[serde(rename = "ErrorInfo", default)]
    info: String,
    #[serde(rename = "MsgBody", borrow)]
    msg_body: Option<&'a RawValue>,
    #[serde(rename = "CloudCustomData", borrow)]
    cloud_custom_data: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Answer<'a> {
    #[serde(rename = "ActionStatus")]
    status: &'static str,
    #[serde(rename = "ErrorCode")]
    code: i64,
    #[serde(rename = "ErrorInfo")]
    info: &'a str,
    #[serde(rename = "MsgBody", skip_serializing_if = "Option::is_none")]
    msg_body: Option<&'a RawValue>,
    #[serde(rename = "CloudCustomData", skip_serializing_if = "Option::is_none")]
    cloud_custom_data: Option<&'a RawValue>,
}

impl Decisions {
    /// Asks the bus for a decision on `message` and returns how it came about with the body to
    /// answer Tencent with. Never fails: every problem becomes the app's fallback.
    pub async fn decide(
        &self,
        bus: &Bus,
        kind: Blocking,
        mut message: Message,
        fallbacks: Fallbacks,
    ) -> (Outcome, Bytes) {
        let fallback = |why| fallback(fallbacks, kind, why);
        if !bus.is_connected() {
            return (Outcome::Disconnected, fallback("bus disconnected"));
        }
        let deadline = SystemTime::now() + self.timeout;
        message.deadline_ms = Some(deadline.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64);
        match tokio::time::timeout(self.timeout, bus.request(&message)).await {
            Ok(Ok(reply)) => match answer_reply(kind, &reply) {
                Ok(answer) => (Outcome::Reply, answer),
                Err(reason) => {
                    tracing::warn!(id = %message.id, reason, reply = %String::from_utf8_lossy(&reply), "invalid decision reply");
                    (Outcome::Invalid, fallback("invalid reply"))
                }
            },
            Ok(Err(BusError::NoResponders(_))) => (Outcome::NoResponders, fallback("no responders")),
            Ok(Err(error)) => {
                tracing::warn!(id = %message.id, error = &error as &dyn std::error::Error, "decision request failed");
                (Outcome::BusError, fallback("bus error"))
            }
            Err(_elapsed) => (Outcome::Timeout, fallback("decision timeout")),
        }
    }
}

/// The answer for `kind` when no valid decision came, saying `why` when it denies.
fn fallback(fallbacks: Fallbacks, kind: Blocking, why: &str) -> Bytes {
    let fallback = match kind {
        Blocking::Gift => fallbacks.gift,
        Blocking::Message => fallbacks.message,
    };
    let (code, info) = match fallback {
        Fallback::Allow => (0, String::new()),
        Fallback::Deny => (1, format!("hookbus fallback: {why}")),
    };
    encode(&Answer { status: "OK", code, info: &info, msg_body: None, cloud_custom_data: None })
}

/// Checks a reply and turns it into Tencent's answer; `Err` names what is wrong with it.
fn answer_reply(kind: Blocking, reply: &[u8]) -> Result<Bytes, &'static str> {
    let reply: Reply = serde_json::from_slice(reply).map_err(|_| "not a JSON object with an integer ErrorCode")?;
    if !kind.valid_code(reply.code) {
        return Err("ErrorCode is not valid for this command");
    }
    // Only messages may be rewritten, and only when allowed (ErrorCode 0).
    let rewrite = kind == Blocking::Message && reply.code == 0;
    let msg_body = reply.msg_body.filter(|_| rewrite);
    let cloud_custom_data = reply.cloud_custom_data.filter(|_| rewrite);
    if msg_body.is_some_and(|body| !body.get().starts_with('[')) {
        return Err("MsgBody is not an array");
    }
    if cloud_custom_data.is_some_and(|data| !data.get().starts_with('"')) {
        return Err("CloudCustomData is not a string");
    }
    Ok(encode(&Answer { status: "OK", code: reply.code, info: &reply.info, msg_body, cloud_custom_data }))
}

fn encode(answer: &Answer) -> Bytes {
    Bytes::from(serde_json::to_vec(answer).expect("an answer always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn valid_replies_pass_through() {
        let answer = answer_reply(Blocking::Gift, br#"{"ErrorCode":102150,"ErrorInfo":"too many"}"#).unwrap();
        assert_eq!(json(&answer), serde_json::json!({"ActionStatus":"OK","ErrorCode":102150,"ErrorInfo":"too many"}));
        let answer = answer_reply(Blocking::Gift, br#"{"ErrorCode":0}"#).unwrap();
        assert_eq!(json(&answer), serde_json::json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}));
    }

    #[test]
    fn messages_may_be_rewritten_when_allowed() {
        let reply = br#"{"ErrorCode":0,"ErrorInfo":"","MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"***"}}],"CloudCustomData":"x"}"#;
        let answer = json(&answer_reply(Blocking::Message, reply).unwrap());
        assert_eq!(answer["MsgBody"][0]["MsgContent"]["Text"], "***");
        assert_eq!(answer["CloudCustomData"], "x");
        let denied = json(&answer_reply(Blocking::Message, br#"{"ErrorCode":2,"MsgBody":[]}"#).unwrap());
        assert_eq!(denied, serde_json::json!({"ActionStatus":"OK","ErrorCode":2,"ErrorInfo":""}));
        let gift = json(&answer_reply(Blocking::Gift, br#"{"ErrorCode":0,"MsgBody":[]}"#).unwrap());
        assert!(gift.get("MsgBody").is_none());
    }

    #[test]
    fn invalid_replies_are_refused() {
        for reply in
            [&br#"{"ErrorCode":2}"#[..], br#"{"ErrorCode":"0"}"#, br#"{"ErrorInfo":"no code"}"#, b"allow", br#"[0]"#]
        {
            assert!(answer_reply(Blocking::Gift, reply).is_err(), "{}", String::from_utf8_lossy(reply));
        }
        assert!(answer_reply(Blocking::Message, br#"{"ErrorCode":10201}"#).is_err());
        assert!(answer_reply(Blocking::Message, br#"{"ErrorCode":0,"MsgBody":"x"}"#).is_err());
        assert!(answer_reply(Blocking::Message, br#"{"ErrorCode":0,"CloudCustomData":1}"#).is_err());
    }

    #[test]
    fn fallbacks_follow_the_flags() {
        let fallbacks = Fallbacks::default();
        let gift = json(&fallback(fallbacks, Blocking::Gift, "decision timeout"));
        assert_eq!(gift["ErrorCode"], 1);
        assert_eq!(gift["ErrorInfo"], "hookbus fallback: decision timeout");
        let message = json(&fallback(fallbacks, Blocking::Message, "decision timeout"));
        assert_eq!(message, serde_json::json!({"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}));
    }
}
