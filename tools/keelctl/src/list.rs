//! `keelctl list`: the live domains, as `KEEL_LIST_DOMAINS` reports them (`xl list`'s place).
use serde::Serialize;

use keel_sys::DomainInfo;

use crate::units::{mib, MIB};

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

impl From<&DomainInfo> for DomainRow {
    fn from(i: &DomainInfo) -> Self {
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
        }
    }
}

/// The rows for `domains`.
pub fn rows(domains: &[DomainInfo]) -> Vec<DomainRow> {
    domains.iter().map(DomainRow::from).collect()
}

/// The table: one line per domain under a header, or `no domains`.
pub fn human(domains: &[DomainInfo]) -> String {
    if domains.is_empty() {
        return "no domains\n".into();
    }
    let name_width = domains
        .iter()
        .map(|d| d.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:>5}  {:<name_width$}  {:<7}  {:>5}  {:<7}  {:>13}\n",
        "ID", "NAME", "STATE", "VCPUS", "RUNNING", "MEMORY MiB"
    );
    for d in domains {
        let running = bits(d.running_mask);
        let running = if running.is_empty() {
            "-".to_string()
        } else {
            running
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        out.push_str(&format!(
            "{:>5}  {:<name_width$}  {:<7}  {:>5}  {:<7}  {:>13}\n",
            d.domid,
            d.name,
            state(d),
            format!("{}/{}", d.nr_vcpus, d.max_vcpus),
            running,
            format!("{}/{}", mib(d.memory_used), mib(d.memory_size)),
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
    fn table() {
        let t = human(&sample());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("ID") && lines[0].contains("MEMORY MiB"));
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(cols, ["1", "spin", "running", "1/1", "0", "16/16"]);
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cols,
            ["12", "a-longer-name", "paused", "2/4", "-", "32.5/64"]
        );
        let cols: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(cols, ["13", "new", "created", "0/2", "-", "0/4"]);
        assert_eq!(human(&[]), "no domains\n");
    }

    #[test]
    fn json() {
        let v = serde_json::to_value(rows(&sample())).unwrap();
        assert_eq!(v[0]["state"], "running");
        assert_eq!(v[0]["running_vcpus"], serde_json::json!([0]));
        assert_eq!(v[1]["vcpu_ids"], serde_json::json!([0, 2]));
        assert_eq!(v[1]["memory_used_mib"], 32.5);
        assert_eq!(v[2]["state"], "created");
        assert_eq!(serde_json::to_string(&rows(&[])).unwrap(), "[]");
    }
}
