//! Where a domain's process keeps its files: the control socket and the state file under the
//! run directory (`/run/keel`), the console log under the log directory (`/var/log/keel`).
//! Both are named after the domain's name, which is unique among live domains and survives a
//! restart (the domid does not). `KEEL_RUN_DIR` and `KEEL_LOG_DIR` move them (for tests).
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The default run directory.
pub const RUN_DIR: &str = "/run/keel";
/// The default log directory.
pub const LOG_DIR: &str = "/var/log/keel";

/// The two directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    /// Sockets and state files.
    pub run: PathBuf,
    /// Console logs.
    pub log: PathBuf,
}

impl Dirs {
    /// The defaults, or `KEEL_RUN_DIR` / `KEEL_LOG_DIR` when set.
    pub fn from_env() -> Self {
        let dir = |var, default| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Self {
            run: dir("KEEL_RUN_DIR", RUN_DIR),
            log: dir("KEEL_LOG_DIR", LOG_DIR),
        }
    }

    /// The control socket of domain `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.sock"))
    }

    /// The state file of domain `name`.
    pub fn state(&self, name: &str) -> PathBuf {
        self.run.join(format!("{name}.json"))
    }

    /// The console log of domain `name`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log.join(format!("{name}.log"))
    }

    /// Removes the socket and state file of `name` (those that exist).
    pub fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.socket(name));
        let _ = fs::remove_file(self.state(name));
    }

    /// Every state file in the run directory that parses (an absent directory has none).
    pub fn states(&self) -> Vec<StateFile> {
        let Ok(entries) = fs::read_dir(&self.run) else {
            return Vec::new();
        };
        let mut v: Vec<StateFile> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| StateFile::read(&e.path()).ok())
            .collect();
        v.sort_by_key(|s| s.domid);
        v
    }

    /// Removes the files of every domain process that is gone; returns their names.
    pub fn clean_stale(&self) -> Vec<String> {
        let mut gone = Vec::new();
        for s in self.states() {
            if !process_alive(s.pid) {
                self.remove(&s.name);
                gone.push(s.name);
            }
        }
        gone
    }
}

/// What the state file says about a domain's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The domain's name.
    pub name: String,
    /// Its current domid (a restart changes it).
    pub domid: u32,
    /// The keel-domd process serving it.
    pub pid: u32,
    /// The config file it was created from.
    pub config: PathBuf,
}

impl StateFile {
    /// Reads a state file.
    pub fn read(path: &Path) -> io::Result<StateFile> {
        let text = fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Writes it to its place under `dirs`, atomically (a temporary file renamed).
    pub fn write(&self, dirs: &Dirs) -> io::Result<()> {
        let path = dirs.state(&self.name);
        let tmp = dirs.run.join(format!(".{}.json.tmp", self.name));
        let text = serde_json::to_string_pretty(self).expect("plain data serializes");
        fs::write(&tmp, text + "\n")?;
        fs::rename(&tmp, &path)
    }
}

/// Whether `pid` is a keel-domd process that has not finished exiting (a pid reused by
/// another program is not). An exiting process loses its command line (its memory) before
/// its files are closed, which is when its domain and its hold on the module go, and its
/// first thread can be a zombie while others still exit with the files: so this reads the
/// name in `/proc/PID/stat` and the state of every thread, and the process is gone when all
/// of them are zombies (or dead).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(("keel-domd", leader)) = stat_name_state(&stat) else {
        return false;
    };
    let running = |state: char| !matches!(state, 'Z' | 'X' | 'x');
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return running(leader);
    };
    tasks.flatten().any(|t| {
        fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| stat_name_state(&s).map(|(_, state)| running(state)))
            .unwrap_or(false)
    })
}

/// The command name and state of a `/proc/PID/stat` line: `PID (NAME) S ...`, where the
/// name may itself hold spaces and parentheses (the last `)` ends it).
fn stat_name_state(stat: &str) -> Option<(&str, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let state = stat.get(close + 1..)?.trim_start().chars().next()?;
    Some((name, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dirs(tag: &str) -> Dirs {
        let base = std::env::temp_dir().join(format!("keel-domd-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("run")).unwrap();
        Dirs {
            run: base.join("run"),
            log: base.join("log"),
        }
    }

    #[test]
    fn names_files_after_the_domain() {
        let d = Dirs {
            run: "/run/keel".into(),
            log: "/var/log/keel".into(),
        };
        assert_eq!(d.socket("web"), Path::new("/run/keel/web.sock"));
        assert_eq!(d.state("web"), Path::new("/run/keel/web.json"));
        assert_eq!(d.log_file("web"), Path::new("/var/log/keel/web.log"));
    }

    #[test]
    fn state_files_round_trip_and_stale_ones_are_cleaned() {
        let d = temp_dirs("state");
        let s = StateFile {
            name: "a".into(),
            domid: 3,
            pid: u32::MAX, // no such process
            config: "/etc/keel/a.cfg".into(),
        };
        s.write(&d).unwrap();
        fs::write(d.socket("a"), "").unwrap();
        assert_eq!(StateFile::read(&d.state("a")).unwrap(), s);
        assert_eq!(d.states(), vec![s]);
        assert_eq!(d.clean_stale(), vec!["a".to_string()]);
        assert!(!d.state("a").exists() && !d.socket("a").exists());
        assert!(d.states().is_empty());
    }

    #[test]
    fn only_a_keel_domd_counts_as_alive() {
        // The test binary is alive but is not keel-domd.
        assert!(!process_alive(std::process::id()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn a_keel_domd_is_alive_until_it_is_a_zombie() {
        use std::os::unix::process::CommandExt as _;
        // A program named keel-domd: sleep(1) through a link of that name (the kernel names
        // a process after the path it ran; argv[0] stays "sleep" for a multi-call binary).
        let dir = temp_dirs("alive").run;
        let bin = dir.join("keel-domd");
        let Some(sleep) = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        else {
            eprintln!("SKIP: no sleep(1) to run as keel-domd");
            return;
        };
        std::os::unix::fs::symlink(sleep, &bin).unwrap();
        let mut child = std::process::Command::new(&bin)
            .arg0("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(process_alive(child.id()));
        // SAFETY: kill with our own child's pid, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let stat = format!("/proc/{}/stat", child.id());
        for _ in 0..500 {
            let line = fs::read_to_string(&stat).unwrap();
            if stat_name_state(&line).is_some_and(|(_, s)| s == 'Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process_alive(child.id()), "a zombie is gone");
        child.wait().unwrap();
        assert!(!process_alive(child.id()));
    }

    #[test]
    fn stat_lines_give_name_and_state() {
        assert_eq!(
            stat_name_state("42 (keel-domd) R 1 42 42 0 -1"),
            Some(("keel-domd", 'R'))
        );
        assert_eq!(stat_name_state("7 (a) b) (c) Z 1"), Some(("a) b) (c", 'Z')));
        assert_eq!(stat_name_state("7 keel-domd R"), None);
        assert_eq!(stat_name_state("7 (keel-domd)"), None);
        let own = fs::read_to_string("/proc/thread-self/stat").unwrap();
        assert_eq!(stat_name_state(&own).map(|(_, s)| s), Some('R'));
        // A child that exited and is not reaped yet: a zombie, under its name.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let mut state = None;
        for _ in 0..500 {
            let line = fs::read_to_string(&stat).unwrap();
            state = stat_name_state(&line).map(|(n, s)| (n.to_string(), s));
            if state.as_ref().is_some_and(|(_, s)| *s == 'Z') {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(state, Some(("true".to_string(), 'Z')));
        child.wait().unwrap();
    }
}
