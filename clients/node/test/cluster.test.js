'use strict';

// The Feathers scaling guide's cluster setup, run from examples/feathers-chat: 4 workers (node:cluster)
// share one port, all connected to one syncar on the local:// backend. Every worker must see every
// other worker's events, and its own, exactly once.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { EventEmitter } = require('node:events');
const { Child, REPO_ROOT, freePort, removeDir, startDaemon, tempDir, waitUntil } = require('./helpers');

const EXAMPLE = path.join(REPO_ROOT, 'examples', 'feathers-chat');
const WORKERS = 4;
const TIMEOUT = 20_000;
const MAX_ATTEMPTS = 60;

/**
 * Let the example resolve its dependencies when it has no node_modules of its own (as in CI):
 * `@syncar/feathers` is this package, the Feathers packages are our devDependencies.
 */
function modulePath(dir) {
  const scope = path.join(dir, 'node_modules', '@syncar');
  fs.mkdirSync(scope, { recursive: true });
  fs.symlinkSync(path.resolve(__dirname, '..'), path.join(scope, 'feathers'), 'dir');
  return [path.join(dir, 'node_modules'), path.resolve(__dirname, '..', 'node_modules')].join(path.delimiter);
}

/** GET /events on a fresh connection: whichever worker the primary hands it to answers. */
function openStream(port) {
  return new Promise((resolve, reject) => {
    const stream = new EventEmitter();
    stream.events = [];
    const req = http.get({ host: '127.0.0.1', port, path: '/events', agent: false }, (res) => {
      let buffered = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        buffered += chunk;
        let end = buffered.indexOf('\n\n');
        while (end !== -1) {
          const message = JSON.parse(buffered.slice(buffered.indexOf('data: ') + 6, end));
          buffered = buffered.slice(end + 2);
          if (message.event === 'hello') {
            stream.worker = message.worker;
            resolve(stream);
          } else {
            stream.events.push(message);
            stream.emit('message', message);
          }
          end = buffered.indexOf('\n\n');
        }
      });
      res.on('error', () => {});
    });
    stream.close = () => req.destroy();
    req.on('error', reject);
    req.setTimeout(TIMEOUT, () => req.destroy(new Error('no answer from /events')));
  });
}

function post(port, pathname, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request({
      host: '127.0.0.1', port, path: pathname, method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), connection: 'close' },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve({ status: res.statusCode, worker: Number(res.headers['x-worker']), body: JSON.parse(text) }));
    });
    req.on('error', reject);
    req.setTimeout(TIMEOUT, () => req.destroy(new Error(`no answer from POST ${pathname}`)));
    req.end(data);
  });
}

describe('the Feathers cluster example: 4 workers, one syncar on local://', { timeout: 90_000 }, () => {
  let dir;
  let daemon;
  let primary;
  let port;
  const streams = [];

  before(async () => {
    dir = tempDir();
    daemon = await startDaemon({ socket: path.join(dir, 'syncar.sock'), backend: 'local://' });
    port = await freePort();
    primary = new Child('cluster.js', process.execPath, [path.join(EXAMPLE, 'cluster.js')], {
      cwd: EXAMPLE,
      env: { ...process.env, WORKERS: String(WORKERS), PORT: String(port), SYNCAR_SOCKET: daemon.socket, NODE_PATH: modulePath(dir) },
    });
    const count = (pattern) => primary.output.filter((line) => pattern.test(line)).length;
    await waitUntil(primary, 'line', () => count(/ready: connected to syncar/) === WORKERS && count(/listening on/) === WORKERS,
      { timeout: TIMEOUT, what: `${WORKERS} workers listening and connected to syncar` });
  });

  after(async () => {
    for (const stream of streams) {
      stream.close();
    }
    if (primary) {
      const { code } = await primary.stop('SIGTERM');
      assert.equal(code, 0, `the primary stops its workers and exits cleanly:\n${primary.tail()}`);
    }
    if (daemon) {
      await daemon.stop();
    }
    removeDir(dir);
  });

  it('every worker sees every other worker\'s events', async () => {
    // One event stream per worker: connections are dealt round-robin, so a few tries reach all four.
    const byWorker = new Map();
    for (let attempt = 0; attempt < MAX_ATTEMPTS && byWorker.size < WORKERS; attempt += 1) {
      const stream = await openStream(port);
      streams.push(stream);
      if (!byWorker.has(stream.worker)) {
        byWorker.set(stream.worker, stream);
      }
    }
    assert.equal(byWorker.size, WORKERS, 'an event stream on each worker');

    // Messages created until each worker has created at least one.
    const created = [];
    const creators = new Set();
    for (let attempt = 0; attempt < MAX_ATTEMPTS && creators.size < WORKERS; attempt += 1) {
      const text = `message ${attempt}`;
      const res = await post(port, '/messages', { text });
      assert.equal(res.status, 201);
      assert.equal(res.body.by, res.worker);
      created.push({ text, worker: res.worker });
      creators.add(res.worker);
    }
    assert.equal(creators.size, WORKERS, 'each worker created a message');
    const typing = await post(port, '/typing', { user: 'ann' });
    assert.equal(typing.status, 202);

    for (const [worker, stream] of byWorker) {
      const seen = () => stream.events.filter((m) => m.event === 'created');
      await waitUntil(stream, 'message', () => seen().length >= created.length && stream.events.some((m) => m.event === 'typing'),
        { timeout: TIMEOUT, what: `worker ${worker} to see ${created.length} messages (has ${seen().length})` });
      const texts = seen().map((m) => m.data.text).sort();
      assert.deepEqual(texts, created.map((c) => c.text).sort(), `worker ${worker} saw each message once`);
      for (const message of seen()) {
        const creator = created.find((c) => c.text === message.data.text).worker;
        assert.equal(message.remote, creator !== worker, 'events from other workers are marked remote, its own are not');
        assert.equal(message.worker, worker);
      }
      const [typingEvent] = stream.events.filter((m) => m.event === 'typing');
      assert.equal(typingEvent.data.user, 'ann');
      assert.equal(typingEvent.remote, typingEvent.data.worker !== worker);
    }
  });
});
