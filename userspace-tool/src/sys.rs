//! The raw system-call edge: ioctl helpers that check their result and name the command on
//! failure, and errno names for the messages. Every other module calls the kernel through these.
use std::{
    fmt, io,
    os::fd::{AsRawFd, BorrowedFd},
};

use keel_uapi as uapi;

/// A failed ioctl: which command, and the errno the kernel returned.
#[derive(Debug)]
pub struct IoctlError {
    /// The command's name as the header spells it, e.g. `KEEL_DOMAIN_ADD_RANGE`.
    pub name: &'static str,
    /// What the kernel returned.
    pub error: io::Error,
}

impl IoctlError {
    /// The errno, when the error carries one.
    pub fn errno(&self) -> Option<i32> {
        self.error.raw_os_error()
    }
}

impl fmt::Display for IoctlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: ", self.name)?;
        match self.errno() {
            Some(n) => {
                // io::Error says "Text (os error N)"; the name replaces the number.
                let text = self.error.to_string();
                let text = text.split(" (os error").next().unwrap_or_default();
                write!(f, "{} ({text})", errno_name(n))
            }
            None => write!(f, "{}", self.error),
        }
    }
}

impl std::error::Error for IoctlError {}

/// The symbolic name of an errno (`EINVAL`), or `errno N` for the ones keelctl does not expect.
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

/// Checks an ioctl's return value: the value when it is not negative, else the errno named
/// after the command.
fn check(name: &'static str, ret: libc::c_int) -> Result<libc::c_int, IoctlError> {
    if ret < 0 {
        Err(IoctlError {
            name,
            error: io::Error::last_os_error(),
        })
    } else {
        Ok(ret)
    }
}

/// Issues command `cmd` (named `name` in errors), which takes no argument, on `fd`.
///
/// # Safety
///
/// `cmd` on `fd` must not touch the caller's memory (an `_IO` command).
pub unsafe fn ioctl(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
) -> Result<libc::c_int, IoctlError> {
    debug_assert_eq!(uapi::ioc_size(cmd), 0, "{name} takes an argument");
    // SAFETY: the caller vouches that the command touches no memory of ours; `fd` is open for
    // the duration of the call because it is borrowed.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong) };
    check(name, ret)
}

/// Issues command `cmd`, whose argument is a `T` the kernel only reads, on `fd`.
///
/// # Safety
///
/// `cmd` on `fd` must read at most `size_of::<T>()` bytes at the argument and touch no other
/// memory of the caller (an `_IOW` command built from `T`, without embedded pointers).
pub unsafe fn ioctl_with_ref<T>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
    arg: &T,
) -> Result<libc::c_int, IoctlError> {
    assert_eq!(uapi::ioc_size(cmd), size_of::<T>(), "{name}: argument size");
    // SAFETY: `arg` is a valid `T` that outlives the call; the caller vouches that the kernel
    // reads only within it and writes nothing.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg as *const T) };
    check(name, ret)
}

/// Issues command `cmd`, whose argument is a `T` the kernel may write, on `fd`.
///
/// # Safety
///
/// `cmd` on `fd` must access at most `size_of::<T>()` bytes at the argument, must leave a valid
/// `T` there (every keel uapi structure is plain integers: any bytes are valid), and must touch
/// no other memory of the caller unless the caller vouches for it separately.
pub unsafe fn ioctl_with_mut<T>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
    arg: &mut T,
) -> Result<libc::c_int, IoctlError> {
    assert_eq!(uapi::ioc_size(cmd), size_of::<T>(), "{name}: argument size");
    // SAFETY: `arg` is a valid, exclusively borrowed `T` that outlives the call; the caller
    // vouches that the kernel stays within it and leaves a valid `T`.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), cmd as libc::c_ulong, arg as *mut T) };
    check(name, ret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_command_and_the_errno() {
        let e = IoctlError {
            name: "KEEL_DOMAIN_ADD_RANGE",
            error: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let text = e.to_string();
        assert_eq!(
            text,
            "KEEL_DOMAIN_ADD_RANGE failed: ENOSPC (No space left on device)"
        );
        assert_eq!(errno_name(4095), "errno 4095");
    }

    #[test]
    fn a_wrong_fd_is_an_error_not_a_crash() {
        // /dev/null knows no keel command: ENOTTY, reported with the command's name.
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut info = uapi::keel_domain_info::default();
        // SAFETY: KEEL_DOMAIN_INFO is `_IOR` of a `keel_domain_info`; /dev/null rejects it
        // without touching memory.
        let e = unsafe {
            ioctl_with_mut(
                std::os::fd::AsFd::as_fd(&null),
                "KEEL_DOMAIN_INFO",
                uapi::KEEL_DOMAIN_INFO,
                &mut info,
            )
        }
        .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert!(e.to_string().contains("KEEL_DOMAIN_INFO failed: ENOTTY"));
    }
}
