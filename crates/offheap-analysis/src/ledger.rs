//! The RSS ledger: every resident byte of a process given to one named part.
//!
//! Residency comes from the mappings (`/proc/PID/smaps`, sorted into
//! classes by the CLI: [`MapClasses`]); the finer split inside them from
//! what the program's own bookkeeping says at the same moment:
//!
//! - glibc's brk heap and thread arenas hold the blocks in use
//!   (`mallinfo2` `uordblks`, from the native agent) and free-but-resident
//!   bytes (the rest of their resident pages); its mmapped chunks are
//!   blocks in use, resident as far as they were touched;
//! - Node's ArrayBuffer allocator takes its stores from malloc, so
//!   `arrayBuffers` is a share of the blocks in use, never added on top;
//! - the V8 heap's spaces (`physical_space_size` of each isolate) live in
//!   the other anonymous mappings, with JIT code in the code spaces;
//! - file-backed mappings and thread stacks are read directly.
//!
//! - the anonymous mmaps the native agent saw (sampled), and the agent's
//!   own memory, claim what the V8 heap left of the other anonymous
//!   mappings.
//!
//! What no claim covers is `unexplained`: there is no other catch-all. Parts are resident bytes; where the allocated
//! bytes differ (blocks never touched, V8 pages committed), `allocated`
//! says so.

use offheap_format::native::AllocatorStats;
use offheap_format::{MapClasses, NodeMem};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A named part of the ledger, in the order reports list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Objects in V8's old generation (old, map, trusted spaces).
    V8Old,
    /// V8's young generation (new space, new large objects).
    V8New,
    /// V8's large-object space.
    V8LargeObjects,
    /// JIT code: V8's code spaces.
    JitCode,
    /// V8's read-only and shared spaces.
    V8Other,
    /// Buffer and ArrayBuffer stores (Node's allocator, through malloc).
    ArrayBuffers,
    /// malloc'd blocks in use, other than ArrayBuffer stores: C++, addons,
    /// zlib, OpenSSL, V8's own zones.
    NativeMalloc,
    /// Free bytes the allocator keeps resident (fragmentation, top pads).
    AllocatorFree,
    /// glibc's heap and arenas when no native agent told blocks in use from
    /// free ones (attach): the native split is unknown, not guessed.
    MallocUnsplit,
    /// Anonymous mmaps the native agent saw the program make (every one is
    /// recorded at its own size, also in sampling mode), split by caller in
    /// `Ledger::anon_mmap_by_caller`.
    AnonMmap,
    /// offheap's own agent: its tables, copies of unwind sections, .bss.
    OffheapAgent,
    /// Main and thread stacks.
    ThreadStacks,
    /// Pages of mapped files: the program, its libraries, mapped data.
    FileBacked,
}

impl Part {
    pub const ALL: [Part; 13] = [
        Part::V8Old,
        Part::V8New,
        Part::V8LargeObjects,
        Part::JitCode,
        Part::V8Other,
        Part::ArrayBuffers,
        Part::NativeMalloc,
        Part::AllocatorFree,
        Part::MallocUnsplit,
        Part::AnonMmap,
        Part::OffheapAgent,
        Part::ThreadStacks,
        Part::FileBacked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::V8Old => "v8_old",
            Part::V8New => "v8_new",
            Part::V8LargeObjects => "v8_large_objects",
            Part::JitCode => "jit_code",
            Part::V8Other => "v8_other",
            Part::ArrayBuffers => "array_buffers",
            Part::NativeMalloc => "native_malloc",
            Part::AllocatorFree => "allocator_free",
            Part::MallocUnsplit => "malloc_unsplit",
            Part::AnonMmap => "anon_mmap",
            Part::OffheapAgent => "offheap_agent",
            Part::ThreadStacks => "thread_stacks",
            Part::FileBacked => "file_backed",
        }
    }

    /// For people.
    pub fn label(self) -> &'static str {
        match self {
            Part::V8Old => "V8 old generation",
            Part::V8New => "V8 young generation",
            Part::V8LargeObjects => "V8 large objects",
            Part::JitCode => "JIT code",
            Part::V8Other => "V8 read-only and shared",
            Part::ArrayBuffers => "Buffer/ArrayBuffer stores",
            Part::NativeMalloc => "native malloc in use",
            Part::AllocatorFree => "allocator free but resident",
            Part::MallocUnsplit => "malloc heap (in use and free not split)",
            Part::AnonMmap => "anonymous mmaps",
            Part::OffheapAgent => "offheap's agent",
            Part::ThreadStacks => "thread stacks",
            Part::FileBacked => "file-backed (program, libraries)",
        }
    }
}

