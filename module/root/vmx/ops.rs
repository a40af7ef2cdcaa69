// SPDX-License-Identifier: GPL-2.0
//! The VMX instructions (SDM Vol. 3C, chapter 31), below both Dom0's and DomU's VMX code.
//!
//! VMREAD and VMWRITE are reached only through a [`Vmcs`] token, which proves that a VMCS is
//! current on this CPU, and take fields typed by their width (`keel_core::vmcs::Field`).
//! Failures come back as [`VmFail`]: `try_write` returns it; `write` records the first one in
//! the token, which its owner reports ([`Vmcs::take_failure`]) instead of dropping it.
//!
//! Root-mode code: calls nothing in Linux (see `root/mod.rs`).

use core::{arch::asm, cell::Cell, marker::PhantomData};

use crate::keel_core::{
    arch::rflags,
    vmcs::{field, Field, FieldValue},
};

/// A VMX instruction failed (SDM 31.2): VMfailInvalid (no current VMCS) or VMfailValid with
/// the VM-instruction error number.
#[derive(Clone, Copy)]
pub(crate) enum VmFail {
    /// VMfailInvalid.
    Invalid,
    /// VMfailValid(error number).
    Valid(u32),
}

impl core::fmt::Debug for VmFail {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Invalid => write!(f, "VMfailInvalid"),
            Self::Valid(n) => write!(f, "VMfailValid, VM-instruction error {n}"),
        }
    }
}

impl VmFail {
    /// The failure as one number for an exit record: the error number, or all-ones for
    /// VMfailInvalid.
    pub(crate) fn code(self) -> u64 {
        match self {
            Self::Invalid => u64::MAX,
            Self::Valid(n) => n.into(),
        }
    }
}

/// The result of a VMX instruction from RFLAGS (SDM 31.2: CF = VMfailInvalid, ZF =
/// VMfailValid, whose error number is in the current VMCS).
fn vm_result(flags: u64) -> Result<(), VmFail> {
    if flags & rflags::CF != 0 {
        Err(VmFail::Invalid)
    } else if flags & rflags::ZF != 0 {
        // SAFETY: VMfailValid means a VMCS is current.
        let vmcs = unsafe { Vmcs::current() };
        Err(VmFail::Valid(vmcs.read(field::VM_INSTRUCTION_ERROR)))
    } else {
        Ok(())
    }
}

