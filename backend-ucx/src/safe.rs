//! RAII types over UCP: [`Context`], [`Worker`], [`MemRegion`], [`Endpoint`], [`RemoteKey`],
//! [`WorkerAddress`] and [`Request`].
//!
//! # Ownership and drop order
//! UCX requires remote keys to be destroyed before their endpoint is closed, endpoints closed
//! before their worker is destroyed, and workers and memory mappings released before their
//! context. Each type here holds a reference-counted handle to what it was made from (a
//! [`RemoteKey`] holds its endpoint, an [`Endpoint`] its worker, a [`Worker`] and a
//! [`MemRegion`] their context, a [`Request`] its worker and the remote key it uses), so that
//! order holds whatever order the values are dropped in.
//!
//! # Threads
//! Workers are created in `UCS_THREAD_MODE_SERIALIZED` (UCX lets any thread call into them, one
//! at a time) and every type here is `!Send` and `!Sync`: the types count references without
//! atomics. Whoever moves all objects of one [`Context`] between threads together, and lets one
//! thread at a time touch them, may do so (the ucx backend keeps them behind one mutex, taken
//! by its progress thread and by owners polling their operations).
//!
//! # Progress
//! Nothing here progresses by itself: call [`Worker::progress`] (or [`Request::wait`], which
//! progresses the request's worker). With [`ContextOptions::wakeup`], [`Worker::event_fd`] and
//! [`Worker::arm`] let a thread sleep until the worker has work instead of spinning.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::sync::atomic::{AtomicI8, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::result::{self, Result};
use crate::sys;

/// How a [`Context`] is set up. UCX's own configuration (`UCX_TLS`, `UCX_NET_DEVICES`, ...)
/// comes from the environment, read by `ucp_config_read`; nothing here overrides it.
#[derive(Debug, Clone, Default)]
pub struct ContextOptions {
    /// Ask for `UCP_FEATURE_WAKEUP`, so workers have an event fd ([`Worker::event_fd`]).
    /// UCX then selects only transports that can signal events.
    pub wakeup: bool,
}

/// Where memory lives, as UCX names it (`ucs_memory_type_t`): what [`Context::map_as`],
/// [`Endpoint::put_raw`] and [`Endpoint::get_raw`] tell UCX instead of letting it detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemoryType {
    /// Host memory (`UCS_MEMORY_TYPE_HOST`).
    Host,
    /// CUDA device memory (`UCS_MEMORY_TYPE_CUDA`): a `CUdeviceptr`.
    Cuda,
}

impl MemoryType {
    fn raw(self) -> sys::ucs_memory_type::Type {
        match self {
            MemoryType::Host => sys::ucs_memory_type::UCS_MEMORY_TYPE_HOST,
            MemoryType::Cuda => sys::ucs_memory_type::UCS_MEMORY_TYPE_CUDA,
        }
    }

    /// The request parameters of a get or put from memory of this type: host memory as
    /// before (no memory type given, UCX's default), device memory named as such
    /// (`UCP_OP_ATTR_FIELD_MEMORY_TYPE`).
    fn request_param(self) -> sys::ucp_request_param_t {
        match self {
            MemoryType::Host => sys::ucp_request_param_t::default(),
            MemoryType::Cuda => sys::ucp_request_param_t {
                op_attr_mask: sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_MEMORY_TYPE,
                memory_type: self.raw(),
                ..Default::default()
            },
        }
    }
}

/// UCX's configuration in force in this process (`ucp_config_print`): defaults, configuration
/// files and `UCX_*` variables, one `(name, value)` pair per setting, names without the
/// `UCX_` prefix (`PROTO_ENABLE`, `TLS`, ...).
pub fn configuration() -> Result<Vec<(String, String)>> {
    // SAFETY: released below, once.
    let config = unsafe { result::config_read() }?;
    // SAFETY: the configuration is live until released below.
    let printed = unsafe { result::config_print(config) };
    // SAFETY: read once above, not used afterwards.
    unsafe { result::config_release(config) };
    Ok(settings(&printed?))
}