/// One moment of the ledger of one process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Seconds since the recording started.
    pub at_s: f64,
    /// RSS at that moment: the resident total of the smaps read the parts
    /// come from (VmRSS as that read saw it).
    pub rss: u64,
    /// Resident bytes by part; parts that hold nothing are left out.
    pub parts: BTreeMap<Part, u64>,
    /// `rss` minus the parts: negative when the parts add up to more.
    pub unexplained: i64,
    /// Bytes allocated, for the parts where that differs from resident by
    /// more than 1% (blocks never touched, committed V8 pages).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocated: BTreeMap<Part, u64>,
    /// The `anon_mmap` part split by the caller the native agent saw
    /// mapping the memory ("function (module)"): the largest
    /// [`MAX_CALLERS`], then [`OTHER_CALLERS`]. Resident bytes that add up
    /// to the part exactly: each caller's sampled live bytes, scaled to it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub anon_mmap_by_caller: BTreeMap<String, u64>,
}

/// How many callers `anon_mmap_by_caller` names before the rest go
/// together.
pub const MAX_CALLERS: usize = 8;
/// The name of the callers past [`MAX_CALLERS`] in `anon_mmap_by_caller`.
pub const OTHER_CALLERS: &str = "other callers";

impl Ledger {
    pub fn part(&self, p: Part) -> u64 {
        self.parts.get(&p).copied().unwrap_or(0)
    }

    /// Splits the `anon_mmap` part by caller, from the sampled live bytes
    /// of each caller's mmaps at this moment: the largest [`MAX_CALLERS`]
    /// by name and the rest as [`OTHER_CALLERS`], each given its share of
    /// the part's resident bytes (largest remainders, so the split adds up
    /// to the part exactly). A part with no live caller to share it is all
    /// [`OTHER_CALLERS`]; an empty part has no split.
    pub fn split_anon_mmap(&mut self, live_by_caller: &[(String, u64)]) {
        self.anon_mmap_by_caller.clear();
        let total = self.part(Part::AnonMmap);
        if total == 0 {
            return;
        }
        let mut live: Vec<(&str, u64)> = live_by_caller
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(c, v)| (c.as_str(), *v))
            .collect();
        live.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if live.len() > MAX_CALLERS {
            let rest: u64 = live[MAX_CALLERS..].iter().map(|(_, v)| v).sum();
            live.truncate(MAX_CALLERS);
            live.push((OTHER_CALLERS, rest));
        }
        let weight: u128 = live.iter().map(|(_, v)| *v as u128).sum();
        if weight == 0 {
            self.anon_mmap_by_caller
                .insert(OTHER_CALLERS.to_string(), total);
            return;
        }
        // Floors first, then one byte each to the largest remainders.
        let mut shares: Vec<(&str, u64, u128)> = live
            .iter()
            .map(|(c, v)| {
                let x = total as u128 * *v as u128;
                (*c, (x / weight) as u64, x % weight)
            })
            .collect();
        let mut left = total - shares.iter().map(|s| s.1).sum::<u64>();
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&a, &b| shares[b].2.cmp(&shares[a].2).then(a.cmp(&b)));
        for k in order {
            if left == 0 {
                break;
            }
            shares[k].1 += 1;
            left -= 1;
        }
        for (c, v, _) in shares {
            if v > 0 {
                *self.anon_mmap_by_caller.entry(c.to_string()).or_default() += v;
            }
        }
    }
}

/// What a ledger is built from, at one moment.
pub struct Inputs<'a> {
    pub at_s: f64,
    /// VmRSS from the same `/proc` sample as `maps`: the ledger's RSS
    /// when `maps` has no resident total (else that total is).
    pub rss: u64,
    pub maps: &'a MapClasses,
    /// The latest memory figures of each isolate of the process.
    pub isolates: &'a [&'a NodeMem],
    /// The allocator's state from the native agent, if it runs.
    pub allocator: Option<AllocatorStats>,
    /// Live bytes of anonymous mmaps the native agent sampled, if it runs.
    pub mmap_live: Option<u64>,
}

/// V8 spaces by part. Unknown names (a newer V8) count as `v8_other`.
fn space_part(name: &str) -> Part {
    match name {
        "new_space" | "new_large_object_space" => Part::V8New,
        "code_space" | "code_large_object_space" => Part::JitCode,
        "large_object_space" | "trusted_large_object_space" => Part::V8LargeObjects,
        "old_space" | "map_space" | "trusted_space" => Part::V8Old,
        _ => Part::V8Other,
    }
}

