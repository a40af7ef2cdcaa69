//! A vif's transmit rate limit (`rate=` in xl.cfg): a credit of bytes the guest may send,
//! replenished every interval, as Xen's netback applies it to what the guest transmits.
//!
//! A packet goes when the credit covers it; otherwise it waits, unanswered, until the credit
//! has been replenished enough (the queue stops taking transmit requests meanwhile, so the
//! guest's ring fills and its own queue backs off). Unused credit accumulates up to one
//! interval's worth or 128 KiB, whichever is more, so a burst of a full 64 KiB GSO packet
//! always gets through however low the rate. One shaper is shared by every queue of the vif:
//! the rate is the vif's.

use std::time::{Duration, Instant};

/// The most unused credit kept when an interval's worth is less: enough for the largest
/// packet (64 KiB) with room to spare.
const MIN_BURST: u64 = 128 * 1024;

/// The credit state of one vif.
#[derive(Debug)]
pub struct Shaper {
    per_interval: u64,
    interval: Duration,
    credit: u64,
    /// When the credit was last replenished.
    window: Instant,
}

impl Shaper {
    /// `bytes` of credit every `interval` (a zero interval is taken as one microsecond),
    /// starting with a full interval's credit at `now`.
    pub fn new(bytes: u64, interval: Duration, now: Instant) -> Shaper {
        Shaper {
            per_interval: bytes,
            interval: interval.max(Duration::from_micros(1)),
            credit: bytes,
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
            let added = u128::from(self.per_interval).saturating_mul(passed);
            let cap = self.per_interval.max(MIN_BURST);
            self.credit = u64::try_from(u128::from(self.credit).saturating_add(added))
                .unwrap_or(u64::MAX)
                .min(cap);
            let moved = u64::try_from(passed * step).unwrap_or(u64::MAX);
            self.window += Duration::from_nanos(moved);
        }
        if len <= self.credit {
            self.credit -= len;
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
        // The next window starts at 50 ms: 8.5 kB left until 100 ms.
        assert_eq!(s.admit(9_000, t0 + ms(60)), Err(t0 + ms(100)));
        assert_eq!(s.admit(8_500, t0 + ms(60)), Ok(()));
    }

    #[test]
    fn idle_credit_accumulates_up_to_the_burst() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // 1 kB per 10 ms: a 64 KiB packet must still pass, once enough credit accumulated.
        let mut s = Shaper::new(1_000, ms(10), t0);
        assert!(s.admit(65_536, t0).is_err());
        assert!(s.admit(65_536, t0 + ms(500)).is_err(), "51 kB by then");
        assert_eq!(s.admit(65_536, t0 + ms(700)), Ok(()));
        // However long idle, no more than 128 KiB is kept.
        assert_eq!(s.admit(MIN_BURST, t0 + Duration::from_secs(100)), Ok(()));
        assert!(s.admit(1, t0 + Duration::from_secs(100)).is_err());
        // A fast rate keeps one interval's worth.
        let mut s = Shaper::new(1_000_000, ms(50), t0);
        assert_eq!(s.admit(1_000_000, t0 + Duration::from_secs(9)), Ok(()));
        assert!(s.admit(1, t0 + Duration::from_secs(9)).is_err());
    }

    #[test]
    fn the_rate_holds_over_many_intervals() {
        // 5 kB per 20 ms for 1500-byte packets sent as fast as allowed, over 2 s of a clock
        // that moves 1 ms at a time: 500 kB at most (plus the first interval's credit).
        let t0 = Instant::now();
        let mut s = Shaper::new(5_000, Duration::from_millis(20), t0);
        let mut sent = 0u64;
        for ms in 0..2000u64 {
            let now = t0 + Duration::from_millis(ms);
            while s.admit(1500, now).is_ok() {
                sent += 1500;
            }
        }
        assert!((490_000..=505_000).contains(&sent), "{sent}");
    }

    #[test]
    fn a_zero_interval_does_not_divide_by_zero() {
        let t0 = Instant::now();
        let mut s = Shaper::new(100, Duration::ZERO, t0);
        assert_eq!(s.admit(100, t0), Ok(()));
        assert_eq!(s.admit(100, t0 + Duration::from_micros(1)), Ok(()));
    }
}
