//! Snapshots: the writer thread, the exit paths and the fork handlers.
//!
//! A snapshot is encoded into one buffer and appended with `write(2)`, so a
//! process killed at any point leaves every earlier snapshot intact.

use crate::stream::Stream;
use crate::sys::{self, Fmt, SpinLock};
use crate::{CONFIG, PID, PPID, START_MONO, STATE, live, modules, stacks, unwind};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use libc::c_void;
use offheap_format::native::{self as fmt, AllocatorStats, Sink, StackCounters};

pub struct WState {
    stream: Stream,
    /// `stream.reopened` as of the last note about it.
    reopened_noted: u32,
    index: u32,
    stacks_written: u32,
    last: Vec<StackCounters>,
    buf: Vec<u8>,
    aged: Vec<u64>,
    entries: Vec<(u32, StackCounters)>,
    write_failed: bool,
    /// Which written stacks are of the mmap family.
    mmap_stack: Vec<bool>,
    epochs: Epochs,
}

/// Header mode: when each epoch of the ring began (ms since start, at
/// `epoch % YOUNG`), and per stack its allocated bytes at that moment.
pub struct Epochs {
    began: [u64; stacks::YOUNG],
    allocated: Vec<[u64; stacks::YOUNG]>,
}

pub static W: SpinLock<WState> = SpinLock::new(WState {
    stream: Stream::NONE,
    reopened_noted: 0,
    index: 0,
    stacks_written: 0,
    last: Vec::new(),
    buf: Vec::new(),
    aged: Vec::new(),
    entries: Vec::new(),
    write_failed: false,
    mmap_stack: Vec::new(),
    epochs: Epochs {
        began: [0; stacks::YOUNG],
        allocated: Vec::new(),
    },
});

pub static WRITER_STARTED: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static FINAL_DONE: AtomicBool = AtomicBool::new(false);
static LAST_SNAP_MONO: AtomicU64 = AtomicU64::new(0);
/// Estimated bytes allocated (sum of sample weights), and its value at the last snapshot.
pub static ALLOCATED: AtomicU64 = AtomicU64::new(0);
static ALLOC_AT_LAST: AtomicU64 = AtomicU64::new(0);
pub static SAMPLES: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Unix ms of the start of this process's stream (fork time in a child), as f64 bits.
pub static START_MS_BITS: AtomicU64 = AtomicU64::new(0);
/// Hooked dlopen/dlclose calls in progress (no thread spawn meanwhile).
pub static DLOPEN_DEPTH: AtomicU64 = AtomicU64::new(0);

/// Counts a sample in `SAMPLES` and `ALLOCATED`, batched per thread (a
/// locked add on a line every allocating thread shares cost exact mode
/// about 3% of a busy node process): published once a thread has 64
/// samples or 1 MiB pending, so the byte trigger lags by at most that much
/// per thread.
pub fn count_sample(t: &crate::tls::Tls, bytes: u64) {
    let n = t.pend_samples.get() + 1;
    let b = t.pend_bytes.get().wrapping_add(bytes);
    t.pend_samples.set(n);
    t.pend_bytes.set(b);
    if n >= 64 || b >= 1 << 20 {
        flush_pending(t);
    }
}

/// Publishes this thread's pending sample counts.
fn flush_pending(t: &crate::tls::Tls) {
    SAMPLES.fetch_add(t.pend_samples.replace(0), Ordering::Relaxed);
    ALLOCATED.fetch_add(t.pend_bytes.replace(0), Ordering::Relaxed);
}

struct VecSink<'a>(&'a mut Vec<u8>);
impl Sink for VecSink<'_> {
    fn put(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
}

/// The stream's magic and header, at the start of its first snapshot.
fn encode_header(buf: &mut Vec<u8>) {
    let cfg = CONFIG.get();
    let mut exe = [0u8; 4096];
    // SAFETY: exe is writable for its length.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            exe.as_mut_ptr() as *mut libc::c_char,
            exe.len(),
        )
    };
    let exe = if n > 0 { &exe[..n as usize] } else { &exe[..0] };
    let mut s = VecSink(buf);
    fmt::write_magic(&mut s);
    fmt::write_header(
        &mut s,
        &fmt::Header {
            pid: PID.load(Ordering::Relaxed),
            ppid: PPID.load(Ordering::Relaxed),
            start_ms: f64::from_bits(START_MS_BITS.load(Ordering::Relaxed)),
            sample_interval: if cfg.exact { 1 } else { cfg.sample_interval },
            exact: cfg.exact,
            min_age_ms: cfg.min_age_ms,
            max_depth: cfg.max_depth as u32,
            exe,
        },
    );
}

