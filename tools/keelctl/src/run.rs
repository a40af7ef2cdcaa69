//! `keelctl run`: runs a bare guest image in a new one-vCPU domain and reports every exit.
//!
//! The exit loop follows KVM's contract for a userspace VMM: each exit is handled here and
//! either resumes the guest (completing it first: the value an IN reads, a hypercall's result)
//! or ends the run with a [`Stop`]. Port 0xe9 is the guest's debug console, as in Bochs and
//! QEMU's `isa-debugcon`.
use std::{
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::Duration,
};

use keel_sys::{
    errno_name, uapi, DomainName, Error, GuestAddress, KeelDev, RangeKind, RunExit, Vcpu, VcpuExit,
};
use serde::{ser::SerializeMap, Serialize, Serializer};

use crate::{
    boot::{self, Mode},
    image::{LoadOptions, LoadPlan},
    units::{self, human_size},
};

/// The debug console port.
pub const DEBUGCON_PORT: u16 = 0xe9;
/// What keelctl answers a hypercall with: -ENOSYS, as Xen does for one it does not know.
pub const HYPERCALL_ENOSYS: i64 = -(libc::ENOSYS as i64);

/// The options of `keelctl run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The guest image: an ELF executable (by its magic) or a flat binary.
    pub image: PathBuf,
    /// The mode the vCPU starts in [default: from the ELF class (32-bit: prot32, 64-bit:
    /// long64); prot32 for a flat image].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// The first instruction's guest-physical address [default: the ELF's e_entry; a flat
    /// image's load address].
    #[arg(long, value_name = "ADDR", value_parser = units::parse_address)]
    pub entry: Option<u64>,
    /// Where a flat image goes in guest memory [default: 0x7c00 in real mode, else 0x100000].
    #[arg(long, value_name = "ADDR", value_parser = units::parse_address)]
    pub load: Option<u64>,
    /// The guest's RAM, from guest-physical 0: bytes, or with K, M or G (16M, 512K); a
    /// multiple of 4 KiB, at most 64G.
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = units::parse_memory_size)]
    pub memory: u64,
    /// The domain's name (1 to 31 printable ASCII characters) [default: the image's file name].
    #[arg(long, value_parser = |s: &str| DomainName::new(s))]
    pub name: Option<DomainName>,
    /// Stop after this many exits.
    #[arg(long, value_name = "N", default_value = "1000", value_parser = parse_max_exits)]
    pub max_exits: u64,
    /// Stop after this many seconds (fractions allowed), even when the guest never exits.
    #[arg(long, value_name = "SECONDS", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Print one JSON document at the end instead of lines as the guest runs.
    #[arg(long)]
    pub json: bool,
}

/// Parses `--max-exits`: a positive number.
pub fn parse_max_exits(text: &str) -> Result<u64, String> {
    match units::parse_number(text)? {
        0 => Err("the run needs at least 1 exit to show anything".into()),
        n => Ok(n),
    }
}

/// Parses `--timeout`: seconds, `2`, `0.5` or `2s`.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let secs: f64 = t
        .strip_suffix('s')
        .unwrap_or(t)
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err("the timeout must be more than 0 seconds".into());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{text}' is too long a timeout"))
}

/// One numbered exit, and the answer keelctl completed it with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitLine {
    /// 1 for the first exit.
    pub n: u64,
    /// The guest's RIP at the exit.
    pub rip: u64,
    /// What happened.
    pub exit: VcpuExit,
    /// What keelctl answered: the value an IN or MMIO read reads, a hypercall's result.
    pub answer: Option<u64>,
}

/// An exit's kind as the JSON report names it.
fn exit_kind(exit: &VcpuExit) -> &'static str {
    match exit {
        VcpuExit::Hlt => "hlt",
        VcpuExit::IoOut { .. } => "io_out",
        VcpuExit::IoIn { .. } => "io_in",
        VcpuExit::MmioRead { .. } => "mmio_read",
        VcpuExit::MmioWrite { .. } => "mmio_write",
        VcpuExit::Hypercall { .. } => "hypercall",
        VcpuExit::Shutdown { .. } => "shutdown",
        VcpuExit::MemoryFault { .. } => "memory_fault",
        VcpuExit::EntryFailure { .. } => "entry_failure",
        VcpuExit::Unhandled { .. } => "unhandled",
        VcpuExit::Interrupted => "interrupted",
        VcpuExit::Unknown(_) => "unknown",
    }
}

/// The fields of the exits that end a run, as both the exit lines and the stop reason name
/// them in JSON.
fn serialize_failure<M: SerializeMap>(map: &mut M, exit: &VcpuExit) -> Result<(), M::Error> {
    match *exit {
        VcpuExit::Shutdown { kind, reason } => {
            map.serialize_entry("shutdown_kind", &kind)?;
            map.serialize_entry("shutdown_reason", &reason)
        }
        VcpuExit::MemoryFault { gpa, access } => {
            map.serialize_entry("gpa", &gpa.0)?;
            map.serialize_entry("access", &access)
        }
        VcpuExit::EntryFailure {
            hw_reason,
            qualification,
        }
        | VcpuExit::Unhandled {
            hw_reason,
            qualification,
        } => {
            map.serialize_entry("hw_reason", &hw_reason)?;
            map.serialize_entry("qualification", &qualification)
        }
        _ => Ok(()),
    }
}

