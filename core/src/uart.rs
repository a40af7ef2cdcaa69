//! A polled 8250-compatible UART transmitter, for root mode's error records.
//!
//! The log ring needs Dom0 to drain it. When a CPU cannot go back to Dom0 (a triple fault, a
//! failed entry) and the other CPUs then wedge waiting for it, the ring's last records never
//! reach the kernel log. With the module's `log_port` set, root mode also writes its error
//! records straight to a serial port, by polling the line status register: no interrupt, no
//! lock, nothing of Linux's. The wait for room in the transmitter is bounded, so a missing or
//! stuck UART costs time but never hangs root mode. Linux may drive the same UART meanwhile,
//! without any lock shared with root mode: characters of the two interleave, and when both fill
//! the transmit FIFO at once a byte of either can be lost, which is acceptable for a debugging
//! aid. Only bytes are written: the speed and word length are whatever the UART was set to.

use core::fmt;

/// Port I/O, supplied by the caller (the module's IN/OUT; a fake in the tests).
pub trait PortIo {
    /// Reads a byte from `port`.
    fn inb(&mut self, port: u16) -> u8;
    /// Writes `value` to `port`.
    fn outb(&mut self, port: u16, value: u8);
}

/// Offset of the line status register from the UART's base.
const LSR: u16 = 5;
/// LSR: the transmit holding register is empty.
const LSR_THRE: u8 = 1 << 5;
/// Reads of LSR before a byte is sent anyway. At 9600 baud a byte takes about a millisecond;
/// this is far more polls than that on any CPU, and a bound all the same.
pub const MAX_POLLS: u32 = 1 << 20;

/// The prefix of every line, which tells the mirror from the drained copy in the kernel log.
pub const PREFIX: &str = "keel[root]: ";

/// A UART at an I/O base, written as `fmt::Write` (newlines become CR LF).
pub struct Uart<P: PortIo> {
    io: P,
    base: u16,
}

impl<P: PortIo> Uart<P> {
    /// The UART whose registers start at `base` (0x3f8 for COM1).
    pub fn new(io: P, base: u16) -> Self {
        Self { io, base }
    }

    /// Sends one byte once the transmitter has room, or after [`MAX_POLLS`] reads of LSR.
    pub fn put(&mut self, byte: u8) {
        for _ in 0..MAX_POLLS {
            if self.io.inb(self.base + LSR) & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        self.io.outb(self.base, byte);
    }

    /// Writes one record as a line: [`PREFIX`], the text, CR LF.
    pub fn line(&mut self, args: fmt::Arguments<'_>) {
        // `write_str` never fails.
        let _ = fmt::Write::write_str(self, PREFIX);
        let _ = fmt::write(self, args);
        let _ = fmt::Write::write_str(self, "\n");
    }

    /// The port I/O (for the tests).
    pub fn io(&self) -> &P {
        &self.io
    }
}

impl<P: PortIo> fmt::Write for Uart<P> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UART whose transmitter is busy for `busy` LSR reads after each byte it is sent.
    struct Fake {
        busy: u32,
        left: u32,
        polls: u32,
        out: Vec<(u16, u8)>,
        bad_reads: u32,
    }

    impl Fake {
        fn new(busy: u32) -> Self {
            Self {
                busy,
                left: 0,
                polls: 0,
                out: Vec::new(),
                bad_reads: 0,
            }
        }
        fn text(&self) -> String {
            self.out.iter().map(|&(_, b)| b as char).collect()
        }
    }

    impl PortIo for Fake {
        fn inb(&mut self, port: u16) -> u8 {
            if port != 0x3f8 + LSR {
                self.bad_reads += 1;
                return 0;
            }
            self.polls += 1;
            if self.left == 0 {
                LSR_THRE
            } else {
                self.left -= 1;
                0
            }
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.out.push((port, value));
            self.left = self.busy;
        }
    }

    #[test]
    fn a_line_has_the_prefix_and_ends_in_cr_lf() {
        let mut u = Uart::new(Fake::new(0), 0x3f8);
        u.line(format_args!("CPU {}: triple fault\nrip={:#x}", 1, 0x10));
        let io = u.io();
        assert_eq!(io.text(), "keel[root]: CPU 1: triple fault\r\nrip=0x10\r\n");
        assert!(io.out.iter().all(|&(p, _)| p == 0x3f8));
        assert_eq!(io.bad_reads, 0);
    }

    #[test]
    fn each_byte_waits_for_the_transmitter() {
        let mut u = Uart::new(Fake::new(3), 0x3f8);
        u.line(format_args!("ab"));
        let n = u.io().out.len() as u32;
        assert_eq!(u.io().text(), "keel[root]: ab\r\n");
        // The first byte goes after its LSR check: 3 busy reads apply from the second on.
        assert_eq!(u.io().polls, 1 + (n - 1) * 4);
    }

    #[test]
    fn a_stuck_transmitter_costs_a_bounded_wait() {
        let mut u = Uart::new(Fake::new(u32::MAX), 0x3f8);
        u.put(b'x');
        u.put(b'y');
        assert_eq!(u.io().text(), "xy");
        // The first byte finds THRE (nothing written yet); the second gives up after the bound.
        assert_eq!(u.io().polls, 1 + MAX_POLLS);
    }
}
