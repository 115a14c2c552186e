'use strict';

/**
 * The bytes of held publishes, kept off the JS heap. Each publish frame is written once into a shared block
 * (`Buffer.allocUnsafeSlow`), and held and written to the socket as a view of it. Held as JS strings until their
 * barrier was answered (up to 100 ms), the publishes were alive at each young-generation collection: promoted, they
 * filled the old generation, and every app of the fleet ran a full mark-compact within seconds at 333 publishes/s,
 * where feathers-sync's ran none (docs/benchmarks/history.md, "The Redis fleet's p99"). A block is used again only once
 * every publish in it was
 * answered by the daemon (which has read it), never while one may still be in the socket's buffers.
 */

const BLOCK_BYTES = 256 * 1024;
/** A frame larger than this gets a Buffer of its own: it would leave most of a block unused. */
const OWN_BUFFER_BYTES = BLOCK_BYTES / 8;
/** Blocks kept for reuse once all their publishes were answered; more are left to the collector. */
const SPARE_BLOCKS = 2;

class FrameBlocks {
  constructor() {
    this._current = null;
    this._spare = [];
  }

  /** `text` (`bytes` bytes of UTF-8) stored: `{ line, block }`, `line` a Buffer viewing `block` (null: its own). */
  store(text, bytes) {
    if (bytes > OWN_BUFFER_BYTES) {
      return { line: Buffer.from(text), block: null };
    }
    let block = this._current;
    if (block === null || block.used + bytes > block.buffer.length) {
      if (block !== null) {
        block.full = true;
        this._reuse(block);
      }
      block = this._spare.pop() || { buffer: Buffer.allocUnsafeSlow(BLOCK_BYTES) };
      Object.assign(block, { used: 0, live: 0, full: false, abandoned: false });
      this._current = block;
    }
    block.buffer.write(text, block.used);
    const line = block.buffer.subarray(block.used, block.used + bytes);
    block.used += bytes;
    block.live += 1;
    return { line, block };
  }

  /** The daemon answered the publish of `block` (ack, nack or error): it has read it. */
  answered(block) {
    if (block !== null) {
      block.live -= 1;
      this._reuse(block);
    }
  }

  /** A publish of `block` let go of unanswered: it may still be in the socket's buffers, so the block is not reused. */
  abandoned(block) {
    if (block !== null) {
      block.abandoned = true;
    }
  }

  _reuse(block) {
    if (block.full && block.live === 0 && !block.abandoned && this._spare.length < SPARE_BLOCKS) {
      this._spare.push(block);
    }
  }
}

module.exports = { FrameBlocks, BLOCK_BYTES, OWN_BUFFER_BYTES };
