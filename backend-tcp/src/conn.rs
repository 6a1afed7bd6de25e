//! A connection: a TCP stream with a small read-ahead buffer, registered so that the
//! Connector can close every socket it owns at once; and the two movers that stream `DATA`
//! frames straight between a socket and an operation's descriptors.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ferry_core::{Descriptor, Error};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

#[cfg(feature = "cuda")]
use crate::staging::{self, Inbound, Outbound};
use crate::wire::{self, FrameType, Header, WireError, HEADER_LEN};

/// The read-ahead buffer. Reads at least this large go straight into the destination.
const READ_AHEAD: usize = 64 << 10;
const DIRECT_READ: usize = 16 << 10;
const MAX_SLICES: usize = 64;

/// Every socket a Connector owns, so that it can shut them all down at once (a dropped or
/// aborted Connector closes its connections; peers see the close at once).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sockets: Mutex<HashMap<u64, std::net::TcpStream>>,
    next: AtomicU64,
    closed: AtomicBool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::TcpStream>> {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes ownership of a fresh stream: keeps a duplicate of its socket for shutdown.
    pub(crate) fn adopt(self: &Arc<Self>, stream: TcpStream) -> io::Result<Conn> {
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the Connector is closed",
            ));
        }
        stream.set_nodelay(true)?;
        let std = stream.into_std()?;
        let dup = std.try_clone()?;
        let stream = TcpStream::from_std(std)?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, dup);
        Ok(Conn {
            stream,
            buf: vec![0u8; READ_AHEAD].into_boxed_slice(),
            start: 0,
            end: 0,
            entry: Entry {
                id,
                registry: self.clone(),
            },
            slot: None,
        })
    }

    /// Shuts down every socket, now and for any adopted later.
    pub(crate) fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        for socket in self.lock().values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether [`Registry::close_all`] has run.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Open sockets.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// How many connections this side may hold to one peer at once, dialling, busy and idle
/// together. A transfer that finds them all busy waits, in its own polls, for one to come
/// back ([`Budget::freed`]) rather than dialling more, so ten thousand operations in flight
/// use a bounded number of sockets. The cap is soft: a transfer that has waited
/// `TcpConfig::queue_patience` without any connection coming back dials anyway
/// ([`Budget::take_over_cap`]), because the busy connections belong to operations whose owners
/// may not be polling them (bytes move in the owners' polls), and waiting on those could wait
/// for ever. While connections keep coming back, it keeps waiting.
#[derive(Debug)]
pub(crate) struct Budget {
    open: AtomicUsize,
    cap: usize,
    /// Counts connections coming back or closing: waiters see from it whether the holders
    /// are making progress at all.
    returns: AtomicU64,
    /// Woken when a connection goes back to the idle pool or closes.
    pub(crate) freed: tokio::sync::Notify,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Budget {
            open: AtomicUsize::new(0),
            cap: cap.max(1),
            returns: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// A place for one more connection, if the cap allows.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.cap).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Records a connection coming back to the idle pool and wakes a waiter.
    pub(crate) fn returned(&self) {
        self.returns.fetch_add(1, Ordering::AcqRel);
        self.freed.notify_one();
    }

    /// How many connections have come back or closed so far.
    pub(crate) fn returns(&self) -> u64 {
        self.returns.load(Ordering::Acquire)
    }

    /// A place beyond the cap, for an operation that has waited its patience out.
    pub(crate) fn take_over_cap(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }
}

/// One connection's place in a [`Budget`], given back when the connection closes (or when
/// dialling it fails).
#[derive(Debug)]
pub(crate) struct Slot(Arc<Budget>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.returned();
    }
}

#[derive(Debug)]
struct Entry {
    id: u64,
    registry: Arc<Registry>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The socket failed.
    Io(io::Error),
    /// The peer closed; `mid_frame` if it stopped inside one.
    Closed { mid_frame: bool },
    /// The bytes are not a valid frame.
    Wire(WireError),
}

impl ReadError {
    /// As an `io::Error`, for callers that only need a reason.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            ReadError::Io(e) => e,
            ReadError::Closed { .. } => io::ErrorKind::UnexpectedEof.into(),
            ReadError::Wire(w) => io::Error::new(io::ErrorKind::InvalidData, w.to_string()),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A connection with read-ahead.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    entry: Entry,
    /// The active side's place in its peer's budget (none on the serving side).
    slot: Option<Slot>,
}