/// Builds one ledger.
pub fn build(i: &Inputs) -> Ledger {
    let m = i.maps;
    let mut parts: BTreeMap<Part, u64> = BTreeMap::new();
    let mut allocated: BTreeMap<Part, u64> = BTreeMap::new();
    let mut put = |p: Part, v: u64, alloc: Option<u64>| {
        if v > 0 {
            *parts.entry(p).or_default() += v;
        }
        if let Some(a) = alloc
            && a.abs_diff(v) > v / 100
        {
            *allocated.entry(p).or_default() += a;
        }
    };
    put(Part::FileBacked, m.file, None);
    put(Part::ThreadStacks, m.stacks, None);

    // The V8 heap, from the anonymous mappings no class claimed: what V8
    // committed, as far as the mappings hold it.
    let mut v8: BTreeMap<Part, u64> = BTreeMap::new();
    for n in i.isolates {
        for (name, s) in &n.spaces {
            let phys = s
                .get("physical_space_size")
                .copied()
                .unwrap_or(0.0)
                .max(0.0) as u64;
            *v8.entry(space_part(name)).or_default() += phys;
        }
    }
    let mut pool = m.anon;
    for (p, committed) in v8 {
        let v = committed.min(pool);
        pool -= v;
        put(p, v, Some(committed));
    }

    // Then what the allocator and the native agent know by allocated size,
    // in the same rest: the main arena's memory outside the brk heap (glibc
    // maps it when brk cannot grow, with no header to recognise it by),
    // mmapped chunks the CLI could not walk (a mapping merged with a
    // neighbour that does not start with one), offheap's own mappings, and
    // the program's anonymous mmaps. Resident is at most allocated; when
    // they claim more than is left, each gets its share.
    let a = i.allocator;
    let wanted = [
        a.map_or(0, |a| a.arena_bytes.saturating_sub(m.arena_size)),
        a.map_or(0, |a| a.mmapped_bytes.saturating_sub(m.malloc_mmap_size)),
        a.map_or(0, |a| a.agent_mapped_bytes),
        i.mmap_live.unwrap_or(0),
    ];
    let total: u64 = wanted.iter().sum();
    let share = |c: u64| {
        if total <= pool {
            c
        } else {
            (pool as u128 * c as u128 / total as u128) as u64
        }
    };
    let [arena_extra, chunks_extra, agent, mmaps] = wanted.map(share);
    put(
        Part::OffheapAgent,
        agent + m.agent,
        Some(wanted[2] + m.agent),
    );
    if i.mmap_live.is_some() {
        put(Part::AnonMmap, mmaps, Some(wanted[3]));
    }

    // The allocator's regions: blocks in use and free bytes.
    let arenas = m.brk_heap + m.arenas + arena_extra;
    let chunks = m.malloc_mmap + chunks_extra;
    let buffers: u64 = i.isolates.iter().map(|n| n.array_buffers).sum();
    match a {
        Some(a) => {
            let used_in_arenas = a.in_use_bytes.min(arenas);
            let in_use = used_in_arenas + chunks;
            let buf = buffers.min(in_use);
            put(Part::ArrayBuffers, buf, Some(buffers));
            put(
                Part::NativeMalloc,
                in_use - buf,
                Some((a.in_use_bytes + a.mmapped_bytes).saturating_sub(buffers)),
            );
            put(Part::AllocatorFree, arenas - used_in_arenas, None);
        }
        None => {
            let all = arenas + chunks;
            let buf = buffers.min(all);
            put(Part::ArrayBuffers, buf, Some(buffers));
            put(Part::MallocUnsplit, all - buf, None);
        }
    }

    // The RSS the parts are shares of: the resident total of the smaps
    // read they come from. VmRSS, read a moment before it, runs behind a
    // target that grows fast while a slow read walks its mappings (a
    // loaded machine: 34 MiB in one read of a leaking server), which
    // would read as parts adding up to more than RSS.
    let rss = if m.rss > 0 { m.rss } else { i.rss };
    let sum: u64 = parts.values().sum();
    Ledger {
        at_s: i.at_s,
        rss,
        parts,
        unexplained: rss as i64 - sum as i64,
        allocated,
        anon_mmap_by_caller: BTreeMap::new(),
    }
}

/// At most `max` ledgers, evenly spread, the last one kept.
pub fn thin(ledgers: &[Ledger], max: usize) -> Vec<Ledger> {
    if ledgers.len() <= max || max < 2 {
        return ledgers.to_vec();
    }
    let step = (ledgers.len() - 1) as f64 / (max - 1) as f64;
    (0..max)
        .map(|k| ledgers[((k as f64 * step).round() as usize).min(ledgers.len() - 1)].clone())
        .collect()
}

