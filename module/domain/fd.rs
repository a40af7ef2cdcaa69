// SPDX-License-Identifier: GPL-2.0
//! The domain and vCPU file descriptors: anonymous-inode fds whose private data is a counted
//! reference to the object, and their `file_operations`. The tables name this module as
//! owner: `rmmod` is refused while any fd exists.

use core::ffi::{c_int, c_uint, c_void};

use kernel::{bindings, prelude::*, sync::Arc};

use super::vcpu::Vcpu;
use super::Domain;

unsafe extern "C" {
    /// `anon_inode_getfd` (fs/anon_inodes.c, exported): a new fd on an anonymous inode.
    fn anon_inode_getfd(
        name: *const u8,
        fops: *const c_void,
        private: *mut c_void,
        flags: c_int,
    ) -> c_int;
}

/// Converts `file_operations` callbacks' results.
pub(super) fn to_c(r: Result<isize>) -> isize {
    match r {
        Ok(v) => v,
        Err(e) => e.to_errno() as isize,
    }
}

/// A `file_operations` table, shareable.
pub(super) struct Fops(bindings::file_operations);

// SAFETY: The table is immutable; its pointers are to functions and to this module.
unsafe impl Sync for Fops {}

/// Makes an anonymous-inode fd whose private data is `obj`.
pub(super) fn new_fd<T>(name: &'static CStr, fops: &'static Fops, obj: Arc<T>) -> Result<isize> {
    let raw = obj.into_raw();
    let flags = (bindings::O_RDWR | bindings::O_CLOEXEC) as c_int;
    // SAFETY: The name is a static C string, the table static; the fd's file owns the
    // reference `raw` from now on (released in the table's `release`).
    let fd = unsafe {
        anon_inode_getfd(
            name.as_char_ptr().cast(),
            (&raw const fops.0).cast(),
            raw as *mut c_void,
            flags,
        )
    };
    if fd < 0 {
        // SAFETY: `raw` came from `into_raw` above and the file was not made.
        drop(unsafe { Arc::from_raw(raw) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd as isize)
}

/// The object behind a file of ours.
///
/// # Safety
///
/// `file` is a live file made by [`new_fd`] with an `Arc<T>`.
unsafe fn object<'a, T>(file: *mut bindings::file) -> &'a T {
    // SAFETY: The caller's contract: private data is the `Arc`'s raw pointer, alive until
    // `release`, which cannot run while a callback on the file runs.
    unsafe { &*((*file).private_data as *const T) }
}

/// As [`object`], as an `Arc` borrowed for the call.
///
/// # Safety
///
/// As for [`object`].
unsafe fn object_arc<T>(file: *mut bindings::file) -> core::mem::ManuallyDrop<Arc<T>> {
    // SAFETY: As in `object`; the `ManuallyDrop` keeps the file's reference in place.
    core::mem::ManuallyDrop::new(unsafe { Arc::from_raw((*file).private_data as *const T) })
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_ioctl(file: *mut bindings::file, cmd: c_uint, arg: usize) -> isize {
    // SAFETY: Called by the VFS on a domain file.
    let d = unsafe { object_arc::<Domain>(file) };
    to_c(d.ioctl(cmd, arg))
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_mmap(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: Called by the VFS on a domain file.
    let d = unsafe { object::<Domain>(file) };
    to_c(d.mmap(vma)) as c_int
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn domain_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The file's last reference is gone: take back its `Arc`.
    let d = unsafe { Arc::from_raw((*file).private_data as *const Domain) };
    d.fd_closed();
    0
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn vcpu_ioctl(file: *mut bindings::file, cmd: c_uint, arg: usize) -> isize {
    // SAFETY: Called by the VFS on a vCPU file.
    let v = unsafe { object::<Vcpu>(file) };
    to_c(v.ioctl(cmd, arg))
}

/// The `file_operations` callback.
///
/// # Safety
///
/// Called by the VFS only, on a file made by [`new_fd`] for this object type.
unsafe extern "C" fn vcpu_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: The file's last reference is gone.
    let v = unsafe { Arc::from_raw((*file).private_data as *const Vcpu) };
    v.domain.inner.lock().vcpu_mask &= !(1u64 << v.id);
    v.domain.fd_closed();
    drop(v);
    0
}

/// Builds a `file_operations` table.
pub(super) const fn fops(
    ioctl: unsafe extern "C" fn(*mut bindings::file, c_uint, usize) -> isize,
    mmap: Option<unsafe extern "C" fn(*mut bindings::file, *mut bindings::vm_area_struct) -> c_int>,
    release: unsafe extern "C" fn(*mut bindings::inode, *mut bindings::file) -> c_int,
) -> Fops {
    Fops(bindings::file_operations {
        owner: kernel::module::this_module::<crate::Keel>().as_ptr(),
        unlocked_ioctl: Some(ioctl),
        compat_ioctl: bindings::compat_ptr_ioctl,
        mmap,
        release: Some(release),
        llseek: Some(bindings::noop_llseek),
        ..pin_init::zeroed()
    })
}

/// A `vm_operations_struct`, shareable.
struct VmOps(bindings::vm_operations_struct);

// SAFETY: The table is immutable; its pointers are to functions.
unsafe impl Sync for VmOps {}

/// The operations of a domain fd's VMAs: pages go in at their first touch.
static DOMAIN_VM_OPS: VmOps = VmOps(bindings::vm_operations_struct {
    fault: Some(domain_vma_fault),
    ..pin_init::zeroed()
});

/// The table for [`Domain::mmap`].
pub(super) fn domain_vm_ops() -> *const bindings::vm_operations_struct {
    &raw const DOMAIN_VM_OPS.0
}

/// The `vm_operations_struct` fault handler.
///
/// # Safety
///
/// Called by the MM only, for a VMA that [`Domain::mmap`] set up on a domain file.
unsafe extern "C" fn domain_vma_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: The MM passes a valid fault description for the call.
    let f = unsafe { &(*vmf).__bindgen_anon_1 };
    // SAFETY: The VMA holds a reference on its file (`vm_file`), a domain file that
    // `Domain::mmap` set up, so the domain lives for the call.
    let d = unsafe { object::<Domain>((*f.vma).vm_file) };
    let Some(gpa) = (f.pgoff as u64).checked_mul(4096) else {
        return bindings::vm_fault_reason_VM_FAULT_SIGBUS;
    };
    match d.fault_page(f.vma, f.address, gpa) {
        // Inserted, or another thread's fault inserted it first.
        Ok(()) => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
        Err(e) if e == EBUSY => bindings::vm_fault_reason_VM_FAULT_NOPAGE,
        Err(e) if e == ENOMEM => bindings::vm_fault_reason_VM_FAULT_OOM,
        Err(_) => bindings::vm_fault_reason_VM_FAULT_SIGBUS,
    }
}

pub(super) static DOMAIN_FOPS: Fops = fops(domain_ioctl, Some(domain_mmap), domain_release);
pub(super) static VCPU_FOPS: Fops = fops(vcpu_ioctl, None, vcpu_release);
