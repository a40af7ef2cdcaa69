//! `/dev/keel`: the owner of the device fd and one checked wrapper per ioctl.
use std::{
    fmt,
    fs::File,
    io,
    os::fd::{AsFd, FromRawFd, OwnedFd},
    path::Path,
};

use keel_uapi as uapi;

use crate::{
    domain::{Domain, DomainInfo, DomainName, GuestAddress},
    sys::{self, IoctlError},
};

/// The default device node.
pub const DEVICE_PATH: &str = "/dev/keel";

/// Why a `/dev/keel` operation failed, worded for the user.
#[derive(Debug)]
pub enum DevError {
    /// The device node is missing: the module is not loaded.
    NotLoaded(String),
    /// The caller may not open the device.
    Permission(String),
    /// Opening failed otherwise.
    Open(String, io::Error),
    /// An ioctl failed.
    Ioctl(IoctlError),
    /// Mapping guest memory (at this address, this many bytes) failed.
    Mmap(GuestAddress, u64, io::Error),
    /// The module speaks another version of the interface.
    AbiMismatch {
        /// What the module reported.
        module: u32,
    },
}

impl fmt::Display for DevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoaded(p) => write!(f, "{p} does not exist: the keel module is not loaded (load it with `insmod keel.ko`)"),
            Self::Permission(p) => write!(f, "permission denied opening {p}: it is root-only (mode 0600); run keelctl as root"),
            Self::Open(p, e) => write!(f, "cannot open {p}: {e}"),
            Self::Ioctl(e) => write!(f, "{e}"),
            Self::Mmap(gpa, size, e) => {
                write!(f, "mmap of {size:#x} bytes of guest memory at {gpa} failed: {e}")
            }
            Self::AbiMismatch { module } => write!(
                f,
                "the keel module speaks interface version {module}, this keelctl speaks {}: use the keelctl built with the module",
                uapi::KEEL_ABI_VERSION
            ),
        }
    }
}

impl std::error::Error for DevError {}

impl From<IoctlError> for DevError {
    fn from(e: IoctlError) -> Self {
        Self::Ioctl(e)
    }
}

/// An open `/dev/keel`.
pub struct KeelDev {
    file: File,
}

impl KeelDev {
    /// Opens the device at `path` and checks that the module speaks this tool's interface.
    pub fn open(path: &Path) -> Result<Self, DevError> {
        let shown = path.display().to_string();
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => DevError::NotLoaded(shown.clone()),
                io::ErrorKind::PermissionDenied => DevError::Permission(shown.clone()),
                _ => DevError::Open(shown.clone(), e),
            })?;
        let dev = Self { file };
        let v = dev.version()?;
        if v.abi_version != uapi::KEEL_ABI_VERSION {
            return Err(DevError::AbiMismatch {
                module: v.abi_version,
            });
        }
        Ok(dev)
    }

    /// `KEEL_GET_VERSION`.
    pub fn version(&self) -> Result<uapi::keel_version, DevError> {
        let mut v = uapi::keel_version::default();
        // SAFETY: KEEL_GET_VERSION is `iowr::<keel_version>`: the kernel reads and writes that
        // structure (integers only) and nothing else of ours.
        unsafe {
            sys::ioctl_with_mut(
                self.file.as_fd(),
                "KEEL_GET_VERSION",
                uapi::KEEL_GET_VERSION,
                &mut v,
            )
        }?;
        Ok(v)
    }

    /// `KEEL_GET_CAPS`.
    pub fn caps(&self) -> Result<uapi::keel_caps, DevError> {
        let mut c = uapi::keel_caps::default();
        // SAFETY: KEEL_GET_CAPS is `iowr::<keel_caps>`: the kernel reads and writes that
        // structure (integers only) and nothing else of ours.
        unsafe {
            sys::ioctl_with_mut(
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
    ) -> Result<Domain, DevError> {
        let mut create = uapi::keel_domain_create {
            max_vcpus,
            memory_size,
            name: name.to_raw(),
            ..Default::default()
        };
        // SAFETY: KEEL_CREATE_DOMAIN is `iowr::<keel_domain_create>`: the kernel reads that
        // structure (no pointers) and writes the domid back into it, nothing else of ours.
        let fd = unsafe {
            sys::ioctl_with_mut(
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
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>, DevError> {
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
                sys::ioctl_with_mut(
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
