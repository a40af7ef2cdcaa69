//! Domains: the owner of a domain fd (from `KEEL_CREATE_DOMAIN`), and the names, range kinds
//! and state reports that go with it.
use std::{
    fmt,
    os::fd::{AsFd, FromRawFd, OwnedFd},
};

use keel_uapi as uapi;

use crate::{
    addr::GuestAddress, error::Error, eventfd::EventFd, ioctl, memory::GuestRam, vcpu::Vcpu,
};

/// A Xen HVM parameter the toolstack sets for a PVH guest (`KEEL_XEN_PARAM_*`, Xen's
/// `HVM_PARAM_*` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XenParam {
    /// `HVM_PARAM_STORE_PFN` (1): the XenStore ring's page frame.
    StorePfn,
    /// `HVM_PARAM_STORE_EVTCHN` (2): the XenStore event channel (the DomU's port).
    StoreEvtchn,
    /// `HVM_PARAM_CONSOLE_PFN` (17): the console ring's page frame.
    ConsolePfn,
    /// `HVM_PARAM_CONSOLE_EVTCHN` (18): the console event channel (the DomU's port).
    ConsoleEvtchn,
}

impl XenParam {
    /// The header's index.
    pub fn index(self) -> u32 {
        match self {
            Self::StorePfn => uapi::KEEL_XEN_PARAM_STORE_PFN,
            Self::StoreEvtchn => uapi::KEEL_XEN_PARAM_STORE_EVTCHN,
            Self::ConsolePfn => uapi::KEEL_XEN_PARAM_CONSOLE_PFN,
            Self::ConsoleEvtchn => uapi::KEEL_XEN_PARAM_CONSOLE_EVTCHN,
        }
    }
}

