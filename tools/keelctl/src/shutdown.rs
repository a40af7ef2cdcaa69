//! `keelctl shutdown` and `reboot`: asking a DomU to power off or restart, as `xl shutdown`
//! and `xl reboot` do, by writing the request to its `control/shutdown` node (libxl's
//! `libxl__domain_pvcontrol_write`). The guest's Xen drivers watch the node, clear it in a
//! transaction when they take the request, and run poweroff or reboot (Linux's
//! drivers/xen/manage.c `shutdown_handler`); the domain then goes away, is restarted under a
//! new id, or stays shut down, as its on_poweroff / on_reboot says.
use std::{
    io::Write,
    thread::sleep,
    time::{Duration, Instant},
};

use clap::Args;
use keel_domd::{
    files::{process_alive, Dirs, StateFile},
    proto::RunState,
};
use keel_xenstored::{
    client::{Client, Error as XsError, TxId},
    Errno,
};

use crate::{
    control::{self, Domains, NO_MODULE_ENV},
    xenstore::op_error,
};

/// How often the wait looks again.
const POLL: Duration = Duration::from_millis(100);

/// `keelctl shutdown`'s and `reboot`'s arguments.
#[derive(Args, Debug)]
pub struct PowerArgs {
    /// Wait until the domain has shut down (shutdown) or come back under a new id (reboot).
    #[arg(short = 'w', long = "wait")]
    pub wait: bool,
    /// Destroy the domain instead when it advertises no PV control or does not take the
    /// request within --timeout.
    #[arg(short = 'F', long = "force")]
    pub force: bool,
    /// How long -w and -F wait, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub timeout: f64,
    /// The domain's name or id.
    #[arg(value_name = "NAME|ID")]
    pub domain: String,
}

/// What is asked of the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Power off (`xl shutdown`).
    Poweroff,
    /// Restart (`xl reboot`).
    Reboot,
}

impl Request {
    /// The word written to `control/shutdown`.
    pub fn word(self) -> &'static str {
        match self {
            Request::Poweroff => "poweroff",
            Request::Reboot => "reboot",
        }
    }

    /// The node by which the guest says it takes this request (Linux writes
    /// `control/feature-<word>` = "1" for each request it handles, once its Xen drivers run).
    fn feature(self) -> String {
        format!("feature-{}", self.word())
    }

    /// "shut down" / "reboot", for messages.
    fn verb(self) -> &'static str {
        match self {
            Request::Poweroff => "shut down",
            Request::Reboot => "reboot",
        }
    }

    /// "shutting down" / "rebooting".
    fn doing(self) -> &'static str {
        match self {
            Request::Poweroff => "shutting down",
            Request::Reboot => "rebooting",
        }
    }
}

/// What the domain list says of the domain's name while waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No domain has the name any more (nor a keel-domd restarting one under it).
    Gone,
    /// The domain shut down and is kept (on_poweroff / on_reboot = preserve).
    Preserved,
    /// A domain with the name runs, with this id.
    Listed(u32),
}

/// What the wait does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Look again later.
    Wait,
    /// Finished: say this.
    Done(String),
    /// Fall back to destroying the domain, for this reason.
    Destroy(String),
    /// Give up with this error.
    Fail(String),
}

/// The wait after a request: what it is for and how long it may take.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// The request made.
    pub request: Request,
    /// The domain's name.
    pub name: String,
    /// Its id when asked.
    pub domid: u32,
    /// -w: until the request is carried out, not only taken.
    pub wait: bool,
    /// -F: destroy when the request is not taken in time.
    pub force: bool,
    /// --timeout.
    pub timeout: Duration,
}

impl Waiting {
    fn label(&self) -> String {
        format!("domain {} (id {})", self.name, self.domid)
    }

    /// The next step, given what the domain list says (`seen`), whether the guest took the
    /// request (`acked`: `control/shutdown` cleared, or gone) and how long it has been.
    pub fn step(&self, seen: Seen, acked: bool, elapsed: Duration) -> Step {
        let label = self.label();
        let secs = self.timeout.as_secs_f64();
        match seen {
            Seen::Gone => Step::Done(match self.request {
                Request::Poweroff => format!("{label} has shut down"),
                Request::Reboot => format!(
                    "{label} shut down instead of restarting (its on_reboot is not restart)"
                ),
            }),
            Seen::Preserved => Step::Done(format!(
                "{label} has shut down and is preserved (`keelctl destroy` ends it)"
            )),
            Seen::Listed(id) if id != self.domid => Step::Done(match self.request {
                Request::Reboot => format!("{label} has rebooted, now id {id}"),
                Request::Poweroff => format!(
                    "{label} has shut down and restarted as id {id} (its on_poweroff is restart)"
                ),
            }),
            Seen::Listed(_) if acked && !self.wait => {
                Step::Done(format!("{label} took the {} request", self.request.word()))
            }
            Seen::Listed(_) if elapsed < self.timeout => Step::Wait,
            Seen::Listed(_) if !acked && self.force => Step::Destroy(format!(
                "{label} did not take the {} request within {secs} s",
                self.request.word()
            )),
            Seen::Listed(_) if !acked => Step::Fail(format!(
                "domain {} did not {} within {secs} s: it did not take the request \
                 (control/shutdown still says \"{}\"); -F destroys it then",
                self.name,
                self.request.verb(),
                self.request.word()
            )),
            Seen::Listed(_) => Step::Fail(format!(
                "domain {} did not {} within {secs} s (it took the request, but is still \
                 running)",
                self.name,
                self.request.verb()
            )),
        }
    }
}

