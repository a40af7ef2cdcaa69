//! What the data path reads of a packet: where its TCP or UDP header and checksum field are
//! (to turn a guest's `NETTXF_csum_blank` into a virtio-net `NEEDS_CSUM` header), the
//! pseudo-header sum a partial checksum starts from, and a checksum completed in software (for
//! a frontend that takes no blank checksums).
//!
//! Everything here reads a private copy of the frame and checks every length against it: the
//! bytes came from a guest or from the host's network.
//!
//! What is understood follows Linux's `skb_checksum_setup` (used by netback and netfront): an
//! Ethernet header with up to two VLAN tags, then IPv4 (not a fragment) or IPv6 (with
//! hop-by-hop, routing, destination-options, authentication and non-fragmenting fragment
//! extension headers), then TCP or UDP.

/// `ETH_HLEN`: an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// `VLAN_HLEN`: one 802.1Q tag.
pub const VLAN_HLEN: usize = 4;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Extension headers walked before giving up on an IPv6 packet.
const MAX_IPV6_EXT: usize = 8;

/// The network layer of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L3 {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where a frame's transport header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transport {
    /// IPv4 or IPv6.
    pub l3: L3,
    /// Offset of the IP header.
    pub l3_start: usize,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
    /// Offset of the TCP or UDP header: virtio's `csum_start`.
    pub start: usize,
    /// Offset of the checksum field in that header: virtio's `csum_offset` (16 for TCP, 6
    /// for UDP).
    pub csum_offset: usize,
    /// Offset of the first byte after the TCP or UDP header (with TCP options).
    pub header_end: usize,
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

/// The EtherType after the VLAN tags, and where the network header starts.
fn ethertype(frame: &[u8]) -> Option<(u16, usize)> {
    let mut at = 12;
    for _ in 0..3 {
        let ty = be16(frame, at)?;
        if ty != ETH_P_8021Q && ty != ETH_P_8021AD {
            return Some((ty, at + 2));
        }
        at += VLAN_HLEN;
    }
    None
}

/// The network layer of an Ethernet frame, if it is IP.
pub fn l3_of(frame: &[u8]) -> Option<L3> {
    match ethertype(frame)?.0 {
        ETH_P_IP => Some(L3::V4),
        ETH_P_IPV6 => Some(L3::V6),
        _ => None,
    }
}

/// Finds the TCP or UDP header of an Ethernet frame; `None` for anything else (another
/// protocol, an IP fragment, a header that does not fit the frame).
pub fn transport(frame: &[u8]) -> Option<Transport> {
    let (ty, l3_start) = ethertype(frame)?;
    let (l3, proto, start) = match ty {
        ETH_P_IP => {
            let vihl = *frame.get(l3_start)?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 || l3_start + ihl > frame.len() {
                return None;
            }
            // More-fragments flag or a fragment offset: not a whole datagram.
            if be16(frame, l3_start + 6)? & 0x3fff != 0 {
                return None;
            }
            (L3::V4, frame[l3_start + 9], l3_start + ihl)
        }
        ETH_P_IPV6 => {
            if frame.len() < l3_start + 40 || frame[l3_start] >> 4 != 6 {
                return None;
            }
            let mut next = frame[l3_start + 6];
            let mut at = l3_start + 40;
            let mut walked = 0;
            loop {
                match next {
                    IPPROTO_TCP | IPPROTO_UDP => break,
                    NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                        let len = (usize::from(*frame.get(at + 1)?) + 1) * 8;
                        next = frame[at];
                        at += len;
                    }
                    NEXTHDR_AUTH => {
                        let len = (usize::from(*frame.get(at + 1)?) + 2) * 4;
                        next = frame[at];
                        at += len;
                    }
                    NEXTHDR_FRAGMENT => {
                        // Offset (13 bits) or more-fragments: a fragment.
                        if be16(frame, at + 2)? & 0xfff9 != 0 {
                            return None;
                        }
                        next = frame[at];
                        at += 8;
                    }
                    _ => return None,
                }
                walked += 1;
                if walked > MAX_IPV6_EXT || at > frame.len() {
                    return None;
                }
            }
            (L3::V6, next, at)
        }
        _ => return None,
    };
    let (csum_offset, header_len) = match proto {
        IPPROTO_TCP => {
            let doff = usize::from(*frame.get(start + 12)? >> 4) * 4;
            if doff < 20 {
                return None;
            }
            (16, doff)
        }
        IPPROTO_UDP => (6, 8),
        _ => return None,
    };
    if start + header_len > frame.len() {
        return None;
    }
    Some(Transport {
        l3,
        l3_start,
        proto,
        start,
        csum_offset,
        header_end: start + header_len,
    })
}

