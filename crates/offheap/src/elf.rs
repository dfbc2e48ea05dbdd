//! Just enough ELF to tell whether the native agent can work in a program:
//! it needs a dynamically linked glibc executable.

use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// Dynamically linked against glibc (the agent works).
    Glibc,
    /// Dynamically linked against musl (no `__libc_*` symbols: the agent cannot hook).
    Musl,
    /// Statically linked: LD_PRELOAD has no effect.
    Static,
    /// Not an ELF file (a script: the interpreter decides).
    NotElf,
}

/// Reads the program headers and the PT_INTERP path.
pub fn linkage(path: &Path) -> Linkage {
    let mut buf = Vec::new();
    if offheap_format::io::open_module_file(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut buf))
        .is_err()
        || buf.len() < 64
    {
        return Linkage::NotElf;
    }
    if &buf[..4] != b"\x7fELF" || buf[4] != 2 || buf[5] != 1 {
        return Linkage::NotElf; // only 64-bit little-endian is supported
    }
    let u16at = |o: usize| {
        buf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64at = |o: usize| {
        buf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64at(0x20), u16at(0x36), u16at(0x38))
    else {
        return Linkage::NotElf;
    };
    let mut has_dynamic = false;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let Some(kind) = buf
            .get(ph..ph + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        else {
            break;
        };
        match kind {
            3 => {
                // PT_INTERP
                let (Some(off), Some(size)) = (u64at(ph + 8), u64at(ph + 32)) else {
                    continue;
                };
                let interp = buf
                    .get(off..off + size)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return if interp.contains("musl") {
                    Linkage::Musl
                } else {
                    Linkage::Glibc
                };
            }
            2 => has_dynamic = true,
            _ => {}
        }
    }
    if has_dynamic {
        Linkage::Glibc
    } else {
        Linkage::Static
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_binaries() {
        assert_eq!(linkage(Path::new("/bin/sh")), Linkage::Glibc);
        assert_eq!(linkage(Path::new("/etc/passwd")), Linkage::NotElf);
    }
}
