//! SPEC §5 and §3 rules 1, 4, 5: keys, ordering, first notification wins, nothing accumulates,
//! completion wakes the task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use ferry::{Descriptor, NotificationKey, OperationStatus};

use super::*;

/// Keys are UUIDv4 in Dynamo's text form, and distinct.
pub async fn completion_keys_are_uuid_v4<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("a")).await;
    let source = vec![1u8; 8];
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let readable = a
            .create_readable([Descriptor::from_slice(&source)])
            .await
            .expect("readable");
        let key = readable.notification_key();
        let text = key.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "RFC 4122 variant: {text}"
        );
        assert_eq!(text.parse::<NotificationKey>().expect("parses"), key);
        assert!(seen.insert(key), "a key repeated");
    }
    Ok(())
}

/// The notification follows the data: whenever a writable completes, every byte is already in
/// its memory (checked over many transfers and sizes).
pub async fn completion_notification_follows_data<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    for i in 0..50u64 {
        let size = 1 + (i as usize * 7919) % 300_000;
        let source = pattern(size, 1000 + i);
        let mut landing = vec![0u8; size];
        {
            let mut writable = b
                .create_writable([Descriptor::from_mut_slice(&mut landing)])
                .await
                .expect("writable");
            let metadata = writable.metadata().clone();
            let mut write = a
                .begin_write([Descriptor::from_slice(&source)], &metadata)
                .await
                .expect("begin");
            // The writable is awaited alongside the write (tcp moves bytes inside both
            // owners' polls); once it reports Complete it is never polled again, so every
            // byte checked below was in place when it completed.
            let (done_write, done_writable) = both(&mut write, &mut writable).await;
            done_writable.expect("writable");
            drop(writable);
            done_write.expect("write");
        }
        assert!(
            landing == source,
            "transfer {i}: bytes missing when the writable completed"
        );
    }
    Ok(())
}

/// Two reads of one readable: the first notification completes it, the second finds the key
/// consumed; the readable ends `Complete` exactly once.
pub async fn completion_first_notification_wins<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(2048, 40);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    let mut first_landing = vec![0u8; 2048];
    let mut second_landing = vec![0u8; 2048];
    let first = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut first_landing)])
        .await;
    let second = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut second_landing)])
        .await;
    let (first, second, served) = tokio::join!(
        active_outcome(first),
        active_outcome(second),
        readable.wait_for_completion()
    );
    served.expect("readable completes");
    assert!(first.is_ok() || second.is_ok(), "{first:?} {second:?}");
    for outcome in [&first, &second] {
        assert!(
            matches!(outcome, Ok(()) | Err(ferry::Error::StaleMetadata)),
            "{outcome:?}"
        );
    }
    assert_eq!(readable.status(), OperationStatus::Complete);
    assert_eq!(a.stats().completed, 1);
    if first.is_ok() {
        assert_eq!(first_landing, source);
    }
    if second.is_ok() {
        assert_eq!(second_landing, source);
    }
    Ok(())
}

/// The key is consumed by the completion notification itself, not when the readable's owner
/// next looks: a second read that arrives after the first read's notification, while nobody
/// has polled the readable yet, finds the key gone.
pub async fn completion_key_consumed_on_arrival<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let source = pattern(4096, 43);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    let mut first = vec![0u8; 4096];
    let mut read = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut first)])
        .await
        .expect("begin");
    while_serving(&mut readable, read.wait_for_completion())
        .await
        .expect("first read");
    drop(read);
    let mut second = vec![0u8; 4096];
    let outcome = active_outcome(
        b.begin_read(&metadata, [Descriptor::from_mut_slice(&mut second)])
            .await,
    )
    .await;
    assert_eq!(outcome, Err(ferry::Error::StaleMetadata));
    assert_eq!(
        second,
        vec![0u8; 4096],
        "no byte of a finished readable was served"
    );
    readable
        .wait_for_completion()
        .await
        .expect("the readable completed, once");
    assert_eq!(first, source);
    Ok(())
}

/// 10 000 operations leave nothing behind in the backend or the Connector.
pub async fn completion_no_accumulation<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(64, 41);
    let mut landing = vec![0u8; 64];
    for i in 0..5_000 {
        if i % 2 == 0 {
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
        } else {
            let (mut writable, mut write) = write_pair(&b, &a, &source, &mut landing).await;
            let (done_write, done_writable) = both(&mut write, &mut writable).await;
            done_write.expect("write");
            done_writable.expect("writable");
        }
    }
    let stats = (a.stats(), b.stats());
    assert_eq!(stats.0.completed + stats.1.completed, 10_000);
    assert_eq!(stats.0.live_registrations + stats.1.live_registrations, 0);
    let live = h.live_state()?;
    assert_eq!(
        live,
        LiveState {
            operations: 0,
            keys: 0
        }
    );
    Ok(())
}

/// Completion wakes the waiting task: a wait is polled a handful of times, not in a loop.
pub async fn completion_wakes_without_polling<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(1 << 20, 42);
    let mut landing = vec![0u8; 1 << 20];
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
    let ((result, passive_polls), (outcome, active_polls)) = tokio::join!(
        CountPolls::new(readable.wait_for_completion()),
        CountPolls::new(read.wait_for_completion())
    );
    result.expect("readable");
    outcome.expect("read");
    // Woken by events, not a timer: a handful of wake-ups per transfer (a stream transport
    // wakes once per burst of arriving bytes), never hundreds.
    assert!(
        passive_polls <= 64,
        "the readable's wait was polled {passive_polls} times"
    );
    assert!(
        active_polls <= 64,
        "the read's wait was polled {active_polls} times"
    );
    Ok(())
}

/// A future wrapper that counts polls.
struct CountPolls<F> {
    inner: Pin<Box<F>>,
    polls: usize,
}

impl<F: Future> CountPolls<F> {
    fn new(inner: F) -> Self {
        CountPolls {
            inner: Box::pin(inner),
            polls: 0,
        }
    }
}

impl<F: Future> Future for CountPolls<F> {
    type Output = (F::Output, usize);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls += 1;
        let polls = self.polls;
        self.inner.as_mut().poll(cx).map(|out| (out, polls))
    }
}
