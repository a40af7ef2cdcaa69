//! Sizes and addresses as the command line spells them, and sizes as keelctl prints them.

/// One KiB, MiB, GiB.
pub const KIB: u64 = 1 << 10;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Parses a number: decimal, or hexadecimal with `0x`; `_` may separate digits.
pub fn parse_number(text: &str) -> Result<u64, String> {
    let t = text.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    parsed.map_err(|_| format!("'{text}' is not a number (decimal, or hexadecimal with 0x)"))
}

/// Parses a size: a number of bytes with an optional binary suffix, `K`, `M`, `G` (or `KiB`,
/// `MiB`, `GiB`, any case): `16M`, `512K`, `0x1000`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, unit) = [("kib", KIB), ("mib", MIB), ("gib", GIB)]
        .into_iter()
        .chain([("k", KIB), ("m", MIB), ("g", GIB), ("b", 1)])
        .find_map(|(suffix, unit)| {
            // A hexadecimal number may end in "b": only the decimal form takes a suffix then.
            let digits = lower.strip_suffix(suffix)?;
            (!lower.starts_with("0x")).then_some((&t[..digits.len()], unit))
        })
        .unwrap_or((t, 1));
    let n = parse_number(digits).map_err(|_| {
        format!("'{text}' is not a size (a number of bytes, or with K, M or G: 16M, 512K, 1G)")
    })?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a guest memory size: a nonzero multiple of 4 KiB, at most the module's limit per
/// domain.
pub fn parse_memory_size(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    let page = u64::from(keel_sys::uapi::KEEL_PAGE_SIZE);
    let max = keel_sys::uapi::KEEL_MAX_DOMAIN_MEMORY;
    if size == 0 {
        return Err("the guest memory size must not be zero (e.g. 16M)".into());
    }
    if size % page != 0 {
        return Err(format!(
            "the guest memory size must be a multiple of 4 KiB ({text} is {size} bytes)"
        ));
    }
    if size > max {
        return Err(format!(
            "the guest memory size is at most {} ({text} is more)",
            human_size(max)
        ));
    }
    Ok(size)
}

/// Parses a guest-physical address.
pub fn parse_address(text: &str) -> Result<u64, String> {
    parse_number(text)
}

/// A size for people: `16 MiB`, `4 KiB`, `1.5 GiB`, `100 bytes`, `1 byte`.
pub fn human_size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            let whole = bytes / unit;
            let tenths = (bytes % unit) * 10 / unit;
            return if bytes.is_multiple_of(unit) {
                format!("{whole} {name}")
            } else {
                format!("{whole}.{tenths} {name}")
            };
        }
    }
    if bytes == 1 {
        "1 byte".into()
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M"), Ok(16 * MIB));
        assert_eq!(parse_size("16m"), Ok(16 * MIB));
        assert_eq!(parse_size("16MiB"), Ok(16 * MIB));
        assert_eq!(parse_size("512K"), Ok(512 * KIB));
        assert_eq!(parse_size("2G"), Ok(2 * GIB));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096b"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("0xb"), Ok(11));
        assert_eq!(parse_size("1_048_576"), Ok(MIB));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("12Q").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999G")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("16M"), Ok(16 * MIB));
        assert!(parse_memory_size("0")
            .unwrap_err()
            .contains("must not be zero"));
        assert!(parse_memory_size("1000")
            .unwrap_err()
            .contains("multiple of 4 KiB"));
        assert!(parse_memory_size("65G")
            .unwrap_err()
            .contains("at most 64 GiB"));
        assert_eq!(parse_memory_size("64G"), Ok(64 * GIB));
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("0x7c00"), Ok(0x7c00));
        assert_eq!(parse_address("1048576"), Ok(0x10_0000));
        assert_eq!(parse_address("0x10_0000"), Ok(0x10_0000));
        assert!(parse_address("0xg").is_err());
        assert!(parse_address("1M").is_err());
    }

    #[test]
    fn printing() {
        assert_eq!(human_size(16 * MIB), "16 MiB");
        assert_eq!(human_size(1536 * MIB), "1.5 GiB");
        assert_eq!(human_size(100), "100 bytes");
        assert_eq!(human_size(1), "1 byte");
    }
}
