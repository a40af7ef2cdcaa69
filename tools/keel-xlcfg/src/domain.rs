//! The keys Keel uses, typed: [`DomainConfig`] from a parsed [`Config`], each key read as
//! xl reads it (Xen's tools/xl/xl_parse.c `parse_config_data`, with libxl's defaults from
//! tools/libs/light/libxl_create.c), refused with the key named where the value is wrong.
//! Keys Keel does not use become warnings, not errors.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;
use crate::disk::{BackendType, Disk, DiskFormat, Specification};
use crate::syntax::{Config, Setting, Value};
use crate::vif::{Vif, VifScript, VifType};

/// The keys [`DomainConfig`] reads; any other key is reported as ignored.
pub const KEYS: &[&str] = &[
    "name",
    "type",
    "builder",
    "uuid",
    "kernel",
    "ramdisk",
    "cmdline",
    "root",
    "extra",
    "memory",
    "maxmem",
    "vcpus",
    "maxvcpus",
    "on_poweroff",
    "on_reboot",
    "on_watchdog",
    "on_crash",
    "on_soft_reset",
    "disk",
    "vif",
];

/// The memory, in MiB, of a config with neither `memory` nor `maxmem` (libxl's default).
pub const DEFAULT_MEMORY_MIB: u64 = 32;

/// What to do when the domain powers off, reboots, crashes, trips its watchdog or asks for a
/// soft reset (`on_poweroff` and friends; the names are xl's, matched exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `destroy`: tear the domain down.
    Destroy,
    /// `restart`: destroy it and build it again from the same config.
    Restart,
    /// `rename-restart`: keep the old domain under another name, start a new one.
    RenameRestart,
    /// `preserve`: keep the domain, stopped, for inspection.
    Preserve,
    /// `coredump-destroy`: write a core dump, then destroy.
    CoredumpDestroy,
    /// `coredump-restart`: write a core dump, then restart.
    CoredumpRestart,
    /// `soft-reset`: reset the domain's state without rebuilding it (kexec).
    SoftReset,
}

impl Action {
    const ALL: [Action; 7] = [
        Action::Destroy,
        Action::Restart,
        Action::RenameRestart,
        Action::Preserve,
        Action::CoredumpDestroy,
        Action::CoredumpRestart,
        Action::SoftReset,
    ];

    /// The action xl names `name`.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }

    /// xl's name of the action.
    pub fn name(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Restart => "restart",
            Action::RenameRestart => "rename-restart",
            Action::Preserve => "preserve",
            Action::CoredumpDestroy => "coredump-destroy",
            Action::CoredumpRestart => "coredump-restart",
            Action::SoftReset => "soft-reset",
        }
    }

    /// Whether Keel's toolstack carries the action out: destroy, restart and preserve. Core
    /// dumps, rename-restart and soft reset (Xen's SHUTDOWN_soft_reset) are not there yet.
    pub fn supported_by_keel(self) -> bool {
        matches!(self, Action::Destroy | Action::Restart | Action::Preserve)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A domain's UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses the 36-character form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case), as
    /// libuuid's `uuid_parse`, which libxl uses, does.
    pub fn parse(text: &str) -> Option<Uuid> {
        let b = text.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut hex = Vec::with_capacity(32);
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return None;
                }
            } else {
                hex.push(char::from(c).to_digit(16)? as u8);
            }
        }
        for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Some(Uuid(out))
    }

    /// A random (version 4) UUID from the kernel's random source, for a config without one.
    pub fn generate() -> std::io::Result<Uuid> {
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Uuid(bytes))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A domain as its config describes it, in the terms Keel uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// `name`: required; see [`validate_name`].
    pub name: String,
    /// `uuid`; `None` when the config has none (generate one with [`Uuid::generate`]).
    pub uuid: Option<Uuid>,
    /// `kernel`: required (Keel boots the kernel directly; there is no bootloader), made
    /// absolute against the working directory, where xl's relative paths point too.
    pub kernel: PathBuf,
    /// `ramdisk`, made absolute like `kernel`.
    pub ramdisk: Option<PathBuf>,
    /// The kernel command line: `cmdline`, or else `root` and `extra` combined as xl does
    /// (`root=ROOT EXTRA`).
    pub cmdline: Option<String>,
    /// `memory`, in MiB: what the guest gets at boot ([`DEFAULT_MEMORY_MIB`] when neither
    /// `memory` nor `maxmem` is set, `maxmem` when only that is).
    pub memory_mib: u64,
    /// `maxmem`, in MiB (`memory` when absent; never below it).
    pub maxmem_mib: u64,
    /// `vcpus`: the vCPUs online at boot (1 when absent; below 1 is refused, where xl takes 1).
    pub vcpus: u32,
    /// `maxvcpus`: the vCPUs the guest may bring up (`vcpus` when absent or 0).
    pub max_vcpus: u32,
    /// `on_poweroff` (default destroy).
    pub on_poweroff: Action,
    /// `on_reboot` (default restart).
    pub on_reboot: Action,
    /// `on_watchdog` (default destroy).
    pub on_watchdog: Action,
    /// `on_crash` (default destroy).
    pub on_crash: Action,
    /// `on_soft_reset` (default soft-reset).
    pub on_soft_reset: Action,
    /// `disk`, in order.
    pub disks: Vec<Disk>,
    /// `vif`, in order.
    pub vifs: Vec<Vif>,
    /// What Keel ignores or does differently from xl, for the user to see.
    pub warnings: Vec<Diagnostic>,
}

