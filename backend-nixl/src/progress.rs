//! The progress thread: one per backend, it polls the agent for notifications and for the
//! state of posted transfers, and wakes the tasks waiting on them.
//!
//! The agent runs without NIXL's own progress thread (nixl-sys's default spins a core), so this
//! thread and the owners' polls are what drive UCX. An owner awaiting its operation polls
//! NIXL itself for [`NixlConfig::owner_spin`](crate::NixlConfig::owner_spin) (which
//! progresses the whole agent); the thread leaves the agent to it meanwhile. An owner whose
//! window ends with its operation still running hands it over and wakes the thread. An
//! operation nobody polls (never awaited, or its owner's future dropped within its window) is
//! looked at within [`ADOPT_WITHIN`] of its window's end (a window starts at the exposure or
//! posting, and again at the owner's first poll). Its rhythm:
//! - nothing to wait for: parked on a condition variable, no CPU at all. Registrations alone
//!   are not something to wait for: a peer moves bytes through them only while one of this
//!   agent's operations is live (a passive one until its notification), and those keep the
//!   thread going. For 100 ms after an operation was exposed or posted (and not finished
//!   within its post) it parks for at most [`ADOPT_WITHIN`] at a time, so the owners of the
//!   next operations need not wake it;
//! - owners polling their operations themselves: parked until woken by one that hands over,
//!   or until [`ADOPT_WITHIN`] after the first of their windows ends. It sets no timer per
//!   window: each one it wakes for (~1000 a second per busy process with a timer per window)
//!   lands on a vCPU that is copying or polling, and cost 1 MiB operations ~5 µs each on the
//!   2-vCPU development VM (BENCHMARKS.md, nixl, session 12);
//! - a transfer in flight that only the thread watches: polls back to back, yielding the CPU
//!   between rounds;
//! - passive operations waiting for a peer with no owner polling: polls, then backs off from
//!   2 µs up to [`NixlConfig::max_poll_interval`](crate::NixlConfig::max_poll_interval)
//!   between rounds while nothing arrives; an owner that hands over wakes it at once;
//! - for 100 ms after something ended or was sent (a cancel's notification must still leave):
//!   polls once at once, then every millisecond, unless an owner is polling.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
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
    /// Whether the thread is parked, and until when (`Some(None)`: until woken). `None` while
    /// it runs: it looks at the state again before it parks.
    parked: Option<Option<Instant>>,
    /// Set when the thread was woken for new work: it looks at once, with no backoff.
    nudged: bool,
    /// How many times it was woken so.
    pub(crate) wakes: u64,
    /// How many times it parked.
    pub(crate) parks: u64,
    /// Until then the thread parks for at most [`ADOPT_WITHIN`] at a time instead of
    /// indefinitely, so the next operation's owner need not wake it ([`Progress::wake_by`]):
    /// kept by every operation exposed or posted, [`WARM`] long.
    warm_until: Option<Instant>,
}

/// How long the thread stays warm after an operation was exposed or posted.
const WARM: Duration = Duration::from_millis(100);

/// How long after its owner's window ends an operation nobody polls may wait for the thread's
/// first look (see the module docs): also the longest the thread parks while warm.
pub(crate) const ADOPT_WITHIN: Duration = Duration::from_millis(20);

/// How long the thread keeps progressing after the last operation ended.
const LINGER: Duration = Duration::from_millis(100);

/// The pause between the thread's rounds while it only lingers (no operation waits): a
/// cancel notification leaves in the first round, so these rounds only catch stragglers.
const LINGER_POLL: Duration = Duration::from_millis(1);

/// The first pause after a round that found nothing.
const FIRST_PAUSE: Duration = Duration::from_micros(2);

/// What the thread found to do in one look at the state.
struct Survey {
    /// A passive operation waits whose owner is not polling for notifications itself.
    due_passive: bool,
    /// Some owner is polling NIXL itself now (which progresses the agent).
    owner_polling: bool,
    /// Progressing is wanted a while longer ([`State::linger`]).
    lingering: bool,
    /// Posted requests no owner is polling now.
    requests: Vec<(u64, SharedRequest)>,
    /// When the first owner that polls itself stops.
    next_handover: Option<Instant>,
}

impl State {
    /// Marks that something just ended or was sent: progress a while longer.
    pub(crate) fn linger(&mut self) {
        self.linger_until = Some(Instant::now() + LINGER);
    }

    /// Notes that an operation was exposed or posted (see `warm_until`).
    pub(crate) fn keep_warm(&mut self, now: Instant) {
        self.warm_until = Some(now + WARM);
    }

    /// Whether the thread must be woken so that it looks at the state by `at`.
    fn must_wake(&self, at: Instant) -> bool {
        match self.parked {
            None => false,
            Some(None) => true,
            Some(Some(until)) => until > at,
        }
    }

    fn survey(&self, now: Instant) -> Survey {
        let mut survey = Survey {
            due_passive: false,
            owner_polling: false,
            lingering: self.linger_until.is_some_and(|until| now < until),
            requests: Vec::new(),
            next_handover: None,
        };
        let mut defer = |from: Instant| {
            survey.owner_polling = true;
            survey.next_handover = Some(survey.next_handover.map_or(from, |t| t.min(from)));
        };
        for slot in self.passive.values().filter(|slot| slot.outcome.is_none()) {
            match slot.watch_from {
                Some(from) if from > now => defer(from),
                _ => survey.due_passive = true,
            }
        }
        for (&id, slot) in &self.active {
            match slot.watch_from {
                Some(from) if from > now => defer(from),
                _ => survey.requests.push((id, slot.request.clone())),
            }
        }
        survey
    }
}

