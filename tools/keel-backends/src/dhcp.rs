//! A NAT vif's DHCP server: it gives the guest behind the vif the one address the vif was
//! set up with, as Xen's vif-nat does through a host entry in dhcpd.conf (fixed address,
//! router, host name). [`answer`] is the whole protocol (RFC 2131 messages, RFC 2132
//! options) over bytes the guest sent, which are hostile: a message that is not a well-formed
//! BOOTREQUEST from an Ethernet client gets no answer. [`DhcpServer`] serves it on the vif's
//! TAP device: it reads the guest's datagrams to port 67 from a packet socket on the TAP
//! (before Dom0's IP stack, whose NAT rules drop the unconfigured client's broadcast from
//! 0.0.0.0, so that no other DHCP service of Dom0 hears the guest) and answers through a UDP
//! socket on port 67 bound to that device alone, whose broadcasts leave through the TAP,
//! that is, towards the guest.
use crate::tap::socket;
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    thread::JoinHandle,
};

/// The BOOTP header's length, up to the options' magic cookie (RFC 2131, figure 1).
const HEADER_LEN: usize = 236;
/// RFC 2131 3: the options field begins with 99.130.83.99.
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// RFC 2131 2: a BOOTP relay or client expects a message of at least 300 bytes.
const MIN_REPLY: usize = 300;
/// Name servers given (resolv.conf's MAXNS) and the host name's bytes sent at most.
const MAX_DNS: usize = 3;
const MAX_HOST_NAME: usize = 63;
/// The options' bytes after the cookie that every client takes: a message of 576 bytes with
/// its IP and UDP headers (RFC 2131 2), which is also what busybox's udhcpc reads.
const OPTIONS_MIN: usize = 576 - BEFORE_OPTIONS;
/// A message's bytes before its options: the IP and UDP headers, BOOTP's and the cookie.
const BEFORE_OPTIONS: usize = 28 + HEADER_LEN + 4;
/// The largest message a client's option 57 may ask for: one Ethernet frame's IP datagram.
const MAX_MESSAGE: usize = 1500;
/// The server's and the client's UDP ports.
pub const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

/// Option codes (RFC 2132).
mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOST_NAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const MAX_SIZE: u8 = 57;
    pub const CLIENT_ID: u8 = 61;
    pub const END: u8 = 255;
}

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// A client looks for servers.
    Discover = 1,
    /// A server's offer.
    Offer = 2,
    /// A client asks for (or confirms) an address.
    Request = 3,
    /// A client found the address in use.
    Decline = 4,
    /// A server grants the request.
    Ack = 5,
    /// A server refuses it.
    Nak = 6,
    /// A client gives its address back.
    Release = 7,
    /// A client with an address asks for the other settings.
    Inform = 8,
}

impl MessageType {
    fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        [Discover, Offer, Request, Decline, Ack, Nak, Release, Inform]
            .into_iter()
            .find(|t| *t as u8 == v)
    }
}

/// What the guest gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its network's prefix length (8 to 30).
    pub prefix: u32,
    /// Its router, Dom0's end of the vif, which is also the server's identifier.
    pub gateway: Ipv4Addr,
    /// Name servers (none: the option is left out).
    pub dns: Vec<Ipv4Addr>,
    /// Its host name (none: left out); at most 255 bytes are sent.
    pub host_name: Option<String>,
    /// The lease's length in seconds; the address never changes, so a day.
    pub seconds: u32,
}

/// A client's message, as far as the server reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Its type.
    pub kind: MessageType,
    /// The transaction id, echoed.
    pub xid: [u8; 4],
    /// The flags (bit 15: answer by broadcast), echoed.
    pub flags: [u8; 2],
    /// The client's address when it has one.
    pub ciaddr: Ipv4Addr,
    /// A relay's address (none here, but echoed).
    pub giaddr: Ipv4Addr,
    /// The client's hardware address field, echoed.
    pub chaddr: &'a [u8; 16],
    /// Option 50.
    pub requested: Option<Ipv4Addr>,
    /// Option 54: the server the client chose.
    pub server_id: Option<Ipv4Addr>,
    /// Option 57: the largest message, IP and UDP headers included, the client takes.
    pub max_size: Option<u16>,
    /// Option 61: the client's identifier (at least 2 bytes), echoed (RFC 6842).
    pub client_id: Option<&'a [u8]>,
}