/// Arena count (from `malloc_info`, which walks every bin: refreshed at most
/// every 10 s) and when it was taken.
static ARENAS: AtomicU64 = AtomicU64::new(0);
static ARENAS_AT: AtomicU64 = AtomicU64::new(0);

fn arena_count(force: bool) -> u32 {
    let now = sys::mono_ms();
    let at = ARENAS_AT.load(Ordering::Relaxed);
    if !force && at != 0 && now.saturating_sub(at) < 10_000 {
        return ARENAS.load(Ordering::Relaxed) as u32;
    }
    let mut arenas = 0u32;
    let mut ptr: *mut libc::c_char = core::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: valid out pointers; the stream is closed before ptr is read and freed.
    unsafe {
        let f = libc::open_memstream(&mut ptr, &mut size);
        if !f.is_null() {
            libc::malloc_info(0, f);
            libc::fclose(f);
            if !ptr.is_null() {
                let s = core::slice::from_raw_parts(ptr as *const u8, size);
                arenas = s.windows(9).filter(|w| *w == b"<heap nr=").count() as u32;
                libc::free(ptr as *mut c_void);
            }
        }
    }
    ARENAS.store(arenas as u64, Ordering::Relaxed);
    ARENAS_AT.store(now.max(1), Ordering::Relaxed);
    arenas
}

fn allocator_stats(final_: bool) -> Option<AllocatorStats> {
    let arenas = arena_count(final_);
    // SAFETY: mallinfo2 has no preconditions.
    let m = unsafe { libc::mallinfo2() };
    Some(AllocatorStats {
        arena_bytes: m.arena as u64,
        in_use_bytes: m.uordblks as u64,
        free_bytes: m.fordblks as u64,
        mmapped_bytes: m.hblkhd as u64,
        free_chunks: m.ordblks as u64,
        releasable_bytes: m.keepcost as u64,
        arenas,
        agent_mapped_bytes: crate::sys::mapped_bytes(),
    })
}

/// Why a snapshot is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every `OFFHEAP_INTERVAL_MS`.
    Periodic,
    /// After `OFFHEAP_SNAPSHOT_BYTES` allocated: counters only (no allocator
    /// walk, no module rescan), so heavy churn stays cheap.
    Bytes,
    /// Exit paths.
    Final,
}

/// Header mode's aged live bytes of the malloc-family stacks (no live
/// records to walk; see `stacks::Freed`). First, on a periodic snapshot,
/// starts a new epoch if the current one is `min_age / 3` old: recycles
/// the ring slot the new epoch will use, publishes the epoch, and notes
/// every stack's allocated bytes. Then, with `j` the latest epoch that
/// began at least `min_age` ago, a stack's aged bytes are its allocated
/// bytes when `j` began less the frees of allocations born before `j`
/// (the settled frees and the ring slots of epochs before `j`): the bytes
/// allocated at least `min_age` ago, give or take an epoch, still live.
fn aged_from_epochs(
    ep: &mut Epochs,
    mmap_stack: &[bool],
    aged: &mut [u64],
    now: u64,
    min_age: u64,
    periodic: bool,
) {
    const Y: usize = stacks::YOUNG;
    let mut k = stacks::EPOCH.load(Ordering::Relaxed);
    if periodic && min_age > 0 && now.saturating_sub(ep.began[k as usize % Y]) >= min_age / 3 {
        k += 1;
        let slot = k as usize % Y;
        let count = stacks::COUNT.load(Ordering::Acquire);
        for id in 0..count {
            stacks::counters(id).recycle(slot);
        }
        stacks::EPOCH.store(k, Ordering::Release);
        ep.began[slot] = now;
        ep.allocated.resize(count as usize, [0; Y]);
        for (id, row) in ep.allocated.iter_mut().enumerate() {
            row[slot] = stacks::counters(id as u32).alloc_bytes();
        }
    }
    let all_live = min_age == 0;
    if !all_live && now < min_age {
        return; // nothing is that old yet
    }
    // Epochs k-Y+2 ..= k are in the ring; epoch 0 began at 0.
    let lo = k.saturating_sub(Y as u32 - 2);
    let cutoff = now.saturating_sub(min_age);
    let j = (lo..=k)
        .rev()
        .find(|&e| ep.began[e as usize % Y] <= cutoff)
        .unwrap_or(lo);
    // Ring slots of the epochs before j (their frees count against j's
    // allocated bytes); the others hold frees of allocations born since.
    let mut before = [true; Y];
    for e in j..=k {
        before[e as usize % Y] = false;
    }
    for (id, out) in aged.iter_mut().enumerate() {
        if mmap_stack.get(id).copied().unwrap_or(true) {
            continue;
        }
        let c = stacks::counters(id as u32);
        let live = c.read().live_bytes;
        *out = if all_live {
            live
        } else {
            let (settled, young) = c.freed_split();
            let before_j = (0..Y)
                .filter(|&s| before[s])
                .fold(settled, |a, s| a.wrapping_add(young[s]));
            let allocated = ep.allocated.get(id).map_or(0, |r| r[j as usize % Y]);
            allocated.saturating_sub(before_j).min(live)
        };
    }
}

