//! Many operations at once, many Connectors, a Connector talking to itself.

use ferry::{Connector, Descriptor};

use super::*;

/// 64 operations in flight at once between two Connectors (32 reads, 32 writes), all verified.
pub async fn concurrency_64_in_flight<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let sources: Vec<Vec<u8>> = (0..64)
        .map(|i| pattern(8192 + i * 61, 200 + i as u64))
        .collect();
    let mut landings: Vec<Vec<u8>> = sources.iter().map(|s| vec![0u8; s.len()]).collect();
    {
        let mut passives_r = Vec::new();
        let mut passives_w = Vec::new();
        let mut actives_r = Vec::new();
        let mut actives_w = Vec::new();
        let (read_half, write_half) = landings.split_at_mut(32);
        for (source, landing) in sources[..32].iter().zip(read_half.iter_mut()) {
            let readable = a
                .create_readable([Descriptor::from_slice(source)])
                .await
                .expect("readable");
            let read = b
                .begin_read(readable.metadata(), [Descriptor::from_mut_slice(landing)])
                .await
                .expect("begin read");
            passives_r.push(readable);
            actives_r.push(read);
        }
        for (source, landing) in sources[32..].iter().zip(write_half.iter_mut()) {
            let writable = b
                .create_writable([Descriptor::from_mut_slice(landing)])
                .await
                .expect("writable");
            let write = a
                .begin_write([Descriptor::from_slice(source)], writable.metadata())
                .await
                .expect("begin write");
            passives_w.push(writable);
            actives_w.push(write);
        }
        actives_r.reverse();
        passives_w.reverse();
        let (reads, writes, readables, writables) = tokio::join!(
            wait_all(&mut actives_r),
            wait_all(&mut actives_w),
            wait_all(&mut passives_r),
            wait_all(&mut passives_w)
        );
        for (outcomes, what) in [
            (reads, "read"),
            (writes, "write"),
            (readables, "readable"),
            (writables, "writable"),
        ] {
            assert_eq!(outcomes.len(), 32);
            for outcome in outcomes {
                outcome.unwrap_or_else(|e| panic!("{what}: {e}"));
            }
        }
    }
    assert!(
        landings == sources,
        "a concurrent transfer landed the wrong bytes"
    );
    Ok(())
}

/// Concurrent operations driven from separate tasks.
pub async fn concurrency_tasks<H: Harness>(h: H) -> Outcome {
    let (a, b) = pair(&h).await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            read_cycle(&a, &b, &[1000 + i as usize, 3], 300 + i).await
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("read");
    }
    Ok(())
}

/// A mesh: five Connectors, each reading from and writing to every other.
pub async fn concurrency_mesh<H: Harness>(h: H) -> Outcome {
    let mut mesh: Vec<Connector> = Vec::new();
    for i in 0..5 {
        mesh.push(h.connector(Options::named(&format!("mesh-{i}"))).await);
    }
    let mut seed = 400;
    for a in &mesh {
        for b in &mesh {
            if a.worker_id() != b.worker_id() {
                seed += 2;
                read_cycle(a, b, &[777, 5], seed).await.expect("read");
                write_cycle(a, b, &[777], seed + 1).await.expect("write");
            }
        }
    }
    Ok(())
}

/// A Connector pairs with itself.
pub async fn concurrency_connector_talks_to_itself<H: Harness>(h: H) -> Outcome {
    let a = h.connector(Options::named("self")).await;
    read_cycle(&a, &a, &[4096, 1], 500)
        .await
        .expect("read from itself");
    write_cycle(&a, &a, &[4096, 1], 501)
        .await
        .expect("write to itself");
    Ok(())
}

/// Connectors and owned operations are `Send`; Connectors are `Sync` and cheap to clone.
pub async fn concurrency_types_are_send_and_sync<H: Harness>(h: H) -> Outcome {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let a = h.connector(Options::named("a")).await;
    send_sync(&a);
    let readable = a
        .create_readable([Descriptor::from_vec(vec![1; 8])])
        .await
        .expect("readable");
    send(&readable);
    let clone = a.clone();
    assert_eq!(clone.worker_id(), a.worker_id());
    Ok(())
}
