//! The pipe protocol between a [`ProcessHarness`](super::ProcessHarness) and the backend host
//! it spawns: length-prefixed binary frames, commands one way and replies the other.
//!
//! ```text
//! frame   = len:u32 LE | tag:u8 | body          (len counts tag and body)
//! buffers = count:u32 | (len:u64 | filled:u8 | bytes if filled)*
//! error   = code:u8 | side:u8 | text             (see encode_error)
//! ```
//!
//! Both ends are this crate's own code, so a malformed frame is a bug: it is reported as an
//! `io::Error` and the link is dropped.

use std::io::{self, Read, Write};
use std::time::Duration;

use ferry::core::state::Event;
use ferry::{Capabilities, DeviceKind, Error, NotificationKey, OperationKind, Side};

/// The largest frame either end accepts (a whole conformance transfer fits well inside).
pub const MAX_FRAME: usize = 1 << 30;

/// What the harness asks of the host. `op` numbers one transfer; `req` one question.
#[derive(Debug)]
pub enum Command {
    /// Expose `buffers` under `key` (SPEC §8 `expose`); the host replies `Exposed`.
    Expose {
        /// The transfer.
        op: u64,
        /// Readable (`Read`) or writable.
        kind: OperationKind,
        /// The operation's key.
        key: NotificationKey,
        /// The operation's deadline.
        deadline: Option<Duration>,
        /// The memory, filled where its bytes matter.
        buffers: Vec<Buffer>,
    },
    /// Connect to the peer an endpoint blob names; the host replies `Connected`.
    Connect {
        /// The question.
        req: u64,
        /// The endpoint blob, as text.
        endpoint: String,
    },
    /// Post a read or a write to a connected peer; the host replies `Posted`.
    Post {
        /// The transfer.
        op: u64,
        /// The peer, as `Connected` numbered it.
        peer: u64,
        /// Read or write.
        kind: OperationKind,
        /// The remote metadata, as JSON.
        metadata: String,
        /// The operation's deadline.
        deadline: Option<Duration>,
        /// The local memory, filled where its bytes matter.
        buffers: Vec<Buffer>,
    },
    /// Cancel a transfer; the host replies `CancelResult`.
    Cancel {
        /// The transfer.
        op: u64,
    },
    /// Drop a transfer without waiting.
    Drop {
        /// The transfer.
        op: u64,
    },
    /// Ask what the host's backend still holds; it replies `Live`.
    Live {
        /// The question.
        req: u64,
    },
}

/// One descriptor's memory as it crosses the pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buffer {
    /// Bytes that matter (a readable's, a write's source).
    Filled(Vec<u8>),
    /// Only the length matters (memory the transfer will overwrite).
    Sized(u64),
}

/// What a cancel found.
#[derive(Debug)]
pub enum CancelOutcome {
    /// The transfer had already sent its terminal event.
    Ended,
    /// The backend's `cancel` returned this, with the landed bytes for a `Completed`.
    Cancelled(Option<Event>, Option<Vec<Vec<u8>>>),
}

/// What the host tells the harness.
#[derive(Debug)]
pub enum Reply {
    /// An `Expose` finished: the endpoint blob and where the host's copy of each descriptor
    /// lives, or why not.
    Exposed {
        /// The transfer.
        op: u64,
        /// The endpoint blob's text, and each descriptor's address in the host.
        result: Result<(String, Vec<u64>), Error>,
    },
    /// A `Connect` finished: the peer's number.
    Connected {
        /// The question.
        req: u64,
        /// The peer's number.
        result: Result<u64, Error>,
    },
    /// A `Post` finished.
    Posted {
        /// The transfer.
        op: u64,
        /// Whether it was posted.
        result: Result<(), Error>,
    },
    /// A transfer's event; a `Completed` that landed bytes carries them.
    Event {
        /// The transfer.
        op: u64,
        /// The event.
        event: Event,
        /// Every descriptor's bytes, for a completed read or writable.
        landed: Option<Vec<Vec<u8>>>,
    },
    /// A `Cancel` finished.
    CancelResult {
        /// The transfer.
        op: u64,
        /// What it found.
        outcome: CancelOutcome,
    },
    /// A `Live` answer.
    Live {
        /// The question.
        req: u64,
        /// Transfers the backend holds.
        operations: u64,
        /// Keys it still accepts.
        keys: u64,
    },
    /// The host's first frame, unasked: its backend started, with these capabilities, or why
    /// it could not.
    Ready {
        /// The backend's capabilities as the host sees them.
        result: Result<Capabilities, Error>,
    },
}

