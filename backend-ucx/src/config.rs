//! [`UcxConfig`]: how a [`UcxBackend`](crate::UcxBackend) makes its endpoints.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    /// Always peer error mode (the default): a lost peer is observed, and a connect fails (a
    /// `Backend` error with `UCS_ERR_UNREACHABLE`) where no enabled transport supports the
    /// mode, as under `UCX_TLS=posix,cma,self`.
    #[default]
    Peer,
    /// Peer error mode where some enabled transport supports it, and no error handling where
    /// none does: with `UCX_TLS=posix,cma,self` endpoints get shared memory and CMA, and a
    /// lost peer is then not observed (see [`ErrorHandling::None`]). Which one is decided
    /// once per process by connecting two throwaway workers of this process in peer mode,
    /// never by a failed attempt against a real peer.
    PeerIfSupported,
    /// Never: UCX may select every transport (shared memory and CMA on one host even under
    /// its defaults), but a lost peer is not reported. Not the default for that reason; use
    /// it where the peers' lifetimes are tied together.
    ///
    /// What ferry's two-process conformance suite does without peer error handling (UCX 1.13,
    /// `UCX_TLS=posix,cma,self`, `FERRY_UCX_ERROR_HANDLING=peer-if-supported`): its earlier
    /// hangs were UCX's log on a backend host's standard output, the suite's protocol pipe
    /// (UCX prints there by default; ferry now sends it to standard error, see
    /// `safe::log_to_stderr`), and its `UCS_ERR_UNSUPPORTED` connects came from trying peer
    /// mode against a peer first (see [`ErrorHandling::PeerIfSupported`], now decided without
    /// one). With both fixed, 143 of its 146 rules pass. Two peer-loss rules fail fast with
    /// typed errors (`UCS_ERR_SHMEM_SEGMENT`: the killed peer's shared memory is gone), and
    /// in one rule (a readable dropped while its peer reads) the passive process read its
    /// freed memory for the peer and crashed (SIGSEGV in `ucp_get_req_handler`, the gap the
    /// crate docs name); its reader, which cannot observe the loss in this mode, waited out
    /// the rule's 60 s, and the test process then aborted (SIGABRT; by ferry's cancel drain,
    /// most likely, not confirmed). In another run the same rule's read completed with the
    /// wrong bytes instead (CMA read the freed memory).
    None,
}

impl ErrorHandling {
    /// Every mode, the default first.
    pub const ALL: [ErrorHandling; 3] = [
        ErrorHandling::Peer,
        ErrorHandling::PeerIfSupported,
        ErrorHandling::None,
    ];

    /// The mode's name, as [`ERROR_HANDLING_VAR`] spells it: `peer`, `peer-if-supported`,
    /// `none`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorHandling::Peer => "peer",
            ErrorHandling::PeerIfSupported => "peer-if-supported",
            ErrorHandling::None => "none",
        }
    }

    /// The mode named `name` ([`ErrorHandling::name`], surrounding whitespace ignored).
    pub fn from_name(name: &str) -> Option<ErrorHandling> {
        ErrorHandling::ALL
            .into_iter()
            .find(|mode| mode.name() == name.trim())
    }
}

/// The environment variable that sets [`UcxConfig::error_handling`] for
/// [`UcxConfig::from_env`] (and so for [`UcxBackend::new`](crate::UcxBackend::new),
/// [`available`](crate::available) and `Connector::auto`): `peer`, `peer-if-supported` or
/// `none`. Unset, the default ([`ErrorHandling::Peer`]).
pub const ERROR_HANDLING_VAR: &str = "FERRY_UCX_ERROR_HANDLING";

/// How a [`UcxBackend`](crate::UcxBackend) is set up. UCX's own configuration (`UCX_TLS`,
/// `UCX_NET_DEVICES`, ...) still comes from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcxConfig {
    /// How endpoints treat a lost peer.
    pub error_handling: ErrorHandling,
    /// How long a task awaiting an operation (`wait_for_completion`, or a poll of `status`)
    /// polls the worker itself before it leaves the operation to the progress thread and
    /// sleeps (an operation over 256 KiB: not at all); a small active operation's post runs
    /// on the caller's thread too. Zero leaves everything to the progress thread.
    /// Default 1 ms. See [`UcxBackend`](crate::UcxBackend)'s module docs, "Latency".
    pub owner_spin: Duration,
}

impl Default for UcxConfig {
    fn default() -> UcxConfig {
        UcxConfig {
            error_handling: ErrorHandling::default(),
            owner_spin: Duration::from_millis(1),
        }
    }
}

