//! The PV block device protocol ("blkif"): the request and response layouts a DomU's
//! xen-blkfront puts on its shared rings, the operation and status numbers, and the generic
//! shared-ring header and size rule every Xen PV ring uses.
//!
//! Facts come from Xen's `xen/include/public/io/blkif.h` and `io/ring.h`, checked against
//! Linux's `drivers/block/xen-blkback/common.h` (its `blkif_x86_{32,64}_request` twins) and
//! `drivers/block/xen-blkfront.c`; the code is Keel's own. Names keep Xen's spelling with the
//! `BLKIF_` prefix becoming the module (`BLKIF_OP_READ` is [`op::READ`], `BLKIF_RSP_ERROR` is
//! [`rsp::ERROR`]) and struct names in Rust case (`struct blkif_request` is [`BlkifRequest`]).
//!
//! # Units
//! `sector_number`, `first_sect`/`last_sect` and the `sectors` XenStore node are always in
//! 512-byte units ([`SECTOR_SIZE`]), whatever `sector-size` the backend publishes; they must
//! only be aligned to it (blkif.h, "NB. 'first_sect' and 'last_sect'...").
//!
//! # Protocols
//! The frontend names its layout in its `protocol` node (blkif.h "protocol"; the values are
//! `XEN_IO_PROTO_ABI_*` of `io/protocols.h`). Keel serves the native x86_64 layout,
//! "x86_64-abi" ([`Protocol::X86_64`]): a 64-bit PVH Linux writes it. The i386 layout
//! "x86_32-abi" differs only by alignment (a `uint64_t` is 4-aligned there, so `id` sits at 4
//! instead of 8, the request is 108 bytes and the response 12, and the indirect request carries
//! an explicit 8-byte pad to stay 64 bytes); its twins ([`BlkifRequest32`]...) are here with
//! their layout asserts so that the difference is written down, but [`Protocol::parse`] refuses
//! it, as it refuses every other name.
//!
//! # Decoding
//! As in [`super::abi`]: requests are copied out of guest memory first, then read from the
//! copy with explicit little-endian loads (`from_bytes`, `None` when the buffer is too short),
//! and responses are encoded with `to_bytes`. The `to_bytes` of requests exist for frontends
//! in tests and fuzzers.

use core::mem::{offset_of, size_of};

/// Asserts a type's size and field offsets at compile time: `layout!(T, size; field @ off, ...)`.
macro_rules! layout {
    ($t:ty, $size:expr; $($f:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $f) == $off);)*
    };
}

/// `XEN_PAGE_SIZE`: the granted page, and the unit of ring pages.
pub const PAGE_SIZE: usize = 4096;

/// The protocol's sector: the unit of `sector_number`, `first_sect`, `last_sect`, `nr_sectors`
/// and the `sectors` node (blkif.h).
pub const SECTOR_SIZE: u32 = 512;

/// Protocol sectors in one granted page: `last_sect` must be below it (Linux blkback's
/// `XEN_PAGE_SIZE >> 9` check).
pub const SECTORS_PER_PAGE: u8 = (PAGE_SIZE / SECTOR_SIZE as usize) as u8;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments of a direct read/write request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;

/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: `indirect_grefs` of an indirect request.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;

/// Segments in one indirect page: `PAGE_SIZE / sizeof(struct blkif_request_segment)` (blkif.h
/// on `BLKIF_OP_INDIRECT`; Linux's `SEGS_PER_INDIRECT_FRAME`).
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / size_of::<BlkifRequestSegment>();

/// The most segments an indirect request can describe at all (8 full indirect pages); a
/// backend publishes its own, lower, `feature-max-indirect-segments`.
pub const MAX_INDIRECT_SEGMENTS: usize =
    MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;

/// The indirect pages `segments` segments need: ceil(segments / 512) (Linux's
/// `INDIRECT_PAGES`).
pub const fn indirect_pages(segments: usize) -> usize {
    segments.div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
}

