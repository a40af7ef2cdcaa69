//! The numbers and layouts of the Xen guest ABI that Keel's hypervisor side needs: hypercall and
//! sub-op numbers, errno values, HVM params, VIRQs, feature bits, CPUID leaves, and every
//! structure a PVH DomU hands to a hypercall or shares with the hypervisor.
//!
//! Facts come from Xen's public headers (`xen/include/public/`: `xen.h`, `event_channel.h`,
//! `vcpu.h`, `memory.h`, `hvm/params.h`, `hvm/hvm_op.h`, `sched.h`, `grant_table.h`,
//! `features.h`, `version.h`, `errno.h`, `arch-x86/xen.h`, `arch-x86/xen-x86_{32,64}.h`,
//! `arch-x86/cpuid.h`), checked against Linux's copies (`include/xen/interface/`); each module
//! names its header. Names keep Xen's spelling, with the header's prefix becoming the module
//! (`XENMEM_add_to_physmap` is [`xenmem::ADD_TO_PHYSMAP`]) and struct names in Rust case
//! (`struct xen_add_to_physmap` is [`XenAddToPhysmap`]).
//!
//! # Hypercall convention (HVM/PVH)
//! RAX (EAX) holds the hypercall number; a 64-bit vCPU passes arguments in RDI, RSI, RDX, R10,
//! R8 (R9), a vCPU in any other mode in EBX, ECX, EDX, ESI, EDI (EBP); the result goes back in
//! RAX: 0 or more on success, a negative [`Errno`] on failure. Xen answers a hypercall made at
//! CPL > 0 with [`Errno::EPERM`]. Pointer arguments are guest *virtual* addresses.
//!
//! # 32-bit guests
//! A 32-bit PVH guest is legal: Xen's compat layer serves it. The mode of the vCPU *at the
//! hypercall* picks the argument layout, and structs holding a `XEN_GUEST_HANDLE`,
//! `xen_ulong_t` or `xen_pfn_t` are narrower for it (4-byte handles, 4-byte frame numbers,
//! 4-byte alignment of `uint64_t`). Each such struct has a `...32` twin here with its own
//! layout assertions, and a `decode(Width, &[u8])` that reads either layout into the 64-bit
//! struct (handles and frame numbers widened). Structs made only of `u16`/`u32` fields, or
//! whose `uint64_t`s are naturally aligned, are the same for both ([`XenHvmParam`], the
//! `evtchn_*` structs, [`VcpuRegisterVcpuInfo`]...) and have `from_bytes` only.
//!
//! The shared_info page and `vcpu_info` follow a separate, per-domain choice: Xen latches the
//! domain's "32-bit shared info" from the vCPU's mode when it sets `HVM_PARAM_CALLBACK_IRQ`
//! (X: `xen/arch/x86/hvm/hvm.c` `hvm_latch_shinfo_size`), 64-bit until then.
//! [`SharedInfoLayout`] gives the offsets for each width; the 2-level event channels have 1024
//! ports with 32-bit shared info, 4096 with 64-bit.
//!
//! # Decoding
//! Root mode copies a hypercall's argument from guest memory into a buffer; `from_bytes` and
//! `decode` read it with explicit little-endian loads (no `unsafe`, no alignment needs) and
//! return `None` when the buffer is too short (the caller answers [`Errno::EFAULT`], as Xen's
//! `copy_from_guest` does). Structs with OUT fields have `to_bytes`/`encode` for the copy back.

use core::mem::{offset_of, size_of};

/// Which layout a guest uses: the compat (i386) one or the native x86_64 one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// A vCPU not in 64-bit mode (protected mode, compatibility mode): Xen's compat layout.
    Bits32,
    /// A vCPU in 64-bit mode.
    Bits64,
}

impl Width {
    /// The size of `xen_ulong_t`, `xen_pfn_t` and a guest handle in this layout.
    pub const fn word_bytes(self) -> usize {
        match self {
            Width::Bits32 => 4,
            Width::Bits64 => 8,
        }
    }

    /// Bits in one event-channel word (`xen_ulong_t`) of shared_info.
    pub const fn word_bits(self) -> u32 {
        match self {
            Width::Bits32 => 32,
            Width::Bits64 => 64,
        }
    }

    /// The number of 2-level event-channel ports: word bits squared (event_channel.h
    /// `EVTCHN_2L_NR_CHANNELS`; for 32-bit shared info Xen's `BITS_PER_EVTCHN_WORD`).
    pub const fn evtchn_2l_ports(self) -> u32 {
        self.word_bits() * self.word_bits()
    }
}

/// Hypercall numbers (xen.h `__HYPERVISOR_*`), in RAX/EAX.
pub mod hypercall {
    /// `__HYPERVISOR_set_trap_table` (PV only).
    pub const SET_TRAP_TABLE: u64 = 0;
    /// `__HYPERVISOR_mmu_update` (PV only).
    pub const MMU_UPDATE: u64 = 1;
    /// `__HYPERVISOR_platform_op` (Dom0 only).
    pub const PLATFORM_OP: u64 = 7;
    /// `__HYPERVISOR_memory_op`: sub-ops in [`super::xenmem`].
    pub const MEMORY_OP: u64 = 12;
    /// `__HYPERVISOR_multicall`.
    pub const MULTICALL: u64 = 13;
    /// `__HYPERVISOR_set_timer_op`: one argument, an absolute deadline in system time (ns), 0
    /// to cancel.
    pub const SET_TIMER_OP: u64 = 15;
    /// `__HYPERVISOR_xen_version`: sub-ops in [`super::xenver`].
    pub const XEN_VERSION: u64 = 17;
    /// `__HYPERVISOR_console_io`: sub-ops in [`super::consoleio`].
    pub const CONSOLE_IO: u64 = 18;
    /// `__HYPERVISOR_physdev_op_compat`.
    pub const PHYSDEV_OP_COMPAT: u64 = 19;
    /// `__HYPERVISOR_grant_table_op`: sub-ops in [`super::gnttabop`].
    pub const GRANT_TABLE_OP: u64 = 20;
    /// `__HYPERVISOR_vm_assist`: commands and types in [`super::vmasst`].
    pub const VM_ASSIST: u64 = 21;
    /// `__HYPERVISOR_vcpu_op`: sub-ops in [`super::vcpuop`]; arguments (cmd, vcpu id, arg).
    pub const VCPU_OP: u64 = 24;
    /// `__HYPERVISOR_xsm_op`.
    pub const XSM_OP: u64 = 27;
    /// `__HYPERVISOR_nmi_op`.
    pub const NMI_OP: u64 = 28;
    /// `__HYPERVISOR_sched_op`: sub-ops in [`super::schedop`].
    pub const SCHED_OP: u64 = 29;
    /// `__HYPERVISOR_callback_op`.
    pub const CALLBACK_OP: u64 = 30;
    /// `__HYPERVISOR_event_channel_op`: sub-ops in [`super::evtchnop`].
    pub const EVENT_CHANNEL_OP: u64 = 32;
    /// `__HYPERVISOR_physdev_op`.
    pub const PHYSDEV_OP: u64 = 33;
    /// `__HYPERVISOR_hvm_op`: sub-ops in [`super::hvmop`].
    pub const HVM_OP: u64 = 34;
    /// `__HYPERVISOR_sysctl` (toolstack only).
    pub const SYSCTL: u64 = 35;
    /// `__HYPERVISOR_domctl` (toolstack only).
    pub const DOMCTL: u64 = 36;
    /// `__HYPERVISOR_argo_op`.
    pub const ARGO_OP: u64 = 39;
    /// `__HYPERVISOR_xenpmu_op`.
    pub const XENPMU_OP: u64 = 40;
    /// `__HYPERVISOR_dm_op`.
    pub const DM_OP: u64 = 41;
    /// `__HYPERVISOR_hypfs_op`.
    pub const HYPFS_OP: u64 = 42;
}

/// Hypercall results: Xen's errno values (errno.h, Linux's numbering), returned negated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(i32);

impl Errno {
    /// -EPERM: operation not permitted.
    pub const EPERM: Errno = Errno(-1);
    /// -ENOENT: no such entry.
    pub const ENOENT: Errno = Errno(-2);
    /// -ESRCH: no such domain.
    pub const ESRCH: Errno = Errno(-3);
    /// -EINTR.
    pub const EINTR: Errno = Errno(-4);
    /// -EIO.
    pub const EIO: Errno = Errno(-5);
    /// -ENXIO.
    pub const ENXIO: Errno = Errno(-6);
    /// -E2BIG.
    pub const E2BIG: Errno = Errno(-7);
    /// -EBADF.
    pub const EBADF: Errno = Errno(-9);
    /// -EAGAIN.
    pub const EAGAIN: Errno = Errno(-11);
    /// -ENOMEM.
    pub const ENOMEM: Errno = Errno(-12);
    /// -EACCES.
    pub const EACCES: Errno = Errno(-13);
    /// -EFAULT: a bad guest address (also a failed argument copy).
    pub const EFAULT: Errno = Errno(-14);
    /// -EBUSY.
    pub const EBUSY: Errno = Errno(-16);
    /// -EEXIST.
    pub const EEXIST: Errno = Errno(-17);
    /// -EXDEV.
    pub const EXDEV: Errno = Errno(-18);
    /// -ENODEV.
    pub const ENODEV: Errno = Errno(-19);
    /// -EINVAL.
    pub const EINVAL: Errno = Errno(-22);
    /// -ENOSPC.
    pub const ENOSPC: Errno = Errno(-28);
    /// -ERANGE.
    pub const ERANGE: Errno = Errno(-34);
    /// -EDEADLK.
    pub const EDEADLK: Errno = Errno(-35);
    /// -ENOSYS: unknown hypercall or sub-op.
    pub const ENOSYS: Errno = Errno(-38);
    /// -ENODATA.
    pub const ENODATA: Errno = Errno(-61);
    /// -ETIME: timer expired (`VCPU_SSHOTTMR_future` with a past deadline).
    pub const ETIME: Errno = Errno(-62);
    /// -EOVERFLOW.
    pub const EOVERFLOW: Errno = Errno(-75);
    /// -ERESTART (Xen-internal: a continuation; never seen by a guest).
    pub const ERESTART: Errno = Errno(-85);
    /// -EMSGSIZE.
    pub const EMSGSIZE: Errno = Errno(-90);
    /// -EOPNOTSUPP.
    pub const EOPNOTSUPP: Errno = Errno(-95);
    /// -ENOBUFS.
    pub const ENOBUFS: Errno = Errno(-105);
    /// -EISCONN.
    pub const EISCONN: Errno = Errno(-106);
    /// -ENOTCONN.
    pub const ENOTCONN: Errno = Errno(-107);
    /// -ETIMEDOUT.
    pub const ETIMEDOUT: Errno = Errno(-110);

    /// The negative value, as Xen's hypercall handlers return it.
    pub const fn value(self) -> i32 {
        self.0
    }

    /// The RAX value of this result: the value sign-extended (a 32-bit guest reads EAX).
    pub const fn rax(self) -> u64 {
        self.0 as i64 as u64
    }
}

