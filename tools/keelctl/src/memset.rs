//! `keelctl mem-set`: a DomU's memory target, as `xl mem-set` sets it (libxl's
//! `libxl_set_memory_target`): `memory/target` in its XenStore home, in KiB, which the
//! guest's balloon driver (Linux's xen-balloon) watches to give memory back or take it again.
use keel_xenstored::{
    client::{Client, Error as XsError, TxId},
    Errno,
};

use crate::{control::Domains, units::human_size, xenstore::op_error};

/// Parses a memory amount as `xl mem-set` does (xl's `parse_mem_size_kb`): a decimal number
/// of MiB, or with one suffix letter, `b` bytes (rounded down to KiB), `k` KiB, `m` MiB, `g`
/// GiB, `t` TiB, any case. Returns KiB.
pub fn parse_kib(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "'{text}' is not a memory size: a number of MiB, or with a suffix b, k, m, g or t \
             (e.g. 512, 512m, 2g)"
        )
    };
    let digits_end = text
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let kib = match suffix.to_ascii_lowercase().as_str() {
        "b" => Some(n >> 10),
        "k" => Some(n),
        "" | "m" => n.checked_mul(1 << 10),
        "g" => n.checked_mul(1 << 20),
        "t" => n.checked_mul(1 << 30),
        _ => return Err(bad()),
    };
    kib.ok_or_else(|| format!("'{text}' is too large"))
}

/// Checks a new target against the domain's `memory/static-max` (both KiB).
pub fn check_target(label: &str, target_kib: u64, static_max_kib: u64) -> Result<(), String> {
    if target_kib == 0 {
        return Err(format!(
            "{label}: a memory target of 0 would take all its memory away"
        ));
    }
    if target_kib > static_max_kib {
        return Err(format!(
            "{label}: {} is more than its maximum memory, {} (memory/static-max = {} KiB)",
            human_size(target_kib.saturating_mul(1024)),
            human_size(static_max_kib.saturating_mul(1024)),
            static_max_kib
        ));
    }
    Ok(())
}

/// `keelctl mem-set NAME|ID SIZE`.
pub fn run(domains: &Domains, xs: &mut Client, arg: &str, size: &str) -> Result<(), String> {
    let target = parse_kib(size)?;
    let d = domains.find(xs, arg)?;
    let label = format!("domain {} (id {})", d.name, d.domid);
    let home = format!("/local/domain/{}", d.domid);
    let max_path = format!("{home}/memory/static-max");
    let max = match xs.read_string(TxId::NONE, &max_path) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{label}: {max_path} is '{v}', not a number of KiB"))?,
        Err(XsError::Xs(Errno::ENOENT)) => {
            return Err(format!(
                "{label} has no {max_path}: it is not a Xen PVH domain, or its keel-domd did \
                 not write its XenStore nodes"
            ))
        }
        Err(e) => return Err(op_error("read", &max_path, &e)),
    };
    check_target(&label, target, max)?;
    let path = format!("{home}/memory/target");
    xs.write(TxId::NONE, &path, target.to_string())
        .map_err(|e| op_error("write", &path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_xl_reads_them() {
        assert_eq!(parse_kib("512"), Ok(512 * 1024));
        assert_eq!(parse_kib("512m"), Ok(512 * 1024));
        assert_eq!(parse_kib("512M"), Ok(512 * 1024));
        assert_eq!(parse_kib("2g"), Ok(2 << 20));
        assert_eq!(parse_kib("1t"), Ok(1 << 30));
        assert_eq!(parse_kib("4096k"), Ok(4096));
        assert_eq!(parse_kib("4097b"), Ok(4));
        assert_eq!(parse_kib("0"), Ok(0));
        for bad in ["", "m", "1.5g", "12Q", "12mb", "-1", " 1", "1 "] {
            assert!(
                parse_kib(bad).unwrap_err().contains("is not a memory size"),
                "{bad:?}"
            );
        }
        assert!(parse_kib("99999999999999999t")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_kib("999999999999999999999")
            .unwrap_err()
            .contains("not a memory size"));
    }

    #[test]
    fn targets_stay_within_static_max() {
        let label = "domain web (id 3)";
        assert_eq!(check_target(label, 262_144, 262_144), Ok(()));
        assert_eq!(check_target(label, 131_072, 262_144), Ok(()));
        assert_eq!(
            check_target(label, 524_288, 262_144).unwrap_err(),
            "domain web (id 3): 512 MiB is more than its maximum memory, 256 MiB \
             (memory/static-max = 262144 KiB)"
        );
        assert!(check_target(label, 0, 262_144)
            .unwrap_err()
            .contains("target of 0"));
    }
}
