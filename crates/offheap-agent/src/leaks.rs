//! The leak check at exit (`OFFHEAP_LEAKS=1`, set by `offheap check`), the
//! way LeakSanitizer does it: every block still allocated when the process
//! calls `exit` is classed as reachable or lost by a conservative mark phase
//! over the process's own memory.
//!
//! - *Blocks*: every live record of the exact-mode address table (the leak
//!   check needs the table: header mode keeps no list of its blocks, so
//!   `OFFHEAP_LEAKS=1` turns headers off, see `header.rs`). Anonymous `mmap`
//!   regions are not blocks; they are roots (V8's heap among them).
//! - *Roots*: every readable and writable mapping of `/proc/self/maps` that
//!   is not malloc's and not the agent's: data and bss of every loaded
//!   object, anonymous mappings (V8's heap pages, whose embedder fields and
//!   external pointers hold native pointers; thread stacks; static TLS,
//!   which sits at the top of each thread's stack mapping, and the main
//!   thread's, which the loader maps), `[stack]`. A thread stack is scanned
//!   from its thread's stack pointer up when that is known: this thread's,
//!   and every other thread's from `/proc/self/task/TID/syscall` (which also
//!   gives the syscall's six argument registers, scanned as roots); a thread
//!   that is running has its whole stack mapping scanned. This thread's
//!   callee-saved registers at the exit handler are roots too. Other
//!   threads keep running meanwhile: what they change during the check can
//!   make the check see a little more or less, never fault.
//! - *Not roots*: `[heap]` (the main arena), the 64 MiB-aligned heaps of
//!   glibc's other arenas and the pages of mmapped chunks that hold tracked
//!   blocks, the agent's own module and tables (they hold every block's
//!   address), the check's own buffers, `[vvar]`/`[vdso]`, device mappings.
//! - *Pointers*: every 8-byte-aligned word; a word that points anywhere
//!   inside a block (not one past its end) marks it, and marked blocks are
//!   scanned in turn. The one address inside a block that does not count:
//!   where glibc's next chunk starts, when the block's last bytes overlap
//!   that chunk's `prev_size` field (glibc's bins and `top` point there).
//! - *Classes*: a block no root reaches is lost: *indirectly* if another
//!   lost block points to it, else *directly*. Results go out per stack
//!   (`LEAKS` records, docs/FORMAT-native.md).
//!
//! Every read of memory goes through `process_vm_readv` on this process,
//! which returns `EFAULT` for a page that is not (or no longer) mapped
//! instead of faulting, and only ever reads. All memory of the check comes
//! from the kernel (`mmap`), never through the hooks, and is unmapped before
//! the check returns.

use crate::{live, sys};
use core::sync::atomic::{AtomicBool, Ordering};
use offheap_format::native::{LeakScanHead, leak_class};

/// `OFFHEAP_LEAKS=1`: check at exit (set by `init`).
pub static ON: AtomicBool = AtomicBool::new(false);

/// One tracked block: `[start, end)`, its stack, and its mark.
#[derive(Clone, Copy)]
#[repr(C)]
struct Block {
    start: u64,
    end: u64,
    stack: u32,
    mark: u32,
}

const UNREACHED: u32 = 0;
const REACHED: u32 = 1;
const POINTED: u32 = 2;

/// An array in memory mapped for it (never through the hooks).
struct Buf<T: Copy> {
    p: *mut T,
    cap: usize,
    len: usize,
    bytes: usize,
}

impl<T: Copy> Buf<T> {
    fn new(cap: usize) -> Option<Self> {
        let bytes = (cap.max(1).checked_mul(core::mem::size_of::<T>())?).checked_add(4095)? & !4095;
        let p = sys::map_anon(bytes) as *mut T;
        if p.is_null() {
            return None;
        }
        Some(Self {
            p,
            cap: bytes / core::mem::size_of::<T>(),
            len: 0,
            bytes,
        })
    }
    fn push(&mut self, v: T) -> bool {
        if self.len == self.cap {
            return false;
        }
        // SAFETY: len < cap, inside the mapping.
        unsafe { self.p.add(self.len).write(v) };
        self.len += 1;
        true
    }
    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: the element at len was written by push.
        Some(unsafe { self.p.add(self.len).read() })
    }
    fn as_slice(&self) -> &[T] {
        // SAFETY: the first len elements were written.
        unsafe { core::slice::from_raw_parts(self.p, self.len) }
    }
    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { core::slice::from_raw_parts_mut(self.p, self.len) }
    }
    fn range(&self) -> (u64, u64) {
        (self.p as u64, self.p as u64 + self.bytes as u64)
    }
}

