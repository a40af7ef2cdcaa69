//! Whole-builder tests: bzImages in every compression (the crates' own encoders, the system's
//! compressors run as Linux's build runs them when they are installed, and the real test
//! kernel when it is built), and the layout of built domains.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use keel_core::xen::start_info::{memmap_type, HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo};

use crate::decompress::{LZ4_LEGACY_BLOCK, LZ4_LEGACY_MAGIC};
use crate::kernel::tests::{make_elf, pvh_elf, Load, Note};
use crate::kernel::XEN_ELFNOTE_PHYS32_ENTRY;
use crate::layout::{FOUR_GIB, GIB, LOW_RAM_LIMIT, MIB, PAGE_SIZE};
use crate::*;

/// Wraps `payload` (compressed vmlinux + size) in a minimal bzImage: one setup sector after
/// the boot sector, boot protocol 2.15, the payload 0x100 bytes into the protected-mode code.
fn make_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let pm_start = (usize::from(setup_sects) + 1) * 512;
    let offset = 0x100usize;
    let mut f = vec![0u8; pm_start + offset];
    f[0x1f1] = setup_sects;
    f[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
    f[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f.extend_from_slice(&[0xcc; 64]); // what follows the payload in a real bzImage
    f
}

/// `compressed` followed by the decompressed size, as Linux's `size_append` makes it (for
/// every format but gzip, whose stream already ends with the size).
fn with_size(mut compressed: Vec<u8>, original: &[u8]) -> Vec<u8> {
    if !compressed.starts_with(&[0x1f, 0x8b]) {
        compressed.extend((original.len() as u32).to_le_bytes());
    }
    compressed
}

/// A compressor.
type Encoder = fn(&[u8]) -> Vec<u8>;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn lzma(data: &[u8]) -> Vec<u8> {
    // Unknown size and an end marker, as `lzma -9` writes when it reads a pipe.
    let opts = lzma_rust2::LzmaOptions::with_preset(6);
    let mut w = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    // CRC32 and the x86 BCJ filter before LZMA2, as scripts/xz_wrap.sh asks.
    let mut opts = lzma_rust2::XzOptions::with_preset(6);
    opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
    opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

/// The legacy LZ4 frame by hand: the magic, then per 8 MiB of input a u32 size and an LZ4
/// block (what `lz4 -l` writes).
fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
    for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
        let block = lz4_flex::block::compress(chunk);
        out.extend((block.len() as u32).to_le_bytes());
        out.extend(block);
    }
    out
}

/// A PVH vmlinux whose text segment is `text_len` bytes of compressible, non-uniform data.
fn vmlinux_of(text_len: usize) -> Vec<u8> {
    let text: Vec<u8> = (0..text_len)
        .map(|i| ((i / 3) as u8) ^ ((i >> 12) as u8))
        .collect();
    make_elf(
        &[Load {
            paddr: 0x100_0000,
            data: text,
            memsz: text_len as u64 + 0x1000,
        }],
        &[Note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x100_0040u64.to_le_bytes(),
        )],
    )
}

fn config(kernel: &[u8]) -> Config<'_> {
    Config {
        kernel,
        initrd: None,
        cmdline: "console=hvc0",
        memory: 256 * MIB,
        vcpus: 1,
    }
}

#[test]
fn every_compression_round_trips_through_a_bzimage() {
    let vmlinux = pvh_elf();
    let plain = Kernel::parse(&vmlinux).unwrap();
    let encoders: [(Compression, Encoder); 6] = [
        (Compression::Gzip, gzip),
        (Compression::Bzip2, bzip2),
        (Compression::Lzma, lzma),
        (Compression::Xz, xz),
        (Compression::Zstd, zstd),
        (Compression::Lz4, lz4_legacy),
    ];
    for (c, encode) in encoders {
        let bz = make_bzimage(&with_size(encode(&vmlinux), &vmlinux));
        let k = Kernel::parse(&bz).unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        assert_eq!(k.compression, Some(c));
        assert_eq!(k.segments, plain.segments, "{}", c.name());
        assert_eq!(k.entry, plain.entry, "{}", c.name());
    }
}

