//! Views of local memory.

use bytes::{Bytes, BytesMut};
#[cfg(feature = "cuda")]
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DeviceSlice};

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
/// With the `cuda` feature, CUDA device memory is described the same way, borrowed from
/// cudarc's safe types: `Descriptor::from_cuda_slice` / `from_cuda_view` are read-only,
/// `from_cuda_slice_mut` / `from_cuda_view_mut` writable. [`device`](Descriptor::device) is
/// then `cuda:N` and [`addr`](Descriptor::addr) the device pointer. The host accessors
/// ([`as_slice`](Descriptor::as_slice), [`as_mut_slice`](Descriptor::as_mut_slice)) give `None`
/// for device memory; a backend that copies device memory itself takes `cuda_view` /
/// `cuda_view_mut`, and one that hands addresses to hardware takes `addr`, `len` and `device`.
/// A backend that cannot reach device memory leaves [`DeviceKind::Cuda`](crate::DeviceKind::Cuda)
/// out of its capabilities, and validation refuses such descriptors with
/// [`Error::UnsupportedDevice`](crate::Error::UnsupportedDevice) before any operation exists.
///
/// Raw pointers (foreign allocations) are not accepted by this crate: it forbids `unsafe`, and
/// only a backend that hands addresses to hardware can honour such a contract.
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
    /// Read-only device memory.
    #[cfg(feature = "cuda")]
    CudaShared(DeviceRegion<CudaView<'buf, u8>>),
    /// Writable device memory.
    #[cfg(feature = "cuda")]
    CudaExclusive(DeviceRegion<CudaViewMut<'buf, u8>>),
}

/// A device view with its pointer and ordinal, read once when the descriptor is made.
#[cfg(feature = "cuda")]
#[derive(Debug)]
struct DeviceRegion<V> {
    view: V,
    ptr: u64,
    ordinal: u32,
}

#[cfg(feature = "cuda")]
impl<V: DevicePtr<u8>> DeviceRegion<V> {
    fn new(view: V) -> Self {
        // Reading the pointer through cudarc's safe API orders its stream after the memory's
        // last write and records a read there (no-ops outside cudarc's multi-stream mode);
        // the guard is dropped at once, as nothing is scheduled with the pointer here.
        let (ptr, guard) = view.device_ptr(view.stream());
        drop(guard);
        // cudarc reaches devices by `i32` ordinals (cuDeviceGet), so an ordinal fits in u32.
        let ordinal = u32::try_from(view.stream().context().ordinal()).unwrap_or(u32::MAX);
        DeviceRegion { view, ptr, ordinal }
    }
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
        match &self.memory {
            #[cfg(feature = "cuda")]
            Memory::CudaShared(d) => Device::Cuda(d.ordinal),
            #[cfg(feature = "cuda")]
            Memory::CudaExclusive(d) => Device::Cuda(d.ordinal),
            _ => Device::Cpu,
        }
    }

    /// The address of the first byte, as a peer sees it in metadata: a host virtual address,
    /// or for device memory the device pointer (`CUdeviceptr`).
    pub fn addr(&self) -> u64 {
        match &self.memory {
            #[cfg(feature = "cuda")]
            Memory::CudaShared(d) => d.ptr,
            #[cfg(feature = "cuda")]
            Memory::CudaExclusive(d) => d.ptr,
            _ => self.host_bytes().map_or(0, |b| b.as_ptr() as usize as u64),
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &self.memory {
            #[cfg(feature = "cuda")]
            Memory::CudaShared(d) => d.view.len(),
            #[cfg(feature = "cuda")]
            Memory::CudaExclusive(d) => d.view.len(),
            _ => self.host_bytes().map_or(0, <[u8]>::len),
        }
    }

    /// Whether the region is empty (valid; moves nothing).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a transfer may write into this memory.
    pub fn is_writable(&self) -> bool {
        match &self.memory {
            Memory::Shared(_) | Memory::Bytes(_) => false,
            #[cfg(feature = "cuda")]
            Memory::CudaShared(_) => false,
            _ => true,
        }
    }

    /// The bytes of host memory, for a backend that moves host memory itself; `None` for
    /// device memory, which the host cannot read in place.
    pub fn as_slice(&self) -> Option<&[u8]> {
        self.host_bytes()
    }

    /// The bytes of host memory, writable; `None` for a shared view and for device memory.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match &mut self.memory {
            Memory::Exclusive(s) => Some(s),
            Memory::Vec(v) => Some(v),
            Memory::BytesMut(b) => Some(b),
            _ => None,
        }
    }

    fn host_bytes(&self) -> Option<&[u8]> {
        match &self.memory {
            Memory::Shared(s) => Some(s),
            Memory::Exclusive(s) => Some(s),
            Memory::Vec(v) => Some(v),
            Memory::BytesMut(b) => Some(b),
            Memory::Bytes(b) => Some(b),
            #[cfg(feature = "cuda")]
            Memory::CudaShared(_) | Memory::CudaExclusive(_) => None,
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

#[cfg(feature = "cuda")]
impl<'buf> Descriptor<'buf> {
    /// A read-only view of a whole CUDA allocation.
    pub fn from_cuda_slice(slice: &'buf CudaSlice<u8>) -> Self {
        Self::from_cuda_view(slice.as_view())
    }

    /// A read-write view of a whole CUDA allocation.
    pub fn from_cuda_slice_mut(slice: &'buf mut CudaSlice<u8>) -> Self {
        Self::from_cuda_view_mut(slice.as_view_mut())
    }

    /// A read-only view of part of a CUDA allocation (`slice.slice(a..b)`).
    pub fn from_cuda_view(view: CudaView<'buf, u8>) -> Self {
        Descriptor {
            memory: Memory::CudaShared(DeviceRegion::new(view)),
        }
    }

    /// A read-write view of part of a CUDA allocation (`slice.slice_mut(a..b)`).
    pub fn from_cuda_view_mut(view: CudaViewMut<'buf, u8>) -> Self {
        Descriptor {
            memory: Memory::CudaExclusive(DeviceRegion::new(view)),
        }
    }

    /// The device memory, readable by cudarc copies; `None` for host memory.
    pub fn cuda_view(&self) -> Option<CudaView<'_, u8>> {
        match &self.memory {
            Memory::CudaShared(d) => Some(d.view.slice(..)),
            Memory::CudaExclusive(d) => Some(d.view.as_view()),
            _ => None,
        }
    }

    /// The device memory, writable by cudarc copies; `None` for host memory and for a
    /// read-only view.
    pub fn cuda_view_mut(&mut self) -> Option<CudaViewMut<'_, u8>> {
        match &mut self.memory {
            Memory::CudaExclusive(d) => Some(d.view.slice_mut(..)),
            _ => None,
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
    /// [`BytesMut`] that cannot be taken over. Device memory (a `'static` view of a leaked
    /// CUDA allocation) is copied to the host with cudarc; should that copy fail, the `Vec` is
    /// empty.
    pub fn into_vec(self) -> Vec<u8> {
        match self.memory {
            Memory::Vec(v) => v,
            Memory::BytesMut(b) => b.into(),
            Memory::Bytes(b) => b.into(),
            Memory::Shared(s) => s.to_vec(),
            Memory::Exclusive(s) => s.to_vec(),
            #[cfg(feature = "cuda")]
            Memory::CudaShared(d) => d.view.stream().clone_dtoh(&d.view).unwrap_or_default(),
            #[cfg(feature = "cuda")]
            Memory::CudaExclusive(d) => d.view.stream().clone_dtoh(&d.view).unwrap_or_default(),
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
        assert_eq!(d.as_slice(), Some(&[9, 2, 3][..]));
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
