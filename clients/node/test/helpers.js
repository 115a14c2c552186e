'use strict';

/**
 * Test helpers: a real syncar daemon and a real redis-server, started here on temp sockets and free
 * loopback ports, stopped by pid; a raw protocol peer; waiting on events with timeouts (never sleeps).
 */

const { fork, spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { after, before } = require('node:test');
const { EventEmitter, once } = require('node:events');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const PYTHON = process.env.SYNCAR_PYTHON || path.join(REPO_ROOT, '.venv', 'bin', 'python');
const DAEMON_START_TIMEOUT = 30_000;

/** Every child this test process started and has not seen exit: killed by pid if the test dies first. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      process.kill(child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

function tempDir(prefix = 'syncar-node-') {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

function removeDir(dir) {
  fs.rmSync(dir, { recursive: true, force: true });
}

/**
 * For the `describe` block that calls it: a temporary directory made before its tests (`scope.dir`), and
 * `scope.cleanup`, the steps (functions, async or not) its tests push; after its tests they run, the last pushed
 * first, then the directory is removed.
 */
function tempScope(prefix) {
  const scope = { dir: undefined, cleanup: [] };
  before(() => {
    scope.dir = tempDir(prefix);
  });
  after(async () => {
    for (const step of scope.cleanup.reverse()) {
      await step();
    }
    removeDir(scope.dir);
  });
  return scope;
}

/**
 * Call `onLine` with each whole line `stream` sends (UTF-8, without its newline): the tests' own splitter, kept
 * apart from the plugin's (lib/lines.js) so that the peers they play do not share the code under test.
 */
function readLines(stream, onLine) {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buffered += chunk;
    let newline = buffered.indexOf('\n');
    while (newline !== -1) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      onLine(line);
      newline = buffered.indexOf('\n');
    }
  });
}

/**
 * Resolve when `emitter` emits `event` with arguments for which `filter` holds; reject after `timeout`.
 * @returns {Promise<any[]>} the event's arguments
 */
function waitForEvent(emitter, event, { filter = () => true, timeout = 10_000, what } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out after ${timeout}ms waiting for ${what || `'${event}'`}`));
    }, timeout);
    function listener(...args) {
      if (filter(...args)) {
        clearTimeout(timer);
        emitter.off(event, listener);
        resolve(args);
      }
    }
    emitter.on(event, listener);
  });
}

/** Resolve when `condition()` holds, re-checked each time `emitter` emits `event`; reject after `timeout`. */
async function waitUntil(emitter, event, condition, { timeout = 10_000, what = 'a condition' } = {}) {
  if (condition()) {
    return;
  }
  await waitForEvent(emitter, event, { filter: () => condition(), timeout, what });
}

/** A process started by the tests, whose output lines are events. Stopped by its pid only. */
class Child extends EventEmitter {
  constructor(name, command, args, options = {}) {
    super();
    this.name = name;
    this.output = [];
    this.exited = false;
    this.proc = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    children.add(this.proc);
    this.exit = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => resolve({ code, signal }));
      // Not started at all (e.g. no such python): say so instead of crashing the test process.
      this.proc.once('error', (err) => {
        this.output.push(`${name}: cannot run ${command}: ${err.message}` +
          (command === PYTHON ? ' (make the venv with scripts/install, or set SYNCAR_PYTHON)' : ''));
        resolve({ code: null, signal: null, error: err });
      });
    }).then((result) => {
      this.exited = true;
      children.delete(this.proc);
      this.emit('exited', result.code, result.signal);
      return result;
    });
    for (const stream of [this.proc.stdout, this.proc.stderr]) {
      readLines(stream, (line) => {
        this.output.push(line);
        if (this.output.length > 2000) {
          this.output.splice(0, 1000);
        }
        this.emit('line', line);
      });
    }
  }

  get pid() {
    return this.proc.pid;
  }

  /** Wait for an output line matching `pattern`; fail early if the process exits first. */
  async waitForLine(pattern, timeout) {
    const seen = this.output.find((line) => pattern.test(line));
    if (seen !== undefined) {
      return seen;
    }
    const line = waitForEvent(this, 'line', { filter: (l) => pattern.test(l), timeout, what: `${this.name}: ${pattern}` });
    const died = this.exit.then(({ code, signal }) => {
      throw new Error(`${this.name} exited (${code ?? signal}) before printing ${pattern}:\n${this.tail()}`);
    });
    try {
      const [found] = await Promise.race([line, died]);
      return found;
    } catch (err) {
      err.message += `\n--- last output of ${this.name} ---\n${this.tail()}`;
      throw err;
    }
  }

  tail(lines = 30) {
    return this.output.slice(-lines).join('\n');
  }

  /** Send `signal` to our child by pid and wait for it to exit; SIGKILL if it outlives `timeout`. */
  async stop(signal = 'SIGTERM', timeout = 15_000) {
    if (this.exited) {
      return this.exit;
    }
    this.proc.kill(signal);
    const timer = setTimeout(() => {
      if (!this.exited) {
        this.proc.kill('SIGKILL');
      }
    }, timeout);
    try {
      return await this.exit;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * A syncar daemon from this repository: `python -m sidecar run --socket ... --backend ...`.
 * Resolves once it logged that apps may connect.
 */
async function startDaemon({ socket, backend = 'local://', instanceId, args = [] }) {
  // --http off: several daemons run at once here, and none of these tests reads /metrics.
  const argv = ['-m', 'sidecar', 'run', '--socket', socket, '--backend', backend, '--http', 'off', ...args];
  if (instanceId) {
    argv.push('--instance-id', instanceId);
  }
  const env = { ...process.env, PYTHONUNBUFFERED: '1' };
  for (const key of Object.keys(env)) {
    if (key.startsWith('SYNCAR_')) {
      delete env[key]; // the daemon reads SYNCAR_*; only our flags may configure it
    }
  }
  const daemon = new Child(`syncar(${path.basename(socket)})`, PYTHON, argv, { cwd: REPO_ROOT, env });
  daemon.socket = socket;
  await daemon.waitForLine(/ready: apps may connect/, DAEMON_START_TIMEOUT);
  return daemon;
}

/** A port that was free a moment ago on 127.0.0.1. */
async function freePort() {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address();
  server.close();
  await once(server, 'close');
  return port;
}

/** redis-server on a free loopback port, no persistence, in `dir`. */
async function startRedis(dir) {
  const binary = process.env.REDIS_SERVER || 'redis-server';
  for (let attempt = 1; ; attempt += 1) {
    const port = await freePort();
    const redis = new Child(`redis-server:${port}`, binary,
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
    try {
      await redis.waitForLine(/Ready to accept connections/, 15_000);
    } catch (err) {
      await redis.stop('SIGKILL');
      if (attempt >= 3) {
        throw err; // not a port race: redis-server itself is missing or broken
      }
      continue;
    }
    redis.port = port;
    redis.uri = `redis://127.0.0.1:${port}`;
    return redis;
  }
}

