(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('offheap-data').textContent);
  var UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  function fmtBytes(v) {
    var s = v < 0 ? '-' : '', a = Math.abs(v), i = 0;
    if (a < 1024) return s + Math.round(a) + ' B';
    while (a >= 1024 && i < UNITS.length - 1) { a /= 1024; i++; }
    return s + a.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2) + ' ' + UNITS[i];
  }
  function pct(a, b) { return b > 0 ? (100 * a / b).toFixed(1) + '%' : '0.0%'; }

  // ------------------------------------------------------------ chart hover
  var byName = {};
  D.series.forEach(function (s) { byName[s.name] = s.points; });
  function nearest(pts, t) {
    var lo = 0, hi = pts.length - 1;
    while (lo < hi) { var mid = (lo + hi) >> 1; if (pts[mid][0] < t) lo = mid + 1; else hi = mid; }
    if (lo > 0 && Math.abs(pts[lo - 1][0] - t) < Math.abs(pts[lo][0] - t)) lo--;
    return pts[lo];
  }
  Array.prototype.forEach.call(document.querySelectorAll('figure.chart[data-name]'), function (fig) {
    var names = fig.getAttribute('data-name').split(',');
    var titles = fig.getAttribute('data-titles').split('\t');
    var hit = fig.querySelector('rect.hit'), cur = fig.querySelector('line.cursor');
    var out = fig.querySelector('.readout');
    var series = names.map(function (n) { return byName[n] || []; });
    if (!hit || !series.some(function (p) { return p.length; })) return;
    var x0 = parseFloat(hit.getAttribute('x')), pw = parseFloat(hit.getAttribute('width'));
    var tEnd = parseFloat(hit.getAttribute('data-t'));
    hit.addEventListener('mousemove', function (ev) {
      var r = hit.getBoundingClientRect();
      var t = (ev.clientX - r.left) / Math.max(r.width, 1) * tEnd, lines = [], at = null;
      series.forEach(function (pts, i) {
        if (!pts.length) return;
        var p = nearest(pts, t);
        if (at === null) at = p[0];
        lines.push((series.length > 1 ? titles[i] + ': ' : '') + fmtBytes(p[1]));
      });
      var x = x0 + at / tEnd * pw;
      cur.setAttribute('x1', x); cur.setAttribute('x2', x); cur.style.display = '';
      out.textContent = at.toFixed(1) + ' s · ' + lines.join(series.length > 1 ? '\n' : '');
      out.style.display = 'block';
    });
    hit.addEventListener('mouseleave', function () { cur.style.display = 'none'; out.style.display = 'none'; });
  });

  // ------------------------------------------------------------ flame graphs
  if (document.getElementById('fgraph')) flameGraphs();
  function flameGraphs() {
    var F = D.frames, ROW = 20;
    var box = document.getElementById('fgraph'), tip = document.getElementById('ftip');
    var info = document.getElementById('finfo'), search = document.getElementById('fsearch');
    var tabs = Array.prototype.slice.call(document.querySelectorAll('.tabs button'));
    var TITLES = { live: 'live bytes', leaked: 'leaked bytes', alloc: 'allocated bytes' };
    var state = { w: null, path: [] }, drawn = [];
    // node: [frameIndex (-1 = root), value, children?]
    function label(n) { return n[0] < 0 ? 'all (' + fmtBytes(n[1]) + ')' : F[n[0]][0]; }
    function kids(n) { return n[2] || []; }
    function selfOf(n) { var s = n[1]; kids(n).forEach(function (c) { s -= c[1]; }); return Math.max(s, 0); }

    function render() {
      var root = D.trees[state.w];
      box.textContent = '';
      drawn = [];
      if (!root || !root[1]) {
        var e = document.createElement('div');
        e.className = 'empty';
        e.textContent = 'No ' + TITLES[state.w] + ' recorded.';
        box.appendChild(e);
        box.style.height = '';
        info.textContent = '';
        return;
      }
      var W = box.clientWidth || 1200, maxDepth = 0;
      var chain = [root].concat(state.path), focus = chain[chain.length - 1];
      chain.forEach(function (n, d) { add(n, d, 0, W, d < chain.length - 1); });
      (function walk(n, d, x, w) {
        add(n, d, x, w, false);
        var off = x;
        kids(n).forEach(function (c) {
          var cw = c[1] / n[1] * w;
          if (cw >= 0.5 && drawn.length < 8000) walk(c, d + 1, off, cw);
          off += cw;
        });
      })(focus, chain.length - 1, 0, W);
      function add(n, d, x, w, up) {
        if (n === focus && !up && drawn.length && drawn[drawn.length - 1].n === n) return;
        var e = document.createElement('div');
        e.className = 'n' + (up ? ' up' : '');
        e.style.left = x + 'px'; e.style.width = Math.max(w - 1, 0.5) + 'px'; e.style.top = d * ROW + 'px';
        e.style.background = n[0] < 0 ? '#cfd3d8' : F[n[0]][4];
        if (w > 28) e.textContent = label(n);
        e.setAttribute('data-i', drawn.length);
        drawn.push({ n: n, d: d, el: e });
        box.appendChild(e);
        if (d > maxDepth) maxDepth = d;
      }
      box.style.height = (maxDepth + 1) * ROW + 2 + 'px';
      info.textContent = 'Total ' + fmtBytes(root[1]) + ' ' + TITLES[state.w] +
        (state.path.length ? ' · zoomed into ' + label(focus) + ' (' + pct(focus[1], root[1]) + ')' : '');
      highlight();
    }

    function highlight() {
      var q = (search.value || '').toLowerCase(), root = D.trees[state.w];
      drawn.forEach(function (x) {
        x.el.classList.toggle('hit', q !== '' && x.n[0] >= 0 && label(x.n).toLowerCase().indexOf(q) >= 0);
      });
      if (!q || !root) return;
      var sum = 0;
      (function walk(n) {
        if (n[0] >= 0 && label(n).toLowerCase().indexOf(q) >= 0) { sum += n[1]; return; }
        kids(n).forEach(walk);
      })(root);
      info.textContent = 'Matched ' + fmtBytes(sum) + ' (' + pct(sum, root[1]) + ' of ' + TITLES[state.w] + ')';
    }

    function pathTo(target) {
      var found = null;
      (function walk(n, p) {
        if (found) return;
        if (n === target) { found = p; return; }
        kids(n).forEach(function (c) { walk(c, p.concat([c])); });
      })(D.trees[state.w], []);
      return found || [];
    }

    box.addEventListener('click', function (ev) {
      var i = ev.target.getAttribute && ev.target.getAttribute('data-i');
      if (i === null || i === undefined) return;
      var n = drawn[+i].n;
      state.path = n === D.trees[state.w] ? [] : pathTo(n);
      render();
    });
    box.addEventListener('mousemove', function (ev) {
      var i = ev.target.getAttribute && ev.target.getAttribute('data-i');
      if (i === null || i === undefined) { tip.hidden = true; return; }
      var n = drawn[+i].n, root = D.trees[state.w], lines = [label(n)];
      if (n[0] >= 0) {
        var f = F[n[0]], meta = f[1];
        if (f[2]) meta += ' · ' + f[2];
        lines.push(meta);
        if (f[3]) lines.push(f[3]);
      }
      lines.push(fmtBytes(n[1]) + ' ' + TITLES[state.w] + ' (' + pct(n[1], root[1]) + ')');
      var s = selfOf(n);
      if (s > 0 && kids(n).length) lines.push('self ' + fmtBytes(s));
      tip.textContent = lines.join('\n');
      tip.hidden = false;
      var x = ev.clientX + 14, y = ev.clientY + 14;
      if (x + tip.offsetWidth > window.innerWidth - 8) x = ev.clientX - tip.offsetWidth - 10;
      if (y + tip.offsetHeight > window.innerHeight - 8) y = ev.clientY - tip.offsetHeight - 10;
      tip.style.left = x + 'px'; tip.style.top = y + 'px';
    });
    box.addEventListener('mouseleave', function () { tip.hidden = true; });
    document.getElementById('freset').addEventListener('click', function () { state.path = []; render(); });
    search.addEventListener('input', function () { if (search.value) highlight(); else render(); });
    function select(w) {
      state.w = w; state.path = [];
      tabs.forEach(function (b) { b.classList.toggle('on', b.getAttribute('data-w') === w); });
      render();
    }
    tabs.forEach(function (b) { b.addEventListener('click', function () { select(b.getAttribute('data-w')); }); });
    var leaked = D.trees.leaked;
    select(leaked && leaked[1] > 0 ? 'leaked' : 'live');
    var rt = null;
    window.addEventListener('resize', function () { clearTimeout(rt); rt = setTimeout(render, 120); });
  }
  document.documentElement.setAttribute('data-ready', '1');
})();