/// `XENVER_*` (version.h): sub-ops of `xen_version`.
pub mod xenver {
    /// Returns (major << 16) | minor.
    pub const VERSION: u32 = 0;
    /// Fills a 16-byte NUL-terminated string (`xen_extraversion_t`).
    pub const EXTRAVERSION: u32 = 1;
    /// Fills `xen_compile_info` (144 bytes: compiler[64], compile_by[16], compile_domain[32],
    /// compile_date[32]).
    pub const COMPILE_INFO: u32 = 2;
    /// Fills a 1024-byte string (`xen_capabilities_info_t`).
    pub const CAPABILITIES: u32 = 3;
    /// Fills a 64-byte string (`xen_changeset_info_t`).
    pub const CHANGESET: u32 = 4;
    /// Fills `xen_platform_parameters` (one `xen_ulong_t`, virt_start).
    pub const PLATFORM_PARAMETERS: u32 = 5;
    /// Fills [`super::XenFeatureInfo`].
    pub const GET_FEATURES: u32 = 6;
    /// Returns the page size.
    pub const PAGESIZE: u32 = 7;
    /// Fills the domain's 16-byte handle (`xen_domain_handle_t`).
    pub const GUEST_HANDLE: u32 = 8;
    /// Fills a 1024-byte string (`xen_commandline_t`).
    pub const COMMANDLINE: u32 = 9;
    /// Fills `xen_build_id` (len + bytes).
    pub const BUILD_ID: u32 = 10;
    /// Size of `xen_extraversion_t`.
    pub const EXTRAVERSION_LEN: usize = 16;
    /// Size of `xen_capabilities_info_t`.
    pub const CAPABILITIES_LEN: usize = 1024;
    /// Size of `xen_changeset_info_t`.
    pub const CHANGESET_LEN: usize = 64;
    /// Size of `xen_commandline_t`.
    pub const COMMANDLINE_LEN: usize = 1024;
    /// Size of `xen_compile_info`.
    pub const COMPILE_INFO_LEN: usize = 144;
}

/// `XENFEAT_*` (features.h): bit numbers in submap 0 of `XENVER_get_features`.
pub mod xenfeat {
    /// `XENFEAT_writable_page_tables`.
    pub const WRITABLE_PAGE_TABLES: u32 = 0;
    /// `XENFEAT_writable_descriptor_tables`.
    pub const WRITABLE_DESCRIPTOR_TABLES: u32 = 1;
    /// `XENFEAT_auto_translated_physmap`.
    pub const AUTO_TRANSLATED_PHYSMAP: u32 = 2;
    /// `XENFEAT_supervisor_mode_kernel`.
    pub const SUPERVISOR_MODE_KERNEL: u32 = 3;
    /// `XENFEAT_pae_pgdir_above_4gb`.
    pub const PAE_PGDIR_ABOVE_4GB: u32 = 4;
    /// `XENFEAT_mmu_pt_update_preserve_ad`.
    pub const MMU_PT_UPDATE_PRESERVE_AD: u32 = 5;
    /// `XENFEAT_highmem_assist`.
    pub const HIGHMEM_ASSIST: u32 = 6;
    /// `XENFEAT_gnttab_map_avail_bits`.
    pub const GNTTAB_MAP_AVAIL_BITS: u32 = 7;
    /// `XENFEAT_hvm_callback_vector`: events may arrive through a vector callback.
    pub const HVM_CALLBACK_VECTOR: u32 = 8;
    /// `XENFEAT_hvm_safe_pvclock`: the pvclock may be used.
    pub const HVM_SAFE_PVCLOCK: u32 = 9;
    /// `XENFEAT_hvm_pirqs`.
    pub const HVM_PIRQS: u32 = 10;
    /// `XENFEAT_dom0`.
    pub const DOM0: u32 = 11;
    /// `XENFEAT_grant_map_identity`.
    pub const GRANT_MAP_IDENTITY: u32 = 12;
    /// `XENFEAT_memory_op_vnode_supported`.
    pub const MEMORY_OP_VNODE_SUPPORTED: u32 = 13;
    /// `XENFEAT_ARM_SMCCC_supported`.
    pub const ARM_SMCCC_SUPPORTED: u32 = 14;
    /// `XENFEAT_linux_rsdp_unrestricted`.
    pub const LINUX_RSDP_UNRESTRICTED: u32 = 15;
    /// `XENFEAT_not_direct_mapped`.
    pub const NOT_DIRECT_MAPPED: u32 = 16;
    /// `XENFEAT_direct_mapped`.
    pub const DIRECT_MAPPED: u32 = 17;
    /// `XENFEAT_runstate_phys_area`.
    pub const RUNSTATE_PHYS_AREA: u32 = 18;
    /// `XENFEAT_vcpu_time_phys_area`.
    pub const VCPU_TIME_PHYS_AREA: u32 = 19;
    /// `XENFEAT_dm_msix_all_writes`.
    pub const DM_MSIX_ALL_WRITES: u32 = 20;
    /// `XENFEAT_NR_SUBMAPS`: only submap 0 exists.
    pub const NR_SUBMAPS: u32 = 1;
}

/// `XENMEM_*` (memory.h): sub-ops of `memory_op`, and `XENMAPSPACE_*`.
pub mod xenmem {
    /// Arg [`super::XenMemoryReservation`].
    pub const INCREASE_RESERVATION: u32 = 0;
    /// Arg [`super::XenMemoryReservation`]: extents are GFNs to give back.
    pub const DECREASE_RESERVATION: u32 = 1;
    /// Arg `xen_memory_domain`; returns the domain's highest RAM page.
    pub const MAXIMUM_RAM_PAGE: u32 = 2;
    /// Arg domid_t; returns the current reservation in pages.
    pub const CURRENT_RESERVATION: u32 = 3;
    /// Arg domid_t; returns the maximum reservation in pages.
    pub const MAXIMUM_RESERVATION: u32 = 4;
    /// PV only.
    pub const MACHPHYS_MFN_LIST: u32 = 5;
    /// Arg [`super::XenMemoryReservation`]: extents are GFNs to populate.
    pub const POPULATE_PHYSMAP: u32 = 6;
    /// Arg [`super::XenAddToPhysmap`].
    pub const ADD_TO_PHYSMAP: u32 = 7;
    /// Arg [`super::XenMemoryMap`]: fills e820 entries (20 bytes each: addr u64, size u64,
    /// type u32).
    pub const MEMORY_MAP: u32 = 9;
    /// Dom0 only.
    pub const MACHINE_MEMORY_MAP: u32 = 10;
    /// Arg `xen_memory_exchange`.
    pub const EXCHANGE: u32 = 11;
    /// PV only.
    pub const MACHPHYS_MAPPING: u32 = 12;
    /// Toolstack only.
    pub const SET_MEMORY_MAP: u32 = 13;
    /// Arg domid_t; returns the highest GFN.
    pub const MAXIMUM_GPFN: u32 = 14;
    /// Arg `xen_remove_from_physmap` {domid u16, gpfn xen_pfn_t}.
    pub const REMOVE_FROM_PHYSMAP: u32 = 15;
    /// Arg `xen_add_to_physmap_batch`.
    pub const ADD_TO_PHYSMAP_BATCH: u32 = 23;
    /// Toolstack only.
    pub const CLAIM_PAGES: u32 = 24;
    /// Arg `xen_vnuma_topology_info`.
    pub const GET_VNUMAINFO: u32 = 26;
    /// Arg `xen_mem_acquire_resource`.
    pub const ACQUIRE_RESOURCE: u32 = 28;
    /// memory_op's command carries a continuation's start extent above bit 6; the sub-op is
    /// the low 6 bits (Xen-internal `MEMOP_EXTENT_SHIFT`, xen/include/xen/hypercall.h, not in
    /// the public headers; Xen dispatches on `cmd & MEMOP_CMD_MASK`).
    pub const MEMOP_EXTENT_SHIFT: u32 = 6;
    /// Mask of the sub-op in memory_op's command (`MEMOP_CMD_MASK`).
    pub const MEMOP_CMD_MASK: u64 = (1 << MEMOP_EXTENT_SHIFT) - 1;

    /// `XENMAPSPACE_shared_info`: idx 0, the shared_info page.
    pub const MAPSPACE_SHARED_INFO: u32 = 0;
    /// `XENMAPSPACE_grant_table`: idx = grant frame (| [`MAPIDX_GRANT_TABLE_STATUS`]).
    pub const MAPSPACE_GRANT_TABLE: u32 = 1;
    /// `XENMAPSPACE_gmfn`: move a guest frame.
    pub const MAPSPACE_GMFN: u32 = 2;
    /// `XENMAPSPACE_gmfn_range`: `size` guest frames.
    pub const MAPSPACE_GMFN_RANGE: u32 = 3;
    /// `XENMAPSPACE_gmfn_foreign` (batch only).
    pub const MAPSPACE_GMFN_FOREIGN: u32 = 4;
    /// `XENMAPSPACE_dev_mmio` (Arm only).
    pub const MAPSPACE_DEV_MMIO: u32 = 5;
    /// `XENMAPIDX_grant_table_status`: with MAPSPACE_GRANT_TABLE, a v2 status frame.
    pub const MAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;
    /// `XENMEMF_*` address bits: the low 8 bits of `mem_flags`.
    pub const MEMF_ADDRESS_BITS_MASK: u32 = 0xff;
    /// `XENMEMF_populate_on_demand`.
    pub const MEMF_POPULATE_ON_DEMAND: u32 = 1 << 16;
    /// `XENMEMF_exact_node_request`.
    pub const MEMF_EXACT_NODE_REQUEST: u32 = 1 << 17;
    /// `XENMEMF_vnode`.
    pub const MEMF_VNODE: u32 = 1 << 18;
}

/// `HVMOP_*` (hvm/hvm_op.h): sub-ops of `hvm_op`.
pub mod hvmop {
    /// Arg [`super::XenHvmParam`].
    pub const SET_PARAM: u32 = 0;
    /// Arg [`super::XenHvmParam`]; `value` is OUT.
    pub const GET_PARAM: u32 = 1;
    /// Flush every vCPU's TLB (arg NULL).
    pub const FLUSH_TLBS: u32 = 5;
    /// Arg `xen_hvm_pagetable_dying` {domid u16, pad[3], gpa u64} (16 bytes).
    pub const PAGETABLE_DYING: u32 = 9;
    /// Arg `xen_hvm_get_time` {now u64}.
    pub const GET_TIME: u32 = 10;
    /// Arg `xen_hvm_evtchn_upcall_vector` {vcpu u32, vector u8} (8 bytes).
    pub const SET_EVTCHN_UPCALL_VECTOR: u32 = 23;
    /// Arg `xen_hvm_altp2m_op`.
    pub const ALTP2M: u32 = 25;
}

