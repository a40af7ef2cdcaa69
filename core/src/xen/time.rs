//! The pvclock timebase: a domain's system time (nanoseconds since its time origin) as a
//! function of its TSC, the `vcpu_time_info` records that publish it, the inverse for timer
//! deadlines, and the wallclock in shared_info.
//!
//! # The scale
//! The guest computes `ns = ((delta << shift) * mul) >> 32` (a right shift by `-shift` when
//! negative; `delta` = TSC - `tsc_timestamp`), xen.h's formula and Linux's
//! `pvclock_scale_delta`. [`Scale::from_hz`] picks `mul` and `shift` as Xen's `set_time_scale`
//! does: halve or double the frequency until it lies in (10^9, 2*10^9], then
//! `mul = (10^9 << 32) / that`, which is in [2^31, 2^32). The result is within 2 ns + 2 ppb of
//! the exact value (tests check 1 MHz to 10 GHz).
//!
//! Only 64x64-bit multiplications, 64-bit divisions and constant shifts are used: the kernel
//! does not link the 128-bit division and variable-shift helpers.
//!
//! # One record per domain; TSC_STABLE
//! Keel publishes the same record to every vCPU of a domain: `tsc_timestamp` = the domain's
//! base TSC, `system_time` = 0, never restamped ([`Timebase::record`]). The guest's formula is
//! then one function of the TSC, the same on every vCPU and the same as Keel's
//! [`Timebase::system_time`], so (a) a deadline converted with [`Timebase::deadline_tsc`]
//! fires exactly when the guest's clock reaches it, never a nanosecond early, and (b) the
//! clock is monotonic across vCPUs when the host TSC is synchronized and invariant. Restamped
//! per-vCPU records (Xen's way) would round each stamp down and let one vCPU's clock trail
//! another's by a nanosecond or two. So Keel sets `XEN_PVCLOCK_TSC_STABLE_BIT` exactly when the
//! host says its TSC is stable (Linux's `tsc_reliable`/invariant TSC, synchronized): then the guest
//! skips its global monotonicity check (a shared cmpxchg per read) and may offer the vDSO
//! clock. Without it the guest stays correct, only slower. The shift keeps `delta << shift` in
//! 64 bits for 2^(64 - shift) ticks: for any TSC of 1 GHz or more (shift <= 1) that is over a
//! century, and 570 years at 1 MHz, so a record never needs restamping for range.
//!
//! # Updating a record
//! The guest reads a record as a seqlock: version odd = being written. Root mode writes
//! `version` = [`version_begin`]`(old)`, a write barrier, the other fields, a write barrier,
//! `version` = [`version_end`] of that, as Xen's `__update_vcpu_system_time`. The wallclock
//! (`wc_version`, `wc_sec`, `wc_nsec`, `wc_sec_hi`) is updated the same way.

use super::abi::{pvclock, VcpuTimeInfo};

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// `(a * m) >> 32` without overflow: a 64x64-bit multiply (one `mul`) and a constant shift.
fn mul_u64_u32_shr32(a: u64, m: u32) -> u64 {
    ((u128::from(a) * u128::from(m)) >> 32) as u64
}

/// The TSC-to-nanoseconds factor of a pvclock record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    /// `tsc_to_system_mul`: 32.32 fixed-point nanoseconds per shifted tick.
    pub mul: u32,
    /// `tsc_shift`.
    pub shift: i8,
}

impl Scale {
    /// Xen's `set_time_scale` for a TSC of `hz` ticks per second; `None` for 0.
    pub fn from_hz(hz: u64) -> Option<Scale> {
        if hz == 0 {
            return None;
        }
        let mut tps = hz;
        let mut shift: i8 = 0;
        while tps > 2 * NS_PER_SEC {
            tps >>= 1;
            shift -= 1;
        }
        while tps <= NS_PER_SEC {
            tps <<= 1;
            shift += 1;
        }
        // tps in (1e9, 2e9]: the quotient is below 2^32 and (1e9 << 32) fits in 64 bits.
        let mul = ((NS_PER_SEC << 32) / tps) as u32;
        Some(Scale { mul, shift })
    }

