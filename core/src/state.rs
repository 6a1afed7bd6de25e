//! The operation state machines of SPEC §3, as transition tables.
//!
//! Events go in, a new state (or "unchanged", or an invalid-transition error) comes out. No IO
//! and no clock: a backend or the facade decides when an event happened and feeds it here.

use crate::error::{Error, Side};
use crate::status::OperationStatus;

/// Which side of a pairing an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `ReadOperation` or `WriteOperation`: it moves the bytes.
    Active,
    /// `ReadableOperation` or `WritableOperation`: it exposes memory and waits.
    Passive,
}

/// An operation's state: its [`OperationStatus`] plus the cause of a terminal failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpState {
    /// Not yet posted or exposed.
    Uninitialized,
    /// Passive: exposed, metadata ready, the peer not yet seen.
    Initialized,
    /// Bytes may be moving.
    InProgress,
    /// Terminal: every byte landed.
    Complete,
    /// Terminal: cancelled by one side.
    Cancelled {
        /// Which side cancelled.
        by: Side,
    },
    /// Terminal: failed with this cause.
    Errored(Error),
}

impl OpState {
    /// The Dynamo status of this state.
    pub fn status(&self) -> OperationStatus {
        match self {
            OpState::Uninitialized => OperationStatus::Uninitialized,
            OpState::Initialized => OperationStatus::Initialized,
            OpState::InProgress => OperationStatus::InProgress,
            OpState::Complete => OperationStatus::Complete,
            OpState::Cancelled { .. } => OperationStatus::Cancelled,
            OpState::Errored(_) => OperationStatus::Errored,
        }
    }

    /// What `wait_for_completion` returns in this state: `Some(Ok)` only when complete,
    /// `Some(Err)` when cancelled or errored, `None` while the operation is live.
    pub fn outcome(&self) -> Option<Result<(), Error>> {
        match self {
            OpState::Complete => Some(Ok(())),
            OpState::Cancelled { by } => Some(Err(Error::Cancelled { by: *by })),
            OpState::Errored(cause) => Some(Err(cause.clone())),
            _ => None,
        }
    }
}

/// Something that happened to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Active: `begin_*` validated the pairing and posted the transfer.
    Posted,
    /// Passive: memory exposed and metadata ready.
    Exposed,
    /// Passive: the backend saw the peer start.
    PeerStarted,
    /// Active: every byte landed and the peer was notified. Passive: the completion
    /// notification with this operation's key arrived.
    Completed,
    /// `cancel()` or drop on this side.
    CancelRequested,
    /// The peer cancelled.
    PeerCancelled,
    /// The peer was lost, the transport failed or the peer refused: ends `Errored(cause)`.
    Failed(Error),
    /// The operation's deadline passed.
    DeadlinePassed,
}

/// The result of feeding an event to a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The state moved.
    Moved(OpState),
    /// The state is terminal and sticky; the event changes nothing.
    Unchanged,
}

/// An event that does not apply in a state (for example `Completed` before `Posted`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{role:?} operation in {state:?} cannot take {event:?}")]
pub struct InvalidTransition {
    /// The operation's role.
    pub role: Role,
    /// The state it was in.
    pub state: OperationStatus,
    /// The event.
    pub event: Event,
}

/// SPEC §3's tables. Each arm is one row (or the "terminal: anything → unchanged" row).
pub fn transition(role: Role, state: &OpState, event: Event) -> Result<Step, InvalidTransition> {
    use Event as E;
    use OpState as S;
    if state.status().is_terminal() {
        return Ok(Step::Unchanged);
    }
    let next = match (role, state, &event) {
        // Active operation.
        (Role::Active, S::Uninitialized, E::Posted) => S::InProgress,
        (Role::Active, S::InProgress, E::Completed) => S::Complete,
        (Role::Active, S::InProgress, E::CancelRequested) => S::Cancelled { by: Side::Local },
        (Role::Active, S::InProgress, E::Failed(cause)) => S::Errored(cause.clone()),
        (Role::Active, S::InProgress, E::DeadlinePassed) => S::Errored(Error::DeadlineExceeded),
        // Passive operation.
        (Role::Passive, S::Uninitialized, E::Exposed) => S::Initialized,
        (Role::Passive, S::Initialized, E::PeerStarted) => S::InProgress,
        (Role::Passive, S::InProgress, E::PeerStarted) => return Ok(Step::Unchanged),
        (Role::Passive, S::Initialized | S::InProgress, E::Completed) => S::Complete,
        (Role::Passive, S::Initialized | S::InProgress, E::PeerCancelled) => {
            S::Cancelled { by: Side::Remote }
        }
        (Role::Passive, S::Initialized | S::InProgress, E::CancelRequested) => {
            S::Cancelled { by: Side::Local }
        }
        (Role::Passive, S::Initialized | S::InProgress, E::Failed(cause)) => {
            S::Errored(cause.clone())
        }
        (Role::Passive, S::Initialized | S::InProgress, E::DeadlinePassed) => {
            S::Errored(Error::DeadlineExceeded)
        }
        _ => {
            return Err(InvalidTransition {
                role,
                state: state.status(),
                event,
            })
        }
    };
    Ok(Step::Moved(next))
}

