//! vCPUs: the owner of a vCPU fd (from `KEEL_DOMAIN_CREATE_VCPU`), and [`VcpuExit`], the one
//! typed view of the exit record `KEEL_VCPU_RUN` fills in.
use std::{
    fmt,
    os::fd::{AsFd, OwnedFd},
};

use keel_uapi as uapi;

use crate::{addr::GuestAddress, error::Error, ioctl};

/// Why a run ended (rust-vmm's `VcpuExit`): the exit record's reason and the fields that go with
/// it, by value.
///
/// [`VcpuExit::IoIn`], [`VcpuExit::MmioRead`] and [`VcpuExit::Hypercall`] wait for an answer:
/// give it with [`Vcpu::complete`] before the next [`Vcpu::run`] (the guest reads 0 otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExit {
    /// HLT with nothing to deliver; RIP is past it.
    Hlt,
    /// OUT to `port`.
    IoOut {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
        /// The value written.
        data: u64,
    },
    /// IN from `port`: complete it with the value read.
    IoIn {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
    },
    /// A read of an MMIO range: complete it with the value read.
    MmioRead {
        /// The address.
        gpa: GuestAddress,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
    },
    /// A write to an MMIO range.
    MmioWrite {
        /// The address.
        gpa: GuestAddress,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
        /// The value written.
        data: u64,
    },
    /// A hypercall the module does not handle itself: complete it with the result (the guest's
    /// rax).
    Hypercall {
        /// The hypercall number.
        nr: u64,
        /// Its arguments in Xen's order.
        args: [u64; 5],
        /// A 64-bit caller.
        longmode: bool,
    },
    /// The guest triple-faulted (`KEEL_SHUTDOWN_*` in `kind`).
    Shutdown {
        /// `KEEL_SHUTDOWN_*`.
        kind: u32,
        /// With `KEEL_SHUTDOWN_XEN`: Xen's reason (`KEEL_XEN_SHUTDOWN_*`).
        reason: u32,
    },
    /// An access outside the map, or a write to ROM.
    MemoryFault {
        /// The address.
        gpa: GuestAddress,
        /// `KEEL_ACCESS_*` bits.
        access: u32,
    },
    /// The hardware refused the guest state.
    EntryFailure {
        /// The hardware's reason (VMX exit reason and instruction error, or the SVM exit code).
        hw_reason: u64,
        /// The exit qualification (VMX) or exitinfo1 (SVM).
        qualification: u64,
    },
    /// An exit the module cannot handle.
    Unhandled {
        /// The hardware's exit reason or code.
        hw_reason: u64,
        /// The exit qualification (VMX) or exitinfo1 (SVM).
        qualification: u64,
    },
    /// A signal is pending: the ioctl failed with EINTR.
    Interrupted,
    /// A reason this crate does not know (a newer module), as `KEEL_EXIT_*`.
    Unknown(u32),
}

/// One exit: where the guest was, and why it exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunExit {
    /// The guest's RIP at the exit.
    pub rip: u64,
    /// Why.
    pub exit: VcpuExit,
}

/// Reads the exit the module wrote into `run`.
pub fn decode_exit(run: &uapi::keel_run) -> RunExit {
    let rip = run.exit.rip;
    let reason = run.exit.reason;
    let u = &run.exit.__bindgen_anon_1;
    // SAFETY (for each union read below): every member of the exit union is plain integers, so
    // any bytes are a valid value of any member; `reason` says which one the module wrote.
    let exit = match reason {
        uapi::KEEL_EXIT_HLT => VcpuExit::Hlt,
        uapi::KEEL_EXIT_IO => {
            // SAFETY: see above.
            let io = unsafe { u.io };
            if u32::from(io.direction) == uapi::KEEL_IO_IN {
                VcpuExit::IoIn {
                    port: io.port,
                    size: io.size,
                }
            } else {
                VcpuExit::IoOut {
                    port: io.port,
                    size: io.size,
                    data: io.data,
                }
            }
        }
        uapi::KEEL_EXIT_MMIO => {
            // SAFETY: see above.
            let mmio = unsafe { u.mmio };
            if u32::from(mmio.direction) == uapi::KEEL_IO_IN {
                VcpuExit::MmioRead {
                    gpa: GuestAddress(mmio.gpa),
                    size: mmio.size,
                }
            } else {
                VcpuExit::MmioWrite {
                    gpa: GuestAddress(mmio.gpa),
                    size: mmio.size,
                    data: mmio.data,
                }
            }
        }
        uapi::KEEL_EXIT_HYPERCALL => {
            // SAFETY: see above.
            let hc = unsafe { u.hypercall };
            VcpuExit::Hypercall {
                nr: hc.nr,
                args: hc.args,
                longmode: hc.longmode != 0,
            }
        }
        uapi::KEEL_EXIT_SHUTDOWN => {
            // SAFETY: see above.
            let s = unsafe { u.shutdown };
            VcpuExit::Shutdown {
                kind: s.kind,
                reason: s.reason,
            }
        }
        uapi::KEEL_EXIT_MEMORY_FAULT => {
            // SAFETY: see above.
            let fault = unsafe { u.fault };
            VcpuExit::MemoryFault {
                gpa: GuestAddress(fault.gpa),
                access: fault.access,
            }
        }
        uapi::KEEL_EXIT_ENTRY_FAILURE | uapi::KEEL_EXIT_UNHANDLED => {
            // SAFETY: see above.
            let fail = unsafe { u.fail };
            if reason == uapi::KEEL_EXIT_ENTRY_FAILURE {
                VcpuExit::EntryFailure {
                    hw_reason: fail.hw_reason,
                    qualification: fail.qualification,
                }
            } else {
                VcpuExit::Unhandled {
                    hw_reason: fail.hw_reason,
                    qualification: fail.qualification,
                }
            }
        }
        uapi::KEEL_EXIT_INTR => VcpuExit::Interrupted,
        other => VcpuExit::Unknown(other),
    };
    RunExit { rip, exit }
}

