//! The PV network device protocol ("netif"): the request and response layouts a DomU's
//! xen-netfront puts on its two shared rings (transmit and receive), the extra-info slots that
//! ride along with a packet, and the flag and status numbers.
//!
//! Facts come from Xen's `xen/include/public/io/netif.h` (with its later `HASH` and `XDP` extra
//! types, as Linux's `include/xen/interface/io/netif.h` has them), checked against Linux's
//! `drivers/net/xen-netfront.c` (what the frontend sends and checks) and
//! `drivers/net/xen-netback/` (what a backend refuses); the code is Keel's own. Names follow
//! [`super::blkif`]: a C prefix becomes a module (`NETTXF_csum_blank` is [`txf::CSUM_BLANK`],
//! `NETIF_RSP_NULL` is [`rsp::NULL`], `XEN_NETIF_EXTRA_TYPE_GSO` is [`extra_type::GSO`]) and
//! struct names are in Rust case (`struct netif_tx_request` is [`NetifTxRequest`]).
//!
//! # The two rings
//! Both are ordinary `DEFINE_RING_TYPES` rings of one page each ([`super::blkif::sring`] for
//! the header), with one event channel for both unless split event channels are negotiated.
//!
//! - Transmit (guest to backend), entries of [`TX_ENTRY_SIZE`] = 12 bytes: a packet is a first
//!   [`NetifTxRequest`] whose `size` is the length of the *whole* packet, then, when its flags
//!   have [`txf::EXTRA_INFO`], one or more [`NetifExtraInfo`] slots (each with
//!   [`EXTRA_FLAG_MORE`] when another follows), then, when the first request had
//!   [`txf::MORE_DATA`], continuation requests (each with `MORE_DATA` but the last) whose
//!   `size` is their own length. The first slot's own data is `size` minus the continuations'.
//!   Each request (first and continuations) is answered by a [`NetifTxResponse`] with its `id`;
//!   each extra slot by a response with status [`rsp::NULL`].
//! - Receive (backend to guest), entries of [`RX_ENTRY_SIZE`] = 8 bytes: the frontend posts
//!   [`NetifRxRequest`]s (an id and a page granted writable); the backend copies a packet into
//!   one or more of those pages and answers each with a [`NetifRxResponse`] whose `status` is
//!   the bytes it holds (or a negative [`rsp`]) and whose flags have [`rxf::MORE_DATA`] when
//!   the packet goes on in the next slot. Extra-info slots ([`rxf::EXTRA_INFO`] on the first
//!   response) follow the *first* data slot, each taking the place of a response. Linux's
//!   netfront finds its pages by ring position rather than by `id`, so every response must go
//!   in the slot of the request it consumed, in order.
//!
//! # Decoding
//! As in [`super::blkif`]: entries are copied out of guest memory first, then read from the
//! copy with explicit little-endian loads (`from_bytes`, `None` when the buffer is too short);
//! `to_bytes` encodes (responses for backends, requests for frontends in tests and fuzzers).

use core::mem::{offset_of, size_of};

use super::blkif::{ring_entries, PAGE_SIZE};

/// Asserts a type's size and field offsets at compile time: `layout!(T, size; field @ off, ...)`.
macro_rules! layout {
    ($t:ty, $size:expr; $($f:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $f) == $off);)*
    };
}

/// `XEN_NETIF_NR_SLOTS_MIN`: the data slots a packet may use that every backend must accept
/// (the historical `MAX_SKB_FRAGS` of Linux); netfront accepts up to this many receive slots
/// per packet (one more for a short first slot).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;

/// `XEN_NETBK_LEGACY_SLOTS_MAX` (Linux netback): the most data slots a transmitted packet may
/// use; a packet with more is dropped.
pub const XEN_NETBK_LEGACY_SLOTS_MAX: usize = XEN_NETIF_NR_SLOTS_MIN;

/// `XEN_NETIF_MAX_TX_SIZE`: the largest packet the transmit format can describe (`size` is 16
/// bits).
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// `NETTXF_*`: [`NetifTxRequest::flags`] (only the first request of a packet carries the
/// checksum and extra-info flags; continuations carry only [`txf::MORE_DATA`]).
pub mod txf {
    /// `NETTXF_csum_blank`: the transport checksum is to be filled in (checksum offload).
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// `NETTXF_data_validated`: the data has been checked against its protocol checksum.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// `NETTXF_more_data`: the packet continues in the next request.
    pub const MORE_DATA: u16 = 1 << 2;
    /// `NETTXF_extra_info`: extra-info slots follow this (first) request.
    pub const EXTRA_INFO: u16 = 1 << 3;
}

