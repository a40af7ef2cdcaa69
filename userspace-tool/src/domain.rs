//! Domains and their vCPUs: one owner type per file descriptor, as rust-vmm's `VmFd` and
//! `VcpuFd` are. A [`Domain`] owns a domain fd (from `KEEL_CREATE_DOMAIN`), a [`Vcpu`] a vCPU fd
//! (from `KEEL_DOMAIN_CREATE_VCPU`), a [`GuestRam`] a mapping of the domain's memory. Dropping
//! the owner closes the fd or unmaps; the module destroys a domain when its last fd is closed.
use std::{
    fmt, io,
    os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd},
    ptr::NonNull,
};

use keel_uapi as uapi;

use crate::{
    dev::DevError,
    sys::{self, IoctlError},
};

/// A guest-physical address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestAddress(pub u64);

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What a guest-physical range holds (`KEEL_RANGE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code, reason = "the whole uapi; `keelctl run` maps RAM only")]
pub enum RangeKind {
    /// Read, write, execute memory the module allocates and zeroes.
    Ram,
    /// Read and execute memory; a write ends the run with a memory fault.
    Rom,
    /// No memory: every access ends the run with an MMIO exit.
    Mmio,
}

impl RangeKind {
    fn raw(self) -> u32 {
        match self {
            Self::Ram => uapi::KEEL_RANGE_RAM,
            Self::Rom => uapi::KEEL_RANGE_ROM,
            Self::Mmio => uapi::KEEL_RANGE_MMIO,
        }
    }
}

/// A valid domain name: 1 to `KEEL_NAME_LEN - 1` printable ASCII characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainName(String);

impl DomainName {
    /// Checks `name` against the header's rule.
    pub fn new(name: &str) -> Result<Self, String> {
        let max = uapi::KEEL_NAME_LEN as usize - 1;
        if name.is_empty() {
            return Err("a domain name must not be empty".into());
        }
        if name.len() > max {
            return Err(format!(
                "a domain name has at most {max} characters ('{name}' has {})",
                name.len()
            ));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
            return Err(format!(
                "a domain name is printable ASCII only ('{name}' has {c:?})"
            ));
        }
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the header's NUL-terminated array.
    pub fn to_raw(&self) -> [libc::c_char; uapi::KEEL_NAME_LEN as usize] {
        let mut raw = [0; uapi::KEEL_NAME_LEN as usize];
        for (dst, src) in raw.iter_mut().zip(self.0.bytes()) {
            *dst = src as libc::c_char;
        }
        raw
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text of a NUL-terminated name array from the module.
pub fn name_from_raw(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A domain's state as `KEEL_DOMAIN_INFO` and `KEEL_LIST_DOMAINS` report it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain's id.
    pub domid: u32,
    /// Its name.
    pub name: String,
    /// Paused (`KEEL_DOMAIN_PAUSED`).
    pub paused: bool,
    /// A vCPU has run and the memory map is fixed (`KEEL_DOMAIN_STARTED`).
    pub started: bool,
    /// vCPUs it may have.
    pub max_vcpus: u32,
    /// vCPUs created.
    pub nr_vcpus: u32,
    /// The memory limit, bytes.
    pub memory_size: u64,
    /// RAM and ROM in its map, bytes.
    pub memory_used: u64,
    /// Ranges in its map.
    pub nr_ranges: u32,
    /// Bit i: vCPU i exists.
    pub vcpu_mask: u64,
    /// Bit i: vCPU i is inside `KEEL_VCPU_RUN`.
    pub running_mask: u64,
}

impl From<&uapi::keel_domain_info> for DomainInfo {
    fn from(raw: &uapi::keel_domain_info) -> Self {
        Self {
            domid: raw.domid,
            name: name_from_raw(&raw.name),
            paused: raw.state & uapi::KEEL_DOMAIN_PAUSED != 0,
            started: raw.state & uapi::KEEL_DOMAIN_STARTED != 0,
            max_vcpus: raw.max_vcpus,
            nr_vcpus: raw.nr_vcpus,
            memory_size: raw.memory_size,
            memory_used: raw.memory_used,
            nr_ranges: raw.nr_ranges,
            vcpu_mask: raw.vcpu_mask,
            running_mask: raw.running_mask,
        }
    }
}

/// A domain: the owner of a domain fd.
#[derive(Debug)]
pub struct Domain {
    fd: OwnedFd,
    domid: u32,
}

impl Domain {
    /// Takes ownership of a domain fd that `KEEL_CREATE_DOMAIN` returned.
    pub(crate) fn new(fd: OwnedFd, domid: u32) -> Self {
        Self { fd, domid }
    }

    /// The domain's id.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// `KEEL_DOMAIN_ADD_RANGE`: adds `size` bytes at `gpa` of kind `kind` to the map.
    pub fn add_range(
        &self,
        gpa: GuestAddress,
        size: u64,
        kind: RangeKind,
    ) -> Result<(), IoctlError> {
        let range = uapi::keel_mem_range {
            gpa: gpa.0,
            size,
            kind: kind.raw(),
            flags: 0,
        };
        // SAFETY: KEEL_DOMAIN_ADD_RANGE is `iow::<keel_mem_range>` and, on a domain fd, reads
        // that one structure (it has no pointers) and nothing else of ours.
        unsafe {
            sys::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_DOMAIN_ADD_RANGE",
                uapi::KEEL_DOMAIN_ADD_RANGE,
                &range,
            )
        }?;
        Ok(())
    }

    /// Maps `size` bytes of the domain's memory from `gpa` (which must lie in one RAM or ROM
    /// range) into this process, to load the guest before its first run.
    pub fn map_memory(&self, gpa: GuestAddress, size: u64) -> Result<GuestRam, DevError> {
        GuestRam::map(self.fd.as_fd(), gpa, size)
    }

    /// `KEEL_DOMAIN_CREATE_VCPU`: creates vCPU `id`.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu, IoctlError> {
        let create = uapi::keel_vcpu_create { flags: 0, id };
        // SAFETY: KEEL_DOMAIN_CREATE_VCPU is `iow::<keel_vcpu_create>` and reads only that
        // structure, which has no pointers.
        let fd = unsafe {
            sys::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_DOMAIN_CREATE_VCPU",
                uapi::KEEL_DOMAIN_CREATE_VCPU,
                &create,
            )
        }?;
        // SAFETY: on success the ioctl's value is a new vCPU fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Vcpu::new(fd, id))
    }

    /// `KEEL_DOMAIN_PAUSE`: takes the domain's vCPUs out of the guest until a matching
    /// [`Domain::unpause`].
    #[allow(
        dead_code,
        reason = "the domain owner's interface; `keelctl run` never pauses"
    )]
    pub fn pause(&self) -> Result<(), IoctlError> {
        // SAFETY: KEEL_DOMAIN_PAUSE is `io()`: it takes no argument and touches none of our
        // memory.
        unsafe {
            sys::ioctl(
                self.fd.as_fd(),
                "KEEL_DOMAIN_PAUSE",
                uapi::KEEL_DOMAIN_PAUSE,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_UNPAUSE`: undoes one [`Domain::pause`].
    #[allow(
        dead_code,
        reason = "the domain owner's interface; `keelctl run` never pauses"
    )]
    pub fn unpause(&self) -> Result<(), IoctlError> {
        // SAFETY: KEEL_DOMAIN_UNPAUSE is `io()`: it takes no argument and touches none of our
        // memory.
        unsafe {
            sys::ioctl(
                self.fd.as_fd(),
                "KEEL_DOMAIN_UNPAUSE",
                uapi::KEEL_DOMAIN_UNPAUSE,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_INFO`: the domain's state.
    #[allow(
        dead_code,
        reason = "the domain owner's interface; `list` uses KEEL_LIST_DOMAINS"
    )]
    pub fn info(&self) -> Result<DomainInfo, IoctlError> {
        let mut raw = uapi::keel_domain_info::default();
        // SAFETY: KEEL_DOMAIN_INFO is `ior::<keel_domain_info>`: the kernel writes that one
        // structure (integers only, so any bytes are valid) and nothing else.
        unsafe {
            sys::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_DOMAIN_INFO",
                uapi::KEEL_DOMAIN_INFO,
                &mut raw,
            )
        }?;
        Ok(DomainInfo::from(&raw))
    }
}

/// An access outside a [`GuestRam`] mapping.
#[derive(Debug, PartialEq, Eq)]
pub struct RamError {
    /// Where the access started.
    pub gpa: GuestAddress,
    /// Its length.
    pub len: u64,
    /// The mapping's first address.
    pub start: GuestAddress,
    /// The mapping's length.
    pub size: u64,
}

impl fmt::Display for RamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:#x} bytes at {} lie outside the guest memory [{}, {:#x})",
            self.len,
            self.gpa,
            self.start,
            self.start.0 + self.size
        )
    }
}

impl std::error::Error for RamError {}

/// Guest memory a loader can write to: a [`GuestRam`] mapping, or plain memory in tests.
pub trait GuestMemoryWrite {
    /// Copies `bytes` to guest-physical `gpa`, failing when they do not all fit.
    fn write_at(&mut self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), RamError>;
}

/// Where `len` bytes at `gpa` start inside a memory of `size` bytes at `start`, if they fit.
pub fn offset_in(
    start: GuestAddress,
    size: u64,
    gpa: GuestAddress,
    len: u64,
) -> Result<usize, RamError> {
    let err = || RamError {
        gpa,
        len,
        start,
        size,
    };
    let offset = gpa.0.checked_sub(start.0).ok_or_else(err)?;
    let end = offset.checked_add(len).ok_or_else(err)?;
    if end > size {
        return Err(err());
    }
    usize::try_from(offset).map_err(|_| err())
}

/// A mapping of a domain's memory into this process, unmapped on drop.
///
/// The guest may change the memory at any time once it runs, so this type hands out no
/// references into it: it copies in and out, bounds-checked, the way vm-memory's
/// `GuestMemoryMmap` does.
///
/// # Invariants
///
/// `base` is the start of a live `MAP_SHARED` read-write mapping of `size` bytes that this value
/// owns; `size` fits in `usize`.
#[derive(Debug)]
pub struct GuestRam {
    base: NonNull<u8>,
    size: u64,
    gpa: GuestAddress,
}

impl GuestRam {
    /// Maps `size` bytes of `fd` at offset `gpa` (the domain fd's mmap offset is the
    /// guest-physical address).
    fn map(fd: BorrowedFd<'_>, gpa: GuestAddress, size: u64) -> Result<Self, DevError> {
        let len = usize::try_from(size).map_err(|_| {
            DevError::Mmap(gpa, size, io::Error::from_raw_os_error(libc::EOVERFLOW))
        })?;
        let offset = libc::off_t::try_from(gpa.0).map_err(|_| {
            DevError::Mmap(gpa, size, io::Error::from_raw_os_error(libc::EOVERFLOW))
        })?;
        // SAFETY: a new shared mapping chosen by the kernel (address NULL) overlaps nothing of
        // ours; the fd is open for the call because it is borrowed.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DevError::Mmap(gpa, size, io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| DevError::Mmap(gpa, size, io::Error::from_raw_os_error(libc::EFAULT)))?;
        // INVARIANT: mmap succeeded with `len == size` bytes; this value owns the mapping.
        Ok(Self { base, size, gpa })
    }

    /// The guest-physical address of the first byte.
    #[allow(
        dead_code,
        reason = "the mapping's interface; `keelctl run` only writes"
    )]
    pub fn gpa(&self) -> GuestAddress {
        self.gpa
    }

    /// The mapping's size in bytes.
    #[allow(
        dead_code,
        reason = "the mapping's interface; `keelctl run` only writes"
    )]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies guest memory at `gpa` into `buf`.
    #[allow(
        dead_code,
        reason = "the mapping's interface; `keelctl run` only writes"
    )]
    pub fn read_at(&self, gpa: GuestAddress, buf: &mut [u8]) -> Result<(), RamError> {
        let offset = offset_in(self.gpa, self.size, gpa, buf.len() as u64)?;
        // SAFETY: `offset_in` checked that `offset + buf.len() <= size`, so the source lies in
        // the live mapping (type invariant); `buf` is ours and cannot overlap a mapping this
        // value owns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }
}

impl GuestMemoryWrite for GuestRam {
    fn write_at(&mut self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), RamError> {
        let offset = offset_in(self.gpa, self.size, gpa, bytes.len() as u64)?;
        // SAFETY: `offset_in` checked that `offset + bytes.len() <= size`, so the destination
        // lies in the live, writable mapping (type invariant); `bytes` cannot overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            );
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: `base` and `size` describe the mapping this value owns (type invariant), and
        // no reference into it escaped.
        let r = unsafe { libc::munmap(self.base.as_ptr().cast(), self.size as usize) };
        debug_assert_eq!(r, 0, "munmap of guest memory failed");
    }
}

/// Why a run ended, with what Dom0 must complete before the next run (rust-vmm's `VcpuExit`).
///
/// The `&mut` fields are the completion slots of the exit record: write the value the guest
/// reads (or the hypercall's result) there before calling [`Vcpu::run`] again.
#[derive(Debug, PartialEq, Eq)]
pub enum VcpuExit<'a> {
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
    /// IN from `port`: put the value read in `data`.
    IoIn {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
        /// The completion: the value the guest reads.
        data: &'a mut u64,
    },
    /// A read of an MMIO range: put the value read in `data`.
    MmioRead {
        /// The address.
        gpa: GuestAddress,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
        /// The completion: the value the guest reads.
        data: &'a mut u64,
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
    /// A hypercall the module does not handle itself: put the result (the guest's rax) in
    /// `ret`.
    Hypercall {
        /// The hypercall number.
        nr: u64,
        /// Its arguments in Xen's order.
        args: [u64; 5],
        /// A 64-bit caller.
        longmode: bool,
        /// The completion: the result.
        ret: &'a mut u64,
    },
    /// The guest triple-faulted (`KEEL_SHUTDOWN_*` in `kind`).
    Shutdown {
        /// `KEEL_SHUTDOWN_*`.
        kind: u32,
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
    /// A reason this keelctl does not know (a newer module).
    Unknown(u32),
}

/// One exit: where the guest was, and why it exited.
#[derive(Debug, PartialEq, Eq)]
pub struct RunExit<'a> {
    /// The guest's RIP at the exit.
    pub rip: u64,
    /// Why.
    pub exit: VcpuExit<'a>,
}

/// Reads the exit the module wrote into `run`; the completion slots borrow from it.
pub fn decode_exit(run: &mut uapi::keel_run) -> RunExit<'_> {
    let rip = run.exit.rip;
    let reason = run.exit.reason;
    let u = &mut run.exit.__bindgen_anon_1;
    // SAFETY (for each union read below): every member of the exit union is plain integers, so
    // any bytes are a valid value of any member; `reason` says which one the module wrote.
    let exit = match reason {
        uapi::KEEL_EXIT_HLT => VcpuExit::Hlt,
        uapi::KEEL_EXIT_IO => {
            // SAFETY: see above.
            let io = unsafe { &mut u.io };
            if u32::from(io.direction) == uapi::KEEL_IO_IN {
                VcpuExit::IoIn {
                    port: io.port,
                    size: io.size,
                    data: &mut io.data,
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
            let mmio = unsafe { &mut u.mmio };
            if u32::from(mmio.direction) == uapi::KEEL_IO_IN {
                VcpuExit::MmioRead {
                    gpa: GuestAddress(mmio.gpa),
                    size: mmio.size,
                    data: &mut mmio.data,
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
            let hc = unsafe { &mut u.hypercall };
            VcpuExit::Hypercall {
                nr: hc.nr,
                args: hc.args,
                longmode: hc.longmode != 0,
                ret: &mut hc.ret,
            }
        }
        uapi::KEEL_EXIT_SHUTDOWN => VcpuExit::Shutdown {
            // SAFETY: see above.
            kind: unsafe { u.shutdown.kind },
        },
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
    fn new(fd: OwnedFd, id: u32) -> Self {
        Self {
            fd,
            id,
            run: uapi::keel_run::default(),
        }
    }

    /// The vCPU's id in its domain.
    #[allow(
        dead_code,
        reason = "the vCPU owner's interface; `keelctl run` has one vCPU"
    )]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `KEEL_VCPU_GET_REGS`.
    pub fn regs(&self) -> Result<uapi::keel_regs, IoctlError> {
        let mut regs = uapi::keel_regs::default();
        // SAFETY: KEEL_VCPU_GET_REGS is `ior::<keel_regs>`: the kernel writes that structure
        // (integers only) and nothing else of ours.
        unsafe {
            sys::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_GET_REGS",
                uapi::KEEL_VCPU_GET_REGS,
                &mut regs,
            )
        }?;
        Ok(regs)
    }

    /// `KEEL_VCPU_SET_REGS`.
    pub fn set_regs(&self, regs: &uapi::keel_regs) -> Result<(), IoctlError> {
        // SAFETY: KEEL_VCPU_SET_REGS is `iow::<keel_regs>`: the kernel reads that structure
        // (no pointers) and nothing else of ours.
        unsafe {
            sys::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_VCPU_SET_REGS",
                uapi::KEEL_VCPU_SET_REGS,
                regs,
            )
        }?;
        Ok(())
    }

    /// `KEEL_VCPU_GET_SREGS`.
    pub fn sregs(&self) -> Result<uapi::keel_sregs, IoctlError> {
        let mut sregs = uapi::keel_sregs::default();
        // SAFETY: KEEL_VCPU_GET_SREGS is `ior::<keel_sregs>`: the kernel writes that structure
        // (integers only) and nothing else of ours.
        unsafe {
            sys::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_GET_SREGS",
                uapi::KEEL_VCPU_GET_SREGS,
                &mut sregs,
            )
        }?;
        Ok(sregs)
    }

    /// `KEEL_VCPU_SET_SREGS`.
    pub fn set_sregs(&self, sregs: &uapi::keel_sregs) -> Result<(), IoctlError> {
        // SAFETY: KEEL_VCPU_SET_SREGS is `iow::<keel_sregs>`: the kernel reads that structure
        // (no pointers) and nothing else of ours.
        unsafe {
            sys::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_VCPU_SET_SREGS",
                uapi::KEEL_VCPU_SET_SREGS,
                sregs,
            )
        }?;
        Ok(())
    }

    /// `KEEL_VCPU_RUN`: runs the guest on this thread until it exits for something Dom0 must
    /// handle. Whatever was written into the previous exit's completion slots goes back to the
    /// module with this call. A signal ends the run with [`VcpuExit::Interrupted`].
    pub fn run(&mut self) -> Result<RunExit<'_>, IoctlError> {
        self.run.flags = 0;
        self.run.pad = 0;
        // SAFETY: KEEL_VCPU_RUN is `iowr::<keel_run>`: the kernel reads the completion from
        // `self.run` and writes the next exit into it (integers only, any bytes valid), and
        // touches nothing else of ours.
        let ret = unsafe {
            sys::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_VCPU_RUN",
                uapi::KEEL_VCPU_RUN,
                &mut self.run,
            )
        };
        match ret {
            Ok(_) => Ok(decode_exit(&mut self.run)),
            Err(e) if e.errno() == Some(libc::EINTR) => Ok(RunExit {
                rip: self.run.exit.rip,
                exit: VcpuExit::Interrupted,
            }),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = DomainName::new("guest 1").unwrap();
        assert_eq!(n.to_raw()[..8], [103, 117, 101, 115, 116, 32, 49, 0]);
        assert_eq!(name_from_raw(&n.to_raw()), "guest 1");
        assert!(DomainName::new("").is_err());
        assert!(DomainName::new(&"x".repeat(31)).is_ok());
        assert!(DomainName::new(&"x".repeat(32))
            .unwrap_err()
            .contains("at most 31"));
        assert!(DomainName::new("tab\there").is_err());
        assert!(DomainName::new("é").is_err());
    }

    #[test]
    fn info_from_raw() {
        let mut raw = uapi::keel_domain_info {
            domid: 7,
            state: uapi::KEEL_DOMAIN_STARTED,
            max_vcpus: 2,
            nr_vcpus: 1,
            memory_size: 16 << 20,
            memory_used: 8 << 20,
            vcpu_mask: 1,
            running_mask: 1,
            ..Default::default()
        };
        raw.name[..3].copy_from_slice(&[b'a' as libc::c_char, b'b' as _, b'c' as _]);
        let i = DomainInfo::from(&raw);
        assert_eq!(i.name, "abc");
        assert!(i.started && !i.paused);
        assert_eq!(i.memory_used, 8 << 20);
    }

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
        let e = decode_exit(&mut run);
        assert_eq!(e.rip, 0x7c02);
        match e.exit {
            VcpuExit::IoIn {
                port: 0x60,
                size: 2,
                data,
            } => *data = 0xffff,
            other => panic!("{other:?}"),
        }
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
            decode_exit(&mut run).exit,
            VcpuExit::IoOut {
                port: 0xe9,
                size: 1,
                data: 0x4b
            }
        );
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
        match decode_exit(&mut run).exit {
            VcpuExit::Hypercall {
                nr: 34,
                args: [1, 2, 3, 4, 5],
                longmode: true,
                ret,
            } => *ret = -38i64 as u64,
            other => panic!("{other:?}"),
        }
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
            decode_exit(&mut run).exit,
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
            decode_exit(&mut run).exit,
            VcpuExit::EntryFailure {
                hw_reason: 0x8000_0021,
                qualification: 0
            }
        );
        assert_eq!(
            decode_exit(&mut run_with(uapi::KEEL_EXIT_HLT)).exit,
            VcpuExit::Hlt
        );
        assert_eq!(
            decode_exit(&mut run_with(uapi::KEEL_EXIT_NONE)).exit,
            VcpuExit::Unknown(0)
        );
        assert_eq!(decode_exit(&mut run_with(42)).exit, VcpuExit::Unknown(42));
    }

    #[test]
    fn offsets_are_bounds_checked() {
        let start = GuestAddress(0x1000);
        assert_eq!(
            offset_in(start, 0x2000, GuestAddress(0x1000), 0x2000),
            Ok(0)
        );
        assert_eq!(
            offset_in(start, 0x2000, GuestAddress(0x2fff), 1),
            Ok(0x1fff)
        );
        assert!(offset_in(start, 0x2000, GuestAddress(0x2fff), 2).is_err());
        assert!(offset_in(start, 0x2000, GuestAddress(0xfff), 1).is_err());
        assert!(offset_in(start, 0x2000, GuestAddress(u64::MAX), 2).is_err());
    }

    #[test]
    fn guest_ram_maps_copies_and_checks_bounds() {
        // A memfd stands in for the domain fd: the mmap offset plays the guest address.
        // SAFETY: the name is a NUL-terminated string; the call takes no other memory.
        let raw = unsafe { libc::memfd_create(c"keel-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0);
        // SAFETY: memfd_create returned a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(0x3000).unwrap();
        let mut ram = GuestRam::map(file.as_fd(), GuestAddress(0x1000), 0x2000).unwrap();
        ram.write_at(GuestAddress(0x1ffe), b"hi").unwrap();
        let mut back = [0u8; 2];
        ram.read_at(GuestAddress(0x1ffe), &mut back).unwrap();
        assert_eq!(&back, b"hi");
        let e = ram.write_at(GuestAddress(0x2fff), b"hi").unwrap_err();
        assert!(e
            .to_string()
            .contains("outside the guest memory [0x1000, 0x3000)"));
        drop(ram);
        let mut file_bytes = vec![0u8; 0x3000];
        std::io::Read::read_exact(&mut &file, &mut file_bytes).unwrap();
        assert_eq!(&file_bytes[0x1ffe..0x2000], b"hi");
    }
}
