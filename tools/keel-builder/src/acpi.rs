//! The DomU's ACPI tables: RSDP -> XSDT -> FADT (-> DSDT) and MADT, in one blob at
//! [`ACPI_BASE`](crate::layout::ACPI_BASE).
//!
//! Linux needs the MADT: its Processor Local APIC entries make it use the local APIC
//! (APIC_VIRTUAL_WIRE mode, hence the Xen clockevent) and bring up the other vCPUs
//! (arch/x86/kernel/acpi/boot.c `acpi_process_madt`). The rest follows Xen's PVH tables
//! (tools/libacpi/build.c `acpi_build_tables`, `construct_madt`; tools/libacpi/
//! static_tables.c; tools/libs/light/libxl_x86_acpi.c) where they fit Keel, with these
//! choices:
//!
//! - **FADT revision 5 with HW_REDUCED_ACPI.** libxl gives a revision 5 FADT with NO_VGA and
//!   NO_CMOS_RTC but still names PM1 event/control blocks at I/O ports, which a PVH domain
//!   has no device behind. Keel's DomU has no ACPI fixed hardware at all, so the FADT says so:
//!   ACPICA then skips the PM1 registers, the SCI, the FACS and the switch into ACPI mode,
//!   and Linux replaces the legacy PIC by its null PIC and skips the PIT/HPET timer setup
//!   (arch/x86/kernel/acpi/boot.c `acpi_generic_reduced_hw_init`), the PVH domain's timer
//!   being the Xen clockevent. Firecracker gives its x86 guests the same kind of FADT. IAPC_BOOT_ARCH keeps libxl's NO_VGA and NO_CMOS_RTC (no RTC, so Linux
//!   reads the time from Xen's wallclock), and, with no 8042 bit, Linux does not probe a
//!   keyboard controller. No FACS (optional with HW_REDUCED_ACPI), no RSDT (XSDT only).
//! - **DSDT: an empty definition block.** Processors are declared by the MADT; there is no
//!   `\_S5` (as Xen's PVH DSDT): power-off goes through Xen's SCHEDOP_shutdown.
//! - **MADT flags 0 (no PCAT_COMPAT).** Xen sets PCAT_COMPAT, which makes Linux assume an 8259
//!   without probing (arch/x86/kernel/i8259.c `probe_8259A`). Keel emulates no 8259 and its
//!   unclaimed ports read all-ones, so without the flag the probe finds none, which is true.
//!   With HW_REDUCED_ACPI Linux uses its null PIC either way.
//! - **One enabled Processor Local APIC entry per vCPU, UID = APIC ID = vCPU id.** Linux takes
//!   the ACPI processor UID as the Xen vCPU id (arch/x86/xen/enlighten_hvm.c
//!   `xen_cpu_up_prepare_hvm`); Keel's local APIC model gives vCPU i APIC ID i. Xen gives
//!   APIC ID 2i (libxl_x86_acpi.c `acpi_lapic_id`), which only matters where CPUID topology
//!   must agree, and Keel's CPUID will report IDs the same way.
use std::ops::Range;

use crate::layout::{ACPI_BASE, ACPI_MAX_SIZE, LAPIC_BASE};

/// The OEM ID in every table header and the RSDP (6 bytes, space padded).
pub const OEM_ID: [u8; 6] = *b"KEEL  ";
/// The OEM table ID in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"KEELPVH ";
/// The creator ID in every table header.
pub const CREATOR_ID: [u8; 4] = *b"KEEL";

/// Bytes in a table header (ACPI 6.5, 5.2.6).
const HEADER_LEN: usize = 36;
/// Bytes in an ACPI 2.0+ RSDP (ACPI 6.5, 5.2.5.3).
pub const RSDP_LEN: usize = 36;
/// Bytes in a revision 5 FADT (ACPI 5.0, 5.2.9).
pub const FADT_LEN: usize = 268;
/// The FADT revision: 5 is the first with HW_REDUCED_ACPI and NO_CMOS_RTC.
pub const FADT_REVISION: u8 = 5;
/// The MADT revision of ACPI 5.0.
pub const MADT_REVISION: u8 = 3;

