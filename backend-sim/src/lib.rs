//! ferry-backend-sim: a deterministic, in-memory ferry backend that moves real bytes.
//!
//! A [`SimWorld`] holds any number of nodes, one per Connector ([`SimBackend`]). Nodes exchange
//! messages (read requests and replies, write requests and acknowledgements, notifications)
//! through the world's event queue, which delivers them in virtual-time order over links with
//! configurable latency, jitter and bandwidth. Faults are injected through the world: crash a
//! node, partition two, slow a link, drop or delay notifications.
//!
//! ```text
//!   Connector A ─ SimBackend(node 0) ─┐               ┌─ SimBackend(node 1) ─ Connector B
//!                                     ▼               ▼
//!                       SimWorld: seeded RNG · virtual clock · (time, seq) event queue
//!                                 links · partitions · faults · trace digest
//! ```
//!
//! How bytes move (no `unsafe`): a readable's bytes are copied into the world when it is
//! exposed, and a write's bytes when it is posted, while the operation lends its memory; bytes
//! that arrive for a read or a writable are landed in the destination when the operation is
//! next polled (its `wait_for_completion`, `status` or `cancel`), before it reports `Complete`.
//! So an active operation completes without the passive side's task running, as it would over
//! RDMA, and no byte is ever written into memory after its operation has ended.
//!
//! What the simulator observes: both sides see the peer start, cancel, and crash; a passive
//! operation that has ended refuses every later request (`StaleMetadata`), and a request outside
//! the offered regions or of the wrong kind is refused (`AccessDenied`) without a byte moving.
//!
//! Keys come from the world's seeded generator so runs replay; they are unguessable only to
//! someone who does not know the seed. The simulator is for tests and demos, not for peers you
//! do not trust.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod rng;
mod staging;
mod world;

pub use backend::{SimBackend, DUPLICATE_KEY};
pub use world::{
    LinkConfig, NodeId, NotificationFault, SimWorld, SimWorldBuilder, WorldStats, CRASHED,
};
