//! The tcp backend's two sides: the passive peer process, and the active side that times
//! reads and writes against it.
//!
//! The peer is this same program re-run with `--peer`. It reads one command per line on stdin
//! (`{"op":"readable","size":N,"verify":b}`, `{"op":"writable",…}`, `{"op":"exit"}`), exposes
//! a buffer it allocated once per size, prints the operation's metadata
//! ([`ferry::RdmaMetadata::to_json`]) as one line, awaits the operation, and prints
//! `{"done":true}` (with a `checksum` of a written buffer when asked to verify) or
//! `{"done":false,"error":…}`. On tcp a passive operation moves bytes only while its owner
//! awaits it, which the peer does, in its own process, while the active side transfers.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Connector, Descriptor, RdmaMetadata};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::lines::{error_of, Closed, JsonLines};
use crate::stats::{IterationPlan, Summary};
use crate::{baseline, checksum, operation_limit, Result};

/// Seed of the pattern a peer's readable holds ([`ferry::demo::pattern`]).
pub const READ_SEED: u64 = 0x5245_4144;

/// Seed of the pattern the active side writes.
pub const WRITE_SEED: u64 = 0x5752_4954;

/// How long the peer waits for its next command before it gives up on the active side.
const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// How long the peer may take to start and report ready.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long the peer may take to exit once told to.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

/// Which way the bytes go, seen from the active side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The active side reads the peer's readable: bytes flow peer → active.
    Read,
    /// The active side writes into the peer's writable: bytes flow active → peer.
    Write,
}

impl Direction {
    /// `read` or `write`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Read => "read",
            Direction::Write => "write",
        }
    }

    /// The passive operation the peer creates for it: `readable` or `writable`.
    fn passive(self) -> &'static str {
        match self {
            Direction::Read => "readable",
            Direction::Write => "writable",
        }
    }
}

/// A Connector on a fresh tcp backend with the default configuration (127.0.0.1, any port).
pub async fn connector(worker_id: &str) -> Result<Connector> {
    let backend = TcpBackend::bind(TcpConfig::default()).await?;
    Ok(Connector::builder()
        .worker_id(worker_id)
        .backend(backend)
        .build()
        .await?)
}

/// The peer's buffer: one allocation per size, reused by every operation of that size.
#[derive(Debug, Default)]
struct PeerBuffer {
    bytes: Vec<u8>,
    holds_pattern: bool,
}

impl PeerBuffer {
    /// Makes the buffer `size` bytes of the [`READ_SEED`] pattern.
    fn hold_pattern(&mut self, size: usize) {
        if !(self.holds_pattern && self.bytes.len() == size) {
            self.bytes = Vec::new(); // free the old buffer before making the new one
            self.bytes = ferry::demo::pattern(size, READ_SEED);
            self.holds_pattern = true;
        }
    }

    /// Makes the buffer `size` bytes long, zeroed if `clear` or if newly allocated.
    fn hold_landing(&mut self, size: usize, clear: bool) {
        if self.bytes.len() != size {
            self.bytes = Vec::new();
            self.bytes = vec![0; size];
        } else if clear {
            self.bytes.fill(0);
        }
        self.holds_pattern = false;
    }
}

