//! The active side: a pool of connections per peer, and the transfer that pulls from a
//! readable or pushes into a writable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};

use ferry_core::state::Event;
use ferry_core::{
    BoxFuture, Descriptor, Error, NotificationKey, OperationKind, RdmaMetadata, Side,
};

use crate::conn::{Budget, Conn, ReadError, Received, Receiver, Seg, Sender};
use crate::server::Server;
use crate::wire::{self, ErrorCode, FrameType, Header, Request, WireRange};

/// A remote Connector, by identity, with its idle connections and its connection budget.
pub(crate) struct RemotePeer {
    addr: SocketAddr,
    idle: Mutex<Vec<Conn>>,
    budget: Arc<Budget>,
    server: Arc<Server>,
}

impl RemotePeer {
    pub(crate) fn new(addr: SocketAddr, server: Arc<Server>) -> Self {
        RemotePeer {
            addr,
            idle: Mutex::new(Vec::new()),
            budget: Budget::new(server.config.max_connections_per_peer),
            server,
        }
    }

    /// Idle connections held.
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// An idle connection, or a new one if the budget has room (or `over_cap`); `None` when
    /// every connection this side may hold to the peer is busy.
    async fn try_checkout(&self, over_cap: bool) -> Result<Option<Conn>, Error> {
        loop {
            let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match conn {
                Some(mut conn) => {
                    if conn.is_idle_and_open() {
                        return Ok(Some(conn));
                    }
                }
                None => break,
            }
        }
        if self.server.registry.is_closed() {
            return Err(Error::PeerLost {
                reason: "this Connector was aborted".into(),
            });
        }
        let slot = match self.budget.try_take() {
            Some(slot) => slot,
            None if over_cap => self.budget.take_over_cap(),
            None => return Ok(None),
        };
        Conn::dial(
            &self.server.registry,
            self.addr,
            self.server.config.connect_timeout,
            slot,
        )
        .await
        .map(Some)
        .map_err(|e| Error::PeerLost {
            reason: format!("cannot reach the peer at {}: {e}", self.addr),
        })
    }

    /// Waits until a connection is free or may be dialled; after a queue patience in which no
    /// connection came back at all, dials beyond the cap. The future owns what it needs, so a queued transfer
    /// can hold it across its owner's polls.
    fn wait_checkout(self: Arc<Self>) -> BoxFuture<'static, Result<Conn, Error>> {
        Box::pin(async move {
            let patience = self.server.config.queue_patience;
            let mut stall = std::pin::pin!(tokio::time::sleep(patience));
            let mut returns = self.budget.returns();
            let mut over_cap = false;
            loop {
                // Made before looking, so that a connection freed meanwhile still wakes it.
                let mut freed = std::pin::pin!(self.budget.freed.notified());
                if let Some(conn) = self.try_checkout(over_cap).await? {
                    return Ok(conn);
                }
                let stalled = std::future::poll_fn(|cx| {
                    if freed.as_mut().poll(cx).is_ready() {
                        Poll::Ready(false)
                    } else {
                        stall.as_mut().poll(cx).map(|()| true)
                    }
                })
                .await;
                if stalled {
                    // A patience's worth of waiting: a stall only if nothing came back since.
                    let now = self.budget.returns();
                    over_cap = now == returns;
                    returns = now;
                    stall.as_mut().reset(tokio::time::Instant::now() + patience);
                }
            }
        })
    }

    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.server.config.max_idle_per_peer {
            idle.push(conn);
            drop(idle);
            self.budget.returned();
        }
        // Otherwise the connection closes here, and its slot wakes a waiter as it goes.
    }
}

/// Splits a stream of descriptors of `lens` into `parts` contiguous pieces of nearly equal
/// size. Zero-length descriptors travel with the first piece so the peer still checks them.
pub(crate) fn split(lens: &[usize], parts: usize) -> Vec<Vec<Seg>> {
    let total: usize = lens.iter().sum();
    let parts = parts.clamp(1, total.max(1));
    let share = total.div_ceil(parts).max(1);
    let mut out: Vec<Vec<Seg>> = vec![Vec::new()];
    let mut room = share;
    for (index, &len) in lens.iter().enumerate() {
        if len == 0 {
            out[0].push(Seg {
                index,
                offset: 0,
                len: 0,
            });
            continue;
        }
        let mut offset = 0;
        while offset < len {
            if room == 0 {
                out.push(Vec::new());
                room = share;
            }
            let take = (len - offset).min(room);
            out.last_mut().expect("out starts with one part").push(Seg {
                index,
                offset,
                len: take,
            });
            offset += take;
            room -= take;
        }
    }
    out
}

