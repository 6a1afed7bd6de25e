//! SPEC §4: every wrong pairing is refused, with its typed error, before any byte moves.

use ferry::{Descriptor, Device, Error, OperationKind, RdmaMetadata, Side};

use super::*;

/// `begin_read` on writable metadata is a `KindMismatch`.
pub async fn validation_read_on_writable_metadata<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let mut target = vec![0u8; 64];
    let writable = a
        .create_writable([Descriptor::from_mut_slice(&mut target)])
        .await
        .expect("writable");
    let mut landing = vec![0u8; 64];
    let err = b
        .begin_read(
            writable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect_err("refused");
    assert_eq!(
        err,
        Error::KindMismatch {
            expected: OperationKind::Read,
            found: OperationKind::Write
        }
    );
    Ok(())
}

/// `begin_write` on readable metadata is a `KindMismatch`.
pub async fn validation_write_on_readable_metadata<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = vec![1u8; 64];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let err = b
        .begin_write([Descriptor::from_slice(&source)], readable.metadata())
        .await
        .expect_err("refused");
    assert_eq!(
        err,
        Error::KindMismatch {
            expected: OperationKind::Write,
            found: OperationKind::Read
        }
    );
    Ok(())
}

/// An empty list is refused on the passive side, the active side, and in metadata.
pub async fn validation_empty_descriptor_lists<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let local = Error::EmptyDescriptors { side: Side::Local };
    assert_eq!(
        a.create_readable([]).await.expect_err("empty readable"),
        local
    );
    assert_eq!(
        a.create_writable([]).await.expect_err("empty writable"),
        local
    );
    let source = vec![1u8; 8];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    assert_eq!(
        b.begin_read(readable.metadata(), [])
            .await
            .expect_err("empty read"),
        local
    );
    let mut emptied = readable.metadata().clone();
    emptied.descriptors.clear();
    let mut landing = vec![0u8; 8];
    let err = b
        .begin_read(&emptied, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect_err("empty remote");
    assert_eq!(err, Error::EmptyDescriptors { side: Side::Remote });
    Ok(())
}

/// Different descriptor counts are a `CountMismatch`.
pub async fn validation_count_mismatch<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = [1u8; 16];
    let readable = a
        .create_readable(source.chunks(8).map(Descriptor::from_slice))
        .await
        .expect("readable");
    let mut landing = vec![0u8; 8];
    let err = b
        .begin_read(
            readable.metadata(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect_err("refused");
    assert_eq!(
        err,
        Error::CountMismatch {
            local: 1,
            remote: 2
        }
    );
    Ok(())
}

/// Sizes must match exactly, one by one: one byte more or less is a `SizeMismatch` naming the
/// descriptor.
pub async fn validation_size_mismatch<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = vec![1u8; 300];
    let readable = a
        .create_readable([
            Descriptor::from_slice(&source[..100]),
            Descriptor::from_slice(&source[100..]),
        ])
        .await
        .expect("readable");
    for wrong in [199usize, 201] {
        let mut first = vec![0u8; 100];
        let mut second = vec![0u8; wrong];
        let err = b
            .begin_read(
                readable.metadata(),
                [
                    Descriptor::from_mut_slice(&mut first),
                    Descriptor::from_mut_slice(&mut second),
                ],
            )
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            Error::SizeMismatch {
                index: 1,
                local: wrong as u64,
                remote: 200
            }
        );
    }
    Ok(())
}

/// A write that does not fit is refused too, and the writable's memory is untouched.
pub async fn validation_size_mismatch_write_moves_nothing<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let mut target = vec![7u8; 64];
    {
        let mut writable = b
            .create_writable([Descriptor::from_mut_slice(&mut target)])
            .await
            .expect("writable");
        let big = vec![1u8; 65];
        let err = a
            .begin_write([Descriptor::from_slice(&big)], writable.metadata())
            .await
            .expect_err("refused");
        assert!(
            matches!(
                err,
                Error::SizeMismatch {
                    index: 0,
                    local: 65,
                    remote: 64
                }
            ),
            "{err:?}"
        );
        assert_eq!(writable.status(), ferry::OperationStatus::Initialized);
        // The refusal lost nothing: a correct write still completes.
        let good = vec![2u8; 64];
        let mut write = a
            .begin_write([Descriptor::from_slice(&good)], writable.metadata())
            .await
            .expect("begin");
        let (done_write, done_writable) = both(&mut write, &mut writable).await;
        done_write.expect("write");
        done_writable.expect("writable");
    }
    assert_eq!(target, vec![2u8; 64]);
    Ok(())
}

