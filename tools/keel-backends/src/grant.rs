//! How a backend reaches the pages a frontend granted it: Xen's grant copy and grant map
//! (`GNTTABOP_copy`, `GNTTABOP_map_grant_ref`), with Dom0 as the grantee (XEN-PVH.md 6.2).
//! keel-domd implements [`GrantAccess`] over `/dev/keel`, which checks every reference against
//! the DomU's grant table; [`crate::testing::FakeGuest`] implements it over memory.

use std::io;

/// One segment of a batched grant copy: Xen's `gnttab_copy` with one side local.
#[derive(Debug)]
pub struct GrantCopy<'a> {
    /// The frontend's grant reference.
    pub gref: u32,
    /// Byte offset in the granted page; `offset + buf.len()` is at most 4096.
    pub offset: u16,
    /// `true`: `buf` is copied into the granted page (needs a writable grant); `false`: the
    /// granted page is copied into `buf`.
    pub to_guest: bool,
    /// The local side, as long as the copy.
    pub buf: &'a mut [u8],
    /// Out: 0 when this segment was copied, else a negative `GNTST_*`
    /// ([`keel_core::xen::abi::gnttabop`]`::ST_*`). Set for every segment, whatever the others
    /// did.
    pub status: i16,
}

/// Grant copies and grant maps of one frontend domain.
pub trait GrantAccess: Send + Sync {
    /// Copies each segment between the frontend's granted page and its `buf`, setting each
    /// `status`. `Err` only when the copy could not be attempted at all (the device is gone);
    /// a bad reference is a per-segment status.
    fn copy(&self, ops: &mut [GrantCopy<'_>]) -> io::Result<()>;

    /// Maps the pages `refs` (granted by the frontend) contiguously into this process, writable
    /// or not. Fails when any reference is not granted (writably, for `writable`).
    fn map(&self, refs: &[u32], writable: bool) -> io::Result<Box<dyn GrantMapping>>;
}

/// Granted pages mapped into this process; unmapped when dropped.
///
/// The memory is shared with the DomU, which may write it at any time: it is only ever
/// accessed through raw pointers (atomics for ring indexes, copies for data), never through
/// Rust references.
pub trait GrantMapping: Send {
    /// The first byte; page-aligned, valid for [`GrantMapping::len`] bytes until the mapping
    /// is dropped.
    fn as_ptr(&self) -> *mut u8;

    /// Bytes mapped: 4096 per reference.
    fn len(&self) -> usize;

    /// Whether nothing is mapped (never, for a successful map of at least one reference).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