impl Serialize for ExitLine {
    /// `{"n": 1, "rip": 31746, "kind": "io_out", "port": 233, "size": 1, "data": 75}`: the
    /// number and RIP, the kind, then the kind's fields (values as the guest sees them).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("n", &self.n)?;
        map.serialize_entry("rip", &self.rip)?;
        map.serialize_entry("kind", exit_kind(&self.exit))?;
        let answer = self.answer.unwrap_or_default();
        match self.exit {
            VcpuExit::IoOut { port, size, data } => {
                map.serialize_entry("port", &port)?;
                map.serialize_entry("size", &size)?;
                map.serialize_entry("data", &(data & size_mask(size)))?;
            }
            VcpuExit::IoIn { port, size } => {
                map.serialize_entry("port", &port)?;
                map.serialize_entry("size", &size)?;
                map.serialize_entry("answer", &answer)?;
            }
            VcpuExit::MmioRead { gpa, size } => {
                map.serialize_entry("gpa", &gpa.0)?;
                map.serialize_entry("size", &size)?;
                map.serialize_entry("answer", &answer)?;
            }
            VcpuExit::MmioWrite { gpa, size, data } => {
                map.serialize_entry("gpa", &gpa.0)?;
                map.serialize_entry("size", &size)?;
                map.serialize_entry("data", &(data & size_mask(size)))?;
            }
            VcpuExit::Hypercall { nr, args, longmode } => {
                map.serialize_entry("nr", &nr)?;
                map.serialize_entry("args", &args)?;
                map.serialize_entry("longmode", &longmode)?;
                map.serialize_entry("ret", &(answer as i64))?;
            }
            VcpuExit::Unknown(reason) => map.serialize_entry("reason", &reason)?,
            ref other => serialize_failure(&mut map, other)?,
        }
        map.end()
    }
}

/// Why the run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Stop {
    /// The exit that ended it: HLT (the one good ending), a shutdown, a memory fault, an entry
    /// failure, an unhandled or an unknown exit.
    Exit(VcpuExit),
    /// `--max-exits` exits happened.
    MaxExits {
        /// The limit.
        limit: u64,
    },
    /// `--timeout` passed.
    Timeout {
        /// The limit in seconds.
        seconds: f64,
    },
    /// `KEEL_VCPU_RUN` itself failed.
    RunFailed {
        /// The error.
        error: String,
    },
}

impl Serialize for Stop {
    /// `{"reason": "memory_fault", "gpa": 1073741824, "access": 1}`: the reason, then its
    /// fields.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            Self::Exit(exit) => {
                let reason = match exit {
                    VcpuExit::Hlt => "halted",
                    VcpuExit::Unknown(_) => "unknown_exit",
                    other => exit_kind(other),
                };
                map.serialize_entry("reason", reason)?;
                if let VcpuExit::Unknown(reason) = exit {
                    map.serialize_entry("exit_reason", reason)?;
                }
                serialize_failure(&mut map, exit)?;
            }
            Self::MaxExits { limit } => {
                map.serialize_entry("reason", "max_exits")?;
                map.serialize_entry("limit", limit)?;
            }
            Self::Timeout { seconds } => {
                map.serialize_entry("reason", "timeout")?;
                map.serialize_entry("seconds", seconds)?;
            }
            Self::RunFailed { error } => {
                map.serialize_entry("reason", "run_failed")?;
                map.serialize_entry("error", error)?;
            }
        }
        map.end()
    }
}

impl Stop {
    /// The guest executed HLT.
    pub const HALTED: Self = Self::Exit(VcpuExit::Hlt);

    /// Whether the guest halted.
    pub fn halted(&self) -> bool {
        *self == Self::HALTED
    }

    /// Whether the guest itself failed (the registers are worth showing).
    fn failed_in_guest(&self) -> bool {
        matches!(
            self,
            Self::Exit(
                VcpuExit::Shutdown { .. }
                    | VcpuExit::MemoryFault { .. }
                    | VcpuExit::EntryFailure { .. }
                    | VcpuExit::Unhandled { .. }
            )
        )
    }

    /// The reason in words.
    pub fn describe(&self) -> String {
        match self {
            Self::Exit(VcpuExit::Hlt) => "halted".into(),
            Self::Exit(VcpuExit::Shutdown { kind, reason }) => {
                format!("shutdown ({})", shutdown_name(*kind, *reason))
            }
            Self::Exit(VcpuExit::MemoryFault { gpa, access }) => {
                format!("memory fault at {gpa} ({})", access_names(*access))
            }
            Self::Exit(VcpuExit::EntryFailure {
                hw_reason,
                qualification,
            }) => format!(
                "entry failure: the hardware refused the guest state (hw_reason {hw_reason:#x}, \
                 qualification {qualification:#x})"
            ),
            Self::Exit(VcpuExit::Unhandled {
                hw_reason,
                qualification,
            }) => format!(
                "unhandled exit (hw_reason {hw_reason:#x}, qualification {qualification:#x})"
            ),
            Self::Exit(VcpuExit::Unknown(reason)) => format!("unknown exit reason {reason}"),
            Self::Exit(other) => format!("{} exit", exit_kind(other)),
            Self::MaxExits { limit } => format!("max-exits limit of {limit} reached"),
            Self::Timeout { seconds } => format!("timeout of {seconds} s reached"),
            Self::RunFailed { error } => error.clone(),
        }
    }
}

