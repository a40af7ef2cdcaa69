//! The root-mode log ring.
//!
//! Code that runs in VMX root mode (or with the host's state saved on AMD) may have interrupted
//! Linux anywhere, holding any lock, so it cannot call printk. It formats into a fixed-size
//! record of a ring instead, and Dom0 drains the ring into the kernel log later. There is one
//! ring per CPU: root mode on a CPU is the only writer of that CPU's ring (it runs with
//! interrupts off and does not nest; an NMI handler in root mode must not log), and the Dom0
//! drain is the only reader, so the ring is a single-producer, single-consumer queue and needs
//! no lock. A full ring drops new records and counts them: the writer never waits for Dom0.

use core::{
    cell::UnsafeCell,
    fmt,
    sync::atomic::{AtomicU32, Ordering},
};

/// Bytes of message text per record.
pub const MSG_LEN: usize = 116;

/// Severity of a record, with printk's numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Level {
    /// Something is broken (a domain was killed, say).
    Err = 3,
    /// Something unexpected that Keel handled.
    Warn = 4,
    /// Normal but worth knowing.
    Info = 6,
    /// Debugging detail.
    Debug = 7,
}

/// One log record.
#[derive(Clone, Copy)]
pub struct Record {
    /// Severity.
    pub level: Level,
    len: u8,
    msg: [u8; MSG_LEN],
}

impl Record {
    const EMPTY: Record = Record {
        level: Level::Debug,
        len: 0,
        msg: [0; MSG_LEN],
    };

