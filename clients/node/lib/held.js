'use strict';

const { FrameBlocks } = require('./blocks');

/**
 * The publishes an app keeps until syncar acknowledged them, in publish order: those written to the socket and
 * waiting for their `ack` (sent again after a reconnect, since the daemon may not have read them), and those
 * not yet written (syncar unreachable, or the socket's buffer full). Bounded together in count and bytes;
 * an entry is `{ id, line, block, bytes, n, resend }`, `line` the publish frame with its newline, stored in `block`
 * of `blocks` (lib/blocks.js), `n` its number: entries are written in the order of their numbers; `resend`, that a
 * stopping daemon refused it (`keepForNext`).
 */
class HeldPublishes {
  constructor(maxCount, maxBytes) {
    this.maxCount = maxCount;
    this.maxBytes = maxBytes;
    this.blocks = new FrameBlocks();
    this._unacked = new Map(); // written, waiting for their ack: id -> entry
    this._unwritten = [];
    this._bytes = 0;
  }

  get count() {
    return this._unacked.size + this._unwritten.length;
  }

  get bytes() {
    return this._bytes;
  }

  /** Whether some are waiting to be written: a new publish must queue behind them to keep the order. */
  get unwritten() {
    return this._unwritten.length > 0;
  }

  /** Whether a publish of `bytes` more stays within both bounds. */
  fits(bytes) {
    return this.count < this.maxCount && this._bytes + bytes <= this.maxBytes;
  }

  /** Keep `entry` to be written later, after those already waiting. */
  queue(entry) {
    this._unwritten.push(entry);
    this._bytes += entry.bytes;
  }

  /** Keep `entry`, just written, until its ack. */
  written(entry) {
    this._unacked.set(entry.id, entry);
    this._bytes += entry.bytes;
  }

  /** Hand the unwritten ones, in order, to `write` while `more()` holds; they then wait for their ack. */
  writeQueued(write, more) {
    let count = 0;
    while (count < this._unwritten.length && more()) {
      const entry = this._unwritten[count];
      this._unacked.set(entry.id, entry);
      write(entry);
      count += 1;
    }
    if (count > 0) {
      this._unwritten.splice(0, count);
    }
  }

  /** The written ones waiting for their ack, oldest first; about to be written again, to a new connection. */
  unacknowledged() {
    for (const entry of this._unacked.values()) {
      entry.resend = false;
    }
    return this._unacked.values();
  }

  /** Let go of the one with `id` (acknowledged or refused). True if it was held. */
  settle(id) {
    const entry = this._unacked.get(id);
    if (entry === undefined) {
      return false;
    }
    this._unacked.delete(id);
    this._bytes -= entry.bytes;
    this.blocks.answered(entry.block);
    return true;
  }

  /**
   * Keep the one with `id` to be sent again after the next reconnect: the daemon stopped before its broker took it
   * (a `nack` `stopping`). A barrier answered on this connection no longer lets go of it. True if it was held.
   */
  keepForNext(id) {
    const entry = this._unacked.get(id);
    if (entry === undefined) {
      return false;
    }
    entry.resend = true;
    return true;
  }

  /** Let go of the written ones numbered up to `n` (a barrier after them was answered). How many were held. */
  settleThrough(n) {
    let settled = 0;
    for (const [id, entry] of this._unacked) {
      if (entry.n > n) {
        break;
      }
      if (entry.resend) {
        continue; // refused by a daemon that was stopping: for the next one
      }
      this._unacked.delete(id);
      this._bytes -= entry.bytes;
      this.blocks.answered(entry.block);
      settled += 1;
    }
    return settled;
  }

  /** Stop keeping the oldest written ones until `bytes` more fit. How many were let go. */
  forgetOldest(bytes) {
    let forgotten = 0;
    for (const [id, entry] of this._unacked) {
      if (this.fits(bytes)) {
        break;
      }
      this._unacked.delete(id);
      this._bytes -= entry.bytes;
      this.blocks.abandoned(entry.block);
      forgotten += 1;
    }
    return forgotten;
  }

  /** Take out every one for which `refuse(entry)` holds, written or not; they are returned in publish order. */
  remove(refuse) {
    const removed = [...this._unacked.values(), ...this._unwritten].filter(refuse);
    for (const entry of removed) {
      this._unacked.delete(entry.id);
      this._bytes -= entry.bytes;
      this.blocks.abandoned(entry.block);
    }
    this._unwritten = this._unwritten.filter((entry) => !refuse(entry));
    return removed;
  }
}

module.exports = { HeldPublishes };