/// The `UCX_NAME=value` lines of `ucp_config_print`'s text, comments skipped.
fn settings(printed: &str) -> Vec<(String, String)> {
    printed
        .lines()
        .filter_map(|line| line.trim().strip_prefix("UCX_")?.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// Sends UCX's log messages to standard error instead of UCX's default, standard output, once
/// per process, unless `UCX_LOG_FILE` says where they go: a process whose standard output is
/// a data channel (a peer speaking a protocol, JSON lines) must not find UCX's lines in it.
/// Messages at or above UCX's fatal level still go to UCX's own handler. [`Context::new`]
/// calls it.
///
/// Found by ferry's two-process conformance suite under `UCX_TLS=posix,cma,self` with
/// `ErrorHandling::PeerIfSupported`: the first connect of a backend host tried peer error mode,
/// UCX logged `UCX  ERROR   no active messages transport ...` on the host's standard output,
/// which was the pipe of the suite's framed protocol, and every rule in which the host
/// connected hung.
pub fn log_to_stderr() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("UCX_LOG_FILE").is_some() {
        return;
    }
    ONCE.call_once(|| {
        // SAFETY: `log_to_stderr_handler` is a plain function that never unwinds (it catches
        // panics) and may run on any thread; it lives as long as the process.
        unsafe { result::log_push_handler(Some(log_to_stderr_handler)) }
    });
}

/// The handler [`log_to_stderr`] installs: formats the message (`vsnprintf`, truncated at 4
/// KiB) and writes one line to standard error.
unsafe extern "C" fn log_to_stderr_handler(
    file: *const std::ffi::c_char,
    line: std::ffi::c_uint,
    _function: *const std::ffi::c_char,
    level: sys::ucs_log_level_t::Type,
    _component: *const sys::ucs_log_component_config_t,
    message: *const std::ffi::c_char,
    arguments: *mut sys::__va_list_tag,
) -> sys::ucs_log_func_rc_t::Type {
    use sys::ucs_log_level_t as levels;
    if level == levels::UCS_LOG_LEVEL_FATAL || message.is_null() {
        // UCX's own handler decides what a fatal message does.
        return sys::ucs_log_func_rc_t::UCS_LOG_FUNC_RC_CONTINUE;
    }
    let mut buffer = [0 as std::ffi::c_char; 4096];
    // SAFETY: `message` and `arguments` are the format and arguments UCX dispatches, used
    // once; vsnprintf writes at most `buffer.len()` bytes, NUL included.
    let written =
        unsafe { sys::vsnprintf(buffer.as_mut_ptr(), buffer.len() as _, message, arguments) };
    if written < 0 {
        return sys::ucs_log_func_rc_t::UCS_LOG_FUNC_RC_CONTINUE;
    }
    let printed = panic::catch_unwind(|| {
        // SAFETY: vsnprintf NUL-terminated the buffer; `file` is UCX's `__FILE__`, a static
        // NUL-terminated string, or NULL.
        let text = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy();
        let file = if file.is_null() {
            "?".into()
        } else {
            // SAFETY: as above.
            unsafe { std::ffi::CStr::from_ptr(file) }.to_string_lossy()
        };
        let file = file.rsplit('/').next().unwrap_or_default();
        let name = match level {
            levels::UCS_LOG_LEVEL_ERROR => "ERROR",
            levels::UCS_LOG_LEVEL_WARN => "WARN ",
            levels::UCS_LOG_LEVEL_DIAG => "DIAG ",
            levels::UCS_LOG_LEVEL_INFO => "INFO ",
            levels::UCS_LOG_LEVEL_DEBUG => "DEBUG",
            levels::UCS_LOG_LEVEL_PRINT => "PRINT",
            _ => "TRACE",
        };
        let pid = std::process::id();
        let out = format!("[{pid}] {file}:{line} UCX  {name} {text}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), out.as_bytes());
    });
    match printed {
        Ok(()) => sys::ucs_log_func_rc_t::UCS_LOG_FUNC_RC_STOP,
        Err(_) => sys::ucs_log_func_rc_t::UCS_LOG_FUNC_RC_CONTINUE,
    }
}

struct ContextInner {
    raw: NonNull<sys::ucp_context>,
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every worker and mapping holds an Rc of this, so none is left; the context
        // is released once, here.
        unsafe { result::cleanup(self.raw) }
    }
}

/// A UCP context (`ucp_context_h`) with RMA and active messages.
#[derive(Clone)]
pub struct Context {
    inner: Rc<ContextInner>,
}

impl Context {
    /// Reads UCX's configuration from the environment and initialises a context.
    pub fn new(options: &ContextOptions) -> Result<Self> {
        log_to_stderr();
        // SAFETY: released below, once, whatever ucp_init returns.
        let config = unsafe { result::config_read() }?;
        let mut features = u64::from(sys::ucp_feature::UCP_FEATURE_RMA)
            | u64::from(sys::ucp_feature::UCP_FEATURE_AM);
        if options.wakeup {
            features |= u64::from(sys::ucp_feature::UCP_FEATURE_WAKEUP);
        }
        let params = sys::ucp_params_t {
            field_mask: u64::from(
                sys::ucp_params_field::UCP_PARAM_FIELD_FEATURES
                    | sys::ucp_params_field::UCP_PARAM_FIELD_MT_WORKERS_SHARED,
            ),
            features,
            mt_workers_shared: 0,
            ..Default::default()
        };
        // SAFETY: `params` is initialised for its field mask; `config` is live.
        let context = unsafe { result::init(&params, config) };
        // SAFETY: ucp_init copied what it needs from the configuration.
        unsafe { result::config_release(config) };
        Ok(Context {
            inner: Rc::new(ContextInner { raw: context? }),
        })
    }

    /// What UCX prints about the context (`ucp_context_print_info`): among other things one
    /// `resource` line per transport and device its configuration (`UCX_TLS`,
    /// `UCX_NET_DEVICES`) enabled.
    pub fn info(&self) -> Result<String> {
        // SAFETY: the context is live while `self` is.
        unsafe { result::context_info(self.inner.raw) }
    }

    /// Whether some memory domain of the context can detect memory of `memory` type
    /// (`ucp_context_query`'s `memory_types`): CUDA only where UCX was built with CUDA, its
    /// cuda transports are installed and `UCX_TLS` enables them.
    pub fn supports(&self, memory: MemoryType) -> Result<bool> {
        // SAFETY: the context is live while `self` is.
        let types = unsafe { result::context_memory_types(self.inner.raw) }?;
        Ok(types & (1u64 << memory.raw()) != 0)
    }

    /// Creates a worker (`UCS_THREAD_MODE_SERIALIZED`: see "Threads" above).
    pub fn create_worker(&self) -> Result<Worker> {
        let params = sys::ucp_worker_params_t {
            field_mask: u64::from(sys::ucp_worker_params_field::UCP_WORKER_PARAM_FIELD_THREAD_MODE),
            thread_mode: sys::ucs_thread_mode_t::UCS_THREAD_MODE_SERIALIZED,
            ..Default::default()
        };
        // SAFETY: the context is live and the worker keeps it alive (Rc); params initialised.
        let raw = unsafe { result::worker_create(self.inner.raw, &params) }?;
        Ok(Worker {
            inner: Rc::new(WorkerInner {
                raw,
                handlers: RefCell::new(HashMap::new()),
                in_progress: Cell::new(false),
                panic: Rc::new(Cell::new(None)),
                _context: Rc::clone(&self.inner),
            }),
        })
    }

    /// Maps `length` bytes at `address` for remote access (`ucp_mem_map`).
    ///
    /// # Safety
    /// The memory stays allocated for as long as the returned region lives, and the caller
    /// accepts that any peer holding its packed key may read and write it at any time until
    /// then, concurrently with this process: do not hold Rust references into it while a peer
    /// may write. (Unmapping does not stop every transport from reaching it either; see the
    /// crate docs.)
    pub unsafe fn map(&self, address: *mut u8, length: usize) -> Result<MemRegion> {
        let params = sys::ucp_mem_map_params_t {
            field_mask: u64::from(
                sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
                    | sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_LENGTH,
            ),
            address: address.cast(),
            length,
            ..Default::default()
        };
        // SAFETY: the caller's contract is this function's.
        unsafe { self.map_with(&params, address, length) }
    }

    /// [`Context::map`] for memory UCX is told the type of (`UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE`):
    /// for [`MemoryType::Cuda`], `address` is a `CUdeviceptr`, and UCX's cuda memory domain
    /// needs that device's context current on this thread.
    ///
    /// # Safety
    /// As [`Context::map`], for memory of type `memory`.
    pub unsafe fn map_as(
        &self,
        address: *mut u8,
        length: usize,
        memory: MemoryType,
    ) -> Result<MemRegion> {
        let params = sys::ucp_mem_map_params_t {
            field_mask: u64::from(
                sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
                    | sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_LENGTH
                    | sys::ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE,
            ),
            address: address.cast(),
            length,
            memory_type: memory.raw(),
            ..Default::default()
        };
        // SAFETY: the caller's contract is this function's.
        unsafe { self.map_with(&params, address, length) }
    }

    /// # Safety
    /// `params` maps `length` bytes at `address`, which stay allocated while the region lives.
    unsafe fn map_with(
        &self,
        params: &sys::ucp_mem_map_params_t,
        address: *mut u8,
        length: usize,
    ) -> Result<MemRegion> {
        // SAFETY: the caller keeps the memory valid while the region lives; the region keeps
        // the context alive (Rc).
        let memh = unsafe { result::mem_map(self.inner.raw, params) }?;
        Ok(MemRegion {
            memh,
            address: address as u64,
            length,
            context: Rc::clone(&self.inner),
        })
    }
}

/// Memory mapped for remote access with `ucp_mem_map`; unmapped on drop.
pub struct MemRegion {
    memh: NonNull<sys::ucp_mem>,
    address: u64,
    length: usize,
    context: Rc<ContextInner>,
}

impl MemRegion {
    /// The packed remote key (`ucp_rkey_pack`) a peer unpacks with [`Endpoint::unpack_rkey`].
    pub fn pack_rkey(&self) -> Result<Vec<u8>> {
        // SAFETY: the mapping and its context are live while `self` is.
        unsafe { result::rkey_pack(self.context.raw, self.memh) }
    }

    /// The mapped address, as a peer names it in a get or put.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.length
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }
}

