//! `keel-domd`: the Dom0 process of one Keel Xen PVH domain. `keelctl create` starts it.
use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use keel_domd::{
    daemon::{Daemon, Options},
    files::Dirs,
};

/// The Dom0 process of one Keel Xen PVH domain (started by `keelctl create`).
///
/// Reads the xl.cfg CONFIG (with KEY=VALUE overrides, as `xl create`), builds the domain,
/// then prints `ok DOMID` on stdout and detaches (new session, output into the log), or
/// prints `error: MESSAGE` and exits with status 1, leaving nothing behind. Detached, it runs
/// the vCPUs, copies the console to /var/log/keel/NAME.log and to an attached client, applies
/// on_poweroff/on_reboot/on_crash, and serves `keelctl` on /run/keel/NAME.sock (state in
/// /run/keel/NAME.json). KEEL_RUN_DIR and KEEL_LOG_DIR move those directories. SIGTERM
/// destroys the domain.
#[derive(Parser, Debug)]
#[command(name = "keel-domd", version, verbatim_doc_comment)]
struct Args {
    /// The Keel device node.
    #[arg(long, default_value = keel_sys::DEVICE_PATH)]
    device: PathBuf,
    /// Leave the domain paused (`keelctl unpause` starts it).
    #[arg(short = 'p', long)]
    paused: bool,
    /// The xl.cfg file.
    config: PathBuf,
    /// KEY=VALUE settings that override the file's.
    overrides: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        device: args.device,
        config: args.config,
        overrides: args.overrides,
        paused: args.paused,
        dirs: Dirs::from_env(),
    };
    match Daemon::create(opts) {
        Ok(mut d) => {
            d.detach();
            d.run()
        }
        Err(e) => {
            println!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
