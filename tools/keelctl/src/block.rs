//! `block-attach`, `block-detach` and `block-list`, as xl's (tools/xl/xl_block.c): each asks
//! the domain's keel-domd, which serves the disks, over its control socket.
use std::time::Duration;

use keel_domd::{
    files::Dirs,
    proto::{self, BlockInfo, Reply, Request, DETACH_TIMEOUT},
};
use keel_sys::KeelDev;

use crate::control::{find_domd, REQUEST_TIMEOUT};

/// Sends `request` to the keel-domd of the domain `arg` names; its reply when it carried the
/// request out, its error otherwise.
pub(crate) fn ask(
    dev: &KeelDev,
    dirs: &Dirs,
    arg: &str,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, String> {
    let name = find_domd(dev, dirs, arg)?;
    let (reply, _, _) = proto::request(&dirs.socket(&name), request, timeout)
        .map_err(|e| format!("domain {name}: {e}"))?;
    if reply.ok {
        return Ok(reply);
    }
    let error = reply.error.unwrap_or_else(|| "refused".into());
    // A keel-domd started before these requests existed reads no JSON request.
    if error.starts_with("unknown request") {
        return Err(format!(
            "domain {name}: its keel-domd is older than this keelctl and has no {} \
             (the domain must be started again to get it)",
            request.word()
        ));
    }
    Err(error)
}

/// `keelctl block-attach`: the spec's strings are one spec, as xl joins them.
pub fn attach(dev: &KeelDev, dirs: &Dirs, arg: &str, specs: &[String]) -> Result<(), String> {
    let spec = specs.join(",");
    // Checked here too, so that a typo is reported without asking the domain.
    keel_xlcfg::Disk::parse(&spec).map_err(|e| format!("disk spec `{spec}': {e}"))?;
    ask(
        dev,
        dirs,
        arg,
        &Request::BlockAttach { spec },
        REQUEST_TIMEOUT,
    )
    .map(drop)
}

/// `keelctl block-detach`: waits as long as the domain's process waits for the guest, and
/// a little more.
pub fn detach(
    dev: &KeelDev,
    dirs: &Dirs,
    arg: &str,
    device: &str,
    force: bool,
) -> Result<(), String> {
    let request = Request::BlockDetach {
        device: device.to_owned(),
        force,
    };
    ask(dev, dirs, arg, &request, DETACH_TIMEOUT + REQUEST_TIMEOUT).map(drop)
}

/// `keelctl block-list`: the disks of one domain.
pub fn list(dev: &KeelDev, dirs: &Dirs, arg: &str) -> Result<Vec<BlockInfo>, String> {
    let reply = ask(dev, dirs, arg, &Request::BlockList, REQUEST_TIMEOUT)?;
    Ok(reply.disks.unwrap_or_default())
}

/// xl's table: `Vdev BE handle state evt-ch ring-ref BE-path`, with xl's widths and its -1
/// for a missing number (Vdev is the device number, handle the guest's domid, state the
/// frontend's).
pub fn human(disks: &[BlockInfo]) -> String {
    let n = |v: Option<u32>| v.map_or(-1, i64::from);
    let row = |cells: [String; 7]| {
        let [vdev, be, handle, state, evtch, rref, path] = cells;
        format!("{vdev:<5} {be:<3} {handle:<6} {state:<5} {evtch:<6} {rref:<8} {path:<30}")
            .trim_end()
            .to_owned()
            + "\n"
    };
    let mut out = row([
        "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path",
    ]
    .map(String::from));
    for d in disks {
        out.push_str(&row([
            d.devid.to_string(),
            d.backend_id.to_string(),
            d.frontend_id.to_string(),
            n(d.state).to_string(),
            n(d.event_channel).to_string(),
            n(d.ring_ref).to_string(),
            d.backend_path.clone(),
        ]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(devid: u32, state: u32, ring: Option<(u32, u32)>, queues: u32) -> BlockInfo {
        BlockInfo {
            vdev: "xvdb".into(),
            devid,
            backend_id: 0,
            frontend_id: 3,
            state: Some(state),
            backend_state: Some(state),
            event_channel: ring.map(|r| r.0),
            ring_ref: ring.map(|r| r.1),
            queues,
            backend_path: format!("/local/domain/0/backend/vbd/3/{devid}"),
            frontend_path: format!("/local/domain/3/device/vbd/{devid}"),
            target: "/srv/b.img".into(),
            read_only: false,
        }
    }

    #[test]
    fn xl_columns() {
        let text = human(&[
            disk(51712, 4, Some((13, 8)), 1),
            disk(51728, 4, None, 2),
            disk(51744, 1, None, 0),
        ]);
        assert_eq!(
            text,
            "Vdev  BE  handle state evt-ch ring-ref BE-path\n\
             51712 0   3      4     13     8        /local/domain/0/backend/vbd/3/51712\n\
             51728 0   3      4     -1     -1       /local/domain/0/backend/vbd/3/51728\n\
             51744 0   3      1     -1     -1       /local/domain/0/backend/vbd/3/51744\n"
        );
        // No disks: the header alone, as xl prints it.
        assert_eq!(
            human(&[]),
            "Vdev  BE  handle state evt-ch ring-ref BE-path\n"
        );
    }

    #[test]
    fn wide_numbers_keep_the_columns_apart() {
        let mut d = disk(268439552, 4, Some((1023, 4294967295)), 1);
        d.state = None;
        let text = human(&[d]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            [
                "268439552",
                "0",
                "3",
                "-1",
                "1023",
                "4294967295",
                "/local/domain/0/backend/vbd/3/268439552"
            ]
        );
    }
}