/// `BLKIF_OP_*`: [`BlkifRequest::operation`].
pub mod op {
    /// `BLKIF_OP_READ`.
    pub const READ: u8 = 0;
    /// `BLKIF_OP_WRITE`.
    pub const WRITE: u8 = 1;
    /// `BLKIF_OP_WRITE_BARRIER`: a write ordered after every earlier write and before every
    /// later one ("feature-barrier").
    pub const WRITE_BARRIER: u8 = 2;
    /// `BLKIF_OP_FLUSH_DISKCACHE`: commit the volatile cache; with segments, a write too
    /// (Linux blkfront sends its FUA and preflush writes so with "feature-flush-cache").
    pub const FLUSH_DISKCACHE: u8 = 3;
    /// `BLKIF_OP_RESERVED_1` (SLES device-specific packets): never served.
    pub const RESERVED_1: u8 = 4;
    /// `BLKIF_OP_DISCARD`: the request is a [`super::BlkifRequestDiscard`]
    /// ("feature-discard").
    pub const DISCARD: u8 = 5;
    /// `BLKIF_OP_INDIRECT`: the request is a [`super::BlkifRequestIndirect`]
    /// ("feature-max-indirect-segments").
    pub const INDIRECT: u8 = 6;
}

/// `BLKIF_RSP_*`: [`BlkifResponse::status`].
pub mod rsp {
    /// `BLKIF_RSP_OKAY`.
    pub const OKAY: i16 = 0;
    /// `BLKIF_RSP_ERROR`: failed for some reason (-EIO to the frontend).
    pub const ERROR: i16 = -1;
    /// `BLKIF_RSP_EOPNOTSUPP`: the operation is not supported.
    pub const EOPNOTSUPP: i16 = -2;
}

/// `BLKIF_DISCARD_SECURE`: bit of [`BlkifRequestDiscard::flag`], ignored unless the backend
/// publishes `discard-secure = 1`.
pub const DISCARD_SECURE: u8 = 1;

/// `VDISK_*`: bits of the backend's `info` node.
pub mod vdisk {
    /// `VDISK_CDROM`.
    pub const CDROM: u32 = 0x1;
    /// `VDISK_REMOVABLE`.
    pub const REMOVABLE: u32 = 0x2;
    /// `VDISK_READONLY`.
    pub const READONLY: u32 = 0x4;
}

/// A frontend's ring layout, from its `protocol` node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// "x86_64-abi" (`XEN_IO_PROTO_ABI_X86_64`), the native layout of this module.
    X86_64,
}

/// Why a `protocol` node was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// "x86_32-abi": a known layout Keel does not serve (see the module doc).
    Unsupported,
    /// Not a protocol name of `io/protocols.h`.
    Unknown,
}

impl Protocol {
    /// `XEN_IO_PROTO_ABI_X86_64`.
    pub const X86_64_NAME: &'static str = "x86_64-abi";
    /// `XEN_IO_PROTO_ABI_X86_32`.
    pub const X86_32_NAME: &'static str = "x86_32-abi";
    /// `XEN_IO_PROTO_ABI_ARM`.
    pub const ARM_NAME: &'static str = "arm-abi";

    /// The protocol a frontend asks for: `None` (no node) means the backend's native layout
    /// (blkif.h: "Default Value: XEN_IO_PROTO_ABI_NATIVE").
    pub fn parse(node: Option<&str>) -> Result<Protocol, ProtocolError> {
        match node {
            None | Some(Self::X86_64_NAME) => Ok(Protocol::X86_64),
            Some(Self::X86_32_NAME) | Some(Self::ARM_NAME) => Err(ProtocolError::Unsupported),
            Some(_) => Err(ProtocolError::Unknown),
        }
    }

