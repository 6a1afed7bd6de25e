//! Generates the UCP bindings for `ferry_backend_ucx::sys`.
//!
//! 1. Asks the `pkg-config` binary for UCX (`pkg-config --cflags --libs ucx`).
//! 2. Runs bindgen on `wrapper.h` (`<ucp/api/ucp.h>`), allowlisting only what the crate uses,
//!    into `$OUT_DIR/ucp_bindings.rs`, and links `libucp`.
//!
//! Where either step cannot run (no pkg-config, no UCX, no libclang) or `FERRY_UCX_DISABLE=1`
//! is set, it prints a warning and sets `cfg(ferry_ucx_missing)`: the crate still compiles, and
//! `Context::new` returns `Error::NotInstalled` (install with `scripts/install-ucx.sh`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Functions the safe layer calls; nothing else of UCP's API is generated.
const FUNCTIONS: &[&str] = &[
    "ucp_config_read",
    "ucp_config_release",
    "ucp_init_version",
    "ucp_cleanup",
    "ucp_get_version",
    "ucp_worker_create",
    "ucp_worker_destroy",
    "ucp_worker_progress",
    "ucp_worker_get_efd",
    "ucp_worker_arm",
    "ucp_worker_signal",
    "ucp_worker_get_address",
    "ucp_worker_release_address",
    "ucp_mem_map",
    "ucp_mem_unmap",
    "ucp_rkey_pack",
    "ucp_rkey_buffer_release",
    "ucp_ep_rkey_unpack",
    "ucp_rkey_destroy",
    "ucp_ep_create",
    "ucp_ep_close_nbx",
    "ucp_put_nbx",
    "ucp_get_nbx",
    "ucp_ep_flush_nbx",
    "ucp_worker_flush_nbx",
    "ucp_am_send_nbx",
    "ucp_worker_set_am_recv_handler",
    "ucp_request_check_status",
    "ucp_request_free",
    "ucp_request_cancel",
    "ucs_status_string",
    // `ferry probe`: what UCX enabled and selected (`transports.rs`), printed into a stream.
    "ucp_context_print_info",
    "ucp_ep_print_info",
    // Device memory (the `cuda` feature): which memory types the context supports, and the
    // effective configuration (`UCX_PROTO_ENABLE`).
    "ucp_context_query",
    "ucp_config_print",
    // UCX's log goes to standard output by default; ferry sends it to standard error
    // (`safe::log_to_stderr`), formatting each message with vsnprintf.
    "ucs_log_push_handler",
    "vsnprintf",
];

/// Enums whose constants the safe layer names (generated as modules of constants, never Rust
/// enums: a value UCX adds later must not be undefined behaviour).
const ENUMS: &[&str] = &[
    "ucs_status_t",
    "ucs_thread_mode_t",
    "ucs_memory_type",
    "ucp_params_field",
    "ucp_feature",
    "ucp_worker_params_field",
    "ucp_ep_params_field",
    "ucp_err_handling_mode_t",
    "ucp_ep_close_flags_t",
    "ucp_mem_map_params_field",
    "ucp_op_attr_t",
    "ucp_am_cb_flags",
    "ucp_send_am_flags",
    "ucp_am_recv_attr_t",
    "ucp_am_handler_param_field",
    "ucp_context_attr_field",
    "ucs_config_print_flags_t",
    "ucs_log_level_t",
    "ucs_log_func_rc_t",
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ferry_ucx_missing)");
    println!("cargo::rerun-if-changed=wrapper.h");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=FERRY_UCX_DISABLE");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG");
    // Rebuild when UCX is installed, upgraded or removed: watch pkg-config's search folders.
    if let Ok(path) = pkg_config(&["--variable", "pc_path", "pkg-config"]) {
        for dir in path.split(':').filter(|d| std::path::Path::new(d).is_dir()) {
            println!("cargo::rerun-if-changed={dir}");
        }
    }

    if env::var_os("FERRY_UCX_DISABLE").is_some_and(|v| v == "1") {
        missing("FERRY_UCX_DISABLE=1");
        return;
    }
    let cflags = match pkg_config(&["--cflags", "ucx"]) {
        Ok(flags) => flags,
        Err(reason) => {
            missing(&reason);
            return;
        }
    };
    let libs = match pkg_config(&["--libs", "ucx"]) {
        Ok(flags) => flags,
        Err(reason) => {
            missing(&reason);
            return;
        }
    };
    let version = pkg_config(&["--modversion", "ucx"]).unwrap_or_default();

    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .clang_args(cflags.split_whitespace())
        .allowlist_var("UCP_API_MAJOR")
        .allowlist_var("UCP_API_MINOR")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false);
    for function in FUNCTIONS {
        builder = builder.allowlist_function(function);
    }
    for name in ENUMS {
        builder = builder.allowlist_type(name).constified_enum_module(name);
    }
    // bindgen panics where libclang cannot be loaded; that is a missing prerequisite like UCX.
    // The builder is consumed inside, so nothing observes it after a panic.
    let generated =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate()));
    let bindings = match generated {
        Ok(Ok(bindings)) => bindings,
        Ok(Err(error)) => panic!("bindgen failed on <ucp/api/ucp.h> (UCX {version}): {error}"),
        Err(_) => {
            missing("bindgen could not load libclang (apt-get install libclang-dev)");
            return;
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("ucp_bindings.rs"))
        .expect("writing the bindings into OUT_DIR");

    for flag in libs.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo::rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo::rustc-link-lib={lib}");
        }
    }
    println!("cargo::rustc-env=FERRY_UCX_BUILD_VERSION={version}");
}

/// Runs `pkg-config ARGS`, returning its trimmed standard output.
fn pkg_config(args: &[&str]) -> Result<String, String> {
    let binary = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_owned());
    let output = Command::new(&binary)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {binary}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{binary} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Builds without UCX: `cfg(ferry_ucx_missing)` plus a warning saying why.
fn missing(reason: &str) {
    println!(
        "cargo::warning=ferry-backend-ucx builds without UCX ({reason}); its constructors \
         return Error::NotInstalled. Install with scripts/install-ucx.sh"
    );
    println!("cargo::rustc-cfg=ferry_ucx_missing");
    println!("cargo::rustc-env=FERRY_UCX_MISSING_REASON={reason}");
}
