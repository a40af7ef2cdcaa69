//! The CPUID leaves a DomU sees at 0x40000000: Xen's ("XenVMMXenVMM"), as Xen's
//! `cpuid_hypervisor_leaves` fills them for an HVM/PVH guest (xen/arch/x86/cpuid.c), not
//! Keel's (Dom0's view). Linux finds Xen by the highest signature base and reads base+1 (the
//! version), base+3 and base+4 unchecked once it has (arch/x86/xen/enlighten_hvm.c
//! `init_hvm_pv_info`, time.c).

use super::abi::cpuid::*;

/// The Xen interface version Keel offers DomUs: 4.19.
pub const VERSION: (u32, u32) = (4, 19);

/// The MSR a guest writes a page's guest-physical address to, for Keel to fill it with the
/// hypercall stubs (CPUID base+2 EBX).
pub const HYPERCALL_PAGE_MSR: u32 = 0x4000_0000;

/// Who asks: the domain's and the vCPU's ids.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    /// The domain id.
    pub domid: u16,
    /// The vCPU id.
    pub vcpu: u32,
}

/// The hypervisor leaves (0x40000000-0x4fffffff) as a DomU sees them; `None` for any other
/// leaf. Only the first base is Xen's; the other bases are empty, so no other signature sits
/// above it.
pub fn hypervisor_leaf(leaf: u32, subleaf: u32, ids: Ids) -> Option<[u32; 4]> {
    if !(0x4000_0000..0x5000_0000).contains(&leaf) {
        return None;
    }
    let Some(n) = leaf.checked_sub(FIRST_LEAF).filter(|&n| n < 0x100) else {
        return Some([0; 4]);
    };
    Some(match n {
        LEAF_SIGNATURE => [
            FIRST_LEAF + MAX_NUM_LEAVES,
            SIGNATURE_EBX,
            SIGNATURE_ECX,
            SIGNATURE_EDX,
        ],
        LEAF_VERSION => [(VERSION.0 << 16) | VERSION.1, 0, 0, 0],
        // One hypercall page, installed through the MSR.
        LEAF_HYPERCALL => [1, HYPERCALL_PAGE_MSR, 0, 0],
        // TSC: not emulated (RDTSC runs natively), default mode.
        LEAF_TIME => [0; 4],
        LEAF_HVM if subleaf == 0 => [
            HVM_VCPU_ID_PRESENT | HVM_DOMID_PRESENT,
            ids.vcpu,
            u32::from(ids.domid),
            0,
        ],
        _ => [0; 4],
    })
}

/// The stubs of a hypercall page: 128 of them, 32 bytes apart.
pub const HYPERCALL_STUBS: usize = 128;

/// Hypercall `n`'s stub in a hypercall page (at `32 * n`): it loads `n` into EAX, makes the
/// hypercall with the vendor's instruction (`vmmcall` on AMD, `vmcall` on Intel: Keel takes
/// both) and returns; the rest is INT3.
pub fn hypercall_stub(n: u32, amd: bool) -> [u8; 32] {
    let mut stub = [0xccu8; 32];
    stub[0] = 0xb8; // mov $n, %eax
    stub[1..5].copy_from_slice(&n.to_le_bytes());
    stub[5..8].copy_from_slice(if amd {
        &[0x0f, 0x01, 0xd9]
    } else {
        &[0x0f, 0x01, 0xc1]
    });
    stub[8] = 0xc3; // ret
    stub
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: Ids = Ids { domid: 7, vcpu: 3 };

    #[test]
    fn xen_leaves() {
        let sig = hypervisor_leaf(0x4000_0000, 0, IDS).unwrap();
        let mut s = [0u8; 12];
        for (i, r) in sig[1..].iter().enumerate() {
            s[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"XenVMMXenVMM");
        assert_eq!(sig[0], 0x4000_0005);
        assert_eq!(
            hypervisor_leaf(0x4000_0001, 0, IDS).unwrap()[0],
            0x0004_0013
        );
        assert_eq!(
            hypervisor_leaf(0x4000_0002, 0, IDS).unwrap(),
            [1, 0x4000_0000, 0, 0]
        );
        let hvm = hypervisor_leaf(0x4000_0004, 0, IDS).unwrap();
        assert_eq!(hvm[0] & HVM_VCPU_ID_PRESENT, HVM_VCPU_ID_PRESENT);
        assert_eq!((hvm[1], hvm[2]), (3, 7));
        // Other bases are empty: no signature above Xen's.
        assert_eq!(hypervisor_leaf(0x4000_0100, 0, IDS), Some([0; 4]));
        assert_eq!(hypervisor_leaf(0x4fff_ffff, 0, IDS), Some([0; 4]));
        assert_eq!(hypervisor_leaf(0x3fff_ffff, 0, IDS), None);
        assert_eq!(hypervisor_leaf(0x8000_0000, 0, IDS), None);
    }

    #[test]
    fn page_stubs() {
        let s = hypercall_stub(17, true);
        assert_eq!(&s[..9], &[0xb8, 17, 0, 0, 0, 0x0f, 0x01, 0xd9, 0xc3]);
        assert!(s[9..].iter().all(|&b| b == 0xcc));
        assert_eq!(&hypercall_stub(0, false)[5..8], &[0x0f, 0x01, 0xc1]);
        assert_eq!(&hypercall_stub(127, false)[1..5], &127u32.to_le_bytes());
    }
}
