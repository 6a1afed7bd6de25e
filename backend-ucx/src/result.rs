//! Thin wrappers over [`crate::sys`]: each UCP call that reports a status returns a
//! `Result<_, Error>`, and request pointers (`ucs_status_ptr_t`) are split by
//! [`request_pointer`] into "done", "pending request" and "error".
//!
//! Every function is `unsafe` and says in its `# Safety` section what the caller must uphold;
//! the RAII types in [`crate::safe`] are the callers.

use std::ffi::{c_void, CStr};
use std::ptr::{self, NonNull};

use crate::error::Error;
use crate::sys;
use crate::sys::ucs_status_t as status;

/// The result of the crate's UCX calls.
pub type Result<T> = std::result::Result<T, Error>;

/// The symbolic name of a `ucs_status_t` value, checked against the header at build time.
pub fn status_name(code: sys::ucs_status_t::Type) -> &'static str {
    macro_rules! names {
        ($($name:ident),* $(,)?) => {
            match code {
                $(status::$name => stringify!($name),)*
                _ => "UCS_ERR_(unnamed)",
            }
        };
    }
    names!(
        UCS_OK,
        UCS_INPROGRESS,
        UCS_ERR_NO_MESSAGE,
        UCS_ERR_NO_RESOURCE,
        UCS_ERR_IO_ERROR,
        UCS_ERR_NO_MEMORY,
        UCS_ERR_INVALID_PARAM,
        UCS_ERR_UNREACHABLE,
        UCS_ERR_INVALID_ADDR,
        UCS_ERR_NOT_IMPLEMENTED,
        UCS_ERR_MESSAGE_TRUNCATED,
        UCS_ERR_NO_PROGRESS,
        UCS_ERR_BUFFER_TOO_SMALL,
        UCS_ERR_NO_ELEM,
        UCS_ERR_SOME_CONNECTS_FAILED,
        UCS_ERR_NO_DEVICE,
        UCS_ERR_BUSY,
        UCS_ERR_CANCELED,
        UCS_ERR_SHMEM_SEGMENT,
        UCS_ERR_ALREADY_EXISTS,
        UCS_ERR_OUT_OF_RANGE,
        UCS_ERR_TIMED_OUT,
        UCS_ERR_EXCEEDS_LIMIT,
        UCS_ERR_UNSUPPORTED,
        UCS_ERR_REJECTED,
        UCS_ERR_NOT_CONNECTED,
        UCS_ERR_CONNECTION_RESET,
        UCS_ERR_ENDPOINT_TIMEOUT,
    )
}

/// The [`Error::Status`] for `code` returned by `call`.
pub fn status_error(call: &'static str, code: sys::ucs_status_t::Type) -> Error {
    // SAFETY: ucs_status_string accepts any value and returns a NUL-terminated string that
    // lives as long as the library (a static table entry, or a static buffer for unknown
    // codes, which is copied out at once).
    let message = unsafe { CStr::from_ptr(sys::ucs_status_string(code)) }
        .to_string_lossy()
        .into_owned();
    Error::Status {
        call,
        code,
        name: status_name(code),
        message,
    }
}

/// `Ok(())` for `UCS_OK`, the error otherwise (`UCS_INPROGRESS` included: callers of
/// status-returning functions never expect it).
pub fn check(call: &'static str, code: sys::ucs_status_t::Type) -> Result<()> {
    if code == status::UCS_OK {
        Ok(())
    } else {
        Err(status_error(call, code))
    }
}

/// `UCS_PTR_IS_ERR`: the pointer carries an error status.
pub fn ptr_is_err(ptr: sys::ucs_status_ptr_t) -> bool {
    (ptr as usize) >= (status::UCS_ERR_LAST as isize as usize)
}

/// `UCS_PTR_IS_PTR`: the pointer is a request handle (neither NULL nor an error).
pub fn ptr_is_ptr(ptr: sys::ucs_status_ptr_t) -> bool {
    (ptr as usize).wrapping_sub(1) < (status::UCS_ERR_LAST as isize as usize).wrapping_sub(1)
}

/// `UCS_PTR_RAW_STATUS`: the status a non-request pointer carries.
pub fn ptr_raw_status(ptr: sys::ucs_status_ptr_t) -> sys::ucs_status_t::Type {
    // The low byte of the sign-extended status: the truncation is the C macro's cast.
    (ptr as isize) as sys::ucs_status_t::Type
}