fn shutdown_name(kind: u32, reason: u32) -> String {
    match kind {
        uapi::KEEL_SHUTDOWN_TRIPLE_FAULT => "triple fault".into(),
        uapi::KEEL_SHUTDOWN_XEN => match reason {
            uapi::KEEL_XEN_SHUTDOWN_POWEROFF => "poweroff".into(),
            uapi::KEEL_XEN_SHUTDOWN_REBOOT => "reboot".into(),
            uapi::KEEL_XEN_SHUTDOWN_SUSPEND => "suspend".into(),
            uapi::KEEL_XEN_SHUTDOWN_CRASH => "crash".into(),
            uapi::KEEL_XEN_SHUTDOWN_WATCHDOG => "watchdog".into(),
            uapi::KEEL_XEN_SHUTDOWN_SOFT_RESET => "soft reset".into(),
            r => format!("xen reason {r}"),
        },
        k => format!("kind {k}"),
    }
}

fn access_names(access: u32) -> String {
    let names: Vec<&str> = [
        (uapi::KEEL_ACCESS_READ, "read"),
        (uapi::KEEL_ACCESS_WRITE, "write"),
        (uapi::KEEL_ACCESS_EXEC, "exec"),
    ]
    .into_iter()
    .filter(|(bit, _)| access & bit != 0)
    .map(|(_, n)| n)
    .collect();
    if names.is_empty() {
        format!("access {access:#x}")
    } else {
        names.join("+")
    }
}

/// The bits an access of `size` bytes carries.
fn size_mask(size: u8) -> u64 {
    match size {
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}

/// Whether to go on after an exit.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Run the guest again.
    Resume,
    /// End the run.
    Stop(Stop),
}

/// Handles one exit: says how to complete it (IN and MMIO reads read all ones, hypercalls
/// return -ENOSYS), if it takes a completion, and whether the run goes on. `timed_out` tells a
/// signal from the timeout apart from any other (after which the guest just resumes).
pub fn handle(exit: VcpuExit, timed_out: bool, timeout: Option<Duration>) -> (Option<u64>, Next) {
    match exit {
        VcpuExit::IoOut { .. } | VcpuExit::MmioWrite { .. } => (None, Next::Resume),
        VcpuExit::IoIn { size, .. } | VcpuExit::MmioRead { size, .. } => {
            (Some(size_mask(size)), Next::Resume)
        }
        VcpuExit::Hypercall { .. } => (Some(HYPERCALL_ENOSYS as u64), Next::Resume),
        VcpuExit::Interrupted => {
            let next = match timeout {
                Some(t) if timed_out => Next::Stop(Stop::Timeout {
                    seconds: t.as_secs_f64(),
                }),
                _ => Next::Resume,
            };
            (None, next)
        }
        VcpuExit::Hlt
        | VcpuExit::Shutdown { .. }
        | VcpuExit::MemoryFault { .. }
        | VcpuExit::EntryFailure { .. }
        | VcpuExit::Unhandled { .. }
        | VcpuExit::Unknown(_) => (None, Next::Stop(Stop::Exit(exit))),
    }
}

/// One exit as a line: `exit 3: io out port 0xe9 size 1 data 0x48 rip 0x100012`.
pub fn format_exit(line: &ExitLine) -> String {
    let mut s = format!("exit {}: ", line.n);
    let answer = line.answer.unwrap_or_default();
    let _ = match line.exit {
        VcpuExit::Hlt => write!(s, "hlt"),
        VcpuExit::IoOut { port, size, data } => write!(
            s,
            "io out port {port:#x} size {size} data {:#x}",
            data & size_mask(size)
        ),
        VcpuExit::IoIn { port, size } => {
            write!(s, "io in port {port:#x} size {size} answered {answer:#x}")
        }
        VcpuExit::MmioRead { gpa, size } => {
            write!(s, "mmio read gpa {gpa} size {size} answered {answer:#x}")
        }
        VcpuExit::MmioWrite { gpa, size, data } => write!(
            s,
            "mmio write gpa {gpa} size {size} data {:#x}",
            data & size_mask(size)
        ),
        VcpuExit::Hypercall { nr, args, longmode } => {
            let ret = answer as i64;
            let args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
            write!(
                s,
                "hypercall nr {nr:#x} args {} ({}-bit) answered {ret} ({})",
                args.join(" "),
                if longmode { 64 } else { 32 },
                errno_name(-ret as i32)
            )
        }
        VcpuExit::Shutdown { kind, reason } => {
            write!(s, "shutdown ({})", shutdown_name(kind, reason))
        }
        VcpuExit::MemoryFault { gpa, access } => {
            write!(s, "memory fault gpa {gpa} {}", access_names(access))
        }
        VcpuExit::EntryFailure {
            hw_reason,
            qualification,
        } => write!(
            s,
            "entry failure hw_reason {hw_reason:#x} qualification {qualification:#x}"
        ),
        VcpuExit::Unhandled {
            hw_reason,
            qualification,
        } => write!(
            s,
            "unhandled hw_reason {hw_reason:#x} qualification {qualification:#x}"
        ),
        VcpuExit::Interrupted => write!(s, "interrupted"),
        VcpuExit::Unknown(reason) => write!(s, "unknown reason {reason}"),
    };
    let _ = write!(s, " rip {:#x}", line.rip);
    s
}

