'use strict';

const { debuglog } = require('node:util');

const debug = debuglog('syncar');

/** Milliseconds between two warnings of the same kind; the ones in between are counted, not printed. */
const DEFAULT_INTERVAL_MS = 10_000;

/**
 * What went wrong, in one line, whatever was thrown: an Error's message (its stack with `stack`), else the
 * thrown value as text. The one way the plugin says an error; `err && err.message` said "undefined" for a string.
 */
function describeError(err, { stack = false } = {}) {
  if (err !== null && typeof err === 'object') {
    if (stack && typeof err.stack === 'string') {
      return err.stack;
    }
    if (typeof err.message === 'string') {
      return err.message;
    }
  }
  try {
    return String(err);
  } catch {
    return Object.prototype.toString.call(err); // an object without a prototype, or whose toString throws
  }
}

/**
 * Warnings that cannot flood a log: one line per kind per interval, with a count of the ones held back.
 * Every warning is also emitted as a `warning` event ({ code, message }) on `emitter`, unthrottled,
 * so an app (or a test) can react to each one.
 */
class Warnings {
  constructor(logger, emitter, intervalMs = DEFAULT_INTERVAL_MS) {
    this.logger = logger;
    this.emitter = emitter;
    this.intervalMs = intervalMs;
    this._last = new Map(); // code -> { at, suppressed }
  }

  warn(code, message) {
    if (this.emitter.listenerCount('warning') > 0) {
      this.emitter.emit('warning', { code, message });
    }
    if (!this.logger || typeof this.logger.warn !== 'function') {
      return;
    }
    const now = Date.now();
    const last = this._last.get(code);
    if (last && now - last.at < this.intervalMs) {
      last.suppressed += 1;
      return;
    }
    const held = last && last.suppressed ? ` (${last.suppressed} more like this in the last ${Math.round((now - last.at) / 1000)}s)` : '';
    this._last.set(code, { at: now, suppressed: 0 });
    this.logger.warn(`syncar: ${message}${held}`);
  }
}

module.exports = { Warnings, debug, describeError };
