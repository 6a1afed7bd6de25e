//! Views of local memory.

use bytes::{Bytes, BytesMut};

use crate::device::Device;

/// A view of one contiguous region of local memory: address, length and [`Device`].
///
/// A descriptor never copies. The borrowed forms tie an operation to the buffer's lifetime
/// (`'buf`), so the buffer cannot be freed or reused while the operation can still touch it; the
/// owned forms (`Vec<u8>`, [`BytesMut`], [`Bytes`]) make `'static` descriptors whose operations
/// can move into tasks, and give the buffer back through [`Descriptor::into_vec`] and friends.
///
/// Shared views ([`Descriptor::from_slice`], [`Descriptor::from_bytes`]) may only be read: a
/// readable may expose them and a write may send them. Operations that write into local memory
/// (a writable, a read) need an exclusive view and refuse a shared one with
/// [`Error::ReadOnlyDescriptor`](crate::Error::ReadOnlyDescriptor).
///
/// Raw pointers (device memory, foreign allocations) are not accepted by this crate: it forbids
/// `unsafe`, and only a backend that hands addresses to hardware can honour such a contract.
///
/// ```
/// use ferry_core::{Descriptor, Device};
/// let page = vec![7u8; 4096];
/// let d = Descriptor::from_slice(&page);
/// assert_eq!((d.len(), d.device(), d.is_writable()), (4096, Device::cpu(), false));
/// ```
#[derive(Debug)]
pub struct Descriptor<'buf> {
    memory: Memory<'buf>,
}

#[derive(Debug)]
enum Memory<'buf> {
    Shared(&'buf [u8]),
    Exclusive(&'buf mut [u8]),
    Vec(Vec<u8>),
    BytesMut(BytesMut),
    Bytes(Bytes),
}

impl<'buf> Descriptor<'buf> {
    /// A read-only view of host memory.
    pub fn from_slice(slice: &'buf [u8]) -> Self {
        Descriptor {
            memory: Memory::Shared(slice),
        }
    }

    /// A read-write view of host memory.
    pub fn from_mut_slice(slice: &'buf mut [u8]) -> Self {
        Descriptor {
            memory: Memory::Exclusive(slice),
        }
    }

    /// The device the memory lives on.
    pub fn device(&self) -> Device {
        Device::Cpu
    }

    /// The address of the first byte, as a peer sees it in metadata.
    pub fn addr(&self) -> u64 {
        self.as_slice().as_ptr() as usize as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the region is empty (valid; moves nothing).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a transfer may write into this memory.
    pub fn is_writable(&self) -> bool {
        !matches!(self.memory, Memory::Shared(_) | Memory::Bytes(_))
    }

    /// The bytes, for a backend that moves host memory itself.
    pub fn as_slice(&self) -> &[u8] {
        match &self.memory {
            Memory::Shared(s) => s,
            Memory::Exclusive(s) => s,
            Memory::Vec(v) => v,
            Memory::BytesMut(b) => b,
            Memory::Bytes(b) => b,
        }
    }

    /// The bytes, writable; `None` for a shared view.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match &mut self.memory {
            Memory::Shared(_) | Memory::Bytes(_) => None,
            Memory::Exclusive(s) => Some(s),
            Memory::Vec(v) => Some(v),
            Memory::BytesMut(b) => Some(b),
        }
    }

    /// A summary of the region for validation and registration.
    pub fn region(&self) -> Region {
        Region {
            addr: self.addr(),
            len: self.len() as u64,
            device: self.device(),
        }
    }
}

impl Descriptor<'static> {
    /// An owned, writable host buffer.
    pub fn from_vec(vec: Vec<u8>) -> Self {
        Descriptor {
            memory: Memory::Vec(vec),
        }
    }

    /// An owned, writable host buffer.
    pub fn from_bytes_mut(bytes: BytesMut) -> Self {
        Descriptor {
            memory: Memory::BytesMut(bytes),
        }
    }

    /// An owned, read-only host buffer.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Descriptor {
            memory: Memory::Bytes(bytes),
        }
    }

    /// The owned buffer as a `Vec`, copying only if it was built from [`Bytes`] or
    /// [`BytesMut`] that cannot be taken over.
    pub fn into_vec(self) -> Vec<u8> {
        match self.memory {
            Memory::Vec(v) => v,
            Memory::BytesMut(b) => b.into(),
            Memory::Bytes(b) => b.into(),
            Memory::Shared(s) => s.to_vec(),
            Memory::Exclusive(s) => s.to_vec(),
        }
    }
}

/// Where a region is: address, length, device. What travels in metadata and what
/// registration is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    /// Address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the memory lives.
    pub device: Device,
}

impl Region {
    /// One past the last byte, or `None` if that overflows.
    pub fn end(&self) -> Option<u64> {
        self.addr.checked_add(self.len)
    }

    /// Whether `[addr, addr + len)` lies inside this region (an empty range at either edge
    /// counts as inside).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let (Some(end), Some(other_end)) = (self.end(), addr.checked_add(len)) else {
            return false;
        };
        addr >= self.addr && other_end <= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writability_follows_the_form() {
        let shared = [0u8; 4];
        let mut exclusive = [0u8; 4];
        assert!(!Descriptor::from_slice(&shared).is_writable());
        assert!(Descriptor::from_mut_slice(&mut exclusive).is_writable());
        assert!(Descriptor::from_vec(vec![0; 3]).is_writable());
        assert!(Descriptor::from_bytes_mut(BytesMut::zeroed(3)).is_writable());
        assert!(!Descriptor::from_bytes(Bytes::from_static(b"abc")).is_writable());
    }

    #[test]
    fn owned_buffers_come_back() {
        let mut d = Descriptor::from_vec(vec![1, 2, 3]);
        d.as_mut_slice().unwrap()[0] = 9;
        assert_eq!(d.into_vec(), vec![9, 2, 3]);
    }

    #[test]
    fn containment_is_overflow_safe() {
        let r = Region {
            addr: 100,
            len: 10,
            device: Device::Cpu,
        };
        assert!(r.contains(100, 10));
        assert!(r.contains(105, 0));
        assert!(r.contains(110, 0));
        assert!(!r.contains(99, 1));
        assert!(!r.contains(105, 6));
        assert!(!r.contains(u64::MAX, 2));
        let top = Region {
            addr: u64::MAX - 1,
            len: 5,
            device: Device::Cpu,
        };
        assert!(!top.contains(u64::MAX - 1, 1));
    }
}
