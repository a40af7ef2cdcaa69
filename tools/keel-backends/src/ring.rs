//! The backend's end of a Xen shared ring (`io/ring.h`'s `BACK_RING_*`), in a mapping of the
//! frontend's pages that the frontend may change at any time.
//!
//! The rules, from ring.h and from what XSA-155 taught blkback:
//! - each request is copied out of the ring once ([`BackRing::next_request`]), and only the
//!   copy is looked at afterwards (`RING_COPY_REQUEST`);
//! - the frontend's `req_prod` is checked against what the ring can hold: more than the ring's
//!   size ahead of the responses, or behind what was already taken, and the ring is broken
//!   (`RING_REQUEST_PROD_OVERFLOW`); a broken ring stays broken, and the backend stops serving
//!   it;
//! - the backend's own indexes (`req_cons`, `rsp_prod_pvt`, the last `rsp_prod` it published)
//!   live here, never read back from shared memory;
//! - [`BackRing::push_responses`] is `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY` and
//!   [`BackRing::final_check_for_requests`] `RING_FINAL_CHECK_FOR_REQUESTS`, with their
//!   barriers: the responses are visible before `rsp_prod` (release), and `rsp_prod` before
//!   `rsp_event` is read (a full fence), so a notification is sent exactly when the frontend
//!   asked for one; likewise `req_event` is written before `req_prod` is read again.
//!
//! Responses are written in the order the backend finishes requests, each into the slot of a
//! request already taken (a response never overtakes `req_cons`).

use std::fmt;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use keel_core::xen::blkif::{ring_entries, sring, SRING_HEADER_SIZE};

use crate::grant::GrantMapping;

/// Why a ring can no longer be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingBroken {
    /// The `req_prod` the frontend published.
    pub req_prod: u32,
    /// Requests the backend had taken.
    pub req_cons: u32,
    /// Responses the backend had produced.
    pub rsp_prod: u32,
    /// The ring's entries.
    pub entries: u32,
}

impl fmt::Display for RingBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frontend broke the ring: req_prod {} with {} requests taken and {} answered \
             ({} entries)",
            self.req_prod, self.req_cons, self.rsp_prod, self.entries
        )
    }
}

impl std::error::Error for RingBroken {}

/// Why a mapping cannot hold a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingLayoutError {
    /// The mapping is not 8-aligned, or the entry size is not a non-zero multiple of 4.
    Misaligned,
    /// Not even one entry fits after the header.
    TooSmall,
}

impl fmt::Display for RingLayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => write!(f, "ring mapping or entry size misaligned"),
            Self::TooSmall => write!(f, "ring mapping too small for one entry"),
        }
    }
}

impl std::error::Error for RingLayoutError {}

/// The backend's end of a shared ring.
///
/// # Invariants
///
/// `mapping` is valid for `SRING_HEADER_SIZE + entries * entry_size` bytes, 8-aligned;
/// `entry_size` is a non-zero multiple of 4 and `entries` a power of two. Entries are accessed
/// in 8-byte words when `entry_size` is a multiple of 8 (every entry then starts 8-aligned, as
/// the header is 64 bytes), else in 4-byte words (netif's 12-byte transmit entries start only
/// 4-aligned).
pub struct BackRing {
    mapping: Box<dyn GrantMapping>,
    entry_size: usize,
    entries: u32,
    /// Requests taken (`req_cons`).
    req_cons: u32,
    /// The frontend's `req_prod` as last read and checked.
    req_prod_seen: u32,
    /// Responses written (`rsp_prod_pvt`).
    rsp_prod_pvt: u32,
    /// The `rsp_prod` last published.
    rsp_prod_pushed: u32,
    broken: Option<RingBroken>,
}