    /// Nanoseconds in `delta` ticks: the guest's formula. Exactly the guest's value while
    /// `delta << shift` fits in 64 bits (see the module doc); beyond, the shifted delta
    /// saturates instead of wrapping.
    pub fn ns(self, delta: u64) -> u64 {
        let shifted = if self.shift >= 0 {
            let s = self.shift as u32;
            if delta.leading_zeros() >= s {
                delta << s
            } else {
                u64::MAX
            }
        } else {
            delta >> self.shift.unsigned_abs()
        };
        mul_u64_u32_shr32(shifted, self.mul)
    }

    /// The fewest ticks whose [`Scale::ns`] reaches `ns`: `ns(t) >= ns` and, for t > 0,
    /// `ns(t - 1) < ns`. `u64::MAX` when no 64-bit delta reaches it.
    pub fn ticks_for(self, ns: u64) -> u64 {
        if self.mul == 0 {
            return u64::MAX;
        }
        // The fewest shifted ticks d with (d * mul) >> 32 >= ns: ceil((ns << 32) / mul),
        // as (q << 32) + ceil((r << 32) / mul) with ns = q * mul + r (r < mul < 2^32).
        let mul = u64::from(self.mul);
        let (q, r) = (ns / mul, ns % mul);
        if q >= 1 << 32 {
            return u64::MAX;
        }
        let Some(d) = (q << 32).checked_add((r << 32).div_ceil(mul)) else {
            return u64::MAX;
        };
        if self.shift >= 0 {
            // The fewest t with t << s >= d.
            let s = self.shift as u32;
            (d >> s) + u64::from(d & ((1 << s) - 1) != 0)
        } else {
            // The fewest t with t >> k >= d.
            let k = u32::from(self.shift.unsigned_abs());
            if d.leading_zeros() >= k {
                d << k
            } else {
                u64::MAX
            }
        }
    }

    /// The TSC frequency the scale stands for, by xen.h's formula
    /// `((10^9 << 32) / mul) >> shift` (a left shift for a negative shift), saturating.
    pub fn hz(self) -> u64 {
        if self.mul == 0 {
            return u64::MAX;
        }
        let f = (NS_PER_SEC << 32) / u64::from(self.mul);
        if self.shift >= 0 {
            f >> self.shift as u32
        } else {
            let k = u32::from(self.shift.unsigned_abs());
            if f.leading_zeros() >= k {
                f << k
            } else {
                u64::MAX
            }
        }
    }
}

/// A domain's timebase: system time 0 is at TSC `tsc0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timebase {
    /// The domain's TSC (as the guest reads it) at system time 0.
    pub tsc0: u64,
    /// The scale for the TSC's frequency.
    pub scale: Scale,
}

impl Timebase {
    /// A timebase for a TSC of `tsc_hz` that starts at `tsc0`; `None` for a 0 Hz TSC.
    pub fn new(tsc_hz: u64, tsc0: u64) -> Option<Self> {
        Some(Timebase {
            tsc0,
            scale: Scale::from_hz(tsc_hz)?,
        })
    }

    /// System time (ns) at guest TSC `tsc` (0 before `tsc0`).
    pub fn system_time(&self, tsc: u64) -> u64 {
        self.scale.ns(tsc.saturating_sub(self.tsc0))
    }

    /// The first guest TSC at which system time reaches `ns`: the TSC to arm a timer for a
    /// deadline (`VCPUOP_set_singleshot_timer`, `set_timer_op`, `SCHEDOP_poll`'s timeout). A
    /// deadline already past gives a TSC already past: fire at once. `u64::MAX` when no TSC
    /// reaches it.
    pub fn deadline_tsc(&self, ns: u64) -> u64 {
        self.tsc0.saturating_add(self.scale.ticks_for(ns))
    }

    /// The domain's record, the same for every vCPU (see the module doc): stamped at `tsc0`
    /// with system time 0, TSC_STABLE when `host_tsc_stable`. `version` is left 0 for the
    /// writer to set.
    pub fn record(&self, host_tsc_stable: bool) -> VcpuTimeInfo {
        VcpuTimeInfo {
            tsc_timestamp: self.tsc0,
            system_time: 0,
            tsc_to_system_mul: self.scale.mul,
            tsc_shift: self.scale.shift,
            flags: if host_tsc_stable {
                pvclock::TSC_STABLE_BIT
            } else {
                0
            },
            ..VcpuTimeInfo::default()
        }
    }
}

