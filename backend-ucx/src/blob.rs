//! The ucx endpoint blob: what a passive operation's `nixl_metadata` carries, tagged
//! `ferry-ucx/1:b64:…` (SPEC §6).
//!
//! Payload layout (all integers little-endian):
//!
//! ```text
//!  u32 payload length (this field included)   u64 FNV-1a of everything after this field
//!  u32 worker address length   worker address bytes
//!  u32 region count            per region: u64 address, u64 length, u32 rkey length, rkey bytes
//! ```
//!
//! The length and checksum catch truncation and corruption in transit: UCX 1.13 parses a
//! worker address without a length (`WorkerAddress::from_bytes` is `unsafe` for that reason),
//! so a damaged one must never reach it. They do not make a hostile blob safe: whoever can
//! forge metadata can compute the checksum. Metadata is a capability (SPEC §9) and must come
//! from the peer it names.

use ferry_core::{EndpointBlob, Error};

/// The backend's name, as in metadata tags and errors.
pub const NAME: &str = "ucx";
/// The blob format version in the tag.
pub const VERSION: u32 = 1;

/// Largest worker address accepted (UCX's are a few hundred bytes).
const MAX_ADDRESS: usize = 64 << 10;
/// Largest packed remote key accepted.
const MAX_RKEY: usize = 64 << 10;
/// Most regions one blob may list.
const MAX_REGIONS: usize = ferry_core::MAX_DESCRIPTORS;

/// One registered region of the passive side and the packed remote key that reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionKey {
    /// The region's first address in the passive process.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// `ucp_rkey_pack`'s output for it.
    pub rkey: Vec<u8>,
}

impl RegionKey {
    /// Whether `[addr, addr + len)` lies inside this region.
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        match (addr.checked_add(len), self.addr.checked_add(self.len)) {
            (Some(end), Some(own_end)) => addr >= self.addr && end <= own_end,
            _ => false,
        }
    }
}

/// The decoded payload of a `ferry-ucx/1` blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcxBlob {
    /// The passive side's worker address (`ucp_worker_get_address`).
    pub address: Vec<u8>,
    /// The registrations covering the exposed descriptors.
    pub regions: Vec<RegionKey>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn invalid(reason: String) -> Error {
    Error::InvalidMetadata {
        reason: format!("ferry-ucx blob: {reason}"),
    }
}

/// Reads fields off a payload, never past its end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(invalid(format!(
                "{what}: {n} bytes wanted, {} left",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(out))
    }

    /// A length field bounded by `max` (checked before anything is allocated).
    fn len(&mut self, what: &str, max: usize) -> Result<usize, Error> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(invalid(format!("{what} {n} is over the bound {max}")));
        }
        Ok(n)
    }
}

