//! The wire format: frames, their bodies and the error codes. Sans-IO: everything here turns
//! bytes into values and back, with every length checked before anything is allocated.

use std::fmt;

use ferry_core::NotificationKey;

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;

/// The magic that opens a `HELLO` body.
pub const MAGIC: [u8; 8] = *b"FERRYTCP";

/// The size of a frame header.
pub const HEADER_LEN: usize = 8;

/// The longest `READ` or `WRITE` body: a key, a count and 65 536 ranges.
pub const MAX_REQUEST_BODY: usize = REQUEST_FIXED + MAX_RANGES * RANGE_LEN;

/// The most ranges one request may name (the metadata's descriptor bound).
pub const MAX_RANGES: usize = 65_536;

/// The longest body of any control frame other than a request (`HELLO`, `NOTIFY`, `ERROR`).
pub const MAX_CONTROL_BODY: usize = 1024;

/// The longest `DATA` payload a peer may send in one frame.
pub const MAX_DATA_BODY: usize = 16 << 20;

const REQUEST_FIXED: usize = 16 + 4;
const RANGE_LEN: usize = 4 + 8 + 8;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// Opens a connection, both ways: magic and version.
    Hello = 1,
    /// Asks to pull ranges of a readable.
    Read = 2,
    /// Announces ranges of a writable, followed by `DATA` frames carrying them.
    Write = 3,
    /// Bytes of the transfer in progress on this connection.
    Data = 4,
    /// The server has sent every byte a `READ` asked for.
    Done = 5,
    /// The server has landed every byte a `WRITE` carried.
    Ack = 6,
    /// A notification message: the key's text (completion) or the key's text + `:cancel`.
    Notify = 7,
    /// A refusal or failure, with a code.
    Error = 8,
}

impl FrameType {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => FrameType::Hello,
            2 => FrameType::Read,
            3 => FrameType::Write,
            4 => FrameType::Data,
            5 => FrameType::Done,
            6 => FrameType::Ack,
            7 => FrameType::Notify,
            8 => FrameType::Error,
            _ => return None,
        })
    }

    /// The longest body a frame of this type may carry.
    pub fn max_body(self) -> usize {
        match self {
            FrameType::Read | FrameType::Write => MAX_REQUEST_BODY,
            FrameType::Data => MAX_DATA_BODY,
            FrameType::Done | FrameType::Ack => 0,
            FrameType::Hello | FrameType::Notify | FrameType::Error => MAX_CONTROL_BODY,
        }
    }
}

/// A decoded frame header: `[type u8][flags u8 = 0][reserved u16 = 0][body length u32 LE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's type.
    pub frame: FrameType,
    /// The length of the body that follows.
    pub len: usize,
}

impl Header {
    /// A header for a body of `len` bytes.
    pub fn new(frame: FrameType, len: usize) -> Self {
        Header { frame, len }
    }

    /// Encodes the header. `len` must fit in 32 bits (every body this crate sends does).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.frame as u8;
        out[4..8].copy_from_slice(&(self.len as u32).to_le_bytes());
        out
    }

    /// Decodes and checks a header: known type, zero flags and reserved bits, body within the
    /// type's bound.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let frame = FrameType::from_u8(bytes[0]).ok_or(WireError::UnknownFrame(bytes[0]))?;
        if bytes[1..4] != [0, 0, 0] {
            return Err(WireError::ReservedBits);
        }
        let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        if len > frame.max_body() {
            return Err(WireError::Oversized {
                frame,
                len,
                max: frame.max_body(),
            });
        }
        Ok(Header { frame, len })
    }
}

