'use strict';

// W3C trace context through a real syncar: the publishing app's active OpenTelemetry span goes with the event, and
// the receiving app's listeners run in it (as a remote parent). Without @opentelemetry/api (an app process that
// cannot resolve it) nothing of it is loaded, events go as before, and the received trace context is on
// context.syncar all the same.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const api = require('@opentelemetry/api');
const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');
const { feathers } = require('@feathersjs/feathers');
const { MemoryService } = require('@feathersjs/memory');
const syncar = require('..');
const { AppProcess, removeDir, startDaemon, tempDir } = require('./helpers');

const TIMEOUT = 15_000;
const SPAN = {
  traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
  spanId: '00f067aa0ba902b7',
  traceFlags: api.TraceFlags.SAMPLED,
  traceState: api.createTraceState('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE'),
};
const TRACEPARENT = `00-${SPAN.traceId}-${SPAN.spanId}-01`;

function makeApp(socket) {
  const app = feathers();
  app.configure(syncar({ socket, logger: null }));
  app.use('messages', new MemoryService());
  return app;
}

/** The next `created` event of `app`'s messages with data.n === n: its data, context and the active span then. */
function nextCreated(app, n) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for created n=${n}`)), TIMEOUT);
    const service = app.service('messages');
    service.on('created', function listener(data, context) {
      if (data.n !== n) return;
      clearTimeout(timer);
      service.off('created', listener);
      resolve({ data, context, span: api.trace.getSpanContext(api.context.active()) });
    });
  });
}

function inSpan(fn) {
  return api.context.with(api.trace.setSpanContext(api.context.active(), SPAN), fn);
}

describe('trace context', { timeout: 90_000 }, () => {
  let dir;
  let daemon;
  let publisher;
  let receiver;
  const manager = new AsyncLocalStorageContextManager();

  before(async () => {
    api.context.setGlobalContextManager(manager.enable());
    dir = tempDir();
    daemon = await startDaemon({ socket: path.join(dir, 'trace.sock'), instanceId: 'here' });
    publisher = makeApp(daemon.socket);
    receiver = makeApp(daemon.socket);
    await Promise.all([publisher.sync.ready, receiver.sync.ready]);
  });

  after(async () => {
    for (const app of [publisher, receiver]) {
      if (app) await app.sync.close();
    }
    if (daemon) await daemon.stop();
    api.context.disable();
    removeDir(dir);
  });

  it('sends the active span\'s context and emits in it on the other app', async () => {
    const received = nextCreated(receiver, 1);
    await inSpan(() => publisher.service('messages').create({ n: 1 }));
    const { context, span } = await received;
    assert.equal(context.syncar.remote, true);
    assert.equal(context.syncar.traceparent, TRACEPARENT);
    assert.equal(context.syncar.tracestate, 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE');
    assert.ok(span, 'the listener ran with no span context');
    assert.deepEqual([span.traceId, span.spanId, span.traceFlags, span.isRemote, span.traceState.serialize()],
      [SPAN.traceId, SPAN.spanId, 1, true, 'rojo=00f067aa0ba902b7,congo=t61rcWkgMzE']);
  });

  it('sends none without an active span, and the listener runs in no span', async () => {
    const received = nextCreated(receiver, 2);
    await publisher.service('messages').create({ n: 2 });
    const { context, span } = await received;
    assert.equal(context.syncar.traceparent, null);
    assert.equal(span, undefined);
  });

  it('works as before without @opentelemetry/api, and says the trace context it receives', async () => {
    const plain = new AppProcess('no-otel', daemon.socket,
      { execArgv: ['--require', path.join(__dirname, 'fixtures', 'no-otel.js')] });
    try {
      await plain.ready();
      // Published without the API: arrives without trace context.
      const fromPlain = nextCreated(receiver, 3);
      await plain.call('create', { data: { n: 3 } });
      const { context, span } = await fromPlain;
      assert.equal(context.syncar.traceparent, null);
      assert.equal(span, undefined);
      // Received without the API: emitted as always, the traceparent on context.syncar.
      const arrived = plain.waitForEvents(1, (m) => m.data.n === 4 && m.remote);
      await inSpan(() => publisher.service('messages').create({ n: 4 }));
      const [event] = await arrived;
      assert.equal(event.traceparent, TRACEPARENT);
      const state = await plain.call('state');
      assert.equal(state.otel, false, 'the plugin loaded @opentelemetry/api where it cannot be found');
      assert.equal(plain.messages.find((m) => m.type === 'ready').otel, false);
    } finally {
      await plain.stop();
    }
  });
});
