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
        self.to_string().into_bytes()
    }

    /// The cancellation notification: the key's text followed by [`CANCEL_SUFFIX`].
    pub fn cancel_message(&self) -> Vec<u8> {
        format!("{self}{CANCEL_SUFFIX}").into_bytes()
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
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
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