fn ipv4(b: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = b.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// Reads a client's message: a BOOTREQUEST (op 1) for Ethernet (htype 1, hlen 6) with the
/// magic cookie and a message type. Options are read up to END or the end of the bytes; one
/// whose length runs past the end makes the message malformed. `None` for anything else.
pub fn parse(msg: &[u8]) -> Option<Request<'_>> {
    let header = msg.get(..HEADER_LEN)?;
    if header[0] != 1 || header[1] != 1 || header[2] != 6 {
        return None;
    }
    if msg.get(HEADER_LEN..HEADER_LEN + 4)? != COOKIE {
        return None;
    }
    let (mut kind, mut requested, mut server_id) = (None, None, None);
    let (mut max_size, mut client_id) = (None, None);
    let mut rest = &msg[HEADER_LEN + 4..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            opt::PAD => {
                rest = tail;
                continue;
            }
            opt::END => break,
            _ => {}
        }
        let (&len, tail) = tail.split_first()?;
        let value = tail.get(..usize::from(len))?;
        rest = &tail[usize::from(len)..];
        match code {
            opt::MESSAGE_TYPE if len == 1 => kind = MessageType::from_u8(value[0]),
            opt::REQUESTED_IP => requested = ipv4(value),
            opt::SERVER_ID => server_id = ipv4(value),
            opt::MAX_SIZE if len == 2 => max_size = Some(u16::from_be_bytes([value[0], value[1]])),
            opt::CLIENT_ID if len >= 2 => client_id = Some(value),
            _ => {}
        }
    }
    Some(Request {
        kind: kind?,
        xid: header[4..8].try_into().ok()?,
        flags: header[10..12].try_into().ok()?,
        ciaddr: ipv4(&header[12..16])?,
        giaddr: ipv4(&header[24..28])?,
        chaddr: header[28..44].try_into().ok()?,
        requested,
        server_id,
        max_size,
        client_id,
    })
}

/// The bytes of options after the cookie, END included, that a reply to `req` may carry:
/// what every client takes, or more up to an Ethernet frame when its option 57 says so.
pub fn options_room(req: &Request<'_>) -> usize {
    let asked = req.max_size.map_or(0, usize::from).min(MAX_MESSAGE);
    OPTIONS_MIN.max(asked.saturating_sub(BEFORE_OPTIONS))
}

/// The server's answer to one message: its bytes and where they go.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// Its type.
    pub kind: MessageType,
    /// The UDP payload.
    pub bytes: Vec<u8>,
    /// The client's address when it has one and keeps it (a renewal, an INFORM), else the
    /// broadcast address: the guest has no address yet, and Dom0 no ARP entry for it.
    pub to: Ipv4Addr,
}

