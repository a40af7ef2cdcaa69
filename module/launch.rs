// SPDX-License-Identifier: GPL-2.0
//! Sliding Keel under the running Linux, CPU by CPU, and handing the CPUs back.
//!
//! A dynamic CPU-hotplug state does the work: registering it runs [`cpu_online`] on every
//! online CPU (on that CPU, in its hotplug thread), later onlined CPUs run it too, and a CPU
//! going offline runs [`cpu_offline`] first. If any CPU fails to launch, the hotplug core
//! calls [`cpu_offline`] on those that succeeded and the registration fails: insmod fails with
//! every CPU handed back. Removing the state at unload hands every CPU back.
//!
//! This is Dom0 code: it allocates, logs and takes Linux locks. The root-mode side is in
//! `root/`.

use core::ffi::{c_int, c_uint, c_void};
use kernel::{bindings, prelude::*};

use crate::keel_core::arch::cr4;
use crate::keel_core::{
    caps::{Caps, Vendor},
    cpuid::Identity,
    exit::ExitKind,
    hypercall::{self, Call},
    logring::{Level, LogRing},
};
use crate::root::{x86, CpuInfo, CpuState, Page};
use crate::vendor::{self, insn_faulted};

/// The most CPUs Keel handles.
pub(crate) const MAX_CPUS: usize = 256;

/// Linux's GDT layout on x86-64 (`asm/segment.h`): the TSS descriptor's index and the size.
const GDT_ENTRY_TSS: u64 = 8;
const GDT_SIZE: u16 = 16 * 8;

/// What the hotplug callbacks share, under [`TABLE`].
pub(crate) struct Table {
    caps: Option<Caps>,
    /// Make the launch on this CPU fail (a test of the rollback), or -1.
    fail_cpu: i32,
    /// The UART root mode mirrors its error records to, or 0.
    log_port: u16,
    /// Whether Linux had the extension's feature bit set at load, to restore it at unload.
    had_feature: bool,
    /// Root mode's top-level page table: the kernel half of Linux's, which every process
    /// shares (the kernel's top-level entries are allocated at boot and never change).
    host_pt: Option<KBox<Page>>,
    cpus: [Option<KBox<CpuState>>; MAX_CPUS],
}

kernel::sync::global_lock! {
    // SAFETY: Initialized in `Launched::new` before the hotplug state that uses it is
    // registered, once per module load.
    unsafe(uninit) static TABLE: Mutex<Table> = Table {
        caps: None,
        fail_cpu: -1,
        log_port: 0,
        had_feature: false,
        host_pt: None,
        cpus: [const { None }; MAX_CPUS],
    };
}

unsafe extern "C" {
    /// Linux's per-CPU `struct cpuinfo_x86` (`cpu_data(cpu)`), exported.
    static cpu_info: bindings::cpuinfo_x86;
    /// Linux's per-CPU GDT page (the writable GDT), exported.
    static gdt_page: [u64; 512];
}

/// The address of CPU `cpu`'s copy of a per-CPU variable.
fn per_cpu<T>(var: *const T, cpu: u32) -> *mut T {
    // SAFETY: `__per_cpu_offset` is set up at boot for every possible CPU and never changes;
    // reading it is a plain load.
    let offset = unsafe { bindings::__per_cpu_offset[cpu as usize] };
    (var as usize).wrapping_add(offset) as *mut T
}

/// The physical address of a kernel virtual address in the direct map or the kernel image
/// (Linux's `__pa`).
fn kernel_pa(va: u64) -> u64 {
    const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
    // SAFETY: `phys_base` and `page_offset_base` are set at boot and never change after.
    unsafe {
        if va >= START_KERNEL_MAP {
            va - START_KERNEL_MAP + bindings::phys_base as u64
        } else {
            va - bindings::page_offset_base as u64
        }
    }
}

