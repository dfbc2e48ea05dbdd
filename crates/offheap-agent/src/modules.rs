//! The module table (dl_iterate_phdr) and the framehop unwinder built from it.
//!
//! Rules: `dl_iterate_phdr` is only called with no agent lock held; the
//! unwind data of modules that can be unloaded is copied (inside the
//! iteration callback, while the loader guarantees the module is mapped), so
//! a later `dlclose` cannot leave the unwinder reading unmapped memory.
//! Modules present when the agent starts are pinned (RTLD_NODELETE) and
//! referenced in place.

use crate::sys::{self, SpinLock, map_anon, unmap_anon};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use framehop::{
    ExplicitModuleSectionInfo, MayAllocateDuringUnwind, Module, Unwinder, UnwinderNative,
};
use libc::{c_char, c_int, c_void, dl_phdr_info, size_t};
use std::sync::Arc;

/// Unwind section bytes: borrowed from a pinned module or an owned copy.
pub enum Bytes {
    Static(&'static [u8]),
    Owned(*mut u8, usize),
}

// SAFETY: Owned is a private read-only copy; Static points into a pinned module.
unsafe impl Send for Bytes {}
// SAFETY: as above; the bytes are never written after creation.
unsafe impl Sync for Bytes {}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Static(&[])
    }
}

impl core::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Static(s) => s,
            // SAFETY: (p, n) is a live mapping owned by self.
            Bytes::Owned(p, n) => unsafe { core::slice::from_raw_parts(*p, *n) },
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Bytes::Owned(p, n) = *self {
            unmap_anon(p, n);
        }
    }
}

impl Bytes {
    /// Copies `len` bytes at `src` into a private mapping.
    ///
    /// # Safety
    /// `src..src+len` must be readable.
    unsafe fn copy(src: *const u8, len: usize) -> Option<Bytes> {
        if len == 0 {
            return Some(Bytes::default());
        }
        let p = map_anon(len);
        if p.is_null() {
            return None;
        }
        // SAFETY: both ranges are valid for len bytes and do not overlap.
        unsafe { core::ptr::copy_nonoverlapping(src, p, len) };
        Some(Bytes::Owned(p, len))
    }
}

pub type Unw = UnwinderNative<Bytes, MayAllocateDuringUnwind>;

/// An unwinder and the sorted, disjoint address ranges of the modules it
/// holds unwind data for. An address outside every range gets framehop's
/// fallback rule (a frame-pointer step), which `unwind::capture` performs
/// itself without going through framehop's rule cache.
pub struct UnwSnap {
    pub unw: Unw,
    ranges: Vec<(u64, u64)>,
    /// Distinct for every snapshot (never 0).
    pub generation: u64,
}

static SNAP_GENERATION: AtomicU64 = AtomicU64::new(0);
/// Generation of the snapshot in `UNWINDER` (0: none yet).
pub static SNAP_CURRENT: AtomicU64 = AtomicU64::new(0);

impl UnwSnap {
    /// Where the lookup address `a` is: `(true, range)` if framehop has a
    /// module covering it (`range` is the module's), `(false, gap)` if not
    /// (`gap` is the space between modules that holds `a`).
    #[inline]
    pub fn classify(&self, a: u64) -> (bool, (u64, u64)) {
        let r = &self.ranges;
        let i = r.partition_point(|x| x.1 <= a);
        if i < r.len() && r[i].0 <= a {
            return (true, r[i]);
        }
        let lo = if i > 0 { r[i - 1].1 } else { 0 };
        let hi = if i < r.len() { r[i].0 } else { u64::MAX };
        (false, (lo, hi))
    }
}

pub struct ModRec {
    pub key: (u64, u64),
    pub path: Vec<u8>,
    pub build_id: Vec<u8>,
    pub bias: u64,
    pub ranges: Vec<(u64, u64, u64)>,
    pub generation: u32,
    pub loaded_ms: f64,
    pub unloaded_ms: Option<f64>,
    pub unload_generation: u32,
    pub written: bool,
    pub unload_written: bool,
    module: Option<Module<Bytes>>,
}

pub struct Table {
    pub recs: Vec<ModRec>,
    pub generation: u32,
    adds: u64,
    subs: u64,
}

