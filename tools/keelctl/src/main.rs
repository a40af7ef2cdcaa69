//! `keelctl`: the control tool of the Keel hypervisor.
//!
//! Talks to the `keel` kernel module through `/dev/keel` and its debugfs files. It reports what
//! the module and the hardware offer and the hypervisor's exit counters, runs bare guest images
//! in domains of their own (`run`), and manages Xen PVH DomUs as `xl` does: `create` (from an
//! xl.cfg, through a keel-domd process per domain), `list`, `console`, `destroy`, `pause`,
//! `unpause`, `block-attach`, `block-detach`, `block-list`, `network-attach`,
//! `network-detach`, `network-list`, `vcpu-list`, `domid`, `domname`, `uptime`, and through
//! XenStore (keel-xenstored) `shutdown`, `reboot`, `mem-set`, `sysrq` and the `xenstore`
//! tools.
#![deny(missing_docs)]

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use shutdown::Request::{Poweroff, Reboot};

mod block;
mod boot;
mod console;
mod control;
mod create;
mod image;
mod info;
mod list;
mod memset;
mod network;
mod run;
mod shutdown;
mod stats;
mod sysrq;
mod units;
mod uptime;
mod vcpu_list;
mod xenstore;

/// Control the Keel hypervisor through /dev/keel.
#[derive(Parser, Debug)]
#[command(
    name = "keelctl",
    version,
    about,
    long_about = None,
    after_long_help = "Testing hook: with KEELCTL_NO_MODULE=1 in the environment, shutdown, \
        reboot, mem-set and sysrq take the domains from XenStore (/local/domain/<id>/name) \
        instead of the keel module, so that they can be tried without it; -F cannot destroy \
        then."
)]
struct Cli {
    /// The Keel device node.
    #[arg(long, global = true, default_value = keel_sys::DEVICE_PATH)]
    device: PathBuf,
    /// The XenStore daemon's socket (keel-xenstored), for xenstore, shutdown, reboot,
    /// mem-set and sysrq.
    #[arg(long, global = true, value_name = "PATH", default_value = keel_xenstored::DEFAULT_SOCKET)]
    xenstore_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the module's version and the virtualization features the hardware offers.
    ///
    /// Needs the keel module loaded and root (the device is mode 0600).
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show how often each CPU exited to the hypervisor, per exit kind.
    ///
    /// Reads the module's counters in debugfs (/sys/kernel/debug/keel/stats), so needs the
    /// keel module loaded, debugfs mounted and root.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list exit kinds that never happened.
        #[arg(long)]
        all: bool,
        /// Read the counters from this file instead.
        #[arg(long, default_value = stats::STATS_PATH)]
        file: PathBuf,
    },
    /// Run a bare guest image in a new domain and show every exit
    ///
    /// Creates a domain with one vCPU and --memory of RAM at guest-physical 0, loads IMAGE,
    /// starts the vCPU in --mode at the entry point, and prints one line per exit, e.g.
    /// `exit 3: io out port 0xe9 size 1 data 0x48 rip 0x100012`. The domain goes away when
    /// keelctl exits.
    ///
    /// IMAGE is an ELF executable or a flat binary. An ELF (recognized by its magic) has its
    /// PT_LOAD segments copied to their physical addresses (p_paddr) and starts at e_entry
    /// (moved from the virtual to the physical address when they differ); a 32-bit ELF starts
    /// in prot32, a 64-bit one in long64. A flat binary is copied to --load and starts at
    /// --entry, by default the load address, in prot32 unless --mode says otherwise.
    ///
    /// Modes:
    ///   real    16-bit real mode with CS = 0, like a boot sector: a flat image loads at and
    ///           starts from 0x7c00; SP starts at the top of RAM below 64 KiB.
    ///   prot32  32-bit protected mode without paging, Xen's PVH entry state: flat 4 GiB code
    ///           (selector 0x10) and data (0x18) segments from a GDT at 0x1000, a busy TSS,
    ///           ebx = 0 (no start info). A flat image loads at 0x100000.
    ///   long64  64-bit long mode (CS 0x08) on identity page tables at 0x2000 and up, with
    ///           2 MiB pages covering the RAM. A flat image loads at 0x100000.
    /// In every mode RFLAGS.IF is clear, there is no IDT (an exception shuts the guest down),
    /// ESP/RSP starts at the top of RAM and the other registers are zero. The image must fit
    /// in the RAM and stay clear of the GDT and page tables.
    ///
    /// Exits: port 0xe9 is the guest's debug console (its bytes are collected and printed as
    /// `console:` lines at the end); other OUTs are shown and ignored; IN reads all ones;
    /// hypercalls return -ENOSYS (-38). The run stops on HLT (success), a triple fault
    /// (shutdown), a memory fault (an access outside the RAM), an entry failure or unhandled
    /// exit, after --max-exits exits, or after --timeout seconds, and ends with a line
    /// `stopped: REASON after N exits`.
    ///
    /// Exit status: 0 when the guest halted; 1 otherwise (the reason is also printed on
    /// stderr), and for bad input or a failing /dev/keel; 2 for command-line errors.
    #[command(verbatim_doc_comment)]
    Run(run::RunArgs),
    /// List the live domains, as `xl list`.
    ///
    /// Columns: Name, ID, Mem (MiB of RAM in the domain's map), VCPUs (created), State,
    /// Time(s) (time its vCPUs spent in the guest). State is xl's six letters, '-' where
    /// not: r running (vCPUs inside the hypervisor's run loop, an idle one included), b
    /// blocked (no vCPU running: not started, or its process is not running it), p paused, s
    /// shut down and preserved, c crashed and preserved, d dying. s, c and d come from the
    /// domain's keel-domd; domains without one (`keelctl run`) list too. --json prints every
    /// field, the module's (vCPU ids, memory limit, ranges) included. Needs the keel module
    /// loaded and root.
    #[command(verbatim_doc_comment)]
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a Xen PVH domain from an xl.cfg file, as `xl create`.
    ///
    /// Reads CFG (xl.cfg syntax) with the KEY=VALUE overrides applied in order, as xl does:
    /// type must be "pvh"; kernel (a vmlinux ELF or a bzImage with a PVH entry), ramdisk,
    /// cmdline (or root and extra), memory, vcpus, name and on_poweroff/on_reboot/on_crash
    /// (destroy, restart, preserve) are used; keys Keel does not use are warned about; a bad
    /// value is refused naming its key. Then starts keel-domd (found next to keelctl, else in
    /// PATH; KEEL_DOMD overrides), the domain's own process: it builds the domain, runs it,
    /// logs its console to /var/log/keel/NAME.log and answers the other commands on
    /// /run/keel/NAME.sock. keelctl returns once the domain is built and prints
    /// `created domain NAME (id N)`, or the error and a non-zero status, with nothing left
    /// behind: a missing kernel, a file that is not a kernel, too much memory, vcpus = 0, a
    /// name already in use.
    #[command(verbatim_doc_comment)]
    Create(create::CreateArgs),
    /// Attach to a domain's console, as `xl console`.
    ///
    /// On a terminal: raw mode until you detach with Ctrl-] (the terminal is restored on
    /// every way out). Otherwise (pipe mode): stdin is sent to the guest until it ends, and
    /// the guest's output printed until the domain ends, a Ctrl-] byte in the input, or
    /// --timeout. Output from before the attach (the last 64 KiB) comes first. One client at
    /// a time: a new one takes the console over.
    #[command(verbatim_doc_comment)]
    Console {
        /// The domain's name or id.
        domain: String,
        /// Detach after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Destroy a domain at once, as `xl destroy`.
    ///
    /// Asks the domain's keel-domd to end it; if the process does not answer within 2
    /// seconds (it is wedged) or does not go away, kills it with SIGKILL, which ends the
    /// domain with it. Returns once the module no longer lists the domain.
    Destroy {
        /// The domain's name or id.
        domain: String,
    },
    /// Pause a domain's vCPUs, as `xl pause` (`unpause` resumes them).
    Pause {
        /// The domain's name or id.
        domain: String,
    },
    /// Resume a paused domain, as `xl unpause` (also starts a domain created with -p).
    Unpause {
        /// The domain's name or id.
        domain: String,
    },
    /// Ask a domain to power off, as `xl shutdown`.
    ///
    /// Writes "poweroff" to /local/domain/<id>/control/shutdown; the guest's Xen drivers
    /// clear the node when they take the request and power the guest off. The domain then
    /// goes away, restarts or stays shut down as its on_poweroff says. Refused when the guest
    /// advertises no PV control (no control/feature-poweroff, which Linux writes once its
    /// Xen drivers run): -F destroys it then.
    ///
    /// Without -w or -F, returns once the request is written. -w waits until the domain is
    /// gone from the domain list (or shut down and preserved), at most --timeout seconds. -F
    /// waits until the guest takes the request, and destroys the domain (as `keelctl
    /// destroy`) if it has not within --timeout. Needs XenStore (see --xenstore-socket), and
    /// the keel module and root.
    Shutdown(shutdown::PowerArgs),
    /// Ask a domain to restart, as `xl reboot`.
    ///
    /// Writes "reboot" to /local/domain/<id>/control/shutdown; the guest's Xen drivers
    /// clear the node when they take the request and reboot. Its keel-domd restarts the
    /// domain under a new id (or ends or keeps it, as its on_reboot says). Refused when the
    /// guest advertises no PV control (no control/feature-reboot): -F destroys it then.
    ///
    /// Without -w or -F, returns once the request is written. -w waits until a domain of the
    /// same name runs with a new id, or the domain is gone, at most --timeout seconds. -F
    /// waits until the guest takes the request, and destroys the domain if it has not within
    /// --timeout. Needs XenStore (see --xenstore-socket), and the keel module and root.
    Reboot(shutdown::PowerArgs),
    /// Set a domain's memory target, as `xl mem-set`.
    ///
    /// Writes SIZE, converted to KiB, to /local/domain/<id>/memory/target, which the guest's
    /// balloon driver follows, giving memory back or taking it again. SIZE is in MiB, or with
    /// one suffix letter: b bytes, k KiB, m MiB, g GiB, t TiB (512, 512m, 2g). Refused above
    /// the domain's memory/static-max (its maxmem), and for 0. Needs XenStore (see
    /// --xenstore-socket), and the keel module and root.
    #[command(name = "mem-set")]
    MemSet {
        /// The domain's name or id.
        #[arg(value_name = "NAME|ID")]
        domain: String,
        /// The new target: MiB, or with a suffix b, k, m, g, t.
        #[arg(value_name = "SIZE")]
        size: String,
    },
    /// Send a Magic SysRq key to a domain, as `xl sysrq`.
    ///
    /// Writes KEY to /local/domain/<id>/control/sysrq; the guest's Xen drivers clear the node
    /// when they take the key and run its action, whose output goes to the guest's console
    /// (`keelctl console`; h lists the keys). Waits at most --timeout seconds for the guest to
    /// take it and fails, saying so, when it does not (its Xen drivers not started yet, no
    /// CONFIG_MAGIC_SYSRQ, or paused: the key stays for it then). Needs XenStore (see
    /// --xenstore-socket), and the keel module and root.
    Sysrq(sysrq::SysrqArgs),
    /// Show how long domains have run, as `xl uptime`.
    ///
    /// Without NAME|ID, Domain-0 (the host's uptime) and every domain; a DomU's uptime counts
    /// from when its keel-domd built it (a restart starts it again), read from XenStore
    /// (/vm/<uuid>/start_time, as libxl writes it): "-" for a domain without (a bare
    /// `keelctl run` guest, or XenStore not running). -s prints one line a domain, as
    /// uptime(1) does.
    Uptime {
        /// One line a domain: "TIME up UPTIME, NAME (ID)".
        #[arg(short = 's', long = "short")]
        short: bool,
        /// The domains' names or ids (Domain-0 or 0 for Dom0).
        #[arg(value_name = "NAME|ID")]
        domains: Vec<String>,
    },
    /// List the vCPUs of domains, as `xl vcpu-list`.
    ///
    /// Each vCPU is a thread of its domain's keel-domd (vcpuN): CPU is the host CPU it last
    /// ran on, State r-- (running) or -b- (blocked: waiting, or the guest halted it) or --p
    /// (offline, as XenStore's cpu/N/availability says), Time(s) the
    /// thread's CPU time, Affinity the CPUs it may run on (soft affinity: all). A vCPU with
    /// no such thread (a `keelctl run` guest) shows - there. Without NAME|ID, every domain.
    #[command(name = "vcpu-list", verbatim_doc_comment)]
    VcpuList {
        /// The domains' names or ids.
        #[arg(value_name = "NAME|ID")]
        domains: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a domain's id, as `xl domid`.
    Domid {
        /// The domain's name (an id is printed back, once checked).
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Print a domain's name, as `xl domname`.
    Domname {
        /// The domain's id.
        #[arg(value_name = "ID")]
        id: u32,
    },
    /// Add a disk to a running domain, as `xl block-attach`.
    ///
    /// DISKSPEC is one disk in xl's syntax (xl-disk-configuration(5)), as in the `disk =`
    /// list of an xl.cfg: 'format=raw, vdev=xvdb, access=rw, target=/srv/b.img' or
    /// '/srv/b.img,raw,xvdb,rw'; several arguments are joined with commas into one spec, as
    /// xl does. Keel serves raw image files and block devices. The domain's keel-domd writes
    /// the disk's XenStore directories and starts its backend; the guest's blkfront finds it
    /// and connects. Refused, naming the disk, when the vdev is taken, the target cannot be
    /// opened, the format is not raw, or the domain has no XenStore. The disk joins the
    /// domain's config: a restart of the domain (on_reboot = "restart") keeps it, as xl's
    /// does.
    #[command(name = "block-attach", verbatim_doc_comment)]
    BlockAttach {
        /// The domain's name or id.
        #[arg(value_name = "NAME|ID")]
        domain: String,
        /// The disk, in xl's disk syntax.
        #[arg(value_name = "DISKSPEC", required = true, num_args = 1..)]
        spec: Vec<String>,
    },
    /// Remove a disk from a running domain, as `xl block-detach`.
    ///
    /// Asks the guest to release the disk as libxl does (the backend goes to state 5,
    /// Closing, with `online` = 0) and waits up to 10 s for it to let the disk go (its
    /// frontend Closed, 6); then stops the backend and removes both XenStore directories. A
    /// guest that does not release it in time (a hung one, or one without blkfront) keeps
    /// it: the command fails saying so; --force removes it without asking. Note that Linux's
    /// blkfront releases a disk even while it is mounted (its I/O then fails). The disk
    /// leaves the domain's config: a restart does not bring it back.
    #[command(name = "block-detach", verbatim_doc_comment)]
    BlockDetach {
        /// The domain's name or id.
        #[arg(value_name = "NAME|ID")]
        domain: String,
        /// The disk: its vdev (xvdb) or device number (51728), as block-list shows it.
        #[arg(value_name = "VDEV|DEVID")]
        vdev: String,
        /// Remove it at once, without waiting for the guest.
        #[arg(short, long)]
        force: bool,
    },
    /// List the disks of domains, as `xl block-list`.
    ///
    /// xl's columns: Vdev (the device number: 51712 is xvda), BE (the backend's domain),
    /// handle (the guest's domain id, as xl fills it), state (the guest's frontend: 1
    /// Initialising, 3 Initialised, 4 Connected, 5 Closing, 6 Closed), evt-ch and ring-ref
    /// (-1 before the guest connects, and with several rings, whose are under queue-N/),
    /// BE-path. --json adds the vdev name, the target, the backend's state, the frontend's
    /// directory and the number of rings.
    #[command(name = "block-list", verbatim_doc_comment)]
    BlockList {
        /// The domains' names or ids.
        #[arg(value_name = "NAME|ID", required = true, num_args = 1..)]
        domains: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a vif to a running domain, as `xl network-attach`.
    ///
    /// VIFSPEC is one vif in xl's syntax (xl-network-configuration(5)), as in the `vif =` list
    /// of an xl.cfg: 'bridge=xenbr0, mac=00:16:3e:00:00:01' or 'script=vif-route,
    /// ip=10.0.0.2'; several arguments are joined with commas into one spec, as xl does. The
    /// device id is the next free one unless devid= says. The domain's keel-domd makes its
    /// TAP device (bridged or routed), writes its XenStore directories and starts its
    /// backend; the guest's netfront finds it and connects. Refused, naming the vif, when its
    /// id is taken, its bridge does not exist or its mode is not served. The vif joins the
    /// domain's config: a restart of the domain keeps it, as xl's does.
    #[command(name = "network-attach", verbatim_doc_comment)]
    NetworkAttach {
        /// The domain's name or id.
        #[arg(value_name = "NAME|ID")]
        domain: String,
        /// The vif, in xl's vif syntax.
        #[arg(value_name = "VIFSPEC", required = true, num_args = 1..)]
        spec: Vec<String>,
    },
    /// Remove a vif from a running domain, as `xl network-detach`.
    ///
    /// Asks the guest to release it as libxl does (the backend Closing, `online` = 0) and
    /// waits up to 10 s for its frontend to close; then stops the backend (its TAP device and
    /// routes go) and removes both XenStore directories. --force removes it without asking.
    /// The vif leaves the domain's config.
    #[command(name = "network-detach", verbatim_doc_comment)]
    NetworkDetach {
        /// The domain's name or id.
        #[arg(value_name = "NAME|ID")]
        domain: String,
        /// The vif: its device id, or its MAC address, as network-list shows them.
        #[arg(value_name = "DEVID|MAC")]
        vif: String,
        /// Remove it at once, without waiting for the guest.
        #[arg(short, long)]
        force: bool,
    },
    /// List the vifs of domains, as `xl network-list`.
    ///
    /// xl's columns: Idx (the device id), BE (the backend's domain), Mac Addr., handle (the
    /// guest's domain id), state (the guest's frontend: 1 Initialising .. 4 Connected, 5
    /// Closing, 6 Closed), evt-ch and tx-/rx-ring-ref (-1 before the guest connects),
    /// BE-path. --json adds the backend's state, the TAP device and how it is connected.
    #[command(name = "network-list", verbatim_doc_comment)]
    NetworkList {
        /// The domains' names or ids.
        #[arg(value_name = "NAME|ID", required = true, num_args = 1..)]
        domains: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Read and change XenStore, as Xen's xenstore-* tools.
    ///
    /// Talks to keel-xenstored (--xenstore-socket, default /run/keel/xenstored.sock) as Dom0:
    /// every node is readable and writable. Paths are absolute (/local/domain/3/name).
    Xenstore {
        #[command(subcommand)]
        command: xenstore::XsCommand,
    },
}

fn run(cli: Cli) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info { json } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let info = info::Info::new(&dev.version()?, &dev.caps()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", info.human());
            }
        }
        Command::Stats { json, all, file } => {
            let stats = stats::Stats::read(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", stats.human(all));
            }
        }
        Command::Run(args) => return run::run(args, &cli.device),
        Command::List { json } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let domains = dev.list_domains()?;
            let dirs = keel_domd::files::Dirs::from_env();
            dirs.clean_stale();
            let rows = list::rows(&domains, |d| control::domd_status(&dirs, d));
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", list::human(&rows));
            }
        }
        Command::Create(args) => {
            let (name, domid) = create::create(&args, &cli.device)?;
            println!("created domain {name} (id {domid})");
            if args.console {
                let dirs = keel_domd::files::Dirs::from_env();
                console::attach(&name, &dirs.socket(&name), None)?;
            }
        }
        Command::Console { domain, timeout } => {
            let timeout = match timeout {
                Some(t) if !(t.is_finite() && t > 0.0) => {
                    return Err(
                        format!("--timeout {t}: must be a positive number of seconds").into(),
                    )
                }
                t => t.map(std::time::Duration::from_secs_f64),
            };
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let dirs = keel_domd::files::Dirs::from_env();
            let (name, socket) = control::console_socket(&dev, &dirs, &domain)?;
            drop(dev);
            console::attach(&name, &socket, timeout)?;
        }
        Command::Destroy { domain } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            control::destroy(&dev, &keel_domd::files::Dirs::from_env(), &domain)?;
        }
        Command::Pause { domain } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            control::pause(&dev, &keel_domd::files::Dirs::from_env(), &domain, true)?;
        }
        Command::Unpause { domain } => {
            let pause = false;
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            control::pause(&dev, &keel_domd::files::Dirs::from_env(), &domain, pause)?;
        }
        Command::BlockAttach { domain, spec } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            block::attach(&dev, &keel_domd::files::Dirs::from_env(), &domain, &spec)?;
        }
        Command::BlockDetach {
            domain,
            vdev,
            force,
        } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            block::detach(
                &dev,
                &keel_domd::files::Dirs::from_env(),
                &domain,
                &vdev,
                force,
            )?;
        }
        Command::NetworkAttach { domain, spec } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            network::attach(&dev, &keel_domd::files::Dirs::from_env(), &domain, &spec)?;
        }
        Command::NetworkDetach { domain, vif, force } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let dirs = keel_domd::files::Dirs::from_env();
            network::detach(&dev, &dirs, &domain, &vif, force)?;
        }
        Command::NetworkList { domains, json } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let dirs = keel_domd::files::Dirs::from_env();
            // As xl: a domain that cannot be listed is reported and the others still are.
            let mut nics = Vec::new();
            let mut failed = false;
            for d in &domains {
                match network::list(&dev, &dirs, d) {
                    Ok(mut l) => nics.append(&mut l),
                    Err(e) => {
                        eprintln!("keelctl: {e}");
                        failed = true;
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&nics)?);
            } else {
                print!("{}", network::human(&nics));
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::BlockList { domains, json } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let dirs = keel_domd::files::Dirs::from_env();
            // As xl: a domain that cannot be listed is reported and the others still are.
            let mut disks = Vec::new();
            let mut failed = false;
            for d in &domains {
                match block::list(&dev, &dirs, d) {
                    Ok(mut l) => disks.append(&mut l),
                    Err(e) => {
                        eprintln!("keelctl: {e}");
                        failed = true;
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&disks)?);
            } else {
                print!("{}", block::human(&disks));
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Shutdown(args) => power(&cli.device, &cli.xenstore_socket, &args, Poweroff)?,
        Command::Reboot(args) => power(&cli.device, &cli.xenstore_socket, &args, Reboot)?,
        Command::MemSet { domain, size } => {
            memset::parse_kib(&size)?;
            let domains = control::Domains::open(&cli.device)?;
            let mut xs = xenstore::connect(&cli.xenstore_socket)?;
            memset::run(&domains, &mut xs, &domain, &size)?;
        }
        Command::Sysrq(args) => {
            sysrq::parse_key(&args.key)?;
            shutdown::timeout(args.timeout)?;
            let domains = control::Domains::open(&cli.device)?;
            let mut xs = xenstore::connect(&cli.xenstore_socket)?;
            sysrq::run(&domains, &mut xs, &args)?;
        }
        Command::Uptime { short, domains } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let all = dev.list_domains()?;
            // No XenStore: no DomU has a start time, which the table shows as "-".
            let mut xs = xenstore::connect(&cli.xenstore_socket).ok();
            let rows = uptime::rows(&all, &domains, xs.as_mut())?;
            if short {
                print!("{}", uptime::short(&rows, &uptime::time_of_day()));
            } else {
                print!("{}", uptime::human(&rows));
            }
        }
        Command::VcpuList { domains, json } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let all = dev.list_domains()?;
            let picked = if domains.is_empty() {
                all.iter().collect()
            } else {
                domains
                    .iter()
                    .map(|n| control::resolve(&all, n))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let dirs = keel_domd::files::Dirs::from_env();
            // Without XenStore every vCPU counts as given to the guest.
            let mut xs = xenstore::connect(&cli.xenstore_socket).ok();
            let offline = |domid: u32, vcpu: u32| {
                let path = format!("/local/domain/{domid}/cpu/{vcpu}/availability");
                xs.as_mut().is_some_and(|xs| {
                    xs.read_string(keel_xenstored::client::TxId::NONE, &path)
                        .is_ok_and(|v| v == "offline")
                })
            };
            let rows = vcpu_list::rows(
                &picked,
                |d| control::domd_of(&dirs, d).map(|s| s.pid),
                offline,
                Path::new("/proc"),
                vcpu_list::ticks_per_second(),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", vcpu_list::human(&rows));
            }
        }
        Command::Domid { name } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let d = control::find(&dev, &name)?;
            println!("{}", d.domid);
        }
        Command::Domname { id } => {
            let dev = keel_sys::KeelDev::open(&cli.device)?;
            let d = control::find(&dev, &id.to_string())?;
            println!("{}", d.name);
        }
        Command::Xenstore { command } => xenstore::run(&command, &cli.xenstore_socket)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `keelctl shutdown` / `reboot`.
