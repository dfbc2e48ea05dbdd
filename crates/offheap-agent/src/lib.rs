//! The native agent: an `LD_PRELOAD` cdylib that samples allocations by
//! bytes (Poisson, unbiased weights), unwinds in-process with framehop and
//! appends durable snapshots to `$OFFHEAP_DIR/native-PID.bin`.
//!
//! Architecture invariants:
//! - Never allocates through the hooked path: the agent's own allocations go
//!   through a private `#[global_allocator]` that calls glibc's `__libc_*`.
//! - The hot path is one TLS subtract-and-branch before a tail jump to glibc
//!   (malloc) or one bit test of a 32 KiB prefilter (free). Everything else
//!   is behind a sample.
//! - No agent lock is held while calling into the dynamic loader.
//! - Never symbolizes, never panics across FFI (panic = abort, no unwraps
//!   on hook paths), keeps working as a pass-through after exit.
//!
//! Environment (set by `offheap run`): see `docs/FORMAT-native.md`.

#![allow(clippy::missing_safety_doc)]

mod header;
mod leaks;
mod live;
mod modules;
mod origin;
mod stacks;
mod stream;
mod sys;
mod tls;
mod unwind;
mod writer;

use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use libc::{c_char, c_int, c_void, off_t, size_t};
use offheap_format::native::AllocKind;
use sys::{
    __libc_calloc, __libc_free, __libc_malloc, __libc_memalign, __libc_pvalloc, __libc_realloc,
    __libc_valloc,
};
use tls::{TLS, Tls};

// ---------------------------------------------------------------------------
// The agent's own allocator
// ---------------------------------------------------------------------------

struct LibcAlloc;

const MIN_ALIGN: usize = 16;

