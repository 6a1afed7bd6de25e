//! The progress thread: one per backend, it polls the agent for notifications and for the
//! state of posted transfers, and wakes the tasks waiting on them.
//!
//! The agent runs without NIXL's own progress thread (nixl-sys's default spins a core), so this
//! thread and the owners' polls are what drive UCX. Its rhythm:
//! - nothing to wait for: blocked on a condition variable, no CPU at all. Registrations alone
//!   are not something to wait for: a peer moves bytes through them only while one of this
//!   agent's operations is live (a passive one until its notification), and those keep the
//!   thread going;
//! - a transfer in flight: polls back to back, yielding the CPU between rounds;
//! - only passive operations waiting for a peer: polls, then backs off from 2 µs up to
//!   [`NixlConfig::max_poll_interval`](crate::NixlConfig::max_poll_interval) between rounds
//!   while nothing arrives; a new operation wakes it at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use ferry_core::state::Event;
use ferry_core::{Notification, NotificationKey};
use nixl_sys::{Agent, NotificationMap, XferRequest, XferStatus};

/// A posted request, shared by its transfer and the progress thread. Whoever holds the lock
/// may use it; cancel takes it out, and releasing it is what stops NIXL touching memory.
pub(crate) type SharedRequest = Arc<Mutex<Option<XferRequest>>>;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub(crate) struct PassiveSlot {
    pub(crate) outcome: Option<Event>,
    pub(crate) waker: Option<Waker>,
    /// While its owner still polls for notifications itself, the thread leaves them to it
    /// until then.
    pub(crate) watch_from: Option<Instant>,
}

pub(crate) struct ActiveSlot {
    pub(crate) request: SharedRequest,
    pub(crate) waker: Option<Waker>,
    /// While its owner still polls it itself, the thread leaves it alone until then.
    pub(crate) watch_from: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) passive: HashMap<NotificationKey, PassiveSlot>,
    pub(crate) active: HashMap<u64, ActiveSlot>,
    shutdown: bool,
    /// Notifications that matched no live operation (late, stale or foreign).
    pub(crate) unmatched: u64,
    /// Keep progressing until then: a notification sent last (a cancel) still has to leave.
    pub(crate) linger_until: Option<Instant>,
}

/// How long the thread keeps progressing after the last operation ended.
const LINGER: Duration = Duration::from_millis(100);

impl State {
    fn idle(&self, now: Instant) -> bool {
        self.passive.is_empty()
            && self.active.is_empty()
            && self.linger_until.is_none_or(|until| now >= until)
    }

    /// Marks that something just ended or was sent: progress a while longer.
    pub(crate) fn linger(&mut self) {
        self.linger_until = Some(Instant::now() + LINGER);
    }
}

/// What the progress thread and the transfers share.
pub(crate) struct Progress {
    pub(crate) agent: Agent,
    pub(crate) state: Mutex<State>,
    work: Condvar,
    max_interval: Duration,
}