    /// Bytes of one ring entry (the request/response union).
    pub const fn entry_size(self) -> usize {
        match self {
            Protocol::X86_64 => ENTRY_SIZE,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shared ring (io/ring.h).

/// The header of every `DEFINE_RING_TYPES` shared ring (`struct <name>_sring` up to `ring[]`):
/// the four free-running indexes, a private union (`pvt`, 4 bytes), and padding to 64 bytes.
/// The entries follow at [`SRING_HEADER_SIZE`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SringHeader {
    /// Next request slot the frontend fills (published after the request, write barrier).
    pub req_prod: u32,
    /// The frontend notifies when it moves `req_prod` past this (set by the backend).
    pub req_event: u32,
    /// Next response slot the backend fills.
    pub rsp_prod: u32,
    /// The backend notifies when it moves `rsp_prod` past this (set by the frontend).
    pub rsp_event: u32,
    /// `pvt`: netif's `smartpoll_active`, tapif's `msg`; unused by blkif.
    pub pvt: [u8; 4],
    /// `__pad[44]`.
    pub pad: [u8; 44],
}
layout!(SringHeader, 64; req_prod @ 0, req_event @ 4, rsp_prod @ 8, rsp_event @ 12,
    pvt @ 16, pad @ 20);

/// Where the ring's entries start (`offsetof(struct blkif_sring, ring)`).
pub const SRING_HEADER_SIZE: usize = size_of::<SringHeader>();

/// Offsets of the header's indexes, for code that reaches them through atomics.
pub mod sring {
    /// `req_prod`.
    pub const REQ_PROD: usize = 0;
    /// `req_event`.
    pub const REQ_EVENT: usize = 4;
    /// `rsp_prod`.
    pub const RSP_PROD: usize = 8;
    /// `rsp_event`.
    pub const RSP_EVENT: usize = 12;
}

/// `__RD32(x)`: `x` rounded down to a power of two, 0 for 0.
pub const fn round_down_pow2(x: usize) -> usize {
    if x == 0 {
        0
    } else {
        1 << x.ilog2()
    }
}

/// `__CONST_RING_SIZE`: the entries of a ring of `bytes` bytes whose entries are `entry`
/// bytes: as many as fit after the header, rounded down to a power of two (so an index is
/// masked with `entries - 1`). 0 when nothing fits.
pub const fn ring_entries(bytes: usize, entry: usize) -> usize {
    if bytes <= SRING_HEADER_SIZE || entry == 0 {
        return 0;
    }
    round_down_pow2((bytes - SRING_HEADER_SIZE) / entry)
}

/// Entries of a native blkif ring of `pages` pages (blkfront's `BLK_RING_SIZE`).
pub const fn blk_ring_entries(pages: usize) -> usize {
    ring_entries(pages.saturating_mul(PAGE_SIZE), ENTRY_SIZE)
}

const _: () = assert!(blk_ring_entries(1) == 32);
const _: () = assert!(blk_ring_entries(2) == 64);
const _: () = assert!(blk_ring_entries(16) == 512);
// The i386 layout's ring: (4096 - 64) / 108 = 37 -> 32 as well.
const _: () = assert!(ring_entries(PAGE_SIZE, ENTRY_SIZE_32) == 32);

// ---------------------------------------------------------------------------------------------
// x86_64 layouts.

/// `struct blkif_request_segment`: one granted page, and the sectors of it to transfer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// `gref`: the grant reference of the frontend's page.
    pub gref: u32,
    /// First 512-byte sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector of the page to transfer (inclusive, below 8).
    pub last_sect: u8,
    /// Padding (the struct is 4-aligned).
    pub pad: [u8; 2],
}
layout!(BlkifRequestSegment, 8; gref @ 0, first_sect @ 4, last_sect @ 5);

/// `struct blkif_request`: a read, write, barrier or flush (Linux's `blkif_request_rw`
/// inside the union), and the common head of every request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// [`op`].
    pub operation: u8,
    /// Segments in `seg` (1..=11; 0 only for a flush without data).
    pub nr_segments: u8,
    /// `blkif_vdev_t handle`: unused by backends with one device per ring.
    pub handle: u16,
    /// Padding before the 8-aligned `id`.
    pub pad: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The data pages, in disk order.
    pub seg: [BlkifRequestSegment; MAX_SEGMENTS_PER_REQUEST],
}
layout!(BlkifRequest, 112; operation @ 0, nr_segments @ 1, handle @ 2, id @ 8,
    sector_number @ 16, seg @ 24);