/// Writes `value` into the completion slot of the exit in `run`: `io.data` after an IN,
/// `mmio.data` after an MMIO read, `hypercall.ret` after a hypercall. Returns whether the exit
/// has such a slot (it writes nothing otherwise).
pub fn complete_exit(run: &mut uapi::keel_run, value: u64) -> bool {
    let reason = run.exit.reason;
    let u = &mut run.exit.__bindgen_anon_1;
    // SAFETY (for each union read below): every member of the exit union is plain integers, so
    // any bytes are a valid value of any member; `reason` says which one the module wrote.
    match reason {
        uapi::KEEL_EXIT_IO => {
            // SAFETY: see above.
            let io = unsafe { &mut u.io };
            let is_in = u32::from(io.direction) == uapi::KEEL_IO_IN;
            if is_in {
                io.data = value;
            }
            is_in
        }
        uapi::KEEL_EXIT_MMIO => {
            // SAFETY: see above.
            let mmio = unsafe { &mut u.mmio };
            let is_read = u32::from(mmio.direction) == uapi::KEEL_IO_IN;
            if is_read {
                mmio.data = value;
            }
            is_read
        }
        uapi::KEEL_EXIT_HYPERCALL => {
            // Writing a union field needs no `unsafe`.
            u.hypercall.ret = value;
            true
        }
        _ => false,
    }
}

/// A vCPU: the owner of a vCPU fd and of the run structure passed to `KEEL_VCPU_RUN`, which
/// carries each exit's completion into the next run.
pub struct Vcpu {
    fd: OwnedFd,
    id: u32,
    run: uapi::keel_run,
}

