//! A vif's transmit rate limit (`rate=` in xl.cfg): a credit of bytes the guest may send,
//! replenished every interval, as Xen's netback applies it to what the guest transmits.
//!
//! A packet goes while there is credit left, and takes its length from it, into debt if it
//! is larger; without credit it waits, unanswered, for the next replenishment (the queue stops
//! taking transmit requests meanwhile, so the guest's ring fills and its own queue backs off).
//! The debt is paid from the intervals that follow, so the rate holds on average, and a large
//! packet (a 64 KiB GSO one at a low rate) never waits for more credit than a small one: one
//! queue's small packets cannot starve another's large one. Unused credit accumulates up to
//! one interval's worth or 128 KiB, whichever is more. One shaper is shared by every queue of
//! the vif: the rate is the vif's.

use std::time::{Duration, Instant};

/// The most unused credit kept when an interval's worth is less: enough for the largest
/// packet (64 KiB) with room to spare.
const MIN_BURST: u64 = 128 * 1024;

/// The credit state of one vif.
#[derive(Debug)]
pub struct Shaper {
    per_interval: u64,
    interval: Duration,
    /// Bytes that may still go; negative: the debt of the last packet admitted.
    credit: i128,
    /// When the credit was last replenished.
    window: Instant,
}

impl Shaper {
    /// `bytes` of credit every `interval` (at least one byte; a zero interval is taken as one
    /// microsecond), starting with a full interval's credit at `now`.
    pub fn new(bytes: u64, interval: Duration, now: Instant) -> Shaper {
        let bytes = bytes.max(1);
        Shaper {
            per_interval: bytes,
            interval: interval.max(Duration::from_micros(1)),
            credit: i128::from(bytes),
            window: now,
        }
    }

    /// Takes `len` bytes of credit for a packet at `now`: `Ok` when it may go, else the
    /// time at which to ask again (the next replenishment).
    pub fn admit(&mut self, len: u64, now: Instant) -> Result<(), Instant> {
        let next = self.window + self.interval;
        if now >= next {
            // Whole intervals passed since the last replenishment each add their credit.
            // The window moves by those intervals: a partial one is not lost.
            let step = self.interval.as_nanos();
            let passed = now.duration_since(self.window).as_nanos() / step;
            let added = i128::try_from(u128::from(self.per_interval).saturating_mul(passed))
                .unwrap_or(i128::MAX);
            let cap = i128::from(self.per_interval.max(MIN_BURST));
            self.credit = self.credit.saturating_add(added).min(cap);
            let moved = u64::try_from(passed * step).unwrap_or(u64::MAX);
            self.window += Duration::from_nanos(moved);
        }
        if self.credit > 0 {
            self.credit -= i128::from(len);
            Ok(())
        } else {
            Err(self.window + self.interval)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_wait_for_credit_replenished_each_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 10 kB every 50 ms: 200 kB/s.
        let mut s = Shaper::new(10_000, ms(50), t0);
        assert_eq!(s.admit(6_000, t0), Ok(()));
        assert_eq!(s.admit(4_000, t0 + ms(10)), Ok(()));
        assert_eq!(s.admit(1, t0 + ms(20)), Err(t0 + ms(50)));
        assert_eq!(s.admit(1_500, t0 + ms(49)), Err(t0 + ms(50)));
        assert_eq!(s.admit(1_500, t0 + ms(50)), Ok(()));
        // The next window starts at 50 ms: 8.5 kB left until 100 ms, then a packet larger
        // than that goes into debt, paid from the next interval.
        assert_eq!(s.admit(9_000, t0 + ms(60)), Ok(()));
        assert_eq!(s.admit(1, t0 + ms(60)), Err(t0 + ms(100)));
        assert_eq!(
            s.admit(9_000, t0 + ms(100)),
            Ok(()),
            "10 kB - 0.5 kB of debt"
        );
        assert_eq!(s.admit(1, t0 + ms(100)), Ok(()), "500 bytes left");
        assert_eq!(s.admit(1, t0 + ms(100)), Ok(()));
    }

    #[test]
    fn a_large_packet_waits_no_longer_than_a_small_one() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 1 kB per 10 ms: a 64 KiB packet goes as soon as there is credit, then the debt
        // holds everything for the 65 intervals it takes to pay.
        let mut s = Shaper::new(1_000, ms(10), t0);
        assert_eq!(s.admit(65_536, t0), Ok(()));
        assert!(s.admit(100, t0 + ms(500)).is_err(), "51 kB paid by then");
        assert!(s.admit(100, t0 + ms(640)).is_err());
        assert_eq!(s.admit(100, t0 + ms(660)), Ok(()));
        // However long idle, no more than 128 KiB is kept.
        let late = t0 + Duration::from_secs(100);
        assert_eq!(s.admit(MIN_BURST, late), Ok(()));
        assert!(s.admit(1, late).is_err());
        // A fast rate keeps one interval's worth.
        let mut s = Shaper::new(1_000_000, ms(50), t0);
        assert_eq!(s.admit(1_000_000, t0 + Duration::from_secs(9)), Ok(()));
        assert!(s.admit(1, t0 + Duration::from_secs(9)).is_err());
    }

    #[test]
    fn the_rate_holds_over_many_intervals() {
        // 5 kB per 20 ms for 1500-byte packets sent as fast as allowed, over 2 s of a clock
        // that moves 1 ms at a time: 500 kB (plus the first interval's credit and one packet
        // of debt at most).
        let t0 = Instant::now();
        let mut s = Shaper::new(5_000, Duration::from_millis(20), t0);
        let mut sent = 0u64;
        for ms in 0..2000u64 {
            let now = t0 + Duration::from_millis(ms);
            while s.admit(1500, now).is_ok() {
                sent += 1500;
            }
        }
        assert!((495_000..=506_500).contains(&sent), "{sent}");
    }

    #[test]
    fn zero_rates_and_intervals_do_not_stall_or_divide_by_zero() {
        let t0 = Instant::now();
        let mut s = Shaper::new(100, Duration::ZERO, t0);
        assert_eq!(s.admit(100, t0), Ok(()));
        assert_eq!(s.admit(100, t0 + Duration::from_micros(1)), Ok(()));
        // No credit per interval is taken as one byte: slow, but it moves.
        let mut s = Shaper::new(0, Duration::from_millis(1), t0);
        assert_eq!(s.admit(10, t0), Ok(()));
        assert!(s.admit(10, t0 + Duration::from_millis(5)).is_err());
        assert_eq!(s.admit(10, t0 + Duration::from_millis(10)), Ok(()));
    }
}
