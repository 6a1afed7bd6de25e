//! A tcp backend in its own process, driven over stdin/stdout by the conformance suite's
//! [`ProcessHarness`](ferry_conformance::remote::ProcessHarness): it exposes and posts
//! transfers on its own copy of a remote Connector's memory and reports their events. See
//! `ferry_conformance::remote` for the design and `remote::proto` for the frames.
//!
//! It exits when its stdin closes, so it never outlives the test that spawned it.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{BufReader, BufWriter, Write as _};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ferry::core::state::Event;
use ferry::core::{Peer, Transfer};
use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Backend, Descriptor, EndpointBlob, Error, OperationKind, RdmaMetadata};
use ferry_conformance::remote::proto::{self, Buffer, CancelOutcome, Command, Reply};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

enum Control {
    Cancel,
    Drop,
}

type Out = UnboundedSender<Reply>;
type Peers = Arc<Mutex<HashMap<u64, Arc<dyn Peer>>>>;

fn memory(buffers: Vec<Buffer>) -> Vec<Descriptor<'static>> {
    buffers
        .into_iter()
        .map(|b| match b {
            Buffer::Filled(bytes) => Descriptor::from_vec(bytes),
            Buffer::Sized(len) => Descriptor::from_vec(vec![0u8; len as usize]),
        })
        .collect()
}

