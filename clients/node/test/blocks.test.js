'use strict';

// Held publishes off the JS heap (lib/blocks.js): a block's bytes stay as written while any publish in it may still
// be needed, and the block is used again only once the daemon answered every one of them.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { FrameBlocks, BLOCK_BYTES, OWN_BUFFER_BYTES } = require('../lib/blocks');

const FRAME = 1000;

/** Frames stored until the first block is full and a second one began; each `{ text, line, block }`. */
function fillOneBlock(blocks) {
  const stored = [];
  for (let n = 0; n <= BLOCK_BYTES / FRAME && (stored.length === 0 || stored.at(-1).block === stored[0].block); n += 1) {
    const text = `${String(n).padStart(8, '0')}${'x'.repeat(FRAME - 9)}\n`;
    stored.push({ text, ...blocks.store(text, FRAME) });
  }
  assert.equal(stored.length - 1, Math.floor(BLOCK_BYTES / FRAME));
  return stored;
}

test('a frame is stored as its bytes, and stays so while its block is not answered whole', () => {
  const blocks = new FrameBlocks();
  const stored = fillOneBlock(blocks);
  const [first] = stored;
  for (const { block } of stored.slice(1, -1)) {
    blocks.answered(block); // all but the first: its block cannot be used again
  }
  for (let n = 0; n < 3 * BLOCK_BYTES / FRAME; n += 1) {
    const { line } = blocks.store('y'.repeat(FRAME - 1) + '\n', FRAME);
    assert.notEqual(line.buffer, first.line.buffer, 'a block with an unanswered publish was used again');
  }
  for (const { text, line } of stored) {
    assert.equal(line.toString(), text);
  }
});

test('a block is used again once every publish in it was answered', () => {
  const blocks = new FrameBlocks();
  const stored = fillOneBlock(blocks);
  for (const { block } of stored.slice(0, -1)) {
    blocks.answered(block);
  }
  const second = stored.at(-1).block;
  let { line } = blocks.store('y'.repeat(FRAME - 1) + '\n', FRAME);
  for (let n = 0; n <= BLOCK_BYTES / FRAME && line.buffer === second.buffer.buffer; n += 1) {
    ({ line } = blocks.store('y'.repeat(FRAME - 1) + '\n', FRAME)); // until the second block is full
  }
  assert.equal(line.buffer, stored[0].line.buffer, 'the answered block was not used again');
});

test('a block with a publish let go of unanswered is never used again: it may still be in the socket', () => {
  const blocks = new FrameBlocks();
  const stored = fillOneBlock(blocks);
  blocks.abandoned(stored[0].block);
  for (const { block } of stored.slice(0, -1)) {
    blocks.answered(block);
  }
  for (let n = 0; n < 3 * BLOCK_BYTES / FRAME; n += 1) {
    assert.notEqual(blocks.store('z'.repeat(FRAME - 1) + '\n', FRAME).line.buffer, stored[0].line.buffer);
  }
  assert.equal(stored[0].line.toString(), stored[0].text);
});

test('a large frame gets a buffer of its own, whole, and multi-byte characters are counted in bytes', () => {
  const blocks = new FrameBlocks();
  const large = `${'é'.repeat(OWN_BUFFER_BYTES)}\n`;
  const { line, block } = blocks.store(large, Buffer.byteLength(large));
  assert.equal(block, null);
  assert.equal(line.toString(), large);
  const small = `${'é'.repeat(100)}\n`;
  const kept = blocks.store(small, Buffer.byteLength(small));
  assert.equal(kept.line.toString(), small);
  assert.equal(kept.line.length, 201);
});
