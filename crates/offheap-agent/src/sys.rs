//! Small system helpers that never allocate: a spin lock, clocks, raw
//! syscalls, environment parsing.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use libc::{c_char, c_int, c_void};

unsafe extern "C" {
    pub fn __libc_malloc(size: usize) -> *mut c_void;
    pub fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    pub fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    pub fn __libc_free(p: *mut c_void);
    pub fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    pub fn __libc_valloc(size: usize) -> *mut c_void;
    pub fn __libc_pvalloc(size: usize) -> *mut c_void;
    pub static mut environ: *mut *mut c_char;
}

/// A spin lock that yields the CPU after a short spin. It holds no
/// thread-local state, so it is fork-safe once force-unlocked in the child.
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `locked`.
unsafe impl<T: Send> Sync for SpinLock<T> {}

pub struct Guard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> SpinLock<T> {
    pub const fn new(v: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(v),
        }
    }

    pub fn raw_lock(&self) {
        let mut spins = 0u32;
        loop {
            if !self.locked.load(Ordering::Relaxed)
                && self
                    .locked
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
            spins += 1;
            if spins < 64 {
                core::hint::spin_loop();
            } else {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
        }
    }

    pub fn try_raw_lock(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    pub fn raw_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    pub fn lock(&self) -> Guard<'_, T> {
        self.raw_lock();
        Guard { lock: self }
    }

    /// Access without locking. Only for a context that owns the lock already
    /// (the fork child handler, which took every lock in `prepare`).
    ///
    /// # Safety
    /// The caller must hold the lock (via `raw_lock`) and not alias the result.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_unchecked(&self) -> &mut T {
        // SAFETY: per the function contract.
        unsafe { &mut *self.value.get() }
    }
}

impl<T> core::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> core::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held exclusively.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.lock.raw_unlock();
    }
}

/// A value written once before the agent is enabled and read-only after.
pub struct InitCell<T>(UnsafeCell<T>);

// SAFETY: written only by the constructor (single-threaded) or a fork child
// handler before publication through the `STATE` atomic.
unsafe impl<T> Sync for InitCell<T> {}

impl<T> InitCell<T> {
    pub const fn new(v: T) -> Self {
        Self(UnsafeCell::new(v))
    }
    pub fn get(&self) -> &T {
        // SAFETY: see the type's contract: no writes after publication.
        unsafe { &*self.0.get() }
    }
    /// # Safety
    /// Only while no other thread can read the value.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: per the function contract.
        unsafe { &mut *self.0.get() }
    }
}

pub fn errno() -> c_int {
    // SAFETY: __errno_location always returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(v: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v }
}

fn clock(id: libc::clockid_t) -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts
}

/// Unix time in ms.
pub fn now_ms() -> f64 {
    let ts = clock(libc::CLOCK_REALTIME);
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

/// Monotonic ms (coarse, a few ns to read).
pub fn mono_ms() -> u64 {
    let ts = clock(libc::CLOCK_MONOTONIC_COARSE);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

pub fn mono_ns() -> u64 {
    let ts = clock(libc::CLOCK_MONOTONIC);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn getpid() -> u32 {
    // SAFETY: raw getpid has no preconditions (bypasses any libc cache).
    unsafe { libc::syscall(libc::SYS_getpid) as u32 }
}

pub fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as _,
        tv_nsec: ((ms % 1000) * 1_000_000) as _,
    };
    // SAFETY: ts is valid; a null remainder is allowed.
    unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
}

/// The value of an environment variable, as bytes, without allocating.
pub fn getenv(name: &core::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: getenv returns null or a NUL-terminated string in environ.
    unsafe {
        let p = libc::getenv(name.as_ptr());
        if p.is_null() {
            return None;
        }
        Some(core::ffi::CStr::from_ptr(p).to_bytes())
    }
}

pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

pub fn env_u64(name: &core::ffi::CStr, default: u64) -> u64 {
    getenv(name).and_then(parse_u64).unwrap_or(default)
}

pub fn env_bool(name: &core::ffi::CStr, default: bool) -> bool {
    match getenv(name) {
        Some(b"1") | Some(b"true") | Some(b"yes") => true,
        Some(b"0") | Some(b"false") | Some(b"no") => false,
        _ => default,
    }
}

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice.
        let n = unsafe { libc::write(fd, buf.as_ptr() as *const c_void, buf.len()) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Bytes mapped by [`map_anon`] and not unmapped: the agent's own memory
/// (the RSS ledger's `offheap_agent` part).
static MAPPED: AtomicU64 = AtomicU64::new(0);

pub fn mapped_bytes() -> u64 {
    MAPPED.load(Ordering::Relaxed)
}

/// Anonymous memory straight from the kernel (not through the hooks).
pub fn map_anon(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping has no preconditions.
    let p = unsafe {
        libc::syscall(
            libc::SYS_mmap,
            0usize,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1i64,
            0usize,
        )
    };
    if p < 0 {
        core::ptr::null_mut()
    } else {
        MAPPED.fetch_add(len as u64, Ordering::Relaxed);
        p as *mut u8
    }
}

/// Unmaps a mapping the agent made itself (not through [`map_anon`]).
pub fn unmap(p: *mut u8, len: usize) {
    // SAFETY: the caller passes a mapping it owns.
    unsafe { libc::syscall(libc::SYS_munmap, p, len) };
}

/// Unmaps memory that [`map_anon`] returned.
pub fn unmap_anon(p: *mut u8, len: usize) {
    unmap(p, len);
    MAPPED.fetch_sub(
        (len as u64).min(MAPPED.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
}

/// A tiny fixed-capacity string builder for notes (no allocation).
pub struct Fmt<const N: usize> {
    pub buf: [u8; N],
    pub len: usize,
}

impl<const N: usize> Fmt<N> {
    pub const fn new() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
    pub fn s(&mut self, s: &[u8]) -> &mut Self {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
        self
    }
    pub fn u(&mut self, mut v: u64) -> &mut Self {
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let t = tmp;
        self.s(&t[i..])
    }
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}