/// Builds root mode's top-level page table from the current one's kernel half.
fn host_page_table() -> Result<KBox<Page>> {
    let mut pt = KBox::new(Page([0; 4096]), GFP_KERNEL)?;
    // SAFETY: Set at boot, never changed after.
    let direct_map = unsafe { bindings::page_offset_base } as u64;
    let current = (x86::read_cr3() & 0x000f_ffff_ffff_f000) + direct_map;
    // SAFETY: CR3 points at the current top-level table, a page of RAM in the direct map; its
    // upper half (entries 256..511) maps the kernel.
    let kernel_half = unsafe { core::slice::from_raw_parts((current + 2048) as *const u8, 2048) };
    pt.0[2048..].copy_from_slice(kernel_half);
    Ok(pt)
}

/// Sets or clears one of Linux's cached CPU feature bits.
fn set_feature(caps: *mut bindings::cpuinfo_x86, (word, bit): (usize, u32), on: bool) -> bool {
    // SAFETY: `caps` is `boot_cpu_data` or a CPU's `cpu_info`, valid for the kernel's lifetime;
    // the capability words are updated with atomic bit operations, as Linux's own
    // set_cpu_cap/clear_cpu_cap do.
    unsafe {
        let w = &raw mut (*caps).__bindgen_anon_3.x86_capability[word];
        let atomic = &*w.cast::<core::sync::atomic::AtomicU32>();
        let old = if on {
            atomic.fetch_or(1 << bit, core::sync::atomic::Ordering::Relaxed)
        } else {
            atomic.fetch_and(!(1 << bit), core::sync::atomic::Ordering::Relaxed)
        };
        old & (1 << bit) != 0
    }
}

/// Makes one of Keel's own hypercalls that take no argument (Ping, Leave) on this CPU.
fn hypercall(vendor: Vendor, call: Call) -> u64 {
    // SAFETY: This CPU runs beneath Keel (the caller checked); Ping and Leave ignore RDI.
    unsafe { vendor::hypercall(vendor, call, 0) }
}

/// Runs a DomU vCPU on this CPU with the `Run` hypercall, until it exits for Dom0.
///
/// # Safety
///
/// Interrupts are off; `vcpu` is the vCPU's state, held by the caller for the call, with its
/// domain's view filled in.
pub(crate) unsafe fn run_vcpu(vendor: Vendor, vcpu: *mut crate::root::vcpu::VcpuState) {
    // SAFETY: Every online CPU runs beneath Keel while the module is loaded; the caller's
    // contract covers the state Run takes.
    unsafe { vendor::hypercall(vendor, Call::Run, vcpu as u64) };
}

/// Testing only: keeps this CPU in root mode for `ms` milliseconds (at most 1000), with
/// interrupts off, so that a test can make an NMI arrive there.
pub(crate) fn spin_in_root(vendor: Vendor, ms: u64) -> Result {
    if ms > 1000 {
        return Err(EINVAL);
    }
    // SAFETY: Set at boot (the TSC's calibrated rate), read only.
    let ticks = ms * u64::from(unsafe { bindings::tsc_khz });
    let flags = x86::irq_save();
    // SAFETY: Every online CPU runs beneath Keel while the module is loaded; Spin takes a
    // number of ticks.
    unsafe { vendor::hypercall(vendor, Call::Spin, ticks) };
    x86::irq_restore(flags);
    Ok(())
}

/// Testing only: an instruction of Dom0 that Keel intercepts, run by [`dom0_insn`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dom0Insn {
    /// XSETBV of XCR0 with the value it holds.
    Xsetbv,
    /// XSETBV of XCR0 without x87 state (bit 0), which the CPU refuses with #GP.
    XsetbvBad,
    /// INVD, which Keel performs as WBINVD (dropping Dom0's dirty cache lines would lose
    /// memory writes).
    Invd,
    /// The vendor's VMXON or VMRUN, which Keel answers with #UD as a CPU without the
    /// extension would.
    Virt,
    /// WBINVD while Keel intercepts it for this test only (see [`Call::TestIntercept`]): an exit
    /// Keel has no handler for, which it logs with a state dump and answers with #UD.
    Unexpected,
}