#[test]
fn lz4_legacy_frames_with_several_blocks_and_repeated_magic() {
    // 9 MiB of text: two blocks; then the same frame's magic again between blocks, as
    // concatenated legacy frames have it.
    let vmlinux = vmlinux_of(9 * MIB as usize);
    let framed = lz4_legacy(&vmlinux);
    let first_block_len = u32::from_le_bytes(framed[4..8].try_into().unwrap()) as usize;
    let mut twice = framed[..8 + first_block_len].to_vec();
    twice.extend(LZ4_LEGACY_MAGIC.to_le_bytes());
    twice.extend(&framed[8 + first_block_len..]);
    for stream in [framed, twice] {
        let k = Kernel::parse(&make_bzimage(&with_size(stream, &vmlinux))).unwrap();
        assert_eq!(k.segments[0].data.len(), 9 * MIB as usize);
        assert_eq!(k.entry, 0x100_0040);
    }
}

#[test]
fn corrupt_payloads_are_errors() {
    let vmlinux = pvh_elf();
    // A wrong recorded size.
    let mut p = bzip2(&vmlinux);
    p.extend((vmlinux.len() as u32 + 1).to_le_bytes());
    let e = Kernel::parse(&make_bzimage(&p)).unwrap_err();
    assert!(matches!(e, Error::DecompressedSize { .. }), "{e}");
    // A damaged stream, in every format.
    for encode in [gzip, bzip2, lzma, xz, zstd, lz4_legacy] {
        let mut c = encode(&vmlinux);
        let mid = c.len() / 2;
        c.truncate(mid);
        let e = Kernel::parse(&make_bzimage(&with_size(c, &vmlinux))).unwrap_err();
        assert!(
            matches!(e, Error::Decompress(..) | Error::DecompressedSize { .. }),
            "{e}"
        );
    }
    // Something that decompresses but is not an ELF.
    let e = Kernel::parse(&make_bzimage(&with_size(gzip(&[1; 100]), &[1; 100]))).unwrap_err();
    assert!(matches!(e, Error::PayloadNotElf), "{e}");
}

#[test]
fn unknown_and_unsupported_compressions_are_named() {
    let e = Kernel::parse(&make_bzimage(b"\x89LZO\0\0\0\0\0\0\0\0")).unwrap_err();
    assert!(e.to_string().contains("lzo-compressed"), "{e}");
    let e = Kernel::parse(&make_bzimage(b"ABCDEFGH")).unwrap_err();
    assert!(
        matches!(e, Error::UnknownCompression(None, m) if &m == b"ABCD"),
        "{e}"
    );
    assert!(e.to_string().contains("unknown compression"), "{e}");
}

#[test]
fn bzimage_header_errors() {
    let good = make_bzimage(&with_size(gzip(&pvh_elf()), &pvh_elf()));
    // Cut inside the payload.
    let e = Kernel::parse(&good[..good.len() - 100]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                what: "bzImage payload"
            }
        ),
        "{e}"
    );
    // Boot protocol 2.06: no payload fields.
    let mut old = good.clone();
    old[0x206..0x208].copy_from_slice(&0x0206u16.to_le_bytes());
    let e = Kernel::parse(&old).unwrap_err();
    assert!(e.to_string().contains("2.06"), "{e}");
    // setup_sects 0 means 4: the payload is then elsewhere, and not gzip there.
    let mut zero = good;
    zero[0x1f1] = 0;
    assert!(Kernel::parse(&zero).is_err());
}

/// Runs `cmd` with `input` on stdin as Linux's build does (`cat ... | cmd`), or returns `None`
/// when the program is not installed.
fn system_compress(cmd: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = match Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => {
            eprintln!("skipped: {} is not installed", cmd[0]);
            return None;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?} failed");
    Some(out.stdout)
}

