//! `hookbus asyncapi`: the AsyncAPI 3.0 contract of what a gateway with these flags puts on its
//! bus. One channel per documented command, TRTC and CSS event type (address = its destination:
//! `{prefix}.decide.{command}` for the requests of a blocking one),
//! each message with the CloudEvents headers as that bus carries them and a JSON Schema of the
//! body derived from the documented sample; `send` operations for informational events, and for
//! blocking callbacks a `send` with a `reply` (the decision the responder sends back); and the
//! audit events and dead-letter notices a gateway may publish about them.

use serde_json::{json, Map, Value};

use crate::decision::MAX_ERROR_INFO_BYTES;
use crate::samples::{sample, LIVE};
use crate::tencent::{Blocking, Bound, MAX_MESSAGE_BYTES, MAX_USER_ID_BYTES};
use crate::trtc::DOCUMENTED;

/// The bus the contract describes, as the flags name it.
#[derive(Debug, Clone)]
pub struct Contract {
    /// `nats`, `amqp`, `kafka` or `stdout`.
    pub protocol: &'static str,
    /// The broker: `host:port` (Kafka: the first bootstrap broker).
    pub host: String,
    pub prefix: String,
    /// RabbitMQ: the topic exchange.
    pub exchange: String,
    /// Kafka: this instance's reply topic.
    pub reply_topic: String,
}

/// The fields every TRTC body carries.
const TRTC_REQUIRED: [&str; 4] = ["EventGroupId", "EventType", "CallbackTs", "EventInfo"];

/// The field every CSS body carries (relay callbacks have no `t` and `sign`, snapshots no `appid`).
const CSS_REQUIRED: [&str; 1] = ["event_type"];

/// What one channel carries: the message's name and title, the sample, and for a blocking
/// callback what it blocks.
struct Channel<'a> {
    command: &'a str,
    title: String,
    summary: String,
    sample: &'a [u8],
    blocking: Option<&'static Blocking>,
    required: &'a [&'a str],
}

/// The CloudEvents attributes every event carries, and what they hold.
const ATTRIBUTES: [(&str, &str); 12] = [
    ("id", "a UUID: version 7, or version 8 derived from the callback (signed Live and Chat, TRTC, CSS), the same on every retry: deduplicate on it"),
    ("type", "the CallbackCommand, trtc.{EventGroupId}.{EventType}, or css.{name}"),
    ("source", "/tencent/{SdkAppid} (CSS: /tencent/{appid})"),
    ("specversion", "1.0"),
    ("time", "receive time, RFC 3339 (CSS: the event's own time, when its body has one)"),
    ("datacontenttype", "application/json"),
    ("sdkappid", "the app's SdkAppid (CSS: the body's appid, the Tencent Cloud account's APPID)"),
    ("clientip", "the ClientIP query parameter"),
    ("optplatform", "the OptPlatform query parameter"),
    ("partitionkey", "the room (CSS: the stream), when the body names one"),
    ("traceparent", "W3C trace context: the callback's traceparent, or a new trace"),
    ("tracestate", "W3C trace context: the callback's tracestate, when it came with a traceparent"),
];

