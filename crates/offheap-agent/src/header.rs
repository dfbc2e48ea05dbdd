//! Exact mode's allocation headers.
//!
//! With `--exact` every block the malloc-family hooks hand out carries 16
//! bytes in front of it: the requested size, the offset back to the block
//! glibc returned, the id of the allocating stack and the epoch it was born
//! in. `free` reads them from the line glibc's own `free` is about to read
//! (the chunk header sits just below), so matching a free to its allocation
//! needs no table, no lock and no line that another core wrote. The address
//! table it replaces cost exact mode about a sixth of a busy node process's
//! throughput (docs/NOTES.md), and 64-128 bytes per live allocation against
//! 16 here.
//!
//! The mode is decided once, by the first hook call of the process, before
//! any block leaves the hooks, and never changes: every block handed out is
//! then headered, including those allocated before the constructor ran, while
//! the agent itself is busy, or after recording stopped (their stack is
//! `NO_STACK`). That needs the environment before libc has set `environ`,
//! so the decision reads `/proc/self/environ` with raw system calls.
//! Anything that prevents it (no `/proc`) leaves the mode off: exact mode
//! then falls back to the address table.
//!
//! The one assumption, the same any preloaded allocator (jemalloc,
//! tcmalloc) makes: every block the process frees came from these hooks.
//! glibc routes its own allocations through the interposed symbols, the
//! agent drops `RTLD_DEEPBIND` from `dlopen` so no library binds past them,
//! and the agent's own memory goes through `__libc_*` on both sides.

use crate::sys::{__libc_free, parse_u64};
use core::sync::atomic::{AtomicU8, Ordering};
use libc::c_void;

/// Header bytes in front of a block with the default alignment.
pub const HDR: usize = 16;
/// log2 of `HDR`: the offset of a block with the default alignment.
pub const HDR_SHIFT: u32 = 4;
/// The stack of a block allocated while nothing was recorded.
pub const NO_STACK: u32 = u32::MAX;
/// The countdown of every thread in header mode: negative, so that every
/// `malloc` leaves the one-branch fast path (which hands out plain blocks)
/// for the header path, whatever the size.
pub const COUNTDOWN: i64 = i64::MIN / 2;

const SIZE_MASK: u64 = (1 << 56) - 1;

const UNDECIDED: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// What the 16 bytes in front of a block say.
#[derive(Clone, Copy)]
pub struct Header {
    /// Bytes requested.
    pub size: usize,
    /// log2 of the distance from the block glibc returned to the caller's.
    pub shift: u32,
    pub stack: u32,
    pub epoch: u32,
}

impl Header {
    /// The block glibc returned, for the caller's block `p`.
    #[inline(always)]
    pub fn base(&self, p: usize) -> usize {
        p - (1usize << self.shift)
    }

    /// Counts the block as no longer live on its stack (if it has one).
    #[inline(always)]
    pub fn settle(&self) {
        if self.stack != NO_STACK {
            crate::stacks::sub_born(self.stack, self.size as u64, self.epoch);
        }
    }
}

/// Header mode, decided on the first call (allocation hooks only: a block
/// can reach `free` only after an allocation hook decided).
#[inline(always)]
pub fn on() -> bool {
    match MODE.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => decide(),
    }
}

/// Header mode as decided so far (false while undecided: no headered
/// block exists yet).
#[inline(always)]
pub fn is_on() -> bool {
    MODE.load(Ordering::Relaxed) == ON
}

#[cold]
#[inline(never)]
fn decide() -> bool {
    let on = environment_asks_for_headers();
    if on {
        // Every free must reach the header path.
        crate::live::saturate_filter();
    }
    // Two threads deciding at once read the same file and agree.
    MODE.store(if on { ON } else { OFF }, Ordering::Relaxed);
    on
}

