//! `flamegraph.svg`: a self-contained interactive flame graph (root at the
//! bottom, as flamegraph.pl draws it). Hover shows a tooltip (`<title>`) and
//! the details line; click zooms into a frame, "Reset zoom" returns; "Search"
//! highlights frames that match a regular expression. Colours tell the frame
//! kind apart: native warm, JS green, builtin blue, unknown grey.
//! Every target string is XML-escaped; the script holds no data.

use crate::Weight;
use crate::escape::html as esc;
use crate::flame::{self, FrameInfo, Node, Tree};
use crate::format::{self, kind_str};
use offheap_analysis::Model;
use offheap_symbols::FrameKind;
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const PAD: f64 = 10.0;
const FRAME_H: f64 = 17.0;
const TOP: f64 = 54.0;
const BOTTOM: f64 = 34.0;
const CHAR_W: f64 = 6.6;
/// Frames narrower than this (in px at full view) are left out.
const MIN_W: f64 = 0.25;
/// Most frames the SVG carries; the narrowest go first.
const MAX_NODES: usize = 12_000;

/// The flame graph of `model.profile.stacks` weighed by `weight`, as SVG.
pub fn flamegraph_svg(model: &Model, weight: Weight) -> String {
    flamegraph_svg_with(model, &flame::intern(model), weight)
}

/// [`flamegraph_svg`] with the Model's stacks already interned.
pub fn flamegraph_svg_with(model: &Model, interned: &flame::Interned, weight: Weight) -> String {
    let tree = flame::build_from(interned, weight);
    render(
        &tree,
        &format!("Flame graph: {}", weight.title()),
        &subtitle(model),
    )
}

fn subtitle(model: &Model) -> String {
    let cmd = model.meta.command.join(" ");
    let (a, b) = model.profile.window;
    let mut s = String::new();
    if !cmd.is_empty() {
        let _ = write!(s, "{cmd} — ");
    }
    let _ = write!(s, "window {:.1}–{:.1} s", a, b);
    match model.profile.sample_interval {
        0 | 1 => s.push_str(", exact"),
        n => {
            let _ = write!(s, ", sampled every {} on average", format::bytes(n));
        }
    }
    s
}

