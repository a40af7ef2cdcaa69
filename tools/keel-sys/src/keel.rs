//! `/dev/keel`: the owner of the device fd and one checked wrapper per ioctl on it.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::Path,
};

use keel_uapi as uapi;

use crate::{
    domain::{Domain, DomainInfo, DomainName},
    error::Error,
    ioctl,
};

/// The default device node.
pub const DEVICE_PATH: &str = "/dev/keel";

/// An open `/dev/keel` (rust-vmm's `Kvm`).
pub struct KeelDev {
    file: File,
}

impl KeelDev {
    /// Opens the device at `path` and checks that the module speaks this tool's interface.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotLoaded {
                    path: shown.clone(),
                },
                io::ErrorKind::PermissionDenied => Error::Permission {
                    path: shown.clone(),
                },
                _ => Error::Open {
                    path: shown.clone(),
                    error: e,
                },
            })?;
        let dev = Self { file };
        let v = dev.version()?;
        if v.abi_version != uapi::KEEL_ABI_VERSION {
            return Err(Error::AbiMismatch {
                module: v.abi_version,
            });
        }
        Ok(dev)
    }

    /// `KEEL_GET_VERSION`.
    pub fn version(&self) -> Result<uapi::keel_version, Error> {
        let mut v = uapi::keel_version::default();
        // SAFETY: KEEL_GET_VERSION is `iowr::<keel_version>`: the kernel reads and writes that
        // structure (integers only) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_mut(
                self.file.as_fd(),
                "KEEL_GET_VERSION",
                uapi::KEEL_GET_VERSION,
                &mut v,
            )
        }?;
        Ok(v)
    }

    /// `KEEL_GET_CAPS`.
    pub fn caps(&self) -> Result<uapi::keel_caps, Error> {
        let mut c = uapi::keel_caps::default();
        // SAFETY: KEEL_GET_CAPS is `iowr::<keel_caps>`: the kernel reads and writes that
        // structure (integers only) and nothing else of ours.
        unsafe {
            ioctl::ioctl_with_mut(
                self.file.as_fd(),
                "KEEL_GET_CAPS",
                uapi::KEEL_GET_CAPS,
                &mut c,
            )
        }?;
        Ok(c)
    }

    /// `KEEL_CREATE_DOMAIN`: a new domain of at most `max_vcpus` vCPUs and `memory_size` bytes
    /// of RAM and ROM.
    pub fn create_domain(
        &self,
        name: &DomainName,
        max_vcpus: u32,
        memory_size: u64,
    ) -> Result<Domain, Error> {
        self.create_domain_with(name, max_vcpus, memory_size, 0)
    }

    /// `KEEL_CREATE_DOMAIN` with `KEEL_CREATE_DOMAIN_XEN`: a new Xen PVH domain (see "Xen PVH
    /// domains" in the header), whose HVM params and Dom0 event channels the [`Domain`]'s
    /// `*_param` and `evtchn_*` methods reach.
    pub fn create_xen_domain(
        &self,
        name: &DomainName,
        max_vcpus: u32,
        memory_size: u64,
    ) -> Result<Domain, Error> {
        self.create_domain_with(name, max_vcpus, memory_size, uapi::KEEL_CREATE_DOMAIN_XEN)
    }

    fn create_domain_with(
        &self,
        name: &DomainName,
        max_vcpus: u32,
        memory_size: u64,
        flags: u32,
    ) -> Result<Domain, Error> {
        let mut create = uapi::keel_domain_create {
            flags,
            max_vcpus,
            memory_size,
            name: name.to_raw(),
            ..Default::default()
        };
        // SAFETY: KEEL_CREATE_DOMAIN is `iowr::<keel_domain_create>`: the kernel reads that
        // structure (no pointers) and writes the domid back into it, nothing else of ours.
        let fd = unsafe {
            ioctl::ioctl_with_mut(
                self.file.as_fd(),
                "KEEL_CREATE_DOMAIN",
                uapi::KEEL_CREATE_DOMAIN,
                &mut create,
            )
        }?;
        // SAFETY: on success the ioctl's value is a new domain fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Domain::new(fd, create.domid))
    }

    /// `KEEL_LIST_DOMAINS`: the live domains, in domid order.
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>, Error> {
        // Domains may come and go between calls: grow the buffer until it holds them all (a
        // few tries; then the entries the last call wrote).
        let mut capacity = 16usize;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut buf = vec![uapi::keel_domain_info::default(); capacity];
            let mut list = uapi::keel_domain_list {
                count: u32::try_from(capacity).unwrap_or(u32::MAX),
                buffer: buf.as_mut_ptr() as u64,
                ..Default::default()
            };
            // SAFETY: KEEL_LIST_DOMAINS is `iowr::<keel_domain_list>`: the kernel reads and
            // writes that structure, and writes at most `list.count` `keel_domain_info`s
            // (integers only) at `list.buffer`, which points at `buf`'s `capacity` entries,
            // alive and not otherwise borrowed during the call.
            unsafe {
                ioctl::ioctl_with_mut(
                    self.file.as_fd(),
                    "KEEL_LIST_DOMAINS",
                    uapi::KEEL_LIST_DOMAINS,
                    &mut list,
                )
            }?;
            let written = (list.count as usize).min(capacity);
            if list.total as usize <= written || tries == 8 {
                return Ok(buf[..written].iter().map(DomainInfo::from).collect());
            }
            capacity = (list.total as usize).saturating_add(16);
        }
    }
}
