//! Building a Xen PVH domain from its config: the checks `keelctl create` also makes before it
//! starts a process, and the domain itself (memory, vCPUs, console and XenStore rings, event
//! channels, HVM params).
use std::{path::Path, sync::Arc};

use keel_builder::{vcpu::Segment, VcpuState};
use keel_sys::{
    uapi, Domain, DomainName, EventFd, GuestAddress, GuestMemoryWrite, GuestRam, KeelDev,
    RangeKind, Vcpu, XenParam,
};
use keel_xlcfg::DomainConfig;

use crate::ring::{ByteRing, ConsoleRing, XENSTORE};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The host's RAM in bytes (`MemTotal` of /proc/meminfo), if it can be read.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_total(&text)
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What can be checked about `cfg` without the module: its files are readable, its memory
/// fits in `host_memory` bytes (when known). `keelctl create` runs it before it starts
/// keel-domd, and keel-domd again.
pub fn check_config(cfg: &DomainConfig, host_memory: Option<u64>) -> Result<(), String> {
    let readable = |what: &str, key: &str, path: &Path| -> Result<(), String> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => std::fs::File::open(path)
                .map(drop)
                .map_err(|e| format!("cannot read the {what} {} (`{key}'): {e}", path.display())),
            Ok(_) => Err(format!(
                "the {what} {} (`{key}') is not a regular file",
                path.display()
            )),
            Err(e) => Err(format!(
                "cannot read the {what} {} (`{key}'): {e}",
                path.display()
            )),
        }
    };
    readable("kernel", "kernel", &cfg.kernel)?;
    if let Some(r) = &cfg.ramdisk {
        readable("ramdisk", "ramdisk", r)?;
    }
    if cfg.vcpus == 0 {
        return Err("`vcpus' = 0: a domain needs at least 1 vCPU".into());
    }
    if let Some(host) = host_memory {
        let want = cfg.memory_mib.saturating_mul(MIB);
        if want > host {
            return Err(format!(
                "`memory' = {} MiB is more than the host's {} MiB of RAM",
                cfg.memory_mib,
                host / MIB
            ));
        }
    }
    Ok(())
}

/// Whether a live domain is named `name`.
pub fn name_in_use(dev: &KeelDev, name: &str) -> Result<Option<u32>, keel_sys::Error> {
    Ok(dev
        .list_domains()?
        .into_iter()
        .find(|d| d.name == name)
        .map(|d| d.domid))
}

/// A built domain, not yet running.
pub struct Guest {
    /// The domain (dropping the last reference, after the vCPUs, destroys the domain; the
    /// device backends hold the others while they run).
    pub domain: Arc<Domain>,
    /// Its vCPUs, vCPU 0 at the PVH entry.
    pub vcpus: Vec<Vcpu>,
    /// Dom0's end of the console ring.
    pub console: ConsoleRing,
    /// Signalled when the guest notifies the console port.
    pub console_evt: EventFd,
    /// The console's port in the DomU.
    pub console_port: u32,
    /// Signalled when the guest notifies the XenStore port.
    pub store_evt: EventFd,
    /// The XenStore's port in the DomU.
    pub store_port: u32,
    /// Dom0's end of the XenStore ring.
    pub store: ByteRing,
    /// The XenStore ring's pfn.
    pub store_pfn: u64,
    /// The console ring's pfn.
    pub console_pfn: u64,
    // The mappings the rings live in; the console ring points into `_console_page`, so it is
    // declared (and dropped) before it.
    _console_page: GuestRam,
    _store_page: GuestRam,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("domid", &self.domain.domid())
            .field("vcpus", &self.vcpus.len())
            .field("console_port", &self.console_port)
            .field("store_port", &self.store_port)
            .finish_non_exhaustive()
    }
}

