//! `/proc/PID/smaps`, read by the CLI (never inside the target) and sorted
//! into the classes of mappings the RSS ledger needs: file-backed pages,
//! thread stacks, the allocator's own regions (brk heap, thread arenas,
//! mmapped chunks) and the anonymous rest, which the analysis splits
//! between the V8 heap and other mappings.
//!
//! The allocator's regions are recognised by glibc's own layout, read from
//! the target with `process_vm_readv` (which fails cleanly where a page is
//! gone): a thread arena's heap starts at a 64 MiB boundary with a
//! `heap_info` whose `mprotect_size` is the readable part's length, and an
//! mmapped chunk starts a mapping with a header whose size has the
//! `IS_MMAPPED` bit (adjacent chunks share one mapping: they are walked).

use offheap_format::{MapClasses, layout};
use std::io::Read;

/// glibc's `HEAP_MAX_SIZE` on 64-bit: thread arenas' heaps are aligned to it.
const HEAP_MAX: u64 = 64 << 20;
/// Chunk headers read per sample at most (a mapping of many small mmapped
/// chunks is rare; the rest of it stays in the anonymous class).
const MAX_CHUNK_READS: usize = 20_000;
/// smaps is read up to this size (5,000 mappings take about 1.5 MB).
const MAX_SMAPS: u64 = 64 << 20;

/// One mapping of smaps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    /// The path column: empty for anonymous, `[heap]`, `[stack]`, a file.
    pub path: String,
    pub rss: u64,
}

impl Vma {
    fn len(&self) -> u64 {
        self.end - self.start
    }
    fn anon(&self) -> bool {
        self.path.is_empty()
    }
    fn rw_private(&self) -> bool {
        &self.perms == b"rw-p"
    }
    fn none(&self) -> bool {
        &self.perms[..3] == b"---"
    }
}

/// Parses smaps text: a header line per mapping, then `Key: value kB` lines.
pub fn parse(text: &str) -> Vec<Vma> {
    let mut out: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let first = line.split(' ').next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let mut cols = line.splitn(6, ' ');
            cols.next();
            let perms = cols.next().unwrap_or("----").as_bytes();
            let mut p = *b"----";
            for (d, s) in p.iter_mut().zip(perms) {
                *d = *s;
            }
            let path = cols.nth(3).unwrap_or("").trim().to_string();
            out.push(Vma {
                start,
                end: end.max(start),
                perms: p,
                path,
                rss: 0,
            });
        } else if let Some(v) = line.strip_prefix("Rss:")
            && let Some(last) = out.last_mut()
        {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            last.rss = kb.saturating_mul(1024);
        }
    }
    out
}

/// Reads `len` bytes of the target's memory at `addr`; None if any of it
/// cannot be read (not mapped, not permitted).
fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which is writable for its length;
    // the remote address is only read by the kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    n == buf.len() as isize
}