/**
 * A client that speaks the socket protocol by hand: what an app in another language would send and
 * see. Frames it receives are kept in `frames` and emitted as 'frame'.
 */
class RawPeer extends EventEmitter {
  constructor(socketPath) {
    super();
    this.socketPath = socketPath;
    this.frames = [];
    this.welcome = null;
  }

  /**
   * Connect and say hello. With `fromStart`, first learn the daemon's epoch, then reconnect resuming
   * from seq 0, so that the peer sees every event this daemon relayed, even those before it connected.
   */
  async connect({ subscribe, fromStart = false, timeout = 10_000 } = {}) {
    let resume;
    if (fromStart) {
      const probe = await this._open({ subscribe: [] }, timeout);
      resume = { epoch: probe.welcome.epoch, seq: 0 };
      probe.socket.destroy();
    }
    const opened = await this._open({ subscribe, resume }, timeout, (frame) => {
      this.frames.push(frame);
      this.emit('frame', frame);
    });
    this.socket = opened.socket;
    this.welcome = opened.welcome;
    return this.welcome;
  }

  _open({ subscribe, resume }, timeout, onFrame = () => {}) {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path: this.socketPath });
      let welcome = null;
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no welcome from ${this.socketPath} within ${timeout}ms`));
      }, timeout);
      socket.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      readLines(socket, (line) => {
        const frame = JSON.parse(line);
        if (frame.type === 'welcome' && welcome === null) {
          welcome = frame;
          clearTimeout(timer);
          resolve({ socket, welcome });
        } else {
          onFrame(frame);
        }
      });
      const hello = { type: 'hello', client: 'raw-peer' };
      if (subscribe !== undefined) {
        hello.subscribe = subscribe;
      }
      if (resume !== undefined) {
        hello.resume = resume;
      }
      socket.write(`${JSON.stringify(hello)}\n`);
    });
  }

  events() {
    return this.frames.filter((frame) => frame.type === 'event');
  }

  /** The next event frame (among those not yet taken) for which `filter` holds. */
  async nextEvent(filter = () => true, timeout = 10_000) {
    this._taken = this._taken || new Set();
    const match = (frame) => frame.type === 'event' && !this._taken.has(frame) && filter(frame);
    let found = this.frames.find(match);
    if (found === undefined) {
      [found] = await waitForEvent(this, 'frame', { filter: match, timeout, what: 'an event frame' });
    }
    this._taken.add(found);
    return found;
  }

  send(frame) {
    this.socket.write(`${JSON.stringify(frame)}\n`);
  }

  close() {
    if (this.socket) {
      this.socket.destroy();
    }
  }
}

/**
 * A daemon scripted by hand (protocol v1) on `socket`, for what a real one cannot be made to do: it welcomes each
 * hello, and acknowledges a publish only if `ack(connection)` holds. With `barriers`, it offers barriers to a hello
 * that asks (docs/protocol.md#barrier) and then acknowledges barriers instead, on the same condition; without, it
 * is a daemon older than barriers. `server.connections` lists the connections in order, each
 * `{ number, conn, frames }` with the frames it received; each frame is emitted as 'frame'.
 */
async function startScriptedDaemon(socket, { ack = () => true, barriers = false } = {}) {
  const connections = [];
  const server = net.createServer((conn) => {
    const connection = { number: connections.length + 1, conn, frames: [] };
    connections.push(connection);
    readLines(conn, (line) => {
      const frame = JSON.parse(line);
      connection.frames.push(frame);
      server.emit('frame', connection, frame);
      if (frame.type === 'hello') {
        connection.barriers = barriers && frame.barriers === true;
        conn.write(`${JSON.stringify({ type: 'welcome', version: 1, instance: `scripted-${connection.number}`,
          backend: 'local', broker: 'up', epoch: `e${connection.number}`, seq: 0, client_id: frame.client_id,
          resumed: false, ...(connection.barriers ? { barriers: true } : {}) })}\n`);
      } else if (frame.type === (connection.barriers ? 'barrier' : 'publish') && ack(connection)) {
        conn.write(`${JSON.stringify({ type: 'ack', id: frame.id })}\n`);
      }
    });
  });
  server.connections = connections;
  server.listen(socket);
  await once(server, 'listening');
  return server;
}

/** A Feathers app in its own process (test/fixtures/app-process.js), driven over IPC. */
class AppProcess extends EventEmitter {
  /** `execArgv`: Node's own arguments for it, e.g. a `--require` (test/fixtures/no-otel.js). */
  constructor(name, socket, { execArgv = [] } = {}) {
    super();
    this.name = name;
    this.messages = [];
    this._calls = 0;
    this.proc = fork(path.join(__dirname, 'fixtures', 'app-process.js'), [], {
      env: { ...process.env, SYNCAR_SOCKET: socket, APP_NAME: name },
      execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    children.add(this.proc);
    this.exit = once(this.proc, 'exit').then(() => children.delete(this.proc));
    this.proc.on('message', (message) => {
      this.messages.push(message);
      this.emit('message', message);
      this.emit(message.type, message);
    });
  }

  /** Events this app's `messages` service emitted, as the fixture reported them. */
  events(filter = () => true) {
    return this.messages.filter((m) => m.type === 'event' && filter(m));
  }

  async ready(timeout = 15_000) {
    if (!this.messages.some((m) => m.type === 'ready')) {
      await waitForEvent(this, 'ready', { timeout, what: `${this.name} ready` });
    }
  }

  async call(cmd, args = {}, timeout = 15_000) {
    this._calls += 1;
    const id = this._calls;
    const reply = waitForEvent(this, 'reply', { filter: (m) => m.id === id, timeout, what: `${this.name} ${cmd}` });
    this.proc.send({ id, cmd, ...args });
    const [message] = await reply;
    if (message.error) {
      throw new Error(`${this.name} ${cmd}: ${message.error}`);
    }
    return message.result;
  }

  /** Resolve once `count` events matching `filter` were reported. */
  async waitForEvents(count, filter, timeout = 15_000) {
    await waitUntil(this, 'event', () => this.events(filter).length >= count,
      { timeout, what: `${count} events at ${this.name} (have ${this.events(filter).length})` });
    return this.events(filter);
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      try {
        await this.call('close', {}, 5000);
      } catch {
        this.proc.kill('SIGKILL');
      }
      const timer = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
      await this.exit;
      clearTimeout(timer);
    }
  }
}

module.exports = {
  AppProcess,
  REPO_ROOT,
  PYTHON,
  Child,
  RawPeer,
  freePort,
  readLines,
  removeDir,
  startDaemon,
  startRedis,
  startScriptedDaemon,
  tempDir,
  tempScope,
  waitForEvent,
  waitUntil,
};
