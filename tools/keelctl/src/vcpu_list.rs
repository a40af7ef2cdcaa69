//! `keelctl vcpu-list`: each vCPU of the domains, in `xl vcpu-list`'s columns. A Keel vCPU is
//! a thread of its domain's keel-domd, named `vcpuN` (it sits in `KEEL_VCPU_RUN` while the
//! guest runs), so the host CPU it is on, whether it is running, the CPU time it has had and
//! the CPUs it may run on are that thread's, from `/proc/<pid>/task/<tid>/`. A vCPU without
//! such a thread (a domain of `keelctl run`, or one whose keel-domd has not started it) shows
//! `-` for those. A vCPU whose XenStore `cpu/N/availability` says "offline" is listed as xl
//! lists an offline one, `--p`. (Keel's domains have `vcpus` vCPUs: `maxvcpus` above it
//! makes no more, so only a toolstack that writes the node marks one offline.)
use std::{collections::BTreeMap, fs, path::Path};

use keel_sys::DomainInfo;
use serde::Serialize;

/// What one vCPU thread's `/proc` files say.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ThreadInfo {
    /// The host CPU it last ran on.
    pub cpu: u32,
    /// It is running or runnable (state `R`).
    pub running: bool,
    /// User and system time, clock ticks.
    pub ticks: u64,
    /// `Cpus_allowed_list` (`0-3`, `1,3`).
    pub affinity: String,
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VcpuRow {
    /// The domain's name.
    pub name: String,
    /// Its id.
    pub domid: u32,
    /// The vCPU's id.
    pub vcpu: u32,
    /// The guest was given it (not `offline` in XenStore).
    pub online: bool,
    /// Its thread, if it has one.
    pub thread: Option<ThreadInfo>,
    /// Its thread's CPU time, seconds.
    pub time_s: Option<f64>,
}

/// Parses `/proc/<pid>/task/<tid>/stat`: the state (field 3), utime and stime (14, 15) and
/// the CPU (39). The command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<(char, u64, u32)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3.
    let state = f.first()?.chars().next()?;
    let utime: u64 = f.get(14 - 3)?.parse().ok()?;
    let stime: u64 = f.get(15 - 3)?.parse().ok()?;
    let cpu: u32 = f.get(39 - 3)?.parse().ok()?;
    Some((state, utime.checked_add(stime)?, cpu))
}

/// `Cpus_allowed_list` from a `status` file.
pub fn parse_affinity(status: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
}

/// The vCPU id a thread name (`comm`) stands for: `vcpuN`.
pub fn vcpu_of(comm: &str) -> Option<u32> {
    let n = comm.trim_end().strip_prefix("vcpu")?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The vCPU threads of process `pid`, by vCPU id (under `proc`, `/proc` but for the tests).
pub fn threads(proc: &Path, pid: u32) -> BTreeMap<u32, ThreadInfo> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(proc.join(pid.to_string()).join("task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let Some(vcpu) = fs::read_to_string(dir.join("comm"))
            .ok()
            .and_then(|c| vcpu_of(&c))
        else {
            continue;
        };
        let Some((state, ticks, cpu)) = fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        let affinity = fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| parse_affinity(&s))
            .unwrap_or_else(|| "-".into());
        out.insert(
            vcpu,
            ThreadInfo {
                cpu,
                running: state == 'R',
                ticks,
                affinity,
            },
        );
    }
    out
}

/// The rows of `domains`' vCPUs (those in each one's `vcpu_mask`): their threads in the
/// process `domd` names (its keel-domd) under `proc`, `offline(domid, vcpu)` for a vCPU the
/// guest was not given, `ticks_per_s` for the times.
pub fn rows(
    domains: &[&DomainInfo],
    domd: impl Fn(&DomainInfo) -> Option<u32>,
    mut offline: impl FnMut(u32, u32) -> bool,
    proc: &Path,
    ticks_per_s: f64,
) -> Vec<VcpuRow> {
    let mut out = Vec::new();
    for d in domains {
        let mut threads = domd(d).map(|pid| threads(proc, pid)).unwrap_or_default();
        for vcpu in (0..64).filter(|i| d.vcpu_mask & (1u64 << i) != 0) {
            let thread = threads.remove(&vcpu);
            out.push(VcpuRow {
                name: d.name.clone(),
                domid: d.domid,
                vcpu,
                online: !offline(d.domid, vcpu),
                time_s: thread
                    .as_ref()
                    .map(|t| (t.ticks as f64 / ticks_per_s * 10.0).round() / 10.0),
                thread,
            });
        }
    }
    out
}

/// xl's State column: `r--` running, `-b-` blocked (waiting, or not running for another
/// reason), `--p` offline; `---` for a vCPU whose thread is unknown.
pub fn state(row: &VcpuRow) -> &'static str {
    match (&row.thread, row.online) {
        (_, false) => "--p",
        (None, true) => "---",
        (Some(t), true) if t.running => "r--",
        (Some(_), true) => "-b-",
    }
}

/// The table under xl's header: Name (32 wide), ID, VCPU, CPU, State, Time(s), Affinity
/// (Hard / Soft; Keel has no soft affinity: `all`).
pub fn human(rows: &[VcpuRow]) -> String {
    let mut out = format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} Affinity (Hard / Soft)\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)"
    );
    for r in rows {
        let (cpu, time, hard) = match (&r.thread, r.time_s) {
            (Some(t), Some(s)) if r.online => {
                (t.cpu.to_string(), format!("{s:.1}"), t.affinity.clone())
            }
            _ => ("-".into(), "-".into(), "-".into()),
        };
        out += &format!(
            "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9}  {hard} / all\n",
            r.name,
            r.domid,
            r.vcpu,
            cpu,
            state(r),
            time
        );
    }
    out
}