impl Drop for MemRegion {
    fn drop(&mut self) {
        // SAFETY: the mapping belongs to this context and is unmapped once, here. A failure
        // cannot be reported from drop; UCX logs it.
        let _ = unsafe { result::mem_unmap(self.context.raw, self.memh) };
    }
}

/// A worker's address (`ucp_worker_get_address`), what a peer needs to connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerAddress(Vec<u8>);

impl WorkerAddress {
    /// The address as bytes, for a metadata blob.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// An address received from a peer.
    ///
    /// # Safety
    /// UCX 1.13 parses a worker address without a length (`ucp_ep_create` reads as far as the
    /// encoded contents say), so the bytes must be exactly what a peer's
    /// [`Worker::address`] returned, delivered intact. A truncated or hostile address can make
    /// [`Worker::connect`] read out of bounds.
    pub unsafe fn from_bytes(bytes: Vec<u8>) -> Self {
        WorkerAddress(bytes)
    }
}

type AmHandler = dyn FnMut(AmMessage<'_>);

/// One registered active-message handler; its address is UCX's `arg` for the callback.
struct HandlerSlot {
    handler: RefCell<Box<AmHandler>>,
    /// Where a panic in the handler is kept until `ucp_worker_progress` returns.
    panic: Rc<Cell<Option<Box<dyn Any + Send>>>>,
}

struct WorkerInner {
    raw: NonNull<sys::ucp_worker>,
    /// Handlers registered with UCX, freed after the worker is destroyed or the handler
    /// replaced (never while UCX may call them).
    handlers: RefCell<HashMap<u16, *mut HandlerSlot>>,
    /// Set while `ucp_worker_progress` runs, so callbacks cannot re-enter it.
    in_progress: Cell<bool>,
    panic: Rc<Cell<Option<Box<dyn Any + Send>>>>,
    _context: Rc<ContextInner>,
}

impl WorkerInner {
    fn progress(&self) -> Result<u32> {
        if self.in_progress.replace(true) {
            return Err(Error::Reentrant {
                call: "ucp_worker_progress",
            });
        }
        // SAFETY: live worker, used by one thread at a time (the types are !Send; see
        // "Threads" above), and not from a callback (checked above).
        let events = unsafe { result::worker_progress(self.raw) };
        self.in_progress.set(false);
        if let Some(payload) = self.panic.take() {
            panic::resume_unwind(payload);
        }
        Ok(events)
    }
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        // SAFETY: every endpoint holds an Rc of this, so all are closed; destroyed once.
        unsafe { result::worker_destroy(self.raw) };
        for (_, slot) in self.handlers.get_mut().drain() {
            // SAFETY: made by Box::into_raw in set_am_handler; the worker that could call it
            // is destroyed.
            drop(unsafe { Box::from_raw(slot) });
        }
    }
}

