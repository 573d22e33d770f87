//! The crash-safe outbox on disk (`--spool-dir`): an append-only log of segment files. Each
//! record is `magic, length, crc32(length ++ body), body`; an append encodes its record at the
//! end of one buffer of waiting records, a writer thread takes the whole buffer (a group), writes
//! it and calls `fdatasync` once (group commit), and an append returns only once its record is
//! durable. The writer's and the appenders' two buffers are swapped, not allocated, per group.
//! Confirmed records are noted beside their segment (`{segment}.acks`, records of the same
//! format holding the offsets confirmed): written every [`ACK_FLUSH`], synced every [`ACK_SYNC`]
//! and at a clean stop. A segment (and its notes) is deleted once every event in it is confirmed
//! and it is no longer written to; the segment being written is replaced by a fresh one once
//! everything in it is confirmed and it holds a sixteenth of a segment or more, or a write
//! failed, so that a full disk recovers as soon as its events are confirmed. On open, the records
//! of earlier runs are read back in order, less the confirmed ones (those past the memory it is
//! given left on disk, to be read back as their turn comes, [`Spool::reader`]); a corrupt record
//! is skipped (the reader resynchronises on the next magic), a torn tail is truncated, and both
//! are reported.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::bus::Message;
use crate::record::{self, Body, Fields};

/// A group buffer that grew past this in a burst is not kept for the next group.
const KEEP_BUFFER: usize = 4 << 20;
/// Segments are deleted whole, once every event in them is confirmed.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// How often confirmations are written beside their segments: what a killed process may
/// publish again after its restart.
pub const ACK_FLUSH: Duration = Duration::from_millis(100);
/// How often the written confirmations are synced: what a power cut may publish again.
pub const ACK_SYNC: Duration = Duration::from_secs(1);

/// Where a record is: its segment and its offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool full ({0} bytes)")]
    Full(u64),
    #[error("spool write failed: {0}")]
    Io(#[from] io::Error),
}

/// What an earlier run left in the spool and did not confirm, in order, each event with its
/// record's location and size: the first ones read into memory, the rest (past the memory
/// given to [`Spool::open`]) left on disk, to be read back with [`Spool::reader`] when their turn
/// comes.
pub struct Backlog {
    pub events: Vec<(Option<Message>, Location, usize)>,
    pub recovery: Recovery,
}

/// What reading the spool back found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Events read back, to be published again.
    pub events: usize,
    /// Events read back that an earlier run had confirmed: left out.
    pub confirmed: usize,
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
    waiting: Arc<Waiting>,
}

/// The records waiting for the writer, and the writer's wake-up.
#[derive(Default)]
struct Waiting {
    group: Mutex<Group>,
    wake: Condvar,
}

/// Records encoded end to end, each with its length and who waits for it to be durable.
#[derive(Default)]
struct Group {
    bytes: Vec<u8>,
    records: Vec<(usize, oneshot::Sender<io::Result<Location>>)>,
    /// The writer waits for a record (and must be woken).
    asleep: bool,
    /// No record is taken any more: the spool is dropped, or its writer stopped.
    closed: bool,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// No more records: the writer writes what waits and stops.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }
}

#[derive(Default)]
struct Segments {
    /// Live (unconfirmed) events and size of each segment, by id.
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Bytes of all segments and their notes, plus appends not yet written.
    bytes: u64,
    /// Offsets confirmed and not yet noted, by segment.
    acks: BTreeMap<u64, Vec<u64>>,
    /// The open notes of each segment that has some.
    notes: BTreeMap<u64, File>,
    /// A notes file was created since the directory was last synced.
    notes_created: bool,
}

#[derive(Default)]
struct Segment {
    live: usize,
    /// Of the segment file.
    bytes: u64,
    /// Of its notes.
    noted: u64,
}

impl Segments {
    /// Forgets segment `id`, its notes and its pending confirmations; gives back its files.
    fn remove(&mut self, dir: &Path, id: u64) -> [PathBuf; 2] {
        if let Some(segment) = self.segments.remove(&id) {
            self.bytes -= segment.bytes + segment.noted;
        }
        self.acks.remove(&id);
        self.notes.remove(&id);
        [segment_path(dir, id), notes_path(dir, id)]
    }
}

