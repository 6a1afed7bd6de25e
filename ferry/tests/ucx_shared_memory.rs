//! The ucx backend on UCX's shared-memory transports (`UCX_TLS=posix,cma,self`), where no
//! transport supports peer error handling: a Connector with `ErrorHandling::PeerIfSupported`
//! connects back to a peer (`ErrorHandling::None`) that connected to it first.
//!
//! Regression (issue 5): `PeerIfSupported` used to try peer mode against the peer itself
//! first. Once the peer had connected to us without error handling, UCX 1.13 matched that
//! attempt with the peer's endpoint, refused it with `UCS_ERR_UNSUPPORTED` ("asymmetric
//! endpoint configuration is not supported, error handling level mismatch"), and the connect
//! failed. The mode is now decided once per process on throwaway local workers.
//!
//! UCX reads `UCX_TLS` once per context from the environment, so the body runs in a child
//! process (this test binary started again) with the variables set.
#![cfg(feature = "ucx")]

mod ucx_child;

use std::time::Duration;

use ferry::ucx::{ErrorHandling, UcxBackend, UcxConfig};
use ferry::{Connector, Descriptor, Error};

/// Set in the child's environment.
const CHILD: &str = "FERRY_UCX_SHM_CHILD";

/// What the child prints when both directions worked.
const DONE: &str = "SHM-CHILD-DONE";

async fn connector(error_handling: ErrorHandling) -> Connector {
    let backend = UcxBackend::with_config(UcxConfig {
        error_handling,
        ..UcxConfig::default()
    })
    .expect("a backend starts under posix,cma,self");
    Connector::builder()
        .backend(backend)
        .build()
        .await
        .expect("builds")
}

/// Reads `a`'s bytes into `b` (b connects to a), then writes them from `a` into `b` (a
/// connects to b, which is already connected to a).
async fn read_then_write_back(a: &Connector, b: &Connector) -> Result<(), Error> {
    let source: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut landing = vec![0u8; source.len()];
    let mut readable = a.create_readable([Descriptor::from_slice(&source)]).await?;
    let mut read = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await?;
    tokio::try_join!(read.wait_for_completion(), readable.wait_for_completion())?;
    drop((read, readable));
    assert_eq!(landing, source, "b read a's bytes");

    let mut back = vec![0u8; source.len()];
    let mut writable = b
        .create_writable([Descriptor::from_mut_slice(&mut back)])
        .await?;
    let mut write = a
        .begin_write([Descriptor::from_slice(&source)], writable.metadata())
        .await?;
    tokio::try_join!(write.wait_for_completion(), writable.wait_for_completion())?;
    drop((write, writable));
    assert_eq!(back, source, "a wrote into b");
    Ok(())
}

/// The child's body (run by [`peer_if_supported_connects_back_over_shared_memory`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of peer_if_supported_connects_back_over_shared_memory"]
async fn shared_memory_child() {
    if std::env::var_os(CHILD).is_none() {
        println!("skipped: {CHILD} is not set: this is the child process of another test");
        return;
    }
    // b connects first, without error handling, as a peer that already decided would; a,
    // deciding for the first time in this process, then connects back to b.
    let a = connector(ErrorHandling::PeerIfSupported).await;
    let b = connector(ErrorHandling::None).await;
    match read_then_write_back(&a, &b).await {
        Ok(()) => println!("{DONE}"),
        Err(e) => println!("FAILED {e}"),
    }
}

#[test]
fn peer_if_supported_connects_back_over_shared_memory() {
    if !ferry::ucx::UCX_BUILT {
        println!("skipped: built without UCX");
        return;
    }
    let finished = ucx_child::run(
        "shared_memory_child",
        &[(CHILD, "1"), ("UCX_TLS", "posix,cma,self")],
        &["FERRY_UCX_ERROR_HANDLING"],
        Duration::from_secs(60),
    );
    assert!(
        finished.status.success() && finished.stdout.contains(DONE),
        "{}\nstdout:\n{}\nstderr:\n{}",
        finished.status,
        finished.stdout,
        finished.stderr
    );
}