impl<T: Copy> Drop for Buf<T> {
    fn drop(&mut self) {
        sys::unmap(self.p as *mut u8, self.bytes);
    }
}

/// What the check found: its figures and `(stack, class, count, bytes)`.
pub struct Outcome {
    pub head: LeakScanHead,
    pub entries: Vec<(u32, u8, u64, u64)>,
    /// Why the check could not run (status 1).
    pub why: &'static [u8],
}

impl Outcome {
    pub fn failed(why: &'static [u8]) -> Self {
        Outcome {
            head: LeakScanHead {
                status: 1,
                ..Default::default()
            },
            entries: Vec::new(),
            why,
        }
    }
}

/// Reads `out.len()` bytes at `addr` of this process; returns how many
/// bytes from the start were readable (0 for an unmapped first page).
fn read(addr: u64, out: &mut [u8]) -> usize {
    let local = libc::iovec {
        iov_base: out.as_mut_ptr() as *mut libc::c_void,
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: out.len(),
    };
    // SAFETY: the local iovec is our writable buffer; the remote one is
    // only read by the kernel, which reports an unmapped page as EFAULT.
    let n = unsafe {
        libc::syscall(
            libc::SYS_process_vm_readv,
            sys::getpid() as libc::c_long,
            &local as *const libc::iovec,
            1usize,
            &remote as *const libc::iovec,
            1usize,
            0usize,
        )
    };
    if n == out.len() as i64 {
        return out.len();
    }
    // Partial or failed: page by page, up to the first that fails.
    let mut done = 0usize;
    while done < out.len() {
        let page_end = ((addr + done as u64) | 4095) + 1;
        let step = ((page_end - (addr + done as u64)) as usize).min(out.len() - done);
        let local = libc::iovec {
            iov_base: out[done..].as_mut_ptr() as *mut libc::c_void,
            iov_len: step,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: step,
        };
        // SAFETY: as above.
        let n = unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                sys::getpid() as libc::c_long,
                &local as *const libc::iovec,
                1usize,
                &remote as *const libc::iovec,
                1usize,
                0usize,
            )
        };
        if n != step as i64 {
            break;
        }
        done += step;
    }
    done
}

/// The mark phase's state.
struct Marker<'a> {
    blocks: &'a mut [Block],
    lo: u64,
    hi: u64,
    work: Buf<u32>,
    chunk: Buf<u8>,
    scanned: u64,
}

impl Marker<'_> {
    /// The block `v` points into.
    fn find(&self, v: u64) -> Option<usize> {
        if v < self.lo || v >= self.hi {
            return None;
        }
        let i = self.blocks.partition_point(|b| b.start <= v);
        if i == 0 || v >= self.blocks[i - 1].end {
            return None;
        }
        let b = &self.blocks[i - 1];
        // The last bytes of a block can be the next chunk's `prev_size`
        // field (glibc lends it to the block in use): glibc's own bins and
        // `top` point there, at the next chunk, not into this block.
        let n = b.end - b.start;
        let next_chunk = b.start - 16 + ((n + 8 + 15) & !15).max(32);
        (v != next_chunk).then_some(i - 1)
    }

    /// A root or reached word: marks the block it points into and queues it.
    fn word(&mut self, v: u64) {
        if let Some(i) = self.find(v)
            && self.blocks[i].mark == UNREACHED
        {
            self.blocks[i].mark = REACHED;
            // The worklist holds every block at most once: it cannot overflow.
            self.work.push(i as u32);
        }
    }

    /// Calls `f` for every aligned word of `[a, b)` that can be read.
    fn words(&mut self, a: u64, b: u64, mut f: impl FnMut(&mut Self, u64)) {
        let mut a = (a + 7) & !7;
        let b = b & !7;
        while a < b {
            let want = ((b - a) as usize).min(self.chunk.cap);
            // Read into the chunk (its length is the readable prefix).
            let got = {
                // SAFETY: the chunk's mapping holds cap bytes.
                let buf = unsafe { core::slice::from_raw_parts_mut(self.chunk.p, want) };
                read(a, buf)
            };
            self.scanned += got as u64;
            let mut off = 0;
            while off + 8 <= got {
                // SAFETY: off + 8 <= got <= cap; unaligned read of our buffer.
                let v = unsafe { (self.chunk.p.add(off) as *const u64).read_unaligned() };
                f(self, v);
                off += 8;
            }
            if got < want {
                // Skip the page that failed.
                a = ((a + got as u64) | 4095) + 1;
            } else {
                a += want as u64;
            }
        }
    }

    fn root(&mut self, a: u64, b: u64) {
        self.words(a, b, |m, v| m.word(v));
    }

    /// Scans every queued block until none is left.
    fn drain(&mut self) {
        while let Some(i) = self.work.pop() {
            let (a, b) = (self.blocks[i as usize].start, self.blocks[i as usize].end);
            self.words(a, b, |m, v| m.word(v));
        }
    }
}

