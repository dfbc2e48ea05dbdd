// An allocation-heavy Node HTTP server for the overhead benchmark: each
// request renders JSON rows, copies them into a Buffer, sometimes gzips
// them, and keeps a bounded cache of recent bodies. Listens on 127.0.0.1
// (port 0), prints `port N` on stdout, exits cleanly on SIGTERM or SIGINT
// and stops by itself after MAX_S seconds (default 120) in any case.
'use strict';
const http = require('http');
const zlib = require('zlib');
const cache = [];
let n = 0;
const server = http.createServer((req, res) => {
  n++;
  const rows = Array.from({ length: 40 }, (_, i) => ({ i, n, name: 'row-' + i, v: (n * 31 + i) % 977 }));
  let body = Buffer.from(JSON.stringify(rows));
  const scratch = Buffer.allocUnsafeSlow(4096 + (n % 4096)); // outside the pool: a malloc
  body.copy(scratch, 0, 0, Math.min(body.length, scratch.length));
  if (n % 4 === 0) body = zlib.gzipSync(body);
  if (n % 16 === 0) {
    cache.push(Buffer.from(body));
    if (cache.length > 256) cache.shift();
  }
  res.setHeader('content-type', 'application/json');
  res.end(body);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
setTimeout(() => process.exit(0), Number(process.env.MAX_S || 120) * 1000).unref();
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`port ${server.address().port}\n`);
});