/// `struct blkif_request_discard`: the request when `operation` is [`op::DISCARD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// [`op::DISCARD`].
    pub operation: u8,
    /// [`DISCARD_SECURE`] or 0.
    pub flag: u8,
    /// As in [`BlkifRequest`].
    pub handle: u16,
    /// Padding.
    pub pad: u32,
    /// The frontend's tag.
    pub id: u64,
    /// First 512-byte sector to discard.
    pub sector_number: u64,
    /// 512-byte sectors to discard.
    pub nr_sectors: u64,
}
layout!(BlkifRequestDiscard, 32; operation @ 0, flag @ 1, handle @ 2, id @ 8,
    sector_number @ 16, nr_sectors @ 24);

/// `struct blkif_request_indirect`: the request when `operation` is [`op::INDIRECT`]; its
/// segments are [`BlkifRequestSegment`] arrays in the granted pages `indirect_grefs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// [`op::INDIRECT`].
    pub operation: u8,
    /// [`op::READ`] or [`op::WRITE`]; also the `operation` of the response (blkfront checks
    /// it: "response has wrong operation").
    pub indirect_op: u8,
    /// Segments in the indirect pages (16 bits here).
    pub nr_segments: u16,
    /// Padding.
    pub pad0: u32,
    /// The frontend's tag.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// As in [`BlkifRequest`].
    pub handle: u16,
    /// Padding.
    pub pad1: u16,
    /// The pages holding the segments, `indirect_pages(nr_segments)` of them.
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    /// Tail padding to 64 bytes.
    pub pad2: u32,
}
layout!(BlkifRequestIndirect, 64; operation @ 0, indirect_op @ 1, nr_segments @ 2, id @ 8,
    sector_number @ 16, handle @ 24, indirect_grefs @ 28);

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's operation (for an indirect request: its `indirect_op`).
    pub operation: u8,
    /// Padding.
    pub pad0: u8,
    /// [`rsp`].
    pub status: i16,
    /// Tail padding.
    pub pad1: u32,
}
layout!(BlkifResponse, 16; id @ 0, operation @ 8, status @ 10);

/// `sizeof(union blkif_sring_entry)`: the largest request, as every request shares a slot with
/// its response.
pub const ENTRY_SIZE: usize = size_of::<BlkifRequest>();
const _: () = assert!(size_of::<BlkifRequestDiscard>() <= ENTRY_SIZE);
const _: () = assert!(size_of::<BlkifRequestIndirect>() <= ENTRY_SIZE);
const _: () = assert!(size_of::<BlkifResponse>() <= ENTRY_SIZE);

// ---------------------------------------------------------------------------------------------
// i386 layouts ("x86_32-abi"): documented, not served.

/// `struct blkif_request` as an i386 frontend lays it out: `id` is 4-aligned.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkifRequest32 {
    /// As in [`BlkifRequest`].
    pub operation: u8,
    /// As in [`BlkifRequest`].
    pub nr_segments: u8,
    /// As in [`BlkifRequest`].
    pub handle: u16,
    /// As in [`BlkifRequest`].
    pub id: u64,
    /// As in [`BlkifRequest`].
    pub sector_number: u64,
    /// As in [`BlkifRequest`].
    pub seg: [BlkifRequestSegment; MAX_SEGMENTS_PER_REQUEST],
}
layout!(BlkifRequest32, 108; operation @ 0, nr_segments @ 1, handle @ 2, id @ 4,
    sector_number @ 12, seg @ 20);

