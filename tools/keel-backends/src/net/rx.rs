//! How a frame from the host goes to the frontend: the slots it takes and the flags and
//! extra-info slot it carries, from its virtio-net header and what the frontend negotiated.
//!
//! As Linux netback does (`xenvif_rx_skb`, `xenvif_rx_data_slot`): data in whole pages from
//! offset 0, one slot per 4096 bytes, more than one only with `feature-sg`; a TCP GSO frame
//! gets a GSO extra-info slot after its first data slot when the frontend takes GSO (and SG);
//! `NEEDS_CSUM` becomes `NETRXF_csum_blank | NETRXF_data_validated`, `DATA_VALID`
//! `NETRXF_data_validated`. Where the frontend cannot take a blank checksum (IPv4 with
//! `feature-no-csum-offload`, IPv6 without `feature-ipv6-csum-offload`) on a frame that is not
//! GSO, the checksum is completed here and the frame marked validated; where it cannot take a
//! GSO frame, the frame is dropped when it does not fit the MTU (a smaller one goes as an
//! ordinary frame).

use keel_core::xen::blkif::PAGE_SIZE;
use keel_core::xen::netif::{gso_type, rxf, NetifExtraGso, XEN_NETIF_NR_SLOTS_MIN};

use super::packet::{self, ETH_HLEN, L3, VLAN_HLEN};
use super::{vnet, NetOptions, VnetHdr};

/// How a frame is laid on the receive ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPlan {
    /// Data slots (4096 bytes each but the last).
    pub data_slots: usize,
    /// The GSO extra-info slot, after the first data slot.
    pub gso: Option<NetifExtraGso>,
    /// `NETRXF_*` checksum flags of the first slot.
    pub flags: u16,
    /// Complete the checksum in software first: (`csum_start`, `csum_offset`).
    pub sw_csum: Option<(usize, usize)>,
}

impl RxPlan {
    /// Ring slots the frame takes: its data slots and its extra slot.
    pub fn slots(&self) -> usize {
        self.data_slots + usize::from(self.gso.is_some())
    }
}