/// An error of a module call while building, worded for the user: memory refusals say so.
fn module_error(what: &str, cfg: &DomainConfig, e: keel_sys::Error) -> String {
    match e.errno() {
        Some(libc::ENOSPC) | Some(libc::ENOMEM) => format!(
            "`memory' = {} MiB: the hypervisor cannot give the domain that much memory ({what}: \
             {e})",
            cfg.memory_mib
        ),
        Some(libc::ENOTTY) => {
            format!("{what}: {e}: the loaded keel module does not serve Xen PVH domains (too old?)")
        }
        _ => format!("{what}: {e}"),
    }
}

fn seg(s: &Segment) -> uapi::keel_segment {
    uapi::keel_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        attrib: s.attrib,
    }
}

/// Puts the builder's entry state into `sregs` and `regs` (the rest stays as given).
pub fn entry_state(state: &VcpuState, sregs: &mut uapi::keel_sregs, regs: &mut uapi::keel_regs) {
    sregs.cs = seg(&state.cs);
    sregs.ds = seg(&state.ds);
    sregs.es = seg(&state.es);
    sregs.fs = seg(&state.fs);
    sregs.gs = seg(&state.gs);
    sregs.ss = seg(&state.ss);
    sregs.tr = seg(&state.tr);
    sregs.ldt = seg(&state.ldt);
    sregs.gdt.base = state.gdt.base;
    sregs.gdt.limit = state.gdt.limit;
    sregs.idt.base = state.idt.base;
    sregs.idt.limit = state.idt.limit;
    sregs.cr0 = state.cr0;
    sregs.cr3 = state.cr3;
    sregs.cr4 = state.cr4;
    sregs.efer = state.efer;
    *regs = uapi::keel_regs {
        rip: state.rip,
        rbx: state.rbx,
        rflags: state.rflags,
        ..Default::default()
    };
}

