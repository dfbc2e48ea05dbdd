//! In-process unwinding with framehop: DWARF CFI from in-memory
//! `.eh_frame_hdr`/`.eh_frame`, frame pointers where there is none (V8 JIT
//! code and builtins). Every stack read is checked against the bounds of the
//! stack we are running on.

use crate::modules::{self, AGENT_HI, AGENT_LO};
use crate::stacks::FrameHash;
use crate::sys::SpinLock;
use crate::tls::Tls;
use core::sync::atomic::{AtomicU64, Ordering};
use framehop::{
    CacheNative, Error, FrameAddress, MayAllocateDuringUnwind, UnwindRegsNative, Unwinder,
};
use std::sync::Arc;

/// Hard cap on recorded frames, whatever OFFHEAP_MAX_DEPTH says.
pub const MAX_FRAMES: usize = 256;

type Cache = CacheNative<MayAllocateDuringUnwind>;

const POOL: usize = 16;
#[allow(clippy::declare_interior_mutable_const)]
const SLOT: SpinLock<Option<Box<PoolSlot>>> = SpinLock::new(None);

/// One entry of the cache pool: framehop caches, and the unwinder snapshot
/// last used with them (kept here, under the slot's lock, so an unwind
/// takes no other lock and touches no reference count unless the modules
/// changed since).
pub struct PoolSlot {
    caches: [Cache; WAYS],
    snap: Option<Arc<modules::UnwSnap>>,
    /// Mixed into the address to choose the way (see `note_collisions`).
    seed: u64,
    /// Unwinds since the collision check, and the collision misses then.
    unwinds: u32,
    collisions: u64,
}
/// Unwind caches, shared by all threads (no per-thread allocation to leak).
/// Each pool slot holds `WAYS` framehop caches, chosen by a seeded hash of
/// the address: framehop's cache is direct-mapped on `address % 509`, so
/// two hot return addresses that collide there (libstdc++'s operator new
/// and a libc frame at the bottom of every stack, say) would evict each
/// other on every allocation and re-parse CFI each time. Spread over `WAYS`
/// caches, such a pair shares one a quarter of the time, and a slot that
/// sees it happen picks a new seed until the pair is apart.
pub static CACHES: [SpinLock<Option<Box<PoolSlot>>>; POOL] = [SLOT; POOL];
const WAYS: usize = 4;

pub static UNWIND_ERRORS: AtomicU64 = AtomicU64::new(0);
pub static OFF_STACK: AtomicU64 = AtomicU64::new(0);
pub static DEBUG: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The bounds of the stack `sp` is on: the thread's stack, the alternate
/// signal stack, or (unknown stack) just the current page.
fn bounds(t: &Tls, sp: u64) -> (u64, u64) {
    if t.stack_hi.get() == 0 {
        let (lo, hi) = thread_stack();
        t.stack_lo.set(lo);
        t.stack_hi.set(hi.max(1));
    }
    let (lo, hi) = (t.stack_lo.get(), t.stack_hi.get());
    if sp >= lo && sp < hi {
        return (sp, hi);
    }
    let mut ss: libc::stack_t = libc::stack_t {
        ss_sp: core::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: querying only (null new stack).
    if unsafe { libc::sigaltstack(core::ptr::null(), &mut ss) } == 0
        && ss.ss_flags & libc::SS_ONSTACK != 0
    {
        let s = ss.ss_sp as u64;
        if sp >= s && sp < s + ss.ss_size as u64 {
            return (sp, s + ss.ss_size as u64);
        }
    }
    OFF_STACK.fetch_add(1, Ordering::Relaxed);
    (sp, (sp | 4095) + 1)
}

fn thread_stack() -> (u64, u64) {
    // SAFETY: attr is initialised by pthread_getattr_np before use and destroyed after.
    unsafe {
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return (0, 0);
        }
        let mut addr: *mut libc::c_void = core::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let r = libc::pthread_attr_getstack(&attr, &mut addr, &mut size);
        libc::pthread_attr_destroy(&mut attr);
        if r != 0 {
            return (0, 0);
        }
        (addr as u64, addr as u64 + size as u64)
    }
}

/// The current pc, sp and bp, where the unwind starts. Taken in
/// `slow_alloc` or `sample_header` (the agent frames just below the hook),
/// so few agent frames lie between it and the allocation's caller.
#[inline(always)]
pub fn regs() -> (u64, u64, u64) {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads rip/rsp/rbp only; no memory access, no flags.
    unsafe {
        core::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags)
        );
    }
    (ip, sp, bp)
}

