//! The record format of the spool and of the dead-letter log. A record is
//! `magic, length, crc32(length ++ body), body`; a log is records end to end, read back by
//! resynchronising on the next magic after a damaged one. A body is fields in order:
//! little-endian integers, times in milliseconds since the epoch, byte strings and texts as
//! `u32` length and bytes, optional ones behind a `0`/`1` byte; an event's fields are
//! [`Body::message`]'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::bus::{Message, Origin};

const MAGIC: [u8; 4] = *b"HBS1";
/// Magic, length and checksum.
pub const HEADER: usize = 12;
/// A record larger than this cannot be valid (bodies are bounded by `--max-body-bytes`).
const MAX_RECORD: usize = 64 << 20;

/// A record being written: its header's room first, then its body's fields, framed in place
/// by [`Body::record`] (the body is not copied again), after whatever its buffer held.
pub struct Body {
    buffer: Vec<u8>,
    /// Where this record starts in `buffer`.
    start: usize,
}

impl Body {
    /// An empty body, with room for about `capacity` bytes of fields.
    pub fn with_capacity(capacity: usize) -> Body {
        Body::after(Vec::with_capacity(HEADER + capacity))
    }

    /// An empty body appended to `buffer`, after the records it holds.
    pub fn after(mut buffer: Vec<u8>) -> Body {
        let start = buffer.len();
        buffer.resize(start + HEADER, 0);
        Body { buffer, start }
    }

