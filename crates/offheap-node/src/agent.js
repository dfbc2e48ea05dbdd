// offheap JS agent. Loaded into the target with `NODE_OPTIONS=--require`
// (`offheap run`), or evaluated over the inspector (`offheap attach`).
//
// Rules: never print to the target's stdout/stderr, never keep the target
// alive (every timer is unref'd), never throw into the target, never change
// its behaviour. If anything fails, the agent goes quiet and the target
// carries on.
//
// It writes one JSON-lines stream per isolate (main thread and every worker):
//   DIR/node-PID-THREADID.jsonl
// with records {"type":"hello"|"mem"|"gc", ...} (docs/FORMAT.md).
'use strict';
(function () {
  const KEY = Symbol.for('offheap.agent');
  const STREAM_VERSION = 1;

  function start(cfg) {
    if (globalThis[KEY]) return globalThis[KEY];
    const state = { fd: -1, timer: null, obs: null, pending: [], stopped: false };
    globalThis[KEY] = state;
    let fs, v8, perfHooks, wt;
    try {
      fs = require('fs');
      v8 = require('v8');
      perfHooks = require('perf_hooks');
      try { wt = require('worker_threads'); } catch (_) { wt = null; }
    } catch (_) {
      return state;
    }
    const threadId = wt ? wt.threadId : 0;
    const isMain = wt ? wt.isMainThread : true;
    const file = cfg.dir + '/node-' + process.pid + '-' + threadId + '.jsonl';
    try {
      state.fd = fs.openSync(file, 'a', 0o600);
    } catch (_) {
      return state; // cannot write: stay out of the way
    }
    // Capture everything we need now: user code may later replace globals.
    const nowMs = () => Date.now();
    const writeSync = fs.writeSync;
    const stringify = JSON.stringify;
    const memoryUsage = process.memoryUsage.bind(process);
    const getHeapStatistics = v8.getHeapStatistics;
    const getHeapSpaceStatistics = v8.getHeapSpaceStatistics;

    function emit(lines) {
      if (state.fd < 0 || lines.length === 0) return;
      try {
        writeSync(state.fd, lines.join(''));
      } catch (_) {
        // Disk full, fd closed by the target, ...: go quiet for good.
        state.fd = -1;
      }
    }

    function memRecord() {
      const m = memoryUsage();
      const heap = getHeapStatistics();
      const spaces = {};
      for (const s of getHeapSpaceStatistics()) {
        spaces[s.space_name] = {
          space_size: s.space_size,
          space_used_size: s.space_used_size,
          space_available_size: s.space_available_size,
          physical_space_size: s.physical_space_size,
        };
      }
      return stringify({
        type: 'mem', t: nowMs(), rss: m.rss, heap_total: m.heapTotal, heap_used: m.heapUsed,
        external: m.external, array_buffers: m.arrayBuffers, heap, spaces,
      }) + '\n';
    }

    function tick() {
      if (state.stopped) return;
      try {
        const lines = state.pending;
        state.pending = [];
        lines.push(memRecord());
        emit(lines);
      } catch (_) { /* never throw into the target */ }
    }

    try {
      emit([stringify({
        type: 'hello', t: nowMs(), pid: process.pid, thread_id: threadId,
        node_version: process.version, v8_version: process.versions.v8,
        is_main_thread: isMain, version: STREAM_VERSION, mode: cfg.mode || 'run',
        exec_argv: process.execArgv,
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
              if (after === undefined) after = memoryUsage().heapUsed;
              rec.heap_used_after = after;
            }
            state.pending.push(stringify(rec) + '\n');
          }
          if (state.pending.length > 1000) tick();
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
      tick();
      state.stopped = true;
      try { clearInterval(state.timer); } catch (_) { /* ignore */ }
      try { if (state.obs) state.obs.disconnect(); } catch (_) { /* ignore */ }
      try { if (state.fd >= 0) fs.closeSync(state.fd); } catch (_) { /* ignore */ }
      try { if (state.onExit) process.removeListener('exit', state.onExit); } catch (_) { /* ignore */ }
      state.fd = -1;
      try { delete globalThis[KEY]; } catch (_) { /* ignore */ }
    };
    // When the main isolate exits normally: one full GC, so that the end of
    // the recording has a true "retained after GC" figure (a short run may
    // never see a natural mark-compact), then a last sample. The process is
    // already exiting: nothing observable to the program changes.
    function exitSample() {
      try {
        // Skipped for very large heaps, where a full GC would delay the exit noticeably.
        if (isMain && cfg.mode !== 'attach' && memoryUsage().heapUsed < 1024 * 1024 * 1024) {
          const v8mod = v8;
          v8mod.setFlagsFromString('--expose-gc');
          const gc = require('vm').runInNewContext('gc');
          const t0 = perfHooks.performance.now();
          const at = nowMs();
          gc();
          const after = memoryUsage().heapUsed;
          state.pending.push(stringify({
            type: 'gc', t: at, kind: 4, flags: 4 /* forced */,
            duration_ms: perfHooks.performance.now() - t0, heap_used_after: after,
          }) + '\n');
        }
      } catch (_) { /* ignore */ }
      try { tick(); } catch (_) { /* ignore */ }
    }
    try { process.on('exit', exitSample); state.onExit = exitSample; } catch (_) { /* ignore */ }
    return state;
  }

  // Launched by `offheap run`: configuration comes through the environment.
  const env = process.env;
  const dir = env.OFFHEAP_DIR;
  if (dir && typeof module !== 'undefined' && module.exports !== undefined) {
    // Children should not inherit offheap's injection unless asked: restore
    // the user's NODE_OPTIONS. Workers get a copy of process.env taken
    // later, so OFFHEAP_DIR stays (it is inert without the --require).
    if (env.OFFHEAP_FOLLOW_EXEC !== '1') {
      try {
        if (env.OFFHEAP_HAD_NODE_OPTIONS === '0') delete env.NODE_OPTIONS;
        else if (env.OFFHEAP_HAD_NODE_OPTIONS === '1') env.NODE_OPTIONS = env.OFFHEAP_ORIG_NODE_OPTIONS || '';
      } catch (_) { /* ignore */ }
    }
    try {
      start({ dir, intervalMs: parseInt(env.OFFHEAP_INTERVAL_MS || '500', 10), mode: 'run' });
    } catch (_) { /* never break the target */ }
  }
  if (typeof module !== 'undefined') module.exports = { start };
  return { start };
})();
