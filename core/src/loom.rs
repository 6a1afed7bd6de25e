//! The synchronisation types the core uses, swapped for loom's model-checked ones when built
//! with `RUSTFLAGS="--cfg loom"` (see `tests/loom_settlement.rs`). Everything in the core that
//! is shared between threads takes its types from here, never from `std::sync` directly, so
//! that a loom run explores every interleaving of it.

#[cfg(loom)]
pub(crate) mod sync {
    pub(crate) use ::loom::sync::{Arc, Mutex, MutexGuard};
}

#[cfg(not(loom))]
pub(crate) mod sync {
    pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
}
