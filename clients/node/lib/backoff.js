'use strict';

/**
 * The delays between attempts to reach syncar: syncar's one retry policy (sidecar/backoff.py), the same shape
 * as the daemon's reconnect loops and the Python client's. The first step is `initial`, each next one `factor`
 * times the last, never above `cap`; each delay is drawn from the upper half of its step (`jitter` 0.5), so the
 * apps of a host that lost syncar together do not retry in lockstep, and no delay exceeds the cap.
 */
class Backoff {
  constructor(initial, cap, { factor = 2, jitter = 0.5, random = Math.random } = {}) {
    this.initial = initial;
    this.cap = cap;
    this.factor = factor;
    this.jitter = jitter;
    this._random = random;
    this._step = initial;
    this.attempts = 0; // delays handed out since the last reset()
  }

  /** The delay before the next attempt, in the unit of `initial` and `cap`. */
  next() {
    const step = this._step;
    this._step = Math.min(step * this.factor, this.cap);
    this.attempts += 1;
    return step * (1 - this.jitter * this._random());
  }

  /** The attempt worked: the next failure starts again from `initial`. */
  reset() {
    this._step = this.initial;
    this.attempts = 0;
  }
}

module.exports = { Backoff };