/// What a constructor-style call made: its out-pointer when it returned `UCS_OK` with one,
/// the error otherwise (a NULL object is reported as `UCS_ERR_NO_MEMORY`).
fn made<T>(
    call: &'static str,
    code: sys::ucs_status_t::Type,
    object: *mut T,
) -> Result<NonNull<T>> {
    check(call, code)?;
    NonNull::new(object).ok_or_else(|| status_error(call, status::UCS_ERR_NO_MEMORY))
}

/// Splits what a `*_nbx` call returned: `Ok(None)` when the operation completed at once
/// (NULL), `Ok(Some(request))` when it is pending, `Err` when it failed.
pub fn request_pointer(
    call: &'static str,
    ptr: sys::ucs_status_ptr_t,
) -> Result<Option<NonNull<c_void>>> {
    if ptr.is_null() {
        Ok(None)
    } else if ptr_is_err(ptr) {
        Err(status_error(call, ptr_raw_status(ptr)))
    } else {
        Ok(NonNull::new(ptr))
    }
}

/// `ucp_config_read(NULL, NULL, ..)`: UCX's configuration from the environment (`UCX_TLS`,
/// `UCX_NET_DEVICES`, ...), read by UCX itself.
///
/// # Safety
/// The returned pointer must be released once with [`config_release`].
pub unsafe fn config_read() -> Result<NonNull<sys::ucp_config_t>> {
    let mut config = ptr::null_mut();
    // SAFETY: NULL prefix and file name mean "defaults"; `config` is a valid out-pointer.
    let code = unsafe { sys::ucp_config_read(ptr::null(), ptr::null(), &mut config) };
    made("ucp_config_read", code, config)
}

/// `ucp_config_release`.
///
/// # Safety
/// `config` came from [`config_read`] and is not used afterwards.
pub unsafe fn config_release(config: NonNull<sys::ucp_config_t>) {
    // SAFETY: the caller passes a live configuration it owns.
    unsafe { sys::ucp_config_release(config.as_ptr()) }
}

/// `ucp_init` (the header's inline wrapper around `ucp_init_version`, with the API version the
/// bindings were generated from).
///
/// # Safety
/// `params` is fully initialised for its `field_mask` (any name pointer NUL-terminated and
/// alive for the call); `config` is live. The context must be released with [`cleanup`].
pub unsafe fn init(
    params: &sys::ucp_params_t,
    config: NonNull<sys::ucp_config_t>,
) -> Result<NonNull<sys::ucp_context>> {
    let mut context = ptr::null_mut();
    // SAFETY: per the caller's contract; `context` is a valid out-pointer.
    let code = unsafe {
        sys::ucp_init_version(
            sys::UCP_API_MAJOR,
            sys::UCP_API_MINOR,
            params,
            config.as_ptr(),
            &mut context,
        )
    };
    made("ucp_init", code, context)
}

/// `ucp_cleanup`.
///
/// # Safety
/// Every worker and memory mapping of `context` is gone; `context` is not used afterwards.
pub unsafe fn cleanup(context: NonNull<sys::ucp_context>) {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_cleanup(context.as_ptr()) }
}

/// `ucp_worker_create`.
///
/// # Safety
/// `context` is live and outlives the worker; `params` is initialised for its `field_mask`.
pub unsafe fn worker_create(
    context: NonNull<sys::ucp_context>,
    params: &sys::ucp_worker_params_t,
) -> Result<NonNull<sys::ucp_worker>> {
    let mut worker = ptr::null_mut();
    // SAFETY: per the caller's contract; `worker` is a valid out-pointer.
    let code = unsafe { sys::ucp_worker_create(context.as_ptr(), params, &mut worker) };
    made("ucp_worker_create", code, worker)
}

/// `ucp_worker_destroy`.
///
/// # Safety
/// Every endpoint of `worker` is closed; `worker` is not used afterwards.
pub unsafe fn worker_destroy(worker: NonNull<sys::ucp_worker>) {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_worker_destroy(worker.as_ptr()) }
}