/// Reads the header of the caller's block `p`.
///
/// # Safety
/// `p` must be a block handed out in header mode, not yet freed.
#[inline(always)]
pub unsafe fn read(p: usize) -> Header {
    // SAFETY: per the contract, the 16 bytes below p are our header.
    let (w0, w1) = unsafe {
        (
            ((p - 16) as *const u64).read(),
            ((p - 8) as *const u64).read(),
        )
    };
    Header {
        size: (w0 & SIZE_MASK) as usize,
        shift: (w0 >> 56) as u32,
        stack: w1 as u32,
        epoch: (w1 >> 32) as u32,
    }
}

/// Writes the header of block `base` (from glibc) and returns the caller's
/// block, `1 << shift` bytes in.
///
/// # Safety
/// `base` must be a live glibc block of at least `(1 << shift) + size`
/// bytes, `shift >= HDR_SHIFT`.
#[inline(always)]
pub unsafe fn write(
    base: *mut c_void,
    shift: u32,
    size: usize,
    stack: u32,
    epoch: u32,
) -> *mut c_void {
    let p = base as usize + (1usize << shift);
    // SAFETY: p - 16 >= base, and the 16 bytes below p lie in the block.
    unsafe {
        ((p - 16) as *mut u64).write((size as u64 & SIZE_MASK) | ((shift as u64) << 56));
        ((p - 8) as *mut u64).write(stack as u64 | ((epoch as u64) << 32));
    }
    p as *mut c_void
}

/// Frees the caller's block `p` and settles its stack's counters.
///
/// # Safety
/// `p` must be a block handed out in header mode, not yet freed.
#[inline(always)]
pub unsafe fn free(p: *mut c_void) {
    // SAFETY: per the contract.
    let h = unsafe { read(p as usize) };
    h.settle();
    // SAFETY: the block glibc returned for p, freed once.
    unsafe { __libc_free(h.base(p as usize) as *mut c_void) }
}

/// `OFFHEAP_DIR` set (non-empty, shorter than 4000 bytes) and exact mode
/// asked for (`OFFHEAP_EXACT`, or `OFFHEAP_SAMPLE_INTERVAL` of 0 or 1), the
/// same tests `init` applies, unless `OFFHEAP_HEADERS=0` keeps the address
/// table. The first occurrence of a name counts, as for `getenv`.
fn environment_asks_for_headers() -> bool {
    let mut env = EnvScan::default();
    if !read_environ(|entry, len| env.entry(entry, len)) {
        return false;
    }
    env.dir_ok == Some(true)
        && (env.exact == Some(true) || env.interval_one == Some(true))
        && env.headers != Some(false)
        && env.leaks != Some(true)
}

#[derive(Default)]
struct EnvScan {
    dir_ok: Option<bool>,
    exact: Option<bool>,
    interval_one: Option<bool>,
    headers: Option<bool>,
    /// `OFFHEAP_LEAKS=1`: the leak check at exit needs the address table.
    leaks: Option<bool>,
}

fn boolean(v: &[u8]) -> Option<bool> {
    match v {
        b"1" | b"true" | b"yes" => Some(true),
        b"0" | b"false" | b"no" => Some(false),
        _ => None,
    }
}

impl EnvScan {
    /// One `NAME=value` entry: its first bytes (up to `PREFIX`) and its
    /// full length.
    fn entry(&mut self, e: &[u8], len: usize) {
        let first = |slot: &mut Option<bool>, v: Option<bool>| {
            if slot.is_none() {
                *slot = Some(v.unwrap_or(false));
            }
        };
        if let Some(v) = e.strip_prefix(b"OFFHEAP_DIR=") {
            first(&mut self.dir_ok, Some(!v.is_empty() && len - 12 < 4000));
        } else if let Some(v) = e.strip_prefix(b"OFFHEAP_EXACT=") {
            first(&mut self.exact, boolean(v));
        } else if let Some(v) = e.strip_prefix(b"OFFHEAP_SAMPLE_INTERVAL=") {
            first(&mut self.interval_one, parse_u64(v).map(|n| n <= 1));
        } else if let Some(v) = e.strip_prefix(b"OFFHEAP_LEAKS=") {
            first(&mut self.leaks, boolean(v));
        } else if let Some(v) = e.strip_prefix(b"OFFHEAP_HEADERS=") {
            // Anything but an explicit "no" keeps the default (on).
            if self.headers.is_none() {
                self.headers = Some(boolean(v) != Some(false));
            }
        }
    }
}