impl Conn {
    /// Dials `addr` and says hello; bounded by `timeout`. The connection holds `slot` for as
    /// long as it is open.
    pub(crate) async fn dial(
        registry: &Arc<Registry>,
        addr: SocketAddr,
        timeout: Duration,
        slot: Slot,
    ) -> io::Result<Conn> {
        let dial = async {
            let stream = TcpStream::connect(addr).await?;
            let mut conn = registry.adopt(stream)?;
            conn.slot = Some(slot);
            conn.write_all(&wire::hello_frame()).await?;
            let header = conn.read_header().await.map_err(ReadError::into_io)?;
            let body = conn
                .read_body(header.len)
                .await
                .map_err(ReadError::into_io)?;
            match header.frame {
                FrameType::Hello => wire::check_hello(&body)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
                FrameType::Error => {
                    let (code, message) = wire::decode_error(&body);
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("refused ({code}): {message}"),
                    ));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{other:?} instead of HELLO"),
                    ))
                }
            }
            Ok(conn)
        };
        tokio::time::timeout(timeout, dial)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Whether an idle pooled connection is still usable: open, and nothing unasked-for
    /// waiting on it.
    pub(crate) fn is_idle_and_open(&mut self) -> bool {
        if self.start != self.end || self.entry.registry.is_closed() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Reads the next frame header.
    pub(crate) fn poll_header(&mut self, cx: &mut Context<'_>) -> Poll<Result<Header, ReadError>> {
        while self.end - self.start < HEADER_LEN {
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ReadError::Closed {
                    mid_frame: self.end != self.start,
                }));
            }
        }
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(&self.buf[self.start..self.start + HEADER_LEN]);
        self.start += HEADER_LEN;
        Poll::Ready(Header::decode(&bytes).map_err(ReadError::Wire))
    }

    /// Reads some bytes into `dst` (at least one unless `dst` is empty); 0 means the peer
    /// closed.
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.start == self.end {
            if dst.len() >= DIRECT_READ {
                let mut read = ReadBuf::new(dst);
                ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read))?;
                return Poll::Ready(Ok(read.filled().len()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Ok(0));
            }
        }
        let n = dst.len().min(self.end - self.start);
        dst[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Poll::Ready(Ok(n))
    }

    /// Writes some of `slices`.
    pub(crate) fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, slices)
    }

    /// Waits until at least one byte of the next frame is here.
    pub(crate) async fn wait_for_frame(&mut self) -> Result<(), ReadError> {
        if self.start != self.end {
            return Ok(());
        }
        match std::future::poll_fn(|cx| self.poll_fill(cx)).await? {
            0 => Err(ReadError::Closed { mid_frame: false }),
            _ => Ok(()),
        }
    }

    /// Reads the next frame header.
    pub(crate) async fn read_header(&mut self) -> Result<Header, ReadError> {
        std::future::poll_fn(|cx| self.poll_header(cx)).await
    }

    /// Reads a body of `len` bytes (already bounded by the header's check).
    pub(crate) async fn read_body(&mut self, len: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            let n = std::future::poll_fn(|cx| self.poll_read_into(cx, &mut body[filled..])).await?;
            if n == 0 {
                return Err(ReadError::Closed { mid_frame: true });
            }
            filled += n;
        }
        Ok(body)
    }

    /// Reads and drops `len` bytes.
    pub(crate) async fn discard(&mut self, mut len: usize) -> Result<(), ReadError> {
        let mut scratch = [0u8; 4096];
        while len > 0 {
            let want = len.min(scratch.len());
            let n =
                std::future::poll_fn(|cx| self.poll_read_into(cx, &mut scratch[..want])).await?;
            if n == 0 {
                return Err(ReadError::Closed { mid_frame: true });
            }
            len -= n;
        }
        Ok(())
    }

    /// Writes all of `bytes`.
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Writes `len` zero bytes.
    pub(crate) async fn write_zeros(&mut self, mut len: usize) -> io::Result<()> {
        let zeros = [0u8; 4096];
        while len > 0 {
            let n = len.min(zeros.len());
            self.stream.write_all(&zeros[..n]).await?;
            len -= n;
        }
        Ok(())
    }
}

