//! Declares the `loom` cfg, so that `#[cfg(loom)]` in `src/loom.rs` is a known name to rustc's
//! `unexpected_cfgs` lint (the crate takes its lints from the workspace and cannot add its own).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