/// Bytes of each entry passed to the callback: enough for every name
/// above and a short value.
const PREFIX: usize = 64;

/// Calls `f(first bytes, full length)` for each entry of
/// `/proc/self/environ`, with raw system calls (no allocation, no libc
/// state). False if the file cannot be read.
fn read_environ(mut f: impl FnMut(&[u8], usize)) -> bool {
    // SAFETY: a NUL-terminated path; raw open has no other preconditions.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open,
            c"/proc/self/environ".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut entry = [0u8; PREFIX];
    let (mut kept, mut len) = (0usize, 0usize);
    let ok = loop {
        // SAFETY: buf is writable for its length; fd is ours.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            if crate::sys::errno() == libc::EINTR {
                continue;
            }
            break false;
        }
        if n == 0 {
            break true;
        }
        for &c in &buf[..n as usize] {
            if c == 0 {
                f(&entry[..kept], len);
                kept = 0;
                len = 0;
            } else {
                if kept < PREFIX {
                    entry[kept] = c;
                    kept += 1;
                }
                len += 1;
            }
        }
    };
    if len > 0 {
        f(&entry[..kept], len);
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(entries: &[&str]) -> bool {
        let mut e = EnvScan::default();
        for s in entries {
            let b = s.as_bytes();
            e.entry(&b[..b.len().min(PREFIX)], b.len());
        }
        e.dir_ok == Some(true)
            && (e.exact == Some(true) || e.interval_one == Some(true))
            && e.headers != Some(false)
            && e.leaks != Some(true)
    }

    #[test]
    fn the_environment_decides_like_init() {
        assert!(scan(&["OFFHEAP_DIR=/tmp/x", "OFFHEAP_EXACT=1"]));
        assert!(scan(&["OFFHEAP_EXACT=yes", "OFFHEAP_DIR=/tmp/x"]));
        assert!(scan(&["OFFHEAP_DIR=/tmp/x", "OFFHEAP_SAMPLE_INTERVAL=1"]));
        assert!(scan(&["OFFHEAP_DIR=/tmp/x", "OFFHEAP_SAMPLE_INTERVAL=0"]));
        assert!(!scan(&["OFFHEAP_DIR=/tmp/x", "OFFHEAP_SAMPLE_INTERVAL=2"]));
        assert!(!scan(&["OFFHEAP_DIR=/tmp/x", "OFFHEAP_EXACT=0"]));
        assert!(!scan(&["OFFHEAP_DIR=", "OFFHEAP_EXACT=1"]));
        assert!(!scan(&["OFFHEAP_EXACT=1"]));
        assert!(!scan(&[
            "OFFHEAP_DIR=/tmp/x",
            "OFFHEAP_EXACT=1",
            "OFFHEAP_HEADERS=0"
        ]));
        assert!(scan(&[
            "OFFHEAP_DIR=/tmp/x",
            "OFFHEAP_EXACT=1",
            "OFFHEAP_HEADERS=1"
        ]));
        // The first occurrence counts, as for getenv.
        assert!(!scan(&[
            "OFFHEAP_EXACT=0",
            "OFFHEAP_EXACT=1",
            "OFFHEAP_DIR=/tmp/x"
        ]));
        // The leak check needs the address table.
        assert!(!scan(&[
            "OFFHEAP_DIR=/tmp/x",
            "OFFHEAP_EXACT=1",
            "OFFHEAP_LEAKS=1"
        ]));
        let long = format!("OFFHEAP_DIR=/{}", "d".repeat(4000));
        assert!(!scan(&[&long, "OFFHEAP_EXACT=1"]));
    }

    #[test]
    fn this_process_environment_is_readable() {
        let mut n = 0;
        assert!(read_environ(|_, _| n += 1));
        assert!(n > 0);
    }
}
