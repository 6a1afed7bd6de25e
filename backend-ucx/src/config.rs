//! [`UcxConfig`]: how a [`UcxBackend`](crate::UcxBackend) makes its endpoints.

use std::sync::Mutex;

use crate::error::Error;
use crate::safe::{Context, ContextOptions, Endpoint, ErrorMode, Worker, WorkerAddress};

/// How the backend's endpoints treat a lost peer: UCX's error handling mode, which also
/// decides which transports UCX may select.
///
/// UCX 1.13 selects, for an endpoint in peer error mode (`UCP_ERR_HANDLING_MODE_PEER`), only
/// transports that can report a failed peer: not its shared-memory transports (`posix`,
/// `sysv`, `self`: "no peer failure handler") and, for active messages, not `cma` ("no am
/// bcopy"). Under UCX's defaults on one host that leaves `tcp` alone; under
/// `UCX_TLS=posix,cma,self` nothing, and `ucp_ep_create` fails with `UCS_ERR_UNREACHABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorHandling {
    /// Peer error mode where some enabled transport supports it, and no error handling where
    /// none does (the default). With `UCX_TLS=posix,cma,self` endpoints get shared memory and
    /// CMA, and a lost peer is then not observed (see [`ErrorHandling::None`]); wherever a
    /// transport can report it (tcp, verbs), it is.
    #[default]
    PeerIfSupported,
    /// Always peer error mode: a connect fails (a `Backend` error with
    /// `UCS_ERR_UNREACHABLE`) where no enabled transport supports it.
    Peer,
    /// Never: UCX may select every transport (shared memory and CMA on one host even under
    /// its defaults), but a lost peer is not reported. An active operation paired with a
    /// peer that died may then end `Errored` with another cause, or only at its deadline;
    /// set one (`Connector` deadlines or `wait_for_completion_timeout`).
    None,
}

/// How a [`UcxBackend`](crate::UcxBackend) is set up. UCX's own configuration (`UCX_TLS`,
/// `UCX_NET_DEVICES`, ...) still comes from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UcxConfig {
    /// How endpoints treat a lost peer.
    pub error_handling: ErrorHandling,
}

/// Connects `worker` to `address` as `handling` says: the endpoint and whether it reports a
/// lost peer. The error of `ucp_ep_create` when no mode allowed works.
pub(crate) fn connect(
    worker: &Worker,
    address: &WorkerAddress,
    handling: ErrorHandling,
) -> Result<(Endpoint, ErrorMode), Error> {
    let first = match handling {
        ErrorHandling::None => ErrorMode::None,
        ErrorHandling::Peer | ErrorHandling::PeerIfSupported => ErrorMode::Peer,
    };
    match worker.connect(address, first) {
        Ok(endpoint) => Ok((endpoint, first)),
        Err(e) if handling == ErrorHandling::PeerIfSupported && e.is_unreachable() => worker
            .connect(address, ErrorMode::None)
            .map(|endpoint| (endpoint, ErrorMode::None)),
        Err(e) => Err(e),
    }
}

/// Whether, in this process, a worker can connect to another worker of the same context with
/// `handling` (the backend's context options): the enabled transports (`UCX_TLS`) can carry
/// the backend's endpoints at all. Checked once per process and mode.
///
/// It tells apart the two meanings of `UCS_ERR_UNREACHABLE` from `ucp_ep_create`: where this
/// succeeds, a peer that cannot be reached is gone (tcp's connect is refused) or offers none
/// of our transports; where it fails, the configuration reaches nothing.
pub(crate) fn connects_locally(handling: ErrorHandling) -> Result<(), Error> {
    static CHECKED: Mutex<Vec<(ErrorHandling, Result<(), Error>)>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, known)) = checked.iter().find(|(h, _)| *h == handling) {
        return known.clone();
    }
    let outcome = (|| {
        let context = Context::new(&ContextOptions { wakeup: true })?;
        let passive = context.create_worker()?;
        let active = context.create_worker()?;
        connect(&active, &passive.address()?, handling).map(drop)
    })();
    checked.push((handling, outcome.clone()));
    outcome
}