/// A piece of an operation's memory: bytes `offset .. offset + len` of descriptor `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) index: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

/// A position in a list of segments, read as one stream.
#[derive(Debug, Default)]
struct Cursor {
    seg: usize,
    offset: usize,
}

impl Cursor {
    fn advance(&mut self, segs: &[Seg], mut n: usize) {
        while n > 0 {
            let left = segs[self.seg].len - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.seg += 1;
            self.offset = 0;
        }
        while self.seg < segs.len() && segs[self.seg].len == self.offset {
            self.seg += 1;
            self.offset = 0;
        }
    }
}

/// Streams segments out as `DATA` frames, written straight from the descriptors (device memory
/// through staging buffers, with the `cuda` feature), with optional bytes before (a request)
/// and after (a `DONE`).
#[derive(Debug)]
pub(crate) struct Sender {
    segs: Vec<Seg>,
    total: usize,
    cursor: Cursor,
    /// Payload bytes written so far.
    #[cfg(feature = "cuda")]
    written: usize,
    #[cfg(feature = "cuda")]
    staged: Staged<Outbound>,
    unsent: usize,
    frame_left: usize,
    header: [u8; HEADER_LEN],
    header_sent: usize,
    frame_size: usize,
    prefix: Vec<u8>,
    prefix_sent: usize,
    trailer: Vec<u8>,
    trailer_sent: usize,
}

impl Sender {
    pub(crate) fn new(
        segs: Vec<Seg>,
        frame_size: usize,
        prefix: Vec<u8>,
        trailer: Vec<u8>,
    ) -> Self {
        let unsent = segs.iter().map(|s| s.len).sum();
        let mut cursor = Cursor::default();
        cursor.advance(&segs, 0);
        Sender {
            segs,
            total: unsent,
            cursor,
            #[cfg(feature = "cuda")]
            written: 0,
            #[cfg(feature = "cuda")]
            staged: Staged::Undecided,
            unsent,
            frame_left: 0,
            header: [0; HEADER_LEN],
            header_sent: HEADER_LEN,
            frame_size: frame_size.clamp(1, wire::MAX_DATA_BODY),
            prefix,
            prefix_sent: 0,
            trailer,
            trailer_sent: 0,
        }
    }

    /// Whether any of the prefix has gone out.
    pub(crate) fn prefix_sent_any(&self) -> bool {
        self.prefix_sent > 0
    }

    /// The unsent rest of the prefix.
    pub(crate) fn prefix_rest(&self) -> Vec<u8> {
        self.prefix[self.prefix_sent..].to_vec()
    }

    /// The payload's total length.
    pub(crate) fn payload_len(&self) -> usize {
        self.total
    }

    /// Whether the request prefix has gone out whole.
    pub(crate) fn prefix_sent(&self) -> bool {
        self.prefix_sent == self.prefix.len()
    }

    /// What must still go out so that the frame on the wire ends where the peer expects
    /// without touching the descriptors again: the rest of a started header, then that many
    /// zero bytes of payload. Nothing if no frame has started.
    pub(crate) fn padding(&self) -> (Vec<u8>, usize) {
        if self.header_sent == 0 {
            return (Vec::new(), 0);
        }
        (self.header[self.header_sent..].to_vec(), self.frame_left)
    }

    /// The unsent rest of the trailer, if part of it is out already (it must then be
    /// finished); `None` if none of it is out.
    pub(crate) fn trailer_started(&self) -> Option<Vec<u8>> {
        (self.trailer_sent > 0).then(|| self.trailer[self.trailer_sent..].to_vec())
    }

    /// Stops after the frame in progress: a refusal arrived, and the stream must stay framed.
    pub(crate) fn stop_after_frame(&mut self) {
        self.unsent = 0;
        if self.header_sent == 0 {
            self.header_sent = HEADER_LEN;
            self.frame_left = 0;
        }
    }

    /// Lets go of the staging buffers (a cancel: the rest of the frame goes out as zeros),
    /// after any copy in flight has finished.
    pub(crate) fn release_staging(&mut self) {
        #[cfg(feature = "cuda")]
        {
            self.staged = Staged::Direct;
        }
    }

