// SPDX-License-Identifier: GPL-2.0
//! `/dev/keel`: the misc device and its ioctls, one small method per command.
//!
//! The node is root-only (devtmpfs' default mode, 0600). Unknown commands get `ENOTTY`; input
//! fields that must be zero and are not get `EINVAL`; bad pointers get `EFAULT`.

use kernel::{
    fs::File,
    ioctl::_IOC_SIZE,
    miscdevice::{MiscDevice, MiscDeviceRegistration},
    prelude::*,
    uaccess::{UserPtr, UserSlice, UserSliceReader, UserSliceWriter},
};

use crate::{keel_core::caps::Caps, uapi, Keel};

/// An open `/dev/keel`.
pub(crate) struct KeelFile {
    caps: Caps,
}

#[vtable]
impl MiscDevice for KeelFile {
    type Ptr = KBox<Self>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        // SAFETY: The only `MiscDeviceRegistration<KeelFile>` is the `misc` field of the
        // module's `Keel`, which outlives every open file (the file holds a module reference).
        let keel =
            unsafe { &*kernel::container_of!(core::ptr::from_ref(misc).cast_mut(), Keel, misc) };
        Ok(KBox::new(Self { caps: keel.caps }, GFP_KERNEL)?)
    }

    fn ioctl(me: &KeelFile, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        let (mut reader, mut writer) =
            UserSlice::new(UserPtr::from_addr(arg), _IOC_SIZE(cmd)).reader_writer();
        match cmd {
            uapi::KEEL_GET_VERSION => me.get_version(reader, writer),
            uapi::KEEL_GET_CAPS => me.get_caps(reader, writer),
            uapi::KEEL_CREATE_DOMAIN => {
                let mut arg: uapi::keel_domain_create = reader.read()?;
                let fd = crate::domain::Domain::create(me.caps, &mut arg)?;
                // The fd exists now; a failed copy-out leaves it to the caller to close.
                let _ = writer.write(&arg);
                Ok(fd)
            }
            uapi::KEEL_LIST_DOMAINS => {
                let mut arg: uapi::keel_domain_list = reader.read()?;
                crate::domain::list(&mut arg)?;
                writer.write(&arg)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }
}

impl KeelFile {
    fn get_version(
        &self,
        mut reader: UserSliceReader,
        mut writer: UserSliceWriter,
    ) -> Result<isize> {
        let arg: uapi::keel_version = reader.read()?;
        if arg.flags != 0 {
            return Err(EINVAL);
        }
        let (major, minor, patch) = crate::VERSION;
        writer.write(&uapi::keel_version {
            flags: 0,
            abi_version: uapi::KEEL_ABI_VERSION,
            major,
            minor,
            patch,
            pad: 0,
        })?;
        Ok(0)
    }

    fn get_caps(&self, mut reader: UserSliceReader, mut writer: UserSliceWriter) -> Result<isize> {
        let arg: uapi::keel_caps = reader.read()?;
        if arg.flags != 0 {
            return Err(EINVAL);
        }
        let vendor = crate::vendor::uapi_number(self.caps.vendor);
        writer.write(&uapi::keel_caps {
            vendor,
            caps: self.caps.flags,
            nr_tags: self.caps.nr_tags,
            revision: self.caps.revision,
            online_cpus: crate::hw::online_cpus(),
            ..Default::default()
        })?;
        Ok(0)
    }
}