/// Runs the passive side: serves a ping-pong listener for the baseline, then answers
/// commands on stdin until `exit` or end of input. Everything it prints on stdout is one
/// JSON line; its first line is `{"ready":true,"echo_port":P,"pid":N}`.
pub async fn run_peer() -> Result<()> {
    let connector = connector("ferry-bench-peer").await?;
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_port = echo.local_addr()?.port();
    tokio::spawn(baseline::serve_ping_pong(echo));

    let mut io = JsonLines::new(tokio::io::stdin(), tokio::io::stdout());
    io.send(&json!({"ready": true, "echo_port": echo_port, "pid": std::process::id()}))
        .await?;
    let mut buffer = PeerBuffer::default();
    loop {
        let command = match io.recv(COMMAND_LIMIT).await {
            Ok(command) => command,
            Err(e) if e.is::<Closed>() => return Ok(()),
            Err(e) => return Err(e),
        };
        let size = command["size"]
            .as_u64()
            .and_then(|s| usize::try_from(s).ok());
        let verify = command["verify"].as_bool().unwrap_or(false);
        match (command["op"].as_str(), size) {
            (Some("exit"), _) => return Ok(()),
            (Some("readable"), Some(size)) => {
                serve(
                    &connector,
                    &mut io,
                    &mut buffer,
                    Direction::Read,
                    size,
                    verify,
                )
                .await?;
            }
            (Some("writable"), Some(size)) => {
                serve(
                    &connector,
                    &mut io,
                    &mut buffer,
                    Direction::Write,
                    size,
                    verify,
                )
                .await?;
            }
            _ => {
                io.send(&json!({"error": format!("unknown command {command}")}))
                    .await?
            }
        }
    }
}

/// Creates one passive operation over `buffer`, prints its metadata, awaits it, and prints
/// how it ended.
async fn serve<R, W>(
    connector: &Connector,
    io: &mut JsonLines<R, W>,
    buffer: &mut PeerBuffer,
    direction: Direction,
    size: usize,
    verify: bool,
) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let limit = operation_limit(size);
    let outcome = match direction {
        Direction::Read => {
            buffer.hold_pattern(size);
            let mut op = match connector
                .create_readable([Descriptor::from_slice(&buffer.bytes)])
                .await
            {
                Ok(op) => op,
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            };
            io.send_line(&op.metadata().to_json()).await?;
            tokio::time::timeout(limit, op.wait_for_completion()).await
        }
        Direction::Write => {
            buffer.hold_landing(size, verify);
            let mut op = match connector
                .create_writable([Descriptor::from_mut_slice(&mut buffer.bytes)])
                .await
            {
                Ok(op) => op,
                Err(e) => return io.send(&json!({"error": e.to_string()})).await,
            };
            io.send_line(&op.metadata().to_json()).await?;
            tokio::time::timeout(limit, op.wait_for_completion()).await
        }
    };
    let reply = match outcome {
        Ok(Ok(())) if verify && direction == Direction::Write => {
            json!({"done": true, "checksum": checksum(&buffer.bytes)})
        }
        Ok(Ok(())) => json!({"done": true}),
        Ok(Err(e)) => json!({"done": false, "error": e.to_string()}),
        Err(_) => json!({"done": false, "error": format!("not complete within {limit:?}")}),
    };
    io.send(&reply).await
}

/// The peer process, seen from the active side. Killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    io: JsonLines<ChildStdout, ChildStdin>,
    echo_port: u16,
}

impl Peer {
    /// Starts this program again with `--peer` and `args`, and waits for it to report ready.
    pub async fn spawn(args: &[&str]) -> Result<Peer> {
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .arg("--peer")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the peer has no stdout pipe")?;
        let stdin = child.stdin.take().ok_or("the peer has no stdin pipe")?;
        let mut io = JsonLines::new(stdout, stdin);
        let ready = io.recv(START_LIMIT).await?;
        let echo_port = ready["echo_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("the peer did not start: {ready}"))?;
        Ok(Peer {
            child,
            io,
            echo_port,
        })
    }

    /// The peer's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Where the peer's ping-pong server listens.
    pub fn echo_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.echo_port))
    }

    /// Tells the peer to exit and waits for it; kills it if it does not exit in time.
    pub async fn exit(mut self) -> Result<()> {
        let told = self.io.send(&json!({"op": "exit"})).await;
        match tokio::time::timeout(EXIT_LIMIT, self.child.wait()).await {
            Ok(status) if told.is_ok() && status.as_ref().is_ok_and(|s| s.success()) => Ok(()),
            Ok(status) => Err(format!("the peer ended badly: {status:?}").into()),
            Err(_) => {
                self.child.kill().await?;
                Err(format!("the peer did not exit within {EXIT_LIMIT:?}; killed").into())
            }
        }
    }
}