/// Testing only: runs `insn` on this CPU in Dom0 (CPL 0), with interrupts off, so that a test
/// can check Keel's handling of it against the hardware's rules. `EIO` says the instruction raised
/// an exception (caught through the kernel's exception table); `ENODEV` that this CPU does not
/// run beneath Keel or has no XSAVE enabled.
pub(crate) fn dom0_insn(vendor: Vendor, insn: Dom0Insn) -> Result {
    let flags = x86::irq_save();
    let result = dom0_insn_irqs_off(vendor, insn);
    x86::irq_restore(flags);
    result
}

fn dom0_insn_irqs_off(vendor: Vendor, insn: Dom0Insn) -> Result {
    let id = x86::cpuid(crate::keel_core::cpuid::HV_BASE, 0);
    if id[1..] != crate::keel_core::cpuid::SIGNATURE {
        // INVD on bare metal would drop dirty cache lines.
        return Err(ENODEV);
    }
    if insn == Dom0Insn::Virt {
        // SAFETY: This CPU runs beneath Keel (see above), with interrupts off.
        let faulted = unsafe { vendor::virt_insn_faults(vendor) };
        return if faulted { Err(EIO) } else { Ok(()) };
    }
    if insn == Dom0Insn::Unexpected {
        return unexpected_exit(vendor);
    }
    if insn == Dom0Insn::Invd {
        // SAFETY: This CPU runs beneath Keel (its CPUID leaf answered, and with interrupts off
        // the hand-back cannot run here), which intercepts INVD and performs WBINVD instead.
        unsafe { core::arch::asm!("invd", options(nostack, preserves_flags)) };
        return Ok(());
    }
    if x86::read_cr4() & cr4::OSXSAVE == 0 {
        return Err(ENODEV);
    }
    let xcr0 = x86::xgetbv0();
    let value = if insn == Dom0Insn::XsetbvBad {
        xcr0 & !1
    } else {
        xcr0
    };
    // SAFETY: CR4.OSXSAVE is set. Writing XCR0's own value changes nothing; a value without
    // bit 0 is refused with #GP, which the exception-table entry catches.
    let faulted = unsafe {
        insn_faulted!(
            "xsetbv",
            in("ecx") 0,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack),
        )
    };
    if faulted {
        Err(EIO)
    } else {
        Ok(())
    }
}

/// [`Dom0Insn::Unexpected`]: arms the testing intercept of WBINVD on this CPU, runs WBINVD,
/// disarms it. `EIO` when WBINVD faulted (as it must: Keel has no handler for the exit),
/// `EOPNOTSUPP` when the CPU cannot intercept WBINVD.
fn unexpected_exit(vendor: Vendor) -> Result {
    // SAFETY: This CPU runs beneath Keel (the caller checked, with interrupts off);
    // TestIntercept takes 1 or 0.
    let call = |on: u64| unsafe { vendor::hypercall(vendor, Call::TestIntercept, on) };
    if call(1) != 0 {
        return Err(EOPNOTSUPP);
    }
    // SAFETY: WBINVD writes back and invalidates the caches, which loses nothing. With the
    // intercept armed it exits to Keel, which raises #UD; the exception-table entry catches it.
    let faulted = unsafe { insn_faulted!("wbinvd", options(nostack)) };
    call(0);
    if faulted {
        Err(EIO)
    } else {
        Ok(())
    }
}

/// Drains a CPU's root-mode log into the kernel log.
fn drain(info: &CpuInfo) {
    while let Some(rec) = info.log.read() {
        match rec.level {
            Level::Err => pr_err!("{}\n", rec.msg()),
            Level::Warn => pr_warn!("{}\n", rec.msg()),
            Level::Info => pr_info!("{}\n", rec.msg()),
            Level::Debug => pr_debug!("{}\n", rec.msg()),
        }
    }
    let dropped = info.log.take_dropped();
    if dropped != 0 {
        pr_warn!(
            "CPU {}: {} root-mode log records dropped\n",
            info.cpu,
            dropped
        );
    }
}

