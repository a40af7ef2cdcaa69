//! The raw system-call edge: ioctl helpers that check their result and name the command on
//! failure. Every owner type calls the kernel through these.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use keel_uapi as uapi;

use crate::error::Error;

/// Checks an ioctl's return value: the value when it is not negative, else the errno named
/// after the command.
fn check(name: &'static str, ret: libc::c_int) -> Result<libc::c_int, Error> {
    if ret < 0 {
        Err(Error::Ioctl {
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
pub(crate) unsafe fn ioctl(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
) -> Result<libc::c_int, Error> {
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
pub(crate) unsafe fn ioctl_with_ref<T>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
    arg: &T,
) -> Result<libc::c_int, Error> {
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
pub(crate) unsafe fn ioctl_with_mut<T>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    cmd: u32,
    arg: &mut T,
) -> Result<libc::c_int, Error> {
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
