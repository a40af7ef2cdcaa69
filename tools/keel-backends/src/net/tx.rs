//! Transmit packets assembled from the frontend's ring slots, and checked.
//!
//! A packet is its first request, the extra-info slots its flags announce, and the
//! continuation requests its `NETTXF_more_data` flags chain (netif.h, "Guest transmit"). The
//! slots arrive one by one as [`super::NetQueue`] copies them off the ring; a packet whose
//! slots are not all published yet waits, assembled so far, for the rest.
//!
//! What is refused and how follows Linux netback (`xenvif_count_requests`,
//! `xenvif_get_extras`, `xenvif_tx_build_gops`), except that nothing here disables the
//! interface: a bad packet is answered `NETIF_RSP_ERROR` on each of its requests (and
//! `NETIF_RSP_NULL` on its extra slots) and the ring goes on. Bad are: more than
//! [`XEN_NETBK_LEGACY_SLOTS_MAX`] data slots, more than [`MAX_EXTRA_SLOTS`] extra slots, an
//! extra slot of an unknown type, continuation sizes that add up to more than the first
//! request's `size` (the packet length), a slot whose data crosses the end of its page, a
//! packet shorter than an Ethernet header, a GSO descriptor of size 0 or of an unknown type.
//! A packet that grows past the slot limits is answered at once, and the rest of its chain
//! answered slot by slot as it is taken, so that even a chain as long as the ring cannot
//! stall it.

use keel_core::xen::blkif::PAGE_SIZE;
use keel_core::xen::netif::{
    extra_type, gso_type, txf, NetifExtraGso, NetifExtraInfo, NetifTxRequest,
    XEN_NETBK_LEGACY_SLOTS_MAX,
};

use super::packet::ETH_HLEN;

/// Extra slots a packet may carry: one of each defined type.
pub const MAX_EXTRA_SLOTS: usize = extra_type::MAX as usize - 1;

/// A continuation request: its own data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxSlot {
    /// The frontend's tag.
    pub id: u16,
    /// The page holding the data.
    pub gref: u32,
    /// Offset of the data in the page.
    pub offset: u16,
    /// Bytes of data.
    pub size: u16,
}

/// A packet's slots, as taken off the ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxPacket {
    /// The first request (`size`: the whole packet).
    pub first: NetifTxRequest,
    /// Extra slots taken (each answered `NETIF_RSP_NULL`, after the first request's
    /// response).
    pub extras: usize,
    /// Continuation requests, in order.
    pub conts: Vec<TxSlot>,
    /// The GSO descriptor, if an extra slot carried one (the last one wins, as in netback).
    pub gso: Option<NetifExtraGso>,
    /// A multicast-control extra slot came with it: a control message, not a packet to send.
    pub mcast: bool,
    /// An extra slot had an unknown type.
    pub bad_extra: bool,
}

impl TxPacket {
    /// The packet's length (the first request's `size`).
    pub fn total_len(&self) -> usize {
        usize::from(self.first.size)
    }

    /// Checks the packet: `Ok(first_len)`, the bytes of data in the first slot, or `Err(())`
    /// for a malformed packet (to be answered `NETIF_RSP_ERROR`).
    pub fn check(&self) -> Result<usize, ()> {
        if self.bad_extra
            || self.extras > MAX_EXTRA_SLOTS
            || 1 + self.conts.len() > XEN_NETBK_LEGACY_SLOTS_MAX
        {
            return Err(());
        }
        let mut first_len = self.total_len();
        for c in &self.conts {
            // The continuations may not add up to more than the packet (netback: "slot size
            // > remaining size"), nor cross their page.
            first_len = first_len.checked_sub(usize::from(c.size)).ok_or(())?;
            if usize::from(c.offset) + usize::from(c.size) > PAGE_SIZE {
                return Err(());
            }
        }
        if usize::from(self.first.offset) + first_len > PAGE_SIZE || self.total_len() < ETH_HLEN {
            return Err(());
        }
        if let Some(g) = self.gso {
            if g.size == 0 || !matches!(g.ty, gso_type::TCPV4 | gso_type::TCPV6) {
                return Err(());
            }
        }
        Ok(first_len)
    }
}

/// What the next slots are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Extra-info slots.
    Extras,
    /// Continuation requests.
    Data,
}

#[derive(Debug, Default)]
enum State {
    /// The next slot is the first request of a packet.
    #[default]
    Idle,
    /// A packet under way.
    Building { pkt: TxPacket, phase: Phase },
    /// The rest of a packet already answered as too long.
    Skipping {
        phase: Phase,
        /// Continuation requests follow the extra slots.
        data_follows: bool,
    },
}

/// What one slot made of the packet under way.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// The packet goes on in the next slot.
    Pending,
    /// The packet is complete (and not yet checked).
    Complete(TxPacket),
    /// The packet has grown past the slot limits: answer the slots it has now (as a bad
    /// packet); its remaining slots come as [`Fed::SkipExtra`] and [`Fed::SkipData`].
    Overlong(TxPacket),
    /// An extra slot of a packet answered already: answer it `NETIF_RSP_NULL`.
    SkipExtra,
    /// A continuation request (with this id) of a packet answered already: answer it
    /// `NETIF_RSP_ERROR`.
    SkipData(u16),
}

