'use strict';

/**
 * Newline-delimited frames from a stream of text: whole lines out, each at most `maxLength`
 * characters. A longer line is discarded up to its newline and reported once, so memory stays
 * bounded and the frames after it still count (as sidecar/framing.py does on the daemon's side).
 */
class LineSplitter {
  constructor(maxLength, onLine, onOversized) {
    this.maxLength = maxLength;
    this.onLine = onLine;
    this.onOversized = onOversized;
    this.reset();
  }

  reset() {
    this._parts = [];
    this._length = 0;
    this._discarding = false;
    this.stopped = false;
  }

  /** Feed a chunk; `onLine` runs for each complete non-empty line. Set `stopped` to drop the rest. */
  feed(chunk) {
    let start = 0;
    let newline = chunk.indexOf('\n');
    while (newline !== -1) {
      let line;
      if (this._parts.length > 0) {
        this._parts.push(chunk.slice(start, newline));
        line = this._parts.join('');
        this._parts = [];
        this._length = 0;
      } else {
        line = chunk.slice(start, newline);
      }
      if (this._discarding) {
        this._discarding = false;
      } else if (line.length > this.maxLength) {
        this.onOversized();
      } else if (line.length > 0) {
        this.onLine(line);
      }
      if (this.stopped) {
        return;
      }
      start = newline + 1;
      newline = chunk.indexOf('\n', start);
    }
    if (start < chunk.length && !this._discarding) {
      const rest = start === 0 ? chunk : chunk.slice(start);
      this._length += rest.length;
      if (this._length > this.maxLength) {
        this._parts = [];
        this._length = 0;
        this._discarding = true;
        this.onOversized();
      } else {
        this._parts.push(rest);
      }
    }
  }
}

/**
 * Resolve true once `emitter` emits `event` and `done()` holds, false after `timeout` ms.
 * @returns {Promise<boolean>}
 */
function waitFor(emitter, event, timeout, done) {
  return new Promise((resolve) => {
    if (done()) {
      resolve(true);
      return;
    }
    const listener = () => {
      if (done()) {
        finish(true);
      }
    };
    const timer = setTimeout(() => finish(false), timeout);
    function finish(result) {
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(result);
    }
    emitter.on(event, listener);
  });
}

module.exports = { LineSplitter, waitFor };
