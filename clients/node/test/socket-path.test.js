'use strict';

// The plugin looks for the socket where the daemon puts it: the same answer as sidecar/paths.py's
// default_socket_path for every kind of $XDG_RUNTIME_DIR. As root, both run as user nobody (root's socket is
// always /run/syncar/syncar.sock, which would leave the rule untested), on copies of the two files in a directory
// nobody may read, wherever the repository is.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { PYTHON, REPO_ROOT, removeDir, tempDir } = require('./helpers');

const NOBODY = 65534;
const asRoot = process.geteuid() === 0;

/** Run `command` as the user the test speaks for (nobody when we are root), with `env`; its stdout, trimmed. */
function run(command, args, env, cwd) {
  const argv = asRoot ? ['--reuid', String(NOBODY), '--regid', String(NOBODY), '--clear-groups', command, ...args]
    : args;
  return execFileSync(asRoot ? 'setpriv' : command, argv, { cwd, env, encoding: 'utf8' }).trim();
}

test('the default socket path agrees with the daemon\'s for every kind of XDG_RUNTIME_DIR', () => {
  const base = tempDir();
  fs.chmodSync(base, 0o755);
  fs.copyFileSync(path.join(REPO_ROOT, 'sidecar', 'paths.py'), path.join(base, 'paths.py'));
  fs.mkdirSync(path.join(base, 'lib'));
  for (const file of ['options.js', 'serialize.js', 'warnings.js']) {
    fs.copyFileSync(path.join(__dirname, '..', 'lib', file), path.join(base, 'lib', file));
  }
  const uid = asRoot ? NOBODY : process.geteuid();
  const dir = (name, mode, owner = uid) => {
    const made = path.join(base, name);
    fs.mkdirSync(made);
    fs.chmodSync(made, mode);
    if (asRoot) {
      fs.chownSync(made, owner, owner);
    }
    return made;
  };
  const privateDir = dir('private', 0o700);
  fs.symlinkSync(privateDir, path.join(base, 'link'));
  const cases = {
    unset: [undefined, false],
    private: [privateDir, true],
    'writable by others': [dir('open', 0o777), false],
    'writable by its group': [dir('group', 0o770), false],
    'a symbolic link': [path.join(base, 'link'), false],
    missing: [path.join(base, 'missing'), false],
  };
  if (asRoot) {
    cases['another user\'s'] = [dir('root', 0o700, 0), false];
  }
  try {
    for (const [name, [runtimeDir, used]] of Object.entries(cases)) {
      const env = { PATH: process.env.PATH, ...(runtimeDir === undefined ? {} : { XDG_RUNTIME_DIR: runtimeDir }) };
      const daemon = run(PYTHON, ['-c', 'from paths import default_socket_path; print(default_socket_path())'], env,
        base);
      const plugin = run(process.execPath, ['-e', 'console.log(require("./lib/options.js").defaultSocketPath())'], env,
        base);
      assert.equal(plugin, daemon, name);
      assert.equal(daemon, used ? path.join(runtimeDir, 'syncar', 'syncar.sock') : `/tmp/syncar-${uid}/syncar.sock`,
        name);
    }
  } finally {
    removeDir(base);
  }
});
