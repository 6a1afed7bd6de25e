//! The whole conformance suite across two processes: in each rule, every other Connector is a
//! tcp backend running in a `ferry-backend-host` process this test spawns (see
//! `ferry_conformance::remote`). It runs twice, so each side of every pairing is played by the
//! other process once.

use ferry_conformance::remote::{Placement, ProcessHarness};

const HOST: &str = env!("CARGO_BIN_EXE_ferry-backend-host");

ferry_conformance::conformance_suite!(
    remote_second,
    ProcessHarness::new(HOST, Placement::SecondRemote)
);
ferry_conformance::conformance_suite!(
    remote_first,
    ProcessHarness::new(HOST, Placement::FirstRemote)
);
