//! The PV block backend (Xen's blkback, in Dom0 userspace): serves a DomU's xen-blkfront from
//! a raw image file or a block device.
//!
//! - [`Disk`]: the backing file and what the frontend is told about it;
//! - [`xenstore`]: the backend's XenStore keys for a disk, and the frontend's keys read into a
//!   checked [`xenstore::FrontendConfig`] (blkif.h, "Feature and Parameter Negotiation");
//! - [`Queue`]: one ring's data path: requests copied out and checked ([`request`]); a read
//!   or write whose pages are all persistently mapped does its I/O on them directly (iovecs),
//!   others move their data with batched grant copies through aligned bounce buffers; I/O
//!   through io_uring or, where the kernel refuses it, a worker thread (`io.rs`),
//!   responses in completion order, notifications only when the frontend asked;
//!   [`Queue::run`] is its blocking loop.
//!
//! Protocol facts: Xen's `io/blkif.h`; behaviour checked against Linux's
//! `drivers/block/xen-blkback/blkback.c` (what is an error, what is `EOPNOTSUPP`) and
//! `xen-blkfront.c` (what the frontend sends and checks).

mod io;
mod queue;
pub mod request;
pub mod xenstore;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io as stdio;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use keel_core::xen::blkif::{PAGE_SIZE, SECTOR_SIZE};

pub use queue::{Queue, QueueError, QueueOptions, QueueStats};

/// `BLKGETSIZE64` (`_IOR(0x12, 114, size_t)`): a block device's size in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// The backing store of a virtual disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    read_only: bool,
    sectors: u64,
    sector_size: u32,
    physical_sector_size: u32,
    discard: bool,
}

impl Disk {
    /// Opens a raw image file or a block device, read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> stdio::Result<Disk> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Disk::from_file(file, read_only)
    }

    /// A disk over an open file or block device: its size and sector sizes are probed (a
    /// regular file has 512-byte sectors and its length rounded down to whole sectors).
    /// Discard is offered on writable disks (punching holes; a file system or device that
    /// cannot answers the frontend's discards with `EOPNOTSUPP`).
    pub fn from_file(file: File, read_only: bool) -> stdio::Result<Disk> {
        let meta = file.metadata()?;
        let (bytes, sector_size, physical) = if meta.file_type().is_block_device() {
            let fd = file.as_raw_fd();
            let mut bytes: u64 = 0;
            let mut logical: libc::c_int = 0;
            let mut physical: libc::c_uint = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, BLKSSZGET one int,
            // BLKPBSZGET one unsigned int; each points at a live local of that type.
            let r = unsafe {
                if libc::ioctl(fd, BLKGETSIZE64 as _, &mut bytes as *mut u64) < 0
                    || libc::ioctl(fd, libc::BLKSSZGET as _, &mut logical as *mut libc::c_int) < 0
                    || libc::ioctl(
                        fd,
                        libc::BLKPBSZGET as _,
                        &mut physical as *mut libc::c_uint,
                    ) < 0
                {
                    -1
                } else {
                    0
                }
            };
            if r < 0 {
                return Err(stdio::Error::last_os_error());
            }
            let logical = u32::try_from(logical).unwrap_or(0);
            (bytes, logical, physical.max(logical))
        } else if meta.file_type().is_file() {
            (meta.len(), SECTOR_SIZE, SECTOR_SIZE)
        } else {
            return Err(stdio::Error::new(
                stdio::ErrorKind::InvalidInput,
                "a disk is a regular file or a block device",
            ));
        };
        if !valid_sector_size(sector_size) {
            return Err(stdio::Error::new(
                stdio::ErrorKind::InvalidInput,
                format!("unsupported logical sector size {sector_size}"),
            ));
        }
        let per = u64::from(sector_size / SECTOR_SIZE);
        Ok(Disk {
            file,
            read_only,
            sectors: bytes / u64::from(SECTOR_SIZE) / per * per,
            sector_size,
            physical_sector_size: if physical % sector_size == 0 {
                physical
            } else {
                sector_size
            },
            discard: !read_only,
        })
    }

    /// Serves only the first `sectors` 512-byte sectors (at most those probed; a multiple of
    /// the logical sector size).
    pub fn with_sectors(mut self, sectors: u64) -> stdio::Result<Disk> {
        if sectors > self.sectors
            || !sectors.is_multiple_of(u64::from(self.sector_size / SECTOR_SIZE))
        {
            return Err(stdio::Error::new(
                stdio::ErrorKind::InvalidInput,
                format!(
                    "{sectors} sectors: more than {} or misaligned",
                    self.sectors
                ),
            ));
        }
        self.sectors = sectors;
        Ok(self)
    }

    /// Presents another logical sector size (512..=4096, a power of two): requests must then
    /// be aligned to it. The size shrinks to whole logical sectors.
    pub fn with_sector_size(mut self, sector_size: u32) -> stdio::Result<Disk> {
        if !valid_sector_size(sector_size) {
            return Err(stdio::Error::new(
                stdio::ErrorKind::InvalidInput,
                format!("unsupported logical sector size {sector_size}"),
            ));
        }
        let per = u64::from(sector_size / SECTOR_SIZE);
        self.sectors = self.sectors / per * per;
        self.sector_size = sector_size;
        self.physical_sector_size = self.physical_sector_size.max(sector_size);
        Ok(self)
    }

    /// Offers discard or not (never on a read-only disk).
    pub fn with_discard(mut self, discard: bool) -> Disk {
        self.discard = discard && !self.read_only;
        self
    }

    /// The backing file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the frontend may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Size in 512-byte sectors (the `sectors` node).
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Logical sector size in bytes (`sector-size`).
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Physical sector size in bytes (`physical-sector-size`).
    pub fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }

    /// Whether discard is offered (`feature-discard`).
    pub fn discard(&self) -> bool {
        self.discard
    }
}

/// A logical sector size the protocol can carry: a power of two from 512 to the page size (a
/// segment is at most one page).
fn valid_sector_size(size: u32) -> bool {
    size.is_power_of_two() && (SECTOR_SIZE..=PAGE_SIZE as u32).contains(&size)
}

#[cfg(test)]
mod disk_tests {
    use super::*;
    use crate::testing::temp_file;

    #[test]
    fn disks_probe_files_and_refuse_other_files() {
        let d = Disk::from_file(temp_file(100), false).unwrap();
        assert_eq!(
            (d.sectors(), d.sector_size(), d.read_only(), d.discard()),
            (100, 512, false, true)
        );
        let d = d.with_sector_size(4096).unwrap();
        assert_eq!(d.sectors(), 96);
        assert!(d.with_sectors(97).is_err());
        let d = Disk::from_file(temp_file(100), false)
            .unwrap()
            .with_sectors(10)
            .unwrap();
        assert_eq!(d.sectors(), 10);
        assert!(Disk::from_file(File::open("/dev/null").unwrap(), true).is_err());
        assert!(Disk::from_file(temp_file(1), false)
            .unwrap()
            .with_sector_size(1024)
            .is_ok());
        assert!(Disk::from_file(temp_file(1), false)
            .unwrap()
            .with_sector_size(8192)
            .is_err());
    }
}