fn request(key: NotificationKey, segs: &[Seg]) -> Request {
    Request {
        key,
        ranges: segs
            .iter()
            .map(|s| WireRange {
                index: s.index as u32,
                offset: s.offset as u64,
                len: s.len as u64,
            })
            .collect(),
    }
}

/// The handle the Connector caches for a peer.
pub(crate) struct PeerHandle(pub(crate) Arc<RemotePeer>);

impl ferry_core::Peer for PeerHandle {
    fn post<'a>(
        &'a self,
        kind: OperationKind,
        remote: &'a RdmaMetadata,
        local: &'a mut [Descriptor<'_>],
        _deadline: Option<std::time::Duration>,
    ) -> BoxFuture<'a, Result<Box<dyn ferry_core::Transfer>, Error>> {
        Box::pin(async move {
            let peer = self.0.clone();
            let config = &peer.server.config;
            let lens: Vec<usize> = local.iter().map(Descriptor::len).collect();
            let total: usize = lens.iter().sum();
            let parts_n = if config.parallel_connections > 1 && total >= config.parallel_threshold {
                config.parallel_connections
            } else {
                1
            };
            let key = remote.notification_key;
            let mut parts = Vec::new();
            for segs in split(&lens, parts_n) {
                let start = match kind {
                    OperationKind::Read => Start::Read {
                        frame: wire::request_frame(FrameType::Read, &request(key, &segs)),
                        segs,
                    },
                    OperationKind::Write => Start::Write(Sender::new(
                        segs.clone(),
                        config.frame_size,
                        wire::request_frame(FrameType::Write, &request(key, &segs)),
                        Vec::new(),
                    )),
                };
                let part = match peer.try_checkout(false).await? {
                    Some(mut conn) => match start {
                        Start::Read { frame, segs } => {
                            conn.write_all(&frame).await.map_err(|e| Error::PeerLost {
                                reason: format!("sending the request failed: {e}"),
                            })?;
                            Part::reading(conn, Receiver::new(segs))
                        }
                        Start::Write(mut sender) => {
                            // Posting is eager: push what the socket takes now, without waiting.
                            let mut cx = Context::from_waker(Waker::noop());
                            if let Poll::Ready(Err(e)) = sender.poll_send(&mut cx, &mut conn, local)
                            {
                                return Err(send_failure(e, "sending the request failed"));
                            }
                            Part::writing(conn, sender)
                        }
                    },
                    // Every connection to this peer is busy: the part goes out, in the
                    // operation's polls, on the first that comes back.
                    None => Part::queued(peer.clone().wait_checkout(), start),
                };
                parts.push(part);
            }
            peer.server.live_transfers.fetch_add(1, Ordering::Relaxed);
            let transfer: Box<dyn ferry_core::Transfer> = Box::new(ActiveTransfer {
                peer,
                key,
                parts,
                notify: None,
                ended: false,
            });
            Ok(transfer)
        })
    }
}

/// Reads one control frame (header, then a body of at most 1 KiB) across polls.
#[derive(Default)]
struct FrameRead {
    header: Option<Header>,
    body: Vec<u8>,
    filled: usize,
}

impl FrameRead {
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
    ) -> Poll<Result<(FrameType, Vec<u8>), ReadError>> {
        let header = match self.header {
            Some(header) => header,
            None => {
                let header = ready!(conn.poll_header(cx))?;
                if header.len > wire::MAX_CONTROL_BODY {
                    return Poll::Ready(Err(ReadError::Wire(wire::WireError::Malformed(
                        "a reply longer than a control frame",
                    ))));
                }
                self.header = Some(header);
                self.body = vec![0; header.len];
                self.filled = 0;
                header
            }
        };
        while self.filled < header.len {
            let n = ready!(conn.poll_read_into(cx, &mut self.body[self.filled..]))?;
            if n == 0 {
                return Poll::Ready(Err(ReadError::Closed { mid_frame: true }));
            }
            self.filled += n;
        }
        self.header = None;
        Poll::Ready(Ok((header.frame, std::mem::take(&mut self.body))))
    }
}

/// How a part begins once it has a connection.
enum Start {
    /// Send the `READ` frame, then receive.
    Read { frame: Vec<u8>, segs: Vec<Seg> },
    /// Send the `WRITE` frame and the data.
    Write(Sender),
}