/// An active message as a handler sees it.
#[derive(Debug)]
pub struct AmMessage<'a> {
    /// The sender's header.
    pub header: &'a [u8],
    /// The sender's data. Empty for a rendezvous message, which this layer does not receive
    /// ([`Endpoint::am_send`] always sends eagerly).
    pub data: &'a [u8],
    /// Whether the data came by rendezvous and was dropped.
    pub rendezvous: bool,
}

/// A UCP worker (`ucp_worker_h`): progress, addresses, endpoints and active messages.
#[derive(Clone)]
pub struct Worker {
    inner: Rc<WorkerInner>,
}

impl Worker {
    /// This worker's address, for a peer's [`Worker::connect`].
    pub fn address(&self) -> Result<WorkerAddress> {
        // SAFETY: live worker, used by one thread at a time (!Send; see "Threads" above).
        unsafe { result::worker_address(self.inner.raw) }.map(WorkerAddress)
    }

    /// Progresses communication once (`ucp_worker_progress`), running completions and
    /// active-message handlers; returns how many events it processed.
    ///
    /// [`Error::Reentrant`] when called from inside a handler. A handler's panic resumes here.
    pub fn progress(&self) -> Result<u32> {
        self.inner.progress()
    }

    /// The worker's event file descriptor (`ucp_worker_get_efd`; needs
    /// [`ContextOptions::wakeup`]). It belongs to the worker: never close it. Wait for it to
    /// become readable only after [`Worker::arm`] returned `true`.
    pub fn event_fd(&self) -> Result<RawFd> {
        // SAFETY: live worker.
        unsafe { result::worker_efd(self.inner.raw) }
    }

    /// Arms the event fd (`ucp_worker_arm`): `true` when it is safe to sleep on it, `false`
    /// when events are pending and the worker must be progressed first.
    pub fn arm(&self) -> Result<bool> {
        // SAFETY: live worker, used by one thread at a time (!Send; see "Threads" above).
        unsafe { result::worker_arm(self.inner.raw) }
    }

    /// Wakes whoever sleeps on the event fd (`ucp_worker_signal`).
    pub fn signal(&self) -> Result<()> {
        // SAFETY: live worker.
        unsafe { result::worker_signal(self.inner.raw) }
    }

    /// Connects to a peer's worker (`ucp_ep_create`) in `mode`.
    pub fn connect(&self, address: &WorkerAddress, mode: ErrorMode) -> Result<Endpoint> {
        let failure = Box::into_raw(Box::new(AtomicI8::new(NO_FAILURE)));
        let mut field_mask = sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
            | sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
        let err_mode = match mode {
            ErrorMode::Peer => {
                field_mask |= sys::ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLER;
                sys::ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_PEER
            }
            ErrorMode::None => sys::ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_NONE,
        };
        let params = sys::ucp_ep_params_t {
            field_mask: u64::from(field_mask),
            address: address.0.as_ptr().cast(),
            err_mode,
            err_handler: sys::ucp_err_handler_t {
                cb: Some(endpoint_failed),
                arg: failure.cast(),
            },
            ..Default::default()
        };
        // SAFETY: live worker; the address bytes came from a peer's Worker::address (the
        // contract of WorkerAddress::from_bytes) and are read during the call only; the
        // handler's argument lives until the endpoint is closed (see EndpointInner::drop).
        match unsafe { result::ep_create(self.inner.raw, &params) } {
            Ok(raw) => Ok(Endpoint {
                inner: Rc::new(EndpointInner {
                    raw,
                    failure,
                    worker: Rc::clone(&self.inner),
                }),
            }),
            Err(error) => {
                // SAFETY: no endpoint was made, so nothing else holds the pointer.
                drop(unsafe { Box::from_raw(failure) });
                Err(error)
            }
        }
    }

