//! A backend in its own process — tcp, nixl or ucx (`ferry-backend-host nixl`) — driven over
//! stdin/stdout by the conformance suite's
//! [`ProcessHarness`](ferry_conformance::remote::ProcessHarness): it exposes and posts
//! transfers on its own copy of a remote Connector's memory and reports their events. See
//! `ferry_conformance::remote` for the design and `remote::proto` for the frames.
//!
//! Its first frame is `Ready`, with the backend's capabilities or why it could not start. It
//! exits when its stdin closes, so it never outlives the test that spawned it.

use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{BufReader, BufWriter, Write as _};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use ferry::core::state::Event;
use ferry::core::{Peer, Transfer};
use ferry::tcp::{TcpBackend, TcpConfig};
use ferry::{Backend, Capabilities, Descriptor, EndpointBlob, Error, OperationKind, RdmaMetadata};
use ferry_conformance::remote::proto::{self, Buffer, CancelOutcome, Command, Reply};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

enum Control {
    Cancel,
    Drop,
}

type Out = UnboundedSender<Reply>;
type Peers = Arc<Mutex<HashMap<u64, Arc<dyn Peer>>>>;

/// What a backend still holds: transfers, keys.
type LiveCount = Box<dyn Fn() -> (u64, u64) + Send>;

/// Starts the backend named `name`, with a way to count what it holds.
async fn start(name: &str) -> Result<(Arc<dyn Backend>, LiveCount), Error> {
    match name {
        "tcp" => {
            let backend = TcpBackend::bind(TcpConfig::default()).await?;
            let stats = backend.stats_handle();
            let live: LiveCount =
                Box::new(move || (stats.live_transfers() as u64, stats.live_keys() as u64));
            Ok((Arc::new(backend), live))
        }
        #[cfg(feature = "nixl")]
        "nixl" => {
            use ferry::nixl::{NixlBackend, NixlConfig};
            let name = format!("ferry-backend-host-{}-1", std::process::id());
            let backend = Arc::new(NixlBackend::new(NixlConfig::named(name))?);
            let counted = backend.clone();
            let live: LiveCount = Box::new(move || {
                let stats = counted.stats();
                (stats.live_transfers as u64, stats.live_keys as u64)
            });
            Ok((backend, live))
        }
        #[cfg(feature = "ucx")]
        "ucx" => {
            let backend = Arc::new(ferry::ucx::UcxBackend::new()?);
            let counted = backend.clone();
            let live: LiveCount = Box::new(move || {
                let stats = counted.stats();
                (stats.live_transfers as u64, stats.live_keys as u64)
            });
            Ok((backend, live))
        }
        other => Err(Error::BackendUnavailable {
            backend: "remote",
            reason: format!("this host cannot run a {other:?} backend"),
        }),
    }
}

fn memory(buffers: Vec<Buffer>) -> Vec<Descriptor<'static>> {
    buffers
        .into_iter()
        .map(|b| match b {
            Buffer::Filled(bytes) => Descriptor::from_vec(bytes),
            Buffer::Sized(len) => Descriptor::from_vec(vec![0u8; len as usize]),
        })
        .collect()
}

/// The backend's registrations of one transfer's memory, as a Connector would hold them while
/// the operation lives: NIXL moves only registered memory. Deregistered on drop, before the
/// memory is freed.
struct Registered {
    backend: Arc<dyn Backend>,
    ids: Vec<ferry::core::RegistrationId>,
}

