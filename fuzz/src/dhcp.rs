//! The NAT vif's DHCP server (`keel_backends::dhcp::answer`, and `server_datagram` for the IP
//! and UDP headers around it) against what a guest sends: plain random bytes, and client
//! messages built field by field (type, ciaddr, options 50, 54, 57 and 61, pads, unknown and
//! over-long options) then cut or corrupted at random.

use std::net::Ipv4Addr;

use keel_backends::dhcp::{answer, options_room, parse, server_datagram, Lease, MessageType};
use rand::Rng as _;

use crate::{Finding, Rng};

const COOKIE: [u8; 4] = [99, 130, 83, 99];

fn lease(rng: &mut Rng) -> Lease {
    Lease {
        addr: Ipv4Addr::new(10, 0, 3, 1),
        prefix: rng.random_range(8..=30),
        gateway: Ipv4Addr::new(10, 0, 3, 128),
        dns: (0..rng.random_range(0..80))
            .map(|i| Ipv4Addr::new(192, 0, 2, i))
            .collect(),
        host_name: rng
            .random_bool(0.7)
            .then(|| "h".repeat(rng.random_range(0..300))),
        seconds: rng.random(),
    }
}

/// An address that is the lease's, its gateway's, zero or anything.
fn address(rng: &mut Rng) -> [u8; 4] {
    match rng.random_range(0..4) {
        0 => [10, 0, 3, 1],
        1 => [10, 0, 3, 128],
        2 => [0; 4],
        _ => rng.random(),
    }
}

fn message(rng: &mut Rng) -> Vec<u8> {
    if rng.random_bool(0.1) {
        let mut m = vec![0u8; rng.random_range(0..600)];
        rng.fill(&mut m[..]);
        return m;
    }
    let mut m = vec![0u8; 236];
    rng.fill(&mut m[..]);
    m[..3].copy_from_slice(&[1, 1, 6]);
    m[12..16].copy_from_slice(&address(rng));
    m.extend_from_slice(&COOKIE);
    for _ in 0..rng.random_range(0..8) {
        match rng.random_range(0..8) {
            0 => m.extend_from_slice(&[53, 1, rng.random_range(0..10)]),
            6 => {
                let size: u16 = match rng.random_range(0..3) {
                    0 => rng.random_range(500..1600),
                    _ => rng.random(),
                };
                m.extend_from_slice(&[57, 2]);
                m.extend_from_slice(&size.to_be_bytes());
            }
            7 => {
                let len = rng.random_range(0..=255u8);
                m.extend_from_slice(&[61, len]);
                m.extend((0..len).map(|_| rng.random::<u8>()));
            }
            1 => {
                m.extend_from_slice(&[50, 4]);
                m.extend_from_slice(&address(rng));
            }
            2 => {
                m.extend_from_slice(&[54, 4]);
                m.extend_from_slice(&address(rng));
            }
            3 => m.push(0),
            4 => {
                let len = rng.random_range(0..=255u8);
                m.extend_from_slice(&[rng.random(), len]);
                m.extend((0..len).map(|_| rng.random::<u8>()));
            }
            _ => m.extend_from_slice(&[53, rng.random_range(0..4), rng.random()]),
        }
    }
    if rng.random_bool(0.8) {
        m.push(255);
    }
    match rng.random_range(0..5) {
        0 => m.truncate(rng.random_range(0..=m.len())),
        1 => {
            let at = rng.random_range(0..m.len());
            m[at] = rng.random();
        }
        _ => {}
    }
    m
}

/// The options of a reply, read strictly: every option whole, an END at the end.
fn reply_options(r: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut out = Vec::new();
    let mut rest = r.get(240..).ok_or("no options")?;
    loop {
        let (&code, tail) = rest.split_first().ok_or("no END option")?;
        if code == 255 {
            return Ok(out);
        }
        let (&len, tail) = tail.split_first().ok_or("an option without a length")?;
        let value = tail
            .get(..usize::from(len))
            .ok_or("an option past the end")?;
        out.push((code, value));
        rest = &tail[usize::from(len)..];
    }
}

/// `payload` in an IPv4 UDP datagram to port 67 as the packet socket reads it, perhaps with
/// IP options, Ethernet padding, and one field made wrong.
fn datagram(rng: &mut Rng, payload: &[u8]) -> Vec<u8> {
    let options = rng.random_range(0..=10) * 4 * usize::from(rng.random_bool(0.2));
    let total = 20 + options + 8 + payload.len();
    let mut d = vec![0x45 + (options / 4) as u8, 0];
    d.extend_from_slice(&(total as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]);
    d.extend((0..options).map(|_| rng.random::<u8>()));
    d.extend_from_slice(&[0, 68, 0, 67]);
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    if rng.random_bool(0.2) {
        d.extend((0..rng.random_range(0..40)).map(|_| 0u8));
    }
    if rng.random_bool(0.3) {
        let at = rng.random_range(0..(28 + options).min(d.len()));
        d[at] = rng.random();
    }
    d
}

