//! ferry-conformance: SPEC §11's suite. Each rule is written once, as an async function generic
//! over a [`Harness`], and compiled for every backend by [`conformance_suite!`], which puts the
//! backend's tests in a module named after it: `cargo test -p ferry-conformance -- tcp` runs
//! exactly the tcp rules.
//!
//! A backend that cannot honour a rule (it cannot inject a fault, or cannot observe something)
//! returns [`Skip`] with its reason, and the test prints `skipped: <reason>`.
//!
//! ```text
//! ferry_conformance::conformance_suite!(sim, ferry_conformance::sim::SimHarness::new());
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry::Connector;

#[cfg(feature = "nixl")]
pub mod nixl;
#[cfg(feature = "tcp")]
pub mod remote;
pub mod rules;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "tcp")]
pub mod tcp;
#[cfg(feature = "ucx")]
pub mod ucx;

/// Why a backend does not run a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

/// What a rule returns: `Ok` when it ran and held (a broken rule panics), `Err(Skip)` when the
/// backend cannot run it.
pub type Outcome = Result<(), Skip>;

/// Options for a Connector made by a harness.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The worker name.
    pub name: String,
    /// A per-operation deadline for the Connector.
    pub deadline: Option<Duration>,
    /// Registration cache capacity.
    pub registration_cache: usize,
    /// A layer a harness puts around the backend it built (the process harness translates
    /// addresses with it).
    pub wrap: Option<Wrap>,
}

/// A layer around a backend, applied by [`Options::build`]; only this crate's harnesses make
/// one.
#[derive(Clone)]
pub struct Wrap(pub(crate) Arc<WrapFn>);

/// What a [`Wrap`] does: the backend a harness built in, the one the Connector gets out.
type WrapFn = dyn Fn(Arc<dyn ferry::Backend>) -> Arc<dyn ferry::Backend> + Send + Sync;

impl std::fmt::Debug for Wrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wrap")
    }
}

impl Options {
    /// Options with just a name.
    pub fn named(name: &str) -> Self {
        Options {
            name: name.to_owned(),
            ..Options::default()
        }
    }

    /// Builds a Connector named `worker_id` over `backend` with these options; a harness's
    /// backend that cannot build one is a broken harness, so this panics.
    pub async fn build(&self, worker_id: &str, backend: Arc<dyn ferry::Backend>) -> Connector {
        let backend = match &self.wrap {
            Some(Wrap(wrap)) => wrap(backend),
            None => backend,
        };
        let mut builder = Connector::builder()
            .worker_id(worker_id)
            .backend_arc(backend)
            .registration_cache(self.registration_cache);
        if let Some(deadline) = self.deadline {
            builder = builder.deadline(deadline);
        }
        builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("a Connector for {worker_id} builds: {e}"))
    }
}

/// A notification fault, for backends that can inject one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFault {
    /// Lose the notification.
    Drop,
    /// Deliver it this much later.
    Delay(Duration),
}

/// How many operations and keys a backend still holds, for leak checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveState {
    /// Operations the backend holds state for.
    pub operations: usize,
    /// Passive keys still accepted.
    pub keys: usize,
}

/// What a backend provides to the suite. One harness per test: a fresh world, process or
/// listener set.
pub trait Harness: Send + Sync + 'static {
    /// A new Connector.
    fn connector(&self, options: Options) -> impl Future<Output = Connector> + Send;

    /// Kills a Connector as if its process died.
    fn crash(&self, connector: &Connector) -> Result<(), Skip>;

    /// Applies `fault` to the next `count` notifications from `from` to `to`.
    fn fault_notifications(
        &self,
        from: &Connector,
        to: &Connector,
        fault: NotifyFault,
        count: u32,
    ) -> Result<(), Skip>;

    /// Cuts the link between two Connectors.
    fn partition(&self, a: &Connector, b: &Connector) -> Result<(), Skip>;

    /// What the backend still holds.
    fn live_state(&self) -> Result<LiveState, Skip>;

    /// Whether the backend can run on this machine at all (its native library loads); when
    /// not, every rule prints `skipped: <reason>`.
    fn available(&self) -> Result<(), Skip> {
        Ok(())
    }
}

/// Runs one rule with a bound on real time: a rule that hangs fails.
pub async fn run<H, F, Fut>(harness: H, rule: F)
where
    H: Harness,
    F: FnOnce(H) -> Fut,
    Fut: Future<Output = Outcome>,
{
    if let Err(Skip(reason)) = harness.available() {
        println!("skipped: {reason}");
        return;
    }
    match tokio::time::timeout(Duration::from_secs(60), rule(harness)).await {
        Ok(Ok(())) => {}
        Ok(Err(Skip(reason))) => println!("skipped: {reason}"),
        Err(_) => panic!("the rule did not finish within 60 s: something hangs"),
    }
}

/// Instantiates every rule for one backend, in a module named `$backend`.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ident, $harness:expr) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $crate::__each_rule!($harness);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __rule_test {
    ($harness:expr; $family:ident :: $rule:ident) => {
        #[tokio::test]
        async fn $rule() {
            $crate::run($harness, $crate::rules::$family::$rule).await
        }
    };
}
