//! Replays inside the signature window. Tencent's `Sign` covers only the token and
//! `RequestTime`, with no nonce: whoever captures one signed request can send it again until
//! its `RequestTime` is older than the allowed clock skew. The cache remembers each signed
//! request answered 200 until then, with the answer it got, so that a replay is answered the
//! same and not published again. A replay is the same `Sign`, `RequestTime`, SdkAppid,
//! command and body: the other query parameters are not signed, and changing them does not
//! make a new callback. Bounded by a number of entries: past it, the entries closest to
//! expiring go first.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Mutex;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// One signed callback: 128 bits of a digest of its `Sign`, `RequestTime`, SdkAppid, command
/// and body (a collision among a million requests is about 1 in 10^26).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

/// A key is a digest already: its first 8 bytes are its hash. Only requests signed with the
/// token get here, so nobody without it can choose keys that collide.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(self.0[..8].try_into().expect("8 of 16 bytes")));
    }
}

/// The hasher for [`Key`]s: their own first 8 bytes, with no hashing again.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Keyed = BuildHasherDefault<Prehashed>;

impl Key {
    pub fn of(sign: &str, request_time: &str, sdk_app_id: &str, command: &str, body: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        // Each field with its length first, so that no two lists of fields hash alike.
        let sign = sign.to_ascii_lowercase();
        for field in [sign.as_bytes(), request_time.as_bytes(), sdk_app_id.as_bytes(), command.as_bytes(), body] {
            hasher.update((field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
        Key(hasher.finalize()[..16].try_into().expect("a SHA-256 digest has 32 bytes"))
    }
}

impl Key {
    /// The event id of the signed callback this is the key of ([`crate::bus::derived_id`]): the
    /// same on every instance, its time part `RequestTime` (Unix seconds).
    pub fn event_id(&self, request_time: u64) -> String {
        crate::bus::derived_id(Some(request_time.saturating_mul(1000)), self.0)
    }
}

/// A key from a digest made elsewhere: a TRTC event's fingerprint, the same for each of
/// Tencent's retries of it.
impl From<[u8; 16]> for Key {
    fn from(digest: [u8; 16]) -> Key {
        Key(digest)
    }
}

/// What a request was answered the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answered {
    /// An informational callback, accepted.
    Event,
    /// A blocking callback, with this decision.
    Decision(Bytes),
}

/// Expired requests forgotten per lookup at most: each request adds one.
const EXPIRE_AT_ONCE: usize = 16;
/// Distinct decision answers whose memory is shared.
const SHARED_ANSWERS: usize = 1024;

pub struct Replays {
    state: Mutex<Cache>,
    capacity: usize,
    /// Decisions being made, by key: a replay that arrives meanwhile waits for the answer
    /// instead of asking the bus a second time.
    deciding: Mutex<HashMap<Key, watch::Receiver<Option<Bytes>>, Keyed>>,
}

/// A decision this request is making; replays of it wait for [`Deciding::decided`]. Dropped
/// without an answer, the waiting replays decide by themselves.
pub struct Deciding<'a> {
    replays: &'a Replays,
    key: Key,
    answer: watch::Sender<Option<Bytes>>,
}

impl Deciding<'_> {
    /// Hands `answer` to the replays waiting for it.
    pub fn decided(self, answer: Bytes) {
        self.answer.send_replace(Some(answer));
    }
}

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.replays.deciding.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.key);
    }
}

/// Informational requests cost a set entry and a queue slot (about 50 bytes); decisions the
/// number of their answer instead of a copy: most decisions are one of a few answers, and
/// 200,000 copies of them would take 13 MB.
#[derive(Default)]
struct Cache {
    events: HashSet<Key, Keyed>,
    /// Decisions, by the place of their answer in `answers`.
    decisions: HashMap<Key, u32, Keyed>,
    /// Decisions whose answer is not one of `answers` (more than [`SHARED_ANSWERS`] came).
    unshared: HashMap<Key, Bytes, Keyed>,
    /// Distinct decision answers, and the place of each.
    answers: Vec<Bytes>,
    places: HashMap<Bytes, u32>,
    /// Keys in the order they were remembered, with the second after which their request is
    /// refused as stale anyway. Nearly in expiry order (RequestTime follows the clock); one
    /// that is not is merely kept a little longer.
    order: VecDeque<(u32, Key)>,
}

impl Replays {
    /// A cache of at most `capacity` requests.
    pub fn new(capacity: usize) -> Replays {
        Replays { state: Mutex::default(), capacity, deciding: Mutex::default() }
    }