/// `HVM_PARAM_*` (hvm/params.h): indexes of `HVMOP_{set,get}_param`.
pub mod hvm_param {
    /// `HVM_PARAM_CALLBACK_IRQ`: how events are delivered; type in bits 63:56.
    pub const CALLBACK_IRQ: u32 = 0;
    /// Mask of the callback type (`HVM_PARAM_CALLBACK_IRQ_TYPE_MASK`).
    pub const CALLBACK_IRQ_TYPE_MASK: u64 = 0xff00_0000_0000_0000;
    /// Shift of the callback type.
    pub const CALLBACK_IRQ_TYPE_SHIFT: u32 = 56;
    /// `HVM_PARAM_CALLBACK_TYPE_GSI`: low bits are a GSI (0 disables).
    pub const CALLBACK_TYPE_GSI: u64 = 0;
    /// `HVM_PARAM_CALLBACK_TYPE_PCI_INTX`.
    pub const CALLBACK_TYPE_PCI_INTX: u64 = 1;
    /// `HVM_PARAM_CALLBACK_TYPE_VECTOR`: bits 7:0 are the vector (x86).
    pub const CALLBACK_TYPE_VECTOR: u64 = 2;
    /// `HVM_PARAM_STORE_PFN`.
    pub const STORE_PFN: u32 = 1;
    /// `HVM_PARAM_STORE_EVTCHN`.
    pub const STORE_EVTCHN: u32 = 2;
    /// `HVM_PARAM_PAE_ENABLED`.
    pub const PAE_ENABLED: u32 = 4;
    /// `HVM_PARAM_IOREQ_PFN`.
    pub const IOREQ_PFN: u32 = 5;
    /// `HVM_PARAM_BUFIOREQ_PFN`.
    pub const BUFIOREQ_PFN: u32 = 6;
    /// `HVM_PARAM_VIRIDIAN`.
    pub const VIRIDIAN: u32 = 9;
    /// `HVM_PARAM_TIMER_MODE`.
    pub const TIMER_MODE: u32 = 10;
    /// `HVM_PARAM_HPET_ENABLED`.
    pub const HPET_ENABLED: u32 = 11;
    /// `HVM_PARAM_IDENT_PT`.
    pub const IDENT_PT: u32 = 12;
    /// `HVM_PARAM_DM_DOMAIN`.
    pub const DM_DOMAIN: u32 = 13;
    /// `HVM_PARAM_ACPI_S_STATE`.
    pub const ACPI_S_STATE: u32 = 14;
    /// `HVM_PARAM_VM86_TSS`.
    pub const VM86_TSS: u32 = 15;
    /// `HVM_PARAM_VPT_ALIGN`.
    pub const VPT_ALIGN: u32 = 16;
    /// `HVM_PARAM_CONSOLE_PFN`.
    pub const CONSOLE_PFN: u32 = 17;
    /// `HVM_PARAM_CONSOLE_EVTCHN`.
    pub const CONSOLE_EVTCHN: u32 = 18;
    /// `HVM_PARAM_ACPI_IOPORTS_LOCATION`.
    pub const ACPI_IOPORTS_LOCATION: u32 = 19;
    /// `HVM_PARAM_NESTEDHVM`.
    pub const NESTEDHVM: u32 = 24;
    /// `HVM_PARAM_BUFIOREQ_EVTCHN`.
    pub const BUFIOREQ_EVTCHN: u32 = 26;
    /// `HVM_PARAM_PAGING_RING_PFN`.
    pub const PAGING_RING_PFN: u32 = 27;
    /// `HVM_PARAM_MONITOR_RING_PFN`.
    pub const MONITOR_RING_PFN: u32 = 28;
    /// `HVM_PARAM_SHARING_RING_PFN`.
    pub const SHARING_RING_PFN: u32 = 29;
    /// `HVM_PARAM_TRIPLE_FAULT_REASON`.
    pub const TRIPLE_FAULT_REASON: u32 = 31;
    /// `HVM_PARAM_IOREQ_SERVER_PFN`.
    pub const IOREQ_SERVER_PFN: u32 = 32;
    /// `HVM_PARAM_NR_IOREQ_SERVER_PAGES`.
    pub const NR_IOREQ_SERVER_PAGES: u32 = 33;
    /// `HVM_PARAM_VM_GENERATION_ID_ADDR`.
    pub const VM_GENERATION_ID_ADDR: u32 = 34;
    /// `HVM_PARAM_ALTP2M`.
    pub const ALTP2M: u32 = 35;
    /// `HVM_PARAM_X87_FIP_WIDTH`.
    pub const X87_FIP_WIDTH: u32 = 36;
    /// `HVM_PARAM_VM86_TSS_SIZED`.
    pub const VM86_TSS_SIZED: u32 = 37;
    /// `HVM_PARAM_MCA_CAP`.
    pub const MCA_CAP: u32 = 38;
    /// `HVM_NR_PARAMS`: indexes at or above are invalid (EINVAL).
    pub const NR_PARAMS: u32 = 39;
}

/// `VCPUOP_*` (vcpu.h): sub-ops of `vcpu_op(cmd, vcpuid, arg)`.
pub mod vcpuop {
    /// Arg `vcpu_guest_context` (PV) or `vcpu_hvm_context`.
    pub const INITIALISE: u32 = 0;
    /// Start a vCPU.
    pub const UP: u32 = 1;
    /// Stop a vCPU.
    pub const DOWN: u32 = 2;
    /// Returns 1 if the vCPU is up.
    pub const IS_UP: u32 = 3;
    /// Arg [`super::VcpuRunstateInfo`] (OUT).
    pub const GET_RUNSTATE_INFO: u32 = 4;
    /// Arg [`super::VcpuRegisterRunstateMemoryArea`].
    pub const REGISTER_RUNSTATE_MEMORY_AREA: u32 = 5;
    /// Arg `vcpu_set_periodic_timer` {period_ns u64}.
    pub const SET_PERIODIC_TIMER: u32 = 6;
    /// Arg NULL.
    pub const STOP_PERIODIC_TIMER: u32 = 7;
    /// Arg [`super::VcpuSetSingleshotTimer`].
    pub const SET_SINGLESHOT_TIMER: u32 = 8;
    /// Arg NULL.
    pub const STOP_SINGLESHOT_TIMER: u32 = 9;
    /// Arg [`super::VcpuRegisterVcpuInfo`].
    pub const REGISTER_VCPU_INFO: u32 = 10;
    /// Arg NULL.
    pub const SEND_NMI: u32 = 11;
    /// Arg `vcpu_get_physid` {phys_id u64}.
    pub const GET_PHYSID: u32 = 12;
    /// Arg `vcpu_register_time_memory_area` (a guest handle, like the runstate area's).
    pub const REGISTER_VCPU_TIME_MEMORY_AREA: u32 = 13;
    /// Arg `vcpu_register_runstate_memory_area` holding a guest-physical address.
    pub const REGISTER_RUNSTATE_PHYS_AREA: u32 = 14;
    /// Arg `vcpu_register_time_memory_area` holding a guest-physical address.
    pub const REGISTER_VCPU_TIME_PHYS_AREA: u32 = 15;
    /// `VCPU_SSHOTTMR_future`: fail a past deadline with -ETIME (Xen may ignore it).
    pub const SSHOTTMR_FUTURE: u32 = 1;
}

/// `SCHEDOP_*` (sched.h): sub-ops of `sched_op`.
pub mod schedop {
    /// Yield the CPU.
    pub const YIELD: u32 = 0;
    /// Block until an event is pending.
    pub const BLOCK: u32 = 1;
    /// Arg [`super::SchedShutdown`].
    pub const SHUTDOWN: u32 = 2;
    /// Arg [`super::SchedPoll`].
    pub const POLL: u32 = 3;
    /// Arg `sched_remote_shutdown` {domain_id u16, reason u32}.
    pub const REMOTE_SHUTDOWN: u32 = 4;
    /// Arg [`super::SchedShutdown`]: record the reason without shutting down.
    pub const SHUTDOWN_CODE: u32 = 5;
    /// Arg `sched_watchdog` {id u32, timeout u32}.
    pub const WATCHDOG: u32 = 6;
    /// Arg `sched_pin_override` {pcpu i32}.
    pub const PIN_OVERRIDE: u32 = 7;
    /// `do_poll`'s limit on `nr_ports` (more is -EINVAL).
    pub const POLL_MAX_PORTS: u32 = 128;
}

/// `SHUTDOWN_*` (sched.h): reasons of `SCHEDOP_shutdown`.
pub mod shutdown {
    /// Exited normally: clean up and kill.
    pub const POWEROFF: u32 = 0;
    /// Clean up, kill, restart.
    pub const REBOOT: u32 = 1;
    /// Clean up, save suspend info, kill.
    pub const SUSPEND: u32 = 2;
    /// The domain crashed.
    pub const CRASH: u32 = 3;
    /// The watchdog expired: restart.
    pub const WATCHDOG: u32 = 4;
    /// Soft reset: the domain restarts in place.
    pub const SOFT_RESET: u32 = 5;
    /// `SHUTDOWN_MAX`: larger reasons are -EINVAL.
    pub const MAX: u32 = 5;
}

/// `RUNSTATE_*` (vcpu.h): states in [`super::VcpuRunstateInfo`].
pub mod runstate {
    /// Running on a CPU.
    pub const RUNNING: i32 = 0;
    /// Runnable, waiting for a CPU.
    pub const RUNNABLE: i32 = 1;
    /// Blocked (waiting for an event) or otherwise not runnable by its own choice.
    pub const BLOCKED: i32 = 2;
    /// Offline or paused by the toolstack.
    pub const OFFLINE: i32 = 3;
    /// `XEN_RUNSTATE_UPDATE`: set in `state_entry_time` while the guest copy is updated, when
    /// the guest enabled `VMASST_TYPE_runstate_update_flag`.
    pub const UPDATE: u64 = 1 << 63;
}

/// `VMASST_*` (xen.h): arguments of `vm_assist(cmd, type)`.
pub mod vmasst {
    /// `VMASST_CMD_enable`.
    pub const CMD_ENABLE: u32 = 0;
    /// `VMASST_CMD_disable`.
    pub const CMD_DISABLE: u32 = 1;
    /// `VMASST_TYPE_runstate_update_flag`: the one type an HVM/PVH guest may enable.
    pub const TYPE_RUNSTATE_UPDATE_FLAG: u32 = 5;
}

/// `CONSOLEIO_*` (xen.h): sub-ops of `console_io(cmd, count, buffer)`.
pub mod consoleio {
    /// Write `count` bytes from the buffer to the hypervisor's console.
    pub const WRITE: u32 = 0;
    /// Read up to `count` bytes (Dom0 only).
    pub const READ: u32 = 1;
}

/// `EVTCHNOP_*` and `EVTCHNSTAT_*` (event_channel.h): sub-ops of `event_channel_op`.
pub mod evtchnop {
    /// Arg [`super::EvtchnBindInterdomain`].
    pub const BIND_INTERDOMAIN: u32 = 0;
    /// Arg [`super::EvtchnBindVirq`].
    pub const BIND_VIRQ: u32 = 1;
    /// Arg `evtchn_bind_pirq` {pirq u32, flags u32, port u32}.
    pub const BIND_PIRQ: u32 = 2;
    /// Arg [`super::EvtchnClose`].
    pub const CLOSE: u32 = 3;
    /// Arg [`super::EvtchnSend`].
    pub const SEND: u32 = 4;
    /// Arg [`super::EvtchnStatus`].
    pub const STATUS: u32 = 5;
    /// Arg [`super::EvtchnAllocUnbound`].
    pub const ALLOC_UNBOUND: u32 = 6;
    /// Arg [`super::EvtchnBindIpi`].
    pub const BIND_IPI: u32 = 7;
    /// Arg [`super::EvtchnBindVcpu`].
    pub const BIND_VCPU: u32 = 8;
    /// Arg [`super::EvtchnUnmask`].
    pub const UNMASK: u32 = 9;
    /// Arg [`super::EvtchnReset`].
    pub const RESET: u32 = 10;
    /// FIFO ABI: `evtchn_init_control`. Keel answers -ENOSYS (the guest keeps 2-level).
    pub const INIT_CONTROL: u32 = 11;
    /// FIFO ABI: `evtchn_expand_array`.
    pub const EXPAND_ARRAY: u32 = 12;
    /// FIFO ABI: `evtchn_set_priority`.
    pub const SET_PRIORITY: u32 = 13;

