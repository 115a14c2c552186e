'use strict';

// One instance: SYNCAR_SOCKET=/tmp/syncar/a.sock PORT=3030 node server.js

const { createApp } = require('./app');

const port = Number(process.env.PORT || 3030);
// Loopback by default; HOST=0.0.0.0 to serve other machines (or other containers).
const host = process.env.HOST || '127.0.0.1';
const app = createApp();

app.listen(port, host).then(() => {
  console.log(`instance ${process.pid} listening on http://${host}:${port}`);
});
// On every (re)connection: after syncar restarts, the plugin connects again by itself.
app.sync.on('connect', () => {
  console.log(`instance ${process.pid} ready: connected to syncar ${app.sync.instance} (broker ${app.sync.broker})`);
});

let stopping = false;
async function shutdown() {
  if (stopping) {
    return;
  }
  stopping = true;
  // socket.io's clients first (closing the HTTP server waits for every connection), then
  // app.teardown(), which closes the HTTP server and waits (briefly) until syncar has taken the last
  // events.
  app.io?.disconnectSockets(true);
  await app.teardown();
  process.exit(0);
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
