'use strict';

/**
 * Turning an event into what goes on the socket, the way feathers-sync does, but without ever throwing
 * at the service call: what JSON cannot carry is replaced, and the caller is told what was replaced.
 */

const { describeError } = require('./warnings');

/** Nesting deeper than this is cut: JSON.stringify would overflow the stack well before anyone needs it. */
const MAX_DEPTH = 200;
const CIRCULAR = '[Circular]';
const TOO_DEEP = '[Too deep]';

function defaultSerialize(payload) {
  return JSON.stringify(payload);
}

function defaultDeserialize(text) {
  return JSON.parse(text);
}

/**
 * The hook context as feathers-sync sends it: `toJSON()` when it has one, without `app`, `service` and
 * `self` when they are this app's (they are put back on the receiving side).
 */
function contextForWire(ctx, app, service) {
  if (ctx === null || typeof ctx !== 'object') {
    return ctx;
  }
  const json = typeof ctx.toJSON === 'function' ? ctx.toJSON() : ctx;
  if (!(ctx.app === app || ctx.service === service) || json === null || typeof json !== 'object') {
    return json;
  }
  const out = {};
  for (const key of Object.keys(json)) {
    if (key !== 'app' && key !== 'service' && key !== 'self') {
      out[key] = json[key];
    }
  }
  return out;
}

function unbox(value) {
  if (value instanceof Number || value instanceof String || value instanceof Boolean) {
    return value.valueOf();
  }
  return value;
}

/**
 * A copy of `root` that JSON.stringify accepts: circular references become "[Circular]", BigInt a
 * decimal string, values whose `toJSON` or getter throws are left out, nesting past MAX_DEPTH is cut.
 * Shared (non-circular) references are kept, as JSON.stringify keeps them.
 *
 * @returns {{ value: unknown, problems: string[] }}
 */
function sanitize(root) {
  const problems = new Set();
  const ancestors = [];

  function walk(key, value, depth) {
    if (value !== null && (typeof value === 'object' || typeof value === 'bigint') && typeof value.toJSON === 'function') {
      try {
        value = value.toJSON(key);
      } catch (err) {
        problems.add(`toJSON of '${key}' threw (${describeError(err)}); left out`);
        return undefined;
      }
    }
    if (typeof value === 'bigint') {
      problems.add('BigInt sent as a decimal string');
      return value.toString();
    }
    value = unbox(value);
    if (typeof value === 'function' || typeof value === 'symbol') {
      return undefined; // as JSON.stringify: left out of objects, null in arrays
    }
    if (value === null || typeof value !== 'object') {
      return value;
    }
    if (ancestors.includes(value)) {
      problems.add(`circular reference sent as "${CIRCULAR}"`);
      return CIRCULAR;
    }
    if (depth >= MAX_DEPTH) {
      problems.add(`nesting deeper than ${MAX_DEPTH} sent as "${TOO_DEEP}"`);
      return TOO_DEEP;
    }
    ancestors.push(value);
    try {
      if (Array.isArray(value)) {
        const out = new Array(value.length);
        for (let i = 0; i < value.length; i += 1) {
          out[i] = walk(String(i), read(value, i), depth + 1);
        }
        return out;
      }
      const out = {};
      for (const name of Object.keys(value)) {
        const child = walk(name, read(value, name), depth + 1);
        if (child !== undefined) {
          out[name] = child;
        }
      }
      return out;
    } finally {
      ancestors.pop();
    }
  }

  function read(holder, name) {
    try {
      return holder[name];
    } catch (err) {
      problems.add(`reading '${String(name)}' threw (${describeError(err)}); left out`);
      return undefined;
    }
  }

  let value;
  try {
    value = walk('', root, 0);
  } catch (err) {
    // A Proxy or exotic object that even Object.keys cannot handle.
    problems.add(`cannot be copied (${describeError(err)})`);
    value = undefined;
  }
  return { value, problems: [...problems] };
}

module.exports = { defaultSerialize, defaultDeserialize, contextForWire, sanitize, CIRCULAR };
