//! `network-attach`, `network-detach` and `network-list`, as xl's (tools/xl/xl_nic.c): each
//! asks the domain's keel-domd, which serves the vifs, over its control socket.
use keel_domd::{
    files::Dirs,
    proto::{NicInfo, Request, DETACH_TIMEOUT},
};
use keel_sys::KeelDev;

use crate::block::ask;
use crate::control::REQUEST_TIMEOUT;

/// `keelctl network-attach`: the spec's strings are one spec, as xl joins them.
pub fn attach(dev: &KeelDev, dirs: &Dirs, arg: &str, specs: &[String]) -> Result<(), String> {
    let spec = specs.join(",");
    // Checked here too, so that a typo is reported without asking the domain.
    keel_xlcfg::Vif::parse(&spec, 0).map_err(|e| format!("vif spec `{spec}': {e}"))?;
    ask(
        dev,
        dirs,
        arg,
        &Request::NetworkAttach { spec },
        REQUEST_TIMEOUT,
    )
    .map(drop)
}

/// `keelctl network-detach`: waits as long as the domain's process waits for the guest.
pub fn detach(
    dev: &KeelDev,
    dirs: &Dirs,
    arg: &str,
    device: &str,
    force: bool,
) -> Result<(), String> {
    let request = Request::NetworkDetach {
        device: device.to_owned(),
        force,
    };
    ask(dev, dirs, arg, &request, DETACH_TIMEOUT + REQUEST_TIMEOUT).map(drop)
}

/// `keelctl network-list`: the vifs of one domain.
pub fn list(dev: &KeelDev, dirs: &Dirs, arg: &str) -> Result<Vec<NicInfo>, String> {
    let reply = ask(dev, dirs, arg, &Request::NetworkList, REQUEST_TIMEOUT)?;
    Ok(reply.nics.unwrap_or_default())
}

/// xl's table: `Idx BE Mac Addr. handle state evt-ch tx-/rx-ring-ref BE-path`, with -1 for
/// a missing number.
pub fn human(nics: &[NicInfo]) -> String {
    let n = |v: Option<u32>| v.map_or(-1, i64::from);
    let row = |cells: [String; 7]| {
        let [idx, be, mac, handle, state, evtch, rings] = cells;
        format!("{idx:<3} {be:<3} {mac:<17} {handle:<6} {state:<5} {evtch:<6} {rings}")
            .trim_end()
            .to_owned()
            + "\n"
    };
    let mut out = row([
        "Idx",
        "BE",
        "Mac Addr.",
        "handle",
        "state",
        "evt-ch",
        "  tx-/rx-ring-ref BE-path",
    ]
    .map(String::from));
    for v in nics {
        out.push_str(&row([
            v.devid.to_string(),
            v.backend_id.to_string(),
            v.mac.clone(),
            v.frontend_id.to_string(),
            n(v.state).to_string(),
            n(v.event_channel).to_string(),
            format!(
                "{:>6}/{:<6}    {}",
                n(v.tx_ring_ref),
                n(v.rx_ring_ref),
                v.backend_path
            ),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xl_columns() {
        let nic = NicInfo {
            devid: 0,
            backend_id: 0,
            mac: "00:16:3e:01:02:03".into(),
            frontend_id: 3,
            state: Some(4),
            backend_state: Some(4),
            event_channel: Some(9),
            tx_ring_ref: Some(768),
            rx_ring_ref: Some(769),
            backend_path: "/local/domain/0/backend/vif/3/0".into(),
            tap: "vif3.0".into(),
            mode: "on bridge xenbr0".into(),
        };
        let mut fresh = nic.clone();
        (fresh.devid, fresh.state, fresh.event_channel) = (1, Some(1), None);
        (fresh.tx_ring_ref, fresh.rx_ring_ref) = (None, None);
        let text = human(&[nic, fresh]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "Idx",
                "BE",
                "Mac",
                "Addr.",
                "handle",
                "state",
                "evt-ch",
                "tx-/rx-ring-ref",
                "BE-path"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "0",
                "0",
                "00:16:3e:01:02:03",
                "3",
                "4",
                "9",
                "768/769",
                "/local/domain/0/backend/vif/3/0"
            ]
        );
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            [
                "1",
                "0",
                "00:16:3e:01:02:03",
                "3",
                "1",
                "-1",
                "-1/-1",
                "/local/domain/0/backend/vif/3/0"
            ]
        );
    }
}
