//! The host side of a vif: a TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`), named as Xen names its backend interfaces (`vif<domid>.<devid>`, or the
//! config's `vifname=`), configured with the interface ioctls Linux's `ip` and `brctl` use.
//!
//! Every frame crosses with the 10-byte `virtio_net_hdr` first (the vnet header carries the
//! checksum and segmentation offloads both ways). The device is not persistent: it goes away
//! with its last file descriptor, so a backend that dies leaves no interface behind, and with
//! it every route through it.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

pub use crate::net::VNET_HDR_LEN;

// linux/if_tun.h and linux/sockios.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_TUN_EXCL: libc::c_short = -0x8000; // 0x8000 as a C short
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFMTU: libc::c_ulong = 0x8922;
const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
const SIOCGIFINDEX: libc::c_ulong = 0x8933;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;
const SIOCADDRT: libc::c_ulong = 0x890b;
const ARPHRD_ETHER: libc::c_ushort = 1;

/// `struct ifreq`: a name and a 24-byte union, read through the field each call uses.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "'{name}' is not an interface name (1 to {} characters, no '/' or space)",
                    libc::IFNAMSIZ - 1
                ),
            ));
        }
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        for (d, s) in r.name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        Ok(r)
    }

    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }
}

/// An ioctl taking a `struct ifreq`.
fn ifreq_ioctl(fd: RawFd, request: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    // SAFETY: `r` is a live, properly sized `struct ifreq` the kernel reads and may write.
    if unsafe { libc::ioctl(fd, request as _, r as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A `struct sockaddr_in` for `addr`, as 16 bytes.
fn sockaddr_in(addr: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..2].copy_from_slice(&(libc::AF_INET as libc::sa_family_t).to_ne_bytes());
    b[4..8].copy_from_slice(&addr.octets());
    b
}

fn write_sockaddr(sa: &mut libc::sockaddr, addr: Ipv4Addr) {
    let b = sockaddr_in(addr);
    sa.sa_family = libc::AF_INET as libc::sa_family_t;
    for (d, s) in sa.sa_data.iter_mut().zip(&b[2..]) {
        *d = *s as libc::c_char;
    }
}

/// An IPv4 address of Dom0's: its interface, the address, its prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddr {
    /// The interface's name.
    pub dev: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// Its network's prefix length.
    pub prefix: u32,
}

/// The IPv4 addresses of Dom0's interfaces that are up.
pub fn ipv4_addresses() -> io::Result<Vec<HostAddr>> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut p = list;
    while !p.is_null() {
        // SAFETY: `p` is an element of the list getifaddrs returned, not yet freed.
        let a = unsafe { &*p };
        p = a.ifa_next;
        if a.ifa_addr.is_null() || a.ifa_flags & libc::IFF_UP as u32 == 0 {
            continue;
        }
        // SAFETY: a non-null `ifa_addr` points to a sockaddr of the family it names.
        if unsafe { (*a.ifa_addr).sa_family } != libc::AF_INET as libc::sa_family_t {
            continue;
        }
        // SAFETY: an AF_INET address (and its netmask, when there is one) is a
        // `sockaddr_in`; the name is a C string.
        let (addr, mask, dev) = unsafe {
            let sin = &*(a.ifa_addr as *const libc::sockaddr_in);
            let mask = if a.ifa_netmask.is_null() {
                u32::MAX
            } else {
                u32::from_be(
                    (*(a.ifa_netmask as *const libc::sockaddr_in))
                        .sin_addr
                        .s_addr,
                )
            };
            (
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                mask,
                std::ffi::CStr::from_ptr(a.ifa_name)
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        found.push(HostAddr {
            dev,
            addr,
            prefix: mask.leading_ones(),
        });
    }
    // SAFETY: the list getifaddrs returned, not used after.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The IPv4 address Dom0 is known by on `dev`, else on the interface of its default route,
/// else on its first interface that is up and not loopback or a vif (Xen's vif-route takes
/// `gatewaydev`'s, eth0 by default, and fails without one).
pub fn host_address(dev: Option<&str>) -> io::Result<(String, Ipv4Addr)> {
    let default_dev = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
            })
        });
    let found: Vec<(String, Ipv4Addr)> = ipv4_addresses()?
        .into_iter()
        .map(|h| (h.dev, h.addr))
        .collect();
    let pick = |want: &str| found.iter().find(|(n, _)| n == want).cloned();
    let chosen = match dev {
        Some(d) => pick(d),
        None => default_dev.as_deref().and_then(pick).or_else(|| {
            found
                .iter()
                .find(|(n, ip)| !ip.is_loopback() && !n.starts_with("vif"))
                .cloned()
        }),
    };
    chosen.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            match dev {
                Some(d) => format!("{d} has no IPv4 address"),
                None => "Dom0 has no IPv4 address to route from (no default route, no interface up with one)".into(),
            },
        )
    })
}

