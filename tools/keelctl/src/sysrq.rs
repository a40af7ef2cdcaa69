//! `keelctl sysrq`: a Magic SysRq key sent to a DomU, as `xl sysrq` sends it (libxl's
//! `libxl_send_sysrq`): the key is written to the domain's `control/sysrq` node. The guest's
//! Xen drivers watch the node; Linux (drivers/xen/manage.c `sysrq_handler`) reads the key,
//! writes the node empty again in the same transaction, and then runs the key's action
//! (`handle_sysrq`), whose words go to the guest's console. Unlike xl, keelctl waits (at most
//! --timeout) for the guest to take the key, so that a key nobody reads is not reported sent.
use std::{
    thread::sleep,
    time::{Duration, Instant},
};

use clap::Args;
use keel_xenstored::{
    client::{Client, Error as XsError, TxId},
    Errno,
};

use crate::{control::Domains, xenstore::op_error};

/// How often the wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// `keelctl sysrq`'s arguments.
#[derive(Args, Debug)]
pub struct SysrqArgs {
    /// How long to wait for the guest to take the key, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub timeout: f64,
    /// The domain's name or id.
    #[arg(value_name = "NAME|ID")]
    pub domain: String,
    /// The key: one printable character (Linux's keys: h help, s sync, u remount read-only,
    /// b reboot, o power off, c crash, t tasks, m memory, w blocked tasks, l CPUs' backtraces,
    /// 0-9 console log level).
    #[arg(value_name = "KEY")]
    pub key: String,
}

/// Checks KEY: exactly one printable ASCII character, not a space (what Linux's handler
/// reads as `%c`: a longer value would be cut to its first character, and a space or control
/// character is no SysRq key).
pub fn parse_key(text: &str) -> Result<char, String> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_graphic() => Ok(c),
        _ => Err(format!(
            "sysrq key '{}': must be one printable character, as in `keelctl sysrq web s` \
             (sync); `keelctl sysrq web h` makes the guest list its keys on its console",
            text.escape_default()
        )),
    }
}

/// `keelctl sysrq`.
pub fn run(domains: &Domains, xs: &mut Client, args: &SysrqArgs) -> Result<(), String> {
    let limit = crate::shutdown::timeout(args.timeout)?;
    let key = parse_key(&args.key)?;
    let d = domains.find(xs, &args.domain)?;
    let label = format!("domain {} (id {})", d.name, d.domid);
    let path = format!("/local/domain/{}/control/sysrq", d.domid);
    // The node is the toolstack's (keel-domd makes it, writable by the guest): a domain
    // without it has no XenStore home, e.g. a bare one of `keelctl run`.
    match xs.read(TxId::NONE, &path) {
        Ok(_) => {}
        Err(XsError::Xs(Errno::ENOENT)) => {
            return Err(format!(
                "{label} has no {path}: it is not a Xen domain with XenStore (a bare \
                 `keelctl run` guest has none)"
            ))
        }
        Err(e) => return Err(op_error("read", &path, &e)),
    }
    xs.write(TxId::NONE, &path, key.to_string())
        .map_err(|e| op_error("write", &path, &e))?;
    let start = Instant::now();
    // Linux empties the node before it runs the key; gone means the domain is.
    while !crate::shutdown::cleared(xs, &path)? {
        if start.elapsed() >= limit {
            return Err(format!(
                "{label} did not take sysrq '{key}' within {} s ({path} still says \"{key}\"): \
                 its kernel has not started its Xen drivers yet, has no Magic SysRq \
                 (CONFIG_MAGIC_SYSRQ), or is paused; the key stays there for it",
                limit.as_secs_f64()
            ));
        }
        sleep(POLL);
    }
    println!("sent sysrq '{key}' to {label}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_printable_character() {
        for k in ["h", "s", "0", "9", "b", "~"] {
            assert_eq!(parse_key(k), Ok(k.chars().next().unwrap()));
        }
        for bad in ["", "hs", " ", "\n", "\u{7f}", "é", "\u{1}"] {
            let e = parse_key(bad).expect_err(bad);
            assert!(e.starts_with("sysrq key '"), "{e}");
            assert!(e.contains("one printable character"), "{e}");
        }
        assert!(parse_key("\n").unwrap_err().starts_with("sysrq key '\\n'"));
    }
}
