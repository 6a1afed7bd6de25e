//! `RdmaMetadata`: what a passive operation hands its peer, in Dynamo 1.6.1's JSON.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::descriptor::Region;
use crate::device::Device;
use crate::error::Error;
use crate::key::{truncate, NotificationKey};
use crate::status::OperationKind;

/// Largest JSON document [`RdmaMetadata::from_json`] accepts (8 MiB): room for
/// [`MAX_DESCRIPTORS`] descriptors at their longest (`{"device":"cuda:4294967295","ptr":…,
/// "size":…}` with 19-digit numbers is 85 bytes, 5.3 MiB in all) and a NIXL agent's blob.
pub const MAX_METADATA_JSON: usize = 8 << 20;
/// Most descriptors a metadata document may list.
pub const MAX_DESCRIPTORS: usize = 65_536;

/// One remote region as it travels in metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteDescriptor {
    /// Where the peer's memory lives.
    pub device: Device,
    /// The peer's virtual address of the first byte (non-zero).
    pub ptr: u64,
    /// Length in bytes.
    pub size: u64,
}

impl RemoteDescriptor {
    /// The region this descriptor names.
    pub fn region(&self) -> Region {
        Region {
            addr: self.ptr,
            len: self.size,
            device: self.device,
        }
    }
}

impl From<Region> for RemoteDescriptor {
    fn from(region: Region) -> Self {
        RemoteDescriptor {
            device: region.device,
            ptr: region.addr,
            size: region.len,
        }
    }
}

