//! The pairing and validation rules of SPEC §4: one function every backend goes through.

use crate::backend::Capabilities;
use crate::descriptor::Region;
use crate::error::{Error, Side};
use crate::metadata::{EndpointBlob, RdmaMetadata};
use crate::status::OperationKind;

/// Checks the descriptors of a new passive operation (`create_readable` / `create_writable`).
///
/// `writable[i]` says whether local descriptor `i` may be written into; a writable needs every
/// descriptor writable.
pub fn validate_passive(
    kind: OperationKind,
    capabilities: &Capabilities,
    local: &[Region],
    writable: &[bool],
) -> Result<(), Error> {
    if local.is_empty() {
        return Err(Error::EmptyDescriptors { side: Side::Local });
    }
    check_devices(local, Side::Local, capabilities)?;
    if kind == OperationKind::Write {
        check_writable(writable)?;
    }
    Ok(())
}

/// Checks an active operation against the metadata it pairs with, before any byte moves.
///
/// The checks run in this order, so that the first error is the most fundamental one: empty
/// lists, operation kind, backend, device kinds (mixed, then unsupported), counts, sizes, and
/// finally whether the local memory may be written where the operation writes into it.
///
/// Returns the decoded endpoint blob, so the caller connects without decoding it again.
pub fn validate_active(
    kind: OperationKind,
    capabilities: &Capabilities,
    local: &[Region],
    local_writable: &[bool],
    remote: &RdmaMetadata,
) -> Result<EndpointBlob, Error> {
    if local.is_empty() {
        return Err(Error::EmptyDescriptors { side: Side::Local });
    }
    if remote.descriptors.is_empty() {
        return Err(Error::EmptyDescriptors { side: Side::Remote });
    }
    if remote.operation_kind != kind {
        return Err(Error::KindMismatch {
            expected: kind,
            found: remote.operation_kind,
        });
    }
    let blob = remote.endpoint()?;
    if blob.backend() != capabilities.backend {
        return Err(Error::BackendMismatch {
            expected: capabilities.backend.to_owned(),
            found: blob.backend().to_owned(),
        });
    }
    check_devices(local, Side::Local, capabilities)?;
    let remote_regions: Vec<Region> = remote.descriptors.iter().map(|d| d.region()).collect();
    check_devices(&remote_regions, Side::Remote, capabilities)?;
    if local.len() != remote.descriptors.len() {
        return Err(Error::CountMismatch {
            local: local.len(),
            remote: remote.descriptors.len(),
        });
    }
    for (index, (l, r)) in local.iter().zip(&remote.descriptors).enumerate() {
        if l.len != r.size {
            return Err(Error::SizeMismatch {
                index,
                local: l.len,
                remote: r.size,
            });
        }
    }
    if kind == OperationKind::Read {
        check_writable(local_writable)?;
    }
    Ok(blob)
}

fn check_mixed(regions: &[Region], side: Side) -> Result<(), Error> {
    let first = regions[0].device.kind();
    if regions.iter().any(|r| r.device.kind() != first) {
        return Err(Error::MixedDevices { side });
    }
    Ok(())
}

fn check_devices(regions: &[Region], side: Side, capabilities: &Capabilities) -> Result<(), Error> {
    check_mixed(regions, side)?;
    let reaches = |r: &&Region| match side {
        Side::Local => capabilities.reaches(r.device),
        Side::Remote => capabilities.reaches_remote(r.device),
    };
    match regions.iter().find(|r| !reaches(r)) {
        Some(r) => Err(Error::UnsupportedDevice {
            device: r.device,
            backend: capabilities.backend,
        }),
        None => Ok(()),
    }
}

fn check_writable(writable: &[bool]) -> Result<(), Error> {
    match writable.iter().position(|w| !w) {
        Some(index) => Err(Error::ReadOnlyDescriptor { index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, DeviceKind};

    fn capabilities(devices: Vec<DeviceKind>, remote_devices: Vec<DeviceKind>) -> Capabilities {
        Capabilities {
            backend: "test",
            devices,
            remote_devices,
            passive_observes_start: false,
            passive_observes_peer_loss: false,
            enforces_revocation: false,
            cross_host: true,
            progress_needs_polling: false,
        }
    }

    fn on(device: Device) -> [Region; 1] {
        [Region {
            addr: 0x1000,
            len: 16,
            device,
        }]
    }

    #[test]
    fn a_peers_memory_is_checked_against_what_the_backend_pairs_with() {
        let refused = Err(Error::UnsupportedDevice {
            device: Device::cuda(0),
            backend: "test",
        });
        // A host-only build whose peer stages its own device memory (tcp).
        let staged = capabilities(
            vec![DeviceKind::Host],
            vec![DeviceKind::Host, DeviceKind::Cuda],
        );
        assert_eq!(
            check_devices(&on(Device::cuda(0)), Side::Remote, &staged),
            Ok(())
        );
        assert_eq!(
            check_devices(&on(Device::cuda(0)), Side::Local, &staged),
            refused
        );
        // A host-only build whose transport reaches the peer's memory itself (ucx, nixl).
        let direct = capabilities(vec![DeviceKind::Host], vec![DeviceKind::Host]);
        assert_eq!(
            check_devices(&on(Device::cuda(0)), Side::Remote, &direct),
            refused
        );
        assert_eq!(
            check_devices(&on(Device::Cpu), Side::Remote, &direct),
            Ok(())
        );
    }
}