/// Deletes a segment's files (its notes may not exist).
fn delete(files: [PathBuf; 2]) -> io::Result<()> {
    for file in files {
        match fs::remove_file(&file) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

impl Spool {
    /// Opens (creating) `dir`, reads back what earlier runs left, and starts the writer on a
    /// fresh segment. Returns the spooled events in order, each with its segment; of those past
    /// `memory` bytes (as [`Message::footprint`] counts them), only where they are.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64, memory: usize) -> io::Result<(Spool, Backlog)> {
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
        let mut held = 0;
        let segments = segment_files(dir)?;
        for &(id, ref path) in &segments {
            let confirmed = read_notes(dir, id)?;
            let found = read_segment(path, &mut recovery)?;
            let before = found.len();
            let found: Vec<_> = found.into_iter().filter(|(offset, ..)| !confirmed.contains(offset)).collect();
            recovery.confirmed += before - found.len();
            if found.is_empty() {
                delete([path.clone(), notes_path(dir, id)])?;
                continue;
            }
            let bytes = fs::metadata(path)?.len();
            let noted = fs::metadata(notes_path(dir, id)).map_or(0, |notes| notes.len());
            state.segments.insert(id, Segment { live: found.len(), bytes, noted });
            state.bytes += bytes + noted;
            for (offset, message, size) in found {
                held += message.footprint();
                let kept = (held <= memory).then_some(message);
                events.push((kept, Location { segment: id, offset }, size));
            }
        }
        // Notes whose segment is gone (deleted between the two).
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let id = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".acks")?.parse().ok());
            if id.is_some_and(|id| !state.segments.contains_key(&id)) {
                fs::remove_file(&path)?;
            }
        }
        recovery.events = events.len();
        state.active = segments.last().map_or(0, |(last, _)| last + 1);
        state.segments.insert(state.active, Segment::default());
        let file = create_segment(dir, state.active)?;
        let state = Arc::new(Mutex::new(state));
        let waiting = Arc::new(Waiting::default());
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            state: state.clone(),
            waiting: waiting.clone(),
            segment_bytes,
            failed: false,
        };
        std::thread::Builder::new().name("hookbus-spool".into()).spawn(move || writer.run())?;
        let (notes_dir, notes_state) = (dir.to_owned(), Arc::downgrade(&state));
        std::thread::Builder::new().name("hookbus-spool-acks".into()).spawn(move || note(&notes_dir, notes_state))?;
        Ok((Spool { dir: dir.to_owned(), _lock: lock, max_bytes, state, waiting }, Backlog { events, recovery }))
    }

    /// Appends an event and returns where its record is once it is on disk.
    pub async fn append(&self, message: &Message) -> Result<Location, SpoolError> {
        let (done, written) = oneshot::channel();
        {
            let mut group = self.waiting.lock();
            if group.closed {
                return Err(io::Error::other("spool writer stopped").into());
            }
            let before = group.bytes.len();
            let mut body = Body::after(std::mem::take(&mut group.bytes));
            body.message(message);
            group.bytes = body.record();
            let size = group.bytes.len() - before;
            let mut state = self.lock();
            if state.bytes + size as u64 > self.max_bytes {
                group.bytes.truncate(before);
                return Err(SpoolError::Full(self.max_bytes));
            }
            state.bytes += size as u64;
            drop(state);
            group.records.push((size, done));
            if std::mem::take(&mut group.asleep) {
                self.waiting.wake.notify_one();
            }
        }
        match written.await {
            Ok(Ok(location)) => Ok(location),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(io::Error::other("spool writer stopped").into()),
        }
    }

    /// A reader of events left on disk, not in memory, that opens each segment once; its own,
    /// so that it can read on a blocking thread.
    pub fn reader(&self) -> Reader {
        Reader { dir: self.dir.clone(), open: None }
    }

    /// Marks the event at `location` confirmed: noted beside its segment within [`ACK_FLUSH`],
    /// so that no later start publishes it again; the segment is deleted when nothing in it is
    /// left and it is no longer written to.
    pub fn confirmed(&self, location: Location) {
        let mut state = self.lock();
        let active = state.active;
        let Some(entry) = state.segments.get_mut(&location.segment) else { return };
        entry.live = entry.live.saturating_sub(1);
        if entry.live == 0 && location.segment != active {
            let files = state.remove(&self.dir, location.segment);
            drop(state);
            if let Err(error) = delete(files) {
                tracing::warn!(%error, segment = location.segment, "cannot delete a confirmed spool segment");
            }
        } else {
            state.acks.entry(location.segment).or_default().push(location.offset);
        }
    }

    /// Writes and syncs the confirmations not yet noted: at a clean stop, so that the next
    /// start publishes nothing already confirmed.
    pub fn sync_confirmations(&self) -> io::Result<()> {
        write_notes(&self.dir, &self.state, true)
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

/// Reads back events whose records are in the spool, keeping the last segment it read open.
pub struct Reader {
    dir: PathBuf,
    open: Option<(u64, File)>,
}

impl Reader {
    /// The event whose record is at `location`.
    pub fn read(&mut self, location: Location) -> io::Result<Message> {
        use std::os::unix::fs::FileExt;
        let damaged = || io::Error::new(io::ErrorKind::InvalidData, "spool record damaged");
        let file = match &mut self.open {
            Some((segment, file)) if *segment == location.segment => file,
            open => &open.insert((location.segment, File::open(segment_path(&self.dir, location.segment))?)).1,
        };
        let mut header = [0; record::HEADER];
        file.read_exact_at(&mut header, location.offset)?;
        let length = record::length_in(&header).ok_or_else(damaged)?;
        let mut data = vec![0; record::HEADER + length];
        file.read_exact_at(&mut data, location.offset)?;
        let records = record::read(&data);
        match records.bodies[..] {
            [body] => Fields::new(body).message().ok_or_else(damaged),
            _ => Err(damaged()),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.waiting.close();
    }
}

/// What a spool directory holds, read without changing anything (a gateway may be writing it).
pub struct Contents {
    pub segments: usize,
    pub bytes: u64,
    /// The events of every segment, in order, less those noted as confirmed (a confirmation is
    /// noted within [`ACK_FLUSH`]).
    pub events: Vec<Message>,
}

/// Reads the segments of the spool directory `dir` as they are.
pub fn inspect(dir: &Path) -> io::Result<Contents> {
    let mut contents = Contents { segments: 0, bytes: 0, events: Vec::new() };
    for (id, path) in segment_files(dir)? {
        let data = fs::read(&path)?;
        let confirmed = read_notes(dir, id)?;
        contents.segments += 1;
        contents.bytes += data.len() as u64;
        let records = record::read(&data);
        let waiting = records.bodies.into_iter().filter(|body| !confirmed.contains(&record::offset_of(&data, body)));
        contents.events.extend(waiting.filter_map(|body| Fields::new(body).message()));
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
    waiting: Arc<Waiting>,
    segment_bytes: u64,
    /// The last group failed (a full disk?).
    failed: bool,
}

impl Writer {
    /// Writes what waits as one group, one `fdatasync` per group, until the spool is dropped and
    /// nothing waits. Its buffers are swapped with the appenders', so that neither is allocated
    /// again per group.
    fn run(mut self) {
        let (mut bytes, mut records) = (Vec::new(), Vec::new());
        loop {
            {
                let mut group = self.waiting.lock();
                while group.records.is_empty() {
                    if group.closed {
                        return;
                    }
                    group.asleep = true;
                    group = self.waiting.wake.wait(group).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                std::mem::swap(&mut group.bytes, &mut bytes);
                std::mem::swap(&mut group.records, &mut records);
            }
            self.write(&bytes, &mut records);
            bytes.clear();
            if bytes.capacity() > KEEP_BUFFER {
                bytes = Vec::new();
            }
        }
    }

    /// Writes one group and says where each of its records is, or why it is not. A group that
    /// fails is cut off the segment again, so that no part of it is left behind.
    fn write(&mut self, bytes: &[u8], records: &mut Vec<(usize, oneshot::Sender<io::Result<Location>>)>) {
        // A segment that could not be replaced may be gone already: the group fails rather
        // than be written where nothing keeps it.
        if let Err(error) = self.rotate_when_due() {
            tracing::error!(%error, "cannot start a new spool segment");
            self.state.lock().unwrap_or_else(|p| p.into_inner()).bytes -= bytes.len() as u64;
            self.failed = true;
            for (_, done) in records.drain(..) {
                let _ = done.send(Err(io::Error::new(error.kind(), error.to_string())));
            }
            return;
        }
        let (segment, start) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.active, state.segments.get(&state.active).map_or(0, |s| s.bytes))
        };
        let written = self.file.write_all(bytes).and_then(|()| self.file.sync_data());
        self.failed = written.is_err();
        if written.is_err() {
            if let Err(error) = self.file.set_len(start) {
                tracing::error!(%error, segment, "cannot cut a failed write off the spool segment");
            }
        }
        {
            // Counted before anyone hears of its record, which may be confirmed at once.
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if written.is_ok() {
                let entry = state.segments.entry(segment).or_default();
                entry.live += records.len();
                entry.bytes += bytes.len() as u64;
            } else {
                state.bytes -= bytes.len() as u64;
            }
        }
        let mut offset = start;
        for (size, done) in records.drain(..) {
            let result = match &written {
                Ok(()) => Ok(Location { segment, offset }),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            offset += size as u64;
            let _ = done.send(result);
        }
    }

    /// Starts a new segment when the active one is full, or holds nothing unconfirmed and a
    /// sixteenth of a segment or more, or anything after a failed write (deleting it then: a
    /// full disk gets its room back).
    fn rotate_when_due(&mut self) -> io::Result<()> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let active = state.active;
        let (live, bytes) = state.segments.get(&active).map_or((0, 0), |s| (s.live, s.bytes));
        let drained = live == 0 && bytes > 0 && (self.failed || bytes >= self.segment_bytes / 16);
        if bytes < self.segment_bytes && !drained {
            return Ok(());
        }
        // A drained one's files go first: on a full disk, the new segment needs their room (its
        // records are all confirmed; should the new one not be made, the group fails).
        if live == 0 {
            if let Err(error) = delete([segment_path(&self.dir, active), notes_path(&self.dir, active)]) {
                tracing::warn!(%error, segment = active, "cannot delete a drained spool segment");
            }
        }
        drop(state);
        let file = create_segment(&self.dir, active + 1)?;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if live == 0 {
            state.remove(&self.dir, active);
        }
        state.active = active + 1;
        state.segments.insert(active + 1, Segment::default());
        self.file = file;
        Ok(())
    }
}

impl Drop for Writer {
    /// A writer that stops (panics) takes no more records, and fails those waiting.
    fn drop(&mut self) {
        let mut group = self.waiting.lock();
        group.closed = true;
        group.records.clear();
    }
}

/// Writes the confirmations of `state` beside their segments every [`ACK_FLUSH`], and syncs
/// them every [`ACK_SYNC`], until the spool is gone.
fn note(dir: &Path, state: std::sync::Weak<Mutex<Segments>>) {
    let mut last_sync = std::time::Instant::now();
    let mut logged = crate::logs::Limiter::default();
    loop {
        std::thread::sleep(ACK_FLUSH);
        let Some(state) = state.upgrade() else { return };
        let sync = last_sync.elapsed() >= ACK_SYNC;
        if sync {
            last_sync = std::time::Instant::now();
        }
        if let Err(error) = write_notes(dir, &state, sync) {
            if let Some(suppressed) = logged.allow() {
                tracing::warn!(%error, suppressed, "spool confirmations not written: a restart may publish them again");
            }
        }
    }
}

/// Appends each segment's pending confirmations to its notes, as one record of offsets, and
/// syncs them (and the directory, for new notes) when `sync`.
fn write_notes(dir: &Path, state: &Mutex<Segments>, sync: bool) -> io::Result<()> {
    let mut to_sync = Vec::new();
    let created = {
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let pending = std::mem::take(&mut state.acks);
        for (segment, offsets) in pending {
            if !state.segments.contains_key(&segment) {
                continue;
            }
            let mut body = Body::with_capacity(8 * offsets.len());
            for &offset in &offsets {
                body.u64(offset);
            }
            let record = body.record();
            let mut created = false;
            let file = match state.notes.entry(segment) {
                std::collections::btree_map::Entry::Occupied(open) => open.into_mut(),
                std::collections::btree_map::Entry::Vacant(new) => {
                    created = true;
                    new.insert(OpenOptions::new().create(true).append(true).open(notes_path(dir, segment))?)
                }
            };
            file.write_all(&record)?;
            state.notes_created |= created;
            let entry = state.segments.get_mut(&segment).expect("checked above");
            entry.noted += record.len() as u64;
            state.bytes += record.len() as u64;
        }
        if sync {
            for file in state.notes.values() {
                to_sync.push(file.try_clone()?);
            }
        }
        sync && std::mem::take(&mut state.notes_created)
    };
    for file in to_sync {
        file.sync_data()?;
    }
    if created {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The offsets a segment's notes say were confirmed (none when it has no notes).
fn read_notes(dir: &Path, id: u64) -> io::Result<std::collections::HashSet<u64>> {
    let data = match fs::read(notes_path(dir, id)) {
        Ok(data) => data,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(error) => return Err(error),
    };
    let mut confirmed = std::collections::HashSet::new();
    for body in record::read(&data).bodies {
        let mut offsets = Fields::new(body);
        confirmed.extend(std::iter::from_fn(|| offsets.u64()));
    }
    Ok(confirmed)
}

fn notes_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.acks"))
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

/// Reads every intact record of a segment with its offset, skipping damaged regions and
/// cutting a torn tail.
fn read_segment(path: &Path, recovery: &mut Recovery) -> io::Result<Vec<(u64, Message, usize)>> {
    let data = fs::read(path)?;
    let records = record::read(&data);
    for &(offset, skipped) in &records.skipped {
        tracing::warn!(file = %path.display(), offset, skipped, "corrupt spool record skipped");
    }
    let messages: Vec<(u64, Message, usize)> = records
        .bodies
        .iter()
        .filter_map(|body| {
            Some((record::offset_of(&data, body), Fields::new(body).message()?, record::HEADER + body.len()))
        })
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::message;
    use bytes::Bytes;

    #[tokio::test]
    async fn unconfirmed_events_survive_a_reopen_and_confirmed_ones_do_not() {
        let dir = tempdir();
        let (spool, replay) = Spool::open(&dir, 1 << 20, 300, usize::MAX).unwrap();
        assert!(replay.events.is_empty());
        let mut records = Vec::new();
        for n in 0..6 {
            records.push(spool.append(&message(n)).await.unwrap());
        }
        assert!(records.last().unwrap().segment > records[0].segment, "small segments rotate");
        spool.confirmed(records[0]);
        spool.confirmed(records[4]);
        spool.sync_confirmations().unwrap();
        drop(spool);
        let (spool, Backlog { events: replayed, recovery }) = Spool::open(&dir, 1 << 20, 300, usize::MAX).unwrap();
        let payloads: Vec<_> = replayed.iter().map(|(m, ..)| m.as_ref().unwrap().payload.clone()).collect();
        let expected: Vec<_> = [1, 2, 3, 5].iter().map(|n| Bytes::from(format!("{{\"n\":{n}}}"))).collect();
        assert_eq!(payloads, expected, "the confirmed ones are left out, the others kept in order");
        assert_eq!(recovery, Recovery { events: 4, confirmed: 2, corrupt: 0, truncated: 0 });
        assert_eq!(inspect(&dir).unwrap().events.len(), 4, "spool ls shows what waits");
        for (_, record, _) in &replayed {
            spool.confirmed(*record);
        }
        assert_eq!(segment_files(&dir).unwrap().len(), 1, "only the active segment is left");
    }

    #[tokio::test]
    async fn a_drained_segment_is_replaced_before_the_next_write() {
        let dir = tempdir();
        let (spool, _) = Spool::open(&dir, 1 << 20, 1600, usize::MAX).unwrap();
        let first = spool.append(&message(0)).await.unwrap();
        spool.confirmed(first);
        let second = spool.append(&message(1)).await.unwrap();
        assert_eq!(second.segment, first.segment + 1, "the drained segment held a sixteenth: replaced");
        assert!(!segment_path(&dir, first.segment).exists(), "and deleted");
    }

    #[tokio::test]
    async fn a_full_spool_refuses() {
        let dir = tempdir();
        let (spool, _) = Spool::open(&dir, 200, 1 << 20, usize::MAX).unwrap();
        spool.append(&message(0)).await.unwrap();
        assert!(matches!(spool.append(&message(1)).await, Err(SpoolError::Full(200))));
    }

    #[test]
    fn torn_tails_and_flipped_bytes_are_reported_and_intact_records_kept() {
        let dir = tempdir();
        let records: Vec<Vec<u8>> = (0..4).map(|n| record::of_message(&message(n))).collect();
        let mut data: Vec<u8> = records.concat();
        // Flip a byte inside the second record's body, and tear the last record in half.
        let second = records[0].len() + record::HEADER + 5;
        data[second] ^= 0xff;
        data.truncate(data.len() - records[3].len() / 2);
        fs::write(segment_path(&dir, 7), &data).unwrap();
        let (_spool, Backlog { events: replayed, recovery }) = Spool::open(&dir, 1 << 20, 1 << 20, usize::MAX).unwrap();
        let payloads: Vec<_> = replayed.iter().map(|(m, ..)| m.as_ref().unwrap().payload.clone()).collect();
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
