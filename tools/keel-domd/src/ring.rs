//! Byte rings shared with a guest: the PV console's `struct xencons_interface` (Xen's
//! xen/include/public/io/console.h: `char in[1024]; char out[2048]; u32 in_cons, in_prod,
//! out_cons, out_prod;`) and XenStore's `struct xenstore_domain_interface` (io/xs_wire.h:
//! `char req[1024]; char rsp[1024]; u32 req_cons, req_prod, rsp_cons, rsp_prod;`). The guest
//! produces `out` (the console's output, XenStore's requests) and consumes `in`; Dom0 the
//! other way round. The indexes run freely (wrapping at 2^32) and are masked by the array's
//! size.
use std::sync::atomic::{AtomicU32, Ordering};

/// Where a ring's arrays and indexes are in its page.
#[derive(Debug)]
pub struct RingLayout {
    in_off: usize,
    in_size: u32,
    out_off: usize,
    out_size: u32,
    in_cons: usize,
    in_prod: usize,
    out_cons: usize,
    out_prod: usize,
    /// Whether confused `out` indexes are resynchronized (the console: its bytes are only
    /// text) rather than reported (XenStore: a byte stream of messages cannot skip bytes).
    resync: bool,
}

impl RingLayout {
    /// Bytes of the page the ring uses.
    pub const fn bytes(&self) -> usize {
        let mut end = self.in_off + self.in_size as usize;
        let others = [
            self.out_off + self.out_size as usize,
            self.in_cons + 4,
            self.in_prod + 4,
            self.out_cons + 4,
            self.out_prod + 4,
        ];
        let mut i = 0;
        while i < others.len() {
            if others[i] > end {
                end = others[i];
            }
            i += 1;
        }
        end
    }
}

/// The PV console's ring.
pub const CONSOLE: RingLayout = RingLayout {
    in_off: 0,
    in_size: 1024,
    out_off: 1024,
    out_size: 2048,
    in_cons: 3072,
    in_prod: 3076,
    out_cons: 3080,
    out_prod: 3084,
    resync: true,
};

/// XenStore's ring (`in` = `rsp`, `out` = `req`).
pub const XENSTORE: RingLayout = RingLayout {
    in_off: 1024,
    in_size: 1024,
    out_off: 0,
    out_size: 1024,
    in_cons: 2056,
    in_prod: 2060,
    out_cons: 2048,
    out_prod: 2052,
    resync: false,
};

/// The guest's indexes of a ring that cannot be resynchronized are further apart than the
/// array: it no longer follows the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confused;

/// Dom0's end of a byte ring in shared memory.
///
/// # Invariants
///
/// `base` points at `layout.bytes()` or more bytes of memory, 4-byte aligned, that stay
/// mapped while this value lives and that are only ever accessed through raw pointers (by the
/// guest, and by this value with atomic and volatile accesses).
#[derive(Debug)]
pub struct ByteRing {
    base: *mut u8,
    layout: &'static RingLayout,
}

/// The console's ring.
pub type ConsoleRing = ByteRing;

// SAFETY: the ring is shared memory accessed only with atomics and volatile copies, which are
// as sound from any thread as from the one that made the value.
unsafe impl Send for ByteRing {}

impl ByteRing {
    /// Dom0's end of the console ring at `base`.
    ///
    /// # Safety
    ///
    /// As for [`ByteRing::with_layout`].
    pub unsafe fn new(base: *mut u8) -> Self {
        // SAFETY: the caller's contract.
        unsafe { Self::with_layout(base, &CONSOLE) }
    }

    /// Dom0's end of a ring laid out as `layout` at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point at `layout.bytes()` or more bytes, 4-byte aligned, that stay valid
    /// for the value's life and that nothing accesses through Rust references.
    pub unsafe fn with_layout(base: *mut u8, layout: &'static RingLayout) -> Self {
        assert!((base as usize).is_multiple_of(4), "ring misaligned");
        Self { base, layout }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the layout's four index offsets, below its bytes() and
        // 4-aligned from a 4-aligned base: a valid, aligned u32 in the live mapping (type
        // invariant), accessed only atomically by us (the guest's plain accesses to an aligned
        // u32 are single instructions on x86).
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }

    /// Takes what the guest wrote since the last call (at most the array's size), appending
    /// it to `into`, and publishes the new consumer index. Returns the bytes taken. Indexes
    /// more than the array apart are resynchronized (their bytes dropped, `Ok(0)`) or
    /// reported, as the layout says.
    pub fn read_out(&self, into: &mut Vec<u8>) -> Result<usize, Confused> {
        let l = self.layout;
        let cons = self.index(l.out_cons).load(Ordering::Relaxed);
        // Acquire: the guest's bytes are visible once its producer index is.
        let prod = self.index(l.out_prod).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(cons);
        if avail > l.out_size {
            if !l.resync {
                return Err(Confused);
            }
            self.index(l.out_cons).store(prod, Ordering::Release);
            return Ok(0);
        }
        for i in 0..avail {
            let at = l.out_off + (cons.wrapping_add(i) & (l.out_size - 1)) as usize;
            // SAFETY: `at` < out_off + out_size <= bytes(): inside the mapping (type
            // invariant); a volatile byte read of memory the guest may write concurrently.
            into.push(unsafe { self.base.add(at).read_volatile() });
        }
        // Release: our reads of the bytes complete before the guest sees the space free.
        self.index(l.out_cons)
            .store(cons.wrapping_add(avail), Ordering::Release);
        Ok(avail as usize)
    }

