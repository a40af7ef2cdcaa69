//! The local APIC of a DomU vCPU (SDM Vol. 3A, chapter 11 "Advanced Programmable Interrupt
//! Controller (APIC)"): the one device a Xen PVH DomU has emulated (XEN-PVH.md 4.3, 4.5).
//!
//! This is the register model and the interrupt logic only. Root mode owns one [`Lapic`] per vCPU
//! and calls it from VM exits: xAPIC MMIO accesses to the page at [`DEFAULT_BASE`]
//! ([`Lapic::mmio_read`], [`Lapic::mmio_write`]), x2APIC MSR accesses ([`Lapic::rdmsr`],
//! [`Lapic::wrmsr`]), IA32_APIC_BASE and IA32_TSC_DEADLINE. Writes return an [`Effect`]: nothing
//! to do, a #GP to inject, an [`Ipi`] to deliver or an EOI to report. Delivering an IPI is the
//! caller's: [`Ipi::targets`] resolves its destination over every vCPU's [`Addressing`] and
//! [`Lapic::receive`] hands it to each target. At VM entry the caller runs
//! [`Lapic::advance_timer`], takes INIT/SIPI/NMI with [`Lapic::take_event`], asks
//! [`Lapic::highest_pending`] for the vector to inject and [`Lapic::ack`]s it when injected, and
//! arms a host timer for [`Lapic::next_deadline`].
//!
//! Nothing here allocates, loops more than a fixed bound (8 IRR words, 64 vCPUs), or panics on
//! any guest input: every arithmetic step on guest values saturates or is bounded.
//!
//! # Time
//!
//! Every entry point that can touch the timer takes `now`, the guest's TSC. The APIC timer
//! counts down once per `divide × tsc_per_bus_cycle` TSC ticks ([`Config::tsc_per_bus_cycle`]
//! is the caller's choice of APIC bus clock: TSC frequency / that ratio), and TSC-deadline mode
//! compares IA32_TSC_DEADLINE with `now` directly. One timebase makes both modes exact; with a
//! ratio of 1 `now` is simply in bus cycles. The timer is evaluated lazily: register accesses
//! bring it up to `now` first, [`Lapic::advance_timer`] does it explicitly.
//!
//! # Choices where the SDM leaves room or Xen and KVM differ
//!
//! (X: Xen's xen/arch/x86/hvm/vlapic.c; K: Linux's arch/x86/kvm/lapic.c.)
//! - Version 0x14 with max LVT entry 6 (LVT CMCI present), no directed EOI (SVR bit 12
//!   reserved). X reports 0x50014 (no CMCI); K 0x14 with 5 or 6 by MCG_CAP.
//! - The APIC base cannot move: IA32_APIC_BASE writes with a base other than 0xFEE00000 #GP
//!   (X `guest_wrmsr_apic_base` refuses relocation in xAPIC mode; Keel in every mode, one
//!   fewer state). K accepts and relocates.
//! - Disabling the APIC in IA32_APIC_BASE returns it to the power-up state (SDM 11.4.3 says it
//!   "may"); X resets when it is enabled again, K keeps the registers. Either way a re-enabled
//!   APIC starts from reset.
//! - MMIO: 1-, 2- and 4-byte reads inside a register's first 4 bytes return those bytes (X and
//!   K); other reads return 0. Writes other than aligned 4-byte ones are dropped (K; X merges
//!   sub-word writes). In x2APIC mode or disabled, reads return all ones and writes are dropped
//!   (K's LAPIC_MMIO_HOLE quirk; X leaves the range unclaimed). Accesses to reserved offsets
//!   set ESR "illegal register address" (SDM 11.5.3; APIC-V hardware does, X and K do not).
//! - x2APIC writes with reserved bits set #GP (SDM 11.12.1.3, as X `guest_wrmsr_x2apic`; K
//!   masks most). ICR bit 12 (busy) is ignored rather than #GP (K).
//! - ESR is write-before-read: errors collect in a pending copy, a write moves them to the
//!   visible register (SDM 11.5.3; X since 2024, K keeps no errors). The LVT error interrupt
//!   fires when an error bit newly becomes set (X's per-bit behaviour); an LVT error vector
//!   below 16 is not delivered but adds "receive illegal vector" (X, breaking the loop).
//! - A fixed or lowest-priority IPI with a vector below 16 is not sent; the sender's ESR gets
//!   "send illegal vector" (X). An interrupt arriving with such a vector sets "receive illegal
//!   vector" and no IRR bit (SDM 11.5.3).
//! - Lowest-priority delivery picks one software-enabled target by vector hashing (K's
//!   default): deterministic, needs no other vCPU's PPR. X picks the lowest PPR round-robin.
//! - A logical destination of all ones (0xFF, x2APIC 0xFFFFFFFF) is a broadcast in flat and
//!   cluster models (SDM 11.6.2.2, K); X matches it bit by bit.
//! - Targets whose APIC is disabled in IA32_APIC_BASE receive nothing (K's
//!   `kvm_apic_present`). Software-disabled APICs drop fixed interrupts but take NMI, INIT and
//!   SIPI (SDM 11.4.7.2, X, K).
//! - INIT with trigger level and level de-assert is ignored (X and K; no INIT level de-assert
//!   since the Pentium 4). SMI is ignored (X; Keel has no SMM). Reserved delivery modes (3 and
//!   7) send nothing (X ignores 3 and crashes the domain on 7; K treats 3 as a PV unhalt).
//! - After INIT every vCPU, the BSP too, waits for a SIPI (X: a PVH DomU has no firmware at the
//!   reset vector); K restarts the BSP at the reset vector. A SIPI that finds its target not
//!   waiting for one is dropped, and an INIT drops a SIPI still pending (K).
//! - One-shot/periodic switches keep the running count (K); switching to or from TSC-deadline
//!   mode stops the timer and clears the initial count (X and K). A periodic timer that missed
//!   several periods raises one interrupt (K: no catching up). Timer mode 3 (reserved) is stored
//!   and counts nothing (X). Initial-count writes are ignored outside one-shot/periodic (X).
//! - The xAPIC ID is writable (X and K); the x2APIC ID is always the initial APIC ID.
//! - SVR vector bits 3:0 are writable, so vectors 0-15 are stored without an error (SDM 11.9:
//!   Pentium 4 and later); bit 9 (focus checking) is kept, as X and K do. APR reads 0 (X, K).
//! - The LVT entries other than timer and error are registers only: Keel has no LINT pins, no
//!   thermal sensor, performance counters or machine checks to fire them.

use super::arch::msr;

/// The xAPIC MMIO page after reset. Keel refuses to move it (see the module's choices).
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

/// The size of the xAPIC MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;

/// The highest LVT entry (Version register bits 23:16): LVT CMCI included.
const MAX_LVT: u32 = 6;

/// The Version register: an integrated APIC (0x14), `MAX_LVT`, no directed EOI (bit 24).
pub const VERSION: u32 = 0x14 | (MAX_LVT << 16);

/// Register offsets in the xAPIC page (SDM Vol. 3A, Table 11-1); the x2APIC MSR of each is
/// `msr::X2APIC_FIRST + (offset >> 4)` (Table 11-6).
pub mod reg {
    /// Local APIC ID.
    pub const ID: u32 = 0x020;
    /// Local APIC Version.
    pub const VERSION: u32 = 0x030;
    /// Task Priority (TPR).
    pub const TPR: u32 = 0x080;
    /// Arbitration Priority (APR); xAPIC only.
    pub const APR: u32 = 0x090;
    /// Processor Priority (PPR).
    pub const PPR: u32 = 0x0a0;
    /// EOI.
    pub const EOI: u32 = 0x0b0;
    /// Remote Read (RRD): not on modern APICs, reserved here.
    pub const RRD: u32 = 0x0c0;
    /// Logical Destination (LDR).
    pub const LDR: u32 = 0x0d0;
    /// Destination Format (DFR); xAPIC only.
    pub const DFR: u32 = 0x0e0;
    /// Spurious Interrupt Vector (SVR).
    pub const SVR: u32 = 0x0f0;
    /// In-Service (ISR), eight registers of 32 vectors.
    pub const ISR: u32 = 0x100;
    /// Trigger Mode (TMR), eight registers.
    pub const TMR: u32 = 0x180;
    /// Interrupt Request (IRR), eight registers.
    pub const IRR: u32 = 0x200;
    /// Error Status (ESR).
    pub const ESR: u32 = 0x280;
    /// LVT Corrected Machine Check Interrupt (CMCI).
    pub const LVT_CMCI: u32 = 0x2f0;
    /// Interrupt Command (ICR) bits 31:0; in x2APIC mode the whole 64-bit ICR.
    pub const ICR_LOW: u32 = 0x300;
    /// Interrupt Command bits 63:32; xAPIC only.
    pub const ICR_HIGH: u32 = 0x310;
    /// LVT Timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT Thermal Sensor.
    pub const LVT_THERMAL: u32 = 0x330;
    /// LVT Performance Monitoring Counters.
    pub const LVT_PERF: u32 = 0x340;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT Error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Initial Count (timer).
    pub const TIMER_INITIAL: u32 = 0x380;
    /// Current Count (timer).
    pub const TIMER_CURRENT: u32 = 0x390;
    /// Divide Configuration (timer).
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// SELF IPI; x2APIC only.
    pub const SELF_IPI: u32 = 0x3f0;
}

/// IA32_APIC_BASE bits (SDM Vol. 3A, 11.4.4).
pub mod apic_base {
    /// The processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (with `EN`).
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
}

/// ESR bits (SDM Vol. 3A, Figure 11-9).
pub mod esr {
    /// An IPI was sent with an illegal vector (0-15).
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// An interrupt arrived, or an LVT entry fired, with an illegal vector (0-15).
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// A reserved register offset was accessed (xAPIC).
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// SVR: APIC software enable.
const SVR_ENABLE: u32 = 1 << 8;
/// SVR bits a guest can set: vector, software enable, focus processor checking.
const SVR_WRITABLE: u32 = 0x3ff;

/// LVT and ICR: the vector.
const VECTOR: u32 = 0xff;
/// LVT and ICR: the delivery mode field.
const DELIVERY_MODE: u32 = 0x700;
/// LVT and ICR: delivery status (read-only, always idle here).
const DELIVERY_STATUS: u32 = 1 << 12;
/// LVT LINT: input pin polarity.
const LVT_POLARITY: u32 = 1 << 13;
/// LVT LINT: remote IRR (read-only).
const LVT_REMOTE_IRR: u32 = 1 << 14;
/// LVT LINT: level triggered.
const LVT_LEVEL: u32 = 1 << 15;
/// LVT: masked.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer: periodic mode (bits 18:17 = 01).
const TIMER_PERIODIC: u32 = 1 << 17;
/// LVT timer: TSC-deadline mode (bits 18:17 = 10).
const TIMER_TSC_DEADLINE: u32 = 1 << 18;

/// ICR: logical destination mode.
const ICR_LOGICAL: u32 = 1 << 11;
/// ICR: level assert.
const ICR_ASSERT: u32 = 1 << 14;
/// ICR: level triggered.
const ICR_LEVEL: u32 = 1 << 15;
/// ICR: the destination shorthand field.
const ICR_SHORTHAND: u32 = 0b11 << 18;
/// ICR bits 31:0 a guest can set.
const ICR_WRITABLE: u32 =
    VECTOR | DELIVERY_MODE | ICR_LOGICAL | ICR_ASSERT | ICR_LEVEL | ICR_SHORTHAND;
/// xAPIC ICR bits 63:32 a guest can set: the 8-bit destination.
const ICR_HIGH_WRITABLE: u32 = 0xff00_0000;

/// The LVT entries, in the order of `Lapic::lvt`.
const LVT_TIMER_INDEX: usize = 0;
const LVT_THERMAL_INDEX: usize = 1;
const LVT_PERF_INDEX: usize = 2;
const LVT_LINT0_INDEX: usize = 3;
const LVT_LINT1_INDEX: usize = 4;
const LVT_ERROR_INDEX: usize = 5;
const LVT_CMCI_INDEX: usize = 6;
const LVT_COUNT: usize = 7;

/// A set of the 256 interrupt vectors, laid out as the APIC's IRR, ISR and TMR registers
/// (bit `v % 32` of word `v / 32`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VectorSet([u32; 8]);

impl VectorSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self([0; 8])
    }

    /// Whether `vector` is in the set.
    pub fn contains(&self, vector: u8) -> bool {
        self.0[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
    }

    /// Adds `vector`.
    pub fn insert(&mut self, vector: u8) {
        self.0[usize::from(vector >> 5)] |= 1 << (vector & 31);
    }

    /// Removes `vector`.
    pub fn remove(&mut self, vector: u8) {
        self.0[usize::from(vector >> 5)] &= !(1 << (vector & 31));
    }

    /// The highest vector in the set.
    pub fn highest(&self) -> Option<u8> {
        let (index, word) = self.0.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
        // index <= 7 and the bit <= 31: at most 255.
        Some((index as u8) * 32 + (31 - word.leading_zeros()) as u8)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Register `index` (0..=7) of the set as the APIC shows it, vectors `32 * index` and up; 0
    /// for any other index.
    pub fn word(&self, index: usize) -> u32 {
        self.0.get(index).copied().unwrap_or(0)
    }
}

/// How a vCPU's APIC is configured beyond the architecture's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The initial APIC ID: the x2APIC ID, and the xAPIC ID truncated to 8 bits. The MADT and
    /// CPUID must report the same.
    pub apic_id: u32,
    /// Whether this vCPU is the bootstrap processor (IA32_APIC_BASE.BSP).
    pub bsp: bool,
    /// Whether the guest's CPUID offers x2APIC mode (else IA32_APIC_BASE.EXTD is reserved).
    pub x2apic: bool,
    /// Whether the guest's CPUID offers the TSC-deadline timer mode (else LVT timer bit 18 is
    /// reserved).
    pub tsc_deadline: bool,
    /// TSC ticks per APIC bus cycle (see the module's "Time"); 0 is taken as 1.
    pub tsc_per_bus_cycle: u32,
}

