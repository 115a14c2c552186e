'use strict';

// Two Feathers apps in two Node processes, each with its own syncar daemon, the daemons relaying
// through a real redis-server that this test starts on a free loopback port.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { AppProcess, removeDir, startDaemon, startRedis, tempDir, waitForEvent } = require('./helpers');

const TIMEOUT = 20_000;

describe('two apps, two syncars, one Redis', { timeout: 90_000 }, () => {
  let dir;
  let redis;
  const daemons = {};
  const apps = {};

  before(async () => {
    dir = tempDir();
    redis = await startRedis(dir);
    [daemons.a, daemons.b] = await Promise.all([
      startDaemon({ socket: path.join(dir, 'a.sock'), backend: redis.uri, instanceId: 'syncar-a' }),
      startDaemon({ socket: path.join(dir, 'b.sock'), backend: redis.uri, instanceId: 'syncar-b' }),
    ]);
    apps.a = new AppProcess('A', daemons.a.socket);
    apps.b = new AppProcess('B', daemons.b.socket);
    await Promise.all([apps.a.ready(), apps.b.ready()]);
  });

  after(async () => {
    await Promise.all(Object.values(apps).map((app) => app.stop()));
    await Promise.all(Object.values(daemons).map((daemon) => daemon.stop()));
    if (redis) {
      await redis.stop();
    }
    removeDir(dir);
  });

  /** create, patch, remove and a custom event on `app`, with params; what it emitted locally. */
  async function crud(app, label, params) {
    const record = await app.call('create', { data: { text: `hello from ${label}` }, params });
    await app.call('patch', { key: record.id, data: { text: `edited by ${label}` }, params });
    await app.call('remove', { key: record.id, params });
    await app.call('emit', { event: 'typing', data: { user: label } });
    return app.events((m) => !m.remote && JSON.stringify(m.data).includes(label));
  }

  it('see each other\'s created, patched, removed and custom events with the same data and params', async () => {
    const paramsA = { user: { id: 1, name: 'ann' }, query: {}, provider: 'rest', headers: { 'x-request-id': 'r-a' } };
    const paramsB = { user: { id: 2, name: 'bob' }, query: { $limit: 5 }, provider: 'socketio' };
    const [localA, localB] = await Promise.all([crud(apps.a, 'alpha', paramsA), crud(apps.b, 'bravo', paramsB)]);
    assert.deepEqual(localA.map((m) => m.event), ['created', 'patched', 'removed', 'typing']);
    assert.deepEqual(localB.map((m) => m.event), ['created', 'patched', 'removed', 'typing']);

    const fromA = await apps.b.waitForEvents(4, (m) => m.remote && JSON.stringify(m.data).includes('alpha'), TIMEOUT);
    const fromB = await apps.a.waitForEvents(4, (m) => m.remote && JSON.stringify(m.data).includes('bravo'), TIMEOUT);
    for (const [remote, local, origin] of [[fromA, localA, 'syncar-a'], [fromB, localB, 'syncar-b']]) {
      assert.deepEqual(remote.map((m) => m.event), local.map((m) => m.event));
      for (let i = 0; i < local.length; i += 1) {
        assert.deepEqual(remote[i].data, local[i].data, `${local[i].event}: same data`);
        assert.deepEqual(remote[i].params, local[i].params, `${local[i].event}: same params`);
        assert.equal(remote[i].origin, origin);
        assert.ok(remote[i].hasApp && remote[i].hasService, 'app and service are set again on the context');
        assert.equal(local[i].remote, false);
      }
    }
    assert.deepEqual(fromA[0].params, paramsA);
    assert.deepEqual(fromB[0].params, paramsB);
  });

  it('carry on when a syncar restarts mid-stream: events published while it was down are sent after the reconnect', async () => {
    const total = 60;
    const isStream = (m) => m.data && m.data.stream === 'restart-a';
    const lost = waitForEvent(apps.a, 'disconnect', { timeout: TIMEOUT });
    for (let n = 1; n <= total; n += 1) {
      if (n === 21) {
        await daemons.a.stop('SIGTERM');
        await lost;
      }
      if (n === 41) {
        daemons.a = await startDaemon({ socket: daemons.a.socket, backend: redis.uri, instanceId: 'syncar-a' });
      }
      await apps.a.call('create', { data: { n, stream: 'restart-a' } });
    }
    const local = apps.a.events((m) => !m.remote && isStream(m));
    assert.equal(local.length, total, 'every event was emitted locally at once');
    const whileDown = local.filter((m) => !m.connected).map((m) => m.data.n);
    assert.ok(whileDown.length >= 20, `events 21..40 were created while syncar was down (got ${whileDown})`);

    const received = await apps.b.waitForEvents(total, (m) => m.remote && isStream(m), TIMEOUT);
    assert.deepEqual(received.map((m) => m.data.n), Array.from({ length: total }, (_, i) => i + 1),
      'B got all of them, once each, in order');
    // Every publish held across the restart was acknowledged by the new syncar (the broker took it).
    const settled = waitForEvent(apps.a, 'settled', { timeout: TIMEOUT });
    const state = await apps.a.call('state');
    assert.equal(state.connected, true);
    if (state.pending > 0) {
      await settled;
    }
  });

  it('carry on when the receiving side\'s syncar restarts', async () => {
    const lost = waitForEvent(apps.b, 'disconnect', { timeout: TIMEOUT });
    await daemons.b.stop('SIGTERM');
    await lost;
    const back = waitForEvent(apps.b, 'connect', { timeout: TIMEOUT });
    daemons.b = await startDaemon({ socket: daemons.b.socket, backend: redis.uri, instanceId: 'syncar-b' });
    await back;
    const isStream = (m) => m.data && m.data.stream === 'restart-b';
    for (let n = 1; n <= 10; n += 1) {
      await apps.a.call('create', { data: { n, stream: 'restart-b' } });
    }
    await apps.b.call('create', { data: { n: 0, stream: 'restart-b' } });
    const atB = await apps.b.waitForEvents(10, (m) => m.remote && isStream(m), TIMEOUT);
    assert.deepEqual(atB.map((m) => m.data.n), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const [atA] = await apps.a.waitForEvents(1, (m) => m.remote && isStream(m), TIMEOUT);
    assert.equal(atA.data.n, 0);
    assert.equal(atA.origin, 'syncar-b');
  });
});
