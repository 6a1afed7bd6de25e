//! The outcome table's paths one at a time, with std's mutex (the races between them are
//! ferry-core's loom model's, which runs `table.rs` itself).

use std::task::{Context, Poll, Waker};

use ferry_core::state::Event;
use ferry_core::{Error, NotificationKey, Settlement};

use super::table::{Ending, Table};

const ACTIVE: u64 = 9;

fn key(byte: u8) -> NotificationKey {
    NotificationKey::from_random_bytes([byte; 16])
}

fn polled(settlement: &Settlement) -> Poll<Event> {
    settlement.poll_ended(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn a_notification_settles_its_passive_operation_once_and_consumes_the_key() {
    let table = Table::default();
    let (done, peer_cancelled) = (key(1), key(2));
    let mut first = table.expose(done).expect("new key");
    let mut second = table.expose(peer_cancelled).expect("new key");
    assert!(
        table.expose(done).is_none(),
        "a live key is not exposed twice"
    );
    assert_eq!(polled(&first), Poll::Pending);

    assert!(table.notify(&done.completion_message()));
    assert!(!table.notify(&done.completion_message()), "consumed");
    assert!(table.notify(&peer_cancelled.cancel_message()));
    assert!(!table.notify(b"not a notification"));

    assert_eq!(polled(&first), Poll::Ready(Event::Completed));
    assert_eq!(
        table.close_passive(&done, &mut first),
        Some(Event::Completed)
    );
    assert_eq!(
        table.close_passive(&peer_cancelled, &mut second),
        Some(Event::PeerCancelled)
    );
    let counts = table.counts();
    assert_eq!((counts.live_keys, counts.unmatched), (0, 2));
}

#[test]
fn a_passive_close_first_leaves_the_notification_unmatched() {
    let table = Table::default();
    let k = key(3);
    let mut owner = table.expose(k).expect("new key");
    assert_eq!(table.close_passive(&k, &mut owner), None);
    assert!(!table.notify(&k.completion_message()));
    assert_eq!(polled(&owner), Poll::Ready(Event::CancelRequested));
    let counts = table.counts();
    assert_eq!((counts.live_keys, counts.unmatched), (0, 1));
}

#[test]
fn an_active_operation_completes_with_its_notification() {
    let table = Table::default();
    let mut owner = table.begin(ACTIVE);
    let settler = table.settler(ACTIVE).expect("live");
    assert_eq!(table.counts().live_transfers, 1);
    let ending = table.end(ACTIVE, &settler, Ok(()), || Ok("message"));
    assert_eq!(ending, Ending::Notified("message"));
    assert_eq!(
        table.counts().live_transfers,
        0,
        "forgotten before the owner sees it"
    );
    assert_eq!(polled(&owner), Poll::Ready(Event::Completed));
    let drained = table.close_active(ACTIVE, &mut owner, || panic!("nothing to drain"));
    assert_eq!(drained, Some(Event::Completed));
}

#[test]
fn an_active_operation_errs_when_its_requests_or_its_notification_fail() {
    let table = Table::default();
    let owner = table.begin(ACTIVE);
    let settler = table.settler(ACTIVE).expect("live");
    let lost = || Error::PeerLost {
        reason: "gone".into(),
    };
    let ending = table.end(ACTIVE, &settler, Ok(()), || Err::<(), _>(lost()));
    assert_eq!(ending, Ending::Failed);
    assert_eq!(polled(&owner), Poll::Ready(Event::Failed(lost())));

    let owner = table.begin(ACTIVE + 1);
    let settler = table.settler(ACTIVE + 1).expect("live");
    let ending = table.end(
        ACTIVE + 1,
        &settler,
        Err(lost()),
        || -> Result<(), Error> { panic!("no notification after a failed transfer") },
    );
    assert_eq!(ending, Ending::Failed);
    assert_eq!(polled(&owner), Poll::Ready(Event::Failed(lost())));
    assert_eq!(table.counts().live_transfers, 0);
}

#[test]
fn an_active_close_first_drains_and_sends_no_notification() {
    let table = Table::default();
    let mut owner = table.begin(ACTIVE);
    let settler = table.settler(ACTIVE).expect("live");
    let mut drains = 0;
    assert_eq!(table.close_active(ACTIVE, &mut owner, || drains += 1), None);
    assert_eq!(drains, 1);
    assert!(table.settler(ACTIVE).is_none());
    let ending = table.end(ACTIVE, &settler, Ok(()), || -> Result<(), Error> {
        panic!("a cancelled operation's completion was sent")
    });
    assert_eq!(ending, Ending::Cancelled);
    assert_eq!(table.counts().live_transfers, 0);
}
