// SPDX-License-Identifier: GPL-2.0
//! `KEEL_VCPU_RUN`: the run loop on the calling thread, and the exit record it returns.
//!
//! The loop enters the vCPU through Keel's `Run` hypercall with interrupts off, and goes on
//! until root mode ends the run with an exit for userspace, a signal arrives (`EINTR`), or
//! the domain is paused (the thread waits, interruptibly). A run that ends for Dom0's sake
//! (a host interrupt, an NMI: `Action::RunLoop` in root mode) lets Linux take it, then enters
//! again.

use core::sync::atomic::Ordering;

use kernel::{bindings, prelude::*, task::Task};

use super::vcpu::Vcpu;
use crate::root::exit::UserExit;
use crate::root::vcpu::{Completion, VcpuState};
use crate::root::x86;
use crate::uapi;
use crate::xen::Handled;

impl Vcpu {
    /// `KEEL_VCPU_RUN`.
    pub(super) fn run(&self, run: &mut uapi::keel_run) -> Result<isize> {
        let d = &self.domain;
        let mut s = self.state.lock();
        // SAFETY: Reading the union's members as plain integers: every bit pattern is valid.
        let (io, mmio, hc) = unsafe {
            let e = &run.exit.__bindgen_anon_1;
            (e.io.data, e.mmio.data, e.hypercall.ret)
        };
        // The data of the exit userspace served (an exit the run loop served has its data).
        if s.user_completion {
            s.completion_data = match s.completion {
                Completion::None | Completion::Msr { .. } | Completion::GeneralProtection => 0,
                Completion::IoIn { .. } => io,
                Completion::MmioRead(_) => mmio,
                Completion::Hypercall { .. } => hc,
            };
            s.user_completion = false;
        }
        if s.domain.is_null() {
            s.domain = d.start()?;
        }
        let vendor = d.caps.vendor;
        let xen = d.xen.as_deref();
        // SAFETY: Set above; the shared view lives as long as the domain.
        let shared = unsafe { &*s.domain };
        let current = Task::current_raw() as usize;
        let result = loop {
            // From here until the next turn the thread may use translations of this
            // generation of the tables, or later ones (`Xen::quiesce` waits for it).
            if let Some(x) = xen {
                x.sync(self.id).hold(x.slat_gen());
            }
            // SAFETY: `current` is the running task.
            if unsafe { bindings::signal_pending(Task::current_raw()) } != 0 {
                break Err(EINTR);
            }
            if d.paused.load(Ordering::SeqCst) != 0 {
                if let Some(x) = xen {
                    x.sync(self.id).let_go();
                }
                let mut inner = d.inner.lock();
                let mut interrupted = false;
                while inner.pause_count != 0 && !interrupted {
                    interrupted = d.unpaused.wait_interruptible(&mut inner);
                }
                if interrupted {
                    break Err(EINTR);
                }
                continue;
            }
            d.runners.lock()[self.id as usize] = current;
            // Xen: what to inject, and INIT/SIPI; after `runners` is set, so that an event
            // raised from now on kicks this thread.
            let mut deadline = None;
            if let Some(x) = xen {
                match x.prepare(self.id, &mut s, shared) {
                    Ok(w) => d.wake(w),
                    Err(e) => {
                        d.runners.lock()[self.id as usize] = 0;
                        break Err(e);
                    }
                }
                deadline = x.deadline_in(self.id);
            }
            let flags = x86::irq_save();
            // A kick between the pause check and here is an IPI that is now pending: the guest
            // exits at once.
            if d.paused.load(Ordering::SeqCst) == 0 {
                if let (Some(x), Some(ns)) = (xen, deadline) {
                    x.sync(self.id).arm(ns);
                }
                let t0 = x86::rdtsc();
                s.turn_end = t0.wrapping_add(turn_ticks());
                let p: *mut VcpuState = &mut **s;
                // SAFETY: Interrupts are off; the state is held through `s` and its domain view
                // is filled in.
                unsafe { crate::launch::run_vcpu(vendor, p) };
                d.account(tsc_to_ns(x86::rdtsc().wrapping_sub(t0)));
            }
            x86::irq_restore(flags);
            d.runners.lock()[self.id as usize] = 0;
            if let Some(x) = xen {
                if deadline.is_some() {
                    x.sync(self.id).disarm();
                }
                x.after_run(self.id, &mut s, shared);
                if !matches!(s.exit, UserExit::None) {
                    match x.handle_exit(&**d, self.id, &mut s, shared) {
                        Ok((Handled::Resume, w)) => {
                            d.wake(w);
                            s.exit = UserExit::None;
                            continue;
                        }
                        Ok((Handled::ToUser, w)) => d.wake(w),
                        Err(e) => break Err(e),
                    }
                }
            }
            if !matches!(s.exit, UserExit::None) {
                break Ok(0);
            }
        };
        if let Some(x) = xen {
            x.sync(self.id).let_go();
        }
        s.user_completion = result.is_ok() && !matches!(s.completion, Completion::None);
        if let UserExit::EntryFailure {
            reason,
            qualification,
        }
        | UserExit::Unhandled {
            reason,
            qualification,
        } = s.exit
        {
            pr_warn!(
                "domain {} vCPU {}: {} {:#x} ({:#x}) at rip {:#x}\n",
                d.domid,
                self.id,
                if matches!(s.exit, UserExit::EntryFailure { .. }) {
                    "VM entry failed:"
                } else {
                    "unhandled exit"
                },
                reason,
                qualification,
                s.exit_rip
            );
        }
        run.exit = exit_record(&s, self.id, result.is_err());
        result
    }
}

