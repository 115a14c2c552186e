'use strict';

// Unit tests without a daemon: the delays between attempts to reach syncar (lib/backoff.js).

const test = require('node:test');
const assert = require('node:assert/strict');
const { Backoff } = require('../lib/backoff');

/** The next `count` delays of a back-off whose random draws are all `draw`. */
function delays(draw, count, initial = 50, cap = 1000) {
  const backoff = new Backoff(initial, cap, { random: () => draw });
  return Array.from({ length: count }, () => backoff.next());
}

test('steps double from initial up to the cap, each delay drawn from the upper half of its step', () => {
  assert.deepEqual(delays(0, 7), [50, 100, 200, 400, 800, 1000, 1000]);
  assert.deepEqual(delays(1, 7), [25, 50, 100, 200, 400, 500, 500]);
  for (const delay of delays(Math.random(), 50)) {
    assert.ok(delay > 0 && delay <= 1000, `${delay} within (0, cap]`);
  }
});

test('a long outage neither overflows nor passes the cap', () => {
  const [last] = delays(0, 5000).slice(-1);
  assert.equal(last, 1000);
});

test('reset() after a success starts again from initial', () => {
  const backoff = new Backoff(50, 1000, { random: () => 0 });
  backoff.next();
  backoff.next();
  assert.equal(backoff.attempts, 2);
  backoff.reset();
  assert.equal(backoff.attempts, 0);
  assert.equal(backoff.next(), 50);
});

test('the same policy as sidecar/backoff.py: a first step of initial, factor 2, jitter 0.5', () => {
  const backoff = new Backoff(50, 1000);
  assert.deepEqual([backoff.factor, backoff.jitter], [2, 0.5]);
  for (let n = 0; n < 100; n += 1) {
    backoff.reset();
    const first = backoff.next();
    assert.ok(first > 25 && first <= 50, `${first} in (25, 50]`);
  }
});
