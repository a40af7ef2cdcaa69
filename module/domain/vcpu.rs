// SPDX-License-Identifier: GPL-2.0
//! vCPUs: their state at reset and the register ioctls (`KEEL_VCPU_GET/SET_REGS`,
//! `KEEL_VCPU_GET/SET_SREGS`); the run is in `run.rs`.

use kernel::{
    prelude::*,
    sync::{Arc, Mutex},
    uaccess::{UserPtr, UserSlice},
};

use super::memory::page_offset;
use super::Domain;
use crate::keel_core::{
    arch::{efer, seg_attrib},
    state,
    vmcb::VmcbSeg,
};
use crate::root::exit::UserExit;
use crate::root::vcpu::{ArchState, Completion, VcpuState};
use crate::uapi;

/// A vCPU.
#[pin_data]
pub(crate) struct Vcpu {
    pub(super) domain: Arc<Domain>,
    pub(super) id: u32,
    #[pin]
    pub(super) state: Mutex<KBox<VcpuState>>,
}

/// Allocates a vCPU's state, at reset.
pub(super) fn alloc_vcpu_state(id: u32) -> Result<KBox<VcpuState>> {
    let mut s = KBox::<VcpuState>::new_uninit(GFP_KERNEL | __GFP_ZERO)?;
    let p = s.as_mut_ptr();
    // SAFETY: The allocation is zeroed, which is a valid value for every plain-data field of
    // `VcpuState` (integers, arrays, `bool`s); the fields that are not plain data (the
    // `UserExit`/`Completion` enums, whose zero representation is not guaranteed, and the
    // domain pointer) are written here before `assume_init`.
    unsafe {
        (&raw mut (*p).arch).write(ArchState::reset());
        (&raw mut (*p).exit).write(UserExit::None);
        (&raw mut (*p).completion).write(Completion::None);
        (&raw mut (*p).domain).write(core::ptr::null());
        (*p).id = id;
        // One ASID for every DomU vCPU: each run flushes the TLB at entry.
        (*p).asid = 2;
        (*p).pa = p as u64 - page_offset();
        // The XSAVE area's legacy part: MXCSR's reset value (the x87 state starts in its
        // init state: XSTATE_BV is 0).
        let fpu = (*p).guest_fpu.as_mut_ptr().cast::<u8>();
        fpu.cast::<u16>().write(0x37f);
        fpu.add(24).cast::<u32>().write(0x1f80);
        Ok(s.assume_init())
    }
}

impl Vcpu {
    /// Checks a state before it replaces the vCPU's: `EINVAL` for one the architecture does
    /// not allow (`keel_core::state`), and the vCPU stays as it was.
    fn check(&self, a: &ArchState) -> Result {
        let s = state::State {
            rip: a.rip,
            rflags: a.rflags,
            ctl: a.ctl(),
            cs: a.cs,
            ss: a.ss,
            data: [a.ds, a.es, a.fs, a.gs],
            tr: a.tr,
            ldt: a.ldt,
            table_bases: [a.gdt.base, a.idt.base],
        };
        state::check(&s, &self.domain.caps.limits).map_err(|_| EINVAL)
    }

    pub(super) fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        let size = kernel::ioctl::_IOC_SIZE(cmd);
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), size).reader_writer();
        match cmd {
            uapi::KEEL_VCPU_GET_REGS => {
                let s = self.state.lock();
                writer.write(&get_regs(&s))?;
                Ok(0)
            }
            uapi::KEEL_VCPU_SET_REGS => {
                let r: uapi::keel_regs = reader.read()?;
                let mut s = self.state.lock();
                let mut arch = s.arch;
                arch.rip = r.rip;
                arch.rflags = r.rflags | 2;
                self.check(&arch)?;
                set_regs(&mut s, &r);
                Ok(0)
            }
            uapi::KEEL_VCPU_GET_SREGS => {
                let s = self.state.lock();
                writer.write(&get_sregs(&s.arch))?;
                Ok(0)
            }
            uapi::KEEL_VCPU_SET_SREGS => {
                let r: uapi::keel_sregs = reader.read()?;
                if r.reserved.iter().any(|&x| x != 0)
                    || r.gdt.pad.iter().any(|&x| x != 0)
                    || r.idt.pad.iter().any(|&x| x != 0)
                {
                    return Err(EINVAL);
                }
                let mut s = self.state.lock();
                let mut arch = s.arch;
                set_sregs(&mut arch, &r);
                // Outside 64-bit mode RIP is EIP: a mode switch truncates it, as leaving long
                // mode does on a CPU.
                if arch.efer & efer::LMA == 0 || arch.cs.attrib & seg_attrib::L == 0 {
                    arch.rip &= 0xffff_ffff;
                }
                self.check(&arch)?;
                s.arch = arch;
                s.arch_dirty = true;
                Ok(0)
            }
            uapi::KEEL_VCPU_RUN => {
                let mut run: uapi::keel_run = reader.read()?;
                if run.flags != 0 || run.pad != 0 {
                    return Err(EINVAL);
                }
                let r = self.run(&mut run);
                writer.write(&run)?;
                r
            }
            _ => Err(ENOTTY),
        }
    }
}

