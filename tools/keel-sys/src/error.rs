//! The crate's error type, and errno names for its messages.
use std::{fmt, io};

use keel_uapi as uapi;

use crate::addr::GuestAddress;

/// Why a Keel operation failed.
#[derive(Debug)]
pub enum Error {
    /// The device node does not exist: the module is not loaded.
    NotLoaded {
        /// The device node's path.
        path: String,
    },
    /// The caller may not open the device (it is root-only).
    Permission {
        /// The device node's path.
        path: String,
    },
    /// Opening the device failed otherwise.
    Open {
        /// The device node's path.
        path: String,
        /// Why.
        error: io::Error,
    },
    /// The module speaks another version of the interface than this crate.
    AbiMismatch {
        /// The `KEEL_ABI_VERSION` the module reported.
        module: u32,
    },
    /// An ioctl failed.
    Ioctl {
        /// The command's name as the header spells it, e.g. `KEEL_DOMAIN_ADD_RANGE`.
        name: &'static str,
        /// What the kernel returned.
        error: io::Error,
    },
    /// Mapping guest memory failed.
    Mmap {
        /// The first guest-physical address of the mapping.
        gpa: GuestAddress,
        /// Its length in bytes.
        size: u64,
        /// Why.
        error: io::Error,
    },
    /// [`Vcpu::complete`](crate::Vcpu::complete) after an exit that takes no completion.
    NoCompletion {
        /// The exit's `KEEL_EXIT_*` reason.
        reason: u32,
    },
}

impl Error {
    /// The errno, when the error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Open { error, .. } | Self::Ioctl { error, .. } | Self::Mmap { error, .. } => {
                error.raw_os_error()
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLoaded { path } => {
                write!(f, "{path} does not exist: the keel module is not loaded")
            }
            Self::Permission { path } => {
                write!(
                    f,
                    "permission denied opening {path}: it is root-only (mode 0600)"
                )
            }
            Self::Open { path, error } => write!(f, "cannot open {path}: {error}"),
            Self::AbiMismatch { module } => write!(
                f,
                "the keel module speaks interface version {module}, keel-sys speaks {}",
                uapi::KEEL_ABI_VERSION
            ),
            Self::Ioctl { name, error } => {
                write!(f, "{name} failed: ")?;
                match error.raw_os_error() {
                    Some(n) => {
                        // io::Error says "Text (os error N)"; the name replaces the number.
                        let text = error.to_string();
                        let text = text.split(" (os error").next().unwrap_or_default();
                        write!(f, "{} ({text})", errno_name(n))
                    }
                    None => write!(f, "{error}"),
                }
            }
            Self::Mmap { gpa, size, error } => {
                write!(
                    f,
                    "mmap of {size:#x} bytes of guest memory at {gpa} failed: {error}"
                )
            }
            Self::NoCompletion { reason } => {
                write!(f, "exit reason {reason} takes no completion")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Open { error, .. } | Self::Ioctl { error, .. } | Self::Mmap { error, .. } => {
                Some(error)
            }
            _ => None,
        }
    }
}

/// The symbolic name of an errno (`EINVAL`), or `errno N` for the ones Keel does not expect.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOSYS => "ENOSYS",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESRCH => "ESRCH",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_command_and_the_errno() {
        let e = Error::Ioctl {
            name: "KEEL_DOMAIN_ADD_RANGE",
            error: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert_eq!(e.errno(), Some(libc::ENOSPC));
        assert_eq!(
            e.to_string(),
            "KEEL_DOMAIN_ADD_RANGE failed: ENOSPC (No space left on device)"
        );
        assert_eq!(errno_name(4095), "errno 4095");
    }
}