/// `ucp_worker_get_address`, copied out and released at once.
///
/// # Safety
/// `worker` is live and not used concurrently.
pub unsafe fn worker_address(worker: NonNull<sys::ucp_worker>) -> Result<Vec<u8>> {
    let mut address = ptr::null_mut();
    let mut length = 0usize;
    // SAFETY: live worker; valid out-pointers.
    check("ucp_worker_get_address", unsafe {
        sys::ucp_worker_get_address(worker.as_ptr(), &mut address, &mut length)
    })?;
    if address.is_null() {
        return Err(status_error(
            "ucp_worker_get_address",
            status::UCS_ERR_NO_MEMORY,
        ));
    }
    // SAFETY: UCX returned `length` readable bytes at `address`, valid until released below.
    let bytes = unsafe { std::slice::from_raw_parts(address.cast::<u8>(), length) }.to_vec();
    // SAFETY: the address came from this worker and is released once.
    unsafe { sys::ucp_worker_release_address(worker.as_ptr(), address) };
    Ok(bytes)
}

/// `ucp_worker_progress`: the number of events it processed.
///
/// # Safety
/// `worker` is live, not used concurrently, and this is not called from a UCX callback.
pub unsafe fn worker_progress(worker: NonNull<sys::ucp_worker>) -> u32 {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_worker_progress(worker.as_ptr()) }
}

/// `ucp_worker_get_efd`: the worker's event file descriptor (needs `UCP_FEATURE_WAKEUP`).
///
/// # Safety
/// `worker` is live. The descriptor belongs to the worker: never close it.
pub unsafe fn worker_efd(worker: NonNull<sys::ucp_worker>) -> Result<i32> {
    let mut fd = -1;
    // SAFETY: live worker; valid out-pointer.
    check("ucp_worker_get_efd", unsafe {
        sys::ucp_worker_get_efd(worker.as_ptr(), &mut fd)
    })?;
    Ok(fd)
}

/// `ucp_worker_arm`: `Ok(true)` when armed (safe to wait on the event fd), `Ok(false)` on
/// `UCS_ERR_BUSY` (events are pending: progress again first).
///
/// # Safety
/// `worker` is live and not used concurrently.
pub unsafe fn worker_arm(worker: NonNull<sys::ucp_worker>) -> Result<bool> {
    // SAFETY: per the caller's contract.
    match unsafe { sys::ucp_worker_arm(worker.as_ptr()) } {
        status::UCS_OK => Ok(true),
        status::UCS_ERR_BUSY => Ok(false),
        code => Err(status_error("ucp_worker_arm", code)),
    }
}

/// `ucp_worker_signal`: wakes a thread waiting on the worker's event fd.
///
/// # Safety
/// `worker` is live. UCX allows this call from any thread.
pub unsafe fn worker_signal(worker: NonNull<sys::ucp_worker>) -> Result<()> {
    // SAFETY: per the caller's contract.
    check("ucp_worker_signal", unsafe {
        sys::ucp_worker_signal(worker.as_ptr())
    })
}

/// `ucp_mem_map`.
///
/// # Safety
/// `context` is live and outlives the mapping; `params` describes memory that stays valid
/// until [`mem_unmap`].
pub unsafe fn mem_map(
    context: NonNull<sys::ucp_context>,
    params: &sys::ucp_mem_map_params_t,
) -> Result<NonNull<sys::ucp_mem>> {
    let mut memh = ptr::null_mut();
    // SAFETY: per the caller's contract; valid out-pointer.
    let code = unsafe { sys::ucp_mem_map(context.as_ptr(), params, &mut memh) };
    made("ucp_mem_map", code, memh)
}

/// `ucp_mem_unmap`.
///
/// # Safety
/// `memh` came from [`mem_map`] on `context` and is not used afterwards.
pub unsafe fn mem_unmap(
    context: NonNull<sys::ucp_context>,
    memh: NonNull<sys::ucp_mem>,
) -> Result<()> {
    // SAFETY: per the caller's contract.
    check("ucp_mem_unmap", unsafe {
        sys::ucp_mem_unmap(context.as_ptr(), memh.as_ptr())
    })
}

