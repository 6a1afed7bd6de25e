//! SPEC §3: every row of the state tables, observed through the public API.

use ferry::{Descriptor, Error, OperationStatus, Side};

use super::*;

/// A passive operation starts `Initialized`, with metadata ready.
pub async fn states_passive_starts_initialized<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let source = vec![1u8; 8];
    let mut target = vec![0u8; 8];
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut writable = a
        .create_writable([Descriptor::from_mut_slice(&mut target)])
        .await
        .expect("writable");
    assert_eq!(readable.status(), OperationStatus::Initialized);
    assert_eq!(writable.status(), OperationStatus::Initialized);
    assert_eq!(
        readable.metadata().operation_kind,
        ferry::OperationKind::Read
    );
    assert_eq!(
        writable.metadata().operation_kind,
        ferry::OperationKind::Write
    );
    Ok(())
}

/// An active operation is `InProgress` (or already `Complete`) as soon as `begin_*` returns:
/// it was posted eagerly.
pub async fn states_active_posted_eagerly<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(4096, 30);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    assert!(matches!(
        read.status(),
        OperationStatus::InProgress | OperationStatus::Complete
    ));
    if b.capabilities().progress_needs_polling {
        // Posted eagerly: the request reached the peer before anyone waited on the read, so
        // the readable sees its peer start; but the reader lands bytes only in its owner's
        // polls, so the readable cannot complete until both are awaited.
        let early = readable
            .wait_for_completion_timeout(std::time::Duration::from_millis(50))
            .await;
        assert_eq!(early, Err(Error::Timeout));
        assert_eq!(readable.status(), OperationStatus::InProgress);
        let (done_read, done_readable) = both(&mut read, &mut readable).await;
        done_read.expect("read");
        done_readable.expect("readable");
    } else {
        // Posted eagerly, and the reader progresses on its own: the passive side completes
        // even though nobody waits on the read yet.
        readable
            .wait_for_completion()
            .await
            .expect("readable completes without the reader waiting");
        read.wait_for_completion().await.expect("read");
    }
    Ok(())
}

/// A passive operation moves to `InProgress` when its peer starts, and stays there until the
/// notification arrives (here the notification is lost, so it stays).
pub async fn states_passive_in_progress_when_peer_starts<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    if !a.capabilities().passive_observes_start {
        return Err(Skip("the passive side cannot see its peer start".into()));
    }
    h.fault_notifications(&b, &a, NotifyFault::Drop, 1)?;
    let source = pattern(4096, 31);
    let mut landing = vec![0u8; 4096];
    let (mut readable, mut read) = read_pair(&a, &b, &source, &mut landing).await;
    read.wait_for_completion().await.expect("read");
    let err = readable
        .wait_for_completion_timeout(std::time::Duration::from_millis(50))
        .await
        .expect_err("no notification came");
    assert_eq!(err, Error::Timeout);
    assert_eq!(readable.status(), OperationStatus::InProgress);
    Ok(())
}

/// Both sides end `Complete`, and `wait_for_completion` returns `Ok` again and again.
pub async fn states_both_sides_complete<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1000, 32);
    let mut landing = vec![0u8; 1000];
    let (mut writable, mut write) = write_pair(&a, &b, &source, &mut landing).await;
    let (done_write, done_writable) = both(&mut write, &mut writable).await;
    done_write.expect("write");
    done_writable.expect("writable");
    for _ in 0..3 {
        assert_eq!(write.status(), OperationStatus::Complete);
        assert_eq!(writable.status(), OperationStatus::Complete);
        write.wait_for_completion().await.expect("still complete");
        writable
            .wait_for_completion()
            .await
            .expect("still complete");
    }
    Ok(())
}

/// `cancel()` on a `Complete` operation changes nothing and reports `Complete`.
pub async fn states_cancel_after_complete_is_a_no_op<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(512, 33);
    let mut landing = vec![0u8; 512];
    {
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
        let (done_read, done_readable) = both(&mut read, &mut readable).await;
        done_read.expect("read");
        done_readable.expect("readable");
        assert_eq!(read.cancel(), OperationStatus::Complete);
        assert_eq!(readable.cancel(), OperationStatus::Complete);
        read.wait_for_completion().await.expect("still Ok");
    }
    assert_eq!(landing, source);
    assert_eq!(a.stats().cancelled + b.stats().cancelled, 0);
    Ok(())
}

/// `Cancelled` is sticky: waiting returns `Err(Cancelled)` every time, status stays.
pub async fn states_cancelled_is_sticky<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let source = vec![1u8; 8];
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    assert_eq!(readable.cancel(), OperationStatus::Cancelled);
    for _ in 0..3 {
        assert_eq!(
            readable.wait_for_completion().await,
            Err(Error::Cancelled { by: Side::Local })
        );
        assert_eq!(readable.status(), OperationStatus::Cancelled);
        assert_eq!(readable.cancel(), OperationStatus::Cancelled);
    }
    Ok(())
}

/// `Errored` is sticky, and carries its cause.
pub async fn states_errored_is_sticky<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let source = vec![1u8; 8];
    let metadata = {
        let readable = a
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        readable.metadata().clone()
    };
    let mut landing = vec![0u8; 8];
    let mut read = match b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
    {
        Ok(read) => read,
        Err(e) => {
            assert_eq!(e, Error::StaleMetadata);
            return Err(Skip(
                "this backend refuses stale metadata at begin: no operation to end Errored".into(),
            ));
        }
    };
    assert_eq!(read.wait_for_completion().await, Err(Error::StaleMetadata));
    assert_eq!(read.status(), OperationStatus::Errored);
    assert_eq!(read.cancel(), OperationStatus::Errored);
    assert_eq!(read.wait_for_completion().await, Err(Error::StaleMetadata));
    assert_eq!(read.error(), Some(Error::StaleMetadata));
    Ok(())
}

/// Statuses carry Dynamo's numbering.
pub async fn states_dynamo_numbering<H: Harness>(_h: H) -> Outcome {
    let numbered = [
        (OperationStatus::Uninitialized, 0),
        (OperationStatus::Initialized, 1),
        (OperationStatus::InProgress, 2),
        (OperationStatus::Complete, 3),
        (OperationStatus::Cancelled, 4),
        (OperationStatus::Errored, 5),
    ];
    for (status, number) in numbered {
        assert_eq!(status as u8, number);
        assert_eq!(status.is_terminal(), number >= 3);
    }
    Ok(())
}
