//! One JSON value per line between the two processes of a benchmark, every wait bounded.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

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
        let write = async {
            self.writer.write_all(line.as_bytes()).await?;
            self.writer.write_all(b"\n").await?;
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
}