fn words<const N: usize>(pid: u32, addr: u64) -> Option<[u64; N]> {
    let mut b = [0u8; 64];
    let b = &mut b[..N * 8];
    if !read_remote(pid, addr, b) {
        return None;
    }
    let mut w = [0u64; N];
    for (i, c) in b.chunks_exact(8).enumerate() {
        w[i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    Some(w)
}

/// A glibc mmapped chunk's header at a page start: `prev_size` 0 (no
/// alignment correction), the size a page multiple with IS_MMAPPED alone
/// set, the chunk inside `end`. Its length, or None.
fn chunk_at(prev: u64, size: u64, at: u64, end: u64) -> Option<u64> {
    let len = size & !7;
    (size & 7 == 2
        && prev == 0
        && len > 0
        && len.is_multiple_of(PAGE)
        && at.checked_add(len)? <= end)
        .then_some(len)
}

const PAGE: u64 = 4096;

/// glibc's mmapped chunks from the start of `v`, walked by their headers:
/// the bytes they cover. Adjacent mappings merge into one, so a mapping may
/// hold chunks and then something else; what follows the first thing that
/// is not a chunk is left to the analysis (mallinfo2 counts every mmapped
/// chunk, walked or not). At most `budget` headers per sample.
fn mmapped_chunks(pid: u32, v: &Vma, budget: &mut usize) -> u64 {
    let mut at = v.start;
    while at < v.end && *budget > 0 {
        *budget -= 1;
        let Some([prev, size]) = words::<2>(pid, at) else {
            break;
        };
        let Some(len) = chunk_at(prev, size, at, v.end) else {
            break;
        };
        at += len;
    }
    at - v.start
}

/// A thread arena's heap at `v`: 64 MiB aligned, no longer than that, and
/// starting with a plausible `heap_info` (an arena pointer; `size` and
/// `mprotect_size` page-sized within 64 MiB: glibc changes them while the
/// heap grows, so they are not compared with the mapping read a moment
/// before).
fn arena_heap(pid: u32, v: &Vma) -> bool {
    if !v.start.is_multiple_of(HEAP_MAX) || v.len() > HEAP_MAX {
        return false;
    }
    matches!(words::<4>(pid, v.start), Some([ar, _, size, mprotect])
        if ar != 0
            && size > 0
            && size <= HEAP_MAX
            && mprotect <= HEAP_MAX
            && mprotect.is_multiple_of(PAGE))
}

/// Sorts mappings into classes, reading glibc's headers from `pid`.
pub fn classify(pid: u32, vmas: &[Vma]) -> MapClasses {
    let mut c = MapClasses {
        vmas: vmas.len() as u64,
        ..Default::default()
    };
    let mut budget = MAX_CHUNK_READS;
    for (i, v) in vmas.iter().enumerate() {
        c.rss += v.rss;
        if v.rss == 0 {
            continue;
        }
        if !v.anon() {
            match v.path.as_str() {
                "[heap]" => {
                    c.brk_heap += v.rss;
                    c.arena_size += v.len();
                }
                "[stack]" => {
                    c.stacks += v.rss;
                    c.stack_count += 1;
                }
                p if p.starts_with("[anon:") => c.anon += v.rss,
                _ => c.file += v.rss,
            }
            continue;
        }
        // The agent's .bss: anonymous, right after its library's mappings.
        if i > 0
            && vmas[i - 1].end == v.start
            && vmas[i - 1].path.rsplit('/').next() == Some(layout::NATIVE_AGENT)
        {
            c.agent += v.rss;
            continue;
        }
        // A pthread stack: a read-write mapping right above its guard.
        let guard_below = i > 0 && {
            let g = &vmas[i - 1];
            g.end == v.start && g.none() && g.anon() && g.len() <= (1 << 20)
        };
        if v.rw_private() && guard_below && v.len() >= (16 << 10) && !arena_heap(pid, v) {
            c.stacks += v.rss;
            c.stack_count += 1;
            continue;
        }
        if v.rw_private() && arena_heap(pid, v) {
            c.arenas += v.rss;
            c.arena_size += v.len();
            continue;
        }
        if v.rw_private() {
            let covered = mmapped_chunks(pid, v, &mut budget);
            if covered > 0 {
                // Residency is known per mapping: one that holds chunks and
                // something else is split by length (an estimate).
                let part = if covered >= v.len() {
                    v.rss
                } else {
                    (v.rss as u128 * covered as u128 / v.len() as u128) as u64
                };
                c.malloc_mmap += part;
                c.malloc_mmap_size += covered;
                c.anon += v.rss - part;
                continue;
            }
        }
        c.anon += v.rss;
    }
    c
}

/// CPU time of the calling thread, user and system, in µs: what reading
/// smaps costs (the kernel's walk of the page tables is system time), not
/// the wall time a busy machine stretches.
fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Reads and classifies the mappings of `pid`; None if smaps is unreadable.
pub fn sample(pid: u32) -> Option<MapClasses> {
    let t0 = thread_cpu_us();
    let f = std::fs::File::open(format!("/proc/{pid}/smaps")).ok()?;
    let mut text = String::new();
    f.take(MAX_SMAPS).read_to_string(&mut text).ok()?;
    let vmas = parse(&text);
    if vmas.is_empty() {
        return None;
    }
    let mut c = classify(pid, &vmas);
    c.cost_us = thread_cpu_us().saturating_sub(t0);
    Some(c)
}

/// When to read smaps next: every interval while a read costs under 1% of
/// one core at that interval, else spaced so that it does.
pub fn next_gap_ms(cost_us: u64, interval_ms: u64) -> u64 {
    (cost_us / 10).max(interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234                       /usr/bin/node
Rss:                1024 kB
Pss:                1024 kB
55d0c2000000-55d0c2400000 rw-p 00000000 00:00 0                          [heap]
Rss:                4096 kB
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
Rss:                   0 kB
7f0000001000-7f0000801000 rw-p 00000000 00:00 0 
Rss:                  64 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                 132 kB
";

    #[test]
    fn parses_and_classifies_without_the_target() {
        let v = parse(SAMPLE);
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].path, "/usr/bin/node");
        assert_eq!(v[1].rss, 4096 * 1024);
        // pid 0 cannot be read: only the layout decides.
        let c = classify(0, &v);
        assert_eq!(c.file, 1024 * 1024);
        assert_eq!(c.brk_heap, 4096 * 1024);
        assert_eq!(c.stacks, (64 + 132) * 1024);
        assert_eq!(c.stack_count, 2);
        assert_eq!(c.rss, (1024 + 4096 + 64 + 132) * 1024);
    }

    #[test]
    fn garbage_is_no_mapping() {
        assert!(parse("not smaps\nRss: 12 kB\n\u{0}\n").is_empty());
    }

    /// Our own process: its mappings add up, and the main stack is found.
    #[test]
    fn classifies_this_process() {
        let c = sample(std::process::id()).expect("own smaps");
        let sum = c.file + c.stacks + c.brk_heap + c.arenas + c.malloc_mmap + c.anon + c.agent;
        assert_eq!(sum, c.rss, "{c:?}");
        assert!(c.stack_count >= 1, "{c:?}");
        assert!(c.file > 0, "{c:?}");
    }

    #[test]
    fn a_costly_read_is_spaced_to_one_percent() {
        assert_eq!(next_gap_ms(500, 500), 500);
        assert_eq!(next_gap_ms(20_000, 500), 2000);
    }
}
