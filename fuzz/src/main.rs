//! `keel-fuzz`: host-side fuzz targets over the core crate's decoders and the Dom0 backends'
//! request handling, on stable Rust.
//!
//! Each target generates inputs from a seeded random generator (structure-aware where blind
//! bytes would never get past the first check: instructions from prefix, opcode, ModRM, SIB,
//! displacement and immediate pieces; page tables as trees with random corruption; plus plain
//! random bytes) and checks invariants of the decoder's result, not only that it does not
//! panic. Iteration `i` of target `t` draws from a generator seeded by (seed, `t`, `i`) alone,
//! so `--seed S --target T --iteration I` replays one input exactly, whatever ran before it.

mod blkif;
mod dhcp;
mod exit;
mod insn;
mod misc;
mod mmio;
mod netif;
mod paging;
mod state;
mod xenstore;

use std::panic;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator every target draws its input from.
pub type Rng = ChaCha8Rng;

/// What a target's check found wrong with the decoder's answer to one input.
pub type Finding = String;

/// One fuzz target: a name for `--target` and a function that generates one input and checks
/// the decoder on it.
struct Target {
    name: &'static str,
    what: &'static str,
    run: fn(&mut Rng) -> Result<(), Finding>,
}

const TARGETS: &[Target] = &[
    Target {
        name: "insn",
        what: "insn::decode: length 1..=15 within the bytes, prefixes of it truncated, \
               the result fixed by the bytes it consumed, agreement with iced-x86",
        run: insn::run,
    },
    Target {
        name: "mmio",
        what: "mmio::decode agrees with insn::decode; sizes, registers and immediates; \
               write_data and complete_read against a byte-wise model; store/load round trip",
        run: mmio::run,
    },
    Target {
        name: "exit",
        what: "Exit::from_vmx / from_svm: total, kind() as the SDM/APM tables say, only the \
               fields a reason needs read, payloads in their documented ranges",
        run: exit::run,
    },
    Target {
        name: "paging",
        what: "paging::walk / translate / read_linear_in over corrupted page-table trees: a \
               reference walk's result and exactly its table reads",
        run: paging::run,
    },
    Target {
        name: "guest-values",
        what: "what Dom0 passes in registers: hypercall::Call::decode (RAX), cpuid::dom0 \
               (leaf), xcr::xsetbv_valid (ECX, EDX:EAX)",
        run: misc::run_guest_values,
    },
    Target {
        name: "state",
        what: "state::mov_cr0/mov_cr3/mov_cr4/wrmsr_efer keep every accepted state valid; \
               vmcb::hardware_efer never gives the VMCB LME without PG and PAE",
        run: state::run,
    },
    Target {
        name: "blkif",
        what: "keel_backends::blk::Queue against hostile rings, grants and indexes: no panic or \
               hang, each request answered once with its op, OKAY only through granted pages, \
               nothing written to a read-only disk or past the disk's end",
        run: blkif::run,
    },
    Target {
        name: "netif",
        what: "keel_backends::net::NetQueue against hostile tx/rx slots, grants, indexes and \
               host frames: no panic or hang, copies only within a request's slot, each tx \
               request answered once with its id, OKAY exactly for packets sent with the \
               guest's bytes, rx frames in order in their requests' pages, flags and GSO \
               slots as their headers say, broken indexes refused",
        run: netif::run,
    },
    Target {
        name: "dhcp",
        what: "keel_backends::dhcp::answer to what a guest sends a NAT vif's DHCP server: \
               no panic, replies well-formed and echoing the request, only the lease's \
               address offered, OFFER/ACK/NAK/silence as RFC 2131 says",
        run: dhcp::run,
    },
    Target {
        name: "logring",
        what: "logring::LogRing: arbitrary messages come back in order, truncated at a \
               character boundary, drops counted",
        run: misc::run_logring,
    },
    Target {
        name: "xenstore",
        what: "keel_xenstored::XenStore over Dom0, DomU and handshake streams: output \
               well-formed, no DomU sees another's private value, node quotas kept, tree \
               consistent",
        run: xenstore::run,
    },
];

/// Command-line options.
#[derive(Parser)]
#[command(
    name = "keel-fuzz",
    about = "Fuzz keel-core's decoders on the host (stable Rust, no libFuzzer)",
    long_about = "Fuzz keel-core's decoders on the host (stable Rust, no libFuzzer).\n\n\
        Runs each target for its share of --seconds or for --iterations inputs, whichever \
        ends first, and prints the seed, then per target the iterations and findings. A \
        finding prints the seed and iteration that replay it: \
        `keel-fuzz --target T --seed S --iteration I`. Iteration I of a target draws from \
        a generator seeded by (seed, target, I) only, so a run is deterministic for a seed \
        and iteration count. Exits 1 when anything was found.",
    after_help = "Targets:\n  insn          instruction lengths (insn.rs)\n  \
        mmio          MMIO instruction decoding (mmio.rs)\n  \
        exit          VMX and SVM exit decoding (exit.rs)\n  \
        paging        guest page walks (paging.rs)\n  \
        guest-values  hypercall numbers, CPUID leaves, XSETBV values\n  \
        logring       the root-mode log ring (logring.rs)\n  \
        blkif         the block backend's queue (keel-backends, blkif.rs)\n  \
        netif         the network backend's queue (keel-backends, netif.rs)\n  \
        dhcp          a NAT vif's DHCP server (keel-backends, dhcp.rs)\n  \
        xenstore      the XenStore daemon's connection logic (xenstore.rs)"
)]
struct Args {
    /// The target to run, or `all`.
    #[arg(long, default_value = "all", value_name = "NAME")]
    target: String,
    /// Time for the whole run, split evenly over the targets.
    #[arg(long, value_name = "N")]
    seconds: Option<f64>,
    /// Inputs per target (default 20000 when --seconds is not given).
    #[arg(long, value_name = "N")]
    iterations: Option<u64>,
    /// The run's seed (decimal or 0x-hex); derived from the time when not given.
    #[arg(long, value_name = "S", value_parser = parse_seed)]
    seed: Option<u64>,
    /// Run only this iteration of each selected target (to replay a finding).
    #[arg(long, value_name = "I")]
    iteration: Option<u64>,
    /// Findings printed per target (all are counted).
    #[arg(long, default_value_t = 5, value_name = "N")]
    show: u64,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("not a seed: {e}"))
}

