//! Keel's own hypercalls: the calls the module, running in Dom0's kernel, makes to the
//! hypervisor beneath it with VMCALL (Intel) or VMMCALL (AMD).
//!
//! Convention: RAX holds [`MAGIC`] | the call number, RDI and RSI the arguments; the result
//! comes back in RAX. Only Dom0's kernel (CPL 0) may call; any other VMCALL/VMMCALL from Dom0
//! gets #UD, as on a CPU without a hypervisor. (DomU hypercalls use Xen's numbers and are
//! dispatched apart.)

/// The top 32 bits of RAX in a Keel hypercall: "KEEL".
pub const MAGIC: u64 = 0x4b45_454c_0000_0000;

/// Hypercall numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Call {
    /// Is Keel beneath this CPU? Returns [`PONG`].
    Ping = 1,
    /// Leave: hand this CPU back to Dom0 on bare metal. Returns 0, now running natively.
    Leave = 2,
    /// Run a DomU vCPU on this CPU until it exits for Dom0: RDI = the vCPU's state (a kernel
    /// virtual address in Linux's direct map). Returns 0; the state says why the run ended.
    Run = 3,
    /// Testing only: busy-wait in root mode for RDI TSC ticks (at most about a second), so a
    /// test can make an NMI arrive there. Returns 0.
    Spin = 4,
    /// Testing only: RDI = 1 makes WBINVD in Dom0 exit to Keel on this CPU, an exit Keel has no
    /// handler for, so that a test can drive the unexpected-exit path (dump, fault, Dom0 goes
    /// on); RDI = 0 ends it. Returns 0, or [`ENOSYS`] when the CPU cannot intercept WBINVD.
    TestIntercept = 5,
}

/// What [`Call::Ping`] returns.
pub const PONG: u64 = 0x6b65_656c; // "keel"

/// The hypercall result for an unknown call number.
pub const ENOSYS: u64 = (-38i64) as u64;

impl Call {
    /// The RAX value that makes this call.
    pub const fn rax(self) -> u64 {
        MAGIC | self as u64
    }

    /// Decodes RAX; `None` when it is not a Keel hypercall at all, `Some(None)` for a Keel
    /// hypercall with an unknown number.
    pub fn decode(rax: u64) -> Option<Option<Call>> {
        if rax & 0xffff_ffff_0000_0000 != MAGIC {
            return None;
        }
        Some(match rax as u32 {
            1 => Some(Call::Ping),
            2 => Some(Call::Leave),
            3 => Some(Call::Run),
            4 => Some(Call::Spin),
            5 => Some(Call::TestIntercept),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in [
            Call::Ping,
            Call::Leave,
            Call::Run,
            Call::Spin,
            Call::TestIntercept,
        ] {
            assert_eq!(Call::decode(c.rax()), Some(Some(c)));
        }
        assert_eq!(Call::decode(MAGIC | 77), Some(None));
        assert_eq!(Call::decode(1), None);
        assert_eq!(Call::decode(0x4b45_454d_0000_0001), None);
    }
}