/// Why bytes from a peer are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The type byte names no frame.
    UnknownFrame(u8),
    /// Flags or reserved bits are set.
    ReservedBits,
    /// The body is longer than its type allows.
    Oversized {
        /// The frame type.
        frame: FrameType,
        /// The claimed length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The body does not have the layout its type needs.
    Malformed(&'static str),
    /// The peer speaks another protocol or version.
    Version(u16),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnknownFrame(t) => write!(f, "unknown frame type {t}"),
            WireError::ReservedBits => f.write_str("reserved header bits set"),
            WireError::Oversized { frame, len, max } => {
                write!(f, "{frame:?} frame of {len} bytes (at most {max})")
            }
            WireError::Malformed(what) => write!(f, "malformed frame: {what}"),
            WireError::Version(v) => write!(f, "unsupported protocol version {v}"),
        }
    }
}

/// One range of a request: bytes `offset .. offset + len` of the passive operation's
/// descriptor `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRange {
    /// The descriptor's index in the passive operation.
    pub index: u32,
    /// Where the range starts inside it.
    pub offset: u64,
    /// Its length.
    pub len: u64,
}

/// A `READ` or `WRITE` body: the passive operation's key and the ranges, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The passive operation's notification key.
    pub key: NotificationKey,
    /// The ranges, in the order their bytes travel.
    pub ranges: Vec<WireRange>,
}

impl Request {
    /// Encodes the body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_FIXED + self.ranges.len() * RANGE_LEN);
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        for r in &self.ranges {
            out.extend_from_slice(&r.index.to_le_bytes());
            out.extend_from_slice(&r.offset.to_le_bytes());
            out.extend_from_slice(&r.len.to_le_bytes());
        }
        out
    }

    /// Decodes a body. Checks only the layout; whether the ranges are allowed is the
    /// server's question.
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        if body.len() < REQUEST_FIXED {
            return Err(WireError::Malformed("request shorter than its fixed part"));
        }
        let (key, rest) = body.split_at(16);
        let (count, rest) = rest.split_at(4);
        let count = u32::from_le_bytes([count[0], count[1], count[2], count[3]]) as usize;
        if count > MAX_RANGES {
            return Err(WireError::Malformed("more ranges than allowed"));
        }
        if rest.len() != count * RANGE_LEN {
            return Err(WireError::Malformed("range count and body length disagree"));
        }
        let mut key_bytes = [0u8; 16];
        key_bytes.copy_from_slice(key);
        let key = NotificationKey::from_bytes(key_bytes)
            .ok_or(WireError::Malformed("the key is not a UUIDv4"))?;
        let ranges = rest
            .chunks_exact(RANGE_LEN)
            .map(|c| WireRange {
                index: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                offset: u64::from_le_bytes([c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]]),
                len: u64::from_le_bytes([c[12], c[13], c[14], c[15], c[16], c[17], c[18], c[19]]),
            })
            .collect();
        Ok(Request { key, ranges })
    }
}

/// Error codes carried by `ERROR` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// No live operation has this key (finished, cancelled, expired or never existed).
    UnknownKey = 1,
    /// The key names an operation of the other kind (a `READ` for a writable).
    WrongKind = 2,
    /// A range lies outside the operation's descriptors, or its end overflows.
    OutOfBounds = 3,
    /// The frame could not be parsed.
    Malformed = 4,
    /// The frame is longer than its type allows.
    Oversized = 5,
    /// The operation's owner ended it while this request was being served.
    Revoked = 6,
    /// The request's operation was cancelled by the requester.
    Cancelled = 7,
    /// The peer does not speak this protocol version.
    Version = 8,
    /// The peer has too many connections open.
    Busy = 9,
}

impl ErrorCode {
    /// The code for a number, if it names one.
    pub fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1 => ErrorCode::UnknownKey,
            2 => ErrorCode::WrongKind,
            3 => ErrorCode::OutOfBounds,
            4 => ErrorCode::Malformed,
            5 => ErrorCode::Oversized,
            6 => ErrorCode::Revoked,
            7 => ErrorCode::Cancelled,
            8 => ErrorCode::Version,
            9 => ErrorCode::Busy,
            _ => return None,
        })
    }
}

