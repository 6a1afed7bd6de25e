//! Deadlines: a wait with a timeout gives up without ending the operation; a Connector's
//! deadline ends an operation `Errored(DeadlineExceeded)`; neither hangs.

use std::time::Duration;

use ferry::{Descriptor, Error, OperationStatus, Side};

use super::*;

/// `wait_for_completion_timeout` returns `Timeout` and leaves the operation live: a peer can
/// still complete it afterwards.
pub async fn deadlines_wait_timeout_leaves_operation_live<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(4096, 60);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    assert_eq!(
        readable
            .wait_for_completion_timeout(Duration::from_millis(20))
            .await,
        Err(Error::Timeout)
    );
    assert_eq!(readable.status(), OperationStatus::Initialized);
    let mut landing = vec![0u8; 4096];
    let mut read = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin");
    while_serving(&mut readable, read.wait_for_completion())
        .await
        .expect("read");
    readable
        .wait_for_completion_timeout(Duration::from_secs(10))
        .await
        .expect("completes within the timeout");
    Ok(())
}

/// After a timeout, cancelling is clean on both sides: the operation ends `Cancelled` and the
/// peer can no longer use its metadata.
pub async fn deadlines_cancel_after_timeout_is_clean<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let mut target = vec![0u8; 256];
    let metadata = {
        let mut writable = a
            .create_writable([Descriptor::from_mut_slice(&mut target)])
            .await
            .expect("writable");
        assert_eq!(
            writable
                .wait_for_completion_timeout(Duration::from_millis(5))
                .await,
            Err(Error::Timeout)
        );
        assert_eq!(writable.cancel(), OperationStatus::Cancelled);
        assert_eq!(
            writable.wait_for_completion().await,
            Err(Error::Cancelled { by: Side::Local })
        );
        writable.metadata().clone()
    };
    let source = vec![1u8; 256];
    let outcome = active_outcome(
        b.begin_write([Descriptor::from_slice(&source)], &metadata)
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(target, vec![0u8; 256]);
    Ok(())
}

/// A Connector deadline ends a passive operation whose notification never comes in
/// `Errored(DeadlineExceeded)`.
pub async fn deadlines_passive_deadline_errors<H: Harness>(h: H) -> Outcome {
    let a = h
        .connector(Options {
            deadline: Some(Duration::from_secs(2)),
            ..Options::named("a")
        })
        .await;
    let b = h.connector(Options::named("b")).await;
    h.fault_notifications(&b, &a, NotifyFault::Drop, 1)?;
    let source = pattern(4096, 61);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    read.wait_for_completion()
        .await
        .expect("the read itself completes");
    assert_eq!(
        readable.wait_for_completion().await,
        Err(Error::DeadlineExceeded)
    );
    assert_eq!(readable.status(), OperationStatus::Errored);
    assert_eq!(a.stats().errored, 1);
    Ok(())
}

/// An operation's own deadline overrides the Connector's default: shorter ends it early, in
/// `Errored(DeadlineExceeded)`, and its peer is told; an operation without one keeps the
/// default.
pub async fn deadlines_per_operation_overrides_default<H: Harness>(h: H) -> Outcome {
    let a = h
        .connector(Options {
            deadline: Some(Duration::from_secs(60)),
            ..Options::named("a")
        })
        .await;
    let source = pattern(4096, 62);
    let mut short = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut default = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    short.set_deadline(Duration::from_millis(300));
    assert_eq!(
        short.wait_for_completion().await,
        Err(Error::DeadlineExceeded)
    );
    assert_eq!(short.status(), OperationStatus::Errored);
    // The other one still runs on the Connector's 60 s.
    assert_eq!(
        default
            .wait_for_completion_timeout(Duration::from_millis(300))
            .await,
        Err(Error::Timeout)
    );
    assert_eq!(default.status(), OperationStatus::Initialized);
    // Setting a deadline on an ended operation changes nothing.
    short.set_deadline(Duration::from_secs(1));
    assert_eq!(short.status(), OperationStatus::Errored);
    // A peer that reads after the short deadline finds nothing to read, where the backend
    // mediates access.
    revocation_enforced(&a)?;
    let b = h.connector(Options::named("b")).await;
    let mut landing = vec![0u8; 4096];
    let read_result = async {
        let mut read = b
            .begin_read(short.metadata(), [Descriptor::from_mut_slice(&mut landing)])
            .await?;
        read.wait_for_completion().await
    }
    .await;
    assert!(
        read_result.is_err(),
        "read an operation whose deadline passed: {read_result:?}"
    );
    assert_eq!(landing, vec![0u8; 4096], "no byte of an ended operation");
    Ok(())
}

/// A Connector deadline ends an active operation cut off from its peer in
/// `Errored(DeadlineExceeded)`.
pub async fn deadlines_active_deadline_errors<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let b = h
        .connector(Options {
            deadline: Some(Duration::from_secs(3)),
            ..Options::named("b")
        })
        .await;
    let source = pattern(4096, 62);
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    h.partition(&a, &b)?;
    let mut landing = vec![0u8; 4096];
    let mut read = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin");
    assert_eq!(
        read.wait_for_completion().await,
        Err(Error::DeadlineExceeded)
    );
    assert_eq!(read.status(), OperationStatus::Errored);
    drop(read);
    assert_eq!(landing, vec![0u8; 4096]);
    Ok(())
}

/// A late notification still completes an operation that has not passed its deadline.
pub async fn deadlines_late_notification_within_deadline<H: Harness>(h: H) -> Outcome {
    let a = h
        .connector(Options {
            deadline: Some(Duration::from_secs(5)),
            ..Options::named("a")
        })
        .await;
    let b = h.connector(Options::named("b")).await;
    h.fault_notifications(&b, &a, NotifyFault::Delay(Duration::from_secs(1)), 1)?;
    let source = pattern(4096, 63);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    read.wait_for_completion().await.expect("read");
    readable
        .wait_for_completion()
        .await
        .expect("the delayed notification arrives in time");
    Ok(())
}