/// What a passive operation hands its peer, out of band, so the peer can start the paired
/// active operation.
///
/// Serialises exactly as Dynamo 1.6.1 does: a JSON object with the four keys `descriptors`,
/// `nixl_metadata`, `notification_key` and `operation_kind`; unknown keys are rejected.
///
/// ```
/// use ferry_core::{OperationKind, RdmaMetadata};
/// let json = r#"{"descriptors":[{"device":"cpu","ptr":140230983663616,"size":4096}],
///   "nixl_metadata":"ferry-sim/1:b64:AAAA",
///   "notification_key":"1b4e28ba-2fa1-41d2-883f-0016d3cca427","operation_kind":1}"#;
/// let metadata = RdmaMetadata::from_json(json).unwrap();
/// assert_eq!(metadata.operation_kind, OperationKind::Read);
/// assert_eq!(RdmaMetadata::from_json(&metadata.to_json()).unwrap(), metadata);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdmaMetadata {
    /// The peer's regions, in order.
    pub descriptors: Vec<RemoteDescriptor>,
    /// The backend's endpoint blob (see [`EndpointBlob`]), as text.
    pub nixl_metadata: String,
    /// The key the completion notification must carry.
    pub notification_key: NotificationKey,
    /// Which active operation pairs with it: read (readable) or write (writable).
    pub operation_kind: OperationKind,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDescriptor {
    device: String,
    ptr: u64,
    size: u64,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    descriptors: Vec<WireDescriptor>,
    nixl_metadata: &'a str,
    notification_key: String,
    operation_kind: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireMetadataIn {
    descriptors: Vec<WireDescriptor>,
    nixl_metadata: String,
    notification_key: String,
    operation_kind: u64,
}

impl RdmaMetadata {
    /// The JSON text Dynamo's `RdmaMetadata.model_dump_json()` would produce.
    pub fn to_json(&self) -> String {
        let wire = WireMetadata {
            descriptors: self
                .descriptors
                .iter()
                .map(|d| WireDescriptor {
                    device: d.device.to_string(),
                    ptr: d.ptr,
                    size: d.size,
                })
                .collect(),
            nixl_metadata: &self.nixl_metadata,
            notification_key: self.notification_key.to_string(),
            operation_kind: self.operation_kind.code(),
        };
        // Invariant: the wire struct holds only strings and integers, which always serialise.
        serde_json::to_string(&wire).expect("metadata serialises")
    }

    /// Decodes Dynamo-compatible JSON. Hostile-input safe: over [`MAX_METADATA_JSON`] bytes or
    /// [`MAX_DESCRIPTORS`] descriptors is rejected, and nothing panics.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        if json.len() > MAX_METADATA_JSON {
            return Err(invalid(format!(
                "{} bytes of JSON, over the {MAX_METADATA_JSON}-byte bound",
                json.len()
            )));
        }
        let wire: WireMetadataIn =
            serde_json::from_str(json).map_err(|e| invalid(e.to_string()))?;
        if wire.descriptors.len() > MAX_DESCRIPTORS {
            return Err(invalid(format!(
                "{} descriptors, over the {MAX_DESCRIPTORS} bound",
                wire.descriptors.len()
            )));
        }
        let operation_kind = OperationKind::from_code(wire.operation_kind).ok_or_else(|| {
            invalid(format!(
                "operation_kind {} is neither 1 nor 2",
                wire.operation_kind
            ))
        })?;
        let notification_key = wire.notification_key.parse()?;
        let descriptors = wire
            .descriptors
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                if d.ptr == 0 {
                    return Err(invalid(format!("descriptor {i} has a null ptr")));
                }
                if d.ptr.checked_add(d.size).is_none() {
                    return Err(invalid(format!("descriptor {i} wraps the address space")));
                }
                let device = d.device.parse().map_err(|_| {
                    invalid(format!("descriptor {i} device {:?}", truncate(&d.device)))
                })?;
                Ok(RemoteDescriptor {
                    device,
                    ptr: d.ptr,
                    size: d.size,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        EndpointBlob::parse(&wire.nixl_metadata)?;
        Ok(RdmaMetadata {
            descriptors,
            nixl_metadata: wire.nixl_metadata,
            notification_key,
            operation_kind,
        })
    }

    /// The decoded endpoint blob.
    pub fn endpoint(&self) -> Result<EndpointBlob, Error> {
        EndpointBlob::parse(&self.nixl_metadata)
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidMetadata { reason }
}

/// The `nixl_metadata` field, decoded.
///
/// - NIXL (Dynamo's format): `"b64:"` + padded standard base64 of the zlib-compressed agent
///   metadata, or Dynamo ≤ 0.6's bare lowercase hex of the same bytes.
/// - Every other backend: `"ferry-<backend>/<version>:b64:<base64>"`, so a decoder can tell
///   which backend made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointBlob {
    /// NIXL agent metadata, still zlib-compressed as Dynamo sends it.
    Nixl {
        /// The compressed agent metadata.
        compressed: Vec<u8>,
    },
    /// A ferry backend's blob.
    Tagged {
        /// The backend's name (`sim`, `tcp`, `ucx`).
        backend: String,
        /// The backend's blob format version.
        version: u32,
        /// The backend's payload.
        payload: Vec<u8>,
    },
}

impl EndpointBlob {
    /// Decodes the text of a `nixl_metadata` field.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if let Some(rest) = text.strip_prefix("ferry-") {
            let (tag, encoded) = rest
                .split_once(":b64:")
                .ok_or_else(|| invalid("tagged blob without \":b64:\"".into()))?;
            let (backend, version) = tag
                .split_once('/')
                .ok_or_else(|| invalid("tagged blob without a version".into()))?;
            let valid_name = !backend.is_empty()
                && backend.len() <= 32
                && backend
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_name {
                return Err(invalid(format!("backend tag {:?}", truncate(backend))));
            }
            let version = version
                .parse()
                .map_err(|_| invalid(format!("blob version {:?}", truncate(version))))?;
            let payload = STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("blob base64: {e}")))?;
            return Ok(EndpointBlob::Tagged {
                backend: backend.to_owned(),
                version,
                payload,
            });
        }
        if let Some(encoded) = text.strip_prefix("b64:") {
            let compressed = STANDARD
                .decode(encoded)
                .map_err(|e| invalid(format!("nixl_metadata base64: {e}")))?;
            return Ok(EndpointBlob::Nixl { compressed });
        }
        decode_lower_hex(text)
            .map(|compressed| EndpointBlob::Nixl { compressed })
            .ok_or_else(|| {
                invalid("nixl_metadata is neither b64:, bare hex nor a ferry tag".into())
            })
    }

    /// The text form, as it goes into `nixl_metadata` (NIXL blobs in the `b64:` form).
    pub fn encode(&self) -> String {
        match self {
            EndpointBlob::Nixl { compressed } => format!("b64:{}", STANDARD.encode(compressed)),
            EndpointBlob::Tagged {
                backend,
                version,
                payload,
            } => format!("ferry-{backend}/{version}:b64:{}", STANDARD.encode(payload)),
        }
    }

    /// The name of the backend that made it.
    pub fn backend(&self) -> &str {
        match self {
            EndpointBlob::Nixl { .. } => "nixl",
            EndpointBlob::Tagged { backend, .. } => backend,
        }
    }
}

