//! Renders a [`offheap_analysis::Model`] into every output format.
//! A reporter renders the Model and never recomputes a figure.
//!
//! Formats, one module each:
//! - [`html`]: `report.html`, one self-contained file (no network);
//! - [`svg`]: `flamegraph.svg`, an interactive flame graph of live bytes;
//! - [`folded`]: `stacks.folded`, collapsed stacks for flamegraph.pl, inferno, speedscope;
//! - [`pprof`]: `profile.pb.gz`, a gzipped pprof profile (`go tool pprof`);
//! - [`text`]: the terminal verdict with suspects, and a `jeprof --text`-like top list;
//! - [`metrics`]: the verdict, growth rates and top suspects as Prometheus series (`--serve`'s `/metrics`).
//!
//! Every string that comes from the target (function names, paths) is escaped
//! for the format it goes into; see [`escape`].
//!
//! Tests (`cargo test -p offheap-report`) build realistic Models
//! (`tests/common/mod.rs`) and check: the pprof file with `go tool pprof`
//! (skipped with a message when `go` is missing); `report.html` and
//! `flamegraph.svg` in headless Chromium with no console messages, driven
//! through zoom, tooltip, search and tabs, with a screenshot kept in
//! `$CARGO_TARGET_TMPDIR/offheap-report-artifacts/report.png`; escaping of a
//! hostile JS function name; and text snapshots in `tests/snapshots/`
//! (`OFFHEAP_BLESS=1` rewrites them). `examples/bench_reports.rs` measures
//! the reporters; `examples/render_recording.rs` renders a recording dir.

pub mod check;
pub mod escape;
pub mod flame;
pub mod folded;
pub mod format;
pub mod html;
pub mod metrics;
pub mod pprof;
pub mod svg;
pub mod text;

use offheap_analysis::{Model, ProfileStack};
use std::io;
use std::path::{Path, PathBuf};

pub use folded::folded;
pub use html::render_html;
pub use pprof::{pprof, pprof_raw};
pub use svg::flamegraph_svg;
pub use text::{render_text, top_text};

/// Which counter of a [`ProfileStack`] a flame graph, folded file or top list weighs by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Bytes live at the end of the analysis window.
    LiveBytes,
    /// Growth of live bytes across the window, where positive ("leaked").
    LeakedBytes,
    /// Bytes allocated since the start.
    AllocBytes,
    /// Allocations live at the end of the window.
    LiveCount,
    /// Allocations since the start.
    AllocCount,
}

impl Weight {
    /// The stack's value for this weight (never negative).
    pub fn of(self, s: &ProfileStack) -> u64 {
        match self {
            Weight::LiveBytes => s.live_bytes,
            Weight::LeakedBytes => s.growth_bytes.max(0) as u64,
            Weight::AllocBytes => s.alloc_bytes,
            Weight::LiveCount => s.live_count,
            Weight::AllocCount => s.alloc_count,
        }
    }

    /// True if the weight counts bytes (else allocations).
    pub fn is_bytes(self) -> bool {
        matches!(
            self,
            Weight::LiveBytes | Weight::LeakedBytes | Weight::AllocBytes
        )
    }

    /// Short human title ("live bytes").
    pub fn title(self) -> &'static str {
        match self {
            Weight::LiveBytes => "live bytes",
            Weight::LeakedBytes => "leaked bytes (growth over the window)",
            Weight::AllocBytes => "allocated bytes",
            Weight::LiveCount => "live allocations",
            Weight::AllocCount => "allocations",
        }
    }

    /// Formats a value of this weight for humans.
    pub fn fmt_value(self, v: u64) -> String {
        if self.is_bytes() {
            format::bytes(v)
        } else {
            format::count(v)
        }
    }
}

/// File names [`write_all`] uses inside the output directory.
pub const HTML_FILE: &str = "report.html";
pub const SVG_FILE: &str = "flamegraph.svg";
pub const FOLDED_FILE: &str = "stacks.folded";
pub const PPROF_FILE: &str = "profile.pb.gz";

/// The files [`write_all`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub html: PathBuf,
    pub svg: PathBuf,
    pub folded: PathBuf,
    pub pprof: PathBuf,
}

impl Written {
    /// All paths, in a fixed order.
    pub fn paths(&self) -> [&Path; 4] {
        [&self.html, &self.svg, &self.folded, &self.pprof]
    }
}

/// Writes `report.html`, `flamegraph.svg` (live bytes), `stacks.folded`
/// (live bytes) and `profile.pb.gz` into `dir`, which must exist. Each file
/// is written to a new, uniquely named file and renamed
/// ([`offheap_format::write_atomic`]), so a reader never sees half a report,
/// a regenerated report replaces the old one whole, and nothing planted in
/// the directory is written through.
pub fn write_all(model: &Model, dir: &Path) -> io::Result<Written> {
    let w = Written {
        html: dir.join(HTML_FILE),
        svg: dir.join(SVG_FILE),
        folded: dir.join(FOLDED_FILE),
        pprof: dir.join(PPROF_FILE),
    };
    use offheap_format::write_atomic;
    let interned = flame::intern(model);
    // The four files are independent: rendered side by side.
    let (html, svg, folded, pprof) = std::thread::scope(|s| {
        let html = s.spawn(|| html::render_html_with(model, &interned));
        let svg = s.spawn(|| svg::flamegraph_svg_with(model, &interned, Weight::LiveBytes));
        let folded = s.spawn(|| folded::folded_with(model, &interned, Weight::LiveBytes));
        let pprof = pprof(model);
        let join = |h: std::thread::ScopedJoinHandle<'_, String>| {
            h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        };
        (join(html), join(svg), join(folded), pprof)
    });
    write_atomic(&w.html, html.as_bytes())?;
    write_atomic(&w.svg, svg.as_bytes())?;
    write_atomic(&w.folded, folded.as_bytes())?;
    write_atomic(&w.pprof, &pprof)?;
    Ok(w)
}