/// A remote list spanning host and device memory is `MixedDevices`.
pub async fn validation_mixed_devices<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = [1u8; 16];
    let readable = a
        .create_readable(source.chunks(8).map(Descriptor::from_slice))
        .await
        .expect("readable");
    let mut mixed = readable.metadata().clone();
    mixed.descriptors[1].device = Device::cuda(0);
    let mut landing = [0u8; 16];
    let err = b
        .begin_read(
            &mixed,
            landing.chunks_mut(8).map(Descriptor::from_mut_slice),
        )
        .await
        .expect_err("refused");
    assert_eq!(err, Error::MixedDevices { side: Side::Remote });
    Ok(())
}

/// Metadata whose blob another backend made is a `BackendMismatch`.
pub async fn validation_backend_mismatch<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = vec![1u8; 8];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let ours = readable
        .metadata()
        .endpoint()
        .expect("blob")
        .backend()
        .to_owned();
    let foreign_blobs = [
        ("ferry-sim/1:b64:AAAA", "sim"),
        ("ferry-tcp/1:b64:AAAA", "tcp"),
        ("ferry-ucx/1:b64:AAAA", "ucx"),
        ("b64:eJwDAAAAAAE=", "nixl"),
    ];
    let mut landing = vec![0u8; 8];
    for (blob, found) in foreign_blobs
        .into_iter()
        .filter(|(_, found)| *found != ours)
    {
        let mut foreign = readable.metadata().clone();
        foreign.nixl_metadata = blob.to_owned();
        let err = b
            .begin_read(&foreign, [Descriptor::from_mut_slice(&mut landing)])
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            Error::BackendMismatch {
                expected: ours.clone(),
                found: found.into()
            }
        );
    }
    Ok(())
}

/// Metadata of a finished operation is `StaleMetadata` as soon as the peer answers.
pub async fn validation_stale_after_complete<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let source = pattern(128, 20);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    let mut landing = vec![0u8; 128];
    let mut read = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("begin");
    let (done_read, done_readable) = both(&mut read, &mut readable).await;
    done_read.expect("first read");
    done_readable.expect("readable");
    drop(read);
    let mut again = vec![0u8; 128];
    let outcome = active_outcome(
        b.begin_read(&metadata, [Descriptor::from_mut_slice(&mut again)])
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(again, vec![0u8; 128], "no byte moved");
    Ok(())
}

/// Metadata of a cancelled operation is `StaleMetadata`.
pub async fn validation_stale_after_cancel<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let mut target = vec![5u8; 32];
    let metadata = {
        let mut writable = a
            .create_writable([Descriptor::from_mut_slice(&mut target)])
            .await
            .expect("writable");
        let metadata = writable.metadata().clone();
        assert_eq!(writable.cancel(), ferry::OperationStatus::Cancelled);
        metadata
    };
    let source = vec![9u8; 32];
    let outcome = active_outcome(
        b.begin_write([Descriptor::from_slice(&source)], &metadata)
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(target, vec![5u8; 32], "no byte landed");
    Ok(())
}

/// Metadata naming a key the peer never issued is `StaleMetadata`: nothing is accepted by
/// address alone.
pub async fn validation_stale_unknown_key<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    revocation_enforced(&a)?;
    let source = vec![3u8; 32];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut forged = readable.metadata().clone();
    forged.notification_key = ferry::NotificationKey::from_random_bytes([0x5a; 16]);
    let mut landing = vec![0u8; 32];
    let outcome = active_outcome(
        b.begin_read(&forged, [Descriptor::from_mut_slice(&mut landing)])
            .await,
    )
    .await;
    assert_eq!(outcome, Err(Error::StaleMetadata));
    assert_eq!(landing, vec![0u8; 32]);
    Ok(())
}

