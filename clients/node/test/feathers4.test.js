'use strict';

// The plugin declares @feathersjs/feathers >= 4: Feathers 4 apps (with feathers-memory, its memory service),
// in this process, on a real local syncar, next to a Feathers 5 app.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const feathers4 = require('feathers4');
const memory = require('feathers-memory');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('..');
const { removeDir, startDaemon, tempDir, waitForEvent } = require('./helpers');

const TIMEOUT = 10_000;

describe('Feathers 4', () => {
  let dir;
  let daemon;
  const apps = [];

  before(async () => {
    dir = tempDir();
    daemon = await startDaemon({ socket: path.join(dir, 'syncar.sock') });
  });

  after(async () => {
    await Promise.all(apps.map((app) => app.sync.close()));
    if (daemon) {
      await daemon.stop();
    }
    removeDir(dir);
  });

  async function makeApp(version) {
    const app = version === 4 ? feathers4() : feathers();
    app.configure(syncar({ socket: daemon.socket, logger: null }));
    app.use('messages', version === 4 ? memory({ events: ['typing'] }) : new MemoryService(), { events: ['typing'] });
    apps.push(app);
    await app.sync.ready;
    return app;
  }

  it('sends and receives service and custom events, between Feathers 4 apps and with a Feathers 5 app', async () => {
    assert.match(require('feathers4/package.json').version, /^4\./);
    const [a, b, five] = await Promise.all([makeApp(4), makeApp(4), makeApp(5)]);
    const params = { provider: 'rest', user: { id: 1 } };
    for (const [sender, receiver, text] of [[a, b, '4 to 4'], [a, five, '4 to 5'], [five, b, '5 to 4']]) {
      const filter = (data) => data.text === text;
      const created = waitForEvent(receiver.service('messages'), 'created', { filter, timeout: TIMEOUT });
      const typing = waitForEvent(receiver.service('messages'), 'typing', { filter, timeout: TIMEOUT });
      const record = await sender.service('messages').create({ text }, params);
      sender.service('messages').emit('typing', { user: 1, text });
      const [data, context] = await created;
      assert.deepEqual(data, record);
      assert.deepEqual(context.params, params);
      assert.equal(context.method, 'create');
      assert.equal(context.app, receiver);
      assert.equal(context.service, receiver.service('messages'));
      assert.ok(syncar.isRemote(context));
      assert.deepEqual((await typing)[0], { user: 1, text });
    }
    assert.equal(a.sync.stats.skipped + b.sync.stats.skipped, 0);
  });

  it('keeps a call with context[SYNC] = false on this instance', async () => {
    const [a, b] = await Promise.all([makeApp(4), makeApp(4)]);
    a.service('messages').hooks({ before: { create: [(context) => { context[syncar.SYNC] = false; }] } });
    const local = waitForEvent(a.service('messages'), 'created', { timeout: TIMEOUT });
    await a.service('messages').create({ text: 'here only' });
    await local;
    const marker = waitForEvent(b.service('messages'), 'patched', { timeout: TIMEOUT });
    const seen = [];
    b.service('messages').on('created', (data) => seen.push(data));
    await a.service('messages').patch(0, { text: 'marker' });
    await marker; // events from one origin arrive in order: the create would have come first
    assert.deepEqual(seen, []);
    assert.equal(a.sync.stats.published, 1);
  });
});
