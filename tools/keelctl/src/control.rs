//! Naming a domain (`NAME|ID`) and asking its keel-domd to destroy, pause or unpause it (and,
//! through [`find_domd`], anything else it serves).
use std::{
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use keel_domd::{
    files::{process_alive, Dirs, StateFile},
    proto::{self, Request},
};
use keel_sys::{DomainInfo, KeelDev};
use keel_xenstored::{
    client::{Client, Error as XsError, TxId},
    Errno,
};

use crate::list::Domd;

/// How long destroy waits for the process to answer before it kills it.
pub const DESTROY_GRACE: Duration = Duration::from_secs(2);

/// How long a request to a domain's process may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The domain `arg` names among `domains`: an id when it is all digits (domain names never
/// are, as in xl), a name otherwise.
pub fn resolve<'a>(domains: &'a [DomainInfo], arg: &str) -> Result<&'a DomainInfo, String> {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
        let id: u64 = arg
            .parse()
            .map_err(|_| format!("no domain with id {arg}"))?;
        domains
            .iter()
            .find(|d| u64::from(d.domid) == id)
            .ok_or_else(|| format!("no domain with id {arg}"))
    } else {
        domains
            .iter()
            .find(|d| d.name == arg)
            .ok_or_else(|| format!("no domain named '{arg}'"))
    }
}

/// The testing hook: with `KEELCTL_NO_MODULE=1` in the environment, the verbs that reach a
/// domain through XenStore (`shutdown`, `reboot`, `mem-set`, `sysrq`) learn the domains from
/// XenStore instead of the module (see [`Domains::XenStore`]), so that they can be tested on a
/// host without /dev/keel. Not meant for anything else: nothing then checks that a domain is real,
/// and `-F` cannot destroy one.
pub const NO_MODULE_ENV: &str = "KEELCTL_NO_MODULE";

/// Where the domain-control verbs learn which domains exist.
pub enum Domains {
    /// The module's list (`KEEL_LIST_DOMAINS`), as every other verb.
    Module(KeelDev),
    /// The testing hook ([`NO_MODULE_ENV`]): each `/local/domain/<domid>` with a `name` node
    /// (Dom0's excepted) is a domain of that name; one without is named by its id.
    XenStore,
}

impl Domains {
    /// The module's list, or XenStore's when the testing hook is on.
    pub fn open(device: &Path) -> Result<Self, keel_sys::Error> {
        if std::env::var_os(NO_MODULE_ENV).is_some_and(|v| v == "1") {
            Ok(Domains::XenStore)
        } else {
            KeelDev::open(device).map(Domains::Module)
        }
    }

    /// The live domains.
    pub fn list(&self, xs: &mut Client) -> Result<Vec<DomainInfo>, String> {
        match self {
            Domains::Module(dev) => dev.list_domains().map_err(|e| e.to_string()),
            Domains::XenStore => xenstore_domains(xs),
        }
    }

    /// The domain `arg` (`NAME|ID`) names, as [`resolve`] finds it.
    pub fn find(&self, xs: &mut Client, arg: &str) -> Result<DomainInfo, String> {
        resolve(&self.list(xs)?, arg).cloned()
    }
}

/// The domains XenStore knows, for [`Domains::XenStore`].
fn xenstore_domains(xs: &mut Client) -> Result<Vec<DomainInfo>, String> {
    let what = |e: XsError| crate::xenstore::op_error("list", "/local/domain", &e);
    let ids = match xs.directory(TxId::NONE, "/local/domain") {
        Ok(ids) => ids,
        Err(XsError::Xs(Errno::ENOENT)) => Vec::new(),
        Err(e) => return Err(what(e)),
    };
    let mut domains = Vec::new();
    for id in ids {
        let Ok(domid) = id.parse::<u32>() else {
            continue;
        };
        if domid == 0 {
            continue;
        }
        let name = xs
            .read_string(TxId::NONE, &format!("/local/domain/{id}/name"))
            .unwrap_or_else(|_| id.clone());
        domains.push(DomainInfo {
            domid,
            name,
            ..Default::default()
        });
    }
    Ok(domains)
}

/// The state file of the keel-domd serving `d`, if a live one does.
pub fn domd_of(dirs: &Dirs, d: &DomainInfo) -> Option<StateFile> {
    let s = StateFile::read(&dirs.state(&d.name)).ok()?;
    (s.domid == d.domid && process_alive(s.pid)).then_some(s)
}

/// What `d`'s keel-domd reports, for `list` (it gets a short time to answer).
pub fn domd_status(dirs: &Dirs, d: &DomainInfo) -> Option<Domd> {
    let s = domd_of(dirs, d)?;
    let state = proto::request(
        &dirs.socket(&d.name),
        &Request::Status,
        Duration::from_millis(300),
    )
    .ok()
    .and_then(|(r, _, _)| r.status)
    .map(|st| st.state);
    Some(Domd { pid: s.pid, state })
}

fn no_domd(d: &DomainInfo) -> String {
    format!(
        "domain {} (id {}) has no keel-domd: it belongs to the process that created it \
         (e.g. `keelctl run`); end that process instead",
        d.name, d.domid
    )
}

