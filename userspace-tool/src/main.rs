//! `keelctl`: the control tool of the Keel hypervisor.
//!
//! Talks to the `keel` kernel module through `/dev/keel` and its debugfs files. Today it reports
//! what the module and the hardware offer and the hypervisor's exit counters; domains, consoles
//! and devices come with the domain interface.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod dev;
mod info;
mod stats;

/// Control the Keel hypervisor through /dev/keel.
#[derive(Parser, Debug)]
#[command(name = "keelctl", version, about, long_about = None)]
struct Cli {
    /// The Keel device node.
    #[arg(long, global = true, default_value = dev::DEVICE_PATH)]
    device: PathBuf,
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
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::Info { json } => {
            let dev = dev::KeelDev::open(&cli.device)?;
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
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelctl: {e}");
            ExitCode::FAILURE
        }
    }
}
