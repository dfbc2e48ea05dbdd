//! A small, bounds-checked reader of 64-bit little-endian ELF files, over a
//! byte slice (the whole file, or a mapping of it). `no_std`, no allocation:
//! the native agent uses it in the target to find functions by name.
//!
//! Only what offheap needs: the header, program and section headers, and
//! symbol lookup in `.symtab` and `.dynsym`. Every read is checked; a
//! malformed file yields `None`, never a panic.

/// `e_type` of a position-dependent executable.
pub const ET_EXEC: u16 = 2;
/// `e_type` of a shared object or position-independent executable.
pub const ET_DYN: u16 = 3;
/// Section type of the static symbol table.
pub const SHT_SYMTAB: u32 = 2;
/// Section type of the dynamic symbol table.
pub const SHT_DYNSYM: u32 = 11;
/// Symbol type of a function.
pub const STT_FUNC: u8 = 2;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// An ELF file in memory.
#[derive(Clone, Copy)]
pub struct Elf<'a> {
    bytes: &'a [u8],
    /// `e_type`.
    pub kind: u16,
    shoff: usize,
    shentsize: usize,
    shnum: usize,
}

/// One section header.
#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub kind: u32,
    pub offset: u64,
    pub size: u64,
    /// Index of the linked section (the string table of a symbol table).
    pub link: u32,
    pub entsize: u64,
}

/// One symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Link-time address (add the module's load bias for the runtime one).
    pub value: u64,
    pub size: u64,
    /// `STT_*`.
    pub kind: u8,
    /// Section index (0: undefined).
    pub shndx: u16,
}

impl<'a> Elf<'a> {
    /// Parses the header; `None` unless 64-bit little-endian ELF.
    pub fn parse(bytes: &'a [u8]) -> Option<Elf<'a>> {
        if bytes.get(..4)? != b"\x7fELF" || *bytes.get(4)? != 2 || *bytes.get(5)? != 1 {
            return None;
        }
        Some(Elf {
            bytes,
            kind: u16_at(bytes, 0x10)?,
            shoff: usize::try_from(u64_at(bytes, 0x28)?).ok()?,
            shentsize: u16_at(bytes, 0x3a)? as usize,
            shnum: u16_at(bytes, 0x3c)? as usize,
        })
    }

    /// Section header `i`.
    pub fn section(&self, i: usize) -> Option<Section> {
        if i >= self.shnum || self.shentsize < 64 {
            return None;
        }
        let o = self.shoff.checked_add(i.checked_mul(self.shentsize)?)?;
        // A header that starts within 64 bytes of the end of the address
        // space is no header: every field offset below is then in range.
        o.checked_add(64)?;
        Some(Section {
            kind: u32_at(self.bytes, o + 4)?,
            offset: u64_at(self.bytes, o + 0x18)?,
            size: u64_at(self.bytes, o + 0x20)?,
            link: u32_at(self.bytes, o + 0x28)?,
            entsize: u64_at(self.bytes, o + 0x38)?,
        })
    }

    fn data(&self, s: &Section) -> Option<&'a [u8]> {
        let start = usize::try_from(s.offset).ok()?;
        let end = start.checked_add(usize::try_from(s.size).ok()?)?;
        self.bytes.get(start..end)
    }

    /// The defined symbol `name` of symbol tables of type `table`
    /// ([`SHT_SYMTAB`] or [`SHT_DYNSYM`]).
    pub fn symbol_in(&self, table: u32, name: &[u8]) -> Option<Symbol> {
        for i in 0..self.shnum {
            let Some(s) = self.section(i) else { continue };
            if s.kind != table || s.entsize < 24 {
                continue;
            }
            let (Some(syms), Some(strs)) = (
                self.data(&s),
                self.section(s.link as usize).and_then(|l| self.data(&l)),
            ) else {
                continue;
            };
            let n = syms.len() / s.entsize as usize;
            for k in 0..n {
                let o = k * s.entsize as usize;
                let Some(off) = u32_at(syms, o) else { break };
                let Some(shndx) = u16_at(syms, o + 6) else {
                    break;
                };
                if shndx == 0 || !name_is(strs, off as usize, name) {
                    continue;
                }
                return Some(Symbol {
                    value: u64_at(syms, o + 8)?,
                    size: u64_at(syms, o + 16)?,
                    kind: *syms.get(o + 4)? & 0xf,
                    shndx,
                });
            }
        }
        None
    }

    /// The defined symbol `name`, from `.symtab` if the file has one, else `.dynsym`.
    pub fn symbol(&self, name: &[u8]) -> Option<Symbol> {
        self.symbol_in(SHT_SYMTAB, name)
            .or_else(|| self.symbol_in(SHT_DYNSYM, name))
    }
}

/// True if the NUL-terminated string at `off` of `strs` is `name`.
fn name_is(strs: &[u8], off: usize, name: &[u8]) -> bool {
    let Some(end) = off.checked_add(name.len()) else {
        return false;
    };
    strs.get(off..end) == Some(name) && strs.get(end) == Some(&0)
}

#[cfg(all(test, feature = "read"))]
mod tests {
    use super::*;

    #[test]
    fn finds_a_function_of_this_test_binary() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let elf = Elf::parse(&exe).unwrap();
        let s = elf.symbol(b"main").expect("main");
        assert_eq!(s.kind, STT_FUNC);
        assert!(elf.symbol(b"no such symbol at all").is_none());
    }

    #[test]
    fn malformed_files_give_none() {
        assert!(Elf::parse(b"").is_none());
        assert!(Elf::parse(b"\x7fELF\x02\x01").is_none());
        let mut exe = std::fs::read("/proc/self/exe").unwrap();
        // Section headers pointing past the end.
        exe[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        let elf = Elf::parse(&exe).unwrap();
        assert!(elf.symbol(b"main").is_none());
        for cut in [64, 1000, exe.len() / 2] {
            if let Some(e) = Elf::parse(&exe[..cut]) {
                let _ = e.symbol(b"main");
            }
        }
    }
}
