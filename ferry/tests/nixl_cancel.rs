//! Regression: cancelling an active nixl operation released its NIXL request while UCX still
//! moved its bytes. UCX cannot take back a posted get or put, so it went on writing into the
//! read's memory (and reading the write's) after `cancel` returned and the caller had reused
//! or freed it; across processes over UCX's tcp transport this crashed in
//! `ucp_get_rep_handler`. A cancel now waits until NIXL is done with the memory.
//!
//! UCX's tcp transport is forced here (this binary holds these tests only, and sets it before
//! any agent exists): its software RMA keeps transfers in flight between progress calls,
//! where shared-memory transports would finish them inside the post.
#![cfg(feature = "nixl")]

mod common;

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::{Connector, Descriptor, OperationStatus};

const SIZE: usize = 64 << 20;

async fn connector(name: &str) -> Connector {
    std::env::set_var("UCX_TLS", "tcp");
    let agent = format!("{name}-{}-1", std::process::id());
    Connector::builder()
        .worker_id(name)
        .backend(NixlBackend::new(NixlConfig::named(agent)).expect("a NIXL agent"))
        .build()
        .await
        .expect("a nixl Connector")
}

/// A small read to completion between the same two agents. Its get goes out after the
/// cancelled operation's, on the same connection, so when it completes, every late reply of
/// the cancelled one would have landed too.
async fn flush(from: &Connector, to: &Connector) {
    common::read_cycle(to, from, 7).await;
}

fn unavailable() -> bool {
    match ferry::nixl::available(None) {
        Ok(_) => false,
        Err(reason) => {
            println!("skipped: {reason}");
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_read_writes_nothing_after_cancel_returns() {
    if unavailable() {
        return;
    }
    let (a, b) = (connector("a").await, connector("b").await);
    let source = ferry::demo::pattern(SIZE, 1);
    let mut landing = vec![0u8; SIZE];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut read = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin_read");
    let status = read.cancel();
    assert!(
        matches!(
            status,
            OperationStatus::Cancelled | OperationStatus::Complete
        ),
        "{status:?}"
    );
    drop(read);
    // The memory is the caller's again: whatever it writes must stay.
    landing.fill(0xee);
    flush(&a, &b).await;
    drop(readable);
    let late = landing.iter().filter(|&&byte| byte != 0xee).count();
    assert_eq!(late, 0, "{late} bytes landed after cancel returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_reads_nothing_after_cancel_returns() {
    if unavailable() {
        return;
    }
    let (a, b) = (connector("c").await, connector("d").await);
    let original = ferry::demo::pattern(SIZE, 2);
    let mut source = original.clone();
    let mut target = vec![0u8; SIZE];
    let mut writable = a
        .create_writable([Descriptor::from_mut_slice(&mut target)])
        .await
        .expect("writable");
    let mut write = b
        .begin_write([Descriptor::from_slice(&source)], writable.metadata())
        .await
        .expect("begin_write");
    let status = write.cancel();
    assert!(
        matches!(
            status,
            OperationStatus::Cancelled | OperationStatus::Complete
        ),
        "{status:?}"
    );
    drop(write);
    // The source is the caller's again: nothing it writes now may reach the peer.
    source.fill(0xee);
    flush(&b, &a).await;
    // Over tcp a put's fragments and the flush's get share one connection, so the flush
    // completing means every fragment of the cancelled write has arrived.
    let _ = writable.cancel();
    drop(writable);
    // Each byte is untouched or the original's; one of the refill's would have come late.
    let late = target
        .iter()
        .zip(&original)
        .filter(|&(&landed, &sent)| landed != 0 && landed != sent)
        .count();
    assert_eq!(late, 0, "{late} bytes were sent after cancel returned");
}