fn decode_lower_hex(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || bytes.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "1b4e28ba-2fa1-41d2-883f-0016d3cca427";

    fn doc(extra: &str) -> String {
        format!(
            r#"{{"descriptors":[{{"device":"cpu","ptr":140230983663616,"size":4096}}],"nixl_metadata":"b64:eJx=","notification_key":"{KEY}","operation_kind":1{extra}}}"#
        )
    }

    #[test]
    fn serialises_keys_in_dynamos_order() {
        let md = RdmaMetadata::from_json(&doc("")).unwrap_err();
        // "eJx=" is not valid padded base64 of anything: the blob is checked too.
        assert!(matches!(md, Error::InvalidMetadata { .. }));
        let text = doc("").replace("b64:eJx=", "b64:eJwDAAAAAAE=");
        let md = RdmaMetadata::from_json(&text).unwrap();
        assert_eq!(md.to_json(), text);
    }

    #[test]
    fn rejects_unknown_and_missing_keys() {
        let good = doc("").replace("b64:eJx=", "b64:eJwDAAAAAAE=");
        assert!(RdmaMetadata::from_json(&good).is_ok());
        let extra = good.replace("}]", r#","extra":1}]"#);
        assert!(RdmaMetadata::from_json(&extra).is_err());
        let top = good.replace("\"operation_kind\":1", "\"operation_kind\":1,\"x\":null");
        assert!(RdmaMetadata::from_json(&top).is_err());
        let missing = good.replace(",\"operation_kind\":1", "");
        assert!(RdmaMetadata::from_json(&missing).is_err());
    }

    #[test]
    fn tagged_blobs_round_trip() {
        let blob = EndpointBlob::Tagged {
            backend: "tcp".into(),
            version: 1,
            payload: vec![1, 2, 3, 255],
        };
        let text = blob.encode();
        assert_eq!(text, "ferry-tcp/1:b64:AQID/w==");
        assert_eq!(EndpointBlob::parse(&text), Ok(blob));
        assert_eq!(
            EndpointBlob::parse("00ff10"),
            Ok(EndpointBlob::Nixl {
                compressed: vec![0, 255, 16]
            })
        );
        for bad in [
            "",
            "00F",
            "0g",
            "ferry-TCP/1:b64:",
            "ferry-tcp:b64:",
            "ferry-tcp/x:b64:",
        ] {
            assert!(EndpointBlob::parse(bad).is_err(), "{bad}");
        }
    }

    /// Regression: the JSON bound was 1 MiB, which about 18 000 descriptors already filled, so
    /// metadata a peer was allowed to send (a scattered 1 GiB KV-cache read has 32 640) could
    /// not be decoded.
    #[test]
    fn the_most_descriptors_at_their_longest_decode() {
        let md = RdmaMetadata {
            descriptors: vec![
                RemoteDescriptor {
                    device: Device::Cuda(u32::MAX),
                    ptr: u64::MAX / 2,
                    size: u64::MAX / 2,
                };
                MAX_DESCRIPTORS
            ],
            nixl_metadata: EndpointBlob::Tagged {
                backend: "nixl".into(),
                version: 1,
                payload: vec![0xa5; 1 << 20],
            }
            .encode(),
            notification_key: NotificationKey::from_random_bytes([7; 16]),
            operation_kind: OperationKind::Write,
        };
        let json = md.to_json();
        assert!(json.len() <= MAX_METADATA_JSON, "{} bytes", json.len());
        let decoded = RdmaMetadata::from_json(&json).map_err(|e| e.to_string());
        assert!(decoded.as_ref() == Ok(&md), "{:?}", decoded.err());
    }

    #[test]
    fn bounds_hold() {
        let huge = " ".repeat(MAX_METADATA_JSON + 1);
        assert!(RdmaMetadata::from_json(&huge).is_err());
        let deep = "[".repeat(10_000);
        assert!(RdmaMetadata::from_json(&deep).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in ".{0,512}") {
            let _ = RdmaMetadata::from_json(&text);
            let _ = EndpointBlob::parse(&text);
        }

        #[test]
        fn round_trips(descs in proptest::collection::vec((1u64..u64::MAX / 2, 0u64..1 << 40, 0u32..8, any::<bool>()), 0..16),
                       key in any::<[u8; 16]>(), write in any::<bool>(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let md = RdmaMetadata {
                descriptors: descs.into_iter().map(|(ptr, size, n, cuda)| RemoteDescriptor {
                    device: if cuda { Device::Cuda(n) } else { Device::Cpu }, ptr, size }).collect(),
                nixl_metadata: EndpointBlob::Tagged { backend: "sim".into(), version: 1, payload }.encode(),
                notification_key: NotificationKey::from_random_bytes(key),
                operation_kind: if write { OperationKind::Write } else { OperationKind::Read },
            };
            prop_assert_eq!(RdmaMetadata::from_json(&md.to_json()).unwrap(), md);
        }
    }
}