/// SplitMix64's finalizer: spreads the bits of `x` (Steele et al., "Fast splittable
/// pseudorandom number generators").
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number for a target's name, so that adding a target changes no other target's inputs.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The generator of iteration `i` of target `name` in the run with `seed`.
fn rng_for(seed: u64, name: &str, i: u64) -> Rng {
    Rng::seed_from_u64(mix(seed ^ mix(name_hash(name) ^ mix(i))))
}

std::thread_local! {
    /// The message of the last panic on this thread, for a finding.
    static PANIC_MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Runs one iteration; a panic in the decoder is a finding too.
fn run_one(target: &Target, seed: u64, i: u64) -> Result<(), Finding> {
    let mut rng = rng_for(seed, target.name, i);
    match panic::catch_unwind(panic::AssertUnwindSafe(|| (target.run)(&mut rng))) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "panicked: {}",
            PANIC_MESSAGE.with(|m| m.borrow().clone())
        )),
    }
}

/// Per-target results.
struct Outcome {
    iterations: u64,
    findings: u64,
    elapsed: Duration,
}

fn run_target(target: &Target, seed: u64, args: &Args, budget: Option<Duration>) -> Outcome {
    let start = Instant::now();
    let (first, limit) = match args.iteration {
        Some(i) => (i, 1),
        None => (0, args.iterations.unwrap_or(u64::MAX)),
    };
    let mut out = Outcome {
        iterations: 0,
        findings: 0,
        elapsed: Duration::ZERO,
    };
    while out.iterations < limit {
        // Looking at the clock every 64 inputs keeps it out of the measurement.
        if out.iterations.is_multiple_of(64) && budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        let i = first + out.iterations;
        if let Err(finding) = run_one(target, seed, i) {
            out.findings += 1;
            if out.findings <= args.show {
                println!(
                    "FINDING {} seed {seed:#x} iteration {i}: {finding}\n  replay: keel-fuzz --target {} --seed {seed:#x} --iteration {i}",
                    target.name, target.name
                );
            }
        }
        out.iterations += 1;
    }
    out.elapsed = start.elapsed();
    out
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let selected: Vec<&Target> = if args.target == "all" {
        TARGETS.iter().collect()
    } else {
        match TARGETS.iter().find(|t| t.name == args.target) {
            Some(t) => vec![t],
            None => {
                let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                eprintln!(
                    "keel-fuzz: no target '{}' (targets: all, {})",
                    args.target,
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
        }
    };
    if args.seconds.is_none() && args.iterations.is_none() {
        args.iterations = Some(20_000);
    }
    let seed = args.seed.unwrap_or_else(|| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        mix(now.as_secs() ^ u64::from(now.subsec_nanos()) << 32)
    });
    let budget = args
        .seconds
        .map(|s| Duration::from_secs_f64(s.max(0.0) / selected.len() as f64));
    panic::set_hook(Box::new(|info| {
        PANIC_MESSAGE.with(|m| *m.borrow_mut() = info.to_string());
    }));

    println!("keel-fuzz: seed {seed:#x} (replay with --seed {seed:#x})");
    let (mut total, mut findings) = (0, 0);
    for target in selected {
        let out = run_target(target, seed, &args, budget);
        let rate = out.iterations as f64 / out.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:<13} {:>9} iterations in {:>6.2} s ({:>8.0}/s), {} findings  ({})",
            target.name,
            out.iterations,
            out.elapsed.as_secs_f64(),
            rate,
            out.findings,
            target.what
        );
        total += out.iterations;
        findings += out.findings;
    }
    println!("keel-fuzz: {total} iterations, {findings} findings, seed {seed:#x}");
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng as _;

    #[test]
    fn an_iteration_depends_only_on_seed_target_and_index() {
        let draw = |seed, name, i| rng_for(seed, name, i).random::<u64>();
        assert_eq!(draw(7, "insn", 3), draw(7, "insn", 3));
        assert_ne!(draw(7, "insn", 3), draw(7, "insn", 4));
        assert_ne!(draw(7, "insn", 3), draw(7, "mmio", 3));
        assert_ne!(draw(7, "insn", 3), draw(8, "insn", 3));
    }

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("0x1f"), Ok(31));
        assert_eq!(parse_seed("31"), Ok(31));
        assert!(parse_seed("x").is_err());
    }

    #[test]
    fn every_target_passes_a_few_iterations() {
        for t in TARGETS {
            for i in 0..200 {
                assert_eq!(run_one(t, 1, i), Ok(()), "{} iteration {i}", t.name);
            }
        }
    }
}
