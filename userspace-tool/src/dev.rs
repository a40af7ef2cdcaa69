//! `/dev/keel`: the owner of the device fd and one checked wrapper per ioctl.
use std::{fmt, fs::File, io, os::fd::AsRawFd, path::Path};

use keel_uapi as uapi;

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
    Ioctl(&'static str, io::Error),
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
            Self::Ioctl(name, e) => write!(f, "{name} failed: {e}"),
            Self::AbiMismatch { module } => write!(
                f,
                "the keel module speaks interface version {module}, this keelctl speaks {}: use the keelctl built with the module",
                uapi::KEEL_ABI_VERSION
            ),
        }
    }
}

impl std::error::Error for DevError {}

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

    /// Runs an ioctl whose argument is a `T` the kernel reads and writes back.
    fn ioctl_rw<T>(&self, name: &'static str, cmd: u32, arg: &mut T) -> Result<(), DevError> {
        // SAFETY: `arg` is a valid, exclusively borrowed `T`, and `cmd` encodes `size_of::<T>()`
        // (built by `uapi::iowr::<T>`), so the kernel reads and writes only within it.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), cmd as libc::c_ulong, arg as *mut T) };
        if r < 0 {
            return Err(DevError::Ioctl(name, io::Error::last_os_error()));
        }
        Ok(())
    }

    /// `KEEL_GET_VERSION`.
    pub fn version(&self) -> Result<uapi::keel_version, DevError> {
        let mut v = uapi::keel_version::default();
        self.ioctl_rw("KEEL_GET_VERSION", uapi::KEEL_GET_VERSION, &mut v)?;
        Ok(v)
    }

    /// `KEEL_GET_CAPS`.
    pub fn caps(&self) -> Result<uapi::keel_caps, DevError> {
        let mut c = uapi::keel_caps::default();
        self.ioctl_rw("KEEL_GET_CAPS", uapi::KEEL_GET_CAPS, &mut c)?;
        Ok(c)
    }
}