    /// The message text (truncated to [`MSG_LEN`] bytes, on a character boundary).
    pub fn msg(&self) -> &str {
        let bytes = &self.msg[..usize::from(self.len)];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Truncation is on a character boundary, so this cannot happen; be safe anyway.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Formats into a record's text, truncating what does not fit.
struct Writer<'a> {
    rec: &'a mut Record,
}

impl fmt::Write for Writer<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let used = usize::from(self.rec.len);
        let room = MSG_LEN - used;
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.rec.msg[used..used + n].copy_from_slice(&s.as_bytes()[..n]);
        // n <= MSG_LEN < 256.
        self.rec.len += n as u8;
        // Once a piece is cut, the text is full: a shorter piece after it must not follow
        // (the record would then skip text, not end early). The error stops `fmt::write`.
        if n < s.len() {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// A single-producer, single-consumer ring of `N` records (`N` a power of two).
///
/// # Invariants
///
/// `tail <= head <= tail + N` (in wrapping arithmetic); slots `tail..head` hold records the
/// reader has not taken, and only the writer touches slots `head..tail + N`.
pub struct LogRing<const N: usize> {
    /// Records written; advanced only by the writer.
    head: AtomicU32,
    /// Records read; advanced only by the reader.
    tail: AtomicU32,
    /// Records dropped because the ring was full.
    dropped: AtomicU32,
    slots: [UnsafeCell<Record>; N],
}

// SAFETY: Slots are shared between one writer and one reader, which by the type's invariant
// never access the same slot at once: the writer only writes slots outside `tail..head`, the
// reader only reads slots inside it, and the Release/Acquire pairs on `head` and `tail` order
// the slot accesses with the index updates.
unsafe impl<const N: usize> Sync for LogRing<N> {}

impl<const N: usize> Default for LogRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LogRing<N> {
    const SIZE_OK: () = assert!(N.is_power_of_two() && N <= 1 << 16);

    /// An empty ring.
    pub const fn new() -> Self {
        let () = Self::SIZE_OK;
        Self {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            dropped: AtomicU32::new(0),
            slots: [const { UnsafeCell::new(Record::EMPTY) }; N],
        }
    }

    /// Appends a record; returns false (and counts a drop) when the ring is full.
    ///
    /// Only one context may write to a ring: the root-mode code of the ring's CPU.
    pub fn write(&self, level: Level, args: fmt::Arguments<'_>) -> bool {
        let head = self.head.load(Ordering::Relaxed);
        let tail = self.tail.load(Ordering::Acquire);
        if head.wrapping_sub(tail) as usize >= N {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let slot = &self.slots[head as usize % N];
        // SAFETY: `head - tail < N`, so slot `head` is outside `tail..head`: by the invariant
        // the reader does not touch it, and this is the only writer.
        let rec = unsafe { &mut *slot.get() };
        rec.level = level;
        rec.len = 0;
        // Writer::write_str fails only once the text is full; a Display impl that fails just
        // leaves the text short.
        let _ = fmt::write(&mut Writer { rec }, args);
        // INVARIANT: the slot is complete before `head` publishes it.
        self.head.store(head.wrapping_add(1), Ordering::Release);
        true
    }

    /// Takes the oldest record, if any. Only one context may read a ring: the Dom0 drain.
    pub fn read(&self) -> Option<Record> {
        let tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        if tail == head {
            return None;
        }
        // SAFETY: `tail != head`, so slot `tail` is inside `tail..head`: the writer published it
        // (Acquire on `head` above) and does not touch it until `tail` moves past it.
        let rec = unsafe { *self.slots[tail as usize % N].get() };
        // INVARIANT: the copy is taken before `tail` hands the slot back to the writer.
        self.tail.store(tail.wrapping_add(1), Ordering::Release);
        Some(rec)
    }

    /// Takes the count of records dropped since the last call.
    pub fn take_dropped(&self) -> u32 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_in_order() {
        let ring = LogRing::<4>::new();
        assert!(ring.read().is_none());
        for i in 0..3 {
            assert!(ring.write(Level::Info, format_args!("exit {i} on cpu {}", 1)));
        }
        for i in 0..3 {
            let r = ring.read().unwrap();
            assert_eq!(r.level, Level::Info);
            assert_eq!(r.msg(), format!("exit {i} on cpu 1"));
        }
        assert!(ring.read().is_none());
    }

    #[test]
    fn full_ring_drops_and_counts() {
        let ring = LogRing::<2>::new();
        assert!(ring.write(Level::Warn, format_args!("a")));
        assert!(ring.write(Level::Warn, format_args!("b")));
        assert!(!ring.write(Level::Warn, format_args!("c")));
        assert!(!ring.write(Level::Warn, format_args!("d")));
        assert_eq!(ring.take_dropped(), 2);
        assert_eq!(ring.take_dropped(), 0);
        assert_eq!(ring.read().unwrap().msg(), "a");
        assert!(ring.write(Level::Err, format_args!("e")));
        assert_eq!(ring.read().unwrap().msg(), "b");
        assert_eq!(ring.read().unwrap().msg(), "e");
    }

    #[test]
    fn long_messages_truncate_on_char_boundary() {
        let ring = LogRing::<2>::new();
        let long = "é".repeat(100); // 200 bytes
        ring.write(Level::Debug, format_args!("{long}"));
        let r = ring.read().unwrap();
        assert_eq!(r.msg().len(), MSG_LEN);
        assert!(r.msg().chars().all(|c| c == 'é'));
    }

    #[test]
    fn text_after_a_cut_piece_is_dropped() {
        // Found by keel-fuzz's logring target: with 1 byte of room left, "€" (3 bytes) was cut
        // to nothing and the "z" after it still fitted, so the text skipped the "€".
        let ring = LogRing::<2>::new();
        let fill = "a".repeat(MSG_LEN - 1);
        ring.write(Level::Info, format_args!("{fill}{}{}", "€", "z"));
        assert_eq!(ring.read().unwrap().msg(), fill);
    }

    #[test]
    fn indices_wrap() {
        let ring = LogRing::<4>::new();
        ring.head.store(u32::MAX - 1, Ordering::Relaxed);
        ring.tail.store(u32::MAX - 1, Ordering::Relaxed);
        for i in 0..10 {
            assert!(ring.write(Level::Info, format_args!("{i}")));
            assert_eq!(ring.read().unwrap().msg(), i.to_string());
        }
    }

    #[test]
    fn concurrent_writer_and_reader() {
        use std::sync::Arc;
        let ring = Arc::new(LogRing::<8>::new());
        let writer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                let mut written = 0u32;
                for i in 0..20000u32 {
                    if ring.write(Level::Info, format_args!("{i}")) {
                        written += 1;
                    }
                }
                written
            })
        };
        let mut last: Option<u32> = None;
        let mut read = 0u32;
        loop {
            match ring.read() {
                Some(r) => {
                    let v: u32 = r.msg().parse().unwrap();
                    // Records arrive in order, intact (never half-written).
                    assert!(last.is_none_or(|l| v > l), "{v} after {last:?}");
                    last = Some(v);
                    read += 1;
                }
                // Once the writer is done, the drain after `join` below takes the rest.
                None if writer.is_finished() => break,
                None => std::hint::spin_loop(),
            }
        }
        let written = writer.join().unwrap();
        // Drain anything published between the last two checks.
        while ring.read().is_some() {
            read += 1;
        }
        assert_eq!(read, written);
        assert_eq!(written + ring.take_dropped(), 20000);
    }
}
