//! The tcp harness: every Connector gets its own listener on 127.0.0.1; a crash aborts its
//! sockets at once, as a dying process's would close.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry::tcp::{AbortHandle, StatsHandle, TcpBackend, TcpConfig};
use ferry::Connector;

use crate::{Harness, LiveState, NotifyFault, Options, Skip};

/// A Connector on a fresh loopback listener with `config`, and its backend's counters: for
/// tests that look inside the tcp backend.
pub async fn connector_with_stats(config: TcpConfig) -> (Connector, StatsHandle) {
    let backend = TcpBackend::bind(config).await.expect("binds");
    let stats = backend.stats_handle();
    let connector = Connector::builder()
        .backend(backend)
        .build()
        .await
        .expect("builds");
    (connector, stats)
}

/// Connectors on loopback listeners.
#[derive(Debug, Default)]
pub struct TcpHarness {
    config: TcpConfig,
    connectors: Mutex<HashMap<String, (AbortHandle, StatsHandle)>>,
}

impl TcpHarness {
    /// A harness with the default configuration.
    pub fn new() -> Self {
        Self::with_config(TcpConfig::default())
    }

    /// A harness whose Connectors use `config`.
    pub fn with_config(config: TcpConfig) -> Self {
        TcpHarness {
            config,
            connectors: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (AbortHandle, StatsHandle)>> {
        self.connectors.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Harness for TcpHarness {
    async fn connector(&self, options: Options) -> Connector {
        let backend = TcpBackend::bind(self.config.clone())
            .await
            .expect("a loopback listener binds");
        let handles = (backend.abort_handle(), backend.stats_handle());
        let name = format!("{}#{}", options.name, self.lock().len());
        let connector = options.build(&name, std::sync::Arc::new(backend)).await;
        self.lock().insert(name, handles);
        connector
    }

    fn crash(&self, connector: &Connector) -> Result<(), Skip> {
        let connectors = self.lock();
        let (abort, _) = connectors.get(connector.worker_id()).ok_or_else(|| {
            Skip(format!(
                "{} was not made by this harness",
                connector.worker_id()
            ))
        })?;
        abort.abort();
        Ok(())
    }

    fn fault_notifications(
        &self,
        _from: &Connector,
        _to: &Connector,
        _fault: NotifyFault,
        _count: u32,
    ) -> Result<(), Skip> {
        Err(Skip(
            "tcp delivers notifications in order on the data connection; losing or delaying one \
             alone cannot be injected"
                .into(),
        ))
    }

    fn partition(&self, _a: &Connector, _b: &Connector) -> Result<(), Skip> {
        Err(Skip(
            "partitioning loopback needs a network namespace per Connector (see the tcp \
             cross-host test)"
                .into(),
        ))
    }

    fn live_state(&self) -> Result<LiveState, Skip> {
        let connectors = self.lock();
        Ok(LiveState {
            operations: connectors.values().map(|(_, s)| s.live_transfers()).sum(),
            keys: connectors.values().map(|(_, s)| s.live_keys()).sum(),
        })
    }
}