    /// Claims the decision of the request with `key`: [`Deciding`] when no other request with
    /// that key is being decided; else waits for that one's answer, `None` if it gave up.
    pub async fn claim(&self, key: Key) -> Result<Deciding<'_>, Option<Bytes>> {
        let mut waiting = {
            let mut deciding = self.deciding.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match deciding.get(&key) {
                Some(waiting) => waiting.clone(),
                None => {
                    let (answer, waiting) = watch::channel(None);
                    deciding.insert(key, waiting);
                    return Ok(Deciding { replays: self, key, answer });
                }
            }
        };
        let answered = waiting.wait_for(Option::is_some).await;
        Err(answered.ok().and_then(|answer| answer.clone()))
    }

    /// How a request with `key` was answered, when it was answered before and is still in the
    /// window at `now` (Unix seconds).
    pub fn answered(&self, key: Key, now: u64) -> Option<Answered> {
        let mut state = self.lock();
        state.expire(now);
        if state.events.contains(&key) {
            return Some(Answered::Event);
        }
        let answer = match state.decisions.get(&key) {
            Some(&place) => state.answers.get(place as usize),
            None => state.unshared.get(&key),
        };
        answer.cloned().map(Answered::Decision)
    }

    /// Remembers how a request was answered, until `expires` (Unix seconds).
    pub fn remember(&self, key: Key, expires: u64, answered: Answered) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.lock();
        while state.order.len() >= self.capacity {
            state.forget_oldest();
        }
        let new = match answered {
            Answered::Event => state.events.insert(key),
            Answered::Decision(answer) => match state.place(&answer) {
                Some(place) => state.decisions.insert(key, place).is_none(),
                None => state.unshared.insert(key, answer).is_none(),
            },
        };
        if new {
            state.order.push_back((u32::try_from(expires).unwrap_or(u32::MAX), key));
        }
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Cache {
    /// Forgets up to [`EXPIRE_AT_ONCE`] of the requests whose window has passed. A bound, so
    /// that no one request pays for all the requests of a second (or, from a client that signs
    /// a whole run with one RequestTime, of a minute) at once; one that stays a little longer is
    /// harmless, since the signature check refuses it as stale before the cache is asked.
    fn expire(&mut self, now: u64) {
        for _ in 0..EXPIRE_AT_ONCE {
            if self.order.front().is_none_or(|&(expires, _)| u64::from(expires) >= now) {
                break;
            }
            self.forget_oldest();
        }
    }

    /// The place of `answer` among the shared answers, given one if there is room.
    fn place(&mut self, answer: &Bytes) -> Option<u32> {
        if let Some(&place) = self.places.get(answer) {
            return Some(place);
        }
        if self.answers.len() >= SHARED_ANSWERS {
            return None;
        }
        let place = self.answers.len() as u32;
        self.answers.push(answer.clone());
        self.places.insert(answer.clone(), place);
        Some(place)
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            if !self.events.remove(&key) && self.decisions.remove(&key).is_none() {
                self.unshared.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_gets_the_first_answer_until_its_window_ends() {
        let replays = Replays::new(10);
        let key = Key::of("AB", "100", "1400", "Live.X", b"{}");
        assert_eq!(replays.answered(key, 100), None);
        let first = Answered::Decision(Bytes::from_static(b"first"));
        replays.remember(key, 160, first.clone());
        assert_eq!(replays.answered(key, 160), Some(first.clone()));
        let same = Key::of("ab", "100", "1400", "Live.X", b"{}");
        assert_eq!(replays.answered(same, 160), Some(first), "hex case");
        for other in [
            Key::of("AB", "100", "1400", "Live.X", b"{ }"),
            Key::of("AB", "101", "1400", "Live.X", b"{}"),
            Key::of("AB", "100", "1401", "Live.X", b"{}"),
            Key::of("AB", "100", "1400", "Live.Y", b"{}"),
        ] {
            assert_eq!(replays.answered(other, 160), None, "another callback");
        }
        assert_eq!(replays.answered(key, 161), None, "stale: the signature check refuses it now");
        assert!(replays.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_and_drops_what_expires_first() {
        let replays = Replays::new(3);
        for n in 0..5u64 {
            replays.remember(Key::of("s", &n.to_string(), "", "", b""), 100 + n, Answered::Event);
        }
        assert_eq!(replays.len(), 3);
        assert_eq!(replays.answered(Key::of("s", "0", "", "", b""), 0), None);
        assert_eq!(replays.answered(Key::of("s", "4", "", "", b""), 0), Some(Answered::Event));
    }

    #[test]
    fn expired_requests_are_forgotten_a_few_per_lookup_and_equal_answers_share_memory() {
        let replays = Replays::new(1000);
        for n in 0..100u64 {
            replays.remember(Key::of("s", &n.to_string(), "", "", b""), 100, Answered::Event);
        }
        let unknown = Key::of("other", "0", "", "", b"");
        assert_eq!(replays.answered(unknown, 200), None);
        assert_eq!(replays.len(), 100 - EXPIRE_AT_ONCE, "a bounded share of the expired ones");
        for _ in 0..10 {
            replays.answered(unknown, 200);
        }
        assert!(replays.is_empty());
        let (first, second) = (Key::of("a", "1", "", "", b""), Key::of("b", "1", "", "", b""));
        replays.remember(first, 300, Answered::Decision(Bytes::from(b"{\"ErrorCode\":0}".to_vec())));
        replays.remember(second, 300, Answered::Decision(Bytes::from(b"{\"ErrorCode\":0}".to_vec())));
        let memory = |key| match replays.answered(key, 300) {
            Some(Answered::Decision(answer)) => answer.as_ptr(),
            other => panic!("{other:?}"),
        };
        assert_eq!(memory(first), memory(second));
        // Past the shared answers, each decision keeps its own.
        for n in 0..=SHARED_ANSWERS {
            let answer = Answered::Decision(Bytes::from(n.to_string()));
            replays.remember(Key::of("c", &n.to_string(), "", "", b""), 300, answer);
        }
        let last = Key::of("c", &SHARED_ANSWERS.to_string(), "", "", b"");
        assert_eq!(replays.answered(last, 300), Some(Answered::Decision(Bytes::from(SHARED_ANSWERS.to_string()))));
    }
}