/// Checks --timeout: a positive number of seconds.
pub fn timeout(secs: f64) -> Result<Duration, String> {
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!(
            "--timeout {secs}: must be a positive number of seconds"
        ))
    }
}

/// Whether the guest advertises PV control for `request`: the feature node exists and is
/// not "0".
fn pv_control(xs: &mut Client, home: &str, request: Request) -> Result<bool, String> {
    let path = format!("{home}/control/{}", request.feature());
    match xs.read(TxId::NONE, &path) {
        Ok(v) => Ok(v != b"0"),
        Err(XsError::Xs(Errno::ENOENT)) => Ok(false),
        Err(e) => Err(op_error("read", &path, &e)),
    }
}

/// Whether the guest took the request: `control/shutdown` is empty again, or gone with the
/// domain.
fn acked(xs: &mut Client, home: &str) -> Result<bool, String> {
    cleared(xs, &format!("{home}/control/shutdown"))
}

/// Whether a request node the guest empties when it takes the request (`control/shutdown`,
/// `control/sysrq`) is empty, or gone with the domain.
pub fn cleared(xs: &mut Client, path: &str) -> Result<bool, String> {
    match xs.read(TxId::NONE, path) {
        Ok(v) => Ok(v.is_empty()),
        Err(XsError::Xs(Errno::ENOENT)) => Ok(true),
        Err(e) => Err(op_error("read", path, &e)),
    }
}

/// What the domain list says of `name` (first known as `domid`, run by the keel-domd
/// `daemon`).
fn seen(
    domains: &Domains,
    xs: &mut Client,
    dirs: &Dirs,
    name: &str,
    domid: u32,
    daemon: Option<u32>,
) -> Result<Seen, String> {
    let list = domains.list(xs)?;
    let Some(d) = list.iter().find(|d| d.name == name) else {
        // A keel-domd restarting its domain has none in the module for a moment; one that
        // is exiting still holds the module until its files are closed, so the domain is
        // gone only with its process (then `rmmod keel` works at once).
        let restarting = matches!(
            (domains, StateFile::read(&dirs.state(name))),
            (Domains::Module(_), Ok(s)) if process_alive(s.pid)
        ) || daemon.is_some_and(process_alive);
        return Ok(if restarting {
            Seen::Listed(domid)
        } else {
            Seen::Gone
        });
    };
    let module = matches!(domains, Domains::Module(_));
    if module
        && d.domid == domid
        && control::domd_status(dirs, d).and_then(|s| s.state) == Some(RunState::Shutdown)
    {
        return Ok(Seen::Preserved);
    }
    Ok(Seen::Listed(d.domid))
}

/// Destroys the domain as `keelctl destroy` does, having said why.
fn destroy(
    domains: &Domains,
    dirs: &Dirs,
    name: &str,
    domid: u32,
    why: &str,
) -> Result<(), String> {
    println!("{why}: destroying it");
    match domains {
        Domains::Module(dev) => {
            control::destroy(dev, dirs, &domid.to_string())?;
            println!("destroyed domain {name} (id {domid})");
            Ok(())
        }
        Domains::XenStore => Err(format!(
            "cannot destroy domain {name} (id {domid}): {NO_MODULE_ENV}=1 (a testing hook) is \
             set, and without the keel module there is nothing to destroy it with"
        )),
    }
}