/// `NETRXF_*`: [`NetifRxResponse::flags`].
pub mod rxf {
    /// `NETRXF_data_validated`: the data has been checked against its protocol checksum.
    pub const DATA_VALIDATED: u16 = 1 << 0;
    /// `NETRXF_csum_blank`: the transport checksum is blank (the packet was checksum-offloaded
    /// locally; its data is sound).
    pub const CSUM_BLANK: u16 = 1 << 1;
    /// `NETRXF_more_data`: the packet continues in the next response.
    pub const MORE_DATA: u16 = 1 << 2;
    /// `NETRXF_extra_info`: extra-info slots follow this (first) response.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// `NETRXF_gso_prefix`: deprecated (a GSO descriptor before the packet); never sent.
    pub const GSO_PREFIX: u16 = 1 << 4;
}

/// `XEN_NETIF_EXTRA_TYPE_*`: [`NetifExtraInfo::ty`].
pub mod extra_type {
    /// `XEN_NETIF_EXTRA_TYPE_NONE`: never valid.
    pub const NONE: u8 = 0;
    /// `XEN_NETIF_EXTRA_TYPE_GSO`: [`super::NetifExtraGso`].
    pub const GSO: u8 = 1;
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_ADD`: [`super::NetifExtraMcast`] (multicast control).
    pub const MCAST_ADD: u8 = 2;
    /// `XEN_NETIF_EXTRA_TYPE_MCAST_DEL`: [`super::NetifExtraMcast`].
    pub const MCAST_DEL: u8 = 3;
    /// `XEN_NETIF_EXTRA_TYPE_HASH`: [`super::NetifExtraHash`].
    pub const HASH: u8 = 4;
    /// `XEN_NETIF_EXTRA_TYPE_XDP`: [`super::NetifExtraXdp`] (receive side only).
    pub const XDP: u8 = 5;
    /// `XEN_NETIF_EXTRA_TYPE_MAX`: every valid type is below it.
    pub const MAX: u8 = 6;
}

/// `XEN_NETIF_EXTRA_FLAG_MORE`: bit of [`NetifExtraInfo::flags`]: another extra slot follows.
pub const EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_GSO_TYPE_*`: [`NetifExtraGso::ty`].
pub mod gso_type {
    /// `XEN_NETIF_GSO_TYPE_NONE`.
    pub const NONE: u8 = 0;
    /// `XEN_NETIF_GSO_TYPE_TCPV4`: TCP over IPv4 ("feature-gso-tcpv4").
    pub const TCPV4: u8 = 1;
    /// `XEN_NETIF_GSO_TYPE_TCPV6`: TCP over IPv6 ("feature-gso-tcpv6").
    pub const TCPV6: u8 = 2;
}

/// `NETIF_RSP_*`: [`NetifTxResponse::status`], and [`NetifRxResponse::status`] when negative.
pub mod rsp {
    /// `NETIF_RSP_DROPPED`: the packet was well-formed but dropped.
    pub const DROPPED: i16 = -2;
    /// `NETIF_RSP_ERROR`: the request was bad (or its data could not be copied).
    pub const ERROR: i16 = -1;
    /// `NETIF_RSP_OKAY`.
    pub const OKAY: i16 = 0;
    /// `NETIF_RSP_NULL`: the answer to an extra-info slot (no request behind it).
    pub const NULL: i16 = 1;
}

// ---------------------------------------------------------------------------------------------
// Layouts.

/// `struct netif_tx_request`: one slot of a transmitted packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxRequest {
    /// The grant reference of the page holding the data (granted read-only by netfront).
    pub gref: u32,
    /// Offset of the data in the page.
    pub offset: u16,
    /// [`txf`].
    pub flags: u16,
    /// The frontend's tag, echoed in the response.
    pub id: u16,
    /// First request: the whole packet's length; continuation: this slot's length.
    pub size: u16,
}
layout!(NetifTxRequest, 12; gref @ 0, offset @ 4, flags @ 6, id @ 8, size @ 10);