/// Renders a tree as an SVG document.
pub fn render(tree: &Tree, title: &str, subtitle: &str) -> String {
    let full = WIDTH - 2.0 * PAD;
    let total = tree.total();
    let floor = (total as f64 * MIN_W / full).ceil() as u64;
    let min = flame::threshold(&tree.root, floor, MAX_NODES);
    let depth = flame::depth_above(&tree.root, min) + 1;
    let height = TOP + depth as f64 * FRAME_H + BOTTOM;
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{w}" height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">
<style>
text {{ font-family: ui-monospace, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 11px; fill: #1b1b1b; }}
#title {{ font-size: 17px; font-family: system-ui, sans-serif; font-weight: 600; }}
#subtitle, #details, .btn {{ font-family: system-ui, sans-serif; font-size: 12px; fill: #555; }}
.btn {{ cursor: pointer; fill: #1f5fbf; }} .btn:hover {{ text-decoration: underline; }}
.f {{ cursor: pointer; }} .f:hover rect {{ stroke: #222; stroke-width: 0.6; }}
.f.hide {{ display: none; }} .f.up rect {{ fill-opacity: 0.45; }} .f.hit rect {{ fill: #b15cff !important; }}
</style>
<rect x="0" y="0" width="{w}" height="{h}" fill="#fbfaf7"/>
<text id="title" x="{cx}" y="24" text-anchor="middle">{title}</text>
<text id="subtitle" x="{cx}" y="42" text-anchor="middle">{sub}</text>
<text id="reset" class="btn" x="{pad}" y="24" style="display:none">Reset zoom</text>
<text id="search" class="btn" x="{sx}" y="24" text-anchor="end">Search</text>
<text id="matched" x="{sx}" y="{my}" text-anchor="end" style="font-family:system-ui,sans-serif;font-size:12px"></text>
<text id="details" x="{pad}" y="{my}"> </text>
<g id="frames">
"##,
        w = WIDTH,
        h = height,
        cx = WIDTH / 2.0,
        pad = PAD,
        sx = WIDTH - PAD,
        my = height - 12.0,
        title = esc(title),
        sub = esc(subtitle),
    );
    if total == 0 {
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">No samples for this weight.</text>"#,
            WIDTH / 2.0,
            TOP + 20.0
        );
    } else {
        let root_info = FrameInfo {
            label: format!("all ({})", tree.weight.fmt_value(total)),
            kind: FrameKind::Unknown,
            module: String::new(),
            location: String::new(),
        };
        let ctx = Ctx {
            tree,
            total: total as f64,
            height,
            min,
        };
        node(&mut o, &ctx, &tree.root, &root_info, 0, 0.0);
    }
    o.push_str("</g>\n");
    let _ = write!(
        o,
        "<script type=\"text/ecmascript\"><![CDATA[\n{}\n]]></script>\n</svg>\n",
        SCRIPT
            .replace("__W__", &format!("{}", WIDTH - 2.0 * PAD))
            .replace("__PAD__", &format!("{PAD}"))
    );
    o
}

struct Ctx<'a> {
    tree: &'a Tree,
    total: f64,
    height: f64,
    /// Nodes lighter than this are left out.
    min: u64,
}

fn node(o: &mut String, ctx: &Ctx, n: &Node, info: &FrameInfo, d: usize, offset: f64) {
    let full = WIDTH - 2.0 * PAD;
    let x = PAD + offset / ctx.total * full;
    let w = n.value as f64 / ctx.total * full;
    if n.value < ctx.min {
        return;
    }
    let y = ctx.height - BOTTOM - (d as f64 + 1.0) * FRAME_H;
    let value = ctx.tree.weight.fmt_value(n.value);
    let pct = format::pct(n.value, ctx.total as u64);
    let mut tip = format!("{} — {value} ({pct})", info.label);
    if d > 0 {
        let _ = write!(tip, "\n{}", kind_str(info.kind));
        if !info.module.is_empty() {
            let _ = write!(tip, " · {}", info.module);
        }
        if !info.location.is_empty() {
            let _ = write!(tip, " · {}", info.location);
        }
        let selfv = n.self_value();
        if selfv > 0 {
            let _ = write!(tip, "\nself: {}", ctx.tree.weight.fmt_value(selfv));
        }
    }
    let fill = if d == 0 {
        "rgb(200,200,196)".to_string()
    } else {
        color(info.kind, &info.label)
    };
    let _ = writeln!(
        o,
        r#"<g class="f" data-d="{d}" data-x="{x:.3}" data-w="{w:.3}" data-n="{n}"><title>{t}</title><rect x="{x:.2}" y="{y:.1}" width="{wr:.2}" height="{h:.1}" rx="2" fill="{fill}"/><text x="{tx:.2}" y="{ty:.1}">{label}</text></g>"#,
        n = esc(&info.label),
        t = esc(&tip),
        wr = w,
        h = FRAME_H - 1.0,
        tx = x + 3.0,
        ty = y + FRAME_H - 5.0,
        label = esc(&fit(&info.label, w)),
    );
    let mut off = offset;
    for c in &n.children {
        let ci = c
            .frame
            .map(|i| &ctx.tree.frames[i])
            .cloned()
            .unwrap_or_else(|| FrameInfo {
                label: "?".into(),
                kind: FrameKind::Unknown,
                module: String::new(),
                location: String::new(),
            });
        node(o, ctx, c, &ci, d + 1, off);
        off += c.value as f64;
    }
}

/// The label cut to fit `w` px, with `..` when cut; empty when nothing fits.
pub fn fit(label: &str, w: f64) -> String {
    let room = ((w - 6.0) / CHAR_W).floor();
    if room < 3.0 {
        return String::new();
    }
    let room = room as usize;
    let n = label.chars().count();
    if n <= room {
        label.to_string()
    } else {
        format!("{}..", label.chars().take(room - 2).collect::<String>())
    }
}

/// Deterministic fill colour for a frame: the hue range tells the kind, the
/// name picks a shade inside it.
pub fn color(kind: FrameKind, name: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    let v1 = (h & 0xff) as f64 / 255.0;
    let v2 = ((h >> 8) & 0xff) as f64 / 255.0;
    let (r, g, b) = match kind {
        FrameKind::Native => (205.0 + 50.0 * v1, 90.0 + 110.0 * v2, 40.0 + 30.0 * v1),
        FrameKind::Js => (80.0 + 60.0 * v1, 175.0 + 45.0 * v2, 70.0 + 40.0 * v1),
        FrameKind::Builtin => (70.0 + 40.0 * v1, 150.0 + 50.0 * v2, 205.0 + 40.0 * v1),
        FrameKind::Unknown => {
            let g = 170.0 + 40.0 * v1;
            (g, g, g - 6.0)
        }
        FrameKind::Queued => (235.0, 225.0, 120.0),
    };
    format!("rgb({:.0},{:.0},{:.0})", r, g, b)
}

const SCRIPT: &str = r#"(function () {
  'use strict';
  var W = __W__, PAD = __PAD__, CW = 6.6;
  var frames = Array.prototype.slice.call(document.querySelectorAll('.f'));
  var details = document.getElementById('details');
  var reset = document.getElementById('reset');
  var matched = document.getElementById('matched');
  function num(e, k) { return parseFloat(e.getAttribute('data-' + k)); }
  function fit(s, w) {
    var room = Math.floor((w - 6) / CW);
    if (room < 3) return '';
    return s.length <= room ? s : s.slice(0, room - 2) + '..';
  }
  function place(e, x, w) {
    var r = e.querySelector('rect'), t = e.querySelector('text');
    r.setAttribute('x', x.toFixed(2)); r.setAttribute('width', w.toFixed(2));
    t.setAttribute('x', (x + 3).toFixed(2));
    t.textContent = fit(e.getAttribute('data-n'), w);
  }
  function zoom(g) {
    var zx = num(g, 'x'), zw = num(g, 'w'), zd = num(g, 'd'), eps = 1e-6;
    frames.forEach(function (e) {
      var ex = num(e, 'x'), ew = num(e, 'w'), ed = num(e, 'd');
      e.classList.remove('hide'); e.classList.remove('up');
      if (ed < zd) {
        if (ex <= zx + eps && ex + ew >= zx + zw - eps) { place(e, PAD, W); e.classList.add('up'); }
        else e.classList.add('hide');
      } else if (ex >= zx - eps && ex + ew <= zx + zw + eps) {
        var nw = ew * W / zw;
        if (nw < 0.1) e.classList.add('hide'); else place(e, PAD + (ex - zx) * W / zw, nw);
      } else e.classList.add('hide');
    });
    reset.style.display = zd > 0 ? '' : 'none';
  }
  function unzoom() {
    frames.forEach(function (e) {
      e.classList.remove('hide'); e.classList.remove('up');
      place(e, num(e, 'x'), num(e, 'w'));
    });
    reset.style.display = 'none';
  }
  frames.forEach(function (e) {
    e.addEventListener('click', function () { zoom(e); });
    e.addEventListener('mouseover', function () {
      var t = e.querySelector('title');
      details.textContent = t ? t.textContent.split('\n')[0] : '';
    });
    e.addEventListener('mouseout', function () { details.textContent = ' '; });
  });
  reset.addEventListener('click', unzoom);
  document.getElementById('search').addEventListener('click', function () {
    var term = window.prompt('Search frames (regular expression):', '');
    if (term === null) return;
    var re = null;
    try { re = term ? new RegExp(term) : null; } catch (err) { matched.textContent = 'bad expression'; return; }
    var spans = [], total = num(frames[0], 'w') || 1;
    frames.forEach(function (e) {
      var hit = re !== null && re.test(e.getAttribute('data-n'));
      e.classList.toggle('hit', hit);
      if (hit) spans.push([num(e, 'x'), num(e, 'x') + num(e, 'w')]);
    });
    spans.sort(function (a, b) { return a[0] - b[0]; });
    var sum = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { sum += s[1] - s[0]; end = s[1]; }
      else if (s[1] > end) { sum += s[1] - end; end = s[1]; }
    });
    matched.textContent = re === null ? '' : 'Matched: ' + (100 * sum / total).toFixed(1) + '%';
  });
})();"#;
