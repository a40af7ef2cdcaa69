//! `keelctl create`: checks an xl.cfg and starts the domain's keel-domd, which builds the
//! domain, reports back through a pipe and detaches.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use clap::Args;
use keel_domd::{
    files::Dirs,
    guest::{check_config, host_memory, name_in_use},
};
use keel_sys::KeelDev;
use keel_xlcfg::DomainConfig;

/// `keelctl create`'s arguments.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Attach the console once the domain is created (as `keelctl console`).
    #[arg(short = 'c')]
    pub console: bool,
    /// Leave the domain paused (`keelctl unpause` starts it).
    #[arg(short = 'p')]
    pub paused: bool,
    /// The xl.cfg file.
    pub config: PathBuf,
    /// KEY=VALUE settings that override the file's, applied in order, as xl's.
    pub overrides: Vec<String>,
}

/// Where keel-domd is: `KEEL_DOMD` when set, else next to this executable, else on PATH.
pub fn find_domd() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("KEEL_DOMD").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("keel-domd")));
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("keel-domd"))
                .collect()
        })
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "cannot find keel-domd (looked next to keelctl and in PATH; KEEL_DOMD names it)"
                .to_string()
        })
}

/// What keel-domd reported on its stdout: the domid, or its error.
pub fn parse_report(out: &str) -> Result<u32, Option<String>> {
    let line = out.lines().next().unwrap_or_default();
    if let Some(id) = line.strip_prefix("ok ") {
        return id
            .trim()
            .parse()
            .map_err(|_| Some(format!("keel-domd said {line:?}")));
    }
    if let Some(e) = line.strip_prefix("error: ") {
        return Err(Some(e.to_string()));
    }
    Err(None)
}

/// Reads and checks the config the way keel-domd will, before starting it: the config's
/// own errors, its files and its memory against the host's. Prints the config's warnings.
pub fn check(args: &CreateArgs) -> Result<DomainConfig, String> {
    let cwd =
        std::env::current_dir().map_err(|e| format!("cannot read the working directory: {e}"))?;
    let cfg = DomainConfig::load(&args.config, &args.overrides, &cwd).map_err(|e| e.to_string())?;
    for w in &cfg.warnings {
        eprintln!("keelctl: warning: {w}");
    }
    check_config(&cfg, host_memory())?;
    Ok(cfg)
}

/// Runs `keelctl create`; returns the new domain's name and id.
pub fn create(args: &CreateArgs, device: &Path) -> Result<(String, u32), String> {
    // The config's own problems first: they need no module.
    let cfg = check(args)?;
    let dev = KeelDev::open(device).map_err(|e| crate::error_text(&e))?;
    if let Some(id) = name_in_use(&dev, &cfg.name).map_err(|e| e.to_string())? {
        return Err(format!(
            "a domain named '{}' already exists (id {id})",
            cfg.name
        ));
    }
    drop(dev);
    Dirs::from_env().clean_stale();
    let domd = find_domd()?;
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&domd);
    cmd.arg("--device").arg(device);
    if args.paused {
        cmd.arg("-p");
    }
    cmd.arg(cwd.join(&args.config))
        .arg("--")
        .args(&args.overrides)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", domd.display()))?;
    let mut out = String::new();
    // keel-domd closes its stdout when it detaches or exits.
    let _ = child.stdout.take().expect("piped").read_to_string(&mut out);
    match parse_report(&out) {
        Ok(domid) => Ok((cfg.name, domid)),
        Err(e) => {
            let status = child.wait().map_err(|e| e.to_string())?;
            Err(e.unwrap_or_else(|| {
                format!(
                    "keel-domd ended ({status}) without reporting whether it created the domain"
                )
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, cfg: &str, overrides: &[&str]) -> CreateArgs {
        let path = dir.join("d.cfg");
        std::fs::write(&path, cfg).unwrap();
        CreateArgs {
            console: false,
            paused: false,
            config: path,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keelctl-create-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reports() {
        assert_eq!(parse_report("ok 7\n"), Ok(7));
        assert_eq!(
            parse_report("error: a domain named 'a' already exists\n"),
            Err(Some("a domain named 'a' already exists".into()))
        );
        assert_eq!(parse_report(""), Err(None));
        assert!(matches!(parse_report("ok x"), Err(Some(_))));
    }

    #[test]
    fn refusals_name_the_problem() {
        let d = tmp("refuse");
        let k = d.join("vmlinux");
        std::fs::write(&k, b"\x7fELF but not really").unwrap();
        let base = format!("name='t'\ntype='pvh'\nkernel='{}'\n", k.display());
        let missing = check(&args(
            &d,
            "name='t'\ntype='pvh'\nkernel='/no/such/vmlinux'\n",
            &[],
        ))
        .unwrap_err();
        assert!(
            missing.starts_with("cannot read the kernel /no/such/vmlinux (`kernel'):"),
            "{missing}"
        );
        let e = check(&args(&d, &base, &["vcpus=0"])).unwrap_err();
        assert!(
            e.contains("`vcpus' = 0: a domain needs at least 1 vCPU"),
            "{e}"
        );
        let e = check(&args(&d, &base, &["memory=1099511627776"])).unwrap_err();
        assert!(e.contains("more than the host's"), "{e}");
        let e = check(&args(&d, &base, &["type=\"hvm\""])).unwrap_err();
        assert!(e.contains("Keel runs PVH guests only"), "{e}");
        let e = check(&args(&d, &base, &["memory=lots"])).unwrap_err();
        assert!(e.contains("memory"), "{e}");
        assert_eq!(check(&args(&d, &base, &[])).unwrap().name, "t");
        let _ = std::fs::remove_dir_all(&d);
    }
}