/// What a guest-physical range holds (`KEEL_RANGE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Time its vCPUs spent in the guest, nanoseconds.
    pub cpu_ns: u64,
    /// A Xen PVH domain (`KEEL_CREATE_DOMAIN_XEN`).
    pub xen: bool,
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
            cpu_ns: raw.cpu_ns,
            xen: raw.flags & uapi::KEEL_CREATE_DOMAIN_XEN != 0,
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

    /// The domain fd, for this crate's other modules.
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `KEEL_DOMAIN_ADD_RANGE`: adds `size` bytes at `gpa` of kind `kind` to the map.
    pub fn add_range(&self, gpa: GuestAddress, size: u64, kind: RangeKind) -> Result<(), Error> {
        let range = uapi::keel_mem_range {
            gpa: gpa.0,
            size,
            kind: kind.raw(),
            flags: 0,
        };
        // SAFETY: KEEL_DOMAIN_ADD_RANGE is `iow::<keel_mem_range>` and, on a domain fd, reads
        // that one structure (it has no pointers) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_ref(
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
    pub fn map_memory(&self, gpa: GuestAddress, size: u64) -> Result<GuestRam, Error> {
        GuestRam::map(self.fd.as_fd(), gpa, size)
    }

    /// `KEEL_DOMAIN_CREATE_VCPU`: creates vCPU `id`.
    pub fn create_vcpu(&self, id: u32) -> Result<Vcpu, Error> {
        let create = uapi::keel_vcpu_create { flags: 0, id };
        // SAFETY: KEEL_DOMAIN_CREATE_VCPU is `iow::<keel_vcpu_create>` and reads only that
        // structure, which has no pointers.
        let fd = unsafe {
            ioctl::ioctl_with_ref(
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
    pub fn pause(&self) -> Result<(), Error> {
        // SAFETY: KEEL_DOMAIN_PAUSE is `io()`: it takes no argument and touches none of our
        // memory.
        unsafe {
            ioctl::ioctl(
                self.fd.as_fd(),
                "KEEL_DOMAIN_PAUSE",
                uapi::KEEL_DOMAIN_PAUSE,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_UNPAUSE`: undoes one [`Domain::pause`].
    pub fn unpause(&self) -> Result<(), Error> {
        // SAFETY: KEEL_DOMAIN_UNPAUSE is `io()`: it takes no argument and touches none of our
        // memory.
        unsafe {
            ioctl::ioctl(
                self.fd.as_fd(),
                "KEEL_DOMAIN_UNPAUSE",
                uapi::KEEL_DOMAIN_UNPAUSE,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_SET_PARAM` (Xen domains): sets HVM param `param` to `value`.
    pub fn set_param(&self, param: XenParam, value: u64) -> Result<(), Error> {
        let p = uapi::keel_xen_param {
            index: param.index(),
            pad: 0,
            value,
        };
        // SAFETY: KEEL_DOMAIN_SET_PARAM is `iow::<keel_xen_param>` and reads only that
        // structure (integers, no pointers).
        unsafe {
            ioctl::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_DOMAIN_SET_PARAM",
                uapi::KEEL_DOMAIN_SET_PARAM,
                &p,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_SET_MEMORY_MAP` (Xen domains): the memory map `XENMEM_memory_map` gives
    /// the guest, as (address, size, e820 type) entries.
    pub fn set_memory_map(&self, entries: &[(u64, u64, u32)]) -> Result<(), Error> {
        let table: Vec<uapi::keel_e820_entry> = entries
            .iter()
            .map(|&(addr, size, type_)| uapi::keel_e820_entry {
                addr,
                size,
                type_,
                pad: 0,
            })
            .collect();
        let m = uapi::keel_memory_map {
            nr_entries: table.len() as u32,
            pad: 0,
            entries: table.as_ptr() as u64,
        };
        // SAFETY: KEEL_DOMAIN_SET_MEMORY_MAP is `iow::<keel_memory_map>`; it reads the
        // structure and `nr_entries` entries at `entries`, which `table` holds for the call.
        unsafe {
            ioctl::ioctl_with_ref(
                self.fd.as_fd(),
                "KEEL_DOMAIN_SET_MEMORY_MAP",
                uapi::KEEL_DOMAIN_SET_MEMORY_MAP,
                &m,
            )
        }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_GET_PARAM` (Xen domains): HVM param `param`'s value.
    pub fn param(&self, param: XenParam) -> Result<u64, Error> {
        let mut p = uapi::keel_xen_param {
            index: param.index(),
            pad: 0,
            value: 0,
        };
        // SAFETY: KEEL_DOMAIN_GET_PARAM is `iowr::<keel_xen_param>`: the kernel reads the
        // index from that structure and writes the value into it (integers only), nothing else.
        unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_DOMAIN_GET_PARAM",
                uapi::KEEL_DOMAIN_GET_PARAM,
                &mut p,
            )
        }?;
        Ok(p.value)
    }

    /// `KEEL_DOMAIN_EVTCHN_BIND` with `KEEL_EVTCHN_ALLOC` (Xen domains): allocates a new port
    /// in the DomU connected to Dom0, signalling `eventfd` whenever the guest sends on it.
    /// Returns the DomU's port (what goes into the `*_EVTCHN` params).
    pub fn evtchn_alloc(&self, eventfd: &EventFd) -> Result<u32, Error> {
        self.evtchn_bind_raw(uapi::KEEL_EVTCHN_ALLOC, 0, eventfd)
    }

    /// `KEEL_DOMAIN_EVTCHN_BIND` without `KEEL_EVTCHN_ALLOC` (Xen domains): connects `port`,
    /// which the DomU allocated unbound for remote domain 0, to Dom0, signalling `eventfd`
    /// whenever the guest sends on it.
    pub fn evtchn_bind(&self, port: u32, eventfd: &EventFd) -> Result<u32, Error> {
        self.evtchn_bind_raw(0, port, eventfd)
    }

    fn evtchn_bind_raw(&self, flags: u32, port: u32, eventfd: &EventFd) -> Result<u32, Error> {
        let mut bind = uapi::keel_evtchn_bind {
            flags,
            port,
            eventfd: eventfd.as_raw(),
            pad: 0,
        };
        // SAFETY: KEEL_DOMAIN_EVTCHN_BIND is `iowr::<keel_evtchn_bind>`: the kernel reads that
        // structure (the eventfd is an fd number, not a pointer) and writes the port back into
        // it, nothing else of ours.
        unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_DOMAIN_EVTCHN_BIND",
                uapi::KEEL_DOMAIN_EVTCHN_BIND,
                &mut bind,
            )
        }?;
        Ok(bind.port)
    }

    /// `KEEL_DOMAIN_EVTCHN_NOTIFY` (Xen domains): raises the DomU's `port`, which must be
    /// bound to Dom0.
    pub fn evtchn_notify(&self, port: u32) -> Result<(), Error> {
        self.evtchn_port_op(
            "KEEL_DOMAIN_EVTCHN_NOTIFY",
            uapi::KEEL_DOMAIN_EVTCHN_NOTIFY,
            port,
        )
    }

    /// `KEEL_DOMAIN_EVTCHN_UNBIND` (Xen domains): closes Dom0's end of `port`.
    pub fn evtchn_unbind(&self, port: u32) -> Result<(), Error> {
        self.evtchn_port_op(
            "KEEL_DOMAIN_EVTCHN_UNBIND",
            uapi::KEEL_DOMAIN_EVTCHN_UNBIND,
            port,
        )
    }

    fn evtchn_port_op(&self, name: &'static str, cmd: u32, port: u32) -> Result<(), Error> {
        let p = uapi::keel_evtchn_port { port, pad: 0 };
        // SAFETY: both commands are `iow::<keel_evtchn_port>` and read only that structure
        // (integers, no pointers).
        unsafe { ioctl::ioctl_with_ref(self.fd.as_fd(), name, cmd, &p) }?;
        Ok(())
    }

    /// `KEEL_DOMAIN_INFO`: the domain's state.
    pub fn info(&self) -> Result<DomainInfo, Error> {
        let mut raw = uapi::keel_domain_info::default();
        // SAFETY: KEEL_DOMAIN_INFO is `ior::<keel_domain_info>`: the kernel writes that one
        // structure (integers only, so any bytes are valid) and nothing else.
        unsafe {
            ioctl::ioctl_with_mut(
                self.fd.as_fd(),
                "KEEL_DOMAIN_INFO",
                uapi::KEEL_DOMAIN_INFO,
                &mut raw,
            )
        }?;
        Ok(DomainInfo::from(&raw))
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
    fn param_indexes_are_xens() {
        assert_eq!(XenParam::StorePfn.index(), 1);
        assert_eq!(XenParam::StoreEvtchn.index(), 2);
        assert_eq!(XenParam::ConsolePfn.index(), 17);
        assert_eq!(XenParam::ConsoleEvtchn.index(), 18);
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
        raw.cpu_ns = 1_500_000_000;
        raw.flags = uapi::KEEL_CREATE_DOMAIN_XEN;
        let i = DomainInfo::from(&raw);
        assert_eq!(i.name, "abc");
        assert_eq!(i.cpu_ns, 1_500_000_000);
        assert!(i.xen);
        assert!(i.started && !i.paused);
        assert_eq!(i.memory_used, 8 << 20);
    }
}