/// FADT offsets and bits (ACPI 5.0, Table 5-34).
pub mod fadt {
    /// DSDT (32-bit address).
    pub const DSDT: usize = 40;
    /// IAPC_BOOT_ARCH (u16).
    pub const IAPC_BOOT_ARCH: usize = 109;
    /// Flags (u32).
    pub const FLAGS: usize = 112;
    /// X_DSDT (64-bit address).
    pub const X_DSDT: usize = 140;
    /// IAPC_BOOT_ARCH: VGA not present.
    pub const BOOT_NO_VGA: u16 = 1 << 2;
    /// IAPC_BOOT_ARCH: CMOS RTC not present.
    pub const BOOT_NO_CMOS_RTC: u16 = 1 << 5;
    /// Flags: the power button is not a fixed feature.
    pub const PWR_BUTTON: u32 = 1 << 4;
    /// Flags: the sleep button is not a fixed feature.
    pub const SLP_BUTTON: u32 = 1 << 5;
    /// Flags: hardware-reduced ACPI (no fixed hardware).
    pub const HW_REDUCED_ACPI: u32 = 1 << 20;
}

/// MADT values (ACPI 5.0, 5.2.12).
pub mod madt {
    /// Bytes before the first interrupt controller structure.
    pub const FIXED_LEN: usize = 44;
    /// Interrupt controller structure type: Processor Local APIC.
    pub const TYPE_LOCAL_APIC: u8 = 0;
    /// Bytes in a Processor Local APIC structure.
    pub const LOCAL_APIC_LEN: u8 = 8;
    /// Local APIC flags: enabled.
    pub const LOCAL_APIC_ENABLED: u32 = 1;
}

/// The built tables: `bytes` go at guest-physical `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Where the blob goes (the RSDP is its first byte).
    pub base: u64,
    /// The RSDP and the tables.
    pub bytes: Vec<u8>,
}

impl AcpiTables {
    /// The RSDP's guest-physical address.
    pub fn rsdp(&self) -> u64 {
        self.base
    }

    /// The guest-physical range the tables cover.
    pub fn range(&self) -> Range<u64> {
        self.base..self.base + self.bytes.len() as u64
    }
}

/// The sum of `bytes`, mod 256: 0 for a correctly checksummed table.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// A blob being filled from `base` upwards, each table 16-byte aligned (as libxl aligns).
struct Blob {
    base: u64,
    bytes: Vec<u8>,
}

impl Blob {
    /// Appends `table` 16-byte aligned, returning its guest-physical address.
    fn push(&mut self, table: &[u8]) -> u64 {
        self.bytes.resize(self.bytes.len().next_multiple_of(16), 0);
        let at = self.base + self.bytes.len() as u64;
        self.bytes.extend_from_slice(table);
        at
    }
}

/// A table header for `signature` and `len` bytes; the checksum is set by [`seal`].
fn header(signature: &[u8; 4], len: usize, revision: u8) -> Vec<u8> {
    let mut t = vec![0; len];
    t[0..4].copy_from_slice(signature);
    t[4..8].copy_from_slice(&u32::try_from(len).expect("tables are small").to_le_bytes());
    t[8] = revision;
    t[10..16].copy_from_slice(&OEM_ID);
    t[16..24].copy_from_slice(&OEM_TABLE_ID);
    t[24..28].copy_from_slice(&1u32.to_le_bytes()); // OEM revision
    t[28..32].copy_from_slice(&CREATOR_ID);
    t[32..36].copy_from_slice(&1u32.to_le_bytes()); // creator revision
    t
}

/// Sets the checksum byte at `at` so that `t` sums to 0.
fn seal(t: &mut [u8], at: usize) {
    t[at] = 0;
    t[at] = 0u8.wrapping_sub(checksum(t));
}

/// An empty DSDT: a definition block with no AML in it.
fn dsdt() -> Vec<u8> {
    let mut t = header(b"DSDT", HEADER_LEN, 2);
    seal(&mut t, 9);
    t
}

