//! `vif = [ 'VIFSPEC', ... ]`: one network interface spec, read as xl reads it (Xen's
//! docs/man/xl-network-configuration.5.pod.in, tools/xl/xl_parse.c `parse_nic_config`,
//! tools/libs/util/libxlu_vif.c for `rate=`), with libxl's defaults (libxl_nic.c).
//!
//! A spec is `key=value` parameters and flags separated by commas; empty items are skipped
//! and leading spaces dropped, as xl's `strtok` loop does; a key given twice takes the later
//! value. xl prints a message and carries on for an unknown parameter (so does Keel, as a
//! warning) and for a malformed MAC address (which Keel refuses: carrying on leaves a MAC
//! half parsed).

use std::fmt;
use std::path::PathBuf;

use crate::XEN_SCRIPT_DIR;

/// The bridge a vif joins when `bridge=` is absent (libxl's default).
pub const DEFAULT_BRIDGE: &str = "xenbr0";

/// The replenishment interval when `rate=` gives none: 50 ms.
pub const DEFAULT_RATE_INTERVAL_USECS: u32 = 50_000;

/// A MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Six groups of one or two hex digits separated by `:` (or `-`).
    pub fn parse(text: &str) -> Result<Mac, String> {
        let bad = || format!("invalid mac address `{text}' (six hex bytes: 00:16:3e:xx:xx:xx)");
        let groups: Vec<&str> = text.split([':', '-']).collect();
        if groups.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0; 6];
        for (byte, group) in mac.iter_mut().zip(groups) {
            if group.is_empty() || group.len() > 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What the hotplug script does, from its name: Keel's backends implement Xen's three
/// modes themselves rather than running the scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VifScript {
    /// `vif-bridge` (the default): the vif joins a bridge.
    Bridge,
    /// `vif-route`: routed through Dom0.
    Route,
    /// `vif-nat`: NAT through Dom0.
    Nat,
    /// Another script, by its path (names without a leading `/` are in
    /// [`XEN_SCRIPT_DIR`]).
    Other(PathBuf),
}

impl VifScript {
    /// The mode a `script=` value names: `vif-bridge`, `vif-route` and `vif-nat` by name
    /// or as the last component of a path.
    pub fn from_script(script: &str) -> VifScript {
        let name = script.rsplit('/').next().unwrap_or(script);
        match name {
            "vif-bridge" => VifScript::Bridge,
            "vif-route" => VifScript::Route,
            "vif-nat" => VifScript::Nat,
            _ if script.starts_with('/') => VifScript::Other(PathBuf::from(script)),
            _ => VifScript::Other(PathBuf::from(XEN_SCRIPT_DIR).join(script)),
        }
    }
}

/// Whether the device is PV only or also emulated (`type=`; meaningful for HVM only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VifType {
    /// `vif`: paravirtualised only.
    Vif,
    /// `ioemu`: emulated as well (HVM).
    Ioemu,
}

/// A transmit rate limit: `bytes_per_interval` bytes of credit every `interval_usecs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Credit per interval, in bytes.
    pub bytes_per_interval: u64,
    /// The replenishment interval, in microseconds.
    pub interval_usecs: u32,
}

impl Rate {
    /// Parses xl's `RATE/s[@INTERVAL]`: `RATE` is decimal with an optional `K`, `M` or
    /// `G` (powers of 1000) and `B` for bytes or `b` for bits; `INTERVAL` is decimal with
    /// `s` (the default), `ms` or `us` (a bare `m` or `u` also works, as in xl). A leading
    /// zero is refused: xl reads it as octal.
    pub fn parse(text: &str) -> Result<Rate, String> {
        let (rate, interval) = match text.split_once('@') {
            Some((r, i)) => (r, Some(i)),
            None => (text, None),
        };
        if rate.is_empty() {
            return Err(format!("no rate specified in `{text}'"));
        }
        let bytes_per_sec = rate_bytes_per_sec(rate)?;
        let interval_usecs = match interval {
            Some(i) => interval_usecs(i)?,
            None => DEFAULT_RATE_INTERVAL_USECS,
        };
        let bytes_per_interval = u128::from(bytes_per_sec) * u128::from(interval_usecs) / 1_000_000;
        if bytes_per_interval == 0 {
            return Err(format!(
                "rate `{text}' is less than one byte per interval: raise the rate or the \
                 interval"
            ));
        }
        Ok(Rate {
            bytes_per_interval: u64::try_from(bytes_per_interval)
                .map_err(|_| format!("rate overflow in `{text}'"))?,
            interval_usecs,
        })
    }
}

/// Splits `text` into its leading decimal digits (no leading zero) and the rest.
fn leading_decimal<'a>(text: &'a str, what: &str) -> Result<(u64, &'a str), String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("invalid {what} `{text}'"));
    }
    if text.starts_with('0') && digits > 1 {
        return Err(format!(
            "invalid {what} `{text}' (a leading zero means octal to xl)"
        ));
    }
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{what} overflow in `{text}'"))?;
    if n == 0 || n > u64::from(u32::MAX) {
        return Err(format!("{what} overflow in `{text}'"));
    }
    Ok((n, &text[digits..]))
}

