'use strict';

// One instance: PORT=3030 SYNCAR_SOCKET=/tmp/syncar/a.sock node server.js

const { createApp } = require('./app');
const { createServer } = require('./http');

const port = Number(process.env.PORT || 3030);
const app = createApp();
const server = createServer(app);

server.listen(port, '127.0.0.1', () => {
  console.log(`instance ${process.pid} listening on http://127.0.0.1:${port}`);
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