#[test]
fn system_compressors_as_linux_runs_them() {
    // scripts/Makefile.lib and scripts/xz_wrap.sh, x86.
    let cases: [(Compression, &[&str]); 6] = [
        (Compression::Gzip, &["gzip", "-n", "-f", "-9"]),
        (Compression::Bzip2, &["bzip2", "-9"]),
        (Compression::Lzma, &["lzma", "-9"]),
        (
            Compression::Xz,
            &["xz", "--check=crc32", "--x86", "--lzma2=dict=32MiB"],
        ),
        (Compression::Lz4, &["lz4", "-l", "-9", "-", "-"]),
        (Compression::Zstd, &["zstd", "-22", "--ultra"]),
    ];
    // Over 8 MiB, so that lz4 -l writes two blocks; x86-looking bytes for BCJ.
    let vmlinux = vmlinux_of(9 * MIB as usize);
    let plain = Kernel::parse(&vmlinux).unwrap();
    for (c, cmd) in cases {
        let Some(out) = system_compress(cmd, &vmlinux) else {
            continue;
        };
        let k = Kernel::parse(&make_bzimage(&with_size(out, &vmlinux)))
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert_eq!(k.compression, Some(c));
        assert_eq!(k.segments, plain.segments, "{cmd:?}");
    }
}