impl Contract {
    /// The document, as JSON (YAML is the same tree).
    pub fn document(&self) -> Value {
        let (mut channels, mut operations, mut messages) = (Map::new(), Map::new(), Map::new());
        let live = LIVE.iter().map(|(command, sample)| {
            let blocking = Blocking::of(command);
            Channel {
                command,
                title: command.to_string(),
                summary: if blocking.is_some() {
                    format!("{command}: a request; the responder's reply decides what Tencent is answered")
                } else {
                    format!("{command}: an informational event, published with broker confirms")
                },
                sample,
                blocking,
                required: &[],
            }
        });
        let commands: Vec<String> = DOCUMENTED.iter().map(|documented| documented.command()).collect();
        let trtc = DOCUMENTED.iter().zip(&commands).map(|(documented, command)| Channel {
            command,
            title: format!("{command} ({})", documented.alias),
            summary: format!(
                "{command}: TRTC: {}; an informational event, published with broker confirms",
                documented.summary
            ),
            sample: sample(command).expect("each documented TRTC type has a sample"),
            blocking: None,
            required: &TRTC_REQUIRED,
        });
        let css_commands: Vec<String> = crate::css::DOCUMENTED.iter().map(|documented| documented.command()).collect();
        let css = crate::css::DOCUMENTED.iter().zip(&css_commands).map(|(documented, command)| Channel {
            command,
            title: format!("{command} (event_type {})", documented.event_type),
            summary: format!(
                "{command}: Cloud Streaming: {}; an informational event, published with broker confirms",
                documented.summary
            ),
            sample: sample(command).expect("each documented CSS type has a sample"),
            blocking: None,
            required: &CSS_REQUIRED,
        });
        for channel in live.chain(trtc).chain(css) {
            let command = channel.command;
            let id = command.replace('.', "_");
            let body: Value = serde_json::from_slice(channel.sample).expect("the samples are JSON");
            let mut payload = schema(&body);
            if !channel.required.is_empty() {
                payload["required"] = json!(channel.required);
            }
            messages.insert(
                id.clone(),
                json!({
                    "name": command,
                    "title": channel.title,
                    "contentType": "application/json",
                    "headers": self.headers(channel.blocking.is_some()),
                    "payload": payload,
                    "examples": [{ "name": "documented sample", "payload": body }],
                }),
            );
            let destination = match channel.blocking {
                Some(_) => crate::bus::request_destination(&self.prefix, command),
                None => format!("{}.{command}", self.prefix),
            };
            channels.insert(id.clone(), self.channel(&destination, &id));
            let mut operation = json!({
                "action": "send",
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": channel.summary,
                "messages": [{ "$ref": format!("#/channels/{id}/messages/{id}") }],
            });
            if let Some(blocking) = channel.blocking {
                let reply = format!("{id}_reply");
                messages.insert(reply.clone(), reply_message(blocking));
                channels.insert(reply.clone(), self.reply_channel(&reply));
                operation["reply"] = json!({
                    "channel": { "$ref": format!("#/channels/{reply}") },
                    "messages": [{ "$ref": format!("#/channels/{reply}/messages/{reply}") }],
                });
            }
            operations.insert(format!("send_{id}"), operation);
        }
        self.follow_ups(&mut channels, &mut operations, &mut messages);
        let mut document = json!({
            "asyncapi": "3.0.0",
            "info": {
                "title": "hookbus",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Tencent Cloud Live, Chat, TRTC and Cloud Streaming callbacks as hookbus publishes them: \
                    informational callbacks as events, blocking callbacks as requests whose reply decides.",
            },
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages },
        });
        if self.protocol != "stdout" {
            document["servers"] = json!({ "bus": { "host": self.host, "protocol": self.protocol } });
        }
        document
    }

    /// The events a gateway publishes about others: the audit of each decision (`--audit`, to
    /// `{prefix}.audit.{command}`) and the notice of each dead letter (`--dead-letter-destination`,
    /// to `{prefix}.deadletter`).
    fn follow_ups(
        &self,
        channels: &mut Map<String, Value>,
        operations: &mut Map<String, Value>,
        messages: &mut Map<String, Value>,
    ) {
        let text = |description: &str| json!({ "type": "string", "description": description });
        let audit = json!({
            "type": "object",
            "required": ["id", "command", "outcome", "code"],
            "properties": {
                "id": text("the decided callback's event id"),
                "command": text("its CallbackCommand"),
                "outcome": text("reply, rule, timeout, no-responders, invalid, bus-error or disconnected"),
                "rule": { "type": ["string", "null"], "description": "the local rule that decided, if one did" },
                "code": { "type": "integer", "description": "the ErrorCode Tencent was answered" },
                "info": text("the ErrorInfo Tencent was answered"),
                "latency_ms": { "type": "number", "description": "from the callback's arrival to its answer" },
                "body": { "description": "the callback's body" },
            },
        });
        let notice = json!({
            "type": "object",
            "required": ["id", "type", "destination", "reason"],
            "properties": {
                "id": text("the dead event's id"),
                "type": text("its CloudEvents type (a CallbackCommand, a TRTC type, hookbus.decision)"),
                "destination": text("where it was going"),
                "reason": text("why the broker will not take it: too_large, nacked, no_stream, invalid, not_authorized, attempts"),
                "error": text("the broker's error"),
                "attempts": { "type": "integer" },
                "time": text("its receive time, RFC 3339"),
                "dead_at": text("when it was set aside, RFC 3339"),
                "body": { "description": "its body, unless the body is what the broker refused (too_large)" },
            },
        });
        let blocking = LIVE.iter().map(|(command, _)| *command).filter(|command| Blocking::of(command).is_some());
        let follow_ups = blocking
            .map(|command| {
                (
                    format!("audit_{}", command.replace('.', "_")),
                    format!("audit.{command}"),
                    "audit",
                    "hookbus.decision",
                )
            })
            .chain([("deadletter".to_owned(), "deadletter".to_owned(), "deadletter", "hookbus.deadletter")]);
        for (id, after_prefix, message, kind) in follow_ups {
            let destination = format!("{}.{after_prefix}", self.prefix);
            channels.insert(id.clone(), self.channel(&destination, message));
            operations.insert(
                format!("send_{id}"),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{id}") },
                    "summary": format!("{kind} events, published with broker confirms"),
                    "messages": [{ "$ref": format!("#/channels/{id}/messages/{message}") }],
                }),
            );
        }
        for (name, title, payload) in
            [("audit", "hookbus.decision", audit), ("deadletter", "hookbus.deadletter", notice)]
        {
            messages.insert(
                name.into(),
                json!({
                    "name": title,
                    "title": title,
                    "contentType": "application/json",
                    "headers": self.headers(false),
                    "payload": payload,
                }),
            );
        }
    }

    /// The CloudEvents attributes as this bus carries them (stdout: none, they are in the line).
    fn headers(&self, request: bool) -> Value {
        let name = |attribute: &str| match self.protocol {
            "nats" => format!("ce-{attribute}"),
            "kafka" => format!("ce_{attribute}"),
            _ => format!("cloudEvents:{attribute}"),
        };
        let mut properties = Map::new();
        let mut attributes: Vec<(&str, &str)> = ATTRIBUTES.to_vec();
        if request {
            attributes.push(("deadline", "Unix milliseconds until which the reply is useful"));
        }
        for (attribute, description) in attributes {
            // The NATS binding percent-encodes header values (a space, `"`, `%`, non-ASCII).
            let description = match self.protocol {
                "nats" => format!("{description}; percent-encoded as the CloudEvents NATS binding says"),
                _ => description.to_owned(),
            };
            properties.insert(name(attribute), json!({ "type": "string", "description": description }));
        }
        if request && self.protocol == "kafka" {
            properties.insert("kafka_replyTopic".into(), json!({ "type": "string", "description": "where to reply" }));
            properties.insert(
                "kafka_correlationId".into(),
                json!({ "type": "string", "description": "the event id: copy it onto the reply" }),
            );
        }
        let required: Vec<String> = ["id", "type", "source", "specversion"].iter().map(|a| name(a)).collect();
        json!({ "type": "object", "properties": properties, "required": required })
    }

    /// The channel at `destination` carrying the message `message`, with this bus's bindings.
    fn channel(&self, destination: &str, message: &str) -> Value {
        let mut channel = json!({
            "address": destination,
            "messages": { message: { "$ref": format!("#/components/messages/{message}") } },
        });
        if let Some(bindings) = self.channel_bindings(destination) {
            channel["bindings"] = bindings;
        }
        channel
    }

    fn channel_bindings(&self, destination: &str) -> Option<Value> {
        match self.protocol {
            "amqp" => Some(json!({ "amqp": {
                "is": "routingKey",
                "exchange": { "name": self.exchange, "type": "topic", "durable": true, "autoDelete": false, "vhost": "/" },
                "bindingVersion": "0.3.0",
            }})),
            "kafka" => Some(json!({ "kafka": { "topic": destination, "bindingVersion": "0.5.0" } })),
            _ => None,
        }
    }

    /// Where replies go: a per-request inbox (NATS), the gateway's reply queue (RabbitMQ), or this
    /// instance's reply topic (Kafka).
    fn reply_channel(&self, id: &str) -> Value {
        let (address, description) = match self.protocol {
            "kafka" => (json!(self.reply_topic), "This instance's reply topic; the reply carries kafka_correlationId."),
            "amqp" => (Value::Null, "The request's reply_to (the gateway's reply queue), with its correlation_id."),
            _ => (Value::Null, "The request's reply subject."),
        };
        json!({
            "address": address,
            "description": description,
            "messages": { id: { "$ref": format!("#/components/messages/{id}") } },
        })
    }
}