pub static TABLE: SpinLock<Table> = SpinLock::new(Table {
    recs: Vec::new(),
    generation: 0,
    adds: 0,
    subs: 0,
});
pub static UNWINDER: SpinLock<Option<Arc<UnwSnap>>> = SpinLock::new(None);

/// Address range of the agent itself (its frames are skipped).
pub static AGENT_LO: AtomicU64 = AtomicU64::new(0);
pub static AGENT_HI: AtomicU64 = AtomicU64::new(0);

/// Allocation wrappers whose frames are skipped at the top of a stack
/// (libstdc++'s operator new family): (start, end) pairs.
pub const MAX_WRAPPERS: usize = 8;
#[allow(clippy::declare_interior_mutable_const)]
const ZZ: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));
pub static WRAPPERS: [(AtomicU64, AtomicU64); MAX_WRAPPERS] = [ZZ; MAX_WRAPPERS];
pub static WRAPPER_COUNT: AtomicUsize = AtomicUsize::new(0);

static LAST_ADDS: AtomicU64 = AtomicU64::new(u64::MAX);
/// Unwind the main program by frame pointers only (see `init`).
static MAIN_FP_ONLY: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static LAST_SUBS: AtomicU64 = AtomicU64::new(u64::MAX);

struct Scanned {
    key: (u64, u64),
    path: Vec<u8>,
    build_id: Vec<u8>,
    bias: u64,
    ranges: Vec<(u64, u64, u64)>,
    avma: (u64, u64),
    module: Option<Module<Bytes>>,
    known: bool,
}

struct ScanCtx {
    known: Vec<(u64, u64)>,
    pinned: Vec<(u64, u64)>,
    copy_unpinned: bool,
    out: Vec<Scanned>,
    adds: u64,
    subs: u64,
}

fn key_of(info: &dl_phdr_info) -> (u64, u64) {
    let mut first = u64::MAX;
    for ph in phdrs(info) {
        if ph.p_type == libc::PT_LOAD {
            first = first.min(ph.p_vaddr);
        }
    }
    (info.dlpi_addr, first)
}

fn phdrs(info: &dl_phdr_info) -> &[libc::Elf64_Phdr] {
    if info.dlpi_phdr.is_null() {
        return &[];
    }
    // SAFETY: the loader gives phnum valid program headers.
    unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
}