/// Unwinds the current thread. Fills `out` with return addresses, innermost
/// first, starting at the caller of the allocation function. Returns
/// (frames, truncated, the frames' hash so far: see `stacks::FrameHash`).
#[inline(never)]
pub fn capture(
    t: &Tls,
    start: (u64, u64, u64),
    out: &mut [core::mem::MaybeUninit<u64>; MAX_FRAMES],
    max_depth: usize,
) -> (usize, bool, FrameHash) {
    // `start` was taken in a caller whose frame is live below ours, so the
    // stack above its sp is intact.
    let (ip, sp, bp) = start;
    let (lo, hi) = bounds(t, sp);
    let mut read = |addr: u64| -> Result<u64, ()> {
        if addr < lo || addr.checked_add(8).is_none_or(|e| e > hi) || addr & 7 != 0 {
            return Err(());
        }
        // SAFETY: addr is 8-aligned and inside the stack we are running on,
        // which is mapped and readable.
        Ok(unsafe { (addr as *const u64).read_volatile() })
    };
    let current = modules::SNAP_CURRENT.load(Ordering::Acquire);
    let mut fresh: Option<Arc<modules::UnwSnap>> = None;
    let guard = loop {
        let guard = lock_slot(t);
        // SAFETY: we hold this slot's lock.
        let entry = unsafe { guard.get_unchecked() };
        let entry = entry.get_or_insert_with(|| {
            Box::new(PoolSlot {
                caches: core::array::from_fn(|_| Cache::new()),
                snap: None,
                seed: 0,
                unwinds: 0,
                collisions: 0,
            })
        });
        if entry.snap.as_ref().is_some_and(|s| s.generation == current) {
            break guard;
        }
        if fresh.is_some() {
            entry.snap = fresh.take();
            break guard;
        }
        // The modules changed: fetch the new snapshot with no slot held
        // (fork_prepare takes UNWINDER before the slots).
        guard.raw_unlock();
        fresh = modules::unwinder();
        if fresh.is_none() {
            return (0, false, FrameHash::new());
        }
    };
    // SAFETY: we hold this slot's lock.
    let Some(entry) = unsafe { guard.get_unchecked() }.as_deref_mut() else {
        guard.raw_unlock();
        return (0, false, FrameHash::new());
    };
    note_collisions(entry);
    let PoolSlot {
        caches, snap, seed, ..
    } = entry;
    let seed = *seed;
    let Some(snap) = snap.as_deref() else {
        guard.raw_unlock();
        return (0, false, FrameHash::new());
    };
    let agent = (
        AGENT_LO.load(Ordering::Relaxed),
        AGENT_HI.load(Ordering::Relaxed),
    );
    let max_depth = max_depth.min(MAX_FRAMES);
    let mut n = 0usize;
    let mut fh = FrameHash::new();
    let mut truncated = false;
    let mut skipping = true;
    // framehop's iterator counted the first (pc) frame as a step.
    let mut steps = 1usize;
    let unw = &snap.unw;
    let mut regs = UnwindRegsNative::new(ip, sp, bp);
    // The frame being unwound: first this function's own (exact) pc, then
    // return addresses.
    let mut addr = FrameAddress::InstructionPointer(ip);
    let debug = DEBUG.load(Ordering::Relaxed);
    if !debug && let Some((ra, nsp, nbp, k)) = walk_agent_frames(start, lo, hi, agent) {
        // The allocation function's caller, reached without framehop: the
        // same frame the loop below would have produced after stepping
        // through the agent's frames.
        regs = UnwindRegsNative::new(ra, nsp, nbp);
        if let Some(fa) = FrameAddress::from_return_address(ra) {
            addr = fa;
            steps += k;
            if !modules::is_wrapper(ra) {
                skipping = false;
                out[0].write(ra);
                fh.push(ra);
                n = 1;
            }
        }
    }
    // The gaps between modules (code without unwind data: node's main
    // program, V8's JIT code) and the modules this thread's stacks met last.
    let (mut gaps, mut mods) = if t.gaps_gen.get() == snap.generation {
        (t.gaps.get(), t.mods.get())
    } else {
        ([(0u64, 0u64); MEMO], [(0u64, 0u64); MEMO])
    };
    loop {
        steps += 1;
        if steps > MAX_FRAMES + 64 {
            break;
        }
        // No module knows the code at a return address (the main program
        // unwound by frame pointers, JIT code): framehop would apply its
        // fallback rule, a frame-pointer step. Do the same step here,
        // without the rule cache's hashing and module search.
        let fp = match addr {
            FrameAddress::ReturnAddress(r) => {
                let la = r.get() - 1;
                if within(la, &gaps) {
                    true
                } else if within(la, &mods) {
                    false
                } else {
                    match snap.classify(la) {
                        (false, g) => {
                            push_front(&mut gaps, g);
                            true
                        }
                        (true, m) => {
                            push_front(&mut mods, m);
                            false
                        }
                    }
                }
            }
            FrameAddress::InstructionPointer(_) => false,
        };
        if fp && !skipping && !debug {
            // A run of frame-pointer frames: the same steps as `fp_step`,
            // with both stack reads checked at once and no per-frame
            // bookkeeping beyond the gap test.
            let (mut fsp, mut fbp) = (regs.sp(), regs.bp());
            let mut handed_back = false;
            loop {
                if fbp == 0 {
                    break;
                }
                let Some(new_sp) = fbp.checked_add(16) else {
                    UNWIND_ERRORS.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                if new_sp <= fsp || fbp < lo || new_sp > hi || fbp & 7 != 0 {
                    UNWIND_ERRORS.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                // SAFETY: fbp..fbp+16 is 8-aligned and inside the stack we
                // are running on, which is mapped and readable.
                let (nbp, ra) = unsafe {
                    (
                        (fbp as *const u64).read_volatile(),
                        ((fbp + 8) as *const u64).read_volatile(),
                    )
                };
                if ra == 0 {
                    break;
                }
                fsp = new_sp;
                fbp = nbp;
                if n == max_depth {
                    truncated = true;
                    break;
                }
                out[n].write(ra);
                fh.push(ra);
                n += 1;
                steps += 1;
                if steps > MAX_FRAMES + 64 {
                    break;
                }
                let la = ra - 1;
                if within(la, &gaps) {
                    continue;
                }
                if !within(la, &mods) {
                    match snap.classify(la) {
                        (false, g) => {
                            push_front(&mut gaps, g);
                            continue;
                        }
                        (true, m) => push_front(&mut mods, m),
                    }
                }
                // Code with unwind data: back to framehop, which will
                // count this step itself.
                steps -= 1;
                regs.set_ip(ra);
                regs.set_sp(fsp);
                regs.set_bp(fbp);
                // ra != 0 was checked above.
                addr = FrameAddress::from_return_address(ra).unwrap_or(addr);
                handed_back = true;
                break;
            }
            if handed_back {
                continue;
            }
            break;
        }
        let next = if fp {
            fp_step(&mut regs, &mut read)
        } else {
            let way = ((addr.address_for_lookup() ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> (64 - WAYS.trailing_zeros())) as usize;
            unw.unwind_frame(addr, &mut regs, &mut caches[way], &mut read)
        };
        let a = match next {
            Ok(Some(a)) => a,
            Ok(None) => break,
            Err(_) => {
                UNWIND_ERRORS.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let Some(fa) = FrameAddress::from_return_address(a) else {
            UNWIND_ERRORS.fetch_add(1, Ordering::Relaxed);
            break;
        };
        addr = fa;
        if debug {
            let mut m = crate::sys::Fmt::<128>::new();
            m.s(b"frame ")
                .u(a)
                .s(b" ")
                .u(agent.0)
                .s(b"-")
                .u(agent.1)
                .s(b" w")
                .u(modules::is_wrapper(a) as u64)
                .s(if skipping { b" skip?\n" } else { b"\n" });
            // SAFETY: writing a valid buffer to stderr.
            unsafe { libc::write(2, m.bytes().as_ptr() as *const libc::c_void, m.len) };
        }
        if skipping {
            if a >= agent.0 && a < agent.1 {
                continue;
            }
            if modules::is_wrapper(a) {
                continue;
            }
            skipping = false;
        }
        if n == max_depth {
            truncated = true;
            break;
        }
        out[n].write(a);
        fh.push(a);
        n += 1;
    }
    guard.raw_unlock();
    t.gaps.set(gaps);
    t.mods.set(mods);
    t.gaps_gen.set(snap.generation);
    (n, truncated, fh)
}

/// Unwinds between two checks of a pool slot's collision misses.
const CHECK_EVERY: u32 = 256;

/// Counts an unwind on `slot`; every `CHECK_EVERY` unwinds, if its caches
/// missed on a slot another address held more than once per 4 unwinds
/// (two hot addresses in the same way and the same one of framehop's 509
/// slots evict each other on every stack that has both, and re-parse CFI
/// each time: in one layout of node that doubled exact mode's
/// instructions), picks a new seed, which sends every address to a new
/// way. The rules cached so far stay valid (they are keyed by address);
/// some are found again once in their new way.
fn note_collisions(slot: &mut PoolSlot) {
    slot.unwinds += 1;
    if slot.unwinds < CHECK_EVERY {
        return;
    }
    slot.unwinds = 0;
    let now = slot.collision_misses();
    let new = now - slot.collisions;
    slot.collisions = now;
    if new > (CHECK_EVERY / 4) as u64 {
        slot.seed = (slot.seed ^ now)
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9);
        RESEEDS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pool-slot reseeds so far (in the final note).
pub static RESEEDS: AtomicU64 = AtomicU64::new(0);

/// Cache misses on a slot that another address held, over every pool slot
/// (in the final note).
pub fn collision_misses() -> u64 {
    CACHES
        .iter()
        .map(|c| c.lock().as_ref().map_or(0, |e| e.collision_misses()))
        .sum()
}

impl PoolSlot {
    /// Misses of this slot's caches on a slot another address held.
    fn collision_misses(&self) -> u64 {
        self.caches
            .iter()
            .map(|c| c.stats().miss_wrong_address_count)
            .sum()
    }
}

/// Steps out of the agent's own frames by their frame pointers (the agent
/// is built with `-C force-frame-pointers=yes`, see `.cargo/config.toml`):
/// two frame-pointer steps instead of two framehop lookups per sample.
/// `start` was taken in `slow_alloc` or `sample_header`, whose callers are
/// agent hooks:
/// if the first return address is not in the agent, this build has no
/// frame pointers and `None` leaves the whole walk to framehop. Returns the
/// first return address outside the agent with the sp and bp of its frame,
/// and the number of frames stepped.
#[inline(always)]
fn walk_agent_frames(
    start: (u64, u64, u64),
    lo: u64,
    hi: u64,
    agent: (u64, u64),
) -> Option<(u64, u64, u64, usize)> {
    let (_, mut sp, mut bp) = start;
    for k in 1..=8 {
        let new_sp = bp.checked_add(16)?;
        if bp < sp || bp < lo || new_sp > hi || bp & 7 != 0 {
            return None;
        }
        // SAFETY: bp..bp+16 is 8-aligned and inside the stack we are
        // running on, which is mapped and readable.
        let (nbp, ra) = unsafe {
            (
                (bp as *const u64).read_volatile(),
                ((bp + 8) as *const u64).read_volatile(),
            )
        };
        sp = new_sp;
        bp = nbp;
        let ours = ra >= agent.0 && ra < agent.1;
        if !ours {
            return (k > 1 && ra != 0).then_some((ra, sp, bp, k));
        }
    }
    None
}

/// Locks a pool slot: the thread's own if free, else the next free one.
fn lock_slot(t: &Tls) -> &'static SpinLock<Option<Box<PoolSlot>>> {
    let slot = (t.tid() as usize) % POOL;
    let mut i = slot;
    loop {
        if CACHES[i].try_raw_lock() {
            return &CACHES[i];
        }
        i = (i + 1) % POOL;
        if i == slot {
            CACHES[slot].raw_lock();
            return &CACHES[slot];
        }
    }
}

/// Whether `a` lies in one of the ranges of a memo: all four tested
/// without a branch per range (a stack that alternates between node's
/// binary and JIT code would mispredict a chain of compares on most frames).
#[inline(always)]
fn within(a: u64, m: &[(u64, u64); MEMO]) -> bool {
    let mut hit = false;
    for r in m {
        hit |= a.wrapping_sub(r.0) < r.1.wrapping_sub(r.0);
    }
    hit
}

/// Entries of the per-thread module and gap memos: node's stacks touch the
/// agent, libstdc++ and libc (modules), the main program and JIT code (gaps).
pub const MEMO: usize = 4;

#[inline(always)]
fn push_front(m: &mut [(u64, u64); MEMO], r: (u64, u64)) {
    m.copy_within(0..MEMO - 1, 1);
    m[0] = r;
}

/// framehop's `UseFramePointer` rule for a frame below the first, step for
/// step (same checks, same results): `*bp` is the caller's frame pointer,
/// `*(bp + 8)` the return address.
#[inline(always)]
fn fp_step(
    regs: &mut UnwindRegsNative,
    read: &mut impl FnMut(u64) -> Result<u64, ()>,
) -> Result<Option<u64>, Error> {
    let (sp, bp) = (regs.sp(), regs.bp());
    if bp == 0 {
        return Ok(None);
    }
    let new_sp = bp.checked_add(16).ok_or(Error::IntegerOverflow)?;
    if new_sp <= sp {
        return Err(Error::FramepointerUnwindingMovedBackwards);
    }
    let new_bp = read(bp).map_err(|_| Error::CouldNotReadStack(bp))?;
    let ra = read(new_sp - 8).map_err(|_| Error::CouldNotReadStack(new_sp - 8))?;
    if ra == 0 {
        return Ok(None);
    }
    regs.set_ip(ra);
    regs.set_sp(new_sp);
    regs.set_bp(new_bp);
    Ok(Some(ra))
}
