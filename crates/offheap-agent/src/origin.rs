//! The JS that queued off-thread work: libuv threadpool work (zlib, crypto,
//! fs, dns, N-API async work) runs on a worker thread with no JS on its
//! stack. Each piece of work carries the stack of the thread that queued it,
//! and allocations made while it runs are stitched under that stack.
//!
//! # Mechanism
//! libuv has two doors into its threadpool: `uv_queue_work` (zlib, crypto
//! jobs, N-API async work, addons) and the internal `uv__work_submit` (fs,
//! dns, `uv_random`); in the official Node builds `uv_queue_work` inlines
//! the latter. Node links libuv statically, and its own calls are direct
//! calls inside the executable, so interposing the symbols (LD_PRELOAD)
//! would see none of them. Instead, at start-up (single-threaded, in the
//! constructor), the agent finds both functions by name in the symbol
//! tables of the module that defines `uv_queue_work` (the executable's
//! `.symtab`, or libuv's), and patches their first instruction(s) with a
//! `jmp` to a hook. The displaced instructions are relocated (iced-x86)
//! into a trampoline page mapped within ±2 GiB of the function, followed by
//! a jump back, so the hook calls the original through the trampoline.
//!
//! The hook captures the submitting thread's stack (native and JS frames,
//! like an allocation sample), interns it, and records `(work, done,
//! origin)` under the request's address in a fixed table; it then submits
//! the work with its own `work`/`done` callbacks. On the worker, the `work`
//! wrapper sets the thread's origin while the original callback runs; the
//! `done` wrapper (on the loop thread, also for cancelled work) removes the
//! entry and calls the original. The request's own fields are never
//! touched.
//!
//! # Limits
//! - x86-64 only; the displaced instructions must be straight-line code
//!   or conditional branches out of them (re-targeted from the trampoline),
//!   else the function is left alone.
//! - `uv__work_submit` needs a symbol table (official Node builds keep
//!   `.symtab`); a stripped libuv gets only `uv_queue_work`.
//! - A full table (more than `SLOTS` pieces of work queued at once) means
//!   the extra work runs without origin, never wrongly attributed.
//! - Work queued before the agent started (none: it starts first) or by a
//!   libuv linked privately into an addon is not covered.

use crate::sys;
use crate::tls;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use libc::{c_int, c_void};

type WorkCb = unsafe extern "C" fn(*mut c_void);
type DoneCb = unsafe extern "C" fn(*mut c_void, c_int);
type QueueWorkFn =
    unsafe extern "C" fn(*mut c_void, *mut c_void, Option<WorkCb>, Option<DoneCb>) -> c_int;
type WorkSubmitFn =
    unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, Option<WorkCb>, Option<DoneCb>);

/// Trampolines to the original functions (0: not hooked).
static QUEUE_WORK: AtomicUsize = AtomicUsize::new(0);
static WORK_SUBMIT: AtomicUsize = AtomicUsize::new(0);

/// What `install` did, for the stream's configuration note.
pub static STATUS: AtomicU32 = AtomicU32::new(0);
pub const HOOKED_QUEUE_WORK: u32 = 1;
pub const HOOKED_WORK_SUBMIT: u32 = 2;
pub const FAILED: u32 = 4;
/// Work submitted without origin because the table was full.
pub static OVERFLOW: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// The table of queued work
// ---------------------------------------------------------------------------

const SLOTS: usize = 1 << 14;
/// Slots probed from a key's home slot (a key lives in one of them).
const WINDOW: usize = 32;

struct Entry {
    work: AtomicUsize,
    done: AtomicUsize,
    origin: AtomicU32,
}

#[allow(clippy::declare_interior_mutable_const)]
const NO_KEY: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const NO_ENTRY: Entry = Entry {
    work: AtomicUsize::new(0),
    done: AtomicUsize::new(0),
    origin: AtomicU32::new(0),
};
/// Request addresses (0: free); the entry of `KEYS[i]` is `ENTRIES[i]`.
static KEYS: [AtomicUsize; SLOTS] = [NO_KEY; SLOTS];
static ENTRIES: [Entry; SLOTS] = [NO_ENTRY; SLOTS];