/// Assembles packets from transmit slots, across calls.
#[derive(Debug, Default)]
pub struct TxAssembler {
    state: State,
}

impl TxAssembler {
    /// Whether a packet is under way (some of its slots taken, the rest not published yet).
    #[cfg(test)]
    pub fn in_progress(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Takes one slot (a 12-byte ring entry, already copied out of the ring).
    pub fn feed(&mut self, entry: &[u8]) -> Fed {
        let req = NetifTxRequest::from_bytes(entry).unwrap_or_default();
        let extra = NetifExtraInfo::from_bytes(entry).unwrap_or_default();
        let more_data = req.flags & txf::MORE_DATA != 0;
        match std::mem::take(&mut self.state) {
            State::Idle => {
                let pkt = TxPacket {
                    first: req,
                    ..TxPacket::default()
                };
                if req.flags & txf::EXTRA_INFO != 0 {
                    self.build(pkt, Some(Phase::Extras))
                } else {
                    self.build(pkt, more_data.then_some(Phase::Data))
                }
            }
            State::Building {
                mut pkt,
                phase: Phase::Extras,
            } => {
                pkt.extras += 1;
                match extra.ty {
                    _ if !extra.known_type() => pkt.bad_extra = true,
                    extra_type::GSO => pkt.gso = Some(extra.gso()),
                    extra_type::MCAST_ADD | extra_type::MCAST_DEL => pkt.mcast = true,
                    // A hash the host does not use; XDP headroom is for the receive side.
                    _ => {}
                }
                let first_more = pkt.first.flags & txf::MORE_DATA != 0;
                let next = if extra.more() {
                    Some(Phase::Extras)
                } else {
                    first_more.then_some(Phase::Data)
                };
                if pkt.extras > MAX_EXTRA_SLOTS {
                    return self.overlong(pkt, next);
                }
                self.build(pkt, next)
            }
            State::Building {
                mut pkt,
                phase: Phase::Data,
            } => {
                pkt.conts.push(TxSlot {
                    id: req.id,
                    gref: req.gref,
                    offset: req.offset,
                    size: req.size,
                });
                let next = more_data.then_some(Phase::Data);
                if 1 + pkt.conts.len() > XEN_NETBK_LEGACY_SLOTS_MAX {
                    return self.overlong(pkt, next);
                }
                self.build(pkt, next)
            }
            State::Skipping {
                phase: Phase::Extras,
                data_follows,
            } => {
                self.state = if extra.more() {
                    State::Skipping {
                        phase: Phase::Extras,
                        data_follows,
                    }
                } else if data_follows {
                    State::Skipping {
                        phase: Phase::Data,
                        data_follows,
                    }
                } else {
                    State::Idle
                };
                Fed::SkipExtra
            }
            State::Skipping {
                phase: Phase::Data,
                data_follows,
            } => {
                if more_data {
                    self.state = State::Skipping {
                        phase: Phase::Data,
                        data_follows,
                    };
                }
                Fed::SkipData(req.id)
            }
        }
    }

    fn build(&mut self, pkt: TxPacket, next: Option<Phase>) -> Fed {
        match next {
            Some(phase) => {
                self.state = State::Building { pkt, phase };
                Fed::Pending
            }
            None => Fed::Complete(pkt),
        }
    }

    fn overlong(&mut self, pkt: TxPacket, next: Option<Phase>) -> Fed {
        if let Some(phase) = next {
            self.state = State::Skipping {
                phase,
                data_follows: pkt.first.flags & txf::MORE_DATA != 0,
            };
        }
        Fed::Overlong(pkt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::xen::netif::EXTRA_FLAG_MORE;

    fn req(id: u16, flags: u16, size: u16) -> [u8; 12] {
        NetifTxRequest {
            gref: 100 + u32::from(id),
            offset: 0,
            flags,
            id,
            size,
        }
        .to_bytes()
    }

    fn extra(ty: u8, flags: u8) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(
            &NetifExtraInfo {
                ty,
                flags,
                u: [0x10, 0x05, gso_type::TCPV4, 0, 0, 0],
            }
            .to_bytes(),
        );
        b
    }

    #[test]
    fn first_extras_and_continuations_make_one_packet() {
        let mut a = TxAssembler::default();
        assert_eq!(
            a.feed(&req(1, txf::MORE_DATA | txf::EXTRA_INFO, 3000)),
            Fed::Pending
        );
        assert_eq!(
            a.feed(&extra(extra_type::HASH, EXTRA_FLAG_MORE)),
            Fed::Pending
        );
        assert_eq!(a.feed(&extra(extra_type::GSO, 0)), Fed::Pending);
        assert_eq!(a.feed(&req(2, txf::MORE_DATA, 1000)), Fed::Pending);
        assert!(a.in_progress());
        let Fed::Complete(p) = a.feed(&req(3, 0, 500)) else {
            panic!("complete")
        };
        assert!(!a.in_progress());
        assert_eq!((p.extras, p.conts.len(), p.check()), (2, 2, Ok(1500)));
        assert_eq!(
            p.gso.map(|g| (g.size, g.ty)),
            Some((0x510, gso_type::TCPV4))
        );
        assert!(!p.mcast && !p.bad_extra);
        // A one-slot packet is complete at once.
        let Fed::Complete(p) = a.feed(&req(4, 0, 60)) else {
            panic!("complete")
        };
        assert_eq!(p.check(), Ok(60));
    }

    #[test]
    fn bad_packets_fail_their_check() {
        let one = |first: NetifTxRequest, conts: &[TxSlot]| TxPacket {
            first,
            conts: conts.to_vec(),
            ..TxPacket::default()
        };
        let first = NetifTxRequest {
            size: 100,
            ..NetifTxRequest::default()
        };
        let slot = |offset: u16, size: u16| TxSlot {
            id: 9,
            gref: 1,
            offset,
            size,
        };
        assert_eq!(one(first, &[slot(0, 40)]).check(), Ok(60));
        assert_eq!(one(first, &[slot(0, 101)]).check(), Err(()));
        assert_eq!(one(first, &[slot(0, 60), slot(0, 41)]).check(), Err(()));
        assert_eq!(one(first, &[slot(4090, 7)]).check(), Err(()));
        let at_end = NetifTxRequest {
            offset: 4000,
            ..first
        };
        assert_eq!(one(at_end, &[]).check(), Err(()));
        assert_eq!(one(at_end, &[slot(0, 4)]).check(), Ok(96));
        let tiny = NetifTxRequest { size: 13, ..first };
        assert_eq!(one(tiny, &[]).check(), Err(()));
        let mut p = one(first, &[]);
        p.gso = Some(NetifExtraGso {
            size: 0,
            ty: gso_type::TCPV4,
            ..NetifExtraGso::default()
        });
        assert_eq!(p.check(), Err(()));
        p.gso = Some(NetifExtraGso {
            size: 1400,
            ty: 3,
            ..NetifExtraGso::default()
        });
        assert_eq!(p.check(), Err(()));
        let mut p = one(first, &[]);
        p.bad_extra = true;
        assert_eq!(p.check(), Err(()));
    }

    #[test]
    fn an_overlong_chain_is_answered_early_and_skipped_to_its_end() {
        let mut a = TxAssembler::default();
        assert_eq!(a.feed(&req(0, txf::MORE_DATA, 60000)), Fed::Pending);
        for id in 1..XEN_NETBK_LEGACY_SLOTS_MAX as u16 {
            assert_eq!(a.feed(&req(id, txf::MORE_DATA, 100)), Fed::Pending);
        }
        let Fed::Overlong(p) = a.feed(&req(18, txf::MORE_DATA, 100)) else {
            panic!("overlong")
        };
        assert_eq!(p.conts.len(), 18);
        assert_eq!(p.check(), Err(()));
        assert_eq!(a.feed(&req(19, txf::MORE_DATA, 100)), Fed::SkipData(19));
        assert_eq!(a.feed(&req(20, 0, 100)), Fed::SkipData(20));
        assert!(!a.in_progress());

        // Too many extra slots, then data.
        assert_eq!(
            a.feed(&req(30, txf::EXTRA_INFO | txf::MORE_DATA, 100)),
            Fed::Pending
        );
        for _ in 0..MAX_EXTRA_SLOTS {
            assert_eq!(
                a.feed(&extra(extra_type::HASH, EXTRA_FLAG_MORE)),
                Fed::Pending
            );
        }
        assert!(matches!(
            a.feed(&extra(extra_type::HASH, EXTRA_FLAG_MORE)),
            Fed::Overlong(_)
        ));
        assert_eq!(a.feed(&extra(extra_type::GSO, 0)), Fed::SkipExtra);
        assert_eq!(a.feed(&req(31, 0, 50)), Fed::SkipData(31));
        assert!(!a.in_progress());
    }

    #[test]
    fn unknown_and_control_extras_are_flagged() {
        let mut a = TxAssembler::default();
        assert_eq!(a.feed(&req(1, txf::EXTRA_INFO, 60)), Fed::Pending);
        let Fed::Complete(p) = a.feed(&extra(0, 0)) else {
            panic!("complete")
        };
        assert!(p.bad_extra);
        assert_eq!(a.feed(&req(2, txf::EXTRA_INFO, 60)), Fed::Pending);
        let Fed::Complete(p) = a.feed(&extra(extra_type::MCAST_ADD, 0)) else {
            panic!("complete")
        };
        assert!(p.mcast && !p.bad_extra);
        assert_eq!(p.check(), Ok(60));
    }
}
