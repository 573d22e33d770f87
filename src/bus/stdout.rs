//! The embedded default bus: each informational event becomes one line on a writer (the
//! process's stdout), flushed before it counts as confirmed. A line is a CloudEvents 1.0 event
//! in structured mode (JSON format): the attributes the brokers carry as headers, `subject` =
//! the room when there is one, the extension `destination` = the subject/topic the event
//! would have on a broker, and `data` = the body. There is nobody to ask for
//! decisions, so requests fail at once with "no responders" and get their fallback.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::error::BusError;
use super::message::Message;

/// Text to write, and where to say how it went (handing the buffer back for reuse).
type Pending = (Vec<u8>, oneshot::Sender<(std::io::Result<()>, Vec<u8>)>);

#[derive(Clone)]
pub struct Stdout {
    /// To the writer thread, which owns the writer: it may be a pipe that blocks.
    writes: mpsc::Sender<Pending>,
    /// The text buffer, reused from batch to batch: a fresh one each time, freed on the writer
    /// thread, cost tens of megabytes of RSS under load.
    spare: Arc<Mutex<Vec<u8>>>,
}

impl Stdout {
    pub fn new(mut out: Box<dyn Write + Send>) -> Stdout {
        let (writes, receiver) = mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("hookbus-stdout".into())
            .spawn(move || {
                for (text, done) in receiver {
                    let _ = done.send((out.write_all(&text).and_then(|()| out.flush()), text));
                }
            })
            .expect("a thread starts at start-up");
        Stdout { writes, spare: Arc::default() }
    }

    /// Writes one line per message and flushes; all succeed or all fail together.
    pub async fn publish(&self, batch: &[Message]) -> Vec<Result<(), BusError>> {
        let mut text = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|p| p.into_inner()));
        text.clear();
        for message in batch {
            write_line(&mut text, message);
        }
        let (done, written) = oneshot::channel();
        let result = match self.writes.send((text, done)) {
            Ok(()) => match written.await {
                Ok((result, text)) => {
                    *self.spare.lock().unwrap_or_else(|p| p.into_inner()) = text;
                    result.map_err(|error| BusError::unavailable("write to stdout", error))
                }
                Err(_) => Err(BusError::unavailable_because("stdout writer stopped")),
            },
            Err(_) => Err(BusError::unavailable_because("stdout writer stopped")),
        };
        vec![result; batch.len()]
    }

    pub async fn request(&self, message: &Message) -> Result<Bytes, BusError> {
        Err(BusError::NoResponders(message.destination.clone()))
    }

    pub async fn close(&self) {
        let _ = self.publish(&[]).await;
    }
}

/// Appends `message` to `text` as one CloudEvents line (structured mode, JSON format).
pub fn write_line(text: &mut Vec<u8>, message: &Message) {
    let compact = compact_json(&message.payload);
    // The payload was checked to be one JSON object when it was accepted; should that ever not
    // hold, the line carries the body as a string rather than stopping the publisher.
    let fallback;
    let data: &RawValue = match serde_json::from_slice(&compact) {
        Ok(data) => data,
        Err(_) => {
            let text = serde_json::to_string(&String::from_utf8_lossy(&message.payload)).expect("a string serialises");
            fallback = RawValue::from_string(text).expect("a JSON string is JSON");
            &fallback
        }
    };
    let mut line = serde_json::Serializer::new(&mut *text);
    let mut event = line.serialize_map(None).expect("writing JSON to a Vec cannot fail");
    let room = message.key.as_deref().map(|room| ("subject", Cow::Borrowed(room)));
    for (name, value) in message.attributes().chain(room) {
        event.serialize_entry(name, &value).expect("writing JSON to a Vec cannot fail");
    }
    event.serialize_entry("destination", &message.destination).expect("writing JSON to a Vec cannot fail");
    event.serialize_entry("data", data).expect("writing JSON to a Vec cannot fail");
    event.end().expect("writing JSON to a Vec cannot fail");
    text.push(b'\n');
}

/// Drops the whitespace between JSON tokens so a pretty-printed body fits on one line; the
/// bytes of every string and number are kept as received.
fn compact_json(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        }
        out.push(byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_strings_and_numbers() {
        let pretty = b"{\n  \"a b\": \"x \\\" y\\\\\",\n  \"n\": [1.50, -2e3 ]\n}\n";
        assert_eq!(compact_json(pretty), br#"{"a b":"x \" y\\","n":[1.50,-2e3]}"#);
    }

    proptest::proptest! {
        #[test]
        fn compaction_keeps_every_value(value in crate::body::tests::json_object()) {
            // Compacting the pretty form gives exactly the compact form: same tokens, same bytes.
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            proptest::prop_assert_eq!(compact_json(&pretty), serde_json::to_vec(&value).unwrap());
        }
    }

    #[tokio::test]
    async fn a_payload_that_is_not_json_becomes_a_string_not_a_panic() {
        let shared = Captured::default();
        let bus = Stdout::new(Box::new(shared.clone()));
        let origin = super::super::message::Origin::default();
        let message = Message::new("t", "X", None, origin, Bytes::from_static(b"{\"x\":\"\xff\"}"));
        assert!(bus.publish(&[message]).await[0].is_ok());
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert!(line["data"].is_string());
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_line_per_event() {
        let shared = Captured::default();
        let bus = Stdout::new(Box::new(shared.clone()));
        let origin = super::super::message::Origin { sdk_app_id: "1400".into(), ..Default::default() };
        let message = Message::new(
            "tencent",
            "Live.X",
            Some("r1".into()),
            origin,
            Bytes::from_static(b"{\n \"RoomId\": \"r1\"\n}"),
        );
        let results = bus.publish(&[message.clone(), message.clone()]).await;
        assert!(results.iter().all(Result::is_ok));
        let text = String::from_utf8(shared.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["specversion"], "1.0");
        assert_eq!(line["id"], message.id.as_str());
        assert_eq!(line["type"], "Live.X");
        assert_eq!(line["source"], "/tencent/1400");
        assert_eq!(line["datacontenttype"], "application/json");
        assert_eq!(line["subject"], "r1");
        assert_eq!(line["partitionkey"], "r1");
        assert_eq!(line["sdkappid"], "1400");
        assert_eq!(line["destination"], "tencent.Live.X");
        assert_eq!(line["data"]["RoomId"], "r1");
        assert!(matches!(bus.request(&message).await, Err(BusError::NoResponders(_))));
    }
}