/// Something that runs a vCPU: the real [`Vcpu`], or a script in tests.
pub trait RunVcpu {
    /// Runs until the next exit.
    fn run(&mut self) -> Result<RunExit, Error>;
    /// Completes the last exit with `value` for the next run.
    fn complete(&mut self, value: u64) -> Result<(), Error>;
}

impl RunVcpu for Vcpu {
    fn run(&mut self) -> Result<RunExit, Error> {
        Vcpu::run(self)
    }

    fn complete(&mut self, value: u64) -> Result<(), Error> {
        Vcpu::complete(self, value)
    }
}

/// How a run ended.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    /// Why.
    pub stop: Stop,
    /// Exits seen.
    pub exits: u64,
    /// Bytes the guest wrote to the debug console.
    pub console: Vec<u8>,
}

/// The run's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `--max-exits`.
    pub max_exits: u64,
    /// `--timeout`.
    pub timeout: Option<Duration>,
}

/// Runs `vcpu` until it halts, fails, or a limit is reached; `on_exit` sees every exit.
/// `timed_out` is set (by the [`Watchdog`]) when the timeout has passed.
pub fn run_loop(
    vcpu: &mut impl RunVcpu,
    limits: Limits,
    timed_out: &AtomicBool,
    mut on_exit: impl FnMut(&ExitLine),
) -> Outcome {
    let mut console = Vec::new();
    let mut n = 0;
    let stop = loop {
        // The timeout may have fired while we were not in the guest, after the signal's handler
        // ran: check before going back in.
        if let (Some(t), true) = (limits.timeout, timed_out.load(Ordering::Acquire)) {
            break Stop::Timeout {
                seconds: t.as_secs_f64(),
            };
        }
        let RunExit { rip, exit } = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) => {
                break Stop::RunFailed {
                    error: e.to_string(),
                }
            }
        };
        n += 1;
        let (answer, next) = handle(exit, timed_out.load(Ordering::Acquire), limits.timeout);
        if let Some(value) = answer {
            if let Err(e) = vcpu.complete(value) {
                break Stop::RunFailed {
                    error: e.to_string(),
                };
            }
        }
        if let VcpuExit::IoOut {
            port: DEBUGCON_PORT,
            size,
            data,
        } = exit
        {
            let data = data & size_mask(size);
            console.extend_from_slice(&data.to_le_bytes()[..usize::from(size.min(8))]);
        }
        on_exit(&ExitLine {
            n,
            rip,
            exit,
            answer,
        });
        match next {
            Next::Stop(stop) => break stop,
            Next::Resume if n >= limits.max_exits => {
                break Stop::MaxExits {
                    limit: limits.max_exits,
                }
            }
            Next::Resume => {}
        }
    };
    Outcome {
        stop,
        exits: n,
        console,
    }
}

/// The signal that interrupts `KEEL_VCPU_RUN` when the timeout passes.
const TIMEOUT_SIGNAL: libc::c_int = libc::SIGUSR1;

extern "C" fn on_timeout_signal(_: libc::c_int) {
    // Nothing to do: the signal exists to make KEEL_VCPU_RUN return EINTR; the watchdog sets
    // the flag the run loop reads.
}

/// Ends a run after a timeout: sets a flag, then signals the thread that started it (again
/// every 50 ms, in case a signal landed outside `KEEL_VCPU_RUN`) until dropped.
///
/// The thread is named by its kernel id and signalled with `tgkill`, which is harmless once the
/// thread is gone (ESRCH), so even a leaked watchdog does nothing worse than a stray no-op
/// signal.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    /// Starts the countdown for the calling thread.
    pub fn start(timeout: Duration) -> std::io::Result<Self> {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
        // `extern "C"` function that does nothing, hence async-signal-safe. No SA_RESTART: the
        // ioctl must fail with EINTR, not restart.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_timeout_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(TIMEOUT_SIGNAL, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: getpid and gettid have no preconditions.
        let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
        let fired = Arc::new(AtomicBool::new(false));
        let flag = fired.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("keelctl-timeout".into())
            .spawn(move || {
                if stopped.recv_timeout(timeout) != Err(mpsc::RecvTimeoutError::Timeout) {
                    return;
                }
                flag.store(true, Ordering::Release);
                loop {
                    // SAFETY: tgkill takes plain integers and touches no memory; a thread that
                    // has exited makes it fail with ESRCH, which is fine to ignore.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, TIMEOUT_SIGNAL) };
                    if stopped.recv_timeout(Duration::from_millis(50))
                        != Err(mpsc::RecvTimeoutError::Timeout)
                    {
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
            fired,
        })
    }

    /// The flag the run loop watches.
    pub fn fired(&self) -> &AtomicBool {
        &self.fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The general registers, for reports.
#[derive(Debug, Serialize)]
pub struct RegsDump {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rsp: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
    rip: u64,
    rflags: u64,
}

impl From<&uapi::keel_regs> for RegsDump {
    fn from(r: &uapi::keel_regs) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rsp: r.rsp,
            rbp: r.rbp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
        }
    }
}

/// The registers as four lines.
pub fn format_regs(r: &uapi::keel_regs) -> String {
    let rows: [[(&str, u64); 4]; 4] = [
        [
            ("rax", r.rax),
            ("rbx", r.rbx),
            ("rcx", r.rcx),
            ("rdx", r.rdx),
        ],
        [
            ("rsi", r.rsi),
            ("rdi", r.rdi),
            ("rsp", r.rsp),
            ("rbp", r.rbp),
        ],
        [("r8", r.r8), ("r9", r.r9), ("r10", r.r10), ("r11", r.r11)],
        [
            ("r12", r.r12),
            ("r13", r.r13),
            ("r14", r.r14),
            ("r15", r.r15),
        ],
    ];
    let mut s = format!("regs: rip {:#x} rflags {:#x}\n", r.rip, r.rflags);
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .map(|(n, v)| format!("{n:>3} {v:#018x}"))
            .collect();
        let _ = writeln!(s, "  {}", cells.join("  "));
    }
    s
}