enum Stage {
    /// Waiting for a connection to the peer.
    Queued {
        acquire: BoxFuture<'static, Result<Conn, Error>>,
        start: Start,
    },
    /// Sending a queued read's `READ` frame.
    Requesting {
        request: Sender,
        receiver: Receiver,
    },
    Receiving(Receiver),
    Sending(Sender),
    Reply,
    Done,
}

/// One connection's share of an active transfer.
struct Part {
    conn: Option<Conn>,
    stage: Stage,
    /// A refusal seen while still sending; reported once the frame in flight is finished.
    refused: Option<Error>,
    reply: FrameRead,
}

impl Part {
    fn reading(conn: Conn, receiver: Receiver) -> Self {
        Part {
            conn: Some(conn),
            stage: Stage::Receiving(receiver),
            refused: None,
            reply: FrameRead::default(),
        }
    }

    fn writing(conn: Conn, sender: Sender) -> Self {
        Part {
            conn: Some(conn),
            stage: Stage::Sending(sender),
            refused: None,
            reply: FrameRead::default(),
        }
    }

    fn queued(acquire: BoxFuture<'static, Result<Conn, Error>>, start: Start) -> Self {
        Part {
            conn: None,
            stage: Stage::Queued { acquire, start },
            refused: None,
            reply: FrameRead::default(),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Takes the connection a queued part waits for, when it is there, and begins.
    fn poll_queued(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let Stage::Queued { acquire, .. } = &mut self.stage else {
            return Poll::Ready(Ok(()));
        };
        let conn = ready!(acquire.as_mut().poll(cx))?;
        self.conn = Some(conn);
        let Stage::Queued { start, .. } = std::mem::replace(&mut self.stage, Stage::Done) else {
            unreachable!("matched just above");
        };
        self.stage = match start {
            Start::Read { frame, segs } => Stage::Requesting {
                request: Sender::new(Vec::new(), 1, frame, Vec::new()),
                receiver: Receiver::new(segs),
            },
            Start::Write(sender) => Stage::Sending(sender),
        };
        Poll::Ready(Ok(()))
    }

    /// Drives this part to its final reply (`DONE` for a read, `ACK` for a write).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        local: &mut [Descriptor<'_>],
    ) -> Poll<Result<(), Error>> {
        ready!(self.poll_queued(cx))?;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Err(lost("the connection is gone")));
            };
            match &mut self.stage {
                Stage::Queued { .. } => unreachable!("poll_queued left the queue"),
                Stage::Requesting { request, .. } => {
                    if let Err(e) = ready!(request.poll_send(cx, conn, local)) {
                        return Poll::Ready(Err(send_failure(e, "sending the request failed")));
                    }
                    let Stage::Requesting { receiver, .. } =
                        std::mem::replace(&mut self.stage, Stage::Done)
                    else {
                        unreachable!("matched just above");
                    };
                    self.stage = Stage::Receiving(receiver);
                }
                Stage::Receiving(receiver) => {
                    match ready!(receiver.poll_receive(cx, conn, local)) {
                        Ok(Received::All) => self.stage = Stage::Reply,
                        Ok(Received::Frame(header)) => {
                            self.reply.header = Some(header);
                            self.reply.body = vec![0; header.len.min(wire::MAX_CONTROL_BODY)];
                            if header.len > wire::MAX_CONTROL_BODY {
                                return Poll::Ready(Err(protocol("an oversized reply")));
                            }
                            self.stage = Stage::Reply;
                        }
                        Err(e) => return Poll::Ready(Err(read_failure(e))),
                    }
                }
                Stage::Sending(sender) => match sender.poll_send(cx, conn, local) {
                    Poll::Ready(Ok(())) => {
                        if let Some(refused) = self.refused.take() {
                            self.stage = Stage::Done;
                            return Poll::Ready(Err(refused));
                        }
                        self.stage = Stage::Reply;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(send_failure(e, "sending failed")))
                    }
                    Poll::Pending => {
                        // While bytes are still to go, only a refusal can arrive (an ACK needs
                        // every byte): look for one without waiting for it.
                        if self.refused.is_some() {
                            return Poll::Pending;
                        }
                        match ready!(self.reply.poll(cx, conn)) {
                            Ok((FrameType::Error, body)) => {
                                sender.stop_after_frame();
                                self.refused = Some(reply_error(&body));
                            }
                            Ok((other, _)) => {
                                return Poll::Ready(Err(protocol(&format!(
                                    "{other:?} while the request was still being sent"
                                ))))
                            }
                            Err(e) => return Poll::Ready(Err(read_failure(e))),
                        }
                    }
                },
                Stage::Reply => {
                    let (frame, body) = match ready!(self.reply.poll(cx, conn)) {
                        Ok(reply) => reply,
                        Err(e) => return Poll::Ready(Err(read_failure(e))),
                    };
                    self.stage = Stage::Done;
                    return Poll::Ready(match frame {
                        FrameType::Done | FrameType::Ack => Ok(()),
                        FrameType::Error => Err(reply_error(&body)),
                        other => Err(protocol(&format!("unexpected {other:?} reply"))),
                    });
                }
                Stage::Done => return Poll::Ready(Ok(())),
            }
        }
    }

    /// Lets go of this part without touching the operation's memory again. A background task
    /// brings the connection back into frame (padding a `DATA` frame in flight with zeros, or
    /// draining what the peer still sends), sends `message` if given (the cancel
    /// notification), waits for the final reply and returns the connection to the pool.
    fn abandon(mut self, peer: &Arc<RemotePeer>, message: Option<Vec<u8>>) {
        if matches!(self.stage, Stage::Queued { .. }) {
            let Stage::Queued { acquire, .. } = std::mem::replace(&mut self.stage, Stage::Done)
            else {
                unreachable!("matched just above");
            };
            // The request never went out. Only a cancel notification is owed: it goes on the
            // first connection free, if one is within the frame timeout.
            let (Some(message), peer) = (message, peer.clone()) else {
                return;
            };
            let timeout = peer.server.config.frame_timeout;
            peer.server.runtime.clone().spawn(async move {
                let send = async {
                    let mut conn = acquire.await.ok()?;
                    conn.write_all(&message).await.ok()?;
                    Some(conn)
                };
                if let Ok(Some(conn)) = tokio::time::timeout(timeout, send).await {
                    peer.checkin(conn);
                }
            });
            return;
        }
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let message = message.unwrap_or_default();
        let (pad_header, pad_zeros, discard, expect_reply) = match &self.stage {
            Stage::Queued { .. } => return,
            Stage::Requesting { request, .. } if !request.prefix_sent() => {
                if request.prefix_sent_any() {
                    // Part of a request is out: the stream cannot be brought back into frame.
                    return;
                }
                (Vec::new(), 0, 0, false)
            }
            Stage::Requesting { .. } => (Vec::new(), 0, 0, true),
            Stage::Receiving(receiver) => (Vec::new(), 0, receiver.frame_left(), true),
            Stage::Sending(sender) if !sender.prefix_sent() => {
                if sender.prefix_sent_any() {
                    // Part of a request is out: the stream cannot be brought back into frame.
                    return;
                }
                (Vec::new(), 0, 0, false)
            }
            Stage::Sending(sender) => {
                let (header, zeros) = sender.padding();
                (header, zeros, 0, self.refused.is_none())
            }
            Stage::Reply => (Vec::new(), 0, 0, true),
            Stage::Done => (Vec::new(), 0, 0, false),
        };
        let mut reply = std::mem::take(&mut self.reply);
        let peer = peer.clone();
        let timeout = peer.server.config.frame_timeout;
        peer.server.runtime.clone().spawn(async move {
            let drain = async {
                conn.write_all(&pad_header).await.ok()?;
                conn.write_zeros(pad_zeros).await.ok()?;
                conn.write_all(&message).await.ok()?;
                conn.discard(discard).await.ok()?;
                loop {
                    if !expect_reply {
                        break;
                    }
                    if reply.header.is_none() {
                        let header = conn.read_header().await.ok()?;
                        if header.frame == FrameType::Data {
                            conn.discard(header.len).await.ok()?;
                            continue;
                        }
                        if header.len > wire::MAX_CONTROL_BODY {
                            return None;
                        }
                        reply.header = Some(header);
                        reply.body = vec![0; header.len];
                        reply.filled = 0;
                    }
                    let (frame, _) = std::future::poll_fn(|cx| reply.poll(cx, &mut conn))
                        .await
                        .ok()?;
                    if matches!(frame, FrameType::Done | FrameType::Ack | FrameType::Error) {
                        break;
                    }
                    return None;
                }
                Some(conn)
            };
            if let Ok(Some(conn)) = tokio::time::timeout(timeout, drain).await {
                peer.checkin(conn);
            }
        });
    }
}

