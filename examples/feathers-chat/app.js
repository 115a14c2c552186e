'use strict';

// The Feathers app: a `messages` service (in memory, one store per instance) whose events are
// shared with every other instance through syncar.

const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('@syncar/feathers');

function createApp() {
  const app = feathers();

  // The one line that replaces feathers-sync. The socket defaults to $SYNCAR_SOCKET, then to where
  // `syncar run` puts it.
  app.configure(syncar({ socket: process.env.SYNCAR_SOCKET }));

  // `typing` is a custom event: listed here, it travels like created/patched/removed.
  app.use('messages', new MemoryService({ paginate: { default: 25, max: 100 } }), { events: ['typing'] });
  app.service('messages').hooks({
    before: {
      create: [async (context) => {
        context.data = { text: String(context.data.text || ''), createdAt: new Date().toISOString(), by: process.pid };
      }],
    },
  });
  return app;
}

module.exports = { createApp };