/// One mapping of `/proc/self/maps` that may be a root.
#[derive(Clone, Copy)]
struct Map {
    start: u64,
    end: u64,
    /// `[heap]`: the main arena.
    heap: bool,
}

fn hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"0x").unwrap_or(s);
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}

/// Reads a whole file with raw system calls into `buf`; the bytes read.
fn read_file(path: &core::ffi::CStr, buf: &mut [u8]) -> usize {
    // SAFETY: a NUL-terminated path; raw open has no other preconditions.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open,
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return 0;
    }
    let mut n = 0usize;
    while n < buf.len() {
        // SAFETY: the rest of buf is writable; fd is ours.
        let r = unsafe { libc::syscall(libc::SYS_read, fd, buf[n..].as_mut_ptr(), buf.len() - n) };
        if r < 0 && sys::errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            break;
        }
        n += r as usize;
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    n
}

/// Parses one line of `/proc/self/maps` into a possible root.
fn parse_map(line: &[u8]) -> Option<Map> {
    let mut it = line.split(|&c| c == b' ').filter(|w| !w.is_empty());
    let range = it.next()?;
    let perms = it.next()?;
    let _off = it.next()?;
    let _dev = it.next()?;
    let _inode = it.next()?;
    // The path is the rest of the line (it may hold spaces).
    let path = match it.next() {
        Some(first) => {
            let at = first.as_ptr() as usize - line.as_ptr() as usize;
            &line[at..]
        }
        None => &[][..],
    };
    let dash = range.iter().position(|&c| c == b'-')?;
    let start = hex(&range[..dash])?;
    let end = hex(&range[dash + 1..])?;
    if perms.len() < 2 || perms[0] != b'r' || perms[1] != b'w' || end <= start {
        return None;
    }
    let heap = path == b"[heap]";
    let ok = path.is_empty()
        || heap
        || path == b"[stack]"
        || path.starts_with(b"[anon:")
        || (path.starts_with(b"/") && !path.starts_with(b"/dev/"))
        || path.starts_with(b"/dev/zero")
        || path.starts_with(b"/dev/shm/");
    ok.then_some(Map { start, end, heap })
}

/// The agent's own loaded segments (from its ELF header in memory).
fn own_segments(mut f: impl FnMut(u64, u64)) {
    unsafe extern "C" {
        static __ehdr_start: u8;
    }
    // SAFETY: the linker defines __ehdr_start at this object's ELF header,
    // which the loader maps (read-only) with the first segment.
    let base = unsafe { &__ehdr_start as *const u8 as u64 };
    // SAFETY: fields of the in-memory ELF header and its program headers,
    // inside the first mapped segment.
    unsafe {
        let phoff = ((base + 32) as *const u64).read_unaligned();
        let phentsize = ((base + 54) as *const u16).read_unaligned() as u64;
        let phnum = ((base + 56) as *const u16).read_unaligned() as u64;
        if phentsize < 56 || phnum > 256 {
            return;
        }
        for i in 0..phnum {
            let ph = base + phoff + i * phentsize;
            if (ph as *const u32).read_unaligned() != 1 {
                continue; // not PT_LOAD
            }
            let vaddr = ((ph + 16) as *const u64).read_unaligned();
            let memsz = ((ph + 40) as *const u64).read_unaligned();
            let a = (base + vaddr) & !4095;
            let b = (base + vaddr + memsz + 4095) & !4095;
            f(a, b);
        }
    }
}

/// glibc's non-main arenas live in heaps of this size, aligned to it.
const ARENA_HEAP: u64 = 64 << 20;

