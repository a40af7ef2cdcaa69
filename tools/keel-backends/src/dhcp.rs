//! A NAT vif's DHCP server: it gives the guest behind the vif the one address the vif was
//! set up with, as Xen's vif-nat does through a host entry in dhcpd.conf (fixed address,
//! router, host name). [`answer`] is the whole protocol (RFC 2131 messages, RFC 2132
//! options) over bytes the guest sent, which are hostile: a message that is not a well-formed
//! BOOTREQUEST from an Ethernet client gets no answer. [`DhcpServer`] serves it on the vif's
//! TAP device: a UDP socket on port 67 bound to that device alone, whose broadcasts leave
//! through the TAP, that is, towards the guest.
use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// The BOOTP header's length, up to the options' magic cookie (RFC 2131, figure 1).
const HEADER_LEN: usize = 236;
/// RFC 2131 3: the options field begins with 99.130.83.99.
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// RFC 2131 2: a BOOTP relay or client expects a message of at least 300 bytes.
const MIN_REPLY: usize = 300;
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
    })
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
/// nothing.
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
        MessageType::Inform => MessageType::Ack,
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
    let mut option = |code: u8, value: &[u8]| {
        out.push(code);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
    };
    option(opt::MESSAGE_TYPE, &[kind as u8]);
    option(opt::SERVER_ID, &lease.gateway.octets());
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
            .take(63) // an option holds at most 255 bytes
            .flat_map(|a| a.octets())
            .collect();
        if !dns.is_empty() {
            option(opt::DNS, &dns);
        }
        if let Some(name) = lease.host_name.as_deref().filter(|n| !n.is_empty()) {
            let name = name.as_bytes();
            option(opt::HOST_NAME, &name[..name.len().min(255)]);
        }
    }
    out.push(opt::END);
    if out.len() < MIN_REPLY {
        out.resize(MIN_REPLY, 0);
    }
    // A client that is renewing (ciaddr set, as RFC 2131 4.4.5) or INFORMs has its address
    // and answers ARP: unicast to it; a NAK and everything else go by broadcast.
    let to = if !req.ciaddr.is_unspecified() && kind != MessageType::Nak {
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

/// The DHCP server of one vif: a thread answering on its device until dropped.
pub struct DhcpServer {
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A UDP socket on port 67 that sees and sends only through `dev`, and may broadcast.
fn device_socket(dev: &str) -> io::Result<UdpSocket> {
    // SAFETY: socket(2) has no memory preconditions; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level: libc::c_int, name: libc::c_int, value: &[u8]| -> io::Result<()> {
        // SAFETY: setsockopt reads `value.len()` bytes from a live slice.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    let one = 1i32.to_ne_bytes();
    // Dom0 may serve DHCP itself on other interfaces: port 67 is shared, per device.
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    set(libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
    set(libc::SOL_SOCKET, libc::SO_BINDTODEVICE, dev.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("binding a socket to {dev}: {e}")))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: SERVER_PORT.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads a sockaddr_in of the size given from a live local.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("port {SERVER_PORT} on {dev}: {e}"),
        ));
    }
    Ok(UdpSocket::from(fd))
}

impl DhcpServer {
    /// Starts answering DHCP on device `dev` (a NAT vif's TAP, which must be up) with `lease`;
    /// `log` gets one line per address handed out.
    pub fn start(
        dev: &str,
        lease: Lease,
        log: Arc<dyn Fn(&str) + Send + Sync>,
    ) -> io::Result<DhcpServer> {
        let socket = Arc::new(device_socket(dev)?);
        // A bound on how long a drop waits should the wake-up below be missed.
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st, name) = (socket.clone(), stop.clone(), dev.to_owned());
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{dev}"))
            .spawn(move || serve(&s, &st, &lease, &name, &*log))?;
        Ok(DhcpServer {
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

fn serve(socket: &UdpSocket, stop: &AtomicBool, lease: &Lease, dev: &str, log: &dyn Fn(&str)) {
    let mut buf = [0u8; 1500];
    let mut acked = false;
    while !stop.load(Ordering::Acquire) {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The wake-up of a drop (below).
            Err(_) if stop.load(Ordering::Acquire) => return,
            Err(e) => {
                log(&format!("{dev}: DHCP server stopped: {e}"));
                return;
            }
        };
        let Some(a) = answer(&buf[..n], lease) else {
            continue;
        };
        if let Err(e) = socket.send_to(&a.bytes, SocketAddrV4::new(a.to, CLIENT_PORT)) {
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
        self.stop.store(true, Ordering::Release);
        // shutdown(2) wakes the thread's recv even on an unconnected UDP socket (it returns
        // ENOTCONN, and sets the socket's shutdown state all the same); the read timeout is
        // the fallback.
        // SAFETY: the socket's descriptor is open for as long as `self.socket` lives.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
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
        assert_eq!(option(&a.bytes, opt::HOST_NAME).map(|v| v.len()), Some(255));
        assert_eq!(option(&a.bytes, opt::DNS).map(|v| v.len()), Some(252));
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
