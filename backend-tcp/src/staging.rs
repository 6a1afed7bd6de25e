//! Device memory on tcp (the `cuda` feature): bytes go between the socket and CUDA memory
//! through two host staging buffers, with the copies on a CUDA stream of their own.
//!
//! ```text
//!   sending (a readable served, a write):     device ──copy──▶ buffer A ──socket──▶
//!                                              device ──copy──▶ buffer B   (next chunk, meanwhile)
//!   receiving (a writable landed, a read):    ──socket──▶ buffer A ──copy──▶ device
//!                                              ──socket──▶ buffer B         (while A's copy runs)
//! ```
//!
//! The stream of a transfer's segments is cut into chunks of [`CHUNK`] bytes ([`Plan`]). A
//! sender keeps the chunk being written and the next one staged; a receiver fills one buffer
//! from the socket while the other's copy to the device runs. Each copy batch ends with a CUDA
//! event; a transfer polls it without blocking, and when it is not done yet a blocking-pool
//! thread waits on the event and wakes the transfer (nothing spins). A receiver reports every
//! byte landed only once the last copy's event has completed, and dropping a pipeline (a
//! cancel, a failure) synchronizes its streams first, so no copy outlives the operation.
//!
//! **The buffers are pageable, not pinned.** cudarc's pinned allocation
//! (`CudaContext::alloc_pinned`) is an `unsafe fn`, and this crate forbids `unsafe`. With
//! pageable memory the driver stages each copy through its own pinned buffer: a device-to-host
//! copy returns only once it is done, and a host-to-device copy once the driver has taken the
//! bytes, so the overlap with socket IO is what the socket buffers and the peer absorb while a
//! copy runs, not a copy engine running beside the socket. Pinned buffers would slot in here
//! (the pipeline only needs `&[u8]` / `&mut [u8]` of each buffer) once a safe constructor
//! exists.

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use ferry_core::cuda::cudarc::driver::sys::CUevent_flags;
use ferry_core::cuda::cudarc::driver::{
    CudaContext, CudaEvent, CudaStream, DeviceSlice, DriverError,
};
use ferry_core::{cuda, Descriptor, Device, Error};

use crate::conn::Seg;

/// The bytes one staging buffer holds.
pub(crate) const CHUNK: usize = 4 << 20;

/// Staging buffers per transfer part: the one in use and the one being prepared.
pub(crate) const DEPTH: usize = 2;

/// One contiguous copy of a chunk: bytes `offset .. offset + len` of descriptor `index`, at
/// `at` in the chunk's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) index: usize,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) at: usize,
}

/// A stream of segments cut into chunks. Pure arithmetic: no CUDA.
#[derive(Debug)]
pub(crate) struct Plan {
    chunk: usize,
    total: usize,
    segs: Vec<Seg>,
    /// Where each segment starts in the stream.
    starts: Vec<usize>,
}

impl Plan {
    pub(crate) fn new(segs: &[Seg], chunk: usize) -> Self {
        let segs: Vec<Seg> = segs.iter().copied().filter(|s| s.len > 0).collect();
        let mut starts = Vec::with_capacity(segs.len());
        let mut total = 0;
        for s in &segs {
            starts.push(total);
            total += s.len;
        }
        Plan {
            chunk: chunk.max(1),
            total,
            segs,
            starts,
        }
    }

    /// The stream's length.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// How many chunks the stream has.
    pub(crate) fn chunks(&self) -> usize {
        self.total.div_ceil(self.chunk)
    }

    /// The chunk holding stream byte `pos`.
    pub(crate) fn chunk_of(&self, pos: usize) -> usize {
        pos / self.chunk
    }

    /// Where chunk `k` starts and ends in the stream.
    pub(crate) fn bounds(&self, k: usize) -> (usize, usize) {
        let start = k.saturating_mul(self.chunk).min(self.total);
        (start, start.saturating_add(self.chunk).min(self.total))
    }

    /// The largest chunk, for sizing buffers.
    pub(crate) fn buffer_len(&self) -> usize {
        self.chunk.min(self.total)
    }

    /// The copies that make up chunk `k`, in stream order.
    pub(crate) fn pieces(&self, k: usize) -> Vec<Piece> {
        let (start, end) = self.bounds(k);
        let mut out = Vec::new();
        let first = self
            .starts
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        for (seg, &seg_start) in self.segs.iter().zip(&self.starts).skip(first) {
            if seg_start >= end {
                break;
            }
            let from = start.max(seg_start);
            let to = end.min(seg_start + seg.len);
            if from < to {
                out.push(Piece {
                    index: seg.index,
                    offset: seg.offset + (from - seg_start),
                    len: to - from,
                    at: from - start,
                });
            }
        }
        out
    }
}

