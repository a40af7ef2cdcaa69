//! Checking a request the frontend put on the ring, from the backend's private copy of it.
//!
//! What is refused and how follows Linux blkback (`__do_block_io_op`, `dispatch_rw_block_io`,
//! `dispatch_discard_io`, `xen_vbd_translate`): an unknown operation is answered
//! [`rsp::EOPNOTSUPP`]; a read or write with no segment or more than 11 (0 is a plain flush
//! only for the flush operations), a segment with `first_sect > last_sect` or `last_sect >= 8`,
//! a transfer not aligned to the logical sector size, sectors outside the disk, or a write to
//! a read-only disk are [`rsp::ERROR`]; so is an indirect request with an operation other
//! than read or write or a segment count outside 1..=the published maximum. Discard is
//! [`rsp::EOPNOTSUPP`] unless the disk offers it. The response carries the request's
//! operation, or for an indirect request its `indirect_op` (blkfront checks it).

use keel_core::xen::blkif::{
    self, indirect_pages, op, rsp, BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect,
    BlkifRequestSegment, SECTORS_PER_PAGE, SECTOR_SIZE,
};

/// What requests are checked against: the disk as the frontend was told about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical sector size in bytes (a power of two, 512..=4096).
    pub sector_size: u32,
    /// Writes are refused.
    pub read_only: bool,
    /// Discard is offered.
    pub discard: bool,
    /// The published `feature-max-indirect-segments` (0: no indirect requests).
    pub max_indirect_segments: usize,
}

impl Geometry {
    /// 512-byte sectors per logical sector.
    fn per_sector(&self) -> u64 {
        u64::from((self.sector_size / SECTOR_SIZE).max(1))
    }
}

/// A checked segment: sectors `first_sect..=last_sect` (below 8) of the granted page `gref`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The frontend's grant reference.
    pub gref: u32,
    /// First 512-byte sector in the page.
    pub first_sect: u8,
    /// Last 512-byte sector in the page (inclusive).
    pub last_sect: u8,
}

impl Segment {
    /// Byte offset in the page.
    pub fn offset(&self) -> usize {
        usize::from(self.first_sect) * SECTOR_SIZE as usize
    }

    /// Bytes transferred.
    pub fn len(&self) -> usize {
        self.sectors() as usize * SECTOR_SIZE as usize
    }

    /// Whether no byte is transferred (never, for a checked segment).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// 512-byte sectors transferred.
    pub fn sectors(&self) -> u64 {
        u64::from(self.last_sect - self.first_sect) + 1
    }
}

/// What a request asks the disk to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read the sectors into the segments.
    Read,
    /// Write the segments to the sectors.
    Write,
    /// `FLUSH_DISKCACHE` with segments (blkfront's FUA or preflush write): write, then make
    /// it and everything completed before durable.
    WriteFlush,
    /// `WRITE_BARRIER`: after every request taken before it has completed, write (if it has
    /// segments) and make durable; nothing taken after it starts before it completes.
    Barrier,
    /// `FLUSH_DISKCACHE` without segments: make everything completed durable.
    Flush,
    /// Punch out `sectors` sectors from `sector`.
    Discard,
}

impl Kind {
    /// Whether the request moves data from the frontend to the disk.
    pub fn writes_data(self) -> bool {
        matches!(self, Kind::Write | Kind::WriteFlush | Kind::Barrier)
    }
}

/// A checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The frontend's tag.
    pub id: u64,
    /// The operation to put in the response.
    pub rsp_op: u8,
    /// What to do.
    pub kind: Kind,
    /// First 512-byte sector.
    pub sector: u64,
    /// 512-byte sectors covered (the segments' sum, or a discard's `nr_sectors`).
    pub sectors: u64,
    /// The data pages in disk order (empty for flushes and discards).
    pub segments: Vec<Segment>,
}

impl Request {
    /// Bytes of data the segments hold.
    pub fn data_len(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }
}

