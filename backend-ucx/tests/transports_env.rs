//! Regressions found by ferry-bench-ucx (2026-11-21) under `UCX_TLS=posix,cma,self`: the
//! backend made every endpoint in peer error mode, which no shared-memory transport of UCX 1.13
//! supports, so it could not connect at all (now it can, with
//! `ErrorHandling::PeerIfSupported`); the failure (`UCS_ERR_UNREACHABLE` from `ucp_ep_create`)
//! was reported as `PeerLost`; and `available()` said ucx was usable there.
//!
//! UCX reads `UCX_TLS` when a context is made and `available()` answers once per process, so
//! each case runs in a child process: this test binary again, with the variable set.

mod common;

use std::future::poll_fn;
use std::process::Command;
use std::time::Duration;

use ferry_backend_ucx::{available, ErrorHandling, UcxBackend, UcxConfig};
use ferry_core::state::Event;
use ferry_core::{Backend, Descriptor, Error, OperationKind, RdmaMetadata};

/// Set in the child; names the case it runs.
const CHILD: &str = "FERRY_UCX_TEST_CHILD";

const DEADLINE: Duration = Duration::from_secs(10);

/// In the parent: runs `test` of this binary in a child with `UCX_TLS=tls`, and asserts that
/// it passed. Returns false there; true in the child, which then runs the case.
fn in_child(test: &str, tls: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    if !ferry_backend_ucx::UCX_BUILT {
        println!("skipped: built without UCX");
        return false;
    }
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .env("UCX_TLS", tls)
        .output()
        .expect("running the child");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child with UCX_TLS={tls} failed:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
    false
}

/// Exposes a writable of `landing` on `passive`, and its metadata.
async fn writable(
    passive: &UcxBackend,
    landing: &[Descriptor<'_>],
) -> (RdmaMetadata, Box<dyn ferry_core::Transfer>) {
    passive.register(landing[0].region()).expect("register");
    let key = passive.new_key();
    let exposed = passive
        .expose(OperationKind::Write, key, landing, None)
        .await
        .expect("expose");
    let metadata = common::metadata(
        landing,
        exposed.endpoint.encode(),
        key,
        OperationKind::Write,
    );
    (metadata, exposed.transfer)
}

#[tokio::test]
async fn shared_memory_alone_connects_and_writes() {
    if !in_child("shared_memory_alone_connects_and_writes", "posix,cma,self") {
        return;
    }
    // The default (peer error mode) cannot connect here; opting in to a fallback can.
    assert!(
        available().is_err(),
        "the default cannot connect under posix,cma,self"
    );
    let config = UcxConfig {
        error_handling: ErrorHandling::PeerIfSupported,
        ..UcxConfig::default()
    };
    ferry_backend_ucx::available_with(&config).expect("usable with the fallback");
    let passive = UcxBackend::with_config(config.clone()).expect("passive backend");
    let active = UcxBackend::with_config(config).expect("active backend");
    let mut landing = vec![0u8; 4096];
    let source: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    {
        let mut landing_desc = [Descriptor::from_mut_slice(&mut landing)];
        let (metadata, mut passive_op) = writable(&passive, &landing_desc).await;
        let endpoint = metadata.endpoint().expect("a ucx endpoint");
        let peer = active
            .connect(&endpoint)
            .await
            .expect("connect over shared memory");
        let mut local = [Descriptor::from_slice(&source)];
        let mut active_op = peer
            .post(OperationKind::Write, &metadata, &mut local, None)
            .await
            .expect("post");
        let both = async {
            let sent = poll_fn(|cx| active_op.poll_event(cx, &mut local)).await;
            let landed = poll_fn(|cx| passive_op.poll_event(cx, &mut landing_desc)).await;
            (sent, landed)
        };
        let (sent, landed) = tokio::time::timeout(DEADLINE, both)
            .await
            .expect("the write ended in time");
        assert_eq!(sent, Event::Completed);
        assert_eq!(landed, Event::Completed);
    }
    assert_eq!(landing, source);
}

#[tokio::test]
async fn an_unreachable_peer_is_a_backend_error_not_a_lost_peer() {
    if !in_child(
        "an_unreachable_peer_is_a_backend_error_not_a_lost_peer",
        "posix,cma,self",
    ) {
        return;
    }
    let passive = UcxBackend::new().expect("passive backend");
    let strict = UcxBackend::new().expect("active backend, in peer error mode");
    let mut landing = vec![0u8; 64];
    let landing_desc = [Descriptor::from_mut_slice(&mut landing)];
    let (metadata, _passive_op) = writable(&passive, &landing_desc).await;
    let endpoint = metadata.endpoint().expect("a ucx endpoint");
    match strict.connect(&endpoint).await.err() {
        Some(Error::Backend { code, .. }) => assert_eq!(code, -6, "UCS_ERR_UNREACHABLE"),
        other => panic!("expected a backend error with UCS_ERR_UNREACHABLE, got {other:?}"),
    }
}

#[test]
fn ucx_is_not_available_where_nothing_connects() {
    // cma alone carries no active messages (UCX: "no am bcopy"), so no endpoint can be made.
    if !in_child("ucx_is_not_available_where_nothing_connects", "cma") {
        return;
    }
    let why = available().expect_err("nothing can connect under UCX_TLS=cma");
    assert!(why.contains("UCS_ERR_UNREACHABLE"), "{why}");
}
