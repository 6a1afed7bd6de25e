//! Baselines measured in the same run as the backend: iperf3 for throughput, a bare tokio TCP
//! ping-pong for small-operation latency, and a single-thread memcpy (the most one thread moves
//! within this host).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{IterationPlan, Summary};
use crate::Result;

/// Bytes a ping-pong client sends per round trip.
pub const PING_BYTES: usize = 64;

/// Bytes a ping-pong server answers with: one 4 KiB page, the smallest ferry size measured.
pub const PONG_BYTES: usize = 4096;

/// What one iperf3 run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Iperf {
    /// `end.sum_received.bits_per_second`.
    pub bits_per_second: f64,
    /// How long the client sent, in seconds.
    pub seconds: u32,
}

impl Iperf {
    /// The received rate in bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bits_per_second / 8.0
    }
}

/// Where `program` is on `PATH`, if it is.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Runs one single-stream iperf3 test over loopback: `iperf3 -s -1 -p <port>`, then
/// `iperf3 -c 127.0.0.1 -p <port> -t <seconds> -J`. `Ok(None)` when iperf3 is not installed.
/// Both processes are killed if anything goes wrong; no wait is unbounded.
pub async fn iperf3(seconds: u32) -> Result<Option<Iperf>> {
    let Some(program) = find_on_path("iperf3") else {
        return Ok(None);
    };
    let port = free_port()?.to_string();
    let mut server = tokio::process::Command::new(&program)
        .args(["-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let client_limit = Duration::from_secs(u64::from(seconds) + 20);
    let mut last_error = String::new();
    // The server needs a moment to listen; a refused client is retried, and a server with
    // -1 handles only the first client that reaches it, so nothing probes the port first.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let client = tokio::process::Command::new(&program)
            .args([
                "-c",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                &seconds.to_string(),
                "-J",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(client_limit, client)
            .await
            .map_err(|_| format!("iperf3 client ran past {client_limit:?}"))??;
        let report: serde_json::Value = match serde_json::from_slice(&output.stdout) {
            Ok(report) => report,
            Err(e) => {
                last_error = format!("iperf3 -J printed no JSON ({e})");
                continue;
            }
        };
        if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
            if output.status.success() {
                // The server exits after its one test; give it a moment, then kill it.
                let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
                let _ = server.kill().await;
                return Ok(Some(Iperf {
                    bits_per_second: bps,
                    seconds,
                }));
            }
        }
        last_error = report["error"]
            .as_str()
            .unwrap_or("no end.sum_received.bits_per_second")
            .to_owned();
        if !last_error.contains("connect") {
            break;
        }
    }
    let _ = server.kill().await;
    Err(format!("iperf3 failed: {last_error}").into())
}

/// Serves ping-pong clients on `listener` until the runtime stops: for every
/// [`PING_BYTES`]-byte request read, writes [`PONG_BYTES`] bytes back. TCP_NODELAY is set.
pub async fn serve_ping_pong(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = pong(stream).await;
        });
    }
}

async fn pong(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut ping = [0u8; PING_BYTES];
    let answer = ferry::demo::pattern(PONG_BYTES, 7);
    loop {
        stream.read_exact(&mut ping).await?;
        stream.write_all(&answer).await?;
    }
}

/// Times `round_trips` request/response exchanges with a [`serve_ping_pong`] server at
/// `addr`, after `warmup` untimed ones. Each round trip must finish within `limit`.
pub async fn ping_pong(
    addr: SocketAddr,
    warmup: usize,
    round_trips: usize,
    limit: Duration,
) -> Result<Vec<Duration>> {
    let mut stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to the ping-pong server took over {limit:?}"))??;
    stream.set_nodelay(true)?;
    let ping = [0x5au8; PING_BYTES];
    let mut pong = vec![0u8; PONG_BYTES];
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..warmup + round_trips {
        let start = Instant::now();
        let exchange = async {
            stream.write_all(&ping).await?;
            stream.read_exact(&mut pong).await
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("a ping-pong round trip took over {limit:?}"))??;
        if i >= warmup {
            samples.push(start.elapsed());
        }
    }
    Ok(samples)
}

/// Times single-thread copies of `size` bytes from one buffer into another (`copy_from_slice`,
/// a `memcpy`), both allocated and touched once before the first timed copy, as `plan` says.
/// The limit on what any transfer within this host moves with one thread. `None` for a plan
/// of no copies.
pub fn memcpy(size: usize, plan: IterationPlan) -> Option<Summary> {
    let source = ferry::demo::pattern(size, 0x6d65_6d63);
    let mut destination = vec![0u8; size];
    destination.copy_from_slice(&source); // faults every page in, untimed
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let start = Instant::now();
        destination.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut destination);
        let elapsed = start.elapsed();
        spent += elapsed;
        samples.push(elapsed);
    }
    Summary::from_samples(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ping_pong_in_one_process() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_ping_pong(listener));
        let samples = ping_pong(addr, 2, 20, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(samples.len(), 20);
    }

    #[test]
    fn memcpy_copies_at_some_rate() {
        let plan = IterationPlan {
            target: Duration::from_millis(5),
            min: 3,
            max: 50,
        };
        let copies = memcpy(1 << 20, plan).unwrap();
        assert!(copies.iterations >= 3);
        assert!(copies.throughput(1 << 20) > 1e6);
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-program-ferry").is_none());
    }
}
