//! `keelctl list`: the live domains, as `KEEL_LIST_DOMAINS` reports them, in `xl list`'s
//! columns; a domain's keel-domd adds what only it knows (shut down, crashed, dying).
use serde::Serialize;

use keel_domd::proto::RunState;
use keel_sys::DomainInfo;

use crate::units::MIB;

/// One domain as `list` shows it.
#[derive(Debug, PartialEq, Serialize)]
pub struct DomainRow {
    /// The domain's id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// "paused", "running" (a vCPU has run) or "created".
    pub state: &'static str,
    /// vCPUs created.
    pub vcpus: u32,
    /// vCPUs it may have.
    pub max_vcpus: u32,
    /// Ids of the vCPUs that exist.
    pub vcpu_ids: Vec<u32>,
    /// Ids of the vCPUs inside `KEEL_VCPU_RUN` right now.
    pub running_vcpus: Vec<u32>,
    /// RAM and ROM in its map, MiB.
    pub memory_used_mib: f64,
    /// Its memory limit, MiB.
    pub memory_limit_mib: f64,
    /// RAM and ROM in its map, bytes.
    pub memory_used: u64,
    /// Its memory limit, bytes.
    pub memory_limit: u64,
    /// Ranges in its map.
    pub ranges: u32,
    /// xl's state letters `rbpscd`, `-` where not (see [`state_letters`]).
    pub state_letters: String,
    /// Its memory as xl shows it: RAM and ROM in its map, whole MiB.
    pub mem_mib: u64,
    /// Time its vCPUs spent in the guest, seconds.
    pub time_s: f64,
    /// The same, nanoseconds.
    pub cpu_ns: u64,
    /// A Xen PVH domain.
    pub xen: bool,
    /// The pid of the keel-domd serving it, if one does.
    pub domd_pid: Option<u32>,
}

/// What a domain's keel-domd says about it, for [`DomainRow`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Domd {
    /// Its pid.
    pub pid: u32,
    /// The state it reported, if it answered.
    pub state: Option<RunState>,
}

/// xl's six state letters, `-` where not: r running, b blocked, p paused, s shut down,
/// c crashed, d dying. The module knows paused and whether vCPUs are inside
/// `KEEL_VCPU_RUN` (running: an idle vCPU sleeps in there too) or not (blocked: not started,
/// or its process is not running it); a domain's keel-domd knows s, c and d.
pub fn state_letters(info: &DomainInfo, domd: Option<RunState>) -> String {
    let at = |i: usize| {
        let mut s = *b"------";
        s[i] = b"rbpscd"[i];
        String::from_utf8_lossy(&s).into_owned()
    };
    match domd {
        Some(RunState::Shutdown) => at(3),
        Some(RunState::Crashed) => at(4),
        Some(RunState::Dying) => at(5),
        _ if info.paused => at(2),
        _ if info.running_mask != 0 => at(0),
        _ => at(1),
    }
}

/// Seconds from nanoseconds, for the Time(s) column.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The set bits of `mask`, lowest first.
fn bits(mask: u64) -> Vec<u32> {
    (0..64).filter(|i| mask & (1u64 << i) != 0).collect()
}

/// A domain's state in one word: paused wins, then whether a vCPU has run.
pub fn state(info: &DomainInfo) -> &'static str {
    if info.paused {
        "paused"
    } else if info.started {
        "running"
    } else {
        "created"
    }
}

impl DomainRow {
    /// The row of `i`, with what its keel-domd said.
    pub fn new(i: &DomainInfo, domd: Option<Domd>) -> Self {
        Self {
            id: i.domid,
            name: i.name.clone(),
            state: state(i),
            vcpus: i.nr_vcpus,
            max_vcpus: i.max_vcpus,
            vcpu_ids: bits(i.vcpu_mask),
            running_vcpus: bits(i.running_mask),
            memory_used_mib: i.memory_used as f64 / MIB as f64,
            memory_limit_mib: i.memory_size as f64 / MIB as f64,
            memory_used: i.memory_used,
            memory_limit: i.memory_size,
            ranges: i.nr_ranges,
            state_letters: state_letters(i, domd.and_then(|d| d.state)),
            mem_mib: i.memory_used / MIB,
            time_s: (seconds(i.cpu_ns) * 10.0).round() / 10.0,
            cpu_ns: i.cpu_ns,
            xen: i.xen,
            domd_pid: domd.map(|d| d.pid),
        }
    }
}