/// The APIC's mode, from IA32_APIC_BASE.EN and EXTD (SDM Vol. 3A, 11.12.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Globally disabled: no registers, no interrupts.
    Disabled,
    /// xAPIC: registers in the MMIO page.
    XApic,
    /// x2APIC: registers in MSRs 0x800 and up.
    X2Apic,
}

/// A fault the caller injects: #GP(0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gp;

/// What the caller must do after a register write.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing (interrupts this APIC raised for itself are already in its IRR).
    Done,
    /// Inject #GP(0) into the vCPU; the write did not happen.
    Gp,
    /// Deliver this IPI: [`Ipi::targets`], then [`Lapic::receive`] on each.
    SendIpi(Ipi),
    /// The guest ended the interrupt in service, for whoever tracks level-triggered sources.
    Eoi(Eoi),
}

/// The interrupt an EOI ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eoi {
    /// Its vector.
    pub vector: u8,
    /// Whether it was level-triggered (its TMR bit).
    pub level: bool,
}

/// The trigger mode of an interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-triggered.
    Edge,
    /// Level-triggered: the TMR bit is set and the EOI is reported.
    Level,
}

/// The ICR's level bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// De-assert (only meaningful for INIT level de-assert).
    Deassert,
    /// Assert.
    Assert,
}

/// An IPI's delivery mode (SDM Vol. 3A, 11.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The vector to every target.
    Fixed,
    /// The vector to one of the targets.
    LowestPriority,
    /// A system-management interrupt (ignored: no SMM).
    Smi,
    /// A non-maskable interrupt.
    Nmi,
    /// INIT; `Deassert` is INIT level de-assert (trigger level, level 0), which is ignored.
    Init(Level),
    /// Start-up with this vector: the target starts in real mode at `vector << 12`.
    StartUp(u8),
}

/// An IPI's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The APIC with this ID; all ones is a broadcast.
    Physical(u32),
    /// The APICs whose logical ID matches this mask (xAPIC flat or cluster, x2APIC cluster); all
    /// ones is a broadcast.
    Logical(u32),
    /// The sender only.
    SelfOnly,
    /// Every APIC.
    AllIncludingSelf,
    /// Every APIC but the sender's.
    AllExcludingSelf,
}

/// An interprocessor interrupt decoded from an ICR write (SDM Vol. 3A, Figure 11-12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// What to deliver.
    pub delivery: Delivery,
    /// To whom.
    pub destination: Destination,
    /// The vector field (the interrupt's for fixed and lowest priority, the SIPI's page).
    pub vector: u8,
    /// The level bit.
    pub level: Level,
    /// The trigger mode bit.
    pub trigger: Trigger,
    /// Whether the destination is in x2APIC format (32 bits, broadcast 0xFFFFFFFF) rather than
    /// xAPIC format (8 bits, broadcast 0xFF): the sender's mode.
    pub x2apic: bool,
}

impl Ipi {
    /// Decodes an ICR value: bits 31:0 the command, the destination in bits 63:56 (xAPIC) or
    /// 63:32 (x2APIC). `None` for the reserved delivery modes 3 and 7, which send nothing.
    pub fn decode(icr: u64, x2apic: bool) -> Option<Self> {
        let low = icr as u32;
        let vector = low as u8;
        let level = if low & ICR_ASSERT != 0 {
            Level::Assert
        } else {
            Level::Deassert
        };
        let trigger = if low & ICR_LEVEL != 0 {
            Trigger::Level
        } else {
            Trigger::Edge
        };
        let delivery = match (low & DELIVERY_MODE) >> 8 {
            0 => Delivery::Fixed,
            1 => Delivery::LowestPriority,
            2 => Delivery::Smi,
            4 => Delivery::Nmi,
            5 if trigger == Trigger::Level && level == Level::Deassert => {
                Delivery::Init(Level::Deassert)
            }
            5 => Delivery::Init(Level::Assert),
            6 => Delivery::StartUp(vector),
            _ => return None,
        };
        let dest = if x2apic {
            (icr >> 32) as u32
        } else {
            (icr >> 56) as u32
        };
        let destination = match (low & ICR_SHORTHAND) >> 18 {
            0 if low & ICR_LOGICAL != 0 => Destination::Logical(dest),
            0 => Destination::Physical(dest),
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            _ => Destination::AllExcludingSelf,
        };
        Some(Self {
            delivery,
            destination,
            vector,
            level,
            trigger,
            x2apic,
        })
    }

    fn is_broadcast(&self, dest: u32) -> bool {
        dest == if self.x2apic { u32::MAX } else { 0xff }
    }

    /// Whether the APIC `target` is a destination of this IPI; `is_source` says whether it is
    /// the sender's own. Lowest-priority selection is not applied (see [`Ipi::targets`]).
    pub fn matches(&self, target: &Addressing, is_source: bool) -> bool {
        if !target.enabled {
            return false;
        }
        match self.destination {
            Destination::SelfOnly => is_source,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => !is_source,
            Destination::Physical(dest) => self.is_broadcast(dest) || dest == target.id,
            Destination::Logical(dest) if self.is_broadcast(dest) => true,
            Destination::Logical(dest) if target.x2apic => {
                // Bits 31:16 name the cluster, bits 15:0 the APICs in it (SDM 11.12.10.2).
                target.ldr >> 16 == dest >> 16 && target.ldr & dest & 0xffff != 0
            }
            Destination::Logical(dest) => {
                let Ok(mda) = u8::try_from(dest) else {
                    return false;
                };
                let logical_id = (target.ldr >> 24) as u8;
                match target.dfr >> 28 {
                    // Flat: a bit per APIC (SDM 11.6.2.2).
                    0xf => logical_id & mda != 0,
                    // Cluster: bits 7:4 the cluster, bits 3:0 the APICs in it.
                    0x0 => logical_id >> 4 == mda >> 4 && logical_id & mda & 0xf != 0,
                    _ => false,
                }
            }
        }
    }

    /// The vCPUs this IPI goes to: `apics[i]` is vCPU i's [`Addressing`], `source` the sender's
    /// index. Only the first [`VcpuSet::CAPACITY`] entries are considered. Lowest-priority
    /// delivery picks one software-enabled match, the `vector % n`-th of the n (KVM's vector
    /// hashing).
    pub fn targets(&self, source: usize, apics: &[Addressing]) -> VcpuSet {
        let mut set = VcpuSet::default();
        for (index, target) in apics.iter().enumerate().take(VcpuSet::CAPACITY) {
            let lowest_ok = self.delivery != Delivery::LowestPriority || target.software_enabled;
            if lowest_ok && self.matches(target, index == source) {
                set.0 |= 1 << index;
            }
        }
        if self.delivery == Delivery::LowestPriority {
            set = match set.nth(usize::from(self.vector) % set.len().max(1)) {
                Some(index) => VcpuSet(1 << index),
                None => VcpuSet::default(),
            };
        }
        set
    }
}

/// What an IPI's destination is matched against, for one vCPU's APIC: [`Lapic::addressing`].
/// Callers may keep a copy per vCPU where every sender can read it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addressing {
    /// Enabled in IA32_APIC_BASE (a disabled APIC receives nothing).
    pub enabled: bool,
    /// Software-enabled (SVR); lowest-priority delivery only picks these.
    pub software_enabled: bool,
    /// In x2APIC mode.
    pub x2apic: bool,
    /// The APIC ID: 8 bits in xAPIC mode, 32 in x2APIC mode.
    pub id: u32,
    /// The LDR register.
    pub ldr: u32,
    /// The DFR register (xAPIC): bits 31:28 0xF flat, 0x0 cluster.
    pub dfr: u32,
}

/// A set of vCPU indexes below [`VcpuSet::CAPACITY`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSet(pub u64);

impl VcpuSet {
    /// How many vCPUs a set can name (Keel's KEEL_MAX_VCPUS).
    pub const CAPACITY: usize = 64;

    /// Whether vCPU `index` is in the set.
    pub fn contains(&self, index: usize) -> bool {
        index < Self::CAPACITY && self.0 & (1 << index) != 0
    }

    /// The number of vCPUs in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The vCPU indexes in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> {
        let bits = self.0;
        (0..Self::CAPACITY).filter(move |i| bits & (1 << i) != 0)
    }

    fn nth(&self, n: usize) -> Option<usize> {
        self.iter().nth(n)
    }
}

/// A pending event for the vCPU that is not an IRR vector: [`Lapic::take_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// INIT: the caller resets the vCPU's registers (SDM Vol. 3A, Table 10-1: not the FPU's);
    /// the APIC has done its INIT reset and the vCPU waits for a SIPI.
    Init,
    /// Start-up: the vCPU leaves wait-for-SIPI in real mode at CS = `vector << 8`, IP = 0.
    StartUp {
        /// The SIPI's vector.
        vector: u8,
    },
    /// An NMI to inject.
    Nmi,
}

/// Where a SIPI with `vector` starts its target: the real-mode physical address `vector << 12`
/// (CS selector `vector << 8`, base `vector << 12`, IP 0; SDM Vol. 3A, 9.4.4.1).
pub fn sipi_start_address(vector: u8) -> u32 {
    u32::from(vector) << 12
}

/// The timer's mode, LVT timer bits 18:17.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
    Reserved,
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct Lapic {
    config: Config,
    apic_base: u64,
    /// The xAPIC ID register's bits 31:24 (the x2APIC ID is `config.apic_id`).
    xapic_id: u8,
    tpr: u8,
    /// The xAPIC LDR (bits 31:24); in x2APIC mode the LDR is derived from the ID.
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorSet,
    tmr: VectorSet,
    irr: VectorSet,
    /// The ESR as the guest reads it.
    esr: u32,
    /// Errors since the last ESR write.
    pending_esr: u32,
    lvt: [u32; LVT_COUNT],
    /// The ICR: bits 31:0 the command; the destination in 63:56 (xAPIC) or 63:32 (x2APIC).
    icr: u64,
    initial_count: u32,
    divide: u32,
    /// A one-shot or periodic count is running and ends at `deadline`.
    counting: bool,
    deadline: u64,
    /// IA32_TSC_DEADLINE; 0 is disarmed.
    tsc_deadline: u64,
    nmi_pending: bool,
    init_pending: bool,
    sipi_pending: Option<u8>,
    wait_for_sipi: bool,
}

impl Lapic {
    /// An APIC in its power-up state (SDM Vol. 3A, 11.4.7.1): enabled in xAPIC mode at
    /// [`DEFAULT_BASE`], software-disabled, every LVT masked. An AP's vCPU starts waiting for a
    /// SIPI, the BSP's does not.
    pub fn new(config: Config) -> Self {
        let mut apic = Self {
            config: Config {
                tsc_per_bus_cycle: config.tsc_per_bus_cycle.max(1),
                ..config
            },
            apic_base: 0,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: VectorSet::new(),
            tmr: VectorSet::new(),
            irr: VectorSet::new(),
            esr: 0,
            pending_esr: 0,
            lvt: [0; LVT_COUNT],
            icr: 0,
            initial_count: 0,
            divide: 0,
            counting: false,
            deadline: 0,
            tsc_deadline: 0,
            nmi_pending: false,
            init_pending: false,
            sipi_pending: None,
            wait_for_sipi: !config.bsp,
        };
        apic.reset();
        apic
    }