/// Stack pointers and argument registers of the other threads, from
/// `/proc/self/task/TID/syscall`; calls `sp(value)` and `reg(value)`.
fn other_threads(me: u32, buf: &mut [u8], mut sp: impl FnMut(u64), mut reg: impl FnMut(u64)) {
    // SAFETY: raw open of a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open,
            c"/proc/self/task".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let mut ents = [0u8; 4096];
    loop {
        // SAFETY: ents is writable for its length; fd is ours.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, ents.as_mut_ptr(), ents.len()) };
        if n <= 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 < n as usize {
            let reclen = u16::from_le_bytes([ents[off + 16], ents[off + 17]]) as usize;
            if reclen == 0 {
                break;
            }
            let name = &ents[off + 19..(off + reclen).min(n as usize)];
            let name = &name[..name.iter().position(|&c| c == 0).unwrap_or(name.len())];
            off += reclen;
            let Some(tid) = sys::parse_u64(name) else {
                continue;
            };
            if tid == me as u64 {
                continue;
            }
            let mut path = sys::Fmt::<64>::new();
            path.s(b"/proc/self/task/").s(name).s(b"/syscall\0");
            let Ok(p) = core::ffi::CStr::from_bytes_with_nul(path.bytes()) else {
                continue;
            };
            // A thread that is running has no stack pointer to read: give
            // it a few chances to block (most threads at exit wait).
            let mut got = 0;
            for _ in 0..8 {
                got = read_file(p, buf);
                if buf[..got]
                    .first()
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'-')
                {
                    break;
                }
                got = 0;
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::syscall(libc::SYS_sched_yield) };
            }
            if got == 0 {
                continue; // still running: its stack mapping is scanned whole
            }
            let text = &buf[..got];
            let mut words = [0u64; 9];
            let mut k = 0;
            for w in text
                .split(|&c| c == b' ' || c == b'\n')
                .filter(|w| !w.is_empty())
                .skip(1)
            {
                if k < words.len()
                    && let Some(v) = hex(w)
                {
                    words[k] = v;
                    k += 1;
                }
            }
            // "nr a1..a6 sp pc" or "-1 sp pc".
            if k >= 2 {
                sp(words[k - 2]);
                for &v in &words[..k - 2] {
                    reg(v);
                }
            }
        }
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

/// Callee-saved registers of this thread (roots: values the exit path's
/// callers may hold only there).
#[inline(always)]
fn callee_saved() -> [u64; 6] {
    let (a, b, c, d, e, f): (u64, u64, u64, u64, u64, u64);
    // SAFETY: register moves only; no memory access, no flags.
    unsafe {
        core::arch::asm!(
            "mov {a}, rbx",
            "mov {b}, rbp",
            "mov {c}, r12",
            "mov {d}, r13",
            "mov {e}, r14",
            "mov {f}, r15",
            a = out(reg) a,
            b = out(reg) b,
            c = out(reg) c,
            d = out(reg) d,
            e = out(reg) e,
            f = out(reg) f,
            options(nomem, nostack, preserves_flags)
        );
    }
    [a, b, c, d, e, f]
}