/// `struct netif_tx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifTxResponse {
    /// The request's `id` (meaningless for [`rsp::NULL`]).
    pub id: u16,
    /// [`rsp`].
    pub status: i16,
}
layout!(NetifTxResponse, 4; id @ 0, status @ 2);

/// `struct netif_rx_request`: a page the frontend offers for received data.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxRequest {
    /// The frontend's tag, echoed in the response.
    pub id: u16,
    /// Padding.
    pub pad: u16,
    /// The grant reference of the page (granted writable).
    pub gref: u32,
}
layout!(NetifRxRequest, 8; id @ 0, pad @ 2, gref @ 4);

/// `struct netif_rx_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifRxResponse {
    /// The request's `id`.
    pub id: u16,
    /// Offset of the data in the page.
    pub offset: u16,
    /// [`rxf`].
    pub flags: u16,
    /// Bytes of data in this slot, or a negative [`rsp`].
    pub status: i16,
}
layout!(NetifRxResponse, 8; id @ 0, offset @ 2, flags @ 4, status @ 6);

/// `u.gso` of `struct netif_extra_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraGso {
    /// The segment size (the TCP MSS); never 0.
    pub size: u16,
    /// [`gso_type`].
    pub ty: u8,
    /// Padding.
    pub pad: u8,
    /// `XEN_NETIF_GSO_FEAT_*`: none are defined; 0.
    pub features: u16,
}
layout!(NetifExtraGso, 6; size @ 0, ty @ 2, pad @ 3, features @ 4);

/// `u.mcast` of `struct netif_extra_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraMcast {
    /// The multicast MAC address to add or remove.
    pub addr: [u8; 6],
}
layout!(NetifExtraMcast, 6; addr @ 0);

/// `u.hash` of `struct netif_extra_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraHash {
    /// `_XEN_NETIF_CTRL_HASH_TYPE_*`.
    pub ty: u8,
    /// `XEN_NETIF_CTRL_HASH_ALGORITHM_*`.
    pub algorithm: u8,
    /// The hash value, little-endian.
    pub value: [u8; 4],
}
layout!(NetifExtraHash, 6; ty @ 0, algorithm @ 1, value @ 2);

/// `u.xdp` of `struct netif_extra_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraXdp {
    /// Headroom the backend left before the data of the first slot.
    pub headroom: u16,
    /// Padding.
    pub pad: [u16; 2],
}
layout!(NetifExtraXdp, 6; headroom @ 0, pad @ 2);

/// `struct netif_extra_info`: an extra-info slot. 8 bytes, so that it fits an 8-byte receive
/// slot; in a 12-byte transmit slot its last 4 bytes are padding. The union `u` is kept as
/// its raw bytes and read through the typed accessors.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetifExtraInfo {
    /// [`extra_type`].
    pub ty: u8,
    /// [`EXTRA_FLAG_MORE`].
    pub flags: u8,
    /// The union: [`NetifExtraGso`], [`NetifExtraMcast`], [`NetifExtraHash`] or
    /// [`NetifExtraXdp`], as `ty` says.
    pub u: [u8; 6],
}
layout!(NetifExtraInfo, 8; ty @ 0, flags @ 1, u @ 2);

/// Bytes of one transmit ring entry: `sizeof(union netif_tx_sring_entry)`, the request.
pub const TX_ENTRY_SIZE: usize = size_of::<NetifTxRequest>();
const _: () = assert!(size_of::<NetifTxResponse>() <= TX_ENTRY_SIZE);
const _: () = assert!(size_of::<NetifExtraInfo>() <= TX_ENTRY_SIZE);
const _: () = assert!(TX_ENTRY_SIZE == 12);

/// Bytes of one receive ring entry: `sizeof(union netif_rx_sring_entry)`.
pub const RX_ENTRY_SIZE: usize = size_of::<NetifRxResponse>();
const _: () = assert!(size_of::<NetifRxRequest>() <= RX_ENTRY_SIZE);
const _: () = assert!(size_of::<NetifExtraInfo>() <= RX_ENTRY_SIZE);
const _: () = assert!(RX_ENTRY_SIZE == 8);