/// The FADT, pointing at the DSDT at `dsdt`.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut t = header(b"FACP", FADT_LEN, FADT_REVISION);
    let dsdt32 = u32::try_from(dsdt).expect("the DSDT is below 4 GiB");
    t[fadt::DSDT..fadt::DSDT + 4].copy_from_slice(&dsdt32.to_le_bytes());
    let boot = fadt::BOOT_NO_VGA | fadt::BOOT_NO_CMOS_RTC;
    t[fadt::IAPC_BOOT_ARCH..fadt::IAPC_BOOT_ARCH + 2].copy_from_slice(&boot.to_le_bytes());
    let flags = fadt::HW_REDUCED_ACPI | fadt::PWR_BUTTON | fadt::SLP_BUTTON;
    t[fadt::FLAGS..fadt::FLAGS + 4].copy_from_slice(&flags.to_le_bytes());
    t[fadt::X_DSDT..fadt::X_DSDT + 8].copy_from_slice(&dsdt.to_le_bytes());
    seal(&mut t, 9);
    t
}

/// The MADT: the local APIC address and one enabled Processor Local APIC per vCPU.
fn madt(vcpus: u32) -> Vec<u8> {
    let len = madt::FIXED_LEN + vcpus as usize * usize::from(madt::LOCAL_APIC_LEN);
    let mut t = header(b"APIC", len, MADT_REVISION);
    let lapic = u32::try_from(LAPIC_BASE).expect("the LAPIC is below 4 GiB");
    t[36..40].copy_from_slice(&lapic.to_le_bytes());
    // Flags at 40..44 stay 0: no PCAT_COMPAT (see the module's doc).
    for (i, e) in t[madt::FIXED_LEN..]
        .chunks_exact_mut(madt::LOCAL_APIC_LEN.into())
        .enumerate()
    {
        let id = u8::try_from(i).expect("at most MAX_VCPUS vCPUs");
        e[0] = madt::TYPE_LOCAL_APIC;
        e[1] = madt::LOCAL_APIC_LEN;
        e[2] = id; // ACPI processor UID: the Xen vCPU id.
        e[3] = id; // APIC ID.
        e[4..8].copy_from_slice(&madt::LOCAL_APIC_ENABLED.to_le_bytes());
    }
    seal(&mut t, 9);
    t
}

/// The XSDT listing `tables`.
fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = header(b"XSDT", HEADER_LEN + 8 * tables.len(), 1);
    for (e, addr) in t[HEADER_LEN..].chunks_exact_mut(8).zip(tables) {
        e.copy_from_slice(&addr.to_le_bytes());
    }
    seal(&mut t, 9);
    t
}