/// The control and segment registers in one line, for entry failures.
pub fn format_sregs(s: &uapi::keel_sregs) -> String {
    let seg = |name: &str, g: &uapi::keel_segment| {
        format!(
            "{name} {:#x}/{:#x}/{:#x}/{:#x}",
            g.selector, g.base, g.limit, g.attrib
        )
    };
    format!(
        "sregs: cr0 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} {} {} {} (selector/base/limit/attrib)\n",
        s.cr0,
        s.cr3,
        s.cr4,
        s.efer,
        seg("cs", &s.cs),
        seg("ss", &s.ss),
        seg("tr", &s.tr)
    )
}

/// The console text as lines for the report.
pub fn format_console(console: &[u8]) -> String {
    String::from_utf8_lossy(console)
        .lines()
        .map(|l| format!("console: {l}\n"))
        .collect()
}

/// The reason and the exit count: `halted after 2 exits`.
fn stop_text(outcome: &Outcome) -> String {
    let plural = if outcome.exits == 1 { "" } else { "s" };
    format!(
        "{} after {} exit{plural}",
        outcome.stop.describe(),
        outcome.exits
    )
}

/// The summary line.
pub fn format_summary(outcome: &Outcome) -> String {
    format!("stopped: {}", stop_text(outcome))
}

/// The JSON report of `keelctl run --json`.
#[derive(Serialize)]
struct Report<'a> {
    domid: u32,
    name: &'a str,
    image: String,
    format: &'static str,
    mode: Mode,
    entry: u64,
    memory: u64,
    exits: Vec<ExitLine>,
    exit_count: u64,
    console: String,
    stop: &'a Stop,
    halted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    regs: Option<RegsDump>,
}

/// The domain name from the image's file name: printable ASCII, at most 31 characters.
pub fn default_name(image: &Path) -> DomainName {
    let stem: String = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(uapi::KEEL_NAME_LEN as usize - 1)
        .collect();
    DomainName::new(&stem).unwrap_or_else(|_| DomainName::new("keelctl-run").expect("valid name"))
}

