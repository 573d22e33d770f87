//! What the log does with what comes from outside. A field carrying outside bytes (a
//! responder's reply, a correlation id, a header value) goes through [`field`]: cut to a
//! bounded length with its full size noted, and recorded as a string, which the text format
//! prints quoted with control characters escaped (`\n`, `\u{1b}`) and the JSON format
//! JSON-escapes, so that no reply can forge a line, colour a terminal or flood the log. A line
//! that outside input can repeat at will is rate-limited with a [`Limiter`]. Setting up the
//! subscriber is `main`'s business.

use std::time::{SystemTime, UNIX_EPOCH};

/// The most of a field's bytes that are logged; the rest is noted by its size.
pub const FIELD_BYTES: usize = 256;

/// `bytes` as a log field: at most [`FIELD_BYTES`] of them, cut at a character boundary and
/// followed by `… (N bytes)` when cut; invalid UTF-8 becomes U+FFFD. Log it as a value
/// (`reply = logs::field(&reply)`), never with `%`: a `Display` field is printed as it is by
/// the text format, control characters and all.
pub fn field(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    if bytes.len() <= FIELD_BYTES {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    // Back off to the start of the character the cut falls in (continuation bytes are 10xxxxxx).
    let mut end = FIELD_BYTES;
    while end > FIELD_BYTES - 3 && bytes[end] & 0b1100_0000 == 0b1000_0000 {
        end -= 1;
    }
    format!("{}… ({} bytes)", String::from_utf8_lossy(&bytes[..end]), bytes.len())
}

/// Lets one line through per second and counts the ones held back in between.
#[derive(Debug, Default, Clone)]
pub struct Limiter {
    /// The second (Unix time) of the last line let through.
    second: u64,
    held_back: u64,
}

impl Limiter {
    /// `Some(held back since the last line)` when a line may be logged now, else `None`.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    }

    fn allow_at(&mut self, now: u64) -> Option<u64> {
        if self.second == now {
            self.held_back += 1;
            return None;
        }
        self.second = now;
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_fields_are_kept_and_long_ones_cut_with_their_size() {
        assert_eq!(field(b"\xff\xfe not json"), "\u{fffd}\u{fffd} not json");
        let long = "é".repeat(1000);
        let cut = field(&long);
        assert!(cut.ends_with("… (2000 bytes)"), "{cut}");
        let kept = cut.trim_end_matches("… (2000 bytes)");
        assert_eq!(kept, "é".repeat(FIELD_BYTES / 2), "cut at a character boundary, nothing replaced");
        let odd = format!("x{long}");
        assert_eq!(field(&odd).trim_end_matches("… (2001 bytes)"), format!("x{}", "é".repeat(FIELD_BYTES / 2 - 1)));
    }

    #[test]
    fn one_line_per_second_and_the_rest_counted() {
        let mut limiter = Limiter::default();
        assert_eq!(limiter.allow_at(7), Some(0));
        assert!((0..100).all(|_| limiter.allow_at(7).is_none()));
        assert_eq!(limiter.allow_at(8), Some(100));
        assert_eq!(limiter.allow_at(8), None);
        assert_eq!(limiter.allow_at(9), Some(1));
    }
}