    /// `EVTCHNSTAT_closed`: not in use.
    pub const STAT_CLOSED: u32 = 0;
    /// `EVTCHNSTAT_unbound`: waiting for a remote domain to bind.
    pub const STAT_UNBOUND: u32 = 1;
    /// `EVTCHNSTAT_interdomain`: connected to a remote domain's port.
    pub const STAT_INTERDOMAIN: u32 = 2;
    /// `EVTCHNSTAT_pirq`.
    pub const STAT_PIRQ: u32 = 3;
    /// `EVTCHNSTAT_virq`.
    pub const STAT_VIRQ: u32 = 4;
    /// `EVTCHNSTAT_ipi`.
    pub const STAT_IPI: u32 = 5;
}

/// `VIRQ_*` (xen.h): virtual interrupts a port can be bound to. "V" ones are per vCPU, the
/// others global or per domain.
pub mod virq {
    /// V: the vCPU's timer (`VCPUOP_set_singleshot_timer`, `set_timer_op`).
    pub const TIMER: u32 = 0;
    /// V: request to dump debug info.
    pub const DEBUG: u32 = 1;
    /// Global: bytes on the emergency console.
    pub const CONSOLE: u32 = 2;
    /// Global: exceptional event for some domain.
    pub const DOM_EXC: u32 = 3;
    /// Global: trace buffer records.
    pub const TBUF: u32 = 4;
    /// Global: a domain paused for debugging.
    pub const DEBUGGER: u32 = 6;
    /// V: xenoprof sample.
    pub const XENOPROF: u32 = 7;
    /// Global: bytes on the console ring.
    pub const CON_RING: u32 = 8;
    /// Global: PCPU state changed.
    pub const PCPU_STATE: u32 = 9;
    /// Global: memory event.
    pub const MEM_EVENT: u32 = 10;
    /// Per domain: Argo message.
    pub const ARGO: u32 = 11;
    /// Global: low on heap memory.
    pub const ENOMEM: u32 = 12;
    /// V: PMC interrupt.
    pub const XENPMU: u32 = 13;
    /// `VIRQ_ARCH_0` (x86: `VIRQ_MCA`, global); arch VIRQs run to `VIRQ_ARCH_7` = 23.
    pub const ARCH_0: u32 = 16;
    /// `NR_VIRQS`.
    pub const NR_VIRQS: u32 = 24;
}

/// `GNTTABOP_*`, `GNTST_*` (grant_table.h): sub-ops of `grant_table_op(cmd, arg, count)`.
pub mod gnttabop {
    /// Arg `gnttab_map_grant_ref[count]`.
    pub const MAP_GRANT_REF: u32 = 0;
    /// Arg `gnttab_unmap_grant_ref[count]`.
    pub const UNMAP_GRANT_REF: u32 = 1;
    /// Arg [`super::GnttabSetupTable`].
    pub const SETUP_TABLE: u32 = 2;
    /// Arg `gnttab_dump_table`.
    pub const DUMP_TABLE: u32 = 3;
    /// Arg `gnttab_transfer[count]`.
    pub const TRANSFER: u32 = 4;
    /// Arg `gnttab_copy[count]`.
    pub const COPY: u32 = 5;
    /// Arg [`super::GnttabQuerySize`].
    pub const QUERY_SIZE: u32 = 6;
    /// Arg `gnttab_unmap_and_replace[count]`.
    pub const UNMAP_AND_REPLACE: u32 = 7;
    /// Arg [`super::GnttabSetVersion`].
    pub const SET_VERSION: u32 = 8;
    /// Arg `gnttab_get_status_frames`.
    pub const GET_STATUS_FRAMES: u32 = 9;
    /// Arg `gnttab_get_version` {dom u16, pad u16, version u32}.
    pub const GET_VERSION: u32 = 10;
    /// Arg `gnttab_swap_grant_ref[count]`.
    pub const SWAP_GRANT_REF: u32 = 11;
    /// Arg `gnttab_cache_flush[count]`.
    pub const CACHE_FLUSH: u32 = 12;

    /// `GNTST_okay`.
    pub const ST_OKAY: i16 = 0;
    /// `GNTST_general_error`.
    pub const ST_GENERAL_ERROR: i16 = -1;
    /// `GNTST_bad_domain`.
    pub const ST_BAD_DOMAIN: i16 = -2;
    /// `GNTST_bad_gntref`.
    pub const ST_BAD_GNTREF: i16 = -3;
    /// `GNTST_bad_handle`.
    pub const ST_BAD_HANDLE: i16 = -4;
    /// `GNTST_bad_virt_addr`.
    pub const ST_BAD_VIRT_ADDR: i16 = -5;
    /// `GNTST_bad_dev_addr`.
    pub const ST_BAD_DEV_ADDR: i16 = -6;
    /// `GNTST_no_device_space`.
    pub const ST_NO_DEVICE_SPACE: i16 = -7;
    /// `GNTST_permission_denied`.
    pub const ST_PERMISSION_DENIED: i16 = -8;
    /// `GNTST_bad_page`.
    pub const ST_BAD_PAGE: i16 = -9;
    /// `GNTST_bad_copy_arg`.
    pub const ST_BAD_COPY_ARG: i16 = -10;
    /// `GNTST_address_too_big`.
    pub const ST_ADDRESS_TOO_BIG: i16 = -11;
    /// `GNTST_eagain`.
    pub const ST_EAGAIN: i16 = -12;
    /// `GNTST_no_space`.
    pub const ST_NO_SPACE: i16 = -13;
}

/// `GTF_*` (grant_table.h): bits of [`super::GrantEntryV1::flags`].
pub mod gtf {
    /// `GTF_invalid`: type 0, no grant.
    pub const INVALID: u16 = 0;
    /// `GTF_permit_access`: type 1, the domain in `domid` may map or copy `frame`.
    pub const PERMIT_ACCESS: u16 = 1;
    /// `GTF_accept_transfer`: type 2.
    pub const ACCEPT_TRANSFER: u16 = 2;
    /// `GTF_transitive`: type 3 (v2 only).
    pub const TRANSITIVE: u16 = 3;
    /// `GTF_type_mask`.
    pub const TYPE_MASK: u16 = 3;
    /// `GTF_readonly`: the grantee may only read.
    pub const READONLY: u16 = 1 << 2;
    /// `GTF_reading`: the grantee has the frame mapped or in use for reading (set by the
    /// hypervisor side).
    pub const READING: u16 = 1 << 3;
    /// `GTF_writing`: the grantee has the frame mapped or in use for writing.
    pub const WRITING: u16 = 1 << 4;
    /// `GTF_PWT`.
    pub const PWT: u16 = 1 << 5;
    /// `GTF_PCD`.
    pub const PCD: u16 = 1 << 6;
    /// `GTF_PAT`.
    pub const PAT: u16 = 1 << 7;
    /// `GTF_sub_page` (v2 only).
    pub const SUB_PAGE: u16 = 1 << 8;
    /// `GTF_transfer_committed` (accept_transfer entries; same bit as READONLY).
    pub const TRANSFER_COMMITTED: u16 = 1 << 2;
    /// `GTF_transfer_completed` (accept_transfer entries; same bit as READING).
    pub const TRANSFER_COMPLETED: u16 = 1 << 3;
    /// v1 entries per 4 KiB grant frame.
    pub const V1_ENTRIES_PER_FRAME: usize = 4096 / 8;
}

/// Domain ids (xen.h `DOMID_*`, `domid_t` is `u16`).
pub mod domid {
    /// `DOMID_FIRST_RESERVED`: ids from here up are not ordinary domains.
    pub const FIRST_RESERVED: u16 = 0x7ff0;
    /// `DOMID_SELF`: the calling domain.
    pub const SELF: u16 = 0x7ff0;
    /// `DOMID_IO`.
    pub const IO: u16 = 0x7ff1;
    /// `DOMID_XEN`.
    pub const XEN: u16 = 0x7ff2;
    /// `DOMID_COW`.
    pub const COW: u16 = 0x7ff3;
    /// `DOMID_INVALID`.
    pub const INVALID: u16 = 0x7ff4;
    /// `DOMID_ANY`.
    pub const ANY: u16 = 0x7ff5;
    /// `DOMID_IDLE`.
    pub const IDLE: u16 = 0x7fff;
    /// `DOMID_MASK`.
    pub const MASK: u16 = 0x7fff;
}

/// `pvclock` flags in [`super::VcpuTimeInfo::flags`] (xen.h).
pub mod pvclock {
    /// `XEN_PVCLOCK_TSC_STABLE_BIT`: the records of all vCPUs make one monotonic clock, so the
    /// guest may skip its cross-CPU monotonicity check (and offer the vDSO clock).
    pub const TSC_STABLE_BIT: u8 = 1 << 0;
    /// `XEN_PVCLOCK_GUEST_STOPPED`: the guest was paused (watchdogs may ignore the gap).
    pub const GUEST_STOPPED: u8 = 1 << 1;
}

/// The hypervisor CPUID leaves (arch-x86/cpuid.h). Xen's header counts leaves from 1; here they
/// are offsets from the base, which Xen places at 0x40000000 (or 0x40000100 with Viridian).
pub mod cpuid {
    /// `XEN_CPUID_FIRST_LEAF`.
    pub const FIRST_LEAF: u32 = 0x4000_0000;
    /// Base + 0: EAX = the highest Xen leaf; EBX, ECX, EDX = "XenVMMXenVMM".
    pub const LEAF_SIGNATURE: u32 = 0;
    /// `XEN_CPUID_SIGNATURE_EBX`: "XenV".
    pub const SIGNATURE_EBX: u32 = 0x566e_6558;
    /// `XEN_CPUID_SIGNATURE_ECX`: "MMXe".
    pub const SIGNATURE_ECX: u32 = 0x6558_4d4d;
    /// `XEN_CPUID_SIGNATURE_EDX`: "nVMM".
    pub const SIGNATURE_EDX: u32 = 0x4d4d_566e;
    /// Base + 1: EAX = (major << 16) | minor.
    pub const LEAF_VERSION: u32 = 1;
    /// Base + 2: EAX = number of hypercall pages, EBX = hypercall-page MSR index, ECX/EDX
    /// feature words (`XEN_CPUID_FEAT1_*`).
    pub const LEAF_HYPERCALL: u32 = 2;
    /// Base + 3: TSC information. Sub-leaf 0: EAX flags (`XEN_CPUID_TSC_*`), EBX tsc_mode, ECX
    /// guest TSC kHz, EDX incarnation; sub-leaf 1: EAX/EBX TSC offset, ECX mul, EDX shift;
    /// sub-leaf 2: EAX host TSC kHz.
    pub const LEAF_TIME: u32 = 3;
    /// Base + 4: HVM features. Sub-leaf 0: EAX flags (`XEN_HVM_CPUID_*` below), EBX vCPU id
    /// (with [`HVM_VCPU_ID_PRESENT`]), ECX domain id (with [`HVM_DOMID_PRESENT`]).
    pub const LEAF_HVM: u32 = 4;
    /// Base + 5: PV parameters (EBX bits 7:0: machine address width).
    pub const LEAF_PV: u32 = 5;
    /// `XEN_CPUID_MAX_NUM_LEAVES`: the highest leaf offset Xen defines.
    pub const MAX_NUM_LEAVES: u32 = 5;