/// An indirect request whose segment pages still have to be fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndirectHead {
    /// The frontend's tag.
    pub id: u64,
    /// `indirect_op`, [`op::READ`] or [`op::WRITE`].
    pub indirect_op: u8,
    /// First 512-byte sector.
    pub sector: u64,
    /// Segments in the pages (1..=the published maximum).
    pub nr_segments: usize,
    /// The grant references of the pages holding the segments.
    pub pages: Vec<u32>,
}

/// The outcome of checking a ring entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Ready to serve.
    Ready(Request),
    /// An indirect request: fetch `pages` (one copy of each whole page) and hand them to
    /// [`finish_indirect`].
    Indirect(IndirectHead),
    /// Answer at once with `status`.
    Reject {
        /// The frontend's tag.
        id: u64,
        /// The operation to put in the response.
        rsp_op: u8,
        /// [`rsp::ERROR`] or [`rsp::EOPNOTSUPP`].
        status: i16,
    },
}

/// Checks the ring entry `entry` (the backend's copy, [`blkif::ENTRY_SIZE`] bytes).
pub fn parse(entry: &[u8], geo: &Geometry) -> Parsed {
    let Some(rw) = BlkifRequest::from_bytes(entry) else {
        // Never for a full entry; a short buffer is the caller's bug, answered as an error.
        return Parsed::Reject {
            id: 0,
            rsp_op: 0,
            status: rsp::ERROR,
        };
    };
    let reject = |status| Parsed::Reject {
        id: rw.id,
        rsp_op: rw.operation,
        status,
    };
    let kind = match (rw.operation, rw.nr_segments) {
        (op::READ, _) => Kind::Read,
        (op::WRITE, _) => Kind::Write,
        (op::FLUSH_DISKCACHE, 0) => Kind::Flush,
        (op::FLUSH_DISKCACHE, _) => Kind::WriteFlush,
        (op::WRITE_BARRIER, _) => Kind::Barrier,
        (op::DISCARD, _) => return parse_discard(entry, geo),
        (op::INDIRECT, _) => return parse_indirect(entry, geo),
        _ => return reject(rsp::EOPNOTSUPP),
    };
    let n = usize::from(rw.nr_segments);
    if n > blkif::MAX_SEGMENTS_PER_REQUEST
        || (n == 0 && !matches!(kind, Kind::Flush | Kind::Barrier))
    {
        return reject(rsp::ERROR);
    }
    // A flush without data names no sector: Linux's flush requests carry sector -1
    // (blk_rq_init), which blkfront passes on as it is.
    if n == 0 {
        return Parsed::Ready(Request {
            id: rw.id,
            rsp_op: rw.operation,
            kind,
            sector: 0,
            sectors: 0,
            segments: Vec::new(),
        });
    }
    match check_segments(kind, rw.sector_number, &rw.seg[..n], geo) {
        Ok((segments, sectors)) => Parsed::Ready(Request {
            id: rw.id,
            rsp_op: rw.operation,
            kind,
            sector: rw.sector_number,
            sectors,
            segments,
        }),
        Err(status) => reject(status),
    }
}

fn parse_discard(entry: &[u8], geo: &Geometry) -> Parsed {
    let Some(d) = BlkifRequestDiscard::from_bytes(entry) else {
        return Parsed::Reject {
            id: 0,
            rsp_op: op::DISCARD,
            status: rsp::ERROR,
        };
    };
    let reject = |status| Parsed::Reject {
        id: d.id,
        rsp_op: op::DISCARD,
        status,
    };
    if !geo.discard {
        return reject(rsp::EOPNOTSUPP);
    }
    let per = geo.per_sector();
    let inside = d
        .sector_number
        .checked_add(d.nr_sectors)
        .is_some_and(|end| end <= geo.sectors);
    if !inside || d.sector_number % per != 0 || d.nr_sectors % per != 0 {
        return reject(rsp::ERROR);
    }
    // BLKIF_DISCARD_SECURE is ignored: discard-secure is published as 0.
    Parsed::Ready(Request {
        id: d.id,
        rsp_op: op::DISCARD,
        kind: Kind::Discard,
        sector: d.sector_number,
        sectors: d.nr_sectors,
        segments: Vec::new(),
    })
}

