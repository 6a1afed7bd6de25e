//! The [`safe`](self) API of a build without UCX (`cfg(ferry_ucx_missing)`): the same types
//! and signatures, but [`Context::new`] returns [`Error::NotInstalled`], and every other type
//! holds an uninhabited value, so none can exist and their methods are unreachable.
//!
//! Keep in step with `safe.rs`: `FERRY_UCX_DISABLE=1 cargo clippy -p ferry-backend-ucx
//! --all-targets` builds this file on a machine that has UCX.

use std::convert::Infallible as Never;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::error::Error;

/// The result of the crate's UCX calls.
pub type Result<T> = std::result::Result<T, Error>;

/// Where memory lives, as UCX names it (see the UCX build's docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Host memory.
    Host,
    /// CUDA device memory.
    Cuda,
}

/// Nothing to do: this build has no UCX to log anything.
pub fn log_to_stderr() {}

/// Always [`Error::NotInstalled`] in this build.
pub fn configuration() -> Result<Vec<(String, String)>> {
    Err(Error::NotInstalled {
        reason: env!("FERRY_UCX_MISSING_REASON").to_owned(),
    })
}

/// How a [`Context`] is set up (see the UCX build's docs).
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Ask for `UCP_FEATURE_WAKEUP`.
    pub wakeup: bool,
}

/// A UCP context; this build has none.
#[derive(Clone)]
pub struct Context {
    never: Never,
}

impl Context {
    /// Always [`Error::NotInstalled`] in this build.
    pub fn new(_options: &ContextOptions) -> Result<Self> {
        Err(Error::NotInstalled {
            reason: env!("FERRY_UCX_MISSING_REASON").to_owned(),
        })
    }

    /// Unreachable: no context exists in this build.
    pub fn info(&self) -> Result<String> {
        match self.never {}
    }

    /// Unreachable: no context exists in this build.
    pub fn supports(&self, _memory: MemoryType) -> Result<bool> {
        match self.never {}
    }

    /// Unreachable: no context exists in this build.
    pub fn create_worker(&self) -> Result<Worker> {
        match self.never {}
    }

    /// Unreachable: no context exists in this build.
    ///
    /// # Safety
    /// As in the UCX build.
    pub unsafe fn map(&self, _address: *mut u8, _length: usize) -> Result<MemRegion> {
        match self.never {}
    }

    /// Unreachable: no context exists in this build.
    ///
    /// # Safety
    /// As in the UCX build.
    pub unsafe fn map_as(
        &self,
        _address: *mut u8,
        _length: usize,
        _memory: MemoryType,
    ) -> Result<MemRegion> {
        match self.never {}
    }
}

/// Mapped memory; none in this build.
pub struct MemRegion {
    never: Never,
}

impl MemRegion {
    /// Unreachable.
    pub fn pack_rkey(&self) -> Result<Vec<u8>> {
        match self.never {}
    }
    /// Unreachable.
    pub fn address(&self) -> u64 {
        match self.never {}
    }
    /// Unreachable.
    pub fn len(&self) -> usize {
        match self.never {}
    }
    /// Unreachable.
    pub fn is_empty(&self) -> bool {
        match self.never {}
    }
}

/// A worker's address (plain bytes; these exist without UCX).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAddress(Vec<u8>);

impl WorkerAddress {
    /// The address as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// An address received from a peer.
    ///
    /// # Safety
    /// As in the UCX build.
    pub unsafe fn from_bytes(bytes: Vec<u8>) -> Self {
        WorkerAddress(bytes)
    }
}

/// An active message as a handler sees it.
#[derive(Debug)]
pub struct AmMessage<'a> {
    /// The sender's header.
    pub header: &'a [u8],
    /// The sender's data.
    pub data: &'a [u8],
    /// Whether the data came by rendezvous and was dropped.
    pub rendezvous: bool,
}

/// A UCP worker; none in this build.
#[derive(Clone)]
pub struct Worker {
    never: Never,
}