/// The rows for `domains`; `domd` says what each one's keel-domd reports.
pub fn rows(domains: &[DomainInfo], domd: impl Fn(&DomainInfo) -> Option<Domd>) -> Vec<DomainRow> {
    domains.iter().map(|d| DomainRow::new(d, domd(d))).collect()
}

/// xl list's table: Name, ID, Mem (MiB), VCPUs, State, Time(s), under a header.
pub fn human(rows: &[DomainRow]) -> String {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(40);
    let mut out = format!(
        "{:<w$} {:>5} {:>5} {:>5} {:>10} {:>9}\n",
        "Name", "ID", "Mem", "VCPUs", "State", "Time(s)"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<w$} {:>5} {:>5} {:>5} {:>10} {:>9.1}\n",
            r.name, r.id, r.mem_mib, r.vcpus, r.state_letters, r.time_s
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<DomainInfo> {
        vec![
            DomainInfo {
                domid: 1,
                name: "spin".into(),
                started: true,
                max_vcpus: 1,
                nr_vcpus: 1,
                memory_size: 16 * MIB,
                memory_used: 16 * MIB,
                nr_ranges: 1,
                vcpu_mask: 1,
                running_mask: 1,
                cpu_ns: 2_460_000_000,
                xen: true,
                ..Default::default()
            },
            DomainInfo {
                domid: 12,
                name: "a-longer-name".into(),
                paused: true,
                started: true,
                max_vcpus: 4,
                nr_vcpus: 2,
                memory_size: 64 * MIB,
                memory_used: 32 * MIB + MIB / 2,
                vcpu_mask: 0b101,
                running_mask: 0,
                ..Default::default()
            },
            DomainInfo {
                domid: 13,
                name: "new".into(),
                max_vcpus: 2,
                memory_size: 4 * MIB,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn letters() {
        let d = sample();
        assert_eq!(state_letters(&d[0], None), "r-----");
        assert_eq!(state_letters(&d[1], None), "--p---");
        assert_eq!(state_letters(&d[2], None), "-b----");
        assert_eq!(state_letters(&d[0], Some(RunState::Running)), "r-----");
        assert_eq!(state_letters(&d[1], Some(RunState::Shutdown)), "---s--");
        assert_eq!(state_letters(&d[0], Some(RunState::Crashed)), "----c-");
        assert_eq!(state_letters(&d[0], Some(RunState::Dying)), "-----d");
    }

    #[test]
    fn table() {
        let rows = rows(&sample(), |_| None);
        let t = human(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        let cols: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(cols, ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]);
        assert!(lines[0].starts_with(&format!("{:<40} ", "Name")));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cols, ["spin", "1", "16", "1", "r-----", "2.5"]);
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cols, ["a-longer-name", "12", "32", "2", "--p---", "0.0"]);
        let cols: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(cols, ["new", "13", "0", "0", "-b----", "0.0"]);
        assert_eq!(human(&[]).lines().count(), 1);
    }

    #[test]
    fn json() {
        let domd = |d: &DomainInfo| {
            (d.domid == 12).then_some(Domd {
                pid: 99,
                state: Some(RunState::Crashed),
            })
        };
        let v = serde_json::to_value(rows(&sample(), domd)).unwrap();
        // The fields `keelctl list --json` always had.
        assert_eq!(v[0]["state"], "running");
        assert_eq!(v[0]["name"], "spin");
        assert_eq!(v[0]["id"], 1);
        assert_eq!(v[0]["running_vcpus"], serde_json::json!([0]));
        assert_eq!(v[1]["vcpu_ids"], serde_json::json!([0, 2]));
        assert_eq!(v[1]["memory_used_mib"], 32.5);
        assert_eq!(v[2]["state"], "created");
        // xl's columns.
        assert_eq!(v[0]["state_letters"], "r-----");
        assert_eq!(v[0]["time_s"], 2.5);
        assert_eq!(v[0]["cpu_ns"], 2_460_000_000u64);
        assert_eq!(v[0]["mem_mib"], 16);
        assert_eq!(v[0]["xen"], true);
        assert_eq!(v[0]["domd_pid"], serde_json::Value::Null);
        assert_eq!(v[1]["state_letters"], "----c-");
        assert_eq!(v[1]["domd_pid"], 99);
        assert_eq!(serde_json::to_string(&rows(&[], |_| None)).unwrap(), "[]");
    }
}