/// What the guest computes from a record at TSC `tsc` (Linux's `pvclock_clocksource_read`
/// before its cross-vCPU check): `system_time` + scale(tsc - `tsc_timestamp`), in wrapping
/// 64-bit arithmetic as the guest does.
pub fn guest_system_time(rec: &VcpuTimeInfo, tsc: u64) -> u64 {
    let delta = tsc.wrapping_sub(rec.tsc_timestamp);
    let shifted = if rec.tsc_shift >= 0 {
        delta.wrapping_shl(rec.tsc_shift as u32)
    } else {
        delta.wrapping_shr(u32::from(rec.tsc_shift.unsigned_abs()))
    };
    rec.system_time
        .wrapping_add(mul_u64_u32_shr32(shifted, rec.tsc_to_system_mul))
}

/// The version to write before updating a record: odd (Xen's `version_update_begin`).
pub const fn version_begin(old: u32) -> u32 {
    old.wrapping_add(1) | 1
}

/// The version to write after updating a record: the next even value after `begin`.
pub const fn version_end(begin: u32) -> u32 {
    begin.wrapping_add(1)
}

/// The shared_info wallclock: the real time (since the Unix epoch) at system time 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wallclock {
    /// Seconds (`wc_sec` low 32 bits, `wc_sec_hi` high 32 bits).
    pub sec: u64,
    /// Nanoseconds, below 10^9 (`wc_nsec`).
    pub nsec: u32,
}

impl Wallclock {
    /// The wallclock at system time 0 from a reading of real time `realtime_ns` (ns since the
    /// epoch) taken at system time `system_time_ns` (0 if the system time is the larger).
    pub fn at_system_time_zero(realtime_ns: u64, system_time_ns: u64) -> Self {
        let boot = realtime_ns.saturating_sub(system_time_ns);
        Wallclock {
            sec: boot / NS_PER_SEC,
            nsec: (boot % NS_PER_SEC) as u32,
        }
    }

    /// `wc_sec`.
    pub fn wc_sec(&self) -> u32 {
        self.sec as u32
    }

    /// `wc_sec_hi`.
    pub fn wc_sec_hi(&self) -> u32 {
        (self.sec >> 32) as u32
    }