/// Allocates a CPU's zeroed state.
fn alloc_state(cpu: u32, caps: &Caps, log_port: u16) -> Result<KBox<CpuState>> {
    let mut state = KBox::<CpuState>::new_uninit(GFP_KERNEL | __GFP_ZERO)?;
    let (major, minor, patch) = crate::VERSION;
    let xcr0_supported = if x86::read_cr4() & cr4::OSXSAVE != 0 {
        let r = x86::cpuid(0xd, 0);
        (u64::from(r[3]) << 32) | u64::from(r[0])
    } else {
        0
    };
    let info = CpuInfo {
        cpu,
        vendor: caps.vendor,
        identity: Identity {
            version: (major, minor, patch),
            abi_version: crate::uapi::KEEL_ABI_VERSION,
        },
        // SAFETY: Set at boot, never changed after.
        page_offset_base: unsafe { bindings::page_offset_base } as u64,
        nrip_save: caps.has(crate::keel_core::caps::flags::NRIP_SAVE),
        xcr0_supported,
        launched: false.into(),
        counters: [const { core::sync::atomic::AtomicU64::new(0) };
            crate::keel_core::exit::EXIT_KINDS],
        log: LogRing::new(),
        log_port,
    };
    let p = state.as_mut_ptr();
    // SAFETY: `p` points at the allocation, zeroed by __GFP_ZERO. All-zero bytes are a valid
    // value for every field of `CpuState` but `info` (its log records hold an enum), which is
    // written here; so the whole value is initialised afterwards.
    unsafe {
        (&raw mut (*p).info).write(info);
        Ok(state.assume_init())
    }
}

