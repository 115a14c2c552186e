'use strict';

const NEWLINE = 0x0a;

/**
 * Newline-delimited frames from a stream of bytes: whole lines out, as text, each at most `maxBytes` bytes of
 * UTF-8 (a limit in bytes, like the daemon's --max-frame-bytes; a string's length would count UTF-16 units).
 * A longer line is discarded up to its newline and reported once, so memory stays bounded and the frames after
 * it still count (as sidecar/framing.py does on the daemon's side). A line is decoded once whole, so a
 * character split between two chunks arrives intact.
 */
class LineSplitter {
  constructor(maxBytes, onLine, onOversized) {
    this.maxBytes = maxBytes;
    this.onLine = onLine;
    this.onOversized = onOversized;
    this.reset();
  }

  reset() {
    this._parts = [];
    this._bytes = 0;
    this._discarding = false;
    this.stopped = false;
  }

  /**
   * Feed a Buffer; `onLine` runs for each complete non-empty line. Set `stopped` to drop the rest. The chunk's
   * memory may be reused once this returns (the socket reads into one buffer): what is kept of it is copied.
   */
  feed(chunk) {
    let start = 0;
    let newline = chunk.indexOf(NEWLINE);
    while (newline !== -1) {
      let line;
      if (this._parts.length > 0) {
        this._parts.push(chunk.subarray(start, newline));
        line = Buffer.concat(this._parts);
        this._parts = [];
        this._bytes = 0;
      } else {
        line = chunk.subarray(start, newline);
      }
      if (this._discarding) {
        this._discarding = false;
      } else if (line.length > this.maxBytes) {
        this.onOversized();
      } else if (line.length > 0) {
        this.onLine(line.toString('utf8'));
      }
      if (this.stopped) {
        return;
      }
      start = newline + 1;
      newline = chunk.indexOf(NEWLINE, start);
    }
    if (start < chunk.length && !this._discarding) {
      const rest = chunk.subarray(start);
      this._bytes += rest.length;
      if (this._bytes > this.maxBytes) {
        this._parts = [];
        this._bytes = 0;
        this._discarding = true;
        this.onOversized();
      } else {
        this._parts.push(Buffer.from(rest));
      }
    }
  }
}

module.exports = { LineSplitter };