    /// Puts as much of `bytes` as fits into `in` and publishes the new producer index.
    /// Returns how many bytes went in (0 when the ring is full); confused indexes take nothing.
    pub fn write_in(&self, bytes: &[u8]) -> Result<usize, Confused> {
        let l = self.layout;
        // Acquire: the guest is done reading the bytes it consumed before we overwrite them.
        let cons = self.index(l.in_cons).load(Ordering::Acquire);
        let prod = self.index(l.in_prod).load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > l.in_size {
            return Err(Confused);
        }
        let n = (l.in_size - used).min(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        for (i, &b) in bytes.iter().take(n as usize).enumerate() {
            let at = l.in_off + (prod.wrapping_add(i as u32) & (l.in_size - 1)) as usize;
            // SAFETY: `at` < in_off + in_size <= bytes(): inside the mapping (type
            // invariant); a volatile byte write to memory the guest reads concurrently.
            unsafe { self.base.add(at).write_volatile(b) };
        }
        // Release: the bytes are written before the guest sees the producer index move.
        self.index(l.in_prod)
            .store(prod.wrapping_add(n), Ordering::Release);
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_OFF: usize = CONSOLE.in_off;
    const IN_SIZE: u32 = CONSOLE.in_size;
    const OUT_OFF: usize = CONSOLE.out_off;
    const OUT_SIZE: u32 = CONSOLE.out_size;
    const IN_CONS: usize = CONSOLE.in_cons;
    const IN_PROD: usize = CONSOLE.in_prod;
    const OUT_CONS: usize = CONSOLE.out_cons;
    const OUT_PROD: usize = CONSOLE.out_prod;

    /// A page standing in for the guest's, with the guest's side of the protocol.
    struct Page(Box<[u64; 512]>);

    impl Page {
        fn new() -> Self {
            Self(Box::new([0; 512]))
        }
        fn ptr(&mut self) -> *mut u8 {
            self.0.as_mut_ptr().cast()
        }
        fn get(&mut self, off: usize) -> u32 {
            // SAFETY: an aligned u32 inside the 4096-byte page.
            unsafe { self.ptr().add(off).cast::<u32>().read_volatile() }
        }
        fn set(&mut self, off: usize, v: u32) {
            // SAFETY: an aligned u32 inside the 4096-byte page.
            unsafe { self.ptr().add(off).cast::<u32>().write_volatile(v) }
        }
        /// The guest writes `bytes` into `out`, as hvc_xen's `__write_console` does.
        fn guest_write(&mut self, bytes: &[u8]) {
            let prod = self.get(OUT_PROD);
            for (i, &b) in bytes.iter().enumerate() {
                let at = OUT_OFF + (prod.wrapping_add(i as u32) & (OUT_SIZE - 1)) as usize;
                // SAFETY: inside the page.
                unsafe { self.ptr().add(at).write_volatile(b) };
            }
            self.set(OUT_PROD, prod.wrapping_add(bytes.len() as u32));
        }
        /// The guest reads everything in `in`, as `domU_read_console` does.
        fn guest_read(&mut self) -> Vec<u8> {
            let (cons, prod) = (self.get(IN_CONS), self.get(IN_PROD));
            let mut v = Vec::new();
            let mut c = cons;
            while c != prod {
                let at = IN_OFF + (c & (IN_SIZE - 1)) as usize;
                // SAFETY: inside the page.
                v.push(unsafe { self.ptr().add(at).read_volatile() });
                c = c.wrapping_add(1);
            }
            self.set(IN_CONS, prod);
            v
        }
    }

    fn ring(page: &mut Page) -> ConsoleRing {
        // SAFETY: the page is 4096 bytes, 8-aligned, outlives the ring in each test and is
        // only touched through raw pointers.
        unsafe { ConsoleRing::new(page.ptr()) }
    }

    #[test]
    fn output_in_order_and_cons_published() {
        let mut p = Page::new();
        let r = ring(&mut p);
        let mut got = Vec::new();
        assert_eq!(r.read_out(&mut got).unwrap(), 0);
        p.guest_write(b"hello ");
        p.guest_write(b"world\n");
        assert_eq!(r.read_out(&mut got).unwrap(), 12);
        assert_eq!(got, b"hello world\n");
        assert_eq!(p.get(OUT_CONS), 12);
        assert_eq!(r.read_out(&mut got).unwrap(), 0);
    }

    #[test]
    fn output_wraps_the_array_and_the_index() {
        let mut p = Page::new();
        // Indexes just below 2^32, and at an array offset 4 bytes before the end.
        let start = u32::MAX - 3 - OUT_SIZE * 3;
        let start = start - (start & (OUT_SIZE - 1)) + OUT_SIZE - 4;
        p.set(OUT_CONS, start);
        p.set(OUT_PROD, start);
        let r = ring(&mut p);
        let mut got = Vec::new();
        let mut sent = Vec::new();
        for round in 0..(3 * OUT_SIZE / 100 + 5) {
            let chunk: Vec<u8> = (0..100).map(|i| (round * 7 + i) as u8).collect();
            p.guest_write(&chunk);
            sent.extend_from_slice(&chunk);
            r.read_out(&mut got).unwrap();
        }
        assert!(p.get(OUT_PROD) < start, "the index wrapped past 2^32");
        assert_eq!(got, sent);
        assert_eq!(p.get(OUT_CONS), p.get(OUT_PROD));
    }

    #[test]
    fn a_full_output_ring_is_read_whole() {
        let mut p = Page::new();
        let r = ring(&mut p);
        let full: Vec<u8> = (0..OUT_SIZE).map(|i| (i % 251) as u8).collect();
        p.guest_write(&full);
        let mut got = Vec::new();
        assert_eq!(r.read_out(&mut got).unwrap(), OUT_SIZE as usize);
        assert_eq!(got, full);
    }

    #[test]
    fn confused_output_indexes_are_resynchronized() {
        let mut p = Page::new();
        p.set(OUT_CONS, 10);
        p.set(OUT_PROD, 10 + OUT_SIZE + 1);
        let r = ring(&mut p);
        let mut got = Vec::new();
        assert_eq!(r.read_out(&mut got), Ok(0));
        assert!(got.is_empty());
        assert_eq!(p.get(OUT_CONS), 10 + OUT_SIZE + 1);
        // Behind cons (prod < cons) is as confused.
        p.set(OUT_PROD, 5);
        assert_eq!(r.read_out(&mut got).unwrap(), 0);
        assert_eq!(p.get(OUT_CONS), 5);
    }

    #[test]
    fn input_fills_to_the_guests_cons_and_wraps() {
        let mut p = Page::new();
        p.set(IN_CONS, u32::MAX - 9);
        p.set(IN_PROD, u32::MAX - 9);
        let r = ring(&mut p);
        let big: Vec<u8> = (0..1500u32).map(|i| (i % 256) as u8).collect();
        assert_eq!(r.write_in(&big), Ok(IN_SIZE as usize));
        assert_eq!(r.write_in(b"x"), Ok(0), "full");
        assert_eq!(p.guest_read(), &big[..IN_SIZE as usize]);
        assert_eq!(
            r.write_in(&big[IN_SIZE as usize..]),
            Ok(1500 - IN_SIZE as usize)
        );
        assert_eq!(p.guest_read(), &big[IN_SIZE as usize..]);
        assert_eq!(p.get(IN_PROD), (u32::MAX - 9).wrapping_add(1500));
    }

    #[test]
    fn confused_input_indexes_take_nothing() {
        let mut p = Page::new();
        p.set(IN_CONS, 0);
        p.set(IN_PROD, IN_SIZE + 5);
        let r = ring(&mut p);
        assert_eq!(r.write_in(b"abc"), Err(Confused));
        assert_eq!(p.get(IN_PROD), IN_SIZE + 5);
    }

    #[test]
    fn xenstore_layout_and_confusion() {
        let mut p = Page::new();
        // SAFETY: as in `ring`.
        let r = unsafe { ByteRing::with_layout(p.ptr(), &XENSTORE) };
        // The guest's request: req at 0, req_prod at 2052.
        // SAFETY: inside the page.
        unsafe { p.ptr().write_volatile(b'R') };
        p.set(2052, 1);
        let mut got = Vec::new();
        assert_eq!(r.read_out(&mut got), Ok(1));
        assert_eq!(got, b"R");
        assert_eq!(p.get(2048), 1, "req_cons");
        // Our response: rsp at 1024, rsp_prod at 2060.
        assert_eq!(r.write_in(b"A"), Ok(1));
        // SAFETY: inside the page.
        assert_eq!(unsafe { p.ptr().add(1024).read_volatile() }, b'A');
        assert_eq!(p.get(2060), 1);
        // Confused request indexes are reported, not skipped.
        p.set(2052, 1 + 1025);
        assert_eq!(r.read_out(&mut got), Err(Confused));
        assert_eq!(p.get(2048), 1);
        assert_eq!(XENSTORE.bytes(), 2064);
        assert_eq!(CONSOLE.bytes(), 3088);
    }
}
