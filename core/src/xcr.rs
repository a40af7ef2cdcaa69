//! XSETBV from Dom0: which XCR0 values the hardware accepts (SDM Vol. 1, 13.3).
//!
//! Keel intercepts XSETBV (VMX always exits on it; SVM is told to) and executes it itself, so it
//! must refuse what the CPU would refuse with #GP: executing a bad XSETBV in root mode would
//! fault there instead.

/// x87 state: must always be set.
const X87: u64 = 1 << 0;
/// SSE state.
const SSE: u64 = 1 << 1;
/// AVX state.
const AVX: u64 = 1 << 2;
/// MPX: BNDREGS and BNDCSR, set together.
const MPX: u64 = 0b11 << 3;
/// AVX-512: opmask, ZMM_Hi256, Hi16_ZMM, set together and with AVX.
const AVX512: u64 = 0b111 << 5;
/// AMX: XTILECFG and XTILEDATA, set together.
const AMX: u64 = 0b11 << 17;

/// Whether XSETBV with ECX = `index` and EDX:EAX = `value` is valid, given the XCR0 bits the
/// CPU supports (CPUID.(EAX=0Dh,ECX=0):EDX:EAX).
pub fn xsetbv_valid(index: u32, value: u64, supported: u64) -> bool {
    let all_or_none = |group: u64| value & group == 0 || value & group == group;
    index == 0
        && value & !supported == 0
        && value & X87 != 0
        && (value & AVX == 0 || value & SSE != 0)
        && all_or_none(MPX)
        && all_or_none(AVX512)
        && (value & AVX512 == 0 || value & AVX != 0)
        && all_or_none(AMX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let sup = 0x2ff;
        assert!(xsetbv_valid(0, 0x7, sup));
        assert!(xsetbv_valid(0, 0x3, sup));
        assert!(xsetbv_valid(0, 0xe7, sup));
        assert!(!xsetbv_valid(1, 0x7, sup), "only XCR0");
        assert!(!xsetbv_valid(0, 0x6, sup), "x87 must be set");
        assert!(!xsetbv_valid(0, 0x5, sup), "AVX needs SSE");
        assert!(!xsetbv_valid(0, 0x400 | 7, sup), "unsupported bit");
        assert!(!xsetbv_valid(0, 0x27, sup), "AVX-512 all or nothing");
        assert!(!xsetbv_valid(0, 0xe3, sup), "AVX-512 needs AVX");
        assert!(!xsetbv_valid(0, 0x0f, sup), "MPX all or nothing");
    }
}
