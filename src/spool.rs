//! The crash-safe outbox on disk (`--spool-dir`): an append-only log of segment files. Each
//! record is `magic, length, crc32(length ++ body), body`; a writer thread appends records in
//! groups and calls `fdatasync` once per group (group commit), and an append returns only once
//! its record is durable. A segment is deleted once every event in it is confirmed and it is no
//! longer written to. On open, the records of earlier runs are read back in order; a corrupt
//! record is skipped (the reader resynchronises on the next magic), a torn tail is truncated,
//! and both are reported.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::bus::{Message, Origin};

const MAGIC: [u8; 4] = *b"HBS1";
const HEADER: usize = 12;
/// A record larger than this cannot be valid (bodies are bounded by `--max-body-bytes`).
const MAX_RECORD: usize = 64 << 20;
/// Records written in one group commit at most.
const GROUP: usize = 1024;
/// Segments are deleted whole, once every event in them is confirmed.
pub const SEGMENT_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({0} bytes)")]
    Full(u64),
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

/// What an earlier run left in the spool, in order, each event with its segment.
pub struct Backlog {
    pub events: Vec<(Message, u64)>,
    pub recovery: Recovery,
}

/// What reading the spool back found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Events read back, to be published again.
    pub events: usize,
    /// Damaged regions skipped (each lost at most the records it covered, which were never
    /// acknowledged when the damage is a torn write).
    pub corrupt: usize,
    /// Bytes cut from the end of segments (a write torn by a crash).
    pub truncated: u64,
}

pub struct Spool {
    dir: PathBuf,
    /// Holds the directory's advisory lock: one gateway per spool.
    _lock: File,
    max_bytes: u64,
    state: Arc<Mutex<Segments>>,
    appends: mpsc::UnboundedSender<Append>,
}

#[derive(Default)]
struct Segments {
    /// Live (unconfirmed) events and size of each segment, by id.
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Bytes of all segments plus appends not yet written.
    bytes: u64,
}

#[derive(Default)]
struct Segment {
    live: usize,
    bytes: u64,
}

struct Append {
    record: Vec<u8>,
    done: oneshot::Sender<io::Result<u64>>,
}