/// Writes one snapshot. Call with no agent lock held.
pub fn snapshot(trigger: Trigger) {
    if sys::getpid() != PID.load(Ordering::Relaxed) {
        return; // a vfork/clone child sharing our memory
    }
    let final_ = trigger == Trigger::Final;
    let stats = if trigger == Trigger::Bytes {
        None
    } else {
        modules::refresh(false);
        allocator_stats(final_)
    };
    let mut guard = W.lock();
    let w = &mut *guard;
    if w.write_failed {
        return;
    }
    w.buf.clear();
    let first = w.index == 0;
    if first {
        encode_header(&mut w.buf);
    } else if !w.stream.ensure() {
        // The program took the descriptor over and the file cannot be
        // reopened by name: stop writing rather than write elsewhere.
        w.write_failed = true;
        return;
    }
    let cfg = CONFIG.get();
    let idx = w.index;
    let mut s = VecSink(&mut w.buf);
    fmt::write_snapshot_begin(&mut s, idx, sys::now_ms());
    {
        let mut t = modules::TABLE.lock();
        for (id, r) in t.recs.iter_mut().enumerate() {
            if !r.written {
                fmt::write_module(
                    &mut s,
                    &fmt::ModuleInfo {
                        id: id as u32,
                        generation: r.generation,
                        bias: r.bias,
                        loaded_at_ms: r.loaded_ms,
                        path: &r.path,
                        build_id: &r.build_id,
                        ranges: &r.ranges,
                    },
                );
                r.written = true;
            }
            if let (Some(at), false) = (r.unloaded_ms, r.unload_written) {
                fmt::write_module_unloaded(&mut s, id as u32, r.unload_generation, at);
                r.unload_written = true;
            }
        }
    }
    {
        let t = stacks::TABLE.lock();
        for id in w.stacks_written as usize..t.entries.len() {
            let e = &t.entries[id];
            fmt::write_stack(&mut s, id as u32, e.kind, e.truncated, t.frames_of(e));
            if e.origin != 0 {
                fmt::write_origin(&mut s, id as u32, e.origin - 1);
            }
            w.mmap_stack.push(e.kind == fmt::AllocKind::Mmap);
        }
        w.stacks_written = t.entries.len() as u32;
    }
    let n = (stacks::COUNT.load(Ordering::Acquire) as usize).min(w.stacks_written as usize);
    if trigger == Trigger::Bytes {
        // Aged live bytes need a walk of every live record (in exact mode,
        // every live allocation, under the shard locks the allocating
        // threads need): byte-triggered snapshots, up to dozens a second,
        // repeat the last periodic figures (new stacks: 0).
        w.aged.resize(n, 0);
    } else {
        w.aged.clear();
        w.aged.resize(n, 0);
        let age_now = sys::mono_ms().saturating_sub(START_MONO.load(Ordering::Relaxed));
        let cutoff = age_now.saturating_sub(cfg.min_age_ms);
        if crate::header::is_on() {
            aged_from_epochs(
                &mut w.epochs,
                &w.mmap_stack,
                &mut w.aged,
                age_now,
                cfg.min_age_ms,
                trigger == Trigger::Periodic,
            );
        }
        // The live records: every sampled allocation without header mode,
        // the mmap family's regions always.
        let aged = &mut w.aged;
        live::for_each(|l| {
            if (l.born_ms as u64) <= cutoff && (l.stack as usize) < aged.len() {
                aged[l.stack as usize] += l.bytes;
            }
        });
    }
    w.entries.clear();
    for id in 0..n {
        let c = stacks::counters(id as u32).read();
        let sc = StackCounters {
            alloc_bytes: c.alloc_bytes,
            alloc_count: c.alloc_count,
            live_bytes: c.live_bytes,
            live_count: c.live_count,
            aged_live_bytes: w.aged[id],
        };
        if id >= w.last.len() {
            w.last.push(StackCounters::default());
        }
        if w.last[id] != sc {
            w.last[id] = sc;
            w.entries.push((id as u32, sc));
        }
    }
    for chunk in w.entries.chunks(8192) {
        fmt::write_counters(&mut s, chunk);
    }
    if let Some(a) = stats {
        fmt::write_allocator(&mut s, &a);
    }
    if idx == 0 {
        let mut f = Fmt::<256>::new();
        f.s(b"config: sample_interval=")
            .u(cfg.sample_interval)
            .s(b" exact=")
            .u(cfg.exact as u64)
            .s(b" interval_ms=")
            .u(cfg.interval_ms)
            .s(b" snapshot_bytes=")
            .u(cfg.snapshot_bytes)
            .s(b" max_depth=")
            .u(cfg.max_depth as u64)
            .s(b" min_age_ms=")
            .u(cfg.min_age_ms)
            .s(b" origins=")
            .u(crate::origin::STATUS.load(Ordering::Relaxed) as u64);
        fmt::write_note(&mut s, f.bytes());
    }
    if w.stream.reopened != w.reopened_noted {
        w.reopened_noted = w.stream.reopened;
        let mut f = Fmt::<256>::new();
        f.s(b"stream reopened: the program closed or replaced the agent's descriptor (")
            .u(w.reopened_noted as u64)
            .s(b" times so far); nothing was written into its files");
        fmt::write_note(&mut s, f.bytes());
    }
    if final_ {
        let mut f = Fmt::<512>::new();
        f.s(b"final: samples=")
            .u(SAMPLES.load(Ordering::Relaxed))
            .s(b" dropped_samples=")
            .u(DROPPED.load(Ordering::Relaxed))
            .s(b" stacks=")
            .u(n as u64)
            .s(b" live_entries=")
            .u(live::live_entries() as u64)
            .s(b" live_slots=")
            .u(live::live_slots() as u64)
            .s(b" unwind_errors=")
            .u(unwind::UNWIND_ERRORS.load(Ordering::Relaxed))
            .s(b" off_stack_unwinds=")
            .u(unwind::OFF_STACK.load(Ordering::Relaxed))
            .s(b" cache_reseeds=")
            .u(unwind::RESEEDS.load(Ordering::Relaxed))
            .s(b" cache_collisions=")
            .u(unwind::collision_misses())
            .s(b" origin_overflow=")
            .u(crate::origin::OVERFLOW.load(Ordering::Relaxed) as u64);
        fmt::write_note(&mut s, f.bytes());
    }
    fmt::write_snapshot_end(&mut s, idx);
    if first {
        // The file is created with its first snapshot (see `Stream::create`).
        match Stream::create(&w.buf) {
            Some(st) => w.stream = st,
            None => {
                // No usable recording directory: stop sampling, stay a
                // pass-through.
                w.write_failed = true;
                STATE.store(crate::DISABLED, Ordering::Release);
                return;
            }
        }
    } else if !w.stream.append(&w.buf) {
        w.write_failed = true;
    }
    w.index += 1;
    if w.buf.capacity() > 1 << 20 {
        w.buf = Vec::new();
    }
    if trigger != Trigger::Bytes {
        LAST_SNAP_MONO.store(sys::mono_ms(), Ordering::Relaxed);
    }
    ALLOC_AT_LAST.store(ALLOCATED.load(Ordering::Relaxed), Ordering::Relaxed);
}

