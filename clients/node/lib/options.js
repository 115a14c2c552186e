'use strict';

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { defaultSerialize, defaultDeserialize } = require('./serialize');

const MiB = 1024 * 1024;
/** The longest `client_id` the daemon takes in a `hello`, in characters (sidecar/__init__.py MAX_ID_LENGTH). */
const MAX_CLIENT_ID_CHARS = 256;

const DEFAULTS = Object.freeze({
  reconnect: Object.freeze({ minDelay: 50, maxDelay: 5000 }),
  maxPending: 10_000,
  maxPendingBytes: 32 * MiB,
  maxFrameBytes: 1 * MiB, // the daemon's default --max-frame-bytes
  maxReceiveBytes: 16 * MiB,
  writeBufferBytes: 8 * MiB,
  closeTimeout: 2000,
});

/** Options that only mean something to feathers-sync's broker adapters: the broker is syncar's business now. */
const BROKER_OPTIONS = ['uri', 'key', 'redisClient', 'redisOptions', 'amqpConnectionOptions', 'natsConnectionOptions'];

/** Where the daemon puts its socket unless told (sidecar/paths.py default_socket_path), or $SYNCAR_SOCKET. */
function defaultSocketPath(env = process.env) {
  if (env.SYNCAR_SOCKET) {
    return env.SYNCAR_SOCKET;
  }
  const uid = typeof process.geteuid === 'function' ? process.geteuid() : null;
  if (uid === 0) {
    return '/run/syncar/syncar.sock';
  }
  const runtimeDir = env.XDG_RUNTIME_DIR;
  if (runtimeDir && privateDir(runtimeDir, uid ?? os.userInfo().uid)) {
    return path.join(runtimeDir, 'syncar', 'syncar.sock');
  }
  return `/tmp/syncar-${uid ?? os.userInfo().uid}/syncar.sock`;
}

/**
 * The daemon's rule for $XDG_RUNTIME_DIR (sidecar/paths.py unsafe_dir_reason): a real directory, not a symbolic
 * link, owned by this user, that its group and others may not write to; else it is not used.
 */
function privateDir(dir, uid) {
  try {
    const info = fs.lstatSync(dir);
    return info.isDirectory() && info.uid === uid && (info.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

function fail(message) {
  throw new TypeError(`@syncar/feathers: ${message}`);
}

function positiveInteger(options, name) {
  const value = options[name] ?? DEFAULTS[name];
  if (!Number.isSafeInteger(value) || value <= 0) {
    fail(`\`${name}\` must be a positive integer (got ${String(options[name])})`);
  }
  return value;
}

function normaliseSubscribe(subscribe) {
  if (subscribe === undefined || subscribe === null || subscribe === true) {
    return undefined; // every event
  }
  if (subscribe === false) {
    return []; // publish-only
  }
  const list = typeof subscribe === 'string' || !Array.isArray(subscribe) ? [subscribe] : subscribe;
  return list.map((pattern) => {
    if (typeof pattern === 'string' && pattern.length > 0) {
      return pattern;
    }
    if (pattern !== null && typeof pattern === 'object' && !Array.isArray(pattern)) {
      const out = {};
      for (const key of Object.keys(pattern)) {
        if (key !== 'path' && key !== 'event') {
          fail(`a \`subscribe\` pattern has only \`path\` and \`event\` (got \`${key}\`)`);
        }
        if (typeof pattern[key] !== 'string' || pattern[key].length === 0) {
          fail(`\`subscribe\` pattern field \`${key}\` must be a non-empty string`);
        }
        out[key] = pattern[key];
      }
      return out;
    }
    return fail('`subscribe` takes a service path pattern (string), { path, event } objects, an array of them, or false');
  });
}

function normaliseReconnect(reconnect) {
  if (reconnect === undefined || reconnect === true) {
    return { ...DEFAULTS.reconnect };
  }
  if (reconnect === false) {
    return false;
  }
  if (reconnect === null || typeof reconnect !== 'object') {
    return fail('`reconnect` must be true, false or { minDelay, maxDelay } in milliseconds');
  }
  const minDelay = reconnect.minDelay ?? DEFAULTS.reconnect.minDelay;
  const maxDelay = reconnect.maxDelay ?? Math.max(DEFAULTS.reconnect.maxDelay, minDelay);
  if (!(Number.isFinite(minDelay) && minDelay > 0 && Number.isFinite(maxDelay) && maxDelay >= minDelay)) {
    fail('`reconnect.minDelay` and `reconnect.maxDelay` must be milliseconds with 0 < minDelay <= maxDelay');
  }
  return { minDelay, maxDelay };
}

/** Validate and complete the options given to `syncar()`; throws a TypeError naming the bad one. */
function normalise(options = {}) {
  if (options === null || typeof options !== 'object') {
    fail('options must be an object');
  }
  const { serialize, deserialize } = options;
  if (serialize !== undefined && typeof serialize !== 'function') {
    fail('`serialize` option provided to @syncar/feathers is not a function');
  }
  if (deserialize !== undefined && typeof deserialize !== 'function') {
    fail('`deserialize` option provided to @syncar/feathers is not a function');
  }
  const socket = options.socket ?? defaultSocketPath();
  if (typeof socket !== 'string' || socket.length === 0) {
    fail('`socket` must be the path of syncar\'s unix socket');
  }
  const name = options.name ?? `feathers-${process.pid}`;
  if (typeof name !== 'string') {
    fail('`name` must be a string');
  }
  const logger = options.logger === undefined ? console : options.logger;
  if (logger !== null && logger !== false && (typeof logger !== 'object' || typeof logger.warn !== 'function')) {
    fail('`logger` must have a warn() method, or be null to stay silent');
  }
  const clientId = options.clientId ?? null;
  // Characters as the daemon counts them (code points), not UTF-16 units.
  if (clientId !== null && !(typeof clientId === 'string' && clientId.length > 0 &&
      [...clientId].length <= MAX_CLIENT_ID_CHARS)) {
    fail(`\`clientId\` must be a string of 1 to ${MAX_CLIENT_ID_CHARS} characters`);
  }
  const closeTimeout = options.closeTimeout ?? DEFAULTS.closeTimeout;
  if (!Number.isFinite(closeTimeout) || closeTimeout < 0) {
    fail('`closeTimeout` must be milliseconds (>= 0)');
  }
  return {
    socket,
    name,
    clientId,
    subscribe: normaliseSubscribe(options.subscribe),
    reconnect: normaliseReconnect(options.reconnect),
    serialize: serialize || defaultSerialize,
    deserialize: deserialize || defaultDeserialize,
    customSerialize: serialize !== undefined,
    maxPending: positiveInteger(options, 'maxPending'),
    maxPendingBytes: positiveInteger(options, 'maxPendingBytes'),
    maxFrameBytes: positiveInteger(options, 'maxFrameBytes'),
    maxReceiveBytes: positiveInteger(options, 'maxReceiveBytes'),
    writeBufferBytes: positiveInteger(options, 'writeBufferBytes'),
    closeTimeout,
    logger: logger || null,
    ignored: BROKER_OPTIONS.filter((key) => options[key] !== undefined),
  };
}

module.exports = { normalise, defaultSocketPath, DEFAULTS };