/// The ones'-complement sum of `b` as big-endian 16-bit words (an odd last byte padded with
/// a zero), not yet folded.
fn sum_words(b: &[u8]) -> u64 {
    let mut chunks = b.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header sum (folded, not complemented) of the transport segment `t` of `frame`,
/// over its whole length: what a partial (`CHECKSUM_PARTIAL`) checksum field holds.
pub fn pseudo_header_sum(frame: &[u8], t: &Transport) -> Option<u16> {
    let l4_len = frame.len().checked_sub(t.start)? as u64;
    let addrs = match t.l3 {
        L3::V4 => frame.get(t.l3_start + 12..t.l3_start + 20)?,
        L3::V6 => frame.get(t.l3_start + 8..t.l3_start + 40)?,
    };
    Some(fold(
        sum_words(addrs) + u64::from(t.proto) + (l4_len >> 16) + (l4_len & 0xffff),
    ))
}

/// Writes the pseudo-header sum into the checksum field of `t`: the packet becomes a proper
/// partial-checksum packet (what Linux does for a GSO packet that came without a blank
/// checksum).
pub fn set_partial_checksum(frame: &mut [u8], t: &Transport) -> bool {
    let Some(sum) = pseudo_header_sum(frame, t) else {
        return false;
    };
    let at = t.start + t.csum_offset;
    match frame.get_mut(at..at + 2) {
        Some(field) => {
            field.copy_from_slice(&sum.to_be_bytes());
            true
        }
        None => false,
    }
}

/// Completes a partial checksum in software: the ones'-complement sum of everything from
/// `csum_start` (the field at `csum_start + csum_offset` holding the pseudo-header sum),
/// complemented, stored in that field. A UDP result of 0 is sent as 0xffff (0 means "no
/// checksum"). `false` when the offsets do not fit the frame.
pub fn complete_checksum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let at = csum_start.saturating_add(csum_offset);
    if at.saturating_add(2) > frame.len() {
        return false;
    }
    let mut sum = !fold(sum_words(&frame[csum_start..]));
    if sum == 0 && csum_offset == 6 {
        sum = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Whether the transport checksum of `t` verifies (tests, and callers that must not trust a
/// partial sum): the sum over the pseudo-header and the segment is all ones.
pub fn checksum_ok(frame: &[u8], t: &Transport) -> bool {
    let Some(pseudo) = pseudo_header_sum(frame, t) else {
        return false;
    };
    fold(u64::from(pseudo) + sum_words(&frame[t.start..])) == 0xffff
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet frame (optionally VLAN-tagged) with an IPv4 header and `l4` after it.
    pub(crate) fn ipv4(vlan: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if vlan {
            f.extend([0x81, 0x00, 0x00, 0x05]);
        }
        f.extend([0x08, 0x00]);
        let total = (20 + l4.len()) as u16;
        f.extend([
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ]);
        f.extend([10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend(l4);
        f
    }

    /// An Ethernet frame with an IPv6 header, `ext` extension-header bytes (the first byte
    /// of `ext` being the next header after them), and `l4`.
    pub(crate) fn ipv6(first_next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
        let plen = (ext.len() + l4.len()) as u16;
        f.extend([0x60, 0, 0, 0, (plen >> 8) as u8, plen as u8, first_next, 64]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend(ext);
        f.extend(l4);
        f
    }

    /// A TCP header (20 bytes + `opts`, a multiple of 4) followed by `payload`.
    pub(crate) fn tcp(opts: usize, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0];
        t.push((((20 + opts) / 4) as u8) << 4);
        t.extend([0x18, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend(std::iter::repeat_n(1u8, opts));
        t.extend(payload);
        t
    }

    /// A UDP header followed by `payload`.
    pub(crate) fn udp(payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        let mut u = vec![0x30, 0x39, 0x00, 0x35, (len >> 8) as u8, len as u8, 0, 0];
        u.extend(payload);
        u
    }

    #[test]
    fn tcp_and_udp_headers_are_found_behind_vlan_tags_and_ipv6_extensions() {
        let f = ipv4(false, IPPROTO_TCP, &tcp(12, b"hello"));
        let t = transport(&f).unwrap();
        assert_eq!(
            (t.l3, t.start, t.csum_offset, t.header_end),
            (L3::V4, 34, 16, 66)
        );
        let f = ipv4(true, IPPROTO_UDP, &udp(b"x"));
        let t = transport(&f).unwrap();
        assert_eq!((t.start, t.csum_offset, t.header_end), (38, 6, 46));
        assert_eq!(l3_of(&f), Some(L3::V4));

        let f = ipv6(IPPROTO_UDP, &[], &udp(b"abc"));
        let t = transport(&f).unwrap();
        assert_eq!((t.l3, t.start, t.csum_offset), (L3::V6, 54, 6));
        // Hop-by-hop (8 bytes), then a fragment header of a whole datagram, then TCP.
        let mut ext = vec![NEXTHDR_FRAGMENT, 0, 0, 0, 0, 0, 0, 0];
        ext.extend([IPPROTO_TCP, 0, 0, 0, 0, 0, 0, 1]);
        let f = ipv6(NEXTHDR_HOP, &ext, &tcp(0, b""));
        let t = transport(&f).unwrap();
        assert_eq!((t.start, t.header_end), (70, 90));
    }

    #[test]
    fn fragments_truncations_and_other_protocols_are_not_parsed() {
        let mut f = ipv4(false, IPPROTO_TCP, &tcp(0, b"data"));
        f[20] = 0x20; // more fragments
        assert_eq!(transport(&f), None);
        let f = ipv4(false, IPPROTO_TCP, &tcp(0, b""));
        assert_eq!(transport(&f[..f.len() - 1]), None);
        let mut f = ipv4(false, IPPROTO_TCP, &tcp(0, b""));
        f[14] = 0x44; // IHL 4
        assert_eq!(transport(&f), None);
        let f = ipv4(false, 1, &[8, 0, 0, 0, 0, 0, 0, 0]); // ICMP
        assert_eq!(transport(&f), None);
        let mut arp = vec![0xff; 12];
        arp.extend([0x08, 0x06]);
        arp.extend([0; 28]);
        assert_eq!((transport(&arp), l3_of(&arp)), (None, None));
        let ext = [IPPROTO_UDP, 0, 0x00, 0x09, 0, 0, 0, 1]; // offset 1: a fragment
        assert_eq!(transport(&ipv6(NEXTHDR_FRAGMENT, &ext, &udp(b""))), None);
        // A TCP data offset below 5 words.
        let mut seg = tcp(0, b"");
        seg[12] = 0x40;
        assert_eq!(transport(&ipv4(false, IPPROTO_TCP, &seg)), None);
        assert_eq!(transport(&[0u8; 13]), None);
    }

    #[test]
    fn a_partial_checksum_completed_in_software_verifies() {
        for mut f in [
            ipv4(false, IPPROTO_TCP, &tcp(4, b"some payload bytes.")),
            ipv6(IPPROTO_UDP, &[], &udp(b"odd")),
        ] {
            let t = transport(&f).unwrap();
            assert!(!checksum_ok(&f, &t));
            assert!(set_partial_checksum(&mut f, &t));
            assert!(complete_checksum(&mut f, t.start, t.csum_offset));
            assert!(checksum_ok(&f, &t), "{f:02x?}");
        }
        let mut short = [0u8; 10];
        assert!(!complete_checksum(&mut short, 4, 6));
        assert!(complete_checksum(&mut short, 2, 6));
    }

    #[test]
    fn the_ipv4_pseudo_header_sum_matches_a_worked_example() {
        // 10.0.0.1 -> 10.0.0.2, TCP, 20 bytes: 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 20.
        let f = ipv4(false, IPPROTO_TCP, &tcp(0, b""));
        let t = transport(&f).unwrap();
        assert_eq!(pseudo_header_sum(&f, &t), Some(0x141d));
    }
}