/// Checks a domain name. xl requires one (libxl also that it be unique among running
/// domains, which only the creator can check); Keel also refuses an empty name, a name of
/// digits only (xl's commands read those as domain ids, so the domain could not be named),
/// and `/` or control characters (names become parts of file names and log lines).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("`name' is empty".into());
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "`name' = \"{name}\" is all digits, which xl's commands read as a domain id"
        ));
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c.is_control()) {
        return Err(format!(
            "`name' = {name:?} contains {c:?}, which Keel refuses"
        ));
    }
    Ok(())
}

/// Reads the config's keys into a [`DomainConfig`], collecting warnings on the way.
struct Reader<'a> {
    config: &'a Config,
    warnings: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn warn(&mut self, setting: &Setting, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::at(&setting.location, message));
    }

    fn missing(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic::whole(self.config.source(), message)
    }

    fn string(&self, key: &str) -> Result<Option<(String, Setting)>, Diagnostic> {
        Ok(self
            .config
            .atom(key)?
            .map(|(text, setting)| (text.to_owned(), setting.clone())))
    }

    /// A number in `min..=max`, the key named when it is out of bounds.
    fn bounded(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, Diagnostic> {
        let Some((n, setting)) = self.config.number(key)? else {
            return Ok(None);
        };
        if n < min || n > max {
            return Err(Diagnostic::at(
                &setting.location,
                format!("`{key}' = {n} is out of range ({min} to {max})"),
            ));
        }
        Ok(Some(n))
    }

    fn path(&self, key: &str, cwd: &Path) -> Result<Option<PathBuf>, Diagnostic> {
        let Some((text, setting)) = self.string(key)? else {
            return Ok(None);
        };
        if text.is_empty() {
            return Err(Diagnostic::at(
                &setting.location,
                format!("`{key}' is empty"),
            ));
        }
        Ok(Some(cwd.join(text)))
    }

    fn action(&self, key: &str, default: Action) -> Result<Action, Diagnostic> {
        let Some((text, setting)) = self.string(key)? else {
            return Ok(default);
        };
        Action::parse(&text).ok_or_else(|| {
            let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
            Diagnostic::at(
                &setting.location,
                format!(
                    "unknown {key} action \"{text}\" (one of {})",
                    names.join(", ")
                ),
            )
        })
    }

    /// `type` and the deprecated `builder`: only PVH is accepted.
    fn guest_type(&mut self) -> Result<(), Diagnostic> {
        let refuse = |setting: &Setting, what: &str| {
            Diagnostic::at(
                &setting.location,
                format!(
                    "{what}: Keel runs PVH guests only; set type = \"pvh\" \
                     (the kernel needs CONFIG_XEN_PVH)"
                ),
            )
        };
        // xl compares with strncmp(value, name, strlen(value)): a prefix, even an empty
        // one, selects hvm first, then pv; only "pvh" itself is PVH.
        let typed = self.string("type")?;
        if let Some((text, setting)) = &typed {
            if text != "pvh" {
                if "hvm".starts_with(text.as_str()) {
                    return Err(refuse(setting, &format!("type = \"{text}\" is HVM")));
                }
                if "pv".starts_with(text.as_str()) {
                    return Err(refuse(setting, &format!("type = \"{text}\" is PV")));
                }
                return Err(Diagnostic::at(
                    &setting.location,
                    format!("invalid domain type \"{text}\" (Keel runs \"pvh\" guests)"),
                ));
            }
        }
        if let Some((text, setting)) = self.string("builder")? {
            let what = if "hvm".starts_with(text.as_str()) {
                "HVM"
            } else if "generic".starts_with(text.as_str()) {
                "PV"
            } else {
                return Err(Diagnostic::at(
                    &setting.location,
                    format!("invalid domain builder \"{text}\""),
                ));
            };
            return Err(refuse(
                &setting,
                &format!("builder = \"{text}\" (deprecated) makes the guest {what}"),
            ));
        }
        if typed.is_none() {
            self.warnings.push(
                self.missing("no `type': xl would build a PV guest on x86, Keel builds a PVH one"),
            );
        }
        Ok(())
    }

    fn cmdline(&mut self) -> Result<Option<String>, Diagnostic> {
        let cmdline = self.string("cmdline")?;
        let root = self.string("root")?;
        let extra = self.string("extra")?;
        if let Some((cmdline, setting)) = cmdline {
            if root.is_some() || extra.is_some() {
                self.warn(&setting, "ignoring root= and extra= in favour of cmdline=");
            }
            return Ok(Some(cmdline));
        }
        Ok(match (root, extra) {
            (Some((root, _)), Some((extra, _))) => Some(format!("root={root} {extra}")),
            (Some((root, _)), None) => Some(format!("root={root}")),
            (None, Some((extra, _))) => Some(extra),
            (None, None) => None,
        })
    }

    /// The memory sizes in MiB: (memory, maxmem).
    fn memory(&mut self) -> Result<(u64, u64), Diagnostic> {
        // A size whose bytes fit in 64 bits.
        let max = i64::try_from(u64::MAX >> 20).unwrap_or(i64::MAX);
        let memory = self.bounded("memory", 1, max)?.map(i64::unsigned_abs);
        let maxmem = self.bounded("maxmem", 1, max)?.map(i64::unsigned_abs);
        let (memory, maxmem) = match (memory, maxmem) {
            (None, None) => (DEFAULT_MEMORY_MIB, DEFAULT_MEMORY_MIB),
            (Some(m), None) => (m, m),
            (None, Some(m)) => (m, m),
            (Some(memory), Some(maxmem)) => (memory, maxmem),
        };
        if let Some(setting) = self.config.get("maxmem") {
            if maxmem < memory {
                return Err(Diagnostic::at(
                    &setting.location,
                    format!("`maxmem' = {maxmem} is below `memory' = {memory}"),
                ));
            }
            if maxmem > memory {
                let setting = setting.clone();
                self.warn(
                    &setting,
                    format!(
                        "`maxmem' = {maxmem} above `memory' = {memory}: Keel gives the guest \
                         {memory} MiB and does not balloon it up yet"
                    ),
                );
            }
        }
        Ok((memory, maxmem))
    }

    /// (vcpus, maxvcpus).
    fn vcpus(&mut self) -> Result<(u32, u32), Diagnostic> {
        let limit = i64::from(u32::MAX);
        let mut vcpus = 1;
        if let Some(n) = self.bounded("vcpus", i64::MIN, limit)? {
            if n < 1 {
                // xl quietly takes it as 1; Keel refuses it, as a likely typo.
                let setting = self.config.get("vcpus").expect("vcpus was read");
                return Err(Diagnostic::at(
                    &setting.location,
                    format!("`vcpus' = {n}: a domain needs at least 1 vCPU"),
                ));
            } else {
                vcpus = u32::try_from(n).unwrap_or(u32::MAX);
            }
        }
        let max_vcpus = match self.bounded("maxvcpus", 0, limit)? {
            None | Some(0) => vcpus,
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        };
        if max_vcpus < vcpus {
            let setting = self.config.get("maxvcpus").expect("maxvcpus was read");
            return Err(Diagnostic::at(
                &setting.location,
                format!("`maxvcpus' = {max_vcpus} is below `vcpus' = {vcpus}"),
            ));
        }
        Ok((vcpus, max_vcpus))
    }

    /// The specs of a device list: each item must be a string.
    fn specs(&self, key: &str) -> Result<Vec<(String, Value)>, Diagnostic> {
        let Some((items, _)) = self.config.list(key)? else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_atom() {
                Some(spec) => Ok((spec.to_owned(), item.clone())),
                // xl's loop silently stops at the first item that is not a string.
                None => Err(Diagnostic::at(
                    &item.location,
                    format!("{key}[{i}] is a list, not a {key} spec string"),
                )),
            })
            .collect()
    }

    fn disks(&mut self) -> Result<Vec<Disk>, Diagnostic> {
        let mut disks: Vec<Disk> = Vec::new();
        for (i, (spec, item)) in self.specs("disk")?.into_iter().enumerate() {
            let at = |message: String| {
                Diagnostic::at(&item.location, format!("disk[{i}] `{spec}': {message}"))
            };
            let disk = Disk::parse(&spec).map_err(at)?;
            if let Some(j) = disks.iter().position(|d| d.vdev.number == disk.vdev.number) {
                return Err(at(format!(
                    "vdev {} is the same device as disk[{j}]'s {}",
                    disk.vdev.name, disks[j].vdev.name
                )));
            }
            let mut ignored = Vec::new();
            if !matches!(disk.format, DiskFormat::Raw | DiskFormat::Empty) {
                ignored.push(format!("format {:?} (Keel serves raw images)", disk.format));
            }
            if disk.script.is_some() {
                ignored.push("script= (Keel does not run block scripts)".to_owned());
            }
            if disk.backend.is_some() {
                ignored.push("backend= (Keel's backends run in Dom0)".to_owned());
            }
            if disk.backend_type.is_some_and(|t| t != BackendType::Phy) {
                ignored.push("backendtype= (Keel has its own block backend)".to_owned());
            }
            if disk.specification == Some(Specification::Virtio) {
                ignored.push("specification=virtio (Keel serves Xen's blkif)".to_owned());
            }
            if !disk.colo.is_empty() {
                ignored.push("COLO parameters".to_owned());
            }
            for what in ignored {
                self.warnings.push(Diagnostic::at(
                    &item.location,
                    format!("disk[{i}] `{spec}': not supported by Keel: {what}"),
                ));
            }
            disks.push(disk);
        }
        Ok(disks)
    }

    fn vifs(&mut self) -> Result<Vec<Vif>, Diagnostic> {
        let mut vifs: Vec<Vif> = Vec::new();
        for (i, (spec, item)) in self.specs("vif")?.into_iter().enumerate() {
            let at = |message: String| {
                Diagnostic::at(&item.location, format!("vif[{i}] `{spec}': {message}"))
            };
            let devid = u32::try_from(i).map_err(|_| at("too many vifs".into()))?;
            let (vif, mut warnings) = Vif::parse(&spec, devid).map_err(at)?;
            if let Some(j) = vifs.iter().position(|v| v.devid == vif.devid) {
                return Err(at(format!("devid {} is vif[{j}]'s too", vif.devid)));
            }
            if vif.model.is_some() || vif.vif_type == Some(VifType::Ioemu) {
                warnings.push("model= and type=ioemu are for HVM guests, ignored".into());
            }
            if vif.backend.is_some() {
                warnings
                    .push("backend= is not supported by Keel (its backends run in Dom0)".into());
            }
            if let VifScript::Other(path) = &vif.script {
                warnings.push(format!(
                    "script {} is not one of vif-bridge, vif-route, vif-nat, which Keel implements",
                    path.display()
                ));
            }
            for warning in warnings {
                self.warnings.push(at(warning));
            }
            vifs.push(vif);
        }
        Ok(vifs)
    }
}