/// `struct blkif_request_discard`, i386.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkifRequestDiscard32 {
    /// As in [`BlkifRequestDiscard`].
    pub operation: u8,
    /// As in [`BlkifRequestDiscard`].
    pub flag: u8,
    /// As in [`BlkifRequestDiscard`].
    pub handle: u16,
    /// As in [`BlkifRequestDiscard`].
    pub id: u64,
    /// As in [`BlkifRequestDiscard`].
    pub sector_number: u64,
    /// As in [`BlkifRequestDiscard`].
    pub nr_sectors: u64,
}
layout!(BlkifRequestDiscard32, 28; operation @ 0, flag @ 1, handle @ 2, id @ 4,
    sector_number @ 12, nr_sectors @ 20);

/// `struct blkif_request_indirect`, i386: the header's explicit `pad` keeps it 64 bytes.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkifRequestIndirect32 {
    /// As in [`BlkifRequestIndirect`].
    pub operation: u8,
    /// As in [`BlkifRequestIndirect`].
    pub indirect_op: u8,
    /// As in [`BlkifRequestIndirect`].
    pub nr_segments: u16,
    /// As in [`BlkifRequestIndirect`].
    pub id: u64,
    /// As in [`BlkifRequestIndirect`].
    pub sector_number: u64,
    /// As in [`BlkifRequestIndirect`].
    pub handle: u16,
    /// Padding.
    pub pad1: u16,
    /// As in [`BlkifRequestIndirect`].
    pub indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    /// `uint64_t pad` ("Make it 64 byte aligned on i386").
    pub pad: u64,
}
layout!(BlkifRequestIndirect32, 64; operation @ 0, indirect_op @ 1, nr_segments @ 2, id @ 4,
    sector_number @ 12, handle @ 20, indirect_grefs @ 24, pad @ 56);

/// `struct blkif_response`, i386.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlkifResponse32 {
    /// As in [`BlkifResponse`].
    pub id: u64,
    /// As in [`BlkifResponse`].
    pub operation: u8,
    /// Padding.
    pub pad0: u8,
    /// As in [`BlkifResponse`].
    pub status: i16,
}
layout!(BlkifResponse32, 12; id @ 0, operation @ 8, status @ 10);

/// The i386 ring entry.
pub const ENTRY_SIZE_32: usize = size_of::<BlkifRequest32>();

// ---------------------------------------------------------------------------------------------
// Encoding and decoding (x86_64).

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    get(b, off).map(u16::from_le_bytes)
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    get(b, off).map(u32::from_le_bytes)
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    get(b, off).map(u64::from_le_bytes)
}

/// Writes `v` at `off` if it fits (callers write fixed-size arrays at constant offsets).
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(dst) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        dst.copy_from_slice(v);
    }
}

impl BlkifRequestSegment {
    /// Size in guest memory.
    pub const SIZE: usize = 8;

    /// Reads a segment.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: [u8; Self::SIZE] = get(b, 0)?;
        Some(BlkifRequestSegment {
            gref: rd_u32(&b, 0)?,
            first_sect: b[4],
            last_sect: b[5],
            pad: [0; 2],
        })
    }

    /// The segment as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.gref.to_le_bytes());
        b[4] = self.first_sect;
        b[5] = self.last_sect;
        b
    }
}

impl BlkifRequest {
    /// Size in guest memory.
    pub const SIZE: usize = 112;

    /// Reads the read/write form of a request (also the operation and id of any request).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        let mut seg = [BlkifRequestSegment::default(); MAX_SEGMENTS_PER_REQUEST];
        for (i, s) in seg.iter_mut().enumerate() {
            *s = BlkifRequestSegment::from_bytes(b.get(24 + i * BlkifRequestSegment::SIZE..)?)?;
        }
        Some(BlkifRequest {
            operation: b[0],
            nr_segments: b[1],
            handle: rd_u16(b, 2)?,
            pad: 0,
            id: rd_u64(b, 8)?,
            sector_number: rd_u64(b, 16)?,
            seg,
        })
    }

    /// The request as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0] = self.operation;
        b[1] = self.nr_segments;
        put(&mut b, 2, &self.handle.to_le_bytes());
        put(&mut b, 8, &self.id.to_le_bytes());
        put(&mut b, 16, &self.sector_number.to_le_bytes());
        for (i, s) in self.seg.iter().enumerate() {
            put(&mut b, 24 + i * BlkifRequestSegment::SIZE, &s.to_bytes());
        }
        b
    }
}