fn parse_indirect(entry: &[u8], geo: &Geometry) -> Parsed {
    let Some(ind) = BlkifRequestIndirect::from_bytes(entry) else {
        return Parsed::Reject {
            id: 0,
            rsp_op: op::INDIRECT,
            status: rsp::ERROR,
        };
    };
    let reject = |status| Parsed::Reject {
        id: ind.id,
        rsp_op: ind.indirect_op,
        status,
    };
    let n = usize::from(ind.nr_segments);
    if !matches!(ind.indirect_op, op::READ | op::WRITE)
        || n == 0
        || n > geo.max_indirect_segments.min(blkif::MAX_INDIRECT_SEGMENTS)
    {
        return reject(rsp::ERROR);
    }
    if ind.indirect_op == op::WRITE && geo.read_only {
        return reject(rsp::ERROR);
    }
    Parsed::Indirect(IndirectHead {
        id: ind.id,
        indirect_op: ind.indirect_op,
        sector: ind.sector_number,
        nr_segments: n,
        pages: ind.indirect_grefs[..indirect_pages(n)].to_vec(),
    })
}

/// Checks an indirect request's segments, read from the backend's copy of its pages (`pages`
/// holds them back to back, at least `nr_segments` entries). `Err` is the response status.
pub fn finish_indirect(head: &IndirectHead, pages: &[u8], geo: &Geometry) -> Result<Request, i16> {
    let mut raw = Vec::with_capacity(head.nr_segments);
    for chunk in pages
        .chunks_exact(BlkifRequestSegment::SIZE)
        .take(head.nr_segments)
    {
        raw.push(BlkifRequestSegment::from_bytes(chunk).ok_or(rsp::ERROR)?);
    }
    if raw.len() != head.nr_segments {
        return Err(rsp::ERROR);
    }
    let kind = if head.indirect_op == op::WRITE {
        Kind::Write
    } else {
        Kind::Read
    };
    let (segments, sectors) = check_segments(kind, head.sector, &raw, geo)?;
    Ok(Request {
        id: head.id,
        rsp_op: head.indirect_op,
        kind,
        sector: head.sector,
        sectors,
        segments,
    })
}

