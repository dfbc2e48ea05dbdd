// A busy Node HTTP server for the report-speed benchmark: JSON churn, zlib,
// Buffers, and a slow native leak, under a bounded in-process load loop on
// 127.0.0.1 that stops by itself after DURATION_S seconds (default 600).
'use strict';
const http = require('http');
const zlib = require('zlib');
const duration = Number(process.env.DURATION_S || 600) * 1000;
const leaked = [];
let n = 0;
const server = http.createServer((req, res) => {
  n++;
  const rows = Array.from({ length: 100 }, (_, i) => ({ i, v: Math.random().toString(36) }));
  let body = Buffer.from(JSON.stringify(rows));
  if (n % 3 === 0) body = zlib.gzipSync(body);
  if (n % 50 === 0) { const z = zlib.createDeflate(); z.write('x'); leaked.push(z); }
  res.end(body);
});
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });
  const end = Date.now() + duration;
  function one() {
    if (Date.now() > end) { server.close(); agent.destroy(); return; }
    http.get({ host: '127.0.0.1', port, path: '/', agent }, (r) => { r.resume(); r.on('end', one); }).on('error', () => {});
  }
  for (let i = 0; i < 8; i++) one();
});
