//! The serving side: the listener, one task per inbound connection, SPEC §9's admission check
//! for every request, and the passive operations it hands connections to.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ferry_core::state::Event;
use ferry_core::{Descriptor, Error, KeyTable, Notification, NotificationKey, OperationKind};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::conn::{Conn, ReadError, Received, Receiver, Registry, Seg, Sender};
use crate::wire::{self, ErrorCode, FrameType, Header, Request, WireError};
use crate::TcpConfig;

/// Counters of the serving side.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) connections: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) notifications: AtomicU64,
    pub(crate) discarded_bytes: AtomicU64,
    pub(crate) served_bytes: AtomicU64,
    pub(crate) landed_bytes: AtomicU64,
}

/// What the listener and the connection tasks share.
pub(crate) struct Server {
    table: Mutex<KeyTable<Arc<Passive>>>,
    pub(crate) config: TcpConfig,
    pub(crate) counters: ServerCounters,
    pub(crate) registry: Arc<Registry>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) live_transfers: AtomicUsize,
}

impl Server {
    pub(crate) fn new(config: TcpConfig, registry: Arc<Registry>) -> Self {
        Server {
            table: Mutex::new(KeyTable::new()),
            config,
            counters: ServerCounters::default(),
            registry,
            runtime: tokio::runtime::Handle::current(),
            live_transfers: AtomicUsize::new(0),
        }
    }

    fn table(&self) -> MutexGuard<'_, KeyTable<Arc<Passive>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live passive keys.
    pub(crate) fn keys(&self) -> usize {
        self.table().len()
    }

    /// Notifications that matched no live key.
    pub(crate) fn unmatched(&self) -> u64 {
        self.table().unmatched()
    }

    /// Starts accepting a passive operation's requests.
    pub(crate) fn expose(
        self: &Arc<Self>,
        kind: OperationKind,
        key: NotificationKey,
        lens: Vec<u64>,
        deadline: Option<Duration>,
    ) -> Result<PassiveTransfer, Error> {
        let passive = Arc::new(Passive {
            key,
            kind,
            lens,
            state: Mutex::new(PassiveState::default()),
        });
        if !self.table().insert(key, passive.clone()) {
            return Err(Error::Backend {
                backend: "tcp",
                side: ferry_core::Side::Local,
                code: crate::DUPLICATE_KEY,
                message: format!("notification key {key} is already live"),
            });
        }
        let deadline = deadline.map(|d| {
            let server = self.clone();
            let weak = Arc::downgrade(&passive);
            self.runtime.spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(passive) = weak.upgrade() {
                    passive.end_with(&server, Event::DeadlinePassed, ErrorCode::Revoked);
                }
            })
        });
        self.live_transfers.fetch_add(1, Ordering::Relaxed);
        Ok(PassiveTransfer {
            shared: passive,
            server: self.clone(),
            serving: Vec::new(),
            reported_start: false,
            deadline,
        })
    }

    /// SPEC §9: the key names a live operation of the right kind, and every range lies inside
    /// its descriptors.
    fn admit(
        &self,
        frame: FrameType,
        request: &Request,
    ) -> Result<(Arc<Passive>, Vec<Seg>), (ErrorCode, String)> {
        let passive = self.table().get(&request.key).cloned().ok_or((
            ErrorCode::UnknownKey,
            "no live operation has this key".into(),
        ))?;
        let wanted = match frame {
            FrameType::Read => OperationKind::Read,
            _ => OperationKind::Write,
        };
        if passive.kind != wanted {
            return Err((
                ErrorCode::WrongKind,
                format!("{frame:?} on a {} operation", passive.kind),
            ));
        }
        let mut segs = Vec::with_capacity(request.ranges.len());
        for (i, r) in request.ranges.iter().enumerate() {
            let inside = passive
                .lens
                .get(r.index as usize)
                .zip(r.offset.checked_add(r.len))
                .is_some_and(|(&len, end)| end <= len);
            if !inside {
                return Err((
                    ErrorCode::OutOfBounds,
                    format!(
                        "range {i} (descriptor {}, offset {}, length {}) is outside the operation",
                        r.index, r.offset, r.len
                    ),
                ));
            }
            // Both fit in usize: they are bounded by a local descriptor's length.
            segs.push(Seg {
                index: r.index as usize,
                offset: r.offset as usize,
                len: r.len as usize,
            });
        }
        Ok((passive, segs))
    }

    fn notify(self: &Arc<Self>, message: &[u8]) {
        self.counters.notifications.fetch_add(1, Ordering::Relaxed);
        let (key, event, code) = match Notification::parse(message) {
            Some(Notification::Complete(key)) => (key, Event::Completed, ErrorCode::UnknownKey),
            Some(Notification::Cancel(key)) => (key, Event::PeerCancelled, ErrorCode::Cancelled),
            None => return,
        };
        let passive = self.table().take(&key);
        if let Some(passive) = passive {
            passive.end_with(self, event, code);
        }
    }

    fn forget(&self, key: &NotificationKey) {
        self.table().remove(key);
    }

    fn refuse(self: &Arc<Self>, job: Job, code: ErrorCode) {
        let frame = wire::error_frame(code, "the operation has ended");
        self.runtime.spawn(async move {
            let Job {
                mut conn, reply, ..
            } = job;
            if conn.write_all(&frame).await.is_ok() {
                let _ = reply.send(Returned {
                    conn,
                    interrupted: None,
                });
            }
        });
    }
}