    /// `XEN_CPUID_TSC_EMULATED`.
    pub const TSC_EMULATED: u32 = 1 << 0;
    /// `XEN_CPUID_HOST_TSC_RELIABLE`.
    pub const HOST_TSC_RELIABLE: u32 = 1 << 1;
    /// `XEN_CPUID_RDTSCP_INSTR_AVAIL`.
    pub const RDTSCP_INSTR_AVAIL: u32 = 1 << 2;
    /// `XEN_CPUID_TSC_MODE_DEFAULT`.
    pub const TSC_MODE_DEFAULT: u32 = 0;
    /// `XEN_CPUID_TSC_MODE_ALWAYS_EMULATE`.
    pub const TSC_MODE_ALWAYS_EMULATE: u32 = 1;
    /// `XEN_CPUID_TSC_MODE_NEVER_EMULATE`.
    pub const TSC_MODE_NEVER_EMULATE: u32 = 2;
    /// `XEN_CPUID_TSC_MODE_PVRDTSCP`.
    pub const TSC_MODE_PVRDTSCP: u32 = 3;

    /// `XEN_HVM_CPUID_APIC_ACCESS_VIRT`.
    pub const HVM_APIC_ACCESS_VIRT: u32 = 1 << 0;
    /// `XEN_HVM_CPUID_X2APIC_VIRT`.
    pub const HVM_X2APIC_VIRT: u32 = 1 << 1;
    /// `XEN_HVM_CPUID_IOMMU_MAPPINGS`.
    pub const HVM_IOMMU_MAPPINGS: u32 = 1 << 2;
    /// `XEN_HVM_CPUID_VCPU_ID_PRESENT`: EBX holds the vCPU id.
    pub const HVM_VCPU_ID_PRESENT: u32 = 1 << 3;
    /// `XEN_HVM_CPUID_DOMID_PRESENT`: ECX holds the domain id.
    pub const HVM_DOMID_PRESENT: u32 = 1 << 4;
    /// `XEN_HVM_CPUID_EXT_DEST_ID`.
    pub const HVM_EXT_DEST_ID: u32 = 1 << 5;
    /// `XEN_HVM_CPUID_UPCALL_VECTOR`: `HVMOP_set_evtchn_upcall_vector` is worth using.
    pub const HVM_UPCALL_VECTOR: u32 = 1 << 6;
}

/// `XEN_LEGACY_MAX_VCPUS`: vcpu_info slots in shared_info.
pub const LEGACY_MAX_VCPUS: usize = 32;

// ---------------------------------------------------------------------------------------------
// Little-endian field access on byte buffers.

fn get<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn rd_u16(b: &[u8], off: usize) -> Option<u16> {
    get(b, off).map(u16::from_le_bytes)
}

fn rd_u32(b: &[u8], off: usize) -> Option<u32> {
    get(b, off).map(u32::from_le_bytes)
}

fn rd_u64(b: &[u8], off: usize) -> Option<u64> {
    get(b, off).map(u64::from_le_bytes)
}

/// Reads a `xen_ulong_t`, `xen_pfn_t` or guest handle of the given width, widened to 64 bits.
fn rd_word(w: Width, b: &[u8], off: usize) -> Option<u64> {
    match w {
        Width::Bits32 => rd_u32(b, off).map(u64::from),
        Width::Bits64 => rd_u64(b, off),
    }
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// Asserts a type's size and field offsets at compile time: `layout!(T, size; field @ off, ...)`.
macro_rules! layout {
    ($t:ty, $size:expr; $($f:ident @ $off:expr),* $(,)?) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $f) == $off);)*
    };
}

// ---------------------------------------------------------------------------------------------
// Shared memory: shared_info, vcpu_info, vcpu_time_info, vcpu_runstate_info.

/// `struct vcpu_time_info` (xen.h; Linux's `pvclock_vcpu_time_info`): the pvclock record,
/// same layout for both widths. Guest time = `system_time` + scale(TSC - `tsc_timestamp`) with
/// `tsc_to_system_mul` and `tsc_shift` (see `xen::time`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuTimeInfo {
    /// Odd while the hypervisor updates the record, even otherwise.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// The TSC at `system_time`.
    pub tsc_timestamp: u64,
    /// Nanoseconds since the domain's time origin at `tsc_timestamp`.
    pub system_time: u64,
    /// Fraction (32.32) of a nanosecond per shifted TSC tick.
    pub tsc_to_system_mul: u32,
    /// Shift applied to the TSC delta before the multiplication (negative: right shift).
    pub tsc_shift: i8,
    /// [`pvclock`] flags.
    pub flags: u8,
    /// Padding.
    pub pad1: [u8; 2],
}
layout!(VcpuTimeInfo, 32; version @ 0, tsc_timestamp @ 8, system_time @ 16,
    tsc_to_system_mul @ 24, tsc_shift @ 28, flags @ 29);

impl VcpuTimeInfo {
    /// Size in guest memory.
    pub const SIZE: usize = 32;

    /// Reads a record.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(VcpuTimeInfo {
            version: rd_u32(b, 0)?,
            pad0: 0,
            tsc_timestamp: rd_u64(b, 8)?,
            system_time: rd_u64(b, 16)?,
            tsc_to_system_mul: rd_u32(b, 24)?,
            tsc_shift: get::<1>(b, 28)?[0] as i8,
            flags: get::<1>(b, 29)?[0],
            pad1: [0; 2],
        })
    }

    /// The record as guest memory holds it.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0; Self::SIZE];
        put(&mut b, 0, &self.version.to_le_bytes());
        put(&mut b, 8, &self.tsc_timestamp.to_le_bytes());
        put(&mut b, 16, &self.system_time.to_le_bytes());
        put(&mut b, 24, &self.tsc_to_system_mul.to_le_bytes());
        b[28] = self.tsc_shift as u8;
        b[29] = self.flags;
        b
    }
}

/// `struct arch_vcpu_info` for x86_64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchVcpuInfo {
    /// PV only.
    pub cr2: u64,
    /// Padding to 64 bytes of vcpu_info.
    pub pad: u64,
}

/// `struct vcpu_info` (xen.h), 64-bit shared info: one per vCPU, in shared_info's first 32
/// slots or wherever `VCPUOP_register_vcpu_info` placed it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo {
    /// Non-zero when events wait for this vCPU (set by the hypervisor, cleared by the guest).
    pub evtchn_upcall_pending: u8,
    /// PV only (HVM uses RFLAGS.IF).
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad0: [u8; 6],
    /// Bit i set: word i of evtchn_pending may hold pending unmasked ports for this vCPU.
    pub evtchn_pending_sel: u64,
    /// Arch part.
    pub arch: ArchVcpuInfo,
    /// The pvclock record.
    pub time: VcpuTimeInfo,
}
layout!(VcpuInfo, 64; evtchn_upcall_pending @ 0, evtchn_upcall_mask @ 1,
    evtchn_pending_sel @ 8, arch @ 16, time @ 32);

/// `struct vcpu_info` with 32-bit shared info: `evtchn_pending_sel` is 32 bits at offset 4,
/// `arch` is cr2 + pad[5] (all `u32`); the record stays at offset 32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo32 {
    /// As in [`VcpuInfo`].
    pub evtchn_upcall_pending: u8,
    /// As in [`VcpuInfo`].
    pub evtchn_upcall_mask: u8,
    /// Padding.
    pub pad0: [u8; 2],
    /// As in [`VcpuInfo`], 32 bits.
    pub evtchn_pending_sel: u32,
    /// `arch_vcpu_info` for i386: cr2, pad[5].
    pub arch: [u32; 6],
    /// The pvclock record.
    pub time: VcpuTimeInfo,
}
layout!(VcpuInfo32, 64; evtchn_upcall_pending @ 0, evtchn_pending_sel @ 4, arch @ 8,
    time @ 32);

/// `struct arch_shared_info` for x86_64 (PV fields; a PVH guest leaves them alone).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchSharedInfo {
    /// PV p2m size.
    pub max_pfn: u64,
    /// PV p2m root.
    pub pfn_to_mfn_frame_list_list: u64,
    /// PV NMI reason.
    pub nmi_reason: u64,
    /// PV linear p2m address space.
    pub p2m_cr3: u64,
    /// PV linear p2m address.
    pub p2m_vaddr: u64,
    /// PV p2m generation count.
    pub p2m_generation: u64,
}

/// `struct shared_info` (xen.h) with 64-bit layout: 4096 event channels.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedInfo {
    /// The first 32 vCPUs' vcpu_info until they register their own.
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    /// Pending bit per port (set by the hypervisor, cleared by the guest).
    pub evtchn_pending: [u64; 64],
    /// Mask bit per port (set and cleared by the guest).
    pub evtchn_mask: [u64; 64],
    /// Odd while the wallclock is updated.
    pub wc_version: u32,
    /// Wallclock seconds (low 32 bits) at system time 0.
    pub wc_sec: u32,
    /// Wallclock nanoseconds at system time 0.
    pub wc_nsec: u32,
    /// Wallclock seconds, high 32 bits.
    pub wc_sec_hi: u32,
    /// Arch part.
    pub arch: ArchSharedInfo,
}
layout!(SharedInfo, 3136; vcpu_info @ 0, evtchn_pending @ 2048, evtchn_mask @ 2560,
    wc_version @ 3072, wc_sec @ 3076, wc_nsec @ 3080, wc_sec_hi @ 3084, arch @ 3088);

/// `struct shared_info` with 32-bit layout: 1024 event channels in 32-bit words, and
/// `wc_sec_hi` moved into the arch part (after six `u32` PV fields).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SharedInfo32 {
    /// As in [`SharedInfo`].
    pub vcpu_info: [VcpuInfo32; LEGACY_MAX_VCPUS],
    /// As in [`SharedInfo`], 32-bit words.
    pub evtchn_pending: [u32; 32],
    /// As in [`SharedInfo`], 32-bit words.
    pub evtchn_mask: [u32; 32],
    /// As in [`SharedInfo`].
    pub wc_version: u32,
    /// As in [`SharedInfo`].
    pub wc_sec: u32,
    /// As in [`SharedInfo`].
    pub wc_nsec: u32,
    /// `arch_shared_info` for i386: max_pfn, pfn_to_mfn_frame_list_list, nmi_reason, p2m_cr3,
    /// p2m_vaddr, p2m_generation.
    pub arch: [u32; 6],
    /// Wallclock seconds, high 32 bits (`arch.wc_sec_hi`).
    pub wc_sec_hi: u32,
}
layout!(SharedInfo32, 2344; vcpu_info @ 0, evtchn_pending @ 2048, evtchn_mask @ 2176,
    wc_version @ 2304, wc_sec @ 2308, wc_nsec @ 2312, arch @ 2316, wc_sec_hi @ 2340);

/// Where things are in a shared_info page and a vcpu_info, for one width: what root mode needs
/// to reach the event bitmaps and clocks in guest memory. Offsets come from the layout types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfoLayout {
    /// Size of shared_info.
    pub size: usize,
    /// Offset of `evtchn_pending` (a little-endian bitmap: port p is bit p % 8 of byte p / 8).
    pub evtchn_pending: usize,
    /// Offset of `evtchn_mask` (bitmap like `evtchn_pending`).
    pub evtchn_mask: usize,
    /// Bytes of each bitmap.
    pub bitmap_bytes: usize,
    /// Offset of `wc_version`.
    pub wc_version: usize,
    /// Offset of `wc_sec`.
    pub wc_sec: usize,
    /// Offset of `wc_nsec`.
    pub wc_nsec: usize,
    /// Offset of `wc_sec_hi`.
    pub wc_sec_hi: usize,
    /// Size of one vcpu_info.
    pub vcpu_info_size: usize,
    /// Offset of `evtchn_upcall_pending` in vcpu_info.
    pub upcall_pending: usize,
    /// Offset of `evtchn_pending_sel` in vcpu_info (a bitmap of `sel_bytes` bytes).
    pub pending_sel: usize,
    /// Bytes of `evtchn_pending_sel`.
    pub sel_bytes: usize,
    /// Offset of the `vcpu_time_info` record in vcpu_info.
    pub time: usize,
}