/// Which chunk each staging buffer holds, and which chunk is staged next: the scheduling of
/// both directions, without CUDA. Chunks go through the buffers in order, at most [`DEPTH`]
/// at a time.
#[derive(Debug)]
pub(crate) struct Ring {
    chunks: usize,
    next: usize,
    held: [Option<usize>; DEPTH],
}

impl Ring {
    pub(crate) fn new(chunks: usize) -> Self {
        Ring {
            chunks,
            next: 0,
            held: [None; DEPTH],
        }
    }

    /// Takes the next chunk into a free buffer: `(buffer, chunk)`, or `None` when every buffer
    /// is taken or every chunk has been staged.
    pub(crate) fn stage_next(&mut self) -> Option<(usize, usize)> {
        if self.next >= self.chunks {
            return None;
        }
        let slot = self.held.iter().position(Option::is_none)?;
        let chunk = self.next;
        self.held[slot] = Some(chunk);
        self.next += 1;
        Some((slot, chunk))
    }

    /// The buffer holding `chunk`.
    pub(crate) fn slot_of(&self, chunk: usize) -> Option<usize> {
        self.held.iter().position(|&c| c == Some(chunk))
    }

    /// Frees buffer `slot`.
    pub(crate) fn free(&mut self, slot: usize) {
        if let Some(held) = self.held.get_mut(slot) {
            *held = None;
        }
    }

    /// Frees the buffers of chunks before `chunk` (a sender has written them out).
    pub(crate) fn free_before(&mut self, chunk: usize) {
        for held in &mut self.held {
            if held.is_some_and(|c| c < chunk) {
                *held = None;
            }
        }
    }

    /// Buffers holding a chunk now.
    pub(crate) fn busy(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.held
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| c.map(|c| (slot, c)))
    }
}

/// A CUDA failure inside a staging copy, carried through the crate's `io::Error`s so the
/// transfer ends with the driver's own code ([`local_failure`] takes it back out).
pub(crate) fn cuda_failure(error: &DriverError) -> io::Error {
    io::Error::other(cuda::driver_error(error))
}

fn refused(reason: &str) -> io::Error {
    io::Error::other(Error::Backend {
        backend: cuda::DRIVER,
        side: ferry_core::Side::Local,
        code: -1,
        message: format!("staging: {reason}"),
    })
}

/// The ferry error inside an `io::Error` made by this module, if it is one.
pub(crate) fn local_failure(error: &io::Error) -> Option<Error> {
    error.get_ref()?.downcast_ref::<Error>().cloned()
}

/// The copies of one chunk, finished when every event has completed.
#[derive(Debug)]
struct Fence {
    events: Vec<Arc<CudaEvent>>,
    waker: Arc<Mutex<Option<Waker>>>,
    watched: bool,
}

impl Fence {
    fn new(events: Vec<Arc<CudaEvent>>) -> Self {
        Fence {
            events,
            waker: Arc::new(Mutex::new(None)),
            watched: false,
        }
    }

    fn done(&self) -> io::Result<bool> {
        for event in &self.events {
            if !event.try_is_complete().map_err(|e| cuda_failure(&e))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Ready when the copies are done. Otherwise a blocking-pool thread waits on the events
    /// and wakes the latest waker (one such thread per fence).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.done()? {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // The watcher may have finished (and woken an older waker) just before the store.
        if self.done()? {
            return Poll::Ready(Ok(()));
        }
        if !self.watched {
            self.watched = true;
            let events = self.events.clone();
            let waker = self.waker.clone();
            let watch = move || {
                for event in &events {
                    // An error here shows again in the next try_is_complete.
                    let _ = event.synchronize();
                }
                if let Some(w) = waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    w.wake();
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(watch)),
                Err(_) => {
                    std::thread::spawn(watch);
                }
            }
        }
        Poll::Pending
    }
}

/// One CUDA stream per device the transfer touches, made on first use.
#[derive(Debug, Default)]
struct Streams(Vec<Arc<CudaStream>>);