/// The parts that grew most between the first and last ledger of `window`
/// (seconds), largest first: (part, bytes).
pub fn growth(ledgers: &[Ledger], from: f64, to: f64) -> Vec<(Part, i64)> {
    let inside: Vec<&Ledger> = ledgers
        .iter()
        .filter(|l| l.at_s >= from && l.at_s <= to)
        .collect();
    let (Some(a), Some(b)) = (inside.first(), inside.last()) else {
        return Vec::new();
    };
    let mut g: Vec<(Part, i64)> = Part::ALL
        .iter()
        .map(|&p| (p, b.part(p) as i64 - a.part(p) as i64))
        .filter(|(_, d)| *d != 0)
        .collect();
    g.sort_by_key(|(_, d)| -*d);
    g
}

/// The ledger in Prometheus' text format: `offheap_rss_ledger_bytes` with
/// a `part` label per part, and `offheap_rss_ledger_unexplained_bytes`.
pub fn prometheus(pid: u32, l: &Ledger) -> String {
    let mut o = String::from(
        "# HELP offheap_rss_ledger_bytes Resident bytes of the target by part (the RSS ledger).\n# TYPE offheap_rss_ledger_bytes gauge\n",
    );
    for p in Part::ALL {
        o.push_str(&format!(
            "offheap_rss_ledger_bytes{{pid=\"{pid}\",part=\"{}\"}} {}\n",
            p.as_str(),
            l.part(p)
        ));
    }
    o.push_str(&format!(
        "# HELP offheap_rss_ledger_unexplained_bytes RSS that no part of the ledger explains (negative: the parts add up to more).\n# TYPE offheap_rss_ledger_unexplained_bytes gauge\noffheap_rss_ledger_unexplained_bytes{{pid=\"{pid}\"}} {}\n",
        l.unexplained
    ));
    o
}

/// `metrics` without the ledger's series, and `ledger`'s appended.
pub fn replace_prometheus(metrics: &str, ledger: &str) -> String {
    let mut o: String = metrics
        .lines()
        .filter(|l| !l.contains("offheap_rss_ledger"))
        .map(|l| format!("{l}\n"))
        .collect();
    o.push_str(ledger);
    o
}