/// Runs the check. `sp` is this thread's stack pointer in the exit
/// handler: the live frames are above it. Call with the thread busy and no
/// agent lock held.
#[inline(never)]
pub fn check(sp: u64) -> Outcome {
    let regs = callee_saved();
    let t0 = sys::mono_ns();
    // Blocks, from the table (a margin for threads still allocating).
    let mut n = 0usize;
    live::for_each_block(|_, _| n += 1);
    let Some(mut blocks) = Buf::<Block>::new(n + n / 8 + 1024) else {
        return Outcome::failed(b"leak check: no memory for the block list");
    };
    let mut dropped = false;
    live::for_each_block(|addr, l| {
        let b = Block {
            start: addr as u64,
            end: addr as u64 + l.bytes.max(1),
            stack: l.stack,
            mark: UNREACHED,
        };
        dropped |= !blocks.push(b);
    });
    blocks.as_mut_slice().sort_unstable_by_key(|b| b.start);
    let Some(work) = Buf::<u32>::new(blocks.len) else {
        return Outcome::failed(b"leak check: no memory for the worklist");
    };
    let Some(chunk) = Buf::<u8>::new(64 * 1024) else {
        return Outcome::failed(b"leak check: no memory for the read buffer");
    };
    // Can this process read itself? (A seccomp filter may forbid it.)
    {
        let probe = [0u8; 8];
        let mut out = [0u8; 8];
        if read(probe.as_ptr() as u64, &mut out) != 8 {
            return Outcome::failed(
                b"leak check: process_vm_readv on this process failed (seccomp?); no check",
            );
        }
    }
    let Some(mut text) = Buf::<u8>::new(32 << 20) else {
        return Outcome::failed(b"leak check: no memory for /proc/self/maps");
    };
    let got = read_file(c"/proc/self/maps", {
        // SAFETY: the mapping holds cap bytes.
        unsafe { core::slice::from_raw_parts_mut(text.p, text.cap) }
    });
    text.len = got;
    if got == 0 {
        return Outcome::failed(b"leak check: /proc/self/maps unreadable; no check");
    }
    // What is not a root: malloc's memory, the agent's, the check's.
    let Some(mut skip) = Buf::<(u64, u64)>::new(blocks.len + 4096) else {
        return Outcome::failed(b"leak check: no memory for the exclusions");
    };
    for b in [
        blocks.range(),
        work.range(),
        chunk.range(),
        text.range(),
        skip.range(),
    ] {
        skip.push(b);
    }
    own_segments(|a, b| {
        skip.push((a, b));
    });
    live::table_ranges(|a, len| {
        skip.push((a as u64, (a + len) as u64));
    });
    // Maps: [heap] (the main arena) is skipped; the rest are candidate roots.
    let Some(mut maps) = Buf::<Map>::new(1 << 16) else {
        return Outcome::failed(b"leak check: no memory for the mappings");
    };
    for line in text.as_slice().split(|&c| c == b'\n') {
        if let Some(m) = parse_map(line) {
            if m.heap {
                skip.push((m.start, m.end));
            } else {
                maps.push(m);
            }
        }
    }
    maps.as_mut_slice().sort_unstable_by_key(|m| m.start);
    // The rest of malloc's memory: for a block outside [heap], the pages of
    // its own mapping (a chunk glibc mmapped for it), or else the part of
    // its mapping inside the 64 MiB-aligned heap of a non-main arena.
    let mut last: (u64, u64) = (0, 0);
    for b in blocks.as_slice() {
        let ms = maps.as_slice();
        let i = ms.partition_point(|m| m.start <= b.start);
        if i == 0 || b.start >= ms[i - 1].end {
            continue; // in [heap], or in no mapping a root could be
        }
        let map = ms[i - 1];
        let mut mapped = false;
        if b.start & 4095 == 16 && b.end - b.start >= 64 * 1024 {
            // Probably a chunk of its own mapping: glibc's size word says.
            let mut w = [0u8; 8];
            mapped = read(b.start - 8, &mut w) == 8 && u64::from_le_bytes(w) & 2 != 0;
        }
        let r = if mapped {
            (b.start & !4095, (b.end + 4095) & !4095)
        } else {
            let heap = b.start & !(ARENA_HEAP - 1);
            (heap.max(map.start), (heap + ARENA_HEAP).min(map.end))
        };
        if r != last {
            if !skip.push(r) {
                return Outcome::failed(b"leak check: too many allocator ranges");
            }
            last = r;
        }
    }
    skip.as_mut_slice().sort_unstable_by_key(|r| r.0);
    // Stack pointers: this thread's, then the others'.
    let Some(mut sps) = Buf::<u64>::new(1 << 14) else {
        return Outcome::failed(b"leak check: no memory for the threads");
    };
    let Some(mut reg_roots) = Buf::<u64>::new(1 << 16) else {
        return Outcome::failed(b"leak check: no memory for the threads");
    };
    sps.push(sp);
    for r in regs {
        reg_roots.push(r);
    }
    {
        let mut sbuf = [0u8; 512];
        other_threads(
            sys::gettid(),
            &mut sbuf,
            |s| {
                sps.push(s);
            },
            |r| {
                reg_roots.push(r);
            },
        );
    }
    let (lo, hi) = match (blocks.as_slice().first(), blocks.as_slice().last()) {
        (Some(f), Some(_)) => (
            f.start,
            blocks.as_slice().iter().map(|b| b.end).max().unwrap_or(0),
        ),
        _ => (0, 0),
    };
    let block_bytes: u64 = blocks.as_slice().iter().map(|b| b.end - b.start).sum();
    let nblocks = blocks.len;
    let mut m = Marker {
        blocks: blocks.as_mut_slice(),
        lo,
        hi,
        work,
        chunk,
        scanned: 0,
    };
    for &r in reg_roots.as_slice() {
        m.word(r);
    }
    // Roots: each candidate mapping less the skipped ranges; a stack from
    // its thread's stack pointer up.
    let skips = skip.as_slice();
    for map in maps.as_slice() {
        let mut a = map.start;
        if let Some(&s) = sps
            .as_slice()
            .iter()
            .find(|&&s| s >= map.start && s < map.end)
        {
            a = s & !7;
        }
        let b = map.end;
        // The skipped ranges that overlap [a, b), in order.
        let mut k = skips.partition_point(|r| r.1 <= a);
        let mut cur = a;
        while cur < b {
            // Skip ranges starting at or before cur.
            while k < skips.len() && skips[k].1 <= cur {
                k += 1;
            }
            if k < skips.len() && skips[k].0 <= cur {
                cur = skips[k].1.max(cur);
                continue;
            }
            let stop = if k < skips.len() {
                skips[k].0.min(b)
            } else {
                b
            };
            m.root(cur, stop);
            m.drain();
            cur = stop;
        }
    }
    let root_bytes = m.scanned;
    // Lost blocks: those pointed to by another lost block are indirect.
    for i in 0..m.blocks.len() {
        if m.blocks[i].mark == REACHED {
            continue;
        }
        let (a, b) = (m.blocks[i].start, m.blocks[i].end);
        m.words(a, b, |m, v| {
            if let Some(j) = m.find(v)
                && j != i
                && m.blocks[j].mark == UNREACHED
            {
                m.blocks[j].mark = POINTED;
            }
        });
    }
    let blocks = m.blocks;
    blocks.sort_unstable_by_key(|b| (b.stack, b.mark));
    let mut entries: Vec<(u32, u8, u64, u64)> = Vec::new();
    for b in blocks.iter() {
        let class = match b.mark {
            REACHED => leak_class::REACHABLE,
            POINTED => leak_class::INDIRECT,
            _ => leak_class::DIRECT,
        };
        match entries.last_mut() {
            Some(e) if e.0 == b.stack && e.1 == class => {
                e.2 += 1;
                e.3 += b.end - b.start;
            }
            _ => entries.push((b.stack, class, 1, b.end - b.start)),
        }
    }
    Outcome {
        head: LeakScanHead {
            status: 0,
            blocks: nblocks as u64,
            block_bytes,
            root_bytes,
            elapsed_us: (sys::mono_ns() - t0) / 1000,
        },
        entries,
        why: if dropped {
            b"leak check: blocks allocated while the list was taken were left out"
        } else {
            b""
        },
    }
}