impl BackRing {
    /// Attaches to a ring the frontend initialized (`BACK_RING_INIT`) in `mapping`, with
    /// entries of `entry_size` bytes ([`keel_core::xen::blkif::Protocol::entry_size`],
    /// [`keel_core::xen::netif::TX_ENTRY_SIZE`]...): a non-zero multiple of 4.
    pub fn new(
        mapping: Box<dyn GrantMapping>,
        entry_size: usize,
    ) -> Result<BackRing, RingLayoutError> {
        if !(mapping.as_ptr() as usize).is_multiple_of(8)
            || entry_size == 0
            || !entry_size.is_multiple_of(4)
        {
            return Err(RingLayoutError::Misaligned);
        }
        let entries = ring_entries(mapping.len(), entry_size);
        if entries == 0 {
            return Err(RingLayoutError::TooSmall);
        }
        Ok(BackRing {
            mapping,
            entry_size,
            entries: u32::try_from(entries).map_err(|_| RingLayoutError::TooSmall)?,
            req_cons: 0,
            req_prod_seen: 0,
            rsp_prod_pvt: 0,
            rsp_prod_pushed: 0,
            broken: None,
        })
    }

    /// The ring's entries (`RING_SIZE`).
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The breakage found, if any; a broken ring serves nothing more.
    pub fn broken(&self) -> Option<RingBroken> {
        self.broken
    }

    /// Requests taken and not yet answered.
    pub fn unanswered(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the header's index offsets (< 16, 4-aligned) in a mapping
        // that is 8-aligned and longer than the header (type invariant), alive as long as
        // `self`; the indexes are only accessed atomically on our side (the frontend's
        // accesses to an aligned u32 are single instructions).
        unsafe { AtomicU32::from_ptr(self.mapping.as_ptr().add(offset).cast()) }
    }

    /// The word entries are accessed in: 8 bytes when the entry size allows, else 4.
    fn word(&self) -> usize {
        if self.entry_size.is_multiple_of(8) {
            8
        } else {
            4
        }
    }

    /// The first byte of the entry of `idx`, aligned to [`Self::word`].
    fn entry_ptr(&self, idx: u32) -> *mut u8 {
        let slot = (idx & (self.entries - 1)) as usize;
        // SAFETY: slot < entries, so the entry lies inside the mapping (type invariant); the
        // offset, 64 + slot * entry_size, is a multiple of the word size from an 8-aligned
        // base.
        unsafe {
            self.mapping
                .as_ptr()
                .add(SRING_HEADER_SIZE + slot * self.entry_size)
        }
    }

    /// Reads and checks the frontend's `req_prod`.
    fn refresh(&mut self) -> Result<(), RingBroken> {
        if let Some(b) = self.broken {
            return Err(b);
        }
        // Acquire (ring.h's rmb after reading req_prod): the requests up to it are visible.
        let prod = self.index(sring::REQ_PROD).load(Ordering::Acquire);
        let ahead_of_responses = prod.wrapping_sub(self.rsp_prod_pvt);
        // More than the ring holds ahead of our responses, or behind what we already took.
        if ahead_of_responses > self.entries
            || prod.wrapping_sub(self.req_cons) > ahead_of_responses
        {
            let b = RingBroken {
                req_prod: prod,
                req_cons: self.req_cons,
                rsp_prod: self.rsp_prod_pvt,
                entries: self.entries,
            };
            self.broken = Some(b);
            return Err(b);
        }
        self.req_prod_seen = prod;
        Ok(())
    }

    /// Requests published and not yet taken.
    pub fn pending_requests(&mut self) -> Result<u32, RingBroken> {
        self.refresh()?;
        Ok(self.req_prod_seen.wrapping_sub(self.req_cons))
    }

    /// Copies the next request's entry into `out` (`entry_size` bytes, once, with volatile
    /// loads) and takes it. `Ok(false)` when the frontend published nothing more.
    pub fn next_request(&mut self, out: &mut [u8]) -> Result<bool, RingBroken> {
        assert!(out.len() >= self.entry_size, "request buffer too small");
        if let Some(b) = self.broken {
            return Err(b);
        }
        if self.req_cons == self.req_prod_seen {
            self.refresh()?;
            if self.req_cons == self.req_prod_seen {
                return Ok(false);
            }
        }
        let entry = self.entry_ptr(self.req_cons);
        if self.word() == 8 {
            let entry = entry.cast::<u64>();
            for (i, chunk) in out[..self.entry_size].chunks_exact_mut(8).enumerate() {
                // SAFETY: i < entry_size / 8: an aligned u64 inside the entry (entry_ptr); a
                // volatile load, as the frontend may be writing it (its value is only checked
                // after the copy).
                let word = unsafe { entry.add(i).read_volatile() };
                chunk.copy_from_slice(&word.to_le_bytes());
            }
        } else {
            let entry = entry.cast::<u32>();
            for (i, chunk) in out[..self.entry_size].chunks_exact_mut(4).enumerate() {
                // SAFETY: i < entry_size / 4: an aligned u32 inside the entry (entry_ptr); a
                // volatile load, as above.
                let word = unsafe { entry.add(i).read_volatile() };
                chunk.copy_from_slice(&word.to_le_bytes());
            }
        }
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(true)
    }