/// The reply a responder sends: an ErrorCode valid for the command, and the fields it may rewrite.
fn reply_message(blocking: &Blocking) -> Value {
    let mut properties = json!({
        "ErrorCode": { "type": "integer", "description": "0 allows, 1 rejects; see the README for the command's other codes" },
        "ErrorInfo": {
            "type": "string",
            "description": format!("at most {MAX_ERROR_INFO_BYTES} bytes: a longer one is cut at a character boundary"),
        },
    });
    for rewrite in blocking.rewrites {
        let kind = if rewrite.starts_with == b'[' { "array" } else { "string" };
        let bound = match rewrite.bound {
            Bound::Message => format!("the JSON of the message fields together at most {MAX_MESSAGE_BYTES} bytes"),
            Bound::UserIds => format!("UserIDs of at most {MAX_USER_ID_BYTES} bytes each"),
        };
        let description = format!("with ErrorCode 0: passed to Tencent; {bound}, else the reply is invalid");
        properties[rewrite.field] = json!({ "type": kind, "description": description });
    }
    json!({
        "name": format!("{} reply", blocking.command),
        "contentType": "application/json",
        "payload": { "type": "object", "properties": properties, "required": ["ErrorCode"] },
    })
}

/// A JSON Schema of what the documented sample shows: each field with its type, objects and
/// arrays described inside; further fields allowed (Tencent adds fields over time).
/// Ids documented as strings may arrive as numbers: a string field may also be a number.
pub fn schema(value: &Value) -> Value {
    match value {
        Value::Object(fields) => {
            let properties: Map<String, Value> =
                fields.iter().map(|(name, value)| (name.clone(), schema(value))).collect();
            let required: Vec<&String> = fields.keys().filter(|name| *name == "CallbackCommand").collect();
            json!({ "type": "object", "properties": properties, "required": required, "additionalProperties": true })
        }
        Value::Array(items) => match items.first() {
            Some(item) => json!({ "type": "array", "items": schema(item) }),
            None => json!({ "type": "array" }),
        },
        Value::String(_) => json!({ "type": ["string", "number"] }),
        Value::Number(_) => json!({ "type": ["number", "string"] }),
        Value::Bool(_) => json!({ "type": "boolean" }),
        Value::Null => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract(protocol: &'static str) -> Contract {
        Contract {
            protocol,
            host: "127.0.0.1:4222".into(),
            prefix: "tencent".into(),
            exchange: "tencent".into(),
            reply_topic: "tencent.replies.a".into(),
        }
    }

    #[test]
    fn a_channel_per_command_at_its_destination_and_headers_per_bus() {
        let document = contract("nats").document();
        assert_eq!(
            document["channels"]["Live_CallbackAfterCreateRoom"]["address"],
            "tencent.Live.CallbackAfterCreateRoom"
        );
        let headers = &document["components"]["messages"]["Live_CallbackAfterCreateRoom"]["headers"]["properties"];
        assert!(headers["ce-id"].is_object() && headers["ce-deadline"].is_null());
        let gift = &document["operations"]["send_Live_CallbackBeforeSendGift"];
        assert_eq!(gift["reply"]["channel"]["$ref"], "#/channels/Live_CallbackBeforeSendGift_reply");
        assert_eq!(
            document["channels"]["Live_CallbackBeforeSendGift"]["address"],
            "tencent.decide.Live.CallbackBeforeSendGift",
            "requests apart from events"
        );
        assert!(headers["ce-partitionkey"]["description"].as_str().unwrap().contains("percent-encoded"));
        let kafka = contract("kafka").document();
        let headers = &kafka["components"]["messages"]["Live_CallbackBeforeSendGift"]["headers"]["properties"];
        assert!(headers["ce_deadline"].is_object() && headers["kafka_replyTopic"].is_object());
        assert_eq!(kafka["channels"]["Live_CallbackBeforeSendGift_reply"]["address"], "tencent.replies.a");
        let topic = &kafka["channels"]["Live_CallbackBeforeSendGift"]["bindings"]["kafka"]["topic"];
        assert_eq!(topic, "tencent.decide.Live.CallbackBeforeSendGift");
        assert!(contract("stdout").document().get("servers").is_none());
    }

    #[test]
    fn a_channel_per_documented_trtc_type() {
        let document = contract("amqp").document();
        let channel = &document["channels"]["trtc_1_103"];
        assert_eq!(channel["address"], "tencent.trtc.1.103");
        assert_eq!(channel["bindings"]["amqp"]["exchange"]["name"], "tencent");
        let message = &document["components"]["messages"]["trtc_1_103"];
        assert_eq!(message["title"], "trtc.1.103 (room.entered)");
        assert_eq!(message["payload"]["required"], json!(TRTC_REQUIRED));
        assert_eq!(
            message["payload"]["properties"]["EventInfo"]["properties"]["RoomId"]["type"],
            json!(["number", "string"])
        );
        assert!(message["headers"]["properties"]["cloudEvents:deadline"].is_null(), "never a request");
        for documented in DOCUMENTED {
            let id = documented.command().replace('.', "_");
            assert!(document["operations"][format!("send_{id}")]["reply"].is_null(), "{id}");
        }
    }

    #[test]
    fn a_channel_per_documented_css_type() {
        let document = contract("kafka").document();
        for documented in crate::css::DOCUMENTED {
            let id = documented.command().replace('.', "_");
            let channel = &document["channels"][&id];
            assert_eq!(channel["address"], format!("tencent.{}", documented.command()), "{id}");
            assert_eq!(channel["bindings"]["kafka"]["topic"], channel["address"]);
            let message = &document["components"]["messages"][&id];
            assert_eq!(message["payload"]["required"], json!(CSS_REQUIRED));
            assert!(message["payload"]["properties"]["event_type"].is_object(), "{id}");
            assert!(document["operations"][format!("send_{id}")]["reply"].is_null(), "{id}: never a request");
        }
        let image = &document["components"]["messages"]["css_moderation_image"];
        assert_eq!(image["title"], "css.moderation.image (event_type 317)");
        assert!(image["payload"]["properties"]["streamId"].is_object());
    }
}
