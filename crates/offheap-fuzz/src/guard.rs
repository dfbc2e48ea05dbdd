//! What a fuzz case may not do besides panicking: allocate without bound,
//! or run for ever.
//!
//! [`Counting`] is a global allocator (the test binary installs it) that
//! counts the live bytes of each thread. [`case`] runs one input, measures
//! the peak of what it allocated, and fails when that is more than
//! [`alloc_limit`] for the input's length; an allocation that would take a
//! thread past [`HARD_CAP`] during a case is refused after the input is
//! saved (the process then aborts, as it would on a real out-of-memory). A
//! watchdog thread saves the input and aborts the process when one case
//! runs longer than [`hang_limit`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Live bytes of a thread past which an allocation during a case is refused.
pub const HARD_CAP: isize = 3 << 30;

thread_local! {
    /// Bytes this thread allocated and has not freed (frees of blocks
    /// allocated by another thread make it drift; cases are single-threaded).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// Highest `LIVE` since the last [`reset_peak`].
    static PEAK: Cell<isize> = const { Cell::new(0) };
    /// A case is running on this thread: its input and target name.
    static CASE: Cell<Option<(*const u8, usize, &'static str)>> = const { Cell::new(None) };
    /// Allocations go straight to the system allocator (while saving an
    /// input from inside the allocator).
    static BYPASS: Cell<bool> = const { Cell::new(false) };
}

/// The counting allocator: [`System`], plus per-thread accounting.
pub struct Counting;

fn account(delta: isize) -> bool {
    if BYPASS.try_with(Cell::get).unwrap_or(true) {
        return true;
    }
    let live = LIVE.try_with(|l| l.get()).unwrap_or(0) + delta;
    if delta > 0
        && live > HARD_CAP
        && let Ok(Some((ptr, len, name))) = CASE.try_with(Cell::get)
    {
        let _ = BYPASS.try_with(|b| b.set(true));
        // SAFETY: set by `case` from a slice that outlives the call.
        let input = unsafe { std::slice::from_raw_parts(ptr, len) };
        let saved = save_failure(name, "oom", input);
        eprintln!(
            "fuzz target {name}: one input allocates more than {HARD_CAP} bytes; saved to {}",
            saved.display()
        );
        let _ = BYPASS.try_with(|b| b.set(false));
        return false;
    }
    let _ = LIVE.try_with(|l| l.set(live));
    let _ = PEAK.try_with(|p| p.set(p.get().max(live)));
    true
}

// SAFETY: every call goes to `System` with the caller's arguments; the
// bookkeeping touches only const-initialised thread-locals without
// destructors, and never allocates except while `BYPASS` is set.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !account(layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !account(layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !account(new_size as isize - layout.size() as isize) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn live() -> isize {
    LIVE.with(Cell::get)
}

fn reset_peak() {
    PEAK.with(|p| p.set(live()));
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

/// Most bytes one case may have allocated at once: 64 MiB, plus 64 bytes
/// per byte of input (a parsed form several times the input is fine; one
/// out of proportion with it is a bug: a length or count field believed).
pub fn alloc_limit(input_len: usize) -> usize {
    (64 << 20) + 64 * input_len
}

/// How long one case may run before the watchdog aborts the process:
/// `OFFHEAP_FUZZ_HANG_SECS`, 60 s by default.
pub fn hang_limit() -> Duration {
    let secs = std::env::var("OFFHEAP_FUZZ_HANG_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Cases running now, for the watchdog: id, target, start, a copy of the input.
type Running = Vec<(u64, &'static str, Instant, Vec<u8>)>;
static RUNNING: Mutex<Running> = Mutex::new(Vec::new());
static NEXT_CASE: AtomicU64 = AtomicU64::new(0);

fn watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let limit = hang_limit();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
                for (_, name, start, input) in running.iter() {
                    if start.elapsed() > limit {
                        let saved = save_failure(name, "hang", input);
                        eprintln!(
                            "fuzz target {name}: one input ran for more than {limit:?}; saved to {}",
                            saved.display()
                        );
                        std::process::abort();
                    }
                }
            }
        });
    });
}

/// Runs `f` on `input` as one case of target `name`: what `f` returned, or
/// Err when it panicked or allocated more than [`alloc_limit`] (the panic
/// itself is caught).
pub fn case(name: &'static str, input: &[u8], f: fn(&[u8]) -> bool) -> Result<bool, String> {
    watchdog();
    let id = NEXT_CASE.fetch_add(1, Ordering::Relaxed);
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).push((
        id,
        name,
        Instant::now(),
        input.to_vec(),
    ));
    CASE.with(|c| c.set(Some((input.as_ptr(), input.len(), name))));
    let before = live();
    reset_peak();
    let result = std::panic::catch_unwind(|| f(input));
    let used = (peak() - before).max(0) as usize;
    CASE.with(|c| c.set(None));
    {
        let mut r = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = r.iter().position(|e| e.0 == id) {
            r.swap_remove(i);
        }
    }
    match result {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(format!("panicked: {msg}"))
        }
        Ok(_) if used > alloc_limit(input.len()) => Err(format!(
            "allocated {used} bytes at once for {} bytes of input (limit {})",
            input.len(),
            alloc_limit(input.len())
        )),
        Ok(accepted) => Ok(accepted),
    }
}

/// `tests/__fuzz__/<name>`: the target's corpus and crashes.
pub fn target_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("__fuzz__")
        .join(name)
}

/// Writes a failing input to `tests/__fuzz__/<name>/crashes/<kind>-<hash>`
/// (replayed first by every later run) and returns the path.
pub fn save_failure(name: &str, kind: &str, input: &[u8]) -> PathBuf {
    let dir = target_dir(name).join("crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{:016x}", crate::mutate::hash(input)));
    let _ = std::fs::write(&path, input);
    path
}
