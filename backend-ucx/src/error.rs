//! The crate's error type, present with or without UCX.

use ferry_core::Side;

/// What a UCX call in this crate can fail with.
///
/// `Clone + PartialEq` so tests assert on exact values. "Still in progress" is never an error:
/// a [`Request`](crate::safe::Request) reports it as a pending status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no UCX: `pkg-config` found no `ucx`, libclang was missing for bindgen,
    /// or `FERRY_UCX_DISABLE=1` was set when the crate was built.
    #[error("UCX not installed ({reason}); install it with scripts/install-ucx.sh and rebuild")]
    NotInstalled {
        /// Why the build script left UCX out.
        reason: String,
    },
    /// A UCX call returned an error status.
    #[error("{call} failed: {name} ({code}): {message}")]
    Status {
        /// The UCX function that failed.
        call: &'static str,
        /// The `ucs_status_t` value.
        code: i8,
        /// Its symbolic name, such as `UCS_ERR_NO_ELEM`.
        name: &'static str,
        /// UCX's text for it (`ucs_status_string`).
        message: String,
    },
    /// A packed remote key that is not well formed: refused before UCX parses it, because
    /// `ucp_ep_rkey_unpack` takes no length and would read past a short or hostile buffer.
    #[error("invalid remote key: {reason}")]
    InvalidRemoteKey {
        /// What was wrong.
        reason: String,
    },
    /// A call that UCX forbids from inside one of its callbacks (such as progressing the
    /// worker from an active-message handler).
    #[error("{call} called from inside a UCX callback")]
    Reentrant {
        /// The refused call.
        call: &'static str,
    },
}

/// `ucs_status_t` codes this crate names (UCX 1.13's `ucs/type/status.h`).
const UCS_ERR_CANCELED: i8 = -16;
const UCS_ERR_UNREACHABLE: i8 = -6;
const UCS_ERR_NOT_CONNECTED: i8 = -24;
const UCS_ERR_CONNECTION_RESET: i8 = -25;
const UCS_ERR_FIRST_LINK_FAILURE: i8 = -40;
const UCS_ERR_LAST_ENDPOINT_FAILURE: i8 = -89;

impl Error {
    /// Whether the status says the peer or the path to it failed (UCX's link and endpoint
    /// failure ranges, `UCS_ERR_CONNECTION_RESET`, `UCS_ERR_NOT_CONNECTED`,
    /// `UCS_ERR_UNREACHABLE`).
    pub fn is_peer_failure(&self) -> bool {
        match self {
            Error::Status { code, .. } => {
                (UCS_ERR_LAST_ENDPOINT_FAILURE..=UCS_ERR_FIRST_LINK_FAILURE).contains(code)
                    || matches!(
                        *code,
                        UCS_ERR_CONNECTION_RESET | UCS_ERR_NOT_CONNECTED | UCS_ERR_UNREACHABLE
                    )
            }
            _ => false,
        }
    }

    /// Whether the status is `UCS_ERR_UNREACHABLE`: from `ucp_ep_create`, no enabled transport
    /// can reach the peer with the error handling asked for.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Status { code, .. } if *code == UCS_ERR_UNREACHABLE)
    }

    /// The ferry error this becomes when it happens on `side`.
    ///
    /// A missing UCX is [`ferry_core::Error::BackendUnavailable`]; a peer failure
    /// ([`Error::is_peer_failure`]) is `PeerLost`; `UCS_ERR_CANCELED` is `Cancelled` by `side`;
    /// a malformed remote key is `InvalidMetadata`; every other status keeps its native code in
    /// [`ferry_core::Error::Backend`].
    pub fn to_ferry(&self, side: Side) -> ferry_core::Error {
        match self {
            Error::NotInstalled { .. } => ferry_core::Error::BackendUnavailable {
                backend: "ucx",
                reason: self.to_string(),
            },
            Error::InvalidRemoteKey { reason } => ferry_core::Error::InvalidMetadata {
                reason: format!("ucx remote key: {reason}"),
            },
            Error::Status { code, .. } if *code == UCS_ERR_CANCELED => {
                ferry_core::Error::Cancelled { by: side }
            }
            Error::Status { .. } if self.is_peer_failure() => ferry_core::Error::PeerLost {
                reason: self.to_string(),
            },
            Error::Status { code, .. } => ferry_core::Error::Backend {
                backend: "ucx",
                side,
                code: i64::from(*code),
                message: self.to_string(),
            },
            Error::Reentrant { .. } => ferry_core::Error::Backend {
                backend: "ucx",
                side,
                code: 0,
                message: self.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i8) -> Error {
        Error::Status {
            call: "ucp_put_nbx",
            code,
            name: "X",
            message: "m".into(),
        }
    }

    #[test]
    fn peer_failures_become_peer_lost() {
        for code in [-25, -24, -6, -40, -59, -60, -80, -89] {
            assert!(status(code).is_peer_failure(), "{code}");
            assert!(matches!(
                status(code).to_ferry(Side::Remote),
                ferry_core::Error::PeerLost { .. }
            ));
        }
        for code in [-1, -3, -16, -39, -90, -100] {
            assert!(!status(code).is_peer_failure(), "{code}");
        }
    }

    #[test]
    fn other_statuses_keep_their_code() {
        assert_eq!(
            status(-12).to_ferry(Side::Local),
            ferry_core::Error::Backend {
                backend: "ucx",
                side: Side::Local,
                code: -12,
                message: "ucp_put_nbx failed: X (-12): m".into(),
            }
        );
        assert_eq!(
            status(-16).to_ferry(Side::Remote),
            ferry_core::Error::Cancelled { by: Side::Remote }
        );
        assert!(matches!(
            Error::NotInstalled { reason: "r".into() }.to_ferry(Side::Local),
            ferry_core::Error::BackendUnavailable { backend: "ucx", .. }
        ));
    }
}