/// Every backend's progress of this process ([`Progress::progress_others`]).
static AGENTS: Mutex<Vec<Weak<Progress>>> = Mutex::new(Vec::new());

/// What the progress thread and the transfers share.
pub(crate) struct Progress {
    pub(crate) agent: Agent,
    pub(crate) state: Mutex<State>,
    work: Condvar,
    max_interval: Duration,
    /// How long an owner polls its operation itself ([`crate::NixlConfig::owner_spin`]).
    pub(crate) owner_spin: Duration,
}

impl Progress {
    pub(crate) fn new(agent: Agent, max_interval: Duration, owner_spin: Duration) -> Arc<Progress> {
        let progress = Arc::new(Progress {
            agent,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            max_interval,
            owner_spin,
        });
        let mut agents = lock(&AGENTS);
        agents.retain(|agent| agent.strong_count() > 0);
        agents.push(Arc::downgrade(&progress));
        progress
    }

    /// Progresses every other agent of this process that has an operation live: an owner
    /// polling its own operation stands in for the other agents' owners, which may be other
    /// futures of its own task (both sides of a transfer between two Connectors, awaited with
    /// `join!`) and polled only once this owner's slice ends.
    pub(crate) fn progress_others(&self) {
        let agents = lock(&AGENTS);
        if agents.len() < 2 {
            // The common case, one agent per process: nothing else to progress, no allocation
            // on the owner's polling path.
            return;
        }
        let others: Vec<Arc<Progress>> = agents
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|other| !std::ptr::eq(Arc::as_ptr(other), self))
            .collect();
        drop(agents);
        for other in others {
            let busy = {
                let state = other.lock();
                !state.active.is_empty() || state.passive.values().any(|s| s.outcome.is_none())
            };
            if busy {
                other.poll_notifications();
            }
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// When the thread must first look at an operation exposed or posted now, whose owner's
    /// window ends at `window_end`: [`ADOPT_WITHIN`] after it, or at once when owners do not
    /// poll at all (`owner_spin` zero leaves every operation to the thread).
    pub(crate) fn first_look(&self, window_end: Instant) -> Instant {
        if self.owner_spin.is_zero() {
            window_end
        } else {
            window_end + ADOPT_WITHIN
        }
    }

    /// Wakes the thread if it would not look at `state` by `at` on its own. Call it, with
    /// the lock still held, after adding work due at `at`: the thread decides to park under
    /// the same lock, so no work is missed and a thread that will look in time is left alone.
    pub(crate) fn wake_by(&self, state: &mut State, at: Instant) {
        if state.must_wake(at) {
            state.nudged = true;
            state.wakes += 1;
            self.work.notify_one();
        }
    }

    /// Marks that something just ended or was sent, and has the thread progress the agent now.
    pub(crate) fn linger(&self) {
        let mut state = self.lock();
        state.linger();
        self.wake_by(&mut state, Instant::now());
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

    /// Checks each of `requests` once; wakes the owners of those that left `InProgress`.
    /// Returns whether any did.
    fn poll_requests(&self, requests: &[(u64, SharedRequest)]) -> bool {
        let mut moved = false;
        for (id, request) in requests {
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
        moved
    }

    /// The thread's body; returns at shutdown.
    ///
    /// Each round it looks at the state under the lock: it polls notifications while a
    /// passive operation waits with no owner polling for it (or while it lingers and no owner
    /// polls at all), and every posted request no owner polls. With nothing to do it parks,
    /// until [`ADOPT_WITHIN`] after the first owner's own window ends or until woken
    /// ([`Progress::wake_by`]), and for at most [`ADOPT_WITHIN`] at a time while warm. After a
    /// round that found nothing it pauses, doubling from 2 µs up to the longest poll interval
    /// ([`LINGER_POLL`] while it only lingers).
    pub(crate) fn run(self: Arc<Self>) {
        let mut interval = FIRST_PAUSE;
        let mut quiet_until: Option<Instant> = None;
        loop {
            let mut state = self.lock();
            if state.shutdown {
                return;
            }
            if std::mem::take(&mut state.nudged) {
                interval = FIRST_PAUSE;
                quiet_until = None;
            }
            let now = Instant::now();
            let survey = state.survey(now);
            let wants_to_listen = survey.due_passive || (survey.lingering && !survey.owner_polling);
            let listen = wants_to_listen && quiet_until.is_none_or(|until| now >= until);
            if !listen && survey.requests.is_empty() {
                let warm = state
                    .warm_until
                    .filter(|until| *until > now)
                    .map(|until| until.min(now + ADOPT_WITHIN));
                let resume = [
                    survey.next_handover.map(|at| at + ADOPT_WITHIN),
                    quiet_until.filter(|_| wants_to_listen),
                    warm,
                ]
                .into_iter()
                .flatten()
                .min();
                state.parked = Some(resume);
                state.parks += 1;
                let mut state = match resume {
                    None => self.work.wait(state).unwrap_or_else(|p| p.into_inner()),
                    Some(at) => {
                        self.work
                            .wait_timeout(state, at.saturating_duration_since(now))
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
                state.parked = None;
                continue;
            }
            drop(state);
            let arrived = listen && self.poll_notifications();
            let moved = self.poll_requests(&survey.requests);
            if arrived || moved {
                interval = FIRST_PAUSE;
                quiet_until = None;
            } else if !survey.requests.is_empty() {
                // A transfer in flight that only this thread watches: look again soon.
                std::thread::yield_now();
            } else if survey.due_passive {
                quiet_until = Some(Instant::now() + interval);
                interval = (interval * 2).min(self.max_interval);
            } else {
                // Only lingering: what had to leave left in this round, if at all.
                quiet_until = Some(Instant::now() + LINGER_POLL);
            }
        }
    }
}
