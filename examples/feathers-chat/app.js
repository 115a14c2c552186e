'use strict';

// The Feathers app, built as Feathers apps are: Koa for HTTP (REST and the chat page), socket.io for
// real-time events. A `messages` service (in memory, one store per instance) whose events reach
// every other instance through syncar, and from there that instance's socket.io clients.

const os = require('node:os');
const path = require('node:path');
const { feathers } = require('@feathersjs/feathers');
const { koa, rest, bodyParser, errorHandler, serveStatic } = require('@feathersjs/koa');
const socketio = require('@feathersjs/socketio');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('@syncar/feathers');

/** The directory a package's browser bundles are in: served as they are, no build step. */
function dist(name) {
  return path.join(path.dirname(require.resolve(`${name}/package.json`)), 'dist');
}

function createApp() {
  const app = koa(feathers());
  // Which server (and process: a cluster's workers share the name) a message was created on.
  const server = `${process.env.SERVER_NAME || os.hostname()}:${process.pid}`;

  app.use(errorHandler());
  // The page, and the Feathers client and socket.io-client bundles it loads (/feathers.min.js,
  // /socket.io.min.js), straight from node_modules.
  app.use(serveStatic(path.join(__dirname, 'public')));
  app.use(serveStatic(dist('@feathersjs/client')));
  app.use(serveStatic(dist('socket.io-client')));
  app.use(bodyParser());
  app.configure(rest());
  // WebSocket only, as the scaling guide says: a cluster worker then handles the whole connection
  // (socket.io's HTTP long-polling handshake would spread over several workers and fail).
  app.configure(socketio({ transports: ['websocket'] }));

  // The one line that replaces feathers-sync, before the services. The socket defaults to
  // $SYNCAR_SOCKET, then to where `syncar run` puts it.
  app.configure(syncar({ socket: process.env.SYNCAR_SOCKET }));

  app.use('messages', new MemoryService({ paginate: { default: 25, max: 100 } }));
  app.service('messages').hooks({
    before: {
      create: [async (context) => {
        const { name, text } = context.data;
        context.data = { name: String(name || 'anonymous').slice(0, 40), text: String(text || '').slice(0, 2000),
          createdAt: new Date().toISOString(), server };
      }],
    },
  });

  // Every socket.io client gets every event of every instance: its own instance's, and those that
  // syncar brings in from the others (emitted on the service like local ones).
  app.on('connection', (connection) => app.channel('everybody').join(connection));
  app.publish(() => app.channel('everybody'));
  return app;
}

module.exports = { createApp };
