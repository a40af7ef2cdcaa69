//! `disk = [ 'DISKSPEC', ... ]`: one disk spec, read as xl reads it (Xen's
//! docs/man/xl-disk-configuration.5.pod.in, tools/libs/util/libxlu_disk_l.l and
//! libxlu_disk.c), and the guest's name for it, a vdev, numbered as libxl numbers it
//! (tools/libs/light/libxl_device.c, `libxl__device_disk_dev_number`; docs/misc's
//! xen-vbd-interface).
//!
//! A spec is comma-separated parameters, each with leading blanks ignored: `key=value`
//! parameters and flags in any order, and positional ones filling target, format, vdev and
//! access in turn (a deprecated `raw:`/`phy:`/... prefix takes format's place);
//! `target=...` takes the whole rest of the spec, commas and all. Both
//! `format=raw, vdev=xvda, access=rw, target=/img` and `/img,raw,xvda,rw` (or
//! `phy:/dev/sdb,xvdb,r`) give the same disk.

use std::path::PathBuf;

use crate::syntax::parse_number;
use crate::XEN_SCRIPT_DIR;

/// The image format (`format=`; `raw` when not given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw image or block device.
    Raw,
    /// QEMU's qcow.
    Qcow,
    /// QEMU's qcow2.
    Qcow2,
    /// Microsoft's VHD.
    Vhd,
    /// QEMU's qed.
    Qed,
    /// No medium: an empty cdrom drive.
    Empty,
}

/// How the guest may use the disk (`access=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `r` or `ro`; always so for a cdrom.
    ReadOnly,
    /// `w`, `rw` or empty: the default.
    ReadWrite,
}

/// The backend implementation asked for (`backendtype=`); libxl picks one when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendType {
    /// The kernel's blkback.
    Phy,
    /// blktap's tapback.
    Tap,
    /// QEMU's Xen disk backend.
    Qdisk,
    /// A standalone (virtio) backend.
    Standalone,
}

/// The protocol the guest sees (`specification=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Specification {
    /// Xen's blkif: xen-blkfront.
    Xen,
    /// virtio-blk.
    Virtio,
}

/// A virtual device name (`xvda`, `hdc`, `sdb1`, `d0p1`, or a number) and the number libxl
/// derives from it, which the guest's frontend decodes back (xenstore's `virtual-device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vdev {
    /// The name as written.
    pub name: String,
    /// The device number: `202 << 8 | disk << 4 | partition` for xvd disks 0-15 with
    /// partitions 0-15, `1 << 28 | disk << 8 | partition` for the others (the extended
    /// form), the IDE and SCSI majors for `hdX` and `sdX`.
    pub number: u32,
}

impl Vdev {
    /// Decodes a vdev name as libxl does; the error says why it is not one.
    pub fn parse(name: &str) -> Result<Vdev, String> {
        let number = vdev_number(name).ok_or_else(|| {
            format!(
                "invalid virtual disk identifier `{name}' \
                 (xvdX, hdX, sdX with an optional partition, dNpM, or a number)"
            )
        })?;
        Ok(Vdev {
            name: name.to_owned(),
            number,
        })
    }
}

fn xvd_number(disk: u32, partition: u32) -> u32 {
    if disk <= 15 && partition <= 15 {
        (202 << 8) | (disk << 4) | partition
    } else {
        (1 << 28) | (disk << 8) | partition
    }
}

/// A decimal number without leading zeros (libxl's partition rule; Keel applies it to
/// `dNpM` too, where libxl's `%i` would read `010` as octal).
fn plain_decimal(text: &str, max: u32) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse::<u32>().ok().filter(|&n| n <= max)
}

/// `PREFIX` then drive letters (a bijective base 26: `a`=0, `z`=25, `aa`=26) then an
/// optional partition; the disk index and the partition.
fn lettered(name: &str, prefix: &str, max_disk: u32, max_partition: u32) -> Option<(u32, u32)> {
    let rest = name.strip_prefix(prefix)?;
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut index: u64 = 0;
    for (i, b) in rest.bytes().take(letters).enumerate() {
        index = if i == 0 { 0 } else { (index + 1) * 26 };
        index += u64::from(b - b'a');
        if index > u64::from(max_disk) {
            return None;
        }
    }
    // A partition has no leading zero, so `xvda0` is no name at all.
    let partition = match &rest[letters..] {
        "" => 0,
        digits if digits.starts_with('0') => return None,
        digits => plain_decimal(digits, max_partition)?,
    };
    Some((u32::try_from(index).ok()?, partition))
}