/// The `&'static str` a backend's name maps to, for names that cross the pipe.
fn backend_name(name: &str) -> &'static str {
    match name {
        "sim" => "sim",
        "tcp" => "tcp",
        "ucx" => "ucx",
        "nixl" => "nixl",
        _ => "remote",
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {what}"))
}

#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    fn text(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    fn kind(&mut self, kind: OperationKind) -> &mut Self {
        self.u8(kind as u8)
    }
    fn deadline(&mut self, deadline: Option<Duration>) -> &mut Self {
        match deadline {
            None => self.u8(0),
            Some(d) => self.u8(1).u64(d.as_nanos().min(u64::MAX as u128) as u64),
        }
    }
    fn buffers(&mut self, buffers: &[Buffer]) -> &mut Self {
        self.u64(buffers.len() as u64);
        for buffer in buffers {
            match buffer {
                Buffer::Filled(bytes) => self.u8(1).bytes(bytes),
                Buffer::Sized(len) => self.u8(0).u64(*len),
            };
        }
        self
    }
    fn landed(&mut self, landed: &Option<Vec<Vec<u8>>>) -> &mut Self {
        match landed {
            None => self.u8(0),
            Some(all) => {
                self.u8(1).u64(all.len() as u64);
                for bytes in all {
                    self.bytes(bytes);
                }
                self
            }
        }
    }
    fn error(&mut self, error: &Error) -> &mut Self {
        let side = |s: &Side| match s {
            Side::Local => 0,
            Side::Remote => 1,
        };
        match error {
            Error::StaleMetadata => self.u8(1).u8(0).text(""),
            Error::PeerLost { reason } => self.u8(2).u8(0).text(reason),
            Error::AccessDenied { side: s, reason } => self.u8(3).u8(side(s)).text(reason),
            Error::Cancelled { by } => self.u8(4).u8(side(by)).text(""),
            Error::Timeout => self.u8(5).u8(0).text(""),
            Error::DeadlineExceeded => self.u8(6).u8(0).text(""),
            Error::InvalidMetadata { reason } => self.u8(7).u8(0).text(reason),
            Error::Backend {
                backend,
                side: s,
                code,
                message,
            } => self
                .u8(8)
                .u8(side(s))
                .text(backend)
                .u64(*code as u64)
                .text(message),
            Error::BackendUnavailable { backend, reason } => {
                self.u8(9).u8(0).text(backend).text(reason)
            }
            // Caller errors are raised by the facade before a backend is called; anything
            // else travels as a backend error carrying its text.
            other => self
                .u8(8)
                .u8(0)
                .text("remote")
                .u64(u64::MAX)
                .text(&other.to_string()),
        }
    }
    fn capabilities(&mut self, c: &Capabilities) -> &mut Self {
        self.text(c.backend);
        for kinds in [&c.devices, &c.remote_devices] {
            self.u64(kinds.len() as u64);
            for device in kinds {
                self.u8(match device {
                    DeviceKind::Host => 0,
                    DeviceKind::Cuda => 1,
                });
            }
        }
        for flag in [
            c.passive_observes_start,
            c.passive_observes_peer_loss,
            c.enforces_revocation,
            c.cross_host,
            c.progress_needs_polling,
        ] {
            self.u8(flag as u8);
        }
        self
    }
    fn event(&mut self, event: &Event) -> &mut Self {
        match event {
            Event::PeerStarted => self.u8(1),
            Event::Completed => self.u8(2),
            Event::PeerCancelled => self.u8(3),
            Event::Failed(error) => self.u8(4).error(error),
            // A backend's transfer returns only the four above (SPEC §8).
            other => self.u8(4).error(&Error::PeerLost {
                reason: format!("a transfer returned {other:?}"),
            }),
        }
    }
}

struct In<'a>(&'a [u8]);

