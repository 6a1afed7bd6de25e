//! The whole conformance suite on ucx across two processes: in each rule, every other
//! Connector's UCX worker runs in a `ferry-backend-host ucx` process this test spawns (see
//! `ferry_conformance::remote`; the host uses `UCX_TLS=tcp,self` unless `UCX_TLS` is set), so
//! bytes move between two processes' workers and a crash is a real SIGKILL. It runs twice, so
//! each side of every pairing is played by the other process once. Where UCX is missing,
//! every rule says `skipped: <reason>`.
#![cfg(feature = "ucx")]

use ferry_conformance::remote::{HostBackend, Placement, ProcessHarness};

const HOST: &str = env!("CARGO_BIN_EXE_ferry-backend-host");

ferry_conformance::conformance_suite!(
    remote_second,
    ProcessHarness::with_backend(HOST, HostBackend::Ucx, Placement::SecondRemote)
);
ferry_conformance::conformance_suite!(
    remote_first,
    ProcessHarness::with_backend(HOST, HostBackend::Ucx, Placement::FirstRemote)
);
