// offheap JS agent. Loaded into the target with `NODE_OPTIONS=--require`
// (`offheap run`, which writes it into the recording with its configuration
// in front, as `const OFFHEAP_CONFIG = {...};`), or evaluated over the
// inspector (`offheap attach`), which calls `start(cfg)`.
//
// Rules: never print to the target's stdout/stderr, never keep the target
// alive (every timer is unref'd), never throw into the target, never change
// its behaviour. If anything fails, the agent goes quiet and the target
// carries on. It never opens a port: heap profiling and heap snapshots go
// through an in-process `inspector.Session`.
//
// It writes one JSON-lines stream per isolate (main thread and every worker):
//   DIR/node-PID-THREADID.jsonl
// with records {"type":"hello"|"mem"|"gc"|"heap_frame"|"heap_stack"|
// "heap_profile"|"snapshot"|"ack"|"bye", ...} (docs/FORMAT.md), and reads the
// CLI's requests from DIR/control.jsonl.
'use strict';
(function () {
  const KEY = Symbol.for('offheap.agent');
  const STREAM_VERSION = 2;

  function start(cfg) {
    if (globalThis[KEY]) return globalThis[KEY];
    const state = { fd: -1, timer: null, obs: null, pending: [], stopped: false };
    globalThis[KEY] = state;
    let fs, v8, perfHooks, wt, inspector;
    try {
      fs = require('fs');
      v8 = require('v8');
      perfHooks = require('perf_hooks');
      try { wt = require('worker_threads'); } catch (_) { wt = null; }
      try { inspector = require('inspector'); } catch (_) { inspector = null; }
    } catch (_) {
      return state;
    }
    const threadId = wt ? wt.threadId : 0;
    const isMain = wt ? wt.isMainThread : true;
    const pid = process.pid;
    const dir = cfg.dir;
    const file = dir + '/node-' + pid + '-' + threadId + '.jsonl';
    const C = fs.constants;
    const APPEND = C.O_WRONLY | C.O_APPEND | (C.O_NOFOLLOW || 0);
    // Capture everything we need now: user code may later replace globals.
    const nowMs = () => Date.now();
    const writeSync = fs.writeSync;
    const fstatSync = fs.fstatSync;
    const openSync = fs.openSync;
    const closeSync = fs.closeSync;
    const stringify = JSON.stringify;
    const parse = JSON.parse;
    const memoryUsage = process.memoryUsage.bind(process);
    const getHeapStatistics = v8.getHeapStatistics;
    const getHeapSpaceStatistics = v8.getHeapSpaceStatistics;
    let ident = null;
    try {
      state.fd = openSync(file, APPEND | C.O_CREAT, 0o600);
      const st = fstatSync(state.fd);
      ident = [st.dev, st.ino];
    } catch (_) {
      state.fd = -1;
      return state; // cannot write: stay out of the way
    }

    // The descriptor is the agent's only while it still refers to its
    // stream: a program (or an addon) may close descriptors it did not
    // open and reuse the numbers. Then the stream is reopened by name,
    // never written through the old number, never closed.
    function owned(fd) {
      try {
        const st = fstatSync(fd);
        return st.dev === ident[0] && st.ino === ident[1];
      } catch (_) {
        return false;
      }
    }
    function ensureFd() {
      if (state.fd < 0) return false;
      if (owned(state.fd)) return true;
      state.fd = -1;
      try {
        const fd = openSync(file, APPEND);
        if (owned(fd)) { state.fd = fd; return true; }
        closeSync(fd);
      } catch (_) { /* gone */ }
      return false;
    }
    function emit(lines) {
      if (lines.length === 0 || !ensureFd()) return;
      try {
        writeSync(state.fd, lines.join(''));
      } catch (_) {
        // Disk full, ...: go quiet for good.
        state.fd = -1;
      }
    }
    function record(obj) {
      state.pending.push(stringify(obj) + '\n');
    }

    // Bytes used in the old generation: every space but the young one, whose
    // occupancy only says how long ago the last scavenge was. What a program
    // keeps is promoted here by its second scavenge.
    function oldGeneration() {
      let old = 0;
      for (const s of getHeapSpaceStatistics()) {
        if (s.space_name !== 'new_space' && s.space_name !== 'new_large_object_space') old += s.space_used_size;
      }
      return old;
    }
    function memRecord() {
      const m = memoryUsage();
      const stats = getHeapStatistics();
      const spaces = {};
      let oldGen = 0;
      for (const s of getHeapSpaceStatistics()) {
        if (s.space_name !== 'new_space' && s.space_name !== 'new_large_object_space') oldGen += s.space_used_size;
        spaces[s.space_name] = {
          space_size: s.space_size,
          space_used_size: s.space_used_size,
          space_available_size: s.space_available_size,
          physical_space_size: s.physical_space_size,
        };
      }
      heap.oldGen = oldGen;
      return stringify({
        type: 'mem', t: nowMs(), rss: m.rss, heap_total: m.heapTotal, heap_used: m.heapUsed,
        external: m.external, array_buffers: m.arrayBuffers, heap: stats, spaces,
      }) + '\n';
    }

    // ---- the in-process inspector session --------------------------------
    // Connected lazily. Under `attach`, only once the CLI has closed the
    // TCP inspector it opened (`inspector.close()` waits for every session).
    let session = null;
    let sessionFailed = false;
    function connect() {
      if (session || sessionFailed || !inspector || !inspector.Session) return session;
      try {
        if (cfg.waitInspectorClose && inspector.url()) return null;
        const s = new inspector.Session();
        s.connect();
        session = s;
      } catch (_) {
        sessionFailed = true;
      }
      return session;
    }
    // In-process sessions dispatch synchronously on this thread.
    function post(method, params) {
      let err = null;
      let res;
      let done = false;
      session.post(method, params || {}, (e, r) => { err = e; res = r; done = true; });
      if (!done) throw new Error(method + ': no synchronous reply');
      if (err) throw err;
      return res;
    }

    // ---- V8's sampling heap profiler: JS culprits of a growing heap ----
    // A read of the profile is costly: V8 runs a full, atomic GC in every
    // one (the inspector always starts sampling with kSamplingForceGC), and
    // on a busy server each forced GC costs far more than its pause (about
    // 100 ms of throughput on bench/http_server.js: optimised code thrown
    // away and rebuilt). So reads are made when they can tell something
    // new, and otherwise at a few fixed ages of the run (see heapDue).
    const heap = {
      on: false, frames: new Map(), stacks: new Map(), nextFrame: 0, nextStack: 0,
      last: 0, maxGapMs: Math.max(2000, cfg.heapProfileMs | 0 || 30000),
      // Right after the last read (a full GC): retained heap and old generation.
      baseUsed: 0, baseOld: 0, oldGen: 0, grewAtMajor: false, majorsSince: 0,
      // The window (performance.now()) of the last full GC offheap itself
      // ran: a profile read's, or fullGc's (which records its own).
      reading: [0, 0], readIsGc: false, readMarked: -1, lastMajorAt: 0,
      beat: 3000, // the age of the next read when nothing else asks for one
    };
    function startHeapSampling() {
      if (heap.on || !(cfg.heapSampleBytes > 0) || !connect()) return;
      try {
        post('HeapProfiler.startSampling', {
          samplingInterval: cfg.heapSampleBytes, stackDepth: 64,
        });
        heap.on = true;
        heap.last = heap.started = nowMs();
        heap.baseUsed = memoryUsage().heapUsed;
        heap.baseOld = heap.oldGen;
      } catch (e) {
        record({ type: 'note', t: nowMs(), text: 'heap sampling unavailable: ' + String(e && e.message) });
        heap.on = false;
      }
    }
    function frameId(cf) {
      const key = cf.functionName + '\u0000' + cf.url + '\u0000' + cf.lineNumber + '\u0000' + cf.columnNumber;
      let id = heap.frames.get(key);
      if (id === undefined) {
        id = heap.nextFrame++;
        heap.frames.set(key, id);
        record({
          type: 'heap_frame', id, function: cf.functionName, url: cf.url,
          line: cf.lineNumber + 1, column: cf.columnNumber + 1,
        });
      }
      return id;
    }
    // atExit: taken after the exit's forced GC, describing teardown (the
    // analysis leaves it out when it has enough others).
    function heapProfile(atExit) {
      if (!heap.on || !session) return;
      let profile;
      const t0 = nowMs();
      heap.reading[0] = perfHooks.performance.now();
      heap.readIsGc = false;
      try {
        profile = post('HeapProfiler.getSamplingProfile').profile;
      } catch (_) {
        return;
      } finally {
        heap.reading[1] = perfHooks.performance.now();
      }
      heap.grewAtMajor = false;
      heap.majorsSince = 0;
      try {
        // Measured here, right after the read's full GC: the retained heap
        // exactly (the GC observer runs later, once new objects exist).
        heap.baseUsed = memoryUsage().heapUsed;
        heap.baseOld = heap.oldGen = oldGeneration();
      } catch (_) { /* keep the old baselines */ }
      // The read's own time (its full GC, and the walk of the tree below)
      // spaces reads to at least 50 times it (heap.cost, set at the end).
      const counts = new Map();
      for (const s of profile.samples || []) counts.set(s.nodeId, (counts.get(s.nodeId) || 0) + 1);
      const sites = [];
      // Depth-first, keeping the path of frame ids from the root.
      const walk = (node, path) => {
        const cf = node.callFrame;
        const here = cf.functionName === '(root)' && path.length === 0 ? path : path.concat(frameId(cf));
        if (node.selfSize > 0 && here.length > 0) {
          const key = here.join(',');
          let id = heap.stacks.get(key);
          if (id === undefined) {
            id = heap.nextStack++;
            heap.stacks.set(key, id);
            record({ type: 'heap_stack', id, frames: here.slice().reverse() });
          }
          sites.push([id, node.selfSize, counts.get(node.id) || 0]);
        }
        for (const c of node.children || []) walk(c, here);
      };
      try { walk(profile.head, []); } catch (_) { return; }
      // The whole read: V8's part and turning the tree into records.
      heap.cost = nowMs() - t0;
      const rec = { type: 'heap_profile', t: nowMs(), interval: cfg.heapSampleBytes, sites };
      if (atExit) rec.exit = true;
      record(rec);
    }

    // Is a read of the heap profile due? Never sooner than minGap after the
    // last one (1 s at first, up to 10 s, and 50 times the last read's own
    // time). Then when the heap may have grown since the last read: a
    // natural mark-compact left more retained than the last read did, or
    // the old generation grew by half (it also holds promoted garbage,
    // which the next mark-compact frees) — a leak gets profiles as fast as
    // it grows. Otherwise at fixed ages of the run (3, 5, 7, 9, 11, 13, 19.5 s ...,
    // then every maxGapMs), skipped when natural mark-compacts since the
    // last read showed that the heap did not grow: a flat service that
    // collects by itself pays for the first reads only.
    function heapDue(now) {
      if (!heap.on || heap.exited) return false;
      const age = now - heap.started;
      const since = now - heap.last;
      const minGap = Math.max(1000, Math.min(age / 5, 10000), 50 * (heap.cost || 0));
      if (since < minGap) return false;
      if (heap.grewAtMajor) return true;
      if (heap.oldGen > heap.baseOld + Math.max(1 << 20, heap.baseOld / 2)) return true;
      if (age < heap.beat) return false;
      // Every 2 s up to 13 s (a short run needs enough reads to show a slow
      // leak's trend), then half again each time up to maxGapMs.
      while (heap.beat <= age) heap.beat += heap.beat < 13000 ? 2000 : Math.max(3000, Math.min(heap.beat / 2, heap.maxGapMs));
      // Skipped when a natural mark-compact in the second half of the gap
      // showed no growth: one soon after the last read says little of a
      // heap that grows slowly.
      return !(heap.majorsSince > 0 && heap.lastMajorAt >= heap.last + since / 2);
    }

    // ---- heap snapshots, taken here on request -------------------------
    let startHeap = null;
    // Views of big ArrayBuffers, by heap snapshot object id, read right
    // after the snapshot: what the analyser needs to tell a hostage buffer
    // (a small slice keeping a big parent alive) from a well-used one.
    function viewGeometry() {
      const GROUP = 'offheap-views';
      const TMP = Symbol.for('offheap.views');
      const out = [];
      let truncated = false;
      try {
        const ta = post('Runtime.evaluate', {
          expression: 'Object.getPrototypeOf(Uint8Array.prototype)', objectGroup: GROUP, silent: true,
        }).result.objectId;
        const dv = post('Runtime.evaluate', {
          expression: 'DataView.prototype', objectGroup: GROUP, silent: true,
        }).result.objectId;
        const picked = [];
        for (const proto of [ta, dv]) {
          const arr = post('Runtime.queryObjects', { prototypeObjectId: proto, objectGroup: GROUP }).objects.objectId;
          post('Runtime.callFunctionOn', {
            objectId: arr, silent: true, objectGroup: GROUP,
            functionDeclaration: 'function (min) { const sym = Symbol.for("offheap.views"); ' +
              'const o = globalThis[sym] || []; ' +
              'for (const v of this) { try { if (v.buffer && v.buffer.byteLength >= min) o.push(v); } catch (_) {} } ' +
              'globalThis[sym] = o; }',
            arguments: [{ value: 64 * 1024 }],
          });
        }
        const views = globalThis[TMP] || [];
        delete globalThis[TMP];
        views.sort((a, b) => b.buffer.byteLength - a.buffer.byteLength);
        if (views.length > 4000) { truncated = true; views.length = 4000; }
        globalThis[TMP] = views;
        for (let i = 0; i < views.length; i++) {
          const v = views[i];
          const oid = post('Runtime.evaluate', {
            expression: "globalThis[Symbol.for('offheap.views')][" + i + ']', objectGroup: GROUP, silent: true,
          }).result.objectId;
          const hid = post('HeapProfiler.getHeapObjectId', { objectId: oid }).heapSnapshotObjectId;
          picked.push([Number(hid), v.byteOffset, v.byteLength, v.buffer.byteLength]);
        }
        out.push(...picked);
      } catch (_) {
        truncated = true;
      }
      try { delete globalThis[TMP]; } catch (_) { /* ignore */ }
      try { post('Runtime.releaseObjectGroup', { objectGroup: GROUP }); } catch (_) { /* ignore */ }
      return { views: out, truncated };
    }
    // The file name the CLI asked for, or `heap-PID-THREAD-NAME.heapsnapshot`.
    function snapshotName(name, file) {
      if (typeof file === 'string' && /^[A-Za-z0-9_.-]+\.heapsnapshot$/.test(file)) return file;
      return 'heap-' + pid + '-' + threadId + '-' + String(name).replace(/[^A-Za-z0-9_.-]/g, '_') + '.heapsnapshot';
    }
    function takeSnapshot(name, request, file) {
      const t0 = nowMs();
      if (!connect()) {
        record({ type: 'snapshot', t: t0, name, request, error: 'no in-process inspector session' });
        return false;
      }
      const base = snapshotName(name, file);
      const final = dir + '/' + base;
      const partial = final + '.partial';
      let sfd = -1;
      let bytes = 0;
      let werr = null;
      const onChunk = (m) => {
        if (werr) return;
        try {
          const c = m.params.chunk;
          writeSync(sfd, c);
          bytes += Buffer.byteLength(c);
        } catch (e) { werr = e; }
      };
      try {
        sfd = openSync(partial, C.O_WRONLY | C.O_CREAT | C.O_EXCL | (C.O_NOFOLLOW || 0), 0o600);
        try { post('HeapProfiler.enable'); } catch (_) { /* ids still come from the isolate's profiler */ }
        if (typeof v8.writeHeapSnapshot === 'function') {
          // Synchronous on every Node version (the inspector's
          // takeHeapSnapshot answers asynchronously from Node 22 on). It
          // writes over the file just created O_EXCL|O_NOFOLLOW in the
          // private recording directory.
          closeSync(sfd);
          sfd = -1;
          v8.writeHeapSnapshot(partial);
          bytes = fs.statSync(partial).size;
        } else {
          session.on('HeapProfiler.addHeapSnapshotChunk', onChunk);
          try {
            post('HeapProfiler.takeHeapSnapshot', { reportProgress: false });
          } finally {
            session.removeListener('HeapProfiler.addHeapSnapshotChunk', onChunk);
          }
        }
        if (sfd >= 0) { closeSync(sfd); sfd = -1; }
        if (werr) throw werr;
        const geo = viewGeometry();
        const viewsFile = final + '.views.json';
        const vfd = openSync(viewsFile, C.O_WRONLY | C.O_CREAT | C.O_EXCL | (C.O_NOFOLLOW || 0), 0o600);
        try { writeSync(vfd, stringify(geo)); } finally { closeSync(vfd); }
        fs.renameSync(partial, final);
        const m = memoryUsage();
        if (name === 'start') startHeap = { heap: m.heapUsed, external: m.external, rss: m.rss };
        if (name === 'end') state.endTaken = true;
        record({
          type: 'snapshot', t: t0, name, request, file: base, bytes, views: geo.views.length,
          views_truncated: geo.truncated, duration_ms: nowMs() - t0, heap_used: m.heapUsed,
        });
        return true;
      } catch (e) {
        try { if (sfd >= 0) closeSync(sfd); } catch (_) { /* ignore */ }
        try { fs.unlinkSync(partial); } catch (_) { /* ignore */ }
        record({ type: 'snapshot', t: t0, name, request, error: String(e && e.message) });
        return false;
      }
    }

    // ---- requests from the CLI -------------------------------------------
    const controlPath = dir + '/control.jsonl';
    let controlOffset = 0;
    let controlPartial = '';
    function control() {
      let size = 0;
      try {
        const st = fs.statSync(controlPath, { throwIfNoEntry: false });
        if (!st || !st.isFile()) return;
        size = st.size;
      } catch (_) { return; }
      if (size <= controlOffset) return;
      let text = '';
      try {
        const fd = openSync(controlPath, C.O_RDONLY | (C.O_NOFOLLOW || 0));
        try {
          const n = Math.min(size - controlOffset, 1 << 20);
          const buf = Buffer.alloc(n);
          const got = fs.readSync(fd, buf, 0, n, controlOffset);
          controlOffset += got;
          text = buf.toString('utf8', 0, got);
        } finally { closeSync(fd); }
      } catch (_) { return; }
      const lines = (controlPartial + text).split('\n');
      controlPartial = lines.pop();
      for (const line of lines) {
        let req;
        try { req = parse(line); } catch (_) { continue; }
        if (!req || (req.pid !== undefined && req.pid !== pid)) continue;
        if ((req.thread === undefined ? 0 : req.thread) !== threadId && req.thread !== 'all') continue;
        handle(req);
      }
    }
    function fullGc() {
      const t0 = perfHooks.performance.now();
      const at = nowMs();
      heap.reading[0] = t0;
      heap.readIsGc = true;
      let ok = false;
      try {
        if (connect()) { post('HeapProfiler.collectGarbage'); ok = true; }
      } catch (_) { ok = false; }
      if (!ok) {
        try {
          v8.setFlagsFromString('--expose-gc');
          require('vm').runInNewContext('gc')();
          ok = true;
        } catch (_) { /* ignore */ }
      }
      heap.reading[1] = perfHooks.performance.now();
      if (ok) {
        const used = memoryUsage().heapUsed;
        record({
          type: 'gc', t: at, kind: 4, flags: 4 /* forced */,
          duration_ms: heap.reading[1] - t0, heap_used_after: used, old_used_after: oldGeneration(),
        });
      }
      return ok;
    }
    function handle(req) {
      let ok = true;
      if (req.op === 'snapshot') {
        ok = takeSnapshot(req.name || 'snapshot', req.id, req.file);
        if (ok && req.name === 'start' && cfg.trackAllocations) {
          try { post('HeapProfiler.startTrackingHeapObjects', { trackAllocations: true }); } catch (_) { /* ignore */ }
        }
      } else if (req.op === 'gc') {
        ok = fullGc();
      } else if (req.op === 'stop') {
        fullGc();
        heapProfile();
        record({ type: 'ack', t: nowMs(), id: req.id, op: req.op, ok: true });
        state.stop();
        return;
      } else {
        ok = false;
      }
      record({ type: 'ack', t: nowMs(), id: req.id, op: req.op, ok });
      flush();
    }

    // ---- the CLI's life ---------------------------------------------------
    function cliGone() {
      if (!(cfg.cliPid > 0)) return false;
      try { process.kill(cfg.cliPid, 0); return false; } catch (e) { return e && e.code === 'ESRCH'; }
    }

    function flush() {
      const lines = state.pending;
      state.pending = [];
      emit(lines);
    }
    function tick() {
      if (state.stopped) return;
      try {
        if (cliGone()) {
          record({ type: 'note', t: nowMs(), text: 'offheap (pid ' + cfg.cliPid + ') is gone: recording stopped' });
          state.stop();
          return;
        }
        state.pending.push(memRecord());
        startHeapSampling();
        if (heapDue(nowMs())) {
          heap.last = nowMs();
          heapProfile();
        }
        flush();
        control();
      } catch (e) {
        // Never throw into the target; say once what went wrong.
        if (!state.tickError) {
          state.tickError = true;
          try { record({ type: 'note', t: nowMs(), text: 'JS agent: ' + String(e && e.message) }); flush(); } catch (_) { /* ignore */ }
        }
      }
    }

    try {
      emit([stringify({
        type: 'hello', t: nowMs(), pid, thread_id: threadId,
        node_version: process.version, v8_version: process.versions.v8,
        is_main_thread: isMain, version: STREAM_VERSION, mode: cfg.mode || 'run',
        exec_argv: process.execArgv, heap_sample_bytes: cfg.heapSampleBytes || 0,
      }) + '\n']);
    } catch (_) { /* ignore */ }

    try {
      const obs = new perfHooks.PerformanceObserver((list) => {
        try {
          let after;
          for (const e of list.getEntries()) {
            const d = e.detail || {};
            const kind = d.kind !== undefined ? d.kind : e.kind;
            const rec = {
              type: 'gc', t: perfHooks.performance.timeOrigin + e.startTime,
              kind: kind | 0, flags: (d.flags !== undefined ? d.flags : e.flags) | 0,
              duration_ms: e.duration,
            };
            if (kind === 4 /* NODE_PERFORMANCE_GC_MAJOR: mark-sweep-compact */) {
              const ours = e.startTime >= heap.reading[0] - 1 && e.startTime <= heap.reading[1] + 1;
              if (ours && heap.readIsGc) continue; // fullGc recorded it, measured at once
              if (ours) {
                // A profile read's full GC (V8 may run several): the first
                // one carries the figures measured right after the read.
                if (heap.readMarked !== heap.reading[0]) {
                  heap.readMarked = heap.reading[0];
                  rec.heap_used_after = heap.baseUsed;
                  rec.old_used_after = heap.baseOld;
                  rec.read = true;
                }
              } else {
                // Measured now, a little after the GC: heapUsed also holds
                // what was allocated since; the old generation hardly moves.
                if (after === undefined) after = [memoryUsage().heapUsed, oldGeneration()];
                rec.heap_used_after = after[0];
                rec.old_used_after = after[1];
                // A natural one that retained more than the last read.
                heap.majorsSince++;
                heap.lastMajorAt = nowMs();
                if (after[1] > heap.baseOld * 1.05 + (256 << 10)) heap.grewAtMajor = true;
              }
            }
            state.pending.push(stringify(rec) + '\n');
          }
          if (state.pending.length > 1000) flush();
        } catch (_) { /* ignore */ }
      });
      obs.observe({ entryTypes: ['gc'] });
      state.obs = obs;
    } catch (_) { /* gc events unavailable: carry on without them */ }

    state.timer = setInterval(tick, Math.max(10, cfg.intervalMs | 0 || 500));
    if (state.timer && state.timer.unref) state.timer.unref();
    tick();
    state.tick = tick;

    state.stop = function () {
      if (state.stopped) return;
      state.stopped = true;
      try { clearInterval(state.timer); } catch (_) { /* ignore */ }
      try { if (state.obs) state.obs.disconnect(); } catch (_) { /* ignore */ }
      try { if (heap.on) post('HeapProfiler.stopSampling'); } catch (_) { /* ignore */ }
      heap.on = false;
      try { if (cfg.trackAllocations && session) post('HeapProfiler.stopTrackingHeapObjects', { reportProgress: false }); } catch (_) { /* ignore */ }
      try { if (session) post('HeapProfiler.disable'); } catch (_) { /* ignore */ }
      try { if (session) session.disconnect(); } catch (_) { /* ignore */ }
      session = null;
      try { state.pending.push(memRecord()); } catch (_) { /* ignore */ }
      record({ type: 'bye', t: nowMs() });
      flush();
      try { if (state.fd >= 0 && owned(state.fd)) closeSync(state.fd); } catch (_) { /* ignore */ }
      try { if (state.onExit) process.removeListener('exit', state.onExit); } catch (_) { /* ignore */ }
      state.fd = -1;
      try { delete globalThis[KEY]; } catch (_) { /* ignore */ }
    };
    // When the main isolate exits normally: one full GC, so that the end of
    // the recording has a true "retained after GC" figure (a short run may
    // never see a natural mark-compact), a last heap profile, and with
    // --snapshots the end snapshot, when the heap, external memory or RSS grew
    // since the start snapshot and the heap is small enough to write in a
    // bounded time. The process is already exiting with its own code:
    // nothing observable to the program changes.
    function exitSample() {
      // The CLI holds back its SIGTERM while the process is exiting.
      try { record({ type: 'exiting', t: nowMs() }); flush(); } catch (_) { /* ignore */ }
      try {
        // Skipped for very large heaps, where a full GC would delay the exit noticeably.
        if (isMain && cfg.mode !== 'attach' && memoryUsage().heapUsed < 1024 * 1024 * 1024) fullGc();
      } catch (_) { /* ignore */ }
      try { heapProfile(true); heap.last = nowMs(); heap.exited = true; } catch (_) { /* ignore */ }
      try {
        if (isMain && cfg.snapshots && startHeap && !state.endTaken) {
          const m = memoryUsage();
          const grew = (now, then) => now - then > Math.max(8 << 20, then / 10);
          const limit = cfg.exitSnapshotMaxHeap || 256 * 1024 * 1024;
          // RSS too: the snapshot's native wrappers tie a native leak to its JS holders.
          if (!(grew(m.heapUsed, startHeap.heap) || grew(m.external, startHeap.external) || grew(m.rss, startHeap.rss || m.rss))) {
            record({ type: 'note', t: nowMs(), text: 'no end heap snapshot at exit: neither the JS heap, external memory nor RSS grew since the start snapshot' });
          } else if (m.heapUsed > limit) {
            record({ type: 'note', t: nowMs(), text: 'no end heap snapshot at exit: the heap (' + m.heapUsed + ' bytes) is over the ' + limit + '-byte bound' });
          } else {
            // The target's own main thread: the name the CLI reads.
            const own = cfg.mode === 'run' && process.ppid === cfg.cliPid;
            state.endTaken = takeSnapshot('end', null, own ? 'end.heapsnapshot' : null);
          }
        }
      } catch (_) { /* ignore */ }
      try { tick(); } catch (_) { /* ignore */ }
      try { record({ type: 'bye', t: nowMs(), exit_code: process.exitCode }); flush(); } catch (_) { /* ignore */ }
    }
    try { process.on('exit', exitSample); state.onExit = exitSample; } catch (_) { /* ignore */ }
    return state;
  }

  // Launched by `offheap run`: the configuration is written in front of
  // this file. Children should not inherit offheap's injection unless
  // asked: restore the user's NODE_OPTIONS.
  const boot = typeof OFFHEAP_CONFIG !== 'undefined' ? OFFHEAP_CONFIG : null; // eslint-disable-line no-undef
  if (boot && typeof module !== 'undefined' && module.exports !== undefined) {
    if (!boot.followExec) {
      try {
        if (boot.nodeOptions === null) delete process.env.NODE_OPTIONS;
        else process.env.NODE_OPTIONS = boot.nodeOptions;
      } catch (_) { /* ignore */ }
    }
    try {
      start(Object.assign({ mode: 'run' }, boot));
    } catch (_) { /* never break the target */ }
  }
  if (typeof module !== 'undefined') module.exports = { start };
  return { start };
})();
