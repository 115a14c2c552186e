'use strict';

// Acknowledgements by barrier (docs/protocol.md#barrier): one `ack` for many publishes where the daemon offers them,
// one per publish where it does not; against a real daemon and scripted ones.

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('..');
const { startDaemon, startScriptedDaemon, tempScope, waitForEvent, waitUntil } = require('./helpers');

const TIMEOUT = 15_000;

function makeApp(socket, options = {}) {
  const app = feathers();
  app.configure(syncar({ socket, logger: null, reconnect: { minDelay: 20, maxDelay: 200 }, ...options }));
  app.use('messages', new MemoryService());
  return app;
}

const framesOf = (connection, type) => connection.frames.filter((f) => f.type === type);

describe('acks by barrier', () => {
  const scope = tempScope();
  const { cleanup } = scope;

  it('asks syncar for barriers, and every publish is acknowledged by them', async () => {
    const daemon = await startDaemon({ socket: path.join(scope.dir, 'real.sock') });
    cleanup.push(() => daemon.stop());
    const app = makeApp(daemon.socket);
    cleanup.push(() => app.sync.close());
    await app.sync.ready;
    assert.equal(app.sync.connection.barriers, true);
    for (let n = 1; n <= 600; n += 1) {
      await app.service('messages').create({ n }); // more than two barriers' worth (256 each)
    }
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
  });

  it('sends a barrier after every quarter of maxPending, one at a time, and lets go of what it covers', async () => {
    const server = await startScriptedDaemon(path.join(scope.dir, 'count.sock'), { barriers: true });
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));
    const app = makeApp(server.address(), { maxPending: 8 }); // a barrier every 2 publishes
    cleanup.push(() => app.sync.close());
    await app.sync.ready;
    const [connection] = server.connections;
    const twoBarriers = waitForEvent(server, 'frame', {
      filter: () => framesOf(connection, 'barrier').length === 2, timeout: TIMEOUT,
    });
    for (let n = 1; n <= 4; n += 1) {
      await app.service('messages').create({ n });
    }
    await twoBarriers;
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    const ids = framesOf(connection, 'publish').map((f) => f.id);
    // Each barrier is named after the last publish it covers.
    assert.deepEqual(framesOf(connection, 'barrier').map((f) => f.id), [ids[1], ids[3]].map((id) => id.replace(/-(\d+)$/, '-b$1')));
    assert.ok(framesOf(connection, 'publish').every((f) => f.ack === true), 'a daemon may still acknowledge each');
  });

  it('sends a barrier soon after a lone publish, and at once when close() waits for it', async () => {
    const server = await startScriptedDaemon(path.join(scope.dir, 'timer.sock'), { barriers: true });
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));
    const app = makeApp(server.address());
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    await app.sync.ready;
    await app.service('messages').create({ n: 1 });
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    await app.service('messages').create({ n: 2 });
    assert.equal(app.sync.pending, 1);
    await app.sync.close();
    assert.equal(app.sync.pending, 0);
    assert.deepEqual(warnings, []);
    assert.equal(framesOf(server.connections[0], 'barrier').length, 2);
  });

  it('re-sends what a barrier never answered covered, after a reconnect, and a barrier behind it', async () => {
    // The first connection reads publishes and a barrier and dies without answering; the second answers.
    const server = await startScriptedDaemon(path.join(scope.dir, 'lost.sock'), {
      barriers: true, ack: ({ number }) => number > 1,
    });
    const { connections } = server;
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));
    const app = makeApp(server.address(), { maxPending: 12 }); // a barrier every 3 publishes
    cleanup.push(() => app.sync.close());
    await app.sync.ready;
    const barrier = waitForEvent(server, 'frame', { filter: (c, f) => f.type === 'barrier', timeout: TIMEOUT });
    for (let n = 1; n <= 3; n += 1) {
      await app.service('messages').create({ n });
    }
    await barrier;
    assert.equal(app.sync.pending, 3);
    const lost = waitForEvent(app.sync, 'disconnect', { timeout: TIMEOUT });
    connections[0].conn.destroy();
    await lost;
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    const again = connections[1];
    assert.deepEqual(framesOf(again, 'publish').map((f) => f.data.n), [1, 2, 3]);
    assert.deepEqual(again.frames.map((f) => f.type), ['hello', 'publish', 'publish', 'publish', 'barrier']);
  });

  it('asks a daemon older than barriers for an ack of each publish, and sends it no barrier', async () => {
    const server = await startScriptedDaemon(path.join(scope.dir, 'old.sock'));
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));
    const app = makeApp(server.address(), { maxPending: 8 });
    cleanup.push(() => app.sync.close());
    await app.sync.ready;
    assert.equal(server.connections[0].frames[0].barriers, true, 'asked, and not offered');
    assert.equal(app.sync.connection.barriers, false);
    for (let n = 1; n <= 5; n += 1) {
      await app.service('messages').create({ n });
    }
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    assert.deepEqual(framesOf(server.connections[0], 'barrier'), []);
  });
});
