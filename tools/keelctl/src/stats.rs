//! `keelctl stats`: the hypervisor's per-CPU exit counters.
//!
//! The module publishes them in debugfs, one line per CPU and exit kind (`cpu kind count`,
//! `#` starts a comment). This parses that text, so it is testable without the module.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

/// Where the module publishes the counters.
pub const STATS_PATH: &str = "/sys/kernel/debug/keel/stats";

/// The counters: for each exit kind (in the module's order), the count on each CPU.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// The CPUs that run beneath Keel, in order.
    pub cpus: Vec<u32>,
    /// Exit kind, then the count per CPU (same order as `cpus`).
    pub exits: Vec<(String, Vec<u64>)>,
}

/// Why the counters could not be read.
#[derive(Debug)]
pub enum StatsError {
    /// The file is missing: debugfs not mounted, or the module not loaded.
    Missing,
    /// Reading failed.
    Io(std::io::Error),
    /// A line is not `cpu kind count`.
    Parse(usize, String),
}

impl std::fmt::Display for StatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => write!(
                f,
                "{STATS_PATH} not found: is the keel module loaded and debugfs mounted? \
                 (mount -t debugfs none /sys/kernel/debug)"
            ),
            Self::Io(e) => write!(f, "cannot read {STATS_PATH}: {e}"),
            Self::Parse(line, text) => write!(f, "{STATS_PATH}:{line}: cannot parse '{text}'"),
        }
    }
}

impl std::error::Error for StatsError {}

impl Stats {
    /// Reads the counters from `path`.
    pub fn read(path: &Path) -> Result<Self, StatsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StatsError::Missing),
            Err(e) => Err(StatsError::Io(e)),
        }
    }

    /// Parses the module's text.
    pub fn parse(text: &str) -> Result<Self, StatsError> {
        let mut cpus = Vec::new();
        let mut kinds: Vec<String> = Vec::new();
        let mut counts: BTreeMap<(u32, String), u64> = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || StatsError::Parse(i + 1, line.to_string());
            let mut words = line.split_whitespace();
            let (Some(cpu), Some(kind), Some(count), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(bad());
            };
            let cpu: u32 = cpu.parse().map_err(|_| bad())?;
            let count: u64 = count.parse().map_err(|_| bad())?;
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
            if !kinds.iter().any(|k| k == kind) {
                kinds.push(kind.to_string());
            }
            counts.insert((cpu, kind.to_string()), count);
        }
        cpus.sort_unstable();
        let exits = kinds
            .into_iter()
            .map(|k| {
                let per_cpu = cpus
                    .iter()
                    .map(|&c| counts.get(&(c, k.clone())).copied().unwrap_or(0))
                    .collect();
                (k, per_cpu)
            })
            .collect();
        Ok(Self { cpus, exits })
    }

    /// A table: one row per exit kind that happened (all with `all`), one column per CPU and
    /// a total.
    pub fn human(&self, all: bool) -> String {
        let mut out = String::new();
        let _ = write!(out, "{:<20}", "exit");
        for cpu in &self.cpus {
            let _ = write!(out, " {:>12}", format!("cpu{cpu}"));
        }
        let _ = writeln!(out, " {:>12}", "total");
        for (kind, per_cpu) in &self.exits {
            let total: u64 = per_cpu.iter().sum();
            if total == 0 && !all {
                continue;
            }
            let _ = write!(out, "{kind:<20}");
            for n in per_cpu {
                let _ = write!(out, " {n:>12}");
            }
            let _ = writeln!(out, " {total:>12}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# cpu exit count\n0 cpuid 12\n0 rdmsr 0\n1 cpuid 5\n1 rdmsr 2\n";

    #[test]
    fn parses_and_tabulates() {
        let s = Stats::parse(TEXT).unwrap();
        assert_eq!(s.cpus, vec![0, 1]);
        assert_eq!(
            s.exits,
            vec![("cpuid".into(), vec![12, 5]), ("rdmsr".into(), vec![0, 2])]
        );
        let table = s.human(false);
        assert!(table.lines().nth(1).unwrap().ends_with("17"), "{table}");
        assert_eq!(table.lines().count(), 3);
    }

    #[test]
    fn hides_zero_rows_unless_asked() {
        let s = Stats::parse("0 cpuid 1\n0 hlt 0\n").unwrap();
        assert!(!s.human(false).contains("hlt"));
        assert!(s.human(true).contains("hlt"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Stats::parse("0 cpuid\n"),
            Err(StatsError::Parse(1, _))
        ));
        assert!(matches!(
            Stats::parse("x cpuid 1\n"),
            Err(StatsError::Parse(1, _))
        ));
        assert!(matches!(
            Stats::parse("# c\n0 cpuid -1\n"),
            Err(StatsError::Parse(2, _))
        ));
    }

    #[test]
    fn missing_file_says_what_to_do() {
        let e = Stats::read(Path::new("/nonexistent/keel/stats")).unwrap_err();
        assert!(e.to_string().contains("mount -t debugfs"));
    }
}