fn name_of(info: &dl_phdr_info) -> &[u8] {
    if info.dlpi_name.is_null() {
        return b"";
    }
    // SAFETY: dlpi_name is a NUL-terminated string owned by the loader.
    unsafe { core::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
}

/// Reads the GNU build-id from the module's PT_NOTE segments.
fn build_id(info: &dl_phdr_info) -> Vec<u8> {
    for ph in phdrs(info) {
        if ph.p_type != libc::PT_NOTE {
            continue;
        }
        let base = info.dlpi_addr.wrapping_add(ph.p_vaddr) as *const u8;
        let len = ph.p_memsz as usize;
        let mut off = 0usize;
        while off + 12 <= len {
            // SAFETY: the note segment is mapped (inside a PT_LOAD) and we stay within p_memsz.
            let (namesz, descsz, ty) = unsafe {
                (
                    (base.add(off) as *const u32).read_unaligned() as usize,
                    (base.add(off + 4) as *const u32).read_unaligned() as usize,
                    (base.add(off + 8) as *const u32).read_unaligned(),
                )
            };
            let name_off = off + 12;
            let desc_off = name_off + ((namesz + 3) & !3);
            let next = desc_off + ((descsz + 3) & !3);
            if next > len {
                break;
            }
            // SAFETY: checked to be within the segment just above.
            let name = unsafe { core::slice::from_raw_parts(base.add(name_off), namesz) };
            if ty == 3 && name == b"GNU\0" && descsz <= 64 {
                // SAFETY: as above.
                return unsafe { core::slice::from_raw_parts(base.add(desc_off), descsz) }.to_vec();
            }
            off = next;
        }
    }
    Vec::new()
}

/// Decodes the `eh_frame_ptr` of an `.eh_frame_hdr` at `hdr` (runtime address).
///
/// # Safety
/// `hdr..hdr+16` must be readable.
unsafe fn eh_frame_ptr(hdr: u64) -> Option<u64> {
    let p = hdr as *const u8;
    // SAFETY: per the function contract.
    let (version, enc) = unsafe { (*p, *p.add(1)) };
    if version != 1 {
        return None;
    }
    let field = hdr + 4;
    // SAFETY: per the function contract (at most 8 bytes after offset 4).
    let v = unsafe {
        match enc & 0x0f {
            0x03 => (field as *const u32).read_unaligned() as u64,
            0x0b => (field as *const i32).read_unaligned() as i64 as u64,
            0x04 | 0x0c => (field as *const u64).read_unaligned(),
            _ => return None,
        }
    };
    match enc & 0x70 {
        0x00 => Some(v),
        0x10 => Some(field.wrapping_add(v)),
        0x30 => Some(hdr.wrapping_add(v)),
        _ => None,
    }
}

/// Length of the `.eh_frame` section starting at `start`, walking its
/// entries up to the zero terminator, bounded by `limit`.
///
/// # Safety
/// `start..limit` must be readable.
unsafe fn eh_frame_len(start: u64, limit: u64) -> u64 {
    let mut p = start;
    while p + 4 <= limit {
        // SAFETY: p+4 <= limit.
        let len = unsafe { (p as *const u32).read_unaligned() } as u64;
        if len == 0 {
            return p + 4 - start;
        }
        let step = if len == 0xffff_ffff {
            if p + 12 > limit {
                break;
            }
            // SAFETY: p+12 <= limit.
            12 + unsafe { ((p + 4) as *const u64).read_unaligned() }
        } else {
            4 + len
        };
        match p.checked_add(step) {
            Some(n) if n <= limit => p = n,
            _ => break,
        }
    }
    limit.saturating_sub(start)
}

unsafe extern "C" fn scan_cb(info: *mut dl_phdr_info, _size: size_t, data: *mut c_void) -> c_int {
    // SAFETY: dl_iterate_phdr passes a valid info, and data is our ScanCtx.
    let (info, ctx) = unsafe { (&*info, &mut *(data as *mut ScanCtx)) };
    ctx.adds = info.dlpi_adds;
    ctx.subs = info.dlpi_subs;
    let key = key_of(info);
    if key.1 == u64::MAX {
        return 0;
    }
    let mut ranges = Vec::new();
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    let mut eh_hdr: Option<(u64, u64)> = None;
    for ph in phdrs(info) {
        if ph.p_type == libc::PT_LOAD {
            let s = info.dlpi_addr.wrapping_add(ph.p_vaddr);
            let e = s.wrapping_add(ph.p_memsz);
            ranges.push((s, e, ph.p_offset));
            lo = lo.min(s);
            hi = hi.max(e);
        } else if ph.p_type == libc::PT_GNU_EH_FRAME {
            eh_hdr = Some((ph.p_vaddr, ph.p_memsz));
        }
    }
    let known = ctx.known.contains(&key);
    let mut module = None;
    if !known {
        let bias = info.dlpi_addr;
        let main = name_of(info).is_empty();
        let pinned = ctx.pinned.contains(&key) || main;
        // A main program built with frame pointers everywhere (node) is
        // unwound by frame pointers: correct at every call site, and much
        // cheaper than DWARF for its thousands of distinct return addresses.
        let fp_only = main && MAIN_FP_ONLY.load(Ordering::Relaxed);
        if !fp_only && (pinned || ctx.copy_unpinned) {
            module = (|| {
                let (hdr_svma, hdr_len) = eh_hdr?;
                let hdr_avma = bias.wrapping_add(hdr_svma);
                if hdr_len < 8 {
                    return None;
                }
                // SAFETY: the header segment is mapped while the callback runs.
                let ehf_avma = unsafe { eh_frame_ptr(hdr_avma)? };
                let seg_end = ranges.iter().find(|r| ehf_avma >= r.0 && ehf_avma < r.1)?.1;
                // SAFETY: ehf_avma..seg_end lies inside a mapped PT_LOAD.
                let ehf_len = unsafe { eh_frame_len(ehf_avma, seg_end) };
                let (hdr_bytes, ehf_bytes) = if pinned {
                    // SAFETY: pinned modules stay mapped for the life of the process.
                    unsafe {
                        (
                            Bytes::Static(core::slice::from_raw_parts(
                                hdr_avma as *const u8,
                                hdr_len as usize,
                            )),
                            Bytes::Static(core::slice::from_raw_parts(
                                ehf_avma as *const u8,
                                ehf_len as usize,
                            )),
                        )
                    }
                } else {
                    // SAFETY: mapped while the callback runs (the loader holds its lock).
                    unsafe {
                        (
                            Bytes::copy(hdr_avma as *const u8, hdr_len as usize)?,
                            Bytes::copy(ehf_avma as *const u8, ehf_len as usize)?,
                        )
                    }
                };
                let ehf_svma = ehf_avma.wrapping_sub(bias);
                let si = ExplicitModuleSectionInfo {
                    base_svma: 0,
                    eh_frame_svma: Some(ehf_svma..ehf_svma + ehf_len),
                    eh_frame: Some(ehf_bytes),
                    eh_frame_hdr_svma: Some(hdr_svma..hdr_svma + hdr_len),
                    eh_frame_hdr: Some(hdr_bytes),
                    ..Default::default()
                };
                Some(Module::new(String::new(), lo..hi, bias, si))
            })();
        }
    }
    ctx.out.push(Scanned {
        key,
        path: name_of(info).to_vec(),
        build_id: if known { Vec::new() } else { build_id(info) },
        bias: info.dlpi_addr,
        ranges,
        avma: (lo, hi),
        module,
        known,
    });
    0
}

unsafe extern "C" fn counts_cb(info: *mut dl_phdr_info, _size: size_t, data: *mut c_void) -> c_int {
    // SAFETY: valid info from the loader; data is our (u64, u64).
    let (info, out) = unsafe { (&*info, &mut *(data as *mut (u64, u64))) };
    *out = (info.dlpi_adds, info.dlpi_subs);
    1
}

/// (adds, subs) counters of the loader: cheap change detection.
fn loader_counts() -> (u64, u64) {
    let mut c = (0u64, 0u64);
    // SAFETY: the callback matches the expected signature and stops after one object.
    unsafe { libc::dl_iterate_phdr(Some(counts_cb), &mut c as *mut _ as *mut c_void) };
    c
}

fn exe_path() -> Vec<u8> {
    let mut buf = [0u8; 4096];
    // SAFETY: buf is writable for its length.
    let n = unsafe {
        libc::readlink(
            c"/proc/self/exe".as_ptr(),
            buf.as_mut_ptr() as *mut c_char,
            buf.len(),
        )
    };
    if n > 0 {
        buf[..n as usize].to_vec()
    } else {
        Vec::new()
    }
}

/// Rescans loaded modules if the loader's counters changed (or `force`).
/// Must be called with no agent lock held.
pub fn refresh(force: bool) {
    let (adds, subs) = loader_counts();
    if !force
        && LAST_ADDS.load(Ordering::Relaxed) == adds
        && LAST_SUBS.load(Ordering::Relaxed) == subs
    {
        return;
    }
    let known: Vec<(u64, u64)> = {
        let t = TABLE.lock();
        t.recs
            .iter()
            .filter(|r| r.unloaded_ms.is_none())
            .map(|r| r.key)
            .collect()
    };
    let mut ctx = ScanCtx {
        known,
        pinned: Vec::new(),
        copy_unpinned: true,
        out: Vec::new(),
        adds: 0,
        subs: 0,
    };
    // SAFETY: scan_cb matches the callback type; ctx outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(scan_cb), &mut ctx as *mut _ as *mut c_void) };
    merge(ctx);
}

fn merge(ctx: ScanCtx) {
    let now = sys::now_ms();
    let mut new_stdcxx = false;
    let unw = {
        let mut t = TABLE.lock();
        if !t.recs.is_empty() && (ctx.adds < t.adds || ctx.subs < t.subs) {
            // A newer scan was merged already.
            return;
        }
        t.adds = ctx.adds;
        t.subs = ctx.subs;
        let mut changed = t.recs.is_empty();
        let gen_next = t.generation + 1;
        for r in t.recs.iter_mut() {
            if r.unloaded_ms.is_none() && !ctx.out.iter().any(|s| s.key == r.key) {
                r.unloaded_ms = Some(now);
                r.unload_generation = gen_next;
                r.module = None;
                changed = true;
            }
        }
        for s in ctx.out {
            if s.known {
                continue;
            }
            if t.recs
                .iter()
                .any(|r| r.key == s.key && r.unloaded_ms.is_none())
            {
                continue;
            }
            let path = if s.path.is_empty() {
                exe_path()
            } else {
                s.path
            };
            if path.windows(9).any(|w| w == b"libstdc++") {
                new_stdcxx = true;
            }
            let _ = s.avma;
            t.recs.push(ModRec {
                key: s.key,
                path,
                build_id: s.build_id,
                bias: s.bias,
                ranges: s.ranges,
                generation: gen_next,
                loaded_ms: now,
                unloaded_ms: None,
                unload_generation: 0,
                written: false,
                unload_written: false,
                module: s.module,
            });
            changed = true;
        }
        if !changed {
            LAST_ADDS.store(ctx.adds, Ordering::Relaxed);
            LAST_SUBS.store(ctx.subs, Ordering::Relaxed);
            return;
        }
        t.generation = gen_next;
        let mut u = Unw::new();
        let mut ranges = Vec::new();
        for r in t.recs.iter() {
            if let (None, Some(m)) = (r.unloaded_ms, &r.module) {
                u.add_module(m.clone());
                let lo = r.ranges.iter().map(|x| x.0).min().unwrap_or(0);
                let hi = r.ranges.iter().map(|x| x.1).max().unwrap_or(0);
                if lo < hi {
                    ranges.push((lo, hi));
                }
            }
        }
        ranges.sort_unstable();
        LAST_ADDS.store(ctx.adds, Ordering::Relaxed);
        LAST_SUBS.store(ctx.subs, Ordering::Relaxed);
        Arc::new(UnwSnap {
            unw: u,
            ranges,
            generation: SNAP_GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
        })
    };
    let old = {
        let mut g = UNWINDER.lock();
        let generation = unw.generation;
        let old = g.replace(unw);
        SNAP_CURRENT.store(generation, Ordering::Release);
        old
    };
    drop(old);
    if new_stdcxx {
        find_wrappers();
    }
}

/// Initial scan: pins every module present now, then builds the table.
pub fn init(dlopen_real: Option<crate::DlopenFn>) {
    // node (and V8 inside it) is built with -fno-omit-frame-pointer
    // (common.gypi); OFFHEAP_EXE_FP=0/1 overrides the detection.
    let exe = exe_path();
    let base = exe.rsplit(|&c| c == b'/').next().unwrap_or(&[]);
    let is_node = base == b"node" || base == b"nodejs";
    MAIN_FP_ONLY.store(sys::env_bool(c"OFFHEAP_EXE_FP", is_node), Ordering::Relaxed);
    // Collect names first (no loader call from inside the callback).
    let mut ctx = ScanCtx {
        known: Vec::new(),
        pinned: Vec::new(),
        copy_unpinned: false,
        out: Vec::new(),
        adds: 0,
        subs: 0,
    };
    // SAFETY: scan_cb matches; ctx outlives the call. With copy_unpinned=false
    // and nothing pinned, only the main program's unwind data is referenced.
    unsafe { libc::dl_iterate_phdr(Some(scan_cb), &mut ctx as *mut _ as *mut c_void) };
    let mut pinned = Vec::new();
    for s in ctx.out.iter() {
        if s.path.is_empty() {
            continue;
        }
        let Some(real) = dlopen_real else { break };
        let mut name = s.path.clone();
        name.push(0);
        // SAFETY: name is NUL-terminated; RTLD_NOLOAD never loads anything new.
        let h = unsafe {
            real(
                name.as_ptr() as *const c_char,
                libc::RTLD_LAZY | RTLD_NOLOAD | libc::RTLD_NODELETE,
            )
        };
        if !h.is_null() {
            pinned.push(s.key);
        }
    }
    let mut ctx = ScanCtx {
        known: Vec::new(),
        pinned,
        copy_unpinned: true,
        out: Vec::new(),
        adds: 0,
        subs: 0,
    };
    // SAFETY: as above.
    unsafe { libc::dl_iterate_phdr(Some(scan_cb), &mut ctx as *mut _ as *mut c_void) };
    merge(ctx);
    // Our own range, for skipping agent frames.
    // A data address of ours: taking the address of an exported function
    // could yield the executable's PLT slot (non-PIE canonical addresses).
    let me = &AGENT_LO as *const AtomicU64 as u64;
    let t = TABLE.lock();
    for r in t.recs.iter() {
        if r.ranges.iter().any(|&(s, e, _)| me >= s && me < e) {
            let lo = r.ranges.iter().map(|x| x.0).min().unwrap_or(0);
            let hi = r.ranges.iter().map(|x| x.1).max().unwrap_or(0);
            AGENT_LO.store(lo, Ordering::Relaxed);
            AGENT_HI.store(hi, Ordering::Relaxed);
        }
    }
    let stdcxx = t
        .recs
        .iter()
        .any(|r| r.path.windows(9).any(|w| w == b"libstdc++"));
    drop(t);
    if stdcxx {
        find_wrappers();
    }
}

const RTLD_NOLOAD: c_int = 4;
const RTLD_DL_SYMENT: c_int = 2;

/// Finds libstdc++'s operator new family and records their address ranges.
fn find_wrappers() {
    if WRAPPER_COUNT.load(Ordering::Relaxed) > 0 {
        return;
    }
    let names: [&core::ffi::CStr; MAX_WRAPPERS] = [
        c"_Znwm",
        c"_Znam",
        c"_ZnwmRKSt9nothrow_t",
        c"_ZnamRKSt9nothrow_t",
        c"_ZnwmSt11align_val_t",
        c"_ZnamSt11align_val_t",
        c"_ZnwmSt11align_val_tRKSt9nothrow_t",
        c"_ZnamSt11align_val_tRKSt9nothrow_t",
    ];
    let mut n = 0;
    for name in names {
        // SAFETY: name is NUL-terminated; RTLD_DEFAULT searches the global scope.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if p.is_null() {
            continue;
        }
        let mut info: libc::Dl_info = libc::Dl_info {
            dli_fname: core::ptr::null(),
            dli_fbase: core::ptr::null_mut(),
            dli_sname: core::ptr::null(),
            dli_saddr: core::ptr::null_mut(),
        };
        let mut sym: *const libc::Elf64_Sym = core::ptr::null();
        // SAFETY: valid out pointers; RTLD_DL_SYMENT stores an ElfW(Sym)* in the extra arg.
        let ok = unsafe {
            libc::dladdr1(
                p,
                &mut info,
                &mut sym as *mut _ as *mut *mut c_void,
                RTLD_DL_SYMENT,
            )
        };
        if ok == 0 || sym.is_null() {
            continue;
        }
        // SAFETY: dladdr1 returned a pointer into the module's symbol table,
        // and dli_fname is null or a NUL-terminated path.
        let (size, fname) = unsafe {
            let f = if info.dli_fname.is_null() {
                &b""[..]
            } else {
                core::ffi::CStr::from_ptr(info.dli_fname).to_bytes()
            };
            ((*sym).st_size, f)
        };
        let start = info.dli_saddr as u64;
        // Only libstdc++'s own, small functions (never a whole module).
        if size == 0
            || size > 4096
            || start != p as u64
            || !fname.windows(9).any(|w| w == b"libstdc++")
        {
            continue;
        }
        WRAPPERS[n].0.store(start, Ordering::Relaxed);
        WRAPPERS[n].1.store(start + size, Ordering::Relaxed);
        n += 1;
    }
    WRAPPER_COUNT.store(n, Ordering::Release);
}

pub fn is_wrapper(a: u64) -> bool {
    let n = WRAPPER_COUNT.load(Ordering::Acquire);
    WRAPPERS[..n]
        .iter()
        .any(|(s, e)| a >= s.load(Ordering::Relaxed) && a < e.load(Ordering::Relaxed))
}

/// The current unwinder snapshot.
pub fn unwinder() -> Option<Arc<UnwSnap>> {
    UNWINDER.lock().clone()
}