    /// Flushes every endpoint of the worker (`ucp_worker_flush_nbx`).
    pub fn flush(&self) -> Result<Request> {
        let param = sys::ucp_request_param_t::default();
        // SAFETY: live worker.
        let pending = unsafe { result::worker_flush(self.inner.raw, &param) }?;
        Ok(Request::new(
            "ucp_worker_flush_nbx",
            pending,
            &self.inner,
            None,
            Vec::new(),
        ))
    }

    /// Runs `handler` for every active message `id` that arrives, from inside
    /// [`Worker::progress`] (`ucp_worker_set_am_recv_handler` with `UCP_AM_FLAG_WHOLE_MSG`);
    /// replaces the previous handler for `id`. [`Error::Reentrant`] from inside a handler.
    pub fn set_am_handler(
        &self,
        id: u16,
        handler: impl FnMut(AmMessage<'_>) + 'static,
    ) -> Result<()> {
        let slot = Box::into_raw(Box::new(HandlerSlot {
            handler: RefCell::new(Box::new(handler)),
            panic: Rc::clone(&self.inner.panic),
        }));
        self.register_am(id, Some(slot))
    }

    /// Removes the handler for `id`; later messages for it are dropped by UCX.
    pub fn clear_am_handler(&self, id: u16) -> Result<()> {
        self.register_am(id, None)
    }

    fn register_am(&self, id: u16, slot: Option<*mut HandlerSlot>) -> Result<()> {
        let free = |slot: Option<*mut HandlerSlot>| {
            if let Some(slot) = slot {
                // SAFETY: made by Box::into_raw above and not registered with UCX (or no
                // longer: replaced while no progress call runs).
                drop(unsafe { Box::from_raw(slot) });
            }
        };
        if self.inner.in_progress.get() {
            free(slot);
            return Err(Error::Reentrant {
                call: "ucp_worker_set_am_recv_handler",
            });
        }
        let param = sys::ucp_am_handler_param_t {
            field_mask: u64::from(
                sys::ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_ID
                    | sys::ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_FLAGS
                    | sys::ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_CB
                    | sys::ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_ARG,
            ),
            id: u32::from(id),
            flags: sys::ucp_am_cb_flags::UCP_AM_FLAG_WHOLE_MSG,
            cb: slot.map(|_| am_received as AmCallback),
            arg: slot.map_or(ptr::null_mut(), |slot| slot.cast()),
        };
        // SAFETY: live worker; the slot stays allocated until replaced (below, outside any
        // progress call) or the worker is destroyed (WorkerInner::drop).
        if let Err(error) = unsafe { result::worker_set_am_recv_handler(self.inner.raw, &param) } {
            free(slot);
            return Err(error);
        }
        let previous = match slot {
            Some(slot) => self.inner.handlers.borrow_mut().insert(id, slot),
            None => self.inner.handlers.borrow_mut().remove(&id),
        };
        free(previous);
        Ok(())
    }
}

type AmCallback = unsafe extern "C" fn(
    *mut c_void,
    *const c_void,
    usize,
    *mut c_void,
    usize,
    *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t::Type;

/// UCX's active-message callback: calls the slot's handler, keeping any panic for
/// [`Worker::progress`] to resume (unwinding must not cross the C frames).
unsafe extern "C" fn am_received(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const sys::ucp_am_recv_param_t,
) -> sys::ucs_status_t::Type {
    // SAFETY: `arg` is the HandlerSlot registered with this callback, alive while UCX may
    // call it (see Worker::register_am).
    let slot = unsafe { &*arg.cast::<HandlerSlot>() };
    // SAFETY: UCX passes a valid parameter block for the duration of the call.
    let recv_attr = unsafe { param.as_ref() }.map_or(0, |param| param.recv_attr);
    let rendezvous =
        recv_attr & u64::from(sys::ucp_am_recv_attr_t::UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    let bytes = |ptr: *const c_void, len: usize| -> &[u8] {
        if ptr.is_null() || len == 0 {
            &[]
        } else {
            // SAFETY: UCX hands `len` readable bytes at `ptr` for the duration of the call.
            unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
        }
    };
    let message = AmMessage {
        header: bytes(header, header_length),
        data: if rendezvous { &[] } else { bytes(data, length) },
        rendezvous,
    };
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        // Progress cannot re-enter (Worker::progress refuses), so this borrow is the only one.
        if let Ok(mut handler) = slot.handler.try_borrow_mut() {
            handler(message);
        }
    }));
    if let Err(payload) = outcome {
        slot.panic.set(Some(payload));
    }
    // UCS_OK: the data is not kept; UCX releases it (a rendezvous message is dropped).
    sys::ucs_status_t::UCS_OK
}

/// An endpoint's failure cell before UCX reported a failure (`UCS_OK`, which no error
/// callback carries).
const NO_FAILURE: i8 = 0;

