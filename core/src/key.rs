//! Notification keys.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

/// The key of a passive operation: a random UUIDv4 (122 random bits), sent by the active side
/// as the UTF-8 bytes of its hyphenated lowercase form when the transfer is complete, exactly as
/// Dynamo does.
///
/// The core holds no source of randomness; a backend supplies 16 random bytes and
/// [`NotificationKey::from_random_bytes`] stamps the version and variant bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotificationKey([u8; 16]);

/// The suffix that turns a key into the cancellation signal of SPEC §5.
pub const CANCEL_SUFFIX: &str = ":cancel";

impl NotificationKey {
    /// Makes a UUIDv4 out of 16 random bytes.
    pub fn from_random_bytes(mut bytes: [u8; 16]) -> Self {
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        NotificationKey(bytes)
    }

    /// A key from its 16 bytes as they travel on a wire; `None` unless they are a UUIDv4
    /// (version and variant bits as [`NotificationKey::from_random_bytes`] sets them).
    pub fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        let stamped = NotificationKey::from_random_bytes(bytes);
        (stamped.0 == bytes).then_some(stamped)
    }

    /// The 16 bytes of the UUID.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The completion notification: the key's text as bytes.
    pub fn completion_message(&self) -> Vec<u8> {
        self.text().to_vec()
    }

    /// The cancellation notification: the key's text followed by [`CANCEL_SUFFIX`].
    pub fn cancel_message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(TEXT_LEN + CANCEL_SUFFIX.len());
        message.extend_from_slice(&self.text());
        message.extend_from_slice(CANCEL_SUFFIX.as_bytes());
        message
    }

    /// The hyphenated lowercase form, as ASCII bytes. Written by hand rather than through
    /// `fmt`: an active operation sends it with every transfer, and sixteen `{:02x}` writes
    /// cost more than the rest of building the notification.
    fn text(&self) -> [u8; TEXT_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'-'; TEXT_LEN];
        let mut at = 0;
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                at += 1;
            }
            text[at] = HEX[usize::from(byte >> 4)];
            text[at + 1] = HEX[usize::from(byte & 0x0f)];
            at += 2;
        }
        text
    }
}

/// The length of a key's text: 32 hex digits and 4 hyphens.
const TEXT_LEN: usize = 36;

/// Random bytes for keys, drawn from the operating system's generator a page at a time: one
/// read per [`KeyPool::KEYS_PER_PAGE`] keys rather than one per passive operation, whose
/// system call costs about as much as the rest of exposing memory. The core does no IO: the
/// backend's `refill` does the reading.
#[derive(Default)]
pub struct KeyPool {
    /// Unused random bytes; each key takes the last 16 and they leave the pool.
    page: Vec<u8>,
}

impl KeyPool {
    /// How many keys one page of random bytes makes.
    pub const KEYS_PER_PAGE: usize = 256;

    /// An empty pool: the first key refills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next key. When the pool is empty, `refill` must fill a fresh page with random
    /// bytes first; its error is returned and the pool stays empty.
    pub fn next<E>(
        &mut self,
        refill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<NotificationKey, E> {
        if self.page.len() < 16 {
            let mut page = vec![0u8; 16 * Self::KEYS_PER_PAGE];
            refill(&mut page)?;
            self.page = page;
        }
        let at = self.page.len() - 16;
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.page[at..]);
        self.page.truncate(at);
        Ok(NotificationKey::from_random_bytes(bytes))
    }
}

impl fmt::Debug for KeyPool {
    /// How many keys are left, never the bytes: they are keys not yet handed out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPool")
            .field("keys_left", &(self.page.len() / 16))
            .finish()
    }
}

/// What an inbound notification says, once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// The transfer of this key is complete.
    Complete(NotificationKey),
    /// The active side cancelled the transfer of this key.
    Cancel(NotificationKey),
}

impl Notification {
    /// Parses a notification message; `None` for anything that is not one of ours (a peer may
    /// send other messages, which are not an error).
    pub fn parse(message: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(message).ok()?;
        match text.strip_suffix(CANCEL_SUFFIX) {
            Some(key) => key.parse().ok().map(Notification::Cancel),
            None => text.parse().ok().map(Notification::Complete),
        }
    }
}

impl fmt::Display for NotificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        // Always ASCII; the error arm cannot be taken.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for NotificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotificationKey({self})")
    }
}