extern "C" fn writer_main(_: *mut c_void) -> *mut c_void {
    crate::tls::TLS.with(|t| t.busy.set(true));
    // SAFETY: PR_SET_NAME with a NUL-terminated name of <= 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"offheap-writer".as_ptr()) };
    let cfg = CONFIG.get();
    let tick = cfg.interval_ms.clamp(10, 100);
    // A first snapshot at once: the stream (header, modules, configuration)
    // exists from the first sample on, even for a process that a signal
    // ends before the first tick (a cluster worker killed right after it
    // reports back: its recording must not be missing).
    snapshot(Trigger::Periodic);
    loop {
        sys::sleep_ms(tick);
        if STOP.load(Ordering::Relaxed) || STATE.load(Ordering::Acquire) != crate::ENABLED {
            break;
        }
        let elapsed = sys::mono_ms().saturating_sub(LAST_SNAP_MONO.load(Ordering::Relaxed));
        let grown = ALLOCATED
            .load(Ordering::Relaxed)
            .wrapping_sub(ALLOC_AT_LAST.load(Ordering::Relaxed));
        if elapsed >= cfg.interval_ms {
            snapshot(Trigger::Periodic);
        } else if grown >= cfg.snapshot_bytes {
            snapshot(Trigger::Bytes);
        }
    }
    core::ptr::null_mut()
}