/// The moving part of a read or write on tcp.
struct ActiveTransfer {
    peer: Arc<RemotePeer>,
    key: NotificationKey,
    parts: Vec<Part>,
    notify: Option<Sender>,
    ended: bool,
}

impl ActiveTransfer {
    fn fail(&mut self, error: Error) -> Event {
        self.ended = true;
        for mut part in self.parts.drain(..) {
            if part.is_done() {
                if let Some(conn) = part.conn.take() {
                    self.peer.checkin(conn);
                }
            } else if matches!(error, Error::PeerLost { .. }) {
                drop(part);
            } else {
                part.abandon(&self.peer, None);
            }
        }
        Event::Failed(error)
    }
}

impl ferry_core::Transfer for ActiveTransfer {
    fn poll_event(&mut self, cx: &mut Context<'_>, local: &mut [Descriptor<'_>]) -> Poll<Event> {
        if self.ended {
            return Poll::Pending;
        }
        if self.notify.is_none() {
            let mut all_done = true;
            for i in 0..self.parts.len() {
                if self.parts[i].is_done() {
                    continue;
                }
                match self.parts[i].poll(cx, local) {
                    Poll::Pending => all_done = false,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(self.fail(e)),
                }
            }
            if !all_done {
                return Poll::Pending;
            }
            let message = wire::notify_frame(&self.key.completion_message());
            self.notify = Some(Sender::new(Vec::new(), 1, message, Vec::new()));
        }
        let (Some(notify), Some(conn)) = (
            self.notify.as_mut(),
            self.parts.first_mut().and_then(|p| p.conn.as_mut()),
        ) else {
            return Poll::Ready(self.fail(lost("the connection is gone")));
        };
        match ready!(notify.poll_send(cx, conn, local)) {
            Ok(()) => {
                self.ended = true;
                for part in self.parts.drain(..) {
                    if let Some(conn) = part.conn {
                        self.peer.checkin(conn);
                    }
                }
                Poll::Ready(Event::Completed)
            }
            Err(e) => Poll::Ready(self.fail(lost(&format!("sending the notification: {e}")))),
        }
    }

    fn cancel(&mut self, _local: &mut [Descriptor<'_>]) -> Option<Event> {
        if self.ended {
            return None;
        }
        self.ended = true;
        if let Some(notify) = self.notify.take() {
            if notify.prefix_sent_any() {
                // The completion notification is partly out: the peer will complete, so this
                // side completes too (every byte has landed), and the rest goes out behind.
                let rest = notify.prefix_rest();
                let mut parts = self.parts.drain(..);
                if let Some(mut first) = parts.next() {
                    first.stage = Stage::Done;
                    first.abandon(&self.peer, Some(rest));
                }
                for part in parts {
                    part.abandon(&self.peer, None);
                }
                return Some(Event::Completed);
            }
        }
        let cancel = wire::notify_frame(&self.key.cancel_message());
        for (i, part) in self.parts.drain(..).enumerate() {
            part.abandon(&self.peer, (i == 0).then(|| cancel.clone()));
        }
        None
    }
}