impl UcxConfig {
    /// The default configuration with what this process's environment sets: the error
    /// handling [`ERROR_HANDLING_VAR`] names. A value that names no mode is an error saying
    /// so, never silently the default.
    pub fn from_env() -> Result<UcxConfig, String> {
        let error_handling = match std::env::var(ERROR_HANDLING_VAR) {
            Err(std::env::VarError::NotPresent) => ErrorHandling::default(),
            Ok(value) => ErrorHandling::from_name(&value).ok_or_else(|| {
                format!(
                    "{ERROR_HANDLING_VAR}={value:?} names no error handling (peer, \
                     peer-if-supported, none)"
                )
            })?,
            Err(std::env::VarError::NotUnicode(value)) => {
                return Err(format!("{ERROR_HANDLING_VAR}={value:?} is not UTF-8"))
            }
        };
        Ok(UcxConfig {
            error_handling,
            ..UcxConfig::default()
        })
    }
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
        ErrorHandling::Peer => ErrorMode::Peer,
        // Decided once per process on two throwaway workers of this process
        // (`connects_locally`), never by a failed attempt against the peer: in UCX 1.13 such an
        // attempt takes a connection sequence number for that peer and can match the endpoint
        // the peer already made to us without error handling, which then fails it with
        // UCS_ERR_UNSUPPORTED ("asymmetric endpoint configuration is not supported, error
        // handling level mismatch") and destroys it. Seen in the two-process conformance
        // suite under UCX_TLS=posix,cma,self.
        ErrorHandling::PeerIfSupported if connects_locally(ErrorHandling::Peer).is_err() => {
            ErrorMode::None
        }
        ErrorHandling::PeerIfSupported => ErrorMode::Peer,
    };
    match worker.connect(address, first) {
        Ok(endpoint) => Ok((endpoint, first)),
        // Peer mode works here but not towards this peer (it offers none of the transports
        // that support it).
        Err(e) if handling == ErrorHandling::PeerIfSupported && e.is_unreachable() => {
            let endpoint = worker.connect(address, ErrorMode::None)?;
            Ok((endpoint, ErrorMode::None))
        }
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
    let known = |checked: &[(ErrorHandling, Result<(), Error>)]| {
        checked
            .iter()
            .find(|(h, _)| *h == handling)
            .map(|(_, outcome)| outcome.clone())
    };
    if let Some(outcome) = known(&CHECKED.lock().unwrap_or_else(|p| p.into_inner())) {
        return outcome;
    }
    // Not under the lock: checking `PeerIfSupported` checks `Peer` first.
    let outcome = (|| {
        let context = Context::new(&ContextOptions { wakeup: true })?;
        let passive = context.create_worker()?;
        let active = context.create_worker()?;
        connect_wired(&active, &passive, handling).map(drop)
    })();
    let mut checked = CHECKED.lock().unwrap_or_else(|p| p.into_inner());
    match known(&checked) {
        Some(first) => first,
        None => {
            checked.push((handling, outcome.clone()));
            outcome
        }
    }
}

/// How long [`connect_wired`] progresses both workers for the endpoint's wire-up.
const WIREUP: Duration = Duration::from_millis(500);

/// Connects `active` to `passive` (two workers of one context, in this thread) as
/// [`connect`] does, and progresses both until a flush of the endpoint completes (bounded by
/// half a second): the wire-up is done, so dropping the endpoint does not wait out its close
/// for a peer nobody progresses.
pub(crate) fn connect_wired(
    active: &Worker,
    passive: &Worker,
    handling: ErrorHandling,
) -> Result<(Endpoint, ErrorMode), Error> {
    let (endpoint, mode) = connect(active, &passive.address()?, handling)?;
    let mut flush = endpoint.flush()?;
    let deadline = Instant::now() + WIREUP;
    while flush.poll().is_none() && Instant::now() < deadline {
        active.progress()?;
        passive.progress()?;
    }
    Ok((endpoint, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_handling_names_round_trip() {
        for mode in ErrorHandling::ALL {
            assert_eq!(ErrorHandling::from_name(mode.name()), Some(mode));
            assert_eq!(
                ErrorHandling::from_name(&format!(" {} ", mode.name())),
                Some(mode)
            );
        }
        assert_eq!(ErrorHandling::ALL[0], ErrorHandling::default());
        assert_eq!(ErrorHandling::from_name("Peer"), None);
        assert_eq!(ErrorHandling::from_name(""), None);
    }
}