/// Clock ticks a second (`sysconf(_SC_CLK_TCK)`), for the Time(s) column.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line of a thread named `comm`: state, utime, stime, CPU at their fields.
    fn stat(comm: &str, state: char, utime: u64, stime: u64, cpu: u32) -> String {
        let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        f[0] = state.to_string();
        f[14 - 3] = utime.to_string();
        f[15 - 3] = stime.to_string();
        f[39 - 3] = cpu.to_string();
        format!("4242 ({comm}) {}\n", f.join(" "))
    }

    #[test]
    fn stat_fields_count_after_the_name() {
        assert_eq!(
            parse_stat(&stat("vcpu0", 'R', 150, 25, 3)),
            Some(('R', 175, 3))
        );
        // A name with spaces and parentheses does not shift the fields.
        assert_eq!(
            parse_stat(&stat("a) b (c", 'S', 1, 2, 1)),
            Some(('S', 3, 1))
        );
        assert_eq!(parse_stat("4242 (vcpu0) R 1 2"), None, "too short");
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn thread_names_and_affinity() {
        assert_eq!(vcpu_of("vcpu0\n"), Some(0));
        assert_eq!(vcpu_of("vcpu12"), Some(12));
        for bad in ["vcpu", "vcpux", "keel-domd", "vcpu-1", "xvcpu1"] {
            assert_eq!(vcpu_of(bad), None, "{bad}");
        }
        let status = "Name:\tvcpu0\nCpus_allowed:\tf\nCpus_allowed_list:\t0-3\nMems_allowed:\t1\n";
        assert_eq!(parse_affinity(status), Some("0-3".into()));
        assert_eq!(parse_affinity("Name:\tx\n"), None);
    }

    #[test]
    fn threads_from_a_proc_tree() {
        let root = std::env::temp_dir().join(format!("keelctl-vcpu-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let task = |tid: u32, comm: &str, stat_line: String| {
            let d = root.join("77/task").join(tid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(d.join("stat"), stat_line).unwrap();
            fs::write(d.join("status"), "Cpus_allowed_list:\t1\n").unwrap();
        };
        task(77, "keel-domd", stat("keel-domd", 'S', 5, 5, 0));
        task(78, "vcpu0", stat("vcpu0", 'R', 40, 60, 1));
        task(79, "vcpu1", stat("vcpu1", 'S', 1, 1, 0));
        task(80, "xenbus", stat("xenbus", 'S', 0, 0, 1));
        let t = threads(&root, 77);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(
            t[&0],
            ThreadInfo {
                cpu: 1,
                running: true,
                ticks: 100,
                affinity: "1".into()
            }
        );
        assert!(!t[&1].running);
        assert!(threads(&root, 78).is_empty(), "no such process");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn rows_of_the_vcpus_that_exist() {
        let root = std::env::temp_dir().join(format!("keelctl-vrows-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let d = root.join("90/task/91");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("comm"), "vcpu1\n").unwrap();
        fs::write(d.join("stat"), stat("vcpu1", 'S', 30, 20, 0)).unwrap();
        let web = DomainInfo {
            domid: 3,
            name: "web".into(),
            vcpu_mask: 0b110,
            ..Default::default()
        };
        let bare = DomainInfo {
            domid: 4,
            name: "bare".into(),
            vcpu_mask: 1,
            ..Default::default()
        };
        let r = rows(
            &[&web, &bare],
            |d| (d.domid == 3).then_some(90),
            |domid, vcpu| domid == 3 && vcpu == 2,
            &root,
            100.0,
        );
        let got: Vec<_> = r
            .iter()
            .map(|r| (r.domid, r.vcpu, r.online, r.time_s, state(r)))
            .collect();
        assert_eq!(
            got,
            [
                (3, 1, true, Some(0.5), "-b-"),
                (3, 2, false, None, "--p"),
                (4, 0, true, None, "---"),
            ]
        );
        assert_eq!(
            r[0].thread.as_ref().unwrap().affinity,
            "-",
            "no status file"
        );
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn the_table_as_xls() {
        let thread = |running| ThreadInfo {
            cpu: 1,
            running,
            ticks: 250,
            affinity: "0-1".into(),
        };
        let row = |vcpu, online, thread: Option<ThreadInfo>| VcpuRow {
            name: "web".into(),
            domid: 3,
            vcpu,
            online,
            time_s: thread.as_ref().map(|t| t.ticks as f64 / 100.0),
            thread,
        };
        let rows = [
            row(0, true, Some(thread(true))),
            row(1, true, Some(thread(false))),
            row(2, false, Some(thread(false))),
            row(3, true, None),
        ];
        let table = human(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "{:<32}    ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)",
                "Name"
            )
        );
        assert_eq!(
            lines[1],
            format!("{:<32}     3     0     1   r--       2.5  0-1 / all", "web")
        );
        assert_eq!(
            lines[2],
            format!("{:<32}     3     1     1   -b-       2.5  0-1 / all", "web")
        );
        assert_eq!(
            lines[3],
            format!("{:<32}     3     2     -   --p         -  - / all", "web")
        );
        assert_eq!(
            lines[4],
            format!("{:<32}     3     3     -   ---         -  - / all", "web")
        );
    }
}