impl SharedInfoLayout {
    /// The layout for a width.
    pub const fn of(w: Width) -> Self {
        match w {
            Width::Bits64 => SharedInfoLayout {
                size: size_of::<SharedInfo>(),
                evtchn_pending: offset_of!(SharedInfo, evtchn_pending),
                evtchn_mask: offset_of!(SharedInfo, evtchn_mask),
                bitmap_bytes: size_of::<[u64; 64]>(),
                wc_version: offset_of!(SharedInfo, wc_version),
                wc_sec: offset_of!(SharedInfo, wc_sec),
                wc_nsec: offset_of!(SharedInfo, wc_nsec),
                wc_sec_hi: offset_of!(SharedInfo, wc_sec_hi),
                vcpu_info_size: size_of::<VcpuInfo>(),
                upcall_pending: offset_of!(VcpuInfo, evtchn_upcall_pending),
                pending_sel: offset_of!(VcpuInfo, evtchn_pending_sel),
                sel_bytes: 8,
                time: offset_of!(VcpuInfo, time),
            },
            Width::Bits32 => SharedInfoLayout {
                size: size_of::<SharedInfo32>(),
                evtchn_pending: offset_of!(SharedInfo32, evtchn_pending),
                evtchn_mask: offset_of!(SharedInfo32, evtchn_mask),
                bitmap_bytes: size_of::<[u32; 32]>(),
                wc_version: offset_of!(SharedInfo32, wc_version),
                wc_sec: offset_of!(SharedInfo32, wc_sec),
                wc_nsec: offset_of!(SharedInfo32, wc_nsec),
                wc_sec_hi: offset_of!(SharedInfo32, wc_sec_hi),
                vcpu_info_size: size_of::<VcpuInfo32>(),
                upcall_pending: offset_of!(VcpuInfo32, evtchn_upcall_pending),
                pending_sel: offset_of!(VcpuInfo32, evtchn_pending_sel),
                sel_bytes: 4,
                time: offset_of!(VcpuInfo32, time),
            },
        }
    }

    /// Offset of vCPU `vcpu`'s default vcpu_info in shared_info (`vcpu` < 32).
    pub const fn vcpu_info(&self, vcpu: usize) -> usize {
        vcpu * self.vcpu_info_size
    }
}

/// `struct vcpu_runstate_info` (vcpu.h), 64-bit layout: written by the hypervisor into the area
/// the guest registered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRunstateInfo {
    /// [`runstate`] value.
    pub state: i32,
    /// System time (ns) the state was entered; bit 63 is [`runstate::UPDATE`].
    pub state_entry_time: u64,
    /// Time spent in each state (ns), indexed by [`runstate`] value.
    pub time: [u64; 4],
}
layout!(VcpuRunstateInfo, 48; state @ 0, state_entry_time @ 8, time @ 16);

/// `struct vcpu_runstate_info` as a 32-bit guest lays it out: `uint64_t` aligned to 4, so 44
/// bytes (Xen's `compat_vcpu_runstate_info`).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRunstateInfo32 {
    /// As in [`VcpuRunstateInfo`].
    pub state: i32,
    /// As in [`VcpuRunstateInfo`].
    pub state_entry_time: u64,
    /// As in [`VcpuRunstateInfo`].
    pub time: [u64; 4],
}
layout!(VcpuRunstateInfo32, 44; state @ 0, state_entry_time @ 4, time @ 12);

impl VcpuRunstateInfo {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<VcpuRunstateInfo32>(),
            Width::Bits64 => size_of::<VcpuRunstateInfo>(),
        }
    }

    /// Writes the record in a width's layout into `out` (at least [`Self::size`] bytes);
    /// returns the bytes written.
    pub fn encode(&self, w: Width, out: &mut [u8]) -> Option<usize> {
        let (entry, times) = match w {
            Width::Bits32 => (
                offset_of!(VcpuRunstateInfo32, state_entry_time),
                offset_of!(VcpuRunstateInfo32, time),
            ),
            Width::Bits64 => (
                offset_of!(VcpuRunstateInfo, state_entry_time),
                offset_of!(VcpuRunstateInfo, time),
            ),
        };
        let size = Self::size(w);
        let out = out.get_mut(..size)?;
        out.fill(0);
        put(out, 0, &self.state.to_le_bytes());
        put(out, entry, &self.state_entry_time.to_le_bytes());
        for (i, t) in self.time.iter().enumerate() {
            put(out, times + 8 * i, &t.to_le_bytes());
        }
        Some(size)
    }

    /// Offset of `state_entry_time` for a width (the word that carries [`runstate::UPDATE`]).
    pub const fn state_entry_time_offset(w: Width) -> usize {
        match w {
            Width::Bits32 => offset_of!(VcpuRunstateInfo32, state_entry_time),
            Width::Bits64 => offset_of!(VcpuRunstateInfo, state_entry_time),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// memory_op arguments.

/// `struct xen_add_to_physmap` (memory.h), 64-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    /// Domain whose map changes (DOMID_SELF).
    pub domid: u16,
    /// Pages, for `XENMAPSPACE_gmfn_range`.
    pub size: u16,
    /// `XENMAPSPACE_*` ([`xenmem`]).
    pub space: u32,
    /// Index into the space (`xen_ulong_t`).
    pub idx: u64,
    /// Guest frame where the page appears (`xen_pfn_t`).
    pub gpfn: u64,
}
layout!(XenAddToPhysmap, 24; domid @ 0, size @ 2, space @ 4, idx @ 8, gpfn @ 16);

/// `struct xen_add_to_physmap`, 32-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenAddToPhysmap32 {
    /// As in [`XenAddToPhysmap`].
    pub domid: u16,
    /// As in [`XenAddToPhysmap`].
    pub size: u16,
    /// As in [`XenAddToPhysmap`].
    pub space: u32,
    /// As in [`XenAddToPhysmap`], 32 bits.
    pub idx: u32,
    /// As in [`XenAddToPhysmap`], 32 bits.
    pub gpfn: u32,
}
layout!(XenAddToPhysmap32, 16; domid @ 0, size @ 2, space @ 4, idx @ 8, gpfn @ 12);

impl XenAddToPhysmap {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<XenAddToPhysmap32>(),
            Width::Bits64 => size_of::<XenAddToPhysmap>(),
        }
    }

    /// Reads either layout (IN only).
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        let (idx, gpfn) = match w {
            Width::Bits32 => (
                offset_of!(XenAddToPhysmap32, idx),
                offset_of!(XenAddToPhysmap32, gpfn),
            ),
            Width::Bits64 => (
                offset_of!(XenAddToPhysmap, idx),
                offset_of!(XenAddToPhysmap, gpfn),
            ),
        };
        Some(XenAddToPhysmap {
            domid: rd_u16(b, 0)?,
            size: rd_u16(b, 2)?,
            space: rd_u32(b, 4)?,
            idx: rd_word(w, b, idx)?,
            gpfn: rd_word(w, b, gpfn)?,
        })
    }
}

/// `struct xen_memory_reservation` (memory.h), 64-bit layout. The extent list holds
/// `xen_pfn_t`s: 8 bytes each for a 64-bit guest, 4 for a 32-bit one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryReservation {
    /// Guest address of the extent list (handle).
    pub extent_start: u64,
    /// Number of extents (`xen_ulong_t`).
    pub nr_extents: u64,
    /// Each extent is 2^extent_order pages.
    pub extent_order: u32,
    /// `XENMEMF_*` flags ([`xenmem`]).
    pub mem_flags: u32,
    /// Domain (DOMID_SELF for a DomU).
    pub domid: u16,
}
layout!(XenMemoryReservation, 32; extent_start @ 0, nr_extents @ 8, extent_order @ 16,
    mem_flags @ 20, domid @ 24);

/// `struct xen_memory_reservation`, 32-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMemoryReservation32 {
    /// As in [`XenMemoryReservation`], 32 bits.
    pub extent_start: u32,
    /// As in [`XenMemoryReservation`], 32 bits.
    pub nr_extents: u32,
    /// As in [`XenMemoryReservation`].
    pub extent_order: u32,
    /// As in [`XenMemoryReservation`].
    pub mem_flags: u32,
    /// As in [`XenMemoryReservation`].
    pub domid: u16,
}
layout!(XenMemoryReservation32, 20; extent_start @ 0, nr_extents @ 4, extent_order @ 8,
    mem_flags @ 12, domid @ 16);

impl XenMemoryReservation {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<XenMemoryReservation32>(),
            Width::Bits64 => size_of::<XenMemoryReservation>(),
        }
    }

    /// Reads either layout (IN only; the extent list is OUT for increase/populate).
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        let o = match w {
            Width::Bits32 => [
                offset_of!(XenMemoryReservation32, nr_extents),
                offset_of!(XenMemoryReservation32, extent_order),
                offset_of!(XenMemoryReservation32, mem_flags),
                offset_of!(XenMemoryReservation32, domid),
            ],
            Width::Bits64 => [
                offset_of!(XenMemoryReservation, nr_extents),
                offset_of!(XenMemoryReservation, extent_order),
                offset_of!(XenMemoryReservation, mem_flags),
                offset_of!(XenMemoryReservation, domid),
            ],
        };
        Some(XenMemoryReservation {
            extent_start: rd_word(w, b, 0)?,
            nr_extents: rd_word(w, b, o[0])?,
            extent_order: rd_u32(b, o[1])?,
            mem_flags: rd_u32(b, o[2])?,
            domid: rd_u16(b, o[3])?,
        })
    }
}

/// `struct xen_memory_map` (memory.h), 64-bit layout: `nr_entries` is IN (room) and OUT
/// (entries written).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenMemoryMap {
    /// e820 entries the buffer holds / were written.
    pub nr_entries: u32,
    /// Guest address of the e820 buffer (handle).
    pub buffer: u64,
}
layout!(XenMemoryMap, 16; nr_entries @ 0, buffer @ 8);

/// `struct xen_memory_map`, 32-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMemoryMap32 {
    /// As in [`XenMemoryMap`].
    pub nr_entries: u32,
    /// As in [`XenMemoryMap`], 32 bits.
    pub buffer: u32,
}
layout!(XenMemoryMap32, 8; nr_entries @ 0, buffer @ 4);

impl XenMemoryMap {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<XenMemoryMap32>(),
            Width::Bits64 => size_of::<XenMemoryMap>(),
        }
    }

    /// Reads either layout.
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        let buffer = match w {
            Width::Bits32 => offset_of!(XenMemoryMap32, buffer),
            Width::Bits64 => offset_of!(XenMemoryMap, buffer),
        };
        Some(XenMemoryMap {
            nr_entries: rd_u32(b, 0)?,
            buffer: rd_word(w, b, buffer)?,
        })
    }

    /// Writes either layout into `out`; returns the bytes written.
    pub fn encode(&self, w: Width, out: &mut [u8]) -> Option<usize> {
        let size = Self::size(w);
        let out = out.get_mut(..size)?;
        out.fill(0);
        put(out, 0, &self.nr_entries.to_le_bytes());
        match w {
            Width::Bits32 => put(out, 4, &(self.buffer as u32).to_le_bytes()),
            Width::Bits64 => put(out, 8, &self.buffer.to_le_bytes()),
        }
        Some(size)
    }
}