/// Plans `frame` (without its header `hdr`) for a frontend with `options`; `None`: drop it.
pub fn plan(hdr: &VnetHdr, frame: &[u8], options: &NetOptions) -> Option<RxPlan> {
    if frame.len() < ETH_HLEN {
        return None;
    }
    let l3 = packet::l3_of(frame);
    let gso = match hdr.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => None,
        ty => {
            let xen = match (ty, l3) {
                (vnet::GSO_TCPV4, Some(L3::V4)) => Some(gso_type::TCPV4),
                (vnet::GSO_TCPV6, Some(L3::V6)) => Some(gso_type::TCPV6),
                _ => None,
            };
            match xen {
                // GSO needs scatter-gather too (netfront's TSO needs SG).
                Some(ty) if options.gso && options.sg && hdr.gso_size > 0 => Some(NetifExtraGso {
                    size: hdr.gso_size,
                    ty,
                    pad: 0,
                    features: 0,
                }),
                _ if frame.len() > options.mtu + ETH_HLEN + VLAN_HLEN => return None,
                _ => None,
            }
        }
    };
    // A frontend taking GSO takes a blank checksum on a GSO frame whatever its checksum
    // features say (netfront even sets one up where it is missing).
    let blank_ok = gso.is_some()
        || match l3 {
            Some(L3::V4) => options.csum_ipv4,
            Some(L3::V6) => options.csum_ipv6,
            None => false,
        };
    let (flags, sw_csum) = if hdr.flags & vnet::F_NEEDS_CSUM != 0 {
        if blank_ok {
            (rxf::CSUM_BLANK | rxf::DATA_VALIDATED, None)
        } else {
            (
                rxf::DATA_VALIDATED,
                Some((usize::from(hdr.csum_start), usize::from(hdr.csum_offset))),
            )
        }
    } else if hdr.flags & vnet::F_DATA_VALID != 0 {
        (rxf::DATA_VALIDATED, None)
    } else {
        (0, None)
    };
    let data_slots = frame.len().div_ceil(PAGE_SIZE);
    if data_slots > XEN_NETIF_NR_SLOTS_MIN || (data_slots > 1 && !options.sg) {
        return None;
    }
    Some(RxPlan {
        data_slots,
        gso,
        flags,
        sw_csum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::packet::tests::{ipv4, ipv6, tcp, udp};
    use crate::net::packet::{IPPROTO_TCP, IPPROTO_UDP};

    fn opts(sg: bool, gso: bool) -> NetOptions {
        NetOptions {
            sg,
            gso,
            csum_ipv6: true,
            ..NetOptions::default()
        }
    }

    fn gso_hdr(ty: u8, size: u16) -> VnetHdr {
        VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            gso_type: ty,
            hdr_len: 54,
            gso_size: size,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn slots_follow_the_frame_size_and_sg() {
        let small = ipv4(false, IPPROTO_UDP, &udp(&[0; 100]));
        let p = plan(&VnetHdr::default(), &small, &opts(false, false)).unwrap();
        assert_eq!((p.data_slots, p.slots(), p.flags, p.gso), (1, 1, 0, None));
        let big = ipv4(false, IPPROTO_UDP, &udp(&[0; 9000]));
        assert_eq!(plan(&VnetHdr::default(), &big, &opts(false, false)), None);
        let p = plan(&VnetHdr::default(), &big, &opts(true, false)).unwrap();
        assert_eq!(p.data_slots, 3);
        let page = vec![0u8; 4096];
        assert_eq!(
            plan(&VnetHdr::default(), &page, &opts(false, false)).map(|p| p.data_slots),
            Some(1)
        );
        assert_eq!(
            plan(&VnetHdr::default(), &page[..13], &opts(true, true)),
            None
        );
    }

    #[test]
    fn checksum_flags_map_or_are_completed_here() {
        let f = ipv4(false, IPPROTO_TCP, &tcp(0, b"abc"));
        let needs = VnetHdr {
            flags: vnet::F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let valid = VnetHdr {
            flags: vnet::F_DATA_VALID,
            ..VnetHdr::default()
        };
        let o = opts(true, true);
        assert_eq!(
            plan(&needs, &f, &o).unwrap().flags,
            rxf::CSUM_BLANK | rxf::DATA_VALIDATED
        );
        assert_eq!(plan(&valid, &f, &o).unwrap().flags, rxf::DATA_VALIDATED);
        let no_csum = NetOptions {
            csum_ipv4: false,
            ..o
        };
        let p = plan(&needs, &f, &no_csum).unwrap();
        assert_eq!((p.flags, p.sw_csum), (rxf::DATA_VALIDATED, Some((34, 16))));
        // IPv6 without feature-ipv6-csum-offload.
        let f6 = ipv6(IPPROTO_UDP, &[], &udp(b"x"));
        let no6 = NetOptions {
            csum_ipv6: false,
            ..o
        };
        assert!(plan(&needs, &f6, &no6).unwrap().sw_csum.is_some());
    }

    #[test]
    fn gso_frames_get_an_extra_slot_only_when_negotiated() {
        let f = ipv4(false, IPPROTO_TCP, &tcp(0, &[7; 20000]));
        let p = plan(&gso_hdr(vnet::GSO_TCPV4, 1448), &f, &opts(true, true)).unwrap();
        assert_eq!((p.data_slots, p.slots()), (5, 6));
        assert_eq!(p.gso.map(|g| (g.size, g.ty)), Some((1448, gso_type::TCPV4)));
        // Not negotiated, or no SG: too big for the MTU.
        assert_eq!(
            plan(&gso_hdr(vnet::GSO_TCPV4, 1448), &f, &opts(true, false)),
            None
        );
        assert_eq!(
            plan(&gso_hdr(vnet::GSO_TCPV4, 1448), &f, &opts(false, true)),
            None
        );
        // A GSO type that does not match the frame, or UDP GSO.
        assert_eq!(
            plan(&gso_hdr(vnet::GSO_TCPV6, 1448), &f, &opts(true, true)),
            None
        );
        assert_eq!(
            plan(&gso_hdr(vnet::GSO_UDP, 1448), &f, &opts(true, true)),
            None
        );
        // A small GSO frame goes as an ordinary one.
        let small = ipv4(false, IPPROTO_TCP, &tcp(0, &[7; 1000]));
        let p = plan(&gso_hdr(vnet::GSO_TCPV4, 1448), &small, &opts(true, false)).unwrap();
        assert_eq!((p.gso, p.flags & rxf::CSUM_BLANK), (None, rxf::CSUM_BLANK));
        let f6 = ipv6(IPPROTO_TCP, &[], &tcp(0, &[1; 3000]));
        let p = plan(
            &gso_hdr(vnet::GSO_TCPV6 | vnet::GSO_ECN, 1428),
            &f6,
            &opts(true, true),
        )
        .unwrap();
        assert_eq!(p.gso.map(|g| g.ty), Some(gso_type::TCPV6));
        // Without IPv6 checksum offload, still a blank checksum on a GSO frame.
        let no6 = NetOptions {
            csum_ipv6: false,
            csum_ipv4: false,
            ..opts(true, true)
        };
        let p = plan(&gso_hdr(vnet::GSO_TCPV6, 1428), &f6, &no6).unwrap();
        assert_eq!(
            (p.flags & rxf::CSUM_BLANK, p.sw_csum),
            (rxf::CSUM_BLANK, None)
        );
        assert!(plan(&gso_hdr(vnet::GSO_TCPV4, 1448), &f, &no6)
            .unwrap()
            .gso
            .is_some());
        // A GSO size of 0 is no GSO.
        assert_eq!(
            plan(&gso_hdr(vnet::GSO_TCPV4, 0), &f, &opts(true, true)),
            None
        );
    }
}