impl In<'_> {
    fn take(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> io::Result<u64> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().map_err(|_| bad("u64"))?,
        ))
    }
    fn len(&mut self) -> io::Result<usize> {
        let len = self.u64()? as usize;
        if len > MAX_FRAME {
            return Err(bad("length"));
        }
        Ok(len)
    }
    fn bytes(&mut self) -> io::Result<Vec<u8>> {
        let len = self.len()?;
        Ok(self.take(len)?.to_vec())
    }
    fn text(&mut self) -> io::Result<String> {
        String::from_utf8(self.bytes()?).map_err(|_| bad("utf-8"))
    }
    fn kind(&mut self) -> io::Result<OperationKind> {
        match self.u8()? {
            1 => Ok(OperationKind::Read),
            2 => Ok(OperationKind::Write),
            _ => Err(bad("kind")),
        }
    }
    fn key(&mut self) -> io::Result<NotificationKey> {
        let bytes: [u8; 16] = self.take(16)?.try_into().map_err(|_| bad("key"))?;
        NotificationKey::from_bytes(bytes).ok_or_else(|| bad("key"))
    }
    fn deadline(&mut self) -> io::Result<Option<Duration>> {
        Ok(match self.u8()? {
            0 => None,
            _ => Some(Duration::from_nanos(self.u64()?)),
        })
    }
    fn buffers(&mut self) -> io::Result<Vec<Buffer>> {
        let count = self.len()?;
        let mut buffers = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            buffers.push(match self.u8()? {
                0 => Buffer::Sized(self.u64()?),
                _ => Buffer::Filled(self.bytes()?),
            });
        }
        Ok(buffers)
    }
    fn landed(&mut self) -> io::Result<Option<Vec<Vec<u8>>>> {
        if self.u8()? == 0 {
            return Ok(None);
        }
        let count = self.len()?;
        let mut all = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            all.push(self.bytes()?);
        }
        Ok(Some(all))
    }
    fn error(&mut self) -> io::Result<Error> {
        let code = self.u8()?;
        let side = match self.u8()? {
            0 => Side::Local,
            _ => Side::Remote,
        };
        Ok(match code {
            1 => {
                self.text()?;
                Error::StaleMetadata
            }
            2 => Error::PeerLost {
                reason: self.text()?,
            },
            3 => Error::AccessDenied {
                side,
                reason: self.text()?,
            },
            4 => {
                self.text()?;
                Error::Cancelled { by: side }
            }
            5 => {
                self.text()?;
                Error::Timeout
            }
            6 => {
                self.text()?;
                Error::DeadlineExceeded
            }
            7 => Error::InvalidMetadata {
                reason: self.text()?,
            },
            8 => Error::Backend {
                backend: backend_name(&self.text()?),
                side,
                code: self.u64()? as i64,
                message: self.text()?,
            },
            9 => Error::BackendUnavailable {
                backend: backend_name(&self.text()?),
                reason: self.text()?,
            },
            _ => return Err(bad("error code")),
        })
    }
    fn capabilities(&mut self) -> io::Result<Capabilities> {
        let backend = backend_name(&self.text()?);
        let devices = self.device_kinds()?;
        let remote_devices = self.device_kinds()?;
        let mut flag = || -> io::Result<bool> { Ok(self.u8()? != 0) };
        Ok(Capabilities {
            backend,
            devices,
            remote_devices,
            passive_observes_start: flag()?,
            passive_observes_peer_loss: flag()?,
            enforces_revocation: flag()?,
            cross_host: flag()?,
            progress_needs_polling: flag()?,
        })
    }
    fn device_kinds(&mut self) -> io::Result<Vec<DeviceKind>> {
        let count = self.len()?;
        let mut kinds = Vec::with_capacity(count.min(4));
        for _ in 0..count {
            kinds.push(match self.u8()? {
                0 => DeviceKind::Host,
                1 => DeviceKind::Cuda,
                _ => return Err(bad("device kind")),
            });
        }
        Ok(kinds)
    }
    fn event(&mut self) -> io::Result<Event> {
        Ok(match self.u8()? {
            1 => Event::PeerStarted,
            2 => Event::Completed,
            3 => Event::PeerCancelled,
            4 => Event::Failed(self.error()?),
            _ => return Err(bad("event")),
        })
    }
    fn result<T>(
        &mut self,
        ok: impl FnOnce(&mut Self) -> io::Result<T>,
    ) -> io::Result<Result<T, Error>> {
        Ok(match self.u8()? {
            0 => Ok(ok(self)?),
            _ => Err(self.error()?),
        })
    }
}

fn result<T>(out: &mut Out, result: &Result<T, Error>, ok: impl FnOnce(&mut Out, &T)) {
    match result {
        Ok(v) => {
            out.u8(0);
            ok(out, v);
        }
        Err(e) => {
            out.u8(1).error(e);
        }
    }
}

