//! Regression: a post that failed after some of its gets were posted returned its error at
//! once, while UCX went on writing into the caller's memory (found by review: a peer's
//! malformed second remote key, 256 MiB landing after `post` had returned `Err`). A post now
//! unpacks every remote key before it posts anything, and one that fails after posting ends
//! its operation only once its requests have finished (posts are not waited for: the failure
//! arrives as the operation's event).

mod common;

use std::future::poll_fn;

use ferry_backend_ucx::blob::UcxBlob;
use ferry_backend_ucx::UcxBackend;
use ferry_core::{Backend, Descriptor, Error, OperationKind, RdmaMetadata, RemoteDescriptor};

const BIG: usize = 64 << 20;

#[tokio::test]
async fn a_failed_post_moves_no_byte_after_it_returns() {
    let (a, b) = match (UcxBackend::new(), UcxBackend::new()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(Error::BackendUnavailable { reason, .. }), _) => {
            println!("skipped: {reason}");
            return;
        }
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    let big = vec![0xabu8; BIG];
    let small = vec![0xcdu8; 4096];
    let offered = [Descriptor::from_slice(&big), Descriptor::from_slice(&small)];
    for descriptor in &offered {
        a.register(descriptor.region()).expect("register");
    }
    let key = a.new_key();
    let exposed = a
        .expose(OperationKind::Read, key, &offered, None)
        .await
        .expect("expose");
    // The peer's second remote key is malformed (an unknown memory type).
    let mut blob = UcxBlob::from_endpoint(&exposed.endpoint).expect("a ucx blob");
    assert_eq!(blob.regions.len(), 2);
    blob.regions[1].rkey[8] = 0xff;
    let forged = common::metadata(
        &offered,
        blob.to_endpoint().encode(),
        key,
        OperationKind::Read,
    );
    let peer = b.connect(&exposed.endpoint).await.expect("connect");
    let mut landing = vec![0u8; BIG];
    let mut rest = vec![0u8; 4096];
    {
        let mut local = [
            Descriptor::from_mut_slice(&mut landing),
            Descriptor::from_mut_slice(&mut rest),
        ];
        // The post is not waited for: its failure ends the operation.
        let mut transfer = peer
            .post(OperationKind::Read, &forged, &mut local, None)
            .await
            .expect("a post is handed to the progress thread");
        let event = poll_fn(|cx| transfer.poll_event(cx, &mut local)).await;
        assert!(
            matches!(
                event,
                ferry_core::state::Event::Failed(Error::InvalidMetadata { .. })
            ),
            "a malformed remote key fails the operation: {event:?}"
        );
    }
    // The memory is the caller's again.
    landing.fill(0x11);
    // A whole read of the small region on the same endpoint: anything the failed post had
    // left in flight would land before it completes.
    let mut check = vec![0u8; 4096];
    let good = RdmaMetadata {
        descriptors: vec![RemoteDescriptor {
            device: offered[1].device(),
            ptr: offered[1].addr(),
            size: 4096,
        }],
        nixl_metadata: exposed.endpoint.encode(),
        notification_key: key,
        operation_kind: OperationKind::Read,
    };
    {
        let mut local = [Descriptor::from_mut_slice(&mut check)];
        let mut transfer = peer
            .post(OperationKind::Read, &good, &mut local, None)
            .await
            .expect("post");
        let event = poll_fn(|cx| transfer.poll_event(cx, &mut local)).await;
        assert!(
            matches!(event, ferry_core::state::Event::Completed),
            "{event:?}"
        );
    }
    assert_eq!(check, small);
    let late = landing.iter().filter(|&&byte| byte != 0x11).count();
    assert_eq!(
        late, 0,
        "{late} bytes landed after the failed post returned"
    );
}
