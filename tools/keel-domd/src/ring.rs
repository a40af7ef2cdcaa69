//! The PV console ring: `struct xencons_interface` at offset 0 of the console page (Xen's
//! xen/include/public/io/console.h): `char in[1024]; char out[2048]; u32 in_cons, in_prod,
//! out_cons, out_prod;`. The guest produces `out` and consumes `in`; Dom0 the other way round.
//! The indexes run freely (wrapping at 2^32) and are masked by the array's size.
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of `in` (Dom0 to guest).
pub const IN_SIZE: u32 = 1024;
/// Size of `out` (guest to Dom0).
pub const OUT_SIZE: u32 = 2048;
const IN_OFF: usize = 0;
const OUT_OFF: usize = 1024;
const IN_CONS: usize = 3072;
const IN_PROD: usize = 3076;
const OUT_CONS: usize = 3080;
const OUT_PROD: usize = 3084;
/// Bytes of the page the ring uses.
pub const RING_BYTES: usize = 3088;

/// Dom0's end of a console ring in shared memory.
///
/// # Invariants
///
/// `base` points at [`RING_BYTES`] or more bytes of memory, 4-byte aligned, that stay mapped
/// while this value lives and that are only ever accessed through raw pointers (by the guest,
/// and by this value with atomic and volatile accesses).
#[derive(Debug)]
pub struct ConsoleRing {
    base: *mut u8,
}

// SAFETY: the ring is shared memory accessed only with atomics and volatile copies, which are
// as sound from any thread as from the one that made the value.
unsafe impl Send for ConsoleRing {}

impl ConsoleRing {
    /// Dom0's end of the ring at `base`.
    ///
    /// # Safety
    ///
    /// `base` must point at [`RING_BYTES`] or more bytes, 4-byte aligned, that stay valid for
    /// the value's life and that nothing accesses through Rust references.
    pub unsafe fn new(base: *mut u8) -> Self {
        assert!((base as usize).is_multiple_of(4), "console ring misaligned");
        Self { base }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is one of the four index offsets, below RING_BYTES and 4-aligned
        // from a 4-aligned base: a valid, aligned u32 in the live mapping (type invariant),
        // accessed only atomically by us (the guest's plain accesses to an aligned u32 are
        // single instructions on x86).
        unsafe { AtomicU32::from_ptr(self.base.add(offset).cast()) }
    }

    /// Takes what the guest wrote since the last call (at most [`OUT_SIZE`] bytes), appending
    /// it to `into`, and publishes the new `out_cons`. Returns the bytes taken. A ring whose
    /// indexes are more than the array apart (a confused guest) is resynchronized: its bytes
    /// are dropped.
    pub fn read_out(&self, into: &mut Vec<u8>) -> usize {
        let cons = self.index(OUT_CONS).load(Ordering::Relaxed);
        // Acquire: the guest's bytes are visible once its out_prod is.
        let prod = self.index(OUT_PROD).load(Ordering::Acquire);
        let avail = prod.wrapping_sub(cons);
        if avail > OUT_SIZE {
            self.index(OUT_CONS).store(prod, Ordering::Release);
            return 0;
        }
        for i in 0..avail {
            let at = OUT_OFF + (cons.wrapping_add(i) & (OUT_SIZE - 1)) as usize;
            // SAFETY: `at` < OUT_OFF + OUT_SIZE <= RING_BYTES: inside the mapping (type
            // invariant); a volatile byte read of memory the guest may write concurrently.
            into.push(unsafe { self.base.add(at).read_volatile() });
        }
        // Release: our reads of the bytes complete before the guest sees the space free.
        self.index(OUT_CONS)
            .store(cons.wrapping_add(avail), Ordering::Release);
        avail as usize
    }

    /// Puts as much of `bytes` as fits into `in` and publishes the new `in_prod`. Returns how
    /// many bytes went in (0 when the ring is full or its indexes are confused).
    pub fn write_in(&self, bytes: &[u8]) -> usize {
        // Acquire: the guest is done reading the bytes it consumed before we overwrite them.
        let cons = self.index(IN_CONS).load(Ordering::Acquire);
        let prod = self.index(IN_PROD).load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used > IN_SIZE {
            return 0;
        }
        let n = (IN_SIZE - used).min(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        for (i, &b) in bytes.iter().take(n as usize).enumerate() {
            let at = IN_OFF + (prod.wrapping_add(i as u32) & (IN_SIZE - 1)) as usize;
            // SAFETY: `at` < IN_SIZE <= RING_BYTES: inside the mapping (type invariant); a
            // volatile byte write to memory the guest reads concurrently.
            unsafe { self.base.add(at).write_volatile(b) };
        }
        // Release: the bytes are written before the guest sees in_prod move.
        self.index(IN_PROD)
            .store(prod.wrapping_add(n), Ordering::Release);
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(r.read_out(&mut got), 0);
        p.guest_write(b"hello ");
        p.guest_write(b"world\n");
        assert_eq!(r.read_out(&mut got), 12);
        assert_eq!(got, b"hello world\n");
        assert_eq!(p.get(OUT_CONS), 12);
        assert_eq!(r.read_out(&mut got), 0);
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
            r.read_out(&mut got);
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
        assert_eq!(r.read_out(&mut got), OUT_SIZE as usize);
        assert_eq!(got, full);
    }

    #[test]
    fn confused_output_indexes_are_resynchronized() {
        let mut p = Page::new();
        p.set(OUT_CONS, 10);
        p.set(OUT_PROD, 10 + OUT_SIZE + 1);
        let r = ring(&mut p);
        let mut got = Vec::new();
        assert_eq!(r.read_out(&mut got), 0);
        assert!(got.is_empty());
        assert_eq!(p.get(OUT_CONS), 10 + OUT_SIZE + 1);
        // Behind cons (prod < cons) is as confused.
        p.set(OUT_PROD, 5);
        assert_eq!(r.read_out(&mut got), 0);
        assert_eq!(p.get(OUT_CONS), 5);
    }

    #[test]
    fn input_fills_to_the_guests_cons_and_wraps() {
        let mut p = Page::new();
        p.set(IN_CONS, u32::MAX - 9);
        p.set(IN_PROD, u32::MAX - 9);
        let r = ring(&mut p);
        let big: Vec<u8> = (0..1500u32).map(|i| (i % 256) as u8).collect();
        assert_eq!(r.write_in(&big), IN_SIZE as usize);
        assert_eq!(r.write_in(b"x"), 0, "full");
        assert_eq!(p.guest_read(), &big[..IN_SIZE as usize]);
        assert_eq!(
            r.write_in(&big[IN_SIZE as usize..]),
            1500 - IN_SIZE as usize
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
        assert_eq!(r.write_in(b"abc"), 0);
        assert_eq!(p.get(IN_PROD), IN_SIZE + 5);
    }
}
