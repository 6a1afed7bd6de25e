//! The conformance suite on ucx: every Connector its own UCP worker and progress thread in
//! this process. Prints `skipped: <reason>` per rule where UCX is missing
//! (scripts/install-ucx.sh installs it). On a loopback-only host set `UCX_NET_DEVICES=lo`.
#![cfg(feature = "ucx")]

ferry_conformance::conformance_suite!(ucx, ferry_conformance::ucx::UcxHarness::new());
