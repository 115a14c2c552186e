'use strict';

/**
 * The Feathers side: the feathers-sync API on top of a syncar connection.
 *
 * Differences from feathers-sync, on purpose: an event is emitted on this instance at once (feathers-sync
 * waits for it to come back from the broker, so its listeners go silent when the broker is down); an
 * event that cannot be serialised never throws into the service call; events from other instances are
 * marked on their context (`context.syncar`).
 */

const { EventEmitter } = require('node:events');
const { Connection, Published } = require('./connection');
const { normalise } = require('./options');
const { contextForWire, sanitize } = require('./serialize');
const { traceFields, withTraceContext } = require('./trace');
const { Warnings, debug, describeError } = require('./warnings');

/** `context[SYNC] = false` in a hook keeps that call's events on this instance. */
const SYNC = Symbol.for('@syncar/feathers/sync');
/** Where a wrapped service keeps its original `emit` (which emits on this instance only). */
const LOCAL_EMIT = Symbol.for('@syncar/feathers/local-emit');
/** Feathers 5 keeps a service's options under this symbol (@feathersjs/feathers service.ts). */
const SERVICE_OPTIONS = Symbol.for('@feathersjs/service');
const DEFAULT_EVENTS = ['created', 'updated', 'removed', 'patched'];
/** Keys a custom serialize may not set at the top level: they belong to the publish frame. */
const FRAME_KEYS = ['type', 'id', 'ack', 'bin', 'traceparent', 'tracestate'];
/** An event frame whose event is binary: `bin`, base64, is its last field (docs/protocol.md). */
const BINARY_EVENT = /,"bin":"[A-Za-z0-9+/=]*"}$/;