/// UCX's endpoint error callback: records the failure status for [`Endpoint::failure`]. UCX
/// may call it from its async thread (transport errors it handles asynchronously), not only
/// from the progress of the endpoint's worker, so the cell is atomic.
unsafe extern "C" fn endpoint_failed(
    arg: *mut c_void,
    _ep: sys::ucp_ep_h,
    status: sys::ucs_status_t::Type,
) {
    if status != NO_FAILURE {
        // SAFETY: `arg` is the endpoint's failure cell, alive until the endpoint is closed
        // (or leaked, where UCX may still report).
        unsafe { &*arg.cast::<AtomicI8>() }.store(status, Ordering::Release);
    }
}

/// How an endpoint treats peer failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorMode {
    /// `UCP_ERR_HANDLING_MODE_PEER`: a lost peer fails the endpoint's requests and is reported
    /// by [`Endpoint::failure`]. Excludes transports that cannot detect it (UCX's posix
    /// shared memory, as NOTES-NATIVE.md observed).
    Peer,
    /// `UCP_ERR_HANDLING_MODE_NONE`: every transport, but a lost peer may go unnoticed.
    None,
}

struct EndpointInner {
    raw: NonNull<sys::ucp_ep>,
    failure: *mut AtomicI8,
    worker: Rc<WorkerInner>,
}

/// How long dropping an endpoint progresses its worker for the close to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

impl Drop for EndpointInner {
    fn drop(&mut self) {
        // SAFETY: the failure cell lives until this function frees it.
        let failed = unsafe { &*self.failure }.load(Ordering::Acquire) != NO_FAILURE;
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_FLAGS,
            // A failed endpoint must be closed by force; a live one is flushed first.
            flags: if failed {
                sys::ucp_ep_close_flags_t::UCP_EP_CLOSE_FLAG_FORCE
            } else {
                0
            },
            ..Default::default()
        };
        // SAFETY: every remote key of this endpoint holds an Rc of it, so all are destroyed;
        // the endpoint is closed once, here.
        let pending = unsafe { result::ep_close(self.raw, &param) };
        let mut finished = true;
        if let Ok(Some(request)) = pending {
            let deadline = Instant::now() + CLOSE_GRACE;
            loop {
                // SAFETY: the request is live until freed below.
                if !matches!(
                    unsafe { result::request_check("ucp_ep_close_nbx", request) },
                    Ok(false)
                ) {
                    break;
                }
                if Instant::now() >= deadline || self.worker.progress().is_err() {
                    finished = false;
                    break;
                }
            }
            // SAFETY: handed back once; UCX finishes an unfinished close internally.
            unsafe { result::request_free(request) };
        }
        if finished {
            // SAFETY: the endpoint is closed, so UCX no longer calls its error handler.
            drop(unsafe { Box::from_raw(self.failure) });
        }
        // Otherwise the cell is leaked: UCX may still report the closing endpoint's failure.
    }
}

/// A connection to a peer's worker (`ucp_ep_h`), closed on drop (flushed first unless it
/// failed; the worker is progressed for up to a second for that).
#[derive(Clone)]
pub struct Endpoint {
    inner: Rc<EndpointInner>,
}

impl Endpoint {
    /// A request of this endpoint's worker that keeps `rkey` and `buffers` until it finishes.
    fn request(
        &self,
        call: &'static str,
        pending: Option<NonNull<c_void>>,
        rkey: Option<&RemoteKey>,
        buffers: Vec<Vec<u8>>,
    ) -> Request {
        let rkey = rkey.map(|key| Rc::clone(&key.inner));
        Request::new(call, pending, &self.inner.worker, rkey, buffers)
    }

    /// The peer-failure status UCX reported for this endpoint ([`ErrorMode::Peer`]), if any.
    pub fn failure(&self) -> Option<Error> {
        // SAFETY: the failure cell lives as long as the endpoint.
        let code = unsafe { &*self.inner.failure }.load(Ordering::Acquire);
        (code != NO_FAILURE).then(|| result::status_error("endpoint error handler", code))
    }

    /// What UCX prints about the endpoint (`ucp_ep_print_info`): one `lane[N]` line per
    /// transport and device it selected, with what each lane carries (`am`, `rma_bw`, ...).
    pub fn info(&self) -> Result<String> {
        // SAFETY: live endpoint; its worker is used by one thread at a time (!Send).
        unsafe { result::ep_info(self.inner.raw) }
    }

    /// Unpacks a peer's packed remote key (`ucp_ep_rkey_unpack`) after checking that it is
    /// well formed; [`Error::InvalidRemoteKey`] when it is not.
    pub fn unpack_rkey(&self, packed: &[u8]) -> Result<RemoteKey> {
        check_packed_rkey(packed)?;
        // SAFETY: live endpoint; the buffer's structure was checked to lie within its length,
        // and UCX reads no further than that structure says.
        let raw = unsafe { result::ep_rkey_unpack(self.inner.raw, packed) }?;
        Ok(RemoteKey {
            inner: Rc::new(RemoteKeyInner {
                raw,
                _endpoint: Rc::clone(&self.inner),
            }),
        })
    }