/// server_datagram's answer holds only if the datagram is what it must be: IPv4, UDP, to
/// port 67, not a fragment, and the payload is the UDP length's within the total length's.
fn check_datagram(d: &[u8], got: Option<&[u8]>) -> Result<(), Finding> {
    let Some(p) = got else { return Ok(()) };
    let ihl = usize::from(d[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let ok = d[0] >> 4 == 4
        && ihl >= 20
        && d[9] == 17
        && u16::from_be_bytes([d[6], d[7]]) & 0x3fff == 0
        && total <= d.len()
        && ihl + 8 <= total
        && d[ihl + 2..ihl + 4] == [0, 67];
    let ulen = usize::from(u16::from_be_bytes([d[ihl + 4], d[ihl + 5]]));
    let start = d.as_ptr() as usize;
    let at = p.as_ptr() as usize - start;
    if !ok || at != ihl + 8 || at + p.len() > total || p.len() != ulen.max(8) - 8 {
        return Err(format!(
            "server_datagram took {} bytes at {at} from {d:?}",
            p.len()
        ));
    }
    Ok(())
}

/// One input: the answer, if any, is a well-formed BOOTREPLY that echoes the request, offers
/// only the lease's address, and answers only what the protocol says it should.
pub fn run(rng: &mut Rng) -> Result<(), Finding> {
    let l = lease(rng);
    let m = message(rng);
    if rng.random_bool(0.3) {
        let d = datagram(rng, &m);
        check_datagram(&d, server_datagram(&d))?;
    }
    let req = parse(&m);
    let Some(a) = answer(&m, &l) else {
        // Silence is right for a malformed message or a client's non-request; a DISCOVER or
        // INFORM always gets an answer.
        return match req {
            Some(r)
                if r.kind == MessageType::Discover
                    || (r.kind == MessageType::Inform && r.ciaddr == l.addr) =>
            {
                Err(format!("no answer to a {:?}", r.kind))
            }
            _ => Ok(()),
        };
    };
    let Some(req) = req else {
        return Err("an answer to a message parse() refuses".into());
    };
    let r = &a.bytes;
    if r.len() < 300 || r[..3] != [2, 1, 6] || r[236..240] != COOKIE {
        return Err(format!(
            "a malformed reply header: {:?}",
            &r[..r.len().min(12)]
        ));
    }
    if r[4..8] != req.xid || r[10..12] != req.flags || r[28..44] != req.chaddr[..] {
        return Err("xid, flags or chaddr not echoed".into());
    }
    let yiaddr = Ipv4Addr::from(<[u8; 4]>::try_from(&r[16..20]).expect("4 bytes"));
    let options = reply_options(r)?;
    let kind = options
        .iter()
        .find(|(c, _)| *c == 53)
        .map(|(_, v)| *v)
        .ok_or("no message type")?;
    if kind != [a.kind as u8] {
        return Err(format!("type option {kind:?} for a {:?}", a.kind));
    }
    let expected = match req.kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Inform if req.ciaddr == l.addr => MessageType::Ack,
        MessageType::Request if req.server_id.is_some_and(|s| s != l.gateway) => {
            return Err("an answer to a REQUEST for another server".into())
        }
        MessageType::Request if req.requested.unwrap_or(req.ciaddr) == l.addr => MessageType::Ack,
        MessageType::Request => MessageType::Nak,
        k => return Err(format!("an answer to a {k:?}")),
    };
    if a.kind != expected {
        return Err(format!(
            "{:?} for a {:?}, not {expected:?}",
            a.kind, req.kind
        ));
    }
    let offers = matches!(a.kind, MessageType::Offer)
        || (a.kind == MessageType::Ack && req.kind == MessageType::Request);
    if yiaddr
        != if offers {
            l.addr
        } else {
            Ipv4Addr::UNSPECIFIED
        }
    {
        return Err(format!("yiaddr {yiaddr} in a {:?}", a.kind));
    }
    // The client's identifier echoed whole (RFC 6842), and the reply no larger than it takes.
    let id = options.iter().find(|(c, _)| *c == 61).map(|(_, v)| *v);
    if id != req.client_id {
        return Err(format!("client identifier {id:?} for {:?}", req.client_id));
    }
    let used = options.iter().map(|(_, v)| 2 + v.len()).sum::<usize>() + 1;
    // What the client takes: 576 bytes, or its option 57 up to an Ethernet frame (checked
    // here without the server's own arithmetic).
    let takes = req
        .max_size
        .map_or(576, |m| usize::from(m).clamp(576, 1500));
    if used > options_room(&req) || 240 + used > takes - 28 {
        return Err(format!(
            "{used} bytes of options in {} bytes, {} of room, the client takes {takes}",
            r.len(),
            options_room(&req)
        ));
    }
    // Type and server id always; lease time (not for INFORM), mask and router unless a NAK.
    let has = |code: u8| options.iter().any(|(c, _)| *c == code);
    let mut required = vec![53, 54];
    if a.kind != MessageType::Nak {
        required.extend([1, 3]);
        if req.kind != MessageType::Inform {
            required.push(51);
        }
    }
    if let Some(missing) = required.into_iter().find(|c| !has(*c)) {
        return Err(format!("no option {missing} in a {:?}", a.kind));
    }
    // Only the lease's address, never one the guest names (Dom0's own, say).
    if a.to != Ipv4Addr::BROADCAST && (a.to != l.addr || a.to != req.ciaddr) {
        return Err(format!("sent to {} (ciaddr {})", a.to, req.ciaddr));
    }
    Ok(())
}
