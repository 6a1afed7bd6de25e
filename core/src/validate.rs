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
    match regions.iter().find(|r| !capabilities.reaches(r.device)) {
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