/// A new socket (close-on-exec) of `domain`, `kind` and `protocol`.
pub(crate) fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket for the interface ioctls.
fn control_socket() -> io::Result<OwnedFd> {
    socket(libc::AF_INET, libc::SOCK_DGRAM, 0)
}

/// A TAP device this process holds.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates the TAP device `name` (refused when an interface of that name exists: a TAP
    /// someone else holds, or any other kind), non-blocking, with 10-byte vnet headers. The
    /// device is multi-queue: this is its first queue, [`Tap::open_queue`] adds more.
    pub fn create(name: &str) -> io::Result<Tap> {
        if Self::index_of(name).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("an interface named {name} exists already"),
            ));
        }
        // Exclusive: a device of that name made meanwhile is not joined (EBUSY).
        Self::attach(name, IFF_TUN_EXCL)
            .map_err(|e| io::Error::new(e.kind(), format!("creating TAP {name}: {e}")))
    }

    /// Another queue of this device: frames written to it go to the host as the first
    /// queue's do; the host spreads its frames over the queues by flow. It detaches when
    /// dropped; the device stays while its first queue is held.
    pub fn open_queue(&self) -> io::Result<Tap> {
        Self::attach(&self.name, 0).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("adding a queue to TAP {}: {e}", self.name),
            )
        })
    }

    /// Opens a queue of the multi-queue TAP `name`, made when there is none, with `extra`
    /// flags.
    fn attach(name: &str, extra: libc::c_short) -> io::Result<Tap> {
        let mut r = IfReq::new(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
        r.set_short(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE | extra);
        ifreq_ioctl(file.as_raw_fd(), TUNSETIFF, &mut r)?;
        let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, a live local.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index of `name`.
    pub fn index_of(name: &str) -> io::Result<i32> {
        let s = control_socket()?;
        let mut r = IfReq::new(name)?;
        ifreq_ioctl(s.as_raw_fd(), SIOCGIFINDEX, &mut r)?;
        Ok(r.int())
    }

    /// Which offloads frames from the host may carry (partial checksums, TCP segmentation
    /// for IPv4 and IPv6): only what the guest's frontend takes.
    pub fn set_offload(&self, csum: bool, tso4: bool, tso6: bool) -> io::Result<()> {
        let mut flags: libc::c_uint = 0;
        if csum {
            flags |= TUN_F_CSUM;
            if tso4 {
                flags |= TUN_F_TSO4;
            }
            if tso6 {
                flags |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets the interface's MTU.
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let s = control_socket()?;
        let mut r = IfReq::new(&self.name)?;
        r.set_int(mtu as libc::c_int);
        ifreq_ioctl(s.as_raw_fd(), SIOCSIFMTU, &mut r)
    }

    /// Sets the interface's MAC address (Xen gives backend vifs fe:ff:ff:ff:ff:ff).
    pub fn set_mac(&self, mac: [u8; 6]) -> io::Result<()> {
        let s = control_socket()?;
        let mut r = IfReq::new(&self.name)?;
        // struct sockaddr: sa_family, then the address bytes.
        r.data[..2].copy_from_slice(&ARPHRD_ETHER.to_ne_bytes());
        r.data[2..8].copy_from_slice(&mac);
        ifreq_ioctl(s.as_raw_fd(), SIOCSIFHWADDR, &mut r)
    }

    /// Brings the interface up.
    pub fn up(&self) -> io::Result<()> {
        let s = control_socket()?;
        let mut r = IfReq::new(&self.name)?;
        ifreq_ioctl(s.as_raw_fd(), SIOCGIFFLAGS, &mut r)?;
        let flags = r.short() | libc::IFF_UP as libc::c_short;
        r.set_short(flags);
        ifreq_ioctl(s.as_raw_fd(), SIOCSIFFLAGS, &mut r)
    }

    /// Adds the interface to the Linux bridge `bridge` (which must exist, as for Xen's
    /// vif-bridge script).
    pub fn join_bridge(&self, bridge: &str) -> io::Result<()> {
        let index = Self::index_of(&self.name)?;
        Self::index_of(bridge).map_err(|e| {
            io::Error::new(e.kind(), format!("bridge {bridge}: {e} (create it first)"))
        })?;
        let s = control_socket()?;
        let mut r = IfReq::new(bridge)?;
        r.set_int(index);
        ifreq_ioctl(s.as_raw_fd(), SIOCBRADDIF, &mut r).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("adding {} to bridge {bridge}: {e}", self.name),
            )
        })
    }

    /// Gives the interface the IPv4 address `addr` as a /32 (vif-route gives the vif Dom0's
    /// own address, so that the guest's ARP for its gateway is answered on the link).
    pub fn set_host_address(&self, addr: Ipv4Addr) -> io::Result<()> {
        let s = control_socket()?;
        let mut r = IfReq::new(&self.name)?;
        r.data[..16].copy_from_slice(&sockaddr_in(addr));
        ifreq_ioctl(s.as_raw_fd(), SIOCSIFADDR, &mut r)?;
        let mut r = IfReq::new(&self.name)?;
        r.data[..16].copy_from_slice(&sockaddr_in(Ipv4Addr::BROADCAST));
        ifreq_ioctl(s.as_raw_fd(), SIOCSIFNETMASK, &mut r)
    }

    /// Routes `dest` (a host) through this interface, from `src`... as far as the legacy
    /// route ioctl can say it: a host route on the device. It goes with the device.
    pub fn add_host_route(&self, dest: Ipv4Addr) -> io::Result<()> {
        let s = control_socket()?;
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, c) in name.iter_mut().zip(self.name.bytes()) {
            *d = c as libc::c_char;
        }
        // SAFETY: all-zero is a valid `rtentry` (null pointers, zero numbers).
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        write_sockaddr(&mut rt.rt_dst, dest);
        write_sockaddr(&mut rt.rt_genmask, Ipv4Addr::BROADCAST);
        write_sockaddr(&mut rt.rt_gateway, Ipv4Addr::UNSPECIFIED);
        rt.rt_flags = (libc::RTF_UP | libc::RTF_HOST) as libc::c_ushort;
        rt.rt_dev = name.as_mut_ptr();
        // SAFETY: SIOCADDRT reads the `rtentry` and the device name it points to, both live
        // locals for the call.
        if unsafe { libc::ioctl(s.as_raw_fd(), SIOCADDRT as _, &mut rt as *mut libc::rtentry) } < 0
        {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("a route to {dest} through {}: {e}", self.name),
            ));
        }
        Ok(())
    }

    /// Sets one of the interface's IPv4 sysctls (`/proc/sys/net/ipv4/conf/<name>/<key>`),
    /// such as `proxy_arp`.
    pub fn set_ipv4_conf(&self, key: &str, value: &str) -> io::Result<()> {
        std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{}/{key}", self.name),
            value,
        )
    }

    /// Writes one frame, `vnet_hdr` first. `WouldBlock` when the host's queue is full.
    pub fn send(&self, vnet_hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()> {
        let n = (&self.file).write_vectored(&[IoSlice::new(vnet_hdr), IoSlice::new(frame)])?;
        if n != VNET_HDR_LEN + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "TAP {} took {n} of {} bytes",
                    self.name,
                    VNET_HDR_LEN + frame.len()
                ),
            ));
        }
        Ok(())
    }

    /// Reads one frame (vnet header first) into `buf`; `None` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The descriptor to poll for frames.
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl crate::net::PacketIo for Tap {
    fn send(&self, vnet_hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<()> {
        Tap::send(self, vnet_hdr, frame)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Tap::recv(self, buf)
    }

    fn raw_fd(&self) -> RawFd {
        Tap::raw_fd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_any_ioctl() {
        for bad in ["", "a/b", "with space", "sixteen-chars-xx"] {
            let e = IfReq::new(bad).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(IfReq::new("vif3.0").is_ok());
        assert!(IfReq::new("fifteen-chars-x").is_ok());
    }

    #[test]
    fn a_tap_device_carries_frames_both_ways_when_the_host_allows_it() {
        // Needs CAP_NET_ADMIN and /dev/net/tun; elsewhere there is nothing to check.
        let tap = match Tap::create("keeltest0") {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        assert_eq!(tap.name(), "keeltest0");
        assert!(Tap::index_of("keeltest0").unwrap() > 0);
        let again = Tap::create("keeltest0").unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        tap.set_mtu(1400).unwrap();
        tap.set_mac([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
        tap.set_offload(true, true, true).unwrap();
        // Down: nothing arrives; a frame written is dropped by the stack, not refused.
        let mut buf = [0u8; 2048];
        assert_eq!(tap.recv(&mut buf).unwrap(), None);
        // A second queue comes and goes; the device stays with the first.
        let q = tap.open_queue().unwrap();
        assert_eq!(q.name(), "keeltest0");
        assert_eq!(q.recv(&mut buf).unwrap(), None);
        drop(q);
        assert!(Tap::index_of("keeltest0").is_ok());
        drop(tap);
        assert!(
            Tap::index_of("keeltest0").is_err(),
            "the device goes with its fd"
        );
    }
}
