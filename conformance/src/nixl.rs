//! The nixl harness: every Connector gets its own NIXL agent (UCX plugin) in this process.
//! Where `libnixl_capi.so` cannot be loaded, every rule prints `skipped: <reason>` with the
//! install hint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferry::nixl::{NixlBackend, NixlConfig};
use ferry::Connector;

use crate::{Harness, LiveState, NotifyFault, Options, Skip};

/// Connectors on NIXL agents of this process.
#[derive(Debug, Default)]
pub struct NixlHarness {
    made: AtomicUsize,
    stats: Mutex<HashMap<String, Arc<NixlBackend>>>,
}

impl NixlHarness {
    /// A harness with the default configuration.
    pub fn new() -> Self {
        NixlHarness::default()
    }
}

impl Harness for NixlHarness {
    fn available(&self) -> Result<(), Skip> {
        // Also refuses where the binary links the system UCX (library::UCX_CONFLICT).
        ferry::nixl::available(None).map(|_| ()).map_err(Skip)
    }

    async fn connector(&self, options: Options) -> Connector {
        // Agent names are unique per process: two agents that share one cannot pair.
        let n = self.made.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}", options.name, std::process::id());
        let backend = Arc::new(
            NixlBackend::new(NixlConfig::named(format!("{name}-1"))).expect("a NIXL agent starts"),
        );
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone(), backend.clone());
        options.build(&name, backend).await
    }

    fn crash(&self, _connector: &Connector) -> Result<(), Skip> {
        Err(Skip(
            "a NIXL agent cannot be killed inside the test process (the two-process suite, \
             nixl_two_processes, kills its backend hosts instead)"
                .into(),
        ))
    }

    fn fault_notifications(
        &self,
        _from: &Connector,
        _to: &Connector,
        _fault: NotifyFault,
        _count: u32,
    ) -> Result<(), Skip> {
        Err(Skip(
            "NIXL sends the notification itself after the data; it cannot be dropped or \
             delayed alone"
                .into(),
        ))
    }

    fn partition(&self, _a: &Connector, _b: &Connector) -> Result<(), Skip> {
        Err(Skip(
            "partitioning NIXL agents needs a network namespace per worker".into(),
        ))
    }

    fn live_state(&self) -> Result<LiveState, Skip> {
        let backends = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let stats: Vec<_> = backends.values().map(|b| b.stats()).collect();
        Ok(LiveState {
            operations: stats.iter().map(|s| s.live_transfers).sum(),
            keys: stats.iter().map(|s| s.live_keys).sum(),
        })
    }
}