/// The ACPI 2.0+ RSDP pointing at the XSDT at `xsdt` (no RSDT).
fn rsdp(xsdt: u64) -> [u8; RSDP_LEN] {
    let mut r = [0; RSDP_LEN];
    r[0..8].copy_from_slice(b"RSD PTR ");
    r[9..15].copy_from_slice(&OEM_ID);
    r[15] = 2; // revision: ACPI 2.0+, the XSDT is valid
               // RSDT address at 16..20 stays 0.
    r[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    r[24..32].copy_from_slice(&xsdt.to_le_bytes());
    // The first checksum covers the ACPI 1.0 part (20 bytes), the extended one all of it.
    r[8] = 0u8.wrapping_sub(checksum(&r[..20]));
    r[32] = 0u8.wrapping_sub(checksum(&r));
    r
}

/// Builds the tables for `vcpus` vCPUs (1..=[`MAX_VCPUS`](crate::layout::MAX_VCPUS), checked
/// by the caller) at [`ACPI_BASE`].
pub fn build(vcpus: u32) -> AcpiTables {
    let mut blob = Blob {
        base: ACPI_BASE,
        bytes: vec![0; RSDP_LEN], // the RSDP, filled in last
    };
    let dsdt_at = blob.push(&dsdt());
    let fadt_at = blob.push(&fadt(dsdt_at));
    let madt_at = blob.push(&madt(vcpus));
    let xsdt_at = blob.push(&xsdt(&[fadt_at, madt_at]));
    blob.bytes[..RSDP_LEN].copy_from_slice(&rsdp(xsdt_at));
    assert!(blob.bytes.len() as u64 <= ACPI_MAX_SIZE);
    AcpiTables {
        base: blob.base,
        bytes: blob.bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table at guest-physical `addr` in `t`, its length from its header.
    fn table(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base) as usize;
        let len = u32::from_le_bytes(t.bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        &t.bytes[off..off + len]
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Walks RSDP -> XSDT -> tables as an OS does, checking every checksum and header, and
    /// returns the tables by signature.
    fn walk(t: &AcpiTables) -> Vec<(String, Vec<u8>)> {
        let r = &t.bytes[..RSDP_LEN];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(checksum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(checksum(r), 0, "RSDP extended checksum");
        assert_eq!(r[15], 2);
        assert_eq!(&r[9..15], b"KEEL  ");
        assert_eq!(u32_at(r, 16), 0, "no RSDT");
        assert_eq!(u32_at(r, 20) as usize, RSDP_LEN);
        let xsdt = table(t, u64_at(r, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut out = vec![("XSDT".to_string(), xsdt.to_vec())];
        let mut addrs: Vec<u64> = xsdt[HEADER_LEN..]
            .chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
            .collect();
        let fadt = table(t, addrs[0]);
        assert_eq!(&fadt[..4], b"FACP", "the XSDT lists the FADT first");
        addrs.push(u64_at(fadt, fadt::X_DSDT));
        assert_eq!(
            u64::from(u32_at(fadt, fadt::DSDT)),
            u64_at(fadt, fadt::X_DSDT)
        );
        for a in addrs {
            assert_eq!(a % 16, 0);
            let tb = table(t, a);
            let sig = String::from_utf8(tb[..4].to_vec()).unwrap();
            assert_eq!(checksum(tb), 0, "{sig} checksum");
            assert_eq!(&tb[10..16], b"KEEL  ", "{sig} OEM ID");
            assert_eq!(&tb[28..32], b"KEEL", "{sig} creator");
            out.push((sig, tb.to_vec()));
        }
        out
    }

    fn find<'a>(tables: &'a [(String, Vec<u8>)], sig: &str) -> &'a [u8] {
        &tables.iter().find(|(s, _)| s == sig).unwrap().1
    }

    #[test]
    fn tables_parse_back_with_good_checksums() {
        for vcpus in [1, 2, 7, 128] {
            let t = build(vcpus);
            assert_eq!(t.rsdp(), ACPI_BASE);
            let tables = walk(&t);
            let sigs: Vec<&str> = tables.iter().map(|(s, _)| s.as_str()).collect();
            assert_eq!(sigs, ["XSDT", "FACP", "APIC", "DSDT"]);
            assert!(t.bytes.len() as u64 <= ACPI_MAX_SIZE);
        }
    }

    #[test]
    fn fadt_is_hw_reduced_rev5_without_vga_or_rtc() {
        let tables = walk(&build(1));
        let f = find(&tables, "FACP");
        assert_eq!(f.len(), FADT_LEN);
        assert_eq!(f[8], 5);
        let flags = u32_at(f, fadt::FLAGS);
        assert_ne!(flags & fadt::HW_REDUCED_ACPI, 0);
        let boot = u16::from_le_bytes([f[fadt::IAPC_BOOT_ARCH], f[fadt::IAPC_BOOT_ARCH + 1]]);
        assert_eq!(boot, fadt::BOOT_NO_VGA | fadt::BOOT_NO_CMOS_RTC);
        // No FACS, no fixed-hardware blocks, no SCI.
        assert_eq!(u32_at(f, 36), 0);
        assert_eq!(u64_at(f, 132), 0);
        assert!(f[46..96].iter().all(|b| *b == 0));
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu() {
        let tables = walk(&build(4));
        let m = find(&tables, "APIC");
        assert_eq!(u32_at(m, 36), 0xfee0_0000);
        assert_eq!(u32_at(m, 40), 0, "no PCAT_COMPAT");
        let entries: Vec<&[u8]> = m[madt::FIXED_LEN..].chunks(8).collect();
        assert_eq!(entries.len(), 4);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e[0], 0, "Processor Local APIC");
            assert_eq!(e[1], 8);
            assert_eq!(e[2] as usize, i, "UID = vCPU id");
            assert_eq!(e[3] as usize, i, "APIC ID = vCPU id");
            assert_eq!(u32_at(e, 4), 1, "enabled");
        }
    }

    #[test]
    fn dsdt_is_an_empty_definition_block() {
        let tables = walk(&build(1));
        let d = find(&tables, "DSDT");
        assert_eq!(d.len(), HEADER_LEN);
        assert_eq!(d[8], 2, "revision 2: 64-bit AML integers");
    }
}