fn vdev_number(name: &str) -> Option<u32> {
    if let Some(rest) = name.strip_prefix('d') {
        if let Some((disk, partition)) = rest.split_once('p') {
            if let (Some(d), Some(p)) = (
                plain_decimal(disk, (1 << 20) - 1),
                plain_decimal(partition, 255),
            ) {
                return Some(xvd_number(d, p));
            }
        }
    }
    if let Some((disk, partition)) = lettered(name, "xvd", (1 << 20) - 1, 255) {
        return Some(xvd_number(disk, partition));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_number(name)
            .ok()
            .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
            .and_then(|n| u32::try_from(n).ok());
    }
    if let Some((disk, partition)) = lettered(name, "hd", 3, 63) {
        let major = if disk < 2 { 3 } else { 22 };
        return Some((major << 8) | ((disk & 1) << 6) | partition);
    }
    if let Some((disk, partition)) = lettered(name, "sd", 15, 15) {
        return Some((8 << 8) | (disk << 4) | partition);
    }
    None
}

/// One parsed disk spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The target as written: a path (see [`Disk::path`]) or, with a script, the script's
    /// argument; `None` or empty for an empty cdrom drive.
    pub target: Option<String>,
    /// The image format.
    pub format: DiskFormat,
    /// The guest's device.
    pub vdev: Vdev,
    /// Read-only or read-write.
    pub access: Access,
    /// A cdrom drive (`devtype=cdrom`, `cdrom`, `hdc:cdrom`): removable and read-only.
    pub cdrom: bool,
    /// The backend domain's name (`backend=`); Dom0 when absent.
    pub backend: Option<String>,
    /// The backend implementation (`backendtype=`).
    pub backend_type: Option<BackendType>,
    /// The protocol (`specification=`); Xen's blkif when absent.
    pub specification: Option<Specification>,
    /// The hotplug script (`script=`, or `block-iscsi` and the like from a deprecated
    /// `iscsi:` prefix), as written.
    pub script: Option<String>,
    /// `direct-io-safe`.
    pub direct_io_safe: bool,
    /// `discard` / `no-discard`.
    pub discard: Option<bool>,
    /// `trusted` / `untrusted`.
    pub trusted: Option<bool>,
    /// `grant_usage=1` / `0`.
    pub grant_usage: Option<bool>,
    /// COLO parameters, as written (Keel has no COLO).
    pub colo: Vec<String>,
}

impl Disk {
    /// The host path of the target: `None` for an empty drive or a target a script
    /// interprets; a target not starting with `/` has `/dev/` put before it, as
    /// xl-disk-configuration(5) says (and Xen's block script does).
    pub fn path(&self) -> Option<PathBuf> {
        let target = self.target.as_deref().filter(|t| !t.is_empty())?;
        if self.script.is_some() {
            return None;
        }
        Some(if target.starts_with('/') {
            PathBuf::from(target)
        } else {
            PathBuf::from("/dev").join(target)
        })
    }

    /// The script's path: names without a leading `/` are in [`XEN_SCRIPT_DIR`] (libxl's
    /// `libxl__abs_path`).
    pub fn script_path(&self) -> Option<PathBuf> {
        let script = self.script.as_deref()?;
        Some(if script.starts_with('/') {
            PathBuf::from(script)
        } else {
            PathBuf::from(XEN_SCRIPT_DIR).join(script)
        })
    }

    /// Parses one disk spec; the error says what is wrong, near which text.
    pub fn parse(spec: &str) -> Result<Disk, String> {
        let mut p = DiskParser::default();
        p.run(spec)?;
        p.finish()
    }
}

#[derive(Default)]
struct DiskParser {
    target: Option<String>,
    format: Option<DiskFormat>,
    vdev: Option<String>,
    access: Option<Access>,
    access_set: bool,
    had_prefix: bool,
    cdrom: bool,
    backend: Option<String>,
    backend_type: Option<BackendType>,
    specification: Option<Specification>,
    script: Option<String>,
    direct_io_safe: bool,
    discard: Option<bool>,
    trusted: Option<bool>,
    grant_usage: Option<bool>,
    colo: Vec<String>,
}