/// What the server answers to `msg` (RFC 2131 4.3): DISCOVER gets an OFFER of the lease;
/// REQUEST an ACK when it asks for the lease's address (option 50, or ciaddr when renewing)
/// and a NAK when it asks for another, nothing when it chose another server; INFORM an ACK
/// without an address; anything else (DECLINE, RELEASE, server messages, malformed bytes)
/// nothing. A client identifier is echoed in every reply (RFC 6842); the options fit
/// [`options_room`], name servers and host name left out when they would not.
pub fn answer(msg: &[u8], lease: &Lease) -> Option<Answer> {
    let req = parse(msg)?;
    let kind = match req.kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if req.server_id.is_some_and(|s| s != lease.gateway) {
                return None;
            }
            let wanted = req.requested.unwrap_or(req.ciaddr);
            if wanted == lease.addr {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        // Only from the guest's own address: the answer goes there.
        MessageType::Inform if req.ciaddr == lease.addr => MessageType::Ack,
        _ => return None,
    };
    let inform = req.kind == MessageType::Inform;
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = 2; // BOOTREPLY
    out[1] = 1;
    out[2] = 6;
    out[4..8].copy_from_slice(&req.xid);
    out[10..12].copy_from_slice(&req.flags);
    if inform {
        out[12..16].copy_from_slice(&req.ciaddr.octets());
    } else if kind != MessageType::Nak {
        out[16..20].copy_from_slice(&lease.addr.octets());
    }
    out[24..28].copy_from_slice(&req.giaddr.octets());
    out[28..44].copy_from_slice(req.chaddr);
    out.extend_from_slice(&COOKIE);
    // Every option that must go fits the least room: 27 bytes and a client identifier of
    // at most 257 in 308. Those that may go, go while they leave room for END.
    let end = HEADER_LEN + 4 + options_room(&req) - 1;
    let mut option = |code: u8, value: &[u8]| {
        if out.len() + 2 + value.len() <= end {
            out.push(code);
            out.push(value.len() as u8);
            out.extend_from_slice(value);
        }
    };
    option(opt::MESSAGE_TYPE, &[kind as u8]);
    option(opt::SERVER_ID, &lease.gateway.octets());
    if let Some(id) = req.client_id {
        option(opt::CLIENT_ID, id);
    }
    if kind != MessageType::Nak {
        if !inform {
            option(opt::LEASE_TIME, &lease.seconds.to_be_bytes());
        }
        let mask = u32::MAX.checked_shl(32 - lease.prefix.min(32)).unwrap_or(0);
        option(opt::SUBNET_MASK, &mask.to_be_bytes());
        option(opt::ROUTER, &lease.gateway.octets());
        let dns: Vec<u8> = lease
            .dns
            .iter()
            .take(MAX_DNS)
            .flat_map(|a| a.octets())
            .collect();
        if !dns.is_empty() {
            option(opt::DNS, &dns);
        }
        if let Some(name) = lease.host_name.as_deref().filter(|n| !n.is_empty()) {
            let name = name.as_bytes();
            option(opt::HOST_NAME, &name[..name.len().min(MAX_HOST_NAME)]);
        }
    }
    out.push(opt::END);
    if out.len() < MIN_REPLY {
        out.resize(MIN_REPLY, 0);
    }
    // A client that is renewing (ciaddr set, as RFC 2131 4.4.5) or INFORMs has its address
    // and answers ARP: unicast to it; a NAK and everything else go by broadcast. Only the
    // lease's address is ever a destination: ciaddr is the guest's to write, and another
    // (the gateway's, Dom0's own) would send the reply into Dom0.
    let to = if req.ciaddr == lease.addr && kind != MessageType::Nak {
        req.ciaddr
    } else {
        Ipv4Addr::BROADCAST
    };
    Some(Answer {
        kind,
        bytes: out,
        to,
    })
}

/// The name servers in a resolv.conf's text that a guest behind NAT can use: IPv4, not
/// loopback (a resolver on Dom0's loopback is not the guest's).
pub fn name_servers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback() && !a.is_unspecified())
        .collect()
}

/// The UDP payload of an IPv4 datagram to the server's port, as a packet socket gives it
/// (from the IP header on): IPv4 with a header of 20 to 60 bytes, its total length within the
/// bytes (an Ethernet frame may pad them), not a fragment, UDP to port 67 whose length fits.
/// The checksum is not checked: a guest's netfront may leave it to the backend (offload).
pub fn server_datagram(ip: &[u8]) -> Option<&[u8]> {
    let (&vihl, _) = ip.split_first()?;
    let ihl = usize::from(vihl & 0xf) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes(ip.get(2..4)?.try_into().ok()?));
    let frag = u16::from_be_bytes(ip.get(6..8)?.try_into().ok()?);
    if *ip.get(9)? != 17 || frag & 0x3fff != 0 || total < ihl {
        return None;
    }
    let udp = ip.get(ihl..total)?;
    if udp.get(2..4)? != SERVER_PORT.to_be_bytes() {
        return None;
    }
    let len = usize::from(u16::from_be_bytes(udp.get(4..6)?.try_into().ok()?));
    udp.get(8..len.max(8))
}