/// Checks a memory map the way Linux would need it.
fn check_memmap(map: &[HvmMemmapTableEntry], special: &SpecialPages) {
    for w in map.windows(2) {
        assert!(w[0].end() <= w[1].addr, "sorted, not overlapping: {map:?}");
    }
    assert!(
        map.iter()
            .any(|e| e.r#type == memmap_type::RAM && e.addr == 0 && e.size >= MIB),
        "RAM below 1 MiB"
    );
    let sp = special.range();
    for e in map {
        assert!(e.size > 0 && e.addr % PAGE_SIZE == 0 && e.size % PAGE_SIZE == 0);
        if e.r#type == memmap_type::RAM {
            assert!(
                e.end() <= sp.start || e.addr >= sp.end,
                "special pages are not RAM"
            );
        }
    }
    assert!(map
        .iter()
        .any(|e| e.r#type == memmap_type::RESERVED && e.addr <= sp.start && e.end() >= sp.end));
}

/// Reads `len` bytes at `gpa` back out of an image's writes (zero where nothing is written).
fn read(img: &Image, gpa: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    for w in &img.writes {
        let r = w.range();
        for (i, b) in out.iter_mut().enumerate() {
            let a = gpa + i as u64;
            if r.contains(&a) {
                *b = w.bytes[(a - r.start) as usize];
            }
        }
    }
    out
}

#[test]
fn a_built_domain_reads_back_as_linux_reads_it() {
    let kernel = pvh_elf();
    let initrd = vec![0x5a; 10_000];
    let cfg = Config {
        initrd: Some(&initrd),
        cmdline: "console=hvc0 root=/dev/xvda",
        vcpus: 3,
        ..config(&kernel)
    };
    let img = build(&cfg).unwrap();
    assert_eq!(img.entry, 0x100_0010);
    assert_eq!(img.vcpu.rip, 0x100_0010);
    assert_eq!(img.vcpu.rbx, img.start_info);
    assert_eq!(img.start_info, MIB, "the boot info at 1 MiB");
    assert_eq!(img.special.xenstore_pfn, 0xfeffc);
    assert_eq!(img.special.console_pfn, 0xfefff);
    assert_eq!(img.rsdp, 0xfc00_0000);

    // The writes do not overlap and each lies in memory the domain has.
    for w in img.writes.windows(2) {
        assert!(w[0].range().end <= w[1].gpa, "{:?}", img.writes);
    }
    for w in &img.writes {
        assert!(
            img.memory
                .iter()
                .any(|m| m.range.start <= w.gpa && w.range().end <= m.range.end),
            "{w:?} outside memory"
        );
    }

    // The start info, as pvh_start_xen copies it.
    let si = HvmStartInfo::from_bytes(&read(&img, img.start_info, 56).try_into().unwrap());
    assert_eq!((si.magic, si.version, si.flags), (0x336e_c578, 1, 0));
    assert_eq!(si.rsdp_paddr, img.rsdp);
    assert!(si.memmap_paddr + 24 * u64::from(si.memmap_entries) <= GIB);
    let cmdline = read(&img, si.cmdline_paddr, cfg.cmdline.len() + 1);
    assert_eq!(&cmdline[..cfg.cmdline.len()], cfg.cmdline.as_bytes());
    assert_eq!(cmdline[cfg.cmdline.len()], 0);
    assert_eq!(si.nr_modules, 1);
    let m = HvmModlistEntry::from_bytes(&read(&img, si.modlist_paddr, 32).try_into().unwrap());
    assert_eq!(m.size, initrd.len() as u64);
    assert_eq!(m.paddr % PAGE_SIZE, 0);
    assert!(m.paddr >= img.kernel.end, "the initrd after the kernel");
    assert_eq!(read(&img, m.paddr, initrd.len()), initrd);
    assert_eq!(img.initrd, Some(m.paddr..m.paddr + m.size));

    // The memory map in guest memory is the image's.
    let map: Vec<HvmMemmapTableEntry> = (0..u64::from(si.memmap_entries))
        .map(|i| {
            let b = read(&img, si.memmap_paddr + 24 * i, 24);
            HvmMemmapTableEntry::from_bytes(&b.try_into().unwrap())
        })
        .collect();
    assert_eq!(map, img.memmap);
    check_memmap(&map, &img.special);
    assert_eq!(
        map.iter().map(|e| (e.addr, e.r#type)).collect::<Vec<_>>(),
        [
            (0, memmap_type::RAM),
            (0xfc00_0000, memmap_type::NVS),
            (0xfeff_8000, memmap_type::RESERVED)
        ]
    );
    assert_eq!(map[0].size, 256 * MIB);

    // The ACPI tables are in their NVS range, the RSDP where the start info says.
    assert_eq!(&read(&img, si.rsdp_paddr, 8), b"RSD PTR ");
    let acpi = img
        .memory
        .iter()
        .find(|m| m.kind == MemoryKind::Acpi)
        .unwrap();
    assert_eq!(acpi.range.start, map[1].addr);
    assert_eq!(acpi.range.end, map[1].end());

    // The kernel's bytes are where its segments say.
    let k = Kernel::parse(&kernel).unwrap();
    for s in &k.segments {
        assert_eq!(read(&img, s.paddr, s.data.len()), s.data);
    }
}

#[test]
fn no_initrd_means_no_modules() {
    let kernel = pvh_elf();
    let img = build(&config(&kernel)).unwrap();
    let si = HvmStartInfo::from_bytes(&read(&img, img.start_info, 56).try_into().unwrap());
    assert_eq!((si.nr_modules, si.modlist_paddr), (0, 0));
    assert_eq!(img.initrd, None);
    let empty = Config {
        initrd: Some(&[]),
        ..config(&kernel)
    };
    assert_eq!(build(&empty).unwrap().initrd, None);
}

#[test]
fn large_memory_is_split_around_the_hole() {
    let kernel = pvh_elf();
    let cfg = Config {
        memory: 6 * GIB,
        ..config(&kernel)
    };
    let img = build(&cfg).unwrap();
    check_memmap(&img.memmap, &img.special);
    let ram: Vec<_> = img
        .memory
        .iter()
        .filter(|m| m.kind == MemoryKind::Ram)
        .map(|m| m.range.clone())
        .collect();
    assert_eq!(
        ram,
        [
            0..LOW_RAM_LIMIT,
            FOUR_GIB..FOUR_GIB + 6 * GIB - LOW_RAM_LIMIT
        ]
    );
    let total: u64 = ram.iter().map(|r| r.end - r.start).sum();
    assert_eq!(total, 6 * GIB);
    let last = img.memmap.last().unwrap();
    assert_eq!((last.addr, last.r#type), (FOUR_GIB, memmap_type::RAM));
}

#[test]
fn the_boot_info_avoids_a_kernel_at_1_mib() {
    let f = make_elf(
        &[Load {
            paddr: MIB,
            data: vec![0x90; 0x2000],
            memsz: 0x3000,
        }],
        &[Note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, &MIB.to_le_bytes())],
    );
    let img = build(&config(&f)).unwrap();
    assert_eq!(img.start_info, MIB + 0x3000);
}

#[test]
fn build_errors_name_the_problem() {
    let kernel = pvh_elf();
    let e = |cfg: Config| build(&cfg).unwrap_err().to_string();
    assert!(e(Config {
        vcpus: 0,
        ..config(&kernel)
    })
    .contains("vCPU count 0"));
    assert!(e(Config {
        vcpus: 129,
        ..config(&kernel)
    })
    .contains("128"));
    assert!(e(Config {
        memory: 8 * MIB,
        ..config(&kernel)
    })
    .contains("minimum"));
    let long = "x".repeat(MAX_CMDLINE + 1);
    assert!(e(Config {
        cmdline: &long,
        ..config(&kernel)
    })
    .contains("2047"));
    assert!(e(Config {
        cmdline: "a\0b",
        ..config(&kernel)
    })
    .contains("NUL"));
    // The kernel at 16 MiB does not fit in 32 MiB... it does; a kernel at 40 MiB does not.
    let high = make_elf(
        &[Load {
            paddr: 40 * MIB,
            data: vec![0; 16],
            memsz: 16,
        }],
        &[Note(
            b"Xen",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &(40 * MIB).to_le_bytes(),
        )],
    );
    let msg = e(Config {
        memory: 32 * MIB,
        ..config(&high)
    });
    assert!(msg.contains("outside the domain's RAM"), "{msg}");
    let big = vec![0; 20 * MIB as usize];
    let msg = e(Config {
        memory: 32 * MIB,
        initrd: Some(&big),
        ..config(&kernel)
    });
    assert!(msg.contains("initrd does not fit"), "{msg}");
    assert!(e(config(b"not a kernel at all")).contains("not a kernel"));
}

/// The test kernel as scripts/build-kernel leaves it, if it is there.
fn test_kernel() -> Option<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")?;
    let build = PathBuf::from(home).join(".cache/keel/kernel/keel/build");
    let vmlinux = build.join("vmlinux");
    let bzimage = build.join("arch/x86/boot/bzImage");
    (vmlinux.exists() && bzimage.exists()).then_some((vmlinux, bzimage))
}

#[test]
fn the_test_kernel_builds_the_same_from_vmlinux_and_bzimage() {
    let Some((vmlinux, bzimage)) = test_kernel() else {
        eprintln!(
            "skipped: no test kernel under ~/.cache/keel/kernel/keel/build (scripts/build-kernel)"
        );
        return;
    };
    let (vmlinux, bzimage) = (
        std::fs::read(vmlinux).unwrap(),
        std::fs::read(bzimage).unwrap(),
    );
    let a = Kernel::parse(&vmlinux).unwrap();
    let b = Kernel::parse(&bzimage).unwrap();
    assert!(b.compression.is_some());
    assert_eq!(a.entry, b.entry);
    assert_eq!(a.segments, b.segments);
    let cfg = Config {
        vcpus: 2,
        memory: 512 * MIB,
        ..config(&bzimage)
    };
    let img = build(&cfg).unwrap();
    assert_eq!(img.entry, a.entry);
    assert!(img.kernel.start >= 16 * MIB);
    check_memmap(&img.memmap, &img.special);
}
