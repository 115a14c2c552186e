'use strict';

// The plugin against a real syncar daemon on the local backend: what goes on the wire, what comes
// back, and the cases where an event must not travel. Apps in this process, plus a raw protocol peer.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const { BSON, ObjectId } = require('bson');
const syncar = require('..');
const { SYNC, isRemote } = syncar;
const { RawPeer, removeDir, startDaemon, tempDir, tempScope, waitForEvent, waitUntil } = require('./helpers');

const TIMEOUT = 10_000;

/** A service whose results JSON cannot carry: BigInt ids. */
class Ledger {
  async create(data) {
    return { id: 9007199254740993n, ...data };
  }
}

describe('the plugin on a local syncar', () => {
  let dir;
  let daemon;
  const apps = [];
  const peers = [];

  before(async () => {
    dir = tempDir();
    daemon = await startDaemon({ socket: path.join(dir, 'syncar.sock') });
  });

  after(async () => {
    for (const peer of peers) {
      peer.close();
    }
    await Promise.all(apps.map((app) => app.sync.close()));
    if (daemon) {
      await daemon.stop();
    }
    removeDir(dir);
  });

  /** A Feathers app on this daemon, with `messages` (custom event `typing`) and `ledger` services. */
  async function makeApp(options = {}) {
    const app = feathers();
    app.configure(syncar({ socket: daemon.socket, logger: null, ...options }));
    app.use('messages', new MemoryService(), { events: ['typing'] });
    app.use('ledger', new Ledger());
    apps.push(app);
    await app.sync.ready;
    return app;
  }

  async function makePeer(options) {
    const peer = new RawPeer(daemon.socket);
    peers.push(peer);
    await peer.connect(options);
    return peer;
  }

  /** A marker event from `app`: once a peer has it, everything `app` published before is there too. */
  async function marker(app, peer, label) {
    app.service('messages').emit('typing', { marker: label });
    return peer.nextEvent((f) => f.event === 'typing' && f.data && f.data.marker === label, TIMEOUT);
  }

  it('exposes the feathers-sync API: app.sync.type, app.sync.ready, SYNC', async () => {
    const app = await makeApp();
    assert.equal(app.sync.type, 'syncar');
    assert.ok(app.sync.ready instanceof Promise);
    assert.equal(typeof SYNC, 'symbol');
    assert.equal(app.sync.connected, true);
    assert.equal(app.sync.broker, 'up');
    assert.equal(typeof app.sync.instance, 'string');
    assert.equal(typeof app.sync.serialize, 'function');
    assert.equal(typeof app.sync.deserialize, 'function');
  });

  it('sends service events with the context serialised as feathers-sync does', async () => {
    const app = await makeApp();
    const peer = await makePeer();
    const local = new Promise((resolve) => app.service('messages').once('created', (data, ctx) => resolve(ctx)));
    const params = { user: { id: 7, name: 'ann' }, query: {}, provider: 'rest' };
    const record = await app.service('messages').create({ text: 'hello' }, params);
    const ctx = await local;
    const frame = await peer.nextEvent((f) => f.event === 'created' && f.path === 'messages', TIMEOUT);
    assert.deepEqual(frame.data, record);
    assert.equal(frame.origin, app.sync.instance);
    // feathers-sync: context.toJSON() without app, service and self, as JSON.
    const json = ctx.toJSON();
    delete json.app;
    delete json.service;
    delete json.self;
    assert.deepEqual(frame.context, JSON.parse(JSON.stringify(json)));
    assert.deepEqual(frame.context.params, params);
    assert.equal(frame.context.method, 'create');
    assert.equal(isRemote(ctx), false);
  });

  it('writes the publishes of a burst of service calls in one system call, and a lone one before its listeners run on', async () => {
    const app = await makeApp();
    const peer = await makePeer();
    const socket = app.sync.connection._socket;
    // A stream hands what was corked to _writev in one call, else each write to _write: record the chunks per call.
    const calls = [];
    const { _write: write, _writev: writev } = socket;
    socket._write = function countedWrite(...args) {
      calls.push(1);
      return write.apply(this, args);
    };
    socket._writev = function countedWritev(chunks, callback) {
      calls.push(chunks.length);
      return writev.call(this, chunks, callback);
    };
    const messages = app.service('messages');
    await Promise.all(Array.from({ length: 10 }, (_, i) => messages.create({ text: `burst ${i}` })));
    assert.deepEqual(calls, [10]);
    // A lone publish waits for nothing: it is on the socket by the time the work its listeners queue runs.
    calls.length = 0;
    const seen = new Promise((resolve) => {
      messages.once('created', () => queueMicrotask(() => resolve([...calls])));
    });
    await messages.create({ text: 'lone' });
    assert.deepEqual(await seen, [1]);
    await marker(app, peer, 'after-burst');
    const texts = peer.events().filter((f) => f.origin === app.sync.instance && f.event === 'created')
      .map((f) => f.data.text);
    assert.deepEqual(texts, [...Array.from({ length: 10 }, (_, i) => `burst ${i}`), 'lone']);
  });

  it('propagates patched, removed and custom events from the service options, and nothing else', async () => {
    const app = await makeApp();
    const peer = await makePeer();
    const messages = app.service('messages');
    const record = await messages.create({ text: 'a' });
    await messages.patch(record.id, { text: 'b' });
    await messages.remove(record.id);
    messages.emit('typing', { user: 'ann' });
    messages.emit('not-an-event', { user: 'ann' }); // not declared in `events`: stays here
    const label = 'after-custom';
    await marker(app, peer, label);
    const seen = peer.events().filter((f) => f.origin === app.sync.instance && f.path === 'messages')
      .map((f) => [f.event, f.data]);
    const ours = seen.slice(seen.findIndex(([, d]) => d && d.text === 'a'));
    assert.deepEqual(ours, [
      ['created', { text: 'a', id: record.id }],
      ['patched', { text: 'b', id: record.id }],
      ['removed', { text: 'b', id: record.id }],
      ['typing', { user: 'ann' }],
      ['typing', { marker: label }],
    ]);
  });

  it('emits events from other apps on the local service, with app and service on the context, marked remote', async () => {
    const sender = await makeApp();
    const receiver = await makeApp();
    const peer = await makePeer();
    const received = waitForEvent(receiver.service('messages'), 'created', { timeout: TIMEOUT });
    const localOnly = [];
    sender.service('messages').on('created', (data, ctx) => localOnly.push(ctx));
    await sender.service('messages').create({ text: 'from sender' }, { user: { id: 1 } });
    const [data, ctx] = await received;
    assert.deepEqual(data, { text: 'from sender', id: 0 });
    assert.equal(ctx.app, receiver);
    assert.equal(ctx.service, receiver.service('messages'));
    assert.deepEqual(ctx.params, { user: { id: 1 } });
    assert.equal(ctx.syncar.remote, true);
    assert.equal(ctx.syncar.origin, sender.sync.instance);
    assert.equal(typeof ctx.syncar.seq, 'number');
    assert.equal(isRemote(ctx), true);
    // The sender's own listener ran once, at once, on its local context (no echo came back).
    assert.equal(localOnly.length, 1);
    assert.equal(isRemote(localOnly[0]), false);

    // An event published by another language's app (raw frames, no context) gets a context too.
    const fromPeer = waitForEvent(receiver.service('messages'), 'typing', {
      filter: (d) => d && d.from === 'peer', timeout: TIMEOUT,
    });
    peer.send({ type: 'publish', path: 'messages', event: 'typing', data: { from: 'peer' } });
    const [peerData, peerCtx] = await fromPeer;
    assert.deepEqual(peerData, { from: 'peer' });
    assert.equal(peerCtx.app, receiver);
    assert.equal(peerCtx.syncar.remote, true);
  });

  it('emits an event delivered twice (a redelivery after a restart) only once', async () => {
    const receiver = await makeApp();
    const peer = await makePeer();
    const seen = [];
    receiver.service('messages').on('typing', (data) => seen.push(data.n));
    const marker = waitForEvent(receiver.service('messages'), 'typing', {
      filter: (d) => d && d.n === 'marker', timeout: TIMEOUT,
    });
    for (const n of [1, 1, 2]) {
      peer.send({ type: 'publish', path: 'messages', event: 'typing', data: { n }, id: `dup-${n}` });
    }
    peer.send({ type: 'publish', path: 'messages', event: 'typing', data: { n: 'marker' } });
    await marker;
    assert.deepEqual(seen, [1, 2, 'marker']);
  });

  it('drops a frame from syncar over maxReceiveBytes counted in bytes of UTF-8, not in characters', async () => {
    const receiver = await makeApp({ maxReceiveBytes: 4096 });
    const peer = await makePeer();
    const warnings = [];
    receiver.sync.on('warning', (w) => warnings.push(w));
    const seen = [];
    receiver.service('messages').on('typing', (data) => seen.push(data));
    const last = waitForEvent(receiver.service('messages'), 'typing', { filter: (d) => d.n === 'last', timeout: TIMEOUT });
    // 1,500 characters but 4,500 bytes: over the limit. Then 1,000 characters in 2,000 bytes: under it.
    peer.send({ type: 'publish', path: 'messages', event: 'typing', data: { n: 'euros', text: '€'.repeat(1500) } });
    peer.send({ type: 'publish', path: 'messages', event: 'typing', data: { n: 'last', text: 'é'.repeat(1000) } });
    await last;
    assert.deepEqual(seen.map((d) => d.n), ['last']);
    assert.equal(seen[0].text, 'é'.repeat(1000));
    assert.deepEqual(warnings.map((w) => w.code), ['frame_too_large']);
    assert.match(warnings[0].message, /longer than maxReceiveBytes \(4096 bytes\)/);
  });

  it('keeps a call with context[SYNC] = false on this instance', async () => {
    const app = await makeApp();
    const peer = await makePeer();
    const messages = app.service('messages');
    messages.hooks({
      after: {
        create: [(context) => {
          if (context.data && context.data.local) {
            context[SYNC] = false;
          }
          return context;
        }],
      },
    });
    const local = waitForEvent(messages, 'created', { filter: (d) => d.local === true, timeout: TIMEOUT });
    await messages.create({ local: true });
    await local;
    await messages.create({ local: false });
    const frame = await peer.nextEvent((f) => f.event === 'created' && f.origin === app.sync.instance, TIMEOUT);
    assert.deepEqual(frame.data, { local: false, id: 1 }, 'the SYNC=false create must not have been sent');
  });

  it('never fails the service call for a context it cannot serialise: circular refs and BigInt', async () => {
    const app = await makeApp();
    const peer = await makePeer();
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));

    const loop = { name: 'loop' };
    loop.self = loop;
    const record = await app.service('messages').create({ text: 'circular params' }, { loop });
    assert.deepEqual(record, { text: 'circular params', id: 0 });
    const circular = await peer.nextEvent((f) => f.path === 'messages' && f.origin === app.sync.instance, TIMEOUT);
    assert.deepEqual(circular.data, record);
    assert.deepEqual(circular.context.params.loop, { name: 'loop', self: '[Circular]' });

    const entry = await app.service('ledger').create({ amount: 1 });
    assert.equal(entry.id, 9007199254740993n);
    const big = await peer.nextEvent((f) => f.path === 'ledger', TIMEOUT);
    assert.deepEqual(big.data, { id: '9007199254740993', amount: 1 });

    assert.equal(warnings.length, 2);
    assert.ok(warnings.every((w) => w.code === 'unserialisable'));
    assert.match(warnings[0].message, /messages created: .*circular/i);
    assert.match(warnings[1].message, /ledger created: .*BigInt/);
  });

  it('skips, with a warning, an event that a custom serialize cannot handle at all', async () => {
    const serialize = (payload) => {
      if (payload.data && payload.data.poison) {
        throw new Error('cannot');
      }
      return JSON.stringify(payload);
    };
    const app = await makeApp({ serialize });
    const peer = await makePeer();
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    const record = await app.service('messages').create({ poison: true });
    assert.deepEqual(record, { poison: true, id: 0 });
    const next = await marker(app, peer, 'after-poison');
    assert.equal(peer.events().filter((f) => f.origin === app.sync.instance && f.event === 'created').length, 0);
    assert.ok(next);
    assert.equal(app.sync.stats.skipped, 1);
    assert.match(warnings[0].message, /messages created not sent to other instances: it cannot be serialised/);
  });

  it('refuses events over maxFrameBytes with a clear warning, and still emits them here', async () => {
    const app = await makeApp({ maxFrameBytes: 4096 });
    const peer = await makePeer();
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    const local = waitForEvent(app.service('messages'), 'created', { timeout: TIMEOUT });
    const record = await app.service('messages').create({ text: 'x'.repeat(10_000) });
    const [data] = await local;
    assert.equal(data.text.length, 10_000);
    assert.equal(record.text.length, 10_000);
    await marker(app, peer, 'after-big');
    assert.equal(peer.events().filter((f) => f.event === 'created' && f.origin === app.sync.instance).length, 0);
    assert.equal(warnings.length, 1);
    assert.equal(warnings[0].code, 'too_large');
    assert.match(warnings[0].message, /messages created not sent to other instances: it is \d+ bytes, over maxFrameBytes \(4096 bytes\)/);
  });

  it('receives only what its subscribe patterns match', async () => {
    const publisher = await makeApp();
    const onlyPatched = await makeApp({ subscribe: [{ path: 'messages', event: 'patched' }, 'ledger'] });
    const got = [];
    for (const event of ['created', 'patched', 'removed', 'typing']) {
      onlyPatched.service('messages').on(event, (data, ctx) => isRemote(ctx) && got.push(event));
    }
    const ledgerSeen = waitForEvent(onlyPatched.service('ledger'), 'created', { timeout: TIMEOUT });
    const record = await publisher.service('messages').create({ text: 'p' });
    await publisher.service('messages').patch(record.id, { text: 'q' });
    publisher.service('messages').emit('typing', {});
    await publisher.service('messages').remove(record.id);
    await publisher.service('ledger').create({ amount: 2 });
    // Events reach a client in the order syncar relays them: the ledger event came last.
    await ledgerSeen;
    assert.deepEqual(got, ['patched']);
  });

  it('in publish-only mode sends events but receives none', async () => {
    const publishOnly = await makeApp({ subscribe: false });
    const other = await makeApp();
    const received = [];
    publishOnly.service('messages').on('created', (data, ctx) => isRemote(ctx) && received.push(data));
    const atOther = waitForEvent(other.service('messages'), 'created', {
      filter: (d) => d.text === 'from publish-only', timeout: TIMEOUT,
    });
    await publishOnly.service('messages').create({ text: 'from publish-only' });
    await atOther;
    await other.service('messages').create({ text: 'from other' });
    // syncar answers a client in order: once our next publish is acknowledged, the other app's event
    // would have been written to us before the ack, had we subscribed.
    await publishOnly.service('messages').create({ text: 'barrier' });
    await waitUntil(publishOnly.sync.connection, 'settled', () => publishOnly.sync.pending === 0, { timeout: TIMEOUT });
    assert.deepEqual(received, []);
  });

  it('uses custom serialize/deserialize like feathers-sync (here: Dates that survive the trip)', async () => {
    const serialize = (payload) => JSON.stringify(payload, function replacer(key, value) {
      return this[key] instanceof Date ? { $date: this[key].toISOString() } : value;
    });
    const deserialize = (text) => JSON.parse(text, (key, value) => (
      value && typeof value === 'object' && typeof value.$date === 'string' ? new Date(value.$date) : value));
    const sender = await makeApp({ serialize, deserialize });
    const receiver = await makeApp({ serialize, deserialize });
    const received = waitForEvent(receiver.service('messages'), 'created', { timeout: TIMEOUT });
    const at = new Date(Date.UTC(2025, 4, 6, 7, 8, 9));
    sender.service('messages').emit('created', { at }, undefined);
    const [data] = await received;
    assert.ok(data.at instanceof Date);
    assert.equal(data.at.getTime(), at.getTime());
  });

  it('carries a binary serializer\'s events (BSON, as feathers-sync allows) byte for byte, ObjectIds and Dates kept', async () => {
    const serialize = (payload) => BSON.serialize(payload);
    const deserialize = (bytes) => BSON.deserialize(bytes);
    const sender = await makeApp({ serialize, deserialize });
    const receiver = await makeApp({ serialize, deserialize });
    const peer = await makePeer();
    const received = waitForEvent(receiver.service('messages'), 'created', { timeout: TIMEOUT });
    const record = { _id: new ObjectId(), at: new Date(Date.UTC(2025, 4, 6, 7, 8, 9)), text: 'zoë' };
    sender.service('messages').emit('created', record, { params: { provider: 'rest' } });
    const [data, context] = await received;
    assert.ok(data._id instanceof ObjectId && data._id.equals(record._id));
    assert.equal(data.at.getTime(), record.at.getTime());
    assert.equal(data.text, 'zoë');
    assert.deepEqual(context.params, { provider: 'rest' });
    assert.ok(isRemote(context));
    // On the wire: path and event in the clear, the event as BSON made it, in base64.
    const frame = await peer.nextEvent((f) => f.bin !== undefined, TIMEOUT);
    assert.deepEqual([frame.path, frame.event, frame.data, frame.context], ['messages', 'created', null, null]);
    assert.deepEqual(Buffer.from(frame.bin, 'base64'), Buffer.from(BSON.serialize({
      event: 'created', path: 'messages', data: record, context: { params: { provider: 'rest' } } })));
    assert.equal(sender.sync.stats.skipped, 0);
  });

  it('hears of a publish the daemon answers with an error, and keeps nothing for it', async () => {
    // A serialize that loses the path: the daemon's error now carries the publish's id, so it is not held for ever.
    const app = await makeApp({ serialize: ({ event, data }) => JSON.stringify({ event, path: '', data }) });
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    app.service('messages').emit('created', { text: 'nowhere' });
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
    assert.deepEqual(warnings.map((w) => w.code), ['refused_invalid_frame']);
    assert.match(warnings[0].message, /'path' must be a non-empty string/);
  });

  it('takes its clientId from the option: the app given it again after a restart publishes in the same scope', async () => {
    const clientId = 'a-secret-of-this-app-é'; // any 1 to 256 characters, as the daemon takes them
    const first = await makeApp({ clientId });
    const other = await makeApp();
    assert.equal(first.sync.clientId, clientId);
    assert.match(other.sync.clientId, /^[0-9a-f]{32}$/);
    const peer = await makePeer();
    // The daemon names an app's events `<scope>.<id>`, the scope made from its client id (docs/protocol.md).
    const scope = async (app, label) => (await marker(app, peer, label)).id.split('.')[0];
    const firstScope = await scope(first, 'first');
    await first.sync.close(); // one connection per client id at a time: the restarted app comes after it
    const second = await makeApp({ clientId });
    const scopes = [firstScope, await scope(second, 'second'), await scope(other, 'other')];
    assert.equal(scopes[1], scopes[0]);
    assert.notEqual(scopes[2], scopes[0]);
    assert.ok(!scopes.some((s) => s.includes(clientId)), 'the scope does not reveal the secret');
  });

  it('is refused while another app holds its clientId, says so, and the first app goes on', async () => {
    const clientId = 'given-to-two-workers';
    const first = await makeApp({ clientId });
    const second = feathers();
    second.configure(syncar({ socket: daemon.socket, logger: null, clientId, reconnect: { minDelay: 20, maxDelay: 200 } }));
    apps.push(second);
    const [warning] = await waitForEvent(second.sync, 'warning', {
      filter: (w) => w.code === 'error_client_id_in_use', timeout: TIMEOUT });
    assert.match(warning.message, /give each process its own client_id/);
    const other = await makeApp();
    const received = waitForEvent(first.service('messages'), 'created', { timeout: TIMEOUT });
    other.service('messages').emit('created', { text: 'for the first' });
    assert.equal((await received)[0].text, 'for the first');
  });

  it('refuses a clientId the daemon would not take', () => {
    for (const clientId of ['', 'x'.repeat(257), 42]) {
      assert.throws(() => syncar({ clientId }), /`clientId` must be a string of 1 to 256 characters/);
    }
    assert.doesNotThrow(() => syncar({ clientId: 'é'.repeat(256) })); // characters, not bytes
  });

  it('closes its socket on app.teardown()', async () => {
    const app = await makeApp();
    assert.equal(app.sync.connected, true);
    const gone = waitForEvent(app.sync, 'disconnect', { timeout: TIMEOUT });
    await app.teardown();
    await gone;
    assert.equal(app.sync.connected, false);
    assert.equal(app.sync.connection.closed, true);
  });
});

