//! The simulator's harness: a fresh seeded world per test, with every fault available.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry::sim::{NodeId, NotificationFault, SimBackend, SimWorld};
use ferry::Connector;

use crate::{Harness, LiveState, NotifyFault, Options, Skip};

/// A world per test; Connectors are nodes of it.
#[derive(Debug)]
pub struct SimHarness {
    world: SimWorld,
    nodes: Mutex<HashMap<String, NodeId>>,
}

impl SimHarness {
    /// A harness over a world seeded with 0xFE44.
    pub fn new() -> Self {
        Self::with_world(SimWorld::new(0xFE44))
    }

    /// A harness over a given world.
    pub fn with_world(world: SimWorld) -> Self {
        SimHarness {
            world,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// The world.
    pub fn world(&self) -> &SimWorld {
        &self.world
    }

    fn node(&self, connector: &Connector) -> Result<NodeId, Skip> {
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(connector.worker_id())
            .copied()
            .ok_or_else(|| {
                Skip(format!(
                    "{} was not made by this harness",
                    connector.worker_id()
                ))
            })
    }
}

impl Default for SimHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness for SimHarness {
    async fn connector(&self, options: Options) -> Connector {
        let name = {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            format!("{}#{}", options.name, nodes.len())
        };
        let backend = SimBackend::new(&self.world, &name).expect("inside a tokio runtime");
        let node = backend.node();
        let connector = options.build(&name, std::sync::Arc::new(backend)).await;
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, node);
        connector
    }

    fn crash(&self, connector: &Connector) -> Result<(), Skip> {
        self.world.crash(self.node(connector)?);
        Ok(())
    }

    fn fault_notifications(
        &self,
        from: &Connector,
        to: &Connector,
        fault: NotifyFault,
        count: u32,
    ) -> Result<(), Skip> {
        let fault = match fault {
            NotifyFault::Drop => NotificationFault::Drop,
            NotifyFault::Delay(d) => NotificationFault::Delay(d),
        };
        self.world
            .fault_notifications(self.node(from)?, self.node(to)?, fault, count);
        Ok(())
    }

    fn partition(&self, a: &Connector, b: &Connector) -> Result<(), Skip> {
        self.world.partition(self.node(a)?, self.node(b)?);
        Ok(())
    }

    fn live_state(&self) -> Result<LiveState, Skip> {
        let stats = self.world.stats();
        Ok(LiveState {
            operations: stats.live_operations,
            keys: stats.live_keys,
        })
    }
}
