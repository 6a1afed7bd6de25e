//! Cancel and drop, on both sides, in every live state, including racing completion. A
//! cancelled transfer never looks like success.

use ferry::{Descriptor, Error, OperationStatus, Side};

use super::*;

/// Cancelling an active read before it completes ends it `Cancelled` (wait is `Err`), and its
/// peer's readable ends `Cancelled` by the remote side rather than hanging.
pub async fn cancel_active_read_in_progress<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1 << 20, 50);
    let mut landing = vec![0u8; 1 << 20];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    match read.cancel() {
        OperationStatus::Cancelled => {
            assert_eq!(
                read.wait_for_completion().await,
                Err(Error::Cancelled { by: Side::Local })
            );
            assert_eq!(
                readable.wait_for_completion().await,
                Err(Error::Cancelled { by: Side::Remote })
            );
        }
        OperationStatus::Complete => {
            return Err(Skip(
                "the transfer completed before cancel could stop it (inline, or a backend that \
                 cannot take back a posted transfer let it finish)"
                    .into(),
            ));
        }
        other => panic!("cancel left {other:?}"),
    }
    Ok(())
}

/// Cancelling an active write before it completes: the writable ends `Cancelled` by the remote
/// side and never reports success.
pub async fn cancel_active_write_in_progress<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1 << 20, 51);
    let mut landing = vec![0u8; 1 << 20];
    let (mut writable, mut write) = write_pair(&a, &b, &source, &mut landing).await;
    match write.cancel() {
        OperationStatus::Cancelled => {
            assert_eq!(
                write.wait_for_completion().await,
                Err(Error::Cancelled { by: Side::Local })
            );
            assert_eq!(
                writable.wait_for_completion().await,
                Err(Error::Cancelled { by: Side::Remote })
            );
        }
        OperationStatus::Complete => {
            return Err(Skip(
                "the transfer completed before cancel could stop it (inline, or a backend that \
                 cannot take back a posted transfer let it finish)"
                    .into(),
            ));
        }
        other => panic!("cancel left {other:?}"),
    }
    Ok(())
}

/// Dropping an active operation is a cancel: the peer is told.
pub async fn cancel_drop_active_tells_peer<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1 << 20, 52);
    let mut landing = vec![0u8; 1 << 20];
    let (mut readable, read) = read_pair(&a, &b, &source, &mut landing).await;
    drop(read);
    let outcome = readable.wait_for_completion().await;
    assert!(
        matches!(outcome, Err(Error::Cancelled { by: Side::Remote }) | Ok(())),
        "{outcome:?}"
    );
    assert_eq!(b.stats().cancelled + b.stats().completed, 1);
    Ok(())
}

/// Cancelling an `Initialized` readable revokes it: a later read is `StaleMetadata`.
pub async fn cancel_passive_initialized_revokes<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let source = vec![1u8; 64];
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    assert_eq!(readable.cancel(), OperationStatus::Cancelled);
    assert_eq!(
        readable.wait_for_completion().await,
        Err(Error::Cancelled { by: Side::Local })
    );
    let mut landing = vec![0u8; 64];
    let outcome = active_outcome(
        b.begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(landing, vec![0u8; 64]);
    Ok(())
}

/// Dropping a writable revokes it: a later write lands nothing in its memory.
pub async fn cancel_drop_passive_revokes<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let mut target = vec![0xeeu8; 64];
    let metadata = {
        let writable = a
            .create_writable([Descriptor::from_mut_slice(&mut target)])
            .await
            .expect("writable");
        writable.metadata().clone()
    };
    let source = vec![1u8; 64];
    let outcome = active_outcome(
        b.begin_write([Descriptor::from_slice(&source)], &metadata)
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(target, vec![0xeeu8; 64]);
    Ok(())
}

/// Dropping a readable while its peer's read is in flight ends the read without a hang:
/// either the bytes were served in time and it completes, or it errors.
pub async fn cancel_drop_passive_in_progress<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1 << 20, 53);
    let mut landing = vec![0u8; 1 << 20];
    let (readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    drop(readable);
    let outcome = read.wait_for_completion().await;
    drop(read);
    match outcome {
        Ok(()) => assert_eq!(landing, source),
        Err(e) => assert!(
            matches!(e, Error::StaleMetadata | Error::PeerLost { .. }),
            "{e:?}"
        ),
    }
    Ok(())
}

/// Cancel racing completion: over many runs with the cancel at different moments, every
/// operation ends in exactly one terminal state on each side, `Ok` only when `Complete`, and a
/// `Complete` read always holds the right bytes.
pub async fn cancel_races_completion<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(64 << 10, 54);
    for i in 0..200usize {
        let mut landing = vec![0u8; 64 << 10];
        let (active, passive) = {
            let mut readable = a
                .create_readable([Descriptor::from_slice(&source)])
                .await
                .expect("readable");
            let mut read = b
                .begin_read(
                    readable.metadata(),
                    [Descriptor::from_mut_slice(&mut landing)],
                )
                .await
                .expect("begin");
            for _ in 0..(i % 12) {
                tokio::task::yield_now().await;
            }
            let active = read.cancel();
            assert!(active.is_terminal());
            let waited = read.wait_for_completion().await;
            assert_eq!(
                waited.is_ok(),
                active == OperationStatus::Complete,
                "run {i}"
            );
            assert_eq!(read.status(), active, "run {i}: the terminal state moved");
            let passive = readable.wait_for_completion().await;
            assert!(
                readable.status().is_terminal(),
                "run {i}: the readable is still live"
            );
            (active, passive)
        };
        if active == OperationStatus::Complete {
            assert_eq!(landing, source, "run {i}: Complete without the bytes");
        }
        if active == OperationStatus::Cancelled {
            assert_ne!(
                passive,
                Ok(()),
                "run {i}: the reader cancelled but the readable completed"
            );
        }
    }
    Ok(())
}

/// A cancelled operation is counted as cancelled, never as complete.
pub async fn cancel_never_looks_successful<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let mut landing = vec![0u8; 4096];
    let mut writable = a
        .create_writable([Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("writable");
    let source = vec![1u8; 4096];
    let mut write = b
        .begin_write([Descriptor::from_slice(&source)], writable.metadata())
        .await
        .expect("begin");
    let status = write.cancel();
    if status == OperationStatus::Complete {
        return Err(Skip(
            "the transfer completed inline, before cancel could run".into(),
        ));
    }
    assert!(write.wait_for_completion().await.is_err());
    assert!(writable.wait_for_completion().await.is_err());
    assert_eq!(b.stats().completed, 0);
    assert_eq!(b.stats().cancelled, 1);
    assert_eq!(a.stats().completed, 0);
    Ok(())
}