    /// Writes `data` to `remote` in the peer's region (`ucp_put_nbx`). The request owns `data`
    /// until it completes ([`Request::into_buffers`] gives it back).
    pub fn put(&self, data: Vec<u8>, remote: u64, rkey: &RemoteKey) -> Result<Request> {
        // SAFETY: the Vec's heap buffer moves into the request with it and is freed only
        // after the request completes (or leaked if the request is dropped pending).
        let request =
            unsafe { self.put_raw(data.as_ptr(), data.len(), MemoryType::Host, remote, rkey) }?;
        Ok(request.keeping(data))
    }

    /// Reads `buffer.len()` bytes at `remote` in the peer's region into `buffer`
    /// (`ucp_get_nbx`); [`Request::into_buffers`] gives it back filled.
    pub fn get(&self, mut buffer: Vec<u8>, remote: u64, rkey: &RemoteKey) -> Result<Request> {
        let (local, length) = (buffer.as_mut_ptr(), buffer.len());
        // SAFETY: as in `put`; nothing else reaches the Vec while the request owns it.
        let request = unsafe { self.get_raw(local, length, MemoryType::Host, remote, rkey) }?;
        Ok(request.keeping(buffer))
    }

    /// `ucp_put_nbx` from caller-managed memory of type `memory` (for
    /// [`MemoryType::Cuda`], `local` is a `CUdeviceptr` and that device's context is current
    /// on this thread).
    ///
    /// # Safety
    /// `local` is readable for `length` bytes until the request reports completion. Dropping
    /// the request while it is pending does not end UCX's use of the memory: it must then
    /// stay valid for as long as the worker lives.
    pub unsafe fn put_raw(
        &self,
        local: *const u8,
        length: usize,
        memory: MemoryType,
        remote: u64,
        rkey: &RemoteKey,
    ) -> Result<Request> {
        let param = memory.request_param();
        // SAFETY: live endpoint and key (unpacked on an endpoint of this worker: the key
        // holds its endpoint); memory per the caller's contract.
        let pending = unsafe {
            result::put(
                self.inner.raw,
                local,
                length,
                remote,
                rkey.inner.raw,
                &param,
            )
        }?;
        Ok(self.request("ucp_put_nbx", pending, Some(rkey), Vec::new()))
    }

    /// `ucp_get_nbx` into caller-managed memory of type `memory` (as [`Endpoint::put_raw`]).
    ///
    /// # Safety
    /// As [`Endpoint::put_raw`], with `local` writable and not otherwise accessed.
    pub unsafe fn get_raw(
        &self,
        local: *mut u8,
        length: usize,
        memory: MemoryType,
        remote: u64,
        rkey: &RemoteKey,
    ) -> Result<Request> {
        let param = memory.request_param();
        // SAFETY: as in put_raw.
        let pending = unsafe {
            result::get(
                self.inner.raw,
                local,
                length,
                remote,
                rkey.inner.raw,
                &param,
            )
        }?;
        Ok(self.request("ucp_get_nbx", pending, Some(rkey), Vec::new()))
    }

    /// Completes when every operation posted on this endpoint before it has completed at the
    /// peer (`ucp_ep_flush_nbx`).
    pub fn flush(&self) -> Result<Request> {
        let param = sys::ucp_request_param_t::default();
        // SAFETY: live endpoint.
        let pending = unsafe { result::ep_flush(self.inner.raw, &param) }?;
        Ok(self.request("ucp_ep_flush_nbx", pending, None, Vec::new()))
    }

    /// Sends active message `id` (`ucp_am_send_nbx`, eager only), owning `header` and `data`
    /// until it completes. Messages on one endpoint arrive in order, after operations the
    /// sender flushed before sending.
    pub fn am_send(&self, id: u16, header: Vec<u8>, data: Vec<u8>) -> Result<Request> {
        let param = sys::ucp_request_param_t {
            op_attr_mask: sys::ucp_op_attr_t::UCP_OP_ATTR_FIELD_FLAGS,
            flags: sys::ucp_send_am_flags::UCP_AM_SEND_FLAG_EAGER,
            ..Default::default()
        };
        // SAFETY: live endpoint; both Vecs move into the request with their heap buffers
        // and live until it completes (or are leaked if it is dropped pending).
        let pending = unsafe { result::am_send(self.inner.raw, id, &header, &data, &param) }?;
        Ok(self.request("ucp_am_send_nbx", pending, None, vec![header, data]))
    }
}

/// Checks that a packed remote key lies within its length before UCX parses it (UCX 1.13's
/// `ucp_ep_rkey_unpack` takes no length): an 8-byte map of memory domains, a memory-type
/// byte, then for each domain in the map a size byte and that many bytes. Anything after
/// that (UCX's optional system-device data) is left to UCX.
fn check_packed_rkey(packed: &[u8]) -> Result<()> {
    let invalid = |reason: String| Err(Error::InvalidRemoteKey { reason });
    let Some((map, rest)) = packed.split_first_chunk::<8>() else {
        return invalid(format!(
            "{} bytes, shorter than its 9-byte header",
            packed.len()
        ));
    };
    let Some((&memory_type, mut rest)) = rest.split_first() else {
        return invalid("no memory-type byte".into());
    };
    if u32::from(memory_type) >= sys::ucs_memory_type::UCS_MEMORY_TYPE_LAST {
        return invalid(format!("unknown memory type {memory_type}"));
    }
    let map = u64::from_ne_bytes(*map);
    for domain in 0..map.count_ones() {
        let Some((&size, after)) = rest.split_first() else {
            return invalid(format!(
                "ends before memory domain {domain} of {}",
                map.count_ones()
            ));
        };
        let Some(after) = after.get(usize::from(size)..) else {
            return invalid(format!(
                "memory domain {domain} claims {size} bytes, {} remain",
                after.len()
            ));
        };
        rest = after;
    }
    Ok(())
}

