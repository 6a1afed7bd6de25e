//! One JSON value per line between the two processes of a benchmark, every wait bounded.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;

use crate::Result;

/// How long writing one line may take (the other side reads promptly, or is gone).
const SEND_LIMIT: Duration = Duration::from_secs(30);

/// A line-oriented JSON channel over a reader and a writer: a child's stdout and stdin, or
/// this process's stdin and stdout.
#[derive(Debug)]
pub struct JsonLines<R, W> {
    reader: BufReader<R>,
    writer: W,
    line: String,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> JsonLines<R, W> {
    /// A channel reading lines from `reader` and writing them to `writer`.
    pub fn new(reader: R, writer: W) -> Self {
        JsonLines {
            reader: BufReader::new(reader),
            writer,
            line: String::new(),
        }
    }

    /// Writes `value` as one line and flushes it.
    pub async fn send(&mut self, value: &Value) -> Result<()> {
        self.send_line(&value.to_string()).await
    }

    /// Writes `line` (which must hold no newline) and a newline, and flushes.
    pub async fn send_line(&mut self, line: &str) -> Result<()> {
        if line.contains('\n') {
            return Err("a JSON line must not contain a newline".into());
        }
        // One write for the line and its newline: a reader woken by the line alone would
        // find it unfinished and wait again.
        let mut whole = Vec::with_capacity(line.len() + 1);
        whole.extend_from_slice(line.as_bytes());
        whole.push(b'\n');
        let write = async {
            self.writer.write_all(&whole).await?;
            self.writer.flush().await
        };
        tokio::time::timeout(SEND_LIMIT, write)
            .await
            .map_err(|_| format!("writing a line took more than {SEND_LIMIT:?}"))??;
        Ok(())
    }

    /// Reads the next line, without its newline. Fails on end of input or after `limit`.
    pub async fn recv_line(&mut self, limit: Duration) -> Result<&str> {
        self.line.clear();
        let n = tokio::time::timeout(limit, self.reader.read_line(&mut self.line))
            .await
            .map_err(|_| format!("no line from the other process within {limit:?}"))??;
        if n == 0 {
            return Err(Box::new(Closed));
        }
        Ok(self.line.trim_end_matches(['\n', '\r']))
    }

    /// Reads the next line as a JSON value.
    pub async fn recv(&mut self, limit: Duration) -> Result<Value> {
        let line = self.recv_line(limit).await?;
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:?}").into())
    }
}

/// The reading half of [`peer_stdio`]'s channel.
pub type PeerReader = Box<dyn AsyncRead + Unpin + Send>;
/// The writing half of [`peer_stdio`]'s channel.
pub type PeerWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// A peer process's channel over its standard input and output. Where they are pipes (as a
/// parent benchmark makes them), each is driven by the runtime's reactor in non-blocking mode,
/// so the task that writes a line writes it itself and goes straight on. tokio's
/// `stdin()`/`stdout()` hand every read and write to a blocking-pool thread and wake the task
/// back: measured with `ferry-bench-ucx`, a passive side then began awaiting its operation a
/// median 25–40 µs after the active side had its metadata and begun. Call it inside a runtime.
///
/// Non-blocking mode belongs to the open pipe, not to this channel, and stays set: anything
/// else writing the same pipe would see `EAGAIN` when it is full. So standard output stays
/// with tokio's `stdout()` where standard error is the same pipe (a peer run by hand with
/// `2>&1`); and a terminal or a file, which are no pipes, get tokio's `stdin()`/`stdout()`.
pub fn peer_stdio() -> JsonLines<PeerReader, PeerWriter> {
    let reader: PeerReader = match pipe_reader(std::io::stdin().as_fd()) {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let stdout = std::io::stdout();
    // Only where standard error is elsewhere: making the pipe sets its mode.
    let pipe = if same_file(stdout.as_fd(), std::io::stderr().as_fd()) {
        None
    } else {
        pipe_writer(stdout.as_fd()).ok()
    };
    let writer: PeerWriter = match pipe {
        Some(pipe) => Box::new(pipe),
        None => Box::new(tokio::io::stdout()),
    };
    JsonLines::new(reader, writer)
}

/// Whether `a` and `b` are the same file (device and inode); false where either cannot be
/// looked at.
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let stat = |fd: BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        file.metadata().ok().map(|m| (m.dev(), m.ino()))
    };
    matches!((stat(a), stat(b)), (Some(x), Some(y)) if x == y)
}

/// `fd`'s pipe, read through the reactor (set non-blocking); an error if it is no pipe.
fn pipe_reader(fd: BorrowedFd<'_>) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_file(std::fs::File::from(fd.try_clone_to_owned()?))
}

/// `fd`'s pipe, written through the reactor (set non-blocking); an error if it is no pipe.
fn pipe_writer(fd: BorrowedFd<'_>) -> std::io::Result<pipe::Sender> {
    pipe::Sender::from_file(std::fs::File::from(fd.try_clone_to_owned()?))
}

/// The other process closed its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the other process closed the channel")
    }
}

impl std::error::Error for Closed {}

/// The `"error"` field of a message, if it carries one.
pub fn error_of(message: &Value) -> Option<String> {
    message.get("error").map(|e| match e {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn values_cross_and_waits_end() {
        let (a, b) = tokio::io::duplex(1024);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut left = JsonLines::new(ar, aw);
        let mut right = JsonLines::new(br, bw);
        left.send(&serde_json::json!({"op": "exit"})).await.unwrap();
        let got = right.recv(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got["op"], "exit");
        assert!(right.recv(Duration::from_millis(10)).await.is_err());
        assert!(left.send_line("a\nb").await.is_err());
        drop(left);
        let closed = right.recv(Duration::from_secs(1)).await.unwrap_err();
        assert!(closed.is::<Closed>());
    }

    #[tokio::test]
    async fn pipes_are_driven_by_the_reactor_and_other_files_are_refused() {
        let (write, read) = pipe::pipe().unwrap();
        let reader = pipe_reader(read.as_fd()).expect("a pipe's read end");
        let writer = pipe_writer(write.as_fd()).expect("a pipe's write end");
        assert!(
            same_file(read.as_fd(), write.as_fd()),
            "two ends of one pipe"
        );
        drop((read, write));
        let mut channel = JsonLines::new(reader, writer);
        channel.send(&serde_json::json!({"n": 1})).await.unwrap();
        let got = channel.recv(Duration::from_secs(1)).await.unwrap();
        assert_eq!(got["n"], 1);
        let file = std::fs::File::open("Cargo.toml").unwrap();
        assert!(pipe_reader(file.as_fd()).is_err(), "not a pipe");
        assert!(pipe_writer(file.as_fd()).is_err(), "not a pipe");
        let (other, _read) = pipe::pipe().unwrap();
        assert!(!same_file(file.as_fd(), other.as_fd()));
    }
}