    /// Whether every payload byte is out (the trailer may still be pending).
    pub(crate) fn payload_sent(&self) -> bool {
        self.unsent == 0 && self.frame_left == 0 && self.header_sent == HEADER_LEN
    }

    /// Drives the sending; `Ready(Ok)` when everything, trailer included, is written.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        local: &[Descriptor<'_>],
    ) -> Poll<io::Result<()>> {
        #[cfg(feature = "cuda")]
        if matches!(self.staged, Staged::Undecided) {
            self.staged = match staging::needed(&self.segs, local) {
                true => Staged::Through(Box::new(Outbound::new(&self.segs))),
                false => Staged::Direct,
            };
        }
        loop {
            if self.prefix_sent == self.prefix.len()
                && self.payload_sent()
                && self.trailer_sent == self.trailer.len()
            {
                return Poll::Ready(Ok(()));
            }
            if self.header_sent == HEADER_LEN && self.frame_left == 0 && self.unsent > 0 {
                let n = self.unsent.min(self.frame_size);
                self.header = Header::new(FrameType::Data, n).encode();
                self.header_sent = 0;
                self.frame_left = n;
                self.unsent -= n;
            }
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(8);
            if self.prefix_sent < self.prefix.len() {
                slices.push(IoSlice::new(&self.prefix[self.prefix_sent..]));
            }
            if self.header_sent < HEADER_LEN {
                slices.push(IoSlice::new(&self.header[self.header_sent..]));
            }
            let mut covered = 0;
            #[cfg(feature = "cuda")]
            let (direct, waiting) = match &mut self.staged {
                Staged::Through(outbound) if self.frame_left > 0 => {
                    match outbound.poll_bytes(cx, self.written, local) {
                        Poll::Ready(Ok(bytes)) => {
                            covered = bytes.len().min(self.frame_left);
                            slices.push(IoSlice::new(&bytes[..covered]));
                            (false, false)
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => (false, true),
                    }
                }
                Staged::Through(_) => (false, false),
                _ => (true, false),
            };
            #[cfg(not(feature = "cuda"))]
            let (direct, waiting) = (true, false);
            let mut seg = self.cursor.seg;
            let mut offset = self.cursor.offset;
            while direct
                && covered < self.frame_left
                && seg < self.segs.len()
                && slices.len() < MAX_SLICES
            {
                let s = self.segs[seg];
                let take = (s.len - offset).min(self.frame_left - covered);
                if take > 0 {
                    let Some(bytes) = local[s.index].as_slice() else {
                        return Poll::Ready(Err(not_host()));
                    };
                    let from = s.offset + offset;
                    slices.push(IoSlice::new(&bytes[from..from + take]));
                    covered += take;
                }
                seg += 1;
                offset = 0;
            }
            if covered == self.frame_left
                && self.unsent == 0
                && self.trailer_sent < self.trailer.len()
            {
                slices.push(IoSlice::new(&self.trailer[self.trailer_sent..]));
            }
            if slices.is_empty() && waiting {
                // Only staged bytes could go next, and they are still being copied: the
                // copy's event wakes this task.
                return Poll::Pending;
            }
            let mut n = ready!(conn.poll_write_vectored(cx, &slices))?;
            drop(slices);
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let take = n.min(self.prefix.len() - self.prefix_sent);
            self.prefix_sent += take;
            n -= take;
            let take = n.min(HEADER_LEN - self.header_sent);
            self.header_sent += take;
            n -= take;
            let take = n.min(self.frame_left);
            self.cursor.advance(&self.segs, take);
            self.frame_left -= take;
            #[cfg(feature = "cuda")]
            {
                self.written += take;
            }
            n -= take;
            self.trailer_sent += n;
        }
    }
}

/// What a [`Receiver`] stopped at.
#[derive(Debug)]
pub(crate) enum Received {
    /// Every expected byte has landed.
    All,
    /// A frame other than `DATA` arrived first (its header has been read, its body not).
    Frame(Header),
}

/// Lands `DATA` frames straight into segments of an operation's descriptors (device memory
/// through staging buffers, with the `cuda` feature).
#[derive(Debug)]
pub(crate) struct Receiver {
    segs: Vec<Seg>,
    total: usize,
    cursor: Cursor,
    /// Payload bytes read so far.
    #[cfg(feature = "cuda")]
    landed: usize,
    #[cfg(feature = "cuda")]
    staged: Staged<Inbound>,
    unannounced: usize,
    frame_left: usize,
}