/// An `ERROR` frame, whole: header and body (`code u16 LE` then a UTF-8 message).
pub fn error_frame(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut message = message.as_bytes();
    message = &message[..message.len().min(MAX_CONTROL_BODY - 2)];
    let mut out = Header::new(FrameType::Error, 2 + message.len())
        .encode()
        .to_vec();
    out.extend_from_slice(&(code as u16).to_le_bytes());
    out.extend_from_slice(message);
    out
}

/// Decodes an `ERROR` body into its raw code and message.
pub fn decode_error(body: &[u8]) -> (u16, String) {
    if body.len() < 2 {
        return (0, "empty error frame".into());
    }
    let code = u16::from_le_bytes([body[0], body[1]]);
    (code, String::from_utf8_lossy(&body[2..]).into_owned())
}

/// A `HELLO` frame, whole.
pub fn hello_frame() -> Vec<u8> {
    let mut out = Header::new(FrameType::Hello, 12).encode().to_vec();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Checks a `HELLO` body.
pub fn check_hello(body: &[u8]) -> Result<(), WireError> {
    if body.len() != 12 || body[..8] != MAGIC {
        return Err(WireError::Malformed("HELLO without ferry's magic"));
    }
    let version = u16::from_le_bytes([body[8], body[9]]);
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    // Reserved, and zero in version 1: a later version may give it a meaning this one must
    // not ignore.
    if body[10..] != [0, 0] {
        return Err(WireError::Malformed("HELLO with reserved bits set"));
    }
    Ok(())
}

/// A bodiless frame (`DONE`, `ACK`), whole.
pub fn empty_frame(frame: FrameType) -> [u8; HEADER_LEN] {
    Header::new(frame, 0).encode()
}

/// A `NOTIFY` frame carrying `message`, whole.
pub fn notify_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Header::new(FrameType::Notify, message.len())
        .encode()
        .to_vec();
    out.extend_from_slice(message);
    out
}

/// A request frame (`READ` or `WRITE`), whole.
pub fn request_frame(frame: FrameType, request: &Request) -> Vec<u8> {
    let body = request.encode();
    let mut out = Header::new(frame, body.len()).encode().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trip() {
        let request = Request {
            key: NotificationKey::from_random_bytes([7; 16]),
            ranges: vec![
                WireRange {
                    index: 0,
                    offset: 0,
                    len: 4096,
                },
                WireRange {
                    index: 3,
                    offset: u64::MAX,
                    len: 1,
                },
            ],
        };
        assert_eq!(Request::decode(&request.encode()), Ok(request));
    }

    #[test]
    fn headers_are_checked() {
        let mut bytes = Header::new(FrameType::Data, 10).encode();
        assert!(Header::decode(&bytes).is_ok());
        bytes[1] = 1;
        assert_eq!(Header::decode(&bytes), Err(WireError::ReservedBits));
        let bytes = Header::new(FrameType::Ack, 1).encode();
        assert!(matches!(
            Header::decode(&bytes),
            Err(WireError::Oversized { .. })
        ));
        assert_eq!(
            Header::decode(&[0xff, 0, 0, 0, 0, 0, 0, 0]),
            Err(WireError::UnknownFrame(0xff))
        );
    }

    #[test]
    fn hello_checks_magic_and_version() {
        let frame = hello_frame();
        assert_eq!(check_hello(&frame[HEADER_LEN..]), Ok(()));
        let mut other = frame[HEADER_LEN..].to_vec();
        other[8] = 9;
        assert_eq!(check_hello(&other), Err(WireError::Version(9)));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes);
            let _ = check_hello(&bytes);
            let _ = decode_error(&bytes);
            if bytes.len() >= HEADER_LEN {
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&bytes[..HEADER_LEN]);
                if let Ok(header) = Header::decode(&h) {
                    prop_assert!(header.len <= header.frame.max_body());
                }
            }
        }
    }
}