/// "diff: RSS 80.0 MiB -> 120 MiB; grew: native_malloc +38.0 MiB, ...;
/// shrank: ..." for `offheap diff` (parts that moved by at least 1% of the
/// larger RSS).
pub fn compare_text(a: &Ledger, b: &Ledger) -> String {
    use offheap_format::units::bytes;
    let floor = a.rss.max(b.rss) / 100;
    let mut moved: Vec<(Part, i64)> = Part::ALL
        .iter()
        .map(|&p| (p, b.part(p) as i64 - a.part(p) as i64))
        .filter(|(_, d)| d.unsigned_abs() >= floor.max(1))
        .collect();
    moved.sort_by_key(|(_, d)| -*d);
    let list = |grew: bool| {
        moved
            .iter()
            .filter(|(_, d)| (*d > 0) == grew)
            .map(|(p, d)| {
                format!(
                    "{} {}{}",
                    p.as_str(),
                    if grew { "+" } else { "-" },
                    bytes(d.unsigned_abs())
                )
            })
            .collect::<Vec<_>>()
    };
    let (g, s) = (list(true), list(false));
    format!(
        "diff: RSS ledger {} -> {}; grew: {}; shrank: {}",
        bytes(a.rss),
        bytes(b.rss),
        if g.is_empty() {
            "nothing".to_string()
        } else {
            g.join(", ")
        },
        if s.is_empty() {
            "nothing".to_string()
        } else {
            s.join(", ")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(buffers: u64, spaces: &[(&str, f64)]) -> NodeMem {
        NodeMem {
            array_buffers: buffers,
            spaces: spaces
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        BTreeMap::from([("physical_space_size".to_string(), *v)]),
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn every_byte_once() {
        let maps = MapClasses {
            rss: 100 * MIB,
            file: 30 * MIB,
            stacks: MIB,
            brk_heap: 10 * MIB,
            arenas: 20 * MIB,
            malloc_mmap: 15 * MIB,
            malloc_mmap_size: 20 * MIB,
            anon: 24 * MIB,
            ..Default::default()
        };
        let n = mem(
            12 * MIB,
            &[("old_space", 10e6), ("new_space", 4e6), ("code_space", 2e6)],
        );
        let a = AllocatorStats {
            agent_mapped_bytes: 2 * MIB,
            in_use_bytes: 25 * MIB,
            mmapped_bytes: 20 * MIB,
            free_bytes: 5 * MIB,
            ..Default::default()
        };
        let l = build(&Inputs {
            at_s: 1.0,
            rss: 100 * MIB,
            maps: &maps,
            isolates: &[&n],
            allocator: Some(a),
            mmap_live: Some(MIB),
        });
        assert_eq!(
            l.unexplained,
            24 * MIB as i64 - 16_000_000 - 3 * MIB as i64,
            "{l:?}"
        );
        assert_eq!(l.part(Part::AllocatorFree), 5 * MIB);
        assert_eq!(l.part(Part::ArrayBuffers), 12 * MIB);
        // 25 MiB used in the arenas + 15 resident of the mmapped chunks.
        assert_eq!(l.part(Part::NativeMalloc), 28 * MIB);
        assert_eq!(l.allocated[&Part::NativeMalloc], 33 * MIB);
        assert_eq!(l.part(Part::JitCode), 2_000_000);
        assert_eq!(l.part(Part::OffheapAgent), 2 * MIB);
        assert_eq!(l.part(Part::AnonMmap), MIB);
    }

    #[test]
    fn without_the_native_agent_malloc_is_not_split() {
        let maps = MapClasses {
            rss: 50 * MIB,
            brk_heap: 40 * MIB,
            anon: 10 * MIB,
            ..Default::default()
        };
        let l = build(&Inputs {
            at_s: 0.0,
            rss: 52 * MIB,
            maps: &maps,
            isolates: &[],
            allocator: None,
            mmap_live: None,
        });
        assert_eq!(l.part(Part::MallocUnsplit), 40 * MIB);
        assert_eq!(l.part(Part::NativeMalloc), 0);
        // Nothing claims the anonymous mappings: unexplained, not guessed.
        // The RSS is the smaps read's (VmRSS, read before it, said 52 MiB).
        assert_eq!(l.rss, 50 * MIB);
        assert_eq!(l.unexplained, 10 * MIB as i64);
    }

    /// V8 claims more than the mappings hold: the parts never exceed them.
    #[test]
    fn claims_are_capped_by_the_mappings() {
        let maps = MapClasses {
            rss: 10 * MIB,
            anon: 10 * MIB,
            ..Default::default()
        };
        let n = mem(0, &[("old_space", 30e6)]);
        let l = build(&Inputs {
            at_s: 0.0,
            rss: 10 * MIB,
            maps: &maps,
            isolates: &[&n],
            allocator: None,
            mmap_live: None,
        });
        assert_eq!(l.part(Part::V8Old), 10 * MIB);
        assert_eq!(l.allocated[&Part::V8Old], 30_000_000);
        assert_eq!(l.unexplained, 0);
    }

    /// The split by caller adds up to the part exactly, names the largest
    /// callers, and puts the rest together.
    #[test]
    fn anon_mmaps_split_by_caller() {
        let mut l = Ledger {
            parts: BTreeMap::from([(Part::AnonMmap, 1000)]),
            ..Default::default()
        };
        l.split_anon_mmap(&[
            ("a (x)".into(), 3),
            ("b (x)".into(), 1),
            ("c (x)".into(), 0),
        ]);
        assert_eq!(
            l.anon_mmap_by_caller,
            BTreeMap::from([("a (x)".into(), 750), ("b (x)".into(), 250)])
        );
        // Thirds: the remainders go one byte each, the sum stays exact.
        l.split_anon_mmap(&[("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(l.anon_mmap_by_caller.values().sum::<u64>(), 1000);
        assert!(
            l.anon_mmap_by_caller
                .values()
                .all(|&v| v == 333 || v == 334)
        );
        let many: Vec<(String, u64)> = (0..12).map(|k| (format!("f{k:02}"), 100 - k)).collect();
        l.split_anon_mmap(&many);
        assert_eq!(l.anon_mmap_by_caller.len(), MAX_CALLERS + 1);
        assert!(l.anon_mmap_by_caller.contains_key(OTHER_CALLERS));
        assert!(!l.anon_mmap_by_caller.contains_key("f08"));
        assert_eq!(l.anon_mmap_by_caller.values().sum::<u64>(), 1000);
        // Nothing live to share it by: all "other callers"; no part, no split.
        l.split_anon_mmap(&[]);
        assert_eq!(
            l.anon_mmap_by_caller,
            BTreeMap::from([(OTHER_CALLERS.into(), 1000)])
        );
        l.parts.clear();
        l.split_anon_mmap(&many);
        assert!(l.anon_mmap_by_caller.is_empty());
    }
}
