//! Decompressing a bzImage payload, chosen by its magic bytes.
//!
//! Every payload ends with the decompressed size as a little-endian u32: gzip's own trailer
//! ends with it (ISIZE), and for every other format Linux appends it to the compressor's
//! output (arch/x86/boot/compressed/Makefile: `cmd_gzip`, but `cmd_*_with_size` with
//! scripts/Makefile.lib `size_append` for the others; mkpiggy.c reads it). The builder hands
//! the decoder the compressed stream (without the appended 4 bytes), reads at most the
//! recorded size plus one byte, and checks the size it got.
//!
//! | format | Linux's command | magic | decoder |
//! | --- | --- | --- | --- |
//! | gzip | `gzip -n -f -9` (no size appended) | `1f 8b` | flate2 (miniz_oxide) |
//! | bzip2 | `bzip2 -9` | `BZh` | bzip2 (libbz2-rs-sys, pure Rust) |
//! | lzma | `lzma -9` (.lzma "alone") | `5d 00 00` | lzma-rust2 |
//! | xz | `xz --check=crc32 --x86 --lzma2=...` (scripts/xz_wrap.sh) | `fd 37 7a 58 5a 00` | lzma-rust2 (BCJ x86) |
//! | lz4 | `lz4 -l -9` (legacy frame) | `02 21 4c 18` | lz4_flex blocks |
//! | zstd | `zstd -22 --ultra` (128 MiB window) | `28 b5 2f fd` | ruzstd |
//! | lzo | `lzop -9` | `89 4c 5a 4f` | not supported |
use std::io::Read;

use crate::error::{Compression, Error, Result};

/// The largest decompressed size believed: far above any vmlinux, far below what a corrupt
/// size field could make the builder allocate.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// The legacy LZ4 frame's magic (lib/decompress_unlz4.c `ARCHIVE_MAGICNUMBER`), which also
/// separates concatenated legacy frames.
pub const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// The legacy LZ4 frame's block size: each block decompresses to 8 MiB except the last
/// (`LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`).
pub const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// The compression a payload's first bytes announce.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    let magics: [(&[u8], Compression); 7] = [
        (&[0x1f, 0x8b], Compression::Gzip),
        (b"BZh", Compression::Bzip2),
        (&[0x5d, 0x00, 0x00], Compression::Lzma),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
        (&LZ4_LEGACY_MAGIC.to_le_bytes(), Compression::Lz4),
        (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
    ];
    magics
        .iter()
        .find(|(m, _)| payload.starts_with(m))
        .map(|(_, c)| *c)
}

/// Decompresses a bzImage payload (compressed stream ending with the u32 size), returning what
/// it was compressed with and the decompressed bytes.
pub fn payload(payload: &[u8]) -> Result<(Compression, Vec<u8>)> {
    let mut magic = [0; 4];
    let n = payload.len().min(4);
    magic[..n].copy_from_slice(&payload[..n]);
    let compression = match detect(payload) {
        Some(Compression::Lzo) => {
            return Err(Error::UnknownCompression(Some(Compression::Lzo), magic))
        }
        Some(c) => c,
        None => return Err(Error::UnknownCompression(None, magic)),
    };
    if payload.len() < 8 {
        return Err(Error::Truncated {
            what: "bzImage payload",
        });
    }
    let (appended, size) = payload.split_at(payload.len() - 4);
    // gzip's ISIZE is part of its stream; the other formats' size is not.
    let stream = if compression == Compression::Gzip {
        payload
    } else {
        appended
    };
    let expected = u64::from(u32::from_le_bytes(size.try_into().expect("4 bytes")));
    if expected > MAX_DECOMPRESSED {
        return Err(Error::Decompress(
            compression,
            format!("the recorded size {expected} is implausible"),
        ));
    }
    let decoded = match compression {
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(stream), expected),
        Compression::Bzip2 => read_bounded(bzip2::read::BzDecoder::new(stream), expected),
        Compression::Lzma => lzma_rust2::LzmaReader::new_mem_limit(stream, u32::MAX, None)
            .map_err(|e| e.to_string())
            .and_then(|r| read_bounded(r, expected)),
        Compression::Xz => read_bounded(lzma_rust2::XzReader::new(stream, false), expected),
        Compression::Zstd => ruzstd::decoding::StreamingDecoder::new(stream)
            .map_err(|e| e.to_string())
            .and_then(|r| read_bounded(r, expected)),
        Compression::Lz4 => lz4_legacy(stream, expected),
        Compression::Lzo => unreachable!("refused above"),
    };
    let out = decoded.map_err(|why| Error::Decompress(compression, why))?;
    if out.len() as u64 != expected {
        return Err(Error::DecompressedSize {
            compression,
            expected,
            got: out.len() as u64,
        });
    }
    Ok((compression, out))
}

/// Reads `r` to its end, but at most `expected + 1` bytes (one more tells a size mismatch).
fn read_bounded(r: impl Read, expected: u64) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(expected as usize);
    r.take(expected + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decompresses a legacy LZ4 frame: the magic, then blocks, each a little-endian u32
/// compressed size and an LZ4 block of at most 8 MiB decompressed; the magic may appear
/// again between blocks (concatenated frames). The stream ends with its bytes, or at a zero
/// size (lib/decompress_unlz4.c `unlz4`).
fn lz4_legacy(stream: &[u8], expected: u64) -> std::result::Result<Vec<u8>, String> {
    let mut rest = stream
        .strip_prefix(&LZ4_LEGACY_MAGIC.to_le_bytes())
        .ok_or("no legacy LZ4 magic")?;
    let mut out = Vec::with_capacity(expected as usize);
    let mut block = vec![0; LZ4_LEGACY_BLOCK];
    while rest.len() >= 4 {
        let (size, tail) = rest.split_at(4);
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes"));
        if size == LZ4_LEGACY_MAGIC {
            rest = tail;
            continue;
        }
        if size == 0 {
            break;
        }
        let size = size as usize;
        let data = tail
            .get(..size)
            .ok_or_else(|| format!("a block of {size} bytes runs past the end of the payload"))?;
        let n = lz4_flex::block::decompress_into(data, &mut block).map_err(|e| e.to_string())?;
        if out.len() as u64 + n as u64 > expected {
            return Err(format!("more than the recorded {expected} bytes"));
        }
        out.extend_from_slice(&block[..n]);
        rest = &tail[size..];
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after the last block", rest.len()));
    }
    Ok(out)
}
