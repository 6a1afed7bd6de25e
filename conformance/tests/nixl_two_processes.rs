//! The whole conformance suite on nixl across two processes: in each rule, every other
//! Connector's NIXL agent runs in a `ferry-backend-host nixl` process this test spawns (see
//! `ferry_conformance::remote`), so bytes move between two processes' agents over UCX, and a
//! crash is a real SIGKILL. It runs twice, so each side of every pairing is played by the other
//! process once. Where `libnixl_capi.so` cannot be loaded, every rule says `skipped: <reason>`.
#![cfg(feature = "nixl")]

use ferry_conformance::remote::{HostBackend, Placement, ProcessHarness};

const HOST: &str = env!("CARGO_BIN_EXE_ferry-backend-host");

ferry_conformance::conformance_suite!(
    remote_second,
    ProcessHarness::with_backend(HOST, HostBackend::Nixl, Placement::SecondRemote)
);
ferry_conformance::conformance_suite!(
    remote_first,
    ProcessHarness::with_backend(HOST, HostBackend::Nixl, Placement::FirstRemote)
);
