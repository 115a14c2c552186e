'use strict';

/**
 * @syncar/feathers: a drop-in replacement for feathers-sync that hands service events to a syncar
 * daemon over its unix socket, instead of talking to a broker from inside the app.
 *
 *   const syncar = require('@syncar/feathers');
 *   app.configure(syncar({ socket: '/run/syncar/syncar.sock' }));
 */

const { syncar, SYNC, isRemote } = require('./lib/plugin');
const { defaultSocketPath, DEFAULTS } = require('./lib/options');

module.exports = syncar;
Object.assign(module.exports, {
  default: syncar,
  syncar,
  SYNC,
  isRemote,
  defaultSocketPath,
  DEFAULTS,
});