function describeBytes(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MiB` : `${bytes} bytes`;
}

/** The events of a service that travel: the standard four plus its custom `events`. */
function eventsOf(service, serviceOptions) {
  const options = serviceOptions || service[SERVICE_OPTIONS] || {};
  if (Array.isArray(options.serviceEvents)) {
    return new Set([...DEFAULT_EVENTS, ...options.serviceEvents]);
  }
  const custom = options.events || service.events || [];
  return new Set([...DEFAULT_EVENTS, ...custom]);
}

class Sync extends EventEmitter {
  constructor(app, options) {
    super();
    this.app = app;
    this.type = 'syncar';
    this.options = options;
    this.serialize = options.serialize;
    this.deserialize = options.deserialize;
    this.stats = { published: 0, received: 0, skipped: 0, dropped: 0, missed: 0 };
    this.warnings = new Warnings(options.logger, this);
    this.connection = new Connection({
      socket: options.socket,
      name: options.name,
      clientId: options.clientId,
      subscribe: options.subscribe,
      reconnect: options.reconnect,
      maxPending: options.maxPending,
      maxPendingBytes: options.maxPendingBytes,
      maxFrameBytes: options.maxFrameBytes,
      maxReceiveBytes: options.maxReceiveBytes,
      writeBufferBytes: options.writeBufferBytes,
      parseEvent: (line) => this._parse(line),
      warn: (code, message) => this.warnings.warn(code, message),
    });
    const connection = this.connection;
    connection.on('event', (frame) => this._receive(frame));
    connection.on('connect', (welcome) => {
      debug('connected to syncar %s (backend %s, broker %s)', welcome.instance, welcome.backend, welcome.broker);
      this.emit('connect', welcome);
    });
    connection.on('disconnect', () => this.emit('disconnect'));
    connection.on('status', (status) => this.emit('status', status));
    connection.on('gap', (frame) => {
      this.stats.missed += frame.missed || 0; // a resume gap syncar could not count adds none
      this.emit('gap', frame);
    });
    connection.on('refused', (frame) => {
      this.stats.dropped += 1;
      this.warnings.warn(`refused_${frame.code}`, `syncar refused to relay an event (${frame.code}): ` +
        `${frame.message}; it was emitted on this instance`);
    });
    this.ready = new Promise((resolve, reject) => {
      connection.once('connect', () => resolve());
      connection.once('closed', (err) => reject(err || new Error('app.sync was closed before syncar answered')));
    });
    // Nobody has to await `ready`: do not let it become an unhandled rejection that kills the process.
    this.ready.catch(() => {});
    if (options.ignored.length > 0) {
      this.warnings.warn('ignored_options', `ignored option(s) ${options.ignored.join(', ')}: the broker is set on ` +
        'the syncar daemon (--backend, --key), not in the app');
    }
  }

  /** True while the socket to syncar is up and welcomed. */
  get connected() {
    return this.connection.connected;
  }

  /** The id of the syncar this app talks to (the `origin` of the events it publishes), once connected. */
  get instance() {
    return this.connection.instance;
  }

  /** 'up' or 'down': whether that syncar reaches its broker; null before the first connect. */
  get broker() {
    return this.connection.broker;
  }

  get clientId() {
    return this.connection.clientId;
  }

  /** Publishes held: not yet written to syncar, or written and not yet acknowledged. */
  get pending() {
    return this.connection.held;
  }

  start() {
    this.connection.start();
  }

  /** Wait (up to `closeTimeout` ms) for held publishes to be acknowledged, then close the socket. */
  close() {
    return this.connection.close(this.options.closeTimeout);
  }

  // -- out ------------------------------------------------------------------------------------

  /** Send a service event to syncar. Never throws: the service call that emitted it must not fail. */
  send(service, path, event, data, ctx) {
    let context;
    try {
      context = contextForWire(ctx, this.app, service);
    } catch (err) {
      context = undefined;
      this.warnings.warn('unserialisable', `${path} ${event}: the context's toJSON() threw (${describeError(err)}); ` +
        'sent without a context');
    }
    const body = this._serialize({ event, path, data, context });
    if (body === null) {
      this.stats.skipped += 1;
      return;
    }
    // The active OpenTelemetry span's context, if @opentelemetry/api is installed and a span is active.
    const { status, bytes } = this.connection.publish(body, traceFields());
    switch (status) {
      case Published.SENT:
      case Published.HELD:
        this.stats.published += 1;
        break;
      case Published.TOO_LARGE:
        this.stats.skipped += 1;
        this.warnings.warn('too_large', `${path} ${event} not sent to other instances: it is ` +
          `${describeBytes(bytes)}, over ${this._frameLimit()}; ` +
          'it was emitted on this instance only. Raise maxFrameBytes together with the daemon\'s --max-frame-bytes, ' +
          'or send less (e.g. set context[SYNC] = false for bulk calls)');
        break;
      case Published.FULL:
        this.stats.dropped += 1;
        this.warnings.warn('pending_full', `${path} ${event} not sent to other instances: syncar is ` +
          `${this.connection.connected ? 'not keeping up' : 'unreachable'} and ` +
          `${this.connection.held} events (${describeBytes(this.connection.heldBytes)}) are held already ` +
          `(maxPending ${this.options.maxPending}, maxPendingBytes ${describeBytes(this.options.maxPendingBytes)}); ` +
          'it was emitted on this instance only');
        break;
      default:
        if (this.connection.lost) {
          this.stats.dropped += 1;
          this.warnings.warn('closed', `${path} ${event} not sent to other instances: the connection to syncar was ` +
            'lost and reconnect is off; it was emitted on this instance only');
        }
        break; // otherwise app.sync.close() was called: the app is shutting down
    }
  }

  /** Which limit a too large event is over, as the warning says it. */
  _frameLimit() {
    const limit = this.connection.maxFrameBytes;
    const which = limit < this.options.maxFrameBytes ? 'the daemon\'s --max-frame-bytes' : 'maxFrameBytes';
    return `${which} (${describeBytes(limit)})`;
  }

  /** The serialised event as the JSON text of a publish's fields, or null (with a warning) if it cannot be sent. */
  _serialize(payload) {
    const where = `${payload.path} ${payload.event}`;
    let body;
    try {
      body = this.serialize(payload);
    } catch (firstError) {
      const { value, problems } = sanitize(payload);
      try {
        body = this.serialize(value);
      } catch (err) {
        this.warnings.warn('unserialisable', `${where} not sent to other instances: it cannot be serialised ` +
          `(${describeError(err)}); it was emitted on this instance only`);
        return null;
      }
      this.warnings.warn('unserialisable', `${where}: ${describeError(firstError)}; sent without what ` +
        `cannot be serialised (${problems.join('; ') || 'nothing found to replace'})`);
    }
    return this.options.customSerialize ? this._checkCustom(body, payload, where) : body;
  }

  /**
   * A custom serialize's output: JSON text of an object with `event` and `path`, sent as it is; or binary (a
   * Buffer or Uint8Array that is not such JSON: BSON, MessagePack), sent opaque in the frame's `bin`.
   */
  _checkCustom(body, payload, where) {
    let text = body;
    const binary = Buffer.isBuffer(body) || body instanceof Uint8Array;
    if (binary) {
      text = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
    }
    let parsed = null;
    if (typeof text === 'string') {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed) ||
        typeof parsed.path !== 'string' || typeof parsed.event !== 'string') {
      if (binary && body.byteLength > 0) {
        const bin = Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('base64');
        return JSON.stringify({ event: payload.event, path: payload.path, bin });
      }
      this.warnings.warn('bad_serialize', `${where} not sent: serialize must return the JSON text of an object with ` +
        'event, path, data and context, or a non-empty Buffer or Uint8Array');
      return null;
    }
    if (text.includes('\n') || FRAME_KEYS.some((key) => Object.hasOwn(parsed, key))) {
      for (const key of FRAME_KEYS) {
        delete parsed[key];
      }
      return JSON.stringify(parsed);
    }
    return text;
  }

  /**
   * An event frame from syncar as the app's deserialize reads it. A binary event (`bin`) is deserialized from its
   * bytes, and its event, path, data and context are what they say (syncar cannot read them).
   */
  _parse(line) {
    if (!BINARY_EVENT.test(line)) {
      return this.deserialize(line);
    }
    const frame = JSON.parse(line);
    const payload = this.deserialize(Buffer.from(frame.bin, 'base64'));
    if (payload === null || typeof payload !== 'object') {
      return payload;
    }
    const { event, path, data, context } = payload;
    return { ...frame, bin: undefined, event, path, data, context };
  }

  // -- in -------------------------------------------------------------------------------------

  /** An event from another app: emit it on the local service, with app and service back on its context. */
  _receive(frame) {
    this.stats.received += 1;
    const { event, path, data, context } = frame;
    const services = this.app.services;
    const service = typeof path === 'string' && services && Object.hasOwn(services, path) ? services[path] : undefined;
    if (service === undefined || typeof event !== 'string') {
      debug('no service %s here for a %s event from syncar', path, event);
      return;
    }
    const hook = context !== null && typeof context === 'object' ? context : {};
    hook.app = this.app;
    hook.service = service;
    hook.syncar = {
      remote: true,
      origin: frame.origin ?? null,
      id: frame.id ?? null,
      seq: frame.seq ?? null,
      time: frame.time ?? null,
      traceparent: frame.traceparent ?? null,
      tracestate: frame.tracestate ?? null,
    };
    const emit = service[LOCAL_EMIT] || service._emit || service.emit;
    try {
      // Listeners run in the publisher's trace context (as a remote parent), when OpenTelemetry is there.
      withTraceContext(frame, () => emit.call(service, event, data, hook));
    } catch (err) {
      this.warnings.warn('listener_error', `a listener of ${path} ${event} threw on an event from another instance: ` +
        `${describeError(err, { stack: true })}`);
    }
  }
}