// SAFETY: forwards to glibc's allocator, which satisfies GlobalAlloc's
// contract for the alignments we pass it.
unsafe impl core::alloc::GlobalAlloc for LibcAlloc {
    unsafe fn alloc(&self, l: core::alloc::Layout) -> *mut u8 {
        // SAFETY: plain calls into glibc's allocator.
        unsafe {
            if l.align() <= MIN_ALIGN {
                __libc_malloc(l.size()) as *mut u8
            } else {
                __libc_memalign(l.align(), l.size()) as *mut u8
            }
        }
    }
    unsafe fn alloc_zeroed(&self, l: core::alloc::Layout) -> *mut u8 {
        // SAFETY: as above; memalign'd memory is zeroed by hand.
        unsafe {
            if l.align() <= MIN_ALIGN {
                __libc_calloc(1, l.size()) as *mut u8
            } else {
                let p = __libc_memalign(l.align(), l.size()) as *mut u8;
                if !p.is_null() {
                    core::ptr::write_bytes(p, 0, l.size());
                }
                p
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, _l: core::alloc::Layout) {
        // SAFETY: p came from this allocator.
        unsafe { __libc_free(p as *mut c_void) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: core::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: p came from this allocator with layout l.
        unsafe {
            if l.align() <= MIN_ALIGN {
                __libc_realloc(p as *mut c_void, new) as *mut u8
            } else {
                let q = __libc_memalign(l.align(), new) as *mut u8;
                if !q.is_null() {
                    core::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                    __libc_free(p as *mut c_void);
                }
                q
            }
        }
    }
}

#[global_allocator]
static GLOBAL: LibcAlloc = LibcAlloc;

// ---------------------------------------------------------------------------
// Configuration and state
// ---------------------------------------------------------------------------

pub(crate) const UNINIT: u8 = 0;
pub(crate) const INITIALIZING: u8 = 1;
pub(crate) const ENABLED: u8 = 2;
pub(crate) const DISABLED: u8 = 3;

pub(crate) static STATE: AtomicU8 = AtomicU8::new(UNINIT);
pub(crate) static PID: AtomicU32 = AtomicU32::new(0);
pub(crate) static PPID: AtomicU32 = AtomicU32::new(0);
pub(crate) static START_MONO: AtomicU64 = AtomicU64::new(0);

pub(crate) struct Config {
    pub dir: [u8; 4096],
    pub dir_len: usize,
    pub sample_interval: u64,
    pub exact: bool,
    pub interval_ms: u64,
    pub snapshot_bytes: u64,
    pub max_depth: usize,
    pub min_age_ms: u64,
    pub follow_fork: bool,
    pub follow_exec: bool,
}

pub(crate) static CONFIG: sys::InitCell<Config> = sys::InitCell::new(Config {
    dir: [0; 4096],
    dir_len: 0,
    sample_interval: 524_288,
    exact: false,
    interval_ms: 1000,
    snapshot_bytes: 64 << 20,
    max_depth: 64,
    min_age_ms: 5000,
    follow_fork: true,
    follow_exec: false,
});

pub(crate) type DlopenFn = unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void;
type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;
static REAL_DLOPEN: AtomicU64 = AtomicU64::new(0);
static REAL_DLCLOSE: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------

/// The hot path after a successful allocation of `size` bytes at `p`.
#[inline(always)]
fn on_alloc(p: *mut c_void, size: usize, kind: AllocKind) {
    let t = tls::current();
    let c = t.countdown.get().wrapping_sub(size as i64);
    t.countdown.set(c);
    if c < 0 {
        slow_alloc(t, p as usize, size, kind);
    }
}

#[cold]
#[inline(never)]
fn slow_alloc(t: &Tls, p: usize, size: usize, kind: AllocKind) {
    if t.busy.get() {
        return;
    }
    match STATE.load(Ordering::Acquire) {
        ENABLED => {}
        DISABLED => {
            t.countdown.set(if header::is_on() {
                header::COUNTDOWN
            } else {
                i64::MAX
            });
            return;
        }
        _ => {
            t.countdown.set(exact_countdown());
            return;
        }
    }
    let cfg = CONFIG.get();
    t.busy.set(true);
    let saved = sys::errno();
    let (bytes, count) = if cfg.exact {
        t.countdown.set(exact_countdown());
        (size as u64, 1u64)
    } else if t.rng.get() == 0 {
        // First event on this thread: start its countdown, then apply this allocation.
        let c = t.draw(cfg.sample_interval).wrapping_sub(size as i64);
        t.countdown.set(c);
        if c >= 0 {
            t.busy.set(false);
            return;
        }
        t.countdown.set(t.draw(cfg.sample_interval));
        weights(size, cfg.sample_interval)
    } else {
        t.countdown.set(t.draw(cfg.sample_interval));
        weights(size, cfg.sample_interval)
    };
    if size > 0 {
        writer::maybe_spawn();
        let start = unwind::regs();
        record(t, start, p, size, kind, bytes, count, cfg.max_depth);
    }
    sys::set_errno(saved);
    t.busy.set(false);
}

/// Sampling mode records every anonymous mmap at its own size (weight 1):
/// a program maps rarely, each map is a system call already, and the RSS
/// ledger's `anon_mmap` part is then exact rather than an estimate. The
/// malloc family's countdown is left alone.
#[cold]
#[inline(never)]
fn every_mmap(p: usize, size: usize) {
    let t = tls::current();
    if t.busy.get() || size == 0 || STATE.load(Ordering::Acquire) != ENABLED {
        return;
    }
    let cfg = CONFIG.get();
    t.busy.set(true);
    let saved = sys::errno();
    writer::maybe_spawn();
    let start = unwind::regs();
    record(
        t,
        start,
        p,
        size,
        AllocKind::Mmap,
        size as u64,
        1,
        cfg.max_depth,
    );
    sys::set_errno(saved);
    t.busy.set(false);
}

/// The countdown that sends the next allocation of this thread to the slow
/// path: -1 (so `malloc(0)` goes there too), or header mode's.
fn exact_countdown() -> i64 {
    if header::is_on() {
        header::COUNTDOWN
    } else {
        -1
    }
}

/// Header mode: the stack of an allocation of `size` bytes about to be
/// handed out, counted as allocated (and live), and the current epoch.
/// `NO_STACK` when nothing is recorded (before the constructor, inside the
/// agent, after exit, in a child that is not followed).
#[cold]
#[inline(never)]
fn sample_header(t: &Tls, size: usize) -> (u32, u32) {
    t.countdown.set(header::COUNTDOWN);
    if t.busy.get() || size == 0 || STATE.load(Ordering::Acquire) != ENABLED {
        return (header::NO_STACK, 0);
    }
    t.busy.set(true);
    let saved = sys::errno();
    writer::maybe_spawn();
    let start = unwind::regs();
    let id = stack_of(
        t,
        start,
        AllocKind::Malloc,
        size as u64,
        1,
        CONFIG.get().max_depth,
    )
    .unwrap_or(header::NO_STACK);
    if id != header::NO_STACK {
        writer::count_sample(t, size as u64);
    }
    sys::set_errno(saved);
    t.busy.set(false);
    (id, stacks::EPOCH.load(Ordering::Relaxed))
}

/// Header mode: records the allocation and writes the header of `base`
/// (from glibc, `1 << shift` bytes of header room in front of at least
/// `size` bytes); returns the caller's block.
#[inline(always)]
unsafe fn hand_out(base: *mut c_void, shift: u32, size: usize) -> *mut c_void {
    if base.is_null() {
        return base;
    }
    let (stack, epoch) = sample_header(tls::current(), size);
    // SAFETY: base has room for the header and size bytes (the callers
    // asked glibc for `(1 << shift) + size`).
    unsafe { header::write(base, shift, size, stack, epoch) }
}

/// `size` plus `extra`, or ENOMEM.
fn with_room(size: usize, extra: usize) -> Option<usize> {
    let r = size.checked_add(extra);
    if r.is_none() {
        sys::set_errno(libc::ENOMEM);
    }
    r
}

/// Header mode's malloc.
#[cold]
#[inline(never)]
unsafe fn malloc_header(size: usize) -> *mut c_void {
    let Some(total) = with_room(size, header::HDR) else {
        return core::ptr::null_mut();
    };
    // SAFETY: forwarding to glibc; the header goes in front.
    unsafe { hand_out(__libc_malloc(total), header::HDR_SHIFT, size) }
}

/// Header mode's memalign: the caller's block at the first aligned address
/// past the header, `align` (at least 16) bytes into glibc's block.
/// `size` bytes are allocated, `counted` of them recorded (less for
/// pvalloc, which rounds the size up).
#[cold]
#[inline(never)]
unsafe fn memalign_header(align: usize, size: usize, counted: usize) -> *mut c_void {
    // glibc rounds an alignment that is not a power of two up to one.
    let Some(a) = align.max(header::HDR).checked_next_power_of_two() else {
        sys::set_errno(libc::EINVAL);
        return core::ptr::null_mut();
    };
    let Some(total) = with_room(size, a) else {
        return core::ptr::null_mut();
    };
    // SAFETY: forwarding to glibc; the header goes in the first `a` bytes.
    unsafe { hand_out(__libc_memalign(a, total), a.trailing_zeros(), counted) }
}

/// Header mode's realloc (`p` non-null, handed out in header mode).
#[cold]
#[inline(never)]
unsafe fn realloc_header(p: *mut c_void, size: usize) -> *mut c_void {
    if size == 0 {
        // glibc: realloc(p, 0) frees p and returns NULL.
        // SAFETY: p is a live headered block.
        unsafe { header::free(p) };
        return core::ptr::null_mut();
    }
    // SAFETY: p is a live headered block.
    let h = unsafe { header::read(p as usize) };
    if h.shift == header::HDR_SHIFT {
        let Some(total) = with_room(size, header::HDR) else {
            return core::ptr::null_mut();
        };
        // SAFETY: forwarding glibc's own block; the header moves with the data.
        let q = unsafe { __libc_realloc(h.base(p as usize) as *mut c_void, total) };
        if q.is_null() {
            return q; // p is untouched
        }
        h.settle();
        // SAFETY: q has room for the header and size bytes.
        return unsafe { hand_out(q, header::HDR_SHIFT, size) };
    }
    // An aligned block: a new block with the plain offset, and a copy of
    // what the old one could hold.
    // SAFETY: a fresh allocation.
    let q = unsafe { malloc_header(size) };
    if !q.is_null() {
        // SAFETY: p is live with at least `usable_header(p)` bytes; q has size.
        unsafe {
            let n = usable_header(p, h).min(size);
            core::ptr::copy_nonoverlapping(p as *const u8, q as *mut u8, n);
            header::free(p);
        }
    }
    q
}

/// Usable bytes of a headered block.
unsafe fn usable_header(p: *mut c_void, h: header::Header) -> usize {
    // SAFETY: the block glibc returned for p.
    let u = unsafe { real_usable_size(h.base(p as usize) as *mut c_void) };
    u.saturating_sub(1usize << h.shift)
}

type UsableFn = unsafe extern "C" fn(*mut c_void) -> size_t;
static REAL_USABLE: AtomicU64 = AtomicU64::new(0);

/// glibc's `malloc_usable_size` (found by the constructor). Before that,
/// glibc's own formula on the chunk's size word: the chunk size less its
/// size word, less the previous-size word too for a chunk of its own
/// mapping.
unsafe fn real_usable_size(p: *mut c_void) -> size_t {
    let f = REAL_USABLE.load(Ordering::Relaxed);
    if f != 0 {
        // SAFETY: the value came from dlsym for "malloc_usable_size".
        return unsafe { core::mem::transmute::<usize, UsableFn>(f as usize)(p) };
    }
    // SAFETY: a live glibc block starts 8 bytes after its chunk's size word.
    let sz = unsafe { ((p as usize - 8) as *const usize).read() };
    let chunk = sz & !7;
    if sz & 2 != 0 {
        chunk.saturating_sub(16)
    } else {
        chunk.saturating_sub(8)
    }
}

/// Unbiased weights of a sampled allocation of `size` bytes with mean
/// sampling interval `period`: the sample stands for 1/P(sampled) events.
fn weights(size: usize, period: u64) -> (u64, u64) {
    let s = size as f64;
    let p = 1.0 - (-s / period as f64).exp();
    if p <= 0.0 {
        return (size as u64, 1);
    }
    let count = 1.0 / p;
    ((s * count).round() as u64, (count.round() as u64).max(1))
}

#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn record(
    t: &Tls,
    start: (u64, u64, u64),
    p: usize,
    size: usize,
    kind: AllocKind,
    bytes: u64,
    count: u64,
    max_depth: usize,
) {
    if kind == AllocKind::Malloc {
        live::prefetch(p);
    }
    let Some(id) = stack_of(t, start, kind, bytes, count, max_depth) else {
        return;
    };
    let born_ms = sys::mono_ms().saturating_sub(START_MONO.load(Ordering::Relaxed)) as u32;
    match kind {
        AllocKind::Malloc => live::insert(
            p,
            live::Live {
                stack: id,
                born_ms,
                bytes,
                count,
            },
        ),
        AllocKind::Mmap => live::add_region(live::Region {
            start: p,
            end: p + size,
            stack: id,
            born_ms,
            ratio: bytes as f64 / size as f64,
            count,
        }),
    }
    writer::count_sample(t, bytes);
}

/// Unwinds from `start`, interns the stack and counts `bytes` and `count`
/// as allocated on it; `None` (counted as dropped) if the table is full.
#[inline(always)]
pub(crate) fn stack_of(
    t: &Tls,
    start: (u64, u64, u64),
    kind: AllocKind,
    bytes: u64,
    count: u64,
    max_depth: usize,
) -> Option<u32> {
    // Not zeroed: 2 KiB of memset per sample would cost more than the rest.
    let mut frames = [core::mem::MaybeUninit::<u64>::uninit(); unwind::MAX_FRAMES];
    let (n, truncated, fh) = unwind::capture(t, start, &mut frames, max_depth);
    // SAFETY: capture initialised frames[..n] (n <= MAX_FRAMES).
    let frames = unsafe { core::slice::from_raw_parts(frames.as_ptr() as *const u64, n) };
    let id = stacks::intern_add(t, fh, kind, truncated, frames, bytes, count);
    if id.is_none() {
        writer::DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    id
}

/// The free side: drop the record of a sampled pointer before the memory
/// goes back to the allocator (so the address cannot be reused meanwhile).
///
/// The common case is one bit test and a tail jump to glibc: the sampled
/// case is a separate function that ends in `__libc_free` itself, so the
/// fast path saves no registers.
#[cold]
#[inline(never)]
unsafe fn free_tracked(p: *mut c_void) {
    if header::is_on() {
        // SAFETY: in header mode every block reaching free is headered.
        return unsafe { header::free(p) };
    }
    live::prefetch(p as usize);
    guarded(|| {
        if let Some(l) = live::remove(p as usize) {
            stacks::sub(l.stack, l.bytes, l.count);
        }
    });
    // SAFETY: forwarding the caller's pointer to glibc.
    unsafe { __libc_free(p) }
}

/// Runs `f` (which takes agent locks) with this thread marked busy, so an
/// exit path reached from a signal handler on this thread does not wait for
/// a lock the interrupted code holds.
#[inline]
fn guarded<R>(f: impl FnOnce() -> R) -> R {
    let t = tls::current();
    let was = t.busy.replace(true);
    let r = f();
    t.busy.set(was);
    r
}

// ---------------------------------------------------------------------------
// malloc family
// ---------------------------------------------------------------------------

#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc(size: size_t) -> *mut c_void {
    // The countdown is charged before the allocation (its size is known),
    // so the common case ends in a tail jump to glibc: no registers saved,
    // nothing to do after. A failed allocation still counts toward the
    // next sample, which changes nothing measurable.
    let Some(t) = tls::fast() else {
        // SAFETY: same contract.
        return unsafe { malloc_dynamic_tls(size) };
    };
    let c = t.countdown.get().wrapping_sub(size as i64);
    t.countdown.set(c);
    if c >= 0 {
        // SAFETY: forwarding to glibc.
        return unsafe { __libc_malloc(size) };
    }
    // SAFETY: as above.
    unsafe { malloc_sampled(t, size) }
}

/// `malloc` without the static-TLS fast path (the agent was not preloaded).
#[cold]
#[inline(never)]
unsafe fn malloc_dynamic_tls(size: size_t) -> *mut c_void {
    if header::on() {
        // SAFETY: same contract.
        return unsafe { malloc_header(size) };
    }
    // SAFETY: forwarding to glibc.
    let p = unsafe { __libc_malloc(size) };
    if !p.is_null() {
        on_alloc(p, size, AllocKind::Malloc);
    }
    p
}

/// `malloc` whose allocation ends this thread's countdown (already
/// charged): allocate, then take the sample.
#[cold]
#[inline(never)]
unsafe fn malloc_sampled(t: &Tls, size: size_t) -> *mut c_void {
    if header::on() {
        // SAFETY: same contract.
        return unsafe { malloc_header(size) };
    }
    // SAFETY: forwarding to glibc.
    let p = unsafe { __libc_malloc(size) };
    if !p.is_null() {
        slow_alloc(t, p as usize, size, AllocKind::Malloc);
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if p.is_null() {
        return;
    }
    if live::maybe_tracked(p as usize) {
        // SAFETY: the caller's pointer, freed once.
        unsafe { free_tracked(p) }
    } else {
        // SAFETY: forwarding the caller's pointer to glibc.
        unsafe { __libc_free(p) }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn calloc(n: size_t, size: size_t) -> *mut c_void {
    if header::on() {
        let Some(total) = n.checked_mul(size).and_then(|b| b.checked_add(header::HDR)) else {
            sys::set_errno(libc::ENOMEM);
            return core::ptr::null_mut();
        };
        // SAFETY: forwarding to glibc; the header goes in front.
        return unsafe {
            hand_out(
                __libc_calloc(1, total),
                header::HDR_SHIFT,
                total - header::HDR,
            )
        };
    }
    // SAFETY: forwarding to glibc (which checks the overflow).
    let p = unsafe { __libc_calloc(n, size) };
    if !p.is_null() {
        on_alloc(p, n.saturating_mul(size), AllocKind::Malloc);
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: size_t) -> *mut c_void {
    if p.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return unsafe { malloc(size) };
    }
    if header::is_on() {
        // SAFETY: in header mode every block reaching realloc is headered.
        return unsafe { realloc_header(p, size) };
    }
    let old = if live::maybe_tracked(p as usize) {
        guarded(|| live::remove(p as usize))
    } else {
        None
    };
    // SAFETY: forwarding the caller's pointer to glibc.
    let q = unsafe { __libc_realloc(p, size) };
    if q.is_null() {
        if size != 0 {
            // Failed: the old block is still live, put its record back.
            if let Some(l) = old {
                guarded(|| live::insert(p as usize, l));
            }
            return q;
        }
        if let Some(l) = old {
            stacks::sub(l.stack, l.bytes, l.count);
        }
        return q;
    }
    if let Some(l) = old {
        stacks::sub(l.stack, l.bytes, l.count);
    }
    on_alloc(q, size, AllocKind::Malloc);
    q
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: size_t, size: size_t) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: same contract as realloc.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            sys::set_errno(libc::ENOMEM);
            core::ptr::null_mut()
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn memalign(align: size_t, size: size_t) -> *mut c_void {
    if header::on() {
        // SAFETY: same contract.
        return unsafe { memalign_header(align, size, size) };
    }
    // SAFETY: forwarding to glibc.
    let p = unsafe { __libc_memalign(align, size) };
    if !p.is_null() {
        on_alloc(p, size, AllocKind::Malloc);
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn aligned_alloc(align: size_t, size: size_t) -> *mut c_void {
    // glibc's aligned_alloc is memalign (2.36); keep the same behaviour.
    // SAFETY: same contract as memalign.
    unsafe { memalign(align, size) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    let w = core::mem::size_of::<*mut c_void>();
    if !align.is_multiple_of(w) || !(align / w).is_power_of_two() || align == 0 {
        return libc::EINVAL;
    }
    let saved = sys::errno();
    let headers = header::on();
    // SAFETY: forwarding to glibc (or the header path, same contract).
    let p = unsafe {
        if headers {
            memalign_header(align, size, size)
        } else {
            __libc_memalign(align, size)
        }
    };
    sys::set_errno(saved);
    if p.is_null() {
        return libc::ENOMEM;
    }
    if !headers {
        on_alloc(p, size, AllocKind::Malloc);
    }
    // SAFETY: the caller passes a valid out pointer.
    unsafe { *out = p };
    0
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn valloc(size: size_t) -> *mut c_void {
    if header::on() {
        // SAFETY: valloc is memalign to the page size.
        return unsafe { memalign_header(PAGE, size, size) };
    }
    // SAFETY: forwarding to glibc.
    let p = unsafe { __libc_valloc(size) };
    if !p.is_null() {
        on_alloc(p, size, AllocKind::Malloc);
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pvalloc(size: size_t) -> *mut c_void {
    if header::on() {
        // pvalloc rounds the size up to whole pages (0 to one page).
        let Some(n) = size.max(1).checked_add(PAGE - 1) else {
            sys::set_errno(libc::ENOMEM);
            return core::ptr::null_mut();
        };
        // SAFETY: pvalloc is memalign to the page size of whole pages.
        return unsafe { memalign_header(PAGE, n & !(PAGE - 1), size) };
    }
    // SAFETY: forwarding to glibc.
    let p = unsafe { __libc_pvalloc(size) };
    if !p.is_null() {
        on_alloc(p, size, AllocKind::Malloc);
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> size_t {
    if p.is_null() {
        return 0;
    }
    if header::is_on() {
        // SAFETY: in header mode every live block is headered.
        return unsafe { usable_header(p, header::read(p as usize)) };
    }
    // SAFETY: forwarding the caller's block to glibc.
    unsafe { real_usable_size(p) }
}

// ---------------------------------------------------------------------------
// mmap family (anonymous, accessible mappings are sampled as AllocKind::Mmap)
// ---------------------------------------------------------------------------

const PAGE: usize = 4096;

fn page_round(n: usize) -> usize {
    n.saturating_add(PAGE - 1) & !(PAGE - 1)
}

fn forget_range(start: usize, len: usize) {
    guarded(|| live::unmap_range(start, start.saturating_add(page_round(len)), stacks::sub));
}

pub(crate) fn enabled() -> bool {
    STATE.load(Ordering::Relaxed) == ENABLED
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: the raw syscall has mmap's own contract, which the caller upholds.
    let r = unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, off) };
    if r == -1 {
        return libc::MAP_FAILED;
    }
    let p = r as *mut c_void;
    if enabled() {
        if flags & libc::MAP_FIXED != 0 {
            forget_range(p as usize, len);
        }
        if flags & libc::MAP_ANONYMOUS != 0 && prot != libc::PROT_NONE {
            if CONFIG.get().exact {
                on_alloc(p, page_round(len), AllocKind::Mmap);
            } else {
                every_mmap(p as usize, page_round(len));
            }
        }
    }
    p
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    off: off_t,
) -> *mut c_void {
    // SAFETY: same contract as mmap.
    unsafe { mmap(addr, len, prot, flags, fd, off) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn munmap(addr: *mut c_void, len: size_t) -> c_int {
    // SAFETY: the raw syscall has munmap's contract, which the caller upholds.
    let r = unsafe { libc::syscall(libc::SYS_munmap, addr, len) };
    if r == 0 && enabled() {
        forget_range(addr as usize, len);
    }
    r as c_int
}

/// `mremap(old, old_size, new_size, flags, ...)`: the optional fifth
/// argument (new address, with MREMAP_FIXED) is read as a plain argument,
/// which the x86-64 calling convention allows.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mremap(
    old: *mut c_void,
    old_size: size_t,
    new_size: size_t,
    flags: c_int,
    new_addr: *mut c_void,
) -> *mut c_void {
    // SAFETY: the raw syscall has mremap's contract, which the caller upholds.
    let r = unsafe { libc::syscall(libc::SYS_mremap, old, old_size, new_size, flags, new_addr) };
    if r == -1 {
        return libc::MAP_FAILED;
    }
    let q = r as *mut c_void;
    if enabled() {
        let (os, ns) = (page_round(old_size), page_round(new_size));
        match guarded(|| live::take_region_at(old as usize)) {
            Some(reg) => {
                // Keep the original stack; the growth (or shrink) is counted on it.
                let had = reg.bytes();
                let moved = live::Region {
                    start: q as usize,
                    end: q as usize + ns,
                    ..reg
                };
                let now = moved.bytes();
                forget_range(old as usize, os);
                if now >= had {
                    stacks::grow(reg.stack, now - had);
                } else {
                    stacks::sub(reg.stack, had - now, 0);
                }
                guarded(|| live::add_region(moved));
            }
            None => {
                forget_range(old as usize, old_size);
                if ns > os && CONFIG.get().exact {
                    on_alloc((q as usize + os) as *mut c_void, ns - os, AllocKind::Mmap);
                } else if ns > os {
                    every_mmap(q as usize + os, ns - os);
                }
            }
        }
    }
    q
}

// ---------------------------------------------------------------------------
// Loader and process lifecycle
// ---------------------------------------------------------------------------

const RTLD_DEEPBIND: c_int = 0x8;

/// The next definition of `name` after this library (glibc's), looked up
/// once and kept in `cache`. Found lazily, so the hooks work whether or not
/// the constructor ran or enabled the agent (a pass-through agent, without
/// `OFFHEAP_DIR`, once made every `dlopen` fail).
fn next_symbol(cache: &AtomicU64, name: &core::ffi::CStr) -> u64 {
    let mut p = cache.load(Ordering::Relaxed);
    if p == 0 {
        // SAFETY: dlsym with RTLD_NEXT from this library; the name is
        // NUL-terminated.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as u64;
        cache.store(p, Ordering::Relaxed);
    }
    p
}

fn real_dlopen() -> Option<DlopenFn> {
    let p = next_symbol(&REAL_DLOPEN, c"dlopen");
    // SAFETY: the value was produced by dlsym for "dlopen".
    (p != 0).then(|| unsafe { core::mem::transmute::<usize, DlopenFn>(p as usize) })
}

fn with_busy(f: impl FnOnce()) {
    TLS.with(|t| {
        if t.busy.get() {
            return;
        }
        t.busy.set(true);
        let saved = sys::errno();
        f();
        sys::set_errno(saved);
        t.busy.set(false);
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlopen(file: *const c_char, mode: c_int) -> *mut c_void {
    let Some(real) = real_dlopen() else {
        return core::ptr::null_mut();
    };
    writer::DLOPEN_DEPTH.fetch_add(1, Ordering::Relaxed);
    // RTLD_DEEPBIND would let the library bypass our hooks (its frees would
    // miss sampled records), so it is dropped, as heaptrack does.
    // SAFETY: forwarding to the loader.
    let h = unsafe { real(file, mode & !RTLD_DEEPBIND) };
    writer::DLOPEN_DEPTH.fetch_sub(1, Ordering::Relaxed);
    if !h.is_null() && enabled() {
        with_busy(|| modules::refresh(true));
    }
    h
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlclose(h: *mut c_void) -> c_int {
    let p = next_symbol(&REAL_DLCLOSE, c"dlclose");
    if p == 0 {
        return -1;
    }
    // SAFETY: the value was produced by dlsym for "dlclose".
    let real = unsafe { core::mem::transmute::<usize, DlcloseFn>(p as usize) };
    writer::DLOPEN_DEPTH.fetch_add(1, Ordering::Relaxed);
    // SAFETY: forwarding to the loader.
    let r = unsafe { real(h) };
    writer::DLOPEN_DEPTH.fetch_sub(1, Ordering::Relaxed);
    if enabled() {
        with_busy(|| modules::refresh(true));
    }
    r
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    writer::final_snapshot();
    // SAFETY: exit_group never returns.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    #[allow(clippy::empty_loop)]
    loop {}
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn _Exit(status: c_int) -> ! {
    // SAFETY: same as _exit.
    unsafe { _exit(status) }
}

type MainFn = unsafe extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) -> c_int;
type StartMainFn = unsafe extern "C" fn(
    MainFn,
    c_int,
    *mut *mut c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;
static REAL_MAIN: AtomicU64 = AtomicU64::new(0);

/// `main`, run by glibc's `__libc_start_main` when the leak check is on:
/// registers the exit handler that runs the check (see
/// `writer::leak_check_at_exit`), then calls the program's `main`.
unsafe extern "C" fn main_wrapper(
    argc: c_int,
    argv: *mut *mut c_char,
    envp: *mut *mut c_char,
) -> c_int {
    // SAFETY: registering our own extern "C" handler with glibc.
    unsafe { libc::atexit(writer::leak_check_at_exit) };
    // SAFETY: the program's own main, stored by __libc_start_main below.
    let real = unsafe {
        core::mem::transmute::<usize, MainFn>(REAL_MAIN.load(Ordering::Relaxed) as usize)
    };
    // SAFETY: the arguments glibc passed us.
    let r = unsafe { real(argc, argv, envp) };
    // `main` returned: every frame below this one is dead, and glibc calls
    // `exit` from just above. The check scans this thread's stack from
    // here, so that what `main`'s callees left in the dead frames below
    // (that `exit`'s frames then occupy) is not taken for live pointers.
    writer::MAIN_RETURNED_SP.store(unwind::regs().1, Ordering::Release);
    r
}

/// The program's start (called by `_start` through the PLT, after every
/// constructor of the preloaded agent ran). With the leak check on, `main`
/// is wrapped so the check's exit handler is registered before it runs;
/// otherwise glibc's is called as it is.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: c_int,
    argv: *mut *mut c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> c_int {
    static REAL: AtomicU64 = AtomicU64::new(0);
    let p = next_symbol(&REAL, c"__libc_start_main");
    if p == 0 {
        // SAFETY: nothing to forward to; the process cannot start.
        unsafe { libc::syscall(libc::SYS_exit_group, 127) };
    }
    // SAFETY: the value was produced by dlsym for "__libc_start_main".
    let real = unsafe { core::mem::transmute::<usize, StartMainFn>(p as usize) };
    let wrap = enabled() && leaks::ON.load(Ordering::Relaxed);
    let main = if wrap {
        REAL_MAIN.store(main as usize as u64, Ordering::Relaxed);
        main_wrapper as MainFn
    } else {
        main
    };
    // SAFETY: forwarding glibc's own arguments.
    unsafe { real(main, argc, argv, init, fini, rtld_fini, stack_end) }
}

/// Removes this agent from `LD_PRELOAD` in `environ` (other preloads stay),
/// and every `OFFHEAP_*` variable.
/// Runs in the constructor, before the program can read its environment.
fn strip_environment() {
    // SAFETY: single-threaded constructor; environ entries are NUL-terminated
    // strings we may shorten in place; the array is NULL-terminated.
    unsafe {
        let env = sys::environ;
        if env.is_null() {
            return;
        }
        let mut i = 0;
        while !(*env.add(i)).is_null() {
            let e = *env.add(i) as *mut u8;
            let bytes = core::ffi::CStr::from_ptr(e as *const c_char).to_bytes();
            if let Some(val) = bytes.strip_prefix(b"LD_PRELOAD=") {
                let base = 11usize;
                let mut out = Vec::with_capacity(val.len());
                for tok in val.split(|&c| c == b':' || c == b' ') {
                    if tok.is_empty() || tok.ends_with(b"liboffheap_agent.so") {
                        continue;
                    }
                    if !out.is_empty() {
                        out.push(b':');
                    }
                    out.extend_from_slice(tok);
                }
                if out.is_empty() {
                    let mut j = i;
                    while !(*env.add(j)).is_null() {
                        *env.add(j) = *env.add(j + 1);
                        j += 1;
                    }
                    continue;
                }
                core::ptr::copy_nonoverlapping(out.as_ptr(), e.add(base), out.len());
                *e.add(base + out.len()) = 0;
            } else if bytes.starts_with(b"OFFHEAP_") {
                // offheap's own settings (the writable recording path
                // among them) are for this process, not its descendants.
                let mut j = i;
                while !(*env.add(j)).is_null() {
                    *env.add(j) = *env.add(j + 1);
                    j += 1;
                }
                continue;
            }
            i += 1;
        }
    }
}

extern "C" fn init() {
    if STATE
        .compare_exchange(UNINIT, INITIALIZING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    TLS.with(|t| t.busy.set(true));
    let saved = sys::errno();
    next_symbol(&REAL_USABLE, c"malloc_usable_size");
    next_symbol(&REAL_DLOPEN, c"dlopen");
    next_symbol(&REAL_DLCLOSE, c"dlclose");
    let preloaded = sys::getenv(c"LD_PRELOAD")
        .is_some_and(|v| v.windows(19).any(|w| w == b"liboffheap_agent.so"));
    tls::enable_fast_path(preloaded);
    let dir = sys::getenv(c"OFFHEAP_DIR").unwrap_or(b"");
    if dir.is_empty() || dir.len() >= 4000 {
        STATE.store(DISABLED, Ordering::Release);
        TLS.with(|t| t.busy.set(false));
        return;
    }
    // SAFETY: constructor, before STATE publishes the config.
    let cfg = unsafe { CONFIG.get_mut() };
    cfg.dir[..dir.len()].copy_from_slice(dir);
    cfg.dir_len = dir.len();
    cfg.sample_interval = sys::env_u64(c"OFFHEAP_SAMPLE_INTERVAL", 524_288).max(1);
    cfg.exact = sys::env_bool(c"OFFHEAP_EXACT", false) || cfg.sample_interval == 1;
    // Header mode was decided by the first allocation, from the same
    // environment; it implies exact tracking.
    cfg.exact |= header::on();
    cfg.interval_ms = sys::env_u64(c"OFFHEAP_INTERVAL_MS", 1000).max(10);
    cfg.snapshot_bytes = sys::env_u64(c"OFFHEAP_SNAPSHOT_BYTES", 64 << 20).max(1);
    cfg.max_depth = (sys::env_u64(c"OFFHEAP_MAX_DEPTH", 64) as usize).clamp(1, unwind::MAX_FRAMES);
    cfg.min_age_ms = sys::env_u64(c"OFFHEAP_MIN_AGE_MS", 5000);
    cfg.follow_fork = sys::env_bool(c"OFFHEAP_FOLLOW_FORK", true);
    cfg.follow_exec = sys::env_bool(c"OFFHEAP_FOLLOW_EXEC", false);
    leaks::configure();
    unwind::DEBUG.store(
        sys::env_bool(c"OFFHEAP_DEBUG_UNWIND", false),
        Ordering::Relaxed,
    );
    PID.store(sys::getpid(), Ordering::Relaxed);
    // SAFETY: getppid has no preconditions.
    PPID.store(unsafe { libc::getppid() } as u32, Ordering::Relaxed);
    START_MONO.store(sys::mono_ms(), Ordering::Relaxed);
    writer::START_MS_BITS.store(sys::now_ms().to_bits(), Ordering::Relaxed);

    // SAFETY: registering our own extern "C" handlers with glibc.
    unsafe {
        libc::pthread_atfork(
            Some(writer::fork_prepare),
            Some(writer::fork_parent),
            Some(writer::fork_child),
        );
        libc::atexit(writer::on_exit);
    }
    if cfg.exact {
        live::saturate_filter();
    }
    modules::init(real_dlopen());
    if sys::env_bool(c"OFFHEAP_ORIGINS", true) {
        origin::install();
    }
    // Last: everything above reads its settings from the environment.
    if !cfg.follow_exec {
        strip_environment();
    }
    STATE.store(ENABLED, Ordering::Release);
    sys::set_errno(saved);
    TLS.with(|t| t.busy.set(false));
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;