/// Starts the writer thread once per process (from the first sampled event).
pub fn maybe_spawn() {
    if WRITER_STARTED.load(Ordering::Relaxed) || DLOPEN_DEPTH.load(Ordering::Relaxed) > 0 {
        return;
    }
    if WRITER_STARTED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // SAFETY: plain pthread calls with valid, initialised arguments; the new
    // thread starts with every signal blocked so the target's handlers never
    // run on it; the caller's mask is restored right after.
    unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut attr: libc::pthread_attr_t = core::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setdetachstate(&mut attr, libc::PTHREAD_CREATE_DETACHED);
        libc::pthread_attr_setstacksize(&mut attr, 256 * 1024);
        let mut th: libc::pthread_t = 0;
        libc::pthread_create(&mut th, &attr, writer_main, core::ptr::null_mut());
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}

/// The last snapshot of the process (exit, `_exit`, atexit).
pub fn final_snapshot() {
    final_snapshot_at(None);
}

/// The last snapshot; from the exit handler (`sp`: its stack pointer),
/// the leak check first when it is on.
fn final_snapshot_at(sp: Option<u64>) {
    if STATE.load(Ordering::Acquire) != crate::ENABLED
        || sys::getpid() != PID.load(Ordering::Relaxed)
    {
        return;
    }
    // Inside the agent on this thread (an exit from a signal handler that
    // interrupted a hook): agent locks may be held here, so no final
    // snapshot; the periodic ones stand.
    if crate::tls::current().busy.get() {
        return;
    }
    if FINAL_DONE.swap(true, Ordering::AcqRel) {
        return;
    }
    crate::tls::TLS.with(|t| {
        let was = t.busy.replace(true);
        flush_pending(t);
        STOP.store(true, Ordering::Relaxed);
        // The check the exit handler registered before `main` took, or,
        // without one (`main` not reached through our `__libc_start_main`),
        // one now.
        let leaks = PENDING.lock().take().or_else(|| {
            sp.filter(|_| {
                crate::leaks::ON.load(Ordering::Relaxed) && !CHECKED.swap(true, Ordering::AcqRel)
            })
            .map(run_check)
        });
        snapshot(Trigger::Final);
        if let Some(l) = leaks {
            append_leaks(&l);
        }
        STATE.store(crate::DISABLED, Ordering::Release);
        t.busy.set(was);
    });
}

/// The leak check's outcome, taken by [`leak_check_at_exit`], waiting for
/// the final snapshot.
static PENDING: SpinLock<Option<crate::leaks::Outcome>> = SpinLock::new(None);
/// The leak check ran (or is running) in this process.
static CHECKED: AtomicBool = AtomicBool::new(false);
/// The stack pointer in the `main` wrapper once `main` returned (0 while
/// it runs; see `main_wrapper`).
pub static MAIN_RETURNED_SP: AtomicU64 = AtomicU64::new(0);

fn run_check(sp: u64) -> crate::leaks::Outcome {
    if !CONFIG.get().exact {
        crate::leaks::Outcome::failed(b"leak check: needs exact mode; no check")
    } else if crate::header::is_on() {
        crate::leaks::Outcome::failed(
            b"leak check: needs the address table (OFFHEAP_HEADERS=0); no check",
        )
    } else {
        crate::leaks::check(sp)
    }
}

