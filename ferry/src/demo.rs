//! `ferry demo`: the main job, end to end, on the default backend.
//!
//! Two workers. A 64 MiB readable, split over many descriptors, is read by its peer; a 64 MiB
//! writable is written by its peer. Every byte is verified, and throughput and per-operation
//! latency are measured.

use std::time::{Duration, Instant};

use crate::{Connector, Descriptor, Error, RdmaMetadata};

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoConfig {
    /// Bytes per transfer.
    pub bytes: usize,
    /// Descriptors each transfer is split over.
    pub descriptors: usize,
    /// Transfers of each pairing.
    pub iterations: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            bytes: 64 << 20,
            descriptors: 64,
            iterations: 8,
        }
    }
}

/// One pairing's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct PairingReport {
    /// `read <- readable` or `write -> writable`.
    pub name: &'static str,
    /// Transfers run.
    pub operations: usize,
    /// Bytes per transfer.
    pub bytes: usize,
    /// Descriptors per transfer.
    pub descriptors: usize,
    /// Whether every byte of every transfer matched.
    pub verified: bool,
    /// Bytes moved per second of transfer cycles (data generation and checks excluded).
    pub throughput: f64,
    /// Median time of one cycle: create the passive op, begin the active one, both complete.
    pub p50: Duration,
    /// Slowest cycle.
    pub max: Duration,
}

/// What `ferry demo` found.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The backend used.
    pub backend: &'static str,
    /// Read ↔ readable, then write ↔ writable.
    pub pairings: Vec<PairingReport>,
}

impl DemoReport {
    /// Whether every transfer was verified.
    pub fn verified(&self) -> bool {
        self.pairings.iter().all(|p| p.verified)
    }
}

/// Runs the demo between two new Connectors of the default backend. `progress` is called
/// after each transfer with (done, total).
pub async fn run(
    config: DemoConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<DemoReport, Error> {
    let prefill = Connector::builder()
        .worker_id("demo-prefill")
        .build()
        .await?;
    let decode = Connector::builder()
        .worker_id("demo-decode")
        .build()
        .await?;
    run_between(&prefill, &decode, config, &mut progress).await
}

/// Runs the demo between two given Connectors.
pub async fn run_between(
    a: &Connector,
    b: &Connector,
    config: DemoConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<DemoReport, Error> {
    let total = 2 * config.iterations;
    let mut done = 0;
    let mut pairings = Vec::new();
    for write in [false, true] {
        let mut cycles = Vec::new();
        let mut verified = true;
        for iteration in 0..config.iterations {
            let source = pattern(config.bytes, (iteration as u64) << 1 | u64::from(write));
            let mut landing = vec![0u8; config.bytes];
            let chunk = config.bytes.div_ceil(config.descriptors.max(1)).max(1);
            let cycle = Instant::now();
            if write {
                // b exposes a writable; a writes into it.
                let mut writable = b
                    .create_writable(landing.chunks_mut(chunk).map(Descriptor::from_mut_slice))
                    .await?;
                let metadata = RdmaMetadata::from_json(&writable.metadata().to_json())?;
                let mut op = a
                    .begin_write(source.chunks(chunk).map(Descriptor::from_slice), &metadata)
                    .await?;
                // Both sides are awaited at once, as two workers would.
                tokio::try_join!(op.wait_for_completion(), writable.wait_for_completion())?;
            } else {
                // a exposes a readable; b reads it.
                let mut readable = a
                    .create_readable(source.chunks(chunk).map(Descriptor::from_slice))
                    .await?;
                let metadata = RdmaMetadata::from_json(&readable.metadata().to_json())?;
                let mut op = b
                    .begin_read(
                        &metadata,
                        landing.chunks_mut(chunk).map(Descriptor::from_mut_slice),
                    )
                    .await?;
                tokio::try_join!(op.wait_for_completion(), readable.wait_for_completion())?;
            }
            cycles.push(cycle.elapsed());
            verified &= landing == source;
            done += 1;
            progress(done, total);
        }
        // Throughput over the transfer cycles only: generating and checking the data is not
        // the transport's time.
        let elapsed: f64 = cycles.iter().map(Duration::as_secs_f64).sum();
        cycles.sort();
        pairings.push(PairingReport {
            name: if write {
                "write -> writable"
            } else {
                "read <- readable"
            },
            operations: config.iterations,
            bytes: config.bytes,
            descriptors: config
                .bytes
                .div_ceil(config.bytes.div_ceil(config.descriptors.max(1)).max(1)),
            verified,
            throughput: (config.bytes * config.iterations) as f64 / elapsed.max(1e-9),
            p50: cycles.get(cycles.len() / 2).copied().unwrap_or_default(),
            max: cycles.last().copied().unwrap_or_default(),
        });
    }
    Ok(DemoReport {
        backend: a.backend_name(),
        pairings,
    })
}

/// A deterministic, non-repeating byte pattern (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_demo_verifies() {
        let config = DemoConfig {
            bytes: 1 << 20,
            descriptors: 7,
            iterations: 2,
        };
        let mut calls = 0;
        let report = run(config, |_, _| calls += 1).await.unwrap();
        assert!(report.verified());
        assert_eq!(calls, 4);
        assert_eq!(report.pairings[0].descriptors, 7);
    }

    #[test]
    fn patterns_differ_by_seed() {
        assert_ne!(pattern(64, 1), pattern(64, 2));
        assert_eq!(pattern(64, 1), pattern(64, 1));
    }
}