fn snapshot(event: &Event, lands: bool, memory: &[Descriptor<'_>]) -> Option<Vec<Vec<u8>>> {
    (lands && matches!(event, Event::Completed))
        .then(|| memory.iter().map(|d| d.as_slice().to_vec()).collect())
}

/// Drives one transfer until it ends, is cancelled or is dropped, reporting every event.
async fn drive(
    op: u64,
    mut transfer: Box<dyn Transfer>,
    mut memory: Vec<Descriptor<'static>>,
    lands: bool,
    out: Out,
    mut control: UnboundedReceiver<Control>,
) {
    enum Step {
        Event(Event),
        Control(Option<Control>),
    }
    loop {
        let step = poll_fn(|cx| {
            if let Poll::Ready(c) = control.poll_recv(cx) {
                return Poll::Ready(Step::Control(c));
            }
            transfer.poll_event(cx, &mut memory).map(Step::Event)
        })
        .await;
        match step {
            Step::Event(event) => {
                let terminal = matches!(
                    event,
                    Event::Completed | Event::PeerCancelled | Event::Failed(_)
                );
                let landed = snapshot(&event, lands, &memory);
                let _ = out.send(Reply::Event { op, event, landed });
                if terminal {
                    break;
                }
            }
            Step::Control(Some(Control::Cancel)) => {
                let event = transfer.cancel(&mut memory);
                let landed = event.as_ref().and_then(|e| snapshot(e, lands, &memory));
                let outcome = CancelOutcome::Cancelled(event, landed);
                let _ = out.send(Reply::CancelResult { op, outcome });
                break;
            }
            Step::Control(Some(Control::Drop) | None) => break,
        }
    }
    drop(transfer);
    // A cancel that raced the terminal event finds the transfer ended; the event went first.
    control.close();
    while let Ok(c) = control.try_recv() {
        if let Control::Cancel = c {
            let outcome = CancelOutcome::Ended;
            let _ = out.send(Reply::CancelResult { op, outcome });
        }
    }
}

struct Host {
    backend: Arc<TcpBackend>,
    out: Out,
    peers: Peers,
    controls: HashMap<u64, UnboundedSender<Control>>,
    next_peer: Arc<std::sync::atomic::AtomicU64>,
}

impl Host {
    fn start(&mut self, op: u64) -> UnboundedReceiver<Control> {
        let (tx, rx) = unbounded_channel();
        self.controls.insert(op, tx);
        rx
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Expose {
                op,
                kind,
                key,
                deadline,
                buffers,
            } => {
                let control = self.start(op);
                let (backend, out) = (self.backend.clone(), self.out.clone());
                tokio::spawn(async move {
                    let memory = memory(buffers);
                    let exposed = backend.expose(kind, key, &memory, deadline).await;
                    match exposed {
                        Ok(exposed) => {
                            let blob = Ok(exposed.endpoint.encode());
                            let _ = out.send(Reply::Exposed { op, result: blob });
                            let lands = kind == OperationKind::Write;
                            drive(op, exposed.transfer, memory, lands, out, control).await;
                        }
                        Err(e) => {
                            let _ = out.send(Reply::Exposed { op, result: Err(e) });
                        }
                    }
                });
            }
            Command::Connect { req, endpoint } => {
                let (backend, out, peers) =
                    (self.backend.clone(), self.out.clone(), self.peers.clone());
                let next = self.next_peer.clone();
                tokio::spawn(async move {
                    let result = match EndpointBlob::parse(&endpoint) {
                        Ok(blob) => backend.connect(&blob).await,
                        Err(e) => Err(e),
                    }
                    .map(|peer| {
                        let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        peers
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(id, peer);
                        id
                    });
                    let _ = out.send(Reply::Connected { req, result });
                });
            }
            Command::Post {
                op,
                peer,
                kind,
                metadata,
                deadline,
                buffers,
            } => {
                let control = self.start(op);
                let peer = self
                    .peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&peer)
                    .cloned();
                let out = self.out.clone();
                tokio::spawn(async move {
                    let mut memory = memory(buffers);
                    let posted = match (peer, RdmaMetadata::from_json(&metadata)) {
                        (Some(peer), Ok(metadata)) => {
                            peer.post(kind, &metadata, &mut memory, deadline).await
                        }
                        (None, _) => Err(Error::PeerLost {
                            reason: "the host has no such peer".into(),
                        }),
                        (_, Err(e)) => Err(e),
                    };
                    match posted {
                        Ok(transfer) => {
                            let _ = out.send(Reply::Posted { op, result: Ok(()) });
                            let lands = kind == OperationKind::Read;
                            drive(op, transfer, memory, lands, out, control).await;
                        }
                        Err(e) => {
                            let _ = out.send(Reply::Posted { op, result: Err(e) });
                        }
                    }
                });
            }
            Command::Cancel { op } => {
                let sent = self
                    .controls
                    .get(&op)
                    .is_some_and(|c| c.send(Control::Cancel).is_ok());
                if !sent {
                    let outcome = CancelOutcome::Ended;
                    let _ = self.out.send(Reply::CancelResult { op, outcome });
                }
            }
            Command::Drop { op } => {
                if let Some(control) = self.controls.remove(&op) {
                    let _ = control.send(Control::Drop);
                }
            }
            Command::Live { req } => {
                let stats = self.backend.stats_handle();
                let _ = self.out.send(Reply::Live {
                    req,
                    operations: stats.live_transfers() as u64,
                    keys: stats.live_keys() as u64,
                });
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let backend = Arc::new(TcpBackend::bind(TcpConfig::default()).await?);

    let (out, mut replies) = unbounded_channel::<Reply>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdout = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        while let Some(reply) = replies.blocking_recv() {
            stdout.write_all(&reply.encode())?;
            if replies.is_empty() {
                stdout.flush()?;
            }
        }
        stdout.flush()
    });

    let (commands_tx, mut commands) = unbounded_channel::<Command>();
    std::thread::spawn(move || {
        let mut stdin = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
        while let Ok(Some((tag, body))) = proto::read_frame(&mut stdin) {
            match Command::decode(tag, &body) {
                Ok(command) => {
                    if commands_tx.send(command).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    eprintln!("ferry-backend-host: {e}");
                    break;
                }
            }
        }
    });

    let mut host = Host {
        backend,
        out,
        peers: Arc::default(),
        controls: HashMap::new(),
        next_peer: Arc::default(),
    };
    while let Some(command) = commands.recv().await {
        host.handle(command);
    }
    // Stdin closed: the harness is gone. Leave at once, as a killed worker would; transfers
    // still running hold the reply channel open, so the writer is not joined.
    drop((host, writer));
    std::process::exit(0)
}
