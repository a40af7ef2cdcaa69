// SPDX-License-Identifier: GPL-2.0
//! Keel: a hypervisor loaded into a running Linux.
//!
//! Loading the module probes the CPU's virtualization extension (Intel VMX or AMD SVM), refuses
//! to load when it is absent, disabled by the firmware or already in use, slides the hypervisor
//! beneath the running Linux on every CPU (which goes on as Dom0), and registers `/dev/keel`.
//! Unloading hands every CPU back. `/sys/kernel/debug/keel/stats` has the per-CPU exit
//! counters, `domain_exits` each domain's.

use kernel::{
    debugfs,
    miscdevice::{MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
};

mod dev;
mod domain;
mod hw;
mod launch;
mod root;
mod uapi;
mod vendor;
mod xen;

/// The hardware-independent core crate (`core/` in the repository), compiled into this crate:
/// Kbuild builds one crate per module.
#[path = "../core/src/lib.rs"]
#[allow(unused_attributes)] // lib.rs's crate-level `no_std` is for its own cargo build.
pub mod keel_core;

/// The module's version, reported by `KEEL_GET_VERSION`.
pub const VERSION: (u16, u16, u16) = (0, 1, 0);

module! {
    type: Keel,
    name: "keel",
    authors: ["The Keel developers"],
    description: "Keel: a hypervisor loaded into a running Linux",
    license: "GPL",
    params: {
        fail_launch_cpu: i32 {
            default: -1,
            description: "Testing only: make the launch on this CPU fail, to exercise the rollback",
        },
        log_port: u16 {
            default: 0,
            description: "Debugging: also write root mode's error records to the 8250 UART at this I/O port (0x3f8 is COM1), polled, so they are seen even when Dom0 cannot drain them",
        },
    },
}

/// The contents of `stats` in debugfs: the exit counters of every launched CPU.
struct Stats;

impl core::fmt::Debug for Stats {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        launch::drain_all();
        launch::write_stats(f)
    }
}

/// The contents of `domain_exits` in debugfs: each live domain's exits per kind, counted by
/// root mode on all of its vCPUs (under the domain's root-mode lock).
struct DomainExits;

impl core::fmt::Debug for DomainExits {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        domain::write_exits(f)
    }
}

/// `root_spin` in debugfs (testing only): writing N keeps the writing CPU in root mode for N
/// ms, with interrupts off.
struct RootSpin(keel_core::caps::Vendor);

impl debugfs::Reader for RootSpin {
    fn read_from_slice(&self, reader: &mut kernel::uaccess::UserSliceReader) -> Result {
        let mut buf = [0u8; 8];
        let n = reader.len();
        if n > buf.len() {
            return Err(EINVAL);
        }
        reader.read_slice(&mut buf[..n])?;
        let s = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?;
        let ms = s.trim().parse::<u64>().map_err(|_| EINVAL)?;
        launch::spin_in_root(self.0, ms)
    }
}

/// `fail_entries` in debugfs (testing only): writing N makes the hardware refuse the next N
/// DomU entries, on any vCPU (see `root::vcpu::FORCED_ENTRY_FAILURES`): the entry-failure path
/// cannot be reached otherwise, since Keel enters only valid states.
struct FailEntries;

impl debugfs::Reader for FailEntries {
    fn read_from_slice(&self, reader: &mut kernel::uaccess::UserSliceReader) -> Result {
        let mut buf = [0u8; 12];
        let n = reader.len();
        if n > buf.len() {
            return Err(EINVAL);
        }
        reader.read_slice(&mut buf[..n])?;
        let s = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?;
        let count = s.trim().parse::<u32>().map_err(|_| EINVAL)?;
        root::vcpu::FORCED_ENTRY_FAILURES.store(count, core::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// `dom0_insn` in debugfs (testing only): writing `xsetbv`, `xsetbv-bad`, `invd`, `virt`
/// (VMXON or VMRUN) or `unexpected` (WBINVD, intercepted for the test only, which makes an exit
/// Keel has no handler for) runs that instruction in Dom0 on the writing CPU (see
/// [`launch::dom0_insn`]); the write fails with EIO when the instruction raised an exception.
struct Dom0InsnFile(keel_core::caps::Vendor);

impl debugfs::Reader for Dom0InsnFile {
    fn read_from_slice(&self, reader: &mut kernel::uaccess::UserSliceReader) -> Result {
        let mut buf = [0u8; 16];
        let n = reader.len();
        if n > buf.len() {
            return Err(EINVAL);
        }
        reader.read_slice(&mut buf[..n])?;
        let insn = match core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?.trim() {
            "xsetbv" => launch::Dom0Insn::Xsetbv,
            "xsetbv-bad" => launch::Dom0Insn::XsetbvBad,
            "invd" => launch::Dom0Insn::Invd,
            "virt" => launch::Dom0Insn::Virt,
            "unexpected" => launch::Dom0Insn::Unexpected,
            _ => return Err(EINVAL),
        };
        launch::dom0_insn(self.0, insn)
    }
}

/// The loaded module. Fields drop in order: `/dev/keel` goes first, then the debugfs files,
/// the launch (every CPU is handed back), and last the domain registry.
#[pin_data]
pub struct Keel {
    caps: keel_core::caps::Caps,
    #[pin]
    misc: MiscDeviceRegistration<dev::KeelFile>,
    #[pin]
    stats: debugfs::File<Stats>,
    #[pin]
    domain_exits: debugfs::File<DomainExits>,
    #[pin]
    root_spin: debugfs::File<RootSpin>,
    #[pin]
    dom0_insn: debugfs::File<Dom0InsnFile>,
    #[pin]
    fail_entries: debugfs::File<FailEntries>,
    debugfs_dir: debugfs::Dir,
    launched: launch::Launched,
    domains: domain::Registration,
}

impl kernel::InPlaceModule for Keel {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        let domains = domain::Registration::new();
        let caps = hw::probe();
        let launched = caps.and_then(|c| {
            launch::Launched::new(
                c,
                module_parameters::fail_launch_cpu.value(),
                module_parameters::log_port.value(),
            )
        });
        let dir = debugfs::Dir::new(c"keel");
        let vendor = caps
            .as_ref()
            .map_or(keel_core::caps::Vendor::Svm, |c| c.vendor);
        try_pin_init!(Self {
            caps: caps?,
            launched: launched?,
            misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"keel" }),
            stats <- dir.read_only_file(c"stats", Stats),
            domain_exits <- dir.read_only_file(c"domain_exits", DomainExits),
            root_spin <- dir.write_only_file(c"root_spin", RootSpin(vendor)),
            dom0_insn <- dir.write_only_file(c"dom0_insn", Dom0InsnFile(vendor)),
            fail_entries <- dir.write_only_file(c"fail_entries", FailEntries),
            debugfs_dir: dir,
            domains,
        })
    }
}