    /// Writes a response (at most `entry_size` bytes, a multiple of 8, or of 4 for entries
    /// whose size is not a multiple of 8) into the next response slot; the rest of the slot is
    /// left as it is. There must be a request taken and not yet answered.
    pub fn put_response(&mut self, bytes: &[u8]) {
        assert!(self.unanswered() > 0, "a response with no request taken");
        assert!(
            bytes.len() <= self.entry_size && bytes.len().is_multiple_of(self.word()),
            "bad response size"
        );
        let entry = self.entry_ptr(self.rsp_prod_pvt);
        if self.word() == 8 {
            let entry = entry.cast::<u64>();
            for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                // SAFETY: an aligned u64 inside the entry (entry_ptr), in the slot of a request
                // already copied out; a volatile store to memory the frontend reads.
                unsafe { entry.add(i).write_volatile(word) };
            }
        } else {
            let entry = entry.cast::<u32>();
            for (i, chunk) in bytes.chunks_exact(4).enumerate() {
                let word = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                // SAFETY: an aligned u32 inside the entry (entry_ptr), as above.
                unsafe { entry.add(i).write_volatile(word) };
            }
        }
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Responses written and not yet published.
    pub fn unpublished(&self) -> u32 {
        self.rsp_prod_pvt.wrapping_sub(self.rsp_prod_pushed)
    }