/// Runs `keelctl run`: the exit status is success when the guest halted.
pub fn run(args: RunArgs, device: &Path) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let image = std::fs::read(&args.image)
        .map_err(|e| format!("cannot read the image {}: {e}", args.image.display()))?;
    let opts = LoadOptions {
        mode: args.mode,
        entry: args.entry,
        load: args.load,
        memory: args.memory,
    };
    let plan = LoadPlan::new(&image, &opts)
        .map_err(|e| format!("cannot run {}: {e}", args.image.display()))?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| default_name(&args.image));

    let dev = KeelDev::open(device)?;
    let domain = dev.create_domain(&name, 1, plan.memory)?;
    domain.add_range(GuestAddress(0), plan.memory, RangeKind::Ram)?;
    {
        // Load, then unmap before the first run: the guest owns its memory from then on.
        let mut ram = domain.map_memory(GuestAddress(0), plan.memory)?;
        plan.write_to(&mut ram)?;
    }
    let mut vcpu = domain.create_vcpu(0)?;
    let reset = vcpu.sregs()?;
    vcpu.set_sregs(&boot::initial_sregs(plan.mode, &reset))?;
    vcpu.set_regs(&boot::initial_regs(plan.mode, plan.entry, plan.memory))?;

    if !args.json {
        println!(
            "domain {} '{}': {} image of {} at {:#x}, {} mode, entry {:#x}, {} of RAM",
            domain.domid(),
            name,
            plan.format.name(),
            human_size(plan.image_size()),
            plan.segments.first().map_or(0, |s| s.gpa.0),
            plan.mode.name(),
            plan.entry,
            human_size(plan.memory)
        );
    }

    let limits = Limits {
        max_exits: args.max_exits,
        timeout: args.timeout,
    };
    let never = AtomicBool::new(false);
    let watchdog = args.timeout.map(Watchdog::start).transpose()?;
    let fired = watchdog.as_ref().map_or(&never, Watchdog::fired);
    let mut exits = Vec::new();
    let outcome = run_loop(&mut vcpu, limits, fired, |line| {
        if args.json {
            exits.push(line.clone());
        } else {
            println!("{}", format_exit(line));
            let _ = std::io::stdout().flush();
        }
    });
    drop(watchdog);

    let regs = if outcome.stop.failed_in_guest() {
        vcpu.regs().ok()
    } else {
        None
    };

    if args.json {
        let report = Report {
            domid: domain.domid(),
            name: name.as_str(),
            image: args.image.display().to_string(),
            format: plan.format.name(),
            mode: plan.mode,
            entry: plan.entry,
            memory: plan.memory,
            exits,
            exit_count: outcome.exits,
            console: String::from_utf8_lossy(&outcome.console).into_owned(),
            stop: &outcome.stop,
            halted: outcome.stop.halted(),
            regs: regs.as_ref().map(RegsDump::from),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_console(&outcome.console));
        if let Some(r) = &regs {
            print!("{}", format_regs(r));
        }
        if matches!(outcome.stop, Stop::Exit(VcpuExit::EntryFailure { .. })) {
            if let Ok(s) = vcpu.sregs() {
                print!("{}", format_sregs(&s));
            }
        }
        println!("{}", format_summary(&outcome));
    }
    if outcome.stop.halted() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("keelctl: the guest did not halt: {}", stop_text(&outcome));
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_sys::{complete_exit, decode_exit};

    /// A vCPU that replays exit records and keeps what keelctl wrote back into each.
    struct Script {
        exits: Vec<uapi::keel_run>,
        next: usize,
        answered: Vec<uapi::keel_run>,
        /// Fail with this errno once the script is over.
        errno_at_end: i32,
    }

    impl Script {
        fn new(exits: Vec<uapi::keel_run>) -> Self {
            Self {
                exits,
                next: 0,
                answered: Vec::new(),
                errno_at_end: libc::EIO,
            }
        }
    }

    impl RunVcpu for Script {
        fn run(&mut self) -> Result<RunExit, Error> {
            if self.next > 0 {
                self.answered.push(self.exits[self.next - 1]);
            }
            let Some(run) = self.exits.get(self.next) else {
                return Err(Error::Ioctl {
                    name: "KEEL_VCPU_RUN",
                    error: std::io::Error::from_raw_os_error(self.errno_at_end),
                });
            };
            self.next += 1;
            Ok(decode_exit(run))
        }

        fn complete(&mut self, value: u64) -> Result<(), Error> {
            let run = &mut self.exits[self.next - 1];
            if complete_exit(run, value) {
                Ok(())
            } else {
                Err(Error::NoCompletion {
                    reason: run.exit.reason,
                })
            }
        }
    }

    fn exit(reason: u32, rip: u64, fill: impl FnOnce(&mut uapi::keel_exit)) -> uapi::keel_run {
        let mut run = uapi::keel_run::default();
        run.exit.reason = reason;
        run.exit.rip = rip;
        fill(&mut run.exit);
        run
    }

    fn out(port: u16, size: u8, data: u64, rip: u64) -> uapi::keel_run {
        exit(uapi::KEEL_EXIT_IO, rip, |e| {
            e.__bindgen_anon_1.io = uapi::keel_exit_io {
                port,
                size,
                direction: uapi::KEEL_IO_OUT as u8,
                pad: 0,
                data,
            }
        })
    }

    fn io_in(port: u16, size: u8) -> uapi::keel_run {
        exit(uapi::KEEL_EXIT_IO, 0x10, |e| {
            e.__bindgen_anon_1.io = uapi::keel_exit_io {
                port,
                size,
                direction: uapi::KEEL_IO_IN as u8,
                pad: 0,
                data: 0,
            }
        })
    }

    const LIMITS: Limits = Limits {
        max_exits: 1000,
        timeout: None,
    };

    fn run_script(script: &mut Script, limits: Limits, timed_out: bool) -> (Outcome, Vec<String>) {
        let mut lines = Vec::new();
        let flag = AtomicBool::new(timed_out);
        let outcome = run_loop(script, limits, &flag, |l| lines.push(format_exit(l)));
        (outcome, lines)
    }

    #[test]
    fn console_then_halt() {
        let mut s = Script::new(vec![
            out(0xe9, 1, 0x48, 0x10_0012),
            out(0xe9, 1, 0x69, 0x10_0012),
            out(0x80, 1, 0x12, 0x10_0014),
            out(0xe9, 2, 0x0a21, 0x10_0016),
            exit(uapi::KEEL_EXIT_HLT, 0x10_0019, |_| {}),
        ]);
        let (o, lines) = run_script(&mut s, LIMITS, false);
        assert_eq!(o.stop, Stop::HALTED);
        assert_eq!(o.exits, 5);
        assert_eq!(o.console, b"Hi!\n");
        assert_eq!(
            lines[0],
            "exit 1: io out port 0xe9 size 1 data 0x48 rip 0x100012"
        );
        assert_eq!(
            lines[2],
            "exit 3: io out port 0x80 size 1 data 0x12 rip 0x100014"
        );
        assert_eq!(lines[4], "exit 5: hlt rip 0x100019");
        assert_eq!(format_console(&o.console), "console: Hi!\n");
        assert_eq!(format_summary(&o), "stopped: halted after 5 exits");
    }

    #[test]
    fn in_reads_all_ones_and_hypercalls_fail_with_enosys() {
        let hypercall = exit(uapi::KEEL_EXIT_HYPERCALL, 0x20, |e| {
            e.__bindgen_anon_1.hypercall = uapi::keel_exit_hypercall {
                nr: 0x7fff,
                args: [1, 2, 3, 4, 5],
                ret: 0,
                longmode: 1,
                pad: 0,
            }
        });
        let mmio = exit(uapi::KEEL_EXIT_MMIO, 0x30, |e| {
            e.__bindgen_anon_1.mmio = uapi::keel_exit_mmio {
                gpa: 0xfee0_0000,
                size: 4,
                direction: uapi::KEEL_IO_IN as u8,
                pad: [0; 6],
                data: 0,
            }
        });
        let mut s = Script::new(vec![
            io_in(0x60, 1),
            io_in(0x64, 2),
            io_in(0xcf8, 4),
            hypercall,
            mmio,
            exit(uapi::KEEL_EXIT_HLT, 0x40, |_| {}),
        ]);
        let (o, lines) = run_script(&mut s, LIMITS, false);
        assert_eq!(o.stop, Stop::HALTED);
        let answers: Vec<u64> = s.answered[..3]
            .iter()
            // SAFETY: the script wrote the io member of these three.
            .map(|r| unsafe { r.exit.__bindgen_anon_1.io.data })
            .collect();
        assert_eq!(answers, [0xff, 0xffff, 0xffff_ffff]);
        // SAFETY: as above.
        let ret = unsafe { s.answered[3].exit.__bindgen_anon_1.hypercall.ret };
        assert_eq!(ret as i64, -38);
        // SAFETY: as above.
        let mmio_data = unsafe { s.answered[4].exit.__bindgen_anon_1.mmio.data };
        assert_eq!(mmio_data, 0xffff_ffff);
        assert_eq!(
            lines[0],
            "exit 1: io in port 0x60 size 1 answered 0xff rip 0x10"
        );
        assert_eq!(
            lines[3],
            "exit 4: hypercall nr 0x7fff args 0x1 0x2 0x3 0x4 0x5 (64-bit) answered -38 (ENOSYS) \
             rip 0x20"
        );
        assert_eq!(
            lines[4],
            "exit 5: mmio read gpa 0xfee00000 size 4 answered 0xffffffff rip 0x30"
        );
    }

    #[test]
    fn max_exits_stops_a_chatty_guest() {
        let mut s = Script::new((0..10).map(|_| out(0x80, 1, 0, 0x10)).collect());
        let limits = Limits {
            max_exits: 3,
            timeout: None,
        };
        let (o, lines) = run_script(&mut s, limits, false);
        assert_eq!(o.stop, Stop::MaxExits { limit: 3 });
        assert_eq!((o.exits, lines.len()), (3, 3));
        assert_eq!(
            format_summary(&o),
            "stopped: max-exits limit of 3 reached after 3 exits"
        );
    }

    #[test]
    fn failures_stop_the_run() {
        let fault = exit(uapi::KEEL_EXIT_MEMORY_FAULT, 0x10_0000, |e| {
            e.__bindgen_anon_1.fault = uapi::keel_exit_fault {
                gpa: 0x4000_0000,
                access: uapi::KEEL_ACCESS_READ,
                pad: 0,
            }
        });
        let (o, lines) = run_script(&mut Script::new(vec![fault]), LIMITS, false);
        assert_eq!(
            o.stop,
            Stop::Exit(VcpuExit::MemoryFault {
                gpa: GuestAddress(0x4000_0000),
                access: 1
            })
        );
        assert!(!o.stop.halted());
        assert_eq!(
            lines[0],
            "exit 1: memory fault gpa 0x40000000 read rip 0x100000"
        );
        assert_eq!(
            format_summary(&o),
            "stopped: memory fault at 0x40000000 (read) after 1 exit"
        );

        let shutdown = exit(uapi::KEEL_EXIT_SHUTDOWN, 0x10_0000, |e| {
            e.__bindgen_anon_1.shutdown = uapi::keel_exit_shutdown {
                kind: uapi::KEEL_SHUTDOWN_TRIPLE_FAULT,
                reason: 0,
            }
        });
        let (o, lines) = run_script(&mut Script::new(vec![shutdown]), LIMITS, false);
        assert_eq!(o.stop.describe(), "shutdown (triple fault)");
        assert_eq!(lines[0], "exit 1: shutdown (triple fault) rip 0x100000");

        let entry = exit(uapi::KEEL_EXIT_ENTRY_FAILURE, 0, |e| {
            e.__bindgen_anon_1.fail = uapi::keel_exit_fail {
                hw_reason: 0x8000_0021,
                qualification: 0,
            }
        });
        let (o, _) = run_script(&mut Script::new(vec![entry]), LIMITS, false);
        assert!(o.stop.describe().contains("entry failure"));

        let (o, lines) = run_script(&mut Script::new(vec![exit(99, 0, |_| {})]), LIMITS, false);
        assert_eq!(o.stop, Stop::Exit(VcpuExit::Unknown(99)));
        assert_eq!(lines[0], "exit 1: unknown reason 99 rip 0x0");
    }

    #[test]
    fn an_ioctl_error_ends_the_run_with_its_name() {
        let mut s = Script::new(vec![out(0x80, 1, 0, 0)]);
        s.errno_at_end = libc::EINVAL;
        let (o, _) = run_script(&mut s, LIMITS, false);
        assert_eq!(o.exits, 1);
        let Stop::RunFailed { error } = &o.stop else {
            panic!("{:?}", o.stop)
        };
        assert!(error.starts_with("KEEL_VCPU_RUN failed: EINVAL"), "{error}");
    }

    #[test]
    fn interruptions_resume_unless_timed_out() {
        let intr = || exit(uapi::KEEL_EXIT_INTR, 0x10_0000, |_| {});
        let mut s = Script::new(vec![intr(), exit(uapi::KEEL_EXIT_HLT, 1, |_| {})]);
        let (o, lines) = run_script(&mut s, LIMITS, false);
        assert_eq!(o.stop, Stop::HALTED);
        assert_eq!(lines[0], "exit 1: interrupted rip 0x100000");

        let limits = Limits {
            max_exits: 1000,
            timeout: Some(Duration::from_millis(1500)),
        };
        // Timed out while in the guest: the interrupted exit ends the run.
        let (answer, next) = handle(VcpuExit::Interrupted, true, limits.timeout);
        assert_eq!(answer, None);
        assert_eq!(next, Next::Stop(Stop::Timeout { seconds: 1.5 }));
        // Timed out between runs: the loop does not go back in.
        let (o, lines) = run_script(&mut Script::new(vec![intr()]), limits, true);
        assert_eq!(o.stop, Stop::Timeout { seconds: 1.5 });
        assert!(lines.is_empty());
        assert_eq!(
            format_summary(&o),
            "stopped: timeout of 1.5 s reached after 0 exits"
        );
    }

    #[test]
    fn watchdog_interrupts_a_blocking_call() {
        // A blocking read stands in for KEEL_VCPU_RUN: the watchdog's signal ends it with
        // EINTR, and the flag is set by then.
        let (rd, _wr) = std::io::pipe().unwrap();
        let dog = Watchdog::start(Duration::from_millis(100)).unwrap();
        let mut buf = [0u8; 1];
        // SAFETY: `buf` is a valid 1-byte buffer and the pipe's read end is open.
        let r = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&rd),
                buf.as_mut_ptr().cast(),
                1,
            )
        };
        let e = std::io::Error::last_os_error();
        assert_eq!(r, -1);
        assert_eq!(e.raw_os_error(), Some(libc::EINTR));
        assert!(dog.fired().load(Ordering::Acquire));
    }

    #[test]
    fn watchdog_dropped_in_time_never_fires() {
        let dog = Watchdog::start(Duration::from_secs(60)).unwrap();
        let start = std::time::Instant::now();
        assert!(!dog.fired().load(Ordering::Acquire));
        drop(dog);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn json_shapes() {
        let line = ExitLine {
            n: 1,
            rip: 0x7c02,
            exit: VcpuExit::IoOut {
                port: 0xe9,
                size: 1,
                data: 0x4b,
            },
            answer: None,
        };
        let v = serde_json::to_value(&line).unwrap();
        assert_eq!(v["kind"], "io_out");
        assert_eq!(v["port"], 0xe9);
        assert_eq!(v["rip"], 0x7c02);
        let v = serde_json::to_value(Stop::MaxExits { limit: 5 }).unwrap();
        assert_eq!(v["reason"], "max_exits");
        assert_eq!(
            serde_json::to_value(Stop::HALTED).unwrap()["reason"],
            "halted"
        );
        // The exact shapes of the exits that take an answer and of the failures.
        fn text(v: &impl Serialize) -> String {
            serde_json::to_string(v).unwrap()
        }
        let hypercall = ExitLine {
            n: 2,
            rip: 0x20,
            exit: VcpuExit::Hypercall {
                nr: 34,
                args: [1, 2, 3, 4, 5],
                longmode: false,
            },
            answer: Some(HYPERCALL_ENOSYS as u64),
        };
        assert_eq!(
            text(&hypercall),
            r#"{"n":2,"rip":32,"kind":"hypercall","nr":34,"args":[1,2,3,4,5],"longmode":false,"ret":-38}"#
        );
        let io_in = ExitLine {
            n: 3,
            rip: 0x30,
            exit: VcpuExit::IoIn {
                port: 0x60,
                size: 1,
            },
            answer: Some(0xff),
        };
        assert_eq!(
            text(&io_in),
            r#"{"n":3,"rip":48,"kind":"io_in","port":96,"size":1,"answer":255}"#
        );
        let fault = VcpuExit::MemoryFault {
            gpa: GuestAddress(0x1000),
            access: 2,
        };
        let line = ExitLine {
            n: 4,
            rip: 0x40,
            exit: fault,
            answer: None,
        };
        assert_eq!(
            text(&line),
            r#"{"n":4,"rip":64,"kind":"memory_fault","gpa":4096,"access":2}"#
        );
        assert_eq!(
            text(&Stop::Exit(fault)),
            r#"{"reason":"memory_fault","gpa":4096,"access":2}"#
        );
        assert_eq!(
            text(&Stop::Exit(VcpuExit::Unknown(99))),
            r#"{"reason":"unknown_exit","exit_reason":99}"#
        );
    }

    #[test]
    fn timeouts_and_names() {
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("soon").is_err());
        assert_eq!(parse_max_exits("5"), Ok(5));
        assert!(parse_max_exits("0").unwrap_err().contains("at least 1"));
        assert_eq!(
            default_name(Path::new("/tmp/hello.bin")).as_str(),
            "hello.bin"
        );
        assert_eq!(
            default_name(Path::new(&"x".repeat(40))).as_str(),
            "x".repeat(31)
        );
        assert_eq!(default_name(Path::new("/")).as_str(), "keelctl-run");
    }

    #[test]
    fn regs_and_sizes() {
        let r = uapi::keel_regs {
            rip: 0x7c05,
            rflags: 2,
            rax: 0x4b,
            ..Default::default()
        };
        let text = format_regs(&r);
        assert!(text.starts_with("regs: rip 0x7c05 rflags 0x2\n"), "{text}");
        assert!(text.contains("rax 0x000000000000004b"), "{text}");
        assert_eq!(size_mask(1), 0xff);
        assert_eq!(size_mask(4), 0xffff_ffff);
        assert_eq!(size_mask(8), u64::MAX);
    }
}