fn frame(tag: u8, out: Out) -> Vec<u8> {
    let mut framed = Vec::with_capacity(out.0.len() + 5);
    framed.extend_from_slice(&((out.0.len() + 1) as u32).to_le_bytes());
    framed.push(tag);
    framed.extend_from_slice(&out.0);
    framed
}

impl Command {
    /// The command as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        let tag = match self {
            Command::Expose {
                op,
                kind,
                key,
                deadline,
                buffers,
            } => {
                out.u64(*op).kind(*kind);
                out.0.extend_from_slice(key.as_bytes());
                out.deadline(*deadline).buffers(buffers);
                1
            }
            Command::Connect { req, endpoint } => {
                out.u64(*req).text(endpoint);
                2
            }
            Command::Post {
                op,
                peer,
                kind,
                metadata,
                deadline,
                buffers,
            } => {
                out.u64(*op)
                    .u64(*peer)
                    .kind(*kind)
                    .text(metadata)
                    .deadline(*deadline)
                    .buffers(buffers);
                3
            }
            Command::Cancel { op } => {
                out.u64(*op);
                4
            }
            Command::Drop { op } => {
                out.u64(*op);
                5
            }
            Command::Live { req } => {
                out.u64(*req);
                6
            }
        };
        frame(tag, out)
    }

    /// Decodes a frame's tag and body.
    pub fn decode(tag: u8, body: &[u8]) -> io::Result<Command> {
        let mut i = In(body);
        Ok(match tag {
            1 => Command::Expose {
                op: i.u64()?,
                kind: i.kind()?,
                key: i.key()?,
                deadline: i.deadline()?,
                buffers: i.buffers()?,
            },
            2 => Command::Connect {
                req: i.u64()?,
                endpoint: i.text()?,
            },
            3 => Command::Post {
                op: i.u64()?,
                peer: i.u64()?,
                kind: i.kind()?,
                metadata: i.text()?,
                deadline: i.deadline()?,
                buffers: i.buffers()?,
            },
            4 => Command::Cancel { op: i.u64()? },
            5 => Command::Drop { op: i.u64()? },
            6 => Command::Live { req: i.u64()? },
            _ => return Err(bad("command tag")),
        })
    }
}

impl Reply {
    /// The reply as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::default();
        let tag = match self {
            Reply::Exposed { op, result: r } => {
                out.u64(*op);
                result(&mut out, r, |o, (blob, addrs)| {
                    o.text(blob).u64(addrs.len() as u64);
                    addrs.iter().for_each(|a| {
                        o.u64(*a);
                    });
                });
                1
            }
            Reply::Connected { req, result: r } => {
                out.u64(*req);
                result(&mut out, r, |o, peer| {
                    o.u64(*peer);
                });
                2
            }
            Reply::Posted { op, result: r } => {
                out.u64(*op);
                result(&mut out, r, |_, _| {});
                3
            }
            Reply::Event { op, event, landed } => {
                out.u64(*op).event(event).landed(landed);
                4
            }
            Reply::CancelResult { op, outcome } => {
                out.u64(*op);
                match outcome {
                    CancelOutcome::Ended => {
                        out.u8(0);
                    }
                    CancelOutcome::Cancelled(None, _) => {
                        out.u8(1);
                    }
                    CancelOutcome::Cancelled(Some(event), landed) => {
                        out.u8(2).event(event).landed(landed);
                    }
                }
                5
            }
            Reply::Live {
                req,
                operations,
                keys,
            } => {
                out.u64(*req).u64(*operations).u64(*keys);
                6
            }
            Reply::Ready { result: r } => {
                result(&mut out, r, |o, capabilities| {
                    o.capabilities(capabilities);
                });
                7
            }
        };
        frame(tag, out)
    }

    /// Decodes a frame's tag and body.
    pub fn decode(tag: u8, body: &[u8]) -> io::Result<Reply> {
        let mut i = In(body);
        Ok(match tag {
            1 => Reply::Exposed {
                op: i.u64()?,
                result: i.result(|i| {
                    let blob = i.text()?;
                    let count = i.len()?;
                    let mut addrs = Vec::with_capacity(count.min(4096));
                    for _ in 0..count {
                        addrs.push(i.u64()?);
                    }
                    Ok((blob, addrs))
                })?,
            },
            2 => Reply::Connected {
                req: i.u64()?,
                result: i.result(In::u64)?,
            },
            3 => Reply::Posted {
                op: i.u64()?,
                result: i.result(|_| Ok(()))?,
            },
            4 => Reply::Event {
                op: i.u64()?,
                event: i.event()?,
                landed: i.landed()?,
            },
            5 => Reply::CancelResult {
                op: i.u64()?,
                outcome: match i.u8()? {
                    0 => CancelOutcome::Ended,
                    1 => CancelOutcome::Cancelled(None, None),
                    _ => CancelOutcome::Cancelled(Some(i.event()?), i.landed()?),
                },
            },
            6 => Reply::Live {
                req: i.u64()?,
                operations: i.u64()?,
                keys: i.u64()?,
            },
            7 => Reply::Ready {
                result: i.result(In::capabilities)?,
            },
            _ => return Err(bad("reply tag")),
        })
    }
}

