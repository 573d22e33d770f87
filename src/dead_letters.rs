//! Events the broker will never take, kept rather than dropped: refused for good (too large,
//! invalid, not authorised, nacked while other events were confirmed), or, with
//! `--dead-letter-after N`, still unconfirmed after N attempts. The store is bounded
//! (`--dead-letter-max-bytes`); with `--spool-dir` it is also a log in the spool directory
//! (`dead-letters.log`, the spool's record format: magic, length, CRC, body), fsynced before
//! the event leaves the spool, so dead letters survive a crash. Requeued dead letters go back to
//! the outbox with their ids; the log is then rewritten without them. When an event becomes a
//! dead letter, and whether a notice is published, is the outbox's dead-letter policy; this
//! module keeps them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::bus::{BrokerRefusal, BusError, Message};
use crate::logs;
use crate::record::{self, Body, Fields};

/// The dead-letter log's file name in a spool directory.
pub const LOG: &str = "dead-letters.log";
/// The CloudEvents type of a dead letter's notice on the bus.
pub const NOTICE_TYPE: &str = "hookbus.deadletter";

/// Why an event is a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The broker refused it for good.
    Refused(BrokerRefusal),
    /// The broker nacked it again and again while it confirmed others of its batch.
    Nacked,
    /// Still unconfirmed after `--dead-letter-after` attempts.
    Attempts,
}

impl Reason {
    /// Why the publisher gave up on an event after `error`.
    fn of(error: &BusError) -> Reason {
        match error {
            BusError::Undeliverable { reason, .. } => Reason::Refused(*reason),
            BusError::Nacked(_) => Reason::Nacked,
            _ => Reason::Attempts,
        }
    }

    /// Its metric label, also what the dead-letter log records: `too_large`, `invalid`,
    /// `not_authorized`, `no_stream`, `nacked`, `attempts`.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Refused(refusal) => refusal.label(),
            Reason::Nacked => "nacked",
            Reason::Attempts => "attempts",
        }
    }

    /// The reason a label names.
    fn parse(label: &str) -> Option<Reason> {
        let refusals =
            [BrokerRefusal::TooLarge, BrokerRefusal::Invalid, BrokerRefusal::NotAuthorized, BrokerRefusal::NoStream];
        let mut reasons = refusals.into_iter().map(Reason::Refused).chain([Reason::Nacked, Reason::Attempts]);
        reasons.find(|reason| reason.label() == label)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One dead event and what the broker said about it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message: Message,
    pub reason: Reason,
    /// The broker's answer, in words.
    pub error: String,
    pub attempts: u32,
    pub first_attempt: SystemTime,
    pub dead_at: SystemTime,
}

impl DeadLetter {
    /// A dead letter for `message`, after `attempts` from `first_attempt`, because of `error`.
    pub fn new(message: Message, error: &BusError, attempts: u32, first_attempt: SystemTime) -> DeadLetter {
        DeadLetter {
            message,
            reason: Reason::of(error),
            error: chain(error),
            attempts,
            first_attempt,
            dead_at: SystemTime::now(),
        }
    }

    /// Its notice on the bus (`--dead-letter-destination`): an event of type
    /// [`NOTICE_TYPE`] to `{prefix}.deadletter`, keyed by the same room, whose body says which
    /// event died, where it was going and why, and carries the event's body unless the body is
    /// what the broker refused (`too_large`): so the notice itself fits.
    pub fn notice(&self, prefix: &str) -> Message {
        #[derive(serde::Serialize)]
        struct Notice<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            command: &'a str,
            destination: &'a str,
            reason: &'a str,
            error: &'a str,
            attempts: u32,
            time: &'a str,
            dead_at: String,
            body: Option<&'a serde_json::value::RawValue>,
        }
        let message = &self.message;
        let body = match self.reason {
            Reason::Refused(BrokerRefusal::TooLarge) => None,
            _ => serde_json::from_slice(&message.payload).ok(),
        };
        let notice = Notice {
            id: &message.id,
            command: &message.event_type,
            destination: &message.destination,
            reason: self.reason.label(),
            error: &self.error,
            attempts: self.attempts,
            time: &message.time_text,
            dead_at: humantime::format_rfc3339_millis(self.dead_at).to_string(),
            body,
        };
        let payload = bytes::Bytes::from(serde_json::to_vec(&notice).expect("a notice serialises"));
        message.follow_up(NOTICE_TYPE, [prefix, ".deadletter"].concat(), payload)
    }

    /// Memory and disk it takes, as counted against the bound.
    fn bytes(&self) -> usize {
        self.message.footprint() + self.error.len() + 64
    }

    fn record(&self) -> Vec<u8> {
        let mut body = Body::with_capacity(self.message.payload.len() + 512);
        body.time(self.dead_at).time(self.first_attempt).u32(self.attempts);
        body.bytes(self.reason.label().as_bytes()).bytes(self.error.as_bytes()).message(&self.message);
        body.record()
    }

    fn decode(body: &[u8]) -> Option<DeadLetter> {
        let mut fields = Fields::new(body);
        let (dead_at, first_attempt, attempts) = (fields.time()?, fields.time()?, fields.u32()?);
        let (reason, error) = (Reason::parse(&fields.text()?)?, fields.text()?);
        let message = fields.message()?;
        Some(DeadLetter { message, reason, error, attempts, first_attempt, dead_at })
    }
}