impl Streams {
    fn on(&mut self, ctx: &Arc<CudaContext>) -> io::Result<Arc<CudaStream>> {
        if let Some(s) = self.0.iter().find(|s| s.context() == ctx) {
            return Ok(s.clone());
        }
        let stream = ctx.new_stream().map_err(|e| cuda_failure(&e))?;
        self.0.push(stream.clone());
        Ok(stream)
    }

    /// An event after everything issued so far on each stream in `used`.
    fn fence(&self, used: &[Arc<CudaStream>]) -> io::Result<Fence> {
        let mut events = Vec::with_capacity(used.len());
        for stream in used {
            let event = stream
                .record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                .map_err(|e| cuda_failure(&e))?;
            events.push(Arc::new(event));
        }
        Ok(Fence::new(events))
    }

    fn synchronize(&self) {
        for stream in &self.0 {
            // Nothing to report to: the transfer is gone. A failed synchronize leaves the
            // error sticky in the context, where the next user of the device sees it.
            let _ = stream.synchronize();
        }
    }
}

fn note(used: &mut Vec<Arc<CudaStream>>, stream: Arc<CudaStream>) {
    if !used.iter().any(|s| Arc::ptr_eq(s, &stream)) {
        used.push(stream);
    }
}

/// A staging buffer and the copies in flight on it.
#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    fence: Option<Fence>,
}

impl Buffer {
    fn sized(&mut self, len: usize) -> &mut Vec<u8> {
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        &mut self.bytes
    }

