'use strict';

// Unit tests without a daemon: the serialisation rules and option checking.

const test = require('node:test');
const assert = require('node:assert/strict');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const { sanitize, contextForWire, CIRCULAR } = require('../lib/serialize');
const { normalise, defaultSocketPath } = require('../lib/options');
const { describeError } = require('../lib/warnings');
const syncar = require('..');

test('sanitize replaces circular references but keeps shared ones', () => {
  const shared = { name: 'shared' };
  const loop = { id: 1, shared, again: shared, list: [shared] };
  loop.self = loop;
  loop.list.push(loop);
  const { value, problems } = sanitize(loop);
  assert.deepEqual(value, {
    id: 1,
    shared: { name: 'shared' },
    again: { name: 'shared' },
    list: [{ name: 'shared' }, CIRCULAR],
    self: CIRCULAR,
  });
  assert.equal(problems.length, 1);
  assert.match(problems[0], /circular/);
  assert.doesNotThrow(() => JSON.stringify(value));
});

test('sanitize turns BigInt into a decimal string, and keeps what JSON keeps', () => {
  const at = new Date(Date.UTC(2024, 0, 2));
  const { value, problems } = sanitize({
    big: 12345678901234567890n, list: [1n, 'x'], at, fn() {}, missing: undefined, boxed: new Number(3),
  });
  assert.deepEqual(value, { big: '12345678901234567890', list: ['1', 'x'], at: '2024-01-02T00:00:00.000Z', boxed: 3 });
  assert.deepEqual(problems, ['BigInt sent as a decimal string']);
});

test('sanitize leaves out values whose toJSON or getter throws', () => {
  const bad = { toJSON() { throw new Error('nope'); } };
  const source = { ok: 1, bad };
  Object.defineProperty(source, 'getter', { enumerable: true, get() { throw new Error('no getter'); } });
  const { value, problems } = sanitize(source);
  assert.deepEqual(value, { ok: 1 });
  assert.equal(problems.length, 2);
});

test('what was thrown is said, whatever it is: an Error\'s message, a string, an object without a prototype', () => {
  const { problems } = sanitize({
    text: { toJSON() { throw 'no toJSON today'; } }, // apps may throw anything
    error: { toJSON() { throw new RangeError('out of range'); } },
  });
  assert.deepEqual(problems, [
    "toJSON of 'text' threw (no toJSON today); left out",
    "toJSON of 'error' threw (out of range); left out",
  ]);
  const bare = Object.create(null);
  assert.equal(describeError(bare), '[object Object]');
  assert.equal(describeError(undefined), 'undefined');
  assert.match(describeError(new Error('boom'), { stack: true }), /^Error: boom\n\s+at /);
});

test('sanitize cuts nesting too deep for JSON.stringify without overflowing the stack', () => {
  let deep = { leaf: true };
  for (let i = 0; i < 20_000; i += 1) {
    deep = { deep };
  }
  assert.throws(() => JSON.stringify(deep), RangeError);
  const { value, problems } = sanitize(deep);
  assert.doesNotThrow(() => JSON.stringify(value));
  assert.match(problems[0], /deeper than/);
});

test('the context on the wire is the hook context toJSON() without app, service and self', async () => {
  const app = feathers();
  app.use('messages', new MemoryService());
  const service = app.service('messages');
  const seen = new Promise((resolve) => service.once('created', (data, ctx) => resolve(ctx)));
  await service.create({ text: 'hi' }, { user: { id: 7 } });
  const ctx = await seen;
  const wire = contextForWire(ctx, app, service);
  assert.equal(wire.app, undefined);
  assert.equal(wire.service, undefined);
  assert.equal(wire.self, undefined);
  // The keys feathers-sync 3.x sends for a create (DESIGN.md, captured on Redis).
  const sent = JSON.parse(JSON.stringify(wire));
  assert.deepEqual(Object.keys(sent).sort(), ['arguments', 'data', 'event', 'method', 'params', 'path', 'result', 'type']);
  assert.deepEqual(sent.params, { user: { id: 7 } });
  assert.deepEqual(sent.result, { text: 'hi', id: 0 });
  // A context that is not this app's is sent as is; a missing one stays missing.
  assert.deepEqual(contextForWire({ params: { a: 1 } }, app, service), { params: { a: 1 } });
  assert.equal(contextForWire(undefined, app, service), undefined);
});

test('options are checked when syncar() is called, naming the bad one', () => {
  assert.throws(() => syncar({ serialize: 'json' }), /`serialize` option .* is not a function/);
  assert.throws(() => syncar({ deserialize: 1 }), /`deserialize` option/);
  assert.throws(() => syncar({ socket: '' }), /`socket`/);
  assert.throws(() => syncar({ maxPending: 0 }), /`maxPending` must be a positive integer/);
  assert.throws(() => syncar({ maxFrameBytes: 1.5 }), /`maxFrameBytes`/);
  assert.throws(() => syncar({ reconnect: { minDelay: 100, maxDelay: 10 } }), /reconnect/);
  assert.throws(() => syncar({ subscribe: [{ path: 'a', service: 'b' }] }), /only `path` and `event`/);
  assert.throws(() => syncar({ subscribe: [42] }), /`subscribe` takes/);
  assert.throws(() => syncar({ logger: {} }), /`logger`/);
});

test('subscribe patterns are normalised to the hello frame shape', () => {
  assert.equal(normalise({}).subscribe, undefined);
  assert.deepEqual(normalise({ subscribe: false }).subscribe, []);
  assert.deepEqual(normalise({ subscribe: [] }).subscribe, []);
  assert.deepEqual(normalise({ subscribe: 'messages' }).subscribe, ['messages']);
  assert.deepEqual(normalise({ subscribe: ['users', { path: 'messages', event: 'created' }] }).subscribe,
    ['users', { path: 'messages', event: 'created' }]);
  assert.equal(normalise({ reconnect: false }).reconnect, false);
  assert.deepEqual(normalise({ reconnect: { minDelay: 10, maxDelay: 20 } }).reconnect, { minDelay: 10, maxDelay: 20 });
  assert.deepEqual(normalise({ uri: 'redis://x', key: 'k' }).ignored, ['uri', 'key']);
});

test('the default socket is $SYNCAR_SOCKET, else where the daemon puts it', () => {
  assert.equal(defaultSocketPath({ SYNCAR_SOCKET: '/x/y.sock' }), '/x/y.sock');
  const expected = process.geteuid() === 0 ? '/run/syncar/syncar.sock' : `/tmp/syncar-${process.geteuid()}/syncar.sock`;
  assert.equal(defaultSocketPath({}), expected);
});

test('configuring twice is a no-op; next to another feathers-sync it is an error', () => {
  const app = feathers();
  const options = { socket: '/nonexistent/syncar.sock', reconnect: false, logger: null };
  app.configure(syncar(options));
  const first = app.sync;
  app.configure(syncar(options));
  assert.equal(app.sync, first);
  assert.equal(app.sync.type, 'syncar');
  const other = feathers();
  other.sync = { type: 'redis' };
  assert.throws(() => other.configure(syncar(options)), /Only one type of feathers-sync/);
  return first.ready.then(() => assert.fail('ready must reject without a daemon and reconnect: false'),
    (err) => assert.match(err.message, /cannot reach syncar/));
});