/// Reads `OFFHEAP_LEAKS` (from `init`).
pub fn configure() {
    ON.store(sys::env_bool(c"OFFHEAP_LEAKS", false), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let m = parse_map(b"7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(
            (m.start, m.end, m.heap),
            (0x7f0000000000, 0x7f0000001000, false)
        );
        assert!(
            parse_map(b"55550000-55560000 rw-p 00000000 00:00 0          [heap]")
                .unwrap()
                .heap
        );
        assert!(parse_map(b"7f00-7f10 r--p 00000000 08:01 123 /usr/lib/libc.so.6").is_none());
        assert!(parse_map(b"7f00-7f10 rw-p 00000000 00:00 0 [vvar]").is_none());
        assert!(parse_map(b"7f00-7f10 rw-s 00000000 00:05 9 /dev/dri/card0").is_none());
        assert!(parse_map(b"7f00-7f10 rw-p 00001000 08:01 123 /opt/my lib.so").is_some());
        assert!(parse_map(b"garbage").is_none());
        assert_eq!(hex(b"0x7ffd1234"), Some(0x7ffd1234));
    }

    #[test]
    fn reading_an_unmapped_page_returns_what_was_readable() {
        let p = sys::map_anon(8192);
        assert!(!p.is_null());
        // SAFETY: p is an 8 KiB mapping of ours; p + 4096 is its second page.
        sys::unmap(unsafe { p.add(4096) }, 4096);
        let mut out = [0u8; 8192];
        assert_eq!(read(p as u64, &mut out), 4096);
        assert_eq!(read(p as u64 + 4096, &mut out[..16]), 0);
        sys::unmap(p, 4096);
    }
}
