// Default-mode benchmark, workload (b): big Buffers and zlib. Each operation
// allocates a zero-filled Buffer of 64 KiB-1 MiB (a malloc/calloc, large
// ones mmap'd by glibc), writes text into part of it, copies a slice, and
// compresses it: even operations with zlib.deflateSync on the main thread,
// odd ones with zlib.deflate on the threadpool (up to 4 in flight). Fixed
// work: N operations (argv[2]); prints one JSON line with ops_per_s.
'use strict';
const zlib = require('zlib');
const N = +process.argv[2] || 1200;
const text = Buffer.from('offheap benchmark: a line of text that compresses but not to nothing 0123456789\n'.repeat(64));
const keep = [];
let acc = 0;
let started = 0;
let finished = 0;
let inflight = 0;
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
function op(i) {
  const size = (64 << 10) + ((i * 7919) % 15) * (64 << 10); // 64 KiB .. 960 KiB
  const b = Buffer.alloc(size);
  for (let off = 0; off < size / 4; off += text.length * 4) text.copy(b, off);
  const copy = Buffer.from(b.subarray(0, size >> 3));
  acc += copy[copy.length - 1];
  if (i % 16 === 0) {
    keep.push(copy);
    if (keep.length > 32) keep.shift();
  }
  if (i % 2 === 0) {
    acc += zlib.deflateSync(b, { level: 1 }).length;
    return false;
  }
  inflight++;
  zlib.deflate(b, { level: 1 }, (err, out) => {
    if (err) throw err;
    acc += out.length;
    inflight--;
    finished++;
    pump();
  });
  return true;
}
function pump() {
  while (started < N && inflight < 4) {
    if (!op(started++)) finished++;
  }
  if (finished === N) done();
}
function done() {
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  console.log(JSON.stringify({ pid: process.pid, workload: 'buffers_zlib', ops: N, seconds: dt, ops_per_s: N / dt, ops_per_cpu_s: N / cpu, maxrss_kb: process.resourceUsage().maxRSS, acc }));
}
pump();
