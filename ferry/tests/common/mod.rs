//! Helpers shared by the facade's integration tests.

use ferry::{Connector, Descriptor};

/// `reader` reads 4 KiB of `seed`'s pattern from a readable of `owner`, both sides to
/// completion, and checks the bytes.
pub async fn read_cycle(reader: &Connector, owner: &Connector, seed: u64) {
    let source = ferry::demo::pattern(4096, seed);
    let mut landing = vec![0u8; 4096];
    let mut readable = owner
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut read = reader
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin_read");
    let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    r.expect("read");
    p.expect("readable");
    drop(read);
    assert_eq!(landing, source);
}