/// Bytes of one e820 entry in `XENMEM_memory_map`'s buffer (addr u64, size u64, type u32,
/// packed).
pub const E820_ENTRY_SIZE: usize = 20;

// ---------------------------------------------------------------------------------------------
// Structs with the same layout for both widths.

/// Defines a struct of little-endian integer fields whose layout is the same for both widths,
/// with its layout assertions and `from_bytes`/`to_bytes`.
macro_rules! plain_struct {
    (
        $(#[$m:meta])*
        $name:ident, $size:expr;
        $($(#[$fm:meta])* $f:ident: $t:ty = $off:expr),* $(,)?
    ) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }
        layout!($name, $size; $($f @ $off),*);

        impl $name {
            /// Size in guest memory (both widths).
            pub const SIZE: usize = $size;

            /// Reads the struct from the start of `b`; `None` if `b` is too short.
            pub fn from_bytes(b: &[u8]) -> Option<Self> {
                let b = b.get(..$size)?;
                Some($name {
                    $($f: <$t>::from_le_bytes(get(b, offset_of!($name, $f))?),)*
                })
            }

            /// The struct as guest memory holds it (padding zeroed).
            pub fn to_bytes(&self) -> [u8; $size] {
                let mut b = [0; $size];
                $(put(&mut b, offset_of!($name, $f), &self.$f.to_le_bytes());)*
                b
            }
        }
    };
}

plain_struct! {
    /// `struct xen_hvm_param` (hvm/hvm_op.h): `HVMOP_{set,get}_param`.
    XenHvmParam, 16;
    /// Domain (DOMID_SELF).
    domid: u16 = 0,
    /// Padding.
    pad: u16 = 2,
    /// [`hvm_param`] index.
    index: u32 = 4,
    /// IN for set, OUT for get.
    value: u64 = 8,
}

plain_struct! {
    /// `struct xen_feature_info` (version.h): `XENVER_get_features`.
    XenFeatureInfo, 8;
    /// IN: which 32-bit submap (only 0 exists).
    submap_idx: u32 = 0,
    /// OUT: the [`xenfeat`] bits.
    submap: u32 = 4,
}

plain_struct! {
    /// `struct vcpu_register_vcpu_info` (vcpu.h): place the vCPU's vcpu_info at
    /// `mfn` * 4096 + `offset` (a GFN for PVH).
    VcpuRegisterVcpuInfo, 16;
    /// Guest frame of the page.
    mfn: u64 = 0,
    /// Offset in the page (the whole 64 bytes must fit in the page).
    offset: u32 = 8,
    /// Unused.
    rsvd: u32 = 12,
}

plain_struct! {
    /// `struct sched_shutdown` (sched.h).
    SchedShutdown, 4;
    /// [`shutdown`] reason.
    reason: u32 = 0,
}

plain_struct! {
    /// `struct evtchn_alloc_unbound` (event_channel.h).
    EvtchnAllocUnbound, 8;
    /// IN: domain to allocate in (DOMID_SELF).
    dom: u16 = 0,
    /// IN: domain allowed to bind (DOMID_SELF = the caller).
    remote_dom: u16 = 2,
    /// OUT: the new port.
    port: u32 = 4,
}

plain_struct! {
    /// `struct evtchn_bind_interdomain` (event_channel.h).
    EvtchnBindInterdomain, 12;
    /// IN: the remote domain.
    remote_dom: u16 = 0,
    /// IN: its unbound port.
    remote_port: u32 = 4,
    /// OUT: the new local port.
    local_port: u32 = 8,
}

plain_struct! {
    /// `struct evtchn_bind_virq` (event_channel.h).
    EvtchnBindVirq, 12;
    /// IN: [`virq`] number.
    virq: u32 = 0,
    /// IN: vCPU (0 for non-per-vCPU VIRQs).
    vcpu: u32 = 4,
    /// OUT: the new port.
    port: u32 = 8,
}

plain_struct! {
    /// `struct evtchn_bind_ipi` (event_channel.h).
    EvtchnBindIpi, 8;
    /// IN: the vCPU to notify.
    vcpu: u32 = 0,
    /// OUT: the new port.
    port: u32 = 4,
}

plain_struct! {
    /// `struct evtchn_close` (event_channel.h).
    EvtchnClose, 4;
    /// IN: port to close.
    port: u32 = 0,
}

plain_struct! {
    /// `struct evtchn_send` (event_channel.h).
    EvtchnSend, 4;
    /// IN: local port to notify through.
    port: u32 = 0,
}

plain_struct! {
    /// `struct evtchn_status` (event_channel.h). The union at 16 is `u.unbound.dom` (u16),
    /// `u.interdomain` {dom u16 @ 16, port u32 @ 20}, `u.pirq` or `u.virq` (u32 @ 16): here as
    /// its two words.
    EvtchnStatus, 24;
    /// IN: domain (DOMID_SELF).
    dom: u16 = 0,
    /// IN: port.
    port: u32 = 4,
    /// OUT: `EVTCHNSTAT_*` ([`evtchnop`]).
    status: u32 = 8,
    /// OUT: the vCPU notified.
    vcpu: u32 = 12,
    /// OUT: union word 0: unbound/interdomain dom (low 16 bits), pirq or virq.
    u0: u32 = 16,
    /// OUT: union word 1: interdomain port.
    u1: u32 = 20,
}

plain_struct! {
    /// `struct evtchn_bind_vcpu` (event_channel.h).
    EvtchnBindVcpu, 8;
    /// IN: port.
    port: u32 = 0,
    /// IN: vCPU to notify from now on.
    vcpu: u32 = 4,
}

plain_struct! {
    /// `struct evtchn_unmask` (event_channel.h).
    EvtchnUnmask, 4;
    /// IN: port.
    port: u32 = 0,
}

plain_struct! {
    /// `struct evtchn_reset` (event_channel.h).
    EvtchnReset, 2;
    /// IN: domain (DOMID_SELF).
    dom: u16 = 0,
}

plain_struct! {
    /// `struct gnttab_query_size` (grant_table.h).
    GnttabQuerySize, 16;
    /// IN: domain (DOMID_SELF).
    dom: u16 = 0,
    /// OUT: frames in use.
    nr_frames: u32 = 4,
    /// OUT: the most frames the domain may have.
    max_nr_frames: u32 = 8,
    /// OUT: `GNTST_*`.
    status: i16 = 12,
}

plain_struct! {
    /// `struct gnttab_set_version` (grant_table.h).
    GnttabSetVersion, 4;
    /// IN: 1 or 2; OUT: the version in force.
    version: u32 = 0,
}

plain_struct! {
    /// `struct grant_entry_v1` (grant_table.h): one entry of a v1 grant frame.
    GrantEntryV1, 8;
    /// [`gtf`] flags.
    flags: u16 = 0,
    /// Domain granted access.
    domid: u16 = 2,
    /// Guest frame granted.
    frame: u32 = 4,
}

plain_struct! {
    /// `struct xen_hvm_evtchn_upcall_vector` (hvm/hvm_op.h).
    XenHvmEvtchnUpcallVector, 8;
    /// vCPU.
    vcpu: u32 = 0,
    /// Vector for that vCPU's upcalls.
    vector: u8 = 4,
}

// ---------------------------------------------------------------------------------------------
// Other width-dependent arguments.

/// `struct vcpu_register_runstate_memory_area` (vcpu.h): a guest virtual address (a handle in
/// a union with a `uint64_t`, so 8 bytes for both widths). A 32-bit guest sets only the low 4
/// bytes (Xen's compat code reads a 4-byte handle), so [`Self::decode`] drops the high half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisterRunstateMemoryArea {
    /// Guest virtual address of a [`VcpuRunstateInfo`] (0 disables updates).
    pub addr: u64,
}
layout!(VcpuRegisterRunstateMemoryArea, 8; addr @ 0);

impl VcpuRegisterRunstateMemoryArea {
    /// Size in guest memory (both widths).
    pub const SIZE: usize = 8;

    /// Reads the address a guest of this width registers.
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::SIZE)?;
        Some(VcpuRegisterRunstateMemoryArea {
            addr: rd_word(w, b, 0)?,
        })
    }
}

/// `struct vcpu_set_singleshot_timer` (vcpu.h), 64-bit layout (16 bytes; 12 for a 32-bit
/// guest, same offsets, no tail padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuSetSingleshotTimer {
    /// Absolute deadline in system time (ns).
    pub timeout_abs_ns: u64,
    /// [`vcpuop::SSHOTTMR_FUTURE`] or 0.
    pub flags: u32,
}
layout!(VcpuSetSingleshotTimer, 16; timeout_abs_ns @ 0, flags @ 8);

/// `struct vcpu_set_singleshot_timer`, 32-bit layout.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuSetSingleshotTimer32 {
    /// As in [`VcpuSetSingleshotTimer`].
    pub timeout_abs_ns: u64,
    /// As in [`VcpuSetSingleshotTimer`].
    pub flags: u32,
}
layout!(VcpuSetSingleshotTimer32, 12; timeout_abs_ns @ 0, flags @ 8);

impl VcpuSetSingleshotTimer {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<VcpuSetSingleshotTimer32>(),
            Width::Bits64 => size_of::<VcpuSetSingleshotTimer>(),
        }
    }

    /// Reads either layout (only the first 12 bytes matter to both).
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        Some(VcpuSetSingleshotTimer {
            timeout_abs_ns: rd_u64(b, 0)?,
            flags: rd_u32(b, 8)?,
        })
    }
}

/// `struct sched_poll` (sched.h), 64-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPoll {
    /// Guest address of an array of `evtchn_port_t` (u32).
    pub ports: u64,
    /// Entries in the array (at most [`schedop::POLL_MAX_PORTS`]).
    pub nr_ports: u32,
    /// Absolute system time (ns) to give up at; 0 = none.
    pub timeout: u64,
}
layout!(SchedPoll, 24; ports @ 0, nr_ports @ 8, timeout @ 16);

/// `struct sched_poll`, 32-bit layout.
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedPoll32 {
    /// As in [`SchedPoll`], 32 bits.
    pub ports: u32,
    /// As in [`SchedPoll`].
    pub nr_ports: u32,
    /// As in [`SchedPoll`].
    pub timeout: u64,
}
layout!(SchedPoll32, 16; ports @ 0, nr_ports @ 4, timeout @ 8);

impl SchedPoll {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<SchedPoll32>(),
            Width::Bits64 => size_of::<SchedPoll>(),
        }
    }

    /// Reads either layout.
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        let (nr, timeout) = match w {
            Width::Bits32 => (
                offset_of!(SchedPoll32, nr_ports),
                offset_of!(SchedPoll32, timeout),
            ),
            Width::Bits64 => (
                offset_of!(SchedPoll, nr_ports),
                offset_of!(SchedPoll, timeout),
            ),
        };
        Some(SchedPoll {
            ports: rd_word(w, b, 0)?,
            nr_ports: rd_u32(b, nr)?,
            timeout: rd_u64(b, timeout)?,
        })
    }
}

/// `struct gnttab_setup_table` (grant_table.h), 64-bit layout: `frame_list` receives
/// `nr_frames` `xen_pfn_t`s (PV; an HVM/PVH guest maps frames with add_to_physmap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetupTable {
    /// IN: domain (DOMID_SELF).
    pub dom: u16,
    /// IN: frames wanted.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    /// IN: guest address of the frame list (handle).
    pub frame_list: u64,
}
layout!(GnttabSetupTable, 24; dom @ 0, nr_frames @ 4, status @ 8, frame_list @ 16);

