//! Choosing a backend at run time: `Connector::auto()` and `ferry probe`.

use std::sync::Arc;

use ferry_core::{Backend, Error};

use crate::connector::Connector;

/// The environment variable that overrides [`Connector::auto`]'s choice (`sim`, `tcp`, `ucx`,
/// `nixl`).
pub const BACKEND_ENV: &str = "FERRY_BACKEND";

/// Transport backends in order of preference, best first; `sim` is the fallback.
pub const PREFERENCE: [&str; 3] = ["nixl", "ucx", "tcp"];

/// What `ferry probe` reports about one backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendProbe {
    /// The backend's name.
    pub name: &'static str,
    /// Whether this build contains it (its Cargo feature is on).
    pub built: bool,
    /// `None` if usable on this machine, else why not.
    pub unusable: Option<String>,
    /// For a usable backend over a native transport library (`ucx`): which transports that
    /// library enabled and selected here, or why it could not say. `None` for the others.
    pub transports: Option<Result<Transports, String>>,
    /// For a usable backend that can move CUDA device memory in some build (tcp, ucx, nixl):
    /// `Ok` where it moves device memory in this build on this machine, else why not (no
    /// `cuda` feature, no driver or device, a transport library without CUDA). `None` for
    /// sim and for backends that cannot run here.
    pub cuda: Option<Result<(), String>>,
}

/// Which transports a backend's native library enabled and selected on this machine.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transports {
    /// The library's environment variables as set in this process (for ucx every `UCX_*`:
    /// `UCX_TLS`, `UCX_NET_DEVICES`, ...).
    pub environment: Vec<(String, String)>,
    /// The `transport/device` pairs its configuration enabled (`tcp/lo`, `posix/memory`, ...).
    pub enabled: Vec<String>,
    /// What it selected for a connection as the backend makes them: per lane, the
    /// `transport/device` and what the lane carries (for ucx, a connection between two
    /// workers of this process, as to a peer on this host).
    pub selected: Vec<SelectedTransport>,
}

/// One transport a connection uses, and for what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SelectedTransport {
    /// `transport/device`, as the library names it.
    pub transport: String,
    /// What it carries, in the library's words (ucx: `am`, `rma_bw#0`, `wireup`, ...).
    pub uses: Vec<String>,
}

/// What [`probe`] found, and what [`Connector::auto`] would pick.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    /// Every backend ferry knows, built or not.
    pub backends: Vec<BackendProbe>,
    /// The backend `Connector::auto()` would pick, or why it would fail.
    pub choice: Result<&'static str, String>,
    /// Why it would pick that one.
    pub reason: String,
}

/// Looks at this build and this machine.
pub fn probe() -> Probe {
    let backends = survey(true);
    let (choice, reason) = match choose(&backends) {
        Ok((name, reason)) => (Ok(name), reason),
        Err(e) => (
            Err(e.to_string()),
            format!("{BACKEND_ENV} names a backend that cannot run"),
        ),
    };
    Probe {
        backends,
        choice,
        reason,
    }
}

/// Every backend ferry knows: built, usable here, and with `details` what its transports
/// selected and whether it moves device memory. The details make throwaway native backends
/// (a UCX context, a NIXL agent), so only `ferry probe` asks for them, not every
/// `Connector::auto`.
fn survey(details: bool) -> Vec<BackendProbe> {
    PREFERENCE
        .iter()
        .chain(["sim"].iter())
        .map(|&name| {
            let built = built(name);
            let unusable = match built {
                false => Some(format!(
                    "not in this build (enable the cargo feature `{name}`)"
                )),
                true => usable_here(name).err(),
            };
            let (transports, cuda) = match unusable {
                None if details => (transports(name), cuda_support(name)),
                _ => (None, None),
            };
            BackendProbe {
                name,
                built,
                unusable,
                transports,
                cuda,
            }
        })
        .collect()
}

/// Whether this build contains the backend (each transport backend adds its feature here).
fn built(name: &str) -> bool {
    (name == "sim" && cfg!(feature = "sim"))
        || (name == "tcp" && cfg!(feature = "tcp"))
        || (name == "nixl" && cfg!(feature = "nixl"))
        || (name == "ucx" && cfg!(feature = "ucx"))
}

/// Whether a built backend can run on this machine (its native library loads).
fn usable_here(name: &str) -> Result<(), String> {
    match name {
        // Also refuses where the binary links the system UCX (library::UCX_CONFLICT).
        #[cfg(feature = "nixl")]
        "nixl" => ferry_backend_nixl::available(None).map(|_| ()),
        #[cfg(feature = "ucx")]
        "ucx" => ferry_backend_ucx::available(),
        _ => Ok(()),
    }
}