/// `NET_TX_RING_SIZE`: entries of a one-page transmit ring.
pub const NET_TX_RING_SIZE: usize = ring_entries(PAGE_SIZE, TX_ENTRY_SIZE);
/// `NET_RX_RING_SIZE`: entries of a one-page receive ring.
pub const NET_RX_RING_SIZE: usize = ring_entries(PAGE_SIZE, RX_ENTRY_SIZE);
// (4096 - 64) / 12 = 336 and (4096 - 64) / 8 = 504, both rounded down to 256.
const _: () = assert!(NET_TX_RING_SIZE == 256);
const _: () = assert!(NET_RX_RING_SIZE == 256);

// ---------------------------------------------------------------------------------------------
// Encoding and decoding.

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    get(b, off).map(u16::from_le_bytes)
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    get(b, off).map(u32::from_le_bytes)
}

/// Writes `v` at `off` if it fits (callers write fixed-size arrays at constant offsets).
fn put(b: &mut [u8], off: usize, v: &[u8]) {
    if let Some(dst) = off.checked_add(v.len()).and_then(|end| b.get_mut(off..end)) {
        dst.copy_from_slice(v);
    }
}

impl NetifTxRequest {
    /// Size in guest memory.
    pub const SIZE: usize = 12;

    /// Reads a transmit request.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(NetifTxRequest {
            gref: rd_u32(b, 0)?,
            offset: rd_u16(b, 4)?,
            flags: rd_u16(b, 6)?,
            id: rd_u16(b, 8)?,
            size: rd_u16(b, 10)?,
        })
    }

    /// The request as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.gref.to_le_bytes());
        put(&mut b, 4, &self.offset.to_le_bytes());
        put(&mut b, 6, &self.flags.to_le_bytes());
        put(&mut b, 8, &self.id.to_le_bytes());
        put(&mut b, 10, &self.size.to_le_bytes());
        b
    }
}

impl NetifTxResponse {
    /// Size in guest memory.
    pub const SIZE: usize = 4;

    /// Reads a transmit response (for frontends).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        Some(NetifTxResponse {
            id: rd_u16(b, 0)?,
            status: rd_u16(b, 2)? as i16,
        })
    }

    /// The response as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.id.to_le_bytes());
        put(&mut b, 2, &self.status.to_le_bytes());
        b
    }
}

impl NetifRxRequest {
    /// Size in guest memory.
    pub const SIZE: usize = 8;

    /// Reads a receive request.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(NetifRxRequest {
            id: rd_u16(b, 0)?,
            pad: 0,
            gref: rd_u32(b, 4)?,
        })
    }

    /// The request as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.id.to_le_bytes());
        put(&mut b, 4, &self.gref.to_le_bytes());
        b
    }
}

impl NetifRxResponse {
    /// Size in guest memory.
    pub const SIZE: usize = 8;

    /// Reads a receive response (for frontends).
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(NetifRxResponse {
            id: rd_u16(b, 0)?,
            offset: rd_u16(b, 2)?,
            flags: rd_u16(b, 4)?,
            status: rd_u16(b, 6)? as i16,
        })
    }

    /// The response as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.id.to_le_bytes());
        put(&mut b, 2, &self.offset.to_le_bytes());
        put(&mut b, 4, &self.flags.to_le_bytes());
        put(&mut b, 6, &self.status.to_le_bytes());
        b
    }
}

impl NetifExtraGso {
    /// Reads the union's bytes as a GSO descriptor.
    pub fn from_bytes(u: &[u8; 6]) -> Self {
        NetifExtraGso {
            size: u16::from_le_bytes([u[0], u[1]]),
            ty: u[2],
            pad: u[3],
            features: u16::from_le_bytes([u[4], u[5]]),
        }
    }

    /// The descriptor as the union's bytes.
    pub fn to_bytes(&self) -> [u8; 6] {
        let mut b = [0; 6];
        put(&mut b, 0, &self.size.to_le_bytes());
        b[2] = self.ty;
        b[3] = self.pad;
        put(&mut b, 4, &self.features.to_le_bytes());
        b
    }
}

impl NetifExtraHash {
    /// Reads the union's bytes as a hash descriptor.
    pub fn from_bytes(u: &[u8; 6]) -> Self {
        NetifExtraHash {
            ty: u[0],
            algorithm: u[1],
            value: [u[2], u[3], u[4], u[5]],
        }
    }