impl BlkifRequestDiscard {
    /// Size in guest memory.
    pub const SIZE: usize = 32;

    /// Reads a discard request.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(BlkifRequestDiscard {
            operation: b[0],
            flag: b[1],
            handle: rd_u16(b, 2)?,
            pad: 0,
            id: rd_u64(b, 8)?,
            sector_number: rd_u64(b, 16)?,
            nr_sectors: rd_u64(b, 24)?,
        })
    }

    /// The request as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0] = self.operation;
        b[1] = self.flag;
        put(&mut b, 2, &self.handle.to_le_bytes());
        put(&mut b, 8, &self.id.to_le_bytes());
        put(&mut b, 16, &self.sector_number.to_le_bytes());
        put(&mut b, 24, &self.nr_sectors.to_le_bytes());
        b
    }
}

impl BlkifRequestIndirect {
    /// Size in guest memory.
    pub const SIZE: usize = 64;

    /// Reads an indirect request.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        let mut indirect_grefs = [0; MAX_INDIRECT_PAGES_PER_REQUEST];
        for (i, g) in indirect_grefs.iter_mut().enumerate() {
            *g = rd_u32(b, 28 + 4 * i)?;
        }
        Some(BlkifRequestIndirect {
            operation: b[0],
            indirect_op: b[1],
            nr_segments: rd_u16(b, 2)?,
            pad0: 0,
            id: rd_u64(b, 8)?,
            sector_number: rd_u64(b, 16)?,
            handle: rd_u16(b, 24)?,
            pad1: 0,
            indirect_grefs,
            pad2: 0,
        })
    }

    /// The request as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0] = self.operation;
        b[1] = self.indirect_op;
        put(&mut b, 2, &self.nr_segments.to_le_bytes());
        put(&mut b, 8, &self.id.to_le_bytes());
        put(&mut b, 16, &self.sector_number.to_le_bytes());
        put(&mut b, 24, &self.handle.to_le_bytes());
        for (i, g) in self.indirect_grefs.iter().enumerate() {
            put(&mut b, 28 + 4 * i, &g.to_le_bytes());
        }
        b
    }
}

impl BlkifResponse {
    /// Size in guest memory.
    pub const SIZE: usize = 16;

