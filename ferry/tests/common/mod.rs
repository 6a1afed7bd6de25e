//! Helpers shared by the facade's integration tests.

use ferry::{Connector, Descriptor, ReadableOperation};

/// `reader` reads 4 KiB of `seed`'s pattern from a readable of `owner`, both sides to
/// completion, and checks the bytes.
#[allow(dead_code)] // not every test that includes this module uses it
pub async fn read_cycle(reader: &Connector, owner: &Connector, seed: u64) {
    let source = ferry::demo::pattern(4096, seed);
    let mut landing = vec![0u8; 4096];
    read_in_pieces(owner, reader, &source, &mut landing, source.len()).await;
}

/// `reader` reads `source`, cut at `piece` bytes, from a readable of `owner` into `landing`,
/// cut the same way; both sides complete and every byte lands.
#[allow(dead_code)] // not every test that includes this module uses it
pub async fn read_in_pieces(
    owner: &Connector,
    reader: &Connector,
    source: &[u8],
    landing: &mut [u8],
    piece: usize,
) {
    let mut readable = owner
        .create_readable(source.chunks(piece).map(Descriptor::from_slice))
        .await
        .expect("readable");
    read_readable(
        reader,
        &mut readable,
        landing.chunks_mut(piece).map(Descriptor::from_mut_slice),
    )
    .await;
    assert_eq!(landing, source);
}

/// `reader` reads `readable` into `landings`; both sides are awaited to completion.
#[allow(dead_code)] // not every test that includes this module uses it
pub async fn read_readable<'l>(
    reader: &Connector,
    readable: &mut ReadableOperation<'_>,
    landings: impl IntoIterator<Item = Descriptor<'l>>,
) {
    let mut read = reader
        .begin_read(readable.metadata(), landings)
        .await
        .expect("begin_read");
    let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    r.expect("read");
    p.expect("readable");
}

/// Creates a 4 KiB readable on `owner` and times three `status()` calls on it before anyone
/// reads it, each of which must find it live; then `reader` reads it, and both sides, awaited,
/// complete with every byte. Returns the quickest call.
#[allow(dead_code)] // not every test that includes this module uses it
pub async fn quickest_status_call(owner: &Connector, reader: &Connector) -> std::time::Duration {
    let source = ferry::demo::pattern(4096, 1);
    let mut landing = vec![0u8; source.len()];
    let mut readable = owner
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let quickest = (0..3)
        .map(|_| {
            let asked = std::time::Instant::now();
            let status = readable.status();
            assert!(!status.is_terminal(), "nobody read it yet: {status:?}");
            asked.elapsed()
        })
        .min()
        .expect("three calls");
    // Glances leave the operation to be awaited as usual.
    let mut read = reader
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin_read");
    let _ = read.status();
    let (r, p) = tokio::join!(read.wait_for_completion(), readable.wait_for_completion());
    r.expect("read");
    p.expect("readable");
    drop(read);
    assert_eq!(landing, source);
    quickest
}

/// A Connector over its own NIXL agent made from `config`, keeping up to `cache`
/// registrations, and the backend (for its stats).
#[cfg(feature = "nixl")]
#[allow(dead_code)] // not every test that includes this module uses it
pub async fn nixl_connector(
    name: &str,
    config: ferry::nixl::NixlConfig,
    cache: usize,
) -> (Connector, std::sync::Arc<ferry::nixl::NixlBackend>) {
    let backend = std::sync::Arc::new(ferry::nixl::NixlBackend::new(config).expect("a NIXL agent"));
    let connector = Connector::builder()
        .worker_id(name)
        .registration_cache(cache)
        .backend_arc(backend.clone())
        .build()
        .await
        .expect("a nixl Connector");
    (connector, backend)
}

#[cfg(feature = "cuda")]
#[allow(dead_code)] // not every test that includes this module uses it
pub mod cuda;
