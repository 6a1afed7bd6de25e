//! The conformance suite on nixl: every Connector its own NIXL agent (UCX plugin) in this
//! process. Prints `skipped: <reason>` per rule where libnixl_capi.so cannot be loaded
//! (scripts/install-nixl.sh installs it).
#![cfg(feature = "nixl")]

ferry_conformance::conformance_suite!(nixl, ferry_conformance::nixl::NixlHarness::new());
