//! The few ELF facts blazesym does not hand out: where V8's embedded blob
//! (the code of all `Builtins_*`) sits in node's binary, and its bytes.
//! 64-bit little-endian ELF only (what node ships on x86-64 and arm64).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// V8's embedded builtins inside a binary.
#[derive(Clone, Debug)]
pub(crate) struct EmbeddedBlob {
    /// Virtual address of `v8_Default_embedded_blob_code_`.
    pub vaddr: u64,
    /// Its size in bytes (`v8_Default_embedded_blob_code_size_`).
    pub size: u64,
    /// The code bytes.
    pub code: Vec<u8>,
    /// Blob offsets of the function symbols inside it (`Builtins_*`), sorted.
    pub starts: Vec<u64>,
}

struct Segment {
    vaddr: u64,
    offset: u64,
    filesz: u64,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// A module file named by a recording: a regular file at the end of any
/// symlinks, opened without blocking (a FIFO in its place cannot hang us).
fn open_module(path: &Path) -> Option<File> {
    offheap_format::io::open_module_file(path).ok()
}

fn read_at(f: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    // Sizes come from the file: check them against it before allocating.
    if len > (1 << 30) || offset.checked_add(len)? > f.metadata().ok()?.len() {
        return None;
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// Finds the embedded blob in `path`, if it is a V8 binary with a symtab.
/// Returns `None` for anything else (or anything malformed).
pub(crate) fn find_embedded_blob(path: &Path) -> Option<EmbeddedBlob> {
    let f = open_module(path)?;
    let eh = read_at(&f, 0, 64)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20)?;
    let shoff = u64_at(&eh, 0x28)?;
    let phentsize = u16_at(&eh, 0x36)? as u64;
    let phnum = u16_at(&eh, 0x38)? as u64;
    let shentsize = u16_at(&eh, 0x3a)? as u64;
    let shnum = u16_at(&eh, 0x3c)? as u64;
    if phentsize < 56 || shentsize < 64 || shnum == 0 {
        return None;
    }
    let ph = read_at(&f, phoff, phentsize * phnum)?;
    let segments: Vec<Segment> = (0..phnum as usize)
        .filter_map(|i| {
            let o = i * phentsize as usize;
            (u32_at(&ph, o)? == 1).then_some(())?; // PT_LOAD
            Some(Segment {
                offset: u64_at(&ph, o + 8)?,
                vaddr: u64_at(&ph, o + 16)?,
                filesz: u64_at(&ph, o + 32)?,
            })
        })
        .collect();
    let sh = read_at(&f, shoff, shentsize * shnum)?;
    let section = |i: usize| -> Option<(u32, u64, u64, u32, u64)> {
        let o = i * shentsize as usize;
        // (type, offset, size, link, entsize)
        Some((
            u32_at(&sh, o + 4)?,
            u64_at(&sh, o + 24)?,
            u64_at(&sh, o + 32)?,
            u32_at(&sh, o + 40)?,
            u64_at(&sh, o + 56)?,
        ))
    };
    // .symtab (type 2) only: the blob symbols are local.
    let (_, symoff, symsize, strndx, entsize) =
        (0..shnum as usize).filter_map(section).find(|s| s.0 == 2)?;
    let entsize = if entsize == 0 { 24 } else { entsize };
    let (_, stroff, strsize, _, _) = section(strndx as usize)?;
    let syms = read_at(&f, symoff, symsize)?;
    let strs = read_at(&f, stroff, strsize)?;
    let name_at = |o: u32| -> &[u8] {
        let s = strs.get(o as usize..).unwrap_or(&[]);
        &s[..s.iter().position(|&b| b == 0).unwrap_or(s.len())]
    };
    let (mut code, mut size_sym) = (None, None);
    let mut builtins = Vec::new();
    for i in 0..(symsize / entsize) as usize {
        let o = i * entsize as usize;
        let name = name_at(u32_at(&syms, o)?);
        if name == b"v8_Default_embedded_blob_code_" {
            code = Some(u64_at(&syms, o + 8)?);
        } else if name == b"v8_Default_embedded_blob_code_size_" {
            size_sym = Some(u64_at(&syms, o + 8)?);
        } else if name.starts_with(b"Builtins_") {
            builtins.push(u64_at(&syms, o + 8)?);
        }
    }
    let (vaddr, size_vaddr) = (code?, size_sym?);
    let file_offset = |va: u64| {
        segments
            .iter()
            .find(|s| va >= s.vaddr && va - s.vaddr < s.filesz)
            .map(|s| (va - s.vaddr).wrapping_add(s.offset))
    };
    let size = u32_at(&read_at(&f, file_offset(size_vaddr)?, 4)?, 0)? as u64;
    if size == 0 || size > (256 << 20) {
        return None;
    }
    let code = read_at(&f, file_offset(vaddr)?, size)?;
    let mut starts: Vec<u64> = builtins
        .into_iter()
        // (`vaddr + size` may be past u64::MAX in a crafted file.)
        .filter(|&a| a >= vaddr && a - vaddr < size)
        .map(|a| a - vaddr)
        .collect();
    starts.sort_unstable();
    starts.dedup();
    Some(EmbeddedBlob {
        vaddr,
        size,
        code,
        starts,
    })
}

impl EmbeddedBlob {
    /// True if the bytes just before blob offset `o` end with a call
    /// instruction, as they must for a return address (x86-64 encodings:
    /// `call rel32`, and `call r/m64` in its register, register-indirect,
    /// SIB, disp8, disp32 and RIP-relative forms). On other architectures
    /// every offset passes (no filtering).
    pub fn call_precedes(&self, o: u64) -> bool {
        if !cfg!(target_arch = "x86_64") {
            return true;
        }
        let o = o as usize;
        let c = &self.code;
        let at =
            |back: usize| -> Option<u8> { o.checked_sub(back).and_then(|i| c.get(i).copied()) };
        let modrm_call = |m: u8| (m >> 3) & 7 == 2;
        if o > c.len() {
            return false;
        }
        // call rel32: E8 xx xx xx xx, whose target must be a builtin's
        // entry (rel32 calls cannot leave a remapped copy).
        if at(5) == Some(0xe8) && o >= 5 {
            let rel = i32::from_le_bytes([c[o - 4], c[o - 3], c[o - 2], c[o - 1]]) as i64;
            let target = o as i64 + rel;
            if target >= 0
                && (self.starts.is_empty() || self.starts.binary_search(&(target as u64)).is_ok())
            {
                return true;
            }
        }
        // FF /2 forms, by total length ending at o.
        let ff = |len: usize, check: &dyn Fn(u8) -> bool| {
            at(len) == Some(0xff) && at(len - 1).is_some_and(check)
        };
        // call reg: FF D0+r (mod=11)
        ff(2, &|m| m >> 6 == 3 && modrm_call(m))
            // call [reg]: FF 10+r (mod=00, rm != 4 (SIB), rm != 5 (RIP))
            || ff(2, &|m| m >> 6 == 0 && modrm_call(m) && m & 7 != 4 && m & 7 != 5)
            // call [sib]: FF 14 sib
            || ff(3, &|m| m >> 6 == 0 && modrm_call(m) && m & 7 == 4)
            // call [reg+disp8]: FF 50+r d8
            || ff(3, &|m| m >> 6 == 1 && modrm_call(m) && m & 7 != 4)
            // call [sib+disp8]: FF 54 sib d8
            || ff(4, &|m| m >> 6 == 1 && modrm_call(m) && m & 7 == 4)
            // call [rip+disp32]: FF 15 d32
            || ff(6, &|m| m >> 6 == 0 && modrm_call(m) && m & 7 == 5)
            // call [reg+disp32]: FF 90+r d32
            || ff(6, &|m| m >> 6 == 2 && modrm_call(m) && m & 7 != 4)
            // call [sib+disp32]: FF 94 sib d32
            || ff(7, &|m| m >> 6 == 2 && modrm_call(m) && m & 7 == 4)
    }
}

/// A PT_LOAD segment: (vaddr, file offset, file size).
pub(crate) type LoadSegment = (u64, u64, u64);

/// PT_LOAD segments of an ELF file.
pub(crate) fn load_segments(path: &Path) -> Option<Vec<LoadSegment>> {
    let f = open_module(path)?;
    let eh = read_at(&f, 0, 64)?;
    if &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return None;
    }
    let phoff = u64_at(&eh, 0x20)?;
    let phentsize = u16_at(&eh, 0x36)? as u64;
    let phnum = u16_at(&eh, 0x38)? as u64;
    if phentsize < 56 {
        return None;
    }
    let ph = read_at(&f, phoff, phentsize * phnum)?;
    Some(
        (0..phnum as usize)
            .filter_map(|i| {
                let o = i * phentsize as usize;
                (u32_at(&ph, o)? == 1).then_some(())?;
                Some((
                    u64_at(&ph, o + 16)?,
                    u64_at(&ph, o + 8)?,
                    u64_at(&ph, o + 32)?,
                ))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How selective the return-address test is on the real node binary.
    #[test]
    fn call_check_on_real_node() {
        let Some(b) = find_embedded_blob(Path::new("/usr/bin/node")) else {
            return;
        };
        assert!(b.size > 1 << 20);
        assert!(b.starts.len() > 1000);
        let pass = (0..b.size).filter(|&o| b.call_precedes(o)).count();
        eprintln!(
            "blob {:#x}+{:#x}: {} of {} offsets follow a call ({:.3}%)",
            b.vaddr,
            b.size,
            pass,
            b.size,
            pass as f64 * 100.0 / b.size as f64
        );
        // Same page offset as a real return address (CallApiCallback+0x86).
        let o = 0x18d1546 - b.vaddr;
        assert!(b.call_precedes(o));
        let same_page: Vec<u64> = (0..b.size / 4096 + 1)
            .map(|k| k * 4096 + (o % 4096))
            .filter(|&x| x < b.size && b.call_precedes(x))
            .collect();
        eprintln!("same page offset passing: {same_page:x?}");
    }
}