/// The error and its sources, as one line (a source some client already prints in its own
/// text is not repeated).
fn chain(error: &BusError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Where dead letters are kept.
pub struct DeadLetters {
    max_bytes: usize,
    /// The log in the spool directory, when there is one.
    log: Option<PathBuf>,
    state: Mutex<Letters>,
}

#[derive(Default)]
struct Letters {
    letters: Vec<DeadLetter>,
    bytes: usize,
    /// Dead letters not kept because the store was full.
    dropped: u64,
}

/// What [`DeadLetters::keep`] did with a group of dead letters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub kept: usize,
    pub dropped: usize,
}

impl DeadLetters {
    /// A store in memory only.
    pub fn in_memory(max_bytes: usize) -> DeadLetters {
        DeadLetters { max_bytes, log: None, state: Mutex::default() }
    }

    /// A store backed by the log in the spool directory `dir`, with what earlier runs left in
    /// it (a torn tail, from a crash while writing, is cut; damaged records are skipped).
    pub fn open(dir: &Path, max_bytes: usize) -> io::Result<DeadLetters> {
        let path = dir.join(LOG);
        let letters = match fs::read(&path) {
            Ok(data) => {
                let records = record::read(&data);
                if let Some(offset) = records.torn_at {
                    tracing::warn!(file = %path.display(), offset, "torn dead-letter tail truncated");
                    OpenOptions::new().write(true).open(&path)?.set_len(offset as u64)?;
                }
                if !records.skipped.is_empty() {
                    tracing::warn!(file = %path.display(), regions = records.skipped.len(), "corrupt dead letters skipped");
                }
                latest(records.bodies.iter().filter_map(|body| DeadLetter::decode(body)))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let bytes = letters.iter().map(DeadLetter::bytes).sum();
        let state = Mutex::new(Letters { letters, bytes, dropped: 0 });
        Ok(DeadLetters { max_bytes, log: Some(path), state })
    }

    /// Keeps `letters` (durably, with a log) as far as the bound allows; the rest are counted
    /// as dropped. Each is logged with its id, destination and reason.
    pub fn keep(&self, letters: Vec<DeadLetter>) -> io::Result<Kept> {
        let mut state = self.lock();
        let mut outcome = Kept::default();
        let mut records = Vec::new();
        for letter in letters {
            let message = &letter.message;
            // The same event dead again (replayed after a crash, or requeued): it replaces its
            // earlier letter, so that copies do not fill the store.
            let earlier = state.letters.iter().position(|held| held.message.id == message.id);
            let freed = earlier.map_or(0, |at| state.letters[at].bytes());
            if let Some(at) = earlier.filter(|_| state.bytes - freed + letter.bytes() <= self.max_bytes) {
                state.letters.remove(at);
                state.bytes -= freed;
            }
            if state.bytes + letter.bytes() > self.max_bytes {
                tracing::error!(id = %message.id, destination = %message.destination, reason = %letter.reason, error = logs::field(&letter.error), body = logs::field(&message.payload), "dead-letter store full: the event is dropped, logged here only");
                state.dropped += 1;
                outcome.dropped += 1;
                continue;
            }
            tracing::error!(id = %message.id, destination = %message.destination, key = logs::field(message.key.as_deref().unwrap_or_default()), reason = %letter.reason, attempts = letter.attempts, error = logs::field(&letter.error), "dead letter: the broker will not take this event; later events go on");
            if self.log.is_some() {
                records.extend_from_slice(&letter.record());
            }
            state.bytes += letter.bytes();
            state.letters.push(letter);
            outcome.kept += 1;
        }
        if let (Some(path), false) = (&self.log, records.is_empty()) {
            let new = !path.exists();
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            file.write_all(&records)?;
            file.sync_data()?;
            // A new log's name must survive a power cut too: its events leave the spool next.
            if new {
                File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()?;
            }
        }
        Ok(outcome)
    }

    /// Takes the dead letters with the given ids (all of them with `None`) out of the store,
    /// for the caller to publish again. [`DeadLetters::forget`] then drops them from the log.
    pub fn take(&self, ids: Option<&[String]>) -> Vec<DeadLetter> {
        let state = self.lock();
        state.letters.iter().filter(|letter| ids.is_none_or(|ids| ids.contains(&letter.message.id))).cloned().collect()
    }

    /// Removes these dead letters (as [`DeadLetters::take`] gave them), and rewrites the log
    /// without them (a new file renamed over the old one, so a crash leaves one or the other).
    /// A requeued event that died again since it was taken is a dead letter of its own, and
    /// stays.
    pub fn forget(&self, taken: &[DeadLetter]) -> io::Result<()> {
        let mut state = self.lock();
        let same = |a: &DeadLetter, b: &DeadLetter| a.message.id == b.message.id && a.dead_at == b.dead_at;
        state.letters.retain(|letter| !taken.iter().any(|gone| same(gone, letter)));
        state.bytes = state.letters.iter().map(DeadLetter::bytes).sum();
        let Some(path) = &self.log else { return Ok(()) };
        let records: Vec<u8> = state.letters.iter().flat_map(DeadLetter::record).collect();
        let new = path.with_extension("log.new");
        let mut file = File::create(&new)?;
        file.write_all(&records)?;
        file.sync_all()?;
        fs::rename(&new, path)?;
        File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
    }

    /// Dead letters held, their bytes, and how many were dropped for lack of room.
    pub fn held(&self) -> (usize, usize, u64) {
        let state = self.lock();
        (state.letters.len(), state.bytes, state.dropped)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Letters> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The dead letters of the spool directory `dir`, read without changing anything (a gateway
/// may be writing them): for `hookbus spool`.
pub fn read(dir: &Path) -> io::Result<Vec<DeadLetter>> {
    match fs::read(dir.join(LOG)) {
        Ok(data) => Ok(latest(record::read(&data).bodies.iter().filter_map(|body| DeadLetter::decode(body)))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// The letters of a log, each event's latest only (the log keeps an earlier letter of an event
/// that died again until it is next rewritten), in the order of those.
fn latest(letters: impl Iterator<Item = DeadLetter>) -> Vec<DeadLetter> {
    let mut letters: Vec<DeadLetter> = letters.collect();
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<DeadLetter> =
        letters.drain(..).rev().filter(|letter| seen.insert(letter.message.id.clone())).collect();
    kept.reverse();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Origin;
    use bytes::Bytes;
    use std::time::Duration;

    fn letter(n: usize) -> DeadLetter {
        let message = Message::new("t", "Live.X", Some(format!("room-{n}")), Origin::default(), Bytes::from("{}"));
        let error =
            BusError::Undeliverable { what: format!("too large {n}"), reason: BrokerRefusal::TooLarge, cause: None };
        DeadLetter::new(message, &error, 1, SystemTime::now())
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hookbus-dead-{}", uuid::Uuid::now_v7().simple()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn dead_letters_survive_a_reopen_and_forgotten_ones_leave_the_log() {
        let dir = tempdir();
        let store = DeadLetters::open(&dir, 1 << 20).unwrap();
        let letters: Vec<_> = (0..3).map(letter).collect();
        let ids: Vec<String> = letters.iter().map(|l| l.message.id.clone()).collect();
        assert_eq!(store.keep(letters).unwrap(), Kept { kept: 3, dropped: 0 });
        let reopened = DeadLetters::open(&dir, 1 << 20).unwrap();
        let read = reopened.take(None);
        assert_eq!(read.iter().map(|l| &l.message.id).collect::<Vec<_>>(), ids.iter().collect::<Vec<_>>());
        assert_eq!((read[1].reason.label(), read[1].error.as_str()), ("too_large", "too large 1"));
        assert_eq!(read[2].message.key.as_deref(), Some("room-2"));
        reopened.forget(&read[..1]).unwrap();
        let left: Vec<_> = super::read(&dir).unwrap().into_iter().map(|l| l.message.id).collect();
        assert_eq!(left, ids[1..]);
    }

    #[test]
    fn a_requeued_letter_that_died_again_before_it_was_forgotten_stays() {
        let dir = tempdir();
        let store = DeadLetters::open(&dir, 1 << 20).unwrap();
        store.keep(vec![letter(0)]).unwrap();
        let taken = store.take(None);
        std::thread::sleep(Duration::from_millis(2));
        let mut again = taken[0].clone();
        again.dead_at = SystemTime::now();
        store.keep(vec![again]).unwrap();
        store.forget(&taken).unwrap();
        assert_eq!(store.held().0, 1, "the second death stays");
        assert_eq!(super::read(&dir).unwrap().len(), 1, "in the log too");
        let mut third = taken[0].clone();
        third.dead_at = SystemTime::now() + Duration::from_secs(1);
        store.keep(vec![third]).unwrap();
        assert_eq!(store.held().0, 1, "an event is kept once, its latest death");
        assert_eq!(super::read(&dir).unwrap().len(), 1, "and read back once");
        assert_eq!(DeadLetters::open(&dir, 1 << 20).unwrap().held().0, 1, "after a restart too");
    }

    #[test]
    fn a_full_store_drops_and_counts() {
        let one = letter(0).bytes();
        let store = DeadLetters::in_memory(2 * one + 1);
        assert_eq!(store.keep((0..3).map(letter).collect()).unwrap(), Kept { kept: 2, dropped: 1 });
        assert_eq!(store.held(), (2, 2 * one, 1));
    }
}
