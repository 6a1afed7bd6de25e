//! ferry-benches: ferry's backends measured between two processes, beside baselines measured
//! in the same run, so that a ratio, not an absolute figure, says how a backend is doing on a
//! shared, noisy machine.
//!
//! ```text
//!  ferry-bench-tcp (active side)               ferry-bench-tcp --peer (passive side)
//!  ─────────────────────────────               ─────────────────────────────────────
//!  {"op":"readable","size":N} ──── stdin ────▶ create_readable(buffer)
//!  RdmaMetadata::from_json     ◀─── stdout ─── metadata().to_json()
//!  begin_read ─┐                               wait_for_completion()
//!   (timed)    │◀═════════ ferry tcp ════════▶
//!  wait_for_completion ─┘
//!                             ◀─── stdout ─── {"done":true,"at_ns":T}
//!  {…,"count":K} (K in flight) ─── stdin ────▶ K passive operations, K lines
//!  K begins, K waits ─┐                        all K awaited at once (join_all)
//!   (timed together)  │◀═ ferry tcp, K conns ▶
//!                             ◀─── stdout ─── one {"done":true}
//!  ping-pong client (64 B → 4 KiB) ◀═ tokio TCP ═▶ echo server
//!  iperf3 -c ◀═════════════ loopback ═══════════▶ iperf3 -s
//! ```
//!
//! What it does not do: it measures the simulator (which moves bytes in memory, not over a
//! transport) only among `ferry bench`'s one-process rows, and it judges nothing by absolute
//! numbers.
//!
//! The pieces are in modules so that every backend's benchmark reuses them: [`stats`]
//! (latency percentiles and throughput), [`units`] (sizes), [`lines`] (JSON lines between the
//! two processes, every wait bounded), [`peer`] (the peer process, its buffers, one passive
//! operation served and one active operation against it), [`cli`] (the options and outputs
//! every program shares), [`clock`] (dates, and the system clock both processes share),
//! [`baseline`] (iperf3 and a bare tokio ping-pong), [`report`] (the markdown table and the
//! JSON file), [`join`] (awaiting several operations at once, for batches in flight), and one
//! module per backend: [`tcp`] (ferry-bench-tcp) and [`nixl`] (ferry-bench-nixl: ferry's nixl
//! backend beside a raw nixl-sys loop in the same two processes) and, with the `ucx` feature,
//! `ucx` (ferry-bench-ucx: ferry's ucx backend beside `ucx_perftest` in the same run).
//! `ferry bench` (the ferry-bench program) puts them together: [`local`] (two Connectors of
//! one process), [`split`] (two-process operations over many descriptors), [`handoff`] and
//! [`kv`] (the KV-cache hand-off), [`suite`] (its tables, JSON and plot series), [`plot`] (the
//! SVG) and [`part`] (the ucx rows, measured by ferry-bench-ucx and read back).

#![forbid(unsafe_code)]

pub mod baseline;
pub mod cli;
pub mod clock;
pub mod cpu;
pub mod handoff;
pub mod join;
pub mod kv;
pub mod lines;
pub mod local;
pub mod nixl;
pub mod part;
pub mod peer;
pub mod plot;
pub mod progress;
pub mod report;
pub mod split;
pub mod stats;
pub mod suite;
pub mod tcp;
#[cfg(feature = "ucx")]
pub mod ucx;
pub mod units;

/// The error type of the harness: anything that stops a run, with its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The result type of the harness.
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// A 64-bit FNV-1a hash over `bytes`, taken eight bytes at a time (then byte by byte for the
/// tail), so a GiB takes a fraction of a second. Used to check a written buffer in another
/// process without sending it back.
pub fn checksum(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(le)).wrapping_mul(PRIME);
    }
    for &byte in words.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
    }
    hash
}

/// How long one operation of `size` bytes may take, end to end, before the run gives up:
/// 30 s plus the size at 20 MB/s (a GiB gets about 84 s). Both processes use it.
pub fn operation_limit(size: usize) -> std::time::Duration {
    std::time::Duration::from_secs(30) + std::time::Duration::from_millis(size as u64 / 20_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_byte() {
        let a = ferry::demo::pattern(1001, 3);
        for i in [0, 7, 8, 999, 1000] {
            let mut b = a.clone();
            b[i] ^= 1;
            assert_ne!(checksum(&a), checksum(&b), "byte {i}");
        }
        assert_eq!(checksum(&a), checksum(&a.clone()));
    }

    #[test]
    fn limits_grow_with_size() {
        assert!(operation_limit(1 << 30) > operation_limit(4096));
        assert!(operation_limit(1 << 30) < std::time::Duration::from_secs(120));
    }
}
