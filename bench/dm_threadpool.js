// Default-mode benchmark, workload (d): threadpool-heavy. Many small pieces
// of libuv threadpool work, C (default 64) in flight: crypto.pbkdf2 with few
// iterations and crypto.randomBytes (uv_queue_work), zlib.deflate of 2 KiB
// (uv_queue_work), fs.readFile of a 4 KiB file (open, fstat, read, close:
// four uv__work_submit each). The work itself is cheap, so the cost of
// queueing (where the agent's origin hooks capture the JS stack) is a large
// share. Fixed work: N operations (argv[2]), the four kinds in turn (or
// only those listed in TP_MIX, e.g. TP_MIX=readFile); prints one JSON line
// with ops_per_s.
'use strict';
const crypto = require('crypto');
const zlib = require('zlib');
const fs = require('fs');
const os = require('os');
const path = require('path');
const N = +process.argv[2] || 60000;
const C = +process.env.CONCURRENCY || 64;
const KINDS = ['pbkdf2', 'deflate', 'readFile', 'randomBytes'];
const MIX = (process.env.TP_MIX || KINDS.join(',')).split(',').map((k) => KINDS.indexOf(k));
if (MIX.some((k) => k < 0)) throw new Error('TP_MIX: kinds are ' + KINDS.join(','));
const file = path.join(os.tmpdir(), `offheap-bench-tp-${process.pid}.txt`);
fs.writeFileSync(file, 'threadpool benchmark file\n'.repeat(160)); // 4 KiB
const small = Buffer.from('a small deflate input, repeated a few times; '.repeat(46)); // 2 KiB
let started = 0;
let finished = 0;
let acc = 0;
const t0 = process.hrtime.bigint();
const c0 = process.cpuUsage();
function next() {
  finished++;
  if (started < N) start(started++);
  else if (finished === N) done();
}
function start(i) {
  switch (MIX[i % MIX.length]) {
    case 0:
      crypto.pbkdf2('password' + (i & 63), 'salt', 4, 32, 'sha256', (err, key) => {
        if (err) throw err;
        acc += key[0];
        next();
      });
      break;
    case 1:
      zlib.deflate(small, (err, out) => {
        if (err) throw err;
        acc += out.length;
        next();
      });
      break;
    case 2:
      fs.readFile(file, (err, data) => {
        if (err) throw err;
        acc += data.length;
        next();
      });
      break;
    default:
      crypto.randomBytes(32, (err, b) => {
        if (err) throw err;
        acc += b[0];
        next();
      });
  }
}
function done() {
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  const cu = process.cpuUsage(c0);
  const cpu = (cu.user + cu.system) / 1e6;
  try { fs.unlinkSync(file); } catch (_) { /* ignore */ }
  console.log(JSON.stringify({ pid: process.pid, workload: 'threadpool', ops: N, concurrency: C, mix: MIX.map((k) => KINDS[k]).join(','), seconds: dt, ops_per_s: N / dt, ops_per_cpu_s: N / cpu, maxrss_kb: process.resourceUsage().maxRSS, acc }));
}
for (let k = 0; k < C && started < N; k++) start(started++);
