// Allocation-heavy Node workload: Buffers that go through malloc (> 4 KiB,
// outside the pool), JSON round trips, zlib, and a bounded set of kept
// buffers. Prints one JSON line with the throughput and the peak RSS.
const zlib = require('zlib');
const N = +process.argv[2] || 200000;
const keep = [];
let acc = 0;
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
for (let i = 0; i < N; i++) {
  const b = Buffer.allocUnsafe(4097 + (i % 8192));
  b[0] = i & 255;
  acc += b[0];
  const o = JSON.parse(JSON.stringify({ i, s: 'x'.repeat(i % 64) }));
  acc += o.i & 1;
  if (i % 50 === 0) acc += zlib.deflateSync(b.subarray(0, 2048)).length;
  if (i % 100 === 0) {
    keep.push(Buffer.alloc(16384, i & 255));
    if (keep.length > 500) keep.shift();
  }
}
const dt = Number(process.hrtime.bigint() - t0) / 1e9;
const cu = process.cpuUsage(c0);
const cpu = (cu.user + cu.system) / 1e6; // all threads of the process
console.log(JSON.stringify({ ops_per_s: N / dt, ops_per_cpu_s: N / cpu, seconds: dt, cpu_seconds: cpu, maxrss_kb: process.resourceUsage().maxRSS, acc }));