/// Stores a string parameter: xl refuses to change one already set to something non-empty.
fn save(slot: &mut Option<String>, what: &str, value: &str) -> Result<(), String> {
    match slot {
        Some(old) if !old.is_empty() => Err(format!("{what} respecified near `{value}'")),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

/// Sets an enum parameter: xl refuses to change one already set to something else.
fn set<T: PartialEq + Copy>(
    slot: &mut Option<T>,
    what: &str,
    value: T,
    text: &str,
) -> Result<(), String> {
    match slot {
        Some(old) if *old != value => Err(format!("{what} respecified near `{text}'")),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

impl DiskParser {
    fn set_format(&mut self, text: &str) -> Result<(), String> {
        let format = match text {
            "" | "raw" => DiskFormat::Raw,
            "qcow" => DiskFormat::Qcow,
            "qcow2" => DiskFormat::Qcow2,
            "vhd" => DiskFormat::Vhd,
            "qed" => DiskFormat::Qed,
            "empty" => DiskFormat::Empty,
            _ => return Err(format!("unknown value for format near `{text}'")),
        };
        set(&mut self.format, "format", format, text)
    }

    fn set_access(&mut self, text: &str) -> Result<(), String> {
        self.access = Some(match text {
            "r" | "ro" => Access::ReadOnly,
            "" | "w" | "rw" => Access::ReadWrite,
            _ => return Err(format!("unknown value for access near `{text}'")),
        });
        Ok(())
    }

    /// `VDEV:DEVTYPE` (deprecated); false when there is no colon.
    fn vdev_and_devtype(&mut self, text: &str) -> Result<bool, String> {
        let Some((vdev, devtype)) = text.rsplit_once(':') else {
            return Ok(false);
        };
        save(&mut self.vdev, "vdev", vdev)?;
        self.cdrom = match devtype {
            "cdrom" => true,
            "disk" => false,
            _ => return Err(format!("unknown deprecated type near `{devtype}'")),
        };
        Ok(true)
    }

    fn positional(&mut self, text: &str) -> Result<(), String> {
        if self.target.is_none() {
            self.target = Some(text.to_owned());
        } else if !self.had_prefix && self.format.is_none() {
            if self.target.as_deref() == Some("") && self.vdev_and_devtype(text)? {
                self.format = Some(DiskFormat::Empty);
            } else {
                self.set_format(text)?;
            }
        } else if self.vdev.is_none() {
            if !self.vdev_and_devtype(text)? {
                self.vdev = Some(text.to_owned());
            }
        } else if !self.access_set {
            self.access_set = true;
            self.set_access(text)?;
        } else {
            return Err(format!("too many positional parameters near `{text}'"));
        }
        Ok(())
    }

    /// A deprecated `PREFIX:` at the start of `rest`: its length with the colon, if known.
    fn prefix(&mut self, rest: &str) -> Result<Option<usize>, String> {
        let word = rest
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            .count();
        if word == 0
            || !rest.as_bytes()[0].is_ascii_lowercase()
            || rest.as_bytes().get(word) != Some(&b':')
        {
            return Ok(None);
        }
        let name = &rest[..word];
        match name {
            "raw" | "qcow" | "qcow2" | "vhd" => self.set_format(name)?,
            "iscsi" | "nbd" | "enbd" | "drbd" => {
                save(&mut self.script, "script", &format!("block-{name}"))?
            }
            "tapdisk" | "tap" | "tap2" | "aio" | "ioemu" | "file" | "phy" => {}
            _ => {
                // xl's rule only fires when what follows the colon is not a letter or digit
                // (`hdc:cdrom` is a vdev and a devtype, `foo:/x` an unknown prefix).
                let next = rest.as_bytes().get(word + 1);
                if next.is_none_or(|b| !b.is_ascii_lowercase() && !b.is_ascii_digit()) {
                    return Err(format!(
                        "unknown deprecated disk prefix near `{}'",
                        &rest[..=word]
                    ));
                }
                return Ok(None);
            }
        }
        self.had_prefix = true;
        Ok(Some(word + 1))
    }

    fn keyword(&mut self, name: &str, value: &str, token: &str) -> Result<(), String> {
        match name {
            "format" => self.set_format(value)?,
            "devtype" => {
                self.cdrom = match value {
                    "cdrom" => true,
                    "disk" => false,
                    _ => return Err(format!("unknown value for type near `{token}'")),
                }
            }
            "access" => self.set_access(value)?,
            "backend" => save(&mut self.backend, "backend", value)?,
            "backendtype" => {
                let t = match value {
                    "phy" => BackendType::Phy,
                    "tap" => BackendType::Tap,
                    "qdisk" => BackendType::Qdisk,
                    "standalone" => BackendType::Standalone,
                    _ => return Err(format!("unknown value for backendtype near `{value}'")),
                };
                set(&mut self.backend_type, "backendtype", t, value)?;
            }
            "specification" => {
                let s = match value {
                    "xen" => Specification::Xen,
                    "virtio" => Specification::Virtio,
                    _ => return Err(format!("unknown value for specification near `{value}'")),
                };
                set(&mut self.specification, "specification", s, value)?;
            }
            "vdev" => save(&mut self.vdev, "vdev", value)?,
            "script" => save(&mut self.script, "script", value)?,
            "grant_usage" => {
                self.grant_usage = Some(match value {
                    "1" => true,
                    "0" => false,
                    _ => return Err(format!("unknown value for grant_usage near `{token}'")),
                })
            }
            "colo-host" | "colo-export" | "active-disk" | "hidden-disk" => {
                self.colo.push(token.to_owned())
            }
            "colo-port" => {
                if !value.starts_with(|c: char| c.is_ascii_digit()) || value.starts_with('0') {
                    return Err(format!("unknown value for colo_port near `{value}'"));
                }
                self.colo.push(token.to_owned())
            }
            _ => {
                let simple = name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                return Err(if simple {
                    format!("unknown parameter near `{token}'")
                } else {
                    format!("bad disk syntax near `{token}'")
                });
            }
        }
        Ok(())
    }

    fn flag(&mut self, token: &str) -> bool {
        match token {
            "cdrom" => self.cdrom = true,
            "direct-io-safe" => self.direct_io_safe = true,
            "discard" => self.discard = Some(true),
            "no-discard" => self.discard = Some(false),
            "trusted" => self.trusted = Some(true),
            "untrusted" => self.trusted = Some(false),
            "colo" | "no-colo" => self.colo.push(token.to_owned()),
            _ => return false,
        }
        true
    }

    fn run(&mut self, spec: &str) -> Result<(), String> {
        let mut rest = spec;
        loop {
            rest = rest.trim_start_matches([' ', '\t', '\n']);
            if rest.is_empty() {
                return Ok(());
            }
            if let Some(target) = rest.strip_prefix("target=") {
                let target = target.strip_suffix(',').unwrap_or(target);
                return save(&mut self.target, "target", target);
            }
            if let Some(len) = self.prefix(rest)? {
                rest = &rest[len..];
                continue;
            }
            let (token, after) = match rest.split_once(',') {
                Some((token, after)) => (token, after),
                None => (rest, ""),
            };
            if let Some((name, value)) = token.split_once('=') {
                self.keyword(name, value, token)?;
            } else if !self.flag(token) {
                self.positional(token)?;
            }
            rest = after;
        }
    }

    fn finish(self) -> Result<Disk, String> {
        let mut format = self.format.unwrap_or(DiskFormat::Raw);
        let mut access = self.access.unwrap_or(Access::ReadWrite);
        let empty_target = self.target.as_deref().is_none_or(str::is_empty);
        if self.cdrom {
            access = Access::ReadOnly;
            if empty_target {
                format = DiskFormat::Empty;
            }
        }
        let vdev = self.vdev.ok_or("no vdev specified")?;
        if self.target.is_none() && !self.cdrom {
            return Err("no target specified (and device not removable)".into());
        }
        if empty_target && !self.cdrom {
            return Err("empty target for a disk that is not a cdrom drive".into());
        }
        Ok(Disk {
            target: self.target,
            format,
            vdev: Vdev::parse(&vdev)?,
            access,
            cdrom: self.cdrom,
            backend: self.backend,
            backend_type: self.backend_type,
            specification: self.specification,
            script: self.script,
            direct_io_safe: self.direct_io_safe,
            discard: self.discard,
            trusted: self.trusted,
            grant_usage: self.grant_usage,
            colo: self.colo,
        })
    }
}

#[cfg(test)]
mod tests;
