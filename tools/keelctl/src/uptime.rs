//! `keelctl uptime`: how long each domain has run, as `xl uptime` prints it. A DomU's start
//! is its `/vm/<uuid>/start_time` in XenStore (keel-domd writes it when it builds the domain,
//! anew on a restart, as libxl does); Domain-0's is the host's boot (`/proc/uptime`).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_sys::DomainInfo;
use keel_xenstored::client::{Client, TxId};

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The domain's name.
    pub name: String,
    /// Its id.
    pub domid: u32,
    /// How long it has run, if known (a domain without XenStore has no start time).
    pub uptime: Option<Duration>,
}

/// Reads a start time as libxl writes it (`secs.hundredths`), or `None`.
pub fn parse_start_time(text: &str) -> Option<Duration> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: u64 = secs.parse().ok()?;
    let hundredths: u64 = match frac {
        "" => 0,
        f if f.len() <= 2 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<u64>().ok()? * if f.len() == 1 { 10 } else { 1 }
        }
        _ => return None,
    };
    Some(Duration::from_millis(
        secs.checked_mul(1000)? + hundredths * 10,
    ))
}

/// An uptime as xl words it: `H:MM:SS`, after `N day(s), ` past a day; `short` drops the
/// seconds.
pub fn text(uptime: Duration, short: bool) -> String {
    let s = uptime.as_secs();
    let (days, hours, mins, secs) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let clock = if short {
        format!("{hours:2}:{mins:02}")
    } else {
        format!("{hours:2}:{mins:02}:{secs:02}")
    };
    match days {
        0 => clock,
        1 => format!("1 day, {clock}"),
        n => format!("{n} days, {clock}"),
    }
}

/// The table: a header, then Name (33 wide), ID (4), Uptime; `-` for an unknown one.
pub fn human(rows: &[Row]) -> String {
    let mut out = format!("{:<33} {:>4} {}\n", "Name", "ID", "Uptime");
    for r in rows {
        let up = r.uptime.map_or_else(|| "-".to_string(), |u| text(u, false));
        out += &format!("{:<33} {:>4} {}\n", r.name, r.domid, up);
    }
    out
}

/// `-s`: one line a domain, as `uptime(1)` words it: the time now, then how long it has run.
pub fn short(rows: &[Row], now: &str) -> String {
    rows.iter()
        .map(|r| {
            let up = r.uptime.map_or_else(|| "-".to_string(), |u| text(u, true));
            format!("{now} up {up}, {} ({})\n", r.name, r.domid)
        })
        .collect()
}

/// How long the host has been up (`/proc/uptime`).
pub fn host_uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// How long `d` has run: now less its `start_time` (through its home's `vm` link); `None`
/// when XenStore has none for it.
pub fn domain_uptime(xs: &mut Client, d: &DomainInfo) -> Option<Duration> {
    let vm = xs
        .read_string(TxId::NONE, &format!("/local/domain/{}/vm", d.domid))
        .ok()?;
    let start = xs
        .read_string(TxId::NONE, &format!("{vm}/start_time"))
        .ok()?;
    let start = parse_start_time(&start)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    // A start in the future (the clock set back) is no uptime at all.
    Some(now.saturating_sub(start))
}

/// Dom0's name, as xl lists it.
pub const DOM0_NAME: &str = "Domain-0";

/// The rows for `names` (each a name or an id; `Domain-0` or 0 is Dom0), or for Dom0 and
/// every domain in `all` when there are none. Without XenStore (`xs`), no DomU's start time
/// is known.
pub fn rows(
    all: &[DomainInfo],
    names: &[String],
    mut xs: Option<&mut Client>,
) -> Result<Vec<Row>, String> {
    let dom0 = || Row {
        name: DOM0_NAME.into(),
        domid: 0,
        uptime: host_uptime(),
    };
    let mut picked = Vec::new();
    if names.is_empty() {
        picked.extend(all.iter());
    } else {
        for n in names {
            if n != DOM0_NAME && n != "0" {
                picked.push(crate::control::resolve(all, n)?);
            }
        }
    }
    let mut rows = Vec::new();
    if names.is_empty() || names.iter().any(|n| n == DOM0_NAME || n == "0") {
        rows.push(dom0());
    }
    for d in picked {
        rows.push(Row {
            name: d.name.clone(),
            domid: d.domid,
            uptime: xs.as_deref_mut().and_then(|xs| domain_uptime(xs, d)),
        });
    }
    Ok(rows)
}

/// The time of day, `HH:MM:SS`, for `-s` (UTC when the local zone is unknown: keelctl reads
/// no zone files).
pub fn time_of_day() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{:02}:{:02}:{:02}",
        now / 3600 % 24,
        now / 60 % 60,
        now % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_as_libxl_writes_them() {
        assert_eq!(
            parse_start_time("1765000000.12"),
            Some(Duration::from_millis(1_765_000_000_120))
        );
        assert_eq!(parse_start_time("5.5"), Some(Duration::from_millis(5_500)));
        assert_eq!(parse_start_time("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_start_time("5.05"), Some(Duration::from_millis(5_050)));
        for bad in ["", "x", "5.123", "5.x", "-5", ".5", "99999999999999999999"] {
            assert_eq!(parse_start_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uptimes_as_xl_words_them() {
        let t = |s| Duration::from_secs(s);
        assert_eq!(text(t(0), false), " 0:00:00");
        assert_eq!(text(t(3_725), false), " 1:02:05");
        assert_eq!(text(t(86_400 + 36_000 + 61), false), "1 day, 10:01:01");
        assert_eq!(text(t(3 * 86_400 + 59), false), "3 days,  0:00:59");
        assert_eq!(text(t(3_725), true), " 1:02");
        assert_eq!(text(t(2 * 86_400 + 3_725), true), "2 days,  1:02");
    }

    #[test]
    fn which_domains() {
        let all = [DomainInfo {
            domid: 4,
            name: "web".into(),
            ..Default::default()
        }];
        let ids = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            rows(&all, &names, None).map(|r| {
                r.iter()
                    .map(|r| (r.name.clone(), r.domid, r.uptime.is_some()))
                    .collect::<Vec<_>>()
            })
        };
        let dom0 = (DOM0_NAME.to_string(), 0, host_uptime().is_some());
        let web = ("web".to_string(), 4, false);
        assert_eq!(ids(&[]), Ok(vec![dom0.clone(), web.clone()]));
        assert_eq!(ids(&["4"]), Ok(vec![web.clone()]));
        assert_eq!(ids(&["web", "Domain-0"]), Ok(vec![dom0.clone(), web]));
        assert_eq!(ids(&["0"]), Ok(vec![dom0]));
        assert_eq!(ids(&["mail"]), Err("no domain named 'mail'".to_string()));
    }

    #[test]
    fn the_table_and_the_short_form() {
        let rows = [
            Row {
                name: "Domain-0".into(),
                domid: 0,
                uptime: Some(Duration::from_secs(90)),
            },
            Row {
                name: "web".into(),
                domid: 12,
                uptime: None,
            },
        ];
        let table = human(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], format!("{:<33}   ID Uptime", "Name"));
        assert_eq!(lines[1], format!("{:<33}    0  0:01:30", "Domain-0"));
        assert_eq!(lines[2], format!("{:<33}   12 -", "web"));
        assert_eq!(
            short(&rows, "10:00:00"),
            "10:00:00 up  0:01, Domain-0 (0)\n10:00:00 up -, web (12)\n"
        );
    }
}