/// How long one entry of the run loop may keep the CPU while root mode serves the guest's
/// exits by itself, in TSC ticks: 1 ms (`VcpuState::turn_end`). Host interrupts end a turn
/// sooner; a run goes on with the next turn at once when nothing is pending.
fn turn_ticks() -> u64 {
    // SAFETY: Set at boot (the TSC's calibrated rate), read only.
    u64::from(unsafe { bindings::tsc_khz }).max(1)
}

/// TSC ticks as nanoseconds.
fn tsc_to_ns(ticks: u64) -> u64 {
    // SAFETY: Set at boot (the TSC's calibrated rate), read only.
    let khz = u64::from(unsafe { bindings::tsc_khz }).max(1);
    (ticks / khz) * 1_000_000 + (ticks % khz) * 1_000_000 / khz
}

/// The uapi exit record of the last run.
fn exit_record(s: &VcpuState, id: u32, interrupted: bool) -> uapi::keel_exit {
    let mut e = uapi::keel_exit {
        vcpu: id,
        rip: s.exit_rip,
        ..Default::default()
    };
    if interrupted {
        e.reason = uapi::KEEL_EXIT_INTR;
        e.rip = s.arch.rip;
        return e;
    }
    let u = &mut e.__bindgen_anon_1;
    e.reason = match s.exit {
        // The run loop serves every MSR exit.
        UserExit::None | UserExit::Msr { .. } => uapi::KEEL_EXIT_NONE,
        UserExit::Hlt => uapi::KEEL_EXIT_HLT,
        UserExit::Io {
            port,
            size,
            input,
            data,
        } => {
            u.io = uapi::keel_exit_io {
                port,
                size,
                direction: if input {
                    uapi::KEEL_IO_IN
                } else {
                    uapi::KEEL_IO_OUT
                } as u8,
                pad: 0,
                data,
            };
            uapi::KEEL_EXIT_IO
        }
        UserExit::Mmio {
            gpa,
            size,
            read,
            data,
        } => {
            u.mmio = uapi::keel_exit_mmio {
                gpa,
                size,
                direction: if read {
                    uapi::KEEL_IO_IN
                } else {
                    uapi::KEEL_IO_OUT
                } as u8,
                pad: [0; 6],
                data,
            };
            uapi::KEEL_EXIT_MMIO
        }
        UserExit::Hypercall {
            nr,
            args,
            long_mode,
        } => {
            u.hypercall = uapi::keel_exit_hypercall {
                nr,
                args,
                ret: 0,
                longmode: long_mode.into(),
                pad: 0,
            };
            uapi::KEEL_EXIT_HYPERCALL
        }
        UserExit::Shutdown { xen_reason } => {
            u.shutdown = match xen_reason {
                None => uapi::keel_exit_shutdown {
                    kind: uapi::KEEL_SHUTDOWN_TRIPLE_FAULT,
                    reason: 0,
                },
                Some(reason) => uapi::keel_exit_shutdown {
                    kind: uapi::KEEL_SHUTDOWN_XEN,
                    reason,
                },
            };
            uapi::KEEL_EXIT_SHUTDOWN
        }
        UserExit::MemoryFault { gpa, access } => {
            u.fault = uapi::keel_exit_fault {
                gpa,
                access,
                pad: 0,
            };
            uapi::KEEL_EXIT_MEMORY_FAULT
        }
        UserExit::EntryFailure {
            reason,
            qualification,
        } => {
            u.fail = uapi::keel_exit_fail {
                hw_reason: reason,
                qualification,
            };
            uapi::KEEL_EXIT_ENTRY_FAILURE
        }
        UserExit::Unhandled {
            reason,
            qualification,
        } => {
            u.fail = uapi::keel_exit_fail {
                hw_reason: reason,
                qualification,
            };
            uapi::KEEL_EXIT_UNHANDLED
        }
    };
    e
}
