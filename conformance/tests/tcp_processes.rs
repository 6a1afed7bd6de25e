//! tcp across process boundaries: this test process and `ferry-tcp-peer` children pair both
//! ways, refuse stale metadata, and see each other die mid-transfer; and two children in two
//! network namespaces joined by a veth pair pair over a real (virtual) link.

use std::process::Stdio;
use std::time::Duration;

use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Connector, Descriptor, Error, RdmaMetadata};
use ferry_conformance::rules::pattern;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const WAIT: Duration = Duration::from_secs(30);

/// A `ferry-tcp-peer` child, killed when dropped.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    async fn spawn(prefix: &[&str], bind: &str) -> Peer {
        let exe = env!("CARGO_BIN_EXE_ferry-tcp-peer");
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(["--bind", bind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the peer starts");
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut peer = Peer {
            child,
            stdin,
            stdout,
        };
        assert_eq!(peer.next().await["ready"], true);
        peer
    }

    async fn send(&mut self, command: Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("the peer reads commands");
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .expect("the peer answers in time")
            .expect("stdout")
            .expect("the peer is alive");
        serde_json::from_str(&line).expect("one JSON value per line")
    }

    /// Starts a passive operation in the child and returns its metadata.
    async fn expose(&mut self, cmd: &str, sizes: &[usize], seed: u64) -> RdmaMetadata {
        self.send(json!({ "cmd": cmd, "sizes": sizes, "seed": seed }))
            .await;
        let answer = self.next().await;
        let json = answer["metadata"].as_str().expect("metadata");
        RdmaMetadata::from_json(json).expect("valid metadata")
    }

    async fn kill(&mut self) {
        self.child.kill().await.expect("kill the peer");
    }
}

async fn local() -> Connector {
    Connector::builder()
        .backend(TcpBackend::bind(TcpConfig::default()).await.expect("binds"))
        .build()
        .await
        .expect("builds")
}

fn sources(sizes: &[usize], seed: u64, factor: u64) -> Vec<Vec<u8>> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, seed * factor + i as u64))
        .collect()
}

const SHAPES: [&[usize]; 5] = [&[1], &[4096], &[1 << 20], &[16 << 20, 0, 3], &[4096; 64]];

#[tokio::test]
async fn pairs_both_ways_with_another_process() {
    let mut peer = Peer::spawn(&[], "127.0.0.1:0").await;
    let me = local().await;
    for (seed, sizes) in SHAPES.iter().enumerate() {
        let seed = seed as u64 + 1;
        // The child exposes a readable; this process reads it.
        let metadata = peer.expose("readable", sizes, seed).await;
        let mut landing: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let mut read = me
            .begin_read(
                &metadata,
                landing.iter_mut().map(|l| Descriptor::from_mut_slice(l)),
            )
            .await
            .expect("begin read");
        read.wait_for_completion().await.expect("read");
        drop(read);
        assert_eq!(peer.next().await["outcome"], "ok");
        assert!(landing == sources(sizes, seed, 131), "read of {sizes:?}");

        // The child exposes a writable; this process writes into it.
        let metadata = peer.expose("writable", sizes, seed).await;
        let data = sources(sizes, seed, 137);
        let mut write = me
            .begin_write(data.iter().map(|d| Descriptor::from_slice(d)), &metadata)
            .await
            .expect("begin write");
        write.wait_for_completion().await.expect("write");
        let answer = peer.next().await;
        assert_eq!(answer["outcome"], "ok");
        assert_eq!(answer["verified"], true, "write of {sizes:?}");

        // This process exposes a readable; the child reads it.
        let data = sources(sizes, seed, 131);
        let mut readable = me
            .create_readable(data.iter().map(|d| Descriptor::from_slice(d)))
            .await
            .expect("readable");
        peer.send(
            json!({ "cmd": "read", "metadata": readable.metadata().to_json(), "seed": seed }),
        )
        .await;
        let (served, answer) = tokio::join!(readable.wait_for_completion(), peer.next());
        served.expect("readable");
        assert_eq!(answer["outcome"], "ok");
        assert_eq!(answer["verified"], true, "child read of {sizes:?}");

        // This process exposes a writable; the child writes into it.
        let mut landing: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        {
            let mut writable = me
                .create_writable(landing.iter_mut().map(|l| Descriptor::from_mut_slice(l)))
                .await
                .expect("writable");
            peer.send(
                json!({ "cmd": "write", "metadata": writable.metadata().to_json(), "seed": seed }),
            )
            .await;
            let (landed, answer) = tokio::join!(writable.wait_for_completion(), peer.next());
            landed.unwrap_or_else(|e| panic!("writable: {e:?}; the child said {answer}"));
            assert_eq!(answer["outcome"], "ok");
        }
        assert!(
            landing == sources(sizes, seed, 137),
            "child write of {sizes:?}"
        );
    }
    peer.send(json!({ "cmd": "exit" })).await;
}