struct RemoteKeyInner {
    raw: NonNull<sys::ucp_rkey>,
    _endpoint: Rc<EndpointInner>,
}

impl Drop for RemoteKeyInner {
    fn drop(&mut self) {
        // SAFETY: every request that used the key holds an Rc of it, so none is pending (a
        // request dropped pending leaks its Rc); the endpoint is still open (held by the
        // Rc field, dropped after this); destroyed once, here.
        unsafe { result::rkey_destroy(self.raw) }
    }
}

/// A peer's remote key unpacked on an endpoint (`ucp_rkey_h`), destroyed on drop.
#[derive(Clone)]
pub struct RemoteKey {
    inner: Rc<RemoteKeyInner>,
}

enum RequestState {
    Pending(NonNull<c_void>),
    Done(Result<()>),
}

/// A non-blocking UCX operation: pending until [`Request::poll`] sees it finish.
///
/// Dropping a pending request cancels it (`ucp_request_cancel`; UCX cannot take back a posted
/// get or put, so those run on) and hands it back to UCX, and leaks what it lent UCX (its
/// buffers and its remote key, and through the key its endpoint, worker and context), since
/// UCX may still use them. Wait for completion to get them back.
#[must_use = "a dropped pending request leaks its buffers and remote key"]
pub struct Request {
    call: &'static str,
    state: RequestState,
    worker: Rc<WorkerInner>,
    rkey: Option<Rc<RemoteKeyInner>>,
    buffers: Vec<Vec<u8>>,
}

impl Request {
    fn new(
        call: &'static str,
        pending: Option<NonNull<c_void>>,
        worker: &Rc<WorkerInner>,
        rkey: Option<Rc<RemoteKeyInner>>,
        buffers: Vec<Vec<u8>>,
    ) -> Self {
        Request {
            call,
            state: match pending {
                Some(request) => RequestState::Pending(request),
                None => RequestState::Done(Ok(())),
            },
            worker: Rc::clone(worker),
            rkey,
            buffers,
        }
    }

    fn keeping(mut self, buffer: Vec<u8>) -> Self {
        self.buffers.push(buffer);
        self
    }

    /// The outcome once the operation has finished, `None` while it is in progress. Does not
    /// progress the worker.
    pub fn poll(&mut self) -> Option<Result<()>> {
        if let RequestState::Pending(request) = self.state {
            // SAFETY: the request is live until freed here, once.
            let outcome = match unsafe { result::request_check(self.call, request) } {
                Ok(false) => return None,
                Ok(true) => Ok(()),
                Err(error) => Err(error),
            };
            // SAFETY: finished, and not used again (the state no longer holds it).
            unsafe { result::request_free(request) };
            self.state = RequestState::Done(outcome);
        }
        match &self.state {
            RequestState::Done(outcome) => Some(outcome.clone()),
            RequestState::Pending(_) => None,
        }
    }

    /// Progresses the request's worker until the request finishes or `timeout` passes
    /// (`None` then). Another worker the operation needs (the peer's, in one process) is not
    /// progressed.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Result<()>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.poll() {
                return Ok(Some(outcome));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.worker.progress()?;
        }
    }

    /// Asks UCX to cancel the operation (`ucp_request_cancel`); it then finishes with
    /// `UCS_ERR_CANCELED` or, if it had already got that far, successfully. UCX does not
    /// cancel a posted get or put.
    pub fn cancel(&mut self) {
        if let RequestState::Pending(request) = self.state {
            // SAFETY: live request of this worker.
            unsafe { result::request_cancel(self.worker.raw, request) }
        }
    }

    /// The buffers the request owned (the data of a [`Endpoint::get`] or [`Endpoint::put`],
    /// the header and data of an [`Endpoint::am_send`]) once it has finished; the request
    /// itself while it has not.
    pub fn into_buffers(mut self) -> std::result::Result<Vec<Vec<u8>>, Self> {
        if self.poll().is_none() {
            return Err(self);
        }
        Ok(std::mem::take(&mut self.buffers))
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.poll().is_some() {
            return;
        }
        if let RequestState::Pending(request) = self.state {
            // SAFETY: live request of this worker, handed back once; UCX finishes it
            // internally and calls nothing of ours.
            unsafe {
                result::request_cancel(self.worker.raw, request);
                result::request_free(request);
            }
            // UCX may still read or write the buffers and use the key: never free them.
            std::mem::forget(std::mem::take(&mut self.buffers));
            std::mem::forget(self.rkey.take());
        }
    }
}

/// The UCX library this process loaded, as `(major, minor, release)`.
pub fn version() -> (u32, u32, u32) {
    result::version()
}