/// Checks the segments of a data request against the page, the sector size and the disk.
/// Returns them with the 512-byte sectors they cover.
fn check_segments(
    kind: Kind,
    sector: u64,
    raw: &[BlkifRequestSegment],
    geo: &Geometry,
) -> Result<(Vec<Segment>, u64), i16> {
    if geo.read_only && kind.writes_data() && !raw.is_empty() {
        return Err(rsp::ERROR);
    }
    let per = geo.per_sector();
    if !sector.is_multiple_of(per) {
        return Err(rsp::ERROR);
    }
    let mut total: u64 = 0;
    let mut segments = Vec::with_capacity(raw.len());
    for s in raw {
        if s.first_sect > s.last_sect || s.last_sect >= SECTORS_PER_PAGE {
            return Err(rsp::ERROR);
        }
        let seg = Segment {
            gref: s.gref,
            first_sect: s.first_sect,
            last_sect: s.last_sect,
        };
        if !seg.sectors().is_multiple_of(per) {
            return Err(rsp::ERROR);
        }
        total += seg.sectors();
        segments.push(seg);
    }
    if sector
        .checked_add(total)
        .is_none_or(|end| end > geo.sectors)
    {
        return Err(rsp::ERROR);
    }
    Ok((segments, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::xen::blkif::{BlkifRequestIndirect, DISCARD_SECURE};

    const GEO: Geometry = Geometry {
        sectors: 1000,
        sector_size: 512,
        read_only: false,
        discard: true,
        max_indirect_segments: 64,
    };

    fn rw(operation: u8, sector: u64, segs: &[(u32, u8, u8)]) -> [u8; 112] {
        let mut r = BlkifRequest {
            operation,
            nr_segments: segs.len() as u8,
            id: 42,
            sector_number: sector,
            ..Default::default()
        };
        for (i, &(gref, first_sect, last_sect)) in segs.iter().enumerate() {
            r.seg[i] = BlkifRequestSegment {
                gref,
                first_sect,
                last_sect,
                pad: [0; 2],
            };
        }
        r.to_bytes()
    }

    /// A ring entry holding `bytes` (a shorter request variant) at its start.
    fn entry(bytes: &[u8]) -> [u8; 112] {
        let mut e = [0xa5; 112];
        e[..bytes.len()].copy_from_slice(bytes);
        e
    }

    fn status(p: Parsed) -> Option<i16> {
        match p {
            Parsed::Reject { status, id, .. } => {
                assert_eq!(id, 42);
                Some(status)
            }
            _ => None,
        }
    }

    #[test]
    fn reads_and_writes_are_checked_segment_by_segment() {
        let Parsed::Ready(r) = parse(&rw(op::READ, 8, &[(7, 0, 7), (8, 2, 3)]), &GEO) else {
            panic!("a good read");
        };
        assert_eq!(
            (r.kind, r.sector, r.sectors, r.data_len()),
            (Kind::Read, 8, 10, 5120)
        );
        assert_eq!(
            r.segments[1],
            Segment {
                gref: 8,
                first_sect: 2,
                last_sect: 3
            }
        );
        assert_eq!(r.segments[1].offset(), 1024);
        assert_eq!(
            status(parse(&rw(op::READ, 0, &[(7, 3, 2)]), &GEO)),
            Some(rsp::ERROR)
        );
        assert_eq!(
            status(parse(&rw(op::READ, 0, &[(7, 0, 8)]), &GEO)),
            Some(rsp::ERROR)
        );
        assert_eq!(
            status(parse(&rw(op::WRITE, 0, &[]), &GEO)),
            Some(rsp::ERROR)
        );
        let mut twelve = rw(op::READ, 0, &[(1, 0, 0)]);
        twelve[1] = 12;
        assert_eq!(status(parse(&twelve, &GEO)), Some(rsp::ERROR));
    }

    #[test]
    fn the_disk_bounds_hold_without_overflow() {
        assert!(matches!(
            parse(&rw(op::WRITE, 992, &[(1, 0, 7)]), &GEO),
            Parsed::Ready(_)
        ));
        assert_eq!(
            status(parse(&rw(op::WRITE, 993, &[(1, 0, 7)]), &GEO)),
            Some(rsp::ERROR)
        );
        assert_eq!(
            status(parse(&rw(op::READ, u64::MAX - 3, &[(1, 0, 7)]), &GEO)),
            Some(rsp::ERROR)
        );
    }

    #[test]
    fn an_empty_flush_names_no_sector() {
        let Parsed::Ready(r) = parse(&rw(op::FLUSH_DISKCACHE, u64::MAX, &[]), &GEO) else {
            panic!("Linux's empty flush (sector -1) refused");
        };
        assert_eq!((r.kind, r.sectors), (Kind::Flush, 0));
        let Parsed::Ready(r) = parse(&rw(op::WRITE_BARRIER, u64::MAX, &[]), &GEO) else {
            panic!("an empty barrier refused");
        };
        assert_eq!(r.kind, Kind::Barrier);
    }

    #[test]
    fn flushes_and_barriers_may_have_no_data() {
        let Parsed::Ready(r) = parse(&rw(op::FLUSH_DISKCACHE, 0, &[]), &GEO) else {
            panic!()
        };
        assert_eq!((r.kind, r.rsp_op), (Kind::Flush, op::FLUSH_DISKCACHE));
        let Parsed::Ready(r) = parse(&rw(op::FLUSH_DISKCACHE, 0, &[(1, 0, 7)]), &GEO) else {
            panic!()
        };
        assert_eq!(r.kind, Kind::WriteFlush);
        let Parsed::Ready(r) = parse(&rw(op::WRITE_BARRIER, 0, &[]), &GEO) else {
            panic!()
        };
        assert_eq!((r.kind, r.segments.len()), (Kind::Barrier, 0));
    }

    #[test]
    fn read_only_refuses_writes_only() {
        let ro = Geometry {
            read_only: true,
            discard: false,
            ..GEO
        };
        assert!(matches!(
            parse(&rw(op::READ, 0, &[(1, 0, 7)]), &ro),
            Parsed::Ready(_)
        ));
        for o in [op::WRITE, op::FLUSH_DISKCACHE, op::WRITE_BARRIER] {
            assert_eq!(
                status(parse(&rw(o, 0, &[(1, 0, 7)]), &ro)),
                Some(rsp::ERROR)
            );
        }
        assert!(matches!(
            parse(&rw(op::FLUSH_DISKCACHE, 0, &[]), &ro),
            Parsed::Ready(_)
        ));
    }

    #[test]
    fn unknown_operations_are_not_supported() {
        for o in [op::RESERVED_1, 7, 200, 255] {
            assert_eq!(
                status(parse(&rw(o, 0, &[(1, 0, 7)]), &GEO)),
                Some(rsp::EOPNOTSUPP)
            );
        }
    }

    #[test]
    fn logical_sector_alignment() {
        let big = Geometry {
            sector_size: 4096,
            ..GEO
        };
        assert!(matches!(
            parse(&rw(op::READ, 8, &[(1, 0, 7)]), &big),
            Parsed::Ready(_)
        ));
        assert_eq!(
            status(parse(&rw(op::READ, 4, &[(1, 0, 7)]), &big)),
            Some(rsp::ERROR)
        );
        assert_eq!(
            status(parse(&rw(op::READ, 8, &[(1, 0, 3)]), &big)),
            Some(rsp::ERROR)
        );
    }

    #[test]
    fn discards() {
        let d = |sector, nr| {
            let d = BlkifRequestDiscard {
                operation: op::DISCARD,
                flag: DISCARD_SECURE,
                id: 42,
                sector_number: sector,
                nr_sectors: nr,
                ..Default::default()
            };
            entry(&d.to_bytes())
        };
        let Parsed::Ready(r) = parse(&d(10, 990), &GEO) else {
            panic!()
        };
        assert_eq!((r.kind, r.sector, r.sectors), (Kind::Discard, 10, 990));
        assert_eq!(status(parse(&d(10, 991), &GEO)), Some(rsp::ERROR));
        assert_eq!(status(parse(&d(u64::MAX, 2), &GEO)), Some(rsp::ERROR));
        let none = Geometry {
            discard: false,
            ..GEO
        };
        assert_eq!(status(parse(&d(0, 8), &none)), Some(rsp::EOPNOTSUPP));
    }

    #[test]
    fn indirect_heads_and_segments() {
        let ind = |indirect_op, nr_segments| {
            let r = BlkifRequestIndirect {
                operation: op::INDIRECT,
                indirect_op,
                nr_segments,
                id: 42,
                sector_number: 16,
                indirect_grefs: [50, 51, 52, 0, 0, 0, 0, 0],
                ..Default::default()
            };
            entry(&r.to_bytes())
        };
        let Parsed::Indirect(head) = parse(&ind(op::WRITE, 20), &GEO) else {
            panic!()
        };
        assert_eq!((head.nr_segments, head.pages.clone()), (20, vec![50]));
        for (o, n) in [
            (op::READ, 0),
            (op::READ, 65),
            (op::FLUSH_DISKCACHE, 4),
            (op::INDIRECT, 4),
        ] {
            let p = parse(&ind(o, n), &GEO);
            assert_eq!(
                p,
                Parsed::Reject {
                    id: 42,
                    rsp_op: o,
                    status: rsp::ERROR
                }
            );
        }
        let mut page = vec![0u8; 4096];
        for i in 0..20 {
            let s = BlkifRequestSegment {
                gref: 100 + i,
                first_sect: 0,
                last_sect: 7,
                pad: [0; 2],
            };
            page[i as usize * 8..][..8].copy_from_slice(&s.to_bytes());
        }
        let r = finish_indirect(&head, &page, &GEO).expect("good segments");
        assert_eq!(
            (r.kind, r.rsp_op, r.sectors, r.segments.len()),
            (Kind::Write, op::WRITE, 160, 20)
        );
        page[19 * 8 + 5] = 9; // last_sect of the 20th segment
        assert_eq!(finish_indirect(&head, &page, &GEO), Err(rsp::ERROR));
        assert_eq!(finish_indirect(&head, &page[..100], &GEO), Err(rsp::ERROR));
    }
}
