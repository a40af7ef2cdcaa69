//! What a vCPU exit means for the domain, and what the config says to do about it.
use keel_sys::{uapi, VcpuExit};
use keel_xlcfg::{Action, DomainConfig};

/// Why a domain shut down (Xen's `SHUTDOWN_*`, `KEEL_XEN_SHUTDOWN_*`), or that it crashed in
/// a way the guest did not report itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// `SHUTDOWN_poweroff` (0), or every vCPU halted with interrupts off.
    Poweroff,
    /// `SHUTDOWN_reboot` (1).
    Reboot,
    /// `SHUTDOWN_suspend` (2).
    Suspend,
    /// `SHUTDOWN_crash` (3), a triple fault, or an exit nobody serves (the text says which).
    Crash(String),
    /// `SHUTDOWN_watchdog` (4).
    Watchdog,
    /// `SHUTDOWN_soft_reset` (5).
    SoftReset,
}

impl Shutdown {
    /// The reason's word, as xl prints it, with the crash's cause.
    pub fn describe(&self) -> String {
        match self {
            Self::Poweroff => "poweroff".into(),
            Self::Reboot => "reboot".into(),
            Self::Suspend => "suspend".into(),
            Self::Crash(why) => format!("crash ({why})"),
            Self::Watchdog => "watchdog".into(),
            Self::SoftReset => "soft_reset".into(),
        }
    }

    /// Whether it counts as a crash (`c` in `keelctl list`).
    pub fn is_crash(&self) -> bool {
        matches!(self, Self::Crash(_))
    }

    /// What to do about it, from the config's `on_*` keys. Actions Keel does not carry out
    /// become the nearest it does: core dumps are not written (coredump-destroy is destroy,
    /// coredump-restart restart), rename-restart and soft-reset rebuild the domain (restart).
    /// A suspend has no action key in xl: the domain is destroyed (there is no save yet).
    pub fn action(&self, cfg: &DomainConfig) -> Action {
        let action = match self {
            Self::Poweroff => cfg.on_poweroff,
            Self::Reboot => cfg.on_reboot,
            Self::Suspend => Action::Destroy,
            Self::Crash(_) => cfg.on_crash,
            Self::Watchdog => cfg.on_watchdog,
            Self::SoftReset => cfg.on_soft_reset,
        };
        match action {
            Action::Destroy | Action::CoredumpDestroy => Action::Destroy,
            Action::Restart
            | Action::CoredumpRestart
            | Action::RenameRestart
            | Action::SoftReset => Action::Restart,
            Action::Preserve => Action::Preserve,
        }
    }
}

/// What one exit means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing for the domain: run the vCPU again.
    Continue,
    /// Answer the exit with this value (`Vcpu::complete`) and run again.
    Complete(u64),
    /// The domain is done: apply the config's action.
    Shutdown(Shutdown),
}

/// Xen's -ENOSYS as a hypercall's 64-bit result.
pub const ENOSYS_RESULT: u64 = (-38i64) as u64;

