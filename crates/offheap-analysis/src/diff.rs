//! `offheap diff`: growth per stack between two recordings, or between two
//! time windows of one (the latter is `analyze` with a window).

use crate::model::{Model, Profile, ProfileStack, Suspect};
use offheap_symbols::Frame;
use std::collections::HashMap;

/// Stacks of two recordings match by their symbolized frames (function and
/// module), since raw addresses differ between processes.
type StackKey = Vec<(String, String)>;

fn key(frames: &[Frame]) -> StackKey {
    frames
        .iter()
        .map(|f| {
            let module = f.module.rsplit('/').next().unwrap_or(&f.module).to_string();
            (f.function.clone(), module)
        })
        .collect()
}

/// A Model whose profile holds B − A per stack: `growth_bytes` is the
/// difference of live bytes, `live_bytes` its positive part (so every
/// reporter's "live" view shows the growth), `alloc_*` the allocations made
/// in B beyond A. Suspects are the stacks that grew most.
pub fn diff_models(a: &Model, b: &Model, top: usize) -> Model {
    // key -> (live bytes, live count, alloc bytes, alloc count) in A
    let mut base: HashMap<StackKey, (u64, u64, u64, u64)> = HashMap::new();
    for s in &a.profile.stacks {
        let e = base.entry(key(&s.frames)).or_default();
        e.0 += s.live_bytes;
        e.1 += s.live_count;
        e.2 += s.alloc_bytes;
        e.3 += s.alloc_count;
    }
    let span = (b.profile.window.1 - b.profile.window.0).max(1e-9);
    let mut stacks: Vec<ProfileStack> = Vec::new();
    let mut merged: HashMap<StackKey, usize> = HashMap::new();
    for s in &b.profile.stacks {
        let k = key(&s.frames);
        let (live_a, count_a, alloc_a, allocs_a) = base.remove(&k).unwrap_or_default();
        let growth = s.live_bytes as i64 - live_a as i64;
        let d = ProfileStack {
            frames: s.frames.clone(),
            kind: s.kind,
            alloc_bytes: s.alloc_bytes.saturating_sub(alloc_a),
            alloc_count: s.alloc_count.saturating_sub(allocs_a),
            live_bytes: growth.max(0) as u64,
            live_count: s.live_count.saturating_sub(count_a),
            growth_bytes: growth,
            growth_bytes_per_s: growth as f64 / span,
        };
        match merged.get(&k) {
            Some(&i) => {
                let m = &mut stacks[i];
                m.growth_bytes += d.growth_bytes;
                m.live_bytes = m.growth_bytes.max(0) as u64;
                m.alloc_bytes += d.alloc_bytes;
                m.alloc_count += d.alloc_count;
                m.growth_bytes_per_s = m.growth_bytes as f64 / span;
            }
            None => {
                merged.insert(k, stacks.len());
                stacks.push(d);
            }
        }
    }
    // Stacks only in A shrank to nothing.
    for s in &a.profile.stacks {
        if base.remove(&key(&s.frames)).is_some() && s.live_bytes > 0 {
            stacks.push(ProfileStack {
                frames: s.frames.clone(),
                kind: s.kind,
                alloc_bytes: 0,
                alloc_count: 0,
                live_bytes: 0,
                live_count: 0,
                growth_bytes: -(s.live_bytes as i64),
                growth_bytes_per_s: -(s.live_bytes as f64) / span,
            });
        }
    }
    stacks.sort_by_key(|s| std::cmp::Reverse(s.growth_bytes));
    let suspects = stacks
        .iter()
        .filter(|s| s.growth_bytes > 0)
        .take(top)
        .enumerate()
        .map(|(i, s)| Suspect {
            rank: i as u32 + 1,
            ..crate::suspects::suspect(
                crate::suspects::collapse_allocator(s.frames.clone()),
                s.kind.into(),
                s.growth_bytes_per_s,
                s.growth_bytes as u64,
                s.live_count,
            )
        })
        .collect();
    let mut notes = vec![format!(
        "diff: {} ({}) minus {} ({}); matched by symbolized frames",
        b.meta.command.join(" "),
        b.meta.pid,
        a.meta.command.join(" "),
        a.meta.pid
    )];
    if (a.focus != 0 && a.focus != a.meta.pid) || (b.focus != 0 && b.focus != b.meta.pid) {
        notes.push(format!(
            "diff: the stacks compared are those of each recording's focus process (the one that leaks fastest): {} in A, {} in B",
            a.focus, b.focus
        ));
    }
    if let (Some(la), Some(lb)) = (&a.rss_ledger, &b.rss_ledger) {
        notes.push(crate::ledger::compare_text(la, lb));
    }
    notes.extend(a.notes.iter().map(|n| format!("A: {n}")));
    notes.extend(b.notes.iter().map(|n| format!("B: {n}")));
    Model {
        meta: b.meta.clone(),
        end: b.end.clone(),
        timeline: b.timeline.clone(),
        verdict: None,
        growth: b.growth.clone(),
        peak: b.peak.clone(),
        suspects,
        profile: Profile {
            stacks,
            modules: b.profile.modules.clone(),
            sample_interval: b.profile.sample_interval,
            window: b.profile.window,
        },
        heap: None,
        owners: Vec::new(),
        notes,
        processes: Vec::new(),
        focus: b.focus,
        headline: String::new(),
        ledger: b.ledger.clone(),
        rss_ledger: b.rss_ledger.clone(),
        check: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offheap_format::native::AllocKind;
    use offheap_symbols::FrameKind;

    fn stack(f: &str, live: u64) -> ProfileStack {
        ProfileStack {
            frames: vec![Frame {
                function: f.into(),
                module: "/x/app.node".into(),
                file: None,
                line: None,
                kind: FrameKind::Native,
                address: 0,
                inlined: false,
            }],
            kind: AllocKind::Malloc,
            alloc_bytes: live,
            alloc_count: 1,
            live_bytes: live,
            live_count: 1,
            growth_bytes: 0,
            growth_bytes_per_s: 0.0,
        }
    }

    #[test]
    fn growth_by_stack() {
        let mut a = Model::default();
        a.profile.stacks = vec![
            stack("grows", 100),
            stack("shrinks", 500),
            stack("steady", 50),
        ];
        let mut b = Model::default();
        b.profile.window = (0.0, 10.0);
        b.profile.stacks = vec![stack("grows", 1100), stack("steady", 50), stack("new", 30)];
        let d = diff_models(&a, &b, 10);
        let g: Vec<(&str, i64)> = d
            .profile
            .stacks
            .iter()
            .map(|s| (s.frames[0].function.as_str(), s.growth_bytes))
            .collect();
        assert_eq!(
            g,
            vec![
                ("grows", 1000),
                ("new", 30),
                ("steady", 0),
                ("shrinks", -500)
            ]
        );
        assert_eq!(d.suspects[0].function, "grows");
        assert!((d.suspects[0].bytes_per_s - 100.0).abs() < 1e-9);
    }
}