/// Metadata reaches only the memory it describes (SPEC §9): a peer that points one live
/// readable's metadata at another live readable's region of the same Connector never gets
/// those bytes. Backends that take the address from the metadata refuse it `AccessDenied`
/// with no byte moved; those that address a peer's regions by the key alone (tcp) move the
/// offered bytes. Either way the other readable is still read through its own metadata.
pub async fn validation_metadata_reaches_only_its_regions<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let secret = pattern(4096, 21);
    let public = pattern(4096, 22);
    let mut hidden = a
        .create_readable([Descriptor::from_slice(&secret)])
        .await
        .expect("readable over the secret");
    let mut offered = a
        .create_readable([Descriptor::from_slice(&public)])
        .await
        .expect("readable over the public bytes");
    let mut forged = offered.metadata().clone();
    forged.descriptors[0].ptr = hidden.metadata().descriptors[0].ptr;
    let mut landing = vec![0u8; 4096];
    let outcome = match b
        .begin_read(&forged, [Descriptor::from_mut_slice(&mut landing)])
        .await
    {
        Ok(mut read) => while_serving(&mut offered, read.wait_for_completion()).await,
        Err(e) => Err(e),
    };
    match outcome {
        Err(Error::AccessDenied { .. }) => {
            assert_eq!(landing, vec![0u8; 4096], "no byte moved");
        }
        Ok(()) => assert!(landing == public, "only the offered bytes moved"),
        other => panic!("{other:?}"),
    }
    drop(offered);
    landing.fill(0);
    let mut read = b
        .begin_read(
            &hidden.metadata().clone(),
            [Descriptor::from_mut_slice(&mut landing)],
        )
        .await
        .expect("begin");
    let (done_read, done_hidden) = both(&mut read, &mut hidden).await;
    done_read.expect("read through its own metadata");
    done_hidden.expect("readable");
    drop(read);
    assert!(landing == secret);
    Ok(())
}

/// A device the backend cannot reach is `UnsupportedDevice`: a peer's memory on a device this
/// side cannot pair with is refused before anything connects. Where the peer moves its own
/// memory (tcp stages device memory through its own host buffers), this side reaches a peer's
/// device memory through the peer whatever it can move itself: the pairing goes ahead, and the
/// peer's bytes land.
pub async fn validation_unsupported_device<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    if b.capabilities().reaches(Device::cuda(0)) {
        return Err(Skip("this backend reaches cuda:0 memory".into()));
    }
    let source = pattern(32, 3);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut on_gpu = readable.metadata().clone();
    on_gpu.descriptors[0].device = Device::cuda(0);
    let mut landing = vec![0u8; 32];
    let begun = b
        .begin_read(&on_gpu, [Descriptor::from_mut_slice(&mut landing)])
        .await;
    if b.capabilities().reaches_remote(Device::cuda(0)) {
        let mut read = begun.expect("the peer moves its own device memory: paired");
        let (read_done, readable_done) = both(&mut read, &mut readable).await;
        read_done.expect("read");
        readable_done.expect("readable");
        drop(read);
        assert_eq!(landing, source);
        return Ok(());
    }
    assert_eq!(
        begun.err(),
        Some(Error::UnsupportedDevice {
            device: Device::cuda(0),
            backend: b.backend_name()
        })
    );
    assert_eq!(landing, vec![0u8; 32]);
    Ok(())
}

/// Memory lent read-only cannot be written into: not by a read, not by a peer's write.
pub async fn validation_read_only_memory<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let shared = vec![0u8; 16];
    let err = a
        .create_writable([Descriptor::from_slice(&shared)])
        .await
        .expect_err("refused");
    assert_eq!(err, Error::ReadOnlyDescriptor { index: 0 });
    let source = vec![1u8; 16];
    let readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let err = b
        .begin_read(readable.metadata(), [Descriptor::from_slice(&shared)])
        .await
        .expect_err("refused");
    assert_eq!(err, Error::ReadOnlyDescriptor { index: 0 });
    Ok(())
}

/// A refused request loses nothing: the passive operation is still live and pairs afterwards.
pub async fn validation_refusal_loses_nothing<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(256, 21);
    let mut readable = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("readable");
    let mut wrong = vec![0u8; 255];
    b.begin_read(
        readable.metadata(),
        [Descriptor::from_mut_slice(&mut wrong)],
    )
    .await
    .expect_err("refused");
    assert_eq!(readable.status(), ferry::OperationStatus::Initialized);
    let metadata: RdmaMetadata = readable.metadata().clone();
    let mut landing = vec![0u8; 256];
    let mut read = b
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("begin");
    let (done_read, done_readable) = both(&mut read, &mut readable).await;
    done_read.expect("read");
    done_readable.expect("readable");
    drop(read);
    assert_eq!(landing, source);
    Ok(())
}