/// Which transports a usable backend's native library enabled and selected, where it can say.
fn transports(name: &str) -> Option<Result<Transports, String>> {
    match name {
        #[cfg(feature = "ucx")]
        "ucx" => Some(
            ferry_backend_ucx::transports()
                .map(|found| Transports {
                    environment: found.environment,
                    enabled: found.enabled,
                    selected: found
                        .selected
                        .into_iter()
                        .map(|lane| SelectedTransport {
                            transport: lane.transport,
                            uses: lane.uses,
                        })
                        .collect(),
                })
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    }
}

/// Whether a usable backend moves CUDA device memory here, or why not (`None` for sim). The
/// native backends answer for a backend made as `Connector::auto` makes it.
fn cuda_support(name: &str) -> Option<Result<(), String>> {
    match name {
        #[cfg(feature = "cuda")]
        "tcp" => Some(
            ferry_core::cuda::device_count()
                .map(|_| ())
                .map_err(|e| e.to_string()),
        ),
        #[cfg(not(feature = "cuda"))]
        "tcp" => Some(Err("this build has no `cuda` feature".to_string())),
        #[cfg(feature = "ucx")]
        "ucx" => Some(
            ferry_backend_ucx::UcxBackend::new()
                .map_err(|e| e.to_string())
                .and_then(|backend| backend.cuda_support()),
        ),
        #[cfg(feature = "nixl")]
        "nixl" => {
            let agent = format!("ferry-probe-{}", std::process::id());
            Some(
                ferry_backend_nixl::NixlBackend::new(ferry_backend_nixl::NixlConfig::named(agent))
                    .map_err(|e| e.to_string())
                    .and_then(|backend| backend.cuda_support()),
            )
        }
        _ => None,
    }
}

fn choose(backends: &[BackendProbe]) -> Result<(&'static str, String), Error> {
    let usable = |name: &str| {
        backends
            .iter()
            .find(|b| b.name == name && b.unusable.is_none())
    };
    if let Ok(wanted) = std::env::var(BACKEND_ENV) {
        let wanted = wanted.trim().to_ascii_lowercase();
        return match backends.iter().find(|b| b.name == wanted) {
            Some(b) if b.unusable.is_none() => Ok((b.name, format!("{BACKEND_ENV}={wanted}"))),
            Some(b) => Err(Error::BackendUnavailable {
                backend: b.name,
                reason: b.unusable.clone().unwrap_or_default(),
            }),
            None => Err(Error::BackendUnavailable {
                backend: "unknown",
                reason: format!("{BACKEND_ENV}={wanted:?} is not one of nixl, ucx, tcp, sim"),
            }),
        };
    }
    if let Some(b) = PREFERENCE.iter().find_map(|name| usable(name)) {
        return Ok((
            b.name,
            "the most capable usable transport in this build".into(),
        ));
    }
    if usable("sim").is_some() {
        return Ok((
            "sim",
            "no transport backend is usable in this build, so the in-memory simulator: it pairs \
             Connectors of this process only"
                .into(),
        ));
    }
    Err(Error::BackendUnavailable {
        backend: "none",
        reason: "this build contains no backend; enable one of the features nixl, ucx, tcp, sim"
            .into(),
    })
}

/// The backend `Connector::auto()` and a builder without a backend use.
pub(crate) async fn default_backend(worker_id: Option<&str>) -> Result<Arc<dyn Backend>, Error> {
    let (name, reason) = choose(&survey(false))?;
    if name == "sim" {
        tracing::warn!(%reason, "ferry is using the sim backend");
    } else {
        tracing::debug!(backend = name, %reason, "ferry backend chosen");
    }
    match name {
        #[cfg(feature = "sim")]
        "sim" => {
            let world = crate::sim::default_world();
            let name = worker_id.unwrap_or("worker");
            Ok(Arc::new(ferry_backend_sim::SimBackend::new(&world, name)?))
        }
        #[cfg(feature = "tcp")]
        "tcp" => {
            let config = ferry_backend_tcp::TcpConfig::from_env()?;
            Ok(Arc::new(ferry_backend_tcp::TcpBackend::bind(config).await?))
        }
        #[cfg(feature = "nixl")]
        "nixl" => {
            // Dynamo names its agents `<worker_id>-<n>`; do the same, numbering the agents of
            // this process, since two agents with one name cannot pair.
            static AGENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let worker = worker_id
                .map(str::to_owned)
                .unwrap_or_else(|| format!("ferry-{}", std::process::id()));
            let config = ferry_backend_nixl::NixlConfig::named(format!("{worker}-{n}"));
            Ok(Arc::new(ferry_backend_nixl::NixlBackend::new(config)?))
        }
        #[cfg(feature = "ucx")]
        "ucx" => Ok(Arc::new(ferry_backend_ucx::UcxBackend::new()?)),
        other => {
            let _ = worker_id;
            Err(Error::BackendUnavailable {
                backend: "unknown",
                reason: format!("{other} was chosen but this build cannot construct it"),
            })
        }
    }
}

impl Connector {
    /// A Connector on the best backend usable here: nixl, then ucx, then tcp. `FERRY_BACKEND`
    /// overrides the choice. The in-memory simulator is used only when named or when the build
    /// contains nothing else, and then a warning says so (`ferry probe` explains the choice).
    pub async fn auto() -> Result<Connector, Error> {
        Connector::builder().build().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_says_whether_each_usable_transport_moves_device_memory() {
        let probe = probe();
        for backend in &probe.backends {
            match (backend.name, &backend.unusable) {
                ("sim", _) | (_, Some(_)) => assert_eq!(backend.cuda, None, "{backend:?}"),
                (_, None) => assert!(backend.cuda.is_some(), "{backend:?}"),
            }
        }
        assert!(
            survey(false)
                .iter()
                .all(|b| b.cuda.is_none() && b.transports.is_none()),
            "Connector::auto's survey makes no throwaway backends"
        );
        let tcp = probe.backends.iter().find(|b| b.name == "tcp").unwrap();
        if !cfg!(feature = "cuda") {
            assert_eq!(
                tcp.cuda,
                Some(Err("this build has no `cuda` feature".to_string()))
            );
        }
    }
}