/// `ucp_rkey_pack`, copied into a `Vec` and the UCX buffer released at once.
///
/// # Safety
/// `memh` is a live mapping of `context`.
pub unsafe fn rkey_pack(
    context: NonNull<sys::ucp_context>,
    memh: NonNull<sys::ucp_mem>,
) -> Result<Vec<u8>> {
    let mut buffer = ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: live context and mapping; valid out-pointers.
    check("ucp_rkey_pack", unsafe {
        sys::ucp_rkey_pack(context.as_ptr(), memh.as_ptr(), &mut buffer, &mut size)
    })?;
    if buffer.is_null() {
        return Err(status_error("ucp_rkey_pack", status::UCS_ERR_NO_MEMORY));
    }
    // SAFETY: UCX returned `size` readable bytes at `buffer`, valid until released below.
    let bytes = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), size) }.to_vec();
    // SAFETY: the buffer came from ucp_rkey_pack and is released once.
    unsafe { sys::ucp_rkey_buffer_release(buffer) };
    Ok(bytes)
}

/// `ucp_ep_rkey_unpack`.
///
/// # Safety
/// `ep` is live; `buffer` is a well-formed packed key (UCX reads it without a length: see
/// [`crate::safe::Endpoint::unpack_rkey`], which checks its structure first). The key must be
/// destroyed with [`rkey_destroy`] before `ep` is closed.
pub unsafe fn ep_rkey_unpack(
    ep: NonNull<sys::ucp_ep>,
    buffer: &[u8],
) -> Result<NonNull<sys::ucp_rkey>> {
    let mut rkey = ptr::null_mut();
    // SAFETY: per the caller's contract; valid out-pointer.
    let code = unsafe { sys::ucp_ep_rkey_unpack(ep.as_ptr(), buffer.as_ptr().cast(), &mut rkey) };
    made("ucp_ep_rkey_unpack", code, rkey)
}

/// `ucp_rkey_destroy`.
///
/// # Safety
/// No outstanding operation uses `rkey`; its endpoint is still open; not used afterwards.
pub unsafe fn rkey_destroy(rkey: NonNull<sys::ucp_rkey>) {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_rkey_destroy(rkey.as_ptr()) }
}

/// `ucp_ep_create`.
///
/// # Safety
/// `worker` is live and outlives the endpoint; `params` is initialised for its `field_mask`
/// (the address, error handler and its argument valid as UCX documents).
pub unsafe fn ep_create(
    worker: NonNull<sys::ucp_worker>,
    params: &sys::ucp_ep_params_t,
) -> Result<NonNull<sys::ucp_ep>> {
    let mut ep = ptr::null_mut();
    // SAFETY: per the caller's contract; valid out-pointer.
    let code = unsafe { sys::ucp_ep_create(worker.as_ptr(), params, &mut ep) };
    made("ucp_ep_create", code, ep)
}

/// `ucp_ep_close_nbx`.
///
/// # Safety
/// `ep` is live and not used afterwards; its remote keys are destroyed.
pub unsafe fn ep_close(
    ep: NonNull<sys::ucp_ep>,
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_ep_close_nbx", unsafe {
        sys::ucp_ep_close_nbx(ep.as_ptr(), param)
    })
}

/// `ucp_put_nbx`.
///
/// # Safety
/// `ep` and `rkey` (unpacked on `ep`) are live; `local` is readable for `length` bytes until
/// the returned request completes; `remote` lies in the region `rkey` describes.
pub unsafe fn put(
    ep: NonNull<sys::ucp_ep>,
    local: *const u8,
    length: usize,
    remote: u64,
    rkey: NonNull<sys::ucp_rkey>,
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_put_nbx", unsafe {
        sys::ucp_put_nbx(
            ep.as_ptr(),
            local.cast(),
            length,
            remote,
            rkey.as_ptr(),
            param,
        )
    })
}

/// `ucp_get_nbx`.
///
/// # Safety
/// As [`put`], with `local` writable (and not otherwise accessed) until the request completes.
pub unsafe fn get(
    ep: NonNull<sys::ucp_ep>,
    local: *mut u8,
    length: usize,
    remote: u64,
    rkey: NonNull<sys::ucp_rkey>,
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_get_nbx", unsafe {
        sys::ucp_get_nbx(
            ep.as_ptr(),
            local.cast(),
            length,
            remote,
            rkey.as_ptr(),
            param,
        )
    })
}