impl UcxBlob {
    /// The payload bytes.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(self.address.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.address);
        body.extend_from_slice(&(self.regions.len() as u32).to_le_bytes());
        for region in &self.regions {
            body.extend_from_slice(&region.addr.to_le_bytes());
            body.extend_from_slice(&region.len.to_le_bytes());
            body.extend_from_slice(&(region.rkey.len() as u32).to_le_bytes());
            body.extend_from_slice(&region.rkey);
        }
        let total = 4 + 8 + body.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&fnv1a(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The tagged endpoint blob.
    pub fn to_endpoint(&self) -> EndpointBlob {
        EndpointBlob::Tagged {
            backend: NAME.into(),
            version: VERSION,
            payload: self.to_payload(),
        }
    }

    /// Decodes a payload: bounded, typed errors, no panics.
    pub fn from_payload(payload: &[u8]) -> Result<UcxBlob, Error> {
        let mut reader = Reader { rest: payload };
        let total = reader.u32("payload length")? as usize;
        if total != payload.len() {
            return Err(invalid(format!(
                "says {total} bytes, carries {}",
                payload.len()
            )));
        }
        let checksum = reader.u64("checksum")?;
        if fnv1a(reader.rest) != checksum {
            return Err(invalid("checksum mismatch (damaged in transit)".into()));
        }
        let address_len = reader.len("worker address length", MAX_ADDRESS)?;
        if address_len == 0 {
            return Err(invalid("empty worker address".into()));
        }
        let address = reader.take(address_len, "worker address")?.to_vec();
        let count = reader.len("region count", MAX_REGIONS)?;
        // Each region takes at least 20 bytes: never reserve more than the payload can hold.
        let mut regions = Vec::with_capacity(count.min(reader.rest.len() / 20));
        for i in 0..count {
            let addr = reader.u64("region address")?;
            let len = reader.u64("region length")?;
            if addr.checked_add(len).is_none() {
                return Err(invalid(format!("region {i} wraps the address space")));
            }
            let rkey_len = reader.len("rkey length", MAX_RKEY)?;
            let rkey = reader.take(rkey_len, "rkey")?.to_vec();
            regions.push(RegionKey { addr, len, rkey });
        }
        if !reader.rest.is_empty() {
            return Err(invalid(format!("{} trailing bytes", reader.rest.len())));
        }
        Ok(UcxBlob { address, regions })
    }

    /// Decodes an endpoint blob: `BackendMismatch` for another backend's, `InvalidMetadata`
    /// for another version or a damaged payload.
    pub fn from_endpoint(endpoint: &EndpointBlob) -> Result<UcxBlob, Error> {
        match endpoint {
            EndpointBlob::Tagged {
                backend,
                version,
                payload,
            } if backend == NAME => {
                if *version != VERSION {
                    return Err(invalid(format!(
                        "version {version}, this build reads {VERSION}"
                    )));
                }
                UcxBlob::from_payload(payload)
            }
            other => Err(Error::BackendMismatch {
                expected: NAME.into(),
                found: other.backend().to_owned(),
            }),
        }
    }

    /// The region whose key covers `[addr, addr + len)`.
    pub fn region_for(&self, addr: u64, len: u64) -> Option<usize> {
        self.regions.iter().position(|r| r.covers(addr, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UcxBlob {
        UcxBlob {
            address: vec![7; 40],
            regions: vec![
                RegionKey {
                    addr: 0x1000,
                    len: 0x100,
                    rkey: vec![1, 2, 3],
                },
                RegionKey {
                    addr: 0x9000,
                    len: 16,
                    rkey: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trips_through_the_tag() {
        let blob = sample();
        let text = blob.to_endpoint().encode();
        assert!(text.starts_with("ferry-ucx/1:b64:"), "{text}");
        let parsed = EndpointBlob::parse(&text).unwrap();
        assert_eq!(UcxBlob::from_endpoint(&parsed).unwrap(), blob);
        assert_eq!(blob.region_for(0x1010, 0x10), Some(0));
        assert_eq!(blob.region_for(0x10f0, 0x20), None);
        assert_eq!(blob.region_for(0x9000, 16), Some(1));
        assert_eq!(blob.region_for(u64::MAX, 2), None);
    }

    #[test]
    fn other_backends_and_versions_are_refused() {
        let tcp = EndpointBlob::Tagged {
            backend: "tcp".into(),
            version: 1,
            payload: vec![],
        };
        assert!(matches!(
            UcxBlob::from_endpoint(&tcp),
            Err(Error::BackendMismatch { .. })
        ));
        let v2 = EndpointBlob::Tagged {
            backend: NAME.into(),
            version: 2,
            payload: sample().to_payload(),
        };
        assert!(matches!(
            UcxBlob::from_endpoint(&v2),
            Err(Error::InvalidMetadata { .. })
        ));
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let payload = sample().to_payload();
        for n in 0..payload.len() {
            assert!(
                UcxBlob::from_payload(&payload[..n]).is_err(),
                "truncated at {n}"
            );
        }
        for i in 0..payload.len() {
            let mut damaged = payload.clone();
            damaged[i] ^= 0x40;
            assert!(UcxBlob::from_payload(&damaged).is_err(), "byte {i}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(UcxBlob::from_payload(&longer).is_err());
    }

    #[test]
    fn claimed_lengths_are_bounded_before_allocating() {
        // A checksummed body claiming four billion regions, with none present.
        let mut body = Vec::new();
        body.extend_from_slice(&1u32.to_le_bytes());
        body.push(9);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut payload = ((12 + body.len()) as u32).to_le_bytes().to_vec();
        payload.extend_from_slice(&fnv1a(&body).to_le_bytes());
        payload.extend_from_slice(&body);
        assert!(matches!(
            UcxBlob::from_payload(&payload),
            Err(Error::InvalidMetadata { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x1234_5678_u64;
        for len in 0..512 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            let _ = UcxBlob::from_payload(&bytes);
        }
    }
}