impl Worker {
    /// Unreachable.
    pub fn address(&self) -> Result<WorkerAddress> {
        match self.never {}
    }
    /// Unreachable.
    pub fn progress(&self) -> Result<u32> {
        match self.never {}
    }
    /// Unreachable.
    pub fn event_fd(&self) -> Result<RawFd> {
        match self.never {}
    }
    /// Unreachable.
    pub fn arm(&self) -> Result<bool> {
        match self.never {}
    }
    /// Unreachable.
    pub fn signal(&self) -> Result<()> {
        match self.never {}
    }
    /// Unreachable.
    pub fn connect(&self, _address: &WorkerAddress, _mode: ErrorMode) -> Result<Endpoint> {
        match self.never {}
    }
    /// Unreachable.
    pub fn flush(&self) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    pub fn set_am_handler(
        &self,
        _id: u16,
        _handler: impl FnMut(AmMessage<'_>) + 'static,
    ) -> Result<()> {
        match self.never {}
    }
    /// Unreachable.
    pub fn clear_am_handler(&self, _id: u16) -> Result<()> {
        match self.never {}
    }
}

/// How an endpoint treats peer failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// `UCP_ERR_HANDLING_MODE_PEER`.
    Peer,
    /// `UCP_ERR_HANDLING_MODE_NONE`.
    None,
}

/// An endpoint; none in this build.
#[derive(Clone)]
pub struct Endpoint {
    never: Never,
}

impl Endpoint {
    /// Unreachable.
    pub fn failure(&self) -> Option<Error> {
        match self.never {}
    }
    /// Unreachable.
    pub fn info(&self) -> Result<String> {
        match self.never {}
    }
    /// Unreachable.
    pub fn unpack_rkey(&self, _packed: &[u8]) -> Result<RemoteKey> {
        match self.never {}
    }
    /// Unreachable.
    pub fn put(&self, _data: Vec<u8>, _remote: u64, _rkey: &RemoteKey) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    pub fn get(&self, _buffer: Vec<u8>, _remote: u64, _rkey: &RemoteKey) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    ///
    /// # Safety
    /// As in the UCX build.
    pub unsafe fn put_raw(
        &self,
        _local: *const u8,
        _length: usize,
        _memory: MemoryType,
        _remote: u64,
        _rkey: &RemoteKey,
    ) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    ///
    /// # Safety
    /// As in the UCX build.
    pub unsafe fn get_raw(
        &self,
        _local: *mut u8,
        _length: usize,
        _memory: MemoryType,
        _remote: u64,
        _rkey: &RemoteKey,
    ) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    pub fn flush(&self) -> Result<Request> {
        match self.never {}
    }
    /// Unreachable.
    pub fn am_send(&self, _id: u16, _header: Vec<u8>, _data: Vec<u8>) -> Result<Request> {
        match self.never {}
    }
}

/// A remote key; none in this build.
#[derive(Clone)]
pub struct RemoteKey {
    never: Never,
}

impl RemoteKey {
    #[allow(dead_code)]
    fn unreachable(&self) -> ! {
        match self.never {}
    }
}

/// A request; none in this build.
#[must_use = "a dropped pending request leaks its buffers and remote key"]
pub struct Request {
    never: Never,
}

impl Request {
    /// Unreachable.
    pub fn poll(&mut self) -> Option<Result<()>> {
        match self.never {}
    }
    /// Unreachable.
    pub fn wait(&mut self, _timeout: Duration) -> Result<Option<Result<()>>> {
        match self.never {}
    }
    /// Unreachable.
    pub fn cancel(&mut self) {
        match self.never {}
    }
    /// Unreachable.
    pub fn into_buffers(self) -> std::result::Result<Vec<Vec<u8>>, Self> {
        match self.never {}
    }
}

/// `(0, 0, 0)`: no UCX library in this build.
pub fn version() -> (u32, u32, u32) {
    (0, 0, 0)
}