    /// `wc_nsec`.
    pub fn wc_nsec(&self) -> u32 {
        self.nsec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frequencies from 1 MHz to 10 GHz: powers of two and ten around the shift boundaries,
    /// common TSC rates, and odd values.
    fn freqs() -> Vec<u64> {
        let mut f = vec![
            1_000_000,
            1_000_001,
            3_579_545,
            14_318_180,
            24_000_000,
            25_000_000,
            100_000_000,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            1_193_182_000,
            1_999_999_999,
            2_000_000_000,
            2_000_000_001,
            2_095_078_000,
            2_400_000_000,
            2_592_000_000,
            2_899_999_999,
            3_000_000_000,
            3_600_000_000,
            3_999_999_999,
            4_000_000_000,
            4_000_000_001,
            5_000_000_000,
            7_777_777_777,
            10_000_000_000,
        ];
        let mut x = 1_000_000u64;
        while x <= 10_000_000_000 {
            f.push(x);
            x = x * 1_109 / 1_000 + 7;
        }
        f
    }

    fn deltas(hz: u64) -> Vec<u64> {
        let mut d = vec![0, 1, 2, 3, 7, 100, 999, 4096, 65_535, 1 << 20, 123_456_789];
        for secs in [1u64, 2, 60, 3_600, 86_400, 365 * 86_400, 10 * 365 * 86_400] {
            d.push(hz * secs);
            d.push(hz * secs - 1);
            d.push(hz * secs + hz / 3);
        }
        d
    }

    fn exact_ns(hz: u64, delta: u64) -> u128 {
        delta as u128 * NS_PER_SEC as u128 / hz as u128
    }

    /// Xen's procedure, written from its description: mul is in [2^31, 2^32), the shifted
    /// frequency in (1e9, 2e9].
    #[test]
    fn scale_matches_set_time_scale() {
        assert_eq!(Scale::from_hz(0), None);
        assert_eq!(
            Scale::from_hz(1_000_000_000),
            Some(Scale {
                mul: 1 << 31,
                shift: 1
            })
        );
        assert_eq!(
            Scale::from_hz(2_000_000_000),
            Some(Scale {
                mul: 1 << 31,
                shift: 0
            })
        );
        assert_eq!(
            Scale::from_hz(2_500_000_000),
            Some(Scale {
                mul: 3_435_973_836,
                shift: -1
            })
        );
        assert_eq!(Scale::from_hz(1_000_000).unwrap().shift, 10);
        assert_eq!(Scale::from_hz(10_000_000_000).unwrap().shift, -3);
        assert_eq!(Scale::from_hz(1).unwrap().shift, 30);
        for hz in freqs() {
            let s = Scale::from_hz(hz).unwrap();
            assert!(s.mul >= 1 << 31, "{hz}: {s:?}");
            // Halved k times to at most 2e9 (truncating), then doubled j times past 1e9.
            let k = (0..64).find(|&k| hz >> k <= 2_000_000_000).unwrap();
            let j = (0..64).find(|&j| (hz >> k) << j > 1_000_000_000).unwrap();
            assert_eq!(i32::from(s.shift), j - k, "{hz}");
            let shifted = ((hz >> k) << j) as u128;
            assert!(shifted > 1_000_000_000 && shifted <= 2_000_000_000, "{hz}");
            assert_eq!(s.mul as u128, (1_000_000_000u128 << 32) / shifted);
            let back = s.hz();
            assert!(
                back.abs_diff(hz) as u128 * 1_000_000_000 <= hz as u128 * 2,
                "{hz}: {back}"
            );
        }
    }

    #[test]
    fn ns_is_accurate_against_128_bit_arithmetic() {
        for hz in freqs() {
            let s = Scale::from_hz(hz).unwrap();
            for d in deltas(hz) {
                let exact = exact_ns(hz, d);
                let got = s.ns(d) as u128;
                // 2 ns of rounding, plus 2 ppb of mul's and the frequency's truncation.
                let bound = 2 + exact * 2 / 1_000_000_000;
                assert!(
                    got.abs_diff(exact) <= bound,
                    "{hz} Hz, {d} ticks: {got} vs {exact}"
                );
                // The same value through 128-bit arithmetic on the same mul and shift.
                let d2 = if s.shift >= 0 {
                    (d as u128) << s.shift
                } else {
                    (d >> -s.shift) as u128
                };
                assert_eq!(got, (d2 * s.mul as u128) >> 32);
            }
        }
    }

    #[test]
    fn ns_is_monotonic() {
        for hz in freqs() {
            let s = Scale::from_hz(hz).unwrap();
            for base in [0u64, 1 << 20, hz * 3_600, 1 << 50] {
                let mut last = s.ns(base);
                for i in 1..3_000 {
                    let now = s.ns(base + i);
                    assert!(now >= last, "{hz} Hz at {}", base + i);
                    last = now;
                }
            }
            let mut ds = deltas(hz);
            ds.sort();
            assert!(ds.windows(2).all(|w| s.ns(w[0]) <= s.ns(w[1])), "{hz}");
        }
    }

    #[test]
    fn ticks_for_is_the_exact_inverse() {
        for hz in freqs() {
            let s = Scale::from_hz(hz).unwrap();
            let mut targets = vec![0u64, 1, 2, 999, 1_000, 1_000_001, 123_456_789];
            for d in deltas(hz) {
                targets.push(s.ns(d));
                targets.push(s.ns(d) + 1);
            }
            for ns in targets {
                let t = s.ticks_for(ns);
                assert!(
                    s.ns(t) >= ns,
                    "{hz} Hz, {ns} ns: {t} ticks give {}",
                    s.ns(t)
                );
                assert!(
                    t == 0 || s.ns(t - 1) < ns,
                    "{hz} Hz, {ns} ns: {t} not the first"
                );
            }
            // Round trip from ticks: the first tick of the same nanosecond, never later.
            for d in deltas(hz) {
                let t = s.ticks_for(s.ns(d));
                assert!(t <= d && s.ns(t) == s.ns(d), "{hz} Hz, {d} ticks");
            }
        }
        let s = Scale::from_hz(1_000_000).unwrap();
        assert_eq!(s.ticks_for(u64::MAX), u64::MAX);
    }

    #[test]
    fn record_gives_the_guest_keels_clock() {
        for hz in [1_000_000u64, 2_400_000_000, 3_000_000_000, 10_000_000_000] {
            let tb = Timebase::new(hz, 0x1234_5678_9abc).unwrap();
            let rec = tb.record(true);
            assert_eq!(rec.flags, pvclock::TSC_STABLE_BIT);
            assert_eq!(tb.record(false).flags, 0);
            assert_eq!((rec.tsc_timestamp, rec.system_time), (tb.tsc0, 0));
            for d in deltas(hz) {
                let tsc = tb.tsc0 + d;
                assert_eq!(guest_system_time(&rec, tsc), tb.system_time(tsc));
            }
            // A deadline fires exactly when the guest's clock reaches it.
            for ns in [0u64, 1, 1_000_000, 3_600 * NS_PER_SEC + 17] {
                let t = tb.deadline_tsc(ns);
                assert!(guest_system_time(&rec, t) >= ns);
                assert!(t == tb.tsc0 || guest_system_time(&rec, t - 1) < ns);
            }
            assert_eq!(tb.system_time(tb.tsc0 - 5), 0);
            assert_eq!(tb.deadline_tsc(0), tb.tsc0, "a past deadline fires at once");
        }
        assert_eq!(Timebase::new(0, 0), None);
    }

    #[test]
    fn restamped_records_stay_monotonic() {
        // A record stamped later (Xen's per-vCPU way) trails the base record by up to 2 ns
        // (each stamp rounds down twice: the shifted delta and the product), which is why
        // Keel keeps one record.
        let tb = Timebase::new(2_893_312_000, 1_000).unwrap();
        let base = tb.record(false);
        let stamp = 1_000 + 987_654_321;
        let later = VcpuTimeInfo {
            tsc_timestamp: stamp,
            system_time: tb.system_time(stamp),
            ..base
        };
        for tsc in stamp..stamp + 5_000 {
            let a = guest_system_time(&base, tsc);
            let b = guest_system_time(&later, tsc);
            assert!(b <= a && a - b <= 2, "{tsc}: {a} {b}");
        }
    }

    #[test]
    fn versions_go_odd_then_even() {
        for old in [0u32, 1, 2, 7, u32::MAX - 1, u32::MAX] {
            let b = version_begin(old);
            assert_eq!(b % 2, 1, "{old}");
            assert_ne!(b, old);
            let e = version_end(b);
            assert_eq!(e % 2, 0);
            assert_ne!(e, old);
        }
        assert_eq!((version_begin(0), version_end(version_begin(0))), (1, 2));
        assert_eq!((version_begin(2), version_end(3)), (3, 4));
    }

    #[test]
    fn wallclock_at_system_time_zero() {
        // 2026-12-01T00:00:00.5Z read 90.25 s after the domain's time origin.
        let now = 1_796_083_200 * NS_PER_SEC + 500_000_000;
        let w = Wallclock::at_system_time_zero(now, 90 * NS_PER_SEC + 250_000_000);
        assert_eq!(w.sec, 1_796_083_110);
        assert_eq!(w.nsec, 250_000_000);
        assert_eq!(
            (w.wc_sec(), w.wc_sec_hi(), w.wc_nsec()),
            (1_796_083_110, 0, 250_000_000)
        );
        // Past 2106: the seconds need wc_sec_hi.
        let w = Wallclock::at_system_time_zero((1u64 << 32) * NS_PER_SEC + 5, 0);
        assert_eq!((w.wc_sec(), w.wc_sec_hi(), w.wc_nsec()), (0, 1, 5));
        assert_eq!(
            Wallclock::at_system_time_zero(5, 10),
            Wallclock { sec: 0, nsec: 0 }
        );
    }
}