    /// The descriptor as the union's bytes.
    pub fn to_bytes(&self) -> [u8; 6] {
        let v = self.value;
        [self.ty, self.algorithm, v[0], v[1], v[2], v[3]]
    }
}

impl NetifExtraXdp {
    /// Reads the union's bytes as an XDP descriptor.
    pub fn from_bytes(u: &[u8; 6]) -> Self {
        NetifExtraXdp {
            headroom: u16::from_le_bytes([u[0], u[1]]),
            pad: [
                u16::from_le_bytes([u[2], u[3]]),
                u16::from_le_bytes([u[4], u[5]]),
            ],
        }
    }

    /// The descriptor as the union's bytes.
    pub fn to_bytes(&self) -> [u8; 6] {
        let mut b = [0; 6];
        put(&mut b, 0, &self.headroom.to_le_bytes());
        put(&mut b, 2, &self.pad[0].to_le_bytes());
        put(&mut b, 4, &self.pad[1].to_le_bytes());
        b
    }
}

impl NetifExtraInfo {
    /// Size in guest memory (a transmit slot holds 4 more bytes of padding).
    pub const SIZE: usize = 8;

    /// Reads an extra-info slot.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(NetifExtraInfo {
            ty: b[0],
            flags: b[1],
            u: get(b, 2)?,
        })
    }

    /// The slot as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        b[0] = self.ty;
        b[1] = self.flags;
        put(&mut b, 2, &self.u);
        b
    }

    /// A GSO slot ([`extra_type::GSO`]).
    pub fn new_gso(gso: NetifExtraGso, flags: u8) -> Self {
        NetifExtraInfo {
            ty: extra_type::GSO,
            flags,
            u: gso.to_bytes(),
        }
    }

    /// Whether [`EXTRA_FLAG_MORE`] is set: another extra slot follows.
    pub fn more(&self) -> bool {
        self.flags & EXTRA_FLAG_MORE != 0
    }

    /// `u.gso`, whatever `ty` says.
    pub fn gso(&self) -> NetifExtraGso {
        NetifExtraGso::from_bytes(&self.u)
    }

    /// `u.mcast`, whatever `ty` says.
    pub fn mcast(&self) -> NetifExtraMcast {
        NetifExtraMcast { addr: self.u }
    }

    /// `u.hash`, whatever `ty` says.
    pub fn hash(&self) -> NetifExtraHash {
        NetifExtraHash::from_bytes(&self.u)
    }

    /// `u.xdp`, whatever `ty` says.
    pub fn xdp(&self) -> NetifExtraXdp {
        NetifExtraXdp::from_bytes(&self.u)
    }

    /// Whether `ty` is a defined type (`NONE < ty < MAX`).
    pub fn known_type(&self) -> bool {
        self.ty != extra_type::NONE && self.ty < extra_type::MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netif_ring_sizes_and_limits() {
        assert_eq!(TX_ENTRY_SIZE, 12);
        assert_eq!(RX_ENTRY_SIZE, 8);
        assert_eq!(NET_TX_RING_SIZE, 256);
        assert_eq!(NET_RX_RING_SIZE, 256);
        assert_eq!(XEN_NETIF_MAX_TX_SIZE, 65535);
        assert_eq!(XEN_NETBK_LEGACY_SLOTS_MAX, 18);
        assert_eq!(
            (
                txf::CSUM_BLANK,
                txf::DATA_VALIDATED,
                txf::MORE_DATA,
                txf::EXTRA_INFO
            ),
            (1, 2, 4, 8)
        );
        assert_eq!(
            (
                rxf::DATA_VALIDATED,
                rxf::CSUM_BLANK,
                rxf::MORE_DATA,
                rxf::EXTRA_INFO,
                rxf::GSO_PREFIX
            ),
            (1, 2, 4, 8, 16)
        );
        assert_eq!(
            (rsp::DROPPED, rsp::ERROR, rsp::OKAY, rsp::NULL),
            (-2, -1, 0, 1)
        );
        assert_eq!(
            (
                extra_type::GSO,
                extra_type::MCAST_ADD,
                extra_type::MCAST_DEL,
                extra_type::HASH,
                extra_type::XDP
            ),
            (1, 2, 3, 4, 5)
        );
        assert_eq!((gso_type::TCPV4, gso_type::TCPV6), (1, 2));
    }

    #[test]
    fn netif_tx_request_round_trips_at_the_header_offsets() {
        let r = NetifTxRequest {
            gref: 0xaabb_ccdd,
            offset: 0x0102,
            flags: txf::MORE_DATA | txf::CSUM_BLANK,
            id: 0x1234,
            size: 0xfffe,
        };
        let b = r.to_bytes();
        assert_eq!(&b[0..4], &0xaabb_ccddu32.to_le_bytes());
        assert_eq!(&b[4..6], &[0x02, 0x01]);
        assert_eq!(&b[6..8], &[5, 0]);
        assert_eq!(&b[8..10], &[0x34, 0x12]);
        assert_eq!(&b[10..12], &[0xfe, 0xff]);
        assert_eq!(NetifTxRequest::from_bytes(&b), Some(r));
        assert_eq!(NetifTxRequest::from_bytes(&b[..11]), None);
    }

    #[test]
    fn netif_responses_encode_negative_statuses() {
        let t = NetifTxResponse {
            id: 7,
            status: rsp::DROPPED,
        };
        let b = t.to_bytes();
        assert_eq!(b, [7, 0, 0xfe, 0xff]);
        assert_eq!(NetifTxResponse::from_bytes(&b), Some(t));
        assert_eq!(NetifTxResponse::from_bytes(&b[..3]), None);

        let r = NetifRxResponse {
            id: 0x0201,
            offset: 0,
            flags: rxf::MORE_DATA | rxf::CSUM_BLANK,
            status: 4096,
        };
        let b = r.to_bytes();
        assert_eq!(b, [1, 2, 0, 0, 6, 0, 0, 0x10]);
        assert_eq!(NetifRxResponse::from_bytes(&b), Some(r));
        let e = NetifRxResponse {
            status: rsp::ERROR,
            ..r
        };
        assert_eq!(&e.to_bytes()[6..8], &[0xff, 0xff]);
    }

    #[test]
    fn netif_rx_request_skips_its_padding() {
        let b = [0x05, 0x00, 0xee, 0xee, 0x78, 0x56, 0x34, 0x12];
        let r = NetifRxRequest::from_bytes(&b).unwrap();
        assert_eq!((r.id, r.pad, r.gref), (5, 0, 0x1234_5678));
        assert_eq!(r.to_bytes(), [5, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(NetifRxRequest::from_bytes(&b[..7]), None);
    }

    #[test]
    fn netif_extra_info_views_of_the_union() {
        let gso = NetifExtraGso {
            size: 1448,
            ty: gso_type::TCPV6,
            pad: 0,
            features: 0,
        };
        let e = NetifExtraInfo::new_gso(gso, EXTRA_FLAG_MORE);
        let b = e.to_bytes();
        assert_eq!(b, [1, 1, 0xa8, 0x05, 2, 0, 0, 0]);
        let back = NetifExtraInfo::from_bytes(&b).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.gso(), gso);
        assert!(back.more() && back.known_type());

        let m = NetifExtraInfo::from_bytes(&[2, 0, 1, 0, 0x5e, 0, 0, 0xfb, 0xaa]).unwrap();
        assert_eq!(m.mcast().addr, [1, 0, 0x5e, 0, 0, 0xfb]);
        assert!(!m.more());
        let h = NetifExtraInfo::from_bytes(&[4, 0, 3, 1, 0x78, 0x56, 0x34, 0x12]).unwrap();
        assert_eq!(
            h.hash(),
            NetifExtraHash {
                ty: 3,
                algorithm: 1,
                value: [0x78, 0x56, 0x34, 0x12]
            }
        );
        assert_eq!(h.hash().to_bytes(), h.u);
        let x = NetifExtraInfo::from_bytes(&[5, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert_eq!(x.xdp().headroom, 256);
        assert_eq!(x.xdp().to_bytes(), x.u);
        for ty in [extra_type::NONE, extra_type::MAX, 0xff] {
            assert!(!NetifExtraInfo { ty, ..e }.known_type());
        }
        assert_eq!(NetifExtraInfo::from_bytes(&b[..7]), None);
    }
}