describe('a syncar that refuses publishes', () => {
  it('counts and warns about refused events, and does not keep them', async () => {
    const dir = tempDir();
    let daemon;
    let app;
    try {
      daemon = await startDaemon({ socket: path.join(dir, 'limited.sock'), args: ['--client-rate', '0.001', '--client-burst', '1'] });
      app = feathers();
      app.configure(syncar({ socket: daemon.socket, logger: null }));
      app.use('messages', new MemoryService());
      await app.sync.ready;
      const warnings = [];
      app.sync.on('warning', (w) => warnings.push(w));
      const local = [];
      app.service('messages').on('created', (data) => local.push(data.n));
      for (let n = 1; n <= 3; n += 1) {
        await app.service('messages').create({ n });
      }
      await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
      assert.deepEqual(local, [1, 2, 3]);
      assert.equal(app.sync.stats.dropped, 2);
      assert.deepEqual(warnings.map((w) => w.code), ['refused_rate_limited', 'refused_rate_limited']);
      assert.match(warnings[0].message, /syncar refused to relay an event \(rate_limited\)/);
    } finally {
      if (app) {
        await app.sync.close();
      }
      if (daemon) {
        await daemon.stop();
      }
      removeDir(dir);
    }
  });
});

describe('a syncar with a smaller --max-frame-bytes than the plugin', () => {
  const LIMIT = 65536;
  const scope = tempScope();
  const { cleanup } = scope;

  function makeApp(socket) {
    const app = feathers();
    app.configure(syncar({ socket, logger: null, reconnect: { minDelay: 20, maxDelay: 200 } }));
    app.use('messages', new MemoryService());
    cleanup.push(() => app.sync.close());
    const warnings = [];
    app.sync.on('warning', (w) => warnings.push(w));
    return { app, warnings };
  }

  it('does not send an event over the daemon\'s limit told in its welcome, and keeps nothing for it', async () => {
    const daemon = await startDaemon({ socket: path.join(scope.dir, 'small.sock'), args: ['--max-frame-bytes', String(LIMIT)] });
    cleanup.push(() => daemon.stop());
    const { app, warnings } = makeApp(daemon.socket);
    await app.sync.ready;
    const peer = new RawPeer(daemon.socket);
    cleanup.push(() => peer.close());
    await peer.connect();
    await app.service('messages').create({ text: 'x'.repeat(100_000) });
    assert.equal(app.sync.pending, 0); // it used to stay held, unacknowledged, for ever
    app.service('messages').emit('created', { text: 'small' });
    await peer.nextEvent((f) => f.data.text === 'small', TIMEOUT);
    assert.equal(peer.events().length, 1);
    assert.deepEqual(warnings.map((w) => w.code), ['too_large']);
    assert.match(warnings[0].message, /over the daemon's --max-frame-bytes \(65536 bytes\)/);
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT });
  });

  it('drops, with a warning, an event held before the welcome that is over the daemon\'s limit', async () => {
    const socket = path.join(scope.dir, 'later.sock');
    const { app, warnings } = makeApp(socket);
    await app.service('messages').create({ text: 'x'.repeat(100_000) });
    await app.service('messages').create({ text: 'small' });
    assert.equal(app.sync.pending, 2);
    const daemon = await startDaemon({ socket, args: ['--max-frame-bytes', String(LIMIT)] });
    cleanup.push(() => daemon.stop());
    await app.sync.ready;
    await waitUntil(app.sync.connection, 'settled', () => app.sync.pending === 0, { timeout: TIMEOUT, what: 'acks' });
    // 'disconnected': syncar was not there at first.
    assert.deepEqual(warnings.map((w) => w.code), ['disconnected', 'refused_frame_too_large']);
    assert.match(warnings[1].message, /syncar takes at most 65536/);
    assert.equal(app.sync.stats.dropped, 1);
    const peer = new RawPeer(socket);
    cleanup.push(() => peer.close());
    await peer.connect({ fromStart: true });
    app.service('messages').emit('created', { text: 'marker' });
    await peer.nextEvent((f) => f.data.text === 'marker', TIMEOUT);
    assert.deepEqual(peer.events().map((f) => f.data.text), ['small', 'marker']);
  });
});
