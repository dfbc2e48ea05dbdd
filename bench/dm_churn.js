// Default-mode benchmark, workload (a): small-object churn. JS objects,
// arrays and strings (V8 heap: what the sampling heap profiler sees), JSON
// round trips, Maps, and small typed arrays and TextEncoder output, whose
// backing stores are small mallocs (what the native agent sees). A bounded
// set is kept alive so that old-space GC has work. Fixed work: N iterations
// (argv[2]); prints one JSON line with ops_per_s.
'use strict';
const N = +process.argv[2] || 400000;
const enc = new TextEncoder();
const keep = new Array(8192);
const map = new Map();
let acc = 0;
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
for (let i = 0; i < N; i++) {
  const o = {
    id: i, name: 'item-' + i, tags: [i & 7, i & 15, 'x' + (i % 100)],
    nested: { a: i * 2, s: String(i).padStart(10, '0') },
  };
  const p = JSON.parse(JSON.stringify(o));
  const arr = Array.from({ length: 8 + (i & 15) }, (_, k) => k * i);
  const words = (p.name + ' ' + p.nested.s + ' ' + p.tags.join(',')).split(' ');
  const u = new Uint8Array(16 + (i & 255)); // own small ArrayBuffer: calloc + BackingStore
  u[0] = i & 255;
  const t = enc.encode(words[1]); // another small backing store
  acc += u[0] + t.length + arr.length + words.length;
  keep[i & 8191] = (i & 3) ? p : arr;
  map.set('k' + (i % 20000), u);
  if ((i & 1023) === 0) acc += map.size;
}
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
const cu = process.cpuUsage(c0);
const cpu = (cu.user + cu.system) / 1e6;
console.log(JSON.stringify({ pid: process.pid, workload: 'churn', ops: N, seconds: dt, ops_per_s: N / dt, ops_per_cpu_s: N / cpu, maxrss_kb: process.resourceUsage().maxRSS, acc }));
