'use strict';

// Migrating one instance at a time: an app still on feathers-sync 3.1.1 (its own Redis client) and an
// app on @syncar/feathers (its syncar runs with --codec feathers-sync) share events through one Redis.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const featherSync = require('feathers-sync');
const syncar = require('..');
const { removeDir, startDaemon, startRedis, tempDir, waitForEvent } = require('./helpers');

const TIMEOUT = 15_000;

function withMessages(app) {
  app.use('messages', new MemoryService({ startId: 100 }), { events: ['typing'] });
  return app;
}

describe('a feathers-sync app and a syncar app on one Redis', { timeout: 60_000 }, () => {
  let dir;
  let redis;
  let daemon;
  let old;
  let migrated;

  before(async () => {
    dir = tempDir();
    redis = await startRedis(dir);
    daemon = await startDaemon({
      socket: path.join(dir, 'syncar.sock'), backend: redis.uri, instanceId: 'syncar-m', args: ['--codec', 'feathers-sync'],
    });
    old = feathers();
    old.configure(featherSync({ uri: redis.uri }));
    withMessages(old);
    migrated = feathers();
    migrated.configure(syncar({ socket: daemon.socket, logger: null }));
    withMessages(migrated);
    await Promise.all([old.sync.ready, migrated.sync.ready]);
  });

  after(async () => {
    if (migrated) {
      await migrated.sync.close();
    }
    if (old) {
      for (const client of [old.sync.pub, old.sync.sub]) {
        await client.quit().catch(() => client.destroy && client.destroy());
      }
    }
    if (daemon) {
      await daemon.stop();
    }
    if (redis) {
      await redis.stop();
    }
    removeDir(dir);
  });

  it('the syncar app receives the feathers-sync app\'s events, with the same data and params', async () => {
    const params = { user: { id: 3 }, query: {}, provider: 'rest' };
    const received = waitForEvent(migrated.service('messages'), 'created', { timeout: TIMEOUT });
    const record = await old.service('messages').create({ text: 'from feathers-sync' }, params);
    const [data, context] = await received;
    assert.deepEqual(data, record);
    assert.deepEqual(context.params, params);
    assert.equal(context.app, migrated);
    assert.equal(context.service, migrated.service('messages'));
    assert.equal(context.syncar.remote, true);
    assert.equal(context.syncar.origin, null, 'feathers-sync messages carry no origin');

    const typing = waitForEvent(migrated.service('messages'), 'typing', { timeout: TIMEOUT });
    old.service('messages').emit('typing', { user: 'ann' });
    assert.deepEqual((await typing)[0], { user: 'ann' });
  });

  it('the feathers-sync app receives the syncar app\'s events, with the same data and params', async () => {
    const params = { user: { id: 4 }, query: { $limit: 1 } };
    const received = waitForEvent(old.service('messages'), 'patched', { timeout: TIMEOUT });
    const record = await migrated.service('messages').create({ text: 'from syncar' });
    const patched = await migrated.service('messages').patch(record.id, { text: 'patched by syncar' }, params);
    const [data, context] = await received;
    assert.deepEqual(data, patched);
    assert.deepEqual(context.params, params);
    assert.equal(context.app, old);
    assert.equal(context.method, 'patch');
  });
});
