//! Guest memory: a [`GuestRam`] mapping of a domain's memory into this process, and the
//! bounds checks every copy in or out goes through.
use std::{
    fmt, io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
};

use crate::{addr::GuestAddress, error::Error};

/// An access outside a [`GuestRam`] mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct RamError {
    /// Where the access started.
    pub gpa: GuestAddress,
    /// Its length.
    pub len: u64,
    /// The mapping's first address.
    pub start: GuestAddress,
    /// The mapping's length.
    pub size: u64,
}

impl fmt::Display for RamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x} bytes at {} lie outside the guest memory [{}, {:#x})",
            self.len,
            self.gpa,
            self.start,
            self.start.0 + self.size
        )
    }
}

impl std::error::Error for RamError {}

/// Guest memory a loader can write to: a [`GuestRam`] mapping, or plain memory in tests.
pub trait GuestMemoryWrite {
    /// Copies `bytes` to guest-physical `gpa`, failing when they do not all fit.
    fn write_at(&mut self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), RamError>;
}

/// Where `len` bytes at `gpa` start inside a memory of `size` bytes at `start`, if they fit.
pub fn offset_in(
    start: GuestAddress,
    size: u64,
    gpa: GuestAddress,
    len: u64,
) -> Result<usize, RamError> {
    let err = || RamError {
        gpa,
        len,
        start,
        size,
    };
    let offset = gpa.0.checked_sub(start.0).ok_or_else(err)?;
    let end = offset.checked_add(len).ok_or_else(err)?;
    if end > size {
        return Err(err());
    }
    usize::try_from(offset).map_err(|_| err())
}

/// A mapping of a domain's memory into this process, unmapped on drop.
///
/// The guest may change the memory at any time once it runs, so this type hands out no
/// references into it: it copies in and out, bounds-checked, the way vm-memory's
/// `GuestMemoryMmap` does.
///
/// # Invariants
///
/// `base` is the start of a live `MAP_SHARED` read-write mapping of `size` bytes that this value
/// owns; `size` fits in `usize`.
#[derive(Debug)]
pub struct GuestRam {
    base: NonNull<u8>,
    size: u64,
    gpa: GuestAddress,
}

impl GuestRam {
    /// Maps `size` bytes of `fd` at offset `gpa` (the domain fd's mmap offset is the
    /// guest-physical address).
    pub(crate) fn map(fd: BorrowedFd<'_>, gpa: GuestAddress, size: u64) -> Result<Self, Error> {
        let err = |error| Error::Mmap { gpa, size, error };
        let overflow = || err(io::Error::from_raw_os_error(libc::EOVERFLOW));
        let len = usize::try_from(size).map_err(|_| overflow())?;
        let offset = libc::off_t::try_from(gpa.0).map_err(|_| overflow())?;
        // SAFETY: a new shared mapping chosen by the kernel (address NULL) overlaps nothing of
        // ours; the fd is open for the call because it is borrowed.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::Error::from_raw_os_error(libc::EFAULT)))?;
        // INVARIANT: mmap succeeded with `len == size` bytes; this value owns the mapping.
        Ok(Self { base, size, gpa })
    }

    /// The guest-physical address of the first byte.
    pub fn gpa(&self) -> GuestAddress {
        self.gpa
    }

    /// The mapping's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first byte of the mapping in this process, for shared rings that need atomic
    /// accesses (a console or XenStore page). The pointer is valid for [`GuestRam::size`]
    /// bytes while this value lives; the guest writes the memory concurrently, so it must only
    /// be accessed through raw pointers (volatile or atomic), never through references to
    /// plain data.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read_at(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), RamError> {
        let offset = offset_in(self.gpa, self.size, gpa, buf.len() as u64)?;
        // SAFETY: `offset_in` checked that `offset + buf.len() <= size`, so the source lies in
        // the live mapping (type invariant); `buf` is ours and cannot overlap a mapping this
        // value owns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }
}

// SAFETY: the mapping is process-wide shared memory that stays mapped until drop; every access
// through this type is a bounds-checked raw copy (the guest writes the same memory anyway, so
// no Rust reference into it is ever formed), which is as sound from another thread as from this
// one.
unsafe impl Send for GuestRam {}
// SAFETY: as for `Send`: `&self` methods only copy out of the mapping through raw pointers.
unsafe impl Sync for GuestRam {}

impl GuestMemoryWrite for GuestRam {
    fn write_at(&mut self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), RamError> {
        let offset = offset_in(self.gpa, self.size, gpa, bytes.len() as u64)?;
        // SAFETY: `offset_in` checked that `offset + bytes.len() <= size`, so the destination
        // lies in the live, writable mapping (type invariant); `bytes` cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            );
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `base` and `size` describe the mapping this value owns (type invariant), and
        // no reference into it escaped.
        let r = unsafe { libc::munmap(self.base.as_ptr().cast(), self.size as usize) };
        debug_assert_eq!(r, 0, "munmap of guest memory failed");
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    #[test]
    fn offsets_are_bounds_checked() {
        let start = GuestAddress(0x1000);
        assert_eq!(
            offset_in(start, 0x2000, GuestAddress(0x1000), 0x2000),
            Ok(0)
        );
        assert_eq!(
            offset_in(start, 0x2000, GuestAddress(0x2fff), 1),
            Ok(0x1fff)
        );
        assert!(offset_in(start, 0x2000, GuestAddress(0x2fff), 2).is_err());
        assert!(offset_in(start, 0x2000, GuestAddress(0xfff), 1).is_err());
        assert!(offset_in(start, 0x2000, GuestAddress(u64::MAX), 2).is_err());
    }

    #[test]
    fn guest_ram_maps_copies_and_checks_bounds() {
        // A memfd stands in for the domain fd: the mmap offset plays the guest address.
        // SAFETY: the name is a NUL-terminated string; the call takes no other memory.
        let raw = unsafe { libc::memfd_create(c"keel-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: memfd_create returned a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(0x3000).unwrap();
        let mut ram = GuestRam::map(file.as_fd(), GuestAddress(0x1000), 0x2000).unwrap();
        ram.write_at(GuestAddress(0x1ffe), b"hi").unwrap();
        let mut back = [0u8; 2];
        ram.read_at(GuestAddress(0x1ffe), &mut back).unwrap();
        assert_eq!(&back, b"hi");
        let e = ram.write_at(GuestAddress(0x2fff), b"hi").unwrap_err();
        assert!(e
            .to_string()
            .contains("outside the guest memory [0x1000, 0x3000)"));
        drop(ram);
        let mut file_bytes = vec![0u8; 0x3000];
        std::io::Read::read_exact(&mut &file, &mut file_bytes).unwrap();
        assert_eq!(&file_bytes[0x1ffe..0x2000], b"hi");
    }
}
