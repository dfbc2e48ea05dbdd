//! Per-thread state: const-initialised, no destructor, so it never
//! allocates and stays valid while the thread's TLS destructors run.

use core::cell::Cell;
use core::sync::atomic::{AtomicIsize, Ordering};

pub struct Tls {
    /// Bytes left until the next sample; the hot path subtracts and tests.
    /// Starts negative, so that a thread's first allocation, even of 0
    /// bytes, takes the slow path (where header mode is decided).
    pub countdown: Cell<i64>,
    /// Set while the agent itself runs on this thread (reentrancy guard).
    pub busy: Cell<bool>,
    /// xorshift state; 0 means "thread not initialised yet".
    pub rng: Cell<u64>,
    pub stack_lo: Cell<u64>,
    pub stack_hi: Cell<u64>,
    /// The module gaps (code without unwind data) and the modules this
    /// thread's stacks met last, and the unwinder generation they belong to.
    pub gaps: Cell<[(u64, u64); crate::unwind::MEMO]>,
    pub mods: Cell<[(u64, u64); crate::unwind::MEMO]>,
    pub gaps_gen: Cell<u64>,
    /// Samples and their bytes not yet added to the global counters.
    pub pend_samples: Cell<u64>,
    pub pend_bytes: Cell<u64>,
    /// While this thread runs queued work (libuv threadpool): 1 + the id of
    /// the stack that queued it, else 0 (see `origin.rs`).
    pub origin: Cell<u32>,
    /// Set while this thread is inside the `uv_queue_work` hook: a
    /// `uv__work_submit` it reaches (not inlined) is the same work, already
    /// carrying its origin.
    pub queuing: Cell<bool>,
    /// Stacks this thread interned recently (see `stacks::intern_add`).
    pub memo: [Cell<crate::stacks::Memo>; crate::stacks::MEMO],
    tid: Cell<u32>,
}

thread_local! {
    pub static TLS: Tls = const {
        Tls {
            countdown: Cell::new(-1),
            busy: Cell::new(false),
            rng: Cell::new(0),
            stack_lo: Cell::new(0),
            stack_hi: Cell::new(0),
            gaps: Cell::new([(0, 0); crate::unwind::MEMO]),
            mods: Cell::new([(0, 0); crate::unwind::MEMO]),
            gaps_gen: Cell::new(0),
            pend_samples: Cell::new(0),
            pend_bytes: Cell::new(0),
            origin: Cell::new(0),
            queuing: Cell::new(false),
            memo: [const { Cell::new(crate::stacks::Memo::EMPTY) }; crate::stacks::MEMO],
            tid: Cell::new(0),
        }
    };
}

/// Offset of this thread's `Tls` from the thread pointer, when the agent's
/// TLS block is in the static TLS area (always the case for a library
/// loaded by `LD_PRELOAD`): the same for every thread, which lets the hot
/// path skip `__tls_get_addr` (what initial-exec TLS does in C). 0 = unknown.
static TP_OFFSET: AtomicIsize = AtomicIsize::new(0);

#[inline(always)]
fn thread_pointer() -> usize {
    let tp: usize;
    // SAFETY: on x86-64 Linux, fs:0 holds the thread pointer (TCB self pointer).
    unsafe {
        core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    tp
}

/// This thread's state, when the static-TLS fast path is on (the agent was
/// preloaded): no call at all.
#[inline(always)]
pub fn fast() -> Option<&'static Tls> {
    let off = TP_OFFSET.load(Ordering::Relaxed);
    if off == 0 {
        return None;
    }
    // SAFETY: TP_OFFSET is only set when the block is in static TLS, where
    // it sits at the same offset from every thread's pointer; the value has
    // no destructor and lives as long as the thread.
    Some(unsafe { &*((thread_pointer() as isize + off) as *const Tls) })
}

/// This thread's state.
#[inline(always)]
pub fn current() -> &'static Tls {
    if let Some(t) = fast() {
        return t;
    }
    // SAFETY: the thread-local outlives every use on this thread (no
    // destructor, storage freed only with the thread itself).
    TLS.with(|t| unsafe { &*(t as *const Tls) })
}

/// Enables the fast path if this library was preloaded and its TLS block
/// sits just below the thread pointer (x86-64 static TLS, variant II).
pub fn enable_fast_path(preloaded: bool) {
    if !preloaded {
        return;
    }
    let addr = TLS.with(|t| t as *const Tls as isize);
    let off = addr - thread_pointer() as isize;
    if (-(64 << 20)..0).contains(&off) {
        TP_OFFSET.store(off, Ordering::Relaxed);
    }
}

impl Tls {
    pub fn tid(&self) -> u32 {
        if self.tid.get() == 0 {
            self.tid.set(crate::sys::gettid());
        }
        self.tid.get()
    }

    /// Forget cached identity (the fork child's surviving thread).
    pub fn reset_after_fork(&self) {
        self.tid.set(0);
    }

    pub fn next_u64(&self) -> u64 {
        let mut x = self.rng.get();
        if x == 0 {
            x = (crate::sys::mono_ns() ^ ((self.tid() as u64) << 32) ^ (self as *const _ as u64))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// An exponential draw with the given mean (bytes until the next sample).
    pub fn draw(&self, mean: u64) -> i64 {
        // u in (0, 1]
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let v = -u.ln() * mean as f64;
        if v >= i64::MAX as f64 {
            i64::MAX
        } else {
            v as i64
        }
    }
}
