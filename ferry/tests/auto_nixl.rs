//! Regression: two Connectors that `Connector::auto()` puts on nixl in one process got the same
//! agent name (`<worker>-1`), and NIXL refused to pair them ("remote agent name same as local
//! agent"). Agents are now numbered per process.
#![cfg(feature = "nixl")]

use ferry::{Connector, Descriptor};

#[tokio::test]
async fn two_default_nixl_connectors_in_one_process_pair() {
    if let Err(reason) = ferry::nixl::available(None) {
        println!("skipped: {reason}");
        return;
    }
    // This binary holds this one test, so nothing else reads the environment meanwhile.
    std::env::set_var(ferry::BACKEND_ENV, "nixl");
    let a = Connector::auto().await.expect("a nixl Connector");
    let b = Connector::auto().await.expect("a second nixl Connector");
    assert_eq!((a.backend_name(), b.backend_name()), ("nixl", "nixl"));
    let source = ferry::demo::pattern(4096, 9);
    let mut landing = vec![0u8; 4096];
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
            .expect("the two agents pair");
        let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
        r.expect("read");
        p.expect("readable");
    }
    assert_eq!(landing, source);
}