/// VMXON with the region at physical address `pa`.
///
/// # Safety
///
/// CR4.VMXE is set, IA32_FEATURE_CONTROL allows VMX, and `pa` is a zeroed 4 KiB region that
/// holds the VMCS revision id and stays allocated until VMXOFF.
pub(crate) unsafe fn vmxon(pa: u64) -> Result<(), VmFail> {
    let flags: u64;
    // SAFETY: The caller's contract; VMXON reads the 8-byte operand.
    unsafe { asm!("vmxon [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) flags) };
    vm_result(flags)
}

/// VMXOFF.
///
/// # Safety
///
/// In VMX root operation, with no VMCS that will be used again left current.
pub(crate) unsafe fn vmxoff() {
    // SAFETY: The caller's contract.
    unsafe { asm!("vmxoff", options(nostack)) };
}

/// VMCLEAR of the VMCS at `pa`: written back to memory, not current, launch state clear.
///
/// # Safety
///
/// In VMX operation; `pa` is a VMCS region that stays allocated. No [`Vmcs`] token for it
/// is used afterwards.
pub(crate) unsafe fn vmclear(pa: u64) -> Result<(), VmFail> {
    let flags: u64;
    // SAFETY: The caller's contract.
    unsafe { asm!("vmclear [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) flags) };
    vm_result(flags)
}

/// VMPTRLD of the VMCS at `pa`: makes it current and returns the token that proves it.
///
/// # Safety
///
/// In VMX operation; `pa` is a VMCS region holding the revision id, not current on another
/// CPU, that stays allocated and current while the token lives.
pub(crate) unsafe fn vmptrld(pa: u64) -> Result<Vmcs, VmFail> {
    let flags: u64;
    // SAFETY: The caller's contract.
    unsafe { asm!("vmptrld [{}]", "pushfq", "pop {}", in(reg) &pa, lateout(reg) flags) };
    // SAFETY: VMPTRLD succeeded: the VMCS is current; the caller keeps it so.
    vm_result(flags).map(|()| unsafe { Vmcs::current() })
}

/// INVEPT single-context: drops cached translations of the EPT `eptp` names.
///
/// # Safety
///
/// In VMX root operation on a CPU with EPT.
pub(crate) unsafe fn invept(eptp: u64) {
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: The caller's contract; the descriptor is valid for the single-context type.
    unsafe { asm!("invept {}, [{}]", in(reg) 1u64, in(reg) &desc, options(nostack)) };
}

/// Proof that a VMCS is current on this CPU: the only way to VMREAD and VMWRITE.
///
/// # Invariants
///
/// A VMCS is current on this CPU for as long as the token lives (nothing makes another one
/// current or clears it meanwhile), and the token stays on this CPU (it is not `Send`).
pub(crate) struct Vmcs {
    /// The first VMWRITE that failed through [`Vmcs::write`], with its field.
    failure: Cell<Option<(u32, VmFail)>>,
    _cpu_local: PhantomData<*mut ()>,
}

impl Vmcs {
    /// The token for the VMCS current on this CPU.
    ///
    /// # Safety
    ///
    /// A VMCS is current on this CPU and stays current while the token lives: in an exit
    /// handler (the VMCS that exited), or after a successful VMPTRLD.
    pub(crate) unsafe fn current() -> Self {
        // INVARIANT: The caller's contract.
        Self {
            failure: Cell::new(None),
            _cpu_local: PhantomData,
        }
    }

    /// Reads a field. A field the CPU does not support reads as 0 (the failure is recorded).
    #[inline]
    pub(crate) fn read<T: FieldValue>(&self, f: Field<T>) -> T {
        let v: u64;
        let flags: u64;
        // SAFETY: A VMCS is current (the invariant); VMREAD only writes its destination.
        unsafe {
            asm!("vmread {}, {}", "pushfq", "pop {}", out(reg) v, in(reg) u64::from(f.encoding()),
                 lateout(reg) flags, options(nostack))
        };
        if flags & (rflags::CF | rflags::ZF) != 0 {
            self.record(f.encoding(), VmFail::Invalid);
            return T::from_raw(0);
        }
        T::from_raw(v)
    }

    /// Writes a field and says whether the processor took it.
    #[inline]
    pub(crate) fn try_write<T: FieldValue>(&self, f: Field<T>, value: T) -> Result<(), VmFail> {
        let flags: u64;
        // SAFETY: A VMCS is current (the invariant); VMWRITE changes only that VMCS, whose
        // values the processor checks at the next VM entry.
        unsafe {
            asm!("vmwrite {}, {}", "pushfq", "pop {}", in(reg) u64::from(f.encoding()),
                 in(reg) value.to_raw(), lateout(reg) flags, options(nostack))
        };
        vm_result(flags)
    }

    /// Writes a field; a failure is kept for [`Vmcs::take_failure`].
    #[inline]
    pub(crate) fn write<T: FieldValue>(&self, f: Field<T>, value: T) {
        if let Err(e) = self.try_write(f, value) {
            self.record(f.encoding(), e);
        }
    }

    fn record(&self, encoding: u32, e: VmFail) {
        if self.failure.get().is_none() {
            self.failure.set(Some((encoding, e)));
        }
    }

    /// The first failed access since the last call, with its field's encoding.
    pub(crate) fn take_failure(&self) -> Option<(u32, VmFail)> {
        self.failure.take()
    }
}