/// The uapi GPR order (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp) to the hardware's.
const UAPI_TO_HW: [usize; 8] = [0, 3, 1, 2, 6, 7, 4, 5];

fn get_regs(s: &VcpuState) -> uapi::keel_regs {
    let g = &s.regs.gpr;
    let mut low = [0u64; 8];
    for (d, &hw) in low.iter_mut().zip(&UAPI_TO_HW) {
        *d = if hw == 4 { s.arch.rsp } else { g[hw] };
    }
    uapi::keel_regs {
        rax: low[0],
        rbx: low[1],
        rcx: low[2],
        rdx: low[3],
        rsi: low[4],
        rdi: low[5],
        rsp: low[6],
        rbp: low[7],
        r8: g[8],
        r9: g[9],
        r10: g[10],
        r11: g[11],
        r12: g[12],
        r13: g[13],
        r14: g[14],
        r15: g[15],
        rip: s.arch.rip,
        rflags: s.arch.rflags,
    }
}

fn set_regs(s: &mut VcpuState, r: &uapi::keel_regs) {
    let low = [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp];
    for (&v, &hw) in low.iter().zip(&UAPI_TO_HW) {
        s.regs.gpr[hw] = v;
    }
    s.arch.rsp = r.rsp;
    let high = [r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15];
    for (d, v) in s.regs.gpr.iter_mut().skip(8).zip(high) {
        *d = v;
    }
    s.arch.rip = r.rip;
    s.arch.rflags = r.rflags | 2;
    s.arch_dirty = true;
}

fn seg_to_uapi(s: &VmcbSeg) -> uapi::keel_segment {
    uapi::keel_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        attrib: s.attrib,
    }
}

fn seg_from_uapi(s: &uapi::keel_segment) -> VmcbSeg {
    VmcbSeg {
        selector: s.selector,
        attrib: s.attrib & 0xfff,
        limit: s.limit,
        base: s.base,
    }
}

fn dt_to_uapi(s: &VmcbSeg) -> uapi::keel_dtable {
    uapi::keel_dtable {
        base: s.base,
        limit: s.limit as u16,
        pad: [0; 3],
    }
}

fn dt_from_uapi(s: &uapi::keel_dtable) -> VmcbSeg {
    VmcbSeg {
        limit: s.limit.into(),
        base: s.base,
        ..VmcbSeg::default()
    }
}

fn get_sregs(a: &ArchState) -> uapi::keel_sregs {
    uapi::keel_sregs {
        cs: seg_to_uapi(&a.cs),
        ds: seg_to_uapi(&a.ds),
        es: seg_to_uapi(&a.es),
        fs: seg_to_uapi(&a.fs),
        gs: seg_to_uapi(&a.gs),
        ss: seg_to_uapi(&a.ss),
        tr: seg_to_uapi(&a.tr),
        ldt: seg_to_uapi(&a.ldt),
        gdt: dt_to_uapi(&a.gdt),
        idt: dt_to_uapi(&a.idt),
        cr0: a.cr0,
        cr2: a.cr2,
        cr3: a.cr3,
        cr4: a.cr4,
        efer: a.efer,
        reserved: [0; 4],
    }
}

fn set_sregs(a: &mut ArchState, r: &uapi::keel_sregs) {
    a.cs = seg_from_uapi(&r.cs);
    a.ds = seg_from_uapi(&r.ds);
    a.es = seg_from_uapi(&r.es);
    a.fs = seg_from_uapi(&r.fs);
    a.gs = seg_from_uapi(&r.gs);
    a.ss = seg_from_uapi(&r.ss);
    a.tr = seg_from_uapi(&r.tr);
    a.ldt = seg_from_uapi(&r.ldt);
    a.gdt = dt_from_uapi(&r.gdt);
    a.idt = dt_from_uapi(&r.idt);
    a.cr0 = r.cr0;
    a.cr2 = r.cr2;
    a.cr3 = r.cr3;
    a.cr4 = r.cr4;
    a.efer = r.efer;
}