/// The exit handler the `main` wrapper registers (`OFFHEAP_LEAKS=1`): the
/// leak check runs when `exit` starts its handlers, after those the
/// program registered while `main` ran and before its static destructors
/// and the loader's finalizers, as LeakSanitizer's does: the program's
/// threads are still there (a libuv threadpool that a library destructor
/// joins at exit would take its threads' TLS with it).
pub extern "C" fn leak_check_at_exit() {
    if STATE.load(Ordering::Acquire) != crate::ENABLED
        || sys::getpid() != PID.load(Ordering::Relaxed)
        || crate::tls::current().busy.get()
        || CHECKED.swap(true, Ordering::AcqRel)
    {
        return;
    }
    crate::tls::TLS.with(|t| {
        let was = t.busy.replace(true);
        let here = unwind::regs().1;
        let returned = MAIN_RETURNED_SP.load(Ordering::Acquire);
        // On the thread whose `main` returned, the live frames start at
        // the wrapper's (it is above this handler's: `exit` was called
        // from below it).
        let sp = if returned > here && sys::gettid() == sys::getpid() {
            returned
        } else {
            here
        };
        let outcome = run_check(sp);
        *PENDING.lock() = Some(outcome);
        t.busy.set(was);
    });
}

/// Appends the leak check's records after the final snapshot.
fn append_leaks(l: &crate::leaks::Outcome) {
    let mut guard = W.lock();
    let w = &mut *guard;
    if w.write_failed || w.index == 0 || !w.stream.ensure() {
        return;
    }
    w.buf.clear();
    let mut s = VecSink(&mut w.buf);
    if !l.why.is_empty() {
        fmt::write_note(&mut s, l.why);
    }
    if l.entries.is_empty() {
        fmt::write_leaks(&mut s, &l.head, &[]);
    }
    for chunk in l.entries.chunks(65536) {
        fmt::write_leaks(&mut s, &l.head, chunk);
    }
    if !w.stream.append(&w.buf) {
        w.write_failed = true;
    }
}

pub extern "C" fn on_exit() {
    final_snapshot_at(Some(unwind::regs().1));
}

// ---------------------------------------------------------------------------
// fork
// ---------------------------------------------------------------------------

static FORK_LOCKED: AtomicBool = AtomicBool::new(false);

fn lock_all() {
    W.raw_lock();
    modules::TABLE.raw_lock();
    modules::UNWINDER.raw_lock();
    stacks::TABLE.raw_lock();
    live::REGIONS.raw_lock();
    for s in live::SHARD_LOCKS.iter() {
        s.0.raw_lock();
    }
    for c in unwind::CACHES.iter() {
        c.raw_lock();
    }
}

fn unlock_all() {
    for c in unwind::CACHES.iter() {
        c.raw_unlock();
    }
    for s in live::SHARD_LOCKS.iter() {
        s.0.raw_unlock();
    }
    live::REGIONS.raw_unlock();
    stacks::TABLE.raw_unlock();
    modules::UNWINDER.raw_unlock();
    modules::TABLE.raw_unlock();
    W.raw_unlock();
}

pub extern "C" fn fork_prepare() {
    if STATE.load(Ordering::Acquire) == crate::ENABLED {
        crate::tls::TLS.with(|t| {
            let was = t.busy.replace(true);
            lock_all();
            t.busy.set(was);
        });
        FORK_LOCKED.store(true, Ordering::Relaxed);
    }
}

pub extern "C" fn fork_parent() {
    if FORK_LOCKED.swap(false, Ordering::Relaxed) {
        unlock_all();
    }
}

pub extern "C" fn fork_child() {
    if !FORK_LOCKED.swap(false, Ordering::Relaxed) {
        return;
    }
    crate::tls::TLS.with(|t| t.reset_after_fork());
    let parent = PID.load(Ordering::Relaxed);
    PID.store(sys::getpid(), Ordering::Relaxed);
    PPID.store(parent, Ordering::Relaxed);
    // SAFETY: prepare took every lock and this is the only thread in the child.
    unsafe {
        let w = W.get_unchecked();
        // The parent's descriptor, unless the program replaced it.
        w.stream.close();
        w.reopened_noted = 0;
        w.index = 0;
        w.stacks_written = 0;
        w.mmap_stack.clear();
        w.last.clear();
        w.write_failed = false;
        for r in modules::TABLE.get_unchecked().recs.iter_mut() {
            r.written = false;
            r.unload_written = false;
        }
    }
    if CONFIG.get().follow_fork {
        WRITER_STARTED.store(false, Ordering::Relaxed);
        STOP.store(false, Ordering::Relaxed);
        FINAL_DONE.store(false, Ordering::Relaxed);
        CHECKED.store(false, Ordering::Relaxed);
        START_MS_BITS.store(sys::now_ms().to_bits(), Ordering::Relaxed);
        LAST_SNAP_MONO.store(sys::mono_ms(), Ordering::Relaxed);
    } else {
        STATE.store(crate::DISABLED, Ordering::Release);
    }
    unlock_all();
}