impl Progress {
    pub(crate) fn new(agent: Agent, max_interval: Duration) -> Arc<Progress> {
        Arc::new(Progress {
            agent,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            max_interval,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Tells the thread there is new work.
    pub(crate) fn nudge(&self) {
        self.work.notify_one();
    }

    pub(crate) fn shutdown(&self) {
        self.lock().shutdown = true;
        self.work.notify_one();
    }

    /// Fetches the agent's new notifications and hands each to the operation whose key it
    /// carries (one hash lookup each). Returns whether any arrived.
    pub(crate) fn poll_notifications(&self) -> bool {
        let Ok(mut map) = NotificationMap::new() else {
            return false;
        };
        if self.agent.get_notifications(&mut map, None).is_err() {
            return false;
        }
        let mut messages = Vec::new();
        let agents: Vec<String> = map
            .agents()
            .filter_map(Result::ok)
            .map(str::to_owned)
            .collect();
        for agent in &agents {
            let count = map.get_notifications_size(agent).unwrap_or(0);
            for index in 0..count {
                if let Ok(bytes) = map.get_notification_bytes(agent, index) {
                    messages.push(bytes);
                }
            }
        }
        if messages.is_empty() {
            return false;
        }
        let mut state = self.lock();
        state.linger();
        for message in messages {
            let (key, event) = match Notification::parse(&message) {
                Some(Notification::Complete(key)) => (key, Event::Completed),
                Some(Notification::Cancel(key)) => (key, Event::PeerCancelled),
                None => {
                    state.unmatched += 1;
                    continue;
                }
            };
            match state.passive.get_mut(&key) {
                Some(slot) if slot.outcome.is_none() => {
                    slot.outcome = Some(event);
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
                _ => state.unmatched += 1,
            }
        }
        true
    }

    /// Whether the thread should fetch notifications now: unless every passive operation's
    /// owner is polling for them itself. Also returns when the first such owner stops.
    fn listening(&self) -> (bool, Option<Instant>) {
        let now = Instant::now();
        let state = self.lock();
        let mut deferred: Option<Instant> = None;
        let mut listen = state.passive.is_empty();
        for slot in state.passive.values() {
            match slot.watch_from {
                Some(from) if from > now => {
                    deferred = Some(deferred.map_or(from, |d| d.min(from)));
                }
                _ => listen = true,
            }
        }
        (listen, deferred)
    }

    /// Checks every posted request its owner is not polling itself once; wakes the owners of
    /// those that left `InProgress`. Returns whether any moved, whether any is watched here,
    /// and when the next owner's own window ends.
    fn poll_requests(&self) -> (bool, bool, Option<Instant>) {
        let now = Instant::now();
        let mut deferred: Option<Instant> = None;
        let requests: Vec<(u64, SharedRequest)> = self
            .lock()
            .active
            .iter()
            .filter(|(_, slot)| match slot.watch_from {
                Some(from) if from > now => {
                    deferred = Some(deferred.map_or(from, |d| d.min(from)));
                    false
                }
                _ => true,
            })
            .map(|(&id, slot)| (id, slot.request.clone()))
            .collect();
        let mut moved = false;
        for (id, request) in &requests {
            let finished = match &*lock(request) {
                Some(request) => !matches!(
                    self.agent.get_xfer_status(request),
                    Ok(XferStatus::InProgress)
                ),
                None => true,
            };
            if finished {
                moved = true;
                let mut state = self.lock();
                state.linger();
                if let Some(slot) = state.active.remove(id) {
                    slot.waker.into_iter().for_each(Waker::wake);
                }
            }
        }
        (moved, !requests.is_empty(), deferred)
    }

    /// The thread's body; returns at shutdown.
    pub(crate) fn run(self: Arc<Self>) {
        let mut interval = Duration::from_micros(2);
        loop {
            {
                let mut state = self.lock();
                while !state.shutdown && state.idle(Instant::now()) {
                    state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
                    interval = Duration::from_micros(2);
                }
                if state.shutdown {
                    return;
                }
            }
            let (listen, passive_deferred) = self.listening();
            let arrived = listen && self.poll_notifications();
            let (moved, in_flight, deferred) = self.poll_requests();
            let deferred = match (deferred, passive_deferred) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if arrived || moved {
                interval = Duration::from_micros(2);
                continue;
            }
            if in_flight {
                std::thread::yield_now();
                continue;
            }
            // Only passive operations, or transfers their owners still poll, wait: back off (no later than an owner's window ends), but wake at once for new
            // work.
            let state = self.lock();
            if state.shutdown {
                return;
            }
            let pause = match deferred {
                Some(at) => interval.min(at.saturating_duration_since(Instant::now())),
                None => interval,
            };
            let _ = self
                .work
                .wait_timeout(state, pause)
                .unwrap_or_else(|p| p.into_inner());
            interval = (interval * 2).min(self.max_interval);
        }
    }
}
