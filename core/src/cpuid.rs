//! What CPUID returns to Dom0 while Keel runs beneath it.
//!
//! Dom0 sees the hardware's CPUID with three changes: the virtualization extension Keel owns
//! is hidden (CPUID.1:ECX.VMX on Intel, CPUID.80000001h:ECX.SVM and leaf 8000000Ah on AMD), the
//! "hypervisor present" bit (CPUID.1:ECX[31]) is set, as every hypervisor sets it, and the
//! hypervisor range 0x40000000.. holds Keel's leaves:
//!
//! - 0x40000000: EAX = the largest Keel leaf, EBX:ECX:EDX = "KeelKeelKeel";
//! - 0x40000001: EAX = the module version (major << 16 | minor << 8 | patch), EBX = the
//!   `/dev/keel` ABI version.
//!
//! Other leaves of the range read as zero.

use super::caps::{Vendor, CPUID_1_ECX_VMX, CPUID_8000_0001_ECX_SVM};

/// The first leaf of the hypervisor range.
pub const HV_BASE: u32 = 0x4000_0000;
/// The last leaf of the hypervisor range that Keel answers (the rest of 0x400000xx is zero).
pub const HV_LAST: u32 = 0x4000_0001;
/// The signature, as EBX, ECX, EDX of leaf 0x40000000.
pub const SIGNATURE: [u32; 3] = [
    u32::from_le_bytes(*b"Keel"),
    u32::from_le_bytes(*b"Keel"),
    u32::from_le_bytes(*b"Keel"),
];
/// CPUID.1:ECX bit 31: a hypervisor is present.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;

/// CPUID registers: EAX, EBX, ECX, EDX.
pub type Regs = [u32; 4];

/// Keel's identity, reported in its leaves.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// Module version (major, minor, patch).
    pub version: (u16, u16, u16),
    /// `/dev/keel` ABI version.
    pub abi_version: u32,
}

/// Whether `leaf` is in the range Keel answers itself, without asking the hardware.
pub const fn is_hypervisor_leaf(leaf: u32) -> bool {
    leaf >= HV_BASE && leaf <= HV_BASE + 0xff
}

/// Keel's answer for a leaf of the hypervisor range.
pub fn hypervisor_leaf(leaf: u32, id: Identity) -> Regs {
    match leaf {
        HV_BASE => [HV_LAST, SIGNATURE[0], SIGNATURE[1], SIGNATURE[2]],
        0x4000_0001 => {
            let (major, minor, patch) = id.version;
            let v =
                (u32::from(major) << 16) | (u32::from(minor & 0xff) << 8) | u32::from(patch & 0xff);
            [v, id.abi_version, 0, 0]
        }
        _ => [0; 4],
    }
}

/// Filters the hardware's answer for a leaf outside the hypervisor range.
pub fn filter(vendor: Vendor, leaf: u32, mut r: Regs) -> Regs {
    match (vendor, leaf) {
        (_, 1) => {
            r[2] |= CPUID_1_ECX_HYPERVISOR;
            if vendor == Vendor::Vmx {
                r[2] &= !CPUID_1_ECX_VMX;
            }
        }
        (Vendor::Svm, 0x8000_0001) => r[2] &= !CPUID_8000_0001_ECX_SVM,
        (Vendor::Svm, 0x8000_000a) => r = [0; 4],
        _ => {}
    }
    r
}

/// Dom0's CPUID: Keel's leaves, or the hardware's answer (`hw`, asked only when needed)
/// filtered.
#[inline]
pub fn dom0(vendor: Vendor, id: Identity, leaf: u32, hw: impl FnOnce() -> Regs) -> Regs {
    if is_hypervisor_leaf(leaf) {
        hypervisor_leaf(leaf, id)
    } else {
        filter(vendor, leaf, hw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity = Identity {
        version: (0, 2, 1),
        abi_version: 1,
    };

    fn signature(r: Regs) -> [u8; 12] {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&r[1].to_le_bytes());
        s[4..8].copy_from_slice(&r[2].to_le_bytes());
        s[8..12].copy_from_slice(&r[3].to_le_bytes());
        s
    }

    #[test]
    fn keel_leaves() {
        let r = dom0(Vendor::Svm, ID, HV_BASE, || panic!("hardware asked"));
        assert_eq!(&signature(r), b"KeelKeelKeel");
        assert_eq!(r[0], 0x4000_0001);
        let v = dom0(Vendor::Vmx, ID, 0x4000_0001, || panic!("hardware asked"));
        assert_eq!(v, [0x0000_0201, 1, 0, 0]);
        assert_eq!(dom0(Vendor::Vmx, ID, 0x4000_0010, || [1; 4]), [0; 4]);
        assert_eq!(dom0(Vendor::Vmx, ID, 0x4000_0100, || [1; 4]), [1; 4]);
    }

    #[test]
    fn hides_the_extension_keel_owns() {
        let leaf1 = [0x306c3, 0x10800, 0x7ffafbbf | CPUID_1_ECX_VMX, 0xbfebfbff];
        let r = dom0(Vendor::Vmx, ID, 1, || leaf1);
        assert_eq!(r[2] & CPUID_1_ECX_VMX, 0);
        assert_ne!(r[2] & CPUID_1_ECX_HYPERVISOR, 0);
        assert_eq!([r[0], r[1], r[3]], [leaf1[0], leaf1[1], leaf1[3]]);
        // An AMD CPU keeps its VMX bit clear and loses SVM and leaf 8000000Ah.
        let ext = [0, 0, 0x0000_0025, 0x2fd3_fbff];
        assert_eq!(dom0(Vendor::Svm, ID, 0x8000_0001, || ext)[2], 0x21);
        assert_eq!(
            dom0(Vendor::Svm, ID, 0x8000_000a, || [1, 16, 0, 0xff]),
            [0; 4]
        );
        // Intel's 8000_0001 passes unchanged.
        assert_eq!(dom0(Vendor::Vmx, ID, 0x8000_0001, || ext), ext);
    }
}