    /// Reads a response (for frontends).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(BlkifResponse {
            id: rd_u64(b, 0)?,
            operation: b[8],
            pad0: 0,
            status: rd_u16(b, 10)? as i16,
            pad1: 0,
        })
    }

    /// The response as guest memory holds it (padding zeroed: nothing of the backend leaks).
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.id.to_le_bytes());
        b[8] = self.operation;
        put(&mut b, 10, &self.status.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkif_ring_sizes_follow_ring_h() {
        // (pages * 4096 - 64) / 112, rounded down to a power of two.
        assert_eq!(blk_ring_entries(1), 32);
        assert_eq!(blk_ring_entries(4), 128);
        assert_eq!(blk_ring_entries(8), 256);
        assert_eq!(blk_ring_entries(0), 0);
        assert_eq!(ring_entries(64, 16), 0);
        assert_eq!(ring_entries(64 + 3 * 16, 16), 2);
        assert_eq!(round_down_pow2(1), 1);
        assert_eq!(round_down_pow2(36), 32);
        assert_eq!(round_down_pow2(usize::MAX), 1 << (usize::BITS - 1));
    }

    #[test]
    fn blkif_indirect_limits() {
        assert_eq!(SEGMENTS_PER_INDIRECT_PAGE, 512);
        assert_eq!(MAX_INDIRECT_SEGMENTS, 4096);
        assert_eq!(indirect_pages(0), 0);
        assert_eq!(indirect_pages(1), 1);
        assert_eq!(indirect_pages(512), 1);
        assert_eq!(indirect_pages(513), 2);
        assert_eq!(
            indirect_pages(MAX_INDIRECT_SEGMENTS),
            MAX_INDIRECT_PAGES_PER_REQUEST
        );
        assert_eq!(SECTORS_PER_PAGE, 8);
    }

    #[test]
    fn blkif_request_round_trips_at_the_header_offsets() {
        let mut r = BlkifRequest {
            operation: op::WRITE,
            nr_segments: 3,
            handle: 0x1234,
            id: 0x0102_0304_0506_0708,
            sector_number: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        r.seg[0] = BlkifRequestSegment {
            gref: 0xaabb_ccdd,
            first_sect: 1,
            last_sect: 7,
            pad: [0; 2],
        };
        r.seg[10] = BlkifRequestSegment {
            gref: 9,
            first_sect: 2,
            last_sect: 3,
            pad: [0; 2],
        };
        let b = r.to_bytes();
        assert_eq!(b[0], op::WRITE);
        assert_eq!(b[1], 3);
        assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..28], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!((b[28], b[29]), (1, 7));
        assert_eq!(&b[104..108], &9u32.to_le_bytes());
        assert_eq!(BlkifRequest::from_bytes(&b), Some(r));
        assert_eq!(BlkifRequest::from_bytes(&b[..111]), None);
    }

    #[test]
    fn blkif_discard_and_indirect_round_trip() {
        let d = BlkifRequestDiscard {
            operation: op::DISCARD,
            flag: DISCARD_SECURE,
            handle: 5,
            id: 77,
            sector_number: 1 << 40,
            nr_sectors: 4096,
            ..Default::default()
        };
        let b = d.to_bytes();
        assert_eq!(&b[24..32], &4096u64.to_le_bytes());
        assert_eq!(BlkifRequestDiscard::from_bytes(&b), Some(d));

        let i = BlkifRequestIndirect {
            operation: op::INDIRECT,
            indirect_op: op::READ,
            nr_segments: 600,
            id: 3,
            sector_number: 8,
            handle: 1,
            indirect_grefs: [10, 11, 0, 0, 0, 0, 0, 0xffff_ffff],
            ..Default::default()
        };
        let b = i.to_bytes();
        assert_eq!(&b[2..4], &600u16.to_le_bytes());
        assert_eq!(&b[28..32], &10u32.to_le_bytes());
        assert_eq!(&b[56..60], &0xffff_ffffu32.to_le_bytes());
        assert_eq!(BlkifRequestIndirect::from_bytes(&b), Some(i));
    }

    #[test]
    fn blkif_response_encoding() {
        let r = BlkifResponse {
            id: u64::MAX - 1,
            operation: op::READ,
            status: rsp::EOPNOTSUPP,
            ..Default::default()
        };
        let b = r.to_bytes();
        assert_eq!(&b[10..12], &(-2i16).to_le_bytes());
        assert_eq!(b[9], 0);
        assert_eq!(BlkifResponse::from_bytes(&b), Some(r));
    }

    #[test]
    fn blkif_protocols() {
        assert_eq!(Protocol::parse(None), Ok(Protocol::X86_64));
        assert_eq!(Protocol::parse(Some("x86_64-abi")), Ok(Protocol::X86_64));
        assert_eq!(
            Protocol::parse(Some("x86_32-abi")),
            Err(ProtocolError::Unsupported)
        );
        assert_eq!(
            Protocol::parse(Some("arm-abi")),
            Err(ProtocolError::Unsupported)
        );
        assert_eq!(Protocol::parse(Some("x86_64")), Err(ProtocolError::Unknown));
        assert_eq!(Protocol::X86_64.entry_size(), 112);
    }
}