fn home(key: usize) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & (SLOTS - 1)
}

/// Records queued work under `key`; false if its window is full.
///
/// The entry is complete before the work is submitted, and libuv's queue
/// lock publishes it to the worker that runs the work.
fn insert(key: usize, work: usize, done: usize, origin: u32) -> bool {
    let h = home(key);
    for k in 0..WINDOW {
        let i = (h + k) & (SLOTS - 1);
        if KEYS[i]
            .compare_exchange(0, key, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            let e = &ENTRIES[i];
            e.work.store(work, Ordering::Relaxed);
            e.done.store(done, Ordering::Relaxed);
            e.origin.store(origin, Ordering::Release);
            return true;
        }
    }
    false
}

/// The slot of `key`. Every slot of the window is looked at: a free slot
/// does not end the probe, since keys are removed in any order.
fn find(key: usize) -> Option<usize> {
    let h = home(key);
    (0..WINDOW)
        .map(|k| (h + k) & (SLOTS - 1))
        .find(|&i| KEYS[i].load(Ordering::Acquire) == key)
}

// ---------------------------------------------------------------------------
// The hooks
// ---------------------------------------------------------------------------

/// The submitting thread's stack, interned (1 + its id), or 0.
fn capture_origin() -> u32 {
    let t = tls::current();
    if t.busy.get() || !crate::enabled() {
        return 0;
    }
    t.busy.set(true);
    let saved = sys::errno();
    crate::writer::maybe_spawn();
    let start = crate::unwind::regs();
    let id = crate::stack_of(
        t,
        start,
        offheap_format::native::AllocKind::Malloc,
        0,
        0,
        crate::CONFIG.get().max_depth,
    );
    sys::set_errno(saved);
    t.busy.set(false);
    id.map_or(0, |id| id + 1)
}

/// Runs queued work on a worker thread with its origin set.
unsafe extern "C" fn work_wrapper(req: *mut c_void) {
    let Some(i) = find(req as usize) else {
        // Cannot happen: the wrapper is only submitted with an entry.
        return;
    };
    let e = &ENTRIES[i];
    let origin = e.origin.load(Ordering::Acquire);
    let work = e.work.load(Ordering::Relaxed);
    let t = tls::current();
    let outer = t.origin.replace(origin);
    // SAFETY: `work` is the non-null callback the caller submitted, called
    // with the request it was submitted with.
    unsafe { core::mem::transmute::<usize, WorkCb>(work)(req) };
    t.origin.set(outer);
}

/// Removes the entry and calls the original completion callback (on the
/// loop thread; also for cancelled work, whose `work` never ran).
unsafe extern "C" fn done_wrapper(req: *mut c_void, status: c_int) {
    let Some(i) = find(req as usize) else {
        return;
    };
    let done = ENTRIES[i].done.load(Ordering::Relaxed);
    KEYS[i].store(0, Ordering::Release);
    if done != 0 {
        // SAFETY: the caller's completion callback, with its request.
        unsafe { core::mem::transmute::<usize, DoneCb>(done)(req, status) };
    }
}