fn power(
    device: &Path,
    socket: &Path,
    args: &shutdown::PowerArgs,
    request: shutdown::Request,
) -> Result<(), Box<dyn std::error::Error>> {
    shutdown::timeout(args.timeout)?;
    let domains = control::Domains::open(device)?;
    let mut xs = xenstore::connect(socket)?;
    let dirs = keel_domd::files::Dirs::from_env();
    Ok(shutdown::run(&domains, &mut xs, &dirs, args, request)?)
}

/// An error as keelctl words it: keel-sys's errors about opening the device say what to do
/// about them with keelctl; every other error says what its `Display` says.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    use keel_sys::{uapi, Error};
    match e.downcast_ref::<Error>() {
        Some(Error::NotLoaded { path }) => format!(
            "{path} does not exist: the keel module is not loaded (load it with `insmod keel.ko`)"
        ),
        Some(Error::Permission { path }) => format!(
            "permission denied opening {path}: it is root-only (mode 0600); run keelctl as root"
        ),
        Some(Error::AbiMismatch { module }) => format!(
            "the keel module speaks interface version {module}, this keelctl speaks {}: use the \
             keelctl built with the module",
            uapi::KEEL_ABI_VERSION
        ),
        _ => e.to_string(),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keelctl: {}", error_text(&*e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn network_verbs_parse_as_xls() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        let Ok(Command::NetworkDetach { domain, vif, force }) = parse(&[
            "keelctl",
            "network-detach",
            "web",
            "00:16:3e:00:00:01",
            "-f",
        ]) else {
            panic!("network-detach did not parse");
        };
        assert_eq!(
            (domain.as_str(), vif.as_str(), force),
            ("web", "00:16:3e:00:00:01", true)
        );
        let Ok(Command::NetworkAttach { domain, spec }) = parse(&[
            "keelctl",
            "network-attach",
            "3",
            "bridge=br0",
            "mac=00:16:3e:00:00:02",
        ]) else {
            panic!("network-attach did not parse");
        };
        assert_eq!(domain, "3");
        assert_eq!(spec, ["bridge=br0", "mac=00:16:3e:00:00:02"]);
        assert!(parse(&["keelctl", "network-list", "--json", "a", "b"]).is_ok());
    }

    #[test]
    fn block_verbs_parse_as_xls() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.command);
        let Ok(Command::BlockDetach {
            domain,
            vdev,
            force,
        }) = parse(&["keelctl", "block-detach", "web", "xvdb", "--force"])
        else {
            panic!("block-detach did not parse");
        };
        assert_eq!(
            (domain.as_str(), vdev.as_str(), force),
            ("web", "xvdb", true)
        );
        let Ok(Command::BlockAttach { spec, .. }) =
            parse(&["keelctl", "block-attach", "3", "/srv/b.img,raw", "xvdb,rw"])
        else {
            panic!("block-attach did not parse");
        };
        assert_eq!(spec, ["/srv/b.img,raw", "xvdb,rw"]);
        let Ok(Command::BlockList { domains, json }) =
            parse(&["keelctl", "block-list", "--json", "a", "b"])
        else {
            panic!("block-list did not parse");
        };
        assert_eq!((domains.len(), json), (2, true));
        assert!(parse(&["keelctl", "block-attach", "web"]).is_err());
        assert!(parse(&["keelctl", "block-list"]).is_err());
    }

    #[test]
    fn device_errors_say_what_to_do() {
        let text = |e: keel_sys::Error| error_text(&e);
        assert_eq!(
            text(keel_sys::Error::NotLoaded {
                path: "/dev/keel".into()
            }),
            "/dev/keel does not exist: the keel module is not loaded (load it with `insmod \
             keel.ko`)"
        );
        assert_eq!(
            text(keel_sys::Error::Permission {
                path: "/dev/keel".into()
            }),
            "permission denied opening /dev/keel: it is root-only (mode 0600); run keelctl as root"
        );
        assert_eq!(
            text(keel_sys::Error::AbiMismatch { module: 1 }),
            format!(
                "the keel module speaks interface version 1, this keelctl speaks {}: use the \
                 keelctl built with the module",
                keel_sys::uapi::KEEL_ABI_VERSION
            )
        );
        let e = keel_sys::Error::Ioctl {
            name: "KEEL_GET_CAPS",
            error: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(
            error_text(&e),
            "KEEL_GET_CAPS failed: EINVAL (Invalid argument)"
        );
        let boxed: Box<dyn std::error::Error> = "cannot read the image x".into();
        assert_eq!(error_text(&*boxed), "cannot read the image x");
    }
}