impl Registered {
    fn new(backend: &Arc<dyn Backend>, memory: &[Descriptor<'_>]) -> Result<Registered, Error> {
        let mut registered = Registered {
            backend: backend.clone(),
            ids: Vec::with_capacity(memory.len()),
        };
        for descriptor in memory {
            registered.ids.push(backend.register(descriptor.region())?);
        }
        Ok(registered)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.ids
            .drain(..)
            .for_each(|id| self.backend.deregister(id));
    }
}

fn snapshot(event: &Event, lands: bool, memory: &[Descriptor<'_>]) -> Option<Vec<Vec<u8>>> {
    (lands && matches!(event, Event::Completed)).then(|| {
        memory
            .iter()
            .map(|d| d.as_slice().unwrap_or_default().to_vec())
            .collect()
    })
}

/// Drives one transfer until it ends, is cancelled or is dropped, reporting every event.
///
/// The transfer and its registrations are dropped before its last reply goes out: a harness
/// that has seen an operation end then counts it gone (`Command::Live`).
async fn drive(
    op: u64,
    mut transfer: Box<dyn Transfer>,
    registered: Registered,
    memory: &mut [Descriptor<'static>],
    lands: bool,
    out: Out,
    mut control: UnboundedReceiver<Control>,
) {
    enum Step {
        Event(Event),
        Control(Option<Control>),
    }
    let last = loop {
        let step = poll_fn(|cx| {
            if let Poll::Ready(c) = control.poll_recv(cx) {
                return Poll::Ready(Step::Control(c));
            }
            transfer.poll_event(cx, memory).map(Step::Event)
        })
        .await;
        match step {
            Step::Event(event) => {
                let terminal = matches!(
                    event,
                    Event::Completed | Event::PeerCancelled | Event::Failed(_)
                );
                let landed = snapshot(&event, lands, memory);
                let reply = Reply::Event { op, event, landed };
                if terminal {
                    break Some(reply);
                }
                let _ = out.send(reply);
            }
            Step::Control(Some(Control::Cancel)) => {
                let event = transfer.cancel(memory);
                let landed = event.as_ref().and_then(|e| snapshot(e, lands, memory));
                let outcome = CancelOutcome::Cancelled(event, landed);
                break Some(Reply::CancelResult { op, outcome });
            }
            Step::Control(Some(Control::Drop) | None) => break None,
        }
    };
    drop(transfer);
    drop(registered);
    if let Some(reply) = last {
        let _ = out.send(reply);
    }
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
    backend: Arc<dyn Backend>,
    live: LiveCount,
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
                    let mut memory = memory(buffers);
                    let registered = Registered::new(&backend, &memory);
                    let exposed = match registered {
                        Ok(registered) => backend
                            .expose(kind, key, &memory, deadline)
                            .await
                            .map(|exposed| (exposed, registered)),
                        Err(e) => Err(e),
                    };
                    match exposed {
                        Ok((exposed, registered)) => {
                            let addrs = memory.iter().map(|d| d.addr()).collect();
                            let result = Ok((exposed.endpoint.encode(), addrs));
                            let _ = out.send(Reply::Exposed { op, result });
                            let lands = kind == OperationKind::Write;
                            let transfer = exposed.transfer;
                            drive(op, transfer, registered, &mut memory, lands, out, control).await;
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
                let (backend, out) = (self.backend.clone(), self.out.clone());
                tokio::spawn(async move {
                    let mut memory = memory(buffers);
                    let registered = Registered::new(&backend, &memory);
                    let posted = match (peer, RdmaMetadata::from_json(&metadata), registered) {
                        (_, _, Err(e)) => Err(e),
                        (Some(peer), Ok(metadata), Ok(registered)) => peer
                            .post(kind, &metadata, &mut memory, deadline)
                            .await
                            .map(|transfer| (transfer, registered)),
                        (None, _, _) => Err(Error::PeerLost {
                            reason: "the host has no such peer".into(),
                        }),
                        (_, Err(e), _) => Err(e),
                    };
                    match posted {
                        Ok((transfer, registered)) => {
                            let _ = out.send(Reply::Posted { op, result: Ok(()) });
                            let lands = kind == OperationKind::Read;
                            drive(op, transfer, registered, &mut memory, lands, out, control).await;
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
                let (operations, keys) = (self.live)();
                let _ = self.out.send(Reply::Live {
                    req,
                    operations,
                    keys,
                });
            }
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "tcp".into());
    let started = start(&name).await;

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

    // The host drives every transfer itself, so its operations never wait on their owner's
    // polls, whatever the backend's own capability says.
    let ready = started.as_ref().map(|(backend, _)| Capabilities {
        progress_needs_polling: false,
        ..backend.capabilities().clone()
    });
    let _ = out.send(Reply::Ready {
        result: ready.map_err(Clone::clone),
    });
    let Ok((backend, live)) = started else {
        // The harness has the reason; stay until it closes the pipe, so the reply is read.
        while commands.recv().await.is_some() {}
        std::process::exit(1)
    };
    let mut host = Host {
        backend,
        live,
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