impl Receiver {
    pub(crate) fn new(segs: Vec<Seg>) -> Self {
        let unannounced = segs.iter().map(|s| s.len).sum();
        let mut cursor = Cursor::default();
        cursor.advance(&segs, 0);
        Receiver {
            segs,
            total: unannounced,
            cursor,
            #[cfg(feature = "cuda")]
            landed: 0,
            #[cfg(feature = "cuda")]
            staged: Staged::Undecided,
            unannounced,
            frame_left: 0,
        }
    }

    /// The payload's total length.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Bytes of the current `DATA` frame not yet read (a cancel discards them).
    pub(crate) fn frame_left(&self) -> usize {
        self.frame_left
    }

    /// Drives the receiving.
    pub(crate) fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        local: &mut [Descriptor<'_>],
    ) -> Poll<Result<Received, ReadError>> {
        #[cfg(feature = "cuda")]
        if matches!(self.staged, Staged::Undecided) {
            self.staged = match staging::needed(&self.segs, local) {
                true => Staged::Through(Box::new(Inbound::new(&self.segs))),
                false => Staged::Direct,
            };
        }
        loop {
            #[cfg(feature = "cuda")]
            if let (Staged::Through(inbound), true) = (&mut self.staged, self.frame_left > 0) {
                let space = ready!(inbound.poll_space(cx, self.landed))?;
                let take = space.len().min(self.frame_left);
                let n = ready!(conn.poll_read_into(cx, &mut space[..take]))?;
                if n == 0 {
                    return Poll::Ready(Err(ReadError::Closed { mid_frame: true }));
                }
                self.cursor.advance(&self.segs, n);
                self.frame_left -= n;
                self.landed += n;
                inbound.filled(self.landed, local)?;
                continue;
            }
            if self.frame_left > 0 {
                let s = self.segs[self.cursor.seg];
                let from = s.offset + self.cursor.offset;
                let take = (s.len - self.cursor.offset).min(self.frame_left);
                let Some(bytes) = local[s.index].as_mut_slice() else {
                    if local[s.index].device() != ferry_core::Device::Cpu {
                        return Poll::Ready(Err(ReadError::Io(not_host())));
                    }
                    return Poll::Ready(Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "a descriptor to land bytes in is read-only",
                    ))));
                };
                let n = ready!(conn.poll_read_into(cx, &mut bytes[from..from + take]))?;
                if n == 0 {
                    return Poll::Ready(Err(ReadError::Closed { mid_frame: true }));
                }
                self.cursor.advance(&self.segs, n);
                self.frame_left -= n;
                #[cfg(feature = "cuda")]
                {
                    self.landed += n;
                }
                continue;
            }
            if self.unannounced == 0 {
                // Every byte is off the socket; with staging, wait for the last copies.
                #[cfg(feature = "cuda")]
                if let Staged::Through(inbound) = &mut self.staged {
                    ready!(inbound.poll_flushed(cx))?;
                }
                return Poll::Ready(Ok(Received::All));
            }
            let header = ready!(conn.poll_header(cx))?;
            if header.frame != FrameType::Data {
                return Poll::Ready(Ok(Received::Frame(header)));
            }
            if header.len == 0 || header.len > self.unannounced {
                return Poll::Ready(Err(ReadError::Wire(WireError::Malformed(
                    "a DATA frame longer than what is left, or empty",
                ))));
            }
            self.unannounced -= header.len;
            self.frame_left = header.len;
        }
    }
}

/// Device memory reached a path that moves host bytes only (validation keeps it out).
fn not_host() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "device memory on a path that moves host bytes only",
    )
}

/// Whether a mover goes through staging buffers; decided at its first poll, when it sees the
/// descriptors.
#[cfg(feature = "cuda")]
#[derive(Debug)]
enum Staged<P> {
    Undecided,
    Direct,
    Through(Box<P>),
}

/// A local failure (a CUDA error while staging) carried inside an `io::Error`: the operation
/// ends with it rather than with a lost peer.
pub(crate) fn local_failure(error: &io::Error) -> Option<Error> {
    #[cfg(feature = "cuda")]
    {
        staging::local_failure(error)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = error;
        None
    }
}