/// Reads one frame: its tag and body. `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(bad("frame length"));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let tag = body.remove(0);
    Ok(Some((tag, body)))
}

/// Writes one encoded frame and flushes.
pub fn write_frame(writer: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    writer.write_all(frame)?;
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies_round_trip() {
        let key = NotificationKey::from_random_bytes([7; 16]);
        let command = Command::Post {
            op: 3,
            peer: 1,
            kind: OperationKind::Write,
            metadata: "{}".into(),
            deadline: Some(Duration::from_millis(250)),
            buffers: vec![Buffer::Filled(vec![1, 2, 3]), Buffer::Sized(9)],
        };
        let framed = command.encode();
        let (tag, body) = read_frame(&mut &framed[..]).unwrap().unwrap();
        let back = Command::decode(tag, &body).unwrap();
        assert_eq!(format!("{back:?}"), format!("{command:?}"));
        let expose = Command::Expose {
            op: 1,
            kind: OperationKind::Read,
            key,
            deadline: None,
            buffers: vec![],
        };
        let framed = expose.encode();
        let (tag, body) = read_frame(&mut &framed[..]).unwrap().unwrap();
        assert_eq!(
            format!("{:?}", Command::decode(tag, &body).unwrap()),
            format!("{expose:?}")
        );

        let replies = [
            Reply::Event {
                op: 2,
                event: Event::Failed(Error::AccessDenied {
                    side: Side::Remote,
                    reason: "out of bounds".into(),
                }),
                landed: None,
            },
            Reply::CancelResult {
                op: 2,
                outcome: CancelOutcome::Cancelled(Some(Event::Completed), Some(vec![vec![5; 4]])),
            },
            Reply::Connected {
                req: 4,
                result: Err(Error::PeerLost {
                    reason: "gone".into(),
                }),
            },
            Reply::Posted {
                op: 5,
                result: Err(Error::Backend {
                    backend: "nixl",
                    side: Side::Local,
                    code: -3,
                    message: "NIXL_ERR_BACKEND".into(),
                }),
            },
            Reply::Exposed {
                op: 6,
                result: Ok(("b64:eJw=".into(), vec![0x7f00_0000_1000, 0x7f00_0000_2000])),
            },
            Reply::Ready {
                result: Ok(Capabilities {
                    backend: "nixl",
                    devices: vec![DeviceKind::Host, DeviceKind::Cuda],
                    remote_devices: vec![DeviceKind::Host],
                    passive_observes_start: false,
                    passive_observes_peer_loss: true,
                    enforces_revocation: false,
                    cross_host: true,
                    progress_needs_polling: false,
                }),
            },
            Reply::Ready {
                result: Err(Error::BackendUnavailable {
                    backend: "nixl",
                    reason: "no libnixl_capi.so".into(),
                }),
            },
        ];
        for reply in replies {
            let framed = reply.encode();
            let (tag, body) = read_frame(&mut &framed[..]).unwrap().unwrap();
            assert_eq!(
                format!("{:?}", Reply::decode(tag, &body).unwrap()),
                format!("{reply:?}")
            );
        }
    }

    #[test]
    fn truncated_frames_are_errors() {
        let framed = Command::Live { req: 1 }.encode();
        assert!(read_frame(&mut &framed[..framed.len() - 1]).is_err());
        assert!(Command::decode(6, &[1, 2]).is_err());
        assert!(Reply::decode(99, &[]).is_err());
    }
}