/// One operation's state, moved only through [`transition`].
#[derive(Debug, Clone)]
pub struct StateMachine {
    role: Role,
    state: OpState,
}

impl StateMachine {
    /// A new operation of this role, `Uninitialized`.
    pub fn new(role: Role) -> Self {
        StateMachine {
            role,
            state: OpState::Uninitialized,
        }
    }

    /// The current state.
    pub fn state(&self) -> &OpState {
        &self.state
    }

    /// The operation's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Feeds one event; returns whether the state moved.
    pub fn apply(&mut self, event: Event) -> Result<bool, InvalidTransition> {
        match transition(self.role, &self.state, event)? {
            Step::Moved(next) => {
                self.state = next;
                Ok(true)
            }
            Step::Unchanged => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states() -> Vec<OpState> {
        vec![
            OpState::Uninitialized,
            OpState::Initialized,
            OpState::InProgress,
            OpState::Complete,
            OpState::Cancelled { by: Side::Local },
            OpState::Cancelled { by: Side::Remote },
            OpState::Errored(Error::StaleMetadata),
        ]
    }

    fn events() -> Vec<Event> {
        vec![
            Event::Posted,
            Event::Exposed,
            Event::PeerStarted,
            Event::Completed,
            Event::CancelRequested,
            Event::PeerCancelled,
            Event::Failed(Error::PeerLost { reason: "x".into() }),
            Event::DeadlinePassed,
        ]
    }

    /// The expected table, written out from SPEC §3 independently of `transition`:
    /// `Some(Some(state))` moved, `Some(None)` unchanged, `None` invalid.
    fn expected(role: Role, state: &OpState, event: &Event) -> Option<Option<OpState>> {
        use OperationStatus as St;
        let lost = || OpState::Errored(Error::PeerLost { reason: "x".into() });
        match state.status() {
            St::Complete | St::Cancelled | St::Errored => return Some(None),
            _ => {}
        }
        let moved = |s: OpState| Some(Some(s));
        match (role, state.status(), event) {
            (Role::Active, St::Uninitialized, Event::Posted) => moved(OpState::InProgress),
            (Role::Active, St::InProgress, Event::Completed) => moved(OpState::Complete),
            (Role::Active, St::InProgress, Event::CancelRequested) => {
                moved(OpState::Cancelled { by: Side::Local })
            }
            (Role::Active, St::InProgress, Event::Failed(_)) => moved(lost()),
            (Role::Active, St::InProgress, Event::DeadlinePassed) => {
                moved(OpState::Errored(Error::DeadlineExceeded))
            }
            (Role::Passive, St::Uninitialized, Event::Exposed) => moved(OpState::Initialized),
            (Role::Passive, St::Initialized, Event::PeerStarted) => moved(OpState::InProgress),
            (Role::Passive, St::InProgress, Event::PeerStarted) => Some(None),
            (Role::Passive, St::Initialized | St::InProgress, Event::Completed) => {
                moved(OpState::Complete)
            }
            (Role::Passive, St::Initialized | St::InProgress, Event::PeerCancelled) => {
                moved(OpState::Cancelled { by: Side::Remote })
            }
            (Role::Passive, St::Initialized | St::InProgress, Event::CancelRequested) => {
                moved(OpState::Cancelled { by: Side::Local })
            }
            (Role::Passive, St::Initialized | St::InProgress, Event::Failed(_)) => moved(lost()),
            (Role::Passive, St::Initialized | St::InProgress, Event::DeadlinePassed) => {
                moved(OpState::Errored(Error::DeadlineExceeded))
            }
            _ => None,
        }
    }

    #[test]
    fn every_state_event_pair_matches_the_spec() {
        let mut checked = 0;
        for role in [Role::Active, Role::Passive] {
            for state in states() {
                for event in events() {
                    let got = transition(role, &state, event.clone());
                    let want = expected(role, &state, &event);
                    match (got, want) {
                        (Ok(Step::Moved(s)), Some(Some(w))) => {
                            assert_eq!(s, w, "{role:?} {state:?} {event:?}")
                        }
                        (Ok(Step::Unchanged), Some(None)) => {}
                        (Err(_), None) => {}
                        (got, want) => {
                            panic!("{role:?} {state:?} {event:?}: got {got:?}, want {want:?}")
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 2 * 7 * 8);
    }

    #[test]
    fn terminal_states_are_sticky() {
        let mut m = StateMachine::new(Role::Active);
        assert_eq!(m.apply(Event::Posted), Ok(true));
        assert_eq!(m.apply(Event::Completed), Ok(true));
        assert_eq!(m.apply(Event::CancelRequested), Ok(false));
        assert_eq!(m.state(), &OpState::Complete);
        assert_eq!(m.state().outcome(), Some(Ok(())));
    }

    #[test]
    fn only_complete_is_ok() {
        for state in states() {
            let outcome = state.outcome();
            match state.status() {
                OperationStatus::Complete => assert_eq!(outcome, Some(Ok(()))),
                s if s.is_terminal() => assert!(matches!(outcome, Some(Err(_)))),
                _ => assert_eq!(outcome, None),
            }
        }
    }
}
