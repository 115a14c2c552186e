'use strict';

// A real syncar on a real redis-server sees an origin's sequence numbers jump: the plugin emits `gap` with the
// frame's fields. The batches are put on the broker by hand, as another instance's daemon would send them.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const { once } = require('node:events');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('..');
const { removeDir, startDaemon, startRedis, tempDir, waitForEvent } = require('./helpers');

const TIMEOUT = 15_000;

/** PUBLISH `body` on `channel`, over a connection of its own; resolves with the number of subscribers. */
async function publish(port, channel, body) {
  const socket = net.connect(port, '127.0.0.1');
  await once(socket, 'connect');
  const bulk = (text) => `$${Buffer.byteLength(text)}\r\n${text}\r\n`;
  socket.write(`*3\r\n${bulk('PUBLISH')}${bulk(channel)}${bulk(body)}`);
  const [reply] = await once(socket, 'data');
  socket.destroy();
  return Number(reply.toString().slice(1));
}

function batch(seq, n) {
  return JSON.stringify({ v: 1, origin: 'elsewhere', run: 'r1', events: [{ id: `e${n}`, time: Date.now() / 1000,
    event: 'created', path: 'messages', data: { n }, context: null }], seq });
}

describe('gap', { timeout: 60_000 }, () => {
  let dir;
  let redis;
  let daemon;
  let app;

  before(async () => {
    dir = tempDir();
    redis = await startRedis(dir);
    daemon = await startDaemon({ socket: path.join(dir, 'gap.sock'), backend: redis.uri, instanceId: 'here' });
    app = feathers();
    app.configure(syncar({ socket: daemon.socket, logger: null }));
    app.use('messages', new MemoryService());
    await app.sync.ready;
  });

  after(async () => {
    if (app) await app.sync.close();
    if (daemon) await daemon.stop();
    if (redis) await redis.stop();
    removeDir(dir);
  });

  it('emits the gap syncar saw in an origin\'s sequence numbers, with the frame\'s fields', async () => {
    const received = [];
    app.service('messages').on('created', (data) => received.push(data.n));
    const gap = waitForEvent(app.sync, 'gap', { timeout: TIMEOUT });
    const warned = waitForEvent(app.sync, 'warning', { filter: (w) => w.code === 'missed', timeout: TIMEOUT });
    const last = waitForEvent(app.service('messages'), 'created', { filter: (data) => data.n === 5, timeout: TIMEOUT });
    assert.equal(await publish(redis.port, 'feathers-sync', batch(1, 1)), 1);
    assert.equal(await publish(redis.port, 'feathers-sync', batch(5, 5)), 1); // 2 to 4 never went by here
    const [frame] = await gap;
    assert.deepEqual(frame, { type: 'gap', origin: 'elsewhere', missed: 3, first: 2, last: 4, run: 'r1',
      reason: 'lost' });
    await warned;
    await last;
    assert.deepEqual(received, [1, 5]);
    assert.equal(app.sync.stats.missed, 3);
  });
});
