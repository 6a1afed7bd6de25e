//! Regression: the tcp backend dialled one connection per operation in flight, so ten thousand
//! concurrent operations opened ten thousand sockets to one peer, overflowed its listen
//! backlog and failed with `connect timed out` (issue 7's soak). Now a Connector holds at most
//! `max_connections_per_peer` connections to a peer; operations beyond them wait, in their
//! own polls, for one to come back, and a cancelled waiting operation still tells its peer.

use std::time::Duration;

use ferry::tcp::StatsHandle;
use ferry::tcp::TcpConfig;
use ferry::{Connector, Descriptor, Error, OperationStatus, ReadOperation, ReadableOperation};
use ferry_conformance::rules::pattern;
use ferry_conformance::tcp::connector_with_stats;

const CAP: usize = 4;
const OPERATIONS: usize = 64;
const LIMIT: Duration = Duration::from_secs(30);

fn capped() -> TcpConfig {
    TcpConfig {
        max_connections_per_peer: CAP,
        ..TcpConfig::default()
    }
}

/// A default passive Connector, an active one allowed a single connection to it (and its
/// counters), two readables over `sources`, and a read begun against each into `landings`: the
/// first read holds the one connection, the second waits for it.
async fn two_reads_on_one_connection<'a>(
    sources: [&'a [u8]; 2],
    landings: [&'a mut [u8]; 2],
) -> (
    [ReadableOperation<'a>; 2],
    [ReadOperation<'a>; 2],
    StatsHandle,
    [Connector; 2],
) {
    let (passive, _) = connector_with_stats(TcpConfig::default()).await;
    let (active, stats) = connector_with_stats(TcpConfig {
        max_connections_per_peer: 1,
        ..TcpConfig::default()
    })
    .await;
    let mut readables = Vec::new();
    for source in sources {
        readables.push(
            passive
                .create_readable([Descriptor::from_slice(source)])
                .await
                .expect("readable"),
        );
    }
    let mut reads = Vec::new();
    for (landing, readable) in landings.into_iter().zip(&readables) {
        reads.push(
            active
                .begin_read(readable.metadata(), [Descriptor::from_mut_slice(landing)])
                .await
                .expect("begin"),
        );
    }
    let [first, second] = <[_; 2]>::try_from(readables).expect("two readables");
    let [a, b] = <[_; 2]>::try_from(reads).expect("two reads");
    ([first, second], [a, b], stats, [passive, active])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_operations_than_connections_all_complete() {
    let (passive, _) = connector_with_stats(TcpConfig::default()).await;
    let (active, active_stats) = connector_with_stats(capped()).await;
    let sources: Vec<Vec<u8>> = (0..OPERATIONS)
        .map(|i| pattern(4096 + i, 700 + i as u64))
        .collect();
    let mut landings: Vec<Vec<u8>> = sources.iter().map(|s| vec![0u8; s.len()]).collect();
    let mut readables = Vec::new();
    for source in &sources {
        readables.push(
            passive
                .create_readable([Descriptor::from_slice(source)])
                .await
                .expect("readable"),
        );
    }
    // Every read is begun before any is awaited: begin_* must not wait for a connection.
    let mut reads = Vec::new();
    for (landing, readable) in landings.iter_mut().zip(&readables) {
        let read = tokio::time::timeout(
            LIMIT,
            active.begin_read(readable.metadata(), [Descriptor::from_mut_slice(landing)]),
        )
        .await
        .expect("begin_read returns without waiting for a connection")
        .expect("begin_read");
        reads.push(read);
    }
    assert!(
        active_stats.open_sockets() <= CAP,
        "{} sockets for a cap of {CAP}",
        active_stats.open_sockets()
    );
    let all = async {
        for (read, readable) in reads.iter_mut().zip(readables.iter_mut()) {
            let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
            r.expect("read");
            p.expect("readable");
            assert!(active_stats.open_sockets() <= CAP);
        }
    };
    tokio::time::timeout(LIMIT, all)
        .await
        .expect("all complete in time");
    drop(reads);
    assert_eq!(landings, sources);
    assert!(active_stats.open_sockets() <= CAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_operation_that_waited_for_a_connection_tells_its_peer() {
    let (first, second) = (pattern(1 << 16, 1), pattern(1 << 16, 2));
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let (
        [mut first_readable, mut second_readable],
        [mut holds_the_connection, mut waits],
        _,
        _keep,
    ) = two_reads_on_one_connection([&first, &second], [&mut a, &mut b]).await;
    assert_eq!(waits.status(), OperationStatus::InProgress);
    waits.cancel();
    // The first read finishes and frees the connection; the cancel goes out on it.
    let (r, p) = tokio::join!(
        holds_the_connection.wait_for_completion(),
        first_readable.wait_for_completion()
    );
    r.expect("read");
    p.expect("readable");
    let ended = tokio::time::timeout(LIMIT, second_readable.wait_for_completion())
        .await
        .expect("the waiting read's peer hears of the cancel");
    assert!(matches!(ended, Err(Error::Cancelled { .. })), "{ended:?}");
    drop((holds_the_connection, waits, first_readable, second_readable));
    assert_eq!(a, first);
    assert!(
        b.iter().all(|&x| x == 0),
        "the cancelled read landed nothing"
    );
}

/// Regression: with every connection held by operations nobody polls (tcp moves bytes in the
/// owners' polls), an operation awaited alone waited for one of them for ever. It now dials
/// beyond the cap once `queue_patience` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_awaited_before_those_holding_the_connections_still_completes() {
    let (first, second) = (pattern(1 << 20, 3), pattern(1 << 20, 4));
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let (
        [mut first_readable, mut second_readable],
        [mut holds_the_connection, mut awaited_first],
        active_stats,
        _keep,
    ) = two_reads_on_one_connection([&first, &second], [&mut a, &mut b]).await;
    // Only the second pair is awaited; the first read, which holds the one connection the cap
    // allows, is not polled meanwhile.
    let second_pair = async {
        tokio::try_join!(
            awaited_first.wait_for_completion(),
            second_readable.wait_for_completion()
        )
    };
    tokio::time::timeout(LIMIT, second_pair)
        .await
        .expect("the second read completes although the first holds the connection")
        .expect("second read");
    assert_eq!(
        active_stats.open_sockets(),
        2,
        "one connection beyond the cap"
    );
    tokio::time::timeout(LIMIT, async {
        tokio::try_join!(
            holds_the_connection.wait_for_completion(),
            first_readable.wait_for_completion()
        )
    })
    .await
    .expect("the first read completes too")
    .expect("first read");
    drop((
        holds_the_connection,
        awaited_first,
        first_readable,
        second_readable,
    ));
    assert!(a == first && b == second, "the bytes of both reads");
}