impl Spool {
    /// Opens (creating) `dir`, reads back what earlier runs left, and starts the writer on a
    /// fresh segment. Returns the spooled events in order, each with its segment.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> io::Result<(Spool, Backlog)> {
        fs::create_dir_all(dir)?;
        let lock = File::create(dir.join("LOCK"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another process (a second gateway?) holds this spool directory",
                ));
            }
            Err(fs::TryLockError::Error(error)) => return Err(error),
        }
        let mut recovery = Recovery::default();
        let mut state = Segments::default();
        let mut events = Vec::new();
        for (id, path) in segment_files(dir)? {
            let found = read_segment(&path, &mut recovery)?;
            let bytes = fs::metadata(&path)?.len();
            if found.is_empty() {
                fs::remove_file(&path)?;
                continue;
            }
            state.segments.insert(id, Segment { live: found.len(), bytes });
            state.bytes += bytes;
            events.extend(found.into_iter().map(|message| (message, id)));
        }
        recovery.events = events.len();
        state.active = state.segments.keys().next_back().map_or(0, |last| last + 1);
        state.segments.insert(state.active, Segment::default());
        let file = create_segment(dir, state.active)?;
        let state = Arc::new(Mutex::new(state));
        let (appends, receiver) = mpsc::unbounded_channel();
        let writer = Writer { dir: dir.to_owned(), file, state: state.clone(), segment_bytes };
        std::thread::Builder::new().name("hookbus-spool".into()).spawn(move || writer.run(receiver))?;
        Ok((Spool { dir: dir.to_owned(), _lock: lock, max_bytes, state, appends }, Backlog { events, recovery }))
    }

    /// Appends an event and returns its segment once the record is on disk.
    pub async fn append(&self, message: &Message) -> Result<u64, SpoolError> {
        let record = encode(message);
        {
            let mut state = self.lock();
            if state.bytes + record.len() as u64 > self.max_bytes {
                return Err(SpoolError::Full(self.max_bytes));
            }
            state.bytes += record.len() as u64;
        }
        let (done, written) = oneshot::channel();
        let size = record.len() as u64;
        if self.appends.send(Append { record, done }).is_err() {
            self.lock().bytes -= size;
            return Err(io::Error::other("spool writer stopped").into());
        }
        match written.await {
            Ok(Ok(segment)) => Ok(segment),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(io::Error::other("spool writer stopped").into()),
        }
    }

    /// Marks one event of `segment` confirmed; deletes the segment when nothing in it is left
    /// and it is no longer written to.
    pub fn confirmed(&self, segment: u64) {
        let mut state = self.lock();
        let active = state.active;
        let Some(entry) = state.segments.get_mut(&segment) else { return };
        entry.live = entry.live.saturating_sub(1);
        if entry.live == 0 && segment != active {
            let bytes = entry.bytes;
            state.segments.remove(&segment);
            state.bytes -= bytes;
            drop(state);
            if let Err(error) = fs::remove_file(segment_path(&self.dir, segment)) {
                tracing::warn!(%error, segment, "cannot delete a confirmed spool segment");
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk (and being written).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Segments> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a spool directory holds, read without changing anything (a gateway may be writing it).
pub struct Contents {
    pub segments: usize,
    pub bytes: u64,
    /// The events of every segment, in order: waiting ones, and confirmed ones whose segment
    /// is not deleted yet (a segment goes once every event in it is confirmed).
    pub events: Vec<Message>,
}

/// Reads the segments of the spool directory `dir` as they are.
pub fn inspect(dir: &Path) -> io::Result<Contents> {
    let mut contents = Contents { segments: 0, bytes: 0, events: Vec::new() };
    for (_, path) in segment_files(dir)? {
        let data = fs::read(&path)?;
        contents.segments += 1;
        contents.bytes += data.len() as u64;
        contents.events.extend(read_records(&data).bodies.into_iter().filter_map(decode));
    }
    Ok(contents)
}

/// Whether a gateway holds the spool directory `dir`.
pub fn is_held(dir: &Path) -> io::Result<bool> {
    let lock = match File::open(dir.join("LOCK")) {
        Ok(lock) => lock,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    match lock.try_lock_shared() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(error)) => Err(error),
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    state: Arc<Mutex<Segments>>,
    segment_bytes: u64,
}

impl Writer {
    /// Writes groups of records, one `fdatasync` per group, until every sender is gone.
    fn run(mut self, mut appends: mpsc::UnboundedReceiver<Append>) {
        while let Some(first) = appends.blocking_recv() {
            let mut group = vec![first];
            while group.len() < GROUP {
                match appends.try_recv() {
                    Ok(append) => group.push(append),
                    Err(_) => break,
                }
            }
            let bytes: Vec<u8> = group.iter().flat_map(|append| append.record.iter().copied()).collect();
            let written = self.file.write_all(&bytes).and_then(|()| self.file.sync_data());
            let segment = {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let active = state.active;
                if written.is_ok() {
                    let entry = state.segments.entry(active).or_default();
                    entry.live += group.len();
                    entry.bytes += bytes.len() as u64;
                } else {
                    state.bytes -= bytes.len() as u64;
                }
                active
            };
            for append in group {
                let result = match &written {
                    Ok(()) => Ok(segment),
                    Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
                };
                let _ = append.done.send(result);
            }
            if let Err(error) = self.rotate_when_full() {
                tracing::error!(%error, "cannot start a new spool segment");
            }
        }
    }

    fn rotate_when_full(&mut self) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let active = state.active;
        if state.segments.get(&active).is_none_or(|s| s.bytes < self.segment_bytes) {
            return Ok(());
        }
        self.file = create_segment(&self.dir, active + 1)?;
        state.active = active + 1;
        state.segments.insert(active + 1, Segment::default());
        if state.segments.get(&active).is_some_and(|s| s.live == 0) {
            let bytes = state.segments.remove(&active).map_or(0, |s| s.bytes);
            state.bytes -= bytes;
            fs::remove_file(segment_path(&self.dir, active))?;
        }
        Ok(())
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.log"))
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(segment_path(dir, id))?;
    // The new file's directory entry must survive a crash too.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".log")?.parse().ok());
        if let Some(id) = id {
            files.push((id, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every intact record of a segment, skipping damaged regions and cutting a torn tail.
fn read_segment(path: &Path, recovery: &mut Recovery) -> io::Result<Vec<Message>> {
    let data = fs::read(path)?;
    let records = read_records(&data);
    for &(offset, skipped) in &records.skipped {
        tracing::warn!(file = %path.display(), offset, skipped, "corrupt spool record skipped");
    }
    let messages: Vec<Message> = records.bodies.iter().filter_map(|body| decode(body)).collect();
    // A whole record whose body does not decode (written by another version?) is damaged too.
    // A torn tail is a damaged region too.
    recovery.corrupt += records.skipped.len() + usize::from(records.torn_at.is_some());
    recovery.corrupt += records.bodies.len() - messages.len();
    if let Some(offset) = records.torn_at {
        let cut = (data.len() - offset) as u64;
        tracing::warn!(file = %path.display(), offset, bytes = cut, "torn spool tail truncated");
        OpenOptions::new().write(true).open(path)?.set_len(offset as u64)?;
        recovery.truncated += cut;
    }
    Ok(messages)
}

/// What a log of records holds: the bodies of the intact records in order, the damaged
/// regions skipped (offset, length), and where a torn tail starts.
pub(crate) struct Records<'a> {
    pub bodies: Vec<&'a [u8]>,
    pub skipped: Vec<(usize, usize)>,
    pub torn_at: Option<usize>,
}

/// Reads the records of `data` without changing anything: the reader resynchronises on the
/// next magic after a damaged record. The spool and the dead-letter log share this format.
pub(crate) fn read_records(data: &[u8]) -> Records<'_> {
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

fn encode(message: &Message) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.payload.len() + 256);
    put_message(&mut body, message);
    frame(&body)
}

/// Appends the fields of `message` to a record's body.
pub(crate) fn put_message(body: &mut Vec<u8>, message: &Message) {
    body.extend_from_slice(&millis(message.time).to_le_bytes());
    for field in [
        &message.id,
        &message.command,
        &message.destination,
        &message.sdk_app_id,
        &message.client_ip,
        &message.opt_platform,
    ] {
        put(body, field.as_bytes());
    }
    match &message.key {
        Some(key) => {
            body.push(1);
            put(body, key.as_bytes());
        }
        None => body.push(0),
    }
    put(body, &message.payload);
    // Added after the payload, so that records written before them still read back.
    put(body, message.trace.header().as_bytes());
    match &message.tracestate {
        Some(state) => {
            body.push(1);
            put(body, state.as_bytes());
        }
        None => body.push(0),
    }
}

/// A record: `magic, length, crc32(length ++ body), body`.
pub(crate) fn frame(body: &[u8]) -> Vec<u8> {
    let length = (body.len() as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&length);
    hasher.update(body);
    let mut record = Vec::with_capacity(HEADER + body.len());
    record.extend_from_slice(&MAGIC);
    record.extend_from_slice(&length);
    record.extend_from_slice(&hasher.finalize().to_le_bytes());
    record.extend_from_slice(body);
    record
}

pub(crate) fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(crate) fn put(body: &mut Vec<u8>, field: &[u8]) {
    body.extend_from_slice(&(field.len() as u32).to_le_bytes());
    body.extend_from_slice(field);
}

/// The body of the record at `offset` and the offset after it, if it is whole and its
/// checksum holds.
fn body_at(data: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let header = data.get(offset..offset + HEADER)?;
    if header[..4] != MAGIC {
        return None;
    }
    let length = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    if length > MAX_RECORD {
        return None;
    }
    let body = data.get(offset + HEADER..offset + HEADER + length)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..8]);
    hasher.update(body);
    if hasher.finalize() != u32::from_le_bytes(header[8..12].try_into().ok()?) {
        return None;
    }
    Some((body, offset + HEADER + length))
}

/// The message of a record's body.
pub(crate) fn decode(body: &[u8]) -> Option<Message> {
    let mut rest = body;
    let ms = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
    let mut text = || -> Option<String> {
        let length = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        String::from_utf8(take(&mut rest, length)?.to_vec()).ok()
    };
    let (id, command, destination) = (text()?, text()?, text()?);
    let (sdk_app_id, client_ip, opt_platform) = (text()?, text()?, text()?);
    let key = match take(&mut rest, 1)? {
        [1] => Some(String::from_utf8(field(&mut rest)?.to_vec()).ok()?),
        _ => None,
    };
    let payload = Bytes::copy_from_slice(field(&mut rest)?);
    let (mut traceparent, mut tracestate) = (String::new(), None);
    if !rest.is_empty() {
        traceparent = String::from_utf8(field(&mut rest)?.to_vec()).ok()?;
        if take(&mut rest, 1)? == [1] {
            tracestate = Some(String::from_utf8(field(&mut rest)?.to_vec()).ok()?);
        }
    }
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    let origin = Origin { sdk_app_id, client_ip, opt_platform, traceparent, tracestate };
    Some(Message::restore(id, time, command, destination, key, origin, payload))
}

pub(crate) fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let length = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    take(rest, length)
}

pub(crate) fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Origin;

    fn message(n: usize) -> Message {
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
    fn records_round_trip() {
        let original = message(2);
        let record = encode(&original);
        let (body, next) = body_at(&record, 0).unwrap();
        assert_eq!(next, record.len());
        let decoded = decode(body).unwrap();
        assert_eq!(decoded.id, original.id);
        assert_eq!(decoded.destination, original.destination);
        assert_eq!(decoded.key, original.key);
        assert_eq!(decoded.time_text, original.time_text);
        assert_eq!(decoded.payload, original.payload);
        assert_eq!(decoded.opt_platform, "Web");
        assert_eq!(decode(body_at(&encode(&message(1)), 0).unwrap().0).unwrap().key, None);
    }

    #[tokio::test]
    async fn events_survive_a_reopen_and_confirmed_segments_go() {
        let dir = tempdir();
        let (spool, replay) = Spool::open(&dir, 1 << 20, 300).unwrap();
        assert!(replay.events.is_empty());
        let mut segments = Vec::new();
        for n in 0..6 {
            segments.push(spool.append(&message(n)).await.unwrap());
        }
        assert!(segments.last() > segments.first(), "small segments rotate");
        spool.confirmed(segments[0]);
        drop(spool);
        let (spool, Backlog { events: replayed, recovery }) = Spool::open(&dir, 1 << 20, 300).unwrap();
        let payloads: Vec<_> = replayed.iter().map(|(m, _)| m.payload.clone()).collect();
        assert_eq!(payloads.len(), 6, "a confirm is only final once the whole segment is confirmed");
        assert_eq!(payloads[5], Bytes::from("{\"n\":5}"));
        assert_eq!(recovery, Recovery { events: 6, corrupt: 0, truncated: 0 });
        for (_, segment) in &replayed {
            spool.confirmed(*segment);
        }
        assert_eq!(segment_files(&dir).unwrap().len(), 1, "only the active segment is left");
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let dir = tempdir();
        let (spool, _) = Spool::open(&dir, 200, 1 << 20).unwrap();
        spool.append(&message(0)).await.unwrap();
        assert!(matches!(spool.append(&message(1)).await, Err(SpoolError::Full(200))));
    }

    #[test]
    fn torn_tails_and_flipped_bytes_are_reported_and_intact_records_kept() {
        let dir = tempdir();
        let records: Vec<Vec<u8>> = (0..4).map(|n| encode(&message(n))).collect();
        let mut data: Vec<u8> = records.concat();
        // Flip a byte inside the second record's body, and tear the last record in half.
        let second = records[0].len() + HEADER + 5;
        data[second] ^= 0xff;
        data.truncate(data.len() - records[3].len() / 2);
        fs::write(segment_path(&dir, 7), &data).unwrap();
        let (_spool, Backlog { events: replayed, recovery }) = Spool::open(&dir, 1 << 20, 1 << 20).unwrap();
        let payloads: Vec<_> = replayed.iter().map(|(m, _)| m.payload.clone()).collect();
        assert_eq!(payloads, [Bytes::from("{\"n\":0}"), Bytes::from("{\"n\":2}")]);
        assert_eq!(recovery.corrupt, 2);
        assert_eq!(recovery.truncated, (records[3].len() - records[3].len() / 2) as u64);
        let kept = fs::metadata(segment_path(&dir, 7)).unwrap().len() as usize;
        assert_eq!(kept, records[0].len() + records[1].len() + records[2].len(), "the torn tail is cut");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hookbus-spool-{}", uuid::Uuid::now_v7().simple()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