    /// RESET: the power-up state, IA32_APIC_BASE included. Pending events are the vCPU's and
    /// stay.
    pub fn reset(&mut self) {
        self.apic_base = DEFAULT_BASE | apic_base::EN;
        if self.config.bsp {
            self.apic_base |= apic_base::BSP;
        }
        self.power_up_registers();
    }

    /// The register state after power-up, leaving IA32_APIC_BASE alone.
    fn power_up_registers(&mut self) {
        self.xapic_id = self.config.apic_id as u8;
        self.init();
    }

    /// An INIT reset of the APIC (SDM Vol. 3A, 11.4.7.3): the ID, IA32_APIC_BASE and, in x2APIC
    /// mode, the LDR are kept (the LDR is derived from the ID there); everything else returns
    /// to its power-up value. [`Lapic::take_event`] does this when it reports [`Event::Init`].
    pub fn init(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = VectorSet::new();
        self.tmr = VectorSet::new();
        self.irr = VectorSet::new();
        self.esr = 0;
        self.pending_esr = 0;
        self.lvt = [LVT_MASKED; LVT_COUNT];
        self.icr = 0;
        self.initial_count = 0;
        self.divide = 0;
        self.counting = false;
        self.deadline = 0;
        self.tsc_deadline = 0;
    }

    /// The APIC's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The mode IA32_APIC_BASE selects.
    pub fn mode(&self) -> Mode {
        match (
            self.apic_base & apic_base::EN != 0,
            self.apic_base & apic_base::EXTD != 0,
        ) {
            (false, _) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
        }
    }

    /// Whether the APIC is software-enabled (SVR bit 8).
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Whether the APIC takes interrupts: enabled in IA32_APIC_BASE and in the SVR.
    fn enabled(&self) -> bool {
        self.mode() != Mode::Disabled && self.software_enabled()
    }

    /// What IPIs are matched against for this APIC.
    pub fn addressing(&self) -> Addressing {
        Addressing {
            enabled: self.mode() != Mode::Disabled,
            software_enabled: self.software_enabled(),
            x2apic: self.mode() == Mode::X2Apic,
            id: self.id(),
            ldr: self.ldr(),
            dfr: self.dfr,
        }
    }

    /// The APIC ID the destinations use now: the x2APIC ID in x2APIC mode, else the 8-bit xAPIC
    /// ID.
    pub fn id(&self) -> u32 {
        match self.mode() {
            Mode::X2Apic => self.config.apic_id,
            _ => u32::from(self.xapic_id),
        }
    }

    /// The LDR: in x2APIC mode derived from the x2APIC ID, cluster `id >> 4` in bits 31:16 and
    /// bit `id & 0xf` (SDM Vol. 3A, 11.12.10.2).
    pub fn ldr(&self) -> u32 {
        match self.mode() {
            Mode::X2Apic => {
                let id = self.config.apic_id;
                ((id >> 4) << 16) | (1 << (id & 0xf))
            }
            _ => self.ldr,
        }
    }

    /// The Task Priority Register.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets the TPR (MOV to CR8 sets bits 7:4 from CR8[3:0]).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// The Processor Priority Register: the TPR, or the class of the highest in-service vector
    /// when that is higher (SDM Vol. 3A, 11.8.3.1).
    pub fn ppr(&self) -> u8 {
        let isrv = self.isr.highest().unwrap_or(0);
        if self.tpr & 0xf0 >= isrv & 0xf0 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The Interrupt Request Register.
    pub fn irr(&self) -> &VectorSet {
        &self.irr
    }

    /// The In-Service Register.
    pub fn isr(&self) -> &VectorSet {
        &self.isr
    }

    /// The Trigger Mode Register.
    pub fn tmr(&self) -> &VectorSet {
        &self.tmr
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// WRMSR to IA32_APIC_BASE. Allowed: disabled <-> xAPIC, xAPIC -> x2APIC, x2APIC ->
    /// disabled; anything else, a reserved bit, EXTD without CPUID's x2APIC, or a base other
    /// than [`DEFAULT_BASE`] is #GP (SDM Vol. 3A, 11.12.5, Figure 11-26).
    pub fn write_apic_base(&mut self, value: u64) -> Result<(), Gp> {
        let mut flags = apic_base::BSP | apic_base::EN;
        if self.config.x2apic {
            flags |= apic_base::EXTD;
        }
        if value & !flags != DEFAULT_BASE {
            return Err(Gp);
        }
        let old = self.mode();
        let new = match (value & apic_base::EN != 0, value & apic_base::EXTD != 0) {
            (false, true) => return Err(Gp),
            (false, false) => Mode::Disabled,
            (true, false) => Mode::XApic,
            (true, true) => Mode::X2Apic,
        };
        match (old, new) {
            (Mode::Disabled, Mode::X2Apic) | (Mode::X2Apic, Mode::XApic) => return Err(Gp),
            _ => {}
        }
        self.apic_base = value;
        if new == Mode::Disabled && old != Mode::Disabled {
            self.power_up_registers();
        }
        Ok(())
    }

    /// An interrupt arrives (a fixed IPI, or a local source): sets the IRR bit, and the TMR bit
    /// for level-triggered ones. Dropped when the APIC is disabled or software-disabled; a
    /// vector below 16 sets ESR "receive illegal vector" instead. Returns whether it was taken
    /// (the caller wakes the vCPU).
    pub fn accept(&mut self, vector: u8, trigger: Trigger) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.insert(vector);
        match trigger {
            Trigger::Level => self.tmr.insert(vector),
            Trigger::Edge => self.tmr.remove(vector),
        }
        true
    }

    /// The vector the vCPU should take now, if any: the highest in the IRR whose priority class
    /// is above the PPR's, while the APIC is enabled and software-enabled (SDM Vol. 3A,
    /// 11.8.3). The caller still checks RFLAGS.IF and interrupt shadows.
    pub fn highest_pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let vector = self.irr.highest()?;
        (vector & 0xf0 > self.ppr()).then_some(vector)
    }

    /// The vCPU took `vector` (it was injected): it moves from the IRR to the ISR. Returns false,
    /// changing nothing, when `vector` is not requested.
    pub fn ack(&mut self, vector: u8) -> bool {
        if !self.irr.contains(vector) {
            return false;
        }
        self.irr.remove(vector);
        self.isr.insert(vector);
        true
    }

    /// An EOI: ends the highest in-service interrupt and reports it (`None` when none was in
    /// service, which is harmless).
    pub fn eoi(&mut self) -> Option<Eoi> {
        let vector = self.isr.highest()?;
        self.isr.remove(vector);
        Some(Eoi {
            vector,
            level: self.tmr.contains(vector),
        })
    }

    /// A target receives `ipi` (after [`Ipi::targets`]). Fixed and lowest-priority interrupts
    /// go to the IRR; NMI, INIT and SIPI become pending events ([`Lapic::take_event`]); SMI and
    /// INIT level de-assert are ignored. Returns whether anything changed, so that the caller
    /// wakes the vCPU.
    pub fn receive(&mut self, ipi: &Ipi) -> bool {
        match ipi.delivery {
            Delivery::Fixed | Delivery::LowestPriority => {
                if ipi.trigger == Trigger::Level && ipi.level == Level::Deassert {
                    return false;
                }
                self.accept(ipi.vector, ipi.trigger)
            }
            Delivery::Smi | Delivery::Init(Level::Deassert) => false,
            Delivery::Nmi => {
                self.nmi_pending = true;
                true
            }
            Delivery::Init(Level::Assert) => {
                self.init_pending = true;
                self.sipi_pending = None;
                true
            }
            Delivery::StartUp(vector) => {
                self.sipi_pending = Some(vector);
                true
            }
        }
    }

    /// Whether the vCPU is in wait-for-SIPI: it must not run until [`Event::StartUp`].
    pub fn waiting_for_sipi(&self) -> bool {
        self.wait_for_sipi
    }

    /// Puts the vCPU in or out of wait-for-SIPI (for the toolstack bringing vCPUs up another
    /// way).
    pub fn set_waiting_for_sipi(&mut self, waiting: bool) {
        self.wait_for_sipi = waiting;
    }

    /// The next pending event, in the order the CPU takes them: INIT (the APIC does its INIT
    /// reset here and the vCPU waits for a SIPI), then a SIPI if the vCPU waits for one (else it
    /// is dropped), then an NMI (held while waiting for a SIPI).
    pub fn take_event(&mut self) -> Option<Event> {
        if self.init_pending {
            self.init_pending = false;
            self.nmi_pending = false;
            self.init();
            self.wait_for_sipi = true;
            return Some(Event::Init);
        }
        if let Some(vector) = self.sipi_pending.take() {
            if self.wait_for_sipi {
                self.wait_for_sipi = false;
                return Some(Event::StartUp { vector });
            }
        }
        if self.nmi_pending && !self.wait_for_sipi {
            self.nmi_pending = false;
            return Some(Event::Nmi);
        }
        None
    }

    /// Whether [`Lapic::take_event`] has something (an NMI held by wait-for-SIPI counts).
    pub fn has_event(&self) -> bool {
        self.init_pending || self.sipi_pending.is_some() || self.nmi_pending
    }

    /// Records APIC errors in the pending ESR; a newly set bit raises the LVT error interrupt
    /// unless it is masked (a vector below 16 there adds "receive illegal vector" instead).
    fn error(&mut self, bits: u32) {
        if bits & !self.pending_esr == 0 {
            return;
        }
        self.pending_esr |= bits;
        let lvt = self.lvt[LVT_ERROR_INDEX];
        if lvt & LVT_MASKED != 0 || !self.enabled() {
            return;
        }
        let vector = lvt as u8;
        if vector < 16 {
            self.pending_esr |= esr::RECEIVE_ILLEGAL_VECTOR;
        } else {
            self.irr.insert(vector);
            self.tmr.remove(vector);
        }
    }

    // ---- The timer (SDM Vol. 3A, 11.5.4) ----