/// `keelctl shutdown` / `reboot`.
pub fn run(
    domains: &Domains,
    xs: &mut Client,
    dirs: &Dirs,
    args: &PowerArgs,
    request: Request,
) -> Result<(), String> {
    let limit = timeout(args.timeout)?;
    let d = domains.find(xs, &args.domain)?;
    let (name, domid) = (d.name.clone(), d.domid);
    let home = format!("/local/domain/{domid}");
    let label = format!("domain {name} (id {domid})");

    if !pv_control(xs, &home, request)? {
        let why = format!(
            "{label} advertises no PV control (no {home}/control/{}: its kernel has not \
             started its Xen drivers yet, or has none)",
            request.feature()
        );
        if args.force {
            return destroy(domains, dirs, &name, domid, &why);
        }
        return Err(format!(
            "{why}, so it cannot be asked to {}; -F destroys it instead",
            request.verb()
        ));
    }
    let daemon = match domains {
        Domains::Module(_) => StateFile::read(&dirs.state(&name))
            .ok()
            .filter(|s| s.domid == domid)
            .map(|s| s.pid),
        Domains::XenStore => None,
    };
    let path = format!("{home}/control/shutdown");
    xs.write(TxId::NONE, &path, request.word())
        .map_err(|e| op_error("write", &path, &e))?;
    println!("{} {label}", request.doing());
    if !args.wait && !args.force {
        return Ok(());
    }

    let waiting = Waiting {
        request,
        name: name.clone(),
        domid,
        wait: args.wait,
        force: args.force,
        timeout: limit,
    };
    if args.wait {
        println!("waiting for {label} to {}...", request.verb());
    } else {
        println!("waiting for {label} to take the request...");
    }
    let _ = std::io::stdout().flush();
    let start = Instant::now();
    loop {
        let seen = seen(domains, xs, dirs, &name, domid, daemon)?;
        let acked = acked(xs, &home)?;
        match waiting.step(seen, acked, start.elapsed()) {
            Step::Wait => sleep(POLL),
            Step::Done(text) => {
                println!("{text}");
                return Ok(());
            }
            Step::Destroy(why) => return destroy(domains, dirs, &name, domid, &why),
            Step::Fail(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(request: Request, wait: bool, force: bool) -> Waiting {
        Waiting {
            request,
            name: "web".into(),
            domid: 3,
            wait,
            force,
            timeout: Duration::from_secs(60),
        }
    }

    const EARLY: Duration = Duration::from_secs(1);
    const LATE: Duration = Duration::from_secs(60);

    #[test]
    fn shutdown_waits_until_the_domain_is_gone() {
        let w = waiting(Request::Poweroff, true, false);
        assert_eq!(w.step(Seen::Listed(3), false, EARLY), Step::Wait);
        assert_eq!(w.step(Seen::Listed(3), true, EARLY), Step::Wait);
        assert_eq!(
            w.step(Seen::Gone, true, EARLY),
            Step::Done("domain web (id 3) has shut down".into())
        );
        assert_eq!(
            w.step(Seen::Preserved, true, EARLY),
            Step::Done(
                "domain web (id 3) has shut down and is preserved (`keelctl destroy` ends it)"
                    .into()
            )
        );
        assert_eq!(
            w.step(Seen::Listed(3), true, LATE),
            Step::Fail(
                "domain web did not shut down within 60 s (it took the request, but is still \
                 running)"
                    .into()
            )
        );
        let Step::Fail(e) = w.step(Seen::Listed(3), false, LATE) else {
            panic!("a timeout fails");
        };
        assert!(e.starts_with("domain web did not shut down within 60 s: it did not take"));
        assert!(e.contains("-F destroys it"));
    }

    #[test]
    fn reboot_waits_for_a_new_id() {
        let w = waiting(Request::Reboot, true, false);
        assert_eq!(w.step(Seen::Listed(3), true, EARLY), Step::Wait);
        assert_eq!(
            w.step(Seen::Listed(4), true, EARLY),
            Step::Done("domain web (id 3) has rebooted, now id 4".into())
        );
        assert!(
            matches!(w.step(Seen::Gone, true, EARLY), Step::Done(t) if t.contains("instead of restarting"))
        );
        let Step::Fail(e) = w.step(Seen::Listed(3), true, LATE) else {
            panic!("a timeout fails");
        };
        assert!(e.starts_with("domain web did not reboot within 60 s"));
    }

    #[test]
    fn force_destroys_only_what_does_not_take_the_request() {
        let w = waiting(Request::Poweroff, false, true);
        assert_eq!(w.step(Seen::Listed(3), false, EARLY), Step::Wait);
        assert_eq!(
            w.step(Seen::Listed(3), true, EARLY),
            Step::Done("domain web (id 3) took the poweroff request".into())
        );
        assert_eq!(
            w.step(Seen::Listed(3), false, LATE),
            Step::Destroy("domain web (id 3) did not take the poweroff request within 60 s".into())
        );
        let both = waiting(Request::Poweroff, true, true);
        assert_eq!(both.step(Seen::Listed(3), true, EARLY), Step::Wait);
        assert!(matches!(
            both.step(Seen::Listed(3), true, LATE),
            Step::Fail(_)
        ));
        assert!(matches!(
            both.step(Seen::Listed(3), false, LATE),
            Step::Destroy(_)
        ));
    }

    #[test]
    fn timeouts_are_positive_seconds() {
        assert_eq!(timeout(60.0), Ok(Duration::from_secs(60)));
        assert_eq!(timeout(0.5), Ok(Duration::from_millis(500)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(timeout(bad)
                .unwrap_err()
                .contains("positive number of seconds"));
        }
    }
}