impl DomainConfig {
    /// Reads the typed keys of `config`; relative paths are made absolute against `cwd`
    /// (pass the process's working directory: xl opens them from there).
    pub fn from_config(config: &Config, cwd: &Path) -> Result<DomainConfig, Diagnostic> {
        let mut r = Reader {
            config,
            warnings: config.warnings().to_vec(),
        };
        r.guest_type()?;
        let (name, setting) = r
            .string("name")?
            .ok_or_else(|| r.missing("domain name must be specified (`name')"))?;
        validate_name(&name).map_err(|e| Diagnostic::at(&setting.location, e))?;
        let uuid = match r.string("uuid")? {
            None => None,
            Some((text, setting)) => Some(Uuid::parse(&text).ok_or_else(|| {
                Diagnostic::at(&setting.location, format!("failed to parse `uuid': {text}"))
            })?),
        };
        let kernel = r.path("kernel", cwd)?.ok_or_else(|| {
            r.missing(
                "`kernel' is required: Keel boots a PVH kernel directly (no bootloader, \
                 no firmware)",
            )
        })?;
        let ramdisk = r.path("ramdisk", cwd)?;
        let cmdline = r.cmdline()?;
        let (memory_mib, maxmem_mib) = r.memory()?;
        let (vcpus, max_vcpus) = r.vcpus()?;
        let on_poweroff = r.action("on_poweroff", Action::Destroy)?;
        let on_reboot = r.action("on_reboot", Action::Restart)?;
        let on_watchdog = r.action("on_watchdog", Action::Destroy)?;
        let on_crash = r.action("on_crash", Action::Destroy)?;
        let on_soft_reset = r.action("on_soft_reset", Action::SoftReset)?;
        for key in [
            "on_poweroff",
            "on_reboot",
            "on_watchdog",
            "on_crash",
            "on_soft_reset",
        ] {
            let Some(setting) = config.get(key) else {
                continue;
            };
            let action = r.action(key, Action::Destroy)?;
            if !action.supported_by_keel() {
                r.warn(
                    setting,
                    format!("{key} = \"{action}\" is not carried out by Keel yet"),
                );
            }
        }
        let disks = r.disks()?;
        let vifs = r.vifs()?;
        for setting in config.settings() {
            if !KEYS.contains(&setting.key.as_str()) {
                r.warn(
                    setting,
                    format!("`{}' is not used by Keel, ignored", setting.key),
                );
            }
        }
        Ok(DomainConfig {
            name,
            uuid,
            kernel,
            ramdisk,
            cmdline,
            memory_mib,
            maxmem_mib,
            vcpus,
            max_vcpus,
            on_poweroff,
            on_reboot,
            on_watchdog,
            on_crash,
            on_soft_reset,
            disks,
            vifs,
            warnings: r.warnings,
        })
    }

    /// What `keelctl create CFG KEY=VALUE...` needs: reads the file, applies the overrides in
    /// order, and types the result against `cwd`.
    pub fn load<S: AsRef<str>>(
        path: &Path,
        overrides: &[S],
        cwd: &Path,
    ) -> Result<DomainConfig, Diagnostic> {
        let mut config = Config::read(path)?;
        for arg in overrides {
            config.apply_override(arg.as_ref())?;
        }
        DomainConfig::from_config(&config, cwd)
    }
}

#[cfg(test)]
mod tests;
