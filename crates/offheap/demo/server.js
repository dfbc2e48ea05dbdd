// offheap demo: a small HTTP API with a deliberate native leak.
//
// Every request to /compress gets its own zlib stream that is kept in a
// "session" map and never closed. The JS wrapper is small, but each deflate
// stream holds about 256 KB of native zlib state: RSS climbs while the V8
// heap stays flat. This is the classic "the heap snapshot looks fine"
// leak, and offheap names it.
'use strict';
const http = require('http');
const zlib = require('zlib');
const { spawn } = require('child_process');
const path = require('path');

const sessions = new Map();
let served = 0;

function compressForSession(id, body) {
  let gz = sessions.get(id);
  if (!gz) {
    gz = zlib.createDeflate({ level: 6 });
    gz.on('data', () => {});
    sessions.set(id, gz); // BUG: never closed, never evicted
  }
  gz.write(body);
  return body.length;
}

function handle(req, res) {
  served++;
  if (req.url.startsWith('/compress')) {
    const id = 's' + served; // a new "session" per request
    const n = compressForSession(id, Buffer.from(JSON.stringify({ id, t: Date.now(), pad: 'x'.repeat(512) })));
    res.end(JSON.stringify({ ok: true, bytes: n }));
  } else {
    // Legitimate churn: allocate, serialise, let it go.
    const rows = Array.from({ length: 200 }, (_, i) => ({ i, v: Math.random().toString(36) }));
    res.end(JSON.stringify(rows));
  }
}

const server = http.createServer(handle);
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port;
  const load = spawn(process.execPath, [path.join(__dirname, 'load.js'), String(port)], { stdio: 'inherit' });
  load.on('exit', () => server.close());
  const stop = () => { load.kill(); server.close(); setTimeout(() => process.exit(0), 200).unref(); };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  console.log(`demo server on http://127.0.0.1:${port} (zlib sessions leak on /compress)`);
});