/** Make `service` send its events through syncar as well as emitting them here. */
function wrapService(sync, service, path, serviceOptions) {
  if (Object.hasOwn(service, LOCAL_EMIT) || typeof service.emit !== 'function') {
    return;
  }
  const events = eventsOf(service, serviceOptions);
  const localEmit = service.emit;
  Object.defineProperty(service, LOCAL_EMIT, { value: localEmit, configurable: true });
  if (typeof service._emit !== 'function') {
    service._emit = localEmit; // feathers-sync's name for "emit on this instance only"; some apps call it
  }
  service.emit = function emit(...args) {
    const [event, data, ctx] = args;
    if (events.has(event) && !(ctx && ctx[SYNC] === false)) {
      try {
        sync.send(this, path, event, data, ctx);
      } catch (err) {
        sync.warnings.warn('internal', `${path} ${event} not sent: ${describeError(err, { stack: true })}`);
      }
    }
    return localEmit.apply(this, args);
  };
}

/**
 * `app.configure(syncar({ socket }))`: the feathers-sync API, through syncar.
 * @param {import('../index').SyncarOptions} [options]
 */
function syncar(options) {
  const settings = normalise(options);
  return function configureSyncar(app) {
    if (app[SYNC]) {
      return;
    }
    if (app.sync) {
      throw new Error('Only one type of feathers-sync can be configured on the same application');
    }
    if (!Array.isArray(app.mixins) || typeof app.emit !== 'function') {
      throw new TypeError('@syncar/feathers: app.configure(syncar(...)) needs a Feathers application');
    }
    app[SYNC] = true;
    const sync = new Sync(app, settings);
    app.sync = sync;
    app.mixins.push(function syncarMixin(service, path, serviceOptions) {
      wrapService(sync, service, path, serviceOptions);
    });
    // Services registered before configure: feathers-sync misses them; wrap them too.
    for (const [path, service] of Object.entries(app.services || {})) {
      wrapService(sync, service, path, undefined);
    }
    closeOnTeardown(app, sync);
    sync.start();
  };
}

/** Feathers 5: `app.teardown()` closes the socket too, so a torn-down app lets the process exit. */
function closeOnTeardown(app, sync) {
  if (typeof app.teardown !== 'function' || typeof app.hooks !== 'function') {
    return;
  }
  try {
    app.hooks({
      teardown: [async (context, next) => {
        await next();
        await sync.close();
      }],
    });
  } catch (err) {
    debug('cannot hook app.teardown: %s', describeError(err));
  }
}

/** True if `context` is that of an event that came from another app through syncar. */
function isRemote(context) {
  return Boolean(context && context.syncar && context.syncar.remote === true);
}

module.exports = { syncar, SYNC, isRemote };
