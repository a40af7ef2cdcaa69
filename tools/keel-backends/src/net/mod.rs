//! The PV network backend (Xen's netback, in Dom0 userspace): serves a DomU's xen-netfront
//! from a host network interface, a TAP device.
//!
//! - [`PacketIo`]: the host side of a vif, one Ethernet frame at a time with a virtio-net
//!   header ([`VnetHdr`]) before it, as a TAP device opened with
//!   `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` reads and writes them (keel-domd implements it;
//!   [`crate::testing::FakePacketIo`] is an in-memory one);
//! - [`xenstore`]: the backend's XenStore keys for a vif, and the frontend's keys read into a
//!   checked [`xenstore::NetFrontendConfig`] (netif.h, and what Linux netfront writes);
//! - [`NetQueue`]: one queue's data path, its transmit and its receive ring: packets the
//!   frontend transmits are assembled from their slots, checked, copied out with one batched
//!   grant copy, given a virtio-net header (checksum offload and GSO from the netif flags and
//!   extra slots, the checksum position found by [`packet`]) and sent to the host; frames from
//!   the host are copied into the pages the frontend posted, with the netif flags and GSO
//!   extra slot their header calls for; responses are published and the frontend notified
//!   only when it asked. [`NetQueue::run`] is its blocking loop;
//! - [`shaper`]: the vif's transmit rate limit (`rate=`), shared by its queues.
//!
//! "Transmit" (tx) and "receive" (rx) are the frontend's: tx is guest to host.
//!
//! Protocol facts: Xen's `io/netif.h` ([`keel_core::xen::netif`]); behaviour checked against
//! Linux's `drivers/net/xen-netback/` (what is refused, the order of receive slots) and
//! `drivers/net/xen-netfront.c` (what the frontend sends and checks).

pub mod packet;
mod queue;
mod rx;
pub mod shaper;
mod tx;
pub mod xenstore;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use crate::ring::RingBroken;

pub use queue::NetQueue;

/// Bytes of the virtio-net header before each frame (`struct virtio_net_hdr`, the TAP's
/// default `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// The host side of a vif: a TAP device opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
/// (vnet header of [`VNET_HDR_LEN`] bytes, little-endian), non-blocking.
pub trait PacketIo: Send + Sync {
    /// Sends one frame to the host, after the virtio-net header `vnet_hdr`. A full or unready
    /// device may fail (`WouldBlock` and the like): the frame is then dropped and counted.
    fn send(&self, vnet_hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()>;

    /// Receives one frame from the host into `buf`: its virtio-net header, then the frame;
    /// the bytes written. `Ok(None)` when nothing is waiting. A frame longer than `buf` may
    /// be truncated (a TAP read is).
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// An fd that polls readable while frames wait for [`PacketIo::recv`].
    fn raw_fd(&self) -> RawFd;
}

/// `VIRTIO_NET_HDR_*`: [`VnetHdr::flags`] and [`VnetHdr::gso_type`].
pub mod vnet {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is to be
    /// completed over everything from `csum_start`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums have been validated.
    pub const F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub const GSO_TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_UDP`.
    pub const GSO_UDP: u8 = 3;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub const GSO_TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_ECN`: bit of `gso_type`, the TCP ECN bits are in use.
    pub const GSO_ECN: u8 = 0x80;
}

/// `struct virtio_net_hdr`, the header before each frame on the TAP device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`vnet`]`::F_*`.
    pub flags: u8,
    /// [`vnet`]`::GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (Ethernet, IP, TCP) before the GSO payload.
    pub hdr_len: u16,
    /// GSO segment payload size (the MSS).
    pub gso_size: u16,
    /// Where checksumming starts (the transport header).
    pub csum_start: u16,
    /// Where the checksum is stored, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header (little-endian fields).
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        }
    }

    /// The header as the device takes it.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// What the frontend negotiated, for a queue ([`xenstore::NetFrontendConfig::options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetOptions {
    /// The vif's MTU: a GSO frame from the host that cannot go as GSO is dropped when its
    /// payload is larger.
    pub mtu: usize,
    /// `feature-sg`: frames of more than one page may be received.
    pub sg: bool,
    /// `feature-gso-tcpv4` or `feature-gso-tcpv6`: TCP GSO frames may be received (with
    /// `sg`); which kinds the host sends is the TAP's offload setting.
    pub gso: bool,
    /// IPv4 frames with a blank checksum may be received (no `feature-no-csum-offload`).
    pub csum_ipv4: bool,
    /// `feature-ipv6-csum-offload`: IPv6 frames with a blank checksum may be received.
    pub csum_ipv6: bool,
    /// `feature-rx-notify`: the frontend notifies when it posts receive requests; without,
    /// [`NetQueue::run`] polls for them while a frame waits.
    pub rx_notify: bool,
}

impl Default for NetOptions {
    /// A 1500-byte MTU, one page per frame, no GSO, IPv4 checksum offload only (netif.h's
    /// defaults for absent keys), and receive notifications (every frontend in use asks for
    /// them).
    fn default() -> NetOptions {
        NetOptions {
            mtu: 1500,
            sg: false,
            gso: false,
            csum_ipv4: true,
            csum_ipv6: false,
            rx_notify: true,
        }
    }
}

/// Counters of a queue. Transmit is the frontend's (guest to host), receive host to guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets the frontend transmitted that were sent to the host.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Transmitted packets refused as malformed, or whose data could not be copied (answered
    /// `NETIF_RSP_ERROR`).
    pub tx_errors: u64,
    /// Well-formed transmitted packets dropped: headers that cannot be parsed for the offload
    /// asked for, or the host refused them (answered `NETIF_RSP_DROPPED`).
    pub tx_dropped: u64,
    /// Frames from the host delivered to the frontend.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames from the host dropped before reaching the ring (too big for what the frontend
    /// negotiated, malformed, truncated).
    pub rx_dropped: u64,
    /// Frames put on the ring of which a slot could not be copied (answered
    /// `NETIF_RSP_ERROR` there).
    pub rx_errors: u64,
    /// Notifications asked of `notify`.
    pub notifications: u64,
    /// Notifications from the frontend: signals of the kick eventfd [`NetQueue::run`] read.
    pub kicks: u64,
    /// `GrantAccess::copy` calls.
    pub grant_copy_calls: u64,
}

/// Why a queue stopped.
#[derive(Debug)]
pub enum NetError {
    /// The frontend broke a ring's indexes: the queue is not served any more.
    Ring(RingBroken),
    /// A system call the queue needs failed (poll, the packet device).
    Io(io::Error),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Ring(b) => write!(f, "net queue: {b}"),
            NetError::Io(e) => write!(f, "net queue: {e}"),
        }
    }
}

impl std::error::Error for NetError {}

impl From<RingBroken> for NetError {
    fn from(b: RingBroken) -> NetError {
        NetError::Ring(b)
    }
}

impl From<io::Error> for NetError {
    fn from(e: io::Error) -> NetError {
        NetError::Io(e)
    }
}