#[tokio::test]
async fn another_process_gets_stale_metadata_refused() {
    let mut peer = Peer::spawn(&[], "127.0.0.1:0").await;
    let me = local().await;
    let data = vec![5u8; 4096];
    let metadata = {
        let readable = me
            .create_readable([Descriptor::from_slice(&data)])
            .await
            .expect("readable");
        readable.metadata().to_json()
    };
    peer.send(json!({ "cmd": "read", "metadata": metadata, "seed": 0 }))
        .await;
    let answer = peer.next().await;
    assert_eq!(answer["outcome"], format!("{:?}", Error::StaleMetadata));
}

#[tokio::test]
async fn a_process_dying_mid_transfer_is_peer_lost_on_the_other_side() {
    // The child serves a large readable and dies while this process reads it.
    let mut peer = Peer::spawn(&[], "127.0.0.1:0").await;
    let me = local().await;
    let metadata = peer.expose("readable", &[512 << 20], 9).await;
    let mut landing = vec![0u8; 512 << 20];
    let mut read = me
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
        .expect("begin read");
    peer.kill().await;
    let outcome = tokio::time::timeout(WAIT, read.wait_for_completion())
        .await
        .expect("ends in time");
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );

    // This process serves a large readable; the child reading it dies mid-transfer.
    let mut peer = Peer::spawn(&[], "127.0.0.1:0").await;
    let data = vec![7u8; 512 << 20];
    let mut readable = me
        .create_readable([Descriptor::from_slice(&data)])
        .await
        .expect("readable");
    peer.send(json!({ "cmd": "read", "metadata": readable.metadata().to_json(), "seed": 0 }))
        .await;
    // Serve until the child's read has reached this side, then kill the child.
    tokio::time::timeout(WAIT, async {
        while readable.status() != ferry::OperationStatus::InProgress {
            let early = readable
                .wait_for_completion_timeout(Duration::from_millis(2))
                .await;
            assert_eq!(early, Err(Error::Timeout));
        }
    })
    .await
    .expect("the child's read arrives");
    peer.kill().await;
    let outcome = tokio::time::timeout(WAIT, readable.wait_for_completion())
        .await
        .expect("ends in time");
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
}

/// Two namespaces joined by a veth pair, removed when dropped.
struct Namespaces {
    names: [String; 2],
}

impl Namespaces {
    fn create() -> Result<Namespaces, String> {
        let tag = std::process::id() % 100_000;
        let names = [format!("ferry{tag}a"), format!("ferry{tag}b")];
        let spaces = Namespaces { names };
        let [a, b] = &spaces.names;
        let (va, vb) = (format!("fv{tag}a"), format!("fv{tag}b"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "10.231.0.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "10.231.0.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let status = std::process::Command::new("ip")
                .args(&step)
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if !status.status.success() {
                return Err(format!(
                    "`ip {}` failed: {}",
                    step.join(" "),
                    String::from_utf8_lossy(&status.stderr).trim()
                ));
            }
        }
        Ok(spaces)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "delete", name])
                .output();
        }
    }
}

#[tokio::test]
async fn pairs_across_network_namespaces() {
    let spaces = match Namespaces::create() {
        Ok(spaces) => spaces,
        Err(reason) => {
            println!("skipped: cannot create network namespaces here ({reason})");
            return;
        }
    };
    let [a, b] = &spaces.names;
    let mut left = Peer::spawn(&["ip", "netns", "exec", a], "10.231.0.1:0").await;
    let mut right = Peer::spawn(&["ip", "netns", "exec", b], "10.231.0.2:0").await;
    for (seed, sizes) in [&[4096usize][..], &[16 << 20, 5][..]].iter().enumerate() {
        let seed = seed as u64 + 1;
        let metadata = left.expose("readable", sizes, seed).await;
        assert!(
            metadata.nixl_metadata.starts_with("ferry-tcp/1:"),
            "{}",
            metadata.nixl_metadata
        );
        right
            .send(json!({ "cmd": "read", "metadata": metadata.to_json(), "seed": seed }))
            .await;
        let answer = right.next().await;
        assert_eq!(answer["outcome"], "ok");
        assert_eq!(answer["verified"], true);
        assert_eq!(left.next().await["outcome"], "ok");

        let metadata = right.expose("writable", sizes, seed).await;
        left.send(json!({ "cmd": "write", "metadata": metadata.to_json(), "seed": seed }))
            .await;
        assert_eq!(left.next().await["outcome"], "ok");
        let answer = right.next().await;
        assert_eq!(answer["outcome"], "ok");
        assert_eq!(answer["verified"], true);
    }
    // The namespaces are really apart: this process (in neither) cannot reach them.
    let metadata = left.expose("readable", &[64], 9).await;
    let me = local().await;
    let mut landing = vec![0u8; 64];
    let outcome = match me
        .begin_read(&metadata, [Descriptor::from_mut_slice(&mut landing)])
        .await
    {
        Ok(mut read) => read.wait_for_completion().await,
        Err(e) => Err(e),
    };
    assert!(
        matches!(outcome, Err(Error::PeerLost { .. })),
        "{outcome:?}"
    );
    left.send(json!({ "cmd": "exit" })).await;
    right.send(json!({ "cmd": "exit" })).await;
}
