// offheap demo load loop: bounded in time and count, 127.0.0.1 only.
'use strict';
const http = require('http');
const port = Number(process.argv[2]);
const deadline = Date.now() + 120000; // stops by itself after 2 minutes at most
const maxRequests = 200000;
let sent = 0;
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

function one() {
  if (Date.now() > deadline || sent >= maxRequests) return;
  sent++;
  const url = sent % 4 === 0 ? '/compress' : '/rows';
  const req = http.get({ host: '127.0.0.1', port, path: url, agent }, (res) => {
    res.resume();
    res.on('end', () => setTimeout(one, 2));
  });
  req.on('error', () => process.exit(0)); // server gone: done
}
for (let i = 0; i < 4; i++) one();