/// `uv_queue_work(loop, req, work_cb, after_work_cb)`.
unsafe extern "C" fn hook_queue_work(
    lp: *mut c_void,
    req: *mut c_void,
    work: Option<WorkCb>,
    done: Option<DoneCb>,
) -> c_int {
    // SAFETY: QUEUE_WORK holds the trampoline to the original function.
    let orig =
        unsafe { core::mem::transmute::<usize, QueueWorkFn>(QUEUE_WORK.load(Ordering::Relaxed)) };
    let Some(w) = work else {
        // SAFETY: the caller's arguments, unchanged (libuv rejects them).
        return unsafe { orig(lp, req, work, done) };
    };
    let origin = capture_origin();
    if origin == 0
        || !insert(
            req as usize,
            w as usize,
            done.map_or(0, |d| d as usize),
            origin,
        )
    {
        if origin != 0 {
            OVERFLOW.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { orig(lp, req, work, done) };
    }
    let t = tls::current();
    t.queuing.set(true);
    // SAFETY: the same request, with callbacks that call the caller's.
    let r = unsafe { orig(lp, req, Some(work_wrapper), Some(done_wrapper)) };
    t.queuing.set(false);
    if r != 0
        && let Some(i) = find(req as usize)
    {
        // Refused: no callback will run.
        KEYS[i].store(0, Ordering::Release);
    }
    r
}

/// `uv__work_submit(loop, w, kind, work, done)` (libuv-internal).
unsafe extern "C" fn hook_work_submit(
    lp: *mut c_void,
    w: *mut c_void,
    kind: c_int,
    work: Option<WorkCb>,
    done: Option<DoneCb>,
) {
    // SAFETY: WORK_SUBMIT holds the trampoline to the original function.
    let orig =
        unsafe { core::mem::transmute::<usize, WorkSubmitFn>(WORK_SUBMIT.load(Ordering::Relaxed)) };
    let origin = match (work, done) {
        // Reached from the uv_queue_work hook: that request has its origin.
        _ if tls::current().queuing.get() => 0,
        (Some(_), Some(_)) => capture_origin(),
        _ => 0,
    };
    if origin != 0
        && let (Some(wk), Some(dn)) = (work, done)
        && insert(w as usize, wk as usize, dn as usize, origin)
    {
        // SAFETY: the same work item, with callbacks that call the caller's.
        return unsafe { orig(lp, w, kind, Some(work_wrapper), Some(done_wrapper)) };
    }
    if origin != 0 {
        OVERFLOW.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { orig(lp, w, kind, work, done) }
}

// ---------------------------------------------------------------------------
// Finding and patching the functions
// ---------------------------------------------------------------------------

/// The load bias and path of the module containing `addr`.
struct ModuleOf {
    addr: u64,
    bias: u64,
    /// NUL-terminated; empty for the main program.
    path: [u8; 4096],
}

unsafe extern "C" fn module_of_cb(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info; data is our ModuleOf.
    unsafe {
        let m = &mut *(data as *mut ModuleOf);
        let info = &*info;
        for k in 0..info.dlpi_phnum as usize {
            let ph = &*info.dlpi_phdr.add(k);
            if ph.p_type != libc::PT_LOAD {
                continue;
            }
            let lo = info.dlpi_addr.wrapping_add(ph.p_vaddr);
            if m.addr >= lo && m.addr < lo.wrapping_add(ph.p_memsz) {
                m.bias = info.dlpi_addr;
                if !info.dlpi_name.is_null() {
                    let name = core::ffi::CStr::from_ptr(info.dlpi_name).to_bytes();
                    let n = name.len().min(m.path.len() - 1);
                    m.path[..n].copy_from_slice(&name[..n]);
                    m.path[n] = 0;
                }
                return 1;
            }
        }
    }
    0
}

/// A read-only mapping of a whole file.
struct Mapped {
    p: *mut u8,
    len: usize,
}

impl Mapped {
    fn open(path: &[u8]) -> Option<Mapped> {
        // SAFETY: a NUL-terminated path; the descriptor is closed before
        // returning (the mapping stays valid without it).
        unsafe {
            let fd = libc::open(
                path.as_ptr() as *const libc::c_char,
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd < 0 {
                return None;
            }
            let mut st: libc::stat = core::mem::zeroed();
            let ok = libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG;
            let len = st.st_size as usize;
            let p = if ok && len > 0 {
                libc::syscall(
                    libc::SYS_mmap,
                    0usize,
                    len,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE,
                    fd as i64,
                    0usize,
                )
            } else {
                -1
            };
            libc::close(fd);
            (p > 0).then_some(Mapped {
                p: p as *mut u8,
                len,
            })
        }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is readable for `len` bytes while self lives.
        unsafe { core::slice::from_raw_parts(self.p, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        sys::unmap(self.p, self.len);
    }
}

/// Hooks `uv_queue_work` and `uv__work_submit` where they are defined.
/// Called once, by the constructor, before any other thread exists.
pub fn install() {
    // SAFETY: dlsym on the global scope with a NUL-terminated name.
    let qw = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"uv_queue_work".as_ptr()) } as u64;
    if qw == 0 {
        return; // not a libuv program
    }
    let mut m = ModuleOf {
        addr: qw,
        bias: 0,
        path: [0; 4096],
    };
    // SAFETY: our callback only reads the info it is given.
    unsafe {
        libc::dl_iterate_phdr(Some(module_of_cb), &mut m as *mut ModuleOf as *mut c_void);
    }
    let path: &[u8] = if m.path[0] == 0 {
        b"/proc/self/exe\0"
    } else {
        &m.path
    };
    let mut submit = 0u64;
    if let Some(file) = Mapped::open(path)
        && let Some(elf) = offheap_format::elf::Elf::parse(file.bytes())
    {
        // The symbol table must agree with the loader about uv_queue_work.
        let agrees = elf
            .symbol(b"uv_queue_work")
            .is_some_and(|s| s.value.wrapping_add(m.bias) == qw);
        if agrees
            && let Some(s) = elf.symbol_in(offheap_format::elf::SHT_SYMTAB, b"uv__work_submit")
            && s.kind == offheap_format::elf::STT_FUNC
        {
            submit = s.value.wrapping_add(m.bias);
        }
    }
    let Some(mut page) = Trampolines::near(qw) else {
        STATUS.fetch_or(FAILED, Ordering::Relaxed);
        return;
    };
    let mut status = 0;
    if let Some(t) = page.hook(qw, hook_queue_work as *const () as u64) {
        QUEUE_WORK.store(t as usize, Ordering::Relaxed);
        status |= HOOKED_QUEUE_WORK;
    }
    if submit != 0
        && let Some(t) = page.hook(submit, hook_work_submit as *const () as u64)
    {
        WORK_SUBMIT.store(t as usize, Ordering::Relaxed);
        status |= HOOKED_WORK_SUBMIT;
    }
    page.seal();
    if status == 0 {
        status = FAILED;
    }
    STATUS.store(status, Ordering::Relaxed);
}

const PAGE: usize = 4096;
const JMP_REL32: usize = 5;

/// A page of trampolines within ±2 GiB of the functions it serves.
struct Trampolines {
    page: *mut u8,
    used: usize,
}

impl Trampolines {
    /// Maps a page within rel32 reach of `addr`, in the first free megabyte
    /// below it (so below its module, whose pages are taken; never above
    /// the program: that is where the brk heap grows).
    fn near(addr: u64) -> Option<Trampolines> {
        const STEP: u64 = 1 << 20;
        let mut hint = (addr & !(STEP - 1)).checked_sub(STEP)?;
        let lowest = addr.saturating_sub((1 << 31) - 2 * STEP).max(1 << 20);
        while hint >= lowest {
            // SAFETY: a fresh anonymous mapping at a free address (the
            // kernel refuses one that is taken, with MAP_FIXED_NOREPLACE).
            let p = unsafe {
                libc::syscall(
                    libc::SYS_mmap,
                    hint,
                    PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                    -1i64,
                    0usize,
                )
            };
            if p > 0 {
                let p = p as u64;
                if p.abs_diff(addr) < (1 << 31) - 2 * STEP {
                    return Some(Trampolines {
                        page: p as *mut u8,
                        used: 0,
                    });
                }
                // An old kernel took the hint as a hint only.
                sys::unmap(p as *mut u8, PAGE);
            }
            hint -= STEP;
        }
        None
    }

    fn put(&mut self, code: &[u8]) -> Option<u64> {
        if self.used + code.len() > PAGE {
            return None;
        }
        let at = self.page as u64 + self.used as u64;
        // SAFETY: within our writable page.
        unsafe {
            core::ptr::copy_nonoverlapping(code.as_ptr(), self.page.add(self.used), code.len())
        };
        self.used = (self.used + code.len() + 15) & !15;
        Some(at)
    }

    /// Patches `func` to jump to `hook`; returns the address that runs
    /// the original function.
    fn hook(&mut self, func: u64, hook: u64) -> Option<u64> {
        // A stub that reaches the hook from anywhere: jmp [rip+0]; .quad hook.
        let mut stub = [0u8; 14];
        stub[..6].copy_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
        stub[6..].copy_from_slice(&hook.to_le_bytes());
        let stub_at = self.put(&stub)?;
        let tramp_at = self.page as u64 + self.used as u64;
        let (code, moved) = relocate(func, tramp_at)?;
        if self.put(&code)? != tramp_at {
            return None;
        }
        let rel = i32::try_from(stub_at as i64 - (func as i64 + JMP_REL32 as i64)).ok()?;
        let mut patch = [0xccu8; 16];
        patch[0] = 0xe9;
        patch[1..5].copy_from_slice(&rel.to_le_bytes());
        write_code(func, &patch[..moved])?;
        Some(tramp_at)
    }

    /// Makes the page executable and read-only.
    fn seal(self) {
        // SAFETY: our own page.
        unsafe {
            libc::mprotect(
                self.page as *mut c_void,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
            )
        };
    }
}

/// The instructions covering the first 5 bytes of `func`, re-encoded to run
/// at `at`, followed by a jump back to the rest of `func`; and how many
/// bytes of `func` they covered. `None` unless they are straight-line code
/// or conditional branches that leave the displaced bytes.
fn relocate(func: u64, at: u64) -> Option<(Vec<u8>, usize)> {
    use iced_x86::{
        BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
        InstructionBlock,
    };
    // SAFETY: the function's code is mapped and readable; 32 bytes stay
    // within it or the text that follows.
    let bytes = unsafe { core::slice::from_raw_parts(func as *const u8, 32) };
    let mut dec = Decoder::with_ip(64, bytes, func, DecoderOptions::NONE);
    let mut instrs = Vec::new();
    let mut len = 0usize;
    while len < JMP_REL32 {
        let i = dec.decode();
        // Straight-line code, or a conditional branch (an early-return
        // test, as Node 24's `uv_queue_work` starts with), which the
        // encoder re-targets from the trampoline.
        let movable = match i.flow_control() {
            FlowControl::Next => true,
            FlowControl::ConditionalBranch => i.is_jcc_short_or_near(),
            _ => false,
        };
        if i.is_invalid() || !movable {
            return None;
        }
        len += i.len();
        instrs.push(i);
    }
    // A branch back into the displaced bytes would land in the patch.
    if instrs.iter().any(|i| {
        i.is_jcc_short_or_near()
            && i.near_branch_target() > func
            && i.near_branch_target() < func + len as u64
    }) {
        return None;
    }
    instrs.push(Instruction::with_branch(Code::Jmp_rel32_64, func + len as u64).ok()?);
    let r = BlockEncoder::encode(
        64,
        InstructionBlock::new(&instrs, at),
        BlockEncoderOptions::NONE,
    )
    .ok()?;
    Some((r.code_buffer, len))
}

/// Writes `code` over the text at `at` (single-threaded start-up).
fn write_code(at: u64, code: &[u8]) -> Option<()> {
    let lo = at & !(PAGE as u64 - 1);
    let hi = (at + code.len() as u64 + PAGE as u64 - 1) & !(PAGE as u64 - 1);
    let len = (hi - lo) as usize;
    // SAFETY: the pages of a function of a loaded module; made writable
    // just for the copy, then executable and read-only again.
    unsafe {
        if libc::mprotect(
            lo as *mut c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ) != 0
        {
            return None;
        }
        core::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len());
        libc::mprotect(lo as *mut c_void, len, libc::PROT_READ | libc::PROT_EXEC);
    }
    Some(())
}
