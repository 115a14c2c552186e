// The ESM entry is the CommonJS implementation re-exported: one SYNC symbol, one plugin.
import test from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { feathers } from '@feathersjs/feathers';
import syncar, { SYNC, isRemote, syncar as named, defaultSocketPath, DEFAULTS } from '@syncar/feathers';

const require = createRequire(import.meta.url);

test('import and require resolve to the same plugin through the package exports', () => {
  const cjs = require('@syncar/feathers');
  assert.equal(syncar, cjs);
  assert.equal(named, cjs);
  assert.equal(SYNC, cjs.SYNC);
  assert.equal(isRemote, cjs.isRemote);
  assert.equal(defaultSocketPath, cjs.defaultSocketPath);
  assert.equal(DEFAULTS.maxFrameBytes, 1024 * 1024);
  assert.equal(typeof SYNC, 'symbol');
});

test('configures a Feathers app from ESM', async () => {
  const app = feathers();
  app.configure(syncar({ socket: '/nonexistent/syncar.sock', reconnect: false, logger: null }));
  assert.equal(app.sync.type, 'syncar');
  await assert.rejects(app.sync.ready, /cannot reach syncar/);
});