/// One size and direction, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Which way the bytes went.
    pub direction: Direction,
    /// Bytes per operation.
    pub size: usize,
    /// The timed operations (the verified warm-up excluded).
    pub summary: Summary,
    /// Whether the warm-up operation's bytes matched, byte for byte (read) or by checksum
    /// (write).
    pub verified: bool,
}

/// Measures `direction` at `size` against `peer`: one untimed warm-up operation whose bytes
/// are verified, then timed operations as `plan` says. An operation's time runs from just
/// before `begin_read`/`begin_write` to its `wait_for_completion` returning `Ok`; the
/// metadata exchange is not in it.
pub async fn measure(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    size: usize,
    plan: IterationPlan,
) -> Result<Measured> {
    let (mut buffer, verified) = match direction {
        Direction::Read => {
            let mut landing = vec![0u8; size];
            transfer(connector, peer, direction, &mut landing, true).await?;
            let verified = landing == ferry::demo::pattern(size, READ_SEED);
            (landing, verified)
        }
        Direction::Write => {
            let mut source = ferry::demo::pattern(size, WRITE_SEED);
            let expected = checksum(&source);
            let done = transfer(connector, peer, direction, &mut source, true).await?;
            (source, done.1["checksum"].as_u64() == Some(expected))
        }
    };
    let mut samples = Vec::new();
    let mut spent = Duration::ZERO;
    while plan.wants_more(samples.len(), spent) {
        let (elapsed, _) = transfer(connector, peer, direction, &mut buffer, false).await?;
        spent += elapsed;
        samples.push(elapsed);
    }
    let summary = Summary::from_samples(samples).ok_or("the plan asked for no operations")?;
    Ok(Measured {
        direction,
        size,
        summary,
        verified,
    })
}

/// One operation: asks the peer for a passive operation, begins the active one over `buffer`
/// and times it, then reads the peer's completion line, which it returns.
async fn transfer(
    connector: &Connector,
    peer: &mut Peer,
    direction: Direction,
    buffer: &mut [u8],
    verify: bool,
) -> Result<(Duration, Value)> {
    let size = buffer.len();
    let limit = operation_limit(size);
    peer.io
        .send(&json!({"op": direction.passive(), "size": size, "verify": verify}))
        .await?;
    let line = peer.io.recv_line(limit).await?.to_owned();
    let reply: Value = serde_json::from_str(&line)?;
    if let Some(e) = error_of(&reply) {
        return Err(format!("the peer could not expose {size} bytes: {e}").into());
    }
    let metadata = RdmaMetadata::from_json(&line)?;
    let timed = async {
        let start = Instant::now();
        let elapsed = match direction {
            Direction::Read => {
                let mut op = connector
                    .begin_read(&metadata, [Descriptor::from_mut_slice(buffer)])
                    .await?;
                op.wait_for_completion().await?;
                start.elapsed()
            }
            Direction::Write => {
                let mut op = connector
                    .begin_write([Descriptor::from_slice(buffer)], &metadata)
                    .await?;
                op.wait_for_completion().await?;
                start.elapsed()
            }
        };
        Ok::<_, ferry::Error>(elapsed)
    };
    let elapsed = tokio::time::timeout(limit, timed)
        .await
        .map_err(|_| {
            format!(
                "{} of {size} bytes not complete within {limit:?}",
                direction.name()
            )
        })?
        .map_err(|e| format!("{} of {size} bytes failed: {e}", direction.name()))?;
    let done = peer.io.recv(limit).await?;
    if done["done"] != Value::Bool(true) {
        let why = error_of(&done).unwrap_or_else(|| done.to_string());
        return Err(format!("the peer's {} failed: {why}", direction.passive()).into());
    }
    Ok((elapsed, done))
}