/// Lays out the domain `cfg` describes with keel-builder (no module needed). Fails with a
/// message naming the problem: a file that cannot be read, a file that is not a kernel.
pub fn image(cfg: &DomainConfig) -> Result<keel_builder::Image, String> {
    check_config(cfg, host_memory())?;
    let kernel = std::fs::read(&cfg.kernel)
        .map_err(|e| format!("cannot read the kernel {}: {e}", cfg.kernel.display()))?;
    let initrd = match &cfg.ramdisk {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| format!("cannot read the ramdisk {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let cmdline = cfg.cmdline.clone().unwrap_or_default();
    keel_builder::build(&keel_builder::Config {
        kernel: &kernel,
        initrd: initrd.as_deref(),
        cmdline: &cmdline,
        memory: cfg.memory_mib.saturating_mul(MIB),
        vcpus: cfg.vcpus,
    })
    .map_err(|e| match e {
        keel_builder::Error::Memory(_) | keel_builder::Error::Vcpus { .. } => e.to_string(),
        keel_builder::Error::Initrd(_) => format!("the ramdisk: {e}"),
        keel_builder::Error::Cmdline(_) => format!("the command line: {e}"),
        _ => format!(
            "{} is not a kernel Keel can boot: {e}",
            cfg.kernel.display()
        ),
    })
}

/// Builds the domain `cfg` describes (see the module's doc). Fails with a message that names
/// the problem; whatever was created is gone again by then.
pub fn build(dev: &KeelDev, cfg: &DomainConfig) -> Result<Guest, String> {
    let name = DomainName::new(&cfg.name).map_err(|e| format!("`name': {e}"))?;
    let image = image(cfg)?;
    if let Some(domid) = name_in_use(dev, &cfg.name).map_err(|e| e.to_string())? {
        return Err(format!(
            "a domain named '{}' already exists (id {domid})",
            cfg.name
        ));
    }
    let total: u64 = image
        .memory
        .iter()
        .map(|r| r.range.end - r.range.start)
        .sum();
    let domain = dev
        .create_xen_domain(&name, cfg.vcpus, total)
        .map_err(|e| match e.errno() {
            Some(libc::EEXIST) => format!("a domain named '{}' already exists", cfg.name),
            _ => module_error("creating the domain", cfg, e),
        })?;
    for r in &image.memory {
        domain
            .add_range(
                GuestAddress(r.range.start),
                r.range.end - r.range.start,
                RangeKind::Ram,
            )
            .map_err(|e| module_error("adding guest memory", cfg, e))?;
    }
    for r in &image.memory {
        let mut ram = domain
            .map_memory(GuestAddress(r.range.start), r.range.end - r.range.start)
            .map_err(|e| module_error("mapping guest memory", cfg, e))?;
        for w in image
            .writes
            .iter()
            .filter(|w| w.range().start >= r.range.start && w.range().end <= r.range.end)
        {
            ram.write_at(GuestAddress(w.gpa), &w.bytes)
                .map_err(|e| format!("loading the guest: {e}"))?;
        }
    }
    // Every write must have landed in a range.
    if let Some(w) = image.writes.iter().find(|w| {
        !image
            .memory
            .iter()
            .any(|r| w.range().start >= r.range.start && w.range().end <= r.range.end)
    }) {
        return Err(format!(
            "the builder placed {w:?} outside the domain's memory"
        ));
    }
    let console_gpa = image.special.console_pfn * PAGE;
    let store_gpa = image.special.xenstore_pfn * PAGE;
    let console_page = domain
        .map_memory(GuestAddress(console_gpa), PAGE)
        .map_err(|e| module_error("mapping the console page", cfg, e))?;
    let store_page = domain
        .map_memory(GuestAddress(store_gpa), PAGE)
        .map_err(|e| module_error("mapping the XenStore page", cfg, e))?;

    let mut vcpus = Vec::new();
    for id in 0..cfg.vcpus {
        vcpus.push(
            domain
                .create_vcpu(id)
                .map_err(|e| module_error(&format!("creating vCPU {id}"), cfg, e))?,
        );
    }
    let boot = &vcpus[0];
    let mut sregs = boot
        .sregs()
        .map_err(|e| module_error("reading vCPU 0's registers", cfg, e))?;
    let mut regs = uapi::keel_regs::default();
    entry_state(&image.vcpu, &mut sregs, &mut regs);
    boot.set_sregs(&sregs)
        .map_err(|e| module_error("setting vCPU 0's segment registers", cfg, e))?;
    boot.set_regs(&regs)
        .map_err(|e| module_error("setting vCPU 0's registers", cfg, e))?;

    let new_evt = || EventFd::new().map_err(|e| format!("cannot create an eventfd: {e}"));
    let console_evt = new_evt()?;
    let store_evt = new_evt()?;
    let console_port = domain
        .evtchn_alloc(&console_evt)
        .map_err(|e| module_error("allocating the console event channel", cfg, e))?;
    let store_port = domain
        .evtchn_alloc(&store_evt)
        .map_err(|e| module_error("allocating the XenStore event channel", cfg, e))?;
    for (param, value) in [
        (XenParam::ConsolePfn, image.special.console_pfn),
        (XenParam::ConsoleEvtchn, u64::from(console_port)),
        // Set by the devices once the XenStore daemon serves the ring: until then a store pfn
        // of 0 tells the guest there is none (xenbus_init gives up with ENOENT) rather than
        // letting its first request wait forever.
        (XenParam::StorePfn, 0),
        (XenParam::StoreEvtchn, u64::from(store_port)),
    ] {
        domain
            .set_param(param, value)
            .map_err(|e| module_error(&format!("setting HVM param {param:?}"), cfg, e))?;
    }
    // XENMEM_memory_map answers with the same map as the start info's (guests without one).
    let memmap: Vec<(u64, u64, u32)> = image
        .memmap
        .iter()
        .map(|e| (e.addr, e.size, e.r#type))
        .collect();
    domain
        .set_memory_map(&memmap)
        .map_err(|e| module_error("setting the memory map", cfg, e))?;
    // SAFETY: the page is 4096 bytes (more than the ring's bytes), page-aligned, mapped as long as
    // `_console_page` lives, which the Guest drops after the ring; it is only accessed through
    // raw pointers.
    let console = unsafe { ConsoleRing::new(console_page.as_ptr()) };
    // SAFETY: as for the console: a 4096-byte page (more than XENSTORE's bytes), mapped as
    // long as `_store_page`, which is dropped after the ring, accessed through raw pointers.
    let store = unsafe { ByteRing::with_layout(store_page.as_ptr(), &XENSTORE) };
    Ok(Guest {
        domain: Arc::new(domain),
        vcpus,
        console,
        console_evt,
        console_port,
        store_evt,
        store_port,
        store,
        store_pfn: image.special.xenstore_pfn,
        console_pfn: image.special.console_pfn,
        _console_page: console_page,
        _store_page: store_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(text: &str) -> (DomainConfig, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("keel-guest-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("d.cfg");
        std::fs::write(&path, text).unwrap();
        (DomainConfig::load::<&str>(&path, &[], &dir).unwrap(), dir)
    }

    #[test]
    fn mem_total() {
        assert_eq!(
            parse_mem_total("MemTotal:        2048 kB\nMemFree: 1 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn checks_name_the_problem() {
        let (c, dir) = cfg("name='a'\ntype='pvh'\nkernel='missing-kernel'\n");
        let e = check_config(&c, None).unwrap_err();
        assert!(
            e.starts_with("cannot read the kernel ") && e.contains("missing-kernel"),
            "{e}"
        );
        std::fs::write(dir.join("k"), b"not a kernel").unwrap();
        let (c, _) = cfg("name='a'\ntype='pvh'\nkernel='k'\nmemory=512\nramdisk='nope'\n");
        let (c, _) = (
            DomainConfig {
                kernel: dir.join("k"),
                ramdisk: Some(dir.join("nope")),
                ..c
            },
            (),
        );
        assert!(check_config(&c, None)
            .unwrap_err()
            .starts_with("cannot read the ramdisk"));
        let c = DomainConfig { ramdisk: None, ..c };
        assert_eq!(check_config(&c, Some(1024 * MIB)), Ok(()));
        assert_eq!(
            check_config(&c, Some(256 * MIB)).unwrap_err(),
            "`memory' = 512 MiB is more than the host's 256 MiB of RAM"
        );
        let dir_as_kernel = DomainConfig {
            kernel: dir.clone(),
            ..c
        };
        assert!(check_config(&dir_as_kernel, None)
            .unwrap_err()
            .contains("is not a regular file"));
    }

    #[test]
    fn a_file_that_is_not_a_kernel_is_named() {
        let (c, dir) = cfg("name='a'\ntype='pvh'\nkernel='notes.txt'\n");
        std::fs::write(dir.join("notes.txt"), b"hello, not a kernel\n").unwrap();
        let e = image(&c).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{} is not a kernel Keel can boot: ",
                c.kernel.display()
            )),
            "{e}"
        );
        let elf = dir.join("elf");
        let mut bytes = vec![0u8; 64];
        bytes[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(&elf, bytes).unwrap();
        let e = image(&DomainConfig { kernel: elf, ..c }).unwrap_err();
        assert!(e.contains("is not a kernel Keel can boot"), "{e}");
    }

    #[test]
    fn entry_state_is_the_builders() {
        let s = VcpuState::pvh_entry(0x100_0000, 0x1000);
        let mut sregs = uapi::keel_sregs::default();
        let mut regs = uapi::keel_regs {
            rax: 5,
            ..Default::default()
        };
        entry_state(&s, &mut sregs, &mut regs);
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags, regs.rax),
            (0x100_0000, 0x1000, 2, 0)
        );
        assert_eq!(
            (sregs.cr0, sregs.cs.attrib, sregs.ss.attrib),
            (0x11, 0xc9b, 0xc93)
        );
        assert_eq!((sregs.tr.attrib, sregs.tr.limit), (0x8b, 0x67));
    }
}