    pub fn u32(&mut self, value: u32) -> &mut Body {
        self.buffer.extend_from_slice(&value.to_le_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Body {
        self.buffer.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A time, to the millisecond.
    pub fn time(&mut self, time: SystemTime) -> &mut Body {
        self.u64(time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64)
    }

    /// A byte string (or text): its length, then it.
    pub fn bytes(&mut self, field: &[u8]) -> &mut Body {
        self.u32(field.len() as u32);
        self.buffer.extend_from_slice(field);
        self
    }

    /// A text that may be absent.
    pub fn optional(&mut self, field: Option<&str>) -> &mut Body {
        match field {
            Some(text) => {
                self.buffer.push(1);
                self.bytes(text.as_bytes())
            }
            None => {
                self.buffer.push(0);
                self
            }
        }
    }

    /// The fields of an event.
    pub fn message(&mut self, message: &Message) -> &mut Body {
        self.time(message.time);
        for field in [
            &message.id,
            &message.event_type,
            &message.destination,
            &message.sdk_app_id,
            &message.client_ip,
            &message.opt_platform,
        ] {
            self.bytes(field.as_bytes());
        }
        self.optional(message.key.as_deref());
        self.bytes(&message.payload);
        // Added after the payload, so that records written before them still read back.
        self.bytes(message.trace.header().as_bytes());
        self.optional(message.tracestate.as_deref())
    }

    /// The buffer with the whole record at its end: its header filled in before the body.
    pub fn record(mut self) -> Vec<u8> {
        let (head, body) = self.buffer[self.start..].split_at_mut(HEADER);
        let length = (body.len() as u32).to_le_bytes();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&length);
        hasher.update(body);
        head[..4].copy_from_slice(&MAGIC);
        head[4..8].copy_from_slice(&length);
        head[8..].copy_from_slice(&hasher.finalize().to_le_bytes());
        self.buffer
    }
}

/// The record of an event alone.
pub fn of_message(message: &Message) -> Vec<u8> {
    let mut body = Body::with_capacity(message.payload.len() + 256);
    body.message(message);
    body.record()
}

/// A record's body being read, field after field: each read is `None` once the body is too
/// short or a text is not UTF-8.
pub struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    pub fn new(body: &'a [u8]) -> Fields<'a> {
        Fields(body)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub fn time(&mut self) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_millis(self.u64()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    pub fn text(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    pub fn optional(&mut self) -> Option<Option<String>> {
        match self.take(1)? {
            [1] => Some(Some(self.text()?)),
            _ => Some(None),
        }
    }

    /// The fields of an event, to the end of the body (the trace context, added later, may be
    /// missing from old records).
    pub fn message(mut self) -> Option<Message> {
        let time = self.time()?;
        let (id, command, destination) = (self.text()?, self.text()?, self.text()?);
        let (sdk_app_id, client_ip, opt_platform) = (self.text()?, self.text()?, self.text()?);
        let key = self.optional()?;
        let payload = Bytes::copy_from_slice(self.bytes()?);
        let (mut traceparent, mut tracestate) = (String::new(), None);
        if !self.0.is_empty() {
            traceparent = self.text()?;
            tracestate = self.optional()?;
        }
        let origin = Origin { sdk_app_id, client_ip, opt_platform, traceparent, tracestate };
        Some(Message::restore(id, time, command, destination, key, origin, payload))
    }
}

/// What a log of records holds: the bodies of the intact records in order, the damaged
/// regions skipped (offset, length), and where a torn tail starts.
pub struct Records<'a> {
    pub bodies: Vec<&'a [u8]>,
    pub skipped: Vec<(usize, usize)>,
    pub torn_at: Option<usize>,
}

/// Reads the records of `data` without changing anything: the reader resynchronises on the
/// next magic after a damaged record.
pub fn read(data: &[u8]) -> Records<'_> {
    let mut records = Records { bodies: Vec::new(), skipped: Vec::new(), torn_at: None };
    let mut offset = 0;
    while offset < data.len() {
        if let Some((body, next)) = body_at(data, offset) {
            records.bodies.push(body);
            offset = next;
            continue;
        }
        let resume = (offset + 1..data.len()).find(|&at| data[at..].starts_with(&MAGIC) && body_at(data, at).is_some());
        match resume {
            Some(at) => {
                records.skipped.push((offset, at - offset));
                offset = at;
            }
            None => {
                records.torn_at = Some(offset);
                break;
            }
        }
    }
    records
}

/// Where in `data` the record of `body` (one of [`read`]'s bodies, a slice of `data`) starts:
/// a header before its body.
pub fn offset_of(data: &[u8], body: &[u8]) -> u64 {
    (body.as_ptr() as usize - data.as_ptr() as usize - HEADER) as u64
}

/// The body length a record's header gives, if it is a record's header.
pub fn length_in(header: &[u8; HEADER]) -> Option<usize> {
    let length = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    (header[..4] == MAGIC && length <= MAX_RECORD).then_some(length)
}

/// The body of the record at `offset` and the offset after it, if it is whole and its
/// checksum holds.
fn body_at(data: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header: &[u8; HEADER] = data.get(offset..offset + HEADER)?.try_into().ok()?;
    let length = length_in(header)?;
    let body = data.get(offset + HEADER..offset + HEADER + length)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..8]);
    hasher.update(body);
    if hasher.finalize() != u32::from_le_bytes(header[8..12].try_into().ok()?) {
        return None;
    }
    Some((body, offset + HEADER + length))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Event `n`, every field set: its room (`room-{n}`) only when `n` is even.
    pub(crate) fn message(n: usize) -> Message {
        let origin = Origin {
            sdk_app_id: "1400".into(),
            client_ip: "10.0.0.1".into(),
            opt_platform: "Web".into(),
            tracestate: Some("vendor=1".into()),
            ..Origin::default()
        };
        let key = n.is_multiple_of(2).then(|| format!("room-{n}"));
        Message::new("t", "Live.X", key, origin, Bytes::from(format!("{{\"n\":{n}}}")))
    }

    #[test]
    fn an_event_round_trips() {
        for n in [2, 1] {
            let original = message(n);
            let record = of_message(&original);
            let records = read(&record);
            assert_eq!((records.bodies.len(), records.skipped.len(), records.torn_at), (1, 0, None));
            assert_eq!(offset_of(&record, records.bodies[0]), 0);
            let decoded = Fields::new(records.bodies[0]).message().unwrap();
            assert_eq!(decoded.id, original.id);
            assert_eq!(decoded.destination, original.destination);
            assert_eq!(decoded.key, original.key);
            assert_eq!(decoded.time_text, original.time_text);
            assert_eq!(decoded.payload, original.payload);
            assert_eq!(decoded.opt_platform, "Web");
        }
    }

    #[test]
    fn a_record_is_framed_as_documented() {
        let mut body = Body::with_capacity(0);
        body.u32(7).bytes(b"ab");
        let record = body.record();
        let mut expected = b"HBS1".to_vec();
        expected.extend_from_slice(&10u32.to_le_bytes());
        expected.extend_from_slice(
            &crc32fast::hash(&[&10u32.to_le_bytes()[..], &[7, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']].concat()).to_le_bytes(),
        );
        expected.extend_from_slice(&[7, 0, 0, 0, 2, 0, 0, 0, b'a', b'b']);
        assert_eq!(record, expected);
    }

    #[test]
    fn records_appended_to_one_buffer_are_those_records_end_to_end() {
        let (first, second) = (message(2), message(1));
        let mut body = Body::after(of_message(&first));
        body.message(&second);
        assert_eq!(body.record(), [of_message(&first), of_message(&second)].concat());
    }

    #[test]
    fn a_damaged_record_is_skipped_and_a_torn_tail_found() {
        let records: Vec<Vec<u8>> = (0..4).map(|_| of_message(&message(1))).collect();
        let mut data = records.concat();
        data[records[0].len() + HEADER + 3] ^= 0xff;
        data.truncate(data.len() - 5);
        let read = read(&data);
        assert_eq!(read.bodies.len(), 2);
        assert_eq!(read.skipped, [(records[0].len(), records[1].len())]);
        assert_eq!(read.torn_at, Some(records[0].len() + records[1].len() + records[2].len()));
    }
}