    fn timer_mode(&self) -> TimerMode {
        match self.lvt[LVT_TIMER_INDEX] & (TIMER_PERIODIC | TIMER_TSC_DEADLINE) {
            0 => TimerMode::OneShot,
            TIMER_PERIODIC => TimerMode::Periodic,
            TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }

    fn counts(&self) -> bool {
        matches!(self.timer_mode(), TimerMode::OneShot | TimerMode::Periodic)
    }

    /// The divisor the Divide Configuration Register selects: bits 3 and 1:0 (SDM Figure 11-10).
    fn divisor(divide: u32) -> u64 {
        match (divide & 3) | ((divide & 8) >> 1) {
            7 => 1,
            code => 2 << code,
        }
    }

    /// TSC ticks per count: at most 128 * (2^32 - 1).
    fn ticks_per_count(&self) -> u64 {
        Self::divisor(self.divide) * u64::from(self.config.tsc_per_bus_cycle)
    }

    fn period(&self) -> u64 {
        u64::from(self.initial_count).saturating_mul(self.ticks_per_count())
    }

    /// The Current Count register at `now`.
    fn current_count(&self, now: u64) -> u32 {
        if !self.counting || !self.counts() {
            return 0;
        }
        let remaining = if now < self.deadline {
            self.deadline - now
        } else if self.timer_mode() == TimerMode::Periodic && self.period() != 0 {
            self.period() - (now - self.deadline) % self.period()
        } else {
            0
        };
        let tpc = self.ticks_per_count();
        let count = remaining / tpc + u64::from(remaining % tpc != 0);
        count.min(u64::from(self.initial_count)) as u32
    }

    /// Brings the timer up to `now`: an expiry raises the LVT timer vector unless the entry is
    /// masked, ends a one-shot count or a TSC deadline, and starts a periodic count's next
    /// period (one interrupt however many periods passed). Returns whether it raised an
    /// interrupt. Register accesses do this first; the caller does it before entering the vCPU
    /// and when the host timer armed for [`Lapic::next_deadline`] fires.
    pub fn advance_timer(&mut self, now: u64) -> bool {
        let expired = match self.timer_mode() {
            TimerMode::OneShot if self.counting && now >= self.deadline => {
                self.counting = false;
                true
            }
            TimerMode::Periodic if self.counting && now >= self.deadline => {
                let period = self.period();
                match (now - self.deadline).checked_div(period) {
                    Some(missed) => {
                        let periods = missed.saturating_add(1);
                        self.deadline =
                            self.deadline.saturating_add(periods.saturating_mul(period));
                    }
                    None => self.counting = false,
                }
                true
            }
            TimerMode::TscDeadline if self.tsc_deadline != 0 && now >= self.tsc_deadline => {
                self.tsc_deadline = 0;
                true
            }
            _ => false,
        };
        let lvt = self.lvt[LVT_TIMER_INDEX];
        expired && lvt & LVT_MASKED == 0 && self.accept(lvt as u8, Trigger::Edge)
    }

    /// When the timer next raises an interrupt, in `now`'s timebase, if it is running and its
    /// LVT entry is not masked (a masked expiry changes nothing visible until the next access,
    /// which brings the timer up to date).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.mode() == Mode::Disabled || self.lvt[LVT_TIMER_INDEX] & LVT_MASKED != 0 {
            return None;
        }
        match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic if self.counting => Some(self.deadline),
            TimerMode::TscDeadline if self.tsc_deadline != 0 => Some(self.tsc_deadline),
            _ => None,
        }
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline in TSC-deadline mode, else 0.
    pub fn read_tsc_deadline(&self) -> u64 {
        match self.timer_mode() {
            TimerMode::TscDeadline => self.tsc_deadline,
            _ => 0,
        }
    }

    /// WRMSR IA32_TSC_DEADLINE at `now`: arms the timer (0 disarms; a deadline already passed
    /// fires at once). Ignored outside TSC-deadline mode and while the APIC is disabled (SDM
    /// Vol. 3A, 11.5.4.1). The caller checks CPUID's TSC-deadline bit for the #GP.
    pub fn write_tsc_deadline(&mut self, value: u64, now: u64) {
        self.advance_timer(now);
        if self.mode() == Mode::Disabled || self.timer_mode() != TimerMode::TscDeadline {
            return;
        }
        self.tsc_deadline = value;
        self.advance_timer(now);
    }

    fn write_initial_count(&mut self, value: u32, now: u64) {
        if !self.counts() {
            return;
        }
        self.initial_count = value;
        self.counting = value != 0;
        self.deadline = now.saturating_add(self.period());
    }

    fn write_divide(&mut self, value: u32, now: u64) {
        let old = Self::divisor(self.divide);
        self.divide = value & 0xb;
        let new = Self::divisor(self.divide);
        // A running count goes on from where it is at the new rate.
        if self.counting && self.counts() && now < self.deadline {
            let remaining = (self.deadline - now).saturating_mul(new) / old;
            self.deadline = now.saturating_add(remaining);
        }
    }

    fn write_lvt_timer(&mut self, value: u32) {
        let was_deadline = self.timer_mode() == TimerMode::TscDeadline;
        self.lvt[LVT_TIMER_INDEX] = value;
        if was_deadline != (self.timer_mode() == TimerMode::TscDeadline) {
            self.initial_count = 0;
            self.counting = false;
            self.tsc_deadline = 0;
        }
    }

    // ---- Registers ----

    /// The bits of LVT entry `index` a guest can set.
    fn lvt_writable(&self, index: usize) -> u32 {
        let base = LVT_MASKED | VECTOR;
        match index {
            LVT_TIMER_INDEX if self.config.tsc_deadline => {
                base | TIMER_PERIODIC | TIMER_TSC_DEADLINE
            }
            LVT_TIMER_INDEX => base | TIMER_PERIODIC,
            LVT_LINT0_INDEX | LVT_LINT1_INDEX => base | DELIVERY_MODE | LVT_POLARITY | LVT_LEVEL,
            LVT_ERROR_INDEX => base,
            _ => base | DELIVERY_MODE,
        }
    }

    fn lvt_index(offset: u32) -> Option<usize> {
        match offset {
            reg::LVT_TIMER => Some(LVT_TIMER_INDEX),
            reg::LVT_THERMAL => Some(LVT_THERMAL_INDEX),
            reg::LVT_PERF => Some(LVT_PERF_INDEX),
            reg::LVT_LINT0 => Some(LVT_LINT0_INDEX),
            reg::LVT_LINT1 => Some(LVT_LINT1_INDEX),
            reg::LVT_ERROR => Some(LVT_ERROR_INDEX),
            reg::LVT_CMCI => Some(LVT_CMCI_INDEX),
            _ => None,
        }
    }

    fn write_lvt(&mut self, index: usize, value: u32) {
        let mut value = value & self.lvt_writable(index);
        if !self.software_enabled() {
            value |= LVT_MASKED;
        }
        if index == LVT_TIMER_INDEX {
            self.write_lvt_timer(value);
        } else if let Some(entry) = self.lvt.get_mut(index) {
            *entry = value;
        }
    }

    fn write_svr(&mut self, value: u32) {
        self.svr = value & SVR_WRITABLE;
        if !self.software_enabled() {
            // SDM 11.4.7.2: software disable masks every LVT entry.
            for entry in &mut self.lvt {
                *entry |= LVT_MASKED;
            }
        }
    }

    /// The ESR write: the errors since the last write become visible, and collecting starts
    /// over.
    fn write_esr(&mut self) {
        self.esr = self.pending_esr;
        self.pending_esr = 0;
    }

    /// Sends what the ICR now holds.
    fn send_icr(&mut self) -> Effect {
        let ipi = Ipi::decode(self.icr, self.mode() == Mode::X2Apic);
        self.send(ipi)
    }

    /// Sends `ipi` (`None`: a reserved delivery mode, nothing to send).
    fn send(&mut self, ipi: Option<Ipi>) -> Effect {
        let Some(ipi) = ipi else {
            return Effect::Done;
        };
        if matches!(ipi.delivery, Delivery::Fixed | Delivery::LowestPriority) && ipi.vector < 16 {
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return Effect::Done;
        }
        Effect::SendIpi(ipi)
    }

    fn eoi_effect(&mut self) -> Effect {
        match self.eoi() {
            Some(eoi) => Effect::Eoi(eoi),
            None => Effect::Done,
        }
    }

    /// Reads the registers both modes share; `None` for the others.
    fn read_common(&self, offset: u32, now: u64) -> Option<u32> {
        let index = ((offset >> 4) & 7) as usize;
        Some(match offset {
            reg::VERSION => VERSION,
            reg::TPR => u32::from(self.tpr),
            reg::PPR => u32::from(self.ppr()),
            reg::SVR => self.svr,
            0x100..=0x170 => self.isr.word(index),
            0x180..=0x1f0 => self.tmr.word(index),
            0x200..=0x270 => self.irr.word(index),
            reg::ESR => self.esr,
            reg::TIMER_INITIAL => self.initial_count,
            reg::TIMER_CURRENT => self.current_count(now),
            reg::TIMER_DIVIDE => self.divide,
            _ => *self.lvt.get(Self::lvt_index(offset)?)?,
        })
    }

    /// Reads the xAPIC register at `offset` (16-byte aligned, below 0x400); `None` for reserved
    /// offsets.
    fn xapic_read(&self, offset: u32, now: u64) -> Option<u32> {
        match offset {
            reg::ID => Some(u32::from(self.xapic_id) << 24),
            reg::APR | reg::EOI => Some(0),
            reg::LDR => Some(self.ldr),
            reg::DFR => Some(self.dfr),
            reg::ICR_LOW => Some(self.icr as u32),
            reg::ICR_HIGH => Some((self.icr >> 32) as u32),
            _ => self.read_common(offset, now),
        }
    }

    /// Writes the xAPIC register at `offset` (16-byte aligned, below 0x400). Writes to
    /// read-only registers are ignored; to reserved ones, an ESR error.
    fn xapic_write(&mut self, offset: u32, value: u32, now: u64) -> Effect {
        match offset {
            reg::ID => self.xapic_id = (value >> 24) as u8,
            reg::VERSION | reg::APR | reg::PPR | reg::TIMER_CURRENT | 0x100..=0x270 => {}
            reg::TPR => self.tpr = value as u8,
            reg::EOI => return self.eoi_effect(),
            reg::LDR => self.ldr = value & 0xff00_0000,
            reg::DFR => self.dfr = value | 0x0fff_ffff,
            reg::SVR => self.write_svr(value),
            reg::ESR => self.write_esr(),
            reg::ICR_LOW => {
                self.icr = (self.icr & !0xffff_ffff) | u64::from(value & ICR_WRITABLE);
                return self.send_icr();
            }
            reg::ICR_HIGH => {
                self.icr = (self.icr & 0xffff_ffff) | (u64::from(value & ICR_HIGH_WRITABLE) << 32);
            }
            reg::TIMER_INITIAL => self.write_initial_count(value, now),
            reg::TIMER_DIVIDE => self.write_divide(value, now),
            _ => match Self::lvt_index(offset) {
                Some(index) => self.write_lvt(index, value),
                None => self.error(esr::ILLEGAL_REGISTER),
            },
        }
        Effect::Done
    }

    /// A guest load of `size` bytes at `offset` in the xAPIC page, at `now`. Accesses of 1, 2 or
    /// 4 bytes within a register's first 4 bytes read those bytes; other accesses read 0; in
    /// x2APIC mode or disabled, all ones. A reserved register reads 0 and logs ESR "illegal
    /// register address".
    pub fn mmio_read(&mut self, offset: u64, size: u8, now: u64) -> u64 {
        let mask = match size {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        if self.mode() != Mode::XApic {
            return mask;
        }
        self.advance_timer(now);
        let within = offset & 0xf;
        if !matches!(size, 1 | 2 | 4) || within + u64::from(size) > 4 {
            return 0;
        }
        let register = match u32::try_from(offset & !0xf) {
            Ok(register) if register < 0x400 => self.xapic_read(register, now),
            _ => None,
        };
        match register {
            Some(value) => (u64::from(value) >> (8 * within)) & mask,
            None => {
                self.error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// A guest store of `size` bytes of `value` at `offset` in the xAPIC page, at `now`. Only
    /// aligned 4-byte stores to a register reach it (others are dropped), and none in x2APIC
    /// mode or disabled. Never [`Effect::Gp`].
    pub fn mmio_write(&mut self, offset: u64, size: u8, value: u64, now: u64) -> Effect {
        if self.mode() != Mode::XApic {
            return Effect::Done;
        }
        self.advance_timer(now);
        if size != 4 || offset & 0xf != 0 {
            return Effect::Done;
        }
        match u32::try_from(offset) {
            Ok(register) if register < 0x400 => self.xapic_write(register, value as u32, now),
            _ => {
                self.error(esr::ILLEGAL_REGISTER);
                Effect::Done
            }
        }
    }

    /// An aligned 32-bit load from the xAPIC register at `offset` ([`Lapic::mmio_read`]).
    pub fn read(&mut self, offset: u32, now: u64) -> u32 {
        self.mmio_read(u64::from(offset), 4, now) as u32
    }

    /// An aligned 32-bit store to the xAPIC register at `offset` ([`Lapic::mmio_write`]).
    pub fn write(&mut self, offset: u32, value: u32, now: u64) -> Effect {
        self.mmio_write(u64::from(offset), 4, u64::from(value), now)
    }

    /// The register offset of x2APIC MSR `msr`, if it is in the APIC's range and the APIC is
    /// in x2APIC mode (else the access is #GP, SDM Vol. 3A 11.12.1.2).
    fn x2apic_offset(&self, msr: u32) -> Option<u32> {
        if self.mode() != Mode::X2Apic || !(msr::X2APIC_FIRST..=msr::X2APIC_LAST).contains(&msr) {
            return None;
        }
        Some((msr - msr::X2APIC_FIRST) << 4)
    }

    /// RDMSR of x2APIC register `msr` (0x800-0x8FF) at `now`. #GP outside x2APIC mode, for
    /// reserved and write-only registers (EOI, SELF IPI) and for the xAPIC-only ones (APR, DFR,
    /// ICR high); the ICR reads as one 64-bit register.
    pub fn rdmsr(&mut self, msr: u32, now: u64) -> Result<u64, Gp> {
        let offset = self.x2apic_offset(msr).ok_or(Gp)?;
        self.advance_timer(now);
        match offset {
            reg::ID => Ok(u64::from(self.config.apic_id)),
            reg::LDR => Ok(u64::from(self.ldr())),
            reg::ICR_LOW => Ok(self.icr),
            _ => self.read_common(offset, now).map(u64::from).ok_or(Gp),
        }
    }

    /// WRMSR of x2APIC register `msr` (0x800-0x8FF) at `now`. #GP outside x2APIC mode, for
    /// reserved and read-only registers, for reserved bits set (SDM Vol. 3A, 11.12.1.3) and for
    /// a non-zero EOI or ESR write. The ICR is written as one 64-bit register and sends.
    pub fn wrmsr(&mut self, msr: u32, value: u64, now: u64) -> Effect {
        let Some(offset) = self.x2apic_offset(msr) else {
            return Effect::Gp;
        };
        self.advance_timer(now);
        if offset == reg::ICR_LOW {
            let low = value as u32;
            if low & !(ICR_WRITABLE | DELIVERY_STATUS) != 0 {
                return Effect::Gp;
            }
            self.icr = value & !u64::from(DELIVERY_STATUS);
            return self.send_icr();
        }
        let Ok(value) = u32::try_from(value) else {
            return Effect::Gp;
        };
        match offset {
            reg::TPR if value <= 0xff => self.tpr = value as u8,
            reg::EOI if value == 0 => return self.eoi_effect(),
            reg::SVR if value & !SVR_WRITABLE == 0 => self.write_svr(value),
            reg::ESR if value == 0 => self.write_esr(),
            reg::TIMER_INITIAL => self.write_initial_count(value, now),
            reg::TIMER_DIVIDE if value & !0xb == 0 => self.write_divide(value, now),
            reg::SELF_IPI if value <= 0xff => {
                // A fixed, edge-triggered IPI to self; the ICR is untouched (SDM 11.12.11).
                return self.send(Some(Ipi {
                    delivery: Delivery::Fixed,
                    destination: Destination::SelfOnly,
                    vector: value as u8,
                    level: Level::Assert,
                    trigger: Trigger::Edge,
                    x2apic: true,
                }));
            }
            _ => {
                let Some(index) = Self::lvt_index(offset) else {
                    return Effect::Gp;
                };
                let read_only = DELIVERY_STATUS | LVT_REMOTE_IRR;
                if value & !(self.lvt_writable(index) | read_only) != 0 {
                    return Effect::Gp;
                }
                self.write_lvt(index, value);
            }
        }
        Effect::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE_EN: u64 = DEFAULT_BASE | apic_base::EN;
    const X2APIC_BASE: u64 = BASE_EN | apic_base::EXTD;

    fn config(apic_id: u32) -> Config {
        Config {
            apic_id,
            bsp: apic_id == 0,
            x2apic: true,
            tsc_deadline: true,
            tsc_per_bus_cycle: 1,
        }
    }

    /// A software-enabled xAPIC.
    fn xapic(apic_id: u32) -> Lapic {
        let mut apic = Lapic::new(config(apic_id));
        assert_eq!(apic.write(reg::SVR, 0x1ff, 0), Effect::Done);
        apic
    }

    /// A software-enabled x2APIC.
    fn x2apic(apic_id: u32) -> Lapic {
        let mut apic = xapic(apic_id);
        apic.write_apic_base(X2APIC_BASE).unwrap();
        apic
    }

    fn msr_of(offset: u32) -> u32 {
        msr::X2APIC_FIRST + (offset >> 4)
    }

    /// The IPI an xAPIC sends for ICR high/low.
    fn send(apic: &mut Lapic, high: u32, low: u32) -> Effect {
        assert_eq!(apic.write(reg::ICR_HIGH, high, 0), Effect::Done);
        apic.write(reg::ICR_LOW, low, 0)
    }

    fn ipi(effect: Effect) -> Ipi {
        match effect {
            Effect::SendIpi(ipi) => ipi,
            other => panic!("expected an IPI, got {other:?}"),
        }
    }

    #[test]
    fn power_up_values() {
        let mut ap = Lapic::new(config(3));
        assert_eq!(ap.mode(), Mode::XApic);
        assert_eq!(ap.apic_base(), 0xfee0_0800);
        assert!(ap.waiting_for_sipi());
        assert_eq!(ap.read(reg::ID, 0), 3 << 24);
        assert_eq!(ap.read(reg::VERSION, 0), 0x0006_0014);
        assert_eq!(ap.read(reg::TPR, 0), 0);
        assert_eq!(ap.read(reg::APR, 0), 0);
        assert_eq!(ap.read(reg::PPR, 0), 0);
        assert_eq!(ap.read(reg::LDR, 0), 0);
        assert_eq!(ap.read(reg::DFR, 0), 0xffff_ffff);
        assert_eq!(ap.read(reg::SVR, 0), 0xff);
        for i in 0..8 {
            assert_eq!(ap.read(reg::ISR + 0x10 * i, 0), 0);
            assert_eq!(ap.read(reg::TMR + 0x10 * i, 0), 0);
            assert_eq!(ap.read(reg::IRR + 0x10 * i, 0), 0);
        }
        assert_eq!(ap.read(reg::ESR, 0), 0);
        for lvt in [
            reg::LVT_CMCI,
            reg::LVT_TIMER,
            reg::LVT_THERMAL,
            reg::LVT_PERF,
            reg::LVT_LINT0,
            reg::LVT_LINT1,
            reg::LVT_ERROR,
        ] {
            assert_eq!(ap.read(lvt, 0), 0x1_0000, "LVT {lvt:#x} masked");
        }
        assert_eq!(ap.read(reg::ICR_LOW, 0), 0);
        assert_eq!(ap.read(reg::ICR_HIGH, 0), 0);
        assert_eq!(ap.read(reg::TIMER_INITIAL, 0), 0);
        assert_eq!(ap.read(reg::TIMER_CURRENT, 0), 0);
        assert_eq!(ap.read(reg::TIMER_DIVIDE, 0), 0);
        assert_eq!(ap.read(reg::EOI, 0), 0);

        let bsp = Lapic::new(config(0));
        assert_eq!(bsp.apic_base(), 0xfee0_0900);
        assert!(!bsp.waiting_for_sipi());
    }

    #[test]
    fn sub_word_mmio_reads() {
        let mut apic = xapic(0x5a);
        assert_eq!(apic.mmio_read(u64::from(reg::ID) + 3, 1, 0), 0x5a);
        assert_eq!(apic.mmio_read(u64::from(reg::ID) + 2, 2, 0), 0x5a00);
        assert_eq!(
            apic.mmio_read(u64::from(reg::ID) + 3, 2, 0),
            0,
            "crosses the register"
        );
        assert_eq!(
            apic.mmio_read(u64::from(reg::ID) + 4, 4, 0),
            0,
            "bytes 4-15"
        );
        assert_eq!(apic.mmio_read(u64::from(reg::ID), 8, 0), 0, "8 bytes");
        // Writes other than aligned 4-byte ones are dropped.
        assert_eq!(
            apic.mmio_write(u64::from(reg::TPR), 1, 0x20, 0),
            Effect::Done
        );
        assert_eq!(
            apic.mmio_write(u64::from(reg::TPR) + 4, 4, 0x20, 0),
            Effect::Done
        );
        assert_eq!(apic.read(reg::TPR, 0), 0);
        assert_eq!(
            apic.mmio_write(u64::from(reg::TPR), 4, 0x1_0020, 0),
            Effect::Done
        );
        assert_eq!(apic.read(reg::TPR, 0), 0x20);
    }

    #[test]
    fn xapic_register_masks() {
        let mut apic = xapic(1);
        let _ = apic.write(reg::ID, 0xffff_ffff, 0);
        assert_eq!(
            apic.read(reg::ID, 0),
            0xff00_0000,
            "the xAPIC ID is writable"
        );
        let _ = apic.write(reg::VERSION, 0, 0);
        assert_eq!(apic.read(reg::VERSION, 0), VERSION, "read-only");
        let _ = apic.write(reg::LDR, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::LDR, 0), 0xff00_0000);
        let _ = apic.write(reg::DFR, 0, 0);
        assert_eq!(apic.read(reg::DFR, 0), 0x0fff_ffff);
        let _ = apic.write(reg::SVR, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::SVR, 0), 0x3ff, "no directed EOI");
        let _ = apic.write(reg::SVR, 0x105, 0);
        assert_eq!(apic.read(reg::SVR, 0), 0x105, "vectors 0-15 are writable");
        let _ = apic.write(reg::LVT_LINT0, 0xffff_ffff, 0);
        assert_eq!(
            apic.read(reg::LVT_LINT0, 0),
            0x1_a7ff,
            "no status, no remote IRR"
        );
        let _ = apic.write(reg::LVT_ERROR, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::LVT_ERROR, 0), 0x1_00ff);
        let _ = apic.write(reg::LVT_TIMER, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::LVT_TIMER, 0), 0x7_00ff);
        let _ = apic.write(reg::LVT_CMCI, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::LVT_CMCI, 0), 0x1_07ff);
        let _ = apic.write(reg::TIMER_DIVIDE, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::TIMER_DIVIDE, 0), 0xb);
        let _ = apic.write(reg::IRR, 0xffff_ffff, 0);
        assert_eq!(apic.read(reg::IRR, 0), 0, "read-only");
    }

    #[test]
    fn esr_is_write_before_read() {
        let mut apic = xapic(0);
        // A fixed IPI with vector 5 is not sent: "send illegal vector".
        assert_eq!(send(&mut apic, 0, 0x4005), Effect::Done);
        assert_eq!(apic.read(reg::ESR, 0), 0, "not visible before a write");
        let _ = apic.write(reg::ESR, 0x1234, 0);
        assert_eq!(apic.read(reg::ESR, 0), esr::SEND_ILLEGAL_VECTOR);
        assert_eq!(
            apic.read(reg::ESR, 0),
            esr::SEND_ILLEGAL_VECTOR,
            "reads keep it"
        );
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(apic.read(reg::ESR, 0), 0, "the next write clears it");
    }

    #[test]
    fn esr_raises_lvt_error_once_per_new_bit() {
        let mut apic = xapic(0);
        let _ = apic.write(reg::LVT_ERROR, 0xfe, 0);
        assert_eq!(send(&mut apic, 0, 0x0001), Effect::Done);
        assert!(apic.irr().contains(0xfe));
        assert!(apic.ack(0xfe));
        let _ = apic.eoi();
        // The same error again: no new bit, no interrupt until the ESR is written.
        assert_eq!(send(&mut apic, 0, 0x0001), Effect::Done);
        assert!(!apic.irr().contains(0xfe));
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(send(&mut apic, 0, 0x0001), Effect::Done);
        assert!(apic.irr().contains(0xfe));
    }

    #[test]
    fn esr_lvt_error_with_illegal_vector() {
        let mut apic = xapic(0);
        let _ = apic.write(reg::LVT_ERROR, 0x03, 0);
        assert_eq!(send(&mut apic, 0, 0x0001), Effect::Done);
        assert!(apic.irr().is_empty());
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(
            apic.read(reg::ESR, 0),
            esr::SEND_ILLEGAL_VECTOR | esr::RECEIVE_ILLEGAL_VECTOR
        );
    }

    #[test]
    fn illegal_register_address() {
        let mut apic = xapic(0);
        assert_eq!(apic.read(0x010, 0), 0);
        assert_eq!(apic.read(reg::RRD, 0), 0);
        assert_eq!(apic.read(reg::SELF_IPI, 0), 0, "x2APIC only");
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(apic.read(reg::ESR, 0), esr::ILLEGAL_REGISTER);
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(apic.mmio_read(0x800, 4, 0), 0);
        assert_eq!(apic.write(0xff0, 1, 0), Effect::Done);
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(apic.read(reg::ESR, 0), esr::ILLEGAL_REGISTER);
    }

    #[test]
    fn accept_illegal_vector() {
        let mut apic = xapic(0);
        assert!(!apic.accept(15, Trigger::Edge));
        assert!(apic.irr().is_empty());
        let _ = apic.write(reg::ESR, 0, 0);
        assert_eq!(apic.read(reg::ESR, 0), esr::RECEIVE_ILLEGAL_VECTOR);
        assert!(apic.accept(16, Trigger::Edge));
    }

    #[test]
    fn tpr_ppr_and_priority_classes() {
        let mut apic = xapic(0);
        let _ = apic.write(reg::TPR, 0x20, 0);
        assert!(apic.accept(0x2f, Trigger::Edge));
        assert_eq!(
            apic.highest_pending(),
            None,
            "class 2 is not above TPR 0x20"
        );
        assert!(apic.accept(0x31, Trigger::Edge));
        assert_eq!(apic.highest_pending(), Some(0x31));
        assert!(apic.ack(0x31));
        assert_eq!(apic.read(reg::PPR, 0), 0x30, "the ISR's class");
        assert_eq!(apic.highest_pending(), None);
        let _ = apic.write(reg::TPR, 0x3f, 0);
        assert_eq!(
            apic.read(reg::PPR, 0),
            0x3f,
            "the TPR when its class is not lower"
        );
        let _ = apic.write(reg::TPR, 0, 0);
        let _ = apic.write(reg::EOI, 0, 0);
        assert_eq!(apic.read(reg::PPR, 0), 0);
        assert_eq!(apic.highest_pending(), Some(0x2f));
        assert!(!apic.ack(0x40), "not requested");
    }

    #[test]
    fn in_service_masks_same_and_lower_classes() {
        let mut apic = xapic(0);
        assert!(apic.accept(0x50, Trigger::Edge));
        assert!(apic.ack(0x50));
        assert!(apic.accept(0x45, Trigger::Edge));
        assert!(apic.accept(0x5f, Trigger::Edge));
        assert_eq!(apic.highest_pending(), None);
        assert!(apic.accept(0x60, Trigger::Edge));
        assert_eq!(apic.highest_pending(), Some(0x60));
    }

    #[test]
    fn eoi_ends_the_highest_in_service_first() {
        let mut apic = xapic(0);
        assert!(apic.accept(0x40, Trigger::Edge));
        assert!(apic.ack(0x40));
        assert!(apic.accept(0x90, Trigger::Level));
        assert_eq!(apic.highest_pending(), Some(0x90), "nests above 0x40");
        assert!(apic.ack(0x90));
        assert!(apic.accept(0x80, Trigger::Edge));
        assert_eq!(apic.highest_pending(), None);
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            Effect::Eoi(Eoi {
                vector: 0x90,
                level: true
            })
        );
        assert_eq!(apic.highest_pending(), Some(0x80));
        assert!(apic.ack(0x80));
        assert_eq!(apic.eoi().map(|e| e.vector), Some(0x80));
        assert_eq!(
            apic.eoi(),
            Some(Eoi {
                vector: 0x40,
                level: false
            })
        );
        assert_eq!(
            apic.write(reg::EOI, 0, 0),
            Effect::Done,
            "nothing in service"
        );
    }

    #[test]
    fn software_disable() {
        let mut apic = Lapic::new(config(0));
        assert!(
            !apic.accept(0x40, Trigger::Edge),
            "software-disabled at reset"
        );
        let _ = apic.write(reg::LVT_TIMER, 0x30, 0);
        assert_eq!(apic.read(reg::LVT_TIMER, 0), 0x1_0030, "LVTs stay masked");
        let _ = apic.write(reg::SVR, 0x1ff, 0);
        let _ = apic.write(reg::LVT_TIMER, 0x30, 0);
        let _ = apic.write(reg::LVT_LINT1, 0x400, 0);
        assert!(apic.accept(0x40, Trigger::Edge));
        assert_eq!(apic.highest_pending(), Some(0x40));
        let _ = apic.write(reg::SVR, 0xff, 0);
        assert_eq!(apic.read(reg::LVT_TIMER, 0), 0x1_0030);
        assert_eq!(apic.read(reg::LVT_LINT1, 0), 0x1_0400);
        assert_eq!(apic.highest_pending(), None, "held, not delivered");
        assert!(apic.irr().contains(0x40));
    }

    #[test]
    fn icr_decoding() {
        let mut apic = xapic(0);
        let fixed = ipi(send(&mut apic, 0x0300_0000, 0x0000_5041));
        assert_eq!(
            fixed,
            Ipi {
                delivery: Delivery::Fixed,
                destination: Destination::Physical(3),
                vector: 0x41,
                level: Level::Assert,
                trigger: Trigger::Edge,
                x2apic: false,
            }
        );
        assert_eq!(apic.read(reg::ICR_LOW, 0), 0x4041, "delivery status idle");
        assert_eq!(apic.read(reg::ICR_HIGH, 0), 0x0300_0000);
        let lowest = ipi(send(&mut apic, 0x0f00_0000, 0x0000_8941));
        assert_eq!(lowest.delivery, Delivery::LowestPriority);
        assert_eq!(lowest.destination, Destination::Logical(0x0f));
        assert_eq!(lowest.trigger, Trigger::Level);
        assert_eq!(lowest.level, Level::Deassert);
        assert_eq!(ipi(send(&mut apic, 0, 0x0000_0400)).delivery, Delivery::Nmi);
        assert_eq!(ipi(send(&mut apic, 0, 0x0000_0200)).delivery, Delivery::Smi);
        assert_eq!(
            ipi(send(&mut apic, 0x0100_0000, 0x0000_c500)).delivery,
            Delivery::Init(Level::Assert)
        );
        assert_eq!(
            ipi(send(&mut apic, 0x0100_0000, 0x0000_8500)).delivery,
            Delivery::Init(Level::Deassert)
        );
        assert_eq!(
            ipi(send(&mut apic, 0x0100_0000, 0x0000_0500)).delivery,
            Delivery::Init(Level::Assert),
            "edge-triggered INIT is an INIT"
        );
        let sipi = ipi(send(&mut apic, 0x0100_0000, 0x0000_0608));
        assert_eq!(sipi.delivery, Delivery::StartUp(8));
        assert_eq!(sipi_start_address(8), 0x8000);
        assert_eq!(sipi_start_address(0x9f), 0x9_f000);
        assert_eq!(
            send(&mut apic, 0, 0x0000_0340),
            Effect::Done,
            "mode 3 reserved"
        );
        assert_eq!(
            send(&mut apic, 0, 0x0000_0740),
            Effect::Done,
            "mode 7 reserved"
        );
        let shorthands = [
            (0x0004_0040, Destination::SelfOnly),
            (0x0008_0040, Destination::AllIncludingSelf),
            (0x000c_0040, Destination::AllExcludingSelf),
        ];
        for (low, destination) in shorthands {
            assert_eq!(ipi(send(&mut apic, 0, low)).destination, destination);
        }
    }

    fn xapics(count: u32) -> [Lapic; 4] {
        core::array::from_fn(|i| xapic(i as u32 % count))
    }

    fn addressing(apics: &[Lapic]) -> [Addressing; 4] {
        core::array::from_fn(|i| apics[i].addressing())
    }

    fn set(indexes: &[usize]) -> VcpuSet {
        VcpuSet(indexes.iter().fold(0, |bits, i| bits | 1 << i))
    }

    #[test]
    fn physical_destinations() {
        let mut apics = xapics(4);
        let all = addressing(&apics);
        assert_eq!(
            ipi(send(&mut apics[0], 0x0200_0000, 0x40)).targets(0, &all),
            set(&[2])
        );
        assert_eq!(
            ipi(send(&mut apics[0], 0x0900_0000, 0x40)).targets(0, &all),
            set(&[])
        );
        let broadcast = ipi(send(&mut apics[1], 0xff00_0000, 0x40));
        assert_eq!(broadcast.targets(1, &all), set(&[0, 1, 2, 3]));

        let mut x2 = [x2apic(0), x2apic(1), x2apic(0xff), x2apic(0x100)];
        let all = addressing(&x2);
        let to = |apic: &mut Lapic, dest: u64| {
            ipi(apic.wrmsr(msr_of(reg::ICR_LOW), (dest << 32) | 0x40, 0))
        };
        assert_eq!(to(&mut x2[0], 0x100).targets(0, &all), set(&[3]));
        assert_eq!(
            to(&mut x2[0], 0xff).targets(0, &all),
            set(&[2]),
            "not a broadcast"
        );
        assert_eq!(
            to(&mut x2[1], 0xffff_ffff).targets(1, &all),
            set(&[0, 1, 2, 3])
        );
    }

    #[test]
    fn shorthand_destinations() {
        let mut apics = xapics(4);
        let all = addressing(&apics);
        let high = 0x0200_0000; // ignored with a shorthand
        assert_eq!(
            ipi(send(&mut apics[1], high, 0x4_0040)).targets(1, &all),
            set(&[1])
        );
        assert_eq!(
            ipi(send(&mut apics[1], high, 0x8_0040)).targets(1, &all),
            set(&[0, 1, 2, 3])
        );
        assert_eq!(
            ipi(send(&mut apics[1], high, 0xc_0040)).targets(1, &all),
            set(&[0, 2, 3])
        );
        // INIT and SIPI to all but self: Linux's bring-up without shorthand is physical.
        let init = ipi(send(&mut apics[0], 0, 0xc_c500));
        assert_eq!(init.targets(0, &all), set(&[1, 2, 3]));
    }

    #[test]
    fn logical_flat_destinations() {
        let mut apics = xapics(4);
        for (i, apic) in apics.iter_mut().enumerate() {
            let _ = apic.write(reg::LDR, 1 << (24 + i), 0);
        }
        let all = addressing(&apics);
        assert_eq!(
            ipi(send(&mut apics[0], 0x0500_0000, 0x840)).targets(0, &all),
            set(&[0, 2])
        );
        assert_eq!(
            ipi(send(&mut apics[0], 0x1000_0000, 0x840)).targets(0, &all),
            set(&[])
        );
        assert_eq!(
            ipi(send(&mut apics[0], 0xff00_0000, 0x840)).targets(0, &all),
            set(&[0, 1, 2, 3])
        );
    }

    #[test]
    fn logical_cluster_destinations() {
        let mut apics = xapics(4);
        for (apic, ldr) in apics.iter_mut().zip([0x11, 0x12, 0x21, 0x28]) {
            let _ = apic.write(reg::DFR, 0x0fff_ffff, 0);
            let _ = apic.write(reg::LDR, ldr << 24, 0);
        }
        let all = addressing(&apics);
        let to = |apic: &mut Lapic, mda: u32| ipi(send(apic, mda << 24, 0x840));
        assert_eq!(to(&mut apics[0], 0x13).targets(0, &all), set(&[0, 1]));
        assert_eq!(to(&mut apics[0], 0x29).targets(0, &all), set(&[2, 3]));
        assert_eq!(to(&mut apics[0], 0x31).targets(0, &all), set(&[]));
        assert_eq!(to(&mut apics[0], 0xff).targets(0, &all), set(&[0, 1, 2, 3]));
        // A DFR model that is neither flat nor cluster matches nothing.
        let _ = apics[3].write(reg::DFR, 0x5000_0000, 0);
        let all = addressing(&apics);
        assert_eq!(to(&mut apics[0], 0x28).targets(0, &all), set(&[]));
    }

    #[test]
    fn x2apic_logical_cluster_destinations() {
        let mut apics = [x2apic(0), x2apic(1), x2apic(16), x2apic(17)];
        assert_eq!(apics[3].rdmsr(msr_of(reg::LDR), 0), Ok(0x1_0002));
        let all = addressing(&apics);
        let to = |apic: &mut Lapic, dest: u64| {
            ipi(apic.wrmsr(msr_of(reg::ICR_LOW), (dest << 32) | 0x840, 0))
        };
        assert_eq!(to(&mut apics[0], 0x0_0003).targets(0, &all), set(&[0, 1]));
        assert_eq!(to(&mut apics[0], 0x1_0002).targets(0, &all), set(&[3]));
        assert_eq!(to(&mut apics[0], 0x2_ffff).targets(0, &all), set(&[]));
        assert_eq!(
            to(&mut apics[0], 0xffff_ffff).targets(0, &all),
            set(&[0, 1, 2, 3])
        );
    }

    #[test]
    fn disabled_apics_and_lowest_priority() {
        let mut apics = xapics(4);
        apics[2].write_apic_base(DEFAULT_BASE).unwrap();
        let _ = apics[3].write(reg::SVR, 0xff, 0);
        let all = addressing(&apics);
        let broadcast = ipi(send(&mut apics[0], 0, 0x8_0040));
        assert_eq!(
            broadcast.targets(0, &all),
            set(&[0, 1, 3]),
            "not the disabled one"
        );
        // Lowest priority: one of the software-enabled matches, by the vector.
        let lowest = |apic: &mut Lapic, vector: u32| ipi(send(apic, 0xff00_0000, 0x100 | vector));
        assert_eq!(lowest(&mut apics[0], 0x40).targets(0, &all), set(&[0]));
        assert_eq!(lowest(&mut apics[0], 0x41).targets(0, &all), set(&[1]));
        let nobody = lowest(&mut apics[0], 0x41).targets(0, &[all[2], all[3]]);
        assert!(nobody.is_empty());
        // A software-disabled target drops fixed interrupts but takes an NMI.
        apics[3].set_waiting_for_sipi(false);
        let fixed = ipi(send(&mut apics[0], 0x0300_0000, 0x40));
        assert!(!apics[3].receive(&fixed));
        let nmi = ipi(send(&mut apics[0], 0x0300_0000, 0x400));
        assert!(apics[3].receive(&nmi));
        assert_eq!(apics[3].take_event(), Some(Event::Nmi));
    }

    #[test]
    fn receive_fixed_and_level() {
        let mut sender = xapic(0);
        let mut target = xapic(1);
        let level = ipi(send(&mut sender, 0x0100_0000, 0xc050));
        assert!(target.receive(&level));
        assert!(target.tmr().contains(0x50));
        let deassert = ipi(send(&mut sender, 0x0100_0000, 0x8051));
        assert!(
            !target.receive(&deassert),
            "level de-assert carries no interrupt"
        );
        let smi = ipi(send(&mut sender, 0x0100_0000, 0x200));
        assert!(!target.receive(&smi));
        assert_eq!(target.highest_pending(), Some(0x50));
    }

    #[test]
    fn x2apic_msr_faults() {
        let mut apic = xapic(7);
        assert_eq!(apic.rdmsr(msr_of(reg::ID), 0), Err(Gp), "xAPIC mode");
        assert_eq!(apic.wrmsr(msr_of(reg::TPR), 0, 0), Effect::Gp, "xAPIC mode");
        apic.write_apic_base(X2APIC_BASE).unwrap();

        assert_eq!(apic.rdmsr(msr_of(reg::ID), 0), Ok(7));
        assert_eq!(apic.rdmsr(msr_of(reg::VERSION), 0), Ok(u64::from(VERSION)));
        for read_only in [
            reg::ID,
            reg::VERSION,
            reg::PPR,
            reg::LDR,
            reg::ISR,
            reg::TMR + 0x70,
            reg::IRR,
            reg::TIMER_CURRENT,
        ] {
            assert_eq!(
                apic.wrmsr(msr_of(read_only), 0, 0),
                Effect::Gp,
                "{read_only:#x}"
            );
            assert!(apic.rdmsr(msr_of(read_only), 0).is_ok(), "{read_only:#x}");
        }
        for write_only in [reg::EOI, reg::SELF_IPI] {
            assert_eq!(
                apic.rdmsr(msr_of(write_only), 0),
                Err(Gp),
                "{write_only:#x}"
            );
        }
        for missing in [
            reg::APR,
            reg::DFR,
            reg::ICR_HIGH,
            reg::RRD,
            0x000,
            0x010,
            0x040,
        ] {
            assert_eq!(apic.rdmsr(msr_of(missing), 0), Err(Gp), "{missing:#x}");
            assert_eq!(
                apic.wrmsr(msr_of(missing), 0, 0),
                Effect::Gp,
                "{missing:#x}"
            );
        }
        for outside in [0x7ff, 0x900, 0xbff, 0] {
            assert_eq!(apic.rdmsr(outside, 0), Err(Gp));
            assert_eq!(apic.wrmsr(outside, 0, 0), Effect::Gp);
        }
        assert_eq!(apic.rdmsr(0x8ff, 0), Err(Gp));
        // EOI and ESR take only 0.
        assert_eq!(apic.wrmsr(msr_of(reg::EOI), 1, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::EOI), 0, 0), Effect::Done);
        assert_eq!(apic.wrmsr(msr_of(reg::ESR), 1, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::ESR), 0, 0), Effect::Done);
        // Reserved bits.
        assert_eq!(apic.wrmsr(msr_of(reg::TPR), 0x100, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::TPR), 1 << 32, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::TPR), 0xff, 0), Effect::Done);
        assert_eq!(apic.wrmsr(msr_of(reg::SVR), 0x1000 | 0x1ff, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::LVT_ERROR), 0x700, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::LVT_TIMER), 0x8_0000, 0), Effect::Gp);
        assert_eq!(
            apic.wrmsr(msr_of(reg::LVT_LINT0), 0x1_a7ff, 0),
            Effect::Done
        );
        assert_eq!(apic.wrmsr(msr_of(reg::LVT_LINT0), 0x2_0000, 0), Effect::Gp);
        assert_eq!(apic.wrmsr(msr_of(reg::TIMER_DIVIDE), 0x4, 0), Effect::Gp);
        assert_eq!(
            apic.wrmsr(msr_of(reg::ICR_LOW), 0x2040, 0),
            Effect::Gp,
            "bit 13"
        );
        assert_eq!(
            apic.wrmsr(msr_of(reg::ICR_LOW), 0x1_0040, 0),
            Effect::Gp,
            "bit 16"
        );
        assert_eq!(
            apic.wrmsr(msr_of(reg::ICR_LOW), 0x10_0040, 0),
            Effect::Gp,
            "bit 20"
        );
        assert_eq!(apic.wrmsr(msr_of(reg::SELF_IPI), 0x140, 0), Effect::Gp);
        // MMIO is a hole in x2APIC mode.
        assert_eq!(apic.read(reg::ID, 0), 0xffff_ffff);
        assert_eq!(apic.mmio_read(u64::from(reg::ID), 1, 0), 0xff);
        assert_eq!(apic.write(reg::TPR, 0, 0), Effect::Done);
        assert_eq!(apic.rdmsr(msr_of(reg::TPR), 0), Ok(0xff));
    }

    #[test]
    fn x2apic_icr_and_self_ipi() {
        let mut apic = x2apic(2);
        let icr = (5 << 32) | 0x1000 | 0x4040;
        let sent = ipi(apic.wrmsr(msr_of(reg::ICR_LOW), icr, 0));
        assert_eq!(sent.destination, Destination::Physical(5));
        assert!(sent.x2apic);
        assert_eq!(apic.rdmsr(msr_of(reg::ICR_LOW), 0), Ok((5 << 32) | 0x4040));
        let own = ipi(apic.wrmsr(msr_of(reg::SELF_IPI), 0x45, 0));
        assert_eq!(own.destination, Destination::SelfOnly);
        assert_eq!(own.delivery, Delivery::Fixed);
        assert_eq!(own.vector, 0x45);
        assert_eq!(
            apic.rdmsr(msr_of(reg::ICR_LOW), 0),
            Ok((5 << 32) | 0x4040),
            "untouched"
        );
        assert_eq!(
            apic.wrmsr(msr_of(reg::SELF_IPI), 0x05, 0),
            Effect::Done,
            "illegal"
        );
        let _ = apic.wrmsr(msr_of(reg::ESR), 0, 0);
        assert_eq!(
            apic.rdmsr(msr_of(reg::ESR), 0),
            Ok(u64::from(esr::SEND_ILLEGAL_VECTOR))
        );
    }

    #[test]
    fn apic_base_transitions() {
        let mut apic = xapic(1);
        let _ = apic.write(reg::TPR, 0x20, 0);
        assert_eq!(
            apic.write_apic_base(DEFAULT_BASE | 0x1000),
            Err(Gp),
            "relocation"
        );
        assert_eq!(apic.write_apic_base(BASE_EN | 0x1), Err(Gp), "reserved bit");
        assert_eq!(
            apic.write_apic_base(BASE_EN | 0x200),
            Err(Gp),
            "reserved bit 9"
        );
        assert_eq!(
            apic.write_apic_base(BASE_EN | (1 << 40)),
            Err(Gp),
            "reserved bit"
        );
        assert_eq!(
            apic.write_apic_base(DEFAULT_BASE | apic_base::EXTD),
            Err(Gp),
            "EXTD without EN"
        );
        assert_eq!(
            apic.write_apic_base(BASE_EN | apic_base::BSP),
            Ok(()),
            "same mode"
        );
        // xAPIC -> disabled -> xAPIC: back from reset.
        assert_eq!(apic.write_apic_base(DEFAULT_BASE), Ok(()));
        assert_eq!(apic.mode(), Mode::Disabled);
        assert!(!apic.accept(0x40, Trigger::Edge));
        assert_eq!(apic.read(reg::TPR, 0), 0xffff_ffff, "no MMIO");
        assert_eq!(apic.rdmsr(msr_of(reg::TPR), 0), Err(Gp));
        assert_eq!(
            apic.write_apic_base(X2APIC_BASE),
            Err(Gp),
            "disabled -> x2APIC"
        );
        assert_eq!(apic.write_apic_base(BASE_EN), Ok(()));
        assert_eq!(apic.read(reg::TPR, 0), 0);
        assert_eq!(apic.read(reg::SVR, 0), 0xff);
        assert_eq!(apic.read(reg::ID, 0), 1 << 24);
        // xAPIC -> x2APIC keeps the registers, x2APIC -> xAPIC is refused.
        let _ = apic.write(reg::TPR, 0x30, 0);
        assert_eq!(apic.write_apic_base(X2APIC_BASE), Ok(()));
        assert_eq!(apic.mode(), Mode::X2Apic);
        assert_eq!(apic.rdmsr(msr_of(reg::TPR), 0), Ok(0x30));
        assert_eq!(apic.write_apic_base(BASE_EN), Err(Gp), "x2APIC -> xAPIC");
        assert_eq!(apic.mode(), Mode::X2Apic);
        assert_eq!(
            apic.write_apic_base(DEFAULT_BASE),
            Ok(()),
            "x2APIC -> disabled"
        );
        assert_eq!(apic.write_apic_base(BASE_EN), Ok(()));
        assert_eq!(apic.mode(), Mode::XApic);

        let mut no_x2apic = Lapic::new(Config {
            x2apic: false,
            ..config(0)
        });
        assert_eq!(
            no_x2apic.write_apic_base(X2APIC_BASE),
            Err(Gp),
            "not in CPUID"
        );
    }

    #[test]
    fn x2apic_id_and_ldr() {
        let mut apic = xapic(0x23);
        let _ = apic.write(reg::ID, 0x4400_0000, 0);
        let _ = apic.write(reg::LDR, 0x0100_0000, 0);
        apic.write_apic_base(X2APIC_BASE).unwrap();
        assert_eq!(apic.rdmsr(msr_of(reg::ID), 0), Ok(0x23), "the initial ID");
        assert_eq!(apic.rdmsr(msr_of(reg::LDR), 0), Ok((2 << 16) | (1 << 3)));
        assert_eq!(apic.addressing().id, 0x23);
    }

    /// An xAPIC whose timer interrupts with `vector`, in `mode` (LVT timer bits 18:17),
    /// counting once per `divide` TSC ticks.
    fn timer(mode: u32, vector: u32, divide: u32) -> Lapic {
        let mut apic = xapic(0);
        let tdcr = match divide {
            1 => 0xb,
            2 => 0x0,
            4 => 0x1,
            _ => panic!("divide"),
        };
        let _ = apic.write(reg::TIMER_DIVIDE, tdcr, 0);
        let _ = apic.write(reg::LVT_TIMER, (mode << 17) | vector, 0);
        apic
    }

    #[test]
    fn timer_one_shot() {
        let mut apic = timer(0, 0x30, 1);
        let _ = apic.write(reg::TIMER_INITIAL, 100, 1000);
        assert_eq!(apic.read(reg::TIMER_INITIAL, 1000), 100);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1000), 100);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1050), 50);
        assert_eq!(apic.next_deadline(), Some(1100));
        assert!(!apic.advance_timer(1099));
        assert!(apic.advance_timer(1100));
        assert_eq!(apic.highest_pending(), Some(0x30));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 1200), 0);
        assert_eq!(apic.next_deadline(), None);
        assert!(!apic.advance_timer(5000), "fires once");
        // Writing 0 stops a count.
        let _ = apic.write(reg::TIMER_INITIAL, 100, 6000);
        let _ = apic.write(reg::TIMER_INITIAL, 0, 6010);
        assert_eq!(apic.next_deadline(), None);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 6020), 0);
    }

    #[test]
    fn timer_periodic() {
        let mut apic = timer(1, 0x31, 1);
        let _ = apic.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 30), 70);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 130), 70, "counted on lazily");
        assert!(apic.advance_timer(250), "one interrupt for two periods");
        assert_eq!(apic.next_deadline(), Some(300));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 250), 50);
        assert!(apic.ack(0x31));
        assert!(apic.advance_timer(300));
        assert_eq!(apic.next_deadline(), Some(400));
        // Periodic -> one-shot keeps the count; it ends at the next expiry.
        let _ = apic.write(reg::LVT_TIMER, 0x31, 350);
        assert_eq!(apic.next_deadline(), Some(400));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 350), 50);
        assert!(apic.advance_timer(400));
        assert_eq!(apic.next_deadline(), None);
    }

    #[test]
    fn timer_divide_and_bus_ratio() {
        let mut apic = timer(0, 0x30, 2);
        let _ = apic.write(reg::TIMER_INITIAL, 10, 0);
        assert_eq!(apic.next_deadline(), Some(20));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 4), 8);
        assert_eq!(
            apic.read(reg::TIMER_CURRENT, 5),
            8,
            "a count in progress shows"
        );
        // Divide by 4 halfway: the 5 counts left take 20 ticks.
        let _ = apic.write(reg::TIMER_DIVIDE, 0x1, 10);
        assert_eq!(apic.read(reg::TIMER_CURRENT, 10), 5);
        assert_eq!(apic.next_deadline(), Some(30));

        for (tdcr, divisor) in [
            (0x0, 2),
            (0x1, 4),
            (0x2, 8),
            (0x3, 16),
            (0x8, 32),
            (0x9, 64),
            (0xa, 128),
            (0xb, 1),
        ] {
            assert_eq!(Lapic::divisor(tdcr), divisor, "TDCR {tdcr:#x}");
        }

        let mut slow = Lapic::new(Config {
            tsc_per_bus_cycle: 25,
            ..config(0)
        });
        let _ = slow.write(reg::SVR, 0x1ff, 0);
        let _ = slow.write(reg::TIMER_DIVIDE, 0xb, 0);
        let _ = slow.write(reg::LVT_TIMER, 0x30, 0);
        let _ = slow.write(reg::TIMER_INITIAL, 4, 1000);
        assert_eq!(slow.next_deadline(), Some(1100));
        assert_eq!(slow.read(reg::TIMER_CURRENT, 1050), 2);
    }

    #[test]
    fn timer_masked_expiry_is_lost() {
        let mut apic = timer(0, 0x30, 1);
        let _ = apic.write(reg::LVT_TIMER, 0x1_0030, 0);
        let _ = apic.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(apic.next_deadline(), None, "masked: no host timer needed");
        let _ = apic.write(reg::LVT_TIMER, 0x30, 200);
        assert!(apic.irr().is_empty());
        assert!(!apic.advance_timer(300));
        assert!(apic.irr().is_empty());
    }

    #[test]
    fn timer_tsc_deadline() {
        let mut apic = timer(2, 0x32, 1);
        let _ = apic.write(reg::TIMER_INITIAL, 100, 0);
        assert_eq!(
            apic.read(reg::TIMER_INITIAL, 0),
            0,
            "ignored in TSC-deadline mode"
        );
        apic.write_tsc_deadline(500, 100);
        assert_eq!(apic.read_tsc_deadline(), 500);
        assert_eq!(apic.next_deadline(), Some(500));
        assert_eq!(apic.read(reg::TIMER_CURRENT, 200), 0);
        assert!(!apic.advance_timer(499));
        assert!(apic.advance_timer(500));
        assert_eq!(apic.read_tsc_deadline(), 0, "disarmed by its interrupt");
        assert!(apic.ack(0x32));
        // A deadline already passed fires at once; 0 disarms.
        apic.write_tsc_deadline(50, 600);
        assert!(apic.irr().contains(0x32));
        apic.write_tsc_deadline(1000, 600);
        apic.write_tsc_deadline(0, 600);
        assert_eq!(apic.next_deadline(), None);
        // Leaving TSC-deadline mode disarms it.
        apic.write_tsc_deadline(1000, 600);
        let _ = apic.write(reg::LVT_TIMER, 0x32, 700);
        assert_eq!(apic.read_tsc_deadline(), 0);
        assert_eq!(apic.next_deadline(), None);
        apic.write_tsc_deadline(1000, 700);
        assert_eq!(
            apic.read_tsc_deadline(),
            0,
            "ignored outside TSC-deadline mode"
        );
        // Entering it stops a count.
        let _ = apic.write(reg::TIMER_INITIAL, 100, 800);
        let _ = apic.write(reg::LVT_TIMER, 0x4_0032, 810);
        assert_eq!(apic.read(reg::TIMER_INITIAL, 810), 0);
        assert_eq!(apic.next_deadline(), None);

        let mut without = Lapic::new(Config {
            tsc_deadline: false,
            ..config(0)
        });
        let _ = without.write(reg::SVR, 0x1ff, 0);
        let _ = without.write(reg::LVT_TIMER, 0x4_0032, 0);
        assert_eq!(without.read(reg::LVT_TIMER, 0), 0x32, "bit 18 reserved");
        without.write_apic_base(X2APIC_BASE).unwrap();
        assert_eq!(
            without.wrmsr(msr_of(reg::LVT_TIMER), 0x4_0032, 0),
            Effect::Gp
        );
    }

    #[test]
    fn init_and_sipi() {
        let mut bsp = xapic(0);
        let mut ap = xapic(1);
        ap.set_waiting_for_sipi(false);
        let _ = ap.write(reg::TPR, 0x20, 0);
        let _ = ap.write(reg::ID, 0x0500_0000, 0);
        assert!(ap.accept(0x40, Trigger::Edge));

        // Linux's wakeup_secondary_cpu_via_init: INIT assert, INIT de-assert, SIPI, SIPI.
        let init = ipi(send(&mut bsp, 0x0500_0000, 0xc500));
        assert!(ap.receive(&init));
        let deassert = ipi(send(&mut bsp, 0x0500_0000, 0x8500));
        assert!(!ap.receive(&deassert));
        assert!(ap.has_event());
        assert_eq!(ap.take_event(), Some(Event::Init));
        assert!(ap.waiting_for_sipi());
        assert_eq!(ap.read(reg::TPR, 0), 0, "INIT reset");
        assert_eq!(ap.read(reg::SVR, 0), 0xff);
        assert!(ap.irr().is_empty());
        assert_eq!(ap.read(reg::ID, 0), 0x0500_0000, "the ID is kept");
        assert_eq!(ap.apic_base(), BASE_EN, "so is the base");

        let nmi = ipi(send(&mut bsp, 0x0500_0000, 0x400));
        assert!(ap.receive(&nmi));
        assert_eq!(ap.take_event(), None, "NMI held in wait-for-SIPI");
        let sipi = ipi(send(&mut bsp, 0x0500_0000, 0x4609));
        assert!(ap.receive(&sipi));
        assert_eq!(ap.take_event(), Some(Event::StartUp { vector: 9 }));
        assert!(!ap.waiting_for_sipi());
        assert_eq!(ap.take_event(), Some(Event::Nmi));
        // The second SIPI finds the AP running: dropped.
        assert!(ap.receive(&sipi));
        assert_eq!(ap.take_event(), None);
        assert!(!ap.has_event());

        // An INIT drops a SIPI still pending.
        assert!(ap.receive(&sipi));
        assert!(ap.receive(&init));
        assert_eq!(ap.take_event(), Some(Event::Init));
        assert_eq!(ap.take_event(), None);
    }

    #[test]
    fn init_in_x2apic_mode_keeps_mode_and_ldr() {
        let mut apic = x2apic(0x13);
        let _ = apic.wrmsr(msr_of(reg::TPR), 0x40, 0);
        let init = Ipi::decode(0xc500, true).unwrap();
        assert!(apic.receive(&init));
        assert_eq!(apic.take_event(), Some(Event::Init));
        assert_eq!(apic.mode(), Mode::X2Apic);
        assert_eq!(apic.rdmsr(msr_of(reg::TPR), 0), Ok(0));
        assert_eq!(apic.rdmsr(msr_of(reg::LDR), 0), Ok((1 << 16) | (1 << 3)));
    }

    #[test]
    fn vector_set() {
        let mut set = VectorSet::new();
        assert_eq!(set.highest(), None);
        for v in [0, 31, 32, 200, 255] {
            set.insert(v);
            assert!(set.contains(v));
            assert_eq!(set.highest(), Some(v));
        }
        assert_eq!(set.word(7), 1 << 31);
        assert_eq!(set.word(8), 0);
        set.remove(255);
        assert_eq!(set.highest(), Some(200));
    }

    /// xorshift64*: enough randomness to wander through the state space, reproducibly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A value biased toward the edges guests and bugs like.
        fn value(&mut self) -> u64 {
            match self.below(6) {
                0 => 0,
                1 => u64::MAX,
                2 => self.below(0x100),
                3 => 1 << self.below(64),
                4 => u64::from(u32::MAX),
                _ => self.next(),
            }
        }
    }

    #[test]
    fn random_accesses_never_panic() {
        let mut rng = Rng(0x4b45_454c_4150_4943);
        for round in 0..64 {
            let ratio = match round % 4 {
                0 => 0,
                1 => 1,
                2 => u32::MAX,
                _ => rng.next() as u32,
            };
            let mut apics: [Lapic; 3] = core::array::from_fn(|i| {
                Lapic::new(Config {
                    apic_id: if round % 2 == 0 {
                        i as u32
                    } else {
                        rng.next() as u32
                    },
                    bsp: i == 0,
                    x2apic: round % 3 != 0,
                    tsc_deadline: round % 5 != 0,
                    tsc_per_bus_cycle: ratio,
                })
            });
            let mut now = 0u64;
            for _ in 0..4000 {
                now = match rng.below(50) {
                    0 => u64::MAX - rng.below(3),
                    1 => rng.next(),
                    _ => now.saturating_add(rng.below(1000)),
                };
                let i = rng.below(3) as usize;
                let value = rng.value();
                let effect = match rng.below(16) {
                    0 | 1 => {
                        let offset = match rng.below(3) {
                            0 => rng.below(0x40) << 4,
                            1 => rng.below(0x1100),
                            _ => rng.next(),
                        };
                        let _ = apics[i].mmio_read(offset, rng.below(10) as u8, now);
                        Effect::Done
                    }
                    2..=4 => {
                        let offset = match rng.below(3) {
                            0 => rng.below(0x40) << 4,
                            1 => rng.below(0x1100),
                            _ => rng.next(),
                        };
                        apics[i].mmio_write(offset, rng.below(10) as u8, value, now)
                    }
                    5 => {
                        let _ = apics[i].rdmsr(0x7f0 + rng.below(0x120) as u32, now);
                        Effect::Done
                    }
                    6..=8 => apics[i].wrmsr(0x7f0 + rng.below(0x120) as u32, value, now),
                    9 => {
                        let base = match rng.below(4) {
                            0 => DEFAULT_BASE,
                            1 => BASE_EN,
                            2 => X2APIC_BASE,
                            _ => value,
                        };
                        let _ = apics[i].write_apic_base(base | (value & apic_base::BSP));
                        Effect::Done
                    }
                    10 => {
                        let trigger = if value & 1 == 0 {
                            Trigger::Edge
                        } else {
                            Trigger::Level
                        };
                        apics[i].accept(rng.next() as u8, trigger);
                        Effect::Done
                    }
                    11 => {
                        if let Some(vector) = apics[i].highest_pending() {
                            assert!(apics[i].ack(vector));
                        } else {
                            apics[i].ack(rng.next() as u8);
                        }
                        let _ = apics[i].eoi();
                        Effect::Done
                    }
                    12 => {
                        apics[i].write_tsc_deadline(value, now);
                        let _ = apics[i].read_tsc_deadline();
                        Effect::Done
                    }
                    13 => {
                        apics[i].advance_timer(now);
                        if let Some(deadline) = apics[i].next_deadline() {
                            apics[i].advance_timer(deadline);
                        }
                        Effect::Done
                    }
                    14 => {
                        let _ = apics[i].take_event();
                        Effect::Done
                    }
                    _ => match Ipi::decode(rng.next(), value & 1 != 0) {
                        Some(ipi) => Effect::SendIpi(ipi),
                        None => Effect::Done,
                    },
                };
                if let Effect::SendIpi(ipi) = effect {
                    let all: [Addressing; 3] = core::array::from_fn(|j| apics[j].addressing());
                    let targets = ipi.targets(i, &all);
                    if ipi.delivery == Delivery::LowestPriority {
                        assert!(targets.len() <= 1);
                    }
                    for j in targets.iter() {
                        apics[j].receive(&ipi);
                    }
                }
                for apic in &apics {
                    let _ = apic.ppr();
                    if let Some(vector) = apic.highest_pending() {
                        assert!(vector >= 16 && vector & 0xf0 > apic.ppr());
                    }
                    assert!(apic.irr().word(0) & 0xffff == 0, "no IRR bit below 16");
                }
            }
        }
    }
}