impl FromStr for NotificationKey {
    type Err = Error;

    /// Parses the hyphenated form of any UUID (Dynamo generates v4; peers are not required to).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidMetadata {
            reason: format!("notification_key is not a UUID: {:?}", truncate(s)),
        };
        let bytes = s.as_bytes();
        if bytes.len() != 36 {
            return Err(invalid());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in bytes.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(invalid());
                }
                continue;
            }
            let value = (c as char).to_digit(16).ok_or_else(invalid)? as u8;
            out[nibbles / 2] |= if nibbles % 2 == 0 { value << 4 } else { value };
            nibbles += 1;
        }
        Ok(NotificationKey(out))
    }
}

pub(crate) fn truncate(s: &str) -> String {
    s.chars().take(48).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_bits_and_text_round_trip() {
        let key = NotificationKey::from_random_bytes([0xff; 16]);
        let text = key.to_string();
        assert_eq!(text, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(text.parse::<NotificationKey>(), Ok(key));
    }

    #[test]
    fn the_text_is_the_hyphenated_hex_of_every_byte() {
        let bytes: [u8; 16] = std::array::from_fn(|i| (i as u8) * 17);
        let key = NotificationKey::from_random_bytes(bytes);
        let expected = {
            let b = key.as_bytes();
            let hex = |r: std::ops::Range<usize>| {
                b[r].iter().map(|x| format!("{x:02x}")).collect::<String>()
            };
            format!(
                "{}-{}-{}-{}-{}",
                hex(0..4),
                hex(4..6),
                hex(6..8),
                hex(8..10),
                hex(10..16)
            )
        };
        assert_eq!(key.to_string(), expected);
        assert_eq!(key.completion_message(), expected.as_bytes());
        assert_eq!(
            key.cancel_message(),
            format!("{expected}{CANCEL_SUFFIX}").into_bytes()
        );
    }

    #[test]
    fn a_pool_reads_one_page_per_keys_per_page_keys() {
        let mut pool = KeyPool::new();
        let mut pages = 0u8;
        let mut keys = std::collections::HashSet::new();
        for _ in 0..KeyPool::KEYS_PER_PAGE * 2 + 1 {
            let key = pool
                .next(|page| {
                    pages += 1;
                    // Distinct bytes per key of every page, so a reused slice would show.
                    for (i, chunk) in page.chunks_mut(16).enumerate() {
                        chunk.fill(0);
                        chunk[..2].copy_from_slice(&(i as u16).to_le_bytes());
                        chunk[2] = pages;
                    }
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert!(keys.insert(key), "a key was handed out twice");
        }
        assert_eq!(pages, 3);
        assert_eq!(format!("{pool:?}"), "KeyPool { keys_left: 255 }");
    }

    #[test]
    fn a_failed_refill_leaves_the_pool_empty() {
        let mut pool = KeyPool::new();
        assert_eq!(pool.next(|_| Err("no entropy")), Err("no entropy"));
        assert_eq!(format!("{pool:?}"), "KeyPool { keys_left: 0 }");
        assert!(pool.next(|_| Ok::<(), ()>(())).is_ok());
    }

    #[test]
    fn parses_notifications() {
        let key: NotificationKey = "1b4e28ba-2fa1-41d2-883f-0016d3cca427".parse().unwrap();
        assert_eq!(
            Notification::parse(&key.completion_message()),
            Some(Notification::Complete(key))
        );
        assert_eq!(
            Notification::parse(&key.cancel_message()),
            Some(Notification::Cancel(key))
        );
        assert_eq!(Notification::parse(b"hello"), None);
        assert_eq!(Notification::parse(&[0xff, 0xfe]), None);
    }

    #[test]
    fn rejects_malformed_keys() {
        for text in [
            "",
            "1b4e28ba2fa141d2883f0016d3cca427",
            "1b4e28ba-2fa1-41d2-883f-0016d3cca42g",
            "1b4e28ba-2fa1-41d2-883f_0016d3cca427",
            "1b4e28ba-2fa1-41d2-883f-0016d3cca4270",
            "é4e28ba-2fa1-41d2-883f-0016d3cca427",
        ] {
            assert!(text.parse::<NotificationKey>().is_err(), "{text}");
        }
    }
}