/// `ucp_ep_flush_nbx`: completes when every operation posted on `ep` before it has completed
/// remotely.
///
/// # Safety
/// `ep` is live.
pub unsafe fn ep_flush(
    ep: NonNull<sys::ucp_ep>,
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_ep_flush_nbx", unsafe {
        sys::ucp_ep_flush_nbx(ep.as_ptr(), param)
    })
}

/// `ucp_worker_flush_nbx`: as [`ep_flush`] for every endpoint of the worker.
///
/// # Safety
/// `worker` is live.
pub unsafe fn worker_flush(
    worker: NonNull<sys::ucp_worker>,
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_worker_flush_nbx", unsafe {
        sys::ucp_worker_flush_nbx(worker.as_ptr(), param)
    })
}

/// `ucp_am_send_nbx`.
///
/// # Safety
/// `ep` is live; `header` and `data` stay readable until the returned request completes
/// (UCX 1.13 may keep pointing at the header as well as the data).
pub unsafe fn am_send(
    ep: NonNull<sys::ucp_ep>,
    id: u16,
    header: &[u8],
    data: &[u8],
    param: &sys::ucp_request_param_t,
) -> Result<Option<NonNull<c_void>>> {
    // SAFETY: per the caller's contract.
    request_pointer("ucp_am_send_nbx", unsafe {
        sys::ucp_am_send_nbx(
            ep.as_ptr(),
            u32::from(id),
            header.as_ptr().cast(),
            header.len(),
            data.as_ptr().cast(),
            data.len(),
            param,
        )
    })
}

/// `ucp_worker_set_am_recv_handler`.
///
/// # Safety
/// `worker` is live; `param.cb` may be called, with `param.arg`, from every progress call of
/// the worker until it is replaced or the worker destroyed, so `arg` must stay valid that long.
pub unsafe fn worker_set_am_recv_handler(
    worker: NonNull<sys::ucp_worker>,
    param: &sys::ucp_am_handler_param_t,
) -> Result<()> {
    // SAFETY: per the caller's contract.
    check("ucp_worker_set_am_recv_handler", unsafe {
        sys::ucp_worker_set_am_recv_handler(worker.as_ptr(), param)
    })
}

/// `ucp_request_check_status`: `Ok(true)` when completed successfully, `Ok(false)` while in
/// progress, the error it completed with otherwise.
///
/// `call` names the operation that made the request, for the error.
///
/// # Safety
/// `request` is a live request handle (not yet freed).
pub unsafe fn request_check(call: &'static str, request: NonNull<c_void>) -> Result<bool> {
    // SAFETY: per the caller's contract.
    match unsafe { sys::ucp_request_check_status(request.as_ptr()) } {
        status::UCS_OK => Ok(true),
        status::UCS_INPROGRESS => Ok(false),
        code => Err(status_error(call, code)),
    }
}

/// `ucp_request_cancel`.
///
/// # Safety
/// `request` is live and belongs to `worker`.
pub unsafe fn request_cancel(worker: NonNull<sys::ucp_worker>, request: NonNull<c_void>) {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_request_cancel(worker.as_ptr(), request.as_ptr()) }
}

/// `ucp_request_free`: hands the request back to UCX, which finishes it internally if it is
/// still in progress.
///
/// # Safety
/// `request` is live and not used afterwards.
pub unsafe fn request_free(request: NonNull<c_void>) {
    // SAFETY: per the caller's contract.
    unsafe { sys::ucp_request_free(request.as_ptr()) }
}

/// What a `ucp_*_print_info` call writes, captured through an in-memory stream
/// (`open_memstream`): `print` gets the stream, and the text it wrote comes back.
///
/// # Safety
/// `print` writes only through the stream it is given and does not close it.
unsafe fn printed(call: &'static str, print: impl FnOnce(*mut sys::FILE)) -> Result<String> {
    let mut buffer: *mut libc::c_char = ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: two valid out-pointers; the stream is closed below, once.
    let stream = unsafe { libc::open_memstream(&mut buffer, &mut size) };
    if stream.is_null() {
        return Err(status_error(call, status::UCS_ERR_NO_MEMORY));
    }
    // bindgen's FILE and libc's are the same C type (glibc's struct _IO_FILE), named twice.
    print(stream.cast::<sys::FILE>());
    // SAFETY: the stream is live and closed once; closing sets `buffer` and `size` to the
    // text written.
    let closed = unsafe { libc::fclose(stream) };
    if buffer.is_null() {
        return Err(status_error(call, status::UCS_ERR_NO_MEMORY));
    }
    let text = if closed == 0 {
        // SAFETY: after fclose, `buffer` holds `size` bytes written to the stream.
        let bytes = unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), size) };
        Ok(String::from_utf8_lossy(bytes).into_owned())
    } else {
        Err(status_error(call, status::UCS_ERR_IO_ERROR))
    };
    // SAFETY: open_memstream's buffer is the caller's to free with free(3), once.
    unsafe { libc::free(buffer.cast()) };
    text
}