/// `struct gnttab_setup_table`, 32-bit layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabSetupTable32 {
    /// As in [`GnttabSetupTable`].
    pub dom: u16,
    /// As in [`GnttabSetupTable`].
    pub nr_frames: u32,
    /// As in [`GnttabSetupTable`].
    pub status: i16,
    /// As in [`GnttabSetupTable`], 32 bits.
    pub frame_list: u32,
}
layout!(GnttabSetupTable32, 16; dom @ 0, nr_frames @ 4, status @ 8, frame_list @ 12);

impl GnttabSetupTable {
    /// Size in guest memory for a width.
    pub const fn size(w: Width) -> usize {
        match w {
            Width::Bits32 => size_of::<GnttabSetupTable32>(),
            Width::Bits64 => size_of::<GnttabSetupTable>(),
        }
    }

    /// Reads either layout.
    pub fn decode(w: Width, b: &[u8]) -> Option<Self> {
        let b = b.get(..Self::size(w))?;
        let list = match w {
            Width::Bits32 => offset_of!(GnttabSetupTable32, frame_list),
            Width::Bits64 => offset_of!(GnttabSetupTable, frame_list),
        };
        Some(GnttabSetupTable {
            dom: rd_u16(b, 0)?,
            nr_frames: rd_u32(b, 4)?,
            status: rd_u16(b, 8)? as i16,
            frame_list: rd_word(w, b, list)?,
        })
    }

    /// Writes either layout into `out`; returns the bytes written.
    pub fn encode(&self, w: Width, out: &mut [u8]) -> Option<usize> {
        let size = Self::size(w);
        let out = out.get_mut(..size)?;
        out.fill(0);
        put(out, 0, &self.dom.to_le_bytes());
        put(out, 4, &self.nr_frames.to_le_bytes());
        put(out, 8, &self.status.to_le_bytes());
        match w {
            Width::Bits32 => put(out, 12, &(self.frame_list as u32).to_le_bytes()),
            Width::Bits64 => put(out, 16, &self.frame_list.to_le_bytes()),
        }
        Some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_spells_xenvmmxenvmm() {
        let mut s = [0u8; 12];
        s[..4].copy_from_slice(&cpuid::SIGNATURE_EBX.to_le_bytes());
        s[4..8].copy_from_slice(&cpuid::SIGNATURE_ECX.to_le_bytes());
        s[8..].copy_from_slice(&cpuid::SIGNATURE_EDX.to_le_bytes());
        assert_eq!(&s, b"XenVMMXenVMM");
    }

    #[test]
    fn errno_rax_is_sign_extended() {
        assert_eq!(Errno::ENOSYS.rax(), (-38i64) as u64);
        assert_eq!(Errno::EINVAL.value(), -22);
        assert_eq!(Errno::EPERM.rax() as u32, (-1i32) as u32);
    }

    #[test]
    fn width_port_counts() {
        assert_eq!(Width::Bits64.evtchn_2l_ports(), 4096);
        assert_eq!(Width::Bits32.evtchn_2l_ports(), 1024);
        let l64 = SharedInfoLayout::of(Width::Bits64);
        let l32 = SharedInfoLayout::of(Width::Bits32);
        assert_eq!(l64.bitmap_bytes * 8, 4096);
        assert_eq!(l32.bitmap_bytes * 8, 1024);
        assert_eq!(l64.vcpu_info(31) + 64, l64.evtchn_pending);
        assert_eq!(l32.vcpu_info(31) + 64, l32.evtchn_pending);
        assert_eq!((l64.pending_sel, l32.pending_sel), (8, 4));
        assert_eq!((l64.time, l32.time), (32, 32));
        assert!(l64.size <= 4096 && l32.size <= 4096);
    }

    #[test]
    fn add_to_physmap_both_widths() {
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
        b[4..8].copy_from_slice(&xenmem::MAPSPACE_GRANT_TABLE.to_le_bytes());
        b[8..16].copy_from_slice(&3u64.to_le_bytes());
        b[16..24].copy_from_slice(&0x1_2345_6789u64.to_le_bytes());
        let a = XenAddToPhysmap::decode(Width::Bits64, &b).unwrap();
        assert_eq!(
            a,
            XenAddToPhysmap {
                domid: domid::SELF,
                size: 0,
                space: 1,
                idx: 3,
                gpfn: 0x1_2345_6789
            }
        );
        assert!(XenAddToPhysmap::decode(Width::Bits64, &b[..23]).is_none());

        let mut c = [0u8; 16];
        c[0..2].copy_from_slice(&0x7ff0u16.to_le_bytes());
        c[8..12].copy_from_slice(&3u32.to_le_bytes());
        c[12..16].copy_from_slice(&0xfeffu32.to_le_bytes());
        let a = XenAddToPhysmap::decode(Width::Bits32, &c).unwrap();
        assert_eq!((a.space, a.idx, a.gpfn), (0, 3, 0xfeff));
        assert!(XenAddToPhysmap::decode(Width::Bits32, &c[..15]).is_none());
    }

    #[test]
    fn reservation_both_widths() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&0xffff_8000_0000_1000u64.to_le_bytes());
        b[8..16].copy_from_slice(&5u64.to_le_bytes());
        b[16..20].copy_from_slice(&9u32.to_le_bytes());
        b[24..26].copy_from_slice(&domid::SELF.to_le_bytes());
        let r = XenMemoryReservation::decode(Width::Bits64, &b).unwrap();
        assert_eq!(
            (r.extent_start, r.nr_extents, r.extent_order, r.domid),
            (0xffff_8000_0000_1000, 5, 9, domid::SELF)
        );
        let mut c = [0u8; 20];
        c[0..4].copy_from_slice(&0xc000_1000u32.to_le_bytes());
        c[4..8].copy_from_slice(&7u32.to_le_bytes());
        c[16..18].copy_from_slice(&domid::SELF.to_le_bytes());
        let r = XenMemoryReservation::decode(Width::Bits32, &c).unwrap();
        assert_eq!(
            (r.extent_start, r.nr_extents, r.domid),
            (0xc000_1000, 7, domid::SELF)
        );
        assert!(XenMemoryReservation::decode(Width::Bits32, &c[..19]).is_none());
    }

    #[test]
    fn memory_map_and_setup_table_round_trip() {
        for w in [Width::Bits32, Width::Bits64] {
            let m = XenMemoryMap {
                nr_entries: 12,
                buffer: 0x8000_1000,
            };
            let mut out = [0xaa; 16];
            assert_eq!(m.encode(w, &mut out), Some(XenMemoryMap::size(w)));
            assert_eq!(XenMemoryMap::decode(w, &out), Some(m));

            let s = GnttabSetupTable {
                dom: domid::SELF,
                nr_frames: 4,
                status: gnttabop::ST_GENERAL_ERROR,
                frame_list: 0x1234_5000,
            };
            let mut out = [0xaa; 24];
            assert_eq!(s.encode(w, &mut out), Some(GnttabSetupTable::size(w)));
            assert_eq!(GnttabSetupTable::decode(w, &out), Some(s));
        }
    }

    #[test]
    fn poll_timer_runstate_area_decode() {
        let mut b = [0u8; 24];
        b[0..8].copy_from_slice(&0xdead_beef_0000_1000u64.to_le_bytes());
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[16..24].copy_from_slice(&77u64.to_le_bytes());
        let p = SchedPoll::decode(Width::Bits64, &b).unwrap();
        assert_eq!(
            (p.ports, p.nr_ports, p.timeout),
            (0xdead_beef_0000_1000, 1, 77)
        );
        // The 32-bit layout of the same bytes: ports = low half, nr_ports = the high half.
        let p = SchedPoll::decode(Width::Bits32, &b).unwrap();
        assert_eq!((p.ports, p.nr_ports, p.timeout), (0x1000, 0xdead_beef, 1));

        let a = VcpuRegisterRunstateMemoryArea::decode(Width::Bits32, &b).unwrap();
        assert_eq!(a.addr, 0x1000);
        let a = VcpuRegisterRunstateMemoryArea::decode(Width::Bits64, &b).unwrap();
        assert_eq!(a.addr, 0xdead_beef_0000_1000);

        let t = VcpuSetSingleshotTimer::decode(Width::Bits32, &b[..12]).unwrap();
        assert_eq!((t.timeout_abs_ns, t.flags), (0xdead_beef_0000_1000, 1));
        assert!(VcpuSetSingleshotTimer::decode(Width::Bits64, &b[..12]).is_none());
    }

    #[test]
    fn runstate_encodes_both_widths() {
        let r = VcpuRunstateInfo {
            state: runstate::BLOCKED,
            state_entry_time: 0x1122_3344_5566_7788,
            time: [1, 2, 3, 4],
        };
        let mut out = [0u8; 48];
        assert_eq!(r.encode(Width::Bits64, &mut out), Some(48));
        assert_eq!(&out[8..16], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&out[40..48], &4u64.to_le_bytes());
        assert_eq!(r.encode(Width::Bits32, &mut out), Some(44));
        assert_eq!(&out[0..4], &2i32.to_le_bytes());
        assert_eq!(&out[4..12], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&out[36..44], &4u64.to_le_bytes());
        assert_eq!(VcpuRunstateInfo::state_entry_time_offset(Width::Bits32), 4);
        assert!(r.encode(Width::Bits64, &mut [0u8; 47]).is_none());
    }

    #[test]
    fn plain_structs_round_trip() {
        let s = EvtchnStatus {
            dom: domid::SELF,
            port: 5,
            status: evtchnop::STAT_INTERDOMAIN,
            vcpu: 1,
            u0: 3,
            u1: 9,
        };
        assert_eq!(EvtchnStatus::from_bytes(&s.to_bytes()), Some(s));
        assert!(EvtchnStatus::from_bytes(&s.to_bytes()[..23]).is_none());
        let p = XenHvmParam {
            domid: domid::SELF,
            pad: 0,
            index: hvm_param::CALLBACK_IRQ,
            value: (2 << 56) | 0xf3,
        };
        let b = p.to_bytes();
        assert_eq!(b[15], 2);
        assert_eq!(XenHvmParam::from_bytes(&b), Some(p));
        let q = GnttabQuerySize {
            dom: 0,
            nr_frames: 1,
            max_nr_frames: 64,
            status: gnttabop::ST_BAD_DOMAIN,
        };
        assert_eq!(GnttabQuerySize::from_bytes(&q.to_bytes()), Some(q));
        let g = GrantEntryV1::from_bytes(&[0x05, 0, 0, 0, 0x34, 0x12, 0, 0]).unwrap();
        assert_eq!(g.flags, gtf::PERMIT_ACCESS | gtf::READONLY);
        assert_eq!(g.frame, 0x1234);
    }

    #[test]
    fn time_info_round_trip() {
        let t = VcpuTimeInfo {
            version: 2,
            pad0: 0,
            tsc_timestamp: 1 << 40,
            system_time: 12345,
            tsc_to_system_mul: 0x8000_0000,
            tsc_shift: -1,
            flags: pvclock::TSC_STABLE_BIT,
            pad1: [0; 2],
        };
        let b = t.to_bytes();
        assert_eq!(b[28], 0xff);
        assert_eq!(VcpuTimeInfo::from_bytes(&b), Some(t));
    }
}