/// The DHCP server of one vif: a thread answering on its device until dropped.
pub struct DhcpServer {
    wake: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

/// A classic BPF program (`struct sock_filter`s).
fn attach_filter(fd: &OwnedFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr().cast_mut(),
    };
    // The program `prog` points to lives through the call.
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

/// Sets a socket option to `value` (an int, a struct or bytes), passed by pointer and size.
fn setsockopt<T: ?Sized>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of_val(value)` bytes from a live reference (the kernel
    // copies them; Rust never reads a struct's padding as bytes).
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of_val(value) as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Binds a socket to `addr`, a `sockaddr_*` of its family.
fn bind<T>(fd: &OwnedFd, addr: &T) -> io::Result<()> {
    // SAFETY: bind reads `size_of::<T>()` bytes from a live reference.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `linux/if_packet.h`: a packet socket skips the frames the device sends.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// What the server reads: the guest's IPv4 datagrams to UDP port 67, from the vif's packet tap
/// (ahead of Dom0's IP stack and its netfilter: the NAT vif's anti-spoof rule drops the
/// unconfigured client's broadcast from 0.0.0.0 there, so that no other DHCP service of Dom0
/// sees it). A BPF filter keeps the rest of the guest's traffic out of the socket.
fn packet_socket(ifindex: i32) -> io::Result<OwnedFd> {
    // Protocol 0: nothing is received before the filter is in place and the bind below.
    let fd = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?;
    let insn = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // From the IP header: UDP (protocol 17), not a fragment, to port 67.
    attach_filter(
        &fd,
        &[
            insn(0x30, 0, 0, 9),      // ldb [9]
            insn(0x15, 0, 6, 17),     // jeq #17, next, drop
            insn(0x28, 0, 0, 6),      // ldh [6]
            insn(0x45, 4, 0, 0x3fff), // jset #0x3fff, drop, next
            insn(0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf)
            insn(0x48, 0, 0, 2),      // ldh [x+2]
            insn(0x15, 0, 1, 67),     // jeq #67, accept, drop
            insn(0x06, 0, 0, 0xffff), // accept: ret #65535
            insn(0x06, 0, 0, 0),      // drop: ret #0
        ],
    )?;
    // Best effort (Linux 4.20): what Dom0 sends the guest is not looked at at all.
    let _ = setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32);
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    addr.sll_ifindex = ifindex;
    bind(&fd, &addr)?;
    Ok(fd)
}

/// What the server sends through: a UDP socket on port 67 that sends only through `dev` and
/// may broadcast (towards the guest: out of the TAP). It receives nothing (a filter drops
/// all): the packet socket reads.
fn send_socket(dev: &str) -> io::Result<UdpSocket> {
    let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    attach_filter(
        &fd,
        &[libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }],
    )?;
    // Dom0 may serve DHCP itself on other interfaces: port 67 is shared, per device.
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &1i32)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("binding a socket to {dev}: {e}")))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: SERVER_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    bind(&fd, &addr)
        .map_err(|e| io::Error::new(e.kind(), format!("port {SERVER_PORT} on {dev}: {e}")))?;
    Ok(UdpSocket::from(fd))
}

impl DhcpServer {
    /// Starts answering DHCP on device `dev` (a NAT vif's TAP, up, with the lease's gateway as
    /// its address) with `lease`; `log` gets a line when the guest first takes the lease.
    pub fn start(
        dev: &str,
        ifindex: i32,
        lease: Lease,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> io::Result<DhcpServer> {
        let packets = packet_socket(ifindex)?;
        let sender = send_socket(dev)?;
        // SAFETY: eventfd(2) has no memory preconditions; the result is checked.
        let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if wake < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let wake = Arc::new(unsafe { OwnedFd::from_raw_fd(wake) });
        let (w, name) = (wake.clone(), dev.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{dev}"))
            .spawn(move || serve(&packets, &sender, &w, &lease, &name, &*log))?;
        Ok(DhcpServer {
            wake,
            thread: Some(thread),
        })
    }
}

fn serve(
    packets: &OwnedFd,
    sender: &UdpSocket,
    wake: &OwnedFd,
    lease: &Lease,
    dev: &str,
    log: &dyn Fn(&str),
) {
    let mut buf = [0u8; 1500];
    let mut acked = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: packets.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll reads and writes the two live pollfds given.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log(&format!("{dev}: DHCP server stopped: {e}"));
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        // SAFETY: recv writes at most `buf.len()` bytes into the live buffer.
        let n = unsafe {
            libc::recv(
                packets.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            log(&format!("{dev}: DHCP server stopped: {e}"));
            return;
        }
        let Some(a) = buf
            .get(..n as usize)
            .and_then(server_datagram)
            .and_then(|m| answer(m, lease))
        else {
            continue;
        };
        if let Err(e) = sender.send_to(&a.bytes, SocketAddrV4::new(a.to, CLIENT_PORT)) {
            log(&format!("{dev}: DHCP {:?} not sent: {e}", a.kind));
        } else if a.kind == MessageType::Ack && !acked {
            // Once: a guest renews every half lease.
            acked = true;
            log(&format!(
                "{dev}: DHCP gave the guest {}/{}",
                lease.addr, lease.prefix
            ));
        }
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write reads 8 bytes from a live array; the eventfd is open while `self.wake`
        // lives.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            addr: Ipv4Addr::new(10, 0, 3, 1),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 0, 3, 128),
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            host_name: Some("web".into()),
            seconds: 86400,
        }
    }

    /// A client's message of type `kind` with the given options (code, value).
    fn request(kind: u8, ciaddr: [u8; 4], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m[..4].copy_from_slice(&[1, 1, 6, 0]);
        m[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        m[10] = 0x80;
        m[12..16].copy_from_slice(&ciaddr);
        m[28..34].copy_from_slice(&[0x00, 0x16, 0x3e, 1, 2, 3]);
        m.extend_from_slice(&COOKIE);
        m.extend_from_slice(&[opt::MESSAGE_TYPE, 1, kind]);
        for (code, value) in options {
            m.push(*code);
            m.push(value.len() as u8);
            m.extend_from_slice(value);
        }
        m.push(opt::END);
        m
    }

    /// The options of a reply, by code.
    fn options(reply: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = &reply[HEADER_LEN + 4..];
        while let Some((&code, tail)) = rest.split_first() {
            if code == opt::END {
                break;
            }
            let len = usize::from(tail[0]);
            out.push((code, tail[1..1 + len].to_vec()));
            rest = &tail[1 + len..];
        }
        out
    }

    fn option(reply: &[u8], code: u8) -> Option<Vec<u8>> {
        options(reply)
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    #[test]
    fn discover_gets_an_offer_of_the_lease() {
        let a = answer(&request(1, [0; 4], &[]), &lease()).expect("an answer");
        assert_eq!(a.kind, MessageType::Offer);
        assert_eq!(a.to, Ipv4Addr::BROADCAST);
        let r = &a.bytes;
        assert!(r.len() >= MIN_REPLY);
        assert_eq!(&r[..3], &[2, 1, 6]);
        assert_eq!(&r[4..8], &[0xde, 0xad, 0xbe, 0xef], "xid echoed");
        assert_eq!(r[10], 0x80, "flags echoed");
        assert_eq!(&r[16..20], &[10, 0, 3, 1], "yiaddr");
        assert_eq!(&r[28..34], &[0x00, 0x16, 0x3e, 1, 2, 3], "chaddr echoed");
        assert_eq!(&r[HEADER_LEN..HEADER_LEN + 4], &COOKIE);
        assert_eq!(option(r, opt::MESSAGE_TYPE), Some(vec![2]));
        assert_eq!(option(r, opt::SERVER_ID), Some(vec![10, 0, 3, 128]));
        assert_eq!(option(r, opt::ROUTER), Some(vec![10, 0, 3, 128]));
        assert_eq!(option(r, opt::SUBNET_MASK), Some(vec![255, 255, 0, 0]));
        assert_eq!(
            option(r, opt::LEASE_TIME),
            Some(86400u32.to_be_bytes().to_vec())
        );
        assert_eq!(option(r, opt::DNS), Some(vec![192, 0, 2, 53]));
        assert_eq!(option(r, opt::HOST_NAME), Some(b"web".to_vec()));
    }

    #[test]
    fn request_for_the_lease_is_acked_another_is_naked() {
        let ok = request(3, [0; 4], &[(50, &[10, 0, 3, 1]), (54, &[10, 0, 3, 128])]);
        let a = answer(&ok, &lease()).expect("an answer");
        assert_eq!(a.kind, MessageType::Ack);
        assert_eq!(&a.bytes[16..20], &[10, 0, 3, 1]);
        let bad = request(3, [0; 4], &[(50, &[10, 0, 3, 9])]);
        let a = answer(&bad, &lease()).expect("an answer");
        assert_eq!(a.kind, MessageType::Nak);
        assert_eq!(&a.bytes[16..20], &[0; 4], "a NAK offers no address");
        assert_eq!(option(&a.bytes, opt::ROUTER), None);
        assert_eq!(a.to, Ipv4Addr::BROADCAST);
        // Another server chosen: silence.
        let other = request(3, [0; 4], &[(50, &[10, 0, 3, 1]), (54, &[10, 0, 0, 1])]);
        assert_eq!(answer(&other, &lease()), None);
    }

    #[test]
    fn renewal_is_unicast_and_inform_gets_no_lease() {
        let renew = request(3, [10, 0, 3, 1], &[]);
        let a = answer(&renew, &lease()).expect("an answer");
        assert_eq!(
            (a.kind, a.to),
            (MessageType::Ack, Ipv4Addr::new(10, 0, 3, 1))
        );
        // ciaddr is the guest's to write: only the lease's address gets a unicast.
        let odd = request(1, [10, 0, 3, 128], &[]);
        assert_eq!(
            answer(&odd, &lease()).map(|a| a.to),
            Some(Ipv4Addr::BROADCAST)
        );
        let renew_other = request(3, [10, 0, 3, 128], &[(50, &[10, 0, 3, 1])]);
        assert_eq!(
            answer(&renew_other, &lease()).map(|a| a.to),
            Some(Ipv4Addr::BROADCAST)
        );
        assert_eq!(answer(&request(8, [10, 0, 3, 128], &[]), &lease()), None);
        let inform = request(8, [10, 0, 3, 1], &[]);
        let a = answer(&inform, &lease()).expect("an answer");
        assert_eq!(a.kind, MessageType::Ack);
        assert_eq!(&a.bytes[12..16], &[10, 0, 3, 1], "ciaddr echoed");
        assert_eq!(&a.bytes[16..20], &[0; 4], "no yiaddr");
        assert_eq!(option(&a.bytes, opt::LEASE_TIME), None);
        assert_eq!(option(&a.bytes, opt::ROUTER), Some(vec![10, 0, 3, 128]));
    }

    #[test]
    fn what_is_not_a_client_request_gets_nothing() {
        let l = lease();
        for kind in [2, 4, 5, 6, 7, 9, 0] {
            assert_eq!(answer(&request(kind, [0; 4], &[]), &l), None, "type {kind}");
        }
        let good = request(1, [0; 4], &[]);
        // A reply (op 2), another hardware type or length, no cookie, no type, truncation.
        for (at, value) in [(0, 2), (1, 6), (2, 16), (HEADER_LEN, 0)] {
            let mut m = good.clone();
            m[at] = value;
            assert_eq!(answer(&m, &l), None, "byte {at} = {value}");
        }
        let mut no_type = good[..HEADER_LEN + 4].to_vec();
        no_type.push(opt::END);
        assert_eq!(answer(&no_type, &l), None);
        for n in 0..good.len() - 1 {
            // Cut inside the message-type option or earlier: nothing; the END alone may go.
            assert_eq!(answer(&good[..n], &l), None, "cut at {n}");
        }
        // An option whose length runs past the end.
        let mut long = good[..good.len() - 1].to_vec();
        long.extend_from_slice(&[opt::HOST_NAME, 200, b'x']);
        assert_eq!(answer(&long, &l), None);
        // Pads and unknown options are skipped; a wrong-sized type option is not a type.
        let padded = request(1, [0; 4], &[(0x42, &[1, 2, 3])]);
        assert!(answer(&padded, &l).is_some());
        let mut wide = good[..HEADER_LEN + 4].to_vec();
        wide.extend_from_slice(&[opt::PAD, opt::MESSAGE_TYPE, 2, 1, 1, opt::END]);
        assert_eq!(answer(&wide, &l), None);
    }

    #[test]
    fn long_names_and_many_servers_fit_their_options() {
        let mut l = lease();
        l.host_name = Some("n".repeat(400));
        l.dns = (0..100).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        let a = answer(&request(1, [0; 4], &[]), &l).expect("an answer");
        assert_eq!(
            option(&a.bytes, opt::HOST_NAME).map(|v| v.len()),
            Some(MAX_HOST_NAME)
        );
        assert_eq!(
            option(&a.bytes, opt::DNS).map(|v| v.len()),
            Some(4 * MAX_DNS)
        );
        assert!(a.bytes.len() - HEADER_LEN - 4 <= 308 && a.bytes.len() + 28 <= 576);
    }

    #[test]
    fn client_identifier_is_echoed_and_the_rest_fits_the_room_asked() {
        let l = lease();
        let id: &[u8] = &[1, 0x00, 0x16, 0x3e, 1, 2, 3];
        for (kind, want, ciaddr) in [(1, 2, [0; 4]), (3, 5, [10, 0, 3, 1]), (8, 5, [10, 0, 3, 1])] {
            let a = answer(&request(kind, ciaddr, &[(opt::CLIENT_ID, id)]), &l).unwrap();
            assert_eq!(a.kind as u8, want);
            assert_eq!(option(&a.bytes, opt::CLIENT_ID).as_deref(), Some(id));
        }
        let nak = request(
            3,
            [0; 4],
            &[(opt::REQUESTED_IP, &[10, 0, 3, 9]), (opt::CLIENT_ID, id)],
        );
        let a = answer(&nak, &l).unwrap();
        assert_eq!(a.kind, MessageType::Nak);
        assert_eq!(option(&a.bytes, opt::CLIENT_ID).as_deref(), Some(id));
        // A one-byte identifier is no identifier (RFC 2132 9.14): not echoed.
        let a = answer(&request(1, [0; 4], &[(opt::CLIENT_ID, &[7])]), &l).unwrap();
        assert_eq!(option(&a.bytes, opt::CLIENT_ID), None);
        // The longest identifier and host name: the name stays out of 576 bytes, and goes
        // when the client takes more (option 57), never past what it asked for.
        let mut l = lease();
        l.host_name = Some("n".repeat(63));
        let id = [9u8; 255];
        let a = answer(&request(1, [0; 4], &[(opt::CLIENT_ID, &id)]), &l).unwrap();
        assert_eq!(option(&a.bytes, opt::CLIENT_ID).map(|v| v.len()), Some(255));
        assert_eq!(option(&a.bytes, opt::HOST_NAME), None);
        assert_eq!(option(&a.bytes, opt::ROUTER), Some(vec![10, 0, 3, 128]));
        assert!(a.bytes.len() + 28 <= 576);
        for (max, name) in [(576u16, false), (600, false), (700, true), (9000, true)] {
            let m = request(
                1,
                [0; 4],
                &[(opt::MAX_SIZE, &max.to_be_bytes()), (opt::CLIENT_ID, &id)],
            );
            let a = answer(&m, &l).unwrap();
            assert_eq!(
                option(&a.bytes, opt::HOST_NAME).is_some(),
                name,
                "max {max}"
            );
            assert!(
                a.bytes.len() + 28 <= usize::from(max).clamp(576, 1500),
                "max {max}"
            );
        }
    }

    /// An IPv4 datagram: UDP from port 68 to `port` with `payload`.
    fn datagram(port: u16, payload: &[u8]) -> Vec<u8> {
        let total = 28 + payload.len();
        let mut d = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        d.extend_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255]);
        d.extend_from_slice(&68u16.to_be_bytes());
        d.extend_from_slice(&port.to_be_bytes());
        d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(payload);
        d
    }

    #[test]
    fn server_datagrams_are_whole_unfragmented_udp_to_port_67() {
        let d = datagram(67, b"hello");
        assert_eq!(server_datagram(&d), Some(&b"hello"[..]));
        // Ethernet padding after the datagram is not part of it.
        let mut padded = d.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(server_datagram(&padded), Some(&b"hello"[..]));
        // IP options: the UDP header moves.
        let mut opts = d.clone();
        opts[0] = 0x46;
        opts.splice(20..20, [1, 1, 1, 1]);
        opts[3] += 4;
        assert_eq!(server_datagram(&opts), Some(&b"hello"[..]));
        assert_eq!(server_datagram(&datagram(68, b"x")), None, "another port");
        for (at, value) in [
            (0, 0x65),
            (0, 0x44),
            (9, 6),
            (6, 0x20),
            (7, 1),
            (3, 27),
            (3, 200),
        ] {
            let mut m = d.clone();
            m[at] = value;
            assert_eq!(server_datagram(&m), None, "byte {at} = {value:#x}");
        }
        // A UDP length past the datagram, or below its header.
        let mut long = d.clone();
        long[25] = 200;
        assert_eq!(server_datagram(&long), None);
        let mut short = d.clone();
        short[25] = 3;
        assert_eq!(server_datagram(&short), Some(&b""[..]));
        for n in 0..d.len() {
            assert_eq!(server_datagram(&d[..n]), None, "cut at {n}");
        }
    }

    #[test]
    fn name_servers_skip_loopback_and_ipv6() {
        let conf = "# x\nnameserver 127.0.0.53\nnameserver 192.0.2.1\nnameserver ::1\n\
                    nameserver  198.51.100.7 \nsearch example\n";
        assert_eq!(
            name_servers(conf),
            vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7)]
        );
    }
}