/// Launches Keel beneath this CPU (hotplug startup callback; runs on `cpu`).
///
/// # Safety
///
/// Called by the CPU-hotplug core only, on `cpu`, in its hotplug thread.
unsafe extern "C" fn cpu_online(cpu: c_uint) -> c_int {
    match online(cpu) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

fn online(cpu: u32) -> Result {
    let mut table = TABLE.lock();
    let caps = table.caps.ok_or(EINVAL)?;
    if cpu as usize >= MAX_CPUS {
        pr_err!("CPU {}: Keel handles CPUs 0..{} only\n", cpu, MAX_CPUS);
        return Err(EINVAL);
    }
    let mut state = alloc_state(cpu, &caps, table.log_port)?;
    let inject_failure = table.fail_cpu == cpu as i32;
    let host_cr3 = match &table.host_pt {
        Some(pt) => kernel_pa(pt.0.as_ptr() as u64),
        None => return Err(EINVAL),
    };
    let flags = x86::irq_save();
    // SAFETY: Interrupts are off until `irq_restore`; this hotplug callback runs on `cpu`
    // itself; `state` is freshly zeroed and owned by this CPU until `offline` takes it back.
    let result = unsafe { vendor::launch(caps.vendor, &mut state, host_cr3, inject_failure, cpu) };
    if result.is_err() && vendor::leaving_clobbers_tr(caps.vendor) {
        // A failed first entry went through a VM exit, which clobbered TR's limit.
        reload_tr(cpu);
    }
    let launched = result.is_ok() && hypercall(caps.vendor, Call::Ping) == hypercall::PONG;
    if launched {
        state
            .info
            .launched
            .store(true, core::sync::atomic::Ordering::Relaxed);
        // Linux's per-CPU `cpu_info` is valid for the kernel's lifetime.
        set_feature(
            per_cpu(&raw const cpu_info, cpu),
            vendor::feature_bit(caps.vendor),
            false,
        );
    }
    x86::irq_restore(flags);
    drain(&state.info);
    if !launched {
        if result.is_ok() {
            // Launched, but the hypervisor does not answer: cannot happen unless the launch
            // itself is broken. Keep the memory (it may be in use) and fail.
            pr_err!("CPU {}: Keel launched but does not answer\n", cpu);
            KBox::leak(state);
        }
        return Err(EIO);
    }
    pr_info!("CPU {}: Linux now runs as Dom0 on Keel\n", cpu);
    table.cpus[cpu as usize] = Some(state);
    Ok(())
}

/// Hands this CPU back (hotplug teardown callback; runs on `cpu`, also when it goes offline).
///
/// # Safety
///
/// Called by the CPU-hotplug core only, on `cpu`, in its hotplug thread.
unsafe extern "C" fn cpu_offline(cpu: c_uint) -> c_int {
    match offline(cpu) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

fn offline(cpu: u32) -> Result {
    let mut table = TABLE.lock();
    let Some(state) = table.cpus.get_mut(cpu as usize).and_then(Option::take) else {
        return Ok(());
    };
    let vendor = state.info.vendor;
    let flags = x86::irq_save();
    let result = hypercall(vendor, Call::Leave);
    if result == 0 && vendor::leaving_clobbers_tr(vendor) {
        reload_tr(cpu);
    }
    x86::irq_restore(flags);
    drain(&state.info);
    if result != 0 {
        pr_err!(
            "CPU {}: Keel refused to leave ({:#x}); its memory is kept\n",
            cpu,
            result
        );
        KBox::leak(state);
        return Err(EIO);
    }
    if table.had_feature {
        set_feature(
            per_cpu(&raw const cpu_info, cpu),
            vendor::feature_bit(vendor),
            true,
        );
    }
    pr_info!("CPU {}: back on bare metal\n", cpu);
    Ok(())
}

/// Reloads TR after leaving VMX: VM exits set its limit to 0x67 (SDM 28.5.2), which would hide
/// the I/O bitmap of Linux's TSS. LTR needs the descriptor not busy and a writable GDT (the
/// GDTR normally points at a read-only alias), as Linux's own `force_reload_TR` does it.
fn reload_tr(cpu: u32) {
    let ro = x86::sgdt();
    let rw = x86::DescTable {
        base: per_cpu(&raw const gdt_page, cpu) as u64,
        limit: GDT_SIZE - 1,
    };
    let tss = (rw.base + GDT_ENTRY_TSS * 8) as *mut u64;
    // SAFETY: `rw` is this CPU's writable GDT, with the same contents as the read-only alias;
    // interrupts are off; the TSS descriptor's busy bit (type bit 1, bit 41) is cleared so LTR
    // can load it; then the read-only alias is loaded back.
    unsafe {
        x86::lgdt(&rw);
        tss.write_volatile(tss.read_volatile() & !(1 << 41));
        core::arch::asm!("ltr {0:x}", in(reg) (GDT_ENTRY_TSS * 8) as u16, options(nostack));
        x86::lgdt(&ro);
    }
}

/// The log-drain thread: copies every CPU's root-mode log into the kernel log ten times a
/// second.
///
/// # Safety
///
/// Runs as a kthread created by `Launched::new` and stopped by its `drop`.
unsafe extern "C" fn drain_thread(_data: *mut c_void) -> c_int {
    // SAFETY: Called from a kthread, as `kthread_should_stop` requires.
    while !unsafe { bindings::kthread_should_stop() } {
        drain_all();
        // SAFETY: Sleeping in a kthread.
        unsafe { bindings::msleep_interruptible(100) };
    }
    0
}

/// Drains every launched CPU's log.
pub(crate) fn drain_all() {
    let table = TABLE.lock();
    for state in table.cpus.iter().flatten() {
        drain(&state.info);
    }
}

/// Writes the exit counters: one line per CPU and exit kind, `cpu kind count`.
pub(crate) fn write_stats(f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    let table = TABLE.lock();
    writeln!(f, "# cpu exit count")?;
    for state in table.cpus.iter().flatten() {
        for kind in ExitKind::ALL {
            let n = state.info.counters[kind as usize].load(core::sync::atomic::Ordering::Relaxed);
            writeln!(f, "{} {} {}", state.info.cpu, kind.name(), n)?;
        }
    }
    Ok(())
}

/// The launched state of the machine: dropping it hands every CPU back.
pub(crate) struct Launched {
    hotplug_state: c_int,
    thread: *mut bindings::task_struct,
    vendor: Vendor,
}

// SAFETY: The fields are handles (a hotplug state number, a kthread pointer) usable from any
// thread.
unsafe impl Send for Launched {}
// SAFETY: As above; `Launched` has no `&self` methods that mutate.
unsafe impl Sync for Launched {}

impl Launched {
    /// Launches Keel on every online CPU. `fail_cpu` (a test knob) makes one CPU's launch fail;
    /// `log_port` (a debugging aid), if not 0, is the UART root mode's errors also go to.
    pub(crate) fn new(caps: Caps, fail_cpu: i32, log_port: u16) -> Result<Self> {
        // SAFETY: `nr_cpu_ids` is set at boot.
        let nr = unsafe { bindings::nr_cpu_ids } as usize;
        if nr > MAX_CPUS {
            pr_err!("{} possible CPUs: Keel handles {} at most\n", nr, MAX_CPUS);
            return Err(EOPNOTSUPP);
        }
        // SAFETY: Called once per module load, before any user of TABLE exists.
        unsafe { TABLE.init() };
        let host_pt = host_page_table()?;
        let feature = vendor::feature_bit(caps.vendor);
        // `boot_cpu_data` is Linux's boot CPU data, valid for the kernel's lifetime.
        let had_feature = set_feature(&raw mut bindings::boot_cpu_data, feature, false);
        {
            let mut table = TABLE.lock();
            table.caps = Some(caps);
            table.fail_cpu = fail_cpu;
            table.log_port = log_port;
            table.had_feature = had_feature;
            table.host_pt = Some(host_pt);
        }
        // SAFETY: The callbacks are `extern "C"` functions of this module, which removes the
        // state before it is unloaded; the name is a static C string.
        let hotplug_state = unsafe {
            bindings::__cpuhp_setup_state(
                bindings::cpuhp_state_CPUHP_AP_ONLINE_DYN,
                c"keel:online".as_char_ptr(),
                true,
                Some(cpu_online),
                Some(cpu_offline),
                false,
            )
        };
        if hotplug_state < 0 {
            TABLE.lock().host_pt = None;
            set_feature(&raw mut bindings::boot_cpu_data, feature, had_feature);
            pr_err!("the launch failed on at least one CPU: every CPU was handed back\n");
            return Err(Error::from_errno(hotplug_state));
        }
        // SAFETY: `drain_thread` is this module's; the name is a static C string without
        // format directives. The thread is stopped in `drop` before the module goes away.
        let thread = unsafe {
            bindings::kthread_create_on_node(
                Some(drain_thread),
                core::ptr::null_mut(),
                -1,
                c"keel-log".as_char_ptr(),
            )
        };
        let thread = if (thread as isize) < 0 && (thread as isize) >= -4095 {
            pr_warn!("no log-drain thread; root-mode logs are drained at unload\n");
            core::ptr::null_mut()
        } else {
            // SAFETY: `thread` is a newly created kthread.
            unsafe { bindings::wake_up_process(thread) };
            thread
        };
        pr_info!(
            "Keel is beneath Linux on {} CPUs\n",
            crate::hw::online_cpus()
        );
        Ok(Self {
            hotplug_state,
            thread,
            vendor: caps.vendor,
        })
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if !self.thread.is_null() {
            // SAFETY: The thread was created in `new` and only exits when told to.
            unsafe { bindings::kthread_stop(self.thread) };
        }
        // SAFETY: `hotplug_state` was returned by `__cpuhp_setup_state`; removing it runs the
        // teardown callback on every online CPU.
        unsafe {
            bindings::__cpuhp_remove_state(self.hotplug_state as bindings::cpuhp_state, true)
        };
        let had = {
            let mut table = TABLE.lock();
            table.host_pt = None;
            table.had_feature
        };
        set_feature(
            &raw mut bindings::boot_cpu_data,
            vendor::feature_bit(self.vendor),
            had,
        );
        drain_all();
        pr_info!("Keel has left: Linux runs on bare metal\n");
    }
}