impl fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vcpu")
            .field("fd", &self.fd)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Vcpu {
    pub(crate) fn new(fd: OwnedFd, id: u32) -> Self {
        Self {
            fd,
            id,
            run: uapi::keel_run::default(),
        }
    }

    /// The vCPU's id in its domain.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `KEEL_VCPU_GET_REGS`.
    pub fn regs(&self) -> Result<uapi::keel_regs, Error> {
        let mut regs = uapi::keel_regs::default();
        // SAFETY: KEEL_VCPU_GET_REGS is `ior::<keel_regs>`: the kernel writes that structure
        // (integers only) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_GET_REGS",
                uapi::KEEL_VCPU_GET_REGS,
                &mut regs,
            )
        }?;
        Ok(regs)
    }

    /// `KEEL_VCPU_SET_REGS`.
    pub fn set_regs(&self, regs: &uapi::keel_regs) -> Result<(), Error> {
        // SAFETY: KEEL_VCPU_SET_REGS is `iow::<keel_regs>`: the kernel reads that structure
        // (no pointers) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_VCPU_SET_REGS",
                uapi::KEEL_VCPU_SET_REGS,
                regs,
            )
        }?;
        Ok(())
    }

    /// `KEEL_VCPU_GET_SREGS`.
    pub fn sregs(&self) -> Result<uapi::keel_sregs, Error> {
        let mut sregs = uapi::keel_sregs::default();
        // SAFETY: KEEL_VCPU_GET_SREGS is `ior::<keel_sregs>`: the kernel writes that structure
        // (integers only) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_GET_SREGS",
                uapi::KEEL_VCPU_GET_SREGS,
                &mut sregs,
            )
        }?;
        Ok(sregs)
    }

    /// `KEEL_VCPU_SET_SREGS`.
    pub fn set_sregs(&self, sregs: &uapi::keel_sregs) -> Result<(), Error> {
        // SAFETY: KEEL_VCPU_SET_SREGS is `iow::<keel_sregs>`: the kernel reads that structure
        // (no pointers) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_VCPU_SET_SREGS",
                uapi::KEEL_VCPU_SET_SREGS,
                sregs,
            )
        }?;
        Ok(())
    }

    /// `KEEL_VCPU_RUN`: runs the guest on this thread until it exits for something Dom0 must
    /// handle. What [`Vcpu::complete`] put in the previous exit goes back to the module with this
    /// call. A signal ends the run with [`VcpuExit::Interrupted`].
    pub fn run(&mut self) -> Result<RunExit, Error> {
        self.run.flags = 0;
        self.run.pad = 0;
        // SAFETY: KEEL_VCPU_RUN is `iowr::<keel_run>`: the kernel reads the completion from
        // `self.run` and writes the next exit into it (integers only, any bytes valid), and
        // touches nothing else of ours.
        let ret = unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_RUN",
                uapi::KEEL_VCPU_RUN,
                &mut self.run,
            )
        };
        match ret {
            Ok(_) => Ok(decode_exit(&self.run)),
            Err(e) if e.errno() == Some(libc::EINTR) => Ok(RunExit {
                rip: self.run.exit.rip,
                exit: VcpuExit::Interrupted,
            }),
            Err(e) => Err(e),
        }
    }

    /// Completes the last exit with `value`, for the next [`Vcpu::run`] to hand to the module:
    /// the value the guest reads after [`VcpuExit::IoIn`] or [`VcpuExit::MmioRead`], the
    /// result (the guest's rax) after [`VcpuExit::Hypercall`]. Fails with
    /// [`Error::NoCompletion`] after any other exit.
    pub fn complete(&mut self, value: u64) -> Result<(), Error> {
        if complete_exit(&mut self.run, value) {
            Ok(())
        } else {
            Err(Error::NoCompletion {
                reason: self.run.exit.reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(reason: u32) -> uapi::keel_run {
        let mut run = uapi::keel_run::default();
        run.exit.reason = reason;
        run.exit.rip = 0x7c02;
        run
    }

    #[test]
    fn decodes_io_and_completes_in() {
        let mut run = run_with(uapi::KEEL_EXIT_IO);
        run.exit.__bindgen_anon_1.io = uapi::keel_exit_io {
            port: 0x60,
            size: 2,
            direction: uapi::KEEL_IO_IN as u8,
            pad: 0,
            data: 0,
        };
        let e = decode_exit(&run);
        assert_eq!(e.rip, 0x7c02);
        assert_eq!(
            e.exit,
            VcpuExit::IoIn {
                port: 0x60,
                size: 2
            }
        );
        assert!(complete_exit(&mut run, 0xffff));
        // SAFETY: the test wrote the io member.
        assert_eq!(unsafe { run.exit.__bindgen_anon_1.io.data }, 0xffff);

        let mut run = run_with(uapi::KEEL_EXIT_IO);
        run.exit.__bindgen_anon_1.io = uapi::keel_exit_io {
            port: 0xe9,
            size: 1,
            direction: uapi::KEEL_IO_OUT as u8,
            pad: 0,
            data: 0x4b,
        };
        assert_eq!(
            decode_exit(&run).exit,
            VcpuExit::IoOut {
                port: 0xe9,
                size: 1,
                data: 0x4b
            }
        );
        // An OUT takes no completion: the record stays as the module wrote it.
        assert!(!complete_exit(&mut run, 0xffff));
        // SAFETY: the test wrote the io member.
        assert_eq!(unsafe { run.exit.__bindgen_anon_1.io.data }, 0x4b);
    }

    #[test]
    fn decodes_hypercall_and_completes_it() {
        let mut run = run_with(uapi::KEEL_EXIT_HYPERCALL);
        run.exit.__bindgen_anon_1.hypercall = uapi::keel_exit_hypercall {
            nr: 34,
            args: [1, 2, 3, 4, 5],
            ret: 0,
            longmode: 1,
            pad: 0,
        };
        assert_eq!(
            decode_exit(&run).exit,
            VcpuExit::Hypercall {
                nr: 34,
                args: [1, 2, 3, 4, 5],
                longmode: true,
            }
        );
        assert!(complete_exit(&mut run, -38i64 as u64));
        // SAFETY: the test wrote the hypercall member.
        let ret = unsafe { run.exit.__bindgen_anon_1.hypercall.ret };
        assert_eq!(ret, -38i64 as u64);
    }

    #[test]
    fn decodes_the_rest() {
        let mut run = run_with(uapi::KEEL_EXIT_MEMORY_FAULT);
        run.exit.__bindgen_anon_1.fault = uapi::keel_exit_fault {
            gpa: 0x4000_0000,
            access: uapi::KEEL_ACCESS_READ,
            pad: 0,
        };
        assert_eq!(
            decode_exit(&run).exit,
            VcpuExit::MemoryFault {
                gpa: GuestAddress(0x4000_0000),
                access: uapi::KEEL_ACCESS_READ
            }
        );
        let mut run = run_with(uapi::KEEL_EXIT_ENTRY_FAILURE);
        run.exit.__bindgen_anon_1.fail = uapi::keel_exit_fail {
            hw_reason: 0x8000_0021,
            qualification: 0,
        };
        assert_eq!(
            decode_exit(&run).exit,
            VcpuExit::EntryFailure {
                hw_reason: 0x8000_0021,
                qualification: 0
            }
        );
        assert_eq!(
            decode_exit(&run_with(uapi::KEEL_EXIT_HLT)).exit,
            VcpuExit::Hlt
        );
        assert_eq!(
            decode_exit(&run_with(uapi::KEEL_EXIT_NONE)).exit,
            VcpuExit::Unknown(0)
        );
        assert_eq!(decode_exit(&run_with(42)).exit, VcpuExit::Unknown(42));
    }
}