    /// `RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`: publishes the responses written; `true` when
    /// the frontend asked to be notified of one of them (its `rsp_event` lies in the range
    /// just published).
    pub fn push_responses(&mut self) -> bool {
        let (old, new) = (self.rsp_prod_pushed, self.rsp_prod_pvt);
        if old == new {
            return false;
        }
        // Release (ring.h's wmb): the responses are visible before the index.
        self.index(sring::RSP_PROD).store(new, Ordering::Release);
        self.rsp_prod_pushed = new;
        // ring.h's mb: the frontend sees the new index before we read its rsp_event, or it
        // sees it when it rechecks after setting rsp_event (its final check).
        fence(Ordering::SeqCst);
        let event = self.index(sring::RSP_EVENT).load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: `true` when requests are pending; otherwise asks the
    /// frontend (`req_event`) to notify at the next one, and checks once more for one
    /// published meanwhile.
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingBroken> {
        if self.pending_requests()? > 0 {
            return Ok(true);
        }
        self.index(sring::REQ_EVENT)
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        // ring.h's mb: req_event is visible before req_prod is read again.
        fence(Ordering::SeqCst);
        Ok(self.pending_requests()? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::GrantAccess;
    use crate::testing::{FakeFrontend, FakeGuest};
    use keel_core::xen::blkif::{op, BlkifRequest, BlkifResponse, ENTRY_SIZE};

    fn setup(pages: usize) -> (FakeGuest, FakeFrontend, BackRing) {
        let guest = FakeGuest::new(pages + 1);
        let front = FakeFrontend::new(&guest, 1, pages, 100);
        let map = guest.map(front.ring_refs(), true).expect("map ring");
        let back = BackRing::new(map, ENTRY_SIZE).expect("ring");
        (guest, front, back)
    }

    fn req(id: u64) -> BlkifRequest {
        BlkifRequest {
            operation: op::READ,
            nr_segments: 1,
            id,
            ..Default::default()
        }
    }

    fn answer(back: &mut BackRing, id: u64) {
        let r = BlkifResponse {
            id,
            operation: op::READ,
            ..Default::default()
        };
        back.put_response(&r.to_bytes());
    }

    #[test]
    fn requests_are_copied_in_order_and_answered() {
        let (_g, mut front, mut back) = setup(1);
        assert_eq!(back.entries(), 32);
        for id in 0..5 {
            front.queue(&req(id));
        }
        assert!(front.publish(), "req_event starts at 1");
        let mut buf = [0u8; ENTRY_SIZE];
        for id in 0..5 {
            assert!(back.next_request(&mut buf).unwrap());
            assert_eq!(BlkifRequest::from_bytes(&buf).unwrap().id, id);
        }
        assert!(!back.next_request(&mut buf).unwrap());
        for id in 0..5 {
            answer(&mut back, id);
        }
        assert!(back.push_responses(), "rsp_event starts at 1");
        let ids: Vec<u64> = front.take_responses().iter().map(|r| r.id).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_multi_page_ring_wraps_its_indexes_and_straddles_pages() {
        let (_g, mut front, mut back) = setup(2);
        assert_eq!(back.entries(), 64);
        let mut buf = [0u8; ENTRY_SIZE];
        for round in 0..10u64 {
            for i in 0..50 {
                front.queue(&req(round * 100 + i));
            }
            front.publish();
            for i in 0..50 {
                assert!(back.next_request(&mut buf).unwrap());
                assert_eq!(BlkifRequest::from_bytes(&buf).unwrap().id, round * 100 + i);
                answer(&mut back, round * 100 + i);
            }
            back.push_responses();
            assert_eq!(front.take_responses().len(), 50);
        }
    }

    #[test]
    fn notifications_follow_rsp_event() {
        let (_g, mut front, mut back) = setup(1);
        let mut buf = [0u8; ENTRY_SIZE];
        for id in 0..8 {
            front.queue(&req(id));
        }
        front.publish();
        while back.next_request(&mut buf).unwrap() {}
        answer(&mut back, 0);
        assert!(
            back.push_responses(),
            "the frontend waits for its first response"
        );
        answer(&mut back, 1);
        assert!(!back.push_responses(), "rsp_event still 1: nothing asked");
        assert!(!back.push_responses(), "nothing new: no notification");
        assert_eq!(front.take_responses().len(), 2); // rsp_event = 3
        for id in 2..8 {
            answer(&mut back, id);
        }
        assert!(
            back.push_responses(),
            "one notification for the batch of six"
        );
    }

    #[test]
    fn final_check_sets_req_event_and_sees_late_requests() {
        let (_g, mut front, mut back) = setup(1);
        assert!(!back.final_check_for_requests().unwrap());
        assert_eq!(
            front.shared_index(sring::REQ_EVENT).load(Ordering::Relaxed),
            1
        );
        front.queue(&req(1));
        assert!(front.publish(), "req_event asked for it");
        assert!(back.final_check_for_requests().unwrap());
        let mut buf = [0u8; ENTRY_SIZE];
        assert!(back.next_request(&mut buf).unwrap());
        assert!(!back.final_check_for_requests().unwrap());
        assert_eq!(
            front.shared_index(sring::REQ_EVENT).load(Ordering::Relaxed),
            2
        );
        front.queue(&req(2));
        front.queue(&req(3));
        assert!(front.publish());
    }

    #[test]
    fn hostile_req_prod_breaks_the_ring_for_good() {
        let (_g, mut front, mut back) = setup(1);
        front.set_req_prod(33);
        let mut buf = [0u8; ENTRY_SIZE];
        let err = back.next_request(&mut buf).unwrap_err();
        assert_eq!(err.req_prod, 33);
        assert!(err.to_string().contains("req_prod 33"));
        front.set_req_prod(1);
        assert!(back.next_request(&mut buf).is_err(), "broken stays broken");
        assert!(back.final_check_for_requests().is_err());
        assert_eq!(back.broken(), Some(err));
    }

    #[test]
    fn req_prod_moving_backwards_breaks_the_ring() {
        let (_g, mut front, mut back) = setup(1);
        for id in 0..10 {
            front.queue(&req(id));
        }
        front.publish();
        let mut buf = [0u8; ENTRY_SIZE];
        while back.next_request(&mut buf).unwrap() {}
        for id in 0..5 {
            answer(&mut back, id);
        }
        // 7 is within 32 of the 5 responses, but behind the 10 requests taken.
        front.set_req_prod(7);
        assert!(back.pending_requests().is_err());
    }

    #[test]
    fn a_full_ring_is_not_broken() {
        let (_g, mut front, mut back) = setup(1);
        for id in 0..32 {
            front.queue(&req(id));
        }
        front.publish();
        assert_eq!(back.pending_requests(), Ok(32));
        let mut buf = [0u8; ENTRY_SIZE];
        while back.next_request(&mut buf).unwrap() {}
        assert_eq!(back.unanswered(), 32);
    }

    #[test]
    fn a_ring_of_12_byte_entries_copies_whole_entries_at_4_byte_alignment() {
        use crate::testing::FakeRing;
        use keel_core::xen::netif::{NetifTxRequest, NetifTxResponse, TX_ENTRY_SIZE};

        let guest = FakeGuest::new(2);
        let mut front = FakeRing::new(&guest, 1, 1, 100, TX_ENTRY_SIZE);
        let map = guest.map(front.ring_refs(), true).expect("map ring");
        let mut back = BackRing::new(map, TX_ENTRY_SIZE).expect("ring");
        // (4096 - 64) / 12 = 336, rounded down.
        assert_eq!((back.entries(), front.entries()), (256, 256));
        let mut buf = [0u8; TX_ENTRY_SIZE];
        let mut next = 0u32;
        // Three rounds of 200: the indexes wrap and every slot (odd ones start 4-aligned
        // only) is used.
        for _ in 0..3 {
            for _ in 0..200 {
                let r = NetifTxRequest {
                    gref: 0xdead_0000 | next,
                    offset: next as u16,
                    flags: 0x8421,
                    id: next as u16,
                    size: 0xffff - next as u16,
                };
                front.queue_raw(&r.to_bytes());
                next += 1;
            }
            front.publish();
            for i in next - 200..next {
                assert!(back.next_request(&mut buf).unwrap());
                let r = NetifTxRequest::from_bytes(&buf).unwrap();
                assert_eq!(
                    (r.gref, r.id, r.size),
                    (0xdead_0000 | i, i as u16, 0xffff - i as u16)
                );
                let rsp = NetifTxResponse {
                    id: r.id,
                    status: -1,
                };
                back.put_response(&rsp.to_bytes());
            }
            assert!(!back.next_request(&mut buf).unwrap());
            back.push_responses();
            let rsps = front.take_raw_responses(NetifTxResponse::SIZE);
            let ids: Vec<u16> = rsps
                .iter()
                .map(|b| NetifTxResponse::from_bytes(b).unwrap().id)
                .collect();
            assert_eq!(
                ids,
                (next - 200..next).map(|i| i as u16).collect::<Vec<_>>()
            );
        }
        // A 4-byte response leaves the rest of its slot (the request's last 8 bytes) alone.
        let at = SRING_HEADER_SIZE + ((next - 1) & 255) as usize * TX_ENTRY_SIZE;
        let slot = guest.read(1, at, TX_ENTRY_SIZE);
        assert_eq!(&slot[4..6], &((next - 1) as u16).to_le_bytes());
        assert_eq!(&slot[6..8], &0x8421u16.to_le_bytes());
    }

    #[test]
    fn bad_layouts_are_refused() {
        let guest = FakeGuest::new(1);
        guest.grant(5, 0, false);
        let map = guest.map(&[5], true).unwrap();
        assert!(matches!(
            BackRing::new(map, 10),
            Err(RingLayoutError::Misaligned)
        ));
        let map = guest.map(&[5], true).unwrap();
        assert!(matches!(
            BackRing::new(map, 0),
            Err(RingLayoutError::Misaligned)
        ));
        let map = guest.map(&[5], true).unwrap();
        assert!(matches!(
            BackRing::new(map, 8192),
            Err(RingLayoutError::TooSmall)
        ));
    }
}
