// SPDX-License-Identifier: GPL-2.0
//! The FPU switch around a DomU's run: Dom0's FPU/SSE/AVX state out, the vCPU's in, and back.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use super::vcpu::VcpuState;
use super::x86;

/// Saves Dom0's FPU state and loads the guest's (`xcr0_host` is Dom0's XCR0). With XSAVE
/// (CR4.OSXSAVE) every component Dom0's XCR0 enables moves, whatever the guest's XCR0 (a
/// guest with XCR0 = x87 still has XMM registers of its own), and the guest's XCR0 is loaded
/// last; without XSAVE, the x87/SSE state moves (FXSAVE).
///
/// # Safety
///
/// The areas are 64-byte aligned and large enough for every enabled feature (the Linux side
/// checked CPUID 0xD at vCPU creation); `xcr0_supported` is the domain's.
pub(crate) unsafe fn enter(v: &mut VcpuState, xcr0_supported: u64, xcr0_host: u64) {
    let host = v.host_fpu.as_mut_ptr().cast::<u8>();
    let guest = v.guest_fpu.as_ptr().cast::<u8>();
    // SAFETY: The caller's contract; XSAVE/XRSTOR with all-ones masks move the components
    // XCR0 enables, and the guest's XCR0 was validated when it was set.
    unsafe {
        if xcr0_supported == 0 {
            core::arch::asm!("fxsave64 [{}]", in(reg) host, options(nostack));
            core::arch::asm!("fxrstor64 [{}]", in(reg) guest, options(nostack));
            return;
        }
        core::arch::asm!("xsave64 [{}]", in(reg) host, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        core::arch::asm!("xrstor64 [{}]", in(reg) guest, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        if v.arch.xcr0 != xcr0_host {
            x86::xsetbv(0, v.arch.xcr0);
        }
    }
}

/// Saves the guest's FPU state and gives Dom0 back its own: Dom0's XCR0 first, so that the
/// save covers the same components as [`enter`]'s restore.
///
/// # Safety
///
/// As for [`enter`], which ran before on this CPU for this vCPU with the same arguments.
pub(crate) unsafe fn leave(v: &mut VcpuState, xcr0_supported: u64, xcr0_host: u64) {
    let host = v.host_fpu.as_ptr().cast::<u8>();
    let guest = v.guest_fpu.as_mut_ptr().cast::<u8>();
    // SAFETY: As in `enter`.
    unsafe {
        if xcr0_supported == 0 {
            core::arch::asm!("fxsave64 [{}]", in(reg) guest, options(nostack));
            core::arch::asm!("fxrstor64 [{}]", in(reg) host, options(nostack));
            return;
        }
        if v.arch.xcr0 != xcr0_host {
            x86::xsetbv(0, xcr0_host);
        }
        core::arch::asm!("xsave64 [{}]", in(reg) guest, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
        core::arch::asm!("xrstor64 [{}]", in(reg) host, in("eax") u32::MAX, in("edx") u32::MAX,
            options(nostack));
    }
}

/// Dom0's XCR0, or 0 without XSAVE.
pub(crate) fn host_xcr0(xcr0_supported: u64) -> u64 {
    if xcr0_supported == 0 {
        0
    } else {
        x86::xgetbv0()
    }
}