/// Accepts connections until the listener is dropped.
pub(crate) async fn accept_loop(server: Arc<Server>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off briefly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if server.registry.len() >= server.config.max_connections {
            server
                .counters
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            let _ = stream.try_write(&wire::error_frame(ErrorCode::Busy, "too many connections"));
            continue;
        }
        let Ok(conn) = server.registry.adopt(stream) else {
            continue;
        };
        server.counters.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve_connection(server.clone(), conn));
    }
}

fn wire_code(e: &WireError) -> ErrorCode {
    match e {
        WireError::Oversized { .. } => ErrorCode::Oversized,
        WireError::Version(_) => ErrorCode::Version,
        _ => ErrorCode::Malformed,
    }
}

/// Sends a last error and closes: the stream can no longer be trusted to be framed.
async fn reject(server: &Server, conn: &mut Conn, code: ErrorCode, message: &str) {
    server.counters.malformed.fetch_add(1, Ordering::Relaxed);
    let frame = wire::error_frame(code, message);
    let _ = tokio::time::timeout(server.config.frame_timeout, conn.write_all(&frame)).await;
}

async fn handshake(server: &Server, conn: &mut Conn) -> bool {
    let hello = async {
        let header = conn.read_header().await?;
        if header.frame != FrameType::Hello {
            return Err(ReadError::Wire(WireError::Malformed("expected HELLO")));
        }
        let body = conn.read_body(header.len).await?;
        wire::check_hello(&body).map_err(ReadError::Wire)
    };
    match tokio::time::timeout(server.config.frame_timeout, hello).await {
        Ok(Ok(())) => conn.write_all(&wire::hello_frame()).await.is_ok(),
        Ok(Err(ReadError::Wire(e))) => {
            reject(server, conn, wire_code(&e), &e.to_string()).await;
            false
        }
        Ok(Err(_)) => false,
        Err(_) => {
            server.counters.timeouts.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// The next frame header: the connection may idle for `idle_timeout` before a frame starts,
/// then the header must arrive within `frame_timeout`. The outer `Err` is a timeout.
async fn next_header(
    server: &Server,
    conn: &mut Conn,
) -> Result<Result<Header, ReadError>, tokio::time::error::Elapsed> {
    match tokio::time::timeout(server.config.idle_timeout, conn.wait_for_frame()).await? {
        Ok(()) => tokio::time::timeout(server.config.frame_timeout, conn.read_header()).await,
        Err(e) => Ok(Err(e)),
    }
}

/// One inbound connection: reads requests and notifications, admits or refuses each request,
/// and lends the connection to the operation a request names while its bytes move.
async fn serve_connection(server: Arc<Server>, mut conn: Conn) {
    if !handshake(&server, &mut conn).await {
        return;
    }
    let mut engaged: Vec<Arc<Passive>> = Vec::new();
    let mut pending: Option<Header> = None;
    let mut interrupted_write = false;
    loop {
        let header = match pending.take() {
            Some(header) => header,
            None => {
                match next_header(&server, &mut conn).await {
                    Ok(Ok(header)) => header,
                    Ok(Err(ReadError::Wire(e))) => {
                        reject(&server, &mut conn, wire_code(&e), &e.to_string()).await;
                        break;
                    }
                    Ok(Err(ReadError::Closed { mid_frame: true })) => {
                        // A truncated frame: the peer went away inside it.
                        server.counters.malformed.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        server.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        };
        let body = match header.frame {
            FrameType::Data => {
                server
                    .counters
                    .discarded_bytes
                    .fetch_add(header.len as u64, Ordering::Relaxed);
                match tokio::time::timeout(server.config.frame_timeout, conn.discard(header.len))
                    .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => break,
                    Err(_) => {
                        server.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            FrameType::Read | FrameType::Write | FrameType::Notify => {
                match tokio::time::timeout(server.config.frame_timeout, conn.read_body(header.len))
                    .await
                {
                    Ok(Ok(body)) => body,
                    Ok(Err(_)) => break,
                    Err(_) => {
                        server.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            other => {
                let message = format!("{other:?} is not a request");
                reject(&server, &mut conn, ErrorCode::Malformed, &message).await;
                break;
            }
        };
        if header.frame == FrameType::Notify {
            server.notify(&body);
            if std::mem::take(&mut interrupted_write) {
                let frame = wire::error_frame(ErrorCode::Cancelled, "cancelled by the writer");
                if conn.write_all(&frame).await.is_err() {
                    break;
                }
            }
            continue;
        }
        if interrupted_write {
            reject(
                &server,
                &mut conn,
                ErrorCode::Malformed,
                "a WRITE was cut short",
            )
            .await;
            break;
        }
        server.counters.requests.fetch_add(1, Ordering::Relaxed);
        let request = match Request::decode(&body) {
            Ok(request) => request,
            Err(e) => {
                reject(&server, &mut conn, wire_code(&e), &e.to_string()).await;
                break;
            }
        };
        let (passive, segs) = match server.admit(header.frame, &request) {
            Ok(admitted) => admitted,
            Err((code, message)) => {
                server.counters.denied.fetch_add(1, Ordering::Relaxed);
                if conn
                    .write_all(&wire::error_frame(code, &message))
                    .await
                    .is_err()
                {
                    break;
                }
                continue;
            }
        };
        engaged.retain(|p| !p.is_closed());
        engaged.push(passive.clone());
        let (reply, returned) = oneshot::channel();
        let job = Job {
            conn,
            segs,
            frame: header.frame,
            reply,
        };
        if let Err(job) = passive.offer(job) {
            conn = job.conn;
            let frame = wire::error_frame(ErrorCode::UnknownKey, "the operation has ended");
            if conn.write_all(&frame).await.is_err() {
                break;
            }
            continue;
        }
        match returned.await {
            Ok(back) => {
                conn = back.conn;
                if let Some(header) = back.interrupted {
                    interrupted_write = true;
                    pending = Some(header);
                }
            }
            Err(_) => break,
        }
    }
    for passive in engaged {
        passive.end_with(
            &server,
            Event::Failed(Error::PeerLost {
                reason: "the peer's connection closed mid-transfer".into(),
            }),
            ErrorCode::Revoked,
        );
    }
}

/// A request admitted for a passive operation, with the connection it arrived on.
pub(crate) struct Job {
    conn: Conn,
    segs: Vec<Seg>,
    frame: FrameType,
    reply: oneshot::Sender<Returned>,
}

/// A connection handed back to its task.
struct Returned {
    conn: Conn,
    /// A frame header a writable read in place of `DATA`, for the task to handle.
    interrupted: Option<Header>,
}

/// A passive operation as the server sees it.
pub(crate) struct Passive {
    key: NotificationKey,
    kind: OperationKind,
    lens: Vec<u64>,
    state: Mutex<PassiveState>,
}

#[derive(Default)]
struct PassiveState {
    waker: Option<Waker>,
    jobs: Vec<Job>,
    started: bool,
    end: Option<Event>,
    closed: bool,
}

impl Passive {
    fn lock(&self) -> MutexGuard<'_, PassiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    fn offer(&self, job: Job) -> Result<(), Box<Job>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Box::new(job));
        }
        state.jobs.push(job);
        state.started = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Ends the operation from outside its owner's polls (a notification, a deadline, a lost
    /// connection). Queued requests are refused with `code`.
    fn end_with(&self, server: &Arc<Server>, event: Event, code: ErrorCode) {
        let jobs = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            state.end = Some(event);
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
            std::mem::take(&mut state.jobs)
        };
        server.forget(&self.key);
        for job in jobs {
            server.refuse(job, code);
        }
    }
}

/// A request being served inside the owner's polls.
struct Serving {
    landing: usize,
    conn: Option<Conn>,
    reply: Option<oneshot::Sender<Returned>>,
    receiver: Option<Receiver>,
    sender: Sender,
}

impl Serving {
    fn new(job: Job, frame_size: usize) -> Self {
        let (receiver, sender) = match job.frame {
            FrameType::Read => (
                None,
                Sender::new(
                    job.segs,
                    frame_size,
                    Vec::new(),
                    wire::empty_frame(FrameType::Done).to_vec(),
                ),
            ),
            _ => (
                Some(Receiver::new(job.segs)),
                Sender::new(
                    Vec::new(),
                    frame_size,
                    wire::empty_frame(FrameType::Ack).to_vec(),
                    Vec::new(),
                ),
            ),
        };
        Serving {
            landing: receiver.as_ref().map_or(0, Receiver::total),
            conn: Some(job.conn),
            reply: Some(job.reply),
            receiver,
            sender,
        }
    }

    /// Moves bytes; `Ready(Ok(interrupted))` when this request is finished with.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        local: &mut [Descriptor<'_>],
    ) -> Poll<Result<Option<Header>, ReadError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        if let Some(receiver) = self.receiver.as_mut() {
            match receiver.poll_receive(cx, conn, local) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Received::All)) => self.receiver = None,
                Poll::Ready(Ok(Received::Frame(header))) => return Poll::Ready(Ok(Some(header))),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        self.sender
            .poll_send(cx, conn, local)
            .map(|r| r.map(|()| None).map_err(ReadError::Io))
    }

    fn receiver_len(&self) -> usize {
        self.landing
    }

    fn finish(mut self, interrupted: Option<Header>) {
        if let (Some(conn), Some(reply)) = (self.conn.take(), self.reply.take()) {
            let _ = reply.send(Returned { conn, interrupted });
        }
    }

    /// Ends the request without touching the operation's memory again: a started `DATA`
    /// frame is finished with zeros (read) or drained (write), then the request is refused.
    fn abandon(mut self, server: &Arc<Server>, code: ErrorCode) {
        let (Some(mut conn), Some(reply)) = (self.conn.take(), self.reply.take()) else {
            return;
        };
        let (header_rest, zeros) = self.sender.padding();
        let trailer_rest = self.sender.trailer_started();
        let ack_started = self.receiver.is_none() && self.sender.prefix_sent_any();
        let discard = self.receiver.as_ref().map_or(0, Receiver::frame_left);
        // Neither mover touches the operation's memory again: copies in flight finish here,
        // before the connection is drained in the background.
        self.receiver = None;
        self.sender.release_staging();
        let timeout = server.config.frame_timeout;
        server.runtime.spawn(async move {
            let drain = async {
                conn.write_all(&header_rest).await.ok()?;
                conn.write_zeros(zeros).await.ok()?;
                match trailer_rest {
                    Some(rest) => conn.write_all(&rest).await.ok()?,
                    None if ack_started => conn.write_all(&self.sender.prefix_rest()).await.ok()?,
                    None => conn
                        .write_all(&wire::error_frame(code, "the operation has ended"))
                        .await
                        .ok()?,
                }
                conn.discard(discard).await.ok()?;
                Some(conn)
            };
            if let Ok(Some(conn)) = tokio::time::timeout(timeout, drain).await {
                let _ = reply.send(Returned {
                    conn,
                    interrupted: None,
                });
            }
        });
    }
}

/// The moving part of a readable or writable on tcp. It touches the operation's memory only
/// inside `poll_event` and `cancel`, where the owner lends it.
pub(crate) struct PassiveTransfer {
    shared: Arc<Passive>,
    server: Arc<Server>,
    serving: Vec<Serving>,
    reported_start: bool,
    deadline: Option<tokio::task::JoinHandle<()>>,
}

impl PassiveTransfer {
    fn abandon_all(&mut self, code: ErrorCode) {
        for serving in self.serving.drain(..) {
            serving.abandon(&self.server, code);
        }
    }

    /// Ends access from this side: no request is admitted any more, queued ones are refused,
    /// those in flight are abandoned without touching memory. Returns an ending that arrived
    /// from outside first, if one did.
    fn close(&mut self) -> Option<Event> {
        let (jobs, end) = {
            let mut state = self.shared.lock();
            state.closed = true;
            (std::mem::take(&mut state.jobs), state.end.take())
        };
        self.server.forget(&self.shared.key);
        for job in jobs {
            self.server.refuse(job, ErrorCode::Revoked);
        }
        self.abandon_all(ErrorCode::Revoked);
        end
    }

    fn fail(&mut self, error: Error) -> Event {
        self.close();
        Event::Failed(error)
    }
}

impl ferry_core::Transfer for PassiveTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, local: &mut [Descriptor<'_>]) -> Poll<Event> {
        let (jobs, end, started) = {
            let mut state = self.shared.lock();
            match &state.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            (
                std::mem::take(&mut state.jobs),
                state.end.take(),
                state.started,
            )
        };
        let frame_size = self.server.config.frame_size;
        self.serving
            .extend(jobs.into_iter().map(|job| Serving::new(job, frame_size)));
        if let Some(end) = end {
            let code = match end {
                Event::PeerCancelled => ErrorCode::Cancelled,
                _ => ErrorCode::Revoked,
            };
            self.abandon_all(code);
            return Poll::Ready(end);
        }
        if started && !self.reported_start {
            self.reported_start = true;
            return Poll::Ready(Event::PeerStarted);
        }
        let mut i = 0;
        while i < self.serving.len() {
            match self.serving[i].poll(cx, local) {
                Poll::Pending => i += 1,
                Poll::Ready(Ok(interrupted)) => {
                    let serving = self.serving.swap_remove(i);
                    let moved = serving.sender.payload_len() + serving.receiver_len();
                    let counter = if self.shared.kind == OperationKind::Read {
                        &self.server.counters.served_bytes
                    } else {
                        &self.server.counters.landed_bytes
                    };
                    counter.fetch_add(moved as u64, Ordering::Relaxed);
                    serving.finish(interrupted);
                }
                Poll::Ready(Err(e)) => {
                    drop(self.serving.swap_remove(i));
                    if let Some(local) = match &e {
                        ReadError::Io(e) => crate::conn::local_failure(e),
                        _ => None,
                    } {
                        return Poll::Ready(self.fail(local));
                    }
                    let reason = match e {
                        ReadError::Wire(w) => format!("the peer broke the protocol: {w}"),
                        ReadError::Closed { .. } => "the peer closed mid-transfer".into(),
                        ReadError::Io(e) => format!("connection failed mid-transfer: {e}"),
                    };
                    return Poll::Ready(self.fail(Error::PeerLost { reason }));
                }
            }
        }
        Poll::Pending
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        self.close()
    }
}

impl Drop for PassiveTransfer {
    fn drop(&mut self) {
        if let Some(deadline) = self.deadline.take() {
            deadline.abort();
        }
        // An ended operation's key is gone already; this covers a transfer dropped without
        // an ending (the facade always ends it first, so this is normally skipped).
        if !self.shared.is_closed() || !self.serving.is_empty() {
            self.close();
        }
        self.server.live_transfers.fetch_sub(1, Ordering::Relaxed);
    }
}