    fn poll_fence(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.fence.as_mut() {
            None => Poll::Ready(Ok(())),
            Some(fence) => {
                std::task::ready!(fence.poll(cx))?;
                self.fence = None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// Whether a list of segments of `local` needs staging (any of it is device memory).
pub(crate) fn needed(segs: &[Seg], local: &[Descriptor<'_>]) -> bool {
    segs.iter().any(|s| {
        local
            .get(s.index)
            .is_some_and(|d| d.device() != Device::Cpu)
    })
}

/// What both directions hold: the plan, the buffers and their schedule, the streams.
#[derive(Debug)]
struct Pipeline {
    plan: Plan,
    ring: Ring,
    buffers: [Buffer; DEPTH],
    streams: Streams,
}

impl Pipeline {
    fn new(segs: &[Seg]) -> Self {
        let plan = Plan::new(segs, CHUNK);
        Pipeline {
            ring: Ring::new(plan.chunks()),
            plan,
            buffers: Default::default(),
            streams: Streams::default(),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // No copy outlives the transfer: the memory is the operation's only until it ends.
        self.streams.synchronize();
    }
}

/// Device → socket: stages the chunk being written and the next one.
#[derive(Debug)]
pub(crate) struct Outbound(Pipeline);

impl Outbound {
    pub(crate) fn new(segs: &[Seg]) -> Self {
        Outbound(Pipeline::new(segs))
    }

    /// The staged bytes from stream position `pos` to the end of its chunk, once they are on
    /// the host. Everything before `pos` has been written out: its buffers are reused.
    pub(crate) fn poll_bytes(
        &mut self,
        cx: &mut Context<'_>,
        pos: usize,
        local: &[Descriptor<'_>],
    ) -> Poll<io::Result<&[u8]>> {
        if pos >= self.0.plan.total() {
            return Poll::Ready(Ok(&[]));
        }
        let current = self.0.plan.chunk_of(pos);
        self.0.ring.free_before(current);
        while let Some((slot, chunk)) = self.0.ring.stage_next() {
            if let Err(e) = self.stage(slot, chunk, local) {
                return Poll::Ready(Err(e));
            }
        }
        let Some(slot) = self.0.ring.slot_of(current) else {
            return Poll::Ready(Err(refused("a chunk was written out of order")));
        };
        std::task::ready!(self.0.buffers[slot].poll_fence(cx))?;
        let (start, end) = self.0.plan.bounds(current);
        Poll::Ready(Ok(&self.0.buffers[slot].bytes[pos - start..end - start]))
    }

    /// Issues the copies of `chunk` into buffer `slot`.
    fn stage(&mut self, slot: usize, chunk: usize, local: &[Descriptor<'_>]) -> io::Result<()> {
        let Pipeline {
            plan,
            buffers,
            streams,
            ..
        } = &mut self.0;
        let buffer = &mut buffers[slot];
        let bytes = buffer.sized(plan.buffer_len());
        let mut used = Vec::new();
        for p in plan.pieces(chunk) {
            let d = local
                .get(p.index)
                .ok_or_else(|| refused("no such descriptor"))?;
            let dst = &mut bytes[p.at..p.at + p.len];
            if let Some(view) = d.cuda_view() {
                let src = view
                    .try_slice(p.offset..p.offset + p.len)
                    .ok_or_else(|| refused("a piece outside its descriptor"))?;
                let stream = streams.on(view.stream().context())?;
                stream
                    .memcpy_dtoh(&src, dst)
                    .map_err(|e| cuda_failure(&e))?;
                note(&mut used, stream);
            } else if let Some(host) = d.as_slice() {
                let src = host
                    .get(p.offset..p.offset + p.len)
                    .ok_or_else(|| refused("a piece outside its descriptor"))?;
                dst.copy_from_slice(src);
            }
        }
        buffer.fence = Some(streams.fence(&used)?);
        Ok(())
    }
}

/// Socket → device: fills one buffer from the socket while the other's copy runs.
#[derive(Debug)]
pub(crate) struct Inbound {
    pipeline: Pipeline,
    /// The buffer the socket fills now, with its chunk.
    filling: Option<(usize, usize)>,
}

impl Inbound {
    pub(crate) fn new(segs: &[Seg]) -> Self {
        Inbound {
            pipeline: Pipeline::new(segs),
            filling: None,
        }
    }

    /// Room for the bytes from stream position `pos` to the end of its chunk. Waits for a
    /// buffer whose copy to the device has finished when both are busy.
    pub(crate) fn poll_space(
        &mut self,
        cx: &mut Context<'_>,
        pos: usize,
    ) -> Poll<io::Result<&mut [u8]>> {
        if pos >= self.pipeline.plan.total() {
            return Poll::Ready(Ok(&mut []));
        }
        let current = self.pipeline.plan.chunk_of(pos);
        let slot = match self.filling {
            Some((slot, chunk)) if chunk == current => slot,
            Some(_) => return Poll::Ready(Err(refused("a chunk was left half filled"))),
            None => {
                // Free the buffers whose copies have finished, then take the next chunk.
                let busy: Vec<(usize, usize)> = self.pipeline.ring.busy().collect();
                let mut pending = false;
                for (slot, _) in busy {
                    match self.pipeline.buffers[slot].poll_fence(cx) {
                        Poll::Ready(Ok(())) => self.pipeline.ring.free(slot),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => pending = true,
                    }
                }
                match self.pipeline.ring.stage_next() {
                    Some((slot, chunk)) if chunk == current => {
                        self.filling = Some((slot, chunk));
                        slot
                    }
                    Some(_) => return Poll::Ready(Err(refused("bytes arrived out of order"))),
                    None if pending => return Poll::Pending,
                    None => return Poll::Ready(Err(refused("no staging buffer is free"))),
                }
            }
        };
        let (start, end) = self.pipeline.plan.bounds(current);
        let len = self.pipeline.plan.buffer_len();
        let bytes = self.pipeline.buffers[slot].sized(len);
        Poll::Ready(Ok(&mut bytes[pos - start..end - start]))
    }

    /// Records that the socket has filled the stream up to `pos`; a chunk filled whole goes
    /// to the device.
    pub(crate) fn filled(&mut self, pos: usize, local: &mut [Descriptor<'_>]) -> io::Result<()> {
        let Some((slot, chunk)) = self.filling else {
            return Ok(());
        };
        let (_, end) = self.pipeline.plan.bounds(chunk);
        if pos < end {
            return Ok(());
        }
        self.filling = None;
        let bytes = &self.pipeline.buffers[slot].bytes;
        let mut used = Vec::new();
        for p in self.pipeline.plan.pieces(chunk) {
            let src = &bytes[p.at..p.at + p.len];
            let d = local
                .get_mut(p.index)
                .ok_or_else(|| refused("no such descriptor"))?;
            if d.device() == Device::Cpu {
                let host = d
                    .as_mut_slice()
                    .ok_or_else(|| refused("a descriptor to land bytes in is read-only"))?;
                host.get_mut(p.offset..p.offset + p.len)
                    .ok_or_else(|| refused("a piece outside its descriptor"))?
                    .copy_from_slice(src);
                continue;
            }
            let mut view = d
                .cuda_view_mut()
                .ok_or_else(|| refused("a descriptor to land bytes in is read-only"))?;
            let stream = self.pipeline.streams.on(view.stream().context())?;
            let mut dst = view
                .try_slice_mut(p.offset..p.offset + p.len)
                .ok_or_else(|| refused("a piece outside its descriptor"))?;
            stream
                .memcpy_htod(src, &mut dst)
                .map_err(|e| cuda_failure(&e))?;
            note(&mut used, stream);
        }
        self.pipeline.buffers[slot].fence = Some(self.pipeline.streams.fence(&used)?);
        Ok(())
    }

    /// Ready once every copy to the device has finished.
    pub(crate) fn poll_flushed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = false;
        for buffer in &mut self.pipeline.buffers {
            match buffer.poll_fence(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seg(index: usize, offset: usize, len: usize) -> Seg {
        Seg { index, offset, len }
    }

    #[test]
    fn chunks_cut_across_segments() {
        let plan = Plan::new(&[seg(0, 10, 5), seg(1, 0, 0), seg(2, 3, 7)], 4);
        assert_eq!((plan.total(), plan.chunks(), plan.buffer_len()), (12, 3, 4));
        assert_eq!(
            plan.pieces(1),
            vec![
                Piece {
                    index: 0,
                    offset: 14,
                    len: 1,
                    at: 0
                },
                Piece {
                    index: 2,
                    offset: 3,
                    len: 3,
                    at: 1
                },
            ]
        );
        assert_eq!(
            plan.pieces(2),
            vec![Piece {
                index: 2,
                offset: 6,
                len: 4,
                at: 0
            }]
        );
        assert_eq!(plan.bounds(2), (8, 12));
        assert!(plan.pieces(3).is_empty(), "past the end");
        assert_eq!(Plan::new(&[seg(0, 0, 0)], 4).chunks(), 0);
    }

    #[test]
    fn a_sender_stages_one_chunk_ahead() {
        let mut ring = Ring::new(3);
        assert_eq!(ring.stage_next(), Some((0, 0)));
        assert_eq!(ring.stage_next(), Some((1, 1)));
        assert_eq!(ring.stage_next(), None, "both buffers busy");
        ring.free_before(1);
        assert_eq!(ring.slot_of(1), Some(1));
        assert_eq!(ring.stage_next(), Some((0, 2)));
        ring.free_before(3);
        assert_eq!(ring.stage_next(), None, "every chunk staged");
        assert_eq!(ring.busy().count(), 0);
    }

    proptest! {
        /// Every stream byte is covered by exactly one piece, in order, inside its segment, at
        /// its place in its chunk.
        #[test]
        fn pieces_tile_the_stream(lens in proptest::collection::vec(0usize..50, 1..12), chunk in 1usize..40) {
            let segs: Vec<Seg> = lens.iter().enumerate().map(|(i, &len)| seg(i, i * 3, len)).collect();
            let plan = Plan::new(&segs, chunk);
            let mut expected = Vec::new();
            for s in &segs {
                for b in 0..s.len {
                    expected.push((s.index, s.offset + b));
                }
            }
            let mut seen = Vec::new();
            for k in 0..plan.chunks() {
                let (start, end) = plan.bounds(k);
                let mut at = 0;
                for p in plan.pieces(k) {
                    prop_assert_eq!(p.at, at);
                    prop_assert!(p.len > 0);
                    at += p.len;
                    for b in 0..p.len {
                        seen.push((p.index, p.offset + b));
                    }
                }
                prop_assert_eq!(at, end - start);
            }
            prop_assert_eq!(seen, expected);
        }

        /// Consumed in order, with any interleaving of staging and consuming, chunks are staged
        /// once each, in order, never more than DEPTH at a time, and each is staged before it
        /// is needed.
        #[test]
        fn the_ring_stages_in_order(chunks in 0usize..20, steps in proptest::collection::vec(any::<bool>(), 0..80)) {
            let mut ring = Ring::new(chunks);
            let mut staged = Vec::new();
            let mut consumed = 0;
            for stage in steps.into_iter().chain(std::iter::repeat_n(false, 2 * chunks + 2)) {
                if stage || consumed == staged.len() {
                    if let Some((_, chunk)) = ring.stage_next() {
                        staged.push(chunk);
                    }
                } else if consumed < chunks {
                    prop_assert!(ring.slot_of(consumed).is_some());
                    consumed += 1;
                    ring.free_before(consumed);
                }
                prop_assert!(ring.busy().count() <= DEPTH);
                prop_assert!(staged.len() - consumed <= DEPTH);
            }
            prop_assert_eq!(consumed, chunks);
            prop_assert_eq!(staged, (0..chunks).collect::<Vec<_>>());
        }
    }
}