/// `ucp_context_print_info`: the context's components, memory domains and the resources
/// (transport/device pairs) its configuration enabled, as UCX prints them.
///
/// # Safety
/// `context` is live.
pub unsafe fn context_info(context: NonNull<sys::ucp_context>) -> Result<String> {
    // SAFETY: live context (the caller's contract); the stream is live during the call.
    unsafe {
        printed("ucp_context_print_info", |stream| {
            sys::ucp_context_print_info(context.as_ptr(), stream)
        })
    }
}

/// `ucp_context_query` for `UCP_ATTR_FIELD_MEMORY_TYPES`: a bit `1 << t` for every memory
/// type `t` (`ucs_memory_type_t`) some memory domain of the context can detect.
///
/// # Safety
/// `context` is live.
pub unsafe fn context_memory_types(context: NonNull<sys::ucp_context>) -> Result<u64> {
    let mut attributes = sys::ucp_context_attr_t {
        field_mask: u64::from(sys::ucp_context_attr_field::UCP_ATTR_FIELD_MEMORY_TYPES),
        ..Default::default()
    };
    // SAFETY: live context; UCX writes only the fields the mask names into the struct.
    check("ucp_context_query", unsafe {
        sys::ucp_context_query(context.as_ptr(), &mut attributes)
    })?;
    Ok(attributes.memory_types)
}

/// `ucp_config_print` with `UCS_CONFIG_PRINT_CONFIG`: one `UCX_NAME=value` line per setting,
/// with the values in force (defaults, configuration files and the environment).
///
/// # Safety
/// `config` is live.
pub unsafe fn config_print(config: NonNull<sys::ucp_config_t>) -> Result<String> {
    // SAFETY: live configuration (the caller's contract); the stream is live during the call.
    unsafe {
        printed("ucp_config_print", |stream| {
            sys::ucp_config_print(
                config.as_ptr(),
                stream,
                ptr::null(),
                sys::ucs_config_print_flags_t::UCS_CONFIG_PRINT_CONFIG,
            )
        })
    }
}

/// `ucp_ep_print_info`: the endpoint's lanes (the transport and device each uses, and for
/// what) and its protocol thresholds, as UCX prints them.
///
/// # Safety
/// `ep` is live and its worker is not used concurrently.
pub unsafe fn ep_info(ep: NonNull<sys::ucp_ep>) -> Result<String> {
    // SAFETY: live endpoint (the caller's contract); the stream is live during the call.
    unsafe {
        printed("ucp_ep_print_info", |stream| {
            sys::ucp_ep_print_info(ep.as_ptr(), stream)
        })
    }
}

/// `ucs_log_push_handler`: `handler` sees every log message UCX dispatches from now on, before
/// the handlers pushed earlier (UCX's own, which prints to `UCX_LOG_FILE`, standard output by
/// default); a handler returning `UCS_LOG_FUNC_RC_STOP` ends the message there.
///
/// # Safety
/// `handler` may be called from any thread, at any time, for the life of the process, and
/// must not unwind.
pub unsafe fn log_push_handler(handler: sys::ucs_log_func_t) {
    // SAFETY: per the caller's contract; UCX keeps the function pointer only.
    unsafe { sys::ucs_log_push_handler(handler) }
}

/// The UCX library's version (`ucp_get_version`), as `(major, minor, release)`.
pub fn version() -> (u32, u32, u32) {
    let (mut major, mut minor, mut release) = (0, 0, 0);
    // SAFETY: three valid out-pointers; the call has no other precondition.
    unsafe { sys::ucp_get_version(&mut major, &mut minor, &mut release) };
    (major, minor, release)
}