/// What `exit` of vCPU `vcpu` at `rip` means for a Xen PVH domain. The module serves the Xen
/// ABI itself (port I/O, unmapped addresses, HLT, hypercalls), so what reaches Dom0 is a
/// shutdown, a signal, or something nobody serves, which is treated as a crash.
pub fn classify(vcpu: u32, rip: u64, exit: &VcpuExit) -> Outcome {
    let crash = |why: String| Outcome::Shutdown(Shutdown::Crash(why));
    match *exit {
        VcpuExit::Interrupted | VcpuExit::Hlt => Outcome::Continue,
        // The module answers hypercalls it does not serve with -ENOSYS itself; one that
        // reaches us gets the same answer.
        VcpuExit::Hypercall { .. } => Outcome::Complete(ENOSYS_RESULT),
        VcpuExit::Shutdown { kind, reason } => match (kind, reason) {
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_POWEROFF) => {
                Outcome::Shutdown(Shutdown::Poweroff)
            }
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_REBOOT) => {
                Outcome::Shutdown(Shutdown::Reboot)
            }
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_SUSPEND) => {
                Outcome::Shutdown(Shutdown::Suspend)
            }
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_CRASH) => {
                crash("the guest reported a crash".into())
            }
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_WATCHDOG) => {
                Outcome::Shutdown(Shutdown::Watchdog)
            }
            (uapi::KEEL_SHUTDOWN_XEN, uapi::KEEL_XEN_SHUTDOWN_SOFT_RESET) => {
                Outcome::Shutdown(Shutdown::SoftReset)
            }
            (uapi::KEEL_SHUTDOWN_XEN, other) => {
                crash(format!("vCPU {vcpu}: unknown Xen shutdown reason {other}"))
            }
            (uapi::KEEL_SHUTDOWN_TRIPLE_FAULT, _) => {
                crash(format!("vCPU {vcpu}: triple fault at rip {rip:#x}"))
            }
            (other, _) => crash(format!("vCPU {vcpu}: shutdown of kind {other}")),
        },
        VcpuExit::IoIn { port, size } => crash(format!(
            "vCPU {vcpu}: unserved port read of {size} bytes from {port:#x} at rip {rip:#x}"
        )),
        VcpuExit::IoOut { port, size, data } => crash(format!(
            "vCPU {vcpu}: unserved port write of {size} bytes ({data:#x}) to {port:#x} at rip \
             {rip:#x}"
        )),
        VcpuExit::MmioRead { gpa, size } => crash(format!(
            "vCPU {vcpu}: unserved MMIO read of {size} bytes at {gpa} at rip {rip:#x}"
        )),
        VcpuExit::MmioWrite { gpa, size, data } => crash(format!(
            "vCPU {vcpu}: unserved MMIO write of {size} bytes ({data:#x}) at {gpa} at rip \
             {rip:#x}"
        )),
        VcpuExit::MemoryFault { gpa, access } => crash(format!(
            "vCPU {vcpu}: memory fault at {gpa} (access {access:#x}) at rip {rip:#x}"
        )),
        VcpuExit::EntryFailure {
            hw_reason,
            qualification,
        } => crash(format!(
            "vCPU {vcpu}: the hardware refused the guest state (reason {hw_reason:#x}, \
             qualification {qualification:#x}) at rip {rip:#x}"
        )),
        VcpuExit::Unhandled {
            hw_reason,
            qualification,
        } => crash(format!(
            "vCPU {vcpu}: exit the hypervisor cannot handle (reason {hw_reason:#x}, \
             qualification {qualification:#x}) at rip {rip:#x}"
        )),
        VcpuExit::Unknown(reason) => crash(format!(
            "vCPU {vcpu}: unknown exit reason {reason} at rip {rip:#x}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_sys::GuestAddress;

    fn xen(reason: u32) -> Outcome {
        classify(
            0,
            0x1000,
            &VcpuExit::Shutdown {
                kind: uapi::KEEL_SHUTDOWN_XEN,
                reason,
            },
        )
    }

    #[test]
    fn xen_reasons() {
        assert_eq!(xen(0), Outcome::Shutdown(Shutdown::Poweroff));
        assert_eq!(xen(1), Outcome::Shutdown(Shutdown::Reboot));
        assert_eq!(xen(2), Outcome::Shutdown(Shutdown::Suspend));
        assert!(matches!(xen(3), Outcome::Shutdown(Shutdown::Crash(_))));
        assert_eq!(xen(4), Outcome::Shutdown(Shutdown::Watchdog));
        assert_eq!(xen(5), Outcome::Shutdown(Shutdown::SoftReset));
        assert!(matches!(xen(9), Outcome::Shutdown(Shutdown::Crash(w)) if w.contains("reason 9")));
    }

    #[test]
    fn a_triple_fault_and_unserved_exits_are_crashes() {
        let o = classify(
            1,
            0xffff_ffff_8100_0000,
            &VcpuExit::Shutdown {
                kind: uapi::KEEL_SHUTDOWN_TRIPLE_FAULT,
                reason: 0,
            },
        );
        assert_eq!(
            o,
            Outcome::Shutdown(Shutdown::Crash(
                "vCPU 1: triple fault at rip 0xffffffff81000000".into()
            ))
        );
        for e in [
            VcpuExit::IoIn {
                port: 0x60,
                size: 1,
            },
            VcpuExit::MmioWrite {
                gpa: GuestAddress(0xfed0_0000),
                size: 4,
                data: 1,
            },
            VcpuExit::MemoryFault {
                gpa: GuestAddress(0x1_0000_0000),
                access: 2,
            },
            VcpuExit::EntryFailure {
                hw_reason: 33,
                qualification: 0,
            },
            VcpuExit::Unhandled {
                hw_reason: 1,
                qualification: 0,
            },
            VcpuExit::Unknown(77),
        ] {
            let o = classify(0, 0, &e);
            assert!(
                matches!(&o, Outcome::Shutdown(s) if s.is_crash()),
                "{e:?} -> {o:?}"
            );
        }
        assert_eq!(classify(0, 0, &VcpuExit::Interrupted), Outcome::Continue);
        assert_eq!(
            classify(
                0,
                0,
                &VcpuExit::Hypercall {
                    nr: 99,
                    args: [0; 5],
                    longmode: true
                }
            ),
            Outcome::Complete(ENOSYS_RESULT)
        );
    }

    #[test]
    fn actions_follow_the_config() {
        let dir = std::env::temp_dir();
        let cfg_path = dir.join(format!("keel-exit-{}.cfg", std::process::id()));
        std::fs::write(
            &cfg_path,
            "name='t'\ntype='pvh'\nkernel='/k'\non_poweroff='preserve'\non_reboot='destroy'\n\
             on_crash='coredump-restart'\n",
        )
        .unwrap();
        let cfg = DomainConfig::load::<&str>(&cfg_path, &[], &dir).unwrap();
        std::fs::remove_file(&cfg_path).unwrap();
        assert_eq!(Shutdown::Poweroff.action(&cfg), Action::Preserve);
        assert_eq!(Shutdown::Reboot.action(&cfg), Action::Destroy);
        assert_eq!(Shutdown::Crash("x".into()).action(&cfg), Action::Restart);
        assert_eq!(Shutdown::Watchdog.action(&cfg), Action::Destroy);
        assert_eq!(Shutdown::Suspend.action(&cfg), Action::Destroy);
        assert_eq!(Shutdown::SoftReset.action(&cfg), Action::Restart);
        assert_eq!(Shutdown::Crash("x".into()).describe(), "crash (x)");
    }
}