/// Looks `arg` up in the module's list.
pub fn find(dev: &KeelDev, arg: &str) -> Result<DomainInfo, String> {
    let domains = dev.list_domains().map_err(|e| e.to_string())?;
    resolve(&domains, arg).cloned()
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let end = Instant::now() + within;
    while process_alive(pid) {
        if Instant::now() >= end {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
    true
}

/// `keelctl destroy`: asks the domain's process to end it; kills the process when it does
/// not answer within [`DESTROY_GRACE`] or does not go away.
pub fn destroy(dev: &KeelDev, dirs: &Dirs, arg: &str) -> Result<(), String> {
    let (name, pid, domid) = match find(dev, arg) {
        Ok(d) => {
            let s = domd_of(dirs, &d).ok_or_else(|| no_domd(&d))?;
            (d.name, s.pid, d.domid)
        }
        // A domain its keel-domd is restarting has no domain in the module for a moment: the
        // process still answers for the name.
        Err(e) => match StateFile::read(&dirs.state(arg)) {
            Ok(s) if process_alive(s.pid) => (s.name, s.pid, s.domid),
            _ => return Err(e),
        },
    };
    let mut killed = false;
    let asked = proto::request(&dirs.socket(&name), &Request::Destroy, DESTROY_GRACE);
    let answered = matches!(&asked, Ok((r, _, _)) if r.ok);
    if !(answered && wait_gone(pid, DESTROY_GRACE)) && process_alive(pid) {
        // SAFETY: kill takes no pointers; the pid is a live keel-domd's (checked just above).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        if !wait_gone(pid, Duration::from_secs(5)) {
            return Err(format!(
                "keel-domd pid {pid} of domain {name} survived SIGKILL"
            ));
        }
        killed = true;
    }
    dirs.remove(&name);
    // Closing the process's fds destroys the domain (whichever incarnation it was at); the
    // module may take a moment.
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let domains = dev.list_domains().map_err(|e| e.to_string())?;
        let Some(left) = domains.iter().find(|x| x.name == name) else {
            if killed {
                // Its TAPs went with its fds; the NAT rules of its vifs are tables of their
                // own in nftables, which only the process removes when it ends normally.
                if let Ok(tables) = keel_backends::nat::remove_domain_tables(domid) {
                    for t in tables {
                        eprintln!(
                            "keelctl: removed nftables table {t} left by the killed keel-domd"
                        );
                    }
                }
            }
            return Ok(());
        };
        if Instant::now() >= end {
            return Err(format!(
                "domain {} (id {}) is still listed after its process ended",
                name, left.domid
            ));
        }
        sleep(Duration::from_millis(20));
    }
}

/// The name of the domain `arg` names, when a keel-domd serves it (its socket is
/// `dirs.socket(name)`).
pub fn find_domd(dev: &KeelDev, dirs: &Dirs, arg: &str) -> Result<String, String> {
    let d = find(dev, arg)?;
    domd_of(dirs, &d).ok_or_else(|| no_domd(&d))?;
    Ok(d.name)
}

/// `keelctl pause` / `unpause`.
pub fn pause(dev: &KeelDev, dirs: &Dirs, arg: &str, pause: bool) -> Result<(), String> {
    let name = find_domd(dev, dirs, arg)?;
    let req = if pause {
        Request::Pause
    } else {
        Request::Unpause
    };
    let (reply, _, _) = proto::request(&dirs.socket(&name), &req, REQUEST_TIMEOUT)
        .map_err(|e| format!("domain {name}: {e}"))?;
    if reply.ok {
        Ok(())
    } else {
        Err(reply.error.unwrap_or_else(|| "refused".into()))
    }
}

/// The socket of the domain `arg` names, for `console`.
pub fn console_socket(
    dev: &KeelDev,
    dirs: &Dirs,
    arg: &str,
) -> Result<(String, std::path::PathBuf), String> {
    let d = find(dev, arg)?;
    domd_of(dirs, &d).ok_or_else(|| no_domd(&d))?;
    Ok((d.name.clone(), dirs.socket(&d.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<DomainInfo> {
        vec![
            DomainInfo {
                domid: 1,
                name: "web".into(),
                ..Default::default()
            },
            DomainInfo {
                domid: 12,
                name: "db-2".into(),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn names_and_ids() {
        let d = domains();
        assert_eq!(resolve(&d, "web").unwrap().domid, 1);
        assert_eq!(resolve(&d, "12").unwrap().name, "db-2");
        assert_eq!(resolve(&d, "db-2").unwrap().domid, 12);
        assert_eq!(resolve(&d, "7").unwrap_err(), "no domain with id 7");
        assert_eq!(
            resolve(&d, "99999999999999999999999").unwrap_err(),
            "no domain with id 99999999999999999999999"
        );
        assert_eq!(resolve(&d, "mail").unwrap_err(), "no domain named 'mail'");
        assert_eq!(resolve(&d, "").unwrap_err(), "no domain named ''");
    }

    #[test]
    fn a_bare_domain_has_no_process() {
        let dirs = Dirs {
            run: std::env::temp_dir().join("keelctl-none"),
            log: std::env::temp_dir(),
        };
        let d = &domains()[0];
        assert!(domd_of(&dirs, d).is_none());
        assert!(domd_status(&dirs, d).is_none());
        assert!(no_domd(d).contains("has no keel-domd"));
    }
}
