'use strict';

// The plugin is not on a registry: the ways README.md gives to install it, tried for real in a new app outside
// this folder: a tarball from scripts/pack-node, and this folder's path with --install-links. Each is compiled
// with tsc (app.sync typed, `module` nodenext and commonjs) and loaded with require and import.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { removeDir, tempDir } = require('./helpers');

const HERE = path.resolve(__dirname, '..');
const TSC = path.join(HERE, 'node_modules', 'typescript', 'bin', 'tsc');
const LOCK = require('../package-lock.json').packages;
const version = (name) => LOCK[`node_modules/${name}`].version;

function run(command, args, cwd) {
  return execFileSync(command, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
}

/** A new app in `dir` with Feathers 5 and @types/node (the versions this folder tests with), plus `spec`. */
function install(dir, spec, flags = []) {
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({
    name: 'app', private: true,
    dependencies: { '@feathersjs/feathers': version('@feathersjs/feathers'), '@types/node': version('@types/node') },
  }));
  fs.copyFileSync(path.join(__dirname, 'install', 'app.ts'), path.join(dir, 'app.ts'));
  run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...flags, spec], dir);
}

/** tsc on an app's app.ts. One app per run: a second app's copy of the plugin would type the first one's app.sync
 * (TypeScript takes two copies of a package at one version for one), hiding a copy whose types do not apply. */
function compiles(app, module) {
  try {
    run(process.execPath, [TSC, '--noEmit', '--strict', '--skipLibCheck', '--module', module, '--types', 'node',
      'app.ts'], app);
  } catch (err) {
    assert.fail(`tsc --module ${module} in ${app}:\n${err.stdout}${err.stderr}`);
  }
}

function loads(dir) {
  const script = 'const a = require("@syncar/feathers"); import("@syncar/feathers").then((b) => ' +
    'console.log(typeof a, typeof b.default, typeof b.SYNC))';
  assert.equal(run(process.execPath, ['-e', script], dir).trim(), 'function function symbol');
}

describe('installing the plugin', { timeout: 300_000 }, () => {
  let dir;
  let apps;

  before(() => {
    dir = tempDir('syncar-install-');
    const tarball = run(path.join(HERE, '..', '..', 'scripts', 'pack-node'), [dir], HERE).trim();
    assert.match(path.basename(tarball), /^syncar-feathers-.*\.tgz$/);
    apps = [path.join(dir, 'tarball'), path.join(dir, 'path')];
    install(apps[0], tarball);
    install(apps[1], HERE, ['--install-links']);
  });

  after(() => removeDir(dir));

  it('installs a copy, from a tarball made by scripts/pack-node or from this folder\'s path with --install-links', () => {
    for (const app of apps) {
      assert.ok(!fs.lstatSync(path.join(app, 'node_modules', '@syncar', 'feathers')).isSymbolicLink());
    }
  });

  for (const module of ['nodenext', 'commonjs']) {
    it(`types app.sync with module ${module}`, () => apps.forEach((app) => compiles(app, module)));
  }

  it('loads with require and import', () => {
    for (const app of apps) {
      loads(app);
    }
  });
});
