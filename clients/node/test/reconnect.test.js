'use strict';

// Local first, held publishes, reconnects and resume, against real syncar daemons (local backend).

const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('..');
const { isRemote } = syncar;
const { RawPeer, freePort, startDaemon, startScriptedDaemon, tempScope, waitForEvent, waitUntil } = require('./helpers');

const TIMEOUT = 15_000;

function makeApp(socket, options = {}) {
  const app = feathers();
  app.configure(syncar({ socket, logger: null, reconnect: { minDelay: 20, maxDelay: 200 }, ...options }));
  app.use('messages', new MemoryService());
  return app;
}

describe('reconnects', () => {
  const scope = tempScope();
  const { cleanup } = scope;

  it('emits locally at once while syncar is down, holds publishes up to maxPending, sends them once it is up', async () => {
    const socket = path.join(scope.dir, 'late.sock');
    const app = makeApp(socket, { maxPending: 3 });
    cleanup.push(() => app.sync.close());
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    const local = [];
    app.service('messages').on('created', (data, ctx) => local.push([data.n, isRemote(ctx)]));
    for (let n = 1; n <= 5; n += 1) {
      await app.service('messages').create({ n });
      assert.equal(local.length, n, 'the event is emitted here before the call returns');
    }
    assert.deepEqual(local, [[1, false], [2, false], [3, false], [4, false], [5, false]]);
    assert.equal(app.sync.connected, false);
    assert.equal(app.sync.pending, 3);
    assert.deepEqual(warnings.filter((w) => w.code === 'pending_full').length, 2);
    assert.match(warnings.find((w) => w.code === 'pending_full').message,
      /messages created not sent to other instances: syncar is unreachable and 3 events .* are held already \(maxPending 3/);

    const daemon = await startDaemon({ socket });
    cleanup.push(() => daemon.stop());
    await app.sync.ready;
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT, what: 'acks' });
    const peer = new RawPeer(socket);
    cleanup.push(() => peer.close());
    await peer.connect({ fromStart: true });
    app.service('messages').emit('created', { n: 'marker' });
    await peer.nextEvent((f) => f.data.n === 'marker', TIMEOUT);
    assert.deepEqual(peer.events().map((f) => f.data.n), [1, 2, 3, 'marker']);
  });

  // A sender and a receiver on one daemon; the receiver's socket breaks and `count` events are created while it is
  // away (it reconnects after 1 s, so they certainly fall into the gap). `onCreated` is its listener of created.
  async function createdWhileAway(name, count, onCreated, args = []) {
    const socket = path.join(scope.dir, name);
    const daemon = await startDaemon({ socket, args });
    cleanup.push(() => daemon.stop());
    const sender = makeApp(socket);
    const receiver = makeApp(socket, { reconnect: { minDelay: 1000, maxDelay: 1000 } });
    cleanup.push(() => sender.sync.close(), () => receiver.sync.close());
    await Promise.all([sender.sync.ready, receiver.sync.ready]);
    receiver.service('messages').on('created', onCreated);

    const lost = waitForEvent(receiver.sync, 'disconnect', { timeout: TIMEOUT });
    receiver.sync.connection._socket.destroy(); // the app's side of the socket breaks
    await lost;
    for (let n = 1; n <= count; n += 1) {
      await sender.service('messages').create({ n });
    }
    await waitUntil(sender.sync.connection, 'settled', () => sender.sync.pending === 0, { timeout: TIMEOUT });
    assert.equal(receiver.sync.connected, false, 'the receiver was still away while the events were relayed');
    return receiver;
  }

  it('resumes from its last seq after losing the socket: events published meanwhile are replayed', async () => {
    const received = [];
    const receiver = await createdWhileAway('resume.sock', 3, (data, ctx) => received.push([data.n, ctx.syncar.seq]));
    const gaps = [];
    receiver.sync.on('gap', (gap) => gaps.push(gap));
    const [welcome] = await waitForEvent(receiver.sync, 'connect', { timeout: TIMEOUT });
    assert.equal(welcome.resumed, true);
    await waitUntil(receiver.service('messages'), 'created', () => received.length === 3, { timeout: TIMEOUT });
    assert.deepEqual(received.map(([n]) => n), [1, 2, 3]);
    const seqs = received.map(([, seq]) => seq);
    assert.deepEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    assert.deepEqual(gaps, []);
  });

  it('tells how many events it missed when it was away longer than the replay buffer holds', async () => {
    const received = [];
    const receiver = await createdWhileAway('behind.sock', 5, (data) => received.push(data.n), ['--replay-events', '2']);
    const gap = waitForEvent(receiver.sync, 'gap', { timeout: TIMEOUT });
    const warned = waitForEvent(receiver.sync, 'warning', { filter: (w) => w.code === 'resume_gap', timeout: TIMEOUT });
    const [frame] = await gap;
    // It resumes after seq 0 and syncar holds the last 2 of the 5: 1 to 3 will not come.
    assert.deepEqual([frame.type, frame.code, frame.missed, frame.first, frame.last], ['error', 'resume_gap', 3, 1, 3]);
    const [warning] = await warned;
    assert.match(warning.message, /^this app's resume could not be served whole: 3 events \(syncar's seqs 1 to 3\) will not come: /);
    await waitUntil(receiver.service('messages'), 'created', () => received.length === 2, { timeout: TIMEOUT });
    assert.deepEqual(received, [4, 5]);
    assert.equal(receiver.sync.stats.missed, 3);
  });

  it('carries on across a daemon restart: publishes made while it is down are sent after the reconnect', async () => {
    const socket = path.join(scope.dir, 'restart.sock');
    let daemon = await startDaemon({ socket });
    const app = makeApp(socket);
    cleanup.push(() => app.sync.close(), () => daemon.stop());
    const [firstWelcome] = await waitForEvent(app.sync, 'connect', { timeout: TIMEOUT });
    const firstInstance = app.sync.instance;
    await app.service('messages').create({ n: 0 });
    // Acknowledged (by a barrier, within 100 ms): else it would be held, and sent again to the next daemon.
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });

    const lost = waitForEvent(app.sync, 'disconnect', { timeout: TIMEOUT });
    await daemon.stop('SIGTERM');
    await lost;
    const local = [];
    app.service('messages').on('created', (data) => local.push(data.n));
    for (let n = 1; n <= 5; n += 1) {
      await app.service('messages').create({ n });
    }
    assert.deepEqual(local, [1, 2, 3, 4, 5], 'emitted here at once while syncar was down');
    assert.equal(app.sync.pending, 5);

    const gap = waitForEvent(app.sync, 'gap', { timeout: TIMEOUT });
    const back = waitForEvent(app.sync, 'connect', { timeout: TIMEOUT });
    daemon = await startDaemon({ socket });
    const [welcome] = await back;
    assert.equal(welcome.resumed, false, 'a restarted daemon cannot replay: the app is told so');
    const [frame] = await gap;
    assert.equal(frame.missed, undefined, 'what went by while no syncar ran cannot be counted');
    assert.equal(app.sync.stats.missed, 0);
    assert.notEqual(welcome.epoch, firstWelcome.epoch, 'another run of the daemon');
    assert.equal(app.sync.instance, firstInstance, 'with the same instance id: it is stable across restarts');
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    const peer = new RawPeer(socket);
    cleanup.push(() => peer.close());
    await peer.connect({ fromStart: true });
    app.service('messages').emit('created', { n: 'marker' });
    await peer.nextEvent((f) => f.data.n === 'marker', TIMEOUT);
    assert.deepEqual(peer.events().map((f) => f.data.n), [1, 2, 3, 4, 5, 'marker']);
  });

  // Its broker away for the whole --shutdown-timeout, a stopping daemon answers the publish it holds with a nack
  // `stopping` (then the barrier after it with an ack): the app keeps the event and sends it to the next daemon.
  async function stoppedWithAPublishQueued(socket, options = {}) {
    const nobody = `redis://127.0.0.1:${await freePort()}`;
    const daemon = await startDaemon({ socket, backend: nobody, args: ['--shutdown-timeout', '0.5'] });
    const app = makeApp(socket, options);
    const peer = new RawPeer(socket);
    cleanup.push(() => app.sync.close(), () => daemon.stop(), () => peer.close());
    await app.sync.ready;
    await peer.connect();
    await app.service('messages').create({ n: 'held' });
    await peer.nextEvent((f) => f.data.n === 'held', TIMEOUT); // read by the daemon: in its outbox
    for (let i = 0; i < 500 && app.sync.connection._barrier === null; i += 1) { // sent within 100 ms
      await new Promise((resolve) => { setTimeout(resolve, 10); });
    }
    assert.notEqual(app.sync.connection._barrier, null, 'a barrier waits for the event');
    const refused = [];
    app.sync.on('warning', (w) => refused.push(w.code));
    const stopping = waitForEvent(app.sync.connection, 'status', { filter: (f) => f.stopping === true, timeout: TIMEOUT });
    await daemon.stop('SIGTERM');
    await stopping;
    return { app, refused };
  }

  it('sends a publish the stopping daemon could not send (nack stopping) again to the next daemon', async () => {
    const socket = path.join(scope.dir, 'stopping.sock');
    const { app, refused } = await stoppedWithAPublishQueued(socket);
    assert.equal(app.sync.pending, 1, 'neither the nack nor the barrier answered after it let go of the event');
    assert.equal(app.sync.stats.dropped, 0);
    assert.deepEqual(refused.filter((code) => code.startsWith('refused')), []);

    const daemon = await startDaemon({ socket });
    cleanup.push(() => daemon.stop());
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    const peer = new RawPeer(socket);
    cleanup.push(() => peer.close());
    await peer.connect({ fromStart: true });
    assert.equal((await peer.nextEvent(() => true, TIMEOUT)).data.n, 'held');
  });

  it('without reconnect, counts a publish nacked stopping as dropped, with a warning', async () => {
    const socket = path.join(scope.dir, 'stopping-once.sock');
    const { app, refused } = await stoppedWithAPublishQueued(socket, { reconnect: false });
    assert.equal(app.sync.stats.dropped, 1);
    assert.deepEqual(refused.filter((code) => code.startsWith('refused')), ['refused_stopping']);
  });

  it('keeps at most maxPending unacknowledged publishes for re-sending, forgetting the oldest with a warning', async () => {
    // A daemon that acknowledges nothing (its broker is away): every publish is written, only the newest are kept.
    const server = await startScriptedDaemon(path.join(scope.dir, 'no-acks.sock'), { ack: ({ number }) => number > 1 });
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));
    const app = makeApp(server.address(), { maxPending: 3 });
    cleanup.push(() => app.sync.close());
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    await app.sync.ready;
    const [first] = server.connections;
    const written = waitForEvent(server, 'frame', {
      filter: (c) => c === first && c.frames.filter((f) => f.type === 'publish').length === 5, timeout: TIMEOUT,
    });
    for (let n = 1; n <= 5; n += 1) {
      await app.service('messages').create({ n });
    }
    await written;
    assert.equal(app.sync.pending, 3);
    assert.equal(app.sync.stats.published, 5);
    assert.deepEqual(warnings.map((w) => w.code), ['ack_backlog', 'ack_backlog']);
    assert.match(warnings[0].message, /3 publishes are not yet acknowledged by syncar .* no longer kept for re-sending/);

    const lost = waitForEvent(app.sync, 'disconnect', { timeout: TIMEOUT });
    first.conn.destroy();
    await lost;
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    assert.deepEqual(server.connections[1].frames.filter((f) => f.type === 'publish').map((f) => f.data.n), [3, 4, 5]);
  });

  it('re-sends, in order, publishes written to a daemon that vanished before acknowledging them', async () => {
    // A scripted daemon (protocol v1 by hand): the first connection reads publishes and dies without an
    // ack, as a syncar killed with SIGKILL would; the second acknowledges everything.
    const server = await startScriptedDaemon(path.join(scope.dir, 'scripted.sock'), { ack: ({ number }) => number > 1 });
    const { connections } = server;
    cleanup.push(() => new Promise((resolve) => server.close(resolve)));

    const app = makeApp(server.address());
    cleanup.push(() => app.sync.close());
    await app.sync.ready;
    const firstThree = waitForEvent(server, 'frame', {
      filter: (seen) => seen === connections[0] && seen.frames.filter((f) => f.type === 'publish').length === 3,
      timeout: TIMEOUT,
    });
    for (let n = 1; n <= 3; n += 1) {
      await app.service('messages').create({ n });
    }
    await firstThree;
    assert.equal(app.sync.pending, 3);
    const lost = waitForEvent(app.sync, 'disconnect', { timeout: TIMEOUT });
    connections[0].conn.destroy();
    await lost;
    await app.service('messages').create({ n: 4 }); // held: not yet written anywhere
    await waitForEvent(app.sync, 'connect', { timeout: TIMEOUT });
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    const resent = connections[1].frames.filter((f) => f.type === 'publish');
    assert.deepEqual(resent.map((f) => f.data.n), [1, 2, 3, 4]);
    assert.deepEqual(resent.slice(0, 3).map((f) => f.id),
      connections[0].frames.filter((f) => f.type === 'publish').map((f) => f.id), 'the same ids, so they can be de-duplicated');
    const [first, second] = connections.map((c) => c.frames[0].client_id);
    assert.equal(second, first, 'the same client_id too: the daemon scopes the ids with it');
    assert.match(first, /^[0-9a-f]{32}$/);
    assert.ok(resent.every((f) => !f.id.includes(first)), 'the ids, which other apps see, do not reveal the client_id');
    assert.deepEqual(connections[1].frames[0].resume, { epoch: 'e1', seq: 0 });
  });
});