fn rate_bytes_per_sec(text: &str) -> Result<u64, String> {
    let (n, unit) = leading_decimal(text, "rate")?;
    let (scale, unit) = match unit.as_bytes().first() {
        Some(b'G') => (1_000_000_000, &unit[1..]),
        Some(b'M') => (1_000_000, &unit[1..]),
        Some(b'K') => (1_000, &unit[1..]),
        _ => (1, unit),
    };
    let bits = match unit {
        "B/s" => false,
        "b/s" => true,
        _ => return Err(format!("invalid rate `{text}'")),
    };
    let bytes = n * scale;
    Ok(if bits { bytes / 8 } else { bytes })
}

fn interval_usecs(text: &str) -> Result<u32, String> {
    let what = "replenishment interval";
    let (n, unit) = leading_decimal(text, what)?;
    let scale = match unit {
        "" | "s" => 1_000_000,
        "m" | "ms" => 1_000,
        "u" | "us" => 1,
        _ => return Err(format!("invalid {what} `{text}'")),
    };
    u32::try_from(n * scale).map_err(|_| format!("{what} overflow in `{text}'"))
}

/// One parsed vif spec, with libxl's defaults filled in where Keel needs a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vif {
    /// The device id: its index in the list unless `devid=` says otherwise.
    pub devid: u32,
    /// `mac=`; generated in Xen's OUI 00:16:3e when absent.
    pub mac: Option<Mac>,
    /// `bridge=`; [`DEFAULT_BRIDGE`] when absent.
    pub bridge: String,
    /// `ip=`, for the script (routes, anti-spoofing rules), as written.
    pub ip: Option<String>,
    /// `script=` as a mode; [`VifScript::Bridge`] when absent.
    pub script: VifScript,
    /// `vifname=`: the backend interface's name; `vifDOMID.DEVID` when absent.
    pub vifname: Option<String>,
    /// `mtu=`; the bridge's (or 1500) when absent or 0.
    pub mtu: Option<u32>,
    /// `rate=`; unlimited when absent.
    pub rate: Option<Rate>,
    /// `model=` (the emulated NIC of an HVM guest).
    pub model: Option<String>,
    /// `type=`.
    pub vif_type: Option<VifType>,
    /// `backend=`: the backend domain's name; Dom0 when absent.
    pub backend: Option<String>,
    /// `gatewaydev=` (or the deprecated `netdev=`): for vif-route and vif-nat.
    pub gatewaydev: Option<String>,
    /// `vlan=`, as written.
    pub vlan: Option<String>,
    /// `trusted` / `untrusted`.
    pub trusted: Option<bool>,
}

/// A vif spec's parameters that xl knows and Keel ignores: COLO's and `accel`.
fn ignored_parameter(key: &str) -> bool {
    key.starts_with("colo_") || key == "forwarddev" || key == "accel"
}

impl Vif {
    /// Parses the spec of the vif at index `devid` of the list. Unknown or ignored
    /// parameters are returned as warnings; malformed values are errors.
    pub fn parse(spec: &str, devid: u32) -> Result<(Vif, Vec<String>), String> {
        let mut vif = Vif {
            devid,
            mac: None,
            bridge: DEFAULT_BRIDGE.to_owned(),
            ip: None,
            script: VifScript::Bridge,
            vifname: None,
            mtu: None,
            rate: None,
            model: None,
            vif_type: None,
            backend: None,
            gatewaydev: None,
            vlan: None,
            trusted: None,
        };
        let mut warnings = Vec::new();
        for token in spec.split(',').filter(|t| !t.is_empty()) {
            let token = token.trim_start_matches(' ');
            let Some((key, value)) = token.split_once('=') else {
                match token {
                    "trusted" => vif.trusted = Some(true),
                    "untrusted" => vif.trusted = Some(false),
                    _ => warnings.push(format!("unrecognized vif parameter `{token}' ignored")),
                }
                continue;
            };
            let owned = || Some(value.to_owned());
            match key {
                "type" => {
                    vif.vif_type = Some(match value {
                        "vif" => VifType::Vif,
                        "ioemu" => VifType::Ioemu,
                        _ => return Err(format!("invalid vif type `{value}' (vif or ioemu)")),
                    })
                }
                "mac" => vif.mac = Some(Mac::parse(value)?),
                "bridge" => vif.bridge = value.to_owned(),
                "netdev" => {
                    warnings.push("the netdev parameter is deprecated, use gatewaydev".into());
                    vif.gatewaydev = owned();
                }
                "gatewaydev" => vif.gatewaydev = owned(),
                "ip" => vif.ip = owned(),
                "script" => vif.script = VifScript::from_script(value),
                "backend" => vif.backend = owned(),
                "vifname" => vif.vifname = owned(),
                "model" => vif.model = owned(),
                "rate" => vif.rate = Some(Rate::parse(value)?),
                "devid" => vif.devid = decimal(value, "devid")?,
                "mtu" => vif.mtu = Some(decimal(value, "mtu")?).filter(|&m| m != 0),
                "vlan" => vif.vlan = owned(),
                _ if ignored_parameter(key) => warnings.push(format!(
                    "vif parameter `{key}' is not supported by Keel, ignored"
                )),
                _ => warnings.push(format!("unrecognized vif parameter `{token}' ignored")),
            }
        }
        Ok((vif, warnings))
    }
}

/// A decimal number as xl's `parse_ulong` wants it, bounded to `u32`.
fn decimal(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("vif {what} `{text}' is not a number"));
    }
    text.parse()
        .map_err(|_| format!("vif {what} `{text}' is out of range"))
}

#[cfg(test)]
mod tests;
