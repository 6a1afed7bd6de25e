//! The ucx harness: every Connector gets its own UCP context, worker and progress thread in
//! this process. Where UCX is missing (the build found no `libucx-dev`, or a context cannot be
//! made here), every rule prints `skipped: <reason>`.

use std::sync::{Arc, Mutex};

use ferry::ucx::UcxBackend;
use ferry::Connector;

use crate::{Harness, LiveState, NotifyFault, Options, Skip};

/// Connectors on UCX workers of this process.
#[derive(Debug, Default)]
pub struct UcxHarness {
    backends: Mutex<Vec<Arc<UcxBackend>>>,
}

impl UcxHarness {
    /// A harness; UCX reads its configuration (`UCX_TLS`, `UCX_NET_DEVICES`) from the
    /// environment.
    pub fn new() -> Self {
        UcxHarness::default()
    }
}

impl Harness for UcxHarness {
    fn available(&self) -> Result<(), Skip> {
        ferry::ucx::available().map_err(Skip)
    }

    async fn connector(&self, options: Options) -> Connector {
        let backend = Arc::new(UcxBackend::new().expect("a UCX worker starts"));
        self.backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(backend.clone());
        let n = self
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        options
            .build(&format!("{}#{n}", options.name), backend)
            .await
    }

    fn crash(&self, _connector: &Connector) -> Result<(), Skip> {
        Err(Skip(
            "a UCX worker in the test process cannot be killed without it (the two-process \
             suite, ucx_two_processes, kills its backend hosts instead)"
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
            "the notification is an active message UCX orders after the flushed data; it \
             cannot be dropped or delayed alone"
                .into(),
        ))
    }

    fn partition(&self, _a: &Connector, _b: &Connector) -> Result<(), Skip> {
        Err(Skip(
            "partitioning UCX workers needs a network namespace per worker".into(),
        ))
    }

    fn live_state(&self) -> Result<LiveState, Skip> {
        let backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        let stats: Vec<_> = backends.iter().map(|b| b.stats()).collect();
        Ok(LiveState {
            operations: stats.iter().map(|s| s.live_transfers).sum(),
            keys: stats.iter().map(|s| s.live_keys).sum(),
        })
    }
}