impl Drop for ActiveTransfer {
    fn drop(&mut self) {
        if !self.ended {
            let _ = ferry_core::Transfer::cancel(self, &mut []);
        }
        self.peer
            .server
            .live_transfers
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Code for a peer that broke the protocol.
pub const PROTOCOL_VIOLATION: i64 = -2;

fn lost(reason: &str) -> Error {
    Error::PeerLost {
        reason: reason.to_owned(),
    }
}

fn protocol(what: &str) -> Error {
    Error::Backend {
        backend: "tcp",
        side: Side::Remote,
        code: PROTOCOL_VIOLATION,
        message: format!("the peer broke the protocol: {what}"),
    }
}

/// A failed send: the peer is lost, unless the failure was local (a staging copy).
fn send_failure(e: std::io::Error, what: &str) -> Error {
    crate::conn::local_failure(&e).unwrap_or_else(|| lost(&format!("{what}: {e}")))
}

fn read_failure(e: ReadError) -> Error {
    match e {
        ReadError::Io(e) => send_failure(e, "connection failed"),
        ReadError::Closed { .. } => lost("the peer closed the connection"),
        ReadError::Wire(w) => protocol(&w.to_string()),
    }
}

/// Maps an `ERROR` reply to ferry's errors.
fn reply_error(body: &[u8]) -> Error {
    let (code, message) = wire::decode_error(body);
    match ErrorCode::from_u16(code) {
        Some(ErrorCode::UnknownKey | ErrorCode::Revoked) => Error::StaleMetadata,
        Some(ErrorCode::Cancelled) => Error::Cancelled { by: Side::Remote },
        Some(ErrorCode::WrongKind | ErrorCode::OutOfBounds) => Error::AccessDenied {
            side: Side::Remote,
            reason: message,
        },
        _ => Error::Backend {
            backend: "tcp",
            side: Side::Remote,
            code: i64::from(code),
            message,
        },
    }
}
