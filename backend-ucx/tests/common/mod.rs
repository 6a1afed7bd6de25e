//! What several of this crate's tests share.

use ferry_core::{Descriptor, NotificationKey, OperationKind, RdmaMetadata, RemoteDescriptor};

/// The metadata a passive operation of `kind` over `descriptors` hands its peer, with
/// `nixl_metadata` (an encoded endpoint blob, maybe a forged one) and `key`.
pub fn metadata(
    descriptors: &[Descriptor<'_>],
    nixl_metadata: String,
    key: NotificationKey,
    kind: OperationKind,
) -> RdmaMetadata {
    RdmaMetadata {
        descriptors: descriptors
            .iter()
            .map(|d| RemoteDescriptor {
                device: d.device(),
                ptr: d.addr(),
                size: d.len() as u64,
            })
            .collect(),
        nixl_metadata,
        notification_key: key,
        operation_kind: kind,
    }
}
