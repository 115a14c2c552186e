'use strict';

// One instance: PORT=3030 SYNCAR_SOCKET=/tmp/syncar/a.sock node server.js

const { createApp } = require('./app');
const { createServer } = require('./http');

const port = Number(process.env.PORT || 3030);
// Loopback by default; HOST=0.0.0.0 to serve other machines (or other containers).
const host = process.env.HOST || '127.0.0.1';
const app = createApp();
const server = createServer(app);

server.listen(port, host, () => {
  console.log(`instance ${process.pid} listening on http://${host}:${port}`);
});
app.sync.ready.then(() => {
  console.log(`instance ${process.pid} ready: connected to syncar ${app.sync.instance} (broker ${app.sync.broker})`);
});

function shutdown() {
  server.closeStreams();
  server.close();
  // Waits (briefly) until syncar has taken the last events, then lets the process end.
  app.sync.close().then(() => process.exit(0));
}
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
