'use strict';

// The cluster example of the Feathers scaling guide: one primary forks WORKERS workers (default 4)
// that share one port. Every worker connects to the same syncar, which relays each worker's events
// to all the others; with `syncar run` (local:// backend) no broker is needed.
//
//   syncar run --socket /tmp/syncar/app.sock &
//   SYNCAR_SOCKET=/tmp/syncar/app.sock PORT=3030 node cluster.js

const cluster = require('node:cluster');

const workers = Number(process.env.WORKERS || 4);

if (cluster.isPrimary) {
  console.log(`primary ${process.pid}: starting ${workers} workers`);
  let alive = 0;
  for (let i = 0; i < workers; i += 1) {
    cluster.fork();
    alive += 1;
  }
  let stopping = false;
  cluster.on('exit', (worker, code, signal) => {
    alive -= 1;
    console.log(`worker ${worker.process.pid} exited (${signal || code})`);
    if (stopping && alive === 0) {
      process.exit(0);
    }
  });
  const stop = () => {
    stopping = true;
    if (alive === 0) {
      process.exit(0);
    }
    for (const worker of Object.values(cluster.workers)) {
      worker.process.kill('SIGTERM');
    }
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} else {
  require('./server');
}
