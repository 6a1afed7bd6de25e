//! SPEC §5: losing the peer ends paired operations `Errored(PeerLost)` on whichever side can
//! observe it; nothing hangs.

use ferry::{Descriptor, Error, OperationStatus};

use super::*;

/// The passive side's process dies with a read in flight: the read ends `PeerLost`.
pub async fn peer_loss_active_sees_passive_crash<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    // More than a loopback connection's kernel buffers hold, so a passive side that serves on
    // its own (in another process, or in hardware) cannot finish before the reader drains it.
    let source = pattern(32 << 20, 70);
    let mut landing = vec![0u8; 32 << 20];
    let (readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    if let Err(skip) = h.crash(&a) {
        // Nothing may be left in flight over memory about to be freed: a transport that
        // cannot revoke access would still serve the read from it.
        let _ = read.wait_for_completion().await;
        return Err(skip);
    }
    let outcome = read.wait_for_completion().await;
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
    assert_eq!(read.status(), OperationStatus::Errored);
    drop(readable);
    Ok(())
}

/// The active side's process dies mid-transfer: a passive side that can observe it ends
/// `PeerLost`.
pub async fn peer_loss_passive_sees_active_crash<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    if !a.capabilities().passive_observes_peer_loss {
        return Err(Skip(
            "the passive side cannot observe peer loss with this backend".into(),
        ));
    }
    h.fault_notifications(&b, &a, NotifyFault::Drop, 1)?;
    let source = pattern(4096, 71);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    read.wait_for_completion().await.expect("read");
    assert_eq!(readable.status(), OperationStatus::InProgress);
    h.crash(&b)?;
    let outcome = readable.wait_for_completion().await;
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
    Ok(())
}

/// The active side's Connector is dropped (a clean exit) while its passive peer still waits:
/// a passive side that can observe it ends `PeerLost` once everything sent before has arrived.
pub async fn peer_loss_passive_sees_peer_close<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    if !a.capabilities().passive_observes_peer_loss {
        return Err(Skip(
            "the passive side cannot observe peer loss with this backend".into(),
        ));
    }
    h.fault_notifications(&b, &a, NotifyFault::Drop, 1)?;
    let source = pattern(4096, 74);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    read.wait_for_completion().await.expect("read");
    drop((read, b));
    let outcome = readable.wait_for_completion().await;
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
    Ok(())
}

/// Beginning an operation against a peer that is gone fails with `PeerLost`, at once or on
/// wait, and never hangs.
pub async fn peer_loss_begin_against_dead_peer<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = vec![1u8; 64];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    h.crash(&a)?;
    let mut landing = vec![0u8; 64];
    let outcome = active_outcome(
        b.begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
            .await,
    )
    .await;
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
    drop(readable);
    Ok(())
}

/// Losing one peer leaves other pairings untouched.
pub async fn peer_loss_is_contained<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let b = h.connector(Options::named("b")).await;
    let c = h.connector(Options::named("c")).await;
    h.crash(&c)?;
    read_cycle(&a, &b, &[4096, 17], 72)
        .await
        .expect("a and b still pair");
    write_cycle(&b, &a, &[4096], 73)
        .await
        .expect("and the other way");
    Ok(())
}
