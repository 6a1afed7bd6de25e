//! Both pairings move exactly the right bytes, from 1 byte to 64 MiB, over 1 to 64
//! descriptors.

use ferry::{Descriptor, RdmaMetadata};

use super::*;

/// A read pulls a readable's bytes, verified byte for byte.
pub async fn pairing_read_pulls_readable_bytes<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    read_cycle(&a, &b, &[4096], 1)
        .await
        .expect("read completes");
    Ok(())
}

/// A write pushes into a writable, verified byte for byte.
pub async fn pairing_write_pushes_into_writable<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    write_cycle(&a, &b, &[4096], 2)
        .await
        .expect("write completes");
    Ok(())
}

/// One byte moves both ways.
pub async fn pairing_one_byte<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    read_cycle(&a, &b, &[1], 3).await.expect("read");
    write_cycle(&a, &b, &[1], 4).await.expect("write");
    Ok(())
}

/// 64 MiB in one descriptor moves both ways.
pub async fn pairing_64_mib<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    read_cycle(&a, &b, &[64 << 20], 5).await.expect("read");
    write_cycle(&a, &b, &[64 << 20], 6).await.expect("write");
    Ok(())
}

/// Sizes that straddle page and chunk boundaries, both ways.
pub async fn pairing_size_ladder<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    for (i, size) in [2, 7, 4095, 4096, 4097, 65_537, (1 << 20) + 3, 5 << 20]
        .into_iter()
        .enumerate()
    {
        read_cycle(&a, &b, &[size], 10 + i as u64)
            .await
            .expect("read");
        write_cycle(&a, &b, &[size], 30 + i as u64)
            .await
            .expect("write");
    }
    Ok(())
}

/// 64 descriptors of different sizes, each landing in its own place.
pub async fn pairing_64_descriptors<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let sizes: Vec<usize> = (0..64).map(|i| 1 + i * 977).collect();
    read_cycle(&a, &b, &sizes, 7).await.expect("read");
    write_cycle(&a, &b, &sizes, 8).await.expect("write");
    Ok(())
}

/// Every descriptor count from 1 to 64 in steps, with a multi-descriptor KV-block shape.
pub async fn pairing_descriptor_counts<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    for count in [1usize, 2, 3, 16, 33, 64] {
        let sizes = vec![4096; count];
        read_cycle(&a, &b, &sizes, count as u64)
            .await
            .expect("read");
        write_cycle(&a, &b, &sizes, 100 + count as u64)
            .await
            .expect("write");
    }
    Ok(())
}

/// Size-0 descriptors are valid and move nothing, alone or among others.
pub async fn pairing_zero_size_descriptors<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    read_cycle(&a, &b, &[0, 100, 0, 5], 9)
        .await
        .expect("read with empties");
    write_cycle(&a, &b, &[0, 100, 0, 5], 10)
        .await
        .expect("write with empties");
    read_cycle(&a, &b, &[0], 11)
        .await
        .expect("a lone empty descriptor");
    Ok(())
}

/// Owned buffers make `'static` operations that move into spawned tasks, and come back.
pub async fn pairing_owned_buffers_in_tasks<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(70_000, 12);
    let mut readable = a
        .create_readable([Descriptor::from_bytes(source.clone().into())])
        .await
        .expect("readable");
    let metadata = readable.metadata().clone();
    let reader = tokio::spawn(async move {
        let mut read = b
            .begin_read(&metadata, [Descriptor::from_vec(vec![0; 70_000])])
            .await
            .expect("begin");
        read.wait_for_completion().await.expect("read");
        read.into_descriptors()
            .pop()
            .expect("one descriptor")
            .into_vec()
    });
    readable.wait_for_completion().await.expect("readable");
    let landed = reader.await.expect("task");
    assert_eq!(landed, source);
    Ok(())
}

/// Shared (read-only) memory may be exposed by a readable and sent by a write, and two
/// readables may expose the same memory at once.
pub async fn pairing_shared_memory_sources<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(10_000, 13);
    let mut first = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("first");
    let mut second = a
        .create_readable([Descriptor::from_slice(&source)])
        .await
        .expect("second");
    for readable in [&mut first, &mut second] {
        let mut landing = vec![0u8; 10_000];
        let metadata = readable.metadata().clone();
        let mut read = b
            .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
            .await
            .expect("begin");
        let (done_read, done_readable) = both(&mut read, readable).await;
        done_read.expect("read");
        done_readable.expect("readable");
        drop(read);
        assert_eq!(landing, source);
    }
    Ok(())
}

/// Metadata survives the JSON round trip a real deployment puts it through.
pub async fn pairing_through_json<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let source = pattern(4096, 14);
    let mut landing = vec![0u8; 4096];
    let mut writable = b
        .create_writable([Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("writable");
    let json = writable.metadata().to_json();
    let metadata = RdmaMetadata::from_json(&json).expect("decodes");
    let mut write = a
        .begin_write([Descriptor::from_slice(&source)], &metadata)
        .await
        .expect("begin");
    let (done_write, done_writable) = both(&mut write, &mut writable).await;
    done_write.expect("write");
    done_writable.expect("writable");
    drop(writable);
    assert_eq!(landing, source);
    Ok(())
}
